//! Reading and opening OSTree repositories: refs, commit metadata, history.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;

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

/// A commit's metadata dictionary (`a{sv}`).
pub fn commit_metadata(repo: &ostree::Repo, checksum: &str) -> Result<glib::VariantDict> {
    let (commit, _) = repo
        .load_commit(checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    Ok(glib::VariantDict::new(Some(&commit.child_value(0))))
}

/// A string key of a commit's metadata.
pub fn metadata_string(repo: &ostree::Repo, checksum: &str, key: &str) -> Result<Option<String>> {
    Ok(commit_metadata(repo, checksum)?
        .lookup_value(key, None)
        .and_then(|v| v.str().map(str::to_string)))
}

/// One commit of a ref's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub checksum: String,
    pub version: Option<String>,
    pub timestamp: u64,
}

/// The history of a ref from `head` back to its first commit (or to the first
/// parent that is not in this repository, as after a shallow pull).
pub fn history(repo: &ostree::Repo, head: &str) -> Result<Vec<HistoryEntry>> {
    let mut out = Vec::new();
    let mut next = Some(head.to_string());
    while let Some(checksum) = next {
        let commit = match repo.load_commit(&checksum) {
            Ok((c, _)) => c,
            Err(e) if out.is_empty() => {
                return Err(e).with_context(|| format!("loading commit {checksum}"))
            }
            Err(_) => break,
        };
        let md = glib::VariantDict::new(Some(&commit.child_value(0)));
        out.push(HistoryEntry {
            version: md
                .lookup_value("version", None)
                .and_then(|v| v.str().map(str::to_string)),
            timestamp: ostree::commit_get_timestamp(&commit),
            checksum,
        });
        next = ostree::commit_get_parent(&commit).map(|p| p.to_string());
    }
    Ok(out)
}
