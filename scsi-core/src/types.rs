//! The vocabulary between a runtime and a logical unit: task identities, actions, I/O
//! requests and results, and the error types of every call.

use core::fmt;

use crate::sense::SenseData;

/// An I_T nexus (one iSCSI session) as numbered by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u32);

/// A task tag (the iSCSI Initiator Task Tag), unique among the nexus' active tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskTag(pub u32);

/// A task: its nexus and tag. Every action and every callback names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId {
    /// The I_T nexus that sent the command.
    pub nexus: NexusId,
    /// The task tag.
    pub tag: TaskTag,
}

impl TaskId {
    /// A task id from raw numbers.
    pub const fn new(nexus: u32, tag: u32) -> TaskId {
        TaskId {
            nexus: NexusId(nexus),
            tag: TaskTag(tag),
        }
    }
}

/// Data direction of a command as announced by the transport (iSCSI R/W bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataDirection {
    /// No data.
    None,
    /// Data-In (target to initiator).
    Read,
    /// Data-Out (initiator to target).
    Write,
    /// Both directions.
    Bidirectional,
}

/// SAM task attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskAttr {
    /// SIMPLE: may run in any order relative to other SIMPLE tasks.
    Simple,
    /// ORDERED: runs after every older task and before every newer non-HEAD OF QUEUE task.
    Ordered,
    /// HEAD OF QUEUE: runs before every waiting task.
    HeadOfQueue,
    /// ACA: treated as SIMPLE (NACA is not supported).
    Aca,
}

/// SCSI status byte (SAM-5 table 33).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ScsiStatus {
    /// GOOD.
    Good = 0x00,
    /// CHECK CONDITION (sense data follows).
    CheckCondition = 0x02,
    /// CONDITION MET.
    ConditionMet = 0x04,
    /// BUSY.
    Busy = 0x08,
    /// RESERVATION CONFLICT.
    ReservationConflict = 0x18,
    /// TASK SET FULL.
    TaskSetFull = 0x28,
    /// ACA ACTIVE.
    AcaActive = 0x30,
    /// TASK ABORTED.
    TaskAborted = 0x40,
}

/// Residual of a completed command relative to the expected data transfer length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Residual {
    /// Exactly the expected length moved.
    None,
    /// Fewer bytes than expected moved (iSCSI U bit, count in Residual Count).
    Underflow(u32),
    /// The command wanted more than expected (iSCSI O bit).
    Overflow(u32),
}

impl Residual {
    /// The residual for a command that wanted `wanted` bytes when `expected` were announced.
    pub const fn between(expected: u32, wanted: u32) -> Residual {
        if wanted < expected {
            Residual::Underflow(expected - wanted)
        } else if wanted > expected {
            Residual::Overflow(wanted - expected)
        } else {
            Residual::None
        }
    }
}

/// What to compare in a VERIFY / COMPARE AND WRITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerifyMode {
    /// BYTCHK 00b: only check the medium is readable.
    Medium,
    /// BYTCHK 01b: compare every block with the Data-Out buffer.
    Compare,
    /// BYTCHK 11b: compare every block with the single block in the Data-Out buffer.
    CompareEachWithOne,
}

/// What [`IoOp::Sanitize`] does to every block of the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SanitizeKind {
    /// Write the initialization pattern (the `pattern_len` bytes at the request's
    /// `data_offset` in the Data-Out buffer, repeated from the start of each block) over the
    /// whole medium `passes` times; with `invert`, every second pass writes the pattern's
    /// bitwise complement.
    Overwrite {
        /// Pattern length in bytes (1..=block size).
        pattern_len: u16,
        /// Invert the pattern on every second pass.
        invert: bool,
        /// Number of passes (1..=31).
        passes: u8,
    },
    /// BLOCK ERASE / CRYPTOGRAPHIC ERASE: deallocate every block (they read as zeros), or
    /// write zeros where the store cannot deallocate.
    Erase,
}

/// The operation of an [`IoRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Read `blocks` from `lba` into the task's buffer, then send its first
    /// `transfer_len` bytes as Data-In; answer with `complete_io`.
    Read,
    /// Write the task's Data-Out buffer (from `data_offset`, `blocks * block_size` bytes)
    /// at `lba`; honour `fua` (write through); answer with `complete_io`.
    Write,
    /// Flush the write cache for `lba..lba+blocks` (or everything); `complete_io`.
    Flush,
    /// Deallocate the ranges of the UNMAP parameter list held in the task's Data-Out buffer:
    /// iterate them with [`crate::UnmapRanges::new`]; `descriptors` is their count.
    /// Answer with `complete_io`.
    Unmap {
        /// Number of (already validated, non-empty or empty) block descriptors.
        descriptors: u32,
    },
    /// Write the single block of the Data-Out buffer (zeros when `ndob`) to every block of
    /// the range. When `unmap` is set (only on thin LUs) the runtime deallocates the range
    /// instead, whatever the block holds (unmapped blocks read as zeros, LBPRZ), writing
    /// zeros if the store cannot deallocate.
    WriteSame {
        /// The UNMAP bit was set (the LU is thin): deallocate the range.
        unmap: bool,
        /// No Data-Out buffer: the block is all zeros.
        ndob: bool,
        /// The block is all zeros.
        zero: bool,
    },
    /// Read the range (checking the medium). For `Medium`, answer with `complete_io`; for the
    /// compare modes, read into a second buffer and call `compare_data(task, read,
    /// data_out)` (or `complete_io` with an error if the read failed).
    Verify {
        /// What to compare.
        mode: VerifyMode,
    },
    /// Emulated: read the range into a second buffer and call `compare_data(task, read,
    /// &data_out[..n])` with the first half of the Data-Out buffer; on a match scsi-core
    /// issues a `Write` of the second half (`data_offset = n`).
    ///
    /// A runtime whose store compares and writes by itself (atomically) instead answers
    /// with `complete_io`: [`IoResult::Ok`] when it wrote (GOOD; no `Write` follows),
    /// [`IoResult::Miscompare`] with the offset of the first differing byte when it did
    /// not (CHECK CONDITION, MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION, the offset
    /// in INFORMATION — what `compare_data` reports), or another error.
    CompareAndWrite,
    /// Read the range, OR the Data-Out buffer into it (see [`crate::or_into`]) and write it
    /// back; overlapping tasks are held back meanwhile so it is atomic. `complete_io`.
    OrWrite,
    /// Optionally read ahead the range (no data moves); `complete_io`.
    Prefetch,
    /// SANITIZE the whole medium (`lba` 0, `blocks` = capacity); see [`SanitizeKind`].
    /// Answer with `complete_io`.
    Sanitize {
        /// Overwrite or erase.
        kind: SanitizeKind,
    },
    /// EXTENDED COPY: copy `blocks` blocks of `block_size` bytes from LUN `src_lun` at
    /// `src_lba` to LUN `dst_lun` at `lba` (LUs of the same target, possibly both the one
    /// the command came to; ranges already checked). Copy through a bounded buffer; when
    /// source and destination are the same LU and overlap, copy so the source is read
    /// before it is overwritten. Answer with `complete_io`.
    Copy {
        /// Source LUN number.
        src_lun: u16,
        /// First source block.
        src_lba: u64,
        /// Destination LUN number (the destination range starts at the request's `lba`).
        dst_lun: u16,
    },
    /// Find the provisioning status of the extent starting at `lba` (at most `blocks`) and
    /// answer with `lba_status_result(task, mapped, length)` (or `complete_io` on error).
    LbaStatus,
}

/// A block I/O the runtime performs on the backing store for a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoRequest {
    /// The task.
    pub task: TaskId,
    /// The operation.
    pub op: IoOp,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Force unit access: the data must be durable when `complete_io(Ok)` is called.
    pub fua: bool,
    /// Disable page out (a hint that the data need not stay cached).
    pub dpo: bool,
    /// Offset of the write data in the task's Data-Out buffer.
    pub data_offset: u32,
    /// For `Read`: how many bytes of the read data go to the initiator (min of the expected
    /// length and `blocks * block_size`).
    pub transfer_len: u32,
}

impl IoRequest {
    /// Bytes covered by the request (`blocks * block_size`), saturating.
    pub const fn byte_len(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }
    /// Byte offset of `lba` on the backing store, saturating.
    pub const fn byte_offset(&self) -> u64 {
        self.lba.saturating_mul(self.block_size as u64)
    }
}

/// What a runtime has to do next for one task (from `poll_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Action {
    /// Collect `len` bytes of Data-Out (immediate/unsolicited data plus R2Ts) into the
    /// task's buffer, then call `data_out_ready(task, &buf[..len])`. `len` never exceeds
    /// the expected data transfer length; unsolicited data beyond `len` is discarded.
    /// A command refused before this action (bad CDB, write protect, ...) never asks for
    /// its data: the runtime drops any immediate data it already holds.
    NeedDataOut {
        /// The task.
        task: TaskId,
        /// Bytes to collect (never more than the expected data transfer length).
        len: u32,
    },
    /// Perform a block I/O, then answer as the [`IoOp`] documents.
    Io(IoRequest),
    /// Emulated Data-In: call `emit_data_in(task, &mut buf)` with a buffer of at least
    /// `len` bytes and send what it wrote.
    DataIn {
        /// The task.
        task: TaskId,
        /// Bytes that will be written.
        len: u32,
    },
    /// The command is finished: send the status (after any Data-In). The task is gone.
    Complete {
        /// The task.
        task: TaskId,
        /// Status byte.
        status: ScsiStatus,
        /// Sense data for CHECK CONDITION.
        sense: Option<SenseData>,
        /// Residual relative to the expected data transfer length.
        residual: Residual,
    },
}

impl Action {
    /// The task the action is for.
    pub const fn task(&self) -> TaskId {
        match self {
            Action::NeedDataOut { task, .. }
            | Action::DataIn { task, .. }
            | Action::Complete { task, .. } => *task,
            Action::Io(io) => io.task,
        }
    }
}

/// Outcome of an [`IoRequest`] reported with `complete_io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoResult {
    /// Done.
    Ok,
    /// The read failed (MEDIUM ERROR / UNRECOVERED READ ERROR).
    ReadError,
    /// The write failed (MEDIUM ERROR / WRITE ERROR).
    WriteError,
    /// The store is out of space (DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT).
    NoSpace,
    /// The store is smaller than the LU claims (ILLEGAL REQUEST / LBA OUT OF RANGE).
    OutOfRange,
    /// The store is not available (NOT READY).
    NotReady,
    /// Data did not match at this byte offset (MISCOMPARE, offset in INFORMATION).
    Miscompare {
        /// Byte offset of the first difference.
        offset: u64,
    },
    /// Any other failure (HARDWARE ERROR / INTERNAL TARGET FAILURE).
    Failed,
}

/// Why `submit` refused a command; the runtime answers with the named status itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubmitError {
    /// The task table is full: answer TASK SET FULL (or BUSY).
    TaskSetFull,
    /// The nexus table is full: answer BUSY.
    NexusTableFull,
    /// A task with this tag is already active on this nexus (OVERLAPPED COMMANDS).
    DuplicateTag,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubmitError::TaskSetFull => "task set full",
            SubmitError::NexusTableFull => "nexus table full",
            SubmitError::DuplicateTag => "task tag already in use on this nexus",
        })
    }
}

impl core::error::Error for SubmitError {}

/// Why a callback (`data_out_ready`, `emit_data_in`, `complete_io`, ...) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallbackError {
    /// No such task (finished, aborted, or never submitted).
    UnknownTask,
    /// The task is not waiting for this callback.
    WrongState,
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallbackError::UnknownTask => "unknown task",
            CallbackError::WrongState => "task is not waiting for this callback",
        })
    }
}

impl core::error::Error for CallbackError {}

/// Why a nexus could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NexusError {
    /// The nexus table is full.
    TableFull,
}

impl fmt::Display for NexusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nexus table full")
    }
}

impl core::error::Error for NexusError {}

/// Unit attention conditions a runtime (or admin) can raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitAttention {
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    PowerOnReset,
    /// BUS DEVICE RESET FUNCTION OCCURRED.
    LuReset,
    /// I_T NEXUS LOSS OCCURRED.
    NexusLoss,
    /// CAPACITY DATA HAS CHANGED.
    CapacityChanged,
    /// REPORTED LUNS DATA HAS CHANGED.
    ReportedLunsChanged,
    /// MODE PARAMETERS CHANGED.
    ModeParametersChanged,
    /// INQUIRY DATA HAS CHANGED.
    InquiryDataChanged,
    /// COMMANDS CLEARED BY ANOTHER INITIATOR.
    CommandsCleared,
    /// Any other additional sense code.
    Other(crate::sense::Asc),
}

impl UnitAttention {
    /// The additional sense code reported for it.
    pub const fn asc(self) -> crate::sense::Asc {
        use crate::sense::Asc;
        match self {
            UnitAttention::PowerOnReset => Asc::POWER_ON_RESET,
            UnitAttention::LuReset => Asc::BUS_DEVICE_RESET,
            UnitAttention::NexusLoss => Asc::I_T_NEXUS_LOSS,
            UnitAttention::CapacityChanged => Asc::CAPACITY_DATA_HAS_CHANGED,
            UnitAttention::ReportedLunsChanged => Asc::REPORTED_LUNS_DATA_HAS_CHANGED,
            UnitAttention::ModeParametersChanged => Asc::MODE_PARAMETERS_CHANGED,
            UnitAttention::InquiryDataChanged => Asc::INQUIRY_DATA_HAS_CHANGED,
            UnitAttention::CommandsCleared => Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
            UnitAttention::Other(a) => a,
        }
    }
}

/// What a task management function did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TmfOutcome {
    /// Tasks removed at once (no response will be produced for them).
    pub aborted: u32,
    /// Tasks whose I/O is still running in the runtime: they produce no response, and their
    /// slot is freed when the runtime reports the I/O with `complete_io`/`compare_data`/....
    pub in_flight: u32,
}

/// Unmap a validated UNMAP parameter list held by the runtime: iterate its
/// `(lba, blocks)` descriptors without allocation.
#[derive(Clone, Debug)]
pub struct UnmapRanges<'a> {
    descs: &'a [u8],
}

impl<'a> UnmapRanges<'a> {
    /// Iterate the block descriptors of an UNMAP parameter list (the whole Data-Out buffer).
    /// Truncated or malformed lists yield the complete descriptors they hold.
    pub fn new(param: &'a [u8]) -> UnmapRanges<'a> {
        if param.len() < 8 {
            return UnmapRanges { descs: &[] };
        }
        let bd_len = usize::from(u16::from_be_bytes([param[2], param[3]]));
        let end = param.len().min(8usize.saturating_add(bd_len));
        UnmapRanges {
            descs: &param[8..end],
        }
    }
}

impl Iterator for UnmapRanges<'_> {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        if self.descs.len() < 16 {
            return None;
        }
        let (d, rest) = self.descs.split_at(16);
        self.descs = rest;
        let mut l = [0u8; 8];
        l.copy_from_slice(&d[0..8]);
        let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        Some((u64::from_be_bytes(l), n))
    }
}

/// OR `src` into `dst` byte by byte (ORWRITE's merge; the shorter length wins).
pub fn or_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}
