//! A private apt: sources, configuration and state under the package cache
//! directory, never the build machine's own apt state. It resolves package
//! sets (which exact versions a compose would install) and feeds mmdebstrap
//! the same sources, so the resolved set is what ends up in the tree.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::compose::treefile::Treefile;
use crate::format::pkglist::Package;

/// One apt source, as a one-line `deb` entry once rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suite: String,
    pub signed_by: Option<String>,
}

/// Does `suite` belong to the release `want` (the release itself or its
/// `-updates`/`-security`/`-backports`-style companions)?
fn suite_matches(suite: &str, want: &str) -> bool {
    suite == want
        || suite
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('/'))
}

/// Parse one-line-style sources.list text (`deb [opts] URI SUITE COMP...`).
pub fn parse_sources_list(text: &str) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if kind != "deb" {
            continue;
        }
        let rest = rest.trim_start();
        let (opts, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (o, r) = r
                    .split_once(']')
                    .with_context(|| format!("line {}: unterminated [options]", i + 1))?;
                (o, r)
            }
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            bail!(
                "line {}: expected `deb URI SUITE COMPONENTS`: {line:?}",
                i + 1
            );
        };
        let signed_by = opts
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string);
        out.push(Source {
            uri: uri.to_string(),
            suite: suite.to_string(),
            signed_by,
        });
    }
    Ok(out)
}

/// Parse deb822-style `.sources` text.
pub fn parse_deb822(text: &str) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    // Stanzas are separated by blank lines; comment lines are dropped first so
    // that a commented-out line does not split or continue a field.
    let mut stanzas: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !stanzas.last().unwrap().is_empty() {
                stanzas.push(Vec::new());
            }
            continue;
        }
        let cur = stanzas.last_mut().unwrap();
        if line.starts_with(char::is_whitespace) {
            match cur.last_mut() {
                Some((_, v)) => {
                    v.push('\n');
                    v.push_str(line.trim());
                }
                None => bail!("continuation line without a field: {line:?}"),
            }
        } else {
            let (k, v) = line
                .split_once(':')
                .with_context(|| format!("expected `Field: value`: {line:?}"))?;
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    for st in stanzas.into_iter().filter(|s| !s.is_empty()) {
        let get = |k: &str| st.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("types")
            .unwrap_or("")
            .split_whitespace()
            .any(|t| t == "deb")
        {
            continue;
        }
        let signed_by = match get("signed-by") {
            Some(v) if v.contains('\n') || v.contains("BEGIN PGP") => {
                bail!("an inline Signed-By key is not supported; point Signed-By at a keyring file")
            }
            Some(v) => Some(v.to_string()),
            None => None,
        };
        for uri in get("uris").unwrap_or("").split_whitespace() {
            for suite in get("suites").unwrap_or("").split_whitespace() {
                out.push(Source {
                    uri: uri.to_string(),
                    suite: suite.to_string(),
                    signed_by: signed_by.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The build machine's apt sources (`/etc/apt/sources.list` and
/// `sources.list.d`), under the root `etc`.
pub fn host_sources(etc_apt: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.exists() {
        let text = std::fs::read_to_string(&main)
            .with_context(|| format!("reading {}", main.display()))?;
        out.extend(parse_sources_list(&text).with_context(|| main.display().to_string())?);
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let parse: fn(&str) -> Result<Vec<Source>> =
                match f.extension().and_then(|e| e.to_str()) {
                    Some("list") => parse_sources_list,
                    Some("sources") => parse_deb822,
                    _ => continue,
                };
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out.extend(parse(&text).with_context(|| f.display().to_string())?);
        }
    }
    Ok(out)
}

/// The sources a treefile composes from, as sources.list text: its `mirror`
/// for its `suite`, or else the build machine's sources for that release
/// (including its -updates and -security companions).
pub fn sources_for(tf: &Treefile, host: &[Source]) -> Result<String> {
    let keyring = tf.keyring.as_ref().map(|k| k.display().to_string());
    let sources: Vec<Source> = match &tf.mirror {
        Some(m) => vec![Source {
            uri: m.clone(),
            suite: tf.suite.clone(),
            signed_by: keyring,
        }],
        None => {
            let picked: Vec<Source> = host
                .iter()
                .filter(|s| suite_matches(&s.suite, &tf.suite))
                .map(|s| Source {
                    signed_by: keyring.clone().or_else(|| s.signed_by.clone()),
                    ..s.clone()
                })
                .collect();
            if picked.is_empty() {
                bail!(
                    "the build machine's apt sources have no entry for suite `{}`; set `mirror` in the treefile",
                    tf.suite
                );
            }
            picked
        }
    };
    let mut text = String::new();
    for s in sources {
        let opts = match &s.signed_by {
            Some(k) => format!("[signed-by={k}] "),
            None => String::new(),
        };
        let _ = writeln!(
            text,
            "deb {opts}{} {} {}",
            s.uri,
            s.suite,
            tf.components.join(" ")
        );
    }
    Ok(text)
}

/// mmdebstrap variants hostctl supports, and the apt patterns that select
/// their package sets (the same patterns mmdebstrap uses).
pub fn variant_patterns(variant: &str, suite: &str, arch: &str) -> Result<Vec<String>> {
    let narrow = |what: &str| {
        format!(
            "?narrow(?or(?archive(^{suite}$),?codename(^{suite}$)),?architecture({arch}),{what})"
        )
    };
    let prio = match variant {
        "essential" => None,
        "required" | "minbase" => Some("?priority(required)"),
        "important" => Some("?or(?priority(required),?priority(important))"),
        "standard" => Some("?or(?priority(required),?priority(important),?priority(standard))"),
        other => bail!(
            "unknown variant `{other}` (one of: essential, required, minbase, important, standard)"
        ),
    };
    let mut v = vec![narrow("?essential")];
    if let Some(p) = prio {
        v.push(narrow(p));
    }
    Ok(v)
}

/// Parse the `Inst` lines of `apt-get --simulate install`.
pub fn parse_simulation(out: &str) -> Result<Vec<Package>> {
    let mut pkgs = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let (name, rest) = rest
            .split_once(' ')
            .with_context(|| format!("unexpected apt output: {line:?}"))?;
        // An upgrade shows the installed version in brackets first.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once("] ").map(|(_, r)| r).unwrap_or(r),
            None => rest,
        };
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.rsplit_once(')'))
            .map(|(i, _)| i)
            .with_context(|| format!("unexpected apt output: {line:?}"))?;
        let version = inner.split_whitespace().next().unwrap_or_default();
        let arch = inner
            .rsplit_once('[')
            .and_then(|(_, a)| a.strip_suffix(']'))
            .with_context(|| format!("no architecture in apt output: {line:?}"))?;
        // Multi-arch names come as name:arch.
        let name = name.split(':').next().unwrap_or(name);
        pkgs.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
        });
    }
    pkgs.sort_by(|a, b| a.name.cmp(&b.name).then(a.arch.cmp(&b.arch)));
    pkgs.dedup();
    Ok(pkgs)
}

/// Turn apt's error output into a message naming what is wrong.
pub fn explain_apt_error(stderr: &str, sources: &str) -> String {
    let missing: BTreeSet<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("E: Unable to locate package "))
        .map(str::trim)
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.into_iter().collect();
        return format!(
            "package(s) not found: {} (sources:\n{})",
            names.join(", "),
            sources.trim_end()
        );
    }
    let no_candidate: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("E: Package '"))
        .filter_map(|l| l.split_once('\'').map(|(n, _)| n))
        .collect();
    if !no_candidate.is_empty() {
        return format!(
            "package(s) have no installable version: {}",
            no_candidate.join(", ")
        );
    }
    stderr.trim().to_string()
}

/// Private apt state for one set of sources.
pub struct PrivateApt {
    pub dir: PathBuf,
    pub archives: PathBuf,
    pub sources: String,
    pub arch: String,
    /// Held while this exists: apt's lists and the shared archive cache are
    /// one piece of state, and two composes sharing a cache directory would
    /// otherwise fail on apt's own locks or mix partial downloads.
    _lock: std::fs::File,
}

/// Exclusive lock on `cachedir`, waiting (and saying so) if another compose
/// holds it.
fn lock_cache(cachedir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = cachedir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "Waiting for another compose using the package cache {} to finish...",
            cachedir.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(f)
}

impl PrivateApt {
    /// Prepare (or reuse) the state directory for `sources` under `cachedir`.
    pub fn new(cachedir: &Path, sources: &str, arch: &str) -> Result<Self> {
        std::fs::create_dir_all(cachedir)
            .with_context(|| format!("creating {}", cachedir.display()))?;
        let lock = lock_cache(cachedir)?;
        let mut h = Sha256::new();
        h.update(sources.as_bytes());
        h.update(arch.as_bytes());
        let id = hex::encode(&h.finalize()[..8]);
        let dir = cachedir.join("apt").join(id);
        let archives = cachedir.join("archives");
        for d in [
            dir.join("etc/apt.conf.d"),
            dir.join("etc/preferences.d"),
            dir.join("etc/sources.list.d"),
            dir.join("state/lists/partial"),
            dir.join("cache"),
            dir.join("log"),
            archives.join("partial"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let write = |rel: &str, text: &str| -> Result<()> {
            let p = dir.join(rel);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write("etc/sources.list", sources)?;
        if !dir.join("state/status").exists() {
            write("state/status", "")?;
        }
        let d = dir.display();
        let conf = format!(
            "Dir::Etc \"{d}/etc\";\n\
             Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
             Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::Preferences \"{d}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
             Dir::Etc::Trusted \"/etc/apt/trusted.gpg\";\n\
             Dir::Etc::TrustedParts \"/etc/apt/trusted.gpg.d\";\n\
             Dir::State \"{d}/state\";\n\
             Dir::State::Status \"{d}/state/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Cache::Archives \"{archives}\";\n\
             Dir::Log \"{d}/log\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             Acquire::Languages \"none\";\n\
             pkgCacheGen::ForceEssential \",\";\n",
            archives = archives.display(),
        );
        write("apt.conf", &conf)?;
        Ok(Self {
            dir,
            archives,
            sources: sources.to_string(),
            arch: arch.to_string(),
            _lock: lock,
        })
    }

    fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.env("APT_CONFIG", self.dir.join("apt.conf"))
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// Refresh the package lists (cheap when the mirror is unchanged: apt
    /// only revalidates the Release files).
    pub fn update(&self) -> Result<()> {
        let out = self
            .apt_get()
            .args(["update", "-q", "-o", "APT::Update::Error-Mode=any"])
            .output()
            .context("running apt-get update")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E: ")) {
            bail!(
                "cannot fetch package lists (is the mirror reachable?) from:\n{}\napt-get update said: {}",
                self.sources.trim_end(),
                stderr.trim()
            );
        }
        Ok(())
    }

    /// The packages apt would install into an empty system for `selectors`
    /// (package names and patterns).
    pub fn simulate(&self, selectors: &[String]) -> Result<Vec<Package>> {
        let out = self
            .apt_get()
            .args(["install", "--simulate", "-q", "--yes"])
            .args(selectors)
            .output()
            .context("running apt-get install --simulate")?;
        if !out.status.success() {
            bail!(
                "resolving packages: {}",
                explain_apt_error(&String::from_utf8_lossy(&out.stderr), &self.sources)
            );
        }
        parse_simulation(&String::from_utf8_lossy(&out.stdout))
    }

    /// Download `pkgs` (exact versions) into the shared archive cache.
    pub fn download(&self, pkgs: &[Package]) -> Result<()> {
        let specs: Vec<String> = pkgs
            .iter()
            .map(|p| format!("{}:{}={}", p.name, p.arch_or(&self.arch), p.version))
            .collect();
        let missing: Vec<PathBuf> = pkgs
            .iter()
            .map(|p| self.archives.join(deb_file_name(p)))
            .filter(|f| !f.exists())
            .collect();
        let mut cmd = self.apt_get();
        cmd.args(["install", "--download-only", "-q", "--yes"])
            .args(&specs);
        // apt-get runs even when every file is in the cache: it checks
        // their sizes and hashes against the indices, and downloads a file
        // that does not match again.
        let out = if missing.is_empty() {
            cmd.output()
        } else {
            crate::progress::step(
                "compose",
                &format!(
                    "Downloading {} packages ({} already in the cache)",
                    missing.len(),
                    pkgs.len() - missing.len()
                ),
            );
            // Counted by the finished files apt moves into the archives
            // directory (it downloads into partial/): no need to parse
            // apt's own progress output.
            let counter =
                crate::progress::Counter::new("download", "packages", missing.len() as u64);
            let arrived = || missing.iter().filter(|f| f.exists()).count() as u64;
            let out = std::thread::scope(|s| {
                let apt = s.spawn(|| cmd.output());
                while !apt.is_finished() {
                    counter.set(arrived());
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                apt.join().expect("the apt-get thread does not panic")
            });
            counter.set(arrived());
            counter.finish();
            out
        }
        .context("running apt-get install --download-only")?;
        if !out.status.success() {
            bail!(
                "downloading packages: {}",
                explain_apt_error(&String::from_utf8_lossy(&out.stderr), &self.sources)
            );
        }
        Ok(())
    }
}

/// The name apt gives `p`'s .deb in its archives directory: it writes the
/// `:` of an epoch as `%3a` (names and versions hold no `_`, the other
/// character it quotes).
pub fn deb_file_name(p: &Package) -> String {
    format!(
        "{}_{}_{}.deb",
        p.name,
        p.version.replace(':', "%3a"),
        p.arch
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_names_are_those_apt_writes() {
        let p = |name: &str, version: &str, arch: &str| Package {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
        };
        // As in a Debian 12 /var/cache/apt/archives.
        assert_eq!(
            deb_file_name(&p("libc6", "2.36-9+deb12u14", "amd64")),
            "libc6_2.36-9+deb12u14_amd64.deb"
        );
        assert_eq!(
            deb_file_name(&p("systemd", "252.39-1~deb12u2", "amd64")),
            "systemd_252.39-1~deb12u2_amd64.deb"
        );
        assert_eq!(
            deb_file_name(&p("perl-base", "5.36.0-7+deb12u4", "amd64")),
            "perl-base_5.36.0-7+deb12u4_amd64.deb"
        );
        assert_eq!(
            deb_file_name(&p("bsdutils", "1:2.38.1-5+deb12u3", "amd64")),
            "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"
        );
        assert_eq!(
            deb_file_name(&p("debian-archive-keyring", "2023.3+deb12u2", "all")),
            "debian-archive-keyring_2023.3+deb12u2_all.deb"
        );
    }

    #[test]
    fn parses_one_line_sources() {
        let s = parse_sources_list(
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n\
             deb-src http://m/debian bookworm main\ndeb http://s/ bookworm-security main # x\n",
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                Source {
                    uri: "http://m/debian".into(),
                    suite: "bookworm".into(),
                    signed_by: Some("/k.gpg".into())
                },
                Source {
                    uri: "http://s/".into(),
                    suite: "bookworm-security".into(),
                    signed_by: None
                },
            ]
        );
        assert!(parse_sources_list("deb http://only-uri\n").is_err());
    }

    #[test]
    fn parses_deb822_sources() {
        let text = "Types: deb\n# http://snapshot\nURIs: http://deb.debian.org/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb-src\nURIs: http://x\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://off\nSuites: bookworm\nEnabled: no\n";
        let s = parse_deb822(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].suite, "bookworm-updates");
        assert_eq!(
            s[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        let inline = "Types: deb\nURIs: http://x\nSuites: b\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n";
        assert!(parse_deb822(inline).is_err());
    }

    fn tf(mirror: Option<&str>) -> Treefile {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.toml");
        std::fs::write(&p, "ref = \"x\"\ncomponents = [\"main\", \"contrib\"]\n").unwrap();
        let mut t = crate::compose::treefile::load(&p).unwrap();
        t.mirror = mirror.map(str::to_string);
        t
    }

    #[test]
    fn sources_follow_suite_and_components() {
        let host = vec![
            Source {
                uri: "http://d/debian".into(),
                suite: "bookworm".into(),
                signed_by: Some("/k".into()),
            },
            Source {
                uri: "http://d/debian-security".into(),
                suite: "bookworm-security".into(),
                signed_by: None,
            },
            Source {
                uri: "http://d/debian".into(),
                suite: "trixie".into(),
                signed_by: None,
            },
        ];
        assert_eq!(
            sources_for(&tf(None), &host).unwrap(),
            "deb [signed-by=/k] http://d/debian bookworm main contrib\n\
             deb http://d/debian-security bookworm-security main contrib\n"
        );
        assert_eq!(
            sources_for(&tf(Some("http://m/")), &host).unwrap(),
            "deb http://m/ bookworm main contrib\n"
        );
        let mut other = tf(None);
        other.suite = "sid".into();
        assert!(sources_for(&other, &host).is_err());
        assert!(suite_matches("bookworm/updates", "bookworm"));
        assert!(!suite_matches("bookworm2", "bookworm"));
    }

    #[test]
    fn parses_simulation_output() {
        let out = "NOTE: This is only a simulation!\n\
            Inst libc6 (2.36-9+deb12u10 Debian:12.11/stable, Debian-Security:12/stable-security [amd64])\n\
            Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable-updates [all])\n\
            Inst libfoo:i386 (1.0-1 Debian:12.11/stable [i386])\n\
            Conf libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])\n";
        let p = parse_simulation(out).unwrap();
        assert_eq!(
            p,
            vec![
                Package {
                    name: "libc6".into(),
                    version: "2.36-9+deb12u10".into(),
                    arch: "amd64".into()
                },
                Package {
                    name: "libfoo".into(),
                    version: "1.0-1".into(),
                    arch: "i386".into()
                },
                Package {
                    name: "tzdata".into(),
                    version: "2025b-0+deb12u1".into(),
                    arch: "all".into()
                },
            ]
        );
    }

    #[test]
    fn explains_missing_packages() {
        let e = explain_apt_error(
            "E: Unable to locate package nosuchpkg\nE: Unable to locate package other\n",
            "deb http://m bookworm main\n",
        );
        assert!(
            e.starts_with("package(s) not found: nosuchpkg, other"),
            "{e}"
        );
    }

    #[test]
    fn variant_patterns_are_known() {
        assert_eq!(
            variant_patterns("essential", "bookworm", "amd64")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            variant_patterns("required", "bookworm", "amd64")
                .unwrap()
                .len(),
            2
        );
        assert!(variant_patterns("buildd", "bookworm", "amd64").is_err());
    }
}
