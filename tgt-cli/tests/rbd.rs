//! The daemon with `bstype = "rbd"` LUNs on a real, throwaway Ceph cluster: the acceptance
//! runs of the RBD store through the iSCSI path.
//!
//! - data written through iSCSI survives a daemon restart, read back through iSCSI and with
//!   `rbd export` (both runtimes);
//! - two daemons exporting one image (the multipath layout) see each other's writes,
//!   interleaved and concurrent;
//! - on a 3-OSD cluster (pool size 3, min_size 2), I/O through the target goes on while one
//!   OSD is `kill -9`'d, and everything acknowledged reads back;
//! - zero-length READ/WRITE/VERIFY/COMPARE AND WRITE do not reach librbd (a zero-length
//!   read with a null buffer aborts the process);
//! - the mio runtime keeps requests in flight on librbd's asynchronous calls, not one per
//!   I/O thread: with `io_threads = 1` and an OSD that delays every client message, 32
//!   commands sent together finish in about one delay, not 32; a connection that drops
//!   with requests in librbd and `lun delete` during I/O leave the daemon serving and
//!   the image closed.
//!
//! Clusters come from `scripts/ceph-test-cluster.sh` (memstore OSDs on 127.0.0.1, no
//! ceph-mgr): one single-OSD cluster shared by this test binary, started by the first test
//! that needs it and stopped by the script's watcher when the binary exits, and a 3-OSD one
//! for the OSD-failure test, stopped when that test ends. Without the Ceph tools
//! (Debian `ceph-mon`, `ceph-osd`, `ceph-common`) every test prints `SKIPPED: ...` and passes.
//!
//! Built only with the `rbd` feature: `cargo test -p tgt-cli --features rbd --test rbd`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod common;
use common::ceph::{Cluster, have_ceph, say, shared};
use common::client::{Client, Got, rw16, sense_code};
use common::*;

use iscsi_proto::session::initiator::CommandSpec;

const IQN: &str = "iqn.2026-11.org.tgt-rs:rbd";
const INITIATOR: &str = "iqn.2026-11.org.tgt-rs:rbd-initiator";
/// LUN 1, as the LUN field of a command.
const LUN: u64 = 1 << 48;
const BS: u32 = 512;
const MIB: u64 = 1 << 20;

/// The target config: one target, LUN 1 on `backing`.
fn config(backing: &str) -> String {
    format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbstype = \"rbd\"\nbacking_store = \"{backing}\"\nthin = true\n"
    )
}

/// A session with LUN 1's unit attentions cleared.
fn login(d: &Daemon, isid_tail: u8) -> Client {
    let mut c = Client::login(d.port, IQN, INITIATOR, isid_tail).expect("login");
    c.clear_unit_attentions(LUN).expect("unit attentions");
    c
}

/// Deterministic bytes for absolute byte offset `at` onward: a misplaced block differs.
fn pattern(seed: u64, at: u64, len: usize) -> Vec<u8> {
    assert_eq!(at % 8, 0);
    let mut out = Vec::with_capacity(len);
    for w in 0..len.div_ceil(8) as u64 {
        let mut x = seed ^ (at + w * 8).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 29;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Where two buffers first differ, for assertion messages.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("lengths {} and {}", a.len(), b.len());
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i} of the range (its block {}): {:#04x} vs {:#04x}",
            i / BS as usize,
            a[i],
            b[i]
        ),
        None => "equal".into(),
    }
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(got == want, "{what}: {}", first_difference(got, want));
}

/// [`assert_same`] for what one daemon reads after the other wrote. librbd's writeback cache
/// (`rbd_cache`, on by default, writeback once a flush was seen) keeps acknowledged writes
/// in the writer's memory and serves stale cached data to the reader: two daemons on one
/// image are only coherent with it off.
fn assert_coherent(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{what}: {} (the daemons are not coherent: is librbd's rbd_cache still on?)",
        first_difference(got, want)
    );
}

/// Writes `pattern(seed)` at `lba` through `c` and into `model`.
fn write_pattern(c: &mut Client, model: &mut [u8], lba: u64, blocks: u64, seed: u64, fua: bool) {
    let at = lba * u64::from(BS);
    let data = pattern(seed, at, (blocks * u64::from(BS)) as usize);
    c.write_blocks(LUN, lba, &data, BS, fua, 8)
        .unwrap_or_else(|e| panic!("write LBA {lba}+{blocks}: {e}"));
    model[at as usize..at as usize + data.len()].copy_from_slice(&data);
}

fn stop_ok(d: Daemon, what: &str) {
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{what}: SIGTERM exits 0: {log}");
    assert!(!log.contains("panicked"), "{what}: {log}");
}

// ---------------------------------------------------------------------------------------
// a. Data integrity across a daemon restart.

fn data_survives_restart(runtime: &str) {
    let Some(cl) = shared() else { return };
    let dir = tempdir();
    let mib = 16;
    let image = cl.image(&format!("restart-{runtime}"), mib);
    let body = config(&cl.backing_store(&image));
    let blocks = mib * MIB / u64::from(BS);
    let mut model = vec![0u8; (mib * MIB) as usize];

    let d = Daemon::start(dir.path(), runtime, &body);
    let mut c = login(&d, 1);
    // 4 MiB from LBA 0 (several RADOS objects), pieces at odd places, the last 64 KiB, one
    // block with FUA, and an overwrite of part of the first range.
    write_pattern(&mut c, &mut model, 0, 8192, 1, false);
    write_pattern(&mut c, &mut model, 10_001, 77, 2, false);
    write_pattern(&mut c, &mut model, blocks - 128, 128, 3, false);
    write_pattern(&mut c, &mut model, 20_000, 1, 4, true);
    write_pattern(&mut c, &mut model, 4000, 300, 5, false);
    c.sync_cache(LUN).expect("SYNCHRONIZE CACHE");
    let got = c.read_blocks(LUN, 0, blocks, BS, 8).expect("read back");
    assert_same("read back before the restart", &got, &model);
    drop(c);
    stop_ok(d, "first daemon");

    let exported = cl.export(&image, dir.path());
    assert_same(
        "rbd export after the first daemon stopped",
        &exported,
        &model,
    );

    let d = Daemon::start(dir.path(), runtime, &body);
    let mut c = login(&d, 2);
    let got = c
        .read_blocks(LUN, 0, blocks, BS, 8)
        .expect("read after restart");
    assert_same("iSCSI read after the restart", &got, &model);
    // And a write of the restarted daemon lands too.
    write_pattern(&mut c, &mut model, 30_000, 64, 6, true);
    drop(c);
    stop_ok(d, "restarted daemon");
    let exported = cl.export(&image, dir.path());
    assert_same("rbd export at the end", &exported, &model);
    say(&format!(
        "{runtime}: {} MiB image: iSCSI read-back before and after SIGTERM + restart and `rbd \
         export` match the {} written bytes",
        mib,
        8192 * 512 + (77 + 128 + 1 + 300 + 64) * 512
    ));
    cl.rbd(&["rm", "--no-progress", &format!("{}/{image}", cl.pool)]);
}

#[test]
fn mio_rbd_data_survives_daemon_restart() {
    data_survives_restart("mio");
}

#[test]
fn threads_rbd_data_survives_daemon_restart() {
    data_survives_restart("threads");
}

// ---------------------------------------------------------------------------------------
// b. Two daemons exporting one image.

#[test]
fn two_daemons_serve_one_image_consistently() {
    let Some(cl) = shared() else { return };
    let dir_a = tempdir();
    let dir_b = tempdir();
    let mib = 16;
    let image = cl.image("two-daemons", mib);
    let body = config(&cl.backing_store(&image));
    let blocks = mib * MIB / u64::from(BS);
    let mut model = vec![0u8; (mib * MIB) as usize];
    // Different runtimes: the engine (mio) and the blocking store (threads) on one image.
    let a = Daemon::start(dir_a.path(), "mio", &body);
    let b = Daemon::start(dir_b.path(), "threads", &body);
    let mut ca = login(&a, 1);
    let mut cb = login(&b, 1);

    // Interleaved: each write through one daemon is read back through the other, on the
    // same 64 KiB again and again (a stale cache in either would show) and on new ranges.
    let started = Instant::now();
    for round in 0..12u64 {
        let seed = 100 + round * 2;
        write_pattern(&mut ca, &mut model, 0, 128, seed, false);
        let got = cb.read_blocks(LUN, 0, 128, BS, 4).expect("B reads");
        assert_coherent(
            &format!("round {round}: A wrote, B read"),
            &got,
            &model[..64 << 10],
        );
        write_pattern(&mut cb, &mut model, 0, 128, seed + 1, false);
        let got = ca.read_blocks(LUN, 0, 128, BS, 4).expect("A reads");
        assert_coherent(
            &format!("round {round}: B wrote, A read"),
            &got,
            &model[..64 << 10],
        );
        let lba = 1024 + round * 512;
        let (w, r) = if round % 2 == 0 {
            (&mut ca, &mut cb)
        } else {
            (&mut cb, &mut ca)
        };
        write_pattern(w, &mut model, lba, 200, seed + 1000, round % 3 == 0);
        let got = r.read_blocks(LUN, lba, 200, BS, 4).expect("read new range");
        let at = (lba * u64::from(BS)) as usize;
        assert_coherent(
            &format!("round {round}: new range at LBA {lba}"),
            &got,
            &model[at..at + 200 * 512],
        );
    }
    let interleaved = started.elapsed();

    // Concurrent: A writes the even 64 KiB chunks of 8 MiB from LBA 16384, B the odd ones,
    // three passes each, at the same time.
    let started = Instant::now();
    let chunk = 128u64; // blocks
    let base = 16_384u64;
    let chunks = 8 * MIB / (chunk * u64::from(BS));
    let run = |mut c: Client, parity: u64| {
        std::thread::spawn(move || {
            let mut mine = Vec::new();
            for pass in 0..3u64 {
                for k in (parity..chunks).step_by(2) {
                    let lba = base + k * chunk;
                    let data = pattern(1000 + pass, lba * u64::from(BS), (chunk * 512) as usize);
                    c.write_blocks(LUN, lba, &data, BS, false, 4)
                        .unwrap_or_else(|e| panic!("concurrent write LBA {lba}: {e}"));
                    if pass == 2 {
                        mine.push((lba, data));
                    }
                }
            }
            c.sync_cache(LUN).expect("SYNCHRONIZE CACHE");
            (c, mine)
        })
    };
    let ta = run(ca, 0);
    let tb = run(cb, 1);
    let (mut ca, wa) = ta.join().expect("writer A");
    let (mut cb, wb) = tb.join().expect("writer B");
    for (lba, data) in wa.into_iter().chain(wb) {
        let at = (lba * u64::from(BS)) as usize;
        model[at..at + data.len()].copy_from_slice(&data);
    }
    let concurrent = started.elapsed();
    ca.sync_cache(LUN).expect("SYNCHRONIZE CACHE A");
    cb.sync_cache(LUN).expect("SYNCHRONIZE CACHE B");
    let got_a = ca.read_blocks(LUN, 0, blocks, BS, 8).expect("A reads all");
    assert_coherent("whole image through A", &got_a, &model);
    let got_b = cb.read_blocks(LUN, 0, blocks, BS, 8).expect("B reads all");
    assert_coherent("whole image through B", &got_b, &model);
    let exported = cl.export(&image, dir_a.path());
    assert_coherent("rbd export with both daemons up", &exported, &model);
    drop(ca);
    drop(cb);
    stop_ok(a, "daemon A");
    stop_ok(b, "daemon B");
    say(&format!(
        "two daemons: 12 interleaved rounds (write via one, read via the other) in {:.1} s; \
         {} concurrent 64 KiB writes on disjoint chunks in {:.1} s; both daemons and rbd export \
         agree on all {mib} MiB",
        interleaved.as_secs_f64(),
        chunks * 3,
        concurrent.as_secs_f64()
    ));
    cl.rbd(&["rm", "--no-progress", &format!("{}/{image}", cl.pool)]);
}

// ---------------------------------------------------------------------------------------
// c. kill -9 of one OSD of three during I/O.

/// One unit a worker owns: 16 KiB, rewritten with a new generation each time.
const UNIT_BLOCKS: u64 = 32;
const UNITS_PER_WORKER: u64 = 64;

/// What one worker saw.
#[derive(Default, Debug)]
struct Tally {
    writes: u64,
    reads: u64,
    writes_after_kill: u64,
    reads_after_kill: u64,
    /// Commands that ended with a status other than GOOD (then retried): when sent, what.
    failed: Vec<(Instant, String)>,
    /// The longest a command took, and when it was sent.
    slowest: Option<(Duration, Instant)>,
    /// The last acknowledged generation of each unit (0: never written).
    acked: Vec<u64>,
}

fn unit_data(worker: u64, unit: u64, generation: u64) -> Vec<u8> {
    let lba = (worker * UNITS_PER_WORKER + unit) * UNIT_BLOCKS;
    pattern(
        generation.wrapping_mul(0x1000_0000_0000_0001) ^ worker,
        lba * u64::from(BS),
        (UNIT_BLOCKS * u64::from(BS)) as usize,
    )
}

/// Runs `spec` until it ends GOOD (at most 20 tries, 0.5 s apart); every other ending is
/// logged in `t.failed`. The Data-In on success.
fn run_retrying(c: &mut Client, spec: &CommandSpec<'_>, what: &str, t: &mut Tally) -> Vec<u8> {
    for attempt in 0..20 {
        let sent = Instant::now();
        let (st, sense, data) = c
            .run(spec)
            .unwrap_or_else(|e| panic!("{what}: no answer (attempt {attempt}): {e}"));
        let took = sent.elapsed();
        if t.slowest.is_none_or(|(d, _)| took > d) {
            t.slowest = Some((took, sent));
        }
        if st == 0 {
            return data;
        }
        t.failed.push((
            sent,
            format!(
                "{what}: status {st:#04x} sense {:02x?} (attempt {attempt})",
                sense_code(&sense)
            ),
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: still failing after 20 tries: {:?}", t.failed);
}

/// Writes a new generation of a random owned unit and reads it back, until `stop`.
fn osd_worker(
    port: u16,
    worker: u64,
    stop: Arc<AtomicBool>,
    kill_at: Arc<OnceLock<Instant>>,
) -> Tally {
    let mut c = Client::login(port, IQN, INITIATOR, worker as u8 + 1).expect("login");
    // Long enough for Ceph to notice the dead OSD and re-peer: a command may wait that long.
    c.set_timeout(Duration::from_secs(120)).unwrap();
    c.clear_unit_attentions(LUN).expect("unit attentions");
    let mut t = Tally {
        acked: vec![0; UNITS_PER_WORKER as usize],
        ..Tally::default()
    };
    let mut x = 0x2545_f491_4f6c_dd1d ^ worker;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let unit = x % UNITS_PER_WORKER;
        let generation = t.acked[unit as usize] + 1;
        let lba = (worker * UNITS_PER_WORKER + unit) * UNIT_BLOCKS;
        let data = unit_data(worker, unit, generation);
        n += 1;
        let fua = n % 4 == 0;
        let cdb = rw16(0x8a, lba, UNIT_BLOCKS as u32, fua);
        run_retrying(
            &mut c,
            &CommandSpec::write(LUN, &cdb, data.len() as u32, &data),
            &format!("WRITE(16) LBA {lba}"),
            &mut t,
        );
        t.acked[unit as usize] = generation;
        t.writes += 1;
        let cdb = rw16(0x88, lba, UNIT_BLOCKS as u32, false);
        let got = run_retrying(
            &mut c,
            &CommandSpec::read(LUN, &cdb, data.len() as u32),
            &format!("READ(16) LBA {lba}"),
            &mut t,
        );
        assert_same(
            &format!("worker {worker} unit {unit} generation {generation} read back"),
            &got,
            &data,
        );
        t.reads += 1;
        if kill_at.get().is_some() {
            t.writes_after_kill += 1;
            t.reads_after_kill += 1;
        }
    }
    c.sync_cache(LUN).expect("SYNCHRONIZE CACHE");
    t
}

#[test]
fn io_continues_when_an_osd_is_killed() {
    if !have_ceph() {
        return;
    }
    let cl = Cluster::start(3, "osd-kill");
    let pool = cl.rbd(&["pool", "stats", &cl.pool]);
    assert!(!pool.is_empty());
    // One image and one daemon per runtime, both under I/O when the OSD dies.
    let runtimes = ["mio", "threads"];
    let workers_per_daemon = 2u64;
    let mib = (workers_per_daemon * UNITS_PER_WORKER * UNIT_BLOCKS * u64::from(BS)).div_ceil(MIB);
    let dirs: Vec<_> = runtimes.iter().map(|_| tempdir()).collect();
    let images: Vec<String> = runtimes
        .iter()
        .map(|rt| cl.image(&format!("osd-kill-{rt}"), mib))
        .collect();
    let daemons: Vec<Daemon> = runtimes
        .iter()
        .zip(&dirs)
        .zip(&images)
        .map(|((rt, dir), image)| Daemon::start(dir.path(), rt, &config(&cl.backing_store(image))))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let kill_at = Arc::new(OnceLock::new());
    // Seconds from the kill to `at` (negative: before it).
    let since_kill = |at: Instant| {
        let k = *kill_at.get().expect("killed");
        if at >= k {
            (at - k).as_secs_f64()
        } else {
            -(k - at).as_secs_f64()
        }
    };
    let mut handles = Vec::new();
    for d in &daemons {
        for w in 0..workers_per_daemon {
            let (port, stop, kill_at) = (d.port, stop.clone(), kill_at.clone());
            handles.push(std::thread::spawn(move || {
                osd_worker(port, w, stop, kill_at)
            }));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let victim = 1;
    // SAFETY: kill(2) with the PID of an OSD the cluster script started for this test.
    let r = unsafe { libc::kill(cl.osd_pids[victim], libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 osd.{victim}");
    kill_at.set(Instant::now()).unwrap();
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let osd_state = Command::new("ceph")
        .env("PATH", "/usr/bin:/bin")
        .arg("-c")
        .arg(&cl.conf)
        .args(["osd", "dump"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let down = osd_state
        .lines()
        .find(|l| l.starts_with(&format!("osd.{victim} ")))
        .unwrap_or("")
        .to_owned();
    assert!(
        down.contains(" down "),
        "osd.{victim} is marked down: {down}"
    );

    // Everything acknowledged reads back, through iSCSI and with `rbd export`.
    for (i, (rt, d)) in runtimes.iter().zip(&daemons).enumerate() {
        let mut c = login(d, 9);
        for w in 0..workers_per_daemon {
            let t = &tallies[i * workers_per_daemon as usize + w as usize];
            let (slowest, sent) = t.slowest.expect("commands ran");
            let failed: Vec<String> = t
                .failed
                .iter()
                .map(|(at, what)| format!("kill{:+.2}s {what}", since_kill(*at)))
                .collect();
            say(&format!(
                "{rt} worker {w}: {} writes + {} reads verified ({} + {} after the kill), \
                 slowest command {:.2} s (sent at kill{:+.2} s), failed commands: {:?}",
                t.writes,
                t.reads,
                t.writes_after_kill,
                t.reads_after_kill,
                slowest.as_secs_f64(),
                since_kill(sent),
                failed
            ));
            assert!(
                t.writes_after_kill >= 10,
                "{rt} worker {w}: I/O resumed after the kill: {t:?}"
            );
            let exported = cl.export(&images[i], dirs[i].path());
            for (unit, &generation) in t.acked.iter().enumerate() {
                let unit = unit as u64;
                let lba = (w * UNITS_PER_WORKER + unit) * UNIT_BLOCKS;
                let want = if generation == 0 {
                    vec![0; (UNIT_BLOCKS * u64::from(BS)) as usize]
                } else {
                    unit_data(w, unit, generation)
                };
                let got = c.read_blocks(LUN, lba, UNIT_BLOCKS, BS, 1).expect("read");
                assert_same(
                    &format!("{rt} worker {w} unit {unit} via iSCSI"),
                    &got,
                    &want,
                );
                let at = (lba * u64::from(BS)) as usize;
                assert_same(
                    &format!("{rt} worker {w} unit {unit} via rbd export"),
                    &exported[at..at + want.len()],
                    &want,
                );
            }
        }
    }
    for d in daemons {
        stop_ok(d, "daemon");
    }
    say(&format!("osd.{victim} after the test: {down}"));
}

// ---------------------------------------------------------------------------------------
// d. Zero-length commands never reach librbd.

fn zero_length_commands(runtime: &str) {
    let Some(cl) = shared() else { return };
    let dir = tempdir();
    let image = cl.image(&format!("zero-{runtime}"), 4);
    let mut d = Daemon::start(dir.path(), runtime, &config(&cl.backing_store(&image)));
    let blocks = 4 * MIB / u64::from(BS);
    let mut c = login(&d, 1);
    let mut seen = Vec::new();
    let mut cmd = |c: &mut Client, name: &str, cdb: &[u8], write: bool| {
        let spec = if write {
            CommandSpec::write(LUN, cdb, 0, &[])
        } else {
            CommandSpec::read(LUN, cdb, 0)
        };
        let (st, sense, data) = c
            .run(&spec)
            .unwrap_or_else(|e| panic!("{name}: the daemon did not answer: {e}"));
        assert!(data.is_empty(), "{name}: no data");
        seen.push(format!("{name}: {st:#04x} {:02x?}", sense_code(&sense)));
        (st, sense_code(&sense))
    };
    let lba_oob = Some((0x05, 0x21, 0x00));
    for (lba, expect_good) in [(0u64, true), (blocks - 1, true), (blocks + 1, false)] {
        let l32 = (lba as u32).to_be_bytes();
        let l64 = lba.to_be_bytes();
        let ten = |op: u8| [op, 0, l32[0], l32[1], l32[2], l32[3], 0, 0, 0, 0];
        let sixteen = |op: u8| {
            let mut c = [0u8; 16];
            c[0] = op;
            c[2..10].copy_from_slice(&l64);
            c
        };
        for (name, cdb, write) in [
            ("READ(10)", ten(0x28).to_vec(), false),
            ("WRITE(10)", ten(0x2a).to_vec(), true),
            ("VERIFY(10)", ten(0x2f).to_vec(), false),
            ("WRITE AND VERIFY(10)", ten(0x2e).to_vec(), true),
            ("READ(16)", sixteen(0x88).to_vec(), false),
            ("WRITE(16)", sixteen(0x8a).to_vec(), true),
            ("VERIFY(16)", sixteen(0x8f).to_vec(), false),
            ("COMPARE AND WRITE", sixteen(0x89).to_vec(), true),
        ] {
            let name = format!("{name} 0 blocks at LBA {lba}");
            let (st, code) = cmd(&mut c, &name, &cdb, write);
            if expect_good {
                assert_eq!(st, 0, "{name}: GOOD");
            } else {
                assert_eq!((st, code), (2, lba_oob), "{name}: LBA OUT OF RANGE");
            }
        }
        // READ(6) with 0 blocks means 256 blocks: a real read, which must work.
        if lba < 0x1f_ffff && lba + 256 <= blocks {
            let l = (lba as u32).to_be_bytes();
            let (st, _, data) = c
                .run(&CommandSpec::read(
                    LUN,
                    &[0x08, l[1] & 0x1f, l[2], l[3], 0, 0],
                    256 * BS,
                ))
                .unwrap();
            assert_eq!(
                (st, data.len()),
                (0, 256 * BS as usize),
                "READ(6) of 256 blocks"
            );
        }
    }
    // The daemon is alive and still serves data.
    let data = pattern(9, 0, 8192);
    c.write_blocks(LUN, 0, &data, BS, false, 1).unwrap();
    assert_same(
        "after the zero-length commands",
        &c.read_blocks(LUN, 0, 16, BS, 1).unwrap(),
        &data,
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "daemon still running"
    );
    drop(c);
    stop_ok(d, "daemon");
    say(&format!(
        "{runtime}: {} zero-length commands answered: {seen:?}",
        seen.len()
    ));
    cl.rbd(&["rm", "--no-progress", &format!("{}/{image}", cl.pool)]);
}

#[test]
fn mio_zero_length_commands_on_rbd() {
    zero_length_commands("mio");
}

#[test]
fn threads_zero_length_commands_on_rbd() {
    zero_length_commands("threads");
}

// ---------------------------------------------------------------------------------------
// e. Requests in flight on librbd's asynchronous calls, beyond the reactor's I/O threads.

/// The most the OSD holds each client message (Ceph's `ms_inject_delay_max`), seconds.
const OSD_DELAY: f64 = 0.2;

/// Sends `n` 4 KiB commands at once from LBA `base` (reads, and writes every other one,
/// half of them FUA); returns the ITTs.
fn send_batch(c: &mut Client, n: u64, base: u64) -> Vec<u32> {
    let data = vec![0x5a; 4096];
    (0..n)
        .map(|i| {
            let lba = base + i * 8;
            let spec_cdb;
            let spec = if i % 2 == 0 {
                spec_cdb = rw16(0x88, lba, 8, false);
                CommandSpec::read(LUN, &spec_cdb, 4096)
            } else {
                spec_cdb = rw16(0x8a, lba, 8, i % 4 == 1);
                CommandSpec::write(LUN, &spec_cdb, 4096, &data)
            };
            c.send(&spec).expect("send")
        })
        .collect()
}

/// Waits for the status of every command of `itts`, which must be GOOD.
fn wait_batch(c: &mut Client, mut itts: Vec<u32>) {
    while !itts.is_empty() {
        let (itt, st) = match c.next().expect("response") {
            Got::Status(itt, st, _) => (itt, Some(st)),
            Got::Data(itt, _, _, st) => (itt, st),
            Got::Other => continue,
        };
        if let Some(st) = st {
            assert_eq!(st, 0, "command {itt:#x}");
            itts.retain(|&t| t != itt);
        }
    }
}

/// [`send_batch`], then [`wait_batch`].
fn batch(c: &mut Client, n: u64, base: u64) {
    let itts = send_batch(c, n, base);
    wait_batch(c, itts);
}

fn ceph_set(cl: &Cluster, key: &str, value: &str) {
    let args = ["tell", "osd.0", "config", "set", key, value];
    if let Err(e) = cl.try_run("ceph", &args) {
        panic!("ceph {args:?}: {e}");
    }
}

#[test]
fn mio_keeps_more_rbd_requests_in_flight_than_it_has_io_threads() {
    if !have_ceph() {
        return;
    }
    // A cluster of its own: the delay would slow the other tests down.
    let cl = Cluster::start(1, "inflight");
    let image = cl.image("inflight", 16);
    let dir = tempdir();
    let port = free_port();
    let cfg_path = dir.path().join("target.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[daemon]\nlisten = [\"127.0.0.1:{port}\"]\nruntime = \"mio\"\nreactors = 1\n\
             io_threads = 1\n\n{}",
            config(&cl.backing_store(&image))
        ),
    )
    .unwrap();
    // The OSD delays messages on connections made after this (the daemon's).
    for (k, v) in [
        ("ms_inject_delay_type", "client"),
        ("ms_inject_delay_probability", "1"),
        ("ms_inject_delay_max", &OSD_DELAY.to_string()),
    ] {
        ceph_set(&cl, k, v);
    }
    let d = Daemon::start_on(dir.path(), &cfg_path, port);
    let mut c = login(&d, 1);
    batch(&mut c, 32, 0);
    // With one I/O thread doing blocking calls the 32 commands would run one after
    // another: 32 delays of up to 0.2 s each, 3.2 s expected (and 2.2 s is more than five
    // standard deviations below). In flight together they take about one delay.
    let mut times = Vec::new();
    for round in 0..3u64 {
        let t = Instant::now();
        batch(&mut c, 32, 1024 + round * 512);
        times.push(t.elapsed());
    }
    let best = *times.iter().min().unwrap();
    assert!(
        best < Duration::from_millis(1200),
        "32 commands at once took {times:?} with io_threads = 1 and an OSD delay of up to \
         {OSD_DELAY} s: they did not run concurrently"
    );
    say(&format!(
        "mio, io_threads = 1, OSD delay up to {OSD_DELAY} s: 32 commands sent together done in \
         {times:?} (one after another: ~3.2 s)"
    ));

    // The connection drops with 32 requests in librbd: the daemon keeps serving.
    let itts = send_batch(&mut c, 32, 4096);
    assert_eq!(itts.len(), 32);
    drop(c);
    let mut c = login(&d, 2);
    batch(&mut c, 8, 6000);

    // LUN delete while requests are in flight: they end (GOOD, or the session is logged
    // out), the daemon serves on, and the image is closed (no watcher left) soon after.
    let _ = send_batch(&mut c, 32, 8192);
    d.ok(&["lun", "delete", "--tid", "1", "--lun", "1", "--force"]);
    drop(c);
    ceph_set(&cl, "ms_inject_delay_max", "0");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rm = cl.try_run(
            "rbd",
            &["rm", "--no-progress", &format!("{}/{image}", cl.pool)],
        );
        match rm {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the deleted LUN's image is still open: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop_ok(d, "daemon");
}
