//! [`RbdStore`]: a [`BackingStore`] on an RBD image through librbd's asynchronous calls.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::image::{self, Call, ConnectOptions, Handles, Outcome, errstr};
use super::spec::RbdSpec;
use crate::error::{OpenError, OpenErrorKind, StoreError};
use crate::store::{BackingStore, LbaStatus, check_range, check_writable};

/// How far [`RbdStore::lba_status`] looks ahead in one `rbd_diff_iterate2` call: an extent
/// that runs on past this is reported up to here (the initiator asks again from there).
pub const LBA_STATUS_WINDOW: u64 = 256 << 20;

/// librbd's compare-and-write works inside one sector of this size only.
const CAW_SECTOR: u64 = 512;

/// Options for [`RbdStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdOptions {
    /// Logical block size (a power of two, 512..=65536). RBD has none of its own; the
    /// image size is rounded down to a multiple of it.
    pub block_size: u32,
    /// Open the image head read-only (a snapshot always opens read-only).
    pub read_only: bool,
    /// Ceph options set on the client after the conf file and `CEPH_ARGS` (e.g.
    /// `("rbd_cache", "false")`). This store sets `client_mount_timeout = 30` and
    /// `rbd_skip_partial_discard = false` (so that unmapped ranges read as zeroes) first;
    /// options here override them.
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

/// The outcome of [`RbdStore::compare_and_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareAndWrite {
    /// The data matched and the new data was written.
    Written,
    /// The data differed; nothing was written.
    Miscompare {
        /// Offset of the first differing byte, relative to the start of the request
        /// (what SCSI reports in the sense INFORMATION field, in bytes).
        offset: u64,
    },
}

/// An RBD image opened through librbd, usable as a LUN's store.
///
/// Every method issues the corresponding `rbd_aio_*` call and blocks the calling thread
/// until librbd's completion callback wakes it, so many threads calling at once keep as
/// many operations in flight. For an event loop use [`RbdEngine`](super::RbdEngine), which
/// issues the same calls without blocking and queues the completions.
///
/// Geometry: size from librbd (re-read with [`refresh_size`](Self::refresh_size)), a
/// configured block size, thin provisioning (discard deallocates). Zero-length requests
/// complete without calling librbd (a zero-length read with a null buffer aborts librbd).
pub struct RbdStore {
    handles: Handles,
    spec: RbdSpec,
    size: AtomicU64,
    block_size: u32,
    read_only: bool,
    object_size: u64,
    /// Serialises emulated compare-and-writes.
    caw_lock: Mutex<()>,
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
            caw_lock: Mutex::new(()),
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

    /// Re-read the image size from librbd (which picks up a resize done elsewhere).
    /// Returns the new size when it changed — the daemon then raises CAPACITY DATA HAS
    /// CHANGED — and `None` when it did not.
    pub fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
        let size = round_down(
            self.handles.get_size().map_err(StoreError::from_errno)?,
            self.block_size,
        );
        let old = self.size.swap(size, Ordering::AcqRel);
        Ok((old != size).then_some(size))
    }

    /// COMPARE AND WRITE: compare `cmp` with the data at `offset` and, only if equal,
    /// write `data` there (both the same length).
    ///
    /// librbd's `rbd_aio_compare_and_write` handles only ranges inside one 512-byte sector;
    /// those use it and are atomic against every client of the image. Longer ranges (more
    /// than one 512-byte block, or 4096-byte blocks) are emulated: read, compare, write,
    /// serialised with this store's other compare-and-writes — atomic against them, not
    /// against plain writes or other clients (as tgt's emulation).
    pub fn compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
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
            return self.emulated_compare_and_write(cmp, data, offset);
        }
        let call = Call::CompareAndWrite {
            cmp: cmp.as_ptr(),
            data: data.as_ptr(),
            len: cmp.len(),
        };
        let out = self.run(call, offset);
        if out.ret == -(libc::EILSEQ as isize) {
            // librbd reports the image offset of the first difference.
            let rel = out.mismatch.checked_sub(offset).unwrap_or(out.mismatch);
            return Ok(CompareAndWrite::Miscompare {
                offset: rel.min(len - 1),
            });
        }
        self.result(out, offset, len, Kind::Write)
            .map(|_| CompareAndWrite::Written)
    }

    fn emulated_compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
    ) -> Result<CompareAndWrite, StoreError> {
        let _serialised = self.caw_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = vec![0u8; cmp.len()];
        self.read_at(&mut current, offset)?;
        if let Some(i) = current.iter().zip(cmp).position(|(a, b)| a != b) {
            return Ok(CompareAndWrite::Miscompare { offset: i as u64 });
        }
        self.write_at(data, offset, false)?;
        Ok(CompareAndWrite::Written)
    }

    /// WRITE SAME: repeat `pattern` over `len` bytes at `offset` (`len` a multiple of
    /// `pattern.len()`).
    pub fn write_same(&self, pattern: &[u8], offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        if pattern.is_empty() || len % pattern.len() as u64 != 0 {
            return Err(StoreError::INVALID);
        }
        let len_usize = usize::try_from(len).map_err(|_| StoreError::INVALID)?;
        let call = Call::WriteSame {
            pattern: pattern.as_ptr(),
            data_len: pattern.len(),
            len: len_usize,
        };
        let out = self.run(call, offset);
        self.result(out, offset, len, Kind::Other).map(drop)
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

    /// Turn an outcome into a result; an `EINVAL` for a range librbd now considers out of
    /// the image (it shrank) becomes `OUT_OF_RANGE`.
    fn result(&self, out: Outcome, offset: u64, len: u64, kind: Kind) -> Result<usize, StoreError> {
        let r = interpret(out.ret, len, kind);
        // (The cached size stays as it is: `refresh_size` reports the change.)
        if r == Err(StoreError::INVALID)
            && self
                .handles
                .get_size()
                .is_ok_and(|now| check_range(offset, len, now).is_err())
        {
            return Err(StoreError::OUT_OF_RANGE);
        }
        r
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
    fn options_default() {
        let o = RbdOptions::default();
        assert_eq!(o.block_size, 512);
        assert!(!o.read_only);
        assert!(o.config.is_empty());
        assert_eq!(round_down(1000, 512), 512);
        assert_eq!(round_down(1024, 512), 1024);
    }
}
