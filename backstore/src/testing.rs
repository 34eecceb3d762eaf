//! Test helpers for code built on this crate: a store wrapper that counts calls, injects
//! errors and slows operations down.
//!
//! [`InstrumentedStore`] wraps any [`BackingStore`] and records how many times each
//! operation ran (to observe that FUA and flush reach the store), can fail chosen
//! operations with a chosen errno (to exercise EIO / ENOSPC paths) and can delay every
//! operation (to keep requests in flight during shutdown tests). [`GatedEngine`] holds
//! requests until the test releases them (requests in flight without timing).

use std::fmt;
use std::net::TcpListener;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Completion, CompletionQueue, Engine, Notify, Op, Request, execute};
use crate::error::StoreError;
use crate::store::{BackingStore, LbaStatus};

/// Calls seen by an [`InstrumentedStore`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `read_at` calls.
    pub reads: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// `write_at` calls with `fua`.
    pub fua_writes: u64,
    /// `flush` calls.
    pub flushes: u64,
    /// `unmap` calls.
    pub unmaps: u64,
    /// `write_zeroes` calls.
    pub zeroes: u64,
    /// `lba_status` calls.
    pub lba_status: u64,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    op: Op,
    /// Fail only requests whose range contains this offset (`None`: all).
    at: Option<u64>,
    errno: i32,
}

/// A wrapper that counts, fails and delays operations of an inner store.
#[derive(Debug)]
pub struct InstrumentedStore<S> {
    inner: S,
    reads: AtomicU64,
    writes: AtomicU64,
    fua_writes: AtomicU64,
    flushes: AtomicU64,
    unmaps: AtomicU64,
    zeroes: AtomicU64,
    lba: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    delay: Mutex<Duration>,
}

impl<S: BackingStore> InstrumentedStore<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            zeroes: AtomicU64::new(0),
            lba: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Calls so far.
    pub fn counts(&self) -> Counts {
        Counts {
            reads: self.reads.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
            fua_writes: self.fua_writes.load(Ordering::SeqCst),
            flushes: self.flushes.load(Ordering::SeqCst),
            unmaps: self.unmaps.load(Ordering::SeqCst),
            zeroes: self.zeroes.load(Ordering::SeqCst),
            lba_status: self.lba.load(Ordering::SeqCst),
        }
    }

    /// Fail every `op` whose range contains `at` (or every `op` when `None`) with `errno`.
    pub fn fail(&self, op: Op, at: Option<u64>, errno: i32) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Fault { op, at, errno });
    }

    /// Remove every injected fault.
    pub fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Sleep this long in every operation before running it.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    fn enter(&self, op: Op, offset: u64, len: u64) -> Result<(), StoreError> {
        let delay = *self.delay.lock().unwrap_or_else(|e| e.into_inner());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        for f in faults.iter() {
            let hit = match f.at {
                None => true,
                Some(at) => at >= offset && at < offset.saturating_add(len.max(1)),
            };
            if f.op == op && hit {
                return Err(StoreError::from_errno(f.errno));
            }
        }
        Ok(())
    }
}

impl<S: BackingStore> BackingStore for InstrumentedStore<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn is_thin(&self) -> bool {
        self.inner.is_thin()
    }
    fn unmap_granularity(&self) -> u64 {
        self.inner.unmap_granularity()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.enter(Op::Read, offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.enter(Op::Write, offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset, fua)
    }
    // Not write_vectored_at: the default sends each piece through write_at above, so every
    // piece is counted and can be failed on its own.
    fn serializes_writes(&self) -> bool {
        self.inner.serializes_writes()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.enter(Op::Flush, 0, u64::MAX)?;
        self.inner.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.unmaps.fetch_add(1, Ordering::SeqCst);
        self.enter(Op::Unmap, offset, len)?;
        self.inner.unmap(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.zeroes.fetch_add(1, Ordering::SeqCst);
        self.enter(Op::WriteZeroes, offset, len)?;
        self.inner.write_zeroes(offset, len)
    }
    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        self.lba.fetch_add(1, Ordering::SeqCst);
        self.enter(Op::LbaStatus, offset, 1)?;
        self.inner.lba_status(offset)
    }
    // `try_read_cached` keeps the default (`None`): every read goes through `read_at`, so
    // counts and faults see it.
}

/// A TCP port on 127.0.0.1 that nothing listens on, for a test server to bind later.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default): a port the kernel hands out for `bind(0)` is also what it hands the next
/// outgoing connection as its local port, so a server started a moment later on it could
/// find it taken. Ports here are only ever taken by an explicit bind, which the check below
/// sees. Each process starts at its own offset and walks forward, so parallel test
/// processes seldom probe the same ports.
pub fn free_port() -> u16 {
    const LOW: u16 = 10_000;
    const SPAN: u16 = 20_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = LOW + (base + step) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// `len` deterministic pseudo-random bytes (xorshift64 from `seed`): test data that differs
/// per seed and per position, so a misplaced or stale block is seen.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// When a [`GatedEngine`] lets its requests run, and what it saw (shared by the engines a
/// test makes, e.g. one per reactor).
#[derive(Debug, Default)]
pub struct Gate {
    /// Held requests (per engine) at which the engine runs them all; 0: only
    /// [`GatedEngine::release`] does.
    pub release_at: AtomicUsize,
    /// The most requests one engine held at once.
    pub peak: AtomicUsize,
}

/// An [`Engine`] that holds every request until the test lets it go, so that tests see
/// requests in flight without timing: [`GatedEngine::release`] runs the held ones (newest
/// first: completions arrive out of order) on the store and queues their completions;
/// with [`Gate::release_at`] set, the engine does so itself once that many are held.
/// Clones share the engine (a test keeps one while a runtime owns another).
#[derive(Clone)]
pub struct GatedEngine {
    inner: Arc<GatedInner>,
}

struct GatedInner {
    store: Arc<dyn BackingStore>,
    queue: CompletionQueue,
    gate: Arc<Gate>,
    held: Mutex<Vec<Request>>,
    in_flight: AtomicUsize,
    stopped: AtomicBool,
}

impl GatedEngine {
    /// An engine over `store`; completions are signalled as `notify` says.
    pub fn new(
        store: Arc<dyn BackingStore>,
        notify: Notify,
        gate: Arc<Gate>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(GatedInner {
                store,
                queue: CompletionQueue::new(notify)?,
                gate,
                held: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                stopped: AtomicBool::new(false),
            }),
        })
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Runs every held request, newest first, and queues the completions; how many.
    pub fn release(&self) -> usize {
        let me = &*self.inner;
        let held = std::mem::take(&mut *me.held.lock().unwrap_or_else(|e| e.into_inner()));
        let n = held.len();
        let mut done: Vec<Completion> = held
            .into_iter()
            .rev()
            .map(|r| execute(&*me.store, r))
            .collect();
        me.queue.push_all(&mut done);
        n
    }
}

impl fmt::Debug for GatedEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedEngine")
            .field("held", &self.held())
            .field("gate", &self.inner.gate)
            .finish()
    }
}

impl Engine for GatedEngine {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn store(&self) -> &Arc<dyn BackingStore> {
        &self.inner.store
    }

    fn submit(&self, req: Request) {
        let me = &*self.inner;
        me.in_flight.fetch_add(1, Ordering::AcqRel);
        if me.stopped.load(Ordering::Acquire) {
            me.queue.push(req.complete(Err(StoreError::CANCELLED)));
            return;
        }
        let n = {
            let mut held = me.held.lock().unwrap_or_else(|e| e.into_inner());
            held.push(req);
            held.len()
        };
        me.gate.peak.fetch_max(n, Ordering::AcqRel);
        let at = me.gate.release_at.load(Ordering::Acquire);
        if at > 0 && n >= at {
            self.release();
        }
    }

    fn poll_completions(&self, f: &mut dyn FnMut(Completion)) -> usize {
        let mut out = Vec::new();
        self.inner.queue.drain(&mut out);
        self.inner.in_flight.fetch_sub(out.len(), Ordering::AcqRel);
        let n = out.len();
        out.into_iter().for_each(f);
        n
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.queue.fd()
    }

    fn wait_completions(&self, timeout: Option<Duration>) -> bool {
        self.inner.queue.wait(timeout)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Runs what is held (so every request completes), then cancels new ones.
    fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.release();
    }
}
