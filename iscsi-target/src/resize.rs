//! Capacity changes made behind the target's back: a store whose size can change outside
//! the target (a Ceph RBD image grown or shrunk with `rbd resize`) reports it through
//! [`BackingStore::refresh_size`](backstore::BackingStore::refresh_size); this module asks
//! every LUN's store for it and tells scsi-core, which then answers READ CAPACITY with the
//! new size and raises CAPACITY DATA HAS CHANGED on every I_T nexus
//! ([`LogicalUnit::set_num_blocks`](scsi_core::LogicalUnit::set_num_blocks)).
//!
//! - [`SizeChecker::check`] does one pass over the registry (for tests and embedders that
//!   have a loop of their own);
//! - [`ResizeWatcher`] runs it on one background thread every [`DEFAULT_INTERVAL`] (the
//!   daemon starts one), and stops and joins the thread when dropped.
//!
//! Stores whose size cannot change keep the trait's default `refresh_size` (an immediate
//! `None`), so a pass costs them one virtual call; only RBD LUNs make a librbd call
//! (`rbd_get_size`, which does not touch the network unless librbd saw the header change).
//!
//! After a shrink, commands beyond the new end fail with LBA OUT OF RANGE: scsi-core checks
//! new commands against the new capacity, and the store refuses I/O beyond its new size
//! (commands already past the check when the size changed get the same error from it).

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::registry::{Registry, TargetNode};

/// How often [`ResizeWatcher`] looks by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One capacity change that [`SizeChecker::check`] handed to scsi-core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityChange {
    /// Target id.
    pub tid: u32,
    /// LUN number.
    pub lun: u16,
    /// The new capacity in logical blocks.
    pub blocks: u64,
}

/// Asks every LUN's store whether its size changed and updates scsi-core. Remembers which
/// stores fail to answer, so that a store that keeps failing is logged once, not on every
/// pass.
#[derive(Debug, Default)]
pub struct SizeChecker {
    failing: HashSet<(u32, u16)>,
}

impl SizeChecker {
    /// A checker with no failures seen yet.
    pub fn new() -> SizeChecker {
        SizeChecker::default()
    }

    /// One pass over every target and LUN of `registry`; returns the capacity changes made.
    pub fn check(&mut self, registry: &Registry) -> Vec<CapacityChange> {
        let mut changes = Vec::new();
        for target in registry.targets() {
            self.check_target(&target, &mut changes);
        }
        changes
    }

    fn check_target(&mut self, target: &TargetNode, changes: &mut Vec<CapacityChange>) {
        for backend in target.backends() {
            let lun = backend.info.number;
            let key = (target.tid, lun);
            let bytes = match backend.store.refresh_size() {
                Ok(None) => {
                    self.recovered(key, target);
                    continue;
                }
                Ok(Some(bytes)) => {
                    self.recovered(key, target);
                    bytes
                }
                Err(e) => {
                    if self.failing.insert(key) {
                        log::warn!(
                            "target {} lun {lun}: cannot check the store's size: {e}",
                            target.tid
                        );
                    }
                    continue;
                }
            };
            // The LUN may have been removed (or replaced) since `backends`; only the LU of
            // this very store is updated. (`backend` takes the LUN list's lock, which is
            // never taken while holding the SCSI lock.)
            if !target
                .backend(scsi_core::Lun::from_number(lun))
                .is_some_and(|b| Arc::ptr_eq(&b, &backend))
            {
                continue;
            }
            let mut g = target.scsi();
            let Some(lu) = g.target().lu_mut(lun) else {
                continue;
            };
            let block = u64::from(lu.config().block_bytes().max(1));
            let blocks = bytes / block;
            let before = lu.config().num_blocks;
            if blocks == before {
                continue;
            }
            lu.set_num_blocks(blocks);
            drop(g);
            log::info!(
                "target {} lun {lun}: capacity changed from {} to {} blocks of {block} bytes \
                 ({bytes} bytes); initiators are told CAPACITY DATA HAS CHANGED",
                target.tid,
                before,
                blocks
            );
            changes.push(CapacityChange {
                tid: target.tid,
                lun,
                blocks,
            });
        }
    }

    fn recovered(&mut self, key: (u32, u16), target: &TargetNode) {
        if self.failing.remove(&key) {
            log::info!(
                "target {} lun {}: the store answers size checks again",
                target.tid,
                key.1
            );
        }
    }
}

/// The state the watcher thread sleeps on: `true` once it must stop.
type StopFlag = Arc<(Mutex<bool>, Condvar)>;

/// A background thread that runs [`SizeChecker::check`] on a registry at a fixed interval.
/// Dropping it (or [`ResizeWatcher::stop`]) wakes the thread and joins it.
#[derive(Debug)]
pub struct ResizeWatcher {
    stop: StopFlag,
    thread: Option<JoinHandle<()>>,
}

impl ResizeWatcher {
    /// Starts the thread (`tgt-resize`), which checks `registry` every `interval`
    /// (LUNs added later are checked from the next pass on).
    pub fn start(registry: Arc<Registry>, interval: Duration) -> io::Result<ResizeWatcher> {
        let stop: StopFlag = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tgt-resize".into())
            .spawn(move || {
                let mut checker = SizeChecker::new();
                let (m, cv) = &*flag;
                let mut stopped = lock(m);
                loop {
                    let (g, _) = cv
                        .wait_timeout_while(stopped, interval, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = g;
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    checker.check(&registry);
                    stopped = lock(m);
                }
            })?;
        Ok(ResizeWatcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (a pass in progress finishes first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let (m, cv) = &*self.stop;
        *lock(m) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ResizeWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetBuilder;
    use backstore::{BackingStore, MemoryStore, StoreError};
    use scsi_core::{Asc, Lun, NexusId};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    /// A RAM disk whose reported size the test changes, as `rbd resize` would.
    struct Resizable {
        inner: MemoryStore,
        size: AtomicU64,
        /// What the next `refresh_size` finds; `u64::MAX` means "fail".
        next: AtomicU64,
    }

    impl Resizable {
        fn new(size: u64) -> Arc<Resizable> {
            Arc::new(Resizable {
                inner: MemoryStore::new(16 << 20, 512).unwrap(),
                size: AtomicU64::new(size),
                next: AtomicU64::new(size),
            })
        }
        fn resize(&self, size: u64) {
            self.next.store(size, Ordering::SeqCst);
        }
    }

    impl BackingStore for Resizable {
        fn size(&self) -> u64 {
            self.size.load(Ordering::SeqCst)
        }
        fn block_size(&self) -> u32 {
            512
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_thin(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
            backstore::check_range(offset, buf.len() as u64, self.size())?;
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
            backstore::check_range(offset, buf.len() as u64, self.size())?;
            self.inner.write_at(buf, offset, fua)
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
            let next = self.next.load(Ordering::SeqCst);
            if next == u64::MAX {
                return Err(StoreError::IO);
            }
            let old = self.size.swap(next, Ordering::SeqCst);
            Ok((old != next).then_some(next))
        }
    }

    const N: NexusId = NexusId(5);

    /// A registry with target 1: LUN 0 on `store`, LUN 1 on a plain RAM disk; nexus `N`
    /// attached (its POWER ON unit attention stays queued; others queue behind it).
    fn setup(store: Arc<Resizable>) -> Arc<Registry> {
        let reg = TargetBuilder::new("iqn.2026-11.org.example:resize")
            .tid(1)
            .lun(0, store)
            .lun(1, Arc::new(MemoryStore::new(1 << 20, 512).unwrap()))
            .build()
            .unwrap();
        reg.target(1).unwrap().attach_nexus(N, None).unwrap();
        reg
    }

    fn pending(reg: &Registry, lun: u16) -> Vec<Asc> {
        let t = reg.target(1).unwrap();
        let mut g = t.scsi();
        g.target()
            .lu(lun)
            .unwrap()
            .pending_unit_attentions(N)
            .to_vec()
    }

    fn blocks(reg: &Registry, lun: u16) -> u64 {
        let t = reg.target(1).unwrap();
        let mut g = t.scsi();
        g.target().lu(lun).unwrap().config().num_blocks
    }

    #[test]
    fn growth_and_shrink_reach_scsi_core_once() {
        let store = Resizable::new(4 << 20);
        let reg = setup(store.clone());
        let mut checker = SizeChecker::new();
        assert_eq!(blocks(&reg, 0), 8192);
        assert_eq!(pending(&reg, 0), [Asc::POWER_ON_RESET]);
        assert!(checker.check(&reg).is_empty());
        assert_eq!(pending(&reg, 0), [Asc::POWER_ON_RESET]);
        // Grown: one change, CAPACITY DATA HAS CHANGED queued.
        store.resize(6 << 20);
        assert_eq!(
            checker.check(&reg),
            [CapacityChange {
                tid: 1,
                lun: 0,
                blocks: 12288
            }]
        );
        assert_eq!(blocks(&reg, 0), 12288);
        assert_eq!(
            pending(&reg, 0),
            [Asc::POWER_ON_RESET, Asc::CAPACITY_DATA_HAS_CHANGED]
        );
        // The other LUN saw nothing.
        assert_eq!(pending(&reg, 1), [Asc::POWER_ON_RESET]);
        assert_eq!(blocks(&reg, 1), 2048);
        // Reported once.
        assert!(checker.check(&reg).is_empty());
        // Shrunk, to a size that is not a whole number of blocks: rounded down.
        store.resize((2 << 20) + 100);
        let c = checker.check(&reg);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].blocks, 4096);
        assert_eq!(blocks(&reg, 0), 4096);
    }

    #[test]
    fn io_beyond_a_shrunk_end_is_out_of_range() {
        use crate::exec::{IoAnswer, execute};
        use scsi_core::{IoOp, IoRequest, IoResult, TaskId, TaskTag};
        let store = Resizable::new(4 << 20);
        let reg = setup(store.clone());
        store.resize(1 << 20);
        assert_eq!(SizeChecker::new().check(&reg).len(), 1);
        // A request scsi-core had already let through for the old size.
        let req = IoRequest {
            task: TaskId {
                nexus: N,
                tag: TaskTag(9),
            },
            op: IoOp::Write,
            lba: 4000,
            blocks: 8,
            block_size: 512,
            fua: false,
            dpo: false,
            data_offset: 0,
            transfer_len: 4096,
        };
        let backend = reg.target(1).unwrap().backend(Lun::from_number(0)).unwrap();
        let mut data = vec![1u8; 4096];
        let mut scratch = Vec::new();
        assert_eq!(
            execute(&*backend.store, &req, &mut data, &mut scratch),
            IoAnswer::Complete(IoResult::OutOfRange)
        );
    }

    #[test]
    fn failures_are_skipped_and_other_luns_still_checked() {
        let store = Resizable::new(4 << 20);
        let reg = setup(store.clone());
        let mut checker = SizeChecker::new();
        store.resize(u64::MAX);
        assert!(checker.check(&reg).is_empty());
        assert!(checker.check(&reg).is_empty());
        assert_eq!(checker.failing.len(), 1);
        assert_eq!(blocks(&reg, 0), 8192);
        store.resize(8 << 20);
        assert_eq!(checker.check(&reg).len(), 1);
        assert!(checker.failing.is_empty());
        assert_eq!(blocks(&reg, 0), 16384);
    }

    #[test]
    fn a_removed_lun_is_not_touched() {
        let store = Resizable::new(4 << 20);
        let reg = setup(store.clone());
        let t = reg.target(1).unwrap();
        t.remove_lun(0).unwrap();
        store.resize(8 << 20);
        assert!(SizeChecker::new().check(&reg).is_empty());
    }

    #[test]
    fn watcher_thread_checks_and_stops_promptly() {
        let store = Resizable::new(4 << 20);
        let reg = setup(store.clone());
        let w = ResizeWatcher::start(reg.clone(), Duration::from_millis(20)).unwrap();
        store.resize(5 << 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        while blocks(&reg, 0) != 10240 {
            assert!(
                Instant::now() < deadline,
                "the watcher never saw the change"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(pending(&reg, 0).contains(&Asc::CAPACITY_DATA_HAS_CHANGED));
        w.stop();
        // With a long interval, stopping does not wait for it.
        let w = ResizeWatcher::start(reg, Duration::from_secs(3600)).unwrap();
        let t0 = Instant::now();
        drop(w);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
