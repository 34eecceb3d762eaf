//! The `aio` engine: Linux native AIO (`io_setup`/`io_submit`/`io_getevents`) on a
//! [`FileStore`], as tgt's `bs_aio`, with the completion eventfd polled by the runtime.
//!
//! - Reads and writes become `IOCB_CMD_PREAD`/`PWRITE` iocbs flagged `IOCB_FLAG_RESFD`, so
//!   the kernel signals the eventfd itself; FUA writes carry `RWF_DSYNC`. Flush is an
//!   `IOCB_CMD_FDSYNC` iocb (falling back to the helper thread if the kernel refuses it).
//!   Unmap, write-zeroes and LBA status (which AIO cannot express) go to one helper
//!   thread whose completions land in the same queue and signal the same eventfd.
//! - At most `depth` iocbs are in the kernel; further requests wait in a FIFO and are
//!   submitted as completions free slots. Submission is batched (one `io_submit` per
//!   [`Engine::submit_batch`] call and per refill), reaping is batched (64 events per
//!   `io_getevents`).
//! - Open the store with `O_DIRECT` for real asynchrony: on a buffered file the kernel runs
//!   the I/O inside `io_submit`. [`IoBuf`](crate::IoBuf)s are page-aligned, so only the
//!   offset and length must be multiples of the block size; anything else is completed
//!   with [`StoreError::INVALID`] without reaching the kernel.
//! - Reaping happens in the runtime's thread, in [`Engine::poll_completions`]: reset the
//!   eventfd, `io_getevents` with a zero timeout until empty, refill the kernel from the
//!   wait list, then hand out kernel and helper completions. In [`Notify::Callback`] mode a
//!   small watcher thread waits on a private eventfd and calls the callback instead.
//! - Shutdown cancels the wait list, waits for every iocb in the kernel to complete (their
//!   buffers stay owned by the engine until then), stops the helper, and leaves all those
//!   completions queued for a last reap.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::{Completion, CompletionQueue, Engine, Notify, Op, Reaper, Request};
use crate::error::StoreError;
use crate::file::FileStore;
use crate::rdwr::Pool;
use crate::store::{BackingStore, check_range};
use crate::sys::{self, AioRing, EventFd};

/// Default number of iocbs in the kernel at once.
pub const DEFAULT_DEPTH: u32 = 128;

/// Configuration of an [`AioEngine`].
#[derive(Debug)]
pub struct AioConfig {
    /// Maximum iocbs in the kernel at once (1..=65536); more requests wait in a FIFO.
    pub depth: u32,
    /// How completions are signalled.
    pub notify: Notify,
}

impl Default for AioConfig {
    /// Depth 128, eventfd notification.
    fn default() -> Self {
        Self {
            depth: DEFAULT_DEPTH,
            notify: Notify::EventFd,
        }
    }
}

struct AioState {
    /// The kernel context and the requests it holds.
    ring: AioRing,
    /// Requests waiting for a free slot, in arrival order.
    waiting: VecDeque<Request>,
    stopped: bool,
}

/// The Linux native AIO engine.
pub struct AioEngine {
    // Declared first so it is dropped first: the ring must go before the file and the
    // eventfd it refers to (shutdown has emptied it by then anyway).
    state: Mutex<AioState>,
    file: Arc<FileStore>,
    store: Arc<dyn BackingStore>,
    queue: Arc<CompletionQueue>,
    helper: Pool,
    reaper: Reaper,
    private_efd: Option<Arc<EventFd>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    watcher_stop: Arc<AtomicBool>,
    fdsync_refused: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AioEngine {
    /// Set up an AIO context of `config.depth` over `file`.
    pub fn new(file: Arc<FileStore>, config: AioConfig) -> io::Result<Self> {
        let depth = config.depth.clamp(1, 65536);
        let callback_mode = matches!(config.notify, Notify::Callback(_));
        let queue = Arc::new(CompletionQueue::new(config.notify)?);
        let (resfd, private_efd) = match queue.fd() {
            Some(fd) => (fd, None),
            None => {
                let efd = Arc::new(EventFd::new()?);
                (efd.raw(), Some(efd))
            }
        };
        let ring = AioRing::new(depth, file.file().as_raw_fd(), resfd, file.is_sync())?;
        let store: Arc<dyn BackingStore> = file.clone();
        let helper = Pool::new(store.clone(), 1, queue.clone(), "bs-aio-helper")?;
        let watcher_stop = Arc::new(AtomicBool::new(false));
        let watcher = match (&private_efd, callback_mode) {
            (Some(efd), true) => {
                let (efd, stop, queue) = (efd.clone(), watcher_stop.clone(), queue.clone());
                Some(
                    std::thread::Builder::new()
                        .name("bs-aio-watch".into())
                        .spawn(move || {
                            while !stop.load(Ordering::Acquire) {
                                if let Ok(true) = sys::poll_readable(efd.borrow(), None) {
                                    efd.clear();
                                    if !stop.load(Ordering::Acquire) {
                                        queue.notify();
                                    }
                                }
                            }
                        })?,
                )
            }
            _ => None,
        };
        Ok(Self {
            state: Mutex::new(AioState {
                ring,
                waiting: VecDeque::new(),
                stopped: false,
            }),
            file,
            store,
            queue,
            helper,
            reaper: Reaper::default(),
            private_efd,
            watcher: Mutex::new(watcher),
            watcher_stop,
            fdsync_refused: AtomicBool::new(false),
        })
    }

    /// Maximum iocbs in the kernel at once.
    pub fn depth(&self) -> usize {
        lock(&self.state).ring.depth()
    }

    /// Check a read/write before it reaches the kernel.
    fn validate(&self, req: &Request) -> Result<(), StoreError> {
        req.check_len()?;
        if req.op == Op::Write && self.file.is_read_only() {
            return Err(StoreError::READ_ONLY);
        }
        check_range(req.offset, req.len, self.file.size())?;
        let bs = u64::from(self.file.block_size());
        if self.file.is_direct() && (req.offset % bs != 0 || req.len % bs != 0) {
            return Err(StoreError::INVALID);
        }
        Ok(())
    }

    /// Route requests: errors and empty transfers complete at once, helper operations go
    /// to the helper, the rest join the wait list. Then fill the kernel.
    fn enqueue(
        &self,
        state: &mut AioState,
        reqs: impl Iterator<Item = Request>,
        done: &mut Vec<Completion>,
    ) {
        for req in reqs {
            if state.stopped {
                done.push(req.complete(Err(StoreError::CANCELLED)));
                continue;
            }
            match req.op {
                Op::Read | Op::Write => match self.validate(&req) {
                    Err(e) => done.push(req.complete(Err(e))),
                    Ok(()) if req.len == 0 => done.push(req.complete(Ok(0))),
                    Ok(()) => state.waiting.push_back(req),
                },
                Op::Flush if !self.fdsync_refused.load(Ordering::Relaxed) => {
                    state.waiting.push_back(req)
                }
                _ => self.helper.submit(req),
            }
        }
        self.fill(state, done);
    }

    /// Move requests from the wait list into the kernel.
    fn fill(&self, state: &mut AioState, done: &mut Vec<Completion>) {
        let AioState { ring, waiting, .. } = state;
        ring.submit(waiting, &mut |req, errno| {
            self.finish(req, -i64::from(errno), done)
        });
    }

    /// Turn a kernel result into a completion (or resubmit a refused flush to the helper).
    fn finish(&self, req: Request, res: i64, done: &mut Vec<Completion>) {
        if res < 0 {
            let errno = i32::try_from(-res).unwrap_or(libc::EIO);
            if req.op == Op::Flush && errno == libc::EINVAL {
                self.fdsync_refused.store(true, Ordering::Relaxed);
                self.helper.submit(req);
                return;
            }
            done.push(req.complete(Err(StoreError::from_errno(errno))));
            return;
        }
        let res = res as u64;
        let result = match req.op {
            Op::Read | Op::Write if res != req.len => {
                log::warn!(
                    "aio: short {:?} of {res} of {} bytes at {}",
                    req.op,
                    req.len,
                    req.offset
                );
                Err(StoreError::IO)
            }
            Op::Read | Op::Write => Ok(res as usize),
            _ => Ok(0),
        };
        done.push(req.complete(result));
    }

    /// Reap every event the kernel has without waiting.
    fn reap(&self, state: &mut AioState, done: &mut Vec<Completion>) {
        if let Err(e) = state.ring.reap(0, Some(Duration::ZERO), &mut |req, res| {
            self.finish(req, res, done)
        }) {
            log::error!("aio: io_getevents failed: {e}");
        }
    }
}

impl fmt::Debug for AioEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AioEngine")
            .field("path", &self.file.path())
            .field("queue", &self.queue)
            .finish()
    }
}

impl Engine for AioEngine {
    fn name(&self) -> &'static str {
        "aio"
    }

    fn store(&self) -> &Arc<dyn BackingStore> {
        &self.store
    }

    fn submit(&self, req: Request) {
        self.reaper.submitted(1);
        let mut done = Vec::new();
        self.enqueue(&mut lock(&self.state), std::iter::once(req), &mut done);
        self.queue.push_all(&mut done);
    }

    fn submit_batch(&self, reqs: &mut Vec<Request>) {
        self.reaper.submitted(reqs.len());
        let mut done = Vec::new();
        self.enqueue(&mut lock(&self.state), reqs.drain(..), &mut done);
        self.queue.push_all(&mut done);
    }

    fn poll_completions(&self, f: &mut dyn FnMut(Completion)) -> usize {
        self.queue.clear_signal();
        let mut batch = self.reaper.take_batch();
        {
            let mut state = lock(&self.state);
            self.reap(&mut state, &mut batch);
            let mut extra = Vec::new();
            self.fill(&mut state, &mut extra);
            batch.append(&mut extra);
        }
        self.queue.take_into(&mut batch);
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
        let mut done = Vec::new();
        {
            let mut state = lock(&self.state);
            state.stopped = true;
            for req in std::mem::take(&mut state.waiting) {
                done.push(req.complete(Err(StoreError::CANCELLED)));
            }
            while state.ring.in_kernel() > 0 {
                let want = state.ring.in_kernel();
                let reaped =
                    state
                        .ring
                        .reap(want, Some(Duration::from_secs(1)), &mut |req, res| {
                            self.finish(req, res, &mut done)
                        });
                if let Err(e) = reaped {
                    log::error!("aio: io_getevents failed during shutdown: {e}");
                    break;
                }
            }
        }
        self.queue.push_all(&mut done);
        self.helper.shutdown();
        self.watcher_stop.store(true, Ordering::Release);
        if let Some(efd) = &self.private_efd {
            efd.signal();
        }
        if let Some(w) = lock(&self.watcher).take() {
            let _ = w.join();
        }
    }
}

impl Drop for AioEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
