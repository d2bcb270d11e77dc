//! Which commits a host accepts: the ed25519 keys stored with each remote,
//! and the check every pull into the sysroot passes first.
//!
//! The keys live in the sysroot repository's config, next to the remote's
//! URL, rather than in a deployment's `/etc`: an unbooted sysroot has no
//! `/etc` of its own, and the keys must follow the remote through upgrades
//! and rollbacks alike.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ostree::glib;

use crate::format::keys::REMOTE_ED25519_KEYS;
use crate::format::sign::{self, PublicKey};
use crate::host::origin::Refspec;
use crate::host::status::Signature;

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
    let source =
        format!("key {REMOTE_ED25519_KEYS} of remote {remote} in the sysroot repository's config");
    let text = value.replace(';', "\n");
    sign::parse_public(&text, &source).map(Some)
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

/// Refuse a remote that anyone on the network path could feed: an http(s)
/// URL needs keys unless the operator explicitly accepted unsigned updates.
pub fn check_policy(url: &str, has_keys: bool, allow_unsigned: bool) -> Result<()> {
    let networked = !url.starts_with("file://") && url.contains("://");
    if networked && !has_keys && !allow_unsigned {
        bail!(
            "refusing remote {url} without a signing key: whoever can change the repository or the network path would decide what this host boots; pass --verify-key FILE (the public keys of the build pipeline), or --insecure-allow-unsigned to accept unsigned updates"
        );
    }
    Ok(())
}

/// The check before `checksum` is pulled into the sysroot: `source` holds
/// the commit object and its detached metadata (a throwaway repository), so
/// nothing unverified reaches the sysroot's repository.
pub fn verify_before_pull(
    sysroot_repo: &ostree::Repo,
    source: &ostree::Repo,
    remote: &str,
    refname: &str,
    checksum: &str,
) -> Result<Option<PublicKey>> {
    let Some(keys) = remote_keys(sysroot_repo, remote)? else {
        return Ok(None);
    };
    let signer = sign::verify_commit(source, checksum, &keys)
        .with_context(|| format!("refusing {checksum} of {remote}:{refname}"))?;
    Ok(Some(signer.clone()))
}

/// Checks deployments' commits against their origin remote's keys, reading
/// each remote's keys once.
pub struct SignatureCheck<'r> {
    repo: &'r ostree::Repo,
    keys: std::collections::BTreeMap<String, Option<Vec<PublicKey>>>,
}

impl<'r> SignatureCheck<'r> {
    pub fn new(repo: &'r ostree::Repo) -> Self {
        SignatureCheck {
            repo,
            keys: Default::default(),
        }
    }

    /// The signature state of `checksum`, deployed from `origin` (a refspec).
    pub fn state(&mut self, origin: Option<&str>, checksum: &str) -> Result<Signature> {
        let Some(remote) = origin.and_then(|o| Refspec::parse(o).ok()?.remote) else {
            return Ok(Signature::NotChecked);
        };
        if !self.keys.contains_key(&remote) {
            let keys = remote_keys(self.repo, &remote)?;
            self.keys.insert(remote.clone(), keys);
        }
        let Some(keys) = &self.keys[&remote] else {
            return Ok(Signature::NotChecked);
        };
        Ok(match sign::verify_commit(self.repo, checksum, keys) {
            Ok(key) => Signature::Verified {
                key: key.to_base64(),
            },
            Err(_) => Signature::Untrusted,
        })
    }
}
