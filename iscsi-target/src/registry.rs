//! The target registry: targets, their LUNs, access rules and CHAP accounts, the portals
//! SendTargets reports, and the session table (TSIH allocation, I_T nexus identities,
//! session reinstatement). One `Registry` is shared by every reactor or connection thread;
//! its locks are held only for short lookups and updates.
//!
//! SCSI state (tasks, unit attentions, reservations) lives in one [`ScsiTarget`] per target,
//! behind that target's mutex. Actions that scsi-core produces for another session's tasks
//! (an ORDERED task released by someone else's completion, say) are routed to the owning
//! session's mailbox and its waker is called: see [`ScsiGuard::drain_actions`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use backstore::BackingStore;
use scsi_core::{Action, LogicalUnit, LuConfig, Lun, NexusId, TargetAction, TargetError};

use crate::acl::InitiatorRule;
use crate::persist::PrStore;

/// LUNs per target.
pub const MAX_LUNS: usize = 32;
/// Tasks per logical unit (all sessions together).
pub const MAX_TASKS: usize = 256;
/// I_T nexuses (sessions) per target: the ceiling of
/// [`Limits::max_sessions_per_target`](crate::driver::Limits::max_sessions_per_target).
/// Each configured LU keeps about 600 bytes of state per nexus slot.
pub const MAX_NEXUS: usize = 1024;

/// One logical unit of a [`ScsiTarget`].
pub type ScsiLu = LogicalUnit<MAX_TASKS, MAX_NEXUS>;

/// The SCSI side of one target. Its LUs are boxed: a target costs memory only for the LUs
/// it has.
pub type ScsiTarget = scsi_core::Target<MAX_LUNS, MAX_TASKS, MAX_NEXUS, Box<ScsiLu>>;

/// Wakes the connection that owns a nexus (a reactor `Waker`, a channel send, ...).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Per-LUN I/O counters (`tgt-cli stats`).
#[derive(Debug, Default)]
pub struct LunStats {
    /// Read commands completed.
    pub read_ops: AtomicU64,
    /// Write commands completed.
    pub write_ops: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Reads whose data went from the page cache to the socket with `sendfile` (also
    /// counted in `read_ops`; see [`DriverConfig::zero_copy_reads`]).
    ///
    /// [`DriverConfig::zero_copy_reads`]: crate::driver::DriverConfig::zero_copy_reads
    pub zero_copy_reads: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Sum of I/O latencies in microseconds.
    pub latency_us: AtomicU64,
    /// Other backing-store requests completed (flush, unmap, write same, verify, ...).
    pub other_ops: AtomicU64,
    /// Requests the backing store failed (read/write errors, no space, not ready, ...).
    pub errors: AtomicU64,
    /// Latency distribution of every request (for percentiles).
    pub latency: LatencyHistogram,
}

/// What kind of backing-store request [`LunStats::record`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoKind {
    /// A read.
    Read,
    /// A write.
    Write,
    /// Anything else (flush, unmap, write same, compare, copy, ...).
    Other,
}

impl LunStats {
    /// Counts one completed request of `bytes` that took `us` microseconds.
    pub fn record(&self, kind: IoKind, bytes: u64, us: u64, ok: bool) {
        match kind {
            IoKind::Read => {
                self.read_ops.fetch_add(1, Ordering::Relaxed);
                self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            IoKind::Write => {
                self.write_ops.fetch_add(1, Ordering::Relaxed);
                self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            IoKind::Other => {
                self.other_ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        self.latency.record(us);
    }

    /// Every request counted (reads, writes and others).
    pub fn commands(&self) -> u64 {
        self.read_ops
            .load(Ordering::Relaxed)
            .saturating_add(self.write_ops.load(Ordering::Relaxed))
            .saturating_add(self.other_ops.load(Ordering::Relaxed))
    }
}

/// Sub-buckets per power of two in [`LatencyHistogram`] (about 19% resolution).
const LAT_SUB: usize = 4;
/// Buckets of [`LatencyHistogram`]: 0..4 us exactly, then 4 per octave up to 2^40 us.
const LAT_BUCKETS: usize = 40 * LAT_SUB;

/// A lock-free latency histogram (microseconds) with logarithmic buckets, 4 per octave.
pub struct LatencyHistogram {
    buckets: [AtomicU64; LAT_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; LAT_BUCKETS],
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish()
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < LAT_SUB as u64 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros() as usize; // >= 2
        let sub = ((us >> (octave - 2)) & 3) as usize;
        ((octave - 1) * LAT_SUB + sub).min(LAT_BUCKETS - 1)
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < LAT_SUB {
            return i as u64;
        }
        let octave = i / LAT_SUB + 1;
        let sub = (i % LAT_SUB) as u64;
        ((4 + sub + 1) << (octave - 2)) - 1
    }

    /// Counts one sample.
    pub fn record(&self, us: u64) {
        self.buckets[Self::bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }

    /// The `p`-th percentile (0..=100) in microseconds: the upper bound of the bucket that
    /// holds it (0 when empty).
    pub fn percentile(&self, p: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().fold(0, |a, b| a.saturating_add(*b));
        if total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * total as f64)
            .ceil()
            .max(1.0) as u64;
        let mut seen = 0u64;
        for (i, c) in counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Self::upper(i);
            }
        }
        Self::upper(LAT_BUCKETS - 1)
    }
}

/// Describes a LUN for `show` commands and config save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    /// LUN number.
    pub number: u16,
    /// `rdwr`, `aio`, `memory` or `null`.
    pub bstype: String,
    /// Backing path or label.
    pub path: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Block size.
    pub block_size: u32,
    /// Write protected.
    pub readonly: bool,
    /// Removable medium.
    pub removable: bool,
    /// Thin provisioned.
    pub thin: bool,
}

/// Builds an asynchronous [`Engine`](backstore::Engine) over a LUN's store, signalling
/// completions as the [`Notify`](backstore::Notify) says. An event loop calls it once per
/// loop (each loop then owns its engine and its completion eventfd); see
/// [`crate::engines`].
pub type EngineFactory =
    Arc<dyn Fn(backstore::Notify) -> std::io::Result<Box<dyn backstore::Engine>> + Send + Sync>;

/// A LUN's storage.
pub struct LunBackend {
    /// Description.
    pub info: LunInfo,
    /// The store.
    pub store: Arc<dyn BackingStore>,
    /// Counters.
    pub stats: LunStats,
    /// An engine whose `submit` never waits for the I/O (Ceph RBD: librbd's `rbd_aio_*`),
    /// for event-loop runtimes to keep requests in flight without a thread each; `None`:
    /// the blocking [`BackingStore`] calls only. [`LunBackend::engine_of`] makes one from
    /// a [`backstore::LunStore`].
    pub engine: Option<EngineFactory>,
}

#[cfg(test)]
impl LunBackend {
    /// LUN 0 of 1 MiB in 512-byte blocks on `store`, without an engine (tests).
    pub(crate) fn for_test(bstype: &str, store: Arc<dyn BackingStore>, thin: bool) -> LunBackend {
        LunBackend {
            info: LunInfo {
                number: 0,
                bstype: bstype.into(),
                path: None,
                size: 1 << 20,
                block_size: 512,
                readonly: false,
                removable: false,
                thin,
            },
            store,
            stats: LunStats::default(),
            engine: None,
        }
    }
}

impl LunBackend {
    /// The [`EngineFactory`] of `lun`'s asynchronous engine, if it has one
    /// ([`backstore::LunStore::has_async_engine`]).
    pub fn engine_of(lun: &backstore::LunStore) -> Option<EngineFactory> {
        if !lun.has_async_engine() {
            return None;
        }
        let lun = lun.clone();
        Some(Arc::new(move |notify| {
            lun.async_engine(notify).unwrap_or_else(|| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no asynchronous engine",
                ))
            })
        }))
    }
}

impl std::fmt::Debug for LunBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunBackend")
            .field("info", &self.info)
            .field("engine", &self.engine.is_some())
            .finish_non_exhaustive()
    }
}

/// CHAP settings of a target.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TargetAuth {
    /// Incoming users (name, secret): the initiator must authenticate as one of them.
    pub incoming: Vec<(String, String)>,
    /// Outgoing user (name, secret) for mutual CHAP.
    pub outgoing: Option<(String, String)>,
}

impl std::fmt::Debug for TargetAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.incoming.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("TargetAuth")
            .field("incoming", &users)
            .field("outgoing", &self.outgoing.as_ref().map(|(u, _)| u))
            .finish()
    }
}

struct ScsiShared {
    scsi: ScsiTarget,
    mail: HashMap<NexusId, (VecDeque<TargetAction>, Option<Wake>)>,
    /// Where reservation images persist (APTPL), and the target's name for it.
    pr_store: Option<(Arc<dyn PrStore>, String)>,
}

/// One target.
pub struct TargetNode {
    /// Target id.
    pub tid: u32,
    /// iSCSI name.
    pub name: String,
    acl: RwLock<Vec<InitiatorRule>>,
    auth: RwLock<TargetAuth>,
    scsi: Mutex<ScsiShared>,
    luns: RwLock<Vec<Arc<LunBackend>>>,
}

impl std::fmt::Debug for TargetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetNode")
            .field("tid", &self.tid)
            .field("name", &self.name)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn task_of(a: &Action) -> scsi_core::TaskId {
    match *a {
        Action::Io(r) => r.task,
        Action::NeedDataOut { task, .. }
        | Action::DataIn { task, .. }
        | Action::Complete { task, .. } => task,
    }
}

/// The SCSI target of a [`TargetNode`], locked; see [`TargetNode::scsi`].
pub struct ScsiGuard<'a> {
    inner: MutexGuard<'a, ScsiShared>,
}

impl ScsiGuard<'_> {
    /// The scsi-core target.
    pub fn target(&mut self) -> &mut ScsiTarget {
        &mut self.inner.scsi
    }

    /// Drains every action scsi-core has ready: those of `me` go to `mine`, the others to
    /// their owners' mailboxes, and the owners' wakers are called (they must not block).
    pub fn drain_actions(&mut self, me: NexusId, mine: &mut VecDeque<TargetAction>) {
        let mut woken: Vec<Wake> = Vec::new();
        let shared = &mut *self.inner;
        while let Some(a) = shared.scsi.poll_action() {
            let owner = task_of(&a.action).nexus;
            if owner == me {
                mine.push_back(a);
                continue;
            }
            match shared.mail.get_mut(&owner) {
                Some((q, wake)) => {
                    q.push_back(a);
                    if let Some(w) = wake.take() {
                        woken.push(w.clone());
                        *wake = Some(w);
                    }
                }
                // The owner is gone: nobody will ever answer this action. Let scsi-core
                // finish it so the task slot is freed.
                None => finish_orphan(&mut shared.scsi, a),
            }
        }
        // Reservation changes persist before any response leaves.
        if let Some((store, name)) = &shared.pr_store {
            save_pr_changes(&mut shared.scsi, store.as_ref(), name);
        }
        // Take what others left in our mailbox, too.
        if let Some((q, _)) = shared.mail.get_mut(&me) {
            mine.extend(q.drain(..));
        }
        for w in woken {
            w();
        }
    }
}

/// Runs `f` on a helper thread with room on its stack for a few [`ScsiLu`]s. An LU is
/// several hundred KB of fixed-capacity tables, and `Box::new` of a temporary is not
/// guaranteed to avoid stack copies (debug builds make them), which the 2 MiB stacks of
/// reactor and admin threads might not hold. Runs `f` on the caller's thread if no helper
/// thread can be started.
fn with_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + Clone + 'static) -> T {
    let stack = 4 * std::mem::size_of::<ScsiLu>() + (1 << 20);
    match std::thread::Builder::new()
        .name("scsi-lu-init".into())
        .stack_size(stack)
        .spawn(f.clone())
    {
        Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(_) => f(),
    }
}

/// Builds a scsi-core target (its "not present" LU included) off the caller's stack.
fn boxed_target() -> ScsiTarget {
    with_big_stack(ScsiTarget::new)
}

/// Builds a logical unit on the heap, off the caller's stack.
fn boxed_lu(cfg: LuConfig) -> Box<ScsiLu> {
    with_big_stack(move || Box::new(ScsiLu::new(cfg)))
}

/// Saves the reservation image of every LU whose state changed. A failed save is logged:
/// the state in memory stays authoritative and the next change retries.
fn save_pr_changes(scsi: &mut ScsiTarget, store: &dyn PrStore, name: &str) {
    for k in 0..scsi.lun_numbers().len() {
        let Some(&n) = scsi.lun_numbers().get(k) else {
            break;
        };
        // Read-only first: `lu_mut` marks the LU as possibly having actions to poll.
        if !scsi.lu(n).is_some_and(|lu| lu.pr_changed()) {
            continue;
        }
        let Some(lu) = scsi.lu_mut(n) else { continue };
        lu.take_pr_changed();
        let mut image = vec![0u8; 4096];
        let len = lu.export_pr(&mut image);
        if len > image.len() {
            image.resize(len, 0);
            lu.export_pr(&mut image);
        }
        image.truncate(len);
        if let Err(e) = store.save(name, n, &image) {
            log::error!("{name} lun {n}: saving persistent reservations: {e}");
        }
    }
}

fn finish_orphan(scsi: &mut ScsiTarget, a: TargetAction) {
    use scsi_core::IoResult;
    match a.action {
        Action::Io(r) => {
            let _ = scsi.complete_io(a.lun, r.task, IoResult::NotReady);
        }
        Action::NeedDataOut { task, .. } | Action::DataIn { task, .. } => {
            let _ = scsi.abort_task(a.lun, task);
        }
        Action::Complete { .. } => {}
    }
}

impl TargetNode {
    /// A target with no LUNs.
    pub fn new(tid: u32, name: &str) -> TargetNode {
        TargetNode {
            tid,
            name: name.to_string(),
            acl: RwLock::new(Vec::new()),
            auth: RwLock::new(TargetAuth::default()),
            scsi: Mutex::new(ScsiShared {
                scsi: boxed_target(),
                mail: HashMap::new(),
                pr_store: None,
            }),
            luns: RwLock::new(Vec::new()),
        }
    }

    /// Locks the SCSI state. Hold it only for scsi-core calls, never across I/O.
    pub fn scsi(&self) -> ScsiGuard<'_> {
        ScsiGuard {
            inner: lock(&self.scsi),
        }
    }

    /// Registers a session's nexus: scsi-core learns it (POWER ON unit attention) and
    /// actions for it are routed to its mailbox, calling `wake`.
    pub fn attach_nexus(
        &self,
        nexus: NexusId,
        wake: Option<Wake>,
    ) -> Result<(), scsi_core::NexusError> {
        let mut g = lock(&self.scsi);
        g.scsi.add_nexus(nexus)?;
        g.mail.insert(nexus, (VecDeque::new(), wake));
        Ok(())
    }

    /// The nexus is gone (logout, connection loss): scsi-core drops its tasks and
    /// nexus-scoped state.
    pub fn detach_nexus(&self, nexus: NexusId) {
        let mut g = lock(&self.scsi);
        g.mail.remove(&nexus);
        let _ = g.scsi.remove_nexus(nexus);
        // Tasks it released may belong to others.
        let mut none = VecDeque::new();
        let mut guard = ScsiGuard { inner: g };
        guard.drain_actions(nexus, &mut none);
    }

    /// Keeps persistent reservations in `store` (APTPL): LUNs added from now on start with
    /// the state saved there, and every change is saved before the response that reports
    /// it. Set it before adding LUNs.
    pub fn set_pr_store(&self, store: Arc<dyn PrStore>) {
        lock(&self.scsi).pr_store = Some((store, self.name.clone()));
    }

    /// Adds a LUN backed by `backend`, configured by `cfg`. With a [`PrStore`], its saved
    /// reservation state is restored; an unreadable image is logged and ignored.
    pub fn add_lun(&self, backend: LunBackend, cfg: LuConfig) -> Result<(), TargetError> {
        let number = backend.info.number;
        // Built before the locks are taken: the target's I/O goes on meanwhile.
        let mut lu = boxed_lu(cfg);
        lu.set_scsi_name(&self.name);
        let mut luns = self.luns.write().unwrap_or_else(|e| e.into_inner());
        let mut g = lock(&self.scsi);
        if let Some((store, name)) = &g.pr_store {
            match store.load(name, number) {
                Ok(Some(image)) => {
                    if let Err(e) = lu.import_pr(&image) {
                        log::error!("{name} lun {number}: saved reservations unusable: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => log::error!("{name} lun {number}: loading reservations: {e}"),
            }
        }
        g.scsi.add_lun(number, lu)?;
        luns.push(Arc::new(backend));
        luns.sort_by_key(|l| l.info.number);
        Ok(())
    }

    /// Removes a LUN.
    pub fn remove_lun(&self, number: u16) -> Result<(), TargetError> {
        let mut luns = self.luns.write().unwrap_or_else(|e| e.into_inner());
        lock(&self.scsi).scsi.remove_lun(number)?;
        luns.retain(|l| l.info.number != number);
        Ok(())
    }

    /// The backend of a LUN (by the LUN field of a command).
    pub fn backend(&self, lun: Lun) -> Option<Arc<LunBackend>> {
        let n = lun.number()?;
        let luns = self.luns.read().unwrap_or_else(|e| e.into_inner());
        luns.iter().find(|l| l.info.number == n).cloned()
    }

    /// All LUN backends, by number.
    pub fn backends(&self) -> Vec<Arc<LunBackend>> {
        self.luns.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the access rules.
    pub fn set_acl(&self, rules: Vec<InitiatorRule>) {
        *self.acl.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// The access rules.
    pub fn acl(&self) -> Vec<InitiatorRule> {
        self.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether an initiator at `addr` named `name` may use this target.
    pub fn allows(&self, addr: IpAddr, name: &str) -> bool {
        let acl = self.acl.read().unwrap_or_else(|e| e.into_inner());
        acl.iter().any(|r| r.matches(addr, name))
    }

    /// Replaces the CHAP settings.
    pub fn set_auth(&self, auth: TargetAuth) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = auth;
    }

    /// The CHAP settings.
    pub fn auth(&self) -> TargetAuth {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A logged-in session, as the session table knows it.
#[derive(Clone)]
pub struct SessionRecord {
    /// TSIH.
    pub tsih: u16,
    /// Initiator name.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// Target id (0 for discovery sessions).
    pub tid: u32,
    /// The I_T nexus.
    pub nexus: NexusId,
    /// Peer address.
    pub peer: SocketAddr,
    /// Asks the session's connection to close (reinstatement, forced delete, shutdown).
    pub kill: Option<Wake>,
    /// Asks the initiator to log out within the given seconds (Asynchronous Message,
    /// event 1); the connection closes itself if it does not.
    pub logout: Option<Arc<dyn Fn(u16) + Send + Sync>>,
    /// The negotiated session parameters.
    pub params: Option<iscsi_proto::login::SessionParams>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("tsih", &self.tsih)
            .field("initiator", &self.initiator)
            .field("tid", &self.tid)
            .field("nexus", &self.nexus)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Sessions {
    by_tsih: HashMap<u16, SessionRecord>,
    next_tsih: u16,
    /// I_T nexus ids by (initiator name, ISID, tid): the same initiator port reaching the same
    /// target is the same nexus, across reinstatement.
    nexus_ids: HashMap<(String, [u8; 6], u32), NexusId>,
}

/// Everything the daemon serves.
pub struct Registry {
    targets: RwLock<Vec<Arc<TargetNode>>>,
    portals: RwLock<Vec<SocketAddr>>,
    sessions: Mutex<Sessions>,
    next_nexus: AtomicU32,
    pr_store: RwLock<Option<Arc<dyn PrStore>>>,
    /// Target portal group tag reported in SendTargets.
    pub tpgt: u16,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("targets", &self.targets())
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// Registry errors (admin requests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// A target with this tid exists.
    DuplicateTid(u32),
    /// A target with this name exists.
    DuplicateName(String),
    /// No target with this tid.
    NoSuchTarget(u32),
    /// The target has sessions.
    Busy(u32),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::DuplicateTid(t) => write!(f, "tid {t} is already used"),
            RegistryError::DuplicateName(n) => write!(f, "target name {n:?} is already used"),
            RegistryError::NoSuchTarget(t) => write!(f, "no target with tid {t}"),
            RegistryError::Busy(t) => write!(f, "target {t} has sessions"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            targets: RwLock::new(Vec::new()),
            portals: RwLock::new(Vec::new()),
            sessions: Mutex::new(Sessions {
                next_tsih: 1,
                ..Sessions::default()
            }),
            next_nexus: AtomicU32::new(1),
            pr_store: RwLock::new(None),
            tpgt: 1,
        }
    }

    /// Keeps persistent reservations (APTPL) of targets created with
    /// [`Registry::new_target`] in `store`.
    pub fn set_pr_store(&self, store: Arc<dyn PrStore>) {
        *self.pr_store.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// A new target node, wired to the registry's reservation store if it has one. Add
    /// its LUNs, then [`Registry::add_target`] it.
    pub fn new_target(&self, tid: u32, name: &str) -> TargetNode {
        let node = TargetNode::new(tid, name);
        if let Some(s) = self
            .pr_store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            node.set_pr_store(s);
        }
        node
    }

    /// Adds a target.
    pub fn add_target(&self, node: TargetNode) -> Result<Arc<TargetNode>, RegistryError> {
        let mut t = self.targets.write().unwrap_or_else(|e| e.into_inner());
        if t.iter().any(|x| x.tid == node.tid) {
            return Err(RegistryError::DuplicateTid(node.tid));
        }
        if t.iter().any(|x| x.name.eq_ignore_ascii_case(&node.name)) {
            return Err(RegistryError::DuplicateName(node.name));
        }
        let node = Arc::new(node);
        t.push(node.clone());
        t.sort_by_key(|x| x.tid);
        Ok(node)
    }

    /// Removes a target (refused while it has sessions unless `force`).
    pub fn remove_target(&self, tid: u32, force: bool) -> Result<Arc<TargetNode>, RegistryError> {
        if !force && self.sessions().iter().any(|s| s.tid == tid) {
            return Err(RegistryError::Busy(tid));
        }
        let mut t = self.targets.write().unwrap_or_else(|e| e.into_inner());
        let pos = t
            .iter()
            .position(|x| x.tid == tid)
            .ok_or(RegistryError::NoSuchTarget(tid))?;
        Ok(t.remove(pos))
    }

    /// All targets, by tid.
    pub fn targets(&self) -> Vec<Arc<TargetNode>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A target by tid.
    pub fn target(&self, tid: u32) -> Option<Arc<TargetNode>> {
        self.targets().into_iter().find(|t| t.tid == tid)
    }

    /// A target by iSCSI name (case-insensitive).
    pub fn target_by_name(&self, name: &str) -> Option<Arc<TargetNode>> {
        self.targets()
            .into_iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Sets the portals SendTargets reports.
    pub fn set_portals(&self, portals: Vec<SocketAddr>) {
        *self.portals.write().unwrap_or_else(|e| e.into_inner()) = portals;
    }

    /// The portals.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.portals
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The nexus id of an initiator port (name + ISID) on a target, allocated on first use.
    pub fn nexus_for(&self, initiator: &str, isid: [u8; 6], tid: u32) -> NexusId {
        let mut s = lock(&self.sessions);
        let key = (initiator.to_ascii_lowercase(), isid, tid);
        *s.nexus_ids
            .entry(key)
            .or_insert_with(|| NexusId(self.next_nexus.fetch_add(1, Ordering::Relaxed)))
    }

    /// Allocates a TSIH for a new session (not yet registered).
    pub fn allocate_tsih_any(&self) -> Option<u16> {
        let mut s = lock(&self.sessions);
        for _ in 0..=u16::MAX {
            let t = s.next_tsih;
            s.next_tsih = s.next_tsih.wrapping_add(1).max(1);
            if t != 0 && !s.by_tsih.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }

    /// Session reinstatement (RFC 7143 section 6.3.5): a new session `tsih` of the same
    /// initiator port on the same target replaces the old ones, whose connections are asked
    /// to close.
    pub fn reinstate(&self, initiator: &str, isid: [u8; 6], tid: u32, tsih: u16) {
        let mut s = lock(&self.sessions);
        let old: Vec<u16> = s
            .by_tsih
            .values()
            .filter(|r| {
                r.tsih != tsih
                    && r.isid == isid
                    && r.tid == tid
                    && r.initiator.eq_ignore_ascii_case(initiator)
            })
            .map(|r| r.tsih)
            .collect();
        for t in old {
            if let Some(r) = s.by_tsih.remove(&t) {
                log::info!("reinstating session tsih {t} of {initiator} as tsih {tsih}");
                if let Some(k) = r.kill {
                    k();
                }
            }
        }
    }

    /// Records a logged-in session.
    pub fn register_session(&self, rec: SessionRecord) {
        lock(&self.sessions).by_tsih.insert(rec.tsih, rec);
    }

    /// Forgets a session (only if `nexus` still owns the TSIH).
    pub fn unregister_session(&self, tsih: u16, nexus: NexusId, peer: SocketAddr) {
        let mut s = lock(&self.sessions);
        if s.by_tsih
            .get(&tsih)
            .is_some_and(|r| r.nexus == nexus && r.peer == peer)
        {
            s.by_tsih.remove(&tsih);
        }
    }

    /// Whether a registered session of target `tid` uses the I_T nexus `nexus`.
    pub fn nexus_in_use(&self, tid: u32, nexus: NexusId) -> bool {
        lock(&self.sessions)
            .by_tsih
            .values()
            .any(|r| r.tid == tid && r.nexus == nexus)
    }

    /// Whether a session with this TSIH exists for the initiator port.
    pub fn session_exists(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> bool {
        lock(&self.sessions)
            .by_tsih
            .get(&tsih)
            .is_some_and(|r| r.isid == isid && r.initiator.eq_ignore_ascii_case(initiator))
    }

    /// The sessions, by TSIH.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let mut v: Vec<SessionRecord> = lock(&self.sessions).by_tsih.values().cloned().collect();
        v.sort_by_key(|r| r.tsih);
        v
    }

    /// Asks every session of `tid` (all sessions when `None`) to log out within `secs`
    /// seconds (Asynchronous Message); returns how many were asked.
    pub fn request_logout(&self, tid: Option<u32>, secs: u16) -> usize {
        let recs = self.sessions();
        let mut n = 0;
        for r in recs.into_iter().filter(|r| tid.is_none_or(|t| t == r.tid)) {
            if let Some(l) = r.logout {
                l(secs);
                n += 1;
            }
        }
        n
    }

    /// Sessions logged in to `tid`.
    pub fn session_count(&self, tid: u32) -> usize {
        lock(&self.sessions)
            .by_tsih
            .values()
            .filter(|r| r.tid == tid)
            .count()
    }

    /// Asks every session of `tid` (all sessions when `None`) to close.
    pub fn kill_sessions(&self, tid: Option<u32>) {
        let recs = self.sessions();
        for r in recs.into_iter().filter(|r| tid.is_none_or(|t| t == r.tid)) {
            if let Some(k) = r.kill {
                k();
            }
        }
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_percentiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.percentile(99.0), 0);
        for us in 0..4u64 {
            assert_eq!(LatencyHistogram::bucket(us), us as usize);
            assert_eq!(LatencyHistogram::upper(us as usize), us);
        }
        // Every value lies in a bucket whose upper bound is >= the value and < 1.25x + 1.
        for us in [4u64, 5, 7, 8, 9, 15, 16, 100, 1000, 123_456, 1 << 30] {
            let up = LatencyHistogram::upper(LatencyHistogram::bucket(us));
            assert!(up >= us && up <= us + us / 4 + 1, "{us} -> {up}");
        }
        assert_eq!(LatencyHistogram::bucket(u64::MAX), LAT_BUCKETS - 1);
        for _ in 0..98 {
            h.record(10);
        }
        h.record(1000);
        h.record(5000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), 11);
        assert_eq!(h.percentile(99.0), 1023);
        assert_eq!(h.percentile(100.0), 5119);
    }

    #[test]
    fn lun_stats_record() {
        let s = LunStats::default();
        s.record(IoKind::Read, 4096, 10, true);
        s.record(IoKind::Write, 512, 20, false);
        s.record(IoKind::Other, 0, 30, true);
        assert_eq!(s.commands(), 3);
        assert_eq!(s.read_bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(s.write_bytes.load(Ordering::Relaxed), 512);
        assert_eq!(s.errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.latency_us.load(Ordering::Relaxed), 60);
        assert_eq!(s.latency.count(), 3);
    }
}
