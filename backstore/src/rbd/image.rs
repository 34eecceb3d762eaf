//! Safe ownership of the librados/librbd handles, and the one place where asynchronous
//! librbd calls are started and completed.
//!
//! Every operation carries a heap context ([`OpCtx`]) through librbd as the completion's
//! argument. librbd calls [`on_complete`] exactly once per started operation, on one of its
//! own threads; that callback reads the return value, releases the completion, optionally
//! chains a flush (FUA writes), and hands the result to the context's [`Sink`]: a waiting
//! synchronous caller ([`Waiter`]) or the owning engine's completion queue
//! ([`EngineOp`](super::engine::EngineOp)).
//!
//! Buffers: the context (or the waiting caller) keeps every buffer librbd reads from or
//! writes into alive until the callback has run, and nothing else touches it meanwhile.

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::engine::EngineOp;
use super::ffi;
use super::spec::RbdSpec;
use crate::error::{OpenError, OpenErrorKind};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `strerror` of a positive errno, for messages.
pub(crate) fn errstr(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

/// The positive errno of a negative C return value.
fn neg(r: c_int) -> i32 {
    r.checked_neg().unwrap_or(libc::EIO)
}

/// The open cluster connection, pool context and image. Closed in reverse order on drop.
pub(crate) struct Handles {
    cluster: ffi::rados_t,
    ioctx: ffi::rados_ioctx_t,
    image: ffi::rbd_image_t,
}

// SAFETY: librados cluster handles, pool contexts and librbd image handles are documented
// thread-safe: any thread may submit I/O or query the image concurrently (librbd locks its
// image context internally). The raw pointers are only closed in `Drop`, which needs
// exclusive ownership.
unsafe impl Send for Handles {}
// SAFETY: see `Send`: every librbd/librados call made through `&Handles` is safe to make
// from several threads at once.
unsafe impl Sync for Handles {}

/// Options applied to the cluster handle before connecting.
pub(crate) struct ConnectOptions<'a> {
    pub(crate) read_only: bool,
    pub(crate) config: &'a [(String, String)],
}

impl Handles {
    /// Connect as the spec's client, open its pool and image (read-only for a snapshot or
    /// when asked).
    pub(crate) fn open(spec: &RbdSpec, opts: &ConnectOptions<'_>) -> Result<Self, OpenError> {
        let label = spec.to_string();
        let remote = |what: String| OpenError::new(label.clone(), OpenErrorKind::Remote(what));
        let cstr =
            |s: &str| CString::new(s).map_err(|_| remote(format!("{s:?} contains a NUL byte")));
        let client = cstr(&spec.client_name())?;
        let pool = cstr(&spec.pool)?;
        let image_name = cstr(&spec.image)?;
        let snap = spec.snap.as_deref().map(cstr).transpose()?;
        let conf = match &spec.conf {
            Some(p) => Some(cstr(&p.to_string_lossy())?),
            None => None,
        };

        let mut h = Handles {
            cluster: ptr::null_mut(),
            ioctx: ptr::null_mut(),
            image: ptr::null_mut(),
        };
        // SAFETY: `h.cluster` is a valid out-pointer; both strings are NUL-terminated and
        // outlive the call (librados copies them).
        let r = unsafe { ffi::rados_create2(&mut h.cluster, c"ceph".as_ptr(), client.as_ptr(), 0) };
        if r < 0 {
            h.cluster = ptr::null_mut();
            return Err(remote(format!("rados_create2: {}", errstr(neg(r)))));
        }
        // From here on `h` owns the cluster handle and shuts it down on every error path.
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: the cluster handle is valid and not connected yet; the path is
        // NUL-terminated or null (librados' default search).
        let r = unsafe { ffi::rados_conf_read_file(h.cluster, conf_ptr) };
        if r < 0 {
            match &spec.conf {
                Some(p) => {
                    return Err(remote(format!(
                        "cannot read ceph config {}: {}",
                        p.display(),
                        errstr(neg(r))
                    )));
                }
                None => log::debug!("rbd: no default ceph.conf found ({})", errstr(neg(r))),
            }
        }
        // SAFETY: valid, unconnected handle; a null name means CEPH_ARGS.
        let r = unsafe { ffi::rados_conf_parse_env(h.cluster, ptr::null()) };
        if r < 0 {
            return Err(remote(format!("CEPH_ARGS: {}", errstr(neg(r)))));
        }
        // Do not hang for librados' default 300 s on an unreachable cluster. The caller's
        // own settings come after these and may override them.
        // Make a discard smaller than an object (or its unaligned edges) zero the range
        // instead of silently skipping it: unmapped blocks must read as zeroes.
        // No client-side write cache: a write is acknowledged once it is in the cluster, so
        // every other client of the image (a second target daemon serving it as another
        // path, `rbd export`) reads it; with librbd's default writeback cache it could sit
        // in this process's memory (as tcmu-runner also turns it off).
        let mut settings: Vec<(&str, &str)> = vec![
            ("client_mount_timeout", "30"),
            ("rbd_skip_partial_discard", "false"),
            ("rbd_cache", "false"),
        ];
        settings.extend(opts.config.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (key, value) in settings {
            let (k, v) = (cstr(key)?, cstr(value)?);
            // SAFETY: valid, unconnected handle; both strings NUL-terminated.
            let r = unsafe { ffi::rados_conf_set(h.cluster, k.as_ptr(), v.as_ptr()) };
            if r < 0 {
                return Err(remote(format!(
                    "ceph option {key}={value}: {}",
                    errstr(neg(r))
                )));
            }
        }
        // SAFETY: valid, configured, unconnected handle.
        let r = unsafe { ffi::rados_connect(h.cluster) };
        if r < 0 {
            return Err(remote(format!(
                "cannot connect to the ceph cluster as {}: {}",
                spec.client_name(),
                errstr(neg(r))
            )));
        }
        // SAFETY: connected handle, NUL-terminated pool name, valid out-pointer.
        let r = unsafe { ffi::rados_ioctx_create(h.cluster, pool.as_ptr(), &mut h.ioctx) };
        if r < 0 {
            h.ioctx = ptr::null_mut();
            return Err(remote(format!("pool {:?}: {}", spec.pool, errstr(neg(r)))));
        }
        let snap_ptr = snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        // SAFETY: valid pool context, NUL-terminated names (or a null snapshot), valid
        // out-pointer.
        let r = unsafe {
            if opts.read_only || snap.is_some() {
                ffi::rbd_open_read_only(h.ioctx, image_name.as_ptr(), &mut h.image, snap_ptr)
            } else {
                ffi::rbd_open(h.ioctx, image_name.as_ptr(), &mut h.image, ptr::null())
            }
        };
        if r < 0 {
            h.image = ptr::null_mut();
            return Err(remote(format!(
                "image {}: {}",
                spec.image_spec(),
                errstr(neg(r))
            )));
        }
        Ok(h)
    }

    /// The raw image handle, for starting operations.
    pub(crate) fn image(&self) -> ffi::rbd_image_t {
        self.image
    }

    /// `rbd_stat`: size and object size.
    pub(crate) fn stat(&self) -> Result<ffi::rbd_image_info_t, i32> {
        let mut info = ffi::rbd_image_info_t::zeroed();
        // SAFETY: open image; `info` is a valid, writable `rbd_image_info_t` of the size
        // passed.
        let r = unsafe {
            ffi::rbd_stat(
                self.image,
                &mut info,
                std::mem::size_of::<ffi::rbd_image_info_t>(),
            )
        };
        if r < 0 { Err(neg(r)) } else { Ok(info) }
    }

    /// `rbd_get_size` (refreshes the image header if librbd saw it change).
    pub(crate) fn get_size(&self) -> Result<u64, i32> {
        let mut size = 0u64;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { ffi::rbd_get_size(self.image, &mut size) };
        if r < 0 { Err(neg(r)) } else { Ok(size) }
    }

    /// `rbd_diff_iterate2` over `ofs..ofs+len` of the head against the image's creation
    /// (parent data included): every extent that holds data, as `(offset, length)`.
    pub(crate) fn allocated_extents(&self, ofs: u64, len: u64) -> Result<Vec<(u64, u64)>, i32> {
        unsafe extern "C" fn collect(
            off: u64,
            len: usize,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            // SAFETY: `arg` is the `&mut Vec` passed below, alive and not otherwise
            // borrowed for the whole (synchronous) iteration; librbd calls back one
            // extent at a time.
            let out = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
            if exists != 0 && len > 0 {
                out.push((off, len as u64));
            }
            0
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        // SAFETY: open image; a null snapshot name means "since creation"; `collect` has
        // the callback's C signature and `arg` points at `out`, which outlives the call.
        let r = unsafe {
            ffi::rbd_diff_iterate2(
                self.image,
                ptr::null(),
                ofs,
                len,
                1,
                0,
                Some(collect),
                (&mut out as *mut Vec<(u64, u64)>).cast(),
            )
        };
        if r < 0 { Err(neg(r)) } else { Ok(out) }
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each handle is either null (never opened) or open and owned by us; no
        // operation is in flight (synchronous callers have returned, engines wait for
        // their operations before releasing the store), and each is closed exactly once,
        // image before pool context before cluster.
        unsafe {
            if !self.image.is_null() {
                let r = ffi::rbd_close(self.image);
                if r < 0 {
                    log::warn!("rbd_close: {}", errstr(neg(r)));
                }
            }
            if !self.ioctx.is_null() {
                ffi::rados_ioctx_destroy(self.ioctx);
            }
            if !self.cluster.is_null() {
                ffi::rados_shutdown(self.cluster);
            }
        }
    }
}

/// One librbd call, with raw pointers into buffers that the caller keeps alive (and does
/// not otherwise access) until the operation completes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    /// `rbd_aio_read` into `buf[..len]`.
    Read { buf: *mut u8, len: usize },
    /// `rbd_aio_write2` from `buf[..len]`, with librados' FUA hint when `fua`.
    Write {
        buf: *const u8,
        len: usize,
        fua: bool,
    },
    /// `rbd_aio_flush`.
    Flush,
    /// `rbd_aio_discard` of `len` bytes.
    Discard { len: u64 },
    /// `rbd_aio_write_zeroes` of `len` bytes.
    WriteZeroes { len: usize },
    /// `rbd_aio_compare_and_write`: compare `cmp[..len]`, then write `data[..len]`; with
    /// `fua` librados' FUA hint and a flush after a successful write.
    CompareAndWrite {
        cmp: *const u8,
        data: *const u8,
        len: usize,
        fua: bool,
    },
    /// `rbd_aio_writesame`: `pattern[..data_len]` repeated over `len` bytes; with `fua`
    /// librados' FUA hint (the caller flushes).
    WriteSame {
        pattern: *const u8,
        data_len: usize,
        len: usize,
        fua: bool,
    },
}

/// Where a finished operation's result goes.
pub(crate) enum Sink {
    /// A synchronous caller blocked in [`Waiter::wait`].
    Wait(Arc<Waiter>),
    /// An engine request (its buffer lives in here).
    Engine(EngineOp),
}

/// The heap context of one operation in flight, owned by librbd's completion until the
/// callback runs.
pub(crate) struct OpCtx {
    /// The image, to chain the flush of a FUA write.
    image: ffi::rbd_image_t,
    /// Issue a flush after the call succeeds, and report only then.
    flush_after: bool,
    /// Where `rbd_aio_compare_and_write` stores the offset of the first difference.
    mismatch: u64,
    sink: Sink,
}

/// The raw outcome of an operation: librbd's return value (negative errno on failure) and,
/// for compare-and-write, the mismatch offset librbd reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) ret: isize,
    pub(crate) mismatch: u64,
}

/// A synchronous caller's rendezvous with the completion callback.
#[derive(Default)]
pub(crate) struct Waiter {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl Waiter {
    fn set(&self, outcome: Outcome) {
        *lock(&self.done) = Some(outcome);
        self.cv.notify_all();
    }

    /// Block until the operation completed (no timeout: librbd may still use the buffers
    /// until then).
    pub(crate) fn wait(&self) -> Outcome {
        let mut done = lock(&self.done);
        loop {
            if let Some(o) = *done {
                return o;
            }
            done = self.cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl OpCtx {
    fn finish(self, ret: isize) {
        let outcome = Outcome {
            ret,
            mismatch: self.mismatch,
        };
        match self.sink {
            Sink::Wait(w) => w.set(outcome),
            Sink::Engine(op) => op.complete(outcome),
        }
    }
}

/// Start `call` at `offset` on `image`; the result reaches `sink` exactly once — through
/// librbd's callback, or right here if librbd refuses the call.
///
/// # Safety
///
/// `image` must stay open until the result has reached `sink`, and every buffer `call`
/// points into must stay valid (and untouched by anyone else) until then.
pub(crate) unsafe fn start(image: ffi::rbd_image_t, call: Call, offset: u64, sink: Sink) {
    let flush_after = matches!(
        call,
        Call::Write { fua: true, .. } | Call::CompareAndWrite { fua: true, .. }
    );
    let ctx = Box::new(OpCtx {
        image,
        flush_after,
        mismatch: 0,
        sink,
    });
    // SAFETY: forwarded from this function's contract.
    unsafe { submit(ctx, call, offset) }
}

/// Create a completion for `ctx` and issue `call`; on immediate failure, finish `ctx` with
/// the error.
///
/// # Safety
///
/// As [`start`], for `ctx.image` and `call`.
unsafe fn submit(ctx: Box<OpCtx>, call: Call, offset: u64) {
    let image = ctx.image;
    let arg = Box::into_raw(ctx);
    let mut comp: ffi::rbd_completion_t = ptr::null_mut();
    // SAFETY: `arg` is a live `OpCtx` that the callback takes back exactly once;
    // `on_complete` has the callback's C signature; `comp` is a valid out-pointer.
    let r = unsafe { ffi::rbd_aio_create_completion(arg.cast(), Some(on_complete), &mut comp) };
    if r < 0 {
        // SAFETY: no completion exists, so nobody else owns `arg`: take it back once.
        let ctx = unsafe { Box::from_raw(arg) };
        ctx.finish(r as isize);
        return;
    }
    let fua_flag = |fua: bool| {
        if fua {
            ffi::LIBRADOS_OP_FLAG_FADVISE_FUA
        } else {
            0
        }
    };
    // SAFETY: `image` is open and `comp` fresh (contract of `start`); the buffers are
    // valid for the lengths given until the callback runs (contract of `start`). The
    // mismatch out-pointer points into the heap context, which lives until the callback.
    let r: isize = unsafe {
        match call {
            Call::Read { buf, len } => {
                ffi::rbd_aio_read(image, offset, len, buf.cast(), comp) as isize
            }
            Call::Write { buf, len, fua } => {
                ffi::rbd_aio_write2(image, offset, len, buf.cast(), comp, fua_flag(fua)) as isize
            }
            Call::Flush => ffi::rbd_aio_flush(image, comp) as isize,
            Call::Discard { len } => ffi::rbd_aio_discard(image, offset, len, comp) as isize,
            Call::WriteZeroes { len } => {
                ffi::rbd_aio_write_zeroes(image, offset, len, comp, 0, 0) as isize
            }
            Call::CompareAndWrite {
                cmp,
                data,
                len,
                fua,
            } => ffi::rbd_aio_compare_and_write(
                image,
                offset,
                len,
                cmp.cast(),
                data.cast(),
                comp,
                &raw mut (*arg).mismatch,
                fua_flag(fua),
            ),
            Call::WriteSame {
                pattern,
                data_len,
                len,
                fua,
            } => ffi::rbd_aio_writesame(
                image,
                offset,
                len,
                pattern.cast(),
                data_len,
                comp,
                fua_flag(fua),
            ) as isize,
        }
    };
    if r < 0 {
        // librbd refused the call: the callback will never run. Release the completion
        // and finish here.
        // SAFETY: `comp` was created above and is not referenced by librbd any more;
        // `arg` is still exclusively ours, taken back once.
        let ctx = unsafe {
            ffi::rbd_aio_release(comp);
            Box::from_raw(arg)
        };
        ctx.finish(r);
    }
}

/// librbd's completion callback (runs on a librbd thread).
unsafe extern "C" fn on_complete(comp: ffi::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `comp` is the completion librbd is finishing; we read its value and release
    // it exactly once (releasing inside the callback is allowed). `arg` is the `OpCtx`
    // leaked by `submit` for this completion, taken back exactly once.
    let (ret, mut ctx) = unsafe {
        let ret = ffi::rbd_aio_get_return_value(comp);
        ffi::rbd_aio_release(comp);
        (ret, Box::from_raw(arg.cast::<OpCtx>()))
    };
    if ret >= 0 && ctx.flush_after {
        ctx.flush_after = false;
        // SAFETY: the image is still open (contract of `start`, which holds until the sink
        // receives the result, i.e. after the flush); a flush uses no buffer.
        unsafe { submit(ctx, Call::Flush, 0) };
        return;
    }
    ctx.finish(ret);
}

/// Run `call` and wait for it.
///
/// # Safety
///
/// `image` must be open for the duration of the call, and the buffers `call` points into
/// valid for the lengths given (they are not used after this returns).
pub(crate) unsafe fn run(image: ffi::rbd_image_t, call: Call, offset: u64) -> Outcome {
    let waiter = Arc::new(Waiter::default());
    // SAFETY: we block below until the result reached the waiter, so the image and the
    // buffers outlive the operation (this function's contract).
    unsafe { start(image, call, offset, Sink::Wait(waiter.clone())) };
    waiter.wait()
}
