//! `tgt-cli`: the iSCSI target daemon and its admin commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tgt_cli::config::{Config, RuntimeKind};

#[derive(Parser)]
#[command(name = "tgt-cli", version, about = "A user-space iSCSI target and its admin commands")]
struct Cli {
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
    match cli.cmd {
        Cmd::CheckConfig { config } => {
            let v = Config::load(&config)?.validate()?;
            let luns: usize = v.targets.iter().map(|t| t.luns.len()).sum();
            println!("ok: {} target(s), {luns} LUN(s), {} portal(s)", v.targets.len(), v.listen.len());
            Ok(())
        }
        Cmd::Daemon { config, runtime, reactors, listen, log } => {
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
            let v = c.validate()?;
            tgt_cli::daemon::run(v)
        }
    }
}
