//! Framing: PDU length from the first bytes, padding, digests, the [`Pdu`] enum and whole-PDU
//! emit helpers.
//!
//! A PDU on the wire is
//! ```text
//! BHS (48) | AHS (TotalAHSLength*4) | [header digest 4] | data | pad to 4 | [data digest 4]
//! ```
//! The data digest (CRC32C over data + padding) is present only when the data segment is
//! not empty. Digests travel least significant byte first.
//!
//! Receive: `pdu_len_checked(buf, digests, max)` until it says the buffer holds a whole PDU,
//! then `Pdu::parse(buf, digests)`, then discard the `consumed` bytes it reports.
//!
//! Send: small PDUs (login, text, status) with [`emit_pdu`] into one buffer; PDUs whose data
//! lives elsewhere (Data-In from an I/O buffer) with [`emit_header`] followed by the data
//! and a [`DataTrailer`] (padding + data digest), e.g. with one `writev`.

use super::bhs::{BHS_LEN, Bhs, MAX_DATA_SEGMENT_LEN};
use super::{
    AsyncMessage, DataIn, DataOut, Error, LoginRequest, LoginResponse, LogoutRequest,
    LogoutResponse, NopIn, NopOut, Opcode, R2t, Reject, ScsiCommand, ScsiResponse, Snack,
    TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse,
};
use crate::digest::{self, DIGEST_LEN, DataDigest};

/// Which digests are in use on a connection (negotiated HeaderDigest / DataDigest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    /// HeaderDigest=CRC32C.
    pub header: bool,
    /// DataDigest=CRC32C.
    pub data: bool,
}

impl Digests {
    /// No digests (the default, and always during login before negotiation ends).
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
    /// Both header and data digests.
    pub const ALL: Digests = Digests {
        header: true,
        data: true,
    };

    /// Bytes of header digest per PDU (0 or 4).
    pub const fn header_len(self) -> usize {
        if self.header { DIGEST_LEN } else { 0 }
    }

    /// Bytes of data digest for a data segment of `data_len` bytes (0 or 4).
    pub const fn data_len(self, data_len: usize) -> usize {
        if self.data && data_len > 0 {
            DIGEST_LEN
        } else {
            0
        }
    }
}

/// The result of an incremental operation: complete, or more bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status<T> {
    /// The value is known.
    Complete(T),
    /// More input is needed.
    Partial,
}

impl<T> Status<T> {
    /// The value, if complete.
    pub fn complete(self) -> Option<T> {
        match self {
            Status::Complete(v) => Some(v),
            Status::Partial => None,
        }
    }

    /// Whether more input is needed.
    pub const fn is_partial(&self) -> bool {
        matches!(self, Status::Partial)
    }
}

/// Bytes of zero padding after a data segment of `n` bytes (0..=3).
pub const fn pad_len(n: usize) -> usize {
    n.wrapping_neg() & 3
}

/// Total wire length of a PDU with this header length and data segment length
/// (saturating: on targets whose `usize` cannot hold it, the PDU can never be complete).
const fn wire_len(header_len: usize, data_len: usize, digests: Digests) -> usize {
    header_len
        .saturating_add(digests.header_len())
        .saturating_add(data_len)
        .saturating_add(pad_len(data_len))
        .saturating_add(digests.data_len(data_len))
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The length of the PDU at the start of `buf`, once its BHS (48 bytes) is there:
/// BHS + AHS + header digest + data padded to 4 + data digest (when data is non-empty).
/// `Partial` while fewer than 48 bytes are buffered. The PDU itself may still be
/// incomplete: wait until `buf.len()` reaches the returned length.
///
/// Use [`pdu_len_checked`] on input from a peer, to bound the data segment.
pub fn pdu_len(buf: &[u8], digests: Digests) -> Status<usize> {
    match Bhs::new_checked(buf) {
        Ok(bhs) => Status::Complete(wire_len(
            bhs.header_len(),
            to_usize(bhs.data_segment_len()),
            digests,
        )),
        Err(_) => Status::Partial,
    }
}

/// [`pdu_len`] that also rejects a declared DataSegmentLength above
/// `max_data_segment_len` (our MaxRecvDataSegmentLength, or a login/text limit) with
/// [`Error::DataSegmentTooLong`], before anything is buffered for it. The caller answers
/// with a Reject or closes the connection.
pub fn pdu_len_checked(
    buf: &[u8],
    digests: Digests,
    max_data_segment_len: u32,
) -> Result<Status<usize>, Error> {
    let Ok(bhs) = Bhs::new_checked(buf) else {
        return Ok(Status::Partial);
    };
    let len = bhs.data_segment_len();
    if len > max_data_segment_len {
        return Err(Error::DataSegmentTooLong {
            len,
            max: max_data_segment_len,
        });
    }
    Ok(Status::Complete(wire_len(
        bhs.header_len(),
        to_usize(len),
        digests,
    )))
}

/// The length of the header of the PDU at the start of `buf` (BHS, AHS and header
/// digest): where its data segment starts. `Partial` while fewer than 48 bytes are
/// buffered.
pub fn header_wire_len(buf: &[u8], digests: Digests) -> Status<usize> {
    match Bhs::new_checked(buf) {
        Ok(bhs) => Status::Complete(bhs.header_len() + digests.header_len()),
        Err(_) => Status::Partial,
    }
}

fn read_digest(buf: &[u8], at: usize) -> Result<u32, Error> {
    match buf.get(at..at + DIGEST_LEN) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(Error::Truncated),
    }
}

/// Any PDU, initiator or target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Pdu<'a> {
    NopOut(NopOut<'a>),
    ScsiCommand(ScsiCommand<'a>),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest<'a>),
    TextRequest(TextRequest<'a>),
    DataOut(DataOut<'a>),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn<'a>),
    ScsiResponse(ScsiResponse<'a>),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse<'a>),
    TextResponse(TextResponse<'a>),
    DataIn(DataIn<'a>),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage<'a>),
    Reject(Reject<'a>),
}

macro_rules! each_pdu {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Pdu::NopOut($p) => $e,
            Pdu::ScsiCommand($p) => $e,
            Pdu::TaskMgmtRequest($p) => $e,
            Pdu::LoginRequest($p) => $e,
            Pdu::TextRequest($p) => $e,
            Pdu::DataOut($p) => $e,
            Pdu::LogoutRequest($p) => $e,
            Pdu::Snack($p) => $e,
            Pdu::NopIn($p) => $e,
            Pdu::ScsiResponse($p) => $e,
            Pdu::TaskMgmtResponse($p) => $e,
            Pdu::LoginResponse($p) => $e,
            Pdu::TextResponse($p) => $e,
            Pdu::DataIn($p) => $e,
            Pdu::LogoutResponse($p) => $e,
            Pdu::R2t($p) => $e,
            Pdu::AsyncMessage($p) => $e,
            Pdu::Reject($p) => $e,
        }
    };
}

impl<'a> Pdu<'a> {
    /// Parse one whole PDU at the start of `buf`, verifying the digests in use.
    /// Returns the PDU (borrowing its AHS and data from `buf`) and the number of bytes it
    /// occupied; the caller discards exactly those.
    ///
    /// `buf` may hold more than one PDU; if it holds less than one, the result is
    /// [`Error::Truncated`] (use [`pdu_len_checked`] first to know when to call this).
    pub fn parse(buf: &'a [u8], digests: Digests) -> Result<(Pdu<'a>, usize), Error> {
        let bhs = Bhs::new_checked(buf)?;
        let head = bhs.header_len() + digests.header_len();
        let total = wire_len(bhs.header_len(), to_usize(bhs.data_segment_len()), digests);
        let pdu = buf.get(..total).ok_or(Error::Truncated)?;
        let (header, rest) = pdu.split_at(head);
        Ok((Self::parse_split(header, rest, digests)?, total))
    }

    /// Parse one whole PDU received in two pieces: `header` is its BHS, AHS and header
    /// digest ([`header_wire_len`] bytes), `rest` is its data segment with the padding
    /// and data digest that follow it, exactly as long as the header declares. This lets
    /// a receiver place a large data segment straight where it belongs (a task buffer)
    /// instead of behind the header. Digests are verified as in [`Pdu::parse`]; the AHS
    /// is borrowed from `header`, the data from `rest`.
    pub fn parse_split(
        header: &'a [u8],
        rest: &'a [u8],
        digests: Digests,
    ) -> Result<Pdu<'a>, Error> {
        let bhs = Bhs::new_checked(header)?;
        let header_len = bhs.header_len();
        let data_len = to_usize(bhs.data_segment_len());
        let padded = data_len + pad_len(data_len);
        if header.len() != header_len + digests.header_len()
            || rest.len() != padded + digests.data_len(data_len)
        {
            return Err(Error::Truncated);
        }
        let (header, received) = header.split_at(header_len);
        if digests.header {
            let received = read_digest(received, 0)?;
            let computed = digest::header_digest(header);
            if received != computed {
                return Err(Error::HeaderDigest { computed, received });
            }
        }
        let (data_and_pad, received) = rest.split_at(padded);
        let data = &data_and_pad[..data_len];
        if digests.data && data_len > 0 {
            let received = read_digest(received, 0)?;
            let computed = digest::crc32c(data_and_pad);
            if received != computed {
                return Err(Error::DataDigest { computed, received });
            }
        }
        Self::parse_parts(&bhs, &header[BHS_LEN..], data)
    }

    /// Parse from already separated parts: a checked header, its AHS area and its data
    /// segment (without padding or digests).
    pub fn parse_parts<T: AsRef<[u8]>>(
        bhs: &Bhs<T>,
        ahs: &'a [u8],
        data: &'a [u8],
    ) -> Result<Pdu<'a>, Error> {
        Ok(match bhs.opcode() {
            Opcode::NopOut => Pdu::NopOut(NopOut::parse(bhs, ahs, data)?),
            Opcode::ScsiCommand => Pdu::ScsiCommand(ScsiCommand::parse(bhs, ahs, data)?),
            Opcode::TaskMgmtRequest => {
                Pdu::TaskMgmtRequest(TaskMgmtRequest::parse(bhs, ahs, data)?)
            }
            Opcode::LoginRequest => Pdu::LoginRequest(LoginRequest::parse(bhs, ahs, data)?),
            Opcode::TextRequest => Pdu::TextRequest(TextRequest::parse(bhs, ahs, data)?),
            Opcode::DataOut => Pdu::DataOut(DataOut::parse(bhs, ahs, data)?),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest::parse(bhs, ahs, data)?),
            Opcode::Snack => Pdu::Snack(Snack::parse(bhs, ahs, data)?),
            Opcode::NopIn => Pdu::NopIn(NopIn::parse(bhs, ahs, data)?),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse::parse(bhs, ahs, data)?),
            Opcode::TaskMgmtResponse => {
                Pdu::TaskMgmtResponse(TaskMgmtResponse::parse(bhs, ahs, data)?)
            }
            Opcode::LoginResponse => Pdu::LoginResponse(LoginResponse::parse(bhs, ahs, data)?),
            Opcode::TextResponse => Pdu::TextResponse(TextResponse::parse(bhs, ahs, data)?),
            Opcode::DataIn => Pdu::DataIn(DataIn::parse(bhs, ahs, data)?),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse::parse(bhs, ahs, data)?),
            Opcode::R2t => Pdu::R2t(R2t::parse(bhs, ahs, data)?),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage::parse(bhs, ahs, data)?),
            Opcode::Reject => Pdu::Reject(Reject::parse(bhs, ahs, data)?),
            Opcode::Unknown(op) => return Err(Error::UnknownOpcode(op)),
        })
    }

    /// The opcode.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NopOut,
            Pdu::ScsiCommand(_) => Opcode::ScsiCommand,
            Pdu::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Pdu::LoginRequest(_) => Opcode::LoginRequest,
            Pdu::TextRequest(_) => Opcode::TextRequest,
            Pdu::DataOut(_) => Opcode::DataOut,
            Pdu::LogoutRequest(_) => Opcode::LogoutRequest,
            Pdu::Snack(_) => Opcode::Snack,
            Pdu::NopIn(_) => Opcode::NopIn,
            Pdu::ScsiResponse(_) => Opcode::ScsiResponse,
            Pdu::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Pdu::LoginResponse(_) => Opcode::LoginResponse,
            Pdu::TextResponse(_) => Opcode::TextResponse,
            Pdu::DataIn(_) => Opcode::DataIn,
            Pdu::LogoutResponse(_) => Opcode::LogoutResponse,
            Pdu::R2t(_) => Opcode::R2t,
            Pdu::AsyncMessage(_) => Opcode::AsyncMessage,
            Pdu::Reject(_) => Opcode::Reject,
        }
    }

    /// The Initiator Task Tag (0xffffffff for Async Message and Reject).
    pub const fn itt(&self) -> u32 {
        match self {
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => super::RESERVED_TAG,
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::Snack(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
        }
    }

    /// The data segment this PDU carries (empty for PDUs without one).
    pub const fn data(&self) -> &'a [u8] {
        match self {
            Pdu::NopOut(p) => p.data,
            Pdu::ScsiCommand(p) => p.data,
            Pdu::LoginRequest(p) => p.data,
            Pdu::TextRequest(p) => p.data,
            Pdu::DataOut(p) => p.data,
            Pdu::NopIn(p) => p.data,
            Pdu::ScsiResponse(p) => p.data,
            Pdu::LoginResponse(p) => p.data,
            Pdu::TextResponse(p) => p.data,
            Pdu::DataIn(p) => p.data,
            Pdu::AsyncMessage(p) => p.data,
            Pdu::Reject(p) => p.data,
            Pdu::TaskMgmtRequest(_)
            | Pdu::LogoutRequest(_)
            | Pdu::Snack(_)
            | Pdu::TaskMgmtResponse(_)
            | Pdu::LogoutResponse(_)
            | Pdu::R2t(_) => &[],
        }
    }

    /// Header length: BHS + AHS.
    pub fn buffer_len(&self) -> usize {
        each_pdu!(self, p => p.buffer_len())
    }

    /// Total bytes on the wire with `digests`.
    pub fn wire_len(&self, digests: Digests) -> usize {
        wire_len(self.buffer_len(), self.data().len(), digests)
    }

    /// Write BHS + AHS (no digest) with DataSegmentLength = `data().len()`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.emit_with_data_len(out, self.data().len())
    }

    fn emit_with_data_len(&self, out: &mut [u8], data_len: usize) -> Result<usize, Error> {
        each_pdu!(self, p => p.emit_with_data_len(out, data_len))
    }
}

macro_rules! from_repr {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl<'a> From<$ty> for Pdu<'a> {
            fn from(p: $ty) -> Self {
                Pdu::$variant(p)
            }
        })*
    };
}

from_repr!(
    NopOut(NopOut<'a>),
    ScsiCommand(ScsiCommand<'a>),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest<'a>),
    TextRequest(TextRequest<'a>),
    DataOut(DataOut<'a>),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn<'a>),
    ScsiResponse(ScsiResponse<'a>),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse<'a>),
    TextResponse(TextResponse<'a>),
    DataIn(DataIn<'a>),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage<'a>),
    Reject(Reject<'a>),
);

/// Write a whole PDU into `out`: BHS, AHS, header digest, data, padding, data digest.
/// Returns the bytes written ([`Pdu::wire_len`]). For small PDUs (login, text, status,
/// reject); nothing is written if `out` is too small.
pub fn emit_pdu(pdu: &Pdu<'_>, digests: Digests, out: &mut [u8]) -> Result<usize, Error> {
    let data = pdu.data();
    let total = pdu.wire_len(digests);
    let out = out
        .get_mut(..total)
        .ok_or(Error::BufferTooSmall { required: total })?;
    let header_len = emit_header(pdu, data.len(), digests, out)?;
    let rest = &mut out[header_len..];
    let (data_out, rest) = rest.split_at_mut(data.len());
    data_out.copy_from_slice(data);
    let trailer = DataTrailer::new(data, digests);
    rest.copy_from_slice(trailer.as_bytes());
    Ok(total)
}

/// Write BHS + AHS with DataSegmentLength = `data_len`, followed by the header digest when
/// enabled; returns the bytes written. The caller sends `data_len` bytes of data from its
/// own buffer next, then a [`DataTrailer`].
///
/// `data_len` overrides the length of the data the repr carries (a Data-In repr built by
/// the session layer usually carries none). PDUs without a data segment require 0.
pub fn emit_header(
    pdu: &Pdu<'_>,
    data_len: usize,
    digests: Digests,
    out: &mut [u8],
) -> Result<usize, Error> {
    if data_len > MAX_DATA_SEGMENT_LEN as usize {
        return Err(Error::DataSegmentTooLong {
            len: u32::try_from(data_len).unwrap_or(u32::MAX),
            max: MAX_DATA_SEGMENT_LEN,
        });
    }
    let required = pdu.buffer_len() + digests.header_len();
    if out.len() < required {
        return Err(Error::BufferTooSmall { required });
    }
    let header_len = pdu.emit_with_data_len(out, data_len)?;
    if digests.header {
        let crc = digest::header_digest(&out[..header_len]);
        out[header_len..header_len + DIGEST_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(header_len + DIGEST_LEN)
    } else {
        Ok(header_len)
    }
}

/// The bytes that follow a data segment: zero padding to 4 bytes and, when data digests
/// are on and the segment is not empty, the data digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataTrailer {
    bytes: [u8; 7],
    len: u8,
}

impl DataTrailer {
    /// The trailer for `data` (computes the data digest if enabled).
    pub fn new(data: &[u8], digests: Digests) -> Self {
        let digest = if digests.data && !data.is_empty() {
            let mut d = DataDigest::new();
            d.update(data);
            Some(d.finish())
        } else {
            None
        };
        Self::with_digest(data.len(), digest)
    }

    /// The trailer for a data segment of `data_len` bytes whose digest the caller computed
    /// (e.g. with [`DataDigest`] over scattered buffers); `None` for no digest.
    pub fn with_digest(data_len: usize, digest: Option<u32>) -> Self {
        let mut bytes = [0u8; 7];
        let pad = pad_len(data_len);
        let mut len = pad;
        if let Some(d) = digest.filter(|_| data_len > 0) {
            bytes[pad..pad + DIGEST_LEN].copy_from_slice(&d.to_le_bytes());
            len += DIGEST_LEN;
        }
        DataTrailer {
            bytes,
            len: len as u8,
        }
    }

    /// The bytes to send after the data.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Number of bytes to send after the data (0..=7).
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether nothing follows the data.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DataInFlags, LoginStatus, RejectReason, Stage, TmfResponse};

    fn data_in(data: &[u8]) -> DataIn<'_> {
        DataIn {
            flags: DataInFlags::FINAL,
            status: 0,
            lun: 0x0001_0000_0000_0000,
            itt: 0x10,
            ttt: 0xffff_ffff,
            stat_sn: 5,
            exp_cmd_sn: 6,
            max_cmd_sn: 70,
            data_sn: 2,
            buffer_offset: 8192,
            residual: 0,
            data,
        }
    }

    #[test]
    fn pad_lengths() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 511, 512].map(pad_len),
            [0, 3, 2, 1, 0, 3, 1, 0]
        );
        assert_eq!(pad_len(usize::MAX), 1);
    }

    #[test]
    fn framing_lengths() {
        let mut bhs = [0u8; 48];
        assert_eq!(pdu_len(&bhs[..47], Digests::NONE), Status::Partial);
        assert_eq!(pdu_len(&[], Digests::ALL), Status::Partial);
        assert_eq!(pdu_len(&bhs, Digests::NONE), Status::Complete(48));
        // No data: no data digest even when enabled.
        assert_eq!(pdu_len(&bhs, Digests::ALL), Status::Complete(52));
        bhs[4] = 2; // 8 bytes of AHS
        bhs[7] = 5; // 5 data bytes -> 3 padding
        assert_eq!(pdu_len(&bhs, Digests::NONE), Status::Complete(48 + 8 + 8));
        assert_eq!(
            pdu_len(&bhs, Digests::ALL),
            Status::Complete(48 + 8 + 4 + 8 + 4)
        );
        // Largest possible: 255 AHS words, 2^24 - 1 bytes of data.
        bhs[4] = 255;
        bhs[5..8].copy_from_slice(&[0xff; 3]);
        assert_eq!(
            pdu_len(&bhs, Digests::ALL),
            Status::Complete(48 + 1020 + 4 + 0x0100_0000 + 4)
        );
        assert_eq!(
            pdu_len_checked(&bhs, Digests::ALL, 8192),
            Err(Error::DataSegmentTooLong {
                len: 0x00ff_ffff,
                max: 8192
            })
        );
        bhs[5..8].copy_from_slice(&[0, 0x20, 0]);
        assert_eq!(
            pdu_len_checked(&bhs, Digests::NONE, 8192),
            Ok(Status::Complete(48 + 1020 + 8192))
        );
        assert_eq!(
            pdu_len_checked(&bhs[..3], Digests::NONE, 0),
            Ok(Status::Partial)
        );
        assert_eq!(Status::Complete(3).complete(), Some(3));
        assert!(Status::<u8>::Partial.is_partial());
    }

    #[test]
    fn header_then_data_then_trailer_equals_whole_pdu() {
        let payload = [0x5au8; 13];
        for digests in [
            Digests::NONE,
            Digests::ALL,
            Digests {
                header: true,
                data: false,
            },
        ] {
            let full = Pdu::DataIn(data_in(&payload));
            let mut whole = [0u8; 128];
            let n = emit_pdu(&full, digests, &mut whole).unwrap();
            assert_eq!(n, full.wire_len(digests));

            // The runtime's path: a repr without data, the length given separately.
            let header_only = Pdu::DataIn(data_in(&[]));
            let mut hdr = [0u8; 52];
            let h = emit_header(&header_only, payload.len(), digests, &mut hdr).unwrap();
            assert_eq!(h, 48 + digests.header_len());
            let trailer = DataTrailer::new(&payload, digests);
            assert_eq!(trailer.len(), 3 + digests.data_len(13));
            let mut joined = [0u8; 128];
            joined[..h].copy_from_slice(&hdr[..h]);
            joined[h..h + 13].copy_from_slice(&payload);
            joined[h + 13..h + 13 + trailer.len()].copy_from_slice(trailer.as_bytes());
            assert_eq!(&joined[..n], &whole[..n]);

            let (back, used) = Pdu::parse(&whole[..n], digests).unwrap();
            assert_eq!(used, n);
            assert_eq!(back, full);
        }
    }

    #[test]
    fn trailer_with_precomputed_digest() {
        let mut d = DataDigest::new();
        d.update(b"ab");
        d.update(b"c");
        let t = DataTrailer::with_digest(3, Some(d.finish()));
        assert_eq!(t, DataTrailer::new(b"abc", Digests::ALL));
        assert_eq!(t.as_bytes()[0], 0);
        assert_eq!(
            t.as_bytes()[1..],
            crate::digest::crc32c(b"abc\0").to_le_bytes()
        );
        // No data: nothing at all follows.
        assert!(DataTrailer::new(b"", Digests::ALL).is_empty());
        assert!(DataTrailer::with_digest(0, Some(7)).is_empty());
        assert_eq!(DataTrailer::new(b"abcd", Digests::NONE).len(), 0);
    }

    #[test]
    fn emit_errors() {
        let pdu = Pdu::DataIn(data_in(&[1, 2, 3]));
        let mut small = [0u8; 50];
        assert_eq!(
            emit_pdu(&pdu, Digests::NONE, &mut small),
            Err(Error::BufferTooSmall { required: 52 })
        );
        assert_eq!(
            emit_header(&pdu, 3, Digests::ALL, &mut [0u8; 51]),
            Err(Error::BufferTooSmall { required: 52 })
        );
        assert_eq!(
            emit_header(&pdu, 0x0100_0000, Digests::NONE, &mut [0u8; 64]),
            Err(Error::DataSegmentTooLong {
                len: 0x0100_0000,
                max: MAX_DATA_SEGMENT_LEN
            })
        );
        // PDUs without a data segment refuse a data length.
        let tmf = Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponse::FunctionComplete,
            itt: 1,
            stat_sn: 2,
            exp_cmd_sn: 3,
            max_cmd_sn: 4,
        });
        assert_eq!(
            emit_header(&tmf, 4, Digests::NONE, &mut [0u8; 64]),
            Err(Error::InvalidField {
                field: "DataSegmentLength",
                value: 4
            })
        );
        assert_eq!(emit_header(&tmf, 0, Digests::NONE, &mut [0u8; 64]), Ok(48));
    }

    #[test]
    fn login_response_whole_pdu_bytes() {
        let text = b"TargetPortalGroupTag=1\0";
        let resp = LoginResponse {
            cont: false,
            csg: Stage::SecurityNegotiation,
            nsg: Some(Stage::LoginOperational),
            version_max: 0,
            version_active: 0,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            tsih: 0x0001,
            itt: 0xdead_beef,
            stat_sn: 0x11,
            exp_cmd_sn: 0x22,
            max_cmd_sn: 0x33,
            status: LoginStatus::SUCCESS,
            data: text,
        };
        let mut out = [0xffu8; 80];
        let n = emit_pdu(&resp.into(), Digests::NONE, &mut out).unwrap();
        assert_eq!(n, 48 + 24);
        let mut expect = [0u8; 72];
        expect[..8].copy_from_slice(&[0x23, 0x81, 0, 0, 0, 0, 0, 23]);
        expect[8..16].copy_from_slice(&[0x80, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1]);
        expect[16..20].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        expect[24..36].copy_from_slice(&[0, 0, 0, 0x11, 0, 0, 0, 0x22, 0, 0, 0, 0x33]);
        expect[48..71].copy_from_slice(text);
        assert_eq!(&out[..n], &expect[..]);
        assert_eq!(out[n], 0xff);
    }

    #[test]
    fn truncated_and_garbage_input() {
        let mut buf = [0u8; 64];
        buf[0] = 0x04; // Text Request
        buf[7] = 9; // 9 data bytes + 3 padding = 60 total
        assert_eq!(Pdu::parse(&buf[..59], Digests::NONE), Err(Error::Truncated));
        assert!(Pdu::parse(&buf[..60], Digests::NONE).is_ok());
        assert_eq!(Pdu::parse(&buf[..47], Digests::NONE), Err(Error::Truncated));
        // Digests enabled: the header digest must be there too.
        assert_eq!(Pdu::parse(&buf[..50], Digests::ALL), Err(Error::Truncated));
        // Unknown and vendor-specific opcodes.
        for op in [0x07u8, 0x1c, 0x1e, 0x27, 0x30, 0x3c, 0x3e] {
            let mut b = [0u8; 48];
            b[0] = op;
            let err = Pdu::parse(&b, Digests::NONE).unwrap_err();
            assert_eq!(err, Error::UnknownOpcode(op));
            assert_eq!(err.reject_reason(), Some(RejectReason::CommandNotSupported));
        }
        // 0xff bytes everywhere: opcode 0x3f (Reject) with a huge data segment.
        let ff = [0xffu8; 100];
        assert_eq!(Pdu::parse(&ff, Digests::NONE), Err(Error::Truncated));
        assert_eq!(
            pdu_len_checked(&ff, Digests::NONE, 65536),
            Err(Error::DataSegmentTooLong {
                len: 0x00ff_ffff,
                max: 65536
            })
        );
    }

    #[test]
    fn errors_display_and_blame() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            Error::UnknownOpcode(0x1c).to_string(),
            "unknown opcode 0x1c"
        );
        assert_eq!(
            Error::BufferTooSmall { required: 52 }.to_string(),
            "output buffer too small: 52 bytes required"
        );
        assert_eq!(
            Error::ReservedValue {
                field: "CSG",
                value: 2
            }
            .to_string(),
            "reserved value 0x2 in field CSG"
        );
        assert_eq!(
            Error::HeaderDigest {
                computed: 1,
                received: 2
            }
            .to_string(),
            "header digest mismatch: computed 0x00000001, received 0x00000002"
        );
        assert_eq!(
            Error::BufferTooSmall { required: 1 }.blame(),
            crate::wire::Blame::Local
        );
        assert_eq!(Error::Truncated.blame(), crate::wire::Blame::Peer);
        assert_eq!(
            Error::DataSegmentTooLong { len: 2, max: 1 }.reject_reason(),
            Some(RejectReason::ProtocolError)
        );
        assert_eq!(
            Error::InvalidAhs.reject_reason(),
            Some(RejectReason::InvalidPduField)
        );
    }
}
