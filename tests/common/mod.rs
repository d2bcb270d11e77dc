//! Shared fixtures for the integration tests: sysroots on loop-mounted ext4
//! images (deploying freezes the filesystem holding /boot, which must never
//! be the test machine's own), test commits, and a sysroot fingerprint.
#![allow(dead_code)]

pub mod fleetlock;
pub mod nginx;
pub mod oci;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Run a command and return its stdout, panicking with its output on failure.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    succeeded(out, &format!("{cmd:?}"))
}

/// Run a shell command line and return its stdout, panicking on failure.
pub fn shell(cmd: &str) -> String {
    sh(Command::new("sh").arg("-c").arg(cmd))
}

/// Require a successful exit and return stdout; show both streams if not.
pub fn ok(out: Output) -> String {
    succeeded(out, "command")
}

fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lines of a command's stderr that are not a pull's progress lines
/// (`Receiving: ...`, printed every few seconds while a pull runs): a
/// failure is reported in one of these.
pub fn error_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Receiving: "))
        .map(str::to_string)
        .collect()
}

/// Deterministic text that compresses about as well as random hex.
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut s = String::with_capacity(len);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

/// Write a file, creating its parent directories.
pub fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// `ostree fsck` of a sysroot's repository must pass.
pub fn fsck(sysroot: &Path) {
    sh(Command::new("ostree")
        .arg(format!("--repo={}", sysroot.join("ostree/repo").display()))
        .arg("fsck"));
}

/// `ostree rev-parse REF` in `repo`; None when the ref does not resolve.
pub fn rev_parse(repo: &Path, refname: &str) -> Option<String> {
    let out = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["rev-parse", refname])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A scratch directory for compose tests: inputs, treefiles and `repo`.
pub struct ComposeDir {
    dir: tempfile::TempDir,
}

impl ComposeDir {
    pub fn new() -> Self {
        ComposeDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn repo(&self) -> PathBuf {
        self.p("repo")
    }
    /// Write a treefile named `name` and return its path.
    pub fn treefile(&self, name: &str, body: &str) -> PathBuf {
        let p = self.p(name);
        write(&p, body);
        p
    }
}

/// An ext4 filesystem in a sparse image file, loop-mounted; unmounted and
/// detached on drop, also when the test panicked.
pub struct LoopMount {
    pub mountpoint: PathBuf,
    loopdev: String,
    _dir: tempfile::TempDir,
}

impl LoopMount {
    pub fn new(size_mb: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hostctl-test-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("disk.img");
        let f = fs::File::create(&image).expect("create image");
        f.set_len(size_mb << 20).expect("size image");
        drop(f);
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let loopdev = sh(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))
        .trim()
        .to_string();
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).expect("mountpoint");
        let mounted = Command::new("mount")
            .arg(&loopdev)
            .arg(&mountpoint)
            .status()
            .expect("mount");
        if !mounted.success() {
            let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
            panic!("mounting {loopdev} on {}", mountpoint.display());
        }
        LoopMount {
            mountpoint,
            loopdev,
            _dir: dir,
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mountpoint)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
    }
}

/// Files of a test tree, relative to its root, with their contents. Paths
/// are those of an ordinary root filesystem (`etc/...`); compose moves them
/// into the layout libostree deploys.
pub type Files = BTreeMap<String, String>;

/// A small host tree: /etc defaults, a tool in /usr/bin, a (fake) kernel and
/// initramfs under /usr/lib/modules, and the merged-/usr links.
pub fn base_files(version: &str) -> Files {
    let mut f = Files::new();
    let mut put = |p: &str, c: &str| {
        f.insert(p.to_string(), c.to_string());
    };
    put("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    put("etc/group", "root:x:0:\n");
    put(
        "etc/os-release",
        &format!("ID=debian\nNAME=\"Test host\"\nVERSION_ID={version}\n"),
    );
    put("etc/app/app.conf", "setting=1\n");
    put("etc/app/keep.conf", "keep=default\n");
    put("etc/motd", "welcome\n");
    put("usr/bin/tool", &format!("#!/bin/sh\necho tool {version}\n"));
    put(
        "usr/lib/modules/6.1.0-test/vmlinuz",
        "fake kernel 6.1.0-test\n",
    );
    put(
        "usr/lib/modules/6.1.0-test/initramfs.img",
        "fake initramfs\n",
    );
    put("usr/share/doc/test/README", "docs\n");
    f
}

fn write_tree(root: &Path, files: &Files) {
    for (rel, content) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        if rel.starts_with("usr/bin/") {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for d in ["var", "usr/sbin", "usr/lib"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/sbin")] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
}

/// A build-side archive repository that test commits go into.
pub struct BuildRepo {
    pub path: PathBuf,
    dir: tempfile::TempDir,
}

impl BuildRepo {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hostctl-repo-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("repo");
        BuildRepo { path, dir }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Compose `files` onto `branch` with `hostctl compose tree`, committed
    /// at `timestamp` (SOURCE_DATE_EPOCH). The version comes from
    /// `automatic-version-prefix`, so `version` must be the next `PREFIX.N`
    /// of the branch; returns the checksum.
    pub fn commit(&self, branch: &str, version: &str, timestamp: u64, files: &Files) -> String {
        self.commit_with(branch, version, timestamp, files, &[])
    }

    /// `commit` with more `compose tree` arguments (signing keys).
    pub fn commit_with(
        &self,
        branch: &str,
        version: &str,
        timestamp: u64,
        files: &Files,
        args: &[&str],
    ) -> String {
        let (prefix, _) = version.rsplit_once('.').expect("version PREFIX.N");
        let work = tempfile::tempdir_in(self.dir.path()).unwrap();
        let tree = work.path().join("tree");
        write_tree(&tree, files);
        let treefile = work.path().join("host.toml");
        fs::write(
            &treefile,
            format!(
                "ref = \"{branch}\"\nbase = \"tree\"\nautomatic-version-prefix = \"{prefix}\"\n"
            ),
        )
        .unwrap();
        let idfile = work.path().join("commitid");
        sh(Command::new(hostctl_bin())
            .args(["compose", "tree", "--repo"])
            .arg(&self.path)
            .arg("--write-commitid-to")
            .arg(&idfile)
            .args(args)
            .arg(&treefile)
            .env("SOURCE_DATE_EPOCH", timestamp.to_string()));
        let checksum = fs::read_to_string(&idfile).unwrap().trim().to_string();
        let got = sh(Command::new("ostree")
            .arg(format!("--repo={}", self.path.display()))
            .args(["show", "--print-metadata-key=version", &checksum]));
        assert_eq!(
            got.trim(),
            format!("'{version}'"),
            "compose chose another version"
        );
        checksum
    }

    /// Add a signature by `secret` (a `hostctl key generate` file) to `rev`.
    pub fn sign(&self, rev: &str, secret: &Path) {
        ok(hostctl_run(&[
            "sign",
            "--repo",
            self.path.to_str().unwrap(),
            "--key",
            secret.to_str().unwrap(),
            rev,
        ]));
    }

    /// Changes one bit of the stored object of `path` in `commit` (the uid
    /// in the archive object's header: the file stays well-formed, only its
    /// checksum no longer matches). Returns the object's file.
    pub fn corrupt_object(&self, commit: &str, path: &str) -> PathBuf {
        let ls = sh(Command::new("ostree")
            .arg(format!("--repo={}", self.path.display()))
            .args(["ls", "-C", commit, path]));
        let content = ls.split_whitespace().nth(4).unwrap().to_string();
        let objpath = self
            .path
            .join(format!("objects/{}/{}.filez", &content[..2], &content[2..]));
        let mut bytes = std::fs::read(&objpath).unwrap();
        // The header starts with the big-endian header size and 4 bytes of
        // padding, then the file size (u64) and uid (u32).
        bytes[8 + 8 + 3] ^= 0x01;
        std::fs::write(&objpath, bytes).unwrap();
        objpath
    }

    /// `hostctl publish` of this repository with `args`; returns stdout.
    pub fn publish(&self, args: &[&str]) -> String {
        let mut all = vec!["publish", "--repo", self.path.to_str().unwrap()];
        all.extend_from_slice(args);
        ok(hostctl_run(&all))
    }

    /// The commit object's file (archive repository): what a commit
    /// signature covers.
    pub fn commit_object(&self, checksum: &str) -> PathBuf {
        self.path.join(format!(
            "objects/{}/{}.commit",
            &checksum[..2],
            &checksum[2..]
        ))
    }

    /// The commit's detached metadata file, where its signatures are.
    pub fn detached_path(&self, checksum: &str) -> PathBuf {
        self.path.join(format!(
            "objects/{}/{}.commitmeta",
            &checksum[..2],
            &checksum[2..]
        ))
    }

    /// Commit with the ostree CLI instead, for metadata compose from local
    /// inputs cannot write (a package list, `a(sss)`). `files` must already
    /// be in the deployable layout (`usr/etc`).
    pub fn commit_raw(
        &self,
        branch: &str,
        version: &str,
        timestamp: u64,
        files: &Files,
        metadata: &[&str],
    ) -> String {
        if !self.path.exists() {
            sh(Command::new("ostree")
                .arg(format!("--repo={}", self.path.display()))
                .args(["init", "--mode=archive"]));
        }
        let tree = tempfile::tempdir().unwrap();
        write_tree(tree.path(), files);
        let mut cmd = Command::new("ostree");
        cmd.arg(format!("--repo={}", self.path.display()))
            .arg("commit")
            .arg(format!("--branch={branch}"))
            .arg(format!("--tree=dir={}", tree.path().display()))
            .arg(format!("--add-metadata-string=version={version}"))
            .arg(format!("--timestamp=@{timestamp}"));
        for m in metadata {
            cmd.arg(format!("--add-metadata={m}"));
        }
        sh(&mut cmd).trim().to_string()
    }
}

/// `base_files` moved into the layout libostree deploys, for `commit_raw`.
pub fn deployable(files: &Files) -> Files {
    files
        .iter()
        .map(|(k, v)| match k.strip_prefix("etc/") {
            Some(rest) => (format!("usr/etc/{rest}"), v.clone()),
            None => (k.clone(), v.clone()),
        })
        .collect()
}

pub fn hostctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hostctl")
}

/// A hostctl command with no sysroot argument (compose, db, image...).
pub fn hostctl_cmd() -> Command {
    Command::new(hostctl_bin())
}

/// A new key pair from `hostctl key generate` in `dir`: (secret, public).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    ok(hostctl_run(&[
        "key",
        "generate",
        "--output",
        prefix.to_str().unwrap(),
    ]));
    (
        dir.join(format!("{name}.secret")),
        dir.join(format!("{name}.pub")),
    )
}

/// Run hostctl with these arguments and no sysroot argument.
pub fn hostctl_run(args: &[&str]) -> Output {
    run_hostctl(hostctl_cmd().args(args))
}

/// Run hostctl against `sysroot`.
pub fn hostctl(sysroot: &Path, args: &[&str]) -> Output {
    run_hostctl(
        Command::new(hostctl_bin())
            .arg("--sysroot")
            .arg(sysroot)
            .args(args),
    )
}

/// Run a prepared hostctl command. A GLib critical or warning on its
/// stderr fails the test whatever the exit status: users read them as
/// crashes, and they usually are misuse of a GLib API.
pub fn run_hostctl(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running hostctl");
    assert_no_glib_noise(&String::from_utf8_lossy(&out.stderr), cmd);
    out
}

pub fn assert_no_glib_noise(stderr: &str, what: &dyn std::fmt::Debug) {
    let noisy: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("-CRITICAL **") || l.contains("-WARNING **"))
        .collect();
    assert!(
        noisy.is_empty(),
        "{what:?} printed GLib diagnostics:\n{}",
        noisy.join("\n")
    );
}

/// Run hostctl and require success, returning stdout.
pub fn hostctl_ok(sysroot: &Path, args: &[&str]) -> String {
    let out = hostctl(sysroot, args);
    assert!(
        out.status.success(),
        "hostctl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stdout of a `--json` command, which must be exactly one JSON object
/// and nothing else: no message, no progress line.
pub fn json_only(stdout: &str) -> serde_json::Value {
    assert!(
        stdout.starts_with('{') && stdout.ends_with("}\n"),
        "stdout is not one JSON object alone:\n{stdout}"
    );
    // from_str refuses anything but whitespace after the document.
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{stdout}"))
}

pub fn status_json(sysroot: &Path) -> serde_json::Value {
    serde_json::from_str(&hostctl_ok(sysroot, &["status", "--json"])).expect("status JSON")
}

/// One deployment line of `ostree admin status`: (osname, checksum, serial).
#[derive(Debug, PartialEq, Eq)]
pub struct AdminEntry {
    pub osname: String,
    pub checksum: String,
    pub serial: i64,
    pub version: Option<String>,
    pub refspec: Option<String>,
    pub pinned: bool,
}

/// `ostree admin status` parsed: an independent view of the deployments.
pub fn ostree_admin_status(sysroot: &Path) -> Vec<AdminEntry> {
    let text = sh(Command::new("ostree")
        .args(["admin", "status"])
        .arg(format!("--sysroot={}", sysroot.display())));
    let mut out: Vec<AdminEntry> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start_matches(['*', ' ']);
        if !line.starts_with("    ") && !trimmed.is_empty() {
            let mut words = trimmed.split_whitespace();
            let osname = words.next().unwrap().to_string();
            let id = words.next().unwrap();
            let (checksum, serial) = id.rsplit_once('.').unwrap();
            out.push(AdminEntry {
                osname,
                checksum: checksum.to_string(),
                serial: serial.parse().unwrap(),
                version: None,
                refspec: None,
                pinned: false,
            });
        } else if let Some(last) = out.last_mut() {
            let l = line.trim();
            if let Some(v) = l.strip_prefix("Version: ") {
                last.version = Some(v.to_string());
            } else if let Some(r) = l.strip_prefix("origin refspec: ") {
                last.refspec = Some(r.to_string());
            } else if l == "Pinned: yes" {
                last.pinned = true;
            }
        }
    }
    out
}

/// Directory of deployment `index` (boot order) as `ostree admin status` sees it.
pub fn deployment_dir(sysroot: &Path, entry: &AdminEntry) -> PathBuf {
    sysroot.join(format!(
        "ostree/deploy/{}/deploy/{}.{}",
        entry.osname, entry.checksum, entry.serial
    ))
}

/// BLS entries of the current boot loader configuration, sorted so that the
/// first is the default (libostree numbers the default highest).
pub fn bls_entries(sysroot: &Path) -> Vec<BTreeMap<String, String>> {
    let dir = sysroot.join("boot/loader/entries");
    let mut entries: Vec<(i64, BTreeMap<String, String>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            let text = fs::read_to_string(e.unwrap().path()).unwrap();
            let map: BTreeMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let version = map["version"].parse::<i64>().unwrap();
            (version, map)
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    entries.into_iter().map(|(_, m)| m).collect()
}

/// Every path under `root` with its type, mode, owner and content hash (or
/// link target). Directory timestamps are left out on purpose: a lookup that
/// creates and removes a temporary file changes a directory's mtime without
/// changing anything a boot or an operator sees. `ostree/lock` is left out
/// for the same reason (it is the empty lock file, created on first use).
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "ostree/lock" || rel == "lost+found" {
            continue;
        }
        let md = entry.path().symlink_metadata().unwrap();
        let ft = md.file_type();
        let what = if ft.is_symlink() {
            format!("link -> {}", fs::read_link(entry.path()).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = fs::File::open(entry.path()).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            format!("file {}", hex::encode(h.finalize()))
        } else {
            "other".to_string()
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} uid={} gid={}",
                md.mode(),
                md.uid(),
                md.gid()
            ),
        );
    }
    out
}

/// The part of a fingerprint that decides what boots and how: deployments
/// (with their origin files and /etc), /var, /boot. The repository is left
/// out: an interrupted pull may leave objects staged under `ostree/repo/tmp`
/// for a later resume; nothing refers to them.
pub fn boot_state(fp: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    fp.iter()
        .filter(|(k, _)| !k.starts_with("ostree/repo"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Assert two fingerprints are equal, listing what differs.
pub fn assert_same(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("removed {k}")),
            Some(a) if a != v => diffs.push(format!("changed {k}: {v} -> {a}")),
            _ => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        diffs.push(format!("added {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{what} changed the sysroot:\n{}",
        diffs.join("\n")
    );
}

/// A sysroot on its own loop-mounted filesystem plus a build repository.
pub struct Fixture {
    pub build: BuildRepo,
    pub disk: LoopMount,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_size(512)
    }

    pub fn with_size(mb: u64) -> Self {
        Fixture {
            build: BuildRepo::new(),
            disk: LoopMount::new(mb),
        }
    }

    pub fn sysroot(&self) -> &Path {
        &self.disk.mountpoint
    }

    pub fn install(&self, branch: &str, kargs: &[&str]) -> String {
        let url = self.build.url();
        let mut args = vec!["install", "--repo", &url, "--ref", branch];
        for k in kargs {
            args.push("--karg");
            args.push(k);
        }
        hostctl_ok(self.sysroot(), &args)
    }

    /// Install `branch` from `url`, trusting the keys in `verify_key`.
    pub fn install_verified(&self, url: &str, branch: &str, verify_key: &Path) -> String {
        self.install_trusting(url, branch, "--verify-key", verify_key)
    }

    /// `install` trusting the GPG keys in `keyring`.
    pub fn install_gpg_verified(&self, url: &str, branch: &str, keyring: &Path) -> String {
        self.install_trusting(url, branch, "--gpg-keyring", keyring)
    }

    fn install_trusting(&self, url: &str, branch: &str, flag: &str, keys: &Path) -> String {
        hostctl_ok(
            self.sysroot(),
            &[
                "install",
                "--repo",
                url,
                "--ref",
                branch,
                flag,
                keys.to_str().unwrap(),
            ],
        )
    }

    pub fn admin_status(&self) -> Vec<AdminEntry> {
        ostree_admin_status(self.sysroot())
    }

    pub fn default_dir(&self) -> PathBuf {
        deployment_dir(self.sysroot(), &self.admin_status()[0])
    }
}

/// What the ESP's default entry boots, as systemd-boot would choose it (the
/// sdboot model), resolved through its `ostree=` bootlink in `sysroot`.
#[derive(Debug)]
pub struct EspDefault {
    pub checksum: String,
    pub serial: u32,
    pub file_name: String,
    /// The entry's kernel arguments without libostree's `ostree=` and
    /// hostctl's `hostctl.deploy=`.
    pub kargs: Vec<String>,
    /// The `hostctl.deploy=` argument (OS/CHECKSUM.SERIAL).
    pub deploy_arg: Option<String>,
}

pub fn esp_default(sysroot: &Path, esp: &dyn hostctl::bootloader::Esp) -> EspDefault {
    use hostctl::bootloader::{bls, sdboot};
    let chosen = sdboot::default_boot(esp)
        .unwrap_or_else(|e| panic!("reading {}: {e:#}", esp.describe()))
        .unwrap_or_else(|| panic!("{} has no entry systemd-boot would boot", esp.describe()));
    assert!(
        chosen.missing.is_empty(),
        "{}: default entry {} names missing files {:?}",
        esp.describe(),
        chosen.entry.file_name,
        chosen.missing
    );
    let options = &chosen.entry.options;
    let karg = bls::ostree_karg(options).unwrap_or_else(|| {
        panic!(
            "{}: default entry {} has no ostree= argument: {options}",
            esp.describe(),
            chosen.entry.file_name
        )
    });
    let link = sysroot.join(karg.trim_start_matches('/'));
    let target = fs::read_link(&link).unwrap_or_else(|e| {
        panic!(
            "{}: default entry {} names bootlink {karg}, which is not a link in {} ({e}): the ESP was not republished",
            esp.describe(),
            chosen.entry.file_name,
            sysroot.display()
        )
    });
    let (_, checksum, serial) = bls::parse_deploy_target(&target.to_string_lossy())
        .unwrap_or_else(|| panic!("bootlink {karg} -> {} is no deployment", target.display()));
    let words = options.split_whitespace();
    EspDefault {
        checksum,
        serial,
        file_name: chosen.entry.file_name.clone(),
        kargs: words
            .clone()
            .filter(|a| !a.starts_with("ostree=") && !a.starts_with("hostctl.deploy="))
            .map(str::to_string)
            .collect(),
        deploy_arg: words
            .clone()
            .find_map(|a| a.strip_prefix("hostctl.deploy="))
            .map(str::to_string),
    }
}

/// Names of hostctl's entry files on an ESP.
pub fn esp_entry_names(esp: &dyn hostctl::bootloader::Esp) -> Vec<String> {
    esp.list_dir("loader/entries")
        .unwrap_or_else(|e| panic!("listing {}: {e:#}", esp.describe()))
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !d.is_dir && d.name.starts_with("hostctl-") && d.name.ends_with(".conf"))
        .map(|d| d.name)
        .collect()
}

/// The ESP boots what `ostree admin status` says boots next, with the kernel
/// arguments of libostree's own entry for it, and holds one hostctl entry
/// per deployment. `after` names the command, for the failure message.
pub fn assert_esp_boots_default(
    sysroot: &Path,
    esp: &dyn hostctl::bootloader::Esp,
    after: &str,
) -> EspDefault {
    let got = esp_default(sysroot, esp);
    let status = ostree_admin_status(sysroot);
    let want = &status[0];
    assert_eq!(
        (got.checksum.as_str(), i64::from(got.serial)),
        (want.checksum.as_str(), want.serial),
        "after `{after}`: the ESP's default entry {} boots deployment {}.{}, but `ostree admin status` has {}.{} as the default",
        got.file_name,
        got.checksum,
        got.serial,
        want.checksum,
        want.serial
    );
    assert_eq!(
        got.deploy_arg,
        Some(format!("{}/{}.{}", want.osname, want.checksum, want.serial)),
        "after `{after}`: hostctl.deploy= of ESP entry {} names another deployment than the default",
        got.file_name
    );
    let bls = bls_entries(sysroot);
    let want_kargs: Vec<String> = bls[0]["options"]
        .split_whitespace()
        .filter(|a| !a.starts_with("ostree="))
        .map(str::to_string)
        .collect();
    assert_eq!(
        got.kargs, want_kargs,
        "after `{after}`: kernel arguments of ESP entry {} differ from libostree's entry for the default deployment",
        got.file_name
    );
    let names = esp_entry_names(esp);
    assert_eq!(
        names.len(),
        status.len(),
        "after `{after}`: {} hostctl entries on the ESP ({names:?}) for {} deployments",
        names.len(),
        status.len()
    );
    got
}

/// Every path under an ESP directory with its type, size, content hash and
/// modification time (directories too: a file created and removed again
/// changes its directory's mtime), for "nothing was written" checks.
pub fn esp_snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let md = entry.path().symlink_metadata().unwrap();
        let content = if md.is_file() {
            hex::encode(Sha256::digest(fs::read(entry.path()).unwrap()))
        } else {
            "-".to_string()
        };
        out.insert(
            rel,
            format!(
                "{} size={} sha256={content} mtime={}.{:09}",
                if md.is_dir() { "dir" } else { "file" },
                md.len(),
                md.mtime(),
                md.mtime_nsec()
            ),
        );
    }
    out
}

/// One partition of a disk image's GPT as `sfdisk --json` reads it (not
/// hostctl's own layout code): byte offset and size, type GUID, name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub offset: u64,
    pub size: u64,
    pub type_guid: String,
    pub name: String,
}

/// The partitions of `image`, in table order, read by `sfdisk --json`.
pub fn gpt_partitions(image: &Path) -> Vec<GptPartition> {
    let out = sh(Command::new("sfdisk").arg("--json").arg(image));
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("sfdisk --json: {e}: {out}"));
    let table = &v["partitiontable"];
    assert_eq!(table["label"], "gpt", "{out}");
    assert_eq!(table["unit"], "sectors", "{out}");
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions: {out}"))
        .iter()
        .map(|p| GptPartition {
            offset: p["start"].as_u64().unwrap() * sector,
            size: p["size"].as_u64().unwrap() * sector,
            type_guid: p["type"].as_str().unwrap().to_ascii_uppercase(),
            name: p["name"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// The Discoverable Partitions root type for x86-64, as the specification
/// spells it (written out here, not taken from hostctl).
pub const DPS_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The EFI system partition type GUID (UEFI specification).
pub const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The image's root partition: the one partition of the Discoverable
/// Partitions root type, found through `sfdisk --json`.
pub fn root_partition(image: &Path) -> GptPartition {
    let parts = gpt_partitions(image);
    let roots: Vec<&GptPartition> = parts
        .iter()
        .filter(|p| p.type_guid == DPS_ROOT_X86_64)
        .collect();
    assert_eq!(roots.len(), 1, "one root partition in {parts:?}");
    roots[0].clone()
}

/// Whether openssl accepts `sig` over the file `data` for the key in
/// `public` (base64 of the raw 32 bytes, as hostctl and libostree write it).
pub fn openssl_verifies(dir: &Path, public: &Path, data: &Path, sig: &[u8]) -> bool {
    let der = dir.join("pub.der");
    // SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix, then the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let bytes = Command::new("base64")
        .arg("-d")
        .arg(public)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(bytes.len(), 32, "public key file holds 32 bytes");
    spki.extend(bytes);
    fs::write(&der, spki).unwrap();
    let sigfile = dir.join("sig.bin");
    fs::write(&sigfile, sig).unwrap();
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin"])
        .arg("-inkey")
        .arg(&der)
        .arg("-in")
        .arg(data)
        .arg("-sigfile")
        .arg(&sigfile)
        .output()
        .unwrap()
        .status
        .success()
}

/// The `aay` under `key` of detached metadata or `summary.sig` (`a{sv}`),
/// read with GLib directly.
pub fn signatures_in(bytes: &[u8], key: &str) -> Vec<Vec<u8>> {
    let v = ostree::glib::Variant::from_bytes::<ostree::glib::VariantDict>(
        &ostree::glib::Bytes::from(bytes),
    );
    ostree::glib::VariantDict::new(Some(&v))
        .lookup::<Vec<Vec<u8>>>(key)
        .unwrap()
        .unwrap_or_default()
}

/// `a{sv}` bytes with `sigs` under `key`, the other entries of `bytes`
/// kept: for tampering with signatures in tests.
pub fn with_signatures(bytes: &[u8], key: &str, sigs: &[Vec<u8>]) -> Vec<u8> {
    use ostree::glib::prelude::*;
    let v = ostree::glib::Variant::from_bytes::<ostree::glib::VariantDict>(
        &ostree::glib::Bytes::from(bytes),
    );
    let d = ostree::glib::VariantDict::new(Some(&v));
    d.insert_value(key, &sigs.to_vec().to_variant());
    d.end().data_as_bytes().to_vec()
}

/// A GnuPG home directory in a temporary directory holding one new
/// signing key (ed25519, no passphrase); its gpg-agent, started by any
/// signing, is stopped on drop so that none outlives the test.
pub struct GpgKey {
    dir: tempfile::TempDir,
    pub fingerprint: String,
}

impl GpgKey {
    pub fn generate(name: &str) -> GpgKey {
        let dir = tempfile::Builder::new().prefix("gpg-").tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        sh(Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@build.test>"))
            .args(["ed25519", "sign", "never"]));
        let listing = sh(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--with-colons",
            "--list-keys",
        ]));
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("a fingerprint in gpg --list-keys")
            .to_string();
        GpgKey { dir, fingerprint }
    }

    pub fn homedir(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn homedir_str(&self) -> String {
        self.homedir().to_str().unwrap().to_string()
    }

    /// The public key exported to a keyring file (ASCII-armoured or not),
    /// as a host is given it.
    pub fn export(&self, armor: bool) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(if armor { "public.asc" } else { "public.gpg" });
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir").arg(self.homedir()).arg("--batch");
        if armor {
            cmd.arg("--armor");
        }
        // Bytes, not `sh`'s text: a binary keyring is not UTF-8.
        let out = cmd.arg("--export").arg(&self.fingerprint).output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "gpg --export"
        );
        fs::write(&path, out.stdout).unwrap();
        path
    }

    /// `--gpg-sign FPR --gpg-homedir DIR` for hostctl.
    pub fn sign_args(&self) -> Vec<String> {
        vec![
            "--gpg-sign".into(),
            self.fingerprint.clone(),
            "--gpg-homedir".into(),
            self.homedir_str(),
        ]
    }

    /// Whether `gpg --verify` (GnuPG itself, not libostree) accepts one of
    /// `sigs` (binary OpenPGP signatures) over the file `data` as made by
    /// this key.
    pub fn gpg_verifies(&self, data: &Path, sigs: &[Vec<u8>]) -> bool {
        let sigfile = self.dir.path().join("check.sig");
        sigs.iter().any(|sig| {
            fs::write(&sigfile, sig).unwrap();
            let out = Command::new("gpg")
                .arg("--homedir")
                .arg(self.homedir())
                .args(["--batch", "--status-fd", "1", "--verify"])
                .arg(&sigfile)
                .arg(data)
                .output()
                .unwrap();
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .contains(&format!("VALIDSIG {}", self.fingerprint))
        })
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.homedir())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// Set an extended attribute on `p` itself (not on a symlink's target).
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// The cargo target directory the tests were built in (`.../target/debug/hostctl`
/// is two levels below it).
pub fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_hostctl"));
    bin.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// hostctl's Debian package, built from this checkout by
/// `scripts/build-deb.sh` (a release build) once per test process, in the
/// cargo target directory `<target>/deb-build` that every test binary shares
/// (so the release build is incremental and done once for all of them).
/// Builds run one at a time under `flock`; each process gets its own copy
/// of the result (`<target>/deb-build/test-debs/PID/`), which a later build
/// by another process does not replace under it.
pub fn hostctl_deb() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        let build = target_dir().join("deb-build");
        fs::create_dir_all(&build).unwrap();
        let own = build.join("test-debs").join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&own);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb.sh");
        let started = std::time::Instant::now();
        let out = Command::new("flock")
            .arg(build.join(".build.lock"))
            .arg("sh")
            .arg("-c")
            .arg(
                r#"set -e
deb=$("$1")
deb=$(printf '%s\n' "$deb" | tail -n 1)
mkdir -p "$2"
cp "$deb" "$2"/
echo "$2/$(basename "$deb")""#,
            )
            .arg("sh")
            .arg(&script)
            .arg(&own)
            .env("CARGO_TARGET_DIR", &build)
            .output()
            .expect("starting flock (package util-linux)");
        assert!(
            out.status.success(),
            "scripts/build-deb.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(deb.is_file(), "build-deb.sh gave no .deb: {deb:?}");
        eprintln!("hostctl .deb: {} ({:?})", deb.display(), started.elapsed());
        deb
    })
    .clone()
}

/// A small Debian package built with `dpkg-deb --build` in `dir`: `package`
/// at `version` for `arch`, holding `files` (path in the tree, content;
/// files under `usr/bin` are executable).
pub fn fake_deb(
    dir: &Path,
    package: &str,
    version: &str,
    arch: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    let root = dir.join(format!("{package}-{version}-{arch}"));
    let _ = fs::remove_dir_all(&root);
    write(
        &root.join("DEBIAN/control"),
        &format!(
            "Package: {package}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: test <test@example.invalid>\nDescription: test package\n"
        ),
    );
    for (path, content) in files {
        let p = root.join(path);
        write(&p, content);
        if path.starts_with("usr/bin/") {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let deb = dir.join(format!("{package}_{version}_{arch}.deb"));
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb));
    deb
}
