//! The OSTree layout: what libostree 2022.7 expects of a tree it deploys
//! (what users see of it: docs/treefile.md, "What the compose does to the tree").
//!
//! - `/etc` becomes `/usr/etc` (libostree's default `/etc` for the three-way merge);
//! - `/var` is emptied; what it held is recreated at boot by tmpfiles.d;
//! - `/bin`, `/sbin`, `/lib*` are links into `/usr`;
//! - the kernel and initramfs live in `/usr/lib/modules/$kver/`, `/boot` is empty;
//! - mutable top-level directories (`/home`, `/root`, `/opt`, ...) are links into `/var`.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::tmpfiles::{self, Ids, VarEntry, FACTORY_VAR, TMPFILES_CONF};

/// A top-level path that becomes a link, and where its content goes
/// (`keep`: the directory under `/var` and its mode; `None`: runtime-only
/// content, dropped).
struct TopLink {
    path: &'static str,
    target: &'static str,
    keep: Option<(&'static str, u32)>,
}

const LINKS: &[TopLink] = &[
    TopLink {
        path: "home",
        target: "var/home",
        keep: Some(("var/home", 0o755)),
    },
    TopLink {
        path: "root",
        target: "var/roothome",
        keep: Some(("var/roothome", 0o700)),
    },
    TopLink {
        path: "opt",
        target: "var/opt",
        keep: Some(("var/opt", 0o755)),
    },
    TopLink {
        path: "srv",
        target: "var/srv",
        keep: Some(("var/srv", 0o755)),
    },
    TopLink {
        path: "mnt",
        target: "var/mnt",
        keep: Some(("var/mnt", 0o755)),
    },
    TopLink {
        path: "usr/local",
        target: "../var/usrlocal",
        keep: Some(("var/usrlocal", 0o755)),
    },
    TopLink {
        path: "media",
        target: "run/media",
        keep: None,
    },
    TopLink {
        path: "ostree",
        target: "sysroot/ostree",
        keep: None,
    },
];

pub(crate) const USRMERGE_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Convert `tree` in place. Each step checks its input and fails with the
/// offending path rather than producing a commit that cannot boot.
pub fn ostree_layout(tree: &Path) -> Result<()> {
    check_etc(tree)?;
    merge_usr(tree)?;
    move_kernels(tree)?;
    link_toplevel(tree)?;
    var_to_tmpfiles(tree)?;
    move_etc(tree)?;
    ensure_dirs(tree)
}

fn is_dir_nofollow(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn exists_nofollow(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn check_etc(tree: &Path) -> Result<()> {
    if exists_nofollow(&tree.join("etc")) && exists_nofollow(&tree.join("usr/etc")) {
        bail!(
            "the tree has both /etc and /usr/etc ({}): libostree deploys /usr/etc as the default /etc, so only one may exist; put configuration in /etc",
            tree.display()
        );
    }
    Ok(())
}

fn merge_usr(tree: &Path) -> Result<()> {
    for d in USRMERGE_DIRS {
        let top = tree.join(d);
        let usr = tree.join("usr").join(d);
        let target = format!("usr/{d}");
        match fs::symlink_metadata(&top) {
            Ok(m) if m.file_type().is_symlink() => {
                let t =
                    fs::read_link(&top).with_context(|| format!("reading {}", top.display()))?;
                // An absolute link resolves against the host while composing;
                // a relative one works in every root, so only those are kept.
                if let Ok(rel) = t.strip_prefix("/") {
                    replace_with_link(&top, &rel.to_string_lossy())?;
                }
            }
            Ok(m) if m.is_dir() => {
                merge_dir(&top, &usr, &format!("/{d}"), &format!("/usr/{d}"))?;
                fs::remove_dir(&top).with_context(|| format!("removing {}", top.display()))?;
                symlink(&target, &top).with_context(|| format!("linking {}", top.display()))?;
            }
            Ok(_) => bail!("/{d} in the tree is not a directory or a link"),
            Err(_) if is_dir_nofollow(&usr) => {
                symlink(&target, &top).with_context(|| format!("linking {}", top.display()))?;
            }
            Err(_) => {}
        }
    }
    Ok(())
}

fn replace_with_link(path: &Path, target: &str) -> Result<()> {
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    symlink(target, path).with_context(|| format!("linking {} -> {target}", path.display()))
}

/// Move everything in `src` into `dst`. Identical duplicates are dropped; a
/// real conflict is refused, because picking one silently could break
/// whichever program expected the other.
fn merge_dir(src: &Path, dst: &Path, src_name: &str, dst_name: &str) -> Result<()> {
    if !exists_nofollow(dst) {
        return fs::rename(src, dst)
            .and_then(|_| fs::create_dir(src))
            .with_context(|| format!("moving {src_name} to {dst_name}"));
    }
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry.with_context(|| format!("reading {}", src.display()))?;
        let name = entry.file_name();
        let (s, d) = (entry.path(), dst.join(&name));
        let (sn, dn) = (
            format!("{src_name}/{}", name.to_string_lossy()),
            format!("{dst_name}/{}", name.to_string_lossy()),
        );
        if !exists_nofollow(&d) {
            fs::rename(&s, &d).with_context(|| format!("moving {sn} to {dn}"))?;
        } else if is_dir_nofollow(&s) && is_dir_nofollow(&d) {
            merge_dir(&s, &d, &sn, &dn)?;
            fs::remove_dir(&s).with_context(|| format!("removing {sn}"))?;
        } else if same_entry(&s, &d)? {
            fs::remove_file(&s).with_context(|| format!("removing {sn}"))?;
        } else {
            bail!(
                "cannot merge /usr: {sn} and {dn} both exist and differ; compose from a merged-/usr base (Debian's default since 12)"
            );
        }
    }
    Ok(())
}

fn same_entry(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (fs::symlink_metadata(a)?, fs::symlink_metadata(b)?);
    if ma.file_type().is_symlink() && mb.file_type().is_symlink() {
        return Ok(fs::read_link(a)? == fs::read_link(b)?);
    }
    if ma.is_file() && mb.is_file() {
        if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
            return Ok(true);
        }
        return Ok(ma.len() == mb.len()
            && ma.mode() == mb.mode()
            && fs::read(a).with_context(|| format!("reading {}", a.display()))?
                == fs::read(b).with_context(|| format!("reading {}", b.display()))?);
    }
    Ok(false)
}

/// Debian installs `/boot/vmlinuz-$kver` and `/boot/initrd.img-$kver`; libostree
/// only looks in `/usr/lib/modules/$kver/`.
fn move_kernels(tree: &Path) -> Result<()> {
    let boot = tree.join("boot");
    if is_dir_nofollow(&boot) {
        let mut names: Vec<String> = fs::read_dir(&boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for (prefix, dest_name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initramfs.img")] {
            for name in names.iter().filter(|n| n.starts_with(prefix)) {
                let kver = &name[prefix.len()..];
                let dir = tree.join("usr/lib/modules").join(kver);
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let dest = dir.join(dest_name);
                if !exists_nofollow(&dest) {
                    move_file(&boot.join(name), &dest)?;
                }
            }
        }
        empty_dir(&boot)?;
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let p = tree.join(link);
        if exists_nofollow(&p) && !is_dir_nofollow(&p) {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let modules = tree.join("usr/lib/modules");
    if let Ok(rd) = fs::read_dir(&modules) {
        for e in rd.flatten() {
            let dir = e.path();
            if dir.join("vmlinuz").exists() && !dir.join("initramfs.img").exists() {
                eprintln!(
                    "warning: kernel {} has no initramfs.img: the commit will not boot",
                    e.file_name().to_string_lossy()
                );
            }
        }
    }
    Ok(())
}

fn move_file(src: &Path, dest: &Path) -> Result<()> {
    fs::rename(src, dest).with_context(|| format!("moving {} to {}", src.display(), dest.display()))
}

fn empty_dir(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if is_dir_nofollow(&p) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn link_toplevel(tree: &Path) -> Result<()> {
    fs::create_dir_all(tree.join("var")).context("creating /var")?;
    for TopLink {
        path: name,
        target,
        keep,
    } in LINKS
    {
        let p = tree.join(name);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?
            }
            Ok(m) if m.is_dir() => match keep {
                Some((dest, _)) => {
                    let dest = tree.join(dest);
                    merge_dir(
                        &p,
                        &dest,
                        &format!("/{name}"),
                        &format!("/{}", dest.strip_prefix(tree).unwrap().display()),
                    )?;
                    fs::remove_dir(&p).with_context(|| format!("removing {}", p.display()))?;
                }
                None => {
                    fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?
                }
            },
            Ok(_) => bail!("/{name} in the tree is a file; it must be a directory or absent"),
            Err(_) => {}
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        symlink(target, &p).with_context(|| format!("linking /{name} -> {target}"))?;
        if let Some((dest, mode)) = keep {
            let dest = tree.join(dest);
            if !exists_nofollow(&dest) {
                fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))
                    .with_context(|| format!("setting mode of {}", dest.display()))?;
            }
        }
    }
    Ok(())
}

fn read_ids(tree: &Path) -> Ids {
    let read = |name: &str| {
        ["etc", "usr/etc"]
            .iter()
            .find_map(|d| fs::read_to_string(tree.join(d).join(name)).ok())
            .map(|t| tmpfiles::parse_id_file(&t))
            .unwrap_or_default()
    };
    Ids {
        users: read("passwd"),
        groups: read("group"),
    }
}

fn var_to_tmpfiles(tree: &Path) -> Result<()> {
    let var = tree.join("var");
    let ids = read_ids(tree);
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(&var)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("walking {}", var.display()))?;
        let rel = e.path().strip_prefix(tree).expect("under tree");
        let Some(path) = rel.to_str().map(|s| format!("/{s}")) else {
            bail!(
                "{} has a name that is not UTF-8; tmpfiles.d cannot express it",
                crate::util::escape_path(&Path::new("/").join(rel))
            );
        };
        let meta = e.metadata().with_context(|| format!("reading {path}"))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            entries.push(VarEntry::Dir {
                path,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
            });
        } else if ft.is_symlink() {
            let t = fs::read_link(e.path()).with_context(|| format!("reading link {path}"))?;
            let Some(target) = t.to_str() else {
                bail!("{path}: link target is not UTF-8");
            };
            entries.push(VarEntry::Symlink {
                path,
                target: target.to_string(),
            });
        } else if ft.is_file() {
            files.push(e.path().to_path_buf());
            entries.push(VarEntry::File { path });
        } else {
            eprintln!("warning: {path} is a special file; it is not carried into /var at boot");
        }
    }
    for f in files {
        let rel = f.strip_prefix(&var).expect("under var");
        let dest = tree.join(FACTORY_VAR).join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        move_file(&f, &dest)?;
    }
    empty_dir(&var)?;
    fs::set_permissions(&var, fs::Permissions::from_mode(0o755)).context("setting mode of /var")?;
    if !entries.is_empty() {
        let conf = tree.join(TMPFILES_CONF);
        fs::create_dir_all(conf.parent().unwrap())
            .with_context(|| format!("creating {}", conf.parent().unwrap().display()))?;
        fs::write(&conf, tmpfiles::render(&entries, &ids))
            .with_context(|| format!("writing {}", conf.display()))?;
    }
    Ok(())
}

fn move_etc(tree: &Path) -> Result<()> {
    let (etc, usr_etc) = (tree.join("etc"), tree.join("usr/etc"));
    match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => fs::rename(&etc, &usr_etc).context("moving /etc to /usr/etc")?,
        Ok(_) => bail!("/etc in the tree is not a directory"),
        Err(_) if !exists_nofollow(&usr_etc) => {
            fs::create_dir_all(&usr_etc).context("creating /usr/etc")?
        }
        Err(_) => {}
    }
    // Empty, so that systemd generates a fresh identity on each host's first boot.
    let mid = usr_etc.join("machine-id");
    fs::write(&mid, b"").with_context(|| format!("writing {}", mid.display()))?;
    fs::set_permissions(&mid, fs::Permissions::from_mode(0o444))
        .with_context(|| format!("setting mode of {}", mid.display()))
}

fn ensure_dirs(tree: &Path) -> Result<()> {
    for (d, mode) in [
        ("", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("sysroot", 0o755),
        ("boot", 0o755),
        // systemd-gpt-auto-generator mounts the ESP on an empty /efi.
        ("efi", 0o755),
        ("usr", 0o755),
    ] {
        let p = tree.join(d);
        if !exists_nofollow(&p) {
            fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        if matches!(d, "" | "dev" | "proc" | "sys" | "tmp" | "run" | "sysroot") {
            // Mount points at boot; what composing left there (device nodes
            // from a bootstrap, scratch files) has no place in a commit.
            if !d.is_empty() {
                empty_dir(&p)?;
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting mode of {}", p.display()))?;
        }
    }
    Ok(())
}
