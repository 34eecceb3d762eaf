//! `tgt-cli`: the iSCSI target daemon and its admin commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tgt_cli::admin::{self, AdminCmd};
use tgt_cli::config::{Config, RuntimeKind};
use tgt_cli::control::DEFAULT_SOCKET;

#[derive(Parser)]
#[command(
    name = "tgt-cli",
    version,
    about = "A user-space iSCSI target and its admin commands"
)]
struct Cli {
    /// The daemon's control socket (a unix socket, mode 0600).
    #[arg(long, global = true, env = "TGT_CONTROL", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    control: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the target daemon.
    Daemon {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Runtime: mio (epoll reactors) or threads (one thread per connection).
        #[arg(long)]
        runtime: Option<String>,
        /// Reactor threads for the mio runtime (0 = one per core).
        #[arg(long)]
        reactors: Option<usize>,
        /// Portal to listen on (repeatable); replaces `daemon.listen` of the config.
        #[arg(long = "listen", value_name = "ADDR:PORT")]
        listen: Vec<String>,
        /// Log level: error, warn, info (default), debug, trace.
        #[arg(long, env = "TGT_LOG", default_value = "info")]
        log: String,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// The TOML configuration file.
        config: PathBuf,
    },
    /// Targets: new, delete, show, bind, unbind.
    Target {
        #[command(subcommand)]
        cmd: admin::TargetCmd,
    },
    /// Logical units: new, delete.
    Lun {
        #[command(subcommand)]
        cmd: admin::LunCmd,
    },
    /// CHAP accounts: new, delete, show, bind, unbind.
    Account {
        #[command(subcommand)]
        cmd: admin::AccountCmd,
    },
    /// Portals: new, delete, show.
    Portal {
        #[command(subcommand)]
        cmd: admin::PortalCmd,
    },
    /// Sessions: show.
    Session {
        #[command(subcommand)]
        cmd: admin::SessionCmd,
    },
    /// I/O statistics per target and LUN.
    Stats(admin::StatsArgs),
    /// The running configuration: save, show.
    Config {
        #[command(subcommand)]
        cmd: admin::ConfigCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tgt-cli: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let control = cli.control;
    let admin_cmd = match cli.cmd {
        Cmd::Target { cmd } => AdminCmd::Target(cmd),
        Cmd::Lun { cmd } => AdminCmd::Lun(cmd),
        Cmd::Account { cmd } => AdminCmd::Account(cmd),
        Cmd::Portal { cmd } => AdminCmd::Portal(cmd),
        Cmd::Session { cmd } => AdminCmd::Session(cmd),
        Cmd::Stats(a) => AdminCmd::Stats(a),
        Cmd::Config { cmd } => AdminCmd::Config(cmd),
        other => return run_local(other, control),
    };
    admin::run(&control, admin_cmd)
}

fn run_local(cmd: Cmd, control: PathBuf) -> anyhow::Result<()> {
    match cmd {
        Cmd::CheckConfig { config } => {
            let v = Config::load(&config)?.validate()?;
            let luns: usize = v.targets.iter().map(|t| t.luns.len()).sum();
            println!(
                "ok: {} target(s), {luns} LUN(s), {} portal(s)",
                v.targets.len(),
                v.listen.len()
            );
            Ok(())
        }
        Cmd::Daemon {
            config,
            runtime,
            reactors,
            listen,
            log,
        } => {
            tgt_cli::logger::init(&log)?;
            let mut c = Config::load(&config)?;
            if let Some(r) = runtime {
                if RuntimeKind::parse(&r).is_none() {
                    anyhow::bail!("--runtime {r:?}: must be mio or threads");
                }
                c.daemon.runtime = r;
            }
            if let Some(n) = reactors {
                c.daemon.reactors = n;
            }
            if !listen.is_empty() {
                c.daemon.listen = listen;
            }
            let opts = tgt_cli::daemon::DaemonOptions {
                config_path: config,
                control,
            };
            tgt_cli::daemon::run(c, &opts)
        }
        _ => unreachable!("admin commands are handled by admin::run"),
    }
}
