//! Two-ended tests: the test [`Initiator`] drives a target [`Connection`] byte for byte,
//! with simulated time (quinn-proto's `Pair`).

extern crate std;

use std::vec;
use std::vec::Vec;

use super::initiator::{CommandSpec, Initiator, find_key, write_text};
use super::*;
use crate::login::discovery::{Portal, TargetInfo};
use crate::login::{
    AuthPolicy, Authorization, ChapChallenge, ChapCredentials, JoinDecision, LoginHooks,
    SessionType,
};
use crate::wire::{
    self, DataInFlags, Digests, LogoutReason, LogoutResponseCode, Pdu, RESERVED_TAG, RejectReason,
    ResponseFlags, Stage, TmfFunction, TmfResponse,
};

const TARGET: &str = "iqn.2026-11.org.example:disk1";
const INITIATOR: &str = "iqn.2026-11.org.example:host";
const TASKS: usize = 8;

struct TestHooks;

impl LoginHooks for TestHooks {
    fn authorize(
        &mut self,
        _initiator_name: &str,
        target_name: Option<&str>,
        session_type: SessionType,
    ) -> Authorization {
        match (session_type, target_name) {
            (SessionType::Discovery, _) => Authorization::Allowed(AuthPolicy::None),
            (SessionType::Normal, Some(TARGET)) => Authorization::Allowed(AuthPolicy::None),
            _ => Authorization::TargetNotFound,
        }
    }

    fn chap_account(&mut self, _t: Option<&str>, _user: &str) -> Option<ChapCredentials> {
        None
    }

    fn chap_mutual_account(&mut self, _t: Option<&str>) -> Option<ChapCredentials> {
        None
    }

    fn join_session(&mut self, _i: &str, _isid: [u8; 6], _tsih: u16, _cid: u16) -> JoinDecision {
        JoinDecision::DoesNotExist
    }

    fn allocate_tsih(&mut self, _i: &str, _isid: [u8; 6]) -> Option<u16> {
        Some(0x1234)
    }
}

impl Hooks for TestHooks {
    fn with_targets(&mut self, _initiator_name: &str, f: &mut dyn FnMut(&[TargetInfo<'_>])) {
        let portals = [Portal {
            address: "192.0.2.1:3260",
            tpgt: 1,
        }];
        f(&[TargetInfo {
            name: TARGET,
            portals: &portals,
        }]);
    }
}

/// An owned copy of one target PDU.
#[derive(Clone, Debug)]
struct Rx(Vec<u8>);

impl Rx {
    fn pdu(&self, digests: Digests) -> Pdu<'_> {
        Pdu::parse(&self.0, digests).expect("target PDU parses").0
    }
}

struct Pair {
    t: Connection<TASKS, 8192>,
    ini: Initiator,
    hooks: TestHooks,
    now: Timestamp,
    /// One buffer per task slot (the runtime's I/O buffers).
    bufs: Vec<Vec<u8>>,
    events: Vec<Event>,
    /// Bytes sent by the target and not yet read by the initiator.
    wire: Vec<u8>,
    /// The last error from handle_input.
    error: Option<ConnError>,
    /// Tasks reported finished by `Transmit::finished`.
    finished: Vec<TaskHandle>,
}

fn config() -> ConnConfig {
    let d = ConnConfig::default();
    ConnConfig {
        queue_depth: 4,
        login: crate::login::LoginConfig {
            max_outstanding_r2t: 4,
            ..d.login.clone()
        },
        ..d
    }
}

impl Pair {
    fn new(config: ConnConfig) -> Pair {
        let challenge = ChapChallenge {
            id: 1,
            challenge: [7u8; 16],
        };
        Pair {
            t: Connection::new(config, challenge, Timestamp(0)),
            ini: Initiator::new([0x40, 0, 1, 2, 3, 4], 1),
            hooks: TestHooks,
            now: Timestamp(0),
            bufs: vec![vec![0u8; 1 << 16]; TASKS],
            events: Vec::new(),
            wire: Vec::new(),
            error: None,
            finished: Vec::new(),
        }
    }

    /// Feed bytes to the target the way a runtime does; returns the Ingress kinds seen.
    fn send(&mut self, bytes: &[u8]) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            match self
                .t
                .handle_input(self.now, &bytes[pos..], &mut self.hooks)
            {
                Ok(Ingress::Done { consumed }) => {
                    kinds.push("done");
                    pos += consumed;
                }
                Ok(Ingress::Data {
                    consumed,
                    task,
                    offset,
                    data,
                }) => {
                    kinds.push("data");
                    let off = offset as usize;
                    self.bufs[task.index()][off..off + data.len()].copy_from_slice(data);
                    pos += consumed;
                }
                Ok(Ingress::NeedMore) => {
                    kinds.push("more");
                    break;
                }
                Ok(Ingress::Blocked) => {
                    kinds.push("blocked");
                    self.flush();
                }
                Err(e) => {
                    kinds.push("error");
                    self.error = Some(e);
                    while let Some(e) = self.t.poll_event() {
                        self.events.push(e);
                    }
                    break;
                }
            }
            while let Some(e) = self.t.poll_event() {
                self.events.push(e);
            }
        }
        kinds
    }

    /// Drain the target's output onto the wire, then its events.
    fn flush(&mut self) {
        let mut hdr = vec![0u8; 8192 + 64];
        while let Some(t) = self
            .t
            .poll_transmit(self.now, &mut hdr)
            .expect("buffer big enough")
        {
            self.wire.extend_from_slice(&hdr[..t.len]);
            self.finished.extend(t.finished);
            if let Some(d) = t.data {
                let data = &self.bufs[d.task.index()][d.offset as usize..][..d.len as usize];
                self.wire.extend_from_slice(data);
                self.wire.extend_from_slice(d.trailer(data).as_bytes());
            }
        }
        while let Some(e) = self.t.poll_event() {
            self.events.push(e);
        }
    }

    /// Everything the target sent, split into PDUs and read by the initiator.
    fn recv(&mut self) -> Vec<Rx> {
        self.flush();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.wire.len() {
            let n = match wire::pdu_len(&self.wire[pos..], self.ini.digests()) {
                wire::Status::Complete(n) => n,
                wire::Status::Partial => panic!("partial PDU on the wire"),
            };
            let bytes = self.wire[pos..pos + n].to_vec();
            let (_, used) = self
                .ini
                .receive(&bytes)
                .expect("initiator parses target PDU");
            assert_eq!(used, n);
            out.push(Rx(bytes));
            pos += n;
        }
        self.wire.clear();
        out
    }

    fn take_events(&mut self) -> Vec<Event> {
        core::mem::take(&mut self.events)
    }

    /// Log in with AuthMethod=None, then the operational `keys`.
    fn login(&mut self, session: SessionType, keys: &[(&str, &str)]) -> Vec<Rx> {
        let mut text = [0u8; 1024];
        let mut sec: Vec<(&str, &str)> = vec![("InitiatorName", INITIATOR), ("AuthMethod", "None")];
        match session {
            SessionType::Normal => sec.push(("TargetName", TARGET)),
            SessionType::Discovery => sec.push(("SessionType", "Discovery")),
        }
        let n = write_text(&mut text, &sec).unwrap();
        let mut pdu = [0u8; 2048];
        let len = self
            .ini
            .login(
                &mut pdu,
                Stage::SecurityNegotiation,
                Some(Stage::LoginOperational),
                &text[..n],
            )
            .unwrap();
        self.send(&pdu[..len]);
        let mut all = self.recv();
        let n = write_text(&mut text, keys).unwrap();
        let len = self
            .ini
            .login(
                &mut pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .unwrap();
        self.send(&pdu[..len]);
        all.extend(self.recv());
        all
    }

    fn login_normal(&mut self, keys: &[(&str, &str)]) {
        let rsps = self.login(SessionType::Normal, keys);
        let Pdu::LoginResponse(last) = rsps.last().unwrap().pdu(Digests::NONE) else {
            panic!("no login response");
        };
        assert!(last.status.is_success(), "login failed: {:?}", last.status);
        assert_eq!(last.nsg, Some(Stage::FullFeature));
        assert!(self.t.is_full_feature());
        assert_eq!(self.take_events(), vec![Event::LoggedIn]);
        let d = self.t.digests();
        self.ini.set_digests(d);
    }

    fn command(&mut self, spec: &CommandSpec<'_>) -> (u32, Vec<&'static str>) {
        let mut pdu = vec![0u8; 70_000];
        let (itt, len) = self.ini.command(&mut pdu, spec).unwrap();
        (itt, self.send(&pdu[..len]))
    }

    #[allow(clippy::too_many_arguments)]
    fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        data: &[u8],
        final_bit: bool,
    ) -> Vec<&'static str> {
        let mut pdu = vec![0u8; 70_000];
        let len = self
            .ini
            .data_out(&mut pdu, itt, ttt, 0, data_sn, offset, data, final_bit)
            .unwrap();
        self.send(&pdu[..len])
    }

    fn command_event(&mut self) -> Command {
        let evs = self.take_events();
        match evs.first() {
            Some(Event::Command(c)) => *c,
            other => panic!("expected a Command event, got {other:?}"),
        }
    }
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];

fn default_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "4096"),
    ]
}

fn sense_of(rx: &Rx, d: Digests) -> Vec<u8> {
    match rx.pdu(d) {
        Pdu::ScsiResponse(r) => r.sense().unwrap().to_vec(),
        other => panic!("not a SCSI Response: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn login_enters_full_feature_phase_with_negotiated_params() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let params = p.t.params();
    assert_eq!(params.max_xmit_data_segment_length, 4096);
    let outcome = p.t.login_outcome().unwrap();
    assert_eq!(outcome.initiator_name.as_str(), INITIATOR);
    assert_eq!(outcome.tsih, 0x1234);
    let s = p.t.session().unwrap();
    assert_eq!(s.window.exp_cmd_sn(), 1);
    assert_eq!(s.window.max_cmd_sn(), 4);
    assert_eq!(p.ini.max_cmd_sn(), 4);
    assert_eq!(p.ini.tsih(), 0x1234);
}

#[test]
fn read_is_segmented_at_mrdsl_with_status_in_last_data_in() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let stat_sn = p.t.stat_sn();
    let (itt, _) = p.command(&CommandSpec::read(0, &READ10, 10_000));
    let cmd = p.command_event();
    assert_eq!(
        (cmd.itt, cmd.read_len, cmd.dir),
        (itt, 10_000, Direction::Read)
    );
    assert_eq!(&cmd.cdb.as_bytes()[..10], &READ10);
    for (i, b) in p.bufs[cmd.task.index()][..10_000].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    p.t.send_data_in(cmd.task, 0, 10_000, Some(ScsiStatus::GOOD))
        .unwrap();
    let rx = p.recv();
    assert_eq!(rx.len(), 3);
    let mut got = Vec::new();
    for (i, r) in rx.iter().enumerate() {
        let Pdu::DataIn(d) = r.pdu(Digests::NONE) else {
            panic!("expected Data-In")
        };
        assert_eq!(d.itt, itt);
        assert_eq!(d.data_sn, i as u32);
        assert_eq!(d.buffer_offset, i as u32 * 4096);
        let last = i == 2;
        assert_eq!(d.flags.contains(DataInFlags::FINAL), last);
        assert_eq!(d.flags.contains(DataInFlags::STATUS), last);
        if last {
            assert_eq!(d.stat_sn, stat_sn);
            assert_eq!(d.status, 0);
        }
        got.extend_from_slice(d.data);
    }
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(p.t.stat_sn(), stat_sn.wrapping_add(1));
    assert_eq!(p.t.task_count(), 0);
    assert_eq!(p.finished, vec![cmd.task]);
    // The handle is stale now.
    assert_eq!(
        p.t.respond(cmd.task, ScsiStatus::GOOD, &[]),
        Err(TaskError::Stale)
    );
}

#[test]
fn data_in_honours_max_burst_length() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys.push(("MaxBurstLength", "6000"));
    p.login_normal(&keys);
    let _ = p.command(&CommandSpec::read(0, &READ10, 10_000));
    let cmd = p.command_event();
    p.t.send_data_in(cmd.task, 0, 10_000, Some(ScsiStatus::GOOD))
        .unwrap();
    let shape: Vec<(u32, usize, bool)> = p
        .recv()
        .iter()
        .map(|r| match r.pdu(Digests::NONE) {
            Pdu::DataIn(d) => (
                d.buffer_offset,
                d.data.len(),
                d.flags.contains(DataInFlags::FINAL),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        vec![(0, 4096, false), (4096, 1904, true), (6000, 4000, true)]
    );
}

#[test]
fn residual_underflow_and_sense_data() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    // Underflow: 512 of 4096 bytes, status in the Data-In.
    let _ = p.command(&CommandSpec::read(0, &READ10, 4096));
    let cmd = p.command_event();
    p.t.send_data_in(
        cmd.task,
        0,
        512,
        Some(ScsiStatus {
            status: 0,
            residual: Residual::Underflow(3584),
        }),
    )
    .unwrap();
    let rx = p.recv();
    let Pdu::DataIn(d) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert!(
        d.flags
            .contains(DataInFlags::UNDERFLOW | DataInFlags::STATUS)
    );
    assert_eq!(d.residual, 3584);
    // Data then CHECK CONDITION with sense: the status goes in a SCSI Response.
    let (itt, _) = p.command(&CommandSpec::read(0, &READ10, 4096));
    let cmd = p.command_event();
    p.t.send_data_in(cmd.task, 0, 1024, None).unwrap();
    let sense = [
        0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0,
    ];
    p.t.respond(
        cmd.task,
        ScsiStatus {
            status: 2,
            residual: Residual::Underflow(3072),
        },
        &sense,
    )
    .unwrap();
    let rx = p.recv();
    assert_eq!(rx.len(), 2);
    let Pdu::DataIn(d) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert!(d.flags.contains(DataInFlags::FINAL));
    assert!(!d.flags.contains(DataInFlags::STATUS));
    let Pdu::ScsiResponse(r) = rx[1].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.itt, r.status, r.residual), (itt, 2, 3072));
    assert!(r.flags.contains(ResponseFlags::UNDERFLOW));
    assert_eq!(r.exp_data_sn, 1);
    assert_eq!(r.sense().unwrap(), &sense);
}

#[test]
fn write_with_immediate_data_and_r2ts() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys.extend([("MaxBurstLength", "4096"), ("MaxOutstandingR2T", "2")]);
    p.login_normal(&keys);
    let payload: Vec<u8> = (0..16_384u32).map(|i| (i * 7) as u8).collect();
    let (itt, kinds) = p.command(&CommandSpec::write(0, &WRITE10, 16_384, &payload[..1024]));
    assert_eq!(kinds, vec!["data"]);
    let cmd = p.command_event();
    assert_eq!((cmd.immediate_len, cmd.unsolicited_len), (1024, 1024));
    p.t.request_remaining_data(cmd.task).unwrap();
    let rx = p.recv();
    // MaxOutstandingR2T = 2: two R2Ts of MaxBurstLength.
    let r2ts: Vec<(u32, u32, u32, u32)> = rx
        .iter()
        .map(|r| match r.pdu(Digests::NONE) {
            Pdu::R2t(r) => (r.r2t_sn, r.buffer_offset, r.desired_len, r.ttt),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(r2ts.len(), 2);
    assert_eq!((r2ts[0].0, r2ts[0].1, r2ts[0].2), (0, 1024, 4096));
    assert_eq!((r2ts[1].0, r2ts[1].1, r2ts[1].2), (1, 5120, 4096));
    assert_ne!(r2ts[0].3, r2ts[1].3);
    // Answer the R2Ts as they come, 2048 bytes per Data-Out.
    let mut pending = r2ts;
    let mut seen = 2;
    while let Some((_, off, len, ttt)) = pending.first().copied() {
        pending.remove(0);
        let mut sn = 0;
        let mut o = off;
        while o < off + len {
            let n = (off + len - o).min(2048);
            let fin = o + n == off + len;
            let kinds = p.data_out(itt, ttt, sn, o, &payload[o as usize..(o + n) as usize], fin);
            assert_eq!(kinds, vec!["data"]);
            sn += 1;
            o += n;
        }
        for r in p.recv() {
            let Pdu::R2t(r) = r.pdu(Digests::NONE) else {
                panic!()
            };
            assert_eq!(r.r2t_sn, seen);
            seen += 1;
            pending.push((r.r2t_sn, r.buffer_offset, r.desired_len, r.ttt));
        }
    }
    assert_eq!(seen, 4);
    assert_eq!(
        p.take_events(),
        vec![Event::DataOutComplete { task: cmd.task }]
    );
    assert_eq!(&p.bufs[cmd.task.index()][..16_384], &payload[..]);
    p.t.respond(cmd.task, ScsiStatus::GOOD, &[]).unwrap();
    let rx = p.recv();
    let Pdu::ScsiResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.itt, r.status, r.exp_data_sn), (itt, 0, 4));
    assert_eq!(p.finished, vec![cmd.task]);
}

#[test]
fn unsolicited_data_up_to_first_burst_length() {
    let mut c = config();
    c.login.initial_r2t = false;
    let mut p = Pair::new(c);
    let mut keys = default_keys();
    keys.extend([("InitialR2T", "No"), ("FirstBurstLength", "8192")]);
    p.login_normal(&keys);
    assert!(!p.t.params().initial_r2t);
    let payload = vec![0x5au8; 12_288];
    let mut spec = CommandSpec::write(0, &WRITE10, 12_288, &payload[..4096]);
    spec.final_bit = false;
    let (itt, _) = p.command(&spec);
    let cmd = p.command_event();
    assert_eq!(cmd.unsolicited_len, 8192);
    // Asking early defers the R2T until the unsolicited burst ends.
    p.t.request_remaining_data(cmd.task).unwrap();
    assert!(p.recv().is_empty());
    assert_eq!(
        p.data_out(itt, RESERVED_TAG, 0, 4096, &payload[4096..8192], true),
        vec!["data"]
    );
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.buffer_offset, r.desired_len), (8192, 4096));
    p.data_out(itt, r.ttt, 0, 8192, &payload[8192..], true);
    assert_eq!(
        p.take_events(),
        vec![Event::DataOutComplete { task: cmd.task }]
    );
}

#[test]
fn unsolicited_data_beyond_first_burst_fails_the_task() {
    let mut c = config();
    c.login.initial_r2t = false;
    let mut p = Pair::new(c);
    let mut keys = default_keys();
    keys.extend([("InitialR2T", "No"), ("FirstBurstLength", "4096")]);
    p.login_normal(&keys);
    let payload = vec![1u8; 8192];
    let mut spec = CommandSpec::write(0, &WRITE10, 8192, &[]);
    spec.final_bit = false;
    let (itt, _) = p.command(&spec);
    let cmd = p.command_event();
    assert_eq!(
        p.data_out(itt, RESERVED_TAG, 0, 0, &payload[..4100], true),
        vec!["done"]
    );
    assert_eq!(
        p.take_events(),
        vec![Event::TaskFailed {
            task: cmd.task,
            reason: TaskFailure::DataOutProtocol
        }]
    );
    let rx = p.recv();
    assert_eq!(rx.len(), 2);
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::ProtocolError);
    assert_eq!(rj.rejected_header().unwrap().itt(), itt);
    let sense = sense_of(&rx[1], Digests::NONE);
    assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x4b, 0x00));
    assert_eq!(
        p.t.respond(cmd.task, ScsiStatus::GOOD, &[]),
        Err(TaskError::Stale)
    );
}

#[test]
fn data_out_beyond_expected_length_is_rejected() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let (itt, _) = p.command(&CommandSpec::write(0, &WRITE10, 1024, &[]));
    let cmd = p.command_event();
    p.t.request_remaining_data(cmd.task).unwrap();
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(r.desired_len, 1024);
    p.data_out(itt, r.ttt, 0, 0, &[0u8; 2048], true);
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::ProtocolError);
    let Pdu::ScsiResponse(resp) = rx[1].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((resp.itt, resp.status), (itt, 2));
    assert!(matches!(
        p.take_events().as_slice(),
        [Event::TaskFailed {
            reason: TaskFailure::DataOutProtocol,
            ..
        }]
    ));
    // Unsolicited Data-Out when InitialR2T=Yes: Reject, no task harm.
    let (itt2, _) = p.command(&CommandSpec::write(0, &WRITE10, 1024, &[]));
    let _ = p.command_event();
    p.data_out(itt2, RESERVED_TAG, 0, 0, &[0u8; 512], true);
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::ProtocolError);
    // Unknown ITT and unknown TTT: Invalid PDU field.
    p.data_out(0xdead, 5, 0, 0, &[0u8; 512], true);
    p.data_out(itt2, 0x0bad_0000, 0, 0, &[0u8; 512], true);
    let reasons: Vec<RejectReason> = p
        .recv()
        .iter()
        .map(|r| match r.pdu(Digests::NONE) {
            Pdu::Reject(rj) => rj.reason,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, vec![RejectReason::InvalidPduField; 2]);
    assert!(p.t.is_full_feature());
}

/// Sends `pdus` (DataSN, offset, length, F) for a 1024-byte WRITE answered by one R2T
/// and returns the command, its ITT, the R2T's TTT and the PDUs that follow.
fn write_with_data_outs(
    p: &mut Pair,
    pdus: &[(u32, u32, usize, bool)],
) -> (Command, u32, u32, Vec<Rx>) {
    let (itt, _) = p.command(&CommandSpec::write(0, &WRITE10, 1024, &[]));
    let cmd = p.command_event();
    p.t.request_remaining_data(cmd.task).unwrap();
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    for &(sn, offset, len, f) in pdus {
        let _ = p.data_out(itt, r.ttt, sn, offset, &vec![0xa6; len], f);
    }
    (cmd, itt, r.ttt, p.recv())
}

#[test]
fn data_sn_errors_end_the_task_like_a_digest_error() {
    // The four cases of libiscsi's iSCSIDataSnInvalid: two PDUs with DataSN 0, DataSN 27,
    // DataSN -1, and DataSN 1 then 0. Each ends the command with CHECK CONDITION (ABORTED
    // COMMAND, PROTOCOL SERVICE CRC ERROR) after the F bit; the connection stays up.
    let cases: [&[(u32, u32, usize, bool)]; 4] = [
        &[(0, 0, 512, false), (0, 512, 512, true)],
        &[(27, 0, 1024, true)],
        &[(u32::MAX, 0, 1024, true)],
        &[(1, 0, 512, false), (0, 512, 512, true)],
    ];
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    for pdus in cases {
        let (cmd, itt, _, rx) = write_with_data_outs(&mut p, pdus);
        assert_eq!(rx.len(), 1, "{pdus:?}");
        let Pdu::ScsiResponse(resp) = rx[0].pdu(Digests::NONE) else {
            panic!()
        };
        assert_eq!((resp.itt, resp.status), (itt, 2));
        let sense = sense_of(&rx[0], Digests::NONE);
        assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x47, 0x05));
        assert_eq!(
            p.take_events(),
            vec![Event::TaskFailed {
                task: cmd.task,
                reason: TaskFailure::DataSequence
            }]
        );
        assert_eq!(
            p.t.respond(cmd.task, ScsiStatus::GOOD, &[]),
            Err(TaskError::Stale)
        );
    }
    assert!(p.t.is_full_feature());
    assert!(p.error.is_none());
}

#[test]
fn data_sn_error_waits_for_the_rest_of_the_burst() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    // A gap in the first PDU, F bit not yet seen: no answer until the burst ends.
    let (cmd, itt, ttt, rx) = write_with_data_outs(&mut p, &[(2, 0, 256, false)]);
    assert!(rx.is_empty());
    assert_eq!(
        p.take_events(),
        vec![Event::TaskFailed {
            task: cmd.task,
            reason: TaskFailure::DataSequence
        }]
    );
    // The rest arrives out of order too; it is drained, not delivered.
    assert_eq!(p.data_out(itt, ttt, 9, 256, &[1; 256], false), vec!["done"]);
    assert!(p.recv().is_empty());
    assert_eq!(p.data_out(itt, ttt, 1, 768, &[1; 256], true), vec!["done"]);
    let rx = p.recv();
    assert_eq!(rx.len(), 1);
    let sense = sense_of(&rx[0], Digests::NONE);
    assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x47, 0x05));
    assert!(p.take_events().is_empty());
    // The ITT is free again and the connection serves the next command.
    let (_, _, _, rx) = write_with_data_outs(&mut p, &[(0, 0, 1024, true)]);
    assert!(rx.is_empty());
    assert!(p.t.is_full_feature());
}

#[test]
fn cmd_sn_window_drops_out_of_window_and_duplicates() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    // Beyond MaxCmdSN (4): dropped silently.
    p.ini.set_cmd_sn(5);
    let _ = p.command(&CommandSpec::read(0, &READ10, 0));
    assert!(p.take_events().is_empty());
    assert!(p.recv().is_empty());
    // In order: accepted.
    p.ini.set_cmd_sn(1);
    let _ = p.command(&CommandSpec::read(0, &READ10, 0));
    let c1 = p.command_event();
    assert_eq!(c1.cmd_sn, 1);
    // Duplicate CmdSN 1: dropped.
    p.ini.set_cmd_sn(1);
    let _ = p.command(&CommandSpec::read(0, &READ10, 0));
    assert!(p.take_events().is_empty());
    // Fill the window (depth 4).
    for _ in 0..3 {
        let _ = p.command(&CommandSpec::read(0, &READ10, 0));
        let _ = p.command_event();
    }
    assert_eq!(p.t.session().unwrap().window.max_cmd_sn(), 4);
    let _ = p.command(&CommandSpec::read(0, &READ10, 0));
    assert!(
        p.take_events().is_empty(),
        "CmdSN 5 is outside a full window"
    );
    // An immediate command is not subject to the window.
    let mut spec = CommandSpec::read(0, &READ10, 0);
    spec.immediate = true;
    p.ini.set_cmd_sn(5);
    let _ = p.command(&spec);
    let imm = p.command_event();
    assert!(imm.immediate);
    // Completing a command opens the window by one.
    p.t.respond(c1.task, ScsiStatus::GOOD, &[]).unwrap();
    let rx = p.recv();
    let Pdu::ScsiResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.exp_cmd_sn, r.max_cmd_sn), (5, 5));
    assert_eq!(p.ini.max_cmd_sn(), 5);
}

#[test]
fn itt_in_use_is_rejected_and_task_set_full_is_answered() {
    let mut c = config();
    c.queue_depth = 32;
    let mut p = Pair::new(c);
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 128];
    let (_, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::read(0, &READ10, 0))
        .unwrap();
    p.send(&pdu[..len]);
    let _ = p.command_event();
    // Same ITT, next CmdSN.
    let cmd_sn = p.ini.cmd_sn();
    pdu[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    p.send(&pdu[..len]);
    assert!(p.take_events().is_empty());
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::InvalidPduField);
    // Fill the table (8 slots, one used).
    for _ in 0..7 {
        let _ = p.command(&CommandSpec::read(0, &READ10, 0));
        let _ = p.command_event();
    }
    assert_eq!(p.t.task_count(), TASKS);
    let (itt, _) = p.command(&CommandSpec::read(0, &READ10, 0));
    assert!(p.take_events().is_empty());
    let rx = p.recv();
    let Pdu::ScsiResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.itt, r.status), (itt, 0x28));
}

#[test]
fn nop_out_ping_is_echoed_and_bogus_ttt_rejected() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 256];
    let itt = p.ini.next_itt();
    let stat_sn = p.t.stat_sn();
    let len = p
        .ini
        .nop_out(&mut pdu, itt, RESERVED_TAG, b"ping!")
        .unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::NopIn(n) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(
        (n.itt, n.ttt, n.stat_sn, n.data),
        (itt, RESERVED_TAG, stat_sn, &b"ping!"[..])
    );
    // A NOP-Out answering a ping we never sent.
    let len = p.ini.nop_out(&mut pdu, RESERVED_TAG, 0x77, &[]).unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::InvalidPduField);
    assert_eq!(rj.data, &pdu[..48]);
    // ITT and TTT both reserved: no answer.
    let len = p
        .ini
        .nop_out(&mut pdu, RESERVED_TAG, RESERVED_TAG, &[])
        .unwrap();
    p.send(&pdu[..len]);
    assert!(p.recv().is_empty());
}

#[test]
fn target_pings_when_idle_and_closes_without_answer() {
    let mut c = config();
    c.nop_interval_ms = 1000;
    c.nop_timeout_ms = 500;
    let mut p = Pair::new(c);
    p.login_normal(&default_keys());
    assert_eq!(p.t.poll_timeout(), Some(Timestamp(1000)));
    p.now = Timestamp(1000);
    p.t.handle_timeout(p.now);
    let rx = p.recv();
    let Pdu::NopIn(n) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(n.itt, RESERVED_TAG);
    assert_ne!(n.ttt, RESERVED_TAG);
    assert_eq!(p.t.poll_timeout(), Some(Timestamp(1500)));
    // Answered: the connection stays up and the next ping is an interval away.
    let mut pdu = [0u8; 64];
    let len = p.ini.nop_out(&mut pdu, RESERVED_TAG, n.ttt, &[]).unwrap();
    p.now = Timestamp(1200);
    p.send(&pdu[..len]);
    assert!(p.recv().is_empty());
    assert_eq!(p.t.poll_timeout(), Some(Timestamp(2200)));
    p.now = Timestamp(2200);
    p.t.handle_timeout(p.now);
    assert_eq!(p.recv().len(), 1);
    p.now = Timestamp(2700);
    p.t.handle_timeout(p.now);
    p.flush();
    assert_eq!(
        p.take_events(),
        vec![Event::Closed {
            reason: CloseReason::PingTimeout
        }]
    );
}

#[test]
fn login_pdu_in_full_feature_phase_is_rejected() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 256];
    let len = p
        .ini
        .login(
            &mut pdu,
            Stage::LoginOperational,
            Some(Stage::FullFeature),
            &[],
        )
        .unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::ProtocolError);
    assert!(p.t.is_full_feature());
}

#[test]
fn non_login_pdu_during_login_closes() {
    let mut p = Pair::new(config());
    let mut pdu = [0u8; 128];
    let (_, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::read(0, &READ10, 0))
        .unwrap();
    assert_eq!(p.send(&pdu[..len]), vec!["error"]);
    assert_eq!(p.error, Some(ConnError::Closed(CloseReason::ProtocolError)));
}

#[test]
fn failed_login_sends_status_then_closes() {
    let mut p = Pair::new(config());
    let mut text = [0u8; 256];
    let n = write_text(
        &mut text,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", "iqn.2026-11.org.example:nope"),
            ("AuthMethod", "None"),
        ],
    )
    .unwrap();
    let mut pdu = [0u8; 512];
    let len = p
        .ini
        .login(
            &mut pdu,
            Stage::SecurityNegotiation,
            Some(Stage::LoginOperational),
            &text[..n],
        )
        .unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::LoginResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.status.class, r.status.detail), (2, 3));
    assert_eq!(
        p.take_events(),
        vec![Event::Closed {
            reason: CloseReason::LoginFailed
        }]
    );
}

#[test]
fn login_times_out() {
    let mut p = Pair::new(config());
    assert_eq!(p.t.poll_timeout(), Some(Timestamp(15_000)));
    p.t.handle_timeout(Timestamp(14_999));
    assert!(!p.t.is_closed());
    p.t.handle_timeout(Timestamp(15_000));
    assert_eq!(
        p.t.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::LoginTimeout
        })
    );
}

#[test]
fn header_digest_error_closes() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys[0] = ("HeaderDigest", "CRC32C");
    keys[1] = ("DataDigest", "CRC32C");
    p.login_normal(&keys);
    assert_eq!(p.t.digests(), Digests::ALL);
    let mut pdu = [0u8; 128];
    let (_, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::read(0, &READ10, 512))
        .unwrap();
    // A good command first: digests on both sides work.
    p.send(&pdu[..len]);
    let cmd = p.command_event();
    p.t.send_data_in(cmd.task, 0, 512, Some(ScsiStatus::GOOD))
        .unwrap();
    let rx = p.recv();
    assert!(matches!(rx[0].pdu(Digests::ALL), Pdu::DataIn(_)));
    let (_, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::read(0, &READ10, 512))
        .unwrap();
    pdu[48] ^= 1;
    assert_eq!(p.send(&pdu[..len]), vec!["error"]);
    assert_eq!(p.error, Some(ConnError::Closed(CloseReason::HeaderDigest)));
}

#[test]
fn data_digest_error_rejects_and_fails_the_task() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys[1] = ("DataDigest", "CRC32C");
    p.login_normal(&keys);
    let d = Digests {
        header: false,
        data: true,
    };
    assert_eq!(p.t.digests(), d);
    // A NOP-Out with corrupt ping data: Reject only.
    let mut pdu = vec![0u8; 8192];
    let itt = p.ini.next_itt();
    let len = p.ini.nop_out(&mut pdu, itt, RESERVED_TAG, b"abcd").unwrap();
    pdu[48] ^= 0xff;
    p.send(&pdu[..len]);
    let rx = p.recv();
    assert_eq!(rx.len(), 1);
    let Pdu::Reject(rj) = rx[0].pdu(d) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::DataDigestError);
    // A Data-Out with a corrupt payload: Reject, then CHECK CONDITION once the R2T's data
    // has all arrived.
    let (witt, _) = p.command(&CommandSpec::write(0, &WRITE10, 2048, &[]));
    let cmd = p.command_event();
    p.t.request_remaining_data(cmd.task).unwrap();
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(d) else { panic!() };
    let len = p
        .ini
        .data_out(&mut pdu, witt, r.ttt, 0, 0, 0, &[9u8; 1024], false)
        .unwrap();
    pdu[50] ^= 1;
    assert_eq!(p.send(&pdu[..len]), vec!["done"]);
    assert_eq!(
        p.take_events(),
        vec![Event::TaskFailed {
            task: cmd.task,
            reason: TaskFailure::DataDigest
        }]
    );
    let rx = p.recv();
    assert_eq!(rx.len(), 1, "the response waits for the rest of the R2T");
    // The rest of the sequence is absorbed, then the task ends.
    assert_eq!(
        p.data_out(witt, r.ttt, 1, 1024, &[9u8; 1024], true),
        vec!["done"]
    );
    let rx = p.recv();
    let sense = sense_of(&rx[0], d);
    assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x47, 0x05));
    assert!(p.take_events().is_empty());
    assert_eq!(p.t.task_count(), 0);
}

#[test]
fn data_digest_error_on_immediate_data() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys[1] = ("DataDigest", "CRC32C");
    p.login_normal(&keys);
    let d = p.t.digests();
    let mut pdu = vec![0u8; 8192];
    let (itt, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::write(0, &WRITE10, 512, &[3u8; 512]))
        .unwrap();
    pdu[60] ^= 1;
    assert_eq!(p.send(&pdu[..len]), vec!["done"]);
    // The runtime never sees the command.
    assert!(p.take_events().is_empty());
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(d) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::DataDigestError);
    let Pdu::ScsiResponse(r) = rx[1].pdu(d) else {
        panic!()
    };
    assert_eq!((r.itt, r.status), (itt, 2));
    // The CmdSN was consumed and is retired again.
    let w = p.t.session().unwrap().window;
    assert_eq!((w.exp_cmd_sn(), w.outstanding()), (2, 0));
}

#[test]
fn task_management_and_abort() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let (itt, _) = p.command(&CommandSpec::write(0, &WRITE10, 4096, &[]));
    let cmd = p.command_event();
    p.t.request_remaining_data(cmd.task).unwrap();
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    let mut pdu = [0u8; 128];
    let (tmf_itt, len) = p
        .ini
        .task_mgmt(&mut pdu, TmfFunction::AbortTask, 0, itt, cmd.cmd_sn)
        .unwrap();
    p.send(&pdu[..len]);
    let evs = p.take_events();
    let [Event::TaskMgmt(tmf)] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!(tmf.referenced_task, Some(cmd.task));
    assert_eq!(tmf.function, TmfFunction::AbortTask);
    p.t.abort_task(cmd.task).unwrap();
    p.t.respond_task_mgmt(tmf_itt, TmfResponse::FunctionComplete)
        .unwrap();
    assert_eq!(
        p.t.respond_task_mgmt(tmf_itt, TmfResponse::FunctionComplete),
        Err(StateError::NotPending)
    );
    let rx = p.recv();
    let Pdu::TaskMgmtResponse(tr) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(
        (tr.itt, tr.response),
        (tmf_itt, TmfResponse::FunctionComplete)
    );
    // The R2T already sent is still answered by the initiator; the data is absorbed and
    // the slot freed without a response.
    assert_eq!(p.t.task_count(), 1);
    assert_eq!(
        p.data_out(itt, r.ttt, 0, 0, &[0u8; 4096], true),
        vec!["done"]
    );
    assert!(p.recv().is_empty());
    assert_eq!(p.t.task_count(), 0);
    // TASK REASSIGN is answered by the connection (ErrorRecoveryLevel 0).
    let (itt2, len) = p
        .ini
        .task_mgmt(&mut pdu, TmfFunction::TaskReassign, 0, itt, 0)
        .unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::TaskMgmtResponse(tr) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(
        (tr.itt, tr.response),
        (itt2, TmfResponse::ReassignmentNotSupported)
    );
}

#[test]
fn logout_closes_after_the_response() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 128];
    let (itt, len) = p.ini.logout(&mut pdu, LogoutReason::CloseSession).unwrap();
    p.send(&pdu[..len]);
    let evs = p.take_events();
    assert_eq!(
        evs,
        vec![Event::Logout(Logout {
            itt,
            reason: LogoutReason::CloseSession,
            cid: 0
        })]
    );
    p.t.respond_logout(LogoutResponseCode::Closed).unwrap();
    let rx = p.recv();
    let Pdu::LogoutResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.itt, r.response), (itt, LogoutResponseCode::Closed));
    assert_eq!(
        p.take_events(),
        vec![Event::Closed {
            reason: CloseReason::LoggedOut
        }]
    );
    assert!(p.t.is_closed());
    assert_eq!(p.send(&pdu[..len]), vec!["error"]);
}

#[test]
fn logout_for_recovery_is_refused_at_erl0() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 128];
    let (itt, len) = p
        .ini
        .logout(&mut pdu, LogoutReason::RemoveConnectionForRecovery)
        .unwrap();
    p.send(&pdu[..len]);
    assert!(p.take_events().is_empty());
    let rx = p.recv();
    let Pdu::LogoutResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(
        (r.itt, r.response),
        (itt, LogoutResponseCode::RecoveryNotSupported)
    );
    assert!(p.t.is_full_feature());
}

#[test]
fn async_logout_request_and_deadline() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    p.t.request_logout(p.now, 2).unwrap();
    let rx = p.recv();
    let Pdu::AsyncMessage(a) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(a.event, wire::AsyncEvent::LogoutRequested);
    assert_eq!(a.parameter3, 2);
    assert_eq!(p.t.poll_timeout(), Some(Timestamp(7000)));
    p.t.handle_timeout(Timestamp(7000));
    assert_eq!(
        p.t.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::LogoutTimeout
        })
    );
}

#[test]
fn discovery_send_targets() {
    let mut p = Pair::new(config());
    let rsps = p.login(SessionType::Discovery, &default_keys());
    let Pdu::LoginResponse(last) = rsps.last().unwrap().pdu(Digests::NONE) else {
        panic!()
    };
    assert!(last.status.is_success());
    assert_eq!(p.take_events(), vec![Event::LoggedIn]);
    let mut text = [0u8; 64];
    let n = write_text(&mut text, &[("SendTargets", "All")]).unwrap();
    let mut pdu = [0u8; 256];
    let itt = p.ini.next_itt();
    let len = p.ini.text(&mut pdu, itt, RESERVED_TAG, &text[..n]).unwrap();
    p.send(&pdu[..len]);
    let rx = p.recv();
    let Pdu::TextResponse(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(r.itt, itt);
    assert_eq!(find_key(r.data, "TargetName"), Some(TARGET));
    assert_eq!(find_key(r.data, "TargetAddress"), Some("192.0.2.1:3260,1"));
    // SCSI commands are not allowed in a discovery session.
    let _ = p.command(&CommandSpec::read(0, &READ10, 0));
    assert!(p.take_events().is_empty());
    let rx = p.recv();
    let Pdu::Reject(rj) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(rj.reason, RejectReason::ProtocolError);
}

#[test]
fn transmit_buffer_too_small_keeps_the_pdu() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 256];
    let itt = p.ini.next_itt();
    let len = p
        .ini
        .nop_out(&mut pdu, itt, RESERVED_TAG, &[1u8; 100])
        .unwrap();
    p.send(&pdu[..len]);
    let mut small = [0u8; 60];
    assert_eq!(
        p.t.poll_transmit(p.now, &mut small),
        Err(BufferTooSmall { required: 148 })
    );
    let rx = p.recv();
    let Pdu::NopIn(n) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(n.data, &[1u8; 100][..]);
}

#[test]
fn partial_input_needs_more() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut pdu = [0u8; 128];
    let (_, len) = p
        .ini
        .command(&mut pdu, &CommandSpec::read(0, &READ10, 0))
        .unwrap();
    assert_eq!(p.send(&pdu[..20]), vec!["more"]);
    assert_eq!(p.send(&pdu[..len - 1]), vec!["more"]);
    assert!(p.take_events().is_empty());
    assert_eq!(p.send(&pdu[..len]), vec!["done"]);
    let _ = p.command_event();
}

#[test]
fn mutator_errors() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let _ = p.command(&CommandSpec::read(0, &READ10, 1024));
    let cmd = p.command_event();
    assert_eq!(
        p.t.request_data_out(cmd.task, 0, 10),
        Err(TaskError::OutOfRange)
    );
    assert_eq!(
        p.t.send_data_in(cmd.task, 0, 2048, None),
        Err(TaskError::OutOfRange)
    );
    assert_eq!(
        p.t.respond(cmd.task, ScsiStatus::GOOD, &[0u8; 253]),
        Err(TaskError::SenseTooLong)
    );
    p.t.send_data_in(cmd.task, 0, 1024, Some(ScsiStatus::GOOD))
        .unwrap();
    assert_eq!(
        p.t.respond(cmd.task, ScsiStatus::GOOD, &[]),
        Err(TaskError::Closing)
    );
    assert_eq!(
        p.t.respond_logout(LogoutResponseCode::Closed),
        Err(StateError::NotPending)
    );
}

#[test]
fn full_queues_block_input_instead_of_growing() {
    let mut c = config();
    c.queue_depth = 32;
    let mut p = Pair::new(c);
    p.login_normal(&default_keys());
    // A NOP-Out echo holds the inline buffer until it is transmitted.
    let mut a = [0u8; 256];
    let mut b = [0u8; 256];
    let itt = p.ini.next_itt();
    let la = p.ini.nop_out(&mut a, itt, RESERVED_TAG, b"one!").unwrap();
    let itt = p.ini.next_itt();
    let lb = p.ini.nop_out(&mut b, itt, RESERVED_TAG, b"two!").unwrap();
    let now = p.now;
    assert_eq!(
        p.t.handle_input(now, &a[..la], &mut p.hooks),
        Ok(Ingress::Done { consumed: la })
    );
    assert_eq!(
        p.t.handle_input(now, &b[..lb], &mut p.hooks),
        Ok(Ingress::Blocked)
    );
    let rx = p.recv();
    assert_eq!(rx.len(), 1);
    assert_eq!(
        p.t.handle_input(now, &b[..lb], &mut p.hooks),
        Ok(Ingress::Done { consumed: lb })
    );
    let rx = p.recv();
    let Pdu::NopIn(n) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(n.data, b"two!");
    // Events nobody polls: input blocks before the queue overflows.
    let mut pdu = [0u8; 128];
    let mut accepted = 0;
    for _ in 0..TASKS {
        let (_, len) = p
            .ini
            .command(&mut pdu, &CommandSpec::write(0, &WRITE10, 16, &[1u8; 16]))
            .unwrap();
        match p.t.handle_input(now, &pdu[..len], &mut p.hooks) {
            Ok(Ingress::Data { .. }) => accepted += 1,
            Ok(Ingress::Blocked) => break,
            other => panic!("{other:?}"),
        }
    }
    // Two events per command (Command, DataOutComplete), 16 slots, 3 kept free.
    assert_eq!(accepted, 7);
    let mut n = 0;
    while let Some(e) = p.t.poll_event() {
        assert!(matches!(
            e,
            Event::Command(_) | Event::DataOutComplete { .. }
        ));
        n += 1;
    }
    assert_eq!(n, 14);
}

#[test]
fn bidirectional_command_shares_data_sn_and_r2t_sn() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let mut spec = CommandSpec::write(0, &WRITE10, 1024, &[]);
    spec.read = true;
    let mut pdu = [0u8; 256];
    // EDTL is the write length; the bidirectional read length comes in an AHS.
    let (itt, len) = p.ini.command(&mut pdu, &spec).unwrap();
    let mut cmd = match Pdu::parse(&pdu[..len], Digests::NONE).unwrap().0 {
        Pdu::ScsiCommand(c) => c,
        other => panic!("{other:?}"),
    };
    cmd.bidi_read_len = Some(512);
    let mut out = [0u8; 256];
    let n = wire::emit_pdu(&Pdu::ScsiCommand(cmd), Digests::NONE, &mut out).unwrap();
    p.send(&out[..n]);
    let c = p.command_event();
    assert_eq!(
        (c.dir, c.write_len, c.read_len),
        (Direction::Bidirectional, 1024, 512)
    );
    p.t.request_remaining_data(c.task).unwrap();
    let rx = p.recv();
    let Pdu::R2t(r) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(r.r2t_sn, 0);
    p.data_out(itt, r.ttt, 0, 0, &[2u8; 1024], true);
    p.t.send_data_in(c.task, 0, 512, Some(ScsiStatus::GOOD))
        .unwrap();
    let rx = p.recv();
    let Pdu::DataIn(d) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!(d.data_sn, 1);
    assert!(d.flags.contains(DataInFlags::STATUS));
}

#[test]
fn empty_nop_echo_does_not_release_a_busy_inline_buffer() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let now = p.now;
    let mut a = [0u8; 256];
    let mut b = [0u8; 256];
    let mut c = [0u8; 256];
    let i1 = p.ini.next_itt();
    let la = p.ini.nop_out(&mut a, i1, RESERVED_TAG, &[]).unwrap();
    let i2 = p.ini.next_itt();
    let lb = p.ini.nop_out(&mut b, i2, RESERVED_TAG, b"data").unwrap();
    let i3 = p.ini.next_itt();
    let lc = p.ini.nop_out(&mut c, i3, RESERVED_TAG, b"more").unwrap();
    assert!(matches!(
        p.t.handle_input(now, &a[..la], &mut p.hooks),
        Ok(Ingress::Done { .. })
    ));
    assert!(matches!(
        p.t.handle_input(now, &b[..lb], &mut p.hooks),
        Ok(Ingress::Done { .. })
    ));
    // Writing the empty echo must not free the buffer that still holds "data".
    let mut hdr = [0u8; 8192 + 64];
    let t = p.t.poll_transmit(now, &mut hdr).unwrap().unwrap();
    assert_eq!(t.len, 48);
    assert_eq!(
        p.t.handle_input(now, &c[..lc], &mut p.hooks),
        Ok(Ingress::Blocked)
    );
    let rx = p.recv();
    let Pdu::NopIn(n) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((n.itt, n.data), (i2, &b"data"[..]));
}

#[test]
fn exception_status_never_rides_in_data_in() {
    let mut p = Pair::new(config());
    p.login_normal(&default_keys());
    let (itt, _) = p.command(&CommandSpec::read(0, &READ10, 1024));
    let cmd = p.command_event();
    // RESERVATION CONFLICT (0x18) with some data.
    let st = ScsiStatus {
        status: 0x18,
        residual: Residual::Underflow(512),
    };
    p.t.send_data_in(cmd.task, 0, 512, Some(st)).unwrap();
    let rx = p.recv();
    assert_eq!(rx.len(), 2);
    let Pdu::DataIn(d) = rx[0].pdu(Digests::NONE) else {
        panic!()
    };
    assert!(d.flags.contains(DataInFlags::FINAL));
    assert!(!d.flags.contains(DataInFlags::STATUS));
    let Pdu::ScsiResponse(r) = rx[1].pdu(Digests::NONE) else {
        panic!()
    };
    assert_eq!((r.itt, r.status, r.residual), (itt, 0x18, 512));
    assert_eq!(p.finished, vec![cmd.task]);
}

#[test]
fn connection_footprint_is_fixed() {
    // Everything lives inline: the size depends only on the const generics.
    let small = core::mem::size_of::<Connection<8, 8192>>();
    let big = core::mem::size_of::<Connection<64, 8192>>();
    let per_task = (big - small) / 56;
    assert!(per_task > MAX_SENSE_LEN && per_task < 1024, "{per_task}");
    std::println!("Connection<8, 8192>: {small} bytes, Connection<64, 8192>: {big} bytes");
}

impl Pair {
    /// Feed one whole PDU through `handle_split`, its header and the rest in separate
    /// buffers; returns the Ingress and whether a delivered payload is `rest` itself.
    fn send_split(&mut self, pdu: &[u8]) -> (&'static str, bool) {
        let d = self.t.digests();
        let wire::Status::Complete(h) = wire::header_wire_len(pdu, d) else {
            panic!("no header");
        };
        let (head, rest) = (pdu[..h].to_vec(), pdu[h..].to_vec());
        let r = self.t.handle_split(self.now, &head, &rest, &mut self.hooks);
        let out = match r {
            Ok(Ingress::Data {
                consumed,
                task,
                offset,
                data,
            }) => {
                assert_eq!(consumed, pdu.len());
                let off = offset as usize;
                self.bufs[task.index()][off..off + data.len()].copy_from_slice(data);
                ("data", data.as_ptr() == rest.as_ptr())
            }
            Ok(Ingress::Done { consumed }) => {
                assert_eq!(consumed, pdu.len());
                ("done", false)
            }
            Ok(Ingress::NeedMore) => ("more", false),
            Ok(Ingress::Blocked) => ("blocked", false),
            Err(e) => {
                self.error = Some(e);
                ("error", false)
            }
        };
        while let Some(e) = self.t.poll_event() {
            self.events.push(e);
        }
        out
    }
}

#[test]
fn split_input_and_data_out_destination() {
    for digests in [Digests::NONE, Digests::ALL] {
        let mut p = Pair::new(config());
        let mut keys = default_keys();
        keys.extend([("MaxBurstLength", "4096"), ("MaxOutstandingR2T", "2")]);
        if digests.header {
            keys[0] = ("HeaderDigest", "CRC32C");
            keys[1] = ("DataDigest", "CRC32C");
        }
        p.login_normal(&keys);
        assert_eq!(p.t.digests(), digests);
        let payload: Vec<u8> = (0..12_288u32).map(|i| (i * 13) as u8).collect();
        let mut pdu = vec![0u8; 16_384];
        // A command with immediate data: its payload is delivered from `rest` itself.
        let spec = CommandSpec::write(0, &WRITE10, 12_288, &payload[..1000]);
        let (itt, n) = p.ini.command(&mut pdu, &spec).unwrap();
        assert_eq!(p.send_split(&pdu[..n - 1]), ("more", false));
        assert_eq!(p.send_split(&pdu[..n]), ("data", true));
        let cmd = p.command_event();
        p.t.request_remaining_data(cmd.task).unwrap();
        let r2ts: Vec<(u32, u32, u32)> = p
            .recv()
            .iter()
            .map(|r| match r.pdu(digests) {
                Pdu::R2t(r) => (r.ttt, r.buffer_offset, r.desired_len),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(r2ts.len(), 2);
        let (ttt, off, len) = r2ts[0];
        assert_eq!((off, len), (1000, 4096));
        let header_of = |p: &mut Pair, sn: u32, o: u32, n: u32, ttt: u32, fin: bool| {
            let mut out = vec![0u8; 128];
            let h = p
                .ini
                .data_out_header(&mut out, itt, ttt, 0, sn, o, n as usize, fin)
                .unwrap();
            out.truncate(h);
            out
        };
        // Only the next in-order PDU of an open burst gets a destination.
        let want = Some((cmd.task, off));
        let h = header_of(&mut p, 0, off, 2048, ttt, false);
        assert_eq!(p.t.data_out_destination(&h), want);
        for (sn, o, n, t, fin) in [
            (1, off, 2048, ttt, false),          // DataSN ahead
            (0, off + 512, 2048, ttt, false),    // offset ahead
            (0, off - 512, 2048, ttt, false),    // offset behind (would overwrite)
            (0, off, 2048, ttt ^ 1, false),      // unknown TTT
            (0, off, 2048, ttt, true),           // F bit before the burst ends
            (0, off, 4096 + 512, ttt, true),     // past the burst
            (0, off, 2048, RESERVED_TAG, false), // no unsolicited burst is open
        ] {
            let h = header_of(&mut p, sn, o, n, t, fin);
            assert_eq!(
                p.t.data_out_destination(&h),
                None,
                "{sn} {o} {n} {t:#x} {fin}"
            );
        }
        let mut h = header_of(&mut p, 0, off, 2048, ttt, false);
        h[16] ^= 1; // another ITT
        assert_eq!(p.t.data_out_destination(&h), None);
        if digests.header {
            let mut h = header_of(&mut p, 0, off, 2048, ttt, false);
            *h.last_mut().unwrap() ^= 1;
            assert_eq!(p.t.data_out_destination(&h), None, "bad header digest");
        }
        // The burst in two PDUs through handle_split, each checked first.
        for (sn, o, n, fin) in [(0, off, 2048, false), (1, off + 2048, 2048, true)] {
            let h = header_of(&mut p, sn, o, n, ttt, fin);
            assert_eq!(p.t.data_out_destination(&h), Some((cmd.task, o)));
            let data = &payload[o as usize..(o + n) as usize];
            let m = p
                .ini
                .data_out(&mut pdu, itt, ttt, 0, sn, o, data, fin)
                .unwrap();
            assert_eq!(&pdu[..h.len()], &h[..]);
            assert_eq!(p.send_split(&pdu[..m]), ("data", true));
        }
        // Once the burst is over its headers get no destination.
        let h = header_of(&mut p, 2, off + 4096, 512, ttt, true);
        assert_eq!(p.t.data_out_destination(&h), None);
        // A task being aborted takes no more placed data.
        let (ttt2, off2, _) = r2ts[1];
        let h = header_of(&mut p, 0, off2, 4096, ttt2, true);
        assert_eq!(p.t.data_out_destination(&h), Some((cmd.task, off2)));
        p.t.abort_task(cmd.task).unwrap();
        assert_eq!(p.t.data_out_destination(&h), None);
        assert_eq!(&p.bufs[cmd.task.index()][..5096], &payload[..5096]);
        assert!(p.error.is_none());
    }
}

#[test]
fn split_input_reports_a_data_digest_error_like_whole_input() {
    let mut p = Pair::new(config());
    let mut keys = default_keys();
    keys[1] = ("DataDigest", "CRC32C");
    p.login_normal(&keys);
    let payload = vec![0x77u8; 1000];
    let mut pdu = vec![0u8; 4096];
    let spec = CommandSpec::write(0, &WRITE10, 4096, &payload);
    let (_, n) = p.ini.command(&mut pdu, &spec).unwrap();
    pdu[n - 1] ^= 0xff; // the data digest
    assert_eq!(p.send_split(&pdu[..n]), ("done", false));
    let rx = p.recv();
    let Pdu::Reject(r) = rx[0].pdu(p.t.digests()) else {
        panic!("{:?}", rx[0].pdu(p.t.digests()));
    };
    assert_eq!(r.reason, RejectReason::DataDigestError);
}
