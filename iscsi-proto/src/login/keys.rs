//! The RFC 7143 section 13 keys (plus RFC 7144's), their defaults, ranges and result
//! functions, and the target-side negotiation of one operational key.

use crate::text::{self, Special};

use super::{Digest, LoginConfig, SessionType};

/// Every key the target knows, plus the extension and unknown classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Key {
    HeaderDigest,
    DataDigest,
    MaxConnections,
    SendTargets,
    TargetName,
    InitiatorName,
    TargetAlias,
    InitiatorAlias,
    TargetAddress,
    TargetPortalGroupTag,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    SessionType,
    AuthMethod,
    ChapA,
    ChapI,
    ChapC,
    ChapN,
    ChapR,
    OFMarker,
    IFMarker,
    OFMarkInt,
    IFMarkInt,
    TaskReporting,
    IscsiProtocolLevel,
    /// `X-` or `X#` extension key: answered `NotUnderstood`.
    Extension,
    /// Any other key: answered `NotUnderstood`.
    Unknown,
}

/// Where a key may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    /// Login declaratives (names, session type): any login stage.
    Declarative,
    /// Declared by the target only (TargetAlias, TargetAddress, TargetPortalGroupTag).
    TargetDeclarative,
    /// Security negotiation stage only (AuthMethod, CHAP_*).
    Security,
    /// Operational negotiation stage (and full feature phase renegotiation).
    Operational,
    /// Full feature phase only (SendTargets).
    FullFeatureOnly,
    /// Extension or unknown key.
    Other,
}

const ALL: [Key; 36] = [
    Key::HeaderDigest,
    Key::DataDigest,
    Key::MaxConnections,
    Key::SendTargets,
    Key::TargetName,
    Key::InitiatorName,
    Key::TargetAlias,
    Key::InitiatorAlias,
    Key::TargetAddress,
    Key::TargetPortalGroupTag,
    Key::InitialR2T,
    Key::ImmediateData,
    Key::MaxRecvDataSegmentLength,
    Key::MaxBurstLength,
    Key::FirstBurstLength,
    Key::DefaultTime2Wait,
    Key::DefaultTime2Retain,
    Key::MaxOutstandingR2T,
    Key::DataPDUInOrder,
    Key::DataSequenceInOrder,
    Key::ErrorRecoveryLevel,
    Key::SessionType,
    Key::AuthMethod,
    Key::ChapA,
    Key::ChapI,
    Key::ChapC,
    Key::ChapN,
    Key::ChapR,
    Key::OFMarker,
    Key::IFMarker,
    Key::OFMarkInt,
    Key::IFMarkInt,
    Key::TaskReporting,
    Key::IscsiProtocolLevel,
    Key::Extension,
    Key::Unknown,
];

impl Key {
    /// The key's text (`"Unknown"`/`"X-"` for the catch-all classes).
    pub fn name(self) -> &'static str {
        match self {
            Key::HeaderDigest => "HeaderDigest",
            Key::DataDigest => "DataDigest",
            Key::MaxConnections => "MaxConnections",
            Key::SendTargets => "SendTargets",
            Key::TargetName => "TargetName",
            Key::InitiatorName => "InitiatorName",
            Key::TargetAlias => "TargetAlias",
            Key::InitiatorAlias => "InitiatorAlias",
            Key::TargetAddress => "TargetAddress",
            Key::TargetPortalGroupTag => "TargetPortalGroupTag",
            Key::InitialR2T => "InitialR2T",
            Key::ImmediateData => "ImmediateData",
            Key::MaxRecvDataSegmentLength => "MaxRecvDataSegmentLength",
            Key::MaxBurstLength => "MaxBurstLength",
            Key::FirstBurstLength => "FirstBurstLength",
            Key::DefaultTime2Wait => "DefaultTime2Wait",
            Key::DefaultTime2Retain => "DefaultTime2Retain",
            Key::MaxOutstandingR2T => "MaxOutstandingR2T",
            Key::DataPDUInOrder => "DataPDUInOrder",
            Key::DataSequenceInOrder => "DataSequenceInOrder",
            Key::ErrorRecoveryLevel => "ErrorRecoveryLevel",
            Key::SessionType => "SessionType",
            Key::AuthMethod => "AuthMethod",
            Key::ChapA => "CHAP_A",
            Key::ChapI => "CHAP_I",
            Key::ChapC => "CHAP_C",
            Key::ChapN => "CHAP_N",
            Key::ChapR => "CHAP_R",
            Key::OFMarker => "OFMarker",
            Key::IFMarker => "IFMarker",
            Key::OFMarkInt => "OFMarkInt",
            Key::IFMarkInt => "IFMarkInt",
            Key::TaskReporting => "TaskReporting",
            Key::IscsiProtocolLevel => "iSCSIProtocolLevel",
            Key::Extension => "X-",
            Key::Unknown => "Unknown",
        }
    }

    /// Classify a key name.
    pub fn from_name(name: &str) -> Key {
        if name.starts_with("X-") || name.starts_with("X#") {
            return Key::Extension;
        }
        ALL.iter()
            .copied()
            .take(34)
            .find(|k| k.name() == name)
            .unwrap_or(Key::Unknown)
    }

    /// Bit index for "already negotiated" sets.
    pub fn bit(self) -> u64 {
        let i = ALL.iter().position(|&k| k == self).unwrap_or(63);
        1u64 << i
    }

    /// Where the key may appear.
    pub fn class(self) -> KeyClass {
        match self {
            Key::InitiatorName | Key::InitiatorAlias | Key::TargetName | Key::SessionType => {
                KeyClass::Declarative
            }
            Key::TargetAlias | Key::TargetAddress | Key::TargetPortalGroupTag => {
                KeyClass::TargetDeclarative
            }
            Key::AuthMethod | Key::ChapA | Key::ChapI | Key::ChapC | Key::ChapN | Key::ChapR => {
                KeyClass::Security
            }
            Key::SendTargets => KeyClass::FullFeatureOnly,
            Key::Extension | Key::Unknown => KeyClass::Other,
            _ => KeyClass::Operational,
        }
    }

    /// Leading-only keys (RFC 7143 section 13: "LO"): session-wide, negotiated on the first
    /// connection of a session only.
    pub fn leading_only(self) -> bool {
        matches!(
            self,
            Key::MaxConnections
                | Key::InitialR2T
                | Key::ImmediateData
                | Key::MaxBurstLength
                | Key::FirstBurstLength
                | Key::DefaultTime2Wait
                | Key::DefaultTime2Retain
                | Key::MaxOutstandingR2T
                | Key::DataPDUInOrder
                | Key::DataSequenceInOrder
                | Key::ErrorRecoveryLevel
                | Key::TaskReporting
                | Key::IscsiProtocolLevel
        )
    }

    /// Keys that are `Irrelevant` in a discovery session (RFC 7143 section 13).
    pub fn irrelevant_in_discovery(self) -> bool {
        matches!(
            self,
            Key::MaxConnections
                | Key::InitialR2T
                | Key::ImmediateData
                | Key::MaxBurstLength
                | Key::FirstBurstLength
                | Key::MaxOutstandingR2T
                | Key::DataPDUInOrder
                | Key::DataSequenceInOrder
        )
    }
}

/// Which task reporting the session uses (RFC 7144 `TaskReporting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskReporting {
    /// RFC 3720 semantics (the only one this target implements).
    Rfc3720,
}

/// The values negotiated for one connection and its session, ready for full feature phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// Largest data segment the target accepts in one PDU (what we declared).
    pub max_recv_data_segment_length: u32,
    /// Largest data segment the target may send in one PDU (the initiator's declaration).
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength (min).
    pub max_burst_length: u32,
    /// FirstBurstLength (min, never above MaxBurstLength).
    pub first_burst_length: u32,
    /// MaxConnections (min).
    pub max_connections: u16,
    /// MaxOutstandingR2T (min).
    pub max_outstanding_r2t: u16,
    /// ImmediateData (AND).
    pub immediate_data: bool,
    /// InitialR2T (OR).
    pub initial_r2t: bool,
    /// DataPDUInOrder (OR).
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder (OR).
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait in seconds (max).
    pub default_time2wait: u16,
    /// DefaultTime2Retain in seconds (min).
    pub default_time2retain: u16,
    /// ErrorRecoveryLevel (min).
    pub error_recovery_level: u8,
    /// HeaderDigest (list choice).
    pub header_digest: Digest,
    /// DataDigest (list choice).
    pub data_digest: Digest,
    /// TaskReporting (RFC 7144).
    pub task_reporting: TaskReporting,
    /// iSCSIProtocolLevel (RFC 7144; 0 when not negotiated).
    pub protocol_level: u8,
}

impl SessionParams {
    /// The RFC 7143 defaults (what applies to keys nobody negotiated).
    pub const RFC_DEFAULTS: SessionParams = SessionParams {
        max_recv_data_segment_length: 8192,
        max_xmit_data_segment_length: 8192,
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
        error_recovery_level: 0,
        header_digest: Digest::None,
        data_digest: Digest::None,
        task_reporting: TaskReporting::Rfc3720,
        protocol_level: 0,
    };
}

impl Default for SessionParams {
    fn default() -> Self {
        Self::RFC_DEFAULTS
    }
}

/// The target's answer to one operational key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A number.
    Num(u64),
    /// A fixed string (Yes/No, CRC32C, RFC3720, ...).
    Str(&'static str),
    /// A special value.
    Special(Special),
}

/// Smallest and largest MaxRecvDataSegmentLength / burst lengths.
const LEN_RANGE: (u64, u64) = (512, 16_777_215);

fn num_in(value: &str, lo: u64, hi: u64) -> Option<u64> {
    match text::parse_number(value) {
        Ok(n) if n >= lo && n <= hi => Some(n),
        _ => None,
    }
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_u16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn choose_digest(value: &str, allowed: super::DigestSupport) -> Option<Digest> {
    text::list_items(value).find_map(|item| match item {
        "CRC32C" if allowed.crc32c => Some(Digest::Crc32c),
        "None" if allowed.none => Some(Digest::None),
        _ => None,
    })
}

/// Negotiate one operational key proposed by the initiator, updating `params`.
///
/// `discovery` marks a discovery session (some keys are then `Irrelevant`). Returns the
/// answer the target sends. `FirstBurstLength`'s irrelevance depends on InitialR2T and
/// ImmediateData, so the caller negotiates it after the other keys of the same request.
pub fn negotiate(
    key: Key,
    value: &str,
    cfg: &LoginConfig,
    params: &mut SessionParams,
    session_type: SessionType,
) -> Answer {
    let reject = Answer::Special(Special::Reject);
    if session_type == SessionType::Discovery && key.irrelevant_in_discovery() {
        return Answer::Special(Special::Irrelevant);
    }
    match key {
        Key::HeaderDigest | Key::DataDigest => {
            let allowed = if key == Key::HeaderDigest {
                cfg.header_digests
            } else {
                cfg.data_digests
            };
            match choose_digest(value, allowed) {
                Some(d) => {
                    if key == Key::HeaderDigest {
                        params.header_digest = d;
                    } else {
                        params.data_digest = d;
                    }
                    Answer::Str(d.as_str())
                }
                None => reject,
            }
        }
        Key::MaxRecvDataSegmentLength => match num_in(value, LEN_RANGE.0, LEN_RANGE.1) {
            Some(n) => {
                params.max_xmit_data_segment_length = to_u32(n);
                params.max_recv_data_segment_length = cfg.max_recv_data_segment_length;
                Answer::Num(u64::from(cfg.max_recv_data_segment_length))
            }
            None => reject,
        },
        Key::MaxBurstLength => match num_in(value, LEN_RANGE.0, LEN_RANGE.1) {
            Some(n) => {
                let r = n.min(u64::from(cfg.max_burst_length));
                params.max_burst_length = to_u32(r);
                params.first_burst_length = params.first_burst_length.min(to_u32(r));
                Answer::Num(r)
            }
            None => reject,
        },
        Key::FirstBurstLength => {
            if params.initial_r2t && !params.immediate_data {
                return Answer::Special(Special::Irrelevant);
            }
            match num_in(value, LEN_RANGE.0, LEN_RANGE.1) {
                Some(n) => {
                    let r = n
                        .min(u64::from(cfg.first_burst_length))
                        .min(u64::from(params.max_burst_length));
                    params.first_burst_length = to_u32(r);
                    Answer::Num(r)
                }
                None => reject,
            }
        }
        Key::MaxConnections => match num_in(value, 1, 65535) {
            Some(n) => {
                let r = n.min(u64::from(cfg.max_connections));
                params.max_connections = to_u16(r);
                Answer::Num(r)
            }
            None => reject,
        },
        Key::MaxOutstandingR2T => match num_in(value, 1, 65535) {
            Some(n) => {
                let r = n.min(u64::from(cfg.max_outstanding_r2t));
                params.max_outstanding_r2t = to_u16(r);
                Answer::Num(r)
            }
            None => reject,
        },
        Key::DefaultTime2Wait => match num_in(value, 0, 3600) {
            Some(n) => {
                let r = n.max(u64::from(cfg.default_time2wait));
                params.default_time2wait = to_u16(r);
                Answer::Num(r)
            }
            None => reject,
        },
        Key::DefaultTime2Retain => match num_in(value, 0, 3600) {
            Some(n) => {
                let r = n.min(u64::from(cfg.default_time2retain));
                params.default_time2retain = to_u16(r);
                Answer::Num(r)
            }
            None => reject,
        },
        Key::ErrorRecoveryLevel => match num_in(value, 0, 2) {
            Some(n) => {
                let r = n.min(u64::from(cfg.max_error_recovery_level));
                params.error_recovery_level = u8::try_from(r).unwrap_or(0);
                Answer::Num(r)
            }
            None => reject,
        },
        Key::ImmediateData | Key::InitialR2T | Key::DataPDUInOrder | Key::DataSequenceInOrder => {
            let theirs = match text::parse_bool(value) {
                Ok(b) => b,
                Err(_) => return reject,
            };
            let (ours, slot, and) = match key {
                Key::ImmediateData => (cfg.immediate_data, &mut params.immediate_data, true),
                Key::InitialR2T => (cfg.initial_r2t, &mut params.initial_r2t, false),
                Key::DataPDUInOrder => {
                    (cfg.data_pdu_in_order, &mut params.data_pdu_in_order, false)
                }
                _ => (
                    cfg.data_sequence_in_order,
                    &mut params.data_sequence_in_order,
                    false,
                ),
            };
            let r = if and { ours && theirs } else { ours || theirs };
            *slot = r;
            Answer::Str(text::bool_str(r))
        }
        // Markers are obsolete (RFC 7143 section 13.25 / appendix): never enabled.
        Key::OFMarker | Key::IFMarker => match text::parse_bool(value) {
            Ok(_) => Answer::Str("No"),
            Err(_) => reject,
        },
        Key::OFMarkInt | Key::IFMarkInt => Answer::Special(Special::Irrelevant),
        Key::TaskReporting => {
            if text::list_items(value).any(|v| v == "RFC3720") {
                params.task_reporting = TaskReporting::Rfc3720;
                Answer::Str("RFC3720")
            } else {
                reject
            }
        }
        Key::IscsiProtocolLevel => match num_in(value, 0, 31) {
            Some(n) => {
                let r = n.min(u64::from(cfg.protocol_level));
                params.protocol_level = u8::try_from(r).unwrap_or(0);
                Answer::Num(r)
            }
            None => reject,
        },
        _ => Answer::Special(Special::NotUnderstood),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(key: Key, v: &str) -> (Answer, SessionParams) {
        let cfg = LoginConfig::default();
        let mut p = SessionParams::RFC_DEFAULTS;
        let a = negotiate(key, v, &cfg, &mut p, SessionType::Normal);
        (a, p)
    }

    #[test]
    fn key_names_round_trip() {
        for k in ALL.iter().take(34) {
            assert_eq!(Key::from_name(k.name()), *k);
        }
        assert_eq!(Key::from_name("X-com.example.foo"), Key::Extension);
        assert_eq!(Key::from_name("X#foo"), Key::Extension);
        assert_eq!(Key::from_name("Bogus"), Key::Unknown);
        assert_eq!(Key::from_name("CHAP_A"), Key::ChapA);
        assert_ne!(Key::ChapA.bit(), Key::ChapI.bit());
    }

    #[test]
    fn numeric_result_functions() {
        // Default config: MaxBurstLength 262144, FirstBurstLength 65536, MaxConnections 1.
        assert_eq!(neg(Key::MaxBurstLength, "1048576").0, Answer::Num(262_144));
        assert_eq!(neg(Key::MaxBurstLength, "16384").0, Answer::Num(16384));
        assert_eq!(
            neg(Key::MaxBurstLength, "511").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(
            neg(Key::MaxBurstLength, "16777216").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(
            neg(Key::MaxBurstLength, "abc").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(neg(Key::MaxConnections, "8").0, Answer::Num(1));
        assert_eq!(
            neg(Key::MaxConnections, "0").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(neg(Key::DefaultTime2Wait, "0").0, Answer::Num(2));
        assert_eq!(neg(Key::DefaultTime2Wait, "10").0, Answer::Num(10));
        assert_eq!(
            neg(Key::DefaultTime2Wait, "3601").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(neg(Key::DefaultTime2Retain, "0").0, Answer::Num(0));
        assert_eq!(neg(Key::DefaultTime2Retain, "3600").0, Answer::Num(20));
        assert_eq!(neg(Key::ErrorRecoveryLevel, "2").0, Answer::Num(0));
        assert_eq!(
            neg(Key::ErrorRecoveryLevel, "3").0,
            Answer::Special(Special::Reject)
        );
        let (a, p) = neg(Key::MaxRecvDataSegmentLength, "262144");
        assert_eq!(a, Answer::Num(8192));
        assert_eq!(p.max_xmit_data_segment_length, 262_144);
        assert_eq!(p.max_recv_data_segment_length, 8192);
        assert_eq!(neg(Key::MaxOutstandingR2T, "4").0, Answer::Num(1));
    }

    #[test]
    fn boolean_result_functions() {
        // Config defaults: ImmediateData Yes, InitialR2T Yes, orders Yes.
        assert_eq!(neg(Key::ImmediateData, "No").0, Answer::Str("No"));
        assert_eq!(neg(Key::ImmediateData, "Yes").0, Answer::Str("Yes"));
        assert_eq!(neg(Key::InitialR2T, "No").0, Answer::Str("Yes"));
        assert_eq!(neg(Key::DataPDUInOrder, "No").0, Answer::Str("Yes"));
        assert_eq!(
            neg(Key::ImmediateData, "maybe").0,
            Answer::Special(Special::Reject)
        );
        let cfg = LoginConfig {
            initial_r2t: false,
            immediate_data: false,
            ..LoginConfig::default()
        };
        let mut p = SessionParams::RFC_DEFAULTS;
        assert_eq!(
            negotiate(Key::InitialR2T, "No", &cfg, &mut p, SessionType::Normal),
            Answer::Str("No")
        );
        assert!(!p.initial_r2t);
        assert_eq!(
            negotiate(Key::ImmediateData, "Yes", &cfg, &mut p, SessionType::Normal),
            Answer::Str("No")
        );
    }

    #[test]
    fn first_burst_irrelevant_and_clamped() {
        let cfg = LoginConfig::default();
        let mut p = SessionParams::RFC_DEFAULTS;
        p.immediate_data = false;
        p.initial_r2t = true;
        assert_eq!(
            negotiate(
                Key::FirstBurstLength,
                "65536",
                &cfg,
                &mut p,
                SessionType::Normal
            ),
            Answer::Special(Special::Irrelevant)
        );
        let mut p = SessionParams::RFC_DEFAULTS;
        p.max_burst_length = 16384;
        assert_eq!(
            negotiate(
                Key::FirstBurstLength,
                "65536",
                &cfg,
                &mut p,
                SessionType::Normal
            ),
            Answer::Num(16384)
        );
    }

    #[test]
    fn digests_and_misc() {
        assert_eq!(
            neg(Key::HeaderDigest, "CRC32C,None").0,
            Answer::Str("CRC32C")
        );
        assert_eq!(neg(Key::HeaderDigest, "None,CRC32C").0, Answer::Str("None"));
        assert_eq!(
            neg(Key::DataDigest, "MD5").0,
            Answer::Special(Special::Reject)
        );
        let (_, p) = neg(Key::DataDigest, "CRC32C");
        assert_eq!(p.data_digest, Digest::Crc32c);
        let cfg = LoginConfig {
            header_digests: super::super::DigestSupport {
                none: true,
                crc32c: false,
            },
            ..LoginConfig::default()
        };
        let mut p = SessionParams::RFC_DEFAULTS;
        assert_eq!(
            negotiate(
                Key::HeaderDigest,
                "CRC32C",
                &cfg,
                &mut p,
                SessionType::Normal
            ),
            Answer::Special(Special::Reject)
        );
        assert_eq!(neg(Key::OFMarker, "Yes").0, Answer::Str("No"));
        assert_eq!(
            neg(Key::IFMarkInt, "2048~8192").0,
            Answer::Special(Special::Irrelevant)
        );
        assert_eq!(
            neg(Key::TaskReporting, "ResponseFence,RFC3720").0,
            Answer::Str("RFC3720")
        );
        assert_eq!(
            neg(Key::TaskReporting, "FastAbort").0,
            Answer::Special(Special::Reject)
        );
        assert_eq!(neg(Key::IscsiProtocolLevel, "2").0, Answer::Num(1));
        let cfg = LoginConfig::default();
        let mut p = SessionParams::RFC_DEFAULTS;
        assert_eq!(
            negotiate(
                Key::MaxBurstLength,
                "4096",
                &cfg,
                &mut p,
                SessionType::Discovery
            ),
            Answer::Special(Special::Irrelevant)
        );
        assert_eq!(
            negotiate(
                Key::HeaderDigest,
                "None",
                &cfg,
                &mut p,
                SessionType::Discovery
            ),
            Answer::Str("None")
        );
    }
}
