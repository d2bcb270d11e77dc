//! Single-operation access to an EFI system partition.
//!
//! Publishing is a sequence of operations on this trait, each of which is
//! all-or-nothing on its own (files are written under a temporary name,
//! flushed, then renamed into place), so that the state after a crash is
//! always "the first N operations happened". Paths are relative to the ESP
//! root with `/` separators.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const LOADER_DIR: &str = "loader";
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const ENTRIES_DIR: &str = "loader/entries";
/// Where hostctl keeps kernels and initramfs images, one directory per
/// `<osname>-<bootcsum>`.
pub const KERNELS_DIR: &str = "hostctl";
/// Prefix of in-flight files; systemd-boot ignores entry files starting
/// with a dot, and a leftover one is removed by the next publish.
pub const TEMP_PREFIX: &str = ".hostctl-tmp-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspDirEntry {
    pub name: String,
    pub is_dir: bool,
}

pub trait EspFs {
    /// Where this ESP is, for messages.
    fn describe(&self) -> String;
    /// The entries of `dir`, or `None` when it does not exist.
    fn list_dir(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>>;
    /// The contents of `path`, or `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// The size of `path`, or `None` when it does not exist.
    fn file_size(&self, path: &str) -> Result<Option<u64>> {
        Ok(self.read_file(path)?.map(|d| d.len() as u64))
    }
    /// Creates `dir` (its parent must exist); no error if it already does.
    fn create_dir(&self, dir: &str) -> Result<()>;
    /// Atomically creates or replaces `path` with `data`.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Atomically creates or replaces `path` with a copy of the local `src`.
    fn copy_in(&self, src: &Path, path: &str) -> Result<()>;
    /// Renames a file within the ESP, replacing `to` if it exists. Publishing
    /// never renames entries (their names carry systemd-boot's counters);
    /// this is for tools and tests that act like systemd-boot.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    fn remove_file(&self, path: &str) -> Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &str) -> Result<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<()>;
}

/// The temporary name a write to `path` goes through.
pub fn temp_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{TEMP_PREFIX}{name}"),
        None => format!("{TEMP_PREFIX}{path}"),
    }
}

fn check_rel(path: &str) -> Result<()> {
    if path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("invalid ESP path {path:?}");
    }
    Ok(())
}

/// An ESP that is a mounted directory (a booted host's `/efi`), or any
/// directory in tests. Every change is fsynced, file and directory, before
/// the call returns, so operations reach the disk in the order made.
pub struct DirEsp {
    root: PathBuf,
}

impl DirEsp {
    pub fn new(root: impl Into<PathBuf>) -> DirEsp {
        DirEsp { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn abs(&self, rel: &str) -> Result<PathBuf> {
        check_rel(rel)?;
        Ok(self.root.join(rel))
    }

    fn fsync_parent(&self, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(&self.root);
        File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", parent.display()))
    }

    /// Writes through a temporary sibling, fsyncs it, renames it into place.
    fn replace_with(&self, rel: &str, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
        let dest = self.abs(rel)?;
        let tmp = self.abs(&temp_path(rel))?;
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        fill(&mut f).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        self.fsync_parent(&dest)
    }
}

impl EspFs for DirEsp {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list_dir(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>> {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.abs(dir)?
        };
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("listing {}", path.display())),
        };
        let mut out = Vec::new();
        for de in rd {
            let de = de.with_context(|| format!("listing {}", path.display()))?;
            let ft = de
                .file_type()
                .with_context(|| format!("stat {}", de.path().display()))?;
            out.push(EspDirEntry {
                name: de.file_name().to_string_lossy().into_owned(),
                is_dir: ft.is_dir(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = self.abs(path)?;
        match fs::read(&p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn file_size(&self, path: &str) -> Result<Option<u64>> {
        let p = self.abs(path)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("stat {}", p.display())),
        }
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        let p = self.abs(dir)?;
        match fs::create_dir(&p) {
            Ok(()) => self.fsync_parent(&p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating directory {}", p.display())),
        }
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.replace_with(path, |f| Ok(f.write_all(data)?))
    }

    fn copy_in(&self, src: &Path, path: &str) -> Result<()> {
        let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        self.replace_with(path, |f| {
            std::io::copy(&mut input, f).with_context(|| format!("copying {}", src.display()))?;
            Ok(())
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.abs(from)?, self.abs(to)?);
        fs::rename(&f, &t)
            .with_context(|| format!("renaming {} to {}", f.display(), t.display()))?;
        self.fsync_parent(&t)?;
        self.fsync_parent(&f)
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let p = self.abs(path)?;
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        self.fsync_parent(&p)
    }

    fn remove_dir(&self, dir: &str) -> Result<()> {
        let p = self.abs(dir)?;
        fs::remove_dir(&p).with_context(|| format!("removing directory {}", p.display()))?;
        self.fsync_parent(&p)
    }

    fn sync(&self) -> Result<()> {
        let d =
            File::open(&self.root).with_context(|| format!("opening {}", self.root.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("syncfs {}", self.root.display()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod crashing;
#[cfg(test)]
pub(crate) use crashing::CrashingEsp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_esp_roundtrip() {
        let td = tempfile::tempdir().unwrap();
        let esp = DirEsp::new(td.path());
        assert_eq!(esp.list_dir("loader").unwrap(), None);
        esp.create_dir("loader").unwrap();
        esp.create_dir("loader").unwrap();
        esp.write_file("loader/a.conf", b"one").unwrap();
        esp.write_file("loader/a.conf", b"two!").unwrap();
        assert_eq!(esp.read_file("loader/a.conf").unwrap().unwrap(), b"two!");
        assert_eq!(esp.file_size("loader/a.conf").unwrap(), Some(4));
        assert_eq!(esp.file_size("loader").unwrap(), None);
        let names: Vec<_> = esp
            .list_dir("loader")
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.conf"], "no temporary file is left behind");
        esp.rename("loader/a.conf", "loader/b.conf").unwrap();
        assert_eq!(esp.read_file("loader/a.conf").unwrap(), None);
        esp.remove_file("loader/b.conf").unwrap();
        esp.remove_dir("loader").unwrap();
        assert_eq!(esp.list_dir("").unwrap().unwrap(), vec![]);
        esp.sync().unwrap();
        assert!(esp.write_file("../x", b"").is_err());
        assert!(esp.write_file("/x", b"").is_err());
    }

    #[test]
    fn crashing_esp_stops_after_budget() {
        let td = tempfile::tempdir().unwrap();
        let dir = DirEsp::new(td.path());
        let esp = CrashingEsp::new(&dir, 1);
        esp.create_dir("d").unwrap();
        assert!(esp.write_file("d/f", b"abcd").is_err());
        assert!(esp.crashed());
        assert!(esp.create_dir("e").is_err());
        assert_eq!(dir.read_file("d/f").unwrap(), None);
        assert_eq!(
            dir.read_file(&temp_path("d/f")).unwrap().unwrap(),
            b"ab",
            "a torn write leaves only the temporary file"
        );
    }
}
