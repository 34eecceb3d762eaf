//! Connection and session state machines, target side (RFC 7143).
//!
//! A [`Connection`] is one TCP connection of an iSCSI session, from the first Login
//! Request to the Logout Response. It embeds the [login machine](crate::login) for the
//! login phase, then runs the full feature phase: the CmdSN window ([`CmdWindow`], part of
//! the separable [`SessionState`]), StatSN, the fixed-capacity task table, R2T and Data-Out
//! accounting, Data-In segmentation, NOP-In pings, task management, logout, asynchronous
//! messages and Reject PDUs. It is sans-IO in the quinn-proto style: it never touches a
//! socket or a clock and uses no heap; the runtime feeds it bytes and time and drains
//! PDUs, events and deadlines.
//!
//! # Call order
//!
//! Methods come in four kinds: getters, `handle_*` (inputs), mutators (the runtime's
//! answers) and `poll_*` (outputs). A runtime loops:
//!
//! 1. **Input**: frame the receive buffer with
//!    [`wire::pdu_len_checked`](crate::wire::pdu_len_checked)`(buf, conn.digests(),
//!    conn.max_recv_data_segment_len())` (or just call `handle_input`, which answers
//!    [`Ingress::NeedMore`] on a partial PDU) and call [`Connection::handle_input`] with
//!    the bytes of the next PDU. Discard [`Ingress::consumed`] bytes. For
//!    [`Ingress::Data`], copy the payload to `offset` in the buffer of `task` (index the
//!    runtime's per-task buffers with [`TaskHandle::index`]; immediate data arrives in the
//!    same call as its command, before the [`Event::Command`] is polled, so size buffers
//!    per slot or read the command from the event queue first). On [`Ingress::Blocked`]
//!    drain steps 2 and 3, then offer the same bytes again.
//! 2. **Events**: [`Connection::poll_event`] until `None`, and act on each
//!    ([`Event::Command`] → execute, answering with [`Connection::send_data_in`],
//!    [`Connection::request_remaining_data`] / [`Connection::request_data_out`] and
//!    [`Connection::respond`]; [`Event::DataOutComplete`] → the write data is all in;
//!    [`Event::TaskMgmt`] → [`Connection::respond_task_mgmt`]; [`Event::Logout`] → clean
//!    up, then [`Connection::respond_logout`]; [`Event::Closed`] → close the socket).
//! 3. **Output**: [`Connection::poll_transmit`] until `Ok(None)`. Each [`Transmit`] has
//!    `len` bytes at the start of the buffer you passed (header, header digest and, for
//!    PDUs whose data the connection owns, the data with padding and digest), and
//!    optionally [`TaskData`]: `len` bytes at `offset` of that task's buffer, followed by
//!    [`TaskData::trailer`]. Send them in that order (e.g. one `writev`). A buffer of
//!    `BUF + 64` bytes always suffices; a smaller one may get [`BufferTooSmall`].
//!    [`Transmit::finished`] names the task a PDU completed: its slot may be reused by the
//!    next command, so keep (or detach) that task's buffer until the PDU is written.
//!    After output, poll events once more: [`Event::Closed`] for a graceful close (logout,
//!    failed login) is reported once the last PDU has been handed out.
//! 4. **Timers**: arm a timer for [`Connection::poll_timeout`] and call
//!    [`Connection::handle_timeout`] when it fires, then go to 2.
//!
//! Mutators only queue work; the PDUs come out of `poll_transmit`. StatSN, ExpCmdSN and
//! MaxCmdSN are filled in when a PDU is written, so they are always current.
//!
//! # Rules enforced
//!
//! - Non-immediate commands outside `[ExpCmdSN, MaxCmdSN]` and duplicates are dropped
//!   silently; MaxCmdSN is ExpCmdSN - 1 plus the free part of the configured queue depth.
//! - A command whose ITT is in use is rejected (Invalid PDU field); a full task table gets
//!   a SCSI Response with TASK SET FULL status (typed [`TaskSetFull`] inside).
//! - Immediate data only with ImmediateData=Yes and at most FirstBurstLength; unsolicited
//!   Data-Out only with InitialR2T=No, up to FirstBurstLength, and only when the command's
//!   F bit is clear.
//! - Data-Out: unknown ITT or TTT → Reject (Invalid PDU field); unsolicited data not
//!   allowed → Reject (Protocol error); data beyond the R2T / burst / expected length or a
//!   wrong F bit → Reject and the task ends with CHECK CONDITION (ABORTED COMMAND, DATA
//!   PHASE ERROR); a DataSN or buffer offset out of order implies a lost PDU, so the task
//!   ends like a data digest error (below) and the connection stays up.
//! - Digests: a header digest error closes the connection; a data digest error gets a
//!   Reject (Data digest error) and, for write data, the task ends with CHECK CONDITION
//!   (ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR) once the initiator has sent what it owes.
//! - A Login Request in full feature phase, a SNACK (ErrorRecoveryLevel 0), a target opcode
//!   or a SCSI command in a discovery session → Reject. A NOP-Out with a TTT that is not
//!   the one of our outstanding ping → Reject (Invalid PDU field).
//! - Anything but a Login Request during login, or a malformed one, closes the connection.
//!
//! # Example: a minimal driver loop
//!
//! ```
//! use iscsi_proto::session::{
//!     Connection, Event, Hooks, Ingress, ScsiStatus, Timestamp,
//! };
//! use iscsi_proto::wire::{LogoutResponseCode, TmfResponse};
//!
//! const TASKS: usize = 16;
//! const BUF: usize = 8192;
//!
//! /// One pass over a connection: `rx` holds bytes read from the socket (the consumed
//! /// prefix is drained), `bufs` one data buffer per task slot, `send` writes to the socket.
//! /// Returns false once the connection is closed.
//! fn drive<H: Hooks>(
//!     conn: &mut Connection<TASKS, BUF>,
//!     hooks: &mut H,
//!     now: Timestamp,
//!     rx: &mut Vec<u8>,
//!     bufs: &mut [Vec<u8>; TASKS],
//!     send: &mut dyn FnMut(&[u8]),
//! ) -> bool {
//!     let mut hdr = [0u8; BUF + 64];
//!     let mut open = true;
//!     loop {
//!         // 1. Input: one PDU.
//!         let mut progress = false;
//!         match conn.handle_input(now, rx, hooks) {
//!             Ok(Ingress::Data { consumed, task, offset, data }) => {
//!                 let buf = &mut bufs[task.index()];
//!                 let end = offset as usize + data.len();
//!                 if buf.len() < end {
//!                     buf.resize(end, 0);
//!                 }
//!                 buf[offset as usize..end].copy_from_slice(data);
//!                 rx.drain(..consumed);
//!                 progress = true;
//!             }
//!             Ok(Ingress::Done { consumed }) => {
//!                 rx.drain(..consumed);
//!                 progress = true;
//!             }
//!             Ok(Ingress::NeedMore) | Ok(Ingress::Blocked) => {}
//!             Err(_) => open = false,
//!         }
//!         // 2. Events.
//!         while let Some(ev) = conn.poll_event() {
//!             match ev {
//!                 Event::Command(cmd) => {
//!                     if cmd.write_len > 0 {
//!                         // The runtime would hand the CDB to scsi-core here.
//!                         let _ = conn.request_remaining_data(cmd.task);
//!                     } else {
//!                         let buf = &mut bufs[cmd.task.index()];
//!                         buf.clear();
//!                         buf.resize(cmd.read_len as usize, 0);
//!                         let _ = conn.send_data_in(
//!                             cmd.task, 0, cmd.read_len, Some(ScsiStatus::GOOD));
//!                     }
//!                 }
//!                 Event::DataOutComplete { task } => {
//!                     let _ = conn.respond(task, ScsiStatus::GOOD, &[]);
//!                 }
//!                 Event::TaskMgmt(tmf) => {
//!                     let _ = conn.respond_task_mgmt(tmf.itt, TmfResponse::FunctionComplete);
//!                 }
//!                 Event::Logout(_) => {
//!                     let _ = conn.respond_logout(LogoutResponseCode::Closed);
//!                 }
//!                 Event::Closed { .. } => open = false,
//!                 Event::LoggedIn | Event::TaskFailed { .. } => {}
//!             }
//!         }
//!         // 3. Output.
//!         while let Ok(Some(t)) = conn.poll_transmit(now, &mut hdr) {
//!             send(&hdr[..t.len]);
//!             if let Some(d) = t.data {
//!                 let data = &bufs[d.task.index()][d.offset as usize..][..d.len as usize];
//!                 send(data);
//!                 send(d.trailer(data).as_bytes());
//!             }
//!             progress = true;
//!         }
//!         // 4. Timers.
//!         if conn.poll_timeout().is_some_and(|t| t <= now) {
//!             conn.handle_timeout(now);
//!             progress = true;
//!         }
//!         if !progress || !open {
//!             return open && !conn.is_closed();
//!         }
//!     }
//! }
//! ```

mod conn;
mod error;
mod event;
mod task;
mod time;
mod window;

#[cfg(any(test, feature = "initiator"))]
pub mod initiator;

#[cfg(test)]
mod tests;

pub use conn::{
    CONTROL_QUEUE, ConnConfig, Connection, EVENT_QUEUE, Hooks, MAX_PENDING_TMF, SessionState,
};
pub use error::{BufferTooSmall, CloseReason, ConnError, StateError, TaskError};
pub use event::{Cdb, Command, Event, Ingress, Logout, TaskData, TaskFailure, TaskMgmt, Transmit};
pub use task::{
    Direction, MAX_SENSE_LEN, R2T_SLOTS, Residual, ScsiStatus, Task, TaskHandle, TaskSetFull,
};
pub use time::Timestamp;
pub use window::{CmdSnCheck, CmdWindow, MAX_QUEUE_DEPTH};
