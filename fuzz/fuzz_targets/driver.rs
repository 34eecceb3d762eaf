//! Fuzz a whole target connection: the `iscsi-target` [`Driver`] (iscsi-proto `Connection`
//! + scsi-core `Target` + backstore I/O run inline) over two memory LUNs, fed arbitrary PDU
//! sequences after a login.
//!
//! Input: byte 0 configures the session. Bit 7 set: the harness first performs a valid
//! login (bits 0-1: HeaderDigest / DataDigest CRC32C, bit 2: InitialR2T=No, bit 3:
//! ImmediateData=No, bits 4-5: MaxBurstLength, bit 6: discovery session); clear: the input
//! logs in by itself (raw records; seeds captured from libiscsi do). Then records, each
//! starting with an op byte (op % 8):
//! - 0 `[len_hi][len_lo][bytes]`: one PDU (BHS + AHS + data) re-framed by the harness: data
//!   segment length fixed up, CmdSN / ExpStatSN set to what the target expects (unless bit
//!   7 of the op byte), digests appended when negotiated (bit 6 corrupts them), sent in one
//!   piece (bit 5 clear) or split in two (bit 5 set, split at the byte after the length);
//! - 1 `[flags][lun][edtl_hi][edtl_lo][cdb_len][cdb][imm_hi][imm_lo][imm]`: a SCSI command;
//! - 2 `[sel][len_hi][len_lo][data]`: Data-Out answering the oldest R2T seen (or unsolicited
//!   data for the last write command), carrying `data` (parameter lists: PR OUT, UNMAP,
//!   EXTENDED COPY, MODE SELECT, ...), with field mutations picked by `sel`;
//! - 3 `[ms]`: advance the clock by `ms * 64` ms and run timers;
//! - 4 `[kind][arg]`: NOP-Out (answering a ping or not), Task Management, Text, Logout;
//! - 5 `[seconds]`: the admin asks the initiator to log out;
//! - 6 `[len_hi][len_lo][bytes]`: bytes straight onto the socket, no framing help;
//! - 7: the socket closes (the driver must release everything).
//!
//! Invariants checked: every byte the target sends frames into PDUs that parse with the
//! negotiated digests; StatSN and ExpCmdSN never go backwards; MaxCmdSN + 1 >= ExpCmdSN;
//! Data-In segments respect our MaxRecvDataSegmentLength; output per input is bounded; after
//! close no I/O stays in flight.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use backstore::{BackingStore, MemoryStore};
use iscsi_proto::digest::{data_digest, header_digest};
use iscsi_proto::session::Timestamp;
use iscsi_proto::wire::{Digests, Pdu, Status, pdu_len};
use iscsi_target::builder::{LunOptions, TargetBuilder, lu_config};
use iscsi_target::driver::{Driver, DriverConfig, InputStatus, RxTarget};
use iscsi_target::registry::{LunBackend, LunInfo, LunStats, Registry};
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "iqn.2026-11.org.example:fuzz";
const INITIATOR: &str = "iqn.2026-11.org.example:init";
/// Our MaxRecvDataSegmentLength in the harness login.
const MRDSL: usize = 8192;

struct R2tSeen {
    itt: [u8; 4],
    ttt: [u8; 4],
    offset: u32,
    len: u32,
}

struct Harness {
    drv: Driver,
    now: Timestamp,
    rx: Vec<u8>,
    /// Target output not yet framed into PDUs.
    out: Vec<u8>,
    out_total: usize,
    /// Digests the target uses on its PDUs (none during login).
    digests: Digests,
    /// Digests negotiated so far in login responses (take effect after login).
    pending_digests: Digests,
    logged_in: bool,
    harness_login: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
    last_stat_sn: Option<u32>,
    last_exp_cmd_sn: Option<u32>,
    r2ts: Vec<R2tSeen>,
    last_write: Option<([u8; 4], u32)>,
    ping_ttt: Option<[u8; 4]>,
    itt: u32,
    closed: bool,
}

fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Whether `a` is before `b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

impl Harness {
    fn new(registry: Arc<Registry>) -> Harness {
        let mut cfg = DriverConfig::default();
        cfg.conn.queue_depth = 8;
        cfg.conn.nop_interval_ms = 2000;
        cfg.conn.nop_timeout_ms = 1000;
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        let wake = Arc::new(|| {});
        Harness {
            drv: Driver::new(registry, &cfg, peer, local, Timestamp(0), wake),
            now: Timestamp(0),
            rx: Vec::new(),
            out: Vec::new(),
            out_total: 0,
            digests: Digests::NONE,
            pending_digests: Digests::NONE,
            logged_in: false,
            harness_login: false,
            cmd_sn: 1,
            exp_stat_sn: 0,
            last_stat_sn: None,
            last_exp_cmd_sn: None,
            r2ts: Vec::new(),
            last_write: None,
            ping_ttt: None,
            itt: 0x100,
            closed: false,
        }
    }

    /// Hands bytes to the driver, runs I/O inline and reads everything it sends.
    fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        // As the mio runtime does: each read goes where `rx_target` says, straight into a
        // task buffer (the rest of a large data segment) or through `handle_read` (which
        // copies only a PDU split between reads into `rx`), then `rx` while output is
        // blocked.
        let mut fresh = bytes;
        let mut st = InputStatus::NeedMore;
        while !fresh.is_empty() && !self.closed {
            st = match self.drv.rx_target(&self.rx) {
                RxTarget::Task(dst) => {
                    assert!(!dst.is_empty(), "an empty placement target");
                    let n = dst.len().min(fresh.len());
                    dst[..n].copy_from_slice(&fresh[..n]);
                    fresh = &fresh[n..];
                    self.drv.placed(self.now, n, &mut self.rx)
                }
                RxTarget::Buffer(max) => {
                    let n = max.min(fresh.len());
                    let st = self.drv.handle_read(self.now, &mut self.rx, &fresh[..n]);
                    fresh = &fresh[n..];
                    st
                }
            };
            self.pump();
            self.closed |= st == InputStatus::Closed;
        }
        for _ in 0..10_000 {
            match st {
                InputStatus::Blocked => {}
                InputStatus::NeedMore => break,
                InputStatus::Closed => {
                    self.closed = true;
                    break;
                }
            }
            st = self.drv.handle_input(self.now, &mut self.rx);
            self.pump();
        }
        if self.drv.is_closed() {
            self.closed = true;
        }
    }

    fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..10_000 {
            self.drv.run_io_inline(self.now);
            let before = self.out.len();
            self.drv.transmit_into(self.now, &mut self.out);
            // Two quiet rounds in a row: no job and no output left.
            idle = if self.out.len() == before {
                idle + 1
            } else {
                0
            };
            if idle == 2 {
                break;
            }
        }
        self.out_total += self.out.len();
        assert!(self.out_total < 64 << 20, "unbounded output");
        self.read_output();
    }

    /// Frames and checks the target's output.
    fn read_output(&mut self) {
        let out = core::mem::take(&mut self.out);
        let mut pos = 0;
        while pos < out.len() {
            let buf = &out[pos..];
            let len = match pdu_len(buf, self.digests) {
                Status::Complete(n) if n <= buf.len() => n,
                _ => panic!("target sent a partial PDU ({} bytes)", buf.len()),
            };
            let (pdu, used) = Pdu::parse(&buf[..len], self.digests).expect("target PDU parses");
            assert_eq!(used, len);
            let data_len = pdu.data().len();
            let bhs: [u8; 48] = buf[..48].try_into().unwrap();
            self.check(&bhs, data_len, &buf[48..len]);
            pos += len;
        }
        self.out = out;
        self.out.clear();
    }

    fn check(&mut self, bhs: &[u8; 48], data_len: usize, rest: &[u8]) {
        let op = bhs[0] & 0x3f;
        let stat_sn = be32(&bhs[24..28]);
        let exp_cmd_sn = be32(&bhs[28..32]);
        let max_cmd_sn = be32(&bhs[32..36]);
        // Data-In carries StatSN only with the S bit; R2T carries the next StatSN.
        let has_status = match op {
            0x25 => bhs[1] & 1 != 0,
            0x31 => false,
            _ => true,
        };
        if has_status {
            if let Some(last) = self.last_stat_sn {
                assert!(
                    !sn_lt(stat_sn, last),
                    "StatSN went backwards: {last} -> {stat_sn}"
                );
            }
            self.last_stat_sn = Some(stat_sn);
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        // Every target PDU carries the command window; of the login responses only the
        // final successful one is checked (a failed login's response may hold zeros).
        let login_done = bhs[1] & 0x80 != 0 && bhs[1] & 3 == 3 && bhs[36] == 0;
        if op != 0x23 || login_done {
            if let Some(last) = self.last_exp_cmd_sn {
                assert!(
                    !sn_lt(exp_cmd_sn, last),
                    "ExpCmdSN went backwards: {last} -> {exp_cmd_sn}"
                );
            }
            assert!(
                !sn_lt(max_cmd_sn.wrapping_add(1), exp_cmd_sn),
                "window negative: exp {exp_cmd_sn} max {max_cmd_sn}"
            );
            self.last_exp_cmd_sn = Some(exp_cmd_sn);
            self.cmd_sn = exp_cmd_sn;
        }
        match op {
            0x23 => {
                let data = &rest[..data_len.min(rest.len())];
                let has = |k: &[u8]| data.windows(k.len()).any(|w| w == k);
                if has(b"HeaderDigest=CRC32C") {
                    self.pending_digests.header = true;
                }
                if has(b"DataDigest=CRC32C") {
                    self.pending_digests.data = true;
                }
                // Final response of a successful login: T=1, NSG=FullFeature, status 0.
                if bhs[1] & 0x80 != 0 && bhs[1] & 3 == 3 && bhs[36] == 0 {
                    self.logged_in = true;
                    self.digests = self.pending_digests;
                }
            }
            0x25 => {
                if self.harness_login {
                    assert!(data_len <= MRDSL, "Data-In of {data_len} bytes");
                }
            }
            0x31 => {
                if self.r2ts.len() < 64 {
                    self.r2ts.push(R2tSeen {
                        itt: bhs[16..20].try_into().unwrap(),
                        ttt: bhs[20..24].try_into().unwrap(),
                        offset: be32(&bhs[40..44]),
                        len: be32(&bhs[44..48]),
                    });
                }
            }
            0x20 if bhs[20..24] != [0xff; 4] => {
                self.ping_ttt = Some(bhs[20..24].try_into().unwrap());
            }
            _ => {}
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1) & 0x3ff;
        self.itt
    }

    /// Frames a PDU the way an initiator would: digests when negotiated.
    fn frame(&self, bhs_ahs: &[u8], data: &[u8], corrupt: bool) -> Vec<u8> {
        let d = if self.logged_in {
            self.digests
        } else {
            Digests::NONE
        };
        let mut v = bhs_ahs.to_vec();
        if d.header {
            let h = header_digest(bhs_ahs) ^ u32::from(corrupt);
            v.extend_from_slice(&h.to_le_bytes());
        }
        v.extend_from_slice(data);
        v.resize(v.len() + (4 - data.len() % 4) % 4, 0);
        if d.data && !data.is_empty() {
            let h = data_digest(data) ^ u32::from(corrupt);
            v.extend_from_slice(&h.to_le_bytes());
        }
        v
    }

    /// Op 0: a PDU from the fuzzer, made well-framed.
    fn pdu(&mut self, op: u8, bytes: &[u8]) {
        let mut v = bytes.to_vec();
        v.resize(v.len().max(48), 0);
        let mut ahs = usize::from(v[4]) * 4;
        if 48 + ahs > v.len() {
            v[4] = 0;
            ahs = 0;
        }
        let data = v[48 + ahs..].to_vec();
        v.truncate(48 + ahs);
        v[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        let opcode = v[0] & 0x3f;
        if op & 0x80 == 0 {
            // CmdSN / ExpStatSN where the target expects them, for the opcodes carrying them.
            if matches!(opcode, 0x00..=0x06 | 0x10) {
                v[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
                if opcode != 0x05 && v[0] & 0x40 == 0 {
                    self.cmd_sn = self.cmd_sn.wrapping_add(1);
                }
            }
            v[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        }
        if opcode == 0x01 && v[1] & 0x20 != 0 {
            self.last_write = Some((v[16..20].try_into().unwrap(), data.len() as u32));
        }
        let framed = self.frame(&v, &data, op & 0x40 != 0);
        if op & 0x20 != 0 && framed.len() > 1 {
            let cut = usize::from(bytes.first().copied().unwrap_or(0)) % framed.len();
            self.feed(&framed[..cut]);
            self.feed(&framed[cut..]);
        } else {
            self.feed(&framed);
        }
    }

    /// Op 1: a SCSI command.
    fn command(&mut self, flags: u8, lun: u8, edtl: u32, cdb: &[u8], imm: &[u8]) {
        let itt = self.next_itt();
        let mut v = [0u8; 48];
        v[0] = 0x01 | if flags & 0x80 != 0 { 0x40 } else { 0 };
        // F, R, W, ATTR.
        v[1] = 0x80 | (flags & 0x60) | (flags & 7);
        if flags & 0x10 != 0 {
            v[1] &= !0x80;
        }
        v[9] = lun & 3;
        v[16..20].copy_from_slice(&itt.to_be_bytes());
        v[20..24].copy_from_slice(&edtl.to_be_bytes());
        v[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        if flags & 0x80 == 0 {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        v[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        let n = cdb.len().min(16);
        v[32..32 + n].copy_from_slice(&cdb[..n]);
        let mut hdr = v.to_vec();
        if cdb.len() > 16 {
            // Extended CDB AHS: length (ext CDB + 1 reserved byte), type 1.
            let ext = &cdb[16..];
            let l = ext.len() + 1;
            hdr.extend_from_slice(&(l as u16).to_be_bytes());
            hdr.push(1);
            hdr.push(0);
            hdr.extend_from_slice(ext);
            hdr.resize(hdr.len() + (4 - (l + 3) % 4) % 4, 0);
            hdr[4] = ((hdr.len() - 48) / 4) as u8;
        }
        hdr[5..8].copy_from_slice(&(imm.len() as u32).to_be_bytes()[1..]);
        if flags & 0x20 != 0 {
            self.last_write = Some((itt.to_be_bytes(), imm.len() as u32));
        }
        let framed = self.frame(&hdr, imm, false);
        self.feed(&framed);
    }

    /// Op 2: Data-Out carrying `data`.
    fn data_out(&mut self, sel: u8, data: &[u8]) {
        let (itt, ttt, offset, want) = if sel & 1 == 0 && !self.r2ts.is_empty() {
            let r = self.r2ts.remove(0);
            (r.itt, r.ttt, r.offset, r.len)
        } else if let Some((itt, off)) = self.last_write {
            (itt, [0xff; 4], off, data.len() as u32)
        } else {
            return;
        };
        // The whole burst: `data` first, zeros after, in PDUs within the target's
        // MaxRecvDataSegmentLength (256 KiB): 512 B, 4 KiB, or 64 KiB pieces (which the
        // driver receives straight into the task buffer).
        let want = (want as usize).min(256 * 1024);
        let chunk = match (sel & 0x80 != 0, sel & 0x02 != 0) {
            (true, _) => 512,
            (false, true) => 64 * 1024,
            (false, false) => 4096,
        };
        let mut payload = data.to_vec();
        payload.resize(want.max(data.len().min(4096)), 0);
        let mut pos = 0usize;
        let mut data_sn = 0u32;
        loop {
            let this = chunk.min(payload.len() - pos);
            let last = pos + this >= payload.len();
            let mut v = [0u8; 48];
            v[0] = 0x05;
            v[1] = if last != (sel & 0x40 != 0) { 0x80 } else { 0 };
            v[16..20].copy_from_slice(&itt);
            v[20..24].copy_from_slice(&ttt);
            if sel & 0x20 != 0 {
                v[23] ^= 1;
            }
            v[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            let dsn = data_sn.wrapping_add(u32::from(sel & 0x10 != 0));
            v[36..40].copy_from_slice(&dsn.to_be_bytes());
            let off = offset
                .wrapping_add(pos as u32)
                .wrapping_add(u32::from(sel & 0x08 != 0) * 512);
            v[40..44].copy_from_slice(&off.to_be_bytes());
            v[5..8].copy_from_slice(&(this as u32).to_be_bytes()[1..]);
            let framed = self.frame(&v, &payload[pos..pos + this], sel & 0x04 != 0);
            self.feed(&framed);
            pos += this;
            data_sn += 1;
            if last || self.closed || data_sn > 256 {
                break;
            }
        }
    }

    /// Op 4: a non-SCSI request.
    fn other(&mut self, kind: u8, arg: u8) {
        let itt = self.next_itt();
        let mut v = [0u8; 48];
        v[16..20].copy_from_slice(&itt.to_be_bytes());
        v[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        v[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        let mut data: Vec<u8> = Vec::new();
        match kind % 6 {
            0 => {
                // NOP-Out: a ping (immediate) or the answer to the target's ping.
                v[0] = 0x40;
                v[1] = 0x80;
                v[20..24].copy_from_slice(&[0xff; 4]);
                if arg & 1 != 0 {
                    if let Some(t) = self.ping_ttt.take() {
                        v[16..20].copy_from_slice(&[0xff; 4]);
                        v[20..24].copy_from_slice(&t);
                    }
                }
                data.resize(usize::from(arg >> 1), 0x5a);
            }
            1 => {
                // Task management: function, referenced task (one of ours), LUN.
                v[0] = 0x42;
                v[1] = 0x80 | (arg % 9 + 1);
                v[9] = (arg >> 4) & 1;
                let rtt = self.itt.wrapping_sub(u32::from(arg >> 5));
                v[20..24].copy_from_slice(&rtt.to_be_bytes());
                v[32..36].copy_from_slice(&self.cmd_sn.wrapping_sub(1).to_be_bytes());
            }
            2 => {
                v[0] = 0x04;
                v[1] = 0x80;
                v[20..24].copy_from_slice(&[0xff; 4]);
                data = match arg % 4 {
                    0 => text(&[("SendTargets", "All")]),
                    1 => text(&[("SendTargets", TARGET)]),
                    2 => text(&[("MaxRecvDataSegmentLength", "4096"), ("X-foo", "bar")]),
                    _ => text(&[("SendTargets", "")]),
                };
                self.cmd_sn = self.cmd_sn.wrapping_add(1);
            }
            3 => {
                v[0] = 0x46;
                v[1] = 0x80 | (arg % 3);
                v[20] = 0;
            }
            4 => {
                // SNACK.
                v[0] = 0x10;
                v[1] = 0x80 | (arg & 3);
                v[20..24].copy_from_slice(&[0xff; 4]);
                v[40..44].copy_from_slice(&u32::from(arg >> 2).to_be_bytes());
            }
            _ => {
                // Non-immediate NOP-Out with a CmdSN maybe outside the window.
                v[0] = 0x00;
                v[1] = 0x80;
                v[20..24].copy_from_slice(&[0xff; 4]);
                let sn = self.cmd_sn.wrapping_add(u32::from(arg) << 8);
                v[24..28].copy_from_slice(&sn.to_be_bytes());
                self.cmd_sn = self.cmd_sn.wrapping_add(1);
            }
        }
        v[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        let framed = self.frame(&v, &data, false);
        self.feed(&framed);
    }

    fn login(&mut self, bits: u8) {
        self.harness_login = true;
        let discovery = bits & 0x40 != 0;
        let sec = text(&[
            ("InitiatorName", INITIATOR),
            ("AuthMethod", "None"),
            if discovery {
                ("SessionType", "Discovery")
            } else {
                ("TargetName", TARGET)
            },
        ]);
        let burst = ["8192", "65536", "262144", "1048576"][usize::from(bits >> 4 & 3)];
        let mrdsl = MRDSL.to_string();
        let ops = text(&[
            (
                "HeaderDigest",
                if bits & 1 != 0 { "CRC32C" } else { "None" },
            ),
            ("DataDigest", if bits & 2 != 0 { "CRC32C" } else { "None" }),
            ("MaxRecvDataSegmentLength", &mrdsl),
            ("MaxBurstLength", burst),
            ("FirstBurstLength", "8192"),
            ("InitialR2T", if bits & 4 != 0 { "No" } else { "Yes" }),
            ("ImmediateData", if bits & 8 != 0 { "No" } else { "Yes" }),
            ("MaxOutstandingR2T", "2"),
            ("ErrorRecoveryLevel", "0"),
        ]);
        for (flags, data) in [(0x81u8, &sec), (0x87, &ops)] {
            let mut v = [0u8; 48];
            v[0] = 0x43;
            v[1] = flags;
            v[8..14].copy_from_slice(&[0x40, 0, 0, 0, 0, 1]);
            v[16..20].copy_from_slice(&1u32.to_be_bytes());
            v[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
            v[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            v[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            let framed = self.frame(&v, data, false);
            self.feed(&framed);
        }
        assert!(self.logged_in || self.closed, "scripted login failed");
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *rest = b;
    a
}

fn take_u16(rest: &mut &[u8]) -> usize {
    let b = take(rest, 2);
    if b.len() == 2 {
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    } else {
        0
    }
}

/// The registry is built once (the scsi-core target it holds is large and slow to build);
/// every input gets fresh LUNs (fresh medium, mode pages and reservations) and, since every
/// input ends by closing its connection, no session or nexus carries over.
fn registry() -> Arc<Registry> {
    static REG: OnceLock<Arc<Registry>> = OnceLock::new();
    let reg = REG
        .get_or_init(|| TargetBuilder::new(TARGET).build().unwrap())
        .clone();
    let node = reg.target_by_name(TARGET).expect("target");
    for (n, bs, opts) in [
        (0u16, 512u32, LunOptions::default().thin(true)),
        (1, 4096, LunOptions::default().removable(true)),
    ] {
        let _ = node.remove_lun(n);
        let store: Arc<dyn BackingStore> = Arc::new(MemoryStore::new(1 << 20, bs).unwrap());
        let cfg = lu_config(1, n, &*store, &opts);
        let backend = LunBackend {
            info: LunInfo {
                number: n,
                bstype: "memory".into(),
                path: None,
                size: store.size(),
                block_size: bs,
                readonly: false,
                removable: opts.removable,
                thin: opts.thin,
            },
            store,
            stats: LunStats::default(),
            engine: None,
        };
        node.add_lun(backend, cfg).expect("fresh LUN");
    }
    reg
}

fuzz_target!(|data: &[u8]| {
    let Some((&bits, mut rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(registry());
    if bits & 0x80 != 0 {
        h.login(bits);
    }
    let mut steps = 0;
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        steps += 1;
        if h.closed || steps > 256 {
            break;
        }
        match op % 8 {
            0 => {
                let n = take_u16(&mut rest) % 16384;
                let b = take(&mut rest, n).to_vec();
                h.pdu(op, &b);
            }
            1 => {
                let hdr = take(&mut rest, 5);
                if hdr.len() < 5 {
                    break;
                }
                let edtl = u32::from(u16::from_be_bytes([hdr[2], hdr[3]]))
                    * if hdr[0] & 8 != 0 { 64 } else { 1 };
                let cdb = take(&mut rest, usize::from(hdr[4] % 33)).to_vec();
                let n = take_u16(&mut rest) % 16384;
                let imm = take(&mut rest, n).to_vec();
                h.command(hdr[0], hdr[1], edtl, &cdb, &imm);
            }
            2 => {
                let sel = take(&mut rest, 1).first().copied().unwrap_or(0);
                let n = take_u16(&mut rest) % 16384;
                let d = take(&mut rest, n).to_vec();
                h.data_out(sel, &d);
            }
            3 => {
                let ms = take(&mut rest, 1).first().copied().unwrap_or(0);
                h.now = h.now.add_millis(u64::from(ms) * 64);
                if h.drv.poll_timeout().is_some_and(|t| t <= h.now) {
                    h.drv.handle_timeout(h.now);
                }
                h.pump();
            }
            4 => {
                let a = take(&mut rest, 2);
                if a.len() == 2 {
                    h.other(a[0], a[1]);
                }
            }
            5 => {
                let s = take(&mut rest, 1).first().copied().unwrap_or(0);
                h.drv.request_logout(h.now, u16::from(s));
                h.pump();
            }
            6 => {
                let n = take_u16(&mut rest) % 16384;
                let b = take(&mut rest, n).to_vec();
                h.feed(&b);
            }
            _ => {
                h.drv.close(h.now);
                h.pump();
                h.closed = true;
            }
        }
        if h.drv.is_closed() {
            h.closed = true;
        }
    }
    // The socket goes away: nothing may stay in flight.
    h.drv.close(h.now);
    h.drv.run_io_inline(h.now);
    assert!(!h.drv.io_in_flight());
    assert!(h.drv.is_closed());
});
