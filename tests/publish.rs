//! `hostctl publish` prepares a repository that nginx (started by the test
//! on 127.0.0.1, with its own configuration) serves as plain files: hosts
//! install and upgrade from it with signature checks, a small update comes
//! as a static delta close to the size of what changed, the summary is
//! signed, and retention never removes what a ref still needs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::nginx::Nginx;
use common::*;

const T0: u64 = 1_700_000_000;

/// A tree with four large files; `changed` replaces the first one.
fn tree(version: &str, changed: u64) -> Files {
    let mut f = deployable(&base_files(version));
    for i in 0..4u64 {
        let seed = if i == 0 { changed } else { 100 + i };
        f.insert(format!("usr/share/data/blob{i}"), noise(seed, 1 << 20));
    }
    f
}

/// Content objects of a commit, by checksum, with their size in the
/// archive repository (compressed), read through the ostree CLI.
fn content_objects(repo: &Path, commit: &str) -> BTreeSet<(String, u64)> {
    let listing = sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", "-R", "-C", commit]));
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|c| {
            let p = repo.join(format!("objects/{}/{}.filez", &c[..2], &c[2..]));
            (
                c.to_string(),
                fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_published_repository_serves_signed_updates_as_small_deltas() {
    let fx = Fixture::with_size(600);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "build");
    let c1 = fx.build.commit("stable", "1.0", T0, &tree("1.0", 1));
    fx.build.publish(&["--sign-key", secret.to_str().unwrap()]);
    // The summary is signed in libostree's format; openssl agrees.
    let repo = &fx.build.path;
    let sig = fs::read(repo.join("summary.sig")).unwrap();
    let v = ostree::glib::Variant::from_bytes::<ostree::glib::VariantDict>(
        &ostree::glib::Bytes::from(&sig),
    );
    let sigs = ostree::glib::VariantDict::new(Some(&v))
        .lookup::<Vec<Vec<u8>>>("ostree.sign.ed25519")
        .unwrap()
        .unwrap();
    assert!(openssl_verifies(
        keys.path(),
        &public,
        &repo.join("summary"),
        &sigs[0]
    ));

    let server = Nginx::serve(repo.parent().unwrap());
    let url = format!("http://127.0.0.1:{}/repo", server.port);
    fx.install_verified(&url, "stable", &public);
    assert_eq!(fx.admin_status()[0].checksum, c1);

    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &tree("2.0", 2));
    let out = fx
        .build
        .publish(&["--sign-key", secret.to_str().unwrap(), "--deltas", "1"]);
    assert!(out.contains("delta from"), "{out}");
    server.clear_log();
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c2);
    fsck(fx.sysroot());

    let requests = server.requests();
    let sent: u64 = requests.iter().map(|(_, b)| b).sum();
    assert!(
        requests.iter().any(|(p, _)| p.contains("/deltas/")),
        "the upgrade did not use the delta: {requests:?}"
    );
    let old = content_objects(repo, &c1);
    let new = content_objects(repo, &c2);
    let changed: u64 = new.difference(&old).map(|(_, s)| s).sum();
    let whole: u64 = new.iter().map(|(_, s)| s).sum();
    eprintln!("upgrade transferred {sent} bytes; changed objects {changed}; whole commit {whole}");
    assert!(
        changed > 500_000,
        "the test changes a 1 MiB file: {changed}"
    );
    // The bound: the delta and a little metadata, not the changed
    // object a second time (libostree 2022.7 fetched it loose as well when
    // it wrote the commit from the delta itself; hostctl now places the
    // verified commit first, see fetch::place_verified_commit).
    assert!(
        sent as f64 <= changed as f64 * 1.2,
        "transferred {sent} bytes for {changed} bytes of changed objects: {requests:?}"
    );
    assert!(
        sent * 2 < whole,
        "no better than fetching the whole commit ({whole})"
    );

    // A package-like update: a file changed in a few bytes. Without deltas
    // a host fetches the changed object whole (a loose object is exactly
    // what `changed` counts); the delta carries only the difference.
    let mut files = tree("3.0", 2);
    let blob1 = files.get_mut("usr/share/data/blob1").unwrap();
    blob1.replace_range(500_000..500_064, &noise(7, 64));
    let c3 = fx.build.commit("stable", "3.0", T0 + 200, &files);
    fx.build
        .publish(&["--sign-key", secret.to_str().unwrap(), "--deltas", "1"]);
    server.clear_log();
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c3);
    fsck(fx.sysroot());
    let requests = server.requests();
    let sent: u64 = requests.iter().map(|(_, b)| b).sum();
    let changed: u64 = content_objects(repo, &c3)
        .difference(&content_objects(repo, &c2))
        .map(|(_, s)| s)
        .sum();
    eprintln!("small change: upgrade transferred {sent} bytes; changed objects {changed}");
    assert!(
        sent * 10 < changed,
        "a 64-byte change cost {sent} bytes, close to the {changed} bytes of the changed object without a delta: {requests:?}"
    );
    // Stopping the server stops its workers too: none may outlive a test.
    let workers = server.workers();
    assert!(!workers.is_empty(), "nginx runs workers");
    drop(server);
    for w in workers {
        assert!(
            !Path::new(&format!("/proc/{w}")).exists(),
            "nginx worker {w} outlived its server"
        );
    }
}

#[test]
fn retention_keeps_what_refs_and_deltas_need() {
    let build = BuildRepo::new();
    let commits: Vec<String> = (0..4)
        .map(|i| build.commit("stable", &format!("1.{i}"), T0 + i * 100, &tree("1", i)))
        .collect();
    build.publish(&["--deltas", "3"]);
    build.publish(&["--keep", "2", "--deltas", "3"]);
    let has = |c: &str| {
        Command::new("ostree")
            .arg(format!("--repo={}", build.path.display()))
            .args(["show", c])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        has(&commits[3]) && has(&commits[2]),
        "the last two commits are kept"
    );
    assert!(
        !has(&commits[0]) && !has(&commits[1]),
        "older commits are pruned"
    );
    let deltas = sh(Command::new("ostree")
        .arg(format!("--repo={}", build.path.display()))
        .args(["static-delta", "list"]));
    for line in deltas.lines().filter(|l| l.contains('-')) {
        assert!(
            line.trim().ends_with(&commits[3]),
            "a delta to a pruned or old commit: {line}"
        );
    }
    sh(Command::new("ostree")
        .arg(format!("--repo={}", build.path.display()))
        .arg("fsck"));
    let bad = hostctl_run(&[
        "publish",
        "--repo",
        build.path.to_str().unwrap(),
        "--keep",
        "0",
    ]);
    assert!(!bad.status.success());
    assert!(has(&commits[3]), "--keep 0 is refused and removes nothing");
}

/// `--keep-newer-than`: each ref keeps its commits made at or after the
/// date (its head always), and a commit another ref still points at or
/// keeps survives a ref that drops it.
#[test]
fn retention_by_date_never_removes_what_another_ref_needs() {
    let build = BuildRepo::new();
    let stable: Vec<String> = (0..4)
        .map(|i| build.commit("stable", &format!("1.{i}"), T0 + i * 100, &tree("1", i)))
        .collect();
    let beta: Vec<String> = (0..2)
        .map(|i| build.commit("beta", &format!("2.{i}"), T0 + 1000 + i, &tree("2", i)))
        .collect();
    // An older line that still has users: it points at stable's 1.1.
    let ostree = |args: &[&str]| {
        let mut c = Command::new("ostree");
        c.arg(format!("--repo={}", build.path.display())).args(args);
        c
    };
    sh(&mut ostree(&["refs", "--create=lts", &stable[1]]));
    let has = |c: &str| ostree(&["show", c]).output().unwrap().status.success();

    // T0 + 150 s, as an RFC 3339 time.
    let cutoff = "2023-11-14T22:15:50Z";
    let bad = hostctl_run(&[
        "publish",
        "--repo",
        build.path.to_str().unwrap(),
        "--keep-newer-than",
        "yesterday",
    ]);
    assert!(!bad.status.success() && stderr(&bad).contains("yesterday"));
    assert!(
        stable.iter().chain(&beta).all(|c| has(c)),
        "a bad date removes nothing"
    );

    build.publish(&["--keep-newer-than", cutoff, "--deltas", "3"]);
    assert!(
        has(&stable[3]) && has(&stable[2]),
        "stable's newer commits stay"
    );
    assert!(has(&stable[1]), "lts's head stays though stable drops it");
    assert!(!has(&stable[0]), "older than the date on every ref: pruned");
    assert!(
        beta.iter().all(|c| has(c)),
        "beta is all newer than the date"
    );
    sh(&mut ostree(&["fsck"]));
    // Deltas only from what stable keeps.
    let deltas = sh(&mut ostree(&["static-delta", "list"]));
    assert!(
        deltas.contains(&format!("{}-{}", stable[2], stable[3])),
        "{deltas}"
    );
    assert!(
        !deltas.contains(&format!("{}-{}", stable[1], stable[3])),
        "a delta from a commit stable no longer keeps: {deltas}"
    );
    // Both rules: a commit either keeps stays.
    let c4 = build.commit("stable", "1.4", T0 + 400, &tree("1", 4));
    build.publish(&["--keep-newer-than", "2023-11-14T22:19:00Z", "--keep", "2"]);
    assert!(has(&c4) && has(&stable[3]), "the last two");
    assert!(!has(&stable[2]), "neither rule keeps 1.2");
    assert!(has(&stable[1]), "lts still points at it");
}

/// `hostctl upgrade` is refused with every text of `says` on stderr, and
/// leaves the sysroot byte for byte as it was.
fn assert_refused(fx: &Fixture, says: &[&str]) {
    let before = fingerprint(fx.sysroot());
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    assert!(!out.status.success(), "the upgrade succeeded");
    let err = stderr(&out);
    for s in says {
        assert!(err.contains(s), "expected {s:?} in:\n{err}");
    }
    assert_same(&before, &fingerprint(fx.sysroot()), "a refused upgrade");
}

/// `summary.sig` with the last byte of its first signature under `key`
/// flipped: still well-formed, no longer matching.
fn tamper_summary_sig(repo: &Path, key: &str) {
    let path = repo.join("summary.sig");
    let bytes = fs::read(&path).unwrap();
    let mut sigs = signatures_in(&bytes, key);
    assert!(!sigs.is_empty(), "no {key} signature to tamper with");
    *sigs[0].last_mut().unwrap() ^= 1;
    fs::write(&path, with_signatures(&bytes, key, &sigs)).unwrap();
}

#[test]
fn gpg_signed_updates_over_nginx_and_what_hosts_refuse() {
    let fx = Fixture::new();
    let a = GpgKey::generate("a");
    let b = GpgKey::generate("b");
    let (a_owned, b_owned) = (a.sign_args(), b.sign_args());
    let a_args: Vec<&str> = a_owned.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_owned.iter().map(String::as_str).collect();
    let files = |v: &str| deployable(&base_files(v));
    let repo = fx.build.path.clone();

    let c1 = fx
        .build
        .commit_with("stable", "1.0", T0, &files("1.0"), &a_args);
    fx.build.publish(&a_args);
    // GnuPG itself agrees with the summary's signature.
    let sig = fs::read(repo.join("summary.sig")).unwrap();
    let sigs = signatures_in(&sig, "ostree.gpgsigs");
    assert_eq!(sigs.len(), 1);
    assert!(a.gpg_verifies(&repo.join("summary"), &sigs));
    assert!(!b.gpg_verifies(&repo.join("summary"), &sigs));

    let server = Nginx::serve(repo.parent().unwrap());
    let url = server.url("repo");
    let keyring = a.export(false);
    let out = fx.install_gpg_verified(&url, "stable", &keyring);
    assert!(
        out.contains(&format!(
            "Summary of origin is signed by GPG key {}",
            a.fingerprint
        )),
        "{out}"
    );
    assert_eq!(fx.admin_status()[0].checksum, c1);

    // An unsigned compose, signed when published: accepted.
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &files("2.0"));
    fx.build.publish(&a_args);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c2);
    let json = status_json(fx.sysroot());
    assert_eq!(
        json["deployments"][0]["signature"]["gpg-key"],
        a.fingerprint.as_str()
    );

    let keyring_file = "origin.trustedkeys.gpg";
    let c3 = fx
        .build
        .commit_with("stable", "3.0", T0 + 200, &files("3.0"), &a_args);
    // The summary signed by a key the host does not trust.
    fx.build.publish(&b_args);
    assert_refused(
        &fx,
        &[
            "the summary",
            "stable",
            "origin",
            "not trusted",
            keyring_file,
        ],
    );
    // The summary not signed at all, or no summary.
    fx.build.publish(&[]);
    assert_refused(&fx, &["the summary is not signed", "stable", keyring_file]);
    fs::rename(repo.join("summary"), repo.join("summary.away")).unwrap();
    assert_refused(&fx, &["serves no summary", "stable", "origin"]);
    fs::rename(repo.join("summary.away"), repo.join("summary")).unwrap();
    // The trusted key's signature, changed afterwards.
    fx.build.publish(&a_args);
    let good_sig = fs::read(repo.join("summary.sig")).unwrap();
    tamper_summary_sig(&repo, "ostree.gpgsigs");
    assert_refused(&fx, &["the summary", "does not match", keyring_file]);
    // A summary listing another commit, with a valid signature of the one
    // before (what a replay of an old signature looks like).
    fs::write(repo.join("summary.sig"), &good_sig).unwrap();
    let good_summary = fs::read(repo.join("summary")).unwrap();
    let c4 = fx.build.commit("stable", "4.0", T0 + 300, &files("4.0"));
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["summary", "-u"]));
    fs::write(repo.join("summary.sig"), &good_sig).unwrap();
    assert_refused(&fx, &["the summary", "does not match", keyring_file]);
    // Back to c3 under a good summary; its commit signatures tampered with.
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["reset", "stable", &c3]));
    fs::write(repo.join("summary"), &good_summary).unwrap();
    fs::write(repo.join("summary.sig"), &good_sig).unwrap();
    let meta = fx.build.detached_path(&c3);
    let signed = fs::read(&meta).unwrap();
    // Not signed (its signatures removed from the server).
    fs::remove_file(&meta).unwrap();
    assert_refused(&fx, &[&c3, "stable", "not signed", keyring_file]);
    // Signed by another key only.
    let mut other = [b_args.clone(), vec!["--repo", repo.to_str().unwrap(), &c3]].concat();
    other.insert(0, "sign");
    ok(hostctl_run(&other));
    assert_refused(&fx, &[&c3, "stable", "not trusted", keyring_file]);
    // The trusted key's signature over another commit.
    fs::copy(fx.build.detached_path(&c1), &meta).unwrap();
    assert_refused(&fx, &[&c3, "stable", "does not match", keyring_file]);
    // Put right, the same upgrade goes through: the refusals were about
    // the signatures, nothing else.
    fs::write(&meta, &signed).unwrap();
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c3);
    // And the newest head, once published with the key.
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["reset", "stable", &c4]));
    fx.build.publish(&a_args);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c4);
    fsck(fx.sysroot());
}

/// A server that changes the bytes of an object of a correctly signed
/// commit gets nothing onto the host: every object is checked against the
/// checksum the signed commit leads to, over http as from a file.
#[test]
fn a_tampered_object_on_the_server_is_refused() {
    let fx = Fixture::new();
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "a");
    let repo = fx.build.path.clone();
    fx.build
        .commit("stable", "1.0", T0, &deployable(&base_files("1.0")));
    fx.build.publish(&["--sign-key", secret.to_str().unwrap()]);
    let server = Nginx::serve(repo.parent().unwrap());
    fx.install_verified(&server.url("repo"), "stable", &public);

    let mut files = deployable(&base_files("2.0"));
    files.insert("usr/share/data/new".into(), noise(3, 50_000));
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &files);
    // No delta: the host fetches the tampered object itself.
    fx.build
        .publish(&["--sign-key", secret.to_str().unwrap(), "--deltas", "0"]);
    let object = fx.build.corrupt_object(&c2, "/usr/share/data/new");
    let good = {
        let mut b = fs::read(&object).unwrap();
        b[8 + 8 + 3] ^= 0x01;
        b
    };
    assert_refused(&fx, &["Corrupted"]);
    // The same upgrade with the object put right goes through: the refusal
    // was the tampered object, nothing else.
    fs::write(&object, good).unwrap();
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c2);
    fsck(fx.sysroot());
}

#[test]
fn ed25519_summaries_that_do_not_verify_are_refused() {
    let fx = Fixture::new();
    let keys = tempfile::tempdir().unwrap();
    let (a_secret, a_public) = keypair(keys.path(), "a");
    let (b_secret, _) = keypair(keys.path(), "b");
    let a = ["--sign-key", a_secret.to_str().unwrap()];
    let b = ["--sign-key", b_secret.to_str().unwrap()];
    let files = |v: &str| deployable(&base_files(v));
    let repo = fx.build.path.clone();
    fx.build.commit("stable", "1.0", T0, &files("1.0"));
    fx.build.publish(&a);
    let server = Nginx::serve(repo.parent().unwrap());
    fx.install_verified(&server.url("repo"), "stable", &a_public);

    let key_source = "hostctl.ed25519-keys of remote origin";
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &files("2.0"));
    // Signed by another key (the head too: only the summary is wrong).
    fx.build.sign(&c2, &a_secret);
    fx.build.publish(&b);
    assert_refused(
        &fx,
        &[
            "the summary",
            "stable",
            "origin",
            "none of its 1 signature",
            key_source,
        ],
    );
    // Not signed.
    fx.build.publish(&[]);
    assert_refused(&fx, &["the summary is not signed", "stable", key_source]);
    // Changed after signing.
    fx.build.publish(&a);
    tamper_summary_sig(&repo, "ostree.sign.ed25519");
    assert_refused(&fx, &["the summary", "none of its 1 signature", key_source]);
    // Malformed.
    fs::write(repo.join("summary.sig"), b"not a signature").unwrap();
    assert_refused(&fx, &["summary.sig is malformed", "stable"]);
    // During a rotation, signed by both keys: accepted.
    fx.build.publish(&[a[0], a[1], b[0], b[1]]);
    let sig = fs::read(repo.join("summary.sig")).unwrap();
    assert_eq!(signatures_in(&sig, "ostree.sign.ed25519").len(), 2);
    assert!(openssl_verifies(
        keys.path(),
        &a_public,
        &repo.join("summary"),
        &signatures_in(&sig, "ostree.sign.ed25519")[0]
    ));
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c2);
}

/// Many files of `size` bytes each, all of them new with another `seed`:
/// an update large enough that a slow server can be interrupted midway.
fn many_files(version: &str, seed: u64, n: u64, size: usize) -> Files {
    let mut f = deployable(&base_files(version));
    for i in 0..n {
        f.insert(
            format!("usr/share/many/file{i:02}"),
            noise(seed * 1000 + i, size),
        );
    }
    f
}

/// Checksums of the content objects an interrupted pull left in the
/// sysroot repository's staging directories (`tmp/staging-*/XX/REST.file`):
/// what arrived and was verified before the kill.
fn staged_objects(sysroot: &Path) -> BTreeSet<String> {
    let tmp = sysroot.join("ostree/repo/tmp");
    let mut out = BTreeSet::new();
    for stage in fs::read_dir(&tmp).unwrap().flatten() {
        if !stage.file_name().to_string_lossy().starts_with("staging-") {
            continue;
        }
        // Flattened: files come and go while the pull writes.
        for e in walkdir::WalkDir::new(stage.path())
            .min_depth(2)
            .max_depth(2)
            .into_iter()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(prefix) = e.path().parent().and_then(|p| p.file_name()) else {
                continue;
            };
            if let Some(rest) = name.strip_suffix(".file") {
                out.insert(format!("{}{rest}", prefix.to_string_lossy()));
            }
        }
    }
    out
}

/// Checksum of a loose object path in an access log line.
fn object_of(path: &str) -> Option<String> {
    let rest = path.split("/objects/").nth(1)?;
    let (dir, file) = rest.split_once('/')?;
    let (name, _) = file.split_once('.')?;
    Some(format!("{dir}{name}"))
}

#[test]
fn an_interrupted_upgrade_resumes_without_fetching_again_what_arrived() {
    let fx = Fixture::with_size(600);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "build");
    let (n, size) = (40, 128 << 10);
    fx.build
        .commit("stable", "1.0", T0, &many_files("1.0", 1, n, size));
    fx.build.publish(&["--sign-key", secret.to_str().unwrap()]);
    // Each connection at 64 KiB/s: the update (40 objects of ~70 KB, a
    // handful of them at a time) takes several seconds.
    let server = Nginx::serve_with(fx.build.path.parent().unwrap(), "limit_rate 64k;");
    let url = format!("http://127.0.0.1:{}/repo", server.port);
    fx.install_verified(&url, "stable", &public);
    let c2 = fx
        .build
        .commit("stable", "2.0", T0 + 100, &many_files("2.0", 2, n, size));
    // No delta: objects are the unit a pull resumes (a delta part that was
    // half received is fetched again whole).
    fx.build
        .publish(&["--sign-key", secret.to_str().unwrap(), "--deltas", "0"]);
    let repo = &fx.build.path;
    let new = content_objects(repo, &c2);
    let whole: u64 = new.iter().map(|(_, s)| s).sum();

    let before = ostree_admin_status(fx.sysroot());
    let boot_before = boot_state(&fingerprint(fx.sysroot()));
    server.clear_log();
    let mut child = Command::new(hostctl_bin())
        .arg("--sysroot")
        .arg(fx.sysroot())
        .arg("upgrade")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a quarter of the new files are in: stored in the
    // repository's staging directory, not only sent (nginx logs a request
    // when it has sent the last byte, before the client has written it).
    let big: BTreeSet<String> = new
        .iter()
        .filter(|(_, s)| *s > 10_000)
        .map(|(c, _)| c.clone())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let stored = staged_objects(fx.sysroot()).intersection(&big).count();
        if stored >= n as usize / 4 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upgrade ended before it could be interrupted: {:?}",
            server.requests()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the upgrade made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = server.requests();
    let first_bytes: u64 = first.iter().map(|(_, b)| b).sum();

    // Nothing boots differently and the repository is sound.
    assert_eq!(ostree_admin_status(fx.sysroot()), before);
    assert_same(
        &boot_before,
        &boot_state(&fingerprint(fx.sysroot())),
        "a killed upgrade",
    );
    fsck(fx.sysroot());
    hostctl_ok(fx.sysroot(), &["status"]);
    let arrived = staged_objects(fx.sysroot());
    assert!(
        !arrived.is_empty(),
        "nothing arrived before the kill ({first_bytes} bytes sent): {first:?}"
    );

    server.clear_log();
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    let err = stderr(&out);
    ok(out);
    assert_eq!(fx.admin_status()[0].checksum, c2);
    fsck(fx.sysroot());
    let second = server.requests();
    let second_bytes: u64 = second.iter().map(|(_, b)| b).sum();
    eprintln!(
        "interrupted after {first_bytes} bytes ({} objects stored); the next run fetched {second_bytes} bytes; the new objects are {whole} bytes",
        arrived.len()
    );
    let again: Vec<String> = second
        .iter()
        .filter_map(|(p, _)| object_of(p))
        .filter(|c| arrived.contains(c))
        .collect();
    assert!(
        again.is_empty(),
        "objects stored before the kill were fetched again: {again:?}"
    );
    assert!(
        second_bytes < whole,
        "the resumed upgrade fetched {second_bytes} bytes, no less than the whole update ({whole})"
    );
    // Progress while pulling: objects and bytes, on stderr.
    assert!(
        err.lines()
            .any(|l| l.starts_with("Receiving: ") && l.contains(" objects, ") && l.contains("iB")),
        "no progress line while pulling:\n{err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("Received ")),
        "no summary of what was received:\n{err}"
    );
}

/// Directories of the static deltas in `repo` (each holds a `superblock`).
fn delta_dirs(repo: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(repo.join("deltas"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "superblock")
        .map(|e| e.path().parent().unwrap().to_path_buf())
        .collect()
}

/// A static delta that leaves out a file the commit needs cannot make a
/// host deploy an incomplete commit: the delta here was made from another
/// commit that already had v2's files, and is served under the name of
/// the delta from the host's commit. The pull is completed object by
/// object before anything is deployed.
#[test]
fn a_delta_that_leaves_objects_out_is_completed_before_deploying() {
    let fx = Fixture::with_size(300);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "build");
    let sign = ["--sign-key", secret.to_str().unwrap()];
    fx.build.commit("stable", "1.0", T0, &tree("1.0", 1));
    fx.build.publish(&sign);
    let repo = &fx.build.path;
    let server = Nginx::serve(repo.parent().unwrap());
    let url = format!("http://127.0.0.1:{}/repo", server.port);
    fx.install_verified(&url, "stable", &public);

    // The same files as v2 and one more: the delta from it to v2 carries
    // directory objects only, none of v2's files.
    let mut superset = tree("2.0", 2);
    superset.insert("usr/share/extra".into(), "extra\n".into());
    let other = fx.build.commit("other", "9.0", T0 + 50, &superset);
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &tree("2.0", 2));
    fx.build.publish(&[sign[0], sign[1], "--deltas", "1"]);
    let genuine = delta_dirs(repo);
    assert_eq!(genuine.len(), 1, "one delta, to stable's head: {genuine:?}");
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["static-delta", "generate", "--from", &other, "--to", &c2]));
    let forged = delta_dirs(repo)
        .difference(&genuine)
        .next()
        .unwrap()
        .clone();
    let genuine = genuine.into_iter().next().unwrap();
    fs::remove_dir_all(&genuine).unwrap();
    fs::rename(&forged, &genuine).unwrap();
    // The summary and the delta index anew, so the forged delta is served
    // as the one from the host's commit.
    fx.build.publish(&[sign[0], sign[1], "--deltas", "0"]);

    server.clear_log();
    let out = hostctl(fx.sysroot(), &["upgrade"]);
    let err = stderr(&out);
    ok(out);
    assert_eq!(fx.admin_status()[0].checksum, c2);
    fsck(fx.sysroot());
    let requests = server.requests();
    assert!(
        requests.iter().any(|(p, _)| p.contains("/deltas/")),
        "the upgrade did not try the delta: {requests:?}"
    );
    assert!(
        err.contains("without static deltas"),
        "the incomplete pull was not reported:\n{err}"
    );
    // v2's new file is what the delta left out; it came as a loose object.
    let blob0 = sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", "-C", &c2, "/usr/share/data/blob0"]));
    let blob0 = blob0.split_whitespace().nth(4).unwrap().to_string();
    assert!(
        requests
            .iter()
            .any(|(p, _)| object_of(p).as_deref() == Some(blob0.as_str())),
        "the left-out file was not fetched: {requests:?}"
    );
}
