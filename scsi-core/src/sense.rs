//! Sense data: sense keys, additional sense codes and the fixed (0x70) and descriptor (0x72)
//! formats of SPC-4 4.5.
//!
//! A [`SenseData`] is a small fixed buffer (no allocation) holding one encoded sense record.
//! Which format is produced follows the D_SENSE bit of the control mode page (the logical
//! unit decides; see [`crate::LogicalUnit`]).

use core::fmt;

/// Sense key (SPC-4 table 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// NO SENSE.
    NoSense = 0x0,
    /// RECOVERED ERROR.
    RecoveredError = 0x1,
    /// NOT READY.
    NotReady = 0x2,
    /// MEDIUM ERROR.
    MediumError = 0x3,
    /// HARDWARE ERROR.
    HardwareError = 0x4,
    /// ILLEGAL REQUEST.
    IllegalRequest = 0x5,
    /// UNIT ATTENTION.
    UnitAttention = 0x6,
    /// DATA PROTECT.
    DataProtect = 0x7,
    /// BLANK CHECK.
    BlankCheck = 0x8,
    /// VENDOR SPECIFIC.
    VendorSpecific = 0x9,
    /// COPY ABORTED.
    CopyAborted = 0xA,
    /// ABORTED COMMAND.
    AbortedCommand = 0xB,
    /// VOLUME OVERFLOW.
    VolumeOverflow = 0xD,
    /// MISCOMPARE.
    Miscompare = 0xE,
    /// COMPLETED.
    Completed = 0xF,
}

impl SenseKey {
    /// The sense key for a 4-bit code (reserved 0xC maps to `NoSense`).
    pub const fn from_u8(v: u8) -> SenseKey {
        match v & 0x0F {
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xA => SenseKey::CopyAborted,
            0xB => SenseKey::AbortedCommand,
            0xD => SenseKey::VolumeOverflow,
            0xE => SenseKey::Miscompare,
            0xF => SenseKey::Completed,
            _ => SenseKey::NoSense,
        }
    }
}

/// An additional sense code and qualifier pair (ASC in the high byte, ASCQ in the low byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asc(pub u16);

impl Asc {
    /// The additional sense code.
    pub const fn asc(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// The additional sense code qualifier.
    pub const fn ascq(self) -> u8 {
        self.0 as u8
    }

    /// NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x0000);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc(0x0400);
    /// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
    pub const SANITIZE_IN_PROGRESS: Asc = Asc(0x041B);
    /// SANITIZE COMMAND FAILED.
    pub const SANITIZE_COMMAND_FAILED: Asc = Asc(0x3103);
    /// WRITE ERROR.
    pub const WRITE_ERROR: Asc = Asc(0x0C00);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x1100);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x2000);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x2100);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x2400);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x2500);
    /// UNREACHABLE COPY TARGET.
    pub const UNREACHABLE_COPY_TARGET: Asc = Asc(0x0804);
    /// COPY TARGET DEVICE NOT REACHABLE.
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: Asc = Asc(0x0D02);
    /// TOO MANY TARGET DESCRIPTORS.
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x2606);
    /// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x2607);
    /// TOO MANY SEGMENT DESCRIPTORS.
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x2608);
    /// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x2609);
    /// OPERATION IN PROGRESS.
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x0016);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x2600);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: Asc = Asc(0x2700);
    /// SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOCATION_FAILED: Asc = Asc(0x2707);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Asc = Asc(0x2900);
    /// BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    pub const BUS_DEVICE_RESET: Asc = Asc(0x2903);
    /// I_T NEXUS LOSS OCCURRED.
    pub const I_T_NEXUS_LOSS: Asc = Asc(0x2907);
    /// MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A01);
    /// CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2A09);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A05);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc(0x2604);
    /// INSUFFICIENT REGISTRATION RESOURCES.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x5504);
    /// COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2F00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x3900);
    /// MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3A00);
    /// MEDIUM NOT PRESENT - TRAY OPEN.
    pub const MEDIUM_NOT_PRESENT_TRAY_OPEN: Asc = Asc(0x3A02);
    /// INQUIRY DATA HAS CHANGED.
    pub const INQUIRY_DATA_HAS_CHANGED: Asc = Asc(0x3F03);
    /// REPORTED LUNS DATA HAS CHANGED.
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3F0E);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x4400);
    /// MEDIUM REMOVAL PREVENTED.
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x5302);
    /// INVALID FIELD IN COMMAND INFORMATION UNIT.
    pub const INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT: Asc = Asc(0x0E03);
}

/// Sense-key-specific field pointer (SPC-4 4.5.2.4.2): which byte (and optionally bit) of
/// the CDB (`cdb == true`) or of the parameter list is in error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// The error is in the CDB (C/D = 1) rather than in the parameter data.
    pub cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit (0..=7) of the most significant bit of the field, if meaningful.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// A pointer into the CDB.
    pub const fn cdb(byte: u16, bit: Option<u8>) -> FieldPointer {
        FieldPointer {
            cdb: true,
            byte,
            bit,
        }
    }
    /// A pointer into the parameter list.
    pub const fn param(byte: u16, bit: Option<u8>) -> FieldPointer {
        FieldPointer {
            cdb: false,
            byte,
            bit,
        }
    }
    /// The three sense-key-specific bytes (SKSV set).
    pub const fn to_bytes(self) -> [u8; 3] {
        let mut b0 = 0x80u8;
        if self.cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        [b0, (self.byte >> 8) as u8, self.byte as u8]
    }
}

/// The logical content of one sense record, before it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code and qualifier.
    pub asc: Asc,
    /// INFORMATION field (e.g. the miscompare offset), if valid.
    pub info: Option<u64>,
    /// Sense-key-specific bytes (field pointer, progress indication), if valid.
    pub sks: Option<[u8; 3]>,
}

impl Sense {
    /// A sense record with a key and code and nothing else.
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            info: None,
            sks: None,
        }
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte`/`bit` of the CDB.
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            info: None,
            sks: Some(FieldPointer::cdb(byte, bit).to_bytes()),
        }
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte`/`bit`.
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            sks: Some(FieldPointer::param(byte, bit).to_bytes()),
        }
    }
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (pointer at CDB byte 0).
    pub const fn invalid_opcode() -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_COMMAND_OPERATION_CODE,
            info: None,
            sks: Some(FieldPointer::cdb(0, None).to_bytes()),
        }
    }
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE)
    }
    /// Builder: set the INFORMATION field.
    pub const fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }
    /// Encode into the fixed (0x70) or descriptor (0x72) format.
    pub fn encode(&self, descriptor: bool) -> SenseData {
        let mut d = SenseData {
            buf: [0; SenseData::CAPACITY],
            len: 0,
        };
        if descriptor {
            d.buf[0] = 0x72;
            d.buf[1] = self.key as u8;
            d.buf[2] = self.asc.asc();
            d.buf[3] = self.asc.ascq();
            let mut p = 8usize;
            if let Some(info) = self.info {
                d.buf[p] = 0x00;
                d.buf[p + 1] = 0x0A;
                d.buf[p + 2] = 0x80;
                d.buf[p + 4..p + 12].copy_from_slice(&info.to_be_bytes());
                p += 12;
            }
            if let Some(sks) = self.sks {
                d.buf[p] = 0x02;
                d.buf[p + 1] = 0x06;
                d.buf[p + 4..p + 7].copy_from_slice(&sks);
                p += 8;
            }
            d.buf[7] = (p - 8) as u8;
            d.len = p as u8;
        } else {
            d.buf[0] = 0x70;
            d.buf[2] = self.key as u8;
            if let Some(info) = self.info {
                d.buf[0] |= 0x80;
                // The fixed format holds 32 bits; larger values saturate (SPC-4 4.5.3).
                let v = u32::try_from(info).unwrap_or(u32::MAX);
                d.buf[3..7].copy_from_slice(&v.to_be_bytes());
            }
            d.buf[7] = 10;
            d.buf[12] = self.asc.asc();
            d.buf[13] = self.asc.ascq();
            if let Some(sks) = self.sks {
                d.buf[15..18].copy_from_slice(&sks);
            }
            d.len = 18;
        }
        d
    }
}

/// One encoded sense record in a fixed buffer (at most [`SenseData::CAPACITY`] bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseData {
    buf: [u8; SenseData::CAPACITY],
    len: u8,
}

impl SenseData {
    /// Largest encoded record: descriptor header (8) + information (12) + SKS (8).
    pub const CAPACITY: usize = 28;

    /// The encoded bytes (what goes in the iSCSI SCSI Response after the 2-byte length).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
    /// Whether this record is in descriptor format.
    pub fn is_descriptor(&self) -> bool {
        self.buf[0] & 0x7F == 0x72
    }
    /// The sense key.
    pub fn key(&self) -> SenseKey {
        if self.is_descriptor() {
            SenseKey::from_u8(self.buf[1])
        } else {
            SenseKey::from_u8(self.buf[2])
        }
    }
    /// The additional sense code and qualifier.
    pub fn asc(&self) -> Asc {
        if self.is_descriptor() {
            Asc(u16::from_be_bytes([self.buf[2], self.buf[3]]))
        } else {
            Asc(u16::from_be_bytes([self.buf[12], self.buf[13]]))
        }
    }
    /// The INFORMATION field, if marked valid.
    pub fn information(&self) -> Option<u64> {
        if self.is_descriptor() {
            self.descriptor(0x00).map(|d| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[4..12]);
                u64::from_be_bytes(b)
            })
        } else if self.buf[0] & 0x80 != 0 {
            Some(u64::from(u32::from_be_bytes([
                self.buf[3],
                self.buf[4],
                self.buf[5],
                self.buf[6],
            ])))
        } else {
            None
        }
    }
    /// The three sense-key-specific bytes, if SKSV is set.
    pub fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let b = if self.is_descriptor() {
            let d = self.descriptor(0x02)?;
            [d[4], d[5], d[6]]
        } else {
            [self.buf[15], self.buf[16], self.buf[17]]
        };
        if b[0] & 0x80 != 0 { Some(b) } else { None }
    }

    fn descriptor(&self, kind: u8) -> Option<&[u8]> {
        let mut p = 8usize;
        let end = usize::from(self.len);
        while p + 2 <= end {
            let l = usize::from(self.buf[p + 1]) + 2;
            if p + l > end {
                return None;
            }
            if self.buf[p] == kind {
                return Some(&self.buf[p..p + l]);
            }
            p += l;
        }
        None
    }
}

impl fmt::Debug for SenseData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenseData")
            .field("key", &self.key())
            .field("asc", &format_args!("{:04x}", self.asc().0))
            .field("info", &self.information())
            .field("sks", &self.sense_key_specific())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_invalid_field() {
        let s = Sense::invalid_cdb(2, Some(7)).encode(false);
        assert_eq!(
            s.as_bytes(),
            &[
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCF, 0x00, 0x02
            ]
        );
        assert_eq!(s.key(), SenseKey::IllegalRequest);
        assert_eq!(s.asc(), Asc::INVALID_FIELD_IN_CDB);
        assert_eq!(s.sense_key_specific(), Some([0xCF, 0, 2]));
        assert_eq!(s.information(), None);
    }

    #[test]
    fn descriptor_format_with_info_and_sks() {
        let s = Sense::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
            .with_info(0x1234)
            .encode(true);
        assert_eq!(
            s.as_bytes(),
            &[
                0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 12, 0x00, 0x0A, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12,
                0x34
            ]
        );
        assert_eq!(s.information(), Some(0x1234));
        let s = Sense::invalid_param(300, None).encode(true);
        assert_eq!(
            s.as_bytes(),
            &[
                0x72, 5, 0x26, 0, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0x80, 0x01, 0x2C, 0
            ]
        );
        assert_eq!(s.sense_key_specific(), Some([0x80, 1, 0x2C]));
    }

    #[test]
    fn fixed_info_saturates() {
        let s = Sense::lba_out_of_range()
            .with_info(0x1_0000_0000)
            .encode(false);
        assert_eq!(&s.as_bytes()[..7], &[0xF0, 0, 5, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(s.information(), Some(0xFFFF_FFFF));
    }
}
