//! `hostctl compose tree`: treefile → rootfs → postprocess → commit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ostree::glib;

use super::treefile::{self, Treefile};
use super::{
    commit, containers, hostctl_deb, initramfs, inputhash, packages, postprocess, rootfs, sysusers,
    version,
};
use crate::format::{gpg, images, keys, pkglist, repo, sign};
use crate::progress;
use crate::util;
use crate::Outcome;

/// What `hostctl compose tree` is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct ComposeOptions {
    pub repo: PathBuf,
    pub write_commitid_to: Option<PathBuf>,
    pub unchanged_exit_77: bool,
    pub force_nocache: bool,
    pub cachedir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub treefile: PathBuf,
    /// ed25519 secret key file to sign the new commit with.
    pub sign_key: Option<PathBuf>,
    /// GPG key ids to sign the new commit with, through libostree.
    pub gpg_sign: Vec<String>,
    /// GnuPG home directory holding them (default: GnuPG's own).
    pub gpg_homedir: Option<PathBuf>,
    /// hostctl's .deb, for a treefile with `install-hostctl`.
    pub hostctl_deb: Option<PathBuf>,
}

pub fn run(args: &ComposeOptions) -> Result<Outcome> {
    let mut tf = treefile::load(&args.treefile)?;
    check_repo_path(&args.repo)?;
    check_inputs(&tf)?;
    // hostctl's package: checked before any work; a tree with packages gets
    // it from apt as a local package, one without has it extracted.
    // `checked_deb` holds the private copy until the compose ends.
    let checked_deb = if tf.install_hostctl {
        Some(hostctl_deb::check(&tf, args.hostctl_deb.as_deref())?)
    } else {
        None
    };
    let extract_deb = checked_deb
        .as_ref()
        .and_then(|d| hostctl_deb::add_to(&mut tf, d.path.clone()));
    // Read before any work, so that a key that cannot sign fails the compose
    // in a second, not after the build, and never after the ref moved.
    let sign_key = args
        .sign_key
        .as_deref()
        .map(sign::read_secret)
        .transpose()?;
    let gpg_signers = args
        .gpg_sign
        .iter()
        .map(|k| gpg::GpgSigner::open(k, args.gpg_homedir.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    // Serialise composes of this ref from here to the moved ref, so each
    // one's parent is the previous one's commit. Without a repository yet,
    // the lock is taken once the repository exists, before the parent is read.
    let mut lock = match repo::open_if_exists(&args.repo)? {
        Some(_) => Some(lock_ref(&args.repo, &tf.refname)?),
        None => None,
    };

    let cachedir = args
        .cachedir
        .clone()
        .unwrap_or_else(packages::default_cachedir);
    let mut hasher = inputhash::local_inputs(&tf)?;
    if let Some(deb) = &extract_deb {
        hasher.input("hostctl-deb", deb)?;
    }
    // The package set as the mirror offers it now: a new version of any
    // package in the tree is a new input.
    let resolved = packages::resolve(&tf, &cachedir)?;
    if !resolved.is_empty() {
        hasher.field(b"packages");
        hasher.field(resolved.as_bytes());
    }
    let hash = hasher.finish();
    if let Some(outcome) = report_unchanged(args, &tf.refname, &hash)? {
        return Ok(outcome);
    }

    let workdir = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("hostctl-compose-")
        .tempdir_in(&workdir)
        .with_context(|| format!("creating a work directory in {}", workdir.display()))?;
    let tree = work.path().join("tree");
    fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting mode of {}", tree.display()))?;

    let accounts = work.path().join("accounts");
    let accounts = previous_accounts(&args.repo, &tf.refname, &accounts)?;
    // The ref's head before this compose: its initramfs may be reused.
    let head_repo = repo::open_if_exists(&args.repo)?;
    let head = match &head_repo {
        Some(r) => repo::ref_head(r, &tf.refname)?,
        None => None,
    };
    let previous = match (&head_repo, &head) {
        (Some(repo), Some(commit)) => Some(initramfs::Previous { repo, commit }),
        _ => None,
    };
    let (installed, carried) = build_tree(
        &tf,
        &tree,
        work.path(),
        &cachedir,
        accounts.as_deref(),
        previous.as_ref(),
        extract_deb.as_deref(),
    )?;

    let repo = repo::open_or_create_archive(&args.repo)?;
    if lock.is_none() {
        lock = Some(lock_ref(&args.repo, &tf.refname)?);
        // A compose that held the lock meanwhile may have committed these inputs.
        if let Some(outcome) = report_unchanged(args, &tf.refname, &hash)? {
            return Ok(outcome);
        }
    }
    let parent = repo::ref_head(&repo, &tf.refname)?;
    let metadata = glib::VariantDict::new(None);
    let mut version_str = None;
    if let Some(prefix) = &tf.automatic_version_prefix {
        let history = match &parent {
            Some(p) => repo::history(&repo, p)?,
            None => Vec::new(),
        };
        let v = version::next_version(prefix, history.iter().filter_map(|h| h.version.as_deref()));
        metadata.insert(keys::VERSION, &v);
        version_str = Some(v);
    }
    for (k, v) in &tf.metadata {
        metadata.insert(k, v);
    }
    metadata.insert(keys::INPUT_HASH, &hash);
    if !installed.is_empty() {
        metadata.insert_value(keys::PACKAGES, &pkglist::to_variant(&installed));
    }
    if !tf.images.is_empty() {
        metadata.insert_value(keys::IMAGES, &images::to_variant(&carried));
    }

    let subject = match &version_str {
        Some(v) => format!("{} {v}", tf.refname),
        None => tf.refname.clone(),
    };
    progress::step(
        "compose",
        &format!(
            "Committing the tree to {} in {}",
            tf.refname,
            args.repo.display()
        ),
    );
    let checksum = commit::commit_tree(
        &repo,
        &tree,
        commit::NewCommit {
            refname: &tf.refname,
            parent: parent.as_deref(),
            subject: &subject,
            metadata,
            sign_key: sign_key.as_ref(),
            gpg_signers: &gpg_signers,
        },
    )?;
    // The summary lets clients list refs over HTTP; the commit is already
    // safely in place, so failing here must not hide that.
    if let Err(e) = repo.regenerate_summary(None, ostree::gio::Cancellable::NONE) {
        eprintln!(
            "warning: regenerating the summary of {}: {e}",
            args.repo.display()
        );
    }
    write_commitid(args.write_commitid_to.as_deref(), &checksum)?;
    match &version_str {
        Some(v) => println!("{} => {checksum} (version {v})", tf.refname),
        None => println!("{} => {checksum}", tf.refname),
    }
    drop(lock);
    Ok(Outcome::Done)
}

/// What `hostctl compose commit` is asked to do.
#[derive(Debug, Clone)]
pub struct CommitDirOptions {
    pub repo: PathBuf,
    pub refname: String,
    pub subject: Option<String>,
    pub dir: PathBuf,
}

/// Commits a directory prepared elsewhere, with no metadata of hostctl's.
pub fn commit_dir(o: &CommitDirOptions) -> Result<Outcome> {
    match fs::metadata(&o.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{}: not a directory; commit a directory", o.dir.display()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", o.dir.display())),
    }
    check_repo_path(&o.repo)?;
    let repo = repo::open_or_create_archive(&o.repo)?;
    let lock = lock_ref(&o.repo, &o.refname)?;
    let parent = repo::ref_head(&repo, &o.refname)?;
    let checksum = commit::commit_tree(
        &repo,
        &o.dir,
        commit::NewCommit {
            refname: &o.refname,
            parent: parent.as_deref(),
            subject: o.subject.as_deref().unwrap_or(&o.refname),
            metadata: glib::VariantDict::new(None),
            sign_key: None,
            gpg_signers: &[],
        },
    )?;
    println!("{} => {checksum}", o.refname);
    drop(lock);
    Ok(Outcome::Done)
}

/// When the ref's head was composed from exactly these inputs (and no
/// rebuild is forced), say so and return the outcome.
fn report_unchanged(args: &ComposeOptions, refname: &str, hash: &str) -> Result<Option<Outcome>> {
    if args.force_nocache {
        return Ok(None);
    }
    let Some(unchanged) = unchanged_head(&args.repo, refname, hash)? else {
        return Ok(None);
    };
    eprintln!("No changes in the inputs of {refname}: it stays at {unchanged}");
    write_commitid(args.write_commitid_to.as_deref(), &unchanged)?;
    Ok(Some(Outcome::Unchanged {
        exit_77: args.unchanged_exit_77,
    }))
}

/// The lock file that serialises composes of `refname` into `repo`:
/// `REPO/tmp/hostctl-compose-REF.lock`, with `%` and `/` of the ref escaped
/// as `%25` and `%2F` (two refs never share a lock file).
pub fn ref_lock_path(repo: &Path, refname: &str) -> PathBuf {
    let escaped = refname.replace('%', "%25").replace('/', "%2F");
    repo.join("tmp")
        .join(format!("hostctl-compose-{escaped}.lock"))
}

fn lock_ref(repo: &Path, refname: &str) -> Result<util::FileLock> {
    let path = ref_lock_path(repo, refname);
    let dir = path.parent().expect("has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    util::lock_file(
        &path,
        &format!("another compose of {refname} in {}", repo.display()),
    )
}

/// Refuse a `--repo` that cannot be a repository before any build work: a
/// path that is, or lies under, something other than a directory.
fn check_repo_path(repo: &Path) -> Result<()> {
    for p in repo.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => bail!(
                "--repo {}: {} is not a directory (an OSTree repository is a directory)",
                repo.display(),
                p.display()
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("--repo {}: reading {}", repo.display(), p.display()))
            }
        }
    }
    Ok(())
}

/// Every step between the inputs and a tree libostree can deploy, in order.
/// Returns the installed Debian packages (empty for a tree without dpkg)
/// and the carried container images. `work` holds scratch files outside
/// the tree; `extract_deb` is hostctl's package for a tree without packages
/// (see [`hostctl_deb::add_to`]).
pub fn build_tree(
    tf: &Treefile,
    tree: &Path,
    work: &Path,
    cachedir: &Path,
    accounts: Option<&Path>,
    previous: Option<&initramfs::Previous>,
    extract_deb: Option<&Path>,
) -> Result<(Vec<pkglist::Package>, Vec<images::Image>)> {
    if tf.base.is_some() {
        progress::step("compose", "Populating the tree from the base");
    }
    rootfs::populate_base(tf, tree)?;
    packages::install(tf, tree, cachedir, accounts)?;
    if let Some(deb) = extract_deb {
        hostctl_deb::extract(deb, tree)?;
    }
    if !tf.overlays.is_empty() {
        progress::step(
            "compose",
            &format!("Applying {} overlay(s)", tf.overlays.len()),
        );
    }
    rootfs::apply_overlays(tf, tree)?;
    rootfs::remove_files(tf, tree)?;
    postprocess::run_scripts(tf, tree)?;
    // After the scripts, so none of them can alter the carried images, and
    // before the units are enabled and the tree is checked as a whole.
    let carried = containers::install(tf, tree, work)?;
    postprocess::enable_units(tf, tree)?;
    // A local base without dpkg is not a Debian tree: it brings its own
    // kernel and initramfs, and has no package list to record.
    let installed = if packages::is_debian_tree(tree) {
        initramfs::build(
            tree,
            &packages::datadir().join("dracut"),
            cachedir,
            previous,
        )?;
        sysusers::write_for_tree(tree).context("declaring system accounts for sysusers")?;
        packages::record_installed(tree)?
    } else {
        Vec::new()
    };
    postprocess::check::check_assembled(tree)?;
    progress::step("compose", "Converting the tree to the OSTree layout");
    postprocess::ostree_layout(tree)?;
    let from_packages = tf.has_packages();
    postprocess::check::check_deployable(tree, from_packages)?;
    Ok((installed, carried))
}

/// The account files (`/usr/etc/passwd`, ...) of the ref's current commit,
/// copied into `dest`, so that a new compose keeps the IDs hosts already have.
fn previous_accounts(repo_path: &Path, refname: &str, dest: &Path) -> Result<Option<PathBuf>> {
    let Some(repo) = repo::open_if_exists(repo_path)? else {
        return Ok(None);
    };
    let Some(head) = repo::ref_head(&repo, refname)? else {
        return Ok(None);
    };
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut found = false;
    for name in packages::ACCOUNT_FILES {
        let Some(bytes) = repo::read_commit_file(&repo, &head, &format!("/usr/etc/{name}"))? else {
            continue;
        };
        let out = dest.join(name);
        fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        found = true;
    }
    Ok(found.then(|| dest.to_path_buf()))
}

/// Fail before any work when a named input is missing.
fn check_inputs(tf: &Treefile) -> Result<()> {
    let top = tf.sources[0].display();
    if let Some(b) = &tf.base {
        if fs::symlink_metadata(b).is_err() {
            bail!("{top}: key `base`: {} does not exist", b.display());
        }
    }
    for o in &tf.overlays {
        match fs::metadata(o) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{top}: key `overlays`: {} is not a directory", o.display()),
            Err(_) => bail!("{top}: key `overlays`: {} does not exist", o.display()),
        }
    }
    containers::check_sources(tf)
}

/// The ref's head when its recorded input hash equals `hash`.
fn unchanged_head(repo_path: &Path, refname: &str, hash: &str) -> Result<Option<String>> {
    let Some(repo) = repo::open_if_exists(repo_path)? else {
        return Ok(None);
    };
    let Some(head) = repo::ref_head(&repo, refname)? else {
        return Ok(None);
    };
    let old = repo::metadata_string(&repo, &head, keys::INPUT_HASH)?;
    Ok((old.as_deref() == Some(hash)).then_some(head))
}

/// Write the checksum atomically: a reader sees the old file or the new one.
fn write_commitid(path: Option<&Path>, checksum: &str) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, checksum.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
