//! What an upgrade over HTTP shows while it pulls (nginx on 127.0.0.1,
//! slowed with `limit_rate` so that a pull lasts several seconds): JSON
//! lines with `--progress=json` (stderr) or `--progress-fd N`, a line
//! redrawn in place on a terminal (`script` gives the upgrade a pty), plain
//! lines otherwise; stdout and the exit status the same whichever.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::nginx::Nginx;
use common::*;

const T0: u64 = 1_700_000_000;

/// `n` new files of 128 KiB (about 70 KB compressed each): at 64 KiB/s
/// per connection, a pull of a few seconds.
fn tree(version: &str, seed: u64, n: u64) -> Files {
    let mut f = deployable(&base_files(version));
    for i in 0..n {
        f.insert(
            format!("usr/share/many/file{i:02}"),
            noise(seed * 1000 + i, 128 << 10),
        );
    }
    f
}

/// A host installed (small v1) from a signed repository that a slow nginx
/// serves, and a way to publish the next version.
struct Served {
    fx: Fixture,
    secret: std::path::PathBuf,
    server: Nginx,
    _keys: tempfile::TempDir,
}

impl Served {
    fn new() -> Served {
        let fx = Fixture::with_size(600);
        let keys = tempfile::tempdir().unwrap();
        let (secret, public) = keypair(keys.path(), "build");
        fx.build.commit("stable", "1.0", T0, &tree("1.0", 1, 0));
        fx.build.publish(&["--sign-key", secret.to_str().unwrap()]);
        let server = Nginx::serve_with(fx.build.path.parent().unwrap(), "limit_rate 64k;");
        fx.install_verified(&server.url("repo"), "stable", &public);
        Served {
            fx,
            secret,
            server,
            _keys: keys,
        }
    }

    /// Commit and publish `version` (files of `seed`), with `deltas`
    /// static deltas from the previous commits.
    fn publish(&self, version: &str, seed: u64, n: u64, deltas: &str) -> String {
        let t = T0 + seed * 100;
        let c = self
            .fx
            .build
            .commit("stable", version, t, &tree(version, seed, n));
        self.fx.build.publish(&[
            "--sign-key",
            self.secret.to_str().unwrap(),
            "--deltas",
            deltas,
        ]);
        c
    }
}

/// The lines of `text` that are JSON objects, parsed; a line that starts
/// like one and does not parse fails the test.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{text}"))
        })
        .collect()
}

/// The pull's lines of one stage: numbers where numbers are promised, and
/// bytes and done that never go down.
fn check_pull_lines(lines: &[serde_json::Value], stage: &str, what: &str) -> serde_json::Value {
    let pull: Vec<&serde_json::Value> = lines.iter().filter(|v| v["stage"] == stage).collect();
    assert!(
        pull.len() >= 3,
        "{what}: fewer than 3 progress lines of stage {stage}: {lines:?}"
    );
    let mut last_bytes = 0;
    for v in &pull {
        for key in ["done", "total", "bytes"] {
            assert!(v[key].is_u64(), "{what}: {key} is not a count: {v}");
        }
        let bytes = v["bytes"].as_u64().unwrap();
        assert!(
            bytes >= last_bytes,
            "{what}: bytes went down from {last_bytes}: {v}\n{lines:?}"
        );
        last_bytes = bytes;
    }
    let last = (*pull.last().unwrap()).clone();
    assert_eq!(last["finished"], true, "{what}: no final line: {last}");
    assert_eq!(last["done"], last["total"], "{what}: the pull ended short");
    assert!(last_bytes > 0, "{what}: no bytes counted");
    last
}

/// stdout with checksums, numbers and size units blanked: what must not
/// change with the progress option (the sizes freed differ from one
/// upgrade to the next).
fn shape(stdout: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push('#');
        } else {
            out.extend(
                run.chars()
                    .map(|c| if c.is_ascii_digit() { '9' } else { c }),
            );
        }
        run.clear();
    };
    for c in stdout.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if c.is_ascii_digit() { '9' } else { c });
        }
    }
    flush(&mut run, &mut out);
    ["kB", "MB", "GB", "bytes"]
        .iter()
        .fold(out, |o, unit| o.replace(unit, "B"))
}

fn upgrade(fx: &Fixture, extra: &[&str]) -> Output {
    let mut args = vec!["upgrade"];
    args.extend_from_slice(extra);
    hostctl(fx.sysroot(), &args)
}

#[test]
fn json_progress_lines_count_up_to_their_total_and_leave_stdout_alone() {
    let s = Served::new();
    let fx = &s.fx;

    // A static delta (eight files: one connection carries a delta part at
    // 64 KiB/s), with the lines on another descriptor: stderr has none of
    // them, and the bytes end at the delta's total.
    let c2 = s.publish("2.0", 2, 8, "1");
    let progress = tempfile::NamedTempFile::new().unwrap();
    s.server.clear_log();
    let out = run_hostctl(
        Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" 3>"$PROGRESS_FILE""#)
            .arg(hostctl_bin())
            .arg("--sysroot")
            .arg(fx.sysroot())
            .args(["upgrade", "--progress-fd", "3"])
            .env("PROGRESS_FILE", progress.path()),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "upgrade failed:\n{err}");
    assert_eq!(fx.admin_status()[0].checksum, c2);
    assert!(
        s.server
            .requests()
            .iter()
            .any(|(p, _)| p.contains("/deltas/")),
        "the upgrade did not use the delta"
    );
    assert!(
        !err.contains('{') && !err.contains("Receiving:"),
        "progress on stderr with --progress-fd:\n{err}"
    );
    let text = fs::read_to_string(progress.path()).unwrap();
    let lines = json_lines(&text);
    assert_eq!(
        lines.len(),
        text.lines().count(),
        "a line that is not JSON:\n{text}"
    );
    let last = check_pull_lines(&lines, "pull", "delta pull");
    assert_eq!(last["unit"], "delta-parts");
    assert_eq!(
        last["bytes"], last["bytes_total"],
        "the delta's bytes did not add up to its total"
    );

    // An object pull (no delta) without the option: plain lines only (no
    // carriage return: stderr is not a terminal).
    s.publish("3.0", 3, 40, "0");
    let out = upgrade(fx, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "upgrade failed:\n{err}");
    assert!(json_lines(&err).is_empty(), "JSON without asking:\n{err}");
    assert_plain_progress(&err);
    let plain_stdout = String::from_utf8_lossy(&out.stdout).into_owned();

    // The same kind of upgrade with the lines on stderr; stdout as
    // without them, up to checksums and numbers.
    let c4 = s.publish("4.0", 4, 40, "0");
    let out = upgrade(fx, &["--progress=json"]);
    let err = stderr(&out);
    assert!(out.status.success(), "upgrade failed:\n{err}");
    assert_eq!(fx.admin_status()[0].checksum, c4);
    let lines = json_lines(&err);
    let last = check_pull_lines(&lines, "pull", "object pull");
    assert_eq!(last["unit"], "objects");
    assert!(
        last["done"].as_u64().unwrap() >= 40,
        "40 new files at least: {last}"
    );
    assert!(
        lines.iter().any(|v| v["bytes_per_second"].is_u64()),
        "no rate in any line: {lines:?}"
    );
    assert!(
        !err.contains("Receiving:") && !err.contains("Received "),
        "text progress besides the JSON:\n{err}"
    );
    assert_eq!(
        shape(&plain_stdout),
        shape(&String::from_utf8_lossy(&out.stdout)),
        "stdout changed with --progress=json"
    );
}

/// `script` runs `args` with a pty as stdin, stdout and stderr; what the
/// command wrote comes back on script's stdout (with the pty's `\r\n`).
fn under_a_terminal(sysroot: &Path, args: &[&str]) -> Output {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = format!(
        "{} --sysroot {}",
        quote(hostctl_bin()),
        quote(sysroot.to_str().unwrap())
    );
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        // script's pty has no size: the line is cut to $COLUMNS then.
        .env("COLUMNS", "200")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running script");
    assert_no_glib_noise(&String::from_utf8_lossy(&out.stdout), &cmd);
    out
}

#[test]
fn on_a_terminal_the_progress_line_is_redrawn() {
    let s = Served::new();
    let fx = &s.fx;
    let c2 = s.publish("2.0", 2, 40, "0");
    let out = under_a_terminal(fx.sysroot(), &["upgrade"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "upgrade failed:\n{said}");
    assert_eq!(fx.admin_status()[0].checksum, c2);
    // Each reading is drawn over the line before: carriage return, erase
    // to the end of the line, the reading. Two at least: one redrawn.
    let drawn = said.matches("\r\x1b[K[").count() + said.matches("\r\x1b[KReceiving: ").count();
    assert!(drawn >= 2, "the line was not redrawn ({drawn}):\n{said:?}");
    // The line is cleared at the end; the summary stands on its own line.
    assert!(
        said.contains("\r\x1b[KReceived "),
        "no summary after the cleared line:\n{said:?}"
    );
    // A bar once the total is known, and the time left once the rate is.
    assert!(said.contains("% Receiving: "), "no bar:\n{said:?}");
    assert!(said.contains(" left\r\x1b[K"), "no time left:\n{said:?}");

    // The same upgrade off a terminal: no carriage return at all.
    s.publish("3.0", 3, 40, "0");
    let out = upgrade(fx, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "upgrade failed:\n{err}");
    assert_plain_progress(&err);
}

/// A compose announces its steps: JSON lines counting up with the time
/// since the start, the error still a text line, the exit status and
/// stdout the same as without the option. (A tree with both /etc and
/// /usr/etc: three steps run before the layout is refused, in a second.)
#[test]
fn compose_steps_are_json_lines_counting_up_with_elapsed_time() {
    let f = ComposeDir::new();
    write(&f.p("base/etc/hostname"), "h\n");
    write(&f.p("ov/usr/etc/foo"), "x\n");
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\noverlays = [\"ov\"]\n",
    );
    let repo = f.p("repo");
    let run = |extra: &[&str]| {
        let mut args = vec!["compose", "tree", "--repo", repo.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(tf.to_str().unwrap());
        hostctl_run(&args)
    };
    let plain = run(&[]);
    let json = run(&["--progress=json"]);
    assert_eq!(plain.status.code(), Some(1), "{}", stderr(&plain));
    assert_eq!(json.status.code(), plain.status.code());
    assert_eq!(json.stdout, plain.stdout);
    let err = stderr(&plain);
    assert!(
        err.lines()
            .any(|l| l.starts_with("[0:0") && l.ends_with("] Populating the tree from the base")),
        "no timed step line:\n{err}"
    );
    let err = stderr(&json);
    let lines = json_lines(&err);
    assert!(lines.len() >= 3, "fewer than 3 steps:\n{err}");
    let mut elapsed = 0.0;
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["stage"], "compose", "{v}");
        assert_eq!(v["done"], i as u64 + 1, "steps counted: {v}");
        assert!(v["total"].is_null() && v["step"].is_string(), "{v}");
        let e = v["elapsed_seconds"].as_f64().unwrap();
        assert!(e >= elapsed, "time went back: {v}");
        elapsed = e;
    }
    assert_eq!(lines[0]["step"], "Populating the tree from the base");
    // Besides the JSON, only the error line (its work directory differs
    // from run to run).
    let text: Vec<String> = error_lines(&json)
        .into_iter()
        .filter(|l| !l.starts_with('{'))
        .collect();
    assert!(
        text.len() == 1
            && text[0].starts_with("error: ")
            && text[0].contains("both /etc and /usr/etc"),
        "text besides the JSON: {text:?}"
    );
}

/// Committing counts the files it compresses: with `--progress=json`, a
/// last `commit` line with every file done.
#[test]
fn a_commit_counts_its_files_up_to_the_total() {
    let f = ComposeDir::new();
    for i in 0..30 {
        write(&f.p(&format!("dir/usr/share/f{i}")), &format!("{i}\n"));
    }
    let repo = f.p("repo");
    let dir = f.p("dir");
    let out = hostctl_run(&[
        "compose",
        "commit",
        "--progress=json",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        "r",
        dir.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines = json_lines(&err);
    let last = lines
        .iter()
        .rfind(|v| v["stage"] == "commit")
        .unwrap_or_else(|| panic!("no commit line:\n{err}"));
    assert_eq!(last["finished"], true, "{last}");
    assert_eq!((&last["done"], &last["total"]), (&30.into(), &30.into()));
}

/// Off a terminal: plain `Receiving:` lines, never a carriage return.
fn assert_plain_progress(err: &str) {
    assert!(
        !err.contains('\r'),
        "a carriage return off a terminal:\n{err:?}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("Receiving: ")),
        "no plain progress line:\n{err}"
    );
}

/// A compose counts the packages it downloads: a cache seeded with every
/// package the shared test cache holds but `hello`, so that at least that
/// one comes from the mirror. The step line names how many, the JSON
/// `download` lines count up to that total, and it is the number of new
/// files apt left in the cache (counted here, not by hostctl).
/// Costs an `apt update` into a fresh cache and an mmdebstrap run.
#[test]
fn package_downloads_count_up_to_the_packages_missing_from_the_cache() {
    let f = ComposeDir::new();
    let cache = f.p("cache");
    let archives = cache.join("archives");
    fs::create_dir_all(&archives).unwrap();
    let shared = std::env::var_os("HOSTCTL_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/hostctl-test".into())
        .join("archives");
    let mut seeded = std::collections::BTreeSet::new();
    for e in fs::read_dir(&shared).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") && !name.starts_with("hello_") {
            fs::copy(e.path(), archives.join(&name)).unwrap();
            seeded.insert(name);
        }
    }
    // The smallest package set: no kernel, so the compose stops once the
    // tree is built (a tree that cannot boot is refused), after the
    // downloads this test is about.
    let tf = f.treefile(
        "t.toml",
        "ref = \"test/download\"\nvariant = \"essential\"\npackages = [\"hello\"]\n",
    );
    let out = hostctl_run(&[
        "compose",
        "tree",
        "--progress=json",
        "--repo",
        f.repo().to_str().unwrap(),
        "--cachedir",
        cache.to_str().unwrap(),
        tf.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: the tree has no kernel"), "{err}");
    assert_eq!(rev_parse(&f.repo(), "test/download"), None);
    let lines = json_lines(&err);
    let announced = lines
        .iter()
        .filter_map(|v| v["step"].as_str())
        .find(|s| s.starts_with("Downloading "))
        .unwrap_or_else(|| panic!("no download step:\n{err}"))
        .to_string();
    let counts: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["stage"] == "download").collect();
    let last = counts
        .last()
        .unwrap_or_else(|| panic!("no download count:\n{err}"));
    let total = last["total"].as_u64().unwrap();
    assert_eq!(last["finished"], true, "{last}");
    assert_eq!(last["done"], total, "{last}");
    let mut done = 0;
    for v in &counts {
        assert_eq!(v["total"], total, "{v}");
        let d = v["done"].as_u64().unwrap();
        assert!(d >= done && d <= total, "the count went back or past: {v}");
        done = d;
    }
    let new: Vec<String> = fs::read_dir(&archives)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb") && !seeded.contains(n))
        .collect();
    assert!(
        new.iter().any(|n| n.starts_with("hello_")),
        "hello was not downloaded: {new:?}"
    );
    assert_eq!(total, new.len() as u64, "downloaded: {new:?}");
    assert!(
        announced.starts_with(&format!("Downloading {total} packages (")),
        "{announced}"
    );
}
