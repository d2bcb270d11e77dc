//! Bad input on the host side, tried as a hostile or careless operator
//! would (issue 9): kernel arguments that would corrupt the boot entries,
//! corrupted objects in a local remote, sysroots that are not filesystems of
//! their own, failed deployment writes. Each case checks that the command
//! fails with a message naming what was wrong, and that the sysroot is
//! byte-for-byte as it was (or, where it succeeds, that what boots is what
//! was asked for).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const T0: u64 = 1_700_000_000;

/// A failure must be an error exit, not a crash: a signal (SIGSEGV) is
/// what left hosts with no boot entries.
fn assert_clean_failure(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit status 1, got {} \n{}",
        out.status,
        stderr(out)
    );
}

fn deploy_dirs(sysroot: &Path) -> Vec<String> {
    let dir = sysroot.join("ostree/deploy/debian/deploy");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const BAD_KARGS: &[(&str, &str)] = &[
    ("foo=1\nbar", "control character"),
    ("a=1\rb", "control character"),
    ("tab\there", "control character"),
    ("esc=\x1b[0m", "control character"),
    ("del=\x7f", "control character"),
    ("foo=\"unbalanced", "quote"),
    ("foo=bar baz", "space"),
    (" lead", "space"),
    ("x=\"a b\" y", "space"),
    ("", "empty"),
];

#[test]
fn bad_kernel_arguments_are_refused_before_anything_is_written() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &["quiet"]);
    let before = fingerprint(fx.sysroot());
    for (arg, why) in BAD_KARGS {
        for verb in ["--append", "--replace"] {
            if verb == "--replace" && !arg.contains('=') {
                continue;
            }
            let out = hostctl(fx.sysroot(), &["kargs", verb, arg]);
            assert_clean_failure(&out, &format!("kargs {verb} {arg:?}"));
            assert!(
                stderr(&out).contains(why),
                "kargs {verb} {arg:?}: message should say {why:?}: {}",
                stderr(&out)
            );
            assert_same(
                &before,
                &fingerprint(fx.sysroot()),
                &format!("kargs {verb} {arg:?}"),
            );
        }
    }
    // The host still works afterwards, seen by ostree itself.
    assert_eq!(fx.admin_status().len(), 1);
    assert_eq!(hostctl_ok(fx.sysroot(), &["kargs"]).trim(), "quiet");
    fsck(fx.sysroot());

    // The same arguments given to install change nothing either.
    let other = LoopMount::new(256);
    let before = fingerprint(&other.mountpoint);
    let url = fx.build.url();
    for (arg, why) in BAD_KARGS {
        let out = hostctl(
            &other.mountpoint,
            &["install", "--repo", &url, "--ref", "stable", "--karg", arg],
        );
        assert_clean_failure(&out, &format!("install --karg {arg:?}"));
        assert!(
            stderr(&out).contains(why),
            "install --karg {arg:?}: {}",
            stderr(&out)
        );
        assert_same(
            &before,
            &fingerprint(&other.mountpoint),
            &format!("install --karg {arg:?}"),
        );
    }
}

#[test]
fn a_quoted_argument_with_spaces_stays_one_argument() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &["quiet", "dyndbg=\"file x.c +p\""]);
    let options = || bls_entries(fx.sysroot())[0]["options"].clone();
    assert!(
        options().contains("dyndbg=\"file x.c +p\""),
        "{}",
        options()
    );
    hostctl_ok(fx.sysroot(), &["kargs", "--append", "foo=\"bar baz\""]);
    assert!(options().contains(" foo=\"bar baz\""), "{}", options());
    assert_eq!(
        hostctl_ok(fx.sysroot(), &["kargs"]).trim(),
        "quiet dyndbg=\"file x.c +p\" foo=\"bar baz\""
    );
    // The argument is one word to every rule: delete by its key finds it.
    hostctl_ok(fx.sysroot(), &["kargs", "--delete", "foo"]);
    hostctl_ok(
        fx.sysroot(),
        &["kargs", "--delete", "dyndbg=\"file x.c +p\""],
    );
    assert_eq!(hostctl_ok(fx.sysroot(), &["kargs"]).trim(), "quiet");
    assert!(!options().contains("bar baz"), "{}", options());
    fsck(fx.sysroot());
}

#[test]
fn a_corrupt_object_in_a_local_remote_is_refused() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    let before = fingerprint(fx.sysroot());
    let mut f2 = base_files("2.0");
    f2.insert("usr/share/corrupt-me".into(), "original content\n".into());
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &f2);
    fx.build.corrupt_object(&c2, "/usr/share/corrupt-me");
    // The ostree CLI sees the damage on the server side...
    let server_fsck = Command::new("ostree")
        .arg(format!("--repo={}", fx.build.path.display()))
        .arg("fsck")
        .output()
        .unwrap();
    assert!(
        !server_fsck.status.success(),
        "the corruption went unnoticed"
    );
    // ...and hostctl refuses to pull it over file://.
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert_clean_failure(&out, "upgrade with a corrupt object");
    assert!(
        stderr(&out).contains("checksum") || stderr(&out).contains("Corrupted"),
        "{}",
        stderr(&out)
    );
    assert_same(
        &boot_state(&before),
        &boot_state(&fingerprint(fx.sysroot())),
        "a pull of a corrupt object",
    );
    fsck(fx.sysroot());

    // A new install from the damaged repository is refused as well.
    let other = LoopMount::new(256);
    let before = fingerprint(&other.mountpoint);
    let url = fx.build.url();
    let out = hostctl(
        &other.mountpoint,
        &["install", "--repo", &url, "--ref", "stable"],
    );
    assert_clean_failure(&out, "install with a corrupt object");
    assert_same(
        &before,
        &fingerprint(&other.mountpoint),
        "an install of a corrupt commit",
    );
}

#[test]
fn install_refuses_a_sysroot_that_is_not_a_mount_point() {
    let build = BuildRepo::new();
    build.commit("stable", "1.0", T0, &base_files("1.0"));
    let url = build.url();
    let scratch = tempfile::tempdir().unwrap();
    let missing: PathBuf = scratch.path().join("does/not/exist");
    let out = hostctl(&missing, &["install", "--repo", &url, "--ref", "stable"]);
    assert_clean_failure(&out, "install into a missing directory");
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!missing.exists() && !scratch.path().join("does").exists());

    // A plain directory on the machine's own filesystem: deploying there
    // would freeze that filesystem.
    let plain = scratch.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let out = hostctl(&plain, &["install", "--repo", &url, "--ref", "stable"]);
    assert_clean_failure(&out, "install into a plain directory");
    assert!(stderr(&out).contains("mount point"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 0);
}

#[test]
fn a_failed_deployment_write_leaves_no_half_made_deployment() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    // A tree without a kernel: libostree refuses it after checking it out.
    let mut nokernel = base_files("9.0");
    nokernel.retain(|k, _| !k.starts_with("usr/lib/modules/"));
    fx.build
        .commit_raw("nokernel", "9.0", T0 + 100, &deployable(&nokernel), &[]);
    let before = fingerprint(fx.sysroot());
    let dirs = deploy_dirs(fx.sysroot());
    for _ in 0..3 {
        let out = hostctl(fx.sysroot(), &["rebase", "origin:nokernel"]);
        assert_clean_failure(&out, "rebase to a tree without a kernel");
        assert!(stderr(&out).contains("kernel"), "{}", stderr(&out));
        assert_eq!(deploy_dirs(fx.sysroot()), dirs, "half-made deployment left");
    }
    assert_same(
        &boot_state(&before),
        &boot_state(&fingerprint(fx.sysroot())),
        "a failed rebase",
    );
    fsck(fx.sysroot());
    // The next operation works.
    fx.build
        .commit("stable", "2.0", T0 + 200, &base_files("2.0"));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].version.as_deref(), Some("2.0"));
}

/// Probe repositories of killed runs do not pile up in the temporary
/// directory: the next run removes those whose owner is gone.
#[test]
fn probe_directories_of_a_killed_run_are_removed_by_the_next_run() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let probes = || -> Vec<String> {
        fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("hostctl-probe-"))
            .collect()
    };
    // A remote that accepts connections and never answers holds the probe.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let repo_config = fx.sysroot().join("ostree/repo/config");
    let config = fs::read_to_string(&repo_config).unwrap();
    let hung = config.replace(&fx.build.url(), &format!("http://127.0.0.1:{port}/repo"));
    assert_ne!(config, hung);
    fs::write(&repo_config, &hung).unwrap();
    let mut child = Command::new(hostctl_bin())
        .arg("--sysroot")
        .arg(fx.sysroot())
        .args(["upgrade", "--check"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while probes().is_empty() && waited < 100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(probes().len(), 1, "the killed run made no probe directory");

    fs::write(&repo_config, &config).unwrap();
    let out = Command::new(hostctl_bin())
        .arg("--sysroot")
        .arg(fx.sysroot())
        .args(["upgrade", "--check"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(probes().is_empty(), "left behind: {:?}", probes());
}

#[test]
fn a_truncated_summary_is_named_in_the_error() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    fx.build
        .commit("stable", "2.0", T0 + 100, &base_files("2.0"));
    sh(Command::new("ostree")
        .arg(format!("--repo={}", fx.build.path.display()))
        .args(["summary", "-u"]));
    let summary = fx.build.path.join("summary");
    let bytes = fs::read(&summary).unwrap();
    fs::write(&summary, &bytes[..bytes.len() / 2]).unwrap();
    let before = fingerprint(fx.sysroot());
    for args in [&["upgrade", "--check"][..], &["upgrade"][..]] {
        let out = hostctl(fx.sysroot(), args);
        assert_clean_failure(&out, "upgrade with a truncated summary");
        assert!(
            stderr(&out).contains("summary") && stderr(&out).contains(&fx.build.url()),
            "{}",
            stderr(&out)
        );
        assert_same(&before, &fingerprint(fx.sysroot()), "a truncated summary");
    }
}

/// Disk full while libostree checks the new deployment out (the commit is
/// already downloaded): each attempt used to leave its `<checksum>.N`.
#[test]
fn a_full_disk_during_checkout_leaves_no_half_made_deployment() {
    let fx = Fixture::with_size(160);
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    let mut f2 = base_files("2.0");
    for i in 0..200 {
        f2.insert(format!("usr/share/many/dir{i}/file"), format!("{i}\n"));
    }
    fx.build.commit("stable", "2.0", T0 + 100, &f2);
    hostctl_ok(fx.sysroot(), &["upgrade", "--download-only"]);
    let dirs = deploy_dirs(fx.sysroot());
    let filler = fx.sysroot().join("filler");
    // Fill every free block, then every free inode-bearing block we can.
    let _ = Command::new("fallocate")
        .args(["-l", "1G"])
        .arg(&filler)
        .status();
    let free_mb = {
        let out = sh(Command::new("df")
            .args(["--output=avail", "-m"])
            .arg(fx.sysroot()));
        out.lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    if free_mb > 0 {
        let _ = Command::new("fallocate")
            .args(["-l", &format!("{}M", free_mb + 1)])
            .arg(fx.sysroot().join("filler2"))
            .status();
    }
    let mut n = 0;
    while fs::write(fx.sysroot().join(format!("fill-{n}")), "x".repeat(4096)).is_ok() {
        n += 1;
    }
    // Leave a few blocks free so that the checkout starts, makes its
    // directory and runs out of space half way through the tree.
    for i in 0..n.min(24) {
        fs::remove_file(fx.sysroot().join(format!("fill-{i}"))).unwrap();
    }
    let before = boot_state(&fingerprint(fx.sysroot()));
    for _ in 0..3 {
        let out = hostctl(fx.sysroot(), &["upgrade"]);
        assert_clean_failure(&out, "upgrade on a full disk");
        let err = stderr(&out);
        assert!(err.contains("No space left"), "cause not named: {err}");
        assert!(!err.contains("left in place"), "claims a leftover: {err}");
        assert_eq!(deploy_dirs(fx.sysroot()), dirs, "half-made deployment left");
    }
    assert_same(
        &before,
        &boot_state(&fingerprint(fx.sysroot())),
        "an upgrade on a full disk",
    );
    for e in fs::read_dir(fx.sysroot()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("fill") {
            fs::remove_file(fx.sysroot().join(name)).unwrap();
        }
    }
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].version.as_deref(), Some("2.0"));
    fsck(fx.sysroot());
}
