//! Running scsi-core's [`IoRequest`]s on a [`BackingStore`], synchronously.
//!
//! [`execute`] performs one request with no lock held and returns an [`IoAnswer`]; the caller
//! then takes the LU lock and hands the answer to scsi-core with [`IoAnswer::apply`]. The
//! thread-per-connection runtime calls it inline; the reactor runtime calls it from a worker
//! for the compound operations (VERIFY, COMPARE AND WRITE, ORWRITE, WRITE SAME with data,
//! SANITIZE, EXTENDED COPY, GET LBA STATUS), and for every operation of a LUN without an
//! asynchronous engine. On a LUN with one (Ceph RBD), plain reads, writes, flushes, UNMAP
//! and WRITE SAME that unmaps or zeroes go to the engine instead, through
//! [`crate::engines::EngineSet`], which reports results exactly as this module does.
//!
//! COMPARE AND WRITE and WRITE SAME use the store's own
//! [`compare_and_write`](BackingStore::compare_and_write) and
//! [`write_same`](BackingStore::write_same) when it has them (Ceph RBD: librbd's atomic
//! compare-and-write, `rbd_aio_writesame`), and emulate them when the store answers
//! [`ErrorKind::Unsupported`] (file, memory, NBD stores):
//!
//! - COMPARE AND WRITE natively → [`IoAnswer::Complete`] with [`IoResult::Ok`] (scsi-core
//!   completes it with GOOD and issues no separate write) or [`IoResult::Miscompare`] with
//!   the offset of the first differing byte (CHECK CONDITION, MISCOMPARE / MISCOMPARE
//!   DURING VERIFY OPERATION, the offset in INFORMATION). Emulated → the range is read
//!   and [`IoAnswer::Compare`] hands it to scsi-core's `compare_data`, which reports the
//!   miscompare the same way or issues the write of the second half of the Data-Out
//!   buffer as a second request.
//! - WRITE SAME natively → one call for the whole range; emulated → the block repeated in
//!   a buffer of up to 1 MiB, written piece by piece. The UNMAP bit (deallocate) and a zero
//!   block or NDOB (write zeroes) do not go through `write_same` at all.

use backstore::{BackingStore, CompareAndWrite, ErrorKind, StoreError};
use scsi_core::{
    IoOp, IoRequest, IoResult, SanitizeKind, TaskId, UnmapRanges, VerifyMode, or_into,
};

/// The largest chunk WRITE SAME writes at once (the block repeated).
const WRITE_SAME_CHUNK: usize = 1 << 20;

/// The largest chunk EXTENDED COPY moves at once.
const COPY_CHUNK: usize = 1 << 20;

/// What the store answered for one request, in the form scsi-core takes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAnswer {
    /// `complete_io(task, result)`.
    Complete(IoResult),
    /// `compare_data(task, &scratch[..read_len], expected)`: the range was read into the
    /// scratch buffer; `expected` is the Data-Out buffer from offset 0 for `expected_len`
    /// bytes.
    Compare {
        /// Bytes read into the scratch buffer.
        read_len: usize,
        /// Bytes of the Data-Out buffer to compare against.
        expected_len: usize,
    },
    /// `lba_status_result(task, mapped, blocks)`.
    LbaStatus {
        /// The extent holds data.
        mapped: bool,
        /// Its length in blocks.
        blocks: u64,
    },
}

/// The LU calls an answer is applied through ([`scsi_core::LogicalUnit`] and
/// [`scsi_core::Target`] both fit).
pub trait IoCallbacks {
    /// `complete_io`.
    fn complete_io(&mut self, task: TaskId, result: IoResult);
    /// `compare_data`.
    fn compare_data(&mut self, task: TaskId, read: &[u8], expected: &[u8]);
    /// `lba_status_result`.
    fn lba_status_result(&mut self, task: TaskId, mapped: bool, blocks: u64);
}

impl IoAnswer {
    /// Hands the answer to scsi-core. `data` is the task's Data-Out buffer and `scratch` the
    /// buffer [`execute`] read into.
    pub fn apply(self, lu: &mut impl IoCallbacks, task: TaskId, data: &[u8], scratch: &[u8]) {
        match self {
            IoAnswer::Complete(r) => lu.complete_io(task, r),
            IoAnswer::Compare {
                read_len,
                expected_len,
            } => {
                let read = scratch.get(..read_len).unwrap_or(scratch);
                let expected = data.get(..expected_len).unwrap_or(data);
                lu.compare_data(task, read, expected);
            }
            IoAnswer::LbaStatus { mapped, blocks } => lu.lba_status_result(task, mapped, blocks),
        }
    }
}

/// Maps a store error to what scsi-core reports for it, given the direction of the failed
/// operation.
pub fn io_result(e: StoreError, writing: bool) -> IoResult {
    match e.kind() {
        ErrorKind::Io if writing => IoResult::WriteError,
        ErrorKind::Io => IoResult::ReadError,
        ErrorKind::NoSpace => IoResult::NoSpace,
        ErrorKind::OutOfRange => IoResult::OutOfRange,
        ErrorKind::Cancelled => IoResult::NotReady,
        ErrorKind::ReadOnly | ErrorKind::Unsupported | ErrorKind::Invalid => IoResult::Failed,
    }
}

fn len_of(req: &IoRequest) -> Result<usize, IoResult> {
    usize::try_from(req.byte_len()).map_err(|_| IoResult::OutOfRange)
}

fn slice(buf: &[u8], off: usize, len: usize) -> Result<&[u8], IoResult> {
    off.checked_add(len)
        .and_then(|end| buf.get(off..end))
        .ok_or(IoResult::Failed)
}

/// What a read or write that had to move `want` bytes reports: done when it moved them
/// all; a short read ran past the end, a short write failed; a store error by its kind.
pub(crate) fn transfer_result(
    r: Result<usize, StoreError>,
    want: usize,
    writing: bool,
) -> Result<(), IoResult> {
    match r {
        Ok(n) if n == want => Ok(()),
        Ok(_) if writing => Err(IoResult::WriteError),
        Ok(_) => Err(IoResult::OutOfRange),
        Err(e) => Err(io_result(e, writing)),
    }
}

/// The bytes a plain WRITE request writes: its range of the task buffer `data`. `None` for
/// any other operation, or when `data` is too short to hold them.
pub(crate) fn write_data<'a>(req: &IoRequest, data: &'a [u8]) -> Option<&'a [u8]> {
    if req.op != IoOp::Write {
        return None;
    }
    slice(data, req.data_offset as usize, len_of(req).ok()?).ok()
}

fn read_full(store: &dyn BackingStore, buf: &mut [u8], offset: u64) -> Result<(), IoResult> {
    transfer_result(store.read_at(buf, offset), buf.len(), false)
}

fn write_full(
    store: &dyn BackingStore,
    buf: &[u8],
    offset: u64,
    fua: bool,
) -> Result<(), IoResult> {
    transfer_result(store.write_at(buf, offset, fua), buf.len(), true)
}

/// Performs `req` on `store`. `data` is the task's buffer (read data lands at its start;
/// write data is taken from `req.data_offset`); `scratch` is grown as needed for the
/// operations that read before they compare or write.
pub fn execute(
    store: &dyn BackingStore,
    req: &IoRequest,
    data: &mut [u8],
    scratch: &mut Vec<u8>,
) -> IoAnswer {
    match run(store, req, data, scratch) {
        Ok(a) => a,
        Err(r) => IoAnswer::Complete(r),
    }
}

/// Performs `req` without blocking if it is a read the page cache holds entirely
/// ([`BackingStore::try_read_cached`]); `None` when it must go to a thread that may block.
pub fn try_execute_cached(
    store: &dyn BackingStore,
    req: &IoRequest,
    data: &mut [u8],
) -> Option<IoAnswer> {
    if req.op != IoOp::Read {
        return None;
    }
    let buf = data.get_mut(..len_of(req).ok()?)?;
    match store.try_read_cached(buf, req.byte_offset())? {
        Ok(_) => Some(IoAnswer::Complete(IoResult::Ok)),
        // Let the blocking path produce the error with its full handling.
        Err(_) => None,
    }
}

/// Performs an [`IoOp::Copy`]: `req.blocks` blocks from `src` at the op's `src_lba` to `dst`
/// at `req.lba`, through `scratch` in chunks of at most 1 MiB. `same` says both are the same
/// store (one LU): overlapping ranges are then copied back to front when the destination
/// lies above the source, so every block is read before it is overwritten.
pub fn execute_copy(
    src: &dyn BackingStore,
    dst: &dyn BackingStore,
    same: bool,
    req: &IoRequest,
    scratch: &mut Vec<u8>,
) -> IoAnswer {
    match copy(src, dst, same, req, scratch) {
        Ok(()) => IoAnswer::Complete(IoResult::Ok),
        Err(r) => IoAnswer::Complete(r),
    }
}

fn copy(
    src: &dyn BackingStore,
    dst: &dyn BackingStore,
    same: bool,
    req: &IoRequest,
    scratch: &mut Vec<u8>,
) -> Result<(), IoResult> {
    let IoOp::Copy { src_lba, .. } = req.op else {
        return Err(IoResult::Failed);
    };
    let bs = u64::from(req.block_size.max(1));
    let per = (COPY_CHUNK as u64 / bs).max(1);
    let backwards = same && req.lba > src_lba && req.lba < src_lba.saturating_add(req.blocks);
    let mut done = 0u64;
    while done < req.blocks {
        let n = (req.blocks - done).min(per);
        // Block offset of this chunk within the range.
        let k = if backwards {
            req.blocks - done - n
        } else {
            done
        };
        let len = usize::try_from(n * bs).map_err(|_| IoResult::Failed)?;
        scratch.resize(len, 0);
        let from = src_lba
            .checked_add(k)
            .and_then(|l| l.checked_mul(bs))
            .ok_or(IoResult::OutOfRange)?;
        let to = req
            .lba
            .checked_add(k)
            .and_then(|l| l.checked_mul(bs))
            .ok_or(IoResult::OutOfRange)?;
        read_full(src, &mut scratch[..len], from)?;
        write_full(dst, &scratch[..len], to, req.fua)?;
        done += n;
    }
    Ok(())
}

/// SANITIZE: erase (deallocate, or zero) the whole range, or overwrite it `passes` times
/// with the pattern from the Data-Out buffer, 1 MiB at a time.
fn sanitize(
    store: &dyn BackingStore,
    req: &IoRequest,
    kind: SanitizeKind,
    data: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), IoResult> {
    let off = req.byte_offset();
    let len = req.byte_len();
    let SanitizeKind::Overwrite {
        pattern_len,
        invert,
        passes,
    } = kind
    else {
        match store.unmap(off, len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                store
                    .write_zeroes(off, len)
                    .map_err(|e| io_result(e, true))?;
            }
            Err(e) => return Err(io_result(e, true)),
        }
        return store.flush().map_err(|e| io_result(e, true));
    };
    let bs = req.block_size as usize;
    let pattern = slice(data, req.data_offset as usize, usize::from(pattern_len))?;
    if bs == 0 || pattern.is_empty() {
        return Err(IoResult::Failed);
    }
    let per = (COPY_CHUNK / bs).max(1);
    let chunk_blocks = req.blocks.min(per as u64) as usize;
    for pass in 0..passes {
        // One block of the pattern, repeated to fill the chunk.
        scratch.clear();
        scratch.extend(pattern.iter().copied().cycle().take(bs));
        if invert && pass % 2 == 1 {
            scratch.iter_mut().for_each(|b| *b = !*b);
        }
        for _ in 1..chunk_blocks {
            scratch.extend_from_within(..bs);
        }
        let mut done = 0u64;
        while done < req.blocks {
            let n = (req.blocks - done).min(chunk_blocks as u64) as usize;
            let at = off.saturating_add(done.saturating_mul(bs as u64));
            write_full(store, &scratch[..n * bs], at, false)?;
            done += n as u64;
        }
    }
    store.flush().map_err(|e| io_result(e, true))
}

fn run(
    store: &dyn BackingStore,
    req: &IoRequest,
    data: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<IoAnswer, IoResult> {
    let off = req.byte_offset();
    let ok = IoAnswer::Complete(IoResult::Ok);
    match req.op {
        IoOp::Read => {
            let n = len_of(req)?;
            let buf = data.get_mut(..n).ok_or(IoResult::Failed)?;
            read_full(store, buf, off)?;
            Ok(ok)
        }
        IoOp::Write => {
            let n = len_of(req)?;
            write_full(
                store,
                slice(data, req.data_offset as usize, n)?,
                off,
                req.fua,
            )?;
            Ok(ok)
        }
        IoOp::Flush => {
            store.flush().map_err(|e| io_result(e, true))?;
            Ok(ok)
        }
        IoOp::Prefetch => Ok(ok),
        IoOp::Unmap { .. } => {
            let bs = u64::from(req.block_size);
            for (lba, blocks) in UnmapRanges::new(data) {
                if blocks == 0 {
                    continue;
                }
                let (o, l) = (lba.saturating_mul(bs), u64::from(blocks).saturating_mul(bs));
                store.unmap(o, l).map_err(|e| io_result(e, true))?;
            }
            Ok(ok)
        }
        IoOp::WriteSame { unmap, ndob, zero } => {
            let len = req.byte_len();
            // UNMAP deallocates whatever the block holds (scsi-core sets it on thin LUs
            // only); a store that cannot deallocate writes zeros instead.
            if unmap {
                return match store.unmap(off, len) {
                    Ok(()) => Ok(ok),
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        store
                            .write_zeroes(off, len)
                            .map_err(|e| io_result(e, true))?;
                        Ok(ok)
                    }
                    Err(e) => Err(io_result(e, true)),
                };
            }
            if zero || ndob {
                store
                    .write_zeroes(off, len)
                    .map_err(|e| io_result(e, true))?;
                if req.fua {
                    store.flush().map_err(|e| io_result(e, true))?;
                }
                return Ok(ok);
            }
            let bs = req.block_size as usize;
            let block = slice(data, req.data_offset as usize, bs)?;
            match store.write_same(off, len, block, req.fua) {
                Ok(()) => return Ok(ok),
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                Err(e) => return Err(io_result(e, true)),
            }
            let per = (WRITE_SAME_CHUNK / bs).max(1);
            let chunk_blocks = (req.blocks).min(per as u64) as usize;
            scratch.clear();
            for _ in 0..chunk_blocks {
                scratch.extend_from_slice(block);
            }
            let mut done = 0u64;
            while done < req.blocks {
                let n = (req.blocks - done).min(chunk_blocks as u64) as usize;
                let at = off.saturating_add(done.saturating_mul(bs as u64));
                write_full(store, &scratch[..n * bs], at, req.fua)?;
                done += n as u64;
            }
            Ok(ok)
        }
        IoOp::Verify { mode } => {
            let n = len_of(req)?;
            scratch.resize(n, 0);
            read_full(store, scratch, off)?;
            match mode {
                VerifyMode::Medium => Ok(ok),
                VerifyMode::Compare => Ok(IoAnswer::Compare {
                    read_len: n,
                    expected_len: n,
                }),
                VerifyMode::CompareEachWithOne => Ok(IoAnswer::Compare {
                    read_len: n,
                    expected_len: (req.block_size as usize).min(data.len()),
                }),
            }
        }
        IoOp::CompareAndWrite => {
            let n = len_of(req)?;
            // The Data-Out buffer: the data to compare, then the data to write.
            let at = req.data_offset as usize;
            let cmp = slice(data, at, n)?;
            let new = slice(data, at.checked_add(n).ok_or(IoResult::Failed)?, n)?;
            match store.compare_and_write(cmp, new, off, req.fua) {
                Ok(CompareAndWrite::Written) => return Ok(ok),
                Ok(CompareAndWrite::Miscompare { offset }) => {
                    // Keep a store's bogus offset inside the compared range.
                    let offset = offset.min(req.byte_len().saturating_sub(1));
                    return Ok(IoAnswer::Complete(IoResult::Miscompare { offset }));
                }
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                Err(e) => return Err(io_result(e, true)),
            }
            scratch.resize(n, 0);
            read_full(store, scratch, off)?;
            Ok(IoAnswer::Compare {
                read_len: n,
                expected_len: n,
            })
        }
        IoOp::OrWrite => {
            let n = len_of(req)?;
            scratch.resize(n, 0);
            read_full(store, scratch, off)?;
            or_into(scratch, slice(data, req.data_offset as usize, n)?);
            write_full(store, scratch, off, req.fua)?;
            Ok(ok)
        }
        IoOp::Sanitize { kind } => {
            sanitize(store, req, kind, data, scratch)?;
            Ok(ok)
        }
        IoOp::Copy {
            src_lun, dst_lun, ..
        } => {
            // Through `execute` only a copy within one LU can run (the driver passes both
            // stores to `execute_copy` otherwise).
            if src_lun != dst_lun {
                return Err(IoResult::Failed);
            }
            copy(store, store, true, req, scratch)?;
            Ok(ok)
        }
        IoOp::LbaStatus => {
            let st = store.lba_status(off).map_err(|e| io_result(e, false))?;
            let bs = u64::from(req.block_size).max(1);
            Ok(IoAnswer::LbaStatus {
                mapped: st.mapped,
                blocks: (st.len / bs).max(1),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use backstore::MemoryStore;
    use scsi_core::{NexusId, TaskTag};

    /// A request of `blocks` 512-byte blocks at `lba` (task 7 of nexus 1).
    pub(crate) fn req(op: IoOp, lba: u64, blocks: u64) -> IoRequest {
        IoRequest {
            task: TaskId {
                nexus: NexusId(1),
                tag: TaskTag(7),
            },
            op,
            lba,
            blocks,
            block_size: 512,
            fua: false,
            dpo: false,
            data_offset: 0,
            transfer_len: (blocks * 512) as u32,
        }
    }

    #[test]
    fn cached_reads_run_without_blocking_other_ops_do_not() {
        // A file whose pages the page cache holds (just written through it).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun.img");
        let opts = backstore::OpenOptions {
            create_size: Some(1 << 20),
            block_size: 512,
            ..backstore::OpenOptions::default()
        };
        let file = backstore::FileStore::open(&path, &opts).unwrap();
        file.write_at(&[0x5a; 4096], 8192, false).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            try_execute_cached(&file, &req(IoOp::Read, 16, 8), &mut buf),
            Some(IoAnswer::Complete(IoResult::Ok))
        );
        assert_eq!(buf, vec![0x5a; 4096]);
        // Writes, and reads past the end, go the blocking way.
        assert_eq!(
            try_execute_cached(&file, &req(IoOp::Write, 16, 8), &mut buf),
            None
        );
        assert_eq!(
            try_execute_cached(&file, &req(IoOp::Read, 4096, 8), &mut buf),
            None
        );
        // A buffer too small for the request is not read into.
        assert_eq!(
            try_execute_cached(&file, &req(IoOp::Read, 0, 16), &mut buf),
            None
        );
        // A RAM disk is always "cached".
        let mem = MemoryStore::new(1 << 20, 512).unwrap();
        assert_eq!(
            try_execute_cached(&mem, &req(IoOp::Read, 0, 8), &mut buf),
            Some(IoAnswer::Complete(IoResult::Ok))
        );
        assert_eq!(buf, vec![0; 4096]);
    }

    #[derive(Default)]
    struct Rec(Vec<String>);
    impl IoCallbacks for Rec {
        fn complete_io(&mut self, _: TaskId, r: IoResult) {
            self.0.push(format!("complete {r:?}"));
        }
        fn compare_data(&mut self, _: TaskId, read: &[u8], expected: &[u8]) {
            self.0.push(format!(
                "compare {} {} {}",
                read.len(),
                expected.len(),
                read == expected
            ));
        }
        fn lba_status_result(&mut self, _: TaskId, mapped: bool, blocks: u64) {
            self.0.push(format!("lba {mapped} {blocks}"));
        }
    }

    fn store() -> MemoryStore {
        MemoryStore::new(1 << 20, 512).unwrap()
    }

    #[test]
    fn write_then_read_and_verify() {
        let s = store();
        let mut scratch = Vec::new();
        let mut data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let w = execute(&s, &req(IoOp::Write, 4, 2), &mut data, &mut scratch);
        assert_eq!(w, IoAnswer::Complete(IoResult::Ok));
        let mut back = vec![0u8; 1024];
        let r = execute(&s, &req(IoOp::Read, 4, 2), &mut back, &mut scratch);
        assert_eq!(r, IoAnswer::Complete(IoResult::Ok));
        assert_eq!(back, data);
        let v = execute(
            &s,
            &req(
                IoOp::Verify {
                    mode: VerifyMode::Compare,
                },
                4,
                2,
            ),
            &mut data,
            &mut scratch,
        );
        assert_eq!(
            v,
            IoAnswer::Compare {
                read_len: 1024,
                expected_len: 1024
            }
        );
        let mut rec = Rec::default();
        v.apply(&mut rec, req(IoOp::Read, 0, 0).task, &data, &scratch);
        assert_eq!(rec.0, ["compare 1024 1024 true"]);
    }

    #[test]
    fn out_of_range_and_short_buffers() {
        let s = store();
        let mut scratch = Vec::new();
        let mut data = vec![0u8; 512];
        let r = execute(&s, &req(IoOp::Read, 2048, 1), &mut data, &mut scratch);
        assert_eq!(r, IoAnswer::Complete(IoResult::OutOfRange));
        // A request larger than the task's buffer fails cleanly instead of panicking.
        let r = execute(&s, &req(IoOp::Read, 0, 4), &mut data, &mut scratch);
        assert_eq!(r, IoAnswer::Complete(IoResult::Failed));
    }

    #[test]
    fn write_same_orwrite_unmap_and_status() {
        let s = store();
        let mut scratch = Vec::new();
        let mut block = vec![0xA5u8; 512];
        let ws = IoOp::WriteSame {
            unmap: false,
            ndob: false,
            zero: false,
        };
        assert_eq!(
            execute(&s, &req(ws, 10, 5), &mut block, &mut scratch),
            IoAnswer::Complete(IoResult::Ok)
        );
        let mut back = vec![0u8; 5 * 512];
        execute(&s, &req(IoOp::Read, 10, 5), &mut back, &mut scratch);
        assert!(back.iter().all(|&b| b == 0xA5));

        let mut ormask = vec![0x5Au8; 512];
        execute(&s, &req(IoOp::OrWrite, 10, 1), &mut ormask, &mut scratch);
        let mut one = vec![0u8; 512];
        execute(&s, &req(IoOp::Read, 10, 1), &mut one, &mut scratch);
        assert!(one.iter().all(|&b| b == 0xFF));

        let st = execute(&s, &req(IoOp::LbaStatus, 10, 1), &mut one, &mut scratch);
        assert!(
            matches!(st, IoAnswer::LbaStatus { mapped: true, .. }),
            "{st:?}"
        );

        // UNMAP parameter list: 8-byte header, one 16-byte descriptor (LBA 0, 2048 blocks).
        let mut param = vec![0u8; 24];
        param[1] = 22;
        param[3] = 16;
        param[8 + 8..8 + 12].copy_from_slice(&2048u32.to_be_bytes());
        let u = execute(
            &s,
            &req(IoOp::Unmap { descriptors: 1 }, 0, 0),
            &mut param,
            &mut scratch,
        );
        assert_eq!(u, IoAnswer::Complete(IoResult::Ok));
        execute(&s, &req(IoOp::Read, 10, 1), &mut one, &mut scratch);
        assert!(one.iter().all(|&b| b == 0));
        let st = execute(&s, &req(IoOp::LbaStatus, 10, 1), &mut one, &mut scratch);
        assert!(
            matches!(st, IoAnswer::LbaStatus { mapped: false, .. }),
            "{st:?}"
        );
    }

    fn copy_req(src_lba: u64, lba: u64, blocks: u64, src_lun: u16, dst_lun: u16) -> IoRequest {
        let mut r = req(
            IoOp::Copy {
                src_lun,
                src_lba,
                dst_lun,
            },
            lba,
            blocks,
        );
        r.transfer_len = 0;
        r
    }

    #[test]
    fn copy_within_a_store_overlapping_both_ways_and_between_stores() {
        let mut scratch = Vec::new();
        let pat: Vec<u8> = (0..16 * 512u32).map(|i| (i / 512) as u8 + 1).collect();
        for (src, dst) in [(10u64, 14u64), (14, 10)] {
            let s = store();
            let mut d = pat.clone();
            execute(&s, &req(IoOp::Write, src, 16), &mut d, &mut scratch);
            // Through `execute` (one LU) and `execute_copy` with `same`.
            let a = execute(&s, &copy_req(src, dst, 16, 3, 3), &mut [], &mut scratch);
            assert_eq!(a, IoAnswer::Complete(IoResult::Ok));
            let mut back = vec![0u8; 16 * 512];
            execute(&s, &req(IoOp::Read, dst, 16), &mut back, &mut scratch);
            assert_eq!(back, pat, "copy {src} -> {dst}");
        }
        // Chunked: 3 MiB between two stores.
        let a = MemoryStore::new(8 << 20, 512).unwrap();
        let b = MemoryStore::new(8 << 20, 512).unwrap();
        let blocks = 6144u64;
        let mut big: Vec<u8> = (0..blocks as usize * 512)
            .map(|i| (i % 251) as u8)
            .collect();
        execute(&a, &req(IoOp::Write, 0, blocks), &mut big, &mut scratch);
        let r = execute_copy(&a, &b, false, &copy_req(0, 100, blocks, 1, 2), &mut scratch);
        assert_eq!(r, IoAnswer::Complete(IoResult::Ok));
        assert!(scratch.len() <= COPY_CHUNK);
        let mut back = vec![0u8; big.len()];
        execute(&b, &req(IoOp::Read, 100, blocks), &mut back, &mut scratch);
        assert_eq!(back, big);
        // Past the end of the destination: the write fails.
        let r = execute_copy(&a, &b, false, &copy_req(0, 16383, 2, 1, 2), &mut scratch);
        assert_ne!(r, IoAnswer::Complete(IoResult::Ok));
        // `execute` cannot copy between LUs.
        let r = execute(&a, &copy_req(0, 1, 1, 1, 2), &mut [], &mut scratch);
        assert_eq!(r, IoAnswer::Complete(IoResult::Failed));
    }

    #[test]
    fn sanitize_overwrite_with_inversion_and_erase() {
        let s = MemoryStore::new(3 << 20, 512).unwrap();
        let mut scratch = Vec::new();
        let blocks = (3u64 << 20) / 512;
        let mut param = vec![0u8, 0, 0, 3, 1, 2, 3];
        let mut r = req(
            IoOp::Sanitize {
                kind: SanitizeKind::Overwrite {
                    pattern_len: 3,
                    invert: true,
                    passes: 2,
                },
            },
            0,
            blocks,
        );
        r.data_offset = 4;
        assert_eq!(
            execute(&s, &r, &mut param, &mut scratch),
            IoAnswer::Complete(IoResult::Ok)
        );
        assert!(scratch.len() <= COPY_CHUNK);
        // The second pass wrote the complement; each block starts the pattern afresh.
        let mut back = vec![0u8; 1024];
        execute(&s, &req(IoOp::Read, blocks - 2, 2), &mut back, &mut scratch);
        assert_eq!(&back[..4], &[!1, !2, !3, !1]);
        assert_eq!(&back[510..514], &[!1, !2, !1, !2]);
        let e = req(
            IoOp::Sanitize {
                kind: SanitizeKind::Erase,
            },
            0,
            blocks,
        );
        assert_eq!(
            execute(&s, &e, &mut [], &mut scratch),
            IoAnswer::Complete(IoResult::Ok)
        );
        execute(&s, &req(IoOp::Read, blocks - 2, 2), &mut back, &mut scratch);
        assert!(back.iter().all(|b| *b == 0));
        // A pattern beyond the buffer fails cleanly.
        r.data_offset = 6;
        assert_eq!(
            execute(&s, &r, &mut param, &mut scratch),
            IoAnswer::Complete(IoResult::Failed)
        );
    }

    #[test]
    fn store_errors_map_to_sense_classes() {
        use backstore::engine::Op;
        use backstore::testing::InstrumentedStore;
        let s = InstrumentedStore::new(store());
        let mut scratch = Vec::new();
        let mut data = vec![0u8; 512];
        s.fail(Op::Read, None, libc_eio());
        assert_eq!(
            execute(&s, &req(IoOp::Read, 0, 1), &mut data, &mut scratch),
            IoAnswer::Complete(IoResult::ReadError)
        );
        s.fail(Op::Write, None, 28 /* ENOSPC */);
        assert_eq!(
            execute(&s, &req(IoOp::Write, 0, 1), &mut data, &mut scratch),
            IoAnswer::Complete(IoResult::NoSpace)
        );
        s.clear_faults();
        s.fail(Op::Write, None, libc_eio());
        // ORWRITE reads fine, then its write fails: a write error.
        assert_eq!(
            execute(&s, &req(IoOp::OrWrite, 0, 1), &mut data, &mut scratch),
            IoAnswer::Complete(IoResult::WriteError)
        );
        assert_eq!(
            io_result(StoreError::OUT_OF_RANGE, true),
            IoResult::OutOfRange
        );
        assert_eq!(io_result(StoreError::CANCELLED, false), IoResult::NotReady);
    }

    fn libc_eio() -> i32 {
        5
    }

    /// A RAM disk with the optional native methods, recording how it was called; with
    /// `native` off they answer Unsupported (as file/memory/NBD stores do).
    struct NativeStore {
        inner: MemoryStore,
        native: bool,
        fail: Option<StoreError>,
        /// Report every compare as a miscompare at this offset.
        miscompare_at: Option<u64>,
        calls: std::sync::Mutex<Vec<String>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl NativeStore {
        fn new(native: bool) -> NativeStore {
            NativeStore {
                inner: MemoryStore::new(4 << 20, 512).unwrap(),
                native,
                fail: None,
                miscompare_at: None,
                calls: Default::default(),
                reads: Default::default(),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl BackingStore for NativeStore {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn block_size(&self) -> u32 {
            self.inner.block_size()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_thin(&self) -> bool {
            true
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("write {offset} {} {fua}", buf.len()));
            self.inner.write_at(buf, offset, fua)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush()
        }
        fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unmap {offset} {len}"));
            self.inner.unmap(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("zeroes {offset} {len}"));
            self.inner.write_zeroes(offset, len)
        }
        fn compare_and_write(
            &self,
            cmp: &[u8],
            data: &[u8],
            offset: u64,
            fua: bool,
        ) -> Result<CompareAndWrite, StoreError> {
            if !self.native {
                return Err(StoreError::UNSUPPORTED);
            }
            self.calls.lock().unwrap().push(format!(
                "caw {offset} {} {} {fua}",
                cmp.len(),
                data.len()
            ));
            if let Some(e) = self.fail {
                return Err(e);
            }
            if let Some(offset) = self.miscompare_at {
                return Ok(CompareAndWrite::Miscompare { offset });
            }
            let mut cur = vec![0u8; cmp.len()];
            self.inner.read_at(&mut cur, offset)?;
            if let Some(i) = cur.iter().zip(cmp).position(|(a, b)| a != b) {
                return Ok(CompareAndWrite::Miscompare { offset: i as u64 });
            }
            self.inner.write_at(data, offset, fua)?;
            Ok(CompareAndWrite::Written)
        }
        fn write_same(
            &self,
            offset: u64,
            len: u64,
            block: &[u8],
            fua: bool,
        ) -> Result<(), StoreError> {
            if !self.native {
                return Err(StoreError::UNSUPPORTED);
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("same {offset} {len} {} {fua}", block.len()));
            if let Some(e) = self.fail {
                return Err(e);
            }
            let mut at = offset;
            while at < offset + len {
                self.inner.write_at(block, at, fua)?;
                at += block.len() as u64;
            }
            Ok(())
        }
    }

    /// A COMPARE AND WRITE request of `blocks` blocks at `lba` (Data-Out: 2 × blocks).
    fn caw_req(lba: u64, blocks: u64, fua: bool) -> IoRequest {
        let mut r = req(IoOp::CompareAndWrite, lba, blocks);
        r.fua = fua;
        r.transfer_len = (2 * blocks * 512) as u32;
        r
    }

    fn read_back(s: &dyn BackingStore, lba: u64, blocks: u64) -> Vec<u8> {
        let mut b = vec![0u8; blocks as usize * 512];
        s.read_at(&mut b, lba * 512).unwrap();
        b
    }

    #[test]
    fn native_compare_and_write_success_and_miscompare() {
        let s = NativeStore::new(true);
        let old: Vec<u8> = (0..1024u32).map(|i| (i % 253) as u8).collect();
        s.inner.write_at(&old, 8 * 512, false).unwrap();
        let mut scratch = Vec::new();
        // Match: written in one native call, no read by the executor.
        let mut data = old.clone();
        data.extend_from_slice(&[0x33; 1024]);
        let a = execute(&s, &caw_req(8, 2, true), &mut data, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::Ok));
        assert_eq!(s.calls(), ["caw 4096 1024 1024 true"]);
        assert_eq!(s.reads(), 0);
        assert!(scratch.is_empty());
        assert_eq!(read_back(&s.inner, 8, 2), vec![0x33; 1024]);
        // Miscompare at byte 700 of the compared range: nothing written.
        let mut data = vec![0x33u8; 1024];
        data[700] = 0;
        data.extend_from_slice(&[0x44; 1024]);
        let a = execute(&s, &caw_req(8, 2, false), &mut data, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::Miscompare { offset: 700 }));
        assert_eq!(read_back(&s.inner, 8, 2), vec![0x33; 1024]);
        let mut rec = Rec::default();
        a.apply(&mut rec, caw_req(8, 2, false).task, &data, &scratch);
        assert_eq!(rec.0, ["complete Miscompare { offset: 700 }"]);
        // A store error is a write error; nothing is emulated after it.
        let mut failing = NativeStore::new(true);
        failing.fail = Some(StoreError::IO);
        let a = execute(&failing, &caw_req(8, 2, false), &mut data, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::WriteError));
        assert_eq!(failing.reads(), 0);
        failing.fail = Some(StoreError::OUT_OF_RANGE);
        let a = execute(&failing, &caw_req(8, 2, false), &mut data, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::OutOfRange));
        // An offset past the compared range (a store's bug) is kept inside it.
        let mut odd = NativeStore::new(true);
        odd.miscompare_at = Some(5000);
        let a = execute(&odd, &caw_req(8, 2, false), &mut data, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::Miscompare { offset: 1023 }));
        // A Data-Out buffer shorter than both halves fails cleanly.
        let mut short = vec![0x33u8; 1500];
        let a = execute(&s, &caw_req(8, 2, false), &mut short, &mut scratch);
        assert_eq!(a, IoAnswer::Complete(IoResult::Failed));
    }

    #[test]
    fn compare_and_write_falls_back_to_emulation() {
        let s = NativeStore::new(false);
        s.inner.write_at(&[5; 512], 0, false).unwrap();
        let mut scratch = Vec::new();
        let mut data = vec![5u8; 512];
        data.extend_from_slice(&[6; 512]);
        let a = execute(&s, &caw_req(0, 1, false), &mut data, &mut scratch);
        // The range is read for scsi-core's compare_data; no write yet.
        assert_eq!(
            a,
            IoAnswer::Compare {
                read_len: 512,
                expected_len: 512
            }
        );
        assert_eq!(s.reads(), 1);
        assert!(s.calls().is_empty());
        assert_eq!(scratch, vec![5; 512]);
        // MemoryStore has no native compare-and-write either.
        let m = store();
        let a = execute(&m, &caw_req(0, 1, false), &mut data, &mut scratch);
        assert_eq!(
            a,
            IoAnswer::Compare {
                read_len: 512,
                expected_len: 512
            }
        );
    }

    /// Drives one COMPARE AND WRITE through a real scsi-core LU and `execute` (the way the
    /// driver does): its final status, sense bytes, and the I/O requests it made.
    fn caw_through_lu(
        s: &dyn BackingStore,
        compare: &[u8],
        write: &[u8],
    ) -> (scsi_core::ScsiStatus, Vec<u8>, Vec<IoOp>) {
        use scsi_core::{Action, DataDirection, LogicalUnit, LuConfig, TaskAttr};
        struct Lu<'a>(&'a mut LogicalUnit<8, 2>);
        impl IoCallbacks for Lu<'_> {
            fn complete_io(&mut self, task: TaskId, r: IoResult) {
                self.0.complete_io(task, r).unwrap();
            }
            fn compare_data(&mut self, task: TaskId, read: &[u8], expected: &[u8]) {
                self.0.compare_data(task, read, expected).unwrap();
            }
            fn lba_status_result(&mut self, task: TaskId, mapped: bool, blocks: u64) {
                self.0.lba_status_result(task, mapped, blocks).unwrap();
            }
        }
        let nexus = NexusId(1);
        let mut lu = LogicalUnit::<8, 2>::new(LuConfig::new(2048).thin(true));
        lu.add_nexus(nexus).unwrap();
        // TEST UNIT READY clears the POWER ON unit attention.
        lu.submit(
            nexus,
            TaskTag(1),
            &[0; 6],
            DataDirection::None,
            0,
            TaskAttr::Simple,
        )
        .unwrap();
        while lu.poll_action().is_some() {}
        let blocks = compare.len() / 512;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[2..10].copy_from_slice(&8u64.to_be_bytes());
        cdb[13] = blocks as u8;
        let mut data = compare.to_vec();
        data.extend_from_slice(write);
        let task = TaskId {
            nexus,
            tag: TaskTag(2),
        };
        lu.submit(
            nexus,
            task.tag,
            &cdb,
            DataDirection::Write,
            data.len() as u32,
            TaskAttr::Simple,
        )
        .unwrap();
        let mut scratch = Vec::new();
        let mut ops = Vec::new();
        loop {
            match lu.poll_action().expect("an action") {
                Action::NeedDataOut { len, .. } => {
                    assert_eq!(len as usize, data.len());
                    lu.data_out_ready(task, &data).unwrap();
                }
                Action::Io(io) => {
                    ops.push(io.op);
                    let a = execute(s, &io, &mut data, &mut scratch);
                    a.apply(&mut Lu(&mut lu), io.task, &data, &scratch);
                }
                Action::Complete { status, sense, .. } => {
                    let sense = sense.map(|d| d.as_bytes().to_vec()).unwrap_or_default();
                    return (status, sense, ops);
                }
                a => panic!("unexpected {a:?}"),
            }
        }
    }

    #[test]
    fn native_and_emulated_compare_and_write_report_the_same_to_the_initiator() {
        use scsi_core::ScsiStatus;
        let old: Vec<u8> = (0..1024u32).map(|i| (i % 7) as u8).collect();
        let mut bad = old.clone();
        bad[515] ^= 0xFF;
        // Fixed-format sense: VALID, MISCOMPARE, INFORMATION = 515, additional length 10,
        // MISCOMPARE DURING VERIFY OPERATION (0x1D/0x00).
        let miscompare = [
            0xF0, 0, 0x0E, 0, 0, 0x02, 0x03, 10, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0,
        ];
        for native in [true, false] {
            let s = NativeStore::new(native);
            s.inner.write_at(&old, 8 * 512, false).unwrap();
            let (status, sense, ops) = caw_through_lu(&s, &bad, &[9; 1024]);
            assert_eq!(status, ScsiStatus::CheckCondition, "native {native}");
            assert_eq!(sense, miscompare, "native {native}");
            assert_eq!(ops, [IoOp::CompareAndWrite], "native {native}");
            assert_eq!(read_back(&s.inner, 8, 2), old, "native {native}");

            let (status, sense, ops) = caw_through_lu(&s, &old, &[9; 1024]);
            assert_eq!(status, ScsiStatus::Good, "native {native}");
            assert!(sense.is_empty());
            // Natively one request; emulated the compare, then scsi-core's write.
            let want: &[IoOp] = if native {
                &[IoOp::CompareAndWrite]
            } else {
                &[IoOp::CompareAndWrite, IoOp::Write]
            };
            assert_eq!(ops, want, "native {native}");
            assert_eq!(read_back(&s.inner, 8, 2), vec![9; 1024], "native {native}");
            let native_calls = s.calls().iter().filter(|c| c.starts_with("caw")).count();
            assert_eq!(native_calls, if native { 2 } else { 0 });
        }
    }

    #[test]
    fn native_write_same_and_fallbacks() {
        let ws = |unmap, ndob, zero| IoOp::WriteSame { unmap, ndob, zero };
        let mut scratch = Vec::new();
        // Native: one call for the whole range, FUA passed on, no chunk buffer.
        let s = NativeStore::new(true);
        let mut block = vec![0xA5u8; 512];
        let mut r = req(ws(false, false, false), 100, 300);
        r.fua = true;
        r.transfer_len = 512;
        assert_eq!(
            execute(&s, &r, &mut block, &mut scratch),
            IoAnswer::Complete(IoResult::Ok)
        );
        assert_eq!(
            s.calls(),
            [format!("same {} {} 512 true", 100 * 512, 300 * 512)]
        );
        assert!(scratch.is_empty());
        assert!(read_back(&s.inner, 100, 300).iter().all(|b| *b == 0xA5));
        assert_eq!(read_back(&s.inner, 400, 1), vec![0; 512]);
        // UNMAP and zero blocks never reach write_same.
        let s = NativeStore::new(true);
        execute(
            &s,
            &req(ws(true, false, true), 0, 8),
            &mut block,
            &mut scratch,
        );
        execute(
            &s,
            &req(ws(false, false, true), 8, 8),
            &mut block,
            &mut scratch,
        );
        execute(
            &s,
            &req(ws(false, true, true), 16, 8),
            &mut block,
            &mut scratch,
        );
        assert_eq!(
            s.calls(),
            ["unmap 0 4096", "zeroes 4096 4096", "zeroes 8192 4096"]
        );
        // A native failure is a write error, not retried by emulation.
        let mut f = NativeStore::new(true);
        f.fail = Some(StoreError::NO_SPACE);
        assert_eq!(
            execute(
                &f,
                &req(ws(false, false, false), 0, 4),
                &mut block,
                &mut scratch
            ),
            IoAnswer::Complete(IoResult::NoSpace)
        );
        assert_eq!(f.calls(), ["same 0 2048 512 false"]);
        // Unsupported: the chunked emulation writes the block repeated (1 MiB pieces).
        let e = NativeStore::new(false);
        let blocks = 3000u64;
        let mut r = req(ws(false, false, false), 0, blocks);
        r.transfer_len = 512;
        assert_eq!(
            execute(&e, &r, &mut block, &mut scratch),
            IoAnswer::Complete(IoResult::Ok)
        );
        assert_eq!(
            e.calls(),
            ["write 0 1048576 false", "write 1048576 487424 false"]
        );
        assert!(read_back(&e.inner, 0, blocks).iter().all(|b| *b == 0xA5));
    }
}
