//! Ceph RBD images as LUN stores, through librbd's asynchronous API (`bstype = "rbd"`).
//!
//! - [`RbdSpec`] parses `[rbd:]pool/image[@snap][:conf=PATH][:id=NAME]`. It is always
//!   available, so a daemon built without the `rbd` feature can validate a configuration
//!   and answer with [`FEATURE_DISABLED`].
//! - With the `rbd` cargo feature (which links `librbd` and `librados`, Debian
//!   `librbd-dev`/`librados-dev`), `RbdStore` opens an image and implements
//!   [`BackingStore`](crate::BackingStore): each call starts an `rbd_aio_*` operation and
//!   blocks its thread until librbd's completion callback wakes it, so a thread pool keeps
//!   as many operations in flight as it has threads. `RbdEngine` implements
//!   [`Engine`](crate::Engine) for an event loop: the callback queues the completion and
//!   signals the engine's eventfd (or calls its waker), nothing blocks the reactor.
//!
//! Mapping: read → `rbd_aio_read`; write → `rbd_aio_write2` (FUA: librados' FUA hint, then
//! `rbd_aio_flush` before completing); flush → `rbd_aio_flush`; unmap → `rbd_aio_discard`;
//! write-zeroes → `rbd_aio_write_zeroes`; GET LBA STATUS → `rbd_diff_iterate2` (allocated or
//! not); COMPARE AND WRITE → `rbd_aio_compare_and_write` and WRITE SAME →
//! `rbd_aio_writesame` (the optional [`BackingStore`](crate::BackingStore) methods
//! `compare_and_write` and `write_same`, which iscsi-target's executor uses instead of
//! emulating them); a resize done elsewhere (`rbd resize`) → `refresh_size`
//! (`rbd_get_size`), which the daemon polls to raise CAPACITY DATA HAS CHANGED.
//!
//! What librbd (Ceph 16) gives, and how it is used:
//! - librbd's compare-and-write handles one 512-byte sector only: that case is atomic
//!   against every client of the image. Longer ranges are **not** natively atomic: they
//!   are emulated (read, compare, write, with the store's other compare-and-writes held
//!   off — see `RbdStore`'s `compare_and_write`).
//! - Allocation is known per RADOS object: `lba_status` reports an object that exists as
//!   mapped up to its end, so only discarding whole objects makes a range unmapped again
//!   (`unmap_granularity` is the object size).
//! - librbd skips the unaligned parts of a discard by default; the store sets
//!   `rbd_skip_partial_discard = false` so that every unmapped byte reads as zero.
//!
//! librbd's traps, handled here: a zero-length read with a null buffer aborts the process
//! (zero-length requests complete without calling librbd); write completions return 0, not
//! the length (reported as the length); I/O at or past the end returns `-EINVAL` (ranges are
//! checked first; an `EINVAL` because the image shrank becomes `OUT_OF_RANGE`); a write
//! running past the end of an image that shrank since is clipped and reported done
//! (`RbdStore` checks the size after each modification and reports `OUT_OF_RANGE`);
//! Ceph 16 reports a compare-and-write mismatch as the RADOS object's start plus the
//! offset in the request, not as the image offset its API documents (both are understood;
//! with fancy striping neither fits and the store reads the range to place the
//! difference).
//!
//! All `unsafe` code of this module lives in the private `ffi` (declarations) and `image`
//! (handles and completions) submodules.

pub mod spec;

pub use spec::{FEATURE_DISABLED, RbdSpec, RbdSpecError, enabled};

#[cfg(feature = "rbd")]
mod engine;
#[cfg(feature = "rbd")]
mod ffi;
#[cfg(feature = "rbd")]
mod image;
#[cfg(feature = "rbd")]
mod store;

#[cfg(feature = "rbd")]
pub use engine::RbdEngine;
#[cfg(feature = "rbd")]
pub use store::{LBA_STATUS_WINDOW, RbdOptions, RbdStore, WRITE_SAME_PIECE};
