//! Codec micro-benchmarks: BHS parse + emit of a SCSI Command and a Data-In header,
//! `Pdu::parse` of a whole PDU, and CRC32C over 4 KiB / 64 KiB with the software
//! (table-driven) and hardware (`crc32c` crate) engines.
//!
//! `cargo bench -p benches --bench codec -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iscsi_proto::digest::{crc32c_hw, crc32c_soft};
use iscsi_proto::wire::{
    Bhs, DataIn, DataInFlags, Digests, Pdu, ScsiCommand, ScsiCommandFlags, TaskAttr, emit_pdu,
};

fn scsi_command() -> ScsiCommand<'static> {
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]); // READ(10)
    ScsiCommand {
        immediate: false,
        flags: ScsiCommandFlags::FINAL | ScsiCommandFlags::READ,
        attr: TaskAttr::Simple,
        lun: 0x0001_0000_0000_0000,
        itt: 0x1234_5678,
        expected_data_transfer_len: 4096,
        cmd_sn: 0x100,
        exp_stat_sn: 0x200,
        cdb,
        extended_cdb: &[],
        bidi_read_len: None,
        data: &[],
    }
}

fn data_in(data: &[u8]) -> DataIn<'_> {
    DataIn {
        flags: DataInFlags::FINAL | DataInFlags::STATUS,
        status: 0,
        lun: 0x0001_0000_0000_0000,
        itt: 0x1234_5678,
        ttt: 0xffff_ffff,
        stat_sn: 0x201,
        exp_cmd_sn: 0x101,
        max_cmd_sn: 0x180,
        data_sn: 0,
        buffer_offset: 0,
        residual: 0,
        data,
    }
}

fn bhs(c: &mut Criterion) {
    let mut g = c.benchmark_group("bhs");
    let mut cmd_buf = [0u8; 48];
    scsi_command().emit(&mut cmd_buf).expect("emit");
    g.bench_function("scsi_command_parse", |b| {
        b.iter(|| {
            let view = Bhs::new_checked(black_box(&cmd_buf[..])).expect("bhs");
            ScsiCommand::parse(&view, &[], &[]).expect("parse")
        })
    });
    g.bench_function("scsi_command_emit", |b| {
        let cmd = scsi_command();
        let mut out = [0u8; 48];
        b.iter(|| black_box(&cmd).emit(black_box(&mut out)).expect("emit"))
    });
    let mut din_buf = [0u8; 48];
    data_in(&[]).emit(&mut din_buf).expect("emit");
    g.bench_function("data_in_parse", |b| {
        b.iter(|| {
            let view = Bhs::new_checked(black_box(&din_buf[..])).expect("bhs");
            DataIn::parse(&view, &[], &[]).expect("parse")
        })
    });
    g.bench_function("data_in_emit", |b| {
        let din = data_in(&[]);
        let mut out = [0u8; 48];
        b.iter(|| black_box(&din).emit(black_box(&mut out)).expect("emit"))
    });
    g.finish();
}

fn pdu_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu_parse");
    let payload = vec![0x5au8; 4096];
    for (name, digests) in [
        ("data_in_4k", Digests::NONE),
        ("data_in_4k_digests", Digests::ALL),
    ] {
        let pdu = Pdu::DataIn(data_in(&payload));
        let mut buf = vec![0u8; pdu.wire_len(digests)];
        emit_pdu(&pdu, digests, &mut buf).expect("emit");
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| Pdu::parse(black_box(&buf), digests).expect("parse"))
        });
    }
    let mut buf = [0u8; 48];
    scsi_command().emit(&mut buf).expect("emit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("scsi_command", |b| {
        b.iter(|| Pdu::parse(black_box(&buf[..]), Digests::NONE).expect("parse"))
    });
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [4096usize, 65536] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        assert_eq!(crc32c_soft(&data), crc32c_hw(&data));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("soft_{}k", size / 1024), |b| {
            b.iter(|| crc32c_soft(black_box(&data)))
        });
        g.bench_function(format!("hw_{}k", size / 1024), |b| {
            b.iter(|| crc32c_hw(black_box(&data)))
        });
    }
    g.finish();
}

criterion_group!(benches, bhs, pdu_parse, crc);
criterion_main!(benches);
