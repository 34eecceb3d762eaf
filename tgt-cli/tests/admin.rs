//! Live administration end to end: the real daemon binary, its control socket driven by
//! the real `tgt-cli` admin commands, and libiscsi's tools (Debian package libiscsi-bin)
//! plus a minimal hand-written initiator checking what initiators see.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

const IQN: &str = "iqn.2026-11.org.tgt-rs:admin";
const HOST1: &str = "iqn.2026-11.org.tgt-rs:host1";
const HOST2: &str = "iqn.2026-11.org.tgt-rs:host2";

/// `iscsi-ls -s` as initiator `name`: the output (success required).
fn discover(d: &Daemon, name: &str) -> String {
    let o = run("iscsi-ls", &["-i", name, "-s", &d.portal()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    out
}

fn inq_ok(d: &Daemon, name: &str, target: &str, lun: u32) -> bool {
    run("iscsi-inq", &["-i", name, &d.url(target, lun)])
        .status
        .success()
}

#[test]
fn live_targets_luns_acls_and_discovery() {
    require_libiscsi();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "mio", "");
    assert_eq!(d.json(&["target", "show", "--json"]), serde_json::json!([]));

    // A new target with a new LUN: hidden and refused until an initiator is bound.
    d.ok(&["target", "new", "--tid", "1", "--name", IQN]);
    let img = d.dir.join("disk1.img");
    d.ok(&[
        "lun",
        "new",
        "--tid",
        "1",
        "--lun",
        "1",
        "--backing-store",
        img.to_str().unwrap(),
        "--size",
        "64M",
        "--thin",
    ]);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        64 << 20,
        "created sparse"
    );
    assert!(!discover(&d, HOST1).contains(IQN), "no initiator bound yet");
    assert!(!inq_ok(&d, HOST1, IQN, 1));

    // Bound by name: that initiator discovers and reads it, another does not.
    d.ok(&["target", "bind", "--tid", "1", "--initiator-name", HOST1]);
    let out = discover(&d, HOST1);
    assert!(
        out.contains(&format!("Target:{IQN} Portal:127.0.0.1:{}", d.port)),
        "{out}"
    );
    assert!(out.contains("Lun:1"), "{out}");
    let o = run("iscsi-readcapacity16", &["-i", HOST1, &d.url(IQN, 1)]);
    let cap = text(&o);
    assert!(o.status.success(), "{cap}");
    assert!(
        cap.contains(&format!("Total size:{}", 64u64 << 20)),
        "{cap}"
    );
    assert!(cap.contains("LBPME:1"), "thin: {cap}");
    assert!(
        !discover(&d, HOST2).contains(IQN),
        "an unbound initiator does not discover it"
    );
    assert!(
        !inq_ok(&d, HOST2, IQN, 1),
        "an unbound initiator is refused"
    );

    // Bound by address: everybody on 127.0.0.1 gets in; unbinding takes it back.
    d.ok(&[
        "target",
        "bind",
        "--tid",
        "1",
        "--initiator-address",
        "127.0.0.0/8",
    ]);
    assert!(inq_ok(&d, HOST2, IQN, 1));
    d.ok(&[
        "target",
        "unbind",
        "--tid",
        "1",
        "--initiator-address",
        "127.0.0.0/8",
    ]);
    assert!(!inq_ok(&d, HOST2, IQN, 1));
    assert!(inq_ok(&d, HOST1, IQN, 1));

    // A second LUN appears in discovery with its size, and goes again.
    d.ok(&[
        "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "memory", "--size", "8M",
    ]);
    let out = discover(&d, HOST1);
    assert!(out.contains("Lun:2"), "{out}");
    let o = run("iscsi-readcapacity16", &["-i", HOST1, &d.url(IQN, 2)]);
    assert!(
        text(&o).contains(&format!("Total size:{}", 8u64 << 20)),
        "{}",
        text(&o)
    );

    let shown = d.json(&["target", "show", "--tid", "1", "--json"]);
    let t = &shown[0];
    assert_eq!(t["tid"], 1);
    assert_eq!(t["name"], IQN);
    assert_eq!(t["initiators"], serde_json::json!([HOST1]));
    assert_eq!(t["sessions"], 0);
    let luns = t["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 2);
    assert_eq!(luns[0]["lun"], 1);
    assert_eq!(luns[0]["bstype"], "rdwr");
    assert_eq!(luns[0]["backing_store"], img.to_str().unwrap());
    assert_eq!(luns[0]["size"], 64u64 << 20);
    assert_eq!(luns[0]["thin"], true);
    assert_eq!(luns[1]["lun"], 2);
    assert_eq!(luns[1]["bstype"], "memory");

    // The table view.
    let table = d.ok(&["target", "show"]);
    assert!(table.starts_with("TID  NAME"), "{table}");
    assert!(table.contains(&format!("1    {IQN}")), "{table}");
    assert!(table.contains(img.to_str().unwrap()), "{table}");

    d.ok(&["lun", "delete", "--tid", "1", "--lun", "2"]);
    assert!(!discover(&d, HOST1).contains("Lun:2"));

    // A deleted target is gone from discovery and refuses logins.
    d.ok(&["target", "delete", "--tid", "1"]);
    assert!(!discover(&d, HOST1).contains(IQN));
    assert!(!inq_ok(&d, HOST1, IQN, 1));
    assert_eq!(d.json(&["target", "show", "--json"]), serde_json::json!([]));

    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

const ONE_TARGET: &str = "[[account]]\nuser = \"alice\"\npassword = \"alice-secret-12\"\n\n\
    [[target]]\ntid = 1\nname = \"iqn.2026-11.org.tgt-rs:admin\"\ninitiators = [\"ALL\"]\n\n\
    [[target.lun]]\nlun = 1\nbstype = \"memory\"\nsize = \"4M\"\n";

#[test]
fn bad_requests_fail_with_one_line_and_change_nothing() {
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "threads", ONE_TARGET);
    let mode = std::fs::metadata(&d.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode");
    let before = d.state();
    let missing = d.dir.join("missing.img");
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "target",
                "new",
                "--tid",
                "1",
                "--name",
                "iqn.2026-11.org.x:y",
            ],
            "--tid 1: target 1 already exists",
        ),
        (
            &["target", "new", "--tid", "2", "--name", IQN],
            "target 1 already has this name",
        ),
        (
            &[
                "target",
                "new",
                "--tid",
                "0",
                "--name",
                "iqn.2026-11.org.x:y",
            ],
            "--tid 0: must be 1 or more",
        ),
        (
            &["target", "new", "--tid", "2", "--name", "disk2"],
            "--name \"disk2\": is not an iSCSI name",
        ),
        (
            &[
                "target",
                "new",
                "--tid",
                "2",
                "--name",
                "iqn.2026-13.org.x:y",
            ],
            "is not a valid iqn name",
        ),
        (
            &["target", "delete", "--tid", "9"],
            "--tid 9: no such target",
        ),
        (&["target", "show", "--tid", "9"], "--tid 9: no such target"),
        (
            &["target", "bind", "--tid", "9", "--initiator-address", "ALL"],
            "--tid 9: no such target",
        ),
        (
            &[
                "target",
                "bind",
                "--tid",
                "1",
                "--initiator-address",
                "10.0.0.0/33",
            ],
            "is not ALL, an IP address or a CIDR",
        ),
        (
            &["target", "bind", "--tid", "1", "--initiator-name", "host1"],
            "--initiator-name \"host1\": is not an iSCSI name",
        ),
        (
            &["target", "bind", "--tid", "1", "--initiator-address", "ALL"],
            "\"ALL\" is already bound to target 1",
        ),
        (
            &["target", "unbind", "--tid", "1", "--initiator-name", HOST1],
            "is not bound to target 1",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "1", "--bstype", "null", "--size", "1M",
            ],
            "--lun 1: target 1 already has LUN 1",
        ),
        (
            &[
                "lun", "new", "--tid", "9", "--lun", "1", "--bstype", "null", "--size", "1M",
            ],
            "--tid 9: no such target",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "null", "--size", "10Q",
            ],
            "--size \"10Q\": has an unknown unit",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "null", "--size", "1000",
            ],
            "--size \"1000\": must be a non-zero multiple of the block size 512",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "tape", "--size", "1M",
            ],
            "--bstype \"tape\": must be rdwr, aio, memory, null, nbd or rbd",
        ),
        (
            &[
                "lun",
                "new",
                "--tid",
                "1",
                "--lun",
                "2",
                "--bstype",
                "null",
                "--size",
                "1M",
                "--block-size",
                "1000",
            ],
            "--block-size 1000: must be 512 or 4096",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "20000", "--bstype", "null", "--size", "1M",
            ],
            "--lun 20000: must be 0..=16383",
        ),
        (
            &[
                "lun",
                "new",
                "--tid",
                "1",
                "--lun",
                "2",
                "--backing-store",
                missing,
                "--readonly",
            ],
            "does not exist (a read-only LUN is never created)",
        ),
        (
            &[
                "lun",
                "new",
                "--tid",
                "1",
                "--lun",
                "2",
                "--backing-store",
                missing,
            ],
            "does not exist; give --size to create it",
        ),
        (
            &[
                "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "memory",
            ],
            "--size: is required for bstype memory",
        ),
        (
            &["lun", "delete", "--tid", "1", "--lun", "5"],
            "--lun 5: target 1 has no LUN 5",
        ),
        (
            &[
                "account",
                "new",
                "--user",
                "bob",
                "--password",
                "short-secret",
            ],
            "",
        ),
        (
            &[
                "account",
                "new",
                "--user",
                "carol",
                "--password",
                "tooshort",
            ],
            "--password (user \"carol\"): must be 12..=255 bytes, got 8",
        ),
        (
            &[
                "account",
                "new",
                "--user",
                "alice",
                "--password",
                "another-secret-1",
            ],
            "--user \"alice\": the account already exists",
        ),
        (
            &["account", "delete", "--user", "nobody"],
            "--user \"nobody\": no such account",
        ),
        (
            &["account", "bind", "--tid", "1", "--user", "nobody"],
            "--user \"nobody\": no such account",
        ),
        (
            &[
                "account",
                "bind",
                "--tid",
                "1",
                "--user",
                "alice",
                "--outgoing",
            ],
            "has no incoming user",
        ),
        (
            &["account", "unbind", "--tid", "1", "--user", "alice"],
            "\"alice\" is not an incoming user of target 1",
        ),
        (
            &["portal", "new", "--listen", "nowhere"],
            "--listen \"nowhere\": is not ADDR:PORT",
        ),
        (
            &["portal", "delete", "--listen", "127.0.0.1:1"],
            "--listen \"127.0.0.1:1\": not a portal",
        ),
        (
            &["session", "show", "--tid", "9"],
            "--tid 9: no such target",
        ),
        (&["stats", "--tid", "9"], "--tid 9: no such target"),
    ];
    for (args, want) in cases {
        if want.is_empty() {
            // "short-secret" is exactly 12 bytes: accepted, then removed again.
            d.ok(args);
            d.ok(&["account", "delete", "--user", "bob"]);
            continue;
        }
        let err = d.fails(args);
        assert!(err.starts_with("tgt-cli: "), "{err}");
        assert!(
            err.contains(want),
            "{args:?}: {err:?} should contain {want:?}"
        );
        assert!(
            !err.contains("tooshort") && !err.contains("another-secret-1"),
            "{err}"
        );
        assert_eq!(d.state(), before, "{args:?} changed the daemon's state");
    }
    assert!(!Path::new(missing).exists(), "no file was created");

    // A port in use: the OS error, one line, nothing changed.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let err = d.fails(&["portal", "new", "--listen", &busy]);
    assert!(err.contains(&format!("listen on {busy}")), "{err}");
    assert_eq!(d.state(), before);

    // Another protocol version, garbage and an unknown op are refused by the daemon.
    for (req, want) in [
        (
            "{\"version\":2,\"command\":{\"op\":\"portal-show\"}}\n",
            "protocol version 2 is not supported",
        ),
        ("hello\n", "bad request"),
        (
            "{\"version\":1,\"command\":{\"op\":\"format-disk\"}}\n",
            "bad request",
        ),
    ] {
        let mut s = UnixStream::connect(&d.control).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["ok"], false, "{resp}");
        assert_eq!(v["version"], 1, "{resp}");
        assert!(v["error"].as_str().unwrap().contains(want), "{resp}");
    }
    assert_eq!(d.state(), before);

    // No daemon: one line naming the socket.
    let o = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .args(["--control", "/nonexistent/control.sock", "target", "show"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/control.sock"), "{err}");

    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("alice-secret-12") && !log.contains("tooshort"),
        "secrets in the log"
    );
    assert!(
        !log.contains("short-secret") && !log.contains("another-secret-1"),
        "{log}"
    );
    assert!(
        !tmp.path().join("ctl").join("control.sock").exists(),
        "socket removed on exit"
    );
}

#[test]
fn config_save_then_restart_restores_the_same_state() {
    require_libiscsi();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "mio", ONE_TARGET);
    let img = d.dir.join("disk2.img");
    let port2 = free_port();
    let portal2 = format!("127.0.0.1:{port2}");
    d.ok(&[
        "account",
        "new",
        "--user",
        "bob",
        "--password",
        "bob-secret-123",
    ]);
    d.ok(&[
        "target",
        "new",
        "--tid",
        "2",
        "--name",
        "iqn.2026-11.org.tgt-rs:two",
    ]);
    d.ok(&[
        "lun",
        "new",
        "--tid",
        "2",
        "--lun",
        "0",
        "--backing-store",
        img.to_str().unwrap(),
        "--size",
        "16M",
        "--block-size",
        "4096",
        "--thin",
    ]);
    d.ok(&[
        "lun",
        "new",
        "--tid",
        "2",
        "--lun",
        "3",
        "--bstype",
        "null",
        "--size",
        "1G",
        "--removable",
    ]);
    d.ok(&[
        "target",
        "bind",
        "--tid",
        "2",
        "--initiator-address",
        "127.0.0.1",
    ]);
    d.ok(&["target", "bind", "--tid", "2", "--initiator-name", HOST1]);
    d.ok(&["account", "bind", "--tid", "2", "--user", "alice"]);
    d.ok(&[
        "account",
        "bind",
        "--tid",
        "2",
        "--user",
        "bob",
        "--outgoing",
    ]);
    d.ok(&["portal", "new", "--listen", &portal2]);
    d.ok(&[
        "target",
        "unbind",
        "--tid",
        "1",
        "--initiator-address",
        "ALL",
    ]);
    let before = d.state();

    // A copy elsewhere, then the file the daemon started with.
    let copy = d.dir.join("copy.toml");
    d.ok(&["config", "save", copy.to_str().unwrap()]);
    d.ok(&["config", "save"]);
    let saved = std::fs::read_to_string(&d.config).unwrap();
    assert_eq!(saved, std::fs::read_to_string(&copy).unwrap());
    assert!(
        saved.contains("password = \"bob-secret-123\""),
        "the file keeps the secrets"
    );
    assert!(
        !d.ok(&["config", "show"]).contains("bob-secret-123"),
        "show hides them"
    );
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = std::fs::read_dir(&d.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let o = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .arg("check-config")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");

    let d = Daemon::start_on(tmp.path(), &tmp.path().join("target.toml"), port2);
    assert_eq!(
        d.state(),
        before,
        "a restart on the saved file restores the same state"
    );
    // The restored target works: mutual CHAP through the second portal.
    let url = format!("iscsi://alice%alice-secret-12@{portal2}/iqn.2026-11.org.tgt-rs:two/0");
    let o = run_env(
        "iscsi-readcapacity16",
        &["-i", HOST1, &url],
        &[
            ("LIBISCSI_CHAP_TARGET_USERNAME", "bob"),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", "bob-secret-123"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("LOGICAL BLOCK LENGTH IN BYTES:4096"),
        "{}",
        text(&o)
    );
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn chap_one_way_and_mutual() {
    require_libiscsi();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "mio", ONE_TARGET);
    let url = |cred: &str| format!("iscsi://{cred}127.0.0.1:{}/{IQN}/1", d.port);
    let inq = |cred: &str, env: &[(&str, &str)]| {
        run_env("iscsi-inq", &[&url(cred)], env).status.success()
    };
    assert!(inq("", &[]), "no CHAP yet");

    d.ok(&["account", "bind", "--tid", "1", "--user", "alice"]);
    assert!(!inq("", &[]), "CHAP required now");
    assert!(
        !inq("alice%wrong-secret-1@", &[]),
        "a wrong secret is refused"
    );
    assert!(
        !inq("mallory%alice-secret-12@", &[]),
        "an unknown user is refused"
    );
    assert!(inq("alice%alice-secret-12@", &[]), "one-way CHAP");

    d.ok(&[
        "account",
        "new",
        "--user",
        "bob",
        "--password",
        "bob-secret-123",
    ]);
    d.ok(&[
        "account",
        "bind",
        "--tid",
        "1",
        "--user",
        "bob",
        "--outgoing",
    ]);
    let good = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "bob"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "bob-secret-123"),
    ];
    let bad = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "bob"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "not-bobs-secret"),
    ];
    assert!(inq("alice%alice-secret-12@", &good), "mutual CHAP");
    assert!(
        !inq("alice%alice-secret-12@", &bad),
        "the target's wrong secret is refused"
    );
    assert!(!inq("alice%wrong-secret-1@", &good));

    // Unbinding in the right order turns CHAP off again.
    let err = d.fails(&["account", "unbind", "--tid", "1", "--user", "alice"]);
    assert!(err.contains("has outgoing user \"bob\""), "{err}");
    d.ok(&[
        "account",
        "unbind",
        "--tid",
        "1",
        "--user",
        "bob",
        "--outgoing",
    ]);
    d.ok(&["account", "unbind", "--tid", "1", "--user", "alice"]);
    assert!(inq("", &[]));
    let accounts = d.json(&["account", "show", "--json"]);
    assert_eq!(
        accounts,
        serde_json::json!([
            {"user": "alice", "incoming": [], "outgoing": []},
            {"user": "bob", "incoming": [], "outgoing": []},
        ])
    );
    assert!(!d.ok(&["account", "show"]).contains("secret"));

    // `--password -` reads the secret from stdin (kept out of `ps`).
    let mut child = Command::new(env!("CARGO_BIN_EXE_tgt-cli"))
        .args(["account", "new", "--user", "carol", "--password", "-"])
        .env("TGT_CONTROL", &d.control)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"carol-secret-99\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    d.ok(&["account", "bind", "--tid", "1", "--user", "carol"]);
    assert!(inq("carol%carol-secret-99@", &[]));
    assert!(!inq("carol%carol-secret-9@", &[]));
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("alice-secret-12") && !log.contains("bob-secret-123"),
        "{log}"
    );
    assert!(!log.contains("carol-secret-99"), "{log}");
}

#[test]
fn portals_open_and_close_live() {
    require_libiscsi();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "threads", ONE_TARGET);
    let port2 = free_port();
    let p2 = format!("127.0.0.1:{port2}");
    assert!(TcpStream::connect(&p2).is_err());
    d.ok(&["portal", "new", "--listen", &p2]);
    assert_eq!(
        d.json(&["portal", "show", "--json"]),
        serde_json::json!([format!("127.0.0.1:{}", d.port), p2])
    );
    // Discovery through the new portal reports both.
    let o = run("iscsi-ls", &[&format!("iscsi://{p2}")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("Portal:{p2},1")), "{out}");
    assert!(
        out.contains(&format!("Portal:127.0.0.1:{},1", d.port)),
        "{out}"
    );
    assert!(
        run("iscsi-inq", &[&format!("iscsi://{p2}/{IQN}/1")])
            .status
            .success()
    );

    d.ok(&[
        "portal",
        "delete",
        "--listen",
        &format!("127.0.0.1:{}", d.port),
    ]);
    assert!(TcpStream::connect(("127.0.0.1", d.port)).is_err(), "closed");
    let o = run("iscsi-ls", &[&format!("iscsi://{p2}")]);
    let out = text(&o);
    assert!(!out.contains(&format!(":{},1", d.port)), "{out}");
    let table = d.ok(&["portal", "show"]);
    assert_eq!(table, format!("PORTAL\n{p2}\n"));
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn stats_and_sessions() {
    require_libiscsi();
    let tmp = tempdir();
    let d = Daemon::start(tmp.path(), "mio", ONE_TARGET);
    let o = run(
        "iscsi-test-cu",
        &[
            "--dataloss",
            "--test=SCSI.Write10.Simple,SCSI.Read10.Simple",
            &d.url(IQN, 1),
        ],
    );
    assert!(
        o.status.success() && !text(&o).contains("FAILED"),
        "{}",
        text(&o)
    );
    let stats = d.json(&["stats", "--json"]);
    let t = &stats[0];
    assert_eq!(t["tid"], 1);
    let l = &t["luns"][0];
    assert_eq!(l["lun"], 1);
    for k in [
        "read_ops",
        "write_ops",
        "read_bytes",
        "write_bytes",
        "commands",
    ] {
        assert!(l[k].as_u64().unwrap() > 0, "{k}: {l}");
    }
    assert_eq!(l["errors"], 0);
    let n = |k: &str| l[k].as_u64().unwrap();
    assert!(n("commands") >= n("read_ops") + n("write_ops"), "{l}");
    assert_eq!(n("read_bytes") % 512, 0);
    assert_eq!(n("write_bytes") % 512, 0);
    assert!(l["latency_avg_us"].is_u64() && l["latency_p99_us"].is_u64());
    assert_eq!(t["total"]["read_bytes"], l["read_bytes"]);
    let table = d.ok(&["stats"]);
    assert!(
        table.starts_with("TID  LUN  CMDS  READS  WRITES"),
        "{table}"
    );
    assert!(table.lines().any(|x| x.starts_with("1    all")), "{table}");

    // A session seen from the control socket.
    let mut ini = RawInitiator::login(d.port, HOST1, IQN);
    let s = d.json(&["session", "show", "--json"]);
    assert_eq!(s.as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s[0]["initiator"], HOST1);
    assert_eq!(s[0]["tid"], 1);
    assert_eq!(s[0]["target"], IQN);
    assert_eq!(s[0]["connections"], 1);
    assert_eq!(s[0]["isid"], "800000123456");
    assert_eq!(s[0]["address"], ini.local_addr());
    assert_eq!(s[0]["params"]["header_digest"], "None");
    assert!(s[0]["params"]["max_burst_length"].as_u64().unwrap() > 0);
    let table = d.ok(&["session", "show", "--tid", "1"]);
    assert!(
        table.contains(HOST1) && table.starts_with("TSIH"),
        "{table}"
    );
    assert_eq!(d.json(&["target", "show", "--json"])[0]["sessions"], 1);
    ini.tur(1);
    drop(ini);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn live_lun_add_unit_attention_and_forced_delete() {
    let tmp = tempdir();
    for runtime in ["threads", "mio"] {
        let dir = tmp.path().join(runtime);
        std::fs::create_dir(&dir).unwrap();
        let d = Daemon::start(&dir, runtime, ONE_TARGET);
        let mut ini = RawInitiator::login(d.port, HOST1, IQN);
        // The first command of a new nexus reports the power-on; then the LUN is ready.
        assert_eq!(ini.tur(1), Some((0x06, 0x29, 0x00)));
        assert_eq!(ini.tur(1), None);

        // A LUN added live: REPORTED LUNS DATA HAS CHANGED on the LUN in use.
        d.ok(&[
            "lun", "new", "--tid", "1", "--lun", "2", "--bstype", "memory", "--size", "1M",
        ]);
        assert_eq!(ini.tur(1), Some((0x06, 0x3f, 0x0e)));
        assert_eq!(ini.tur(1), None);
        // The new LUN answers this session.
        let first = ini.tur(2);
        assert!(
            first.is_none() || first == Some((0x06, 0x29, 0x00)),
            "{first:?}"
        );
        assert_eq!(ini.tur(2), None);

        // With a session, deletes need --force.
        let err = d.fails(&["lun", "delete", "--tid", "1", "--lun", "2"]);
        assert!(
            err.contains("target 1 has 1 session(s): use --force"),
            "{err}"
        );
        let err = d.fails(&["target", "delete", "--tid", "1"]);
        assert!(
            err.contains("target 1 has 1 session(s): use --force"),
            "{err}"
        );
        assert_eq!(
            d.json(&["target", "show", "--json"])[0]["luns"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // --force: the initiator is asked to log out (Async Message, event 1), then closed;
        // the LUN is gone for the next session.
        d.ok(&["lun", "delete", "--tid", "1", "--lun", "2", "--force"]);
        assert_eq!(ini.next_async(), (0x32, 1), "logout requested");
        assert!(
            ini.closed_within(Duration::from_secs(10)),
            "the session is closed"
        );
        let luns = d.json(&["target", "show", "--json"])[0]["luns"].clone();
        assert_eq!(luns.as_array().unwrap().len(), 1, "{luns}");
        let mut ini = RawInitiator::login(d.port, HOST1, IQN);
        assert_eq!(
            ini.tur(2),
            Some((0x05, 0x25, 0x00)),
            "LOGICAL UNIT NOT SUPPORTED"
        );

        let started = Instant::now();
        d.ok(&["target", "delete", "--tid", "1", "--force"]);
        assert!(started.elapsed() < Duration::from_secs(10));
        let (opcode, event) = ini.next_async();
        assert_eq!((opcode, event), (0x32, 1), "logout requested");
        assert!(
            ini.closed_within(Duration::from_secs(10)),
            "the session is closed"
        );
        assert_eq!(
            d.json(&["session", "show", "--json"]),
            serde_json::json!([])
        );
        assert_eq!(d.json(&["target", "show", "--json"]), serde_json::json!([]));
        let (code, log) = d.stop();
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("asking 127.0.0.1"), "{log}");
    }
}

/// Just enough of an initiator to hold a session open: login straight into the operational
/// stage, TEST UNIT READY, and reading what the target sends.
struct RawInitiator {
    s: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl RawInitiator {
    fn login(port: u16, initiator: &str, target: &str) -> RawInitiator {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut ini = RawInitiator {
            s,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
        };
        let keys = format!(
            "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0\
             HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0\
             ErrorRecoveryLevel=0\0InitialR2T=Yes\0ImmediateData=Yes\0"
        );
        let mut data = keys.into_bytes();
        for _ in 0..4 {
            let mut bhs = [0u8; 48];
            bhs[0] = 0x43; // Login Request, immediate
            bhs[1] = 0x80 | (1 << 2) | 3; // Transit, operational -> full feature
            bhs[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]);
            bhs[16..20].copy_from_slice(&ini.itt.to_be_bytes());
            bhs[24..28].copy_from_slice(&ini.cmd_sn.to_be_bytes());
            bhs[28..32].copy_from_slice(&ini.exp_stat_sn.to_be_bytes());
            ini.send(&bhs, &data);
            let (h, _) = ini.recv();
            assert_eq!(h[0] & 0x3f, 0x23, "login response");
            assert_eq!(h[36], 0, "login status class {} detail {}", h[36], h[37]);
            ini.exp_stat_sn = u32::from_be_bytes(h[24..28].try_into().unwrap()).wrapping_add(1);
            if h[1] & 0x80 != 0 && h[1] & 3 == 3 {
                return ini;
            }
            data.clear();
        }
        panic!("login did not reach full feature phase");
    }

    fn local_addr(&self) -> String {
        self.s.local_addr().unwrap().to_string()
    }

    fn send(&mut self, bhs: &[u8; 48], data: &[u8]) {
        let mut pdu = bhs.to_vec();
        pdu.extend_from_slice(data);
        pdu.resize(48 + pad4(data.len()), 0);
        self.s.write_all(&pdu).unwrap();
    }

    fn recv(&mut self) -> ([u8; 48], Vec<u8>) {
        let mut h = [0u8; 48];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(h[4], 0, "no AHS");
        let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
        let mut data = vec![0u8; pad4(len)];
        self.s.read_exact(&mut data).unwrap();
        data.truncate(len);
        (h, data)
    }

    /// TEST UNIT READY: None for GOOD, else (sense key, ASC, ASCQ).
    fn tur(&mut self, lun: u8) -> Option<(u8, u8, u8)> {
        self.itt += 1;
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] = 0x80 | 0x01; // Final, SIMPLE
        bhs[9] = lun;
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&bhs, &[]);
        loop {
            let (h, data) = self.recv();
            if h[0] & 0x3f != 0x21 {
                continue; // NOP-In and the like
            }
            self.exp_stat_sn = u32::from_be_bytes(h[24..28].try_into().unwrap()).wrapping_add(1);
            assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), self.itt);
            if h[3] == 0 {
                return None;
            }
            assert_eq!(h[3], 0x02, "CHECK CONDITION");
            let sense = &data[2..];
            return Some(match sense[0] & 0x7f {
                0x72 | 0x73 => (sense[1] & 0x0f, sense[2], sense[3]),
                _ => (sense[2] & 0x0f, sense[12], sense[13]),
            });
        }
    }

    /// The next Asynchronous Message: (opcode, AsyncEvent).
    fn next_async(&mut self) -> (u8, u8) {
        loop {
            let (h, _) = self.recv();
            if h[0] & 0x3f == 0x32 {
                return (h[0] & 0x3f, h[36]);
            }
        }
    }

    /// Whether the target closes the connection within `d` (we never answer the logout
    /// request).
    fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}
