//! Asynchronous engines for an event-loop runtime: [`IoJob`]s of LUNs that have an
//! [`EngineFactory`](crate::registry::EngineFactory) (Ceph RBD) run on a
//! [`backstore::Engine`] instead of a blocking thread, so one loop keeps any number of
//! requests in flight.
//!
//! An [`EngineSet`] belongs to one event loop (a reactor) and is only used from its thread.
//! It creates one engine per LUN on the LUN's first request (each engine has its own
//! completion eventfd, registered with that loop only, so every completion comes back to
//! the loop that owns the connection) and keeps the jobs in flight. Call order:
//!
//! 1. [`EngineSet::submit`] for each job from [`Driver::poll_io`](crate::driver::Driver::poll_io):
//!    it starts the job's requests without blocking, or hands the job back to run it the
//!    blocking way ([`IoJob::run`] on a worker) when it is not for an engine. A new
//!    engine's eventfd is passed to the `register` callback (readable interest, under the
//!    [`EngineId`] given);
//! 2. when an engine's eventfd fires: [`EngineSet::reap`] with its [`EngineId`]; each job
//!    whose requests all completed comes out with its answer set and its buffer back, for
//!    [`Driver::io_done`](crate::driver::Driver::io_done);
//! 3. now and then (every loop iteration is fine: it costs a few loads):
//!    [`EngineSet::retire`] drops the engines of LUNs that were removed and have nothing in
//!    flight (which closes, for RBD, the image), [`RETIRE_INTERVAL`] after it first finds
//!    them so: librbd's threads finish their own work on a completion after our callback
//!    returns, and the image and cluster handles must outlive that. While
//!    [`EngineSet::is_empty`] is false the loop should not sleep much longer than
//!    [`RETIRE_INTERVAL`];
//! 4. at exit: [`EngineSet::shutdown`] (waits for the requests in the engines, drops the
//!    jobs).
//!
//! What goes to an engine (the rest is run by [`crate::exec::execute`]): READ, WRITE (FUA
//! passed on), SYNCHRONIZE CACHE, UNMAP (one request per range, all in flight at once),
//! WRITE SAME with UNMAP (deallocate; zeroes where the store cannot), WRITE SAME of zeroes
//! or NDOB (write zeroes, then a flush for FUA). Results map exactly as in
//! [`crate::exec`]: a short read is OUT OF RANGE, a short write a write error, store errors
//! through [`crate::exec::io_result`]; for UNMAP the failed range listed first decides.
//!
//! Buffers are not copied: the task's `Vec<u8>` goes into the request as an
//! [`IoBuf::from_vec`](backstore::IoBuf::from_vec) and comes back out of the completion
//! with [`IoBuf::into_vec`](backstore::IoBuf::into_vec). A job holds its
//! [`LunBackend`] until it completes, and the connection's
//! driver reports [`io_in_flight`](crate::driver::Driver::io_in_flight) until
//! [`io_done`](crate::driver::Driver::io_done), so neither the store nor the connection go
//! away under a request.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use backstore::{Completion, Engine, ErrorKind, IoBuf, Notify, Request};
use scsi_core::{IoOp, IoResult, UnmapRanges};

use crate::driver::IoJob;
use crate::exec::{IoAnswer, io_result, transfer_result};
use crate::registry::LunBackend;

/// How often a loop with engines should call [`EngineSet::retire`] at least, and how long
/// an engine whose LUN is gone is kept before it is dropped.
pub const RETIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Names one engine of an [`EngineSet`] (the key its eventfd is registered under).
pub type EngineId = usize;

/// One engine and the LUN it serves.
struct Entry {
    /// Weak: the set does not keep a removed LUN alive; jobs in flight do.
    backend: Weak<LunBackend>,
    /// `None` when building or registering it failed: that LUN's jobs run blocking.
    engine: Option<Box<dyn Engine>>,
    fd: Option<RawFd>,
    /// When [`EngineSet::retire`] first found the LUN gone.
    orphaned: Option<Instant>,
}

/// Where a job is in its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reading this many bytes into the task buffer.
    Read(usize),
    /// Writing this many bytes from the task buffer.
    Write(usize),
    /// Flushing (SYNCHRONIZE CACHE, or after zeroing with FUA).
    Flush,
    /// Unmapping the ranges of an UNMAP parameter list.
    Unmap,
    /// WRITE SAME with UNMAP: deallocating; zeroes instead if the store cannot.
    Deallocate { offset: u64, len: u64 },
    /// Writing zeroes; a flush follows if `fua`.
    Zero { fua: bool },
}

struct Pending<K> {
    key: K,
    job: IoJob,
    engine: EngineId,
    step: Step,
    /// Requests of this step not completed yet.
    left: usize,
    /// The failure of the request listed first (its index in the step, its result).
    failed: Option<(u32, IoResult)>,
    start: Instant,
}

/// The engines of one event loop and the jobs in flight on them; see the module docs.
pub struct EngineSet<K> {
    engines: Vec<Option<Entry>>,
    /// `Arc::as_ptr` of a LUN's backend → its engine. Sound as a key: the entry's `Weak`
    /// keeps the allocation, so the address cannot be reused while the entry exists.
    by_backend: HashMap<usize, EngineId>,
    pending: Vec<Option<Pending<K>>>,
    free: Vec<usize>,
    /// Reused between reaps.
    completions: Vec<Completion>,
    /// Reused for the requests of one submission.
    batch: Vec<Request>,
}

impl<K> Default for EngineSet<K> {
    fn default() -> Self {
        Self {
            engines: Vec::new(),
            by_backend: HashMap::new(),
            pending: Vec::new(),
            free: Vec::new(),
            completions: Vec::new(),
            batch: Vec::new(),
        }
    }
}

impl<K> std::fmt::Debug for EngineSet<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSet")
            .field("engines", &self.len())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

fn tag(slot: usize, index: u32) -> u64 {
    ((slot as u64) << 32) | u64::from(index)
}

/// The requests a job needs first, and its first step; `None`: not for an engine. May
/// take the task buffer into the (only) request.
fn plan(job: &mut IoJob, slot: usize, out: &mut Vec<Request>) -> Option<Step> {
    if job.copy_src.is_some() {
        return None;
    }
    let req = job.req;
    let (off, len) = (req.byte_offset(), req.byte_len());
    match req.op {
        IoOp::Read | IoOp::Write => {
            let n = usize::try_from(len).ok()?;
            // Anything unusual (write data further in the buffer, a buffer too short) gets
            // the executor's full handling.
            if job.buf.len() < n || (req.op == IoOp::Write && req.data_offset != 0) {
                return None;
            }
            let mut buf = IoBuf::from_vec(std::mem::take(&mut job.buf));
            // Cannot fail: n <= the vector's length, the buffer's capacity.
            let _ = buf.set_len(n);
            if req.op == IoOp::Read {
                out.push(Request::read(tag(slot, 0), buf, off));
                Some(Step::Read(n))
            } else {
                out.push(Request::write(tag(slot, 0), buf, off, req.fua));
                Some(Step::Write(n))
            }
        }
        IoOp::Flush => {
            out.push(Request::flush(tag(slot, 0)));
            Some(Step::Flush)
        }
        IoOp::Unmap { .. } => {
            let bs = u64::from(req.block_size);
            for (i, (lba, blocks)) in UnmapRanges::new(&job.buf).enumerate() {
                if blocks == 0 {
                    continue;
                }
                let index = u32::try_from(i).ok()?;
                let (o, l) = (lba.saturating_mul(bs), u64::from(blocks).saturating_mul(bs));
                out.push(Request::unmap(tag(slot, index), o, l));
            }
            // Nothing to unmap: the executor answers at once.
            (!out.is_empty()).then_some(Step::Unmap)
        }
        IoOp::WriteSame { unmap: true, .. } => {
            out.push(Request::unmap(tag(slot, 0), off, len));
            Some(Step::Deallocate { offset: off, len })
        }
        IoOp::WriteSame { zero, ndob, .. } if zero || ndob => {
            out.push(Request::write_zeroes(tag(slot, 0), off, len));
            Some(Step::Zero { fua: req.fua })
        }
        _ => None,
    }
}

impl<K> EngineSet<K> {
    /// An empty set (engines are made on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Engines alive (including LUNs whose engine could not be built).
    pub fn len(&self) -> usize {
        self.by_backend.len()
    }

    /// Whether no engine exists.
    pub fn is_empty(&self) -> bool {
        self.by_backend.is_empty()
    }

    /// Jobs in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|p| p.is_some()).count()
    }

    /// The engine of `job`'s LUN, made (and registered with `register`) on first use;
    /// `None` when the LUN has no engine or it could not be made.
    fn engine_for(
        &mut self,
        backend: &Arc<LunBackend>,
        register: &mut dyn FnMut(EngineId, RawFd) -> io::Result<()>,
    ) -> Option<EngineId> {
        let factory = backend.engine.as_ref()?;
        let key = Arc::as_ptr(backend) as usize;
        if let Some(&id) = self.by_backend.get(&key) {
            return self.engines[id].as_ref()?.engine.is_some().then_some(id);
        }
        let id = match self.engines.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.engines.push(None);
                self.engines.len() - 1
            }
        };
        let made = factory(Notify::EventFd).and_then(|e| {
            let fd = e.completion_fd().ok_or_else(|| {
                io::Error::new(io::ErrorKind::Unsupported, "engine has no eventfd")
            })?;
            register(id, fd)?;
            Ok((e, fd))
        });
        let (engine, fd) = match made {
            Ok((e, fd)) => (Some(e), Some(fd)),
            Err(e) => {
                log::warn!(
                    "LUN {} ({}): no asynchronous engine ({e}); its I/O runs on the blocking pool",
                    backend.info.number,
                    backend.info.bstype
                );
                (None, None)
            }
        };
        let ok = engine.is_some();
        self.engines[id] = Some(Entry {
            backend: Arc::downgrade(backend),
            engine,
            fd,
            orphaned: None,
        });
        self.by_backend.insert(key, id);
        ok.then_some(id)
    }

    /// Starts `job` on its LUN's engine, or returns it when it is not for an engine (the
    /// LUN has none, or the operation is a compound one): then run it as before. A new
    /// engine's eventfd is passed to `register` first; if that fails, the LUN's jobs run
    /// the blocking way from then on.
    pub fn submit(
        &mut self,
        key: K,
        mut job: IoJob,
        register: &mut dyn FnMut(EngineId, RawFd) -> io::Result<()>,
    ) -> Option<IoJob> {
        let Some(id) = self.engine_for(&job.backend, register) else {
            return Some(job);
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let mut batch = std::mem::take(&mut self.batch);
        let Some(step) = plan(&mut job, slot, &mut batch) else {
            self.free.push(slot);
            self.batch = batch;
            return Some(job);
        };
        self.pending[slot] = Some(Pending {
            key,
            job,
            engine: id,
            step,
            left: batch.len(),
            failed: None,
            start: Instant::now(),
        });
        if let Some(Some(Entry {
            engine: Some(e), ..
        })) = self.engines.get(id)
        {
            e.submit_batch(&mut batch);
        }
        self.batch = batch;
        None
    }

    /// Takes every completion of engine `id` and hands out each job that finished, with its
    /// answer set and its buffer back: pass it to
    /// [`Driver::io_done`](crate::driver::Driver::io_done) of the connection `key` names.
    pub fn reap(&mut self, id: EngineId, done: &mut dyn FnMut(K, IoJob)) {
        let mut completions = std::mem::take(&mut self.completions);
        // Draining resets the eventfd first: what completes meanwhile signals it again.
        if let Some(Some(Entry {
            engine: Some(e), ..
        })) = self.engines.get(id)
        {
            e.drain(&mut completions);
        }
        for c in completions.drain(..) {
            self.complete(c, done);
        }
        self.completions = completions;
    }

    /// One completion: records its result, starts the job's next step if there is one,
    /// hands the job out when it is over.
    fn complete(&mut self, c: Completion, done: &mut dyn FnMut(K, IoJob)) {
        let slot = (c.tag >> 32) as usize;
        let index = c.tag as u32;
        let Some(p) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
            log::error!("engine completion for no request (tag {:#x})", c.tag);
            return;
        };
        p.left = p.left.saturating_sub(1);
        let result = match p.step {
            Step::Read(n) | Step::Write(n) => {
                // The buffer goes back to the task whatever happened (empty only if the
                // store panicked on it).
                p.job.buf = c.buf.into_vec().unwrap_or_default();
                transfer_result(c.result, n, matches!(p.step, Step::Write(_)))
            }
            Step::Deallocate { offset, len } => match c.result {
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    p.step = Step::Zero { fua: false };
                    self.next(slot, Request::write_zeroes(tag(slot, 0), offset, len));
                    return;
                }
                r => r.map(drop).map_err(|e| io_result(e, true)),
            },
            Step::Zero { fua: true } if c.result.is_ok() => {
                p.step = Step::Flush;
                self.next(slot, Request::flush(tag(slot, 0)));
                return;
            }
            Step::Flush | Step::Unmap | Step::Zero { .. } => {
                c.result.map(drop).map_err(|e| io_result(e, true))
            }
        };
        if let Err(r) = result {
            if p.failed.is_none_or(|(i, _)| index < i) {
                p.failed = Some((index, r));
            }
        }
        if p.left > 0 {
            return;
        }
        let Some(mut p) = self.pending[slot].take() else {
            return;
        };
        self.free.push(slot);
        let r = p.failed.map_or(IoResult::Ok, |(_, r)| r);
        p.job.finish(IoAnswer::Complete(r), p.start);
        done(p.key, p.job);
    }

    /// Submits the next (single) request of the job in `slot`.
    fn next(&mut self, slot: usize, req: Request) {
        let Some(p) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        p.left = 1;
        if let Some(Some(Entry {
            engine: Some(e), ..
        })) = self.engines.get(p.engine)
        {
            e.submit(req);
        }
    }

    /// Drops the engines of LUNs that are gone (removed, and no job holds them) since
    /// [`RETIRE_INTERVAL`] before `now`, after passing each one's eventfd to `deregister`.
    pub fn retire(&mut self, now: Instant, deregister: &mut dyn FnMut(EngineId, RawFd)) {
        for (id, slot) in self.engines.iter_mut().enumerate() {
            let Some(entry) = slot else { continue };
            if entry.backend.strong_count() > 0 {
                continue;
            }
            let since = *entry.orphaned.get_or_insert(now);
            if now.saturating_duration_since(since) < RETIRE_INTERVAL {
                continue;
            }
            if let Some(fd) = entry.fd {
                deregister(id, fd);
            }
            if let Some(e) = &entry.engine {
                e.shutdown();
            }
            let key = entry.backend.as_ptr() as usize;
            self.by_backend.remove(&key);
            *slot = None;
        }
    }

    /// Stops every engine (each waits for the requests it has running), passing each
    /// eventfd to `deregister`, and drops the jobs in flight without answers (the loop is
    /// exiting and its connections are gone).
    pub fn shutdown(&mut self, deregister: &mut dyn FnMut(EngineId, RawFd)) {
        for (id, slot) in self.engines.iter_mut().enumerate() {
            let Some(entry) = slot.take() else { continue };
            if let Some(fd) = entry.fd {
                deregister(id, fd);
            }
            if let Some(e) = entry.engine {
                e.shutdown();
                e.drain(&mut self.completions);
                self.completions.clear();
            }
        }
        self.by_backend.clear();
        self.pending.clear();
        self.free.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use backstore::testing::{Gate, GatedEngine, InstrumentedStore};
    use backstore::{BackingStore, MemoryStore, Op, StoreError};
    use scsi_core::{IoRequest, SanitizeKind, VerifyMode};

    use super::*;
    use crate::exec::execute;
    use crate::exec::tests::req;
    use crate::registry::{EngineFactory, Registry, TargetNode};

    type Store = InstrumentedStore<MemoryStore>;

    /// A LUN whose engine is a [`GatedEngine`] the test keeps a handle on.
    struct Lun {
        backend: Arc<LunBackend>,
        store: Arc<Store>,
        engines: Arc<Mutex<Vec<GatedEngine>>>,
        made: Arc<Mutex<usize>>,
    }

    impl Lun {
        fn new(with_engine: bool) -> Lun {
            let store = Arc::new(InstrumentedStore::new(
                MemoryStore::new(1 << 20, 512).unwrap(),
            ));
            let engines: Arc<Mutex<Vec<GatedEngine>>> = Arc::default();
            let made: Arc<Mutex<usize>> = Arc::default();
            let (s, e, m) = (store.clone(), engines.clone(), made.clone());
            let factory: EngineFactory = Arc::new(move |notify| {
                *m.lock().unwrap() += 1;
                let g = GatedEngine::new(s.clone(), notify, Arc::new(Gate::default()))?;
                e.lock().unwrap().push(g.clone());
                Ok(Box::new(g))
            });
            let backend = Arc::new(LunBackend {
                engine: with_engine.then_some(factory),
                ..LunBackend::for_test("test", store.clone(), true)
            });
            Lun {
                backend,
                store,
                engines,
                made,
            }
        }

        fn engine(&self) -> GatedEngine {
            self.engines.lock().unwrap()[0].clone()
        }
    }

    fn target() -> Arc<TargetNode> {
        let reg = Registry::new();
        reg.add_target(reg.new_target(1, "iqn.2026-11.org.tgt-rs:engines"))
            .unwrap()
    }

    /// Registrations seen by the `register` callback.
    #[derive(Default)]
    struct Fds(Vec<(EngineId, RawFd)>);

    impl Fds {
        fn register(&mut self) -> impl FnMut(EngineId, RawFd) -> io::Result<()> + '_ {
            |id, fd| {
                self.0.push((id, fd));
                Ok(())
            }
        }
    }

    fn reap_all(set: &mut EngineSet<u32>, id: EngineId) -> Vec<(u32, IoJob)> {
        let mut out = Vec::new();
        set.reap(id, &mut |k, j| out.push((k, j)));
        out
    }

    #[test]
    fn many_requests_in_flight_complete_out_of_order_with_their_own_buffers() {
        let lun = Lun::new(true);
        let t = target();
        let data: Vec<u8> = (0..64 * 512).map(|i| (i % 251) as u8).collect();
        lun.store.write_at(&data, 0, false).unwrap();
        let mut set = EngineSet::new();
        let mut fds = Fds::default();
        let mut ptrs = Vec::new();
        // 48 single-block reads and 16 writes, all in flight at once.
        for i in 0..64u32 {
            let (op, buf) = if i < 48 {
                (IoOp::Read, vec![0u8; 512])
            } else {
                (IoOp::Write, vec![i as u8; 512])
            };
            let lba = if i < 48 {
                u64::from(i)
            } else {
                1000 + u64::from(i)
            };
            ptrs.push(buf.as_ptr());
            let job = IoJob::for_test(req(op, lba, 1), lun.backend.clone(), t.clone(), buf);
            assert!(set.submit(i, job, &mut fds.register()).is_none(), "{i}");
        }
        assert_eq!(fds.0.len(), 1, "one engine for the LUN, registered once");
        assert_eq!(*lun.made.lock().unwrap(), 1);
        let engine = lun.engine();
        assert_eq!(set.in_flight(), 64);
        assert_eq!(engine.held(), 64);
        assert_eq!(lun.store.counts().reads, 0, "nothing ran yet");
        assert!(reap_all(&mut set, fds.0[0].0).is_empty());

        assert_eq!(engine.release(), 64);
        let done = reap_all(&mut set, fds.0[0].0);
        let keys: Vec<u32> = done.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, (0..64).rev().collect::<Vec<_>>(), "completion order");
        for (k, job) in &done {
            let i = *k as usize;
            assert_eq!(job.answer(), Some(IoAnswer::Complete(IoResult::Ok)), "{k}");
            assert_eq!(job.buf.as_ptr(), ptrs[i], "job {k} got its own vector back");
            assert_eq!(job.buf.len(), 512);
            if i < 48 {
                assert_eq!(job.buf, data[i * 512..(i + 1) * 512], "read {k}");
            }
        }
        for i in 48..64u64 {
            let mut b = vec![0u8; 512];
            lun.store.read_at(&mut b, (1000 + i) * 512).unwrap();
            assert_eq!(b, vec![i as u8; 512]);
        }
        assert_eq!(set.in_flight(), 0);
        let st = &lun.backend.stats;
        let ops = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((ops(&st.read_ops), ops(&st.write_ops)), (48, 16));
    }

    /// Runs `job` through the engine and returns its answer.
    fn through_engine(lun: &Lun, set: &mut EngineSet<u32>, job: IoJob) -> (IoAnswer, IoJob) {
        let mut fds = Fds::default();
        assert!(set.submit(7, job, &mut fds.register()).is_none());
        let id = set.by_backend[&(Arc::as_ptr(&lun.backend) as usize)];
        let engine = lun.engine();
        loop {
            assert!(engine.release() > 0, "a request is held");
            let mut done = reap_all(set, id);
            if let Some((7, job)) = done.pop() {
                return (job.answer().unwrap(), job);
            }
        }
    }

    #[test]
    fn results_map_exactly_as_the_executor_maps_them() {
        let t = target();
        let eio = StoreError::IO.errno();
        let enospc = StoreError::NO_SPACE.errno();
        // What, the request, the fault injected (operation, errno), the result wanted.
        type Case = (&'static str, IoRequest, Option<(Op, i32)>, IoResult);
        let cases: Vec<Case> = vec![
            (
                "read EIO",
                req(IoOp::Read, 8, 2),
                Some((Op::Read, eio)),
                IoResult::ReadError,
            ),
            (
                "write EIO",
                req(IoOp::Write, 8, 2),
                Some((Op::Write, eio)),
                IoResult::WriteError,
            ),
            (
                "write ENOSPC",
                req(IoOp::Write, 8, 2),
                Some((Op::Write, enospc)),
                IoResult::NoSpace,
            ),
            (
                "flush EIO",
                req(IoOp::Flush, 0, 0),
                Some((Op::Flush, eio)),
                IoResult::WriteError,
            ),
            (
                "read past the end",
                req(IoOp::Read, 2047, 2),
                None,
                IoResult::OutOfRange,
            ),
            (
                "write past the end",
                req(IoOp::Write, 2048, 1),
                None,
                IoResult::OutOfRange,
            ),
            ("read", req(IoOp::Read, 8, 2), None, IoResult::Ok),
            ("flush", req(IoOp::Flush, 0, 0), None, IoResult::Ok),
        ];
        for (what, r, fault, want) in cases {
            let lun = Lun::new(true);
            if let Some((op, errno)) = fault {
                lun.store.fail(op, None, errno);
            }
            let mut set = EngineSet::new();
            let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), vec![0; 1024]);
            let (a, _) = through_engine(&lun, &mut set, job);
            assert_eq!(a, IoAnswer::Complete(want), "{what}");
            // The executor says the same.
            let mut buf = vec![0; 1024];
            assert_eq!(
                execute(&*lun.store, &r, &mut buf, &mut Vec::new()),
                a,
                "{what}"
            );
        }
    }

    /// An UNMAP parameter list of `ranges` (LBA, blocks).
    fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 8];
        d[0..2].copy_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
        d[2..4].copy_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
        for (lba, blocks) in ranges {
            d.extend_from_slice(&lba.to_be_bytes());
            d.extend_from_slice(&blocks.to_be_bytes());
            d.extend_from_slice(&[0; 4]);
        }
        d
    }

    #[test]
    fn unmap_ranges_are_in_flight_together_and_the_first_listed_failure_decides() {
        let t = target();
        let lun = Lun::new(true);
        lun.store.write_at(&[7; 512 * 400], 0, false).unwrap();
        let list = unmap_list(&[(0, 8), (100, 0), (200, 8), (300, 8)]);
        let op = IoOp::Unmap { descriptors: 4 };
        let mut r = req(op, 0, 0);
        r.transfer_len = list.len() as u32;
        let mut set = EngineSet::new();
        let mut fds = Fds::default();
        let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), list.clone());
        assert!(set.submit(1, job, &mut fds.register()).is_none());
        assert_eq!(lun.engine().held(), 3, "one request per non-empty range");
        lun.engine().release();
        let done = reap_all(&mut set, fds.0[0].0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.answer(), Some(IoAnswer::Complete(IoResult::Ok)));
        assert_eq!(
            done[0].1.buf, list,
            "the parameter list stays with the task"
        );
        assert_eq!(lun.store.counts().unmaps, 3);
        let mut b = vec![1u8; 512];
        lun.store.read_at(&mut b, 200 * 512).unwrap();
        assert_eq!(b, vec![0; 512]);

        // Two ranges fail: the one listed first (ENOSPC at LBA 200) decides, whichever
        // completes first.
        lun.store
            .fail(Op::Unmap, Some(300 * 512), StoreError::IO.errno());
        lun.store
            .fail(Op::Unmap, Some(200 * 512), StoreError::NO_SPACE.errno());
        let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), list.clone());
        let (a, _) = through_engine(&lun, &mut set, job);
        assert_eq!(a, IoAnswer::Complete(IoResult::NoSpace));
        let mut buf = list.clone();
        assert_eq!(execute(&*lun.store, &r, &mut buf, &mut Vec::new()), a);
    }

    #[test]
    fn write_same_deallocates_or_zeroes_and_flushes_for_fua() {
        let t = target();
        let ws = |unmap, ndob, zero| IoOp::WriteSame { unmap, ndob, zero };
        // UNMAP on a store that cannot deallocate: zeroes instead, no flush.
        let lun = Lun::new(true);
        lun.store.write_at(&[7; 4096], 0, false).unwrap();
        lun.store
            .fail(Op::Unmap, None, StoreError::UNSUPPORTED.errno());
        let mut set = EngineSet::new();
        let job = IoJob::for_test(
            req(ws(true, false, true), 0, 8),
            lun.backend.clone(),
            t.clone(),
            vec![0; 512],
        );
        let (a, _) = through_engine(&lun, &mut set, job);
        assert_eq!(a, IoAnswer::Complete(IoResult::Ok));
        let c = lun.store.counts();
        assert_eq!((c.unmaps, c.zeroes, c.flushes), (1, 1, 0));
        let mut b = vec![1u8; 4096];
        lun.store.read_at(&mut b, 0).unwrap();
        assert_eq!(b, vec![0; 4096]);
        // Zeroes with FUA: write zeroes, then flush.
        let mut r = req(ws(false, true, false), 16, 8);
        r.fua = true;
        let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), Vec::new());
        let (a, _) = through_engine(&lun, &mut set, job);
        assert_eq!(a, IoAnswer::Complete(IoResult::Ok));
        let c = lun.store.counts();
        assert_eq!((c.unmaps, c.zeroes, c.flushes), (1, 2, 1));
        // A failing zeroing does not flush.
        lun.store
            .fail(Op::WriteZeroes, None, StoreError::IO.errno());
        let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), Vec::new());
        let (a, _) = through_engine(&lun, &mut set, job);
        assert_eq!(a, IoAnswer::Complete(IoResult::WriteError));
        assert_eq!(lun.store.counts().flushes, 1);
    }

    #[test]
    fn compound_and_unusual_jobs_are_handed_back() {
        let t = target();
        let lun = Lun::new(true);
        let mut set = EngineSet::new();
        let mut fds = Fds::default();
        let mut offset_write = req(IoOp::Write, 0, 1);
        offset_write.data_offset = 512;
        let back = [
            req(
                IoOp::Verify {
                    mode: VerifyMode::Compare,
                },
                0,
                1,
            ),
            req(IoOp::CompareAndWrite, 0, 1),
            req(IoOp::OrWrite, 0, 1),
            req(
                IoOp::WriteSame {
                    unmap: false,
                    ndob: false,
                    zero: false,
                },
                0,
                4,
            ),
            req(IoOp::LbaStatus, 0, 1),
            req(
                IoOp::Sanitize {
                    kind: SanitizeKind::Erase,
                },
                0,
                1,
            ),
            req(IoOp::Prefetch, 0, 1),
            // Write data further in the buffer, a buffer shorter than the read, nothing to
            // unmap: the executor's full handling.
            offset_write,
            req(IoOp::Read, 0, 4),
            req(IoOp::Unmap { descriptors: 1 }, 0, 0),
        ];
        for r in back {
            let buf = unmap_list(&[(5, 0)]);
            let job = IoJob::for_test(r, lun.backend.clone(), t.clone(), buf.clone());
            let job = set
                .submit(1, job, &mut fds.register())
                .expect("handed back");
            assert_eq!(job.buf, buf, "{:?}: buffer untouched", r.op);
            assert!(job.answer().is_none());
        }
        assert_eq!(set.in_flight(), 0);
        assert_eq!(lun.engine().held(), 0);
        // A LUN without an engine: everything comes back, nothing is registered.
        let plain = Lun::new(false);
        let job = IoJob::for_test(
            req(IoOp::Read, 0, 1),
            plain.backend.clone(),
            t,
            vec![0; 512],
        );
        assert!(set.submit(1, job, &mut fds.register()).is_some());
        assert_eq!(fds.0.len(), 1, "only the first LUN's engine");
        assert_eq!(*plain.made.lock().unwrap(), 0);
    }

    #[test]
    fn an_engine_that_cannot_be_registered_leaves_the_lun_on_the_blocking_path() {
        let t = target();
        let lun = Lun::new(true);
        let mut set = EngineSet::new();
        let mut calls = 0;
        for _ in 0..3 {
            let job = IoJob::for_test(
                req(IoOp::Read, 0, 1),
                lun.backend.clone(),
                t.clone(),
                vec![0; 512],
            );
            let back = set.submit(1, job, &mut |_, _| {
                calls += 1;
                Err(io::Error::other("epoll full"))
            });
            assert!(back.is_some());
        }
        assert_eq!((calls, *lun.made.lock().unwrap()), (1, 1), "tried once");
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn engines_are_per_lun_and_retired_once_the_lun_is_gone() {
        let t = target();
        let (a, b) = (Lun::new(true), Lun::new(true));
        let mut set = EngineSet::new();
        let mut fds = Fds::default();
        for lun in [&a, &b, &a] {
            let job = IoJob::for_test(
                req(IoOp::Flush, 0, 0),
                lun.backend.clone(),
                t.clone(),
                Vec::new(),
            );
            assert!(set.submit(1, job, &mut fds.register()).is_none());
        }
        assert_eq!(fds.0.len(), 2);
        assert_ne!(fds.0[0].1, fds.0[1].1, "each its own eventfd");
        assert_eq!(set.len(), 2);
        let Lun {
            backend, engines, ..
        } = a;
        drop(backend);
        // A's jobs still hold its backend: not retired yet.
        let mut gone = Vec::new();
        let t0 = Instant::now();
        set.retire(t0, &mut |id, fd| gone.push((id, fd)));
        assert!(gone.is_empty());
        engines.lock().unwrap()[0].release();
        assert_eq!(reap_all(&mut set, fds.0[0].0).len(), 2);
        // Gone now: kept for RETIRE_INTERVAL, then dropped.
        set.retire(t0, &mut |id, fd| gone.push((id, fd)));
        set.retire(t0 + RETIRE_INTERVAL / 2, &mut |id, fd| gone.push((id, fd)));
        assert!(gone.is_empty());
        assert!(!engines.lock().unwrap()[0].is_stopped());
        set.retire(t0 + RETIRE_INTERVAL, &mut |id, fd| gone.push((id, fd)));
        assert_eq!(gone, [fds.0[0]], "A retired, B kept");
        assert!(engines.lock().unwrap()[0].is_stopped());
        assert_eq!(set.len(), 1);
        // Shutdown: B's request in flight is run by the engine's shutdown, its job dropped.
        set.shutdown(&mut |id, fd| gone.push((id, fd)));
        assert_eq!(gone, [fds.0[0], fds.0[1]]);
        assert_eq!(b.engine().held(), 0);
        assert_eq!(b.store.counts().flushes, 1);
        assert_eq!((set.len(), set.in_flight()), (0, 0));
    }
}
