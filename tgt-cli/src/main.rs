//! `tgt-cli`: the iSCSI target daemon and its admin commands.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("check-config") => match args.get(2) {
            Some(path) => {
                match tgt_cli::config::Config::load(path.as_ref()).and_then(|c| c.validate()) {
                    Ok(v) => {
                        println!(
                            "ok: {} target(s), {} portal(s)",
                            v.targets.len(),
                            v.listen.len()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("tgt-cli: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            None => {
                eprintln!("usage: tgt-cli check-config FILE");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: tgt-cli check-config FILE");
            ExitCode::from(2)
        }
    }
}
