//! Assembling the tree from local inputs: the base (directory or tarball),
//! overlays, and `remove-files`.
//!
//! Copying and extraction go through GNU `cp -a` and `tar`: they already keep
//! owners, modes (setuid included), hard links, symlinks and xattrs, which is
//! exactly the fidelity a host image needs and easy to get subtly wrong by hand.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::compose::treefile::Treefile;
use crate::util::run;

/// Compression of a base tarball, recognised by magic bytes rather than the
/// file name so that a mislabelled file is caught before tar sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    fn tar_flag(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("--gzip"),
            Compression::Zstd => Some("--zstd"),
            Compression::Xz => Some("--xz"),
        }
    }
}

/// Identify a tarball's compression from its first bytes (at least 262 of
/// them for a plain tar's `ustar` magic).
pub fn detect_compression(head: &[u8]) -> std::result::Result<Compression, &'static str> {
    match head {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Ok(Compression::Xz),
        [b'B', b'Z', b'h', ..] => Err("bzip2"),
        [0x04, 0x22, 0x4d, 0x18, ..] => Err("lz4"),
        [0x5d, 0x00, 0x00, ..] => Err("lzma"),
        _ if head.len() >= 262 && &head[257..262] == b"ustar" => Ok(Compression::None),
        _ => Err("unknown (not a tar archive)"),
    }
}

/// Put the base into `tree` (an empty directory).
pub fn populate_base(tf: &Treefile, tree: &Path) -> Result<()> {
    let Some(base) = &tf.base else {
        return Ok(());
    };
    let meta =
        fs::metadata(base).with_context(|| format!("base {}: cannot read it", base.display()))?;
    if meta.is_dir() {
        copy_tree_into(base, tree).with_context(|| format!("copying base {}", base.display()))
    } else {
        extract_tarball(base, tree)
    }
}

fn extract_tarball(tarball: &Path, tree: &Path) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    fs::File::open(tarball)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .with_context(|| format!("base {}: cannot read it", tarball.display()))?;
    let compression = detect_compression(&head).map_err(|kind| {
        anyhow::anyhow!(
            "base {}: unsupported tarball compression: {kind}; use .tar, .tar.gz, .tar.xz or .tar.zst",
            tarball.display()
        )
    })?;
    let mut cmd = Command::new("tar");
    cmd.arg("--extract")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(tree)
        .args([
            "--preserve-permissions",
            "--same-owner",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
        ]);
    if let Some(flag) = compression.tar_flag() {
        cmd.arg(flag);
    }
    run(&mut cmd, &format!("extracting base {}", tarball.display()))?;
    Ok(())
}

/// Copy the contents of `src` over `dst`, keeping everything `cp -a` keeps.
pub fn copy_tree_into(src: &Path, dst: &Path) -> Result<()> {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    run(
        Command::new("cp")
            .arg("-a")
            .arg("--no-target-directory")
            .arg(&from)
            .arg(dst),
        &format!("copying {} into the tree", src.display()),
    )?;
    Ok(())
}

/// Copy each overlay over the tree, in order.
pub fn apply_overlays(tf: &Treefile, tree: &Path) -> Result<()> {
    for ov in &tf.overlays {
        let meta = fs::metadata(ov)
            .with_context(|| format!("overlay {}: cannot read it", ov.display()))?;
        if !meta.is_dir() {
            bail!("overlay {}: not a directory", ov.display());
        }
        copy_tree_into(ov, tree).with_context(|| format!("applying overlay {}", ov.display()))?;
    }
    Ok(())
}

/// Remove what `remove-files` names. Matching walks the tree without following
/// symlinks, so a pattern can never reach outside the tree through an absolute
/// link (globbing the host path would).
pub fn remove_files(tf: &Treefile, tree: &Path) -> Result<()> {
    if tf.remove_files.is_empty() {
        return Ok(());
    }
    let patterns: Vec<(String, glob::Pattern)> = tf
        .remove_files
        .iter()
        .map(|p| {
            let rel = p.trim_start_matches('/').trim_end_matches('/');
            glob::Pattern::new(rel)
                .map(|g| (p.clone(), g))
                .with_context(|| format!("remove-files: `{p}` is not a valid glob"))
        })
        .collect::<Result<_>>()?;
    let opts = glob::MatchOptions {
        require_literal_separator: true,
        require_literal_leading_dot: false,
        case_sensitive: true,
    };
    let mut matched = vec![false; patterns.len()];
    let mut walk = walkdir::WalkDir::new(tree)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let rel = entry
            .path()
            .strip_prefix(tree)
            .expect("walk stays under tree");
        let Some(i) = patterns
            .iter()
            .position(|(_, g)| g.matches_path_with(rel, opts))
        else {
            continue;
        };
        matched[i] = true;
        let path = entry.path();
        if entry.file_type().is_dir() {
            walk.skip_current_dir();
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        }
        .with_context(|| format!("remove-files: removing {}", path.display()))?;
    }
    for ((p, _), hit) in patterns.iter().zip(matched) {
        if !hit {
            eprintln!("warning: remove-files: `{p}` matched nothing");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compressions() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect_compression(&tar), Ok(Compression::None));
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Ok(Compression::Zstd)
        );
        assert_eq!(detect_compression(b"BZh91AY"), Err("bzip2"));
        assert!(detect_compression(b"hello").is_err());
    }
}
