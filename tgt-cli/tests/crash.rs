//! Crash consistency (issue #10): writes acknowledged as durable survive `kill -9` of the
//! daemon, and no block is torn.
//!
//! Several sessions keep a queue of 4 KiB WRITE(10)s in flight, half of them with FUA, and
//! now and then a SYNCHRONIZE CACHE(10). Every 512-byte sector written carries a header
//! (unit, generation, sector index, checksum) and a body derived from it, so a sector that
//! mixes two writes, or a unit whose sectors come from different writes, is detected. Each
//! session owns its own units and has at most one write in flight per unit, so after the
//! crash a unit must hold exactly one generation, between the last durable one and the
//! last one sent:
//! - durable: acknowledged with FUA, or acknowledged before a SYNCHRONIZE CACHE that was
//!   itself acknowledged;
//! - the daemon is killed with SIGKILL mid-run, restarted on the same file, and every unit
//!   is read back through iSCSI and checked.
//!
//! What this can and cannot show: SIGKILL ends the process, not the machine. The page
//! cache survives a process kill, so buffered writes the daemon handed to the kernel are
//! still there afterwards; the test checks what `kill -9` can check — that nothing the
//! daemon acknowledged as durable was still only in its own memory (queued, or in a user
//! space buffer), and that no write was applied partially. Durability across a power cut
//! (that FUA and SYNCHRONIZE CACHE really reach stable media: O_DSYNC / fdatasync) cannot
//! be observed without cutting power; the backstore's own tests cover which syscalls are
//! made.
//!
//! Runs: `rdwr` (buffered pread/pwrite) and `aio` (Linux AIO with O_DIRECT, the only store
//! that offers it; the run fails if the daemon fell back to buffered I/O), each on both
//! runtimes, two kill/restart cycles each. `memory` is not durable and is not run.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::client::{Client, Got};
use common::*;

use iscsi_proto::session::initiator::CommandSpec;

const IQN: &str = "iqn.2026-11.org.tgt-rs:crash";
const LUN: u64 = 1 << 48;
/// Units of 4 KiB (8 sectors of 512 bytes).
const UNITS: u32 = 2048;
const SECTORS: usize = 8;
const UNIT_BYTES: usize = SECTORS * 512;
const SESSIONS: u32 = 3;
const QUEUE_DEPTH: usize = 4;
/// The load runs at least this long before the kill...
const MIN_LOAD: Duration = Duration::from_millis(800);
/// ...and until this many writes were acknowledged (at most `MAX_LOAD`).
const MIN_ACKED: u64 = 150;
const MAX_LOAD: Duration = Duration::from_secs(8);
const CYCLES: u32 = 2;

/// FNV-1a over a sector with its checksum field zeroed.
fn checksum(sector: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (i, b) in sector.iter().enumerate() {
        let b = if (24..32).contains(&i) { 0 } else { *b };
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The content of `unit` at generation `generation` (>= 1).
fn unit_image(unit: u32, generation: u64) -> Vec<u8> {
    let mut v = vec![0u8; UNIT_BYTES];
    for (s, sector) in v.chunks_mut(512).enumerate() {
        sector[0..8].copy_from_slice(b"TGTCRASH");
        sector[8..12].copy_from_slice(&unit.to_le_bytes());
        sector[12..16].copy_from_slice(&(s as u32).to_le_bytes());
        sector[16..24].copy_from_slice(&generation.to_le_bytes());
        let mut x = generation ^ (u64::from(unit) << 32) ^ (s as u64) ^ 0x9e37_79b9_7f4a_7c15;
        for b in sector[32..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let c = checksum(sector);
        sector[24..32].copy_from_slice(&c.to_le_bytes());
    }
    v
}

/// Which generation a unit holds: `Ok(0)` for never written (all zero), `Ok(g)` when every
/// sector is exactly generation `g`'s, `Err` for anything else (torn, mixed, corrupt).
fn classify(unit: u32, bytes: &[u8]) -> Result<u64, String> {
    if bytes.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let first = &bytes[..512];
    if &first[0..8] != b"TGTCRASH" {
        return Err(format!("unit {unit}: sector 0 has no header"));
    }
    let g = u64::from_le_bytes(first[16..24].try_into().unwrap());
    if bytes != unit_image(unit, g).as_slice() {
        let gens: Vec<u64> = bytes
            .chunks(512)
            .map(|s| u64::from_le_bytes(s[16..24].try_into().unwrap()))
            .collect();
        let sums_ok = bytes
            .chunks(512)
            .all(|s| checksum(s) == u64::from_le_bytes(s[24..32].try_into().unwrap()));
        return Err(format!(
            "unit {unit}: not generation {g}'s image (sector generations {gens:?}, \
             checksums ok: {sums_ok})"
        ));
    }
    Ok(g)
}

/// What the writers know about each unit.
#[derive(Clone, Copy, Default)]
struct UnitState {
    /// The newest generation acknowledged as durable.
    durable: u64,
    /// The newest generation acknowledged at all.
    acked: u64,
    /// The newest generation sent (acknowledged or not).
    sent: u64,
}

/// A session as this test's initiator, its unit attentions cleared.
fn login(port: u16, isid_tail: u8) -> io::Result<Client> {
    let mut c = Client::login(
        port,
        IQN,
        "iqn.2026-11.org.tgt-rs:crash-initiator",
        isid_tail,
    )?;
    c.clear_unit_attentions(LUN)?;
    Ok(c)
}

fn write10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [
        0x2a,
        if fua { 0x08 } else { 0 },
        l[0],
        l[1],
        l[2],
        l[3],
        0,
        b[0],
        b[1],
        0,
    ]
}

/// Counters of one writer session.
#[derive(Default, Clone, Copy)]
struct Tally {
    writes_acked: u64,
    fua_acked: u64,
    syncs_acked: u64,
}

/// One writer session until the daemon dies (or `stop`): keeps `QUEUE_DEPTH` commands in
/// flight on its own units (`unit % SESSIONS == id`), never two on the same unit.
fn writer(
    port: u16,
    id: u32,
    units: Arc<Mutex<Vec<UnitState>>>,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> Tally {
    let mut t = Tally::default();
    let Ok(mut c) = login(port, id as u8) else {
        return t;
    };
    enum Op {
        Write {
            unit: u32,
            generation: u64,
            fua: bool,
        },
        /// The writes acknowledged (not yet durable) when the SYNCHRONIZE CACHE was sent.
        Sync(Vec<(u32, u64)>),
    }
    let mut inflight: Vec<(u32, Op)> = Vec::new();
    let mut acked_volatile: Vec<(u32, u64)> = Vec::new();
    let mut x = 0x1234_5678_9abc_def0u64 ^ u64::from(id);
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mine: Vec<u32> = (0..UNITS).filter(|u| u % SESSIONS == id).collect();
    let mut n = 0u64;
    let result: io::Result<()> = (|| {
        loop {
            while inflight.len() < QUEUE_DEPTH && !stop.load(Ordering::Relaxed) {
                n += 1;
                if n % 16 == 0 {
                    let itt = c.send(&CommandSpec::read(
                        LUN,
                        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        0,
                    ))?;
                    inflight.push((itt, Op::Sync(std::mem::take(&mut acked_volatile))));
                    continue;
                }
                let unit = loop {
                    let u = mine[(rand() % mine.len() as u64) as usize];
                    if !inflight
                        .iter()
                        .any(|(_, op)| matches!(op, Op::Write { unit, .. } if *unit == u))
                    {
                        break u;
                    }
                };
                let fua = rand() % 2 == 0;
                let generation = {
                    let mut g = units.lock().unwrap();
                    let s = &mut g[unit as usize];
                    s.sent += 1;
                    s.sent
                };
                let data = unit_image(unit, generation);
                let cdb = write10(unit * SECTORS as u32, SECTORS as u16, fua);
                let itt = c.send(&CommandSpec::write(LUN, &cdb, UNIT_BYTES as u32, &data))?;
                inflight.push((
                    itt,
                    Op::Write {
                        unit,
                        generation,
                        fua,
                    },
                ));
            }
            if inflight.is_empty() {
                return Ok(());
            }
            let (itt, status) = match c.next()? {
                Got::Status(i, s, _) | Got::Data(i, _, _, Some(s)) => (i, s),
                _ => continue,
            };
            let Some(k) = inflight.iter().position(|(i, _)| *i == itt) else {
                return Err(io::Error::other(format!("status for unknown ITT {itt:#x}")));
            };
            let (_, op) = inflight.swap_remove(k);
            if status != 0 {
                return Err(io::Error::other(format!("status {status:#x}")));
            }
            let mut g = units.lock().unwrap();
            match op {
                Op::Write {
                    unit,
                    generation,
                    fua,
                } => {
                    let s = &mut g[unit as usize];
                    s.acked = s.acked.max(generation);
                    t.writes_acked += 1;
                    acked_total.fetch_add(1, Ordering::Relaxed);
                    if fua {
                        s.durable = s.durable.max(generation);
                        t.fua_acked += 1;
                    } else {
                        acked_volatile.push((unit, generation));
                    }
                }
                Op::Sync(covered) => {
                    for (unit, generation) in covered {
                        let s = &mut g[unit as usize];
                        s.durable = s.durable.max(generation);
                    }
                    t.syncs_acked += 1;
                }
            }
        }
    })();
    // Ends with the daemon's death (EOF / reset) or after `stop` once drained.
    let _ = result;
    t
}

/// Reads every unit back through a fresh session and checks it against what was
/// acknowledged. Returns (verified units, written units holding their durable generation,
/// written units holding a newer one, mismatches).
fn verify(port: u16, units: &[UnitState]) -> (u64, u64, u64, Vec<String>) {
    let mut c = login(port, 0x77).expect("login after restart");
    let chunk_units = 64u32;
    let mut bad = Vec::new();
    let (mut verified, mut at_durable, mut newer) = (0, 0, 0);
    for first in (0..UNITS).step_by(chunk_units as usize) {
        let len = chunk_units as usize * UNIT_BYTES;
        let lba = first * SECTORS as u32;
        let blocks = (chunk_units * SECTORS as u32) as u16;
        let l = lba.to_be_bytes();
        let b = blocks.to_be_bytes();
        let cdb = [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0];
        let itt = c.send(&CommandSpec::read(LUN, &cdb, len as u32)).unwrap();
        let mut data = vec![0u8; len];
        loop {
            match c.next().unwrap() {
                Got::Data(i, off, d, st) if i == itt => {
                    data[off as usize..off as usize + d.len()].copy_from_slice(&d);
                    if let Some(st) = st {
                        assert_eq!(st, 0, "read status");
                        break;
                    }
                }
                Got::Status(i, st, _) if i == itt => {
                    assert_eq!(st, 0, "read status");
                    break;
                }
                _ => {}
            }
        }
        for k in 0..chunk_units {
            let unit = first + k;
            let bytes = &data[k as usize * UNIT_BYTES..(k as usize + 1) * UNIT_BYTES];
            let s = units[unit as usize];
            match classify(unit, bytes) {
                Err(e) => bad.push(e),
                Ok(g) if g < s.durable => bad.push(format!(
                    "unit {unit}: generation {g} but {} was acknowledged durable",
                    s.durable
                )),
                Ok(g) if g > s.sent => bad.push(format!(
                    "unit {unit}: generation {g} was never sent (last {})",
                    s.sent
                )),
                Ok(g) => {
                    verified += 1;
                    if s.sent == 0 {
                        // Never written: zeros, checked above.
                    } else if g == s.durable {
                        at_durable += 1;
                    } else {
                        newer += 1;
                    }
                }
            }
        }
    }
    (verified, at_durable, newer, bad)
}

fn start(dir: &Path, runtime: &str, bstype: &str) -> Daemon {
    let body = format!(
        "[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbstype = \"{bstype}\"\nbacking_store = \"DIR/crash.img\"\n\
         size = \"{}\"\n",
        u64::from(UNITS) * UNIT_BYTES as u64
    );
    Daemon::start(dir, runtime, &body)
}

fn crash_cycle(runtime: &str, bstype: &str) {
    let dir = tempdir();
    let mut d = start(dir.path(), runtime, bstype);
    let units = Arc::new(Mutex::new(vec![UnitState::default(); UNITS as usize]));
    let t0 = Instant::now();
    for cycle in 1..=CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_total = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..SESSIONS)
            .map(|id| {
                let (u, s, a, port) = (units.clone(), stop.clone(), acked_total.clone(), d.port);
                std::thread::spawn(move || writer(port, id, u, s, a))
            })
            .collect();
        let load = Instant::now();
        while load.elapsed() < MIN_LOAD
            || (acked_total.load(Ordering::Relaxed) < MIN_ACKED && load.elapsed() < MAX_LOAD)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let killed_at = load.elapsed();
        // SIGKILL mid-run: no shutdown path runs, no flush at exit.
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let text = d.join_log();
        let tallies: Vec<Tally> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        assert!(!text.contains("panicked"), "{text}");
        if bstype == "aio" {
            assert!(
                !text.contains("without O_DIRECT"),
                "aio must run with O_DIRECT here: {text}"
            );
        }
        let acked: u64 = tallies.iter().map(|t| t.writes_acked).sum();
        let fua: u64 = tallies.iter().map(|t| t.fua_acked).sum();
        let syncs: u64 = tallies.iter().map(|t| t.syncs_acked).sum();
        assert!(
            acked >= MIN_ACKED,
            "too little load before the kill: {acked} writes"
        );
        assert!(syncs > 0, "no SYNCHRONIZE CACHE completed");
        // Restart on the same file and port.
        let config = d.config.clone();
        let port = d.port;
        drop(d);
        d = Daemon::start_on(dir.path(), &config, port);
        let snapshot = units.lock().unwrap().clone();
        let durable_units = snapshot.iter().filter(|s| s.durable > 0).count();
        let written = snapshot.iter().filter(|s| s.sent > 0).count();
        let (verified, at_durable, newer, bad) = verify(d.port, &snapshot);
        println!(
            "crash[{runtime}/{bstype}{}] cycle {cycle}: {acked} writes acknowledged ({fua} FUA, \
             {syncs} SYNCHRONIZE CACHE), {durable_units} units with a durable generation; \
             after kill -9 at {:.1} s and restart: {verified}/{UNITS} units verified \
             (of {written} written: {at_durable} at the durable generation, {newer} newer), \
             mismatches={}",
            if bstype == "aio" {
                ", O_DIRECT"
            } else {
                ", buffered"
            },
            killed_at.as_secs_f64(),
            bad.len()
        );
        assert!(bad.is_empty(), "{:#?}", &bad[..bad.len().min(10)]);
        assert_eq!(verified, u64::from(UNITS));
    }
    let (code, text) = d.stop();
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(50), "{:?}", t0.elapsed());
}

#[test]
fn rdwr_mio() {
    crash_cycle("mio", "rdwr");
}

#[test]
fn aio_mio() {
    crash_cycle("mio", "aio");
}

#[test]
fn rdwr_threads() {
    crash_cycle("threads", "rdwr");
}

#[test]
fn aio_threads() {
    crash_cycle("threads", "aio");
}

#[test]
fn torn_and_mixed_units_are_detected() {
    // The checker itself: an image verifies, a sector from another generation or a
    // flipped byte does not, zeros are "never written".
    let a = unit_image(5, 3);
    assert_eq!(classify(5, &a), Ok(3));
    assert_eq!(classify(5, &vec![0u8; UNIT_BYTES]), Ok(0));
    assert!(classify(6, &a).is_err(), "another unit's image");
    let b = unit_image(5, 4);
    let mut mixed = a.clone();
    mixed[512 * 7..].copy_from_slice(&b[512 * 7..]);
    assert!(classify(5, &mixed).is_err(), "torn between generations");
    let mut flipped = a.clone();
    flipped[1000] ^= 1;
    assert!(classify(5, &flipped).is_err(), "corrupt byte");
    let mut half = a;
    half[2048..].fill(0);
    assert!(classify(5, &half).is_err(), "half written");
}
