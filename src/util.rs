//! Small helpers shared by several steps.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Run a command, failing with its stderr when it exits non-zero. `what`
/// describes the step for the error message.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what}: {:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `path` inside `root`, treating `rel` as relative even if it starts with `/`.
pub fn in_root(root: &Path, rel: &str) -> std::path::PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// The sha256 digest of a file's content.
pub fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().into())
}
