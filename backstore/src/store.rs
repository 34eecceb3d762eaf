//! The [`BackingStore`] trait: positional block I/O, shared by every engine.
//!
//! A store is `Send + Sync` and every method takes `&self`, so one `Arc<dyn BackingStore>`
//! serves a thread-per-connection runtime (which calls these methods directly, blocking)
//! and any number of engine threads at once.

use std::io;
use std::os::fd::BorrowedFd;

use crate::error::StoreError;

/// The allocation state of the extent that starts at an offset (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatus {
    /// Whether the extent holds data (`true`) or is deallocated and reads as zeroes.
    pub mapped: bool,
    /// Length of the extent in bytes, a multiple of the block size, clamped at the end of
    /// the store.
    pub len: u64,
}

/// The outcome of [`BackingStore::compare_and_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareAndWrite {
    /// The data matched and the new data was written.
    Written,
    /// The data differed; nothing was written.
    Miscompare {
        /// Offset of the first differing byte, relative to the start of the request
        /// (what SCSI reports in the sense INFORMATION field, in bytes).
        offset: u64,
    },
}

/// Positional block I/O on one logical unit's storage.
///
/// Offsets and lengths are bytes. Every method first checks that the range lies inside
/// [`size`](Self::size) and returns [`StoreError::OUT_OF_RANGE`] otherwise; writes to a
/// read-only store return [`StoreError::READ_ONLY`].
pub trait BackingStore: Send + Sync {
    /// Size in bytes (a multiple of [`block_size`](Self::block_size)).
    fn size(&self) -> u64;

    /// Logical block size in bytes.
    fn block_size(&self) -> u32;

    /// Whether writes, unmaps and zeroing are refused.
    fn is_read_only(&self) -> bool;

    /// Whether [`unmap`](Self::unmap) deallocates (thin provisioning) rather than only
    /// writing zeroes. Unmapped ranges always read back as zeroes.
    fn is_thin(&self) -> bool;

    /// Granularity in bytes at which [`unmap`](Self::unmap) really deallocates (a range
    /// smaller than this, or its unaligned edges, is zeroed but stays mapped).
    fn unmap_granularity(&self) -> u64 {
        u64::from(self.block_size())
    }

    /// Fill `buf` from `offset`. Returns `buf.len()` on success.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError>;

    /// Write `buf` at `offset`; with `fua` the data is durable before this returns.
    /// Returns `buf.len()` on success.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError>;

    /// Write `bufs` back to back from `offset`, as plain (not FUA) writes: what a run of
    /// contiguous [`write_at`](Self::write_at) calls would do, in one call where the store
    /// can (a file: one `pwritev`). Returns the total length on success. On an error some
    /// of the range may have been written: the caller rewrites the pieces one by one to
    /// learn which fails. Default: one `write_at` per buffer.
    fn write_vectored_at(
        &self,
        bufs: &[io::IoSlice<'_>],
        offset: u64,
    ) -> Result<usize, StoreError> {
        write_each(self, bufs, offset)
    }

    /// Make every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> Result<(), StoreError>;

    /// Deallocate `len` bytes at `offset` where possible; the range reads as zeroes after.
    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.write_zeroes(offset, len)
    }

    /// Write zeroes over `len` bytes at `offset` (WRITE SAME with a zero block).
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size())?;
        write_zeroes_by_writing(offset, len, |chunk, off| {
            self.write_at(chunk, off, false).map(drop)
        })
    }

    /// Whether the extent starting at `offset` is mapped, and how long it is.
    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        check_range(offset, 1, self.size())?;
        Ok(LbaStatus {
            mapped: true,
            len: self.size() - offset,
        })
    }

    /// COMPARE AND WRITE done by the store itself: compare `cmp` with the data at `offset`
    /// and, only if equal, write `data` there (`cmp` and `data` have the same length; with
    /// `fua` the write is durable before this returns). A difference is
    /// `Ok(`[`CompareAndWrite::Miscompare`]`)` with nothing written.
    ///
    /// The default answers [`StoreError::UNSUPPORTED`]: the caller then emulates it (read,
    /// compare, write — iscsi-target's executor does, while scsi-core holds back
    /// overlapping commands of the same LU). A store implements it when it can do better
    /// than that, i.e. atomically against other users of the same storage; an
    /// implementation documents which ranges it cannot do atomically.
    fn compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
        fua: bool,
    ) -> Result<CompareAndWrite, StoreError> {
        let _ = (cmp, data, offset, fua);
        Err(StoreError::UNSUPPORTED)
    }

    /// WRITE SAME done by the store itself: `block` repeated over `len` bytes at `offset`
    /// (`len` a multiple of `block.len()`); with `fua` durable before this returns.
    ///
    /// The default answers [`StoreError::UNSUPPORTED`]: the caller then writes the
    /// repeated block itself, in chunks. (Zero blocks and unmapping go through
    /// [`write_zeroes`](Self::write_zeroes) and [`unmap`](Self::unmap) instead.)
    fn write_same(&self, offset: u64, len: u64, block: &[u8], fua: bool) -> Result<(), StoreError> {
        let _ = (offset, len, block, fua);
        Err(StoreError::UNSUPPORTED)
    }

    /// Re-read the size from the storage, for stores whose size can change behind the
    /// target's back (an RBD image resized with `rbd resize`). Returns the new size (a
    /// multiple of the block size) when it differs from what [`size`](Self::size) reported
    /// before this call — `size` reports the new one from now on — and `None` when it did
    /// not change. The default: `None`, the size never changes (nothing is checked, so a
    /// caller may poll every store cheaply).
    fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Whether plain writes (not FUA) gain nothing from running concurrently, because the
    /// kernel runs them one at a time anyway: a buffered write to a regular file holds the
    /// file's inode lock while it copies into the page cache, and writers queued behind it
    /// spin on that lock. A runtime then runs this store's plain writes one after another
    /// on one thread and spares the CPU the waiting writers would burn. Default: `false`.
    fn serializes_writes(&self) -> bool {
        false
    }

    /// Serve a read without blocking, if the store can do so right now (for a file: the
    /// data is in the page cache, `preadv2(RWF_NOWAIT)`). `None` means "would block: submit
    /// it to an engine instead"; `Some` is the final result.
    fn try_read_cached(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        let _ = (buf, offset);
        None
    }

    /// Zero-copy reads: whether `len` bytes at `offset` can go to a socket with
    /// [`send_cached`](Self::send_cached) right now without waiting for the device (for a
    /// buffered file: every page of the range is in the page cache, by `cachestat(2)`).
    /// The default: `false`, the store has no such path.
    fn can_send_cached(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// Sends up to `len` bytes at `offset` to the stream socket `sock` without copying them
    /// through user space (`sendfile(2)`: the socket takes references to the page-cache
    /// pages). Returns the bytes sent: fewer than `len` when the socket's buffer filled,
    /// `WouldBlock` when it took none, `UnexpectedEof` when the range ends early (the file
    /// shrank). Meant for ranges [`can_send_cached`](Self::can_send_cached) approved; the
    /// data is what the store holds when it is sent. The default: `Unsupported`.
    fn send_cached(&self, sock: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        let _ = (sock, offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// `OUT_OF_RANGE` unless `offset..offset+len` lies inside `0..size`.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StoreError::OUT_OF_RANGE),
    }
}

/// `READ_ONLY` if the store refuses writes.
pub(crate) fn check_writable<S: BackingStore + ?Sized>(store: &S) -> Result<(), StoreError> {
    if store.is_read_only() {
        Err(StoreError::READ_ONLY)
    } else {
        Ok(())
    }
}

/// 64 KiB of zeroes, page-aligned so `O_DIRECT` writes can use it.
#[repr(C, align(4096))]
struct Zeroes([u8; 65536]);
static ZEROES: Zeroes = Zeroes([0; 65536]);

/// Zero a range by writing from a static zero buffer in 64 KiB pieces.
pub(crate) fn write_zeroes_by_writing(
    offset: u64,
    len: u64,
    mut write: impl FnMut(&[u8], u64) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZEROES.0.len() as u64) as usize;
        write(&ZEROES.0[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// The offset each of `bufs` starts at when they are written back to back from `offset`.
pub(crate) fn piece_offsets<'a>(
    bufs: &'a [io::IoSlice<'_>],
    offset: u64,
) -> impl Iterator<Item = u64> + 'a {
    bufs.iter().scan(offset, |at, b| {
        let here = *at;
        *at = at.saturating_add(b.len() as u64);
        Some(here)
    })
}

/// [`BackingStore::write_vectored_at`] as one plain [`BackingStore::write_at`] per buffer.
pub(crate) fn write_each<S: BackingStore + ?Sized>(
    store: &S,
    bufs: &[io::IoSlice<'_>],
    offset: u64,
) -> Result<usize, StoreError> {
    for (b, at) in bufs.iter().zip(piece_offsets(bufs, offset)) {
        store.write_at(b, at, false)?;
    }
    Ok(bufs.iter().map(|b| b.len()).sum())
}

impl<S: BackingStore + ?Sized> BackingStore for std::sync::Arc<S> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn is_thin(&self) -> bool {
        (**self).is_thin()
    }
    fn unmap_granularity(&self) -> u64 {
        (**self).unmap_granularity()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        (**self).write_at(buf, offset, fua)
    }
    fn write_vectored_at(
        &self,
        bufs: &[io::IoSlice<'_>],
        offset: u64,
    ) -> Result<usize, StoreError> {
        (**self).write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn serializes_writes(&self) -> bool {
        (**self).serializes_writes()
    }
    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        (**self).unmap(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        (**self).write_zeroes(offset, len)
    }
    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        (**self).lba_status(offset)
    }
    fn compare_and_write(
        &self,
        cmp: &[u8],
        data: &[u8],
        offset: u64,
        fua: bool,
    ) -> Result<CompareAndWrite, StoreError> {
        (**self).compare_and_write(cmp, data, offset, fua)
    }
    fn write_same(&self, offset: u64, len: u64, block: &[u8], fua: bool) -> Result<(), StoreError> {
        (**self).write_same(offset, len, block, fua)
    }
    fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
        (**self).refresh_size()
    }
    fn try_read_cached(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        (**self).try_read_cached(buf, offset)
    }
    fn can_send_cached(&self, offset: u64, len: u64) -> bool {
        (**self).can_send_cached(offset, len)
    }
    fn send_cached(&self, sock: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        (**self).send_cached(sock, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert_eq!(check_range(0, 4096, 4096), Ok(()));
        assert_eq!(check_range(4096, 0, 4096), Ok(()));
        assert_eq!(check_range(512, 4096, 4096), Err(StoreError::OUT_OF_RANGE));
        assert_eq!(
            check_range(u64::MAX, 2, u64::MAX),
            Err(StoreError::OUT_OF_RANGE)
        );
        assert_eq!(check_range(4097, 0, 4096), Err(StoreError::OUT_OF_RANGE));
    }

    /// A store with the optional methods implemented, to see them through an `Arc`.
    struct Native;
    impl BackingStore for Native {
        fn size(&self) -> u64 {
            4096
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
        fn read_at(&self, buf: &mut [u8], _: u64) -> Result<usize, StoreError> {
            Ok(buf.len())
        }
        fn write_at(&self, buf: &[u8], _: u64, _: bool) -> Result<usize, StoreError> {
            Ok(buf.len())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn compare_and_write(
            &self,
            cmp: &[u8],
            _: &[u8],
            offset: u64,
            fua: bool,
        ) -> Result<CompareAndWrite, StoreError> {
            Ok(CompareAndWrite::Miscompare {
                offset: cmp.len() as u64 + offset + u64::from(fua),
            })
        }
        fn write_same(&self, offset: u64, len: u64, b: &[u8], fua: bool) -> Result<(), StoreError> {
            if (offset, len, b.len(), fua) == (512, 1024, 512, true) {
                Ok(())
            } else {
                Err(StoreError::INVALID)
            }
        }
        fn refresh_size(&self) -> Result<Option<u64>, StoreError> {
            Ok(Some(8192))
        }
    }

    #[test]
    fn optional_methods_default_to_unsupported_and_forward_through_arc() {
        let mem = crate::MemoryStore::new(1 << 20, 512).unwrap();
        assert_eq!(
            mem.compare_and_write(&[0; 512], &[1; 512], 0, false),
            Err(StoreError::UNSUPPORTED)
        );
        assert_eq!(
            mem.write_same(0, 1024, &[1; 512], false),
            Err(StoreError::UNSUPPORTED)
        );
        assert_eq!(mem.refresh_size(), Ok(None));
        // Nothing was written by the refusals.
        let mut back = [7u8; 1024];
        mem.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [0; 1024]);

        let native: std::sync::Arc<dyn BackingStore> = std::sync::Arc::new(Native);
        let arc = std::sync::Arc::new(native);
        assert_eq!(
            arc.compare_and_write(&[0; 512], &[1; 512], 1000, true),
            Ok(CompareAndWrite::Miscompare { offset: 1513 })
        );
        assert_eq!(arc.write_same(512, 1024, &[1; 512], true), Ok(()));
        assert_eq!(
            arc.write_same(512, 1024, &[1; 512], false),
            Err(StoreError::INVALID)
        );
        assert_eq!(arc.refresh_size(), Ok(Some(8192)));
    }

    #[test]
    fn zero_writer_covers_range_in_pieces() {
        let mut calls = Vec::new();
        write_zeroes_by_writing(100, 65536 * 2 + 10, |b, off| {
            assert!(b.iter().all(|&x| x == 0));
            calls.push((off, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, vec![(100, 65536), (65636, 65536), (131172, 10)]);
        assert_eq!(ZEROES.0.as_ptr() as usize % 4096, 0);
    }
}
