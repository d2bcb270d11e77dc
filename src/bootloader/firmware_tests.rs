//! The model meets the firmware: Debian 12's real systemd-boot, under QEMU
//! and OVMF, boots vfat images written with mtools, and the kernel it starts
//! must be the one `sdboot::default_boot` predicts. Two kinds of ESP: a
//! hand-made one with sort keys, versions, counters, a bad entry and a
//! foreign entry; and a sample of the crash replay's intermediate states
//! (crash_tests.rs), so that what the replay proves against the model holds
//! for the firmware too.
//!
//! Needs qemu-system-x86, ovmf, mtools, dosfstools, systemd-boot-efi and a
//! bootable x86-64 kernel with an EFI stub: the one in `HOSTCTL_TEST_KERNEL`,
//! else Debian's current `linux-image-*-amd64`, fetched once with
//! `apt-get download`. A boot ends when the kernel prints its command line:
//! some 20 s of software emulation, most of it the firmware reading the
//! kernel, the menu's 3 s timeout included.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use super::crash_tests::{transition, Backend, Kernels, Replay};
use super::esp::{EspFs, ENTRIES_DIR, LOADER_CONF};
use super::mtools::MtoolsEsp;
use super::plan;
use super::sdboot::{self, split_counter};
use crate::image::SYSTEMD_BOOT_EFI;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Kernel arguments that put the kernel's messages, its command line among
/// them, on the serial console QEMU captures, and turn the panic that
/// follows into a reboot, which `-no-reboot` turns into QEMU's exit.
const CONSOLE: &str = "console=ttyS0 panic=-1";

/// The kernel every test boots.
fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| match std::env::var_os("HOSTCTL_TEST_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => debian_kernel(),
    })
}

fn sh(dir: &Path, script: &str) -> String {
    crate::util::run(
        Command::new("sh").arg("-c").arg(script).current_dir(dir),
        script,
    )
    .unwrap()
    .trim()
    .to_string()
}

/// Debian's current kernel image, unpacked from its package. Kept beside
/// the test binary, so that `cargo clean` removes it, under the package's
/// name, so that a kernel update in the archive is fetched anew.
fn debian_kernel() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let cache = exe.parent().unwrap().join("test-kernels");
    std::fs::create_dir_all(&cache).unwrap();
    let pkg = sh(
        &cache,
        "apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'",
    );
    assert!(
        !pkg.is_empty(),
        "no linux-image package known to apt (apt-get update?)"
    );
    let kernel = cache.join(format!("{pkg}.vmlinuz"));
    if kernel.exists() {
        return kernel;
    }
    let fetch = tempfile::tempdir_in(&cache).unwrap();
    sh(fetch.path(), &format!("apt-get download -q {pkg}"));
    sh(
        fetch.path(),
        "dpkg-deb --fsys-tarfile ./*.deb | tar -x --wildcards './boot/vmlinuz-*'",
    );
    let unpacked = std::fs::read_dir(fetch.path().join("boot"))
        .unwrap()
        .next()
        .expect("a vmlinuz in the package")
        .unwrap()
        .path();
    // Another test process sees the kernel whole or not at all.
    std::fs::rename(unpacked, &kernel).unwrap();
    kernel
}

/// Boots the ESP image `img` and returns the kernel command line the kernel
/// printed on the serial console; `what` names the boot in messages.
fn boot(img: &Path, what: &str) -> String {
    let vars = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(OVMF_VARS, vars.path()).unwrap();
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-m", "768"])
        .args(["-nographic", "-no-reboot", "-serial", "mon:stdio"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,file={}",
            vars.path().display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    // Lines arrive through a channel so that a firmware that hangs is given
    // up on at a deadline instead of blocking a read for ever.
    let console = qemu.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(console).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = started + Duration::from_secs(600);
    let mut log = String::new();
    let cmdline = loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            break None;
        };
        if let Some((_, c)) = line.split_once("Command line:") {
            break Some(c.trim().to_string());
        }
        log.push_str(&line);
        log.push('\n');
    };
    // Once the kernel runs, systemd-boot has chosen and counted; the rest is
    // the kernel on its way to a panic, seconds of emulation that show
    // nothing more.
    let _ = qemu.kill();
    let status = qemu.wait().unwrap();
    let cmdline = cmdline.unwrap_or_else(|| {
        panic!("{what}: no kernel command line on the console ({status}):\n{log}")
    });
    eprintln!(
        "{what}: kernel started after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cmdline
}

fn entry_names(esp: &dyn EspFs) -> Vec<String> {
    let mut names: Vec<String> = esp
        .list_dir(ENTRIES_DIR)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

/// The name systemd-boot gives an entry file when it boots it (one try
/// used), or the same name when it does not count that entry.
fn after_one_try(file_name: &str) -> String {
    match split_counter(file_name) {
        Some((base, Some(c))) => format!("{base}+{}-{}.conf", c.left.saturating_sub(1), c.done + 1),
        _ => file_name.to_string(),
    }
}

/// The ESP's entry files before and after a boot.
struct EntryNames {
    before: Vec<String>,
    after: Vec<String>,
}

impl EntryNames {
    /// Checks that systemd-boot counted a try on `predicted` (an entry file
    /// name), when that entry counts tries, and renamed nothing else.
    fn assert_counted(&self, predicted: &str, what: &str) {
        let mut want: Vec<String> = self
            .before
            .iter()
            .map(|n| {
                if n == predicted {
                    after_one_try(n)
                } else {
                    n.clone()
                }
            })
            .collect();
        want.sort();
        assert_eq!(
            self.after, want,
            "{what}: systemd-boot's count of tries shows it did not boot the predicted {predicted}"
        );
    }
}

/// Boots `img`: the kernel's command line, and the entry files around it.
fn boot_counting(img: &Path, what: &str) -> (String, EntryNames) {
    let esp = MtoolsEsp::new(img, 0);
    let before = entry_names(&esp);
    let cmdline = boot(img, what);
    let after = entry_names(&esp);
    (cmdline, EntryNames { before, after })
}

fn hand_made_entry(tag: &str, sort_key: Option<&str>, version: u32) -> String {
    let mut s = format!("title {tag}\n");
    if let Some(k) = sort_key {
        s.push_str(&format!("sort-key {k}\n"));
    }
    s.push_str(&format!(
        "version {version}\nlinux /k/vmlinuz\ninitrd /k/initrd\noptions {CONSOLE} hctest={tag}\n"
    ));
    s
}

fn hctest(cmdline: &str) -> &str {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hctest="))
        .unwrap_or_else(|| panic!("no hctest= in {cmdline}"))
}

fn predicted_file(esp: &dyn EspFs) -> String {
    sdboot::default_boot(esp)
        .unwrap()
        .expect("a default")
        .entry
        .file_name
}

/// Sort keys, versions, counters, a bad and a foreign entry: the model's
/// choice is what the firmware boots, and the counted entry is renamed as
/// modelled.
#[test]
fn model_agrees_with_systemd_boot() {
    let td = tempfile::tempdir().unwrap();
    let img = td.path().join("esp.img");
    crate::image::disk::mkfs_esp(&img, crate::image::layout::ESP_SIZE).unwrap();
    let esp = MtoolsEsp::new(&img, 0);
    super::install_systemd_boot(Path::new(SYSTEMD_BOOT_EFI), &esp).unwrap();
    for d in ["loader", "loader/entries", "k"] {
        esp.create_dir(d).unwrap();
    }
    esp.copy_in(kernel(), "k/vmlinuz").unwrap();
    esp.write_file("k/initrd", b"not a cpio archive\n").unwrap();
    esp.write_file(LOADER_CONF, plan::loader_conf().as_bytes())
        .unwrap();
    for (name, body) in [
        ("hostctl-a+3.conf", hand_made_entry("A", Some("hostctl"), 5)),
        ("hostctl-b.conf", hand_made_entry("B", Some("hostctl"), 4)),
        (
            "hostctl-c+0-3.conf",
            hand_made_entry("C", Some("hostctl"), 6),
        ),
        ("zz-other.conf", hand_made_entry("Z", None, 100)),
    ] {
        esp.write_file(&format!("{ENTRIES_DIR}/{name}"), body.as_bytes())
            .unwrap();
    }

    // 1. A counted entry with the highest good version wins over a bad one
    //    with a higher version and over an entry without sort key.
    let file = predicted_file(&esp);
    assert_eq!(file, "hostctl-a+3.conf");
    let (cmdline, names) = boot_counting(&img, "counted entry");
    assert_eq!(hctest(&cmdline), "A");
    names.assert_counted(&file, "counted entry");

    // 2. That entry runs out of tries: the next good one is booted.
    let counted = format!("{ENTRIES_DIR}/{}", after_one_try(&file));
    esp.rename(&counted, &format!("{ENTRIES_DIR}/hostctl-a+0-3.conf"))
        .unwrap();
    let file = predicted_file(&esp);
    assert_eq!(file, "hostctl-b.conf");
    let (cmdline, names) = boot_counting(&img, "fallback");
    assert_eq!(hctest(&cmdline), "B");
    names.assert_counted(&file, "fallback");
}

/// What the model says a crash state boots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prediction {
    entry: String,
    /// The entry's `options`, which carry the bootlink.
    options: String,
    deployment: (String, u32),
}

fn predict(r: &Replay, n: usize, esp: &dyn EspFs) -> Prediction {
    let deployment = r.booted_after(n, esp).expect("a default");
    let chosen = sdboot::default_boot(esp).unwrap().unwrap().entry;
    Prediction {
        entry: chosen.file_name,
        options: chosen.options,
        deployment,
    }
}

/// The crash points worth a boot: the first, the last, and the first where
/// the model's answer differs from the first's (the default moving to
/// another entry or bootlink), or else the middle one.
fn sample(predictions: &[Prediction]) -> Vec<usize> {
    let last = predictions.len() - 1;
    let moved = (1..=last)
        .find(|&n| predictions[n] != predictions[0])
        .unwrap_or(last / 2);
    let mut points = vec![0, moved, last];
    points.dedup();
    points
}

/// Replays the publish of transition `name` with a crash after each number
/// of writes on a vfat image holding real kernels, and boots a sample of
/// the states the crashes leave with systemd-boot: the deployment the
/// kernel's `ostree=` bootlink leads to must be the model's.
fn crash_states_boot_as_modelled(name: &str) {
    let started = Instant::now();
    let mut t = transition(name);
    t.add_kargs(CONSOLE);
    let r = Replay::new(&t, Backend::Mtools, Kernels::Real(kernel()));
    let none = |_: &mut plan::Plan| {};
    let scratch = r.scratch("state");
    let mut predictions = Vec::new();
    for n in 0.. {
        let (esp, crashed) = r.crash_after(n, &scratch, &none);
        if !crashed {
            break;
        }
        predictions.push(predict(&r, n, esp.as_ref()));
    }
    assert!(!predictions.is_empty(), "{name}: publishing writes nothing");
    let points = sample(&predictions);
    eprintln!(
        "{name}: {} crash points, booting {points:?} (replay {:.1} s)",
        predictions.len(),
        started.elapsed().as_secs_f64()
    );
    for n in points {
        let what = format!("{name}, crash after {n} of {} writes", predictions.len());
        // A fresh copy of the state for every boot: systemd-boot renames the
        // entry it boots, which must not leak into the replay.
        let img = r.scratch(&format!("boot-{n}"));
        let (esp, _) = r.crash_after(n, &img, &none);
        let esp = esp.as_ref();
        let want = predict(&r, n, esp);
        assert_eq!(want, predictions[n], "{what}: the replay is deterministic");
        // What `image build` adds to an ESP that publishing does not write;
        // its loader.conf is the one publishing writes.
        super::install_systemd_boot(Path::new(SYSTEMD_BOOT_EFI), esp).unwrap();
        assert_eq!(
            esp.read_file(LOADER_CONF).unwrap(),
            Some(plan::loader_conf().into_bytes()),
            "{what}: loader.conf"
        );
        let (cmdline, names) = boot_counting(&img, &what);
        let got = r
            .deployment_of(&cmdline)
            .unwrap_or_else(|| panic!("{what}: no known bootlink in {cmdline}"));
        assert_eq!(
            got, &want.deployment,
            "{what}: systemd-boot booted {cmdline}, the model predicted {want:?}"
        );
        names.assert_counted(&want.entry, &what);
        eprintln!(
            "{what}: {} booted {}.{}, as predicted",
            want.entry,
            &got.0[..8],
            got.1
        );
        std::fs::remove_file(&img).unwrap();
    }
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn upgrade_crash_states_boot_as_modelled() {
    crash_states_boot_as_modelled("upgrade");
}

#[test]
fn rollback_crash_states_boot_as_modelled() {
    crash_states_boot_as_modelled("rollback");
}

/// Old entries whose bootlinks libostree retargeted: the firmware boots the
/// old entry, and the link takes it to the new deployment.
#[test]
fn rollback_retargeting_bootlinks_crash_states_boot_as_modelled() {
    crash_states_boot_as_modelled("rollback_retargeting_bootlinks");
}

/// A bad default (`+0-3`) on the ESP throughout the rollback.
#[test]
fn after_bad_entry_rollback_made_permanent_crash_states_boot_as_modelled() {
    crash_states_boot_as_modelled("after_bad_entry_rollback_made_permanent");
}
