//! A model of how systemd-boot 252 (Debian 12) picks the entry it boots when
//! nobody touches the keyboard, written from its documented and observed
//! rules so that the publishing code can be checked against it:
//!
//! 1. Type #1 entries are the `*.conf` files in `/loader/entries` whose name
//!    does not start with `.` or `auto-`; an entry whose `linux` (or `efi`)
//!    file does not exist is dropped.
//! 2. The entry id is the file name, lower-cased, *counter and `.conf`
//!    included*. The counter is the last `+LEFT[-DONE]` right before `.conf`.
//! 3. Sorting: entries with `LEFT == 0` ("bad") go last; entries with a
//!    `sort-key` go before those without; with both having one: `sort-key`
//!    ascending, then `machine-id`, then `version` *descending*
//!    (`strverscmp_improved`); then the id descending; then more tries left
//!    first, fewer tries done first.
//! 4. Default: the EFI variables `LoaderEntryOneShot`/`LoaderEntryDefault`
//!    win (hostctl never sets them; see docs/boot.md); otherwise the *first*
//!    entry, in that order, whose id matches `default` of `loader.conf`
//!    (a case-insensitive glob with `*`, `?`, `[…]`); otherwise the first entry.
//!    A glob that only matches bad entries still selects a bad one.
//! 5. systemd-boot then renames the chosen entry `+L-D` → `+(L-1)-(D+1)`
//!    before booting it (never below 0), and `systemd-bless-boot` renames it
//!    to the counter-less name once `boot-complete.target` is reached.

use std::cmp::Ordering;

use anyhow::{bail, Context, Result};

use super::bls::BlsEntry;
use super::esp::{EspFs, ENTRIES_DIR, LOADER_CONF};

/// Boot-try counter in an entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u64,
    pub done: u64,
}

impl Counter {
    pub fn is_bad(&self) -> bool {
        self.left == 0
    }
}

/// Splits `NAME[+LEFT[-DONE]].conf` into `NAME` and the counter, the way
/// systemd-boot does: the counter must sit right before `.conf`, otherwise the
/// whole stem is the name and there is no counting.
pub fn split_counter(file_name: &str) -> Option<(&str, Option<Counter>)> {
    let stem = file_name.strip_suffix(".conf")?;
    let Some(plus) = stem.rfind('+') else {
        return Some((stem, None));
    };
    let (name, tail) = (&stem[..plus], &stem[plus + 1..]);
    let (left, done) = match tail.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (tail, None),
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let counter = match (num(left), done.map(num)) {
        (Some(left), None) => Some(Counter { left, done: 0 }),
        (Some(left), Some(Some(done))) => Some(Counter { left, done }),
        _ => None,
    };
    match counter {
        Some(c) => Some((name, Some(c))),
        None => Some((stem, None)),
    }
}

/// An entry as systemd-boot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdEntry {
    pub file_name: String,
    pub id: String,
    pub title: Option<String>,
    pub sort_key: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub linux: Option<String>,
    pub initrds: Vec<String>,
    pub options: String,
    pub counter: Option<Counter>,
}

impl SdEntry {
    pub fn parse(file_name: &str, text: &str) -> SdEntry {
        let bls = BlsEntry::parse(text);
        let owned = |k: &str| bls.get(k).map(str::to_string);
        SdEntry {
            file_name: file_name.to_string(),
            id: file_name.to_lowercase(),
            title: owned("title"),
            sort_key: owned("sort-key"),
            version: owned("version"),
            machine_id: owned("machine-id"),
            linux: owned("linux").or_else(|| owned("efi")),
            initrds: bls
                .get_all("initrd")
                .into_iter()
                .map(String::from)
                .collect(),
            options: bls.options(),
            counter: split_counter(file_name).and_then(|(_, c)| c),
        }
    }

    fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.is_bad())
    }
}

/// systemd-boot's entry order (rule 3 above); `Less` sorts first.
pub fn compare(a: &SdEntry, b: &SdEntry) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(ka), Some(kb)) => ka
                .cmp(kb)
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| {
                    verscmp(
                        a.version.as_deref().unwrap_or(""),
                        b.version.as_deref().unwrap_or(""),
                    )
                    .reverse()
                }),
            _ => Ordering::Equal,
        })
        .then_with(|| verscmp(&a.id, &b.id).reverse())
        .then_with(|| match (a.counter, b.counter) {
            (Some(ca), Some(cb)) => cb.left.cmp(&ca.left).then(ca.done.cmp(&cb.done)),
            _ => Ordering::Equal,
        })
}

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// systemd's `strverscmp_improved`: segments of digits or letters, each
/// optionally prefixed by `~` (oldest), `-`, `^` or `.`; other characters
/// only separate segments. `Greater` means `a` is newer.
pub fn verscmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !is_version_char(a[i]) {
            i += 1;
        }
        while j < b.len() && !is_version_char(b[j]) {
            j += 1;
        }
        // A '~' segment is older than anything, even the end of the string.
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let o = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if o != Ordering::Equal {
                return o;
            }
            i += 1;
            j += 1;
        }
        if i >= a.len() || j >= b.len() {
            return a[i.min(a.len())..].cmp(&b[j.min(b.len())..]);
        }
        // A segment carrying one of these prefixes is older than one without.
        for sep in [b'-', b'^', b'.'] {
            if a[i] == sep || b[j] == sep {
                let o = (a[i] != sep).cmp(&(b[j] != sep));
                if o != Ordering::Equal {
                    return o;
                }
                i += 1;
                j += 1;
            }
        }
        let digit_a = at(a, i).is_ascii_digit();
        let digit_b = at(b, j).is_ascii_digit();
        let (ea, eb);
        if digit_a || digit_b {
            let span = |s: &[u8], k: usize| {
                k + s[k.min(s.len())..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count()
            };
            ea = span(a, i);
            eb = span(b, j);
            // A numeric segment is newer than an alphabetic (empty numeric) one.
            let o = (ea != i).cmp(&(eb != j));
            if o != Ordering::Equal {
                return o;
            }
            let na = trim_zeros(&a[i..ea]);
            let nb = trim_zeros(&b[j..eb]);
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let span = |s: &[u8], k: usize| {
                k + s[k.min(s.len())..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .count()
            };
            ea = span(a, i);
            eb = span(b, j);
            let (sa, sb) = (&a[i..ea], &b[j..eb]);
            let n = sa.len().min(sb.len());
            let o = sa[..n].cmp(&sb[..n]).then(sa.len().cmp(&sb.len()));
            if o != Ordering::Equal {
                return o;
            }
        }
        if ea == i && eb == j {
            // Only separators we do not treat as segments (e.g. "-~"): step on
            // so the loop always advances.
            i += 1;
            j += 1;
        } else {
            i = ea;
            j = eb;
        }
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

/// The subset of glob systemd-boot supports in `default`: `*`, `?`, `[a-z…]`
/// (no negation, no classes), matched case-insensitively.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let s: Vec<char> = s.to_lowercase().chars().collect();
    glob_at(&p, &s)
}

fn glob_at(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|k| glob_at(&p[1..], &s[k..])),
        Some('?') => !s.is_empty() && glob_at(&p[1..], &s[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(1).position(|&c| c == ']').map(|k| k + 1) else {
                return s.first() == Some(&'[') && glob_at(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let set = &p[1..close];
            let mut k = 0;
            let mut hit = false;
            while k < set.len() {
                if k + 2 < set.len() && set[k + 1] == '-' {
                    hit |= set[k] <= c && c <= set[k + 2];
                    k += 3;
                } else {
                    hit |= set[k] == c;
                    k += 1;
                }
            }
            hit && glob_at(&p[close + 1..], &s[1..])
        }
        Some(&lit) => s.first() == Some(&lit) && glob_at(&p[1..], &s[1..]),
    }
}

/// `default` from a loader.conf text.
pub fn loader_default(loader_conf: &str) -> Option<String> {
    BlsEntry::parse(loader_conf)
        .get("default")
        .map(str::to_string)
}

/// Sorts `entries` and returns the index systemd-boot would boot by default.
pub fn select_default(entries: &mut [SdEntry], default_glob: Option<&str>) -> Option<usize> {
    entries.sort_by(compare);
    if entries.is_empty() {
        return None;
    }
    if let Some(glob) = default_glob {
        if let Some(i) = entries.iter().position(|e| glob_match(glob, &e.id)) {
            return Some(i);
        }
    }
    Some(0)
}

/// What systemd-boot would do with an ESP, and whether it can work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBoot {
    pub entry: SdEntry,
    /// Files the entry names that are missing (its `initrd`s; a missing
    /// `linux` already removed the entry). Empty means bootable as far as the
    /// ESP goes.
    pub missing: Vec<String>,
}

fn esp_rel(path: &str) -> String {
    path.trim_start_matches(['/', '\\']).replace('\\', "/")
}

/// Reads an ESP and predicts the entry systemd-boot boots by default,
/// assuming no `LoaderEntryDefault`/`LoaderEntryOneShot` EFI variable.
pub fn default_boot(esp: &dyn EspFs) -> Result<Option<DefaultBoot>> {
    let conf = esp.read_file(LOADER_CONF)?;
    let glob = match &conf {
        Some(bytes) => loader_default(&String::from_utf8_lossy(bytes)),
        None => None,
    };
    if glob.as_deref().is_some_and(|g| g.starts_with('@')) {
        bail!(
            "{}: default {:?} depends on EFI variables; cannot predict",
            esp.describe(),
            glob.unwrap()
        );
    }
    let mut entries = Vec::new();
    for de in esp.list_dir(ENTRIES_DIR)?.unwrap_or_default() {
        let lower = de.name.to_lowercase();
        if de.is_dir || de.name.starts_with('.') || lower.starts_with("auto-") {
            continue;
        }
        if !lower.ends_with(".conf") {
            continue;
        }
        let path = format!("{ENTRIES_DIR}/{}", de.name);
        let text = esp
            .read_file(&path)?
            .with_context(|| format!("{}: {path} vanished while reading", esp.describe()))?;
        let e = SdEntry::parse(&de.name, &String::from_utf8_lossy(&text));
        let Some(linux) = &e.linux else { continue };
        if esp.file_size(&esp_rel(linux))?.is_none() {
            continue;
        }
        entries.push(e);
    }
    let Some(i) = select_default(&mut entries, glob.as_deref()) else {
        return Ok(None);
    };
    let entry = entries.swap_remove(i);
    let mut missing = Vec::new();
    for initrd in &entry.initrds {
        if esp.file_size(&esp_rel(initrd))?.is_none() {
            missing.push(initrd.clone());
        }
    }
    Ok(Some(DefaultBoot { entry, missing }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_like_systemd_boot() {
        let c = |l, d| Some(Counter { left: l, done: d });
        assert_eq!(split_counter("a+3.conf"), Some(("a", c(3, 0))));
        assert_eq!(split_counter("a+2-1.conf"), Some(("a", c(2, 1))));
        assert_eq!(split_counter("a+0-3.conf"), Some(("a", c(0, 3))));
        assert_eq!(split_counter("a+b+1.conf"), Some(("a+b", c(1, 0))));
        assert_eq!(split_counter("a.conf"), Some(("a", None)));
        // Counter not right before the suffix, or malformed: no counting.
        assert_eq!(split_counter("a+3x.conf"), Some(("a+3x", None)));
        assert_eq!(split_counter("a+-1.conf"), Some(("a+-1", None)));
        assert_eq!(split_counter("a+3"), None);
    }

    #[test]
    fn verscmp_matches_systemd_examples() {
        use Ordering::*;
        let cases = [
            ("1", "2", Less),
            ("10", "9", Greater),
            ("007", "7", Equal),
            ("1.0", "1", Greater),
            ("1~rc1", "1", Less),
            ("1-1", "1", Greater),
            ("1^p", "1-1", Greater),
            ("123a", "123.a", Greater),
            ("abc", "abcde", Less),
            ("a", "1", Less),
            ("", "1", Less),
            ("5.10.0", "5.9.9", Greater),
            ("123.a-1", "123^post1", Greater),
            ("123.1-1", "123.a-1", Greater),
            ("123a-1", "123.1-1", Greater),
            ("123-1", "123-a.1", Greater),
            ("hostctl-b+3.conf", "hostctl-a.conf", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(verscmp(a, b), want, "{a} vs {b}");
            assert_eq!(verscmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("hostctl-*", "hostctl-debian-x+3.conf"));
        assert!(glob_match("HOSTCTL-*", "hostctl-a.conf"));
        assert!(!glob_match("hostctl-*", "debian-6.1.conf"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[a-c]x", "dx"));
    }

    fn e(name: &str, body: &str) -> SdEntry {
        SdEntry::parse(name, body)
    }

    #[test]
    fn bad_entries_sort_last_and_version_descends() {
        let mut v = vec![
            e(
                "hostctl-a+0-3.conf",
                "sort-key hostctl\nversion 9\nlinux /k",
            ),
            e("hostctl-b.conf", "sort-key hostctl\nversion 7\nlinux /k"),
            e(
                "hostctl-c+2-1.conf",
                "sort-key hostctl\nversion 8\nlinux /k",
            ),
            e("other.conf", "version 100\nlinux /k"),
        ];
        let i = select_default(&mut v, Some("hostctl-*")).unwrap();
        let order: Vec<_> = v.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(
            order,
            [
                "hostctl-c+2-1.conf",
                "hostctl-b.conf",
                "other.conf",
                "hostctl-a+0-3.conf"
            ]
        );
        assert_eq!(v[i].file_name, "hostctl-c+2-1.conf");
    }

    #[test]
    fn glob_matching_only_bad_entries_still_selects_one() {
        let mut v = vec![
            e("other.conf", "linux /k"),
            e(
                "hostctl-a+0-3.conf",
                "sort-key hostctl\nversion 1\nlinux /k",
            ),
        ];
        let i = select_default(&mut v, Some("hostctl-*")).unwrap();
        assert_eq!(v[i].file_name, "hostctl-a+0-3.conf");
        let i = select_default(&mut v, Some("nomatch*")).unwrap();
        assert_eq!(v[i].file_name, "other.conf");
    }

    #[test]
    fn without_sort_key_ids_sort_descending() {
        let mut v = vec![e("a-1.conf", "linux /k"), e("a-10.conf", "linux /k")];
        let i = select_default(&mut v, None).unwrap();
        assert_eq!(v[i].file_name, "a-10.conf");
    }

    #[test]
    fn same_name_more_tries_left_first() {
        let a = e("x+1-2.conf", "linux /k");
        let b = e("x+1-2.conf", "linux /k");
        assert_eq!(compare(&a, &b), Ordering::Equal);
        let mut c = b.clone();
        c.counter = Some(Counter { left: 2, done: 1 });
        assert_eq!(compare(&c, &a), Ordering::Less);
    }
}
