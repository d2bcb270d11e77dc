//! Talking to remotes. Deciding whether there is an update (and what it
//! changes) happens in a throwaway repository, so that `--check`, `--preview`,
//! "no update", a refused downgrade or an unreachable remote leave the
//! sysroot's repository exactly as it was; only a commit that is going to be
//! deployed (or `--download-only`) is pulled into the sysroot.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use crate::format::repo::CommitInfo;
use crate::format::repo::{self, commit_info};
use crate::host::origin::Refspec;

const PROBE_REMOTE: &str = "probe";

/// Where the candidate commits were looked up.
pub struct Probe {
    pub repo: ostree::Repo,
    pub head: String,
    pub refspec: Refspec,
    // Keeps the throwaway repository alive as long as `repo` is used.
    _dir: Option<ProbeDir>,
}

/// A throwaway repository's directory, with a lock held for as long as it
/// is in use: a run that is killed cannot remove its directory, so the next
/// run removes every probe directory whose lock nobody holds.
struct ProbeDir {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

const PROBE_PREFIX: &str = "hostctl-probe-";
const PROBE_LOCK: &str = "owner.lock";

impl ProbeDir {
    fn new() -> Result<Self> {
        remove_stale_probe_dirs(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(PROBE_PREFIX)
            .tempdir()
            .context("creating a temporary repository for the update check")?;
        let path = dir.path().join(PROBE_LOCK);
        let lock =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(ProbeDir { dir, _lock: lock })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Best effort: a directory that cannot be removed now is tried again by
/// the next run. One without a lock file yet may be another run's, between
/// creating the directory and its lock, so it is left unless it is old.
fn remove_stale_probe_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PROBE_PREFIX) {
            continue;
        }
        let dir = e.path();
        let stale = match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(PROBE_LOCK))
        {
            // Nobody holds the lock: its run is gone.
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

pub fn remote_url(repo: &ostree::Repo, remote: &str) -> Result<String> {
    repo.remote_get_url(remote)
        .map(|u| u.to_string())
        .with_context(|| format!("remote {remote:?} is not configured in the sysroot repository"))
}

fn pull_options(
    branch: &str,
    flags: ostree::RepoPullFlags,
    depth: i32,
    commit: Option<&str>,
) -> glib::Variant {
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &vec![branch.to_string()].to_variant());
    // libostree trusts a local (file://) source and skips checksumming what
    // it copies; a repository on a shared disk or a mounted medium is no
    // more trustworthy than a server, so every object is verified.
    let flags = flags | ostree::RepoPullFlags::UNTRUSTED;
    opts.insert_value("flags", &(flags.bits() as i32).to_variant());
    opts.insert_value("depth", &depth.to_variant());
    if let Some(c) = commit {
        opts.insert_value("override-commit-ids", &vec![c.to_string()].to_variant());
    }
    opts.end()
}

/// Look up the head of `refspec` (and `depth` commits of history, -1 for
/// all) without writing to `sysroot_repo`. With `full`, the whole head
/// commit is fetched too, for a file-level preview; objects the sysroot
/// already has are found through the throwaway repository's parent link.
pub fn probe(
    sysroot_repo: &ostree::Repo,
    sysroot_repo_path: &Path,
    refspec: &Refspec,
    depth: i32,
    full: bool,
) -> Result<Probe> {
    let Some(remote) = refspec.remote.as_deref() else {
        // A local ref: nothing to fetch, the sysroot repository is the source.
        let head = sysroot_repo
            .resolve_rev(&refspec.branch, false)
            .with_context(|| format!("ref {} not found in the sysroot repository", refspec.branch))?
            .with_context(|| format!("ref {} not found in the sysroot repository", refspec.branch))?
            .to_string();
        return Ok(Probe {
            repo: sysroot_repo.clone(),
            head,
            refspec: refspec.clone(),
            _dir: None,
        });
    };
    let url = remote_url(sysroot_repo, remote)?;
    let dir = ProbeDir::new()?;
    let repo = ostree::Repo::new_for_path(dir.path());
    repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
        .with_context(|| format!("creating temporary repository {}", dir.path().display()))?;
    let config = repo.copy_config();
    config.set_string("core", "parent", &sysroot_repo_path.to_string_lossy());
    repo.write_config(&config)
        .with_context(|| format!("configuring temporary repository {}", dir.path().display()))?;
    repo.reload_config(gio::Cancellable::NONE)
        .with_context(|| format!("configuring temporary repository {}", dir.path().display()))?;
    let remote_opts = glib::VariantDict::new(None);
    // The real pull into the sysroot goes through the configured remote and
    // its verification; this copy only decides whether to do that pull.
    remote_opts.insert_value("gpg-verify", &false.to_variant());
    repo.remote_add(
        PROBE_REMOTE,
        Some(&url),
        Some(&remote_opts.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("configuring temporary remote for {url}"))?;
    // With keys, a networked remote's ref is taken only from its verified
    // summary, and exactly that commit is fetched.
    let pinned = crate::host::trust::verified_head(
        sysroot_repo,
        &repo,
        PROBE_REMOTE,
        remote,
        &url,
        &refspec.branch,
    )?;
    let flags = if full {
        ostree::RepoPullFlags::NONE
    } else {
        ostree::RepoPullFlags::COMMIT_ONLY
    };
    repo.pull_with_options(
        PROBE_REMOTE,
        &pull_options(&refspec.branch, flags, depth, pinned.as_deref()),
        None,
        gio::Cancellable::NONE,
    )
    .map_err(explain_pull_error)
    .with_context(|| {
        format!(
            "fetching ref {} from remote {remote} ({url})",
            refspec.branch
        )
    })?;
    let head = match pinned {
        Some(head) => head,
        None => repo
            .resolve_rev(&format!("{PROBE_REMOTE}:{}", refspec.branch), false)
            .with_context(|| format!("ref {} not found on remote {remote}", refspec.branch))?
            .with_context(|| format!("ref {} not found on remote {remote}", refspec.branch))?
            .to_string(),
    };
    Ok(Probe {
        repo,
        head,
        refspec: refspec.clone(),
        _dir: Some(dir),
    })
}

impl Probe {
    pub fn head_info(&self) -> Result<CommitInfo> {
        commit_info(&self.repo, &self.head)
    }

    /// The fetched history of the ref, newest first.
    pub fn history(&self) -> Result<Vec<CommitInfo>> {
        repo::history(&self.repo, &self.head)
    }
}

/// libostree reports a summary file that is truncated or corrupt with
/// GVariant's bare "Not normal form"; the summary is the one unchecksummed
/// variant a pull parses (commits and trees are verified by checksum first),
/// so say what is wrong and where to fix it.
fn explain_pull_error(e: glib::Error) -> anyhow::Error {
    if e.message().contains("Not normal form") {
        anyhow::anyhow!(
            "{}: the remote's summary file is malformed (truncated or corrupt); regenerate it on the server (`ostree summary -u`)",
            e.message()
        )
    } else {
        e.into()
    }
}

/// Pull exactly `checksum` of `refspec` into the sysroot repository, through
/// the configured remote, once its signature checks out against the
/// remote's keys: `probe` already holds the commit object and its
/// signatures, and a pull by checksum can only bring that commit's objects,
/// each verified by libostree.
///
/// A pull that is interrupted (killed, network gone) leaves the commit
/// marked partial and the objects it received in the repository's staging
/// directory; the next run checks the signature again, and libostree then
/// fetches only what is still missing.
pub fn pull_into_sysroot(repo: &ostree::Repo, probe: &Probe, checksum: &str) -> Result<()> {
    let refspec = &probe.refspec;
    let Some(remote) = refspec.remote.as_deref() else {
        return Ok(());
    };
    // A commit fetched whole before (`--download-only`, or an older
    // deployment's) was verified then; pulling it again would only need
    // free space for a staging directory, which a nearly full disk lacks.
    if let Ok((_, state)) = repo.load_commit(checksum) {
        if !state.contains(ostree::RepoCommitState::PARTIAL) {
            return Ok(());
        }
    }
    if let Some(keys) = crate::host::trust::verify_before_pull(
        repo,
        &probe.repo,
        remote,
        &refspec.branch,
        checksum,
    )? {
        crate::util::message(&format!("Commit {checksum} is signed by {keys}."));
    }
    let staging_before = staging_dirs(repo);
    let placed = place_verified_commit(repo, &probe.repo, checksum)?;
    // A server caught sending an object that does not match its checksum
    // is hostile, not flaky: what this run took from it goes (the host is
    // left exactly as it was). Any other failure keeps the partial commit
    // and the objects that arrived, so that the next run resumes.
    let discard_if_tampered = |e: anyhow::Error| {
        if format!("{e:#}").contains("Corrupted") {
            discard_partial(repo, checksum, placed, &staging_before);
        }
        e
    };
    crate::util::message(&format!(
        "Pulling {checksum} from {remote}:{}...",
        refspec.branch
    ));
    pull_with_progress(repo, remote, refspec, checksum, false).map_err(discard_if_tampered)?;
    if let Err(e) = check_complete(repo, checksum) {
        // Only a static delta can leave a commit incomplete: libostree
        // trusts it to bring every new object and does not walk the tree
        // (see place_verified_commit). An object pull walks it.
        eprintln!("{e:#}; fetching what is missing without static deltas");
        repo.mark_commit_partial(checksum, true)
            .with_context(|| format!("marking {checksum} partial again"))?;
        pull_with_progress(repo, remote, refspec, checksum, true).map_err(discard_if_tampered)?;
        if let Err(e) = check_complete(repo, checksum) {
            // Still incomplete: the partial mark keeps the next run from
            // taking the commit for a whole one and skipping the pull.
            let _ = repo.mark_commit_partial(checksum, true);
            return Err(e);
        }
    }
    Ok(())
}

fn pull_with_progress(
    repo: &ostree::Repo,
    remote: &str,
    refspec: &Refspec,
    checksum: &str,
    no_deltas: bool,
) -> Result<()> {
    let opts = pull_options(
        &refspec.branch,
        ostree::RepoPullFlags::NONE,
        0,
        Some(checksum),
    );
    let opts = if no_deltas {
        let d = glib::VariantDict::new(Some(&opts));
        d.insert_value("disable-static-deltas", &true.to_variant());
        d.end()
    } else {
        opts
    };
    // The completing object pull is its own stage: its byte counts start
    // again from zero, and a tool reading the JSON lines expects a stage's
    // counts never to go down.
    let stage = if no_deltas { "pull-missing" } else { "pull" };
    let printer = crate::progress::Printer::new(stage);
    let pulled = repo
        .pull_with_options(
            remote,
            &opts,
            Some(printer.progress()),
            gio::Cancellable::NONE,
        )
        .map_err(explain_pull_error)
        .with_context(|| format!("pulling {checksum} of {refspec} into the sysroot repository"));
    printer.finish(pulled.is_ok());
    pulled
}

/// Put the commit object that was just verified, with its signatures, into
/// the sysroot repository, marked partial, before any of its files.
///
/// Two reasons. libostree 2022.7, when a static delta brings a commit it
/// does not have yet, writes the commit from the delta's superblock and
/// at once walks its tree while the delta parts are still being applied,
/// so every new file that is not written yet is fetched a second time as a
/// loose object (about twice the download; ostreedev/ostree#2053). When
/// the commit is already there, libostree applies the delta alone. And
/// the object written here is the verified one: `write_metadata` checks it
/// against `checksum`, so the commit libostree then completes is the
/// checked one whichever way its files arrive.
///
/// The partial mark goes first: a run killed in between must not leave a
/// commit that looks complete without its files.
///
/// Returns whether this call wrote the commit (false: an interrupted pull
/// had left it).
fn place_verified_commit(
    repo: &ostree::Repo,
    source: &ostree::Repo,
    checksum: &str,
) -> Result<bool> {
    let have = repo
        .has_object(ostree::ObjectType::Commit, checksum, gio::Cancellable::NONE)
        .with_context(|| format!("looking up commit {checksum} in the sysroot repository"))?;
    if have {
        // Left by an interrupted pull (it is partial, or the caller had
        // returned): libostree resumes from it.
        return Ok(false);
    }
    let commit = source
        .load_variant(ostree::ObjectType::Commit, checksum)
        .with_context(|| format!("reading the verified commit {checksum}"))?;
    let detached = source
        .read_commit_detached_metadata(checksum, gio::Cancellable::NONE)
        .with_context(|| format!("reading the signatures of commit {checksum}"))?;
    repo.mark_commit_partial(checksum, true)
        .with_context(|| format!("marking commit {checksum} partial in the sysroot repository"))?;
    if let Some(d) = &detached {
        repo.write_commit_detached_metadata(checksum, Some(d), gio::Cancellable::NONE)
            .with_context(|| format!("writing the signatures of commit {checksum}"))?;
    }
    repo.write_metadata(
        ostree::ObjectType::Commit,
        Some(checksum),
        &commit,
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("writing commit {checksum} into the sysroot repository"))?;
    Ok(true)
}

/// libostree's staging directories in `repo`'s `tmp/`, where a pull keeps
/// the objects that arrived until its transaction commits.
fn staging_dirs(repo: &ostree::Repo) -> Vec<std::path::PathBuf> {
    let Some(root) = repo.path().path() else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(root.join("tmp")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("staging-"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Undo what a refused pull left: the commit object `placed` by this run
/// with its signatures and partial mark, and the staging directories that
/// did not exist before it (`before`). Best effort: the refusal is what
/// the caller reports; a leftover here is verified objects, never a ref or
/// a deployment.
fn discard_partial(
    repo: &ostree::Repo,
    checksum: &str,
    placed: bool,
    before: &[std::path::PathBuf],
) {
    if placed {
        let _ = repo.write_commit_detached_metadata(checksum, None, gio::Cancellable::NONE);
        let _ = repo.mark_commit_partial(checksum, false);
        let _ = repo.delete_object(ostree::ObjectType::Commit, checksum, gio::Cancellable::NONE);
    }
    for d in staging_dirs(repo) {
        if !before.contains(&d) {
            let _ = std::fs::remove_dir_all(&d);
            // libostree's lock file next to it, if any.
            let mut lock = d.into_os_string();
            lock.push("-lock");
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// Every object of `checksum`'s tree is in the repository: what a deploy
/// will check out. A missing directory object fails the walk itself.
fn check_complete(repo: &ostree::Repo, checksum: &str) -> Result<()> {
    let objects = repo
        .traverse_commit(checksum, 0, gio::Cancellable::NONE)
        .with_context(|| format!("commit {checksum} is incomplete after the pull"))?;
    let mut missing = 0usize;
    for o in &objects {
        let have = repo
            .has_object(o.object_type(), o.checksum(), gio::Cancellable::NONE)
            .with_context(|| format!("looking up object {o} of commit {checksum}"))?;
        if !have {
            missing += 1;
        }
    }
    if missing > 0 {
        anyhow::bail!(
            "commit {checksum} lacks {missing} of its {} objects after the pull",
            objects.len()
        );
    }
    Ok(())
}
