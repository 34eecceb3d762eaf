//! FileStore against real files on disk.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use backstore::{
    BackingStore, BufPool, ErrorKind, FileStore, LbaStatus, OpenErrorKind, OpenOptions, StoreError,
};

/// A temporary directory on a disk file system (not tmpfs), so holes and O_DIRECT work.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").expect("temp dir under /var/tmp")
}

fn create(path: &Path, size: u64, bs: u32) -> FileStore {
    FileStore::open(
        path,
        &OpenOptions {
            create_size: Some(size),
            block_size: bs,
            ..Default::default()
        },
    )
    .expect("create store")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn creates_a_sparse_file_of_the_given_size() {
    let dir = disk_dir();
    let path = dir.path().join("disk.img");
    let s = create(&path, 8 << 20, 512);
    assert_eq!(s.size(), 8 << 20);
    assert_eq!(s.block_size(), 512);
    assert!(!s.is_read_only() && s.is_thin() && !s.is_block_device());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 8 << 20);
    assert_eq!(meta.blocks(), 0, "no block allocated");
    assert_eq!(
        s.lba_status(0),
        Ok(LbaStatus {
            mapped: false,
            len: 8 << 20
        })
    );
    let mut buf = vec![0xaa; 4096];
    assert_eq!(s.read_at(&mut buf, 4096), Ok(4096));
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn data_survives_reopen_after_fua_and_flush() {
    let dir = disk_dir();
    let path = dir.path().join("disk.img");
    let a = pattern(8192, 1);
    let b = pattern(4096, 2);
    {
        let s = create(&path, 1 << 20, 512);
        assert_eq!(s.write_at(&a, 512, true), Ok(8192));
        assert_eq!(s.write_at(&b, 65536, false), Ok(4096));
        s.flush().unwrap();
    }
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(&raw[512..512 + 8192], &a[..]);
    assert_eq!(&raw[65536..65536 + 4096], &b[..]);
    let s = FileStore::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(s.size(), 1 << 20, "size taken from the existing file");
    let mut buf = vec![0; 8192];
    s.read_at(&mut buf, 512).unwrap();
    assert_eq!(buf, a);
}

#[test]
fn refuses_bad_geometry_with_a_one_line_error() {
    let dir = disk_dir();
    let path = dir.path().join("odd.img");
    let e = FileStore::open(
        &path,
        &OpenOptions {
            create_size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::SizeNotMultiple {
            size: 1000,
            block_size: 512
        }
    );
    assert!(!path.exists(), "nothing created on error");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()) && !msg.contains('\n'),
        "{msg}"
    );

    std::fs::write(&path, vec![0u8; 1000]).unwrap();
    let e = FileStore::open(&path, &OpenOptions::default()).unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::SizeNotMultiple {
            size: 1000,
            block_size: 512
        }
    );

    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let e = FileStore::open(
        &small,
        &OpenOptions {
            create_size: Some(8192),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::TooSmall {
            actual: 4096,
            wanted: 8192
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: is 4096 bytes, smaller than the configured size 8192",
            small.display()
        )
    );
    // A larger file with an explicit smaller size exports only that much.
    let s = FileStore::open(
        &small,
        &OpenOptions {
            create_size: Some(2048),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.size(), 2048);

    let e = FileStore::open(
        &small,
        &OpenOptions {
            block_size: 1000,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, OpenErrorKind::BadBlockSize(1000));
    let e = FileStore::open(
        &small,
        &OpenOptions {
            block_size: 8192,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::SizeNotMultiple {
            size: 4096,
            block_size: 8192
        }
    );

    let missing = dir.path().join("missing.img");
    let e = FileStore::open(&missing, &OpenOptions::default()).unwrap_err();
    assert_eq!(e.kind, OpenErrorKind::Os(libc::ENOENT));
    let e = FileStore::open(
        &missing,
        &OpenOptions {
            read_only: true,
            create_size: Some(4096),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::Os(libc::ENOENT),
        "read-only never creates"
    );
    let e = FileStore::open(dir.path(), &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(
            e.kind,
            OpenErrorKind::Os(libc::EISDIR) | OpenErrorKind::NotFileOrDevice
        ),
        "{e}"
    );
}

#[test]
fn read_only_and_out_of_range_errors() {
    let dir = disk_dir();
    let path = dir.path().join("ro.img");
    std::fs::write(&path, pattern(16384, 3)).unwrap();
    let s = FileStore::open(
        &path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(s.is_read_only());
    assert_eq!(s.write_at(&[0; 512], 0, false), Err(StoreError::READ_ONLY));
    assert_eq!(s.unmap(0, 512), Err(StoreError::READ_ONLY));
    assert_eq!(s.write_zeroes(0, 512), Err(StoreError::READ_ONLY));
    let mut buf = vec![0; 512];
    s.read_at(&mut buf, 512).unwrap();
    assert_eq!(buf, pattern(16384, 3)[512..1024]);
    let e = s.read_at(&mut buf, 16384 - 256).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfRange);
    assert_eq!(
        s.read_at(&mut buf, u64::MAX - 10),
        Err(StoreError::OUT_OF_RANGE)
    );
    assert_eq!(s.lba_status(16384), Err(StoreError::OUT_OF_RANGE));
    s.flush().unwrap();
}

#[test]
fn unmap_punches_holes_that_lba_status_reports() {
    let dir = disk_dir();
    let path = dir.path().join("thin.img");
    let s = create(&path, 4 << 20, 4096);
    let data = pattern(1 << 20, 9);
    s.write_at(&data, 0, false).unwrap();
    s.flush().unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks();
    assert!(before >= 2048, "1 MiB allocated: {before} sectors");
    assert_eq!(
        s.lba_status(0),
        Ok(LbaStatus {
            mapped: true,
            len: 1 << 20
        })
    );
    assert_eq!(
        s.lba_status(1 << 20),
        Ok(LbaStatus {
            mapped: false,
            len: 3 << 20
        })
    );

    s.unmap(256 << 10, 256 << 10).unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert_eq!(before - after, 512, "256 KiB deallocated");
    assert_eq!(
        s.lba_status(0),
        Ok(LbaStatus {
            mapped: true,
            len: 256 << 10
        })
    );
    assert_eq!(
        s.lba_status(256 << 10),
        Ok(LbaStatus {
            mapped: false,
            len: 256 << 10
        })
    );
    assert_eq!(
        s.lba_status(300 << 10),
        Ok(LbaStatus {
            mapped: false,
            len: 212 << 10
        })
    );
    assert_eq!(
        s.lba_status(512 << 10),
        Ok(LbaStatus {
            mapped: true,
            len: 512 << 10
        })
    );
    let mut buf = vec![0xff; 1 << 20];
    s.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..256 << 10], &data[..256 << 10]);
    assert!(buf[256 << 10..512 << 10].iter().all(|&b| b == 0));
    assert_eq!(&buf[512 << 10..], &data[512 << 10..]);

    // Zeroing keeps the range mapped but reads zeroes.
    s.write_zeroes(512 << 10, 8192).unwrap();
    s.read_at(&mut buf[..16384], 512 << 10).unwrap();
    assert!(buf[..8192].iter().all(|&b| b == 0));
    assert_eq!(
        &buf[8192..16384],
        &data[(512 << 10) + 8192..(512 << 10) + 16384]
    );
    assert!(s.lba_status(512 << 10).unwrap().mapped);
    assert_eq!(s.unmap(4 << 20, 4096), Err(StoreError::OUT_OF_RANGE));
    assert_eq!(s.unmap(0, 0), Ok(()));
}

#[test]
fn page_cache_hits_are_served_inline() {
    let dir = disk_dir();
    let path = dir.path().join("cached.img");
    let s = create(&path, 1 << 20, 512);
    let data = pattern(4096, 4);
    s.write_at(&data, 8192, false).unwrap();
    let mut buf = vec![0; 4096];
    assert_eq!(s.try_read_cached(&mut buf, 8192), Some(Ok(4096)));
    assert_eq!(buf, data);
    assert_eq!(
        s.try_read_cached(&mut buf, (1 << 20) - 512),
        Some(Err(StoreError::OUT_OF_RANGE))
    );
}

/// Zero-copy reads: a range the page cache holds whole is approved and goes to a socket
/// with sendfile byte for byte; a range past the end, an empty one, or one whose pages were
/// never cached is not approved.
#[test]
fn cached_ranges_go_to_a_socket_without_a_copy() {
    use std::io::Read;
    use std::os::fd::AsFd;
    let dir = disk_dir();
    let path = dir.path().join("zc.img");
    let s = create(&path, 64 << 20, 512);
    let data = pattern(200_000, 7);
    s.write_at(&data, 4096 + 512, false).unwrap();
    if !s.can_send_cached(4096 + 512, 200_000) {
        // cachestat(2) arrived in Linux 6.5; before it the store never approves.
        eprintln!("skipping: no cachestat on this kernel");
        return;
    }
    assert!(!s.can_send_cached(4096, 0));
    assert!(!s.can_send_cached((64 << 20) - 512, 1024), "past the end");
    // Dropped from the page cache: not approved until read again.
    let fd = s.file().as_fd();
    // SAFETY: posix_fadvise reads no memory; the fd is borrowed from the open store.
    let r = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    s.file().sync_all().unwrap();
    // SAFETY: as above.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert!(!s.can_send_cached(32 << 20, 65536), "never read");
    let mut back = vec![0u8; 200_000];
    s.read_at(&mut back, 4096 + 512).unwrap();
    assert!(s.can_send_cached(4096 + 512, 200_000));

    let (mut rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        got
    });
    let mut sent = 0;
    while sent < data.len() {
        let n = s
            .send_cached(tx.as_fd(), 4096 + 512 + sent as u64, data.len() - sent)
            .unwrap();
        assert!(n > 0);
        sent += n;
    }
    assert_eq!(
        s.send_cached(tx.as_fd(), (64 << 20) - 512, 1024)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::InvalidInput
    );
    drop(tx);
    assert_eq!(reader.join().unwrap(), data);
}

/// O_DIRECT: pool buffers go straight through, unaligned caller memory is bounced, an
/// unaligned offset or length is rejected as `Invalid`.
#[test]
fn direct_io_alignment() {
    let dir = disk_dir();
    let path = dir.path().join("direct.img");
    let opts = OpenOptions {
        direct: true,
        create_size: Some(1 << 20),
        block_size: 4096,
        ..Default::default()
    };
    let s = match FileStore::open(&path, &opts) {
        Ok(s) => s,
        Err(e) if e.kind == OpenErrorKind::DirectUnsupported => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(s.is_direct());
    assert_eq!(
        s.try_read_cached(&mut [0; 4096], 0),
        None,
        "no inline path with O_DIRECT"
    );
    let pool = BufPool::new(4);
    let mut buf = pool.get(8192);
    buf.copy_from_slice(&pattern(8192, 5));
    assert_eq!(s.write_at(&buf, 4096, true), Ok(8192));
    // Unaligned caller memory: offset the slice by one byte inside a Vec.
    let mut backing = vec![0u8; 8192 + 1];
    let unaligned = &mut backing[1..];
    assert_eq!(s.read_at(unaligned, 4096), Ok(8192));
    assert_eq!(unaligned, &pattern(8192, 5)[..]);
    let src = pattern(4096 + 1, 6);
    assert_eq!(s.write_at(&src[1..], 65536, false), Ok(4096));
    let mut check = pool.get(4096);
    s.read_at(&mut check, 65536).unwrap();
    assert_eq!(&check[..], &src[1..]);
    // Unaligned offset / length.
    assert_eq!(s.read_at(&mut check[..512], 0), Err(StoreError::INVALID));
    assert_eq!(s.write_at(&check, 512, false), Err(StoreError::INVALID));
    assert_eq!(s.write_zeroes(512, 4096), Err(StoreError::INVALID));
    s.write_zeroes(4096, 4096).unwrap();
    s.read_at(&mut check, 4096).unwrap();
    assert!(check.iter().all(|&b| b == 0));
}

#[test]
fn o_sync_store_round_trips() {
    let dir = disk_dir();
    let path = dir.path().join("sync.img");
    let s = FileStore::open(
        &path,
        &OpenOptions {
            sync: true,
            create_size: Some(65536),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(s.is_sync());
    s.write_at(&pattern(512, 7), 0, true).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..512], &pattern(512, 7)[..]);
}

/// With blocks larger than the file system's, a block holding any data counts as mapped.
#[test]
fn lba_status_rounds_partial_blocks_to_mapped() {
    let dir = disk_dir();
    let path = dir.path().join("big-blocks.img");
    let s = create(&path, 1 << 20, 65536);
    s.write_at(&pattern(4096, 8), 65536 + 8192, false).unwrap();
    assert_eq!(
        s.lba_status(0),
        Ok(LbaStatus {
            mapped: false,
            len: 65536
        })
    );
    assert_eq!(
        s.lba_status(65536),
        Ok(LbaStatus {
            mapped: true,
            len: 65536
        })
    );
    assert_eq!(
        s.lba_status(131072),
        Ok(LbaStatus {
            mapped: false,
            len: (1 << 20) - 131072
        })
    );
    // Data in the last block: the extent is clamped at the end of the store.
    s.write_at(&pattern(4096, 9), (1 << 20) - 4096, false)
        .unwrap();
    assert_eq!(
        s.lba_status((1 << 20) - 65536),
        Ok(LbaStatus {
            mapped: true,
            len: 65536
        })
    );
    assert_eq!(
        s.lba_status(131072),
        Ok(LbaStatus {
            mapped: false,
            len: (1 << 20) - 131072 - 65536
        })
    );
}

/// A loop device attached for one test, detached on drop.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Option<Self> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping: losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.0])
            .status();
    }
}

/// Block devices: size from BLKGETSIZE64, sector size from BLKSSZGET, unmap and zeroing
/// through fallocate / BLKZEROOUT. Skipped where loop devices cannot be attached.
#[test]
fn block_device_through_a_loop_device() {
    let dir = disk_dir();
    let backing = dir.path().join("loop.img");
    std::fs::write(&backing, pattern(8 << 20, 1)).unwrap();
    let Some(dev) = LoopDevice::attach(&backing) else {
        return;
    };
    let e = FileStore::open(
        &dev.0,
        &OpenOptions {
            create_size: Some(16 << 20),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        OpenErrorKind::TooSmall {
            actual: 8 << 20,
            wanted: 16 << 20
        }
    );
    for direct in [false, true] {
        let s = FileStore::open(
            &dev.0,
            &OpenOptions {
                direct,
                block_size: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.is_block_device());
        assert_eq!(s.size(), 8 << 20);
        let mut buf = BufPool::new(2).get(8192);
        s.read_at(&mut buf, 4096).unwrap();
        assert_eq!(
            &buf[..],
            &pattern(8 << 20, 1)[4096..12288],
            "direct={direct}"
        );
        buf.copy_from_slice(&pattern(8192, 2));
        s.write_at(&buf, 65536, true).unwrap();
        s.read_at(&mut buf, 65536).unwrap();
        assert_eq!(&buf[..], &pattern(8192, 2)[..]);
        s.unmap(1 << 20, 1 << 20).unwrap();
        s.write_zeroes(3 << 20, 65536).unwrap();
        let mut big = BufPool::new(1).get(1 << 20);
        s.read_at(&mut big, 1 << 20).unwrap();
        assert!(
            big.iter().all(|&b| b == 0),
            "unmapped range reads zeroes (direct={direct})"
        );
        s.read_at(&mut big[..65536], 3 << 20).unwrap();
        assert!(big[..65536].iter().all(|&b| b == 0));
        assert_eq!(
            s.lba_status(0),
            Ok(LbaStatus {
                mapped: true,
                len: 8 << 20
            })
        );
        assert_eq!(
            s.read_at(&mut big[..4096], 8 << 20),
            Err(StoreError::OUT_OF_RANGE)
        );
        s.flush().unwrap();
    }
}

#[test]
fn only_buffered_writes_to_a_file_ask_to_run_one_at_a_time() {
    let dir = disk_dir();
    let path = dir.path().join("disk.img");
    assert!(create(&path, 1 << 20, 512).serializes_writes());
    for (direct, sync) in [(true, false), (false, true)] {
        let s = FileStore::open(
            &path,
            &OpenOptions {
                direct,
                sync,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!s.serializes_writes(), "direct {direct}, sync {sync}");
    }
}

#[test]
fn vectored_writes_land_back_to_back_whatever_the_piece_count() {
    use std::io::IoSlice;
    let dir = disk_dir();
    let path = dir.path().join("disk.img");
    drop(create(&path, 4 << 20, 512));
    for direct in [false, true] {
        let s = FileStore::open(
            &path,
            &OpenOptions {
                direct,
                ..Default::default()
            },
        )
        .unwrap();
        let seed = u8::from(direct);
        // Three pieces of unequal length, then more pieces than one pwritev takes.
        for (pieces, len) in [(vec![4096, 8192, 512], 12800), (vec![512; 1100], 563_200)] {
            let data = pattern(len, seed.wrapping_add(pieces.len() as u8));
            let mut slices = Vec::new();
            let mut at = 0;
            for n in &pieces {
                slices.push(IoSlice::new(&data[at..at + n]));
                at += n;
            }
            assert_eq!(
                s.write_vectored_at(&slices, 4096),
                Ok(len),
                "direct {direct}"
            );
            let mut back = vec![0; len + 1024];
            s.read_at(&mut back, 3584).unwrap();
            assert!(back[..512].iter().all(|&b| b == 0), "before the range");
            assert!(
                back[512..512 + len] == data[..],
                "direct {direct}, {} pieces",
                pieces.len()
            );
            assert!(back[512 + len..].iter().all(|&b| b == 0), "after the range");
            // Clean up for the next case.
            s.write_zeroes(4096, len as u64).unwrap();
        }
        // Past the end: refused whole, nothing written.
        let piece = vec![0xee; 4096];
        let two = [IoSlice::new(&piece), IoSlice::new(&piece)];
        assert_eq!(
            s.write_vectored_at(&two, (4 << 20) - 4096),
            Err(StoreError::OUT_OF_RANGE)
        );
        let mut tail = vec![0; 4096];
        s.read_at(&mut tail, (4 << 20) - 4096).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
    }
    let ro = FileStore::open(
        &path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let piece = [0u8; 512];
    assert_eq!(
        ro.write_vectored_at(&[IoSlice::new(&piece)], 0),
        Err(StoreError::READ_ONLY)
    );
}
