//! Debian version ordering (deb-version(7)), so that package diffs can tell an
//! upgrade from a downgrade without running `dpkg --compare-versions` once per
//! package.

use std::cmp::Ordering;

/// A version split into its three parts. `epoch` defaults to 0, `revision`
/// to the empty string (which sorts like "0").
#[derive(Debug, PartialEq, Eq)]
struct Parts<'a> {
    epoch: u64,
    upstream: &'a str,
    revision: &'a str,
}

fn split(v: &str) -> Parts<'_> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    // The revision is whatever follows the last hyphen.
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    Parts {
        epoch,
        upstream,
        revision,
    }
}

/// Weight of one character in the non-digit parts: `~` before everything
/// (even the end of the string), then the end, then letters, then the rest.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// Compare one part (upstream or revision) by the alternating
/// non-digit/digit rule.
fn cmp_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, character by character.
        loop {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (wa, wb) = (weight(ca), weight(cb));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        // Digit run, numerically; leading zeros do not count.
        let start_a = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let start_b = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let da = trim_zeros(&a[start_a..i]);
        let db = trim_zeros(&b[start_b..j]);
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let first = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[first..]
}

/// Order two Debian version strings the way dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (pa, pb) = (split(a), split(b));
    pa.epoch
        .cmp(&pb.epoch)
        .then_with(|| cmp_part(pa.upstream, pb.upstream))
        .then_with(|| cmp_part(pa.revision, pb.revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn splits_epoch_upstream_revision() {
        assert_eq!(
            split("1:2.3-4-5"),
            Parts {
                epoch: 1,
                upstream: "2.3-4",
                revision: "5"
            }
        );
        assert_eq!(
            split("252.39-1~deb12u2"),
            Parts {
                epoch: 0,
                upstream: "252.39",
                revision: "1~deb12u2"
            }
        );
        assert_eq!(split("1.0").revision, "");
    }

    #[test]
    fn orders_like_dpkg() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1:0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("252.38-1~deb12u1", "252.39-1~deb12u2", Less),
            ("6.1.0-37", "6.1.0-9", Greater),
            ("1.001", "1.1", Equal),
            ("2.36-9+deb12u10", "2.36-9+deb12u9", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.0-0", "1.0", Equal),
            ("a", "+", Less),
            ("1.2.3", "1.2.3.0", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// Cross-check against dpkg itself where it is installed, over a set of
    /// awkward pairs.
    #[test]
    fn agrees_with_dpkg_compare_versions() {
        // dpkg is on every Debian system this is built on: its absence is a
        // broken test environment, not a reason to skip the comparison.
        let version = std::process::Command::new("dpkg")
            .arg("--version")
            .output()
            .expect("running dpkg --version (dpkg is part of every Debian system)");
        assert!(version.status.success(), "dpkg --version failed");
        let vs = [
            "1.0",
            "1.0~",
            "1.0~~a",
            "1.0+",
            "1.0.",
            "1:1",
            "1.0a~b",
            "10",
            "9a",
            "1.0-1.1",
            "1.0-1~bpo",
            "2:0",
            "0.0001",
            "1.0++",
            "1.0+~",
        ];
        for a in vs {
            for b in vs {
                let ours = compare(a, b);
                let op = match ours {
                    Less => "lt",
                    Equal => "eq",
                    Greater => "gt",
                };
                let ok = std::process::Command::new("dpkg")
                    .args(["--compare-versions", a, op, b])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "dpkg disagrees: {a} {op} {b}");
            }
        }
    }
}
