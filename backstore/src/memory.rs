//! In-memory stores: [`MemoryStore`] (a thin RAM disk) and [`NullStore`] (discards
//! writes, reads zeroes).
//!
//! The RAM disk allocates 64 KiB chunks on first write, each behind its own `RwLock`, so
//! concurrent I/O to different chunks never contends and readers of one chunk share it.
//! Untouched and unmapped chunks read as zeroes and report as deallocated.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{OpenError, OpenErrorKind, StoreError};
use crate::store::{BackingStore, LbaStatus, check_range, check_writable};

/// Allocation unit of [`MemoryStore`], in bytes.
pub const CHUNK_SIZE: usize = 64 * 1024;

const LABEL: &str = "<memory>";

fn check_geometry(size: u64, block_size: u32) -> Result<(), OpenError> {
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(OpenError::new(
            LABEL,
            OpenErrorKind::BadBlockSize(block_size),
        ));
    }
    if size == 0 {
        return Err(OpenError::new(LABEL, OpenErrorKind::Empty));
    }
    if size % u64::from(block_size) != 0 {
        return Err(OpenError::new(
            LABEL,
            OpenErrorKind::SizeNotMultiple { size, block_size },
        ));
    }
    Ok(())
}

type Chunk = RwLock<Option<Box<[u8]>>>;

/// A thin RAM disk.
#[derive(Debug)]
pub struct MemoryStore {
    chunks: Box<[Chunk]>,
    size: u64,
    block_size: u32,
    read_only: bool,
    allocated: AtomicU64,
}

/// The part of chunk `index` that `offset..offset+len` covers: (chunk, start in chunk, n).
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize, usize)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = (pos / CHUNK_SIZE as u64) as usize;
        let start = (pos % CHUNK_SIZE as u64) as usize;
        let n = ((CHUNK_SIZE - start) as u64).min(end - pos) as usize;
        pos += n as u64;
        Some((index, start, n))
    })
}

impl MemoryStore {
    /// A RAM disk of `size` bytes with `block_size`-byte blocks, all deallocated.
    pub fn new(size: u64, block_size: u32) -> Result<Self, OpenError> {
        Self::with_options(size, block_size, false)
    }

    /// As [`MemoryStore::new`], optionally read-only (then it reads as all zeroes).
    pub fn with_options(size: u64, block_size: u32, read_only: bool) -> Result<Self, OpenError> {
        check_geometry(size, block_size)?;
        let count = usize::try_from(size.div_ceil(CHUNK_SIZE as u64))
            .map_err(|_| OpenError::new(LABEL, OpenErrorKind::Os(libc::ENOMEM)))?;
        let chunks = (0..count).map(|_| RwLock::new(None)).collect();
        Ok(Self {
            chunks,
            size,
            block_size,
            read_only,
            allocated: AtomicU64::new(0),
        })
    }

    /// Bytes of memory currently allocated for data.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    fn chunk_len(&self, index: usize) -> usize {
        let start = index as u64 * CHUNK_SIZE as u64;
        (self.size - start).min(CHUNK_SIZE as u64) as usize
    }

    fn chunk_mapped(&self, index: usize) -> bool {
        self.chunks[index]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl BackingStore for MemoryStore {
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
        true
    }

    fn unmap_granularity(&self) -> u64 {
        CHUNK_SIZE as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0;
        for (index, start, n) in pieces(offset, buf.len() as u64) {
            let out = &mut buf[done..done + n];
            match &*self.chunks[index].read().unwrap_or_else(|e| e.into_inner()) {
                Some(data) => out.copy_from_slice(&data[start..start + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(buf.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<usize, StoreError> {
        check_writable(self)?;
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0;
        for (index, start, n) in pieces(offset, buf.len() as u64) {
            let mut chunk = self.chunks[index]
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let data = chunk.get_or_insert_with(|| {
                let len = self.chunk_len(index);
                self.allocated.fetch_add(len as u64, Ordering::Relaxed);
                vec![0u8; len].into_boxed_slice()
            });
            data[start..start + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(buf.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        for (index, start, n) in pieces(offset, len) {
            let mut chunk = self.chunks[index]
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if start == 0 && n == self.chunk_len(index) {
                if let Some(data) = chunk.take() {
                    self.allocated
                        .fetch_sub(data.len() as u64, Ordering::Relaxed);
                }
            } else if let Some(data) = chunk.as_mut() {
                data[start..start + n].fill(0);
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_writable(self)?;
        check_range(offset, len, self.size)?;
        for (index, start, n) in pieces(offset, len) {
            if let Some(data) = self.chunks[index]
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                data[start..start + n].fill(0);
            }
        }
        Ok(())
    }

    fn lba_status(&self, offset: u64) -> Result<LbaStatus, StoreError> {
        if offset >= self.size {
            return Err(StoreError::OUT_OF_RANGE);
        }
        let first = (offset / CHUNK_SIZE as u64) as usize;
        let mapped = self.chunk_mapped(first);
        let mut end = first + 1;
        while end < self.chunks.len() && self.chunk_mapped(end) == mapped {
            end += 1;
        }
        let end_byte = (end as u64 * CHUNK_SIZE as u64).min(self.size);
        Ok(LbaStatus {
            mapped,
            len: end_byte - offset,
        })
    }

    fn try_read_cached(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        Some(self.read_at(buf, offset))
    }
}

/// A store that discards writes and reads zeroes (for benchmarks).
#[derive(Debug, Clone)]
pub struct NullStore {
    size: u64,
    block_size: u32,
}

impl NullStore {
    /// A null store of `size` bytes with `block_size`-byte blocks.
    pub fn new(size: u64, block_size: u32) -> Result<Self, OpenError> {
        check_geometry(size, block_size)?;
        Ok(Self { size, block_size })
    }
}

impl BackingStore for NullStore {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn is_thin(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size)?;
        buf.fill(0);
        Ok(buf.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size)?;
        Ok(buf.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.size)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.size)
    }

    fn try_read_cached(&self, buf: &mut [u8], offset: u64) -> Option<Result<usize, StoreError>> {
        Some(self.read_at(buf, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_thin_and_round_trips() {
        let m = MemoryStore::new(4 * CHUNK_SIZE as u64 + 4096, 512).unwrap();
        assert_eq!(m.allocated_bytes(), 0);
        assert_eq!(
            m.lba_status(0),
            Ok(LbaStatus {
                mapped: false,
                len: m.size()
            })
        );
        let mut buf = vec![0xffu8; 8192];
        m.read_at(&mut buf, 512).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // A write straddling chunks 0 and 1.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let off = CHUNK_SIZE as u64 - 4096;
        assert_eq!(m.write_at(&data, off, true), Ok(8192));
        assert_eq!(m.allocated_bytes(), 2 * CHUNK_SIZE as u64);
        m.read_at(&mut buf, off).unwrap();
        assert_eq!(buf, data);
        assert_eq!(
            m.lba_status(0),
            Ok(LbaStatus {
                mapped: true,
                len: 2 * CHUNK_SIZE as u64
            })
        );
        assert_eq!(
            m.lba_status(2 * CHUNK_SIZE as u64),
            Ok(LbaStatus {
                mapped: false,
                len: 2 * CHUNK_SIZE as u64 + 4096
            })
        );
        // The partial last chunk.
        let last = 4 * CHUNK_SIZE as u64;
        m.write_at(&data[..4096], last, false).unwrap();
        assert_eq!(m.allocated_bytes(), 2 * CHUNK_SIZE as u64 + 4096);
        assert_eq!(
            m.lba_status(last),
            Ok(LbaStatus {
                mapped: true,
                len: 4096
            })
        );
        assert_eq!(
            m.write_at(&data[..4096], last + 512, false),
            Err(StoreError::OUT_OF_RANGE)
        );
        assert_eq!(m.lba_status(m.size()), Err(StoreError::OUT_OF_RANGE));
    }

    #[test]
    fn memory_unmap_frees_whole_chunks_and_zeroes_edges() {
        let m = MemoryStore::new(4 * CHUNK_SIZE as u64, 4096).unwrap();
        let ones = vec![1u8; 4 * CHUNK_SIZE];
        m.write_at(&ones, 0, false).unwrap();
        assert_eq!(m.allocated_bytes(), 4 * CHUNK_SIZE as u64);
        // Unmap from the middle of chunk 0 to the middle of chunk 2.
        m.unmap(4096, 2 * CHUNK_SIZE as u64).unwrap();
        assert_eq!(m.allocated_bytes(), 3 * CHUNK_SIZE as u64);
        let mut buf = vec![0u8; 4 * CHUNK_SIZE];
        m.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 1));
        assert!(buf[4096..4096 + 2 * CHUNK_SIZE].iter().all(|&b| b == 0));
        assert!(buf[4096 + 2 * CHUNK_SIZE..].iter().all(|&b| b == 1));
        assert_eq!(
            m.lba_status(0),
            Ok(LbaStatus {
                mapped: true,
                len: CHUNK_SIZE as u64
            })
        );
        assert_eq!(
            m.lba_status(CHUNK_SIZE as u64),
            Ok(LbaStatus {
                mapped: false,
                len: CHUNK_SIZE as u64
            })
        );
        m.write_zeroes(0, 4096).unwrap();
        m.read_at(&mut buf[..4096], 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert_eq!(
            m.unmap(0, 5 * CHUNK_SIZE as u64),
            Err(StoreError::OUT_OF_RANGE)
        );
    }

    #[test]
    fn memory_read_only_and_geometry() {
        let m = MemoryStore::with_options(65536, 512, true).unwrap();
        assert_eq!(m.write_at(&[0; 512], 0, false), Err(StoreError::READ_ONLY));
        assert_eq!(m.unmap(0, 512), Err(StoreError::READ_ONLY));
        assert_eq!(m.write_zeroes(0, 512), Err(StoreError::READ_ONLY));
        let e = MemoryStore::new(1000, 512).unwrap_err();
        assert_eq!(
            e.kind,
            OpenErrorKind::SizeNotMultiple {
                size: 1000,
                block_size: 512
            }
        );
        assert_eq!(
            MemoryStore::new(4096, 100).unwrap_err().kind,
            OpenErrorKind::BadBlockSize(100)
        );
        assert_eq!(
            MemoryStore::new(0, 512).unwrap_err().kind,
            OpenErrorKind::Empty
        );
    }

    #[test]
    fn null_store_discards() {
        let n = NullStore::new(1 << 20, 512).unwrap();
        assert_eq!(n.write_at(&[7; 4096], 0, true), Ok(4096));
        let mut buf = vec![9u8; 4096];
        assert_eq!(n.read_at(&mut buf, 4096), Ok(4096));
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(
            n.read_at(&mut buf, (1 << 20) - 512),
            Err(StoreError::OUT_OF_RANGE)
        );
        assert_eq!(
            n.lba_status(0),
            Ok(LbaStatus {
                mapped: true,
                len: 1 << 20
            })
        );
        assert_eq!(n.try_read_cached(&mut buf, 0), Some(Ok(4096)));
    }
}
