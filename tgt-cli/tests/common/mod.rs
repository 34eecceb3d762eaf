//! The harness the daemon's integration tests share: a real `tgt-cli daemon` on a free port
//! with its own control socket, the admin CLI pointed at it, and helpers to run libiscsi's
//! tools.
#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod ceph;
pub mod client;

pub use backstore::testing::free_port;

pub fn require_libiscsi() {
    let ok = Command::new("sh")
        .arg("-c")
        .arg("command -v iscsi-ls")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "libiscsi-bin is required: apt-get install -y libiscsi-bin"
    );
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub control: PathBuf,
    /// Reads the daemon's stderr while it runs: a full pipe would block its logging and,
    /// with it, a reactor.
    log: Option<std::thread::JoinHandle<String>>,
}

/// Reads `err` until EOF on a thread; keeps the last MiB.
fn drain(mut err: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 << 20 {
                        kept.drain(..kept.len() - (1 << 20));
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

impl Daemon {
    /// A daemon on a fresh config: `[daemon]` on a free port plus `body` (DIR is replaced by
    /// the test directory).
    pub fn start(dir: &Path, runtime: &str, body: &str) -> Daemon {
        let port = free_port();
        let config = dir.join("target.toml");
        let text = format!(
            "[daemon]\nlisten = [\"127.0.0.1:{port}\"]\nruntime = \"{runtime}\"\nreactors = 2\n\n{}",
            body.replace("DIR", dir.to_str().unwrap())
        );
        std::fs::write(&config, text).unwrap();
        Daemon::start_on(dir, &config, port)
    }

    /// A daemon on an existing config file whose first portal is `port`.
    pub fn start_on(dir: &Path, config: &Path, port: u16) -> Daemon {
        let control = dir.join("ctl").join("control.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
            .args(["daemon", "--config"])
            .arg(config)
            .arg("--control")
            .arg(&control)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let log = child.stderr.take().map(drain);
        let mut d = Daemon {
            child,
            port,
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || UnixStream::connect(&d.control).is_err()
        {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("daemon exited ({st}): {}", d.join_log());
            }
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn portal(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, target: &str, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{target}/{lun}", self.port)
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
            .args(args)
            .env("TGT_CONTROL", &self.control)
            .output()
            .unwrap()
    }

    /// Runs an admin command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(o.status.success(), "tgt-cli {args:?} failed: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs an admin command that must fail with one line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            !o.status.success(),
            "tgt-cli {args:?} succeeded: {}",
            text(&o)
        );
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err:?}"
        );
        assert!(o.stdout.is_empty(), "{args:?}");
        err
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Everything `show` reports, for before/after comparisons.
    pub fn state(&self) -> Value {
        serde_json::json!({
            "targets": self.json(&["target", "show", "--json"]),
            "accounts": self.json(&["account", "show", "--json"]),
            "portals": self.json(&["portal", "show", "--json"]),
            "config": self.ok(&["config", "show"]),
        })
    }

    /// The daemon's stderr (the last MiB), once it has exited (after `kill` and `wait`).
    pub fn join_log(&mut self) -> String {
        self.log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// SIGTERM, then the exit status and stderr.
    pub fn stop(mut self) -> (i32, String) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code().unwrap_or(-1), self.join_log());
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows how the daemon ended and the end of its log.
        if std::thread::panicking() {
            let log = self.join_log();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n    ");
            eprintln!(
                "daemon exit status before kill: {status:?}; its last log lines (newest first):\n    {tail}"
            );
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}
