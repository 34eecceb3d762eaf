//! COMPARE AND WRITE answered natively (`complete_io` on the `CompareAndWrite` request)
//! next to the emulated answer (`compare_data`, then a `Write`): the initiator must see the
//! same thing either way.

use std::vec::Vec;

use crate::*;

const N: NexusId = NexusId(1);

fn lu() -> LogicalUnit<8, 2> {
    let mut lu = LogicalUnit::new(LuConfig::new(1024).thin(true));
    lu.add_nexus(N).unwrap();
    // TEST UNIT READY takes the POWER ON unit attention.
    lu.submit(
        N,
        TaskTag(1),
        &[0; 6],
        DataDirection::None,
        0,
        TaskAttr::Simple,
    )
    .unwrap();
    while lu.poll_action().is_some() {}
    lu
}

/// COMPARE AND WRITE of `blocks` blocks at LBA 8 (optionally FUA), up to its I/O request.
fn start(lu: &mut LogicalUnit<8, 2>, tag: u32, blocks: u8, fua: bool) -> IoRequest {
    let task = TaskId {
        nexus: N,
        tag: TaskTag(tag),
    };
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&8u64.to_be_bytes());
    cdb[13] = blocks;
    let len = u32::from(blocks) * 1024;
    lu.submit(
        N,
        task.tag,
        &cdb,
        DataDirection::Write,
        len,
        TaskAttr::Simple,
    )
    .unwrap();
    assert_eq!(lu.poll_action(), Some(Action::NeedDataOut { task, len }));
    lu.data_out_ready(task, &std::vec![0u8; len as usize])
        .unwrap();
    match lu.poll_action() {
        Some(Action::Io(io)) => {
            assert_eq!(io.task, task);
            assert_eq!(io.op, IoOp::CompareAndWrite);
            assert_eq!(
                (io.lba, io.blocks, io.data_offset),
                (8, u64::from(blocks), 0)
            );
            assert_eq!(io.fua, fua);
            io
        }
        a => panic!("expected the compare-and-write I/O, got {a:?}"),
    }
}

/// The next action must be the task's completion: its status and sense bytes.
fn completion(lu: &mut LogicalUnit<8, 2>, task: TaskId) -> (ScsiStatus, Vec<u8>, Residual) {
    match lu.poll_action() {
        Some(Action::Complete {
            task: t,
            status,
            sense,
            residual,
        }) => {
            assert_eq!(t, task);
            assert!(!lu.has_task(task));
            let sense = sense.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
            (status, sense, residual)
        }
        a => panic!("expected a completion, got {a:?}"),
    }
}

#[test]
fn native_success_completes_without_a_second_write() {
    let mut lu = lu();
    let io = start(&mut lu, 2, 2, true);
    lu.complete_io(io.task, IoResult::Ok).unwrap();
    let (status, sense, residual) = completion(&mut lu, io.task);
    assert_eq!(status, ScsiStatus::Good);
    assert!(sense.is_empty());
    assert_eq!(residual, Residual::None);
    assert_eq!(lu.poll_action(), None);
    assert_eq!(lu.active_tasks(), 0);
}

#[test]
fn native_and_emulated_miscompare_give_the_same_sense() {
    // Fixed format: VALID, MISCOMPARE (0x0E), INFORMATION = 700, additional length 10,
    // ASC/ASCQ 0x1D/0x00.
    let want = [
        0xF0, 0, 0x0E, 0, 0, 0x02, 0xBC, 10, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0,
    ];
    let mut lu = lu();
    let io = start(&mut lu, 2, 2, false);
    lu.complete_io(io.task, IoResult::Miscompare { offset: 700 })
        .unwrap();
    let (status, native, _) = completion(&mut lu, io.task);
    assert_eq!(status, ScsiStatus::CheckCondition);
    assert_eq!(native, want);

    let io = start(&mut lu, 3, 2, false);
    let read = std::vec![0u8; 1024];
    let mut expected = read.clone();
    expected[700] = 1;
    lu.compare_data(io.task, &read, &expected).unwrap();
    let (status, emulated, _) = completion(&mut lu, io.task);
    assert_eq!(status, ScsiStatus::CheckCondition);
    assert_eq!(emulated, want);
    assert_eq!(lu.active_tasks(), 0);
}

#[test]
fn emulated_match_still_issues_the_write_of_the_second_half() {
    let mut lu = lu();
    let io = start(&mut lu, 2, 1, true);
    lu.compare_data(io.task, &[0; 512], &[0; 512]).unwrap();
    match lu.poll_action() {
        Some(Action::Io(w)) => {
            assert_eq!(w.op, IoOp::Write);
            assert_eq!((w.lba, w.blocks, w.data_offset, w.fua), (8, 1, 512, true));
            lu.complete_io(w.task, IoResult::Ok).unwrap();
        }
        a => panic!("expected the write, got {a:?}"),
    }
    assert_eq!(completion(&mut lu, io.task).0, ScsiStatus::Good);
}

#[test]
fn native_errors_and_aborts() {
    let mut lu = lu();
    // A write error of the native call: MEDIUM ERROR / WRITE ERROR (0x03/0x0C/0x00).
    let io = start(&mut lu, 2, 1, false);
    lu.complete_io(io.task, IoResult::WriteError).unwrap();
    let (status, sense, _) = completion(&mut lu, io.task);
    assert_eq!(status, ScsiStatus::CheckCondition);
    assert_eq!((sense[2], sense[12], sense[13]), (0x03, 0x0C, 0x00));
    // The image shrank under it: LBA OUT OF RANGE (0x05/0x21/0x00).
    let io = start(&mut lu, 3, 1, false);
    lu.complete_io(io.task, IoResult::OutOfRange).unwrap();
    let (_, sense, _) = completion(&mut lu, io.task);
    assert_eq!((sense[2], sense[12], sense[13]), (0x05, 0x21, 0x00));
    // Aborted while the native call ran: the late answer only frees the slot.
    let io = start(&mut lu, 4, 1, false);
    assert_eq!(lu.abort_task(io.task).in_flight, 1);
    lu.complete_io(io.task, IoResult::Ok).unwrap();
    assert_eq!(lu.poll_action(), None);
    assert_eq!(lu.active_tasks(), 0);
    // A second answer for a finished task is refused.
    assert_eq!(
        lu.complete_io(io.task, IoResult::Ok),
        Err(CallbackError::UnknownTask)
    );
}
