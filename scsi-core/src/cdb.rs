//! Operation codes and big-endian field access on a zero-padded CDB copy.

/// Operation codes handled by the SBC emulation.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT (6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE (6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW: u8 = 0x1E;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY (10).
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    /// VERIFY (10).
    pub const VERIFY_10: u8 = 0x2F;
    /// PRE-FETCH (10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNC_CACHE_10: u8 = 0x35;
    /// READ DEFECT DATA (10).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// WRITE SAME (10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// SANITIZE.
    pub const SANITIZE: u8 = 0x48;
    /// MODE SELECT (10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE (10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// EXTENDED COPY (LID1).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS.
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8A;
    /// ORWRITE (16).
    pub const ORWRITE_16: u8 = 0x8B;
    /// WRITE AND VERIFY (16).
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    /// VERIFY (16).
    pub const VERIFY_16: u8 = 0x8F;
    /// PRE-FETCH (16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE (16).
    pub const SYNC_CACHE_16: u8 = 0x91;
    /// WRITE ATOMIC (16).
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    /// WRITE SAME (16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN (16): READ CAPACITY (16), GET LBA STATUS.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// READ (12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE (12).
    pub const WRITE_12: u8 = 0xAA;
    /// WRITE AND VERIFY (12).
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    /// VERIFY (12).
    pub const VERIFY_12: u8 = 0xAF;
    /// READ DEFECT DATA (12).
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    /// RESERVE (6).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE (6).
    pub const RELEASE_6: u8 = 0x17;
    /// RESERVE (10).
    pub const RESERVE_10: u8 = 0x56;
    /// RELEASE (10).
    pub const RELEASE_10: u8 = 0x57;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// MAINTENANCE IN (REPORT SUPPORTED OPERATION CODES, ...).
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// MAINTENANCE IN REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    /// MAINTENANCE IN REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
    pub const SA_REPORT_SUPPORTED_TMFS: u8 = 0x0D;
    /// SERVICE ACTION IN (16) READ CAPACITY (16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN (16) GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
}

/// Longest CDB kept by a task (longer CDBs are rejected with INVALID FIELD IN CDB).
pub const CDB_MAX: usize = 32;

/// The CDB length implied by the group code of an operation code.
pub const fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 10,
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Cdb(pub(crate) [u8; CDB_MAX]);

impl Cdb {
    pub(crate) fn b(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    pub(crate) fn u16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.b(i), self.b(i + 1)])
    }
    pub(crate) fn u24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.b(i), self.b(i + 1), self.b(i + 2)])
    }
    pub(crate) fn u32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.b(i), self.b(i + 1), self.b(i + 2), self.b(i + 3)])
    }
    pub(crate) fn u64(&self, i: usize) -> u64 {
        (u64::from(self.u32(i)) << 32) | u64::from(self.u32(i + 4))
    }
    pub(crate) fn opcode(&self) -> u8 {
        self.0[0]
    }
}

/// Where LBA and transfer length live in a block-addressed CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RwLayout {
    pub(crate) lba: u64,
    pub(crate) blocks: u64,
    /// CDB byte of the transfer length field (for field pointers).
    pub(crate) len_byte: u16,
}

/// LBA/length of READ/WRITE/VERIFY/... in their 6/10/12/16-byte forms.
pub(crate) fn rw_layout(c: &Cdb) -> Option<RwLayout> {
    use op::*;
    let o = c.opcode();
    Some(match o {
        READ_6 | WRITE_6 => {
            let n = u64::from(c.b(4));
            RwLayout {
                lba: u64::from(c.u24(1) & 0x1F_FFFF),
                blocks: if n == 0 { 256 } else { n },
                len_byte: 4,
            }
        }
        READ_10 | WRITE_10 | WRITE_VERIFY_10 | VERIFY_10 | PRE_FETCH_10 | SYNC_CACHE_10
        | WRITE_SAME_10 => RwLayout {
            lba: u64::from(c.u32(2)),
            blocks: u64::from(c.u16(7)),
            len_byte: 7,
        },
        READ_12 | WRITE_12 | WRITE_VERIFY_12 | VERIFY_12 => RwLayout {
            lba: u64::from(c.u32(2)),
            blocks: u64::from(c.u32(6)),
            len_byte: 6,
        },
        READ_16 | WRITE_16 | WRITE_VERIFY_16 | VERIFY_16 | PRE_FETCH_16 | SYNC_CACHE_16
        | WRITE_SAME_16 | ORWRITE_16 => RwLayout {
            lba: c.u64(2),
            blocks: u64::from(c.u32(10)),
            len_byte: 10,
        },
        WRITE_ATOMIC_16 => RwLayout {
            lba: c.u64(2),
            blocks: u64::from(c.u16(12)),
            len_byte: 12,
        },
        COMPARE_AND_WRITE => RwLayout {
            lba: c.u64(2),
            blocks: u64::from(c.b(13)),
            len_byte: 13,
        },
        _ => return None,
    })
}

/// Whether the operation modifies the medium (for overlap ordering).
pub(crate) fn writes_medium(opcode: u8) -> bool {
    use op::*;
    matches!(
        opcode,
        WRITE_6
            | WRITE_10
            | WRITE_12
            | WRITE_16
            | WRITE_VERIFY_10
            | WRITE_VERIFY_12
            | WRITE_VERIFY_16
            | WRITE_SAME_10
            | WRITE_SAME_16
            | ORWRITE_16
            | COMPARE_AND_WRITE
            | WRITE_ATOMIC_16
            | UNMAP
    )
}
