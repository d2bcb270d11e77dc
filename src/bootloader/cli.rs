//! `hostctl internal publish-entries`.

use std::path::Path;

use anyhow::Result;

use super::{publish, EspTarget, PublishReport};
use crate::Outcome;

/// Publishes the sysroot's entries onto `esp` (`--esp DIR`, default `/efi`,
/// or `--esp-image FILE [--esp-offset BYTES]`; docs/cli.md), refusing an ESP
/// directory that is not mounted (see [`EspTarget::check`]).
pub fn publish_entries(sysroot: &Path, esp: &EspTarget) -> Result<Outcome> {
    esp.check(sysroot)?;
    let report = publish(sysroot, &*esp.open())?;
    print_report(&report);
    Ok(if report.ops.is_empty() {
        Outcome::Unchanged { exit_77: false }
    } else {
        Outcome::Done
    })
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
