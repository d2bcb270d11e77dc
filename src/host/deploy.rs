//! The deployment mechanism the verbs share: deploy a commit with an
//! origin, write a deployment list and publish its boot entries before
//! anything is cleaned up, and undo a deploy that failed half way.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;

use crate::bootloader;
use crate::host::origin::Refspec;
use crate::host::plan;
use crate::host::sysroot::{self, origin_refspec, Host};

pub fn origin_for(refspec: &Refspec) -> glib::KeyFile {
    let kf = glib::KeyFile::new();
    kf.set_string("origin", "refspec", &refspec.to_string());
    kf
}

/// A copy of a deployment's origin for a new deployment, without the state
/// that belongs to the old one only (libostree keeps the pin there: a new
/// deployment of a pinned one must not come out pinned).
pub fn copy_origin(d: &ostree::Deployment) -> Result<glib::KeyFile> {
    let kf = glib::KeyFile::new();
    if let Some(o) = d.origin() {
        kf.load_from_data(&o.to_data(), glib::KeyFileFlags::KEEP_COMMENTS)
            .with_context(|| format!("copying the origin of deployment {}", d.csum()))?;
    }
    ostree::Deployment::origin_remove_transient_state(&kf);
    Ok(kf)
}

/// The first deployment of this stateroot: what boots next.
pub fn default_deployment(host: &Host) -> Result<ostree::Deployment> {
    host.deployments()
        .into_iter()
        .find(|d| d.osname() == host.osname.as_str())
        .with_context(|| {
            format!(
                "no deployment of stateroot {} in {}; create one with `hostctl install`",
                host.osname,
                host.path.display()
            )
        })
}

pub fn deployment_refspec(d: &ostree::Deployment) -> Result<Refspec> {
    let r = origin_refspec(d)
        .with_context(|| format!("deployment {} has no origin refspec", d.csum()))?;
    Refspec::parse(&r).with_context(|| format!("origin of deployment {}", d.csum()))
}

/// Make `checksum` the next boot. Booted: staged, finalized at shutdown
/// (so later `/etc` edits are merged). Unbooted: deployed and written now,
/// keeping what `plan::retain_after_deploy` says.
pub fn deploy_commit(
    host: &Host,
    checksum: &str,
    origin: &glib::KeyFile,
    merge: Option<&ostree::Deployment>,
    override_kargs: Option<&[String]>,
) -> Result<()> {
    let kargs_ref: Option<Vec<&str>> =
        override_kargs.map(|k| k.iter().map(String::as_str).collect());
    let opts = ostree::SysrootDeployTreeOpts {
        override_kernel_argv: kargs_ref.as_deref(),
        ..Default::default()
    };
    let osname = host.osname.as_str();
    if host.booted {
        host.sysroot
            .stage_tree_with_options(
                Some(osname),
                checksum,
                Some(origin),
                merge,
                &opts,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("staging commit {checksum} in stateroot {osname}"))?;
        println!("Staged {checksum}; it is finalized at shutdown and boots next.");
        return Ok(());
    }
    let before = deployment_ids(&host.deployments());
    let new = host
        .sysroot
        .deploy_tree_with_options(
            Some(osname),
            checksum,
            Some(origin),
            merge,
            Some(&opts),
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("deploying commit {checksum} in stateroot {osname}"));
    let result = new.and_then(|new| {
        create_system_users(&host.deployment_dir(&new))?;
        let deps = host.deployments();
        let merge_idx = merge.and_then(|m| deps.iter().position(|d| d.equal(m)));
        let keep = plan::retain_after_deploy(host.roles().slots(), osname, merge_idx);
        let mut list = vec![sysroot::handle(&new)];
        list.extend(keep.into_iter().map(|i| sysroot::handle(&deps[i])));
        write_and_publish(host, &list)
    });
    if let Err(e) = result {
        return Err(match remove_unlisted_deployments(&host.path, &before) {
            Ok(()) => e,
            Err(why) => e.context(format!(
                "the failed deployment was left in place for `hostctl cleanup` ({why:#})"
            )),
        });
    }
    println!("Deployed {checksum}; it is the default for the next boot.");
    Ok(())
}

/// (stateroot, checksum, serial) of each deployment, in boot order.
pub fn deployment_ids(deps: &[ostree::Deployment]) -> Vec<(String, String, i32)> {
    deps.iter()
        .map(|d| {
            (
                d.osname().to_string(),
                d.csum().to_string(),
                d.deployserial(),
            )
        })
        .collect()
}

/// After a failed deploy, remove the deployment directory it made (a
/// checkout no boot entry names), but only once a fresh look at the sysroot
/// shows the deployment list exactly as it was before: if the failure came
/// while libostree was switching the list, a cleanup working from a
/// half-switched list can delete the deployments that still boot (and the
/// handle that failed may hold state libostree no longer expects). A fresh,
/// unlocked handle is used while the caller still holds the lock.
fn remove_unlisted_deployments(path: &Path, before: &[(String, String, i32)]) -> Result<()> {
    let fresh = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    fresh
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("reloading sysroot {}", path.display()))?;
    let now = deployment_ids(&fresh.deployments());
    if now != before {
        bail!(
            "the deployment list of {} changed while the deploy failed",
            path.display()
        );
    }
    let loader = path.join("boot/loader");
    if !before.is_empty() && !loader.join("entries").is_dir() {
        bail!("{} does not lead to boot entries", loader.display());
    }
    let cleaned = fresh
        .cleanup(gio::Cancellable::NONE)
        .with_context(|| format!("cleaning up {}", path.display()));
    if let Err(why) = cleaned {
        // libostree's cleanup writes refs before it deletes anything, so on
        // a full disk it fails exactly when a half-made checkout is most
        // likely; removing the directories no deployment names needs no
        // new space. Only if that also fails is something really left.
        remove_unlisted_dirs(path, before).with_context(|| format!("{why:#}"))?;
    }
    Ok(())
}

/// Remove `ostree/deploy/<stateroot>/deploy/<checksum>.<serial>` entries
/// (and their `.origin`) that are not in `listed`.
fn remove_unlisted_dirs(path: &Path, listed: &[(String, String, i32)]) -> Result<()> {
    let deploy_root = path.join("ostree/deploy");
    let stateroots = match std::fs::read_dir(&deploy_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", deploy_root.display())),
    };
    for stateroot in stateroots {
        let stateroot = stateroot.with_context(|| format!("listing {}", deploy_root.display()))?;
        let osname = stateroot.file_name().to_string_lossy().into_owned();
        let dir = stateroot.path().join("deploy");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((csum, serial)) = parse_deploy_name(&name) else {
                continue;
            };
            if listed
                .iter()
                .any(|(o, c, s)| *o == osname && c == csum && *s == serial)
            {
                continue;
            }
            let p = entry.path();
            let removed = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// `<64 hex>.<serial>` or `<64 hex>.<serial>.origin` → (checksum, serial).
fn parse_deploy_name(name: &str) -> Option<(&str, i32)> {
    let name = name.strip_suffix(".origin").unwrap_or(name);
    let (csum, serial) = name.split_once('.')?;
    if csum.len() != 64 || !csum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((csum, serial.parse().ok()?))
}

/// Write a new deployment list and, when the host has an ESP to publish to
/// (`Host::esp`: the one named with `--esp`/`--esp-image`, else the running
/// host's `/efi` when it holds hostctl's entries), publish them before
/// anything is cleaned up: libostree's
/// post-clean removes the bootlinks (`ostree=/ostree/boot.N/...`) that the
/// ESP's current entries still name, so cleaning first would leave the ESP
/// pointing at nothing until the publish finished (docs/boot.md).
pub fn write_and_publish(host: &Host, list: &[ostree::Deployment]) -> Result<()> {
    host.sysroot
        .write_deployments_with_options(
            list,
            &ostree::SysrootWriteDeploymentsOpts {
                do_postclean: false,
            },
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("writing the deployment list of {}", host.path.display()))?;
    if let Some(esp) = &host.esp {
        bootloader::publish(&host.path, &*esp.open())
            .with_context(|| format!("publishing boot entries onto {}", esp.describe()))?;
    }
    host.sysroot
        .cleanup(gio::Cancellable::NONE)
        .with_context(|| format!("cleaning up {}", host.path.display()))
}

/// Packages add system users through sysusers.d; on an unbooted sysroot
/// nobody runs systemd-sysusers at boot before the merged `/etc` is used,
/// so create them now, next to whatever the admin put in `/etc/passwd`.
pub fn create_system_users(deploy_dir: &Path) -> Result<()> {
    if !deploy_dir.join("usr/lib/sysusers.d").is_dir() {
        return Ok(());
    }
    crate::util::run(
        Command::new("systemd-sysusers").arg(format!("--root={}", deploy_dir.display())),
        &format!("creating system users in {}", deploy_dir.display()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_deploy_name;

    #[test]
    fn deployment_names_are_recognised_and_nothing_else() {
        let c = "a".repeat(64);
        assert_eq!(parse_deploy_name(&format!("{c}.0")), Some((c.as_str(), 0)));
        assert_eq!(
            parse_deploy_name(&format!("{c}.12.origin")),
            Some((c.as_str(), 12))
        );
        assert_eq!(parse_deploy_name(&format!("{c}.x")), None);
        assert_eq!(parse_deploy_name(&format!("{}.0", "g".repeat(64))), None);
        assert_eq!(parse_deploy_name("abc.0"), None);
        assert_eq!(parse_deploy_name("lost+found"), None);
    }
}
