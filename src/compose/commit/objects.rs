//! Content objects of an archive repository, hashed and compressed on every
//! core, staged privately and moved into `objects/` only once complete.
//!
//! libostree writes them one at a time and compresses every file even when
//! the repository already has it; here a file is compressed only when its
//! object is missing.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use libdeflater::{CompressionLvl, Compressor};
use sha2::Digest;

use super::header::{self, FileMeta};
use super::scan::{self, Entry, Kind};

/// Files up to this size are read whole and compressed with libdeflate (the
/// fastest deflate, but buffer-to-buffer only); larger ones are streamed, so
/// memory stays bounded by about twice this per core.
pub const IN_MEMORY_MAX: u64 = 64 << 20;

const STAGE_PREFIX: &str = "hostctl-stage-";

/// A private directory under the repository's `tmp/` holding the objects of
/// one write until they are all complete and synced.
pub struct Stage {
    repo: PathBuf,
    /// Removed with what is left in it when the stage is dropped.
    dir: PathBuf,
    /// Held locked while the stage is in use, so a later write can tell an
    /// abandoned stage (its writer died) from a live one.
    lock: File,
    level: i32,
    claimed: Mutex<HashSet<String>>,
    staged: Mutex<Vec<(String, u64)>>,
}

/// What publishing moved into the repository.
#[derive(Debug, Default)]
pub struct Written {
    pub objects: usize,
    pub bytes: u64,
}

impl Stage {
    pub fn new(repo: &Path, level: i32) -> Result<Stage> {
        let tmp = repo.join("tmp");
        remove_abandoned(&tmp)?;
        // Made under another name and locked before it is renamed to a
        // stage's: a concurrent writer's clean-up never sees it unlocked.
        let new = tempfile::Builder::new()
            .prefix(".hostctl-new-stage-")
            .tempdir_in(&tmp)
            .with_context(|| format!("creating a staging directory in {}", tmp.display()))?;
        let lock =
            File::open(new.path()).with_context(|| format!("opening {}", new.path().display()))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", new.path().display()));
        }
        let suffix = new.path().file_name().expect("a name").to_string_lossy();
        let dir = tmp.join(format!(
            "{STAGE_PREFIX}{}",
            suffix.trim_start_matches(".hostctl-new-stage-")
        ));
        fs::rename(new.path(), &dir)
            .with_context(|| format!("renaming {} to {}", new.path().display(), dir.display()))?;
        // From here the stage's own Drop removes it, under its new name.
        let _ = new.keep();
        Ok(Stage {
            repo: repo.to_path_buf(),
            dir,
            lock,
            level,
            claimed: Mutex::default(),
            staged: Mutex::default(),
        })
    }

    /// The content checksum of a file or symlink; its object is staged when
    /// the repository does not have it yet.
    pub fn content_object(&self, e: &Entry, c: &mut Compressor) -> Result<String> {
        let meta = FileMeta {
            uid: e.uid,
            gid: e.gid,
            mode: e.mode,
            symlink_target: String::new(),
            xattrs: scan::read_xattrs(&e.path)?,
        };
        match e.kind {
            Kind::Symlink => self.symlink(e, meta),
            Kind::File if e.size <= IN_MEMORY_MAX => self.small_file(e, meta, c),
            Kind::File => self.large_file(e, meta),
            Kind::Dir => unreachable!("directories are dirmeta objects"),
        }
    }

    fn symlink(&self, e: &Entry, mut meta: FileMeta) -> Result<String> {
        let target = fs::read_link(&e.path)
            .with_context(|| format!("reading the symlink {}", e.path.display()))?;
        meta.symlink_target = target.into_os_string().into_string().map_err(|t| {
            anyhow::anyhow!(
                "{}: the symlink target {t:?} is not UTF-8, which OSTree requires",
                e.path.display()
            )
        })?;
        let checksum = hex::encode(header::content_hasher(&meta).finalize());
        if self.needs(&checksum) {
            let head = header::framed(&header::archive_header(0, &meta));
            self.stage(&checksum, |w| w.write_all(&head).map_err(Into::into))?;
        }
        Ok(checksum)
    }

    fn small_file(&self, e: &Entry, meta: FileMeta, c: &mut Compressor) -> Result<String> {
        let data = fs::read(&e.path).with_context(|| format!("reading {}", e.path.display()))?;
        let mut h = header::content_hasher(&meta);
        h.update(&data);
        let checksum = hex::encode(h.finalize());
        if self.needs(&checksum) {
            let mut out = vec![0u8; c.deflate_compress_bound(data.len())];
            let n = c
                .deflate_compress(&data, &mut out)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
                .with_context(|| format!("compressing {}", e.path.display()))?;
            let head = header::framed(&header::archive_header(data.len() as u64, &meta));
            self.stage(&checksum, |w| {
                w.write_all(&head)?;
                w.write_all(&out[..n])?;
                Ok(())
            })?;
        }
        Ok(checksum)
    }

    /// Read twice (hash, then compress) to keep memory bounded; the second
    /// read is hashed too, so a file that changed in between (even to the
    /// same size) fails the commit instead of giving an object whose
    /// content is not what its name says.
    fn large_file(&self, e: &Entry, meta: FileMeta) -> Result<String> {
        let (checksum, size) = hash_stream(e, &meta, |_| Ok(()))?;
        if self.needs(&checksum) {
            let head = header::framed(&header::archive_header(size, &meta));
            let level = flate2::Compression::new(self.level as u32);
            self.stage(&checksum, |w| {
                w.write_all(&head)?;
                let mut z = flate2::write::DeflateEncoder::new(w, level);
                let (again, _) = hash_stream(e, &meta, |chunk| z.write_all(chunk))?;
                z.finish()?;
                if again != checksum {
                    bail!("{} changed while it was being committed", e.path.display());
                }
                Ok(())
            })?;
        }
        Ok(checksum)
    }

    /// True once per checksum the repository lacks: the caller writes it.
    fn needs(&self, checksum: &str) -> bool {
        // Archive repositories keep every object loose, so a stat answers.
        if self.repo.join(header::filez_path(checksum)).exists() {
            return false;
        }
        self.claimed
            .lock()
            .expect("not poisoned")
            .insert(checksum.to_owned())
    }

    fn stage(
        &self,
        checksum: &str,
        write: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
    ) -> Result<()> {
        let path = self.dir.join(format!("{checksum}.filez"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 16, &f);
        write(&mut w).with_context(|| format!("writing {}", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        drop(w);
        // Archive objects are served over HTTP as they are: world-readable
        // whatever the umask, as libostree makes them.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        self.staged
            .lock()
            .expect("not poisoned")
            .push((checksum.to_owned(), len));
        Ok(())
    }

    /// Makes every staged object durable, then moves each into `objects/`:
    /// a reader (or a crash) sees a complete object or none.
    pub fn publish(self) -> Result<Written> {
        let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
        let mut written = Written::default();
        if staged.is_empty() {
            return Ok(written);
        }
        // One syncfs instead of an fsync per object, as libostree does for a
        // transaction.
        if unsafe { libc::syncfs(self.lock.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("syncing the filesystem of {}", self.repo.display()));
        }
        let mut dirs = BTreeSet::new();
        for (checksum, len) in &staged {
            let dest = self.repo.join(header::filez_path(checksum));
            let parent = dest.parent().expect("objects/XX").to_path_buf();
            if dirs.insert(parent.clone()) {
                fs::create_dir_all(&parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let src = self.dir.join(format!("{checksum}.filez"));
            fs::rename(&src, &dest)
                .with_context(|| format!("moving {} to {}", src.display(), dest.display()))?;
            written.objects += 1;
            written.bytes += len;
        }
        // The renames themselves must survive a crash before the commit,
        // which refers to these objects, is written.
        for d in &dirs {
            File::open(d)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", d.display()))?;
        }
        Ok(written)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Published objects were moved out; on failure, what was staged goes.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The content checksum and size of a regular file, read in chunks, each
/// also handed to `each`.
fn hash_stream(
    e: &Entry,
    meta: &FileMeta,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(String, u64)> {
    let mut f = File::open(&e.path).with_context(|| format!("opening {}", e.path.display()))?;
    let mut h = header::content_hasher(meta);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", e.path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        each(&buf[..n]).with_context(|| format!("compressing {}", e.path.display()))?;
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Removes the stages of writers that died (killed, power cut); a stage
/// still locked belongs to a running writer and stays.
fn remove_abandoned(tmp: &Path) -> Result<()> {
    let entries = match fs::read_dir(tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", tmp.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("listing {}", tmp.display()))?;
        if !e
            .file_name()
            .as_encoded_bytes()
            .starts_with(STAGE_PREFIX.as_bytes())
        {
            continue;
        }
        let path = e.path();
        let Ok(f) = File::open(&path) else { continue };
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        fs::remove_dir_all(&path)
            .with_context(|| format!("removing the abandoned stage {}", path.display()))?;
    }
    Ok(())
}

/// A compressor at `level`, libostree's scale (1 to 9).
pub fn compressor(level: i32) -> Compressor {
    Compressor::new(CompressionLvl::new(level).unwrap_or_default())
}
