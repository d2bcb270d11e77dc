//! hostctl: atomic, image-based OS updates for Debian hosts.
//!
//! The crate has one folder per side (docs/architecture.md draws the flow):
//!
//! - [`compose`]: treefile → rootfs → packages → postprocess → initramfs and
//!   system users → commit; `hostctl compose`.
//! - [`format`]: what a commit carries and how it is read back (metadata
//!   keys, package lists, dirtrees, history). Shared by every side.
//! - [`host`]: a sysroot and the verbs operators run on it (fetch, plan,
//!   deploy, status, kernel arguments).
//! - [`bootloader`]: systemd-boot entries on the ESP, published crash-safely.
//! - [`image`]: bootable disk images from a repository.
//! - [`publish`]: keys and signatures for the commits a pipeline serves.
//! - [`agent`]: the update agent: configuration, maintenance windows,
//!   FleetLock, `/run/reboot-required`, one agent run.
//! - [`cli`]: the command line, the only code that knows clap.
//! - [`progress`]: what long operations (pulls, composes) show while they
//!   run, on stderr or a descriptor; like `util`, any side may use it.
//!
//! Imports go one way: `cli` → verbs (`host`, `compose`, `image`) →
//! mechanisms (`bootloader`, `host` internals) → `format` → `util`
//! and `progress`.
//! `agent` sits beside the verbs and uses them; only `cli` imports it. The
//! next side gets a folder of its own too: `containers` (container hosts).

pub mod agent;
pub mod bootloader;
pub mod cli;
pub mod compose;
pub mod format;
pub mod host;
pub mod image;
pub mod progress;
pub mod publish;
pub mod util;

/// What a command reports back to `main` beyond success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Nothing changed; `exit_77` when the caller asked for status 77 in that case.
    Unchanged {
        exit_77: bool,
    },
}
