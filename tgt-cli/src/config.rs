//! The daemon's TOML configuration: the schema in DESIGN.md ("tgt-cli: daemon and admin"),
//! parsed with serde and validated as a whole before anything starts.
//!
//! Every error is one line that names the key and the value, e.g.
//! `target[0].lun[1].block_size = 1000: must be 512 or 4096`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

pub use iscsi_target::acl::{InitiatorRule, validate_iscsi_name};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`: portals, runtime and reactor count.
    #[serde(default)]
    pub daemon: DaemonSection,
    /// `[[account]]`: CHAP users.
    #[serde(default, rename = "account", skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<Account>,
    /// `[[target]]`: the targets and their LUNs.
    #[serde(default, rename = "target", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSection>,
    /// `[limits]`: resource limits (all optional, with defaults).
    #[serde(
        default,
        skip_serializing_if = "crate::limits::LimitsSection::is_default"
    )]
    pub limits: crate::limits::LimitsSection,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Portals (`ADDR:PORT`), default `0.0.0.0:3260`.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// `mio` (default) or `threads`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Reactor threads for the mio runtime; 0 = one per core, each kept on its core.
    #[serde(default)]
    pub reactors: usize,
    /// Blocking I/O threads per mio reactor (requests to file, nbd and rbd stores that
    /// cannot be served inline); 0 = the built-in default (8).
    #[serde(default)]
    pub io_threads: usize,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            listen: default_listen(),
            runtime: default_runtime(),
            reactors: 0,
            io_threads: 0,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:3260".to_string()]
}

fn default_runtime() -> String {
    "mio".to_string()
}

/// `[[account]]`: a CHAP user.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The CHAP name.
    pub user: String,
    /// The CHAP secret (12 bytes or more).
    pub password: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs or output.
        f.debug_struct("Account")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `[[target]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Target id (1 or more, unique).
    pub tid: u32,
    /// iSCSI name (`iqn.`, `eui.` or `naa.`).
    pub name: String,
    /// Who may log in: `ALL`, IP addresses, CIDRs or initiator names. Empty: nobody.
    #[serde(default)]
    pub initiators: Vec<String>,
    /// CHAP users the initiator must authenticate as (one of them). Empty: no CHAP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incoming_users: Vec<String>,
    /// The user the target authenticates as (mutual CHAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing_user: Option<String>,
    /// `[[target.lun]]`.
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunSection>,
}

/// `[[target.lun]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LunSection {
    /// Logical unit number (0..=16383).
    pub lun: u64,
    /// Path of the file or block device, or the server URL for nbd
    /// (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`); optional (a label)
    /// for memory and null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_store: Option<String>,
    /// `rdwr` (default), `aio`, `memory`, `null` or `nbd`.
    #[serde(default = "default_bstype")]
    pub bstype: String,
    /// Size such as `10G`; required for memory/null and for files that do not exist yet;
    /// optional for nbd (the server's export size; if given, it must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// 512 (default) or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Physical block size in bytes, reported to initiators (READ CAPACITY (16), VPD Block
    /// Limits): a power-of-two multiple of `block_size`, at most 2^15 blocks. Default: the
    /// block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_block_size: Option<u32>,
    /// Write protected.
    #[serde(default)]
    pub readonly: bool,
    /// Removable medium (START STOP UNIT eject/load, PREVENT ALLOW MEDIUM REMOVAL).
    #[serde(default)]
    pub removable: bool,
    /// Thin provisioned: UNMAP, WRITE SAME with UNMAP, GET LBA STATUS.
    #[serde(default)]
    pub thin: bool,
}

fn default_bstype() -> String {
    "rdwr".to_string()
}

fn default_block_size() -> u32 {
    512
}

/// The runtime that drives connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `runtime-mio`: epoll reactors.
    Mio,
    /// `runtime-threads`: one thread per connection.
    Threads,
}

impl RuntimeKind {
    /// Parses `mio` / `threads`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mio" => Some(RuntimeKind::Mio),
            "threads" => Some(RuntimeKind::Threads),
            _ => None,
        }
    }
}

/// The backing store type of a LUN: backstore's, so the daemon opens exactly what the
/// configuration names.
pub use backstore::BsType;

/// Parses a `bstype` value; the error is the reason, to follow `key = "value": `.
pub fn parse_bstype(s: &str) -> Result<BsType, &'static str> {
    match s.parse::<BsType>() {
        Ok(BsType::Rbd) if !backstore::rbd::enabled() => {
            Err("needs tgt-cli built with --features rbd (librbd)")
        }
        Ok(t) => Ok(t),
        Err(_) => Err("must be rdwr, aio, memory, null, nbd or rbd"),
    }
}

/// The most logical blocks one physical block may hold (the exponent is 4 bits).
pub const MAX_BLOCKS_PER_PHYSICAL: u32 = 1 << 15;

/// log2(physical / logical) for `physical_block_size`; `None` means the default (equal to
/// the block size). The error is the reason, to follow `key = value: `.
pub fn physical_block_exponent(block_size: u32, physical: Option<u32>) -> Result<u8, String> {
    let Some(p) = physical else {
        return Ok(0);
    };
    let ratio = p / block_size.max(1);
    if p == 0
        || p % block_size.max(1) != 0
        || !ratio.is_power_of_two()
        || ratio > MAX_BLOCKS_PER_PHYSICAL
    {
        return Err(format!(
            "must be a power-of-two multiple of block_size {block_size}, \
             at most {MAX_BLOCKS_PER_PHYSICAL} blocks"
        ));
    }
    Ok(ratio.trailing_zeros() as u8)
}

/// Checks `backing_store` for `bstype`: an NBD URL must parse (the reason otherwise).
pub fn check_backing_store(bstype: BsType, path: &str) -> Result<(), String> {
    match bstype {
        BsType::Nbd => {
            backstore::nbd::NbdUrl::parse(path)?;
        }
        BsType::Rbd => {
            backstore::rbd::RbdSpec::parse(path).map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    Ok(())
}

/// Parses a size such as `10G`, `512M`, `1T` or `4096` (whole numbers, optional `B` / `iB`
/// suffixes; units are binary: K = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("is not a size (e.g. 4096, 512M, 10G)".into());
    }
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| "is too large".to_string())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err("has an unknown unit (K, M, G, T, P)".into()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "is too large".to_string())
}

/// Formats a byte count the way [`parse_size`] reads it back (largest exact unit).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{}", bytes >> shift, unit);
        }
    }
    bytes.to_string()
}

/// A configuration error: one line naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl fmt::Display, value: impl fmt::Debug, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key} = {value:?}: {why}"))
}

/// A validated LUN.
#[derive(Debug, Clone, PartialEq)]
pub struct LunSpec {
    /// LUN number.
    pub lun: u64,
    /// Backing store type.
    pub bstype: BsType,
    /// Path (or label for memory/null).
    pub path: Option<String>,
    /// Size in bytes, if given.
    pub size: Option<u64>,
    /// Logical block size.
    pub block_size: u32,
    /// log2(logical blocks per physical block), from `physical_block_size`.
    pub physical_block_exponent: u8,
    /// Write protected.
    pub readonly: bool,
    /// Removable medium.
    pub removable: bool,
    /// Thin provisioned.
    pub thin: bool,
}

/// A validated target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// Target id.
    pub tid: u32,
    /// iSCSI name.
    pub name: String,
    /// Access rules.
    pub initiators: Vec<InitiatorRule>,
    /// Incoming CHAP users (name, secret).
    pub incoming: Vec<(String, String)>,
    /// Outgoing CHAP user (name, secret).
    pub outgoing: Option<(String, String)>,
    /// LUNs, in config order.
    pub luns: Vec<LunSpec>,
}

/// The validated configuration the daemon starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Portals.
    pub listen: Vec<SocketAddr>,
    /// Runtime.
    pub runtime: RuntimeKind,
    /// Reactor threads (0 = one per core).
    pub reactors: usize,
    /// I/O threads per reactor (0 = the runtime's default).
    pub io_threads: usize,
    /// Targets.
    pub targets: Vec<TargetSpec>,
    /// Resource limits.
    pub limits: iscsi_target::driver::Limits,
}

/// The shortest CHAP secret accepted (RFC 7143 section 12.1.3 asks for 96 bits or more).
pub const MIN_SECRET_LEN: usize = 12;
/// The longest CHAP secret accepted.
pub const MAX_SECRET_LEN: usize = 255;
/// The largest LUN number (flat space addressing).
pub const MAX_LUN: u64 = 16383;

impl Config {
    /// Parses TOML text; syntax and type errors become one line with the position.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let snippet = text.get(span.clone()).unwrap_or("").replace('\n', " ");
                    ConfigError(format!("line {line}: {snippet:?}: {msg}"))
                }
                None => ConfigError(msg),
            }
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Serializes back to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks everything and resolves accounts; nothing starts unless this succeeds.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let d = &self.daemon;
        let mut listen = Vec::new();
        for (i, l) in d.listen.iter().enumerate() {
            let addr = l
                .parse::<SocketAddr>()
                .map_err(|_| err(format_args!("daemon.listen[{i}]"), l, "is not ADDR:PORT"))?;
            if listen.contains(&addr) {
                return Err(err(
                    format_args!("daemon.listen[{i}]"),
                    l,
                    "is listed twice",
                ));
            }
            listen.push(addr);
        }
        let runtime = RuntimeKind::parse(&d.runtime)
            .ok_or_else(|| err("daemon.runtime", &d.runtime, "must be mio or threads"))?;
        if d.reactors > 1024 {
            return Err(err("daemon.reactors", d.reactors, "must be 0..=1024"));
        }
        if d.io_threads > 1024 {
            return Err(err("daemon.io_threads", d.io_threads, "must be 0..=1024"));
        }

        let mut users = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            validate_account(i, a)?;
            if !users.insert(a.user.as_str()) {
                return Err(err(
                    format_args!("account[{i}].user"),
                    &a.user,
                    "is defined twice",
                ));
            }
        }
        let secret = |user: &str| {
            self.accounts
                .iter()
                .find(|a| a.user == user)
                .map(|a| a.password.clone())
        };

        let mut targets = Vec::new();
        let mut tids = HashSet::new();
        let mut names = HashSet::new();
        for (ti, t) in self.targets.iter().enumerate() {
            let key = |k: &str| format!("target[{ti}].{k}");
            if t.tid == 0 {
                return Err(err(key("tid"), t.tid, "must be 1 or more"));
            }
            if !tids.insert(t.tid) {
                return Err(err(key("tid"), t.tid, "is used by another target"));
            }
            validate_iscsi_name(&t.name).map_err(|why| err(key("name"), &t.name, why))?;
            if !names.insert(t.name.to_ascii_lowercase()) {
                return Err(err(key("name"), &t.name, "is used by another target"));
            }
            let mut initiators = Vec::new();
            for (i, s) in t.initiators.iter().enumerate() {
                let rule = InitiatorRule::parse(s)
                    .map_err(|why| err(key(&format!("initiators[{i}]")), s, why))?;
                initiators.push(rule);
            }
            let mut incoming = Vec::new();
            for (i, u) in t.incoming_users.iter().enumerate() {
                let s = secret(u).ok_or_else(|| {
                    err(
                        key(&format!("incoming_users[{i}]")),
                        u,
                        "has no [[account]]",
                    )
                })?;
                incoming.push((u.clone(), s));
            }
            let outgoing = match &t.outgoing_user {
                None => None,
                Some(u) => {
                    let s = secret(u)
                        .ok_or_else(|| err(key("outgoing_user"), u, "has no [[account]]"))?;
                    if incoming.is_empty() {
                        return Err(err(
                            key("outgoing_user"),
                            u,
                            "needs incoming_users (mutual CHAP follows one-way CHAP)",
                        ));
                    }
                    if incoming.iter().any(|(_, si)| *si == s) {
                        return Err(err(
                            key("outgoing_user"),
                            u,
                            "must not share its secret with an incoming user",
                        ));
                    }
                    Some((u.clone(), s))
                }
            };
            let mut luns = Vec::new();
            for (li, l) in t.luns.iter().enumerate() {
                let spec = validate_lun(&format!("target[{ti}].lun[{li}]"), l)?;
                if luns.iter().any(|o: &LunSpec| o.lun == spec.lun) {
                    return Err(err(
                        format!("target[{ti}].lun[{li}].lun"),
                        l.lun,
                        "is used twice in this target",
                    ));
                }
                luns.push(spec);
            }
            targets.push(TargetSpec {
                tid: t.tid,
                name: t.name.clone(),
                initiators,
                incoming,
                outgoing,
                luns,
            });
        }
        Ok(Validated {
            listen,
            runtime,
            reactors: d.reactors,
            io_threads: d.io_threads,
            targets,
            limits: self.limits.to_limits()?,
        })
    }
}

fn validate_account(i: usize, a: &Account) -> Result<(), ConfigError> {
    if a.user.is_empty() || a.user.len() > 255 || a.user.bytes().any(|c| c == 0 || c == b'\n') {
        return Err(err(
            format_args!("account[{i}].user"),
            &a.user,
            "must be 1..=255 bytes",
        ));
    }
    let n = a.password.len();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&n) {
        // Never echo the secret itself.
        return Err(ConfigError(format!(
            "account[{i}].password (user {:?}): must be {MIN_SECRET_LEN}..={MAX_SECRET_LEN} \
             bytes, got {n}",
            a.user
        )));
    }
    Ok(())
}

fn validate_lun(key: &str, l: &LunSection) -> Result<LunSpec, ConfigError> {
    if l.lun > MAX_LUN {
        return Err(err(
            format_args!("{key}.lun"),
            l.lun,
            format_args!("must be 0..={MAX_LUN}"),
        ));
    }
    let bstype =
        parse_bstype(&l.bstype).map_err(|why| err(format_args!("{key}.bstype"), &l.bstype, why))?;
    if !matches!(l.block_size, 512 | 4096) {
        return Err(err(
            format_args!("{key}.block_size"),
            l.block_size,
            "must be 512 or 4096",
        ));
    }
    let physical_block_exponent = physical_block_exponent(l.block_size, l.physical_block_size)
        .map_err(|why| {
            err(
                format_args!("{key}.physical_block_size"),
                l.physical_block_size.unwrap_or(0),
                why,
            )
        })?;
    let size = match &l.size {
        None => None,
        Some(s) => {
            let n = parse_size(s).map_err(|why| err(format_args!("{key}.size"), s, why))?;
            if n == 0 || n % u64::from(l.block_size) != 0 {
                return Err(err(
                    format_args!("{key}.size"),
                    s,
                    format_args!("must be a non-zero multiple of block_size {}", l.block_size),
                ));
            }
            Some(n)
        }
    };
    let path = l.backing_store.clone().filter(|p| !p.is_empty());
    if bstype.needs_path() && path.is_none() {
        return Err(err(
            format_args!("{key}.backing_store"),
            "",
            format_args!("is required for bstype {}", bstype.as_str()),
        ));
    }
    if let Some(p) = &path {
        check_backing_store(bstype, p)
            .map_err(|why| err(format_args!("{key}.backing_store"), p, why))?;
    }
    if !bstype.needs_path() && size.is_none() {
        return Err(err(
            format_args!("{key}.size"),
            "",
            format_args!("is required for bstype {}", bstype.as_str()),
        ));
    }
    Ok(LunSpec {
        lun: l.lun,
        bstype,
        path,
        size,
        block_size: l.block_size,
        physical_block_exponent,
        readonly: l.readonly,
        removable: l.removable,
        thin: l.thin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[daemon]
listen   = ["0.0.0.0:3260"]
runtime  = "mio"
reactors = 0
io_threads = 32

[[account]]
user = "alice"
password = "a-secret-of-12+"

[[account]]
user = "bob"
password = "bobs-secret-123"

[[target]]
tid  = 1
name = "iqn.2026-11.org.example:disk1"
initiators = ["ALL"]
incoming_users = ["alice"]
outgoing_user  = "bob"

[[target.lun]]
lun = 1
backing_store = "/var/lib/tgt-rs/disk1.img"
bstype = "rdwr"
size = "10G"
block_size = 512
readonly = false
removable = false
thin = true
"#;

    fn validate(text: &str) -> Result<Validated, String> {
        Config::from_toml(text)
            .and_then(|c| c.validate())
            .map_err(|e| e.0)
    }

    #[test]
    fn design_example_parses() {
        let v = validate(FULL).unwrap();
        assert_eq!(
            v.listen,
            vec!["0.0.0.0:3260".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(v.runtime, RuntimeKind::Mio);
        assert_eq!((v.reactors, v.io_threads), (0, 32));
        let t = &v.targets[0];
        assert_eq!(t.tid, 1);
        assert_eq!(t.initiators, vec![InitiatorRule::All]);
        assert_eq!(
            t.incoming,
            vec![("alice".to_string(), "a-secret-of-12+".to_string())]
        );
        assert_eq!(
            t.outgoing,
            Some(("bob".to_string(), "bobs-secret-123".to_string()))
        );
        let l = &t.luns[0];
        assert_eq!(l.size, Some(10 << 30));
        assert_eq!(l.bstype, BsType::Rdwr);
        assert!(l.thin && !l.readonly && !l.removable);
    }

    #[test]
    fn defaults() {
        let v = validate("").unwrap();
        assert_eq!(
            v.listen,
            vec!["0.0.0.0:3260".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(v.runtime, RuntimeKind::Mio);
        let v = validate(
            "[[target]]\ntid = 2\nname = \"iqn.2026-11.a:b\"\n[[target.lun]]\nlun = 0\n\
             bstype = \"memory\"\nsize = \"1M\"\n",
        )
        .unwrap();
        let l = &v.targets[0].luns[0];
        assert_eq!((l.block_size, l.thin, l.path.clone()), (512, false, None));
    }

    #[test]
    fn errors_name_key_and_value() {
        let cases: &[(&str, &str)] = &[
            ("size = \"10G\"", "size = \"10Q\""),
            ("block_size = 512", "block_size = 1000"),
            ("bstype = \"rdwr\"", "bstype = \"tape\""),
            ("tid  = 1", "tid = 0"),
            ("\"0.0.0.0:3260\"", "\"nowhere\""),
            ("runtime  = \"mio\"", "runtime = \"tokio\""),
            ("password = \"a-secret-of-12+\"", "password = \"short\""),
            ("outgoing_user  = \"bob\"", "outgoing_user = \"carol\""),
            (
                "name = \"iqn.2026-11.org.example:disk1\"",
                "name = \"disk1\"",
            ),
            ("initiators = [\"ALL\"]", "initiators = [\"10.0.0.0/40\"]"),
            ("lun = 1", "lun = 20000"),
            ("readonly = false", "readonly = false\ncolour = 1"),
            ("io_threads = 32", "io_threads = 5000"),
        ];
        let expect = [
            "target[0].lun[0].size = \"10Q\": has an unknown unit",
            "target[0].lun[0].block_size = 1000: must be 512 or 4096",
            "target[0].lun[0].bstype = \"tape\": must be rdwr, aio, memory, null, nbd or rbd",
            "target[0].tid = 0: must be 1 or more",
            "daemon.listen[0] = \"nowhere\": is not ADDR:PORT",
            "daemon.runtime = \"tokio\": must be mio or threads",
            "account[0].password (user \"alice\"): must be 12..=255 bytes, got 5",
            "target[0].outgoing_user = \"carol\": has no [[account]]",
            "target[0].name = \"disk1\": is not an iSCSI name",
            "target[0].initiators[0] = \"10.0.0.0/40\": has a bad prefix length",
            "target[0].lun[0].lun = 20000: must be 0..=16383",
            "unknown field `colour`",
            "daemon.io_threads = 5000: must be 0..=1024",
        ];
        for ((from, to), want) in cases.iter().zip(expect) {
            let text = FULL.replacen(from, to, 1);
            assert_ne!(text, FULL, "{from}");
            let e = validate(&text).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
            assert!(
                !e.contains("a-secret-of-12+") && !e.contains("short\""),
                "{e}"
            );
        }
    }

    #[test]
    fn duplicates_and_references() {
        let two = format!("{FULL}\n[[target]]\ntid = 1\nname = \"iqn.2026-11.x:y\"\n");
        assert!(
            validate(&two)
                .unwrap_err()
                .contains("target[1].tid = 1: is used by another")
        );
        let lun2 = format!("{FULL}\n[[target.lun]]\nlun = 1\nbstype = \"null\"\nsize = \"1M\"\n");
        assert!(
            validate(&lun2)
                .unwrap_err()
                .contains("target[0].lun[1].lun = 1: is used twice")
        );
        let nopath = FULL.replace("backing_store = \"/var/lib/tgt-rs/disk1.img\"\n", "");
        assert!(
            validate(&nopath)
                .unwrap_err()
                .contains("backing_store = \"\": is required")
        );
        let rbd = FULL.replace("bstype = \"rdwr\"", "bstype = \"rbd\"");
        if !backstore::rbd::enabled() {
            assert!(
                validate(&rbd)
                    .unwrap_err()
                    .contains("bstype = \"rbd\": needs tgt-cli built with --features rbd")
            );
        }
        let odd = FULL.replace("size = \"10G\"", "size = \"1000\"");
        assert!(
            validate(&odd)
                .unwrap_err()
                .contains("multiple of block_size 512")
        );
        let same = FULL.replace("bobs-secret-123", "a-secret-of-12+");
        assert!(
            validate(&same)
                .unwrap_err()
                .contains("must not share its secret")
        );
    }

    #[test]
    fn nbd_luns() {
        let base = FULL.replace("bstype = \"rdwr\"", "bstype = \"nbd\"");
        let tcp = base
            .replace("/var/lib/tgt-rs/disk1.img", "nbd://10.0.0.5/vol1")
            .replace("size = \"10G\"\n", "");
        let l = &validate(&tcp).unwrap().targets[0].luns[0];
        assert_eq!(l.bstype, BsType::Nbd);
        assert_eq!(l.path.as_deref(), Some("nbd://10.0.0.5/vol1"));
        assert_eq!(l.size, None, "the size comes from the server");
        let unix = base.replace(
            "/var/lib/tgt-rs/disk1.img",
            "nbd+unix:///vol1?socket=/run/nbd.sock",
        );
        let l = &validate(&unix).unwrap().targets[0].luns[0];
        assert_eq!(
            l.size,
            Some(10 << 30),
            "a given size is checked against the server's"
        );
        let bad = base.replace("/var/lib/tgt-rs/disk1.img", "/var/lib/disk.img");
        let e = validate(&bad).unwrap_err();
        assert!(
            e.starts_with(
                "target[0].lun[0].backing_store = \"/var/lib/disk.img\": is not an NBD URL"
            ),
            "{e}"
        );
        let e =
            validate(&base.replace("/var/lib/tgt-rs/disk1.img", "nbd+unix:///vol1")).unwrap_err();
        assert!(e.ends_with("nbd+unix:// needs ?socket=PATH"), "{e}");
        let none = base.replace("backing_store = \"/var/lib/tgt-rs/disk1.img\"\n", "");
        assert!(
            validate(&none)
                .unwrap_err()
                .contains("backing_store = \"\": is required for bstype nbd")
        );
        assert_eq!(parse_bstype("nbd"), Ok(BsType::Nbd));
        assert_eq!(parse_bstype("rdwr"), Ok(BsType::Rdwr));
    }

    #[test]
    fn physical_block_size() {
        let with =
            |v: &str| FULL.replace("block_size = 512\n", &format!("block_size = 512\n{v}\n"));
        let l = &validate(&with("physical_block_size = 4096"))
            .unwrap()
            .targets[0]
            .luns[0];
        assert_eq!((l.block_size, l.physical_block_exponent), (512, 3));
        let l = &validate(FULL).unwrap().targets[0].luns[0];
        assert_eq!(l.physical_block_exponent, 0);
        let l = &validate(&with("physical_block_size = 512"))
            .unwrap()
            .targets[0]
            .luns[0];
        assert_eq!(l.physical_block_exponent, 0);
        let l = &validate(&with("physical_block_size = 16777216"))
            .unwrap()
            .targets[0]
            .luns[0];
        assert_eq!(l.physical_block_exponent, 15);
        for bad in [0u32, 1000, 256, 1536, 33554432] {
            let e = validate(&with(&format!("physical_block_size = {bad}"))).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "target[0].lun[0].physical_block_size = {bad}: must be a power-of-two \
                     multiple of block_size 512, at most 32768 blocks"
                )
            );
        }
        assert_eq!(physical_block_exponent(4096, Some(4096)), Ok(0));
        assert_eq!(physical_block_exponent(4096, Some(65536)), Ok(4));
        assert_eq!(physical_block_exponent(4096, None), Ok(0));
        // `config save` writes it back only when set.
        let c = Config::from_toml(&with("physical_block_size = 4096")).unwrap();
        assert_eq!(c.targets[0].luns[0].physical_block_size, Some(4096));
        let text = c.to_toml();
        assert!(text.contains("physical_block_size = 4096"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        assert!(
            !Config::from_toml(FULL)
                .unwrap()
                .to_toml()
                .contains("physical")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999P").is_err());
        for n in [1u64 << 30, 512, 3 << 20, 4097] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn round_trip_toml() {
        let c = Config::from_toml(FULL).unwrap();
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::from_toml(FULL).unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("a-secret-of-12+") && s.contains("alice"));
    }
}
