//! RFC 1982 serial number arithmetic (SERIAL_BITS = 32) for CmdSN, StatSN, DataSN, R2TSN.
//!
//! iSCSI sequence numbers wrap around at 2^32 and are compared the RFC 1982 way
//! (RFC 7143 section 4.2.2.1): `a < b` when `a != b` and the forward distance from `a` to `b`
//! is less than 2^31. When the distance is exactly 2^31 the comparison is *undefined*:
//! neither `a < b` nor `a > b` holds, and [`Serial::partial_cmp_sn`] returns `None`.
//!
//! Because that relation is not transitive, [`Serial`] deliberately does not implement
//! `PartialOrd`/`Ord`; use the named methods (or the free functions [`sn_lt`] etc.).

use core::cmp::Ordering;

/// Half the serial number space: distances `>= HALF` are not "ahead".
const HALF: u32 = 1 << 31;

/// The largest increment RFC 1982 allows in one addition: 2^31 - 1.
pub const MAX_ADD: u32 = HALF - 1;

/// A 32-bit serial number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Serial(pub u32);

impl Serial {
    /// The serial number `self + n` (mod 2^32).
    ///
    /// RFC 1982 defines addition only for `n <= 2^31 - 1`; larger `n` give `None`.
    pub const fn checked_add(self, n: u32) -> Option<Serial> {
        if n > MAX_ADD {
            None
        } else {
            Some(Serial(self.0.wrapping_add(n)))
        }
    }

    /// `self + n` (mod 2^32) without the RFC 1982 range check (e.g. `+ 1` for the next SN).
    pub const fn wrapping_add(self, n: u32) -> Serial {
        Serial(self.0.wrapping_add(n))
    }

    /// The forward distance from `self` to `other` (mod 2^32).
    pub const fn distance_to(self, other: Serial) -> u32 {
        other.0.wrapping_sub(self.0)
    }

    /// RFC 1982 comparison: `Some(Less)` if `self < other`, `Some(Equal)`, `Some(Greater)`,
    /// or `None` when the two are exactly 2^31 apart (undefined).
    pub const fn partial_cmp_sn(self, other: Serial) -> Option<Ordering> {
        let d = self.distance_to(other);
        if d == 0 {
            Some(Ordering::Equal)
        } else if d < HALF {
            Some(Ordering::Less)
        } else if d > HALF {
            Some(Ordering::Greater)
        } else {
            None
        }
    }

    /// `self < other` in serial arithmetic (false when undefined).
    pub const fn lt(self, other: Serial) -> bool {
        matches!(self.partial_cmp_sn(other), Some(Ordering::Less))
    }

    /// `self > other` in serial arithmetic (false when undefined).
    pub const fn gt(self, other: Serial) -> bool {
        matches!(self.partial_cmp_sn(other), Some(Ordering::Greater))
    }

    /// `self <= other` in serial arithmetic (false when undefined).
    pub const fn le(self, other: Serial) -> bool {
        matches!(
            self.partial_cmp_sn(other),
            Some(Ordering::Less | Ordering::Equal)
        )
    }

    /// `self >= other` in serial arithmetic (false when undefined).
    pub const fn ge(self, other: Serial) -> bool {
        matches!(
            self.partial_cmp_sn(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// Whether `self` lies in the window `[low, high]` (both inclusive, serial arithmetic),
    /// e.g. a CmdSN between ExpCmdSN and MaxCmdSN.
    pub const fn in_window(self, low: Serial, high: Serial) -> bool {
        low.le(self) && self.le(high)
    }
}

impl From<u32> for Serial {
    fn from(v: u32) -> Self {
        Serial(v)
    }
}

impl From<Serial> for u32 {
    fn from(s: Serial) -> Self {
        s.0
    }
}

impl core::fmt::Display for Serial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

/// `a < b` in RFC 1982 serial arithmetic.
pub const fn sn_lt(a: u32, b: u32) -> bool {
    Serial(a).lt(Serial(b))
}

/// `a > b` in RFC 1982 serial arithmetic.
pub const fn sn_gt(a: u32, b: u32) -> bool {
    Serial(a).gt(Serial(b))
}

/// `a <= b` in RFC 1982 serial arithmetic.
pub const fn sn_le(a: u32, b: u32) -> bool {
    Serial(a).le(Serial(b))
}

/// `a >= b` in RFC 1982 serial arithmetic.
pub const fn sn_ge(a: u32, b: u32) -> bool {
    Serial(a).ge(Serial(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_order() {
        assert!(sn_lt(1, 2));
        assert!(!sn_lt(2, 1));
        assert!(sn_gt(2, 1));
        assert!(sn_le(5, 5));
        assert!(sn_ge(5, 5));
        assert!(!sn_lt(5, 5));
        assert!(!sn_gt(5, 5));
    }

    #[test]
    fn wraps_around() {
        assert!(sn_lt(0xffff_ffff, 0));
        assert!(sn_gt(0, 0xffff_ffff));
        assert!(sn_lt(0xffff_fff0, 0x10));
        assert_eq!(Serial(0xffff_ffff).wrapping_add(1), Serial(0));
        assert_eq!(Serial(0xffff_ffff).distance_to(Serial(1)), 2);
    }

    #[test]
    fn boundary_distances() {
        // 2^31 - 1 ahead is still "greater".
        assert!(sn_lt(0, 0x7fff_ffff));
        assert!(sn_gt(0x7fff_ffff, 0));
        // 2^31 + 1 ahead is "behind".
        assert!(sn_gt(0, 0x8000_0001));
        // Exactly 2^31 apart: undefined, no relation holds either way.
        for (a, b) in [(0u32, 0x8000_0000u32), (0x8000_0000, 0), (7, 0x8000_0007)] {
            assert_eq!(Serial(a).partial_cmp_sn(Serial(b)), None);
            assert!(!sn_lt(a, b) && !sn_gt(a, b) && !sn_le(a, b) && !sn_ge(a, b));
        }
    }

    #[test]
    fn checked_add_limits() {
        assert_eq!(Serial(10).checked_add(MAX_ADD), Some(Serial(10 + MAX_ADD)));
        assert_eq!(Serial(10).checked_add(MAX_ADD + 1), None);
        assert_eq!(Serial(u32::MAX).checked_add(2), Some(Serial(1)));
    }

    #[test]
    fn window() {
        assert!(Serial(5).in_window(Serial(5), Serial(9)));
        assert!(Serial(9).in_window(Serial(5), Serial(9)));
        assert!(!Serial(10).in_window(Serial(5), Serial(9)));
        assert!(!Serial(4).in_window(Serial(5), Serial(9)));
        // A window that wraps.
        assert!(Serial(1).in_window(Serial(0xffff_fffe), Serial(3)));
        assert!(!Serial(4).in_window(Serial(0xffff_fffe), Serial(3)));
        // An empty window (MaxCmdSN = ExpCmdSN - 1) admits nothing.
        assert!(!Serial(5).in_window(Serial(5), Serial(4)));
    }

    #[test]
    fn display_and_conversions() {
        assert_eq!(u32::from(Serial::from(42)), 42);
    }

    proptest! {
        #[test]
        fn add_is_greater(a in any::<u32>(), n in 1u32..=MAX_ADD) {
            let b = Serial(a).checked_add(n).ok_or(TestCaseError::fail("add"))?;
            prop_assert!(Serial(a).lt(b));
            prop_assert!(b.gt(Serial(a)));
        }

        #[test]
        fn antisymmetric(a in any::<u32>(), b in any::<u32>()) {
            let ab = Serial(a).partial_cmp_sn(Serial(b));
            let ba = Serial(b).partial_cmp_sn(Serial(a));
            prop_assert_eq!(ab.map(Ordering::reverse), ba);
            prop_assert_eq!(ab.is_none(), a.wrapping_sub(b) == HALF);
        }
    }
}
