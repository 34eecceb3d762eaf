//! Reject PDU (RFC 7143 11.17).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_opcode};
use super::{Error, Opcode, RESERVED_TAG};

/// The reason of a Reject (byte 2, RFC 7143 11.17.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// 0x02: Data (payload) digest error.
    DataDigestError,
    /// 0x03: SNACK Reject.
    SnackReject,
    /// 0x04: Protocol error.
    ProtocolError,
    /// 0x05: Command not supported.
    CommandNotSupported,
    /// 0x06: Immediate command reject (too many immediate commands).
    ImmediateCommandReject,
    /// 0x07: Task in progress.
    TaskInProgress,
    /// 0x08: Invalid data ACK.
    InvalidDataAck,
    /// 0x09: Invalid PDU field.
    InvalidPduField,
    /// 0x0a: Long operation reject (cannot generate a TTT, out of resources).
    LongOperationReject,
    /// 0x0c: Waiting for Logout.
    WaitingForLogout,
    /// Any other value (0x01 and 0x0b are reserved / deprecated).
    Unknown(u8),
}

impl RejectReason {
    /// Decode.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0x02 => RejectReason::DataDigestError,
            0x03 => RejectReason::SnackReject,
            0x04 => RejectReason::ProtocolError,
            0x05 => RejectReason::CommandNotSupported,
            0x06 => RejectReason::ImmediateCommandReject,
            0x07 => RejectReason::TaskInProgress,
            0x08 => RejectReason::InvalidDataAck,
            0x09 => RejectReason::InvalidPduField,
            0x0a => RejectReason::LongOperationReject,
            0x0c => RejectReason::WaitingForLogout,
            other => RejectReason::Unknown(other),
        }
    }

    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            RejectReason::DataDigestError => 0x02,
            RejectReason::SnackReject => 0x03,
            RejectReason::ProtocolError => 0x04,
            RejectReason::CommandNotSupported => 0x05,
            RejectReason::ImmediateCommandReject => 0x06,
            RejectReason::TaskInProgress => 0x07,
            RejectReason::InvalidDataAck => 0x08,
            RejectReason::InvalidPduField => 0x09,
            RejectReason::LongOperationReject => 0x0a,
            RejectReason::WaitingForLogout => 0x0c,
            RejectReason::Unknown(v) => v,
        }
    }
}

/// A Reject PDU (opcode 0x3f). Its data segment is the complete header (BHS) of the
/// rejected PDU; its ITT is always 0xffffffff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject<'a> {
    /// The reason.
    pub reason: RejectReason,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN / R2TSN (for a rejected SNACK), else 0.
    pub data_sn: u32,
    /// The header of the rejected PDU.
    pub data: &'a [u8],
}

impl<'a> Reject<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::Reject)?;
        Ok(Reject {
            reason: RejectReason::from_u8(bhs.byte2()),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            data_sn: bhs.word(Word::W36),
            data,
        })
    }

    /// A view over the rejected PDU's BHS, if the data segment holds a whole one.
    pub fn rejected_header(&self) -> Option<Bhs<&'a [u8]>> {
        Bhs::new_checked(self.data).ok()
    }

    /// Header length: BHS only.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN
    }

    /// Write the BHS; DataSegmentLength is `data.len()`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, self.data.len())
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        let mut bhs = begin_emit(out, Opcode::Reject, 0, data_len)?;
        bhs.set_flags(0x80);
        bhs.set_byte2(self.reason.to_u8());
        bhs.set_itt(RESERVED_TAG);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(Word::W36, self.data_sn);
        Ok(BHS_LEN)
    }
}
