//! Access control: who may log in to a target, and iSCSI name syntax.

use std::net::IpAddr;

/// One entry of a target's `initiators` list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitiatorRule {
    /// Everybody.
    All,
    /// An address prefix (a single address is a /32 or /128).
    Net {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// An initiator iSCSI name (compared case-insensitively, as iSCSI names are).
    Name(String),
}

impl InitiatorRule {
    /// Parses `ALL`, an IP, a CIDR or an iSCSI name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("ALL") {
            return Ok(InitiatorRule::All);
        }
        if let Some((a, p)) = s.split_once('/') {
            let addr: IpAddr = a
                .parse()
                .map_err(|_| "is not an IP address or CIDR".to_string())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("has a bad prefix length (0..={max})"))?;
            return Ok(InitiatorRule::Net { addr, prefix });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(InitiatorRule::Net { addr, prefix });
        }
        validate_iscsi_name(s)?;
        Ok(InitiatorRule::Name(s.to_ascii_lowercase()))
    }

    /// Whether an initiator with this address and name matches the rule.
    pub fn matches(&self, addr: IpAddr, name: &str) -> bool {
        match self {
            InitiatorRule::All => true,
            InitiatorRule::Name(n) => n.eq_ignore_ascii_case(name),
            InitiatorRule::Net { addr: net, prefix } => ip_in_net(addr, *net, *prefix),
        }
    }
}

fn ip_in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let addr = match (addr, net) {
        (IpAddr::V6(a), IpAddr::V4(_)) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        _ => addr,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Checks an iSCSI name (RFC 7143 section 4.2.7): `iqn.yyyy-mm.reversed.domain[:anything]`,
/// `eui.` + 16 hex digits, or `naa.` + 16 or 32 hex digits; at most 223 bytes.
pub fn validate_iscsi_name(s: &str) -> Result<(), String> {
    if s.len() > 223 {
        return Err("is longer than 223 bytes".into());
    }
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let b = rest.as_bytes();
        let date_ok = b.len() >= 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && matches!(
                &rest[5..7],
                "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
            );
        let tail = rest.get(7..).unwrap_or("");
        let tail_ok = tail.is_empty() || tail.starts_with('.') || tail.starts_with(':');
        let chars_ok = rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b':'));
        if date_ok && tail_ok && chars_ok {
            return Ok(());
        }
        return Err("is not a valid iqn name (iqn.YYYY-MM.reversed.domain[:id])".into());
    }
    let hex_len = |rest: &str| {
        rest.bytes()
            .all(|c| c.is_ascii_hexdigit())
            .then_some(rest.len())
    };
    if let Some(rest) = lower.strip_prefix("eui.") {
        if hex_len(rest) == Some(16) {
            return Ok(());
        }
        return Err("is not a valid eui name (eui. + 16 hex digits)".into());
    }
    if let Some(rest) = lower.strip_prefix("naa.") {
        if matches!(hex_len(rest), Some(16 | 32)) {
            return Ok(());
        }
        return Err("is not a valid naa name (naa. + 16 or 32 hex digits)".into());
    }
    Err("is not an iSCSI name (iqn., eui. or naa.)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "iqn.2026-11.org.example:disk1",
            "iqn.1992-01.com.x",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(validate_iscsi_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "iqn.2026-13.x",
            "iqn.26-11.x",
            "iqn.2026-11.a b",
            "eui.123",
            "naa.12",
            "x",
        ] {
            assert!(validate_iscsi_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn initiator_rules() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = InitiatorRule::parse("192.168.1.0/24").unwrap();
        assert!(r.matches(ip("192.168.1.77"), "x"));
        assert!(!r.matches(ip("192.168.2.1"), "x"));
        assert!(r.matches(ip("::ffff:192.168.1.5"), "x"));
        let r = InitiatorRule::parse("127.0.0.1").unwrap();
        assert!(r.matches(ip("127.0.0.1"), "x") && !r.matches(ip("127.0.0.2"), "x"));
        let r = InitiatorRule::parse("IQN.2026-11.org.example:Host").unwrap();
        assert!(r.matches(ip("10.0.0.1"), "iqn.2026-11.org.example:host"));
        assert!(!r.matches(ip("10.0.0.1"), "iqn.2026-11.org.example:other"));
        assert!(
            InitiatorRule::parse("0.0.0.0/0")
                .unwrap()
                .matches(ip("8.8.8.8"), "")
        );
        assert!(InitiatorRule::parse("::/0").unwrap().matches(ip("::1"), ""));
    }
}
