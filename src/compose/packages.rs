//! Building a tree from Debian packages.
//!
//! Compose calls three steps: `resolve` (cheap: which exact package versions
//! the treefile stands for right now, fed into the input hash), `install`
//! (mmdebstrap builds the tree, reusing cached `.deb`s), and, once overlays
//! and scripts have run and the initramfs is built, `record_installed` (the
//! dpkg database under `/usr`, the installed package list).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::compose::apt::{self, PrivateApt};
use crate::compose::treefile::Treefile;
use crate::format::pkglist::Package;

/// Where the dpkg database lives in a composed tree; `/var/lib/dpkg` is a
/// relative symlink to it.
pub const DPKG_DB: &str = "usr/lib/sysimage/dpkg";

/// The mmdebstrap variant used when the treefile does not name one.
pub const DEFAULT_VARIANT: &str = "required";

/// The package cache: root uses the system cache, others their XDG cache.
/// Never inside a repository or working directory, so that removing a
/// checkout keeps the downloads.
pub fn default_cachedir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/hostctl");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("hostctl");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/hostctl"),
        None => std::env::temp_dir().join("hostctl-cache"),
    }
}

/// Where hostctl finds the files it ships into Debian trees (`dracut/`; the
/// binary, units and docs come from its package, see `hostctl_deb`):
/// `$HOSTCTL_DATADIR` at run time, else the directory named by
/// `HOSTCTL_BUILD_DATADIR` when the binary was built (the
/// Debian package sets `/usr/share/hostctl`, since its binary outlives the
/// build tree), else the source checkout it was built from.
pub fn datadir() -> PathBuf {
    match std::env::var_os("HOSTCTL_DATADIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            option_env!("HOSTCTL_BUILD_DATADIR")
                .filter(|d| !d.is_empty())
                .unwrap_or(env!("CARGO_MANIFEST_DIR")),
        ),
    }
}

fn native_arch() -> Result<String> {
    let out = crate::util::run(
        Command::new("dpkg").arg("--print-architecture"),
        "finding the build machine's architecture",
    )?;
    Ok(out.trim().to_string())
}

pub(crate) fn arch_of(tf: &Treefile) -> Result<String> {
    match &tf.architecture {
        Some(a) => Ok(a.clone()),
        None => native_arch(),
    }
}

fn variant_of(tf: &Treefile) -> &str {
    tf.variant.as_deref().unwrap_or(DEFAULT_VARIANT)
}

/// The private apt for a treefile's sources.
fn private_apt(tf: &Treefile, cachedir: &Path) -> Result<PrivateApt> {
    let host = apt::host_sources(Path::new("/etc/apt"))
        .context("reading the build machine's apt sources")?;
    let sources = apt::sources_for(tf, &host)?;
    PrivateApt::new(cachedir, &sources, &arch_of(tf)?)
}

/// Names and local .deb paths given to apt, in the treefile's order.
fn selectors(tf: &Treefile, arch: &str) -> Result<Vec<String>> {
    // On a base, only the named packages are installed (the base's own
    // contents are hashed by compose as an input file).
    let mut sel = if tf.base.is_some() {
        Vec::new()
    } else {
        apt::variant_patterns(variant_of(tf), &tf.suite, arch)?
    };
    sel.extend(tf.packages.iter().cloned());
    for p in &tf.local_packages {
        if !p.is_file() {
            bail!("local package {} does not exist", p.display());
        }
        sel.push(p.display().to_string());
    }
    Ok(sel)
}

/// A stable description of everything the package steps put into the tree:
/// sources, variant, the resolved `name=version arch` lines, and the files
/// hostctl itself ships into Debian trees (its dracut configuration and
/// module). Unchanged treefile + unchanged mirror = same text. (Local
/// packages, hostctl's own among them, are hashed by content as inputs.)
pub fn resolve(tf: &Treefile, cachedir: &Path) -> Result<String> {
    let mut text = String::new();
    if !tf.has_packages() {
        return Ok(text);
    }
    let apt = private_apt(tf, cachedir)?;
    apt.update()?;
    let pkgs = apt.simulate(&selectors(tf, &apt.arch)?)?;
    let _ = writeln!(text, "suite {}", tf.suite);
    let _ = writeln!(text, "components {}", tf.components.join(" "));
    let _ = writeln!(text, "variant {}", variant_of(tf));
    let _ = writeln!(text, "architecture {}", apt.arch);
    for l in apt.sources.lines() {
        let _ = writeln!(text, "source {l}");
    }
    for p in &pkgs {
        let _ = writeln!(text, "{}={} {}", p.name, p.version, p.arch);
    }
    hash_dracut_files(&mut text)?;
    Ok(text)
}

fn sha256_file(p: &Path) -> Result<String> {
    Ok(hex::encode(crate::util::sha256_file(p)?))
}

/// Every regular file under `dir`, recursively, in a stable order.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.file_type().is_file() {
            v.push(e.into_path());
        }
    }
    Ok(v)
}

fn hash_dracut_files(text: &mut String) -> Result<()> {
    for f in files_in(&datadir().join("dracut"))? {
        let _ = writeln!(text, "dracut {} {}", f.display(), sha256_file(&f)?);
    }
    Ok(())
}

/// Build the tree in `tree` from the treefile's packages.
///
/// `tree` is empty, or holds an extracted `base` (which must then contain
/// dpkg and apt): mmdebstrap runs on it with the `custom` variant and an
/// `apt-get install` inside the chroot, so the base's dpkg database decides
/// what is already there. Downloaded `.deb`s are synced in from and out to
/// `cachedir/archives`. hostctl's own package (`install-hostctl`) is one
/// of the local packages by now (see `hostctl_deb::add_to`).
///
/// `accounts`: a directory with the `passwd`, `group`, `shadow` and `gshadow`
/// of the ref's previous commit, if any (see `install_packages`).
pub fn install(tf: &Treefile, tree: &Path, cachedir: &Path, accounts: Option<&Path>) -> Result<()> {
    if tf.has_packages() {
        install_packages(tf, tree, cachedir, accounts)?;
    }
    Ok(())
}

fn local_package_names(tf: &Treefile) -> Result<Vec<String>> {
    tf.local_packages
        .iter()
        .map(|p| {
            let out = crate::util::run(
                Command::new("dpkg-deb")
                    .arg("--field")
                    .arg(p)
                    .arg("Package"),
                &format!("reading the package name of {}", p.display()),
            )?;
            Ok(out.trim().to_string())
        })
        .collect()
}

fn is_empty_dir(p: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(p)
        .with_context(|| format!("listing {}", p.display()))?
        .next()
        .is_none())
}

/// The account files seeded from the previous commit.
pub const ACCOUNT_FILES: &[&str] = &["passwd", "group", "shadow", "gshadow"];

fn install_packages(
    tf: &Treefile,
    tree: &Path,
    cachedir: &Path,
    accounts: Option<&Path>,
) -> Result<()> {
    let apt = private_apt(tf, cachedir)?;
    apt.update()?;
    let on_base = !is_empty_dir(tree)?;
    if on_base != tf.base.is_some() {
        bail!(
            "{} is {}empty but the treefile {} a `base`",
            tree.display(),
            if on_base { "not " } else { "" },
            if tf.base.is_some() { "has" } else { "has no" }
        );
    }
    // Resolve (and, from scratch, download) with the private apt first: a
    // missing package is reported clearly here, and mmdebstrap then finds
    // every .deb in the cache instead of downloading it.
    let pkgs = apt.simulate(&selectors(tf, &apt.arch)?)?;
    if !on_base {
        // Local .debs are not on the mirror; mmdebstrap gets them by path.
        let local = local_package_names(tf)?;
        let remote: Vec<Package> = pkgs
            .iter()
            .filter(|p| !local.contains(&p.name))
            .cloned()
            .collect();
        apt.download(&remote)?;
    }
    let cache = shell_quote(&apt.archives.display().to_string());
    let log_dir = cachedir.join("log");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    // One log per run, kept only when it failed: concurrent composes
    // sharing a cache must not interleave their logs.
    let log = log_dir.join(format!(
        "mmdebstrap-{}-{}.log",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        std::process::id()
    ));
    // In a private mount namespace: mmdebstrap's /proc, /sys and /dev
    // mounts in the tree vanish with it even when it is killed, so removing
    // the work directory can never reach into the host's /dev.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--fork", "mmdebstrap"])
        .env("LC_ALL", "C.UTF-8")
        // The kernel's postinst hooks would build a throwaway initramfs in
        // /boot; compose builds the real one once the tree is complete.
        .env("INITRD", "No")
        .arg(format!("--architectures={}", apt.arch))
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        // Hard links when the cache shares the tree's filesystem, copies
        // otherwise.
        .arg(format!(
            "--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" && \
             for f in {cache}/*.deb; do [ -e \"$f\" ] || continue; \
             ln \"$f\" \"$1/var/cache/apt/archives/\" 2>/dev/null || cp \"$f\" \"$1/var/cache/apt/archives/\"; done"
        ));
    if on_base {
        if !tree.join("usr/bin/apt-get").exists() || !tree.join("var/lib/dpkg/status").exists() {
            bail!(
                "the base has no dpkg database or no apt: packages can only be installed on a Debian base"
            );
        }
        let mut install = vec!["apt-get".to_string(), "install".into(), "--yes".into()];
        install.extend(tf.packages.iter().cloned());
        for (i, p) in tf.local_packages.iter().enumerate() {
            let name = format!("/tmp/hostctl-local-{i}.deb");
            cmd.arg(format!("--customize-hook=upload {} {name}", p.display()));
            install.push(name);
        }
        let quoted: Vec<String> = install.iter().map(|s| shell_quote(s)).collect();
        cmd.arg("--variant=custom")
            .arg("--skip=check/empty")
            .arg(format!(
                "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive INITRD=No {}",
                quoted.join(" ")
            ));
    } else {
        cmd.arg(format!("--variant={}", variant_of(tf)));
        // System accounts keep the IDs the ref already gave them: package
        // scripts allocate "the next free" ID, so a compose from scratch
        // that installs in another order would give a host's existing ID to
        // another account, and files the tree ships would change owner on
        // hosts. The previous commit's files go in after the essential
        // packages are unpacked and before they are configured, so
        // base-passwd reconciles them and adduser keeps existing accounts.
        if let Some(dir) = accounts {
            for name in ACCOUNT_FILES {
                let src = dir.join(name);
                if src.is_file() {
                    cmd.arg(format!(
                        "--extract-hook=cp -p {} \"$1/etc/{name}\"",
                        shell_quote(&src.display().to_string())
                    ));
                }
            }
        }
        if !tf.packages.is_empty() {
            cmd.arg(format!("--include={}", tf.packages.join(",")));
        }
        if !tf.local_packages.is_empty() {
            // apt passes a .deb's path verbatim to dpkg inside the chroot;
            // mmdebstrap's hook makes them visible there (and cleans up).
            cmd.arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount");
            for p in &tf.local_packages {
                // An absolute path: mmdebstrap keeps it as one argument.
                cmd.arg(format!("--include={}", p.display()));
            }
        }
    }
    // New downloads go back to the cache (via a temporary name, so a
    // concurrent compose never sees half a file); no .deb stays in the tree.
    cmd.arg(format!(
        "--customize-hook=for f in \"$1\"/var/cache/apt/archives/*.deb; do [ -e \"$f\" ] || continue; \
         b=$(basename \"$f\"); [ -e {cache}/\"$b\" ] || {{ cp \"$f\" {cache}/.\"$b\".tmp && mv {cache}/.\"$b\".tmp {cache}/\"$b\"; }}; \
         rm -f \"$f\"; done"
    ))
    .arg(&tf.suite)
    .arg(tree)
    .arg(apt.dir.join("etc/sources.list"));
    crate::progress::step(
        "compose",
        &format!(
            "Installing {} packages with mmdebstrap (log: {})",
            if on_base {
                tf.packages.len() + tf.local_packages.len()
            } else {
                pkgs.len()
            },
            log.display()
        ),
    );
    let logf =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let guard = HostFilesGuard::new(tree)?;
    let status = cmd
        .stdout(logf.try_clone().context("duplicating log handle")?)
        .stderr(logf)
        .status()
        .context("starting mmdebstrap (is the mmdebstrap package installed?)");
    guard.restore()?;
    let status = status?;
    if status.success() {
        let _ = std::fs::remove_file(&log);
    } else {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "mmdebstrap failed ({status}): {}\n(full log: {})",
            explain_mmdebstrap_failure(&text),
            log.display()
        );
    }
    // mmdebstrap leaves device nodes in /dev; a commit cannot hold them and a
    // booted host mounts devtmpfs there anyway.
    empty_dir(&tree.join("dev"))?;
    Ok(())
}

/// mmdebstrap copies the build machine's `/etc/resolv.conf` and
/// `/etc/hostname` into the tree (for network access during the install);
/// they must not end up in the image. The tree's own versions (from a base)
/// are set aside meanwhile and put back afterwards; a symlink a package made
/// (systemd-resolved's resolv.conf) stays.
struct HostFilesGuard {
    etc: PathBuf,
    saved: Vec<(PathBuf, PathBuf)>,
    had_resolved_backup: bool,
}

const HOST_FILES: [&str; 2] = ["resolv.conf", "hostname"];
const RESOLVED_BACKUP: &str = ".resolv.conf.systemd-resolved.bak";

impl HostFilesGuard {
    fn new(tree: &Path) -> Result<Self> {
        let etc = tree.join("etc");
        let mut saved = Vec::new();
        for f in HOST_FILES {
            let p = etc.join(f);
            if std::fs::symlink_metadata(&p).is_ok() {
                let aside = etc.join(format!(".{f}.hostctl-saved"));
                std::fs::rename(&p, &aside)
                    .with_context(|| format!("moving {} aside", p.display()))?;
                saved.push((p, aside));
            }
        }
        Ok(Self {
            had_resolved_backup: std::fs::symlink_metadata(etc.join(RESOLVED_BACKUP)).is_ok(),
            etc,
            saved,
        })
    }

    fn restore(self) -> Result<()> {
        for f in HOST_FILES {
            let p = self.etc.join(f);
            let saved = self.saved.iter().find(|(orig, _)| orig == &p);
            let is_symlink = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink());
            if saved.is_some() || !is_symlink {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", p.display()))
                    }
                    _ => {}
                }
            }
            if let Some((orig, aside)) = saved {
                std::fs::rename(aside, orig)
                    .with_context(|| format!("restoring {}", orig.display()))?;
            }
        }
        let backup = self.etc.join(RESOLVED_BACKUP);
        if !self.had_resolved_backup && std::fs::symlink_metadata(&backup).is_ok() {
            std::fs::remove_file(&backup)
                .with_context(|| format!("removing {}", backup.display()))?;
        }
        Ok(())
    }
}

fn empty_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The lines of an mmdebstrap/apt/dpkg log that say what went wrong: failing
/// maintainer scripts and packages, and apt's errors.
pub fn explain_mmdebstrap_failure(log: &str) -> String {
    let mut picked: Vec<&str> = Vec::new();
    for l in log.lines() {
        let t = l.trim();
        let interesting = t.starts_with("dpkg: error processing")
            || t.contains("subprocess returned error exit status")
            || t.contains("script subprocess")
            || t.starts_with("E: ")
            || t.starts_with("Errors were encountered")
            || (picked
                .last()
                .is_some_and(|p| p.starts_with("Errors were encountered"))
                && !t.starts_with("E:")
                && !t.is_empty());
        if interesting && !picked.contains(&t) {
            picked.push(t);
        }
    }
    if picked.is_empty() {
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    }
    picked.join("\n")
}

/// Whether the tree has a dpkg database (wherever a previous step put it).
pub fn is_debian_tree(tree: &Path) -> bool {
    tree.join("var/lib/dpkg/status").exists() || tree.join(DPKG_DB).join("status").exists()
}

/// Move the dpkg database under /usr and list what it says is installed.
pub fn record_installed(tree: &Path) -> Result<Vec<Package>> {
    move_dpkg_db(tree)?;
    installed_packages(&tree.join(DPKG_DB))
}

/// Move `/var/lib/dpkg` to `/usr/lib/sysimage/dpkg` and leave a relative
/// symlink, so `dpkg -l` keeps working once `/var` comes from tmpfiles.d.
pub fn move_dpkg_db(tree: &Path) -> Result<()> {
    let old = tree.join("var/lib/dpkg");
    let new = tree.join(DPKG_DB);
    let meta = std::fs::symlink_metadata(&old);
    if meta.as_ref().is_ok_and(|m| m.file_type().is_symlink()) && new.is_dir() {
        return Ok(());
    }
    if new.exists() {
        bail!(
            "{} and {} both exist; a tree can only have one dpkg database",
            old.display(),
            new.display()
        );
    }
    std::fs::create_dir_all(new.parent().expect("has parent"))
        .with_context(|| format!("creating {}", new.display()))?;
    std::fs::rename(&old, &new)
        .with_context(|| format!("moving {} to {}", old.display(), new.display()))?;
    std::os::unix::fs::symlink("../../usr/lib/sysimage/dpkg", &old)
        .with_context(|| format!("linking {} to {}", old.display(), new.display()))?;
    Ok(())
}

/// Installed packages according to the dpkg database at `admindir`.
pub fn installed_packages(admindir: &Path) -> Result<Vec<Package>> {
    let out = crate::util::run(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", admindir.display()))
            .arg("-W")
            .arg("-f=${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n"),
        &format!("listing packages in {}", admindir.display()),
    )?;
    Ok(parse_dpkg_query(&out))
}

/// Parse `status\tname\tversion\tarch` lines, keeping installed packages.
pub fn parse_dpkg_query(out: &str) -> Vec<Package> {
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (status, name, version, arch) = (f.next()?, f.next()?, f.next()?, f.next()?);
            status.starts_with("ii").then(|| Package {
                name: name.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
            })
        })
        .collect();
    pkgs.sort();
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_keeps_installed_only() {
        let out = "ii \tbash\t5.2.15-2+b7\tamd64\nrc \told\t1\tamd64\n\
                   ii \tbase-files\t12.4+deb12u11\tamd64\niU \thalf\t1\tall\n";
        let p = parse_dpkg_query(out);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["base-files", "bash"]);
    }

    #[test]
    fn failure_explanation_names_script_and_package() {
        let log = "I: installing remaining packages inside the chroot...\n\
            Setting up foo (1.0) ...\n\
            boom\n\
            dpkg: error processing package foo (--configure):\n \
            installed foo package post-installation script subprocess returned error exit status 1\n\
            Errors were encountered while processing:\n foo\n\
            E: Sub-process /usr/bin/dpkg returned an error code (1)\n\
            E: apt-get --yes install failed\n";
        let e = explain_mmdebstrap_failure(log);
        assert!(
            e.contains("dpkg: error processing package foo (--configure):"),
            "{e}"
        );
        assert!(
            e.contains("post-installation script subprocess returned error"),
            "{e}"
        );
        assert!(e.contains("\nfoo\n"), "{e}");
    }

    #[test]
    fn dpkg_db_moves_under_usr_with_relative_link() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("var/lib/dpkg/info")).unwrap();
        std::fs::write(t.join("var/lib/dpkg/status"), "x").unwrap();
        move_dpkg_db(t).unwrap();
        assert_eq!(
            std::fs::read_link(t.join("var/lib/dpkg")).unwrap(),
            PathBuf::from("../../usr/lib/sysimage/dpkg")
        );
        assert_eq!(
            std::fs::read_to_string(t.join("var/lib/dpkg/status")).unwrap(),
            "x"
        );
        // Idempotent.
        move_dpkg_db(t).unwrap();
    }
}
