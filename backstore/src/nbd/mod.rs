//! `bstype = "nbd"`: a LUN backed by a remote NBD server (qemu-nbd, nbdkit, nbd-server).
//!
//! [`NbdStore`] is a pipelined NBD client behind the synchronous [`BackingStore`] trait.
//! It keeps one socket (TCP or unix) per store and lets many requests be in flight on it:
//!
//! - a caller (an I/O pool thread) registers its request in a table keyed by the NBD
//!   cookie (handle), sends it under a short writer lock, and sleeps on a condition
//!   variable until its reply arrives;
//! - one reader thread per connection reads the replies (simple, or structured chunks),
//!   copies a READ reply's payload into a buffer (from a small free list) and wakes the
//!   callers.
//!
//! Memory is bounded by the requests in flight (one payload each, at most the chunk size);
//! there is no thread per request.
//!
//! **Reconnect.** When the connection drops (the server restarts, the network fails, a
//! request gets no answer within [`NbdOptions::request_timeout`]), every caller whose
//! request was not yet answered sends it again on a new connection; NBD writes are
//! idempotent, so nothing acknowledged is lost and nothing unacknowledged is reported done.
//! A FLUSH returns only after the server acknowledged it. The first caller to notice
//! reconnects (with back-off) for at most [`NbdOptions::reconnect_timeout`]; after that its
//! request, and the others waiting, fail with an I/O error (MEDIUM ERROR) instead of
//! hanging. Later requests try once more each, so the store recovers when the server is back.
//!
//! **Protocol.** Fixed newstyle handshake with `NBD_OPT_GO` (asking for
//! `NBD_INFO_BLOCK_SIZE`), falling back to `NBD_OPT_EXPORT_NAME` when the server does not
//! know GO. Before that the client asks for structured replies (`NBD_OPT_STRUCTURED_REPLY`)
//! and the `base:allocation` metadata context (`NBD_OPT_SET_META_CONTEXT`); when the server
//! grants both, [`BackingStore::lba_status`] (GET LBA STATUS) asks `NBD_CMD_BLOCK_STATUS`
//! (an extent with `NBD_STATE_HOLE` and `NBD_STATE_ZERO` is deallocated, anything else is
//! mapped), otherwise every extent is reported mapped, as before. A server that refuses the
//! options (an older one) keeps simple replies; each connection, including every reconnect,
//! negotiates afresh. With structured replies a READ may come back in several chunks
//! (`OFFSET_DATA`, `OFFSET_HOLE`, errors): the reader assembles them into the request's
//! buffer, checking every offset and length against the request and reading any other
//! payload piecewise, so a hostile server cannot make it panic or allocate more than the
//! request's own length. Reads and writes are split at the server's maximum payload
//! (at most 32 MiB). `fua` writes carry `NBD_CMD_FLAG_FUA` when the server advertises it,
//! else they are followed by a FLUSH. [`BackingStore::unmap`] and
//! [`BackingStore::write_zeroes`] use `NBD_CMD_WRITE_ZEROES` without `NO_HOLE` (the server
//! may deallocate, and the range is guaranteed to read back as zeroes, which is what a thin
//! LUN reporting LBPRZ promises); `NBD_CMD_TRIM` is used only by [`NbdStore::trim`], since
//! after a TRIM the server may return anything (qemu-nbd's default `--discard=ignore` keeps
//! the old data). Server errors map onto [`StoreError`] kinds: EIO → medium error, ENOSPC →
//! no space, EPERM/EROFS → write protected, EINVAL → invalid, EOVERFLOW → out of range.

mod proto;
mod url;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{OpenError, OpenErrorKind, StoreError};
use crate::store::{BackingStore, check_range, check_writable, write_zeroes_by_writing};

use crate::store::LbaStatus;
use proto::{Cmd, Info, OptionReply, ProtoError, ReplyHead, Request};
pub use url::{DEFAULT_PORT, NbdAddr, NbdUrl};

/// The largest payload of one READ or WRITE unless the server announces a smaller one.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The largest length of one WRITE_ZEROES or TRIM request.
const MAX_ZERO_LEN: u64 = 1 << 30;

/// Read buffers kept for reuse.
const FREE_BUFFERS: usize = 16;

/// How often one request is sent again on a new connection before it fails.
const MAX_RESENDS: u32 = 8;

/// Options of [`NbdStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdOptions {
    /// Logical block size the LUN presents (512 or 4096).
    pub block_size: u32,
    /// Refuse writes even if the export is writable.
    pub read_only: bool,
    /// The size the configuration expects; opening fails if the export's size differs.
    pub expect_size: Option<u64>,
    /// How long to keep trying to reconnect before requests fail.
    pub reconnect_timeout: Duration,
    /// How long a request may go unanswered before the connection is considered dead
    /// (and the request sent again on a new one).
    pub request_timeout: Duration,
    /// Timeout of the TCP connect and of each handshake read or write.
    pub connect_timeout: Duration,
    /// Ask for structured replies and the `base:allocation` context, for GET LBA STATUS
    /// through `NBD_CMD_BLOCK_STATUS` (servers that do not offer them are used without).
    pub block_status: bool,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self {
            block_size: 512,
            read_only: false,
            expect_size: None,
            reconnect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            block_status: true,
        }
    }
}

/// What the server told us about the export during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Minimum block size (1 unless the server said otherwise).
    pub min_block: u32,
    /// Maximum payload of one request (at most [`MAX_PAYLOAD`]).
    pub max_payload: u32,
    /// Whether the handshake fell back to `NBD_OPT_EXPORT_NAME`.
    pub legacy_export_name: bool,
    /// Whether the server agreed to structured replies.
    pub structured_replies: bool,
    /// The id the server gave the `base:allocation` context, if it offers it (and
    /// structured replies): GET LBA STATUS asks the server.
    pub base_allocation: Option<u32>,
}

impl ExportInfo {
    fn has(&self, flag: u16) -> bool {
        self.flags & proto::TF_HAS_FLAGS != 0 && self.flags & flag != 0
    }
}

/// A connected socket of either kind.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(addr: &NbdAddr, timeout: Duration) -> io::Result<Self> {
        match addr {
            NbdAddr::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p)?)),
            NbdAddr::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every slice (header and payload) in as few system calls as the socket allows.
fn write_all_vectored(mut w: &Stream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The most replies one option may get (a server sending more is not trusted further).
const MAX_OPTION_REPLIES: u32 = 256;

/// Reads one option reply (header and bounded payload) that must answer `option`; `count`
/// counts the replies to this option so far.
fn read_option_reply(
    mut r: &Stream,
    option: u32,
    count: &mut u32,
) -> io::Result<(OptionReply, Vec<u8>)> {
    *count += 1;
    if *count > MAX_OPTION_REPLIES {
        return Err(invalid(format!(
            "more than {MAX_OPTION_REPLIES} replies to option {option}"
        )));
    }
    let mut h = [0u8; proto::OPTION_REPLY_LEN];
    r.read_exact(&mut h)?;
    let rep = OptionReply::decode(&h).ok_or_else(|| invalid("bad option reply magic"))?;
    if rep.len > proto::MAX_OPTION_REPLY {
        return Err(invalid(format!("option reply of {} bytes", rep.len)));
    }
    let mut data = vec![0u8; rep.len as usize];
    r.read_exact(&mut data)?;
    if rep.option != option {
        return Err(invalid(format!(
            "reply to option {} while waiting for option {option}",
            rep.option
        )));
    }
    Ok((rep, data))
}

/// `NBD_OPT_STRUCTURED_REPLY`, then `NBD_OPT_SET_META_CONTEXT` for `base:allocation`:
/// whether structured replies are on, and the context's id. A refusal (any error reply)
/// leaves the feature off; the negotiation goes on.
fn negotiate_block_status(s: &Stream, export: &str) -> io::Result<(bool, Option<u32>)> {
    let mut w = s;
    let mut msg = Vec::new();
    proto::encode_option(proto::OPT_STRUCTURED_REPLY, &[], &mut msg);
    w.write_all(&msg)?;
    let mut count = 0;
    let structured = loop {
        let (rep, _) = read_option_reply(s, proto::OPT_STRUCTURED_REPLY, &mut count)?;
        match rep.kind {
            proto::REP_ACK => break true,
            k if k & proto::REP_FLAG_ERROR != 0 => break false,
            _ => {} // Unknown non-error replies are ignored, as the spec asks.
        }
    };
    if !structured {
        return Ok((false, None));
    }
    msg.clear();
    proto::encode_option(
        proto::OPT_SET_META_CONTEXT,
        &proto::meta_context_data(export, proto::BASE_ALLOCATION),
        &mut msg,
    );
    w.write_all(&msg)?;
    let mut id = None;
    let mut count = 0;
    loop {
        let (rep, data) = read_option_reply(s, proto::OPT_SET_META_CONTEXT, &mut count)?;
        match rep.kind {
            proto::REP_META_CONTEXT => {
                if let Some((ctx, name)) = proto::parse_meta_context(&data) {
                    if name == proto::BASE_ALLOCATION.as_bytes() {
                        id = Some(ctx);
                    }
                }
            }
            proto::REP_ACK => return Ok((true, id)),
            k if k & proto::REP_FLAG_ERROR != 0 => return Ok((true, None)),
            _ => {}
        }
    }
}

/// The fixed newstyle handshake on a fresh connection, up to the transmission phase.
fn handshake(s: &Stream, export: &str, block_status: bool) -> io::Result<ExportInfo> {
    let mut r = s;
    let mut w = s;
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    if u64::from_be_bytes(word) != proto::NBDMAGIC {
        return Err(invalid("not an NBD server (no NBDMAGIC)"));
    }
    r.read_exact(&mut word)?;
    match u64::from_be_bytes(word) {
        proto::IHAVEOPT => {}
        proto::OLDSTYLE_MAGIC => {
            return Err(invalid("oldstyle NBD servers are not supported"));
        }
        _ => return Err(invalid("bad NBD negotiation magic")),
    }
    let mut hf = [0u8; 2];
    r.read_exact(&mut hf)?;
    let hflags = u16::from_be_bytes(hf);
    let fixed = hflags & proto::FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & proto::FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= proto::CLIENT_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= proto::CLIENT_NO_ZEROES;
    }
    w.write_all(&cflags.to_be_bytes())?;

    // Options other than EXPORT_NAME need fixed newstyle.
    let (structured, base_allocation) = if fixed && block_status {
        negotiate_block_status(s, export)?
    } else {
        (false, None)
    };
    if fixed {
        let mut msg = Vec::new();
        proto::encode_option(proto::OPT_GO, &proto::go_data(export), &mut msg);
        w.write_all(&msg)?;
        let mut info = ExportInfo {
            size: 0,
            flags: 0,
            min_block: 1,
            max_payload: MAX_PAYLOAD,
            legacy_export_name: false,
            structured_replies: structured,
            base_allocation,
        };
        let mut have_export = false;
        let mut count = 0;
        loop {
            let (rep, data) = read_option_reply(s, proto::OPT_GO, &mut count)?;
            match rep.kind {
                proto::REP_INFO => match proto::parse_info(&data) {
                    Info::Export { size, flags } => {
                        info.size = size;
                        info.flags = flags;
                        have_export = true;
                    }
                    Info::BlockSize { min, max, .. } => {
                        if !min.is_power_of_two() || min > 65536 {
                            return Err(invalid(format!("bad minimum block size {min}")));
                        }
                        info.min_block = min;
                        info.max_payload = max.clamp(min, MAX_PAYLOAD);
                    }
                    Info::Other(_) => {}
                },
                proto::REP_ACK => {
                    if !have_export {
                        return Err(invalid("NBD_OPT_GO acknowledged without export info"));
                    }
                    return Ok(info);
                }
                proto::REP_ERR_UNSUP => break,
                k if k & proto::REP_FLAG_ERROR != 0 => {
                    let text = String::from_utf8_lossy(&data).replace('\n', " ");
                    let mut why = format!("export {export:?}: {}", proto::rep_error_name(k));
                    if !text.is_empty() {
                        why.push_str(&format!(" ({text})"));
                    }
                    // Leave the negotiation politely.
                    let mut abort = Vec::new();
                    proto::encode_option(proto::OPT_ABORT, &[], &mut abort);
                    let _ = w.write_all(&abort);
                    return Err(io::Error::new(io::ErrorKind::NotFound, why));
                }
                _ => {} // Unknown non-error replies are ignored, as the spec asks.
            }
        }
    }

    // NBD_OPT_EXPORT_NAME: the server answers with size and flags, or closes.
    let mut msg = Vec::new();
    proto::encode_option(proto::OPT_EXPORT_NAME, export.as_bytes(), &mut msg);
    w.write_all(&msg)?;
    let mut b = [0u8; 10];
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("export {export:?}: refused by the server"),
            )
        } else {
            e
        }
    })?;
    let (size, flags) = proto::parse_export_name_reply(&b);
    if !no_zeroes {
        let mut zeroes = [0u8; 124];
        r.read_exact(&mut zeroes)?;
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: 1,
        max_payload: MAX_PAYLOAD,
        legacy_export_name: true,
        structured_replies: structured,
        base_allocation,
    })
}

/// Connects and negotiates.
fn connect(url: &NbdUrl, opts: &NbdOptions) -> io::Result<(Stream, ExportInfo)> {
    let timeout = opts.connect_timeout;
    let s = Stream::connect(&url.addr, timeout)?;
    s.set_timeouts(Some(timeout))?;
    let info = handshake(&s, &url.export, opts.block_status)?;
    s.set_timeouts(None)?;
    Ok((s, info))
}

/// An I/O error as a log text ("the server closed the connection" for EOF).
fn eof_text(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "the server closed the connection".into()
    } else {
        e.to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a successful reply carries.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Nothing but success.
    Done,
    /// A READ's payload.
    Data(Vec<u8>),
    /// The first `base:allocation` extent of a BLOCK_STATUS: length in bytes and
    /// `NBD_STATE_*` flags.
    Extent(u32, u32),
}

enum SlotState {
    Waiting,
    Done(Result<Answer, StoreError>),
}

struct Slot {
    /// The connection it was sent on.
    epoch: u64,
    /// The command (structured chunks must fit it).
    cmd: Cmd,
    /// The request's offset (READ chunks carry absolute offsets).
    offset: u64,
    /// Payload length expected with a successful reply (READ), else 0.
    read_len: usize,
    state: SlotState,
}

/// A reply being assembled from structured chunks (reader-local, one per request with
/// chunks received and no DONE yet; so at most one per request in flight).
#[derive(Default)]
struct Partial {
    /// A READ's buffer (zeroed, `read_len` bytes), once a data or hole chunk arrived.
    buf: Option<Vec<u8>>,
    /// Bytes of the READ covered by data and hole chunks.
    covered: u64,
    /// The first error chunk's error.
    error: Option<StoreError>,
    /// The first `base:allocation` extent.
    extent: Option<(u32, u32)>,
}

/// Reads and drops `n` bytes through a small stack buffer.
fn skip(mut r: &Stream, mut n: u64) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    while n > 0 {
        let k = n.min(sink.len() as u64) as usize;
        r.read_exact(&mut sink[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// What a structured chunk did to the reader: go on, or the connection is unusable.
type ChunkResult = Result<(), String>;

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    flags: u16,
    kind: u16,
    handle: u64,
    /// Payload length (untrusted).
    len: u32,
}

/// The GET LBA STATUS answer for a `base:allocation` extent of `len` bytes with `flags`
/// at a block-aligned offset, `rest` bytes before the end of the store: an extent that is
/// a hole and reads as zeroes is deallocated (whole blocks of it; a hole shorter than a
/// block leaves that block mapped), anything else is mapped, rounded up to whole blocks.
fn extent_status(len: u32, flags: u32, block: u64, rest: u64) -> LbaStatus {
    let len = u64::from(len).min(rest);
    let hole = flags & proto::STATE_HOLE != 0 && flags & proto::STATE_ZERO != 0;
    let whole = len / block * block;
    if hole && whole > 0 {
        return LbaStatus {
            mapped: false,
            len: whole,
        };
    }
    LbaStatus {
        mapped: true,
        len: len.max(1).div_ceil(block).saturating_mul(block).min(rest),
    }
}

/// Requests in flight, keyed by cookie, and which connection is alive.
struct Table {
    /// The live connection's generation; 0 while there is none.
    live_epoch: u64,
    /// A handle on the live socket, to shut it down from any thread.
    sock: Option<Stream>,
    slots: HashMap<u64, Slot>,
}

/// The sending side: the socket requests are written to.
struct Writer {
    stream: Option<Stream>,
    epoch: u64,
    /// The live connection's `base:allocation` context id (`None`: no BLOCK_STATUS).
    base_allocation: Option<u32>,
    /// When the connection was found broken and not yet replaced.
    down_since: Option<Instant>,
    readers: Vec<JoinHandle<()>>,
}

struct Shared {
    url: NbdUrl,
    opts: NbdOptions,
    info: ExportInfo,
    writer: Mutex<Writer>,
    table: Mutex<Table>,
    cv: Condvar,
    next_handle: AtomicU64,
    free: Mutex<Vec<Vec<u8>>>,
    closed: AtomicBool,
    reconnects: AtomicU64,
}

impl Shared {
    /// Marks connection `epoch` dead and shuts its socket down (wakes its reader and every
    /// waiter, who send again on the next connection).
    fn kill(&self, t: &mut Table, epoch: u64) {
        if t.live_epoch == epoch && epoch != 0 {
            t.live_epoch = 0;
            if let Some(s) = t.sock.take() {
                s.shutdown();
            }
            self.cv.notify_all();
        }
    }

    /// Makes sure `w` holds a live connection, reconnecting with back-off if needed.
    fn ensure_connected(self: &Arc<Self>, w: &mut Writer) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::from_errno(libc::ESHUTDOWN));
        }
        if w.stream.is_some() && lock(&self.table).live_epoch == w.epoch {
            return Ok(());
        }
        if let Some(old) = w.stream.take() {
            old.shutdown();
        }
        w.readers.retain(|h| !h.is_finished());
        let since = *w.down_since.get_or_insert_with(Instant::now);
        let mut delay = Duration::from_millis(20);
        loop {
            match connect(&self.url, &self.opts) {
                Ok((stream, info)) => {
                    if info.size != self.info.size
                        || info.has(proto::TF_READ_ONLY) != self.info.has(proto::TF_READ_ONLY)
                    {
                        stream.shutdown();
                        log::error!(
                            "{}: the export changed on reconnect ({} bytes{} now, {} before)",
                            self.url,
                            info.size,
                            if info.has(proto::TF_READ_ONLY) {
                                ", read-only"
                            } else {
                                ""
                            },
                            self.info.size
                        );
                        return Err(StoreError::IO);
                    }
                    let (reader, killer) = match (stream.try_clone(), stream.try_clone()) {
                        (Ok(r), Ok(k)) => (r, k),
                        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
                    };
                    let epoch = w.epoch + 1;
                    let me = self.clone();
                    let handle = std::thread::Builder::new()
                        .name("nbd-reader".into())
                        .spawn(move || me.read_replies(&reader, epoch, info))
                        .map_err(StoreError::from)?;
                    w.readers.push(handle);
                    w.epoch = epoch;
                    w.base_allocation = info.base_allocation;
                    w.stream = Some(stream);
                    let t = &mut lock(&self.table);
                    t.live_epoch = epoch;
                    t.sock = Some(killer);
                    if w.down_since.take().is_some() && epoch > 1 {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        log::warn!("{}: reconnected", self.url);
                    }
                    return Ok(());
                }
                Err(e) => {
                    let waited = since.elapsed();
                    if waited >= self.opts.reconnect_timeout || self.closed.load(Ordering::Acquire)
                    {
                        log::error!(
                            "{}: cannot reconnect ({e}); failing requests after {:.1} s",
                            self.url,
                            waited.as_secs_f64()
                        );
                        return Err(StoreError::from_errno(libc::ENOTCONN));
                    }
                    log::debug!("{}: reconnect failed: {e}", self.url);
                    std::thread::sleep(delay.min(self.opts.reconnect_timeout - waited));
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The reader thread of connection `epoch` (negotiated as `conn`): dispatches replies
    /// until the socket fails.
    fn read_replies(&self, s: &Stream, epoch: u64, conn: ExportInfo) {
        let why = self.read_loop(s, epoch, conn);
        let t = &mut lock(&self.table);
        if t.live_epoch == epoch && !self.closed.load(Ordering::Acquire) {
            log::warn!("{}: connection lost: {why}", self.url);
        }
        self.kill(t, epoch);
    }

    /// The slot `handle` waits in on connection `epoch`: (command, offset, READ length).
    fn waiting(&self, handle: u64, epoch: u64) -> Result<(Cmd, u64, usize), String> {
        let t = lock(&self.table);
        match t.slots.get(&handle) {
            Some(slot) if slot.epoch == epoch && matches!(slot.state, SlotState::Waiting) => {
                Ok((slot.cmd, slot.offset, slot.read_len))
            }
            _ => Err(format!("reply with unknown cookie {handle:#x}")),
        }
    }

    /// Hands a finished request its result (if it still waits on this connection).
    fn deliver(&self, handle: u64, epoch: u64, result: Result<Answer, StoreError>) {
        let t = &mut lock(&self.table);
        if let Some(slot) = t.slots.get_mut(&handle) {
            if slot.epoch == epoch {
                slot.state = SlotState::Done(result);
                self.cv.notify_all();
            }
        }
    }

    /// A zeroed buffer of `len` bytes, from the free list if it has one.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = lock(&self.free).pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        buf
    }

    fn read_loop(&self, s: &Stream, epoch: u64, conn: ExportInfo) -> String {
        let mut r = s;
        let mut partial: HashMap<u64, Partial> = HashMap::new();
        loop {
            let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
            if let Err(e) = r.read_exact(&mut h) {
                return eof_text(&e);
            }
            let reply = match ReplyHead::decode(&h, conn.structured_replies) {
                Ok(ReplyHead::Simple(x)) => x,
                Ok(ReplyHead::Structured {
                    flags,
                    kind,
                    handle,
                }) => {
                    let mut l = [0u8; 4];
                    if let Err(e) = r.read_exact(&mut l) {
                        return eof_text(&e);
                    }
                    let len = u32::from_be_bytes(l);
                    let chunk = Chunk {
                        flags,
                        kind,
                        handle,
                        len,
                    };
                    if let Err(why) = self.structured_chunk(s, epoch, &conn, &mut partial, chunk) {
                        return why;
                    }
                    continue;
                }
                Err(e) => return e.to_string(),
            };
            // A simple reply ends its request, whatever chunks came before.
            partial.remove(&reply.handle);
            let read_len = match self.waiting(reply.handle, epoch) {
                Ok((_, _, n)) if reply.error == 0 => n,
                Ok(_) => 0,
                Err(why) => return why,
            };
            let errno = proto::errno_of(reply.error);
            if reply.error != 0 && errno == libc::ESHUTDOWN {
                // The server is going away: send everything again on the next connection.
                return "server shutting down".into();
            }
            let result = if reply.error != 0 {
                Err(StoreError::from_errno(errno))
            } else if read_len > 0 {
                let mut buf = lock(&self.free).pop().unwrap_or_default();
                buf.resize(read_len, 0);
                if let Err(e) = r.read_exact(&mut buf) {
                    return eof_text(&e);
                }
                Ok(Answer::Data(buf))
            } else {
                Ok(Answer::Done)
            };
            self.deliver(reply.handle, epoch, result);
        }
    }

    /// One structured reply chunk whose header was read: reads its payload (checked
    /// against the request, never allocating by a length field), folds it into the
    /// request's [`Partial`], and delivers the result on DONE. `Err` ends the connection.
    fn structured_chunk(
        &self,
        s: &Stream,
        epoch: u64,
        conn: &ExportInfo,
        partial: &mut HashMap<u64, Partial>,
        c: Chunk,
    ) -> ChunkResult {
        let mut r = s;
        let (cmd, req_offset, read_len) = self.waiting(c.handle, epoch)?;
        let bad_len = || ProtoError::ChunkLength(c.kind, c.len).to_string();
        let io = |e: io::Error| eof_text(&e);
        match c.kind {
            proto::REPLY_TYPE_NONE => {
                if c.len != 0 {
                    return Err(bad_len());
                }
                if c.flags & proto::REPLY_FLAG_DONE == 0 {
                    return Err(ProtoError::NoneNotDone.to_string());
                }
            }
            proto::REPLY_TYPE_OFFSET_DATA | proto::REPLY_TYPE_OFFSET_HOLE => {
                if cmd != Cmd::Read {
                    return Err(ProtoError::ChunkType(c.kind).to_string());
                }
                let hole = c.kind == proto::REPLY_TYPE_OFFSET_HOLE;
                if (hole && c.len != 12) || (!hole && c.len < 8) {
                    return Err(bad_len());
                }
                let mut o = [0u8; 8];
                r.read_exact(&mut o).map_err(io)?;
                let n = if hole {
                    let mut l = [0u8; 4];
                    r.read_exact(&mut l).map_err(io)?;
                    u64::from(u32::from_be_bytes(l))
                } else {
                    u64::from(c.len - 8)
                };
                // The chunk must lie inside the request.
                let at = u64::from_be_bytes(o)
                    .checked_sub(req_offset)
                    .filter(|at| at.checked_add(n).is_some_and(|end| end <= read_len as u64))
                    .ok_or_else(|| ProtoError::ChunkRange.to_string())?;
                let p = partial.entry(c.handle).or_default();
                let buf = p.buf.get_or_insert_with(|| self.buffer(read_len));
                // In range: at + n <= read_len == buf.len().
                let piece = buf
                    .get_mut(at as usize..(at + n) as usize)
                    .ok_or_else(|| ProtoError::ChunkRange.to_string())?;
                if hole {
                    piece.fill(0);
                } else {
                    r.read_exact(piece).map_err(io)?;
                }
                p.covered = p.covered.saturating_add(n);
            }
            proto::REPLY_TYPE_BLOCK_STATUS => {
                let body = (c.len as usize).checked_sub(4 + proto::EXTENT_LEN);
                if cmd != Cmd::BlockStatus {
                    return Err(ProtoError::ChunkType(c.kind).to_string());
                }
                let Some(rest) = body.filter(|b| b % proto::EXTENT_LEN == 0) else {
                    return Err(bad_len());
                };
                let mut id = [0u8; 4];
                r.read_exact(&mut id).map_err(io)?;
                let mut e = [0u8; proto::EXTENT_LEN];
                r.read_exact(&mut e).map_err(io)?;
                // Only the first extent is used (REQ_ONE asks for one anyway).
                skip(s, rest as u64).map_err(io)?;
                let p = partial.entry(c.handle).or_default();
                if Some(u32::from_be_bytes(id)) == conn.base_allocation && p.extent.is_none() {
                    let (len, flags) = proto::parse_extent(&e);
                    if len == 0 {
                        // An empty extent says nothing; fail this request only.
                        p.error.get_or_insert(StoreError::IO);
                    } else {
                        p.extent = Some((len, flags));
                    }
                }
            }
            k if k & proto::REPLY_TYPE_ERROR_BIT != 0 => {
                let p = partial.entry(c.handle).or_default();
                let errno = if (c.len as usize) < proto::ERROR_CHUNK_LEN {
                    // Too short to say which error: still an error; skip what is there.
                    skip(s, u64::from(c.len)).map_err(io)?;
                    libc::EIO
                } else {
                    let mut e = [0u8; proto::ERROR_CHUNK_LEN];
                    r.read_exact(&mut e).map_err(io)?;
                    let (error, msg_len) = proto::parse_error_chunk(&e);
                    let rest = c.len - proto::ERROR_CHUNK_LEN as u32;
                    if u32::from(msg_len) > rest {
                        return Err(bad_len());
                    }
                    // The message (and an ERROR_OFFSET's offset) are not used.
                    skip(s, u64::from(rest)).map_err(io)?;
                    proto::errno_of(error)
                };
                if errno == libc::ESHUTDOWN {
                    return Err("server shutting down".into());
                }
                p.error.get_or_insert(StoreError::from_errno(errno));
            }
            k => return Err(ProtoError::ChunkType(k).to_string()),
        }
        if c.flags & proto::REPLY_FLAG_DONE == 0 {
            return Ok(());
        }
        let p = partial.remove(&c.handle).unwrap_or_default();
        let result = match (p.error, cmd) {
            (Some(e), _) => Err(e),
            (None, Cmd::Read) => match p.buf {
                Some(buf) if p.covered == read_len as u64 => Ok(Answer::Data(buf)),
                // Part of the READ was never sent (or sent twice).
                _ if read_len > 0 => {
                    log::warn!("{}: READ reply does not cover the request", self.url);
                    Err(StoreError::IO)
                }
                _ => Ok(Answer::Data(Vec::new())),
            },
            (None, Cmd::BlockStatus) => match p.extent {
                Some((len, flags)) => Ok(Answer::Extent(len, flags)),
                None => {
                    log::warn!("{}: BLOCK_STATUS reply without base:allocation", self.url);
                    Err(StoreError::IO)
                }
            },
            (None, _) => Ok(Answer::Done),
        };
        self.deliver(c.handle, epoch, result);
        Ok(())
    }

    /// Sends one request and waits for its reply, sending it again on a new connection if
    /// the connection drops first. `out` receives a READ's payload; a BLOCK_STATUS returns
    /// its extent (length, flags), or [`StoreError::UNSUPPORTED`] if the live connection
    /// has no `base:allocation` context.
    fn transact(
        self: &Arc<Self>,
        cmd: Cmd,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        mut out: Option<&mut [u8]>,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let header = Request {
            flags,
            cmd,
            handle,
            offset,
            len,
        }
        .encode();
        let read_len = out.as_ref().map_or(0, |o| o.len());
        let mut resends = 0u32;
        loop {
            let epoch = {
                let mut w = lock(&self.writer);
                self.ensure_connected(&mut w)?;
                if cmd == Cmd::BlockStatus && w.base_allocation.is_none() {
                    return Err(StoreError::UNSUPPORTED);
                }
                let epoch = w.epoch;
                lock(&self.table).slots.insert(
                    handle,
                    Slot {
                        epoch,
                        cmd,
                        offset,
                        read_len,
                        state: SlotState::Waiting,
                    },
                );
                let sent = match &w.stream {
                    Some(s) => {
                        let mut bufs = [IoSlice::new(&header), IoSlice::new(payload)];
                        write_all_vectored(s, &mut bufs)
                    }
                    None => Err(io::ErrorKind::NotConnected.into()),
                };
                if let Err(e) = sent {
                    let t = &mut lock(&self.table);
                    t.slots.remove(&handle);
                    if t.live_epoch == epoch {
                        log::warn!("{}: send failed: {e}", self.url);
                    }
                    self.kill(t, epoch);
                    drop(w);
                    resends += 1;
                    if resends > MAX_RESENDS {
                        return Err(StoreError::IO);
                    }
                    continue;
                }
                epoch
            };
            // Wait for the reply, or for the connection to die.
            let deadline = Instant::now() + self.opts.request_timeout;
            let mut t = lock(&self.table);
            loop {
                let done = match t.slots.get_mut(&handle) {
                    Some(Slot {
                        state: state @ SlotState::Done(_),
                        ..
                    }) => Some(std::mem::replace(state, SlotState::Waiting)),
                    _ => None,
                };
                if let Some(SlotState::Done(result)) = done {
                    t.slots.remove(&handle);
                    drop(t);
                    return match result {
                        Ok(Answer::Data(buf)) => {
                            let copied = match out.as_deref_mut() {
                                Some(o) if o.len() == buf.len() => {
                                    o.copy_from_slice(&buf);
                                    true
                                }
                                _ => false,
                            };
                            let mut free = lock(&self.free);
                            if free.len() < FREE_BUFFERS {
                                free.push(buf);
                            }
                            if copied {
                                Ok(None)
                            } else {
                                Err(StoreError::IO)
                            }
                        }
                        Ok(Answer::Extent(len, flags)) => Ok(Some((len, flags))),
                        Ok(Answer::Done) => Ok(None),
                        Err(e) => Err(e),
                    };
                }
                if t.live_epoch != epoch {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    log::warn!(
                        "{}: no reply to {cmd:?} within {:?}; reconnecting",
                        self.url,
                        self.opts.request_timeout
                    );
                    self.kill(&mut t, epoch);
                    break;
                }
                t = self
                    .cv
                    .wait_timeout(t, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            t.slots.remove(&handle);
            drop(t);
            resends += 1;
            if resends > MAX_RESENDS {
                return Err(StoreError::IO);
            }
        }
    }
}

/// A LUN's storage on an NBD server; see the [module docs](self).
pub struct NbdStore {
    shared: Arc<Shared>,
    size: u64,
    block_size: u32,
    read_only: bool,
    chunk: usize,
}

impl fmt::Debug for NbdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdStore")
            .field("url", &self.shared.url.to_string())
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("read_only", &self.read_only)
            .field("flags", &self.shared.info.flags)
            .finish()
    }
}

impl NbdStore {
    /// Connects to the server at `url` (`nbd://host[:port]/export` or
    /// `nbd+unix:///export?socket=PATH`) and negotiates the export. The size comes from the
    /// server; it must be a multiple of `opts.block_size` and equal `opts.expect_size` if
    /// given.
    pub fn open(url: &str, opts: &NbdOptions) -> Result<Self, OpenError> {
        let remote = |why: String| OpenError::new(url, OpenErrorKind::Remote(why));
        let parsed = NbdUrl::parse(url).map_err(remote)?;
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(OpenError::new(url, OpenErrorKind::BadBlockSize(bs)));
        }
        let (stream, info) = connect(&parsed, opts).map_err(|e| remote(e.to_string()))?;
        if info.size == 0 {
            return Err(OpenError::new(url, OpenErrorKind::Empty));
        }
        if info.size % u64::from(bs) != 0 {
            return Err(OpenError::new(
                url,
                OpenErrorKind::SizeNotMultiple {
                    size: info.size,
                    block_size: bs,
                },
            ));
        }
        if bs % info.min_block != 0 {
            return Err(remote(format!(
                "the server's minimum block size {} does not divide the block size {bs}",
                info.min_block
            )));
        }
        if let Some(want) = opts.expect_size {
            if want != info.size {
                return Err(remote(format!(
                    "the export is {} bytes but the configured size is {want} \
                     (leave size out to use the export's)",
                    info.size
                )));
            }
        }
        let read_only = opts.read_only || info.has(proto::TF_READ_ONLY);
        // Whole blocks per chunk.
        let chunk = ((info.max_payload / bs).max(1) * bs) as usize;
        let (reader, killer) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(r), Ok(k)) => (r, k),
            (Err(e), _) | (_, Err(e)) => return Err(OpenError::os(url, &e)),
        };
        let shared = Arc::new(Shared {
            url: parsed,
            opts: opts.clone(),
            info,
            writer: Mutex::new(Writer {
                stream: Some(stream),
                base_allocation: info.base_allocation,
                epoch: 1,
                down_since: None,
                readers: Vec::new(),
            }),
            table: Mutex::new(Table {
                live_epoch: 1,
                sock: Some(killer),
                slots: HashMap::new(),
            }),
            cv: Condvar::new(),
            next_handle: AtomicU64::new(1),
            free: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        let me = shared.clone();
        let handle = std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || me.read_replies(&reader, 1, info))
            .map_err(|e| OpenError::os(url, &e))?;
        lock(&shared.writer).readers.push(handle);
        log::info!(
            "{}: {} bytes, flags {:#06x}, max payload {}{}{}",
            shared.url,
            info.size,
            info.flags,
            info.max_payload,
            if info.legacy_export_name {
                " (NBD_OPT_EXPORT_NAME)"
            } else {
                ""
            },
            match (info.structured_replies, info.base_allocation) {
                (true, Some(_)) => ", structured replies, base:allocation",
                (true, None) => ", structured replies",
                _ => "",
            }
        );
        Ok(Self {
            size: info.size,
            block_size: bs,
            read_only,
            chunk,
            shared,
        })
    }

    /// What the server announced in the handshake.
    pub fn export_info(&self) -> ExportInfo {
        self.shared.info
    }

    /// The server's URL.
    pub fn url(&self) -> &NbdUrl {
        &self.shared.url
    }

    /// How many times the store has reconnected since it was opened.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// `NBD_CMD_TRIM`: tell the server the range is no longer needed. Unlike
    /// [`unmap`](BackingStore::unmap), the range may read back as anything afterwards.
    /// [`StoreError::UNSUPPORTED`] unless the server advertises TRIM.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        if !self.shared.info.has(proto::TF_SEND_TRIM) {
            return Err(StoreError::UNSUPPORTED);
        }
        self.in_pieces(Cmd::Trim, offset, len)
    }

    /// TRIM or WRITE_ZEROES over a range, in requests of at most [`MAX_ZERO_LEN`] bytes.
    fn in_pieces(&self, cmd: Cmd, offset: u64, len: u64) -> Result<(), StoreError> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_ZERO_LEN);
            self.shared
                .transact(cmd, 0, offset + done, n as u32, &[], None)?;
            done += n;
        }
        Ok(())
    }

    fn flush_if_supported(&self) -> Result<(), StoreError> {
        if self.shared.info.has(proto::TF_SEND_FLUSH) {
            self.shared
                .transact(Cmd::Flush, 0, 0, 0, &[], None)
                .map(drop)
        } else {
            // The server does not cache writes (it did not ask for flushes).
            Ok(())
        }
    }
}

impl BackingStore for NbdStore {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn is_thin(&self) -> bool {
        self.shared.info.has(proto::TF_SEND_WRITE_ZEROES)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut at = offset;
        for piece in buf.chunks_mut(self.chunk) {
            let n = piece.len() as u32;
            self.shared
                .transact(Cmd::Read, 0, at, n, &[], Some(piece))?;
            at += u64::from(n);
        }
        Ok(buf.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        check_writable(self)?;
        check_range(offset, buf.len() as u64, self.size)?;
        let native_fua = fua && self.shared.info.has(proto::TF_SEND_FUA);
        let flags = if native_fua { proto::CMD_FLAG_FUA } else { 0 };
        let mut at = offset;
        for piece in buf.chunks(self.chunk) {
            let n = piece.len() as u32;
            self.shared
                .transact(Cmd::Write, flags, at, n, piece, None)?;
            at += u64::from(n);
        }
        if fua && !native_fua {
            self.flush_if_supported()?;
        }
        Ok(buf.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_if_supported()
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        if !self.shared.info.has(proto::TF_SEND_WRITE_ZEROES) {
            // Callers fall back to writing zeroes.
            return Err(StoreError::UNSUPPORTED);
        }
        self.in_pieces(Cmd::WriteZeroes, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        if self.shared.info.has(proto::TF_SEND_WRITE_ZEROES) {
            return self.in_pieces(Cmd::WriteZeroes, offset, len);
        }
        write_zeroes_by_writing(offset, len, |chunk, off| {
            self.write_at(chunk, off, false).map(drop)
        })
    }

    /// `NBD_CMD_BLOCK_STATUS` (one extent of `base:allocation`) when the connection has
    /// the context; otherwise, or if the server answers EOPNOTSUPP, the rest of the store
    /// is reported mapped.
    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        check_range(offset, 1, self.size)?;
        let rest = self.size - offset;
        let block = u64::from(self.block_size);
        // At most u32::MAX bytes per request, in whole blocks (the offset is one already).
        let len = rest.min(u64::from(u32::MAX) / block * block) as u32;
        match self.shared.transact(
            Cmd::BlockStatus,
            proto::CMD_FLAG_REQ_ONE,
            offset,
            len,
            &[],
            None,
        ) {
            Ok(Some((n, flags))) => Ok(extent_status(n, flags, block, rest)),
            Ok(None) => Err(StoreError::IO),
            Err(e) if e == StoreError::UNSUPPORTED => Ok(LbaStatus {
                mapped: true,
                len: rest,
            }),
            Err(e) => Err(e),
        }
    }
}

impl Drop for NbdStore {
    fn drop(&mut self) {
        let s = &self.shared;
        s.closed.store(true, Ordering::Release);
        let readers = {
            let mut w = lock(&s.writer);
            if let Some(stream) = w.stream.take() {
                if lock(&s.table).live_epoch == w.epoch {
                    let disc = Request {
                        flags: 0,
                        cmd: Cmd::Disc,
                        handle: 0,
                        offset: 0,
                        len: 0,
                    }
                    .encode();
                    let _ = (&stream).write_all(&disc);
                }
                stream.shutdown();
            }
            std::mem::take(&mut w.readers)
        };
        {
            let t = &mut lock(&s.table);
            let epoch = t.live_epoch;
            s.kill(t, epoch);
        }
        for h in readers {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;
