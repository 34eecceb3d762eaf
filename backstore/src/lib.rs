//! Backing stores for a storage target, and the engines that run them for a runtime.
//!
//! This is the storage side of the target (see the workspace DESIGN): scsi-core decides
//! *what* to read or write; this crate does it.
//!
//! - [`BackingStore`]: positional block I/O (`read_at`, `write_at` with FUA, `flush`,
//!   `unmap`, `write_zeroes`, `lba_status`, geometry). Implementations: [`FileStore`]
//!   (regular file or block device; `O_DIRECT`, `O_SYNC`, read-only, created sparse),
//!   [`MemoryStore`] (thin RAM disk), [`NullStore`], [`NbdStore`] (a pipelined client of
//!   a remote NBD server, reconnecting on its own). A thread-per-connection runtime calls
//!   these methods directly.
//! - [`BlockDevice`]: a simpler synchronous trait in block units for storage of one's own;
//!   [`DeviceStore`] adapts it to a full [`BackingStore`].
//! - [`Engine`]: asynchronous execution for an event-loop runtime. [`RdwrEngine`] (worker
//!   pool, any store), [`AioEngine`] (Linux native AIO on a [`FileStore`]),
//!   [`InlineEngine`] (runs in the caller's thread: memory/null stores). Requests carry an
//!   [`IoBuf`] in and completions hand it back; completions are signalled through an
//!   eventfd ([`Engine::completion_fd`]) or a callback ([`Notify`]).
//! - [`BufPool`]: page-aligned reusable buffers, so the hot path allocates nothing.
//! - [`StoreError`]: errors grouped by the sense data they become ([`ErrorKind`]).
//!
//! A reactor (e.g. mio) uses an engine like this:
//!
//! ```no_run
//! use std::sync::Arc;
//! use backstore::{BufPool, Engine, FileStore, OpenOptions, RdwrConfig, RdwrEngine, Request};
//!
//! let store = Arc::new(FileStore::open("/var/lib/disk.img", &OpenOptions {
//!     create_size: Some(1 << 30),
//!     ..OpenOptions::default()
//! })?);
//! let engine = RdwrEngine::new(store, RdwrConfig::default())?;
//! let fd = engine.completion_fd().expect("eventfd mode"); // register with SourceFd
//! let pool = BufPool::default();
//! let mut buf = pool.get(4096);
//! // Try the page cache first; fall back to the pool.
//! match engine.try_read_inline(&mut buf, 0) {
//!     Some(result) => { /* done inline */ let _ = result; }
//!     None => engine.submit(Request::read(7, buf, 0)),
//! }
//! // ... when `fd` is readable:
//! engine.poll_completions(&mut |c| {
//!     // c.tag, c.result, c.buf (give it back to the pool by dropping it)
//!     let _ = c;
//! });
//! # let _ = fd;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Unsafe code is confined to the private `sys` (system calls) and `buf` (aligned
//! allocation) modules, and with the `rbd` feature to `rbd`'s private `ffi` and `image`
//! modules (librbd).

pub mod aio;
mod buf;
pub mod device;
pub mod engine;
mod error;
mod file;
pub mod lun;
mod memory;
pub mod nbd;
pub mod rbd;
pub mod rdwr;
mod store;
mod sys;
pub mod testing;

pub use aio::{AioConfig, AioEngine};
pub use buf::{ALIGN, BufPool, CapacityError, IoBuf};
pub use device::{BlockDevice, DeviceStore};
pub use engine::{Completion, CompletionQueue, Engine, InlineEngine, Notify, Op, Request, execute};
pub use error::{ErrorKind, OpenError, OpenErrorKind, StoreError};
pub use file::{FileStore, OpenOptions};
pub use lun::{BsType, EngineTuning, LunStore, UnknownBsType};
pub use memory::{CHUNK_SIZE, MemoryStore, NullStore};
pub use nbd::{NbdOptions, NbdStore};
pub use rdwr::{RdwrConfig, RdwrEngine};
pub use store::{BackingStore, CompareAndWrite, LbaStatus, check_range};
