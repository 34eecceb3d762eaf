//! Login phase, target side (RFC 7143 sections 6, 12 and 13).
//!
//! This module turns the Login Requests of one connection into Login Responses, and at the
//! end into a [`LoginOutcome`] the connection machine uses to enter full feature phase. It is
//! sans-IO: it reads no socket and no clock, and everything it needs from the outside world
//! (target lookup, access control, CHAP accounts, TSIH assignment, session lookup) comes
//! through the [`LoginHooks`] trait the runtime implements. Randomness (the CHAP identifier and
//! challenge) is an argument of [`LoginMachine::new`].
//!
//! # Call order
//!
//! ```text
//! let mut m = LoginMachine::<8192>::new(config, ChapChallenge { id, challenge });
//! for each Login Request PDU received on the connection (wire::LoginRequest `req`):
//!     let hdr = LoginHeader::from(&req);
//!     let reply = m.handle_request(&hdr, req.data, &mut hooks, &mut text_buf);
//!     let resp = reply.to_response(stat_sn, exp_cmd_sn, max_cmd_sn,
//!                                  &text_buf[..reply.data_len]);   // emit and send
//!     match m.phase() {
//!         LoginPhase::InProgress => continue,
//!         LoginPhase::Complete => { let outcome = m.outcome(); /* enter full feature */ }
//!         LoginPhase::Failed => { /* close the connection after sending the reply */ }
//!     }
//! ```
//!
//! A Login Request the wire layer refuses to parse (T and C both set, reserved CSG/NSG) should
//! be answered with [`LoginStatus::INITIATOR_ERROR`] by the caller; the machine applies the
//! same checks to the raw [`LoginHeader`] fields.
//!
//! `text_buf` must hold at least [`MIN_REPLY_BUF`] bytes and should not exceed the initiator's
//! MaxRecvDataSegmentLength for login (8192 by default). A request with the C bit set is
//! accumulated (up to `BUF` bytes of text) and answered with an empty response (C=0, T=0)
//! until the last PDU of the request arrives.
//!
//! Submodules: [`chap`] (MD5 CHAP), [`keys`] (the section 13 keys and their result
//! functions), [`discovery`] (SendTargets and the full feature phase Text exchange).

pub mod chap;
pub mod discovery;
pub mod keys;
mod machine;

pub use crate::wire::{LoginStatus, Stage};
pub use chap::{ChapChallenge, ChapCredentials, ChapError, ChapSecret};
pub use keys::{Key, SessionParams, TaskReporting};
pub use machine::{LoginMachine, LoginOutcome, LoginPhase, MAX_LOGIN_KEYS, MIN_REPLY_BUF};

/// Longest iSCSI name (RFC 7143 section 4.2.7.1: 223 bytes).
pub const MAX_NAME_LEN: usize = 223;
/// Longest alias or other text value (255 bytes).
pub const MAX_VALUE_LEN: usize = 255;

/// A digest choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// No digest.
    None,
    /// CRC32C.
    Crc32c,
}

impl Digest {
    /// The key value text.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }
}

/// Which digests the target accepts for one direction key (HeaderDigest or DataDigest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestSupport {
    /// Accept `None`.
    pub none: bool,
    /// Accept `CRC32C`.
    pub crc32c: bool,
}

/// Session type (`SessionType` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// A normal session (the default).
    Normal,
    /// A discovery session (SendTargets only).
    Discovery,
}

/// Target-side limits and defaults for login negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// MaxRecvDataSegmentLength the target declares (512..=16777215).
    pub max_recv_data_segment_length: u32,
    /// Largest MaxBurstLength accepted.
    pub max_burst_length: u32,
    /// Largest FirstBurstLength accepted.
    pub first_burst_length: u32,
    /// Largest MaxConnections accepted.
    pub max_connections: u16,
    /// Largest MaxOutstandingR2T accepted.
    pub max_outstanding_r2t: u16,
    /// The target's ImmediateData (result AND).
    pub immediate_data: bool,
    /// The target's InitialR2T (result OR).
    pub initial_r2t: bool,
    /// The target's DataPDUInOrder (result OR).
    pub data_pdu_in_order: bool,
    /// The target's DataSequenceInOrder (result OR).
    pub data_sequence_in_order: bool,
    /// The target's DefaultTime2Wait (result max).
    pub default_time2wait: u16,
    /// The target's DefaultTime2Retain (result min).
    pub default_time2retain: u16,
    /// Highest ErrorRecoveryLevel supported (result min).
    pub max_error_recovery_level: u8,
    /// Highest iSCSIProtocolLevel supported (RFC 7144; result min).
    pub protocol_level: u8,
    /// Accepted HeaderDigest values.
    pub header_digests: DigestSupport,
    /// Accepted DataDigest values.
    pub data_digests: DigestSupport,
    /// TargetPortalGroupTag of the portal this connection arrived on.
    pub target_portal_group_tag: u16,
    /// TargetAlias declared to the initiator in normal sessions (empty: not sent).
    pub target_alias: heapless::String<MAX_VALUE_LEN>,
    /// Most Login Request PDUs accepted in one login before failing it (0x0200).
    pub max_login_pdus: u16,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_connections: 1,
            max_outstanding_r2t: 1,
            immediate_data: true,
            initial_r2t: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            max_error_recovery_level: 0,
            protocol_level: 1,
            header_digests: DigestSupport {
                none: true,
                crc32c: true,
            },
            data_digests: DigestSupport {
                none: true,
                crc32c: true,
            },
            target_portal_group_tag: 1,
            target_alias: heapless::String::new(),
            max_login_pdus: 64,
        }
    }
}

/// The fields of a Login Request the machine uses (RFC 7143 section 11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginHeader {
    /// T bit.
    pub transit: bool,
    /// C bit.
    pub cont: bool,
    /// CSG (2 bits).
    pub csg: u8,
    /// NSG (2 bits).
    pub nsg: u8,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Decode a raw 2-bit CSG/NSG value (2 is reserved).
pub fn stage_from_bits(v: u8) -> Option<Stage> {
    Stage::from_u8(v, "stage").ok()
}

impl From<&crate::wire::LoginRequest<'_>> for LoginHeader {
    fn from(r: &crate::wire::LoginRequest<'_>) -> Self {
        LoginHeader {
            transit: r.nsg.is_some(),
            cont: r.cont,
            csg: r.csg.to_u8(),
            nsg: r.nsg.map_or(0, Stage::to_u8),
            version_max: r.version_max,
            version_min: r.version_min,
            isid: r.isid,
            tsih: r.tsih,
            itt: r.itt,
            cid: r.cid,
            cmd_sn: r.cmd_sn,
            exp_stat_sn: r.exp_stat_sn,
        }
    }
}

/// The login-specific fields of the Login Response to send (RFC 7143 section 11.13).
///
/// The connection machine adds StatSN, ExpCmdSN and MaxCmdSN; the data segment is the first
/// `data_len` bytes of the buffer given to [`LoginMachine::handle_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginReply {
    /// T bit.
    pub transit: bool,
    /// C bit (always false: target responses fit one PDU).
    pub cont: bool,
    /// CSG.
    pub csg: u8,
    /// NSG (meaningful when `transit`).
    pub nsg: u8,
    /// Version-max (0).
    pub version_max: u8,
    /// Version-active (0).
    pub version_active: u8,
    /// ISID echoed.
    pub isid: [u8; 6],
    /// TSIH: the new session's TSIH in the final response, else the request's.
    pub tsih: u16,
    /// ITT echoed.
    pub itt: u32,
    /// Status class and detail.
    pub status: LoginStatus,
    /// Length of the text data written into the caller's buffer.
    pub data_len: usize,
}

impl LoginReply {
    /// Build the wire Login Response: the connection machine supplies StatSN, ExpCmdSN,
    /// MaxCmdSN and the text (`buf[..self.data_len]` of the buffer given to
    /// [`LoginMachine::handle_request`]). A reserved CSG echoed from a bad request is sent as
    /// SecurityNegotiation (the response is a failure anyway).
    pub fn to_response<'a>(
        &self,
        stat_sn: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
        data: &'a [u8],
    ) -> crate::wire::LoginResponse<'a> {
        crate::wire::LoginResponse {
            cont: self.cont,
            csg: stage_from_bits(self.csg).unwrap_or(Stage::SecurityNegotiation),
            nsg: if self.transit {
                stage_from_bits(self.nsg)
            } else {
                None
            },
            version_max: self.version_max,
            version_active: self.version_active,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            status: self.status,
            data,
        }
    }
}

/// Decision of [`LoginHooks::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// The initiator may log in; it must authenticate as given.
    Allowed(AuthPolicy),
    /// No such target (0x0203).
    TargetNotFound,
    /// The target was removed (0x0204).
    TargetRemoved,
    /// The initiator is not allowed to access the target (0x0202).
    NotAllowed,
    /// The target cannot accept logins now (0x0301).
    ServiceUnavailable,
}

/// Which authentication the target requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// `AuthMethod=None` (CHAP is not offered).
    None,
    /// CHAP (one-way, or mutual when the initiator asks and an outgoing account exists).
    Chap,
}

/// Decision of [`LoginHooks::join_session`] for a login with TSIH != 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinDecision {
    /// The session exists; the connection may join it.
    Join,
    /// No session with this ISID/TSIH (0x020a).
    DoesNotExist,
    /// The session exists but cannot take this connection (0x0208).
    CannotInclude,
    /// The session already has MaxConnections connections (0x0206).
    TooManyConnections,
}

/// What the login machine asks of the runtime (all synchronous; implemented over the
/// runtime's configuration and session tables).
pub trait LoginHooks {
    /// Resolve `target_name` (None for discovery sessions) and decide whether
    /// `initiator_name` may log in, and how it must authenticate.
    fn authorize(
        &mut self,
        initiator_name: &str,
        target_name: Option<&str>,
        session_type: SessionType,
    ) -> Authorization;

    /// The incoming CHAP account named `user` allowed for this target (None: unknown user,
    /// which fails the login with 0x0201).
    fn chap_account(&mut self, target_name: Option<&str>, user: &str) -> Option<ChapCredentials>;

    /// The outgoing account the target answers a mutual CHAP challenge with (None: mutual
    /// CHAP is refused with 0x0201).
    fn chap_mutual_account(&mut self, target_name: Option<&str>) -> Option<ChapCredentials>;

    /// For TSIH != 0: whether the connection may join the existing session.
    fn join_session(
        &mut self,
        initiator_name: &str,
        isid: [u8; 6],
        tsih: u16,
        cid: u16,
    ) -> JoinDecision;

    /// For TSIH == 0, at the end of a successful login: assign a non-zero TSIH for the new
    /// session (None: out of resources, 0x0302).
    fn allocate_tsih(&mut self, initiator_name: &str, isid: [u8; 6]) -> Option<u16>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Bhs, LoginRequest, LoginResponse};

    #[test]
    fn wire_adapters_round_trip() {
        let req = LoginRequest {
            cont: false,
            csg: Stage::LoginOperational,
            nsg: Some(Stage::FullFeature),
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 1, 2, 3],
            tsih: 0,
            itt: 0x55,
            cid: 1,
            cmd_sn: 9,
            exp_stat_sn: 3,
            data: b"",
        };
        let mut bhs = [0u8; 48];
        assert_eq!(req.emit(&mut bhs), Ok(48));
        let parsed = LoginRequest::parse(&Bhs::new_checked(&bhs[..]).unwrap(), &[], b"").unwrap();
        let h = LoginHeader::from(&parsed);
        assert_eq!(
            h,
            LoginHeader {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 0, 0, 1, 2, 3],
                tsih: 0,
                itt: 0x55,
                cid: 1,
                cmd_sn: 9,
                exp_stat_sn: 3,
            }
        );
        let reply = LoginReply {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_active: 0,
            isid: h.isid,
            tsih: 0x1234,
            itt: h.itt,
            status: LoginStatus::SUCCESS,
            data_len: 4,
        };
        let resp = reply.to_response(100, 9, 40, b"A=B\0");
        let mut out = [0u8; 48];
        assert_eq!(resp.emit(&mut out), Ok(48));
        // Byte 1: T=1, CSG=1, NSG=3.
        assert_eq!(out[1], 0x80 | (1 << 2) | 3);
        let back =
            LoginResponse::parse(&Bhs::new_checked(&out[..]).unwrap(), &[], b"A=B\0").unwrap();
        assert_eq!(back, resp);
        assert_eq!(
            (back.tsih, back.stat_sn, back.status),
            (0x1234, 100, LoginStatus::SUCCESS)
        );
        // A failure echoing a reserved CSG is still encodable.
        let bad = LoginReply {
            csg: 2,
            transit: false,
            status: LoginStatus::INITIATOR_ERROR,
            ..reply
        };
        let r = bad.to_response(0, 0, 0, b"");
        assert_eq!((r.csg, r.nsg), (Stage::SecurityNegotiation, None));
    }
}
