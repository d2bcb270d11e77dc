//! What long operations print while they run: a pull's objects and bytes
//! received so far (read from libostree's `AsyncProgress`) with a rate and
//! an estimate of the time left, and a compose's steps with the time since
//! it started.
//!
//! Three outputs, chosen once per process with `--progress` ([`configure`]):
//! on a terminal one line is redrawn in place; otherwise (a journal, a log
//! file, CI) a plain line every few seconds, so a long download shows it is
//! alive without flooding the log; with `json`, one JSON object per line,
//! for tools, on stderr or the file descriptor given with `--progress-fd`.
//! stdout is never written here: it carries the commands' data.
//!
//! The terminal line is drawn by hand (`\r`, `ESC[K`) rather than with
//! indicatif: the three outputs must agree on the rate and the estimate,
//! so they share one estimator ([`Estimator`]), and what is left for a
//! terminal is one line of text, which indicatif would draw with its own
//! rate and ETA arithmetic from its own samples.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::util::human_bytes;

/// How often a line is printed when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(2);

/// How far back the rate looks: long enough to smooth the bursts of a
/// pull that fetches several objects at once, short enough to follow a
/// network that slows down.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the user asked for with `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A redrawn line on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Plain lines every few seconds, even on a terminal.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The output a process settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Terminal,
    Plain,
    Json,
}

struct Sink {
    output: Output,
    /// `--progress-fd`: where JSON lines go instead of stderr.
    fd: Option<File>,
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Choose the output for this process: `mode`, and for JSON the file
/// descriptor `fd` (already open, inherited from the caller) instead of
/// stderr. `--progress-fd` alone means JSON. Called once, before any
/// progress is printed; a process that never calls it gets `Auto`.
pub fn configure(mode: Mode, fd: Option<i32>) -> Result<()> {
    START.get_or_init(Instant::now);
    let file = match fd {
        None => None,
        Some(n) if n < 0 => bail!("--progress-fd {n}: not a file descriptor"),
        Some(1) => bail!("--progress-fd 1: stdout is reserved for the command's data; use 2 (stderr) or another descriptor"),
        Some(n) => {
            // SAFETY: fcntl(F_GETFD) only asks whether `n` is open.
            if unsafe { libc::fcntl(n, libc::F_GETFD) } == -1 {
                bail!("--progress-fd {n}: no such open file descriptor (open it for writing, e.g. `{n}>FILE`)");
            }
            // SAFETY: `n` is open and nothing else in this process owns
            // it: it was inherited for this purpose. Kept for the life of
            // the process (the sink is never dropped).
            Some(unsafe { File::from_raw_fd(n) })
        }
    };
    let output = match (mode, file.is_some()) {
        (Mode::Json, _) | (_, true) => Output::Json,
        (Mode::Plain, false) => Output::Plain,
        (Mode::Auto, false) => auto_output(),
    };
    if SINK.set(Mutex::new(Sink { output, fd: file })).is_err() {
        bail!("progress output configured twice");
    }
    Ok(())
}

fn auto_output() -> Output {
    if std::io::stderr().is_terminal() {
        Output::Terminal
    } else {
        Output::Plain
    }
}

fn sink() -> &'static Mutex<Sink> {
    SINK.get_or_init(|| {
        Mutex::new(Sink {
            output: auto_output(),
            fd: None,
        })
    })
}

fn output() -> Output {
    sink().lock().map(|s| s.output).unwrap_or(Output::Plain)
}

/// Write one JSON line where JSON goes. Progress is advisory: a closed
/// descriptor or a full pipe must not fail the operation, so errors are
/// dropped.
fn emit_json(line: &str) {
    let Ok(mut s) = sink().lock() else { return };
    match s.fd.as_mut() {
        Some(f) => {
            let _ = writeln!(f, "{line}");
        }
        None => {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

/// One reading of a pull's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Objects fetched and requested (loose objects and metadata).
    pub fetched: u32,
    pub requested: u32,
    /// Static delta parts fetched and to fetch.
    pub delta_parts: u32,
    pub delta_parts_total: u32,
    /// Bytes of delta parts in all (compressed, as sent): what a delta
    /// pull will receive, known once the superblock is read.
    pub delta_bytes_total: u64,
    /// Bytes received over the network so far.
    pub bytes: u64,
}

impl Reading {
    /// The keys libostree's pull sets (ostree-repo-pull.c, `update_progress`),
    /// read with their own types: a missing key reads as 0.
    pub fn from_progress(p: &ostree::AsyncProgress) -> Reading {
        Reading {
            fetched: p.uint("fetched"),
            requested: p.uint("requested"),
            delta_parts: p.uint("fetched-delta-parts"),
            delta_parts_total: p.uint("total-delta-parts"),
            delta_bytes_total: p.uint64("total-delta-part-size"),
            bytes: p.uint64("bytes-transferred"),
        }
    }

    /// What is counted: static delta parts when the pull uses a delta
    /// (its objects are few and not what takes the time), else objects.
    /// (done, total, unit name).
    pub fn units(&self) -> (u64, u64, &'static str) {
        if self.delta_parts_total > 0 {
            (
                self.delta_parts as u64,
                self.delta_parts_total as u64,
                "delta-parts",
            )
        } else {
            (self.fetched as u64, self.requested as u64, "objects")
        }
    }

    /// The bytes the pull will receive in all, where libostree knows it (a
    /// delta pull; an object pull learns object sizes only as they come).
    /// Never less than what already arrived: loose objects fetched beside
    /// the delta count in `bytes` too.
    pub fn bytes_total(&self) -> Option<u64> {
        (self.delta_bytes_total > 0).then(|| self.delta_bytes_total.max(self.bytes))
    }

    /// `Receiving: 3/40 objects, 1.2 MiB` (the delta part only when the
    /// pull uses one; the total bytes when known).
    pub fn render(&self) -> String {
        let mut s = format!("{}/{} objects", self.fetched, self.requested);
        if self.delta_parts_total > 0 {
            s.push_str(&format!(
                ", {}/{} delta parts",
                self.delta_parts, self.delta_parts_total
            ));
        }
        match self.bytes_total() {
            Some(t) => format!(
                "Receiving: {s}, {} of {}",
                human_bytes(self.bytes),
                human_bytes(t)
            ),
            None => format!("Receiving: {s}, {}", human_bytes(self.bytes)),
        }
    }

    /// The line printed once the pull is over.
    pub fn summary(&self, elapsed: Duration) -> String {
        let mut s = format!(
            "Received {} in {} objects",
            human_bytes(self.bytes),
            self.fetched
        );
        if self.delta_parts_total > 0 {
            s.push_str(&format!(" and {} delta parts", self.delta_parts));
        }
        s.push_str(&format!(" in {}.", clock(elapsed.as_secs())));
        s
    }
}

/// Rate and time left, from the readings of the last [`RATE_WINDOW`].
/// Pure: times are given, so tests need no clock.
#[derive(Debug, Default)]
pub struct Estimator {
    /// (seconds since start, units done, bytes), oldest first.
    samples: VecDeque<(f64, u64, u64)>,
}

/// What the estimator says about the latest reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    /// Bytes per second, once two readings are far enough apart.
    pub rate: Option<f64>,
    /// Seconds left, where the total is known and the work moves.
    pub eta: Option<u64>,
}

impl Estimator {
    /// Record a reading taken `t` seconds after the start and estimate.
    pub fn push(&mut self, t: f64, r: &Reading) -> Estimate {
        let (done, total, _) = r.units();
        self.samples.push_back((t, done, r.bytes));
        let window = RATE_WINDOW.as_secs_f64();
        while self.samples.len() > 2 && t - self.samples[1].0 >= window {
            self.samples.pop_front();
        }
        let (t0, done0, bytes0) = self.samples[0];
        let dt = t - t0;
        // Two readings a moment apart say little about a rate.
        if dt < 0.5 {
            return Estimate::default();
        }
        let rate = r.bytes.saturating_sub(bytes0) as f64 / dt;
        let unit_rate = done.saturating_sub(done0) as f64 / dt;
        // Bytes left over the byte rate where the byte total is known (a
        // delta); else units left over the unit rate (objects still
        // requested: the total grows while libostree reads directories).
        let eta = match r.bytes_total() {
            Some(bt) => eta_secs(bt.saturating_sub(r.bytes), rate),
            None if total > 0 => eta_secs(total.saturating_sub(done), unit_rate),
            None => None,
        };
        Estimate {
            rate: Some(rate),
            eta,
        }
    }
}

/// Seconds to do `left` at `rate` per second, rounded up; none while
/// nothing moves.
pub fn eta_secs(left: u64, rate: f64) -> Option<u64> {
    if left == 0 {
        return Some(0);
    }
    (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64)
}

/// `0:07`, `12:30`, `1:02:03`.
pub fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The plain (and terminal) line: the reading, then the rate and the time
/// left once known.
pub fn plain_line(r: &Reading, e: &Estimate) -> String {
    let mut s = r.render();
    if let Some(rate) = e.rate {
        s.push_str(&format!(", {}/s", human_bytes(rate as u64)));
    }
    if let Some(eta) = e.eta {
        s.push_str(&format!(", {} left", clock(eta)));
    }
    s
}

/// The terminal line: a bar and percentage where the total is known (by
/// bytes for a delta, else by units), then the plain line, cut to `width`
/// columns so that redrawing never wraps (a wrapped line is not erased by
/// `\r ESC[K`).
pub fn terminal_line(r: &Reading, e: &Estimate, width: usize) -> String {
    let (done, total, _) = r.units();
    let fraction = match r.bytes_total() {
        Some(t) => Some(r.bytes as f64 / t as f64),
        None if total > 0 => Some(done as f64 / total as f64),
        None => None,
    };
    let mut s = String::new();
    if let Some(f) = fraction {
        let f = f.clamp(0.0, 1.0);
        const BAR: usize = 20;
        let filled = (f * BAR as f64).floor() as usize;
        s.push('[');
        s.push_str(&"#".repeat(filled));
        s.push_str(&" ".repeat(BAR - filled));
        s.push_str(&format!("] {:3.0}% ", f * 100.0));
    }
    s.push_str(&plain_line(r, e));
    s.chars().take(width.max(1)).collect()
}

/// One JSON line of a pull: `stage` ("pull", or "pull-missing" for the
/// object pull that completes a static delta), `done`/`total` in `unit`
/// (`delta-parts` or `objects`), bytes received and, for a delta, the
/// bytes in all (`null` otherwise), the rate and the time left where
/// known, and `finished` on the last line of the stage.
pub fn json_line(
    stage: &str,
    r: &Reading,
    e: &Estimate,
    elapsed: Duration,
    finished: bool,
) -> String {
    let (done, total, unit) = r.units();
    serde_json::json!({
        "stage": stage,
        "done": done,
        "total": total,
        "unit": unit,
        "bytes": r.bytes,
        "bytes_total": r.bytes_total(),
        "objects": r.fetched,
        "objects_total": r.requested,
        "delta_parts": r.delta_parts,
        "delta_parts_total": r.delta_parts_total,
        "bytes_per_second": e.rate.map(|x| x.round() as u64),
        "eta_seconds": e.eta,
        "elapsed_seconds": round_ms(elapsed),
        "finished": finished,
    })
    .to_string()
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Whether a line is due when stderr is not a terminal: the first one
/// `interval` after the start (a pull that ends sooner prints only its
/// summary), then one per `interval`.
pub fn log_line_due(
    start: Instant,
    last: Option<Instant>,
    now: Instant,
    interval: Duration,
) -> bool {
    now.duration_since(last.unwrap_or(start)) >= interval
}

/// The width of the terminal on stderr; where the terminal does not know
/// it (a pty nobody sized, as `script` makes without a terminal of its
/// own), `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; the struct is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return ws.ws_col as usize;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(80)
}

/// Prints a pull's progress; `finish` prints the summary.
pub struct Printer {
    progress: ostree::AsyncProgress,
    state: Rc<RefCell<State>>,
}

struct State {
    output: Output,
    stage: &'static str,
    start: Instant,
    last: Option<Instant>,
    latest: Reading,
    estimator: Estimator,
    estimate: Estimate,
    rewrote: bool,
}

impl State {
    fn update(&mut self, reading: Reading) {
        self.latest = reading;
        let now = Instant::now();
        let elapsed = now.duration_since(self.start);
        self.estimate = self.estimator.push(elapsed.as_secs_f64(), &reading);
        match self.output {
            Output::Terminal => {
                let line = terminal_line(&reading, &self.estimate, terminal_width() - 1);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
                self.rewrote = true;
            }
            Output::Plain => {
                if log_line_due(self.start, self.last, now, LOG_INTERVAL) {
                    let line = plain_line(&reading, &self.estimate);
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                    self.last = Some(now);
                }
            }
            Output::Json => {
                emit_json(&json_line(
                    self.stage,
                    &reading,
                    &self.estimate,
                    elapsed,
                    false,
                ));
            }
        }
    }
}

impl Printer {
    /// A printer for the stage `stage` ("pull", "pull-missing").
    pub fn new(stage: &'static str) -> Printer {
        let progress = ostree::AsyncProgress::new();
        let state = Rc::new(RefCell::new(State {
            output: output(),
            stage,
            start: Instant::now(),
            last: None,
            latest: Reading::default(),
            estimator: Estimator::default(),
            estimate: Estimate::default(),
            rewrote: false,
        }));
        let s = state.clone();
        // libostree calls this from the pull's own main loop, on this thread,
        // about once a second.
        progress.connect_changed(move |p| {
            s.borrow_mut().update(Reading::from_progress(p));
        });
        Printer { progress, state }
    }

    pub fn progress(&self) -> &ostree::AsyncProgress {
        &self.progress
    }

    /// End the line being rewritten and, after a pull that succeeded, print
    /// what was received in all (a failed pull's error is its one line).
    pub fn finish(self, succeeded: bool) {
        self.progress.finish();
        let st = self.state.borrow();
        let reading = Reading::from_progress(&self.progress);
        // A pull shorter than libostree's first update never called back.
        let reading = if reading == Reading::default() {
            st.latest
        } else {
            reading
        };
        let elapsed = st.start.elapsed();
        if st.rewrote {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
        // A pull from a local (file://) repository imports objects and
        // receives nothing over a network: no summary to give.
        if !succeeded || reading == Reading::default() {
            return;
        }
        match st.output {
            Output::Json => {
                // The final figures, with nothing left to estimate.
                let e = Estimate {
                    rate: (elapsed.as_secs_f64() > 0.0)
                        .then(|| reading.bytes as f64 / elapsed.as_secs_f64()),
                    eta: Some(0),
                };
                emit_json(&json_line(st.stage, &reading, &e, elapsed, true));
            }
            Output::Terminal | Output::Plain => {
                let _ = writeln!(std::io::stderr().lock(), "{}", reading.summary(elapsed));
            }
        }
    }
}

/// When this process started to do its work (the first call of
/// [`configure`] or [`step`]): what step times count from.
static START: OnceLock<Instant> = OnceLock::new();

/// Steps announced so far in this process.
static STEPS: AtomicU64 = AtomicU64::new(0);

/// Announce the next step of a long operation that has no byte counts (a
/// compose): on stderr with the time since the command started, or as a
/// JSON line `{"stage": STAGE, "step": TEXT, "done": N, "total": null, ...}`
/// where `done` counts the steps begun (their number is not known ahead:
/// steps that have nothing to do are skipped).
pub fn step(stage: &str, text: &str) {
    let done = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    let elapsed = START.get_or_init(Instant::now).elapsed();
    match output() {
        Output::Json => emit_json(&step_json(stage, text, done, elapsed)),
        Output::Terminal | Output::Plain => eprintln!("{}", step_line(text, elapsed)),
    }
}

/// A count with a known total (files committed), ticked from any thread:
/// a redrawn bar on a terminal, a plain line every [`LOG_INTERVAL`], or a
/// JSON line about once a second, and a last one from [`Counter::finish`].
/// A tick costs an atomic add and, once per interval, a line: nothing
/// measurable beside compressing a file.
pub struct Counter {
    stage: &'static str,
    text: &'static str,
    total: u64,
    done: AtomicU64,
    output: Output,
    start: Instant,
    /// When the last line was written; held while one is written.
    last: Mutex<Instant>,
    /// A terminal line was drawn and must be cleared at the end.
    drew: std::sync::atomic::AtomicBool,
}

impl Counter {
    /// `text` names what is counted (`files`); `stage` is the JSON stage.
    pub fn new(stage: &'static str, text: &'static str, total: u64) -> Counter {
        let now = Instant::now();
        Counter {
            stage,
            text,
            total,
            done: AtomicU64::new(0),
            output: output(),
            start: now,
            last: Mutex::new(now),
            drew: false.into(),
        }
    }

    fn interval(&self) -> Duration {
        match self.output {
            Output::Terminal => Duration::from_millis(200),
            Output::Json => Duration::from_secs(1),
            Output::Plain => LOG_INTERVAL,
        }
    }

    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.maybe_show(done);
    }

    /// For counts read from outside (files appearing in a directory): the
    /// count only grows, whatever `done` says.
    pub fn set(&self, done: u64) {
        let done = self.done.fetch_max(done, Ordering::Relaxed).max(done);
        self.maybe_show(done);
    }

    fn maybe_show(&self, done: u64) {
        // Another thread writing a line: this count is kept, not shown.
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(*last) < self.interval() {
            return;
        }
        *last = now;
        self.show(done, now.duration_since(self.start), false);
    }

    fn show(&self, done: u64, elapsed: Duration, finished: bool) {
        match self.output {
            Output::Terminal if finished => {
                if self.drew.load(Ordering::Relaxed) {
                    let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
                }
            }
            Output::Terminal => {
                let line = count_line(self.text, done, self.total, elapsed, true);
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K{line}");
                self.drew.store(true, Ordering::Relaxed);
            }
            // A count that ends within the first interval says nothing
            // the step line before it did not.
            Output::Plain if finished => {}
            Output::Plain => {
                let line = count_line(self.text, done, self.total, elapsed, false);
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Output::Json => emit_json(&count_json(self.stage, done, self.total, elapsed, finished)),
        }
    }

    /// The last line (JSON), or the redrawn line cleared (terminal).
    pub fn finish(self) {
        let done = self.done.load(Ordering::Relaxed);
        self.show(done, self.start.elapsed(), true);
    }
}

/// `[####      ]  40% 400/1000 files, 0:12` (the bar on a terminal only).
pub fn count_line(text: &str, done: u64, total: u64, elapsed: Duration, bar: bool) -> String {
    let mut s = String::new();
    if bar && total > 0 {
        let f = (done as f64 / total as f64).clamp(0.0, 1.0);
        const BAR: usize = 20;
        let filled = (f * BAR as f64).floor() as usize;
        s.push_str(&format!(
            "[{}{}] {:3.0}% ",
            "#".repeat(filled),
            " ".repeat(BAR - filled),
            f * 100.0
        ));
    }
    s.push_str(&format!(
        "{done}/{total} {text}, {}",
        clock(elapsed.as_secs())
    ));
    s
}

/// A count as a JSON line: `{"stage", "done", "total", "elapsed_seconds",
/// "finished"}`.
pub fn count_json(stage: &str, done: u64, total: u64, elapsed: Duration, finished: bool) -> String {
    serde_json::json!({
        "stage": stage,
        "done": done,
        "total": total,
        "elapsed_seconds": round_ms(elapsed),
        "finished": finished,
    })
    .to_string()
}

/// `[0:12] Converting the tree to the OSTree layout`.
pub fn step_line(text: &str, elapsed: Duration) -> String {
    format!("[{}] {text}", clock(elapsed.as_secs()))
}

/// A step as a JSON line; `total` is `null`: see [`step`].
pub fn step_json(stage: &str, text: &str, done: u64, elapsed: Duration) -> String {
    serde_json::json!({
        "stage": stage,
        "step": text,
        "done": done,
        "total": null,
        "elapsed_seconds": round_ms(elapsed),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(fetched: u32, requested: u32, bytes: u64) -> Reading {
        Reading {
            fetched,
            requested,
            bytes,
            ..Default::default()
        }
    }

    #[test]
    fn lines_name_objects_and_bytes_and_delta_parts_only_when_used() {
        let r = objects(3, 40, 1_300_000);
        assert_eq!(r.render(), "Receiving: 3/40 objects, 1.2 MiB");
        assert_eq!(
            r.summary(Duration::from_secs(75)),
            "Received 1.2 MiB in 3 objects in 1:15."
        );
        let d = Reading {
            delta_parts: 1,
            delta_parts_total: 2,
            delta_bytes_total: 4096,
            bytes: 2048,
            ..r
        };
        assert_eq!(
            d.render(),
            "Receiving: 3/40 objects, 1/2 delta parts, 2.0 KiB of 4.0 KiB"
        );
        assert_eq!(
            d.summary(Duration::from_secs(2)),
            "Received 2.0 KiB in 3 objects and 1 delta parts in 0:02."
        );
    }

    #[test]
    fn log_lines_come_once_per_interval_and_not_at_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let i = Duration::from_secs(2);
        assert!(
            !log_line_due(t0, None, t0 + s, i),
            "not in the first interval"
        );
        assert!(log_line_due(t0, None, t0 + 2 * s, i));
        assert!(!log_line_due(t0, Some(t0 + 2 * s), t0 + 3 * s, i));
        assert!(log_line_due(t0, Some(t0 + 2 * s), t0 + 4 * s, i));
    }

    #[test]
    fn rate_is_over_the_window_and_eta_from_objects_or_delta_bytes() {
        let mut e = Estimator::default();
        // One reading, or two a moment apart: no rate yet.
        assert_eq!(e.push(0.0, &objects(0, 100, 0)), Estimate::default());
        assert_eq!(e.push(0.2, &objects(1, 100, 1000)), Estimate::default());
        // 2 s in: 20 objects and 200 kB: 100 kB/s, 10 objects/s, 80 left.
        let est = e.push(2.0, &objects(20, 100, 200_000));
        assert_eq!(est.rate, Some(100_000.0));
        assert_eq!(est.eta, Some(8));
        // Far on, only the last RATE_WINDOW counts: 10 s of 50 kB/s.
        e.push(20.0, &objects(50, 100, 1_000_000));
        let est = e.push(30.0, &objects(60, 100, 1_500_000));
        assert_eq!(est.rate, Some(50_000.0));
        assert_eq!(est.eta, Some(40), "40 objects at one a second");
        // A delta: bytes left over the byte rate, whatever the parts.
        let mut e = Estimator::default();
        let delta = |parts, bytes| Reading {
            delta_parts: parts,
            delta_parts_total: 4,
            delta_bytes_total: 1_000_000,
            bytes,
            ..Default::default()
        };
        e.push(0.0, &delta(0, 0));
        let est = e.push(4.0, &delta(1, 400_000));
        assert_eq!(est.rate, Some(100_000.0));
        assert_eq!(est.eta, Some(6));
        // Nothing moving: no estimate; nothing left: zero.
        assert_eq!(eta_secs(10, 0.0), None);
        assert_eq!(eta_secs(0, 0.0), Some(0));
        assert_eq!(eta_secs(10, 3.0), Some(4), "rounded up");
    }

    #[test]
    fn clocks_and_plain_and_terminal_lines() {
        assert_eq!(clock(7), "0:07");
        assert_eq!(clock(750), "12:30");
        assert_eq!(clock(3723), "1:02:03");
        let r = objects(10, 40, 1 << 20);
        let e = Estimate {
            rate: Some(102_400.0),
            eta: Some(12),
        };
        assert_eq!(
            plain_line(&r, &e),
            "Receiving: 10/40 objects, 1.0 MiB, 100.0 KiB/s, 0:12 left"
        );
        assert_eq!(
            plain_line(&r, &Estimate::default()),
            "Receiving: 10/40 objects, 1.0 MiB"
        );
        assert_eq!(
            terminal_line(&r, &e, 200),
            "[#####               ]  25% Receiving: 10/40 objects, 1.0 MiB, 100.0 KiB/s, 0:12 left"
        );
        assert_eq!(terminal_line(&r, &e, 10), "[#####    ");
        // No total yet: no bar.
        assert_eq!(
            terminal_line(&objects(0, 0, 0), &Estimate::default(), 80),
            "Receiving: 0/0 objects, 0 B"
        );
    }

    #[test]
    fn counts_show_done_of_total_with_a_bar_only_on_a_terminal() {
        let t = Duration::from_secs(12);
        assert_eq!(
            count_line("files", 400, 1000, t, false),
            "400/1000 files, 0:12"
        );
        assert_eq!(
            count_line("files", 400, 1000, t, true),
            "[########            ]  40% 400/1000 files, 0:12"
        );
        assert_eq!(count_line("files", 0, 0, t, true), "0/0 files, 0:12");
        let v: serde_json::Value = serde_json::from_str(&count_json(
            "commit",
            5,
            5,
            Duration::from_millis(1500),
            true,
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"stage": "commit", "done": 5, "total": 5,
                "elapsed_seconds": 1.5, "finished": true})
        );
    }

    #[test]
    fn json_lines_carry_stage_done_total_and_bytes() {
        let r = objects(10, 40, 5000);
        let e = Estimate {
            rate: Some(1234.4),
            eta: Some(3),
        };
        let v: serde_json::Value = serde_json::from_str(&json_line(
            "pull",
            &r,
            &e,
            Duration::from_millis(2500),
            false,
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "stage": "pull", "done": 10, "total": 40, "unit": "objects",
                "bytes": 5000, "bytes_total": null,
                "objects": 10, "objects_total": 40,
                "delta_parts": 0, "delta_parts_total": 0,
                "bytes_per_second": 1234, "eta_seconds": 3,
                "elapsed_seconds": 2.5, "finished": false,
            })
        );
        // A delta counts parts and knows its bytes; never fewer in all than
        // already arrived (objects fetched beside the delta count too).
        let d = Reading {
            delta_parts: 2,
            delta_parts_total: 2,
            delta_bytes_total: 4000,
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&json_line(
            "pull",
            &d,
            &Estimate::default(),
            Duration::ZERO,
            true,
        ))
        .unwrap();
        assert_eq!(
            (&v["done"], &v["total"], &v["unit"]),
            (&2.into(), &2.into(), &"delta-parts".into())
        );
        assert_eq!(v["bytes_total"], 5000);
        assert_eq!(v["bytes_per_second"], serde_json::Value::Null);
        assert_eq!(v["finished"], true);
        // No line breaks inside a line, whatever the text.
        let s = step_json("compose", "a\nb", 3, Duration::from_secs(1));
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"stage": "compose", "step": "a\nb", "done": 3,
                "total": null, "elapsed_seconds": 1.0})
        );
        assert_eq!(
            step_line("Committing", Duration::from_secs(61)),
            "[1:01] Committing"
        );
    }
}
