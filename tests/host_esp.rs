//! Every host command that writes a deployment list publishes the boot
//! entries onto the ESP named with `--esp DIR` or `--esp-image FILE`, the way
//! it publishes onto `/efi` on a running host. Checked after each command
//! with the systemd-boot model (which entry boots by default, and what its
//! `ostree=` bootlink resolves to) against `ostree admin status` and
//! libostree's own BLS entry, and for the image with `mdir`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use hostctl::bootloader::{DirEsp, MtoolsEsp};

const T0: u64 = 1_700_000_000;

/// hostctl against `sysroot` with the ESP options `esp` appended.
fn with_esp(sysroot: &Path, args: &[&str], esp: &[&str]) -> String {
    let all: Vec<&str> = args.iter().chain(esp).copied().collect();
    hostctl_ok(sysroot, &all)
}

#[test]
fn every_host_command_republishes_a_directory_esp() {
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("esp");
    std::fs::create_dir(&dir).unwrap();
    let esp = ["--esp", dir.to_str().unwrap()];
    let model = DirEsp::new(&dir);
    let s = fx.sysroot();
    let url = fx.build.url();

    let c1 = fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    with_esp(
        s,
        &[
            "install", "--repo", &url, "--ref", "stable", "--karg", "quiet",
        ],
        &esp,
    );
    let d = assert_esp_boots_default(s, &model, "install");
    assert_eq!(d.checksum, c1);

    let c2 = fx
        .build
        .commit("stable", "2.0", T0 + 100, &base_files("2.0"));
    with_esp(s, &["upgrade"], &esp);
    let d = assert_esp_boots_default(s, &model, "upgrade");
    assert_eq!(d.checksum, c2, "upgrade made 2.0 the default");

    with_esp(s, &["rollback"], &esp);
    let d = assert_esp_boots_default(s, &model, "rollback");
    assert_eq!(d.checksum, c1, "rollback made 1.0 the default");

    with_esp(s, &["deploy", "2.0"], &esp);
    let d = assert_esp_boots_default(s, &model, "deploy 2.0");
    assert_eq!(d.checksum, c2);

    with_esp(s, &["kargs", "--append", "foo=bar"], &esp);
    let d = assert_esp_boots_default(s, &model, "kargs --append foo=bar");
    assert!(
        d.kargs.contains(&"foo=bar".to_string()) && d.kargs.contains(&"quiet".to_string()),
        "the ESP's default entry lacks foo=bar or quiet: {:?}",
        d.kargs
    );

    let co = fx
        .build
        .commit("testing", "9.0", T0 + 300, &base_files("9.0"));
    with_esp(s, &["rebase", "testing"], &esp);
    let d = assert_esp_boots_default(s, &model, "rebase testing");
    assert_eq!(d.checksum, co);
    assert!(d.kargs.contains(&"foo=bar".to_string()), "{:?}", d.kargs);

    with_esp(s, &["cleanup", "--rollback"], &esp);
    let d = assert_esp_boots_default(s, &model, "cleanup --rollback");
    assert_eq!(d.checksum, co);
    assert_eq!(fx.admin_status().len(), 1);
    fsck(s);
}

#[test]
fn host_commands_republish_a_vfat_image_esp() {
    let fx = Fixture::new();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("esp.img");
    sh(Command::new("mkfs.vfat")
        .args(["-F", "32", "-C", "-n", "ESP"])
        .arg(&img)
        .arg("65536"));
    let esp = ["--esp-image", img.to_str().unwrap()];
    let model = MtoolsEsp::new(&img, 0);
    let s = fx.sysroot();
    let url = fx.build.url();

    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    with_esp(s, &["install", "--repo", &url, "--ref", "stable"], &esp);
    assert_esp_boots_default(s, &model, "install");
    let c2 = fx
        .build
        .commit("stable", "2.0", T0 + 100, &base_files("2.0"));
    with_esp(s, &["upgrade"], &esp);
    assert_eq!(assert_esp_boots_default(s, &model, "upgrade").checksum, c2);
    with_esp(s, &["kargs", "--append", "console=ttyS0"], &esp);
    let d = assert_esp_boots_default(s, &model, "kargs --append console=ttyS0");
    assert!(
        d.kargs.contains(&"console=ttyS0".to_string()),
        "{:?}",
        d.kargs
    );
    with_esp(s, &["rollback"], &esp);
    assert_esp_boots_default(s, &model, "rollback");
    // mtools itself sees one entry per deployment.
    let listing = sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::/loader/entries"));
    assert_eq!(
        listing.lines().count(),
        fx.admin_status().len(),
        "mdir lists other entries than deployments:\n{listing}"
    );
}

#[test]
fn an_esp_that_is_not_mounted_is_refused_before_anything_changes() {
    let fx = Fixture::new();
    fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    fx.build
        .commit("stable", "2.0", T0 + 100, &base_files("2.0"));
    // A directory on the sysroot's own filesystem: an unmounted mount point.
    let unmounted = fx.sysroot().join("efi");
    std::fs::create_dir(&unmounted).unwrap();
    let before = fingerprint(fx.sysroot());
    for esp in [
        ["--esp", unmounted.to_str().unwrap()],
        ["--esp-image", "/nonexistent/esp.img"],
    ] {
        let out = hostctl(fx.sysroot(), &["upgrade", esp[0], esp[1]]);
        assert!(
            !out.status.success(),
            "upgrade {esp:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains(esp[1]),
            "error names no ESP: {}",
            stderr(&out)
        );
        assert_same(
            &before,
            &fingerprint(fx.sysroot()),
            &format!("upgrade with {esp:?}"),
        );
    }
}
