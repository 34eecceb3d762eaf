//! Logout Request and Logout Response PDUs (RFC 7143 11.14, 11.15).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_no_data, expect_opcode, join16, split16};
use super::{Error, Opcode};

/// The reason code of a Logout Request (byte 1, bits 6-0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    /// 0: close the session.
    CloseSession,
    /// 1: close the connection.
    CloseConnection,
    /// 2: remove the connection for recovery.
    RemoveConnectionForRecovery,
}

impl LogoutReason {
    /// Decode the 7-bit reason code; other values are reserved.
    pub const fn from_u8(v: u8) -> Result<Self, Error> {
        match v & 0x7f {
            0 => Ok(LogoutReason::CloseSession),
            1 => Ok(LogoutReason::CloseConnection),
            2 => Ok(LogoutReason::RemoveConnectionForRecovery),
            other => Err(Error::ReservedValue {
                field: "Reason Code",
                value: other as u32,
            }),
        }
    }

    /// The 7-bit code.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }
}

/// A Logout Request PDU (opcode 0x06).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogoutRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// Reason code.
    pub reason: LogoutReason,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID of the connection to close (reserved for [`LogoutReason::CloseSession`]).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::LogoutRequest)?;
        expect_no_data(data.len())?;
        Ok(LogoutRequest {
            immediate: bhs.immediate(),
            reason: LogoutReason::from_u8(bhs.flags())?,
            itt: bhs.itt(),
            cid: split16(bhs.word(Word::W20)).0,
            cmd_sn: bhs.word(Word::W24),
            exp_stat_sn: bhs.word(Word::W28),
        })
    }

    /// Header length: BHS only.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN
    }

    /// Write the BHS.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, 0)
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        expect_no_data(data_len)?;
        let mut bhs = begin_emit(out, Opcode::LogoutRequest, 0, 0)?;
        bhs.set_immediate(self.immediate);
        bhs.set_flags(0x80 | self.reason.to_u8());
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, join16(self.cid, 0));
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        Ok(BHS_LEN)
    }
}

/// The response of a Logout Response (byte 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogoutResponseCode {
    /// 0: connection or session closed successfully.
    Closed,
    /// 1: CID not found.
    CidNotFound,
    /// 2: connection recovery is not supported.
    RecoveryNotSupported,
    /// 3: cleanup failed for various reasons.
    CleanupFailed,
    /// Any other value.
    Unknown(u8),
}

impl LogoutResponseCode {
    /// Decode.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => LogoutResponseCode::Closed,
            1 => LogoutResponseCode::CidNotFound,
            2 => LogoutResponseCode::RecoveryNotSupported,
            3 => LogoutResponseCode::CleanupFailed,
            other => LogoutResponseCode::Unknown(other),
        }
    }

    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            LogoutResponseCode::Closed => 0,
            LogoutResponseCode::CidNotFound => 1,
            LogoutResponseCode::RecoveryNotSupported => 2,
            LogoutResponseCode::CleanupFailed => 3,
            LogoutResponseCode::Unknown(v) => v,
        }
    }
}

/// A Logout Response PDU (opcode 0x26).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogoutResponse {
    /// Response.
    pub response: LogoutResponseCode,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait (seconds).
    pub time2wait: u16,
    /// Time2Retain (seconds).
    pub time2retain: u16,
}

impl LogoutResponse {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::LogoutResponse)?;
        expect_no_data(data.len())?;
        let (time2wait, time2retain) = split16(bhs.word(Word::W40));
        Ok(LogoutResponse {
            response: LogoutResponseCode::from_u8(bhs.byte2()),
            itt: bhs.itt(),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            time2wait,
            time2retain,
        })
    }

    /// Header length: BHS only.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN
    }

    /// Write the BHS.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, 0)
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        expect_no_data(data_len)?;
        let mut bhs = begin_emit(out, Opcode::LogoutResponse, 0, 0)?;
        bhs.set_flags(0x80);
        bhs.set_byte2(self.response.to_u8());
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(Word::W40, join16(self.time2wait, self.time2retain));
        Ok(BHS_LEN)
    }
}
