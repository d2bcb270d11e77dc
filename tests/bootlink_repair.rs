//! The initramfs hook (dracut/modules.d/90hostctl/hostctl-bootlink.sh) that
//! recreates a missing `ostree=` bootlink from the `hostctl.deploy=` argument
//! of the ESP entry, run against a directory standing in for /sysroot.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

const CSUM: &str = "bd4ffd22e3be1725fd087c1c989f9775aedc8ff5df3df53c8f8184c48be240a9";
const TARGET: &str = "/ostree/boot.1/debian/f18833d12f6c/0";

fn run_hook(sysroot: &Path, cmdline: &str) -> String {
    let cmdfile = sysroot.parent().unwrap().join("cmdline");
    fs::write(&cmdfile, cmdline).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dracut/modules.d/90hostctl/hostctl-bootlink.sh");
    let out = Command::new("sh")
        .arg(script)
        .env("SYSROOT", sysroot)
        .env("CMDLINE", &cmdfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sysroot_with_deployment() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let sysroot = d.path().join("sysroot");
    fs::create_dir_all(sysroot.join(format!("ostree/deploy/debian/deploy/{CSUM}.0/usr"))).unwrap();
    (d, sysroot)
}

fn cmdline() -> String {
    format!("root=UUID=x rw ostree={TARGET} hostctl.deploy=debian/{CSUM}.0")
}

fn resolves_to_deployment(sysroot: &Path) -> bool {
    let link = sysroot.join(TARGET.trim_start_matches('/'));
    let deployment = sysroot.join(format!("ostree/deploy/debian/deploy/{CSUM}.0"));
    // The deployment must exist: a missing one would make both sides
    // unresolvable and the comparison vacuous.
    let deployment = fs::canonicalize(&deployment)
        .unwrap_or_else(|e| panic!("deployment {} does not resolve: {e}", deployment.display()));
    fs::canonicalize(link).ok() == Some(deployment)
}

#[test]
fn recreates_a_missing_bootlink() {
    let (_d, sysroot) = sysroot_with_deployment();
    let out = run_hook(&sysroot, &cmdline());
    assert!(out.contains("recreated"), "{out}");
    assert!(resolves_to_deployment(&sysroot));
    let link = fs::read_link(sysroot.join(TARGET.trim_start_matches('/'))).unwrap();
    assert!(link.is_relative(), "{}", link.display());
}

#[test]
fn replaces_a_dangling_bootversion_link() {
    let (_d, sysroot) = sysroot_with_deployment();
    symlink("boot.1.1", sysroot.join("ostree/boot.1")).unwrap();
    run_hook(&sysroot, &cmdline());
    assert!(resolves_to_deployment(&sysroot));
}

#[test]
fn leaves_a_working_bootlink_alone() {
    let (_d, sysroot) = sysroot_with_deployment();
    let other = sysroot.join("ostree/deploy/debian/deploy/other.0");
    fs::create_dir_all(&other).unwrap();
    fs::create_dir_all(sysroot.join("ostree/boot.1.0/debian/f18833d12f6c")).unwrap();
    symlink("boot.1.0", sysroot.join("ostree/boot.1")).unwrap();
    symlink(
        "../../../deploy/debian/deploy/other.0",
        sysroot.join("ostree/boot.1.0/debian/f18833d12f6c/0"),
    )
    .unwrap();
    let out = run_hook(&sysroot, &cmdline());
    assert!(!out.contains("recreated"), "{out}");
    assert_eq!(
        fs::canonicalize(sysroot.join(TARGET.trim_start_matches('/'))).unwrap(),
        fs::canonicalize(other).unwrap()
    );
}

#[test]
fn does_nothing_without_the_deployment_or_the_argument() {
    let (_d, sysroot) = sysroot_with_deployment();
    run_hook(&sysroot, &format!("ostree={TARGET}"));
    assert!(!sysroot.join("ostree/boot.1").exists());
    let out = run_hook(
        &sysroot,
        &format!("ostree={TARGET} hostctl.deploy=debian/{}.0", "f".repeat(64)),
    );
    assert!(out.contains("cannot repair"), "{out}");
    assert!(!sysroot.join("ostree/boot.1").exists());
}
