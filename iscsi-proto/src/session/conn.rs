//! The target-side connection state machine.

use heapless::{Deque, Vec};

use crate::login::discovery::{TargetInfo, TextExchange, TextHeader};
use crate::login::{
    ChapChallenge, Digest, LoginConfig, LoginHeader, LoginHooks, LoginMachine, LoginOutcome,
    LoginPhase, LoginReply, SessionParams, SessionType,
};
use crate::storage::Storage;
use crate::wire::{
    self, AsyncEvent, AsyncMessage, BHS_LEN, DataIn, DataInFlags, DataOut, Digests, Error,
    LoginRequest, LoginResponse, LoginStatus, LogoutReason, LogoutRequest, LogoutResponse,
    LogoutResponseCode, NopIn, NopOut, Pdu, R2t, Reject, RejectReason, ResponseFlags, ScsiCommand,
    ScsiCommandFlags, ScsiResponse, ScsiResponseCode, Stage, Status, TaskMgmtRequest,
    TaskMgmtResponse, TextFlags, TextRequest, TextResponse, TmfFunction, TmfResponse,
};

use super::error::{BufferTooSmall, CloseReason, ConnError, StateError, TaskError};
use super::event::{
    Cdb, Command, Event, Ingress, Logout, TaskData, TaskFailure, TaskMgmt, Transmit,
};
use super::task::{
    DataOutError, Direction, MAX_SENSE_LEN, PendingResponse, RESERVED_TAG, Residual, ScsiStatus,
    Task, TaskHandle, TaskTable, WriteSetup,
};
use super::time::{Timer, Timestamp, earliest};
use super::window::{CmdSnCheck, CmdWindow};

/// Capacity of the event queue.
pub const EVENT_QUEUE: usize = 16;
/// Capacity of the queue of control PDUs (responses that are not task data).
pub const CONTROL_QUEUE: usize = 16;
/// Task Management requests that may await the runtime's answer at once.
pub const MAX_PENDING_TMF: usize = 4;

/// Events one input PDU can produce at most (Command, DataOutComplete, TaskFailed).
const EVENTS_PER_PDU: usize = 3;
/// Control PDUs one input PDU can queue at most.
const CONTROL_PER_PDU: usize = 2;

/// SCSI status TASK SET FULL.
const STATUS_TASK_SET_FULL: u8 = 0x28;
/// SCSI status CHECK CONDITION.
const STATUS_CHECK_CONDITION: u8 = 0x02;

/// What the runtime provides to a connection while it handles input: the login hooks
/// (target lookup, access control, CHAP accounts, new TSIHs) and the target list for
/// SendTargets.
pub trait Hooks: LoginHooks {
    /// Call `f` with the targets `initiator_name` may discover (already filtered by access
    /// control), for a SendTargets Text Request.
    fn with_targets(&mut self, initiator_name: &str, f: &mut dyn FnMut(&[TargetInfo<'_>]));
}

/// Configuration of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Login negotiation limits and defaults.
    pub login: LoginConfig,
    /// Non-immediate commands the session admits at once (the CmdSN window; at most
    /// [`MAX_QUEUE_DEPTH`](super::MAX_QUEUE_DEPTH)). Keep it below the task table capacity
    /// so immediate commands find a slot too.
    pub queue_depth: u32,
    /// The whole login must complete within this many milliseconds.
    pub login_timeout_ms: u64,
    /// Send a NOP-In ping after this many milliseconds without input (0: never).
    pub nop_interval_ms: u64,
    /// Close the connection when a ping is not answered within this many milliseconds.
    pub nop_timeout_ms: u64,
    /// After asking the initiator to log out (Asynchronous Message), close the connection
    /// this many milliseconds after the deadline given to it.
    pub logout_grace_ms: u64,
}

impl Default for ConnConfig {
    fn default() -> ConnConfig {
        ConnConfig {
            login: LoginConfig::default(),
            queue_depth: 32,
            login_timeout_ms: 15_000,
            nop_interval_ms: 0,
            nop_timeout_ms: 30_000,
            logout_grace_ms: 5_000,
        }
    }
}

/// Session-wide state: what a multi-connection session would share between its
/// connections (today each session has one connection, MaxConnections=1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionState {
    /// The CmdSN window.
    pub window: CmdWindow,
    /// TSIH.
    pub tsih: u16,
    /// ISID.
    pub isid: [u8; 6],
    /// Normal or discovery.
    pub session_type: SessionType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// Sending the last PDUs (login failure, logout response), then closed.
    Draining(CloseReason),
    Closed(CloseReason),
}

/// A queued control PDU. PDUs with data the connection owns keep it in `inline`.
#[derive(Clone, Copy, Debug)]
enum Ctrl {
    Login {
        reply: LoginReply,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
    },
    Text {
        itt: u32,
        ttt: u32,
        lun: u64,
        final_bit: bool,
        cont: bool,
        len: usize,
    },
    NopEcho {
        itt: u32,
        lun: u64,
        len: usize,
    },
    NopPing {
        ttt: u32,
    },
    Reject {
        reason: RejectReason,
        header: [u8; BHS_LEN],
    },
    Status {
        itt: u32,
        status: u8,
    },
    Tmf {
        itt: u32,
        response: TmfResponse,
    },
    Logout {
        itt: u32,
        response: LogoutResponseCode,
        close: bool,
    },
    Async {
        event: AsyncEvent,
        parameter3: u16,
    },
}

impl Ctrl {
    /// Whether this PDU's data lives in the connection's inline buffer (which is then busy
    /// until the PDU is written).
    fn uses_inline(&self) -> bool {
        match self {
            Ctrl::Login { .. } | Ctrl::Text { .. } => true,
            Ctrl::NopEcho { len, .. } => *len > 0,
            _ => false,
        }
    }
}

/// One iSCSI connection, target side: login, then full feature phase.
///
/// `TASKS` is the task table capacity (commands in flight on this connection), `BUF` the
/// size of the buffer for data the connection owns (login and text responses, NOP-In echo
/// data) and the bound on one login / text request. `B` holds those buffers and `T` the
/// task table: fixed-capacity inside the connection by default, or heap-backed storage of
/// the runtime's that holds memory only while in use ([`crate::storage`]). See the
/// [module docs](super) for the call order.
pub struct Connection<
    const TASKS: usize = 64,
    const BUF: usize = 8192,
    B = heapless::Vec<u8, BUF>,
    T = heapless::Vec<Task, TASKS>,
> {
    config: ConnConfig,
    phase: Phase,
    closed_reported: bool,
    login: LoginMachine<BUF, B>,
    login_timer: Timer,
    /// ExpCmdSN / MaxCmdSN during login (from the login requests' CmdSN).
    login_cmd_sn: u32,
    stat_sn_started: bool,
    session: Option<SessionState>,
    params: SessionParams,
    digests: Digests,
    stat_sn: u32,
    exp_stat_sn: u32,
    tasks: TaskTable<TASKS, T>,
    ready: Deque<u16, TASKS>,
    ctrl: Deque<Ctrl, CONTROL_QUEUE>,
    events: Deque<Event, EVENT_QUEUE>,
    /// Data of the control PDU in flight (login, text, NOP echo). Sized on use: an idle
    /// connection has touched only what its login needed.
    inline: B,
    inline_busy: bool,
    text: TextExchange<BUF, B>,
    ttt_counter: u16,
    tmf_pending: Vec<u32, MAX_PENDING_TMF>,
    logout_pending: Option<u32>,
    last_rx: Timestamp,
    ping_ttt: Option<u32>,
    ping_timer: Timer,
    next_ping_ttt: u32,
    logout_timer: Timer,
}

impl<const TASKS: usize, const BUF: usize, B, T> core::fmt::Debug for Connection<TASKS, BUF, B, T>
where
    B: Storage<u8>,
    T: Storage<Task>,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("phase", &self.phase)
            .field("session", &self.session)
            .field("stat_sn", &self.stat_sn)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

fn fixed_sense(key: u8, asc: u8, ascq: u8, out: &mut [u8; MAX_SENSE_LEN]) -> u16 {
    out[..18].copy_from_slice(&[
        0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
    ]);
    18
}

/// The largest login response data the connection builds: the initiator's
/// MaxRecvDataSegmentLength during login is 8192 bytes (RFC 7143 13.12) until it declares
/// its own, and a target's login answer is far smaller.
const LOGIN_REPLY_MAX: usize = 8192;

/// `inline` resized to `len` bytes (at most `BUF`) for a reply to be written into.
fn inline_out<const BUF: usize, B: Storage<u8>>(inline: &mut B, len: usize) -> &mut [u8] {
    inline.resize_to(len.min(BUF), 0, BUF)
}

fn copy_header(buf: &[u8]) -> [u8; BHS_LEN] {
    let mut h = [0u8; BHS_LEN];
    let n = buf.len().min(BHS_LEN);
    h[..n].copy_from_slice(&buf[..n]);
    h
}

fn residual_parts(r: Residual) -> (bool, bool, u32) {
    match r {
        Residual::None => (false, false, 0),
        Residual::Underflow(n) => (true, false, n),
        Residual::Overflow(n) => (false, true, n),
    }
}

impl<const TASKS: usize, const BUF: usize, B, T> Connection<TASKS, BUF, B, T>
where
    B: Storage<u8>,
    T: Storage<Task>,
{
    const CHECK: () = {
        assert!(TASKS > 0 && TASKS < 0x8000, "TASKS must be in 1..0x8000");
        assert!(BUF >= 512, "BUF must be at least 512 bytes");
    };

    /// A new connection, in the login phase. `challenge` is fresh randomness for CHAP;
    /// `now` starts the login timer.
    pub fn new(config: ConnConfig, challenge: ChapChallenge, now: Timestamp) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        let mut login_timer = Timer::default();
        login_timer.set(now, config.login_timeout_ms);
        Connection {
            login: LoginMachine::new(config.login.clone(), challenge),
            config,
            phase: Phase::Login,
            closed_reported: false,
            login_timer,
            login_cmd_sn: 0,
            stat_sn_started: false,
            session: None,
            params: SessionParams::RFC_DEFAULTS,
            digests: Digests::NONE,
            stat_sn: 0,
            exp_stat_sn: 0,
            tasks: TaskTable::new(),
            ready: Deque::new(),
            ctrl: Deque::new(),
            events: Deque::new(),
            inline: B::default(),
            inline_busy: false,
            text: TextExchange::new(),
            ttt_counter: 0,
            tmf_pending: Vec::new(),
            logout_pending: None,
            last_rx: now,
            ping_ttt: None,
            ping_timer: Timer::default(),
            next_ping_ttt: 1,
            logout_timer: Timer::default(),
        }
    }

    // ----------------------------------------------------------------------------------
    // Getters.

    /// Whether the connection is in full feature phase.
    pub fn is_full_feature(&self) -> bool {
        self.phase == Phase::FullFeature
    }

    /// Whether the connection is finished (the runtime should close the socket once
    /// `poll_transmit` is drained).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// The login result, once logged in.
    pub fn login_outcome(&self) -> Option<&LoginOutcome> {
        self.login.outcome()
    }

    /// The session-wide state, once logged in.
    pub fn session(&self) -> Option<&SessionState> {
        self.session.as_ref()
    }

    /// The negotiated parameters (RFC defaults before login completes).
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Digests in use on input and output (none during login). Frame input with
    /// [`wire::pdu_len_checked`]`(buf, conn.digests(), conn.max_recv_data_segment_len())`.
    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// The largest data segment the target accepts in one PDU right now.
    pub fn max_recv_data_segment_len(&self) -> u32 {
        match self.phase {
            Phase::FullFeature => self.params.max_recv_data_segment_length,
            _ => u32::try_from(BUF).unwrap_or(u32::MAX),
        }
    }

    /// Number of live tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The Initiator Task Tag and LUN of a live task.
    pub fn task_info(&self, task: TaskHandle) -> Option<(u32, u64)> {
        self.tasks.get(task).map(|t| (t.itt, t.lun))
    }

    /// The live task with Initiator Task Tag `itt`.
    pub fn find_task(&self, itt: u32) -> Option<TaskHandle> {
        self.tasks.find_itt(itt)
    }

    /// The next StatSN this connection will assign.
    pub fn stat_sn(&self) -> u32 {
        self.stat_sn
    }

    /// The last ExpStatSN the initiator sent.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    // ----------------------------------------------------------------------------------
    // Input.

    /// Handle the PDU at the start of `buf` (framed by the runtime with
    /// [`wire::pdu_len_checked`]; `buf` may hold more). See [`Ingress`] for what to do
    /// next. An `Err` means the connection is finished: drain `poll_transmit` and
    /// `poll_event`, then close the socket.
    pub fn handle_input<'a, H: Hooks>(
        &mut self,
        now: Timestamp,
        buf: &'a [u8],
        hooks: &mut H,
    ) -> Result<Ingress<'a>, ConnError> {
        if let Some(gate) = self.input_gate() {
            return gate;
        }
        let (Status::Complete(total), Status::Complete(head)) = (
            wire::pdu_len(buf, self.digests),
            wire::header_wire_len(buf, self.digests),
        ) else {
            return Ok(Ingress::NeedMore);
        };
        if buf.len() < total {
            return Ok(Ingress::NeedMore);
        }
        self.input_pdu(now, &buf[..head], &buf[head..total], hooks)
    }

    /// [`Connection::handle_input`] for one whole PDU received in two pieces: `header` is
    /// its BHS, AHS and header digest ([`wire::header_wire_len`] bytes) and `rest` its
    /// data segment with the padding and data digest that follow, as long as the header
    /// declares (otherwise the answer is `NeedMore` and nothing is consumed). A runtime
    /// uses it to receive a large data segment straight into a task buffer (see
    /// [`Connection::data_out_destination`]); an [`Ingress::Data`] then borrows `rest`.
    pub fn handle_split<'a, H: Hooks>(
        &mut self,
        now: Timestamp,
        header: &'a [u8],
        rest: &'a [u8],
        hooks: &mut H,
    ) -> Result<Ingress<'a>, ConnError> {
        if let Some(gate) = self.input_gate() {
            return gate;
        }
        self.input_pdu(now, header, rest, hooks)
    }

    /// Where the data of the Data-Out whose header (BHS, AHS, header digest) is `header`
    /// will land if the PDU is accepted: its task and buffer offset. `Some` only for the
    /// very next Data-Out that task expects, in order (DataSN, offset and F bit) within an
    /// open burst and with a valid header digest, so `[offset, offset + len)` of the task's
    /// buffer holds nothing accepted yet: a runtime may receive the data segment there
    /// before handing the PDU to [`Connection::handle_split`], which makes the decision.
    pub fn data_out_destination(&self, header: &[u8]) -> Option<(TaskHandle, u32)> {
        if self.phase != Phase::FullFeature {
            return None;
        }
        let bhs = wire::Bhs::new_checked(header).ok()?;
        let header_len = bhs.header_len();
        if bhs.opcode() != wire::Opcode::DataOut
            || header.len() != header_len + self.digests.header_len()
        {
            return None;
        }
        if self.digests.header {
            let received = u32::from_le_bytes(header[header_len..].try_into().ok()?);
            if received != crate::digest::header_digest(&header[..header_len]) {
                return None;
            }
        }
        let len = bhs.data_segment_len();
        if len > self.params.max_recv_data_segment_length {
            return None;
        }
        let d = DataOut::parse(&bhs, &header[BHS_LEN..header_len], &[]).ok()?;
        let handle = self.tasks.find_itt(d.itt)?;
        self.tasks
            .get(handle)?
            .expects_data_out(d.ttt, d.data_sn, d.buffer_offset, len, d.final_bit)
            .then_some((handle, d.buffer_offset))
    }

    /// Input is refused while the connection is closing, and held back while the queues
    /// lack room for what one PDU may add.
    fn input_gate<'a>(&self) -> Option<Result<Ingress<'a>, ConnError>> {
        match self.phase {
            Phase::Draining(r) | Phase::Closed(r) => return Some(Err(ConnError::Closed(r))),
            Phase::Login | Phase::FullFeature => {}
        }
        if self.events.capacity() - self.events.len() < EVENTS_PER_PDU
            || self.ctrl.capacity() - self.ctrl.len() < CONTROL_PER_PDU
        {
            return Some(Ok(Ingress::Blocked));
        }
        None
    }

    /// One whole PDU: its header (BHS, AHS, header digest) and the rest.
    fn input_pdu<'a, H: Hooks>(
        &mut self,
        now: Timestamp,
        head: &'a [u8],
        rest: &'a [u8],
        hooks: &mut H,
    ) -> Result<Ingress<'a>, ConnError> {
        let total = head.len() + rest.len();
        let header = copy_header(head);
        let parsed = match Pdu::parse_split(head, rest, self.digests) {
            Err(Error::Truncated) => return Ok(Ingress::NeedMore),
            parsed => parsed,
        };
        self.last_rx = now;
        let pdu = match parsed {
            Ok(p) => p,
            Err(Error::HeaderDigest { .. }) => {
                return Err(self.close_now(CloseReason::HeaderDigest));
            }
            Err(Error::DataDigest { .. }) => {
                let relaxed = Digests {
                    header: self.digests.header,
                    data: false,
                };
                let without_digest = &rest[..rest.len().saturating_sub(crate::digest::DIGEST_LEN)];
                return match Pdu::parse_split(head, without_digest, relaxed) {
                    Ok(pdu) => self.data_digest_error(pdu, header, total),
                    Err(e) => self.bad_pdu(e, header, total),
                };
            }
            Err(e) => return self.bad_pdu(e, header, total),
        };
        if self.phase == Phase::Login {
            return self.login_input(now, pdu, total, hooks);
        }
        if pdu.data().len() > self.params.max_recv_data_segment_length as usize {
            self.reject(RejectReason::ProtocolError, header);
            return Ok(Ingress::Done { consumed: total });
        }
        self.full_feature_input(now, pdu, header, total, hooks)
    }

    fn bad_pdu<'a>(
        &mut self,
        e: Error,
        header: [u8; BHS_LEN],
        consumed: usize,
    ) -> Result<Ingress<'a>, ConnError> {
        if self.phase == Phase::Login {
            return Err(self.close_now(CloseReason::ProtocolError));
        }
        self.reject(
            e.reject_reason().unwrap_or(RejectReason::ProtocolError),
            header,
        );
        Ok(Ingress::Done { consumed })
    }

    fn login_input<'a, H: Hooks>(
        &mut self,
        now: Timestamp,
        pdu: Pdu<'a>,
        consumed: usize,
        hooks: &mut H,
    ) -> Result<Ingress<'a>, ConnError> {
        let Pdu::LoginRequest(req) = pdu else {
            // Only Login Requests are allowed before full feature phase.
            return Err(self.close_now(CloseReason::ProtocolError));
        };
        if self.inline_busy {
            return Ok(Ingress::Blocked);
        }
        if !self.stat_sn_started {
            self.stat_sn_started = true;
            self.stat_sn = req.exp_stat_sn;
        }
        self.exp_stat_sn = req.exp_stat_sn;
        self.login_cmd_sn = req.cmd_sn;
        let hdr = login_header(&req);
        let reply = self.login.handle_request(
            &hdr,
            req.data,
            hooks,
            inline_out::<BUF, B>(&mut self.inline, LOGIN_REPLY_MAX),
        );
        self.inline_busy = true;
        let depth = self.config.queue_depth.clamp(1, super::MAX_QUEUE_DEPTH);
        let ctrl = Ctrl::Login {
            reply,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(depth - 1),
        };
        // Room was checked at the top of handle_input.
        let _ = self.ctrl.push_back(ctrl);
        match self.login.phase() {
            LoginPhase::InProgress => {}
            LoginPhase::Failed => self.phase = Phase::Draining(CloseReason::LoginFailed),
            LoginPhase::Complete => self.enter_full_feature(now),
        }
        Ok(Ingress::Done { consumed })
    }

    fn enter_full_feature(&mut self, now: Timestamp) {
        let Some(outcome) = self.login.outcome() else {
            self.phase = Phase::Draining(CloseReason::LoginFailed);
            return;
        };
        self.params = outcome.params;
        self.digests = Digests {
            header: outcome.params.header_digest == Digest::Crc32c,
            data: outcome.params.data_digest == Digest::Crc32c,
        };
        self.session = Some(SessionState {
            window: CmdWindow::new(outcome.cmd_sn, self.config.queue_depth),
            tsih: outcome.tsih,
            isid: outcome.isid,
            session_type: outcome.session_type,
        });
        self.phase = Phase::FullFeature;
        self.login_timer.stop();
        self.last_rx = now;
        let _ = self.events.push_back(Event::LoggedIn);
    }

    /// Check a non-SCSI command's CmdSN: `true` to process it, `false` to drop it.
    fn admit_control(&mut self, cmd_sn: u32, immediate: bool) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        match s.window.receive(cmd_sn, immediate) {
            CmdSnCheck::Accept => {
                if !immediate {
                    s.window.retire(cmd_sn);
                }
                true
            }
            CmdSnCheck::Duplicate | CmdSnCheck::OutOfWindow => false,
        }
    }

    fn full_feature_input<'a, H: Hooks>(
        &mut self,
        now: Timestamp,
        pdu: Pdu<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
        hooks: &mut H,
    ) -> Result<Ingress<'a>, ConnError> {
        let discovery = self
            .session
            .is_some_and(|s| s.session_type == SessionType::Discovery);
        match pdu {
            Pdu::ScsiCommand(cmd) => {
                if discovery {
                    self.reject(RejectReason::ProtocolError, header);
                    return Ok(Ingress::Done { consumed });
                }
                self.exp_stat_sn = cmd.exp_stat_sn;
                Ok(self.scsi_command(cmd, header, consumed, false))
            }
            Pdu::DataOut(d) => {
                self.exp_stat_sn = d.exp_stat_sn;
                self.data_out(d, header, consumed, false)
            }
            Pdu::NopOut(n) => Ok(self.nop_out(now, n, header, consumed)),
            Pdu::TaskMgmtRequest(t) => {
                self.exp_stat_sn = t.exp_stat_sn;
                Ok(self.task_mgmt(t, header, consumed))
            }
            Pdu::TextRequest(t) => Ok(self.text_request(t, header, consumed, hooks)),
            Pdu::LogoutRequest(l) => {
                self.exp_stat_sn = l.exp_stat_sn;
                Ok(self.logout_request(l, consumed))
            }
            Pdu::LoginRequest(_) => {
                // A Login Request in full feature phase is a protocol error.
                self.reject(RejectReason::ProtocolError, header);
                Ok(Ingress::Done { consumed })
            }
            Pdu::Snack(_) => {
                // ErrorRecoveryLevel 0: no SNACK support.
                self.reject(RejectReason::CommandNotSupported, header);
                Ok(Ingress::Done { consumed })
            }
            Pdu::NopIn(_)
            | Pdu::ScsiResponse(_)
            | Pdu::TaskMgmtResponse(_)
            | Pdu::LoginResponse(_)
            | Pdu::TextResponse(_)
            | Pdu::DataIn(_)
            | Pdu::LogoutResponse(_)
            | Pdu::R2t(_)
            | Pdu::AsyncMessage(_)
            | Pdu::Reject(_) => {
                // Target opcodes sent by an initiator.
                self.reject(RejectReason::ProtocolError, header);
                Ok(Ingress::Done { consumed })
            }
        }
    }

    /// A SCSI Command. With `digest_error` its immediate data was corrupted: the command is
    /// received (its header is good) but fails at once, without reaching the runtime.
    fn scsi_command<'a>(
        &mut self,
        cmd: ScsiCommand<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
        digest_error: bool,
    ) -> Ingress<'a> {
        let done = Ingress::Done { consumed };
        if cmd.itt == RESERVED_TAG {
            self.reject(RejectReason::InvalidPduField, header);
            return done;
        }
        let Some(session) = self.session.as_ref() else {
            return done;
        };
        match session.window.check(cmd.cmd_sn, cmd.immediate) {
            CmdSnCheck::Accept => {}
            // Dropped silently (RFC 7143 section 4.2.2.1).
            CmdSnCheck::Duplicate | CmdSnCheck::OutOfWindow => return done,
        }
        if self.tasks.find_itt(cmd.itt).is_some() {
            // ITT already in use: the command is not received (its CmdSN stays a gap).
            self.reject(RejectReason::InvalidPduField, header);
            return done;
        }
        let read = cmd.flags.contains(ScsiCommandFlags::READ);
        let write = cmd.flags.contains(ScsiCommandFlags::WRITE);
        let final_bit = cmd.flags.contains(ScsiCommandFlags::FINAL);
        let imm_len = cmd.data.len();
        let p = self.params;
        let bad = (imm_len > 0 && (!write || !p.immediate_data))
            || imm_len > p.first_burst_length as usize
            || imm_len > cmd.expected_data_transfer_len as usize
            || (!final_bit && (!write || p.initial_r2t));
        if bad {
            self.reject(RejectReason::ProtocolError, header);
            return done;
        }
        let dir = match (read, write) {
            (false, false) => Direction::None,
            (true, false) => Direction::Read,
            (false, true) => Direction::Write,
            (true, true) => Direction::Bidirectional,
        };
        let edtl = cmd.expected_data_transfer_len;
        let (write_len, read_len) = match dir {
            Direction::None => (0, 0),
            Direction::Read => (0, edtl),
            Direction::Write => (edtl, 0),
            Direction::Bidirectional => (edtl, cmd.bidi_read_len.unwrap_or(0)),
        };
        // The command is received: it takes its place in the window.
        if let Some(s) = self.session.as_mut() {
            let _ = s.window.receive(cmd.cmd_sn, cmd.immediate);
        }
        let handle = match self.tasks.insert() {
            Ok(h) => h,
            Err(_) => {
                if !cmd.immediate {
                    if let Some(s) = self.session.as_mut() {
                        s.window.retire(cmd.cmd_sn);
                    }
                }
                let _ = self.ctrl.push_back(Ctrl::Status {
                    itt: cmd.itt,
                    status: STATUS_TASK_SET_FULL,
                });
                return done;
            }
        };
        let Some(task) = self.tasks.get_mut(handle) else {
            return done;
        };
        task.start(
            cmd.itt,
            cmd.lun,
            cmd.cmd_sn,
            cmd.immediate,
            dir,
            write_len,
            read_len,
            WriteSetup {
                immediate_len: imm_len as u32,
                initial_r2t: p.initial_r2t || final_bit,
                first_burst: p.first_burst_length,
            },
        );
        let unsolicited_len = task.unsol_limit;
        if digest_error {
            task.complete_reported = true;
            self.fail_task(handle, TaskFailure::DataDigest, false);
            return done;
        }
        let mut cdb = [0u8; wire::MAX_CDB_LEN];
        let cdb_len = cmd.copy_cdb(&mut cdb).unwrap_or(16).min(wire::MAX_CDB_LEN);
        let _ = self.events.push_back(Event::Command(Command {
            task: handle,
            itt: cmd.itt,
            lun: cmd.lun,
            cdb: Cdb::new(&cdb[..cdb_len]),
            dir,
            write_len,
            read_len,
            attr: cmd.attr,
            cmd_sn: cmd.cmd_sn,
            immediate: cmd.immediate,
            immediate_len: imm_len as u32,
            unsolicited_len,
        }));
        if write_len > 0 && task.write_complete() {
            task.complete_reported = true;
            let _ = self
                .events
                .push_back(Event::DataOutComplete { task: handle });
        }
        if imm_len > 0 {
            Ingress::Data {
                consumed,
                task: handle,
                offset: 0,
                data: cmd.data,
            }
        } else {
            done
        }
    }

    fn data_out<'a>(
        &mut self,
        d: DataOut<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
        digest_error: bool,
    ) -> Result<Ingress<'a>, ConnError> {
        let done = Ingress::Done { consumed };
        let Some(handle) = self.tasks.find_itt(d.itt) else {
            self.reject(
                if digest_error {
                    RejectReason::DataDigestError
                } else {
                    RejectReason::InvalidPduField
                },
                header,
            );
            return Ok(done);
        };
        let index = handle.index();
        let p = self.params;
        let len = u32::try_from(d.data.len()).unwrap_or(u32::MAX);
        let verdict = match self.tasks.get_mut(handle) {
            Some(task) => task.accept_data_out(d.ttt, d.data_sn, d.buffer_offset, len, d.final_bit),
            None => return Ok(done),
        };
        let failure = match verdict {
            Err(DataOutError::DataSn) | Err(DataOutError::Offset) => {
                // An out-of-order Data-Out implies a lost PDU (a digest error): at
                // ErrorRecoveryLevel 0 the task ends with CHECK CONDITION once the initiator
                // has sent the rest (RFC 7143 sections 7.8, 7.9).
                Some(TaskFailure::DataSequence)
            }
            Err(DataOutError::UnknownTtt) => {
                self.reject(
                    if digest_error {
                        RejectReason::DataDigestError
                    } else {
                        RejectReason::InvalidPduField
                    },
                    header,
                );
                return Ok(done);
            }
            Err(DataOutError::UnexpectedUnsolicited) => {
                self.reject(RejectReason::ProtocolError, header);
                return Ok(done);
            }
            Err(DataOutError::Overrun) | Err(DataOutError::FinalBit) => {
                self.reject(RejectReason::ProtocolError, header);
                Some(TaskFailure::DataOutProtocol)
            }
            Ok(_) if digest_error => {
                self.reject(RejectReason::DataDigestError, header);
                Some(TaskFailure::DataDigest)
            }
            Ok(_) => None,
        };
        if let Some(reason) = failure {
            self.fail_task(handle, reason, true);
            return Ok(done);
        }
        let (Ok(acc), Some(task)) = (verdict, self.tasks.get_mut(handle)) else {
            return Ok(done);
        };
        let deliver = acc.deliver && len > 0;
        if acc.complete && !task.complete_reported {
            task.complete_reported = true;
            let _ = self
                .events
                .push_back(Event::DataOutComplete { task: handle });
        }
        let mut wake = false;
        if acc.sequence_closed {
            let created = task.fill_r2ts(
                index,
                p.max_burst_length,
                usize::from(p.max_outstanding_r2t),
                &mut self.ttt_counter,
            );
            wake = created || (task.closing && task.open_sequences() == 0);
        }
        if wake {
            self.schedule(handle);
        }
        Ok(if deliver {
            Ingress::Data {
                consumed,
                task: handle,
                offset: d.buffer_offset,
                data: d.data,
            }
        } else {
            done
        })
    }

    fn data_digest_error<'a>(
        &mut self,
        pdu: Pdu<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
    ) -> Result<Ingress<'a>, ConnError> {
        let done = Ingress::Done { consumed };
        let normal = self
            .session
            .is_some_and(|s| s.session_type == SessionType::Normal);
        match pdu {
            Pdu::DataOut(d) if self.phase == Phase::FullFeature => {
                // Rejects the PDU and fails its task; a sequence error still closes.
                self.data_out(d, header, consumed, true).map(|_| done)
            }
            Pdu::ScsiCommand(cmd) if self.phase == Phase::FullFeature && normal => {
                // The non-data part of the command is good (RFC 7143 section 7.8): the
                // command is received, its immediate data is lost, and at ErrorRecoveryLevel
                // 0 the task ends with CHECK CONDITION.
                self.reject(RejectReason::DataDigestError, header);
                let _ = self.scsi_command(cmd, header, consumed, true);
                Ok(done)
            }
            _ => {
                // Digests are off during login, so this is full feature phase: the PDU is
                // discarded and rejected.
                self.reject(RejectReason::DataDigestError, header);
                Ok(done)
            }
        }
    }

    fn nop_out<'a>(
        &mut self,
        now: Timestamp,
        n: NopOut<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
    ) -> Ingress<'a> {
        let done = Ingress::Done { consumed };
        if n.ttt != RESERVED_TAG {
            // An answer to our ping: the TTT must be the one we sent.
            if self.ping_ttt == Some(n.ttt) && n.itt == RESERVED_TAG {
                self.ping_ttt = None;
                self.ping_timer.stop();
                self.last_rx = now;
            } else {
                self.reject(RejectReason::InvalidPduField, header);
            }
            return done;
        }
        if n.itt == RESERVED_TAG {
            // No answer wanted.
            return done;
        }
        if !n.data.is_empty() && self.inline_busy {
            return Ingress::Blocked;
        }
        if !self.admit_control(n.cmd_sn, n.immediate) {
            return done;
        }
        let len = n.data.len().min(BUF);
        inline_out::<BUF, B>(&mut self.inline, len).copy_from_slice(&n.data[..len]);
        if len > 0 {
            self.inline_busy = true;
        }
        let _ = self.ctrl.push_back(Ctrl::NopEcho {
            itt: n.itt,
            lun: n.lun,
            len,
        });
        done
    }

    fn task_mgmt<'a>(
        &mut self,
        t: TaskMgmtRequest,
        header: [u8; BHS_LEN],
        consumed: usize,
    ) -> Ingress<'a> {
        let done = Ingress::Done { consumed };
        if t.itt == RESERVED_TAG {
            self.reject(RejectReason::InvalidPduField, header);
            return done;
        }
        if !self.admit_control(t.cmd_sn, t.immediate) {
            return done;
        }
        if matches!(t.function, TmfFunction::TaskReassign) {
            // Needs ErrorRecoveryLevel 2.
            let _ = self.ctrl.push_back(Ctrl::Tmf {
                itt: t.itt,
                response: TmfResponse::ReassignmentNotSupported,
            });
            return done;
        }
        if self.tmf_pending.push(t.itt).is_err() {
            let _ = self.ctrl.push_back(Ctrl::Tmf {
                itt: t.itt,
                response: TmfResponse::Rejected,
            });
            return done;
        }
        let referenced_task = if matches!(t.function, TmfFunction::AbortTask) {
            self.tasks.find_itt(t.referenced_task_tag)
        } else {
            None
        };
        let _ = self.events.push_back(Event::TaskMgmt(TaskMgmt {
            itt: t.itt,
            function: t.function,
            lun: t.lun,
            referenced_itt: t.referenced_task_tag,
            referenced_task,
            ref_cmd_sn: t.ref_cmd_sn,
        }));
        done
    }

    fn text_request<'a, H: Hooks>(
        &mut self,
        t: TextRequest<'a>,
        header: [u8; BHS_LEN],
        consumed: usize,
        hooks: &mut H,
    ) -> Ingress<'a> {
        let done = Ingress::Done { consumed };
        if t.itt == RESERVED_TAG {
            self.reject(RejectReason::InvalidPduField, header);
            return done;
        }
        if self.inline_busy {
            return Ingress::Blocked;
        }
        if !self.admit_control(t.cmd_sn, t.immediate) {
            return done;
        }
        let hdr = TextHeader {
            final_: t.flags.contains(TextFlags::FINAL),
            cont: t.flags.contains(TextFlags::CONTINUE),
            itt: t.itt,
            ttt: t.ttt,
        };
        let Some(outcome) = self.login.outcome() else {
            return done;
        };
        let session_type = outcome.session_type;
        let max = (self.params.max_xmit_data_segment_length as usize).clamp(1, BUF);
        let out = inline_out::<BUF, B>(&mut self.inline, max);
        let text = &mut self.text;
        let mut result = None;
        {
            let target = if outcome.target_name.is_empty() {
                None
            } else {
                Some(outcome.target_name.as_str())
            };
            hooks.with_targets(outcome.initiator_name.as_str(), &mut |targets| {
                result =
                    Some(text.handle_request(&hdr, t.data, session_type, target, targets, out));
            });
        }
        match result {
            Some(Ok(reply)) => {
                self.inline_busy = true;
                let _ = self.ctrl.push_back(Ctrl::Text {
                    itt: reply.itt,
                    ttt: reply.ttt,
                    lun: t.lun,
                    final_bit: reply.final_,
                    cont: reply.cont,
                    len: reply.data_len,
                });
            }
            Some(Err(_)) | None => self.reject(RejectReason::ProtocolError, header),
        }
        done
    }

    fn logout_request<'a>(&mut self, l: LogoutRequest, consumed: usize) -> Ingress<'a> {
        let done = Ingress::Done { consumed };
        if !self.admit_control(l.cmd_sn, l.immediate) {
            return done;
        }
        let our_cid = self.login.outcome().map_or(0, |o| o.cid);
        let auto = match l.reason {
            LogoutReason::RemoveConnectionForRecovery => {
                Some(LogoutResponseCode::RecoveryNotSupported)
            }
            LogoutReason::CloseConnection if l.cid != our_cid => {
                Some(LogoutResponseCode::CidNotFound)
            }
            _ => None,
        };
        if let Some(response) = auto {
            let _ = self.ctrl.push_back(Ctrl::Logout {
                itt: l.itt,
                response,
                close: false,
            });
            return done;
        }
        self.logout_pending = Some(l.itt);
        let _ = self.events.push_back(Event::Logout(Logout {
            itt: l.itt,
            reason: l.reason,
            cid: l.cid,
        }));
        done
    }

    // ----------------------------------------------------------------------------------
    // Internal helpers.

    fn reject(&mut self, reason: RejectReason, header: [u8; BHS_LEN]) {
        let _ = self.ctrl.push_back(Ctrl::Reject { reason, header });
    }

    fn schedule(&mut self, h: TaskHandle) {
        if let Some(t) = self.tasks.get_mut(h) {
            if !t.queued && self.ready.push_back(h.index() as u16).is_ok() {
                t.queued = true;
            }
        }
    }

    /// Fail a task inside the protocol layer: CHECK CONDITION once the initiator has sent
    /// the data it still owes.
    fn fail_task(&mut self, h: TaskHandle, reason: TaskFailure, notify: bool) {
        let Some(t) = self.tasks.get_mut(h) else {
            return;
        };
        if t.failed {
            return;
        }
        t.failed = true;
        t.begin_closing();
        t.din_next = t.din_end;
        t.din_status = None;
        let (asc, ascq) = match reason {
            // PROTOCOL SERVICE CRC ERROR (a sequence error implies a digest error).
            TaskFailure::DataDigest | TaskFailure::DataSequence => (0x47, 0x05),
            // DATA PHASE ERROR.
            TaskFailure::DataOutProtocol => (0x4b, 0x00),
        };
        // ABORTED COMMAND.
        let sense_len = fixed_sense(0x0b, asc, ascq, &mut t.sense);
        t.response = Some(PendingResponse {
            status: ScsiStatus {
                status: STATUS_CHECK_CONDITION,
                residual: Residual::None,
            },
            sense_len,
        });
        if notify {
            let _ = self.events.push_back(Event::TaskFailed { task: h, reason });
        }
        self.schedule(h);
    }

    fn finish_task(&mut self, h: TaskHandle) {
        let Some(t) = self.tasks.get(h) else {
            return;
        };
        let (immediate, cmd_sn) = (t.immediate, t.cmd_sn);
        if !immediate {
            if let Some(s) = self.session.as_mut() {
                s.window.retire(cmd_sn);
            }
        }
        self.tasks.remove(h);
    }

    /// Close at once (no further output), e.g. on a header digest error.
    fn close_now(&mut self, reason: CloseReason) -> ConnError {
        self.phase = Phase::Closed(reason);
        self.ctrl.clear();
        self.ready.clear();
        self.inline_busy = false;
        let handles: Vec<TaskHandle, TASKS> = self.tasks.handles().collect();
        for h in handles {
            self.tasks.remove(h);
        }
        ConnError::Closed(reason)
    }

    // ----------------------------------------------------------------------------------
    // Mutators.

    fn live_task(&mut self, task: TaskHandle) -> Result<(), TaskError> {
        if self.phase != Phase::FullFeature {
            return Err(TaskError::Stale);
        }
        match self.tasks.get(task) {
            None => Err(TaskError::Stale),
            Some(t) if t.failed => Err(TaskError::Closing),
            Some(_) => Ok(()),
        }
    }

    /// Finish a task with a SCSI Response carrying `status` and `sense` (up to
    /// [`MAX_SENSE_LEN`] bytes; empty for none). Queued after any Data-In still pending for
    /// the task and after the Data-Out the initiator still owes; R2Ts not yet sent are
    /// cancelled.
    pub fn respond(
        &mut self,
        task: TaskHandle,
        status: ScsiStatus,
        sense: &[u8],
    ) -> Result<(), TaskError> {
        self.live_task(task)?;
        if sense.len() > MAX_SENSE_LEN {
            return Err(TaskError::SenseTooLong);
        }
        let t = self.tasks.get_mut(task).ok_or(TaskError::Stale)?;
        if t.response.is_some() || t.din_status.is_some() {
            return Err(TaskError::Closing);
        }
        t.begin_closing();
        t.sense[..sense.len()].copy_from_slice(sense);
        t.response = Some(PendingResponse {
            status,
            sense_len: sense.len() as u16,
        });
        self.schedule(task);
        Ok(())
    }

    /// Send `len` bytes at `offset` of the task's read buffer as Data-In (segmented at the
    /// initiator's MaxRecvDataSegmentLength and MaxBurstLength). With `status`, this is the
    /// last data: a GOOD / CONDITION MET status rides in the final Data-In (S bit); other
    /// statuses, or `len` 0, go in a SCSI Response after the data. For sense data, send the
    /// data without status and finish with [`Connection::respond`]. Successive calls must
    /// be contiguous.
    pub fn send_data_in(
        &mut self,
        task: TaskHandle,
        offset: u32,
        len: u32,
        status: Option<ScsiStatus>,
    ) -> Result<(), TaskError> {
        self.live_task(task)?;
        let t = self.tasks.get_mut(task).ok_or(TaskError::Stale)?;
        if !matches!(t.dir, Direction::Read | Direction::Bidirectional) && len > 0 {
            return Err(TaskError::WrongDirection);
        }
        if t.response.is_some() {
            return Err(TaskError::Closing);
        }
        // Only a status without an exception may ride in a Data-In (RFC 7143 11.7.4): GOOD,
        // CONDITION MET, INTERMEDIATE, INTERMEDIATE-CONDITION MET.
        let carried = status.filter(|s| matches!(s.status, 0x00 | 0x04 | 0x10 | 0x14));
        t.queue_data_in(offset, len, carried)?;
        if let Some(st) = status {
            t.begin_closing();
            if carried.is_none() || !t.has_data_in() {
                // A SCSI Response carries the status after the data.
                t.din_status = None;
                t.response = Some(PendingResponse {
                    status: st,
                    sense_len: 0,
                });
            }
        }
        self.schedule(task);
        Ok(())
    }

    /// Ask the initiator for `len` bytes at `offset` of the task's write data with R2Ts
    /// (each at most MaxBurstLength, at most MaxOutstandingR2T in flight). Successive calls
    /// must be contiguous.
    pub fn request_data_out(
        &mut self,
        task: TaskHandle,
        offset: u32,
        len: u32,
    ) -> Result<(), TaskError> {
        self.live_task(task)?;
        let p = self.params;
        let t = self.tasks.get_mut(task).ok_or(TaskError::Stale)?;
        t.request_range(offset, len)?;
        if t.fill_r2ts(
            task.index(),
            p.max_burst_length,
            usize::from(p.max_outstanding_r2t),
            &mut self.ttt_counter,
        ) {
            self.schedule(task);
        }
        Ok(())
    }

    /// Ask for all the write data the initiator does not send unsolicited (from
    /// [`Command::unsolicited_len`] to the expected length). If unsolicited Data-Out is
    /// still arriving, the R2Ts follow once it ends.
    pub fn request_remaining_data(&mut self, task: TaskHandle) -> Result<(), TaskError> {
        self.live_task(task)?;
        let p = self.params;
        let t = self.tasks.get_mut(task).ok_or(TaskError::Stale)?;
        t.request_remaining()?;
        if t.fill_r2ts(
            task.index(),
            p.max_burst_length,
            usize::from(p.max_outstanding_r2t),
            &mut self.ttt_counter,
        ) {
            self.schedule(task);
        }
        Ok(())
    }

    /// Abort a task without a response (e.g. for ABORT TASK or LOGICAL UNIT RESET). Its
    /// slot is freed once the Data-Out the initiator still owes for sent R2Ts has arrived.
    pub fn abort_task(&mut self, task: TaskHandle) -> Result<(), TaskError> {
        let t = self.tasks.get_mut(task).ok_or(TaskError::Stale)?;
        t.begin_closing();
        t.failed = true;
        t.response = None;
        t.din_next = t.din_end;
        t.din_status = None;
        self.schedule(task);
        Ok(())
    }

    /// Answer a Task Management request (by the ITT of its [`TaskMgmt`] event).
    pub fn respond_task_mgmt(&mut self, itt: u32, response: TmfResponse) -> Result<(), StateError> {
        let pos = self
            .tmf_pending
            .iter()
            .position(|&i| i == itt)
            .ok_or(StateError::NotPending)?;
        self.ctrl
            .push_back(Ctrl::Tmf { itt, response })
            .map_err(|_| StateError::QueueFull)?;
        self.tmf_pending.swap_remove(pos);
        Ok(())
    }

    /// Answer the pending Logout request. With [`LogoutResponseCode::Closed`] the
    /// connection closes once the response is sent ([`Event::Closed`] with
    /// [`CloseReason::LoggedOut`]).
    pub fn respond_logout(&mut self, response: LogoutResponseCode) -> Result<(), StateError> {
        let itt = self.logout_pending.ok_or(StateError::NotPending)?;
        let close = matches!(response, LogoutResponseCode::Closed);
        self.ctrl
            .push_back(Ctrl::Logout {
                itt,
                response,
                close,
            })
            .map_err(|_| StateError::QueueFull)?;
        self.logout_pending = None;
        Ok(())
    }

    /// Ask the initiator to log out within `seconds` (Asynchronous Message, event 1), e.g.
    /// at shutdown. If it has not logged out `logout_grace_ms` after that, the connection
    /// closes with [`CloseReason::LogoutTimeout`].
    pub fn request_logout(&mut self, now: Timestamp, seconds: u16) -> Result<(), StateError> {
        if self.phase != Phase::FullFeature {
            return Err(StateError::NotFullFeature);
        }
        self.ctrl
            .push_back(Ctrl::Async {
                event: AsyncEvent::LogoutRequested,
                parameter3: seconds,
            })
            .map_err(|_| StateError::QueueFull)?;
        self.logout_timer.set(
            now,
            u64::from(seconds)
                .saturating_mul(1000)
                .saturating_add(self.config.logout_grace_ms),
        );
        Ok(())
    }

    /// Close the connection now, without further output.
    pub fn close(&mut self) {
        if !self.is_closed() {
            let _ = self.close_now(CloseReason::Local);
        }
    }

    // ----------------------------------------------------------------------------------
    // Timers.

    /// The next time [`Connection::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.phase {
            Phase::Login => self.login_timer.deadline(),
            Phase::FullFeature => {
                let ping = if self.ping_ttt.is_some() {
                    self.ping_timer.deadline()
                } else if self.config.nop_interval_ms > 0 {
                    Some(self.last_rx.add_millis(self.config.nop_interval_ms))
                } else {
                    None
                };
                earliest(ping, self.logout_timer.deadline())
            }
            Phase::Draining(_) | Phase::Closed(_) => None,
        }
    }

    /// Run the timers that are due at `now`: login timeout, NOP-In pings and their
    /// timeout, the logout deadline.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.phase {
            Phase::Login => {
                if self.login_timer.expired(now) {
                    let _ = self.close_now(CloseReason::LoginTimeout);
                }
            }
            Phase::FullFeature => {
                if self.logout_timer.expired(now) {
                    let _ = self.close_now(CloseReason::LogoutTimeout);
                    return;
                }
                if self.ping_ttt.is_some() {
                    if self.ping_timer.expired(now) {
                        let _ = self.close_now(CloseReason::PingTimeout);
                    }
                    return;
                }
                let interval = self.config.nop_interval_ms;
                if interval > 0
                    && now.millis_since(self.last_rx) >= interval
                    && self.ctrl.len() < self.ctrl.capacity()
                {
                    let ttt = self.next_ping_ttt;
                    self.next_ping_ttt = match ttt.wrapping_add(1) {
                        RESERVED_TAG | 0 => 1,
                        n => n,
                    };
                    let _ = self.ctrl.push_back(Ctrl::NopPing { ttt });
                    self.ping_ttt = Some(ttt);
                    self.ping_timer.set(now, self.config.nop_timeout_ms);
                }
            }
            Phase::Draining(_) | Phase::Closed(_) => {}
        }
    }

    // ----------------------------------------------------------------------------------
    // Output.

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if let Phase::Draining(reason) = self.phase {
            if self.ctrl.is_empty() {
                self.phase = Phase::Closed(reason);
            }
        }
        match self.phase {
            Phase::Closed(reason) if !self.closed_reported => {
                self.closed_reported = true;
                Some(Event::Closed { reason })
            }
            _ => None,
        }
    }

    fn sns(&self) -> (u32, u32) {
        match self.session.as_ref() {
            Some(s) => (s.window.exp_cmd_sn(), s.window.max_cmd_sn()),
            None => (self.login_cmd_sn, self.login_cmd_sn),
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    /// Write the next PDU to send into `buf` and say what follows it. `Ok(None)`: nothing
    /// to send now. A `buf` of `BUF + 64` bytes always suffices.
    pub fn poll_transmit(
        &mut self,
        _now: Timestamp,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, BufferTooSmall> {
        if matches!(self.phase, Phase::Closed(_)) {
            return Ok(None);
        }
        loop {
            // A Logout Response goes after everything the tasks still have to say.
            let front = self.ctrl.front().copied();
            let logout_waits =
                matches!(front, Some(Ctrl::Logout { close: true, .. })) && !self.ready.is_empty();
            if let (Some(c), false) = (front, logout_waits) {
                let len = self.emit_ctrl(c, buf)?;
                let _ = self.ctrl.pop_front();
                self.after_ctrl(c);
                return Ok(Some(Transmit {
                    len,
                    data: None,
                    finished: None,
                }));
            }
            let Some(&index) = self.ready.front() else {
                return Ok(None);
            };
            let Some(h) = self.tasks.handle_at(usize::from(index)) else {
                let _ = self.ready.pop_front();
                continue;
            };
            match self.emit_task(h, buf)? {
                Some(t) => {
                    // Round robin: a task with more to send goes to the back.
                    let _ = self.ready.pop_front();
                    let more = match self.tasks.get_mut(h) {
                        Some(task) => {
                            task.queued = false;
                            task.has_unsent_r2t()
                                || task.has_data_in()
                                || (task.closing && task.open_sequences() == 0)
                        }
                        None => false,
                    };
                    if more {
                        self.schedule(h);
                    }
                    return Ok(Some(t));
                }
                None => {
                    let _ = self.ready.pop_front();
                    if let Some(task) = self.tasks.get_mut(h) {
                        task.queued = false;
                    }
                }
            }
        }
    }

    fn after_ctrl(&mut self, c: Ctrl) {
        if c.uses_inline() {
            self.inline_busy = false;
            self.inline.reset();
        }
        if let Ctrl::Logout { close: true, .. } = c {
            self.phase = Phase::Draining(CloseReason::LoggedOut);
        }
    }

    fn emit_ctrl(&mut self, c: Ctrl, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let digests = if matches!(c, Ctrl::Login { .. }) {
            Digests::NONE
        } else {
            self.digests
        };
        // Size check before StatSN is consumed.
        let data_len = match c {
            Ctrl::Login { reply, .. } => reply.data_len,
            Ctrl::Text { len, .. } | Ctrl::NopEcho { len, .. } => len,
            Ctrl::Reject { .. } => BHS_LEN,
            _ => 0,
        };
        let required = BHS_LEN + digests.header_len() + digests.data_len(data_len);
        if buf.len() < required {
            return Err(BufferTooSmall { required });
        }
        let (exp_cmd_sn, max_cmd_sn) = self.sns();
        let inline_len = data_len.min(self.inline.items().len());
        let pdu = match c {
            Ctrl::Login {
                reply,
                exp_cmd_sn,
                max_cmd_sn,
            } => Pdu::LoginResponse(LoginResponse {
                cont: reply.cont,
                csg: stage_from_bits(reply.csg),
                nsg: if reply.transit {
                    Some(stage_from_bits(reply.nsg))
                } else {
                    None
                },
                version_max: reply.version_max,
                version_active: reply.version_active,
                isid: reply.isid,
                tsih: reply.tsih,
                itt: reply.itt,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
                status: LoginStatus {
                    class: reply.status.class,
                    detail: reply.status.detail,
                },
                data: self.inline.items().get(..inline_len).unwrap_or_default(),
            }),
            Ctrl::Text {
                itt,
                ttt,
                lun,
                final_bit,
                cont,
                ..
            } => {
                let mut flags = TextFlags::empty();
                flags.set(TextFlags::FINAL, final_bit);
                flags.set(TextFlags::CONTINUE, cont);
                Pdu::TextResponse(TextResponse {
                    flags,
                    lun,
                    itt,
                    ttt,
                    stat_sn: self.next_stat_sn(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    data: self.inline.items().get(..inline_len).unwrap_or_default(),
                })
            }
            Ctrl::NopEcho { itt, lun, .. } => Pdu::NopIn(NopIn {
                lun,
                itt,
                ttt: RESERVED_TAG,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
                data: self.inline.items().get(..inline_len).unwrap_or_default(),
            }),
            Ctrl::NopPing { ttt } => Pdu::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt,
                // A ping does not advance StatSN.
                stat_sn: self.stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data: &[],
            }),
            Ctrl::Reject { reason, ref header } => {
                let stat_sn = self.next_stat_sn();
                return emit(
                    &Pdu::Reject(Reject {
                        reason,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        data_sn: 0,
                        data: header,
                    }),
                    digests,
                    buf,
                );
            }
            Ctrl::Status { itt, status } => Pdu::ScsiResponse(ScsiResponse {
                flags: ResponseFlags::empty(),
                response: ScsiResponseCode::CommandCompleted,
                status,
                itt,
                snack_tag: 0,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
                exp_data_sn: 0,
                bidi_read_residual: 0,
                residual: 0,
                data: &[],
            }),
            Ctrl::Tmf { itt, response } => Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response,
                itt,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
            }),
            Ctrl::Logout { itt, response, .. } => {
                let (time2wait, time2retain) = if matches!(response, LogoutResponseCode::Closed) {
                    (0, 0)
                } else {
                    (
                        self.params.default_time2wait,
                        self.params.default_time2retain,
                    )
                };
                Pdu::LogoutResponse(LogoutResponse {
                    response,
                    itt,
                    stat_sn: self.next_stat_sn(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    time2wait,
                    time2retain,
                })
            }
            Ctrl::Async { event, parameter3 } => Pdu::AsyncMessage(AsyncMessage {
                lun: 0,
                stat_sn: self.next_stat_sn(),
                exp_cmd_sn,
                max_cmd_sn,
                event,
                vcode: 0,
                parameter1: 0,
                parameter2: 0,
                parameter3,
                data: &[],
            }),
        };
        emit(&pdu, digests, buf)
    }

    fn emit_task(
        &mut self,
        h: TaskHandle,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, BufferTooSmall> {
        let digests = self.digests;
        let (exp_cmd_sn, max_cmd_sn) = self.sns();
        let stat_sn_now = self.stat_sn;
        let p = self.params;
        let Some(t) = self.tasks.get_mut(h) else {
            return Ok(None);
        };
        let header_required = BHS_LEN + digests.header_len();
        if t.has_unsent_r2t() {
            if buf.len() < header_required {
                return Err(BufferTooSmall {
                    required: header_required,
                });
            }
            let Some((slot, r2t_sn)) = t.next_unsent_r2t() else {
                return Ok(None);
            };
            let pdu = Pdu::R2t(R2t {
                lun: t.lun,
                itt: t.itt,
                ttt: slot.ttt,
                stat_sn: stat_sn_now,
                exp_cmd_sn,
                max_cmd_sn,
                r2t_sn,
                buffer_offset: slot.offset,
                desired_len: slot.len,
            });
            let len = emit(&pdu, digests, buf)?;
            return Ok(Some(Transmit {
                len,
                data: None,
                finished: None,
            }));
        }
        if t.has_data_in() {
            if buf.len() < header_required {
                return Err(BufferTooSmall {
                    required: header_required,
                });
            }
            let Some(seg) = t.next_data_in(p.max_xmit_data_segment_length, p.max_burst_length)
            else {
                return Ok(None);
            };
            let mut flags = DataInFlags::empty();
            flags.set(DataInFlags::FINAL, seg.final_bit);
            let (mut status, mut residual, stat_sn) = (0, 0, stat_sn_now);
            if let Some(st) = seg.status {
                let (under, over, count) = residual_parts(st.residual);
                flags |= DataInFlags::STATUS;
                flags.set(DataInFlags::UNDERFLOW, under);
                flags.set(DataInFlags::OVERFLOW, over);
                status = st.status;
                residual = count;
            }
            let (lun, itt) = (t.lun, t.itt);
            let (exp_cmd_sn, max_cmd_sn) = if seg.status.is_some() {
                // The final PDU frees the task: advertise the window with its slot open.
                self.finish_task(h);
                self.sns()
            } else {
                (exp_cmd_sn, max_cmd_sn)
            };
            let pdu = Pdu::DataIn(DataIn {
                flags,
                status,
                lun,
                itt,
                ttt: RESERVED_TAG,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn: seg.data_sn,
                buffer_offset: seg.offset,
                residual,
                data: &[],
            });
            let len = wire::emit_header(&pdu, seg.len as usize, digests, buf).map_err(|_| {
                BufferTooSmall {
                    required: header_required,
                }
            })?;
            if seg.status.is_some() {
                self.stat_sn = self.stat_sn.wrapping_add(1);
            }
            return Ok(Some(Transmit {
                len,
                data: Some(TaskData {
                    task: h,
                    offset: seg.offset,
                    len: seg.len,
                    digest: digests.data && seg.len > 0,
                }),
                finished: seg.status.map(|_| h),
            }));
        }
        if !(t.closing && t.open_sequences() == 0) {
            return Ok(None);
        }
        let Some(resp) = t.response else {
            // Aborted: free the slot silently.
            self.finish_task(h);
            return Ok(None);
        };
        let sense_len = usize::from(resp.sense_len).min(MAX_SENSE_LEN);
        let data_len = if sense_len > 0 { sense_len + 2 } else { 0 };
        let required = header_required + digests.data_len(data_len);
        if buf.len() < required {
            return Err(BufferTooSmall { required });
        }
        let mut data = [0u8; MAX_SENSE_LEN + 2];
        if sense_len > 0 {
            data[..2].copy_from_slice(&(sense_len as u16).to_be_bytes());
            data[2..2 + sense_len].copy_from_slice(&t.sense[..sense_len]);
        }
        let (under, over, count) = residual_parts(resp.status.residual);
        let mut flags = ResponseFlags::empty();
        flags.set(ResponseFlags::UNDERFLOW, under);
        flags.set(ResponseFlags::OVERFLOW, over);
        let (itt, exp_data_sn) = (t.itt, t.sn);
        // The response frees the task: advertise the window with its slot open.
        self.finish_task(h);
        let (exp_cmd_sn, max_cmd_sn) = self.sns();
        let pdu = Pdu::ScsiResponse(ScsiResponse {
            flags,
            response: ScsiResponseCode::CommandCompleted,
            status: resp.status.status,
            itt,
            snack_tag: 0,
            stat_sn: stat_sn_now,
            exp_cmd_sn,
            max_cmd_sn,
            exp_data_sn,
            bidi_read_residual: 0,
            residual: count,
            data: &data[..data_len],
        });
        let len = emit(&pdu, digests, buf)?;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Ok(Some(Transmit {
            len,
            data: None,
            finished: Some(h),
        }))
    }
}

fn emit(pdu: &Pdu<'_>, digests: Digests, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    wire::emit_pdu(pdu, digests, buf).map_err(|e| match e {
        Error::BufferTooSmall { required } => BufferTooSmall { required },
        _ => BufferTooSmall {
            required: pdu.wire_len(digests),
        },
    })
}

fn stage_from_bits(bits: u8) -> Stage {
    match bits & 3 {
        0 => Stage::SecurityNegotiation,
        1 => Stage::LoginOperational,
        _ => Stage::FullFeature,
    }
}

fn login_header(req: &LoginRequest<'_>) -> LoginHeader {
    LoginHeader {
        transit: req.nsg.is_some(),
        cont: req.cont,
        csg: req.csg.to_u8(),
        nsg: req.nsg.map_or(0, |s| s.to_u8()),
        version_max: req.version_max,
        version_min: req.version_min,
        isid: req.isid,
        tsih: req.tsih,
        itt: req.itt,
        cid: req.cid,
        cmd_sn: req.cmd_sn,
        exp_stat_sn: req.exp_stat_sn,
    }
}
