//! Tests against a small in-process NBD server on a unix socket: handshake variants,
//! out-of-order replies, error mapping, reconnect. (The integration test
//! `tests/nbd.rs` runs the same store against real qemu-nbd.)

use super::*;
use crate::error::ErrorKind;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// How the fake server negotiates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hs {
    /// NBD_OPT_GO with a block-size info.
    Go,
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
        let dropped = Arc::new(AtomicBool::new(false));
        let discs = Arc::new(AtomicU64::new(0));
        let disc_count = discs.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        c.fetch_add(1, Ordering::SeqCst);
                        let (d, st, dr, dc) =
                            (d.clone(), st.clone(), dropped.clone(), discs.clone());
                        std::thread::spawn(move || serve(s, hs, max_payload, &d, &st, &dr, &dc));
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

/// One connection of the fake server. Magic offsets inject errors: a READ at 0x80000
/// fails with EIO, a WRITE at 0x81000 with ENOSPC, a WRITE at 0x82000 with EPERM, a READ at
/// 0x83000 makes the server drop the connection and one at 0x84000 is never answered
/// (the first of either only). Replies are sent in
/// a different order than requests arrive.
fn serve(
    mut s: UnixStream,
    hs: Hs,
    max_payload: u32,
    data: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
    dropped: &AtomicBool,
    discs: &AtomicU64,
) {
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
        match (opt, hs) {
            (proto::OPT_GO, Hs::Go) => {
                assert_eq!(&d[..7], b"\0\0\0\x03exp");
                let mut info = vec![0, 3];
                info.extend_from_slice(&512u32.to_be_bytes());
                info.extend_from_slice(&4096u32.to_be_bytes());
                info.extend_from_slice(&max_payload.to_be_bytes());
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
    let mut held: Option<Vec<u8>> = None;
    s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut h = [0u8; 28];
        match read_full_or_timeout(&mut s, &mut h) {
            Ok(true) => {}
            Ok(false) => {
                if let Some(r) = held.take() {
                    let _ = lock(&out).write_all(&r);
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
            len as u32 <= max_payload || cmd == 6 || cmd == 4,
            "len {len}"
        );
        let mut reply = Vec::new();
        let mut err = 0u32;
        let mut payload = Vec::new();
        match cmd {
            0 => {
                if off == 0x84000 && !dropped.swap(true, Ordering::SeqCst) {
                    // Never answered: the client must time out and resend elsewhere.
                    s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
                    continue;
                }
                if off == 0x83000 && !dropped.swap(true, Ordering::SeqCst) {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
                if off == 0x80000 {
                    err = 5;
                } else {
                    payload = lock(data)[off..off + len].to_vec();
                }
            }
            1 => {
                let mut w = vec![0u8; len];
                s.read_exact(&mut w).unwrap();
                assert_eq!(flags & !proto::CMD_FLAG_FUA, 0);
                match off {
                    0x81000 => err = 28,
                    0x82000 => err = 1,
                    _ => lock(data)[off..off + len].copy_from_slice(&w),
                }
            }
            2 => {
                discs.fetch_add(1, Ordering::SeqCst);
                return;
            }
            3 => assert_eq!((off, len), (0, 0)),
            4 | 6 => lock(data)[off..off + len].fill(0),
            _ => err = 22,
        }
        reply.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
        reply.extend_from_slice(&err.to_be_bytes());
        reply.extend_from_slice(handle);
        reply.extend_from_slice(&payload);
        // Swap the order of consecutive replies.
        match held.take() {
            Some(prev) => {
                let mut o = lock(&out);
                o.write_all(&reply).unwrap();
                o.write_all(&prev).unwrap();
            }
            None => held = Some(reply),
        }
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
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
