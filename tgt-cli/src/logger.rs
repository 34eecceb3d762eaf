//! A small stderr logger for the daemon: `LEVEL target: message`, one line per record.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let lvl = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = writeln!(std::io::stderr().lock(), "{lvl} {}", r.args());
    }

    fn flush(&self) {}
}

/// Installs the logger at `level` (error, warn, info, debug, trace, off).
pub fn init(level: &str) -> anyhow::Result<()> {
    let level: LevelFilter = level.parse().map_err(|_| {
        anyhow::anyhow!("log level {level:?}: must be error, warn, info, debug, trace or off")
    })?;
    log::set_boxed_logger(Box::new(Stderr { level })).map_err(|e| anyhow::anyhow!("{e}"))?;
    log::set_max_level(level);
    Ok(())
}
