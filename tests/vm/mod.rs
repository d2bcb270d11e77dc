//! Driving a QEMU guest (UEFI firmware from Debian's `ovmf`, software
//! emulation) through its serial console: the guest autologins root on
//! ttyS0, and commands are typed at the shell with a marker echoed after each
//! so that its output and exit status can be cut out of the console stream.

#![allow(dead_code)] // each VM test uses its own part of the helpers

pub mod guest;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const PROMPT_END: &str = ":~# ";

pub struct Vm {
    child: Child,
    sock: UnixStream,
    /// How QEMU was started, to start it again after a guest reset.
    qemu_args: Vec<std::ffi::OsString>,
    sock_path: PathBuf,
    /// Console bytes not yet consumed.
    buf: String,
    pub serial_log: PathBuf,
    n: u32,
}

impl Vm {
    /// Boot `disk` (plus read-only `extra` disks, /dev/vdb, ...) with its own
    /// copy of the firmware variables in `dir`.
    pub fn start(dir: &Path, disk: &Path, extra: &[&Path], serial_log: &Path) -> Vm {
        Vm::start_net(dir, disk, extra, serial_log, None)
    }

    /// [`Vm::start`] with a network that reaches nothing but `forwards`:
    /// each (`GUEST_IP:PORT`, host port) lets the guest connect to that
    /// address and reach 127.0.0.1:port on this machine. QEMU user
    /// networking with `restrict=on` (no other traffic leaves the guest);
    /// the guest gets its address by DHCP. `Some(&[])`: a network card and
    /// DHCP, and nothing to reach. `None`: no network card at all.
    pub fn start_net(
        dir: &Path,
        disk: &Path,
        extra: &[&Path],
        serial_log: &Path,
        forwards: Option<&[(&str, u16)]>,
    ) -> Vm {
        let vars = dir.join("OVMF_VARS.fd");
        if !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars).expect("copying OVMF variables");
        }
        let sock_path = dir.join("console.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-m", "2048", "-smp", "2"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
        if let Some(forwards) = forwards {
            // `cmd:` starts socat for each connection the guest opens: a
            // `tcp:` chardev would carry a single connection, made once
            // when QEMU starts.
            let mut netdev = "user,id=n0,restrict=on".to_string();
            for (guest, port) in forwards {
                netdev.push_str(&format!(
                    ",guestfwd=tcp:{guest}-cmd:socat - TCP:127.0.0.1:{port}"
                ));
            }
            cmd.arg("-netdev")
                .arg(netdev)
                .args(["-device", "virtio-net-pci,netdev=n0"]);
        } else {
            cmd.args(["-net", "none"]);
        }
        for e in extra {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                e.display()
            ));
        }
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id=s0,path={},server=on,wait=on,logfile={},logappend=on",
                sock_path.display(),
                serial_log.display()
            ))
            .args(["-serial", "chardev:s0"]);
        // A guest reboot makes QEMU exit, and `wait_for` starts it again:
        // every boot is a cold start. OVMF's warm-reset path under software
        // emulation is not what these tests check, and a reset that hangs
        // there would look like a host that does not come back. What a
        // reboot must keep (disks, firmware variables) is in files.
        cmd.arg("-no-reboot");
        let qemu_args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        let (child, sock) = spawn_qemu(&qemu_args, &sock_path);
        Vm {
            child,
            sock,
            qemu_args,
            sock_path,
            buf: String::new(),
            serial_log: serial_log.to_path_buf(),
            n: 0,
        }
    }

    /// QEMU exited: after a guest reset (not a power-off, not a crash) start
    /// it again on the same disks and firmware variables and say so; false
    /// when it should stay down.
    fn restart_after_reset(&mut self, status: std::process::ExitStatus) -> bool {
        if !status.success() {
            return false;
        }
        let log = std::fs::read(&self.serial_log).unwrap_or_default();
        let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned();
        if tail.contains("reboot: Power down") {
            return false;
        }
        eprintln!("    the guest reset itself: starting QEMU again (cold start)");
        let (child, sock) = spawn_qemu(&self.qemu_args, &self.sock_path);
        self.child = child;
        self.sock = sock;
        true
    }

    /// Consume console output up to and including `pattern`.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(i) = self.buf.find(pattern) {
                let rest = self.buf.split_off(i + pattern.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {pattern:?} on the console (log: {})\n{}",
                    self.serial_log.display(),
                    self.log_tail()
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                if self.restart_after_reset(status) {
                    continue;
                }
                panic!(
                    "qemu exited ({status}) while waiting for {pattern:?} (log: {})\n{}",
                    self.serial_log.display(),
                    self.log_tail()
                );
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => std::thread::sleep(Duration::from_millis(100)),
                Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(ref e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the guest console: {e}"),
            }
        }
    }

    /// The console's last lines, for a failure message: CI keeps the test's
    /// output but not the serial log it names.
    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.serial_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!("--- last lines of the console ---\n{tail}\n--- end of console ---")
    }

    /// Wait until the autologin shell prompt appears (a boot finished).
    pub fn wait_for_shell(&mut self, timeout: Duration) {
        self.wait_for("(automatic login)", timeout);
        self.wait_for(PROMPT_END, Duration::from_secs(60));
        // Quieter, stable output from here on.
        self.run("export TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER=; stty -echo; dmesg -n 1");
    }

    /// Run a shell command; returns (exit status, output).
    pub fn sh(&mut self, cmd: &str) -> (i32, String) {
        self.n += 1;
        let n = self.n;
        // The marker is split in the typed text so the echo of the command
        // line can never be mistaken for it.
        let line = format!("{cmd} 2>&1; echo \"__HOSTCTL\"\"_END_{n}__ $?\"\n");
        self.sock
            .write_all(line.as_bytes())
            .expect("typing into the guest console");
        let out = self.wait_for(&format!("__HOSTCTL_END_{n}__ "), Duration::from_secs(600));
        let status = self.wait_for("\n", Duration::from_secs(10));
        let code = parse_status(&status).unwrap_or_else(|e| {
            panic!(
                "guest command `{cmd}`: {e}\noutput so far:\n{out}\n(log: {})",
                self.serial_log.display()
            )
        });
        self.wait_for(PROMPT_END, Duration::from_secs(30));
        let out = out
            .trim_end_matches(&format!("__HOSTCTL_END_{n}__ "))
            .to_string();
        // Drop the echoed command line if the terminal still echoes.
        let out = match out.find(&format!("_END_{n}__ $?\"")) {
            Some(i) => out[i..].split_once('\n').map_or("", |x| x.1).to_string(),
            None => out,
        };
        (code, out.replace('\r', ""))
    }

    /// Run a command that must succeed; returns its output.
    pub fn run(&mut self, cmd: &str) -> String {
        let (code, out) = self.sh(cmd);
        assert_eq!(
            code,
            0,
            "guest command `{cmd}` failed ({code}):\n{out}\n(log: {})",
            self.serial_log.display()
        );
        out
    }

    /// Write `content` to `path` in the guest. Sent as one line of base64:
    /// a here-document cannot be typed through [`Vm::sh`], whose status
    /// marker would follow its terminator on the same line.
    pub fn write_file(&mut self, path: &str, content: &str) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        self.run(&format!("echo {b64} | base64 -d > {path}"));
    }

    /// Type a line without waiting for anything.
    pub fn send(&mut self, line: &str) {
        self.sock
            .write_all(format!("{line}\n").as_bytes())
            .expect("typing into the guest console");
    }

    /// Reboot and wait for the next shell.
    pub fn reboot(&mut self, timeout: Duration) {
        self.sock.write_all(b"systemctl reboot\n").unwrap();
        // The prompt of the old boot is gone; wait for the new boot's login.
        self.buf.clear();
        self.wait_for_shell(timeout);
    }

    /// Power off and wait for QEMU to exit.
    pub fn poweroff(mut self, timeout: Duration) {
        let _ = self.sock.write_all(b"systemctl poweroff\n");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            let mut chunk = [0u8; 65536];
            let _ = self.sock.read(&mut chunk);
        }
        panic!(
            "the guest did not power off within {timeout:?} (log: {})",
            self.serial_log.display()
        );
    }
}

/// Start QEMU with `args` and connect to its console socket (QEMU waits
/// for that connection before it runs the guest).
fn spawn_qemu(args: &[std::ffi::OsString], sock_path: &Path) -> (Child, UnixStream) {
    let _ = std::fs::remove_file(sock_path);
    let child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let deadline = Instant::now() + Duration::from_secs(30);
    let sock = loop {
        match UnixStream::connect(sock_path) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("connecting to the guest console: {e}"),
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (child, sock)
}

/// The exit status echoed after the end marker: `$?`, a number from 0 to
/// 255, alone up to the end of the line. Anything else (console noise mixed
/// into the line, a cut-off line) is an error naming what was seen, never a
/// "non-zero" status that a check for failure would accept.
pub fn parse_status(line: &str) -> Result<i32, String> {
    let t = line.trim();
    match t.parse::<u8>() {
        Ok(code) if t.bytes().all(|b| b.is_ascii_digit()) => Ok(code.into()),
        _ => Err(format!(
            "unreadable exit status {line:?} after the end marker"
        )),
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
