//! End-to-end tests: the real daemon binary on a free port, reached by libiscsi's tools
//! (Debian package libiscsi-bin) as an independent initiator, on both runtimes.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.org.tgt-rs:test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Daemon {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(runtime: &str, luns: &str) -> Daemon {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let port = free_port();
        let config = format!(
            "[daemon]\nlisten = [\"127.0.0.1:{port}\"]\nruntime = \"{runtime}\"\nreactors = 2\n\n\
             [[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n{}\n\
             [[target]]\ntid = 2\nname = \"{IQN}-hidden\"\ninitiators = [\"10.255.255.1\"]\n\
             [[target.lun]]\nlun = 0\nbstype = \"null\"\nsize = \"1M\"\n",
            luns.replace("DIR", dir.path().to_str().unwrap())
        );
        let cfg = dir.path().join("target.toml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
            .args(["daemon", "--config"])
            .arg(&cfg)
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn url(&self, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (i32, String) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (st.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const THIN: &str =
    "[[target.lun]]\nlun = 1\nbacking_store = \"DIR/lun1.img\"\nsize = \"64M\"\nthin = true\n";

fn basic(runtime: &str) {
    if !have("iscsi-ls") {
        panic!("libiscsi-bin is required: apt-get install -y libiscsi-bin");
    }
    let d = Daemon::start(runtime, THIN);
    assert!(
        d.path("lun1.img").exists(),
        "the backing file is created sparse"
    );
    assert_eq!(
        std::fs::metadata(d.path("lun1.img")).unwrap().len(),
        64 << 20
    );

    // Discovery lists only the targets this initiator may see, with the LUN.
    let o = run(
        "iscsi-ls",
        &["-s", &format!("iscsi://127.0.0.1:{}", d.port)],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!("Target:{IQN} Portal:127.0.0.1:{}", d.port)),
        "{out}"
    );
    assert!(out.contains("Lun:1"), "{out}");
    assert!(
        !out.contains("hidden"),
        "ACL-filtered target must not be listed: {out}"
    );

    // INQUIRY.
    let o = run("iscsi-inq", &[&d.url(1)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("TGT-RS"), "{out}");

    // READ CAPACITY 16.
    let o = run("iscsi-readcapacity16", &[&d.url(1)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
    assert!(out.contains("LBPME:1"), "thin LUN: {out}");
    assert!(
        out.contains(&format!("Total size:{}", 64u64 << 20)),
        "{out}"
    );

    // A login to a target this initiator may not use fails.
    let o = run(
        "iscsi-inq",
        &[&format!("iscsi://127.0.0.1:{}/{IQN}-hidden/0", d.port)],
    );
    assert!(!o.status.success(), "{}", text(&o));

    // Write then read back through libiscsi's own write/read tests.
    let o = run(
        "iscsi-test-cu",
        &[
            "--test=SCSI.Write10.Simple,SCSI.Read10.Simple,SCSI.Write16.Simple,SCSI.Verify16.Simple",
            &d.url(1),
        ],
    );
    let out = text(&o);
    assert!(o.status.success() && !out.contains("FAILED"), "{out}");

    let (code, log) = d.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn threads_runtime_serves_libiscsi() {
    basic("threads");
}

#[test]
fn mio_runtime_serves_libiscsi() {
    basic("mio");
}

#[test]
fn bad_config_is_one_line_and_starts_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cfg = dir.path().join("bad.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nlisten = [\"127.0.0.1:{port}\"]\n[[target]]\ntid = 1\nname = \"{IQN}\"\n\
             [[target.lun]]\nlun = 1\nbacking_store = \"{}/x.img\"\nsize = \"10Q\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .args(["daemon", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("target[0].lun[0].size = \"10Q\""), "{err}");
    assert!(
        !Path::new(&dir.path().join("x.img")).exists(),
        "nothing was created"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );
}
