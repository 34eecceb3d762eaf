//! Logical unit numbers: the 8-byte LUN field of SAM-5 4.7 and its single-level peripheral
//! (00b) and flat (01b) addressing methods.

/// An 8-byte LUN exactly as carried in the iSCSI BHS (big-endian `u64`).
///
/// `Lun::from_number` encodes LUNs 0..=255 with peripheral addressing and 256..=16383 with
/// flat addressing (what Linux and libiscsi expect); [`Lun::number`] decodes both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lun(pub u64);

impl Lun {
    /// Largest LUN number single-level addressing can carry.
    pub const MAX_NUMBER: u16 = 0x3FFF;

    /// Encode a LUN number (numbers above 16383 are masked to 14 bits).
    pub const fn from_number(n: u16) -> Lun {
        let n = n & Self::MAX_NUMBER;
        if n < 256 {
            Lun((n as u64) << 48)
        } else {
            Lun(((0x4000 | n as u64) & 0x7FFF) << 48)
        }
    }

    /// The 8 bytes of the LUN field.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// A LUN from the 8 bytes of the LUN field.
    pub const fn from_bytes(b: [u8; 8]) -> Lun {
        Lun(u64::from_be_bytes(b))
    }

    /// Decode single-level peripheral (bus 0) or flat addressing; `None` for every other
    /// encoding (multi-level, extended, logical unit addressing, non-zero bus).
    pub const fn number(self) -> Option<u16> {
        let b = self.to_bytes();
        if b[2] != 0 || b[3] != 0 || b[4] != 0 || b[5] != 0 || b[6] != 0 || b[7] != 0 {
            return None;
        }
        match b[0] >> 6 {
            0b00 if b[0] == 0 => Some(b[1] as u16),
            0b01 => Some((((b[0] & 0x3F) as u16) << 8) | b[1] as u16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peripheral_and_flat() {
        assert_eq!(Lun::from_number(0).to_bytes(), [0; 8]);
        assert_eq!(Lun::from_number(5).to_bytes(), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Lun::from_number(0x1234).to_bytes(),
            [0x52, 0x34, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Lun::from_bytes([0x40, 7, 0, 0, 0, 0, 0, 0]).number(),
            Some(7)
        );
        assert_eq!(Lun::from_bytes([0, 7, 0, 0, 0, 0, 0, 0]).number(), Some(7));
        assert_eq!(Lun::from_bytes([1, 7, 0, 0, 0, 0, 0, 0]).number(), None);
        assert_eq!(Lun::from_bytes([0, 7, 0, 1, 0, 0, 0, 0]).number(), None);
        assert_eq!(Lun::from_bytes([0xC1, 7, 0, 0, 0, 0, 0, 0]).number(), None);
    }

    proptest::proptest! {
        #[test]
        fn round_trip(n in 0u16..=0x3FFF) {
            proptest::prop_assert_eq!(Lun::from_number(n).number(), Some(n));
        }
    }
}
