//! The wire layer: BHS view, PDU reprs, AHS and framing (RFC 7143 chapter 11).
//!
//! Two layers, as in smoltcp's `wire` module:
//! - [`Bhs`] is a *view* over the 48-byte Basic Header Segment. [`Bhs::new_checked`] checks
//!   the length once; after that no accessor panics. Getters work on any `AsRef<[u8]>`,
//!   setters on `AsMut<[u8]>`. [`BhsFields`] is the same header as a zerocopy
//!   `#[repr(C)]` struct of big-endian fields.
//! - A validated *repr* per PDU ([`ScsiCommand`], [`DataOut`], [`LoginRequest`], ...) with
//!   `parse(&Bhs, ahs, data) -> Result<Self, Error>`, `emit(&self, out) -> Result<usize,
//!   Error>` (writes BHS + AHS with DataSegmentLength set from the data the repr carries) and
//!   `buffer_len()` (BHS + AHS bytes). Data segments are borrowed `&'a [u8]`.
//!
//! [`Pdu`] wraps every repr; [`Pdu::parse`] takes a whole PDU (after [`pdu_len`] said it is
//! complete), verifies digests and reports how many bytes it consumed. To send,
//! [`emit_pdu`] writes a whole small PDU (header, header digest, data, padding, data digest)
//! into one buffer, and [`emit_header`] + [`DataTrailer`] let a runtime `writev` a header it
//! built here followed by data straight from its own I/O buffer.
//!
//! Receivers follow RFC 7143 section 11.1: reserved bits and reserved fields are ignored
//! (and emitted as zero), reserved *code values* in defined fields are errors
//! ([`Error::ReservedValue`]), as are inconsistent combinations ([`Error::InvalidField`]).
//! Fields whose code space the RFC leaves open to growth (TMF function, response codes,
//! async events, reject reasons, login status) decode to an enum with an `Unknown` arm.

mod ahs;
mod async_msg;
mod bhs;
mod error;
mod frame;
mod login;
mod logout;
mod nop;
mod opcode;
mod reject;
mod scsi;
mod snack;
mod task;
mod text;

pub use ahs::{Ahs, AhsIter, AhsType, MAX_CDB_LEN};
pub use async_msg::{AsyncEvent, AsyncMessage};
pub use bhs::{BHS_LEN, Bhs, BhsFields, MAX_DATA_SEGMENT_LEN, Word};
pub use error::{Blame, Error};
pub use frame::{
    DataTrailer, Digests, Pdu, Status, emit_header, emit_pdu, header_wire_len, pad_len, pdu_len,
    pdu_len_checked,
};
pub use login::{LoginFlags, LoginRequest, LoginResponse, LoginStatus, Stage};
pub use logout::{LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode};
pub use nop::{NopIn, NopOut};
pub use opcode::Opcode;
pub use reject::{Reject, RejectReason};
pub use scsi::{
    DataIn, DataInFlags, DataOut, R2t, ResponseFlags, ScsiCommand, ScsiCommandFlags, ScsiResponse,
    ScsiResponseCode, TaskAttr,
};
pub use snack::{Snack, SnackType};
pub use task::{TaskMgmtRequest, TaskMgmtResponse, TmfFunction, TmfResponse};
pub use text::{TextFlags, TextRequest, TextResponse};

/// The reserved Initiator Task Tag value (0xffffffff), used by unsolicited PDUs.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
