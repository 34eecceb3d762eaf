//! Every engine against the same behaviours: round trips, concurrency, durability
//! operations, errors, shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backstore::testing::InstrumentedStore;
use backstore::{
    AioConfig, AioEngine, BackingStore, BufPool, Completion, Engine, ErrorKind, FileStore,
    InlineEngine, IoBuf, LbaStatus, MemoryStore, Notify, NullStore, Op, OpenErrorKind, OpenOptions,
    RdwrConfig, RdwrEngine, Request, StoreError,
};

const MIB: u64 = 1 << 20;

fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").expect("temp dir under /var/tmp")
}

fn file_store(dir: &tempfile::TempDir, name: &str, direct: bool) -> Option<Arc<FileStore>> {
    let opts = OpenOptions {
        direct,
        create_size: Some(16 * MIB),
        block_size: 4096,
        ..Default::default()
    };
    match FileStore::open(dir.path().join(name), &opts) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) if e.kind == OpenErrorKind::DirectUnsupported => {
            eprintln!("skipping O_DIRECT: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn rdwr(store: Arc<dyn BackingStore>, threads: usize) -> Box<dyn Engine> {
    Box::new(
        RdwrEngine::new(
            store,
            RdwrConfig {
                threads,
                notify: Notify::EventFd,
            },
        )
        .unwrap(),
    )
}

fn aio(store: Arc<FileStore>, depth: u32) -> Box<dyn Engine> {
    Box::new(
        AioEngine::new(
            store,
            AioConfig {
                depth,
                notify: Notify::EventFd,
            },
        )
        .unwrap(),
    )
}

fn inline(store: Arc<dyn BackingStore>) -> Box<dyn Engine> {
    Box::new(InlineEngine::new(store, Notify::EventFd).unwrap())
}

/// One engine of each kind (plus variants), each on its own store.
fn all_engines(dir: &tempfile::TempDir) -> Vec<(String, Box<dyn Engine>)> {
    let mut v: Vec<(String, Box<dyn Engine>)> = vec![
        (
            "rdwr-file".into(),
            rdwr(file_store(dir, "rdwr.img", false).unwrap(), 4),
        ),
        (
            "rdwr-memory".into(),
            rdwr(Arc::new(MemoryStore::new(16 * MIB, 4096).unwrap()), 2),
        ),
        (
            "inline-memory".into(),
            inline(Arc::new(MemoryStore::new(16 * MIB, 4096).unwrap())),
        ),
        (
            "inline-file".into(),
            inline(file_store(dir, "inline.img", false).unwrap()),
        ),
        (
            "aio-buffered".into(),
            aio(file_store(dir, "aio.img", false).unwrap(), 16),
        ),
    ];
    if let Some(s) = file_store(dir, "aio-direct.img", true) {
        v.push(("aio-direct".into(), aio(s, 8)));
    }
    if let Some(s) = file_store(dir, "rdwr-direct.img", true) {
        v.push(("rdwr-direct".into(), rdwr(s, 3)));
    }
    v
}

/// Collect completions until `n` arrived (panics after 10 s).
fn collect(engine: &dyn Engine, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{}: only {} of {n} completions",
            engine.name(),
            out.len()
        );
        if engine.drain(&mut out) == 0 {
            engine.wait_completions(Some(Duration::from_millis(100)));
        }
    }
    assert_eq!(out.len(), n);
    out
}

fn run(engine: &dyn Engine, req: Request) -> Completion {
    engine.submit(req);
    collect(engine, 1).pop().unwrap()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 7919) as u8
        })
        .collect()
}

#[test]
fn data_written_comes_back_on_every_engine() {
    let dir = disk_dir();
    let pool = BufPool::new(64);
    for (name, engine) in all_engines(&dir) {
        let engine = &*engine;
        // 64 writes of distinct 4 KiB blocks in one batch, then 64 reads.
        let mut batch: Vec<Request> = (0..64u64)
            .map(|i| {
                let mut buf = pool.get(4096);
                buf.copy_from_slice(&pattern(4096, i));
                Request::write(i, buf, i * 3 * 4096, i % 5 == 0)
            })
            .collect();
        engine.submit_batch(&mut batch);
        assert!(batch.is_empty());
        for c in collect(engine, 64) {
            assert_eq!(c.op, Op::Write);
            assert_eq!(c.result, Ok(4096), "{name}: write {}", c.tag);
        }
        for i in 0..64u64 {
            engine.submit(Request::read(1000 + i, pool.get(4096), i * 3 * 4096));
        }
        let reads = collect(engine, 64);
        for c in reads {
            let i = c.tag - 1000;
            assert_eq!(c.result, Ok(4096), "{name}: read {i}");
            assert_eq!(
                &c.buf[..],
                &pattern(4096, i)[..],
                "{name}: data of block {i}"
            );
        }
        // A large transfer spanning several memory chunks.
        let big = pattern(1 << 20, 99);
        let c = run(
            engine,
            Request::write(5000, IoBuf::from_slice(&big), 2 * MIB, false),
        );
        assert_eq!(c.result, Ok(1 << 20), "{name}");
        let c = run(engine, Request::read(5001, pool.get(1 << 20), 2 * MIB));
        assert_eq!(&c.buf[..], &big[..], "{name}: 1 MiB read back");
        assert_eq!(
            run(engine, Request::flush(5002)).result,
            Ok(0),
            "{name}: flush"
        );
        assert_eq!(engine.in_flight(), 0, "{name}");
        engine.shutdown();
    }
}

#[test]
fn unmap_and_lba_status_through_every_engine() {
    let dir = disk_dir();
    for (name, engine) in all_engines(&dir) {
        let engine = &*engine;
        let data = IoBuf::from_slice(&pattern(1 << 20, 1));
        assert_eq!(
            run(engine, Request::write(1, data, 0, false)).result,
            Ok(1 << 20),
            "{name}"
        );
        let c = run(engine, Request::lba_status(2, 0));
        assert_eq!(
            c.lba_status,
            Some(LbaStatus {
                mapped: true,
                len: MIB
            }),
            "{name}"
        );
        assert_eq!(c.result, Ok(MIB as usize), "{name}");
        assert_eq!(
            run(engine, Request::unmap(3, 256 << 10, 512 << 10)).result,
            Ok(0),
            "{name}"
        );
        let c = run(engine, Request::lba_status(4, 256 << 10));
        assert_eq!(
            c.lba_status,
            Some(LbaStatus {
                mapped: false,
                len: 512 << 10
            }),
            "{name}"
        );
        let c = run(engine, Request::lba_status(5, 768 << 10));
        assert_eq!(
            c.lba_status,
            Some(LbaStatus {
                mapped: true,
                len: 256 << 10
            }),
            "{name}"
        );
        let c = run(engine, Request::read(6, IoBuf::alloc(1 << 20), 0));
        assert!(
            c.buf[256 << 10..768 << 10].iter().all(|&b| b == 0),
            "{name}: unmapped reads zeroes"
        );
        assert_eq!(
            &c.buf[..256 << 10],
            &pattern(1 << 20, 1)[..256 << 10],
            "{name}"
        );
        assert_eq!(
            run(engine, Request::write_zeroes(7, 0, 4096)).result,
            Ok(0),
            "{name}"
        );
        let c = run(engine, Request::read(8, IoBuf::alloc(8192), 0));
        assert!(c.buf[..4096].iter().all(|&b| b == 0), "{name}");
        assert_eq!(&c.buf[4096..], &pattern(1 << 20, 1)[4096..8192], "{name}");
        let c = run(engine, Request::lba_status(9, 16 * MIB));
        assert_eq!(c.result, Err(StoreError::OUT_OF_RANGE), "{name}");
        assert_eq!(c.lba_status, None);
    }
}

#[test]
fn concurrent_submitters_each_get_their_completions() {
    let dir = disk_dir();
    for (name, engine) in all_engines(&dir) {
        let engine: Arc<dyn Engine> = Arc::from(engine);
        const THREADS: u64 = 8;
        const PER: u64 = 100;
        let submitters: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let tag = t * 1000 + i;
                        let buf = IoBuf::from_slice(&pattern(4096, tag));
                        // Each thread owns the blocks t, t + THREADS, ... (no overlap).
                        engine.submit(Request::write(tag, buf, (i * THREADS + t) * 4096, false));
                    }
                })
            })
            .collect();
        let writes = collect(&*engine, (THREADS * PER) as usize);
        for s in submitters {
            s.join().unwrap();
        }
        let mut seen = HashMap::new();
        for c in &writes {
            assert_eq!(c.result, Ok(4096), "{name}: tag {}", c.tag);
            *seen.entry(c.tag).or_insert(0) += 1;
        }
        assert_eq!(
            seen.len(),
            (THREADS * PER) as usize,
            "{name}: every tag once"
        );
        assert!(seen.values().all(|&n| n == 1));
        let mut reads: Vec<Request> = (0..THREADS * PER)
            .map(|k| Request::read(k, IoBuf::alloc(4096), k * 4096))
            .collect();
        engine.submit_batch(&mut reads);
        for c in collect(&*engine, (THREADS * PER) as usize) {
            let (t, i) = (c.tag % THREADS, c.tag / THREADS);
            assert_eq!(
                &c.buf[..],
                &pattern(4096, t * 1000 + i)[..],
                "{name}: block {}",
                c.tag
            );
        }
        assert_eq!(engine.in_flight(), 0);
    }
}

#[test]
fn fua_and_flush_reach_the_store() {
    let store = Arc::new(InstrumentedStore::new(MemoryStore::new(MIB, 512).unwrap()));
    let engines: Vec<Box<dyn Engine>> = vec![rdwr(store.clone(), 4), inline(store.clone())];
    for (k, engine) in engines.iter().enumerate() {
        let k = k as u64 + 1;
        assert_eq!(
            run(&**engine, Request::write(1, IoBuf::alloc(512), 0, true)).result,
            Ok(512)
        );
        assert_eq!(
            run(&**engine, Request::write(2, IoBuf::alloc(512), 512, false)).result,
            Ok(512)
        );
        assert_eq!(run(&**engine, Request::flush(3)).result, Ok(0));
        let counts = store.counts();
        assert_eq!(
            (counts.writes, counts.fua_writes, counts.flushes),
            (2 * k, k, k),
            "{}",
            engine.name()
        );
    }
}

#[test]
fn fua_writes_and_flushes_are_in_the_file_after_reopen() {
    let dir = disk_dir();
    let mut engines: Vec<(&str, Box<dyn Engine>)> = vec![
        (
            "rdwr.img",
            rdwr(file_store(&dir, "rdwr.img", false).unwrap(), 2),
        ),
        (
            "aio.img",
            aio(file_store(&dir, "aio.img", false).unwrap(), 4),
        ),
    ];
    if let Some(s) = file_store(&dir, "aio-direct.img", true) {
        engines.push(("aio-direct.img", aio(s, 4)));
    }
    for (file, engine) in engines {
        let fua = IoBuf::from_slice(&pattern(4096, 11));
        assert_eq!(
            run(&*engine, Request::write(1, fua, 8192, true)).result,
            Ok(4096),
            "{file}"
        );
        let plain = IoBuf::from_slice(&pattern(8192, 12));
        assert_eq!(
            run(&*engine, Request::write(2, plain, 65536, false)).result,
            Ok(8192),
            "{file}"
        );
        assert_eq!(run(&*engine, Request::flush(3)).result, Ok(0), "{file}");
        engine.shutdown();
        drop(engine);
        let raw = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(&raw[8192..12288], &pattern(4096, 11)[..], "{file}");
        assert_eq!(&raw[65536..73728], &pattern(8192, 12)[..], "{file}");
    }
}

#[test]
fn read_only_store_refuses_writes_on_every_engine() {
    let dir = disk_dir();
    let path = dir.path().join("ro.img");
    std::fs::write(&path, pattern(MIB as usize, 3)).unwrap();
    let ro = Arc::new(
        FileStore::open(
            &path,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mem_ro = Arc::new(MemoryStore::with_options(MIB, 512, true).unwrap());
    let engines: Vec<Box<dyn Engine>> = vec![
        rdwr(ro.clone(), 2),
        aio(ro.clone(), 4),
        inline(ro.clone()),
        inline(mem_ro),
    ];
    for engine in engines {
        let name = engine.name();
        let c = run(&*engine, Request::write(1, IoBuf::alloc(512), 0, false));
        assert_eq!(c.result.unwrap_err().kind(), ErrorKind::ReadOnly, "{name}");
        assert_eq!(c.buf.len(), 512, "{name}: the buffer comes back");
        assert_eq!(
            run(&*engine, Request::unmap(2, 0, 512)).result,
            Err(StoreError::READ_ONLY),
            "{name}"
        );
        let c = run(&*engine, Request::read(3, IoBuf::alloc(512), 512));
        assert_eq!(c.result, Ok(512), "{name}");
    }
}

#[test]
fn out_of_range_and_malformed_requests() {
    let dir = disk_dir();
    for (name, engine) in all_engines(&dir) {
        let engine = &*engine;
        let c = run(
            engine,
            Request::read(1, IoBuf::alloc(8192), 16 * MIB - 4096),
        );
        assert_eq!(c.result, Err(StoreError::OUT_OF_RANGE), "{name}");
        let c = run(
            engine,
            Request::write(2, IoBuf::alloc(4096), 16 * MIB, false),
        );
        assert_eq!(c.result, Err(StoreError::OUT_OF_RANGE), "{name}");
        let c = run(engine, Request::unmap(3, 16 * MIB - 4096, 8192));
        assert_eq!(c.result, Err(StoreError::OUT_OF_RANGE), "{name}");
        let mut bad = Request::read(4, IoBuf::alloc(4096), 0);
        bad.len = 8192;
        assert_eq!(
            run(engine, bad).result,
            Err(StoreError::INVALID),
            "{name}: len != buf.len()"
        );
        // The engine keeps working after errors.
        assert_eq!(
            run(engine, Request::read(5, IoBuf::alloc(4096), 0)).result,
            Ok(4096),
            "{name}"
        );
        assert_eq!(
            run(engine, Request::read(6, IoBuf::empty(), 0)).result,
            Ok(0),
            "{name}"
        );
    }
}

#[test]
fn direct_io_rejects_unaligned_ranges_as_invalid() {
    let dir = disk_dir();
    let Some(store) = file_store(&dir, "direct.img", true) else {
        return;
    };
    for engine in [aio(store.clone(), 4), rdwr(store.clone(), 1)] {
        let c = run(&*engine, Request::read(1, IoBuf::alloc(4096), 512));
        assert_eq!(c.result, Err(StoreError::INVALID), "{}", engine.name());
        let c = run(&*engine, Request::write(2, IoBuf::alloc(1000), 0, false));
        assert_eq!(c.result, Err(StoreError::INVALID), "{}", engine.name());
    }
}

#[test]
fn injected_errors_map_to_their_kinds() {
    let store = Arc::new(InstrumentedStore::new(MemoryStore::new(MIB, 512).unwrap()));
    store.fail(Op::Read, Some(8192), libc::EIO);
    store.fail(Op::Write, None, libc::ENOSPC);
    store.fail(Op::Flush, None, libc::EIO);
    for engine in [rdwr(store.clone(), 2), inline(store.clone())] {
        let name = engine.name();
        let c = run(&*engine, Request::read(1, IoBuf::alloc(4096), 4096 + 512));
        let e = c.result.unwrap_err();
        assert_eq!((e.kind(), e.errno()), (ErrorKind::Io, libc::EIO), "{name}");
        assert_eq!(
            run(&*engine, Request::read(2, IoBuf::alloc(4096), 0)).result,
            Ok(4096),
            "{name}"
        );
        let e = run(&*engine, Request::write(3, IoBuf::alloc(512), 0, false))
            .result
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.errno()),
            (ErrorKind::NoSpace, libc::ENOSPC),
            "{name}"
        );
        assert_eq!(
            run(&*engine, Request::flush(4)).result.unwrap_err().kind(),
            ErrorKind::Io,
            "{name}"
        );
    }
    store.clear_faults();
    assert_eq!(store.write_at(&[1; 512], 0, false), Ok(512));
}

#[derive(Debug)]
struct PanickingStore;

impl BackingStore for PanickingStore {
    fn size(&self) -> u64 {
        MIB
    }
    fn block_size(&self) -> u32 {
        512
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_thin(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        if offset == 0 {
            panic!("injected panic");
        }
        buf.fill(1);
        Ok(buf.len())
    }
    fn write_at(&self, buf: &[u8], _offset: u64, _fua: bool) -> Result<usize, StoreError> {
        Ok(buf.len())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn a_panicking_store_fails_the_request_not_the_engine() {
    let engine = rdwr(Arc::new(PanickingStore), 1);
    let c = run(&*engine, Request::read(1, IoBuf::alloc(512), 0));
    assert_eq!(c.result, Err(StoreError::IO));
    let c = run(&*engine, Request::read(2, IoBuf::alloc(512), 512));
    assert_eq!(c.result, Ok(512), "the single worker survived");
    assert!(c.buf.iter().all(|&b| b == 1));
}

/// Shut down with requests queued and running: each tag completes exactly once, with
/// success or `Cancelled`; later submissions are cancelled too.
#[test]
fn shutdown_completes_or_cancels_each_request_once() {
    let slow = Arc::new(InstrumentedStore::new(MemoryStore::new(MIB, 512).unwrap()));
    slow.set_delay(Duration::from_millis(20));
    let engine = rdwr(slow.clone(), 2);
    for tag in 0..50 {
        engine.submit(Request::write(tag, IoBuf::alloc(512), tag * 512, false));
    }
    // Shut down once both workers are inside the store (two requests running).
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.counts().writes < 2 {
        assert!(Instant::now() < deadline, "workers never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    engine.shutdown();
    engine.submit(Request::read(50, IoBuf::alloc(512), 0));
    let all = collect(&*engine, 51);
    let mut tags: Vec<u64> = all.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..51).collect::<Vec<_>>());
    let ok = all.iter().filter(|c| c.result == Ok(512)).count();
    let cancelled = all
        .iter()
        .filter(|c| c.result == Err(StoreError::CANCELLED))
        .count();
    assert_eq!(ok + cancelled, 51);
    assert!(ok >= 2 && cancelled >= 10, "ok {ok}, cancelled {cancelled}");
    assert_eq!(
        slow.counts().writes as usize,
        ok,
        "every started write completed successfully"
    );
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.drain(&mut Vec::new()), 0, "nothing twice");
}

#[test]
fn aio_shutdown_with_iocbs_in_the_kernel() {
    let dir = disk_dir();
    let store = file_store(&dir, "aio-shutdown.img", true)
        .or_else(|| file_store(&dir, "aio-buf.img", false));
    let engine = aio(store.unwrap(), 8);
    let mut reqs: Vec<Request> = (0..300)
        .map(|t| Request::write(t, IoBuf::alloc(4096), t * 4096, t % 7 == 0))
        .collect();
    reqs.push(Request::unmap(300, 0, 4096));
    reqs.push(Request::flush(301));
    engine.submit_batch(&mut reqs);
    engine.shutdown();
    engine.submit(Request::flush(302));
    let all = collect(&*engine, 303);
    let mut tags: Vec<u64> = all.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..303).collect::<Vec<_>>());
    for c in &all {
        assert!(
            c.result.is_ok() || c.result == Err(StoreError::CANCELLED),
            "tag {}: {:?}",
            c.tag,
            c.result
        );
    }
    assert_eq!(
        all.iter().find(|c| c.tag == 302).unwrap().result,
        Err(StoreError::CANCELLED)
    );
    let cancelled = all
        .iter()
        .filter(|c| c.result == Err(StoreError::CANCELLED))
        .count();
    assert!(
        cancelled >= 250,
        "the wait list (beyond depth 8) was cancelled: {cancelled}"
    );
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn inline_engine_cancels_after_shutdown() {
    let engine = inline(Arc::new(NullStore::new(MIB, 512).unwrap()));
    assert_eq!(
        run(&*engine, Request::read(1, IoBuf::alloc(512), 0)).result,
        Ok(512)
    );
    engine.shutdown();
    let mut batch = vec![Request::read(2, IoBuf::alloc(512), 0), Request::flush(3)];
    engine.submit_batch(&mut batch);
    let all = collect(&*engine, 2);
    assert!(all.iter().all(|c| c.result == Err(StoreError::CANCELLED)));
}

#[test]
fn callback_notification_wakes_the_runtime() {
    let dir = disk_dir();
    let fired = Arc::new(AtomicUsize::new(0));
    let cb = |f: &Arc<AtomicUsize>| {
        let f = f.clone();
        Notify::Callback(Box::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }))
    };
    let mem: Arc<dyn BackingStore> = Arc::new(MemoryStore::new(MIB, 512).unwrap());
    let mut engines: Vec<Box<dyn Engine>> = vec![
        Box::new(
            RdwrEngine::new(
                mem.clone(),
                RdwrConfig {
                    threads: 2,
                    notify: cb(&fired),
                },
            )
            .unwrap(),
        ),
        Box::new(InlineEngine::new(mem, cb(&fired)).unwrap()),
        Box::new(
            AioEngine::new(
                file_store(&dir, "cb.img", false).unwrap(),
                AioConfig {
                    depth: 4,
                    notify: cb(&fired),
                },
            )
            .unwrap(),
        ),
    ];
    if let Some(s) = file_store(&dir, "cb-direct.img", true) {
        engines.push(Box::new(
            AioEngine::new(
                s,
                AioConfig {
                    depth: 4,
                    notify: cb(&fired),
                },
            )
            .unwrap(),
        ));
    }
    for engine in engines {
        assert_eq!(engine.completion_fd(), None, "{}", engine.name());
        let before = fired.load(Ordering::SeqCst);
        for tag in 0..20 {
            engine.submit(Request::write(
                tag,
                IoBuf::from_slice(&[tag as u8; 4096]),
                tag * 4096,
                false,
            ));
        }
        engine.submit(Request::lba_status(20, 0));
        let all = collect(&*engine, 21);
        assert!(all.iter().all(|c| c.result.is_ok()), "{}", engine.name());
        assert!(
            fired.load(Ordering::SeqCst) > before,
            "{}: callback fired",
            engine.name()
        );
        engine.shutdown();
    }
}

#[test]
fn eventfd_becomes_readable_and_is_reset_by_reaping() {
    let engine = rdwr(Arc::new(MemoryStore::new(MIB, 512).unwrap()), 1);
    assert!(engine.completion_fd().is_some());
    assert!(
        !engine.wait_completions(Some(Duration::ZERO)),
        "nothing yet"
    );
    engine.submit(Request::flush(1));
    assert!(
        engine.wait_completions(Some(Duration::from_secs(5))),
        "fd readable"
    );
    let mut out = Vec::new();
    assert_eq!(engine.drain(&mut out), 1);
    assert!(
        !engine.wait_completions(Some(Duration::ZERO)),
        "reaping reset the fd"
    );
    assert_eq!(engine.poll_completions(&mut |_| panic!("no completion")), 0);
}

#[test]
fn inline_fast_path_and_buffer_recycling() {
    let dir = disk_dir();
    let store = file_store(&dir, "inline.img", false).unwrap();
    let engine = rdwr(store, 2);
    let pool = BufPool::new(16);
    let mut buf = pool.get(4096);
    buf.copy_from_slice(&pattern(4096, 77));
    assert_eq!(
        run(&*engine, Request::write(1, buf, 40960, false)).result,
        Ok(4096)
    );
    assert_eq!(
        pool.idle(),
        1,
        "the completion's buffer went back to the pool"
    );
    let mut buf = pool.get(4096);
    assert_eq!(pool.idle(), 0);
    assert_eq!(
        engine.try_read_inline(&mut buf, 40960),
        Some(Ok(4096)),
        "page-cache hit"
    );
    assert_eq!(&buf[..], &pattern(4096, 77)[..]);
    assert_eq!(
        engine.try_read_inline(&mut buf, 16 * MIB),
        Some(Err(StoreError::OUT_OF_RANGE))
    );
    let mem = inline(Arc::new(MemoryStore::new(MIB, 512).unwrap()));
    assert_eq!(mem.try_read_inline(&mut buf, 0), Some(Ok(4096)));
    assert!(buf.iter().all(|&b| b == 0));
}
