//! The update agent: hosts that update themselves on a schedule and reboot
//! when their policy allows (docs/agent.md).
//!
//! - [`config`]: `hostctl.toml`, the tree's defaults overlaid by `/etc`
//!   (pure parsing; errors name file, line and key).
//! - [`window`]: maintenance windows in local time (pure, DST-aware).
//! - [`fleetlock`]: the FleetLock protocol: request bodies and the per-host
//!   id (pure), and a small HTTP client.
//! - [`reboot_required`]: `/run/reboot-required(.pkgs)` from the package
//!   diff between the booted and the default deployment.
//! - [`run`]: one agent run (check, stage, apply) and the strategy-gated
//!   reboot.
//!
//! May import `host` (its verbs and sysroot access), `format`, `util` and
//! `bootloader`; never `compose` or `image`. Only `cli` imports it.

pub mod config;
pub mod fleetlock;
pub mod health;
pub mod reboot_required;
pub mod run;
pub mod window;
