//! [`RbdStore`]: a [`BackingStore`] on an RBD image through librbd's asynchronous calls.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::image::{self, Call, ConnectOptions, Handles, Outcome, errstr};
use super::spec::RbdSpec;
use crate::error::{OpenError, OpenErrorKind, StoreError};
use crate::store::{BackingStore, CompareAndWrite, LbaStatus, check_range, check_writable};

/// How far [`RbdStore::lba_status`] looks ahead in one `rbd_diff_iterate2` call: an extent
/// that runs on past this is reported up to here (the initiator asks again from there).
pub const LBA_STATUS_WINDOW: u64 = 256 << 20;

/// librbd's compare-and-write works inside one sector of this size only.
const CAW_SECTOR: u64 = 512;

/// The largest range one `rbd_aio_writesame` call covers; a longer WRITE SAME is issued
/// in pieces of this size (rounded down to a multiple of the pattern), one after another.
pub const WRITE_SAME_PIECE: u64 = 256 << 20;

/// Options for [`RbdStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdOptions {
    /// Logical block size (a power of two, 512..=65536). RBD has none of its own; the
    /// image size is rounded down to a multiple of it.
    pub block_size: u32,
    /// Open the image head read-only (a snapshot always opens read-only).
    pub read_only: bool,
    /// Ceph options set on the client after the conf file and `CEPH_ARGS` (e.g.
    /// `("rbd_cache", "true")`). This store sets `client_mount_timeout = 30`,
    /// `rbd_skip_partial_discard = false` (so that unmapped ranges read as zeroes) and
    /// `rbd_cache = false` (acknowledged writes are visible to every other client of the
    /// image) first; options here override them.
    pub config: Vec<(String, String)>,
}

impl Default for RbdOptions {
    /// 512-byte blocks, read-write, no extra Ceph options.
    fn default() -> Self {
        Self {
            block_size: 512,
            read_only: false,
            config: Vec::new(),
        }
    }
}

/// An RBD image opened through librbd, usable as a LUN's store.
///
/// Every method issues the corresponding `rbd_aio_*` call and blocks the calling thread
/// until librbd's completion callback wakes it, so many threads calling at once keep as
/// many operations in flight. For an event loop use [`RbdEngine`](super::RbdEngine), which
/// issues the same calls without blocking and queues the completions.
///
/// Geometry: size from librbd (re-read with
/// [`refresh_size`](BackingStore::refresh_size), which picks up `rbd resize` done
/// elsewhere), a configured block size, thin provisioning (discard deallocates).
/// Zero-length requests complete without calling librbd (a zero-length read with a null
/// buffer aborts librbd).
///
/// Beyond plain I/O it implements [`BackingStore::compare_and_write`] (librbd's
/// compare-and-write: atomic for ranges inside one 512-byte sector only, see there),
/// [`BackingStore::write_same`] (`rbd_aio_writesame`) and
/// [`BackingStore::refresh_size`].
///
/// After the image shrank, I/O beyond the new end fails with
/// [`StoreError::OUT_OF_RANGE`]: refused up front once
/// [`refresh_size`](BackingStore::refresh_size) saw the change, and before that turned
/// into the same error from what librbd does with it (`EINVAL`, a short read, or a write
/// clipped at the new end — the part below the end is then written, and the error still
/// reported).
pub struct RbdStore {
    handles: Handles,
    spec: RbdSpec,
    size: AtomicU64,
    block_size: u32,
    read_only: bool,
    object_size: u64,
    /// Compare-and-writes: shared by librbd's atomic ones, exclusive for an emulated one,
    /// so that no other compare-and-write of this store runs between its read and write.
    caw_lock: RwLock<()>,
}

impl RbdStore {
    /// Connect to the cluster named by `spec` and open its image.
    pub fn open(spec: &RbdSpec, opts: &RbdOptions) -> Result<Self, OpenError> {
        let label = spec.to_string();
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(OpenError::new(label, OpenErrorKind::BadBlockSize(bs)));
        }
        let read_only = opts.read_only || spec.is_snapshot();
        let handles = Handles::open(
            spec,
            &ConnectOptions {
                read_only,
                config: &opts.config,
            },
        )?;
        let info = handles.stat().map_err(|e| {
            OpenError::new(
                label.clone(),
                OpenErrorKind::Remote(format!("rbd_stat: {}", errstr(e))),
            )
        })?;
        let size = round_down(info.size, bs);
        if size == 0 {
            return Err(OpenError::new(label, OpenErrorKind::Empty));
        }
        if size != info.size {
            log::warn!(
                "{label}: image size {} is not a multiple of the block size {bs}; using {size}",
                info.size
            );
        }
        Ok(Self {
            handles,
            spec: spec.clone(),
            size: AtomicU64::new(size),
            block_size: bs,
            read_only,
            object_size: info.obj_size,
            caw_lock: RwLock::new(()),
        })
    }

    /// The specification the store was opened with.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    /// The image's object size in bytes (the unit RADOS stores and deallocates).
    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    /// The compare-and-write librbd does itself (atomically): `cmp` and `data` inside one
    /// 512-byte sector. The mismatch offset librbd reports is placed in the request by
    /// [`mismatch_in_request`], or by reading the range where that cannot tell.
    fn native_compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
        fua: bool,
    ) -> Result<CompareAndWrite, StoreError> {
        let _shared = self.caw_lock.read().unwrap_or_else(|e| e.into_inner());
        let len = cmp.len() as u64;
        let call = Call::CompareAndWrite {
            cmp: cmp.as_ptr(),
            data: data.as_ptr(),
            len: cmp.len(),
            fua,
        };
        let out = self.run(call, offset);
        if out.ret == -(libc::EILSEQ as isize) {
            let offset = match mismatch_in_request(out.mismatch, offset, len, self.object_size) {
                Some(rel) => rel,
                None => self.first_difference(cmp, offset, out.mismatch),
            };
            return Ok(CompareAndWrite::Miscompare { offset });
        }
        self.result(out, offset, len, Kind::Write)
            .map(|_| CompareAndWrite::Written)
    }

    /// The first difference between `cmp` and the data at `offset`, found by reading it,
    /// when librbd's mismatch offset could not be placed in the request. (If the data
    /// changed since and now matches, the request's last byte.)
    fn first_difference(&self, cmp: &[u8], offset: u64, reported: u64) -> u64 {
        log::warn!(
            "rbd: compare-and-write at {offset} ({} bytes): librbd reported a mismatch at \
             {reported}; reading the range to place it",
            cmp.len()
        );
        let mut current = vec![0u8; cmp.len()];
        let last = cmp.len().saturating_sub(1) as u64;
        match self.read_at(&mut current, offset) {
            Ok(_) => current
                .iter()
                .zip(cmp)
                .position(|(a, b)| a != b)
                .map_or(last, |i| i as u64),
            Err(_) => last,
        }
    }

    /// Read, compare, write, with every other compare-and-write of this store held off.
    fn emulated_compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
        fua: bool,
    ) -> Result<CompareAndWrite, StoreError> {
        let _exclusive = self.caw_lock.write().unwrap_or_else(|e| e.into_inner());
        let mut current = vec![0u8; cmp.len()];
        self.read_at(&mut current, offset)?;
        if let Some(i) = current.iter().zip(cmp).position(|(a, b)| a != b) {
            return Ok(CompareAndWrite::Miscompare { offset: i as u64 });
        }
        self.write_at(data, offset, fua)?;
        Ok(CompareAndWrite::Written)
    }

    /// The open image, for the engine.
    pub(crate) fn raw_image(&self) -> super::ffi::rbd_image_t {
        self.handles.image()
    }

    fn run(&self, call: Call, offset: u64) -> Outcome {
        // SAFETY: `self` (and with it the image) is borrowed for the whole call, and the
        // buffers in `call` come from borrowed slices of the caller, alive until `run`
        // returns, which is after the operation completed.
        unsafe { image::run(self.handles.image(), call, offset) }
    }

    /// Turn an outcome into a result. If the image shrank below the range since it was
    /// checked, the operation failed or did only part of its work: librbd answers `EINVAL`
    /// (the range starts past the end), a short read, or — for writes, write-same,
    /// write-zeroes and discards — clips the range at the new end and reports success.
    /// All of these become [`StoreError::OUT_OF_RANGE`]; a successful modification is
    /// therefore checked against librbd's current size (`rbd_get_size`, about a
    /// microsecond: it reads librbd's cached header unless a header update arrived).
    fn result(&self, out: Outcome, offset: u64, len: u64, kind: Kind) -> Result<usize, StoreError> {
        let r = interpret(out.ret, len, kind);
        // (The cached size stays as it is: `refresh_size` reports the change.)
        let shrunk = || {
            self.handles
                .get_size()
                .is_ok_and(|now| check_range(offset, len, now).is_err())
        };
        match r {
            Err(StoreError::INVALID) if shrunk() => Err(StoreError::OUT_OF_RANGE),
            Ok(_) if kind != Kind::Read && shrunk() => Err(StoreError::OUT_OF_RANGE),
            r => r,
        }
    }
}

/// How to read a librbd return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Returns the bytes read, which must be the full length.
    Read,
    /// Returns 0 (or the length) on success: report the length.
    Write,
    /// Returns 0 on success: report 0.
    Other,
}

/// A librbd return value as the [`BackingStore`] result.
pub(crate) fn interpret(ret: isize, len: u64, kind: Kind) -> Result<usize, StoreError> {
    if ret < 0 {
        let errno = ret
            .checked_neg()
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or(libc::EIO);
        return Err(StoreError::from_errno(errno));
    }
    let len = usize::try_from(len).map_err(|_| StoreError::INVALID)?;
    match kind {
        Kind::Read if ret as usize != len => {
            // Only possible if the image shrank below the range after it was checked.
            log::warn!("rbd: short read of {ret} of {len} bytes");
            Err(StoreError::OUT_OF_RANGE)
        }
        Kind::Read | Kind::Write => Ok(len),
        Kind::Other => Ok(0),
    }
}

fn round_down(size: u64, bs: u32) -> u64 {
    size - size % u64::from(bs)
}

/// The offset of the first difference relative to the request at `offset` (`len` bytes,
/// inside one 512-byte sector), from the mismatch offset librbd reported: an image offset
/// (what librbd's API promises), or — what Ceph 16 does — the start of the RADOS object
/// plus the offset within the request (librbd maps the index within the compared buffer
/// as if it were an offset in the object; object size = stripe unit without fancy
/// striping). `None` when it is neither (an image with fancy striping).
pub(crate) fn mismatch_in_request(
    mismatch: u64,
    offset: u64,
    len: u64,
    object_size: u64,
) -> Option<u64> {
    let within = |base: u64| mismatch.checked_sub(base).filter(|r| *r < len);
    within(offset).or_else(|| within(offset - offset.checked_rem(object_size).unwrap_or(0)))
}

/// Merge the allocated byte extents into block-granular runs and answer GET LBA STATUS at
/// `offset`, looking no further than `end`.
pub(crate) fn status_from_extents(
    extents: &mut [(u64, u64)],
    offset: u64,
    end: u64,
    block_size: u32,
) -> LbaStatus {
    let bs = u64::from(block_size);
    // Block-aligned [start, stop) runs, clipped to [offset, end).
    let mut runs: Vec<(u64, u64)> = extents
        .iter()
        .filter_map(|&(off, len)| {
            let start = (off / bs * bs).max(offset);
            let stop = off
                .saturating_add(len)
                .div_ceil(bs)
                .saturating_mul(bs)
                .min(end);
            (start < stop).then_some((start, stop))
        })
        .collect();
    runs.sort_unstable();
    let mut first: Option<(u64, u64)> = None;
    for (start, stop) in runs {
        match &mut first {
            None => first = Some((start, stop)),
            Some((_, cur_stop)) if start <= *cur_stop => *cur_stop = (*cur_stop).max(stop),
            Some(_) => break,
        }
    }
    match first {
        Some((start, stop)) if start <= offset => LbaStatus {
            mapped: true,
            len: stop - offset,
        },
        Some((start, _)) => LbaStatus {
            mapped: false,
            len: start - offset,
        },
        None => LbaStatus {
            mapped: false,
            len: end - offset,
        },
    }
}

impl fmt::Debug for RbdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RbdStore")
            .field("spec", &self.spec.image_spec())
            .field("size", &self.size())
            .field("block_size", &self.block_size)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl BackingStore for RbdStore {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn is_thin(&self) -> bool {
        true
    }

    /// The object size: discarding whole objects removes them; a partial discard zeroes
    /// the range inside its object, which stays allocated.
    fn unmap_granularity(&self) -> u64 {
        let bs = u64::from(self.block_size);
        if self.object_size >= bs && self.object_size % bs == 0 {
            self.object_size
        } else {
            bs
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len();
        let out = self.run(
            Call::Read {
                buf: buf.as_mut_ptr(),
                len,
            },
            offset,
        );
        self.result(out, offset, len as u64, Kind::Read)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        check_writable(self)?;
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(0);
        }
        let out = self.run(
            Call::Write {
                buf: buf.as_ptr(),
                len: buf.len(),
                fua,
            },
            offset,
        );
        self.result(out, offset, buf.len() as u64, Kind::Write)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let out = self.run(Call::Flush, 0);
        interpret(out.ret, 0, Kind::Other).map(drop)
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let out = self.run(Call::Discard { len }, offset);
        self.result(out, offset, len, Kind::Other).map(drop)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let len_usize = usize::try_from(len).map_err(|_| StoreError::INVALID)?;
        let out = self.run(Call::WriteZeroes { len: len_usize }, offset);
        self.result(out, offset, len, Kind::Other).map(drop)
    }

    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        let size = self.size();
        check_range(offset, 1, size)?;
        let end = offset.saturating_add(LBA_STATUS_WINDOW).min(size);
        let mut extents = self
            .handles
            .allocated_extents(offset, end - offset)
            .map_err(StoreError::from_errno)?;
        Ok(status_from_extents(
            &mut extents,
            offset,
            end,
            self.block_size,
        ))
    }

    /// `rbd_aio_compare_and_write` (with FUA: librados' FUA hint, then a flush).
    ///
    /// Atomicity: librbd (Ceph 16) compares and writes only ranges inside one 512-byte
    /// sector — one block of a 512-byte-block LUN, the usual COMPARE AND WRITE (VMware's
    /// ATS heartbeat and locks). Those are atomic against every client of the image,
    /// other gateways included. Longer ranges (several 512-byte blocks, any 4096-byte
    /// block) are **not natively atomic**: they are emulated by a read, a compare and a
    /// write, with every other compare-and-write of this store held off meanwhile (a
    /// store-wide lock; librbd's one-sector ones share it). They are atomic against this
    /// store's other compare-and-writes and — because scsi-core holds back overlapping
    /// commands of the LU while one runs — against every command through this target's
    /// LU, but not against plain writes of other clients of the image.
    fn compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
        fua: bool,
    ) -> Result<CompareAndWrite, StoreError> {
        check_writable(self)?;
        if cmp.len() != data.len() {
            return Err(StoreError::INVALID);
        }
        let len = cmp.len() as u64;
        check_range(offset, len, self.size())?;
        if cmp.is_empty() {
            return Ok(CompareAndWrite::Written);
        }
        if offset % CAW_SECTOR + len > CAW_SECTOR {
            self.emulated_compare_and_write(cmp, data, offset, fua)
        } else {
            self.native_compare_and_write(cmp, data, offset, fua)
        }
    }

    /// `rbd_aio_writesame`, in pieces of at most [`WRITE_SAME_PIECE`] bytes; with FUA
    /// librados' FUA hint on each and one flush at the end. (librbd turns a zero pattern
    /// into a discard unless `rbd_discard_on_zeroed_write_same` is off; the range reads
    /// as zeroes either way.)
    fn write_same(&self, offset: u64, len: u64, block: &[u8], fua: bool) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size())?;
        if block.is_empty() || len % block.len() as u64 != 0 {
            return Err(StoreError::INVALID);
        }
        if len == 0 {
            return Ok(());
        }
        let step = block.len() as u64;
        let piece = (WRITE_SAME_PIECE / step).max(1) * step;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(piece);
            let at = offset + done;
            let call = Call::WriteSame {
                pattern: block.as_ptr(),
                data_len: block.len(),
                len: usize::try_from(n).map_err(|_| StoreError::INVALID)?,
                fua,
            };
            let out = self.run(call, at);
            self.result(out, at, n, Kind::Other)?;
            done += n;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// `rbd_get_size` (which refreshes librbd's view of the image header when it saw it
    /// change), rounded down to the block size; reports a change once.
    fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
        let size = round_down(
            self.handles.get_size().map_err(StoreError::from_errno)?,
            self.block_size,
        );
        let old = self.size.swap(size, Ordering::AcqRel);
        Ok((old != size).then_some(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpret_results() {
        assert_eq!(interpret(4096, 4096, Kind::Read), Ok(4096));
        assert_eq!(
            interpret(512, 4096, Kind::Read),
            Err(StoreError::OUT_OF_RANGE)
        );
        // Write completions return 0, not the length.
        assert_eq!(interpret(0, 4096, Kind::Write), Ok(4096));
        assert_eq!(interpret(4096, 4096, Kind::Write), Ok(4096));
        assert_eq!(interpret(0, 4096, Kind::Other), Ok(0));
        assert_eq!(
            interpret(-(libc::EINVAL as isize), 4096, Kind::Read),
            Err(StoreError::INVALID)
        );
        assert_eq!(
            interpret(-(libc::EROFS as isize), 1, Kind::Write),
            Err(StoreError::READ_ONLY)
        );
        assert_eq!(
            interpret(-(libc::EIO as isize), 1, Kind::Other),
            Err(StoreError::IO)
        );
        assert_eq!(
            interpret(isize::MIN, 1, Kind::Other).unwrap_err().errno(),
            libc::EIO
        );
    }

    #[test]
    fn lba_status_from_extents() {
        let st = |ext: &[(u64, u64)], off, end| {
            let mut v = ext.to_vec();
            status_from_extents(&mut v, off, end, 512)
        };
        let unmapped = |len| LbaStatus { mapped: false, len };
        let mapped = |len| LbaStatus { mapped: true, len };
        // Nothing allocated: the whole window is unmapped.
        assert_eq!(st(&[], 0, 1 << 20), unmapped(1 << 20));
        assert_eq!(st(&[], 4096, 8192), unmapped(4096));
        // An extent later on.
        assert_eq!(st(&[(8192, 4096)], 0, 1 << 20), unmapped(8192));
        // Inside an extent; adjacent and overlapping extents merge, order does not matter.
        assert_eq!(
            st(&[(4096, 4096), (0, 4096), (6000, 10000)], 0, 1 << 20),
            mapped(16000_u64.div_ceil(512) * 512)
        );
        assert_eq!(st(&[(0, 4096), (8192, 512)], 1024, 1 << 20), mapped(3072));
        // Unaligned extents cover whole blocks.
        assert_eq!(st(&[(700, 10)], 512, 1 << 20), mapped(512));
        assert_eq!(st(&[(1100, 10)], 0, 1 << 20), unmapped(1024));
        // Clipped at the window end.
        assert_eq!(st(&[(0, 1 << 30)], 4096, 1 << 20), mapped((1 << 20) - 4096));
        // Extents before the offset are ignored.
        assert_eq!(st(&[(0, 512)], 4096, 8192), unmapped(4096));
        // Extents reported with zero length or past the window are ignored.
        assert_eq!(st(&[(8192, 512)], 0, 4096), unmapped(4096));
    }

    #[test]
    fn mismatch_offsets_relative_to_the_request() {
        const OBJ: u64 = 4 << 20;
        // Image offsets.
        assert_eq!(mismatch_in_request(4096 + 300, 4096, 512, OBJ), Some(300));
        assert_eq!(mismatch_in_request(4096, 4096, 512, OBJ), Some(0));
        assert_eq!(
            mismatch_in_request(OBJ + 8192 + 511, OBJ + 8192, 512, OBJ),
            Some(511)
        );
        // Ceph 16: the object's start plus the offset in the request.
        assert_eq!(mismatch_in_request(300, 4096, 512, OBJ), Some(300));
        assert_eq!(
            mismatch_in_request(2 * OBJ + 77, 2 * OBJ + (1 << 20) + 1536, 512, OBJ),
            Some(77)
        );
        // Block-aligned requests read the same either way at an object's start.
        assert_eq!(mismatch_in_request(OBJ + 5, OBJ, 512, OBJ), Some(5));
        // Neither: the caller reads to find it.
        assert_eq!(mismatch_in_request(1 << 40, 4096, 512, OBJ), None);
        assert_eq!(mismatch_in_request(OBJ + 600, OBJ + 4096, 512, OBJ), None);
        assert_eq!(mismatch_in_request(512, 4096, 512, OBJ), None);
        // No object size known: image offsets only.
        assert_eq!(mismatch_in_request(4100, 4096, 512, 0), Some(4));
        assert_eq!(mismatch_in_request(4, 4096, 512, 0), None);
    }

    #[test]
    fn options_default() {
        let o = RbdOptions::default();
        assert_eq!(o.block_size, 512);
        assert!(!o.read_only);
        assert!(o.config.is_empty());
        assert_eq!(round_down(1000, 512), 512);
        assert_eq!(round_down(1024, 512), 1024);
    }
}
