//! The whole cycle on real firmware: compose the reference container host,
//! build a disk image, boot it in QEMU (UEFI from Debian's `ovmf`,
//! systemd-boot, dracut initramfs, ostree-prepare-root), upgrade, reboot,
//! roll back, reboot. The host runs a container declared in its treefile,
//! from an image carried in the commit: each version answers with its own
//! version over HTTP, so the checks show the OS and its container moving
//! together. Every step is printed as it goes; the serial console logs are
//! kept in `target/vm-test/` and named in every failure.
//!
//! Needs root, the network to Debian's mirror (the first compose downloads
//! packages into hostctl's cache) and some minutes: software emulation only.

mod common;
mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::oci::{busybox_layer, oci_layout};
use common::{shell as sh, write};
use vm::guest::{self, *};
use vm::Vm;

const REF: &str = "test/vm";

/// The container the test host runs, its image and where its volume is.
const APP_IMAGE: &str = "localhost/app:latest";
const APP_VOLUME: &str = "/var/lib/app";

/// The treefile the harness composes: the reference container host plus a
/// console autologin (to drive the guest), a marker saying which version
/// this is, and the app container. Returns it and the app image's digest.
fn test_treefile(work: &Path, version: &str) -> (PathBuf, String) {
    test_treefile_with(work, version, false)
}

/// The app of `version`: busybox's httpd serving `app VERSION` (a two-layer
/// OCI layout written here: no registry). Returns the layout directory and
/// its manifest digest.
fn app_image(work: &Path, version: &str) -> (PathBuf, String) {
    let src = work.join(format!("app-src-{version}"));
    let out = work.join(format!("app-{version}"));
    for d in [&src, &out] {
        let _ = fs::remove_dir_all(d);
    }
    busybox_layer(&src.join("l1"));
    write(&src.join("l2/www/index.html"), &format!("app {version}\n"));
    let digest = oci_layout(&out, &[&src.join("l1"), &src.join("l2")]);
    (out, digest)
}

/// `broken`: the tree carries a health check that always fails, the way a
/// bad update would: boot-complete.target is never reached, so the entry is
/// not blessed, and hostctl-mark-bad.service marks it bad and reboots.
fn test_treefile_with(work: &Path, version: &str, broken: bool) -> (PathBuf, String) {
    let ov = guest::test_overlay(work, version);
    let mut extra = String::new();
    if broken {
        write(
            &ov.join("usr/lib/systemd/system/hostctl-test-health.service"),
            // It first writes the tree's marker and the kernel command line
            // to its journal, so that the next boot can tell that this tree
            // really booted and which entry it came from.
            "[Unit]\nDescription=A health check that fails\nBefore=boot-complete.target\n\
             OnFailure=hostctl-mark-bad.service\n[Service]\nType=oneshot\n\
             ExecStartPre=/bin/cat /usr/share/hostctl-test/marker /proc/cmdline\n\
             ExecStart=/bin/false\n[Install]\nRequiredBy=boot-complete.target\n",
        );
        extra = "units = [\"hostctl-test-health.service\"]\n".to_string();
    }
    // Every start of the container appends a line to its volume, so the
    // data of earlier boots (and versions) can be seen to survive.
    let (app, digest) = app_image(work, version);
    extra.push_str(&format!(
        r#"
[[images]]
name = "{APP_IMAGE}"
source = "{}"
format = "oci"

[[containers]]
name = "app"
image = "{APP_IMAGE}"
command = ["sh", "-c", "echo started $(cat /www/index.html) >> /data/starts; exec busybox httpd -f -p 80 -h /www"]
ports = ["8080:80"]
volumes = ["{APP_VOLUME}:/data"]
"#,
        app.display()
    ));
    let tf = guest::test_treefile_on(
        "debian-container-host.toml",
        work,
        &format!("vm-{version}"),
        REF,
        &ov,
        &extra,
    );
    (tf, digest)
}

/// What the app container answers over HTTP on the guest's port 8080
/// (published by podman), waiting for it to come up after a boot.
fn app_answer(vm: &mut Vm, label: &str) -> String {
    let t = Instant::now();
    loop {
        // bash's /dev/tcp: the guest has no HTTP client of its own.
        let (code, out) = vm.sh(
            r#"timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3'"#,
        );
        if code == 0 && out.contains("200 OK") {
            let body = out.lines().last().unwrap_or("").trim().to_string();
            eprintln!(
                "    {label}: the app answers {body:?} after {:.0?}",
                t.elapsed()
            );
            return body;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let (_, unit) = vm.sh("systemctl status --no-pager container-app.service; journalctl -b --no-pager -n 30 -u container-app.service");
            panic!(
                "{label}: the app container does not answer on port 8080 after 300 s: {out}\n{unit}\n(log: {})",
                vm.serial_log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The app of `version` answers, from the image carried in the booted
/// commit, and its volume holds the lines of every start so far.
fn check_app(vm: &mut Vm, label: &str, version: &str, starts: &[&str]) {
    assert_eq!(app_answer(vm, label), format!("app {version}"), "{label}");
    let log = vm.run(&format!("cat {APP_VOLUME}/starts"));
    let got: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let want: Vec<String> = starts.iter().map(|v| format!("started app {v}")).collect();
    assert_eq!(got, want, "{label}: the app's volume {APP_VOLUME}/starts");
}

/// dpkg on the booted host knows the hostctl package the tree was composed
/// with (`install-hostctl`), and `/usr/bin/hostctl` is that package's
/// release build, byte for byte.
fn check_hostctl_package(vm: &mut Vm, label: &str) {
    let deb = common::hostctl_deb();
    let version = sh(&format!("dpkg-deb --field {} Version", deb.display()));
    // Through cat: on the console, a terminal, dpkg -l starts a pager.
    let listed = vm.run("COLUMNS=200 dpkg -l hostctl | cat");
    assert!(
        listed.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[0] == "ii" && f[1] == "hostctl" && f[2] == version.trim()
        }),
        "{label}: dpkg -l hostctl does not list version {version}:\n{listed}"
    );
    let want = sh(&format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - ./usr/bin/hostctl | sha256sum",
        deb.display()
    ));
    let got = vm.run("sha256sum /usr/bin/hostctl");
    assert_eq!(
        got.split_whitespace().next(),
        want.split_whitespace().next(),
        "{label}: /usr/bin/hostctl is not the package's binary"
    );
    let size = vm.run("stat -c %s /usr/bin/hostctl");
    eprintln!(
        "    {label}: dpkg -l lists hostctl {}; /usr/bin/hostctl is the package's release build, {} bytes",
        version.trim(),
        size.trim()
    );
}

/// `podman images` in the guest lists the carried image with `digest`.
fn check_carried_image(vm: &mut Vm, label: &str, digest: &str) {
    let images = vm.run("podman images --format '{{.Repository}}:{{.Tag}} {{.Digest}}'");
    assert!(
        images
            .lines()
            .any(|l| l.trim() == format!("{APP_IMAGE} {digest}")),
        "{label}: podman images does not list {APP_IMAGE} {digest}:\n{images}"
    );
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

/// The broken update's boot proven from its journal: `health` are the
/// entries of its health unit, `boot` those of [`BOOT_UNITS`].
fn broken_boot_problem(
    health: &[JournalEntry],
    boot: &[JournalEntry],
    v3: &str,
) -> Result<(), String> {
    let shown = show(&health.iter().collect::<Vec<_>>());
    if !health.iter().any(|e| e.message.trim() == "v3") {
        return Err(format!(
            "the health check did not print v3's marker:\n{shown}"
        ));
    }
    if !health
        .iter()
        .any(|e| e.message.contains("hostctl.deploy=") && e.message.contains(v3))
    {
        return Err(format!(
            "the kernel command line does not name v3's deployment {v3}:\n{shown}"
        ));
    }
    if !health.iter().any(JournalEntry::is_failure) {
        return Err(format!("the health check did not fail:\n{shown}"));
    }
    if !boot.iter().any(|e| e.unit == "hostctl-mark-bad.service") {
        return Err(format!(
            "hostctl-mark-bad.service never ran:\n{}",
            show(&boot.iter().collect::<Vec<_>>())
        ));
    }
    Ok(())
}

#[test]
fn boots_upgrades_and_rolls_back_in_qemu() {
    let started = Instant::now();
    let (work, repo, vm_dir) = fresh_work("vm-test");

    step("1. compose v1 from treefiles/debian-container-host.toml and build the disk image");
    let (tf, app_v1) = test_treefile(&work, "v1");
    let v1 = compose(&repo, REF, &tf);
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
        "--verify-key",
        signing_key(&repo).1.to_str().unwrap(),
    ]);
    eprintln!("    image built in {:.0?}", t.elapsed());

    step("2. boot v1: hostctl status, read-only /usr, ostree= on the kernel command line, entry blessed");
    let mut vm = boot(&vm_dir, &image, &[], 1);
    check_good_boot(&mut vm, "boot 1 (v1)", "v1", &v1);
    let text = vm.run("hostctl status");
    assert!(text.contains(&v1_version), "{text}");
    assert!(
        text.contains("Signature: verified, key"),
        "the image's deployment is not verified against the build key: {text}"
    );

    check_app(&mut vm, "boot 1 (v1)", "v1", &["v1"]);
    check_carried_image(&mut vm, "boot 1 (v1)", &app_v1);
    check_hostctl_package(&mut vm, "boot 1 (v1)");

    step("3. change a file in /etc, create one in /var");
    vm.run("echo 'setting = changed on the host' > /etc/hostctl-test.conf");
    vm.run("mkdir -p /var/lib/hostctl-test && echo kept > /var/lib/hostctl-test/data");

    step("4. compose v2, hand it to the guest on a second disk, upgrade, reboot");
    vm.poweroff(Duration::from_secs(300));
    let (tf, app_v2) = test_treefile(&work, "v2");
    let v2 = compose(&repo, REF, &tf);
    assert_ne!(v1, v2);
    let v2_version = version_of(&repo, &v2);
    let updates = work.join("updates.ext4");
    updates_disk(&repo, &updates);
    let mut vm = boot(&vm_dir, &image, &[&updates], 2);
    check_good_boot(&mut vm, "boot 2 (v1)", "v1", &v1);
    check_shutdown(&mut vm, -1, "boot 1, powered off", false);
    check_app(&mut vm, "boot 2 (v1)", "v1", &["v1", "v1"]);
    vm.run("mkdir -p /mnt/updates && mount -o ro /dev/vdb /mnt/updates");
    let check = vm.run("hostctl upgrade --check");
    assert!(check.contains(&v2), "{check}");
    let up = vm.run("hostctl upgrade");
    assert!(
        up.contains("is signed by key"),
        "the upgrade did not check v2's signature: {up}"
    );
    let st = guest_status(&mut vm);
    let staged: Vec<_> = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["staged"] == true)
        .collect();
    assert_eq!(staged.len(), 1, "{st}");
    assert_eq!(staged[0]["checksum"], v2.as_str());
    assert_reboot_pending(&mut vm, "after the upgrade staged v2", true);
    // The booted deployment against the staged one: the image change is
    // listed next to the package changes.
    let diff = vm.run("hostctl db diff");
    assert!(
        diff.contains(&format!(
            "Images changed (1):\n  {APP_IMAGE} {app_v1} -> {app_v2}"
        )),
        "hostctl db diff in the guest:\n{diff}"
    );
    // Finalizing at shutdown exists so that edits made after the upgrade
    // command, before the reboot, still reach the new deployment.
    vm.run("echo 'made after the upgrade' > /etc/hostctl-late.conf");
    let t = Instant::now();
    vm.reboot(BOOT_TIMEOUT);
    eprintln!("    reboot into v2: shell after {:.0?}", t.elapsed());

    step("5. v2 is booted and blessed, v2 was finalized cleanly, /etc and /var changes survived, v1 is the rollback entry on the ESP");
    check_good_boot(&mut vm, "boot 3 (v2)", "v2", &v2);
    check_shutdown(&mut vm, -1, "boot 2, finalized v2 at reboot", true);
    check_app(&mut vm, "boot 3 (v2)", "v2", &["v1", "v1", "v2"]);
    check_carried_image(&mut vm, "boot 3 (v2)", &app_v2);
    assert!(vm.run("hostctl status").contains(&v2_version));
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
    assert_reboot_pending(&mut vm, "v2 booted, nothing pending", false);
    vm.run("hostctl rollback");
    assert_reboot_pending(&mut vm, "after rollback made v1 the default", true);
    let (default, _) = esp_entries(&mut vm);
    assert!(
        default.contains(&v1[..12]),
        "after rollback the ESP default is {default}"
    );
    vm.reboot(BOOT_TIMEOUT);
    check_good_boot(&mut vm, "boot 4 (v1, rolled back)", "v1", &v1);
    check_shutdown(&mut vm, -1, "boot 3, rebooted after rollback", false);
    check_app(
        &mut vm,
        "boot 4 (v1, rolled back)",
        "v1",
        &["v1", "v1", "v2", "v1"],
    );
    check_carried_image(&mut vm, "boot 4 (v1, rolled back)", &app_v1);
    assert_eq!(
        vm.run("cat /etc/hostctl-test.conf").trim(),
        "setting = changed on the host"
    );

    step("7. a broken update rolls itself back: its health check fails, the entry is marked bad, systemd-boot falls back, boot-check makes it permanent");
    vm.poweroff(Duration::from_secs(300));
    let v3 = compose(&repo, REF, &test_treefile_with(&work, "v3", true).0);
    updates_disk(&repo, &updates);
    let mut vm = boot(&vm_dir, &image, &[&updates], 3);
    check_good_boot(&mut vm, "boot 5 (v1)", "v1", &v1);
    check_shutdown(&mut vm, -1, "boot 4, powered off", false);
    vm.run("mkdir -p /mnt/updates && mount -o ro /dev/vdb /mnt/updates");
    vm.run("hostctl upgrade");
    staged_cannot_be_pinned_and_rollback_discards_it(&mut vm, &v1, &v3);
    vm.run("hostctl upgrade");
    let st = guest_status(&mut vm);
    assert_eq!(st["deployments"][0]["checksum"], v3.as_str(), "{st}");
    assert_eq!(st["deployments"][0]["staged"], true, "{st}");
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
    // The fallback boot is a good boot of v1, read from the guest itself.
    check_good_boot(&mut vm, "boot 7 (v1, fallback from v3)", "v1", &v1);
    check_shutdown(&mut vm, -2, "boot 5, finalized v3 at reboot", true);
    let v3_boot = check_shutdown(&mut vm, -1, "boot 6, v3, marked bad", false);
    // v3 really booted: its health check ran from v3's /usr, on the kernel
    // command line of v3's entry, and failed; hostctl-mark-bad.service ran.
    let health = journal(&mut vm, -1, &["hostctl-test-health.service"]);
    if let Err(e) = broken_boot_problem(&health, &v3_boot, &v3) {
        panic!("boot 6 (v3): {e}(log: {})", vm.serial_log.display());
    }
    eprintln!(
        "    boot 6 (v3), from its journal: the health check printed v3's marker and a kernel \
         command line naming v3's deployment, then failed; hostctl-mark-bad.service ran"
    );
    let st = guest_status(&mut vm);
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

/// Two promises of cli.md that need a staged deployment, hence a booted
/// host: `pin` refuses the staged deployment, and `rollback` discards it
/// (libostree's own status must agree that it is gone, not only hostctl's).
fn staged_cannot_be_pinned_and_rollback_discards_it(vm: &mut Vm, booted: &str, staged: &str) {
    let st = guest_status(vm);
    assert_eq!(st["deployments"][0]["checksum"], staged, "{st}");
    assert_eq!(st["deployments"][0]["staged"], true, "{st}");
    assert_reboot_pending(vm, "v3 staged", true);
    let (code, out) = vm.sh("hostctl pin 0");
    assert!(
        code != 0 && out.contains("staged"),
        "pinning the staged deployment: exit {code}: {out}"
    );
    let st = guest_status(vm);
    assert!(
        st["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["pinned"] == false),
        "a refused pin pinned something: {st}"
    );

    let out = vm.run("hostctl rollback");
    let st = guest_status(vm);
    let deps = st["deployments"].as_array().unwrap();
    assert_eq!(deps[0]["checksum"], booted, "rollback: {out}\n{st}");
    assert!(
        deps.iter()
            .all(|d| d["checksum"] != staged && d["staged"] == false),
        "the staged deployment survived rollback: {st}"
    );
    let admin = vm.run("ostree admin status");
    assert!(
        !admin.contains(staged) && !admin.contains("staged"),
        "ostree admin status after rollback:\n{admin}"
    );
    let (default, _) = esp_entries(vm);
    assert!(
        default.contains(&booted[..12]),
        "after discarding the staged deployment the ESP default is {default}"
    );
    assert_reboot_pending(vm, "after rollback discarded the staged v3", false);
    eprintln!("    the staged v3 could not be pinned; rollback discarded it");
}

// The pieces of the checks above that need no VM, run against what the
// guest prints when things go right and when they go wrong, so that each
// check is known to be able to fail (`cargo test --test vm_boot -- pieces`).

#[test]
fn pieces_exit_status_is_a_number_or_an_error() {
    assert_eq!(vm::parse_status("0\r\n"), Ok(0));
    assert_eq!(vm::parse_status(" 1\n"), Ok(1));
    assert_eq!(vm::parse_status("255"), Ok(255));
    for bad in [
        "",
        "\n",
        "-1",
        "+1",
        "256",
        "1 [  42.1] random: crng init",
        "abc",
    ] {
        let e = vm::parse_status(bad).unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
}

#[test]
fn pieces_loader_entry_selected_decodes() {
    // Attributes 0x06 (boot service + runtime access), then "ab+3.conf\0".
    let od = " 06 00 00 00 61 00 62 00 2b 00 33 00 2e 00 63 00 6f 00\n 6e 00 66 00 00 00\n";
    assert_eq!(decode_loader_var(od).unwrap(), "ab+3.conf");
    assert!(decode_loader_var("06 00 00 00 61").is_err());
    assert!(decode_loader_var("06 00 00").is_err());
    assert!(decode_loader_var("06 00 00 00 zz 00").is_err());
}

#[test]
fn pieces_blessed_names_have_no_counter() {
    let blessed = "hostctl-debian-0123456789ab.0-1a2b3c4d";
    for name in [
        "hostctl-debian-0123456789ab.0-1a2b3c4d+3.conf",
        "hostctl-debian-0123456789ab.0-1a2b3c4d+2-1.conf",
        "hostctl-debian-0123456789ab.0-1a2b3c4d+0-3.conf",
        "HOSTCTL-debian-0123456789ab.0-1a2b3c4d.conf",
    ] {
        assert_eq!(entry_base(name), blessed, "{name}");
    }
    // What boot 1 of a real run showed: selected with its counter, the
    // file blessed since.
    let csum = "0123456789ab".to_string() + &"0".repeat(52);
    let selected = format!("{blessed}+3.conf");
    let other = "hostctl-debian-ba9876543210.0-1a2b3c4d+3.conf";
    assert_eq!(
        blessed_entry(&selected, &csum, &format!("{blessed}.conf\n{other}\n")),
        Ok(blessed.to_string())
    );
    // Blessing broke: the counter systemd-boot left is still there.
    let e = blessed_entry(&selected, &csum, &format!("{blessed}+2-1.conf\n{other}\n")).unwrap_err();
    assert!(e.contains("not blessed") && e.contains("+2-1.conf"), "{e}");
    // Two files for the entry, or none.
    let two = format!("{blessed}.conf\n{blessed}+2-1.conf\n");
    assert!(blessed_entry(&selected, &csum, &two).is_err());
    assert!(blessed_entry(&selected, &csum, other).is_err());
    // systemd-boot booted another deployment's entry.
    let e = blessed_entry(other, &csum, &format!("{blessed}.conf\n")).unwrap_err();
    assert!(e.contains("not the one of"), "{e}");
}

fn entry(unit: &str, priority: u8, message: &str, message_id: &str) -> JournalEntry {
    JournalEntry {
        unit: unit.into(),
        priority: Some(priority),
        message: message.into(),
        message_id: message_id.into(),
        unit_result: None,
    }
}

#[test]
fn pieces_shutdown_check_fails_on_errors_failures_and_missing_stops() {
    let publish = "hostctl-publish-entries.service";
    let finalize = "ostree-finalize-staged.service";
    let good = vec![
        entry(
            publish,
            6,
            "Stopping Publish OSTree deployments...",
            MSG_UNIT_STOPPING,
        ),
        entry(
            finalize,
            6,
            "Stopping OSTree Finalize Staged Deployment...",
            MSG_UNIT_STOPPING,
        ),
        entry(finalize, 6, "Bootloader updated; bootconfig swap: yes", ""),
    ];
    assert_eq!(shutdown_problem(&good, true), Ok(()));
    // An error from hostctl's publish.
    let mut bad = good.clone();
    bad.push(entry(publish, 3, "error: publishing entries", ""));
    let e = shutdown_problem(&bad, true).unwrap_err();
    assert!(e.contains("error: publishing entries"), "{e}");
    // A failed ExecStop: systemd says so as a warning.
    let mut bad = good.clone();
    let mut failed = entry(
        publish,
        4,
        "hostctl-publish-entries.service: Failed with result 'exit-code'.",
        MSG_UNIT_FAILURE_RESULT,
    );
    failed.unit_result = Some("exit-code".into());
    bad.push(failed);
    assert!(shutdown_problem(&bad, true)
        .unwrap_err()
        .contains("exit-code"));
    // A journal that does not reach the shutdown (or a unit never stopped).
    let e = shutdown_problem(&good[2..], true).unwrap_err();
    assert!(
        e.contains("no stop of hostctl-publish-entries.service"),
        "{e}"
    );
    let e = shutdown_problem(&good[..1], true).unwrap_err();
    assert!(
        e.contains("no stop of ostree-finalize-staged.service"),
        "{e}"
    );
    assert_eq!(shutdown_problem(&good[..1], false), Ok(()));
}

#[test]
fn pieces_broken_boot_must_show_v3_failing() {
    let v3 = "3".repeat(64);
    let unit = "hostctl-test-health.service";
    let health = vec![
        entry(unit, 6, "v3", ""),
        entry(
            unit,
            6,
            &format!(
                "root=LABEL=root rw ostree=/ostree/boot.1/debian/b/0 hostctl.deploy=debian/{v3}.0"
            ),
            "",
        ),
        entry(unit, 3, "Failed to start A health check that fails.", ""),
    ];
    let boot = vec![entry(
        "hostctl-mark-bad.service",
        6,
        "Starting Mark this boot's entry bad...",
        "",
    )];
    assert_eq!(broken_boot_problem(&health, &boot, &v3), Ok(()));
    // v1 booted instead (its marker, its deployment on the command line).
    let mut v1 = health.clone();
    v1[0].message = "v1".into();
    assert!(broken_boot_problem(&v1, &boot, &v3)
        .unwrap_err()
        .contains("marker"));
    let mut v1 = health.clone();
    v1[1].message = format!("hostctl.deploy=debian/{}.0", "1".repeat(64));
    assert!(broken_boot_problem(&v1, &boot, &v3)
        .unwrap_err()
        .contains("command line"));
    // The health check passed, or mark-bad never ran.
    assert!(broken_boot_problem(&health[..2], &boot, &v3)
        .unwrap_err()
        .contains("did not fail"));
    assert!(broken_boot_problem(&health, &[], &v3)
        .unwrap_err()
        .contains("never ran"));
}

#[test]
fn pieces_journal_failures_are_seen() {
    let ok = r#"{"__CURSOR":"s=1","UNIT":"hostctl-publish-entries.service","PRIORITY":"6","MESSAGE":"Stopped Publish OSTree deployments as systemd-boot entries on the ESP.","MESSAGE_ID":"9d1aaa27d60140bd96365438aad20286"}
{"_SYSTEMD_UNIT":"ostree-finalize-staged.service","PRIORITY":"6","MESSAGE":[98,111,111,116]}
-- No entries --"#;
    let e = parse_journal(ok).unwrap();
    assert_eq!(e.len(), 2);
    assert!(e[0].is_stop() && !e[0].is_failure());
    assert_eq!(e[1].unit, "ostree-finalize-staged.service");
    assert_eq!(e[1].message, "boot");
    assert!(!e[1].is_failure() && !e[1].is_stop());
    // An error, and a failed ExecStop (systemd logs that as a warning).
    let bad = r#"{"_SYSTEMD_UNIT":"hostctl-publish-entries.service","PRIORITY":"3","MESSAGE":"error: publishing"}
{"UNIT":"hostctl-publish-entries.service","PRIORITY":"4","MESSAGE":"hostctl-publish-entries.service: Failed with result 'exit-code'.","MESSAGE_ID":"d9b373ed55a64feb8242e02dbe79a49c","UNIT_RESULT":"exit-code"}"#;
    let e = parse_journal(bad).unwrap();
    assert!(e.iter().all(JournalEntry::is_failure), "{e:?}");
    assert!(parse_journal("{\"MESSAGE\": ").is_err());
    // The stop of a unit shows as "Stopping" and "Stopped"; a start does not.
    let stop = r#"{"UNIT":"ostree-finalize-staged.service","PRIORITY":"6","MESSAGE":"Stopping OSTree Finalize Staged Deployment...","MESSAGE_ID":"de5b426a63be47a7b6ac3eaac82e2f6f"}
{"UNIT":"ostree-finalize-staged.service","PRIORITY":"6","MESSAGE":"Started OSTree Finalize Staged Deployment.","MESSAGE_ID":"39f53479d3a045ac8e11786248231fbf"}"#;
    let e = parse_journal(stop).unwrap();
    assert!(e[0].is_stop() && !e[1].is_stop());
}
