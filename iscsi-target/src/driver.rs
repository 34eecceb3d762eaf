//! The per-connection driver: joins one `iscsi-proto` [`Connection`] to the scsi-core target
//! it logged in to, and to the LUNs' backing stores. Runtimes only move bytes and run I/O:
//!
//! 1. [`Driver::handle_input`] with the bytes read from the socket (it consumes whole PDUs
//!    and leaves a partial one in the buffer);
//! 2. [`Driver::poll_io`] for I/O jobs; run each ([`IoJob::run`] synchronously, here or on
//!    a worker thread) and hand it back with [`Driver::io_done`];
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
    ScsiStatus, TaskData, TaskHandle, TaskMgmt, Timestamp, Transmit,
};
use iscsi_proto::wire::{LogoutResponseCode, TaskAttr as WireAttr, TmfFunction, TmfResponse};
use scsi_core::{
    Action, DataDirection, IoRequest, Lun, NexusId, TargetAction, TaskAttr, TaskId, TaskTag,
};

use crate::exec::{IoAnswer, IoCallbacks, execute, execute_copy};
use crate::registry::{IoKind, LunBackend, Registry, ScsiTarget, SessionRecord, TargetNode, Wake};

/// Task slots per connection (the connection's task table).
pub const TASKS: usize = 128;
/// Largest data segment we accept and the largest PDU header + owned data we emit.
pub const BUF: usize = 256 * 1024;
/// Largest data buffer one command may use (bigger transfers are refused by scsi-core's
/// transfer length limits, which are below this).
pub const MAX_TASK_BUFFER: usize = 64 << 20;

/// Connection settings a runtime passes to every driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Protocol limits and timers.
    pub conn: ConnConfig,
}

impl Default for DriverConfig {
    fn default() -> Self {
        let mut conn = ConnConfig::default();
        conn.login.max_recv_data_segment_length = 256 * 1024;
        conn.login.max_burst_length = 1 << 20;
        conn.login.first_burst_length = 256 * 1024;
        conn.queue_depth = 64;
        DriverConfig { conn }
    }
}

/// A block I/O to perform for a task. It owns the task's buffers while it runs.
pub struct IoJob {
    /// The request from scsi-core.
    pub req: IoRequest,
    /// The LUN's storage.
    pub backend: Arc<LunBackend>,
    /// For EXTENDED COPY: the source LUN's storage (`backend` is the destination's).
    copy_src: Option<Arc<LunBackend>>,
    slot: usize,
    lun: Lun,
    /// The target and nexus the task belongs to: the answer goes back to scsi-core even if
    /// the connection has closed meanwhile, so the task's slot there is freed.
    target: Arc<TargetNode>,
    nexus: NexusId,
    buf: Vec<u8>,
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

    fn finish(&mut self, a: IoAnswer, start: std::time::Instant) {
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
}

impl Slot {
    fn reset(&mut self, handle: TaskHandle) {
        self.handle = Some(handle);
        self.itt = 0;
        self.lun = Lun(0);
        self.buf.clear();
        self.read_len = 0;
        self.write_len = 0;
        self.data_in = 0;
        self.need_out = None;
        self.out_complete = false;
        self.in_io = false;
        self.dead = false;
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
    conn: Box<Connection<TASKS, BUF>>,
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
        let mut conn_cfg = cfg.conn.clone();
        conn_cfg.login.target_portal_group_tag = registry.tpgt;
        Driver {
            conn: Box::new(Connection::new(conn_cfg, random_challenge(), now)),
            ctx: Ctx {
                registry,
                peer,
                local,
            },
            slots: (0..TASKS).map(|_| Slot::default()).collect(),
            bound: None,
            actions: VecDeque::new(),
            jobs: VecDeque::new(),
            wake,
            kill: Arc::new(AtomicBool::new(false)),
            logout_req: Arc::new(AtomicU32::new(0)),
            hdr: vec![0u8; BUF + 64],
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
        // A kill (reinstatement, cold reset, admin) also takes effect here, not only on the
        // next wake-up: an initiator that keeps the socket busy must not outrun it.
        self.take_kill();
        let mut start = 0usize;
        let mut status = InputStatus::NeedMore;
        while !self.conn.is_closed() && start < rx.len() {
            match self.conn.handle_input(now, &rx[start..], &mut self.ctx) {
                Ok(Ingress::Data {
                    consumed,
                    task,
                    offset,
                    data,
                }) => {
                    let slot = &mut self.slots[task.index()];
                    if slot.handle != Some(task) {
                        slot.reset(task);
                    }
                    let off = offset as usize;
                    let end = off.saturating_add(data.len());
                    if end <= MAX_TASK_BUFFER && !slot.in_io {
                        if slot.buf.len() < end {
                            slot.buf.resize(end, 0);
                        }
                        slot.buf[off..end].copy_from_slice(data);
                    }
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
            self.process(now);
        }
        rx.drain(..start);
        self.process(now);
        if self.conn.is_closed() {
            InputStatus::Closed
        } else {
            status
        }
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
        match self.conn.poll_transmit(now, &mut self.hdr) {
            Ok(Some(Transmit { len, data, .. })) => Some(Outgoing {
                header_len: len,
                data,
            }),
            Ok(None) => None,
            Err(e) => {
                log::error!("transmit buffer too small: {e:?}");
                self.conn.close();
                None
            }
        }
    }

    /// The header bytes of the last [`Driver::poll_transmit`].
    pub fn header_buf(&self) -> &[u8] {
        &self.hdr
    }

    /// The bytes of a task's buffer a Data-In carries.
    pub fn task_data(&self, d: &TaskData) -> &[u8] {
        let buf = &self.slots[d.task.index()].buf;
        let start = (d.offset as usize).min(buf.len());
        let end = start.saturating_add(d.len as usize).min(buf.len());
        &buf[start..end]
    }

    /// Appends every pending PDU to `out` (copying task data): the simple output path.
    pub fn transmit_into(&mut self, now: Timestamp, out: &mut Vec<u8>) {
        while let Some(o) = self.poll_transmit(now) {
            out.extend_from_slice(&self.hdr[..o.header_len]);
            if let Some(d) = o.data {
                let data = self.task_data(&d);
                out.extend_from_slice(data);
                let trailer = d.trailer(data);
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

    fn unbind(&mut self) {
        if let Some(b) = self.bound.take() {
            let registry = &self.ctx.registry;
            registry.unregister_session(b.tsih, b.nexus, self.ctx.peer);
            if registry.nexus_in_use(b.target.tid, b.nexus) {
                // Reinstated: a newer session of the same initiator port owns the I_T nexus
                // now. Only this connection's own tasks go; the nexus state stays.
                let mut g = b.target.scsi();
                for s in self.slots.iter().filter(|s| s.handle.is_some() && !s.dead) {
                    let task = TaskId {
                        nexus: b.nexus,
                        tag: TaskTag(s.itt),
                    };
                    let _ = g.target().abort_task(s.lun, task);
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
                if let Some(b) = &self.bound {
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
        if slot.buf.len() < need as usize {
            slot.buf.resize(need as usize, 0);
        }
        let mut g = b.target.scsi();
        let _ = g
            .target()
            .data_out_ready(lun, task, &slot.buf[..need as usize]);
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
                if slot.buf.len() < need {
                    slot.buf.resize(need, 0);
                }
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
                    let mut g = b.target.scsi();
                    let _ = g
                        .target()
                        .complete_io(a.lun, task, scsi_core::IoResult::NotReady);
                    g.drain_actions(b.nexus, &mut self.actions);
                    return;
                };
                let slot = &mut self.slots[i];
                let need = match req.op {
                    scsi_core::IoOp::Read => usize::try_from(req.byte_len()).unwrap_or(usize::MAX),
                    _ => 0,
                };
                if need > MAX_TASK_BUFFER {
                    let mut g = b.target.scsi();
                    let _ = g
                        .target()
                        .complete_io(a.lun, task, scsi_core::IoResult::Failed);
                    g.drain_actions(b.nexus, &mut self.actions);
                    return;
                }
                if slot.buf.len() < need {
                    slot.buf.resize(need, 0);
                }
                if matches!(req.op, scsi_core::IoOp::Read) {
                    slot.data_in = req.transfer_len.min(slot.read_len);
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

fn abort_conn_tasks(conn: &mut Connection<TASKS, BUF>, slots: &mut [Slot], lun: Option<Lun>) {
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
