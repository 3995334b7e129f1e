//! A growable byte ring used for both the send and the receive buffer.
//!
//! Why not `VecDeque<u8>`: we need O(1) "consume n bytes from the front",
//! bulk copies at an arbitrary offset (retransmissions read from the middle),
//! writes *beyond* the committed length (the receiver stores out-of-order
//! data in place, so each byte is copied once in and once out), and explicit
//! control over capacity (grow on demand up to the configured cap, give memory
//! back when idle). The capacity is always a power of two so indexing is a
//! mask; growing preserves every byte position relative to the front,
//! committed or not.

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
        let old = self.buf.len();
        if need <= old {
            return;
        }
        let new_cap = need.next_power_of_two().max(4096);
        let mut nb = vec![0u8; new_cap];
        // Keep the whole old ring (uncommitted bytes too) in front order.
        let first = old - self.head;
        nb[..first].copy_from_slice(&self.buf[self.head..]);
        nb[first..old].copy_from_slice(&self.buf[..self.head]);
        self.buf = nb;
        self.head = 0;
    }

    /// Write `data` at `offset` bytes after the front without committing it
    /// (the ring grows to hold it; the caller enforces the byte cap).
    pub fn write_at(&mut self, offset: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.grow_to(offset + data.len());
        let cap = self.buf.len();
        let at = (self.head + offset) & self.mask();
        let first = data.len().min(cap - at);
        self.buf[at..at + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
    }

    /// Make `n` more bytes (already written with `write_at`) part of the
    /// committed content.
    pub fn commit(&mut self, n: usize) {
        assert!(self.len + n <= self.buf.len().max(self.len));
        self.len += n;
    }

    /// Append all of `data` (the caller enforces the byte cap).
    pub fn push(&mut self, data: &[u8]) {
        self.write_at(self.len, data);
        self.len += data.len();
    }

    /// The `n` bytes starting `offset` bytes after the front, as the two
    /// slices they occupy (the second is empty unless they wrap). Panics if
    /// that range is not held (callers check).
    fn slices(&self, offset: usize, n: usize) -> (&[u8], &[u8]) {
        assert!(offset + n <= self.len);
        if n == 0 {
            return (&[], &[]);
        }
        let start = (self.head + offset) & self.mask();
        let first = n.min(self.buf.len() - start);
        (&self.buf[start..start + first], &self.buf[..n - first])
    }

    /// The first `n` committed bytes as the two slices they occupy, for a
    /// caller that passes them on in place (a vectored socket write).
    /// Panics if fewer are held (callers check).
    pub fn front(&self, n: usize) -> (&[u8], &[u8]) {
        self.slices(0, n)
    }

    /// The `n` bytes after the committed content as the two slices they
    /// occupy (the ring grows to hold them; the caller enforces the byte
    /// cap), for a caller that fills them in place (a vectored socket read)
    /// and then [commits](Self::commit) what it wrote.
    pub fn spare(&mut self, n: usize) -> (&mut [u8], &mut [u8]) {
        if n == 0 {
            return (&mut [], &mut []);
        }
        self.grow_to(self.len + n);
        let at = (self.head + self.len) & self.mask();
        let first = n.min(self.buf.len() - at);
        let (lo, hi) = self.buf.split_at_mut(at);
        (&mut hi[..first], &mut lo[..n - first])
    }

    /// Copy `out.len()` bytes starting `offset` bytes after the front.
    /// Panics if that range is not held (callers check).
    pub fn copy_out(&self, offset: usize, out: &mut [u8]) {
        let (a, b) = self.slices(offset, out.len());
        out[..a.len()].copy_from_slice(a);
        out[a.len()..].copy_from_slice(b);
    }

    /// Append the `n` bytes at `offset` to `out` (what [`Self::copy_out`]
    /// does, into a vector that the caller hands on without copying again).
    pub fn extend_out(&self, offset: usize, n: usize, out: &mut Vec<u8>) {
        let (a, b) = self.slices(offset, n);
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }

    /// Drop `n` bytes from the front (at most `len`).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        // Uncommitted bytes may follow: keep positions, never reset head.
        self.head = (self.head + n) & self.mask();
    }

    /// Release memory beyond the committed bytes (rounded up to a power of
    /// two). Bytes written beyond the committed length are lost.
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
            let mut appended = vec![7u8];
            r.extend_out(off, c - off, &mut appended);
            assert_eq!(appended[0], 7);
            assert_eq!(appended[1..], want[..]);
            r.consume(c);
            model.drain(..c);
            assert_eq!(r.len(), model.len());
        }
        r.shrink();
        assert!(r.capacity() <= 32768);
    }

    #[test]
    fn filled_in_place_and_read_in_place() {
        let mut r = ByteRing::default();
        let mut model = std::collections::VecDeque::new();
        let mut next = 0u8;
        for round in 0..500usize {
            let want = (round * 37) % 5000;
            let (a, b) = r.spare(want);
            assert_eq!(a.len() + b.len(), want);
            // Write a prefix only, as a short socket read does.
            let wrote = want - want / 3;
            for x in a.iter_mut().chain(b.iter_mut()).take(wrote) {
                *x = next;
                model.push_back(next);
                next = next.wrapping_add(1);
            }
            r.commit(wrote);
            let take = (round * 53) % 4000;
            let take = take.min(r.len());
            let (a, b) = r.front(take);
            let got: Vec<u8> = a.iter().chain(b).copied().collect();
            let want: Vec<u8> = model.drain(..take).collect();
            assert_eq!(got, want);
            r.consume(take);
            assert_eq!(r.len(), model.len());
        }
    }

    #[test]
    fn uncommitted_writes_survive_growth() {
        let mut r = ByteRing::default();
        r.push(&[1; 3000]);
        r.consume(2500);
        r.write_at(600, b"later");
        r.push(&[2; 100]);
        r.write_at(100_000, b"far");
        r.write_at(500, &[3; 100]);
        r.commit(105);
        let mut out = [0u8; 605];
        r.copy_out(0, &mut out);
        assert_eq!(&out[..500], &[1u8; 500][..]);
        assert_eq!(&out[500..600], &[3; 100]);
        assert_eq!(&out[600..], b"later");
        r.consume(605);
        r.commit(100_003 - 605 - 100);
        let mut far = [0u8; 3];
        r.copy_out(100_000 - 605, &mut far);
        assert_eq!(&far, b"far");
    }
}
