//! The 48-byte Basic Header Segment (RFC 7143 11.2.1).
//!
//! ```text
//!  byte 0      1        2  3      4            5..7             8..15
//! |.|I|opcode|F|flags|spec. spec.|TotalAHSLen|DataSegmentLength|LUN / opcode-specific|
//!  16..19: Initiator Task Tag      20..47: seven opcode-specific 32-bit words
//! ```

use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Error, Opcode};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// The largest data segment length the 24-bit DataSegmentLength field can express.
pub const MAX_DATA_SEGMENT_LEN: u32 = 0x00ff_ffff;

/// The BHS as a zerocopy struct of big-endian fields.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BhsFields {
    /// Byte 0: reserved bit, I (immediate) bit, 6-bit opcode.
    pub opcode: u8,
    /// Byte 1: F bit and opcode-specific flags.
    pub flags: u8,
    /// Bytes 2-3: opcode-specific.
    pub specific: [u8; 2],
    /// Byte 4: TotalAHSLength in 4-byte words.
    pub total_ahs_len: u8,
    /// Bytes 5-7: DataSegmentLength (24-bit big-endian).
    pub data_segment_len: [u8; 3],
    /// Bytes 8-15: LUN or opcode-specific (ISID + TSIH in login PDUs).
    pub lun: U64,
    /// Bytes 16-19: Initiator Task Tag.
    pub itt: U32,
    /// Bytes 20-47: seven opcode-specific words; see [`Word`].
    pub words: [U32; 7],
}

const ZERO_FIELDS: BhsFields = BhsFields {
    opcode: 0,
    flags: 0,
    specific: [0; 2],
    total_ahs_len: 0,
    data_segment_len: [0; 3],
    lun: U64::ZERO,
    itt: U32::ZERO,
    words: [U32::ZERO; 7],
};

/// One of the opcode-specific 32-bit words at bytes 20..48, named by byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Word {
    /// Bytes 20-23: TTT, Expected Data Transfer Length, CID, SNACK Tag, Referenced Task Tag.
    W20,
    /// Bytes 24-27: CmdSN or StatSN.
    W24,
    /// Bytes 28-31: ExpStatSN or ExpCmdSN.
    W28,
    /// Bytes 32-35: MaxCmdSN, RefCmdSN, or CDB bytes 0-3.
    W32,
    /// Bytes 36-39: DataSN, R2TSN, ExpDataSN, login status, async event.
    W36,
    /// Bytes 40-43: Buffer Offset, BegRun, Time2Wait/Time2Retain, bidi residual.
    W40,
    /// Bytes 44-47: Residual Count, Desired Data Transfer Length, RunLength.
    W44,
}

impl Word {
    const fn index(self) -> usize {
        match self {
            Word::W20 => 0,
            Word::W24 => 1,
            Word::W28 => 2,
            Word::W32 => 3,
            Word::W36 => 4,
            Word::W40 => 5,
            Word::W44 => 6,
        }
    }
}

/// A view over a Basic Header Segment in a byte buffer.
///
/// Construct it with [`Bhs::new_checked`]; after that no accessor panics. A view made with
/// [`Bhs::new_unchecked`] over fewer than 48 bytes does not panic either: getters then read
/// zeros and setters do nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Bhs<T> {
    /// Wrap a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Bhs<T> {
        Bhs { buffer }
    }

    /// Wrap a buffer and check it holds at least a whole BHS.
    pub fn new_checked(buffer: T) -> Result<Bhs<T>, Error> {
        let bhs = Self::new_unchecked(buffer);
        bhs.check_len()?;
        Ok(bhs)
    }

    /// `Err(Truncated)` if the buffer is shorter than 48 bytes.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < BHS_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The header as a struct of big-endian fields.
    pub fn fields(&self) -> &BhsFields {
        match BhsFields::ref_from_prefix(self.buffer.as_ref()) {
            Ok((fields, _)) => fields,
            Err(_) => &ZERO_FIELDS,
        }
    }

    /// The opcode (bits 5-0 of byte 0).
    pub fn opcode(&self) -> Opcode {
        Opcode::from_u8(self.fields().opcode)
    }

    /// The raw 6-bit opcode.
    pub fn opcode_raw(&self) -> u8 {
        self.fields().opcode & 0x3f
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.fields().opcode & 0x40 != 0
    }

    /// The F (final) bit, bit 7 of byte 1.
    pub fn final_bit(&self) -> bool {
        self.fields().flags & 0x80 != 0
    }

    /// Byte 1: the F bit and the opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.fields().flags
    }

    /// Byte 2 (opcode-specific).
    pub fn byte2(&self) -> u8 {
        self.fields().specific[0]
    }

    /// Byte 3 (opcode-specific).
    pub fn byte3(&self) -> u8 {
        self.fields().specific[1]
    }

    /// TotalAHSLength in 4-byte words.
    pub fn total_ahs_len(&self) -> u8 {
        self.fields().total_ahs_len
    }

    /// Length of the AHS in bytes (TotalAHSLength * 4).
    pub fn ahs_len(&self) -> usize {
        usize::from(self.total_ahs_len()) * 4
    }

    /// Length of BHS + AHS in bytes.
    pub fn header_len(&self) -> usize {
        BHS_LEN + self.ahs_len()
    }

    /// DataSegmentLength (24 bits), not counting padding.
    pub fn data_segment_len(&self) -> u32 {
        let [a, b, c] = self.fields().data_segment_len;
        u32::from_be_bytes([0, a, b, c])
    }

    /// Bytes 8-15 as a big-endian 64-bit LUN.
    pub fn lun(&self) -> u64 {
        self.fields().lun.get()
    }

    /// The ISID of a login PDU (bytes 8-13).
    pub fn isid(&self) -> [u8; 6] {
        let l = self.fields().lun.get().to_be_bytes();
        [l[0], l[1], l[2], l[3], l[4], l[5]]
    }

    /// The TSIH of a login PDU (bytes 14-15).
    pub fn tsih(&self) -> u16 {
        (self.fields().lun.get() & 0xffff) as u16
    }

    /// The Initiator Task Tag (bytes 16-19).
    pub fn itt(&self) -> u32 {
        self.fields().itt.get()
    }

    /// One opcode-specific word.
    pub fn word(&self, w: Word) -> u32 {
        self.fields().words[w.index()].get()
    }

    /// Bytes 20-23: Target Transfer Tag (NOP, Data, R2T, Text, SNACK).
    pub fn ttt(&self) -> u32 {
        self.word(Word::W20)
    }

    /// Bytes 24-27: CmdSN (initiator PDUs) or StatSN (target PDUs).
    pub fn sn24(&self) -> u32 {
        self.word(Word::W24)
    }

    /// Bytes 28-31: ExpStatSN (initiator PDUs) or ExpCmdSN (target PDUs).
    pub fn sn28(&self) -> u32 {
        self.word(Word::W28)
    }

    /// Bytes 32-47: the 16-byte CDB of a SCSI Command.
    pub fn cdb(&self) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        for (chunk, w) in cdb.chunks_exact_mut(4).zip(&self.fields().words[3..7]) {
            chunk.copy_from_slice(&w.get().to_be_bytes());
        }
        cdb
    }

    /// The raw 48 header bytes (zeros for a short unchecked buffer).
    pub fn as_bytes(&self) -> &[u8] {
        self.fields().as_bytes()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn fields_mut(&mut self) -> Option<&mut BhsFields> {
        BhsFields::mut_from_prefix(self.buffer.as_mut())
            .ok()
            .map(|(f, _)| f)
    }

    /// Zero all 48 header bytes.
    pub fn clear(&mut self) {
        if let Some(f) = self.fields_mut() {
            *f = ZERO_FIELDS;
        }
    }

    /// Set the opcode, keeping the I bit.
    pub fn set_opcode(&mut self, op: Opcode) {
        if let Some(f) = self.fields_mut() {
            f.opcode = (f.opcode & 0x40) | op.to_u8();
        }
    }

    /// Set or clear the I bit.
    pub fn set_immediate(&mut self, on: bool) {
        if let Some(f) = self.fields_mut() {
            f.opcode = (f.opcode & 0x3f) | if on { 0x40 } else { 0 };
        }
    }

    /// Set byte 1 (F bit and flags).
    pub fn set_flags(&mut self, flags: u8) {
        if let Some(f) = self.fields_mut() {
            f.flags = flags;
        }
    }

    /// Set byte 2.
    pub fn set_byte2(&mut self, v: u8) {
        if let Some(f) = self.fields_mut() {
            f.specific[0] = v;
        }
    }

    /// Set byte 3.
    pub fn set_byte3(&mut self, v: u8) {
        if let Some(f) = self.fields_mut() {
            f.specific[1] = v;
        }
    }

    /// Set TotalAHSLength (in 4-byte words).
    pub fn set_total_ahs_len(&mut self, words: u8) {
        if let Some(f) = self.fields_mut() {
            f.total_ahs_len = words;
        }
    }

    /// Set DataSegmentLength; fails if it does not fit in 24 bits.
    pub fn set_data_segment_len(&mut self, len: u32) -> Result<(), Error> {
        if len > MAX_DATA_SEGMENT_LEN {
            return Err(Error::DataSegmentTooLong {
                len,
                max: MAX_DATA_SEGMENT_LEN,
            });
        }
        if let Some(f) = self.fields_mut() {
            let [_, a, b, c] = len.to_be_bytes();
            f.data_segment_len = [a, b, c];
        }
        Ok(())
    }

    /// Set bytes 8-15.
    pub fn set_lun(&mut self, lun: u64) {
        if let Some(f) = self.fields_mut() {
            f.lun.set(lun);
        }
    }

    /// Set the ISID and TSIH of a login PDU (bytes 8-15).
    pub fn set_isid_tsih(&mut self, isid: [u8; 6], tsih: u16) {
        let [t0, t1] = tsih.to_be_bytes();
        let [i0, i1, i2, i3, i4, i5] = isid;
        self.set_lun(u64::from_be_bytes([i0, i1, i2, i3, i4, i5, t0, t1]));
    }

    /// Set the Initiator Task Tag.
    pub fn set_itt(&mut self, itt: u32) {
        if let Some(f) = self.fields_mut() {
            f.itt.set(itt);
        }
    }

    /// Set one opcode-specific word.
    pub fn set_word(&mut self, w: Word, v: u32) {
        if let Some(f) = self.fields_mut() {
            f.words[w.index()].set(v);
        }
    }

    /// Set bytes 32-47 (the CDB of a SCSI Command).
    pub fn set_cdb(&mut self, cdb: &[u8; 16]) {
        if let Some(f) = self.fields_mut() {
            for (w, chunk) in f.words[3..7].iter_mut().zip(cdb.chunks_exact(4)) {
                let mut b = [0u8; 4];
                b.copy_from_slice(chunk);
                w.set(u32::from_be_bytes(b));
            }
        }
    }
}

/// Start emitting a PDU: check the output holds BHS + AHS, zero the BHS, set the opcode,
/// TotalAHSLength and DataSegmentLength. Returns a view over the first 48 bytes.
pub(super) fn begin_emit(
    out: &mut [u8],
    opcode: Opcode,
    ahs_len: usize,
    data_len: usize,
) -> Result<Bhs<&mut [u8]>, Error> {
    let required = BHS_LEN + ahs_len;
    if out.len() < required {
        return Err(Error::BufferTooSmall { required });
    }
    let words = u8::try_from(ahs_len / 4).map_err(|_| Error::InvalidAhs)?;
    if ahs_len % 4 != 0 {
        return Err(Error::InvalidAhs);
    }
    let dsl = u32::try_from(data_len).unwrap_or(u32::MAX);
    let mut bhs = Bhs::new_unchecked(&mut out[..BHS_LEN]);
    bhs.clear();
    bhs.set_data_segment_len(dsl)?;
    bhs.set_opcode(opcode);
    bhs.set_total_ahs_len(words);
    Ok(bhs)
}

/// Check that a parsed header carries the expected opcode.
pub(super) fn expect_opcode<T: AsRef<[u8]>>(bhs: &Bhs<T>, op: Opcode) -> Result<(), Error> {
    if bhs.opcode() == op {
        Ok(())
    } else {
        Err(Error::InvalidField {
            field: "Opcode",
            value: u32::from(bhs.opcode_raw()),
        })
    }
}

/// PDUs whose DataSegmentLength the RFC fixes at 0 reject a data segment.
pub(super) fn expect_no_data(len: usize) -> Result<(), Error> {
    if len == 0 {
        Ok(())
    } else {
        Err(Error::InvalidField {
            field: "DataSegmentLength",
            value: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }
}

/// The upper and lower 16 bits of a word.
pub(super) const fn split16(w: u32) -> (u16, u16) {
    ((w >> 16) as u16, w as u16)
}

/// Two 16-bit halves as one word.
pub(super) const fn join16(hi: u16, lo: u16) -> u32 {
    ((hi as u32) << 16) | lo as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_48_bytes() {
        assert_eq!(core::mem::size_of::<BhsFields>(), BHS_LEN);
        assert_eq!(core::mem::align_of::<BhsFields>(), 1);
    }

    #[test]
    fn getters_read_the_right_bytes() {
        let mut b = [0u8; 48];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        b[0] = 0x41; // I + SCSI Command
        b[1] = 0xa1;
        let v = Bhs::new_checked(&b[..]).unwrap();
        assert_eq!(v.opcode(), Opcode::ScsiCommand);
        assert!(v.immediate());
        assert!(v.final_bit());
        assert_eq!(v.flags(), 0xa1);
        assert_eq!(v.byte2(), 2);
        assert_eq!(v.byte3(), 3);
        assert_eq!(v.total_ahs_len(), 4);
        assert_eq!(v.ahs_len(), 16);
        assert_eq!(v.header_len(), 64);
        assert_eq!(v.data_segment_len(), 0x05_0607);
        assert_eq!(v.lun(), 0x0809_0a0b_0c0d_0e0f);
        assert_eq!(v.isid(), [8, 9, 10, 11, 12, 13]);
        assert_eq!(v.tsih(), 0x0e0f);
        assert_eq!(v.itt(), 0x1011_1213);
        assert_eq!(v.ttt(), 0x1415_1617);
        assert_eq!(v.sn24(), 0x1819_1a1b);
        assert_eq!(v.sn28(), 0x1c1d_1e1f);
        assert_eq!(v.word(Word::W32), 0x2021_2223);
        assert_eq!(v.word(Word::W36), 0x2425_2627);
        assert_eq!(v.word(Word::W40), 0x2829_2a2b);
        assert_eq!(v.word(Word::W44), 0x2c2d_2e2f);
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&b[32..48]);
        assert_eq!(v.cdb(), cdb);
        assert_eq!(v.as_bytes(), &b[..]);
    }

    #[test]
    fn setters_write_the_right_bytes() {
        let mut b = [0xffu8; 50];
        let mut v = Bhs::new_checked(&mut b[..]).unwrap();
        v.clear();
        v.set_opcode(Opcode::LoginRequest);
        v.set_immediate(true);
        v.set_flags(0x87);
        v.set_byte2(0);
        v.set_byte3(0);
        v.set_total_ahs_len(0);
        v.set_data_segment_len(0x1234).unwrap();
        v.set_isid_tsih([0x80, 0, 0x02, 0x3d, 0, 0], 0x0102);
        v.set_itt(0xdead_beef);
        v.set_word(Word::W20, 0x0001_0000);
        v.set_word(Word::W44, 0xaabb_ccdd);
        assert_eq!(
            v.set_data_segment_len(0x0100_0000),
            Err(Error::DataSegmentTooLong {
                len: 0x0100_0000,
                max: MAX_DATA_SEGMENT_LEN
            })
        );
        let mut expect = [0u8; 50];
        expect[..20].copy_from_slice(&[
            0x43, 0x87, 0, 0, 0, 0, 0x12, 0x34, 0x80, 0, 0x02, 0x3d, 0, 0, 0x01, 0x02, 0xde, 0xad,
            0xbe, 0xef,
        ]);
        expect[20..24].copy_from_slice(&[0, 1, 0, 0]);
        expect[44..48].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        expect[48..].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(b, expect);
    }

    #[test]
    fn cdb_round_trip() {
        let mut b = [0u8; 48];
        let cdb: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
        Bhs::new_unchecked(&mut b[..]).set_cdb(&cdb);
        assert_eq!(&b[32..], &cdb[..]);
        assert_eq!(Bhs::new_unchecked(&b[..]).cdb(), cdb);
    }

    #[test]
    fn short_buffers_never_panic() {
        assert_eq!(Bhs::new_checked(&[0u8; 47][..]), Err(Error::Truncated));
        let short = [0xffu8; 10];
        let v = Bhs::new_unchecked(&short[..]);
        assert_eq!(v.opcode(), Opcode::NopOut);
        assert_eq!(v.itt(), 0);
        assert_eq!(v.data_segment_len(), 0);
        let mut short = [0xffu8; 10];
        let mut v = Bhs::new_unchecked(&mut short[..]);
        v.set_itt(0);
        v.clear();
        assert_eq!(short, [0xff; 10]);
    }
}
