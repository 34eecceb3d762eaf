//! `NbdStore` against a real `qemu-nbd` started by the tests (Debian `qemu-utils`).
//!
//! Every test skips with a message when `qemu-nbd` is not installed; CI installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backstore::{
    BackingStore, BsType, EngineTuning, ErrorKind, LbaStatus, NbdOptions, NbdStore, Notify,
    OpenOptions, Request, StoreError, lun::LunStore,
};

const SIZE: u64 = 64 << 20;

fn have_qemu_nbd() -> bool {
    let ok = Command::new("qemu-nbd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: qemu-nbd is not installed (apt-get install qemu-utils)");
    }
    ok
}

#[derive(Clone)]
enum Listen {
    Tcp(u16),
    Unix(PathBuf),
}

/// A qemu-nbd process serving `file` as export `exp`; killed on drop.
struct Server {
    child: Child,
    listen: Listen,
    file: PathBuf,
    read_only: bool,
}

impl Server {
    fn start(file: &Path, listen: Listen, read_only: bool) -> Server {
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "raw", "-x", "exp", "--persistent", "-e", "16"])
            .args(["--discard=unmap", "--cache=writeback"]);
        match &listen {
            Listen::Tcp(port) => {
                cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
            }
            Listen::Unix(p) => {
                cmd.arg("-k").arg(p);
            }
        }
        if read_only {
            cmd.arg("-r");
        }
        let child = cmd
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        let s = Server {
            child,
            listen,
            file: file.to_path_buf(),
            read_only,
        };
        s.wait_ready();
        s
    }

    fn url(&self) -> String {
        match &self.listen {
            Listen::Tcp(port) => format!("nbd://127.0.0.1:{port}/exp"),
            Listen::Unix(p) => format!("nbd+unix:///exp?socket={}", p.display()),
        }
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        let opts = NbdOptions {
            connect_timeout: Duration::from_secs(1),
            ..NbdOptions::default()
        };
        loop {
            if NbdStore::open(&self.url(), &opts).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "qemu-nbd did not come up on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        if let Listen::Unix(p) = &self.listen {
            let _ = std::fs::remove_file(p);
        }
        *self = Server::start(&self.file.clone(), self.listen.clone(), self.read_only);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

use backstore::testing::free_port;

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(SIZE).unwrap();
    p
}

fn opts() -> NbdOptions {
    NbdOptions {
        reconnect_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        ..NbdOptions::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn file_bytes(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let all = std::fs::read(p).unwrap();
    all[off as usize..off as usize + len].to_vec()
}

#[test]
fn tcp_geometry_io_flush_unmap_zeroes() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    let srv = Server::start(&file, Listen::Tcp(free_port()), false);
    let s = NbdStore::open(&srv.url(), &opts()).unwrap();
    assert_eq!(s.size(), SIZE);
    assert_eq!(s.block_size(), 512);
    assert!(!s.is_read_only());
    assert!(s.is_thin(), "qemu-nbd advertises WRITE_ZEROES");
    assert!(
        !s.export_info().legacy_export_name,
        "qemu-nbd knows NBD_OPT_GO"
    );

    // Round trip, plain and FUA, and 40 MiB each way (split at qemu-nbd's 32 MiB maximum
    // payload).
    let a = pattern(1, 64 << 10);
    assert_eq!(s.write_at(&a, 1 << 20, false), Ok(a.len()));
    let b = pattern(2, 4096);
    assert_eq!(s.write_at(&b, 3 << 20, true), Ok(4096));
    assert_eq!(s.flush(), Ok(()));
    let mut back = vec![0u8; a.len()];
    assert_eq!(s.read_at(&mut back, 1 << 20), Ok(a.len()));
    assert_eq!(back, a);
    assert_eq!(file_bytes(&file, 1 << 20, a.len()), a);
    assert_eq!(file_bytes(&file, 3 << 20, 4096), b);
    assert_eq!(s.export_info().max_payload, 32 << 20);
    let big = pattern(3, 40 << 20);
    s.write_at(&big, 4 << 20, false).unwrap();
    let mut back = vec![0u8; big.len()];
    s.read_at(&mut back, 4 << 20).unwrap();
    assert!(back == big, "40 MiB round trip");

    // UNMAP and WRITE ZEROES read back as zeroes; their neighbours are untouched.
    s.unmap((1 << 20) + 4096, 8192).unwrap();
    s.write_zeroes((1 << 20) + 32768, 512).unwrap();
    let mut back = vec![0u8; a.len()];
    s.read_at(&mut back, 1 << 20).unwrap();
    let mut want = a.clone();
    want[4096..12288].fill(0);
    want[32768..33280].fill(0);
    assert!(back == want, "unmap/write_zeroes ranges");
    s.trim(0, 4096).unwrap();

    // One WRITE_ZEROES larger than the 32 MiB payload limit (no payload, so no split).
    s.write_zeroes(8 << 20, 48 << 20).unwrap();
    let mut back = vec![1u8; 4096];
    s.read_at(&mut back, 12 << 20).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "zeroed by a 48 MiB WRITE_ZEROES"
    );
    s.read_at(&mut back, 3 << 20).unwrap();
    assert_eq!(back, b, "before the zeroed range");

    // Range checks happen before anything is sent.
    assert_eq!(
        s.read_at(&mut [0u8; 512], SIZE),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        s.write_zeroes(SIZE - 512, 1024),
        Err(StoreError::OUT_OF_RANGE)
    );
}

#[test]
fn unix_socket_and_lun_store() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    let srv = Server::start(&file, Listen::Unix(dir.path().join("nbd.sock")), false);
    let url = srv.url();
    assert!(url.starts_with("nbd+unix:///exp?socket="));
    let lun = LunStore::open(
        BsType::Nbd,
        Some(Path::new(&url)),
        &OpenOptions {
            block_size: 4096,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(lun.bstype(), BsType::Nbd);
    assert!(lun.file().is_none());
    assert_eq!((lun.store().size(), lun.store().block_size()), (SIZE, 4096));
    let engine = lun
        .engine(
            Notify::EventFd,
            EngineTuning {
                threads: 4,
                depth: 8,
            },
        )
        .unwrap();
    assert_eq!(engine.name(), "rdwr");
    engine.submit(Request::write(
        7,
        backstore::IoBuf::from_slice(&pattern(9, 8192)),
        8192,
        true,
    ));
    let mut out = Vec::new();
    while out.is_empty() {
        engine.wait_completions(Some(Duration::from_secs(1)));
        engine.drain(&mut out);
    }
    assert_eq!((out[0].tag, out[0].result), (7, Ok(8192)));
    assert_eq!(file_bytes(&file, 8192, 8192), pattern(9, 8192));

    // A configured size that differs from the export's is refused with a clear message.
    let e = LunStore::open(
        BsType::Nbd,
        Some(Path::new(&url)),
        &OpenOptions {
            create_size: Some(SIZE * 2),
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{url}: the export is {SIZE} bytes but the configured size is {} \
             (leave size out to use the export's)",
            SIZE * 2
        )
    );
    // An export that does not exist.
    let e = NbdStore::open(&url.replace("///exp", "///nope"), &opts()).unwrap_err();
    assert!(e.to_string().contains("export \"nope\""), "{e}");
}

#[test]
fn eight_threads_pipelined() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    let srv = Server::start(&file, Listen::Tcp(free_port()), false);
    let s = Arc::new(NbdStore::open(&srv.url(), &opts()).unwrap());
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..64u64 {
                    let off = (u64::from(t) * 64 + i) * 16384;
                    let data = pattern(t.wrapping_mul(17).wrapping_add(i as u8), 16384);
                    s.write_at(&data, off, i % 8 == 0).unwrap();
                    let mut back = vec![0u8; 16384];
                    s.read_at(&mut back, off).unwrap();
                    assert!(back == data, "thread {t} block {i}");
                }
            });
        }
    });
    s.flush().unwrap();
    // Everything landed where it belongs.
    for t in 0..8u8 {
        for i in [0u64, 31, 63] {
            let off = (u64::from(t) * 64 + i) * 16384;
            let want = pattern(t.wrapping_mul(17).wrapping_add(i as u8), 16384);
            assert!(file_bytes(&file, off, 16384) == want, "file at {off}");
        }
    }
    assert_eq!(s.reconnects(), 0);
}

#[test]
fn read_only_export_refuses_writes() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    std::fs::write(&file, pattern(5, 1 << 20)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let srv = Server::start(&file, Listen::Tcp(free_port()), true);
    let s = NbdStore::open(&srv.url(), &opts()).unwrap();
    assert!(s.is_read_only());
    let e = s.write_at(&[1u8; 512], 0, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert_eq!(s.unmap(0, 512).unwrap_err().kind(), ErrorKind::ReadOnly);
    assert_eq!(
        s.write_zeroes(0, 512).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    let mut back = vec![0u8; 4096];
    s.read_at(&mut back, 8192).unwrap();
    assert_eq!(back, pattern(5, 1 << 20)[8192..12288]);
    assert_eq!(s.flush(), Ok(()));
}

#[test]
fn reconnects_after_the_server_is_killed() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    for listen in [
        Listen::Tcp(free_port()),
        Listen::Unix(dir.path().join("nbd.sock")),
    ] {
        let mut srv = Server::start(&file, listen, false);
        let s = Arc::new(NbdStore::open(&srv.url(), &opts()).unwrap());
        let before = s.reconnects();
        let a = pattern(11, 1 << 20);
        s.write_at(&a, 0, true).unwrap();

        // Killed between requests: the next request waits for the server to come back.
        srv.kill();
        let s2 = s.clone();
        let writer = std::thread::spawn(move || {
            let b = pattern(12, 65536);
            s2.write_at(&b, 2 << 20, false).map(|_| b)
        });
        std::thread::sleep(Duration::from_millis(700));
        srv.restart();
        let b = writer.join().unwrap().expect("write during the outage");
        let mut back = vec![0u8; a.len()];
        s.read_at(&mut back, 0).unwrap();
        assert!(back == a, "acknowledged data survives");
        let mut back = vec![0u8; b.len()];
        s.read_at(&mut back, 2 << 20).unwrap();
        assert_eq!(back, b);
        assert!(s.reconnects() > before);

        // Killed with requests in flight: every request still completes, correctly.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let (s, stop, done) = (s.clone(), stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let off = (4 << 20) + (u64::from(t) * 256 + i % 256) * 4096;
                        let data = pattern(t.wrapping_add(i as u8), 4096);
                        s.write_at(&data, off, false)?;
                        let mut back = vec![0u8; 4096];
                        s.read_at(&mut back, off)?;
                        assert!(back == data, "thread {t} op {i}");
                        done.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Ok::<u64, StoreError>(i)
                })
            })
            .collect();
        while done.load(Ordering::SeqCst) < 200 {
            std::thread::sleep(Duration::from_millis(5));
        }
        srv.kill();
        std::thread::sleep(Duration::from_millis(300));
        srv.restart();
        let at_restart = done.load(Ordering::SeqCst);
        while done.load(Ordering::SeqCst) < at_restart + 200 {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            let n = w.join().unwrap().expect("I/O across the restart");
            assert!(n > 0);
        }
        s.flush().unwrap();
        let mut back = vec![0u8; a.len()];
        s.read_at(&mut back, 0).unwrap();
        assert!(back == a, "acknowledged data survives the second kill");
        drop(srv);
    }
}

#[test]
fn gives_up_with_an_io_error_when_the_server_stays_down() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    let mut srv = Server::start(&file, Listen::Tcp(free_port()), false);
    let s = NbdStore::open(
        &srv.url(),
        &NbdOptions {
            reconnect_timeout: Duration::from_millis(800),
            ..opts()
        },
    )
    .unwrap();
    s.write_at(&[3u8; 512], 0, false).unwrap();
    srv.kill();
    let start = Instant::now();
    let e = s.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(start.elapsed() < Duration::from_secs(10));
    // Back again: the store recovers on the next request.
    srv.restart();
    let mut back = [0u8; 512];
    s.read_at(&mut back, 0).unwrap();
    assert_eq!(back, [3u8; 512]);
}

/// Writes `data` into the image file at `off` (before qemu-nbd serves it).
fn write_file(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(data, off).unwrap();
}

#[test]
fn block_status_reports_holes_of_a_sparse_image() {
    if !have_qemu_nbd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path());
    let a = pattern(1, 64 << 10);
    let b = pattern(2, 4096);
    write_file(&file, 1 << 20, &a);
    write_file(&file, (8 << 20) + 4096, &b);
    let mut srv = Server::start(&file, Listen::Tcp(free_port()), false);
    let s = NbdStore::open(&srv.url(), &opts()).unwrap();
    let info = s.export_info();
    assert!(info.structured_replies, "qemu-nbd does structured replies");
    assert!(
        info.base_allocation.is_some(),
        "qemu-nbd offers base:allocation"
    );
    let st = |mapped, len| Ok(LbaStatus { mapped, len });
    let m1 = 1u64 << 20;
    let m8 = 8u64 << 20;
    assert_eq!(s.lba_status(0), st(false, m1));
    assert_eq!(s.lba_status(m1), st(true, 64 << 10));
    assert_eq!(s.lba_status(m1 + 4096), st(true, 60 << 10));
    assert_eq!(
        s.lba_status(m1 + (64 << 10)),
        st(false, m8 + 4096 - m1 - (64 << 10))
    );
    assert_eq!(s.lba_status(m8 + 4096), st(true, 4096));
    assert_eq!(s.lba_status(m8 + 8192), st(false, SIZE - m8 - 8192));
    assert_eq!(s.lba_status(SIZE - 512), st(false, 512));
    assert_eq!(s.lba_status(SIZE), Err(StoreError::OUT_OF_RANGE));

    // Reads across holes and data (qemu-nbd answers in data and hole chunks).
    let mut back = vec![0xffu8; 2 << 20];
    assert_eq!(s.read_at(&mut back, 0), Ok(2 << 20));
    assert_eq!(back, file_bytes(&file, 0, 2 << 20));
    assert_eq!(&back[1 << 20..(1 << 20) + a.len()], &a[..]);

    // Writing allocates; UNMAP (WRITE_ZEROES, qemu-nbd --discard=unmap) punches it out.
    s.write_at(&pattern(3, 8192), 16 << 20, false).unwrap();
    assert_eq!(s.lba_status(16 << 20), st(true, 8192));
    s.unmap(16 << 20, 8192).unwrap();
    assert_eq!(s.lba_status(m8 + 8192), st(false, SIZE - m8 - 8192));
    s.unmap(m1, 64 << 10).unwrap();
    assert_eq!(s.lba_status(0), st(false, m8 + 4096));

    // A 4096-byte LUN over the same export: same extents, in its blocks.
    let big = NbdStore::open(
        &srv.url(),
        &NbdOptions {
            block_size: 4096,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(big.lba_status(m8 + 4096), st(true, 4096));
    drop(big);

    // Turned off, everything is mapped (the old behaviour), and reads still work.
    let plain = NbdStore::open(
        &srv.url(),
        &NbdOptions {
            block_status: false,
            ..opts()
        },
    )
    .unwrap();
    assert!(!plain.export_info().structured_replies);
    assert_eq!(plain.lba_status(0), st(true, SIZE));
    let mut back = vec![0u8; 4096];
    plain.read_at(&mut back, m8 + 4096).unwrap();
    assert_eq!(back, b);
    drop(plain);

    // After a server restart the new connection negotiates the context again.
    srv.restart();
    assert_eq!(s.lba_status(m8 + 4096), st(true, 4096));
    assert_eq!(s.reconnects(), 1);
}
