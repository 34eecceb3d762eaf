//! CRC32C header and data digests (RFC 7143 section 13.1, appendix B.4).
//!
//! iSCSI protects the header (BHS + AHS) and, separately, the data segment (data + padding)
//! with CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected, init and final XOR `!0`).
//! On the wire the 32-bit digest is sent least significant byte first: the CRC of 32 zero
//! bytes, `0x8A9136AA`, travels as `aa 36 91 8a` (RFC 7143 B.4).
//!
//! Two engines compute the same function:
//! - a table-driven software path (the `crc` crate's `CRC_32_ISCSI`, slice-by-16), always
//!   available and `no_std`;
//! - with the `std` feature, the `crc32c` crate, which uses SSE4.2 / ARMv8 CRC instructions
//!   when the CPU has them.
//!
//! [`crc32c()`] and [`Crc32c::new`] pick the fastest engine compiled in. [`Crc32c`] is
//! incremental, so a digest can cover data that lives in several buffers; [`DataDigest`]
//! adds the zero padding of a data segment for you.

use crc::{CRC_32_ISCSI, Crc, Table};

/// Length in bytes of a header or data digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// The software CRC32C engine: slice-by-16 tables computed at compile time.
static SOFT: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// CRC32C of `data` with the table-driven software engine.
pub fn crc32c_soft(data: &[u8]) -> u32 {
    SOFT.checksum(data)
}

/// CRC32C of `data` with the `crc32c` crate (hardware instructions when available).
#[cfg(feature = "std")]
pub fn crc32c_hw(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC32C of `data` with the fastest engine compiled in.
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        crc32c_hw(data)
    }
    #[cfg(not(feature = "std"))]
    {
        crc32c_soft(data)
    }
}

/// The header digest over a BHS and its AHS (the bytes before the digest).
pub fn header_digest(header: &[u8]) -> u32 {
    crc32c(header)
}

/// The data digest over a data segment and its zero padding to a multiple of 4 bytes.
pub fn data_digest(data: &[u8]) -> u32 {
    let mut d = DataDigest::new();
    d.update(data);
    d.finish()
}

#[derive(Clone)]
enum Engine {
    Soft(crc::Digest<'static, u32, Table<16>>),
    #[cfg(feature = "std")]
    Hard(u32),
}

/// An incremental CRC32C computation.
///
/// ```
/// use iscsi_proto::digest::{Crc32c, crc32c};
/// let mut c = Crc32c::new();
/// c.update(b"hello, ");
/// c.update(b"world");
/// assert_eq!(c.finish(), crc32c(b"hello, world"));
/// ```
#[derive(Clone)]
pub struct Crc32c {
    engine: Engine,
}

impl core::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self.engine {
            Engine::Soft(_) => "soft",
            #[cfg(feature = "std")]
            Engine::Hard(_) => "hard",
        };
        f.debug_struct("Crc32c").field("engine", &name).finish()
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A new computation with the fastest engine compiled in.
    pub fn new() -> Self {
        #[cfg(feature = "std")]
        {
            Self::new_hw()
        }
        #[cfg(not(feature = "std"))]
        {
            Self::new_soft()
        }
    }

    /// A new computation with the table-driven software engine.
    pub fn new_soft() -> Self {
        Crc32c {
            engine: Engine::Soft(SOFT.digest()),
        }
    }

    /// A new computation with the `crc32c` crate (hardware instructions when available).
    #[cfg(feature = "std")]
    pub fn new_hw() -> Self {
        Crc32c {
            engine: Engine::Hard(0),
        }
    }

    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.engine {
            Engine::Soft(d) => d.update(data),
            #[cfg(feature = "std")]
            Engine::Hard(crc) => *crc = crc32c::crc32c_append(*crc, data),
        }
    }

    /// The CRC32C of everything fed so far.
    pub fn finish(self) -> u32 {
        match self.engine {
            Engine::Soft(d) => d.finalize(),
            #[cfg(feature = "std")]
            Engine::Hard(crc) => crc,
        }
    }
}

/// An incremental data digest: CRC32C over the data segment followed by its zero padding.
#[derive(Clone, Debug, Default)]
pub struct DataDigest {
    crc: Crc32c,
    len: usize,
}

impl DataDigest {
    /// A new data digest with the fastest engine compiled in.
    pub fn new() -> Self {
        Self::with_engine(Crc32c::new())
    }

    /// A new data digest that uses the given (fresh) CRC engine.
    pub fn with_engine(crc: Crc32c) -> Self {
        DataDigest { crc, len: 0 }
    }

    /// Feed the next part of the data segment.
    pub fn update(&mut self, data: &[u8]) {
        self.crc.update(data);
        self.len = self.len.wrapping_add(data.len());
    }

    /// Add the padding and return the digest.
    pub fn finish(mut self) -> u32 {
        let pad = crate::wire::pad_len(self.len);
        self.crc.update(&[0u8; 3][..pad]);
        self.crc.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7143 appendix B.4 test vectors (CRC values as 32-bit numbers; on the wire they
    // travel least significant byte first, e.g. 32 zero bytes -> aa 36 91 8a).
    #[test]
    fn rfc7143_b4_vectors() {
        let zeros = [0u8; 32];
        assert_eq!(crc32c_soft(&zeros), 0x8a91_36aa);
        assert_eq!(crc32c_soft(&zeros).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        let ones = [0xffu8; 32];
        assert_eq!(crc32c_soft(&ones), 0x62a8_ab43);
        let mut inc = [0u8; 32];
        for (i, b) in inc.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(crc32c_soft(&inc), 0x46dd_794e);
        let mut dec = [0u8; 32];
        for (i, b) in dec.iter_mut().enumerate() {
            *b = 31 - i as u8;
        }
        assert_eq!(crc32c_soft(&dec), 0x113f_db5c);
    }

    #[test]
    fn check_value() {
        // The CRC catalogue check value for CRC-32/ISCSI.
        assert_eq!(crc32c_soft(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_soft(b""), 0);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let mut c = Crc32c::new_soft();
        c.update(b"1234");
        c.update(b"");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xe306_9283);
    }

    #[test]
    fn data_digest_includes_padding() {
        // 5 data bytes are padded with 3 zeros before the digest.
        assert_eq!(data_digest(b"abcde"), crc32c_soft(b"abcde\0\0\0"));
        assert_ne!(data_digest(b"abcde"), crc32c_soft(b"abcde"));
        // Aligned data has no padding.
        assert_eq!(data_digest(b"abcd"), crc32c_soft(b"abcd"));
        let mut d = DataDigest::with_engine(Crc32c::new_soft());
        d.update(b"ab");
        d.update(b"cde");
        assert_eq!(d.finish(), crc32c_soft(b"abcde\0\0\0"));
    }

    #[cfg(feature = "std")]
    mod hw {
        use super::super::*;
        use proptest::prelude::*;

        #[test]
        fn hw_check_value() {
            assert_eq!(crc32c_hw(b"123456789"), 0xe306_9283);
            assert_eq!(crc32c_hw(&[0u8; 32]), 0x8a91_36aa);
        }

        proptest! {
            #[test]
            fn soft_and_hard_agree(data in proptest::collection::vec(any::<u8>(), 0..9000)) {
                prop_assert_eq!(crc32c_soft(&data), crc32c_hw(&data));
            }

            #[test]
            fn soft_and_hard_agree_incrementally(
                data in proptest::collection::vec(any::<u8>(), 0..4096),
                cut in 0usize..4096,
            ) {
                let cut = cut.min(data.len());
                let mut s = DataDigest::with_engine(Crc32c::new_soft());
                let mut h = DataDigest::with_engine(Crc32c::new_hw());
                s.update(&data[..cut]);
                s.update(&data[cut..]);
                h.update(&data[..cut]);
                h.update(&data[cut..]);
                prop_assert_eq!(s.finish(), h.finish());
            }
        }
    }
}
