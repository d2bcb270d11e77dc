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
    // Every boot's journal on disk from the first boot on, so that the next
    // boot can read how the previous one shut down (Debian's default, `auto`,
    // keeps the first boot's journal in /run: /var/log/journal only appears
    // once tmpfiles has run, after the journal was flushed).
    write(
        &ov.join("etc/systemd/journald.conf.d/hostctl-test.conf"),
        "[Journal]\nStorage=persistent\n",
    );
    let mut units = String::new();
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

/// The build pipeline's key pair, made once next to the repository:
/// (secret, public). Every version is signed; the image trusts the key.
fn signing_key(repo: &Path) -> (PathBuf, PathBuf) {
    let dir = repo.parent().unwrap().join("keys");
    let (secret, public) = (dir.join("build.secret"), dir.join("build.pub"));
    if !secret.exists() {
        fs::create_dir_all(&dir).unwrap();
        hostctl(&[
            "key",
            "generate",
            "--output",
            dir.join("build").to_str().unwrap(),
        ]);
    }
    (secret, public)
}

fn compose(repo: &Path, tf: &Path) -> String {
    let t = Instant::now();
    let (secret, _) = signing_key(repo);
    hostctl(&[
        "compose",
        "tree",
        "--repo",
        repo.to_str().unwrap(),
        "--sign-key",
        secret.to_str().unwrap(),
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

/// systemd-boot's vendor GUID, under which it shares EFI variables with the OS.
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The units whose work happens at shutdown or early at boot, around
/// deployments and boot entries: a failure there shows only in the journal.
const BOOT_UNITS: &[&str] = &[
    "ostree-finalize-staged.service",
    "hostctl-publish-entries.service",
    "hostctl-boot-check.service",
    "hostctl-mark-bad.service",
    "systemd-bless-boot.service",
];

/// systemd's message ids (sd-messages.h): a unit failed with a result, a
/// unit is being stopped, a unit was stopped.
const MSG_UNIT_FAILURE_RESULT: &str = "d9b373ed55a64feb8242e02dbe79a49c";
const MSG_UNIT_STOPPING: &str = "de5b426a63be47a7b6ac3eaac82e2f6f";
const MSG_UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";

/// The checks of every boot that reached a shell: it is the expected tree
/// (`marker`, `checksum`), it is sane, nothing failed once start-up has
/// finished, and the entry it booted from is blessed on the ESP.
fn check_good_boot(vm: &mut Vm, label: &str, marker: &str, checksum: &str) {
    let log = vm.serial_log.display().to_string();
    // Start-up finished: boot-complete.target (when this boot was counted)
    // and systemd-bless-boot.service have had their turn.
    let (code, state) = vm.sh("systemctl is-system-running --wait");
    if state.trim() != "running" {
        let failed = vm.sh("systemctl --failed --no-legend --plain").1;
        panic!(
            "{label}: the system is {:?} (exit {code}) once start-up finished; failed units:\n{failed}(log: {log})",
            state.trim()
        );
    }
    assert_booted_sanely(vm, label);
    let seen = vm.run("cat /usr/share/hostctl-test/marker");
    assert_eq!(
        seen.trim(),
        marker,
        "{label}: the booted tree's marker is {seen:?}, expected {marker} (log: {log})"
    );
    let st = guest_status(vm);
    assert_eq!(
        booted_checksum(&st),
        checksum,
        "{label}: hostctl status: {st}"
    );
    assert_booted_entry_blessed(vm, label, checksum);
}

fn assert_booted_sanely(vm: &mut Vm, label: &str) {
    let log = vm.serial_log.display().to_string();
    let cmdline = vm.run("cat /proc/cmdline");
    assert!(
        cmdline.contains("ostree=/ostree/boot."),
        "{label}: no ostree= in the kernel command line: {cmdline} (log: {log})"
    );
    let (code, out) = vm.sh("touch /usr/hostctl-write-test");
    assert!(
        code != 0 && out.contains("Read-only file system"),
        "{label}: /usr must be read-only, but `touch /usr/hostctl-write-test` exited {code}: {out} (log: {log})"
    );
    let usr = vm.run("findmnt -no OPTIONS /usr");
    assert!(
        usr.split(',').any(|o| o.trim() == "ro"),
        "{label}: /usr is mounted {usr} (log: {log})"
    );
    let var = vm.run("findmnt -no SOURCE /var");
    assert!(
        var.contains("/ostree/deploy/") && var.trim_end().ends_with("/var]"),
        "{label}: /var must be the stateroot's: {var} (log: {log})"
    );
    let failed = vm.run("systemctl --failed --no-legend --plain");
    assert!(
        failed.trim().is_empty(),
        "{label}: failed units:\n{failed}(log: {log})"
    );
}

/// A systemd-boot EFI variable read with `od -An -v -tx1`: four bytes of
/// attributes, then a NUL-terminated UTF-16LE string.
fn decode_loader_var(od: &str) -> Result<String, String> {
    let bytes = od
        .split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).map_err(|_| format!("{t:?} is not a hex byte")))
        .collect::<Result<Vec<u8>, String>>()?;
    if bytes.len() < 4 || bytes.len() % 2 != 0 {
        return Err(format!(
            "{} bytes: no attributes + UTF-16 string",
            bytes.len()
        ));
    }
    let units: Vec<u16> = bytes[4..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let s = String::from_utf16(&units).map_err(|e| format!("not UTF-16: {e}"))?;
    Ok(s.trim_end_matches('\0').to_string())
}

fn read_loader_var(vm: &mut Vm, name: &str) -> Option<String> {
    let path = format!("/sys/firmware/efi/efivars/{name}-{LOADER_GUID}");
    let (code, _) = vm.sh(&format!("test -e {path}"));
    if code != 0 {
        return None;
    }
    let od = vm.run(&format!("od -An -v -tx1 {path}"));
    Some(
        decode_loader_var(&od)
            .unwrap_or_else(|e| panic!("{path}: {e}:\n{od}(log: {})", vm.serial_log.display())),
    )
}

/// The entry name without counter and `.conf`: hostctl's names never hold a
/// `+`, so everything from the first `+` on is systemd-boot's counter.
fn entry_base(file_name: &str) -> String {
    let lower = file_name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".conf").unwrap_or(&lower);
    stem.split('+').next().unwrap_or(stem).to_string()
}

/// The entry systemd-boot booted (`LoaderEntrySelected`: its id as it was
/// when the loader chose it, counter included) is `checksum`'s, and on the
/// ESP it is now `NAME.conf`: systemd-bless-boot removed the counter, so the
/// entry will not fall back after its tries run out.
fn assert_booted_entry_blessed(vm: &mut Vm, label: &str, checksum: &str) {
    let log = vm.serial_log.display().to_string();
    let selected = read_loader_var(vm, "LoaderEntrySelected")
        .unwrap_or_else(|| panic!("{label}: no LoaderEntrySelected EFI variable (log: {log})"));
    let counted = read_loader_var(vm, "LoaderBootCountPath");
    if counted.is_some() {
        let (code, active) = vm.sh("systemctl is-active boot-complete.target");
        assert_eq!(
            active.trim(),
            "active",
            "{label}: counted boot ({counted:?}) but boot-complete.target is {:?} (exit {code}) (log: {log})",
            active.trim()
        );
    }
    let listing = vm.run("ls -1 /efi/loader/entries");
    let base = blessed_entry(&selected, checksum, &listing)
        .unwrap_or_else(|e| panic!("{label}: {e}\n(counted: {counted:?}) (log: {log})"));
    eprintln!(
        "    {label}: booted entry {selected}, {} -> now {base}.conf",
        match &counted {
            Some(p) => format!("counted ({p}), blessed"),
            None => "already blessed".to_string(),
        }
    );
}

/// The booted entry's name without counter, if `selected` (what
/// `LoaderEntrySelected` says) is `checksum`'s entry and `listing` (of
/// `/efi/loader/entries`) holds it as `NAME.conf` and nothing else.
fn blessed_entry(selected: &str, checksum: &str, listing: &str) -> Result<String, String> {
    let base = entry_base(selected);
    if !(base.starts_with("hostctl-") && base.contains(&checksum[..12])) {
        return Err(format!(
            "systemd-boot booted entry {selected:?}, not the one of {checksum}"
        ));
    }
    let files: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|f| entry_base(f) == base)
        .collect();
    if files != [format!("{base}.conf")] {
        return Err(format!(
            "the booted entry {selected:?} is not blessed on the ESP: its files are {files:?}; /efi/loader/entries:\n{listing}"
        ));
    }
    Ok(base)
}

/// One journal entry, the fields the checks need.
#[derive(Debug, Clone)]
struct JournalEntry {
    unit: String,
    priority: Option<u8>,
    message: String,
    message_id: String,
    unit_result: Option<String>,
}

impl JournalEntry {
    /// An error, or systemd saying the unit failed (that one is logged as a
    /// warning, so `-p err` alone would miss a failed ExecStop).
    fn is_failure(&self) -> bool {
        self.priority.is_some_and(|p| p <= 3)
            || self.unit_result.is_some()
            || self.message_id == MSG_UNIT_FAILURE_RESULT
            || self.message.contains("Failed with result")
    }

    /// systemd stopping the unit ("Stopping ...") or done stopping it
    /// ("Stopped ...").
    fn is_stop(&self) -> bool {
        [MSG_UNIT_STOPPING, MSG_UNIT_STOPPED].contains(&self.message_id.as_str())
            || self.message.starts_with("Stopping ")
            || self.message.starts_with("Stopped ")
    }
}

/// `journalctl -o json` output, one object per line; other lines (a
/// "-- No entries --") are left out.
fn parse_journal(out: &str) -> Result<Vec<JournalEntry>, String> {
    let field = |v: &serde_json::Value, k: &str| -> Option<String> {
        match &v[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(b) => Some(
                String::from_utf8_lossy(
                    &b.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as u8))
                        .collect::<Vec<u8>>(),
                )
                .into_owned(),
            ),
            _ => None,
        }
    };
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| format!("{e} in journal line {l}"))?;
            Ok(JournalEntry {
                unit: field(&v, "UNIT")
                    .or_else(|| field(&v, "_SYSTEMD_UNIT"))
                    .unwrap_or_default(),
                priority: field(&v, "PRIORITY").and_then(|p| p.parse().ok()),
                message: field(&v, "MESSAGE").unwrap_or_default(),
                message_id: field(&v, "MESSAGE_ID").unwrap_or_default(),
                unit_result: field(&v, "UNIT_RESULT"),
            })
        })
        .collect()
}

/// The journal of boot `boot` (`-1`: the previous one), limited to `units`.
fn journal(vm: &mut Vm, boot: i32, units: &[&str]) -> Vec<JournalEntry> {
    let log = vm.serial_log.display().to_string();
    let mut cmd = format!(
        "journalctl -b {boot} --no-pager -o json \
         --output-fields=UNIT,_SYSTEMD_UNIT,PRIORITY,MESSAGE,MESSAGE_ID,UNIT_RESULT"
    );
    for u in units {
        cmd.push_str(&format!(" -u {u}"));
    }
    let (code, out) = vm.sh(&cmd);
    assert_eq!(
        code, 0,
        "no journal of boot {boot} ({units:?}): `{cmd}` exited {code}:\n{out}(log: {log})"
    );
    parse_journal(&out).unwrap_or_else(|e| panic!("boot {boot}'s journal: {e} (log: {log})"))
}

fn show(entries: &[&JournalEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "  [{}] p{} {}{}\n",
                e.unit,
                e.priority.map_or("?".into(), |p| p.to_string()),
                e.message,
                e.unit_result
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (result {r})"))
            )
        })
        .collect()
}

/// The shutdown of an earlier boot (`boot` = -1, -2, ...), read from its
/// journal: no errors and no failed unit among [`BOOT_UNITS`], and the
/// publishing unit's stop (whose ExecStop is the publish) is in it, so the
/// journal does cover that shutdown; `finalized`: a staged deployment was
/// finalized then, so ostree-finalize-staged.service's stop must be there
/// too. ("Stopping" is enough: both units are ordered after
/// systemd-journal-flush.service so that their shutdown work is logged to
/// /var, but the final "Stopped" may race with journald leaving /var.)
/// Returns the entries for further checks.
fn check_shutdown(vm: &mut Vm, boot: i32, what: &str, finalized: bool) -> Vec<JournalEntry> {
    let log = vm.serial_log.display().to_string();
    let entries = journal(vm, boot, BOOT_UNITS);
    if let Err(e) = shutdown_problem(&entries, finalized) {
        panic!("journal of boot {boot} ({what}): {e}(log: {log})");
    }
    eprintln!(
        "    journal of boot {boot} ({what}): {} entries of hostctl's and ostree's units, no errors",
        entries.len()
    );
    entries
}

/// [`check_shutdown`] without the VM: `entries` are a boot's entries of
/// [`BOOT_UNITS`].
fn shutdown_problem(entries: &[JournalEntry], finalized: bool) -> Result<(), String> {
    let all: Vec<&JournalEntry> = entries.iter().collect();
    let bad: Vec<&JournalEntry> = entries.iter().filter(|e| e.is_failure()).collect();
    if !bad.is_empty() {
        return Err(format!(
            "errors or failed units:\n{}all entries of {BOOT_UNITS:?}:\n{}",
            show(&bad),
            show(&all)
        ));
    }
    let mut required = vec!["hostctl-publish-entries.service"];
    if finalized {
        required.push("ostree-finalize-staged.service");
    }
    for unit in required {
        if !entries.iter().any(|e| e.unit == unit && e.is_stop()) {
            return Err(format!(
                "no stop of {unit} at its shutdown; entries of {BOOT_UNITS:?}:\n{}",
                show(&all)
            ));
        }
    }
    Ok(())
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
    check_good_boot(&mut vm, "boot 2 (v1)", "v1", &v1);
    check_shutdown(&mut vm, -1, "boot 1, powered off", false);
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
    // Finalizing at shutdown exists so that edits made after the upgrade
    // command, before the reboot, still reach the new deployment.
    vm.run("echo 'made after the upgrade' > /etc/hostctl-late.conf");
    let t = Instant::now();
    vm.reboot(BOOT_TIMEOUT);
    eprintln!("    reboot into v2: shell after {:.0?}", t.elapsed());

    step("5. v2 is booted and blessed, v2 was finalized cleanly, /etc and /var changes survived, v1 is the rollback entry on the ESP");
    check_good_boot(&mut vm, "boot 3 (v2)", "v2", &v2);
    check_shutdown(&mut vm, -1, "boot 2, finalized v2 at reboot", true);
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
    assert_eq!(
        vm.run("cat /etc/hostctl-test.conf").trim(),
        "setting = changed on the host"
    );

    step("7. a broken update rolls itself back: its health check fails, the entry is marked bad, systemd-boot falls back, boot-check makes it permanent");
    vm.poweroff(Duration::from_secs(300));
    let v3 = compose(&repo, &test_treefile_with(&work, "v3", true));
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

/// Whether the booted host says that its next boot is another deployment,
/// both ways operators and tools read it: `status --pending-exit-77` and
/// Debian's `/run/reboot-required` (+ `.pkgs`), which must also go away
/// once the booted deployment is the default again.
fn assert_reboot_pending(vm: &mut Vm, when: &str, pending: bool) {
    let (code, out) = vm.sh("hostctl status --pending-exit-77");
    let want = if pending { 77 } else { 0 };
    assert_eq!(code, want, "{when}: status --pending-exit-77:\n{out}");
    // One name per line whatever ls would do on the console's terminal.
    let files = vm.run(
        "for f in /run/reboot-required /run/reboot-required.pkgs; do \
         if test -e $f; then echo \"present $f\"; fi; done",
    );
    let listed = files
        .lines()
        .filter(|l| l.starts_with("present /run/"))
        .count();
    assert_eq!(
        listed,
        if pending { 2 } else { 0 },
        "{when}: /run/reboot-required files: {files:?}"
    );
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
