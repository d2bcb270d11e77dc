//! One run of the update agent (`hostctl agent run-once`, started by
//! hostctl-agent.timer) and the strategy-gated reboot it ends with
//! (`hostctl agent reboot`).
//!
//! Failures to reach the update server or the lock server are logged and
//! the run ends successfully: the next run tries again, and a unit that
//! fails every few hours would page someone for a network blip. A broken
//! configuration does fail the run: only an admin can fix it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::config::{self, Config, Policy, Strategy};
use super::fleetlock::{self, Answer, Op};
use super::{health, reboot_required, window};
use crate::host::sysroot;
use crate::host::verbs::{self, Target, UpgradeOptions};
use crate::Outcome;

/// Where the agent finds its configuration and keeps its state.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The tree's defaults ([`config::USR_CONFIG`]).
    pub defaults: PathBuf,
    /// The admin's file ([`config::ETC_CONFIG`]).
    pub config: PathBuf,
    /// Run stamp, held fleet lock; the failed-commit list is read from here
    /// too (`/var/lib/hostctl`, where boot-check records fallbacks).
    pub state_dir: PathBuf,
    /// Run only when the configured interval has passed since the last run.
    pub if_due: bool,
}

fn log(msg: &str) {
    eprintln!("hostctl agent: {msg}");
}

const STAMP: &str = "agent-last-run";
const HELD: &str = "fleet-lock-held";

/// The last run's time and the random delay drawn for the next one.
pub fn parse_stamp(text: &str) -> Option<(i64, u64)> {
    let mut w = text.split_whitespace();
    let last = w.next()?.parse().ok()?;
    let delay = w.next()?.parse().ok()?;
    Some((last, delay))
}

/// When the next run is due: the last run plus the interval plus that
/// run's random delay (capped by the current setting, in case it shrank).
/// `None`: due now.
pub fn next_due(stamp: Option<(i64, u64)>, c: &Config) -> Option<i64> {
    let (last, delay) = stamp?;
    let delay = delay.min(c.randomized_delay.as_secs());
    // Saturating: a huge configured interval must push the next run out,
    // never wrap it into the past.
    let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    Some(
        last.saturating_add(secs(c.interval.as_secs()))
            .saturating_add(secs(delay)),
    )
}

fn random_delay(max: Duration) -> u64 {
    if max.is_zero() {
        return 0;
    }
    let mut b = [0u8; 8];
    // No randomness is no reason to skip a run: fall back to no delay.
    if getrandom::getrandom(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % (max.as_secs() + 1)
}

/// Whether the running boot is known good: on the running OSTree host,
/// boot-complete.target is active (the unit wants it, so it has been tried
/// by the time the agent runs); any other sysroot is not a boot at all.
fn boot_known_good(t: &Target) -> bool {
    if t.sysroot != Path::new("/") || !Path::new("/run/ostree-booted").exists() {
        return true;
    }
    Command::new("systemctl")
        .args(["is-active", "--quiet", "boot-complete.target"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Checksums of commits that failed to boot here (one per line; see
/// [`verbs::FAILED_COMMITS`]).
fn failed_commits(state_dir: &Path) -> Result<Vec<String>> {
    let p = state_dir.join(verbs::FAILED_COMMITS_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Give back a reboot slot taken before a reboot, once that reboot has
/// happened (the boot id changed): this run is after a good boot, since the
/// agent's unit is ordered after boot-complete.target.
fn release_fleet_lock(c: &Config, state_dir: &Path) -> Result<()> {
    let held = state_dir.join(HELD);
    let text = match std::fs::read_to_string(&held) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", held.display())),
    };
    if text.trim() == boot_id() {
        log("the reboot slot taken in this boot is kept until the reboot");
        return Ok(());
    }
    let Some(fl) = &c.fleet_lock else {
        log("a reboot slot is held but fleet-lock.url is no longer set; forgetting it");
        return remove(&held);
    };
    let id = fleetlock::this_host_id()?;
    match fleetlock::Client::new(&fl.url).send(Op::SteadyState, &id, &fl.group) {
        Ok(Answer::Granted) => {
            log(&format!("released the reboot slot at {}", fl.url));
            remove(&held)
        }
        Ok(Answer::Refused(why)) => {
            log(&format!(
                "{} did not take the reboot slot back ({why}); trying again at the next run",
                fl.url
            ));
            Ok(())
        }
        Err(e) => {
            log(&format!("{e:#}; releasing the reboot slot at the next run"));
            Ok(())
        }
    }
}

fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn write_file(p: &Path, text: &str) -> Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
}

/// `hostctl agent run-once`.
pub fn run_once(t: &Target, o: &AgentOptions) -> Result<Outcome> {
    let c = config::load(&o.defaults, &o.config)?;
    if !boot_known_good(t) {
        // A boot whose health checks failed is about to fall back: giving
        // the reboot slot back now would let the fleet reboot the next
        // host while this one is still down, and staging would only race
        // the fallback.
        log("this boot has not reached boot-complete.target (its health checks failed or have not finished): doing nothing");
        return Ok(Outcome::Unchanged { exit_77: false });
    }
    release_fleet_lock(&c, &o.state_dir)?;
    let stamp_path = o.state_dir.join(STAMP);
    let now = Timestamp::now().as_second();
    if o.if_due {
        let stamp = std::fs::read_to_string(&stamp_path)
            .ok()
            .and_then(|t| parse_stamp(&t));
        if let Some(due) = next_due(stamp, &c).filter(|d| *d > now) {
            match Timestamp::from_second(due) {
                Ok(at) => log(&format!("not due before {at}")),
                Err(_) => log("not due again: updates.interval reaches past any date"),
            }
            return Ok(Outcome::Unchanged { exit_77: false });
        }
    }
    // Stamped before the work: a run that fails waits a whole interval too.
    write_file(
        &stamp_path,
        &format!("{now} {}\n", random_delay(c.randomized_delay)),
    )?;
    let failed = failed_commits(&o.state_dir)?;
    let upgrade = |check: bool| {
        verbs::upgrade(
            t,
            &UpgradeOptions {
                check,
                skip: failed.clone(),
                ..Default::default()
            },
        )
    };
    match c.policy {
        Policy::None => {
            log("updates.policy is \"none\": not looking for updates");
            Ok(Outcome::Unchanged { exit_77: false })
        }
        Policy::Check => {
            log("updates.policy is \"check\": looking for an update");
            if let Err(e) = upgrade(true) {
                log(&format!("{e:#}; trying again at the next run"));
            }
            Ok(Outcome::Done)
        }
        Policy::Stage | Policy::Apply => {
            log(&format!(
                "updates.policy is \"{}\": staging any update",
                if c.policy == Policy::Stage {
                    "stage"
                } else {
                    "apply"
                }
            ));
            if let Err(e) = upgrade(false) {
                log(&format!("{e:#}; trying again at the next run"));
                return Ok(Outcome::Done);
            }
            if let Err(e) = reboot_required::refresh(t.sysroot, t.stateroot) {
                log(&format!("updating {}: {e:#}", reboot_required::FLAG));
            }
            if c.policy == Policy::Apply {
                apply_reboot(t, &c, &o.state_dir)?;
            }
            Ok(Outcome::Done)
        }
    }
}

/// After staging under `apply`: reboot by the strategy when the next boot
/// differs from this one.
fn apply_reboot(t: &Target, c: &Config, state_dir: &Path) -> Result<()> {
    let host = sysroot::open_unlocked_any(t.sysroot, t.stateroot)?;
    if !host.booted {
        println!(
            "Not rebooting: {} is not the running system.",
            host.path.display()
        );
        return Ok(());
    }
    if host.roles().booted() == Some(0) {
        log("the booted deployment is the default: no reboot needed");
        return Ok(());
    }
    drop(host);
    reboot_by_strategy(c, state_dir)?;
    Ok(())
}

/// `hostctl agent reboot`: reboot this machine now if the strategy allows.
pub fn reboot(o: &AgentOptions) -> Result<Outcome> {
    let c = config::load(&o.defaults, &o.config)?;
    Ok(if reboot_by_strategy(&c, &o.state_dir)? {
        Outcome::Done
    } else {
        Outcome::Unchanged { exit_77: false }
    })
}

fn request_reboot() -> Result<()> {
    crate::util::run(
        Command::new("systemctl").arg("reboot"),
        "requesting a reboot",
    )?;
    Ok(())
}

/// Reboot if the strategy says now; say when otherwise. Whether it asked
/// for the reboot.
pub fn reboot_by_strategy(c: &Config, state_dir: &Path) -> Result<bool> {
    match c.strategy {
        Strategy::Immediate => {
            log("rebooting (reboot.strategy is \"immediate\")");
            request_reboot()?;
            Ok(true)
        }
        Strategy::Window => {
            let tz = TimeZone::system();
            let now = Timestamp::now();
            if let Some(close) = window::open_at(&c.windows, now, &tz)? {
                log(&format!(
                    "rebooting: a maintenance window is open until {}",
                    window::local(close, &tz)
                ));
                request_reboot()?;
                return Ok(true);
            }
            match window::next_opening(&c.windows, now, &tz)? {
                Some(next) => log(&format!(
                    "not rebooting: the next maintenance window opens {}",
                    window::local(next, &tz)
                )),
                None => log("not rebooting: no maintenance window ever opens"),
            }
            Ok(false)
        }
        Strategy::FleetLock => {
            let fl = c
                .fleet_lock
                .as_ref()
                .context("reboot.strategy is \"fleet-lock\" but fleet-lock.url is not set")?;
            let id = fleetlock::this_host_id()?;
            match fleetlock::Client::new(&fl.url).send(Op::PreReboot, &id, &fl.group) {
                Ok(Answer::Granted) => {
                    // Recorded before rebooting, so the next boot gives the
                    // slot back even if this process dies now.
                    write_file(&state_dir.join(HELD), &format!("{}\n", boot_id()))?;
                    log(&format!(
                        "rebooting: {} granted a reboot slot (group {}, id {id})",
                        fl.url, fl.group
                    ));
                    request_reboot()?;
                    Ok(true)
                }
                Ok(Answer::Refused(why)) => {
                    log(&format!(
                        "not rebooting: {} refused a reboot slot (group {}): {why}; trying again at the next run",
                        fl.url, fl.group
                    ));
                    Ok(false)
                }
                Err(e) => {
                    log(&format!(
                        "not rebooting: {e:#}; trying again at the next run"
                    ));
                    Ok(false)
                }
            }
        }
    }
}

/// Where `hostctl internal health-check` finds its checks and records a
/// failure.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    pub defaults: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// health.d directories, lowest first (the tree's, then the admin's).
    pub dirs: Vec<PathBuf>,
}

/// `hostctl internal health-check`: fail (so the unit fails and the entry
/// is marked bad) when a check fails, after recording which one and its
/// output for `boot-check`.
pub fn health_check(t: &Target, o: &HealthOptions) -> Result<Outcome> {
    // A typo in hostctl.toml must not roll back a good update: the checks
    // in health.d still run, with the built-in timeout.
    let c = config::load(&o.defaults, &o.config).unwrap_or_else(|e| {
        eprintln!("hostctl health: {e:#}; running the health.d checks with the built-in settings");
        Config::default()
    });
    let Some(f) = health::run_all(&o.dirs, &c.required_units, c.health_timeout)? else {
        eprintln!("hostctl health: all checks passed");
        return Ok(Outcome::Done);
    };
    // Which deployment failed, so that the record explains only its
    // fallback; "-" when this is not a booted OSTree system.
    let checksum = sysroot::open_unlocked_any(t.sysroot, t.stateroot)
        .ok()
        .filter(|h| h.booted)
        .and_then(|h| {
            h.roles()
                .booted()
                .map(|i| h.deployments()[i].csum().to_string())
        })
        .unwrap_or_else(|| "-".to_string());
    write_file(
        &o.state_dir.join(verbs::HEALTH_FAILURE_FILE),
        &verbs::health_record(&checksum, &f.name, &f.output),
    )?;
    anyhow::bail!(
        "health check {} failed: {}",
        f.name,
        f.output.lines().next().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_due_after_interval_plus_their_delay() {
        let c = Config {
            interval: Duration::from_secs(3600),
            randomized_delay: Duration::from_secs(600),
            ..Config::default()
        };
        assert_eq!(next_due(None, &c), None, "never ran: due now");
        assert_eq!(
            next_due(parse_stamp("1000 200\n"), &c),
            Some(1000 + 3600 + 200)
        );
        // A delay drawn under a larger setting is capped by the current one.
        assert_eq!(
            next_due(parse_stamp("1000 5000"), &c),
            Some(1000 + 3600 + 600)
        );
        // An interval too long for the clock's arithmetic means "not again
        // for ever", not a wrap into the past that runs at every wake.
        let forever = Config {
            interval: Duration::from_secs(107_000_000_000_000 * 86400),
            randomized_delay: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(next_due(parse_stamp("1000 0"), &forever), Some(i64::MAX));
        assert_eq!(parse_stamp("garbage"), None);
        assert_eq!(parse_stamp(""), None);
    }

    #[test]
    fn random_delays_stay_within_the_setting() {
        for _ in 0..100 {
            assert!(random_delay(Duration::from_secs(30)) <= 30);
        }
        assert_eq!(random_delay(Duration::ZERO), 0);
    }
}
