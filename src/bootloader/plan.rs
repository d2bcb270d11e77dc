//! The desired ESP state for a list of deployments, and the ordered list of
//! single operations that gets there from what the ESP holds now. Pure: all
//! I/O happens in `super` (reading) and `super::esp` (writing).
//!
//! # Names and order
//!
//! An entry is `loader/entries/hostctl-<osname>-<csum12>.<serial>-<h8>[+3].conf`
//! where `<h8>` hashes the boot checksum, the kernel arguments (without
//! `ostree=`) and the kernel/initramfs names. The name is therefore the same
//! every time the same deployment is published with the same kernel and
//! arguments, which is what lets a republish leave systemd-boot's counter
//! (`+2-1`) or `systemd-bless-boot`'s blessing (no counter) alone: hostctl
//! never renames an entry, it only creates entries with `+3`, rewrites the
//! contents of existing ones in place, and removes stale ones.
//!
//! The order is carried by the entry *contents*: every hostctl entry has
//! `sort-key hostctl` and an integer `version`, and `loader.conf` says
//! `default hostctl-*`. systemd-boot 252 sorts entries with a sort key by
//! sort key, then version descending, bad entries (`+0-N`) last, and boots
//! the first entry matching the `default` glob; so the default is the good
//! hostctl entry with the highest version. The name (hence the counter) plays
//! no part unless versions tie, which they never do among hostctl entries.
//!
//! When the ESP already lists the deployments in libostree's order (each
//! deployment's entry has a lower version than the one before, and
//! deployment 0's is the highest of all hostctl entries) the versions are
//! kept. Otherwise they are renumbered above everything present:
//! deployment `i` of `n` gets `top + n - i`, written deployment 0 first. That
//! first write is the switch: it makes deployment 0 the highest; every later
//! write stays below it.
//!
//! # The invariant
//!
//! With `ops` applied in order, after any prefix of them (a power cut between
//! two operations, or inside one, which only leaves a temporary file):
//! systemd-boot's default entry exists, its kernel and initramfs are complete
//! files on the ESP, and it boots the old deployment 0 or the new one (the
//! first *good* one when entries are marked bad). Why:
//!
//! 1. stale temporary files go first (nothing refers to them);
//! 2. kernels and initramfs images are copied before any entry names them,
//!    each under a temporary name and renamed when complete;
//! 3. `loader.conf` (constant) and the `loader/entries` directory exist
//!    before the first entry;
//! 4. the write giving deployment 0's entry the highest version (a new file
//!    or a rewrite of an existing one) flips the default from old to new in
//!    one rename; until then the old highest entry is untouched;
//! 5. the other deployments' entries are then written below it;
//! 6. only then are stale entries removed, and after them the kernel
//!    directories no remaining entry refers to.
//!
//! The ESP entries carry libostree's `ostree=` bootlinks, which live on the
//! root filesystem; the callers' half of the bargain is in docs/boot.md
//! ("Bootlinks"): libostree's cleanup of the previous bootlinks must happen
//! after publishing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use super::bls::{options_without_ostree, OstreeEntry};
use super::esp::{ENTRIES_DIR, KERNELS_DIR, LOADER_CONF, LOADER_DIR, TEMP_PREFIX};
use super::sdboot::{split_counter, Counter};

/// Boot tries a newly published entry gets (`NAME+3.conf`).
pub const INITIAL_TRIES: u32 = 3;
/// Shared `sort-key` of hostctl entries.
pub const SORT_KEY: &str = "hostctl";
pub const ENTRY_PREFIX: &str = "hostctl-";

/// The loader.conf hostctl writes. `default` must match every hostctl entry
/// so that a bad default falls back to the next one in systemd-boot's order.
pub fn loader_conf() -> String {
    format!(
        "# Written by hostctl. The default is the highest-versioned good entry\n\
         # matching the glob; see hostctl's docs/boot.md.\n\
         default {ENTRY_PREFIX}*\n\
         timeout 3\n"
    )
}

/// A kernel or initramfs image to have on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    pub esp_path: String,
    pub src: PathBuf,
    pub size: u64,
}

/// One entry hostctl wants on the ESP, in libostree's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredEntry {
    /// The file name without counter and `.conf`.
    pub base: String,
    pub title: String,
    pub linux: String,
    pub initrds: Vec<String>,
    pub options: String,
    pub files: Vec<BootFile>,
    /// `(checksum, deployserial)` of the deployment it boots.
    pub deployment: (String, u32),
}

impl DesiredEntry {
    pub fn render(&self, version: u64) -> String {
        let mut s = format!(
            "# Published by hostctl from libostree's entry; rewritten on every publish.\n\
             title {}\nversion {version}\nsort-key {SORT_KEY}\nlinux {}\n",
            self.title, self.linux
        );
        for i in &self.initrds {
            s.push_str(&format!("initrd {i}\n"));
        }
        s.push_str(&format!("options {}\n", self.options));
        s
    }
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The ESP directory of a boot checksum.
pub fn kernel_dir(osname: &str, bootcsum: &str) -> String {
    format!("{KERNELS_DIR}/{osname}-{bootcsum}")
}

/// The desired entry for a libostree entry. `size_of` gives the size of a
/// file under the sysroot's `/boot` (and its local path).
pub fn desired_entry(
    e: &OstreeEntry,
    size_of: &dyn Fn(&str) -> Result<(PathBuf, u64)>,
) -> Result<DesiredEntry> {
    if !valid_name_part(&e.osname) || !valid_name_part(&e.bootcsum) {
        bail!(
            "{}: stateroot {:?} or boot checksum {:?} has characters unsafe in ESP file names",
            e.source_name,
            e.osname,
            e.bootcsum
        );
    }
    let dir = kernel_dir(&e.osname, &e.bootcsum);
    let mut files = Vec::new();
    let mut names = BTreeSet::new();
    let mut place = |boot_path: &str| -> Result<String> {
        let name = basename(boot_path);
        if !valid_name_part(name) {
            bail!("{}: unusable file name {boot_path:?}", e.source_name);
        }
        if !names.insert(name.to_string()) {
            bail!("{}: two boot files are named {name}", e.source_name);
        }
        let (src, size) = size_of(boot_path)?;
        let esp_path = format!("{dir}/{name}");
        files.push(BootFile {
            esp_path: esp_path.clone(),
            src,
            size,
        });
        Ok(format!("/{esp_path}"))
    };
    let linux = place(&e.linux)?;
    let initrds = e
        .initrds
        .iter()
        .map(|i| place(i))
        .collect::<Result<Vec<_>>>()?;
    let mut h = Sha256::new();
    for part in [
        e.bootcsum.as_str(),
        &options_without_ostree(&e.options),
        basename(&e.linux),
    ]
    .into_iter()
    .chain(e.initrds.iter().map(|i| basename(i)))
    {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let h8 = &hex::encode(h.finalize())[..8];
    let base = format!(
        "{ENTRY_PREFIX}{}-{}.{}-{h8}",
        e.osname,
        &e.checksum[..12.min(e.checksum.len())],
        e.deployserial
    );
    Ok(DesiredEntry {
        base,
        title: e.title.clone(),
        linux,
        initrds,
        // hostctl.deploy names the deployment itself, so that the initramfs
        // can recreate the ostree= bootlink if a cleanup removed it before
        // this entry was republished (dracut/modules.d/90hostctl).
        options: format!(
            "{} hostctl.deploy={}/{}.{}",
            e.options, e.osname, e.checksum, e.deployserial
        ),
        files,
        deployment: (e.checksum.clone(), e.deployserial),
    })
}

/// A hostctl entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEntry {
    pub file_name: String,
    pub base: String,
    pub counter: Option<Counter>,
    /// `version`, when it is an integer (hostctl's own entries).
    pub version: Option<u64>,
    pub contents: String,
}

impl ExistingEntry {
    pub fn new(file_name: &str, contents: &str) -> Option<ExistingEntry> {
        let (base, counter) = split_counter(file_name)?;
        if !base.starts_with(ENTRY_PREFIX) {
            return None;
        }
        let version = super::bls::BlsEntry::parse(contents)
            .get("version")
            .and_then(|v| v.parse().ok());
        Some(ExistingEntry {
            file_name: file_name.to_string(),
            base: base.to_string(),
            counter,
            version,
            contents: contents.to_string(),
        })
    }
}

/// What the ESP holds that publishing cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EspSnapshot {
    pub loader_conf: Option<String>,
    pub has_loader_dir: bool,
    pub has_entries_dir: bool,
    pub entries: Vec<ExistingEntry>,
    /// Directories under `hostctl/` and the sizes of the files in them.
    pub kernel_dirs: BTreeMap<String, BTreeMap<String, u64>>,
    pub has_kernels_dir: bool,
    /// Leftover temporary files (full ESP paths).
    pub temps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateDir(String),
    CopyIn { src: PathBuf, dest: String },
    Write { dest: String, contents: String },
    RemoveFile(String),
    RemoveDir(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateDir(d) => write!(f, "mkdir {d}"),
            Op::CopyIn { src, dest } => write!(f, "copy {} -> {dest}", src.display()),
            Op::Write { dest, .. } => write!(f, "write {dest}"),
            Op::RemoveFile(p) => write!(f, "remove {p}"),
            Op::RemoveDir(d) => write!(f, "rmdir {d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// File name deployment 0's entry has once the plan is applied.
    pub default_entry: Option<String>,
}

/// Whether the existing versions already list `desired` in order with
/// deployment 0 on top of every hostctl entry present.
fn versions_in_order(
    desired: &[DesiredEntry],
    existing: &BTreeMap<&str, &ExistingEntry>,
    top: u64,
) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for d in desired {
        let v = existing.get(d.base.as_str())?.version?;
        if out.last().is_some_and(|&prev| v >= prev) {
            return None;
        }
        out.push(v);
    }
    if let Some(&first) = out.first() {
        if first != top {
            return None;
        }
    }
    Some(out)
}

/// Orders the single operations that take the ESP from `snap` to `desired`.
pub fn plan(desired: &[DesiredEntry], snap: &EspSnapshot) -> Plan {
    let mut ops = Vec::new();

    // 1. Leftovers of an interrupted write.
    for t in &snap.temps {
        ops.push(Op::RemoveFile(t.clone()));
    }

    // 2. Kernels and initramfs images, once per boot checksum.
    let mut wanted_files: BTreeMap<&str, &BootFile> = BTreeMap::new();
    for f in desired.iter().flat_map(|d| &d.files) {
        wanted_files.entry(f.esp_path.as_str()).or_insert(f);
    }
    let mut made_dirs: BTreeSet<String> = BTreeSet::new();
    if !wanted_files.is_empty() && !snap.has_kernels_dir {
        ops.push(Op::CreateDir(KERNELS_DIR.to_string()));
    }
    for (path, f) in &wanted_files {
        let (dir, name) = path
            .rsplit_once('/')
            .expect("kernel files live in a directory");
        let have = snap.kernel_dirs.get(dir);
        if have.is_none() && made_dirs.insert(dir.to_string()) {
            ops.push(Op::CreateDir(dir.to_string()));
        }
        if have.and_then(|files| files.get(name)) != Some(&f.size) {
            ops.push(Op::CopyIn {
                src: f.src.clone(),
                dest: path.to_string(),
            });
        }
    }

    // 3. loader.conf and the entries directory.
    if !snap.has_loader_dir {
        ops.push(Op::CreateDir(LOADER_DIR.to_string()));
    }
    if snap.loader_conf.as_deref() != Some(loader_conf().as_str()) {
        ops.push(Op::Write {
            dest: LOADER_CONF.to_string(),
            contents: loader_conf(),
        });
    }
    if !snap.has_entries_dir {
        ops.push(Op::CreateDir(ENTRIES_DIR.to_string()));
    }

    // 4 and 5. Entries, deployment 0 first.
    let mut existing: BTreeMap<&str, &ExistingEntry> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for e in &snap.entries {
        if let Some(prev) = existing.get(e.base.as_str()) {
            // Two files for one identity cannot come from hostctl; keep the
            // one systemd-boot would prefer (more tries left) and drop the other.
            let keep_new =
                e.counter.map_or(u64::MAX, |c| c.left) > prev.counter.map_or(u64::MAX, |c| c.left);
            if keep_new {
                duplicates.push(prev.file_name.clone());
                existing.insert(&e.base, e);
            } else {
                duplicates.push(e.file_name.clone());
            }
        } else {
            existing.insert(&e.base, e);
        }
    }
    let top = snap
        .entries
        .iter()
        .filter_map(|e| e.version)
        .max()
        .unwrap_or(0);
    let n = desired.len() as u64;
    let versions = versions_in_order(desired, &existing, top)
        .unwrap_or_else(|| (0..n).map(|i| top + n - i).collect());
    let mut default_entry = None;
    for (d, v) in desired.iter().zip(versions) {
        let contents = d.render(v);
        let file_name = match existing.get(d.base.as_str()) {
            Some(e) => {
                if e.contents != contents {
                    ops.push(Op::Write {
                        dest: format!("{ENTRIES_DIR}/{}", e.file_name),
                        contents,
                    });
                }
                e.file_name.clone()
            }
            None => {
                let name = format!("{}+{INITIAL_TRIES}.conf", d.base);
                ops.push(Op::Write {
                    dest: format!("{ENTRIES_DIR}/{name}"),
                    contents,
                });
                name
            }
        };
        default_entry.get_or_insert(file_name);
    }

    // 6. Stale entries, then what only they referred to.
    let wanted_bases: BTreeSet<&str> = desired.iter().map(|d| d.base.as_str()).collect();
    for e in &snap.entries {
        if !wanted_bases.contains(e.base.as_str()) || duplicates.contains(&e.file_name) {
            ops.push(Op::RemoveFile(format!("{ENTRIES_DIR}/{}", e.file_name)));
        }
    }
    for (dir, files) in &snap.kernel_dirs {
        let mut keep_dir = false;
        for name in files.keys() {
            let path = format!("{dir}/{name}");
            if wanted_files.contains_key(path.as_str()) {
                keep_dir = true;
            } else {
                ops.push(Op::RemoveFile(path));
            }
        }
        if !keep_dir
            && !wanted_files
                .keys()
                .any(|p| p.starts_with(&format!("{dir}/")))
        {
            ops.push(Op::RemoveDir(dir.clone()));
        }
    }

    Plan { ops, default_entry }
}

/// True when `name` (a file in `loader/entries`, `hostctl/*` or `loader`)
/// is an interrupted write of ours.
pub fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const CSUM_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn ostree(csum: &str, serial: u32, bootcsum: &str, opts: &str) -> OstreeEntry {
        OstreeEntry {
            source_name: "t".into(),
            osname: "debian".into(),
            checksum: csum.into(),
            deployserial: serial,
            bootcsum: bootcsum.into(),
            title: "Debian".into(),
            options: format!("{opts} ostree=/ostree/boot.0/debian/{bootcsum}/0"),
            linux: format!("/ostree/debian-{bootcsum}/vmlinuz-6.1"),
            initrds: vec![format!("/ostree/debian-{bootcsum}/initramfs-6.1.img")],
        }
    }

    fn sizes(p: &str) -> Result<(PathBuf, u64)> {
        Ok((PathBuf::from(format!("/src{p}")), 100))
    }

    fn desired(list: &[OstreeEntry]) -> Vec<DesiredEntry> {
        list.iter()
            .map(|e| desired_entry(e, &sizes).unwrap())
            .collect()
    }

    /// The snapshot the ESP has once `plan` has been applied, with each
    /// entry's counter replaced by `counter(base)`.
    fn applied(p: &Plan, before: &EspSnapshot) -> EspSnapshot {
        let mut s = before.clone();
        for op in &p.ops {
            match op {
                Op::CreateDir(d) if d == LOADER_DIR => s.has_loader_dir = true,
                Op::CreateDir(d) if d == ENTRIES_DIR => s.has_entries_dir = true,
                Op::CreateDir(d) if d == KERNELS_DIR => s.has_kernels_dir = true,
                Op::CreateDir(d) => {
                    s.kernel_dirs.insert(d.clone(), BTreeMap::new());
                }
                Op::CopyIn { dest, .. } => {
                    let (d, n) = dest.rsplit_once('/').unwrap();
                    s.kernel_dirs.get_mut(d).unwrap().insert(n.into(), 100);
                }
                Op::Write { dest, contents } if dest == LOADER_CONF => {
                    s.loader_conf = Some(contents.clone())
                }
                Op::Write { dest, contents } => {
                    let name = dest.rsplit_once('/').unwrap().1;
                    s.entries.retain(|e| e.file_name != name);
                    s.entries.push(ExistingEntry::new(name, contents).unwrap());
                }
                Op::RemoveFile(p) => {
                    let (d, n) = p.rsplit_once('/').unwrap();
                    s.entries.retain(|e| e.file_name != n);
                    if let Some(files) = s.kernel_dirs.get_mut(d) {
                        files.remove(n);
                    }
                }
                Op::RemoveDir(d) => {
                    s.kernel_dirs.remove(d);
                }
            }
        }
        s
    }

    fn entry_writes(p: &Plan) -> Vec<&str> {
        p.ops
            .iter()
            .filter_map(|o| match o {
                Op::Write { dest, .. } if dest != LOADER_CONF => Some(dest.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_are_stable_and_depend_on_identity() {
        let a = desired_entry(&ostree(CSUM_A, 0, "k1", "rw"), &sizes).unwrap();
        let again = desired_entry(&ostree(CSUM_A, 0, "k1", "rw"), &sizes).unwrap();
        assert_eq!(a.base, again.base);
        assert!(
            a.base.starts_with("hostctl-debian-aaaaaaaaaaaa.0-"),
            "{}",
            a.base
        );
        // A different bootlink alone does not change the identity…
        let mut relinked = ostree(CSUM_A, 0, "k1", "rw");
        relinked.options = "rw ostree=/ostree/boot.1/debian/k1/1".into();
        assert_eq!(desired_entry(&relinked, &sizes).unwrap().base, a.base);
        // …but the serial, the kernel arguments and the kernel do.
        for other in [
            ostree(CSUM_A, 1, "k1", "rw"),
            ostree(CSUM_A, 0, "k1", "rw quiet"),
            ostree(CSUM_A, 0, "k2", "rw"),
            ostree(CSUM_B, 0, "k1", "rw"),
        ] {
            assert_ne!(desired_entry(&other, &sizes).unwrap().base, a.base);
        }
        assert!(!a.base.contains('+'), "a '+' would confuse counter parsing");
    }

    #[test]
    fn first_install_orders_kernels_then_conf_then_entries() {
        let d = desired(&[ostree(CSUM_B, 0, "k2", "rw"), ostree(CSUM_A, 0, "k1", "rw")]);
        let p = plan(&d, &EspSnapshot::default());
        let text: Vec<String> = p.ops.iter().map(|o| o.to_string()).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|t| t.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {text:#?}"))
        };
        assert!(pos("vmlinuz-6.1") < pos("loader.conf"));
        assert!(pos("initramfs-6.1.img") < pos("loader.conf"));
        assert!(pos("mkdir loader/entries") < pos(&format!("write {ENTRIES_DIR}/")));
        let w = entry_writes(&p);
        assert_eq!(w.len(), 2);
        assert!(
            w[0].contains(&d[0].base) && w[0].ends_with("+3.conf"),
            "{w:?}"
        );
        assert_eq!(
            p.default_entry.as_deref(),
            Some(&w[0][ENTRIES_DIR.len() + 1..])
        );
        // deployment 0 gets the higher version
        assert!(p.ops.iter().any(|o| matches!(o, Op::Write{dest, contents} if dest == w[0] && contents.contains("version 2\n"))));
        assert!(p.ops.iter().any(|o| matches!(o, Op::Write{dest, contents} if dest == w[1] && contents.contains("version 1\n"))));
    }

    #[test]
    fn republish_is_a_no_op_and_keeps_counters() {
        let d = desired(&[ostree(CSUM_B, 0, "k2", "rw"), ostree(CSUM_A, 0, "k1", "rw")]);
        let mut s = applied(&plan(&d, &EspSnapshot::default()), &EspSnapshot::default());
        assert!(plan(&d, &s).ops.is_empty(), "{:#?}", plan(&d, &s).ops);
        // systemd-boot counted one try on deployment 0, bless-boot blessed 1.
        for e in &mut s.entries {
            e.file_name = if e.base == d[0].base {
                format!("{}+2-1.conf", e.base)
            } else {
                format!("{}.conf", e.base)
            };
        }
        assert!(plan(&d, &s).ops.is_empty());
    }

    #[test]
    fn rollback_rewrites_new_default_first_and_keeps_names() {
        let d = desired(&[ostree(CSUM_B, 0, "k2", "rw"), ostree(CSUM_A, 0, "k1", "rw")]);
        let mut s = applied(&plan(&d, &EspSnapshot::default()), &EspSnapshot::default());
        for e in &mut s.entries {
            e.file_name = format!("{}.conf", e.base);
        }
        let rolled: Vec<_> = d.iter().rev().cloned().collect();
        let p = plan(&rolled, &s);
        let w = entry_writes(&p);
        assert_eq!(
            w,
            [
                format!("{ENTRIES_DIR}/{}.conf", d[1].base),
                format!("{ENTRIES_DIR}/{}.conf", d[0].base)
            ],
            "existing names are reused, new default first"
        );
        assert!(!p
            .ops
            .iter()
            .any(|o| matches!(o, Op::RemoveFile(_) | Op::CopyIn { .. })));
        let after = applied(&p, &s);
        let v = |base: &str| {
            after
                .entries
                .iter()
                .find(|e| e.base == base)
                .unwrap()
                .version
                .unwrap()
        };
        assert!(v(&d[1].base) > v(&d[0].base));
        assert!(v(&d[1].base) > 2, "renumbered above everything present");
    }

    #[test]
    fn upgrade_removes_stale_entry_then_unreferenced_kernel() {
        let old = desired(&[ostree(CSUM_A, 0, "k1", "rw")]);
        let s = applied(
            &plan(&old, &EspSnapshot::default()),
            &EspSnapshot::default(),
        );
        let new = desired(&[ostree(CSUM_B, 0, "k2", "rw")]);
        let p = plan(&new, &s);
        let text: Vec<String> = p.ops.iter().map(|o| o.to_string()).collect();
        let pos = |needle: &str| text.iter().position(|t| t.contains(needle)).unwrap();
        assert!(pos("debian-k2/vmlinuz") < pos(&new[0].base));
        assert!(pos(&new[0].base) < pos(&format!("remove {ENTRIES_DIR}/{}", old[0].base)));
        assert!(
            pos(&format!("remove {ENTRIES_DIR}/{}", old[0].base))
                < pos("remove hostctl/debian-k1/vmlinuz")
        );
        assert_eq!(text.last().unwrap(), "rmdir hostctl/debian-k1");
    }

    #[test]
    fn shared_kernel_is_copied_once() {
        let d = desired(&[ostree(CSUM_B, 0, "k1", "rw"), ostree(CSUM_A, 0, "k1", "rw")]);
        let p = plan(&d, &EspSnapshot::default());
        let copies = p
            .ops
            .iter()
            .filter(|o| matches!(o, Op::CopyIn { .. }))
            .count();
        assert_eq!(copies, 2, "one kernel and one initramfs: {:#?}", p.ops);
    }

    #[test]
    fn truncated_kernel_is_recopied() {
        let d = desired(&[ostree(CSUM_A, 0, "k1", "rw")]);
        let mut s = applied(&plan(&d, &EspSnapshot::default()), &EspSnapshot::default());
        s.kernel_dirs
            .get_mut("hostctl/debian-k1")
            .unwrap()
            .insert("vmlinuz-6.1".into(), 7);
        let p = plan(&d, &s);
        assert_eq!(
            p.ops,
            [Op::CopyIn {
                src: "/src/ostree/debian-k1/vmlinuz-6.1".into(),
                dest: "hostctl/debian-k1/vmlinuz-6.1".into()
            }]
        );
    }

    #[test]
    fn inserted_rollback_entry_does_not_overtake_default() {
        // A deployment added at index 1 forces renumbering; deployment 0's
        // write must come first so the newcomer never sits on top alone.
        let d = desired(&[ostree(CSUM_A, 0, "k1", "rw")]);
        let s = applied(&plan(&d, &EspSnapshot::default()), &EspSnapshot::default());
        let two = desired(&[ostree(CSUM_A, 0, "k1", "rw"), ostree(CSUM_B, 0, "k2", "rw")]);
        let p = plan(&two, &s);
        let w = entry_writes(&p);
        assert!(
            w[0].contains(&two[0].base) && w[1].contains(&two[1].base),
            "{w:?}"
        );
    }

    #[test]
    fn duplicate_files_for_one_entry_keep_the_blessed_one() {
        let d = desired(&[ostree(CSUM_A, 0, "k1", "rw")]);
        let mut s = applied(&plan(&d, &EspSnapshot::default()), &EspSnapshot::default());
        let contents = s.entries[0].contents.clone();
        let counting = format!("{}+2-1.conf", d[0].base);
        let blessed = format!("{}.conf", d[0].base);
        s.entries = vec![
            ExistingEntry::new(&counting, &contents).unwrap(),
            ExistingEntry::new(&blessed, &contents).unwrap(),
        ];
        let p = plan(&d, &s);
        assert_eq!(
            p.ops,
            [Op::RemoveFile(format!(
                "{ENTRIES_DIR}/{}+2-1.conf",
                d[0].base
            ))]
        );
        assert_eq!(p.default_entry, Some(format!("{}.conf", d[0].base)));
    }

    #[test]
    fn foreign_entries_are_left_alone() {
        assert!(ExistingEntry::new("debian-6.1.conf", "version 3").is_none());
        assert!(ExistingEntry::new("hostctl-x+1-2.conf", "version 3").is_some());
    }
}
