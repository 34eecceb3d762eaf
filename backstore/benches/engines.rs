//! Engines compared: 4 KiB random reads and writes at queue depth 32 on a page-cached file
//! (rdwr with 1/4/16 threads, aio, the inline `preadv2(RWF_NOWAIT)` path) and on memory.
//! Throughput is reported in elements per second = IOPS. The file lives in
//! `$BACKSTORE_BENCH_DIR` (default `/var/tmp`).

// `criterion_group!` generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use backstore::{
    AioConfig, AioEngine, BackingStore, BufPool, Engine, FileStore, InlineEngine, MemoryStore,
    Notify, NullStore, OpenOptions, RdwrConfig, RdwrEngine, Request,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const FILE_SIZE: u64 = 256 << 20;
const BLOCK: usize = 4096;
const OPS: u64 = 512;
const QD: u64 = 32;

struct Rng(u64);

impl Rng {
    fn next_block(&mut self) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (FILE_SIZE / BLOCK as u64)) * BLOCK as u64
    }
}

/// Run `OPS` random 4 KiB requests keeping `QD` in flight.
fn drive(engine: &dyn Engine, pool: &BufPool, write: bool, rng: &mut Rng) {
    let make = |tag: u64, rng: &mut Rng| {
        let buf = pool.get(BLOCK);
        if write {
            Request::write(tag, buf, rng.next_block(), false)
        } else {
            Request::read(tag, buf, rng.next_block())
        }
    };
    let mut batch: Vec<Request> = (0..QD).map(|t| make(t, rng)).collect();
    engine.submit_batch(&mut batch);
    let (mut submitted, mut done) = (QD, 0);
    while done < OPS {
        let n = engine.poll_completions(&mut |c| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            drop(c);
            if submitted < OPS {
                batch.push(make(submitted, rng));
                submitted += 1;
            }
        });
        done += n as u64;
        if n == 0 {
            engine.wait_completions(Some(Duration::from_millis(100)));
        } else {
            engine.submit_batch(&mut batch);
        }
    }
}

/// The inline path: synchronous `preadv2(RWF_NOWAIT)` in this thread.
fn drive_inline(engine: &dyn Engine, pool: &BufPool, rng: &mut Rng) {
    let mut buf = pool.get(BLOCK);
    for _ in 0..OPS {
        let off = rng.next_block();
        // A page the kernel evicted meanwhile is read the blocking way, as a runtime would.
        let r = match engine.try_read_inline(&mut buf, off) {
            Some(r) => r,
            None => engine.store().read_at(&mut buf, off),
        };
        assert!(matches!(r, Ok(BLOCK)), "{r:?}");
    }
}

fn cached_file() -> (tempfile::TempDir, Arc<FileStore>) {
    // BACKSTORE_BENCH_DIR picks the file system (default /var/tmp; /dev/shm shows the
    // engines' own cost without a disk file system's write path).
    let base = std::env::var("BACKSTORE_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let path = dir.path().join("bench.img");
    let store = FileStore::open(
        &path,
        &OpenOptions {
            create_size: Some(FILE_SIZE),
            ..Default::default()
        },
    )
    .expect("open bench file");
    // Fill it so every block is allocated and in the page cache.
    let chunk = vec![0x5au8; 1 << 20];
    for off in (0..FILE_SIZE).step_by(chunk.len()) {
        store.write_at(&chunk, off, false).expect("fill");
    }
    // Write back now, so dirty-page throttling does not weigh on the write benchmarks.
    store.flush().expect("flush");
    (dir, Arc::new(store))
}

fn engines(c: &mut Criterion) {
    let (_dir, file) = cached_file();
    let memory: Arc<dyn BackingStore> = {
        let m = MemoryStore::new(FILE_SIZE, 512).expect("memory store");
        let chunk = vec![0x5au8; 1 << 20];
        for off in (0..FILE_SIZE).step_by(chunk.len()) {
            m.write_at(&chunk, off, false).expect("fill");
        }
        Arc::new(m)
    };
    let null: Arc<dyn BackingStore> = Arc::new(NullStore::new(FILE_SIZE, 512).expect("null store"));
    let pool = BufPool::new(256);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let rdwr = |store: Arc<dyn BackingStore>, threads| -> Box<dyn Engine> {
        Box::new(
            RdwrEngine::new(
                store,
                RdwrConfig {
                    threads,
                    notify: Notify::EventFd,
                },
            )
            .expect("rdwr"),
        )
    };
    let mut subjects: Vec<(&str, Box<dyn Engine>)> = vec![
        ("file/rdwr-1", rdwr(file.clone(), 1)),
        ("file/rdwr-4", rdwr(file.clone(), 4)),
        ("file/rdwr-16", rdwr(file.clone(), 16)),
        (
            "file/aio",
            Box::new(
                AioEngine::new(
                    file.clone(),
                    AioConfig {
                        depth: 64,
                        notify: Notify::EventFd,
                    },
                )
                .expect("aio"),
            ),
        ),
        (
            "memory/inline",
            Box::new(InlineEngine::new(memory.clone(), Notify::EventFd).expect("inline")),
        ),
        ("memory/rdwr-4", rdwr(memory.clone(), 4)),
        (
            "null/inline",
            Box::new(InlineEngine::new(null, Notify::EventFd).expect("inline")),
        ),
    ];

    for write in [false, true] {
        let mut group = c.benchmark_group(if write {
            "randwrite-4k-qd32"
        } else {
            "randread-4k-qd32"
        });
        group.throughput(Throughput::Elements(OPS));
        for (name, engine) in &mut subjects {
            group.bench_function(*name, |b| {
                b.iter(|| drive(&**engine, &pool, write, &mut rng))
            });
        }
        if !write {
            let engine = rdwr(file.clone(), 1);
            if engine.try_read_inline(&mut pool.get(BLOCK), 0).is_some() {
                group.bench_function("file/inline-preadv2", |b| {
                    b.iter(|| drive_inline(&*engine, &pool, &mut rng))
                });
            } else {
                eprintln!("skipping file/inline-preadv2: RWF_NOWAIT not supported here");
            }
            // The synchronous path of a thread-per-connection runtime, on memory.
            let engine = rdwr(memory.clone(), 1);
            group.bench_function("memory/sync-read_at", |b| {
                b.iter(|| drive_inline(&*engine, &pool, &mut rng))
            });
        }
        group.finish();
    }
    for (_, engine) in subjects {
        engine.shutdown();
    }
}

criterion_group!(benches, engines);
criterion_main!(benches);
