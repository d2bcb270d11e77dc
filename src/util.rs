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

/// Set once a command prints a data document (`--json`) on stdout: from then
/// on [`message`] writes to stderr, so stdout holds that document only.
static MESSAGES_TO_STDERR: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Send the informational lines of [`message`] to stderr from now on.
pub fn messages_to_stderr() {
    MESSAGES_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// An informational line that steps shared by several commands print (a
/// verified signature, a pull starting): on stdout, where scripts have
/// always read it, unless the command prints JSON there.
pub fn message(line: &str) {
    if MESSAGES_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
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

/// Take a lock, saying so when someone else holds it. `try_lock` returns
/// whether it got the lock without waiting; `lock` waits for it. `what`
/// names who holds it, as in "another operation on sysroot /": the user sees
/// `Waiting for {what} to finish...` and knows the command is not hung.
pub fn lock_or_wait(
    what: &str,
    try_lock: impl FnOnce() -> Result<bool>,
    lock: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !try_lock()? {
        eprintln!("Waiting for {what} to finish...");
        lock()?;
    }
    Ok(())
}

/// An exclusive `flock(2)` on a file, released when dropped (or when the
/// process ends, however it ends). The file itself stays: removing it would
/// let a third process lock a new file while a second waits on the old one.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

/// Lock `path` (created if missing) exclusively, waiting with
/// [`lock_or_wait`]'s message when another process holds it.
pub fn lock_file(path: &Path, what: &str) -> Result<FileLock> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        lock_or_wait(
            what,
            || match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(e)) => {
                    Err(e).with_context(|| format!("locking {}", path.display()))
                }
            },
            || {
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))
            },
        )?;
        // Whoever cleans the directory may have removed or replaced the
        // file meanwhile; a lock on an unlinked file excludes nobody.
        let held = file
            .metadata()
            .with_context(|| format!("reading lock file {}", path.display()))?;
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                return Ok(FileLock { _file: file })
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// A path for messages: valid UTF-8 as is, every other byte as `\xNN`, so
/// that two different names never print alike (`Path::display` would turn
/// every bad byte into the same U+FFFD) and the user can find the file with
/// `ls --quoting-style=escape`.
pub fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `1.2 MiB`, `3.4 KiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_path_keeps_utf8_and_escapes_other_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(
            b"/usr/caf\xe9/\xc3\xa9t\xc3\xa9\xff",
        ));
        assert_eq!(escape_path(p), "/usr/caf\\xe9/\u{e9}t\u{e9}\\xff");
        assert_eq!(escape_path(Path::new("/plain")), "/plain");
    }

    #[test]
    fn a_held_file_lock_makes_the_next_one_wait() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let first = lock_file(&p, "test").unwrap();
        let other = std::fs::File::open(&p).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        other.try_lock().unwrap();
    }
}
