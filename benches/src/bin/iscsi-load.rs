//! `iscsi-load`: a small iSCSI load generator over real sockets, built on iscsi-proto's test
//! initiator. It drives any iSCSI target (this one or tgt) with random or sequential reads,
//! writes or a mix, at a given queue depth, number of sessions and block size, and prints one
//! line of results:
//!
//! ```text
//! ops=N bytes=N secs=F iops=F mbps=F errors=N
//! ```
//!
//! ```text
//! iscsi-load --portal 127.0.0.1:3260 --target IQN [--lun 1] [--bs 4096] [--qd 32]
//!            [--sessions 1] [--secs 5] [--read-pct 100] [--seq] [--idle]
//!            [--initial-r2t no] [--first-burst 262144]
//! ```
//!
//! With `--idle` each session logs in, clears its unit attentions, reads the capacity and
//! then holds the connection for `--secs` without commands (answering the target's NOP-In
//! pings): a memory benchmark holds many idle sessions this way. It prints
//! `logged-in sessions=N` once every session is in full feature phase.
//!
//! At login it offers what Linux's open-iscsi offers by default (InitialR2T=No,
//! ImmediateData=Yes, FirstBurstLength 262144, MaxBurstLength 16776192,
//! MaxRecvDataSegmentLength 262144); `--initial-r2t yes` and `--first-burst BYTES` change the
//! offer (`--initial-r2t yes --first-burst 65536` is the RFC 7143 default). The target's
//! answers decide: writes carry immediate data and, where InitialR2T=No was agreed,
//! unsolicited Data-Out up to the negotiated FirstBurstLength, and answer R2Ts with Data-Out
//! PDUs sized by the target's MaxRecvDataSegmentLength.

use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use iscsi_proto::session::initiator::{CommandSpec, Initiator, find_key, write_text};
use iscsi_proto::wire::{DataInFlags, Digests, Pdu, RESERVED_TAG, Stage, Status, pdu_len};

/// Command-line options.
#[derive(Clone, Debug)]
struct Opts {
    portal: String,
    target: String,
    lun: u64,
    bs: u32,
    qd: usize,
    sessions: usize,
    secs: f64,
    read_pct: u32,
    seq: bool,
    idle: bool,
    /// InitialR2T offered at login.
    initial_r2t: bool,
    /// FirstBurstLength offered at login.
    first_burst: u32,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        portal: String::new(),
        target: String::new(),
        lun: 1,
        bs: 4096,
        qd: 1,
        sessions: 1,
        secs: 5.0,
        read_pct: 100,
        seq: false,
        idle: false,
        initial_r2t: false,
        first_burst: 262_144,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seq" || a == "--idle" {
            o.seq |= a == "--seq";
            o.idle |= a == "--idle";
            continue;
        }
        let v = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--portal" => o.portal = v,
            "--target" => o.target = v,
            "--lun" => o.lun = v.parse()?,
            "--bs" => o.bs = v.parse()?,
            "--qd" => o.qd = v.parse()?,
            "--sessions" => o.sessions = v.parse()?,
            "--secs" => o.secs = v.parse()?,
            "--read-pct" => o.read_pct = v.parse()?,
            "--initial-r2t" => {
                o.initial_r2t = match v.as_str() {
                    "yes" | "Yes" => true,
                    "no" | "No" => false,
                    _ => bail!("--initial-r2t takes yes or no"),
                }
            }
            "--first-burst" => o.first_burst = v.parse()?,
            _ => bail!("unknown option {a}"),
        }
    }
    if o.portal.is_empty() || o.target.is_empty() {
        bail!(
            "usage: iscsi-load --portal HOST:PORT --target IQN [--lun N] [--bs BYTES] [--qd N] \
             [--sessions N] [--secs S] [--read-pct P] [--seq] [--idle] [--initial-r2t yes|no] \
             [--first-burst BYTES]"
        );
    }
    if o.qd == 0 || o.sessions == 0 || o.bs == 0 || o.read_pct > 100 {
        bail!("--qd, --sessions and --bs must be > 0, --read-pct <= 100");
    }
    if !(512..=16_777_215).contains(&o.first_burst) {
        bail!("--first-burst must be 512..=16777215 (RFC 7143 13.14)");
    }
    Ok(o)
}

/// xorshift64*: cheap, reproducible randomness for offsets and the read/write mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One outstanding command.
struct Task {
    write: bool,
    len: u32,
}

/// What a received PDU means to the session loop.
enum Event {
    Done {
        itt: u32,
        good: bool,
    },
    R2t {
        itt: u32,
        ttt: u32,
        offset: u32,
        len: u32,
    },
    Ping {
        ttt: u32,
    },
    Other,
}

struct Session {
    sock: TcpStream,
    ini: Initiator,
    lun_field: u64,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    tx: Tx,
    /// Target's MaxRecvDataSegmentLength: the largest Data-Out / immediate data segment.
    target_mrdsl: u32,
    first_burst: u32,
    immediate_data: bool,
    /// InitialR2T as agreed: when false, writes may send one unsolicited burst of Data-Out.
    initial_r2t: bool,
    block_len: u32,
    blocks: u64,
}

impl Session {
    fn login(o: &Opts, index: usize) -> Result<Session> {
        let sock =
            TcpStream::connect(&o.portal).with_context(|| format!("connect {}", o.portal))?;
        sock.set_nodelay(true)?;
        let isid = [0x80, 0x12, 0x34, 0x56, (index >> 8) as u8, index as u8];
        let mut s = Session {
            sock,
            ini: Initiator::new(isid, 1),
            lun_field: (o.lun & 0xff) << 48,
            rx: vec![0; 4 << 20],
            rx_start: 0,
            rx_end: 0,
            tx: Tx::default(),
            target_mrdsl: 8192,
            first_burst: 65536,
            immediate_data: false,
            initial_r2t: true,
            block_len: 512,
            blocks: 0,
        };
        let name = format!("iqn.2026-11.org.tgt-rs:load{index}");
        let first_burst = o.first_burst.to_string();
        let mut text = [0u8; 1024];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", &name),
                ("TargetName", &o.target),
                ("SessionType", "Normal"),
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("ImmediateData", "Yes"),
                ("InitialR2T", if o.initial_r2t { "Yes" } else { "No" }),
                ("MaxRecvDataSegmentLength", "262144"),
                ("FirstBurstLength", &first_burst),
                ("MaxBurstLength", "16776192"),
                ("MaxOutstandingR2T", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("MaxConnections", "1"),
            ],
        )
        .context("login text")?;
        let mut pdu = vec![0u8; 2048];
        let len = s
            .ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .map_err(|e| anyhow::anyhow!("emit login: {e}"))?;
        s.sock.write_all(&pdu[..len])?;
        let n = s.fill_one()?;
        let buf = s.rx[s.rx_start..s.rx_start + n].to_vec();
        s.rx_start += n;
        let (resp, _) = s
            .ini
            .receive(&buf)
            .map_err(|e| anyhow::anyhow!("parse login response: {e}"))?;
        let Pdu::LoginResponse(r) = resp else {
            bail!("expected a Login Response");
        };
        if r.status.class != 0 {
            bail!("login failed: {:?}", r.status);
        }
        if r.nsg != Some(Stage::FullFeature) {
            bail!("target did not move to full feature phase in one step");
        }
        if let Some(v) = find_key(r.data, "MaxRecvDataSegmentLength") {
            s.target_mrdsl = v.parse().unwrap_or(8192);
        }
        if let Some(v) = find_key(r.data, "FirstBurstLength") {
            s.first_burst = v.parse().unwrap_or(65536);
        }
        s.immediate_data = find_key(r.data, "ImmediateData") == Some("Yes");
        // A target that does not answer keeps the RFC default, Yes.
        s.initial_r2t = find_key(r.data, "InitialR2T") != Some("No");
        // Clear unit attentions (power on / reset), then learn the geometry.
        for _ in 0..4 {
            if s.simple(&[0; 6], 0)?.0 {
                break;
            }
        }
        let (good, data) = s.simple(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8)?;
        if !good || data.len() < 8 {
            bail!("READ CAPACITY failed");
        }
        let last = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        s.block_len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        s.blocks = u64::from(last) + 1;
        if s.block_len == 0 {
            bail!("block length 0");
        }
        Ok(s)
    }

    /// Queues Data-Out PDUs carrying bytes `from..to` of task `itt`'s payload, each at most
    /// the target's MaxRecvDataSegmentLength, DataSN from 0 and the F bit on the last: one
    /// sequence, answering the R2T with `ttt` or (`ttt` reserved) the unsolicited burst.
    fn data_out(&mut self, pdu: &mut [u8], itt: u32, ttt: u32, from: u32, to: u32) -> Result<()> {
        let mut off = from;
        let mut data_sn = 0;
        while off < to {
            let chunk = (to - off).min(self.target_mrdsl);
            let n = self
                .ini
                .data_out_header(
                    pdu,
                    itt,
                    ttt,
                    self.lun_field,
                    data_sn,
                    off,
                    chunk as usize,
                    off + chunk == to,
                )
                .map_err(|e| anyhow::anyhow!("emit data-out: {e}"))?;
            self.tx
                .push(&pdu[..n], off as usize..(off + chunk) as usize);
            off += chunk;
            data_sn += 1;
        }
        Ok(())
    }

    /// Reads until one complete PDU sits at `rx_start`; returns its length.
    fn fill_one(&mut self) -> Result<usize> {
        loop {
            if let Status::Complete(n) =
                pdu_len(&self.rx[self.rx_start..self.rx_end], Digests::NONE)
            {
                if self.rx_end - self.rx_start >= n {
                    return Ok(n);
                }
                if n > self.rx.len() {
                    bail!("PDU of {n} bytes exceeds the receive buffer");
                }
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> Result<()> {
        if self.rx_start > 0 && (self.rx_end == self.rx.len() || self.rx_start == self.rx_end) {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        let n = self.sock.read(&mut self.rx[self.rx_end..])?;
        if n == 0 {
            bail!("target closed the connection");
        }
        self.rx_end += n;
        Ok(())
    }

    /// One synchronous non-data or read command; returns (good status, data).
    fn simple(&mut self, cdb: &[u8], len: u32) -> Result<(bool, Vec<u8>)> {
        let mut pdu = [0u8; 128];
        let (itt, n) = self
            .ini
            .command(&mut pdu, &CommandSpec::read(self.lun_field, cdb, len))
            .map_err(|e| anyhow::anyhow!("emit command: {e}"))?;
        self.sock.write_all(&pdu[..n])?;
        let mut data = Vec::new();
        loop {
            let n = self.fill_one()?;
            let buf = self.rx[self.rx_start..self.rx_start + n].to_vec();
            self.rx_start += n;
            let (p, _) = self
                .ini
                .receive(&buf)
                .map_err(|e| anyhow::anyhow!("parse: {e}"))?;
            match p {
                Pdu::DataIn(d) if d.itt == itt => {
                    data.extend_from_slice(d.data);
                    if d.flags.contains(DataInFlags::STATUS) {
                        return Ok((d.status == 0, data));
                    }
                }
                Pdu::ScsiResponse(r) if r.itt == itt => return Ok((r.status == 0, data)),
                _ => {}
            }
        }
    }

    /// Parses the PDU at `rx_start` (complete, `n` bytes) and consumes it.
    fn take(&mut self, n: usize) -> Result<Event> {
        let (p, _) = self
            .ini
            .receive(&self.rx[self.rx_start..self.rx_start + n])
            .map_err(|e| anyhow::anyhow!("parse: {e}"))?;
        let ev = match p {
            Pdu::DataIn(d) if d.flags.contains(DataInFlags::STATUS) => Event::Done {
                itt: d.itt,
                good: d.status == 0,
            },
            Pdu::ScsiResponse(r) => Event::Done {
                itt: r.itt,
                good: r.status == 0
                    && r.response == iscsi_proto::wire::ScsiResponseCode::CommandCompleted,
            },
            Pdu::R2t(r) => Event::R2t {
                itt: r.itt,
                ttt: r.ttt,
                offset: r.buffer_offset,
                len: r.desired_len,
            },
            Pdu::NopIn(n) if n.ttt != RESERVED_TAG => Event::Ping { ttt: n.ttt },
            _ => Event::Other,
        };
        self.rx_start += n;
        Ok(ev)
    }
}

/// PDUs queued for the socket: their headers here, their data segments as ranges of the
/// session's payload buffer, sent with `writev` so no data is copied in user space (the
/// client's own copies would take CPU from the target it measures on a small machine).
#[derive(Default)]
struct Tx {
    headers: Vec<u8>,
    /// Per PDU: where its header ends in `headers`, and its data in the payload.
    pdus: Vec<(usize, std::ops::Range<usize>)>,
}

impl Tx {
    fn push(&mut self, header: &[u8], data: std::ops::Range<usize>) {
        self.headers.extend_from_slice(header);
        self.pdus.push((self.headers.len(), data));
    }

    fn is_empty(&self) -> bool {
        self.pdus.is_empty()
    }

    fn send(&mut self, sock: &mut TcpStream, payload: &[u8]) -> Result<()> {
        const PAD: [u8; 3] = [0; 3];
        let mut start = 0;
        for group in self.pdus.chunks(256) {
            let mut iov = Vec::with_capacity(group.len() * 3);
            for (end, data) in group {
                iov.push(IoSlice::new(&self.headers[start..*end]));
                start = *end;
                if !data.is_empty() {
                    iov.push(IoSlice::new(&payload[data.clone()]));
                    let pad = data.len().wrapping_neg() % 4;
                    if pad > 0 {
                        iov.push(IoSlice::new(&PAD[..pad]));
                    }
                }
            }
            let mut bufs = &mut iov[..];
            while !bufs.is_empty() {
                let n = sock.write_vectored(bufs)?;
                if n == 0 {
                    bail!("target closed the connection");
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
        }
        self.headers.clear();
        self.pdus.clear();
        Ok(())
    }
}

/// Per-session results.
#[derive(Default)]
struct Totals {
    ops: u64,
    bytes: u64,
    errors: u64,
    secs: f64,
}

fn run_session(
    o: &Opts,
    index: usize,
    start: std::sync::Arc<std::sync::Barrier>,
) -> Result<Totals> {
    let mut s = Session::login(o, index)?;
    if o.idle {
        if start.wait().is_leader() {
            println!("logged-in sessions={}", o.sessions);
        }
        return hold_idle(&mut s, o.secs);
    }
    let span_blocks = s.blocks;
    let io_blocks = u64::from(o.bs.div_ceil(s.block_len));
    let len = (io_blocks as u32) * s.block_len;
    if io_blocks > 0xffff || span_blocks < io_blocks {
        bail!("block size out of range for this LUN");
    }
    let slots = span_blocks / io_blocks;
    let payload = vec![0x5au8; len as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((index as u64 + 1) << 17));
    let mut seq_next = (index as u64 * slots / o.sessions as u64) % slots;
    let mut tasks: HashMap<u32, Task> = HashMap::with_capacity(o.qd * 2);
    let mut totals = Totals::default();
    let imm_max = if s.immediate_data {
        s.first_burst.min(s.target_mrdsl)
    } else {
        0
    };
    let mut pdu = vec![0u8; 48 + s.target_mrdsl.max(imm_max) as usize + 64];

    start.wait();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.secs);
    let mut stopping = false;
    loop {
        // Top up the queue (inside the target's CmdSN window).
        while !stopping && tasks.len() < o.qd {
            if iscsi_proto::serial::sn_lt(s.ini.max_cmd_sn(), s.ini.cmd_sn()) {
                break;
            }
            let slot = if o.seq {
                let v = seq_next;
                seq_next = (seq_next + 1) % slots;
                v
            } else {
                rng.next() % slots
            };
            let lba = slot * io_blocks;
            let write = o.read_pct < 100 && (rng.next() % 100) as u32 >= o.read_pct;
            let mut cdb = [0u8; 10];
            cdb[0] = if write { 0x2a } else { 0x28 };
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&(io_blocks as u16).to_be_bytes());
            // Immediate data first, then (InitialR2T=No) unsolicited Data-Out to the end of
            // the first burst; the target asks for the rest with R2Ts.
            let imm = if write { len.min(imm_max) } else { 0 };
            let unsolicited = if write && !s.initial_r2t {
                len.min(s.first_burst).max(imm)
            } else {
                imm
            };
            let mut spec = if write {
                CommandSpec::write(s.lun_field, &cdb, len, &payload[..imm as usize])
            } else {
                CommandSpec::read(s.lun_field, &cdb, len)
            };
            spec.final_bit = unsolicited == imm;
            let (itt, n) = s
                .ini
                .command_header(&mut pdu, &spec)
                .map_err(|e| anyhow::anyhow!("emit command: {e}"))?;
            s.tx.push(&pdu[..n], 0..spec.data.len());
            s.data_out(&mut pdu, itt, RESERVED_TAG, imm, unsolicited)?;
            tasks.insert(itt, Task { write, len });
        }
        s.tx.send(&mut s.sock, &payload)?;
        if tasks.is_empty() {
            break;
        }
        // Handle every complete PDU we hold; read more when none is complete.
        let mut handled = false;
        loop {
            let avail = &s.rx[s.rx_start..s.rx_end];
            let Status::Complete(n) = pdu_len(avail, Digests::NONE) else {
                break;
            };
            if avail.len() < n {
                if n > s.rx.len() {
                    bail!("PDU of {n} bytes exceeds the receive buffer");
                }
                break;
            }
            handled = true;
            match s.take(n)? {
                Event::Done { itt, good } => {
                    if let Some(t) = tasks.remove(&itt) {
                        totals.ops += 1;
                        totals.bytes += u64::from(t.len);
                        if !good {
                            totals.errors += 1;
                        }
                        let _ = t.write;
                    }
                }
                Event::R2t {
                    itt,
                    ttt,
                    offset,
                    len: want,
                } => {
                    let end = offset.saturating_add(want).min(len);
                    s.data_out(&mut pdu, itt, ttt, offset, end)?;
                }
                Event::Ping { ttt } => {
                    let n = s
                        .ini
                        .nop_out(&mut pdu, RESERVED_TAG, ttt, &[])
                        .map_err(|e| anyhow::anyhow!("emit nop-out: {e}"))?;
                    s.tx.push(&pdu[..n], 0..0);
                }
                Event::Other => {}
            }
        }
        if !stopping && Instant::now() >= deadline {
            stopping = true;
        }
        if !handled && s.tx.is_empty() {
            s.read_more()?;
        }
    }
    totals.secs = t0.elapsed().as_secs_f64();
    Ok(totals)
}

/// Holds a logged-in session for `secs` without commands, answering NOP-In pings.
fn hold_idle(s: &mut Session, secs: f64) -> Result<Totals> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut pdu = [0u8; 64];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        s.sock.set_read_timeout(Some(deadline - now))?;
        let n = match s.fill_one() {
            Ok(n) => n,
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Event::Ping { ttt } = s.take(n)? {
            let n = s
                .ini
                .nop_out(&mut pdu, RESERVED_TAG, ttt, &[])
                .map_err(|e| anyhow::anyhow!("emit nop-out: {e}"))?;
            s.sock.write_all(&pdu[..n])?;
        }
    }
    Ok(Totals {
        secs: t0.elapsed().as_secs_f64(),
        ..Totals::default()
    })
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(o.sessions));
    let handles: Vec<_> = (0..o.sessions)
        .map(|i| {
            let o = o.clone();
            let b = barrier.clone();
            std::thread::spawn(move || run_session(&o, i, b))
        })
        .collect();
    let mut all = Totals::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("session thread panicked"))??;
        all.ops += t.ops;
        all.bytes += t.bytes;
        all.errors += t.errors;
        all.secs = all.secs.max(t.secs);
    }
    let secs = all.secs.max(1e-9);
    println!(
        "ops={} bytes={} secs={:.3} iops={:.0} mbps={:.1} errors={}",
        all.ops,
        all.bytes,
        secs,
        all.ops as f64 / secs,
        all.bytes as f64 / secs / 1e6,
        all.errors
    );
    Ok(())
}
