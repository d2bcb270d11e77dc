//! OpenPGP signatures through libostree's own GPG support (gpgme), in its
//! format: detached metadata `ostree.gpgsigs` (`aay`, one binary signature
//! per element) over the commit object, and the same key in `summary.sig`
//! over the summary file. Hosts keep trusted keys in libostree's per-remote
//! keyring (`REPO/NAME.trustedkeys.gpg`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::translate::{from_glib_full, ToGlibPtr};
use ostree::prelude::*;

use crate::format::keys::SIGN_GPG;

/// The OpenPGP signatures in detached metadata (of a commit or a summary).
pub fn signatures(dict: &glib::VariantDict, what: &str) -> Result<Vec<Vec<u8>>> {
    match dict.lookup_value(SIGN_GPG, None) {
        None => Ok(Vec::new()),
        Some(v) => v
            .get::<Vec<Vec<u8>>>()
            .with_context(|| format!("{what}: `{SIGN_GPG}` has type {}, expected aay", v.type_())),
    }
}

/// One signature as libostree's verifier saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigState {
    pub valid: bool,
    pub sig_expired: bool,
    pub key_expired: bool,
    pub key_revoked: bool,
    pub key_missing: bool,
    /// Of the key that made the signature (a key id when the key is unknown).
    pub fingerprint: String,
    /// Of the primary key, when the key is known.
    pub primary: String,
}

impl SigState {
    /// The fingerprint an operator recognises from `gpg --list-keys`.
    pub fn key(&self) -> &str {
        if self.primary.is_empty() {
            &self.fingerprint
        } else {
            &self.primary
        }
    }
}

fn states(result: &ostree::GpgVerifyResult) -> Vec<SigState> {
    (0..result.count_all())
        .map(|i| {
            // libostree's attribute tuple, in OstreeGpgSignatureAttr order.
            let v = result.all(i);
            let b = |n: usize| v.child_value(n).get::<bool>().unwrap_or(false);
            let s = |n: usize| v.child_value(n).get::<String>().unwrap_or_default();
            SigState {
                valid: b(0),
                sig_expired: b(1),
                key_expired: b(2),
                key_revoked: b(3),
                key_missing: b(4),
                fingerprint: s(5),
                primary: s(12),
            }
        })
        .collect()
}

/// Why each of `states` was not accepted, for a refusal message.
pub fn describe_invalid(states: &[SigState]) -> String {
    let parts: Vec<String> = states
        .iter()
        .map(|s| {
            let why = if s.key_missing {
                "by a key that is not trusted"
            } else if s.key_revoked {
                "by a revoked key"
            } else if s.key_expired {
                "by an expired key"
            } else if s.sig_expired {
                "expired"
            } else if s.valid {
                "valid"
            } else {
                "does not match the signed data (changed after signing)"
            };
            format!("{} {why}", s.key())
        })
        .collect();
    parts.join("; ")
}

/// Check `sigs` over `data` against the keyring libostree keeps for
/// `remote` in `repo`, and only that keyring. `keyring` names it for
/// messages. Returns the key of the first valid signature.
pub fn check(
    repo: &ostree::Repo,
    remote: &str,
    keyring: &str,
    data: &[u8],
    sigs: &[Vec<u8>],
    what: &str,
) -> Result<String> {
    if sigs.is_empty() {
        bail!("{what} is not signed (no `{SIGN_GPG}` signature); trusted GPG keys: {keyring}");
    }
    // libostree takes the signatures as one stream of OpenPGP packets.
    let stream = glib::Bytes::from_owned(sigs.concat());
    let result = repo
        .gpg_verify_data(
            Some(remote),
            &glib::Bytes::from(data),
            &stream,
            None::<&gio::File>,
            None::<&gio::File>,
            gio::Cancellable::NONE,
        )
        .with_context(|| {
            format!("{what}: its GPG signatures cannot be checked; trusted GPG keys: {keyring}")
        })?;
    let states = states(&result);
    match states.iter().find(|s| s.valid) {
        Some(s) => Ok(s.key().to_string()),
        None => bail!(
            "{what}: none of its {} GPG signature(s) is valid for a trusted key ({keyring}): {}",
            states.len(),
            describe_invalid(&states)
        ),
    }
}

/// Add the keys in the keyring file `path` (binary or ASCII-armoured, as
/// `gpg --export` writes it) to `remote`'s keyring in `repo`. Returns how
/// many keys were new.
pub fn import_keyring(repo: &ostree::Repo, remote: &str, path: &Path) -> Result<u32> {
    let stream = gio::File::for_path(path)
        .read(gio::Cancellable::NONE)
        .with_context(|| format!("reading GPG keyring {}", path.display()))?;
    let mut imported = 0u32;
    let mut error = std::ptr::null_mut();
    // The binding turns an empty key list into an empty array, which
    // libostree reads as "import none of them"; NULL means all.
    // SAFETY: every pointer is valid for the call (the stashes live to the
    // end of the statement), and `error` is owned by us afterwards.
    unsafe {
        ostree::ffi::ostree_repo_remote_gpg_import(
            repo.to_glib_none().0,
            remote.to_glib_none().0,
            stream.upcast_ref::<gio::InputStream>().to_glib_none().0,
            std::ptr::null(),
            &mut imported,
            std::ptr::null_mut(),
            &mut error,
        );
    }
    if !error.is_null() {
        // SAFETY: libostree set a GError we now own.
        let e: glib::Error = unsafe { from_glib_full(error) };
        return Err(e).with_context(|| {
            format!(
                "importing GPG keyring {} for remote {remote}: it holds no OpenPGP public key libostree can read",
                path.display()
            )
        });
    }
    Ok(imported)
}

/// Refuse a keyring file that holds no key before anything is written: it
/// is imported into a scratch repository. Returns how many keys it holds.
pub fn check_keyring(path: &Path) -> Result<u32> {
    let dir = tempfile::tempdir().context("creating a scratch repository for a keyring check")?;
    let repo = scratch_repo(dir.path())?;
    repo.remote_add(
        "check",
        Some("file:///nonexistent"),
        None::<&glib::Variant>,
        gio::Cancellable::NONE,
    )
    .context("configuring a scratch remote for a keyring check")?;
    let n = import_keyring(&repo, "check", path)?;
    if n == 0 {
        bail!("{}: no OpenPGP public key in the file", path.display());
    }
    Ok(n)
}

fn scratch_repo(dir: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(dir.join("repo"));
    repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
        .with_context(|| format!("creating scratch repository {}", dir.display()))?;
    Ok(repo)
}

/// A GPG key that signs through libostree, checked when it is opened: its
/// public key is exported from the home directory, and it signs a test
/// message that verifies, so a key that cannot sign fails before any work.
pub struct GpgSigner {
    pub key_id: String,
    homedir: Option<PathBuf>,
    /// Primary fingerprint of the key that signed the test message.
    pub fingerprint: String,
    /// A scratch repository to sign and verify in, and `keys/signer.gpg`:
    /// GnuPG 2.1+ keeps public keys in `pubring.kbx`, which libostree's
    /// verifier does not read, so the key is exported for it.
    dir: tempfile::TempDir,
    repo: ostree::Repo,
}

impl std::fmt::Debug for GpgSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpgSigner({})", self.describe())
    }
}

impl GpgSigner {
    pub fn open(key_id: &str, homedir: Option<&Path>) -> Result<GpgSigner> {
        let desc = describe(key_id, homedir);
        let dir = tempfile::tempdir().context("creating a scratch directory for GPG signing")?;
        let repo = scratch_repo(dir.path())?;
        let mut gpg = Command::new("gpg");
        if let Some(h) = homedir {
            gpg.arg("--homedir").arg(h);
        }
        let out = gpg
            .args(["--batch", "--export", key_id])
            .output()
            .with_context(|| format!("running gpg to export the public key of {desc}"))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{desc}: no such public key ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).with_context(|| format!("creating {}", keys.display()))?;
        let keyring = keys.join("signer.gpg");
        std::fs::write(&keyring, &out.stdout)
            .with_context(|| format!("writing {}", keyring.display()))?;
        let mut signer = GpgSigner {
            key_id: key_id.to_string(),
            homedir: homedir.map(Path::to_path_buf),
            fingerprint: String::new(),
            dir,
            repo,
        };
        let probe = b"hostctl: can this key sign?";
        let signed = signer
            .sign(probe, None)
            .with_context(|| format!("{desc} cannot sign"))?;
        let sigs = signatures(&glib::VariantDict::new(Some(&signed)), &desc)?;
        let states = signer.states(probe, &sigs)?;
        let Some(good) = states.iter().find(|s| s.valid) else {
            bail!(
                "{desc}: its own signature does not verify with its exported public key: {}",
                describe_invalid(&states)
            );
        };
        signer.fingerprint = good.key().to_string();
        Ok(signer)
    }

    pub fn describe(&self) -> String {
        describe(&self.key_id, self.homedir.as_deref())
    }

    /// `old` (detached metadata, `a{sv}`) with this key's signature of
    /// `data` added to `ostree.gpgsigs`; other entries are kept.
    pub fn sign(&self, data: &[u8], old: Option<&glib::Variant>) -> Result<glib::Variant> {
        let homedir = match &self.homedir {
            Some(h) => Some(
                h.to_str()
                    .with_context(|| format!("GPG home directory {} is not UTF-8", h.display()))?,
            ),
            None => None,
        };
        let old = old.map(|v| v.data_as_bytes());
        let bytes = self
            .repo
            .gpg_sign_data(
                &glib::Bytes::from(data),
                old.as_ref(),
                &[&self.key_id],
                homedir,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("signing with {}", self.describe()))?;
        Ok(glib::Variant::from_bytes::<glib::VariantDict>(&bytes))
    }

    fn states(&self, data: &[u8], sigs: &[Vec<u8>]) -> Result<Vec<SigState>> {
        if sigs.is_empty() {
            return Ok(Vec::new());
        }
        let result = self
            .repo
            .gpg_verify_data(
                None,
                &glib::Bytes::from(data),
                &glib::Bytes::from_owned(sigs.concat()),
                Some(&gio::File::for_path(self.dir.path().join("keys"))),
                None::<&gio::File>,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("checking signatures against {}", self.describe()))?;
        Ok(states(&result))
    }

    /// Whether one of `sigs` over `data` is already this key's: GPG
    /// signatures carry a time, so signing again would add another.
    pub fn has_signed(&self, data: &[u8], sigs: &[Vec<u8>]) -> Result<bool> {
        Ok(self
            .states(data, sigs)?
            .iter()
            .any(|s| s.valid && s.key() == self.fingerprint))
    }
}

fn describe(key_id: &str, homedir: Option<&Path>) -> String {
    match homedir {
        Some(h) => format!("GPG key {key_id} (home directory {})", h.display()),
        None => format!("GPG key {key_id}"),
    }
}

/// Add `signer`'s signature to the commit's detached metadata, keeping the
/// signatures there. Returns false when the key had signed it already.
pub fn sign_commit(repo: &ostree::Repo, checksum: &str, signer: &GpgSigner) -> Result<bool> {
    let data = crate::format::sign::commit_bytes(repo, checksum)?;
    let meta = repo
        .read_commit_detached_metadata(checksum, gio::Cancellable::NONE)
        .with_context(|| format!("reading the detached metadata of commit {checksum}"))?;
    let dict = glib::VariantDict::new(meta.as_ref());
    let sigs = signatures(&dict, &format!("commit {checksum}"))?;
    if signer.has_signed(&data, &sigs)? {
        return Ok(false);
    }
    let new = signer.sign(&data, meta.as_ref())?;
    repo.write_commit_detached_metadata(checksum, Some(&new), gio::Cancellable::NONE)
        .with_context(|| format!("writing the GPG signature of commit {checksum}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(fpr: &str) -> SigState {
        SigState {
            valid: false,
            sig_expired: false,
            key_expired: false,
            key_revoked: false,
            key_missing: false,
            fingerprint: fpr.into(),
            primary: String::new(),
        }
    }

    #[test]
    fn refusals_say_why_each_signature_failed() {
        let unknown = SigState {
            key_missing: true,
            ..state("9ACCDB264DB268E0")
        };
        let tampered = SigState {
            primary: "1C7F00126CDF79E7AB2A8D1A9ACCDB264DB268E0".into(),
            ..state("9ACCDB264DB268E0")
        };
        let revoked = SigState {
            key_revoked: true,
            ..state("AAAA")
        };
        let text = describe_invalid(&[unknown, tampered, revoked]);
        assert_eq!(
            text,
            "9ACCDB264DB268E0 by a key that is not trusted; \
             1C7F00126CDF79E7AB2A8D1A9ACCDB264DB268E0 does not match the signed data (changed after signing); \
             AAAA by a revoked key"
        );
    }

    #[test]
    fn signatures_are_read_from_detached_metadata() {
        let d = glib::VariantDict::new(None);
        assert!(signatures(&d, "x").unwrap().is_empty());
        d.insert_value(SIGN_GPG, &vec![vec![1u8, 2], vec![3]].to_variant());
        assert_eq!(signatures(&d, "x").unwrap(), vec![vec![1, 2], vec![3]]);
        d.insert_value(SIGN_GPG, &"not a list".to_variant());
        let e = signatures(&d, "commit c").unwrap_err();
        assert!(
            format!("{e:#}").contains("commit c: `ostree.gpgsigs` has type s"),
            "{e:#}"
        );
    }
}
