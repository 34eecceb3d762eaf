//! The `[limits]` table of the daemon's configuration: resource limits against hostile or
//! broken initiators, all optional, each defaulting to
//! [`iscsi_target::driver::Limits::default`].
//!
//! ```toml
//! [limits]
//! max_connections_per_portal = 1024     # open connections on one listening address
//! max_connections_per_initiator = 64    # open connections from one IP address
//! max_sessions_per_target = 1024        # logins beyond it fail (status 0x0301)
//! max_outstanding_commands = 64         # the CmdSN window of a session (1..=112)
//! login_timeout_secs = 15               # the whole login, else the connection closes
//! idle_timeout_secs = 60                # NOP-In ping after this long without input (0: off)
//! ping_timeout_secs = 15                # an unanswered ping closes the connection
//! max_text_bytes = 65536                # one login/text request sequence (C bit chain)
//! max_data_segment_bytes = 262144       # per PDU; offered as MaxRecvDataSegmentLength
//! ```
//!
//! Validation errors are one line naming the key and the value, like the rest of the
//! configuration: `limits.max_outstanding_commands = 500: must be in 1..=112`.

use iscsi_target::driver::Limits;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[limits]`: every key optional; a missing key takes the library default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Open connections per portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_portal: Option<u64>,
    /// Open connections per initiator IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_initiator: Option<u64>,
    /// Sessions per target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_target: Option<u64>,
    /// Outstanding non-immediate commands per session (the CmdSN window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_outstanding_commands: Option<u64>,
    /// Login timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_timeout_secs: Option<u64>,
    /// Seconds without input before a NOP-In ping (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds an initiator has to answer a ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_timeout_secs: Option<u64>,
    /// Bytes of one login or text request sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_bytes: Option<u64>,
    /// Bytes of one PDU's data segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_segment_bytes: Option<u64>,
}

/// The largest connection count accepted (per portal or per initiator).
pub const MAX_CONNECTIONS: u64 = 65_536;
/// The longest login, idle or ping timeout accepted, in seconds (one day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

fn check(key: &str, value: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError(format!(
            "limits.{key} = {value}: must be in {lo}..={hi}"
        )));
    }
    Ok(value)
}

impl LimitsSection {
    /// Whether no key is set (the table can be left out when saving).
    pub fn is_default(&self) -> bool {
        *self == LimitsSection::default()
    }

    /// Validates the table and returns the limits: defaults for missing keys.
    pub fn to_limits(&self) -> Result<Limits, ConfigError> {
        let mut l = Limits::default();
        if let Some(v) = self.max_connections_per_portal {
            l.max_connections_per_portal =
                to_usize(check("max_connections_per_portal", v, 1, MAX_CONNECTIONS)?);
        }
        if let Some(v) = self.max_connections_per_initiator {
            l.max_connections_per_initiator = to_usize(check(
                "max_connections_per_initiator",
                v,
                1,
                MAX_CONNECTIONS,
            )?);
        }
        if let Some(v) = self.max_sessions_per_target {
            let hi = iscsi_target::registry::MAX_NEXUS as u64;
            l.max_sessions_per_target = to_usize(check("max_sessions_per_target", v, 1, hi)?);
        }
        if let Some(v) = self.max_outstanding_commands {
            let hi = u64::from(Limits::MAX_OUTSTANDING);
            l.max_outstanding_commands = to_u32(check("max_outstanding_commands", v, 1, hi)?);
        }
        if let Some(v) = self.login_timeout_secs {
            l.login_timeout_ms = check("login_timeout_secs", v, 1, MAX_TIMEOUT_SECS)? * 1000;
        }
        if let Some(v) = self.idle_timeout_secs {
            l.idle_timeout_ms = check("idle_timeout_secs", v, 0, MAX_TIMEOUT_SECS)? * 1000;
        }
        if let Some(v) = self.ping_timeout_secs {
            l.ping_timeout_ms = check("ping_timeout_secs", v, 1, MAX_TIMEOUT_SECS)? * 1000;
        }
        let (lo, hi) = (
            u64::from(Limits::MIN_DATA_SEGMENT),
            u64::from(Limits::MAX_DATA_SEGMENT),
        );
        if let Some(v) = self.max_text_bytes {
            let hi = u64::from(Limits::MAX_TEXT);
            l.max_text_bytes = to_u32(check("max_text_bytes", v, lo, hi)?);
        }
        if let Some(v) = self.max_data_segment_bytes {
            l.max_data_segment_bytes = to_u32(check("max_data_segment_bytes", v, lo, hi)?);
        }
        // Every key was range-checked above; this catches a combination rule added to the
        // library later.
        l.validate()
            .map_err(|e| ConfigError(format!("limits: {e}")))?;
        Ok(l)
    }
}

// Values are range-checked before conversion, so these never saturate in practice.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LimitsSection, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_table_gives_the_defaults() {
        let s = parse("").unwrap();
        assert!(s.is_default());
        assert_eq!(s.to_limits().unwrap(), Limits::default());
        let d = Limits::default();
        assert_eq!(d.max_connections_per_portal, 1024);
        assert_eq!(d.max_connections_per_initiator, 64);
        assert_eq!(d.max_sessions_per_target, 1024);
        assert_eq!(d.max_outstanding_commands, 64);
        assert_eq!(d.login_timeout_ms, 15_000);
        assert_eq!(d.idle_timeout_ms, 60_000);
        assert_eq!(d.ping_timeout_ms, 15_000);
        assert_eq!(d.max_text_bytes, 65_536);
        assert_eq!(d.max_data_segment_bytes, 262_144);
    }

    #[test]
    fn every_key_is_applied() {
        let s = parse(
            "max_connections_per_portal = 10\nmax_connections_per_initiator = 2\n\
             max_sessions_per_target = 3\nmax_outstanding_commands = 8\n\
             login_timeout_secs = 2\nidle_timeout_secs = 0\nping_timeout_secs = 4\n\
             max_text_bytes = 4096\nmax_data_segment_bytes = 8192\n",
        )
        .unwrap();
        assert!(!s.is_default());
        let l = s.to_limits().unwrap();
        assert_eq!(
            l,
            Limits {
                max_connections_per_portal: 10,
                max_connections_per_initiator: 2,
                max_sessions_per_target: 3,
                max_outstanding_commands: 8,
                login_timeout_ms: 2000,
                idle_timeout_ms: 0,
                ping_timeout_ms: 4000,
                max_text_bytes: 4096,
                max_data_segment_bytes: 8192,
            }
        );
    }

    #[test]
    fn out_of_range_values_name_key_and_value() {
        let cases = [
            (
                "max_connections_per_portal = 0",
                "limits.max_connections_per_portal = 0: must be in 1..=65536",
            ),
            (
                "max_connections_per_initiator = 70000",
                "limits.max_connections_per_initiator = 70000: must be in 1..=65536",
            ),
            (
                "max_sessions_per_target = 1025",
                "limits.max_sessions_per_target = 1025: must be in 1..=1024",
            ),
            (
                "max_outstanding_commands = 500",
                "limits.max_outstanding_commands = 500: must be in 1..=112",
            ),
            (
                "login_timeout_secs = 0",
                "limits.login_timeout_secs = 0: must be in 1..=86400",
            ),
            (
                "idle_timeout_secs = 100000",
                "limits.idle_timeout_secs = 100000: must be in 0..=86400",
            ),
            (
                "ping_timeout_secs = 0",
                "limits.ping_timeout_secs = 0: must be in 1..=86400",
            ),
            (
                "max_text_bytes = 100",
                "limits.max_text_bytes = 100: must be in 512..=65536",
            ),
            (
                "max_data_segment_bytes = 1048576",
                "limits.max_data_segment_bytes = 1048576: must be in 512..=262144",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap().to_limits().unwrap_err();
            assert_eq!(e.to_string(), want, "{text}");
            assert_eq!(e.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn boundaries_are_accepted() {
        let s = parse(
            "max_connections_per_portal = 65536\nmax_sessions_per_target = 64\n\
             max_outstanding_commands = 112\nmax_outstanding_commands_x = 1\n",
        );
        assert!(s.unwrap_err().contains("max_outstanding_commands_x"));
        let l = parse(
            "max_connections_per_portal = 65536\nmax_sessions_per_target = 64\n\
             max_outstanding_commands = 112\nmax_text_bytes = 512\n\
             max_data_segment_bytes = 262144\nidle_timeout_secs = 0\n",
        )
        .unwrap()
        .to_limits()
        .unwrap();
        assert_eq!(l.max_connections_per_portal, 65_536);
        assert_eq!(l.max_outstanding_commands, 112);
        assert_eq!(l.max_text_bytes, 512);
        assert_eq!(l.idle_timeout_ms, 0);
    }

    #[test]
    fn negative_and_wrong_types_are_rejected_by_the_parser() {
        assert!(parse("max_text_bytes = -1").is_err());
        assert!(parse("login_timeout_secs = \"10\"").is_err());
    }

    #[test]
    fn saved_table_round_trips_and_omits_unset_keys() {
        let s = parse("max_outstanding_commands = 16\nlogin_timeout_secs = 5\n").unwrap();
        let text = toml::to_string(&s).unwrap();
        assert_eq!(
            text,
            "max_outstanding_commands = 16\nlogin_timeout_secs = 5\n"
        );
        assert_eq!(parse(&text).unwrap(), s);
    }
}
