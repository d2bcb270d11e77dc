//! The files of a commit, read from its dirtree objects.
//!
//! OSTree's object formats (see libostree's `ostree-core.h`): a commit is
//! `(a{sv} ay a(say) s s t ay ay)` whose seventh field is the checksum of
//! the root dirtree; a dirtree is `(a(say) a(sayay))`: files as (name,
//! content checksum), subdirectories as (name, dirtree checksum, dirmeta
//! checksum). They are decoded here into named Rust types once, so no other
//! code indexes into a variant.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use ostree::glib;

/// Field of a commit variant holding the root dirtree's checksum.
const COMMIT_ROOT_DIRTREE: usize = 6;

/// A decoded dirtree object.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DirTree {
    /// (name, content checksum), sorted by name.
    pub files: Vec<(String, String)>,
    /// (name, dirtree checksum), sorted by name.
    pub dirs: Vec<(String, String)>,
}

type DirTreeVariant = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>);

impl DirTree {
    pub fn from_variant(v: &glib::Variant) -> Option<Self> {
        let (files, dirs) = v.get::<DirTreeVariant>()?;
        Some(DirTree {
            files: files
                .into_iter()
                .map(|(n, c)| (n, hex::encode(c)))
                .collect(),
            dirs: dirs
                .into_iter()
                .map(|(n, t, _meta)| (n, hex::encode(t)))
                .collect(),
        })
    }

    pub fn load(repo: &ostree::Repo, csum: &str) -> Result<Self> {
        let v = repo
            .load_variant(ostree::ObjectType::DirTree, csum)
            .with_context(|| format!("loading directory tree object {csum}"))?;
        DirTree::from_variant(&v).with_context(|| format!("malformed directory tree object {csum}"))
    }
}

/// Checksum of the root dirtree of a commit.
pub fn root_dirtree(repo: &ostree::Repo, commit: &str) -> Result<String> {
    let (c, _) = repo
        .load_commit(commit)
        .with_context(|| format!("loading commit {commit}"))?;
    let root = c
        .try_child_value(COMMIT_ROOT_DIRTREE)
        .and_then(|v| v.get::<Vec<u8>>())
        .filter(|b| b.len() == 32)
        .with_context(|| format!("commit {commit} has no root directory tree"))?;
    Ok(hex::encode(root))
}

/// `/usr` content of a commit: path → content checksum (directories are not
/// listed; a symlink's checksum covers its target).
pub type FileMap = BTreeMap<String, String>;

/// Paths relative to the root (`usr/bin/tool`); serialized as it is by
/// `upgrade --preview --json`.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

pub fn diff_files(old: &FileMap, new: &FileMap) -> TreeDiff {
    let mut d = TreeDiff::default();
    for (path, sum) in new {
        match old.get(path) {
            None => d.added.push(path.clone()),
            Some(o) if o != sum => d.modified.push(path.clone()),
            Some(_) => {}
        }
    }
    d.removed = old
        .keys()
        .filter(|p| !new.contains_key(*p))
        .cloned()
        .collect();
    d
}

/// Every file under `/usr` of `commit`, with its content checksum.
pub fn usr_files(repo: &ostree::Repo, commit: &str) -> Result<FileMap> {
    let root = DirTree::load(repo, &root_dirtree(repo, commit)?)?;
    let mut map = FileMap::new();
    for (name, sub) in &root.dirs {
        if name == "usr" {
            walk(repo, sub, "usr", &mut map)?;
        }
    }
    Ok(map)
}

fn walk(repo: &ostree::Repo, tree_csum: &str, prefix: &str, out: &mut FileMap) -> Result<()> {
    let tree = DirTree::load(repo, tree_csum)?;
    for (name, sum) in tree.files {
        out.insert(format!("{prefix}/{name}"), sum);
    }
    for (name, sub) in tree.dirs {
        walk(repo, &sub, &format!("{prefix}/{name}"), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostree::glib::prelude::*;

    #[test]
    fn file_diff_lists_each_kind() {
        let old: FileMap = [("usr/a", "1"), ("usr/b", "2"), ("usr/c", "3")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let new: FileMap = [("usr/a", "1"), ("usr/b", "9"), ("usr/d", "4")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let d = diff_files(&old, &new);
        assert_eq!(d.added, vec!["usr/d"]);
        assert_eq!(d.removed, vec!["usr/c"]);
        assert_eq!(d.modified, vec!["usr/b"]);
    }

    #[test]
    fn dirtrees_decode_into_names_and_hex_checksums() {
        let v: glib::Variant = (
            vec![("a".to_string(), vec![0xabu8; 32])],
            vec![("d".to_string(), vec![0x01u8; 32], vec![0x02u8; 32])],
        )
            .to_variant();
        let t = DirTree::from_variant(&v).unwrap();
        assert_eq!(t.files, vec![("a".to_string(), "ab".repeat(32))]);
        assert_eq!(t.dirs, vec![("d".to_string(), "01".repeat(32))]);
        // Anything else is not a dirtree.
        assert!(DirTree::from_variant(&"x".to_variant()).is_none());
    }
}
