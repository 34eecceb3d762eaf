//! Text Request and Text Response PDUs (RFC 7143 11.10, 11.11). The `key=value` payload is
//! parsed by [`crate::text`].

use bitflags::bitflags;

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_opcode};
use super::{Error, Opcode};

bitflags! {
    /// Byte 1 of Text Request / Response.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct TextFlags: u8 {
        /// F: the last PDU of the text exchange.
        const FINAL = 0x80;
        /// C: the text continues in the next PDU (exclusive with F).
        const CONTINUE = 0x40;
    }
}

fn parse_flags(raw: u8) -> Result<TextFlags, Error> {
    let flags = TextFlags::from_bits_truncate(raw);
    if flags.contains(TextFlags::FINAL | TextFlags::CONTINUE) {
        Err(Error::InvalidField {
            field: "F/C",
            value: u32::from(raw),
        })
    } else {
        Ok(flags)
    }
}

/// A Text Request PDU (opcode 0x04).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRequest<'a> {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F and C bits.
    pub flags: TextFlags,
    /// LUN (or reserved).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff to start an exchange).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text `key=value\0` data.
    pub data: &'a [u8],
}

impl<'a> TextRequest<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::TextRequest)?;
        Ok(TextRequest {
            immediate: bhs.immediate(),
            flags: parse_flags(bhs.flags())?,
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            cmd_sn: bhs.word(Word::W24),
            exp_stat_sn: bhs.word(Word::W28),
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
        let flags = parse_flags(self.flags.bits())?;
        let mut bhs = begin_emit(out, Opcode::TextRequest, 0, data_len)?;
        bhs.set_immediate(self.immediate);
        bhs.set_flags(flags.bits());
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        Ok(BHS_LEN)
    }
}

/// A Text Response PDU (opcode 0x24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextResponse<'a> {
    /// F and C bits.
    pub flags: TextFlags,
    /// LUN (or reserved).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff when F is set).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Text `key=value\0` data.
    pub data: &'a [u8],
}

impl<'a> TextResponse<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::TextResponse)?;
        Ok(TextResponse {
            flags: parse_flags(bhs.flags())?,
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
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
        let flags = parse_flags(self.flags.bits())?;
        let mut bhs = begin_emit(out, Opcode::TextResponse, 0, data_len)?;
        bhs.set_flags(flags.bits());
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        Ok(BHS_LEN)
    }
}
