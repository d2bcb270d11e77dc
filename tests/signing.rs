//! Signed updates: keys from `hostctl key generate`, signatures from
//! `compose tree --sign-key` and `hostctl sign`, checked by openssl (an
//! independent ed25519 implementation), and hosts that accept only commits
//! signed by a key they were given, leaving the sysroot byte-for-byte as it
//! was when they refuse.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const T0: u64 = 1_700_000_000;

/// The commit object's file in an archive repository: what a signature covers.
fn commit_object(repo: &Path, checksum: &str) -> PathBuf {
    repo.join(format!(
        "objects/{}/{}.commit",
        &checksum[..2],
        &checksum[2..]
    ))
}

fn detached_path(repo: &Path, checksum: &str) -> PathBuf {
    repo.join(format!(
        "objects/{}/{}.commitmeta",
        &checksum[..2],
        &checksum[2..]
    ))
}

/// The ed25519 signatures in the commit's detached metadata, read with
/// libostree directly.
fn signatures(repo: &Path, checksum: &str) -> Vec<Vec<u8>> {
    let r = ostree::Repo::new_for_path(repo);
    r.open(ostree::gio::Cancellable::NONE).unwrap();
    let Some(meta) = r
        .read_commit_detached_metadata(checksum, ostree::gio::Cancellable::NONE)
        .unwrap()
    else {
        return Vec::new();
    };
    ostree::glib::VariantDict::new(Some(&meta))
        .lookup::<Vec<Vec<u8>>>("ostree.sign.ed25519")
        .unwrap()
        .unwrap_or_default()
}

#[test]
fn compose_signs_and_openssl_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(dir.path(), "build");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&secret),
        0o600,
        "secret key readable by its owner only"
    );
    // An existing key is never overwritten.
    let again = hostctl_run(&[
        "key",
        "generate",
        "--output",
        dir.path().join("build").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("never overwritten"),
        "{}",
        stderr(&again)
    );

    let repo = dir.path().join("repo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/example.toml");
    let idfile = dir.path().join("id");
    ok(run_hostctl(
        hostctl_cmd()
            .args(["compose", "tree", "--repo"])
            .arg(&repo)
            .arg("--sign-key")
            .arg(&secret)
            .arg("--write-commitid-to")
            .arg(&idfile)
            .arg(&example),
    ));
    let c = fs::read_to_string(&idfile).unwrap().trim().to_string();
    let sigs = signatures(&repo, &c);
    assert_eq!(sigs.len(), 1);
    let object = commit_object(&repo, &c);
    assert!(openssl_verifies(dir.path(), &public, &object, &sigs[0]));
    // The same signature does not verify over other bytes.
    let other = dir.path().join("other");
    let mut bytes = fs::read(&object).unwrap();
    bytes[0] ^= 1;
    fs::write(&other, bytes).unwrap();
    assert!(!openssl_verifies(dir.path(), &public, &other, &sigs[0]));

    // Rotation: a second key adds a signature; signing twice adds nothing.
    let (secret2, public2) = keypair(dir.path(), "next");
    for key in [&secret2, &secret2, &secret] {
        ok(hostctl_run(&[
            "sign",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "example/x86_64/demo",
        ]));
    }
    let sigs = signatures(&repo, &c);
    assert_eq!(sigs.len(), 2, "one signature per key");
    assert!(openssl_verifies(dir.path(), &public2, &object, &sigs[1]));
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .arg("fsck"));
}

#[test]
fn a_compose_that_cannot_sign_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/example.toml");
    let (_, public) = keypair(dir.path(), "k");
    let garbage = dir.path().join("garbage.secret");
    fs::write(&garbage, "not a key\n").unwrap();
    for (key, says) in [
        (dir.path().join("missing.secret"), "reading signing key"),
        (garbage.clone(), "not base64"),
        (public.clone(), "bytes, but an ed25519 secret key is 64"),
    ] {
        let out = run_hostctl(
            hostctl_cmd()
                .args(["compose", "tree", "--repo"])
                .arg(&repo)
                .arg("--sign-key")
                .arg(&key)
                .arg(&example),
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.contains(key.to_str().unwrap()),
            "{err}"
        );
        assert!(
            !err.contains("Populating"),
            "failed only after building: {err}"
        );
        assert!(!repo.exists(), "no repository is created");
    }
}

fn assert_refused(fx: &Fixture, args: &[&str], says: &[&str]) {
    let before = fingerprint(fx.sysroot());
    let out = hostctl(fx.sysroot(), args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = stderr(&out);
    for s in says {
        assert!(err.contains(s), "{args:?}: expected {s:?} in:\n{err}");
    }
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        &format!("{args:?} refused"),
    );
}

#[test]
fn hosts_accept_only_commits_signed_by_a_trusted_key() {
    let fx = Fixture::new();
    let keys = tempfile::tempdir().unwrap();
    let (a_secret, a_public) = keypair(keys.path(), "a");
    let (b_secret, _) = keypair(keys.path(), "b");
    let files = |v: &str| deployable(&base_files(v));

    let c1 = fx.build.commit("stable", "1.0", T0, &files("1.0"));
    fx.build.sign(&c1, &a_secret);
    let out = fx.install_verified(&fx.build.url(), "stable", &a_public);
    assert!(out.contains("signed by key"), "{out}");
    assert_eq!(fx.admin_status()[0].checksum, c1);

    // Unsigned: refused, named.
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &files("2.0"));
    assert_refused(&fx, &["upgrade"], &[&c2, "stable", "not signed"]);
    // Signed by a key the host does not trust.
    fx.build.sign(&c2, &b_secret);
    assert_refused(&fx, &["upgrade"], &[&c2, "none of its 1 signature"]);
    // Another commit's valid signature, copied over: does not match.
    fs::copy(
        detached_path(&fx.build.path, &c1),
        detached_path(&fx.build.path, &c2),
    )
    .unwrap();
    assert_refused(&fx, &["upgrade"], &[&c2, "none of its 1 signature"]);
    // Also by version, through `deploy`.
    assert_refused(&fx, &["deploy", "2.0"], &[&c2]);
    // Signed by the trusted key (alongside the other one): accepted.
    fs::remove_file(detached_path(&fx.build.path, &c2)).unwrap();
    fx.build.sign(&c2, &b_secret);
    fx.build.sign(&c2, &a_secret);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    // status names the key that verified each deployment.
    let a_key = fs::read_to_string(&a_public).unwrap().trim().to_string();
    let json = status_json(fx.sysroot());
    for d in json["deployments"].as_array().unwrap() {
        assert_eq!(d["signature"]["state"], "verified", "{d}");
        assert_eq!(d["signature"]["key"], a_key.as_str(), "{d}");
    }
    let text = hostctl_ok(fx.sysroot(), &["status"]);
    assert!(
        text.contains(&format!("Signature: verified, key {a_key}")),
        "{text}"
    );
    let st = fx.admin_status();
    assert_eq!(
        (st[0].checksum.as_str(), st[1].checksum.as_str()),
        (c2.as_str(), c1.as_str())
    );
    // An older signed version the host never pulled: `deploy` fetches the
    // history without contents and must find that commit's signature too.
    let c3 = fx.build.commit("stable", "3.0", T0 + 200, &files("3.0"));
    fx.build.sign(&c3, &a_secret);
    let c4 = fx.build.commit("stable", "4.0", T0 + 300, &files("4.0"));
    fx.build.sign(&c4, &a_secret);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    hostctl_ok(fx.sysroot(), &["deploy", "3.0", "--allow-downgrade"]);
    assert_eq!(fx.admin_status()[0].checksum, c3);
    fsck(fx.sysroot());
}

#[test]
fn a_network_remote_needs_a_key() {
    let fx = Fixture::new();
    let url = "http://127.0.0.1:9/repo";
    let install = ["install", "--repo", url, "--ref", "stable"];
    assert_refused(
        &fx,
        &install,
        &["without a signing key", "--insecure-allow-unsigned"],
    );
    // A key file that cannot be read, or holds no key (a huge line of junk
    // after a comment), is refused the same way, naming the file and line.
    let keys = tempfile::tempdir().unwrap();
    let junk = keys.path().join("junk.pub");
    fs::write(&junk, format!("# build key\n{}\n", "A".repeat(1 << 20))).unwrap();
    let junk_at = format!("{}:2", junk.display());
    for (key, says) in [
        ("/nonexistent/keys.pub", "/nonexistent/keys.pub"),
        (junk.to_str().unwrap(), junk_at.as_str()),
    ] {
        let mut args = install.to_vec();
        args.extend(["--verify-key", key]);
        assert_refused(&fx, &args, &[says]);
    }
    // A file:// remote may stay unsigned; status says nothing was checked.
    let c1 = fx
        .build
        .commit("stable", "1.0", T0, &deployable(&base_files("1.0")));
    fx.install("stable", &[]);
    let json = status_json(fx.sysroot());
    assert_eq!(json["deployments"][0]["checksum"], c1.as_str());
    assert_eq!(json["deployments"][0]["signature"]["state"], "not-checked");
}
