//! The invariant, checked by brute force: for each transition, publish with a
//! simulated power cut after every possible number of single writes and ask
//! the systemd-boot model what it would boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::bls::{ostree_karg, OstreeEntry};
use super::esp::{CrashingEsp, DirEsp, EspFs, ENTRIES_DIR};
use super::mtools::MtoolsEsp;
use super::plan::{self, Op, Plan, ENTRY_PREFIX};
use super::sdboot::{self, split_counter};
use super::{desired_entries, execute, publish_entries, read_snapshot};

type DeployId = (String, u32);

/// A deployment on the simulated root filesystem.
#[derive(Clone)]
struct Dep {
    csum: char,
    serial: u32,
    kernel: &'static str,
    kargs: &'static str,
}

impl Dep {
    fn id(&self) -> DeployId {
        (self.csum.to_string().repeat(64), self.serial)
    }
}

fn dep(csum: char, serial: u32, kernel: &'static str, kargs: &'static str) -> Dep {
    Dep {
        csum,
        serial,
        kernel,
        kargs,
    }
}

/// libostree's view of `deps` with bootlinks under `boot.<bootversion>`,
/// and the links themselves (bootlink path → deployment).
fn ostree_state(deps: &[Dep], bootversion: u32) -> (Vec<OstreeEntry>, BTreeMap<String, DeployId>) {
    let mut entries = Vec::new();
    let mut links = BTreeMap::new();
    let mut serials: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, d) in deps.iter().enumerate() {
        // libostree numbers deployments sharing a kernel by their order.
        let s = serials.entry(d.kernel).or_insert(0);
        let link = format!("/ostree/boot.{bootversion}/debian/{}/{s}", d.kernel);
        *s += 1;
        links.insert(link.clone(), d.id());
        entries.push(OstreeEntry {
            source_name: format!("ostree-{}-debian.conf", deps.len() - i),
            osname: "debian".into(),
            checksum: d.id().0,
            deployserial: d.serial,
            bootcsum: d.kernel.into(),
            title: format!("Debian ({}) (ostree:{i})", d.csum),
            options: format!("root=LABEL=root {} ostree={link}", d.kargs),
            linux: format!("/ostree/debian-{}/vmlinuz-6.1", d.kernel),
            initrds: vec![format!("/ostree/debian-{}/initramfs-6.1.img", d.kernel)],
        });
    }
    (entries, links)
}

fn write_kernels(boot: &Path, kernels: &[&str]) {
    for k in kernels {
        let dir = boot.join(format!("ostree/debian-{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz-6.1"), format!("kernel {k} ").repeat(500)).unwrap();
        std::fs::write(
            dir.join("initramfs-6.1.img"),
            format!("initramfs {k} ").repeat(900),
        )
        .unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from).min_depth(1) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Renames hostctl entries on `esp` the way systemd-boot / bless-boot would.
fn set_counter(esp: &dyn EspFs, base: &str, suffix: &str) {
    for de in esp.list_dir(ENTRIES_DIR).unwrap().unwrap() {
        if split_counter(&de.name).map(|(b, _)| b) == Some(base) {
            esp.rename(
                &format!("{ENTRIES_DIR}/{}", de.name),
                &format!("{ENTRIES_DIR}/{base}{suffix}.conf"),
            )
            .unwrap();
            return;
        }
    }
    panic!("no entry {base}");
}

fn base_of(entries: &[OstreeEntry], boot: &Path, i: usize) -> String {
    let size_of = |rel: &str| -> anyhow::Result<(std::path::PathBuf, u64)> {
        let p = crate::util::in_root(boot, rel);
        Ok((p.clone(), std::fs::metadata(&p)?.len()))
    };
    plan::desired_entry(&entries[i], &size_of).unwrap().base
}

/// The first deployment of `entries` whose ESP entry is not bad, else the first.
fn first_good(entries: &[OstreeEntry], boot: &Path, bad: &BTreeSet<String>) -> Option<DeployId> {
    let pick = (0..entries.len())
        .find(|&i| !bad.contains(&base_of(entries, boot, i)))
        .or(if entries.is_empty() { None } else { Some(0) })?;
    Some((entries[pick].checksum.clone(), entries[pick].deployserial))
}

/// What systemd-boot boots on `esp`, resolved through `links` to a
/// deployment; panics if it would not boot.
fn booted(esp: &dyn EspFs, boot: &Path, links: &BTreeMap<String, DeployId>) -> Option<DeployId> {
    let chosen = sdboot::default_boot(esp).unwrap()?;
    assert!(
        chosen.missing.is_empty(),
        "default {} lacks {:?}",
        chosen.entry.file_name,
        chosen.missing
    );
    // Complete copies: same bytes as libostree's files.
    for f in chosen.entry.linux.iter().chain(&chosen.entry.initrds) {
        let on_esp = esp.read_file(f.trim_start_matches('/')).unwrap().unwrap();
        let src_rel = f.trim_start_matches("/hostctl/");
        let src = std::fs::read(boot.join("ostree").join(src_rel)).unwrap();
        assert!(on_esp == src, "{f} on the ESP differs from the source");
    }
    let karg = ostree_karg(&chosen.entry.options).expect("ostree= in default entry");
    Some(
        links
            .get(karg)
            .unwrap_or_else(|| {
                panic!(
                    "bootlink {karg} of {} does not exist",
                    chosen.entry.file_name
                )
            })
            .clone(),
    )
}

struct Transition {
    name: &'static str,
    old: Vec<Dep>,
    new: Vec<Dep>,
    /// libostree swapped bootversions (new links under boot.1, old ones kept
    /// until cleanup) rather than only retargeting boot.0's links.
    new_bootversion: bool,
    /// (index in `old`, counter suffix) applied after the old publish.
    counters: Vec<(usize, &'static str)>,
}

/// Where a trial's ESP lives: a directory (what a booted host has mounted)
/// or a FAT filesystem in an image file written with mtools (what `image
/// build` uses).
#[derive(Clone, Copy, Debug)]
enum Backend {
    Dir,
    Mtools,
}

impl Backend {
    /// An empty ESP at `at` (a directory or an image file).
    fn create(self, at: &Path) -> Box<dyn EspFs> {
        match self {
            Backend::Dir => {
                std::fs::create_dir(at).unwrap();
                Box::new(DirEsp::new(at))
            }
            Backend::Mtools => {
                crate::util::run(
                    std::process::Command::new("mkfs.vfat")
                        .args(["-F", "32", "-C", "-n", "ESP"])
                        .arg(at)
                        .arg("40960"),
                    "mkfs.vfat",
                )
                .unwrap();
                Box::new(MtoolsEsp::new(at, 0))
            }
        }
    }

    /// A copy of the ESP at `from`, at `to`.
    fn copy(self, from: &Path, to: &Path) -> Box<dyn EspFs> {
        match self {
            Backend::Dir => {
                std::fs::create_dir(to).unwrap();
                copy_tree(from, to);
                Box::new(DirEsp::new(to))
            }
            Backend::Mtools => {
                std::fs::copy(from, to).unwrap();
                Box::new(MtoolsEsp::new(to, 0))
            }
        }
    }
}

/// `publish_entries` with its plan changed by `mutate` before it runs: how
/// the tests show that they would catch a wrong write order.
fn publish_mutated(
    entries: &[OstreeEntry],
    boot: &Path,
    esp: &dyn EspFs,
    mutate: &dyn Fn(&mut Plan),
) -> anyhow::Result<()> {
    let desired = desired_entries(entries, boot)?;
    let mut p = plan::plan(&desired, &read_snapshot(esp)?);
    mutate(&mut p);
    execute(&p, esp)
}

fn run(t: &Transition) -> usize {
    run_with(t, Backend::Dir, &|_| {})
}

fn run_with(t: &Transition, backend: Backend, mutate: &dyn Fn(&mut Plan)) -> usize {
    let work = tempfile::tempdir().unwrap();
    let boot = work.path().join("boot");
    let kernels: BTreeSet<&str> = t.old.iter().chain(&t.new).map(|d| d.kernel).collect();
    write_kernels(&boot, &kernels.into_iter().collect::<Vec<_>>());

    let (old_entries, old_links) = ostree_state(&t.old, 0);
    let (new_entries, new_links) = ostree_state(&t.new, u32::from(t.new_bootversion));
    let links: BTreeMap<String, DeployId> = if t.new_bootversion {
        old_links.into_iter().chain(new_links.clone()).collect()
    } else {
        new_links.clone()
    };

    let start: PathBuf = work.path().join("start");
    let start_esp = backend.create(&start);
    if !t.old.is_empty() {
        publish_entries(&old_entries, &boot, start_esp.as_ref()).unwrap();
    }
    let mut bad = BTreeSet::new();
    for &(i, suffix) in &t.counters {
        let base = base_of(&old_entries, &boot, i);
        set_counter(start_esp.as_ref(), &base, suffix);
        if suffix.starts_with("+0") {
            bad.insert(base);
        }
    }
    let before_names: BTreeSet<String> = read_snapshot(start_esp.as_ref())
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.file_name)
        .collect();

    let allowed: Vec<DeployId> = [
        first_good(&old_entries, &boot, &bad),
        first_good(&new_entries, &boot, &bad),
    ]
    .into_iter()
    .flatten()
    .collect();

    for n in 0.. {
        let esp = backend.copy(&start, &work.path().join(format!("esp-{n}")));
        let esp = esp.as_ref();
        let crashing = CrashingEsp::new(esp, n);
        let result = publish_mutated(&new_entries, &boot, &crashing, mutate);
        let got = booted(esp, &boot, &links);
        match &got {
            None => assert!(
                t.old.is_empty(),
                "{}: nothing bootable after {n} writes",
                t.name
            ),
            Some(d) => assert!(
                allowed.contains(d),
                "{}: after {n} writes the default boots {d:?}, not one of {allowed:?}",
                t.name
            ),
        }
        if !crashing.crashed() {
            result.unwrap();
            check_final(t, esp, &new_entries, &boot, &links, &before_names, &bad);
            return n;
        }
        assert!(result.is_err());
        // After the power comes back, a publish completes the job.
        publish_entries(&new_entries, &boot, esp).unwrap();
        check_final(t, esp, &new_entries, &boot, &links, &before_names, &bad);
    }
    unreachable!()
}

fn check_final(
    t: &Transition,
    esp: &dyn EspFs,
    new_entries: &[OstreeEntry],
    boot: &Path,
    links: &BTreeMap<String, DeployId>,
    before_names: &BTreeSet<String>,
    bad: &BTreeSet<String>,
) {
    assert_eq!(
        booted(esp, boot, links),
        first_good(new_entries, boot, bad),
        "{}: final default",
        t.name
    );
    let snap = read_snapshot(esp).unwrap();
    assert!(snap.temps.is_empty(), "{}: temporary files left", t.name);
    let bases: BTreeSet<String> = snap.entries.iter().map(|e| e.base.clone()).collect();
    let want: BTreeSet<String> = (0..new_entries.len())
        .map(|i| base_of(new_entries, boot, i))
        .collect();
    assert_eq!(bases, want, "{}: exactly one entry per deployment", t.name);
    for e in &snap.entries {
        let kept = before_names
            .iter()
            .find(|n| split_counter(n).map(|(b, _)| b) == Some(e.base.as_str()));
        match kept {
            Some(old_name) => assert_eq!(
                &e.file_name, old_name,
                "{}: counter or blessing of an existing entry changed",
                t.name
            ),
            None => assert!(e.file_name.ends_with("+3.conf"), "{}", e.file_name),
        }
    }
    let dirs: BTreeSet<String> = snap.kernel_dirs.keys().cloned().collect();
    let want_dirs: BTreeSet<String> = new_entries
        .iter()
        .map(|e| plan::kernel_dir(&e.osname, &e.bootcsum))
        .collect();
    assert_eq!(dirs, want_dirs, "{}: kernel directories", t.name);
    let again = publish_entries(new_entries, boot, esp).unwrap();
    assert!(
        again.ops.is_empty(),
        "{}: republish did {:?}",
        t.name,
        again.ops
    );
    assert!(snap
        .entries
        .iter()
        .all(|e| e.base.starts_with(ENTRY_PREFIX)));
}

/// Every transition the crash tests replay, by the name of its test.
fn transitions() -> Vec<(&'static str, Transition)> {
    vec![
        (
            "first_install",
            Transition {
                name: "first install",
                old: vec![],
                new: vec![dep('a', 0, "k1", "rw")],
                new_bootversion: false,
                counters: vec![],
            },
        ),
        (
            "upgrade",
            Transition {
                name: "upgrade",
                old: vec![dep('a', 0, "k1", "rw"), dep('z', 0, "k0", "rw")],
                new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: true,
                counters: vec![(0, ""), (1, "")],
            },
        ),
        (
            "upgrade_same_kernel",
            Transition {
                name: "upgrade keeping the kernel",
                old: vec![dep('a', 0, "k1", "rw"), dep('z', 0, "k1", "rw")],
                new: vec![dep('b', 0, "k1", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: false,
                counters: vec![(0, "")],
            },
        ),
        (
            "rollback",
            Transition {
                name: "rollback",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
                new_bootversion: true,
                counters: vec![(0, "+2-1"), (1, "")],
            },
        ),
        // Same kernel and arguments: libostree only swaps the sub-bootversion, so
        // the old entries' ostree= paths already lead to the new order.
        (
            "rollback_retargeting_bootlinks",
            Transition {
                name: "rollback with one kernel",
                old: vec![dep('b', 0, "k1", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k1", "rw")],
                new_bootversion: false,
                counters: vec![(1, "")],
            },
        ),
        (
            "kargs_change",
            Transition {
                name: "kargs",
                old: vec![dep('a', 0, "k1", "rw")],
                new: vec![dep('a', 1, "k1", "rw quiet"), dep('a', 0, "k1", "rw")],
                new_bootversion: true,
                counters: vec![(0, "")],
            },
        ),
        (
            "republish_without_change",
            Transition {
                name: "no change",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: false,
                counters: vec![(0, "+1-2")],
            },
        ),
        (
            "upgrade_after_blessed_boot",
            Transition {
                name: "after a blessed boot",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('c', 0, "k3", "rw"), dep('b', 0, "k2", "rw")],
                new_bootversion: true,
                counters: vec![(0, ""), (1, "")],
            },
        ),
        (
            "after_bad_entry_republish",
            Transition {
                name: "bad default, republished",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: false,
                counters: vec![(0, "+0-3"), (1, "")],
            },
        ),
        (
            "after_bad_entry_rollback_made_permanent",
            Transition {
                name: "bad default, rolled back",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
                new_bootversion: true,
                counters: vec![(0, "+0-3"), (1, "")],
            },
        ),
        (
            "after_bad_entry_upgrade",
            Transition {
                name: "bad default, then a fixed upgrade",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('c', 0, "k3", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: true,
                counters: vec![(0, "+0-3"), (1, "")],
            },
        ),
        (
            "rollback_with_three_deployments",
            Transition {
                name: "rollback, pinned third deployment",
                old: vec![
                    dep('c', 0, "k3", "rw"),
                    dep('b', 0, "k2", "rw"),
                    dep('a', 0, "k1", "rw"),
                ],
                new: vec![
                    dep('b', 0, "k2", "rw"),
                    dep('c', 0, "k3", "rw"),
                    dep('a', 0, "k1", "rw"),
                ],
                new_bootversion: true,
                counters: vec![(0, ""), (2, "")],
            },
        ),
        (
            "deployment_added_behind_the_default",
            Transition {
                name: "deploy not as default",
                old: vec![dep('a', 0, "k1", "rw")],
                new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
                new_bootversion: true,
                counters: vec![(0, "")],
            },
        ),
        // A second upgrade before rebooting replaces the pending deployment: the
        // old default's entry is stale and must outlive the switch.
        (
            "upgrade_replacing_an_unbooted_default",
            Transition {
                name: "upgrade over a pending deployment",
                old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
                new: vec![dep('c', 0, "k3", "rw"), dep('a', 0, "k1", "rw")],
                new_bootversion: true,
                counters: vec![(1, "")],
            },
        ),
    ]
}

fn transition(name: &str) -> Transition {
    transitions()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no transition {name}"))
        .1
}

#[test]
fn first_install() {
    let n = run(&transition("first_install"));
    assert!(n >= 5, "mkdirs, two copies, loader.conf, entry: {n}");
}

#[test]
fn upgrade() {
    run(&transition("upgrade"));
}

#[test]
fn upgrade_same_kernel() {
    run(&transition("upgrade_same_kernel"));
}

#[test]
fn rollback() {
    run(&transition("rollback"));
}

#[test]
fn rollback_retargeting_bootlinks() {
    run(&transition("rollback_retargeting_bootlinks"));
}

#[test]
fn kargs_change() {
    run(&transition("kargs_change"));
}

#[test]
fn republish_without_change() {
    let n = run(&transition("republish_without_change"));
    assert_eq!(n, 0, "nothing to write");
}

#[test]
fn upgrade_after_blessed_boot() {
    run(&transition("upgrade_after_blessed_boot"));
}

#[test]
fn after_bad_entry_republish() {
    run(&transition("after_bad_entry_republish"));
}

#[test]
fn after_bad_entry_rollback_made_permanent() {
    run(&transition("after_bad_entry_rollback_made_permanent"));
}

#[test]
fn after_bad_entry_upgrade() {
    run(&transition("after_bad_entry_upgrade"));
}

#[test]
fn fallback_is_detected() {
    let work = tempfile::tempdir().unwrap();
    let boot = work.path().join("boot");
    write_kernels(&boot, &["k1", "k2"]);
    let deps = [dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")];
    let (entries, _) = ostree_state(&deps, 0);
    let esp_dir = work.path().join("esp");
    std::fs::create_dir(&esp_dir).unwrap();
    let esp = DirEsp::new(&esp_dir);
    publish_entries(&entries, &boot, &esp).unwrap();
    let a = deps[1].id();
    let b = deps[0].id();
    assert!(!super::fell_back(&entries, (&b.0, b.1), &boot, &esp).unwrap());
    // Booted the rollback by hand (menu): not a fallback.
    assert!(!super::fell_back(&entries, (&a.0, a.1), &boot, &esp).unwrap());
    set_counter(&esp, &base_of(&entries, &boot, 0), "+0-3");
    assert!(super::fell_back(&entries, (&a.0, a.1), &boot, &esp).unwrap());
    assert_eq!(
        sdboot::default_boot(&esp as &dyn EspFs)
            .unwrap()
            .unwrap()
            .entry
            .file_name,
        format!("{}.conf", base_of(&entries, &boot, 1)).replace(".conf", "+3.conf")
    );
}

#[test]
fn rollback_with_three_deployments() {
    run(&transition("rollback_with_three_deployments"));
}

#[test]
fn deployment_added_behind_the_default() {
    run(&transition("deployment_added_behind_the_default"));
}

#[test]
fn upgrade_replacing_an_unbooted_default() {
    run(&transition("upgrade_replacing_an_unbooted_default"));
}

#[test]
fn empty_deployment_list_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let boot = work.path().join("boot");
    write_kernels(&boot, &["k1"]);
    let (entries, _) = ostree_state(&[dep('a', 0, "k1", "rw")], 0);
    let esp_dir = work.path().join("esp");
    std::fs::create_dir(&esp_dir).unwrap();
    let esp = DirEsp::new(&esp_dir);
    publish_entries(&entries, &boot, &esp).unwrap();
    let before = read_snapshot(&esp).unwrap();
    let err = publish_entries(&[], &boot, &esp).unwrap_err();
    assert!(format!("{err:#}").contains("no deployments"), "{err:#}");
    assert_eq!(read_snapshot(&esp).unwrap(), before);
}

/// The ESP image that `image build` writes goes through mtools, not a
/// mounted directory: the same crash replay must hold there.
#[test]
fn mtools_back_end_survives_every_crash_point() {
    for name in [
        "first_install",
        "upgrade",
        "rollback",
        "after_bad_entry_upgrade",
    ] {
        run_with(&transition(name), Backend::Mtools, &|_| {});
    }
}

/// A change to a publishing plan.
type Mutation = dyn Fn(&mut Plan);

/// Moves the operations `pick` selects in front of the others, keeping
/// their order: a plausible bug in the write order.
fn hoist(p: &mut Plan, pick: fn(&Op) -> bool) {
    let (mut first, rest): (Vec<Op>, Vec<Op>) = p.ops.drain(..).partition(pick);
    first.extend(rest);
    p.ops = first;
}

/// Proof that the replay can fail: each plausible wrong write order is
/// caught by at least one transition.
#[test]
fn a_wrong_write_order_is_caught() {
    let mutations: [(&str, &Mutation); 4] = [
        ("removals first", &|p| {
            hoist(p, |o| matches!(o, Op::RemoveFile(_) | Op::RemoveDir(_)))
        }),
        ("entries before their kernels", &|p| {
            hoist(
                p,
                |o| matches!(o, Op::Write { dest, .. } if dest.starts_with(ENTRIES_DIR)),
            )
        }),
        ("loader.conf first", &|p| {
            hoist(
                p,
                |o| matches!(o, Op::Write { dest, .. } if dest.ends_with("loader.conf")),
            )
        }),
        ("reversed", &|p| p.ops.reverse()),
    ];
    for (what, mutate) in mutations {
        let caught: Vec<&str> = transitions()
            .into_iter()
            .filter(|(_, t)| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_with(t, Backend::Dir, mutate)
                }))
                .is_err()
            })
            .map(|(n, _)| n)
            .collect();
        assert!(
            !caught.is_empty(),
            "a plan with {what} passed every crash replay"
        );
        eprintln!("{what}: caught by {caught:?}");
    }
}
