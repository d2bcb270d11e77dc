//! The build side: `hostctl compose tree` turns a treefile into a commit.
//!
//! Data flow: [`treefile`] (parse, validate) → [`rootfs`] (base, overlays,
//! removals) → [`packages`] (mmdebstrap/apt, with [`apt`]) →
//! [`postprocess`] (scripts) → [`containers`] (images into the tree's
//! store, container units) → [`postprocess`] (units, tmpfiles, the OSTree
//! layout) → [`initramfs`]
//! and [`sysusers`] → [`commit`]; [`tree`] runs the steps and
//! [`inputhash`] decides whether anything changed.
//!
//! May import `format`, `util` and `progress`; never `host`, `bootloader`
//! or `image`.

pub mod apt;
pub mod commit;
pub mod containers;
pub mod hostctl_deb;
pub mod initramfs;
pub mod initramfs_reuse;
pub mod inputhash;
pub mod packages;
pub mod postprocess;
pub mod rootfs;
pub mod sandbox;
pub mod sysusers;
pub mod tree;
pub mod treefile;
pub mod version;
