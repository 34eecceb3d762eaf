//! The admin commands (`tgt-cli target ...`, `lun`, `account`, `portal`, `session`,
//! `stats`, `config`): each builds one [`Command`], sends it over the control socket
//! ([`crate::control`]) and prints the answer — nothing for a change that succeeded, a
//! table for `show` and `stats`, or the JSON the daemon returned with `--json`. A refused
//! request becomes an error (one line on stderr, non-zero exit).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{BsType, Config, LunSection, format_size, parse_bstype};
use crate::control::{AccountView, Command, SessionView, TargetStatsView, TargetView, call};

/// `tgt-cli target ...`.
#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Create a target (no LUNs, no initiators: bind some to let them in).
    New {
        /// Target id (1 or more).
        #[arg(long)]
        tid: u32,
        /// iSCSI name (iqn., eui. or naa.).
        #[arg(long)]
        name: String,
    },
    /// Delete a target; with sessions only with --force (they are asked to log out).
    Delete {
        /// Target id.
        #[arg(long)]
        tid: u32,
        /// Log the sessions out instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Show targets, their LUNs, ACLs and CHAP users.
    Show {
        /// Only this target.
        #[arg(long)]
        tid: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Allow an initiator address, network or name (applies to the next login).
    Bind(BindArgs),
    /// Remove an ACL entry (applies to the next login).
    Unbind(BindArgs),
}

/// Arguments of `target bind` / `unbind`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("who").required(true).args(["initiator_address", "initiator_name"])))]
pub struct BindArgs {
    /// Target id.
    #[arg(long)]
    tid: u32,
    /// ALL, an IP address or a CIDR.
    #[arg(long, value_name = "ALL|IP|CIDR")]
    initiator_address: Option<String>,
    /// An initiator iSCSI name.
    #[arg(long, value_name = "IQN")]
    initiator_name: Option<String>,
}

/// `tgt-cli lun ...`.
#[derive(Debug, Subcommand)]
pub enum LunCmd {
    /// Add a LUN to a target, live (initiators see REPORTED LUNS DATA HAS CHANGED).
    New {
        /// Target id.
        #[arg(long)]
        tid: u32,
        /// LUN number (0..=16383).
        #[arg(long)]
        lun: u64,
        /// File or block device (a label for memory and null); created sparse with --size
        /// when missing.
        #[arg(long, value_name = "PATH")]
        backing_store: Option<String>,
        /// rdwr, aio, memory, null, nbd or rbd (for nbd --backing-store is the server URL:
        /// `nbd://host[:port]/export` or `nbd+unix:///export?socket=PATH`).
        #[arg(long, default_value = "rdwr")]
        bstype: String,
        /// Size such as 10G (required for memory, null and files that do not exist).
        #[arg(long)]
        size: Option<String>,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Physical block size reported to initiators: a power-of-two multiple of the block
        /// size (e.g. 4096 on a 512-byte-block LUN). Default: the block size.
        #[arg(long, value_name = "BYTES")]
        physical_block_size: Option<u32>,
        /// Write protected.
        #[arg(long)]
        readonly: bool,
        /// Removable medium.
        #[arg(long)]
        removable: bool,
        /// Thin provisioned (UNMAP, WRITE SAME unmap, GET LBA STATUS).
        #[arg(long)]
        thin: bool,
    },
    /// Delete a LUN; with sessions only with --force (they are asked to log out).
    Delete {
        /// Target id.
        #[arg(long)]
        tid: u32,
        /// LUN number.
        #[arg(long)]
        lun: u64,
        /// Log the sessions out instead of refusing.
        #[arg(long)]
        force: bool,
    },
}

/// `tgt-cli account ...`.
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create a CHAP account.
    New {
        /// CHAP name.
        #[arg(long)]
        user: String,
        /// CHAP secret, 12 bytes or more; `-` reads it from the first line of stdin.
        #[arg(long)]
        password: String,
    },
    /// Delete a CHAP account (it must not be bound to a target).
    Delete {
        /// CHAP name.
        #[arg(long)]
        user: String,
    },
    /// List the accounts and the targets they are bound to (never the secrets).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Require CHAP as this user on a target (or, with --outgoing, authenticate the target
    /// as this user: mutual CHAP). Applies to the next login.
    Bind(AccountBindArgs),
    /// Undo `account bind`.
    Unbind(AccountBindArgs),
}

/// Arguments of `account bind` / `unbind`.
#[derive(Debug, Args)]
pub struct AccountBindArgs {
    /// Target id.
    #[arg(long)]
    tid: u32,
    /// CHAP name.
    #[arg(long)]
    user: String,
    /// The target's own user (mutual CHAP).
    #[arg(long)]
    outgoing: bool,
}

/// `tgt-cli portal ...`.
#[derive(Debug, Subcommand)]
pub enum PortalCmd {
    /// Listen on another address, live.
    New {
        /// ADDR:PORT.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
    },
    /// Stop listening on an address (established sessions stay).
    Delete {
        /// ADDR:PORT.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
    },
    /// List the portals.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tgt-cli session ...`.
#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// List sessions: initiator, address, connections, negotiated parameters.
    Show {
        /// Only this target's sessions.
        #[arg(long)]
        tid: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tgt-cli stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this target.
    #[arg(long)]
    tid: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tgt-cli config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Write the running configuration (atomically) to PATH, or to the file the daemon
    /// started with.
    Save {
        /// Where to write.
        path: Option<PathBuf>,
    },
    /// Print the running configuration as TOML (CHAP secrets hidden).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One admin command line.
#[derive(Debug)]
pub enum AdminCmd {
    /// `target`.
    Target(TargetCmd),
    /// `lun`.
    Lun(LunCmd),
    /// `account`.
    Account(AccountCmd),
    /// `portal`.
    Portal(PortalCmd),
    /// `session`.
    Session(SessionCmd),
    /// `stats`.
    Stats(StatsArgs),
    /// `config`.
    Config(ConfigCmd),
}

/// What an answer holds (and so how to print it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    Nothing,
    Targets,
    Accounts,
    Portals,
    Sessions,
    Stats,
    Config,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(p))
}

fn read_secret_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn build(cmd: AdminCmd) -> Result<(Command, Render, bool)> {
    let mut json = false;
    let mut show = |j: bool, r: Render| {
        json = j;
        r
    };
    let (c, r) = match cmd {
        AdminCmd::Target(c) => match c {
            TargetCmd::New { tid, name } => (Command::TargetNew { tid, name }, Render::Nothing),
            TargetCmd::Delete { tid, force } => {
                (Command::TargetDelete { tid, force }, Render::Nothing)
            }
            TargetCmd::Show { tid, json } => {
                (Command::TargetShow { tid }, show(json, Render::Targets))
            }
            TargetCmd::Bind(b) => (
                Command::TargetBind {
                    tid: b.tid,
                    address: b.initiator_address,
                    name: b.initiator_name,
                },
                Render::Nothing,
            ),
            TargetCmd::Unbind(b) => (
                Command::TargetUnbind {
                    tid: b.tid,
                    address: b.initiator_address,
                    name: b.initiator_name,
                },
                Render::Nothing,
            ),
        },
        AdminCmd::Lun(c) => match c {
            LunCmd::New {
                tid,
                lun,
                backing_store,
                bstype,
                size,
                block_size,
                physical_block_size,
                readonly,
                removable,
                thin,
            } => {
                // Files are named relative to where the command runs, not the daemon (an
                // nbd URL is left alone).
                let is_file = parse_bstype(&bstype).is_ok_and(BsType::is_file);
                let backing_store = match backing_store {
                    Some(p) if is_file && !p.is_empty() => {
                        Some(absolute(Path::new(&p))?.display().to_string())
                    }
                    other => other,
                };
                let spec = LunSection {
                    lun,
                    backing_store,
                    bstype,
                    size,
                    block_size,
                    physical_block_size,
                    readonly,
                    removable,
                    thin,
                };
                (Command::LunNew { tid, spec }, Render::Nothing)
            }
            LunCmd::Delete { tid, lun, force } => {
                (Command::LunDelete { tid, lun, force }, Render::Nothing)
            }
        },
        AdminCmd::Account(c) => match c {
            AccountCmd::New { user, password } => {
                let password = if password == "-" {
                    read_secret_from_stdin()?
                } else {
                    password
                };
                (Command::AccountNew { user, password }, Render::Nothing)
            }
            AccountCmd::Delete { user } => (Command::AccountDelete { user }, Render::Nothing),
            AccountCmd::Show { json } => (Command::AccountShow {}, show(json, Render::Accounts)),
            AccountCmd::Bind(a) => (
                Command::AccountBind {
                    tid: a.tid,
                    user: a.user,
                    outgoing: a.outgoing,
                },
                Render::Nothing,
            ),
            AccountCmd::Unbind(a) => (
                Command::AccountUnbind {
                    tid: a.tid,
                    user: a.user,
                    outgoing: a.outgoing,
                },
                Render::Nothing,
            ),
        },
        AdminCmd::Portal(c) => match c {
            PortalCmd::New { listen } => (Command::PortalNew { listen }, Render::Nothing),
            PortalCmd::Delete { listen } => (Command::PortalDelete { listen }, Render::Nothing),
            PortalCmd::Show { json } => (Command::PortalShow {}, show(json, Render::Portals)),
        },
        AdminCmd::Session(SessionCmd::Show { tid, json }) => {
            (Command::SessionShow { tid }, show(json, Render::Sessions))
        }
        AdminCmd::Stats(StatsArgs { tid, json }) => {
            (Command::Stats { tid }, show(json, Render::Stats))
        }
        AdminCmd::Config(c) => match c {
            ConfigCmd::Save { path } => {
                let path = match path {
                    Some(p) => Some(absolute(&p)?.display().to_string()),
                    None => None,
                };
                (Command::ConfigSave { path }, Render::Nothing)
            }
            ConfigCmd::Show { json } => (Command::ConfigShow {}, show(json, Render::Config)),
        },
    };
    Ok((c, r, json))
}

/// Runs one admin command against the daemon at `socket` and prints the answer.
pub fn run(socket: &Path, cmd: AdminCmd) -> Result<()> {
    let (command, render, json) = build(cmd)?;
    let resp = call(socket, command)?;
    if !resp.ok {
        bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "the daemon refused the request".into())
        );
    }
    let out = render_data(render, json, &resp.data)?;
    print!("{out}");
    Ok(())
}

fn parse<T: DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| anyhow!("unexpected answer from the daemon: {e}"))
}

fn pretty<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Prints an answer: the typed JSON (fields in a stable order) or a table.
fn render_data(render: Render, json: bool, data: &Value) -> Result<String> {
    Ok(match (render, json) {
        (Render::Nothing, _) => String::new(),
        (Render::Targets, true) => pretty(&parse::<Vec<TargetView>>(data)?)?,
        (Render::Targets, false) => targets_table(&parse::<Vec<TargetView>>(data)?),
        (Render::Accounts, true) => pretty(&parse::<Vec<AccountView>>(data)?)?,
        (Render::Accounts, false) => accounts_table(&parse::<Vec<AccountView>>(data)?),
        (Render::Portals, true) => pretty(&parse::<Vec<String>>(data)?)?,
        (Render::Portals, false) => {
            let rows = parse::<Vec<String>>(data)?
                .into_iter()
                .map(|p| vec![p])
                .collect();
            table(&["PORTAL"], rows)
        }
        (Render::Sessions, true) => pretty(&parse::<Vec<SessionView>>(data)?)?,
        (Render::Sessions, false) => sessions_table(&parse::<Vec<SessionView>>(data)?),
        (Render::Stats, true) => pretty(&parse::<Vec<TargetStatsView>>(data)?)?,
        (Render::Stats, false) => stats_table(&parse::<Vec<TargetStatsView>>(data)?),
        (Render::Config, true) => pretty(&parse::<Config>(
            data.get("config").unwrap_or(&Value::Null),
        )?)?,
        (Render::Config, false) => data
            .get("toml")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                let pad = width[i].saturating_sub(c.chars().count());
                s.push_str(&c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn targets_table(ts: &[TargetView]) -> String {
    let rows = ts
        .iter()
        .map(|t| {
            vec![
                t.tid.to_string(),
                t.name.clone(),
                t.luns.len().to_string(),
                t.sessions.to_string(),
                list(&t.initiators),
                list(&t.incoming_users),
                t.outgoing_user.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "TID",
            "NAME",
            "LUNS",
            "SESSIONS",
            "INITIATORS",
            "INCOMING",
            "OUTGOING",
        ],
        rows,
    );
    let luns: Vec<Vec<String>> = ts
        .iter()
        .flat_map(|t| {
            t.luns.iter().map(move |l| {
                let mut flags = Vec::new();
                if l.readonly {
                    flags.push("readonly");
                }
                if l.removable {
                    flags.push("removable");
                }
                if l.thin {
                    flags.push("thin");
                }
                vec![
                    t.tid.to_string(),
                    l.lun.to_string(),
                    l.bstype.clone(),
                    format_size(l.size),
                    l.block_size.to_string(),
                    if flags.is_empty() {
                        "-".into()
                    } else {
                        flags.join(",")
                    },
                    l.backing_store.clone().unwrap_or_else(|| "-".into()),
                ]
            })
        })
        .collect();
    if !luns.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "TID",
                "LUN",
                "TYPE",
                "SIZE",
                "BLOCK",
                "FLAGS",
                "BACKING STORE",
            ],
            luns,
        ));
    }
    out
}

fn accounts_table(a: &[AccountView]) -> String {
    let ids = |v: &[u32]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    let rows = a
        .iter()
        .map(|a| vec![a.user.clone(), ids(&a.incoming), ids(&a.outgoing)])
        .collect();
    table(&["USER", "INCOMING TIDS", "OUTGOING TIDS"], rows)
}

fn sessions_table(s: &[SessionView]) -> String {
    let rows = s
        .iter()
        .map(|s| {
            let (digests, seg, burst, flags) = match &s.params {
                Some(p) => (
                    format!("{}/{}", p.header_digest, p.data_digest),
                    format!(
                        "{}/{}",
                        p.max_recv_data_segment_length, p.max_xmit_data_segment_length
                    ),
                    format!("{}/{}", p.first_burst_length, p.max_burst_length),
                    format!(
                        "ImmediateData={} InitialR2T={} ERL={}",
                        yes_no(p.immediate_data),
                        yes_no(p.initial_r2t),
                        p.error_recovery_level
                    ),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            vec![
                s.tsih.to_string(),
                s.tid.to_string(),
                s.initiator.clone(),
                s.address.clone(),
                s.isid.clone(),
                s.connections.to_string(),
                digests,
                seg,
                burst,
                flags,
            ]
        })
        .collect();
    table(
        &[
            "TSIH",
            "TID",
            "INITIATOR",
            "ADDRESS",
            "ISID",
            "CONNS",
            "DIGESTS(H/D)",
            "SEGMENT(RX/TX)",
            "BURST(FIRST/MAX)",
            "OPTIONS",
        ],
        rows,
    )
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

/// Bytes in binary units with one decimal (`1536` -> `1.5K`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

fn stats_table(ts: &[TargetStatsView]) -> String {
    let mut rows = Vec::new();
    for t in ts {
        let mut push = |lun: String, l: &crate::control::LunStatsView| {
            rows.push(vec![
                t.tid.to_string(),
                lun,
                l.commands.to_string(),
                l.read_ops.to_string(),
                l.write_ops.to_string(),
                human_bytes(l.read_bytes),
                human_bytes(l.write_bytes),
                l.errors.to_string(),
                l.latency_avg_us.to_string(),
                l.latency_p99_us.to_string(),
            ]);
        };
        for l in &t.luns {
            push(l.lun.to_string(), l);
        }
        push("all".into(), &t.total);
    }
    table(
        &[
            "TID", "LUN", "CMDS", "READS", "WRITES", "READ", "WRITTEN", "ERRORS", "AVG(us)",
            "P99(us)",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::LunView;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONGER"],
            vec![
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(64 << 20), "64.0M");
        assert_eq!(human_bytes(u64::MAX), "16.0E");
    }

    #[test]
    fn target_table_lists_luns() {
        let t = TargetView {
            tid: 1,
            name: "iqn.2026-11.a:b".into(),
            initiators: vec!["ALL".into()],
            incoming_users: vec![],
            outgoing_user: None,
            luns: vec![LunView {
                lun: 1,
                bstype: "memory".into(),
                backing_store: None,
                size: 1 << 20,
                block_size: 512,
                readonly: true,
                removable: false,
                thin: true,
            }],
            sessions: 0,
        };
        let out = targets_table(&[t]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TID  NAME             LUNS  SESSIONS  INITIATORS  INCOMING  OUTGOING"
        );
        assert_eq!(
            lines[1],
            "1    iqn.2026-11.a:b  1     0         ALL         -         -"
        );
        assert_eq!(
            lines[3],
            "TID  LUN  TYPE    SIZE  BLOCK  FLAGS          BACKING STORE"
        );
        assert_eq!(lines[4], "1    1    memory  1M    512    readonly,thin  -");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let (cmd, _, _) = build(AdminCmd::Lun(LunCmd::New {
            tid: 1,
            lun: 2,
            backing_store: Some("disk.img".into()),
            bstype: "rdwr".into(),
            size: Some("1M".into()),
            block_size: 512,
            physical_block_size: None,
            readonly: false,
            removable: false,
            thin: false,
        }))
        .unwrap();
        let Command::LunNew { spec, .. } = cmd else {
            panic!("{cmd:?}")
        };
        let want = std::env::current_dir().unwrap().join("disk.img");
        assert_eq!(spec.backing_store.as_deref(), Some(want.to_str().unwrap()));
        // A memory LUN's label is left alone.
        let (cmd, _, _) = build(AdminCmd::Lun(LunCmd::New {
            tid: 1,
            lun: 2,
            backing_store: Some("label".into()),
            bstype: "memory".into(),
            size: Some("1M".into()),
            block_size: 512,
            physical_block_size: None,
            readonly: false,
            removable: false,
            thin: false,
        }))
        .unwrap();
        let Command::LunNew { spec, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(spec.backing_store.as_deref(), Some("label"));
        // An nbd URL is left alone too; the physical block size is passed through.
        let (cmd, _, _) = build(AdminCmd::Lun(LunCmd::New {
            tid: 1,
            lun: 3,
            backing_store: Some("nbd://host:10809/exp".into()),
            bstype: "nbd".into(),
            size: None,
            block_size: 512,
            physical_block_size: Some(4096),
            readonly: false,
            removable: false,
            thin: false,
        }))
        .unwrap();
        let Command::LunNew { spec, .. } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(spec.backing_store.as_deref(), Some("nbd://host:10809/exp"));
        assert_eq!(spec.physical_block_size, Some(4096));
    }
}
