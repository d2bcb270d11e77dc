//! Publishing real libostree entries: a sysroot in a loop-mounted ext4 image
//! (deploying freezes the filesystem holding /boot, so never the test
//! machine's own), deployed with the `ostree` CLI, published by
//! `hostctl internal publish-entries` onto a directory and onto a vfat image,
//! and checked with the systemd-boot model, `ostree admin status` and `mdir`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{esp_snapshot, hostctl_cmd, ok, ostree_admin_status, run_hostctl, sh};
use hostctl::bootloader::{self, DirEsp, MtoolsEsp};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct Sysroot {
    _mount: Mount,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn sysroot() -> Sysroot {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test loop-mounts an ext4 image and needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.img");
    let root = dir.path().join("mnt");
    std::fs::create_dir(&root).unwrap();
    sh(Command::new("truncate").args(["-s", "200M"]).arg(&img));
    sh(Command::new("mkfs.ext4").arg("-q").arg(&img));
    sh(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&root));
    let mount = Mount(root.clone());
    sh(Command::new("ostree").args(["admin", "init-fs"]).arg(&root));
    sh(Command::new("ostree")
        .args(["admin", "os-init", "debian", "--sysroot"])
        .arg(&root));
    sh(Command::new("ostree")
        .arg(format!("--repo={}", root.join("ostree/repo").display()))
        .args(["config", "set", "sysroot.bootloader", "none"]));
    Sysroot {
        _mount: mount,
        root,
        _dir: dir,
    }
}

/// Commits a tiny tree whose kernel says `kernel_tag`, and deploys it.
fn deploy(s: &Sysroot, version: &str, kernel_tag: &str, kargs: &[&str]) {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    let kdir = t.join("usr/lib/modules/6.1.0-test");
    std::fs::create_dir_all(&kdir).unwrap();
    std::fs::create_dir_all(t.join("usr/etc")).unwrap();
    std::fs::write(
        kdir.join("vmlinuz"),
        format!("kernel {kernel_tag}\n").repeat(1000),
    )
    .unwrap();
    std::fs::write(
        kdir.join("initramfs.img"),
        format!("initrd {kernel_tag}\n").repeat(3000),
    )
    .unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    )
    .unwrap();
    std::fs::copy(t.join("usr/lib/os-release"), t.join("usr/etc/os-release")).unwrap();
    let repo = format!("--repo={}", s.root.join("ostree/repo").display());
    sh(Command::new("ostree")
        .arg(&repo)
        .args(["commit", "-b", "test/os", "--tree"])
        .arg(format!("dir={}", t.display()))
        .arg(format!("--add-metadata-string=version={version}")));
    let mut cmd = Command::new("ostree");
    cmd.args(["admin", "deploy", "--os", "debian", "--sysroot"])
        .arg(&s.root);
    for k in kargs {
        cmd.arg(format!("--karg={k}"));
    }
    sh(cmd.arg("test/os"));
}

fn publish_cli(s: &Sysroot, esp: &[&str]) -> String {
    ok(run_hostctl(
        hostctl_cmd()
            .args(["internal", "publish-entries", "--sysroot"])
            .arg(&s.root)
            .args(esp),
    ))
}

/// `(checksum, serial)` of deployment 0 according to `ostree admin status`.
fn ostree_default(s: &Sysroot) -> (String, u32) {
    let first = &ostree_admin_status(&s.root)[0];
    (first.checksum.clone(), u32::try_from(first.serial).unwrap())
}

/// The deployment the ESP's default entry boots, resolved in the sysroot.
fn esp_default(s: &Sysroot, esp: &dyn bootloader::Esp) -> (String, u32, String) {
    let d = common::esp_default(&s.root, esp);
    (d.checksum, d.serial, d.file_name)
}

fn vfat_image(dir: &Path) -> PathBuf {
    let img = dir.join("esp.img");
    sh(Command::new("mkfs.vfat")
        .args(["-F", "32", "-C", "-n", "ESP"])
        .arg(&img)
        .arg("65536"));
    img
}

#[test]
fn publish_follows_real_deployments() {
    let s = sysroot();
    let work = tempfile::tempdir().unwrap();
    let esp_dir = work.path().join("esp");
    std::fs::create_dir(&esp_dir).unwrap();
    let esp_arg = ["--esp", esp_dir.to_str().unwrap()];
    let img = vfat_image(work.path());
    let img_arg = ["--esp-image", img.to_str().unwrap()];
    let dir_esp = DirEsp::new(&esp_dir);
    let img_esp = MtoolsEsp::new(&img, 0);

    // v1: one deployment.
    deploy(&s, "1", "one", &["root=LABEL=root", "rw"]);
    let out = publish_cli(&s, &esp_arg);
    assert!(out.contains("Default entry: hostctl-debian-"), "{out}");
    publish_cli(&s, &img_arg);
    let v1 = ostree_default(&s);
    for esp in [&dir_esp as &dyn bootloader::Esp, &img_esp] {
        let (c, serial, name) = esp_default(&s, esp);
        assert_eq!((c, serial), v1.clone());
        assert!(name.ends_with("+3.conf"), "{name}");
    }
    assert!(publish_cli(&s, &esp_arg).contains("up to date"));

    // systemd-boot counted a try, then the boot was blessed.
    let entries = esp_dir.join("loader/entries");
    let name = std::fs::read_dir(&entries)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let blessed = name.replace("+3.conf", ".conf");
    std::fs::rename(entries.join(&name), entries.join(&blessed)).unwrap();

    // v2 with another kernel: new default, v1 kept as rollback and blessed.
    deploy(&s, "2", "two", &[]);
    publish_cli(&s, &esp_arg);
    publish_cli(&s, &img_arg);
    let v2 = ostree_default(&s);
    assert_ne!(v1, v2);
    for esp in [&dir_esp as &dyn bootloader::Esp, &img_esp] {
        let (c, serial, _) = esp_default(&s, esp);
        assert_eq!((c, serial), v2.clone());
    }
    let names: Vec<String> = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&blessed), "v1 keeps its blessing: {names:?}");
    let kernel_dirs = std::fs::read_dir(esp_dir.join("hostctl")).unwrap().count();
    assert_eq!(kernel_dirs, 2, "one directory per boot checksum");

    // The image, witnessed by mtools itself.
    let listing = sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::/loader/entries"));
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.lines().all(|l| l.ends_with("+3.conf")), "{listing}");

    // v3 = v2 again (same kernel): libostree drops v1, kernel "one" goes.
    deploy(&s, "3", "two", &[]);
    publish_cli(&s, &esp_arg);
    let v3 = ostree_default(&s);
    assert_eq!(esp_default(&s, &dir_esp).0, v3.0);
    assert_eq!(esp_default(&s, &dir_esp).1, v3.1);
    let kernel_dirs: Vec<_> = std::fs::read_dir(esp_dir.join("hostctl"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kernel_dirs.len(), 1, "{kernel_dirs:?}");
    let conf = std::fs::read_to_string(esp_dir.join("loader/loader.conf")).unwrap();
    assert!(conf.contains("default hostctl-*"), "{conf}");
}

#[test]
fn unmounted_esp_is_refused() {
    let s = sysroot();
    deploy(&s, "1", "one", &[]);
    let esp = s.root.join("boot/efi");
    std::fs::create_dir(&esp).unwrap();
    let out = run_hostctl(
        hostctl_cmd()
            .args(["internal", "publish-entries", "--sysroot"])
            .arg(&s.root)
            .arg("--esp")
            .arg(&esp),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not mounted"), "{err}");
    assert_eq!(
        std::fs::read_dir(&esp).unwrap().count(),
        0,
        "nothing written"
    );
}

/// SHA-256 and modification time of a file, for "not one byte written".
fn file_state(p: &Path) -> (String, std::time::SystemTime) {
    use sha2::Digest;
    let bytes = std::fs::read(p).unwrap();
    let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
    (hex::encode(sha2::Sha256::digest(bytes)), mtime)
}

#[test]
fn republishing_an_up_to_date_esp_changes_no_byte() {
    let s = sysroot();
    let work = tempfile::tempdir().unwrap();
    let esp_dir = work.path().join("esp");
    std::fs::create_dir(&esp_dir).unwrap();
    let img = vfat_image(work.path());
    deploy(&s, "1", "one", &["rw"]);
    deploy(&s, "2", "two", &["rw", "quiet"]);
    let esp_arg = ["--esp", esp_dir.to_str().unwrap()];
    let img_arg = ["--esp-image", img.to_str().unwrap()];
    publish_cli(&s, &esp_arg);
    publish_cli(&s, &img_arg);
    assert_eq!(
        esp_default(&s, &DirEsp::new(&esp_dir)).0,
        ostree_default(&s).0
    );
    let dir_before = esp_snapshot(&esp_dir);
    let img_before = file_state(&img);
    // Coarse file system timestamps would hide a rewrite made right away.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    publish_cli(&s, &esp_arg);
    publish_cli(&s, &img_arg);

    let dir_after = esp_snapshot(&esp_dir);
    let changed: Vec<String> = dir_before
        .iter()
        .filter(|(k, v)| dir_after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", dir_after.get(k)))
        .chain(
            dir_after
                .keys()
                .filter(|k| !dir_before.contains_key(*k))
                .map(|k| format!("added {k}")),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "republishing an up-to-date directory ESP changed:\n{}",
        changed.join("\n")
    );
    let img_after = file_state(&img);
    assert_eq!(
        img_before.0, img_after.0,
        "republishing an up-to-date vfat image changed its bytes"
    );
    assert_eq!(
        img_before.1, img_after.1,
        "republishing an up-to-date vfat image wrote to it (mtime changed)"
    );
}
