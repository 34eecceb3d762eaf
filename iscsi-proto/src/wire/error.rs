//! Codec errors, grouped by who is to blame.

use core::fmt;

use super::RejectReason;

/// An error from parsing or emitting a PDU.
///
/// Errors caused by the peer ([`Blame::Peer`]) are answered on the wire: see
/// [`Error::reject_reason`] for the Reject PDU reason a target sends, or close the
/// connection when there is none. [`Blame::Local`] errors are the caller's (a buffer too
/// small, a repr that cannot be encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The input is shorter than the lengths it declares (BHS, AHS, data segment, digests).
    Truncated,
    /// The output buffer is too small; `required` bytes are needed. Nothing useful was
    /// written.
    BufferTooSmall {
        /// The number of bytes the operation needs.
        required: usize,
    },
    /// The opcode is not one this codec knows (including vendor-specific opcodes), or it is
    /// not valid in the direction being parsed.
    UnknownOpcode(u8),
    /// A defined field holds a value the RFC reserves (RFC 7143 11.1: a protocol error).
    ReservedValue {
        /// The field's name as in RFC 7143.
        field: &'static str,
        /// The value received.
        value: u32,
    },
    /// A field is inconsistent with the rest of the PDU (e.g. both T and C set in a Login
    /// Request, a data segment on a PDU that cannot carry one).
    InvalidField {
        /// The field's name as in RFC 7143.
        field: &'static str,
        /// The value received (or to be emitted).
        value: u32,
    },
    /// A malformed Additional Header Segment.
    InvalidAhs,
    /// The data segment is longer than allowed: the caller's limit on receive
    /// (MaxRecvDataSegmentLength), or 2^24 - 1 (the field's width) on emit.
    DataSegmentTooLong {
        /// The declared or requested data segment length.
        len: u32,
        /// The limit it exceeds.
        max: u32,
    },
    /// The header digest did not match (RFC 7143 7.8: discard the PDU; no Reject).
    HeaderDigest {
        /// The digest computed over the received header.
        computed: u32,
        /// The digest the peer sent.
        received: u32,
    },
    /// The data digest did not match (RFC 7143 7.8: Reject with reason 0x02).
    DataDigest {
        /// The digest computed over the received data and padding.
        computed: u32,
        /// The digest the peer sent.
        received: u32,
    },
}

/// Who caused an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The bytes received from the peer are bad.
    Peer,
    /// The local caller asked for something impossible (small buffer, bad repr).
    Local,
}

impl Error {
    /// Who is to blame for this error. `DataSegmentTooLong` and `InvalidField` are
    /// attributed to the peer; they can only be local when emitting a repr the caller built.
    pub const fn blame(&self) -> Blame {
        match self {
            Error::BufferTooSmall { .. } => Blame::Local,
            _ => Blame::Peer,
        }
    }

    /// The Reject reason a target answers this receive error with (RFC 7143 11.17.1), or
    /// `None` when no Reject is sent: a header digest error (the PDU is silently dropped,
    /// 7.8), a truncated input (wait for more bytes) or a local error.
    pub const fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Error::Truncated | Error::BufferTooSmall { .. } | Error::HeaderDigest { .. } => None,
            Error::DataDigest { .. } => Some(RejectReason::DataDigestError),
            Error::UnknownOpcode(_) => Some(RejectReason::CommandNotSupported),
            Error::ReservedValue { .. } | Error::InvalidField { .. } | Error::InvalidAhs => {
                Some(RejectReason::InvalidPduField)
            }
            Error::DataSegmentTooLong { .. } => Some(RejectReason::ProtocolError),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("PDU truncated"),
            Error::BufferTooSmall { required } => {
                write!(f, "output buffer too small: {required} bytes required")
            }
            Error::UnknownOpcode(op) => write!(f, "unknown opcode {op:#04x}"),
            Error::ReservedValue { field, value } => {
                write!(f, "reserved value {value:#x} in field {field}")
            }
            Error::InvalidField { field, value } => {
                write!(f, "invalid value {value:#x} in field {field}")
            }
            Error::InvalidAhs => f.write_str("malformed additional header segment"),
            Error::DataSegmentTooLong { len, max } => {
                write!(f, "data segment length {len} exceeds the limit {max}")
            }
            Error::HeaderDigest { computed, received } => write!(
                f,
                "header digest mismatch: computed {computed:#010x}, received {received:#010x}"
            ),
            Error::DataDigest { computed, received } => write!(
                f,
                "data digest mismatch: computed {computed:#010x}, received {received:#010x}"
            ),
        }
    }
}

impl core::error::Error for Error {}
