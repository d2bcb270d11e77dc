//! The whole cycle on real firmware: compose the reference Debian host, build
//! a disk image, boot it in QEMU (UEFI from Debian's `ovmf`, systemd-boot,
//! dracut initramfs, ostree-prepare-root), upgrade, reboot, roll back,
//! reboot. Every step is printed as it goes; the serial console logs are kept
//! in `target/vm-test/` and named in every failure.
//!
//! Needs root, the network to Debian's mirror (the first compose downloads
//! packages into hostctl's cache) and some minutes: software emulation only.

mod common;
mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{shell as sh, write};
use vm::Vm;

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

fn hostctl(args: &[&str]) -> String {
    let out = common::hostctl_run(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hostctl {args:?} failed:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
    stdout
}

/// The treefile the harness composes: the reference host plus a console
/// autologin (to drive the guest) and a marker saying which version this is.
fn test_treefile(work: &Path, version: &str) -> PathBuf {
    test_treefile_with(work, version, false)
}

/// `broken`: the tree carries a health check that always fails, the way a
/// bad update would: boot-complete.target is never reached, so the entry is
/// not blessed, and hostctl-mark-bad.service marks it bad and reboots.
fn test_treefile_with(work: &Path, version: &str, broken: bool) -> PathBuf {
    let ov = work.join(format!("overlay-{version}"));
    write(
        &ov.join("etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"),
        "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
    );
    write(
        &ov.join("usr/share/hostctl-test/marker"),
        &format!("{version}\n"),
    );
    write(&ov.join("etc/hostctl-test.conf"), "setting = default\n");
    let mut units = String::new();
    if broken {
        write(
            &ov.join("usr/lib/systemd/system/hostctl-test-health.service"),
            "[Unit]\nDescription=A health check that fails\nBefore=boot-complete.target\n\
             OnFailure=hostctl-mark-bad.service\n[Service]\nType=oneshot\nExecStart=/bin/false\n\
             [Install]\nRequiredBy=boot-complete.target\n",
        );
        units = "units = [\"hostctl-test-health.service\"]\n".to_string();
    }
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/debian-minimal.toml");
    let tf = work.join(format!("vm-{version}.toml"));
    write(
        &tf,
        &format!(
            "include = [\"{}\"]\nref = \"test/vm\"\noverlays = [\"{}\"]\n{units}",
            reference.display(),
            ov.display()
        ),
    );
    tf
}

fn compose(repo: &Path, tf: &Path) -> String {
    let t = Instant::now();
    hostctl(&[
        "compose",
        "tree",
        "--repo",
        repo.to_str().unwrap(),
        tf.to_str().unwrap(),
    ]);
    let c = sh(&format!(
        "ostree --repo={} rev-parse test/vm",
        repo.display()
    ))
    .trim()
    .to_string();
    eprintln!("    composed {c} in {:.0?}", t.elapsed());
    c
}

fn version_of(repo: &Path, c: &str) -> String {
    sh(&format!(
        "ostree --repo={} show {c} --print-metadata-key=version",
        repo.display()
    ))
    .trim()
    .trim_matches('\'')
    .to_string()
}

/// The guest's deployments as `hostctl status --json` reports them.
fn guest_status(vm: &mut Vm) -> serde_json::Value {
    let out = vm.run("hostctl status --json");
    let start = out.find('{').expect("JSON in hostctl status output");
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("parsing {out}: {e}"))
}

fn booted_checksum(status: &serde_json::Value) -> String {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["booted"] == true)
        .and_then(|d| d["checksum"].as_str())
        .expect("a booted deployment")
        .to_string()
}

/// `bootctl list` (systemd's own reading of the ESP): (default entry id, ids
/// of the entries that are files on the ESP). bootctl also lists entries the
/// boot loader reported at boot (the pre-blessing `NAME+3` name, the virtual
/// firmware-setup entry); those have no `source:` and are left out.
fn esp_entries(vm: &mut Vm) -> (String, Vec<String>) {
    let out = vm.run("bootctl --esp-path=/efi list --no-pager");
    let mut entries = Vec::new(); // (id, is default, has a file)
    for l in out.lines().map(str::trim) {
        if let Some(t) = l.strip_prefix("title:") {
            entries.push((String::new(), t.contains("(default)"), false));
        } else if let (Some(id), Some(e)) = (l.strip_prefix("id:"), entries.last_mut()) {
            e.0 = id.trim().to_string();
        } else if let (Some(src), Some(e)) = (l.strip_prefix("source:"), entries.last_mut()) {
            e.2 = src.trim().starts_with("/efi/loader/entries/");
        }
    }
    let on_esp: Vec<_> = entries.into_iter().filter(|e| e.2).collect();
    let default = on_esp
        .iter()
        .find(|e| e.1)
        .map(|e| e.0.clone())
        .unwrap_or_else(|| panic!("no default entry on the ESP in:\n{out}"));
    (default, on_esp.into_iter().map(|e| e.0).collect())
}

/// A disk holding the build repository, for the guest to upgrade from.
fn updates_disk(repo: &Path, disk: &Path) {
    let _ = fs::remove_file(disk);
    let size_mb = sh(&format!("du -sm {}", repo.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 3
        / 2
        + 64;
    sh(&format!(
        "mkfs.ext4 -q -F -L updates -d {} {} {size_mb}M",
        repo.parent().unwrap().display(),
        disk.display()
    ));
}

fn boot(vm_dir: &Path, image: &Path, extra: &[&Path], n: u32) -> Vm {
    let log = vm_dir.join(format!("serial-boot{n}.log"));
    let t = Instant::now();
    let mut vm = Vm::start(vm_dir, image, extra, &log);
    vm.wait_for_shell(BOOT_TIMEOUT);
    eprintln!(
        "    boot {n}: shell after {:.0?} (console log {})",
        t.elapsed(),
        log.display()
    );
    vm
}

fn assert_booted_sanely(vm: &mut Vm) {
    let cmdline = vm.run("cat /proc/cmdline");
    assert!(cmdline.contains("ostree=/ostree/boot."), "{cmdline}");
    let (code, _) = vm.sh("touch /usr/hostctl-write-test");
    assert_ne!(code, 0, "/usr must be read-only");
    let usr = vm.run("findmnt -no OPTIONS /usr");
    assert!(usr.split(',').any(|o| o.trim() == "ro"), "{usr}");
    let var = vm.run("findmnt -no SOURCE /var");
    assert!(
        var.contains("/ostree/deploy/") && var.trim_end().ends_with("/var]"),
        "/var must be the stateroot's: {var}"
    );
    let failed = vm.run("systemctl --failed --no-legend --plain");
    assert!(failed.trim().is_empty(), "failed units:\n{failed}");
}

#[test]
fn boots_upgrades_and_rolls_back_in_qemu() {
    let started = Instant::now();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-test");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let repo = work.join("build/repo");
    let vm_dir = work.join("vm");
    fs::create_dir_all(&vm_dir).unwrap();

    step("1. compose v1 from treefiles/debian-minimal.toml and build the disk image");
    let v1 = compose(&repo, &test_treefile(&work, "v1"));
    let v1_version = version_of(&repo, &v1);
    let image = work.join("disk.raw");
    let t = Instant::now();
    hostctl(&[
        "image",
        "build",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        "test/vm",
        "--output",
        image.to_str().unwrap(),
        "--size",
        "6G",
        "--karg",
        "console=ttyS0,115200",
        "--remote-url",
        "file:///mnt/updates/repo",
    ]);
    eprintln!("    image built in {:.0?}", t.elapsed());

    step("2. boot v1: hostctl status, read-only /usr, ostree= on the kernel command line");
    let mut vm = boot(&vm_dir, &image, &[], 1);
    assert_booted_sanely(&mut vm);
    let st = guest_status(&mut vm);
    assert_eq!(booted_checksum(&st), v1);
    let text = vm.run("hostctl status");
    assert!(text.contains(&v1_version), "{text}");
    assert_eq!(vm.run("cat /usr/share/hostctl-test/marker").trim(), "v1");

    step("3. change a file in /etc, create one in /var");
    vm.run("echo 'setting = changed on the host' > /etc/hostctl-test.conf");
    vm.run("mkdir -p /var/lib/hostctl-test && echo kept > /var/lib/hostctl-test/data");

    step("4. compose v2, hand it to the guest on a second disk, upgrade, reboot");
    vm.poweroff(Duration::from_secs(300));
    let v2 = compose(&repo, &test_treefile(&work, "v2"));
    assert_ne!(v1, v2);
    let v2_version = version_of(&repo, &v2);
    let updates = work.join("updates.ext4");
    updates_disk(&repo, &updates);
    let mut vm = boot(&vm_dir, &image, &[&updates], 2);
    vm.run("mkdir -p /mnt/updates && mount -o ro /dev/vdb /mnt/updates");
    let check = vm.run("hostctl upgrade --check");
    assert!(check.contains(&v2), "{check}");
    vm.run("hostctl upgrade");
    let st = guest_status(&mut vm);
    let staged: Vec<_> = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["staged"] == true)
        .collect();
    assert_eq!(staged.len(), 1, "{st}");
    assert_eq!(staged[0]["checksum"], v2.as_str());
    // Finalizing at shutdown exists so that edits made after the upgrade
    // command, before the reboot, still reach the new deployment.
    vm.run("echo 'made after the upgrade' > /etc/hostctl-late.conf");
    let t = Instant::now();
    vm.reboot(BOOT_TIMEOUT);
    eprintln!("    reboot into v2: shell after {:.0?}", t.elapsed());

    step("5. v2 is booted, /etc and /var changes survived, v1 is the rollback entry on the ESP");
    assert_booted_sanely(&mut vm);
    let st = guest_status(&mut vm);
    assert_eq!(booted_checksum(&st), v2, "{st}");
    assert!(vm.run("hostctl status").contains(&v2_version));
    assert_eq!(vm.run("cat /usr/share/hostctl-test/marker").trim(), "v2");
    assert_eq!(
        vm.run("cat /etc/hostctl-test.conf").trim(),
        "setting = changed on the host"
    );
    assert_eq!(vm.run("cat /var/lib/hostctl-test/data").trim(), "kept");
    assert_eq!(
        vm.run("cat /etc/hostctl-late.conf").trim(),
        "made after the upgrade"
    );
    let (default, ids) = esp_entries(&mut vm);
    assert!(default.contains(&v2[..12]), "default {default} is not v2");
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.iter().any(|i| i.contains(&v1[..12]) && *i != default),
        "v1 is not the rollback entry: {ids:?}"
    );

    step("6. hostctl rollback, reboot: v1 is booted");
    vm.run("hostctl rollback");
    let (default, _) = esp_entries(&mut vm);
    assert!(
        default.contains(&v1[..12]),
        "after rollback the ESP default is {default}"
    );
    vm.reboot(BOOT_TIMEOUT);
    assert_booted_sanely(&mut vm);
    let st = guest_status(&mut vm);
    assert_eq!(booted_checksum(&st), v1, "{st}");
    assert_eq!(vm.run("cat /usr/share/hostctl-test/marker").trim(), "v1");
    assert_eq!(
        vm.run("cat /etc/hostctl-test.conf").trim(),
        "setting = changed on the host"
    );

    step("7. a broken update rolls itself back: its health check fails, the entry is marked bad, systemd-boot falls back, boot-check makes it permanent");
    vm.poweroff(Duration::from_secs(300));
    let v3 = compose(&repo, &test_treefile_with(&work, "v3", true));
    updates_disk(&repo, &updates);
    let mut vm = boot(&vm_dir, &image, &[&updates], 3);
    vm.run("mkdir -p /mnt/updates && mount -o ro /dev/vdb /mnt/updates");
    vm.run("hostctl upgrade");
    let t = Instant::now();
    vm.send("systemctl reboot");
    // Our reboot, then the one hostctl-mark-bad.service makes in v3's boot.
    vm.wait_for("reboot: Restarting system", Duration::from_secs(300));
    vm.wait_for("Booting paravirtualized kernel", BOOT_TIMEOUT);
    vm.wait_for("reboot: Restarting system", BOOT_TIMEOUT);
    vm.wait_for_shell(BOOT_TIMEOUT);
    eprintln!(
        "    v3 failed its health check and the machine came back in {:.0?}",
        t.elapsed()
    );
    assert_booted_sanely(&mut vm);
    let st = guest_status(&mut vm);
    assert_eq!(booted_checksum(&st), v1, "{st}");
    assert_eq!(
        st["deployments"][0]["checksum"],
        v1.as_str(),
        "the fallback must be permanent: {st}"
    );
    assert!(
        st["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["checksum"] == v3.as_str()),
        "{st}"
    );
    let text = vm.run("hostctl status");
    assert!(text.contains("failed to boot"), "{text}");
    let (default, ids) = esp_entries(&mut vm);
    assert!(
        default.contains(&v1[..12]),
        "ESP default after the fallback: {default}"
    );
    let bad = vm.run("ls /efi/loader/entries");
    assert!(
        bad.lines()
            .any(|l| l.contains(&v3[..12]) && l.contains("+0-")),
        "v3's entry is not marked bad: {bad} {ids:?}"
    );
    let guest_order: Vec<String> = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["checksum"].as_str().unwrap().to_string())
        .collect();
    vm.poweroff(Duration::from_secs(300));

    step("ostree admin status on the image's root partition agrees with the guest");
    let mnt = work.join("root-mnt");
    fs::create_dir_all(&mnt).unwrap();
    // The GPT as util-linux reads it, not as hostctl's layout code plans it.
    let root = common::root_partition(&image);
    sh(&format!(
        "mount -o loop,ro,offset={} {} {}",
        root.offset,
        image.display(),
        mnt.display()
    ));
    let admin = Command::new("ostree")
        .args(["admin", "status", "--sysroot"])
        .arg(&mnt)
        .output()
        .unwrap();
    sh(&format!("umount {}", mnt.display()));
    let admin = String::from_utf8_lossy(&admin.stdout).into_owned();
    let host_order: Vec<String> = admin
        .lines()
        .filter_map(|l| l.trim_start_matches(['*', ' ']).split_whitespace().nth(1))
        .filter_map(|c| c.split('.').next())
        .filter(|c| c.len() == 64)
        .map(str::to_string)
        .collect();
    assert_eq!(host_order, guest_order, "ostree admin status:\n{admin}");
    eprintln!("\nwhole VM cycle took {:.0?}", started.elapsed());
}
