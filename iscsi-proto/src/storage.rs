//! Where a connection keeps its variable-size state: the login and text request text, the
//! data of the control PDU being sent, and the task table.
//!
//! Every such buffer is a [`Storage`]. By default it is a [`heapless::Vec`] inside the
//! connection: fixed capacity, no allocator, what an embedded target wants. A target
//! holding thousands of mostly idle connections wants the opposite: memory only while a
//! buffer is in use. It plugs in a heap-backed type of its own that implements [`Storage`]
//! (growing on use, releasing on [`Storage::reset`]); the protocol code is the same, and it
//! still enforces its own limits through the `max` arguments, whatever the storage could
//! hold.

/// A growable sequence of `T` with a ceiling, used by the protocol state machines for
/// their buffers (see the [module docs](self)).
pub trait Storage<T>: Default {
    /// The elements held.
    fn items(&self) -> &[T];

    /// The elements held, mutably.
    fn items_mut(&mut self) -> &mut [T];

    /// Appends `v`, or gives it back when that would make more than `max` elements or
    /// exceed the storage's own capacity.
    fn try_push(&mut self, v: T, max: usize) -> Result<(), T>;

    /// Removes every element. A heap-backed storage gives its memory back here: the
    /// state machines call this whenever a buffer's contents are no longer needed.
    fn reset(&mut self);

    /// Appends a copy of `s`, or (leaving the storage unchanged) fails when the result
    /// would hold more than `max` elements or exceed the storage's own capacity.
    fn try_extend(&mut self, s: &[T], max: usize) -> Result<(), Full>
    where
        T: Copy,
    {
        let len = self.items().len();
        if len.saturating_add(s.len()) > max {
            return Err(Full);
        }
        for &v in s {
            if self.try_push(v, max).is_err() {
                self.truncate(len);
                return Err(Full);
            }
        }
        Ok(())
    }

    /// Shortens to `len` elements (no-op when already that short).
    fn truncate(&mut self, len: usize);

    /// Makes the length exactly `len` (at most `max` and the storage's own capacity),
    /// filling new elements with `fill`; returns the elements.
    fn resize_to(&mut self, len: usize, fill: T, max: usize) -> &mut [T]
    where
        T: Copy,
    {
        self.truncate(len);
        while self.items().len() < len {
            if self.try_push(fill, max).is_err() {
                break;
            }
        }
        self.items_mut()
    }
}

/// A [`Storage`] is full (its own capacity or the caller's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl core::fmt::Display for Full {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("buffer full")
    }
}

impl core::error::Error for Full {}

impl<T, const N: usize> Storage<T> for heapless::Vec<T, N> {
    fn items(&self) -> &[T] {
        self
    }

    fn items_mut(&mut self) -> &mut [T] {
        self
    }

    fn try_push(&mut self, v: T, max: usize) -> Result<(), T> {
        if self.len() >= max {
            return Err(v);
        }
        self.push(v)
    }

    fn reset(&mut self) {
        self.clear();
    }

    fn try_extend(&mut self, s: &[T], max: usize) -> Result<(), Full>
    where
        T: Copy,
    {
        if self.len().saturating_add(s.len()) > max {
            return Err(Full);
        }
        self.extend_from_slice(s).map_err(|_| Full)
    }

    fn truncate(&mut self, len: usize) {
        heapless::Vec::truncate(self, len);
    }

    fn resize_to(&mut self, len: usize, fill: T, max: usize) -> &mut [T]
    where
        T: Copy,
    {
        let len = len.min(max).min(N);
        let _ = self.resize(len, fill);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage with only the required methods, to exercise the provided ones.
    #[derive(Default)]
    struct Minimal(heapless::Vec<u8, 8>);

    impl Storage<u8> for Minimal {
        fn items(&self) -> &[u8] {
            &self.0
        }
        fn items_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn try_push(&mut self, v: u8, max: usize) -> Result<(), u8> {
            Storage::try_push(&mut self.0, v, max)
        }
        fn reset(&mut self) {
            self.0.clear();
        }
        fn truncate(&mut self, len: usize) {
            self.0.truncate(len);
        }
    }

    #[test]
    fn heapless_respects_max_and_capacity() {
        let mut v: heapless::Vec<u8, 4> = heapless::Vec::new();
        assert_eq!(Storage::try_extend(&mut v, &[1, 2, 3], 2), Err(Full));
        assert!(v.is_empty());
        assert_eq!(Storage::try_extend(&mut v, &[1, 2, 3], 10), Ok(()));
        assert_eq!(Storage::try_push(&mut v, 9, 3), Err(9));
        assert_eq!(Storage::try_extend(&mut v, &[4, 5], 10), Err(Full));
        assert_eq!(v.items(), &[1, 2, 3]);
        assert_eq!(v.resize_to(6, 0, 10), &[1, 2, 3, 0]);
        assert_eq!(v.resize_to(1, 0, 10), &[1]);
        v.reset();
        assert!(v.items().is_empty());
    }

    #[test]
    fn provided_methods_stop_at_the_limits_and_undo_partial_work() {
        let mut m = Minimal::default();
        assert_eq!(m.try_extend(&[1, 2, 3], 3), Ok(()));
        assert_eq!(m.try_extend(&[4], 3), Err(Full));
        // Capacity 8 runs out part way: nothing of the failed extend stays.
        assert_eq!(m.try_extend(&[4, 5, 6, 7, 8, 9], 100), Err(Full));
        assert_eq!(m.items(), &[1, 2, 3]);
        assert_eq!(m.resize_to(5, 7, 100), &[1, 2, 3, 7, 7]);
        assert_eq!(m.resize_to(20, 0, 6), &[1, 2, 3, 7, 7, 0]);
        assert_eq!(m.resize_to(2, 0, 6), &[1, 2]);
        m.reset();
        assert!(m.items().is_empty());
    }
}
