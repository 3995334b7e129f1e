//! The receive side of a stream: in-order byte buffer, out-of-order
//! reassembly, the advertised window and SACK block generation (spec §7.3,
//! §7.5, §7.6, §7.8).
//!
//! Shape and costs:
//! * In-order bytes sit in a [`ByteRing`] until the application reads them.
//!   The window is counted in *segments* (§7.5), so the end offset of every
//!   in-order segment not yet fully read is kept in a queue (one slot each,
//!   like the reference's 512-slot queue); reads pop it in O(1) amortized.
//! * Out-of-order segments are written straight into the same ring at their
//!   place beyond the in-order bytes (no per-segment allocation; every byte is
//!   copied once in and once out). Their union is kept in a [`RangeSet`]
//!   (SACK blocks in O(1), in-order advance in O(log n)), and their
//!   `(start, end)` in a `BTreeMap` for duplicate detection and slot
//!   accounting.
//! * Memory is bounded by the byte cap (`recv_buffer_bytes`): a segment is
//!   accepted only if it ends within `cap` bytes of the oldest unread byte, so
//!   the ring never needs more than the cap (rounded up to a power of two),
//!   except that an in-order segment larger than the cap is accepted into an
//!   empty buffer. An in-order segment is never refused because out-of-order
//!   data holds space (no deadlock).

use std::collections::{BTreeMap, VecDeque};

use super::rangeset::RangeSet;
use super::ring::ByteRing;
use super::seq::to_wire;
use crate::wire::sack::{self, Block};

/// What happened to a received data segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New in-order data; `filled_gap` when buffered out-of-order data became
    /// in order as a result.
    InOrder {
        /// Buffered out-of-order data was delivered too.
        filled_gap: bool,
    },
    /// Buffered out of order.
    OutOfOrder,
    /// Nothing new (already received or already buffered).
    Duplicate,
    /// No room (slots or bytes); dropped without acknowledgement.
    NoRoom,
}

/// Receive buffer of one connection.
#[derive(Debug)]
pub struct RecvBuffer {
    ring: ByteRing,
    read_off: u64,
    rcv_nxt: u64,
    seg_ends: VecDeque<u64>,
    ooo: BTreeMap<u64, u64>,
    ooo_bytes: usize,
    ooo_ranges: RangeSet,
    last_ooo: u64,
    max_seg: usize,
    slots: usize,
    cap: usize,
}

impl RecvBuffer {
    /// An empty buffer with `slots` segments of window and `cap` bytes; `mss`
    /// is our own segment size (the window in bytes assumes segments at least
    /// that large).
    pub fn new(slots: u16, cap: usize, mss: usize) -> RecvBuffer {
        RecvBuffer {
            ring: ByteRing::default(),
            read_off: 0,
            rcv_nxt: 0,
            seg_ends: VecDeque::new(),
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            ooo_ranges: RangeSet::default(),
            last_ooo: 0,
            max_seg: mss.max(1),
            slots: (slots as usize).max(1),
            cap: cap.max(1),
        }
    }

    /// Offset one past the in-order data.
    pub fn rcv_nxt(&self) -> u64 {
        self.rcv_nxt
    }

    /// Bytes ready to read.
    pub fn readable(&self) -> usize {
        self.ring.len()
    }

    /// True when out-of-order data is buffered.
    pub fn has_ooo(&self) -> bool {
        !self.ooo.is_empty()
    }

    /// Bytes of memory held by the ring (out-of-order data included).
    pub fn memory(&self) -> usize {
        self.ring.capacity()
    }

    /// Accept a data segment starting at offset `off`.
    pub fn accept(&mut self, off: u64, data: &[u8]) -> Accepted {
        if data.is_empty() {
            return Accepted::Duplicate;
        }
        let end = off + data.len() as u64;
        if end <= self.rcv_nxt {
            return Accepted::Duplicate;
        }
        self.max_seg = self.max_seg.max(data.len());
        // Beyond the byte cap: refuse, except an in-order segment into an
        // empty buffer (a peer segment larger than the whole cap must still
        // get through; memory stays below cap + one segment).
        let empty_in_order = off <= self.rcv_nxt && self.rcv_nxt == self.read_off;
        if end > self.read_off + self.cap as u64 && !empty_in_order {
            return Accepted::NoRoom;
        }
        if off > self.rcv_nxt {
            if self.ooo.contains_key(&off) {
                return Accepted::Duplicate;
            }
            if self.seg_ends.len() + self.ooo.len() >= self.slots {
                return Accepted::NoRoom;
            }
            self.ring.write_at((off - self.read_off) as usize, data);
            self.ooo.insert(off, end);
            self.ooo_bytes += data.len();
            self.ooo_ranges.insert(off, end);
            self.last_ooo = off;
            return Accepted::OutOfOrder;
        }
        if self.seg_ends.len() >= self.slots {
            return Accepted::NoRoom;
        }
        // Trim what we already have (a peer may re-segment).
        let skip = (self.rcv_nxt - off) as usize;
        self.ring
            .write_at((self.rcv_nxt - self.read_off) as usize, &data[skip..]);
        let mut new_end = end;
        self.seg_ends.push_back(end);
        // Out-of-order data now contiguous with the in-order bytes is already
        // in place: just extend over it.
        let mut filled_gap = false;
        while let Some((s, e)) = self.ooo_ranges.first() {
            if s > new_end {
                break;
            }
            new_end = new_end.max(e);
            self.ooo_ranges.remove_below(new_end);
            filled_gap = true;
        }
        while let Some(entry) = self.ooo.first_entry() {
            if *entry.key() >= new_end {
                break;
            }
            let (start, e) = entry.remove_entry();
            self.ooo_bytes -= (e - start) as usize;
            // Slot accounting: one slot per buffered segment, released when
            // the application has read past its end.
            let last = self.seg_ends.back().copied().unwrap_or(0);
            self.seg_ends.push_back(e.min(new_end).max(last));
        }
        self.ring.commit((new_end - self.rcv_nxt) as usize);
        self.rcv_nxt = new_end;
        Accepted::InOrder { filled_gap }
    }

    /// Copy in-order bytes out; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.ring.len());
        self.ring.copy_out(0, &mut buf[..n]);
        self.consumed(n);
        n
    }

    /// Reads up to `max` in-order bytes into a new vector (one copy, for a
    /// caller that hands the bytes on as a vector).
    pub fn read_vec(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.ring.len());
        let mut out = Vec::with_capacity(n);
        self.ring.extend_out(0, n, &mut out);
        self.consumed(n);
        out
    }

    /// Offers up to `max` in-order bytes to `take` as two slices (the
    /// second is empty unless they wrap) and consumes as many as it
    /// returns: the bytes go on in place, with no copy here.
    pub fn read_with(&mut self, max: usize, take: impl FnOnce(&[u8], &[u8]) -> usize) -> usize {
        let n = max.min(self.ring.len());
        if n == 0 {
            return 0;
        }
        let (a, b) = self.ring.front(n);
        let used = take(a, b).min(n);
        self.consumed(used);
        used
    }

    fn consumed(&mut self, n: usize) {
        self.ring.consume(n);
        self.read_off += n as u64;
        while self.seg_ends.front().is_some_and(|&e| e <= self.read_off) {
            self.seg_ends.pop_front();
        }
    }

    /// The window to advertise, in segments (§7.5): free slots, limited by
    /// free bytes in units of the largest segment seen; never 0, at most
    /// 65535.
    pub fn window(&self) -> u16 {
        let used_slots = self.seg_ends.len() + self.ooo.len();
        let free_slots = self.slots.saturating_sub(used_slots);
        let used_bytes = (self.rcv_nxt - self.read_off) as usize + self.ooo_bytes;
        let free_bytes = self.cap.saturating_sub(used_bytes);
        let byte_slots = free_bytes / self.max_seg;
        free_slots.min(byte_slots).clamp(1, u16::MAX as usize) as u16
    }

    /// SACK blocks for the buffered out-of-order data (§7.6), in wire numbers
    /// (`base` is the wire number of offset 0). With at most four ranges they
    /// are all reported, lowest first, as the reference does; with more, the
    /// lowest three plus the one holding the most recently received segment
    /// (RFC 2018's advice), so the sender keeps learning about new arrivals.
    pub fn sack(&self, base: u32) -> sack::Repr {
        let mut r = sack::Repr::default();
        let blk = |(s, e): (u64, u64)| Block {
            left: to_wire(base, s),
            right: to_wire(base, e),
        };
        if self.ooo_ranges.len() <= sack::MAX_BLOCKS {
            for range in self.ooo_ranges.iter() {
                r.push(blk(range));
            }
            return r;
        }
        let recent = self.ooo_ranges.containing(self.last_ooo);
        let mut n = 0;
        for range in self.ooo_ranges.iter() {
            if n == 3 {
                break;
            }
            if Some(range) != recent {
                r.push(blk(range));
                n += 1;
            }
        }
        if let Some(range) = recent {
            r.push(blk(range));
        } else if let Some(range) = self.ooo_ranges.iter().nth(3) {
            r.push(blk(range));
        }
        r
    }

    /// Release memory not in use (nothing while out-of-order data is held:
    /// it lives in the ring beyond the in-order bytes).
    /// The byte cap (`recv_buffer_bytes`) in force.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Lowers (or restores) the byte cap under memory pressure. Data already
    /// accepted stays; the advertised window shrinks at once, and segments
    /// past the new cap are dropped (the sender retransmits them once the
    /// application has read). Never below one segment.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(self.max_seg);
    }

    pub fn shrink(&mut self) {
        if self.ooo.is_empty() {
            self.ring.shrink();
            self.seg_ends.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_and_counts_slots() {
        let mut r = RecvBuffer::new(8, 1 << 20, 4);
        assert_eq!(r.accept(4, b"efgh"), Accepted::OutOfOrder);
        assert_eq!(r.accept(4, b"efgh"), Accepted::Duplicate);
        assert_eq!(r.window(), 7);
        assert_eq!(r.sack(1).blocks(), &[Block { left: 5, right: 9 }]);
        assert_eq!(r.accept(0, b"abcd"), Accepted::InOrder { filled_gap: true });
        assert!(!r.has_ooo());
        assert_eq!(r.window(), 6);
        let mut b = [0u8; 16];
        assert_eq!(r.read(&mut b), 8);
        assert_eq!(&b[..8], b"abcdefgh");
        assert_eq!(r.window(), 8);
        // Overlapping re-segmented data only adds the new part.
        assert_eq!(
            r.accept(6, b"ghij"),
            Accepted::InOrder { filled_gap: false }
        );
        assert_eq!(r.read(&mut b), 2);
        assert_eq!(&b[..2], b"ij");
        // read_vec: the same bytes and the same bookkeeping (slots freed).
        assert_eq!(
            r.accept(10, b"klmn"),
            Accepted::InOrder { filled_gap: false }
        );
        assert_eq!(r.accept(14, b"op"), Accepted::InOrder { filled_gap: false });
        assert_eq!(r.window(), 6);
        assert_eq!(r.read_vec(5), b"klmno");
        assert_eq!(
            r.window(),
            7,
            "the first segment is consumed, the second not yet"
        );
        assert_eq!(r.read_vec(100), b"p");
        assert_eq!(r.read_vec(100), b"");
        assert_eq!(r.window(), 8);
    }

    #[test]
    fn bounded() {
        let mut r = RecvBuffer::new(4, 100, 10);
        assert_eq!(r.accept(95, &[0; 10]), Accepted::NoRoom);
        for i in 1..5 {
            assert_eq!(r.accept(i * 10, &[0; 10]), Accepted::OutOfOrder);
        }
        assert_eq!(r.accept(50, &[0; 10]), Accepted::NoRoom);
        assert_eq!(r.window(), 1);
        assert_eq!(
            r.accept(0, &[0; 10]),
            Accepted::InOrder { filled_gap: true }
        );
        assert_eq!(r.rcv_nxt(), 50);
    }

    #[test]
    fn segment_larger_than_cap_into_empty_buffer() {
        let mut r = RecvBuffer::new(4, 1000, 500);
        assert_eq!(
            r.accept(0, &[1; 1500]),
            Accepted::InOrder { filled_gap: false }
        );
        assert_eq!(r.accept(1500, &[1; 1500]), Accepted::NoRoom);
        assert_eq!(r.window(), 1);
        let mut b = [0u8; 2000];
        assert_eq!(r.read(&mut b), 1500);
        assert_eq!(
            r.accept(1500, &[1; 1500]),
            Accepted::InOrder { filled_gap: false }
        );
    }

    #[test]
    fn more_than_four_ranges_reports_recent() {
        let mut r = RecvBuffer::new(64, 1 << 20, 1);
        for i in [2u64, 4, 6, 8, 10] {
            r.accept(i, b"x");
        }
        r.accept(12, b"x");
        let b: Vec<u32> = r.sack(0).blocks().iter().map(|b| b.left).collect();
        assert_eq!(b, vec![2, 4, 6, 12]);
    }
}
