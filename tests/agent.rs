//! The update agent without a VM: a FleetLock server written here (std's
//! TcpListener on 127.0.0.1) sees what the agent asks before and after a
//! reboot, a refused or unreachable lock means no reboot (a recording
//! `systemctl` first in PATH stands in for the real one), and the policies
//! `check` and `stage` on a test sysroot do what they say and no more.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fleetlock::LockServer;
use common::*;

const T0: u64 = 1_700_000_000;

/// hostctl's FleetLock application id, as docs/agent.md gives it.
const APP_ID: &str = "c6afcfbccbc54aa19f1d50c24a069453";

/// A `systemctl` that records its arguments, first in PATH: a reboot
/// request reaches it and never the real one.
struct FakeSystemctl {
    dir: tempfile::TempDir,
}

impl FakeSystemctl {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("systemctl");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n",
                dir.path().join("called").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        FakeSystemctl { dir }
    }
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
    fn calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("called")).unwrap_or_default()
    }
}

/// A config directory for the agent: `hostctl.toml` with `body`, an empty
/// state directory, and no tree defaults.
struct AgentDir {
    dir: tempfile::TempDir,
}

impl AgentDir {
    fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("hostctl.toml"), body).unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        AgentDir { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn set_config(&self, body: &str) {
        fs::write(self.dir.path().join("hostctl.toml"), body).unwrap();
    }
    /// `hostctl [--sysroot S] agent VERB --config ... ARGS` with PATH.
    fn run(&self, sysroot: Option<&Path>, verb: &str, args: &[&str], path: &str) -> Output {
        let mut cmd = Command::new(hostctl_bin());
        if let Some(s) = sysroot {
            cmd.arg("--sysroot").arg(s);
        }
        cmd.args(["agent", verb, "--config"])
            .arg(self.dir.path().join("hostctl.toml"))
            .arg("--defaults")
            .arg(self.dir.path().join("no-defaults.toml"))
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env("PATH", path);
        run_hostctl(&mut cmd)
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The id this machine should send, computed by systemd's own tool from
/// /etc/machine-id and hostctl's documented application id.
fn expected_host_id() -> String {
    let out =
        sh(Command::new("systemd-id128").args(["machine-id", &format!("--app-specific={APP_ID}")]));
    out.trim().to_string()
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn fleet_lock_granted_reboots_and_the_next_boot_releases_the_slot() {
    let server = LockServer::start(200, "");
    let fake = FakeSystemctl::new();
    let agent = AgentDir::new(&format!(
        "[updates]\npolicy = \"none\"\n[reboot]\nstrategy = \"fleet-lock\"\n[fleet-lock]\nurl = \"{}/\"\ngroup = \"workers\"\n",
        server.url()
    ));
    let out = agent.run(None, "reboot", &[], &fake.path());
    let text = ok(out);
    assert_eq!(
        fake.calls().trim(),
        "reboot",
        "systemctl calls; output: {text}"
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/pre-reboot")
    );
    assert_eq!(
        req.headers.get("fleet-lock-protocol").map(String::as_str),
        Some("true")
    );
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
    let id = expected_host_id();
    assert_eq!(
        body,
        serde_json::json!({"client_params": {"id": id, "group": "workers"}})
    );
    let machine_id = fs::read_to_string("/etc/machine-id").unwrap();
    assert_ne!(
        id,
        machine_id.trim(),
        "the machine id itself must not be sent"
    );
    assert_eq!(
        fs::read_to_string(agent.state().join("fleet-lock-held"))
            .unwrap()
            .trim(),
        boot_id()
    );

    // A run in the same boot keeps the slot (the reboot is on its way).
    ok(agent.run(None, "run-once", &[], &fake.path()));
    assert_eq!(server.seen().len(), 1, "released before the reboot");

    // After the reboot (another boot id) the first run gives it back.
    fs::write(agent.state().join("fleet-lock-held"), "another-boot\n").unwrap();
    ok(agent.run(None, "run-once", &[], &fake.path()));
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].path, "/v1/steady-state");
    assert_eq!(
        seen[1]
            .headers
            .get("fleet-lock-protocol")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen[1].body).unwrap(),
        serde_json::json!({"client_params": {"id": id, "group": "workers"}})
    );
    assert!(!agent.state().join("fleet-lock-held").exists());
    drop(server);
}

#[test]
fn no_lock_no_reboot_whether_refused_or_unreachable() {
    let server = LockServer::start(409, r#"{"kind":"failed_lock","value":"semaphore full"}"#);
    let fake = FakeSystemctl::new();
    let cfg =
        |url: &str| format!("[reboot]\nstrategy = \"fleet-lock\"\n[fleet-lock]\nurl = \"{url}\"\n");
    let agent = AgentDir::new(&cfg(&server.url()));
    let out = agent.run(None, "reboot", &[], &fake.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(fake.calls(), "", "rebooted without the lock");
    let text = both(&out);
    assert!(text.contains("semaphore full"), "{text}");
    assert_eq!(server.seen().len(), 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&server.seen()[0].body).unwrap()["client_params"]
            ["group"],
        "default"
    );
    assert!(!agent.state().join("fleet-lock-held").exists());

    // Nobody listening: logged, no reboot, no failure.
    let port = server.port;
    drop(server);
    agent.set_config(&cfg(&format!("http://127.0.0.1:{port}")));
    let out = agent.run(None, "reboot", &[], &fake.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(fake.calls(), "", "rebooted without the lock");
    assert!(both(&out).contains("127.0.0.1"), "{}", both(&out));
}

#[test]
fn a_closed_window_means_no_reboot_and_says_when() {
    let fake = FakeSystemctl::new();
    // One minute a week, at a time that is not now: closed.
    let now = Command::new("date")
        .arg("+%a %H:%M")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let now = String::from_utf8_lossy(&now.stdout).trim().to_string();
    let (day, hm) = now.split_once(' ').unwrap();
    let other_hour = (hm[..2].parse::<u32>().unwrap() + 12) % 24;
    let agent = AgentDir::new(&format!(
        "[reboot]\nstrategy = \"window\"\n[[reboot.window]]\ndays = [\"{day}\"]\nstart = \"{other_hour:02}:00\"\nlength = \"1m\"\n"
    ));
    let out = agent.run(None, "reboot", &[], &fake.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(fake.calls(), "");
    assert!(
        both(&out).contains("next maintenance window opens"),
        "{}",
        both(&out)
    );
    // Open all week: reboots.
    agent.set_config("[reboot]\nstrategy = \"window\"\n[[reboot.window]]\ndays = [\"Mon\",\"Tue\",\"Wed\",\"Thu\",\"Fri\",\"Sat\",\"Sun\"]\nstart = \"00:00\"\nlength = \"1d\"\n");
    ok(agent.run(None, "reboot", &[], &fake.path()));
    assert_eq!(fake.calls().trim(), "reboot");
}

/// The flag files' state on this machine, to show a test sysroot never
/// touches them.
fn run_flags() -> (Option<String>, Option<String>) {
    (
        fs::read_to_string("/run/reboot-required").ok(),
        fs::read_to_string("/run/reboot-required.pkgs").ok(),
    )
}

#[test]
fn policies_check_and_stage_on_a_test_sysroot() {
    let fx = Fixture::new();
    let c1 = fx.build.commit("stable", "1.0", T0, &base_files("1.0"));
    fx.install("stable", &[]);
    let c2 = fx
        .build
        .commit("stable", "2.0", T0 + 100, &base_files("2.0"));
    let fake = FakeSystemctl::new();
    let flags = run_flags();
    let agent = AgentDir::new("[updates]\npolicy = \"check\"\n");

    // check: says what is available, writes nothing.
    let before = fingerprint(fx.sysroot());
    let out = agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path());
    let text = both(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&c2) && text.contains("2.0"), "{text}");
    assert_same(&before, &fingerprint(fx.sysroot()), "policy check");
    assert_eq!(fx.admin_status()[0].checksum, c1);

    // --if-due right after a run: not due, nothing done.
    agent.set_config("[updates]\npolicy = \"stage\"\ninterval = \"1h\"\n");
    let out = agent.run(Some(fx.sysroot()), "run-once", &["--if-due"], &fake.path());
    assert!(both(&out).contains("not due"), "{}", both(&out));
    assert_same(&before, &fingerprint(fx.sysroot()), "a run that is not due");

    // An unreachable repository: logged, exit 0, nothing changed.
    let moved = fx.build.path.with_extension("away");
    fs::rename(&fx.build.path, &moved).unwrap();
    let out = agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path());
    fs::rename(&moved, &fx.build.path).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        both(&out).contains("trying again at the next run"),
        "{}",
        both(&out)
    );
    assert_eq!(fx.admin_status()[0].checksum, c1);

    // stage: deploys v2 for the next boot.
    let out = agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path());
    assert!(out.status.success(), "{}", both(&out));
    let st = fx.admin_status();
    assert_eq!(
        (st[0].checksum.as_str(), st[1].checksum.as_str()),
        (c2.as_str(), c1.as_str())
    );

    // A commit that failed to boot here is skipped until a newer one.
    let c3 = fx
        .build
        .commit("stable", "3.0", T0 + 200, &base_files("3.0"));
    fs::write(agent.state().join("failed-commits"), format!("{c3}\n")).unwrap();
    let before = fingerprint(fx.sysroot());
    let out = agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path());
    assert!(out.status.success(), "{}", both(&out));
    assert!(both(&out).contains("Skipping 3.0"), "{}", both(&out));
    assert_same(
        &before,
        &fingerprint(fx.sysroot()),
        "staging a failed commit",
    );
    let c4 = fx
        .build
        .commit("stable", "4.0", T0 + 300, &base_files("4.0"));
    ok(agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path()));
    assert_eq!(fx.admin_status()[0].checksum, c4);

    // apply on a sysroot that is not running: staged, never a reboot.
    agent.set_config("[updates]\npolicy = \"apply\"\n");
    let c5 = fx
        .build
        .commit("stable", "5.0", T0 + 400, &base_files("5.0"));
    let text = ok(agent.run(Some(fx.sysroot()), "run-once", &[], &fake.path()));
    assert!(text.contains("Not rebooting"), "{text}");
    assert_eq!(fx.admin_status()[0].checksum, c5);
    assert_eq!(fake.calls(), "");
    assert_eq!(
        run_flags(),
        flags,
        "a test sysroot touched /run/reboot-required"
    );
    fsck(fx.sysroot());
}

#[test]
fn a_bad_configuration_fails_the_run_naming_file_line_and_key() {
    let agent = AgentDir::new("[updates]\npolicy = \"check\"\nintervall = \"1h\"\n");
    let out = agent.run(None, "run-once", &[], &std::env::var("PATH").unwrap());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("hostctl.toml:3: key `updates.intervall`"),
        "{err}"
    );
}

/// `hostctl internal health-check` with the test's own health.d
/// directories; returns the output and the failure record, if any.
fn health_check(agent: &AgentDir, dirs: &[&Path], path: &str) -> (Output, Option<String>) {
    let mut cmd = Command::new(hostctl_bin());
    cmd.args([
        "--sysroot",
        "/nonexistent",
        "internal",
        "health-check",
        "--config",
    ])
    .arg(agent.dir.path().join("hostctl.toml"))
    .arg("--defaults")
    .arg(agent.dir.path().join("no-defaults.toml"))
    .arg("--state-dir")
    .arg(agent.state());
    for d in dirs {
        cmd.arg("--checks-dir").arg(d);
    }
    let out = run_hostctl(cmd.env("PATH", path));
    let record = fs::read_to_string(agent.state().join("health-failure")).ok();
    let _ = fs::remove_file(agent.state().join("health-failure"));
    (out, record)
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    fs::create_dir_all(dir).unwrap();
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn health_checks_pass_or_record_the_first_failure_with_its_output() {
    let agent = AgentDir::new("[health]\ntimeout = \"2s\"\n");
    let path = std::env::var("PATH").unwrap();
    let usr = agent.dir.path().join("usr-health.d");
    let etc = agent.dir.path().join("etc-health.d");
    let ran = agent.dir.path().join("ran");
    script(&usr, "10-ok", &format!("echo 10 >> {}", ran.display()));
    script(
        &usr,
        "20-web",
        "echo 'curl: (7) connection refused'; echo second >&2; exit 3",
    );
    fs::write(usr.join("README"), "not a check\n").unwrap();

    let (out, record) = health_check(&agent, &[&usr, &etc], &path);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stderr(&out).contains("health check 20-web failed: curl: (7) connection refused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        record.as_deref(),
        Some("-\n20-web\ncurl: (7) connection refused\nsecond\n"),
        "the record names the check and keeps its output"
    );
    assert_eq!(
        fs::read_to_string(&ran).unwrap(),
        "10\n",
        "checks run in name order"
    );

    // /etc replaces the tree's check of the same name: all pass.
    script(&etc, "20-web", "exit 0");
    let (out, record) = health_check(&agent, &[&usr, &etc], &path);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(record, None);

    // A check that hangs is killed at the timeout and fails.
    script(&etc, "30-hang", "echo waiting; sleep 60");
    let started = std::time::Instant::now();
    let (out, record) = health_check(&agent, &[&usr, &etc], &path);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        record.as_deref(),
        Some("-\n30-hang\ntimed out after 2s: waiting\n")
    );

    // Masked by a symlink to /dev/null; then a required unit that is not
    // active fails the boot (systemctl stands in for the real one).
    fs::remove_file(etc.join("30-hang")).unwrap();
    std::os::unix::fs::symlink("/dev/null", etc.join("30-hang")).unwrap();
    let fake = tempfile::tempdir().unwrap();
    script(
        fake.path(),
        "systemctl",
        "[ \"$3\" = sshd.service ] && { echo active; exit 0; }; echo failed; exit 3",
    );
    let fake_path = format!("{}:{path}", fake.path().display());
    agent.set_config("[health]\nrequired-units = [\"sshd.service\"]\n");
    let (out, record) = health_check(&agent, &[&usr, &etc], &fake_path);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(record, None);
    agent.set_config("[health]\nrequired-units = [\"sshd.service\", \"web.service\"]\n");
    let (out, record) = health_check(&agent, &[&usr, &etc], &fake_path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        record.as_deref(),
        Some("-\nweb.service\nunit web.service is failed, not active\n")
    );

    // A broken hostctl.toml does not fail a boot by itself.
    agent.set_config("[health]\nbogus = 1\n");
    let (out, _) = health_check(&agent, &[&usr, &etc], &path);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
}
