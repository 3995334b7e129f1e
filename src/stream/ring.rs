//! A growable byte ring used for both the send and the receive buffer.
//!
//! Why not `VecDeque<u8>`: we need O(1) "consume n bytes from the front",
//! bulk copies at an arbitrary offset (retransmissions read from the middle),
//! and explicit control over capacity (grow on demand up to the configured
//! cap, give memory back when idle). The capacity is always a power of two so
//! indexing is a mask.

/// A byte FIFO with random-access reads.
#[derive(Debug, Default, Clone)]
pub struct ByteRing {
    buf: Vec<u8>,
    head: usize,
    len: usize,
}

impl ByteRing {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory allocated.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn mask(&self) -> usize {
        self.buf.len().wrapping_sub(1)
    }

    fn grow_to(&mut self, need: usize) {
        if need <= self.buf.len() {
            return;
        }
        let new_cap = need.next_power_of_two().max(4096);
        let mut nb = vec![0u8; new_cap];
        self.copy_out(0, &mut nb[..self.len]);
        self.buf = nb;
        self.head = 0;
    }

    /// Append all of `data` (the caller enforces the byte cap).
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.grow_to(self.len + data.len());
        let cap = self.buf.len();
        let tail = (self.head + self.len) & self.mask();
        let first = data.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.len += data.len();
    }

    /// Copy `out.len()` bytes starting `offset` bytes after the front.
    /// Panics if that range is not held (callers check).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len);
        if out.is_empty() {
            return;
        }
        let cap = self.buf.len();
        let start = (self.head + offset) & self.mask();
        let first = out.len().min(cap - start);
        let n = out.len();
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..].copy_from_slice(&self.buf[..n - first]);
    }

    /// Drop `n` bytes from the front (at most `len`).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) & self.mask()
        };
    }

    /// Release memory beyond what is held (rounded up to a power of two).
    pub fn shrink(&mut self) {
        if self.len == 0 {
            self.buf = Vec::new();
            self.head = 0;
            return;
        }
        let want = self.len.next_power_of_two().max(4096);
        if want < self.buf.len() {
            let mut nb = vec![0u8; want];
            self.copy_out(0, &mut nb[..self.len]);
            self.buf = nb;
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_grows() {
        let mut r = ByteRing::default();
        let mut model = std::collections::VecDeque::new();
        let mut x = 1u32;
        for round in 0..2000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let n = (x % 3000) as usize;
            let data: Vec<u8> = (0..n).map(|i| (i as u32 ^ round) as u8).collect();
            if model.len() < 20000 {
                r.push(&data);
                model.extend(&data);
            }
            let c = ((x >> 8) % 2500) as usize;
            let c = c.min(model.len());
            let off = c / 3;
            let mut out = vec![0u8; c - off];
            r.copy_out(off, &mut out);
            let want: Vec<u8> = model.iter().skip(off).take(c - off).copied().collect();
            assert_eq!(out, want);
            r.consume(c);
            model.drain(..c);
            assert_eq!(r.len(), model.len());
        }
        r.shrink();
        assert!(r.capacity() <= 32768);
    }
}
