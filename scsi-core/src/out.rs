//! A bounded writer for emulated Data-In: writes what fits into the caller's buffer and
//! counts the full length, so one function both measures and produces a response.

pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Out<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, pos: 0 }
    }
    /// Full length produced so far (may exceed the buffer).
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes actually stored in the buffer.
    pub(crate) fn written(&self) -> usize {
        self.pos.min(self.buf.len())
    }
    pub(crate) fn u8(&mut self, b: u8) {
        if let Some(x) = self.buf.get_mut(self.pos) {
            *x = b;
        }
        self.pos = self.pos.saturating_add(1);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.u8(x);
        }
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            self.u8(0);
        }
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    /// Overwrite an already produced byte (no-op if it did not fit).
    pub(crate) fn patch(&mut self, at: usize, b: u8) {
        if at < self.pos {
            if let Some(x) = self.buf.get_mut(at) {
                *x = b;
            }
        }
    }
    pub(crate) fn patch_u16(&mut self, at: usize, v: u16) {
        let b = v.to_be_bytes();
        self.patch(at, b[0]);
        self.patch(at.saturating_add(1), b[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_and_counts() {
        let mut b = [0u8; 3];
        let mut o = Out::new(&mut b);
        o.u32(0x0102_0304);
        o.patch(0, 9);
        o.patch(3, 9);
        assert_eq!(o.pos(), 4);
        assert_eq!(o.written(), 3);
        assert_eq!(b, [9, 2, 3]);
    }
}
