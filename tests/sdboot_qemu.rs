//! Checks hostctl's model of systemd-boot (`bootloader::sdboot`) against the
//! real systemd-boot 252 under QEMU + OVMF: entries with sort keys, versions,
//! boot counters and a bad entry; the model's prediction must be what the
//! firmware boots, and the counted entry must be renamed as modelled.
//!
//! Needs a bootable kernel image (any x86-64 Linux with an EFI stub): the
//! one in `HOSTCTL_TEST_KERNEL`, else Debian's current `linux-image-*-amd64`
//! fetched with `apt-get download`; plus qemu-system-x86, ovmf, mtools,
//! dosfstools and systemd-boot-efi. Each boot takes about 15 s of software
//! emulation.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use hostctl::bootloader::esp::EspFs;
use hostctl::bootloader::{sdboot, MtoolsEsp};

const SD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn entry(tag: &str, sort_key: Option<&str>, version: u32) -> String {
    let mut s = format!("title {tag}\n");
    if let Some(k) = sort_key {
        s.push_str(&format!("sort-key {k}\n"));
    }
    s.push_str(&format!(
        "version {version}\nlinux /k/vmlinuz\ninitrd /k/initrd\n\
         options console=ttyS0 panic=-1 hctest={tag}\n"
    ));
    s
}

fn esp_image(dir: &Path, kernel: &Path) -> PathBuf {
    let img = dir.join("esp.img");
    common::sh(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-C", "-n", "ESP"])
            .arg(&img)
            .arg("65536"),
    );
    let esp = MtoolsEsp::new(&img, 0);
    for d in ["EFI", "EFI/BOOT", "loader", "loader/entries", "k"] {
        esp.create_dir(d).unwrap();
    }
    esp.copy_in(Path::new(SD_BOOT), "EFI/BOOT/BOOTX64.EFI")
        .unwrap();
    esp.copy_in(kernel, "k/vmlinuz").unwrap();
    esp.write_file("k/initrd", b"not a cpio archive\n").unwrap();
    esp.write_file("loader/loader.conf", b"default hostctl-*\ntimeout 0\n")
        .unwrap();
    for (name, body) in [
        ("hostctl-a+3.conf", entry("A", Some("hostctl"), 5)),
        ("hostctl-b.conf", entry("B", Some("hostctl"), 4)),
        ("hostctl-c+0-3.conf", entry("C", Some("hostctl"), 6)),
        ("zz-other.conf", entry("Z", None, 100)),
    ] {
        esp.write_file(&format!("loader/entries/{name}"), body.as_bytes())
            .unwrap();
    }
    img
}

/// Boots the image until the kernel panics for lack of a root filesystem
/// (it has printed its command line by then) and returns `hctest=`.
fn boot(dir: &Path, img: &Path) -> String {
    let vars = dir.join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let out = Command::new("timeout")
        .arg("600")
        .args(["qemu-system-x86_64", "-machine", "q35", "-m", "768"])
        .args(["-nographic", "-no-reboot", "-serial", "mon:stdio"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", img.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let line = log
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_else(|| panic!("no kernel command line on the console:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("hctest="))
        .unwrap_or_else(|| panic!("no hctest= in {line}"))
        .to_string()
}

fn predicted(esp: &MtoolsEsp) -> (String, String) {
    let d = sdboot::default_boot(esp).unwrap().expect("a default");
    let tag = d
        .entry
        .options
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hctest="))
        .unwrap()
        .to_string();
    (tag, d.entry.file_name)
}

fn entry_names(esp: &MtoolsEsp) -> Vec<String> {
    esp.list_dir("loader/entries")
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// Debian's current kernel image, unpacked from its package into `dir`.
fn debian_kernel(dir: &Path) -> PathBuf {
    let sh = |cmd: &str| {
        common::sh(Command::new("sh").arg("-c").arg(cmd).current_dir(dir))
            .trim()
            .to_string()
    };
    let pkg = sh("apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'");
    assert!(
        !pkg.is_empty(),
        "no linux-image package known to apt (apt-get update?)"
    );
    sh(&format!("apt-get download -q {pkg} 2>/dev/null"));
    sh("dpkg-deb --fsys-tarfile ./*.deb | tar -x --wildcards './boot/vmlinuz-*'");
    let k = sh("ls ./boot/vmlinuz-*");
    dir.join(k.trim_start_matches("./"))
}

#[test]
fn model_agrees_with_systemd_boot() {
    let td = tempfile::tempdir().unwrap();
    let kernel = match std::env::var_os("HOSTCTL_TEST_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => debian_kernel(td.path()),
    };
    let img = esp_image(td.path(), &kernel);
    let esp = MtoolsEsp::new(&img, 0);

    // 1. A counted entry with the highest good version wins over a bad one
    //    with a higher version and over an entry without sort key.
    let (tag, file) = predicted(&esp);
    assert_eq!(boot(td.path(), &img), tag);
    let counted = file.replace("+3.conf", "+2-1.conf");
    assert!(
        entry_names(&esp).contains(&counted),
        "systemd-boot counts the try: {:?}",
        entry_names(&esp)
    );

    // 2. That entry runs out of tries: the next good one is booted.
    let bad = counted.replace("+2-1.conf", "+0-3.conf");
    esp.rename(
        &format!("loader/entries/{counted}"),
        &format!("loader/entries/{bad}"),
    )
    .unwrap();
    let (tag2, _) = predicted(&esp);
    assert_ne!(tag2, tag);
    assert_eq!(boot(td.path(), &img), tag2);
}
