//! The daemon's control socket: live administration over a unix socket, the way tgtadm
//! talks to tgtd.
//!
//! # Protocol (version 1)
//!
//! One request and one response per connection, each a single line of JSON:
//!
//! ```text
//! -> {"version":1,"command":{"op":"target-new","tid":2,"name":"iqn.2026-11.org.example:d2"}}
//! <- {"version":1,"ok":true,"data":null}
//! <- {"version":1,"ok":false,"error":"--tid 2: target 2 already exists"}
//! ```
//!
//! The request's `version` must be [`PROTOCOL_VERSION`]; commands are [`Command`] (tagged by
//! `op`), and `data` holds the [`TargetView`]s, [`SessionView`]s, ... of `show` commands.
//! The socket is created with mode 0600: only the daemon's user may administer it, and
//! nothing listens on TCP for administration.
//!
//! # Semantics
//!
//! The daemon keeps its *running configuration* (a [`Config`]) next to the live
//! [`Registry`]. Every request is validated first — the request itself, then the whole
//! configuration it would produce — and only then applied; a request that fails changes
//! nothing. `config save` writes the running configuration back as TOML (temporary file,
//! fsync, rename), so a daemon started on the saved file serves the same targets, LUNs,
//! ACLs and accounts. ACL and account changes apply to the next login; a new LUN raises
//! REPORTED LUNS DATA HAS CHANGED for logged-in initiators (scsi-core does that when a LUN
//! is added to a target); deleting a target or LUN that has sessions needs `force`, which
//! asks the initiators to log out (Asynchronous Message) and then closes what is left.
//! CHAP secrets never appear in responses or logs.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iscsi_target::registry::{LunBackend, LunStats, MAX_LUNS, Registry, TargetAuth, TargetNode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    Account, BsType, Config, InitiatorRule, LunSection, LunSpec, MAX_LUN, MAX_SECRET_LEN,
    MIN_SECRET_LEN, TargetSection, Validated, check_backing_store, parse_bstype, parse_size,
    physical_block_exponent, validate_iscsi_name,
};
use crate::daemon::{lu_config, lun_backend, open_store};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Where the control socket lives unless `--control` or `TGT_CONTROL` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tgt-rs/control.sock";
/// The largest request accepted (bytes).
pub const MAX_REQUEST: u64 = 1 << 20;
/// How long a client may take to send its request or read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A request: the protocol version and one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What to do.
    pub command: Command,
}

/// The commands of DESIGN.md ("tgt-cli: daemon and admin"), plus `account show`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// `target new --tid N --name IQN`.
    TargetNew {
        /// Target id.
        tid: u32,
        /// iSCSI name.
        name: String,
    },
    /// `target delete --tid N [--force]`.
    TargetDelete {
        /// Target id.
        tid: u32,
        /// Log sessions out instead of refusing.
        #[serde(default)]
        force: bool,
    },
    /// `target show [--tid N]`.
    TargetShow {
        /// Only this target.
        #[serde(default)]
        tid: Option<u32>,
    },
    /// `target bind --tid N (--initiator-address A | --initiator-name IQN)`.
    TargetBind {
        /// Target id.
        tid: u32,
        /// `ALL`, an IP address or a CIDR.
        #[serde(default)]
        address: Option<String>,
        /// An initiator name.
        #[serde(default)]
        name: Option<String>,
    },
    /// `target unbind --tid N (--initiator-address A | --initiator-name IQN)`.
    TargetUnbind {
        /// Target id.
        tid: u32,
        /// `ALL`, an IP address or a CIDR.
        #[serde(default)]
        address: Option<String>,
        /// An initiator name.
        #[serde(default)]
        name: Option<String>,
    },
    /// `lun new --tid N --lun L ...`.
    LunNew {
        /// Target id.
        tid: u32,
        /// The LUN, in config-file form.
        spec: LunSection,
    },
    /// `lun delete --tid N --lun L [--force]`.
    LunDelete {
        /// Target id.
        tid: u32,
        /// LUN number.
        lun: u64,
        /// Log sessions out instead of refusing.
        #[serde(default)]
        force: bool,
    },
    /// `account new --user U --password P`.
    AccountNew {
        /// CHAP name.
        user: String,
        /// CHAP secret.
        password: String,
    },
    /// `account delete --user U`.
    AccountDelete {
        /// CHAP name.
        user: String,
    },
    /// `account show`.
    AccountShow {},
    /// `account bind --tid N --user U [--outgoing]`.
    AccountBind {
        /// Target id.
        tid: u32,
        /// CHAP name.
        user: String,
        /// The target's own (mutual CHAP) user instead of an incoming one.
        #[serde(default)]
        outgoing: bool,
    },
    /// `account unbind --tid N --user U [--outgoing]`.
    AccountUnbind {
        /// Target id.
        tid: u32,
        /// CHAP name.
        user: String,
        /// The outgoing user.
        #[serde(default)]
        outgoing: bool,
    },
    /// `portal new --listen ADDR:PORT`.
    PortalNew {
        /// Address to listen on.
        listen: String,
    },
    /// `portal delete --listen ADDR:PORT`.
    PortalDelete {
        /// Address listened on.
        listen: String,
    },
    /// `portal show`.
    PortalShow {},
    /// `session show [--tid N]`.
    SessionShow {
        /// Only this target's sessions.
        #[serde(default)]
        tid: Option<u32>,
    },
    /// `stats [--tid N]`.
    Stats {
        /// Only this target.
        #[serde(default)]
        tid: Option<u32>,
    },
    /// `config save [PATH]`.
    ConfigSave {
        /// Absolute path; the file the daemon started with when absent.
        #[serde(default)]
        path: Option<String>,
    },
    /// `config show`.
    ConfigShow {},
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything but the CHAP secret.
        match self {
            Command::AccountNew { user, .. } => f
                .debug_struct("AccountNew")
                .field("user", user)
                .finish_non_exhaustive(),
            other => {
                let v = serde_json::to_value(other).map_err(|_| fmt::Error)?;
                write!(f, "{v}")
            }
        }
    }
}

impl Command {
    /// The `op` name (`target-new`, ...).
    pub fn op(&self) -> &'static str {
        match self {
            Command::TargetNew { .. } => "target-new",
            Command::TargetDelete { .. } => "target-delete",
            Command::TargetShow { .. } => "target-show",
            Command::TargetBind { .. } => "target-bind",
            Command::TargetUnbind { .. } => "target-unbind",
            Command::LunNew { .. } => "lun-new",
            Command::LunDelete { .. } => "lun-delete",
            Command::AccountNew { .. } => "account-new",
            Command::AccountDelete { .. } => "account-delete",
            Command::AccountShow {} => "account-show",
            Command::AccountBind { .. } => "account-bind",
            Command::AccountUnbind { .. } => "account-unbind",
            Command::PortalNew { .. } => "portal-new",
            Command::PortalDelete { .. } => "portal-delete",
            Command::PortalShow {} => "portal-show",
            Command::SessionShow { .. } => "session-show",
            Command::Stats { .. } => "stats",
            Command::ConfigSave { .. } => "config-save",
            Command::ConfigShow {} => "config-show",
        }
    }

    /// Whether the command changes state (and is logged).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Command::TargetShow { .. }
                | Command::AccountShow {}
                | Command::PortalShow {}
                | Command::SessionShow { .. }
                | Command::Stats { .. }
                | Command::ConfigShow {}
        )
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Whether the command succeeded.
    pub ok: bool,
    /// One line saying why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a `show` command returns.
    #[serde(default)]
    pub data: Value,
}

impl Response {
    fn ok(data: Value) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            ok: true,
            error: None,
            data,
        }
    }

    fn err(msg: impl Into<String>) -> Response {
        let msg: String = msg.into();
        Response {
            version: PROTOCOL_VERSION,
            ok: false,
            error: Some(msg.replace('\n', " ")),
            data: Value::Null,
        }
    }
}

/// A LUN as `target show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunView {
    /// LUN number.
    pub lun: u64,
    /// `rdwr`, `aio`, `memory` or `null`.
    pub bstype: String,
    /// Path (or label).
    pub backing_store: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Write protected.
    pub readonly: bool,
    /// Removable medium.
    pub removable: bool,
    /// Thin provisioned.
    pub thin: bool,
}

/// A target as `target show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    /// Target id.
    pub tid: u32,
    /// iSCSI name.
    pub name: String,
    /// ACL entries, as configured.
    pub initiators: Vec<String>,
    /// Incoming CHAP users.
    pub incoming_users: Vec<String>,
    /// Outgoing (mutual CHAP) user.
    pub outgoing_user: Option<String>,
    /// LUNs, by number.
    pub luns: Vec<LunView>,
    /// Logged-in sessions.
    pub sessions: usize,
}

/// A CHAP account as `account show` reports it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// CHAP name.
    pub user: String,
    /// Targets it is an incoming user of.
    pub incoming: Vec<u32>,
    /// Targets it is the outgoing user of.
    pub outgoing: Vec<u32>,
}

/// Negotiated parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsView {
    /// HeaderDigest.
    pub header_digest: String,
    /// DataDigest.
    pub data_digest: String,
    /// MaxRecvDataSegmentLength the target declared.
    pub max_recv_data_segment_length: u32,
    /// MaxRecvDataSegmentLength the initiator declared (what the target sends).
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u16,
    /// MaxConnections.
    pub max_connections: u16,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u8,
    /// DefaultTime2Wait.
    pub default_time2wait: u16,
    /// DefaultTime2Retain.
    pub default_time2retain: u16,
}

/// A session as `session show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// TSIH.
    pub tsih: u16,
    /// Target id.
    pub tid: u32,
    /// Target name.
    pub target: String,
    /// Initiator name.
    pub initiator: String,
    /// ISID, 12 hex digits.
    pub isid: String,
    /// Initiator address.
    pub address: String,
    /// Connections in the session.
    pub connections: usize,
    /// Negotiated parameters.
    pub params: Option<ParamsView>,
}

/// I/O counters of one LUN since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStatsView {
    /// LUN number.
    pub lun: u64,
    /// Backing-store requests (reads, writes and others).
    pub commands: u64,
    /// Reads.
    pub read_ops: u64,
    /// Writes.
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Reads sent from the page cache without a copy (`sendfile`), also in `read_ops`.
    #[serde(default)]
    pub zero_copy_reads: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Failed requests.
    pub errors: u64,
    /// Average latency in microseconds.
    pub latency_avg_us: u64,
    /// 99th percentile latency in microseconds (bucket upper bound, within 25%).
    pub latency_p99_us: u64,
}

/// Counters of one target: its LUNs and their sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatsView {
    /// Target id.
    pub tid: u32,
    /// Target name.
    pub name: String,
    /// Logged-in sessions.
    pub sessions: usize,
    /// Per LUN.
    pub luns: Vec<LunStatsView>,
    /// All LUNs together (latency: the worst p99, the request-weighted average).
    pub total: LunStatsView,
}

/// Starts and stops portals of the running runtime.
pub trait Portals {
    /// Listens on `addr`; returns the bound address.
    fn add(&mut self, addr: SocketAddr) -> io::Result<SocketAddr>;
    /// Stops listening on `addr`; false if it was not a portal.
    fn remove(&mut self, addr: SocketAddr) -> bool;
    /// The portals.
    fn list(&self) -> Vec<SocketAddr>;
}

/// Binds the control socket (mode 0600), creating its directory (mode 0700) if missing. A
/// stale socket file is replaced; one a live daemon answers on is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another daemon is listening on this control socket",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("control socket {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The daemon side: the running configuration and the handles to change what is served.
pub struct Control<'a> {
    registry: Arc<Registry>,
    config: Config,
    config_path: PathBuf,
    portals: &'a mut dyn Portals,
    /// Seconds initiators get to log out on a forced delete.
    pub logout_secs: u16,
}

impl fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn no_target(tid: u32) -> String {
    format!("--tid {tid}: no such target")
}

impl<'a> Control<'a> {
    /// `config` is the configuration the registry was built from (its `daemon.listen` is
    /// replaced by the portals actually bound); `config_path` is where `config save`
    /// writes by default.
    pub fn new(
        registry: Arc<Registry>,
        mut config: Config,
        config_path: PathBuf,
        portals: &'a mut dyn Portals,
    ) -> Control<'a> {
        config.daemon.listen = portals.list().iter().map(|a| a.to_string()).collect();
        Control {
            registry,
            config,
            config_path,
            portals,
            logout_secs: 2,
        }
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves requests one at a time until `stop` is set (checked every 20 ms).
    pub fn serve(&mut self, listener: &UnixListener, stop: &AtomicBool) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = self.serve_one(s) {
                        log::warn!("control socket: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(())
    }

    fn serve_one(&mut self, s: UnixStream) -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut line = Vec::new();
        BufReader::new((&s).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
        let resp = self.handle_bytes(&line);
        let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        out.push(b'\n');
        (&s).write_all(&out)
    }

    /// Parses and runs one request; every failure is a response, never a panic.
    pub fn handle_bytes(&mut self, req: &[u8]) -> Response {
        let v: Value = match serde_json::from_slice(req) {
            Ok(v) => v,
            Err(e) => return Response::err(format!("bad request: {e}")),
        };
        match v.get("version").and_then(Value::as_u64) {
            Some(n) if n == u64::from(PROTOCOL_VERSION) => {}
            Some(n) => {
                return Response::err(format!(
                    "protocol version {n} is not supported (the daemon speaks {PROTOCOL_VERSION})"
                ));
            }
            None => return Response::err("bad request: no protocol version"),
        }
        let req: Request = match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("bad request: {e}")),
        };
        self.handle(req.command)
    }

    /// Runs one command.
    pub fn handle(&mut self, cmd: Command) -> Response {
        let op = cmd.op();
        let mutates = cmd.mutates();
        let what = if mutates {
            format!("{cmd:?}")
        } else {
            String::new()
        };
        // A bug in one command must not take the daemon down with it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(cmd)))
            .unwrap_or_else(|_| {
                Err(format!(
                    "internal error while running {op} (see the daemon log)"
                ))
            });
        match result {
            Ok(data) => {
                if mutates {
                    log::info!("admin {op}: {what}");
                }
                Response::ok(data)
            }
            Err(e) => {
                if mutates {
                    log::info!("admin {op} refused: {e}");
                }
                Response::err(e)
            }
        }
    }

    fn dispatch(&mut self, cmd: Command) -> Result<Value, String> {
        match cmd {
            Command::TargetNew { tid, name } => self.target_new(tid, name),
            Command::TargetDelete { tid, force } => self.target_delete(tid, force),
            Command::TargetShow { tid } => to_json(&self.target_views(tid)?),
            Command::TargetBind { tid, address, name } => {
                self.target_bind(tid, address, name, true)
            }
            Command::TargetUnbind { tid, address, name } => {
                self.target_bind(tid, address, name, false)
            }
            Command::LunNew { tid, spec } => self.lun_new(tid, spec),
            Command::LunDelete { tid, lun, force } => self.lun_delete(tid, lun, force),
            Command::AccountNew { user, password } => self.account_new(user, password),
            Command::AccountDelete { user } => self.account_delete(&user),
            Command::AccountShow {} => to_json(&self.account_views()),
            Command::AccountBind {
                tid,
                user,
                outgoing,
            } => self.account_bind(tid, &user, outgoing),
            Command::AccountUnbind {
                tid,
                user,
                outgoing,
            } => self.account_unbind(tid, &user, outgoing),
            Command::PortalNew { listen } => self.portal_new(&listen),
            Command::PortalDelete { listen } => self.portal_delete(&listen),
            Command::PortalShow {} => to_json(&self.portal_list()),
            Command::SessionShow { tid } => to_json(&self.session_views(tid)?),
            Command::Stats { tid } => to_json(&self.stats_views(tid)?),
            Command::ConfigSave { path } => self.config_save(path),
            Command::ConfigShow {} => Ok(serde_json::json!({
                "toml": redacted(&self.config).to_toml(),
                "config": to_json(&redacted(&self.config))?,
            })),
        }
    }

    fn target_index(&self, tid: u32) -> Result<usize, String> {
        self.config
            .targets
            .iter()
            .position(|t| t.tid == tid)
            .ok_or_else(|| no_target(tid))
    }

    fn node(&self, tid: u32) -> Result<Arc<TargetNode>, String> {
        self.registry.target(tid).ok_or_else(|| no_target(tid))
    }

    /// Validates the configuration a request would produce (the backstop behind each
    /// command's own checks).
    fn check(next: &Config) -> Result<Validated, String> {
        next.validate().map_err(|e| e.0)
    }

    /// Pushes the ACL and CHAP settings of `tid` from a validated config to the registry.
    fn apply_access(&self, v: &Validated, tid: u32) -> Result<(), String> {
        let spec = v
            .targets
            .iter()
            .find(|t| t.tid == tid)
            .ok_or_else(|| no_target(tid))?;
        let node = self.node(tid)?;
        node.set_acl(spec.initiators.clone());
        node.set_auth(TargetAuth {
            incoming: spec.incoming.clone(),
            outgoing: spec.outgoing.clone(),
        });
        Ok(())
    }

    fn target_new(&mut self, tid: u32, name: String) -> Result<Value, String> {
        if tid == 0 {
            return Err("--tid 0: must be 1 or more".into());
        }
        validate_iscsi_name(&name).map_err(|why| format!("--name {name:?}: {why}"))?;
        if let Some(t) = self.config.targets.iter().find(|t| t.tid == tid) {
            return Err(format!(
                "--tid {tid}: target {tid} already exists ({})",
                t.name
            ));
        }
        if let Some(t) = self
            .config
            .targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&name))
        {
            return Err(format!(
                "--name {name:?}: target {} already has this name",
                t.tid
            ));
        }
        let mut next = self.config.clone();
        next.targets.push(TargetSection {
            tid,
            name: name.clone(),
            initiators: Vec::new(),
            incoming_users: Vec::new(),
            outgoing_user: None,
            luns: Vec::new(),
        });
        Self::check(&next)?;
        self.registry
            .add_target(self.registry.new_target(tid, &name))
            .map_err(|e| e.to_string())?;
        self.config = next;
        Ok(Value::Null)
    }

    /// Asks the sessions of `tid` to log out, waits for them, then closes what is left.
    fn log_out_sessions(&self, tid: u32) {
        let asked = self.registry.request_logout(Some(tid), self.logout_secs);
        log::info!("asked {asked} session(s) of target {tid} to log out");
        let grace = Duration::from_secs(u64::from(self.logout_secs) + 1);
        if !self.wait_sessions_gone(tid, grace) {
            log::info!("closing the remaining sessions of target {tid}");
            self.registry.kill_sessions(Some(tid));
            if !self.wait_sessions_gone(tid, Duration::from_secs(3)) {
                log::warn!("target {tid} still has sessions after closing them");
            }
        }
    }

    fn wait_sessions_gone(&self, tid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.registry.session_count(tid) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn target_delete(&mut self, tid: u32, force: bool) -> Result<Value, String> {
        let idx = self.target_index(tid)?;
        let n = self.registry.session_count(tid);
        if n > 0 && !force {
            return Err(format!(
                "target {tid} has {n} session(s): use --force to log them out and delete it"
            ));
        }
        let mut next = self.config.clone();
        next.targets.remove(idx);
        Self::check(&next)?;
        // Gone from discovery and logins first, then the sessions go.
        let node = self
            .registry
            .remove_target(tid, true)
            .map_err(|e| e.to_string())?;
        self.config = next;
        if n > 0 {
            self.log_out_sessions(tid);
        }
        for l in node.backends() {
            if let Err(e) = l.store.flush() {
                log::warn!("flush of target {tid} lun {}: {e}", l.info.number);
            }
        }
        Ok(Value::Null)
    }

    fn target_views(&self, tid: Option<u32>) -> Result<Vec<TargetView>, String> {
        if let Some(t) = tid {
            self.target_index(t)?;
        }
        let mut out = Vec::new();
        for t in self
            .config
            .targets
            .iter()
            .filter(|t| tid.is_none_or(|x| x == t.tid))
        {
            let luns = match self.registry.target(t.tid) {
                Some(node) => node.backends().iter().map(|b| lun_view(b)).collect(),
                None => Vec::new(),
            };
            out.push(TargetView {
                tid: t.tid,
                name: t.name.clone(),
                initiators: t.initiators.clone(),
                incoming_users: t.incoming_users.clone(),
                outgoing_user: t.outgoing_user.clone(),
                luns,
                sessions: self.registry.session_count(t.tid),
            });
        }
        out.sort_by_key(|t| t.tid);
        Ok(out)
    }

    fn target_bind(
        &mut self,
        tid: u32,
        address: Option<String>,
        name: Option<String>,
        bind: bool,
    ) -> Result<Value, String> {
        let (entry, rule) = match (address, name) {
            (Some(a), None) => {
                let rule = InitiatorRule::parse(&a)
                    .ok()
                    .filter(|r| !matches!(r, InitiatorRule::Name(_)))
                    .ok_or_else(|| {
                        format!("--initiator-address {a:?}: is not ALL, an IP address or a CIDR")
                    })?;
                (a, rule)
            }
            (None, Some(n)) => {
                validate_iscsi_name(&n).map_err(|why| format!("--initiator-name {n:?}: {why}"))?;
                let rule = InitiatorRule::parse(&n)
                    .map_err(|why| format!("--initiator-name {n:?}: {why}"))?;
                (n, rule)
            }
            _ => return Err("give one of --initiator-address or --initiator-name".into()),
        };
        let idx = self.target_index(tid)?;
        let mut next = self.config.clone();
        let t = &mut next.targets[idx];
        let pos = t
            .initiators
            .iter()
            .position(|s| InitiatorRule::parse(s).is_ok_and(|r| r == rule));
        match (bind, pos) {
            (true, Some(_)) => return Err(format!("{entry:?} is already bound to target {tid}")),
            (true, None) => t.initiators.push(entry),
            (false, None) => return Err(format!("{entry:?} is not bound to target {tid}")),
            (false, Some(i)) => {
                t.initiators.remove(i);
            }
        }
        let v = Self::check(&next)?;
        self.apply_access(&v, tid)?;
        self.config = next;
        Ok(Value::Null)
    }

    fn lun_new(&mut self, tid: u32, spec: LunSection) -> Result<Value, String> {
        let l = validate_lun_request(&spec)?;
        let idx = self.target_index(tid)?;
        let t = &self.config.targets[idx];
        if t.luns.iter().any(|x| x.lun == l.lun) {
            return Err(format!(
                "--lun {}: target {tid} already has LUN {}",
                l.lun, l.lun
            ));
        }
        if t.luns.len() >= MAX_LUNS {
            return Err(format!(
                "target {tid} already has {MAX_LUNS} LUNs, the most it can hold"
            ));
        }
        let mut created = None;
        if let (true, Some(p)) = (l.bstype.is_file(), &l.path) {
            let path = Path::new(p);
            for o in &self.config.targets {
                for x in &o.luns {
                    let same_type = parse_bstype(&x.bstype).is_ok_and(BsType::is_file);
                    if same_type && x.backing_store.as_deref() == Some(p.as_str()) {
                        return Err(format!(
                            "--backing-store {p:?}: is already used by target {} LUN {}",
                            o.tid, x.lun
                        ));
                    }
                }
            }
            if !path.exists() {
                if l.readonly {
                    return Err(format!(
                        "--backing-store {p:?}: does not exist (a read-only LUN is never created)"
                    ));
                }
                if l.size.is_none() {
                    return Err(format!(
                        "--backing-store {p:?}: does not exist; give --size to create it"
                    ));
                }
                if let Some(dir) = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
                {
                    return Err(format!(
                        "--backing-store {p:?}: directory {:?} does not exist",
                        dir.display().to_string()
                    ));
                }
                created = Some(path.to_path_buf());
            }
        }
        let mut next = self.config.clone();
        next.targets[idx].luns.push(spec);
        Self::check(&next)?;
        let node = self.node(tid)?;
        let undo = |e: String| {
            if let Some(p) = &created {
                let _ = std::fs::remove_file(p);
            }
            e
        };
        let lun = open_store(&l).map_err(|e| undo(format!("--backing-store: {e:#}")))?;
        let cfg = lu_config(tid, &l, &**lun.store());
        // scsi-core raises REPORTED LUNS DATA HAS CHANGED on the other LUNs.
        node.add_lun(lun_backend(&l, &lun), cfg)
            .map_err(|e| undo(format!("--lun {}: {e}", l.lun)))?;
        self.config = next;
        Ok(Value::Null)
    }

    fn lun_delete(&mut self, tid: u32, lun: u64, force: bool) -> Result<Value, String> {
        let idx = self.target_index(tid)?;
        let li = self.config.targets[idx]
            .luns
            .iter()
            .position(|x| x.lun == lun)
            .ok_or_else(|| format!("--lun {lun}: target {tid} has no LUN {lun}"))?;
        let n = self.registry.session_count(tid);
        if n > 0 && !force {
            return Err(format!(
                "target {tid} has {n} session(s): use --force to log them out and delete LUN {lun}"
            ));
        }
        let mut next = self.config.clone();
        next.targets[idx].luns.remove(li);
        Self::check(&next)?;
        let node = self.node(tid)?;
        let number = u16::try_from(lun).map_err(|_| format!("--lun {lun}: out of range"))?;
        let backend = node
            .backends()
            .into_iter()
            .find(|b| b.info.number == number);
        node.remove_lun(number)
            .map_err(|e| format!("--lun {lun}: {e}"))?;
        self.config = next;
        if n > 0 {
            self.log_out_sessions(tid);
        }
        if let Some(b) = backend {
            if let Err(e) = b.store.flush() {
                log::warn!("flush of target {tid} lun {lun}: {e}");
            }
        }
        Ok(Value::Null)
    }

    fn account_new(&mut self, user: String, password: String) -> Result<Value, String> {
        if user.is_empty() || user.len() > 255 || user.bytes().any(|c| c == 0 || c == b'\n') {
            return Err(format!("--user {user:?}: must be 1..=255 bytes"));
        }
        let n = password.len();
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&n) {
            return Err(format!(
                "--password (user {user:?}): must be {MIN_SECRET_LEN}..={MAX_SECRET_LEN} bytes, got {n}"
            ));
        }
        if self.config.accounts.iter().any(|a| a.user == user) {
            return Err(format!("--user {user:?}: the account already exists"));
        }
        let mut next = self.config.clone();
        next.accounts.push(Account { user, password });
        Self::check(&next)?;
        self.config = next;
        Ok(Value::Null)
    }

    fn account_delete(&mut self, user: &str) -> Result<Value, String> {
        let i = self
            .config
            .accounts
            .iter()
            .position(|a| a.user == user)
            .ok_or_else(|| format!("--user {user:?}: no such account"))?;
        let bound: Vec<String> = self
            .config
            .targets
            .iter()
            .filter(|t| {
                t.incoming_users.iter().any(|u| u == user)
                    || t.outgoing_user.as_deref() == Some(user)
            })
            .map(|t| t.tid.to_string())
            .collect();
        if !bound.is_empty() {
            return Err(format!(
                "account {user:?} is bound to target {}: unbind it first",
                bound.join(", ")
            ));
        }
        let mut next = self.config.clone();
        next.accounts.remove(i);
        Self::check(&next)?;
        self.config = next;
        Ok(Value::Null)
    }

    fn account_views(&self) -> Vec<AccountView> {
        self.config
            .accounts
            .iter()
            .map(|a| AccountView {
                user: a.user.clone(),
                incoming: self
                    .config
                    .targets
                    .iter()
                    .filter(|t| t.incoming_users.contains(&a.user))
                    .map(|t| t.tid)
                    .collect(),
                outgoing: self
                    .config
                    .targets
                    .iter()
                    .filter(|t| t.outgoing_user.as_ref() == Some(&a.user))
                    .map(|t| t.tid)
                    .collect(),
            })
            .collect()
    }

    fn account_bind(&mut self, tid: u32, user: &str, outgoing: bool) -> Result<Value, String> {
        let idx = self.target_index(tid)?;
        if !self.config.accounts.iter().any(|a| a.user == user) {
            return Err(format!(
                "--user {user:?}: no such account (create it with `account new`)"
            ));
        }
        let mut next = self.config.clone();
        let t = &mut next.targets[idx];
        if outgoing {
            match &t.outgoing_user {
                Some(u) if u == user => {
                    return Err(format!(
                        "{user:?} is already the outgoing user of target {tid}"
                    ));
                }
                Some(u) => {
                    return Err(format!(
                        "target {tid} already has outgoing user {u:?}: unbind it first"
                    ));
                }
                None => {}
            }
            if t.incoming_users.is_empty() {
                return Err(format!(
                    "--outgoing: target {tid} has no incoming user (mutual CHAP follows one-way \
                     CHAP): bind one first"
                ));
            }
            t.outgoing_user = Some(user.to_string());
        } else {
            if t.incoming_users.iter().any(|u| u == user) {
                return Err(format!(
                    "{user:?} is already an incoming user of target {tid}"
                ));
            }
            t.incoming_users.push(user.to_string());
        }
        let v = Self::check(&next).map_err(|e| {
            if e.contains("must not share its secret") {
                format!("{user:?}: the outgoing and incoming users of target {tid} must have different secrets")
            } else {
                e
            }
        })?;
        self.apply_access(&v, tid)?;
        self.config = next;
        Ok(Value::Null)
    }

    fn account_unbind(&mut self, tid: u32, user: &str, outgoing: bool) -> Result<Value, String> {
        let idx = self.target_index(tid)?;
        let mut next = self.config.clone();
        let t = &mut next.targets[idx];
        if outgoing {
            if t.outgoing_user.as_deref() != Some(user) {
                return Err(format!("{user:?} is not the outgoing user of target {tid}"));
            }
            t.outgoing_user = None;
        } else {
            let i = t
                .incoming_users
                .iter()
                .position(|u| u == user)
                .ok_or_else(|| format!("{user:?} is not an incoming user of target {tid}"))?;
            t.incoming_users.remove(i);
            if t.incoming_users.is_empty() {
                if let Some(o) = &t.outgoing_user {
                    return Err(format!(
                        "target {tid} has outgoing user {o:?}, which needs an incoming user: \
                         unbind it first (--outgoing)"
                    ));
                }
            }
        }
        let v = Self::check(&next)?;
        self.apply_access(&v, tid)?;
        self.config = next;
        Ok(Value::Null)
    }

    fn portal_list(&self) -> Vec<String> {
        self.portals.list().iter().map(|a| a.to_string()).collect()
    }

    fn portal_new(&mut self, listen: &str) -> Result<Value, String> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| format!("--listen {listen:?}: is not ADDR:PORT"))?;
        if self.portals.list().contains(&addr) {
            return Err(format!("--listen {listen:?}: already listening there"));
        }
        let bound = self.portals.add(addr).map_err(|e| e.to_string())?;
        self.config.daemon.listen = self.portal_list();
        Ok(serde_json::json!({ "listen": bound.to_string() }))
    }

    fn portal_delete(&mut self, listen: &str) -> Result<Value, String> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| format!("--listen {listen:?}: is not ADDR:PORT"))?;
        if !self.portals.remove(addr) {
            return Err(format!(
                "--listen {listen:?}: not a portal (portals: {})",
                self.portal_list().join(", ")
            ));
        }
        self.config.daemon.listen = self.portal_list();
        Ok(Value::Null)
    }

    fn session_views(&self, tid: Option<u32>) -> Result<Vec<SessionView>, String> {
        if let Some(t) = tid {
            self.target_index(t)?;
        }
        Ok(self
            .registry
            .sessions()
            .into_iter()
            .filter(|s| tid.is_none_or(|t| t == s.tid))
            .map(|s| SessionView {
                tsih: s.tsih,
                tid: s.tid,
                target: self
                    .registry
                    .target(s.tid)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                initiator: s.initiator.clone(),
                isid: s.isid.iter().map(|b| format!("{b:02x}")).collect(),
                address: s.peer.to_string(),
                connections: 1,
                params: s.params.map(|p| ParamsView {
                    header_digest: p.header_digest.as_str().to_string(),
                    data_digest: p.data_digest.as_str().to_string(),
                    max_recv_data_segment_length: p.max_recv_data_segment_length,
                    max_xmit_data_segment_length: p.max_xmit_data_segment_length,
                    max_burst_length: p.max_burst_length,
                    first_burst_length: p.first_burst_length,
                    immediate_data: p.immediate_data,
                    initial_r2t: p.initial_r2t,
                    max_outstanding_r2t: p.max_outstanding_r2t,
                    max_connections: p.max_connections,
                    error_recovery_level: p.error_recovery_level,
                    default_time2wait: p.default_time2wait,
                    default_time2retain: p.default_time2retain,
                }),
            })
            .collect())
    }

    fn stats_views(&self, tid: Option<u32>) -> Result<Vec<TargetStatsView>, String> {
        if let Some(t) = tid {
            self.node(t)?;
        }
        let mut out = Vec::new();
        for t in self
            .registry
            .targets()
            .iter()
            .filter(|t| tid.is_none_or(|x| x == t.tid))
        {
            let luns: Vec<LunStatsView> = t
                .backends()
                .iter()
                .map(|b| lun_stats(u64::from(b.info.number), &b.stats))
                .collect();
            let mut total = LunStatsView {
                lun: 0,
                commands: 0,
                read_ops: 0,
                write_ops: 0,
                read_bytes: 0,
                zero_copy_reads: 0,
                write_bytes: 0,
                errors: 0,
                latency_avg_us: 0,
                latency_p99_us: 0,
            };
            let mut lat_sum = 0u64;
            for l in &luns {
                total.commands = total.commands.saturating_add(l.commands);
                total.read_ops = total.read_ops.saturating_add(l.read_ops);
                total.write_ops = total.write_ops.saturating_add(l.write_ops);
                total.read_bytes = total.read_bytes.saturating_add(l.read_bytes);
                total.zero_copy_reads = total.zero_copy_reads.saturating_add(l.zero_copy_reads);
                total.write_bytes = total.write_bytes.saturating_add(l.write_bytes);
                total.errors = total.errors.saturating_add(l.errors);
                total.latency_p99_us = total.latency_p99_us.max(l.latency_p99_us);
                lat_sum = lat_sum.saturating_add(l.latency_avg_us.saturating_mul(l.commands));
            }
            total.latency_avg_us = lat_sum.checked_div(total.commands).unwrap_or(0);
            out.push(TargetStatsView {
                tid: t.tid,
                name: t.name.clone(),
                sessions: self.registry.session_count(t.tid),
                luns,
                total,
            });
        }
        Ok(out)
    }

    fn config_save(&mut self, path: Option<String>) -> Result<Value, String> {
        let path = match path {
            Some(p) => {
                let p = PathBuf::from(p);
                if !p.is_absolute() {
                    return Err(format!("{}: the path must be absolute", p.display()));
                }
                p
            }
            None => self.config_path.clone(),
        };
        // What we write must load back.
        Self::check(&self.config)?;
        let text = format!(
            "# tgt-rs configuration, written by `tgt-cli config save`.\n\n{}",
            self.config.to_toml()
        );
        write_atomically(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(serde_json::json!({ "path": path.display().to_string() }))
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// A LUN as `lun show` lists it; the size is the store's current one (an RBD image
/// resized elsewhere shows its new size).
fn lun_view(b: &LunBackend) -> LunView {
    let i = &b.info;
    LunView {
        lun: u64::from(i.number),
        bstype: i.bstype.clone(),
        backing_store: i.path.clone(),
        size: b.store.size(),
        block_size: i.block_size,
        readonly: i.readonly,
        removable: i.removable,
        thin: i.thin,
    }
}

fn lun_stats(lun: u64, s: &LunStats) -> LunStatsView {
    let commands = s.commands();
    let lat = s.latency_us.load(Ordering::Relaxed);
    LunStatsView {
        lun,
        commands,
        read_ops: s.read_ops.load(Ordering::Relaxed),
        write_ops: s.write_ops.load(Ordering::Relaxed),
        read_bytes: s.read_bytes.load(Ordering::Relaxed),
        zero_copy_reads: s.zero_copy_reads.load(Ordering::Relaxed),
        write_bytes: s.write_bytes.load(Ordering::Relaxed),
        errors: s.errors.load(Ordering::Relaxed),
        latency_avg_us: lat.checked_div(commands).unwrap_or(0),
        latency_p99_us: s.latency.percentile(99.0),
    }
}

/// The configuration with every CHAP secret replaced (for `config show`).
pub fn redacted(c: &Config) -> Config {
    let mut c = c.clone();
    for a in &mut c.accounts {
        a.password = "********".to_string();
    }
    c
}

/// Checks a `lun new` request; errors name the command-line option.
pub fn validate_lun_request(l: &LunSection) -> Result<LunSpec, String> {
    if l.lun > MAX_LUN {
        return Err(format!("--lun {}: must be 0..={MAX_LUN}", l.lun));
    }
    let bstype =
        parse_bstype(&l.bstype).map_err(|why| format!("--bstype {:?}: {why}", l.bstype))?;
    if !matches!(l.block_size, 512 | 4096) {
        return Err(format!(
            "--block-size {}: must be 512 or 4096",
            l.block_size
        ));
    }
    let physical_block_exponent = physical_block_exponent(l.block_size, l.physical_block_size)
        .map_err(|why| {
            format!(
                "--physical-block-size {}: {why}",
                l.physical_block_size.unwrap_or(0)
            )
        })?;
    let size = match &l.size {
        None => None,
        Some(s) => {
            let n = parse_size(s).map_err(|why| format!("--size {s:?}: {why}"))?;
            if n == 0 || n % u64::from(l.block_size) != 0 {
                return Err(format!(
                    "--size {s:?}: must be a non-zero multiple of the block size {}",
                    l.block_size
                ));
            }
            Some(n)
        }
    };
    let path = l.backing_store.clone().filter(|p| !p.is_empty());
    if bstype.needs_path() && path.is_none() {
        return Err(format!(
            "--backing-store: is required for bstype {}",
            bstype.as_str()
        ));
    }
    if let Some(p) = &path {
        check_backing_store(bstype, p).map_err(|why| format!("--backing-store {p:?}: {why}"))?;
    }
    if !bstype.needs_path() && size.is_none() {
        return Err(format!(
            "--size: is required for bstype {}",
            bstype.as_str()
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

/// Writes `data` to `path` so that a crash leaves either the old or the new file: a
/// temporary file in the same directory, fsync, rename, fsync of the directory. The file
/// keeps the mode of the one it replaces (0600 for a new one: it holds CHAP secrets).
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The client side of one request: connects, sends, reads the response.
pub fn call(socket: &Path, command: Command) -> io::Result<Response> {
    let s = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the daemon at {}: {e} (is `tgt-cli daemon` running? set --control \
                 or TGT_CONTROL)",
                socket.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let req = Request {
        version: PROTOCOL_VERSION,
        command,
    };
    let mut line = serde_json::to_vec(&req).map_err(io::Error::other)?;
    line.push(b'\n');
    (&s).write_all(&line)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = Vec::new();
    (&s).take(64 << 20).read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad response from the daemon: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::build_registry;

    const IQN: &str = "iqn.2026-11.org.tgt-rs:unit";

    /// Portals without sockets: "binding" port 0 gives 4000, 4001, ...
    #[derive(Default)]
    struct FakePortals {
        list: Vec<SocketAddr>,
        next: u16,
    }

    impl Portals for FakePortals {
        fn add(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
            if addr.port() == 9 {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("listen on {addr}: in use"),
                ));
            }
            let mut a = addr;
            if a.port() == 0 {
                a.set_port(4000 + self.next);
                self.next += 1;
            }
            self.list.push(a);
            Ok(a)
        }
        fn remove(&mut self, addr: SocketAddr) -> bool {
            let n = self.list.len();
            self.list.retain(|a| *a != addr);
            n != self.list.len()
        }
        fn list(&self) -> Vec<SocketAddr> {
            self.list.clone()
        }
    }

    fn base_config() -> Config {
        Config::from_toml(&format!(
            "[daemon]\nlisten = [\"127.0.0.1:3260\"]\n\
             [[account]]\nuser = \"alice\"\npassword = \"alice-secret-12\"\n\
             [[account]]\nuser = \"bob\"\npassword = \"bob-secret-123\"\n\
             [[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
             [[target.lun]]\nlun = 1\nbstype = \"memory\"\nsize = \"1M\"\n"
        ))
        .unwrap()
    }

    fn with_control(f: impl FnOnce(&mut Control<'_>, &Registry)) {
        let config = base_config();
        let registry = build_registry(&config.validate().unwrap(), None).unwrap();
        let mut portals = FakePortals {
            list: vec!["127.0.0.1:3260".parse().unwrap()],
            next: 0,
        };
        let mut c = Control::new(
            registry.clone(),
            config,
            PathBuf::from("/nonexistent-dir/t.toml"),
            &mut portals,
        );
        f(&mut c, &registry);
    }

    fn err(r: Response) -> String {
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.data, Value::Null);
        r.error.unwrap()
    }

    #[test]
    fn wire_format() {
        let req = Request {
            version: PROTOCOL_VERSION,
            command: Command::TargetNew {
                tid: 2,
                name: IQN.into(),
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"version":1,"command":{{"op":"target-new","tid":2,"name":"{IQN}"}}}}"#)
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        // Optional fields may be left out.
        let r: Request =
            serde_json::from_str(r#"{"version":1,"command":{"op":"target-delete","tid":3}}"#)
                .unwrap();
        assert_eq!(
            r.command,
            Command::TargetDelete {
                tid: 3,
                force: false
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"version":1,"command":{"op":"portal-show"}}"#).unwrap();
        assert_eq!(r.command, Command::PortalShow {});
        // Unknown fields are errors, not silently ignored.
        assert!(
            serde_json::from_str::<Request>(
                r#"{"version":1,"command":{"op":"portal-show","x":1}}"#
            )
            .is_err()
        );
        let resp = serde_json::to_string(&Response::err("no\nnewlines")).unwrap();
        assert_eq!(
            resp,
            r#"{"version":1,"ok":false,"error":"no newlines","data":null}"#
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Command::AccountNew {
            user: "alice".into(),
            password: "alice-secret-12".into(),
        };
        let s = format!("{c:?}");
        assert!(s.contains("alice") && !s.contains("alice-secret-12"), "{s}");
        let s = format!(
            "{:?}",
            Request {
                version: 1,
                command: c
            }
        );
        assert!(!s.contains("alice-secret-12"), "{s}");
        let shown = redacted(&base_config()).to_toml();
        assert!(
            !shown.contains("secret") && shown.contains("********"),
            "{shown}"
        );
    }

    #[test]
    fn envelope_errors() {
        with_control(|c, _| {
            assert!(err(c.handle_bytes(b"not json")).starts_with("bad request: "));
            assert_eq!(
                err(c.handle_bytes(b"{}")),
                "bad request: no protocol version"
            );
            assert_eq!(
                err(c.handle_bytes(br#"{"version":7,"command":{"op":"portal-show"}}"#)),
                "protocol version 7 is not supported (the daemon speaks 1)"
            );
            assert!(
                err(c.handle_bytes(br#"{"version":1,"command":{"op":"erase"}}"#))
                    .contains("unknown variant")
            );
            let ok = c.handle_bytes(br#"{"version":1,"command":{"op":"portal-show"}}"#);
            assert!(ok.ok);
            assert_eq!(ok.data, serde_json::json!(["127.0.0.1:3260"]));
        });
    }

    #[test]
    fn targets_acls_and_accounts_reach_the_registry() {
        with_control(|c, reg| {
            let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
            assert!(
                c.handle(Command::TargetNew {
                    tid: 2,
                    name: "iqn.2026-11.x:two".into()
                })
                .ok
            );
            let node = reg.target(2).unwrap();
            assert!(!node.allows(ip, "iqn.2026-11.x:host"), "no initiators yet");
            let bind = |a: &str| Command::TargetBind {
                tid: 2,
                address: Some(a.into()),
                name: None,
            };
            assert!(c.handle(bind("10.1.0.0/16")).ok);
            assert!(node.allows(ip, "iqn.2026-11.x:host"));
            assert!(!node.allows("10.2.0.1".parse().unwrap(), "iqn.2026-11.x:host"));
            // The same rule spelt differently is still a duplicate.
            assert_eq!(
                err(c.handle(bind("10.1.0.0/16"))),
                "\"10.1.0.0/16\" is already bound to target 2"
            );
            assert!(
                c.handle(Command::TargetUnbind {
                    tid: 2,
                    address: Some("10.1.0.0/16".into()),
                    name: None
                })
                .ok
            );
            assert!(!node.allows(ip, "iqn.2026-11.x:host"));
            assert!(
                c.handle(Command::TargetBind {
                    tid: 2,
                    address: None,
                    name: Some("IQN.2026-11.x:Host".into())
                })
                .ok
            );
            assert!(node.allows(ip, "iqn.2026-11.x:host"));
            assert_eq!(
                err(c.handle(Command::TargetBind {
                    tid: 2,
                    address: Some("ALL".into()),
                    name: Some("iqn.2026-11.x:h".into())
                })),
                "give one of --initiator-address or --initiator-name"
            );

            // CHAP: incoming then outgoing; the secrets go to the registry, not the answer.
            assert!(
                c.handle(Command::AccountBind {
                    tid: 2,
                    user: "alice".into(),
                    outgoing: false
                })
                .ok
            );
            assert!(
                c.handle(Command::AccountBind {
                    tid: 2,
                    user: "bob".into(),
                    outgoing: true
                })
                .ok
            );
            let auth = node.auth();
            assert_eq!(
                auth.incoming,
                vec![("alice".to_string(), "alice-secret-12".to_string())]
            );
            assert_eq!(
                auth.outgoing,
                Some(("bob".to_string(), "bob-secret-123".to_string()))
            );
            let shown = c.handle(Command::TargetShow { tid: Some(2) });
            let text = shown.data.to_string();
            assert!(
                text.contains("\"alice\"") && !text.contains("secret"),
                "{text}"
            );
            let accounts = c.handle(Command::AccountShow {}).data;
            assert_eq!(
                accounts,
                serde_json::json!([
                    {"user": "alice", "incoming": [2], "outgoing": []},
                    {"user": "bob", "incoming": [], "outgoing": [2]},
                ])
            );
            assert_eq!(
                err(c.handle(Command::AccountDelete { user: "bob".into() })),
                "account \"bob\" is bound to target 2: unbind it first"
            );
            // An outgoing user sharing the incoming secret is refused, state unchanged.
            assert!(
                c.handle(Command::AccountNew {
                    user: "carol".into(),
                    password: "alice-secret-12".into()
                })
                .ok
            );
            assert!(
                c.handle(Command::AccountUnbind {
                    tid: 2,
                    user: "bob".into(),
                    outgoing: true
                })
                .ok
            );
            assert_eq!(node.auth().outgoing, None);
            let before = c.config().clone();
            assert_eq!(
                err(c.handle(Command::AccountBind {
                    tid: 2,
                    user: "carol".into(),
                    outgoing: true
                })),
                "\"carol\": the outgoing and incoming users of target 2 must have different secrets"
            );
            assert_eq!(c.config(), &before);
            assert_eq!(node.auth().outgoing, None);
        });
    }

    #[test]
    fn lun_request_physical_block_size() {
        let mut l = LunSection {
            lun: 4,
            backing_store: None,
            bstype: "memory".into(),
            size: Some("1M".into()),
            block_size: 512,
            physical_block_size: Some(4096),
            readonly: false,
            removable: false,
            thin: false,
        };
        assert_eq!(validate_lun_request(&l).unwrap().physical_block_exponent, 3);
        l.physical_block_size = Some(3000);
        assert_eq!(
            validate_lun_request(&l).unwrap_err(),
            "--physical-block-size 3000: must be a power-of-two multiple of block_size 512, \
             at most 32768 blocks"
        );
        l.physical_block_size = None;
        assert_eq!(validate_lun_request(&l).unwrap().physical_block_exponent, 0);
    }

    #[test]
    fn luns_are_checked_then_added_and_removed() {
        with_control(|c, reg| {
            let lun =
                |n: u64, bstype: &str, path: Option<&str>, size: Option<&str>| Command::LunNew {
                    tid: 1,
                    spec: LunSection {
                        lun: n,
                        backing_store: path.map(str::to_string),
                        bstype: bstype.into(),
                        size: size.map(str::to_string),
                        block_size: 512,
                        physical_block_size: None,
                        readonly: false,
                        removable: false,
                        thin: false,
                    },
                };
            let before = c.config().clone();
            for (cmd, want) in [
                (
                    lun(1, "null", None, Some("1M")),
                    "--lun 1: target 1 already has LUN 1",
                ),
                (
                    lun(2, "null", None, Some("1X")),
                    "--size \"1X\": has an unknown unit (K, M, G, T, P)",
                ),
                (
                    lun(2, "null", None, None),
                    "--size: is required for bstype null",
                ),
                (
                    lun(2, "rdwr", None, Some("1M")),
                    "--backing-store: is required for bstype rdwr",
                ),
                (
                    lun(99999, "null", None, Some("1M")),
                    "--lun 99999: must be 0..=16383",
                ),
                (
                    lun(2, "nbd", Some("/x.img"), None),
                    "--backing-store \"/x.img\": is not an NBD URL \
                     (nbd://host[:port]/export or nbd+unix:///export?socket=PATH)",
                ),
                (
                    lun(2, "nbd", None, None),
                    "--backing-store: is required for bstype nbd",
                ),
            ] {
                assert_eq!(err(c.handle(cmd)), want);
                assert_eq!(c.config(), &before);
                assert_eq!(reg.target(1).unwrap().backends().len(), 1);
            }
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("a.img");
            let img = img.to_str().unwrap();
            assert!(c.handle(lun(2, "rdwr", Some(img), Some("2M"))).ok);
            assert_eq!(std::fs::metadata(img).unwrap().len(), 2 << 20);
            assert_eq!(
                err(c.handle(lun(3, "aio", Some(img), Some("2M")))),
                format!("--backing-store {img:?}: is already used by target 1 LUN 2")
            );
            let numbers: Vec<u16> = reg
                .target(1)
                .unwrap()
                .backends()
                .iter()
                .map(|b| b.info.number)
                .collect();
            assert_eq!(numbers, vec![1, 2]);
            assert_eq!(c.config().targets[0].luns.len(), 2);
            assert!(
                c.handle(Command::LunDelete {
                    tid: 1,
                    lun: 2,
                    force: false
                })
                .ok
            );
            assert_eq!(reg.target(1).unwrap().backends().len(), 1);
            assert_eq!(c.config(), &before);
        });
    }

    #[test]
    fn portals_follow_the_config() {
        with_control(|c, _| {
            let r = c.handle(Command::PortalNew {
                listen: "127.0.0.1:0".into(),
            });
            assert_eq!(r.data, serde_json::json!({"listen": "127.0.0.1:4000"}));
            assert_eq!(
                c.config().daemon.listen,
                vec!["127.0.0.1:3260", "127.0.0.1:4000"]
            );
            assert_eq!(
                err(c.handle(Command::PortalNew {
                    listen: "127.0.0.1:9".into()
                })),
                "listen on 127.0.0.1:9: in use"
            );
            assert!(
                c.handle(Command::PortalDelete {
                    listen: "127.0.0.1:3260".into()
                })
                .ok
            );
            assert_eq!(c.config().daemon.listen, vec!["127.0.0.1:4000"]);
            assert_eq!(
                err(c.handle(Command::PortalDelete {
                    listen: "127.0.0.1:3260".into()
                })),
                "--listen \"127.0.0.1:3260\": not a portal (portals: 127.0.0.1:4000)"
            );
        });
    }

    #[test]
    fn config_save_writes_what_loads_back() {
        with_control(|c, _| {
            assert_eq!(
                err(c.handle(Command::ConfigSave {
                    path: Some("relative.toml".into())
                })),
                "relative.toml: the path must be absolute"
            );
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("saved.toml");
            assert!(
                c.handle(Command::TargetNew {
                    tid: 5,
                    name: "iqn.2026-11.x:five".into()
                })
                .ok
            );
            let r = c.handle(Command::ConfigSave {
                path: Some(path.display().to_string()),
            });
            assert_eq!(
                r.data,
                serde_json::json!({"path": path.display().to_string()})
            );
            let back = Config::load(&path).unwrap();
            assert_eq!(&back, c.config());
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let missing = c.handle(Command::ConfigSave { path: None });
            assert!(err(missing).starts_with("/nonexistent-dir/t.toml: "));
        });
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["c.toml".to_string()]);
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomically(&dir.path().join("no/such.toml"), b"x").is_err());
    }

    #[test]
    fn socket_is_private_and_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("ctl.sock");
        let l = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // A live socket is not replaced ...
        let e = bind(&path).unwrap_err();
        assert!(e.to_string().contains("another daemon"), "{e}");
        // ... a stale one is.
        drop(l);
        assert!(bind(&path).is_ok());
    }
}
