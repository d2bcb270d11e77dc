//! The update agent on a booted host (docs/agent.md), with no command typed
//! in the guest to update it: the image is composed with `policy = "apply"`
//! and `reboot.strategy = "fleet-lock"`; the guest reaches the build
//! machine's nginx (serving the repository) and a FleetLock server run by
//! this test only through QEMU user networking with `restrict=on` and
//! `guestfwd` rules to 127.0.0.1 ports: it has no other network.
//!
//! 1. v2 is published: the agent's timer stages it, `/run/reboot-required`
//!    appears, the lock server refuses the reboot slot (no reboot), then
//!    grants it: the host reboots into v2, which passes its health check and
//!    gives the slot back.
//! 2. v3 is published, whose health check fails: the agent stages it and
//!    reboots, v3's check fails, the host falls back to v2 by itself, status
//!    says why, the slot is given back, and the agent skips v3 from then on.
//! 3. The admin switches to `reboot.strategy = "window"` with a window that
//!    is closed: v4 is staged and waits, across runs, without a reboot.
//!
//! v2, v3 and v4 are the previous tree plus a few files, committed with the
//! ostree CLI and signed with `hostctl sign`, instead of three more Debian
//! composes (~2.5 minutes each): what they test is the agent, not the compose (which
//! `vm_boot` and `debian` test).

mod common;
mod vm;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fleetlock::LockServer;
use common::nginx::Nginx;
use common::{shell as sh, write};
use vm::guest::*;
use vm::Vm;

const REF: &str = "test/agent";
/// Where the guest finds the repository's server and the lock server.
const REPO_ADDR: &str = "10.0.2.100:80";
const LOCK_ADDR: &str = "10.0.2.101:8080";
const GROUP: &str = "vm-test";
/// The health check every version ships; it passes while the tree's
/// service-state file says `running`.
const CHECK: &str = "50-test-service";
const HOSTCTL_APP_ID: &str = "c6afcfbccbc54aa19f1d50c24a069453";
const REFUSED: &str =
    r#"{"kind":"failed_lock","value":"the group's slot is held by another host"}"#;

fn agent_config(strategy: &str) -> String {
    format!(
        "[updates]\npolicy = \"apply\"\ninterval = \"1m\"\nrandomized-delay = \"0s\"\n\n\
         [reboot]\nstrategy = \"{strategy}\"\n\n\
         [fleet-lock]\nurl = \"http://{LOCK_ADDR}\"\ngroup = \"{GROUP}\"\n"
    )
}

/// The files of a version beyond [`test_overlay`]'s: the health check, the
/// state it checks, and in /etc the agent's configuration and a timer that
/// wakes the agent every 20 s (the interval, 1 minute, is the agent's).
fn agent_overlay(work: &Path, version: &str, service_state: &str) -> PathBuf {
    let ov = test_overlay(work, version);
    agent_files(&ov, version, service_state);
    write(
        &ov.join("etc/hostctl/hostctl.toml"),
        &agent_config("fleet-lock"),
    );
    write(
        &ov.join("etc/systemd/system/hostctl-agent.timer.d/test.conf"),
        // One empty assignment only: it resets all of the timer's On*Sec=
        // (an `OnUnitInactiveSec=` reset here once dropped the first run).
        // OnActiveSec: the shipped OnBootSec counts from a boot that takes
        // longer than 30 s here.
        "[Timer]\nOnActiveSec=\nOnActiveSec=30s\nOnUnitInactiveSec=20s\nRandomizedDelaySec=0\n",
    );
    ov
}

fn agent_files(dir: &Path, version: &str, service_state: &str) {
    write(
        &dir.join("usr/share/hostctl-test/marker"),
        &format!("{version}\n"),
    );
    write(
        &dir.join("usr/share/hostctl-test/service-state"),
        &format!("{service_state}\n"),
    );
    let check = dir.join(format!("usr/lib/hostctl/health.d/{CHECK}"));
    write(
        &check,
        "#!/bin/sh\nstate=$(cat /usr/share/hostctl-test/service-state)\n\
         echo \"test service: $state\"\ntest \"$state\" = running\n",
    );
    fs::set_permissions(&check, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A new version made of `base`'s tree plus `files` (see the module's
/// comment), with `base`'s package list, signed and published.
fn commit_on(repo: &Path, base: &str, files: &Path, version: &str, secret: &Path) -> String {
    let packages = sh(&format!(
        "ostree --repo={} show {base} --print-metadata-key=hostctl.packages",
        repo.display()
    ));
    let c = common::sh(
        std::process::Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["commit", "-b", REF, "--owner-uid=0", "--owner-gid=0"])
            .arg(format!("--tree=ref={base}"))
            .arg(format!("--tree=dir={}", files.display()))
            .arg(format!("--add-metadata-string=version={version}"))
            .arg(format!(
                "--add-metadata=hostctl.packages={}",
                packages.trim()
            ))
            .arg(format!("--subject={version}")),
    )
    .trim()
    .to_string();
    hostctl(&[
        "sign",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        secret.to_str().unwrap(),
        &c,
    ]);
    publish(repo, secret);
    c
}

fn publish(repo: &Path, secret: &Path) {
    hostctl(&[
        "publish",
        "--repo",
        repo.to_str().unwrap(),
        "--sign-key",
        secret.to_str().unwrap(),
    ]);
}

/// Poll the guest every 10 s until `done` says yes (returns what it
/// returned) or `timeout` passes.
fn wait_until<T>(
    vm: &mut Vm,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&mut Vm) -> Option<T>,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = done(vm) {
            eprintln!("    {what}: after {:.0?}", t.elapsed());
            return v;
        }
        if t.elapsed() > timeout {
            let journal =
                vm.run("journalctl -b --no-pager -o cat -u hostctl-agent.service | tail -n 40");
            panic!(
                "waited {timeout:?} for {what}; the agent's journal of this boot:\n{journal}(log: {})",
                vm.serial_log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

fn staged(vm: &mut Vm) -> Option<String> {
    guest_status(vm)["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["staged"] == true)
        .map(|d| d["checksum"].as_str().unwrap().to_string())
}

/// How many lines of this boot's agent journal contain `text`.
fn agent_said(vm: &mut Vm, text: &str) -> usize {
    vm.run("journalctl -b --no-pager -o cat -u hostctl-agent.service")
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

/// The lock server's requests to `path`, checked as FleetLock requests of
/// this host: POST, the protocol header, a body with the group and the
/// app-specific id `host_id`.
fn lock_calls(server: &LockServer, path: &str, host_id: &str) -> usize {
    let calls: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    for r in &calls {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(
            r.headers.get("fleet-lock-protocol").map(String::as_str),
            Some("true"),
            "{r:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["client_params"]["group"], GROUP, "{r:?}");
        assert_eq!(body["client_params"]["id"], host_id, "{r:?}");
    }
    calls.len()
}

fn boot_id(vm: &mut Vm) -> String {
    vm.run("cat /proc/sys/kernel/random/boot_id")
        .trim()
        .to_string()
}

/// Wait, on the console only (the guest reboots by itself), for the reboot
/// of the running system and for the shell of the next boot.
fn wait_for_reboot(vm: &mut Vm, what: &str) {
    let t = Instant::now();
    vm.wait_for("reboot: Restarting system", Duration::from_secs(600));
    vm.wait_for_shell(BOOT_TIMEOUT);
    eprintln!("    {what}: shell after {:.0?}", t.elapsed());
}

#[test]
fn agent_stages_reboots_by_lock_and_heals_in_qemu() {
    let started = Instant::now();
    let (work, repo, vm_dir) = fresh_work("vm-agent");
    let (secret, public) = signing_key(&repo);

    step("1. compose v1 (agent: policy apply, fleet-lock) and its image; commit and publish v2");
    let ov = agent_overlay(&work, "v1", "running");
    let v1 = compose(&repo, REF, &test_treefile(&work, "agent-v1", REF, &ov, ""));
    let image = work.join("disk.raw");
    hostctl(&[
        "image",
        "build",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        REF,
        "--output",
        image.to_str().unwrap(),
        "--size",
        "6G",
        "--karg",
        "console=ttyS0,115200",
        "--remote-url",
        &format!("http://{REPO_ADDR}"),
        "--verify-key",
        public.to_str().unwrap(),
    ]);
    let files = work.join("v2-files");
    agent_files(&files, "v2", "running");
    let v2_version = format!("{}.1", version_of(&repo, &v1));
    let v2 = commit_on(&repo, &v1, &files, &v2_version, &secret);
    // The repository alone: the signing keys beside it stay unserved.
    let nginx = Nginx::serve(&repo);
    let lock = LockServer::start(409, REFUSED);
    let forwards = [(REPO_ADDR, nginx.port), (LOCK_ADDR, lock.port)];

    step("2. boot v1: the agent stages v2 by itself, /run/reboot-required appears, the lock is refused: no reboot");
    let mut vm = boot_net(&vm_dir, &image, &[], 1, &forwards);
    check_good_boot(&mut vm, "boot 1 (v1)", "v1", &v1);
    let host_id = vm
        .run(&format!(
            "systemd-id128 machine-id --app-specific={HOSTCTL_APP_ID}"
        ))
        .trim()
        .to_string();
    let boot1 = boot_id(&mut vm);
    let s = wait_until(
        &mut vm,
        "v2 staged by the agent",
        Duration::from_secs(900),
        staged,
    );
    assert_eq!(s, v2, "the agent staged something else");
    assert_reboot_pending(&mut vm, "v2 staged by the agent", true);
    wait_until(
        &mut vm,
        "the lock server refused a slot",
        Duration::from_secs(300),
        |vm| (agent_said(vm, "refused a reboot slot") > 0).then_some(()),
    );
    assert!(lock_calls(&lock, "/v1/pre-reboot", &host_id) >= 1);
    assert_eq!(boot_id(&mut vm), boot1, "the host rebooted without a slot");

    step("3. the lock server grants the slot: the agent reboots into v2, which passes its health check and gives the slot back");
    let asked_before = lock_calls(&lock, "/v1/pre-reboot", &host_id);
    lock.answer(200, "");
    wait_for_reboot(&mut vm, "the agent rebooted into v2");
    check_good_boot(&mut vm, "boot 2 (v2)", "v2", &v2);
    check_shutdown(
        &mut vm,
        -1,
        "boot 1, finalized v2 at the agent's reboot",
        true,
    );
    assert!(lock_calls(&lock, "/v1/pre-reboot", &host_id) > asked_before);
    let health = vm.run("systemctl is-active hostctl-health.service");
    assert_eq!(health.trim(), "active", "v2's health check");
    let said = vm.run("journalctl -b -1 --no-pager -o cat -u hostctl-agent.service");
    assert!(said.contains("granted a reboot slot"), "{said}");
    wait_until(
        &mut vm,
        "the slot given back (steady-state)",
        Duration::from_secs(300),
        |_| (lock_calls(&lock, "/v1/steady-state", &host_id) >= 1).then_some(()),
    );
    assert_reboot_pending(&mut vm, "v2 booted", false);

    step("4. publish v3, whose health check fails: staged, rebooted into, failed, fallen back to v2 by itself");
    let files = work.join("v3-files");
    agent_files(
        &files,
        "v3",
        "crashed: cannot open /var/lib/test-service/db",
    );
    let v3_version = format!("{v2_version}.1-broken");
    let v3 = commit_on(&repo, &v2, &files, &v3_version, &secret);
    let released_before = lock_calls(&lock, "/v1/steady-state", &host_id);
    let t = Instant::now();
    vm.wait_for("reboot: Restarting system", Duration::from_secs(900));
    vm.wait_for("Booting paravirtualized kernel", BOOT_TIMEOUT);
    vm.wait_for("reboot: Restarting system", BOOT_TIMEOUT);
    vm.wait_for_shell(BOOT_TIMEOUT);
    eprintln!(
        "    the agent rebooted into v3, which failed and fell back, in {:.0?}",
        t.elapsed()
    );
    check_good_boot(&mut vm, "boot 4 (v2, fallback from v3)", "v2", &v2);
    check_shutdown(
        &mut vm,
        -2,
        "boot 2, finalized v3 at the agent's reboot",
        true,
    );
    let v3_boot = vm.run("journalctl -b -1 --no-pager -o cat -u hostctl-health.service");
    assert!(
        v3_boot.contains("crashed: cannot open"),
        "the failed boot's health check did not run v3's tree:\n{v3_boot}"
    );
    let text = vm.run("hostctl status");
    let want = format!("rolled back from {v3_version} ({}", &v3[..12]);
    assert!(
        text.contains(&want),
        "status does not say {want:?}:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "health check {CHECK} failed: test service: crashed: cannot open /var/lib/test-service/db"
        )),
        "{text}"
    );
    let st = guest_status(&mut vm);
    let note = st["fallback"].as_str().unwrap_or_default();
    assert!(note.contains(&want) && note.contains(CHECK), "{st}");
    assert_eq!(st["deployments"][0]["checksum"], v2.as_str(), "{st}");

    step("5. the slot is given back after the fallback, and the agent does not stage v3 again");
    wait_until(
        &mut vm,
        "the slot given back after the fallback",
        Duration::from_secs(300),
        |_| (lock_calls(&lock, "/v1/steady-state", &host_id) > released_before).then_some(()),
    );
    wait_until(
        &mut vm,
        "the agent skipping v3 twice",
        Duration::from_secs(400),
        |vm| (agent_said(vm, "it failed to boot on this host") >= 2).then_some(()),
    );
    assert_eq!(staged(&mut vm), None, "the agent staged v3 again");
    assert_reboot_pending(&mut vm, "v3 skipped", false);

    step("6. reboot.strategy = \"window\", closed: v4 is staged and waits, across runs, without a reboot");
    // A window that opens 6 hours from now, every day, in the guest's own
    // local time.
    let hour: u32 = vm.run("date +%H").trim().parse().unwrap();
    let config = agent_config("window")
        + &format!(
            "\n[[reboot.window]]\ndays = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\n\
             start = \"{:02}:00\"\nlength = \"1h\"\n",
            (hour + 6) % 24
        );
    vm.write_file("/etc/hostctl/hostctl.toml", &config);
    let files = work.join("v4-files");
    agent_files(&files, "v4", "running");
    let v4 = commit_on(&repo, &v2, &files, &format!("{v2_version}.2"), &secret);
    let boot4 = boot_id(&mut vm);
    let asked_before = lock_calls(&lock, "/v1/pre-reboot", &host_id);
    let s = wait_until(
        &mut vm,
        "v4 staged by the agent",
        Duration::from_secs(600),
        staged,
    );
    assert_eq!(s, v4);
    wait_until(
        &mut vm,
        "two runs waiting for the window",
        Duration::from_secs(400),
        |vm| (agent_said(vm, "the next maintenance window opens") >= 2).then_some(()),
    );
    assert_eq!(
        boot_id(&mut vm),
        boot4,
        "the host rebooted outside its window"
    );
    assert_reboot_pending(&mut vm, "v4 staged, waiting for the window", true);
    assert_eq!(
        lock_calls(&lock, "/v1/pre-reboot", &host_id),
        asked_before,
        "the window strategy asked the lock server"
    );
    vm.poweroff(Duration::from_secs(300));
    eprintln!("\nwhole agent VM scenario took {:.0?}", started.elapsed());
}
