//! The invariant, checked by brute force: for each transition, publish with a
//! simulated power cut after every possible number of single writes and ask
//! the systemd-boot model what it would boot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::bls::{ostree_karg, OstreeEntry};
use super::esp::{CrashingEsp, DirEsp, EspFs, ENTRIES_DIR};
use super::plan::{self, ENTRY_PREFIX};
use super::sdboot::{self, split_counter};
use super::{publish_entries, read_snapshot};

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
fn set_counter(esp: &Path, base: &str, suffix: &str) {
    let dir = esp.join(ENTRIES_DIR);
    for de in std::fs::read_dir(&dir).unwrap() {
        let name = de.unwrap().file_name().to_string_lossy().into_owned();
        if split_counter(&name).map(|(b, _)| b) == Some(base) {
            std::fs::rename(dir.join(&name), dir.join(format!("{base}{suffix}.conf"))).unwrap();
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
fn booted(esp: &DirEsp, boot: &Path, links: &BTreeMap<String, DeployId>) -> Option<DeployId> {
    let chosen = sdboot::default_boot(esp).unwrap()?;
    assert!(
        chosen.missing.is_empty(),
        "default {} lacks {:?}",
        chosen.entry.file_name,
        chosen.missing
    );
    // Complete copies: same bytes as libostree's files.
    for f in chosen.entry.linux.iter().chain(&chosen.entry.initrds) {
        let on_esp = std::fs::read(esp.root().join(f.trim_start_matches('/'))).unwrap();
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

fn run(t: &Transition) -> usize {
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

    let start = work.path().join("start");
    std::fs::create_dir(&start).unwrap();
    if !t.old.is_empty() {
        publish_entries(&old_entries, &boot, &DirEsp::new(&start)).unwrap();
    }
    let mut bad = BTreeSet::new();
    for &(i, suffix) in &t.counters {
        let base = base_of(&old_entries, &boot, i);
        set_counter(&start, &base, suffix);
        if suffix.starts_with("+0") {
            bad.insert(base);
        }
    }
    let before_names: BTreeSet<String> = read_snapshot(&DirEsp::new(&start))
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
        let esp_dir = work.path().join(format!("esp-{n}"));
        std::fs::create_dir(&esp_dir).unwrap();
        copy_tree(&start, &esp_dir);
        let esp = DirEsp::new(&esp_dir);
        let crashing = CrashingEsp::new(&esp, n);
        let result = publish_entries(&new_entries, &boot, &crashing);
        let got = booted(&esp, &boot, &links);
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
            check_final(t, &esp, &new_entries, &boot, &links, &before_names, &bad);
            return n;
        }
        assert!(result.is_err());
        // After the power comes back, a publish completes the job.
        publish_entries(&new_entries, &boot, &esp).unwrap();
        check_final(t, &esp, &new_entries, &boot, &links, &before_names, &bad);
    }
    unreachable!()
}

fn check_final(
    t: &Transition,
    esp: &DirEsp,
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

#[test]
fn first_install() {
    let n = run(&Transition {
        name: "first install",
        old: vec![],
        new: vec![dep('a', 0, "k1", "rw")],
        new_bootversion: false,
        counters: vec![],
    });
    assert!(n >= 5, "mkdirs, two copies, loader.conf, entry: {n}");
}

#[test]
fn upgrade() {
    run(&Transition {
        name: "upgrade",
        old: vec![dep('a', 0, "k1", "rw"), dep('z', 0, "k0", "rw")],
        new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: true,
        counters: vec![(0, ""), (1, "")],
    });
}

#[test]
fn upgrade_same_kernel() {
    run(&Transition {
        name: "upgrade keeping the kernel",
        old: vec![dep('a', 0, "k1", "rw"), dep('z', 0, "k1", "rw")],
        new: vec![dep('b', 0, "k1", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: false,
        counters: vec![(0, "")],
    });
}

#[test]
fn rollback() {
    run(&Transition {
        name: "rollback",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
        new_bootversion: true,
        counters: vec![(0, "+2-1"), (1, "")],
    });
}

#[test]
fn rollback_retargeting_bootlinks() {
    // Same kernel and arguments: libostree only swaps the sub-bootversion, so
    // the old entries' ostree= paths already lead to the new order.
    run(&Transition {
        name: "rollback with one kernel",
        old: vec![dep('b', 0, "k1", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k1", "rw")],
        new_bootversion: false,
        counters: vec![(1, "")],
    });
}

#[test]
fn kargs_change() {
    run(&Transition {
        name: "kargs",
        old: vec![dep('a', 0, "k1", "rw")],
        new: vec![dep('a', 1, "k1", "rw quiet"), dep('a', 0, "k1", "rw")],
        new_bootversion: true,
        counters: vec![(0, "")],
    });
}

#[test]
fn republish_without_change() {
    let n = run(&Transition {
        name: "no change",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: false,
        counters: vec![(0, "+1-2")],
    });
    assert_eq!(n, 0, "nothing to write");
}

#[test]
fn upgrade_after_blessed_boot() {
    run(&Transition {
        name: "after a blessed boot",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('c', 0, "k3", "rw"), dep('b', 0, "k2", "rw")],
        new_bootversion: true,
        counters: vec![(0, ""), (1, "")],
    });
}

#[test]
fn after_bad_entry_republish() {
    run(&Transition {
        name: "bad default, republished",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: false,
        counters: vec![(0, "+0-3"), (1, "")],
    });
}

#[test]
fn after_bad_entry_rollback_made_permanent() {
    run(&Transition {
        name: "bad default, rolled back",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
        new_bootversion: true,
        counters: vec![(0, "+0-3"), (1, "")],
    });
}

#[test]
fn after_bad_entry_upgrade() {
    run(&Transition {
        name: "bad default, then a fixed upgrade",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('c', 0, "k3", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: true,
        counters: vec![(0, "+0-3"), (1, "")],
    });
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
    set_counter(&esp_dir, &base_of(&entries, &boot, 0), "+0-3");
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
    run(&Transition {
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
    });
}

#[test]
fn deployment_added_behind_the_default() {
    run(&Transition {
        name: "deploy not as default",
        old: vec![dep('a', 0, "k1", "rw")],
        new: vec![dep('a', 0, "k1", "rw"), dep('b', 0, "k2", "rw")],
        new_bootversion: true,
        counters: vec![(0, "")],
    });
}

#[test]
fn upgrade_replacing_an_unbooted_default() {
    // A second upgrade before rebooting replaces the pending deployment: the
    // old default's entry is stale and must outlive the switch.
    run(&Transition {
        name: "upgrade over a pending deployment",
        old: vec![dep('b', 0, "k2", "rw"), dep('a', 0, "k1", "rw")],
        new: vec![dep('c', 0, "k3", "rw"), dep('a', 0, "k1", "rw")],
        new_bootversion: true,
        counters: vec![(1, "")],
    });
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
