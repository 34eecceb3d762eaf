//! NBD wire format: the fixed-newstyle handshake messages and the transmission-phase
//! request and simple reply, as plain encode/decode functions over byte arrays (no I/O).
//!
//! Numbers are big-endian, as the NBD protocol specifies. Only what this client sends or
//! accepts is here: `NBD_OPT_GO` (with `NBD_INFO_BLOCK_SIZE`), `NBD_OPT_EXPORT_NAME`,
//! `NBD_OPT_ABORT`, `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT`
//! (`base:allocation`), the commands READ/WRITE/DISC/FLUSH/TRIM/WRITE_ZEROES/BLOCK_STATUS,
//! simple replies, and the headers and fixed parts of structured reply chunks (the reader
//! in `mod.rs` reads their payloads piecewise, so no length field sizes an allocation).

use std::fmt;

/// `NBDMAGIC`: the first 8 bytes a server sends.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation (second server word, and the option request magic).
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle negotiation magic (not supported).
pub(crate) const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (only once `NBD_OPT_STRUCTURED_REPLY` was acknowledged).
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub(crate) const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub(crate) const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Option `NBD_OPT_EXPORT_NAME`.
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
/// Option `NBD_OPT_ABORT`.
pub(crate) const OPT_ABORT: u32 = 2;
/// Option `NBD_OPT_GO`.
pub(crate) const OPT_GO: u32 = 7;
/// Option `NBD_OPT_STRUCTURED_REPLY`.
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option `NBD_OPT_SET_META_CONTEXT`.
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply `NBD_REP_ACK`.
pub(crate) const REP_ACK: u32 = 1;
/// Option reply `NBD_REP_INFO`.
pub(crate) const REP_INFO: u32 = 3;
/// Option reply `NBD_REP_META_CONTEXT`: a context id and its name.
pub(crate) const REP_META_CONTEXT: u32 = 4;
/// Bit set in every option error reply.
pub(crate) const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP`: the server does not know the option.
pub(crate) const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;

/// Info `NBD_INFO_EXPORT`: size and transmission flags.
pub(crate) const INFO_EXPORT: u16 = 0;
/// Info `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the other flags are valid.
pub(crate) const TF_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub(crate) const TF_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: the server understands `NBD_CMD_FLUSH`.
pub(crate) const TF_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the server understands `NBD_CMD_FLAG_FUA`.
pub(crate) const TF_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: the server understands `NBD_CMD_TRIM`.
pub(crate) const TF_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: the server understands `NBD_CMD_WRITE_ZEROES`.
pub(crate) const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// Command flag: force unit access.
pub(crate) const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag of `NBD_CMD_BLOCK_STATUS`: one extent per context is enough.
pub(crate) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// The metadata context of allocation status.
pub(crate) const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is not allocated (a hole).
pub(crate) const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes.
pub(crate) const STATE_ZERO: u32 = 1 << 1;

/// Structured reply flag: the last chunk of the reply.
pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type `NBD_REPLY_TYPE_NONE`: no payload, ends a reply.
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
/// Chunk type `NBD_REPLY_TYPE_OFFSET_DATA`: an offset and data for a READ.
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type `NBD_REPLY_TYPE_OFFSET_HOLE`: an offset and a length that read as zeroes.
pub(crate) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type `NBD_REPLY_TYPE_BLOCK_STATUS`: a context id and extent descriptors.
pub(crate) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every error chunk type (`NBD_REPLY_TYPE_ERROR`, `..._ERROR_OFFSET`, ...).
pub(crate) const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// Size of the fixed part of an error chunk (error number, message length).
pub(crate) const ERROR_CHUNK_LEN: usize = 6;
/// Size of one `NBD_REPLY_TYPE_BLOCK_STATUS` extent descriptor.
pub(crate) const EXTENT_LEN: usize = 8;

/// The longest option reply payload accepted (servers send short infos and messages).
pub(crate) const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// A transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// `NBD_CMD_READ`.
    Read = 0,
    /// `NBD_CMD_WRITE`.
    Write = 1,
    /// `NBD_CMD_DISC`.
    Disc = 2,
    /// `NBD_CMD_FLUSH`.
    Flush = 3,
    /// `NBD_CMD_TRIM`.
    Trim = 4,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes = 6,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus = 7,
}

/// A transmission request header (28 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub(crate) flags: u16,
    /// The command.
    pub(crate) cmd: Cmd,
    /// The cookie the reply carries back.
    pub(crate) handle: u64,
    /// Byte offset.
    pub(crate) offset: u64,
    /// Byte length.
    pub(crate) len: u32,
}

/// Size of an encoded [`Request`].
pub(crate) const REQUEST_LEN: usize = 28;
/// Size of a simple reply header, and of the part of a structured chunk header before its
/// length field.
pub(crate) const SIMPLE_REPLY_LEN: usize = 16;

impl Request {
    /// The wire bytes.
    pub(crate) fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&(self.cmd as u16).to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SimpleReply {
    /// NBD error number (0 = success).
    pub(crate) error: u32,
    /// The request's cookie.
    pub(crate) handle: u64,
}

/// Something the server sent that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtoError {
    /// A reply with a magic this client does not accept (the value).
    BadMagic(u32),
    /// A structured reply although none was negotiated.
    Structured,
    /// A structured chunk whose type does not fit the request, or is unknown (the type).
    ChunkType(u16),
    /// A structured chunk whose length does not fit its type (type, length).
    ChunkLength(u16, u32),
    /// An `OFFSET_DATA`/`OFFSET_HOLE` chunk outside the READ's range.
    ChunkRange,
    /// `NBD_REPLY_TYPE_NONE` without the DONE flag.
    NoneNotDone,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadMagic(m) => write!(f, "reply with bad magic {m:#010x}"),
            ProtoError::Structured => f.write_str("structured reply that was not negotiated"),
            ProtoError::ChunkType(t) => write!(f, "unexpected structured reply chunk type {t}"),
            ProtoError::ChunkLength(t, l) => {
                write!(f, "structured reply chunk of type {t} with bad length {l}")
            }
            ProtoError::ChunkRange => f.write_str("read reply chunk outside the request"),
            ProtoError::NoneNotDone => f.write_str("NBD_REPLY_TYPE_NONE without DONE flag"),
        }
    }
}

/// The first 16 bytes of a reply: a whole simple reply header, or a structured chunk
/// header without its length (the 4 bytes that follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyHead {
    /// A simple reply.
    Simple(SimpleReply),
    /// A structured reply chunk.
    Structured {
        /// `REPLY_FLAG_*`.
        flags: u16,
        /// `REPLY_TYPE_*`.
        kind: u16,
        /// The request's cookie.
        handle: u64,
    },
}

impl ReplyHead {
    /// Parses the first 16 bytes of a reply; a structured chunk is accepted only if
    /// structured replies were negotiated.
    pub(crate) fn decode(b: &[u8; SIMPLE_REPLY_LEN], structured: bool) -> Result<Self, ProtoError> {
        match be32(b, 0) {
            STRUCTURED_REPLY_MAGIC if structured => Ok(ReplyHead::Structured {
                flags: be16(b, 4),
                kind: be16(b, 6),
                handle: be64(b, 8),
            }),
            _ => SimpleReply::decode(b).map(ReplyHead::Simple),
        }
    }
}

/// The fixed part of an error chunk: the NBD error number (0 is not allowed and read as
/// EIO by [`errno_of`]) and the length of the message that follows.
pub(crate) fn parse_error_chunk(b: &[u8; ERROR_CHUNK_LEN]) -> (u32, u16) {
    (be32(b, 0), be16(b, 4))
}

/// One block status extent descriptor: (length in bytes, `STATE_*` flags).
pub(crate) fn parse_extent(b: &[u8; EXTENT_LEN]) -> (u32, u32) {
    (be32(b, 0), be32(b, 4))
}

impl SimpleReply {
    /// Parses a reply header.
    pub(crate) fn decode(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<Self, ProtoError> {
        let magic = be32(b, 0);
        match magic {
            SIMPLE_REPLY_MAGIC => Ok(SimpleReply {
                error: be32(b, 4),
                handle: be64(b, 8),
            }),
            STRUCTURED_REPLY_MAGIC => Err(ProtoError::Structured),
            m => Err(ProtoError::BadMagic(m)),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    u16::from_be_bytes(x)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_be_bytes(x)
}

/// Appends an option request: `IHAVEOPT`, option, length, data.
pub(crate) fn encode_option(opt: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The data of `NBD_OPT_GO` for `export`, asking for the block-size info.
pub(crate) fn go_data(export: &str) -> Vec<u8> {
    let name = export.as_bytes();
    let mut d = Vec::with_capacity(8 + name.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d
}

/// The data of `NBD_OPT_SET_META_CONTEXT` for `export`: one query, `context`.
pub(crate) fn meta_context_data(export: &str, context: &str) -> Vec<u8> {
    let (name, q) = (export.as_bytes(), context.as_bytes());
    let mut d = Vec::with_capacity(12 + name.len() + q.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name);
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&(q.len() as u32).to_be_bytes());
    d.extend_from_slice(q);
    d
}

/// Parses an `NBD_REP_META_CONTEXT` payload: the context id and its name (`None` if the
/// payload is shorter than the id).
pub(crate) fn parse_meta_context(d: &[u8]) -> Option<(u32, &[u8])> {
    let name = d.get(4..)?;
    Some((be32(d, 0), name))
}

/// An option reply header (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptionReply {
    /// The option it answers.
    pub(crate) option: u32,
    /// `REP_*`.
    pub(crate) kind: u32,
    /// Length of the data that follows.
    pub(crate) len: u32,
}

/// Size of an option reply header.
pub(crate) const OPTION_REPLY_LEN: usize = 20;

impl OptionReply {
    /// Parses an option reply header; `None` on a bad magic.
    pub(crate) fn decode(b: &[u8; OPTION_REPLY_LEN]) -> Option<Self> {
        (be64(b, 0) == OPT_REPLY_MAGIC).then(|| OptionReply {
            option: be32(b, 8),
            kind: be32(b, 12),
            len: be32(b, 16),
        })
    }
}

/// An `NBD_REP_INFO` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Info {
    /// `NBD_INFO_EXPORT`.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload.
        max: u32,
    },
    /// Another info type (ignored), or a payload too short for its type.
    Other(u16),
}

/// Parses an `NBD_REP_INFO` payload.
pub(crate) fn parse_info(d: &[u8]) -> Info {
    let kind = be16(d, 0);
    match kind {
        INFO_EXPORT if d.len() >= 12 => Info::Export {
            size: be64(d, 2),
            flags: be16(d, 10),
        },
        INFO_BLOCK_SIZE if d.len() >= 14 => Info::BlockSize {
            min: be32(d, 2),
            preferred: be32(d, 6),
            max: be32(d, 10),
        },
        k => Info::Other(k),
    }
}

/// Parses the answer to `NBD_OPT_EXPORT_NAME` (size and flags; the zero padding, if any,
/// is read separately).
pub(crate) fn parse_export_name_reply(b: &[u8; 10]) -> (u64, u16) {
    (be64(b, 0), be16(b, 8))
}

/// The name of an option error reply, for messages.
pub(crate) fn rep_error_name(kind: u32) -> &'static str {
    match kind & !REP_FLAG_ERROR {
        1 => "unsupported option",
        2 => "forbidden by server policy",
        3 => "invalid option",
        4 => "not supported on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size negotiation required",
        9 => "request too big",
        _ => "error",
    }
}

/// The libc errno for an NBD error number (the NBD values are Linux's; anything unknown
/// is EIO).
pub(crate) fn errno_of(error: u32) -> i32 {
    match error {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        30 => libc::EROFS,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            cmd: Cmd::Write,
            handle: 0x0102_0304_0506_0708,
            offset: 0x1000,
            len: 512,
        };
        assert_eq!(
            r.encode(),
            [
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10,
                0, 0, 0, 2, 0
            ]
        );
        let r = Request {
            flags: 0,
            cmd: Cmd::WriteZeroes,
            handle: 9,
            offset: 0,
            len: 0,
        };
        assert_eq!(&r.encode()[4..8], &[0, 0, 0, 6]);
    }

    #[test]
    fn simple_reply_parses_and_rejects() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[0x67, 0x44, 0x66, 0x98]);
        b[7] = 5;
        b[15] = 42;
        assert_eq!(
            SimpleReply::decode(&b),
            Ok(SimpleReply {
                error: 5,
                handle: 42
            })
        );
        b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(SimpleReply::decode(&b), Err(ProtoError::Structured));
        b[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            SimpleReply::decode(&b),
            Err(ProtoError::BadMagic(0xdead_beef))
        );
        assert_eq!(
            ProtoError::BadMagic(0xdead_beef).to_string(),
            "reply with bad magic 0xdeadbeef"
        );
    }

    #[test]
    fn option_messages() {
        let mut out = Vec::new();
        encode_option(OPT_GO, &go_data("exp"), &mut out);
        assert_eq!(
            out,
            [
                b"IHAVEOPT".as_slice(),
                &[0, 0, 0, 7, 0, 0, 0, 11],
                &[0, 0, 0, 3],
                b"exp",
                &[0, 1, 0, 3]
            ]
            .concat()
        );
        let mut h = [0u8; 20];
        h[..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        h[11] = 7;
        h[12] = 0x80;
        h[15] = 1;
        h[19] = 4;
        assert_eq!(
            OptionReply::decode(&h),
            Some(OptionReply {
                option: 7,
                kind: REP_ERR_UNSUP,
                len: 4
            })
        );
        h[0] = 1;
        assert_eq!(OptionReply::decode(&h), None);
        assert_eq!(rep_error_name(REP_FLAG_ERROR | 6), "unknown export");
        assert_eq!(rep_error_name(REP_FLAG_ERROR | 99), "error");
    }

    #[test]
    fn infos() {
        let d = [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x6d];
        assert_eq!(
            parse_info(&d),
            Info::Export {
                size: 1 << 20,
                flags: 0x6d
            }
        );
        let d = [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0];
        assert_eq!(
            parse_info(&d),
            Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20
            }
        );
        // Too short for its type, or unknown.
        assert_eq!(parse_info(&[0, 0, 1]), Info::Other(0));
        assert_eq!(parse_info(&[0, 1]), Info::Other(1));
        assert_eq!(parse_info(&[]), Info::Other(0));
        assert_eq!(
            parse_export_name_reply(&[0, 0, 0, 0, 0, 0, 2, 0, 0, 3]),
            (512, 3)
        );
    }

    #[test]
    fn structured_reply_heads() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[5] = 1; // DONE
        b[7] = 5; // BLOCK_STATUS
        b[15] = 9;
        assert_eq!(
            ReplyHead::decode(&b, true),
            Ok(ReplyHead::Structured {
                flags: REPLY_FLAG_DONE,
                kind: REPLY_TYPE_BLOCK_STATUS,
                handle: 9
            })
        );
        // Not negotiated: refused.
        assert_eq!(ReplyHead::decode(&b, false), Err(ProtoError::Structured));
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(
            ReplyHead::decode(&b, true),
            Ok(ReplyHead::Simple(SimpleReply {
                error: 0x0001_0005,
                handle: 9
            }))
        );
        b[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            ReplyHead::decode(&b, true),
            Err(ProtoError::BadMagic(0x0102_0304))
        );
        assert_eq!(parse_error_chunk(&[0, 0, 0, 5, 0x01, 0x02]), (5, 0x0102));
        assert_eq!(
            parse_extent(&[0, 0, 0x10, 0, 0, 0, 0, 3]),
            (4096, STATE_HOLE | STATE_ZERO)
        );
        assert_eq!(
            ProtoError::ChunkLength(2, 7).to_string(),
            "structured reply chunk of type 2 with bad length 7"
        );
        assert_eq!(
            ProtoError::ChunkType(42).to_string(),
            "unexpected structured reply chunk type 42"
        );
    }

    #[test]
    fn meta_context_messages() {
        assert_eq!(
            meta_context_data("exp", BASE_ALLOCATION),
            [
                &[0, 0, 0, 3][..],
                b"exp",
                &[0, 0, 0, 1, 0, 0, 0, 15],
                b"base:allocation"
            ]
            .concat()
        );
        assert_eq!(
            parse_meta_context(b"\0\0\0\x07base:allocation"),
            Some((7, b"base:allocation".as_slice()))
        );
        assert_eq!(
            parse_meta_context(&[0, 0, 1, 0]),
            Some((256, b"".as_slice()))
        );
        assert_eq!(parse_meta_context(&[0, 0, 1]), None);
    }

    #[test]
    fn errnos() {
        assert_eq!(errno_of(1), libc::EPERM);
        assert_eq!(errno_of(5), libc::EIO);
        assert_eq!(errno_of(28), libc::ENOSPC);
        assert_eq!(errno_of(108), libc::ESHUTDOWN);
        assert_eq!(errno_of(1234), libc::EIO);
    }
}
