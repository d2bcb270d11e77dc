//! Writing a prepared tree into a repository as a commit on a ref.
//!
//! Archive repositories (hostctl's composes) get their content objects from
//! hostctl's own writer ([`archive`]: parallel hashing, compression only of
//! missing objects); other modes go through libostree's
//! `write_directory_to_mtree`. Both give the same objects and checksums.

mod archive;
mod header;
mod objects;
mod scan;

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use crate::format::gpg::{self, GpgSigner};
use crate::format::sign::{self, SecretKey};

/// What goes into the commit besides the tree.
pub struct NewCommit<'a> {
    pub refname: &'a str,
    pub parent: Option<&'a str>,
    pub subject: &'a str,
    /// Filled by the caller (version, treefile metadata, input hash...).
    pub metadata: glib::VariantDict,
    /// Sign the commit with this key before the ref moves to it.
    pub sign_key: Option<&'a SecretKey>,
    /// And with these GPG keys.
    pub gpg_signers: &'a [GpgSigner],
}

/// Write `tree` into `repo` and move the ref to the new commit, all in one
/// transaction: on any error the transaction is aborted, so the ref stays
/// where it was and no partial objects stay behind.
pub fn commit_tree(repo: &ostree::Repo, tree: &Path, c: NewCommit) -> Result<String> {
    repo.prepare_transaction(gio::Cancellable::NONE)
        .context("starting a repository transaction")?;
    let res = write(repo, tree, &c);
    match res {
        Ok(checksum) => {
            repo.commit_transaction(gio::Cancellable::NONE)
                .with_context(|| format!("committing the transaction for {}", c.refname))?;
            Ok(checksum)
        }
        Err(e) => {
            let _ = repo.abort_transaction(gio::Cancellable::NONE);
            Err(e)
        }
    }
}

fn write(repo: &ostree::Repo, tree: &Path, c: &NewCommit) -> Result<String> {
    // hostctl's writer asks the repository's own objects/ which objects it
    // has; with a parent repository libostree's answer would differ.
    let mtree = if repo.mode() == ostree::RepoMode::Archive && repo.parent().is_none() {
        archive::write_tree(repo, tree)?
    } else {
        write_with_libostree(repo, tree)?
    };
    let root = repo
        .write_mtree(&mtree, gio::Cancellable::NONE)
        .context("writing the root tree")?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("write_mtree did not return a RepoFile"))?;
    // Adds ostree.bootable / ostree.linux; libostree treats a missing
    // modules directory as an error, but a tree without a kernel is valid.
    if tree.join("usr/lib/modules").is_dir() {
        ostree::commit_metadata_for_bootable(&root, &c.metadata, gio::Cancellable::NONE)
            .context("inspecting the tree's kernel")?;
    }
    let metadata = c.metadata.end();
    let time = match source_date_epoch()? {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("reading the clock")?
            .as_secs(),
    };
    let checksum = repo
        .write_commit_with_time(
            c.parent,
            Some(c.subject),
            None,
            Some(&metadata),
            &root,
            time,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("writing the commit for {}", c.refname))?;
    if let Some(key) = c.sign_key {
        sign::sign_commit(repo, &checksum, key)
            .with_context(|| format!("signing {checksum} with {}", key.source))?;
    }
    for signer in c.gpg_signers {
        gpg::sign_commit(repo, &checksum, signer)
            .with_context(|| format!("signing {checksum} with {}", signer.describe()))?;
    }
    repo.transaction_set_ref(None, c.refname, Some(&checksum));
    Ok(checksum.to_string())
}

/// libostree's own writer, for repository modes hostctl's does not write.
fn write_with_libostree(repo: &ostree::Repo, tree: &Path) -> Result<ostree::MutableTree> {
    let mtree = ostree::MutableTree::new();
    // No flags: owners, modes (setuid included) and xattrs come from disk as is.
    let modifier = ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::NONE, None);
    repo.write_directory_to_mtree(
        &gio::File::for_path(tree),
        &mtree,
        Some(&modifier),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("writing {} into the repository", tree.display()))?;
    Ok(mtree)
}

/// Reproducible builds set SOURCE_DATE_EPOCH; honour it for the commit time.
fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}
