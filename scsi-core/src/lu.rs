//! The logical unit: task table, ordering, per-nexus state and the command state machine.

use crate::cdb::{self, CDB_MAX, Cdb, op};
use crate::config::LuConfig;
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey};
use crate::types::*;

mod copy;
#[cfg(test)]
mod native_caw_tests;
mod reservations;
mod sanitize;

pub(crate) use copy::CopyPeer;

/// Unit attentions queued per nexus.
pub const UA_QUEUE: usize = 8;

/// Longest SCSI name string kept for VPD 0x83.
pub const SCSI_NAME_MAX: usize = 224;

#[derive(Clone, Copy, Debug)]
pub(crate) struct NexusState {
    pub(crate) id: NexusId,
    ua: [Asc; UA_QUEUE],
    ua_len: u8,
    pub(crate) prevent: bool,
    /// Initiator port name (persistent reservations).
    pub(crate) port: crate::pr::PortName,
    /// Relative target port the nexus came through.
    pub(crate) rtp: u16,
    /// The mode parameters when MODE PARAMETERS CHANGED was queued for this nexus.
    pub(crate) mode_seen: Option<ModeState>,
    /// No command has been submitted through the nexus yet.
    pub(crate) fresh: bool,
}

impl NexusState {
    fn new(id: NexusId, rtp: u16) -> NexusState {
        let mut n = NexusState {
            id,
            ua: [Asc(0); UA_QUEUE],
            ua_len: 0,
            prevent: false,
            port: crate::pr::PortName::synthetic(id),
            rtp,
            mode_seen: None,
            fresh: true,
        };
        n.push_ua(Asc::POWER_ON_RESET);
        n
    }
    fn push_ua(&mut self, a: Asc) {
        // A reset supersedes every other pending condition (SPC-4 5.14).
        if a.asc() == 0x29 {
            self.ua_len = 0;
        }
        let len = usize::from(self.ua_len);
        if self.ua[..len].contains(&a) {
            return;
        }
        if len < UA_QUEUE {
            self.ua[len] = a;
            self.ua_len += 1;
        }
    }
    fn pop_ua(&mut self) -> Option<Asc> {
        let len = usize::from(self.ua_len);
        if len == 0 {
            return None;
        }
        let a = self.ua[0];
        self.ua.copy_within(1..len, 0);
        self.ua_len -= 1;
        Some(a)
    }
    pub(crate) fn remove_ua(&mut self, a: Asc) {
        let len = usize::from(self.ua_len);
        if let Some(i) = self.ua[..len].iter().position(|x| *x == a) {
            self.ua.copy_within(i + 1..len, i);
            self.ua_len -= 1;
        }
    }
    pub(crate) fn pending_ua(&self) -> &[Asc] {
        &self.ua[..usize::from(self.ua_len)]
    }
}

#[derive(Clone, Copy, Debug)]
enum Pend {
    DataOut(u32),
    Io(IoRequest),
    DataIn(u32),
    Complete {
        status: ScsiStatus,
        sense: Option<Sense>,
        residual: Residual,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Queued,
    Pending,
    WaitDataOut,
    WaitIo,
    WaitEmit,
    /// Aborted while its I/O runs in the runtime; freed when the I/O is reported.
    Aborted,
}

#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    Sense(Sense),
    LbaStatus {
        lba: u64,
        blocks: u32,
        mapped: bool,
    },
    /// EXTENDED COPY: its list identifier and whether its results are held.
    Copy {
        list_id: u8,
        hold: bool,
    },
}

#[derive(Clone, Copy)]
pub(crate) struct Task {
    id: TaskId,
    lun: crate::lun::Lun,
    seq: u64,
    attr: TaskAttr,
    cdb: Cdb,
    cdb_len: u8,
    expected: u32,
    /// Medium range touched (lba, end, writes) for ordering.
    range: Option<(u64, u64, bool)>,
    phase: Phase,
    pend: Pend,
    /// Bytes the command wants to move (for the residual).
    wanted: u32,
    /// Emulated Data-In length handed out.
    data_in_len: u32,
    /// Block I/O parameters kept between stages.
    lba: u64,
    blocks: u64,
    fua: bool,
    dpo: bool,
    stage: u8,
    extra: Extra,
}

/// Mode parameters that can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModeState {
    pub(crate) wce: bool,
    pub(crate) d_sense: bool,
    pub(crate) swp: bool,
}

/// An emulated SBC disk: a sans-IO state machine with room for `TASKS` active tasks and
/// `NEXUS` I_T nexuses. See the crate documentation for the call order.
pub struct LogicalUnit<const TASKS: usize, const NEXUS: usize> {
    pub(crate) cfg: LuConfig,
    pub(crate) present: bool,
    tasks: [Option<Task>; TASKS],
    pub(crate) nexus: [Option<NexusState>; NEXUS],
    next_seq: u64,
    pub(crate) mode: ModeState,
    pub(crate) medium_loaded: bool,
    pub(crate) scsi_name: [u8; SCSI_NAME_MAX],
    pub(crate) scsi_name_len: usize,
    /// Number of LUNs REPORT LUNS lists (kept up to date by the Target).
    pub(crate) lun_count: u16,
    /// REPORT LUNS lists LUN 0 ahead of the inventory (no LU configured as LUN 0).
    pub(crate) report_lun0: bool,
    /// Persistent reservations (one registration per I_T nexus at most).
    pub(crate) pr: crate::pr::PrState<NEXUS>,
    /// The nexus holding a RESERVE (6)/(10) reservation.
    pub(crate) legacy: Option<NexusId>,
    /// The initiator (device name) that requested the last TARGET COLD RESET: its first
    /// new nexus afterwards gets no POWER ON unit attention (it knows of the reset).
    cold_reset_by: Option<crate::pr::PortName>,
    /// Whether [`Self::poll_action_lun`] may find work: set whenever a task is queued,
    /// becomes pending or is freed (which may unblock queued ones), cleared when a poll
    /// finds nothing. Saves scanning the task table of an idle LU on every poll.
    ready_hint: bool,
    /// Whether a task may be in `Phase::Pending`: set when one becomes pending, cleared
    /// when a scan finds none. Spares [`Self::poll_action_lun`] the scan for pending tasks
    /// when only queued ones changed (and the reverse with `maybe_queued`).
    maybe_pending: bool,
    /// Whether a task may be in `Phase::Queued`: set when one is queued, cleared when a
    /// scan finds none (a queued task held back by an older one keeps it set).
    maybe_queued: bool,
    /// One past the highest occupied task slot: scans of the task table stop there (tasks
    /// take the lowest free slot, so this stays near the queue depth).
    hi: usize,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS.
    copy_results: [Option<copy::CopyResult>; copy::COPY_RESULTS],
    copy_next: usize,
    /// SANITIZE in progress / failure mode.
    sanitize: sanitize::SanitizeState,
}

type Step = Result<Pend, Sense>;

impl<const TASKS: usize, const NEXUS: usize> LogicalUnit<TASKS, NEXUS> {
    /// A logical unit with this configuration, no tasks and no nexus.
    pub fn new(cfg: LuConfig) -> Self {
        LogicalUnit {
            cfg,
            present: true,
            tasks: [const { None }; TASKS],
            nexus: [const { None }; NEXUS],
            next_seq: 0,
            mode: ModeState {
                wce: cfg.write_cache,
                d_sense: false,
                swp: false,
            },
            medium_loaded: true,
            scsi_name: [0; SCSI_NAME_MAX],
            scsi_name_len: 0,
            lun_count: 0,
            report_lun0: false,
            pr: crate::pr::PrState::new(),
            legacy: None,
            copy_results: [None; copy::COPY_RESULTS],
            copy_next: 0,
            cold_reset_by: None,
            ready_hint: false,
            maybe_pending: false,
            maybe_queued: false,
            hi: 0,
            sanitize: sanitize::SanitizeState {
                running: None,
                failed: false,
            },
        }
    }

    /// The responder a [`crate::Target`] uses for LUNs that do not exist: INQUIRY answers
    /// with peripheral qualifier 011b, REPORT LUNS works, everything else is
    /// LOGICAL UNIT NOT SUPPORTED.
    pub fn not_present() -> Self {
        let mut lu = Self::new(LuConfig::new(0));
        lu.present = false;
        lu
    }

    /// The configuration.
    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    /// Whether the (removable) medium is loaded.
    pub fn medium_loaded(&self) -> bool {
        self.medium_loaded
    }

    /// Whether writes are refused (read-only configuration or the SWP mode bit).
    pub fn write_protected(&self) -> bool {
        self.cfg.read_only || self.mode.swp
    }

    /// Whether the write cache is enabled (caching mode page WCE): when false every write
    /// is handed out with `fua` set.
    pub fn write_cache_enabled(&self) -> bool {
        self.mode.wce
    }

    /// Set how many LUNs REPORT LUNS lists besides LUN 0 when `lun0` (the
    /// [`crate::Target`] does this itself).
    pub fn set_report_luns(&mut self, count: u16, lun0: bool) {
        self.lun_count = count;
        self.report_lun0 = lun0;
    }

    /// Set the SCSI name string reported in VPD 0x83 (the iSCSI target name); longer names
    /// are truncated to [`SCSI_NAME_MAX`] bytes.
    pub fn set_scsi_name(&mut self, name: &str) {
        let b = name.as_bytes();
        let n = b.len().min(SCSI_NAME_MAX);
        self.scsi_name[..n].copy_from_slice(&b[..n]);
        self.scsi_name_len = n;
    }

    /// Change the capacity (after the backing store grew): raises CAPACITY DATA HAS CHANGED
    /// on every nexus.
    pub fn set_num_blocks(&mut self, n: u64) {
        if n != self.cfg.num_blocks {
            self.cfg.num_blocks = n;
            self.raise_unit_attention(UnitAttention::CapacityChanged);
        }
    }

    /// Register an I_T nexus; it starts with a POWER ON/RESET unit attention. Adding a known
    /// nexus is a no-op.
    pub fn add_nexus(&mut self, id: NexusId) -> Result<(), NexusError> {
        if self.nexus_index(id).is_some() {
            return Ok(());
        }
        // The nexus' home slot first (see `nexus_index`), else the first free one.
        let home = Self::nexus_home(id);
        let free = match self.nexus.get(home) {
            Some(None) => Some(home),
            _ => self.nexus.iter().position(|n| n.is_none()),
        };
        match free.and_then(|k| self.nexus.get_mut(k)) {
            Some(slot) => {
                *slot = Some(NexusState::new(id, self.cfg.relative_port));
                Ok(())
            }
            None => Err(NexusError::TableFull),
        }
    }

    /// Forget an I_T nexus (session gone): its tasks are aborted and its PREVENT state is
    /// released.
    pub fn remove_nexus(&mut self, id: NexusId) -> TmfOutcome {
        let out = self.abort_where(|t| t.id.nexus == id);
        if let Some(i) = self.nexus_index(id) {
            self.nexus[i] = None;
        }
        // I_T nexus loss releases a RESERVE (6)/(10) reservation (persistent ones stay).
        if self.legacy == Some(id) {
            self.legacy = None;
        }
        out
    }

    /// Queue a unit attention for every nexus.
    pub fn raise_unit_attention(&mut self, ua: UnitAttention) {
        for n in self.nexus.iter_mut().flatten() {
            n.push_ua(ua.asc());
        }
    }

    /// Queue a unit attention for every nexus but `except`.
    pub fn raise_unit_attention_except(&mut self, except: NexusId, ua: UnitAttention) {
        for n in self.nexus.iter_mut().flatten() {
            if n.id != except {
                n.push_ua(ua.asc());
            }
        }
    }

    /// The mode parameters changed from `old` through MODE SELECT of nexus `by`: every other
    /// nexus gets MODE PARAMETERS CHANGED. A nexus whose pending MODE PARAMETERS CHANGED
    /// was raised when the parameters were exactly the current ones again (a change undone
    /// before it could observe it) has it withdrawn: there is nothing left to report.
    pub(crate) fn mode_changed(&mut self, by: NexusId, old: ModeState) {
        let now = self.mode;
        for n in self.nexus.iter_mut().flatten() {
            if n.id == by {
                continue;
            }
            let pending = n.pending_ua().contains(&Asc::MODE_PARAMETERS_CHANGED);
            if pending && n.mode_seen == Some(now) {
                n.remove_ua(Asc::MODE_PARAMETERS_CHANGED);
                n.mode_seen = None;
            } else if !pending {
                n.push_ua(Asc::MODE_PARAMETERS_CHANGED);
                n.mode_seen = Some(old);
            }
        }
    }

    /// The unit attentions pending for a nexus, oldest first.
    pub fn pending_unit_attentions(&self, id: NexusId) -> &[Asc] {
        match self.nexus_index(id) {
            Some(i) => self.nexus[i].as_ref().map_or(&[], |n| n.pending_ua()),
            None => &[],
        }
    }

    /// Number of tasks in the table (including aborted ones whose I/O still runs).
    pub fn active_tasks(&self) -> usize {
        self.tasks.iter().flatten().count()
    }

    /// Whether a task is known (queued, running or aborted with I/O in flight).
    pub fn has_task(&self, task: TaskId) -> bool {
        self.task_index(task).is_some()
    }

    /// Whether any nexus holds a PREVENT MEDIUM REMOVAL.
    pub fn removal_prevented(&self) -> bool {
        self.nexus.iter().flatten().any(|n| n.prevent)
    }

    /// The slot a nexus takes when it is free: lookups of the nexus behind every command
    /// then cost one comparison, however large `NEXUS` is (ids handed out in sequence, as
    /// runtimes do, rarely collide; a collision costs a scan, not correctness).
    fn nexus_home(id: NexusId) -> usize {
        (id.0 as usize) % NEXUS.max(1)
    }

    fn nexus_index(&self, id: NexusId) -> Option<usize> {
        let home = Self::nexus_home(id);
        if self
            .nexus
            .get(home)
            .is_some_and(|n| n.as_ref().is_some_and(|n| n.id == id))
        {
            return Some(home);
        }
        self.nexus
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.id == id))
    }

    fn task_index(&self, id: TaskId) -> Option<usize> {
        self.live()
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.id == id))
    }

    /// The task slots that can be occupied (`..hi`).
    fn live(&self) -> &[Option<Task>] {
        self.tasks.get(..self.hi).unwrap_or(&self.tasks)
    }

    /// Lowers `hi` past freed slots at the top.
    fn shrink_hi(&mut self) {
        while self.hi > 0 && self.tasks.get(self.hi - 1).is_some_and(|t| t.is_none()) {
            self.hi -= 1;
        }
    }

    /// Submit a command. `cdb` is the CDB as received (the 16-byte iSCSI field, possibly
    /// with an extended-CDB AHS), `expected_len` the expected data transfer length.
    ///
    /// The command is queued; its first action comes out of [`Self::poll_action`] once the
    /// task attribute and overlapping commands allow it to run. An unknown nexus is
    /// registered on the fly (with its POWER ON unit attention).
    pub fn submit(
        &mut self,
        nexus: NexusId,
        tag: TaskTag,
        cdb: &[u8],
        dir: DataDirection,
        expected_len: u32,
        attr: TaskAttr,
    ) -> Result<(), SubmitError> {
        self.submit_lun(crate::lun::Lun(0), nexus, tag, cdb, dir, expected_len, attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_lun(
        &mut self,
        lun: crate::lun::Lun,
        nexus: NexusId,
        tag: TaskTag,
        cdb: &[u8],
        dir: DataDirection,
        expected_len: u32,
        attr: TaskAttr,
    ) -> Result<(), SubmitError> {
        let _ = dir;
        let id = TaskId { nexus, tag };
        if self.task_index(id).is_some() {
            return Err(SubmitError::DuplicateTag);
        }
        let slot = self
            .tasks
            .iter()
            .position(|t| t.is_none())
            .ok_or(SubmitError::TaskSetFull)?;
        if self.present && self.nexus_index(nexus).is_none() {
            self.add_nexus(nexus)
                .map_err(|_| SubmitError::NexusTableFull)?;
        }
        if let Some(n) = self.nexus_index(nexus).and_then(|k| self.nexus[k].as_mut()) {
            n.fresh = false;
        }
        let mut c = [0u8; CDB_MAX];
        let n = cdb.len().min(CDB_MAX);
        c[..n].copy_from_slice(&cdb[..n]);
        let c = Cdb(c);
        let range = if self.present {
            if c.opcode() == op::UNMAP {
                Some((0, u64::MAX, true))
            } else {
                cdb::rw_layout(&c).map(|l| {
                    let blocks = if l.blocks == 0 {
                        match c.opcode() {
                            op::WRITE_SAME_10
                            | op::WRITE_SAME_16
                            | op::SYNC_CACHE_10
                            | op::SYNC_CACHE_16 => u64::MAX,
                            _ => 0,
                        }
                    } else {
                        l.blocks
                    };
                    (
                        l.lba,
                        l.lba.saturating_add(blocks),
                        cdb::writes_medium(c.opcode()),
                    )
                })
            }
        } else {
            None
        };
        self.ready_hint = true;
        self.maybe_queued = true;
        self.hi = self.hi.max(slot + 1);
        self.tasks[slot] = Some(Task {
            id,
            lun,
            seq: self.next_seq,
            attr,
            cdb: c,
            cdb_len: u8::try_from(cdb.len()).unwrap_or(u8::MAX),
            expected: expected_len,
            range,
            phase: Phase::Queued,
            pend: Pend::DataIn(0),
            wanted: 0,
            data_in_len: 0,
            lba: 0,
            blocks: 0,
            fua: false,
            dpo: false,
            stage: 0,
            extra: Extra::None,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    /// The next thing the runtime must do, or `None` when every task waits for the runtime
    /// or for older tasks. Call it until it returns `None` after every `submit` and every
    /// callback. Only actions that may run now are handed out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.poll_action_lun().map(|(_, a)| a)
    }

    pub(crate) fn poll_action_lun(&mut self) -> Option<(crate::lun::Lun, Action)> {
        if !self.ready_hint {
            return None;
        }
        loop {
            if self.maybe_pending {
                if let Some(i) = self.oldest(|t| t.phase == Phase::Pending) {
                    let lun = self.tasks[i].as_ref().map_or(crate::lun::Lun(0), |t| t.lun);
                    return Some((lun, self.hand_out(i)));
                }
                self.maybe_pending = false;
            }
            let Some(i) = self.next_startable() else {
                // Nothing pending or startable until a task is queued, pends or ends.
                self.ready_hint = false;
                return None;
            };
            self.start(i);
        }
    }

    /// Index of the matching task that should go first: HEAD OF QUEUE, then lowest sequence.
    fn oldest(&self, f: impl Fn(&Task) -> bool) -> Option<usize> {
        let mut best: Option<(usize, bool, u64)> = None;
        for (i, t) in self.live().iter().enumerate() {
            let Some(t) = t else { continue };
            if !f(t) {
                continue;
            }
            let hoq = t.attr == TaskAttr::HeadOfQueue;
            let better = match best {
                None => true,
                Some((_, bh, bs)) => (hoq && !bh) || (hoq == bh && t.seq < bs),
            };
            if better {
                best = Some((i, hoq, t.seq));
            }
        }
        best.map(|b| b.0)
    }

    fn next_startable(&mut self) -> Option<usize> {
        if !self.maybe_queued {
            return None;
        }
        // One pass for the ordering facts every candidate needs.
        let mut oldest = u64::MAX;
        let mut oldest_ordered = u64::MAX;
        let mut any_queued = false;
        for t in self.live().iter().flatten() {
            oldest = oldest.min(t.seq);
            if t.attr == TaskAttr::Ordered {
                oldest_ordered = oldest_ordered.min(t.seq);
            }
            any_queued |= t.phase == Phase::Queued;
        }
        if !any_queued {
            self.maybe_queued = false;
            return None;
        }
        let mut best: Option<(usize, bool, u64)> = None;
        for (i, t) in self.live().iter().enumerate() {
            let Some(t) = t else { continue };
            if t.phase != Phase::Queued || !self.may_start(t, oldest, oldest_ordered) {
                continue;
            }
            let hoq = t.attr == TaskAttr::HeadOfQueue;
            let better = match best {
                None => true,
                Some((_, bh, bs)) => (hoq && !bh) || (hoq == bh && t.seq < bs),
            };
            if better {
                best = Some((i, hoq, t.seq));
            }
        }
        best.map(|b| b.0)
    }

    /// SAM-5 8.6 ordering: HEAD OF QUEUE at once, ORDERED after every older task, SIMPLE
    /// after older ORDERED tasks and after older tasks on an overlapping LBA range when
    /// either writes.
    fn may_start(&self, t: &Task, oldest: u64, oldest_ordered: u64) -> bool {
        match t.attr {
            TaskAttr::HeadOfQueue => true,
            TaskAttr::Ordered => t.seq <= oldest,
            TaskAttr::Simple | TaskAttr::Aca => {
                if oldest_ordered < t.seq {
                    return false;
                }
                let Some((b0, b1, bw)) = t.range else {
                    return true;
                };
                !self.live().iter().flatten().any(|o| {
                    if o.seq >= t.seq {
                        return false;
                    }
                    match o.range {
                        Some((a0, a1, aw)) => {
                            (aw || bw)
                                && a0 < b1.max(b0.saturating_add(1))
                                && b0 < a1.max(a0.saturating_add(1))
                        }
                        None => false,
                    }
                })
            }
        }
    }

    fn hand_out(&mut self, i: usize) -> Action {
        let d_sense = self.mode.d_sense;
        let Some(t) = self.tasks[i].as_mut() else {
            // Unreachable by construction; answer something harmless.
            return Action::DataIn {
                task: TaskId::new(0, 0),
                len: 0,
            };
        };
        let id = t.id;
        match t.pend {
            Pend::DataOut(len) => {
                t.phase = Phase::WaitDataOut;
                Action::NeedDataOut { task: id, len }
            }
            Pend::Io(io) => {
                t.phase = Phase::WaitIo;
                Action::Io(io)
            }
            Pend::DataIn(len) => {
                t.phase = Phase::WaitEmit;
                Action::DataIn { task: id, len }
            }
            Pend::Complete {
                status,
                sense,
                residual,
            } => {
                self.free(i);
                Action::Complete {
                    task: id,
                    status,
                    sense: sense.map(|s| s.encode(d_sense)),
                    residual,
                }
            }
        }
    }

    fn set_pend(&mut self, i: usize, p: Pend) {
        if let Some(t) = self.tasks[i].as_mut() {
            t.pend = p;
            t.phase = Phase::Pending;
            self.ready_hint = true;
            self.maybe_pending = true;
        }
    }

    fn good(&self, i: usize) -> Pend {
        let (expected, wanted) = self.tasks[i]
            .as_ref()
            .map_or((0, 0), |t| (t.expected, t.wanted));
        Pend::Complete {
            status: ScsiStatus::Good,
            sense: None,
            residual: Residual::between(expected, wanted),
        }
    }

    fn fail(&self, i: usize, sense: Sense) -> Pend {
        let expected = self.tasks[i].as_ref().map_or(0, |t| t.expected);
        Pend::Complete {
            status: ScsiStatus::CheckCondition,
            sense: Some(sense),
            residual: Residual::between(expected, 0),
        }
    }

    // ---------------------------------------------------------------- command start

    fn start(&mut self, i: usize) {
        let p = match self.start_inner(i) {
            Ok(p) => p,
            Err(s) => {
                let mut p = self.fail(i, s);
                // Keep an overflow visible when a write was refused for it.
                if let (Pend::Complete { residual, .. }, Some(t)) = (&mut p, self.tasks[i].as_ref())
                {
                    if t.wanted > t.expected {
                        *residual = Residual::Overflow(t.wanted - t.expected);
                    }
                }
                p
            }
        };
        self.set_pend(i, p);
    }

    fn start_inner(&mut self, i: usize) -> Step {
        let Some(t) = self.tasks[i] else {
            return Err(Sense::invalid_opcode());
        };
        let c = t.cdb;
        let o = c.opcode();
        if t.cdb_len == 0 {
            return Err(Sense::invalid_opcode());
        }
        if usize::from(t.cdb_len) > CDB_MAX {
            return Err(Sense::invalid_cdb(0, None));
        }
        if !self.present {
            return self.start_absent(i, c);
        }
        // Unit attention (SPC-4 5.14): INQUIRY, REPORT LUNS and REQUEST SENSE go through.
        let ni = self.nexus_index(t.id.nexus);
        match o {
            op::INQUIRY => {}
            op::REPORT_LUNS => {
                if let Some(n) = ni.and_then(|n| self.nexus[n].as_mut()) {
                    n.remove_ua(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                }
            }
            op::REQUEST_SENSE => {}
            _ => {
                if let Some(a) = ni
                    .and_then(|n| self.nexus[n].as_mut())
                    .and_then(|n| n.pop_ua())
                {
                    return Err(Sense::new(SenseKey::UnitAttention, a));
                }
            }
        }
        self.sanitize_check(&c)?;
        if let Some(t) = self.tasks[i].as_ref() {
            if self.reservation_conflict(t) {
                return Ok(self.conflict(i));
            }
        }
        // Control byte: NACA and the obsolete LINK bit are not supported.
        let ctl_at = cdb::cdb_len(o) - 1;
        if c.b(ctl_at) & 0x05 != 0 {
            return Err(Sense::invalid_cdb(ctl_at as u16, Some(2)));
        }
        match o {
            op::TEST_UNIT_READY => {
                self.need_medium()?;
                Ok(self.good(i))
            }
            op::REQUEST_SENSE => self.request_sense(i, c),
            op::INQUIRY => self.inquiry(i, c),
            op::REPORT_LUNS => self.report_luns(i, c),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(i, c),
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => self.mode_select_start(i, c),
            op::START_STOP_UNIT => self.start_stop(i, c),
            op::PREVENT_ALLOW => self.prevent_allow(i, c),
            op::READ_CAPACITY_10 => {
                if c.b(8) & 0x01 == 0 && c.u32(2) != 0 {
                    return Err(Sense::invalid_cdb(2, None));
                }
                self.need_medium()?;
                self.data_in(i, c, 8)
            }
            op::SERVICE_ACTION_IN_16 => match c.b(1) & 0x1F {
                op::SA_READ_CAPACITY_16 => {
                    self.need_medium()?;
                    self.data_in(i, c, c.u32(10))
                }
                op::SA_GET_LBA_STATUS => self.get_lba_status(i, c),
                _ => Err(Sense::invalid_cdb(1, Some(4))),
            },
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.read(i, c),
            op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_VERIFY_10
            | op::WRITE_VERIFY_12
            | op::WRITE_VERIFY_16
            | op::ORWRITE_16
            | op::WRITE_ATOMIC_16 => self.write(i, c),
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(i, c),
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(i, c),
            op::UNMAP => self.unmap_start(i, c),
            op::COMPARE_AND_WRITE => self.compare_and_write(i, c),
            op::PRE_FETCH_10 | op::PRE_FETCH_16 | op::SYNC_CACHE_10 | op::SYNC_CACHE_16 => {
                self.prefetch_sync(i, c)
            }
            op::READ_DEFECT_DATA_10 => self.data_in(i, c, u32::from(c.u16(7))),
            op::READ_DEFECT_DATA_12 => self.data_in(i, c, c.u32(6)),
            op::PERSISTENT_RESERVE_IN => self.prin_start(i, c),
            op::EXTENDED_COPY => self.extended_copy_start(i, c),
            op::SANITIZE => self.sanitize_start(i, c),
            op::RECEIVE_COPY_RESULTS => self.receive_copy_results_start(i, c),
            op::MAINTENANCE_IN => match c.b(1) & 0x1F {
                op::SA_REPORT_SUPPORTED_OPCODES => {
                    crate::opcodes::check(c.b(2) & 0x07, c.b(3))
                        .map_err(|(b, bit)| Sense::invalid_cdb(b, bit))?;
                    self.data_in(i, c, c.u32(6))
                }
                op::SA_REPORT_SUPPORTED_TMFS => self.data_in(i, c, c.u32(6)),
                _ => Err(Sense::invalid_cdb(1, Some(4))),
            },
            op::PERSISTENT_RESERVE_OUT => self.prout_start(i, c),
            op::RESERVE_6 | op::RESERVE_10 => self.reserve_legacy(i, c),
            op::RELEASE_6 | op::RELEASE_10 => self.release_legacy(i, c),
            _ => Err(Sense::invalid_opcode()),
        }
    }

    /// Whether a task of the "not present" responder addresses LUN 0, which a target
    /// without a configured LUN 0 presents as a storage array controller (SPC-4 requires
    /// LUN 0 to be accessible).
    fn is_controller(&self, t: &Task) -> bool {
        !self.present && t.lun.number() == Some(0)
    }

    fn start_absent(&mut self, i: usize, c: Cdb) -> Step {
        let ctl = self.tasks[i]
            .as_ref()
            .is_some_and(|t| self.is_controller(t));
        if ctl {
            return match c.opcode() {
                op::INQUIRY => {
                    if c.b(1) & 0xFE != 0 {
                        return Err(Sense::invalid_cdb(1, Some(1)));
                    }
                    let evpd = c.b(1) & 0x01 != 0;
                    if c.b(2) != 0 {
                        return Err(Sense::invalid_cdb(2, None));
                    }
                    let _ = evpd;
                    self.data_in(i, c, u32::from(c.u16(3)))
                }
                op::REPORT_LUNS => self.report_luns(i, c),
                op::TEST_UNIT_READY => Ok(self.good(i)),
                op::REQUEST_SENSE => {
                    if let Some(t) = self.tasks[i].as_mut() {
                        t.extra =
                            Extra::Sense(Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE));
                    }
                    self.data_in(i, c, u32::from(c.b(4)))
                }
                _ => Err(Sense::invalid_opcode()),
            };
        }
        match c.opcode() {
            op::INQUIRY => {
                if c.b(1) & 0x01 != 0 {
                    return Err(Sense::new(
                        SenseKey::IllegalRequest,
                        Asc::LOGICAL_UNIT_NOT_SUPPORTED,
                    ));
                }
                self.inquiry(i, c)
            }
            op::REPORT_LUNS => self.report_luns(i, c),
            op::REQUEST_SENSE => {
                if let Some(t) = self.tasks[i].as_mut() {
                    t.extra = Extra::Sense(Sense::new(
                        SenseKey::IllegalRequest,
                        Asc::LOGICAL_UNIT_NOT_SUPPORTED,
                    ));
                }
                self.data_in(i, c, u32::from(c.b(4)))
            }
            _ => Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::LOGICAL_UNIT_NOT_SUPPORTED,
            )),
        }
    }

    fn need_medium(&self) -> Result<(), Sense> {
        if self.medium_loaded {
            Ok(())
        } else {
            Err(Sense::new(SenseKey::NotReady, Asc::MEDIUM_NOT_PRESENT))
        }
    }

    fn need_writable(&self) -> Result<(), Sense> {
        if self.write_protected() {
            Err(Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED))
        } else {
            Ok(())
        }
    }

    /// Range check: `lba + blocks` must not pass the end of the medium.
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.cfg.num_blocks => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    fn check_max_transfer(&self, blocks: u64, len_byte: u16) -> Result<(), Sense> {
        let max = self.cfg.max_transfer_blocks;
        if max != 0 && blocks > u64::from(max) {
            Err(Sense::invalid_cdb(len_byte, None))
        } else {
            Ok(())
        }
    }

    fn bytes_of(&self, blocks: u64) -> Result<u32, Sense> {
        blocks
            .checked_mul(u64::from(self.cfg.block_bytes()))
            .and_then(|b| u32::try_from(b).ok())
            .ok_or(Sense::invalid_cdb(0, None))
    }

    /// Set `wanted` and refuse commands whose Data-Out would exceed the expected length
    /// (INVALID FIELD IN COMMAND INFORMATION UNIT, residual overflow; FCP-4 9.4.2 option b).
    fn want_data_out(&mut self, i: usize, bytes: u32) -> Result<(), Sense> {
        if let Some(t) = self.tasks[i].as_mut() {
            t.wanted = bytes;
            if bytes > t.expected {
                return Err(Sense::new(
                    SenseKey::IllegalRequest,
                    Asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
                ));
            }
        }
        Ok(())
    }

    fn set_io(&mut self, i: usize, lba: u64, blocks: u64, fua: bool, dpo: bool) {
        if let Some(t) = self.tasks[i].as_mut() {
            t.lba = lba;
            t.blocks = blocks;
            t.fua = fua;
            t.dpo = dpo;
        }
    }

    fn io(&self, i: usize, op: IoOp) -> Pend {
        let t = self.tasks[i].as_ref();
        let (id, lba, blocks, fua, dpo, expected) = t
            .map_or((TaskId::new(0, 0), 0, 0, false, false, 0), |t| {
                (t.id, t.lba, t.blocks, t.fua, t.dpo, t.expected)
            });
        let bytes = blocks
            .saturating_mul(u64::from(self.cfg.block_bytes()))
            .min(u64::from(u32::MAX)) as u32;
        Pend::Io(IoRequest {
            task: id,
            op,
            lba,
            blocks,
            block_size: self.cfg.block_bytes(),
            fua: fua
                || (!self.mode.wce
                    && matches!(op, IoOp::Write | IoOp::WriteSame { .. } | IoOp::OrWrite)),
            dpo,
            data_offset: 0,
            transfer_len: if matches!(op, IoOp::Read) {
                bytes.min(expected)
            } else {
                0
            },
        })
    }

    fn data_in(&mut self, i: usize, c: Cdb, alloc_len: u32) -> Step {
        let full = {
            let Some(t) = self.tasks[i].as_ref() else {
                return Err(Sense::invalid_opcode());
            };
            let mut o = Out::new(&mut []);
            self.emit(t, c, &mut o, &[]);
            u32::try_from(o.pos()).unwrap_or(u32::MAX)
        };
        self.data_in_len(i, full, alloc_len)
    }

    fn data_in_len(&mut self, i: usize, full: u32, alloc_len: u32) -> Step {
        let Some(t) = self.tasks[i].as_mut() else {
            return Err(Sense::invalid_opcode());
        };
        let wanted = full.min(alloc_len);
        t.wanted = wanted;
        let len = wanted.min(t.expected);
        t.data_in_len = len;
        if len == 0 {
            return Ok(self.good(i));
        }
        Ok(Pend::DataIn(len))
    }

    // ---------------------------------------------------------------- SPC commands

    fn request_sense(&mut self, i: usize, c: Cdb) -> Step {
        if c.b(1) & 0xFE != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        let nexus = self.tasks[i].as_ref().map(|t| t.id.nexus);
        let ua = nexus
            .and_then(|n| self.nexus_index(n))
            .and_then(|n| self.nexus[n].as_mut())
            .and_then(|n| n.pop_ua());
        let s = match ua {
            Some(a) => Sense::new(SenseKey::UnitAttention, a),
            None if self.sanitize.running.is_some() => Self::sanitize_sense(),
            None if !self.medium_loaded => Sense::new(SenseKey::NotReady, Asc::MEDIUM_NOT_PRESENT),
            None => Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE),
        };
        if let Some(t) = self.tasks[i].as_mut() {
            t.extra = Extra::Sense(s);
        }
        self.data_in(i, c, u32::from(c.b(4)))
    }

    fn inquiry(&mut self, i: usize, c: Cdb) -> Step {
        let evpd = c.b(1) & 0x01 != 0;
        if c.b(1) & 0xFE != 0 {
            return Err(Sense::invalid_cdb(1, Some(1)));
        }
        if !evpd && c.b(2) != 0 {
            return Err(Sense::invalid_cdb(2, None));
        }
        if evpd && !crate::emulate::VPD_PAGES.contains(&c.b(2)) {
            return Err(Sense::invalid_cdb(2, None));
        }
        self.data_in(i, c, u32::from(c.u16(3)))
    }

    fn report_luns(&mut self, i: usize, c: Cdb) -> Step {
        if !matches!(c.b(2), 0x00 | 0x01 | 0x02 | 0x10 | 0x11 | 0x12) {
            return Err(Sense::invalid_cdb(2, None));
        }
        let n = if matches!(c.b(2), 0x01 | 0x11) {
            0
        } else {
            u32::from(self.lun_count) + u32::from(self.report_lun0)
        };
        self.data_in_len(i, 8 + 8 * n, c.u32(6))
    }

    fn mode_sense(&mut self, i: usize, c: Cdb) -> Step {
        let ten = c.opcode() == op::MODE_SENSE_10;
        let pc = c.b(2) >> 6;
        let page = c.b(2) & 0x3F;
        let sub = c.b(3);
        if pc == 3 {
            return Err(Sense {
                key: SenseKey::IllegalRequest,
                asc: Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
                info: None,
                sks: Some(crate::sense::FieldPointer::cdb(2, Some(7)).to_bytes()),
            });
        }
        if !crate::emulate::mode_page_known(page, sub) {
            return Err(
                if crate::emulate::mode_page_known(page, 0) || page == 0x3F {
                    Sense::invalid_cdb(3, None)
                } else {
                    Sense::invalid_cdb(2, Some(5))
                },
            );
        }
        let alloc_len = if ten {
            u32::from(c.u16(7))
        } else {
            u32::from(c.b(4))
        };
        self.data_in(i, c, alloc_len)
    }

    fn mode_select_start(&mut self, i: usize, c: Cdb) -> Step {
        let ten = c.opcode() == op::MODE_SELECT_10;
        if c.b(1) & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)));
        }
        let len = if ten {
            u32::from(c.u16(7))
        } else {
            u32::from(c.b(4))
        };
        if len == 0 {
            return Ok(self.good(i));
        }
        let hdr = if ten { 8 } else { 4 };
        if len < hdr {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        self.want_data_out(i, len)?;
        Ok(Pend::DataOut(len))
    }

    fn start_stop(&mut self, i: usize, c: Cdb) -> Step {
        let pc = c.b(4) >> 4;
        let loej = c.b(4) & 0x02 != 0;
        let start = c.b(4) & 0x01 != 0;
        if pc != 0 || !loej || !self.cfg.removable {
            return Ok(self.good(i));
        }
        if self.removal_prevented() {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::MEDIUM_REMOVAL_PREVENTED,
            ));
        }
        self.medium_loaded = start;
        Ok(self.good(i))
    }

    fn prevent_allow(&mut self, i: usize, c: Cdb) -> Step {
        let p = c.b(4) & 0x03;
        if p > 1 {
            return Err(Sense::invalid_cdb(4, Some(1)));
        }
        let nexus = self.tasks[i].as_ref().map(|t| t.id.nexus);
        if let Some(n) = nexus
            .and_then(|n| self.nexus_index(n))
            .and_then(|n| self.nexus[n].as_mut())
        {
            n.prevent = p == 1;
        }
        Ok(self.good(i))
    }

    // ---------------------------------------------------------------- SBC commands

    fn read(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        let six = c.opcode() == op::READ_6;
        if !six && c.b(1) & 0xE0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        self.need_medium()?;
        self.check_range(l.lba, l.blocks)?;
        self.check_max_transfer(l.blocks, l.len_byte)?;
        let bytes = self.bytes_of(l.blocks)?;
        let (dpo, fua) = if six {
            (false, false)
        } else {
            (c.b(1) & 0x10 != 0, c.b(1) & 0x08 != 0)
        };
        if let Some(t) = self.tasks[i].as_mut() {
            t.wanted = bytes;
        }
        if l.blocks == 0 {
            return Ok(self.good(i));
        }
        self.set_io(i, l.lba, l.blocks, fua, dpo);
        Ok(self.io(i, IoOp::Read))
    }

    /// WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, ORWRITE 16.
    fn write(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        let o = c.opcode();
        let six = o == op::WRITE_6;
        let verify = matches!(
            o,
            op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16
        );
        if !six && c.b(1) & 0xE0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        if verify && c.b(1) & 0x06 == 0x04 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        if o == op::WRITE_ATOMIC_16 {
            // No atomic boundaries (MAXIMUM ATOMIC BOUNDARY SIZE = 0); the length is held
            // to MAXIMUM ATOMIC TRANSFER LENGTH (the transfer limit, checked below). The
            // write is one I/O and overlapping commands are ordered around it, so no other
            // command sees part of it.
            if c.u16(10) != 0 {
                return Err(Sense::invalid_cdb(10, None));
            }
        }
        self.need_medium()?;
        self.check_range(l.lba, l.blocks)?;
        self.check_max_transfer(l.blocks, l.len_byte)?;
        self.need_writable()?;
        let bytes = self.bytes_of(l.blocks)?;
        let (dpo, fua) = if six {
            (false, false)
        } else {
            (c.b(1) & 0x10 != 0, c.b(1) & 0x08 != 0 || verify)
        };
        // Expected length shorter than the command (FCP-4 9.4.2): whole blocks within the
        // expected length are written and the rest is reported as overflow (option a); a
        // partial block is refused with INVALID FIELD IN COMMAND INFORMATION UNIT
        // (option b), also with the overflow residual.
        let Some(t) = self.tasks[i].as_mut() else {
            return Err(Sense::invalid_opcode());
        };
        t.wanted = bytes;
        let bs = self.cfg.block_bytes();
        let blocks = if bytes > t.expected {
            if t.expected % bs != 0 {
                return Err(Sense::new(
                    SenseKey::IllegalRequest,
                    Asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
                ));
            }
            u64::from(t.expected / bs)
        } else {
            l.blocks
        };
        if blocks == 0 {
            return Ok(self.good(i));
        }
        self.set_io(i, l.lba, blocks, fua, dpo);
        Ok(Pend::DataOut(self.bytes_of(blocks)?))
    }

    fn verify(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        if c.b(1) & 0xE0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        let bytchk = (c.b(1) >> 1) & 0x03;
        if bytchk == 2 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        self.need_medium()?;
        self.check_range(l.lba, l.blocks)?;
        self.check_max_transfer(l.blocks, l.len_byte)?;
        let dpo = c.b(1) & 0x10 != 0;
        let bytes = match bytchk {
            0 => 0,
            1 => self.bytes_of(l.blocks)?,
            _ => self.cfg.block_bytes(),
        };
        if l.blocks == 0 {
            return Ok(self.good(i));
        }
        self.want_data_out(i, bytes)?;
        self.set_io(i, l.lba, l.blocks, false, dpo);
        if let Some(t) = self.tasks[i].as_mut() {
            t.stage = bytchk;
        }
        if bytchk == 0 {
            return Ok(self.io(
                i,
                IoOp::Verify {
                    mode: VerifyMode::Medium,
                },
            ));
        }
        Ok(Pend::DataOut(bytes))
    }

    fn write_same(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        let b1 = c.b(1);
        let sixteen = c.opcode() == op::WRITE_SAME_16;
        if b1 & 0xE0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        let anchor = b1 & 0x10 != 0;
        let unmap = b1 & 0x08 != 0;
        let ndob = sixteen && b1 & 0x01 != 0;
        if b1 & 0x04 != 0 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        if b1 & 0x02 != 0 {
            return Err(Sense::invalid_cdb(1, Some(1)));
        }
        if anchor {
            // ANCHOR needs UNMAP, and anchored blocks are not supported (ANC_SUP = 0).
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        self.need_medium()?;
        let blocks = if l.blocks == 0 {
            match self.cfg.num_blocks.checked_sub(l.lba) {
                Some(b) => b,
                None => return Err(Sense::lba_out_of_range()),
            }
        } else {
            l.blocks
        };
        self.check_range(l.lba, blocks)?;
        let max = self.cfg.max_write_same_blocks;
        if max != 0 && blocks > max {
            return Err(Sense::invalid_cdb(l.len_byte, None));
        }
        self.need_writable()?;
        if unmap && !self.cfg.thin {
            // Without logical block provisioning management (LBPME = 0) there is nothing
            // to unmap: LBPWS/LBPWS10 are clear and the bit is refused.
            return Err(Sense::invalid_cdb(1, Some(3)));
        }
        let bs = self.cfg.block_bytes();
        let expected = self.tasks[i].as_ref().map_or(0, |t| t.expected);
        if ndob {
            if let Some(t) = self.tasks[i].as_mut() {
                t.wanted = 0;
            }
        } else {
            if let Some(t) = self.tasks[i].as_mut() {
                t.wanted = bs;
            }
            if expected != bs {
                return Err(Sense::invalid_cdb(l.len_byte, None));
            }
        }
        if blocks == 0 {
            return Ok(self.good(i));
        }
        self.set_io(i, l.lba, blocks, false, false);
        if let Some(t) = self.tasks[i].as_mut() {
            t.stage = u8::from(unmap && self.cfg.thin);
        }
        if ndob {
            return Ok(self.io(
                i,
                IoOp::WriteSame {
                    unmap: unmap && self.cfg.thin,
                    ndob: true,
                    zero: true,
                },
            ));
        }
        Ok(Pend::DataOut(bs))
    }

    fn unmap_start(&mut self, i: usize, c: Cdb) -> Step {
        // NOT READY and WRITE PROTECTED come first so a fully provisioned LU (LBPU = 0,
        // UNMAP not supported) still reports its medium state like every write command.
        self.need_medium()?;
        self.need_writable()?;
        if !self.cfg.thin {
            return Err(Sense::invalid_opcode());
        }
        if c.b(1) & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)));
        }
        let len = u32::from(c.u16(7));
        if len == 0 {
            return Ok(self.good(i));
        }
        if len < 8 {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        self.want_data_out(i, len)?;
        Ok(Pend::DataOut(len))
    }

    fn compare_and_write(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        if c.b(1) & 0xE0 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        self.need_medium()?;
        if l.blocks > u64::from(crate::emulate::MAX_COMPARE_AND_WRITE) {
            return Err(Sense::invalid_cdb(13, None));
        }
        self.check_range(l.lba, l.blocks)?;
        self.need_writable()?;
        let bytes = self.bytes_of(l.blocks.saturating_mul(2))?;
        let expected = self.tasks[i].as_ref().map_or(0, |t| t.expected);
        self.want_data_out(i, bytes)?;
        if l.blocks == 0 {
            // No blocks but a Data-Out buffer: the initiator meant more blocks than the
            // one-byte field can say (256 and up are above MAXIMUM COMPARE AND WRITE LENGTH).
            if expected != 0 {
                return Err(Sense::invalid_cdb(13, None));
            }
            return Ok(self.good(i));
        }
        if expected != bytes {
            return Err(Sense::invalid_cdb(13, None));
        }
        let dpo = c.b(1) & 0x10 != 0;
        let fua = c.b(1) & 0x08 != 0;
        self.set_io(i, l.lba, l.blocks, fua, dpo);
        Ok(Pend::DataOut(bytes))
    }

    fn prefetch_sync(&mut self, i: usize, c: Cdb) -> Step {
        let Some(l) = cdb::rw_layout(&c) else {
            return Err(Sense::invalid_opcode());
        };
        let sync = matches!(c.opcode(), op::SYNC_CACHE_10 | op::SYNC_CACHE_16);
        self.need_medium()?;
        self.check_range(l.lba, l.blocks)?;
        if sync {
            let blocks = if l.blocks == 0 {
                self.cfg.num_blocks - l.lba
            } else {
                l.blocks
            };
            self.set_io(i, l.lba, blocks, false, false);
            return Ok(self.io(i, IoOp::Flush));
        }
        if l.blocks == 0 {
            return Ok(self.good(i));
        }
        self.set_io(i, l.lba, l.blocks, false, false);
        Ok(self.io(i, IoOp::Prefetch))
    }

    fn get_lba_status(&mut self, i: usize, c: Cdb) -> Step {
        let lba = c.u64(2);
        let alloc_len = c.u32(10);
        self.need_medium()?;
        if lba >= self.cfg.num_blocks {
            return Err(Sense::lba_out_of_range());
        }
        let rest = self.cfg.num_blocks - lba;
        if self.cfg.thin && alloc_len > 8 {
            self.set_io(i, lba, rest, false, false);
            return Ok(self.io(i, IoOp::LbaStatus));
        }
        if let Some(t) = self.tasks[i].as_mut() {
            t.extra = Extra::LbaStatus {
                lba,
                blocks: u32::try_from(rest).unwrap_or(u32::MAX),
                mapped: true,
            };
        }
        self.data_in(i, c, alloc_len)
    }

    // ---------------------------------------------------------------- callbacks

    /// The Data-Out buffer of a task that asked for it with [`Action::NeedDataOut`] is
    /// complete. Parameter lists are parsed from `data` now; for block writes `data` is
    /// only checked for length and stays in the runtime's buffer for the following
    /// [`Action::Io`].
    pub fn data_out_ready(&mut self, task: TaskId, data: &[u8]) -> Result<(), CallbackError> {
        self.data_out_ready_peers(task, data, &[])
    }

    /// [`Self::data_out_ready`] with the LUs EXTENDED COPY may address (the
    /// [`crate::Target`] passes its LUs; without them only this LU is addressable).
    pub(crate) fn data_out_ready_peers(
        &mut self,
        task: TaskId,
        data: &[u8],
        peers: &[CopyPeer],
    ) -> Result<(), CallbackError> {
        let i = self.task_index(task).ok_or(CallbackError::UnknownTask)?;
        let t = self.tasks[i].ok_or(CallbackError::UnknownTask)?;
        if t.phase != Phase::WaitDataOut {
            return Err(CallbackError::WrongState);
        }
        let p = match self.after_data_out(i, t, data, peers) {
            Ok(p) => p,
            Err(s) => self.fail(i, s),
        };
        self.set_pend(i, p);
        Ok(())
    }

    fn after_data_out(&mut self, i: usize, t: Task, data: &[u8], peers: &[CopyPeer]) -> Step {
        // The length asked for with NeedDataOut (still in `pend`).
        let need = match t.pend {
            Pend::DataOut(n) => n as usize,
            _ => t.wanted as usize,
        };
        if data.len() < need {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        let data = &data[..need];
        match t.cdb.opcode() {
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
                self.mode_select_apply(t.id.nexus, t.cdb.opcode() == op::MODE_SELECT_10, data)?;
                Ok(self.good(i))
            }
            op::UNMAP => self.unmap_data(i, data),
            op::PERSISTENT_RESERVE_OUT => self.prout_data(i, t, data),
            op::EXTENDED_COPY => self.copy_data(i, t, data, peers),
            op::SANITIZE => self.sanitize_data(i, data),
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
                let zero = data.iter().all(|b| *b == 0);
                Ok(self.io(
                    i,
                    IoOp::WriteSame {
                        unmap: t.stage == 1,
                        ndob: false,
                        zero,
                    },
                ))
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => Ok(self.io(
                i,
                IoOp::Verify {
                    mode: if t.stage == 1 {
                        VerifyMode::Compare
                    } else {
                        VerifyMode::CompareEachWithOne
                    },
                },
            )),
            op::ORWRITE_16 => Ok(self.io(i, IoOp::OrWrite)),
            op::COMPARE_AND_WRITE => Ok(self.io(i, IoOp::CompareAndWrite)),
            _ => Ok(self.io(i, IoOp::Write)),
        }
    }

    fn unmap_data(&mut self, i: usize, data: &[u8]) -> Step {
        if data.len() < 8 {
            return Err(Sense::new(
                SenseKey::IllegalRequest,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        }
        let bd_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let avail = (data.len() - 8).min(bd_len);
        let count = avail / 16;
        if count as u64 > u64::from(self.cfg.max_unmap_descriptors) {
            return Err(Sense::invalid_param(2, None));
        }
        let mut total: u64 = 0;
        for (k, (lba, n)) in crate::types::UnmapRanges::new(data).enumerate() {
            self.check_range(lba, u64::from(n))?;
            total = total.saturating_add(u64::from(n));
            if total > u64::from(self.cfg.max_unmap_lba_count) {
                return Err(Sense::invalid_param((8 + 16 * k + 8) as u16, None));
            }
        }
        if total == 0 {
            return Ok(self.good(i));
        }
        self.set_io(i, 0, 0, false, false);
        Ok(self.io(
            i,
            IoOp::Unmap {
                descriptors: count as u32,
            },
        ))
    }

    /// Fill the emulated Data-In of a task that produced [`Action::DataIn`]; returns the
    /// number of bytes written (the `len` of the action, or less if `buf` is shorter).
    /// REPORT LUNS through a bare `LogicalUnit` lists no LUN: use
    /// [`Self::emit_data_in_with_luns`] (the [`crate::Target`] does).
    pub fn emit_data_in(&mut self, task: TaskId, buf: &mut [u8]) -> Result<usize, CallbackError> {
        self.emit_data_in_with_luns(task, buf, &[])
    }

    /// [`Self::emit_data_in`] with the LUN inventory (sorted LUN numbers) for REPORT LUNS.
    pub fn emit_data_in_with_luns(
        &mut self,
        task: TaskId,
        buf: &mut [u8],
        luns: &[u16],
    ) -> Result<usize, CallbackError> {
        let i = self.task_index(task).ok_or(CallbackError::UnknownTask)?;
        let t = self.tasks[i].ok_or(CallbackError::UnknownTask)?;
        if t.phase != Phase::WaitEmit {
            return Err(CallbackError::WrongState);
        }
        let n = (t.data_in_len as usize).min(buf.len());
        let mut o = Out::new(&mut buf[..n]);
        self.emit(&t, t.cdb, &mut o, luns);
        let written = o.written();
        let sent = u32::try_from(written).unwrap_or(u32::MAX);
        let residual = if t.wanted > t.expected {
            Residual::Overflow(t.wanted - t.expected)
        } else {
            Residual::between(t.expected, sent)
        };
        self.set_pend(
            i,
            Pend::Complete {
                status: ScsiStatus::Good,
                sense: None,
                residual,
            },
        );
        Ok(written)
    }

    fn emit(&self, t: &Task, c: Cdb, o: &mut Out<'_>, luns: &[u16]) {
        match c.opcode() {
            op::INQUIRY => {
                let ctl = self.is_controller(t);
                if c.b(1) & 0x01 != 0 {
                    if ctl {
                        // Supported VPD pages: only this one.
                        o.bytes(&[0x0C, 0x00, 0x00, 0x01, 0x00]);
                    } else {
                        self.emit_vpd(c.b(2), o);
                    }
                } else {
                    let byte0 = match (self.present, ctl) {
                        (true, _) => 0x00,
                        (false, true) => 0x0C,
                        (false, false) => 0x7F,
                    };
                    self.emit_std_inquiry(byte0, o);
                }
            }
            op::REQUEST_SENSE => {
                if let Extra::Sense(s) = t.extra {
                    o.bytes(s.encode(c.b(1) & 0x01 != 0).as_bytes());
                }
            }
            op::REPORT_LUNS => {
                let sel = c.b(2);
                let list: &[u16] = if sel == 0x01 || sel == 0x11 {
                    &[]
                } else {
                    luns
                };
                let lun0 = self.report_lun0 && !matches!(sel, 0x01 | 0x11);
                let count = list.len() + usize::from(lun0);
                o.u32(u32::try_from(count * 8).unwrap_or(u32::MAX));
                o.u32(0);
                if lun0 {
                    o.bytes(&[0; 8]);
                }
                for n in list {
                    o.bytes(&crate::lun::Lun::from_number(*n).to_bytes());
                }
            }
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.emit_mode_sense(c, o),
            op::PERSISTENT_RESERVE_IN => self.emit_prin(c, o),
            op::RECEIVE_COPY_RESULTS => self.emit_copy_results(t, c, o),
            op::MAINTENANCE_IN if c.b(1) & 0x1F == op::SA_REPORT_SUPPORTED_OPCODES => {
                crate::opcodes::emit(
                    o,
                    self.cfg.thin,
                    c.b(2) & 0x80 != 0,
                    c.b(2) & 0x07,
                    c.b(3),
                    c.u16(4),
                );
            }
            op::MAINTENANCE_IN => {
                // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET,
                // TARGET RESET.
                o.u8(0xDA);
                o.u8(0x00);
                o.u8(0);
                if c.b(2) & 0x80 != 0 {
                    o.u8(0x0C);
                    o.zeros(12);
                } else {
                    o.u8(0);
                }
            }
            op::READ_CAPACITY_10 => {
                let last = self.cfg.num_blocks.saturating_sub(1);
                o.u32(u32::try_from(last).unwrap_or(u32::MAX));
                o.u32(self.cfg.block_bytes());
            }
            op::SERVICE_ACTION_IN_16 => {
                if c.b(1) & 0x1F == op::SA_READ_CAPACITY_16 {
                    self.emit_read_capacity_16(o);
                } else if let Extra::LbaStatus {
                    lba,
                    blocks,
                    mapped,
                } = t.extra
                {
                    o.u32(20);
                    o.u32(0);
                    o.u64(lba);
                    o.u32(blocks);
                    o.u8(if mapped { 0 } else { 1 });
                    o.zeros(3);
                }
            }
            op::READ_DEFECT_DATA_10 => {
                o.u8(0);
                o.u8(c.b(2) & 0x1F);
                o.u16(0);
            }
            op::READ_DEFECT_DATA_12 => {
                o.u8(0);
                o.u8(c.b(1) & 0x1F);
                o.u16(0);
                o.u32(0);
            }
            _ => {}
        }
    }

    /// Report the end of an [`Action::Io`]. For [`IoOp::CompareAndWrite`] this is also how
    /// a runtime that compared and wrote natively answers (see there): `Ok` completes the
    /// command, `Miscompare` fails it with the offset in INFORMATION.
    pub fn complete_io(&mut self, task: TaskId, result: IoResult) -> Result<(), CallbackError> {
        let i = self.task_index(task).ok_or(CallbackError::UnknownTask)?;
        let t = self.tasks[i].ok_or(CallbackError::UnknownTask)?;
        if t.cdb.opcode() == op::SANITIZE && matches!(t.phase, Phase::Aborted | Phase::WaitIo) {
            self.sanitize_done(task, result == IoResult::Ok);
        }
        if t.phase == Phase::Aborted {
            self.free(i);
            return Ok(());
        }
        if t.phase != Phase::WaitIo {
            return Err(CallbackError::WrongState);
        }
        let p = match result {
            _ if t.cdb.opcode() == op::EXTENDED_COPY => self.copy_done(i, t, result),
            IoResult::Ok => self.good(i),
            e => self.fail(i, io_sense(t.cdb.opcode(), e)),
        };
        self.set_pend(i, p);
        Ok(())
    }

    /// For `Verify` with a compare mode and for `CompareAndWrite`: the runtime read the
    /// range into `read` and passes the Data-Out buffer (or its first half) as `expected`.
    /// A difference completes with MISCOMPARE (offset in INFORMATION); a match completes
    /// the VERIFY or issues COMPARE AND WRITE's `Write`.
    pub fn compare_data(
        &mut self,
        task: TaskId,
        read: &[u8],
        expected: &[u8],
    ) -> Result<(), CallbackError> {
        let i = self.task_index(task).ok_or(CallbackError::UnknownTask)?;
        let t = self.tasks[i].ok_or(CallbackError::UnknownTask)?;
        if t.phase == Phase::Aborted {
            self.free(i);
            return Ok(());
        }
        if t.phase != Phase::WaitIo {
            return Err(CallbackError::WrongState);
        }
        let o = t.cdb.opcode();
        let each = matches!(o, op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16) && t.stage == 3;
        let mismatch = if each {
            let bs = self.cfg.block_bytes() as usize;
            first_mismatch_each(read, expected, bs, t.blocks)
        } else {
            let n = t
                .blocks
                .saturating_mul(u64::from(self.cfg.block_bytes()))
                .min(usize::MAX as u64) as usize;
            first_mismatch(read, expected, n)
        };
        let p = if let Some(off) = mismatch {
            self.fail(
                i,
                Sense::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY).with_info(off),
            )
        } else if o == op::COMPARE_AND_WRITE && t.stage == 0 {
            if let Some(tm) = self.tasks[i].as_mut() {
                tm.stage = 1;
            }
            let mut p = self.io(i, IoOp::Write);
            if let Pend::Io(io) = &mut p {
                io.data_offset = self.bytes_of(t.blocks).unwrap_or(0);
            }
            p
        } else {
            self.good(i)
        };
        self.set_pend(i, p);
        Ok(())
    }

    /// For `LbaStatus`: the extent starting at the request's `lba` is `mapped` (or
    /// deallocated) for `blocks` blocks (clamped to the request).
    pub fn lba_status_result(
        &mut self,
        task: TaskId,
        mapped: bool,
        blocks: u64,
    ) -> Result<(), CallbackError> {
        let i = self.task_index(task).ok_or(CallbackError::UnknownTask)?;
        let t = self.tasks[i].ok_or(CallbackError::UnknownTask)?;
        if t.phase == Phase::Aborted {
            self.free(i);
            return Ok(());
        }
        if t.phase != Phase::WaitIo || !matches!(t.cdb.opcode(), op::SERVICE_ACTION_IN_16) {
            return Err(CallbackError::WrongState);
        }
        let blocks = blocks.clamp(1, t.blocks.max(1));
        if let Some(tm) = self.tasks[i].as_mut() {
            tm.extra = Extra::LbaStatus {
                lba: t.lba,
                blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
                mapped,
            };
        }
        let p = match self.data_in_len(i, 24, t.cdb.u32(10)) {
            Ok(p) => p,
            Err(s) => self.fail(i, s),
        };
        self.set_pend(i, p);
        Ok(())
    }

    // ---------------------------------------------------------------- task management

    fn abort_where(&mut self, f: impl Fn(&Task) -> bool) -> TmfOutcome {
        let mut out = TmfOutcome::default();
        for slot in self.tasks.iter_mut() {
            let Some(t) = slot.as_mut() else { continue };
            if !f(t) {
                continue;
            }
            if t.phase == Phase::WaitIo || t.phase == Phase::Aborted {
                if t.phase != Phase::Aborted {
                    out.in_flight += 1;
                }
                t.phase = Phase::Aborted;
            } else {
                *slot = None;
                out.aborted += 1;
            }
        }
        // Freed tasks may have held back queued ones.
        self.ready_hint = true;
        self.shrink_hi();
        out
    }

    /// Frees task slot `i`; queued tasks it held back may start now.
    fn free(&mut self, i: usize) {
        if let Some(slot) = self.tasks.get_mut(i) {
            *slot = None;
        }
        self.ready_hint = true;
        self.shrink_hi();
    }

    /// ABORT TASK: drop one task (no response will be produced for it).
    pub fn abort_task(&mut self, task: TaskId) -> TmfOutcome {
        self.abort_where(|t| t.id == task)
    }

    /// ABORT TASK SET: drop every task of one nexus.
    pub fn abort_task_set(&mut self, nexus: NexusId) -> TmfOutcome {
        self.abort_where(|t| t.id.nexus == nexus)
    }

    /// CLEAR TASK SET: drop every task; nexuses that lost tasks (other than `by`) get
    /// COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub fn clear_task_set(&mut self, by: NexusId) -> TmfOutcome {
        let mut hit = [false; NEXUS];
        for t in self.tasks.iter().flatten() {
            if t.id.nexus != by {
                if let Some(k) = self.nexus_index(t.id.nexus) {
                    hit[k] = true;
                }
            }
        }
        let out = self.abort_where(|_| true);
        for (k, n) in self.nexus.iter_mut().enumerate() {
            if let Some(n) = n {
                if hit[k] {
                    n.push_ua(Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR);
                }
            }
        }
        out
    }

    /// LOGICAL UNIT RESET: drop every task, release PREVENT and a RESERVE (6)/(10)
    /// reservation, restore mode parameters and raise BUS DEVICE RESET FUNCTION OCCURRED on
    /// every nexus. Persistent reservations are not affected.
    pub fn lu_reset(&mut self) -> TmfOutcome {
        self.lu_reset_by(None)
    }

    /// [`Self::lu_reset`] requested through nexus `by`: the unit attention goes to every
    /// other nexus only — the requester learns of the reset from the task management
    /// response. (SAM-5 has every nexus, the requester included, told: that is
    /// [`Self::lu_reset`], which runtimes use for LOGICAL UNIT RESET.)
    pub fn lu_reset_by(&mut self, by: Option<NexusId>) -> TmfOutcome {
        self.reset_with(by, Asc::BUS_DEVICE_RESET)
    }

    /// TARGET WARM RESET (`cold == false`) or TARGET COLD RESET (`cold == true`, see
    /// [`Self::power_on_reset`]) requested through nexus `by`: a logical unit reset whose
    /// unit attention, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED, goes to every nexus
    /// but the requester (which learns of the reset from the task management response).
    pub fn target_reset_by(&mut self, by: Option<NexusId>, cold: bool) -> TmfOutcome {
        if cold {
            self.power_on_reset(by)
        } else {
            self.reset_with(by, Asc::POWER_ON_RESET)
        }
    }

    /// A power-on reset of the LU (TARGET COLD RESET): as [`Self::lu_reset_by`] with POWER ON,
    /// RESET, OR BUS DEVICE RESET OCCURRED, and persistent reservations are lost unless
    /// APTPL was set.
    ///
    /// The requester's connections are dropped by the runtime and it logs in again, with a
    /// new ISID if it likes: the first new nexus of the same initiator gets no POWER ON unit
    /// attention (like the requester of any reset, it learned of it from the response).
    pub fn power_on_reset(&mut self, by: Option<NexusId>) -> TmfOutcome {
        self.cold_reset_by = by
            .and_then(|id| self.nexus_index(id))
            .and_then(|k| self.nexus[k].as_ref())
            .map(|n| crate::pr::PortName::new(n.port.device_name()));
        if !self.pr.aptpl {
            let generation = self.pr.generation;
            self.pr = crate::pr::PrState::new();
            self.pr.generation = generation;
        }
        self.reset_with(by, Asc::POWER_ON_RESET)
    }

    fn reset_with(&mut self, by: Option<NexusId>, ua: Asc) -> TmfOutcome {
        let out = self.abort_where(|_| true);
        for n in self.nexus.iter_mut().flatten() {
            n.prevent = false;
            if Some(n.id) != by {
                n.push_ua(ua);
            }
        }
        self.legacy = None;
        self.mode = ModeState {
            wce: self.cfg.write_cache,
            d_sense: false,
            swp: false,
        };
        out
    }

    /// I_T NEXUS RESET (or nexus loss): drop the nexus' tasks, release its PREVENT and
    /// raise I_T NEXUS LOSS OCCURRED for it.
    pub fn nexus_reset(&mut self, nexus: NexusId) -> TmfOutcome {
        let out = self.abort_task_set(nexus);
        if self.legacy == Some(nexus) {
            self.legacy = None;
        }
        if let Some(n) = self.nexus_index(nexus).and_then(|k| self.nexus[k].as_mut()) {
            n.prevent = false;
            n.push_ua(Asc::I_T_NEXUS_LOSS);
        }
        out
    }
}

fn first_mismatch(read: &[u8], expected: &[u8], n: usize) -> Option<u64> {
    let m = read.len().min(expected.len()).min(n);
    if let Some(p) = read[..m]
        .iter()
        .zip(&expected[..m])
        .position(|(a, b)| a != b)
    {
        return Some(p as u64);
    }
    if m < n { Some(m as u64) } else { None }
}

fn first_mismatch_each(read: &[u8], one: &[u8], bs: usize, blocks: u64) -> Option<u64> {
    if bs == 0 || one.len() < bs {
        return Some(0);
    }
    let one = &one[..bs];
    let total = (blocks as usize).saturating_mul(bs);
    for (k, chunk) in read.chunks(bs).enumerate() {
        if k as u64 >= blocks {
            break;
        }
        if let Some(p) = first_mismatch(chunk, one, bs) {
            return Some((k * bs) as u64 + p);
        }
    }
    if read.len() < total {
        return Some(read.len() as u64);
    }
    None
}

fn io_sense(opcode: u8, e: IoResult) -> Sense {
    match e {
        IoResult::Ok => Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE),
        IoResult::ReadError => Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        IoResult::WriteError => Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR),
        IoResult::NoSpace => Sense::new(SenseKey::DataProtect, Asc::SPACE_ALLOCATION_FAILED),
        IoResult::OutOfRange => Sense::lba_out_of_range(),
        IoResult::NotReady => Sense::new(SenseKey::NotReady, Asc::NOT_READY_CAUSE_NOT_REPORTABLE),
        IoResult::Miscompare { offset } => {
            let _ = opcode;
            Sense::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY).with_info(offset)
        }
        IoResult::Failed => Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE),
    }
}
