//! The sandbox of treefile `postprocess` scripts: a script runs as root with
//! the tree as its root and must not reach the build machine in any other
//! way (its files, its /dev, its processes, its network unless asked).
//! Needs root and busybox-static (the scripts' shell inside the tree).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{run_hostctl, sh};

/// A name no other run (or test) uses, for paths and markers on the build
/// machine.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("hostctl-sandbox-{what}-{}-{nanos}", std::process::id())
}

/// Paths on the build machine a test may cause to exist; removed on drop so
/// a failing run does not leave them behind.
struct Canaries(Vec<PathBuf>);

impl Drop for Canaries {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Processes whose command line carries `marker`; killed one by one (by
/// pid) on drop.
struct Marked(String);

impl Marked {
    fn pids(&self) -> Vec<String> {
        let out = Command::new("pgrep")
            .args(["-f", &self.0])
            .output()
            .expect("running pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A base with busybox as /bin/sh and its tools, merged /usr.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/share",
            "etc",
            "var/tmp",
        ] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", base.join("usr/bin/busybox")).unwrap();
        for tool in [
            "sh", "cat", "echo", "grep", "mknod", "touch", "sleep", "mount", "chown", "ls", "rm",
            "test",
        ] {
            symlink("busybox", base.join("usr/bin").join(tool)).unwrap();
        }
        symlink("usr/bin", base.join("bin")).unwrap();
        symlink("usr/sbin", base.join("sbin")).unwrap();
        symlink("usr/lib", base.join("lib")).unwrap();
        fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(base.join("etc/group"), "root:x:0:\n").unwrap();
        Fixture { dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Compose a treefile with `extra` keys and the given scripts.
    fn compose(&self, extra: &str, scripts: &[&str]) -> Output {
        let quoted: Vec<String> = scripts.iter().map(|s| format!("'''{s}'''")).collect();
        let tf = self.dir.path().join("host.toml");
        fs::write(
            &tf,
            format!(
                "ref = \"r\"\nbase = \"base\"\n{extra}\npostprocess = [{}]\n",
                quoted.join(", ")
            ),
        )
        .unwrap();
        run_hostctl(
            Command::new(common::hostctl_bin())
                .args(["compose", "tree", "--repo"])
                .arg(self.repo())
                .arg(&tf),
        )
    }

    fn compose_ok(&self, extra: &str, scripts: &[&str]) {
        let out = self.compose(extra, scripts);
        assert!(
            out.status.success(),
            "compose failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file of the committed tree.
    fn cat(&self, path: &str) -> String {
        sh(Command::new("ostree")
            .arg(format!("--repo={}", self.repo().display()))
            .args(["cat", "r", path]))
    }

    fn listing(&self) -> String {
        sh(Command::new("ostree")
            .arg(format!("--repo={}", self.repo().display()))
            .args(["ls", "-R", "r"]))
    }
}

/// Interface names in a `/proc/net/dev` text.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn scripts_cannot_write_to_the_build_machine_through_proc() {
    let f = Fixture::new();
    let name = unique("canary");
    let via_pid1 = Path::new("/tmp").join(format!("{name}-pid1"));
    let via_parent = Path::new("/tmp").join(format!("{name}-parent"));
    let _cleanup = Canaries(vec![via_pid1.clone(), via_parent.clone()]);
    // Each write may fail (which is fine); only where it lands matters.
    f.compose_ok(
        "",
        &[&format!(
            "echo leaked > /proc/1/root{} || true\n\
             echo leaked > /proc/$PPID/root{} || true",
            via_pid1.display(),
            via_parent.display()
        )],
    );
    for p in [&via_pid1, &via_parent] {
        assert!(
            !p.exists(),
            "a postprocess script wrote {} on the build machine",
            p.display()
        );
    }
}

#[test]
fn scripts_cannot_create_device_nodes_on_the_build_machine() {
    let f = Fixture::new();
    let name = unique("dev");
    let touched = Path::new("/dev").join(format!("{name}-touch"));
    let node = Path::new("/dev").join(format!("{name}-node"));
    let _cleanup = Canaries(vec![touched.clone(), node.clone()]);
    let out = f.compose(
        "",
        &[&format!(
            "touch {} || true\n\
             mknod {} c 1 3 || true\n\
             if mknod /usr/lib/hostctl-test-null c 1 3 2>/dev/null; then\n\
               echo 'mknod works in the sandbox'; exit 1\n\
             fi",
            touched.display(),
            node.display()
        )],
    );
    for p in [&touched, &node] {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "a postprocess script created {} on the build machine",
            p.display()
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn background_processes_do_not_outlive_the_compose() {
    let f = Fixture::new();
    let marked = Marked(unique("bg"));
    // `; true` keeps sh from exec'ing sleep, so the marker stays in an argv.
    f.compose_ok(
        "",
        &[&format!(
            "sh -c 'sleep 1000; true' {} </dev/null >/dev/null 2>&1 &",
            marked.0
        )],
    );
    let left = marked.pids();
    assert!(
        left.is_empty(),
        "processes started by a postprocess script still run after the compose: {left:?}"
    );
}

#[test]
fn scripts_have_no_network_unless_the_treefile_asks() {
    let f = Fixture::new();
    let script = "cat /proc/net/dev > /usr/share/net-dev";
    f.compose_ok("", &[script]);
    assert_eq!(
        interfaces(&f.cat("/usr/share/net-dev")),
        vec!["lo"],
        "the default sandbox has only a loopback interface"
    );

    // A repository of its own: composing onto an existing ref is another
    // test's business.
    let f = Fixture::new();
    f.compose_ok("postprocess-network = true", &[script]);
    let host = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(
        interfaces(&f.cat("/usr/share/net-dev")),
        host,
        "with postprocess-network the script sees the build machine's interfaces"
    );
}

#[test]
fn scripts_cannot_read_the_build_machines_files() {
    let f = Fixture::new();
    let name = unique("secret");
    let in_shm = Path::new("/dev/shm").join(&name);
    let in_var_tmp = Path::new("/var/tmp").join(&name);
    let _cleanup = Canaries(vec![in_shm.clone(), in_var_tmp.clone()]);
    for p in [&in_shm, &in_var_tmp] {
        fs::write(p, "build machine secret\n").unwrap();
    }
    let tries = [
        in_shm.display().to_string(),
        in_var_tmp.display().to_string(),
        format!("/proc/1/root{}", in_var_tmp.display()),
        format!("/proc/$PPID/root{}", in_var_tmp.display()),
    ];
    f.compose_ok(
        "",
        &[&format!(
            "for p in {}; do\n\
               if cat \"$p\" 2>/dev/null; then echo \"read $p\"; exit 1; fi\n\
             done",
            tries.join(" ")
        )],
    );
}

#[test]
fn scripts_still_write_into_the_tree_and_scratch_space_is_not_committed() {
    let f = Fixture::new();
    f.compose_ok(
        "",
        &[
            "echo x > /etc/foo\nchown 0:0 /etc/foo\necho junk > /tmp/junk\necho junk > /run/junk",
            "test \"$(cat /etc/foo)\" = x",
        ],
    );
    assert_eq!(f.cat("/usr/etc/foo"), "x\n");
    let listing = f.listing();
    assert!(!listing.contains("junk"), "{listing}");
}

#[test]
fn scripts_cannot_mount_or_change_namespaces() {
    let f = Fixture::new();
    // A mount (or an nsenter into PID 1's namespaces) would undo the rest.
    f.compose_ok(
        "",
        &[
            "if mount -t tmpfs none /usr/share 2>/dev/null; then echo 'mount works'; exit 1; fi\n\
           if busybox nsenter -t 1 -m true 2>/dev/null; then echo 'nsenter works'; exit 1; fi",
        ],
    );
}
