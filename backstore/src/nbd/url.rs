//! NBD URLs: `nbd://host[:port][/export]` (TCP, default port 10809) and
//! `nbd+unix:///export?socket=/path` (a unix socket), as in the NBD URI convention.

use std::fmt;
use std::path::PathBuf;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP: a host name or address, and a port.
    Tcp {
        /// Host name, IPv4 address or IPv6 address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket.
    Unix(PathBuf),
}

/// A parsed NBD URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUrl {
    /// The server.
    pub addr: NbdAddr,
    /// The export name (empty: the server's default export).
    pub export: String,
}

impl fmt::Display for NbdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            NbdAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddr::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            NbdAddr::Unix(p) => write!(f, "nbd+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

impl NbdUrl {
    /// Parses an `nbd://` or `nbd+unix://` URL; the error says what is wrong (one line).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, unix) = if let Some(r) = url.strip_prefix("nbd://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("nbd+tcp://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("nbd+unix://") {
            (r, true)
        } else if url.starts_with("nbds") {
            return Err("TLS (nbds://) is not supported".into());
        } else {
            return Err("is not an NBD URL (nbd://host[:port]/export or \
                        nbd+unix:///export?socket=PATH)"
                .into());
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, export) = match rest.split_once('/') {
            Some((a, e)) => (a, e),
            None => (rest, ""),
        };
        let export = percent_decode(export)?;
        if export.len() > 4096 {
            return Err("export name is longer than 4096 bytes".into());
        }
        let mut socket = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("socket", v)) if !v.is_empty() => socket = Some(percent_decode(v)?),
                _ => return Err(format!("unsupported query parameter {pair:?}")),
            }
        }
        if unix {
            if !authority.is_empty() {
                return Err("nbd+unix:// takes no host (nbd+unix:///export?socket=PATH)".into());
            }
            let Some(path) = socket else {
                return Err("nbd+unix:// needs ?socket=PATH".into());
            };
            return Ok(NbdUrl {
                addr: NbdAddr::Unix(PathBuf::from(path)),
                export,
            });
        }
        if socket.is_some() {
            return Err("?socket= needs nbd+unix://".into());
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| "unterminated [IPv6 address]".to_string())?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("junk {p:?} after the address"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host (nbd://host[:port]/export)".into());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port {p:?} is not 1..=65535"))?,
        };
        Ok(NbdUrl {
            addr: NbdAddr::Tcp {
                host: host.to_string(),
                port,
            },
            export,
        })
    }
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUrl {
        NbdUrl {
            addr: NbdAddr::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    #[test]
    fn tcp_urls() {
        assert_eq!(
            NbdUrl::parse("nbd://localhost/exp"),
            Ok(tcp("localhost", 10809, "exp"))
        );
        assert_eq!(
            NbdUrl::parse("nbd://10.0.0.1:1234/a/b"),
            Ok(tcp("10.0.0.1", 1234, "a/b"))
        );
        assert_eq!(
            NbdUrl::parse("nbd://[::1]:99/x%20y"),
            Ok(tcp("::1", 99, "x y"))
        );
        assert_eq!(NbdUrl::parse("nbd://[::1]"), Ok(tcp("::1", 10809, "")));
        assert_eq!(NbdUrl::parse("nbd+tcp://h:1"), Ok(tcp("h", 1, "")));
        assert_eq!(
            tcp("::1", 99, "e").to_string(),
            "nbd://[::1]:99/e".to_string()
        );
        assert_eq!(tcp("h", 1, "e").to_string(), "nbd://h:1/e");
    }

    #[test]
    fn unix_urls() {
        let u = NbdUrl::parse("nbd+unix:///exp?socket=/run/nbd.sock").unwrap();
        assert_eq!(u.addr, NbdAddr::Unix("/run/nbd.sock".into()));
        assert_eq!(u.export, "exp");
        assert_eq!(u.to_string(), "nbd+unix:///exp?socket=/run/nbd.sock");
        let u = NbdUrl::parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.export, "");
    }

    #[test]
    fn bad_urls() {
        for (url, why) in [
            ("/var/disk.img", "is not an NBD URL"),
            ("nbds://h/e", "TLS"),
            ("nbd://h:0/e", "port \"0\" is not 1..=65535"),
            ("nbd://h:x/e", "port \"x\""),
            ("nbd:///e", "no host"),
            ("nbd://[::1/e", "unterminated"),
            ("nbd://[::1]x/e", "junk"),
            ("nbd+unix:///e", "needs ?socket=PATH"),
            ("nbd+unix://h/e?socket=/s", "takes no host"),
            ("nbd://h/e?socket=/s", "needs nbd+unix"),
            ("nbd://h/e?tls=on", "unsupported query parameter \"tls=on\""),
            ("nbd://h/%zz", "bad %-escape"),
            ("nbd://h/%ff", "not UTF-8"),
        ] {
            let e = NbdUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
