//! SCSI Command, SCSI Response, SCSI Data-In, SCSI Data-Out and R2T PDUs
//! (RFC 7143 11.3 - 11.8).

use bitflags::bitflags;

use super::ahs::{Ahs, AhsIter, MAX_CDB_LEN};
use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_no_data, expect_opcode};
use super::{Error, Opcode};

bitflags! {
    /// Byte 1 of a SCSI Command (the task attribute, bits 2-0, is [`TaskAttr`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ScsiCommandFlags: u8 {
        /// F: no unsolicited Data-Out follows this command.
        const FINAL = 0x80;
        /// R: the command reads data (Data-In expected).
        const READ = 0x40;
        /// W: the command writes data (Data-Out expected).
        const WRITE = 0x20;
    }
}

/// The task attribute of a SCSI Command (ATTR, byte 1 bits 2-0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskAttr {
    /// 0: Untagged.
    Untagged,
    /// 1: Simple.
    Simple,
    /// 2: Ordered.
    Ordered,
    /// 3: Head of queue.
    HeadOfQueue,
    /// 4: ACA.
    Aca,
}

impl TaskAttr {
    /// Decode the 3-bit code; 5-7 are reserved.
    pub const fn from_u8(v: u8) -> Result<TaskAttr, Error> {
        Ok(match v {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            other => {
                return Err(Error::ReservedValue {
                    field: "ATTR",
                    value: other as u32,
                });
            }
        })
    }

    /// The 3-bit code.
    pub const fn to_u8(self) -> u8 {
        self as u8
    }
}

/// A SCSI Command PDU (opcode 0x01).
///
/// The CDB is split as on the wire: `cdb` holds bytes 0-15 (from the BHS; shorter CDBs are
/// zero-padded), `extended_cdb` the bytes beyond 16 (from an Extended CDB AHS; borrowed
/// from the receive buffer, so the two parts are not contiguous). Use
/// [`ScsiCommand::copy_cdb`] to get one contiguous CDB in a caller buffer of up to
/// [`MAX_CDB_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiCommand<'a> {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F, R and W bits.
    pub flags: ScsiCommandFlags,
    /// Task attribute.
    pub attr: TaskAttr,
    /// Logical unit number (8 bytes, SAM encoding).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length (bytes).
    pub expected_data_transfer_len: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// CDB bytes 0-15.
    pub cdb: [u8; 16],
    /// CDB bytes 16 and up (empty for CDBs of 16 bytes or fewer).
    pub extended_cdb: &'a [u8],
    /// Bidirectional Read Expected Data Transfer Length (AHS type 2), if present.
    pub bidi_read_len: Option<u32>,
    /// Immediate (unsolicited) data.
    pub data: &'a [u8],
}

impl<'a> ScsiCommand<'a> {
    /// Parse from a checked header, its AHS area and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::ScsiCommand)?;
        let mut extended_cdb: &[u8] = &[];
        let mut seen_cdb = false;
        let mut bidi_read_len = None;
        for item in AhsIter::new(ahs) {
            match item? {
                Ahs::ExtendedCdb(ext) if !seen_cdb => {
                    seen_cdb = true;
                    extended_cdb = ext;
                }
                Ahs::BidiReadLength(v) if bidi_read_len.is_none() => bidi_read_len = Some(v),
                _ => return Err(Error::InvalidAhs),
            }
        }
        let flags = bhs.flags();
        Ok(ScsiCommand {
            immediate: bhs.immediate(),
            flags: ScsiCommandFlags::from_bits_truncate(flags),
            attr: TaskAttr::from_u8(flags & 0x07)?,
            lun: bhs.lun(),
            itt: bhs.itt(),
            expected_data_transfer_len: bhs.word(Word::W20),
            cmd_sn: bhs.word(Word::W24),
            exp_stat_sn: bhs.word(Word::W28),
            cdb: bhs.cdb(),
            extended_cdb,
            bidi_read_len,
            data,
        })
    }

    /// Bytes of AHS this command needs.
    pub const fn ahs_len(&self) -> usize {
        let mut n = 0;
        if !self.extended_cdb.is_empty() {
            n += Ahs::ExtendedCdb(self.extended_cdb).buffer_len();
        }
        if self.bidi_read_len.is_some() {
            n += 8;
        }
        n
    }

    /// Header length: BHS + AHS.
    pub const fn buffer_len(&self) -> usize {
        BHS_LEN + self.ahs_len()
    }

    /// The length of the whole CDB: 16, or 16 + the extended part.
    pub const fn cdb_len(&self) -> usize {
        16 + self.extended_cdb.len()
    }

    /// Copy the whole CDB, contiguous, into `out`; returns its length.
    pub fn copy_cdb(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.cdb_len();
        let out = out
            .get_mut(..len)
            .ok_or(Error::BufferTooSmall { required: len })?;
        let (head, tail) = out.split_at_mut(16);
        head.copy_from_slice(&self.cdb);
        tail.copy_from_slice(self.extended_cdb);
        Ok(len)
    }

    /// Set `cdb` and `extended_cdb` from a whole CDB (at most [`MAX_CDB_LEN`] bytes).
    /// CDBs shorter than 16 bytes are zero-padded.
    pub fn set_cdb(&mut self, cdb: &'a [u8]) -> Result<(), Error> {
        if cdb.len() > MAX_CDB_LEN {
            return Err(Error::InvalidField {
                field: "CDB",
                value: u32::try_from(cdb.len()).unwrap_or(u32::MAX),
            });
        }
        let split = cdb.len().min(16);
        let (head, tail) = cdb.split_at(split);
        self.cdb = [0; 16];
        self.cdb[..split].copy_from_slice(head);
        self.extended_cdb = tail;
        Ok(())
    }

    /// Write BHS + AHS; DataSegmentLength is `data.len()`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, self.data.len())
    }

    pub(super) fn emit_with_data_len(
        &self,
        out: &mut [u8],
        data_len: usize,
    ) -> Result<usize, Error> {
        let ahs_len = self.ahs_len();
        let mut bhs = begin_emit(out, Opcode::ScsiCommand, ahs_len, data_len)?;
        bhs.set_immediate(self.immediate);
        bhs.set_flags(self.flags.bits() | self.attr.to_u8());
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.expected_data_transfer_len);
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        bhs.set_cdb(&self.cdb);
        let mut pos = BHS_LEN;
        if !self.extended_cdb.is_empty() {
            pos += Ahs::ExtendedCdb(self.extended_cdb).emit(&mut out[pos..])?;
        }
        if let Some(v) = self.bidi_read_len {
            pos += Ahs::BidiReadLength(v).emit(&mut out[pos..])?;
        }
        Ok(pos)
    }
}

bitflags! {
    /// Residual flags of a SCSI Response (byte 1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ResponseFlags: u8 {
        /// o: bidirectional read residual overflow.
        const BIDI_OVERFLOW = 0x10;
        /// u: bidirectional read residual underflow.
        const BIDI_UNDERFLOW = 0x08;
        /// O: residual overflow.
        const OVERFLOW = 0x04;
        /// U: residual underflow.
        const UNDERFLOW = 0x02;
    }
}

/// The iSCSI service response of a SCSI Response (byte 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScsiResponseCode {
    /// 0x00: Command Completed at Target (the Status byte is valid).
    CommandCompleted,
    /// 0x01: Target Failure.
    TargetFailure,
    /// 0x80-0xff: vendor specific.
    VendorSpecific(u8),
}

impl ScsiResponseCode {
    /// Decode; 0x02-0x7f are reserved.
    pub const fn from_u8(v: u8) -> Result<Self, Error> {
        match v {
            0x00 => Ok(ScsiResponseCode::CommandCompleted),
            0x01 => Ok(ScsiResponseCode::TargetFailure),
            0x80..=0xff => Ok(ScsiResponseCode::VendorSpecific(v)),
            _ => Err(Error::ReservedValue {
                field: "Response",
                value: v as u32,
            }),
        }
    }

    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            ScsiResponseCode::CommandCompleted => 0,
            ScsiResponseCode::TargetFailure => 1,
            ScsiResponseCode::VendorSpecific(v) => v,
        }
    }
}

/// A SCSI Response PDU (opcode 0x21).
///
/// The data segment, when not empty, is a 2-byte SenseLength, the sense data, then any
/// response data: see [`ScsiResponse::sense`] and [`ScsiResponse::encode_sense`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResponse<'a> {
    /// Residual flags.
    pub flags: ResponseFlags,
    /// iSCSI service response.
    pub response: ScsiResponseCode,
    /// SCSI status (valid with [`ScsiResponseCode::CommandCompleted`]).
    pub status: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// SNACK Tag.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
    /// Bidirectional Read Residual Count.
    pub bidi_read_residual: u32,
    /// Residual Count.
    pub residual: u32,
    /// Sense and response data (SenseLength-prefixed).
    pub data: &'a [u8],
}

impl<'a> ScsiResponse<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::ScsiResponse)?;
        let flags = ResponseFlags::from_bits_truncate(bhs.flags());
        check_exclusive(
            flags,
            ResponseFlags::OVERFLOW,
            ResponseFlags::UNDERFLOW,
            bhs.flags(),
        )?;
        check_exclusive(
            flags,
            ResponseFlags::BIDI_OVERFLOW,
            ResponseFlags::BIDI_UNDERFLOW,
            bhs.flags(),
        )?;
        Ok(ScsiResponse {
            flags,
            response: ScsiResponseCode::from_u8(bhs.byte2())?,
            status: bhs.byte3(),
            itt: bhs.itt(),
            snack_tag: bhs.word(Word::W20),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            exp_data_sn: bhs.word(Word::W36),
            bidi_read_residual: bhs.word(Word::W40),
            residual: bhs.word(Word::W44),
            data,
        })
    }

    /// The sense data inside the data segment (empty when there is none).
    pub fn sense(&self) -> Result<&'a [u8], Error> {
        let data: &'a [u8] = self.data;
        let [h, l, rest @ ..] = data else {
            return if data.is_empty() {
                Ok(&[])
            } else {
                Err(Error::InvalidField {
                    field: "SenseLength",
                    value: 0,
                })
            };
        };
        let len = usize::from(u16::from_be_bytes([*h, *l]));
        rest.get(..len).ok_or(Error::InvalidField {
            field: "SenseLength",
            value: len as u32,
        })
    }

    /// Write a data segment holding `sense` (SenseLength + sense data) into `out`;
    /// returns its length.
    pub fn encode_sense(sense: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let slen = u16::try_from(sense.len()).map_err(|_| Error::InvalidField {
            field: "SenseLength",
            value: u32::try_from(sense.len()).unwrap_or(u32::MAX),
        })?;
        let total = 2 + sense.len();
        let out = out
            .get_mut(..total)
            .ok_or(Error::BufferTooSmall { required: total })?;
        out[..2].copy_from_slice(&slen.to_be_bytes());
        out[2..].copy_from_slice(sense);
        Ok(total)
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
        let mut bhs = begin_emit(out, Opcode::ScsiResponse, 0, data_len)?;
        bhs.set_flags(0x80 | self.flags.bits());
        bhs.set_byte2(self.response.to_u8());
        bhs.set_byte3(self.status);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.snack_tag);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(Word::W36, self.exp_data_sn);
        bhs.set_word(Word::W40, self.bidi_read_residual);
        bhs.set_word(Word::W44, self.residual);
        Ok(BHS_LEN)
    }
}

fn check_exclusive<F: bitflags::Flags + Copy>(flags: F, a: F, b: F, raw: u8) -> Result<(), Error> {
    if flags.contains(a) && flags.contains(b) {
        Err(Error::InvalidField {
            field: "Flags",
            value: u32::from(raw),
        })
    } else {
        Ok(())
    }
}

bitflags! {
    /// Byte 1 of a SCSI Data-In.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DataInFlags: u8 {
        /// F: last Data-In of the sequence (or of the command).
        const FINAL = 0x80;
        /// A: the initiator must acknowledge with a DataACK SNACK (ERL > 0).
        const ACK = 0x40;
        /// O: residual overflow (with S).
        const OVERFLOW = 0x04;
        /// U: residual underflow (with S).
        const UNDERFLOW = 0x02;
        /// S: this PDU carries the command's status (requires F).
        const STATUS = 0x01;
    }
}

/// A SCSI Data-In PDU (opcode 0x25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataIn<'a> {
    /// F, A, O, U, S bits.
    pub flags: DataInFlags,
    /// SCSI status; meaningful only with [`DataInFlags::STATUS`] (otherwise it is a
    /// reserved byte: emitted and parsed as 0).
    pub status: u8,
    /// LUN (required with the A bit).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff unless A is set).
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset of this data in the command's read buffer.
    pub buffer_offset: u32,
    /// Residual Count.
    pub residual: u32,
    /// The payload.
    pub data: &'a [u8],
}

impl<'a> DataIn<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::DataIn)?;
        let flags = DataInFlags::from_bits_truncate(bhs.flags());
        if flags.contains(DataInFlags::STATUS) && !flags.contains(DataInFlags::FINAL) {
            return Err(Error::InvalidField {
                field: "Flags",
                value: u32::from(bhs.flags()),
            });
        }
        check_exclusive(
            flags,
            DataInFlags::OVERFLOW,
            DataInFlags::UNDERFLOW,
            bhs.flags(),
        )?;
        Ok(DataIn {
            flags,
            status: if flags.contains(DataInFlags::STATUS) {
                bhs.byte3()
            } else {
                0
            },
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            data_sn: bhs.word(Word::W36),
            buffer_offset: bhs.word(Word::W40),
            residual: bhs.word(Word::W44),
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
        let mut bhs = begin_emit(out, Opcode::DataIn, 0, data_len)?;
        bhs.set_flags(self.flags.bits());
        if self.flags.contains(DataInFlags::STATUS) {
            bhs.set_byte3(self.status);
        }
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(Word::W36, self.data_sn);
        bhs.set_word(Word::W40, self.buffer_offset);
        bhs.set_word(Word::W44, self.residual);
        Ok(BHS_LEN)
    }
}

/// A SCSI Data-Out PDU (opcode 0x05).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOut<'a> {
    /// F bit: last Data-Out of the sequence.
    pub final_bit: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (from the R2T, or 0xffffffff for unsolicited data).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset of this data in the command's write buffer.
    pub buffer_offset: u32,
    /// The payload.
    pub data: &'a [u8],
}

impl<'a> DataOut<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::DataOut)?;
        Ok(DataOut {
            final_bit: bhs.final_bit(),
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            exp_stat_sn: bhs.word(Word::W28),
            data_sn: bhs.word(Word::W36),
            buffer_offset: bhs.word(Word::W40),
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
        let mut bhs = begin_emit(out, Opcode::DataOut, 0, data_len)?;
        bhs.set_flags(if self.final_bit { 0x80 } else { 0 });
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        bhs.set_word(Word::W36, self.data_sn);
        bhs.set_word(Word::W40, self.buffer_offset);
        Ok(BHS_LEN)
    }
}

/// A Ready To Transfer PDU (opcode 0x31).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct R2t {
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag the initiator echoes in its Data-Out.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset of the requested data.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length.
    pub desired_len: u32,
}

impl R2t {
    /// Parse from a checked header; the data segment must be empty.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>, _ahs: &[u8], data: &[u8]) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::R2t)?;
        expect_no_data(data.len())?;
        Ok(R2t {
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.word(Word::W20),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            r2t_sn: bhs.word(Word::W36),
            buffer_offset: bhs.word(Word::W40),
            desired_len: bhs.word(Word::W44),
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
        let mut bhs = begin_emit(out, Opcode::R2t, 0, 0)?;
        bhs.set_flags(0x80);
        bhs.set_lun(self.lun);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, self.ttt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(Word::W36, self.r2t_sn);
        bhs.set_word(Word::W40, self.buffer_offset);
        bhs.set_word(Word::W44, self.desired_len);
        Ok(BHS_LEN)
    }
}
