//! Turning an assembled tree into one libostree can deploy: the treefile's own
//! scripts and units first, then the OSTree layout (`layout`), whose `/var`
//! handling is described by `tmpfiles`; `check` refuses a tree a commit
//! cannot hold or that cannot boot.

pub mod check;
pub mod layout;
pub mod scripts;
pub mod tmpfiles;

pub use layout::ostree_layout;
pub use scripts::{enable_units, run_scripts};
