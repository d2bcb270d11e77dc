//! Bootloader entries on the EFI system partition.
//!
//! libostree (bootloader `none`) stays the source of truth: it writes BLS
//! entries and kernels into the root filesystem's `/boot`, which firmware
//! cannot read. [`publish`] mirrors them onto the ESP for systemd-boot, with
//! boot counting, in an order that keeps this invariant:
//!
//! > At every instant, including a power cut between (or inside) any two
//! > writes, the ESP holds a bootable set whose default is either the old or
//! > the new deployment 0.
//!
//! How the order achieves it is spelled out in [`plan`]; [`sdboot`] models
//! how systemd-boot picks its default, and the tests replay every publish
//! with a crash after each single write and check the model's answer.

pub mod bls;
pub mod cli;
pub mod esp;
pub mod mtools;
pub mod plan;
pub mod sdboot;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod firmware_tests;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use bls::OstreeEntry;
use esp::{EspFs, ENTRIES_DIR, KERNELS_DIR, LOADER_CONF, LOADER_DIR};
use plan::{DesiredEntry, EspSnapshot, ExistingEntry, Op, Plan};

pub use esp::{DirEsp, EspFs as Esp};
pub use mtools::MtoolsEsp;

/// Where a host mounts its ESP (an fstab line written by `hostctl image build`).
pub const HOST_ESP: &str = "/efi";

/// An ESP to publish onto: a mounted directory, or a FAT filesystem inside
/// an image file (at a byte offset) written with mtools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspTarget {
    Dir(PathBuf),
    Image { path: PathBuf, offset: u64 },
}

impl EspTarget {
    /// The ESP as the filesystem operations publishing uses.
    pub fn open(&self) -> Box<dyn EspFs> {
        match self {
            EspTarget::Dir(d) => Box::new(DirEsp::new(d)),
            EspTarget::Image { path, offset } => Box::new(MtoolsEsp::new(path, *offset)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            EspTarget::Dir(d) => d.display().to_string(),
            EspTarget::Image { path, offset } => format!("{} at offset {offset}", path.display()),
        }
    }

    /// Refuses an ESP that cannot be the real one before anything is
    /// written: a missing directory or image, or a directory on the same
    /// filesystem as the sysroot's `/boot` (or the sysroot itself, before
    /// an install made `/boot`), which is an unmounted mount point; writing
    /// there would leave the real ESP stale while looking successful.
    pub fn check(&self, sysroot: &Path) -> Result<()> {
        match self {
            EspTarget::Dir(esp) => {
                let e = std::fs::metadata(esp).with_context(|| {
                    format!("{}: ESP not found (mounted? see --esp)", esp.display())
                })?;
                if !e.is_dir() {
                    bail!("{}: ESP is not a directory", esp.display());
                }
                let boot = sysroot.join("boot");
                let against = if boot.is_dir() {
                    boot
                } else {
                    sysroot.to_path_buf()
                };
                let b = std::fs::metadata(&against)
                    .with_context(|| format!("stat {}", against.display()))?;
                if e.dev() == b.dev() {
                    bail!(
                        "{} is on the same filesystem as {}: the ESP is not mounted there",
                        esp.display(),
                        against.display()
                    );
                }
            }
            EspTarget::Image { path, .. } => {
                let m = std::fs::metadata(path)
                    .with_context(|| format!("{}: ESP image not found", path.display()))?;
                if !m.is_file() {
                    bail!("{}: ESP image is not a regular file", path.display());
                }
            }
        }
        Ok(())
    }
}

/// The ESP of the host whose sysroot is `sysroot`, when that host boots from
/// entries hostctl published and no ESP was named (`--esp`, `--esp-image`):
/// only the running system (`/`) has its ESP mounted, and only a mounted ESP
/// with a `loader/` directory has entries.
pub fn host_esp(sysroot: &Path) -> Option<EspTarget> {
    if sysroot != Path::new("/") {
        return None;
    }
    let esp = PathBuf::from(HOST_ESP);
    esp.join("loader").is_dir().then_some(EspTarget::Dir(esp))
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub ops: Vec<String>,
    /// The entry file systemd-boot boots by default afterwards.
    pub default_entry: Option<String>,
}

/// Publishes the deployments of `sysroot` (its `/boot/loader/entries`) onto
/// `esp`. Safe to call any number of times; does nothing when the ESP is up
/// to date.
///
/// Callers that change deployments must publish *before* libostree's cleanup
/// removes the previous bootlinks (`write_deployments` with `do_postclean`
/// off, then `publish`, then `cleanup`); see docs/boot.md.
pub fn publish(sysroot: &Path, esp: &dyn EspFs) -> Result<PublishReport> {
    let entries = bls::read_sysroot_entries(sysroot)?;
    publish_entries(&entries, &sysroot.join("boot"), esp)
}

/// Publishes already-read libostree entries whose `linux`/`initrd` paths are
/// relative to `boot_dir`.
pub fn publish_entries(
    entries: &[OstreeEntry],
    boot_dir: &Path,
    esp: &dyn EspFs,
) -> Result<PublishReport> {
    if entries.is_empty() {
        // Publishing nothing would remove every entry and leave the machine
        // unbootable; an empty list means the sysroot was misread.
        bail!(
            "no deployments to publish from {}; leaving {} as it is",
            boot_dir.display(),
            esp.describe()
        );
    }
    let desired = desired_entries(entries, boot_dir)?;
    let snap = read_snapshot(esp)?;
    let p = plan::plan(&desired, &snap);
    execute(&p, esp)?;
    Ok(PublishReport {
        ops: p.ops.iter().map(|o| o.to_string()).collect(),
        default_entry: p.default_entry,
    })
}

fn desired_entries(entries: &[OstreeEntry], boot_dir: &Path) -> Result<Vec<DesiredEntry>> {
    let size_of = |rel: &str| -> Result<(std::path::PathBuf, u64)> {
        let p = crate::util::in_root(boot_dir, rel);
        let m = std::fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        Ok((p, m.len()))
    };
    entries
        .iter()
        .map(|e| plan::desired_entry(e, &size_of))
        .collect()
}

/// Applies `p` one operation at a time, then flushes.
pub fn execute(p: &Plan, esp: &dyn EspFs) -> Result<()> {
    for op in &p.ops {
        let r = match op {
            Op::CreateDir(d) => esp.create_dir(d),
            Op::CopyIn { src, dest } => esp.copy_in(src, dest),
            Op::Write { dest, contents } => esp.write_file(dest, contents.as_bytes()),
            Op::RemoveFile(f) => esp.remove_file(f),
            Op::RemoveDir(d) => esp.remove_dir(d),
        };
        r.with_context(|| format!("{}: {op}", esp.describe()))?;
    }
    esp.sync()
        .with_context(|| format!("{}: flushing", esp.describe()))
}

/// Reads what publishing needs to know about the ESP.
pub fn read_snapshot(esp: &dyn EspFs) -> Result<EspSnapshot> {
    let mut s = EspSnapshot::default();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    if let Some(list) = esp.list_dir(LOADER_DIR)? {
        s.has_loader_dir = true;
        for de in list {
            if plan::is_temp(&de.name) && !de.is_dir {
                s.temps.push(format!("{LOADER_DIR}/{}", de.name));
            }
        }
        s.loader_conf = esp.read_file(LOADER_CONF)?.map(text);
    }
    if let Some(list) = esp.list_dir(ENTRIES_DIR)? {
        s.has_entries_dir = true;
        for de in list.into_iter().filter(|d| !d.is_dir) {
            let path = format!("{ENTRIES_DIR}/{}", de.name);
            if plan::is_temp(&de.name) {
                s.temps.push(path);
                continue;
            }
            if !de.name.starts_with(plan::ENTRY_PREFIX) {
                continue;
            }
            let Some(contents) = esp.read_file(&path)? else {
                continue;
            };
            if let Some(e) = ExistingEntry::new(&de.name, &text(contents)) {
                s.entries.push(e);
            }
        }
    }
    if let Some(list) = esp.list_dir(KERNELS_DIR)? {
        s.has_kernels_dir = true;
        for de in list {
            let dir = format!("{KERNELS_DIR}/{}", de.name);
            if !de.is_dir {
                if plan::is_temp(&de.name) {
                    s.temps.push(dir);
                }
                continue;
            }
            let mut files = BTreeMap::new();
            for f in esp.list_dir(&dir)?.unwrap_or_default() {
                let path = format!("{dir}/{}", f.name);
                if plan::is_temp(&f.name) {
                    s.temps.push(path);
                } else if let Some(size) = esp.file_size(&path)? {
                    files.insert(f.name, size);
                }
            }
            s.kernel_dirs.insert(dir, files);
        }
    }
    Ok(s)
}

/// After boot: did systemd-boot fall back from deployment 0's entry because
/// its tries ran out? True when the booted deployment is not deployment 0 and
/// deployment 0's entry on the ESP is marked bad. The boot-time unit then
/// makes the rollback permanent (docs/boot.md, "Fallback").
pub fn fell_back(
    entries: &[OstreeEntry],
    booted: (&str, u32),
    boot_dir: &Path,
    esp: &dyn EspFs,
) -> Result<bool> {
    let Some(first) = entries.first() else {
        return Ok(false);
    };
    if (first.checksum.as_str(), first.deployserial) == booted {
        return Ok(false);
    }
    let want = desired_entries(std::slice::from_ref(first), boot_dir)?;
    let snap = read_snapshot(esp)?;
    Ok(snap
        .entries
        .iter()
        .any(|e| e.base == want[0].base && e.counter.is_some_and(|c| c.is_bad())))
}

/// Copies systemd-boot onto the ESP as the removable-media default loader
/// (`EFI/BOOT/BOOTX64.EFI`) and as `EFI/systemd/systemd-bootx64.efi`, so
/// that firmware without a boot entry for it (a fresh disk image) boots it.
/// `efi_binary` should come from the deployed tree
/// (`usr/lib/systemd/boot/efi/systemd-bootx64.efi`), not from the build host.
pub fn install_systemd_boot(efi_binary: &Path, esp: &dyn EspFs) -> Result<()> {
    for dir in ["EFI", "EFI/BOOT", "EFI/systemd"] {
        esp.create_dir(dir)
            .with_context(|| format!("{}: creating {dir}", esp.describe()))?;
    }
    for dest in ["EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"] {
        esp.copy_in(efi_binary, dest).with_context(|| {
            format!(
                "{}: installing {} as {dest}",
                esp.describe(),
                efi_binary.display()
            )
        })?;
    }
    esp.sync()
}
