//! [`RbdEngine`]: librbd's asynchronous calls driven from an event loop.
//!
//! `submit` starts the `rbd_aio_*` call and returns at once; librbd's completion callback
//! (on a librbd thread) turns the result into a [`Completion`], queues it and signals the
//! engine's eventfd or calls its [`Notify::Callback`] — the completion is delivered to the
//! reactor that owns the engine, which reaps it with [`Engine::poll_completions`].
//!
//! GET LBA STATUS (`rbd_diff_iterate2`) has no asynchronous form; it runs on one helper
//! thread whose completions land in the same queue. Shutdown cancels requests not started,
//! waits for every librbd operation in flight (their buffers stay owned by the engine until
//! then) and joins the helper; every request still yields exactly one completion.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::image::{self, Call, Outcome, Sink};
use super::store::{Kind, RbdStore, interpret};
use crate::engine::{Completion, CompletionQueue, Engine, Notify, Op, Reaper, Request};
use crate::error::StoreError;
use crate::rdwr::Pool;
use crate::store::{BackingStore, check_range};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct InFlight {
    /// Operations started in librbd whose callback has not finished.
    count: usize,
    /// No new operation may start.
    stopped: bool,
}

/// What the completion callbacks need: the queue and the in-flight accounting.
struct Shared {
    queue: Arc<CompletionQueue>,
    in_flight: Mutex<InFlight>,
    idle: Condvar,
}

impl Shared {
    /// Count one more operation unless stopped.
    fn begin(&self) -> bool {
        let mut st = lock(&self.in_flight);
        if st.stopped {
            return false;
        }
        st.count += 1;
        true
    }

    fn end(&self) {
        let mut st = lock(&self.in_flight);
        st.count = st.count.saturating_sub(1);
        if st.count == 0 {
            self.idle.notify_all();
        }
    }
}

/// An engine request in librbd: completing it queues its [`Completion`].
pub(crate) struct EngineOp {
    shared: Arc<Shared>,
    req: Request,
    kind: Kind,
}

impl EngineOp {
    /// Called once, from librbd's callback (or at once if librbd refused the call).
    pub(crate) fn complete(self, out: Outcome) {
        let result = interpret(out.ret, self.req.len, self.kind);
        let shared = self.shared;
        shared.queue.push(self.req.complete(result));
        // After the push: a shutdown that sees zero in flight finds every completion queued.
        shared.end();
    }
}

/// The asynchronous librbd engine for one [`RbdStore`]; build one per reactor.
pub struct RbdEngine {
    rbd: Arc<RbdStore>,
    store: Arc<dyn BackingStore>,
    shared: Arc<Shared>,
    helper: Pool,
    reaper: Reaper,
}

impl RbdEngine {
    /// An engine over `store`, signalling completions as `notify` says.
    pub fn new(store: Arc<RbdStore>, notify: Notify) -> io::Result<Self> {
        let queue = Arc::new(CompletionQueue::new(notify)?);
        let dyn_store: Arc<dyn BackingStore> = store.clone();
        let helper = Pool::new(dyn_store.clone(), 1, queue.clone(), "bs-rbd-helper")?;
        Ok(Self {
            rbd: store,
            store: dyn_store,
            shared: Arc::new(Shared {
                queue,
                in_flight: Mutex::new(InFlight::default()),
                idle: Condvar::new(),
            }),
            helper,
            reaper: Reaper::default(),
        })
    }

    /// The RBD store (for the calls the engine does not queue: compare-and-write,
    /// write-same, `refresh_size`).
    pub fn rbd(&self) -> &Arc<RbdStore> {
        &self.rbd
    }

    /// Operations currently inside librbd.
    pub fn in_librbd(&self) -> usize {
        lock(&self.shared.in_flight).count
    }

    /// Check a request; `Err` is its immediate completion result.
    fn prepare(&self, req: &mut Request) -> Result<Option<(Call, Kind)>, StoreError> {
        req.check_len()?;
        let rbd = &*self.rbd;
        let writes = matches!(req.op, Op::Write | Op::Unmap | Op::WriteZeroes);
        if writes && rbd.is_read_only() {
            return Err(StoreError::READ_ONLY);
        }
        if matches!(req.op, Op::Read | Op::Write | Op::Unmap | Op::WriteZeroes) {
            check_range(req.offset, req.len, rbd.size())?;
            if req.len == 0 {
                // Never hand librbd an empty request (a zero-length read aborts it).
                return Ok(None);
            }
        }
        let len = usize::try_from(req.len).map_err(|_| StoreError::INVALID)?;
        Ok(Some(match req.op {
            Op::Read => (
                Call::Read {
                    buf: req.buf.as_mut_ptr(),
                    len,
                },
                Kind::Read,
            ),
            Op::Write => (
                Call::Write {
                    buf: req.buf.as_ptr(),
                    len,
                    fua: req.fua,
                },
                Kind::Write,
            ),
            Op::Flush => (Call::Flush, Kind::Other),
            Op::Unmap => (Call::Discard { len: req.len }, Kind::Other),
            Op::WriteZeroes => (Call::WriteZeroes { len }, Kind::Other),
            // Routed to the helper before `prepare`.
            Op::LbaStatus => return Err(StoreError::INVALID),
        }))
    }

    fn submit_one(&self, mut req: Request) {
        if req.op == Op::LbaStatus {
            self.helper.submit(req);
            return;
        }
        let (call, kind) = match self.prepare(&mut req) {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.shared.queue.push(req.complete(Ok(0)));
                return;
            }
            Err(e) => {
                self.shared.queue.push(req.complete(Err(e)));
                return;
            }
        };
        if !self.shared.begin() {
            self.shared
                .queue
                .push(req.complete(Err(StoreError::CANCELLED)));
            return;
        }
        let op = EngineOp {
            shared: self.shared.clone(),
            req,
            kind,
        };
        // SAFETY: the buffer `call` points into is the request's `IoBuf`, whose heap memory
        // does not move with the `Request` and is owned by `op` (untouched) until the
        // completion hands it back. The image stays open until the operation completed:
        // it is counted in `in_flight`, and `shutdown` (run before this engine, and so its
        // `Arc<RbdStore>`, is dropped) waits for that count to reach zero.
        unsafe { image::start(self.rbd.raw_image(), call, op.req.offset, Sink::Engine(op)) };
    }
}

impl fmt::Debug for RbdEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RbdEngine")
            .field("store", &self.rbd)
            .field("in_librbd", &self.in_librbd())
            .field("queue", &self.shared.queue)
            .finish()
    }
}

impl Engine for RbdEngine {
    fn name(&self) -> &'static str {
        "rbd"
    }

    fn store(&self) -> &Arc<dyn BackingStore> {
        &self.store
    }

    fn submit(&self, req: Request) {
        self.reaper.submitted(1);
        self.submit_one(req);
    }

    fn submit_batch(&self, reqs: &mut Vec<Request>) {
        self.reaper.submitted(reqs.len());
        for req in reqs.drain(..) {
            self.submit_one(req);
        }
    }

    fn poll_completions(&self, f: &mut dyn FnMut(Completion)) -> usize {
        let mut batch = self.reaper.take_batch();
        self.shared.queue.drain(&mut batch);
        self.reaper.hand_out(batch, f)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.shared.queue.fd()
    }

    fn wait_completions(&self, timeout: Option<Duration>) -> bool {
        self.shared.queue.wait(timeout)
    }

    fn in_flight(&self) -> usize {
        self.reaper.in_flight()
    }

    fn shutdown(&self) {
        {
            let mut st = lock(&self.shared.in_flight);
            st.stopped = true;
            while st.count > 0 {
                st = self.shared.idle.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.helper.shutdown();
    }
}

impl Drop for RbdEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
