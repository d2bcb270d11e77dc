//! Reusing the previous commit's initramfs when nothing it was built from
//! changed: dracut takes about a minute, a compose that adds a package or two
//! should not pay it again (docs/performance.md, "What is cached").
//!
//! When hostctl builds an initramfs it records, in the compose cache
//! (`CACHEDIR/initramfs/SHA256.json`, named by the SHA-256 of the image's
//! bytes), which files of the tree went into it, which dracut modules dracut
//! chose, and a key over those and the fixed inputs (kernel, its modules,
//! dracut and its configuration). The next compose reads the image of the
//! ref's head, finds its record by the same SHA-256, computes the key again
//! on the new tree, and reuses the image only if both keys are equal. A
//! missing or unreadable record, or any other doubt, means "build it".

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever what the key covers changes, so old records never match.
const KEY_VERSION: &[u8] = b"hostctl-initramfs-key-v1";

/// What a path of the tree is, as far as the key is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u32,
        sha256: [u8; 32],
    },
    Symlink(Vec<u8>),
    /// The names in a drop-in directory (`*.d`) the image has files of.
    Names(Vec<Vec<u8>>),
    Dir {
        mode: u32,
    },
    /// A device, fifo or socket: only its mode is keyed.
    Other {
        mode: u32,
    },
    Missing,
}

/// The record kept beside the compose cache for one built initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kver: String,
    pub key: String,
    /// The dracut modules dracut chose for the tree, sorted.
    pub modules: Vec<String>,
    /// Paths (relative to the tree's root) of the tree's files that went
    /// into the image unchanged.
    pub files: Vec<String>,
}

/// Paths, relative to the tree's root, that every initramfs is built from
/// whatever dracut picks: walked whole, whether or not a file of them ended
/// up in the image, because dracut's code and configuration decide what it
/// writes itself (files that are not copies of the tree's).
pub fn fixed_inputs(kver: &str) -> Vec<String> {
    vec![
        // The kernel image and its modules (initramfs.img is skipped).
        format!("usr/lib/modules/{kver}"),
        // dracut's code, its modules (hostctl's among them) and the
        // configuration it ships in usr/lib/dracut/dracut.conf.d.
        "usr/lib/dracut".into(),
        "usr/bin/dracut".into(),
        "etc/dracut.conf".into(),
        "etc/dracut.conf.d".into(),
        // Early microcode goes into a separate cpio under names that are
        // not the tree's, so it would not show in the file list.
        "usr/lib/firmware/intel-ucode".into(),
        "usr/lib/firmware/amd-ucode".into(),
        // Drop-in directories dracut copies whole (`*.conf` globs) even
        // for a generic image: a package that adds a file to one of them
        // changes the image, though no file of theirs may be in it yet.
        "etc/modprobe.d".into(),
        "usr/lib/modprobe.d".into(),
        "etc/modules-load.d".into(),
        "usr/lib/modules-load.d".into(),
        "etc/sysctl.d".into(),
        "usr/lib/sysctl.d".into(),
        "etc/depmod.d".into(),
        "usr/lib/depmod.d".into(),
        "etc/ld.so.conf.d".into(),
        "etc/udev/rules.d".into(),
    ]
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    // Length-prefixed, so that no two different field sequences hash alike.
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The key of an initramfs: one SHA-256 over the kernel version, the set of
/// dracut modules, and every path's entry in path order. Pure: the listings
/// and hashes are gathered by [`collect`] and [`included_modules`].
pub fn input_key(kver: &str, modules: &[String], entries: &BTreeMap<String, Entry>) -> String {
    let mut h = Sha256::new();
    field(&mut h, KEY_VERSION);
    field(&mut h, kver.as_bytes());
    let mut mods: Vec<&str> = modules.iter().map(String::as_str).collect();
    mods.sort_unstable();
    mods.dedup();
    field(&mut h, &(mods.len() as u64).to_le_bytes());
    for m in mods {
        field(&mut h, m.as_bytes());
    }
    field(&mut h, &(entries.len() as u64).to_le_bytes());
    for (path, e) in entries {
        field(&mut h, path.as_bytes());
        match e {
            Entry::File { mode, sha256 } => {
                field(&mut h, b"f");
                field(&mut h, &mode.to_le_bytes());
                field(&mut h, sha256);
            }
            Entry::Symlink(target) => {
                field(&mut h, b"l");
                field(&mut h, target);
            }
            Entry::Dir { mode } => {
                field(&mut h, b"d");
                field(&mut h, &mode.to_le_bytes());
            }
            Entry::Other { mode } => {
                field(&mut h, b"o");
                field(&mut h, &mode.to_le_bytes());
            }
            Entry::Names(names) => {
                field(&mut h, b"n");
                field(&mut h, &(names.len() as u64).to_le_bytes());
                for n in names {
                    field(&mut h, n);
                }
            }
            Entry::Missing => field(&mut h, b"-"),
        }
    }
    hex::encode(h.finalize())
}

fn utf8(rel: &Path) -> Result<String> {
    // Paths are keys of a JSON record; a lossy conversion could make two
    // names one and hide a change, so refuse (and build) instead.
    rel.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: not UTF-8, cannot be keyed", rel.display()))
}

/// The entries of the fixed inputs and of `listed`, read from `tree`.
pub fn collect(tree: &Path, kver: &str, listed: &[String]) -> Result<BTreeMap<String, Entry>> {
    let image = format!("usr/lib/modules/{kver}/initramfs.img");
    let mut paths: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    for root in fixed_inputs(kver) {
        let top = tree.join(&root);
        match std::fs::symlink_metadata(&top) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                paths.insert(root, Some(top));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                paths.insert(root, None);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", top.display())),
        }
        for e in walkdir::WalkDir::new(&top)
            .follow_links(false)
            .sort_by_file_name()
        {
            let e = e.with_context(|| format!("walking {}", top.display()))?;
            let rel = utf8(e.path().strip_prefix(tree).expect("walked under the tree"))?;
            if rel != image {
                paths.insert(rel, Some(e.path().to_path_buf()));
            }
        }
    }
    let mut names_entries: BTreeMap<String, Entry> = BTreeMap::new();
    // dracut takes drop-ins by glob (`modprobe.d/*.conf`, `rules.d/*.rules`,
    // ...): when the image has a file of a `*.d` directory, a new file
    // there may belong in it too, so the directory's names are keyed.
    let mut dropin_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for rel in listed {
        if !paths.contains_key(rel) {
            paths.insert(rel.clone(), resolve_in_tree(tree, Path::new(rel)));
        }
        let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
        if parent
            .file_name()
            .is_some_and(|n| n.as_bytes().ends_with(b".d"))
        {
            if let Some(dir) = resolve_in_tree(tree, parent) {
                dropin_dirs.insert(format!("{}/", parent.display()), dir);
            }
        }
    }
    for (key, dir) in dropin_dirs {
        paths.remove(&key);
        let names = match std::fs::read_dir(&dir) {
            Ok(rd) => {
                let mut n = rd
                    .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                    .collect::<std::io::Result<Vec<_>>>()
                    .with_context(|| format!("listing {}", dir.display()))?;
                n.sort();
                Entry::Names(n)
            }
            Err(_) => Entry::Missing,
        };
        names_entries.insert(key, names);
    }
    let mut out: BTreeMap<String, Entry> = paths
        .into_par_iter()
        .map(|(rel, p)| {
            let e = match p {
                Some(p) => entry(&p)?,
                None => Entry::Missing,
            };
            Ok((rel, e))
        })
        .collect::<Result<_>>()?;
    out.extend(names_entries);
    Ok(out)
}

fn entry(p: &Path) -> Result<Entry> {
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Entry::Missing)
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", p.display())),
    };
    let mode = m.mode();
    Ok(if m.is_file() {
        Entry::File {
            mode,
            sha256: crate::util::sha256_file(p)?,
        }
    } else if m.is_symlink() {
        let t = std::fs::read_link(p).with_context(|| format!("reading link {}", p.display()))?;
        Entry::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if m.is_dir() {
        Entry::Dir { mode }
    } else {
        Entry::Other { mode }
    })
}

/// Where `rel` lives in `tree`, following the symlinks of its parent
/// directories inside the tree (an absolute link such as `/lib ->
/// /usr/lib` means the tree's `/usr/lib`, not the build machine's); the last
/// component is not followed. `None` when the links loop.
pub fn resolve_in_tree(tree: &Path, rel: &Path) -> Option<PathBuf> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, rel);
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        if !todo.is_empty() {
            if let Ok(target) = std::fs::read_link(tree.join(&next)) {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                push_components(&mut todo, &target);
                continue;
            }
        }
        cur = next;
    }
    Some(tree.join(cur))
}

/// Pushes the components of `p` so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    todo.extend(comps.into_iter().rev());
}

/// The line hostctl's dracut module prints for each module dracut chose
/// (dracut/modules.d/90hostctl, `cmdline()`).
const MODULE_LINE: &str = "hostctl-dracut-module:";

/// The modules named in the output of `dracut --print-cmdline` run with
/// `HOSTCTL_LIST_DRACUT_MODULES=1`, sorted.
pub fn parse_modules(stdout: &str) -> Vec<String> {
    let mut out: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix(MODULE_LINE))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The paths (relative to the tree) of what dracut staged for the image,
/// in `staged` (its `--keep` directory's `initramfs/`), that are the same
/// in the tree: copies of the tree's files and links. The rest dracut
/// wrote itself (its scripts, the image's passwd, ld.so.cache,
/// initrd-release, ...), from its code and configuration, which the fixed
/// inputs cover.
pub fn copied_files(tree: &Path, staged: &Path) -> Result<Vec<String>> {
    let mut rels = Vec::new();
    for e in walkdir::WalkDir::new(staged)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("walking {}", staged.display()))?;
        if e.file_type().is_dir() {
            continue;
        }
        rels.push(utf8(
            e.path().strip_prefix(staged).expect("walked under staged"),
        )?);
    }
    let same: Vec<Option<String>> = rels
        .into_par_iter()
        .map(|rel| {
            let Some(in_tree) = resolve_in_tree(tree, Path::new(&rel)) else {
                return Ok(None);
            };
            let ours = entry(&in_tree)?;
            let theirs = entry(&staged.join(&rel))?;
            let equal = match (&ours, &theirs) {
                (Entry::File { sha256: a, .. }, Entry::File { sha256: b, .. }) => a == b,
                (Entry::Symlink(a), Entry::Symlink(b)) => a == b,
                _ => false,
            };
            Ok(equal.then_some(rel))
        })
        .collect::<Result<_>>()?;
    Ok(same.into_iter().flatten().collect())
}

/// `CACHEDIR/initramfs/SHA256.json`: the record of the image whose bytes
/// have that SHA-256.
pub fn record_path(cachedir: &Path, image_sha256: &str) -> PathBuf {
    cachedir
        .join("initramfs")
        .join(format!("{image_sha256}.json"))
}

pub fn read_record(path: &Path) -> Result<Option<Record>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let r = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(r))
}

/// Written atomically: a compose killed meanwhile leaves the old record or
/// none, never half of one.
pub fn write_record(path: &Path, r: &Record) -> Result<()> {
    let dir = path.parent().expect("record path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    serde_json::to_writer(&mut tmp, r).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Why the image of the previous commit cannot be reused, if it cannot: the
/// record and the current tree, compared.
pub fn refusal(
    record: &Record,
    kver: &str,
    modules: &[String],
    entries: &BTreeMap<String, Entry>,
) -> Option<String> {
    if record.kver != kver {
        return Some(format!(
            "it was built for kernel {}, the tree has {kver}",
            record.kver
        ));
    }
    if record.modules != modules {
        return Some("the dracut modules dracut would include changed".into());
    }
    if input_key(kver, modules, entries) != record.key {
        return Some("a file it was built from changed".into());
    }
    None
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fails unless `modules` names at least dracut's base module: an empty or
/// partial answer (an old hostctl module in the tree) must not be keyed.
pub fn check_modules(modules: &[String]) -> Result<()> {
    if !modules.iter().any(|m| m == "base") {
        bail!("dracut did not list the modules it would include (got {modules:?})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> Entry {
        Entry::File {
            mode: 0o100644,
            sha256: [n; 32],
        }
    }

    fn entries(pairs: &[(&str, Entry)]) -> BTreeMap<String, Entry> {
        pairs
            .iter()
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect()
    }

    fn mods(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_follows_files_modules_and_kernel() {
        let base = entries(&[("usr/bin/a", file(1)), ("usr/bin/b", file(2))]);
        let m = mods(&["base", "systemd"]);
        let k = input_key("6.1", &m, &base);
        assert_eq!(k, input_key("6.1", &m, &base), "deterministic");
        // Module order is not meaning.
        assert_eq!(k, input_key("6.1", &mods(&["systemd", "base"]), &base));

        let changed = entries(&[("usr/bin/a", file(1)), ("usr/bin/b", file(3))]);
        assert_ne!(k, input_key("6.1", &m, &changed), "changed content");
        let mode = entries(&[
            ("usr/bin/a", file(1)),
            (
                "usr/bin/b",
                Entry::File {
                    mode: 0o100755,
                    sha256: [2; 32],
                },
            ),
        ]);
        assert_ne!(k, input_key("6.1", &m, &mode), "changed mode");
        let gone = entries(&[("usr/bin/a", file(1)), ("usr/bin/b", Entry::Missing)]);
        assert_ne!(k, input_key("6.1", &m, &gone), "removed file");
        let link = entries(&[
            ("usr/bin/a", file(1)),
            ("usr/bin/b", Entry::Symlink(b"a".to_vec())),
        ]);
        assert_ne!(k, input_key("6.1", &m, &link), "file became a link");
        assert_ne!(
            k,
            input_key("6.1", &mods(&["base", "systemd", "lvm"]), &base),
            "a module more"
        );
        assert_ne!(k, input_key("6.2", &m, &base), "another kernel");
    }

    #[test]
    fn collect_keys_listed_files_only() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let kver = "6.1.0-1-amd64";
        std::fs::create_dir_all(t.join(format!("usr/lib/modules/{kver}"))).unwrap();
        std::fs::write(t.join(format!("usr/lib/modules/{kver}/vmlinuz")), "k").unwrap();
        std::fs::create_dir_all(t.join("usr/lib/dracut/modules.d/99base")).unwrap();
        std::fs::write(t.join("usr/lib/dracut/modules.d/99base/x.sh"), "x").unwrap();
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/systemctl"), "s1").unwrap();
        // Debian's merged /usr: /bin -> usr/bin.
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        let listed = vec!["bin/systemctl".to_string()];
        let m = mods(&["base"]);
        let key = |t: &Path| input_key(kver, &m, &collect(t, kver, &listed).unwrap());
        let k0 = key(t);

        // A file that did not go into the image: same key.
        std::fs::write(t.join("usr/bin/tmux"), "tmux").unwrap();
        assert_eq!(k0, key(t), "an unrelated file changed the key");
        // The image itself is not an input.
        std::fs::write(t.join(format!("usr/lib/modules/{kver}/initramfs.img")), "i").unwrap();
        assert_eq!(k0, key(t), "the image changed the key");

        // A listed file, reached through the tree's /bin link.
        std::fs::write(t.join("usr/bin/systemctl"), "s2").unwrap();
        let k1 = key(t);
        assert_ne!(k0, k1, "a listed file changed, the key did not");
        // dracut's own files, listed or not.
        std::fs::write(t.join("usr/lib/dracut/modules.d/99base/x.sh"), "y").unwrap();
        let k2 = key(t);
        assert_ne!(k1, k2, "dracut changed, the key did not");
        // The kernel image.
        std::fs::write(t.join(format!("usr/lib/modules/{kver}/vmlinuz")), "k2").unwrap();
        let k3 = key(t);
        assert_ne!(k2, k3, "the kernel changed, the key did not");
        // Configuration that did not exist before.
        std::fs::create_dir_all(t.join("etc/dracut.conf.d")).unwrap();
        std::fs::write(t.join("etc/dracut.conf.d/x.conf"), "x").unwrap();
        let k4 = key(t);
        assert_ne!(k3, k4, "new dracut configuration, same key");

        // A new file in a drop-in directory the image has a file of.
        std::fs::create_dir_all(t.join("usr/lib/udev/rules.d")).unwrap();
        std::fs::write(t.join("usr/lib/udev/rules.d/50-a.rules"), "a").unwrap();
        let listed = vec![
            "bin/systemctl".to_string(),
            "usr/lib/udev/rules.d/50-a.rules".to_string(),
        ];
        let key = |t: &Path| input_key(kver, &m, &collect(t, kver, &listed).unwrap());
        let k5 = key(t);
        std::fs::write(t.join("usr/lib/udev/rules.d/60-b.rules"), "b").unwrap();
        assert_ne!(k5, key(t), "a new drop-in, same key");
        // One in a drop-in directory dracut globs whatever the image has.
        let k6 = key(t);
        std::fs::create_dir_all(t.join("usr/lib/modprobe.d")).unwrap();
        std::fs::write(t.join("usr/lib/modprobe.d/x.conf"), "options x y=1").unwrap();
        assert_ne!(k6, key(t), "a new modprobe.d file, same key");
    }

    #[test]
    fn resolves_links_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("usr/lib")).unwrap();
        // Absolute: the tree's /usr/lib, not the build machine's.
        std::os::unix::fs::symlink("/usr/lib", t.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        assert_eq!(
            resolve_in_tree(t, Path::new("lib/x.so")).unwrap(),
            t.join("usr/lib/x.so")
        );
        assert_eq!(
            resolve_in_tree(t, Path::new("bin/sh")).unwrap(),
            t.join("usr/bin/sh")
        );
        // The last component is not followed.
        assert_eq!(resolve_in_tree(t, Path::new("lib")).unwrap(), t.join("lib"));
        std::os::unix::fs::symlink("loop", t.join("loop")).unwrap();
        assert_eq!(resolve_in_tree(t, Path::new("loop/x")), None);
    }

    #[test]
    fn copied_files_are_those_equal_to_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        let staged = d.path().join("staged");
        for root in [&tree, &staged] {
            std::fs::create_dir_all(root.join("usr/bin")).unwrap();
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::write(root.join("usr/bin/sh"), "sh").unwrap();
            std::os::unix::fs::symlink("sh", root.join("usr/bin/bash")).unwrap();
        }
        std::fs::write(tree.join("etc/passwd"), "root\nuuidd\n").unwrap();
        std::fs::write(staged.join("etc/passwd"), "root\n").unwrap();
        std::fs::write(staged.join("init"), "generated").unwrap();
        assert_eq!(
            copied_files(&tree, &staged).unwrap(),
            vec!["usr/bin/bash", "usr/bin/sh"]
        );
    }

    #[test]
    fn refusal_says_why() {
        let e = entries(&[("usr/bin/a", file(1))]);
        let m = mods(&["base", "systemd"]);
        let r = Record {
            kver: "6.1".into(),
            key: input_key("6.1", &m, &e),
            modules: m.clone(),
            files: vec!["usr/bin/a".into()],
        };
        assert_eq!(refusal(&r, "6.1", &m, &e), None);
        assert!(refusal(&r, "6.2", &m, &e).unwrap().contains("kernel 6.1"));
        assert!(refusal(&r, "6.1", &mods(&["base"]), &e)
            .unwrap()
            .contains("modules"));
        let changed = entries(&[("usr/bin/a", file(2))]);
        assert!(refusal(&r, "6.1", &m, &changed)
            .unwrap()
            .contains("file it was built from"));
    }

    #[test]
    fn parses_the_module_lines() {
        let out = " rd.driver.pre=x\nhostctl-dracut-module: systemd\n\
                   hostctl-dracut-module: base\nhostctl-dracut-module: base\n";
        assert_eq!(parse_modules(out), vec!["base", "systemd"]);
        assert!(check_modules(&parse_modules(out)).is_ok());
        assert!(check_modules(&[]).is_err());
    }

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = record_path(d.path(), &sha256_hex(b"image"));
        assert_eq!(read_record(&p).unwrap(), None);
        let r = Record {
            kver: "6.1".into(),
            key: "k".into(),
            modules: mods(&["base"]),
            files: vec!["usr/bin/a".into()],
        };
        write_record(&p, &r).unwrap();
        assert_eq!(read_record(&p).unwrap(), Some(r));
        std::fs::write(&p, "{").unwrap();
        assert!(read_record(&p).is_err());
    }
}
