//! The host side: one sysroot and what operators do to it.
//!
//! The verbs ([`verbs`], and [`install`] for a fresh sysroot: status, upgrade, rollback, deploy,
//! rebase, kargs, pin, cleanup, boot-check) take option structs of their
//! own and call the mechanisms: [`sysroot`] (open and lock), [`fetch`]
//! (verified pulls, with [`crate::progress`] on stderr), [`plan`] and [`roles`] (pure decisions), [`deploy`]
//! (write a deployment list and publish boot entries), [`kargs`],
//! [`origin`], [`status`], [`trust`] (which commits a remote may bring).
//!
//! May import `bootloader`, `format`, `util` and `progress`; never `compose`
//! or `image`.

pub mod deploy;
pub mod fetch;
pub mod install;
pub mod kargs;
pub mod origin;
pub mod plan;
pub mod roles;
pub mod status;
pub mod sysroot;
pub mod trust;
pub mod verbs;
