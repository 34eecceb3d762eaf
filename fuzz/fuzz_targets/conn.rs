//! Fuzz a target `Connection` with arbitrary PDU sequences: login, then full feature phase,
//! with a scripted runtime answering events. No panic, bounded state, and every PDU the
//! target emits must parse.
//!
//! Input: byte 0 configures the connection (bit 0: InitialR2T=No, bit 1: digests, bits 2-3:
//! queue depth, bit 4: NOP pings, bit 5: small MaxBurstLength); then records, each starting
//! with an op byte (op % 8):
//! - 0 `[keys]`: (once) a well-formed login (security then operational stage) whose operational
//!   keys are picked by `keys` (digests, InitialR2T, burst lengths, MaxOutstandingR2T);
//! - 1 `[len_hi][len_lo][bytes]`: raw bytes, digests appended when negotiated (bit 7 of the
//!   op byte corrupts them);
//! - 2 `[kind][len_hi][len_lo][imm]`: a SCSI command (read / write / none, immediate data,
//!   F bit, immediate delivery, CmdSN skew);
//! - 3 `[sel][len]`: Data-Out answering an R2T seen (or unsolicited), with field mutations;
//! - 4 `[sel][arg]`: a runtime mutator (respond, Data-In, R2T request, abort, TMF / logout
//!   answers, async logout request);
//! - 5 `[kind][arg]`: NOP-Out, Task Management, Text, Logout, SNACK or Login request;
//! - 6 `[ms]`: advance time and run the timers;
//! - 7 `[n]`: deliver the next bytes split at `n` (partial input).
#![no_main]

use iscsi_proto::login::discovery::{Portal, TargetInfo};
use iscsi_proto::login::{
    AuthPolicy, Authorization, ChapChallenge, ChapCredentials, JoinDecision, LoginHooks,
    SessionType,
};
use iscsi_proto::session::{
    ConnConfig, Connection, Event, Hooks, Ingress, Residual, ScsiStatus, TaskHandle, Timestamp,
};
use iscsi_proto::wire::{
    self, DataOut, Digests, LoginRequest, LogoutReason, LogoutRequest, LogoutResponseCode, NopOut,
    Pdu, RESERVED_TAG, ScsiCommand, ScsiCommandFlags, Stage, TaskAttr, TaskMgmtRequest, TextFlags,
    TextRequest, TmfFunction, TmfResponse,
};
use libfuzzer_sys::fuzz_target;

const TASKS: usize = 8;
const BUF: usize = 4096;
const IO: usize = 1 << 16;
const TARGET: &str = "iqn.2026-11.org.example:disk1";

struct FuzzHooks;

impl LoginHooks for FuzzHooks {
    fn authorize(&mut self, _i: &str, t: Option<&str>, ty: SessionType) -> Authorization {
        match (ty, t) {
            (SessionType::Discovery, _) | (SessionType::Normal, Some(TARGET)) => {
                Authorization::Allowed(AuthPolicy::None)
            }
            _ => Authorization::TargetNotFound,
        }
    }
    fn chap_account(&mut self, _t: Option<&str>, _u: &str) -> Option<ChapCredentials> {
        None
    }
    fn chap_mutual_account(&mut self, _t: Option<&str>) -> Option<ChapCredentials> {
        None
    }
    fn join_session(&mut self, _i: &str, _isid: [u8; 6], _tsih: u16, _cid: u16) -> JoinDecision {
        JoinDecision::DoesNotExist
    }
    fn allocate_tsih(&mut self, _i: &str, _isid: [u8; 6]) -> Option<u16> {
        Some(7)
    }
}

impl Hooks for FuzzHooks {
    fn with_targets(&mut self, _i: &str, f: &mut dyn FnMut(&[TargetInfo<'_>])) {
        let portals = [Portal {
            address: "127.0.0.1:3260",
            tpgt: 1,
        }];
        f(&[TargetInfo {
            name: TARGET,
            portals: &portals,
        }]);
    }
}

struct R2tSeen {
    itt: u32,
    ttt: u32,
    offset: u32,
    len: u32,
}

struct Harness {
    conn: Connection<TASKS, BUF>,
    hooks: FuzzHooks,
    now: Timestamp,
    io: Vec<u8>,
    tasks: Vec<(TaskHandle, u32, u32)>,
    tmfs: Vec<u32>,
    logout: bool,
    r2ts: Vec<R2tSeen>,
    writes: Vec<(u32, u32)>,
    ping_ttt: Option<u32>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    digests: Digests,
    dead: bool,
    hdr: Vec<u8>,
    pdu: Vec<u8>,
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

impl Harness {
    fn emit(&mut self, pdu: &Pdu<'_>) -> Vec<u8> {
        let mut out = vec![0u8; pdu.wire_len(self.digests)];
        let n = wire::emit_pdu(pdu, self.digests, &mut out).expect("emit");
        out.truncate(n);
        out
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut pos = 0;
        let mut rounds = 0;
        while pos < bytes.len() && !self.dead {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            match self
                .conn
                .handle_input(self.now, &bytes[pos..], &mut self.hooks)
            {
                Ok(Ingress::Done { consumed }) => {
                    assert!(consumed > 0 && consumed <= bytes.len() - pos);
                    pos += consumed;
                }
                Ok(Ingress::Data {
                    consumed,
                    task,
                    offset,
                    data,
                }) => {
                    assert!(consumed > 0 && consumed <= bytes.len() - pos);
                    assert!(task.index() < TASKS);
                    let end = offset as usize + data.len();
                    if end <= IO {
                        self.io[offset as usize..end].copy_from_slice(data);
                    }
                    pos += consumed;
                }
                Ok(Ingress::NeedMore) => break,
                Ok(Ingress::Blocked) => self.drain(),
                Err(_) => self.dead = true,
            }
            self.events();
        }
        self.drain();
    }

    fn events(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            match e {
                Event::Command(c) => {
                    assert!(c.cdb.as_bytes().len() >= 16);
                    self.tasks.push((c.task, c.read_len, c.write_len));
                }
                Event::TaskMgmt(t) => self.tmfs.push(t.itt),
                Event::Logout(_) => self.logout = true,
                Event::Closed { .. } => self.dead = true,
                // A login made of raw PDUs may negotiate digests too: the PDUs after the
                // final Login Response carry them.
                Event::LoggedIn => self.digests = self.conn.digests(),
                Event::DataOutComplete { .. } | Event::TaskFailed { .. } => {}
            }
        }
        assert!(self.conn.task_count() <= TASKS);
    }

    fn drain(&mut self) {
        let mut hdr = core::mem::take(&mut self.hdr);
        let mut pdu = core::mem::take(&mut self.pdu);
        let mut n = 0;
        while let Some(t) = self
            .conn
            .poll_transmit(self.now, &mut hdr)
            .expect("big buffer")
        {
            n += 1;
            assert!(n < 100_000, "unbounded output");
            pdu.clear();
            pdu.extend_from_slice(&hdr[..t.len]);
            if let Some(d) = t.data {
                let s = d.offset as usize;
                let e = s + d.len as usize;
                assert!(e <= IO, "Data-In outside the range the runtime gave");
                let data = &self.io[s..e];
                pdu.extend_from_slice(data);
                pdu.extend_from_slice(d.trailer(data).as_bytes());
            }
            self.read_target(&pdu);
        }
        self.hdr = hdr;
        self.pdu = pdu;
        self.events();
    }

    fn read_target(&mut self, pdu: &[u8]) {
        // Login responses never carry digests; everything after login uses ours.
        let d = if pdu[0] & 0x3f == 0x23 {
            Digests::NONE
        } else {
            self.digests
        };
        let (p, used) = Pdu::parse(pdu, d).expect("target PDU parses");
        assert_eq!(used, pdu.len());
        match p {
            Pdu::R2t(r) => {
                if self.r2ts.len() < 64 {
                    self.r2ts.push(R2tSeen {
                        itt: r.itt,
                        ttt: r.ttt,
                        offset: r.buffer_offset,
                        len: r.desired_len,
                    });
                }
            }
            Pdu::NopIn(n) if n.ttt != RESERVED_TAG => self.ping_ttt = Some(n.ttt),
            Pdu::LoginResponse(r) => self.exp_stat_sn = r.stat_sn.wrapping_add(1),
            Pdu::ScsiResponse(r) => self.exp_stat_sn = r.stat_sn.wrapping_add(1),
            _ => {}
        }
    }

    fn login(&mut self, keys: u8) {
        let sec = text(&[
            ("InitiatorName", "iqn.2026-11.org.example:fuzz"),
            ("AuthMethod", "None"),
            if keys & 0x80 != 0 {
                ("SessionType", "Discovery")
            } else {
                ("TargetName", TARGET)
            },
        ]);
        let burst = ["4096", "8192", "65536", "262144"][usize::from(keys >> 2 & 3)];
        let ops = text(&[
            (
                "HeaderDigest",
                if keys & 1 != 0 { "CRC32C" } else { "None" },
            ),
            ("DataDigest", if keys & 2 != 0 { "CRC32C" } else { "None" }),
            ("MaxRecvDataSegmentLength", "1024"),
            ("MaxBurstLength", burst),
            ("FirstBurstLength", "4096"),
            ("InitialR2T", if keys & 0x10 != 0 { "No" } else { "Yes" }),
            (
                "MaxOutstandingR2T",
                if keys & 0x20 != 0 { "4" } else { "1" },
            ),
        ]);
        for (csg, nsg, data) in [
            (Stage::SecurityNegotiation, Stage::LoginOperational, &sec),
            (Stage::LoginOperational, Stage::FullFeature, &ops),
        ] {
            let pdu = Pdu::LoginRequest(LoginRequest {
                cont: false,
                csg,
                nsg: Some(nsg),
                version_max: 0,
                version_min: 0,
                isid: [0x40, 0, 0, 0, 0, 1],
                tsih: 0,
                itt: 1,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data,
            });
            let saved = self.digests;
            self.digests = Digests::NONE;
            let bytes = self.emit(&pdu);
            self.digests = saved;
            self.feed(&bytes);
        }
        if self.conn.is_full_feature() {
            self.digests = self.conn.digests();
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1) % 64;
        self.itt
    }

    fn command(&mut self, kind: u8, len: u16, imm: &[u8]) {
        let read = kind & 1 != 0;
        let write = kind & 2 != 0;
        let immediate = kind & 4 != 0;
        let itt = self.next_itt();
        let mut flags = ScsiCommandFlags::empty();
        flags.set(ScsiCommandFlags::READ, read);
        flags.set(ScsiCommandFlags::WRITE, write);
        flags.set(ScsiCommandFlags::FINAL, kind & 8 == 0);
        let edtl = u32::from(len) * if kind & 0x10 != 0 { 64 } else { 1 };
        let cmd_sn = self.cmd_sn.wrapping_add(u32::from(kind >> 6));
        let pdu = Pdu::ScsiCommand(ScsiCommand {
            immediate,
            flags,
            attr: TaskAttr::Simple,
            lun: 0,
            itt,
            expected_data_transfer_len: edtl,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: [
                if write { 0x2a } else { 0x28 },
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            extended_cdb: if kind & 0x20 != 0 { &[1, 2, 3, 4] } else { &[] },
            bidi_read_len: None,
            data: if write { imm } else { &[] },
        });
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        if write && self.writes.len() < 64 {
            self.writes.push((itt, imm.len() as u32));
        }
        let bytes = self.emit(&pdu);
        self.feed(&bytes);
    }

    fn data_out(&mut self, sel: u8, len: u8) {
        let payload = [0xa5u8; 2048];
        let n = (usize::from(len) * 8).min(payload.len());
        let (itt, ttt, offset, want) = if sel & 1 == 0 && !self.r2ts.is_empty() {
            let i = usize::from(sel >> 1) % self.r2ts.len();
            let r = &self.r2ts[i];
            (r.itt, r.ttt, r.offset, r.len)
        } else if !self.writes.is_empty() {
            let i = usize::from(sel >> 1) % self.writes.len();
            let (itt, off) = self.writes[i];
            (itt, RESERVED_TAG, off, 4096)
        } else {
            return;
        };
        let n = n.min(want as usize);
        let mut data_sn = 0;
        let mut pos = 0usize;
        // Send the whole burst in `n`-byte PDUs (or mutate one field).
        let chunk = n.max(1);
        loop {
            let this = chunk.min(want as usize - pos);
            let last = pos + this >= want as usize;
            let pdu = Pdu::DataOut(DataOut {
                final_bit: if sel & 0x40 != 0 { !last } else { last },
                lun: 0,
                itt,
                ttt: if sel & 0x20 != 0 { ttt ^ 0x100 } else { ttt },
                exp_stat_sn: self.exp_stat_sn,
                data_sn: if sel & 0x10 != 0 {
                    data_sn + 1
                } else {
                    data_sn
                },
                buffer_offset: offset
                    .wrapping_add(pos as u32)
                    .wrapping_add(u32::from(sel & 0x08 != 0)),
                data: &payload[..this],
            });
            let bytes = self.emit(&pdu);
            self.feed(&bytes);
            data_sn += 1;
            pos += this;
            if last || this == 0 || self.dead || data_sn > 64 {
                break;
            }
        }
        if sel & 1 == 0 && !self.r2ts.is_empty() {
            let i = usize::from(sel >> 1) % self.r2ts.len();
            self.r2ts.swap_remove(i);
        }
    }

    fn mutate(&mut self, sel: u8, arg: u8) {
        let now = self.now;
        match sel % 8 {
            0..=4 if !self.tasks.is_empty() => {
                let i = usize::from(arg) % self.tasks.len();
                let (task, read_len, write_len) = self.tasks[i];
                let status = ScsiStatus {
                    status: if arg & 0x80 != 0 { 2 } else { 0 },
                    residual: if arg & 0x40 != 0 {
                        Residual::Underflow(u32::from(arg))
                    } else {
                        Residual::None
                    },
                };
                let sense = [
                    0x70u8, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
                ];
                let r = match sel % 8 {
                    0 => self
                        .conn
                        .respond(task, status, &sense[..usize::from(arg & 1) * 18]),
                    1 => {
                        let len = read_len.min(IO as u32).min(u32::from(arg) * 64);
                        self.conn
                            .send_data_in(task, 0, len, (arg & 2 != 0).then_some(status))
                    }
                    2 => self.conn.request_remaining_data(task),
                    3 => {
                        let off = u32::from(arg) * 16;
                        self.conn
                            .request_data_out(task, off, write_len.saturating_sub(off))
                    }
                    _ => self.conn.abort_task(task),
                };
                if r.is_err() || sel % 8 == 0 || sel % 8 == 4 {
                    self.tasks.swap_remove(i);
                }
            }
            5 if !self.tmfs.is_empty() => {
                let itt = self.tmfs.swap_remove(0);
                let _ = self
                    .conn
                    .respond_task_mgmt(itt, TmfResponse::from_u8(arg % 8));
            }
            6 if self.logout => {
                self.logout = false;
                let code = if arg & 1 == 0 {
                    LogoutResponseCode::Closed
                } else {
                    LogoutResponseCode::CleanupFailed
                };
                let _ = self.conn.respond_logout(code);
            }
            _ => {
                let _ = self.conn.request_logout(now, u16::from(arg));
            }
        }
        self.drain();
    }

    fn other(&mut self, kind: u8, arg: u8) {
        let itt = self.next_itt();
        let pdu = match kind % 7 {
            0 => Pdu::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt: if arg & 1 != 0 { RESERVED_TAG } else { itt },
                ttt: match (arg & 6, self.ping_ttt) {
                    (2, Some(t)) => t,
                    (4, _) => u32::from(arg),
                    _ => RESERVED_TAG,
                },
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: &[0x11; 64][..usize::from(arg >> 2)],
            }),
            1 => Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: TmfFunction::from_u8(arg % 9),
                lun: 0,
                itt,
                referenced_task_tag: u32::from(arg >> 4),
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                ref_cmd_sn: self.cmd_sn.wrapping_sub(1),
                exp_data_sn: 0,
            }),
            2 => {
                self.cmd_sn = self.cmd_sn.wrapping_add(1);
                let data: &[u8] = match arg % 3 {
                    0 => b"SendTargets=All\0",
                    1 => b"SendTargets=\0",
                    _ => b"X-foo=bar\0MaxBurstLength=512\0",
                };
                Pdu::TextRequest(TextRequest {
                    immediate: false,
                    flags: TextFlags::FINAL,
                    lun: 0,
                    itt,
                    ttt: RESERVED_TAG,
                    cmd_sn: self.cmd_sn.wrapping_sub(1),
                    exp_stat_sn: self.exp_stat_sn,
                    data,
                })
            }
            3 => Pdu::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: match arg % 3 {
                    0 => LogoutReason::CloseSession,
                    1 => LogoutReason::CloseConnection,
                    _ => LogoutReason::RemoveConnectionForRecovery,
                },
                itt,
                cid: u16::from(arg >> 6),
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            4 => Pdu::LoginRequest(LoginRequest {
                cont: false,
                csg: Stage::LoginOperational,
                nsg: Some(Stage::FullFeature),
                version_max: 0,
                version_min: 0,
                isid: [0x40, 0, 0, 0, 0, 1],
                tsih: 7,
                itt,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: &[],
            }),
            _ => Pdu::NopOut(NopOut {
                immediate: false,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: self.cmd_sn.wrapping_add(u32::from(arg)),
                exp_stat_sn: self.exp_stat_sn,
                data: &[],
            }),
        };
        let bytes = self.emit(&pdu);
        self.feed(&bytes);
    }

    fn raw(&mut self, bytes: &[u8], corrupt: bool) {
        // Frame the bytes with our digests so they reach the PDU parsers.
        let mut v = bytes.to_vec();
        if v.len() >= 48 {
            let dlen = (v.len() - 48).min(0xff_ffff);
            v[4] = 0;
            v[5..8].copy_from_slice(&(dlen as u32).to_be_bytes()[1..]);
            let mut framed = v[..48].to_vec();
            if self.digests.header {
                let mut h = iscsi_proto::digest::header_digest(&framed);
                if corrupt {
                    h ^= 1;
                }
                framed.extend_from_slice(&h.to_le_bytes());
            }
            let data = &v[48..48 + dlen];
            framed.extend_from_slice(data);
            framed.extend_from_slice(
                wire::DataTrailer::new(
                    data,
                    Digests {
                        header: false,
                        data: self.digests.data,
                    },
                )
                .as_bytes(),
            );
            v = framed;
        }
        self.feed(&v);
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(rest.len());
    let (a, b) = rest.split_at(n);
    *rest = b;
    a
}

fuzz_target!(|data: &[u8]| {
    let Some((&bits, mut rest)) = data.split_first() else {
        return;
    };
    let mut cfg = ConnConfig::default();
    cfg.queue_depth = [1, 2, 4, 6][usize::from(bits >> 2 & 3)];
    cfg.login.initial_r2t = bits & 1 == 0;
    cfg.login.max_outstanding_r2t = 4;
    cfg.login.max_recv_data_segment_length = 2048;
    if bits & 0x10 != 0 {
        cfg.nop_interval_ms = 100;
        cfg.nop_timeout_ms = 50;
    }
    if bits & 0x20 != 0 {
        cfg.login.max_burst_length = 8192;
        cfg.login.first_burst_length = 4096;
    }
    let challenge = ChapChallenge {
        id: 1,
        challenge: [3; 16],
    };
    let mut h = Harness {
        conn: Connection::new(cfg, challenge, Timestamp(0)),
        hooks: FuzzHooks,
        now: Timestamp(0),
        io: vec![0x3c; IO],
        tasks: Vec::new(),
        tmfs: Vec::new(),
        logout: false,
        r2ts: Vec::new(),
        writes: Vec::new(),
        ping_ttt: None,
        cmd_sn: 1,
        exp_stat_sn: 0,
        itt: 0,
        digests: Digests::NONE,
        dead: false,
        hdr: vec![0u8; BUF + 64],
        pdu: Vec::with_capacity(IO + 64),
    };
    let mut steps = 0;
    let mut logged_in = false;
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        steps += 1;
        if h.dead || steps > 128 {
            break;
        }
        let mut take = |n: usize| take(&mut rest, n);
        match op % 8 {
            0 => {
                let k = take(1).first().copied().unwrap_or(0);
                // One scripted login per input (op 5 sends Login Requests later on).
                if !logged_in {
                    logged_in = true;
                    h.login(k | if bits & 2 != 0 { 3 } else { 0 });
                }
            }
            1 => {
                let l = take(2);
                let len = if l.len() == 2 {
                    usize::from(u16::from_be_bytes([l[0], l[1]])) % 4096
                } else {
                    0
                };
                let b = take(len).to_vec();
                h.raw(&b, op & 0x80 != 0);
            }
            2 => {
                let a = take(3);
                if a.len() == 3 {
                    let len = u16::from_be_bytes([a[1], a[2]]) % 8192;
                    let imm = take(usize::from(len % 2048)).to_vec();
                    h.command(a[0], len, &imm);
                }
            }
            3 => {
                let a = take(2);
                if a.len() == 2 {
                    h.data_out(a[0], a[1]);
                }
            }
            4 => {
                let a = take(2);
                if a.len() == 2 {
                    h.mutate(a[0], a[1]);
                }
            }
            5 => {
                let a = take(2);
                if a.len() == 2 {
                    h.other(a[0], a[1]);
                }
            }
            6 => {
                let ms = take(1).first().copied().unwrap_or(0);
                h.now = h.now.add_millis(u64::from(ms) * 4);
                if h.conn.poll_timeout().is_some_and(|t| t <= h.now) {
                    h.conn.handle_timeout(h.now);
                }
                h.drain();
            }
            _ => {
                // Deliver a raw PDU in two parts.
                let l = take(1).first().copied().unwrap_or(0);
                let b = take(48 + usize::from(l)).to_vec();
                let cut = usize::from(l).min(b.len());
                let mut acc = b[..cut].to_vec();
                h.feed(&acc);
                acc.extend_from_slice(&b[cut..]);
                h.feed(&acc);
            }
        }
    }
    // Bounded state at the end, whatever happened.
    assert!(h.conn.task_count() <= TASKS);
});
