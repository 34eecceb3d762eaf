//! Hostile initiators against the real daemon, on both runtimes (issue #10).
//!
//! Every case starts its own daemon, logs in a well-behaved initiator that does
//! write/read-verify I/O in the background, runs the attack (repeated for at least
//! [`MIN_ATTACK`] when one round is quick), and asserts:
//! - the exact outcome of the attack (the Reject reason, the SCSI status and sense, the
//!   login status, a close, or silence where RFC 7143 says to drop);
//! - that the good session completed I/O while the attack ran;
//! - that the daemon's resident memory (VmRSS) grew by less than the case's bound;
//! - that the daemon is still running and exits cleanly, without a panic, on SIGTERM.
//!
//! Each case prints one line, e.g.
//! `hostile[mio] unknown_opcode: Reject(0x05) x3 per round, 41 rounds; good session 512 I/Os during attack; RSS +0.4 MiB`;
//! run with `-- --nocapture` to see them.
//!
//! The initiator is iscsi-proto's test initiator over a real socket; malformed PDUs are
//! built with its wire reprs and then patched byte by byte.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;
use common::*;

use iscsi_proto::session::initiator::{CommandSpec, Initiator, find_key, write_text};
use iscsi_proto::wire::{
    Digests, LogoutReason, Pdu, Stage, Status, TextFlags, TextRequest, emit_pdu, pdu_len,
};

const IQN: &str = "iqn.2026-11.org.tgt-rs:hostile";
/// LUN 1 in the iSCSI LUN field (flat addressing).
const LUN: u64 = 1 << 48;
/// Attacks that finish quickly are repeated for at least this long, so that the good
/// session's I/O count during the attack means something.
const MIN_ATTACK: Duration = Duration::from_millis(1200);
/// Default RSS growth bound for a case.
const RSS_BOUND_MIB: f64 = 24.0;
/// The daemon's default login timeout ([`iscsi_target::driver::Limits::default`]).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How late a timeout may fire on a loaded machine (these tests share it with builds).
const SLACK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The initiator side.

/// What the target sent, summarised for assertions.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// Reject: reason, and the opcode of the rejected header.
    Reject {
        reason: u8,
        op: u8,
    },
    /// SCSI Response (or the status in a final Data-In): status and (key, ASC, ASCQ).
    Status {
        itt: u32,
        status: u8,
        sense: Option<(u8, u8, u8)>,
    },
    R2t {
        itt: u32,
        ttt: u32,
        offset: u32,
        len: u32,
    },
    /// Data-In; `status` when it carries the command's status.
    DataIn {
        itt: u32,
        offset: u32,
        data: Vec<u8>,
        status: Option<u8>,
    },
    NopIn {
        itt: u32,
        ttt: u32,
    },
    Text {
        itt: u32,
        ttt: u32,
        final_: bool,
        len: usize,
    },
    Login {
        class: u8,
        detail: u8,
    },
    Other(u8),
}

#[derive(Debug, Clone, PartialEq)]
enum Got {
    Pdu(Reply),
    /// EOF or reset.
    Closed,
    /// Nothing within the wait.
    Silent,
}

fn sense_of(data: &[u8]) -> Option<(u8, u8, u8)> {
    let len = u16::from_be_bytes([*data.first()?, *data.get(1)?]) as usize;
    let s = data.get(2..2 + len)?;
    match s.first()? & 0x7f {
        0x70 | 0x71 => Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?)),
        0x72 | 0x73 => Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?)),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct Opts {
    header_digest: bool,
    data_digest: bool,
    immediate_data: bool,
}

const PLAIN: Opts = Opts {
    header_digest: false,
    data_digest: false,
    immediate_data: true,
};

struct Client {
    sock: TcpStream,
    ini: Initiator,
    rx: Vec<u8>,
}

impl Client {
    fn raw(port: u16) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// A logged-in normal session to LUN 1 with its unit attention consumed. Every login
    /// uses a new ISID (`tag` and a process-wide counter): reusing one would reinstate
    /// the previous session, which is not what these cases test.
    fn login(port: u16, tag: u8, o: Opts) -> Client {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        Client::login_isid(port, [0x80, tag, n[0], n[1], n[2], n[3]], o)
    }

    /// [`Client::login`] with a given ISID (a second login with the same ISID and TSIH 0
    /// reinstates the first session).
    fn login_isid(port: u16, isid: [u8; 6], o: Opts) -> Client {
        let mut c = Client {
            sock: Client::raw(port),
            ini: Initiator::new(isid, 1),
            rx: Vec::new(),
        };
        let yn = |b: bool| if b { "Yes" } else { "No" };
        let crc = |b: bool| if b { "CRC32C" } else { "None" };
        let mut text = [0u8; 1024];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:hostile-initiator"),
                ("TargetName", IQN),
                ("SessionType", "Normal"),
                ("HeaderDigest", crc(o.header_digest)),
                ("DataDigest", crc(o.data_digest)),
                ("ImmediateData", yn(o.immediate_data)),
                ("InitialR2T", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
            ],
        )
        .unwrap();
        let mut pdu = vec![0u8; 2048];
        let len = c
            .ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .unwrap();
        c.send(&pdu[..len]).unwrap();
        // The Login Response carries the negotiated digests.
        let (hd, dd) = loop {
            let Some(buf) = c.next_raw(Duration::from_secs(20)) else {
                panic!("no login response");
            };
            let (pdu, _) = c.ini.receive(&buf).unwrap();
            if let Pdu::LoginResponse(r) = pdu {
                assert_eq!((r.status.class, r.status.detail), (0, 0), "login refused");
                break (
                    find_key(r.data, "HeaderDigest") == Some("CRC32C"),
                    find_key(r.data, "DataDigest") == Some("CRC32C"),
                );
            }
        };
        assert_eq!((hd, dd), (o.header_digest, o.data_digest), "digests");
        c.ini.set_digests(Digests {
            header: hd,
            data: dd,
        });
        // TEST UNIT READY consumes the POWER ON unit attention.
        let itt = c.command(&CommandSpec::read(LUN, &[0; 6], 0));
        c.status_of(itt);
        c
    }

    fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.sock.write_all(b)
    }

    fn command(&mut self, spec: &CommandSpec<'_>) -> u32 {
        let mut pdu = vec![0u8; spec.data.len() + 256];
        let (itt, len) = self.ini.command(&mut pdu, spec).unwrap();
        self.send(&pdu[..len]).unwrap();
        itt
    }

    /// The bytes of one PDU; `None` on close or when nothing came within `wait`.
    fn next_raw(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match self.fill(wait) {
            Some(n) => Some(self.rx.drain(..n).collect()),
            None => None,
        }
    }

    /// Reads until a whole PDU is buffered; its length, or `None` (closed / silent, see
    /// `self.closed`).
    fn fill(&mut self, wait: Duration) -> Option<usize> {
        let deadline = Instant::now() + wait;
        loop {
            if let Status::Complete(n) = pdu_len(&self.rx, self.ini.digests()) {
                if self.rx.len() >= n {
                    return Some(n);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// The next PDU, a close, or silence within `wait`.
    fn recv(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            if let Status::Complete(n) = pdu_len(&self.rx, self.ini.digests()) {
                if self.rx.len() >= n {
                    let buf: Vec<u8> = self.rx.drain(..n).collect();
                    return Got::Pdu(self.summarise(&buf));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Silent;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Silent;
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    fn summarise(&mut self, buf: &[u8]) -> Reply {
        let reason = buf[2];
        let flags = buf[1];
        match self.ini.receive(buf) {
            Ok((Pdu::Reject(r), _)) => Reply::Reject {
                reason,
                op: r.data.first().map_or(0xff, |b| b & 0x3f),
            },
            Ok((Pdu::ScsiResponse(r), _)) => Reply::Status {
                itt: r.itt,
                status: r.status,
                sense: sense_of(r.data),
            },
            Ok((Pdu::DataIn(d), _)) => Reply::DataIn {
                itt: d.itt,
                offset: d.buffer_offset,
                data: d.data.to_vec(),
                status: d
                    .flags
                    .contains(iscsi_proto::wire::DataInFlags::STATUS)
                    .then_some(d.status),
            },
            Ok((Pdu::R2t(r), _)) => Reply::R2t {
                itt: r.itt,
                ttt: r.ttt,
                offset: r.buffer_offset,
                len: r.desired_len,
            },
            Ok((Pdu::NopIn(n), _)) => Reply::NopIn {
                itt: n.itt,
                ttt: n.ttt,
            },
            Ok((Pdu::TextResponse(t), _)) => Reply::Text {
                itt: t.itt,
                ttt: t.ttt,
                final_: flags & 0x80 != 0,
                len: t.data.len(),
            },
            Ok((Pdu::LoginResponse(r), _)) => Reply::Login {
                class: r.status.class,
                detail: r.status.detail,
            },
            Ok((_, _)) => Reply::Other(buf[0] & 0x3f),
            Err(e) => panic!("unparsable PDU from the target: {e} {:02x?}", &buf[..48]),
        }
    }

    /// Waits for the status of `itt` (skipping Data-In, collected into the result).
    fn status_of(&mut self, itt: u32) -> (u8, Option<(u8, u8, u8)>, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            match self.recv(Duration::from_secs(20)) {
                Got::Pdu(Reply::DataIn {
                    itt: i,
                    offset,
                    data: d,
                    status,
                }) if i == itt => {
                    let end = offset as usize + d.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[offset as usize..end].copy_from_slice(&d);
                    if let Some(st) = status {
                        return (st, None, data);
                    }
                }
                Got::Pdu(Reply::Status {
                    itt: i,
                    status,
                    sense,
                }) if i == itt => return (status, sense, data),
                Got::Pdu(Reply::NopIn { ttt, .. }) if ttt != 0xffff_ffff => self.answer_ping(ttt),
                other => panic!("waiting for the status of {itt:#x}: {other:?}"),
            }
        }
    }

    fn answer_ping(&mut self, ttt: u32) {
        let mut pdu = vec![0u8; 128];
        let n = self.ini.nop_out(&mut pdu, 0xffff_ffff, ttt, &[]).unwrap();
        let _ = self.send(&pdu[..n]);
    }

    /// A NOP-Out ping is answered: the connection still serves.
    fn alive(&mut self) -> bool {
        let itt = self.ini.next_itt();
        let mut pdu = vec![0u8; 128];
        let n = self
            .ini
            .nop_out(&mut pdu, itt, 0xffff_ffff, b"ping")
            .unwrap();
        if self.send(&pdu[..n]).is_err() {
            return false;
        }
        loop {
            match self.recv(Duration::from_secs(15)) {
                Got::Pdu(Reply::NopIn { itt: i, .. }) if i == itt => return true,
                Got::Pdu(_) => continue,
                Got::Closed | Got::Silent => return false,
            }
        }
    }

    /// Reads until the connection closes; the PDUs seen before the close. Panics when it
    /// stays open for `wait`.
    fn expect_close(&mut self, wait: Duration) -> Vec<Reply> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Got::Closed => return seen,
                Got::Pdu(r) => seen.push(r),
                Got::Silent => panic!("still open after {wait:?}; saw {seen:?}"),
            }
        }
    }

    /// Nothing at all arrives within `wait`.
    fn expect_silence(&mut self, wait: Duration) {
        match self.recv(wait) {
            Got::Silent => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    fn expect(&mut self, want: Reply) {
        let got = self.recv(Duration::from_secs(15));
        assert_eq!(got, Got::Pdu(want));
    }

    fn data_out(&mut self, itt: u32, ttt: u32, data_sn: u32, off: u32, d: &[u8], f: bool) {
        let mut pdu = vec![0u8; d.len() + 256];
        let n = self
            .ini
            .data_out(&mut pdu, itt, ttt, LUN, data_sn, off, d, f)
            .unwrap();
        self.send(&pdu[..n]).unwrap();
    }

    /// A WRITE(10) of `blocks` without immediate data; returns (itt, ttt of the R2T).
    fn write_awaiting_r2t(&mut self, lba: u32, blocks: u16) -> (u32, u32, u32) {
        let cdb = write10(lba, blocks);
        let len = u32::from(blocks) * 512;
        let itt = self.command(&CommandSpec::write(LUN, &cdb, len, &[]));
        match self.recv(Duration::from_secs(15)) {
            Got::Pdu(Reply::R2t {
                itt: i,
                ttt,
                offset: 0,
                len: l,
            }) if i == itt => (itt, ttt, l),
            other => panic!("no R2T: {other:?}"),
        }
    }
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x2a, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

// ---------------------------------------------------------------------------------------
// The well-behaved initiator and the harness.

struct Good {
    stop: Arc<AtomicBool>,
    ios: Arc<AtomicU64>,
    thread: JoinHandle<Result<u64, String>>,
}

fn pattern(round: u64, lba: u32) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    for (i, chunk) in v.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&round.to_le_bytes());
        chunk[8..12].copy_from_slice(&lba.to_le_bytes());
        chunk[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
    v
}

/// Starts the well-behaved initiator: 4 KiB WRITE(10) with immediate data, READ(10) back
/// and compare, over and over, on the upper half of the LUN (attacks use the lower half).
fn start_good(port: u16) -> Good {
    let stop = Arc::new(AtomicBool::new(false));
    let ios = Arc::new(AtomicU64::new(0));
    let (s, n) = (stop.clone(), ios.clone());
    let thread = std::thread::spawn(move || {
        let mut c = Client::login(port, 0xee, PLAIN);
        let mut round = 0u64;
        while !s.load(Ordering::Relaxed) {
            let lba = 65536 + (round % 1024) as u32 * 8;
            let data = pattern(round, lba);
            let itt = c.command(&CommandSpec::write(LUN, &write10(lba, 8), 4096, &data));
            let (st, sense, _) = c.status_of(itt);
            if st != 0 {
                return Err(format!("write round {round}: status {st:#x} {sense:?}"));
            }
            let itt = c.command(&CommandSpec::read(LUN, &read10(lba, 8), 4096));
            let (st, sense, back) = c.status_of(itt);
            if st != 0 || back != data {
                return Err(format!(
                    "read round {round}: status {st:#x} {sense:?}, data ok {}",
                    back == data
                ));
            }
            round += 1;
            n.fetch_add(1, Ordering::Relaxed);
        }
        Ok(round)
    });
    Good { stop, ios, thread }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The case's daemon; `extra` goes before the target (e.g. a `[limits]` table).
fn start(dir: &std::path::Path, runtime: &str, extra: &str) -> Daemon {
    let body = format!(
        "{extra}[[target]]\ntid = 1\nname = \"{IQN}\"\ninitiators = [\"ALL\"]\n\
         [[target.lun]]\nlun = 1\nbacking_store = \"DIR/d.img\"\nsize = \"64M\"\n"
    );
    Daemon::start(dir, runtime, &body)
}

/// Runs one case: daemon, good session, the attack (repeated until `min` has passed),
/// checks, and the printed line.
fn run_case(
    rt: &str,
    name: &str,
    min: Duration,
    rss_bound_mib: f64,
    attack: impl FnMut(&Daemon) -> String,
) {
    run_case_with(rt, name, min, rss_bound_mib, "", attack);
}

/// [`run_case`] with `extra` configuration for the daemon (see [`start`]).
fn run_case_with(
    rt: &str,
    name: &str,
    min: Duration,
    rss_bound_mib: f64,
    extra: &str,
    mut attack: impl FnMut(&Daemon) -> String,
) {
    let dir = tempdir();
    let mut d = start(dir.path(), rt, extra);
    let pid = d.child.id();
    let good = start_good(d.port);
    let warm = Instant::now();
    while good.ios.load(Ordering::Relaxed) < 20 {
        assert!(
            !good.thread.is_finished(),
            "good session died while warming up"
        );
        assert!(
            warm.elapsed() < Duration::from_secs(20),
            "good session stalled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rss0 = rss_kib(pid);
    let ios0 = good.ios.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut rounds = 0u32;
    let mut outcome;
    loop {
        outcome = attack(&d);
        rounds += 1;
        if t0.elapsed() >= min {
            break;
        }
    }
    let took = t0.elapsed();
    let ios1 = good.ios.load(Ordering::Relaxed);
    let rss1 = rss_kib(pid);
    good.stop.store(true, Ordering::Relaxed);
    let total = good.thread.join().unwrap();
    let total = total.unwrap_or_else(|e| panic!("{rt} {name}: good session failed: {e}"));
    assert!(total >= ios1);
    assert!(
        ios1 > ios0,
        "{rt} {name}: the good session did no I/O during the attack"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "{rt} {name}: daemon died"
    );
    let grew = (rss1 as f64 - rss0 as f64) / 1024.0;
    println!(
        "hostile[{rt}] {name}: {outcome}; {rounds} round(s) in {:.1} s; good session {} I/Os \
         during attack; RSS {:+.1} MiB ({} -> {} MiB)",
        took.as_secs_f64(),
        ios1 - ios0,
        grew,
        rss0 / 1024,
        rss1 / 1024
    );
    assert!(
        grew < rss_bound_mib,
        "{rt} {name}: RSS grew {grew:.1} MiB (bound {rss_bound_mib} MiB)"
    );
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{rt} {name}: exit status; log: {log}");
    assert!(!log.contains("panicked"), "{rt} {name}: {log}");
}

/// A header-only PDU of `opcode` (with the immediate bit), ITT `itt`, the rest zero.
fn bare_header(opcode: u8, flags: u8, itt: u32) -> [u8; 48] {
    let mut h = [0u8; 48];
    h[0] = 0x40 | opcode;
    h[1] = flags;
    h[16..20].copy_from_slice(&itt.to_be_bytes());
    h
}

// ---------------------------------------------------------------------------------------
// The cases.

fn garbage_before_login(rt: &str) {
    run_case(rt, "garbage_before_login", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let http = b"GET / HTTP/1.1\r\nHost: target\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
        let tls = {
            let mut v = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            v.resize(517, 0x5a);
            v
        };
        let mut random = vec![0u8; 64 * 1024];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 32) as u8;
        }
        for (what, bytes) in [
            ("HTTP", &http[..]),
            ("TLS", &tls[..]),
            ("random", &random[..]),
        ] {
            let mut c = Client {
                sock: Client::raw(d.port),
                ini: Initiator::new([0; 6], 0),
                rx: Vec::new(),
            };
            let _ = c.send(bytes);
            // More garbage, so that whatever length the first "header" declares (up to
            // the 64 KiB login limit) is complete and gets judged.
            let _ = c.send(&[0xffu8; 80 * 1024]);
            let seen = c.expect_close(Duration::from_secs(15));
            assert!(
                seen.iter()
                    .all(|r| matches!(r, Reply::Login { class, .. } if *class != 0)),
                "{what}: {seen:?}"
            );
            assert!(seen.is_empty(), "{what}: closed without a reply: {seen:?}");
        }
        "close without a reply (HTTP, TLS ClientHello, 64 KiB random)".into()
    });
}

fn login_in_full_feature(rt: &str) {
    run_case(
        rt,
        "login_in_full_feature",
        MIN_ATTACK,
        RSS_BOUND_MIB,
        |d| {
            let mut c = Client::login(d.port, 1, PLAIN);
            let mut pdu = vec![0u8; 512];
            let mut text = [0u8; 128];
            let n = write_text(&mut text, &[("InitiatorName", "iqn.2026-11.x:y")]).unwrap();
            let len = c
                .ini
                .login(
                    &mut pdu,
                    Stage::LoginOperational,
                    Some(Stage::FullFeature),
                    &text[..n],
                )
                .unwrap();
            c.send(&pdu[..len]).unwrap();
            c.expect(Reply::Reject {
                reason: 0x04,
                op: 0x03,
            });
            assert!(c.alive());
            "Reject(0x04 protocol error), connection still serves".into()
        },
    );
}

fn unknown_opcode(rt: &str) {
    run_case(rt, "unknown_opcode", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 2, PLAIN);
        for op in [0x07u8, 0x0f, 0x1c, 0x1e] {
            c.send(&bare_header(op, 0x80, 0x77)).unwrap();
            c.expect(Reply::Reject { reason: 0x05, op });
        }
        assert!(c.alive());
        "Reject(0x05 command not supported) for opcodes 0x07 0x0f 0x1c 0x1e, still serves".into()
    });
}

fn reserved_values(rt: &str) {
    run_case(rt, "reserved_values", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 3, PLAIN);
        // SCSI Command with task attribute 5 (reserved).
        let sn = c.ini.cmd_sn();
        let mut pdu = vec![0u8; 256];
        let (_, n) = c
            .ini
            .command(&mut pdu, &CommandSpec::read(LUN, &read10(0, 1), 512))
            .unwrap();
        pdu[1] = (pdu[1] & !0x07) | 5;
        c.send(&pdu[..n]).unwrap();
        c.expect(Reply::Reject {
            reason: 0x09,
            op: 0x01,
        });
        // The rejected command never took its CmdSN.
        c.ini.set_cmd_sn(sn);
        // Logout with reason code 3 (reserved).
        let (_, n) = c.ini.logout(&mut pdu, LogoutReason::CloseSession).unwrap();
        pdu[1] = 0x80 | 3;
        c.send(&pdu[..n]).unwrap();
        c.expect(Reply::Reject {
            reason: 0x09,
            op: 0x06,
        });
        // SNACK type 4 (reserved).
        c.send(&bare_header(0x10, 0x84, 0x99)).unwrap();
        c.expect(Reply::Reject {
            reason: 0x09,
            op: 0x10,
        });
        assert!(c.alive());
        let itt = c.command(&CommandSpec::read(LUN, &read10(0, 1), 512));
        assert_eq!(c.status_of(itt).0, 0);
        "Reject(0x09 invalid PDU field) for ATTR=5, logout reason 3, SNACK type 4; still serves"
            .into()
    });
}

fn data_segment_too_long(rt: &str) {
    run_case(
        rt,
        "data_segment_too_long",
        MIN_ATTACK,
        RSS_BOUND_MIB,
        |d| {
            let mut c = Client::login(d.port, 4, PLAIN);
            // A NOP-Out declaring 300000 bytes (MaxRecvDataSegmentLength is 262144).
            let mut h = bare_header(0x00, 0x80, 0x55);
            h[5..8].copy_from_slice(&300_000u32.to_be_bytes()[1..]);
            h[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
            c.send(&h).unwrap();
            // Closed from the header alone: the data is never buffered.
            let seen = c.expect_close(Duration::from_secs(15));
            assert!(seen.is_empty(), "{seen:?}");
            "close from the header (300000 > MaxRecvDataSegmentLength 262144), nothing buffered"
                .into()
        },
    );
}

fn ahs_length_lies(rt: &str) {
    run_case(rt, "ahs_length_lies", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 5, PLAIN);
        // A SCSI Command whose TotalAHSLength is 1 word but whose AHS claims 100 bytes.
        let sn = c.ini.cmd_sn();
        let mut pdu = vec![0u8; 256];
        let (_, n) = c
            .ini
            .command(&mut pdu, &CommandSpec::read(LUN, &read10(0, 1), 512))
            .unwrap();
        assert_eq!(n, 48);
        let mut lie = pdu[..48].to_vec();
        lie[4] = 1;
        lie.extend_from_slice(&[0, 100, 0x01, 0]);
        c.send(&lie).unwrap();
        let first = c.recv(Duration::from_secs(15));
        c.ini.set_cmd_sn(sn);
        let outcome = match first {
            Got::Pdu(Reply::Reject {
                reason: 0x09,
                op: 0x01,
            }) => {
                assert!(c.alive());
                "Reject(0x09 invalid PDU field), still serves"
            }
            Got::Closed => "close",
            other => panic!("AHS lie: {other:?}"),
        };
        // TotalAHSLength 255 words (1020 bytes) of garbage on a SCSI Command: the length
        // is honoured for framing (the next PDU is found), the AHS is judged invalid.
        let mut c2 = Client::login(d.port, 6, PLAIN);
        let sn = c2.ini.cmd_sn();
        let (_, n) = c2
            .ini
            .command(&mut pdu, &CommandSpec::read(LUN, &read10(0, 1), 512))
            .unwrap();
        c2.ini.set_cmd_sn(sn);
        let mut v = pdu[..n].to_vec();
        v[4] = 255;
        v.extend(std::iter::repeat_n(0xa5u8, 1020));
        c2.send(&v).unwrap();
        let outcome2 = match c2.recv(Duration::from_secs(15)) {
            Got::Pdu(Reply::Reject {
                reason: 0x09,
                op: 0x01,
            }) => {
                assert!(c2.alive());
                "Reject(0x09), still serves"
            }
            Got::Closed => "close",
            other => panic!("AHS garbage: {other:?}"),
        };
        // The same on a NOP-Out: RFC 7143 defines AHS types only for SCSI Commands; the
        // target skips the AHS by its declared length and answers the ping (framing stays
        // in step, which is what matters).
        let mut h = bare_header(0x00, 0x80, 0x56);
        h[4] = 255;
        h[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        let mut v = h.to_vec();
        v.extend(std::iter::repeat_n(0xa5u8, 1020));
        c2.send(&v).unwrap();
        c2.expect(Reply::NopIn {
            itt: 0x56,
            ttt: 0xffff_ffff,
        });
        assert!(c2.alive());
        format!(
            "AHS entry longer than TotalAHSLength: {outcome}; 1020 bytes of garbage AHS on a \
             command: {outcome2}; on a NOP-Out: skipped by length, ping answered"
        )
    });
}

fn header_digest_mismatch(rt: &str) {
    let o = Opts {
        header_digest: true,
        ..PLAIN
    };
    run_case(
        rt,
        "header_digest_mismatch",
        MIN_ATTACK,
        RSS_BOUND_MIB,
        |d| {
            let mut c = Client::login(d.port, 7, o);
            assert!(c.alive(), "good digests work");
            let mut pdu = vec![0u8; 128];
            let n = c.ini.nop_out(&mut pdu, 0x42, 0xffff_ffff, &[]).unwrap();
            assert_eq!(n, 52);
            pdu[50] ^= 0xff;
            c.send(&pdu[..n]).unwrap();
            let seen = c.expect_close(Duration::from_secs(15));
            assert!(seen.is_empty(), "{seen:?}");
            "close without a reply (RFC 7143 7.8: header digest error)".into()
        },
    );
}

fn data_digest_mismatch(rt: &str) {
    let o = Opts {
        data_digest: true,
        ..PLAIN
    };
    run_case(rt, "data_digest_mismatch", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 8, o);
        // Immediate data with a bad digest.
        let data = vec![0x3cu8; 4096];
        let mut pdu = vec![0u8; 8192];
        let (itt, n) = c
            .ini
            .command(
                &mut pdu,
                &CommandSpec::write(LUN, &write10(8, 8), 4096, &data),
            )
            .unwrap();
        pdu[n - 1] ^= 0xff;
        c.send(&pdu[..n]).unwrap();
        let mut got = vec![
            c.recv(Duration::from_secs(15)),
            c.recv(Duration::from_secs(15)),
        ];
        got.sort_by_key(|g| format!("{g:?}"));
        assert_eq!(
            got,
            vec![
                Got::Pdu(Reply::Reject {
                    reason: 0x02,
                    op: 0x01
                }),
                Got::Pdu(Reply::Status {
                    itt,
                    status: 0x02,
                    sense: Some((0x0b, 0x47, 0x05))
                }),
            ]
        );
        // Solicited Data-Out with a bad digest, on the final PDU.
        let (itt, ttt, len) = c.write_awaiting_r2t(16, 8);
        let mut pdu = vec![0u8; 8192];
        let n = c
            .ini
            .data_out(&mut pdu, itt, ttt, LUN, 0, 0, &data[..len as usize], true)
            .unwrap();
        pdu[n - 2] ^= 0x01;
        c.send(&pdu[..n]).unwrap();
        let mut got = vec![
            c.recv(Duration::from_secs(15)),
            c.recv(Duration::from_secs(15)),
        ];
        got.sort_by_key(|g| format!("{g:?}"));
        assert_eq!(
            got,
            vec![
                Got::Pdu(Reply::Reject {
                    reason: 0x02,
                    op: 0x05
                }),
                Got::Pdu(Reply::Status {
                    itt,
                    status: 0x02,
                    sense: Some((0x0b, 0x47, 0x05))
                }),
            ]
        );
        assert!(c.alive());
        "Reject(0x02 data digest) + CHECK CONDITION ABORTED COMMAND 47/05 (immediate data and \
         Data-Out), still serves"
            .into()
    });
}

fn cmdsn_out_of_window(rt: &str) {
    run_case(rt, "cmdsn_out_of_window", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 9, PLAIN);
        let sn = c.ini.cmd_sn();
        for far in [
            sn.wrapping_add(1_000_000),
            sn.wrapping_add(0x7fff_0000),
            sn.wrapping_sub(5),
        ] {
            c.ini.set_cmd_sn(far);
            c.command(&CommandSpec::read(LUN, &read10(0, 1), 512));
            c.expect_silence(Duration::from_millis(300));
        }
        c.ini.set_cmd_sn(sn);
        let itt = c.command(&CommandSpec::read(LUN, &read10(0, 1), 512));
        let (st, _, data) = c.status_of(itt);
        assert_eq!((st, data.len()), (0, 512));
        "dropped silently (CmdSN +1e6, +0x7fff0000, -5), the in-window command after it: GOOD"
            .into()
    });
}

fn data_out_unknown_itt(rt: &str) {
    run_case(rt, "data_out_unknown_itt", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 10, PLAIN);
        c.data_out(0xdead, 0x1234, 0, 0, &[0u8; 512], true);
        c.expect(Reply::Reject {
            reason: 0x09,
            op: 0x05,
        });
        c.data_out(0xdead, 0xffff_ffff, 0, 0, &[0u8; 512], true);
        c.expect(Reply::Reject {
            reason: 0x09,
            op: 0x05,
        });
        assert!(c.alive());
        "Reject(0x09 invalid PDU field), still serves".into()
    });
}

fn data_out_beyond_expected(rt: &str) {
    let o = Opts {
        immediate_data: false,
        ..PLAIN
    };
    run_case(
        rt,
        "data_out_beyond_expected",
        MIN_ATTACK,
        RSS_BOUND_MIB,
        |d| {
            let mut c = Client::login(d.port, 11, o);
            let (itt, ttt, len) = c.write_awaiting_r2t(24, 8);
            assert_eq!(len, 4096);
            // 8 KiB against an R2T (and an expected length) of 4 KiB.
            c.data_out(itt, ttt, 0, 0, &[0x11u8; 8192], true);
            let mut got = vec![
                c.recv(Duration::from_secs(15)),
                c.recv(Duration::from_secs(15)),
            ];
            got.sort_by_key(|g| format!("{g:?}"));
            assert_eq!(
                got,
                vec![
                    Got::Pdu(Reply::Reject {
                        reason: 0x04,
                        op: 0x05
                    }),
                    Got::Pdu(Reply::Status {
                        itt,
                        status: 0x02,
                        sense: Some((0x0b, 0x4b, 0x00))
                    }),
                ]
            );
            assert!(c.alive());
            "Reject(0x04 protocol error) + CHECK CONDITION ABORTED COMMAND 4b/00 (data phase \
         error), still serves"
                .into()
        },
    );
}

fn data_sn_gap(rt: &str) {
    let o = Opts {
        immediate_data: false,
        ..PLAIN
    };
    run_case(rt, "data_sn_gap", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 12, o);
        let (itt, ttt, len) = c.write_awaiting_r2t(32, 16);
        assert_eq!(len, 8192);
        c.data_out(itt, ttt, 0, 0, &[0x22u8; 4096], false);
        // DataSN 2 instead of 1.
        c.data_out(itt, ttt, 2, 4096, &[0x22u8; 4096], true);
        let (st, sense, _) = c.status_of(itt);
        assert_eq!((st, sense), (0x02, Some((0x0b, 0x47, 0x05))));
        assert!(c.alive());
        "CHECK CONDITION ABORTED COMMAND 47/05 after the final Data-Out, still serves".into()
    });
}

fn fake_ttt_flood(rt: &str) {
    let o = Opts {
        immediate_data: false,
        ..PLAIN
    };
    run_case(rt, "fake_ttt_flood", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        let mut c = Client::login(d.port, 13, o);
        let (itt, ttt, len) = c.write_awaiting_r2t(40, 8);
        const FLOOD: u32 = 2000;
        let mut batch = Vec::new();
        for i in 0..FLOOD {
            let fake = ttt ^ (0x5555_0000 | (i + 1));
            let mut pdu = vec![0u8; 1024];
            let n = c
                .ini
                .data_out(&mut pdu, itt, fake, LUN, 0, 0, &[0u8; 512], false)
                .unwrap();
            batch.extend_from_slice(&pdu[..n]);
        }
        // Send from another thread so that the Rejects can be read meanwhile.
        let mut w = c.sock.try_clone().unwrap();
        let sender = std::thread::spawn(move || w.write_all(&batch));
        let mut rejects = 0;
        while rejects < FLOOD {
            match c.recv(Duration::from_secs(20)) {
                Got::Pdu(Reply::Reject {
                    reason: 0x09,
                    op: 0x05,
                }) => rejects += 1,
                other => panic!("after {rejects} rejects: {other:?}"),
            }
        }
        sender.join().unwrap().unwrap();
        // The real transfer still completes.
        c.data_out(itt, ttt, 0, 0, &vec![0x33u8; len as usize], true);
        assert_eq!(c.status_of(itt).0, 0);
        format!("Reject(0x09) x{FLOOD}, the real R2T's transfer then completes GOOD")
    });
}

fn text_loops(rt: &str) {
    run_case(
        rt,
        "text_negotiation_loops",
        MIN_ATTACK,
        RSS_BOUND_MIB,
        |d| {
            // Endless continuation (C bit) of one Text Request: closed at max_text_bytes.
            let mut c = Client::login(d.port, 14, PLAIN);
            let chunk = vec![b'k'; 8192];
            let itt = 0x700;
            let mut ttt = 0xffff_ffff;
            let mut sent = 0usize;
            let closed_after = loop {
                let sn = c.ini.cmd_sn();
                let pdu = Pdu::TextRequest(TextRequest {
                    immediate: true,
                    flags: TextFlags::CONTINUE,
                    lun: 0,
                    itt,
                    ttt,
                    cmd_sn: sn,
                    exp_stat_sn: c.ini.exp_stat_sn(),
                    data: &chunk,
                });
                let mut buf = vec![0u8; 9000];
                let n = emit_pdu(&pdu, c.ini.digests(), &mut buf).unwrap();
                if c.send(&buf[..n]).is_err() {
                    break sent;
                }
                sent += chunk.len();
                assert!(sent <= 128 * 1024, "still open after {sent} bytes");
                match c.recv(Duration::from_secs(15)) {
                    Got::Pdu(Reply::Text {
                        itt: i,
                        ttt: t,
                        final_: false,
                        len: 0,
                    }) if i == itt => ttt = t,
                    Got::Closed => break sent,
                    other => panic!("text continuation: {other:?}"),
                }
            };
            assert!(
                closed_after > 64 * 1024 && closed_after <= 72 * 1024,
                "{closed_after}"
            );
            // Many complete Text Requests: each is answered, nothing accumulates.
            let mut c = Client::login(d.port, 15, PLAIN);
            let mut text = [0u8; 64];
            let n = write_text(&mut text, &[("SendTargets", "All")]).unwrap();
            for i in 0..300u32 {
                let mut buf = vec![0u8; 256];
                let len = c
                    .ini
                    .text(&mut buf, 0x800 + i, 0xffff_ffff, &text[..n])
                    .unwrap();
                c.send(&buf[..len]).unwrap();
                match c.recv(Duration::from_secs(15)) {
                    Got::Pdu(Reply::Text {
                        itt, final_: true, ..
                    }) if itt == 0x800 + i => {}
                    other => panic!("text {i}: {other:?}"),
                }
            }
            // One request with a huge key list (60 KiB of unknown keys).
            let mut keys = Vec::new();
            let mut k = 0;
            while keys.len() < 60 * 1024 {
                keys.extend_from_slice(format!("X-vendor-{k}=v\0").as_bytes());
                k += 1;
            }
            let mut buf = vec![0u8; keys.len() + 256];
            let len = c.ini.text(&mut buf, 0x900, 0xffff_ffff, &keys).unwrap();
            c.send(&buf[..len]).unwrap();
            let huge = match c.recv(Duration::from_secs(15)) {
                Got::Pdu(Reply::Reject { reason, .. }) => format!("Reject({reason:#04x})"),
                Got::Pdu(Reply::Text { len, final_, .. }) => {
                    format!("Text Response ({len} bytes, F={final_})")
                }
                Got::Closed => "close".into(),
                other => panic!("huge key list: {other:?}"),
            };
            assert!(c.alive() || huge == "close");
            format!(
                "C-bit loop closed after {} KiB (max_text_bytes 64 KiB); 300 SendTargets answered; \
             {k} unknown keys in one PDU: {huge}",
                closed_after / 1024
            )
        },
    );
}

/// Raises this process's open-file limit (2000 sockets are held at once).
fn raise_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
    }
}

/// What a connection the target should leave silent showed within `wait` (at least 1 ms).
enum Quiet {
    Silent,
    Closed,
    Data,
}

fn quiet_for(s: &mut TcpStream, wait: Duration) -> Quiet {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Quiet::Silent
        }
        Ok(0) | Err(_) => Quiet::Closed,
        Ok(_) => Quiet::Data,
    }
}

fn half_open(rt: &str) {
    raise_nofile(8192);
    // A longer login timeout than the default 15 s: the held connections must still be open
    // when they are counted, and 2,000 connects while the other cases run in parallel have
    // taken more than 15 s on the 2-core CI machine.
    const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
    let limits = format!(
        "[limits]\nlogin_timeout_secs = {}\n",
        LOGIN_TIMEOUT.as_secs()
    );
    run_case_with(
        rt,
        "half_open_connections",
        Duration::ZERO,
        48.0,
        &limits,
        |d| {
            let pid = d.child.id();
            let fds0 = fd_count(pid);
            const N: usize = 2000;
            let t0 = Instant::now();
            let mut socks = Vec::with_capacity(N);
            for _ in 0..N {
                socks.push(TcpStream::connect(("127.0.0.1", d.port)).unwrap());
            }
            // Those beyond max_connections_per_initiator (64) are closed at once. Keeps the
            // ones still open, counting the others.
            let mut refused = 0;
            let mut sift = |socks: Vec<TcpStream>| -> Vec<TcpStream> {
                let mut open = Vec::new();
                for mut s in socks {
                    match quiet_for(&mut s, Duration::from_millis(1)) {
                        Quiet::Silent => open.push(s),
                        Quiet::Closed => refused += 1,
                        Quiet::Data => panic!("the target sent something to a silent connection"),
                    }
                }
                open
            };
            let mut still = sift(socks);
            // Stragglers not yet refused when polled (the accept backlog drains more slowly
            // on a loaded machine): look again until 63 remain, for up to 10 s.
            let settle = Instant::now() + Duration::from_secs(10);
            loop {
                std::thread::sleep(Duration::from_millis(250));
                still = sift(still);
                if still.len() <= 63 || Instant::now() > settle {
                    break;
                }
            }
            let held = still.len();
            // The good session's connection counts against the same address.
            assert_eq!(
                held, 63,
                "held open (64 per initiator, one is the good session)"
            );
            assert_eq!(refused, N - held);
            let fds_held = fd_count(pid);
            // One socket per connection in the reactor; the thread runtime keeps the socket
            // and two clones (reader thread, writer).
            let per_conn = if rt == "threads" { 3 } else { 1 };
            assert!(
                fds_held <= fds0 + per_conn * held + 8,
                "daemon fds {fds0} -> {fds_held} with {held} held"
            );
            // The held ones time out at the login timeout.
            let deadline = Instant::now() + LOGIN_TIMEOUT + SLACK;
            let mut first_close = None;
            for mut s in still {
                let left = deadline.saturating_duration_since(Instant::now());
                match quiet_for(&mut s, left) {
                    Quiet::Silent => panic!("a half-open connection outlived the login timeout"),
                    Quiet::Closed => {
                        first_close.get_or_insert(t0.elapsed());
                    }
                    Quiet::Data => panic!("unexpected data"),
                }
            }
            let took = t0.elapsed();
            // Closed by the login timer, not earlier.
            let first_close = first_close.unwrap_or(took);
            assert!(
                first_close >= LOGIN_TIMEOUT - Duration::from_secs(1),
                "closed after {first_close:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
            let fds1 = fd_count(pid);
            assert!(fds1 <= fds0 + 2, "daemon fds {fds0} -> {fds1}");
            format!(
                "{N} silent connects: {refused} closed at once (max_connections_per_initiator 64), \
             {held} held then closed by the login timeout after {:.1} s; daemon fds {fds0} -> \
             {fds_held} -> {fds1}",
                took.as_secs_f64()
            )
        },
    );
}

fn slowloris(rt: &str) {
    run_case(rt, "slowloris", Duration::ZERO, RSS_BOUND_MIB, |d| {
        let t0 = Instant::now();
        // Ten connections send half a Login Request header and stall; one dribbles a
        // byte a second (the login timer covers the whole login, so that does not help).
        let mut stalled: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut s = Client::raw(d.port);
                let mut h = [0u8; 48];
                h[0] = 0x43;
                h[1] = 0x87;
                s.write_all(&h[..24]).unwrap();
                s
            })
            .collect();
        let mut dribble = Client::raw(d.port);
        dribble
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut h = [0u8; 48];
        h[0] = 0x43;
        h[1] = 0x87;
        h[5..8].copy_from_slice(&[0, 0x10, 0]);
        let mut dribble_closed = None;
        let mut i = 0;
        while dribble_closed.is_none() && t0.elapsed() < LOGIN_TIMEOUT + SLACK {
            let byte = h.get(i).copied().unwrap_or(b'a');
            if dribble.write_all(&[byte]).is_err() {
                dribble_closed = Some(t0.elapsed());
                break;
            }
            i += 1;
            let mut b = [0u8; 64];
            match dribble.read(&mut b) {
                Ok(0) => dribble_closed = Some(t0.elapsed()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => dribble_closed = Some(t0.elapsed()),
                Ok(_) => panic!("unexpected reply to a partial PDU"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let dribble_at = dribble_closed.expect("dribbling connection never closed");
        let mut last = Duration::ZERO;
        for s in stalled.iter_mut() {
            let left = (t0 + LOGIN_TIMEOUT + SLACK).saturating_duration_since(Instant::now());
            // Silence past the deadline shows as a close at or after it: the bound below fails.
            match quiet_for(s, left) {
                Quiet::Silent | Quiet::Closed => last = last.max(t0.elapsed()),
                Quiet::Data => panic!("unexpected reply"),
            }
        }
        for at in [dribble_at, last] {
            assert!(
                at >= LOGIN_TIMEOUT - Duration::from_millis(500) && at <= LOGIN_TIMEOUT + SLACK,
                "closed at {at:?}"
            );
        }
        format!(
            "10 half-header stalls closed by the login timeout at {:.1} s; a byte-a-second \
             dribbler ({i} bytes) closed at {:.1} s",
            last.as_secs_f64(),
            dribble_at.as_secs_f64()
        )
    });
}

fn disconnect_mid_transfer(rt: &str) {
    let o = Opts {
        immediate_data: false,
        ..PLAIN
    };
    run_case(rt, "abrupt_disconnects", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        // Mid Data-Out: a 1 MiB WRITE, half of the first burst, gone.
        let mut c = Client::login(d.port, 16, o);
        let (itt, ttt, len) = c.write_awaiting_r2t(0, 2048);
        c.data_out(itt, ttt, 0, 0, &vec![0x44u8; len as usize / 2], false);
        drop(c);
        // Mid Data-In: an 8 MiB READ, a few bytes of it read, gone.
        let mut c = Client::login(d.port, 17, o);
        c.command(&CommandSpec::read(LUN, &read10(0, 16384), 8 << 20));
        let mut b = [0u8; 4096];
        c.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(c.sock.read(&mut b).unwrap() > 0);
        drop(c);
        // Only the good session remains, soon.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = d
                .json(&["session", "show", "--json"])
                .as_array()
                .unwrap()
                .len();
            if n == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{n} sessions linger");
            std::thread::sleep(Duration::from_millis(20));
        }
        "sessions cleaned up after cuts mid Data-Out (1 MiB WRITE) and mid Data-In (8 MiB READ)"
            .into()
    });
}

fn reinstatement_storm(rt: &str) {
    let o = Opts {
        immediate_data: false,
        ..PLAIN
    };
    run_case(rt, "reinstatement_storm", MIN_ATTACK, RSS_BOUND_MIB, |d| {
        // The same initiator port logs in again while its old session has a WRITE waiting
        // for data; the new session's first WRITE uses the same ITT (a restarted initiator
        // restarts its tags).
        let isid = [0x80, 0x99, 0, 0, 0, 1];
        let mut old = Client::login_isid(d.port, isid, o);
        let (old_itt, _, _) = old.write_awaiting_r2t(48, 8);
        let mut new = Client::login_isid(d.port, isid, o);
        let (itt, ttt, len) = new.write_awaiting_r2t(56, 8);
        assert_eq!(itt, old_itt);
        let seen = old.expect_close(Duration::from_secs(15));
        assert!(
            seen.is_empty(),
            "the reinstated session gets nothing more: {seen:?}"
        );
        new.data_out(itt, ttt, 0, 0, &vec![0x66u8; len as usize], true);
        assert_eq!(new.status_of(itt).0, 0);
        assert!(new.alive());
        "old session closed, its pending WRITE aborted; the new session's WRITE with the same \
         ITT completes GOOD"
            .into()
    });
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod mio {
            $(#[test] fn $case() { super::$case("mio") })*
        }
        mod threads {
            $(#[test] fn $case() { super::$case("threads") })*
        }
    };
}

both!(
    garbage_before_login,
    login_in_full_feature,
    unknown_opcode,
    reserved_values,
    data_segment_too_long,
    ahs_length_lies,
    header_digest_mismatch,
    data_digest_mismatch,
    cmdsn_out_of_window,
    data_out_unknown_itt,
    data_out_beyond_expected,
    data_sn_gap,
    fake_ttt_flood,
    text_loops,
    half_open,
    slowloris,
    disconnect_mid_transfer,
    reinstatement_storm,
);
