//! Running code that comes with the tree being composed (the treefile's
//! `postprocess` scripts, the tree's dracut) as root inside that tree, with
//! bubblewrap.
//!
//! A chroot is not a boundary for root: through `/proc/<pid>/root` of any
//! process outside it, a bind of the build machine's `/dev`, `mknod`,
//! `mount` or a process left running, a script reaches the machine that
//! builds the image. The sandbox closes each of those ways, so that what a
//! script does can only land in the tree:
//!
//! - a mount namespace whose root is the tree and nothing else of the build
//!   machine; `/proc` is that of a new PID namespace, so it shows only the
//!   script's own processes, and when the script ends the kernel kills
//!   everything it left running (bwrap is PID 1 there);
//! - a fresh minimal `/dev` (null, zero, random, tty, ...) on a tmpfs, and
//!   fresh tmpfs `/tmp` and `/run`, so nothing written there is committed;
//! - the container capability set: enough for package tools (chown, setuid
//!   helpers, `chroot`), without `CAP_MKNOD`, `CAP_NET_RAW` or
//!   `CAP_SYS_ADMIN` (no device nodes, no mounts, no leaving the namespaces);
//!   bwrap also sets no-new-privileges, so no file capability or setuid
//!   binary gives them back;
//! - no network (a loopback only) unless the treefile asks for it;
//! - `--die-with-parent`: a killed compose takes the sandbox with it.
//!
//! bwrap (Debian's `bubblewrap`, the tool rpm-ostree uses for the same job)
//! does the namespace set-up; hostctl runs as root, which lets bwrap keep
//! the capabilities listed here.

use std::path::Path;
use std::process::Command;

/// What a script may keep of root's powers: the default set of container
/// runtimes, which package maintainer scripts are written against.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The search path inside the sandbox (the environment is cleared).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of the outside a sandboxed command may reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    /// Share the build machine's network namespace.
    pub network: bool,
}

/// A `bwrap` command that runs `argv` as root with `tree` as `/`, with the
/// environment cleared but for `PATH`, `LANG` and `HOME`. The caller adds
/// more variables with `.env()`, and sets stdio. The tree's `/dev`, `/proc`,
/// `/run` and `/tmp` must exist (see [`prepare`]).
pub fn command(tree: &Path, access: Access, argv: &[&str]) -> Command {
    let mut c = Command::new("bwrap");
    c.arg("--bind")
        .arg(tree)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--tmpfs", "/tmp", "--tmpfs", "/run"])
        .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"])
        .arg("--unshare-cgroup-try")
        .args(["--die-with-parent", "--new-session", "--chdir", "/"])
        .args(["--cap-drop", "ALL"]);
    if !access.network {
        c.arg("--unshare-net");
    }
    for cap in CAPABILITIES {
        c.args(["--cap-add", cap]);
    }
    c.arg("--").args(argv);
    c.env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/root");
    c
}

/// Create the mount points the sandbox needs in `tree`. They must be real
/// directories: through a symlink the fresh mounts would not be where the
/// script looks, and its scratch files could end up in the commit.
pub fn prepare(tree: &Path) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    for dir in ["dev", "proc", "run", "tmp"] {
        let p = tree.join(dir);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a directory; the tree's /{dir} must be one for postprocess scripts to run",
                p.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", p.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn network_is_unshared_unless_asked_and_dangerous_caps_are_never_added() {
        let tree = Path::new("/t");
        let closed = args(&command(tree, Access::default(), &["sh"]));
        let open = args(&command(tree, Access { network: true }, &["sh"]));
        assert!(closed.iter().any(|a| a == "--unshare-net"));
        assert!(!open.iter().any(|a| a == "--unshare-net"));
        for a in [&closed, &open] {
            let drop = a.iter().position(|x| x == "ALL").unwrap();
            let first_add = a.iter().position(|x| x == "--cap-add").unwrap();
            assert!(drop < first_add, "capabilities are dropped before adding");
            for bad in ["CAP_MKNOD", "CAP_NET_RAW", "CAP_SYS_ADMIN"] {
                assert!(!a.iter().any(|x| x == bad), "{bad} in {a:?}");
            }
            assert_eq!(&a[a.len() - 2..], ["--", "sh"]);
        }
    }

    #[test]
    fn mount_points_are_created_and_symlinks_refused() {
        let d = tempfile::tempdir().unwrap();
        prepare(d.path()).unwrap();
        for dir in ["dev", "proc", "run", "tmp"] {
            assert!(d.path().join(dir).is_dir());
        }
        std::fs::remove_dir(d.path().join("tmp")).unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("tmp")).unwrap();
        let e = prepare(d.path()).unwrap_err().to_string();
        assert!(e.contains("tmp is not a directory"), "{e}");
    }
}
