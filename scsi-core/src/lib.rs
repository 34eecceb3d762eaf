//! # scsi-core
//!
//! SCSI SPC/SBC logical unit emulation as a sans-IO, `no_std`, allocation-free state
//! machine. A [`LogicalUnit`] behaves like a modern disk (thin provisioning, removable
//! media, write protection, unit attentions, task attributes) but performs no I/O: it hands
//! block I/O out as [`IoRequest`]s and takes completions back. A [`Target`] groups LUs,
//! answers REPORT LUNS and commands to absent LUNs (INQUIRY with peripheral qualifier 011b,
//! LOGICAL UNIT NOT SUPPORTED otherwise); without a configured LUN 0 it presents LUN 0 as a
//! storage array controller (peripheral device type 0x0C) so REPORT LUNS always lists it.
//!
//! Besides the SBC disk it implements persistent reservations and RESERVE/RELEASE with the
//! SPC-4 conflict rules ([`pr`]), REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT
//! FUNCTIONS, WRITE ATOMIC (16), EXTENDED COPY (LID1) between the LUs of a target with
//! RECEIVE COPY RESULTS, and SANITIZE.
//!
//! Modules: [`lu`] (task table, ordering, per-nexus state, the SBC command state machine),
//! [`target`] (LUN table), [`pr`] (reservation model, APTPL image), [`sense`]
//! (fixed/descriptor sense), [`lun`] (8-byte LUN encoding), [`config`] ([`LuConfig`]),
//! [`types`] (actions, I/O requests, errors), [`cdb`] (operation codes).
//!
//! ## Call order (one runtime, many connections)
//!
//! The runtime owns every data buffer and wraps the `Target` (or each `LogicalUnit`) in a
//! mutex held only for the calls below; none of them blocks or does heavy work.
//!
//! 1. `add_nexus_with_port(id, b"iqn...,i,0x<ISID>", relative_target_port)` when an I_T
//!    nexus (session) appears: persistent reservations are kept per initiator port, so a
//!    session that logs in again with the same name and ISID finds its registrations
//!    (`add_nexus(id)` registers an anonymous nexus; `submit` registers unknown ones).
//!    `remove_nexus(id)` when it goes away (releases PREVENT and a RESERVE (6)/(10)
//!    reservation, aborts tasks; registrations stay).
//! 2. `submit(lun, nexus, tag, cdb, dir, expected_len, attr)` per SCSI command. A full
//!    table is [`SubmitError::TaskSetFull`]: answer TASK SET FULL yourself.
//! 3. Drain `poll_action()` until `None` after every submit and every callback:
//!    - [`Action::NeedDataOut`] `{task, len}`: gather `len` bytes of Data-Out (immediate
//!      data, R2Ts) into the task's buffer, then `data_out_ready(task, &buf[..len])`.
//!    - [`Action::Io`]`(IoRequest)`: run it on the backing store (see [`IoOp`] for what
//!      each op reads/writes and which callback answers it): `complete_io(task, result)`,
//!      `compare_data(task, read, expected)` (VERIFY BYTCHK=1/3, COMPARE AND WRITE) or
//!      `lba_status_result(task, mapped, blocks)` (GET LBA STATUS). `Copy` (EXTENDED COPY)
//!      names its source and destination LUNs; `Sanitize` covers the whole medium. For
//!      `Read`, send the
//!      first `transfer_len` bytes as Data-In. UNMAP ranges: [`UnmapRanges::new`] over the
//!      Data-Out buffer; ORWRITE merge: [`or_into`].
//!    - [`Action::DataIn`] `{task, len}`: `emit_data_in(task, &mut buf)` writes the emulated
//!      response (INQUIRY, MODE SENSE, READ CAPACITY, REPORT LUNS, GET LBA STATUS, ...);
//!      send it.
//!    - [`Action::Complete`] `{task, status, sense, residual}`: send the status; the task
//!      is gone.
//! 4. Task management: `abort_task`, `abort_task_set`, `clear_task_set`, `lu_reset`
//!    (`lu_reset_by` spares the requester its unit attention), `target_reset_by` (warm or
//!    cold: POWER ON, RESET for every other nexus; cold also drops persistent reservations
//!    without APTPL), `nexus_reset` drop tasks without a response. Tasks whose I/O is in flight stay in the
//!    table (counted in [`TmfOutcome::in_flight`]) until the runtime reports that I/O.
//!
//! Ordering: a task starts (is checked and produces its first action) only when its task
//! attribute allows — ORDERED waits for every older task, SIMPLE waits for older ORDERED
//! tasks and for older tasks whose LBA range overlaps when either writes, HEAD OF QUEUE
//! starts at once. So `poll_action` only hands out what may run now, and the runtime may run
//! every handed-out I/O concurrently.
//!
//! 5. With APTPL: when `take_pr_changed()` says so after commands, save
//!    `export_pr(buf)`; at start, before the first command, `import_pr(image)`.
//!
//! Unit attentions are queued per nexus (POWER ON on first contact, capacity change,
//! REPORTED LUNS DATA HAS CHANGED, MODE PARAMETERS CHANGED for the other nexuses, resets)
//! and reported on the next command other than INQUIRY, REPORT LUNS and REQUEST SENSE.
//! Sense data is fixed format (0x70) or descriptor format (0x72) following the D_SENSE bit
//! of the control mode page.
#![no_std]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod cdb;
pub mod config;
mod emulate;
pub mod lu;
pub mod lun;
mod opcodes;
mod out;
pub mod pr;
pub mod sense;
pub mod target;
pub mod types;

#[cfg(test)]
mod tests;

pub use config::{AsciiField, BlockSize, LuConfig};
pub use lu::LogicalUnit;
pub use lun::Lun;
pub use pr::{PortName, PrImageError, PrType};
pub use sense::{Asc, FieldPointer, Sense, SenseData, SenseKey};
pub use target::{Target, TargetAction, TargetError};
pub use types::{
    Action, CallbackError, DataDirection, IoOp, IoRequest, IoResult, NexusError, NexusId, Residual,
    SanitizeKind, ScsiStatus, SubmitError, TaskAttr, TaskId, TaskTag, TmfOutcome, UnitAttention,
    UnmapRanges, VerifyMode, or_into,
};
