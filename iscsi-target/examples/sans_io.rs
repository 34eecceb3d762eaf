//! The sans-IO layers end to end, with no sockets, no threads and no heap in the data path:
//! the test [`Initiator`] (iscsi-proto feature `initiator`) talks to a target
//! [`Connection`] over two fixed-size in-memory byte pipes, and a scsi-core
//! [`LogicalUnit`] executes the commands on a fixed array that plays the disk.
//!
//! ```text
//! cargo run -p iscsi-target --example sans_io
//! ```
//!
//! It logs in, then sends INQUIRY, TEST UNIT READY (which reports the power-on unit
//! attention, as a real disk does), WRITE(10) (with immediate data) and READ(10), checks the
//! data read back and prints every step. This is the loop a runtime runs, reduced to its
//! calls: `handle_input` → `poll_event` → scsi-core `submit` / `poll_action` (answering with
//! `emit_data_in`, `data_out_ready`, `complete_io`) → connection mutators (`send_data_in`,
//! `request_remaining_data`, `respond`) → `poll_transmit`.

use iscsi_proto::login::discovery::{Portal, TargetInfo};
use iscsi_proto::login::{
    AuthPolicy, Authorization, ChapChallenge, ChapCredentials, JoinDecision, LoginHooks,
    SessionType,
};
use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
use iscsi_proto::session::{
    ConnConfig, Connection, Direction, Event, Hooks, Ingress, Residual, ScsiStatus, TaskHandle,
    Timestamp,
};
use iscsi_proto::wire::{self, DataInFlags, Pdu, Stage, TaskAttr as WireAttr};
use scsi_core::{
    Action, DataDirection, IoOp, IoResult, LogicalUnit, LuConfig, NexusId, TaskAttr, TaskId,
    TaskTag,
};

const TARGET: &str = "iqn.2026-11.org.tgt-rs.example:sans-io";
const INITIATOR: &str = "iqn.2026-11.org.tgt-rs.example:host";
const TASKS: usize = 4;
const BUF: usize = 8192;
const BLOCK: usize = 512;
const BLOCKS: usize = 64;
const NEXUS: NexusId = NexusId(1);

/// A one-way byte pipe with a fixed buffer.
struct Pipe {
    buf: [u8; 4 * BUF],
    len: usize,
}

impl Pipe {
    const fn new() -> Self {
        Pipe {
            buf: [0; 4 * BUF],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.buf.len(), "pipe full");
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// The target's policy: one target, no authentication.
struct Policy;

impl LoginHooks for Policy {
    fn authorize(&mut self, _ini: &str, target: Option<&str>, st: SessionType) -> Authorization {
        match (st, target) {
            (SessionType::Discovery, _) | (SessionType::Normal, Some(TARGET)) => {
                Authorization::Allowed(AuthPolicy::None)
            }
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
        Some(1)
    }
}

impl Hooks for Policy {
    fn with_targets(&mut self, _ini: &str, f: &mut dyn FnMut(&[TargetInfo<'_>])) {
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

/// Per-slot state of a task: the slot's I/O buffer and what scsi-core waits for.
#[derive(Clone, Copy)]
struct Slot {
    handle: Option<TaskHandle>,
    itt: u32,
    data_in: bool,
    need_data: Option<u32>,
}

/// The target side: connection, logical unit, disk and fixed buffers.
struct Target {
    conn: Connection<TASKS, BUF>,
    lu: LogicalUnit<TASKS, 2>,
    hooks: Policy,
    disk: [u8; BLOCKS * BLOCK],
    bufs: [[u8; BUF]; TASKS],
    slots: [Slot; TASKS],
    hdr: [u8; BUF + 64],
}

impl Target {
    fn slot_of_tag(&self, tag: TaskTag) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.handle.is_some() && s.itt == tag.0)
    }

    /// One step of a runtime: input, events, SCSI actions, output.
    fn step(&mut self, now: Timestamp, rx: &mut Pipe, tx: &mut Pipe) {
        // 1. Input: one PDU per call; payload goes straight into the task's buffer.
        loop {
            match self
                .conn
                .handle_input(now, &rx.buf[..rx.len], &mut self.hooks)
            {
                Ok(Ingress::Done { consumed }) => rx.consume(consumed),
                Ok(Ingress::Data {
                    consumed,
                    task,
                    offset,
                    data,
                }) => {
                    let at = offset as usize;
                    self.bufs[task.index()][at..at + data.len()].copy_from_slice(data);
                    rx.consume(consumed);
                }
                Ok(Ingress::NeedMore) => break,
                Ok(Ingress::Blocked) => self.transmit(now, tx),
                Err(e) => panic!("connection error: {e}"),
            }
            // 2. Events.
            while let Some(ev) = self.conn.poll_event() {
                self.event(ev);
            }
            // 3. SCSI actions.
            self.actions();
        }
        // 4. Output.
        self.transmit(now, tx);
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::LoggedIn => {
                println!("target: logged in, full feature phase");
                self.lu.add_nexus(NEXUS).expect("nexus table has room");
            }
            Event::Command(c) => {
                let i = c.task.index();
                self.slots[i] = Slot {
                    handle: Some(c.task),
                    itt: c.itt,
                    data_in: false,
                    need_data: None,
                };
                let (dir, len) = match c.dir {
                    Direction::None => (DataDirection::None, 0),
                    Direction::Read => (DataDirection::Read, c.read_len),
                    Direction::Write => (DataDirection::Write, c.write_len),
                    Direction::Bidirectional => (DataDirection::Bidirectional, c.write_len),
                };
                let attr = match c.attr {
                    WireAttr::Ordered => TaskAttr::Ordered,
                    WireAttr::HeadOfQueue => TaskAttr::HeadOfQueue,
                    WireAttr::Aca => TaskAttr::Aca,
                    _ => TaskAttr::Simple,
                };
                println!(
                    "target: command opcode {:#04x}, {len} bytes {dir:?}",
                    c.cdb.as_bytes()[0]
                );
                self.lu
                    .submit(NEXUS, TaskTag(c.itt), c.cdb.as_bytes(), dir, len, attr)
                    .expect("task table has room");
                if c.dir == Direction::Write && c.unsolicited_len < c.write_len {
                    self.conn
                        .request_remaining_data(c.task)
                        .expect("task is live");
                }
            }
            Event::DataOutComplete { task } => {
                let i = task.index();
                self.slots[i].data_in = true;
                self.data_ready(i);
            }
            other => println!("target: event {other:?}"),
        }
    }

    /// Hands the write data to scsi-core once it wants it and it is all in.
    fn data_ready(&mut self, i: usize) {
        let s = self.slots[i];
        if let (true, Some(len)) = (s.data_in, s.need_data) {
            self.slots[i].need_data = None;
            let task = TaskId {
                nexus: NEXUS,
                tag: TaskTag(s.itt),
            };
            self.lu
                .data_out_ready(task, &self.bufs[i][..len as usize])
                .expect("task waits for data");
        }
    }

    fn actions(&mut self) {
        while let Some(a) = self.lu.poll_action() {
            let Some(i) = self.slot_of_tag(a.task().tag) else {
                continue;
            };
            let handle = self.slots[i].handle.expect("live slot");
            match a {
                Action::NeedDataOut { len, .. } => {
                    self.slots[i].need_data = Some(len);
                    self.data_ready(i);
                }
                Action::DataIn { task, .. } => {
                    let n = self.lu.emit_data_in(task, &mut self.bufs[i]).expect("emit");
                    self.conn
                        .send_data_in(handle, 0, n as u32, None)
                        .expect("data-in");
                }
                Action::Io(io) => {
                    let at = io.lba as usize * BLOCK;
                    let len = io.byte_len() as usize;
                    let off = io.data_offset as usize;
                    match io.op {
                        IoOp::Read => {
                            self.bufs[i][off..off + len].copy_from_slice(&self.disk[at..at + len]);
                            println!("target: disk read  lba {} x{}", io.lba, io.blocks);
                            self.conn
                                .send_data_in(handle, io.data_offset, io.transfer_len, None)
                                .expect("data-in");
                        }
                        IoOp::Write => {
                            self.disk[at..at + len].copy_from_slice(&self.bufs[i][off..off + len]);
                            println!("target: disk write lba {} x{}", io.lba, io.blocks);
                        }
                        _ => {}
                    }
                    self.lu
                        .complete_io(io.task, IoResult::Ok)
                        .expect("complete");
                }
                Action::Complete {
                    status,
                    sense,
                    residual,
                    ..
                } => {
                    let st = ScsiStatus {
                        status: status as u8,
                        residual: match residual {
                            scsi_core::Residual::None => Residual::None,
                            scsi_core::Residual::Underflow(n) => Residual::Underflow(n),
                            scsi_core::Residual::Overflow(n) => Residual::Overflow(n),
                        },
                    };
                    let sense = sense.as_ref().map_or(&[][..], |s| s.as_bytes());
                    self.conn.respond(handle, st, sense).expect("respond");
                    self.slots[i].handle = None;
                }
            }
        }
    }

    fn transmit(&mut self, now: Timestamp, tx: &mut Pipe) {
        while let Some(t) = self
            .conn
            .poll_transmit(now, &mut self.hdr)
            .expect("header buffer is BUF + 64 bytes")
        {
            tx.push(&self.hdr[..t.len]);
            if let Some(d) = t.data {
                let data = &self.bufs[d.task.index()][d.offset as usize..][..d.len as usize];
                tx.push(data);
                tx.push(d.trailer(data).as_bytes());
            }
        }
    }
}

/// Reads every complete target PDU from the pipe into the initiator; returns the data of
/// Data-In PDUs (copied to `data`) and the last SCSI status seen.
fn initiator_receive(ini: &mut Initiator, rx: &mut Pipe, data: &mut [u8]) -> Option<u8> {
    let mut status = None;
    while let wire::Status::Complete(n) = wire::pdu_len(&rx.buf[..rx.len], ini.digests()) {
        {
            let (pdu, _) = ini.receive(&rx.buf[..n]).expect("target PDU parses");
            match pdu {
                Pdu::LoginResponse(r) => {
                    println!("initiator: login response, next stage {:?}", r.nsg);
                    assert!(r.status.is_success());
                }
                Pdu::DataIn(d) => {
                    let at = d.buffer_offset as usize;
                    data[at..at + d.data.len()].copy_from_slice(d.data);
                    println!("initiator: Data-In {} bytes at {at}", d.data.len());
                    if d.flags.contains(DataInFlags::STATUS) {
                        status = Some(d.status);
                    }
                }
                Pdu::ScsiResponse(r) => {
                    match r.sense() {
                        Ok(sense) if sense.len() > 13 => println!(
                            "initiator: SCSI status {:#04x}, sense key {:#x} ASC/ASCQ {:#04x}/{:#04x}",
                            r.status,
                            sense[2] & 0x0f,
                            sense[12],
                            sense[13]
                        ),
                        _ => println!("initiator: SCSI status {:#04x}", r.status),
                    }
                    status = Some(r.status);
                }
                other => println!("initiator: {other:?}"),
            }
        }
        rx.consume(n);
    }
    status
}

fn main() {
    // Large fixed-size state lives in one place; nothing below allocates per PDU.
    let mut target = Box::new(Target {
        conn: Connection::new(
            ConnConfig::default(),
            ChapChallenge {
                id: 1,
                challenge: [0x5a; 16],
            },
            Timestamp::from_millis(0),
        ),
        lu: LogicalUnit::new(
            LuConfig::new(BLOCKS as u64)
                .serial("SANSIO01")
                .naa(0x6001_4050_0000_0001),
        ),
        hooks: Policy,
        disk: [0; BLOCKS * BLOCK],
        bufs: [[0; BUF]; TASKS],
        slots: [Slot {
            handle: None,
            itt: 0,
            data_in: false,
            need_data: None,
        }; TASKS],
        hdr: [0; BUF + 64],
    });
    let (mut c2t, mut t2c) = (Box::new(Pipe::new()), Box::new(Pipe::new()));
    let now = Timestamp::from_millis(0);
    let mut ini = Initiator::new([0x40, 0, 0, 0, 0, 1], 1);
    let mut pdu = [0u8; BUF + 64];
    let mut text = [0u8; 512];
    let mut data = [0u8; BUF];

    // Login: security stage, then operational stage to full feature phase.
    let n = write_text(
        &mut text,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ],
    )
    .unwrap();
    let len = ini
        .login(
            &mut pdu,
            Stage::SecurityNegotiation,
            Some(Stage::LoginOperational),
            &text[..n],
        )
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    initiator_receive(&mut ini, &mut t2c, &mut data);
    let n = write_text(
        &mut text,
        &[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "8192"),
        ],
    )
    .unwrap();
    let len = ini
        .login(
            &mut pdu,
            Stage::LoginOperational,
            Some(Stage::FullFeature),
            &text[..n],
        )
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    initiator_receive(&mut ini, &mut t2c, &mut data);
    assert!(target.conn.is_full_feature());

    // INQUIRY.
    let inquiry = [0x12, 0, 0, 0, 96, 0];
    let (_, len) = ini
        .command(&mut pdu, &CommandSpec::read(0, &inquiry, 96))
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    assert_eq!(initiator_receive(&mut ini, &mut t2c, &mut data), Some(0));
    println!(
        "initiator: INQUIRY vendor {:?} product {:?}",
        core::str::from_utf8(&data[8..16]).unwrap_or("?"),
        core::str::from_utf8(&data[16..32]).unwrap_or("?")
    );
    assert_eq!(data[0] & 0x1f, 0, "a direct-access block device");

    // TEST UNIT READY: the first command after the nexus appeared (other than INQUIRY,
    // REPORT LUNS, REQUEST SENSE) reports the POWER ON unit attention once.
    let tur = [0u8; 6];
    let (_, len) = ini
        .command(&mut pdu, &CommandSpec::read(0, &tur, 0))
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    assert_eq!(initiator_receive(&mut ini, &mut t2c, &mut data), Some(2));

    // WRITE(10) of 8 blocks at LBA 2, all as immediate data.
    let mut block = [0u8; 8 * BLOCK];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let write10 = [0x2a, 0, 0, 0, 0, 2, 0, 0, 8, 0];
    let (_, len) = ini
        .command(
            &mut pdu,
            &CommandSpec::write(0, &write10, block.len() as u32, &block),
        )
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    assert_eq!(initiator_receive(&mut ini, &mut t2c, &mut data), Some(0));
    assert_eq!(&target.disk[2 * BLOCK..10 * BLOCK], &block[..]);

    // READ(10) of the same blocks.
    data.fill(0);
    let read10 = [0x28, 0, 0, 0, 0, 2, 0, 0, 8, 0];
    let (_, len) = ini
        .command(&mut pdu, &CommandSpec::read(0, &read10, block.len() as u32))
        .unwrap();
    c2t.push(&pdu[..len]);
    target.step(now, &mut c2t, &mut t2c);
    assert_eq!(initiator_receive(&mut ini, &mut t2c, &mut data), Some(0));
    assert_eq!(&data[..block.len()], &block[..]);
    println!("sans-io example ok: login, INQUIRY, WRITE(10), READ(10) round trip");
}
