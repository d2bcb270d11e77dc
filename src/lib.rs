//! hostctl: atomic, image-based OS updates for Debian hosts.
//!
//! The modules follow the data flow: treefile → rootfs → postprocess → commit →
//! repo (build side); sysroot → deploy → bootloader (host side).

pub mod apt;
pub mod bootloader;
pub mod cli;
pub mod commit;
pub mod compose;
pub mod debver;
pub mod deploy;
pub mod fetch;
pub mod image;
pub mod initramfs;
pub mod inputhash;
pub mod kargs;
pub mod origin;
pub mod packages;
pub mod pkgdiff;
pub mod plan;
pub mod postprocess;
pub mod repo;
pub mod roles;
pub mod rootfs;
pub mod status;
pub mod sysroot;
pub mod sysusers;
pub mod treefile;
pub mod util;
pub mod version;

/// What a command reports back to `main` beyond success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Nothing changed; `exit_77` when the caller asked for status 77 in that case.
    Unchanged {
        exit_77: bool,
    },
}
