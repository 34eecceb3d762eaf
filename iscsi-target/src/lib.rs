//! # iscsi-target
//!
//! The shared core of the tgt-rs target, between the sans-IO protocol crates
//! (`iscsi-proto`, `scsi-core`), the backing stores (`backstore`) and the runtimes that move
//! bytes (`runtime-mio`, `runtime-threads`):
//!
//! - [`builder`]: [`TargetBuilder`] — a target (name, LUNs on any
//!   [`BackingStore`](backstore::BackingStore), CHAP, initiator rules) in a few lines, with
//!   the daemon's LU defaults ([`builder::lu_config`]);
//! - [`registry`]: the [`Registry`](registry::Registry) every connection shares (targets,
//!   LUN backends, sessions, portals, statistics);
//! - [`acl`]: initiator access rules and iSCSI name syntax;
//! - [`driver`]: the per-connection [`Driver`](driver::Driver) that ties an
//!   `iscsi_proto::session::Connection` to scsi-core and the stores; a runtime feeds it
//!   bytes, wake-ups and timer ticks and writes out what it returns;
//! - [`exec`]: runs scsi-core I/O requests on a backing store and hands the answers back;
//! - [`engines`]: the same on the asynchronous engines of LUNs that have one (Ceph RBD),
//!   for event-loop runtimes: requests in flight without a thread each;
//! - [`persist`]: persistent reservations kept across restarts (APTPL);
//! - [`resize`]: capacity changes of stores resized elsewhere (`rbd resize`) passed on to
//!   scsi-core (CAPACITY DATA HAS CHANGED), on a background thread.
//!
//! Runtimes contain no protocol rules: what is not socket or thread handling lives here or
//! below.
//!
//! ## Embedding a target
//!
//! Build a registry with [`TargetBuilder`], then start either runtime on it:
//!
//! ```
//! use std::sync::Arc;
//! use backstore::MemoryStore;
//! use iscsi_target::TargetBuilder;
//!
//! let registry = TargetBuilder::new("iqn.2026-11.org.example:ram")
//!     .lun(0, Arc::new(MemoryStore::new(16 << 20, 512)?))
//!     .build()?;
//! // runtime_threads::Server::start(registry, DriverConfig::default(), &[addr])
//! // or runtime_mio::Server::start(registry, DriverConfig::default(), &[addr], MioConfig::default())
//! # let _ = registry;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For storage of one's own, implement [`backstore::BlockDevice`] (blocks in, blocks out)
//! and wrap it in a [`backstore::DeviceStore`], or implement
//! [`backstore::BackingStore`] for full control. Runnable examples:
//! `runtime-threads/examples/memdisk.rs` (custom device with a write log),
//! `runtime-mio/examples/multi_lun.rs` (several LUNs) and `iscsi-target/examples/sans_io.rs`
//! (the sans-IO layers driven by hand over in-memory pipes, no sockets).
#![warn(missing_docs, unreachable_pub)]

pub mod acl;
pub mod builder;
pub mod driver;
pub mod engines;
pub mod exec;
pub mod persist;
pub mod registry;
pub mod resize;

pub use builder::{BuildError, LunOptions, TargetBuilder};
