//! The asynchronous interface runtimes drive: [`Request`] in, [`Completion`] out.
//!
//! An [`Engine`] runs requests against one [`BackingStore`] and queues their completions.
//! The runtime learns that completions are ready in one of two ways, chosen with
//! [`Notify`] when the engine is built:
//! - [`Notify::EventFd`]: the engine owns an eventfd; register
//!   [`Engine::completion_fd`] with the reactor (`mio::unix::SourceFd`, readable interest;
//!   edge- or level-triggered both work) and call [`Engine::poll_completions`] (or
//!   [`Engine::drain`]) when it fires. Reaping resets the eventfd *before* taking the
//!   completions, so a completion that arrives during reaping always re-arms it.
//! - [`Notify::Callback`]: the engine calls the function (e.g. `mio::Waker::wake`) when the
//!   queue goes from empty to non-empty; the runtime then reaps as above.
//!
//! Buffers travel with the request and come back in the completion, so the runtime owns
//! every [`IoBuf`] between requests and can return it to its [`crate::BufPool`].
//!
//! Every submitted request yields exactly one completion — also across
//! [`Engine::shutdown`], which lets running requests finish and completes the ones not yet
//! started with [`StoreError::CANCELLED`]; requests submitted after shutdown are cancelled
//! the same way. Completions stay queued until reaped, even after shutdown.
//!
//! A thread-per-connection runtime needs none of this: it calls the [`BackingStore`]
//! methods directly (or [`execute`] on a [`Request`]).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::buf::IoBuf;
use crate::error::StoreError;
use crate::store::{BackingStore, LbaStatus};
use crate::sys::{self, EventFd};

/// The operation of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read,
    /// Write `buf` at `offset` (durably before completion if `fua`).
    Write,
    /// Make completed writes durable.
    Flush,
    /// Deallocate `len` bytes at `offset` (reads as zeroes after).
    Unmap,
    /// Write zeroes over `len` bytes at `offset`.
    WriteZeroes,
    /// Allocation status of the extent at `offset` (in [`Completion::lba_status`]).
    LbaStatus,
}

/// One I/O request. Build it with the constructors, which keep `len` and `buf` consistent.
#[derive(Debug)]
pub struct Request {
    /// Caller's identifier, returned in the completion.
    pub tag: u64,
    /// What to do.
    pub op: Op,
    /// Data buffer: filled by reads, written by writes, empty for the other operations.
    pub buf: IoBuf,
    /// Byte offset in the store.
    pub offset: u64,
    /// Length in bytes; for reads and writes it must equal `buf.len()`.
    pub len: u64,
    /// Force unit access: the write is durable before it completes.
    pub fua: bool,
}

impl Request {
    /// Read `buf.len()` bytes at `offset`.
    pub fn read(tag: u64, buf: IoBuf, offset: u64) -> Self {
        let len = buf.len() as u64;
        Self {
            tag,
            op: Op::Read,
            buf,
            offset,
            len,
            fua: false,
        }
    }

    /// Write `buf` at `offset`.
    pub fn write(tag: u64, buf: IoBuf, offset: u64, fua: bool) -> Self {
        let len = buf.len() as u64;
        Self {
            tag,
            op: Op::Write,
            buf,
            offset,
            len,
            fua,
        }
    }

    /// Flush (SYNCHRONIZE CACHE).
    pub fn flush(tag: u64) -> Self {
        Self {
            tag,
            op: Op::Flush,
            buf: IoBuf::empty(),
            offset: 0,
            len: 0,
            fua: false,
        }
    }

    /// Unmap `len` bytes at `offset`.
    pub fn unmap(tag: u64, offset: u64, len: u64) -> Self {
        Self {
            tag,
            op: Op::Unmap,
            buf: IoBuf::empty(),
            offset,
            len,
            fua: false,
        }
    }

    /// Zero `len` bytes at `offset`.
    pub fn write_zeroes(tag: u64, offset: u64, len: u64) -> Self {
        Self {
            tag,
            op: Op::WriteZeroes,
            buf: IoBuf::empty(),
            offset,
            len,
            fua: false,
        }
    }

    /// Query the allocation status at `offset`.
    pub fn lba_status(tag: u64, offset: u64) -> Self {
        Self {
            tag,
            op: Op::LbaStatus,
            buf: IoBuf::empty(),
            offset,
            len: 0,
            fua: false,
        }
    }

    /// Complete this request with `result` without running it.
    pub fn complete(self, result: Result<usize, StoreError>) -> Completion {
        Completion {
            tag: self.tag,
            op: self.op,
            result,
            lba_status: None,
            buf: self.buf,
        }
    }

    /// `INVALID` if a read or write has `len != buf.len()`.
    pub(crate) fn check_len(&self) -> Result<(), StoreError> {
        match self.op {
            Op::Read | Op::Write if self.len != self.buf.len() as u64 => Err(StoreError::INVALID),
            _ => Ok(()),
        }
    }
}

/// The outcome of one [`Request`].
#[derive(Debug)]
pub struct Completion {
    /// The request's tag.
    pub tag: u64,
    /// The request's operation.
    pub op: Op,
    /// Bytes transferred (reads, writes), 0 for flush/unmap/zeroing, the extent length for
    /// LBA status; or the error.
    pub result: Result<usize, StoreError>,
    /// For [`Op::LbaStatus`]: the extent found.
    pub lba_status: Option<LbaStatus>,
    /// The request's buffer, handed back (empty only if the store panicked on it).
    pub buf: IoBuf,
}

/// Run one request synchronously on `store` (what engine workers do).
pub fn execute(store: &dyn BackingStore, mut req: Request) -> Completion {
    if let Err(e) = req.check_len() {
        return req.complete(Err(e));
    }
    let mut lba = None;
    let result = match req.op {
        Op::Read => store.read_at(&mut req.buf, req.offset),
        Op::Write => store.write_at(&req.buf, req.offset, req.fua),
        Op::Flush => store.flush().map(|()| 0),
        Op::Unmap => store.unmap(req.offset, req.len).map(|()| 0),
        Op::WriteZeroes => store.write_zeroes(req.offset, req.len).map(|()| 0),
        Op::LbaStatus => store.lba_status(req.offset).map(|s| {
            lba = Some(s);
            usize::try_from(s.len).unwrap_or(usize::MAX)
        }),
    };
    let mut c = req.complete(result);
    c.lba_status = lba;
    c
}

/// [`execute`], turning a panic in the store into an `Io` error so a worker survives it.
pub(crate) fn execute_guarded(store: &dyn BackingStore, req: Request) -> Completion {
    let (tag, op) = (req.tag, req.op);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(store, req))) {
        Ok(c) => c,
        Err(_) => {
            log::error!("backing store panicked on {op:?} (tag {tag})");
            Completion {
                tag,
                op,
                result: Err(StoreError::IO),
                lba_status: None,
                buf: IoBuf::empty(),
            }
        }
    }
}

/// How an engine tells the runtime that completions are ready.
pub enum Notify {
    /// Signal an eventfd owned by the engine ([`Engine::completion_fd`]).
    EventFd,
    /// Call this function (e.g. `mio::Waker::wake`) when completions become ready. It runs
    /// on an engine thread (or inside `submit` for immediate completions), so it must only
    /// wake the runtime: never call back into the engine from it.
    Callback(Box<dyn Fn() + Send + Sync>),
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notify::EventFd => f.write_str("EventFd"),
            Notify::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// A queue of completions plus the notification that wakes the runtime.
///
/// Engines push into it from any thread; the runtime reaps it. Public so that other
/// engines (e.g. librbd or NBD clients, whose completion callbacks run on foreign threads)
/// can reuse it.
pub struct CompletionQueue {
    items: Mutex<Vec<Completion>>,
    efd: Option<EventFd>,
    callback: Option<Box<dyn Fn() + Send + Sync>>,
    /// Callback mode only: set by `notify`, consumed by `wait`.
    flag: Mutex<bool>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CompletionQueue {
    /// A new, empty queue.
    pub fn new(notify: Notify) -> io::Result<Self> {
        let (efd, callback) = match notify {
            Notify::EventFd => (Some(EventFd::new()?), None),
            Notify::Callback(cb) => (None, Some(cb)),
        };
        Ok(Self {
            items: Mutex::new(Vec::new()),
            efd,
            callback,
            flag: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    /// The eventfd to poll for readability (`None` in callback mode).
    pub fn fd(&self) -> Option<RawFd> {
        self.efd.as_ref().map(EventFd::raw)
    }

    /// Queue one completion, notifying if the queue was empty.
    pub fn push(&self, c: Completion) {
        let was_empty = {
            let mut items = lock(&self.items);
            let was_empty = items.is_empty();
            items.push(c);
            was_empty
        };
        if was_empty {
            self.notify();
        }
    }

    /// Queue every completion of `batch` (leaving it empty), notifying once.
    pub fn push_all(&self, batch: &mut Vec<Completion>) {
        if batch.is_empty() {
            return;
        }
        let was_empty = {
            let mut items = lock(&self.items);
            let was_empty = items.is_empty();
            items.append(batch);
            was_empty
        };
        if was_empty {
            self.notify();
        }
    }

    /// Raise the notification (eventfd or callback) unconditionally.
    pub fn notify(&self) {
        if let Some(efd) = &self.efd {
            efd.signal();
        }
        if let Some(cb) = &self.callback {
            cb();
            *lock(&self.flag) = true;
            self.cv.notify_all();
        }
    }

    /// Reset the eventfd (no-op in callback mode). Reapers call this before taking items.
    pub fn clear_signal(&self) {
        if let Some(efd) = &self.efd {
            efd.clear();
        }
    }

    /// Move every queued completion to the end of `out` without touching the signal.
    pub(crate) fn take_into(&self, out: &mut Vec<Completion>) -> usize {
        let mut items = lock(&self.items);
        let n = items.len();
        out.append(&mut items);
        n
    }

    /// Reset the signal, then move every queued completion to the end of `out`.
    pub fn drain(&self, out: &mut Vec<Completion>) -> usize {
        self.clear_signal();
        self.take_into(out)
    }

    /// Number of queued completions.
    pub fn len(&self) -> usize {
        lock(&self.items).len()
    }

    /// Whether no completion is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Block until completions may be ready (eventfd readable / callback fired / items
    /// queued) or `timeout` passes (`None`: no limit). Returns `false` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if let Some(efd) = &self.efd {
            if !self.is_empty() {
                return true;
            }
            return sys::poll_readable(efd.borrow(), timeout).unwrap_or(false) || !self.is_empty();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut flag = lock(&self.flag);
        loop {
            if *flag {
                *flag = false;
                return true;
            }
            if !self.is_empty() {
                return true;
            }
            match deadline {
                None => flag = self.cv.wait(flag).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    flag = self
                        .cv
                        .wait_timeout(flag, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("len", &self.len())
            .field("fd", &self.fd())
            .finish()
    }
}

/// An asynchronous executor of [`Request`]s for one store. Object-safe: runtimes hold a
/// `Box<dyn Engine>` / `Arc<dyn Engine>` chosen by the LUN's `bstype`.
///
/// Call order for a reactor: build the engine with [`Notify`], register
/// [`completion_fd`](Self::completion_fd) (or pass a waker callback), [`submit`](Self::submit)
/// requests, and on each wake-up reap with [`poll_completions`](Self::poll_completions).
/// At shutdown call [`shutdown`](Self::shutdown) and reap what it left queued.
pub trait Engine: Send + Sync {
    /// A short name: `"rdwr"`, `"aio"`, `"inline"`.
    fn name(&self) -> &'static str;

    /// The store the engine runs on (for synchronous calls and geometry).
    fn store(&self) -> &Arc<dyn BackingStore>;

    /// Queue one request. Never blocks on I/O (except [`InlineEngine`], which runs it);
    /// errors arrive as completions.
    fn submit(&self, req: Request);

    /// Queue every request of `reqs`, leaving it empty (one wake-up / one `io_submit` for
    /// the batch where the engine can).
    fn submit_batch(&self, reqs: &mut Vec<Request>) {
        for r in reqs.drain(..) {
            self.submit(r);
        }
    }

    /// Hand every ready completion to `f`; returns how many. Never blocks. `f` may submit
    /// new requests.
    fn poll_completions(&self, f: &mut dyn FnMut(Completion)) -> usize;

    /// Append every ready completion to `out`; returns how many.
    fn drain(&self, out: &mut Vec<Completion>) -> usize {
        self.poll_completions(&mut |c| out.push(c))
    }

    /// The eventfd to register for readability, in [`Notify::EventFd`] mode.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Block until completions may be ready or `timeout` passes; `false` on timeout. For
    /// tests and simple drivers; a reactor polls the fd instead.
    fn wait_completions(&self, timeout: Option<Duration>) -> bool;

    /// Serve a read in the caller's thread if that cannot block (page-cache hit via
    /// `preadv2(RWF_NOWAIT)`, memory store). `None`: submit it instead.
    fn try_read_inline(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        self.store().try_read_cached(buf, offset)
    }

    /// Requests submitted whose completion has not been handed out by a reap yet.
    fn in_flight(&self) -> usize;

    /// Stop: running requests finish, queued ones complete with `CANCELLED`, threads are
    /// joined. Idempotent; also done on drop.
    fn shutdown(&self);
}

/// Reaping shared by the engines: a spare vector reused between reaps and the in-flight
/// counter.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    spare: Mutex<Vec<Completion>>,
    pub(crate) in_flight: AtomicUsize,
}

impl Reaper {
    /// Take the spare batch vector (keeps its capacity between reaps).
    pub(crate) fn take_batch(&self) -> Vec<Completion> {
        std::mem::take(&mut *lock(&self.spare))
    }

    /// Hand out `batch` to `f`, update the counter, keep the vector for next time.
    pub(crate) fn hand_out(
        &self,
        mut batch: Vec<Completion>,
        f: &mut dyn FnMut(Completion),
    ) -> usize {
        let n = batch.len();
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        for c in batch.drain(..) {
            f(c);
        }
        self.put_back(batch);
        n
    }

    /// Return an (emptied) batch vector for reuse.
    pub(crate) fn put_back(&self, batch: Vec<Completion>) {
        let mut spare = lock(&self.spare);
        if spare.capacity() < batch.capacity() {
            *spare = batch;
        }
    }

    pub(crate) fn submitted(&self, n: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// An engine that runs each request in the submitting thread and queues its completion:
/// no thread hop, for stores that never block (memory, null) or for tests.
pub struct InlineEngine {
    store: Arc<dyn BackingStore>,
    queue: CompletionQueue,
    reaper: Reaper,
    stopped: std::sync::atomic::AtomicBool,
}

impl InlineEngine {
    /// An inline engine over `store`.
    pub fn new(store: Arc<dyn BackingStore>, notify: Notify) -> io::Result<Self> {
        Ok(Self {
            store,
            queue: CompletionQueue::new(notify)?,
            reaper: Reaper::default(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl fmt::Debug for InlineEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineEngine")
            .field("queue", &self.queue)
            .finish()
    }
}

impl Engine for InlineEngine {
    fn name(&self) -> &'static str {
        "inline"
    }

    fn store(&self) -> &Arc<dyn BackingStore> {
        &self.store
    }

    fn submit(&self, req: Request) {
        self.reaper.submitted(1);
        let c = if self.stopped.load(Ordering::Acquire) {
            req.complete(Err(StoreError::CANCELLED))
        } else {
            execute_guarded(&*self.store, req)
        };
        self.queue.push(c);
    }

    fn submit_batch(&self, reqs: &mut Vec<Request>) {
        self.reaper.submitted(reqs.len());
        let stopped = self.stopped.load(Ordering::Acquire);
        let mut batch = self.reaper.take_batch();
        for req in reqs.drain(..) {
            batch.push(if stopped {
                req.complete(Err(StoreError::CANCELLED))
            } else {
                execute_guarded(&*self.store, req)
            });
        }
        self.queue.push_all(&mut batch);
        self.reaper.put_back(batch);
    }

    fn poll_completions(&self, f: &mut dyn FnMut(Completion)) -> usize {
        let mut batch = self.reaper.take_batch();
        self.queue.drain(&mut batch);
        self.reaper.hand_out(batch, f)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.queue.fd()
    }

    fn wait_completions(&self, timeout: Option<Duration>) -> bool {
        self.queue.wait(timeout)
    }

    fn in_flight(&self) -> usize {
        self.reaper.in_flight()
    }

    fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}
