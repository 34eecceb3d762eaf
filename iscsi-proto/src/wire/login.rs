//! Login Request and Login Response PDUs (RFC 7143 11.12, 11.13).
//!
//! The T (transit) bit is modelled as `nsg: Option<Stage>`: `Some(next)` when T is set,
//! `None` when it is clear (the NSG field is then reserved and ignored).

use bitflags::bitflags;

use super::bhs::{BHS_LEN, Bhs, Word, begin_emit, expect_opcode, join16, split16};
use super::{Error, Opcode};

bitflags! {
    /// Byte 1 of Login Request / Response: T, C, CSG (bits 3-2), NSG (bits 1-0).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct LoginFlags: u8 {
        /// T: the sender is ready to transit to the next stage.
        const TRANSIT = 0x80;
        /// C: the text in this PDU continues in the next one.
        const CONTINUE = 0x40;
        /// Mask of the Current Stage field.
        const CSG_MASK = 0x0c;
        /// Mask of the Next Stage field.
        const NSG_MASK = 0x03;
    }
}

impl LoginFlags {
    /// The raw CSG code.
    pub const fn csg(self) -> u8 {
        (self.bits() & Self::CSG_MASK.bits()) >> 2
    }

    /// The raw NSG code.
    pub const fn nsg(self) -> u8 {
        self.bits() & Self::NSG_MASK.bits()
    }
}

/// A login stage (CSG / NSG).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// 0: SecurityNegotiation.
    SecurityNegotiation,
    /// 1: LoginOperationalNegotiation.
    LoginOperational,
    /// 3: FullFeaturePhase.
    FullFeature,
}

impl Stage {
    /// Decode a 2-bit stage code; 2 is reserved.
    pub const fn from_u8(v: u8, field: &'static str) -> Result<Stage, Error> {
        match v {
            0 => Ok(Stage::SecurityNegotiation),
            1 => Ok(Stage::LoginOperational),
            3 => Ok(Stage::FullFeature),
            other => Err(Error::ReservedValue {
                field,
                value: other as u32,
            }),
        }
    }

    /// The 2-bit code.
    pub const fn to_u8(self) -> u8 {
        match self {
            Stage::SecurityNegotiation => 0,
            Stage::LoginOperational => 1,
            Stage::FullFeature => 3,
        }
    }
}

fn parse_stages(raw: u8) -> Result<(bool, Stage, Option<Stage>), Error> {
    let flags = LoginFlags::from_bits_retain(raw);
    let transit = flags.contains(LoginFlags::TRANSIT);
    let cont = flags.contains(LoginFlags::CONTINUE);
    if transit && cont {
        return Err(Error::InvalidField {
            field: "T/C",
            value: u32::from(raw),
        });
    }
    let csg = Stage::from_u8(flags.csg(), "CSG")?;
    let nsg = if transit {
        Some(Stage::from_u8(flags.nsg(), "NSG")?)
    } else {
        None
    };
    Ok((cont, csg, nsg))
}

fn stage_byte(cont: bool, csg: Stage, nsg: Option<Stage>) -> Result<u8, Error> {
    let mut b = csg.to_u8() << 2;
    if cont {
        b |= LoginFlags::CONTINUE.bits();
    }
    if let Some(nsg) = nsg {
        if cont {
            return Err(Error::InvalidField {
                field: "T/C",
                value: u32::from(b | 0x80),
            });
        }
        b |= LoginFlags::TRANSIT.bits() | nsg.to_u8();
    }
    Ok(b)
}

/// A Login Request PDU (opcode 0x03, always sent with the I bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRequest<'a> {
    /// C: the text continues in the next Login Request.
    pub cont: bool,
    /// CSG: the current stage.
    pub csg: Stage,
    /// NSG when T is set; `None` when T is clear.
    pub nsg: Option<Stage>,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID (6 bytes).
    pub isid: [u8; 6],
    /// TSIH (0 for a new session).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text `key=value\0` data.
    pub data: &'a [u8],
}

impl<'a> LoginRequest<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::LoginRequest)?;
        let (cont, csg, nsg) = parse_stages(bhs.flags())?;
        Ok(LoginRequest {
            cont,
            csg,
            nsg,
            version_max: bhs.byte2(),
            version_min: bhs.byte3(),
            isid: bhs.isid(),
            tsih: bhs.tsih(),
            itt: bhs.itt(),
            cid: split16(bhs.word(Word::W20)).0,
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
        let flags = stage_byte(self.cont, self.csg, self.nsg)?;
        let mut bhs = begin_emit(out, Opcode::LoginRequest, 0, data_len)?;
        bhs.set_immediate(true);
        bhs.set_flags(flags);
        bhs.set_byte2(self.version_max);
        bhs.set_byte3(self.version_min);
        bhs.set_isid_tsih(self.isid, self.tsih);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W20, join16(self.cid, 0));
        bhs.set_word(Word::W24, self.cmd_sn);
        bhs.set_word(Word::W28, self.exp_stat_sn);
        Ok(BHS_LEN)
    }
}

/// Login Response Status-Class and Status-Detail (RFC 7143 11.13.5).
///
/// Any class/detail pair parses (the RFC lets the table grow); the named constants are the
/// RFC's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub class: u8,
    /// Status-Detail.
    pub detail: u8,
}

impl LoginStatus {
    /// 0x0000 Success.
    pub const SUCCESS: Self = Self::new(0x00, 0x00);
    /// 0x0101 Target moved temporarily.
    pub const TARGET_MOVED_TEMPORARILY: Self = Self::new(0x01, 0x01);
    /// 0x0102 Target moved permanently.
    pub const TARGET_MOVED_PERMANENTLY: Self = Self::new(0x01, 0x02);
    /// 0x0200 Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: Self = Self::new(0x02, 0x00);
    /// 0x0201 Authentication failure.
    pub const AUTHENTICATION_FAILURE: Self = Self::new(0x02, 0x01);
    /// 0x0202 Authorization failure.
    pub const AUTHORIZATION_FAILURE: Self = Self::new(0x02, 0x02);
    /// 0x0203 Target not found.
    pub const NOT_FOUND: Self = Self::new(0x02, 0x03);
    /// 0x0204 Target removed.
    pub const TARGET_REMOVED: Self = Self::new(0x02, 0x04);
    /// 0x0205 Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self::new(0x02, 0x05);
    /// 0x0206 Too many connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self::new(0x02, 0x06);
    /// 0x0207 Missing parameter.
    pub const MISSING_PARAMETER: Self = Self::new(0x02, 0x07);
    /// 0x0208 Can't include in session.
    pub const CANT_INCLUDE_IN_SESSION: Self = Self::new(0x02, 0x08);
    /// 0x0209 Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(0x02, 0x09);
    /// 0x020a Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: Self = Self::new(0x02, 0x0a);
    /// 0x020b Invalid request during login.
    pub const INVALID_DURING_LOGIN: Self = Self::new(0x02, 0x0b);
    /// 0x0300 Target error (miscellaneous).
    pub const TARGET_ERROR: Self = Self::new(0x03, 0x00);
    /// 0x0301 Service unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self::new(0x03, 0x01);
    /// 0x0302 Out of resources.
    pub const OUT_OF_RESOURCES: Self = Self::new(0x03, 0x02);

    /// A status from its class and detail.
    pub const fn new(class: u8, detail: u8) -> Self {
        LoginStatus { class, detail }
    }

    /// Whether the login step succeeded (class 0).
    pub const fn is_success(self) -> bool {
        self.class == 0
    }
}

/// A Login Response PDU (opcode 0x23).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginResponse<'a> {
    /// C: the text continues in the next Login Response.
    pub cont: bool,
    /// CSG: the current stage.
    pub csg: Stage,
    /// NSG when T is set; `None` when T is clear.
    pub nsg: Option<Stage>,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID (6 bytes).
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class and Status-Detail.
    pub status: LoginStatus,
    /// Text `key=value\0` data.
    pub data: &'a [u8],
}

impl<'a> LoginResponse<'a> {
    /// Parse from a checked header, its AHS area (ignored) and its data segment.
    pub fn parse<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        _ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Self, Error> {
        expect_opcode(bhs, Opcode::LoginResponse)?;
        let (cont, csg, nsg) = parse_stages(bhs.flags())?;
        let [class, detail, ..] = bhs.word(Word::W36).to_be_bytes();
        Ok(LoginResponse {
            cont,
            csg,
            nsg,
            version_max: bhs.byte2(),
            version_active: bhs.byte3(),
            isid: bhs.isid(),
            tsih: bhs.tsih(),
            itt: bhs.itt(),
            stat_sn: bhs.word(Word::W24),
            exp_cmd_sn: bhs.word(Word::W28),
            max_cmd_sn: bhs.word(Word::W32),
            status: LoginStatus::new(class, detail),
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
        let flags = stage_byte(self.cont, self.csg, self.nsg)?;
        let mut bhs = begin_emit(out, Opcode::LoginResponse, 0, data_len)?;
        bhs.set_flags(flags);
        bhs.set_byte2(self.version_max);
        bhs.set_byte3(self.version_active);
        bhs.set_isid_tsih(self.isid, self.tsih);
        bhs.set_itt(self.itt);
        bhs.set_word(Word::W24, self.stat_sn);
        bhs.set_word(Word::W28, self.exp_cmd_sn);
        bhs.set_word(Word::W32, self.max_cmd_sn);
        bhs.set_word(
            Word::W36,
            u32::from_be_bytes([self.status.class, self.status.detail, 0, 0]),
        );
        Ok(BHS_LEN)
    }
}
