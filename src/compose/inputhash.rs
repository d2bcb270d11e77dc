//! `hostctl.inputhash`: one sha256 over everything a compose reads, so that an
//! unchanged input set is detected without building anything.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::compose::treefile::Treefile;

pub struct InputHasher(Sha256);

impl Default for InputHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl InputHasher {
    pub fn new() -> Self {
        let mut h = InputHasher(Sha256::new());
        // The layout conversion is part of the output: a new hostctl recomposes.
        h.field(b"hostctl-inputhash-v1");
        h.field(env!("CARGO_PKG_VERSION").as_bytes());
        h
    }

    /// Length-prefixed, so that no two different field sequences hash alike.
    pub fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn file_content(&mut self, path: &Path) -> Result<()> {
        self.field(&crate::util::sha256_file(path)?);
        Ok(())
    }

    /// A file, or every entry of a directory tree: path, type, mode, owner,
    /// and content or link target.
    pub fn input(&mut self, label: &str, path: &Path) -> Result<()> {
        self.field(label.as_bytes());
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("{label} {}: cannot read it", path.display()))?;
        if !meta.is_dir() {
            return self.file_content(path);
        }
        for e in walkdir::WalkDir::new(path)
            .follow_links(false)
            .sort_by_file_name()
        {
            let e = e.with_context(|| format!("walking {}", path.display()))?;
            let m = e
                .metadata()
                .with_context(|| format!("reading {}", e.path().display()))?;
            let rel = e.path().strip_prefix(path).expect("under root");
            self.field(rel.as_os_str().as_encoded_bytes());
            self.field(&m.mode().to_le_bytes());
            self.field(&m.uid().to_le_bytes());
            self.field(&m.gid().to_le_bytes());
            if m.file_type().is_symlink() {
                let t = fs::read_link(e.path())
                    .with_context(|| format!("reading link {}", e.path().display()))?;
                self.field(t.as_os_str().as_encoded_bytes());
            } else if m.is_file() {
                self.file_content(e.path())?;
            }
        }
        Ok(())
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Hash the treefiles (by content, with paths relative to the top one so a
/// moved checkout is not a change) and every local input they name.
pub fn local_inputs(tf: &Treefile) -> Result<InputHasher> {
    let mut h = InputHasher::new();
    let top_dir = tf.sources[0].parent().unwrap_or(Path::new("/"));
    for src in &tf.sources {
        h.field(b"treefile");
        h.field(
            src.strip_prefix(top_dir)
                .unwrap_or(src)
                .as_os_str()
                .as_encoded_bytes(),
        );
        h.file_content(src)?;
    }
    if let Some(base) = &tf.base {
        h.input("base", base)?;
    }
    for ov in &tf.overlays {
        h.input("overlay", ov)?;
    }
    for deb in &tf.local_packages {
        h.input("local-package", deb)?;
    }
    for img in &tf.images {
        h.input("image", &img.source)?;
    }
    Ok(h)
}
