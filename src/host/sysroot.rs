//! Opening a sysroot: which one, which stateroot, whether it is booted, and
//! the lock that keeps two operations from interleaving.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ostree::gio;

use crate::bootloader::{self, EspTarget};
use crate::host::roles::{Roles, Slot};
use crate::host::status::{self, DeploymentInfo};

pub struct Host {
    pub sysroot: ostree::Sysroot,
    pub path: PathBuf,
    pub osname: String,
    pub booted: bool,
    /// Where [`crate::host::deploy::write_and_publish`] publishes boot
    /// entries: the running host's `/efi` when it holds hostctl's entries
    /// ([`bootloader::host_esp`]), else nowhere, unless the command names
    /// one ([`Host::use_esp`]).
    pub esp: Option<EspTarget>,
    locked: bool,
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.locked {
            self.sysroot.unlock();
        }
    }
}

/// Pick the stateroot: the one asked for, else the booted one, else the only
/// one present. Several and none booted is ambiguous, so the caller must say.
pub fn choose_stateroot(
    requested: Option<&str>,
    booted: Option<&str>,
    present: &[String],
) -> Result<String> {
    if let Some(r) = requested {
        if !present.iter().any(|p| p == r) {
            bail!(
                "stateroot {r:?} does not exist (present: {})",
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            );
        }
        return Ok(r.to_string());
    }
    if let Some(b) = booted {
        return Ok(b.to_string());
    }
    match present {
        [one] => Ok(one.clone()),
        [] => bail!("no stateroot found; is this a sysroot made by `hostctl install`?"),
        many => bail!(
            "several stateroots ({}); choose one with --stateroot",
            many.join(", ")
        ),
    }
}

fn stateroots(path: &Path) -> Result<Vec<String>> {
    let dir = path.join("ostree/deploy");
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Open and load the sysroot at `path`; with `lock`, wait for any other
/// operation on it first (saying so) and load only once the lock is held, so
/// the state acted on is the state left by whoever held it before.
pub fn open(path: &Path, stateroot: Option<&str>, lock: bool) -> Result<Host> {
    open_inner(path, stateroot, lock, true)
}

/// For read-only views (status): several stateroots and none chosen is
/// fine there, since all deployments are shown anyway.
pub fn open_unlocked_any(path: &Path, stateroot: Option<&str>) -> Result<Host> {
    open_inner(path, stateroot, false, false)
}

fn open_inner(
    path: &Path,
    stateroot: Option<&str>,
    lock: bool,
    need_stateroot: bool,
) -> Result<Host> {
    if !path.join("ostree/repo").is_dir() {
        bail!(
            "{} is not a sysroot (no ostree/repo); create one with `hostctl install`",
            path.display()
        );
    }
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    if path == Path::new("/") {
        // On a booted host /sysroot may be mounted read-only; libostree
        // remounts it writable in a private mount namespace.
        sysroot
            .initialize_with_mount_namespace(gio::Cancellable::NONE)
            .with_context(|| format!("initializing sysroot {}", path.display()))?;
    }
    let mut locked = false;
    if lock {
        sysroot
            .initialize()
            .with_context(|| format!("initializing sysroot {}", path.display()))?;
        crate::util::lock_or_wait(
            &format!("another operation on sysroot {}", path.display()),
            || {
                sysroot
                    .try_lock()
                    .with_context(|| format!("locking sysroot {}", path.display()))
            },
            || {
                sysroot
                    .lock()
                    .with_context(|| format!("locking sysroot {}", path.display()))
            },
        )?;
        locked = true;
    }
    let mut host = Host {
        sysroot,
        path: path.to_path_buf(),
        osname: String::new(),
        booted: false,
        esp: bootloader::host_esp(path),
        locked,
    };
    host.sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading sysroot {}", path.display()))?;
    let booted = host.sysroot.booted_deployment();
    host.booted = booted.is_some();
    let chosen = choose_stateroot(
        stateroot,
        booted.as_ref().map(|d| d.osname().to_string()).as_deref(),
        &stateroots(path)?,
    );
    host.osname = match chosen {
        Ok(o) => o,
        Err(e) if need_stateroot => return Err(e),
        Err(_) => String::new(),
    };
    Ok(host)
}

/// Refuse to install into anything but a filesystem mounted at `path`:
/// libostree freezes and thaws the filesystem that holds `/boot` while it
/// writes boot entries, and a directory (or a path hostctl would create) on
/// the machine's own root filesystem would freeze the machine itself.
pub fn require_own_filesystem(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "sysroot {} does not exist; mount the target filesystem (a partition or a loop-mounted image) there first",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_dir() {
        bail!("sysroot {} is not a directory", path.display());
    }
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if canonical == Path::new("/") || !mount_points(&mountinfo).contains(&canonical) {
        bail!(
            "sysroot {} is not a mount point of its own: deploying freezes the filesystem that holds its /boot, which here would be this machine's own; mount the target filesystem (a partition or a loop-mounted image) at {} first",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Mount points listed in `/proc/self/mountinfo` (field 5, with the
/// kernel's octal escapes for space, tab, newline and backslash undone).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Another handle to the same deployment object. libostree recognises the
/// booted deployment in a new deployment list by pointer, and
/// `Deployment::clone()` resolves to the inherent `ostree_deployment_clone`
/// (a copy, so a booted host would refuse the list), not to `Clone::clone`.
pub fn handle(d: &ostree::Deployment) -> ostree::Deployment {
    Clone::clone(d)
}

impl Host {
    /// Publish onto `esp` (when named) instead of the default ESP, after
    /// checking that it can be the real one (exists; a directory is a mount
    /// of its own), so that a wrong path fails before anything changes.
    pub fn use_esp(&mut self, esp: Option<&EspTarget>) -> Result<()> {
        if let Some(esp) = esp {
            esp.check(&self.path)?;
            self.esp = Some(esp.clone());
        }
        Ok(())
    }

    pub fn repo(&self) -> ostree::Repo {
        self.sysroot.repo()
    }

    pub fn deployments(&self) -> Vec<ostree::Deployment> {
        self.sysroot.deployments()
    }

    pub fn is_booted_deployment(&self, d: &ostree::Deployment) -> bool {
        self.sysroot.booted_deployment().is_some_and(|b| b.equal(d))
    }

    pub fn roles(&self) -> Roles {
        Roles::new(
            self.deployments()
                .iter()
                .map(|d| Slot {
                    osname: d.osname().to_string(),
                    booted: self.is_booted_deployment(d),
                    staged: d.is_staged(),
                    pinned: d.is_pinned(),
                })
                .collect(),
        )
    }

    /// Absolute path of a deployment's root directory.
    pub fn deployment_dir(&self, d: &ostree::Deployment) -> PathBuf {
        self.path.join(self.sysroot.deployment_dirpath(d).as_str())
    }

    /// The deployment new ones take `/etc` and kernel arguments from: the
    /// booted one, else this stateroot's default.
    pub fn merge_deployment(&self) -> Option<ostree::Deployment> {
        self.sysroot.merge_deployment(Some(&self.osname))
    }

    pub fn status(&self) -> Result<Vec<DeploymentInfo>> {
        let deps = self.deployments();
        let roles = self.roles();
        let repo = self.repo();
        let mut signatures = crate::host::trust::SignatureCheck::new(&repo);
        deps.iter()
            .enumerate()
            .map(|(i, d)| {
                let checksum = d.csum().to_string();
                let origin = origin_refspec(d);
                let role = roles.role(i);
                let info = crate::format::repo::commit_info(&repo, &checksum).ok();
                Ok(DeploymentInfo {
                    index: i,
                    id: status::id(&d.osname(), &checksum, d.deployserial()),
                    osname: d.osname().to_string(),
                    serial: d.deployserial(),
                    signature: signatures.state(origin.as_deref(), &checksum)?,
                    origin,
                    version: info.as_ref().and_then(|c| c.version.clone()),
                    timestamp: info.as_ref().map(|c| c.timestamp),
                    booted: role.booted,
                    staged: role.staged,
                    pinned: role.pinned,
                    default: role.default,
                    rollback: role.rollback,
                    kargs: deployment_kargs(d),
                    checksum,
                })
            })
            .collect()
    }
}

/// The refspec an origin file records, if any.
pub fn origin_refspec(d: &ostree::Deployment) -> Option<String> {
    d.origin()
        .and_then(|kf| kf.string("origin", "refspec").ok())
        .map(|s| s.to_string())
}

/// Kernel arguments of a deployment's boot entry, as written (including
/// libostree's own `ostree=`).
pub fn deployment_kargs(d: &ostree::Deployment) -> Vec<String> {
    d.bootconfig()
        .and_then(|b| b.get("options"))
        .map(|o| crate::host::kargs::split(&o))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        let info = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 7:0 / /tmp/a\\040b rw - ext4 /dev/loop0 rw\n";
        assert_eq!(
            mount_points(info),
            vec![PathBuf::from("/"), PathBuf::from("/tmp/a b")]
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stateroot_choice() {
        assert_eq!(
            choose_stateroot(None, None, &names(&["debian"])).unwrap(),
            "debian"
        );
        assert_eq!(
            choose_stateroot(None, Some("b"), &names(&["a", "b"])).unwrap(),
            "b"
        );
        assert_eq!(
            choose_stateroot(Some("a"), Some("b"), &names(&["a", "b"])).unwrap(),
            "a"
        );
        let e = choose_stateroot(None, None, &names(&["a", "b"])).unwrap_err();
        assert!(e.to_string().contains("--stateroot"), "{e}");
        assert!(choose_stateroot(None, None, &[]).is_err());
        let e = choose_stateroot(Some("x"), None, &names(&["a"])).unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
    }
}
