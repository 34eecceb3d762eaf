//! PDU opcodes (RFC 7143 11.2.1.2).

/// The 6-bit opcode in byte 0 of the BHS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x00 NOP-Out (initiator).
    NopOut,
    /// 0x01 SCSI Command (initiator).
    ScsiCommand,
    /// 0x02 SCSI Task Management Function Request (initiator).
    TaskMgmtRequest,
    /// 0x03 Login Request (initiator).
    LoginRequest,
    /// 0x04 Text Request (initiator).
    TextRequest,
    /// 0x05 SCSI Data-Out (initiator).
    DataOut,
    /// 0x06 Logout Request (initiator).
    LogoutRequest,
    /// 0x10 SNACK Request (initiator).
    Snack,
    /// 0x20 NOP-In (target).
    NopIn,
    /// 0x21 SCSI Response (target).
    ScsiResponse,
    /// 0x22 SCSI Task Management Function Response (target).
    TaskMgmtResponse,
    /// 0x23 Login Response (target).
    LoginResponse,
    /// 0x24 Text Response (target).
    TextResponse,
    /// 0x25 SCSI Data-In (target).
    DataIn,
    /// 0x26 Logout Response (target).
    LogoutResponse,
    /// 0x31 Ready To Transfer (target).
    R2t,
    /// 0x32 Asynchronous Message (target).
    AsyncMessage,
    /// 0x3f Reject (target).
    Reject,
    /// Any other 6-bit value (vendor-specific 0x1c-0x1e / 0x3c-0x3e, or reserved).
    Unknown(u8),
}

impl Opcode {
    /// Whether PDUs with this opcode are sent by an initiator (opcodes below 0x20).
    pub const fn is_initiator(self) -> bool {
        self.to_u8() < 0x20
    }

    /// The 6-bit code.
    pub const fn to_u8(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::Snack => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2t => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(v) => v & 0x3f,
        }
    }

    /// Decode the low 6 bits of `v` (the I bit and the reserved bit are masked off).
    pub const fn from_u8(v: u8) -> Opcode {
        match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::Snack,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2t,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => Opcode::Unknown(other),
        }
    }
}

impl From<u8> for Opcode {
    fn from(v: u8) -> Self {
        Opcode::from_u8(v)
    }
}

impl From<Opcode> for u8 {
    fn from(op: Opcode) -> Self {
        op.to_u8()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_codes() {
        for v in 0u8..=0x3f {
            assert_eq!(Opcode::from_u8(v).to_u8(), v);
        }
        assert_eq!(Opcode::from_u8(0x43), Opcode::LoginRequest);
        assert_eq!(Opcode::from_u8(0x1c), Opcode::Unknown(0x1c));
        assert_eq!(Opcode::from_u8(0x3f), Opcode::Reject);
        assert!(Opcode::Snack.is_initiator());
        assert!(!Opcode::R2t.is_initiator());
    }
}
