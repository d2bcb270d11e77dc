//! `hostctl publish` prepares a repository that nginx (started by the test
//! on 127.0.0.1, with its own configuration) serves as plain files: hosts
//! install and upgrade from it with signature checks, a small update comes
//! as a static delta close to the size of what changed, the summary is
//! signed, and retention never removes what a ref still needs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::nginx::Nginx;
use common::*;

const T0: u64 = 1_700_000_000;

/// Deterministic text that compresses about as well as random hex.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut s = String::with_capacity(len);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

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
    // libostree 2022.7, pulling a commit by checksum (as hostctl does, so
    // that only the verified commit can arrive), fetches the changed object
    // loose as well as the delta: about twice the changed size today. The
    // goal is 1.2x; this bound keeps the measured behaviour from getting
    // worse until that is solved.
    assert!(
        sent as f64 <= changed as f64 * 2.2,
        "transferred {sent} bytes for {changed} bytes of changed objects: {requests:?}"
    );
    assert!(
        sent * 2 < whole,
        "no better than fetching the whole commit ({whole})"
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
    let out = hostctl_ok(
        fx.sysroot(),
        &[
            "install",
            "--repo",
            &url,
            "--ref",
            "stable",
            "--gpg-keyring",
            keyring.to_str().unwrap(),
        ],
    );
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
