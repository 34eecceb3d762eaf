//! The fixed-capacity task table and per-task data accounting.
//!
//! A *task* is one SCSI command the initiator sent, from the SCSI Command PDU until its
//! final status has been transmitted. Its slot in [`TaskTable`] holds everything the
//! connection needs to police the data phases without storing any data:
//! - writes: the immediate data length, the unsolicited Data-Out sequence (InitialR2T=No,
//!   up to FirstBurstLength), the ranges the runtime asked for with R2Ts, the R2Ts in
//!   flight (each with its Target Transfer Tag, offset, length, bytes received and next
//!   DataSN), and the total received;
//! - reads: the range the runtime handed over for Data-In, the position inside the current
//!   burst (MaxBurstLength) and the DataSN counter (shared with R2TSN, as RFC 7143 requires
//!   for bidirectional commands);
//! - completion: status, residual and up to [`MAX_SENSE_LEN`] bytes of sense data.
//!
//! Slots are addressed by [`TaskHandle`], an index plus a generation so a stale handle (kept
//! by the runtime after a task was aborted and its slot reused) is detected, never confused
//! with the new task.

use heapless::Vec;

use crate::storage::Storage;

use super::error::TaskError;

/// The largest sense data (SPC: 252 bytes) a response can carry.
pub const MAX_SENSE_LEN: usize = 252;

/// How many R2Ts one task may have outstanding at once (the effective MaxOutstandingR2T is
/// the smaller of this and the negotiated value).
pub const R2T_SLOTS: usize = 4;

/// The reserved tag value 0xffffffff.
pub(crate) const RESERVED_TAG: u32 = 0xffff_ffff;

/// A task slot: index into the task table plus a generation counter.
///
/// The index is dense (`0..N`), so a runtime can keep per-task buffers in an array indexed
/// by [`TaskHandle::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskHandle {
    index: u16,
    generation: u16,
}

impl TaskHandle {
    /// The slot index, `0..N` for a table of capacity `N`.
    pub const fn index(self) -> usize {
        self.index as usize
    }

    /// The generation of the slot when this task was created.
    pub const fn generation(self) -> u16 {
        self.generation
    }
}

/// The task table is full: the command gets TASK SET FULL status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSetFull;

impl core::fmt::Display for TaskSetFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("task set full")
    }
}

impl core::error::Error for TaskSetFull {}

/// Residual count reported with a SCSI status (RFC 7143 section 11.4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residual {
    /// The whole expected length was transferred.
    #[default]
    None,
    /// Fewer bytes than expected were transferred (U bit); the count is the shortfall.
    Underflow(u32),
    /// The command wanted more than the expected length (O bit); the count is the excess.
    Overflow(u32),
}

/// A SCSI status and residual to send with the last Data-In (S bit) or a SCSI Response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiStatus {
    /// The SCSI status byte (GOOD = 0x00, CHECK CONDITION = 0x02, ...).
    pub status: u8,
    /// The residual count.
    pub residual: Residual,
}

impl ScsiStatus {
    /// GOOD status with no residual.
    pub const GOOD: ScsiStatus = ScsiStatus {
        status: 0x00,
        residual: Residual::None,
    };
}

/// Direction of a command's data transfer, from the initiator's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// No data.
    None,
    /// Data-In: target to initiator (R bit).
    Read,
    /// Data-Out: initiator to target (W bit).
    Write,
    /// Both (R and W bits; the read length comes from the bidirectional AHS).
    Bidirectional,
}

/// One R2T: a solicited Data-Out sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct R2tSlot {
    pub(crate) ttt: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) received: u32,
    pub(crate) next_data_sn: u32,
    pub(crate) sent: bool,
}

/// Why a Data-Out PDU was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataOutError {
    /// The TTT names no R2T of this task that was sent.
    UnknownTtt,
    /// Unsolicited data (TTT = 0xffffffff) the negotiation does not allow or after the
    /// unsolicited sequence ended.
    UnexpectedUnsolicited,
    /// DataSN differs from the expected one: an unrecoverable sequence error at ERL 0.
    DataSn,
    /// Buffer offset differs from the next expected one (DataPDUInOrder=Yes).
    Offset,
    /// Data beyond the R2T, the unsolicited burst, or the expected transfer length.
    Overrun,
    /// F bit missing at the end of a sequence, or set before its end.
    FinalBit,
}

/// A Data-Out PDU accepted for a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataOutAccepted {
    /// Whether the runtime should receive the payload (false while a task is closing).
    pub(crate) deliver: bool,
    /// Whether this PDU completed all the data the command expects.
    pub(crate) complete: bool,
    /// Whether a sequence (R2T) closed, so more R2Ts may be issued.
    pub(crate) sequence_closed: bool,
}

/// The next Data-In PDU of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataInSegment {
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) data_sn: u32,
    /// F bit: last PDU of a sequence (burst) or of the command's data.
    pub(crate) final_bit: bool,
    /// S bit: the PDU carries the status.
    pub(crate) status: Option<ScsiStatus>,
}

/// A queued SCSI Response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingResponse {
    pub(crate) status: ScsiStatus,
    pub(crate) sense_len: u16,
}

/// One slot of a connection's task table: the protocol state of one task (opaque; it is
/// public only so that a runtime can choose the [`Storage`] the table lives in, see
/// [`crate::storage`]).
#[derive(Clone, Debug)]
pub struct Task {
    pub(crate) generation: u16,
    pub(crate) active: bool,
    pub(crate) itt: u32,
    pub(crate) lun: u64,
    pub(crate) cmd_sn: u32,
    pub(crate) immediate: bool,
    pub(crate) dir: Direction,
    pub(crate) write_len: u32,
    pub(crate) read_len: u32,
    /// Whether the slot is in the connection's ready queue.
    pub(crate) queued: bool,
    // Writes.
    pub(crate) received: u32,
    pub(crate) unsol_next: u32,
    pub(crate) unsol_limit: u32,
    pub(crate) unsol_data_sn: u32,
    pub(crate) unsol_open: bool,
    pub(crate) r2t_next: u32,
    pub(crate) r2t_end: u32,
    pub(crate) want_remaining: bool,
    pub(crate) r2ts: Vec<R2tSlot, R2T_SLOTS>,
    pub(crate) complete_reported: bool,
    // Shared DataSN / R2TSN counter.
    pub(crate) sn: u32,
    // Reads.
    pub(crate) din_next: u32,
    pub(crate) din_end: u32,
    pub(crate) din_burst: u32,
    pub(crate) din_status: Option<ScsiStatus>,
    pub(crate) din_sent: u32,
    // Completion.
    /// The task is finishing (responded or failed): no new R2Ts, Data-Out is absorbed.
    pub(crate) closing: bool,
    /// The task failed inside the protocol layer (the runtime was told).
    pub(crate) failed: bool,
    pub(crate) response: Option<PendingResponse>,
    pub(crate) sense: [u8; MAX_SENSE_LEN],
}

impl Default for Task {
    fn default() -> Task {
        Task {
            generation: 0,
            active: false,
            itt: RESERVED_TAG,
            lun: 0,
            cmd_sn: 0,
            immediate: false,
            dir: Direction::None,
            write_len: 0,
            read_len: 0,
            queued: false,
            received: 0,
            unsol_next: 0,
            unsol_limit: 0,
            unsol_data_sn: 0,
            unsol_open: false,
            r2t_next: 0,
            r2t_end: 0,
            want_remaining: false,
            r2ts: Vec::new(),
            complete_reported: false,
            sn: 0,
            din_next: 0,
            din_end: 0,
            din_burst: 0,
            din_status: None,
            din_sent: 0,
            closing: false,
            failed: false,
            response: None,
            sense: [0; MAX_SENSE_LEN],
        }
    }
}

/// The write-side parameters a new task starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteSetup {
    /// Bytes of immediate data that came with the command.
    pub(crate) immediate_len: u32,
    /// InitialR2T as negotiated.
    pub(crate) initial_r2t: bool,
    /// FirstBurstLength as negotiated.
    pub(crate) first_burst: u32,
}

impl Task {
    /// Reset the slot for a new command.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        &mut self,
        itt: u32,
        lun: u64,
        cmd_sn: u32,
        immediate: bool,
        dir: Direction,
        write_len: u32,
        read_len: u32,
        w: WriteSetup,
    ) {
        let generation = self.generation;
        *self = Task::default();
        self.generation = generation;
        self.active = true;
        self.itt = itt;
        self.lun = lun;
        self.cmd_sn = cmd_sn;
        self.immediate = immediate;
        self.dir = dir;
        self.write_len = write_len;
        self.read_len = read_len;
        let imm = w.immediate_len.min(write_len);
        self.received = imm;
        self.unsol_next = imm;
        self.unsol_limit = if w.initial_r2t {
            imm
        } else {
            w.first_burst.min(write_len).max(imm)
        };
        self.unsol_open = self.unsol_next < self.unsol_limit;
    }

    /// Whether all expected write data has arrived.
    pub(crate) fn write_complete(&self) -> bool {
        self.received >= self.write_len
    }

    /// Data-Out sequences the initiator still owes (open unsolicited sequence or sent R2Ts).
    pub(crate) fn open_sequences(&self) -> usize {
        usize::from(self.unsol_open) + self.r2ts.iter().filter(|r| r.sent).count()
    }

    /// Ask for `[offset, offset + len)` with R2Ts.
    pub(crate) fn request_range(&mut self, offset: u32, len: u32) -> Result<(), TaskError> {
        if self.closing {
            return Err(TaskError::Closing);
        }
        let end = offset.checked_add(len).ok_or(TaskError::OutOfRange)?;
        let floor = if self.unsol_open {
            self.unsol_limit
        } else {
            self.unsol_next
        };
        if end > self.write_len || offset < floor {
            return Err(TaskError::OutOfRange);
        }
        if len == 0 {
            return Ok(());
        }
        if self.r2t_next == self.r2t_end {
            self.r2t_next = offset;
            self.r2t_end = end;
            Ok(())
        } else if offset == self.r2t_end {
            self.r2t_end = end;
            Ok(())
        } else {
            Err(TaskError::Busy)
        }
    }

    /// Ask for everything after the unsolicited data. Deferred while the unsolicited
    /// sequence is still open (the initiator may yet send it).
    pub(crate) fn request_remaining(&mut self) -> Result<(), TaskError> {
        if self.closing {
            return Err(TaskError::Closing);
        }
        if self.unsol_open {
            self.want_remaining = true;
            return Ok(());
        }
        self.want_remaining = false;
        let start = self.unsol_next.max(self.r2t_end);
        if start >= self.write_len {
            return Ok(());
        }
        if self.r2t_next == self.r2t_end {
            self.r2t_next = start;
        }
        self.r2t_end = self.write_len;
        Ok(())
    }

    /// Turn requested ranges into R2T slots (not yet sent), up to `max_outstanding`.
    /// Returns whether any R2T was created.
    pub(crate) fn fill_r2ts(
        &mut self,
        index: usize,
        max_burst: u32,
        max_outstanding: usize,
        ttt_counter: &mut u16,
    ) -> bool {
        let limit = max_outstanding.clamp(1, R2T_SLOTS);
        let max_burst = max_burst.max(1);
        let mut created = false;
        while !self.closing && self.r2ts.len() < limit && self.r2t_next < self.r2t_end {
            let len = (self.r2t_end - self.r2t_next).min(max_burst);
            let ttt = loop {
                *ttt_counter = ttt_counter.wrapping_add(1);
                let t = (u32::from(*ttt_counter) << 16) | (index as u32 & 0xffff);
                if t != RESERVED_TAG {
                    break t;
                }
            };
            let slot = R2tSlot {
                ttt,
                offset: self.r2t_next,
                len,
                received: 0,
                next_data_sn: 0,
                sent: false,
            };
            if self.r2ts.push(slot).is_err() {
                break;
            }
            self.r2t_next += len;
            created = true;
        }
        created
    }

    /// The next R2T to transmit, marking it sent and assigning its R2TSN.
    pub(crate) fn next_unsent_r2t(&mut self) -> Option<(R2tSlot, u32)> {
        let slot = self.r2ts.iter_mut().find(|r| !r.sent)?;
        slot.sent = true;
        let r2t_sn = self.sn;
        self.sn = self.sn.wrapping_add(1);
        Some((*slot, r2t_sn))
    }

    /// Whether an R2T is waiting to be transmitted.
    pub(crate) fn has_unsent_r2t(&self) -> bool {
        self.r2ts.iter().any(|r| !r.sent)
    }

    /// Whether [`Task::accept_data_out`] would take a Data-Out with these fields in order
    /// and deliver its data: the task is not closing, and the PDU is the next one of an
    /// open burst (DataSN, offset), ends inside it and carries the F bit exactly at its
    /// end. Its data then fills `[offset, offset + len)`, which nothing accepted has
    /// filled yet.
    pub(crate) fn expects_data_out(
        &self,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        len: u32,
        final_bit: bool,
    ) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if self.closing {
            return false;
        }
        if ttt == RESERVED_TAG {
            return self.unsol_open
                && data_sn == self.unsol_data_sn
                && offset == self.unsol_next
                && end <= self.unsol_limit
                && (end < self.unsol_limit || final_bit);
        }
        self.r2ts.iter().any(|r| {
            let r2t_end = r.offset + r.len;
            r.ttt == ttt
                && r.sent
                && data_sn == r.next_data_sn
                && offset == r.offset.wrapping_add(r.received)
                && end <= r2t_end
                && (end == r2t_end) == final_bit
        })
    }

    /// Validate one Data-Out PDU and account for it.
    pub(crate) fn accept_data_out(
        &mut self,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        len: u32,
        final_bit: bool,
    ) -> Result<DataOutAccepted, DataOutError> {
        let end = offset.checked_add(len).ok_or(DataOutError::Overrun)?;
        if ttt == RESERVED_TAG {
            if !self.unsol_open {
                return Err(DataOutError::UnexpectedUnsolicited);
            }
            let order = self.order_error(data_sn, self.unsol_data_sn, offset, self.unsol_next);
            self.unsol_data_sn = self.unsol_data_sn.wrapping_add(1);
            if final_bit {
                self.unsol_open = false;
            }
            if let Some(e) = order {
                // The sequence still advances, so its F bit is seen and the task can be
                // answered once the initiator has sent what it owes.
                return Err(e);
            }
            if end > self.unsol_limit {
                self.unsol_open = false;
                return Err(DataOutError::Overrun);
            }
            if end == self.unsol_limit && !final_bit {
                self.unsol_open = false;
                return Err(DataOutError::FinalBit);
            }
            self.unsol_next = end;
            let deliver = !self.closing;
            if deliver {
                self.received = self.received.saturating_add(len);
            }
            let sequence_closed = !self.unsol_open;
            if sequence_closed && self.want_remaining && !self.closing {
                // The deferred "request the rest" can go ahead now.
                let _ = self.request_remaining();
            }
            return Ok(DataOutAccepted {
                deliver,
                complete: deliver && self.write_complete(),
                sequence_closed,
            });
        }
        let pos = self
            .r2ts
            .iter()
            .position(|r| r.ttt == ttt && r.sent)
            .ok_or(DataOutError::UnknownTtt)?;
        let r = self.r2ts[pos];
        let order = self.order_error(
            data_sn,
            r.next_data_sn,
            offset,
            r.offset.wrapping_add(r.received),
        );
        let r2t_end = r.offset + r.len;
        let verdict = if let Some(e) = order {
            Err(e)
        } else if end > r2t_end {
            Err(DataOutError::Overrun)
        } else if (end == r2t_end) != final_bit {
            Err(DataOutError::FinalBit)
        } else {
            Ok(())
        };
        if final_bit || (verdict.is_err() && order.is_none()) {
            // The sequence is over either way (an out-of-order PDU without the F bit leaves
            // it open: the initiator still sends the rest of the burst).
            self.r2ts.swap_remove(pos);
        } else {
            let slot = &mut self.r2ts[pos];
            slot.received += len;
            slot.next_data_sn = slot.next_data_sn.wrapping_add(1);
        }
        verdict?;
        let deliver = !self.closing;
        if deliver {
            self.received = self.received.saturating_add(len);
        }
        Ok(DataOutAccepted {
            deliver,
            complete: deliver && self.write_complete(),
            sequence_closed: final_bit,
        })
    }

    /// A Data-Out's DataSN or buffer offset differs from the expected one. A closing task
    /// (failed or aborted) only drains what the initiator still owes: order no longer matters.
    fn order_error(
        &self,
        data_sn: u32,
        want_sn: u32,
        offset: u32,
        want_offset: u32,
    ) -> Option<DataOutError> {
        if self.closing {
            None
        } else if data_sn != want_sn {
            Some(DataOutError::DataSn)
        } else if offset != want_offset {
            Some(DataOutError::Offset)
        } else {
            None
        }
    }

    /// Stop soliciting data: cancel unsent R2Ts and requested ranges.
    pub(crate) fn begin_closing(&mut self) {
        self.closing = true;
        self.r2ts.retain(|r| r.sent);
        self.r2t_next = self.r2t_end;
        self.want_remaining = false;
    }

    /// Queue `[offset, offset + len)` of read data, optionally ending with `status`.
    pub(crate) fn queue_data_in(
        &mut self,
        offset: u32,
        len: u32,
        status: Option<ScsiStatus>,
    ) -> Result<(), TaskError> {
        if self.closing || self.din_status.is_some() {
            return Err(TaskError::Closing);
        }
        let end = offset.checked_add(len).ok_or(TaskError::OutOfRange)?;
        if end > self.read_len {
            return Err(TaskError::OutOfRange);
        }
        if self.din_next == self.din_end {
            // Nothing pending: a new range must not go backwards.
            if offset < self.din_end {
                return Err(TaskError::OutOfRange);
            }
            self.din_next = offset;
            self.din_end = end;
        } else if offset == self.din_end {
            self.din_end = end;
        } else {
            return Err(TaskError::Busy);
        }
        self.din_status = status;
        if status.is_some() {
            self.closing = true;
        }
        Ok(())
    }

    /// Whether a Data-In PDU is waiting to be transmitted.
    pub(crate) fn has_data_in(&self) -> bool {
        self.din_next < self.din_end
    }

    /// The next Data-In PDU, at most `mrdsl` bytes and inside the current `max_burst`.
    pub(crate) fn next_data_in(&mut self, mrdsl: u32, max_burst: u32) -> Option<DataInSegment> {
        if self.din_next >= self.din_end {
            return None;
        }
        let mrdsl = mrdsl.max(1);
        let max_burst = max_burst.max(1);
        let left_in_burst = max_burst - self.din_burst.min(max_burst - 1);
        let len = (self.din_end - self.din_next).min(mrdsl).min(left_in_burst);
        let offset = self.din_next;
        self.din_next += len;
        self.din_burst += len;
        self.din_sent = self.din_sent.saturating_add(len);
        // The end of the data is the end of a sequence when the status (in this PDU or in
        // a SCSI Response) is known to follow.
        let last =
            self.din_next == self.din_end && (self.din_status.is_some() || self.response.is_some());
        let burst_end = self.din_burst >= max_burst;
        if burst_end || last {
            self.din_burst = 0;
        }
        let data_sn = self.sn;
        self.sn = self.sn.wrapping_add(1);
        let status = if last {
            // Status rides on the Data-In only when there is no sense data.
            match self.response {
                None => self.din_status,
                Some(_) => None,
            }
        } else {
            None
        };
        Some(DataInSegment {
            offset,
            len,
            data_sn,
            final_bit: burst_end || last,
            status,
        })
    }
}

/// A fixed-capacity table of up to `N` task slots. Slots come into use lowest first and
/// are reused once freed, so the table only ever initialises as many slots as the deepest
/// queue the connection has seen: an idle connection's table is a few hundred bytes of
/// touched memory however large `N` is, and lookups scan only the slots in use.
#[derive(Clone, Debug)]
pub(crate) struct TaskTable<const N: usize, S = Vec<Task, N>> {
    slots: S,
    active: usize,
}

impl<const N: usize, S: Storage<Task>> TaskTable<N, S> {
    pub(crate) fn new() -> TaskTable<N, S> {
        TaskTable {
            slots: S::default(),
            active: 0,
        }
    }

    /// Number of active tasks.
    pub(crate) const fn len(&self) -> usize {
        self.active
    }

    /// Claim a free slot.
    pub(crate) fn insert(&mut self) -> Result<TaskHandle, TaskSetFull> {
        let index = match self.slots.items().iter().position(|t| !t.active) {
            Some(i) => i,
            None => {
                self.slots
                    .try_push(Task::default(), N)
                    .map_err(|_| TaskSetFull)?;
                self.slots.items().len() - 1
            }
        };
        let index16 = u16::try_from(index).map_err(|_| TaskSetFull)?;
        let slot = self.slots.items_mut().get_mut(index).ok_or(TaskSetFull)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.active = true;
        self.active += 1;
        Ok(TaskHandle {
            index: index16,
            generation: slot.generation,
        })
    }

    /// Free a slot.
    pub(crate) fn remove(&mut self, h: TaskHandle) {
        if let Some(t) = self.get_mut(h) {
            t.active = false;
            t.itt = RESERVED_TAG;
            t.queued = false;
            self.active -= 1;
        }
    }

    /// The task behind a handle, if the handle is current.
    pub(crate) fn get(&self, h: TaskHandle) -> Option<&Task> {
        self.slots
            .items()
            .get(h.index())
            .filter(|t| t.active && t.generation == h.generation)
    }

    /// The task behind a handle, mutably, if the handle is current.
    pub(crate) fn get_mut(&mut self, h: TaskHandle) -> Option<&mut Task> {
        self.slots
            .items_mut()
            .get_mut(h.index())
            .filter(|t| t.active && t.generation == h.generation)
    }

    /// The current handle of slot `index`, if active.
    pub(crate) fn handle_at(&self, index: usize) -> Option<TaskHandle> {
        let t = self.slots.items().get(index).filter(|t| t.active)?;
        Some(TaskHandle {
            index: u16::try_from(index).ok()?,
            generation: t.generation,
        })
    }

    /// The active task with Initiator Task Tag `itt`.
    pub(crate) fn find_itt(&self, itt: u32) -> Option<TaskHandle> {
        let index = self
            .slots
            .items()
            .iter()
            .position(|t| t.active && t.itt == itt)?;
        self.handle_at(index)
    }

    /// Handles of every active task.
    pub(crate) fn handles(&self) -> impl Iterator<Item = TaskHandle> + '_ {
        (0..self.slots.items().len()).filter_map(move |i| self.handle_at(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_task(edtl: u32, imm: u32, initial_r2t: bool, fbl: u32) -> Task {
        let mut t = Task::default();
        t.start(
            7,
            0,
            1,
            false,
            Direction::Write,
            edtl,
            0,
            WriteSetup {
                immediate_len: imm,
                initial_r2t,
                first_burst: fbl,
            },
        );
        t
    }

    #[test]
    fn table_full_is_typed_and_handles_go_stale() {
        let mut tt: TaskTable<2> = TaskTable::new();
        let a = tt.insert().unwrap();
        let b = tt.insert().unwrap();
        assert_eq!(tt.insert(), Err(TaskSetFull));
        assert_eq!((a.index(), b.index()), (0, 1));
        tt.get_mut(a).unwrap().itt = 42;
        assert_eq!(tt.find_itt(42), Some(a));
        tt.remove(a);
        assert!(tt.get(a).is_none());
        let c = tt.insert().unwrap();
        assert_eq!(c.index(), 0);
        assert_ne!(c, a);
        assert!(tt.get(a).is_none());
        assert_eq!(tt.len(), 2);
        assert_eq!(tt.handles().count(), 2);
    }

    #[test]
    fn r2ts_split_at_max_burst_and_limit_outstanding() {
        let mut t = write_task(10_000, 0, true, 0);
        t.request_remaining().unwrap();
        let mut ctr = 0u16;
        assert!(t.fill_r2ts(3, 4096, 2, &mut ctr));
        assert_eq!(t.r2ts.len(), 2);
        let (a, sn_a) = t.next_unsent_r2t().unwrap();
        let (b, sn_b) = t.next_unsent_r2t().unwrap();
        assert_eq!((a.offset, a.len, sn_a, a.ttt), (0, 4096, 0, 0x0001_0003));
        assert_eq!((b.offset, b.len, sn_b, b.ttt), (4096, 4096, 1, 0x0002_0003));
        assert!(t.next_unsent_r2t().is_none());
        // First R2T answered in two PDUs.
        let r = t.accept_data_out(a.ttt, 0, 0, 2048, false).unwrap();
        assert!(r.deliver && !r.complete && !r.sequence_closed);
        let r = t.accept_data_out(a.ttt, 1, 2048, 2048, true).unwrap();
        assert!(r.sequence_closed);
        // A slot opened: the third R2T covers the tail.
        assert!(t.fill_r2ts(3, 4096, 2, &mut ctr));
        let (c, sn_c) = t.next_unsent_r2t().unwrap();
        assert_eq!((c.offset, c.len, sn_c), (8192, 10_000 - 8192, 2));
        t.accept_data_out(b.ttt, 0, 4096, 4096, true).unwrap();
        let r = t.accept_data_out(c.ttt, 0, 8192, 1808, true).unwrap();
        assert!(r.complete);
        assert_eq!(t.received, 10_000);
    }

    #[test]
    fn data_out_errors() {
        let mut t = write_task(8192, 0, true, 0);
        t.request_remaining().unwrap();
        let mut ctr = 0u16;
        t.fill_r2ts(0, 8192, 1, &mut ctr);
        // Unsent R2T: its TTT is unknown to the initiator.
        let ttt = t.r2ts[0].ttt;
        assert_eq!(
            t.accept_data_out(ttt, 0, 0, 512, false),
            Err(DataOutError::UnknownTtt)
        );
        t.next_unsent_r2t().unwrap();
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 0, 0, 512, false),
            Err(DataOutError::UnexpectedUnsolicited)
        );
        // Out-of-order PDUs are errors, but the sequence still advances past them.
        assert_eq!(
            t.accept_data_out(ttt, 1, 0, 512, false),
            Err(DataOutError::DataSn)
        );
        assert_eq!(
            t.accept_data_out(ttt, 1, 1024, 512, false),
            Err(DataOutError::Offset)
        );
        assert_eq!(
            t.accept_data_out(ttt ^ 0x10000, 0, 0, 512, false),
            Err(DataOutError::UnknownTtt)
        );
        // Overrun ends the sequence.
        assert_eq!(
            t.accept_data_out(ttt, 2, 1024, 8192, true),
            Err(DataOutError::Overrun)
        );
        assert_eq!(t.open_sequences(), 0);
    }

    #[test]
    fn final_bit_must_match_sequence_end() {
        let mut t = write_task(4096, 0, true, 0);
        t.request_remaining().unwrap();
        let mut ctr = 0u16;
        t.fill_r2ts(0, 4096, 1, &mut ctr);
        let (r, _) = t.next_unsent_r2t().unwrap();
        assert_eq!(
            t.accept_data_out(r.ttt, 0, 0, 1024, true),
            Err(DataOutError::FinalBit)
        );
        let mut t = write_task(4096, 0, true, 0);
        t.request_remaining().unwrap();
        t.fill_r2ts(0, 4096, 1, &mut ctr);
        let (r, _) = t.next_unsent_r2t().unwrap();
        assert_eq!(
            t.accept_data_out(r.ttt, 0, 0, 4096, false),
            Err(DataOutError::FinalBit)
        );
    }

    #[test]
    fn unsolicited_burst_then_deferred_r2t() {
        // 1000 bytes immediate, FirstBurstLength 3000, EDTL 10000, InitialR2T=No.
        let mut t = write_task(10_000, 1000, false, 3000);
        assert!(t.unsol_open);
        assert_eq!((t.received, t.unsol_limit), (1000, 3000));
        // The runtime asks for the rest before the unsolicited data arrived: deferred.
        t.request_remaining().unwrap();
        let mut ctr = 0u16;
        assert!(!t.fill_r2ts(0, 65536, 1, &mut ctr));
        let r = t
            .accept_data_out(RESERVED_TAG, 0, 1000, 1000, false)
            .unwrap();
        assert!(r.deliver && !r.sequence_closed);
        // Beyond FirstBurstLength.
        let mut t2 = t.clone();
        assert_eq!(
            t2.accept_data_out(RESERVED_TAG, 1, 2000, 1001, true),
            Err(DataOutError::Overrun)
        );
        let r = t
            .accept_data_out(RESERVED_TAG, 1, 2000, 1000, true)
            .unwrap();
        assert!(r.sequence_closed);
        assert!(t.fill_r2ts(0, 65536, 1, &mut ctr));
        assert_eq!((t.r2ts[0].offset, t.r2ts[0].len), (3000, 7000));
        // Unsolicited after the sequence closed.
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 2, 3000, 10, true),
            Err(DataOutError::UnexpectedUnsolicited)
        );
    }

    #[test]
    fn unsolicited_needs_final_at_first_burst_end() {
        let mut t = write_task(4096, 0, false, 2048);
        assert_eq!(
            t.accept_data_out(RESERVED_TAG, 0, 0, 2048, false),
            Err(DataOutError::FinalBit)
        );
        assert!(!t.unsol_open);
    }

    #[test]
    fn immediate_data_can_complete_the_write() {
        let t = write_task(512, 512, true, 65536);
        assert!(t.write_complete());
        assert!(!t.unsol_open);
    }

    #[test]
    fn request_range_rules() {
        let mut t = write_task(8192, 1024, true, 0);
        assert_eq!(t.request_range(0, 512), Err(TaskError::OutOfRange));
        assert_eq!(t.request_range(1024, 8000), Err(TaskError::OutOfRange));
        t.request_range(1024, 1024).unwrap();
        t.request_range(2048, 1024).unwrap();
        assert_eq!(t.request_range(6000, 100), Err(TaskError::Busy));
        assert_eq!((t.r2t_next, t.r2t_end), (1024, 3072));
        t.begin_closing();
        assert_eq!(t.request_range(3072, 10), Err(TaskError::Closing));
        assert_eq!(t.r2t_next, t.r2t_end);
    }

    #[test]
    fn data_in_segments_at_mrdsl_and_burst() {
        let mut t = Task::default();
        t.start(
            1,
            0,
            1,
            false,
            Direction::Read,
            0,
            20_000,
            WriteSetup {
                immediate_len: 0,
                initial_r2t: true,
                first_burst: 0,
            },
        );
        t.queue_data_in(0, 20_000, Some(ScsiStatus::GOOD)).unwrap();
        let mut segs = [None; 8];
        for s in segs.iter_mut() {
            *s = t.next_data_in(4096, 10_000);
        }
        let got: [(u32, u32, u32, bool, bool); 6] = core::array::from_fn(|i| {
            let s = segs[i].unwrap();
            (s.offset, s.len, s.data_sn, s.final_bit, s.status.is_some())
        });
        assert_eq!(
            got,
            [
                (0, 4096, 0, false, false),
                (4096, 4096, 1, false, false),
                (8192, 1808, 2, true, false),
                (10_000, 4096, 3, false, false),
                (14_096, 4096, 4, false, false),
                (18_192, 1808, 5, true, true),
            ]
        );
        assert!(segs[6].is_none());
        assert!(!t.has_data_in());
    }

    #[test]
    fn data_in_in_chunks_and_bounds() {
        let mut t = Task::default();
        t.start(
            1,
            0,
            1,
            false,
            Direction::Read,
            0,
            4096,
            WriteSetup {
                immediate_len: 0,
                initial_r2t: true,
                first_burst: 0,
            },
        );
        assert_eq!(t.queue_data_in(0, 4097, None), Err(TaskError::OutOfRange));
        t.queue_data_in(0, 1024, None).unwrap();
        t.queue_data_in(1024, 1024, None).unwrap();
        assert_eq!(t.queue_data_in(3000, 10, None), Err(TaskError::Busy));
        let s = t.next_data_in(8192, 262_144).unwrap();
        assert_eq!(
            (s.offset, s.len, s.final_bit, s.status),
            (0, 2048, false, None)
        );
        assert_eq!(t.queue_data_in(0, 10, None), Err(TaskError::OutOfRange));
        t.queue_data_in(2048, 0, Some(ScsiStatus::GOOD)).unwrap();
        assert!(!t.has_data_in());
        assert_eq!(t.queue_data_in(2048, 1, None), Err(TaskError::Closing));
    }
}
