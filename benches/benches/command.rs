//! The command path without sockets, at two depths:
//!
//! - `scsi_core/read10_4k`: scsi-core alone. A READ(10) of 8 blocks is submitted to a
//!   logical unit (CDB decode, range checks, task ordering), handed out as a block I/O,
//!   completed and finished (status, residual): everything scsi-core does per command.
//! - `driver/read10_4k`: the whole target stack as the daemon runs it, minus the socket. A
//!   SCSI Command PDU (built by iscsi-proto's test initiator) goes into
//!   `iscsi_target::driver::Driver::handle_input`; iscsi-proto's connection parses and
//!   windows it, scsi-core decodes and schedules it, the I/O runs on a memory store, and the
//!   Data-In PDU with status comes out of `transmit_into` and is parsed back by the
//!   initiator.
//!
//! `cargo bench -p benches --bench command -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use backstore::{BackingStore, MemoryStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iscsi_proto::session::Timestamp;
use iscsi_proto::session::initiator::{CommandSpec, Initiator, write_text};
use iscsi_proto::wire::{DataInFlags, Digests, Pdu, Stage, Status, pdu_len};
use iscsi_target::TargetBuilder;
use iscsi_target::driver::{Driver, DriverConfig, InputStatus};
use scsi_core::{
    Action, DataDirection, IoResult, LogicalUnit, LuConfig, NexusId, ScsiStatus, TaskAttr, TaskTag,
};

const TARGET: &str = "iqn.2026-11.org.tgt-rs:bench";
/// LUN 1 in the LUN field of a command.
const LUN: u64 = 1 << 48;
const READ10_4K: [u8; 10] = [0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];

fn scsi_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("scsi_core");
    g.throughput(Throughput::Elements(1));
    let mut lu: LogicalUnit<64, 4> = LogicalUnit::new(LuConfig::new(1 << 17));
    let nexus = NexusId(1);
    lu.add_nexus(nexus).expect("nexus");
    let mut tag = 0u32;
    let mut one = |lu: &mut LogicalUnit<64, 4>| {
        tag = tag.wrapping_add(1);
        lu.submit(
            nexus,
            TaskTag(tag),
            black_box(&READ10_4K),
            DataDirection::Read,
            4096,
            TaskAttr::Simple,
        )
        .expect("submit");
        let mut status = None;
        while let Some(a) = lu.poll_action() {
            match a {
                Action::Io(io) => lu.complete_io(io.task, IoResult::Ok).expect("complete"),
                Action::Complete { status: s, .. } => status = Some(s),
                other => panic!("unexpected {other:?}"),
            }
        }
        status
    };
    // The first command reports the POWER ON unit attention.
    assert_eq!(one(&mut lu), Some(ScsiStatus::CheckCondition));
    assert_eq!(one(&mut lu), Some(ScsiStatus::Good));
    g.bench_function("read10_4k", |b| b.iter(|| one(&mut lu)));
    g.finish();
}

/// A logged-in session on a driver over a memory LUN.
struct Rig {
    drv: Driver,
    ini: Initiator,
    rx: Vec<u8>,
    out: Vec<u8>,
    pdu: Vec<u8>,
    now: Timestamp,
}

impl Rig {
    fn new() -> Rig {
        let store: Arc<dyn BackingStore> =
            Arc::new(MemoryStore::new(64 << 20, 512).expect("memory store"));
        let registry = TargetBuilder::new(TARGET)
            .lun(1, store)
            .build()
            .expect("target");
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:3260".parse().expect("addr");
        let now = Timestamp::from_millis(0);
        let drv = Driver::new(
            registry,
            &DriverConfig::default(),
            peer,
            local,
            now,
            Arc::new(|| {}),
        );
        let mut rig = Rig {
            drv,
            ini: Initiator::new([0x80, 0, 0, 0, 0, 1], 1),
            rx: Vec::new(),
            out: Vec::new(),
            pdu: vec![0u8; 1 << 16],
            now,
        };
        rig.login();
        // Clear the POWER ON unit attention.
        while !rig.read() {}
        rig
    }

    /// Feeds the `n` bytes in `pdu` to the driver; runs its I/O inline and collects output.
    fn send(&mut self, n: usize) {
        self.rx.extend_from_slice(&self.pdu[..n]);
        loop {
            let st = self.drv.handle_input(self.now, &mut self.rx);
            self.drv.run_io_inline(self.now);
            self.drv.transmit_into(self.now, &mut self.out);
            match st {
                InputStatus::Blocked => continue,
                InputStatus::NeedMore => break,
                InputStatus::Closed => panic!("connection closed"),
            }
        }
    }

    fn login(&mut self) {
        let mut text = [0u8; 512];
        let n = write_text(
            &mut text,
            &[
                ("InitiatorName", "iqn.2026-11.org.tgt-rs:bench-initiator"),
                ("TargetName", TARGET),
                ("SessionType", "Normal"),
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("ImmediateData", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
            ],
        )
        .expect("login text");
        let len = self
            .ini
            .login(
                &mut self.pdu,
                Stage::LoginOperational,
                Some(Stage::FullFeature),
                &text[..n],
            )
            .expect("login pdu");
        self.send(len);
        let out = std::mem::take(&mut self.out);
        let (p, _) = self.ini.receive(&out).expect("login response");
        match p {
            Pdu::LoginResponse(r) => {
                assert_eq!(r.status.class, 0, "login failed");
                assert_eq!(r.nsg, Some(Stage::FullFeature));
            }
            other => panic!("expected a login response, got {other:?}"),
        }
    }

    /// One READ(10) of 4 KiB; whether it ended GOOD.
    fn read(&mut self) -> bool {
        let spec = CommandSpec::read(LUN, &READ10_4K, 4096);
        let (itt, n) = self.ini.command(&mut self.pdu, &spec).expect("command pdu");
        self.send(n);
        let out = std::mem::take(&mut self.out);
        let mut pos = 0;
        let mut good = None;
        while pos < out.len() {
            let Status::Complete(len) = pdu_len(&out[pos..], Digests::NONE) else {
                panic!("partial PDU");
            };
            let (p, _) = self.ini.receive(&out[pos..pos + len]).expect("parse");
            match p {
                Pdu::DataIn(d) if d.itt == itt && d.flags.contains(DataInFlags::STATUS) => {
                    good = Some(d.status == 0);
                }
                Pdu::ScsiResponse(r) if r.itt == itt => good = Some(r.status == 0),
                _ => {}
            }
            pos += len;
        }
        self.out = out;
        self.out.clear();
        good.expect("the command completed")
    }
}

fn driver(c: &mut Criterion) {
    let mut g = c.benchmark_group("driver");
    g.throughput(Throughput::Elements(1));
    let mut rig = Rig::new();
    assert!(rig.read());
    g.bench_function("read10_4k", |b| b.iter(|| rig.read()));
    g.finish();
}

criterion_group!(benches, scsi_core, driver);
criterion_main!(benches);
