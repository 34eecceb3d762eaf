//! Running scsi-core's [`IoRequest`]s on a [`BackingStore`], synchronously.
//!
//! [`execute`] performs one request with no lock held and returns an [`IoAnswer`]; the caller
//! then takes the LU lock and hands the answer to scsi-core with [`IoAnswer::apply`]. The
//! thread-per-connection runtime calls it inline; the reactor runtime calls it from a worker
//! for the compound operations (VERIFY, COMPARE AND WRITE, ORWRITE, WRITE SAME, UNMAP, GET
//! LBA STATUS) and sends plain reads, writes and flushes to its asynchronous engine.

use backstore::{BackingStore, ErrorKind, StoreError};
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

fn read_full(store: &dyn BackingStore, buf: &mut [u8], offset: u64) -> Result<(), IoResult> {
    match store.read_at(buf, offset) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(IoResult::OutOfRange),
        Err(e) => Err(io_result(e, false)),
    }
}

fn write_full(
    store: &dyn BackingStore,
    buf: &[u8],
    offset: u64,
    fua: bool,
) -> Result<(), IoResult> {
    match store.write_at(buf, offset, fua) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(IoResult::WriteError),
        Err(e) => Err(io_result(e, true)),
    }
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
mod tests {
    use super::*;
    use backstore::MemoryStore;
    use scsi_core::{NexusId, TaskTag};

    fn req(op: IoOp, lba: u64, blocks: u64) -> IoRequest {
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
}
