//! What the connection reports: [`Event`]s for the runtime, [`Ingress`] for each input PDU,
//! and [`Transmit`] for each output PDU.

use crate::wire::{DataTrailer, Digests, LogoutReason, MAX_CDB_LEN, TaskAttr, TmfFunction};

use super::task::{Direction, TaskHandle};

/// A command descriptor block: the 16 bytes of the BHS plus any extended CDB AHS.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
    len: u16,
}

impl Cdb {
    /// A CDB holding `bytes` (at most [`MAX_CDB_LEN`] bytes; longer input is cut).
    pub fn new(bytes: &[u8]) -> Cdb {
        let mut cdb = Cdb {
            bytes: [0; MAX_CDB_LEN],
            len: 0,
        };
        let n = bytes.len().min(MAX_CDB_LEN);
        cdb.bytes[..n].copy_from_slice(&bytes[..n]);
        cdb.len = n as u16;
        cdb
    }

    /// The CDB bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl core::fmt::Debug for Cdb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Cdb({:02x?})", self.as_bytes())
    }
}

/// A new SCSI command, ready to execute (its CmdSN is inside the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The task slot; use it in every mutator for this command.
    pub task: TaskHandle,
    /// Initiator Task Tag (for logs and task management).
    pub itt: u32,
    /// LUN field, as sent (8 bytes, SAM encoding).
    pub lun: u64,
    /// The CDB (extended CDBs included).
    pub cdb: Cdb,
    /// Data direction.
    pub dir: Direction,
    /// Expected Data Transfer Length of the write side (0 unless W).
    pub write_len: u32,
    /// Expected length of the read side (EDTL for reads, the bidirectional AHS for bidi).
    pub read_len: u32,
    /// Task attribute.
    pub attr: TaskAttr,
    /// CmdSN.
    pub cmd_sn: u32,
    /// Whether it was sent as an immediate command.
    pub immediate: bool,
    /// Bytes of immediate data that came with the command; they are handed over as
    /// [`Ingress::Data`] (offset 0) by the same `handle_input` call.
    pub immediate_len: u32,
    /// Bytes (immediate data included) the initiator sends without R2T: the runtime asks
    /// for the rest with [`request_remaining_data`](super::Connection::request_remaining_data)
    /// or [`request_data_out`](super::Connection::request_data_out).
    pub unsolicited_len: u32,
}

/// A Task Management Function request (RFC 7143 section 11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskMgmt {
    /// ITT of the TMF request; pass it to
    /// [`respond_task_mgmt`](super::Connection::respond_task_mgmt).
    pub itt: u32,
    /// The function.
    pub function: TmfFunction,
    /// LUN field.
    pub lun: u64,
    /// Referenced Task Tag (ABORT TASK).
    pub referenced_itt: u32,
    /// The referenced task, when it is live on this connection.
    pub referenced_task: Option<TaskHandle>,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
}

/// A Logout Request the runtime must answer with
/// [`respond_logout`](super::Connection::respond_logout) once it has cleaned up the
/// connection's (or session's) tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logout {
    /// ITT of the request.
    pub itt: u32,
    /// Close the session or this connection.
    pub reason: LogoutReason,
    /// The CID named by the request.
    pub cid: u16,
}

/// Why the protocol layer failed a task on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskFailure {
    /// A Data-Out for it had a data digest error (RFC 7143 section 7.8).
    DataDigest,
    /// A Data-Out for it broke the rules (data beyond the expected length or the R2T, a
    /// missing or early F bit).
    DataOutProtocol,
    /// A Data-Out for it came out of order (DataSN or buffer offset): at ErrorRecoveryLevel 0
    /// this is handled as the digest error it implies (RFC 7143 sections 7.8 and 7.9).
    DataSequence,
}

/// Something the runtime must act on.
///
/// [`Event::Command`] carries the whole CDB (up to 260 bytes), so events are large; they
/// live in a fixed queue inside the connection and are moved out one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The login completed; the connection is in full feature phase. See
    /// [`Connection::login_outcome`](super::Connection::login_outcome) for the names and
    /// negotiated parameters.
    LoggedIn,
    /// A SCSI command to execute.
    Command(Command),
    /// Every byte of write data the command expects has been handed over with
    /// [`Ingress::Data`].
    DataOutComplete {
        /// The task.
        task: TaskHandle,
    },
    /// The protocol layer failed this task: stop executing it and drop its buffer. The
    /// connection answers the initiator (CHECK CONDITION) itself; further mutators on the
    /// handle return `Closing` or `Stale`.
    TaskFailed {
        /// The task.
        task: TaskHandle,
        /// Why.
        reason: TaskFailure,
    },
    /// A Task Management Function request.
    TaskMgmt(TaskMgmt),
    /// A Logout Request.
    Logout(Logout),
    /// The connection is finished (after its last PDU was handed out by `poll_transmit`):
    /// close the socket.
    Closed {
        /// Why.
        reason: super::CloseReason,
    },
}

/// What [`Connection::handle_input`](super::Connection::handle_input) did with the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Ingress<'a> {
    /// One PDU was handled; discard `consumed` bytes of input.
    Done {
        /// Bytes of input the PDU occupied.
        consumed: usize,
    },
    /// One PDU was handled and its payload belongs to a task: copy `data` to `offset` in
    /// that task's buffer, then discard `consumed` bytes of input.
    Data {
        /// Bytes of input the PDU occupied.
        consumed: usize,
        /// The task the payload belongs to.
        task: TaskHandle,
        /// Byte offset of the payload in the task's write buffer.
        offset: u32,
        /// The payload (borrowed from the input).
        data: &'a [u8],
    },
    /// The input holds less than one whole PDU: read more and call again with all of it.
    NeedMore,
    /// The output or event queue is full: drain `poll_transmit` and `poll_event`, then call
    /// again with the same bytes. Nothing was consumed.
    Blocked,
}

impl Ingress<'_> {
    /// Bytes of input consumed (0 for `NeedMore` and `Blocked`).
    pub const fn consumed(&self) -> usize {
        match self {
            Ingress::Done { consumed } | Ingress::Data { consumed, .. } => *consumed,
            Ingress::NeedMore | Ingress::Blocked => 0,
        }
    }
}

/// Data from a task's buffer that follows a header written by
/// [`poll_transmit`](super::Connection::poll_transmit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskData {
    /// The task whose read buffer holds the data.
    pub task: TaskHandle,
    /// Offset of the data in that buffer.
    pub offset: u32,
    /// Length of the data (> 0).
    pub len: u32,
    /// Whether a data digest follows the padding.
    pub digest: bool,
}

impl TaskData {
    /// The bytes to send after the data: zero padding to a multiple of 4 and, if
    /// [`TaskData::digest`], the CRC32C data digest. `data` must be the `len` bytes at
    /// `offset` of the task's buffer.
    pub fn trailer(&self, data: &[u8]) -> DataTrailer {
        DataTrailer::new(
            data,
            Digests {
                header: false,
                data: self.digest,
            },
        )
    }
}

/// One PDU to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Bytes written at the start of the caller's buffer: the header and header digest,
    /// and for PDUs whose data the connection owns (login, text, sense, reject, NOP-In) the
    /// data, padding and data digest too.
    pub len: usize,
    /// Data to send from the runtime's task buffer right after those bytes, followed by
    /// [`TaskData::trailer`] (Data-In only).
    pub data: Option<TaskData>,
    /// The task this PDU completed (final Data-In with status, or SCSI Response): its
    /// handle is dead from now on and its slot may be reused by the next command, so the
    /// runtime must keep (or detach) the task's buffer until this PDU is written, and can
    /// then release it.
    pub finished: Option<TaskHandle>,
}
