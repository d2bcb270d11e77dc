//! Which commits a host accepts: the keys stored with each remote (ed25519
//! keys, and/or a GPG keyring), the check every pull into the sysroot
//! passes first, and the check of the summary a ref is resolved through.
//!
//! The keys live in the sysroot repository, next to the remote's URL,
//! rather than in a deployment's `/etc`: an unbooted sysroot has no `/etc`
//! of its own, and the keys must follow the remote through upgrades and
//! rollbacks alike. ed25519 keys are a remote option in the repository's
//! config; GPG keys are libostree's own per-remote keyring
//! (`REPO/NAME.trustedkeys.gpg`) with the remote's `gpg-verify` on, so
//! libostree checks them too when it pulls. When a remote has both kinds,
//! a commit needs a valid signature of each kind, as libostree requires
//! when both of its verifications are on.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ostree::glib;
use ostree::prelude::*;

use crate::format::keys::REMOTE_ED25519_KEYS;
use crate::format::sign::{self, PublicKey};
use crate::format::{gpg, summary};
use crate::host::origin::Refspec;
use crate::host::status::{describe_keys, Signature};

fn group(remote: &str) -> String {
    format!("remote \"{remote}\"")
}

/// The keys commits from `remote` must be signed by; None when the remote
/// was set up without keys (a local `file://` source).
pub fn remote_keys(repo: &ostree::Repo, remote: &str) -> Result<Option<Vec<PublicKey>>> {
    let config = repo.copy_config();
    let Ok(value) = config.string(&group(remote), REMOTE_ED25519_KEYS) else {
        return Ok(None);
    };
    let source = format!(
        "key {REMOTE_ED25519_KEYS} of remote {remote} in {}",
        repo_dir(repo).join("config").display()
    );
    let text = value.replace(';', "\n");
    sign::parse_public(&text, &source).map(Some)
}

/// The repository's directory, for messages: a sysroot's repository is
/// opened through a file descriptor, and its path reads `/proc/self/fd/N`
/// until resolved.
fn repo_dir(repo: &ostree::Repo) -> PathBuf {
    let path = repo.path().path().unwrap_or_default();
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// The remote option's value for `keys`.
pub fn encode_keys(keys: &[PublicKey]) -> String {
    let value: Vec<String> = keys.iter().map(|k| k.to_base64()).collect();
    value.join(";")
}

/// Store `keys` for `remote` in `config`.
pub fn set_remote_keys(config: &glib::KeyFile, remote: &str, keys: &[PublicKey]) {
    config.set_string(&group(remote), REMOTE_ED25519_KEYS, &encode_keys(keys));
}

/// Read every keys file; the union is trusted.
pub fn read_key_files(files: &[impl AsRef<Path>]) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for f in files {
        keys.extend(sign::read_public(f.as_ref())?);
    }
    Ok(keys)
}

/// Check every GPG keyring file before anything is written: each must
/// hold at least one public key.
pub fn check_gpg_keyrings(files: &[impl AsRef<Path>]) -> Result<()> {
    for f in files {
        gpg::check_keyring(f.as_ref())?;
    }
    Ok(())
}

/// Trust `files` (GPG keyrings) for `remote`: they are imported into
/// libostree's keyring of the remote, and its `gpg-verify` turned on.
pub fn add_gpg_keyrings(repo: &ostree::Repo, remote: &str, files: &[PathBuf]) -> Result<()> {
    for f in files {
        gpg::import_keyring(repo, remote, f)?;
    }
    Ok(())
}

/// Whether the remote is reached over a network (http, https...), where
/// anyone on the path could answer, rather than read from a local path.
pub fn is_networked(url: &str) -> bool {
    !url.starts_with("file://") && url.contains("://")
}

/// Refuse a remote that anyone on the network path could feed: an http(s)
/// URL needs keys (ed25519 or GPG) unless the operator explicitly accepted
/// unsigned updates.
pub fn check_policy(url: &str, has_keys: bool, allow_unsigned: bool) -> Result<()> {
    if is_networked(url) && !has_keys && !allow_unsigned {
        bail!(
            "refusing remote {url} without a signing key: whoever can change the repository or the network path would decide what this host boots; pass --verify-key FILE (ed25519 public keys of the build pipeline) or --gpg-keyring FILE (its GPG public keys), or --insecure-allow-unsigned to accept unsigned updates"
        );
    }
    Ok(())
}

/// What a remote's commits and summary must be signed by.
pub struct RemoteTrust {
    remote: String,
    ed25519: Option<Vec<PublicKey>>,
    /// libostree's keyring of the remote, named for messages, when the
    /// remote verifies GPG signatures.
    gpg_keyring: Option<String>,
}

/// The keys that verified a commit or a summary, one of each kind the
/// remote trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub ed25519: Option<String>,
    pub gpg: Option<String>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_keys(self.ed25519.as_deref(), self.gpg.as_deref()))
    }
}

impl RemoteTrust {
    pub fn load(repo: &ostree::Repo, remote: &str) -> Result<RemoteTrust> {
        let ed25519 = remote_keys(repo, remote)?;
        // libostree's own option (true when unset), which its pulls obey
        // too: hostctl asks for no less than libostree would.
        let gpg_on = repo
            .remote_get_gpg_verify(remote)
            .with_context(|| format!("reading gpg-verify of remote {remote}"))?;
        let gpg_keyring = gpg_on.then(|| {
            repo_dir(repo)
                .join(format!("{remote}.trustedkeys.gpg"))
                .display()
                .to_string()
        });
        Ok(RemoteTrust {
            remote: remote.to_string(),
            ed25519,
            gpg_keyring,
        })
    }

    pub fn has_keys(&self) -> bool {
        self.ed25519.is_some() || self.gpg_keyring.is_some()
    }

    /// Check `data`'s signatures against every kind of key the remote
    /// has; `repo` is the sysroot's repository, where the GPG keyring is.
    fn check(
        &self,
        repo: &ostree::Repo,
        data: &[u8],
        sigs: &summary::Signatures,
        what: &str,
    ) -> Result<Verified> {
        let ed25519 = match &self.ed25519 {
            Some(keys) => Some(sign::check(keys, data, &sigs.ed25519, what)?.to_base64()),
            None => None,
        };
        let gpg = match &self.gpg_keyring {
            Some(keyring) => Some(gpg::check(
                repo,
                &self.remote,
                keyring,
                data,
                &sigs.gpg,
                what,
            )?),
            None => None,
        };
        Ok(Verified { ed25519, gpg })
    }

    /// Check the commit `checksum` held by `source` (a throwaway repository,
    /// or the sysroot's own).
    pub fn verify_commit(
        &self,
        repo: &ostree::Repo,
        source: &ostree::Repo,
        checksum: &str,
    ) -> Result<Verified> {
        let data = sign::commit_bytes(source, checksum)?;
        let meta = source
            .read_commit_detached_metadata(checksum, ostree::gio::Cancellable::NONE)
            .with_context(|| format!("reading the detached metadata of commit {checksum}"))?;
        let dict = glib::VariantDict::new(meta.as_ref());
        let what = format!("commit {checksum}");
        let sigs = summary::Signatures {
            ed25519: sign::signatures(&dict, &what)?,
            gpg: gpg::signatures(&dict, &what)?,
        };
        self.check(repo, &data, &sigs, &what)
    }

    /// Check a summary and its `summary.sig` (None when the remote has
    /// none).
    pub fn verify_summary(
        &self,
        repo: &ostree::Repo,
        summary: &[u8],
        sig: Option<&[u8]>,
    ) -> Result<Verified> {
        let sigs = match sig {
            Some(b) => summary::parse_signatures(b)?,
            None => summary::Signatures::default(),
        };
        self.check(repo, summary, &sigs, "the summary")
    }
}

/// The head of `branch` on `remote`, read from its summary once the
/// summary's signature checks out, when the ref must be resolved that way:
/// the remote has keys and is reached over a network. None otherwise, and
/// libostree resolves the ref itself.
///
/// A `file://` remote is a directory read directly: libostree takes the
/// ref from its summary when there is one, else from its refs, and a
/// build repository's summary is rewritten unsigned by every compose, so
/// it is not checked there. Over a network a missing or unsigned summary
/// is refused: refs files are signed by nobody, and a summary is what
/// tells a host that an update exists at all.
pub fn verified_head(
    sysroot_repo: &ostree::Repo,
    probe_repo: &ostree::Repo,
    probe_remote: &str,
    remote: &str,
    url: &str,
    branch: &str,
) -> Result<Option<String>> {
    if !is_networked(url) {
        return Ok(None);
    }
    let trust = RemoteTrust::load(sysroot_repo, remote)?;
    if !trust.has_keys() {
        return Ok(None);
    }
    let at = format!("ref {branch} of remote {remote} ({url})");
    let (summary_bytes, sig) = summary::fetch(probe_repo, probe_remote)
        .with_context(|| format!("fetching the summary of remote {remote} ({url})"))?;
    let Some(summary_bytes) = summary_bytes else {
        bail!(
            "refusing {at}: the remote serves no summary, and with signing keys the ref is taken only from a signed summary; publish the repository with `hostctl publish` and its keys"
        );
    };
    let v = trust
        .verify_summary(sysroot_repo, &summary_bytes, sig.as_deref())
        .with_context(|| format!("refusing {at}"))?;
    let head = summary::ref_checksum(&summary_bytes, branch)
        .with_context(|| format!("reading the summary of remote {remote} ({url})"))?
        .with_context(|| {
            format!(
                "ref {branch} not found on remote {remote}: its signed summary does not list it"
            )
        })?;
    crate::util::message(&format!(
        "Summary of {remote} is signed by {v}; {branch} is {head}."
    ));
    Ok(Some(head))
}

/// The check before `checksum` is pulled into the sysroot: `source` holds
/// the commit object and its detached metadata (a throwaway repository),
/// so nothing unverified reaches the sysroot's repository.
pub fn verify_before_pull(
    sysroot_repo: &ostree::Repo,
    source: &ostree::Repo,
    remote: &str,
    refname: &str,
    checksum: &str,
) -> Result<Option<Verified>> {
    let trust = RemoteTrust::load(sysroot_repo, remote)?;
    if !trust.has_keys() {
        return Ok(None);
    }
    trust
        .verify_commit(sysroot_repo, source, checksum)
        .with_context(|| format!("refusing {checksum} of {remote}:{refname}"))
        .map(Some)
}

/// Checks deployments' commits against their origin remote's keys, reading
/// each remote's keys once.
pub struct SignatureCheck<'r> {
    repo: &'r ostree::Repo,
    trust: std::collections::BTreeMap<String, RemoteTrust>,
}

impl<'r> SignatureCheck<'r> {
    pub fn new(repo: &'r ostree::Repo) -> Self {
        SignatureCheck {
            repo,
            trust: Default::default(),
        }
    }

    /// The signature state of `checksum`, deployed from `origin` (a refspec).
    pub fn state(&mut self, origin: Option<&str>, checksum: &str) -> Result<Signature> {
        let Some(remote) = origin.and_then(|o| Refspec::parse(o).ok()?.remote) else {
            return Ok(Signature::NotChecked);
        };
        if !self.trust.contains_key(&remote) {
            let t = RemoteTrust::load(self.repo, &remote)?;
            self.trust.insert(remote.clone(), t);
        }
        let trust = &self.trust[&remote];
        if !trust.has_keys() {
            return Ok(Signature::NotChecked);
        }
        Ok(match trust.verify_commit(self.repo, self.repo, checksum) {
            Ok(v) => Signature::Verified {
                key: v.ed25519,
                gpg_key: v.gpg,
            },
            Err(_) => Signature::Untrusted,
        })
    }
}
