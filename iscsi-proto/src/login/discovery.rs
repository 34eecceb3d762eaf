//! Discovery: `SendTargets` answers and the full feature phase Text Request / Response
//! exchange (RFC 7143 sections 11.10, 11.11, 13.3 and appendix C).
//!
//! The caller provides the target list, already filtered for the initiator (access control is
//! the runtime's business). [`TextExchange`] answers Text Requests of a session:
//! `SendTargets` is answered from the list, `X-`/unknown keys with `NotUnderstood`, other
//! known keys with `Reject` (operational renegotiation in full feature phase is not
//! supported). An answer longer than the buffer the caller gives (the initiator's
//! MaxRecvDataSegmentLength) is sent in several Text Responses with C=1 and a Target Transfer
//! Tag; the initiator fetches each next part with an empty Text Request echoing that tag. A
//! request split by the initiator with C=1 is accumulated (bounded by `BUF`).

use core::fmt;

use crate::storage::Storage;
use crate::text::{self, KeyValue, Special, TextError, TextWriter};

use super::SessionType;
use super::keys::Key;

/// The reserved Target Transfer Tag (no continuation).
pub const NO_TTT: u32 = 0xffff_ffff;

/// One network portal of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Portal<'a> {
    /// `ip:port`, IPv6 in brackets (`[fe80::1]:3260`).
    pub address: &'a str,
    /// Target portal group tag.
    pub tpgt: u16,
}

/// A target as listed by SendTargets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetInfo<'a> {
    /// iSCSI name.
    pub name: &'a str,
    /// Portals the target is reachable at.
    pub portals: &'a [Portal<'a>],
}

fn write_target(w: &mut TextWriter<'_>, t: &TargetInfo<'_>) -> Result<(), TextError> {
    w.push("TargetName", t.name)?;
    for p in t.portals {
        // "address,tpgt" built on the stack.
        let mut v: heapless::String<{ text::MAX_VALUE_LEN }> = heapless::String::new();
        fmt::write(&mut v, format_args!("{},{}", p.address, p.tpgt))
            .map_err(|_| TextError::ValueTooLong)?;
        w.push("TargetAddress", &v)?;
    }
    Ok(())
}

/// Write the answer to `SendTargets=<query>`.
///
/// - `All`: every target of `targets` (discovery sessions only; `Reject` in normal ones);
/// - empty: the session's target (normal sessions; `Reject` in discovery ones);
/// - a name: that target if listed, else nothing.
pub fn write_send_targets(
    w: &mut TextWriter<'_>,
    query: &str,
    session_type: SessionType,
    session_target: Option<&str>,
    targets: &[TargetInfo<'_>],
) -> Result<(), TextError> {
    match (query, session_type) {
        ("All", SessionType::Discovery) => {
            for t in targets {
                write_target(w, t)?;
            }
            Ok(())
        }
        ("All", SessionType::Normal) | ("", SessionType::Discovery) => {
            w.push_special("SendTargets", Special::Reject)
        }
        _ => {
            let name = if query.is_empty() {
                session_target.unwrap_or("")
            } else {
                query
            };
            for t in targets.iter().filter(|t| t.name == name) {
                write_target(w, t)?;
            }
            Ok(())
        }
    }
}

/// The fields of a Text Request the exchange uses (RFC 7143 section 11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextHeader {
    /// F bit.
    pub final_: bool,
    /// C bit.
    pub cont: bool,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag ([`NO_TTT`] for a new request).
    pub ttt: u32,
}

/// The fields of the Text Response to send (the connection machine adds LUN, StatSN,
/// ExpCmdSN and MaxCmdSN); data is `out[..data_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextReply {
    /// F bit.
    pub final_: bool,
    /// C bit.
    pub cont: bool,
    /// ITT echoed.
    pub itt: u32,
    /// Target Transfer Tag ([`NO_TTT`] on the last part).
    pub ttt: u32,
    /// Bytes of text written into the caller's buffer.
    pub data_len: usize,
}

impl From<&crate::wire::TextRequest<'_>> for TextHeader {
    fn from(r: &crate::wire::TextRequest<'_>) -> Self {
        use crate::wire::TextFlags;
        TextHeader {
            final_: r.flags.contains(TextFlags::FINAL),
            cont: r.flags.contains(TextFlags::CONTINUE),
            itt: r.itt,
            ttt: r.ttt,
        }
    }
}

impl TextReply {
    /// Build the wire Text Response; the connection machine supplies the LUN echoed from the
    /// request, StatSN, ExpCmdSN, MaxCmdSN and the text (`out[..self.data_len]`).
    pub fn to_response<'a>(
        &self,
        lun: u64,
        stat_sn: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
        data: &'a [u8],
    ) -> crate::wire::TextResponse<'a> {
        use crate::wire::TextFlags;
        let mut flags = TextFlags::empty();
        flags.set(TextFlags::FINAL, self.final_);
        flags.set(TextFlags::CONTINUE, self.cont);
        crate::wire::TextResponse {
            flags,
            lun,
            itt: self.itt,
            ttt: self.ttt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data,
        }
    }
}

/// Protocol errors in a Text Request; the connection machine answers with a Reject PDU
/// (reason "protocol error") or, for [`TextExchangeError::Malformed`], a Text Response is not
/// possible either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextExchangeError {
    /// A Target Transfer Tag that does not continue the current exchange.
    BadTargetTransferTag,
    /// Both F and C set.
    FinalAndContinue,
    /// The request text is malformed.
    Malformed(TextError),
    /// The request text exceeds the accumulation bound.
    TooLong,
    /// The reply buffer cannot hold even one byte.
    NoBuffer,
}

impl fmt::Display for TextExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextExchangeError::BadTargetTransferTag => {
                f.write_str("unexpected target transfer tag")
            }
            TextExchangeError::FinalAndContinue => f.write_str("text request with both F and C"),
            TextExchangeError::Malformed(e) => write!(f, "malformed text request: {e}"),
            TextExchangeError::TooLong => f.write_str("text request too long"),
            TextExchangeError::NoBuffer => f.write_str("empty reply buffer"),
        }
    }
}

impl core::error::Error for TextExchangeError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Continuation {
    itt: u32,
    ttt: u32,
    offset: usize,
}

/// Text Request / Response exchange of one connection in full feature phase. `BUF` bounds
/// the request text, kept in a `B` (see [`crate::storage`]) until its answer is fully sent.
#[derive(Debug, Clone)]
pub struct TextExchange<const BUF: usize, B = heapless::Vec<u8, BUF>> {
    request: B,
    accumulating: Option<u32>,
    cont: Option<Continuation>,
    next_ttt: u32,
}

impl<const BUF: usize, B: Storage<u8>> Default for TextExchange<BUF, B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const BUF: usize, B: Storage<u8>> TextExchange<BUF, B> {
    /// A fresh exchange.
    pub fn new() -> Self {
        TextExchange {
            request: B::default(),
            accumulating: None,
            cont: None,
            next_ttt: 1,
        }
    }

    /// Whether a multi-PDU answer is in progress.
    pub fn in_progress(&self) -> bool {
        self.cont.is_some()
    }

    fn fresh_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == NO_TTT {
            self.next_ttt = 1;
        }
        t
    }

    /// Handle one Text Request; writes the response text into `out` (at most the initiator's
    /// MaxRecvDataSegmentLength bytes).
    pub fn handle_request(
        &mut self,
        hdr: &TextHeader,
        data: &[u8],
        session_type: SessionType,
        session_target: Option<&str>,
        targets: &[TargetInfo<'_>],
        out: &mut [u8],
    ) -> Result<TextReply, TextExchangeError> {
        if hdr.final_ && hdr.cont {
            return Err(TextExchangeError::FinalAndContinue);
        }
        if out.is_empty() {
            return Err(TextExchangeError::NoBuffer);
        }
        let offset = if hdr.ttt != NO_TTT {
            match self.cont {
                Some(c) if c.itt == hdr.itt && c.ttt == hdr.ttt => c.offset,
                _ => return Err(TextExchangeError::BadTargetTransferTag),
            }
        } else {
            // A new request (or the next part of one the initiator split with C=1).
            self.cont = None;
            if self.accumulating != Some(hdr.itt) {
                self.request.reset();
            }
            self.request
                .try_extend(data, BUF)
                .map_err(|_| TextExchangeError::TooLong)?;
            if hdr.cont {
                self.accumulating = Some(hdr.itt);
                return Ok(TextReply {
                    final_: false,
                    cont: false,
                    itt: hdr.itt,
                    ttt: NO_TTT,
                    data_len: 0,
                });
            }
            self.accumulating = None;
            0
        };
        let mut w = TextWriter::resume(out, offset);
        answer(
            self.request.items(),
            &mut w,
            session_type,
            session_target,
            targets,
        )?;
        let chunk = w.finish();
        if chunk.more {
            let ttt = match self.cont {
                Some(c) => c.ttt,
                None => self.fresh_ttt(),
            };
            self.cont = Some(Continuation {
                itt: hdr.itt,
                ttt,
                offset: offset + chunk.len,
            });
            Ok(TextReply {
                final_: false,
                cont: true,
                itt: hdr.itt,
                ttt,
                data_len: chunk.len,
            })
        } else {
            self.cont = None;
            self.request.reset();
            Ok(TextReply {
                final_: true,
                cont: false,
                itt: hdr.itt,
                ttt: NO_TTT,
                data_len: chunk.len,
            })
        }
    }
}

/// Answer a complete request text (deterministic, so it can be regenerated per part).
fn answer(
    request: &[u8],
    w: &mut TextWriter<'_>,
    session_type: SessionType,
    session_target: Option<&str>,
    targets: &[TargetInfo<'_>],
) -> Result<(), TextExchangeError> {
    let mut seen_send_targets = false;
    for kv in text::pairs(request) {
        let kv: KeyValue<'_> = kv.map_err(TextExchangeError::Malformed)?;
        let r = match Key::from_name(kv.key) {
            Key::SendTargets if !seen_send_targets => {
                seen_send_targets = true;
                write_send_targets(w, kv.value, session_type, session_target, targets)
            }
            Key::Extension | Key::Unknown => w.push_special(kv.key, Special::NotUnderstood),
            _ => w.push_special(kv.key, Special::Reject),
        };
        r.map_err(TextExchangeError::Malformed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: [Portal<'static>; 2] = [
        Portal {
            address: "192.168.1.10:3260",
            tpgt: 1,
        },
        Portal {
            address: "[fe80::1]:3260",
            tpgt: 2,
        },
    ];
    const P2: [Portal<'static>; 1] = [Portal {
        address: "10.0.0.1:3260",
        tpgt: 1,
    }];
    const TARGETS: [TargetInfo<'static>; 2] = [
        TargetInfo {
            name: "iqn.2026-11.org.example:disk1",
            portals: &P1,
        },
        TargetInfo {
            name: "iqn.2026-11.org.example:disk2",
            portals: &P2,
        },
    ];

    fn st(query: &str, ty: SessionType, cur: Option<&str>) -> ([u8; 512], usize) {
        let mut buf = [0u8; 512];
        let mut w = TextWriter::new(&mut buf);
        write_send_targets(&mut w, query, ty, cur, &TARGETS).unwrap();
        let n = w.len();
        (buf, n)
    }

    #[test]
    fn send_targets_all() {
        let (b, n) = st("All", SessionType::Discovery, None);
        assert_eq!(
            &b[..n],
            &b"TargetName=iqn.2026-11.org.example:disk1\0TargetAddress=192.168.1.10:3260,1\0\
TargetAddress=[fe80::1]:3260,2\0TargetName=iqn.2026-11.org.example:disk2\0\
TargetAddress=10.0.0.1:3260,1\0"[..]
        );
    }

    #[test]
    fn send_targets_by_name_empty_and_rejects() {
        let (b, n) = st(
            "iqn.2026-11.org.example:disk2",
            SessionType::Discovery,
            None,
        );
        assert_eq!(
            &b[..n],
            &b"TargetName=iqn.2026-11.org.example:disk2\0TargetAddress=10.0.0.1:3260,1\0"[..]
        );
        let (_, n) = st("iqn.nope", SessionType::Discovery, None);
        assert_eq!(n, 0);
        let (b, n) = st(
            "",
            SessionType::Normal,
            Some("iqn.2026-11.org.example:disk2"),
        );
        assert_eq!(
            &b[..n],
            &b"TargetName=iqn.2026-11.org.example:disk2\0TargetAddress=10.0.0.1:3260,1\0"[..]
        );
        let (b, n) = st("", SessionType::Discovery, None);
        assert_eq!(&b[..n], b"SendTargets=Reject\0");
        let (b, n) = st(
            "All",
            SessionType::Normal,
            Some("iqn.2026-11.org.example:disk1"),
        );
        assert_eq!(&b[..n], b"SendTargets=Reject\0");
    }

    fn req(final_: bool, cont: bool, itt: u32, ttt: u32) -> TextHeader {
        TextHeader {
            final_,
            cont,
            itt,
            ttt,
        }
    }

    #[test]
    fn exchange_single_pdu_with_unknown_keys() {
        let mut ex = TextExchange::<1024>::new();
        let mut out = [0u8; 8192];
        let r = ex
            .handle_request(
                &req(true, false, 7, NO_TTT),
                b"X-foo=1\0SendTargets=iqn.2026-11.org.example:disk2\0MaxBurstLength=512\0",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            r,
            TextReply {
                final_: true,
                cont: false,
                itt: 7,
                ttt: NO_TTT,
                data_len: r.data_len
            }
        );
        assert_eq!(
            &out[..r.data_len],
            &b"X-foo=NotUnderstood\0TargetName=iqn.2026-11.org.example:disk2\0\
TargetAddress=10.0.0.1:3260,1\0MaxBurstLength=Reject\0"[..]
        );
    }

    #[test]
    fn exchange_continues_with_ttt() {
        let mut ex = TextExchange::<1024>::new();
        let mut full = [0u8; 512];
        let (b, total) = st("All", SessionType::Discovery, None);
        full[..total].copy_from_slice(&b[..total]);
        let mut got = [0u8; 512];
        let mut off = 0;
        let mut out = [0u8; 64];
        let r = ex
            .handle_request(
                &req(true, false, 9, NO_TTT),
                b"SendTargets=All\0",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out,
            )
            .unwrap();
        assert_eq!((r.final_, r.cont, r.data_len), (false, true, 64));
        assert_ne!(r.ttt, NO_TTT);
        got[..64].copy_from_slice(&out);
        off += 64;
        let ttt = r.ttt;
        // A wrong TTT is a protocol error.
        assert_eq!(
            ex.handle_request(
                &req(true, false, 9, ttt + 1),
                b"",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out
            ),
            Err(TextExchangeError::BadTargetTransferTag)
        );
        loop {
            let r = ex
                .handle_request(
                    &req(true, false, 9, ttt),
                    b"",
                    SessionType::Discovery,
                    None,
                    &TARGETS,
                    &mut out,
                )
                .unwrap();
            got[off..off + r.data_len].copy_from_slice(&out[..r.data_len]);
            off += r.data_len;
            if r.final_ {
                assert_eq!((r.cont, r.ttt), (false, NO_TTT));
                break;
            }
            assert_eq!((r.cont, r.ttt, r.data_len), (true, ttt, 64));
        }
        assert_eq!(off, total);
        assert_eq!(&got[..total], &full[..total]);
        assert!(!ex.in_progress());
    }

    #[test]
    fn exchange_accumulates_continued_request() {
        let mut ex = TextExchange::<64>::new();
        let mut out = [0u8; 512];
        let r = ex
            .handle_request(
                &req(false, true, 3, NO_TTT),
                b"SendTar",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            r,
            TextReply {
                final_: false,
                cont: false,
                itt: 3,
                ttt: NO_TTT,
                data_len: 0
            }
        );
        let r = ex
            .handle_request(
                &req(true, false, 3, NO_TTT),
                b"gets=iqn.2026-11.org.example:disk2\0",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            &out[..r.data_len],
            &b"TargetName=iqn.2026-11.org.example:disk2\0TargetAddress=10.0.0.1:3260,1\0"[..]
        );
        assert_eq!(
            ex.handle_request(
                &req(true, true, 4, NO_TTT),
                b"",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out
            ),
            Err(TextExchangeError::FinalAndContinue)
        );
        assert_eq!(
            ex.handle_request(
                &req(true, false, 5, NO_TTT),
                &[b'A'; 65],
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out
            ),
            Err(TextExchangeError::TooLong)
        );
        assert_eq!(
            ex.handle_request(
                &req(true, false, 6, NO_TTT),
                b"A=1",
                SessionType::Discovery,
                None,
                &TARGETS,
                &mut out
            ),
            Err(TextExchangeError::Malformed(TextError::MissingNul))
        );
    }

    #[test]
    fn wire_adapters() {
        use crate::wire::{TextFlags, TextRequest};
        let wire_req = TextRequest {
            immediate: true,
            flags: TextFlags::FINAL,
            lun: 0,
            itt: 4,
            ttt: NO_TTT,
            cmd_sn: 1,
            exp_stat_sn: 2,
            data: b"SendTargets=All\0",
        };
        assert_eq!(TextHeader::from(&wire_req), req(true, false, 4, NO_TTT));
        let reply = TextReply {
            final_: false,
            cont: true,
            itt: 4,
            ttt: 9,
            data_len: 3,
        };
        let resp = reply.to_response(0, 10, 2, 33, b"A=B");
        assert_eq!(resp.flags, TextFlags::CONTINUE);
        assert_eq!(
            (resp.itt, resp.ttt, resp.stat_sn, resp.max_cmd_sn),
            (4, 9, 10, 33)
        );
        let mut out = [0u8; 48];
        assert_eq!(resp.emit(&mut out), Ok(48));
    }
}
