//! `hostctl image build`: a bootable GPT disk image from a commit.
//!
//! The image holds an EFI system partition (FAT32, systemd-boot, the boot
//! entries hostctl publishes) and a root partition (ext4, Discoverable
//! Partitions root type, label `root`) holding a sysroot made by
//! `hostctl install`. The image is built under a temporary name next to the
//! output and renamed into place only when complete, so a failure never leaves
//! a half-built image behind.

pub mod disk;
pub mod layout;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ostree::{gio, glib};

use crate::bootloader::{self, MtoolsEsp};
use crate::format::keys::REMOTE_ED25519_KEYS;
use crate::format::sign::PublicKey;
use crate::host::trust;
use crate::host::verbs::{self as verbs, Target};
use crate::Outcome;

/// What `hostctl image build` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub repo: PathBuf,
    pub refspec: String,
    pub output: PathBuf,
    pub size: String,
    pub kargs: Vec<String>,
    pub remote_url: Option<String>,
    /// Public key files the image's host verifies every commit against.
    pub verify_keys: Vec<PathBuf>,
    /// GPG keyring files the image's host verifies every commit against.
    pub gpg_keyrings: Vec<PathBuf>,
    /// Accept an http(s) remote URL without keys.
    pub allow_unsigned: bool,
}

/// systemd-boot, from Debian's `systemd-boot-efi`.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The remote name the image's host pulls from.
pub const REMOTE: &str = "origin";

pub fn build(stateroot: Option<&str>, args: &ImageOptions) -> Result<Outcome> {
    let keys = trust::read_key_files(&args.verify_keys)?;
    trust::check_gpg_keyrings(&args.gpg_keyrings)?;
    if let Some(url) = &args.remote_url {
        let has_keys = !keys.is_empty() || !args.gpg_keyrings.is_empty();
        trust::check_policy(url, has_keys, args.allow_unsigned)?;
    }
    let size = layout::parse_size(&args.size)?;
    let l = layout::plan(size)?;
    let repo_path = std::path::absolute(&args.repo)
        .with_context(|| format!("resolving {}", args.repo.display()))?;
    let repo = crate::format::repo::open(&repo_path)?;
    let head = crate::format::repo::ref_head(&repo, &args.refspec)?.with_context(|| {
        format!(
            "{}: no ref {} to build an image from",
            repo_path.display(),
            args.refspec
        )
    })?;

    let out_dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Scratch files sit next to the output: same filesystem, so the final
    // rename is atomic, and the caller chose a place with room for an image.
    let work = tempfile::Builder::new()
        .prefix(".hostctl-image-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
    let image = work.path().join("disk.img");
    let step = |n: u32, what: &str| eprintln!("[{n}/6] {what}");

    step(
        1,
        &format!("Partitioning a {} MiB GPT disk", l.disk_size / layout::MIB),
    );
    disk::sparse_file(&image, l.disk_size)?;
    disk::partition(&image, &l)?;

    step(2, "Making the root filesystem (ext4)");
    let root_fs = work.path().join("root.ext4");
    let uuid = disk::mkfs_root(&root_fs, l.root.size)?;
    let mnt = disk::LoopMount::new(&root_fs, &work.path().join("root"))?;

    step(
        3,
        &format!(
            "Installing {} ({head}) into the root filesystem",
            args.refspec
        ),
    );
    let mut kargs = vec![format!("root=UUID={uuid}"), "rw".to_string()];
    kargs.extend(args.kargs.iter().cloned());
    verbs::install(
        &Target {
            sysroot: &mnt.dir,
            stateroot,
            esp: None,
        },
        &verbs::InstallOptions {
            repo: format!("file://{}", repo_path.display()),
            refspec: args.refspec.clone(),
            remote: REMOTE.to_string(),
            kargs,
            verify_keys: args.verify_keys.clone(),
            gpg_keyrings: args.gpg_keyrings.clone(),
            allow_unsigned: args.allow_unsigned,
        },
    )?;
    if let Some(url) = &args.remote_url {
        point_remote_at(&mnt.dir, url, &keys, !args.gpg_keyrings.is_empty())?;
    }

    step(4, "Making the EFI system partition with systemd-boot");
    let esp_fs = work.path().join("esp.vfat");
    let volid = disk::mkfs_esp(&esp_fs, l.esp.size)?;
    let deployment = only_deployment(&mnt.dir)?;
    add_esp_to_fstab(&deployment, &volid)?;
    // The tree's own systemd-boot matches its systemd-bless-boot; the build
    // machine's is only a fallback for trees without the package.
    let tree_efi = deployment.join(SYSTEMD_BOOT_EFI.trim_start_matches('/'));
    let efi = if tree_efi.exists() {
        tree_efi
    } else {
        eprintln!(
            "warning: the tree has no systemd-boot; using the build machine's {SYSTEMD_BOOT_EFI}"
        );
        PathBuf::from(SYSTEMD_BOOT_EFI)
    };
    let esp = MtoolsEsp::new(&esp_fs, 0);
    bootloader::install_systemd_boot(&efi, &esp)?;

    step(5, "Publishing boot entries onto the ESP");
    bootloader::publish(&mnt.dir, &esp)?;
    mnt.unmount()?;

    step(6, &format!("Writing {}", args.output.display()));
    disk::place(&image, &esp_fs, l.esp)?;
    disk::place(&image, &root_fs, l.root)?;
    std::fs::rename(&image, &args.output)
        .with_context(|| format!("moving the image to {}", args.output.display()))?;
    println!(
        "Built {} ({} MiB): {} {head}, root filesystem UUID {uuid}",
        args.output.display(),
        l.disk_size / layout::MIB,
        args.refspec
    );
    Ok(Outcome::Done)
}

/// The deployment directory of a freshly installed sysroot.
fn only_deployment(sysroot: &Path) -> Result<PathBuf> {
    let pattern = format!("{}/ostree/deploy/*/deploy/*.[0-9]", sysroot.display());
    let mut found = glob::glob(&pattern)
        .context("listing deployments")?
        .filter_map(Result::ok)
        .filter(|p| p.is_dir());
    match (found.next(), found.next()) {
        (Some(d), None) => Ok(d),
        _ => anyhow::bail!(
            "expected exactly one deployment under {}",
            sysroot.display()
        ),
    }
}

/// The host mounts its ESP at `/efi` (every composed tree has that empty
/// directory) where hostctl's units publish boot entries. Written into the
/// deployment's `/etc` because the ESP's identity belongs to this disk, not
/// to the commit.
fn add_esp_to_fstab(deployment: &Path, volid: &str) -> Result<()> {
    use std::io::Write;
    let fstab = deployment.join("etc/fstab");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&fstab)
        .with_context(|| format!("opening {}", fstab.display()))?;
    writeln!(
        f,
        "# The EFI system partition, where hostctl publishes boot entries.\nUUID={volid} /efi vfat umask=0077,shortname=winnt,nofail 0 2"
    )
    .with_context(|| format!("writing {}", fstab.display()))
}

/// The image was installed from the build repository; its host pulls
/// updates from `url`. The remote's GPG keyring, imported by the install,
/// is a file of its own and stays.
fn point_remote_at(sysroot: &Path, url: &str, keys: &[PublicKey], gpg: bool) -> Result<()> {
    let repo = crate::format::repo::open(&sysroot.join("ostree/repo"))?;
    let opts = glib::VariantDict::new(None);
    opts.insert("gpg-verify", gpg);
    if !keys.is_empty() {
        opts.insert(REMOTE_ED25519_KEYS, trust::encode_keys(keys));
    }
    repo.remote_change(
        None::<&gio::File>,
        ostree::RepoRemoteChange::Replace,
        REMOTE,
        Some(url),
        Some(&opts.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("pointing remote {REMOTE} at {url}"))
}
