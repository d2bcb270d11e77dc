//! The booted test host as the VM scenarios see it: composing and booting
//! the reference tree, and the checks every scenario makes of a boot (the
//! tree booted, it is sane and blessed, earlier shutdowns were clean, a
//! pending reboot is announced). Shared by `vm_boot` and `vm_agent`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Vm;
use crate::common::{self, shell as sh, write};

/// The files every test tree adds to the reference host, in an overlay
/// directory of `work` that the caller may add to: a console autologin (to
/// drive the guest), a marker saying which version this is, a file in /etc
/// to edit, and a persistent journal. Returns the overlay directory.
pub fn test_overlay(work: &Path, version: &str) -> PathBuf {
    let ov = work.join(format!("overlay-{version}"));
    let _ = fs::remove_dir_all(&ov);
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
    ov
}

/// `work/NAME.toml`: the reference host (treefiles/debian-minimal.toml) on
/// `refname` with `overlay` and the treefile lines `extra`.
pub fn test_treefile(
    work: &Path,
    name: &str,
    refname: &str,
    overlay: &Path,
    extra: &str,
) -> PathBuf {
    test_treefile_on("debian-minimal.toml", work, name, refname, overlay, extra)
}

/// [`test_treefile`] on another reference treefile of `treefiles/`.
pub fn test_treefile_on(
    reference: &str,
    work: &Path,
    name: &str,
    refname: &str,
    overlay: &Path,
    extra: &str,
) -> PathBuf {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("treefiles")
        .join(reference);
    let tf = work.join(format!("{name}.toml"));
    write(
        &tf,
        &format!(
            "include = [\"{}\"]\nref = \"{refname}\"\noverlays = [\"{}\"]\n{extra}",
            reference.display(),
            overlay.display()
        ),
    );
    tf
}

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

pub fn step(msg: &str) {
    eprintln!("\n==> {msg}");
}

pub fn hostctl(args: &[&str]) -> String {
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

/// The build pipeline's key pair, made once next to the repository:
/// (secret, public). Every version is signed; the image trusts the key.
pub fn signing_key(repo: &Path) -> (PathBuf, PathBuf) {
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

pub fn compose(repo: &Path, refname: &str, tf: &Path) -> String {
    let t = Instant::now();
    let (secret, _) = signing_key(repo);
    let deb = common::hostctl_deb();
    hostctl(&[
        "compose",
        "tree",
        "--repo",
        repo.to_str().unwrap(),
        "--sign-key",
        secret.to_str().unwrap(),
        "--hostctl-deb",
        deb.to_str().unwrap(),
        tf.to_str().unwrap(),
    ]);
    let c = sh(&format!(
        "ostree --repo={} rev-parse {refname}",
        repo.display()
    ))
    .trim()
    .to_string();
    eprintln!("    composed {c} in {:.0?}", t.elapsed());
    c
}

pub fn version_of(repo: &Path, c: &str) -> String {
    sh(&format!(
        "ostree --repo={} show {c} --print-metadata-key=version",
        repo.display()
    ))
    .trim()
    .trim_matches('\'')
    .to_string()
}

/// The guest's deployments as `hostctl status --json` reports them.
pub fn guest_status(vm: &mut Vm) -> serde_json::Value {
    let out = vm.run("hostctl status --json");
    let start = out.find('{').expect("JSON in hostctl status output");
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("parsing {out}: {e}"))
}

pub fn booted_checksum(status: &serde_json::Value) -> String {
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
pub fn esp_entries(vm: &mut Vm) -> (String, Vec<String>) {
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

/// Boot `image`, as boot number `n`, with a network card that reaches
/// nothing (a host has one: with none, `network-online.target` fails).
pub fn boot(vm_dir: &Path, image: &Path, extra: &[&Path], n: u32) -> Vm {
    boot_net(vm_dir, image, extra, n, &[])
}

/// [`boot`] with the network of [`Vm::start_net`].
pub fn boot_net(
    vm_dir: &Path,
    image: &Path,
    extra: &[&Path],
    n: u32,
    forwards: &[(&str, u16)],
) -> Vm {
    let log = vm_dir.join(format!("serial-boot{n}.log"));
    let t = Instant::now();
    let mut vm = Vm::start_net(vm_dir, image, extra, &log, Some(forwards));
    vm.wait_for_shell(BOOT_TIMEOUT);
    eprintln!(
        "    boot {n}: shell after {:.0?} (console log {})",
        t.elapsed(),
        log.display()
    );
    vm
}

/// systemd-boot's vendor GUID, under which it shares EFI variables with the OS.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The units whose work happens at shutdown or early at boot, around
/// deployments and boot entries: a failure there shows only in the journal.
pub const BOOT_UNITS: &[&str] = &[
    "ostree-finalize-staged.service",
    "hostctl-publish-entries.service",
    "hostctl-boot-check.service",
    "hostctl-mark-bad.service",
    "systemd-bless-boot.service",
];

/// systemd's message ids (sd-messages.h): a unit failed with a result, a
/// unit is being stopped, a unit was stopped.
pub const MSG_UNIT_FAILURE_RESULT: &str = "d9b373ed55a64feb8242e02dbe79a49c";

pub const MSG_UNIT_STOPPING: &str = "de5b426a63be47a7b6ac3eaac82e2f6f";

pub const MSG_UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";

/// The checks of every boot that reached a shell: it is the expected tree
/// (`marker`, `checksum`), it is sane, nothing failed once start-up has
/// finished, and the entry it booted from is blessed on the ESP.
pub fn check_good_boot(vm: &mut Vm, label: &str, marker: &str, checksum: &str) {
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

pub fn assert_booted_sanely(vm: &mut Vm, label: &str) {
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
pub fn decode_loader_var(od: &str) -> Result<String, String> {
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

pub fn read_loader_var(vm: &mut Vm, name: &str) -> Option<String> {
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
pub fn entry_base(file_name: &str) -> String {
    let lower = file_name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".conf").unwrap_or(&lower);
    stem.split('+').next().unwrap_or(stem).to_string()
}

/// The entry systemd-boot booted (`LoaderEntrySelected`: its id as it was
/// when the loader chose it, counter included) is `checksum`'s, and on the
/// ESP it is now `NAME.conf`: systemd-bless-boot removed the counter, so the
/// entry will not fall back after its tries run out.
pub fn assert_booted_entry_blessed(vm: &mut Vm, label: &str, checksum: &str) {
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
pub fn blessed_entry(selected: &str, checksum: &str, listing: &str) -> Result<String, String> {
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
pub struct JournalEntry {
    pub unit: String,
    pub priority: Option<u8>,
    pub message: String,
    pub message_id: String,
    pub unit_result: Option<String>,
}

impl JournalEntry {
    /// An error, or systemd saying the unit failed (that one is logged as a
    /// warning, so `-p err` alone would miss a failed ExecStop).
    pub fn is_failure(&self) -> bool {
        self.priority.is_some_and(|p| p <= 3)
            || self.unit_result.is_some()
            || self.message_id == MSG_UNIT_FAILURE_RESULT
            || self.message.contains("Failed with result")
    }

    /// systemd stopping the unit ("Stopping ...") or done stopping it
    /// ("Stopped ...").
    pub fn is_stop(&self) -> bool {
        [MSG_UNIT_STOPPING, MSG_UNIT_STOPPED].contains(&self.message_id.as_str())
            || self.message.starts_with("Stopping ")
            || self.message.starts_with("Stopped ")
    }
}

/// `journalctl -o json` output, one object per line; other lines (a
/// "-- No entries --") are left out.
pub fn parse_journal(out: &str) -> Result<Vec<JournalEntry>, String> {
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
pub fn journal(vm: &mut Vm, boot: i32, units: &[&str]) -> Vec<JournalEntry> {
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

pub fn show(entries: &[&JournalEntry]) -> String {
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
pub fn check_shutdown(vm: &mut Vm, boot: i32, what: &str, finalized: bool) -> Vec<JournalEntry> {
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
pub fn shutdown_problem(entries: &[JournalEntry], finalized: bool) -> Result<(), String> {
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

/// Whether the booted host says that its next boot is another deployment,
/// both ways operators and tools read it: `status --pending-exit-77` and
/// Debian's `/run/reboot-required` (+ `.pkgs`), which must also go away
/// once the booted deployment is the default again.
pub fn assert_reboot_pending(vm: &mut Vm, when: &str, pending: bool) {
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

/// A VM test's fresh working directory under the target's tmp dir: the
/// directory, its build repository path and the VM's own directory
/// (firmware variables, console logs). Whatever a previous run left goes.
pub fn fresh_work(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&work);
    let vm_dir = work.join("vm");
    fs::create_dir_all(&vm_dir).unwrap();
    (work.clone(), work.join("build/repo"), vm_dir)
}
