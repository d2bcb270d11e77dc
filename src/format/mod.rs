//! The repository format: what hostctl writes into a commit and how every
//! side reads it back: the metadata keys ([`keys`]), commit readers and
//! history ([`repo`]), package lists and their diff ([`pkglist`], ordered by
//! [`debver`]), carried container images ([`images`]), the files of a commit ([`dirtree`]), signatures ([`sign`],
//! [`gpg`]) and the summary hosts resolve refs through ([`summary`]).
//!
//! Imports only `util`: the build side writes this format, the host side
//! and images read it.

pub mod debver;
pub mod dirtree;
pub mod gpg;
pub mod images;
pub mod keys;
pub mod pkglist;
pub mod repo;
pub mod sign;
pub mod summary;
