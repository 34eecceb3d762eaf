//! Additional Header Segments (RFC 7143 11.2.2): extended CDB and bidirectional expected
//! read-data length.
//!
//! ```text
//! | AHSLength (16) | AHSType (8) | AHS-specific ... | padding to 4 bytes |
//! ```
//! AHSLength counts the AHS-specific bytes (including byte 3) and excludes padding.

use super::Error;

/// The longest CDB this codec carries: 16 bytes in the BHS plus up to 244 in an extended
/// CDB AHS (SPC allows CDBs up to 260 bytes).
pub const MAX_CDB_LEN: usize = 260;

/// AHSType codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AhsType {
    /// 1: Extended CDB.
    ExtendedCdb,
    /// 2: Bidirectional Read Expected Data Transfer Length.
    BidiReadLength,
}

impl AhsType {
    /// The code on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            AhsType::ExtendedCdb => 1,
            AhsType::BidiReadLength => 2,
        }
    }
}

/// One parsed AHS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahs<'a> {
    /// The CDB bytes beyond the first 16 (the BHS holds bytes 0-15).
    ExtendedCdb(&'a [u8]),
    /// The expected read data length of a bidirectional command.
    BidiReadLength(u32),
}

impl Ahs<'_> {
    /// The number of bytes this AHS takes on the wire, padding included.
    pub const fn buffer_len(&self) -> usize {
        match self {
            // AHSLength(2) + AHSType(1) + reserved(1) + CDB bytes, padded.
            Ahs::ExtendedCdb(ext) => (4 + ext.len() + 3) & !3,
            Ahs::BidiReadLength(_) => 8,
        }
    }

    /// Write this AHS (with zero padding) at the start of `out`; returns the bytes written.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let out = match out.get_mut(..len) {
            Some(o) => o,
            None => return Err(Error::BufferTooSmall { required: len }),
        };
        out.fill(0);
        match self {
            Ahs::ExtendedCdb(ext) => {
                if ext.len() > MAX_CDB_LEN - 16 {
                    return Err(Error::InvalidAhs);
                }
                let ahs_len = u16::try_from(ext.len() + 1).map_err(|_| Error::InvalidAhs)?;
                out[..2].copy_from_slice(&ahs_len.to_be_bytes());
                out[2] = AhsType::ExtendedCdb.to_u8();
                out[4..4 + ext.len()].copy_from_slice(ext);
            }
            Ahs::BidiReadLength(v) => {
                out[..2].copy_from_slice(&5u16.to_be_bytes());
                out[2] = AhsType::BidiReadLength.to_u8();
                out[4..8].copy_from_slice(&v.to_be_bytes());
            }
        }
        Ok(len)
    }
}

/// An iterator over the AHS items in an AHS area (the `TotalAHSLength * 4` bytes after the
/// BHS). Yields an error (and then stops) on a malformed or reserved-type item.
#[derive(Clone, Debug)]
pub struct AhsIter<'a> {
    rest: &'a [u8],
}

impl<'a> AhsIter<'a> {
    /// Iterate over the AHS items in `ahs`.
    pub const fn new(ahs: &'a [u8]) -> Self {
        AhsIter { rest: ahs }
    }
}

impl<'a> Iterator for AhsIter<'a> {
    type Item = Result<Ahs<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = parse_one(self.rest);
        match item {
            Ok((ahs, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(Ok(ahs))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_one(buf: &[u8]) -> Result<(Ahs<'_>, usize), Error> {
    let [l0, l1, ty, ..] = *buf else {
        return Err(Error::InvalidAhs);
    };
    let ahs_len = usize::from(u16::from_be_bytes([l0, l1]));
    // 3 header bytes + AHSLength specific bytes, padded to 4.
    let total = (3 + ahs_len + 3) & !3;
    let item = buf.get(..total).ok_or(Error::InvalidAhs)?;
    // The AHS-specific bytes start at byte 3 (a reserved byte in both defined types).
    let specific = item.get(3..3 + ahs_len).ok_or(Error::InvalidAhs)?;
    let ahs = match ty {
        1 => {
            let ext = specific.get(1..).ok_or(Error::InvalidAhs)?;
            if 16 + ext.len() > MAX_CDB_LEN {
                return Err(Error::InvalidAhs);
            }
            Ahs::ExtendedCdb(ext)
        }
        2 => match *specific {
            [_, a, b, c, d] => Ahs::BidiReadLength(u32::from_be_bytes([a, b, c, d])),
            _ => return Err(Error::InvalidAhs),
        },
        other => {
            return Err(Error::ReservedValue {
                field: "AHSType",
                value: u32::from(other),
            });
        }
    };
    Ok((ahs, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_cdb_bytes() {
        // A 32-byte CDB: 16 extra bytes -> AHSLength 17, 20 bytes + pad to 24? 4+16 = 20.
        let ext: [u8; 16] = core::array::from_fn(|i| i as u8 + 16);
        let ahs = Ahs::ExtendedCdb(&ext);
        assert_eq!(ahs.buffer_len(), 20);
        let mut out = [0xeeu8; 20];
        assert_eq!(ahs.emit(&mut out), Ok(20));
        assert_eq!(&out[..4], &[0x00, 0x11, 0x01, 0x00]);
        assert_eq!(&out[4..], &ext[..]);
        let mut it = AhsIter::new(&out);
        assert_eq!(it.next(), Some(Ok(Ahs::ExtendedCdb(&ext[..]))));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn extended_cdb_padding() {
        // A 17-byte CDB: 1 extra byte -> AHSLength 2, 3 + 2 = 5 -> padded to 8.
        let ahs = Ahs::ExtendedCdb(&[0x99]);
        let mut out = [0xeeu8; 8];
        assert_eq!(ahs.emit(&mut out), Ok(8));
        assert_eq!(out, [0x00, 0x02, 0x01, 0x00, 0x99, 0, 0, 0]);
        assert_eq!(
            AhsIter::new(&out).next(),
            Some(Ok(Ahs::ExtendedCdb(&[0x99][..])))
        );
    }

    #[test]
    fn bidi_bytes() {
        let ahs = Ahs::BidiReadLength(0x0001_0200);
        let mut out = [0u8; 8];
        assert_eq!(ahs.emit(&mut out), Ok(8));
        assert_eq!(out, [0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x02, 0x00]);
        assert_eq!(AhsIter::new(&out).next(), Some(Ok(ahs)));
        assert_eq!(
            Ahs::BidiReadLength(1).emit(&mut [0u8; 7]),
            Err(Error::BufferTooSmall { required: 8 })
        );
    }

    #[test]
    fn malformed() {
        // Declared length runs past the area.
        assert_eq!(
            AhsIter::new(&[0, 9, 1, 0, 1, 2, 3, 4]).next(),
            Some(Err(Error::InvalidAhs))
        );
        // Too short for a header.
        assert_eq!(AhsIter::new(&[0, 1]).next(), Some(Err(Error::InvalidAhs)));
        // Bidi with the wrong length.
        assert_eq!(
            AhsIter::new(&[0, 1, 2, 0]).next(),
            Some(Err(Error::InvalidAhs))
        );
        // Reserved type.
        assert_eq!(
            AhsIter::new(&[0, 1, 3, 0]).next(),
            Some(Err(Error::ReservedValue {
                field: "AHSType",
                value: 3
            }))
        );
        // Extended CDB with AHSLength 0 (no reserved byte).
        assert_eq!(
            AhsIter::new(&[0, 0, 1, 0]).next(),
            Some(Err(Error::InvalidAhs))
        );
        // Errors end the iteration.
        let mut it = AhsIter::new(&[0, 0, 1, 0, 0, 5, 2, 0, 0, 0, 0, 1]);
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
    }
}
