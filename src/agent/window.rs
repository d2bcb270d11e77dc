//! Maintenance windows in local time. A window opens on each of its days at
//! its start time on the wall clock of the host's time zone and stays open
//! for its length of *elapsed* time, so a 2h window is 2 hours long also on
//! the nights the clocks change. A start time that does not exist that day
//! (skipped by a spring-forward change) opens at the same offset after the
//! gap (02:30 -> 03:30); one that occurs twice (fall back) opens at the
//! first. A window may run past midnight into the next day.
//!
//! Pure: the time zone and "now" are arguments.

use std::time::Duration;

use anyhow::{Context, Result};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

use super::config::Window;

/// Where `w` opens on the local date of `day` (its weekday may not be one of
/// `w`'s days; callers check).
fn opening_on(w: &Window, day: jiff::civil::Date, tz: &TimeZone) -> Result<Timestamp> {
    let z = day
        .to_datetime(w.start)
        .to_zoned(tz.clone())
        .with_context(|| format!("placing {} {} in the local time zone", day, w.start))?;
    Ok(z.timestamp())
}

fn closing(open: Timestamp, w: &Window) -> Result<Timestamp> {
    let len = jiff::SignedDuration::try_from(w.length).context("window length")?;
    open.checked_add(len).context("window end out of range")
}

/// Openings of `w` on local dates from `from` for `days` days, in order.
fn openings(
    w: &Window,
    from: jiff::civil::Date,
    days: i64,
    tz: &TimeZone,
) -> Result<Vec<Timestamp>> {
    let mut v = Vec::new();
    for i in 0..days {
        let d = from.checked_add(i.days()).context("date out of range")?;
        if w.days.contains(&d.weekday()) {
            v.push(opening_on(w, d, tz)?);
        }
    }
    Ok(v)
}

/// Days to look back so that a window opened earlier and still open is
/// seen: its length in days, one more for the date change, one for DST.
fn lookback(w: &Window) -> i64 {
    (w.length.as_secs() / 86400) as i64 + 2
}

/// The window that is open at `now`, with its closing time, if any.
pub fn open_at(windows: &[Window], now: Timestamp, tz: &TimeZone) -> Result<Option<Timestamp>> {
    let today = now.to_zoned(tz.clone()).date();
    let mut until: Option<Timestamp> = None;
    for w in windows {
        let from = today
            .checked_sub(lookback(w).days())
            .context("date out of range")?;
        for open in openings(w, from, lookback(w) + 1, tz)? {
            let close = closing(open, w)?;
            if open <= now && now < close {
                until = Some(until.map_or(close, |u| u.max(close)));
            }
        }
    }
    Ok(until)
}

/// The next time a window opens after `now` (now itself when one is open).
pub fn next_opening(
    windows: &[Window],
    now: Timestamp,
    tz: &TimeZone,
) -> Result<Option<Timestamp>> {
    if open_at(windows, now, tz)?.is_some() {
        return Ok(Some(now));
    }
    let today = now.to_zoned(tz.clone()).date();
    let mut best: Option<Timestamp> = None;
    for w in windows {
        for open in openings(w, today, 9, tz)? {
            if open > now {
                best = Some(best.map_or(open, |b| b.min(open)));
            }
        }
    }
    Ok(best)
}

/// A timestamp shown in local time, for the journal.
pub fn local(t: Timestamp, tz: &TimeZone) -> String {
    let z: Zoned = t.to_zoned(tz.clone());
    z.strftime("%a %Y-%m-%d %H:%M %Z").to_string()
}

/// Elapsed time until `later`, zero when it is past.
pub fn until(now: Timestamp, later: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Time, Weekday};

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).expect("tzdata installed (scripts/install-deps.sh)")
    }

    /// A local wall-clock time in `tz` (the earlier one when ambiguous).
    fn at(tz: &TimeZone, s: &str) -> Timestamp {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp()
    }

    fn w(days: &[Weekday], h: i8, m: i8, len_min: u64) -> Window {
        Window {
            days: days.to_vec(),
            start: Time::new(h, m, 0, 0).unwrap(),
            length: Duration::from_secs(len_min * 60),
        }
    }

    #[test]
    fn inside_and_outside_a_plain_window() {
        let berlin = tz("Europe/Berlin");
        // 2025-06-04 is a Wednesday.
        let ws = [w(&[Weekday::Wednesday], 4, 0, 60)];
        let inside = at(&berlin, "2025-06-04T04:30");
        assert_eq!(
            open_at(&ws, inside, &berlin).unwrap(),
            Some(at(&berlin, "2025-06-04T05:00"))
        );
        assert_eq!(
            open_at(&ws, at(&berlin, "2025-06-04T05:00"), &berlin).unwrap(),
            None
        );
        assert_eq!(
            open_at(&ws, at(&berlin, "2025-06-04T03:59"), &berlin).unwrap(),
            None
        );
        // Thursday: next is a week later.
        assert_eq!(
            next_opening(&ws, at(&berlin, "2025-06-05T04:30"), &berlin).unwrap(),
            Some(at(&berlin, "2025-06-11T04:00"))
        );
        assert_eq!(next_opening(&ws, inside, &berlin).unwrap(), Some(inside));
    }

    #[test]
    fn a_window_crossing_midnight_is_open_after_midnight_on_the_next_day() {
        let ny = tz("America/New_York");
        // Saturday 2025-06-07 23:00 for 3 hours: until Sunday 02:00.
        let ws = [w(&[Weekday::Saturday], 23, 0, 180)];
        assert!(open_at(&ws, at(&ny, "2025-06-08T01:30"), &ny)
            .unwrap()
            .is_some());
        assert!(open_at(&ws, at(&ny, "2025-06-07T23:00"), &ny)
            .unwrap()
            .is_some());
        assert!(open_at(&ws, at(&ny, "2025-06-08T02:00"), &ny)
            .unwrap()
            .is_none());
        // Sunday's own 23:00 is no opening (only Saturday is listed).
        assert!(open_at(&ws, at(&ny, "2025-06-08T23:30"), &ny)
            .unwrap()
            .is_none());
        assert_eq!(
            next_opening(&ws, at(&ny, "2025-06-08T03:00"), &ny).unwrap(),
            Some(at(&ny, "2025-06-14T23:00"))
        );
    }

    #[test]
    fn spring_forward_a_skipped_start_opens_after_the_gap() {
        let berlin = tz("Europe/Berlin");
        // 2025-03-30 (Sunday): 02:00 CET jumps to 03:00 CEST.
        let ws = [w(&[Weekday::Sunday], 2, 30, 60)];
        let open = next_opening(&ws, at(&berlin, "2025-03-29T12:00"), &berlin)
            .unwrap()
            .unwrap();
        assert_eq!(open, "2025-03-30T01:30:00Z".parse().unwrap(), "03:30 CEST");
        // 60 elapsed minutes: open until 04:30 CEST.
        assert_eq!(
            open_at(&ws, open, &berlin).unwrap(),
            Some("2025-03-30T02:30:00Z".parse().unwrap())
        );
        // A window 01:00-04:00 wall clock that night is 2 elapsed hours if
        // the length were wall time; here it is 3 elapsed hours: to 05:00 CEST.
        let ws = [w(&[Weekday::Sunday], 1, 0, 180)];
        assert_eq!(
            open_at(&ws, at(&berlin, "2025-03-30T04:30"), &berlin).unwrap(),
            Some(at(&berlin, "2025-03-30T05:00"))
        );
    }

    #[test]
    fn fall_back_a_repeated_start_opens_at_its_first_occurrence() {
        let ny = tz("America/New_York");
        // 2025-11-02 (Sunday): 02:00 EDT falls back to 01:00 EST.
        let ws = [w(&[Weekday::Sunday], 1, 30, 60)];
        let open = next_opening(&ws, at(&ny, "2025-11-01T12:00"), &ny)
            .unwrap()
            .unwrap();
        assert_eq!(open, "2025-11-02T05:30:00Z".parse().unwrap(), "01:30 EDT");
        // One elapsed hour later it is 01:30 again (EST), and closed.
        let close = open_at(&ws, open, &ny).unwrap().unwrap();
        assert_eq!(close, "2025-11-02T06:30:00Z".parse().unwrap());
        assert!(open_at(&ws, close, &ny).unwrap().is_none());
        // A window crossing midnight into the fall-back night.
        let ws = [w(&[Weekday::Saturday], 23, 0, 240)];
        // Sat 23:00 EDT + 4h elapsed = 02:00 EST... = 07:00Z.
        assert_eq!(
            open_at(&ws, "2025-11-02T06:59:00Z".parse().unwrap(), &ny).unwrap(),
            Some("2025-11-02T07:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn several_windows_the_earliest_next_and_the_latest_close() {
        let berlin = tz("Europe/Berlin");
        let ws = [
            w(&[Weekday::Monday, Weekday::Friday], 22, 0, 60),
            w(&[Weekday::Tuesday], 3, 0, 30),
            w(&[Weekday::Monday], 22, 30, 120),
        ];
        // 2025-06-02 is a Monday.
        assert_eq!(
            open_at(&ws, at(&berlin, "2025-06-02T22:45"), &berlin).unwrap(),
            Some(at(&berlin, "2025-06-03T00:30"))
        );
        assert_eq!(
            next_opening(&ws, at(&berlin, "2025-06-03T01:00"), &berlin).unwrap(),
            Some(at(&berlin, "2025-06-03T03:00"))
        );
        assert_eq!(
            next_opening(&[], at(&berlin, "2025-06-03T01:00"), &berlin).unwrap(),
            None
        );
    }
}
