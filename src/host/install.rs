//! `hostctl install`: a fresh filesystem becomes a sysroot with one
//! deployment. Everything it creates is removed again when it fails, so
//! the directory is left as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ostree::gio;

use super::verbs::{describe, Target, DEFAULT_STATEROOT};
use crate::host::deploy::{deploy_commit, origin_for};
use crate::host::origin::Refspec;
use crate::host::{fetch, kargs, sysroot, trust};
use crate::Outcome;

/// What `hostctl install` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub repo: String,
    pub refspec: String,
    pub remote: String,
    pub kargs: Vec<String>,
    /// Files of ed25519 public keys; every commit from the remote must be
    /// signed by one of them.
    pub verify_keys: Vec<PathBuf>,
    /// GPG keyring files (`gpg --export`); every commit from the remote
    /// must be signed by one of their keys.
    pub gpg_keyrings: Vec<PathBuf>,
    /// Accept an http(s) remote without keys.
    pub allow_unsigned: bool,
}

pub fn install(t: &Target, args: &InstallOptions) -> Result<Outcome> {
    kargs::validate_all(&args.kargs).context("--karg")?;
    let path = t.sysroot;
    sysroot::require_own_filesystem(path)?;
    if let Some(esp) = t.esp {
        esp.check(path)?;
    }
    let before = top_level_entries(path)?;
    let result = install_inner(t, args);
    if result.is_err() {
        // Leave DIR as it was: remove only what this install created.
        for name in top_level_entries(path).unwrap_or_default() {
            if !before.contains(&name) {
                let p = path.join(&name);
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    result
}

fn top_level_entries(path: &Path) -> Result<Vec<std::ffi::OsString>> {
    std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|e| {
            e.map(|e| e.file_name())
                .with_context(|| format!("reading {}", path.display()))
        })
        .collect()
}

fn install_inner(t: &Target, args: &InstallOptions) -> Result<Outcome> {
    let path = t.sysroot;
    let keys = trust::read_key_files(&args.verify_keys)?;
    trust::check_gpg_keyrings(&args.gpg_keyrings)?;
    trust::check_policy(
        &args.repo,
        !keys.is_empty() || !args.gpg_keyrings.is_empty(),
        args.allow_unsigned,
    )?;
    let osname = t.stateroot.unwrap_or(DEFAULT_STATEROOT);
    if path
        .join("ostree/deploy")
        .join(osname)
        .join("deploy")
        .is_dir()
        && std::fs::read_dir(path.join("ostree/deploy").join(osname).join("deploy"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "{} already has deployments in stateroot {osname}; use `hostctl upgrade` or `rebase`",
            path.display()
        );
    }
    let refspec = Refspec {
        remote: Some(args.remote.clone()),
        branch: Refspec::parse(&args.refspec)?.branch,
    };
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .ensure_initialized(gio::Cancellable::NONE)
        .with_context(|| format!("initializing sysroot {}", path.display()))?;
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading sysroot {}", path.display()))?;
    let repo = sysroot.repo();
    let config = repo.copy_config();
    // libostree writes BLS entries under /boot/loader and swaps the symlink
    // atomically; publishing them for the firmware is hostctl's job.
    config.set_string("sysroot", "bootloader", "none");
    // The remote lives in the repository config rather than /etc/ostree:
    // an unbooted sysroot's /etc is not the deployed system's /etc.
    let group = format!("remote \"{}\"", args.remote);
    config.set_string(&group, "url", &args.repo);
    // libostree verifies GPG signatures on its own pulls too when this is on.
    config.set_boolean(&group, "gpg-verify", !args.gpg_keyrings.is_empty());
    if !keys.is_empty() {
        trust::set_remote_keys(&config, &args.remote, &keys);
    }
    repo.write_config(&config)
        .with_context(|| format!("writing {}/ostree/repo/config", path.display()))?;
    repo.reload_config(gio::Cancellable::NONE)
        .with_context(|| format!("reading {}/ostree/repo/config", path.display()))?;
    trust::add_gpg_keyrings(&repo, &args.remote, &args.gpg_keyrings)?;
    sysroot
        .init_osname(osname, gio::Cancellable::NONE)
        .with_context(|| format!("creating stateroot {osname} in {}", path.display()))?;
    drop(sysroot);

    let mut host = sysroot::open(path, Some(osname), true)?;
    host.use_esp(t.esp)?;
    let probe = fetch::probe(&host.repo(), &path.join("ostree/repo"), &refspec, 1, false)?;
    let head = probe.head_info()?;
    fetch::pull_into_sysroot(&host.repo(), &probe, &head.checksum)?;
    let kargs = (!args.kargs.is_empty()).then_some(args.kargs.as_slice());
    deploy_commit(&host, &head.checksum, &origin_for(&refspec), None, kargs)?;
    println!(
        "Installed {} from {refspec} into {}.",
        describe(&head),
        path.display()
    );
    Ok(Outcome::Done)
}
