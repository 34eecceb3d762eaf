//! The RBD store and engine against a real, throwaway single-node Ceph cluster.
//!
//! The first test to need it starts the cluster with `scripts/ceph-test-cluster.sh` (one
//! ceph-mon, one memstore ceph-osd on 127.0.0.1, about 15 s); the script's watcher stops it
//! and removes its directory when this test process exits. Every test works on its own
//! image. Without `ceph-mon` on the PATH the tests print why and pass without checking
//! anything; set `TGT_RBD_TEST_CONF` (and optionally `TGT_RBD_TEST_POOL`, default `rbd`) to
//! use an existing cluster instead.
#![cfg(feature = "rbd")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backstore::rbd::{RbdEngine, RbdOptions, RbdSpec, RbdStore};
use backstore::{
    BackingStore, CompareAndWrite, Completion, Engine, ErrorKind, IoBuf, LbaStatus, Notify, Op,
    OpenErrorKind, Request, StoreError,
};

const MIB: u64 = 1 << 20;

struct Cluster {
    conf: PathBuf,
    pool: String,
}

fn start_cluster() -> Option<Cluster> {
    if let Ok(conf) = std::env::var("TGT_RBD_TEST_CONF") {
        return Some(Cluster {
            conf: conf.into(),
            pool: std::env::var("TGT_RBD_TEST_POOL").unwrap_or_else(|_| "rbd".into()),
        });
    }
    let have_mon = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("ceph-mon").is_file()));
    if !have_mon {
        // Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: ceph-mon is not installed (apt-get install ceph-mon ceph-osd ceph-common); \
             the rbd tests need a throwaway Ceph cluster"
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ceph-test-cluster.sh");
    let dir = std::env::temp_dir().join(format!("tgt-rbd-test-{}", std::process::id()));
    let started = Instant::now();
    let out = Command::new(&script)
        .arg("start")
        .arg(&dir)
        .arg("--watch")
        .arg(std::process::id().to_string())
        .output()
        .expect("run ceph-test-cluster.sh");
    assert!(
        out.status.success(),
        "ceph-test-cluster.sh start failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in script output {stdout:?}"))
            .to_owned()
    };
    let _ = writeln!(
        std::io::stderr(),
        "ceph test cluster up in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Some(Cluster {
        conf: field("conf").into(),
        pool: field("pool"),
    })
}

fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    // Serialise the start: several tests ask at once.
    static START: Mutex<()> = Mutex::new(());
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    CLUSTER.get_or_init(start_cluster).as_ref()
}

impl Cluster {
    fn rbd(&self, args: &[&str]) {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run rbd");
        assert!(
            out.status.success(),
            "rbd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh image of `mib` MiB with a unique name.
    fn image(&self, name: &str, mib: u64) -> RbdSpec {
        static N: AtomicUsize = AtomicUsize::new(0);
        let image = format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.rbd(&[
            "create",
            &format!("{}/{image}", self.pool),
            "--size",
            &format!("{mib}M"),
        ]);
        self.spec(&image)
    }

    fn spec(&self, image: &str) -> RbdSpec {
        let mut spec = RbdSpec::parse(&format!("rbd:{}/{image}", self.pool)).unwrap();
        spec.conf = Some(self.conf.clone());
        spec
    }

    fn open(&self, name: &str, mib: u64) -> (RbdSpec, RbdStore) {
        let spec = self.image(name, mib);
        let store = RbdStore::open(&spec, &RbdOptions::default()).expect("open image");
        (spec, store)
    }
}

/// Stop here (passing) when there is no cluster to test against.
macro_rules! need_cluster {
    () => {
        match cluster() {
            Some(c) => c,
            None => return,
        }
    };
}

use backstore::testing::pattern;

/// Compare buffers without printing megabytes on failure.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}

fn read(store: &RbdStore, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    assert_eq!(store.read_at(&mut buf, offset), Ok(len));
    buf
}

#[test]
fn size_geometry_and_resize() {
    let c = need_cluster!();
    let (spec, store) = c.open("size", 64);
    assert_eq!(store.size(), 64 * MIB);
    assert_eq!(store.block_size(), 512);
    assert!(store.is_thin());
    assert!(!store.is_read_only());
    assert_eq!(store.object_size(), 4 * MIB);
    assert_eq!(store.unmap_granularity(), 4 * MIB);
    assert_eq!(store.spec(), &spec);
    assert_eq!(store.refresh_size(), Ok(None));
    // Past the end: refused before librbd (which would answer EINVAL).
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        store.read_at(&mut buf, 64 * MIB),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.read_at(&mut buf, 64 * MIB - 512),
        Err(StoreError::OUT_OF_RANGE)
    );
    // Grow the image behind the store's back; refresh_size reports it once.
    c.rbd(&["resize", &spec.image_spec(), "--size", "96M"]);
    assert_eq!(store.refresh_size(), Ok(Some(96 * MIB)));
    assert_eq!(store.size(), 96 * MIB);
    assert_eq!(store.refresh_size(), Ok(None));
    let data = pattern(1, 4096);
    assert_eq!(store.write_at(&data, 90 * MIB, false), Ok(4096));
    same(&read(&store, 90 * MIB, 4096), &data, "write after resize");
    // A 512-byte block size (the default) vs 4096: the size is the same here.
    let store4k = RbdStore::open(
        &spec,
        &RbdOptions {
            block_size: 4096,
            ..RbdOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store4k.block_size(), 4096);
    assert_eq!(store4k.size(), 96 * MIB);
}

#[test]
fn write_read_round_trip() {
    let c = need_cluster!();
    let (_spec, store) = c.open("rw", 64);
    // Unwritten space reads as zeroes.
    same(
        &read(&store, 0, 8192),
        &vec![0; 8192],
        "unwritten reads zero",
    );
    // Aligned, unaligned, and across the 4 MiB object boundary.
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (1_000_000, 513),
        (4 * MIB - 1536, 8192),
        (64 * MIB - 65536, 65536),
        (10 * MIB, 1 << 20),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 10, len);
        assert_eq!(store.write_at(&data, off, false), Ok(len), "write at {off}");
    }
    for (i, &(off, len)) in cases.iter().enumerate() {
        same(
            &read(&store, off, len),
            &pattern(i as u64 + 10, len),
            &format!("read at {off}"),
        );
    }
    // Bytes next to a write are untouched.
    assert_eq!(read(&store, 1_000_000 - 16, 16), vec![0; 16]);
    assert_eq!(read(&store, 1_000_000 + 513, 16), vec![0; 16]);
    // Writes past the end are refused.
    assert_eq!(
        store.write_at(&[1; 1024], 64 * MIB - 512, false),
        Err(StoreError::OUT_OF_RANGE)
    );
}

#[test]
fn fua_write_and_flush_are_visible_to_another_client() {
    let c = need_cluster!();
    let (spec, store) = c.open("fua", 16);
    let a = pattern(20, 65536);
    assert_eq!(store.write_at(&a, 4096, true), Ok(65536));
    let b = pattern(21, 4096);
    assert_eq!(store.write_at(&b, 8 * MIB, false), Ok(4096));
    assert_eq!(store.flush(), Ok(()));
    // A second, independent client (own connection, own cache) sees both.
    let other = RbdStore::open(
        &spec,
        &RbdOptions {
            read_only: true,
            ..RbdOptions::default()
        },
    )
    .unwrap();
    assert!(other.is_read_only());
    same(
        &read(&other, 4096, 65536),
        &a,
        "FUA write seen by another client",
    );
    same(
        &read(&other, 8 * MIB, 4096),
        &b,
        "flushed write seen by another client",
    );
    assert_eq!(other.write_at(&b, 0, false), Err(StoreError::READ_ONLY));
    assert_eq!(other.unmap(0, 4096), Err(StoreError::READ_ONLY));
    assert_eq!(other.write_zeroes(0, 4096), Err(StoreError::READ_ONLY));
}

#[test]
fn discard_then_reads_zero() {
    let c = need_cluster!();
    let (_spec, store) = c.open("discard", 16);
    let data = pattern(30, 2 * MIB as usize);
    assert_eq!(store.write_at(&data, 0, false), Ok(data.len()));
    // A 4 KiB range, a 64 KiB-aligned range and an unaligned one.
    for (off, len) in [
        (8192u64, 4096u64),
        (256 * 1024, 128 * 1024),
        (1_000_448, 3584),
    ] {
        assert_eq!(store.unmap(off, len), Ok(()));
        same(
            &read(&store, off, len as usize),
            &vec![0; len as usize],
            &format!("unmapped {off}+{len}"),
        );
        // The bytes around it keep their data.
        let (o, l) = (off as usize, len as usize);
        same(
            &read(&store, off - 512, 512),
            &data[o - 512..o],
            "data before the unmapped range",
        );
        same(
            &read(&store, off + len, 512),
            &data[o + l..o + l + 512],
            "data after the unmapped range",
        );
    }
    // Zero length is a no-op; past the end is refused.
    assert_eq!(store.unmap(4096, 0), Ok(()));
    assert_eq!(store.unmap(16 * MIB, 512), Err(StoreError::OUT_OF_RANGE));
}

#[test]
fn write_zeroes_zeroes() {
    let c = need_cluster!();
    let (_spec, store) = c.open("zeroes", 16);
    let data = pattern(40, MIB as usize);
    assert_eq!(store.write_at(&data, 0, false), Ok(data.len()));
    assert_eq!(store.write_zeroes(4096, 8192), Ok(()));
    assert_eq!(store.write_zeroes(100_000, 1000), Ok(()));
    let got = read(&store, 0, MIB as usize);
    let mut want = data.clone();
    want[4096..12288].fill(0);
    want[100_000..101_000].fill(0);
    same(&got, &want, "zeroed ranges");
    // Across the whole image, and then everything reads zero.
    assert_eq!(store.write_zeroes(0, 16 * MIB), Ok(()));
    same(
        &read(&store, 0, MIB as usize),
        &vec![0; MIB as usize],
        "whole image zeroed",
    );
    assert_eq!(
        store.write_zeroes(16 * MIB - 512, 1024),
        Err(StoreError::OUT_OF_RANGE)
    );
}

#[test]
fn lba_status_before_and_after() {
    let c = need_cluster!();
    let (_spec, store) = c.open("lba", 64);
    // A fresh image is one unmapped extent (the whole image fits the lookahead window).
    assert_eq!(
        store.lba_status(0),
        Ok(LbaStatus {
            mapped: false,
            len: 64 * MIB
        })
    );
    assert_eq!(store.write_at(&pattern(50, 8192), 8 * MIB, false), Ok(8192));
    assert_eq!(store.flush(), Ok(()));
    assert_eq!(
        store.lba_status(0),
        Ok(LbaStatus {
            mapped: false,
            len: 8 * MIB
        })
    );
    assert_eq!(
        store.lba_status(8 * MIB),
        Ok(LbaStatus {
            mapped: true,
            len: 8192
        })
    );
    assert_eq!(
        store.lba_status(8 * MIB + 4096),
        Ok(LbaStatus {
            mapped: true,
            len: 4096
        })
    );
    assert_eq!(
        store.lba_status(8 * MIB + 8192),
        Ok(LbaStatus {
            mapped: false,
            len: 56 * MIB - 8192
        })
    );
    // Discarding the whole object deallocates it again.
    assert_eq!(store.unmap(8 * MIB, 4 * MIB), Ok(()));
    assert_eq!(
        store.lba_status(0),
        Ok(LbaStatus {
            mapped: false,
            len: 64 * MIB
        })
    );
    assert_eq!(store.lba_status(64 * MIB), Err(StoreError::OUT_OF_RANGE));
}

#[test]
fn compare_and_write_success_and_miscompare() {
    let c = need_cluster!();
    let (spec, store) = c.open("caw", 16);
    let a = pattern(60, 512);
    let b = pattern(61, 512);
    assert_eq!(store.write_at(&a, 4096, false), Ok(512));
    // One sector: librbd's own, atomic compare-and-write.
    assert_eq!(
        store.compare_and_write(&a, &b, 4096, false),
        Ok(CompareAndWrite::Written)
    );
    assert_eq!(read(&store, 4096, 512), b);
    // Compare against stale data: differs at the byte that was changed.
    let mut stale = b.clone();
    stale[300] ^= 0xFF;
    let c2 = pattern(62, 512);
    assert_eq!(
        store.compare_and_write(&stale, &c2, 4096, false),
        Ok(CompareAndWrite::Miscompare { offset: 300 })
    );
    assert_eq!(read(&store, 4096, 512), b, "miscompare wrote nothing");
    // Differences at the first and the last byte.
    let mut first = b.clone();
    first[0] ^= 1;
    assert_eq!(
        store.compare_and_write(&first, &c2, 4096, true),
        Ok(CompareAndWrite::Miscompare { offset: 0 })
    );
    let mut last = b.clone();
    last[511] ^= 1;
    assert_eq!(
        store.compare_and_write(&last, &c2, 4096, true),
        Ok(CompareAndWrite::Miscompare { offset: 511 })
    );
    // With FUA: written and visible to another client of the image.
    assert_eq!(
        store.compare_and_write(&b, &c2, 4096, true),
        Ok(CompareAndWrite::Written)
    );
    let other = RbdStore::open(&spec, &RbdOptions::default()).unwrap();
    assert_eq!(read(&other, 4096, 512), c2, "FUA compare-and-write");
    // A sector in a later RADOS object (4 MiB objects): the offset is still relative to
    // the request.
    let far = 9 * MIB + 1536;
    let d = pattern(67, 512);
    assert_eq!(store.write_at(&d, far, false), Ok(512));
    let mut bad = d.clone();
    bad[77] ^= 0x10;
    assert_eq!(
        store.compare_and_write(&bad, &a, far, false),
        Ok(CompareAndWrite::Miscompare { offset: 77 })
    );
    assert_eq!(
        store.compare_and_write(&d, &a, far, false),
        Ok(CompareAndWrite::Written)
    );
    assert_eq!(read(&store, far, 512), a);
    // Two blocks (librbd does one sector only: emulated); first difference in the second
    // block, then a match.
    let two = pattern(63, 1024);
    assert_eq!(store.write_at(&two, 8192, false), Ok(1024));
    let mut cmp = two.clone();
    cmp[700] ^= 1;
    assert_eq!(
        store.compare_and_write(&cmp, &pattern(64, 1024), 8192, false),
        Ok(CompareAndWrite::Miscompare { offset: 700 })
    );
    same(
        &read(&store, 8192, 1024),
        &two,
        "multi-sector miscompare wrote nothing",
    );
    assert_eq!(
        store.compare_and_write(&two, &pattern(64, 1024), 8192, true),
        Ok(CompareAndWrite::Written)
    );
    same(
        &read(&store, 8192, 1024),
        &pattern(64, 1024),
        "multi-sector write",
    );
    // One 4 KiB block on a 4096-byte-block store (emulated too).
    let store4k = RbdStore::open(
        &spec,
        &RbdOptions {
            block_size: 4096,
            ..RbdOptions::default()
        },
    )
    .unwrap();
    let blk = pattern(65, 4096);
    assert_eq!(store4k.write_at(&blk, 3 * 4096, false), Ok(4096));
    assert_eq!(
        store4k.compare_and_write(&blk, &pattern(66, 4096), 3 * 4096, false),
        Ok(CompareAndWrite::Written)
    );
    same(
        &read(&store, 3 * 4096, 4096),
        &pattern(66, 4096),
        "4 KiB block",
    );
    // Length mismatch and range errors.
    assert_eq!(
        store.compare_and_write(&a, &b[..256], 0, false),
        Err(StoreError::INVALID)
    );
    assert_eq!(
        store.compare_and_write(&a, &b, 16 * MIB, false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.compare_and_write(&a, &b, 16 * MIB - 256, false),
        Err(StoreError::OUT_OF_RANGE)
    );
}

#[test]
fn compare_and_write_miscompare_offset_on_a_striped_image() {
    let c = need_cluster!();
    // Fancy striping: 64 KiB stripe units over 2 objects, so image offsets and object
    // offsets do not line up; librbd's mismatch offset has to be placed by reading.
    let spec = c.spec(&format!("striped-{}", std::process::id()));
    c.rbd(&[
        "create",
        &spec.image_spec(),
        "--size",
        "16M",
        "--stripe-unit",
        "65536",
        "--stripe-count",
        "2",
    ]);
    let store = RbdStore::open(&spec, &RbdOptions::default()).unwrap();
    // The second object's first stripe unit, and the first object's second one.
    for at in [65536 + 1536, 2 * 65536 + 1536] {
        let d = pattern(at, 512);
        assert_eq!(store.write_at(&d, at, false), Ok(512));
        for k in [0usize, 77, 511] {
            let mut bad = d.clone();
            bad[k] ^= 0x40;
            assert_eq!(
                store.compare_and_write(&bad, &[9; 512], at, false),
                Ok(CompareAndWrite::Miscompare { offset: k as u64 }),
                "offset {at}, byte {k}"
            );
        }
        assert_eq!(read(&store, at, 512), d);
        assert_eq!(
            store.compare_and_write(&d, &[9; 512], at, false),
            Ok(CompareAndWrite::Written)
        );
        assert_eq!(read(&store, at, 512), vec![9; 512]);
    }
}

#[test]
fn compare_and_write_is_atomic_between_threads() {
    let c = need_cluster!();
    let (_spec, store) = c.open("caw-mt", 16);
    let store = Arc::new(store);
    // A counter in one sector (native) and one in a 4 KiB range (emulated): each of 4
    // threads increments both 25 times by compare-and-write, retrying on a miscompare.
    // Lost updates would leave the counters short of 100.
    for (off, len) in [(0u64, 512usize), (65536, 4096)] {
        assert_eq!(store.write_at(&vec![0; len], off, false), Ok(len));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    let mut cur = vec![0u8; len];
                    while done < 25 {
                        assert_eq!(store.read_at(&mut cur, off), Ok(len));
                        let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
                        let mut next = cur.clone();
                        next[..8].copy_from_slice(&(n + 1).to_le_bytes());
                        next[len - 1] = (n + 1) as u8;
                        match store.compare_and_write(&cur, &next, off, false) {
                            Ok(CompareAndWrite::Written) => done += 1,
                            Ok(CompareAndWrite::Miscompare { offset }) => {
                                assert!(offset < 8 || offset == len as u64 - 1, "{offset}")
                            }
                            Err(e) => panic!("compare-and-write: {e}"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker");
        }
        let got = read(&store, off, len);
        assert_eq!(u64::from_le_bytes(got[..8].try_into().unwrap()), 100);
        assert_eq!(got[len - 1], 100);
    }
}

#[test]
fn write_same_repeats_pattern() {
    let c = need_cluster!();
    let (_spec, store) = c.open("wsame", 16);
    let block = pattern(70, 512);
    assert_eq!(store.write_same(4096, 64 * 512, &block, false), Ok(()));
    let got = read(&store, 4096, 64 * 512);
    for chunk in got.chunks(512) {
        assert_eq!(chunk, &block[..]);
    }
    assert_eq!(read(&store, 4096 - 512, 512), vec![0; 512]);
    assert_eq!(read(&store, 4096 + 64 * 512, 512), vec![0; 512]);
    // Across an object boundary, with FUA, with a 4 KiB pattern.
    let big = pattern(71, 4096);
    assert_eq!(
        store.write_same(4 * MIB - 8192, 4 * 4096, &big, true),
        Ok(())
    );
    let got = read(&store, 4 * MIB - 8192, 4 * 4096);
    for chunk in got.chunks(4096) {
        same(chunk, &big, "4 KiB pattern");
    }
    // A zero pattern reads back as zeroes.
    assert_eq!(store.write_same(4096, 8 * 512, &[0; 512], false), Ok(()));
    assert_eq!(read(&store, 4096, 8 * 512), vec![0; 8 * 512]);
    assert_eq!(read(&store, 4096 + 8 * 512, 512), block);
    assert_eq!(
        store.write_same(0, 700, &block, false),
        Err(StoreError::INVALID)
    );
    assert_eq!(
        store.write_same(0, 512, &[], false),
        Err(StoreError::INVALID)
    );
    assert_eq!(store.write_same(0, 0, &block, false), Ok(()));
    assert_eq!(
        store.write_same(16 * MIB - 512, 1024, &block, false),
        Err(StoreError::OUT_OF_RANGE)
    );
}

#[test]
fn native_calls_through_dyn_backing_store_and_read_only() {
    let c = need_cluster!();
    let (spec, store) = c.open("dyn", 16);
    // As the daemon holds it.
    let store: Arc<dyn BackingStore> = Arc::new(store);
    let a = pattern(80, 512);
    assert_eq!(store.write_at(&a, 0, false), Ok(512));
    assert_eq!(
        store.compare_and_write(&a, &[1; 512], 0, false),
        Ok(CompareAndWrite::Written)
    );
    assert_eq!(
        store.compare_and_write(&a, &[2; 512], 0, false),
        Ok(CompareAndWrite::Miscompare { offset: 0 })
    );
    assert_eq!(store.write_same(512, 1024, &[3; 512], false), Ok(()));
    let mut back = vec![0u8; 1536];
    assert_eq!(store.read_at(&mut back, 0), Ok(1536));
    assert!(back[..512].iter().all(|b| *b == 1));
    assert!(back[512..].iter().all(|b| *b == 3));
    assert_eq!(store.refresh_size(), Ok(None));
    // A read-only store refuses both before reaching librbd.
    let ro = RbdStore::open(
        &spec,
        &RbdOptions {
            read_only: true,
            ..RbdOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        ro.compare_and_write(&[1; 512], &[2; 512], 0, false),
        Err(StoreError::READ_ONLY)
    );
    assert_eq!(
        ro.write_same(0, 512, &[1; 512], false),
        Err(StoreError::READ_ONLY)
    );
}

#[test]
fn shrink_makes_io_beyond_the_end_out_of_range() {
    let c = need_cluster!();
    let (spec, store) = c.open("shrink", 32);
    let data = pattern(90, 4096);
    assert_eq!(store.write_at(&data, 20 * MIB, false), Ok(4096));
    c.rbd(&[
        "resize",
        &spec.image_spec(),
        "--size",
        "16M",
        "--allow-shrink",
    ]);
    // Before the store looked again: whatever librbd does with it (EINVAL, a short read,
    // a write clipped at the new end and reported done) becomes OUT_OF_RANGE, never a
    // success.
    assert_eq!(store.size(), 32 * MIB);
    let mut buf = vec![0u8; 4096];
    assert_eq!(
        store.read_at(&mut buf, 20 * MIB),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.read_at(&mut buf, 16 * MIB - 2048),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_at(&data, 20 * MIB, false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_at(&data, 16 * MIB - 2048, true),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_same(16 * MIB - 512, 1024, &[1; 512], false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_zeroes(16 * MIB - 512, 1024),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.unmap(16 * MIB - 512, 1024),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.compare_and_write(&[0; 1024], &[1; 1024], 16 * MIB - 512, false),
        Err(StoreError::OUT_OF_RANGE)
    );
    // Entirely inside the new size: still fine.
    assert_eq!(store.write_at(&data, 8 * MIB, false), Ok(4096));
    assert_eq!(store.refresh_size(), Ok(Some(16 * MIB)));
    assert_eq!(store.size(), 16 * MIB);
    assert_eq!(store.refresh_size(), Ok(None));
    // Everything beyond the new end is refused up front.
    assert_eq!(
        store.read_at(&mut buf, 16 * MIB - 2048),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_at(&data, 16 * MIB, false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.compare_and_write(&[0; 512], &[1; 512], 16 * MIB, false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(
        store.write_same(16 * MIB - 512, 1024, &[1; 512], false),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(store.unmap(16 * MIB, 512), Err(StoreError::OUT_OF_RANGE));
    assert_eq!(store.lba_status(16 * MIB), Err(StoreError::OUT_OF_RANGE));
    // The last block still works.
    assert_eq!(store.write_at(&data[..512], 16 * MIB - 512, false), Ok(512));
    assert_eq!(read(&store, 16 * MIB - 512, 512), data[..512]);
}

#[test]
fn eight_threads_concurrent_io() {
    let c = need_cluster!();
    let (_spec, store) = c.open("mt", 64);
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Each thread owns 8 MiB, writes 32 blocks of 64 KiB and reads them back.
                let base = t * 8 * MIB;
                for i in 0..32u64 {
                    let data = pattern(t * 1000 + i, 65536);
                    let off = base + i * 65536 * 3;
                    assert_eq!(store.write_at(&data, off, i % 8 == 0), Ok(65536));
                    let mut back = vec![0; 65536];
                    assert_eq!(store.read_at(&mut back, off), Ok(65536));
                    same(&back, &data, &format!("thread {t} block {i}"));
                }
                store.flush().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    for t in 0..8u64 {
        for i in [0u64, 17, 31] {
            let off = t * 8 * MIB + i * 65536 * 3;
            same(
                &read(&store, off, 65536),
                &pattern(t * 1000 + i, 65536),
                "after all threads",
            );
        }
    }
}

fn poll_fd(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    r == 1 && pfd.revents & libc::POLLIN != 0
}

/// Reap until `n` completions arrived, waiting on the eventfd like a reactor.
fn reap_fd(engine: &RbdEngine, n: usize) -> Vec<Completion> {
    let fd = engine.completion_fd().expect("eventfd mode");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            out.len()
        );
        if poll_fd(fd, Duration::from_secs(5)) {
            engine.drain(&mut out);
        }
    }
    assert_eq!(out.len(), n, "exactly one completion per request");
    out
}

#[test]
fn engine_with_eventfd() {
    let c = need_cluster!();
    let (_spec, store) = c.open("engine", 32);
    let store = Arc::new(store);
    let engine = RbdEngine::new(store.clone(), Notify::EventFd).unwrap();
    assert_eq!(engine.name(), "rbd");
    assert_eq!(engine.store().size(), 32 * MIB);
    // 64 writes in flight at once, one batch.
    let mut reqs: Vec<Request> = (0..64u64)
        .map(|i| {
            Request::write(
                i,
                IoBuf::from_slice(&pattern(100 + i, 8192)),
                i * 65536,
                i == 5,
            )
        })
        .collect();
    engine.submit_batch(&mut reqs);
    assert!(reqs.is_empty());
    let mut done = reap_fd(&engine, 64);
    done.sort_by_key(|c| c.tag);
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.tag, i as u64);
        assert_eq!(c.op, Op::Write);
        assert_eq!(c.result, Ok(8192), "write completions report the length");
        same(
            &c.buf[..],
            &pattern(100 + i as u64, 8192)[..],
            "write buffer handed back",
        );
    }
    // Read them back through the engine.
    for i in 0..64u64 {
        engine.submit(Request::read(1000 + i, IoBuf::alloc(8192), i * 65536));
    }
    for c in reap_fd(&engine, 64) {
        let i = c.tag - 1000;
        assert_eq!(c.result, Ok(8192));
        same(
            &c.buf[..],
            &pattern(100 + i, 8192)[..],
            &format!("read {i}"),
        );
    }
    // Flush, unmap, write-zeroes, LBA status, a zero-length read, and errors.
    engine.submit(Request::flush(1));
    engine.submit(Request::unmap(2, 0, 65536));
    engine.submit(Request::write_zeroes(3, 65536, 8192));
    engine.submit(Request::read(4, IoBuf::empty(), 0));
    engine.submit(Request::read(5, IoBuf::alloc(512), 32 * MIB));
    engine.submit(Request::read(6, IoBuf::empty(), 32 * MIB));
    let mut done = reap_fd(&engine, 6);
    done.sort_by_key(|c| c.tag);
    let results: Vec<_> = done.iter().map(|c| (c.tag, c.result)).collect();
    assert_eq!(
        results,
        vec![
            (1, Ok(0)),
            (2, Ok(0)),
            (3, Ok(0)),
            (4, Ok(0)),
            (5, Err(StoreError::OUT_OF_RANGE)),
            (6, Ok(0)),
        ]
    );
    same(
        &read(&store, 0, 8192),
        &vec![0; 8192],
        "unmapped by the engine",
    );
    same(
        &read(&store, 65536, 8192),
        &vec![0; 8192],
        "zeroed by the engine",
    );
    same(
        &read(&store, 2 * 65536, 8192),
        &pattern(102, 8192),
        "untouched",
    );
    // librbd reports allocation per object: object 0 (written up to 63 * 64 KiB + 8 KiB)
    // stays mapped after the partial discard; object 1 was never written.
    engine.submit(Request::lba_status(7, 0));
    engine.submit(Request::lba_status(8, 4 * MIB));
    let mut done = reap_fd(&engine, 2);
    done.sort_by_key(|c| c.tag);
    assert_eq!(done[0].op, Op::LbaStatus);
    assert_eq!(
        done[0].lba_status,
        Some(LbaStatus {
            mapped: true,
            len: 63 * 65536 + 8192
        })
    );
    assert_eq!(done[0].result, Ok(63 * 65536 + 8192));
    assert_eq!(
        done[1].lba_status,
        Some(LbaStatus {
            mapped: false,
            len: 28 * MIB
        })
    );
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.in_librbd(), 0);
    // After shutdown every request still completes, cancelled.
    engine.shutdown();
    engine.submit(Request::read(9, IoBuf::alloc(512), 0));
    engine.submit(Request::lba_status(10, 0));
    let mut done = reap_fd(&engine, 2);
    done.sort_by_key(|c| c.tag);
    assert_eq!(done[0].result, Err(StoreError::CANCELLED));
    assert_eq!(done[1].result, Err(StoreError::CANCELLED));
}

#[test]
fn engine_with_callback_and_shutdown_waits() {
    let c = need_cluster!();
    let (_spec, store) = c.open("engcb", 32);
    let store = Arc::new(store);
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    let engine = RbdEngine::new(
        store.clone(),
        Notify::Callback(Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        })),
    )
    .unwrap();
    assert_eq!(engine.completion_fd(), None);
    for i in 0..32u64 {
        engine.submit(Request::write(
            i,
            IoBuf::from_slice(&pattern(200 + i, 65536)),
            i * MIB,
            false,
        ));
    }
    // Shut down with writes in flight: it waits for librbd, and every request completes
    // (successfully: they had started).
    engine.shutdown();
    assert_eq!(engine.in_librbd(), 0);
    let mut done = Vec::new();
    engine.drain(&mut done);
    assert_eq!(done.len(), 32);
    assert!(done.iter().all(|c| c.result == Ok(65536)), "{done:?}");
    assert!(wakes.load(Ordering::Relaxed) >= 1);
    assert_eq!(engine.in_flight(), 0);
    drop(engine);
    for i in [0u64, 31] {
        same(
            &read(&store, i * MIB, 65536),
            &pattern(200 + i, 65536),
            "written before shutdown",
        );
    }
}

#[test]
fn engine_refuses_writes_on_snapshot() {
    let c = need_cluster!();
    let (spec, store) = c.open("snap", 16);
    let data = pattern(80, 4096);
    assert_eq!(store.write_at(&data, 0, false), Ok(4096));
    assert_eq!(store.flush(), Ok(()));
    c.rbd(&["snap", "create", &format!("{}@s1", spec.image_spec())]);
    assert_eq!(store.write_at(&pattern(81, 4096), 0, false), Ok(4096));
    let mut snap_spec = spec.clone();
    snap_spec.snap = Some("s1".into());
    let snap = Arc::new(RbdStore::open(&snap_spec, &RbdOptions::default()).unwrap());
    assert!(snap.is_read_only());
    same(
        &read(&snap, 0, 4096),
        &data,
        "the snapshot keeps the old data",
    );
    let engine = RbdEngine::new(snap.clone(), Notify::EventFd).unwrap();
    engine.submit(Request::write(1, IoBuf::from_slice(&data), 0, false));
    engine.submit(Request::unmap(2, 0, 512));
    engine.submit(Request::read(3, IoBuf::alloc(4096), 0));
    let mut done = reap_fd(&engine, 3);
    done.sort_by_key(|c| c.tag);
    assert_eq!(done[0].result, Err(StoreError::READ_ONLY));
    assert_eq!(done[1].result, Err(StoreError::READ_ONLY));
    assert_eq!(done[2].result, Ok(4096));
    same(&done[2].buf[..], &data[..], "snapshot read");
}

#[test]
fn zero_length_requests_do_not_reach_librbd() {
    let c = need_cluster!();
    let (_spec, store) = c.open("zero", 16);
    // librbd aborts the process on a zero-length read with a null buffer.
    assert_eq!(store.read_at(&mut [], 0), Ok(0));
    assert_eq!(store.read_at(&mut [], 16 * MIB), Ok(0));
    assert_eq!(store.write_at(&[], 0, true), Ok(0));
    assert_eq!(store.write_zeroes(0, 0), Ok(()));
    assert_eq!(
        store.compare_and_write(&[], &[], 0, false),
        Ok(CompareAndWrite::Written)
    );
    assert_eq!(
        store.read_at(&mut [], 16 * MIB + 1),
        Err(StoreError::OUT_OF_RANGE)
    );
    // Still alive and working.
    assert_eq!(store.write_at(&[7; 512], 0, false), Ok(512));
    assert_eq!(read(&store, 0, 512), vec![7; 512]);
}

#[test]
fn open_errors_are_clear() {
    let c = need_cluster!();
    let e = RbdStore::open(&c.spec("no-such-image"), &RbdOptions::default()).unwrap_err();
    match &e.kind {
        OpenErrorKind::Remote(why) => assert!(why.contains("no-such-image"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.to_string().starts_with("rbd:"), "{e}");
    let mut spec = c.spec("x");
    spec.pool = "no-such-pool".into();
    let e = RbdStore::open(&spec, &RbdOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no-such-pool"), "{e}");
    let mut spec = c.spec("x");
    spec.conf = Some("/nonexistent/ceph.conf".into());
    let e = RbdStore::open(&spec, &RbdOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ceph.conf"), "{e}");
    let e = RbdStore::open(
        &c.spec("x"),
        &RbdOptions {
            block_size: 1000,
            ..RbdOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, OpenErrorKind::BadBlockSize(1000));
    let e = RbdStore::open(
        &c.spec("x"),
        &RbdOptions {
            config: vec![("no_such_option".into(), "1".into())],
            ..RbdOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("no_such_option"), "{e}");
    assert_eq!(StoreError::from_errno(libc::EILSEQ).kind(), ErrorKind::Io);
}
