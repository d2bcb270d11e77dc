//! Refusing, before anything is committed, a tree that an OSTree commit
//! cannot hold or that cannot boot once deployed. Without these checks the
//! commit either fails deep in libostree with a message naming only a
//! basename, or succeeds and the failure shows only at deploy or at boot.
//!
//! Two points in the build call in: [`check_assembled`] on the tree as the
//! inputs made it (paths are still those of the base and overlays: `/etc`,
//! `/boot`), and [`check_deployable`] on the tree in the OSTree layout.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::layout::USRMERGE_DIRS;
use crate::util::escape_path;

/// Top-level directories whose content never reaches the commit: the
/// layout conversion empties the mount points, and `/var` has its own rules
/// (its special files are dropped with a warning).
const NOT_COMMITTED: &[&str] = &["dev", "proc", "sys", "run", "tmp", "var"];

/// The tree before the layout conversion: it has a `/usr` with something in
/// it, and every entry is something a commit can hold.
pub fn check_assembled(tree: &Path) -> Result<()> {
    let usr = tree.join("usr");
    match fs::symlink_metadata(&usr) {
        Ok(m) if m.is_dir() => {
            let mut entries =
                fs::read_dir(&usr).with_context(|| format!("reading {}", usr.display()))?;
            if entries.next().is_none() {
                bail!(
                    "/usr is empty (did remove-files remove its content?): a tree without programs and libraries cannot boot"
                );
            }
        }
        Ok(_) => bail!("/usr in the tree is not a directory: the tree cannot boot"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the tree has no /usr (did remove-files remove it?): a host cannot boot without it; libostree deploys /usr as the operating system"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", usr.display())),
    }
    check_entries(tree)
}

/// Every entry outside [`NOT_COMMITTED`] has a UTF-8 name (and link target)
/// and is a regular file, a directory or a symlink. The first offender is
/// named by its full path in the tree, which before the layout conversion
/// is its path in the base or overlay it came from.
pub fn check_entries(tree: &Path) -> Result<()> {
    let mut walk = walkdir::WalkDir::new(tree)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let rel = entry.path().strip_prefix(tree).expect("walk stays in tree");
        let ft = entry.file_type();
        if entry.depth() == 1
            && ft.is_dir()
            && rel.to_str().is_some_and(|n| NOT_COMMITTED.contains(&n))
        {
            walk.skip_current_dir();
            continue;
        }
        let shown = escape_path(&Path::new("/").join(rel));
        if entry.file_name().to_str().is_none() {
            bail!(
                "{shown}: the name is not valid UTF-8 and an OSTree commit can only hold UTF-8 names; rename it in the base or overlay, or remove it with remove-files"
            );
        }
        if ft.is_symlink() {
            let target =
                fs::read_link(entry.path()).with_context(|| format!("reading link {shown}"))?;
            if target.to_str().is_none() {
                bail!(
                    "{shown}: the link target {} is not valid UTF-8 and an OSTree commit can only hold UTF-8 link targets",
                    escape_path(&target)
                );
            }
        } else if let Some(kind) = special_kind(&ft) {
            bail!(
                "{shown} is a {kind}: an OSTree commit holds only regular files, directories and symlinks; remove it from the base or overlay (or with remove-files), or create it at boot with tmpfiles.d"
            );
        }
    }
    Ok(())
}

fn special_kind(ft: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some("FIFO")
    } else if ft.is_char_device() {
        Some("character device")
    } else if ft.is_block_device() {
        Some("block device")
    } else if ft.is_socket() {
        Some("socket")
    } else if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        None
    } else {
        Some("file of unknown type")
    }
}

/// The tree in the OSTree layout: the merged-/usr links lead somewhere,
/// and a tree built from packages has the kernel libostree deploys.
/// `from_packages`: the treefile installs packages (a tree composed only
/// from local files may be a layer or a test tree without a kernel).
pub fn check_deployable(tree: &Path, from_packages: bool) -> Result<()> {
    for d in USRMERGE_DIRS {
        let link = tree.join(d);
        let Ok(meta) = fs::symlink_metadata(&link) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        if !resolve_in(tree, Path::new(d)).is_some_and(|p| p.is_dir()) {
            let target = fs::read_link(&link).with_context(|| format!("reading link /{d}"))?;
            bail!(
                "/{d} -> {} leads to no directory in the tree (did remove-files remove it?): the tree cannot boot, programs and the kernel's init are looked up through /{d}",
                escape_path(&target)
            );
        }
    }
    if from_packages && kernels(tree)?.is_empty() {
        bail!(
            "the tree has no kernel (/usr/lib/modules/VERSION/vmlinuz): it cannot boot and libostree refuses to deploy it; add a kernel package (linux-image-amd64) to packages, and check remove-files"
        );
    }
    Ok(())
}

/// Kernel versions with a `vmlinuz` in `/usr/lib/modules/VERSION/`.
pub fn kernels(tree: &Path) -> Result<Vec<String>> {
    let modules = tree.join("usr/lib/modules");
    let entries = match fs::read_dir(&modules) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", modules.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", modules.display()))?;
        let rel = Path::new("usr/lib/modules")
            .join(e.file_name())
            .join("vmlinuz");
        if resolve_in(tree, &rel).is_some_and(|p| p.is_file()) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Resolve `rel` inside `root` the way the booted system will see it:
/// symlinks are followed, absolute targets start again at `root`, and `..`
/// never leaves it. `None` when a component is missing or links loop.
pub fn resolve_in(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut done = PathBuf::new();
    let mut todo: Vec<PathBuf> = rel
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.components().next() {
            None | Some(Component::CurDir) | Some(Component::RootDir) => continue,
            Some(Component::ParentDir) => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let next = done.join(&c);
        let meta = fs::symlink_metadata(root.join(&next)).ok()?;
        if !meta.file_type().is_symlink() {
            done = next;
            continue;
        }
        hops += 1;
        if hops > 40 {
            return None;
        }
        let target = fs::read_link(root.join(&next)).ok()?;
        if target.is_absolute() {
            done = PathBuf::new();
        }
        todo.extend(
            target
                .components()
                .rev()
                .map(|c| PathBuf::from(c.as_os_str())),
        );
    }
    Some(root.join(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in ["usr/bin", "usr/sbin", "usr/lib/modules/6.1/"] {
            fs::create_dir_all(d.path().join(p)).unwrap();
        }
        fs::write(d.path().join("usr/bin/sh"), "sh").unwrap();
        fs::write(d.path().join("usr/lib/modules/6.1/vmlinuz"), "k").unwrap();
        symlink("usr/bin", d.path().join("bin")).unwrap();
        symlink("/usr/sbin", d.path().join("sbin")).unwrap();
        d
    }

    fn err(r: Result<()>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn a_complete_tree_passes() {
        let t = tree();
        check_assembled(t.path()).unwrap();
        check_deployable(t.path(), true).unwrap();
        assert_eq!(kernels(t.path()).unwrap(), ["6.1"]);
    }

    #[test]
    fn no_usr_or_an_empty_usr_is_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        let e = err(check_assembled(t.path()));
        assert!(e.contains("no /usr") && e.contains("cannot boot"), "{e}");
        fs::create_dir(t.path().join("usr")).unwrap();
        let e = err(check_assembled(t.path()));
        assert!(e.contains("/usr is empty"), "{e}");
    }

    #[test]
    fn a_dangling_merged_usr_link_is_refused() {
        let t = tree();
        fs::remove_dir_all(t.path().join("usr/sbin")).unwrap();
        let e = err(check_deployable(t.path(), false));
        assert!(
            e.contains("/sbin -> /usr/sbin") && e.contains("cannot boot"),
            "{e}"
        );
        fs::create_dir(t.path().join("usr/sbin")).unwrap();
        fs::remove_dir_all(t.path().join("usr/bin")).unwrap();
        symlink("../nowhere", t.path().join("usr/bin")).unwrap();
        let e = err(check_deployable(t.path(), false));
        assert!(e.contains("/bin -> usr/bin"), "{e}");
    }

    #[test]
    fn a_kernel_is_required_only_from_packages() {
        let t = tree();
        fs::remove_file(t.path().join("usr/lib/modules/6.1/vmlinuz")).unwrap();
        check_deployable(t.path(), false).unwrap();
        let e = err(check_deployable(t.path(), true));
        assert!(e.contains("no kernel") && e.contains("vmlinuz"), "{e}");
        // A kernel reached through a link inside the tree counts.
        fs::write(t.path().join("usr/lib/k"), "k").unwrap();
        symlink("/usr/lib/k", t.path().join("usr/lib/modules/6.1/vmlinuz")).unwrap();
        check_deployable(t.path(), true).unwrap();
    }

    #[test]
    fn special_files_and_bad_names_are_named_by_path() {
        use std::os::unix::ffi::OsStrExt;
        let t = tree();
        let fifo = t.path().join("usr/lib/app.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = err(check_assembled(t.path()));
        assert!(e.starts_with("/usr/lib/app.fifo is a FIFO"), "{e}");
        fs::remove_file(&fifo).unwrap();
        // In a directory the layout empties, it does not matter.
        fs::create_dir(t.path().join("run")).unwrap();
        let c = std::ffi::CString::new(t.path().join("run/x").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        check_assembled(t.path()).unwrap();
        let bad = t
            .path()
            .join("usr/bin")
            .join(std::ffi::OsStr::from_bytes(b"x\xffy"));
        fs::write(&bad, "").unwrap();
        let e = err(check_assembled(t.path()));
        assert!(
            e.starts_with("/usr/bin/x\\xffy: the name is not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn resolve_in_stays_in_the_root() {
        let t = tree();
        let r = t.path();
        assert_eq!(
            resolve_in(r, Path::new("bin/sh")),
            Some(r.join("usr/bin/sh"))
        );
        assert_eq!(resolve_in(r, Path::new("sbin")), Some(r.join("usr/sbin")));
        symlink("../../../..", r.join("usr/up")).unwrap();
        assert_eq!(
            resolve_in(r, Path::new("usr/up/bin")),
            Some(r.join("usr/bin"))
        );
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in(r, Path::new("loop")), None);
        assert_eq!(resolve_in(r, Path::new("bin/missing")), None);
    }
}
