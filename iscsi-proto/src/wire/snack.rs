//! SNACK Request PDU (RFC 7143 11.16).

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_no_data, expect_opcode};
use super::{Error, Opcode};

/// The SNACK type (byte 1, bits 3-0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnackType {
    /// 0: Data/R2T SNACK.
    DataR2t,
    /// 1: Status SNACK.
    Status,
    /// 2: DataACK.
    DataAck,
    /// 3: R-Data SNACK.
    RData,
}

impl SnackType {
    /// Decode the 4-bit type; 4-15 are reserved.
    pub const fn from_u8(v: u8) -> Result<Self, Error> {
        match v & 0x0f {
            0 => Ok(SnackType::DataR2t),
            1 => Ok(SnackType::Status),
            2 => Ok(SnackType::DataAck),
            3 => Ok(SnackType::RData),
            other => Err(Error::ReservedValue {
                field: "Type",
                value: other as u32,
            }),
        }
    }

    /// The 4-bit code.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }
}

/// A SNACK Request PDU (opcode 0x10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Snack {
    /// The SNACK type.
    pub snack_type: SnackType,
    /// LUN (DataACK) or reserved.
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff for Status SNACK).
    pub itt: u32,
    /// Target Transfer Tag (DataACK, R-Data) or SNACK Tag.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength (0 means "all after BegRun").
    pub run_length: u32,
}

impl Snack {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::Snack)?;
        expect_no_data(data.len())?;
        Ok(Snack {
            snack_type: SnackType::from_u8(bhs.flags())?,
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            exp_stat_sn: bhs.word(Word::W28),
            beg_run: bhs.word(Word::W40),
            run_length: bhs.word(Word::W44),
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
        let mut bhs = begin_emit(out, Opcode::Snack, 0, 0)?;
        bhs.set_flags(0x80 | self.snack_type.to_u8());
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        bhs.set_word(Word::W40, self.beg_run);
        bhs.set_word(Word::W44, self.run_length);
        Ok(BHS_LEN)
    }
}
