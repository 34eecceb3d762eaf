//! Tests against a small in-process NBD server on a unix socket: handshake variants,
//! out-of-order replies, structured replies (interleaved chunks, holes, errors, hostile
//! chunks), block status, error mapping, reconnect. (The integration test `tests/nbd.rs`
//! runs the same store against real qemu-nbd.)

use super::*;
use crate::error::ErrorKind;
use std::collections::HashSet;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// The `base:allocation` context id the fake server hands out.
const CTX: u32 = 7;

/// How the fake server negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hs {
    /// Structured replies, `base:allocation`, then NBD_OPT_GO with a block-size info.
    Go,
    /// NBD_OPT_GO, but structured replies and meta contexts are unknown (an older server).
    GoSimple,
    /// Structured replies, but no `base:allocation` context.
    GoNoContext,
    /// Answers SET_META_CONTEXT with an endless stream of contexts.
    Chatty,
    /// NBD_OPT_GO is unknown: the client must fall back to NBD_OPT_EXPORT_NAME.
    NoGo,
    /// The export does not exist.
    Unknown,
    /// Not an NBD server at all.
    Http,
}

struct Fake {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    data: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicU64>,
    discs: Arc<AtomicU64>,
    /// Options each connection received, in order.
    options: Arc<Mutex<Vec<u32>>>,
    thread: Option<JoinHandle<()>>,
}

const SIZE: usize = 1 << 20;
const FLAGS: u16 = proto::TF_HAS_FLAGS
    | proto::TF_SEND_FLUSH
    | proto::TF_SEND_FUA
    | proto::TF_SEND_TRIM
    | proto::TF_SEND_WRITE_ZEROES;

impl Fake {
    fn start(hs: Hs, max_payload: u32) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(vec![0u8; SIZE]));
        let conns = Arc::new(AtomicU64::new(0));
        let (st, d, c) = (stop.clone(), data.clone(), conns.clone());
        let fired = Arc::new(Mutex::new(HashSet::new()));
        let discs = Arc::new(AtomicU64::new(0));
        let disc_count = discs.clone();
        let options = Arc::new(Mutex::new(Vec::new()));
        let opts = options.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        c.fetch_add(1, Ordering::SeqCst);
                        let srv = Server {
                            hs,
                            max_payload,
                            data: d.clone(),
                            stop: st.clone(),
                            fired: fired.clone(),
                            discs: discs.clone(),
                            options: opts.clone(),
                        };
                        std::thread::spawn(move || serve(s, &srv));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fake {
            dir,
            stop,
            data,
            conns,
            discs: disc_count,
            options,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("nbd+unix:///exp?socket={}", self.sock().display())
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn opt_reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&proto::OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// What one connection of the fake server shares with the others.
struct Server {
    hs: Hs,
    max_payload: u32,
    data: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    /// Magic offsets whose misbehaviour already happened (each happens once).
    fired: Arc<Mutex<HashSet<usize>>>,
    discs: Arc<AtomicU64>,
    options: Arc<Mutex<Vec<u32>>>,
}

impl Server {
    /// True the first time only, per offset.
    fn once(&self, off: usize) -> bool {
        lock(&self.fired).insert(off)
    }
}

/// A structured reply chunk.
fn chunk(flags: u16, kind: u16, handle: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(handle);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An error chunk (`ERROR_OFFSET` when `offset` is given).
fn error_chunk(handle: &[u8], err: u32, msg: &[u8], offset: Option<u64>) -> Vec<u8> {
    let mut p = err.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg);
    let kind = match offset {
        Some(o) => {
            p.extend_from_slice(&o.to_be_bytes());
            proto::REPLY_TYPE_ERROR_BIT | 2
        }
        None => proto::REPLY_TYPE_ERROR_BIT | 1,
    };
    chunk(proto::REPLY_FLAG_DONE, kind, handle, &p)
}

/// A READ's structured reply: runs of zero 512-byte blocks as OFFSET_HOLE chunks, the
/// rest as OFFSET_DATA chunks of at most 1 KiB, in reverse order (the client must place
/// them by offset), then NONE with DONE.
fn structured_read(handle: &[u8], off: usize, d: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < d.len() {
        let zero = d[at..(at + 512).min(d.len())].iter().all(|&b| b == 0);
        let mut end = at;
        while end < d.len() && d[end..(end + 512).min(d.len())].iter().all(|&b| b == 0) == zero {
            end = (end + 512).min(d.len());
            if !zero && end - at >= 1024 {
                break;
            }
        }
        let abs = ((off + at) as u64).to_be_bytes();
        if zero {
            let mut p = abs.to_vec();
            p.extend_from_slice(&((end - at) as u32).to_be_bytes());
            chunks.push(chunk(0, proto::REPLY_TYPE_OFFSET_HOLE, handle, &p));
        } else {
            let mut p = abs.to_vec();
            p.extend_from_slice(&d[at..end]);
            chunks.push(chunk(0, proto::REPLY_TYPE_OFFSET_DATA, handle, &p));
        }
        at = end;
    }
    chunks.reverse();
    chunks.push(chunk(
        proto::REPLY_FLAG_DONE,
        proto::REPLY_TYPE_NONE,
        handle,
        &[],
    ));
    chunks
}

/// The `base:allocation` extent at `off` (at most `len` bytes): a run of 512-byte blocks
/// that are all zero (HOLE|ZERO) or all not.
fn extent_at(d: &[u8], off: usize, len: usize) -> (u32, u32) {
    let zero = |at: usize| d[at..at + 512].iter().all(|&b| b == 0);
    let first = zero(off);
    let mut end = off + 512;
    while end < off + len && end < d.len() && zero(end) == first {
        end += 512;
    }
    let flags = if first {
        proto::STATE_HOLE | proto::STATE_ZERO
    } else {
        0
    };
    ((end - off) as u32, flags)
}

/// One connection of the fake server. Magic offsets inject errors: a READ at 0x80000
/// fails with EIO (an ERROR_OFFSET chunk when structured), a WRITE at 0x81000 with ENOSPC,
/// a WRITE at 0x82000 with EPERM, a READ at 0x83000 makes the server drop the connection
/// and one at 0x84000 is never answered. Structured READs at 0x85000..0x8a000 get hostile
/// replies (see `hostile`), BLOCK_STATUS at 0xf0000 an empty extent and at 0xf1000 another
/// context's. Each misbehaviour but 0x80000, 0x88000 and the block-status ones happens
/// once. Replies are sent in a different order than requests arrive, the chunks of
/// consecutive structured replies interleaved.
fn serve(mut s: UnixStream, srv: &Server) {
    let hs = srv.hs;
    if hs == Hs::Http {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        return;
    }
    let mut hello = Vec::new();
    hello.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    let no_zeroes = hs != Hs::NoGo;
    let hflags = proto::FLAG_FIXED_NEWSTYLE | if no_zeroes { proto::FLAG_NO_ZEROES } else { 0 };
    hello.extend_from_slice(&hflags.to_be_bytes());
    s.write_all(&hello).unwrap();
    let mut cf = [0u8; 4];
    if s.read_exact(&mut cf).is_err() {
        return;
    }
    let mut structured = false;
    loop {
        let mut h = [0u8; 16];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        assert_eq!(&h[..8], b"IHAVEOPT");
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).unwrap();
        lock(&srv.options).push(opt);
        match (opt, hs) {
            (proto::OPT_STRUCTURED_REPLY, Hs::Go | Hs::GoNoContext | Hs::Chatty) => {
                assert!(d.is_empty());
                structured = true;
                opt_reply(&mut s, opt, proto::REP_ACK, &[]);
            }
            (proto::OPT_SET_META_CONTEXT, Hs::Chatty) => {
                let mut ctx = CTX.to_be_bytes().to_vec();
                ctx.extend_from_slice(b"base:allocation");
                for _ in 0..300 {
                    let mut b = Vec::new();
                    b.extend_from_slice(&proto::OPT_REPLY_MAGIC.to_be_bytes());
                    b.extend_from_slice(&opt.to_be_bytes());
                    b.extend_from_slice(&proto::REP_META_CONTEXT.to_be_bytes());
                    b.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
                    b.extend_from_slice(&ctx);
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                return;
            }
            (proto::OPT_SET_META_CONTEXT, Hs::Go | Hs::GoNoContext) => {
                assert!(structured, "SET_META_CONTEXT before STRUCTURED_REPLY");
                assert_eq!(
                    d,
                    [
                        b"\0\0\0\x03exp\0\0\0\x01\0\0\0\x0f".as_slice(),
                        b"base:allocation"
                    ]
                    .concat()
                );
                if hs == Hs::Go {
                    // Something unrelated first: the client must pick its context by name.
                    let mut other = 99u32.to_be_bytes().to_vec();
                    other.extend_from_slice(b"qemu:dirty-bitmap:x");
                    opt_reply(&mut s, opt, proto::REP_META_CONTEXT, &other);
                    let mut ctx = CTX.to_be_bytes().to_vec();
                    ctx.extend_from_slice(b"base:allocation");
                    opt_reply(&mut s, opt, proto::REP_META_CONTEXT, &ctx);
                }
                opt_reply(&mut s, opt, proto::REP_ACK, &[]);
            }
            (proto::OPT_STRUCTURED_REPLY | proto::OPT_SET_META_CONTEXT, _) => {
                opt_reply(&mut s, opt, proto::REP_ERR_UNSUP, b"unknown option")
            }
            (proto::OPT_GO, Hs::Go | Hs::GoSimple | Hs::GoNoContext) => {
                assert_eq!(&d[..7], b"\0\0\0\x03exp");
                let mut info = vec![0, 3];
                info.extend_from_slice(&512u32.to_be_bytes());
                info.extend_from_slice(&4096u32.to_be_bytes());
                info.extend_from_slice(&srv.max_payload.to_be_bytes());
                opt_reply(&mut s, opt, proto::REP_INFO, &info);
                let mut info = vec![0, 0];
                info.extend_from_slice(&(SIZE as u64).to_be_bytes());
                info.extend_from_slice(&FLAGS.to_be_bytes());
                opt_reply(&mut s, opt, proto::REP_INFO, &info);
                opt_reply(&mut s, opt, proto::REP_ACK, &[]);
                break;
            }
            (proto::OPT_GO, Hs::Unknown) => {
                opt_reply(
                    &mut s,
                    opt,
                    proto::REP_FLAG_ERROR | 6,
                    b"no such export\nreally",
                );
            }
            (proto::OPT_GO, _) => opt_reply(&mut s, opt, proto::REP_ERR_UNSUP, &[]),
            (proto::OPT_ABORT, _) => return,
            (proto::OPT_EXPORT_NAME, _) => {
                assert_eq!(d, b"exp");
                let mut b = Vec::new();
                b.extend_from_slice(&(SIZE as u64).to_be_bytes());
                // No FUA, no WRITE_ZEROES on this path: exercises the fallbacks.
                b.extend_from_slice(&(proto::TF_HAS_FLAGS | proto::TF_SEND_FLUSH).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&b).unwrap();
                break;
            }
            other => panic!("unexpected option {}", other.0),
        }
    }
    // Transmission: apply each request at once, send its reply later (a pending reply is
    // sent after the next request arrives, or after a short pause).
    let out = Arc::new(Mutex::new(s.try_clone().unwrap()));
    let mut held: Option<Vec<Vec<u8>>> = None;
    s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    loop {
        if srv.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut h = [0u8; 28];
        match read_full_or_timeout(&mut s, &mut h) {
            Ok(true) => {}
            Ok(false) => {
                if let Some(r) = held.take() {
                    let _ = lock(&out).write_all(&r.concat());
                }
                continue;
            }
            Err(_) => return,
        }
        s.set_read_timeout(None).unwrap();
        assert_eq!(&h[..4], &proto::REQUEST_MAGIC.to_be_bytes());
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let cmd = u16::from_be_bytes([h[6], h[7]]);
        let handle = &h[8..16];
        let off = u64::from_be_bytes(h[16..24].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(h[24..28].try_into().unwrap()) as usize;
        assert!(
            len as u32 <= srv.max_payload || matches!(cmd, 4 | 6 | 7),
            "len {len}"
        );
        // Chunks of a structured reply, or None for a simple one.
        let mut chunks: Option<Vec<Vec<u8>>> = None;
        let mut err = 0u32;
        let mut payload = Vec::new();
        match cmd {
            0 => {
                if off == 0x84000 && srv.once(off) {
                    // Never answered: the client must time out and resend elsewhere.
                    s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
                    continue;
                }
                if off == 0x83000 && srv.once(off) {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
                if structured {
                    if let Some(c) = hostile(srv, handle, off, len) {
                        chunks = Some(c);
                    } else if off == 0x80000 {
                        chunks = Some(vec![error_chunk(
                            handle,
                            5,
                            b"bad sector",
                            Some(off as u64 + 512),
                        )]);
                    } else {
                        let d = lock(&srv.data)[off..off + len].to_vec();
                        chunks = Some(structured_read(handle, off, &d));
                    }
                } else if off == 0x80000 {
                    err = 5;
                } else {
                    payload = lock(&srv.data)[off..off + len].to_vec();
                }
            }
            1 => {
                let mut w = vec![0u8; len];
                s.read_exact(&mut w).unwrap();
                assert_eq!(flags & !proto::CMD_FLAG_FUA, 0);
                match off {
                    0x81000 => err = 28,
                    0x82000 => err = 1,
                    _ => lock(&srv.data)[off..off + len].copy_from_slice(&w),
                }
            }
            2 => {
                srv.discs.fetch_add(1, Ordering::SeqCst);
                return;
            }
            3 => assert_eq!((off, len), (0, 0)),
            4 | 6 => lock(&srv.data)[off..off + len].fill(0),
            7 => {
                assert_eq!(hs, Hs::Go, "BLOCK_STATUS without base:allocation");
                assert_eq!(flags, proto::CMD_FLAG_REQ_ONE);
                assert!(off + len <= SIZE && len > 0, "{off} {len}");
                let (n, st) = match off {
                    0xf0000 => (0, 0),
                    _ => extent_at(&lock(&srv.data), off, len),
                };
                let ctx = if off == 0xf1000 { CTX + 1 } else { CTX };
                let mut p = ctx.to_be_bytes().to_vec();
                p.extend_from_slice(&n.to_be_bytes());
                p.extend_from_slice(&st.to_be_bytes());
                // A second extent the client must skip (REQ_ONE allows only one, but
                // the client must not care).
                p.extend_from_slice(&512u32.to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                chunks = Some(vec![chunk(
                    proto::REPLY_FLAG_DONE,
                    proto::REPLY_TYPE_BLOCK_STATUS,
                    handle,
                    &p,
                )]);
            }
            _ => err = 22,
        }
        let reply = chunks.unwrap_or_else(|| {
            let mut r = Vec::new();
            r.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
            r.extend_from_slice(&err.to_be_bytes());
            r.extend_from_slice(handle);
            r.extend_from_slice(&payload);
            vec![r]
        });
        // Swap the order of consecutive replies, interleaving their chunks.
        match held.take() {
            Some(prev) => {
                let mut o = lock(&out);
                for i in 0..reply.len().max(prev.len()) {
                    for c in [reply.get(i), prev.get(i)].into_iter().flatten() {
                        o.write_all(c).unwrap();
                    }
                }
            }
            None => held = Some(reply),
        }
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    }
}

/// Hostile structured replies to READs (the client must neither panic nor allocate by
/// the server's lengths): 0x85000 a data chunk before the request's offset, 0x86000 a
/// BLOCK_STATUS chunk, 0x87000 a data chunk claiming 4 GiB (then the connection hangs up),
/// 0x89000 an error chunk whose message is longer than the chunk, 0x8a000 an unknown
/// non-error chunk type (each once: the client reconnects and resends); 0x88000 data for
/// only half the request, then DONE (always: that request fails, the connection lives).
fn hostile(srv: &Server, handle: &[u8], off: usize, len: usize) -> Option<Vec<Vec<u8>>> {
    let done = || chunk(proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_NONE, handle, &[]);
    let data = |at: usize, n: usize| {
        let mut p = (at as u64).to_be_bytes().to_vec();
        p.extend_from_slice(&vec![0xee; n]);
        chunk(0, proto::REPLY_TYPE_OFFSET_DATA, handle, &p)
    };
    match off {
        0x88000 => Some(vec![data(off, len / 2), done()]),
        0x85000..=0x8a000 if off % 0x1000 == 0 && srv.once(off) => Some(match off {
            0x85000 => vec![data(off - 512, len), done()],
            0x86000 => vec![chunk(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_BLOCK_STATUS,
                handle,
                &[0; 12],
            )],
            0x87000 => {
                let mut c = chunk(0, proto::REPLY_TYPE_OFFSET_DATA, handle, &[]);
                let n = c.len();
                c[n - 4..].copy_from_slice(&0xffff_fff8u32.to_be_bytes());
                c.extend_from_slice(&(off as u64).to_be_bytes());
                vec![c]
            }
            0x89000 => {
                let mut p = 5u32.to_be_bytes().to_vec();
                p.extend_from_slice(&100u16.to_be_bytes());
                p.extend_from_slice(b"short");
                vec![chunk(
                    proto::REPLY_FLAG_DONE,
                    proto::REPLY_TYPE_ERROR_BIT | 1,
                    handle,
                    &p,
                )]
            }
            _ => vec![chunk(proto::REPLY_FLAG_DONE, 42, handle, &[1, 2, 3])],
        }),
        _ => None,
    }
}

/// `Ok(false)` when nothing arrived before the read timeout.
fn read_full_or_timeout(s: &mut UnixStream, b: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < b.len() {
        match s.read(&mut b[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e)
                if got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Ok(false);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn quick() -> NbdOptions {
    NbdOptions {
        reconnect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..NbdOptions::default()
    }
}

#[test]
fn go_handshake_geometry_and_round_trip() {
    let f = Fake::start(Hs::Go, 8192);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    assert_eq!(s.size(), SIZE as u64);
    assert_eq!(s.block_size(), 512);
    assert!(!s.is_read_only() && s.is_thin());
    let i = s.export_info();
    assert_eq!(
        (i.flags, i.min_block, i.max_payload, i.legacy_export_name),
        (FLAGS, 512, 8192, false)
    );
    // 20 KiB crosses the 8 KiB payload limit: three requests each way.
    let pattern: Vec<u8> = (0..20480u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(s.write_at(&pattern, 4096, true), Ok(20480));
    let mut back = vec![0u8; 20480];
    assert_eq!(s.read_at(&mut back, 4096), Ok(20480));
    assert_eq!(back, pattern);
    assert_eq!(&lock(&f.data)[4096..4096 + 20480], &pattern[..]);
    assert_eq!(s.flush(), Ok(()));
    s.unmap(4096, 4096).unwrap();
    s.write_zeroes(8192, 512).unwrap();
    s.read_at(&mut back[..8192], 4096).unwrap();
    assert!(back[..4608].iter().all(|&b| b == 0));
    assert_eq!(&back[4608..8192], &pattern[4608..8192]);
    s.trim(0, 512).unwrap();
    assert_eq!(
        s.read_at(&mut back[..512], SIZE as u64),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(s.reconnects(), 0);
    // Dropping the store says goodbye with NBD_CMD_DISC.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.discs.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no NBD_CMD_DISC");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(f.discs.load(Ordering::SeqCst), 1);
}

#[test]
fn export_name_fallback_without_fua_or_zeroes() {
    let f = Fake::start(Hs::NoGo, MAX_PAYLOAD);
    let s = NbdStore::open(
        &f.url(),
        &NbdOptions {
            block_size: 4096,
            ..quick()
        },
    )
    .unwrap();
    assert!(s.export_info().legacy_export_name);
    assert_eq!((s.size(), s.block_size()), (SIZE as u64, 4096));
    assert!(!s.is_thin());
    // FUA without server support: write + FLUSH.
    assert_eq!(s.write_at(&[9u8; 4096], 0, true), Ok(4096));
    // No WRITE_ZEROES: unmap is unsupported, write_zeroes writes zero buffers.
    assert_eq!(s.unmap(0, 4096), Err(StoreError::UNSUPPORTED));
    assert_eq!(s.trim(0, 4096), Err(StoreError::UNSUPPORTED));
    s.write_zeroes(0, 4096).unwrap();
    assert!(lock(&f.data)[..4096].iter().all(|&b| b == 0));
}

#[test]
fn open_errors_are_one_line() {
    let f = Fake::start(Hs::Unknown, MAX_PAYLOAD);
    let e = NbdStore::open(&f.url(), &quick()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.ends_with("export \"exp\": unknown export (no such export really)"),
        "{msg}"
    );
    let f = Fake::start(Hs::Http, MAX_PAYLOAD);
    let e = NbdStore::open(&f.url(), &quick()).unwrap_err();
    assert!(
        e.to_string().ends_with("not an NBD server (no NBDMAGIC)"),
        "{e}"
    );
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let e = NbdStore::open(
        &f.url(),
        &NbdOptions {
            expect_size: Some(2 << 20),
            ..quick()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the export is 1048576 bytes but the configured size is 2097152"),
        "{e}"
    );
    // A server that never stops answering one option is not followed forever.
    let f = Fake::start(Hs::Chatty, MAX_PAYLOAD);
    let e = NbdStore::open(&f.url(), &quick()).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("more than 256 replies to option 10"),
        "{e}"
    );
    let e = NbdStore::open("nbd+unix:///x?socket=/nonexistent/nbd.sock", &quick()).unwrap_err();
    assert!(matches!(e.kind, OpenErrorKind::Remote(_)), "{e}");
    let e = NbdStore::open("file.img", &quick()).unwrap_err();
    assert!(
        e.to_string().starts_with("file.img: is not an NBD URL"),
        "{e}"
    );
    let e = NbdStore::open(
        &f.url(),
        &NbdOptions {
            block_size: 1000,
            ..quick()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, OpenErrorKind::BadBlockSize(1000));
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn server_errors_map_to_kinds() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    let mut b = [0u8; 512];
    let e = s.read_at(&mut b, 0x80000).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (ErrorKind::Io, libc::EIO));
    let e = s.write_at(&b, 0x81000, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    let e = s.write_at(&b, 0x82000, false).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (ErrorKind::ReadOnly, libc::EPERM));
    // The connection survives errors.
    assert_eq!(s.read_at(&mut b, 0), Ok(512));
    let ro = NbdStore::open(
        &f.url(),
        &NbdOptions {
            read_only: true,
            ..quick()
        },
    )
    .unwrap();
    assert_eq!(ro.write_at(&b, 0, false), Err(StoreError::READ_ONLY));
    assert_eq!(ro.write_zeroes(0, 512), Err(StoreError::READ_ONLY));
}

#[test]
fn pipelined_out_of_order_from_many_threads() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = Arc::new(NbdStore::open(&f.url(), &quick()).unwrap());
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..40u64 {
                    let off = (u64::from(t) * 40 + i) * 1024;
                    let data = [t.wrapping_mul(31).wrapping_add(i as u8); 1024];
                    s.write_at(&data, off, i % 5 == 0).unwrap();
                    let mut back = [0u8; 1024];
                    s.read_at(&mut back, off).unwrap();
                    assert_eq!(back, data, "thread {t} block {i}");
                }
            });
        }
    });
    assert!(lock(&s.shared.table).slots.is_empty());
    assert!(lock(&s.shared.free).len() <= FREE_BUFFERS);
}

#[test]
fn reconnects_and_resends_after_a_drop() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    s.write_at(&[0x5a; 4096], 0x83000, false).unwrap();
    // The server drops the connection on this read; the client reconnects and resends.
    let mut b = [0u8; 4096];
    assert_eq!(s.read_at(&mut b, 0x83000), Ok(4096));
    assert_eq!(b, [0x5a; 4096]);
    assert_eq!(s.reconnects(), 1);
    assert_eq!(f.conns.load(Ordering::SeqCst), 2);
}

#[test]
fn an_unanswered_request_is_sent_again_on_a_new_connection() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let opts = NbdOptions {
        request_timeout: Duration::from_millis(300),
        ..quick()
    };
    let s = NbdStore::open(&f.url(), &opts).unwrap();
    s.write_at(&[0x6b; 512], 0x84000, false).unwrap();
    let start = Instant::now();
    let mut b = [0u8; 512];
    assert_eq!(s.read_at(&mut b, 0x84000), Ok(512));
    assert_eq!(b, [0x6b; 512]);
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!((s.reconnects(), f.conns.load(Ordering::SeqCst)), (1, 2));
}

#[test]
fn gives_up_when_the_server_stays_away() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let opts = NbdOptions {
        reconnect_timeout: Duration::from_millis(300),
        ..quick()
    };
    let s = NbdStore::open(&f.url(), &opts).unwrap();
    let sock = f.sock();
    drop(f);
    std::fs::remove_file(&sock).ok();
    // Kill the live connection from our side, as a dead server would.
    {
        let t = &mut lock(&s.shared.table);
        let epoch = t.live_epoch;
        s.shared.kill(t, epoch);
    }
    let start = Instant::now();
    let e = s.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.errno(), libc::ENOTCONN);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Past the window, each request tries once and fails fast.
    let start = Instant::now();
    assert!(s.flush().is_err());
    assert!(start.elapsed() < Duration::from_millis(300));
}

/// Writes `n` bytes of a non-zero pattern at `off` straight into the fake's data.
fn fill(f: &Fake, off: usize, n: usize, seed: u8) -> Vec<u8> {
    let p: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect();
    lock(&f.data)[off..off + n].copy_from_slice(&p);
    p
}

#[test]
fn structured_reads_assemble_interleaved_chunks_and_holes() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = Arc::new(NbdStore::open(&f.url(), &quick()).unwrap());
    let i = s.export_info();
    assert_eq!((i.structured_replies, i.base_allocation), (true, Some(CTX)));
    assert_eq!(
        *lock(&f.options),
        [
            proto::OPT_STRUCTURED_REPLY,
            proto::OPT_SET_META_CONTEXT,
            proto::OPT_GO
        ]
    );
    // Data, a 1536-byte hole, data: the server answers with data chunks of at most 1 KiB
    // and a hole chunk, in reverse order.
    let a = fill(&f, 0x10000, 2560, 3);
    let b = fill(&f, 0x10000 + 4096, 4096, 9);
    let mut back = vec![0xffu8; 8192];
    assert_eq!(s.read_at(&mut back, 0x10000), Ok(8192));
    assert_eq!(&back[..2560], &a[..]);
    assert!(back[2560..4096].iter().all(|&x| x == 0));
    assert_eq!(&back[4096..], &b[..]);
    // Many readers at once: the chunks of consecutive replies arrive interleaved.
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let s = s.clone();
            let want = fill(&f, 0x20000 + t * 0x4000, 3000, t as u8);
            scope.spawn(move || {
                for _ in 0..20 {
                    let mut got = vec![0xffu8; 0x4000];
                    s.read_at(&mut got, (0x20000 + t * 0x4000) as u64).unwrap();
                    assert_eq!(&got[..3000], &want[..]);
                    assert!(got[3072..].iter().all(|&x| x == 0));
                }
            });
        }
    });
    // An error chunk (ERROR_OFFSET with a message) fails only its request.
    let e = s.read_at(&mut back[..512], 0x80000).unwrap_err();
    assert_eq!((e.kind(), e.errno()), (ErrorKind::Io, libc::EIO));
    assert_eq!(s.read_at(&mut back[..512], 0x10000), Ok(512));
    assert_eq!(s.reconnects(), 0);
    assert!(lock(&s.shared.table).slots.is_empty());
}

#[test]
fn block_status_maps_holes_to_unmapped() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    let st = |mapped, len| LbaStatus { mapped, len };
    // All zero: one deallocated extent to the end.
    assert_eq!(s.lba_status(0), Ok(st(false, SIZE as u64)));
    fill(&f, 8192, 4096, 1);
    assert_eq!(s.lba_status(0), Ok(st(false, 8192)));
    assert_eq!(s.lba_status(8192), Ok(st(true, 4096)));
    assert_eq!(s.lba_status(8704), Ok(st(true, 3584)));
    assert_eq!(s.lba_status(12288), Ok(st(false, SIZE as u64 - 12288)));
    assert_eq!(
        s.lba_status(SIZE as u64 - 512),
        Ok(st(false, 512)),
        "the last block"
    );
    assert_eq!(s.lba_status(SIZE as u64), Err(StoreError::OUT_OF_RANGE));
    // The server's extents are 512 bytes; a 4096-byte LUN rounds: a hole shorter than a
    // block leaves the block mapped, data rounds up to whole blocks.
    let big = NbdStore::open(
        &f.url(),
        &NbdOptions {
            block_size: 4096,
            ..quick()
        },
    )
    .unwrap();
    fill(&f, 0x30000 + 512, 512, 2);
    assert_eq!(big.lba_status(0x30000), Ok(st(true, 4096)));
    assert_eq!(
        big.lba_status(0x31000),
        Ok(st(false, SIZE as u64 - 0x31000))
    );
    fill(&f, 0x40000, 1000, 2);
    assert_eq!(big.lba_status(0x40000), Ok(st(true, 4096)));
    // Unusable answers fail the request, not the connection: an empty extent, an
    // extent of a context that was not asked for.
    assert_eq!(s.lba_status(0xf0000), Err(StoreError::IO));
    assert_eq!(s.lba_status(0xf1000), Err(StoreError::IO));
    assert_eq!(s.lba_status(0), Ok(st(false, 8192)));
    assert_eq!(s.reconnects(), 0);
    // Unmap through WRITE_ZEROES shows up as a hole again (up to the data at 0x30200).
    s.unmap(8192, 4096).unwrap();
    assert_eq!(s.lba_status(0), Ok(st(false, 0x30200)));
}

#[test]
fn servers_without_block_status_report_everything_mapped() {
    let all = LbaStatus {
        mapped: true,
        len: SIZE as u64 - 4096,
    };
    // An older server: structured replies and meta contexts are unknown options.
    let f = Fake::start(Hs::GoSimple, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    let i = s.export_info();
    assert_eq!((i.structured_replies, i.base_allocation), (false, None));
    assert_eq!(
        *lock(&f.options),
        [proto::OPT_STRUCTURED_REPLY, proto::OPT_GO]
    );
    let p = fill(&f, 4096, 2048, 5);
    let mut back = vec![0u8; 4096];
    assert_eq!(s.read_at(&mut back, 4096), Ok(4096));
    assert_eq!(&back[..2048], &p[..]);
    assert_eq!(s.lba_status(4096), Ok(all));
    // Structured replies but no base:allocation.
    let f = Fake::start(Hs::GoNoContext, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    let i = s.export_info();
    assert_eq!((i.structured_replies, i.base_allocation), (true, None));
    let p = fill(&f, 4096, 2048, 6);
    assert_eq!(s.read_at(&mut back, 4096), Ok(4096));
    assert_eq!(&back[..2048], &p[..]);
    assert!(back[2048..].iter().all(|&x| x == 0));
    assert_eq!(s.lba_status(4096), Ok(all));
    // Turned off: nothing is asked, simple replies only.
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = NbdStore::open(
        &f.url(),
        &NbdOptions {
            block_status: false,
            ..quick()
        },
    )
    .unwrap();
    assert_eq!(*lock(&f.options), [proto::OPT_GO]);
    assert!(!s.export_info().structured_replies);
    assert_eq!(s.lba_status(4096), Ok(all));
    // Without fixed newstyle GO: STRUCTURED_REPLY refused, then EXPORT_NAME.
    let f = Fake::start(Hs::NoGo, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    assert_eq!(
        *lock(&f.options),
        [
            proto::OPT_STRUCTURED_REPLY,
            proto::OPT_GO,
            proto::OPT_EXPORT_NAME
        ]
    );
    assert_eq!(s.lba_status(4096), Ok(all));
}

#[test]
fn hostile_structured_replies_cost_a_reconnect_not_a_panic() {
    let f = Fake::start(Hs::Go, MAX_PAYLOAD);
    let s = NbdStore::open(&f.url(), &quick()).unwrap();
    let mut reconnects = 0;
    // Each of these breaks the connection once; the resend on the next one succeeds.
    for off in [0x85000usize, 0x86000, 0x87000, 0x89000, 0x8a000] {
        let want = fill(&f, off, 4096, off as u8 >> 4);
        let mut back = vec![0u8; 4096];
        assert_eq!(s.read_at(&mut back, off as u64), Ok(4096), "{off:#x}");
        assert_eq!(back, want, "{off:#x}");
        reconnects += 1;
        assert_eq!(s.reconnects(), reconnects, "{off:#x}");
    }
    assert_eq!(f.conns.load(Ordering::SeqCst), 6);
    // Half the READ, then DONE: that request fails; the connection stays.
    let mut back = vec![0u8; 4096];
    assert_eq!(s.read_at(&mut back, 0x88000), Err(StoreError::IO));
    assert_eq!(s.reconnects(), reconnects);
    // Block status still works on the latest connection (negotiated afresh).
    fill(&f, 0, 512, 1);
    assert_eq!(
        s.lba_status(0),
        Ok(LbaStatus {
            mapped: true,
            len: 512
        })
    );
    assert!(lock(&s.shared.table).slots.is_empty());
    assert!(lock(&s.shared.free).len() <= FREE_BUFFERS);
}

#[test]
fn extent_status_rounds_to_blocks() {
    let hz = proto::STATE_HOLE | proto::STATE_ZERO;
    let st = |mapped, len| LbaStatus { mapped, len };
    assert_eq!(extent_status(8192, hz, 512, 1 << 20), st(false, 8192));
    // Clamped at the end of the store.
    assert_eq!(extent_status(8192, hz, 512, 4096), st(false, 4096));
    assert_eq!(extent_status(8192, 0, 4096, 4096), st(true, 4096));
    // A hole that does not read as zeroes, or zeroes that are allocated: mapped.
    assert_eq!(
        extent_status(8192, proto::STATE_HOLE, 512, 1 << 20),
        st(true, 8192)
    );
    assert_eq!(
        extent_status(8192, proto::STATE_ZERO, 512, 1 << 20),
        st(true, 8192)
    );
    // Partial blocks: holes round down (none left: the block is mapped), data rounds up.
    assert_eq!(extent_status(6144, hz, 4096, 1 << 20), st(false, 4096));
    assert_eq!(extent_status(512, hz, 4096, 1 << 20), st(true, 4096));
    assert_eq!(extent_status(4097, 0, 4096, 1 << 20), st(true, 8192));
    assert_eq!(
        extent_status(u32::MAX, 0, 4096, u64::MAX),
        st(true, 1 << 32)
    );
    // Unknown flag bits are ignored.
    assert_eq!(extent_status(512, hz | 0xf0, 512, 1 << 20), st(false, 512));
}
