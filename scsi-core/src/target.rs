//! A SCSI target device: up to `LUNS` logical units addressed by LUN number, REPORT LUNS,
//! and the answers for LUNs that do not exist.

use core::borrow::BorrowMut;
use core::fmt;

use crate::lu::LogicalUnit;
use crate::lun::Lun;
use crate::types::*;

/// An action of one of the target's logical units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct TargetAction {
    /// The LUN the task was submitted to (as the runtime passed it).
    pub lun: Lun,
    /// What to do.
    pub action: Action,
}

/// Errors of LUN table management.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetError {
    /// All `LUNS` slots are used.
    TableFull,
    /// The LUN number is already used.
    LunExists,
    /// The LUN number is above 16383.
    InvalidLun,
    /// No LU with this number.
    NoSuchLun,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::TableFull => "LUN table full",
            TargetError::LunExists => "LUN already exists",
            TargetError::InvalidLun => "LUN number out of range (0..=16383)",
            TargetError::NoSuchLun => "no such LUN",
        })
    }
}

impl core::error::Error for TargetError {}

/// A target holding logical units. Every method taking a `lun` routes to that LU, or to
/// the built-in "not present" responder when no LU has that number (INQUIRY peripheral
/// qualifier 011b, REPORT LUNS, LOGICAL UNIT NOT SUPPORTED for everything else).
///
/// `L` is how each LU is held: inline by default (a fixed-size target, for `no_std` use),
/// or any owner that borrows as a [`LogicalUnit`] and is built from one, such as
/// `Box<LogicalUnit<TASKS, NEXUS>>`: then the target itself stays small and costs memory
/// only for the LUs that are configured.
pub struct Target<
    const LUNS: usize,
    const TASKS: usize,
    const NEXUS: usize,
    L = LogicalUnit<TASKS, NEXUS>,
> {
    luns: [Option<(u16, L)>; LUNS],
    /// The LUN number in each slot of `luns`: a lookup scans this small array instead of
    /// touching every (large) LU.
    numbers: [Option<u16>; LUNS],
    /// Slots whose LU may have an action ready (set whenever an LU is handed out mutably,
    /// cleared when its poll finds nothing), and the same for the "not present" LU.
    maybe: [bool; LUNS],
    maybe_absent: bool,
    /// The slots whose `maybe` is set, in round-robin order (a ring: `ready_head`,
    /// `ready_len`): a poll visits only LUs that may have work, not every slot.
    ready: [u16; LUNS],
    ready_head: usize,
    ready_len: usize,
    inventory: [u16; LUNS],
    inv_len: usize,
    absent: L,
}

impl<const LUNS: usize, const TASKS: usize, const NEXUS: usize, L> Default
    for Target<LUNS, TASKS, NEXUS, L>
where
    L: BorrowMut<LogicalUnit<TASKS, NEXUS>> + From<LogicalUnit<TASKS, NEXUS>>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const LUNS: usize, const TASKS: usize, const NEXUS: usize, L> Target<LUNS, TASKS, NEXUS, L>
where
    L: BorrowMut<LogicalUnit<TASKS, NEXUS>> + From<LogicalUnit<TASKS, NEXUS>>,
{
    /// An empty target.
    pub fn new() -> Self {
        Target {
            luns: [const { None }; LUNS],
            numbers: [None; LUNS],
            maybe: [false; LUNS],
            maybe_absent: false,
            ready: [0; LUNS],
            ready_head: 0,
            ready_len: 0,
            inventory: [0; LUNS],
            inv_len: 0,
            absent: {
                let mut a = LogicalUnit::not_present();
                a.set_report_luns(0, true);
                L::from(a)
            },
        }
    }

    /// Add a logical unit as LUN `number`; the other LUs raise REPORTED LUNS DATA HAS
    /// CHANGED.
    pub fn add_lun(&mut self, number: u16, lu: impl Into<L>) -> Result<(), TargetError> {
        if number > Lun::MAX_NUMBER {
            return Err(TargetError::InvalidLun);
        }
        if self.index(number).is_some() {
            return Err(TargetError::LunExists);
        }
        let slot = self
            .luns
            .iter()
            .position(|l| l.is_none())
            .ok_or(TargetError::TableFull)?;
        for (_, other) in self.lus_mut() {
            other.raise_unit_attention(UnitAttention::ReportedLunsChanged);
        }
        self.luns[slot] = Some((number, lu.into()));
        self.numbers[slot] = Some(number);
        self.mark_all();
        self.rebuild_inventory();
        Ok(())
    }

    /// Remove LUN `number` and return its LU (the caller should first make sure no I/O of
    /// it is in flight); the remaining LUs raise REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&mut self, number: u16) -> Result<L, TargetError> {
        let i = self.index(number).ok_or(TargetError::NoSuchLun)?;
        let (_, lu) = self.luns[i].take().ok_or(TargetError::NoSuchLun)?;
        self.numbers[i] = None;
        self.mark_all();
        for (_, other) in self.lus_mut() {
            other.raise_unit_attention(UnitAttention::ReportedLunsChanged);
        }
        self.rebuild_inventory();
        Ok(lu)
    }

    fn rebuild_inventory(&mut self) {
        let mut n = 0;
        for num in self.numbers.into_iter().flatten() {
            self.inventory[n] = num;
            n += 1;
        }
        self.inventory[..n].sort_unstable();
        self.inv_len = n;
        // LUN 0 is always reported: without a configured LU it is the controller.
        let lun0 = self.index(0).is_none();
        let count = u16::try_from(n).unwrap_or(u16::MAX);
        self.absent.borrow_mut().set_report_luns(count, lun0);
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            lu.set_report_luns(count, lun0);
        }
    }

    /// The configured LUN numbers, ascending. REPORT LUNS lists these and LUN 0 always:
    /// when no LU is configured as LUN 0 it answers as a storage array controller
    /// (peripheral device type 0x0C: INQUIRY, REPORT LUNS, TEST UNIT READY, REQUEST SENSE).
    pub fn lun_numbers(&self) -> &[u16] {
        &self.inventory[..self.inv_len]
    }

    /// The configured LUs with their numbers.
    fn lus(&self) -> impl Iterator<Item = (u16, &LogicalUnit<TASKS, NEXUS>)> {
        self.luns.iter().flatten().map(|(n, l)| (*n, l.borrow()))
    }

    /// The configured LUs with their numbers, mutably.
    fn lus_mut(&mut self) -> impl Iterator<Item = (u16, &mut LogicalUnit<TASKS, NEXUS>)> {
        self.luns
            .iter_mut()
            .flatten()
            .map(|(n, l)| (*n, l.borrow_mut()))
    }

    fn index(&self, number: u16) -> Option<usize> {
        self.numbers.iter().position(|n| *n == Some(number))
    }

    /// Every LU may have work now (after a call that reached all of them).
    fn mark_all(&mut self) {
        self.maybe_absent = true;
        for i in 0..LUNS {
            self.mark(i);
        }
    }

    /// LU slot `i` may have an action: queue it for [`Self::poll_action`] unless it is
    /// queued already.
    fn mark(&mut self, i: usize) {
        if self.maybe[i] || LUNS == 0 {
            return;
        }
        self.maybe[i] = true;
        let tail = (self.ready_head + self.ready_len) % LUNS;
        self.ready[tail] = i as u16;
        self.ready_len += 1;
    }

    /// The LU with this number.
    pub fn lu(&self, number: u16) -> Option<&LogicalUnit<TASKS, NEXUS>> {
        self.index(number)
            .and_then(|i| self.luns[i].as_ref().map(|(_, l)| l.borrow()))
    }

    /// The LU with this number, mutably (capacity changes, raising unit attentions).
    pub fn lu_mut(&mut self, number: u16) -> Option<&mut LogicalUnit<TASKS, NEXUS>> {
        let i = self.index(number)?;
        self.mark(i);
        self.luns[i].as_mut().map(|(_, l)| l.borrow_mut())
    }

    fn route(&mut self, lun: Lun) -> &mut LogicalUnit<TASKS, NEXUS> {
        match lun.number().and_then(|n| self.index(n)) {
            Some(i) => {
                self.mark(i);
                match &mut self.luns[i] {
                    Some((_, l)) => l.borrow_mut(),
                    None => self.absent.borrow_mut(),
                }
            }
            None => {
                self.maybe_absent = true;
                self.absent.borrow_mut()
            }
        }
    }

    /// Register a nexus with every LU.
    pub fn add_nexus(&mut self, id: NexusId) -> Result<(), NexusError> {
        let mut r = Ok(());
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            if let Err(e) = lu.add_nexus(id) {
                r = Err(e);
            }
        }
        r
    }

    /// Register a nexus with every LU together with its identity for persistent
    /// reservations (see [`LogicalUnit::add_nexus_with_port`]): `initiator_port` is the
    /// iSCSI initiator port name `"<initiator name>,i,0x<ISID in 12 hex digits>"`,
    /// `relative_target_port` the target port it logged in through. LUs added later learn it
    /// when the nexus sends them its first command only as an anonymous nexus, so call this
    /// again after adding LUs.
    pub fn add_nexus_with_port(
        &mut self,
        id: NexusId,
        initiator_port: &[u8],
        relative_target_port: u16,
    ) -> Result<(), NexusError> {
        let mut r = Ok(());
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            if let Err(e) = lu.add_nexus_with_port(id, initiator_port, relative_target_port) {
                r = Err(e);
            }
        }
        r
    }

    /// Forget a nexus everywhere (its tasks are aborted, PREVENT released).
    pub fn remove_nexus(&mut self, id: NexusId) -> TmfOutcome {
        let mut out = self.absent.borrow_mut().remove_nexus(id);
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            add(&mut out, lu.remove_nexus(id));
        }
        out
    }

    /// Submit a command to `lun` (see [`LogicalUnit::submit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        lun: Lun,
        nexus: NexusId,
        tag: TaskTag,
        cdb: &[u8],
        dir: DataDirection,
        expected_len: u32,
        attr: TaskAttr,
    ) -> Result<(), SubmitError> {
        self.route(lun)
            .submit_lun(lun, nexus, tag, cdb, dir, expected_len, attr)
    }

    /// The next action of any LU (round robin over the LUs that may have work, the "not
    /// present" LU first), or `None`.
    pub fn poll_action(&mut self) -> Option<TargetAction> {
        if self.maybe_absent {
            match self.absent.borrow_mut().poll_action_lun() {
                Some((lun, action)) => return Some(TargetAction { lun, action }),
                None => self.maybe_absent = false,
            }
        }
        while self.ready_len > 0 {
            let i = usize::from(self.ready[self.ready_head]);
            self.ready_head = (self.ready_head + 1) % LUNS;
            self.ready_len -= 1;
            self.maybe[i] = false;
            let Some((_, l)) = &mut self.luns[i] else {
                continue;
            };
            if let Some((lun, action)) = l.borrow_mut().poll_action_lun() {
                // It may have more: back of the queue, after the others.
                self.mark(i);
                return Some(TargetAction { lun, action });
            }
        }
        None
    }

    /// See [`LogicalUnit::data_out_ready`].
    pub fn data_out_ready(
        &mut self,
        lun: Lun,
        task: TaskId,
        data: &[u8],
    ) -> Result<(), CallbackError> {
        // EXTENDED COPY may address every LU of the target.
        let mut peers = [crate::lu::CopyPeer::EMPTY; LUNS];
        let mut n = 0;
        for (num, lu) in self.lus() {
            if let Some(p) = peers.get_mut(n) {
                *p = lu.copy_peer(num);
                n += 1;
            }
        }
        self.route(lun)
            .data_out_ready_peers(task, data, &peers[..n])
    }

    /// See [`LogicalUnit::emit_data_in`]; REPORT LUNS lists this target's LUNs.
    pub fn emit_data_in(
        &mut self,
        lun: Lun,
        task: TaskId,
        buf: &mut [u8],
    ) -> Result<usize, CallbackError> {
        let inv = self.inventory;
        let len = self.inv_len;
        self.route(lun)
            .emit_data_in_with_luns(task, buf, &inv[..len])
    }

    /// See [`LogicalUnit::complete_io`].
    pub fn complete_io(
        &mut self,
        lun: Lun,
        task: TaskId,
        result: IoResult,
    ) -> Result<(), CallbackError> {
        self.route(lun).complete_io(task, result)
    }

    /// See [`LogicalUnit::compare_data`].
    pub fn compare_data(
        &mut self,
        lun: Lun,
        task: TaskId,
        read: &[u8],
        expected: &[u8],
    ) -> Result<(), CallbackError> {
        self.route(lun).compare_data(task, read, expected)
    }

    /// See [`LogicalUnit::lba_status_result`].
    pub fn lba_status_result(
        &mut self,
        lun: Lun,
        task: TaskId,
        mapped: bool,
        blocks: u64,
    ) -> Result<(), CallbackError> {
        self.route(lun).lba_status_result(task, mapped, blocks)
    }

    /// ABORT TASK on `lun`.
    pub fn abort_task(&mut self, lun: Lun, task: TaskId) -> TmfOutcome {
        self.route(lun).abort_task(task)
    }

    /// ABORT TASK SET on `lun`.
    pub fn abort_task_set(&mut self, lun: Lun, nexus: NexusId) -> TmfOutcome {
        self.route(lun).abort_task_set(nexus)
    }

    /// CLEAR TASK SET on `lun`.
    pub fn clear_task_set(&mut self, lun: Lun, by: NexusId) -> TmfOutcome {
        self.route(lun).clear_task_set(by)
    }

    /// LOGICAL UNIT RESET on `lun`.
    pub fn lu_reset(&mut self, lun: Lun) -> TmfOutcome {
        self.route(lun).lu_reset()
    }

    /// LOGICAL UNIT RESET on `lun` requested through nexus `by`, which gets no unit
    /// attention for it (see [`LogicalUnit::lu_reset_by`]).
    pub fn lu_reset_by(&mut self, lun: Lun, by: NexusId) -> TmfOutcome {
        self.route(lun).lu_reset_by(Some(by))
    }

    /// TARGET WARM RESET (`cold == false`) or TARGET COLD RESET (`cold == true`) of every
    /// LU, requested through nexus `by` (see [`LogicalUnit::target_reset_by`]). The
    /// runtime drops the connections of a cold reset itself.
    pub fn target_reset_by(&mut self, by: NexusId, cold: bool) -> TmfOutcome {
        let mut out = self.absent.borrow_mut().target_reset_by(Some(by), cold);
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            add(&mut out, lu.target_reset_by(Some(by), cold));
        }
        out
    }

    /// I_T NEXUS RESET: on every LU.
    pub fn nexus_reset(&mut self, nexus: NexusId) -> TmfOutcome {
        let mut out = self.absent.borrow_mut().abort_task_set(nexus);
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            add(&mut out, lu.nexus_reset(nexus));
        }
        out
    }

    /// TARGET RESET: a LOGICAL UNIT RESET of every LU.
    pub fn target_reset(&mut self) -> TmfOutcome {
        let mut out = self.absent.borrow_mut().lu_reset();
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            add(&mut out, lu.lu_reset());
        }
        out
    }

    /// Raise a unit attention on every LU for every nexus.
    pub fn raise_unit_attention(&mut self, ua: UnitAttention) {
        self.mark_all();
        for (_, lu) in self.lus_mut() {
            lu.raise_unit_attention(ua);
        }
    }
}

fn add(a: &mut TmfOutcome, b: TmfOutcome) {
    a.aborted += b.aborted;
    a.in_flight += b.in_flight;
}
