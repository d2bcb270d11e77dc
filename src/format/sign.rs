//! ed25519 commit signatures in libostree's own format, so that signed
//! repositories and key files also work with a stock `ostree` built with
//! ed25519 support: the commit's detached metadata holds
//! `ostree.sign.ed25519` (`aay`, one 64-byte signature per key) over the
//! commit object's bytes; a public key is base64 of its 32 bytes, one per
//! line of a keys file; a secret key is base64 of the 64-byte seed+public
//! pair. Debian's libostree is built without libsodium and cannot make or
//! check these, hence a Rust implementation (ed25519-dalek).

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use crate::format::keys::SIGN_ED25519;

/// A key that may sign commits, with where it came from for messages.
pub struct SecretKey {
    key: SigningKey,
    pub source: String,
}

/// A key commits are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// Where the key was read from (file and line), for messages.
    pub source: String,
}

impl PublicKey {
    /// The key as a keys file line holds it.
    pub fn to_base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }
}

// Never prints the key itself.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.source)
    }
}

impl SecretKey {
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            source: self.source.clone(),
        }
    }

    pub fn sign(&self, data: &[u8]) -> [u8; 64] {
        self.key.sign(data).to_bytes()
    }
}

/// A new key pair: (secret file text, public file text).
pub fn generate() -> Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading random bytes for a new key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        format!("{}\n", B64.encode(key.to_keypair_bytes())),
        format!("{}\n", B64.encode(key.verifying_key().as_bytes())),
    ))
}

/// Parse a secret key file's text. The public half stored with the seed
/// must match it: a file pasted together from two keys is refused rather
/// than producing signatures nobody can verify.
pub fn parse_secret(text: &str, source: &str) -> Result<SecretKey> {
    let bytes = B64.decode(text.trim()).with_context(|| {
        format!("{source}: not base64 (an ed25519 secret key file holds one base64 line)")
    })?;
    let Ok(pair) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        bail!(
            "{source}: {} bytes, but an ed25519 secret key is 64 (seed and public key)",
            bytes.len()
        );
    };
    let key = SigningKey::from_keypair_bytes(&pair)
        .map_err(|_| anyhow::anyhow!("{source}: the public half does not belong to the seed"))?;
    Ok(SecretKey {
        key,
        source: source.to_string(),
    })
}

/// Parse a public keys file: one base64 key per line; blank lines and `#`
/// comments are allowed. An empty file is an error: it would trust nothing
/// and look like it trusts something.
pub fn parse_public(text: &str, source: &str) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{source}:{}", i + 1);
        let bytes = B64
            .decode(line)
            .with_context(|| format!("{at}: not a base64 ed25519 public key"))?;
        let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!(
                "{at}: {} bytes, but an ed25519 public key is 32",
                bytes.len()
            );
        };
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| anyhow::anyhow!("{at}: not a valid ed25519 public key"))?;
        keys.push(PublicKey { key, source: at });
    }
    if keys.is_empty() {
        bail!("{source}: no public keys in the file");
    }
    Ok(keys)
}

pub fn read_secret(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading signing key {}", path.display()))?;
    parse_secret(&text, &path.display().to_string())
}

pub fn read_public(path: &Path) -> Result<Vec<PublicKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public keys {}", path.display()))?;
    parse_public(&text, &path.display().to_string())
}

/// The first key of `keys` that made one of `sigs` over `data`.
pub fn find_signer<'k>(
    keys: &'k [PublicKey],
    data: &[u8],
    sigs: &[Vec<u8>],
) -> Option<&'k PublicKey> {
    let sigs: Vec<Signature> = sigs
        .iter()
        .filter_map(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b))
        .collect();
    keys.iter()
        .find(|k| sigs.iter().any(|s| k.key.verify(data, s).is_ok()))
}

/// The bytes a signature covers: the commit object as stored.
pub fn commit_bytes(repo: &ostree::Repo, checksum: &str) -> Result<glib::Bytes> {
    let v = repo
        .load_variant(ostree::ObjectType::Commit, checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    Ok(v.data_as_bytes())
}

/// The ed25519 signatures in detached metadata (of a commit or a summary).
pub fn signatures(dict: &glib::VariantDict, what: &str) -> Result<Vec<Vec<u8>>> {
    match dict.lookup_value(SIGN_ED25519, None) {
        None => Ok(Vec::new()),
        Some(v) => v.get::<Vec<Vec<u8>>>().with_context(|| {
            format!(
                "{what}: `{SIGN_ED25519}` has type {}, expected aay",
                v.type_()
            )
        }),
    }
}

/// The commit's detached metadata and the ed25519 signatures in it.
fn detached(repo: &ostree::Repo, checksum: &str) -> Result<(glib::VariantDict, Vec<Vec<u8>>)> {
    let meta = repo
        .read_commit_detached_metadata(checksum, gio::Cancellable::NONE)
        .with_context(|| format!("reading the detached metadata of commit {checksum}"))?;
    let dict = glib::VariantDict::new(meta.as_ref());
    let sigs = signatures(&dict, &format!("commit {checksum}"))?;
    Ok((dict, sigs))
}

/// Add `key`'s signature to the commit's detached metadata, keeping the
/// signatures already there (a key rotation signs with old and new keys).
/// Signing twice with one key changes nothing: ed25519 is deterministic.
pub fn sign_commit(repo: &ostree::Repo, checksum: &str, key: &SecretKey) -> Result<()> {
    let data = commit_bytes(repo, checksum)?;
    let (dict, mut sigs) = detached(repo, checksum)?;
    let sig = key.sign(&data).to_vec();
    if sigs.contains(&sig) {
        return Ok(());
    }
    sigs.push(sig);
    dict.insert_value(SIGN_ED25519, &sigs.to_variant());
    repo.write_commit_detached_metadata(checksum, Some(&dict.end()), gio::Cancellable::NONE)
        .with_context(|| format!("writing the signature of commit {checksum}"))
}

/// Check that one of `keys` signed the commit; returns that key.
pub fn verify_commit<'k>(
    repo: &ostree::Repo,
    checksum: &str,
    keys: &'k [PublicKey],
) -> Result<&'k PublicKey> {
    let data = commit_bytes(repo, checksum)?;
    let (_, sigs) = detached(repo, checksum)?;
    check(keys, &data, &sigs, &format!("commit {checksum}"))
}

/// Check that one of `keys` made one of `sigs` over `data` (`what` names
/// the data for messages, with the keys' sources); returns that key.
pub fn check<'k>(
    keys: &'k [PublicKey],
    data: &[u8],
    sigs: &[Vec<u8>],
    what: &str,
) -> Result<&'k PublicKey> {
    let consulted = describe_sources(keys);
    if sigs.is_empty() {
        bail!("{what} is not signed (no `{SIGN_ED25519}` signature); trusted keys: {consulted}");
    }
    find_signer(keys, data, sigs).with_context(|| {
        format!(
            "{what}: none of its {} signature(s) is valid for a trusted key ({consulted}); it was signed by another key or changed after signing",
            sigs.len()
        )
    })
}

fn describe_sources(keys: &[PublicKey]) -> String {
    let mut s: Vec<&str> = keys.iter().map(|k| k.source.as_str()).collect();
    s.dedup();
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_sign_verifiably() {
        let (secret, public) = generate().unwrap();
        let sk = parse_secret(&secret, "s").unwrap();
        let pk = parse_public(&public, "p").unwrap();
        assert_eq!(
            pk[0],
            PublicKey {
                source: "p:1".into(),
                ..sk.public()
            }
        );
        let sig = sk.sign(b"commit bytes").to_vec();
        assert!(find_signer(&pk, b"commit bytes", std::slice::from_ref(&sig)).is_some());
        assert!(find_signer(&pk, b"commit bytez", &[sig]).is_none());
    }

    #[test]
    fn only_a_trusted_key_verifies() {
        let a = parse_secret(&generate().unwrap().0, "a").unwrap();
        let (_, b_pub) = generate().unwrap();
        let trusted = parse_public(&b_pub, "b").unwrap();
        let sig = a.sign(b"x").to_vec();
        assert!(find_signer(&trusted, b"x", &[sig.clone(), vec![1, 2, 3]]).is_none());
        let both = [trusted, vec![a.public()]].concat();
        assert_eq!(find_signer(&both, b"x", &[sig]).unwrap().source, "a");
    }

    #[test]
    fn bad_key_files_name_file_and_line() {
        let e = parse_public("# keys\n\nnot base64!\n", "/k.pub").unwrap_err();
        assert!(format!("{e:#}").starts_with("/k.pub:3:"), "{e:#}");
        let e = parse_public(&format!("{}\n", B64.encode([7u8; 31])), "/k.pub").unwrap_err();
        assert!(format!("{e:#}").contains("/k.pub:1: 31 bytes"), "{e:#}");
        let e = parse_public("# nothing\n", "/k.pub").unwrap_err();
        assert!(format!("{e:#}").contains("no public keys"), "{e:#}");
        let e = parse_secret(&B64.encode([1u8; 32]), "/k.sec").unwrap_err();
        assert!(format!("{e:#}").contains("32 bytes"), "{e:#}");
        // Seed of one key, public half of another.
        let a = B64.decode(generate().unwrap().0.trim()).unwrap();
        let b = B64.decode(generate().unwrap().0.trim()).unwrap();
        let mixed = [&a[..32], &b[32..]].concat();
        let e = parse_secret(&B64.encode(mixed), "/k.sec").unwrap_err();
        assert!(format!("{e:#}").contains("does not belong"), "{e:#}");
    }
}
