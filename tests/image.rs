//! `hostctl image build` from a small test tree, checked with tools other
//! than hostctl: the GPT read back by util-linux's `sfdisk --json`, the
//! filesystems by `blkid`, the root partition mounted at the offset sfdisk
//! reports and read by `ostree admin status`. Failed builds must leave no
//! image, no scratch directory, no mount and no loop device behind
//! (docs/image.md).
//!
//! Needs root (the root filesystem is loop-mounted), sfdisk, mkfs.ext4,
//! mkfs.vfat, mtools and the build machine's systemd-boot (the test tree has
//! none of its own).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::*;

const MIB: u64 = 1024 * 1024;

fn scratch() -> tempfile::TempDir {
    fs::create_dir_all("/var/tmp").unwrap();
    tempfile::Builder::new()
        .prefix("hostctl-image-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn image_build(repo: &Path, refname: &str, output: &Path, size: &str) -> Output {
    hostctl_run(&[
        "image",
        "build",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        refname,
        "--output",
        output.to_str().unwrap(),
        "--size",
        size,
    ])
}

/// Loop devices backed by a file under `dir`, and mounts under `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let d = dir.to_str().unwrap();
    let loops = sh(Command::new("losetup").arg("--all"));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    loops
        .lines()
        .filter(|l| l.contains(d))
        .map(|l| format!("loop device: {l}"))
        .chain(
            mounts
                .lines()
                .filter(|l| l.contains(d))
                .map(|l| format!("mount: {l}")),
        )
        .collect()
}

/// A read-only loop mount of one partition of an image, undone on drop.
struct PartitionMount<'a>(&'a Path);

impl<'a> PartitionMount<'a> {
    fn new(image: &Path, p: &GptPartition, at: &'a Path) -> Self {
        fs::create_dir_all(at).unwrap();
        sh(Command::new("mount")
            .arg("-o")
            .arg(format!("loop,ro,offset={},sizelimit={}", p.offset, p.size))
            .arg(image)
            .arg(at));
        PartitionMount(at)
    }
}

impl Drop for PartitionMount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn blkid(image: &Path, p: &GptPartition, tag: &str) -> String {
    sh(Command::new("blkid")
        .args(["-p", "-O", &p.offset.to_string(), "-s", tag, "-o", "value"])
        .arg(image))
    .trim()
    .to_string()
}

/// The image's partition table and filesystems as independent tools see
/// them, and the sysroot on the root partition that `sfdisk` (not hostctl's
/// layout code) locates.
#[test]
fn the_image_reads_back_with_sfdisk_blkid_and_ostree() {
    let build = BuildRepo::new();
    let commit = build.commit("test/img", "1.0", 1_700_000_000, &base_files("1.0"));
    let t = scratch();
    let img = t.path().join("disk.raw");
    ok(image_build(&build.path, "test/img", &img, "1100M"));
    let len = fs::metadata(&img).unwrap().len();
    assert_eq!(len, 1100 * MIB);

    let parts = gpt_partitions(&img);
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (esp, root) = (&parts[0], &parts[1]);
    assert_eq!(
        (esp.type_guid.as_str(), esp.name.as_str()),
        (ESP_GUID, "ESP")
    );
    assert_eq!(
        (root.type_guid.as_str(), root.name.as_str()),
        (DPS_ROOT_X86_64, "root")
    );
    assert_eq!(esp.offset % MIB, 0, "{esp:?}");
    assert_eq!(root.offset % MIB, 0, "{root:?}");
    assert_eq!(esp.size, 512 * MIB);
    assert!(root.offset >= esp.offset + esp.size, "{parts:?}");
    assert!(root.offset + root.size <= len - 33 * 512, "{parts:?}");
    assert_eq!(root_partition(&img), *root);

    assert_eq!(blkid(&img, esp, "TYPE"), "vfat");
    assert_eq!(blkid(&img, esp, "LABEL"), "ESP");
    assert_eq!(blkid(&img, root, "TYPE"), "ext4");
    assert_eq!(blkid(&img, root, "LABEL"), "root");

    let mnt = t.path().join("root-mnt");
    let admin = {
        let _m = PartitionMount::new(&img, root, &mnt);
        sh(Command::new("ostree")
            .args(["admin", "status", "--sysroot"])
            .arg(&mnt))
    };
    assert!(admin.contains(&commit), "{admin}");
    assert!(leftovers(t.path()).is_empty(), "{:?}", leftovers(t.path()));
}

/// docs/image.md: "a failed build leaves no image behind", failing before
/// anything is made (an unknown ref) and part way, with the root filesystem
/// loop-mounted (a tree libostree cannot deploy, a tree too big for the disk).
#[test]
fn a_failed_image_build_leaves_no_image_and_no_loop_device() {
    let build = BuildRepo::new();
    build.commit("test/img", "1.0", 1_700_000_000, &base_files("1.0"));
    let mut no_kernel = base_files("1.0");
    no_kernel.retain(|k, _| !k.starts_with("usr/lib/modules/"));
    build.commit("test/no-kernel", "1.0", 1_700_000_000, &no_kernel);
    // Zeros compress well in the archive repository, but the sysroot's bare
    // repository holds them in full: 600 MiB on a 512 MiB root filesystem.
    let mut big = base_files("1.0");
    big.insert("usr/share/big/zeros".into(), "\0".repeat(600 << 20));
    build.commit("test/big", "1.0", 1_700_000_000, &big);

    let t = scratch();
    let out_dir = t.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let img = out_dir.join("disk.raw");
    assert!(leftovers(t.path()).is_empty());
    for (refname, size, expect) in [
        ("test/missing", "1100M", "no ref test/missing"),
        ("test/no-kernel", "1100M", "kernel"),
        // libostree refuses before the disk is full ("min-free-space-percent
        // ... would be exceeded"), or the write fails ("No space left").
        ("test/big", "1026M", "space"),
    ] {
        let out = image_build(&build.path, refname, &img, size);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{refname}: {err}");
        assert!(
            err.contains(expect),
            "{refname}: expected {expect:?} in {err}"
        );
        assert!(
            !img.exists(),
            "{refname}: a failed build left {}",
            img.display()
        );
        let left: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{refname}: left {left:?}");
        let left = leftovers(t.path());
        assert!(left.is_empty(), "{refname}: {left:?}");
    }
}

/// `--gpg-keyring`: the image's own commit is verified with the key, and
/// its host keeps the key for its remote: libostree's keyring of `origin`,
/// with `gpg-verify` on, after the remote is pointed at `--remote-url`.
#[test]
fn an_image_trusts_its_gpg_keyring() {
    let build = BuildRepo::new();
    let key = GpgKey::generate("build");
    let sign = key.sign_args();
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    let unsigned = build.commit("test/unsigned", "1.0", 1_700_000_000, &base_files("1.0"));
    let commit = build.commit_with("test/img", "1.0", 1_700_000_000, &base_files("1.0"), &sign);
    let keyring = key.export(true);
    let t = scratch();
    let img = t.path().join("disk.raw");
    let url = "https://updates.example/repo";
    let build_image = |refname: &str| {
        hostctl_run(&[
            "image",
            "build",
            "--repo",
            build.path.to_str().unwrap(),
            "--ref",
            refname,
            "--output",
            img.to_str().unwrap(),
            "--size",
            "1100M",
            "--remote-url",
            url,
            "--gpg-keyring",
            keyring.to_str().unwrap(),
        ])
    };
    let out = build_image("test/unsigned");
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&unsigned), "{}", stderr(&out));
    assert!(!img.exists());
    ok(build_image("test/img"));
    let root = root_partition(&img);
    let mnt = t.path().join("root-mnt");
    let _m = PartitionMount::new(&img, &root, &mnt);
    let repo = format!("--repo={}", mnt.join("ostree/repo").display());
    let ostree = |args: &[&str]| sh(Command::new("ostree").arg(&repo).args(args));
    assert_eq!(ostree(&["remote", "show-url", "origin"]).trim(), url);
    assert_eq!(
        ostree(&["config", "get", "remote \"origin\".gpg-verify"]).trim(),
        "true"
    );
    let show = ostree(&["show", "--gpg-verify-remote=origin", &commit]);
    assert!(show.contains("Good signature"), "{show}");
}
