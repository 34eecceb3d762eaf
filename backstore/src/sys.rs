//! Thin wrappers over the Linux system calls the stores and engines use.
//!
//! Every `unsafe` block of the crate except the aligned allocation in [`crate::buf`] lives
//! here. Each wrapper takes safe Rust types (slices, borrowed file descriptors) and returns
//! `io::Result`, so the rest of the crate never touches raw pointers.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::engine::{Op, Request};

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;
/// `_IO(0x12, 104)`: logical sector size of a block device.
const BLKSSZGET: libc::Ioctl = 0x1268;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::Ioctl = 0x127f;

/// `preadv2` flag: fail with `EAGAIN` instead of blocking (page-cache hits only).
pub(crate) const RWF_NOWAIT: i32 = libc::RWF_NOWAIT;
/// `pwritev2` flag: per-write `O_DSYNC`.
pub(crate) const RWF_DSYNC: i32 = libc::RWF_DSYNC;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `preadv2(fd, [buf], offset, flags)`, retried on `EINTR`.
pub(crate) fn preadv2(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
    flags: i32,
) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = off(offset)?;
    loop {
        // SAFETY: `iov` describes `buf`, which is valid for writes of `buf.len()` bytes and
        // exclusively borrowed for the duration of the call; the fd is borrowed and open.
        let ret = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, offset, flags) };
        match cvt(ret as libc::c_long) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// `pwritev2(fd, bufs, offset, flags)`, retried on `EINTR`: writes `bufs` back to back
/// from `offset` and returns how many bytes it wrote (perhaps fewer than all).
pub(crate) fn pwritev2(
    fd: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
    offset: u64,
    flags: i32,
) -> io::Result<usize> {
    let offset = off(offset)?;
    // More than IOV_MAX buffers is EINVAL: write the first IOV_MAX, the caller goes on.
    let bufs = &bufs[..bufs.len().min(IOV_MAX)];
    loop {
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and `bufs` describes
        // slices valid for reads of their lengths for the duration of the call (the kernel
        // does not write through them); the count fits a c_int since it is at most IOV_MAX;
        // the fd is open.
        let ret = unsafe {
            libc::pwritev2(
                fd.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                bufs.len() as libc::c_int,
                offset,
                flags,
            )
        };
        match cvt(ret as libc::c_long) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// Linux's `IOV_MAX`: the most buffers one vectored call takes.
pub(crate) const IOV_MAX: usize = 1024;

/// `fallocate(fd, mode, offset, len)`.
pub(crate) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off(offset)?, off(len)?);
    loop {
        // SAFETY: plain integer arguments on a borrowed, open fd.
        let ret = unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) };
        match cvt(ret as libc::c_long) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// `lseek(fd, offset, whence)`; used with `SEEK_DATA` / `SEEK_HOLE`.
pub(crate) fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> io::Result<u64> {
    let offset = off(offset)?;
    // SAFETY: plain integer arguments on a borrowed, open fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    cvt(ret as libc::c_long).map(|n| n as u64)
}

/// `cachestat(2)`'s system call number (Linux 6.5; the same on every architecture).
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// How many pages of `len` bytes at `offset` of `fd` are in the page cache
/// (`cachestat(2)`); `ENOSYS` before Linux 6.5.
pub(crate) fn cached_pages(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<u64> {
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads one `cachestat_range` and writes one `cachestat` through the
    // pointers, which point to live values of exactly those layouts; the fd is borrowed
    // and open.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    cvt(ret).map(|_| stat.nr_cache)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`, asked once; 4096 if it fails).
pub(crate) fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf takes an integer and reads no memory.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// `sendfile(out, in, &offset, len)`: up to `len` bytes of `input` at `offset` to `out`
/// without a copy through user space. Retried on `EINTR`; `WouldBlock` when a
/// non-blocking `out` takes nothing.
pub(crate) fn sendfile(
    out: BorrowedFd<'_>,
    input: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut pos = off(offset)?;
    loop {
        // SAFETY: `pos` is a live off_t the call reads and updates; both fds are borrowed
        // and open.
        let ret = unsafe { libc::sendfile(out.as_raw_fd(), input.as_raw_fd(), &mut pos, len) };
        match cvt(ret as libc::c_long) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub(crate) fn blk_getsize64(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    cvt(ret as libc::c_long).map(|_| size)
}

/// Logical sector size of a block device (`BLKSSZGET`).
pub(crate) fn blk_sszget(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to `size`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), BLKSSZGET, &mut size as *mut libc::c_int) };
    cvt(ret as libc::c_long).map(|_| size as u32)
}

/// Zero a byte range of a block device (`BLKZEROOUT`).
pub(crate) fn blk_zeroout(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer, which points
    // to `range`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    cvt(ret as libc::c_long).map(drop)
}

/// Wait until `fd` is readable or `timeout` passes (`None`: forever). Returns readability.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd, and we pass a count of 1.
    let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
    match cvt(ret as libc::c_long) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Create a new eventfd with counter 0.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes two integers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The raw descriptor (for `mio::unix::SourceFd` or `poll`).
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Borrow the descriptor.
    pub(crate) fn borrow(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Add one to the counter (wakes pollers). Errors (counter overflow) are ignored: the fd
    /// is readable in that case anyway.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`, a valid u64, to an open eventfd.
        let _ = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Reset the counter to 0; returns the previous value (0 when it was not signalled).
    pub(crate) fn clear(&self) -> u64 {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into `value`, a valid u64; non-blocking fd.
        let ret = unsafe { libc::read(self.raw(), (&mut value as *mut u64).cast(), 8) };
        if ret == 8 { value } else { 0 }
    }
}

/// `IOCB_CMD_PREAD` from linux/aio_abi.h.
const IOCB_CMD_PREAD: u16 = 0;
/// `IOCB_CMD_PWRITE`.
const IOCB_CMD_PWRITE: u16 = 1;
/// `IOCB_CMD_FDSYNC` (Linux 4.18+).
const IOCB_CMD_FDSYNC: u16 = 3;
/// `IOCB_FLAG_RESFD`: signal `aio_resfd` (an eventfd) on completion.
const IOCB_FLAG_RESFD: u32 = 1;

/// `struct iocb` from linux/aio_abi.h (64-bit layout; `aio_key` and `aio_rw_flags` swap
/// places on big-endian machines).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Iocb {
    /// Returned unchanged in `IoEvent::data`.
    aio_data: u64,
    #[cfg(target_endian = "little")]
    aio_key: u32,
    /// `RWF_*` flags for read/write.
    aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    aio_key: u32,
    /// `IOCB_CMD_*`.
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    /// Buffer address.
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    /// `IOCB_FLAG_*`.
    aio_flags: u32,
    /// Eventfd signalled when `IOCB_FLAG_RESFD` is set.
    aio_resfd: u32,
}

/// `struct io_event` from linux/aio_abi.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IoEvent {
    /// `aio_data` of the iocb.
    data: u64,
    /// Address of the iocb.
    obj: u64,
    /// Bytes transferred, or a negated errno.
    res: i64,
    res2: i64,
}

/// A Linux native AIO context (`io_setup` / `io_destroy`).
#[derive(Debug)]
struct AioContext {
    ctx: libc::c_ulong,
}

impl AioContext {
    /// `io_setup(nr_events)`.
    fn new(nr_events: u32) -> io::Result<Self> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id into `ctx`, which must start at 0.
        let ret = unsafe { libc::syscall(libc::SYS_io_setup, nr_events as libc::c_long, &mut ctx) };
        cvt(ret)?;
        Ok(Self { ctx })
    }

    /// `io_submit`. Returns how many of `iocbs` (a prefix) the kernel accepted.
    ///
    /// # Safety
    ///
    /// Every pointer in `iocbs` must point to a valid `Iocb` whose buffer (`aio_buf`,
    /// `aio_nbytes`) stays valid and unaliased until its completion is reaped with
    /// [`AioContext::get_events`] (or the context is destroyed).
    unsafe fn submit(&self, iocbs: &mut [*mut Iocb]) -> io::Result<usize> {
        loop {
            // SAFETY: the caller guarantees the iocbs and their buffers; the array pointer
            // and length describe `iocbs`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    iocbs.len() as libc::c_long,
                    iocbs.as_mut_ptr(),
                )
            };
            match cvt(ret) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r.map(|n| n as usize),
            }
        }
    }

    /// `io_getevents(min_nr, events.len(), timeout)`; `None` waits forever.
    fn get_events(
        &self,
        min_nr: usize,
        events: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` is valid for writes of `events.len()` io_event structs (our
        // `IoEvent` has the kernel layout); `ts_ptr` is null or points to `ts`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                min_nr as libc::c_long,
                events.len() as libc::c_long,
                events.as_mut_ptr(),
                ts_ptr,
            )
        };
        match cvt(ret) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            r => r.map(|n| n as usize),
        }
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        // SAFETY: the context id came from io_setup and is destroyed exactly once; io_destroy
        // waits for outstanding iocbs, whose buffers the engine keeps alive until then.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}

/// iocbs per `io_submit` and events per `io_getevents`.
const AIO_BATCH: usize = 64;

/// An AIO context plus the requests it owns while their iocbs are in the kernel.
///
/// This is what makes AIO safe to use from the rest of the crate: a [`Request`] handed to
/// [`AioRing::submit`] is parked in a slot (its [`IoBuf`](crate::IoBuf) memory, a separate
/// heap allocation, does not move with it) and only handed back by [`AioRing::reap`] once
/// the kernel reported its completion. Dropping the ring destroys the context first, which
/// waits for outstanding iocbs, and only then frees the parked buffers.
pub(crate) struct AioRing {
    // Field order matters: `ctx` is dropped (io_destroy waits) before `slots`.
    ctx: AioContext,
    slots: Vec<Option<Request>>,
    free: Vec<u32>,
    fd: RawFd,
    resfd: RawFd,
    /// The file was opened `O_SYNC`: FUA needs no `RWF_DSYNC`.
    sync: bool,
}

impl std::fmt::Debug for AioRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioRing")
            .field("depth", &self.slots.len())
            .field("in_kernel", &self.in_kernel())
            .finish()
    }
}

impl AioRing {
    /// A context of `depth` slots issuing I/O on `fd` and signalling the eventfd `resfd`.
    /// `fd` and `resfd` must stay open for the ring's lifetime (the engine owns both).
    pub(crate) fn new(depth: u32, fd: RawFd, resfd: RawFd, sync: bool) -> io::Result<Self> {
        Ok(Self {
            ctx: AioContext::new(depth)?,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            fd,
            resfd,
            sync,
        })
    }

    /// Number of slots.
    pub(crate) fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Requests currently in the kernel.
    pub(crate) fn in_kernel(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Submit requests from the front of `waiting` (reads, writes, flushes) while slots
    /// are free, in batches. A request the kernel refuses goes to `rejected` with its errno;
    /// on `EAGAIN` the rest stay at the front of `waiting` for a later call.
    pub(crate) fn submit(
        &mut self,
        waiting: &mut VecDeque<Request>,
        rejected: &mut dyn FnMut(Request, i32),
    ) {
        while !waiting.is_empty() && !self.free.is_empty() {
            let mut iocbs = [Iocb::default(); AIO_BATCH];
            let mut n = 0;
            while n < AIO_BATCH && !self.free.is_empty() {
                let Some(mut req) = waiting.pop_front() else {
                    break;
                };
                let (opcode, buf, len, flags) = match req.op {
                    Op::Read => (
                        IOCB_CMD_PREAD,
                        req.buf.as_mut_ptr() as u64,
                        req.buf.len(),
                        0,
                    ),
                    Op::Write => {
                        let flags = if req.fua && !self.sync { RWF_DSYNC } else { 0 };
                        (
                            IOCB_CMD_PWRITE,
                            req.buf.as_mut_ptr() as u64,
                            req.buf.len(),
                            flags,
                        )
                    }
                    Op::Flush => (IOCB_CMD_FDSYNC, 0, 0, 0),
                    _ => {
                        rejected(req, libc::EINVAL);
                        continue;
                    }
                };
                let Some(slot) = self.free.pop() else { break };
                iocbs[n] = Iocb {
                    aio_data: u64::from(slot),
                    aio_rw_flags: flags,
                    aio_lio_opcode: opcode,
                    aio_fildes: self.fd as u32,
                    aio_buf: buf,
                    aio_nbytes: len as u64,
                    aio_offset: req.offset as i64,
                    aio_flags: IOCB_FLAG_RESFD,
                    aio_resfd: self.resfd as u32,
                    ..Iocb::default()
                };
                self.slots[slot as usize] = Some(req);
                n += 1;
            }
            let mut ptrs = [std::ptr::null_mut::<Iocb>(); AIO_BATCH];
            for (p, cb) in ptrs.iter_mut().zip(iocbs.iter_mut()).take(n) {
                *p = cb;
            }
            let mut start = 0;
            while start < n {
                // SAFETY: `ptrs[start..n]` point to initialised iocbs in `iocbs` (the kernel
                // copies them during the call). Each iocb's buffer belongs to the IoBuf of
                // a request parked in `self.slots`, which stays there, untouched, until
                // `reap` sees its event or `ctx` is destroyed (waiting for it) — see the
                // field order of `AioRing`.
                match unsafe { self.ctx.submit(&mut ptrs[start..n]) } {
                    Ok(k) if k > 0 => start += k,
                    Ok(_) => {
                        self.unsubmit(&iocbs[start..n], waiting);
                        return;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        self.unsubmit(&iocbs[start..n], waiting);
                        return;
                    }
                    Err(e) => {
                        // The first iocb was refused: hand it back, go on with the rest.
                        let slot = iocbs[start].aio_data as u32;
                        if let Some(req) = self.slots[slot as usize].take() {
                            self.free.push(slot);
                            rejected(req, e.raw_os_error().unwrap_or(libc::EIO));
                        }
                        start += 1;
                    }
                }
            }
        }
    }

    /// Put requests the kernel did not take back at the front of `waiting`, in order.
    fn unsubmit(&mut self, cbs: &[Iocb], waiting: &mut VecDeque<Request>) {
        for cb in cbs.iter().rev() {
            let slot = cb.aio_data as u32;
            if let Some(req) = self.slots[slot as usize].take() {
                self.free.push(slot);
                waiting.push_front(req);
            }
        }
    }

    /// Reap completed iocbs: wait for at least `min` (bounded by what is in the kernel) up
    /// to `timeout`, then take whatever else is ready. `done` gets each request with the
    /// kernel's result (bytes, or a negated errno). Returns how many were reaped.
    pub(crate) fn reap(
        &mut self,
        min: usize,
        timeout: Option<Duration>,
        done: &mut dyn FnMut(Request, i64),
    ) -> io::Result<usize> {
        let mut events = [IoEvent::default(); AIO_BATCH];
        let mut total = 0;
        let mut min = min.min(self.in_kernel()).min(AIO_BATCH);
        let mut timeout = timeout;
        while self.in_kernel() > 0 {
            let n = self.ctx.get_events(min, &mut events, timeout)?;
            for ev in &events[..n] {
                let slot = ev.data as u32;
                let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                    continue;
                };
                self.free.push(slot);
                done(req, ev.res);
            }
            total += n;
            if n < AIO_BATCH {
                break;
            }
            (min, timeout) = (0, Some(Duration::ZERO));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_aio_abi_h() {
        assert_eq!(std::mem::size_of::<Iocb>(), 64);
        assert_eq!(std::mem::size_of::<IoEvent>(), 32);
        assert_eq!(std::mem::offset_of!(Iocb, aio_lio_opcode), 16);
        assert_eq!(std::mem::offset_of!(Iocb, aio_fildes), 20);
        assert_eq!(std::mem::offset_of!(Iocb, aio_buf), 24);
        assert_eq!(std::mem::offset_of!(Iocb, aio_offset), 40);
        assert_eq!(std::mem::offset_of!(Iocb, aio_flags), 56);
        assert_eq!(std::mem::offset_of!(Iocb, aio_resfd), 60);
    }

    #[test]
    fn eventfd_signal_and_clear() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.clear(), 0);
        assert!(!poll_readable(e.borrow(), Some(Duration::ZERO)).unwrap());
        e.signal();
        e.signal();
        assert!(poll_readable(e.borrow(), Some(Duration::ZERO)).unwrap());
        assert_eq!(e.clear(), 2);
        assert_eq!(e.clear(), 0);
    }
}
