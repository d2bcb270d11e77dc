//! hostctl's own writer for archive repositories: the content objects are
//! written by [`objects`], in parallel; directory metadata, dirtrees and the
//! commit go through libostree, so their format is libostree's by
//! construction.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::prelude::*;
use rayon::prelude::*;

use super::header;
use super::objects::{self, Stage};
use super::scan::{self, Entry, Kind};

/// libostree's default (`OSTREE_ARCHIVE_DEFAULT_COMPRESSION_LEVEL`, what
/// gzip uses), so that repositories keep the size libostree gives them.
pub const DEFAULT_ZLIB_LEVEL: i32 = 6;

/// The repository's `[archive] zlib-level`, read and clamped as libostree
/// reads it.
pub fn zlib_level(config: &ostree::glib::KeyFile) -> i32 {
    config
        .integer("archive", "zlib-level")
        .map(|l| l.clamp(1, 9))
        .unwrap_or(DEFAULT_ZLIB_LEVEL)
}

/// Writes the content objects of `tree` into `repo` (which must be in a
/// transaction, for the dirmeta objects) and returns its mutable tree,
/// ready for `write_mtree`.
pub fn write_tree(repo: &ostree::Repo, tree: &Path) -> Result<ostree::MutableTree> {
    let repo_path = repo
        .path()
        .path()
        .context("the repository has no local path")?;
    let level = zlib_level(&repo.config());
    let entries = scan::walk(tree)?;
    let (unique, slot) = unique_inodes(&entries);

    let stage = Stage::new(&repo_path, level)?;
    // Compressing the files is what takes the time (minutes for a large
    // tree); its total is known from the scan, so it is shown as a count.
    let counter = crate::progress::Counter::new("commit", "files", unique.len() as u64);
    let checksums = unique
        .par_iter()
        .map_init(
            || objects::compressor(level),
            |c, &i| {
                let r = stage.content_object(&entries[i], c);
                counter.tick();
                r
            },
        )
        .collect::<Result<Vec<String>>>();
    counter.finish();
    let checksums = checksums?;
    let written = stage.publish()?;
    eprintln!(
        "{} entries, {} new content objects ({})",
        entries.len(),
        written.objects,
        crate::util::human_bytes(written.bytes)
    );

    let root = ostree::MutableTree::new();
    let mut dirs: HashMap<&[String], ostree::MutableTree> = HashMap::new();
    let mut dirmetas = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let (parent, name) = match e.rel.split_last() {
            Some((name, parent)) => (Some(&dirs[parent]), name.as_str()),
            None => (None, ""),
        };
        match (e.kind, parent) {
            (Kind::Dir, _) => {
                let mt = match parent {
                    Some(p) => p
                        .ensure_dir(name)
                        .with_context(|| format!("adding {} to the tree", e.path.display()))?,
                    None => root.clone(),
                };
                mt.set_metadata_checksum(&dirmeta(repo, e, &mut dirmetas)?);
                dirs.insert(&e.rel, mt);
            }
            (_, Some(p)) => {
                let checksum = &checksums[slot[i].expect("files have a slot")];
                p.replace_file(name, checksum)
                    .with_context(|| format!("adding {} to the tree", e.path.display()))?;
            }
            (_, None) => {
                anyhow::bail!("{}: the tree to commit must be a directory", tree.display())
            }
        }
    }
    Ok(root)
}

/// The entries to hash, one per inode (hard links are one object), and for
/// every entry the index of its checksum among them.
fn unique_inodes(entries: &[Entry]) -> (Vec<usize>, Vec<Option<usize>>) {
    let mut first = HashMap::new();
    let mut unique = Vec::new();
    let slot = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (e.kind != Kind::Dir).then(|| {
                *first.entry(e.inode).or_insert_with(|| {
                    unique.push(i);
                    unique.len() - 1
                })
            })
        })
        .collect();
    (unique, slot)
}

/// Writes (once per distinct value) the dirmeta object of a directory.
fn dirmeta(repo: &ostree::Repo, e: &Entry, seen: &mut HashMap<Vec<u8>, String>) -> Result<String> {
    let info = gio::FileInfo::new();
    info.set_attribute_uint32("unix::uid", e.uid);
    info.set_attribute_uint32("unix::gid", e.gid);
    info.set_attribute_uint32("unix::mode", e.mode);
    let xattrs = header::xattrs_variant(&scan::read_xattrs(&e.path)?);
    let v = ostree::create_directory_metadata(&info, Some(&xattrs));
    if let Some(c) = seen.get(v.data()) {
        return Ok(c.clone());
    }
    let checksum = repo
        .write_metadata(
            ostree::ObjectType::DirMeta,
            None,
            &v,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("writing the directory metadata of {}", e.path.display()))?
        .to_hex();
    seen.insert(v.data().to_vec(), checksum.clone());
    Ok(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, inode: u64) -> Entry {
        Entry {
            path: "/x".into(),
            rel: vec![],
            kind,
            uid: 0,
            gid: 0,
            mode: 0,
            size: 0,
            inode: (1, inode),
        }
    }

    #[test]
    fn hard_links_share_one_slot() {
        let es = [
            entry(Kind::Dir, 1),
            entry(Kind::File, 2),
            entry(Kind::File, 3),
            entry(Kind::File, 2),
            entry(Kind::Symlink, 4),
        ];
        let (unique, slot) = unique_inodes(&es);
        assert_eq!(unique, [1, 2, 4]);
        assert_eq!(slot, [None, Some(0), Some(1), Some(0), Some(2)]);
    }

    #[test]
    fn zlib_level_defaults_to_libostrees_and_is_clamped() {
        let k = ostree::glib::KeyFile::new();
        assert_eq!(zlib_level(&k), 6);
        k.set_integer("archive", "zlib-level", 12);
        assert_eq!(zlib_level(&k), 9);
        k.set_integer("archive", "zlib-level", 1);
        assert_eq!(zlib_level(&k), 1);
    }
}
