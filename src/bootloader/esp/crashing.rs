//! Test-only: an ESP that loses power part way through publishing.

use std::cell::Cell;
use std::fs;

use anyhow::{bail, Context, Result};

use super::*;

/// An ESP that "loses power" after a number of changes: the change
/// that would exceed the budget leaves what a crash inside it would (a
/// temporary file for writes, nothing otherwise) and fails, as do all later
/// ones. Reads always work. Used to prove the publishing order.
pub(crate) struct CrashingEsp<'a> {
    inner: &'a dyn EspFs,
    budget: usize,
    used: Cell<usize>,
    crashed: Cell<bool>,
}

impl<'a> CrashingEsp<'a> {
    pub fn new(inner: &'a dyn EspFs, budget: usize) -> CrashingEsp<'a> {
        CrashingEsp {
            inner,
            budget,
            used: Cell::new(0),
            crashed: Cell::new(false),
        }
    }

    pub fn crashed(&self) -> bool {
        self.crashed.get()
    }

    fn take(&self) -> Result<bool> {
        if self.crashed.get() {
            bail!("simulated power loss");
        }
        if self.used.get() == self.budget {
            self.crashed.set(true);
            return Ok(false);
        }
        self.used.set(self.used.get() + 1);
        Ok(true)
    }

    fn half_write(&self, path: &str, data: &[u8]) -> Result<()> {
        // Half of the data under the temporary name, never renamed; through
        // the inner ESP, so that every back end is crash-tested alike.
        self.inner
            .write_file(&temp_path(path), &data[..data.len() / 2])?;
        bail!("simulated power loss while writing {path}")
    }
}

impl EspFs for CrashingEsp<'_> {
    fn describe(&self) -> String {
        format!(
            "{} (crashing after {} changes)",
            self.inner.describe(),
            self.budget
        )
    }
    fn list_dir(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>> {
        self.inner.list_dir(dir)
    }
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.inner.read_file(path)
    }
    fn file_size(&self, path: &str) -> Result<Option<u64>> {
        self.inner.file_size(path)
    }
    fn create_dir(&self, dir: &str) -> Result<()> {
        if !self.take()? {
            bail!("simulated power loss before creating {dir}");
        }
        self.inner.create_dir(dir)
    }
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        if !self.take()? {
            return self.half_write(path, data);
        }
        self.inner.write_file(path, data)
    }
    fn copy_in(&self, src: &Path, path: &str) -> Result<()> {
        if !self.take()? {
            let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
            return self.half_write(path, &data);
        }
        self.inner.copy_in(src, path)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if !self.take()? {
            bail!("simulated power loss before renaming {from}");
        }
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        if !self.take()? {
            bail!("simulated power loss before removing {path}");
        }
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, dir: &str) -> Result<()> {
        if !self.take()? {
            bail!("simulated power loss before removing {dir}");
        }
        self.inner.remove_dir(dir)
    }
    fn sync(&self) -> Result<()> {
        if self.crashed.get() {
            bail!("simulated power loss");
        }
        Ok(())
    }
}
