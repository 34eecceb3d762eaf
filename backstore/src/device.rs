//! [`BlockDevice`]: a small synchronous block-device trait for storage of one's own, and
//! [`DeviceStore`], the adapter that makes any `BlockDevice` a full [`BackingStore`].
//!
//! Implementing [`BackingStore`] directly gives control over everything (byte offsets,
//! unmap, allocation status, page-cache reads). Most embedders only have "read these
//! blocks, write those blocks": they implement [`BlockDevice`] in block units and wrap it in
//! a [`DeviceStore`]. The adapter checks ranges and read-only state, converts byte offsets
//! to LBAs (bouncing through a block-aligned buffer for the rare unaligned request), and
//! uses the trait's defaults for unmap (writes zeroes) and allocation status (all mapped).
//!
//! ```
//! use std::sync::Mutex;
//! use backstore::{BackingStore, BlockDevice, DeviceStore, StoreError};
//!
//! /// 64 blocks of 512 bytes in a Vec.
//! struct Ram(Mutex<Vec<u8>>);
//!
//! impl BlockDevice for Ram {
//!     fn block_size(&self) -> u32 { 512 }
//!     fn num_blocks(&self) -> u64 { 64 }
//!     fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError> {
//!         let at = lba as usize * 512;
//!         buf.copy_from_slice(&self.0.lock().unwrap()[at..at + buf.len()]);
//!         Ok(())
//!     }
//!     fn write(&self, lba: u64, buf: &[u8], _fua: bool) -> Result<(), StoreError> {
//!         let at = lba as usize * 512;
//!         self.0.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
//!         Ok(())
//!     }
//! }
//!
//! let store = DeviceStore::new(Ram(Mutex::new(vec![0; 64 * 512])));
//! assert_eq!(store.size(), 32768);
//! store.write_at(&[7; 512], 1024, false)?;
//! let mut back = [0u8; 512];
//! store.read_at(&mut back, 1024)?;
//! assert_eq!(back, [7; 512]);
//! // Out of range is refused before the device sees it.
//! assert_eq!(store.read_at(&mut back, 32768), Err(StoreError::OUT_OF_RANGE));
//! # Ok::<(), StoreError>(())
//! ```

use crate::error::StoreError;
use crate::store::{BackingStore, check_range, check_writable};

/// A synchronous block device in logical-block units.
///
/// The adapter [`DeviceStore`] only calls [`read`](Self::read) and [`write`](Self::write)
/// with ranges inside `0..num_blocks()` and buffers whose length is a non-zero multiple of
/// [`block_size`](Self::block_size); it never calls `write` when
/// [`is_read_only`](Self::is_read_only) is true. Methods may be called from several threads
/// at once.
pub trait BlockDevice: Send + Sync {
    /// Logical block size in bytes (512 or 4096 for an iSCSI LUN).
    fn block_size(&self) -> u32;

    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;

    /// Fill `buf` (`buf.len() / block_size` blocks) from block `lba`.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError>;

    /// Write `buf` at block `lba`; with `fua` the data must be durable before returning.
    fn write(&self, lba: u64, buf: &[u8], fua: bool) -> Result<(), StoreError>;

    /// Make every completed write durable (SYNCHRONIZE CACHE). The default does nothing
    /// (a volatile device).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the device refuses writes. The default is `false`.
    fn is_read_only(&self) -> bool {
        false
    }
}

/// A shared device is a device: keep an `Arc` to inspect it while a target serves it.
impl<D: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<D> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn num_blocks(&self) -> u64 {
        (**self).num_blocks()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        (**self).read(lba, buf)
    }
    fn write(&self, lba: u64, buf: &[u8], fua: bool) -> Result<(), StoreError> {
        (**self).write(lba, buf, fua)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
}

/// Serves a [`BlockDevice`] as a [`BackingStore`] (see the [module docs](self)).
#[derive(Debug)]
pub struct DeviceStore<D> {
    dev: D,
}

impl<D: BlockDevice> DeviceStore<D> {
    /// Wraps `dev`.
    pub fn new(dev: D) -> Self {
        DeviceStore { dev }
    }

    /// The wrapped device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Unwraps the device.
    pub fn into_inner(self) -> D {
        self.dev
    }

    fn bs(&self) -> u64 {
        u64::from(self.dev.block_size().max(1))
    }

    /// The block-aligned span `(first_lba, bytes)` covering `offset..offset+len`.
    fn span(&self, offset: u64, len: u64) -> Result<(u64, usize), StoreError> {
        let bs = self.bs();
        let first = offset / bs;
        let end = offset.checked_add(len).ok_or(StoreError::OUT_OF_RANGE)?;
        let last = end.div_ceil(bs);
        let bytes = (last - first)
            .checked_mul(bs)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(StoreError::INVALID)?;
        Ok((first, bytes))
    }

    fn aligned(&self, offset: u64, len: usize) -> bool {
        let bs = self.bs();
        offset % bs == 0 && (len as u64) % bs == 0
    }
}

impl<D: BlockDevice> BackingStore for DeviceStore<D> {
    fn size(&self) -> u64 {
        self.dev.num_blocks().saturating_mul(self.bs())
    }

    fn block_size(&self) -> u32 {
        self.dev.block_size()
    }

    fn is_read_only(&self) -> bool {
        self.dev.is_read_only()
    }

    fn is_thin(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(0);
        }
        if self.aligned(offset, buf.len()) {
            self.dev.read(offset / self.bs(), buf)?;
            return Ok(buf.len());
        }
        let (lba, bytes) = self.span(offset, buf.len() as u64)?;
        let mut bounce = vec![0u8; bytes];
        self.dev.read(lba, &mut bounce)?;
        let skip = (offset - lba * self.bs()) as usize;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(buf.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, StoreError> {
        check_writable(self)?;
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(0);
        }
        if self.aligned(offset, buf.len()) {
            self.dev.write(offset / self.bs(), buf, fua)?;
            return Ok(buf.len());
        }
        // Read-modify-write of the covering blocks.
        let (lba, bytes) = self.span(offset, buf.len() as u64)?;
        let mut bounce = vec![0u8; bytes];
        self.dev.read(lba, &mut bounce)?;
        let skip = (offset - lba * self.bs()) as usize;
        bounce[skip..skip + buf.len()].copy_from_slice(buf);
        self.dev.write(lba, &bounce, fua)?;
        Ok(buf.len())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.dev.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that records every call.
    struct Logged {
        data: Mutex<Vec<u8>>,
        log: Mutex<Vec<(char, u64, usize, bool)>>,
        ro: bool,
    }

    impl Logged {
        fn new(blocks: usize, ro: bool) -> Self {
            Logged {
                data: Mutex::new((0..blocks * 512).map(|i| (i / 512) as u8).collect()),
                log: Mutex::new(Vec::new()),
                ro,
            }
        }
    }

    impl BlockDevice for Logged {
        fn block_size(&self) -> u32 {
            512
        }
        fn num_blocks(&self) -> u64 {
            (self.data.lock().unwrap().len() / 512) as u64
        }
        fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(('r', lba, buf.len(), false));
            let at = lba as usize * 512;
            buf.copy_from_slice(&self.data.lock().unwrap()[at..at + buf.len()]);
            Ok(())
        }
        fn write(&self, lba: u64, buf: &[u8], fua: bool) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(('w', lba, buf.len(), fua));
            let at = lba as usize * 512;
            self.data.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.log.lock().unwrap().push(('f', 0, 0, false));
            Ok(())
        }
        fn is_read_only(&self) -> bool {
            self.ro
        }
    }

    #[test]
    fn aligned_io_goes_straight_through() {
        let s = DeviceStore::new(Logged::new(8, false));
        assert_eq!(s.size(), 4096);
        assert_eq!(s.block_size(), 512);
        assert!(!s.is_thin());
        assert_eq!(s.write_at(&[9; 1024], 2048, true), Ok(1024));
        let mut b = [0u8; 1536];
        assert_eq!(s.read_at(&mut b, 1536), Ok(1536));
        assert_eq!(&b[..512], &[3; 512]);
        assert_eq!(&b[512..], &[9; 1024]);
        s.flush().unwrap();
        assert_eq!(
            *s.device().log.lock().unwrap(),
            vec![
                ('w', 4, 1024, true),
                ('r', 3, 1536, false),
                ('f', 0, 0, false)
            ]
        );
    }

    #[test]
    fn unaligned_io_bounces_through_whole_blocks() {
        let s = DeviceStore::new(Logged::new(4, false));
        assert_eq!(s.write_at(&[0xaa; 10], 510, false), Ok(10));
        let mut b = [0u8; 4];
        assert_eq!(s.read_at(&mut b, 508), Ok(4));
        assert_eq!(b, [0, 0, 0xaa, 0xaa]);
        assert_eq!(
            *s.device().log.lock().unwrap(),
            vec![
                ('r', 0, 1024, false),
                ('w', 0, 1024, false),
                ('r', 0, 512, false)
            ]
        );
        let d = s.into_inner().data.into_inner().unwrap();
        assert_eq!(
            &d[508..522],
            &[
                0, 0, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 1, 1
            ]
        );
    }

    #[test]
    fn range_and_read_only_are_checked_before_the_device() {
        let s = DeviceStore::new(Logged::new(2, true));
        let mut b = [0u8; 512];
        assert_eq!(s.read_at(&mut b, 1024), Err(StoreError::OUT_OF_RANGE));
        assert_eq!(s.read_at(&mut b, u64::MAX), Err(StoreError::OUT_OF_RANGE));
        assert_eq!(s.write_at(&b, 0, false), Err(StoreError::READ_ONLY));
        assert_eq!(s.write_zeroes(0, 512), Err(StoreError::READ_ONLY));
        assert_eq!(s.read_at(&mut [], 1024), Ok(0));
        assert!(s.device().log.lock().unwrap().is_empty());
    }

    #[test]
    fn write_zeroes_and_unmap_use_block_writes() {
        let s = DeviceStore::new(Logged::new(4, false));
        s.unmap(512, 1024).unwrap();
        let d = s.device().data.lock().unwrap().clone();
        assert!(d[512..1536].iter().all(|&x| x == 0));
        assert_eq!(&d[1536..1540], &[3, 3, 3, 3]);
        assert_eq!(*s.device().log.lock().unwrap(), vec![('w', 1, 1024, false)]);
        let st = s.lba_status(0).unwrap();
        assert!(st.mapped);
        assert_eq!(st.len, 2048);
    }
}
