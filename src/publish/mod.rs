//! The publishing side: what the build pipeline does to a repository after
//! composing and before serving it: key pairs, signatures of existing
//! commits (re-signing, adding a second key during a rotation), and
//! [`serve`]: deltas, retention and a signed summary.
//!
//! May import `format` and `util`; never `host`, `compose` or `image`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::format::{gpg, repo, sign};
use crate::Outcome;

pub mod serve;

/// What `hostctl sign` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    pub repo: PathBuf,
    /// ed25519 secret key file.
    pub key: Option<PathBuf>,
    /// GPG key ids, signing through libostree.
    pub gpg_sign: Vec<String>,
    pub gpg_homedir: Option<PathBuf>,
    /// A ref or a commit checksum.
    pub rev: String,
}

/// What `hostctl key generate` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct KeygenOptions {
    /// PREFIX.secret and PREFIX.pub are written.
    pub output: PathBuf,
}

/// Add the keys' signatures to an existing commit.
pub fn sign_existing(args: &SignOptions) -> Result<Outcome> {
    let key = args.key.as_deref().map(sign::read_secret).transpose()?;
    let gpg_signers = args
        .gpg_sign
        .iter()
        .map(|k| gpg::GpgSigner::open(k, args.gpg_homedir.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let r = repo::open(&args.repo)?;
    let checksum = r
        .resolve_rev(&args.rev, false)
        .with_context(|| format!("{}: no ref or commit {}", args.repo.display(), args.rev))?
        .with_context(|| format!("{}: no ref or commit {}", args.repo.display(), args.rev))?
        .to_string();
    if let Some(key) = &key {
        sign::sign_commit(&r, &checksum, key)
            .with_context(|| format!("signing {checksum} with {}", key.source))?;
        println!("Signed {checksum} with key {}.", key.public().to_base64());
    }
    for signer in &gpg_signers {
        let added = gpg::sign_commit(&r, &checksum, signer)
            .with_context(|| format!("signing {checksum} with {}", signer.describe()))?;
        if added {
            println!("Signed {checksum} with GPG key {}.", signer.fingerprint);
        } else {
            println!(
                "{checksum} is already signed by GPG key {}.",
                signer.fingerprint
            );
        }
    }
    Ok(Outcome::Done)
}

/// Write a new key pair; never overwrites a file, and the secret half is
/// readable by its owner only from the moment it exists.
pub fn generate_key(args: &KeygenOptions) -> Result<Outcome> {
    let (secret, public) = sign::generate()?;
    let with_ext = |ext: &str| {
        let mut p = args.output.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret_path, public_path) = (with_ext(".secret"), with_ext(".pub"));
    write_new(&secret_path, &secret, 0o600)?;
    if let Err(e) = write_new(&public_path, &public, 0o644) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    println!(
        "Wrote {} (keep it secret) and {} (give it to hosts: --verify-key).",
        secret_path.display(),
        public_path.display()
    );
    Ok(Outcome::Done)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists; an existing key is never overwritten",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("creating {}", path.display())),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
