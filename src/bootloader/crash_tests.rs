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
    kargs: String,
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
        kargs: kargs.to_string(),
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

/// What the kernel files on the simulated `/boot` hold.
#[derive(Clone, Copy)]
pub(super) enum Kernels<'a> {
    /// A few kilobytes of text, different for each kernel: enough for the
    /// model, which only needs files to exist and copies to be complete.
    Fake,
    /// The same bootable kernel image for every kernel, so that real firmware
    /// can boot any state of the ESP (initramfs images stay junk).
    Real(&'a Path),
}

fn write_kernels(boot: &Path, kernels: &[&str], source: Kernels) {
    for k in kernels {
        let dir = boot.join(format!("ostree/debian-{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let vmlinuz = dir.join("vmlinuz-6.1");
        match source {
            Kernels::Fake => std::fs::write(vmlinuz, format!("kernel {k} ").repeat(500)).unwrap(),
            Kernels::Real(image) => {
                std::fs::copy(image, vmlinuz).unwrap();
            }
        }
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

pub(super) struct Transition {
    name: &'static str,
    old: Vec<Dep>,
    new: Vec<Dep>,
    /// libostree swapped bootversions (new links under boot.1, old ones kept
    /// until cleanup) rather than only retargeting boot.0's links.
    new_bootversion: bool,
    /// (index in `old`, counter suffix) applied after the old publish.
    counters: Vec<(usize, &'static str)>,
}

impl Transition {
    /// Appends `extra` to every deployment's kernel arguments, old and new
    /// alike, so that the transition itself is unchanged.
    pub(super) fn add_kargs(&mut self, extra: &str) {
        for d in self.old.iter_mut().chain(&mut self.new) {
            d.kargs = format!("{} {extra}", d.kargs);
        }
    }
}

/// Where a trial's ESP lives: a directory (what a booted host has mounted)
/// or a FAT filesystem in an image file written with mtools (what `image
/// build` uses).
#[derive(Clone, Copy, Debug)]
pub(super) enum Backend {
    Dir,
    Mtools,
}

impl Backend {
    /// An empty ESP at `at`: a directory, or an image file made as `image
    /// build` makes the ESP, big enough for real kernels and of the same
    /// geometry (cluster size) as the ESP the firmware reads.
    fn create(self, at: &Path) -> Box<dyn EspFs> {
        match self {
            Backend::Dir => {
                std::fs::create_dir(at).unwrap();
                Box::new(DirEsp::new(at))
            }
            Backend::Mtools => {
                crate::image::disk::mkfs_esp(at, crate::image::layout::ESP_SIZE).unwrap();
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
                // Mostly holes: a plain copy would write all of it, every time.
                crate::util::run(
                    std::process::Command::new("cp")
                        .arg("--sparse=always")
                        .arg(from)
                        .arg(to),
                    "cp",
                )
                .unwrap();
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

/// Replays `t` with a crash after every number of writes, changing each
/// publish's plan by `mutate`; returns how many writes the publish takes.
fn run_with(t: &Transition, backend: Backend, mutate: &dyn Fn(&mut Plan)) -> usize {
    let r = Replay::new(t, backend, Kernels::Fake);
    for n in 0.. {
        let (esp, crashed) = r.crash_after(n, &r.scratch(&format!("esp-{n}")), mutate);
        let esp = esp.as_ref();
        r.booted_after(n, esp);
        if crashed {
            // After the power comes back, a publish completes the job.
            publish_entries(&r.new_entries, &r.boot, esp).unwrap();
        }
        r.check_final(esp);
        if !crashed {
            return n;
        }
    }
    unreachable!()
}

/// A transition set up for replaying: the simulated `/boot`, libostree's new
/// entries and every bootlink either side of the switch, and the ESP as the
/// old publish and systemd-boot's counting left it.
pub(super) struct Replay {
    name: &'static str,
    work: tempfile::TempDir,
    backend: Backend,
    boot: PathBuf,
    new_entries: Vec<OstreeEntry>,
    /// Every bootlink an entry on the ESP may name → its deployment.
    links: BTreeMap<String, DeployId>,
    start: PathBuf,
    before_names: BTreeSet<String>,
    bad: BTreeSet<String>,
    /// What the invariant allows at any instant: the old and the new first
    /// good deployment (none before a first install).
    allowed: [Option<DeployId>; 2],
}

impl Replay {
    pub(super) fn new(t: &Transition, backend: Backend, kernels: Kernels) -> Replay {
        let work = tempfile::tempdir().unwrap();
        let boot = work.path().join("boot");
        let names: BTreeSet<&str> = t.old.iter().chain(&t.new).map(|d| d.kernel).collect();
        write_kernels(&boot, &names.into_iter().collect::<Vec<_>>(), kernels);

        let (old_entries, old_links) = ostree_state(&t.old, 0);
        let (new_entries, new_links) = ostree_state(&t.new, u32::from(t.new_bootversion));
        let links: BTreeMap<String, DeployId> = if t.new_bootversion {
            old_links.into_iter().chain(new_links).collect()
        } else {
            new_links
        };

        let start = work.path().join("start");
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

        let allowed = [
            first_good(&old_entries, &boot, &bad),
            first_good(&new_entries, &boot, &bad),
        ];
        Replay {
            name: t.name,
            work,
            backend,
            boot,
            new_entries,
            links,
            start,
            before_names,
            bad,
            allowed,
        }
    }

    /// A path in the replay's scratch directory.
    pub(super) fn scratch(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// The deployment a kernel command line's `ostree=` bootlink leads to.
    pub(super) fn deployment_of(&self, cmdline: &str) -> Option<&DeployId> {
        self.links.get(ostree_karg(cmdline)?)
    }

    /// The ESP at `at` after a publish (its plan changed by `mutate`) lost
    /// power after `n` writes, and whether it did: with `n` at least the
    /// number of writes, the publish completes.
    pub(super) fn crash_after(
        &self,
        n: usize,
        at: &Path,
        mutate: &dyn Fn(&mut Plan),
    ) -> (Box<dyn EspFs>, bool) {
        let esp = self.backend.copy(&self.start, at);
        let crashing = CrashingEsp::new(esp.as_ref(), n);
        let result = publish_mutated(&self.new_entries, &self.boot, &crashing, mutate);
        let crashed = crashing.crashed();
        match result {
            Ok(()) => assert!(!crashed, "{}: a publish crashed without error", self.name),
            Err(e) => assert!(crashed, "{}: publish failed: {e:#}", self.name),
        }
        (esp, crashed)
    }

    /// What the model says `esp`, the state after `n` writes, boots; panics
    /// unless the invariant allows it.
    pub(super) fn booted_after(&self, n: usize, esp: &dyn EspFs) -> Option<DeployId> {
        let got = booted(esp, &self.boot, &self.links);
        assert!(
            self.allowed.contains(&got),
            "{}: after {n} writes the default boots {got:?}, not one of {:?}",
            self.name,
            self.allowed
        );
        got
    }

    fn check_final(&self, esp: &dyn EspFs) {
        let name = self.name;
        let (boot, new_entries) = (&self.boot, &self.new_entries);
        assert_eq!(
            booted(esp, boot, &self.links),
            first_good(new_entries, boot, &self.bad),
            "{name}: final default"
        );
        let snap = read_snapshot(esp).unwrap();
        assert!(snap.temps.is_empty(), "{name}: temporary files left");
        let bases: BTreeSet<String> = snap.entries.iter().map(|e| e.base.clone()).collect();
        let want: BTreeSet<String> = (0..new_entries.len())
            .map(|i| base_of(new_entries, boot, i))
            .collect();
        assert_eq!(bases, want, "{name}: exactly one entry per deployment");
        for e in &snap.entries {
            let kept = self
                .before_names
                .iter()
                .find(|n| split_counter(n).map(|(b, _)| b) == Some(e.base.as_str()));
            match kept {
                Some(old_name) => assert_eq!(
                    &e.file_name, old_name,
                    "{name}: counter or blessing of an existing entry changed"
                ),
                None => assert!(e.file_name.ends_with("+3.conf"), "{}", e.file_name),
            }
        }
        let dirs: BTreeSet<String> = snap.kernel_dirs.keys().cloned().collect();
        let want_dirs: BTreeSet<String> = new_entries
            .iter()
            .map(|e| plan::kernel_dir(&e.osname, &e.bootcsum))
            .collect();
        assert_eq!(dirs, want_dirs, "{name}: kernel directories");
        let again = publish_entries(new_entries, boot, esp).unwrap();
        assert!(
            again.ops.is_empty(),
            "{name}: republish did {:?}",
            again.ops
        );
        assert!(snap
            .entries
            .iter()
            .all(|e| e.base.starts_with(ENTRY_PREFIX)));
    }
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

pub(super) fn transition(name: &str) -> Transition {
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
    write_kernels(&boot, &["k1", "k2"], Kernels::Fake);
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
    write_kernels(&boot, &["k1"], Kernels::Fake);
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
