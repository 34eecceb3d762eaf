//! Persistent reservations through a daemon restart: a registration and reservation made
//! with APTPL (activate persist through power loss) are back after SIGTERM and a new start
//! on the same config, kept in `<config stem>.reservations/` beside the config file; without
//! APTPL they are gone. Both runtimes.

mod common;

use common::client::Client;
use common::*;
use iscsi_proto::session::initiator::CommandSpec;

const IQN: &str = "iqn.2026-11.org.tgt-rs:aptpl";
const HOST_A: &str = "iqn.2026-11.org.tgt-rs:host-a";
const HOST_B: &str = "iqn.2026-11.org.tgt-rs:host-b";
/// LUN 1 in the single-level LUN format of the SCSI Command PDU.
const LUN: u64 = 1 << 48;
const KEY: u64 = 0x1234_5678_9abc_def0;

fn config() -> String {
    format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\n\
         [[target.lun]]\nlun = 1\nbacking_store = \"DIR/lun.img\"\nsize = \"16M\"\n"
    )
}

/// PERSISTENT RESERVE OUT with a 24-byte basic parameter list.
fn prout(c: &mut Client, action: u8, ty: u8, key: u64, sa_key: u64, aptpl: bool) -> u8 {
    let cdb = [0x5F, action, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    c.run(&CommandSpec::write(LUN, &cdb, 24, &p)).unwrap().0
}

/// PERSISTENT RESERVE IN: READ KEYS (0) or READ RESERVATION (1).
fn prin(c: &mut Client, action: u8) -> Vec<u8> {
    let cdb = [0x5E, action, 0, 0, 0, 0, 0, 1, 0, 0];
    let (st, _, data) = c.run(&CommandSpec::read(LUN, &cdb, 256)).unwrap();
    assert_eq!(st, 0, "PERSISTENT RESERVE IN status");
    data
}

fn keys(c: &mut Client) -> Vec<u64> {
    prin(c, 0)[8..]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

fn session(d: &Daemon, host: &str) -> Client {
    let mut c = Client::login(d.port, IQN, host, 1).unwrap();
    c.clear_unit_attentions(LUN).unwrap();
    c
}

fn restart(dir: &std::path::Path, d: Daemon) -> Daemon {
    let (config, port) = (d.config.clone(), d.port);
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
    Daemon::start_on(dir, &config, port)
}

fn survives_restart(runtime: &str) {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), runtime, &config());
    let mut a = session(&d, HOST_A);
    // REGISTER with APTPL, then RESERVE Write Exclusive.
    assert_eq!(prout(&mut a, 0x00, 0, 0, KEY, true), 0);
    assert_eq!(prout(&mut a, 0x01, 0x01, KEY, 0, false), 0);
    drop(a);
    let saved = dir.path().join("target.reservations");
    let files: Vec<_> = std::fs::read_dir(&saved).unwrap().collect();
    assert_eq!(files.len(), 1, "one image per LUN in {}", saved.display());

    let d = restart(dir.path(), d);
    let mut a = session(&d, HOST_A);
    assert_eq!(keys(&mut a), vec![KEY]);
    let r = prin(&mut a, 1);
    assert_eq!(&r[8..16], &KEY.to_be_bytes(), "reservation key");
    assert_eq!(r[21] & 0x0F, 0x01, "Write Exclusive");
    // Another initiator may read but not write.
    let mut b = session(&d, HOST_B);
    let write = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let block = [0u8; 512];
    assert_eq!(
        b.run(&CommandSpec::write(LUN, &write, 512, &block))
            .unwrap()
            .0,
        0x18,
        "RESERVATION CONFLICT"
    );
    // Dropping APTPL (REGISTER AND IGNORE with APTPL 0) stops keeping it.
    assert_eq!(prout(&mut a, 0x06, 0, 0, KEY, false), 0);
    drop((a, b));
    let d = restart(dir.path(), d);
    let mut a = session(&d, HOST_A);
    assert!(keys(&mut a).is_empty());
    drop(a);
    let (code, err) = d.stop();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn aptpl_reservation_survives_restart_mio() {
    survives_restart("mio");
}

#[test]
fn aptpl_reservation_survives_restart_threads() {
    survives_restart("threads");
}
