//! The host verbs on sysroots in loop-mounted ext4 images, checked with
//! `ostree admin status`, `ostree fsck`, the BLS entry files and the
//! deployment directories as well as with hostctl itself.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const T0: u64 = 1_700_000_000;

fn v_files(version: &str) -> Files {
    base_files(version)
}

fn has_commit(sysroot: &Path, checksum: &str) -> bool {
    Command::new("ostree")
        .arg(format!("--repo={}", sysroot.join("ostree/repo").display()))
        .args(["show", checksum])
        .output()
        .unwrap()
        .status
        .success()
}

/// The deployment directory the default BLS entry boots, found by following
/// its `ostree=` argument the way the initramfs does.
fn default_entry_target(sysroot: &Path) -> std::path::PathBuf {
    let entries = bls_entries(sysroot);
    let options = &entries[0]["options"];
    let ostree_arg = options
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))
        .expect("ostree= in the default entry");
    fs::canonicalize(sysroot.join(ostree_arg.trim_start_matches('/'))).unwrap()
}

#[test]
fn upgrade_merges_etc_keeps_var_and_status_agrees_with_ostree() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &["quiet"]);
    let st = fx.admin_status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].checksum, c1);
    assert_eq!(st[0].refspec.as_deref(), Some("origin:stable"));

    // Local changes: edit, add, delete in /etc; data in /var.
    let d1 = fx.default_dir();
    fs::write(d1.join("etc/app/app.conf"), "setting=local\n").unwrap();
    fs::write(d1.join("etc/local.conf"), "mine\n").unwrap();
    fs::remove_file(d1.join("etc/motd")).unwrap();
    let var = fx.sysroot().join("ostree/deploy/debian/var");
    fs::create_dir_all(var.join("lib/app")).unwrap();
    fs::write(var.join("lib/app/state"), "precious\n").unwrap();

    // v2 changes another /etc default, a /usr file, adds one.
    let mut f2 = v_files("2.0");
    f2.insert("etc/app/keep.conf".into(), "keep=v2-default\n".into());
    f2.insert("etc/app/app.conf".into(), "setting=2\n".into());
    f2.insert("usr/share/new/file".into(), "new in 2\n".into());
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &f2);

    let preview = hostctl_ok(fx.sysroot(), &["upgrade", "--preview"]);
    assert!(preview.contains("A /usr/share/new/file"), "{preview}");
    assert!(preview.contains("M /usr/bin/tool"), "{preview}");
    assert!(preview.contains("M /usr/etc/app/keep.conf"), "{preview}");
    assert!(!preview.contains("/usr/share/doc/test/README"), "{preview}");
    assert_eq!(fx.admin_status().len(), 1, "preview must not deploy");

    let out = hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert!(out.contains("2.0"), "{out}");

    let st = fx.admin_status();
    assert_eq!(st.len(), 2);
    assert_eq!(st[0].checksum, c2);
    assert_eq!(st[1].checksum, c1);
    let d2 = deployment_dir(fx.sysroot(), &st[0]);
    assert_eq!(
        default_entry_target(fx.sysroot()),
        fs::canonicalize(&d2).unwrap()
    );
    assert_eq!(
        fs::read_to_string(d2.join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho tool 2.0\n"
    );
    assert!(d2.join("usr/share/new/file").exists());
    // Three-way merge: local edit wins, addition kept, deletion kept,
    // untouched file takes the new default.
    assert_eq!(
        fs::read_to_string(d2.join("etc/app/app.conf")).unwrap(),
        "setting=local\n"
    );
    assert_eq!(
        fs::read_to_string(d2.join("etc/local.conf")).unwrap(),
        "mine\n"
    );
    assert!(!d2.join("etc/motd").exists());
    assert_eq!(
        fs::read_to_string(d2.join("etc/app/keep.conf")).unwrap(),
        "keep=v2-default\n"
    );
    assert!(fs::read_to_string(d2.join("etc/os-release"))
        .unwrap()
        .contains("VERSION_ID=2.0"));
    // /var is shared and untouched.
    assert_eq!(
        fs::read_to_string(var.join("lib/app/state")).unwrap(),
        "precious\n"
    );
    // The old deployment is as it was.
    assert_eq!(
        fs::read_to_string(d1.join("etc/app/app.conf")).unwrap(),
        "setting=local\n"
    );
    assert_eq!(bls_entries(fx.sysroot()).len(), 2);
    assert!(bls_entries(fx.sysroot())[0]["options"].contains("quiet"));

    // hostctl's JSON agrees with ostree's own view.
    let json = status_json(fx.sysroot());
    let deps = json["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), st.len());
    for (j, a) in deps.iter().zip(&st) {
        assert_eq!(j["checksum"], a.checksum.as_str());
        assert_eq!(j["serial"], a.serial);
        assert_eq!(j["osname"], a.osname.as_str());
        assert_eq!(j["id"], format!("{}-{}.{}", a.osname, a.checksum, a.serial));
        assert_eq!(j["version"].as_str(), a.version.as_deref());
        assert_eq!(j["origin"].as_str(), a.refspec.as_deref());
        assert_eq!(j["pinned"], a.pinned);
        assert_eq!(j["booted"], false);
        assert_eq!(j["staged"], false);
    }
    assert_eq!(deps[0]["default"], true);
    assert_eq!(deps[1]["rollback"], true);
    assert_eq!(deps[0]["timestamp"], T0 + 100);
    let text = hostctl_ok(fx.sysroot(), &["status"]);
    assert!(text.contains("0 debian origin:stable (default)"), "{text}");
    assert!(text.contains("1 debian origin:stable (rollback)"), "{text}");
    fsck(fx.sysroot());
}

#[test]
fn rollback_deploy_by_version_and_checksum_and_rebase() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    fs::write(fx.default_dir().join("etc/local.conf"), "mine\n").unwrap();
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    let c3 = fx.build.commit("stable", "3.0", T0 + 200, &v_files("3.0"));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c3);

    hostctl_ok(fx.sysroot(), &["rollback"]);
    let st = fx.admin_status();
    assert_eq!(st[0].checksum, c1, "rollback makes v1 the default");
    assert_eq!(st[1].checksum, c3);
    assert_eq!(
        default_entry_target(fx.sysroot()),
        fs::canonicalize(fx.default_dir()).unwrap()
    );
    // Rolling back again returns to v3.
    hostctl_ok(fx.sysroot(), &["rollback"]);
    assert_eq!(fx.admin_status()[0].checksum, c3);
    hostctl_ok(fx.sysroot(), &["rollback"]);

    // Deploy by version (newer than the v1 default).
    hostctl_ok(fx.sysroot(), &["deploy", "2.0"]);
    let st = fx.admin_status();
    assert_eq!(st[0].checksum, c2);
    assert_eq!(st[0].version.as_deref(), Some("2.0"));
    assert_eq!(
        fs::read_to_string(fx.default_dir().join("etc/local.conf")).unwrap(),
        "mine\n"
    );
    // Deploy by checksum prefix.
    hostctl_ok(fx.sysroot(), &["deploy", &c3[..10]]);
    assert_eq!(fx.admin_status()[0].checksum, c3);
    // Going back to v1 is a downgrade.
    let out = hostctl(fx.sysroot(), &["deploy", "1.0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--allow-downgrade"),
        "{}",
        stderr(&out)
    );
    hostctl_ok(fx.sysroot(), &["deploy", "1.0", "--allow-downgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c1);
    let out = hostctl(fx.sysroot(), &["deploy", "9.9"]);
    assert!(
        !out.status.success(),
        "deploying the nonexistent version 9.9 succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("9.9"), "{}", stderr(&out));
    assert_eq!(
        fx.admin_status()[0].checksum,
        c1,
        "deploy 9.9 changed the default"
    );

    // Rebase to another ref, keeping /etc changes.
    let mut other = v_files("10.0");
    other.insert("usr/share/other-branch".into(), "yes\n".into());
    let co = fx.build.commit("testing", "10.0", T0 + 300, &other);
    hostctl_ok(fx.sysroot(), &["rebase", "testing"]);
    let st = fx.admin_status();
    assert_eq!(st[0].checksum, co);
    assert_eq!(st[0].refspec.as_deref(), Some("origin:testing"));
    let d = fx.default_dir();
    assert!(d.join("usr/share/other-branch").exists());
    assert_eq!(
        fs::read_to_string(d.join("etc/local.conf")).unwrap(),
        "mine\n"
    );
    let origin = fs::read_to_string(format!("{}.origin", d.display())).unwrap();
    assert!(origin.contains("refspec=origin:testing"), "{origin}");
    // Upgrades now follow the new ref.
    let co2 = fx
        .build
        .commit("testing", "10.1", T0 + 400, &v_files("10.1"));
    fx.build.commit("stable", "4.0", T0 + 500, &v_files("4.0"));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, co2);
    fsck(fx.sysroot());
}

#[test]
fn kargs_edits_show_up_in_the_default_entry() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &["quiet", "console=tty0", "loglevel=3"]);
    let options = || bls_entries(fx.sysroot())[0]["options"].clone();
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert!(words(&options()).contains(&"loglevel=3".to_string()));
    assert_eq!(
        hostctl_ok(fx.sysroot(), &["kargs"]).trim(),
        "quiet console=tty0 loglevel=3"
    );

    hostctl_ok(fx.sysroot(), &["kargs", "--append", "foo=bar"]);
    assert!(
        words(&options()).contains(&"foo=bar".to_string()),
        "{}",
        options()
    );
    hostctl_ok(fx.sysroot(), &["kargs", "--delete", "quiet"]);
    assert!(
        !words(&options()).contains(&"quiet".to_string()),
        "{}",
        options()
    );
    hostctl_ok(fx.sysroot(), &["kargs", "--replace", "loglevel=7"]);
    let o = words(&options());
    assert!(o.contains(&"loglevel=7".to_string()) && !o.contains(&"loglevel=3".to_string()));
    // The entry still boots a deployment of the same commit.
    assert_eq!(
        default_entry_target(fx.sysroot()),
        fs::canonicalize(fx.default_dir()).unwrap()
    );
    let json = status_json(fx.sysroot());
    let kargs: Vec<&str> = json["deployments"][0]["kargs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(kargs.contains(&"foo=bar") && kargs.contains(&"loglevel=7"));

    // Deleting what is not there fails and changes nothing.
    let before = fingerprint(fx.sysroot());
    let out = hostctl(fx.sysroot(), &["kargs", "--delete", "nosuch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "a failed kargs --delete",
    );

    // The arguments carry over to an upgrade.
    fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(
        hostctl_ok(fx.sysroot(), &["kargs"]).trim(),
        "console=tty0 loglevel=7 foo=bar"
    );
}

#[test]
fn pinned_deployment_survives_upgrades_and_retention_is_bounded() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    hostctl_ok(fx.sysroot(), &["pin", "0"]);
    assert!(fx.admin_status()[0].pinned);

    let mut commits = vec![c1.clone()];
    for n in 2..=4u64 {
        let v = format!("{n}.0");
        commits.push(fx.build.commit("stable", &v, T0 + n * 100, &v_files(&v)));
        hostctl_ok(fx.sysroot(), &["upgrade"]);
        let st = fx.admin_status();
        // New default, its rollback, and the pinned v1: never more.
        assert!(st.len() <= 3, "{st:?}");
        assert_eq!(st[0].checksum, commits[n as usize - 1]);
        assert!(st.iter().any(|e| e.checksum == c1 && e.pinned), "{st:?}");
    }
    let st = fx.admin_status();
    let ids: Vec<&str> = st.iter().map(|e| e.checksum.as_str()).collect();
    assert_eq!(
        ids,
        vec![commits[3].as_str(), commits[2].as_str(), c1.as_str()]
    );
    // v2's deployment directory and its commit are gone.
    let deploy_root = fx.sysroot().join("ostree/deploy/debian/deploy");
    let dirs: Vec<String> = fs::read_dir(&deploy_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".origin"))
        .collect();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    assert!(!dirs.iter().any(|d| d.starts_with(&commits[1])));
    assert!(
        !has_commit(fx.sysroot(), &commits[1]),
        "v2 objects were not pruned"
    );
    assert_eq!(bls_entries(fx.sysroot()).len(), 3);
    let json = status_json(fx.sysroot());
    assert_eq!(json["deployments"][2]["pinned"], true);

    // Once unpinned, the next upgrade collects it.
    hostctl_ok(fx.sysroot(), &["pin", "2", "--unpin"]);
    commits.push(fx.build.commit("stable", "5.0", T0 + 500, &v_files("5.0")));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    let st = fx.admin_status();
    assert_eq!(st.len(), 2);
    assert!(!st.iter().any(|e| e.checksum == c1));
    assert!(!has_commit(fx.sysroot(), &c1));
    fsck(fx.sysroot());
}

#[test]
fn cleanup_removes_rollback_and_prunes() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    let out = hostctl_ok(fx.sysroot(), &["upgrade", "--download-only"]);
    assert!(out.contains("not deployed"), "{out}");
    assert!(has_commit(fx.sysroot(), &c2));
    assert_eq!(fx.admin_status().len(), 1);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status().len(), 2);
    // Nothing is pending on an unbooted sysroot.
    hostctl_ok(fx.sysroot(), &["cleanup", "--pending"]);
    assert_eq!(fx.admin_status().len(), 2);
    hostctl_ok(fx.sysroot(), &["cleanup", "--rollback"]);
    let st = fx.admin_status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].checksum, c2);
    assert!(!has_commit(fx.sysroot(), &c1));
    assert_eq!(bls_entries(fx.sysroot()).len(), 1);
    let out = hostctl(fx.sysroot(), &["rollback"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no rollback deployment"),
        "{}",
        stderr(&out)
    );
    fsck(fx.sysroot());
}

#[test]
fn refused_and_failed_operations_leave_the_sysroot_byte_for_byte_unchanged() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    fs::write(fx.default_dir().join("etc/local.conf"), "mine\n").unwrap();
    let before = fingerprint(fx.sysroot());

    // No update: exit 0, or 77 when asked.
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No update"));
    let out = hostctl(fx.sysroot(), &["upgrade", "--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(77));
    // The same in JSON, with the same exit statuses: the deployed commit
    // is the ref's head.
    let deployed = rev_parse(&fx.build.path, "stable").expect("the build ref");
    for (args, code) in [
        (&["upgrade", "--check", "--json"][..], 0),
        (
            &["upgrade", "--check", "--json", "--unchanged-exit-77"][..],
            77,
        ),
        (&["upgrade", "--preview", "--json"][..], 0),
    ] {
        let out = hostctl(fx.sysroot(), args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let j = json_only(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(j["update_available"], false, "{args:?}: {j}");
        assert_eq!(j["downgrade"], false, "{args:?}: {j}");
        assert_eq!(j["from"]["checksum"], deployed.as_str(), "{j}");
        assert_eq!(j["to"]["checksum"], deployed.as_str(), "{j}");
        assert_eq!(j["from"]["version"], "2.0", "{j}");
        assert_eq!(j["from"]["deployment"], 0, "{j}");
        assert_eq!(j["to"]["deployment"], serde_json::Value::Null, "{j}");
    }
    // --json only reports: without --check or --preview it is a usage error.
    for args in [
        &["upgrade", "--json"][..],
        &["upgrade", "--json", "--download-only"],
    ] {
        let out = hostctl(fx.sysroot(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains("--check"), "{}", stderr(&out));
    }
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "an upgrade without update",
    );

    // --check and --preview of a real update do not touch the sysroot.
    let c3 = fx.build.commit("stable", "3.0", T0 + 200, &v_files("3.0"));
    let out = hostctl_ok(fx.sysroot(), &["upgrade", "--check"]);
    assert!(out.contains(&c3) && out.contains("3.0"), "{out}");
    hostctl_ok(fx.sysroot(), &["upgrade", "--preview"]);
    let head = rev_parse(&fx.build.path, "stable").expect("the build ref");
    for args in [
        &["upgrade", "--check", "--json"][..],
        &["upgrade", "--preview", "--json"],
    ] {
        let j = json_only(&hostctl_ok(fx.sysroot(), args));
        assert_eq!(j["update_available"], true, "{args:?}: {j}");
        assert_eq!(j["downgrade"], false, "{j}");
        assert_eq!(j["from"]["checksum"], deployed.as_str(), "{j}");
        assert_eq!(j["to"]["checksum"], head.as_str(), "{j}");
        assert_eq!(j["to"]["version"], "3.0", "{j}");
        // --check says nothing of the changes; --preview does.
        let preview = args.contains(&"--preview");
        assert_eq!(j.get("files").is_some(), preview, "{args:?}: {j}");
        assert_eq!(j.get("packages").is_some(), preview, "{args:?}: {j}");
    }
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "upgrade --check/--preview",
    );

    // A head older than the deployed commit is refused.
    fx.build.commit("stable", "0.0", T0 + 50, &v_files("0.0"));
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("older"), "{}", stderr(&out));
    // Also when only checked: an error, no JSON; with --allow-downgrade a
    // downgrade is available.
    let out = hostctl(fx.sysroot(), &["upgrade", "--check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("older"), "{}", stderr(&out));
    let j = json_only(&hostctl_ok(
        fx.sysroot(),
        &["upgrade", "--check", "--json", "--allow-downgrade"],
    ));
    assert_eq!(j["update_available"], true, "{j}");
    assert_eq!(j["downgrade"], true, "{j}");
    assert_eq!(j["to"]["version"], "0.0", "{j}");
    assert_same(&before, &fingerprint(fx.sysroot()), "a refused downgrade");

    // A missing ref.
    let out = hostctl(fx.sysroot(), &["rebase", "origin:no/such/ref"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no/such/ref"), "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "a rebase to a missing ref",
    );
    // A missing remote.
    let out = hostctl(fx.sysroot(), &["rebase", "nosuchremote:stable"]);
    assert!(
        !out.status.success(),
        "rebase to a missing remote succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("nosuchremote"),
        "the error does not name the missing remote: {}",
        stderr(&out)
    );
    assert_eq!(error_lines(&out).len(), 1, "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "a rebase to a missing remote",
    );
    let out = hostctl(fx.sysroot(), &["deploy", "7.7"]);
    assert!(!out.status.success());
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "deploying an unknown version",
    );

    // An unreachable repository.
    let moved = fx.build.path.with_extension("gone");
    fs::rename(&fx.build.path, &moved).unwrap();
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    fs::rename(&moved, &fx.build.path).unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("origin"), "{}", stderr(&out));
    assert_eq!(error_lines(&out).len(), 1, "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "an upgrade from an unreachable repo",
    );
    fsck(fx.sysroot());
}

/// Holds libostree's sysroot lock the way libostree takes it (an
/// open-file-description write lock on `ostree/lock`, which libostree
/// removes when it lets go, so it may have to be created) until dropped.
struct SysrootLock {
    _held: fs::File,
}

impl SysrootLock {
    fn take(sysroot: &Path) -> SysrootLock {
        let path = sysroot.join("ostree/lock");
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let fl = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        let rc = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::F_OFD_SETLK,
                &fl,
            )
        };
        assert_eq!(
            rc,
            0,
            "taking the lock on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        SysrootLock { _held: lock }
    }
}

/// `hostctl --sysroot S upgrade` in the background, its stderr going to a
/// file that can be read while it runs.
fn spawn_upgrade(sysroot: &Path, stderr_file: &Path) -> std::process::Child {
    Command::new(hostctl_bin())
        .arg("--sysroot")
        .arg(sysroot)
        .arg("upgrade")
        .stdout(std::process::Stdio::piped())
        .stderr(fs::File::create(stderr_file).unwrap())
        .spawn()
        .unwrap()
}

const WAITING: &str = "Waiting for another operation";

/// Wait (at most a minute) until every file in `files` contains `what`.
fn wait_for_all(files: &[std::path::PathBuf], what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let texts: Vec<String> = files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap_or_default())
            .collect();
        if texts.iter().all(|t| t.contains(what)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every command said {what:?} within a minute; their stderr: {texts:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn two_upgrades_at_once_run_one_after_the_other() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    // Both upgrades start while the sysroot is locked, so they overlap for
    // certain: without the lock both would deploy (or trip over each other).
    let lock = SysrootLock::take(fx.sysroot());
    let logs = tempfile::tempdir().unwrap();
    let errs = [logs.path().join("a.err"), logs.path().join("b.err")];
    let a = spawn_upgrade(fx.sysroot(), &errs[0]);
    let b = spawn_upgrade(fx.sysroot(), &errs[1]);
    wait_for_all(&errs, WAITING);
    let st = fx.admin_status();
    assert_eq!(
        st.len(),
        1,
        "an upgrade deployed while the sysroot was locked: {st:?}"
    );
    assert!(
        !has_commit(fx.sysroot(), &c2),
        "an upgrade pulled into the sysroot while it was locked"
    );
    drop(lock);
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    for (o, e) in outs.iter().zip(&errs) {
        assert!(
            o.status.success(),
            "an upgrade failed ({}): {}",
            o.status,
            fs::read_to_string(e).unwrap()
        );
        assert_no_glib_noise(&fs::read_to_string(e).unwrap(), &"a concurrent upgrade");
    }
    let stdouts: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    let deployed = stdouts.iter().filter(|s| s.contains("Deployed")).count();
    let unchanged = stdouts.iter().filter(|s| s.contains("No update")).count();
    assert_eq!(
        (deployed, unchanged),
        (1, 1),
        "expected one upgrade to deploy and one to find no update: {stdouts:?}"
    );
    let st = fx.admin_status();
    let ids: Vec<&str> = st.iter().map(|e| e.checksum.as_str()).collect();
    assert_eq!(
        ids,
        vec![c2.as_str(), c1.as_str()],
        "deployments after two upgrades"
    );
    fsck(fx.sysroot());
}

#[test]
fn a_busy_sysroot_makes_the_next_operation_wait() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    let lock = SysrootLock::take(fx.sysroot());
    let child = Command::new(hostctl_bin())
        .arg("--sysroot")
        .arg(fx.sysroot())
        .arg("upgrade")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        fx.admin_status().len(),
        1,
        "upgrade ran while the sysroot was locked"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Waiting for another operation"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fx.admin_status()[0].checksum, c2);
}

#[test]
fn preview_lists_package_changes_and_new_system_users_survive_a_local_passwd() {
    let fx = Fixture::new();
    fx.build.commit_raw(
        "stable",
        "1.0",
        T0,
        &deployable(&v_files("1.0")),
        &["hostctl.packages=[('bash', '5.2-1', 'amd64'), ('gone', '1', 'all')]"],
    );
    fx.install("stable", &[]);
    let d1 = fx.default_dir();
    let mut passwd = fs::read_to_string(d1.join("etc/passwd")).unwrap();
    passwd.push_str("alice:x:1000:1000:Alice:/home/alice:/bin/sh\n");
    fs::write(d1.join("etc/passwd"), &passwd).unwrap();

    let mut f2 = deployable(&v_files("2.0"));
    f2.insert(
        "usr/lib/sysusers.d/newpkg.conf".into(),
        "u newsvc - \"New service\" /var/lib/newsvc\n".into(),
    );
    fx.build.commit_raw(
        "stable",
        "2.0",
        T0 + 100,
        &f2,
        &["hostctl.packages=[('bash', '5.2-2', 'amd64'), ('newpkg', '1.0', 'amd64')]"],
    );
    let out = hostctl_ok(fx.sysroot(), &["upgrade", "--preview"]);
    assert!(out.contains("Added (1):\n  newpkg 1.0 amd64"), "{out}");
    assert!(out.contains("Removed (1):\n  gone 1 all"), "{out}");
    assert!(
        out.contains("Upgraded (1):\n  bash 5.2-1 -> 5.2-2 amd64"),
        "{out}"
    );
    assert!(out.contains("A /usr/lib/sysusers.d/newpkg.conf"), "{out}");
    // The same changes in JSON, the package lists being the ones committed
    // above.
    let c1 = fx.admin_status()[0].checksum.clone();
    let c2 = rev_parse(&fx.build.path, "stable").expect("the build ref");
    let j = json_only(&hostctl_ok(
        fx.sysroot(),
        &["upgrade", "--preview", "--json"],
    ));
    assert_eq!(j["update_available"], true, "{j}");
    assert_eq!(j["from"]["checksum"], c1.as_str(), "{j}");
    assert_eq!(j["to"]["checksum"], c2.as_str(), "{j}");
    let newpkg = serde_json::json!({"name": "newpkg", "version": "1.0", "arch": "amd64"});
    let gone = serde_json::json!({"name": "gone", "version": "1", "arch": "all"});
    let bash_up = serde_json::json!({"name": "bash", "arch": "amd64", "old_version": "5.2-1", "new_version": "5.2-2"});
    let bash_down = serde_json::json!({"name": "bash", "arch": "amd64", "old_version": "5.2-2", "new_version": "5.2-1"});
    assert_eq!(
        j["packages"],
        serde_json::json!({"added": [newpkg], "removed": [gone], "upgraded": [bash_up], "downgraded": []}),
        "{j}"
    );
    assert_eq!(j["images"], serde_json::Value::Null, "{j}");
    let files_added = j["files"]["added"].as_array().expect("files.added");
    assert!(
        files_added.contains(&"usr/lib/sysusers.d/newpkg.conf".into()),
        "{j}"
    );
    // Every file the text lists is in the JSON, and no other.
    let text_files: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().split_once(" /"))
        .filter(|(mark, _)| ["A", "D", "M"].contains(mark))
        .map(|(mark, p)| format!("{mark} {p}"))
        .collect();
    let json_files: Vec<String> = [("A", "added"), ("D", "removed"), ("M", "modified")]
        .iter()
        .flat_map(|(mark, key)| {
            j["files"][key]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| format!("{mark} {}", p.as_str().unwrap()))
        })
        .collect();
    assert_eq!(text_files, json_files, "{out}\n{j}");

    hostctl_ok(fx.sysroot(), &["upgrade"]);
    let passwd = fs::read_to_string(fx.default_dir().join("etc/passwd")).unwrap();
    assert!(passwd.contains("alice:x:1000"), "{passwd}");
    assert!(passwd.lines().any(|l| l.starts_with("newsvc:")), "{passwd}");

    // The same changes, now between the two deployments (rollback -> default),
    // and reversed when asked the other way round.
    let db = hostctl_ok(fx.sysroot(), &["db", "diff"]);
    assert!(db.contains("Added (1):\n  newpkg 1.0 amd64"), "{db}");
    assert!(
        db.contains("Upgraded (1):\n  bash 5.2-1 -> 5.2-2 amd64"),
        "{db}"
    );
    let back = hostctl_ok(fx.sysroot(), &["db", "diff", "0", "1"]);
    assert!(
        back.contains("Downgraded (1):\n  bash 5.2-2 -> 5.2-1 amd64"),
        "{back}"
    );
    assert!(back.contains("Removed (1):\n  newpkg 1.0 amd64"), "{back}");
    // And in JSON: the deployments by index and checksum as `ostree admin
    // status` has them.
    let st = fx.admin_status();
    assert_eq!(
        (st[0].checksum.as_str(), st[1].checksum.as_str()),
        (c2.as_str(), c1.as_str())
    );
    let j = json_only(&hostctl_ok(fx.sysroot(), &["db", "diff", "--json"]));
    assert_eq!(
        (
            &j["from"]["deployment"],
            &j["from"]["checksum"],
            &j["from"]["version"]
        ),
        (&1.into(), &c1.as_str().into(), &"1.0".into()),
        "{j}"
    );
    assert_eq!(
        (
            &j["to"]["deployment"],
            &j["to"]["checksum"],
            &j["to"]["version"]
        ),
        (&0.into(), &c2.as_str().into(), &"2.0".into()),
        "{j}"
    );
    assert_eq!(
        j["packages"],
        serde_json::json!({"added": [newpkg], "removed": [gone], "upgraded": [bash_up], "downgraded": []}),
        "{j}"
    );
    assert_eq!(j["images"], serde_json::Value::Null, "{j}");
    assert!(j.get("files").is_none(), "{j}");
    let j = json_only(&hostctl_ok(
        fx.sysroot(),
        &["db", "diff", "--json", "0", "1"],
    ));
    assert_eq!(j["from"]["checksum"], c2.as_str(), "{j}");
    assert_eq!(
        j["packages"],
        serde_json::json!({"added": [gone], "removed": [newpkg], "upgraded": [], "downgraded": [bash_down]}),
        "{j}"
    );
}

#[test]
fn a_failed_install_leaves_the_directory_as_it_was() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fs::write(fx.sysroot().join("keep-me"), "x").unwrap();
    let before = fingerprint(fx.sysroot());
    let url = fx.build.url();
    let out = hostctl(
        fx.sysroot(),
        &["install", "--repo", &url, "--ref", "no/such/ref"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no/such/ref"), "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "an install of a missing ref",
    );
    let out = hostctl(
        fx.sysroot(),
        &[
            "install",
            "--repo",
            "file:///nonexistent/repo",
            "--ref",
            "stable",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/repo"),
        "{}",
        stderr(&out)
    );
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "an install from an unreachable repo",
    );
    // And a good install afterwards works.
    fx.install("stable", &[]);
    assert_eq!(fx.admin_status().len(), 1);
    assert!(fx.sysroot().join("keep-me").exists());
}

#[test]
fn a_corrupt_object_or_a_full_disk_leaves_deployments_entries_and_origins_alone() {
    let fx = Fixture::with_size(160);
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    let before = boot_state(&fingerprint(fx.sysroot()));

    // A content object of v2 is damaged on the server.
    let mut f2 = v_files("2.0");
    f2.insert("usr/share/corrupt-me".into(), "original content\n".into());
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &f2);
    let checksum = sh(Command::new("ostree")
        .arg(format!("--repo={}", fx.build.path.display()))
        .args(["ls", "-C", &c2, "/usr/share/corrupt-me"]));
    let content = checksum.split_whitespace().nth(4).unwrap().to_string();
    let objpath = fx
        .build
        .path
        .join(format!("objects/{}/{}.filez", &content[..2], &content[2..]));
    let mut bytes = fs::read(&objpath).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&objpath, bytes).unwrap();
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert!(!out.status.success());
    assert_eq!(error_lines(&out).len(), 1, "{}", stderr(&out));
    assert_same(
        &before,
        &boot_state(&fingerprint(fx.sysroot())),
        "a pull of a corrupt object",
    );

    // A full disk: v3 carries more than the sysroot filesystem has left.
    let mut f3 = v_files("3.0");
    let big: String = (0..(48u32 << 20) / 16)
        .map(|i| format!("{:015x}\n", i.wrapping_mul(2_654_435_761)))
        .collect();
    f3.insert("usr/share/big".into(), big);
    fx.build.commit("stable", "3.0", T0 + 200, &f3);
    let filler = fx.sysroot().join("filler");
    let free_mb = {
        let out = sh(Command::new("df")
            .args(["--output=avail", "-m"])
            .arg(fx.sysroot()));
        out.lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    sh(Command::new("fallocate")
        .args(["-l", &format!("{}M", free_mb.saturating_sub(30))])
        .arg(&filler));
    let before_full = boot_state(&fingerprint(fx.sysroot()));
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert!(!out.status.success(), "the upgrade fit after all");
    assert_eq!(error_lines(&out).len(), 1, "{}", stderr(&out));
    assert_same(
        &before_full,
        &boot_state(&fingerprint(fx.sysroot())),
        "an upgrade on a full disk",
    );
    fs::remove_file(&filler).unwrap();
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].version.as_deref(), Some("3.0"));
    fsck(fx.sysroot());
}

/// The build repository served over HTTP (Python's http.server, a plain
/// static file server like the ones repositories are published on).
struct HttpServer(std::process::Child, u16);

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let server = HttpServer(
            std::process::Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    &port.to_string(),
                ])
                .current_dir(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("starting python3 -m http.server"),
            port,
        );
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("http.server did not start");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn install_and_upgrade_over_http() {
    let fx = Fixture::new();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "build");
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    // Over a network, with keys, the ref comes only from a signed summary:
    // publish signs the head and the summary.
    let sign = ["--sign-key", secret.to_str().unwrap()];
    fx.build.publish(&sign);
    let server = HttpServer::serve(fx.build.path.parent().unwrap());
    let url = format!("http://127.0.0.1:{}/repo", server.1);
    fx.install_verified(&url, "stable", &public);
    assert_eq!(fx.admin_status()[0].checksum, c1);
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    fx.build.publish(&sign);
    let check = hostctl_ok(fx.sysroot(), &["upgrade", "--check"]);
    assert!(check.contains(&c2), "{check}");
    // The verified summary's message goes to stderr with --json: stdout is
    // the JSON alone.
    let out = hostctl(fx.sysroot(), &["upgrade", "--check", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Summary of origin is signed by"),
        "{}",
        stderr(&out)
    );
    let j = json_only(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(j["update_available"], true, "{j}");
    assert_eq!(j["to"]["checksum"], c2.as_str(), "{j}");
    assert_eq!(j["from"]["checksum"], c1.as_str(), "{j}");
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    let st = fx.admin_status();
    assert_eq!(st[0].checksum, c2);
    assert_eq!(st[1].checksum, c1);
    fsck(fx.sysroot());
    // The server going away is a clear failure that changes nothing.
    let before = fingerprint(fx.sysroot());
    drop(server);
    fx.build.commit("stable", "3.0", T0 + 200, &v_files("3.0"));
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("127.0.0.1"), "{}", stderr(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "an upgrade from a vanished server",
    );
}

#[test]
fn reboot_on_a_sysroot_that_is_not_running_is_skipped() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &[]);
    // A systemctl that only records that it was called, first in PATH: if
    // hostctl asked for a reboot, it would reach this and never the real one.
    let bin = tempfile::tempdir().unwrap();
    let called = bin.path().join("systemctl-called");
    let fake = bin.path().join("systemctl");
    fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", called.display()),
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    let co = fx.build.commit("testing", "5.0", T0 + 200, &v_files("5.0"));
    for (args, want) in [
        (&["upgrade", "--reboot"][..], c2.as_str()),
        (
            &["deploy", "1.0", "--allow-downgrade", "--reboot"][..],
            c1.as_str(),
        ),
        (&["kargs", "--append", "x=1", "--reboot"][..], c1.as_str()),
        (&["rebase", "testing", "--reboot"][..], co.as_str()),
        (&["rollback", "--reboot"][..], c1.as_str()),
        (&["rollback", "-r"][..], co.as_str()),
        (&["kargs", "--append", "y=1", "-r"][..], co.as_str()),
    ] {
        let out = run_hostctl(
            Command::new(hostctl_bin())
                .arg("--sysroot")
                .arg(fx.sysroot())
                .args(args)
                .env("PATH", &path),
        );
        assert!(
            !called.exists(),
            "{args:?} on an unbooted sysroot ran `systemctl {}`",
            fs::read_to_string(&called).unwrap_or_default().trim()
        );
        let stdout = ok(out);
        assert!(
            stdout.contains("Not rebooting"),
            "{args:?} did not say it skips the reboot: {stdout}"
        );
        assert_eq!(
            fx.admin_status()[0].checksum,
            want,
            "{args:?} did not make its commit the default"
        );
    }
}

#[test]
fn rpm_ostree_parity_flags_for_kargs_deploy_and_status() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &v_files("1.0"));
    fx.install("stable", &["quiet", "console=tty0"]);
    let kargs = || hostctl_ok(fx.sysroot(), &["kargs"]).trim().to_string();

    // Already there / already gone: unchanged, 77 when asked, nothing written.
    let before = fingerprint(fx.sysroot());
    for args in [
        &[
            "kargs",
            "--append-if-missing",
            "quiet",
            "--unchanged-exit-77",
        ][..],
        &[
            "kargs",
            "--delete-if-present",
            "nosuch",
            "--unchanged-exit-77",
        ][..],
        &[
            "kargs",
            "--append-if-missing",
            "console=tty0",
            "--delete-if-present",
            "nosuch=1",
            "--unchanged-exit-77",
        ][..],
    ] {
        let out = hostctl(fx.sysroot(), args);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {}", stderr(&out));
    }
    let out = hostctl(fx.sysroot(), &["kargs", "--append-if-missing", "quiet"]);
    assert_eq!(out.status.code(), Some(0), "without --unchanged-exit-77");
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "kargs that change nothing",
    );

    // Missing / present: the edit is made, exit 0.
    let out = hostctl(
        fx.sysroot(),
        &[
            "kargs",
            "--append-if-missing",
            "foo=1",
            "--delete-if-present",
            "quiet",
            "--unchanged-exit-77",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(kargs(), "console=tty0 foo=1");
    // A second append-if-missing does not add it twice.
    hostctl_ok(fx.sysroot(), &["kargs", "--append-if-missing", "foo=1"]);
    assert_eq!(kargs(), "console=tty0 foo=1");

    // deploy of the default commit: 77 when asked.
    let before = fingerprint(fx.sysroot());
    let out = hostctl(fx.sysroot(), &["deploy", "1.0", "--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert_eq!(
        hostctl(fx.sysroot(), &["deploy", "1.0"]).status.code(),
        Some(0)
    );
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "deploying the default again",
    );
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &v_files("2.0"));
    let out = hostctl(fx.sysroot(), &["deploy", "2.0", "--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fx.admin_status()[0].checksum, c2);

    // Nothing is pending on a sysroot that is not running: 0, not 77.
    let out = hostctl(fx.sysroot(), &["status", "--pending-exit-77"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
