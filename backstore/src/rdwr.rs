//! The `rdwr` engine: a pool of worker threads doing `pread`/`pwrite`/`fdatasync`/
//! `fallocate` (through the [`BackingStore`] methods) on requests taken from one shared
//! pending queue, as tgt's `bs_rdwr` does with its 16 threads per LUN.
//!
//! Submission pushes onto a `Mutex<VecDeque>` and wakes one idle worker; a worker pushes
//! its completion into the engine's [`CompletionQueue`], which signals the eventfd or calls
//! the callback only when the queue goes from empty to non-empty (one wake-up per batch).
//! The engine works on any `Arc<dyn BackingStore>`: files, block devices, memory, null, or
//! a test wrapper.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::{
    Completion, CompletionQueue, Engine, Notify, Reaper, Request, execute_guarded,
};
use crate::error::StoreError;
use crate::store::BackingStore;

/// Default number of worker threads (tgt's value).
pub const DEFAULT_THREADS: usize = 16;

struct PoolState {
    pending: VecDeque<Request>,
    stop: bool,
    idle: usize,
}

struct PoolShared {
    state: Mutex<PoolState>,
    cv: Condvar,
    store: Arc<dyn BackingStore>,
    out: Arc<CompletionQueue>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker pool feeding a completion queue (also the AIO engine's helper).
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    pub(crate) fn new(
        store: Arc<dyn BackingStore>,
        threads: usize,
        out: Arc<CompletionQueue>,
        name: &str,
    ) -> io::Result<Self> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState {
                pending: VecDeque::with_capacity(256),
                stop: false,
                idle: 0,
            }),
            cv: Condvar::new(),
            store,
            out,
        });
        let pool = Self {
            shared,
            workers: Mutex::new(Vec::new()),
        };
        for i in 0..threads.max(1) {
            let shared = pool.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&shared));
            match handle {
                Ok(h) => lock(&pool.workers).push(h),
                Err(e) => {
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    pub(crate) fn submit(&self, req: Request) {
        let mut state = lock(&self.shared.state);
        if state.stop {
            drop(state);
            self.shared
                .out
                .push(req.complete(Err(StoreError::CANCELLED)));
            return;
        }
        state.pending.push_back(req);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.shared.cv.notify_one();
        }
    }

    pub(crate) fn submit_batch(&self, reqs: &mut Vec<Request>) {
        if reqs.is_empty() {
            return;
        }
        let mut state = lock(&self.shared.state);
        if state.stop {
            drop(state);
            for req in reqs.drain(..) {
                self.shared
                    .out
                    .push(req.complete(Err(StoreError::CANCELLED)));
            }
            return;
        }
        let n = reqs.len();
        state.pending.extend(reqs.drain(..));
        let idle = state.idle;
        drop(state);
        if n >= idle {
            self.shared.cv.notify_all();
        } else {
            for _ in 0..n {
                self.shared.cv.notify_one();
            }
        }
    }

    /// Stop accepting, cancel what has not started, join the workers. Idempotent.
    pub(crate) fn shutdown(&self) {
        let cancelled: Vec<Request> = {
            let mut state = lock(&self.shared.state);
            state.stop = true;
            state.pending.drain(..).collect()
        };
        self.shared.cv.notify_all();
        let mut batch: Vec<Completion> = cancelled
            .into_iter()
            .map(|r| r.complete(Err(StoreError::CANCELLED)))
            .collect();
        self.shared.out.push_all(&mut batch);
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            if w.join().is_err() {
                log::error!("rdwr worker thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let req = {
            let mut state = lock(&shared.state);
            loop {
                if state.stop {
                    return;
                }
                if let Some(req) = state.pending.pop_front() {
                    break req;
                }
                state.idle += 1;
                state = shared.cv.wait(state).unwrap_or_else(|e| e.into_inner());
                state.idle -= 1;
            }
        };
        let c = execute_guarded(&*shared.store, req);
        shared.out.push(c);
    }
}

/// Configuration of an [`RdwrEngine`].
#[derive(Debug)]
pub struct RdwrConfig {
    /// Number of worker threads (at least 1; tgt uses 16).
    pub threads: usize,
    /// How completions are signalled.
    pub notify: Notify,
}

impl Default for RdwrConfig {
    /// 16 threads, eventfd notification.
    fn default() -> Self {
        Self {
            threads: DEFAULT_THREADS,
            notify: Notify::EventFd,
        }
    }
}

/// The thread-pool engine.
pub struct RdwrEngine {
    store: Arc<dyn BackingStore>,
    queue: Arc<CompletionQueue>,
    pool: Pool,
    reaper: Reaper,
    threads: usize,
}

impl RdwrEngine {
    /// Start `config.threads` workers over `store`.
    pub fn new(store: Arc<dyn BackingStore>, config: RdwrConfig) -> io::Result<Self> {
        let queue = Arc::new(CompletionQueue::new(config.notify)?);
        let threads = config.threads.max(1);
        let pool = Pool::new(store.clone(), threads, queue.clone(), "bs-rdwr")?;
        Ok(Self {
            store,
            queue,
            pool,
            reaper: Reaper::default(),
            threads,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl fmt::Debug for RdwrEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdwrEngine")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .finish()
    }
}

impl Engine for RdwrEngine {
    fn name(&self) -> &'static str {
        "rdwr"
    }

    fn store(&self) -> &Arc<dyn BackingStore> {
        &self.store
    }

    fn submit(&self, req: Request) {
        self.reaper.submitted(1);
        self.pool.submit(req);
    }

    fn submit_batch(&self, reqs: &mut Vec<Request>) {
        self.reaper.submitted(reqs.len());
        self.pool.submit_batch(reqs);
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
        self.pool.shutdown();
    }
}
