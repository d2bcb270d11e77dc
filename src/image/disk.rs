//! Building the pieces of a disk image as plain files, then assembling them.
//!
//! Each filesystem is made in a file of its own (`mkfs.ext4` / `mkfs.vfat`
//! work on regular files) and copied into the partitioned image at its
//! offset at the end. That needs no partition-scanning loop devices and never
//! mounts vfat; only the ext4 root is loop-mounted, to install the sysroot.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::layout::{self, Extent, Layout, ESP_LABEL, ROOT_LABEL};
use crate::util::run;

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))
}

pub fn partition(image: &Path, l: &Layout) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting sfdisk")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(layout::sfdisk_script(l).as_bytes())
        .context("writing the partition table script to sfdisk")?;
    let out = child.wait_with_output().context("waiting for sfdisk")?;
    if !out.status.success() {
        anyhow::bail!(
            "partitioning {}: sfdisk: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An ext4 filesystem in `path`; returns its UUID (what `root=` names).
pub fn mkfs_root(path: &Path, size: u64) -> Result<String> {
    sparse_file(path, size)?;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", ROOT_LABEL])
            .arg(path),
        "making the root filesystem",
    )?;
    let uuid = run(
        Command::new("blkid")
            .args(["-p", "-s", "UUID", "-o", "value"])
            .arg(path),
        "reading the root filesystem's UUID",
    )?;
    Ok(uuid.trim().to_string())
}

/// A FAT32 ESP in `path`; returns its volume id as fstab spells it (`ABCD-1234`).
pub fn mkfs_esp(path: &Path, size: u64) -> Result<String> {
    sparse_file(path, size)?;
    let mut id = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut id,
    )
    .context("reading /dev/urandom")?;
    let hex = hex::encode_upper(id);
    run(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", ESP_LABEL, "-i", &hex])
            .arg(path),
        "making the EFI system partition",
    )?;
    Ok(format!("{}-{}", &hex[..4], &hex[4..]))
}

/// Copy a filesystem file into the image at its partition's offset.
pub fn place(image: &Path, fs_file: &Path, at: Extent) -> Result<()> {
    run(
        Command::new("dd")
            .arg(format!("if={}", fs_file.display()))
            .arg(format!("of={}", image.display()))
            .arg("bs=1M")
            .arg(format!("seek={}", at.offset / layout::MIB))
            .args(["conv=notrunc,sparse", "status=none"]),
        &format!("copying {} into {}", fs_file.display(), image.display()),
    )?;
    Ok(())
}

/// A loop mount that is undone when dropped, so a failed build never leaves
/// the root filesystem mounted.
pub struct LoopMount {
    pub dir: PathBuf,
    mounted: bool,
}

impl LoopMount {
    pub fn new(fs_file: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(fs_file)
                .arg(dir),
            &format!("mounting {}", fs_file.display()),
        )?;
        Ok(LoopMount {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        run(
            Command::new("umount").arg(&self.dir),
            &format!("unmounting {}", self.dir.display()),
        )?;
        Ok(())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("--lazy").arg(&self.dir).status();
        }
    }
}
