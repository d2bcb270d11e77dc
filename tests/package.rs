//! The Debian package (docs/install.md): `scripts/build-deb.sh` builds it
//! from a release build, lintian finds no error in it, and `apt-get install
//! ./hostctl_*.deb` in a fresh Debian 12 root (mmdebstrap, from the mirror
//! configured in apt) gives a hostctl that runs, finds the files it copies
//! into trees under /usr/share/hostctl, has man pages that man(1) renders
//! without warnings, completions, and units that are installed but not
//! enabled.
//!
//! Needs root (mmdebstrap's root mode, chroot), the packages of
//! scripts/install-deps.sh and the Debian mirror. The release build goes to
//! `<target>/deb-build`, shared by every test binary (tests/common
//! `hostctl_deb`), so a rerun rebuilds only what changed; downloaded
//! packages are kept in /var/cache/hostctl-test/package (or
//! $HOSTCTL_TEST_CACHE/package) between runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use hostctl::compose::apt;

/// The units the package ships (systemd-units/), none of which may be
/// enabled on the machine that installs it.
const UNITS: &[&str] = &[
    "hostctl-agent.service",
    "hostctl-agent.timer",
    "hostctl-boot-check.service",
    "hostctl-health.service",
    "hostctl-mark-bad.service",
    "hostctl-publish-entries.service",
];

/// A customize hook of mmdebstrap (`$1` is the root): a one-file base and a
/// treefile with install-hostctl, composed in the root with the package at
/// `deb` (a path in the root).
fn compose_hook(deb: &str) -> String {
    format!(
        r#"set -e
mkdir -p "$1"/srv/compose/base/etc
echo ID=test > "$1"/srv/compose/base/etc/os-release
printf 'ref = "test/package"\nbase = "base"\ninstall-hostctl = true\n' > "$1"/srv/compose/tree.toml
chroot "$1" hostctl compose tree --hostctl-deb {deb} --repo /srv/compose/repo /srv/compose/tree.toml"#
    )
}

fn cachedir() -> PathBuf {
    std::env::var_os("HOSTCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hostctl-test"))
        .join("package")
}

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The Debian 12 entries of this machine's apt sources, as sources.list text
/// for mmdebstrap: the same mirror the composes use, and no third-party
/// repository the machine may also have.
fn bookworm_sources() -> String {
    let host = apt::host_sources(Path::new("/etc/apt")).expect("reading /etc/apt");
    let mut out = String::new();
    for s in host
        .iter()
        .filter(|s| s.suite == "bookworm" || s.suite.starts_with("bookworm-"))
    {
        let opts = match &s.signed_by {
            Some(k) => format!("[signed-by={k}] "),
            None => String::new(),
        };
        out.push_str(&format!("deb {opts}{} {} main\n", s.uri, s.suite));
    }
    assert!(!out.is_empty(), "no bookworm entry in /etc/apt: {host:?}");
    out
}

#[test]
fn the_deb_builds_passes_lintian_and_installs_into_a_fresh_debian_root() {
    let t0 = Instant::now();

    // 1. Build, as a user would (scripts/build-deb.sh, in the target
    // directory all test binaries share for it).
    let deb = common::hostctl_deb();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("hostctl_{version}_amd64.deb")
    );
    eprintln!("built {} in {:?}", deb.display(), t0.elapsed());

    // 2. lintian: no error; the rest is shown for the notes.
    let t = Instant::now();
    let lint = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info"])
        .arg(&deb)
        .output()
        .expect("starting lintian (package lintian)");
    let report = text(&lint.stdout);
    eprintln!("lintian ({:?}):\n{report}", t.elapsed());
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        lint.status.success() && errors.is_empty(),
        "lintian found errors ({}):\n{report}\n{}",
        lint.status,
        text(&lint.stderr)
    );

    // 3. A fresh Debian 12 root with only apt, then the package installed
    // into it by apt, which must find every dependency the package names.
    // The downloads are synced in from and out to the cache, as composes do.
    let t = Instant::now();
    let cache = cachedir();
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all("/var/tmp").unwrap();
    let scratch = tempfile::Builder::new()
        .prefix("hostctl-package-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = scratch.path().join("root");
    let mut mm = Command::new("mmdebstrap");
    mm.args(["--variant=apt", "--mode=root", "--quiet"])
        // Keep the Essential packages' downloads too, for the cache; a root
        // thrown away at the end needs no fsync after every file.
        .args(["--skip=essential/unlink", "--dpkgopt=force-unsafe-io"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives",
            cache.display()
        ))
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!(
            "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive \
             apt-get install --yes -o APT::Install-Recommends=true /tmp/{}",
            deb.file_name().unwrap().to_string_lossy()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            cache.display()
        ))
        // The packaged hostctl composes where no source tree exists: a
        // compose with install-hostctl in the root, given the package
        // copied in above, extracts its binary, units and docs into the
        // tree. In a hook, where /proc is mounted.
        .arg(format!(
            "--customize-hook={}",
            compose_hook(&format!(
                "/tmp/{}",
                deb.file_name().unwrap().to_string_lossy()
            ))
        ))
        .args(["bookworm"])
        .arg(&root)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = mm
        .spawn()
        .expect("starting mmdebstrap (package mmdebstrap)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // An mmdebstrap that stopped before reading says why on stderr,
        // reported below with its exit status.
        if let Err(e) = stdin.write_all(bookworm_sources().as_bytes()) {
            eprintln!("writing the sources to mmdebstrap: {e}");
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mmdebstrap with `apt-get install ./{}` failed ({}):\n{}\n{}",
        deb.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!("root with the package in {:?}", t.elapsed());

    // 4. The binary runs in that root: its libraries are there.
    let out = run(
        "hostctl --version in the root",
        Command::new("chroot")
            .arg(&root)
            .args(["hostctl", "--version"]),
    );
    assert_eq!(text(&out.stdout).trim(), format!("hostctl {version}"));
    let dpkg = run(
        "dpkg-query in the root",
        Command::new("chroot").arg(&root).args([
            "dpkg-query",
            "-W",
            "-f=${Status} ${Version}",
            "hostctl",
        ]),
    );
    assert_eq!(
        text(&dpkg.stdout),
        format!("install ok installed {version}")
    );
    // What a build machine needs comes as Recommends, which apt installs
    // on a fresh Debian 12 (its default; mmdebstrap's root turns that off,
    // hence the option above); trees, composed without Recommends, stay lean.
    let recommends = run(
        "dpkg-query of the build machine's tools in the root",
        Command::new("chroot").arg(&root).args([
            "dpkg-query",
            "-W",
            "-f=${Package} ${Status}\n",
            "mmdebstrap",
            "bubblewrap",
            "mtools",
            "dosfstools",
        ]),
    );
    let installed = text(&recommends.stdout);
    assert_eq!(
        installed.matches(" install ok installed").count(),
        4,
        "{installed}"
    );

    // 5. The compose of the hook above, checked with the ostree CLI.
    let work = root.join("srv/compose");
    let listing = run(
        "ostree ls",
        Command::new("ostree")
            .arg(format!("--repo={}", work.join("repo").display()))
            .args(["ls", "-R", "test/package", "/usr"]),
    );
    let listing = text(&listing.stdout);
    for want in [
        "/usr/bin/hostctl",
        "/usr/lib/systemd/system/hostctl-agent.timer",
        "/usr/share/doc/hostctl/agent.md",
    ] {
        assert!(
            listing.contains(want),
            "{want} not in the commit:\n{listing}"
        );
    }

    // 6. Man pages: one per command and the two formats, rendered by man
    // with its warnings on (what lintian also checks).
    let man8 = root.join("usr/share/man/man8");
    for page in [
        "man8/hostctl.8.gz",
        "man8/hostctl-upgrade.8.gz",
        "man8/hostctl-compose-tree.8.gz",
        "man5/hostctl.toml.5.gz",
        "man5/treefile.5.gz",
    ] {
        let path = root.join("usr/share/man").join(page);
        let out = run(
            "man -l",
            Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&path)
                .env("MANWIDTH", "80")
                // Set to anything, it would keep the overstrikes of bold
                // text in the output.
                .env_remove("MAN_KEEP_FORMATTING"),
        );
        assert!(
            out.stderr.is_empty(),
            "man warns about {page}:\n{}",
            text(&out.stderr)
        );
        let shown = text(&out.stdout);
        assert!(
            shown.contains("SEE ALSO"),
            "{page} as man shows it:\n{shown}"
        );
    }
    let pages = std::fs::read_dir(&man8).unwrap().count();
    assert!(pages >= 20, "only {pages} pages in {}", man8.display());

    // 7. Completions where the shells look, the bash one valid bash.
    for f in [
        "usr/share/bash-completion/completions/hostctl",
        "usr/share/zsh/vendor-completions/_hostctl",
        "usr/share/fish/vendor_completions.d/hostctl.fish",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    run(
        "bash -n on the completion",
        Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/hostctl")),
    );

    // 8. Units and the dracut module installed; no unit enabled or started:
    // nothing links them in /etc, deb-systemd-helper recorded none, and
    // systemctl agrees.
    let dracut = root.join("usr/lib/dracut/modules.d/90hostctl/module-setup.sh");
    let setup = std::fs::read_to_string(&dracut).unwrap();
    assert!(setup.contains("return 255"), "{}", dracut.display());
    for unit in UNITS {
        assert!(
            root.join("usr/lib/systemd/system").join(unit).is_file(),
            "{unit}"
        );
        let state = Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .args(["is-enabled", unit])
            .output()
            .unwrap();
        let state = text(&state.stdout);
        assert!(
            matches!(state.trim(), "disabled" | "static"),
            "{unit} is {state:?} in the fresh root"
        );
    }
    for dir in ["etc/systemd", "var/lib/systemd/deb-systemd-helper-enabled"] {
        let found: Vec<_> = walkdir::WalkDir::new(root.join(dir))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("hostctl"))
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(found.is_empty(), "units enabled: {found:?}");
    }
    eprintln!("package test done in {:?}", t0.elapsed());
}
