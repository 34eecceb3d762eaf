//! NOP-Out and NOP-In PDUs (RFC 7143 11.18, 11.19).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_opcode};
use super::{Error, Opcode};

/// A NOP-Out PDU (opcode 0x00): a ping, or the answer to a NOP-In.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopOut<'a> {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// LUN (echoed from the NOP-In it answers).
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff when answering a NOP-In).
    pub itt: u32,
    /// Target Transfer Tag (the NOP-In's, or 0xffffffff).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Ping data.
    pub data: &'a [u8],
}

impl<'a> NopOut<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::NopOut)?;
        Ok(NopOut {
            immediate: bhs.immediate(),
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
        let mut bhs = begin_emit(out, Opcode::NopOut, 0, data_len)?;
        bhs.set_immediate(self.immediate);
        bhs.set_flags(0x80);
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        Ok(BHS_LEN)
    }
}

/// A NOP-In PDU (opcode 0x20): the answer to a ping, or a target ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NopIn<'a> {
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff for a target-initiated ping).
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff when no answer is wanted).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Ping data.
    pub data: &'a [u8],
}

impl<'a> NopIn<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::NopIn)?;
        Ok(NopIn {
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
        let mut bhs = begin_emit(out, Opcode::NopIn, 0, data_len)?;
        bhs.set_flags(0x80);
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        Ok(BHS_LEN)
    }
}
