//! Arbitrary CDBs and parameter lists (the Data-Out buffers of PERSISTENT RESERVE OUT,
//! UNMAP, EXTENDED COPY, MODE SELECT, WRITE, COMPARE AND WRITE, ...) through a `Target` with
//! a thin, a removable and a read-only LU.
//!
//! Input: a sequence of records `[lun, flags, exp_hi, exp_lo, cdb_len, cdb..., plen_hi,
//! plen_lo, param...]`. The data direction follows the record: a parameter list makes it a
//! write, otherwise a non-zero expected length a read (as an initiator sets R/W). Seeds are
//! the commands of captured libiscsi sessions.
//!
//! Invariants: every command finishes (no task left); Data-In never exceeds what the action
//! announced; CHECK CONDITION carries well-formed sense data and other statuses none; an
//! underflow residual never exceeds the expected length; I/O stays inside the LU; the
//! persistent reservation image round-trips (`export_pr` -> `import_pr` -> `export_pr`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi_core::{
    Action, DataDirection, IoOp, IoResult, LogicalUnit, LuConfig, Lun, NexusId, Residual,
    ScsiStatus, Target, TaskAttr, TaskId, TaskTag, UnmapRanges, VerifyMode,
};

/// LU sizes in blocks, by LUN.
const BLOCKS: [u64; 3] = [64, 32, 16];

fn lu_config(n: u16) -> LuConfig {
    match n {
        0 => LuConfig::new(BLOCKS[0]).thin(true),
        1 => LuConfig::new(BLOCKS[1]).removable(true),
        _ => LuConfig::new(BLOCKS[2]).read_only(true),
    }
}

type T = Target<4, 8, 2>;

fn take<'a>(d: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(d.len());
    let (a, b) = d.split_at(n);
    *d = b;
    a
}

fuzz_target!(|data: &[u8]| {
    let mut t = T::new();
    for n in 0..3 {
        let _ = t.add_lun(n, LogicalUnit::new(lu_config(n)));
    }
    // Identities for persistent reservations: an initiator port with ISID and a bare name.
    let _ = t.add_nexus_with_port(NexusId(0), b"iqn.2026-01.fuzz:a,i,0x000000000001", 1);
    let _ = t.add_nexus_with_port(NexusId(1), b"iqn.2026-01.fuzz:b", 1);
    let mut d = data;
    let mut tag = 0u32;
    let mut pending: Vec<(Lun, TaskId)> = Vec::new();
    let mut lens = std::collections::HashMap::new();
    while d.len() >= 5 {
        let h = take(&mut d, 5);
        let lun = Lun::from_number(u16::from(h[0] & 0x03));
        let flags = h[1];
        let expected = u32::from(u16::from_be_bytes([h[2], h[3]]));
        let cdb = take(&mut d, usize::from(h[4] & 0x3F));
        let pl = take(&mut d, 2);
        let plen = if pl.len() == 2 {
            usize::from(u16::from_be_bytes([pl[0], pl[1]])) & 0x0FFF
        } else {
            0
        };
        let mut param = take(&mut d, plen).to_vec();
        let dir = if !param.is_empty() {
            DataDirection::Write
        } else if expected > 0 {
            DataDirection::Read
        } else {
            DataDirection::None
        };
        param.resize(expected as usize, 0);
        tag = tag.wrapping_add(1);
        lens.insert(tag, expected);
        let nexus = NexusId(u32::from(flags & 1));
        let attr = match (flags >> 1) & 3 {
            0 => TaskAttr::Simple,
            1 => TaskAttr::Ordered,
            2 => TaskAttr::HeadOfQueue,
            _ => TaskAttr::Aca,
        };
        if t.submit(lun, nexus, TaskTag(tag), cdb, dir, expected, attr)
            .is_err()
        {
            continue;
        }
        if flags & 0x40 != 0 {
            // Abort something at a random point.
            let id = TaskId {
                nexus,
                tag: TaskTag(tag.wrapping_sub(1)),
            };
            let _ = t.abort_task(lun, id);
        }
        if flags & 0x80 != 0 {
            let _ = match tag % 3 {
                0 => t.lu_reset(lun),
                1 => t.lu_reset_by(lun, nexus),
                _ => t.target_reset_by(nexus, tag & 4 != 0),
            };
        }
        // Drive every action; the first I/O of a record may be deferred and completed
        // after all records (out of order).
        let defer = flags & 0x20 != 0;
        drive(&mut t, &param, flags, defer, &mut pending, &lens);
    }
    let deferred: Vec<_> = pending.drain(..).collect();
    for (lun, task) in deferred {
        let _ = t.complete_io(lun, task, IoResult::Ok);
        drive(&mut t, &[], 0, false, &mut pending, &lens);
    }
    // Every command finished: nothing may be left behind.
    for n in 0..3u16 {
        if let Some(lu) = t.lu(n) {
            assert_eq!(lu.active_tasks(), 0);
            // The persistent reservation image round-trips.
            let mut img = vec![0u8; 4096];
            let len = lu.export_pr(&mut img);
            assert!(len <= img.len());
            img.truncate(len);
            let mut fresh: LogicalUnit<8, 2> = LogicalUnit::new(lu_config(n));
            fresh.import_pr(&img).expect("exported image imports");
            let mut again = vec![0u8; 4096];
            let len2 = fresh.export_pr(&mut again);
            assert_eq!(&again[..len2], &img[..], "PR image round trip");
            assert_eq!(fresh.pr_generation(), lu.pr_generation());
        }
    }
    // Arbitrary bytes as a PR image: an error or a state that exports again, never a panic.
    let mut lu: LogicalUnit<8, 2> = LogicalUnit::new(lu_config(0));
    if lu.import_pr(data).is_ok() {
        let mut img = vec![0u8; 4096];
        let n = lu.export_pr(&mut img);
        assert!(n <= img.len());
    }
});

fn drive(
    t: &mut T,
    param: &[u8],
    flags: u8,
    mut defer: bool,
    pending: &mut Vec<(Lun, TaskId)>,
    expected: &std::collections::HashMap<u32, u32>,
) {
    while let Some(a) = t.poll_action() {
        let lun = a.lun;
        let blocks = lun.number().map_or(0, |n| BLOCKS[usize::from(n).min(2)]);
        match a.action {
            Action::NeedDataOut { task, len } => {
                let mut p = param.to_vec();
                p.resize(len as usize, 0);
                let _ = t.data_out_ready(lun, task, &p);
            }
            Action::DataIn { task, len } => {
                let mut buf = vec![0u8; len as usize];
                let n = t.emit_data_in(lun, task, &mut buf).unwrap_or(0);
                assert!(n <= len as usize);
            }
            Action::Io(io) => {
                assert!(
                    io.lba.saturating_add(io.blocks) <= blocks,
                    "I/O beyond the LU"
                );
                if defer {
                    defer = false;
                    pending.push((lun, io.task));
                    continue;
                }
                let n = (io.byte_len() as usize).min(1 << 20);
                match io.op {
                    IoOp::Verify { mode } if mode != VerifyMode::Medium => {
                        let read = vec![0u8; n];
                        let _ = t.compare_data(lun, io.task, &read, param);
                    }
                    IoOp::CompareAndWrite => {
                        let read = vec![0u8; n];
                        let _ = t.compare_data(lun, io.task, &read, &param[..n.min(param.len())]);
                    }
                    IoOp::LbaStatus => {
                        let _ = t.lba_status_result(lun, io.task, flags & 4 != 0, u64::from(flags));
                    }
                    IoOp::Unmap { .. } => {
                        for (lba, n) in UnmapRanges::new(param) {
                            assert!(lba.saturating_add(u64::from(n)) <= blocks);
                        }
                        let _ = t.complete_io(lun, io.task, IoResult::Ok);
                    }
                    _ => {
                        let r = if flags & 8 != 0 {
                            IoResult::WriteError
                        } else {
                            IoResult::Ok
                        };
                        let _ = t.complete_io(lun, io.task, r);
                    }
                }
            }
            Action::Complete {
                task,
                status,
                sense,
                residual,
            } => {
                match status {
                    ScsiStatus::CheckCondition => {
                        let s = sense.expect("CHECK CONDITION without sense");
                        let b = s.as_bytes();
                        assert!(b.len() >= 8, "short sense");
                        assert_eq!(b.len(), 8 + usize::from(b[7]), "sense length byte");
                        assert!(matches!(b[0] & 0x7f, 0x70 | 0x71 | 0x72 | 0x73));
                        assert_eq!(s.is_descriptor(), b[0] & 0x7f >= 0x72);
                    }
                    _ => assert!(sense.is_none(), "sense with status {status:?}"),
                }
                if let (Residual::Underflow(n), Some(&e)) = (residual, expected.get(&task.tag.0)) {
                    assert!(n <= e, "underflow {n} > expected {e}");
                }
            }
        }
    }
}
