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
    // A GPG keyring file that holds no key, or does not exist, is refused
    // naming it; a real one counts as a key (the install then fails only
    // because nothing listens on port 9).
    let not_keyring = keys.path().join("notkeys.gpg");
    fs::write(&not_keyring, "# not a keyring\n").unwrap();
    for f in ["/nonexistent/keys.gpg", not_keyring.to_str().unwrap()] {
        let mut args = install.to_vec();
        args.extend(["--gpg-keyring", f]);
        assert_refused(&fx, &args, &[f]);
    }
    let gpg = GpgKey::generate("a");
    let keyring = gpg.export(false);
    let mut args = install.to_vec();
    args.extend(["--gpg-keyring", keyring.to_str().unwrap()]);
    let before = fingerprint(fx.sysroot());
    let out = hostctl(fx.sysroot(), &args);
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains("without a signing key"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", stderr(&out));
    assert_same(&before, &fingerprint(fx.sysroot()), "a failed install");
    // A file:// remote may stay unsigned; status says nothing was checked.
    let c1 = fx
        .build
        .commit("stable", "1.0", T0, &deployable(&base_files("1.0")));
    fx.install("stable", &[]);
    let json = status_json(fx.sysroot());
    assert_eq!(json["deployments"][0]["checksum"], c1.as_str());
    assert_eq!(json["deployments"][0]["signature"]["state"], "not-checked");
}

/// The `ostree.gpgsigs` signatures in a commit's detached metadata file.
fn gpg_signatures(build: &BuildRepo, checksum: &str) -> Vec<Vec<u8>> {
    match fs::read(build.detached_path(checksum)) {
        Ok(bytes) => signatures_in(&bytes, "ostree.gpgsigs"),
        Err(_) => Vec::new(),
    }
}

#[test]
fn compose_and_sign_gpg_sign_through_libostree_and_gpg_agrees() {
    let build = BuildRepo::new();
    let a = GpgKey::generate("a");
    let b = GpgKey::generate("b");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(keys.path(), "ed");
    let files = deployable(&base_files("1.0"));
    // Both kinds at once: each signature is there, and each verifies.
    let mut args = a.sign_args();
    args.extend(["--sign-key".into(), secret.to_str().unwrap().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = build.commit_with("stable", "1.0", T0, &files, &args);
    let object = build.commit_object(&c);
    let sigs = gpg_signatures(&build, &c);
    assert_eq!(sigs.len(), 1);
    assert!(a.gpg_verifies(&object, &sigs), "gpg --verify rejects it");
    assert!(!b.gpg_verifies(&object, &sigs));
    let ed = signatures(&build.path, &c);
    assert!(openssl_verifies(keys.path(), &public, &object, &ed[0]));
    // libostree's own reader, given the exported key as a keyring dir.
    let keyring_dir = tempfile::tempdir().unwrap();
    fs::copy(a.export(false), keyring_dir.path().join("a.gpg")).unwrap();
    let show = sh(Command::new("ostree")
        .arg(format!("--repo={}", build.path.display()))
        .arg("show")
        .arg(format!("--gpg-homedir={}", keyring_dir.path().display()))
        .arg(&c));
    assert!(show.contains("Good signature"), "{show}");

    // Signing again with the same key adds nothing; another key adds one.
    for key in [&a, &a, &b] {
        let mut args = vec!["sign", "--repo", build.path.to_str().unwrap()];
        let sign = key.sign_args();
        args.extend(sign.iter().map(String::as_str));
        args.push("stable");
        ok(hostctl_run(&args));
    }
    let sigs = gpg_signatures(&build, &c);
    assert_eq!(sigs.len(), 2, "one signature per key");
    assert!(b.gpg_verifies(&object, &sigs));
    assert_eq!(
        signatures(&build.path, &c),
        ed,
        "the ed25519 signature stays"
    );

    // A key id GnuPG does not know, or a key without its secret half,
    // fails the compose before any work and creates nothing.
    let public_only = tempfile::tempdir().unwrap();
    let home = public_only.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    sh(Command::new("gpg")
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--import"])
        .arg(a.export(true)));
    let repo = public_only.path().join("repo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/example.toml");
    for (key, homedir, says) in [
        ("0123456789ABCDEF", a.homedir(), "no such public key"),
        (a.fingerprint.as_str(), home.clone(), "cannot sign"),
    ] {
        let out = run_hostctl(
            hostctl_cmd()
                .args(["compose", "tree", "--repo"])
                .arg(&repo)
                .args(["--gpg-sign", key, "--gpg-homedir"])
                .arg(&homedir)
                .arg(&example),
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(says) && err.contains(key), "{err}");
        assert!(
            !err.contains("Populating"),
            "failed only after building: {err}"
        );
        assert!(!repo.exists(), "no repository is created");
    }
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&home)
        .args(["--kill", "gpg-agent"])
        .status();
}

#[test]
fn hosts_accept_only_commits_gpg_signed_by_a_trusted_key() {
    let fx = Fixture::new();
    let a = GpgKey::generate("a");
    let b = GpgKey::generate("b");
    let a_args = a.sign_args();
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let files = |v: &str| deployable(&base_files(v));
    let sign = |rev: &str, key: &GpgKey| {
        let mut args = vec!["sign", "--repo", fx.build.path.to_str().unwrap()];
        let s = key.sign_args();
        args.extend(s.iter().map(String::as_str));
        args.push(rev);
        ok(hostctl_run(&args));
    };

    let c1 = fx
        .build
        .commit_with("stable", "1.0", T0, &files("1.0"), &a_args);
    let keyring = a.export(true);
    let url = fx.build.url();
    let out = fx.install_gpg_verified(&url, "stable", &keyring);
    assert!(
        out.contains(&format!("signed by GPG key {}", a.fingerprint)),
        "{out}"
    );
    assert_eq!(fx.admin_status()[0].checksum, c1);
    // The key is stored as libostree's keyring of the remote.
    let stored = fx.sysroot().join("ostree/repo/origin.trustedkeys.gpg");
    assert!(stored.is_file());

    // Unsigned: refused, naming commit, ref and the keyring consulted.
    let c2 = fx.build.commit("stable", "2.0", T0 + 100, &files("2.0"));
    assert_refused(
        &fx,
        &["upgrade"],
        &[&c2, "stable", "not signed", "origin.trustedkeys.gpg"],
    );
    // Signed by a key the host does not trust.
    sign(&c2, &b);
    assert_refused(
        &fx,
        &["upgrade"],
        &[&c2, "stable", "not trusted", "origin.trustedkeys.gpg"],
    );
    // c1's valid signature copied onto c2: it does not match.
    fs::copy(fx.build.detached_path(&c1), fx.build.detached_path(&c2)).unwrap();
    assert_refused(
        &fx,
        &["upgrade"],
        &[&c2, "stable", "does not match", "origin.trustedkeys.gpg"],
    );
    assert_refused(&fx, &["deploy", "2.0"], &[&c2]);
    // Signed by the trusted key: accepted.
    fs::remove_file(fx.build.detached_path(&c2)).unwrap();
    sign(&c2, &a);
    hostctl_ok(fx.sysroot(), &["upgrade"]);
    let st = fx.admin_status();
    assert_eq!(
        (st[0].checksum.as_str(), st[1].checksum.as_str()),
        (c2.as_str(), c1.as_str())
    );
    // status names the GPG key, and libostree (given the keyring hostctl
    // stored) agrees that the deployed commit is signed by it.
    let json = status_json(fx.sysroot());
    for d in json["deployments"].as_array().unwrap() {
        assert_eq!(d["signature"]["state"], "verified", "{d}");
        assert_eq!(d["signature"]["gpg-key"], a.fingerprint.as_str(), "{d}");
        assert!(d["signature"].get("key").is_none(), "{d}");
    }
    let text = hostctl_ok(fx.sysroot(), &["status"]);
    assert!(
        text.contains(&format!("Signature: verified, GPG key {}", a.fingerprint)),
        "{text}"
    );
    let show = sh(Command::new("ostree")
        .arg(format!(
            "--repo={}",
            fx.sysroot().join("ostree/repo").display()
        ))
        .args(["show", "--gpg-verify-remote=origin", &c2]));
    assert!(show.contains("Good signature"), "{show}");
    fsck(fx.sysroot());
}
