//! Reading a prepared tree from disk: what each entry is, and its xattrs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::header::{canonical_xattrs, Xattrs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of the tree, in walk order (a directory before its contents).
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    /// Components below the tree's root; empty for the root itself.
    pub rel: Vec<String>,
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
    /// Hard links share it, so their content is read and hashed once.
    pub inode: (u64, u64),
}

/// Every entry under `root`, sorted by name within each directory.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.with_context(|| format!("walking {}", root.display()))?;
        let m = e
            .metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            bail!(
                "{}: not a regular file, symlink or directory (a device, FIFO or socket); \
                 OSTree commits cannot hold it: remove it from the tree",
                e.path().display()
            );
        };
        let rel = e
            .path()
            .strip_prefix(root)
            .expect("under the root")
            .components()
            .map(|c| {
                c.as_os_str().to_str().map(str::to_owned).with_context(|| {
                    format!(
                        "{}: the name is not UTF-8, which OSTree requires",
                        e.path().display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Entry {
            path: e.path().to_path_buf(),
            rel,
            kind,
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            size: m.len(),
            inode: (m.dev(), m.ino()),
        });
    }
    Ok(out)
}

/// The xattrs of `path` itself (not a symlink's target), in libostree's order.
pub fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let c = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{}: NUL in the path", path.display()))?;
    let names = loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("listing the xattrs of {}", path.display()));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        // The list may grow between the two calls: ask again.
        if got < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
            continue;
        }
        if got < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("listing the xattrs of {}", path.display()));
        }
        buf.truncate(got as usize);
        break buf;
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = match read_one(&c, name) {
            // Removed since it was listed: as libostree, take it as absent.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            r => r.with_context(|| {
                format!(
                    "reading xattr {} of {}",
                    String::from_utf8_lossy(name),
                    path.display()
                )
            })?,
        };
        out.push((name.to_vec(), value));
    }
    Ok(canonical_xattrs(out))
}

fn read_one(path: &CString, name: &[u8]) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).expect("split at NUL");
    loop {
        let len = unsafe { libc::lgetxattr(path.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}
