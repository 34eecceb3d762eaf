//! The daemon's `bstype = "rbd"` LUNs use librbd natively, seen through iSCSI:
//!
//! - COMPARE AND WRITE runs as librbd's compare-and-write (one backing-store request, no
//!   separate write): success is GOOD and writes; a miscompare is CHECK CONDITION,
//!   MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the offset of the first differing
//!   byte in INFORMATION, and writes nothing (one block: librbd's atomic call; two blocks:
//!   the store's serialised emulation);
//! - WRITE SAME runs as `rbd_aio_writesame` (and with UNMAP as a discard);
//! - `rbd resize` of the image (grow, then shrink) reaches the initiator as a CAPACITY
//!   DATA HAS CHANGED unit attention, READ CAPACITY (16) reports the new size, and after
//!   the shrink I/O beyond the new end is LBA OUT OF RANGE;
//!
//! on both runtimes. The cluster comes from `scripts/ceph-test-cluster.sh` (one memstore
//! OSD on 127.0.0.1), started by the first test and stopped by the script's watcher when
//! this test binary exits; without the Ceph tools the tests print `SKIPPED: ...` and pass.
//!
//! Built only with the `rbd` feature: `cargo test -p tgt-cli --features rbd --test
//! rbd_native`.

use std::time::{Duration, Instant};

mod common;
use common::ceph::shared;
use common::client::Client;
use common::*;

use iscsi_proto::session::initiator::CommandSpec;

const IQN: &str = "iqn.2026-11.org.tgt-rs:rbd-native";
const INITIATOR: &str = "iqn.2026-11.org.tgt-rs:rbd-native-initiator";
/// LUN 1, as the LUN field of a command.
const LUN: u64 = 1 << 48;
const BS: usize = 512;
const MIB: u64 = 1 << 20;

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;

/// The target config: one target, LUN 1 on `backing`.
fn config(backing: &str) -> String {
    format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbstype = \"rbd\"\nbacking_store = \"{backing}\"\nthin = true\n"
    )
}

/// A 16-byte CDB: opcode, byte 1, LBA, 32-bit count.
fn cdb16(opcode: u8, b1: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// COMPARE AND WRITE: the block count is one byte (13).
fn caw_cdb(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Fixed-format sense: key, ASC, ASCQ and the INFORMATION field if VALID.
fn sense_of(sense: &[u8]) -> (u8, u8, u8, Option<u32>) {
    assert!(
        sense.len() >= 18,
        "fixed-format sense expected: {sense:02x?}"
    );
    assert_eq!(sense[0] & 0x7F, 0x70, "fixed-format sense: {sense:02x?}");
    let info = (sense[0] & 0x80 != 0)
        .then(|| u32::from_be_bytes([sense[3], sense[4], sense[5], sense[6]]));
    (sense[2] & 0x0F, sense[12], sense[13], info)
}

/// Key, ASC, ASCQ of fixed-format sense.
fn code(sense: &[u8]) -> (u8, u8, u8) {
    let (k, a, q, _) = sense_of(sense);
    (k, a, q)
}

fn write(c: &mut Client, lba: u64, data: &[u8]) {
    let cdb = cdb16(0x8A, 0, lba, (data.len() / BS) as u32);
    let (st, sense, _) = c
        .run(&CommandSpec::write(LUN, &cdb, data.len() as u32, data))
        .unwrap();
    assert_eq!(st, GOOD, "WRITE(16) at {lba}: {sense:02x?}");
}

fn read(c: &mut Client, lba: u64, blocks: u32) -> Vec<u8> {
    let cdb = cdb16(0x88, 0, lba, blocks);
    let (st, sense, data) = c
        .run(&CommandSpec::read(LUN, &cdb, blocks * BS as u32))
        .unwrap();
    assert_eq!(st, GOOD, "READ(16) at {lba}: {sense:02x?}");
    assert_eq!(data.len(), blocks as usize * BS);
    data
}

fn compare_and_write(c: &mut Client, lba: u64, compare: &[u8], new: &[u8]) -> (u8, Vec<u8>) {
    let mut data = compare.to_vec();
    data.extend_from_slice(new);
    let cdb = caw_cdb(lba, (compare.len() / BS) as u8);
    let (st, sense, _) = c
        .run(&CommandSpec::write(LUN, &cdb, data.len() as u32, &data))
        .unwrap();
    (st, sense)
}

/// READ CAPACITY (16): (last LBA, block length).
fn read_capacity16(c: &mut Client) -> (u64, u32) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (st, sense, data) = c.run(&CommandSpec::read(LUN, &cdb, 32)).unwrap();
    assert_eq!(st, GOOD, "READ CAPACITY (16): {sense:02x?}");
    assert!(data.len() >= 12, "{data:02x?}");
    (
        u64::from_be_bytes(data[..8].try_into().unwrap()),
        u32::from_be_bytes(data[8..12].try_into().unwrap()),
    )
}

/// LUN 1's backing-store request counters: (requests, write requests).
fn io_counts(d: &Daemon) -> (u64, u64) {
    let stats = d.json(&["stats", "--json", "--tid", "1"]);
    let lun = stats[0]["luns"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["lun"] == 1))
        .unwrap_or_else(|| panic!("no LUN 1 in {stats}"))
        .clone();
    (
        lun["commands"].as_u64().unwrap(),
        lun["write_ops"].as_u64().unwrap(),
    )
}

/// TEST UNIT READY until it reports CAPACITY DATA HAS CHANGED (the daemon checks every
/// 2 s); any other condition fails the test.
fn wait_capacity_changed(c: &mut Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, sense, _) = c.run(&CommandSpec::read(LUN, &[0; 6], 0)).unwrap();
        if st == CHECK_CONDITION {
            // UNIT ATTENTION, CAPACITY DATA HAS CHANGED (0x06/0x2A/0x09).
            assert_eq!(code(&sense), (0x06, 0x2A, 0x09), "{what}: {sense:02x?}");
            // Reported once.
            let (st, sense, _) = c.run(&CommandSpec::read(LUN, &[0; 6], 0)).unwrap();
            assert_eq!(st, GOOD, "{what}: a second unit attention {sense:02x?}");
            return;
        }
        assert_eq!(st, GOOD);
        assert!(
            Instant::now() < deadline,
            "{what}: no CAPACITY DATA HAS CHANGED within 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn native_ops(runtime: &str) {
    let Some(cl) = shared() else { return };
    let dir = tempdir();
    let name = cl.image(&format!("native-{runtime}"), 16);
    let image = format!("{}/{name}", cl.pool);
    let d = Daemon::start(dir.path(), runtime, &config(&cl.backing_store(&name)));
    let mut c = Client::login(d.port, IQN, INITIATOR, 1).expect("login");
    c.clear_unit_attentions(LUN).expect("unit attentions");

    // --- COMPARE AND WRITE, one block: librbd's atomic compare-and-write.
    let a = pattern(1, BS);
    let b = pattern(2, BS);
    write(&mut c, 100, &a);
    let before = io_counts(&d);
    let (st, sense) = compare_and_write(&mut c, 100, &a, &b);
    assert_eq!((st, sense.as_slice()), (GOOD, &[][..]), "{sense:02x?}");
    // One backing-store request and no separate write: done by the store, not emulated.
    let after = io_counts(&d);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "COMPARE AND WRITE is one native request"
    );
    assert_eq!(read(&mut c, 100, 1), b);
    // Miscompare at byte 300: MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION,
    // INFORMATION 300; nothing written.
    let mut stale = b.clone();
    stale[300] ^= 0x5A;
    let (st, sense) = compare_and_write(&mut c, 100, &stale, &pattern(3, BS));
    assert_eq!(st, CHECK_CONDITION);
    assert_eq!(
        sense_of(&sense),
        (0x0E, 0x1D, 0x00, Some(300)),
        "{sense:02x?}"
    );
    assert_eq!(read(&mut c, 100, 1), b, "a miscompare writes nothing");
    // In a later RADOS object (4 MiB objects), first byte.
    let far = 5 * MIB / BS as u64 + 3;
    write(&mut c, far, &a);
    let mut bad = a.clone();
    bad[0] ^= 1;
    let (st, sense) = compare_and_write(&mut c, far, &bad, &b);
    assert_eq!(st, CHECK_CONDITION);
    assert_eq!(
        sense_of(&sense),
        (0x0E, 0x1D, 0x00, Some(0)),
        "{sense:02x?}"
    );
    assert_eq!(read(&mut c, far, 1), a);

    // --- Two blocks: the store's serialised emulation; the offset is into the Data-Out
    // buffer (the second block's byte 188 is byte 700).
    let two = pattern(4, 2 * BS);
    write(&mut c, 200, &two);
    let mut cmp = two.clone();
    cmp[700] ^= 0xFF;
    let (st, sense) = compare_and_write(&mut c, 200, &cmp, &pattern(5, 2 * BS));
    assert_eq!(st, CHECK_CONDITION);
    assert_eq!(
        sense_of(&sense),
        (0x0E, 0x1D, 0x00, Some(700)),
        "{sense:02x?}"
    );
    assert_eq!(read(&mut c, 200, 2), two);
    let (st, sense) = compare_and_write(&mut c, 200, &two, &pattern(5, 2 * BS));
    assert_eq!(st, GOOD, "{sense:02x?}");
    assert_eq!(read(&mut c, 200, 2), pattern(5, 2 * BS));

    // --- WRITE SAME (16): 3000 blocks of one pattern block, across an object boundary.
    let block = pattern(6, BS);
    let start = 4 * MIB / BS as u64 - 1000;
    let cdb = cdb16(0x93, 0, start, 3000);
    let (st, sense, _) = c
        .run(&CommandSpec::write(LUN, &cdb, BS as u32, &block))
        .unwrap();
    assert_eq!(st, GOOD, "WRITE SAME: {sense:02x?}");
    let got = read(&mut c, start - 1, 3002);
    assert_eq!(&got[..BS], &[0u8; BS][..], "the block before");
    for (k, chunk) in got[BS..3001 * BS].chunks(BS).enumerate() {
        assert_eq!(chunk, &block[..], "WRITE SAME block {k}");
    }
    assert_eq!(&got[3001 * BS..], &[0u8; BS][..], "the block after");
    // With UNMAP (thin LUN): deallocated, reads zeroes.
    let cdb = cdb16(0x93, 0x08, start, 1000);
    let (st, sense, _) = c
        .run(&CommandSpec::write(LUN, &cdb, BS as u32, &block))
        .unwrap();
    assert_eq!(st, GOOD, "WRITE SAME with UNMAP: {sense:02x?}");
    assert_eq!(read(&mut c, start, 1000), vec![0u8; 1000 * BS]);
    assert_eq!(read(&mut c, start + 1000, 1), block);

    // --- Grown with `rbd resize`: CAPACITY DATA HAS CHANGED, then the new capacity.
    assert_eq!(
        read_capacity16(&mut c),
        (16 * MIB / BS as u64 - 1, BS as u32)
    );
    cl.rbd(&["resize", &image, "--size", "24M"]);
    wait_capacity_changed(&mut c, "after growing to 24 MiB");
    assert_eq!(
        read_capacity16(&mut c),
        (24 * MIB / BS as u64 - 1, BS as u32)
    );
    // The new space is usable.
    let beyond_old = 20 * MIB / BS as u64;
    write(&mut c, beyond_old, &a);
    assert_eq!(read(&mut c, beyond_old, 1), a);

    // --- Shrunk: the same, and I/O beyond the new end is LBA OUT OF RANGE.
    cl.rbd(&["resize", &image, "--size", "8M", "--allow-shrink"]);
    wait_capacity_changed(&mut c, "after shrinking to 8 MiB");
    let last = 8 * MIB / BS as u64 - 1;
    assert_eq!(read_capacity16(&mut c), (last, BS as u32));
    let out_of_range = |st: u8, sense: &[u8], what: &str| {
        assert_eq!(st, CHECK_CONDITION, "{what}");
        assert_eq!(code(sense), (0x05, 0x21, 0x00), "{what}: {sense:02x?}");
    };
    let cdb = cdb16(0x88, 0, beyond_old, 1);
    let (st, sense, _) = c.run(&CommandSpec::read(LUN, &cdb, BS as u32)).unwrap();
    out_of_range(st, &sense, "READ beyond the new end");
    let cdb = cdb16(0x8A, 0, last, 2);
    let (st, sense, _) = c
        .run(&CommandSpec::write(LUN, &cdb, 2 * BS as u32, &[7; 2 * BS]))
        .unwrap();
    out_of_range(st, &sense, "WRITE across the new end");
    let (st, sense) = compare_and_write(&mut c, last + 1, &a, &b);
    out_of_range(st, &sense, "COMPARE AND WRITE beyond the new end");
    // The last block still works.
    write(&mut c, last, &b);
    assert_eq!(read(&mut c, last, 1), b);
    assert_eq!(read(&mut c, 100, 1), b, "data below the new end survived");

    drop(c);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "SIGTERM exits 0: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("capacity changed"),
        "the daemon logs the capacity changes: {log}"
    );
}

#[test]
fn native_compare_and_write_write_same_and_resize_threads() {
    native_ops("threads");
}

#[test]
fn native_compare_and_write_write_same_and_resize_mio() {
    native_ops("mio");
}
