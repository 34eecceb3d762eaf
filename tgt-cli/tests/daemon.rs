//! End-to-end tests: the real daemon binary on a free port, reached by libiscsi's tools
//! (Debian package libiscsi-bin) as an independent initiator, on both runtimes.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

mod common;
use common::*;

const IQN: &str = "iqn.2026-11.org.tgt-rs:test";

/// The daemon with target 1 (`luns`) open to all, and target 2 open to one address only.
fn start(dir: &Path, runtime: &str, luns: &str) -> Daemon {
    let body = format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n{luns}\n\
         [[target]]\ntid = 2\nname = \"{IQN}-hidden\"\ninitiators = [\"10.255.255.1\"]\n\
         [[target.lun]]\nlun = 0\nbstype = \"null\"\nsize = \"1M\"\n"
    );
    Daemon::start(dir, runtime, &body)
}

const THIN: &str =
    "[[target.lun]]\nlun = 1\nbacking_store = \"DIR/lun1.img\"\nsize = \"64M\"\nthin = true\n";

fn basic(runtime: &str) {
    require_libiscsi();
    let dir = tempdir();
    let d = start(dir.path(), runtime, THIN);
    let img = dir.path().join("lun1.img");
    assert!(img.exists(), "the backing file is created sparse");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);

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
    let o = run("iscsi-inq", &[&d.url(IQN, 1)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("TGT-RS"), "{out}");

    // READ CAPACITY 16.
    let o = run("iscsi-readcapacity16", &[&d.url(IQN, 1)]);
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
            &d.url(IQN, 1),
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
    let dir = tempdir();
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
