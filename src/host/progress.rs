//! What a pull prints while it runs: objects and bytes received so far,
//! read from libostree's `AsyncProgress`. On a terminal one line is
//! rewritten in place; otherwise (a journal, a log file, a test) a line is
//! printed every few seconds, so a long download shows it is alive without
//! flooding the log.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::util::human_bytes;

/// How often a line is printed when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(2);

/// One reading of a pull's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Objects fetched and requested (loose objects and metadata).
    pub fetched: u32,
    pub requested: u32,
    /// Static delta parts fetched and to fetch.
    pub delta_parts: u32,
    pub delta_parts_total: u32,
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
            bytes: p.uint64("bytes-transferred"),
        }
    }

    /// `Receiving: 3/40 objects, 1/2 delta parts, 1.2 MiB` (the delta part
    /// only when the pull uses one).
    pub fn render(&self) -> String {
        let mut s = format!("{}/{} objects", self.fetched, self.requested);
        if self.delta_parts_total > 0 {
            s.push_str(&format!(
                ", {}/{} delta parts",
                self.delta_parts, self.delta_parts_total
            ));
        }
        format!("Receiving: {s}, {}", human_bytes(self.bytes))
    }

    /// The line printed once the pull is over.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Received {} in {} objects",
            human_bytes(self.bytes),
            self.fetched
        );
        if self.delta_parts_total > 0 {
            s.push_str(&format!(" and {} delta parts", self.delta_parts));
        }
        s.push('.');
        s
    }
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

/// Prints a pull's progress on stderr; `finish` prints the summary.
pub struct Printer {
    progress: ostree::AsyncProgress,
    state: Rc<RefCell<State>>,
}

struct State {
    terminal: bool,
    start: Instant,
    last: Option<Instant>,
    latest: Reading,
    rewrote: bool,
}

impl Printer {
    pub fn new() -> Printer {
        let progress = ostree::AsyncProgress::new();
        let state = Rc::new(RefCell::new(State {
            terminal: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            latest: Reading::default(),
            rewrote: false,
        }));
        let s = state.clone();
        // libostree calls this from the pull's own main loop, on this thread,
        // about once a second.
        progress.connect_changed(move |p| {
            let reading = Reading::from_progress(p);
            let mut st = s.borrow_mut();
            st.latest = reading;
            let now = Instant::now();
            let mut err = std::io::stderr().lock();
            if st.terminal {
                let _ = write!(err, "\r\x1b[K{}", reading.render());
                let _ = err.flush();
                st.rewrote = true;
            } else if log_line_due(st.start, st.last, now, LOG_INTERVAL) {
                let _ = writeln!(err, "{}", reading.render());
                st.last = Some(now);
            }
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
        let mut err = std::io::stderr().lock();
        if st.rewrote {
            let _ = write!(err, "\r\x1b[K");
        }
        // A pull from a local (file://) repository imports objects and
        // receives nothing over a network: no summary to give.
        if succeeded && reading != Reading::default() {
            let _ = writeln!(err, "{}", reading.summary());
        }
    }
}

impl Default for Printer {
    fn default() -> Self {
        Printer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_objects_and_bytes_and_delta_parts_only_when_used() {
        let r = Reading {
            fetched: 3,
            requested: 40,
            bytes: 1_300_000,
            ..Default::default()
        };
        assert_eq!(r.render(), "Receiving: 3/40 objects, 1.2 MiB");
        assert_eq!(r.summary(), "Received 1.2 MiB in 3 objects.");
        let d = Reading {
            delta_parts: 1,
            delta_parts_total: 2,
            bytes: 2048,
            ..r
        };
        assert_eq!(
            d.render(),
            "Receiving: 3/40 objects, 1/2 delta parts, 2.0 KiB"
        );
        assert_eq!(
            d.summary(),
            "Received 2.0 KiB in 3 objects and 1 delta parts."
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
}
