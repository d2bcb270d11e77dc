//! Reading and opening OSTree repositories: refs, commit metadata, history.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;

/// What every side needs to know about a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub checksum: String,
    pub version: Option<String>,
    pub timestamp: u64,
}

/// Open an existing repository.
pub fn open(path: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repository {}", path.display()))?;
    Ok(repo)
}

/// Open the repository at `path` if there is one there.
pub fn open_if_exists(path: &Path) -> Result<Option<ostree::Repo>> {
    if path.join("config").exists() {
        open(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Open the repository, creating it in archive mode (what gets served over
/// HTTP) when `path` does not hold one yet.
pub fn open_or_create_archive(path: &Path) -> Result<ostree::Repo> {
    if let Some(r) = open_if_exists(path)? {
        return Ok(r);
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let repo = ostree::Repo::new_for_path(path);
    repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
        .with_context(|| format!("creating archive repository {}", path.display()))?;
    Ok(repo)
}

/// The commit a ref points at, if the ref exists.
pub fn ref_head(repo: &ostree::Repo, refname: &str) -> Result<Option<String>> {
    Ok(repo
        .resolve_rev(refname, true)
        .with_context(|| format!("resolving ref {refname}"))?
        .map(|s| s.to_string()))
}

/// The metadata dictionary (`a{sv}`) of a loaded commit variant.
pub fn metadata_of(commit: &glib::Variant) -> glib::VariantDict {
    glib::VariantDict::new(Some(&commit.child_value(0)))
}

/// A key of a commit's metadata, as stored; `None` when the commit has none.
pub fn metadata_value(
    repo: &ostree::Repo,
    checksum: &str,
    key: &str,
) -> Result<Option<glib::Variant>> {
    let (commit, _) = repo
        .load_commit(checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    Ok(metadata_of(&commit).lookup_value(key, None))
}

/// A string key of a commit's metadata.
pub fn metadata_string(repo: &ostree::Repo, checksum: &str, key: &str) -> Result<Option<String>> {
    Ok(metadata_value(repo, checksum, key)?.and_then(|v| v.get::<String>()))
}

fn info_of(checksum: &str, commit: &glib::Variant) -> CommitInfo {
    CommitInfo {
        checksum: checksum.to_string(),
        version: metadata_of(commit)
            .lookup::<String>(super::keys::VERSION)
            .ok()
            .flatten(),
        timestamp: ostree::commit_get_timestamp(commit),
    }
}

/// Version and timestamp of a commit present in `repo`.
pub fn commit_info(repo: &ostree::Repo, checksum: &str) -> Result<CommitInfo> {
    let (commit, _) = repo
        .load_commit(checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    Ok(info_of(checksum, &commit))
}

/// The content of the regular file at `path` in the tree of commit
/// `checksum`, `None` when the tree has no regular file there. Read through
/// the content object: `g_file_load_contents` on a commit's file makes GLib
/// print a critical (libostree's stream is not a file stream).
pub fn read_commit_file(
    repo: &ostree::Repo,
    checksum: &str,
    path: &str,
) -> Result<Option<Vec<u8>>> {
    use gio::prelude::*;
    use std::io::Read;
    let (root, _) = repo
        .read_commit(checksum, gio::Cancellable::NONE)
        .with_context(|| format!("reading commit {checksum}"))?;
    let file = root.resolve_relative_path(path.trim_start_matches('/'));
    if file.query_file_type(
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    ) != gio::FileType::Regular
    {
        return Ok(None);
    }
    let file = file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("{path} of {checksum} is not in the repository"))?;
    file.ensure_resolved()
        .with_context(|| format!("reading {path} of {checksum}"))?;
    let (stream, _, _) = repo
        .load_file(&file.checksum(), gio::Cancellable::NONE)
        .with_context(|| format!("reading {path} of {checksum}"))?;
    let Some(stream) = stream else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    stream
        .into_read()
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {path} of {checksum}"))?;
    Ok(Some(bytes))
}

/// The history of a ref from `head` back to its first commit, newest first,
/// or back to the first parent that is not in this repository (as after a
/// shallow pull).
pub fn history(repo: &ostree::Repo, head: &str) -> Result<Vec<CommitInfo>> {
    let mut out = Vec::new();
    let mut next = Some(head.to_string());
    while let Some(checksum) = next {
        let Some(commit) = repo
            .load_variant_if_exists(ostree::ObjectType::Commit, &checksum)
            .with_context(|| format!("loading commit {checksum}"))?
        else {
            break;
        };
        out.push(info_of(&checksum, &commit));
        next = ostree::commit_get_parent(&commit).map(|p| p.to_string());
    }
    Ok(out)
}
