//! [`FileStore`]: a regular file or a block device, opened with `O_DIRECT` / `O_SYNC` /
//! read-only as asked.
//!
//! Reads and writes are `pread`/`pwrite` loops (short transfers are continued). A FUA
//! write uses `pwritev2(RWF_DSYNC)`, falling back to `pwrite` + `fdatasync` where the flag
//! is refused; flush is `fdatasync`. Unmap punches a hole (`FALLOC_FL_PUNCH_HOLE |
//! FALLOC_FL_KEEP_SIZE`, on files and on block devices, where the kernel turns it into a
//! discard or write-zeroes that guarantees zeroes), falling back to `BLKZEROOUT` on a
//! device and to writing zeroes on a file. LBA status comes from `SEEK_DATA`/`SEEK_HOLE`.
//!
//! `O_DIRECT` alignment: a caller buffer whose address is not 512-aligned is copied
//! through a page-aligned bounce buffer from the store's [`BufPool`]; an offset or length
//! that is not a multiple of the block size is rejected with
//! [`StoreError::INVALID`] (scsi-core only issues whole blocks, so this never happens on the
//! normal path). Buffers from [`BufPool`] are always aligned and never bounced.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::buf::BufPool;
use crate::error::{OpenError, OpenErrorKind, StoreError};
use crate::store::{
    BackingStore, LbaStatus, check_range, check_writable, piece_offsets, write_each,
    write_zeroes_by_writing,
};
use crate::sys;

/// Memory alignment `O_DIRECT` needs for user buffers (conservative: one 512-byte sector).
const DIRECT_MEM_ALIGN: usize = 512;

/// How to open a [`FileStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open with `O_DIRECT` (bypass the page cache).
    pub direct: bool,
    /// Open with `O_SYNC` (every write durable before it returns).
    pub sync: bool,
    /// Open read-only; writes, unmaps and zeroing fail with `ReadOnly`.
    pub read_only: bool,
    /// The LUN size in bytes. A missing file is created sparse with this size; an
    /// existing file or device must be at least this large (only the first `size` bytes are
    /// exported). `None`: use the whole file or device.
    pub create_size: Option<u64>,
    /// Logical block size: a power of two from 512 to 65536.
    pub block_size: u32,
}

impl Default for OpenOptions {
    /// Buffered, read-write, no creation, 512-byte blocks.
    fn default() -> Self {
        Self {
            direct: false,
            sync: false,
            read_only: false,
            create_size: None,
            block_size: 512,
        }
    }
}

/// A backing store on a regular file or a block device.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    size: u64,
    block_size: u32,
    read_only: bool,
    direct: bool,
    sync: bool,
    block_device: bool,
    /// Set once `pwritev2(RWF_DSYNC)` was refused: use `pwrite` + `fdatasync` from then on.
    no_dsync: AtomicBool,
    /// Set once `preadv2(RWF_NOWAIT)` was refused: stop trying the inline path.
    no_nowait: AtomicBool,
    /// Set once `cachestat(2)` was refused (before Linux 6.5): no zero-copy reads.
    no_cachestat: AtomicBool,
    bounce: BufPool,
}

impl FileStore {
    /// Open (and, with `create_size`, create) a file or block device.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(OpenError::new(path, OpenErrorKind::BadBlockSize(bs)));
        }
        if let Some(size) = opts.create_size {
            check_size(path, size, bs)?;
        }
        let mut flags = 0;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        if opts.sync {
            flags |= libc::O_SYNC;
        }
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!opts.read_only).custom_flags(flags);
        let file = match oo.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !opts.read_only => {
                let Some(size) = opts.create_size else {
                    return Err(OpenError::os(path, &e));
                };
                create(path, &oo, size)?
            }
            Err(e) => return Err(open_error(path, &e, opts.direct)),
        };
        let meta = file.metadata().map_err(|e| OpenError::os(path, &e))?;
        let ft = meta.file_type();
        let (actual, block_device) = if ft.is_file() {
            (meta.len(), false)
        } else if ft.is_block_device() {
            let size = sys::blk_getsize64(file.as_fd()).map_err(|e| OpenError::os(path, &e))?;
            let sector = sys::blk_sszget(file.as_fd()).map_err(|e| OpenError::os(path, &e))?;
            if sector == 0 || bs % sector != 0 {
                return Err(OpenError::new(
                    path,
                    OpenErrorKind::BelowSectorSize {
                        block_size: bs,
                        sector,
                    },
                ));
            }
            (size, true)
        } else {
            return Err(OpenError::new(path, OpenErrorKind::NotFileOrDevice));
        };
        let size = match opts.create_size {
            Some(wanted) if actual < wanted => {
                return Err(OpenError::new(
                    path,
                    OpenErrorKind::TooSmall { actual, wanted },
                ));
            }
            Some(wanted) => wanted,
            None => actual,
        };
        check_size(path, size, bs)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            block_size: bs,
            read_only: opts.read_only,
            direct: opts.direct,
            sync: opts.sync,
            block_device,
            no_dsync: AtomicBool::new(false),
            no_nowait: AtomicBool::new(false),
            no_cachestat: AtomicBool::new(false),
            bounce: BufPool::new(4),
        })
    }

    /// The path this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether the store was opened with `O_SYNC`.
    pub fn is_sync(&self) -> bool {
        self.sync
    }

    /// Whether the store is a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The open file (for engines that issue their own system calls, e.g. AIO).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// For `O_DIRECT`: `Ok(true)` if the buffer must be bounced, `Err` if the range is not
    /// block-aligned. Always `Ok(false)` for buffered stores.
    fn direct_check(&self, addr: usize, len: usize, offset: u64) -> Result<bool, StoreError> {
        if !self.direct {
            return Ok(false);
        }
        let bs = u64::from(self.block_size);
        if offset % bs != 0 || len as u64 % bs != 0 {
            return Err(StoreError::INVALID);
        }
        Ok(addr % DIRECT_MEM_ALIGN != 0)
    }

    fn pread_full(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    // The file was truncated under us: the missing tail reads as zeroes.
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn pwrite_full(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), StoreError> {
        let dsync = fua && !self.sync && !self.no_dsync.load(Ordering::Relaxed);
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let res = if dsync {
                match sys::pwritev2(
                    self.file.as_fd(),
                    &[io::IoSlice::new(&buf[done..])],
                    at,
                    sys::RWF_DSYNC,
                ) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                        self.no_dsync.store(true, Ordering::Relaxed);
                        return self.pwrite_full(buf, offset, fua);
                    }
                    r => r,
                }
            } else {
                self.file.write_at(&buf[done..], at)
            };
            match res {
                Ok(0) => return Err(StoreError::NO_SPACE),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if fua && !dsync && !self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn zero_by_writing(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        write_zeroes_by_writing(offset, len, |chunk, off| {
            self.pwrite_full(chunk, off, false)
        })
    }
}

fn check_size(path: &Path, size: u64, bs: u32) -> Result<(), OpenError> {
    if size == 0 {
        return Err(OpenError::new(path, OpenErrorKind::Empty));
    }
    if size % u64::from(bs) != 0 {
        return Err(OpenError::new(
            path,
            OpenErrorKind::SizeNotMultiple {
                size,
                block_size: bs,
            },
        ));
    }
    Ok(())
}

fn open_error(path: &Path, e: &std::io::Error, direct: bool) -> OpenError {
    if direct && e.raw_os_error() == Some(libc::EINVAL) {
        OpenError::new(path, OpenErrorKind::DirectUnsupported)
    } else {
        OpenError::os(path, e)
    }
}

fn create(path: &Path, oo: &std::fs::OpenOptions, size: u64) -> Result<File, OpenError> {
    let mut oo = oo.clone();
    oo.create_new(true).mode(0o600);
    match oo.open(path) {
        Ok(f) => {
            f.set_len(size).map_err(|e| OpenError::os(path, &e))?;
            Ok(f)
        }
        // Someone created it between our two opens: open what is there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut plain = oo.clone();
            plain.create_new(false);
            plain.open(path).map_err(|e| OpenError::os(path, &e))
        }
        Err(e) => {
            let direct = e.raw_os_error() == Some(libc::EINVAL);
            Err(open_error(path, &e, direct))
        }
    }
}

impl BackingStore for FileStore {
    fn size(&self) -> u64 {
        self.size
    }

    /// Buffered writes to a regular file: ext4, XFS and btrfs hold the inode lock
    /// exclusively for each. `O_DIRECT` and `O_SYNC` writes spend their time outside it
    /// (on the device, in the sync), and block devices take no such lock.
    fn serializes_writes(&self) -> bool {
        !self.direct && !self.sync && !self.block_device
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

    fn unmap_granularity(&self) -> u64 {
        u64::from(self.block_size).max(4096)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct_check(buf.as_ptr() as usize, buf.len(), offset)? {
            let mut bounce = self.bounce.get(buf.len());
            self.pread_full(&mut bounce, offset)?;
            buf.copy_from_slice(&bounce);
        } else {
            self.pread_full(buf, offset)?;
        }
        Ok(buf.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        check_writable(self)?;
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct_check(buf.as_ptr() as usize, buf.len(), offset)? {
            let mut bounce = self.bounce.get(buf.len());
            bounce.copy_from_slice(buf);
            self.pwrite_full(&bounce, offset, fua)?;
        } else {
            self.pwrite_full(buf, offset, fua)?;
        }
        Ok(buf.len())
    }

    fn write_vectored_at(
        &self,
        bufs: &[io::IoSlice<'_>],
        offset: u64,
    ) -> Result<usize, StoreError> {
        check_writable(self)?;
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        check_range(offset, total as u64, self.size)?;
        if self.direct {
            // O_DIRECT wants aligned memory: each piece goes through write_at's bounce.
            return write_each(self, bufs, offset);
        }
        let written = match sys::pwritev2(self.file.as_fd(), bufs, offset, 0) {
            Ok(0) if total > 0 => return Err(StoreError::NO_SPACE),
            Ok(n) => n,
            Err(e) => return Err(e.into()),
        };
        // A short write (or more than IOV_MAX buffers): the rest piece by piece, from
        // inside the buffer where it stopped.
        let mut skip = written;
        for (b, at) in bufs.iter().zip(piece_offsets(bufs, offset)) {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            self.pwrite_full(&b[skip..], at + skip as u64, false)?;
            skip = 0;
        }
        Ok(total)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(StoreError::from)
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match sys::fallocate(self.file.as_fd(), mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                self.write_zeroes(offset, len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if self.direct
            && (offset % u64::from(self.block_size) != 0 || len % u64::from(self.block_size) != 0)
        {
            return Err(StoreError::INVALID);
        }
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match sys::fallocate(self.file.as_fd(), mode, offset, len) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if self.block_device {
            match sys::blk_zeroout(self.file.as_fd(), offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.zero_by_writing(offset, len)
    }

    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        if offset >= self.size {
            return Err(StoreError::OUT_OF_RANGE);
        }
        let rest = self.size - offset;
        if self.block_device {
            return Ok(LbaStatus {
                mapped: true,
                len: rest,
            });
        }
        let bs = u64::from(self.block_size);
        let fd = self.file.as_fd();
        // A mapped extent runs from `offset` to the next hole after `from`, rounded up to a
        // whole block (a partly written block counts as mapped) and clamped at the end.
        let mapped_from = |from: u64| {
            let hole = sys::lseek(fd, from, libc::SEEK_HOLE).unwrap_or(self.size);
            let end = hole
                .max(offset + 1)
                .div_ceil(bs)
                .saturating_mul(bs)
                .min(self.size);
            LbaStatus {
                mapped: true,
                len: end - offset,
            }
        };
        match sys::lseek(fd, offset, libc::SEEK_DATA) {
            Ok(data) if data <= offset => Ok(mapped_from(offset)),
            Ok(data) => {
                // A hole up to the block holding the first data byte.
                let end = data.min(self.size) / bs * bs;
                if end <= offset {
                    return Ok(mapped_from(data));
                }
                Ok(LbaStatus {
                    mapped: false,
                    len: end - offset,
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(LbaStatus {
                mapped: false,
                len: rest,
            }),
            // No SEEK_DATA support: everything counts as mapped.
            Err(_) => Ok(LbaStatus {
                mapped: true,
                len: rest,
            }),
        }
    }

    fn can_send_cached(&self, offset: u64, len: u64) -> bool {
        if len == 0
            || self.direct
            || self.no_cachestat.load(Ordering::Relaxed)
            || check_range(offset, len, self.size).is_err()
        {
            return false;
        }
        let page = sys::page_size();
        let pages = (offset + len).div_ceil(page) - offset / page;
        match sys::cached_pages(self.file.as_fd(), offset, len) {
            Ok(n) => n >= pages,
            Err(_) => {
                // ENOSYS (before 6.5) or a file system that refuses: never ask again.
                self.no_cachestat.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    fn send_cached(&self, sock: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        if self.direct {
            return Err(io::ErrorKind::Unsupported.into());
        }
        if check_range(offset, len as u64, self.size).is_err() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        match sys::sendfile(sock, self.file.as_fd(), offset, len)? {
            0 if len > 0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => Ok(n),
        }
    }

    fn try_read_cached(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        if let Err(e) = check_range(offset, buf.len() as u64, self.size) {
            return Some(Err(e));
        }
        if self.direct || self.no_nowait.load(Ordering::Relaxed) {
            return None;
        }
        match sys::preadv2(self.file.as_fd(), buf, offset, sys::RWF_NOWAIT) {
            Ok(n) if n == buf.len() => Some(Ok(n)),
            Ok(_) => None,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                self.no_nowait.store(true, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }
}
