//! Asynchronous Message PDU (RFC 7143 11.9).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_opcode, join16, split16};
use super::{Error, Opcode, RESERVED_TAG};

/// AsyncEvent codes (byte 36).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AsyncEvent {
    /// 0: a SCSI asynchronous event (sense data in the data segment).
    ScsiEvent,
    /// 1: the target requests a logout (Parameter3: seconds to wait).
    LogoutRequested,
    /// 2: the target will drop the connection (Parameter1: CID).
    DropConnection,
    /// 3: the target will drop all connections of the session.
    DropAllConnections,
    /// 4: the target requests parameter negotiation.
    NegotiationRequested,
    /// 255: vendor-specific event.
    VendorSpecific,
    /// Any other value.
    Unknown(u8),
}

impl AsyncEvent {
    /// Decode.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => AsyncEvent::ScsiEvent,
            1 => AsyncEvent::LogoutRequested,
            2 => AsyncEvent::DropConnection,
            3 => AsyncEvent::DropAllConnections,
            4 => AsyncEvent::NegotiationRequested,
            255 => AsyncEvent::VendorSpecific,
            other => AsyncEvent::Unknown(other),
        }
    }

    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            AsyncEvent::ScsiEvent => 0,
            AsyncEvent::LogoutRequested => 1,
            AsyncEvent::DropConnection => 2,
            AsyncEvent::DropAllConnections => 3,
            AsyncEvent::NegotiationRequested => 4,
            AsyncEvent::VendorSpecific => 255,
            AsyncEvent::Unknown(v) => v,
        }
    }
}

/// An Asynchronous Message PDU (opcode 0x32). Its ITT is always 0xffffffff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncMessage<'a> {
    /// LUN (for SCSI events).
    pub lun: u64,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent.
    pub event: AsyncEvent,
    /// AsyncVCode (vendor code).
    pub vcode: u8,
    /// Parameter1.
    pub parameter1: u16,
    /// Parameter2.
    pub parameter2: u16,
    /// Parameter3.
    pub parameter3: u16,
    /// Sense data and iSCSI event data.
    pub data: &'a [u8],
}

impl<'a> AsyncMessage<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::AsyncMessage)?;
        let [event, vcode, p1a, p1b] = bhs.word(Word::W36).to_be_bytes();
        let (parameter2, parameter3) = split16(bhs.word(Word::W40));
        Ok(AsyncMessage {
            lun: bhs.lun(),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            event: AsyncEvent::from_u8(event),
            vcode,
            parameter1: u16::from_be_bytes([p1a, p1b]),
            parameter2,
            parameter3,
            data,
        })
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
        let mut bhs = begin_emit(out, Opcode::AsyncMessage, 0, data_len)?;
        bhs.set_flags(0x80);
        bhs.set_lun(self.lun);
        bhs.set_itt(RESERVED_TAG);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        let [p1a, p1b] = self.parameter1.to_be_bytes();
        bhs.set_word(
            Word::W36,
            u32::from_be_bytes([self.event.to_u8(), self.vcode, p1a, p1b]),
        );
        bhs.set_word(Word::W40, join16(self.parameter2, self.parameter3));
        Ok(BHS_LEN)
    }
}
