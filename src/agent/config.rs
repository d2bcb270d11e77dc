//! `hostctl.toml`: the agent's configuration. The tree's defaults
//! (`/usr/lib/hostctl/hostctl.toml`) are overlaid key by key by the admin's
//! file (`/etc/hostctl/hostctl.toml`); keys neither sets take the built-in
//! defaults of [`Config::default`]. docs/agent.md describes every key.
//!
//! Parsing is pure ([`parse_layer`], [`merge`]); only [`load`] reads files.
//! Every error names the file, the line and the key, because an agent that
//! silently ignores a misspelt `policy` would never update anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::civil::{Time, Weekday};
use serde::Deserialize;
use toml::Spanned;

/// Where the tree ships its defaults.
pub const USR_CONFIG: &str = "/usr/lib/hostctl/hostctl.toml";
/// Where the admin overrides them.
pub const ETC_CONFIG: &str = "/etc/hostctl/hostctl.toml";

/// What the agent does when an update is available (rpm-ostree's
/// AutomaticUpdatePolicy words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Nothing: the agent only runs when asked for a reboot.
    None,
    /// Log the available version.
    Check,
    /// Download and deploy it for the next boot.
    Stage,
    /// Stage it, then reboot according to the reboot strategy.
    Apply,
}

/// When a staged update may reboot the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Immediate,
    Window,
    FleetLock,
}

/// A weekly maintenance window: on each of `days`, from `start` (local
/// wall-clock time) for `length` of elapsed time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub days: Vec<Weekday>,
    pub start: Time,
    pub length: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLock {
    pub url: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub policy: Policy,
    pub interval: Duration,
    pub randomized_delay: Duration,
    pub strategy: Strategy,
    pub windows: Vec<Window>,
    pub fleet_lock: Option<FleetLock>,
    /// Units that must be active for a boot to count as good.
    pub required_units: Vec<String>,
    /// How long each health check may run.
    pub health_timeout: Duration,
}

impl Default for Config {
    /// The built-in defaults: do nothing until an admin or the tree says so
    /// (rpm-ostree's default policy is `none` too).
    fn default() -> Self {
        Config {
            policy: Policy::None,
            interval: Duration::from_secs(6 * 3600),
            randomized_delay: Duration::from_secs(30 * 60),
            strategy: Strategy::Immediate,
            windows: Vec::new(),
            fleet_lock: None,
            required_units: Vec::new(),
            health_timeout: Duration::from_secs(60),
        }
    }
}

/// Where a value was set, for errors found only once the layers are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// What one file sets; `None` leaves the key to the layer below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub policy: Option<Policy>,
    pub interval: Option<Duration>,
    pub randomized_delay: Option<Duration>,
    pub strategy: Option<(Strategy, Origin)>,
    /// A file that lists windows replaces the lower layer's list whole.
    pub windows: Option<Vec<Window>>,
    pub fleet_lock_url: Option<String>,
    pub fleet_lock_group: Option<String>,
    pub required_units: Option<Vec<String>>,
    pub health_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    updates: Option<RawUpdates>,
    reboot: Option<RawReboot>,
    #[serde(rename = "fleet-lock")]
    fleet_lock: Option<RawFleetLock>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    required_units: Option<Vec<Spanned<String>>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpdates {
    policy: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    randomized_delay: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReboot {
    strategy: Option<Spanned<String>>,
    window: Option<Vec<RawWindow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Spanned<Vec<Spanned<String>>>,
    start: Spanned<String>,
    length: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleetLock {
    url: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The `[table]` (or `[[table]]`) header in force at `offset`, for naming
/// a key toml reports without its table.
fn table_at(text: &str, offset: usize) -> Option<String> {
    text[..offset.min(text.len())]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
}

/// Parse one file's text. `path` only names it in errors.
pub fn parse_layer(path: &Path, text: &str) -> Result<Layer> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().lines().next().unwrap_or("").to_string();
        match e.span() {
            Some(span) => {
                let line = line_of(text, span.start);
                let key = text[span.clone()].trim();
                let looks_like_key = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                match (looks_like_key, table_at(text, span.start)) {
                    (true, Some(table)) => {
                        anyhow::anyhow!("{}:{line}: key `{table}.{key}`: {msg}", path.display())
                    }
                    _ => anyhow::anyhow!("{}:{line}: {msg}", path.display()),
                }
            }
            None => anyhow::anyhow!("{}: {msg}", path.display()),
        }
    })?;
    let at = |span: std::ops::Range<usize>, key: &str, msg: String| {
        anyhow::anyhow!(
            "{}:{}: key `{key}`: {msg}",
            path.display(),
            line_of(text, span.start)
        )
    };
    let mut layer = Layer::default();
    if let Some(u) = raw.updates {
        if let Some(p) = u.policy {
            layer.policy =
                Some(parse_policy(p.get_ref()).map_err(|m| at(p.span(), "updates.policy", m))?);
        }
        if let Some(i) = u.interval {
            let d = parse_duration(i.get_ref()).map_err(|m| at(i.span(), "updates.interval", m))?;
            if d < Duration::from_secs(60) {
                return Err(at(
                    i.span(),
                    "updates.interval",
                    format!("{:?} is shorter than a minute", i.get_ref()),
                ));
            }
            layer.interval = Some(d);
        }
        if let Some(r) = u.randomized_delay {
            layer.randomized_delay = Some(
                parse_duration(r.get_ref())
                    .map_err(|m| at(r.span(), "updates.randomized-delay", m))?,
            );
        }
    }
    if let Some(r) = raw.reboot {
        if let Some(s) = r.strategy {
            let strategy =
                parse_strategy(s.get_ref()).map_err(|m| at(s.span(), "reboot.strategy", m))?;
            let origin = Origin {
                file: path.to_path_buf(),
                line: line_of(text, s.span().start),
            };
            layer.strategy = Some((strategy, origin));
        }
        if let Some(ws) = r.window {
            let mut windows = Vec::new();
            for w in ws {
                let mut days = Vec::new();
                for d in w.days.get_ref() {
                    days.push(
                        parse_weekday(d.get_ref())
                            .map_err(|m| at(d.span(), "reboot.window.days", m))?,
                    );
                }
                if days.is_empty() {
                    return Err(at(
                        w.days.span(),
                        "reboot.window.days",
                        "names no day".to_string(),
                    ));
                }
                let start = parse_time(w.start.get_ref())
                    .map_err(|m| at(w.start.span(), "reboot.window.start", m))?;
                let length = parse_duration(w.length.get_ref())
                    .map_err(|m| at(w.length.span(), "reboot.window.length", m))?;
                if length.is_zero() || length > Duration::from_secs(7 * 86400) {
                    return Err(at(
                        w.length.span(),
                        "reboot.window.length",
                        format!("{:?} is not between 1s and 7d", w.length.get_ref()),
                    ));
                }
                windows.push(Window {
                    days,
                    start,
                    length,
                });
            }
            layer.windows = Some(windows);
        }
    }
    if let Some(f) = raw.fleet_lock {
        if let Some(u) = f.url {
            let url = u.get_ref().trim_end_matches('/').to_string();
            if !url.starts_with("http://") {
                return Err(at(
                    u.span(),
                    "fleet-lock.url",
                    format!(
                        "{:?} is not an http:// URL (https is not supported yet)",
                        u.get_ref()
                    ),
                ));
            }
            // The URL becomes a request line; refuse what cannot be one here,
            // naming the line, rather than at the first reboot.
            if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(at(
                    u.span(),
                    "fleet-lock.url",
                    format!(
                        "{:?} contains whitespace or control characters",
                        u.get_ref()
                    ),
                ));
            }
            layer.fleet_lock_url = Some(url);
        }
        if let Some(g) = f.group {
            if g.get_ref().is_empty() {
                return Err(at(g.span(), "fleet-lock.group", "is empty".to_string()));
            }
            layer.fleet_lock_group = Some(g.into_inner());
        }
    }
    if let Some(h) = raw.health {
        if let Some(units) = h.required_units {
            let mut v = Vec::new();
            for u in units {
                let name = u.get_ref();
                // A unit name, never an option or a path handed to systemctl.
                let ok = name.contains('.')
                    && !name.starts_with('-')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
                if !ok {
                    return Err(at(
                        u.span(),
                        "health.required-units",
                        format!("{name:?} is not a unit name (such as sshd.service)"),
                    ));
                }
                v.push(name.clone());
            }
            layer.required_units = Some(v);
        }
        if let Some(t) = h.timeout {
            let d = parse_duration(t.get_ref()).map_err(|m| at(t.span(), "health.timeout", m))?;
            if d.is_zero() {
                return Err(at(t.span(), "health.timeout", "is zero".to_string()));
            }
            layer.health_timeout = Some(d);
        }
    }
    Ok(layer)
}

/// Overlay `layers` (lowest first) on the built-in defaults and check what
/// only the whole can tell: a `window` strategy needs windows, `fleet-lock`
/// a URL.
pub fn merge(layers: &[Layer]) -> Result<Config> {
    let mut c = Config::default();
    let mut strategy_origin = None;
    let mut url = None;
    let mut group = None;
    for l in layers {
        c.policy = l.policy.unwrap_or(c.policy);
        c.interval = l.interval.unwrap_or(c.interval);
        c.randomized_delay = l.randomized_delay.unwrap_or(c.randomized_delay);
        if let Some((s, o)) = &l.strategy {
            c.strategy = *s;
            strategy_origin = Some(o.clone());
        }
        if let Some(w) = &l.windows {
            c.windows = w.clone();
        }
        if let Some(u) = &l.required_units {
            c.required_units = u.clone();
        }
        c.health_timeout = l.health_timeout.unwrap_or(c.health_timeout);
        url = l.fleet_lock_url.clone().or(url);
        group = l.fleet_lock_group.clone().or(group);
    }
    let where_ = || {
        strategy_origin
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_default()
    };
    match c.strategy {
        Strategy::Window if c.windows.is_empty() => bail!(
            "{}: key `reboot.strategy`: \"window\" needs at least one [[reboot.window]]",
            where_()
        ),
        Strategy::FleetLock if url.is_none() => bail!(
            "{}: key `reboot.strategy`: \"fleet-lock\" needs `fleet-lock.url`",
            where_()
        ),
        _ => {}
    }
    c.fleet_lock = url.map(|url| FleetLock {
        url,
        group: group.unwrap_or_else(|| "default".to_string()),
    });
    Ok(c)
}

/// Read the layers that exist (a missing file is no layer) and merge them.
pub fn load(usr: &Path, etc: &Path) -> Result<Config> {
    let mut layers = Vec::new();
    for p in [usr, etc] {
        match std::fs::read_to_string(p) {
            Ok(text) => layers.push(parse_layer(p, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    merge(&layers)
}

fn parse_policy(s: &str) -> std::result::Result<Policy, String> {
    Ok(match s {
        "none" => Policy::None,
        "check" => Policy::Check,
        "stage" => Policy::Stage,
        "apply" => Policy::Apply,
        _ => return Err(format!("{s:?} is not one of none, check, stage, apply")),
    })
}

fn parse_strategy(s: &str) -> std::result::Result<Strategy, String> {
    Ok(match s {
        "immediate" => Strategy::Immediate,
        "window" => Strategy::Window,
        "fleet-lock" => Strategy::FleetLock,
        _ => return Err(format!("{s:?} is not one of immediate, window, fleet-lock")),
    })
}

fn parse_weekday(s: &str) -> std::result::Result<Weekday, String> {
    let l = s.to_ascii_lowercase();
    let days = [
        ("mon", "monday", Weekday::Monday),
        ("tue", "tuesday", Weekday::Tuesday),
        ("wed", "wednesday", Weekday::Wednesday),
        ("thu", "thursday", Weekday::Thursday),
        ("fri", "friday", Weekday::Friday),
        ("sat", "saturday", Weekday::Saturday),
        ("sun", "sunday", Weekday::Sunday),
    ];
    days.iter()
        .find(|(short, long, _)| l == *short || l == *long)
        .map(|d| d.2)
        .ok_or_else(|| format!("{s:?} is not a day (Mon, Tue, ... or Monday, Tuesday, ...)"))
}

/// `HH:MM` in 24-hour local time.
fn parse_time(s: &str) -> std::result::Result<Time, String> {
    let bad = || format!("{s:?} is not a time of day HH:MM (00:00 to 23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// A duration as digits and a unit, repeated: `90s`, `30m`, `6h`, `1d`,
/// `1h30m` (systemd's time spans in their short spelling).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30m, 6h, 1d or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str) -> Result<Layer> {
        parse_layer(Path::new("/etc/hostctl/hostctl.toml"), text)
    }

    fn err(text: &str) -> String {
        format!("{:#}", layer(text).unwrap_err())
    }

    #[test]
    fn a_full_file_parses() {
        let l = layer(
            r#"
[updates]
policy = "apply"
interval = "1h30m"
randomized-delay = "10m"

[reboot]
strategy = "window"

[[reboot.window]]
days = ["Sat", "sunday"]
start = "23:30"
length = "2h"

[[reboot.window]]
days = ["Wed"]
start = "04:00"
length = "30m"

[fleet-lock]
url = "http://lock.example:8080/"
group = "web"

[health]
required-units = ["sshd.service", "getty@tty1.service"]
timeout = "30s"
"#,
        )
        .unwrap();
        let c = merge(&[l]).unwrap();
        assert_eq!(c.policy, Policy::Apply);
        assert_eq!(c.interval, Duration::from_secs(5400));
        assert_eq!(c.randomized_delay, Duration::from_secs(600));
        assert_eq!(c.strategy, Strategy::Window);
        assert_eq!(c.windows.len(), 2);
        assert_eq!(c.windows[0].days, vec![Weekday::Saturday, Weekday::Sunday]);
        assert_eq!(c.windows[0].start, Time::new(23, 30, 0, 0).unwrap());
        assert_eq!(c.windows[1].length, Duration::from_secs(1800));
        assert_eq!(c.required_units, vec!["sshd.service", "getty@tty1.service"]);
        assert_eq!(c.health_timeout, Duration::from_secs(30));
        assert_eq!(
            c.fleet_lock,
            Some(FleetLock {
                url: "http://lock.example:8080".into(),
                group: "web".into()
            })
        );
    }

    #[test]
    fn no_file_means_the_built_in_defaults() {
        assert_eq!(merge(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().policy, Policy::None);
    }

    #[test]
    fn etc_overlays_usr_key_by_key() {
        let usr = parse_layer(
            Path::new(USR_CONFIG),
            "[updates]\npolicy = \"check\"\ninterval = \"2h\"\n[fleet-lock]\nurl = \"http://a\"\ngroup = \"g1\"\n",
        )
        .unwrap();
        let etc =
            layer("[updates]\npolicy = \"stage\"\n[reboot]\nstrategy = \"fleet-lock\"\n").unwrap();
        let c = merge(&[usr.clone(), etc]).unwrap();
        assert_eq!(c.policy, Policy::Stage, "/etc wins");
        // An /etc that does not set a key leaves every /usr key as it was.
        let etc_other = layer("[reboot]\nstrategy = \"immediate\"\n").unwrap();
        let c2 = merge(&[usr.clone(), etc_other]).unwrap();
        assert_eq!(
            (c2.policy, c2.interval),
            (Policy::Check, Duration::from_secs(7200))
        );
        assert_eq!(c2.fleet_lock.as_ref().unwrap().url, "http://a");
        assert_eq!(c.interval, Duration::from_secs(7200), "/usr's key kept");
        assert_eq!(c.strategy, Strategy::FleetLock);
        assert_eq!(c.fleet_lock.unwrap().group, "g1");
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = err("[updates]\npolicy = \"check\"\npolcy = \"apply\"\n");
        assert!(
            e.starts_with("/etc/hostctl/hostctl.toml:3: key `updates.polcy`"),
            "{e}"
        );
        let e = err("[updates]\n\n[rebot]\nstrategy = \"immediate\"\n");
        assert!(e.contains("hostctl.toml:3"), "{e}");
        assert!(e.contains("rebot"), "{e}");
        let e = err("[[reboot.window]]\ndays = [\"Mon\"]\nstart = \"01:00\"\nlength = \"1h\"\nlenght = \"2h\"\n");
        assert!(e.contains(":5: key `reboot.window.lenght`"), "{e}");
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        for (text, line, key, what) in [
            ("[updates]\npolicy = \"sometimes\"\n", 2, "updates.policy", "sometimes"),
            ("\n[updates]\ninterval = \"6 hours\"\n", 3, "updates.interval", "6 hours"),
            ("[updates]\ninterval = \"10s\"\n", 2, "updates.interval", "shorter than a minute"),
            ("[reboot]\nstrategy = \"now\"\n", 2, "reboot.strategy", "now"),
            (
                "[[reboot.window]]\ndays = [\"Mon\", \"Funday\"]\nstart = \"01:00\"\nlength = \"1h\"\n",
                2,
                "reboot.window.days",
                "Funday",
            ),
            (
                "[[reboot.window]]\ndays = [\"Mon\"]\nstart = \"25:00\"\nlength = \"1h\"\n",
                3,
                "reboot.window.start",
                "25:00",
            ),
            (
                "[[reboot.window]]\ndays = [\"Mon\"]\nstart = \"01:00\"\nlength = \"8d\"\n",
                4,
                "reboot.window.length",
                "8d",
            ),
            ("[fleet-lock]\nurl = \"ftp://x\"\n", 2, "fleet-lock.url", "ftp://x"),
            (
                "[fleet-lock]\nurl = \"http://a/x\\nHost: b\"\n",
                2,
                "fleet-lock.url",
                "control characters",
            ),
            (
                "[health]\nrequired-units = [\n  \"--force\",\n]\n",
                3,
                "health.required-units",
                "--force",
            ),
            ("[health]\ntimeout = \"0s\"\n", 2, "health.timeout", "zero"),
        ] {
            let e = err(text);
            let want = format!("/etc/hostctl/hostctl.toml:{line}: key `{key}`");
            assert!(e.starts_with(&want), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
        // A wrong type is toml's error, still with file and line.
        let e = err("[updates]\n\npolicy = 3\n");
        assert!(e.starts_with("/etc/hostctl/hostctl.toml:3"), "{e}");
    }

    #[test]
    fn strategies_missing_their_settings_name_where_the_strategy_was_set() {
        let e = format!(
            "{:#}",
            merge(&[layer("[reboot]\nstrategy = \"window\"\n").unwrap()]).unwrap_err()
        );
        assert!(
            e.starts_with("/etc/hostctl/hostctl.toml:2: key `reboot.strategy`"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            merge(&[layer("\n[reboot]\nstrategy = \"fleet-lock\"\n").unwrap()]).unwrap_err()
        );
        assert!(e.contains(":3:") && e.contains("fleet-lock.url"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d2h"), Ok(Duration::from_secs(93600)));
        for bad in ["", "5", "h", "1x", "1h 30m", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_shipped_reference_defaults_parse() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("treefiles/minimal/overlay/usr/lib/hostctl/hostctl.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        merge(&[parse_layer(&path, &text).unwrap()]).unwrap();
    }
}
