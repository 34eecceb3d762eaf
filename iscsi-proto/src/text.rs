//! Text segments: `key=value\0` pairs (RFC 7143 section 6.1).
//!
//! Login and Text PDUs carry their parameters in the data segment as a sequence of
//! `key=value` strings, each terminated by a NUL byte. This module provides:
//!
//! - [`parse_pairs`]: parse a complete text segment into a caller-provided array of
//!   [`KeyValue`]s (httparse style: a full array is [`TextError::TooManyKeys`], never a panic);
//!   the per-pair grammar is written with `nom`;
//! - value helpers: [`list_items`] (comma-separated lists, iterated in place),
//!   [`parse_number`] (decimal, `0x` hex, `0b` base64), [`decode_binary`] (large binary values
//!   such as `CHAP_C`), [`parse_range`] (`a~b`), [`parse_bool`] (`Yes`/`No`) and the special
//!   values [`Special`] (`NotUnderstood`, `Irrelevant`, `Reject`, `None`);
//! - [`TextWriter`]: emits pairs into a caller buffer, either strictly (a pair that does not fit
//!   is a [`TextError::BufferFull`] and leaves the buffer untouched) or as a *window* over a
//!   longer logical text ([`TextWriter::resume`]), which is how a response larger than the
//!   peer's MaxRecvDataSegmentLength is split over several PDUs with the C bit: the response is
//!   regenerated for each PDU and only the bytes of that PDU's window are copied.
//!
//! Limits enforced when parsing: key names are 1..=63 bytes of `[A-Za-z0-9.+@_-]`, values are
//! valid UTF-8 of at most 255 bytes, except for the keys listed by [`max_value_len`]
//! (`CHAP_C`, `CHAP_R`: 8192 bytes).

use core::fmt;

use nom::IResult;
use nom::bytes::complete::{tag, take_till, take_while};

/// Longest key name allowed (RFC 7143 section 6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value for most keys (RFC 7143 section 6.1).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value for keys that carry large binary values (CHAP challenge and response).
pub const MAX_LONG_VALUE_LEN: usize = 8192;

/// One `key=value` pair borrowed from a text segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyValue<'a> {
    /// Key name (checked against the RFC 7143 key character set).
    pub key: &'a str,
    /// Value (valid UTF-8, possibly empty).
    pub value: &'a str,
}

impl KeyValue<'_> {
    /// An empty pair, for initialising caller arrays: `[KeyValue::EMPTY; 32]`.
    pub const EMPTY: KeyValue<'static> = KeyValue { key: "", value: "" };
}

/// Errors for malformed text segments and for a full output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// A pair has no `=` between key and value.
    MissingEquals,
    /// The segment does not end with a NUL byte.
    MissingNul,
    /// A pair has an empty key name (`=value`).
    EmptyKey,
    /// A key name contains a byte outside `[A-Za-z0-9.+@_-]`.
    BadKeyChar,
    /// A key name is longer than [`MAX_KEY_LEN`].
    KeyTooLong,
    /// A value is longer than the limit for its key ([`max_value_len`]).
    ValueTooLong,
    /// A value is not valid UTF-8.
    NotUtf8,
    /// A value given to the writer contains a NUL byte.
    NulInValue,
    /// More pairs than the caller's array holds.
    TooManyKeys,
    /// The output buffer cannot hold the pair (strict [`TextWriter`]).
    BufferFull,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TextError::MissingEquals => "text pair without '='",
            TextError::MissingNul => "text segment not terminated by NUL",
            TextError::EmptyKey => "empty key name",
            TextError::BadKeyChar => "invalid character in key name",
            TextError::KeyTooLong => "key name longer than 63 bytes",
            TextError::ValueTooLong => "value too long for its key",
            TextError::NotUtf8 => "value is not valid UTF-8",
            TextError::NulInValue => "value contains a NUL byte",
            TextError::TooManyKeys => "too many keys for the caller's array",
            TextError::BufferFull => "text output buffer full",
        };
        f.write_str(s)
    }
}

impl core::error::Error for TextError {}

/// Errors for value helpers ([`parse_number`], [`parse_range`], ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    /// The value is empty.
    Empty,
    /// Not a valid decimal, hex or base64 constant.
    BadNumber,
    /// The number does not fit in 64 bits.
    Overflow,
    /// Not a valid `a~b` range with `a <= b`.
    BadRange,
    /// Neither `Yes` nor `No`.
    BadBoolean,
    /// The output buffer for [`decode_binary`] is too small.
    BufferTooSmall,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ValueError::Empty => "empty value",
            ValueError::BadNumber => "invalid numerical value",
            ValueError::Overflow => "numerical value too large",
            ValueError::BadRange => "invalid numerical range",
            ValueError::BadBoolean => "value is neither Yes nor No",
            ValueError::BufferTooSmall => "binary value too large for the buffer",
        };
        f.write_str(s)
    }
}

impl core::error::Error for ValueError {}

/// Whether `b` may appear in a key name (RFC 7143 section 6.1).
pub fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// The longest value accepted for `key`: [`MAX_LONG_VALUE_LEN`] for `CHAP_C` and `CHAP_R`,
/// [`MAX_VALUE_LEN`] otherwise.
pub fn max_value_len(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" => MAX_LONG_VALUE_LEN,
        _ => MAX_VALUE_LEN,
    }
}

/// Raw grammar of one pair: `key-chars '=' non-NUL* NUL`, as nom parsers.
fn key_part(input: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while(is_key_char)(input)
}

fn value_part(input: &[u8]) -> IResult<&[u8], &[u8]> {
    take_till(|b| b == 0)(input)
}

fn eq_sign(input: &[u8]) -> IResult<&[u8], &[u8]> {
    tag(&b"="[..])(input)
}

fn nul(input: &[u8]) -> IResult<&[u8], &[u8]> {
    tag(&b"\0"[..])(input)
}

/// Parse one pair from the start of `input`; returns the pair and the rest.
fn parse_pair(input: &[u8]) -> Result<(KeyValue<'_>, &[u8]), TextError> {
    let (rest, key) = key_part(input).map_err(|_| TextError::BadKeyChar)?;
    match rest.first() {
        Some(b'=') => {}
        Some(0) | None => {
            return Err(if key.is_empty() {
                TextError::EmptyKey
            } else {
                TextError::MissingEquals
            });
        }
        Some(_) => return Err(TextError::BadKeyChar),
    }
    if key.is_empty() {
        return Err(TextError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(TextError::KeyTooLong);
    }
    let (rest, _) = eq_sign(rest).map_err(|_| TextError::MissingEquals)?;
    let (rest, value) = value_part(rest).map_err(|_| TextError::MissingNul)?;
    let (rest, _) = nul(rest).map_err(|_| TextError::MissingNul)?;
    // Key bytes are ASCII by construction.
    let key = core::str::from_utf8(key).map_err(|_| TextError::BadKeyChar)?;
    if value.len() > max_value_len(key) {
        return Err(TextError::ValueTooLong);
    }
    let value = core::str::from_utf8(value).map_err(|_| TextError::NotUtf8)?;
    Ok((KeyValue { key, value }, rest))
}

/// Parse a complete text segment into `out`, returning the filled prefix.
///
/// Trailing NUL bytes after the last pair are ignored (some initiators pad); an empty segment
/// yields no pairs. A segment that does not end in NUL is [`TextError::MissingNul`].
pub fn parse_pairs<'a, 'o>(
    data: &'a [u8],
    out: &'o mut [KeyValue<'a>],
) -> Result<&'o [KeyValue<'a>], TextError> {
    let mut rest = data;
    let mut n = 0usize;
    loop {
        // Skip NULs only when nothing but NULs remains.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let (kv, r) = parse_pair(rest)?;
        let slot = out.get_mut(n).ok_or(TextError::TooManyKeys)?;
        *slot = kv;
        n += 1;
        rest = r;
    }
    Ok(out.get(..n).unwrap_or(&[]))
}

/// Iterate over a pair list without storing it: each item is a parsed pair or the first error.
pub fn pairs(data: &[u8]) -> Pairs<'_> {
    Pairs {
        rest: data,
        done: false,
    }
}

/// Iterator returned by [`pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<KeyValue<'a>, TextError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.iter().all(|&b| b == 0) {
            return None;
        }
        match parse_pair(self.rest) {
            Ok((kv, r)) => {
                self.rest = r;
                Some(Ok(kv))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterate over the items of a comma-separated list value (`CRC32C,None`).
pub fn list_items(value: &str) -> core::str::Split<'_, char> {
    value.split(',')
}

/// The special values of RFC 7143 section 6.2 / 6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `NotUnderstood`: the responder does not know the key.
    NotUnderstood,
    /// `Irrelevant`: the key does not apply in this context.
    Irrelevant,
    /// `Reject`: the offered value is not acceptable.
    Reject,
    /// `None`: the literal value None (digests, AuthMethod).
    None,
}

impl Special {
    /// The value text.
    pub fn as_str(self) -> &'static str {
        match self {
            Special::NotUnderstood => "NotUnderstood",
            Special::Irrelevant => "Irrelevant",
            Special::Reject => "Reject",
            Special::None => "None",
        }
    }

    /// Recognise a special value.
    pub fn parse(value: &str) -> Option<Special> {
        match value {
            "NotUnderstood" => Some(Special::NotUnderstood),
            "Irrelevant" => Some(Special::Irrelevant),
            "Reject" => Some(Special::Reject),
            "None" => Some(Special::None),
            _ => None,
        }
    }
}

/// Parse a boolean value: exactly `Yes` or `No`.
pub fn parse_bool(value: &str) -> Result<bool, ValueError> {
    match value {
        "Yes" => Ok(true),
        "No" => Ok(false),
        "" => Err(ValueError::Empty),
        _ => Err(ValueError::BadBoolean),
    }
}

/// The text of a boolean value.
pub fn bool_str(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn b64_digit(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decode a binary value (`0x` hex or `0b` base64, RFC 7143 section 6.1) into `out`.
///
/// Hex with an odd digit count is read as if it had a leading zero.
pub fn decode_binary<'o>(value: &str, out: &'o mut [u8]) -> Result<&'o [u8], ValueError> {
    let b = value.as_bytes();
    if b.is_empty() {
        return Err(ValueError::Empty);
    }
    let (prefix, body) = (
        b.get(..2).ok_or(ValueError::BadNumber)?,
        b.get(2..).unwrap_or(&[]),
    );
    if body.is_empty() {
        return Err(ValueError::BadNumber);
    }
    let n = match prefix {
        b"0x" | b"0X" => {
            let odd = body.len() % 2;
            let n = body.len() / 2 + odd;
            if n > out.len() {
                return Err(ValueError::BufferTooSmall);
            }
            let (head, pairs) = body.split_at(odd);
            let mut idx = 0usize;
            if let Some(&c) = head.first() {
                *out.get_mut(idx).ok_or(ValueError::BufferTooSmall)? =
                    hex_digit(c).ok_or(ValueError::BadNumber)?;
                idx += 1;
            }
            for pair in pairs.chunks_exact(2) {
                let (hi, lo) = match pair {
                    [h, l] => (*h, *l),
                    _ => return Err(ValueError::BadNumber),
                };
                let hi = hex_digit(hi).ok_or(ValueError::BadNumber)?;
                let lo = hex_digit(lo).ok_or(ValueError::BadNumber)?;
                *out.get_mut(idx).ok_or(ValueError::BufferTooSmall)? = (hi << 4) | lo;
                idx += 1;
            }
            idx
        }
        b"0b" | b"0B" => {
            if body.len() % 4 != 0 {
                return Err(ValueError::BadNumber);
            }
            let pad = body.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 {
                return Err(ValueError::BadNumber);
            }
            let n = body.len() / 4 * 3 - pad;
            if n > out.len() {
                return Err(ValueError::BufferTooSmall);
            }
            let data_len = body.len() - pad;
            let mut idx = 0usize;
            let mut acc: u32 = 0;
            let mut bits = 0u32;
            for &c in body.get(..data_len).unwrap_or(&[]) {
                let d = b64_digit(c).ok_or(ValueError::BadNumber)?;
                acc = (acc << 6) | u32::from(d);
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    *out.get_mut(idx).ok_or(ValueError::BufferTooSmall)? = (acc >> bits) as u8;
                    idx += 1;
                    acc &= (1 << bits) - 1;
                }
            }
            // Leftover bits must be zero for a canonical encoding.
            if acc != 0 {
                return Err(ValueError::BadNumber);
            }
            idx
        }
        _ => return Err(ValueError::BadNumber),
    };
    Ok(out.get(..n).unwrap_or(&[]))
}

/// Parse a numerical value: decimal, `0x` hex or `0b` base64 (RFC 7143 section 6.1).
pub fn parse_number(value: &str) -> Result<u64, ValueError> {
    let b = value.as_bytes();
    if b.is_empty() {
        return Err(ValueError::Empty);
    }
    if b.len() > 2 && matches!(b.get(..2), Some(b"0x" | b"0X" | b"0b" | b"0B")) {
        let mut buf = [0u8; 64];
        let bytes = decode_binary(value, &mut buf).map_err(|e| match e {
            ValueError::BufferTooSmall => ValueError::Overflow,
            e => e,
        })?;
        let mut n: u64 = 0;
        for &x in bytes {
            if n > (u64::MAX >> 8) {
                return Err(ValueError::Overflow);
            }
            n = (n << 8) | u64::from(x);
        }
        return Ok(n);
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return Err(ValueError::BadNumber);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(c - b'0')))
            .ok_or(ValueError::Overflow)?;
    }
    Ok(n)
}

/// Parse a numeric range `a~b` (`a <= b`).
pub fn parse_range(value: &str) -> Result<(u64, u64), ValueError> {
    let (a, b) = value.split_once('~').ok_or(ValueError::BadRange)?;
    let a = parse_number(a)?;
    let b = parse_number(b)?;
    if a > b {
        return Err(ValueError::BadRange);
    }
    Ok((a, b))
}

/// Writes `key=value\0` pairs into a caller buffer.
///
/// Two modes:
/// - **strict** ([`TextWriter::new`]): a pair that does not fit returns
///   [`TextError::BufferFull`] and leaves the buffer as it was before the call;
/// - **window** ([`TextWriter::resume`]): the writer is a window of `buf.len()` bytes starting at
///   logical offset `offset` of a longer text. Every pair is accepted; only the bytes inside the
///   window are stored. [`TextWriter::finish`] reports how many bytes were stored and whether
///   text continues after the window. To split a response over PDUs, generate the same pairs
///   again for each PDU with `offset` advanced by the previous chunk's length, and set the C bit
///   while [`Chunk::more`] is true.
#[derive(Debug)]
pub struct TextWriter<'b> {
    buf: &'b mut [u8],
    /// Logical offset of `buf[0]`.
    skip: usize,
    /// Logical bytes produced so far.
    pos: usize,
    strict: bool,
}

/// Result of [`TextWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// Whether the logical text continues after this buffer (send with C=1, then resume at
    /// `offset + len`).
    pub more: bool,
}

impl<'b> TextWriter<'b> {
    /// A strict writer filling `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        TextWriter {
            buf,
            skip: 0,
            pos: 0,
            strict: true,
        }
    }

    /// A window writer: `buf` receives the logical bytes `offset .. offset + buf.len()`.
    pub fn resume(buf: &'b mut [u8], offset: usize) -> Self {
        TextWriter {
            buf,
            skip: offset,
            pos: 0,
            strict: false,
        }
    }

    /// Bytes stored in the buffer so far.
    pub fn len(&self) -> usize {
        self.pos.saturating_sub(self.skip).min(self.buf.len())
    }

    /// Whether nothing has been stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total logical bytes produced (including bytes outside the window).
    pub fn logical_len(&self) -> usize {
        self.pos
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        let n = self.len();
        self.buf.get(..n).unwrap_or(&[])
    }

    /// Finish: stored length and whether text continues beyond the window.
    pub fn finish(&self) -> Chunk {
        Chunk {
            len: self.len(),
            more: self.pos > self.skip.saturating_add(self.buf.len()),
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(i) = self.pos.checked_sub(self.skip) {
                if let Some(slot) = self.buf.get_mut(i) {
                    *slot = b;
                }
            }
            self.pos = self.pos.saturating_add(1);
        }
    }

    fn check_key(key: &str) -> Result<(), TextError> {
        if key.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if !key.bytes().all(is_key_char) {
            return Err(TextError::BadKeyChar);
        }
        Ok(())
    }

    fn fits(&self, n: usize) -> bool {
        !self.strict || self.pos.saturating_add(n) <= self.buf.len()
    }

    /// Append `key=value\0`.
    pub fn push(&mut self, key: &str, value: &str) -> Result<(), TextError> {
        Self::check_key(key)?;
        if value.len() > MAX_LONG_VALUE_LEN {
            return Err(TextError::ValueTooLong);
        }
        if value.as_bytes().contains(&0) {
            return Err(TextError::NulInValue);
        }
        if !self.fits(key.len() + value.len() + 2) {
            return Err(TextError::BufferFull);
        }
        self.raw(key.as_bytes());
        self.raw(b"=");
        self.raw(value.as_bytes());
        self.raw(b"\0");
        Ok(())
    }

    /// Append `key=<decimal>\0`.
    pub fn push_u64(&mut self, key: &str, value: u64) -> Result<(), TextError> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = value;
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 || i == 0 {
                break;
            }
        }
        let s = core::str::from_utf8(digits.get(i..).unwrap_or(&[])).unwrap_or("0");
        self.push(key, s)
    }

    /// Append `key=0x<hex>\0` for a binary value (CHAP challenge / response).
    pub fn push_hex(&mut self, key: &str, value: &[u8]) -> Result<(), TextError> {
        Self::check_key(key)?;
        let vlen = value.len().saturating_mul(2).saturating_add(2);
        if vlen > MAX_LONG_VALUE_LEN {
            return Err(TextError::ValueTooLong);
        }
        if !self.fits(key.len() + vlen + 2) {
            return Err(TextError::BufferFull);
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.raw(key.as_bytes());
        self.raw(b"=0x");
        for &b in value {
            let hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            let lo = HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0');
            self.raw(&[hi, lo]);
        }
        self.raw(b"\0");
        Ok(())
    }

    /// Append `key=<special value>\0`.
    pub fn push_special(&mut self, key: &str, value: Special) -> Result<(), TextError> {
        self.push(key, value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_simple_segment() {
        let data = b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0AuthMethod=CHAP,None\0";
        let mut out = [KeyValue::EMPTY; 8];
        let kv = parse_pairs(data, &mut out).unwrap();
        assert_eq!(kv.len(), 3);
        assert_eq!(
            kv[0],
            KeyValue {
                key: "InitiatorName",
                value: "iqn.1993-08.org.debian:01:abc"
            }
        );
        assert_eq!(
            kv[1],
            KeyValue {
                key: "SessionType",
                value: "Normal"
            }
        );
        assert_eq!(kv[2].key, "AuthMethod");
        let items: [&str; 2] = {
            let mut it = list_items(kv[2].value);
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(items, ["CHAP", "None"]);
    }

    #[test]
    fn parse_empty_value_and_padding() {
        let mut out = [KeyValue::EMPTY; 4];
        let kv = parse_pairs(b"SendTargets=\0\0\0\0", &mut out).unwrap();
        assert_eq!(
            kv,
            &[KeyValue {
                key: "SendTargets",
                value: ""
            }]
        );
        assert_eq!(parse_pairs(b"", &mut out).unwrap().len(), 0);
        assert_eq!(parse_pairs(b"\0\0", &mut out).unwrap().len(), 0);
    }

    #[test]
    fn parse_errors() {
        let mut out = [KeyValue::EMPTY; 2];
        assert_eq!(
            parse_pairs(b"Key\0", &mut out),
            Err(TextError::MissingEquals)
        );
        assert_eq!(parse_pairs(b"Key=v", &mut out), Err(TextError::MissingNul));
        assert_eq!(parse_pairs(b"=v\0", &mut out), Err(TextError::EmptyKey));
        assert_eq!(
            parse_pairs(b"K y=v\0", &mut out),
            Err(TextError::BadKeyChar)
        );
        assert_eq!(
            parse_pairs(b"A=1\0\0B=2\0", &mut out),
            Err(TextError::EmptyKey)
        );
        assert_eq!(
            parse_pairs(b"K=\xff\xfe\0", &mut out),
            Err(TextError::NotUtf8)
        );
        assert_eq!(
            parse_pairs(b"A=1\0B=2\0C=3\0", &mut out),
            Err(TextError::TooManyKeys)
        );
    }

    #[test]
    fn key_and_value_limits() {
        let mut out = [KeyValue::EMPTY; 2];
        let mut buf = [0u8; 9000];
        // 63-byte key OK, 64 not.
        let mut n = 0;
        for _ in 0..63 {
            buf[n] = b'K';
            n += 1;
        }
        buf[n..n + 3].copy_from_slice(b"=1\0");
        assert_eq!(
            parse_pairs(&buf[..n + 3], &mut out).unwrap()[0].key.len(),
            63
        );
        let mut b2 = [b'K'; 67];
        b2[64..].copy_from_slice(b"=1\0");
        assert_eq!(parse_pairs(&b2, &mut out), Err(TextError::KeyTooLong));
        // 255-byte value OK, 256 not; CHAP_C up to 8192.
        let mut v = [b'a'; 2 + 256 + 1];
        v[..2].copy_from_slice(b"K=");
        v[2 + 256] = 0;
        assert_eq!(parse_pairs(&v, &mut out), Err(TextError::ValueTooLong));
        assert_eq!(parse_pairs(&v[1..], &mut out), Err(TextError::EmptyKey));
        let mut v2 = [b'a'; 2 + 255 + 1];
        v2[..2].copy_from_slice(b"K=");
        v2[2 + 255] = 0;
        assert_eq!(parse_pairs(&v2, &mut out).unwrap()[0].value.len(), 255);
        let mut c = [b'a'; 7 + 8192 + 1];
        c[..7].copy_from_slice(b"CHAP_C=");
        c[7 + 8192] = 0;
        assert_eq!(parse_pairs(&c, &mut out).unwrap()[0].value.len(), 8192);
        let mut c2 = [b'a'; 7 + 8193 + 1];
        c2[..7].copy_from_slice(b"CHAP_R=");
        c2[7 + 8193] = 0;
        assert_eq!(parse_pairs(&c2, &mut out), Err(TextError::ValueTooLong));
    }

    #[test]
    fn pairs_iterator_stops_at_error() {
        let mut it = pairs(b"A=1\0B2\0C=3\0");
        assert_eq!(
            it.next(),
            Some(Ok(KeyValue {
                key: "A",
                value: "1"
            }))
        );
        assert_eq!(it.next(), Some(Err(TextError::MissingEquals)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("8192"), Ok(8192));
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("0x2000"), Ok(0x2000));
        assert_eq!(parse_number("0X1"), Ok(1));
        assert_eq!(parse_number("0xabc"), Ok(0xabc));
        assert_eq!(parse_number("0bAAE="), Ok(1)); // bytes 00 01
        assert_eq!(parse_number("0bAQ=="), Ok(1));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_number("18446744073709551616"),
            Err(ValueError::Overflow)
        );
        assert_eq!(
            parse_number("0x10000000000000000"),
            Err(ValueError::Overflow)
        );
        assert_eq!(parse_number(""), Err(ValueError::Empty));
        assert_eq!(parse_number("12a"), Err(ValueError::BadNumber));
        assert_eq!(parse_number("-1"), Err(ValueError::BadNumber));
        assert_eq!(parse_number("0x"), Err(ValueError::BadNumber));
        assert_eq!(parse_number("0xg1"), Err(ValueError::BadNumber));
        assert_eq!(parse_number("0bA"), Err(ValueError::BadNumber));
    }

    #[test]
    fn binary_values() {
        let mut out = [0u8; 4];
        assert_eq!(decode_binary("0x0102ff", &mut out), Ok(&[1u8, 2, 0xff][..]));
        assert_eq!(decode_binary("0x102", &mut out), Ok(&[1u8, 2][..]));
        assert_eq!(decode_binary("0bAQL/", &mut out), Ok(&[1u8, 2, 0xff][..]));
        assert_eq!(
            decode_binary("0x0102030405", &mut out),
            Err(ValueError::BufferTooSmall)
        );
        assert_eq!(
            decode_binary("0b====", &mut out),
            Err(ValueError::BadNumber)
        );
        assert_eq!(decode_binary("12", &mut out), Err(ValueError::BadNumber));
    }

    #[test]
    fn ranges_bools_specials() {
        assert_eq!(parse_range("1~65535"), Ok((1, 65535)));
        assert_eq!(parse_range("5~1"), Err(ValueError::BadRange));
        assert_eq!(parse_range("5"), Err(ValueError::BadRange));
        assert_eq!(parse_range("x~1"), Err(ValueError::BadNumber));
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert_eq!(parse_bool("yes"), Err(ValueError::BadBoolean));
        assert_eq!(Special::parse("Irrelevant"), Some(Special::Irrelevant));
        assert_eq!(Special::parse("Nope"), None);
        assert_eq!(Special::NotUnderstood.as_str(), "NotUnderstood");
    }

    #[test]
    fn strict_writer() {
        let mut buf = [0u8; 32];
        let mut w = TextWriter::new(&mut buf);
        w.push("HeaderDigest", "None").unwrap();
        assert_eq!(w.len(), 18);
        // 22 more bytes do not fit in 32: error, buffer untouched.
        assert_eq!(
            w.push_u64("MaxBurstLength", 262144),
            Err(TextError::BufferFull)
        );
        assert_eq!(w.as_bytes(), b"HeaderDigest=None\0");
        assert_eq!(w.push("A", "B"), Ok(()));
        assert_eq!(w.len(), 22);
        assert_eq!(
            w.finish(),
            Chunk {
                len: 22,
                more: false
            }
        );
        assert_eq!(w.as_bytes(), b"HeaderDigest=None\0A=B\0");
        assert_eq!(w.push("Bad Key", "x"), Err(TextError::BadKeyChar));
        assert_eq!(w.push("", "x"), Err(TextError::EmptyKey));
        assert_eq!(w.push("K", "a\0b"), Err(TextError::NulInValue));
    }

    #[test]
    fn hex_and_numbers_written() {
        let mut buf = [0u8; 64];
        let mut w = TextWriter::new(&mut buf);
        w.push_hex("CHAP_C", &[0x00, 0xab, 0x10]).unwrap();
        w.push_u64("N", 0).unwrap();
        w.push_u64("M", u64::MAX).unwrap();
        w.push_special("X-foo", Special::NotUnderstood).unwrap();
        assert_eq!(
            w.as_bytes(),
            &b"CHAP_C=0x00ab10\0N=0\0M=18446744073709551615\0X-foo=NotUnderstood\0"[..]
        );
    }

    #[test]
    fn window_writer_splits_and_reassembles() {
        fn generate(w: &mut TextWriter<'_>) {
            for i in 0..10u64 {
                w.push("TargetName", "iqn.2026-11.org.example:disk")
                    .unwrap();
                w.push_u64("TargetAddress", i).unwrap();
            }
        }
        let mut full = [0u8; 1024];
        let mut fw = TextWriter::new(&mut full);
        generate(&mut fw);
        let total = fw.len();
        assert!(
            fw.finish()
                == Chunk {
                    len: total,
                    more: false
                }
        );
        let mut joined = [0u8; 1024];
        let mut off = 0;
        let mut pdus = 0;
        loop {
            let mut chunk = [0u8; 48];
            let mut w = TextWriter::resume(&mut chunk, off);
            generate(&mut w);
            let c = w.finish();
            assert_eq!(w.logical_len(), total);
            joined[off..off + c.len].copy_from_slice(&chunk[..c.len]);
            off += c.len;
            pdus += 1;
            if !c.more {
                break;
            }
            assert_eq!(c.len, 48);
        }
        assert_eq!(off, total);
        assert_eq!(pdus, total.div_ceil(48));
        assert_eq!(&joined[..total], &full[..total]);
        let mut out = [KeyValue::EMPTY; 20];
        assert_eq!(parse_pairs(&joined[..total], &mut out).unwrap().len(), 20);
    }

    proptest::proptest! {
        #[test]
        fn emit_parse_round_trip(
            pairs in proptest::collection::vec(
                ("[A-Za-z0-9.+@_-]{1,63}", "[ -~]{0,255}"),
                0..12,
            ),
            window in 1usize..64,
        ) {
            let mut buf = [0u8; 12 * 322];
            let mut w = TextWriter::new(&mut buf);
            for (k, v) in &pairs {
                w.push(k, v).unwrap();
            }
            let n = w.len();
            let mut out = [KeyValue::EMPTY; 12];
            let parsed = parse_pairs(&buf[..n], &mut out).unwrap();
            proptest::prop_assert_eq!(parsed.len(), pairs.len());
            for (kv, (k, v)) in parsed.iter().zip(&pairs) {
                proptest::prop_assert_eq!(kv.key, k.as_str());
                proptest::prop_assert_eq!(kv.value, v.as_str());
            }
            // Windowed emission reassembles to the same bytes.
            let mut off = 0;
            loop {
                let mut chunk = [0u8; 64];
                let mut w = TextWriter::resume(&mut chunk[..window], off);
                for (k, v) in &pairs {
                    w.push(k, v).unwrap();
                }
                let c = w.finish();
                proptest::prop_assert_eq!(&chunk[..c.len], &buf[off..off + c.len]);
                off += c.len;
                if !c.more {
                    break;
                }
            }
            proptest::prop_assert_eq!(off, n);
        }
    }
}
