//! `hostctl internal publish-entries`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{publish, DirEsp, MtoolsEsp, PublishReport};
use crate::Outcome;

/// What publishing boot entries onto an ESP is asked to do (docs/cli.md describes each option).
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub esp: PathBuf,
    pub esp_image: Option<PathBuf>,
    pub esp_offset: u64,
}

pub fn publish_entries(sysroot: &Path, args: &PublishOptions) -> Result<Outcome> {
    let report = match &args.esp_image {
        Some(image) => publish(sysroot, &MtoolsEsp::new(image, args.esp_offset))?,
        None => {
            check_mounted(sysroot, &args.esp)?;
            publish(sysroot, &DirEsp::new(&args.esp))?
        }
    };
    print_report(&report);
    Ok(if report.ops.is_empty() {
        Outcome::Unchanged { exit_77: false }
    } else {
        Outcome::Done
    })
}

/// Refuses an ESP directory that is on the same filesystem as the sysroot's
/// `/boot`: that is an unmounted mount point, and writing there would leave
/// the real ESP stale while looking successful.
fn check_mounted(sysroot: &Path, esp: &Path) -> Result<()> {
    let boot = sysroot.join("boot");
    let e = std::fs::metadata(esp)
        .with_context(|| format!("{}: ESP not found (mounted? see --esp)", esp.display()))?;
    if !e.is_dir() {
        bail!("{}: ESP is not a directory", esp.display());
    }
    let b = std::fs::metadata(&boot).with_context(|| format!("stat {}", boot.display()))?;
    if e.dev() == b.dev() {
        bail!(
            "{} is on the same filesystem as {}: the ESP is not mounted there",
            esp.display(),
            boot.display()
        );
    }
    Ok(())
}

fn print_report(r: &PublishReport) {
    if r.ops.is_empty() {
        println!("ESP entries are up to date.");
    } else {
        for op in &r.ops {
            println!("  {op}");
        }
        println!("Published {} change(s) to the ESP.", r.ops.len());
    }
    if let Some(d) = &r.default_entry {
        println!("Default entry: {d}");
    }
}
