//! # iscsi-target
//!
//! The shared core of the tgt-rs target, between the sans-IO protocol crates
//! (`iscsi-proto`, `scsi-core`), the backing stores (`backstore`) and the runtimes that move
//! bytes (`runtime-mio`, `runtime-threads`):
//!
//! - [`exec`]: runs scsi-core I/O requests on a backing store and hands the answers back.
//!
//! Runtimes contain no protocol rules: what is not socket or thread handling lives here or
//! below.
#![warn(missing_docs, unreachable_pub)]

pub mod acl;
pub mod builder;
pub mod driver;
pub mod exec;
pub mod registry;

pub use builder::{BuildError, LunOptions, TargetBuilder};
