//! `/run/reboot-required` and `/run/reboot-required.pkgs`, the flag files
//! Debian's update-notifier-common and unattended-upgrades write and that
//! motd, monitoring and kured read: present while the default deployment
//! is not the booted one, listing the packages the next boot changes.
//!
//! Only the running host has them: a `--sysroot` that is not the booted
//! system says nothing about whether *this* machine needs a reboot.

use std::path::Path;

use anyhow::{Context, Result};

use crate::format::pkglist::{self, PackageDiff};
use crate::host::sysroot;

pub const FLAG: &str = "/run/reboot-required";
pub const PKGS: &str = "/run/reboot-required.pkgs";

/// What update-notifier-common writes into the flag file.
pub const FLAG_TEXT: &str = "*** System restart required ***\n";

/// The `.pkgs` file: each package the next boot adds, removes, upgrades or
/// downgrades, once, sorted, one per line.
pub fn pkgs_text(d: &PackageDiff) -> String {
    let mut names: Vec<&str> = d
        .added
        .iter()
        .chain(&d.removed)
        .map(|p| p.name.as_str())
        .chain(
            d.upgraded
                .iter()
                .chain(&d.downgraded)
                .map(|c| c.name.as_str()),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    names.iter().map(|n| format!("{n}\n")).collect()
}

/// What the flag files should hold: `None` when the default deployment is
/// the booted one (remove them), else the two files' contents.
pub fn wanted(default_is_booted: bool, diff: Option<&PackageDiff>) -> Option<(String, String)> {
    if default_is_booted {
        return None;
    }
    Some((
        FLAG_TEXT.to_string(),
        diff.map(pkgs_text).unwrap_or_default(),
    ))
}

/// Write or remove the files in `dir` (`/run` on a host) as `want` says.
pub fn apply(dir: &Path, want: Option<&(String, String)>) -> Result<()> {
    let flag = dir.join("reboot-required");
    let pkgs = dir.join("reboot-required.pkgs");
    match want {
        Some((f, p)) => {
            // .pkgs first: a reader that sees the flag finds the list.
            for (path, text) in [(&pkgs, p), (&flag, f)] {
                let tmp = std::path::PathBuf::from(format!("{}.hostctl-tmp", path.display()));
                std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, path)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            }
        }
        None => {
            for path in [&flag, &pkgs] {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()))
                    }
                }
            }
        }
    }
    Ok(())
}

/// After a command that may have changed the default deployment: bring
/// `/run/reboot-required(.pkgs)` in line with the sysroot at `path`, if it
/// is the running system; on any other sysroot do nothing.
pub fn refresh(path: &Path, stateroot: Option<&str>) -> Result<()> {
    let host = sysroot::open_unlocked_any(path, stateroot)?;
    if !host.booted {
        return Ok(());
    }
    let roles = host.roles();
    let deps = host.deployments();
    let Some(booted) = roles.booted() else {
        return Ok(());
    };
    let diff = if booted == 0 || deps.is_empty() {
        None
    } else {
        let repo = host.repo();
        // A commit without a recorded package list still needs the reboot;
        // the list is then empty.
        let old = pkglist::recorded_packages(&repo, &deps[booted].csum())?;
        let new = pkglist::recorded_packages(&repo, &deps[0].csum())?;
        old.zip(new).map(|(o, n)| pkglist::diff(&o, &n))
    };
    let want = wanted(booted == 0, diff.as_ref());
    apply(Path::new("/run"), want.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pkglist::{Change, Package};

    fn pkg(n: &str) -> Package {
        Package {
            name: n.into(),
            version: "1".into(),
            arch: "amd64".into(),
        }
    }

    fn chg(n: &str) -> Change {
        Change {
            name: n.into(),
            arch: "amd64".into(),
            from: "1".into(),
            to: "2".into(),
        }
    }

    #[test]
    fn contents_list_every_changed_package_once() {
        let d = PackageDiff {
            added: vec![pkg("zsh")],
            removed: vec![pkg("bash")],
            upgraded: vec![chg("libc6"), chg("libc6")],
            downgraded: vec![chg("curl")],
        };
        let (flag, pkgs) = wanted(false, Some(&d)).unwrap();
        assert_eq!(flag, "*** System restart required ***\n");
        assert_eq!(pkgs, "bash\ncurl\nlibc6\nzsh\n");
        // A kargs change or unrecorded lists: the flag, an empty list.
        assert_eq!(wanted(false, None).unwrap().1, "");
        assert_eq!(wanted(true, Some(&d)), None);
    }

    #[test]
    fn apply_writes_and_removes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let want = wanted(
            false,
            Some(&PackageDiff {
                added: vec![pkg("a")],
                ..Default::default()
            }),
        );
        apply(dir.path(), want.as_ref()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("reboot-required.pkgs")).unwrap(),
            "a\n"
        );
        assert!(dir.path().join("reboot-required").exists());
        apply(dir.path(), None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        apply(dir.path(), None).unwrap();
    }
}
