//! Health checks: whether this boot is good. Executables in
//! `/usr/lib/hostctl/health.d/` (shipped by the tree) and
//! `/etc/hostctl/health.d/` (the admin's; a file of the same name replaces
//! the tree's, a symlink to /dev/null masks it, as systemd does with units)
//! run in name order, each with `health.timeout`; then each unit of
//! `health.required-units` must be active. The first failure ends the run.
//!
//! `hostctl internal health-check` (hostctl-health.service, ordered before
//! boot-complete.target) records the failure for `boot-check` and fails,
//! so the entry is marked bad and the host reboots into the previous
//! deployment (docs/agent.md).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub const USR_HEALTH_D: &str = "/usr/lib/hostctl/health.d";
pub const ETC_HEALTH_D: &str = "/etc/hostctl/health.d";

/// How much of a failed check's output is kept: its first lines.
const KEEP_LINES: usize = 10;
const KEEP_CHARS: usize = 2000;

/// One file in a health.d directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    /// A symlink to /dev/null: the name is switched off.
    pub masked: bool,
    pub executable: bool,
}

/// The checks to run from the listings of the directories, lowest first:
/// a later directory's entry replaces an earlier one of the same name, a
/// masked one removes it. Sorted by name. Non-executable files are
/// returned apart, to be reported.
pub fn select(listings: &[Vec<Entry>]) -> (Vec<Entry>, Vec<Entry>) {
    let mut by_name: std::collections::BTreeMap<String, Entry> = Default::default();
    for l in listings {
        for e in l {
            by_name.insert(e.name.clone(), e.clone());
        }
    }
    let (run, skipped): (Vec<Entry>, Vec<Entry>) = by_name
        .into_values()
        .filter(|e| !e.masked)
        .partition(|e| e.executable);
    (run, skipped)
}

/// The first lines of `text`, for a record that fits a status line.
pub fn first_lines(text: &str) -> String {
    let s: String = text.lines().take(KEEP_LINES).collect::<Vec<_>>().join("\n");
    s.chars()
        .take(KEEP_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

fn list_dir(dir: &Path) -> Result<Vec<Entry>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Editor backups and hidden files are not checks.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let path = e.path();
        let masked = std::fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null"));
        let executable = std::fs::metadata(&path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        v.push(Entry {
            name,
            path,
            masked,
            executable,
        });
    }
    Ok(v)
}

/// Why a boot is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub output: String,
}

/// Run one check with `timeout`; its stdout and stderr, together, are what
/// a failure shows. A check that outlives its time is killed with its
/// whole process group.
pub fn run_check(path: &Path, timeout: Duration) -> Result<Option<String>> {
    let mut out = tempfile::tempfile().context("creating a file for a check's output")?;
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().context("sharing the output file")?)
        .stderr(out.try_clone().context("sharing the output file")?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .with_context(|| format!("waiting for {}", path.display()))?
        {
            break Some(s);
        }
        if started.elapsed() >= timeout {
            // SAFETY: kill(2) on the process group we created; no memory involved.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    std::io::Seek::rewind(&mut out).context("reading a check's output")?;
    let _ = out.read_to_string(&mut text);
    let text = first_lines(&text);
    Ok(match status {
        Some(s) if s.success() => None,
        Some(s) => Some(if text.is_empty() {
            format!("({s})")
        } else {
            text
        }),
        None => Some(format!(
            "timed out after {}s{}",
            timeout.as_secs(),
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        )),
    })
}

fn unit_state(unit: &str) -> String {
    match Command::new("systemctl")
        .args(["is-active", "--", unit])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("unknown (systemctl: {e})"),
    }
}

/// Run the checks of `dirs` (lowest first), then require `units` active.
/// The first failure, if any.
pub fn run_all(dirs: &[PathBuf], units: &[String], timeout: Duration) -> Result<Option<Failure>> {
    let mut listings = Vec::new();
    for d in dirs {
        listings.push(list_dir(d)?);
    }
    let (checks, skipped) = select(&listings);
    for s in skipped {
        eprintln!(
            "hostctl health: skipping {}: not an executable file",
            s.path.display()
        );
    }
    for c in checks {
        eprintln!("hostctl health: running {}", c.path.display());
        if let Some(output) = run_check(&c.path, timeout)? {
            return Ok(Some(Failure {
                name: c.name,
                output,
            }));
        }
    }
    for u in units {
        let state = unit_state(u);
        if state != "active" {
            return Ok(Some(Failure {
                name: u.clone(),
                output: format!("unit {u} is {state}, not active"),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, dir: &str, masked: bool, executable: bool) -> Entry {
        Entry {
            name: name.into(),
            path: PathBuf::from(format!("{dir}/{name}")),
            masked,
            executable,
        }
    }

    #[test]
    fn etc_replaces_and_masks_usr_by_name_and_order_is_by_name() {
        let usr = vec![
            e("20-net", "/usr", false, true),
            e("10-disk", "/usr", false, true),
            e("30-gone", "/usr", false, true),
        ];
        let etc = vec![
            e("20-net", "/etc", false, true),
            e("30-gone", "/etc", true, false),
            e("15-mine", "/etc", false, true),
            e("README", "/etc", false, false),
        ];
        let (run, skipped) = select(&[usr, etc]);
        let got: Vec<String> = run.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(got, ["/usr/10-disk", "/etc/15-mine", "/etc/20-net"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, "README");
    }

    #[test]
    fn output_is_cut_to_its_first_lines() {
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let kept = first_lines(&long);
        assert_eq!(kept.lines().count(), 10);
        assert!(kept.starts_with("line 0\n"));
        assert!(first_lines(&"x".repeat(10_000)).len() <= 2000);
    }
}
