//! Reusable, page-aligned I/O buffers.
//!
//! An [`IoBuf`] is a byte buffer aligned to [`ALIGN`] (4096, enough for `O_DIRECT` on every
//! common device) with a length that can be set anywhere up to its capacity. Buffers taken
//! from a [`BufPool`] go back to it when dropped, so a runtime that keeps its buffers moving
//! between requests allocates nothing on the hot path.
//!
//! The pool keeps one free list per power-of-two size class from 4 KiB to
//! [`BufPool::MAX_POOLED`]; each list holds at most `per_class` buffers (further returns are
//! freed). Larger requests are served by a plain aligned allocation that is freed on drop.
//! Newly allocated memory is zeroed; a recycled buffer keeps whatever its last user left in
//! it, so callers must fill what they send (every store read fills the whole length).
//!
//! [`IoBuf::from_vec`] wraps a caller's `Vec<u8>` without copying it (no alignment is
//! promised then) and [`IoBuf::into_vec`] gives it back: a runtime whose task buffers are
//! vectors hands them to an engine and gets them back in the completion.
//!
//! This module holds the crate's only `unsafe` outside [`crate::sys`]: the aligned
//! allocation itself.

use std::alloc::Layout;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of every [`IoBuf`] allocation, in bytes.
pub const ALIGN: usize = 4096;

/// Returned by [`IoBuf::set_len`] when the length exceeds the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityError {
    /// The length that was asked for.
    pub requested: usize,
    /// The buffer's capacity.
    pub capacity: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "length {} exceeds buffer capacity {}",
            self.requested, self.capacity
        )
    }
}

impl std::error::Error for CapacityError {}

/// An owned, page-aligned allocation (no pool attached).
struct Chunk {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: `Chunk` uniquely owns its allocation; plain bytes can move between threads.
unsafe impl Send for Chunk {}
// SAFETY: `&Chunk` gives no access to the bytes (only `IoBuf` does, through `&`/`&mut`).
unsafe impl Sync for Chunk {}

impl Chunk {
    fn layout(cap: usize) -> Layout {
        // ALIGN is a power of two and cap is bounded by `BufPool::get` callers; a size that
        // overflows isize is a programming error (no store accepts such a length).
        Layout::from_size_align(cap, ALIGN).expect("I/O buffer size overflows isize")
    }

    fn new(cap: usize) -> Self {
        if cap == 0 {
            return Self::empty();
        }
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (cap > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, cap }
    }

    fn empty() -> Self {
        // A dangling but aligned pointer: never dereferenced for a non-empty slice.
        Self {
            ptr: NonNull::<[u8; ALIGN]>::dangling().cast(),
            cap: 0,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

/// A page-aligned I/O buffer with a settable length; returns to its pool on drop.
///
/// Derefs to `[u8]` of the current length. Requests carry it into an engine and
/// completions carry it back out, so the runtime owns it between requests.
pub struct IoBuf {
    chunk: Chunk,
    /// Set by [`IoBuf::from_vec`]: the bytes live here instead (`chunk` is empty), and
    /// the vector's length is the capacity.
    vec: Option<Vec<u8>>,
    len: usize,
    pool: Option<Arc<PoolInner>>,
}

impl IoBuf {
    /// A zero-capacity buffer that owns no memory (for requests without data, e.g. flush).
    pub fn empty() -> Self {
        Self {
            chunk: Chunk::empty(),
            vec: None,
            len: 0,
            pool: None,
        }
    }

    /// A fresh zeroed buffer of `len` bytes, not attached to any pool.
    pub fn alloc(len: usize) -> Self {
        Self {
            chunk: Chunk::new(len),
            vec: None,
            len,
            pool: None,
        }
    }

    /// Wraps `v` without copying it: the capacity and the length are `v.len()`. The bytes
    /// are only as aligned as the vector's allocation (engines that need more, such as
    /// `O_DIRECT` AIO, must not be given such a buffer). [`IoBuf::into_vec`] returns `v`.
    pub fn from_vec(v: Vec<u8>) -> Self {
        Self {
            chunk: Chunk::empty(),
            len: v.len(),
            vec: Some(v),
            pool: None,
        }
    }

    /// The vector given to [`IoBuf::from_vec`], whole (at its original length, whatever
    /// [`IoBuf::set_len`] did since); `Err(self)` for a buffer that does not wrap one.
    pub fn into_vec(mut self) -> Result<Vec<u8>, IoBuf> {
        self.vec.take().ok_or(self)
    }

    /// A fresh buffer holding a copy of `data`, not attached to any pool.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::alloc(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// The number of bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.vec.as_ref().map_or(self.chunk.cap, Vec::len)
    }

    /// Set the length (the size of the slice it derefs to). Bytes between the old and the
    /// new length keep their previous contents.
    pub fn set_len(&mut self, len: usize) -> Result<(), CapacityError> {
        let capacity = self.capacity();
        if len > capacity {
            return Err(CapacityError {
                requested: len,
                capacity,
            });
        }
        self.len = len;
        Ok(())
    }

    /// Whether this buffer goes back to a pool when dropped.
    pub fn is_pooled(&self) -> bool {
        self.pool.is_some()
    }
}

impl Default for IoBuf {
    fn default() -> Self {
        Self::empty()
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if let Some(v) = &self.vec {
            return v.get(..self.len).unwrap_or(v);
        }
        // SAFETY: `ptr` is valid for `cap` initialised (zeroed at allocation) bytes, or
        // dangling-but-aligned with len 0; `len <= cap`; `&self` forbids concurrent writes.
        unsafe { std::slice::from_raw_parts(self.chunk.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Some(v) = &mut self.vec {
            let len = self.len.min(v.len());
            return &mut v[..len];
        }
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.chunk.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("pooled", &self.pool.is_some())
            .finish()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let chunk = std::mem::replace(&mut self.chunk, Chunk::empty());
            pool.put(chunk);
        }
    }
}

/// Number of size classes: 4 KiB << 0 ..= 4 KiB << 13 (32 MiB).
const CLASSES: usize = 14;

struct PoolInner {
    classes: [Mutex<Vec<Chunk>>; CLASSES],
    per_class: usize,
}

impl PoolInner {
    fn class_of(cap: usize) -> Option<usize> {
        let pages = cap.div_ceil(ALIGN).max(1).checked_next_power_of_two()?;
        let class = pages.trailing_zeros() as usize;
        (class < CLASSES).then_some(class)
    }

    fn put(&self, chunk: Chunk) {
        let Some(class) = Self::class_of(chunk.cap) else {
            return;
        };
        if chunk.cap != ALIGN << class {
            return;
        }
        let mut list = self.classes[class]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if list.len() < self.per_class {
            list.push(chunk);
        }
    }
}

/// A bounded pool of reusable page-aligned buffers. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

impl BufPool {
    /// Largest buffer the pool recycles (32 MiB); larger buffers are allocated and freed.
    pub const MAX_POOLED: usize = ALIGN << (CLASSES - 1);

    /// A pool that keeps at most `per_class` idle buffers of each power-of-two size.
    pub fn new(per_class: usize) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                classes: std::array::from_fn(|_| Mutex::new(Vec::new())),
                per_class,
            }),
        }
    }

    /// A buffer of length `len` (capacity rounded up to a power of two of at least 4 KiB),
    /// reused from the pool when one is idle. Contents are unspecified (zero when fresh).
    ///
    /// Like `Vec::with_capacity`, this panics if `len` exceeds `isize::MAX` rounded down to
    /// a page; callers bound transfer lengths long before that.
    pub fn get(&self, len: usize) -> IoBuf {
        let Some(class) = PoolInner::class_of(len) else {
            return IoBuf::alloc(len);
        };
        let recycled = self.inner.classes[class]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let chunk = recycled.unwrap_or_else(|| Chunk::new(ALIGN << class));
        IoBuf {
            chunk,
            vec: None,
            len,
            pool: Some(self.inner.clone()),
        }
    }

    /// How many idle buffers the pool holds right now (all classes).
    pub fn idle(&self) -> usize {
        self.inner
            .classes
            .iter()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl Default for BufPool {
    /// A pool keeping up to 256 idle buffers per size class.
    fn default() -> Self {
        Self::new(256)
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("per_class", &self.inner.per_class)
            .field("idle", &self.idle())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let pool = BufPool::new(4);
        for len in [1, 512, 4096, 4097, 65536, 1 << 20] {
            let b = pool.get(len);
            assert_eq!(b.len(), len);
            assert!(b.capacity() >= len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
        }
        let b = IoBuf::alloc(100);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(!b.is_pooled());
    }

    #[test]
    fn buffers_are_recycled_and_bounded() {
        let pool = BufPool::new(2);
        let a = pool.get(4096);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.idle(), 1);
        let mut b = pool.get(100);
        assert_eq!(b.as_ptr(), ptr, "the idle 4 KiB buffer is reused");
        assert_eq!(b.capacity(), 4096);
        b.set_len(4096).unwrap();
        assert_eq!(
            b.set_len(4097),
            Err(CapacityError {
                requested: 4097,
                capacity: 4096
            })
        );
        let bufs: Vec<IoBuf> = (0..5).map(|_| pool.get(8192)).collect();
        drop(bufs);
        assert_eq!(pool.idle(), 2, "at most per_class idle buffers are kept");
        drop(b);
        assert_eq!(pool.idle(), 3);
    }

    #[test]
    fn oversized_and_empty_buffers() {
        let pool = BufPool::new(2);
        let big = pool.get(BufPool::MAX_POOLED + 1);
        assert!(!big.is_pooled());
        assert_eq!(big.len(), BufPool::MAX_POOLED + 1);
        drop(big);
        assert_eq!(pool.idle(), 0);
        let mut e = IoBuf::empty();
        assert!(e.is_empty());
        assert_eq!(e.capacity(), 0);
        assert!(e.set_len(1).is_err());
        let c = IoBuf::from_slice(b"abc");
        assert_eq!(&c[..], b"abc");
    }

    #[test]
    fn vectors_are_wrapped_and_given_back_without_copying() {
        let v: Vec<u8> = (0..100u8).collect();
        let ptr = v.as_ptr();
        let mut b = IoBuf::from_vec(v);
        assert_eq!(b.len(), 100);
        assert_eq!(b.capacity(), 100);
        assert!(!b.is_pooled());
        assert_eq!(b.as_ptr(), ptr, "the vector's own bytes");
        b.set_len(10).unwrap();
        assert_eq!(&b[..], &(0..10u8).collect::<Vec<_>>()[..]);
        b.fill(0xee);
        assert_eq!(
            b.set_len(101),
            Err(CapacityError {
                requested: 101,
                capacity: 100
            })
        );
        let v = b.into_vec().unwrap();
        assert_eq!(v.as_ptr(), ptr);
        assert_eq!(v.len(), 100, "whole, whatever set_len did");
        assert_eq!(
            &v[..11],
            &[
                0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 10
            ]
        );
        // Other buffers are not vectors: handed back unchanged.
        let pool = BufPool::new(2);
        let p = pool.get(4096).into_vec().unwrap_err();
        assert!(p.is_pooled());
        drop(p);
        assert_eq!(pool.idle(), 1);
        assert!(IoBuf::empty().into_vec().is_err());
        assert!(IoBuf::from_vec(Vec::new()).is_empty());
    }

    #[test]
    fn buffers_cross_threads() {
        let pool = BufPool::new(8);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let mut b = pool.get(4096);
                        b.fill(i);
                        assert!(b.iter().all(|&x| x == i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(pool.idle() <= 4);
    }
}
