//! The per-connection driver: joins one `iscsi-proto` [`Connection`] to the scsi-core target
//! it logged in to, and to the LUNs' backing stores. Runtimes only move bytes and run I/O:
//!
//! 1. [`Driver::handle_input`] with the bytes read from the socket (it consumes whole PDUs
//!    and leaves a partial one in the buffer);
//! 2. [`Driver::poll_io`] for I/O jobs; run each ([`IoJob::run`] synchronously, here or on
//!    a worker thread, or on the LUN's asynchronous engine through an
//!    [`EngineSet`](crate::engines::EngineSet)) and hand it back with [`Driver::io_done`];
//! 3. [`Driver::poll_transmit`] for output: header bytes plus, for Data-In, a range of a
//!    task buffer ([`Driver::task_data`]) and its trailer, ready for `writev`;
//! 4. [`Driver::poll_timeout`] / [`Driver::handle_timeout`] for timers;
//! 5. when the waker passed to [`Driver::new`] fires (another session released one of our
//!    tasks, or the session is being reinstated or shut down): [`Driver::handle_wake`].
//!
//! Every call does as much protocol and SCSI work as it can before returning; afterwards
//! check [`Driver::is_closed`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use iscsi_proto::login::chap::CHALLENGE_LEN;
use iscsi_proto::login::discovery::{Portal, TargetInfo};
use iscsi_proto::login::{
    AuthPolicy, Authorization, ChapChallenge, ChapCredentials, JoinDecision, LoginHooks,
    SessionType,
};
use iscsi_proto::session::{
    CloseReason, Command, ConnConfig, Connection, Direction, Event, Hooks, Ingress, Residual,
    ScsiStatus, Task, TaskData, TaskHandle, TaskMgmt, Timestamp, Transmit,
};
use iscsi_proto::storage::{Full, Storage};
use iscsi_proto::wire::{
    DataTrailer, LogoutResponseCode, TaskAttr as WireAttr, TmfFunction, TmfResponse,
};
use scsi_core::{
    Action, DataDirection, IoRequest, Lun, NexusId, TargetAction, TaskAttr, TaskId, TaskTag,
};

use crate::exec::{IoAnswer, IoCallbacks, execute, execute_copy, transfer_result, write_data};
use crate::registry::{IoKind, LunBackend, Registry, ScsiTarget, SessionRecord, TargetNode, Wake};

/// Task slots per connection (the connection's task table).
pub const TASKS: usize = 128;
/// The ceiling of the connection's own buffers: the largest login or text request
/// sequence it takes in, and the largest data it emits from its own buffer (login, text
/// and NOP-In data). The buffers ([`HeapBuf`]) are allocated while in use and freed after,
/// so an idle connection holds none of them.
pub const BUF: usize = 64 * 1024;

/// The protocol side of one connection: its buffers and task table on the heap, sized on
/// use ([`HeapBuf`]).
pub type Conn = Connection<TASKS, BUF, HeapBuf<u8>, HeapBuf<Task>>;

/// [`Storage`] on the heap for a connection's buffers and task table: it grows as the
/// protocol needs (up to the limits the protocol code passes in) and gives its memory back
/// when reset. A connection therefore costs memory in proportion to what it is doing: an
/// idle session holds a few KiB, not the ceilings its buffers could reach.
#[derive(Debug, Clone)]
pub struct HeapBuf<T>(Vec<T>);

impl<T> Default for HeapBuf<T> {
    fn default() -> Self {
        HeapBuf(Vec::new())
    }
}

impl<T> Storage<T> for HeapBuf<T> {
    fn items(&self) -> &[T] {
        &self.0
    }

    fn items_mut(&mut self) -> &mut [T] {
        &mut self.0
    }

    fn try_push(&mut self, v: T, max: usize) -> Result<(), T> {
        if self.0.len() >= max {
            return Err(v);
        }
        self.0.push(v);
        Ok(())
    }

    fn reset(&mut self) {
        self.0 = Vec::new();
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    fn try_extend(&mut self, s: &[T], max: usize) -> Result<(), Full>
    where
        T: Copy,
    {
        if self.0.len().saturating_add(s.len()) > max {
            return Err(Full);
        }
        self.0.extend_from_slice(s);
        Ok(())
    }

    fn resize_to(&mut self, len: usize, fill: T, max: usize) -> &mut [T]
    where
        T: Copy,
    {
        self.0.resize(len.min(max), fill);
        &mut self.0
    }
}
/// The header buffer a connection starts with: a Basic Header Segment with digests and the
/// largest sense data fit. It grows, up to `BUF + 64`, when a login, text or NOP-In PDU with
/// more data is emitted.
const HDR_START: usize = 512;
/// Largest data segment accepted in one PDU (the ceiling of
/// [`Limits::max_data_segment_bytes`], offered as MaxRecvDataSegmentLength). Data-Out and
/// immediate data go straight to the task buffers, so this does not need to fit in [`BUF`].
pub const MAX_SEGMENT: usize = 256 * 1024;
/// Largest data buffer one command may use (bigger transfers are refused by scsi-core's
/// transfer length limits, which are below this).
pub const MAX_TASK_BUFFER: usize = 64 << 20;

/// Reads at least this long are sent straight from the page cache when the runtime allows
/// it ([`DriverConfig::zero_copy_reads`]); shorter ones cost less to copy than the extra
/// system call.
pub const ZERO_COPY_MIN: usize = 32 * 1024;

/// Data segments (Data-Out, immediate data) at least this long are received straight into
/// the task buffer when the runtime asks where to read ([`Driver::rx_target`]); shorter ones
/// cost less to copy than the extra system calls.
pub const PLACE_MIN: usize = 32 * 1024;

/// Resource limits: what one initiator (or many) may make the target hold. Every limit is
/// checked before the resource is allocated: a refused connection is closed before a driver
/// exists for it, a PDU whose declared data segment is too long is refused from its header,
/// before its data is buffered.
///
/// The defaults ([`Limits::default`]) suit a target serving a few hundred initiators. An
/// accepted connection costs about 260 KiB before login (the connection's buffers, see
/// [`BUF`]), so the per-portal default bounds what idle or half-open connections can hold
/// to about 260 MiB per portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per portal (listening address), in any phase. Default 1024.
    /// Enforced by the runtimes' accept paths ([`ConnLimiter`]).
    pub max_connections_per_portal: usize,
    /// Open connections from one initiator IP address, over all portals. Default 64.
    pub max_connections_per_initiator: usize,
    /// Sessions per target: a login beyond it fails with status 0x0301 (service
    /// unavailable). Default and ceiling 1024 (the I_T nexus table of a target,
    /// [`MAX_NEXUS`](crate::registry::MAX_NEXUS)); an idle session costs the target about
    /// 600 bytes per LU plus its connection's buffers.
    pub max_sessions_per_target: usize,
    /// Non-immediate commands a session may have outstanding: the CmdSN window
    /// (MaxCmdSN - ExpCmdSN + 1). Default 64; at most [`Limits::MAX_OUTSTANDING`].
    pub max_outstanding_commands: u32,
    /// The whole login must complete within this many milliseconds, or the connection is
    /// closed. Default 15 s.
    pub login_timeout_ms: u64,
    /// In full feature phase, after this many milliseconds without input the target sends
    /// a NOP-In ping (0: never). Default 60 s.
    pub idle_timeout_ms: u64,
    /// A ping not answered within this many milliseconds closes the connection. Default
    /// 15 s.
    pub ping_timeout_ms: u64,
    /// Bytes of one login or text request sequence (the data segments of the PDUs chained
    /// with the C bit, and of each such PDU). A sequence beyond it closes the connection.
    /// Default 64 KiB, at most [`BUF`].
    pub max_text_bytes: u32,
    /// The largest data segment the target accepts in one PDU: offered to initiators as
    /// MaxRecvDataSegmentLength; a PDU declaring more closes the connection. Default
    /// 256 KiB, at most [`MAX_SEGMENT`].
    pub max_data_segment_bytes: u32,
}

impl Limits {
    /// The largest accepted `max_outstanding_commands`: the CmdSN window's bitmap, with
    /// room left in the task table for immediate commands.
    pub const MAX_OUTSTANDING: u32 = {
        let w = iscsi_proto::session::MAX_QUEUE_DEPTH;
        let t = (TASKS as u32) - 16;
        if w < t { w } else { t }
    };
    /// The largest accepted `max_data_segment_bytes`.
    pub const MAX_DATA_SEGMENT: u32 = MAX_SEGMENT as u32;
    /// The smallest `max_data_segment_bytes` and `max_text_bytes` (RFC 7143 allows a
    /// MaxRecvDataSegmentLength of 512).
    pub const MIN_DATA_SEGMENT: u32 = 512;
    /// The largest accepted `max_text_bytes` (the connection's login/text buffer, [`BUF`]).
    pub const MAX_TEXT: u32 = BUF as u32;

    /// Checks every value; the error names the field and the value.
    pub fn validate(&self) -> Result<(), LimitError> {
        let bad = |field: &'static str, value: u64, rule: &'static str| {
            Err(LimitError { field, value, rule })
        };
        if self.max_connections_per_portal == 0 {
            return bad("max_connections_per_portal", 0, "must be at least 1");
        }
        if self.max_connections_per_initiator == 0 {
            return bad("max_connections_per_initiator", 0, "must be at least 1");
        }
        let nexus = crate::registry::MAX_NEXUS;
        const _: () = assert!(crate::registry::MAX_NEXUS == 1024, "update the rule below");
        if self.max_sessions_per_target == 0 || self.max_sessions_per_target > nexus {
            return bad(
                "max_sessions_per_target",
                self.max_sessions_per_target as u64,
                "must be in 1..=1024",
            );
        }
        if self.max_outstanding_commands == 0
            || self.max_outstanding_commands > Self::MAX_OUTSTANDING
        {
            return bad(
                "max_outstanding_commands",
                u64::from(self.max_outstanding_commands),
                "must be in 1..=112",
            );
        }
        if self.login_timeout_ms == 0 {
            return bad("login_timeout_ms", 0, "must be above 0");
        }
        if self.idle_timeout_ms > 0 && self.ping_timeout_ms == 0 {
            return bad(
                "ping_timeout_ms",
                0,
                "must be above 0 when idle pings are on",
            );
        }
        if self.max_text_bytes < Self::MIN_DATA_SEGMENT || self.max_text_bytes > Self::MAX_TEXT {
            return bad(
                "max_text_bytes",
                u64::from(self.max_text_bytes),
                "must be in 512..=65536",
            );
        }
        if self.max_data_segment_bytes < Self::MIN_DATA_SEGMENT
            || self.max_data_segment_bytes > Self::MAX_DATA_SEGMENT
        {
            return bad(
                "max_data_segment_bytes",
                u64::from(self.max_data_segment_bytes),
                "must be in 512..=262144",
            );
        }
        Ok(())
    }

    /// Applies the protocol-level limits to a connection configuration: queue depth,
    /// timers and the offered MaxRecvDataSegmentLength (clamped to what the driver
    /// supports, so an unvalidated value cannot overrun a buffer).
    pub fn apply(&self, conn: &mut ConnConfig) {
        conn.queue_depth = self
            .max_outstanding_commands
            .clamp(1, Self::MAX_OUTSTANDING);
        conn.login_timeout_ms = self.login_timeout_ms.max(1);
        conn.nop_interval_ms = self.idle_timeout_ms;
        conn.nop_timeout_ms = self.ping_timeout_ms.max(1);
        conn.login.max_recv_data_segment_length = self
            .max_data_segment_bytes
            .clamp(Self::MIN_DATA_SEGMENT, Self::MAX_DATA_SEGMENT);
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_portal: 1024,
            max_connections_per_initiator: 64,
            max_sessions_per_target: crate::registry::MAX_NEXUS,
            max_outstanding_commands: 64,
            login_timeout_ms: 15_000,
            idle_timeout_ms: 60_000,
            ping_timeout_ms: 15_000,
            max_text_bytes: 64 * 1024,
            max_data_segment_bytes: 256 * 1024,
        }
    }
}

/// A [`Limits`] value out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.rule)
    }
}

impl std::error::Error for LimitError {}

/// Connection settings a runtime passes to every driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Protocol parameters and timers. The fields [`Limits`] covers (queue depth, login
    /// timeout, NOP interval and timeout, MaxRecvDataSegmentLength) are overridden by
    /// `limits` when a driver starts ([`DriverConfig::effective_conn`]).
    pub conn: ConnConfig,
    /// Resource limits.
    pub limits: Limits,
    /// Whether the runtime sends task data with [`Driver::payload`], which may name a range
    /// of a backing file instead of bytes: then a READ of at least [`ZERO_COPY_MIN`] bytes
    /// that the page cache holds whole is not read into a buffer at all, and its Data-In
    /// goes out with `sendfile(2)` ([`BackingStore::send_cached`]). Only SIMPLE (and
    /// untagged) tasks without data digests take this path, since the data is what the file
    /// holds when it is sent. Runtimes that only use [`Driver::task_data`] leave it off.
    ///
    /// [`BackingStore::send_cached`]: backstore::BackingStore::send_cached
    pub zero_copy_reads: bool,
}

impl DriverConfig {
    /// The default configuration with `limits`.
    pub fn with_limits(limits: Limits) -> DriverConfig {
        DriverConfig {
            limits,
            ..DriverConfig::default()
        }
    }

    /// The connection configuration a driver runs with: `conn` with `limits` applied.
    pub fn effective_conn(&self) -> ConnConfig {
        let mut c = self.conn.clone();
        self.limits.apply(&mut c);
        c
    }
}

impl Default for DriverConfig {
    fn default() -> Self {
        let mut conn = ConnConfig::default();
        conn.login.max_recv_data_segment_length = 256 * 1024;
        conn.login.max_burst_length = 1 << 20;
        conn.login.first_burst_length = 256 * 1024;
        conn.queue_depth = 64;
        DriverConfig {
            conn,
            limits: Limits::default(),
            zero_copy_reads: false,
        }
    }
}

/// Why [`ConnLimiter::try_admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefused {
    /// The portal has `max_connections_per_portal` connections open.
    Portal,
    /// The initiator address has `max_connections_per_initiator` connections open.
    Initiator,
}

impl std::fmt::Display for ConnRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnRefused::Portal => "max_connections_per_portal reached",
            ConnRefused::Initiator => "max_connections_per_initiator reached",
        })
    }
}

impl std::error::Error for ConnRefused {}

#[derive(Default)]
struct ConnCounts {
    portals: std::collections::HashMap<SocketAddr, usize>,
    initiators: std::collections::HashMap<std::net::IpAddr, usize>,
    /// Refusals since the last warning, and when that warning was logged.
    refused: u64,
    warned_at: Option<std::time::Instant>,
}

/// Counts open connections per portal and per initiator address for the runtimes' accept
/// paths: [`ConnLimiter::try_admit`] runs before anything is allocated for a new socket;
/// the returned [`ConnPermit`] lives as long as the connection and gives its place back
/// when dropped. Refusals are logged once per burst (at most one warning per
/// [`ConnLimiter::WARN_INTERVAL`], with the count of refusals it covers).
pub struct ConnLimiter {
    per_portal: usize,
    per_initiator: usize,
    counts: std::sync::Mutex<ConnCounts>,
}

impl std::fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("per_portal", &self.per_portal)
            .field("per_initiator", &self.per_initiator)
            .finish_non_exhaustive()
    }
}

impl ConnLimiter {
    /// Refusal warnings are at least this far apart.
    pub const WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

    /// A limiter for `limits`' connection counts.
    pub fn new(limits: &Limits) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            per_portal: limits.max_connections_per_portal.max(1),
            per_initiator: limits.max_connections_per_initiator.max(1),
            counts: std::sync::Mutex::new(ConnCounts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, ConnCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer` accepted on `portal`, or refuses it (the caller
    /// closes the socket at once).
    pub fn try_admit(
        self: &Arc<Self>,
        portal: SocketAddr,
        peer: std::net::IpAddr,
    ) -> Result<ConnPermit, ConnRefused> {
        let mut c = self.counts();
        let on_portal = c.portals.get(&portal).copied().unwrap_or(0);
        let from_peer = c.initiators.get(&peer).copied().unwrap_or(0);
        let refused = if on_portal >= self.per_portal {
            Some(ConnRefused::Portal)
        } else if from_peer >= self.per_initiator {
            Some(ConnRefused::Initiator)
        } else {
            None
        };
        if let Some(why) = refused {
            c.refused += 1;
            let due = c
                .warned_at
                .is_none_or(|t| t.elapsed() >= Self::WARN_INTERVAL);
            if due {
                log::warn!(
                    "refusing connections ({why}): {} refused, latest from {peer} on {portal}",
                    c.refused
                );
                c.refused = 0;
                c.warned_at = Some(std::time::Instant::now());
            }
            return Err(why);
        }
        *c.portals.entry(portal).or_insert(0) += 1;
        *c.initiators.entry(peer).or_insert(0) += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            portal,
            peer,
        })
    }

    /// Connections open on `portal`.
    pub fn on_portal(&self, portal: SocketAddr) -> usize {
        self.counts().portals.get(&portal).copied().unwrap_or(0)
    }

    /// Connections open from `peer`.
    pub fn from_initiator(&self, peer: std::net::IpAddr) -> usize {
        self.counts().initiators.get(&peer).copied().unwrap_or(0)
    }
}

/// One admitted connection's place in a [`ConnLimiter`]; dropping it frees the place.
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    portal: SocketAddr,
    peer: std::net::IpAddr,
}

impl std::fmt::Debug for ConnPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPermit")
            .field("portal", &self.portal)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self.limiter.counts();
        if let Some(n) = c.portals.get_mut(&self.portal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.portals.remove(&self.portal);
            }
        }
        if let Some(n) = c.initiators.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.initiators.remove(&self.peer);
            }
        }
    }
}

/// The most jobs [`IoJob::run_joined`] writes with one call.
pub const JOIN_MAX: usize = 64;

/// The most bytes [`IoJob::run_joined`] writes with one call: every job of a batch completes
/// when the whole batch is written, so this bounds the latency joining adds.
pub const JOIN_MAX_BYTES: u64 = 4 << 20;

/// A block I/O to perform for a task. It owns the task's buffers while it runs.
pub struct IoJob {
    /// The request from scsi-core.
    pub req: IoRequest,
    /// The LUN's storage.
    pub backend: Arc<LunBackend>,
    /// For EXTENDED COPY: the source LUN's storage (`backend` is the destination's).
    pub(crate) copy_src: Option<Arc<LunBackend>>,
    slot: usize,
    lun: Lun,
    /// The target and nexus the task belongs to: the answer goes back to scsi-core even if
    /// the connection has closed meanwhile, so the task's slot there is freed.
    target: Arc<TargetNode>,
    nexus: NexusId,
    /// The task's buffer (read data lands at its start; write data starts at
    /// `req.data_offset`).
    pub(crate) buf: Vec<u8>,
    scratch: Vec<u8>,
    answer: Option<IoAnswer>,
}

impl std::fmt::Debug for IoJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoJob")
            .field("req", &self.req)
            .field("slot", &self.slot)
            .finish()
    }
}

impl IoJob {
    /// Jobs with the same lane are best run one at a time, in the order they were
    /// submitted: plain (not FUA) writes to a store whose writes the kernel runs one at a
    /// time anyway ([`BackingStore::serializes_writes`]). A hint: running them together is
    /// correct, only slower. `None`: run it whenever a thread is free.
    ///
    /// [`BackingStore::serializes_writes`]: backstore::BackingStore::serializes_writes
    pub fn lane(&self) -> Option<usize> {
        (self.req.op == scsi_core::IoOp::Write
            && !self.req.fua
            && self.copy_src.is_none()
            && self.backend.store.serializes_writes())
        .then_some(Arc::as_ptr(&self.backend) as usize)
    }

    /// Whether `next` can join `batch`, a run of jobs [`IoJob::run_joined`] writes with one
    /// call: it is a plain write of the same lane ([`IoJob::lane`]) that starts where the
    /// batch's last write ends, and the batch stays within [`JOIN_MAX`] jobs and
    /// [`JOIN_MAX_BYTES`].
    pub fn joins(batch: &[IoJob], next: &IoJob) -> bool {
        let Some(last) = batch.last() else {
            return false;
        };
        let bytes = batch.iter().map(|j| j.req.byte_len()).sum::<u64>();
        let lane = next.lane();
        batch.len() < JOIN_MAX
            && bytes.saturating_add(next.req.byte_len()) <= JOIN_MAX_BYTES
            && lane.is_some()
            && lane == last.lane()
            && last.req.byte_offset().checked_add(last.req.byte_len())
                == Some(next.req.byte_offset())
            && write_data(&last.req, &last.buf).is_some()
            && write_data(&next.req, &next.buf).is_some()
    }

    /// Runs `jobs`, each of which [`IoJob::joins`] those before it, as one vectored write
    /// ([`BackingStore::write_vectored_at`]): writes a lane has queued back to back cost
    /// one system call and one pass through the file system's locks instead of one each.
    /// Should the joined write fail, every job is run again on its own, so each gets its own
    /// status (rewriting a range with the job's own data changes nothing). A batch that
    /// does not hold together is run job by job.
    ///
    /// [`BackingStore::write_vectored_at`]: backstore::BackingStore::write_vectored_at
    pub fn run_joined(jobs: &mut [IoJob]) {
        match jobs {
            [] => return,
            [job] => return job.run(),
            _ => {}
        }
        let start = std::time::Instant::now();
        let joined = (1..jobs.len()).all(|i| IoJob::joins(&jobs[..i], &jobs[i]));
        let written = joined && {
            let mut pieces = [std::io::IoSlice::new(&[]); JOIN_MAX];
            let mut total = 0;
            for (piece, job) in pieces.iter_mut().zip(jobs.iter()) {
                let data = write_data(&job.req, &job.buf).unwrap_or_default();
                *piece = std::io::IoSlice::new(data);
                total += data.len();
            }
            let first = &jobs[0];
            let r = first
                .backend
                .store
                .write_vectored_at(&pieces[..jobs.len()], first.req.byte_offset());
            transfer_result(r, total, true).is_ok()
        };
        for job in jobs {
            if written {
                job.finish(IoAnswer::Complete(scsi_core::IoResult::Ok), start);
            } else {
                job.run();
            }
        }
    }

    /// Performs the request on the LUN's store (blocking).
    pub fn run(&mut self) {
        let start = std::time::Instant::now();
        let a = match (&self.copy_src, self.req.op) {
            (Some(src), scsi_core::IoOp::Copy { .. }) => execute_copy(
                &*src.store,
                &*self.backend.store,
                Arc::ptr_eq(src, &self.backend),
                &self.req,
                &mut self.scratch,
            ),
            _ => execute(
                &*self.backend.store,
                &self.req,
                &mut self.buf,
                &mut self.scratch,
            ),
        };
        self.finish(a, start);
    }

    /// Performs the request here if that cannot block: always on stores that never block
    /// (memory, null), and reads the page cache holds entirely
    /// ([`BackingStore::try_read_cached`](backstore::BackingStore::try_read_cached)).
    /// Returns whether it ran; if not, [`IoJob::run`] it on a thread that may block.
    pub fn try_run_nonblocking(&mut self) -> bool {
        if matches!(self.backend.info.bstype.as_str(), "memory" | "null") {
            self.run();
            return true;
        }
        if self.copy_src.is_some() {
            return false;
        }
        let start = std::time::Instant::now();
        match crate::exec::try_execute_cached(&*self.backend.store, &self.req, &mut self.buf) {
            Some(a) => {
                self.finish(a, start);
                true
            }
            None => false,
        }
    }

    /// Records the answer (and the LUN's statistics) for [`Driver::io_done`].
    pub(crate) fn finish(&mut self, a: IoAnswer, start: std::time::Instant) {
        let kind = match self.req.op {
            scsi_core::IoOp::Read => IoKind::Read,
            scsi_core::IoOp::Write => IoKind::Write,
            _ => IoKind::Other,
        };
        let ok = !matches!(
            a,
            IoAnswer::Complete(
                scsi_core::IoResult::ReadError
                    | scsi_core::IoResult::WriteError
                    | scsi_core::IoResult::NoSpace
                    | scsi_core::IoResult::OutOfRange
                    | scsi_core::IoResult::NotReady
                    | scsi_core::IoResult::Failed
            )
        );
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.backend.stats.record(kind, self.req.byte_len(), us, ok);
        self.answer = Some(a);
    }
}

#[cfg(test)]
impl IoJob {
    /// A job for `req` on `backend` outside any connection (tests of the engines).
    pub(crate) fn for_test(
        req: IoRequest,
        backend: Arc<LunBackend>,
        target: Arc<TargetNode>,
        buf: Vec<u8>,
    ) -> IoJob {
        IoJob {
            req,
            backend,
            copy_src: None,
            slot: 0,
            lun: Lun(0),
            target,
            nexus: req.task.nexus,
            buf,
            scratch: Vec::new(),
            answer: None,
        }
    }

    /// The answer [`IoJob::run`] or an engine recorded.
    pub(crate) fn answer(&self) -> Option<IoAnswer> {
        self.answer
    }
}

#[derive(Default)]
struct Slot {
    handle: Option<TaskHandle>,
    itt: u32,
    lun: Lun,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    read_len: u32,
    write_len: u32,
    /// Bytes of Data-In ready at the start of `buf`.
    data_in: u32,
    /// scsi-core wants this many bytes of Data-Out.
    need_out: Option<u32>,
    /// Every byte of Data-Out has arrived.
    out_complete: bool,
    /// Buffers are away with an I/O job.
    in_io: bool,
    /// Dropped by task management or a protocol failure: finish silently.
    dead: bool,
    /// SIMPLE or untagged: no ordering rule ties the task to later ones.
    simple: bool,
    /// The Data-In comes from this store at this byte offset, not from `buf`.
    zero_copy: Option<(Arc<LunBackend>, u64)>,
    /// The previous task's buffer, kept for its memory: a READ takes it as it is (the read
    /// overwrites every byte it sends, so nothing is zeroed per command); every other use
    /// clears it first ([`Slot::grow`]).
    spare: Vec<u8>,
}

impl Slot {
    fn reset(&mut self, handle: TaskHandle) {
        self.handle = Some(handle);
        self.itt = 0;
        self.lun = Lun(0);
        if self.buf.capacity() > 0 {
            self.spare = std::mem::take(&mut self.buf);
        }
        self.read_len = 0;
        self.write_len = 0;
        self.data_in = 0;
        self.need_out = None;
        self.out_complete = false;
        self.in_io = false;
        self.dead = false;
        self.simple = false;
        self.zero_copy = None;
    }

    /// Takes the previous task's buffer as `buf`, contents and all, if `buf` holds nothing
    /// yet and the spare is at least `len` bytes long; returns whether it did.
    fn reuse_spare(&mut self, len: usize) -> bool {
        let ok = self.buf.capacity() == 0 && self.spare.len() >= len;
        if ok {
            self.buf = std::mem::take(&mut self.spare);
        }
        ok
    }

    /// Makes `buf` at least `len` bytes; bytes this task has not written read as zero.
    fn grow(&mut self, len: usize) {
        if self.buf.capacity() == 0 {
            self.buf = std::mem::take(&mut self.spare);
            self.buf.clear();
        }
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }

    /// Makes `buf` at least `end` bytes to take Data-Out (or immediate data) up to `end`.
    /// The protocol delivers every byte of `[0, write_len)` in order before the buffer is
    /// used (`out_complete`), so the previous task's buffer is reused without zeroing, cut
    /// to `write_len`.
    /// `edtl`: the command's Expected Data Transfer Length when `write_len` is not known yet
    /// (immediate data arrives before the command is handled).
    fn grow_for_data_out(&mut self, end: usize, edtl: u32) {
        let write_len = if self.write_len == 0 {
            edtl
        } else {
            self.write_len
        };
        let total = (write_len as usize).max(end);
        if self.reuse_spare(total) {
            self.buf.truncate(total);
        } else {
            self.grow(end);
        }
    }

    /// Makes `buf` at least `len` bytes for a READ, which fills the first `len` bytes (the
    /// rest is never sent); reuses the previous task's buffer without zeroing it.
    fn grow_for_read(&mut self, len: usize) {
        if !self.reuse_spare(len) {
            self.grow(len);
        }
    }
}

/// Logged-in state of a normal session.
struct Bound {
    target: Arc<TargetNode>,
    nexus: NexusId,
    tsih: u16,
}

/// Login-time context: what the login machine asks the registry.
struct Ctx {
    registry: Arc<Registry>,
    peer: SocketAddr,
    local: SocketAddr,
    /// [`Limits::max_sessions_per_target`].
    max_sessions: usize,
}

impl LoginHooks for Ctx {
    fn authorize(
        &mut self,
        initiator_name: &str,
        target_name: Option<&str>,
        session_type: SessionType,
    ) -> Authorization {
        match (session_type, target_name) {
            (SessionType::Discovery, _) => Authorization::Allowed(AuthPolicy::None),
            (_, None) => Authorization::TargetNotFound,
            (_, Some(name)) => match self.registry.target_by_name(name) {
                None => Authorization::TargetNotFound,
                Some(t) if !t.allows(self.peer.ip(), initiator_name) => {
                    log::info!(
                        "login of {initiator_name} from {} to {name} refused by ACL",
                        self.peer
                    );
                    Authorization::NotAllowed
                }
                Some(t) if self.registry.session_count(t.tid) >= self.max_sessions => {
                    log::warn!(
                        "login of {initiator_name} from {} to {name} refused: \
                         max_sessions_per_target ({}) reached",
                        self.peer,
                        self.max_sessions
                    );
                    Authorization::ServiceUnavailable
                }
                Some(t) if t.auth().incoming.is_empty() => Authorization::Allowed(AuthPolicy::None),
                Some(_) => Authorization::Allowed(AuthPolicy::Chap),
            },
        }
    }

    fn chap_account(&mut self, target_name: Option<&str>, user: &str) -> Option<ChapCredentials> {
        let t = self.registry.target_by_name(target_name?)?;
        let auth = t.auth();
        let (u, s) = auth.incoming.iter().find(|(u, _)| u == user)?;
        ChapCredentials::new(u, s.as_bytes()).ok()
    }

    fn chap_mutual_account(&mut self, target_name: Option<&str>) -> Option<ChapCredentials> {
        let t = self.registry.target_by_name(target_name?)?;
        let (u, s) = t.auth().outgoing?;
        ChapCredentials::new(&u, s.as_bytes()).ok()
    }

    fn join_session(
        &mut self,
        initiator: &str,
        isid: [u8; 6],
        tsih: u16,
        _cid: u16,
    ) -> JoinDecision {
        if self.registry.session_exists(initiator, isid, tsih) {
            // One connection per session (MaxConnections=1).
            JoinDecision::TooManyConnections
        } else {
            JoinDecision::DoesNotExist
        }
    }

    fn allocate_tsih(&mut self, initiator_name: &str, isid: [u8; 6]) -> Option<u16> {
        // The target is not known here; reinstatement is keyed on the target at bind time.
        let _ = (initiator_name, isid);
        self.registry.allocate_tsih_any()
    }
}

impl Hooks for Ctx {
    fn with_targets(&mut self, initiator_name: &str, f: &mut dyn FnMut(&[TargetInfo<'_>])) {
        let addrs: Vec<String> = self
            .registry
            .portals()
            .into_iter()
            .map(|p| {
                let ip = if p.ip().is_unspecified() {
                    self.local.ip()
                } else {
                    p.ip()
                };
                SocketAddr::new(ip, p.port()).to_string()
            })
            .collect();
        let portals: Vec<Portal<'_>> = addrs
            .iter()
            .map(|a| Portal {
                address: a,
                tpgt: self.registry.tpgt,
            })
            .collect();
        let targets = self.registry.targets();
        let visible: Vec<TargetInfo<'_>> = targets
            .iter()
            .filter(|t| t.allows(self.peer.ip(), initiator_name))
            .map(|t| TargetInfo {
                name: &t.name,
                portals: &portals,
            })
            .collect();
        f(&visible);
    }
}

struct LuCalls<'a> {
    t: &'a mut ScsiTarget,
    lun: Lun,
}

impl IoCallbacks for LuCalls<'_> {
    fn complete_io(&mut self, task: TaskId, result: scsi_core::IoResult) {
        let _ = self.t.complete_io(self.lun, task, result);
    }
    fn compare_data(&mut self, task: TaskId, read: &[u8], expected: &[u8]) {
        let _ = self.t.compare_data(self.lun, task, read, expected);
    }
    fn lba_status_result(&mut self, task: TaskId, mapped: bool, blocks: u64) {
        let _ = self.t.lba_status_result(self.lun, task, mapped, blocks);
    }
}

/// One connection's driver.
pub struct Driver {
    conn: Box<Conn>,
    ctx: Ctx,
    slots: Vec<Slot>,
    bound: Option<Bound>,
    actions: VecDeque<TargetAction>,
    jobs: VecDeque<IoJob>,
    wake: Wake,
    kill: Arc<AtomicBool>,
    /// A logout request from the admin side: `0x1_0000 | seconds`, 0 when none.
    logout_req: Arc<AtomicU32>,
    hdr: Vec<u8>,
    limits: Limits,
    /// [`DriverConfig::zero_copy_reads`].
    zero_copy_reads: bool,
    /// Data bytes of the login / text request sequence in progress (PDUs with the C bit).
    text_bytes: u32,
    /// The large data segment being received in place, if any ([`Driver::rx_target`]).
    place: Option<Placing>,
    /// Its PDU's header (BHS, AHS, header digest).
    place_hdr: Vec<u8>,
    /// Where immediate data is placed before its task exists; it then becomes that task's
    /// buffer, and the task slot's spare buffer becomes the next stage.
    stage: Vec<u8>,
    /// The last PDU carried a large data segment: read only a header's worth next, so the
    /// data behind it can be placed too.
    expect_large: bool,
}

/// A large data segment on its way into a buffer straight from the socket.
struct Placing {
    dest: PlaceDest,
    /// Bytes of data segment (a multiple of 4: no padding, and no data digest).
    len: usize,
    /// Bytes received so far.
    have: usize,
}

#[derive(Clone, Copy)]
enum PlaceDest {
    /// Data-Out: `slots[index].buf[offset..]`, which the connection said is the next part
    /// of that task's data ([`Connection::data_out_destination`]).
    Slot { index: usize, offset: usize },
    /// Immediate data: `stage[..]`.
    Stage,
}

/// Where the runtime receives next ([`Driver::rx_target`]).
#[derive(Debug)]
pub enum RxTarget<'a> {
    /// Into its own buffer, at most this many bytes; then [`Driver::handle_read`].
    Buffer(usize),
    /// Straight into this part of a task buffer: the rest of a large data segment whose
    /// header has arrived. Then [`Driver::placed`] with the count. Never empty.
    Task(&'a mut [u8]),
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("peer", &self.ctx.peer)
            .finish_non_exhaustive()
    }
}

/// What [`Driver::handle_input`] left undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputStatus {
    /// Every whole PDU was handled; read more.
    NeedMore,
    /// The output queue is full: transmit, then call `handle_input` again with the same
    /// buffer before reading more.
    Blocked,
    /// The connection is finished.
    Closed,
}

/// The data a Data-In carries ([`Driver::payload`]).
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Bytes of the task's buffer.
    Bytes(&'a [u8]),
    /// `len` bytes at `offset` of the LUN's store: a READ the page cache held whole, to go
    /// to the socket with [`BackingStore::send_cached`](backstore::BackingStore::send_cached)
    /// (no data digest is on). If that fails, the connection must close: the status in the
    /// header already says GOOD.
    Store {
        /// The LUN (its `store`).
        backend: &'a Arc<LunBackend>,
        /// Byte offset in the store.
        offset: u64,
        /// Bytes to send.
        len: usize,
    },
}

impl Payload<'_> {
    /// The bytes that follow the data (padding; a data digest only for [`Payload::Bytes`]).
    pub fn trailer(&self, d: &TaskData) -> DataTrailer {
        match self {
            Payload::Bytes(b) => d.trailer(b),
            Payload::Store { len, .. } => DataTrailer::with_digest(*len, None),
        }
    }
}

/// A PDU to send: `header` bytes, then optionally task data and its trailer.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// Length of the header bytes at the start of [`Driver::header_buf`].
    pub header_len: usize,
    /// Task data following the header.
    pub data: Option<TaskData>,
}

fn random_challenge() -> ChapChallenge {
    use std::io::Read;
    let mut b = [0u8; 1 + CHALLENGE_LEN];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        // Fall back to the process's randomly keyed SipHash over the time.
        use std::hash::{BuildHasher, Hasher};
        let rs = std::collections::hash_map::RandomState::new();
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = rs.build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    let mut challenge = [0u8; CHALLENGE_LEN];
    challenge.copy_from_slice(&b[1..]);
    ChapChallenge {
        id: b[0],
        challenge,
    }
}

fn scsi_dir(d: Direction) -> DataDirection {
    match d {
        Direction::None => DataDirection::None,
        Direction::Read => DataDirection::Read,
        Direction::Write => DataDirection::Write,
        Direction::Bidirectional => DataDirection::Bidirectional,
    }
}

fn scsi_attr(a: WireAttr) -> TaskAttr {
    match a {
        WireAttr::Untagged | WireAttr::Simple => TaskAttr::Simple,
        WireAttr::Ordered => TaskAttr::Ordered,
        WireAttr::HeadOfQueue => TaskAttr::HeadOfQueue,
        WireAttr::Aca => TaskAttr::Aca,
    }
}

fn proto_status(status: scsi_core::ScsiStatus, residual: scsi_core::Residual) -> ScsiStatus {
    ScsiStatus {
        status: status as u8,
        residual: match residual {
            scsi_core::Residual::None => Residual::None,
            scsi_core::Residual::Underflow(n) => Residual::Underflow(n),
            scsi_core::Residual::Overflow(n) => Residual::Overflow(n),
        },
    }
}

impl Driver {
    /// A driver for a freshly accepted connection. `wake` must make the runtime call
    /// [`Driver::handle_wake`] soon (from the thread that owns this driver); it may be called
    /// from any thread.
    pub fn new(
        registry: Arc<Registry>,
        cfg: &DriverConfig,
        peer: SocketAddr,
        local: SocketAddr,
        now: Timestamp,
        wake: Wake,
    ) -> Driver {
        let mut conn_cfg = cfg.effective_conn();
        conn_cfg.login.target_portal_group_tag = registry.tpgt;
        Driver {
            conn: Box::new(Connection::new(conn_cfg, random_challenge(), now)),
            ctx: Ctx {
                registry,
                peer,
                local,
                max_sessions: cfg.limits.max_sessions_per_target,
            },
            slots: (0..TASKS).map(|_| Slot::default()).collect(),
            bound: None,
            actions: VecDeque::new(),
            jobs: VecDeque::new(),
            wake,
            kill: Arc::new(AtomicBool::new(false)),
            logout_req: Arc::new(AtomicU32::new(0)),
            hdr: vec![0u8; HDR_START],
            limits: cfg.limits,
            zero_copy_reads: cfg.zero_copy_reads,
            text_bytes: 0,
            place: None,
            place_hdr: Vec::new(),
            stage: Vec::new(),
            expect_large: false,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.ctx.peer
    }

    /// Whether the connection is finished: close the socket and drop the driver.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Whether a job is out with the runtime (its buffers are away).
    pub fn io_in_flight(&self) -> bool {
        self.slots.iter().any(|s| s.in_io)
    }

    /// Feeds received bytes: every whole PDU at the front of `rx` is handled and removed;
    /// a partial PDU stays.
    pub fn handle_input(&mut self, now: Timestamp, rx: &mut Vec<u8>) -> InputStatus {
        let (consumed, status) = self.handle_bytes(now, rx);
        rx.drain(..consumed);
        status
    }

    /// Handles bytes just read from the socket (`fresh`, e.g. the runtime's shared read
    /// buffer) after those kept from earlier reads (`pending`, a partial PDU): only as many
    /// fresh bytes as complete the pending PDU are copied into `pending`; the PDUs after it
    /// are handled where they are, and what is left of `fresh` (a partial PDU, or input a
    /// full output queue held back) is kept in `pending`. A header that breaks the limits
    /// closes the connection as soon as it is whole, before its data is buffered.
    ///
    /// A partial PDU whose large data segment ([`PLACE_MIN`]) can go straight to its task
    /// buffer is not kept in `pending`: its data is placed there, and [`Driver::rx_target`]
    /// names the rest of it.
    pub fn handle_read(
        &mut self,
        now: Timestamp,
        pending: &mut Vec<u8>,
        mut fresh: &[u8],
    ) -> InputStatus {
        loop {
            if self.place.is_some() {
                // The rest of a data segment being placed comes first.
                fresh = &fresh[self.fill_place(fresh)..];
                let st = self.finish_place(now, pending);
                if st != InputStatus::NeedMore || fresh.is_empty() {
                    pending.extend_from_slice(fresh);
                    return st;
                }
            }
            if pending.is_empty() {
                let (used, st) = self.handle_bytes(now, fresh);
                let rest = &fresh[used..];
                if st != InputStatus::NeedMore || !self.begin_place(rest) {
                    pending.extend_from_slice(rest);
                }
                return st;
            }
            let want = match iscsi_proto::wire::pdu_len(pending, self.conn.digests()) {
                iscsi_proto::wire::Status::Complete(n) => n,
                iscsi_proto::wire::Status::Partial => iscsi_proto::wire::BHS_LEN,
            };
            let take = want.saturating_sub(pending.len()).min(fresh.len());
            pending.extend_from_slice(&fresh[..take]);
            fresh = &fresh[take..];
            let st = self.handle_input(now, pending);
            if st != InputStatus::NeedMore {
                // Blocked or closed: keep the rest for the next call.
                pending.extend_from_slice(fresh);
                return st;
            }
            if !pending.is_empty() && self.begin_place(pending) {
                // The partial PDU's data goes to its task buffer; `fresh` continues it.
                pending.clear();
                continue;
            }
            if !pending.is_empty() && take == 0 {
                // No progress this way: handle everything from `pending`.
                pending.extend_from_slice(fresh);
                return self.handle_input(now, pending);
            }
            if fresh.is_empty() {
                return st;
            }
        }
    }

    /// Where the runtime should receive next: straight into a task buffer while a large
    /// data segment is under way ([`RxTarget::Task`], then [`Driver::placed`]); otherwise
    /// into its own buffer ([`RxTarget::Buffer`], then [`Driver::handle_read`]). Right
    /// after a large data segment, when nothing is held back (`pending`, as for
    /// [`Driver::handle_read`], is empty), only a header's worth, so the data behind that
    /// header can be placed too.
    pub fn rx_target(&mut self, pending: &[u8]) -> RxTarget<'_> {
        let Some(p) = &self.place else {
            return RxTarget::Buffer(if self.expect_large && pending.is_empty() {
                iscsi_proto::wire::BHS_LEN
            } else {
                usize::MAX
            });
        };
        let (dest, have, len) = (p.dest, p.have, p.len);
        if !self.place_fits() {
            // Its buffer changed under it, which nothing does: drop the connection rather
            // than write anywhere else.
            log::error!(
                "connection from {}: task buffer changed while receiving into it; closing",
                self.ctx.peer
            );
            self.place = None;
            self.conn.close();
            return RxTarget::Buffer(usize::MAX);
        }
        match dest {
            PlaceDest::Slot { index, offset } => {
                RxTarget::Task(&mut self.slots[index].buf[offset + have..offset + len])
            }
            PlaceDest::Stage => RxTarget::Task(&mut self.stage[have..len]),
        }
    }

    /// Whether the buffer of the data segment being placed holds all of it.
    fn place_fits(&self) -> bool {
        match &self.place {
            Some(Placing {
                dest: PlaceDest::Slot { index, offset },
                len,
                ..
            }) => self.slots[*index].buf.len() >= offset + len && !self.slots[*index].in_io,
            Some(Placing {
                dest: PlaceDest::Stage,
                len,
                ..
            }) => self.stage.len() >= *len,
            None => true,
        }
    }

    /// `n` bytes were received into the [`RxTarget::Task`] slice. Once the data segment is
    /// whole its PDU is handled; `pending` is the runtime's held-back input, as for
    /// [`Driver::handle_read`] (the PDU goes there, whole, when the connection cannot take
    /// it yet: [`InputStatus::Blocked`]).
    pub fn placed(&mut self, now: Timestamp, n: usize, pending: &mut Vec<u8>) -> InputStatus {
        if let Some(p) = &mut self.place {
            p.have = p.have.saturating_add(n).min(p.len);
        }
        self.finish_place(now, pending)
    }

    /// Starts placing the data segment of `partial`, an incomplete PDU at the end of the
    /// input, if its header is whole and the data goes to a known place: a Data-Out the
    /// connection expects next ([`Connection::data_out_destination`]) or a command's
    /// immediate data. Copies what of the data has arrived; returns whether it started.
    fn begin_place(&mut self, partial: &[u8]) -> bool {
        use iscsi_proto::wire::{Bhs, Opcode, Status, Word, header_wire_len, pdu_len};
        let d = self.conn.digests();
        if self.place.is_some() || self.conn.is_closed() || !large_segment(partial, d) {
            return false;
        }
        let (Status::Complete(total), Status::Complete(head), Ok(bhs)) = (
            pdu_len(partial, d),
            header_wire_len(partial, d),
            Bhs::new_checked(partial),
        ) else {
            return false;
        };
        let len = total - head;
        if partial.len() < head
            || partial.len() >= total
            || len != bhs.data_segment_len() as usize
            || self.check_header(partial).is_err()
        {
            return false;
        }
        let (header, got) = partial.split_at(head);
        let dest = match bhs.opcode() {
            Opcode::DataOut => {
                let Some((task, offset)) = self.conn.data_out_destination(header) else {
                    return false;
                };
                let (index, offset) = (task.index(), offset as usize);
                let slot = &mut self.slots[index];
                let end = offset + len;
                if slot.handle != Some(task) || slot.in_io || slot.dead || end > MAX_TASK_BUFFER {
                    return false;
                }
                slot.grow_for_data_out(end, 0);
                slot.buf[offset..offset + got.len()].copy_from_slice(got);
                PlaceDest::Slot { index, offset }
            }
            Opcode::ScsiCommand if self.conn.is_full_feature() => {
                // Only the segment's worth: the command's transfer length is not checked yet.
                if (bhs.word(Word::W20) as usize) < len {
                    return false;
                }
                if self.stage.len() < len {
                    self.stage.resize(len, 0);
                }
                self.stage[..got.len()].copy_from_slice(got);
                PlaceDest::Stage
            }
            _ => return false,
        };
        self.place_hdr.clear();
        self.place_hdr.extend_from_slice(header);
        self.place = Some(Placing {
            dest,
            len,
            have: got.len(),
        });
        self.expect_large = true;
        true
    }

    /// Copies the start of `bytes` into the data segment being placed; returns how many.
    fn fill_place(&mut self, bytes: &[u8]) -> usize {
        if !self.place_fits() {
            self.place = None;
            self.conn.close();
            return bytes.len();
        }
        let Some(p) = &mut self.place else { return 0 };
        let k = (p.len - p.have).min(bytes.len());
        let dst = match p.dest {
            PlaceDest::Slot { index, offset } => &mut self.slots[index].buf[offset..],
            PlaceDest::Stage => &mut self.stage[..],
        };
        dst[p.have..p.have + k].copy_from_slice(&bytes[..k]);
        p.have += k;
        k
    }

    /// Hands the placed PDU to the connection once its data segment is whole.
    fn finish_place(&mut self, now: Timestamp, pending: &mut Vec<u8>) -> InputStatus {
        match &self.place {
            Some(p) if p.have == p.len => {}
            _ => return InputStatus::NeedMore,
        }
        if !self.place_fits() {
            self.place = None;
            self.conn.close();
            return InputStatus::Closed;
        }
        let Some(p) = self.place.take() else {
            return InputStatus::NeedMore;
        };
        self.take_kill();
        let head = std::mem::take(&mut self.place_hdr);
        let (rest, at) = match p.dest {
            PlaceDest::Slot { index, offset } => {
                (&self.slots[index].buf[offset..][..p.len], offset)
            }
            PlaceDest::Stage => (&self.stage[..p.len], 0),
        };
        let mut status = InputStatus::NeedMore;
        let delivered = match self.conn.handle_split(now, &head, rest, &mut self.ctx) {
            Ok(Ingress::Data {
                task, offset, data, ..
            }) => Some((task, offset, data.as_ptr() == rest.as_ptr(), data.len())),
            Ok(Ingress::Blocked) => {
                // No room for its events yet: it waits, whole, with the held-back input.
                pending.extend_from_slice(&head);
                pending.extend_from_slice(rest);
                status = InputStatus::Blocked;
                None
            }
            Ok(Ingress::Done { .. } | Ingress::NeedMore) => None,
            Err(e) => {
                log::debug!("connection from {}: {e}", self.ctx.peer);
                None
            }
        };
        let edtl = immediate_edtl(&head);
        self.place_hdr = head;
        if let Some((task, offset, in_place, n)) = delivered {
            match p.dest {
                PlaceDest::Slot { index, .. }
                    if in_place && task.index() == index && offset as usize == at => {}
                PlaceDest::Stage if in_place && offset == 0 => self.take_stage(task, n, edtl),
                // Not where it was placed (the connection decides): copy it there.
                dest => {
                    let data = match dest {
                        PlaceDest::Slot { index, .. } => self.slots[index].buf[at..][..n].to_vec(),
                        PlaceDest::Stage => self.stage[..n].to_vec(),
                    };
                    deliver(&mut self.slots, task, offset, &data, edtl);
                }
            }
        }
        self.process(now);
        if self.conn.is_closed() {
            InputStatus::Closed
        } else {
            status
        }
    }

    /// Immediate data placed in the stage belongs to `task`: the stage becomes its buffer
    /// (cut to the command's transfer length when longer) unless it has one already.
    fn take_stage(&mut self, task: TaskHandle, n: usize, edtl: u32) {
        let slot = &mut self.slots[task.index()];
        if slot.handle != Some(task) {
            slot.reset(task);
        }
        if slot.in_io {
            return;
        }
        if slot.buf.capacity() == 0 {
            let total = (edtl as usize).max(n);
            slot.buf = std::mem::replace(&mut self.stage, std::mem::take(&mut slot.spare));
            slot.buf.truncate(total);
        } else {
            slot.grow_for_data_out(n, edtl);
            slot.buf[..n].copy_from_slice(&self.stage[..n]);
        }
    }

    /// Like [`Driver::handle_input`] on a borrowed buffer: handles every whole PDU at the
    /// front of `rx` and returns how many bytes it consumed; the caller keeps the rest (a
    /// partial PDU) for the next call.
    pub fn handle_bytes(&mut self, now: Timestamp, rx: &[u8]) -> (usize, InputStatus) {
        // A kill (reinstatement, cold reset, admin) also takes effect here, not only on the
        // next wake-up: an initiator that keeps the socket busy must not outrun it.
        self.take_kill();
        let mut start = 0usize;
        let mut status = InputStatus::NeedMore;
        while !self.conn.is_closed() && start < rx.len() {
            // Limits that apply before the PDU's data is buffered: judged from its header.
            let chained = match self.check_header(&rx[start..]) {
                Ok(c) => c,
                Err(why) => {
                    // Info, like other per-connection closes: a warning per hostile
                    // connection would let a peer flood the log.
                    log::info!("connection from {}: {why}; closing", self.ctx.peer);
                    self.conn.close();
                    break;
                }
            };
            let before = start;
            match self.conn.handle_input(now, &rx[start..], &mut self.ctx) {
                Ok(Ingress::Data {
                    consumed,
                    task,
                    offset,
                    data,
                }) => {
                    deliver(
                        &mut self.slots,
                        task,
                        offset,
                        data,
                        immediate_edtl(&rx[start..]),
                    );
                    start += consumed;
                }
                Ok(Ingress::Done { consumed }) => start += consumed,
                Ok(Ingress::NeedMore) => break,
                Ok(Ingress::Blocked) => {
                    status = InputStatus::Blocked;
                    break;
                }
                Err(e) => {
                    log::debug!("connection from {}: {e}", self.ctx.peer);
                    break;
                }
            }
            if start > before {
                self.expect_large = large_segment(&rx[before..], self.conn.digests());
                if let Some((len, more)) = chained {
                    // A login/text request was taken: its sequence grows or ends.
                    self.text_bytes = if more {
                        self.text_bytes.saturating_add(len)
                    } else {
                        0
                    };
                }
            }
            self.process(now);
        }
        self.process(now);
        if self.conn.is_closed() {
            (start, InputStatus::Closed)
        } else {
            (start, status)
        }
    }

    /// Checks the header at the start of `buf` (once it is all there) against the limits
    /// that must hold before the PDU's data is buffered: the data segment length, and for
    /// Login and Text Requests the size of their request sequence. Returns, for those, the
    /// data length and whether the C (continue) bit is set.
    fn check_header(&self, buf: &[u8]) -> Result<Option<(u32, bool)>, String> {
        let max = self.conn.max_recv_data_segment_len().min(
            self.limits
                .max_data_segment_bytes
                .max(Limits::MIN_DATA_SEGMENT),
        );
        let len = match iscsi_proto::wire::pdu_len_checked(buf, self.conn.digests(), max) {
            Ok(_) => match buf.get(5..8) {
                Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]),
                _ => return Ok(None),
            },
            Err(e) => return Err(format!("{e} (max_data_segment_bytes)")),
        };
        let opcode = buf.first().map_or(0, |b| b & 0x3f);
        // Login Request (0x03) and Text Request (0x04): byte 1 bit 6 is C (Continue).
        if opcode != 0x03 && opcode != 0x04 {
            return Ok(None);
        }
        let more = buf.get(1).is_some_and(|f| f & 0x40 != 0);
        let total = self.text_bytes.saturating_add(len);
        if total > self.limits.max_text_bytes {
            return Err(format!(
                "{} request sequence of {total} bytes exceeds max_text_bytes ({})",
                if opcode == 0x03 { "login" } else { "text" },
                self.limits.max_text_bytes
            ));
        }
        Ok(Some((len, more)))
    }

    /// Called when the waker fired.
    pub fn handle_wake(&mut self, now: Timestamp) {
        self.take_kill();
        let logout = self.logout_req.swap(0, Ordering::AcqRel);
        if logout != 0 && !self.conn.is_closed() {
            log::info!("asking {} to log out (admin request)", self.ctx.peer);
            self.request_logout(now, (logout & 0xffff) as u16);
            return;
        }
        self.process(now);
    }

    /// Closes the connection if its session was killed (see [`SessionRecord::kill`]).
    ///
    /// [`SessionRecord::kill`]: crate::registry::SessionRecord::kill
    fn take_kill(&mut self) {
        if self.kill.swap(false, Ordering::AcqRel) {
            log::info!(
                "closing session of {} (reinstated or removed)",
                self.ctx.peer
            );
            self.conn.close();
        }
    }

    /// Asks the initiator to log out within `seconds` (shutdown, target deletion).
    pub fn request_logout(&mut self, now: Timestamp, seconds: u16) {
        if self.conn.request_logout(now, seconds).is_err() {
            self.conn.close();
        }
        self.process(now);
    }

    /// The next I/O to run.
    pub fn poll_io(&mut self) -> Option<IoJob> {
        self.jobs.pop_front()
    }

    /// Hands back a job after [`IoJob::run`].
    pub fn io_done(&mut self, now: Timestamp, mut job: IoJob) {
        let answer = job
            .answer
            .take()
            .unwrap_or(IoAnswer::Complete(scsi_core::IoResult::Failed));
        let slot = &mut self.slots[job.slot];
        slot.in_io = false;
        if job.req.op == scsi_core::IoOp::Read
            && answer != IoAnswer::Complete(scsi_core::IoResult::Ok)
        {
            // A failed read sends sense, not the buffer.
            slot.data_in = 0;
        }
        slot.buf = std::mem::take(&mut job.buf);
        slot.scratch = std::mem::take(&mut job.scratch);
        let mut g = job.target.scsi();
        let slot = &self.slots[job.slot];
        answer.apply(
            &mut LuCalls {
                t: g.target(),
                lun: job.lun,
            },
            job.req.task,
            &slot.buf,
            &slot.scratch,
        );
        g.drain_actions(job.nexus, &mut self.actions);
        drop(g);
        self.process(now);
    }

    /// Runs every pending job synchronously (thread-per-connection runtimes).
    pub fn run_io_inline(&mut self, now: Timestamp) {
        while let Some(mut job) = self.poll_io() {
            job.run();
            self.io_done(now, job);
        }
    }

    /// Writes the next PDU's header into [`Driver::header_buf`]; task data to send after it
    /// is in [`Outgoing::data`] (read it with [`Driver::task_data`]).
    pub fn poll_transmit(&mut self, now: Timestamp) -> Option<Outgoing> {
        loop {
            match self.conn.poll_transmit(now, &mut self.hdr) {
                Ok(Some(Transmit { len, data, .. })) => {
                    return Some(Outgoing {
                        header_len: len,
                        data,
                    });
                }
                Ok(None) => return None,
                // The PDU stays queued: grow to what it needs (bounded by the connection's
                // own buffer) and emit it.
                Err(e) if e.required > self.hdr.len() && e.required <= BUF + 64 => {
                    self.hdr.resize(e.required, 0);
                }
                Err(e) => {
                    log::error!("transmit buffer too small: {e:?}");
                    self.conn.close();
                    return None;
                }
            }
        }
    }

    /// The header bytes of the last [`Driver::poll_transmit`].
    pub fn header_buf(&self) -> &[u8] {
        &self.hdr
    }

    /// The bytes of a task's buffer a Data-In carries (empty for a zero-copy read: see
    /// [`Driver::payload`]).
    pub fn task_data(&self, d: &TaskData) -> &[u8] {
        let slot = &self.slots[d.task.index()];
        if slot.zero_copy.is_some() {
            return &[];
        }
        let buf = &slot.buf;
        let start = (d.offset as usize).min(buf.len());
        let end = start.saturating_add(d.len as usize).min(buf.len());
        &buf[start..end]
    }

    /// What a Data-In carries: bytes of the task's buffer, or, for a zero-copy read
    /// ([`DriverConfig::zero_copy_reads`]), a range of the LUN's store to send with
    /// [`BackingStore::send_cached`](backstore::BackingStore::send_cached). Either way the
    /// trailer is [`Payload::trailer`].
    pub fn payload(&self, d: &TaskData) -> Payload<'_> {
        match &self.slots[d.task.index()].zero_copy {
            Some((backend, base)) => Payload::Store {
                backend,
                offset: base.saturating_add(u64::from(d.offset)),
                len: d.len as usize,
            },
            None => Payload::Bytes(self.task_data(d)),
        }
    }

    /// Appends every pending PDU to `out` (copying task data): the simple output path.
    pub fn transmit_into(&mut self, now: Timestamp, out: &mut Vec<u8>) {
        while let Some(o) = self.poll_transmit(now) {
            out.extend_from_slice(&self.hdr[..o.header_len]);
            if let Some(d) = o.data {
                let start = out.len();
                let ok = match self.payload(&d) {
                    Payload::Bytes(data) => {
                        out.extend_from_slice(data);
                        true
                    }
                    Payload::Store {
                        backend,
                        offset,
                        len,
                    } => {
                        out.resize(start + len, 0);
                        backend.store.read_at(&mut out[start..], offset).is_ok()
                    }
                };
                if !ok {
                    // GOOD status is already in the header: the data must not be faked.
                    log::error!("connection from {}: read for Data-In failed", self.ctx.peer);
                    self.conn.close();
                    return;
                }
                let trailer = d.trailer(&out[start..]);
                out.extend_from_slice(trailer.as_bytes());
            }
        }
        // Closing after output: let the connection report it.
        self.process(now);
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.conn.poll_timeout()
    }

    /// Timers fired.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.conn.handle_timeout(now);
        self.process(now);
    }

    /// Closes the connection now (socket error, shutdown).
    pub fn close(&mut self, now: Timestamp) {
        self.conn.close();
        self.process(now);
    }

    fn process(&mut self, now: Timestamp) {
        loop {
            let mut progress = false;
            while let Some(ev) = self.conn.poll_event() {
                progress = true;
                self.handle_event(now, ev);
            }
            if let Some(b) = &self.bound {
                b.target.scsi().drain_actions(b.nexus, &mut self.actions);
            }
            while let Some(a) = self.actions.pop_front() {
                progress = true;
                self.handle_action(a);
            }
            if !progress {
                break;
            }
        }
    }

    fn bind(&mut self) {
        let Some(out) = self.conn.login_outcome() else {
            return;
        };
        let initiator = out.initiator_name.as_str().to_string();
        let isid = out.isid;
        let tsih = out.tsih;
        let params = out.params;
        if out.session_type == SessionType::Discovery {
            log::info!("discovery session from {} ({initiator})", self.ctx.peer);
            return;
        }
        let Some(target) = self.ctx.registry.target_by_name(out.target_name.as_str()) else {
            self.conn.close();
            return;
        };
        let registry = self.ctx.registry.clone();
        let reinstating = registry.sessions().iter().any(|r| {
            r.tsih != tsih
                && r.isid == isid
                && r.tid == target.tid
                && r.initiator.eq_ignore_ascii_case(&initiator)
        });
        registry.reinstate(&initiator, isid, target.tid, tsih);
        let nexus = registry.nexus_for(&initiator, isid, target.tid);
        let wake = self.wake.clone();
        // Registered before the nexus is attached, so that a reinstated session closing
        // meanwhile sees the nexus in use and leaves its state alone.
        let kill = self.kill.clone();
        let kill_wake = wake.clone();
        let logout_req = self.logout_req.clone();
        let logout_wake = wake.clone();
        registry.register_session(SessionRecord {
            tsih,
            initiator: initiator.clone(),
            isid,
            tid: target.tid,
            nexus,
            peer: self.ctx.peer,
            kill: Some(Arc::new(move || {
                kill.store(true, Ordering::Release);
                kill_wake();
            })),
            logout: Some(Arc::new(move |secs: u16| {
                logout_req.store(0x1_0000 | u32::from(secs), Ordering::Release);
                logout_wake();
            })),
            params: Some(params),
        });
        if let Err(e) = target.attach_nexus(nexus, Some(wake.clone())) {
            log::warn!("login of {initiator}: {e:?}");
            registry.unregister_session(tsih, nexus, self.ctx.peer);
            self.conn.close();
            return;
        }
        // The initiator port identity persistent reservations are kept under (TransportID
        // "<name>,i,0x<ISID>"); this target has one target port, relative port 1.
        let port: String = isid.iter().fold(format!("{initiator},i,0x"), |mut s, b| {
            s.push_str(&format!("{b:02x}"));
            s
        });
        let _ = target
            .scsi()
            .target()
            .add_nexus_with_port(nexus, port.as_bytes(), 1);
        if reinstating {
            // The old session's tasks end now, before this session sends a command: the
            // two share the I_T nexus, and initiators restart their task tags, so a task
            // of the old session left behind would collide with (or, aborted later by
            // tag, take down) a new task with the same tag. Tasks whose I/O is in flight
            // stay, aborted, until that I/O returns (scsi-core keeps their tags busy).
            let mut g = target.scsi();
            let luns: Vec<u16> = g.target().lun_numbers().to_vec();
            for n in luns {
                let _ = g.target().abort_task_set(Lun::from_number(n), nexus);
            }
            g.drain_actions(nexus, &mut self.actions);
        }
        log::info!(
            "login: {initiator} from {} to {} (tsih {tsih}, nexus {})",
            self.ctx.peer,
            target.name,
            nexus.0
        );
        self.bound = Some(Bound {
            target,
            nexus,
            tsih,
        });
    }

    /// Whether a newer session of the same initiator port took over this session's I_T
    /// nexus (session reinstatement): this session's record is gone from the registry and
    /// another one holds the nexus.
    fn superseded(&self) -> bool {
        let Some(b) = &self.bound else { return false };
        let registry = &self.ctx.registry;
        !registry.sessions().iter().any(|r| r.tsih == b.tsih)
            && registry.nexus_in_use(b.target.tid, b.nexus)
    }

    fn unbind(&mut self) {
        if let Some(b) = self.bound.take() {
            let registry = &self.ctx.registry;
            registry.unregister_session(b.tsih, b.nexus, self.ctx.peer);
            if registry.nexus_in_use(b.target.tid, b.nexus) {
                // Reinstated: a newer session of the same initiator port owns the I_T nexus
                // now, and it aborted this session's tasks when it logged in. Nothing is
                // aborted here by tag: the tags may be the new session's by now. The
                // nexus state stays.
                for s in self.slots.iter_mut().filter(|s| s.handle.is_some()) {
                    s.dead = true;
                }
            } else {
                b.target.detach_nexus(b.nexus);
            }
        }
    }

    fn handle_event(&mut self, now: Timestamp, ev: Event) {
        match ev {
            Event::LoggedIn => self.bind(),
            Event::Command(cmd) => self.command(cmd),
            Event::DataOutComplete { task } => {
                let i = task.index();
                self.slots[i].out_complete = true;
                self.maybe_data_out_ready(i);
            }
            Event::TaskFailed { task, .. } => {
                let i = task.index();
                self.slots[i].dead = true;
                let itt = self.slots[i].itt;
                let lun = self.slots[i].lun;
                // A superseded session's tasks were aborted by the session that reinstated
                // it; its tags may belong to that session by now.
                if let Some(b) = self.bound.as_ref().filter(|_| !self.superseded()) {
                    let mut g = b.target.scsi();
                    let _ = g.target().abort_task(
                        lun,
                        TaskId {
                            nexus: b.nexus,
                            tag: TaskTag(itt),
                        },
                    );
                    g.drain_actions(b.nexus, &mut self.actions);
                }
            }
            Event::TaskMgmt(tmf) => self.task_mgmt(tmf),
            Event::Logout(_) => {
                self.abort_all();
                let _ = self.conn.respond_logout(LogoutResponseCode::Closed);
            }
            Event::Closed { reason } => {
                if !matches!(reason, CloseReason::LoggedOut | CloseReason::Local) {
                    log::info!("connection from {} closed: {reason}", self.ctx.peer);
                } else {
                    log::debug!("connection from {} closed: {reason}", self.ctx.peer);
                }
                self.unbind();
            }
        }
        let _ = now;
    }

    fn abort_all(&mut self) {
        if let Some(b) = &self.bound {
            let mut g = b.target.scsi();
            let _ = g.target().nexus_reset(b.nexus);
        }
        for s in &mut self.slots {
            if s.handle.is_some() {
                s.dead = true;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let i = cmd.task.index();
        let slot = &mut self.slots[i];
        if slot.handle != Some(cmd.task) {
            slot.reset(cmd.task);
        }
        slot.itt = cmd.itt;
        slot.lun = Lun(cmd.lun);
        slot.read_len = cmd.read_len;
        slot.write_len = cmd.write_len;
        slot.simple = matches!(cmd.attr, WireAttr::Untagged | WireAttr::Simple);
        if cmd.write_len == 0 || cmd.immediate_len >= cmd.write_len {
            slot.out_complete = cmd.write_len == 0 || cmd.immediate_len >= cmd.write_len;
        }
        let Some(b) = &self.bound else {
            let _ = self.conn.respond(
                cmd.task,
                ScsiStatus {
                    status: 0x08,
                    residual: Residual::None,
                },
                &[],
            );
            return;
        };
        let dir = scsi_dir(cmd.dir);
        let expected = match cmd.dir {
            Direction::Write | Direction::Bidirectional => cmd.write_len,
            _ => cmd.read_len,
        };
        let mut g = b.target.scsi();
        let r = g.target().submit(
            Lun(cmd.lun),
            b.nexus,
            TaskTag(cmd.itt),
            cmd.cdb.as_bytes(),
            dir,
            expected,
            scsi_attr(cmd.attr),
        );
        match r {
            Ok(()) => g.drain_actions(b.nexus, &mut self.actions),
            Err(e) => {
                drop(g);
                let status = match e {
                    scsi_core::SubmitError::TaskSetFull => 0x28,
                    _ => 0x08,
                };
                let _ = self.conn.respond(
                    cmd.task,
                    ScsiStatus {
                        status,
                        residual: Residual::None,
                    },
                    &[],
                );
            }
        }
    }

    fn task_mgmt(&mut self, tmf: TaskMgmt) {
        let Some(b) = &self.bound else {
            let _ = self.conn.respond_task_mgmt(tmf.itt, TmfResponse::Rejected);
            return;
        };
        let lun = Lun(tmf.lun);
        let nexus = b.nexus;
        let lun_known = b.target.backend(lun).is_some();
        let mut g = b.target.scsi();
        let resp = match tmf.function {
            TmfFunction::AbortTask => match tmf.referenced_task {
                Some(h) => {
                    let _ = g.target().abort_task(
                        lun,
                        TaskId {
                            nexus,
                            tag: TaskTag(tmf.referenced_itt),
                        },
                    );
                    let _ = self.conn.abort_task(h);
                    self.slots[h.index()].dead = true;
                    TmfResponse::FunctionComplete
                }
                None => TmfResponse::TaskDoesNotExist,
            },
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet if !lun_known => {
                TmfResponse::LunDoesNotExist
            }
            TmfFunction::AbortTaskSet => {
                let _ = g.target().abort_task_set(lun, nexus);
                abort_conn_tasks(&mut self.conn, &mut self.slots, Some(lun));
                TmfResponse::FunctionComplete
            }
            TmfFunction::ClearTaskSet => {
                let _ = g.target().clear_task_set(lun, nexus);
                abort_conn_tasks(&mut self.conn, &mut self.slots, Some(lun));
                TmfResponse::FunctionComplete
            }
            TmfFunction::LogicalUnitReset if !lun_known => TmfResponse::LunDoesNotExist,
            TmfFunction::LogicalUnitReset => {
                // SAM-5: every nexus, the requester too, gets BUS DEVICE RESET FUNCTION
                // OCCURRED (libiscsi's MultipathIO.Reset checks it on every path).
                let _ = g.target().lu_reset(lun);
                abort_conn_tasks(&mut self.conn, &mut self.slots, Some(lun));
                TmfResponse::FunctionComplete
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                let cold = matches!(tmf.function, TmfFunction::TargetColdReset);
                let _ = g.target().target_reset_by(nexus, cold);
                abort_conn_tasks(&mut self.conn, &mut self.slots, None);
                TmfResponse::FunctionComplete
            }
            TmfFunction::ClearAca => TmfResponse::NotSupported,
            TmfFunction::TaskReassign => TmfResponse::ReassignmentNotSupported,
            TmfFunction::Unknown(_) => TmfResponse::NotSupported,
        };
        g.drain_actions(nexus, &mut self.actions);
        drop(g);
        let _ = self.conn.respond_task_mgmt(tmf.itt, resp);
        if matches!(tmf.function, TmfFunction::TargetColdReset) {
            // A cold reset drops every connection (after the response).
            self.ctx.registry.kill_sessions(None);
        }
    }

    fn slot_of(&self, task: TaskId) -> Option<usize> {
        let h = self.conn.find_task(task.tag.0)?;
        let i = h.index();
        (self.slots[i].handle == Some(h)).then_some(i)
    }

    fn maybe_data_out_ready(&mut self, i: usize) {
        let slot = &self.slots[i];
        let (Some(need), true) = (slot.need_out, slot.out_complete) else {
            return;
        };
        if slot.dead {
            return;
        }
        let Some(b) = &self.bound else { return };
        let task = TaskId {
            nexus: b.nexus,
            tag: TaskTag(slot.itt),
        };
        let lun = slot.lun;
        self.slots[i].need_out = None;
        let slot = &mut self.slots[i];
        slot.grow(need as usize);
        let mut g = b.target.scsi();
        let _ = g
            .target()
            .data_out_ready(lun, task, &slot.buf[..need as usize]);
        g.drain_actions(b.nexus, &mut self.actions);
    }

    /// Answers `task`'s I/O request at once, with no job run, and takes scsi-core's
    /// follow-up actions.
    fn complete_io_now(&mut self, lun: Lun, task: TaskId, result: scsi_core::IoResult) {
        let Some(b) = &self.bound else { return };
        let mut g = b.target.scsi();
        let _ = g.target().complete_io(lun, task, result);
        g.drain_actions(b.nexus, &mut self.actions);
    }

    fn handle_action(&mut self, a: TargetAction) {
        let task = match a.action {
            Action::Io(r) => r.task,
            Action::NeedDataOut { task, .. }
            | Action::DataIn { task, .. }
            | Action::Complete { task, .. } => task,
        };
        let Some(i) = self.slot_of(task) else {
            // The connection no longer knows the task (aborted); finish it in scsi-core.
            if let Some(b) = &self.bound {
                let mut g = b.target.scsi();
                match a.action {
                    Action::Io(r) => {
                        let _ =
                            g.target()
                                .complete_io(a.lun, r.task, scsi_core::IoResult::NotReady);
                    }
                    Action::NeedDataOut { .. } | Action::DataIn { .. } => {
                        let _ = g.target().abort_task(a.lun, task);
                    }
                    Action::Complete { .. } => {}
                }
                g.drain_actions(b.nexus, &mut self.actions);
            }
            return;
        };
        let Some(h) = self.slots[i].handle else {
            return;
        };
        match a.action {
            Action::NeedDataOut { len, .. } => {
                self.slots[i].need_out = Some(len);
                if !self.slots[i].out_complete {
                    let _ = self.conn.request_remaining_data(h);
                }
                self.maybe_data_out_ready(i);
            }
            Action::DataIn { len, .. } => {
                let Some(b) = &self.bound else { return };
                let slot = &mut self.slots[i];
                let need = (len as usize).min(MAX_TASK_BUFFER);
                slot.grow(need);
                let mut g = b.target.scsi();
                let n = g
                    .target()
                    .emit_data_in(a.lun, task, &mut slot.buf[..need])
                    .unwrap_or(0);
                slot.data_in = u32::try_from(n).unwrap_or(0).min(slot.read_len);
                g.drain_actions(b.nexus, &mut self.actions);
            }
            Action::Io(req) => {
                let Some(b) = &self.bound else { return };
                // EXTENDED COPY names its source and destination LUNs; everything else
                // runs on the task's LUN.
                let ends = match req.op {
                    scsi_core::IoOp::Copy {
                        src_lun, dst_lun, ..
                    } => b
                        .target
                        .backend(Lun::from_number(dst_lun))
                        .zip(b.target.backend(Lun::from_number(src_lun)))
                        .map(|(d, s)| (d, Some(s))),
                    _ => b.target.backend(a.lun).map(|d| (d, None)),
                };
                let Some((backend, copy_src)) = ends else {
                    self.complete_io_now(a.lun, task, scsi_core::IoResult::NotReady);
                    return;
                };
                let slot = &mut self.slots[i];
                let need = match req.op {
                    scsi_core::IoOp::Read => usize::try_from(req.byte_len()).unwrap_or(usize::MAX),
                    _ => 0,
                };
                if need > MAX_TASK_BUFFER {
                    self.complete_io_now(a.lun, task, scsi_core::IoResult::Failed);
                    return;
                }
                if req.op == scsi_core::IoOp::Read {
                    slot.data_in = req.transfer_len.min(slot.read_len);
                    if self.zero_copy_reads
                        && slot.simple
                        && slot.data_in as usize >= ZERO_COPY_MIN
                        && copy_src.is_none()
                        && !self.conn.digests().data
                        && backend
                            .store
                            .can_send_cached(req.byte_offset(), u64::from(slot.data_in))
                    {
                        // Nothing to read now: the Data-In names the file range.
                        backend.stats.record(IoKind::Read, req.byte_len(), 0, true);
                        backend
                            .stats
                            .zero_copy_reads
                            .fetch_add(1, Ordering::Relaxed);
                        slot.zero_copy = Some((backend, req.byte_offset()));
                        self.complete_io_now(a.lun, task, scsi_core::IoResult::Ok);
                        return;
                    }
                    slot.grow_for_read(need);
                } else {
                    slot.grow(need);
                }
                slot.in_io = true;
                self.jobs.push_back(IoJob {
                    req,
                    backend,
                    copy_src,
                    slot: i,
                    lun: a.lun,
                    target: b.target.clone(),
                    nexus: b.nexus,
                    buf: std::mem::take(&mut slot.buf),
                    scratch: std::mem::take(&mut slot.scratch),
                    answer: None,
                });
            }
            Action::Complete {
                status,
                sense,
                residual,
                ..
            } => {
                let slot = &mut self.slots[i];
                if slot.dead {
                    return;
                }
                let st = proto_status(status, residual);
                let data_in = if slot.read_len > 0 { slot.data_in } else { 0 };
                match sense {
                    None if data_in > 0 => {
                        let _ = self.conn.send_data_in(h, 0, data_in, Some(st));
                    }
                    None => {
                        let _ = self.conn.respond(h, st, &[]);
                    }
                    Some(s) => {
                        if data_in > 0 {
                            let _ = self.conn.send_data_in(h, 0, data_in, None);
                        }
                        let _ = self.conn.respond(h, st, s.as_bytes());
                    }
                }
            }
        }
    }
}

/// The Expected Data Transfer Length of the SCSI Command at the start of `pdu` (whose
/// immediate data is being delivered); 0 for any other PDU.
/// Copies a PDU's payload to `offset` in `task`'s buffer (a new task takes over its slot).
/// `edtl`: see [`Slot::grow_for_data_out`].
fn deliver(slots: &mut [Slot], task: TaskHandle, offset: u32, data: &[u8], edtl: u32) {
    let slot = &mut slots[task.index()];
    if slot.handle != Some(task) {
        slot.reset(task);
    }
    let off = offset as usize;
    let end = off.saturating_add(data.len());
    if end <= MAX_TASK_BUFFER && !slot.in_io {
        slot.grow_for_data_out(end, edtl);
        slot.buf[off..end].copy_from_slice(data);
    }
}

/// Whether the PDU at the start of `pdu` carries a data segment worth placing
/// ([`PLACE_MIN`]): Data-Out or a command's immediate data, without data digests.
fn large_segment(pdu: &[u8], digests: iscsi_proto::wire::Digests) -> bool {
    use iscsi_proto::wire::{Bhs, Opcode};
    match Bhs::new_checked(pdu) {
        Ok(bhs) => {
            matches!(bhs.opcode(), Opcode::DataOut | Opcode::ScsiCommand)
                && bhs.data_segment_len() as usize >= PLACE_MIN
                && !digests.data
        }
        Err(_) => false,
    }
}

fn immediate_edtl(pdu: &[u8]) -> u32 {
    match iscsi_proto::wire::Bhs::new_checked(pdu) {
        Ok(bhs) if bhs.opcode() == iscsi_proto::wire::Opcode::ScsiCommand => {
            bhs.word(iscsi_proto::wire::Word::W20)
        }
        _ => 0,
    }
}

fn abort_conn_tasks(conn: &mut Conn, slots: &mut [Slot], lun: Option<Lun>) {
    for s in slots {
        let Some(h) = s.handle else { continue };
        if s.dead || lun.is_some_and(|l| l != s.lun) {
            continue;
        }
        if conn.abort_task(h).is_ok() {
            s.dead = true;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.unbind();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_grow_to_the_limit_and_free_on_reset() {
        let mut b = HeapBuf::<u8>::default();
        assert_eq!(b.try_extend(&[1, 2, 3], 4), Ok(()));
        assert_eq!(b.try_extend(&[4, 5], 4), Err(Full));
        assert_eq!(b.try_push(4, 4), Ok(()));
        assert_eq!(b.try_push(5, 4), Err(5));
        assert_eq!(b.items(), &[1, 2, 3, 4]);
        assert_eq!(b.resize_to(10, 0, 6), &[1, 2, 3, 4, 0, 0]);
        assert_eq!(b.resize_to(2, 0, 6), &[1, 2]);
        b.reset();
        assert!(b.items().is_empty());
        assert_eq!(b.0.capacity(), 0, "reset gives the memory back");
    }

    #[test]
    fn a_fresh_connection_holds_no_buffers() {
        // The protocol state proper: its buffers and task table live behind `HeapBuf`s.
        let size = std::mem::size_of::<Conn>();
        assert!(size < 16 * 1024, "Conn is {size} bytes");
    }
    use backstore::{BackingStore, MemoryStore};
    use iscsi_proto::session::initiator::{CommandSpec, Initiator, find_key, write_text};
    use iscsi_proto::wire::{Digests, LoginRequest, Pdu, Stage, emit_pdu};

    const NAME: &str = "iqn.2026-11.org.tgt-rs:limits";

    fn registry() -> Arc<Registry> {
        crate::TargetBuilder::new(NAME)
            .lun(0, Arc::new(MemoryStore::new(1 << 20, 512).unwrap()))
            .build()
            .unwrap()
    }

    fn driver(reg: &Arc<Registry>, limits: Limits, port: u16) -> Driver {
        Driver::new(
            reg.clone(),
            &DriverConfig::with_limits(limits),
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], 3260)),
            Timestamp(0),
            Arc::new(|| {}),
        )
    }

    /// Feeds `bytes`, returns what the driver sends back.
    fn feed(d: &mut Driver, bytes: &[u8]) -> (InputStatus, Vec<u8>) {
        let mut rx = bytes.to_vec();
        let st = d.handle_input(Timestamp(1), &mut rx);
        d.run_io_inline(Timestamp(1));
        let mut out = Vec::new();
        d.transmit_into(Timestamp(1), &mut out);
        (st, out)
    }

    fn login_request(ini: &mut Initiator) -> Vec<u8> {
        let mut text = [0u8; 256];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:ini"),
                ("TargetName", NAME),
                ("SessionType", "Normal"),
            ],
        )
        .unwrap();
        let mut pdu = vec![0u8; 512];
        let len = ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .unwrap();
        pdu.truncate(len);
        pdu
    }

    /// Logs in; returns the Login Response's (class, detail).
    fn login(d: &mut Driver, isid_tail: u8) -> (u8, u8) {
        let mut ini = Initiator::new([0x80, 0, 0, 0, 9, isid_tail], 1);
        let (_, out) = feed(d, &login_request(&mut ini));
        match ini.receive(&out) {
            Ok((Pdu::LoginResponse(r), _)) => (r.status.class, r.status.detail),
            other => panic!("no login response: {other:?}"),
        }
    }

    fn continued_login(len: usize, cont: bool) -> Vec<u8> {
        let mut data = b"InitiatorName=iqn.2026-11.org.tgt-rs:".to_vec();
        data.resize(len, b'x');
        let pdu = Pdu::LoginRequest(LoginRequest {
            cont,
            csg: Stage::LoginOperational,
            nsg: None,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 9, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: &data,
        });
        let mut out = vec![0u8; len + 128];
        let n = emit_pdu(&pdu, Digests::NONE, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn defaults_are_valid_and_applied_to_the_connection() {
        let l = Limits::default();
        assert_eq!(l.validate(), Ok(()));
        let c = DriverConfig::default().effective_conn();
        assert_eq!(c.queue_depth, 64);
        assert_eq!(c.login_timeout_ms, 15_000);
        assert_eq!(c.nop_interval_ms, 60_000);
        assert_eq!(c.nop_timeout_ms, 15_000);
        assert_eq!(c.login.max_recv_data_segment_length, 256 * 1024);
        let c = DriverConfig::with_limits(Limits {
            max_outstanding_commands: 8,
            login_timeout_ms: 500,
            idle_timeout_ms: 0,
            max_data_segment_bytes: 8192,
            ..Limits::default()
        })
        .effective_conn();
        assert_eq!(
            (
                c.queue_depth,
                c.login_timeout_ms,
                c.nop_interval_ms,
                c.login.max_recv_data_segment_length
            ),
            (8, 500, 0, 8192)
        );
        // Unvalidated values are clamped, never passed through.
        let c = DriverConfig::with_limits(Limits {
            max_outstanding_commands: 100_000,
            max_data_segment_bytes: u32::MAX,
            ..Limits::default()
        })
        .effective_conn();
        assert_eq!(c.queue_depth, Limits::MAX_OUTSTANDING);
        assert_eq!(c.login.max_recv_data_segment_length, MAX_SEGMENT as u32);
    }

    #[test]
    fn validate_names_the_field_and_value() {
        let cases: [(Limits, &str); 6] = [
            (
                Limits {
                    max_connections_per_portal: 0,
                    ..Limits::default()
                },
                "max_connections_per_portal = 0: must be at least 1",
            ),
            (
                Limits {
                    max_sessions_per_target: 1025,
                    ..Limits::default()
                },
                "max_sessions_per_target = 1025: must be in 1..=1024",
            ),
            (
                Limits {
                    max_outstanding_commands: 113,
                    ..Limits::default()
                },
                "max_outstanding_commands = 113: must be in 1..=112",
            ),
            (
                Limits {
                    login_timeout_ms: 0,
                    ..Limits::default()
                },
                "login_timeout_ms = 0: must be above 0",
            ),
            (
                Limits {
                    max_text_bytes: 100,
                    ..Limits::default()
                },
                "max_text_bytes = 100: must be in 512..=65536",
            ),
            (
                Limits {
                    max_data_segment_bytes: 262_145,
                    ..Limits::default()
                },
                "max_data_segment_bytes = 262145: must be in 512..=262144",
            ),
        ];
        for (l, want) in cases {
            assert_eq!(l.validate().unwrap_err().to_string(), want);
        }
        assert_eq!(Limits::MAX_OUTSTANDING, 112);
    }

    #[test]
    fn conn_limiter_counts_per_initiator_and_portal() {
        let lim = ConnLimiter::new(&Limits {
            max_connections_per_portal: 3,
            max_connections_per_initiator: 2,
            ..Limits::default()
        });
        let p1: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        let p2: SocketAddr = "127.0.0.1:3261".parse().unwrap();
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = lim.try_admit(p1, a).unwrap();
        let a2 = lim.try_admit(p1, a).unwrap();
        assert_eq!(lim.try_admit(p1, a).unwrap_err(), ConnRefused::Initiator);
        // The per-initiator count spans portals.
        assert_eq!(lim.try_admit(p2, a).unwrap_err(), ConnRefused::Initiator);
        let b1 = lim.try_admit(p1, b).unwrap();
        assert_eq!(lim.on_portal(p1), 3);
        assert_eq!(lim.try_admit(p1, b).unwrap_err(), ConnRefused::Portal);
        let b2 = lim.try_admit(p2, b).unwrap();
        assert_eq!((lim.from_initiator(a), lim.from_initiator(b)), (2, 2));
        drop(a1);
        assert_eq!(lim.from_initiator(a), 1);
        assert_eq!(lim.on_portal(p1), 2);
        let a3 = lim.try_admit(p1, a).unwrap();
        drop((a2, a3, b1, b2));
        assert_eq!((lim.on_portal(p1), lim.on_portal(p2)), (0, 0));
        assert_eq!(lim.from_initiator(a), 0);
    }

    #[test]
    fn sessions_per_target_limit_refuses_login_with_0301() {
        let reg = registry();
        let limits = Limits {
            max_sessions_per_target: 1,
            ..Limits::default()
        };
        let mut a = driver(&reg, limits, 1000);
        assert_eq!(login(&mut a, 1), (0, 0));
        let mut b = driver(&reg, limits, 1001);
        assert_eq!(login(&mut b, 2), (3, 1), "service unavailable");
        drop(b);
        drop(a);
        let mut c = driver(&reg, limits, 1002);
        assert_eq!(login(&mut c, 3), (0, 0), "the place is free again");
    }

    #[test]
    fn text_sequence_beyond_max_text_bytes_closes() {
        let reg = registry();
        let limits = Limits {
            max_text_bytes: 1024,
            ..Limits::default()
        };
        // One PDU over the limit: closed before the login machine sees it.
        let mut d = driver(&reg, limits, 1000);
        let (st, out) = feed(&mut d, &continued_login(1100, false));
        assert_eq!(st, InputStatus::Closed);
        assert!(out.is_empty());
        // The same PDU under the default limit gets a Login Response.
        let mut d = driver(&reg, Limits::default(), 1003);
        let (_, out) = feed(&mut d, &continued_login(1100, false));
        assert!(!out.is_empty());
        // A chain that grows over it: the first part is taken, the second closes.
        let mut d = driver(&reg, limits, 1001);
        let (st, _) = feed(&mut d, &continued_login(700, true));
        assert_eq!(st, InputStatus::NeedMore);
        assert!(!d.is_closed());
        let (st, out) = feed(&mut d, &continued_login(700, true));
        assert_eq!(st, InputStatus::Closed);
        assert!(out.is_empty());
        // Under the limit: a normal login.
        let mut d = driver(&reg, limits, 1002);
        assert_eq!(login(&mut d, 4), (0, 0));
    }

    #[test]
    fn oversized_data_segment_closes_from_the_header() {
        let reg = registry();
        let limits = Limits {
            max_data_segment_bytes: 4096,
            ..Limits::default()
        };
        // A header declaring 8 KiB: closed before any data arrives.
        let mut hdr = continued_login(8192, false);
        hdr.truncate(48);
        let mut d = driver(&reg, limits, 1000);
        let (st, out) = feed(&mut d, &hdr);
        assert_eq!(st, InputStatus::Closed);
        assert!(out.is_empty());
        // 2 KiB declared, header only: waits for the data.
        let mut hdr = continued_login(2048, false);
        hdr.truncate(48);
        let mut d = driver(&reg, limits, 1001);
        let (st, _) = feed(&mut d, &hdr);
        assert_eq!(st, InputStatus::NeedMore);
        assert!(!d.is_closed());
        // In full feature phase: MaxRecvDataSegmentLength is 4096 now.
        let mut d = driver(&reg, limits, 1002);
        let mut ini = Initiator::new([0x80, 0, 0, 0, 9, 5], 1);
        let (_, out) = feed(&mut d, &login_request(&mut ini));
        let Ok((Pdu::LoginResponse(r), _)) = ini.receive(&out) else {
            panic!("login")
        };
        assert_eq!(r.status.class, 0);
        assert_eq!(find_key(r.data, "MaxRecvDataSegmentLength"), Some("4096"));
        let mut pdu = vec![0u8; 128];
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0];
        let (_, n) = ini
            .command(&mut pdu, &CommandSpec::write(0, &cdb, 8192, &[]))
            .unwrap();
        pdu.truncate(n);
        // DataSegmentLength (bytes 5..8) = 8192 without the data: closed at once.
        pdu[5..8].copy_from_slice(&[0, 0x20, 0]);
        let (st, _) = feed(&mut d, &pdu);
        assert_eq!(st, InputStatus::Closed);
    }

    #[test]
    fn idle_connection_is_pinged_then_closed() {
        let reg = registry();
        let limits = Limits {
            idle_timeout_ms: 1000,
            ping_timeout_ms: 500,
            ..Limits::default()
        };
        let mut d = driver(&reg, limits, 1000);
        let mut ini = Initiator::new([0x80, 0, 0, 0, 9, 6], 1);
        let (_, out) = feed(&mut d, &login_request(&mut ini));
        assert!(matches!(ini.receive(&out), Ok((Pdu::LoginResponse(_), _))));
        // Logged in at t=1: the ping is due at 1001.
        assert_eq!(d.poll_timeout(), Some(Timestamp(1001)));
        d.handle_timeout(Timestamp(1001));
        let mut out = Vec::new();
        d.transmit_into(Timestamp(1001), &mut out);
        let Ok((Pdu::NopIn(n), _)) = ini.receive(&out) else {
            panic!("no NOP-In ping: {out:?}")
        };
        assert_eq!(n.itt, 0xffff_ffff);
        assert_ne!(n.ttt, 0xffff_ffff, "a ping asks for an answer");
        assert_eq!(d.poll_timeout(), Some(Timestamp(1501)));
        d.handle_timeout(Timestamp(1501));
        assert!(d.is_closed(), "unanswered ping closes");
        // With idle pings off there is no timer after login.
        let mut d = driver(
            &reg,
            Limits {
                idle_timeout_ms: 0,
                ..Limits::default()
            },
            1001,
        );
        let mut ini = Initiator::new([0x80, 0, 0, 0, 9, 7], 1);
        let (_, out) = feed(&mut d, &login_request(&mut ini));
        assert!(matches!(ini.receive(&out), Ok((Pdu::LoginResponse(_), _))));
        assert_eq!(d.poll_timeout(), None);
    }

    /// Logs in with a fixed ISID (to reinstate) and returns the initiator.
    fn login_isid(d: &mut Driver, isid: [u8; 6]) -> Initiator {
        let mut ini = Initiator::new(isid, 1);
        let (_, out) = feed(d, &login_request(&mut ini));
        assert!(matches!(ini.receive(&out), Ok((Pdu::LoginResponse(r), _)) if r.status.class == 0));
        // Consume the unit attention of the new nexus.
        let mut pdu = vec![0u8; 128];
        let (_, n) = ini
            .command(&mut pdu, &CommandSpec::read(0, &[0; 6], 0))
            .unwrap();
        let (_, out) = feed(d, &pdu[..n]);
        assert!(matches!(ini.receive(&out), Ok((Pdu::ScsiResponse(_), _))));
        ini
    }

    /// A WRITE(10) of one block awaiting its R2T; returns (itt, ttt).
    fn write_to_r2t(d: &mut Driver, ini: &mut Initiator) -> (u32, u32) {
        let mut pdu = vec![0u8; 128];
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let (itt, n) = ini
            .command(&mut pdu, &CommandSpec::write(0, &cdb, 512, &[]))
            .unwrap();
        let (_, out) = feed(d, &pdu[..n]);
        let Ok((Pdu::R2t(r), _)) = ini.receive(&out) else {
            panic!("no R2T: {out:?}")
        };
        (itt, r.ttt)
    }

    #[test]
    fn a_reinstated_session_does_not_abort_the_new_sessions_tasks() {
        // The old session has a WRITE waiting for data when the same initiator port logs
        // in again; the new session's first command uses the same ITT (initiators restart
        // their tags). The old connection closing must not take the new task with it.
        let reg = registry();
        let isid = [0x80, 0, 0, 0, 0x42, 1];
        let mut old = driver(&reg, Limits::default(), 2000);
        let mut old_ini = login_isid(&mut old, isid);
        let (old_itt, _) = write_to_r2t(&mut old, &mut old_ini);
        let mut new = driver(&reg, Limits::default(), 2001);
        let mut ini = login_isid(&mut new, isid);
        let (itt, ttt) = write_to_r2t(&mut new, &mut ini);
        assert_eq!(itt, old_itt, "the same tag on the same I_T nexus");
        // The old connection notices it was killed and goes away.
        old.handle_wake(Timestamp(2));
        assert!(old.is_closed());
        drop(old);
        // The new session's write completes.
        let mut pdu = vec![0u8; 1024];
        let n = ini
            .data_out(&mut pdu, itt, ttt, 0, 0, 0, &[0x5a; 512], true)
            .unwrap();
        let (_, out) = feed(&mut new, &pdu[..n]);
        let Ok((Pdu::ScsiResponse(r), _)) = ini.receive(&out) else {
            panic!("the new session's WRITE got no response: {out:?}")
        };
        assert_eq!((r.itt, r.status), (itt, 0));
    }

    /// Feeds `stream` the way runtime-mio does: asks [`Driver::rx_target`] where each read
    /// goes and reads at most `sizes()` bytes there. Returns the bytes that went straight
    /// into task buffers and what the driver sent back.
    fn pump(d: &mut Driver, stream: &[u8], sizes: &mut dyn FnMut() -> usize) -> (usize, Vec<u8>) {
        let now = Timestamp(1);
        let (mut pending, mut pos, mut placed, mut out) = (Vec::new(), 0, 0, Vec::new());
        while pos < stream.len() {
            let n = sizes().clamp(1, stream.len() - pos);
            match d.rx_target(&pending) {
                RxTarget::Task(dst) => {
                    assert!(!dst.is_empty());
                    let k = n.min(dst.len());
                    dst[..k].copy_from_slice(&stream[pos..pos + k]);
                    pos += k;
                    placed += k;
                    d.placed(now, k, &mut pending);
                }
                RxTarget::Buffer(max) => {
                    let k = n.min(max);
                    d.handle_read(now, &mut pending, &stream[pos..pos + k]);
                    pos += k;
                }
            }
            d.run_io_inline(now);
            d.transmit_into(now, &mut out);
        }
        while !pending.is_empty() && d.handle_input(now, &mut pending) == InputStatus::Blocked {
            d.transmit_into(now, &mut out);
        }
        d.run_io_inline(now);
        d.transmit_into(now, &mut out);
        (placed, out)
    }

    #[test]
    fn large_data_segments_are_received_in_place_whatever_the_read_sizes() {
        let store = Arc::new(MemoryStore::new(4 << 20, 512).unwrap());
        let reg = crate::TargetBuilder::new(NAME)
            .lun(0, store.clone())
            .build()
            .unwrap();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Read sizes from 1 byte to more than a whole PDU; some runs of tiny reads.
        let mut sizes = move || match next() % 8 {
            0 => 1 + (next() % 7) as usize,
            1 => 48,
            _ => 1 + (next() % 100_000) as usize,
        };
        let mut d = driver(&reg, Limits::default(), 2100);
        let mut ini = login_isid(&mut d, [0x80, 0, 0, 0, 0x43, 1]);
        let (edtl, imm) = (160 * 1024u32, 64 * 1024usize);
        let mut total_placed = 0;
        for round in 0..12u32 {
            let data: Vec<u8> = (0..edtl)
                .map(|i| (i * 31 + round * 7) as u8 ^ (i >> 9) as u8)
                .collect();
            let lba = round * 320;
            let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&((edtl / 512) as u16).to_be_bytes());
            let mut pdu = vec![0u8; 300 * 1024];
            let (itt, n) = ini
                .command(&mut pdu, &CommandSpec::write(0, &cdb, edtl, &data[..imm]))
                .unwrap();
            let (placed, out) = pump(&mut d, &pdu[..n], &mut sizes);
            total_placed += placed;
            let Ok((Pdu::R2t(r), _)) = ini.receive(&out) else {
                panic!("no R2T: {out:?}")
            };
            assert_eq!(
                (r.buffer_offset as usize, r.desired_len),
                (imm, edtl - imm as u32)
            );
            // Two Data-Outs (64 KiB, then 32 KiB), sent back to back.
            let mut stream = Vec::new();
            for (sn, (off, len)) in [(imm, 64 * 1024), (imm + 64 * 1024, 32 * 1024)]
                .into_iter()
                .enumerate()
            {
                let fin = off + len == edtl as usize;
                let m = ini
                    .data_out(
                        &mut pdu,
                        itt,
                        r.ttt,
                        0,
                        sn as u32,
                        off as u32,
                        &data[off..off + len],
                        fin,
                    )
                    .unwrap();
                stream.extend_from_slice(&pdu[..m]);
            }
            let (placed, out) = pump(&mut d, &stream, &mut sizes);
            total_placed += placed;
            let Ok((Pdu::ScsiResponse(rsp), _)) = ini.receive(&out) else {
                panic!("no response: {out:?}")
            };
            assert_eq!((rsp.itt, rsp.status), (itt, 0), "round {round}");
            let mut back = vec![0u8; edtl as usize];
            store.read_at(&mut back, u64::from(lba) * 512).unwrap();
            assert!(back == data, "round {round}: the data on the LUN differs");
        }
        // Most of the 1.9 MiB went straight into task buffers.
        assert!(
            total_placed > 12 * 120 * 1024,
            "only {total_placed} bytes placed"
        );
    }

    #[test]
    fn a_data_out_out_of_order_is_not_placed_and_fails_its_task() {
        let store = Arc::new(MemoryStore::new(1 << 20, 512).unwrap());
        store.write_at(&[0xee; 65536], 0, false).unwrap();
        let reg = crate::TargetBuilder::new(NAME)
            .lun(0, store.clone())
            .build()
            .unwrap();
        let mut d = driver(&reg, Limits::default(), 2101);
        let mut ini = login_isid(&mut d, [0x80, 0, 0, 0, 0x43, 2]);
        let mut pdu = vec![0u8; 128 * 1024];
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 128, 0];
        let (itt, n) = ini
            .command(&mut pdu, &CommandSpec::write(0, &cdb, 65536, &[]))
            .unwrap();
        let (_, out) = pump(&mut d, &pdu[..n], &mut || 48);
        let Ok((Pdu::R2t(r), _)) = ini.receive(&out) else {
            panic!("no R2T")
        };
        // DataSN 1 where 0 is due: the connection refuses it, so no byte may be placed.
        let m = ini
            .data_out(&mut pdu, itt, r.ttt, 0, 1, 0, &[0x11; 65536], true)
            .unwrap();
        let (placed, out) = pump(&mut d, &pdu[..m], &mut || 48);
        assert_eq!(placed, 0);
        let Ok((Pdu::ScsiResponse(rsp), _)) = ini.receive(&out) else {
            panic!("no response: {out:?}")
        };
        assert_eq!((rsp.itt, rsp.status), (itt, 2), "CHECK CONDITION");
        let mut back = vec![0u8; 65536];
        store.read_at(&mut back, 0).unwrap();
        assert!(
            back.iter().all(|&b| b == 0xee),
            "the refused data reached the LUN"
        );
    }

    #[test]
    fn placing_immediate_data_allocates_for_the_segment_not_the_declared_length() {
        let reg = registry();
        let mut d = driver(&reg, Limits::default(), 2102);
        let mut ini = login_isid(&mut d, [0x80, 0, 0, 0, 0x43, 3]);
        // EDTL 60 MiB, 64 KiB of immediate data: only the header and half the data arrive.
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
        let imm = vec![0x3cu8; 64 * 1024];
        let mut pdu = vec![0u8; 80 * 1024];
        let (_, n) = ini
            .command(&mut pdu, &CommandSpec::write(0, &cdb, 60 << 20, &imm))
            .unwrap();
        let mut pending = Vec::new();
        d.handle_read(Timestamp(1), &mut pending, &pdu[..n / 2]);
        assert!(
            pending.is_empty() && d.place.is_some(),
            "placing the immediate data"
        );
        assert!(
            d.stage.len() <= imm.len(),
            "stage of {} bytes",
            d.stage.len()
        );
    }
}

#[cfg(test)]
mod join_tests {
    use std::io::IoSlice;
    use std::sync::Mutex;

    use backstore::{BackingStore, MemoryStore, StoreError};
    use scsi_core::{IoOp, IoResult};

    use super::*;
    use crate::exec::tests::req;
    use crate::registry::Registry;

    /// A memory store that asks for its writes one at a time, logs every vectored write
    /// (offset, piece lengths) and fails any write that touches `bad`.
    #[derive(Default)]
    struct Laned {
        mem: Option<MemoryStore>,
        vectored: Mutex<Vec<(u64, Vec<usize>)>>,
        bad: Mutex<Option<u64>>,
    }

    impl Laned {
        fn mem(&self) -> &MemoryStore {
            self.mem.as_ref().expect("store")
        }
        fn check(&self, offset: u64, len: u64) -> Result<(), StoreError> {
            match *self.bad.lock().unwrap() {
                Some(b) if (offset..offset + len).contains(&b) => Err(StoreError::IO),
                _ => Ok(()),
            }
        }
    }

    impl BackingStore for Laned {
        fn size(&self) -> u64 {
            self.mem().size()
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
            self.mem().read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
            self.check(offset, buf.len() as u64)?;
            self.mem().write_at(buf, offset, fua)
        }
        fn write_vectored_at(
            &self,
            bufs: &[IoSlice<'_>],
            offset: u64,
        ) -> Result<usize, StoreError> {
            self.vectored
                .lock()
                .unwrap()
                .push((offset, bufs.iter().map(|b| b.len()).collect()));
            let total = bufs.iter().map(|b| b.len() as u64).sum();
            self.check(offset, total)?;
            self.mem().write_vectored_at(bufs, offset)
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn serializes_writes(&self) -> bool {
            true
        }
    }

    fn backend(store: Arc<dyn BackingStore>) -> Arc<LunBackend> {
        Arc::new(LunBackend::for_test("test", store, false))
    }

    fn laned() -> (Arc<Laned>, Arc<LunBackend>) {
        let store = Arc::new(Laned {
            mem: Some(MemoryStore::new(1 << 20, 512).unwrap()),
            ..Laned::default()
        });
        let b = backend(store.clone());
        (store, b)
    }

    fn target() -> Arc<TargetNode> {
        let reg = Registry::new();
        reg.add_target(reg.new_target(1, "iqn.2026-11.org.tgt-rs:join"))
            .unwrap()
    }

    /// A write of `blocks` at `lba` whose data is `fill` repeated.
    fn write(b: &Arc<LunBackend>, lba: u64, blocks: u64, fill: u8) -> IoJob {
        let buf = vec![fill; blocks as usize * 512];
        IoJob::for_test(req(IoOp::Write, lba, blocks), b.clone(), target(), buf)
    }

    fn read_back(store: &Laned, lba: u64, blocks: u64) -> Vec<u8> {
        let mut v = vec![0; blocks as usize * 512];
        store.read_at(&mut v, lba * 512).unwrap();
        v
    }

    fn joinable(jobs: &[IoJob]) -> bool {
        (1..jobs.len()).all(|i| IoJob::joins(&jobs[..i], &jobs[i]))
    }

    #[test]
    fn contiguous_writes_of_a_lane_go_out_as_one_call() {
        let (store, b) = laned();
        let mut jobs = vec![write(&b, 0, 8, 1), write(&b, 8, 8, 2), write(&b, 16, 4, 3)];
        assert!(joinable(&jobs));
        IoJob::run_joined(&mut jobs);
        assert_eq!(
            *store.vectored.lock().unwrap(),
            vec![(0, vec![4096, 4096, 2048])]
        );
        for j in &jobs {
            assert_eq!(j.answer(), Some(IoAnswer::Complete(IoResult::Ok)));
        }
        assert!(read_back(&store, 0, 8).iter().all(|&x| x == 1));
        assert!(read_back(&store, 8, 8).iter().all(|&x| x == 2));
        assert!(read_back(&store, 16, 4).iter().all(|&x| x == 3));
        assert!(read_back(&store, 20, 1).iter().all(|&x| x == 0));
    }

    #[test]
    fn only_plain_contiguous_writes_of_one_lane_join() {
        let (_, b) = laned();
        let (_, other) = laned();
        let plain = backend(Arc::new(MemoryStore::new(1 << 20, 512).unwrap()));
        let first = [write(&b, 8, 8, 1)];
        assert!(IoJob::joins(&first, &write(&b, 16, 1, 0)), "continues it");
        assert!(!IoJob::joins(&first, &write(&b, 17, 1, 0)), "a gap");
        assert!(!IoJob::joins(&first, &write(&b, 15, 1, 0)), "overlaps");
        assert!(!IoJob::joins(&first, &write(&b, 0, 8, 0)), "before it");
        assert!(
            !IoJob::joins(&first, &write(&other, 16, 1, 0)),
            "another LUN"
        );
        assert!(!IoJob::joins(&[], &write(&b, 16, 1, 0)), "nothing to join");
        let mut fua = write(&b, 16, 1, 0);
        fua.req.fua = true;
        assert!(!IoJob::joins(&first, &fua), "FUA");
        let read = IoJob::for_test(req(IoOp::Read, 16, 1), b.clone(), target(), vec![0; 512]);
        assert!(!IoJob::joins(&first, &read), "a read");
        let short = IoJob::for_test(req(IoOp::Write, 16, 2), b.clone(), target(), vec![0; 512]);
        assert!(
            !IoJob::joins(&first, &short),
            "data shorter than the request"
        );
        let unlaned = [write(&plain, 0, 1, 0)];
        assert!(!IoJob::joins(&unlaned, &write(&plain, 1, 1, 0)), "no lane");
        // Bounded in jobs and in bytes.
        let many: Vec<IoJob> = (0..JOIN_MAX as u64).map(|i| write(&b, i, 1, 0)).collect();
        assert!(joinable(&many));
        assert!(!IoJob::joins(&many, &write(&b, JOIN_MAX as u64, 1, 0)));
        let big = JOIN_MAX_BYTES / 512 / 2;
        let two = [write(&b, 0, big, 0), write(&b, big, big, 0)];
        assert!(joinable(&two));
        assert!(!IoJob::joins(&two, &write(&b, 2 * big, 1, 0)));
    }

    #[test]
    fn a_failed_joined_write_gives_each_job_its_own_status() {
        let (store, b) = laned();
        *store.bad.lock().unwrap() = Some(8 * 512 + 100);
        let mut jobs = vec![write(&b, 0, 8, 1), write(&b, 8, 8, 2), write(&b, 16, 4, 3)];
        IoJob::run_joined(&mut jobs);
        assert_eq!(
            store.vectored.lock().unwrap().len(),
            1,
            "tried joined first"
        );
        let answers: Vec<_> = jobs.iter().map(IoJob::answer).collect();
        assert_eq!(
            answers,
            [IoResult::Ok, IoResult::WriteError, IoResult::Ok].map(|r| Some(IoAnswer::Complete(r)))
        );
        assert!(read_back(&store, 0, 8).iter().all(|&x| x == 1));
        assert!(
            read_back(&store, 8, 8).iter().all(|&x| x == 0),
            "failed: untouched"
        );
        assert!(read_back(&store, 16, 4).iter().all(|&x| x == 3));
    }

    #[test]
    fn a_batch_that_does_not_hold_together_runs_job_by_job() {
        let (store, b) = laned();
        let mut jobs = vec![write(&b, 0, 2, 1), write(&b, 4, 2, 2)];
        assert!(!joinable(&jobs));
        IoJob::run_joined(&mut jobs);
        assert!(store.vectored.lock().unwrap().is_empty());
        assert!(read_back(&store, 0, 2).iter().all(|&x| x == 1));
        assert!(read_back(&store, 2, 2).iter().all(|&x| x == 0));
        assert!(read_back(&store, 4, 2).iter().all(|&x| x == 2));
        for j in &jobs {
            assert_eq!(j.answer(), Some(IoAnswer::Complete(IoResult::Ok)));
        }
        IoJob::run_joined(&mut []);
    }
}
