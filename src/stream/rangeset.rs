//! A set of disjoint half-open `u64` ranges, merged on insert.
//!
//! Used on both sides of SACK: the receiver keeps the ranges it holds out of
//! order (to generate blocks without walking every buffered segment), the
//! sender keeps the ranges already reported as SACKed (so a block that is
//! reported again on every ACK costs nothing the second time). Backed by a
//! `BTreeMap<start, end>`: insert and lookup are O(log n) amortized.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Insert `[start, end)`, merging with overlapping or adjacent ranges.
    /// Returns the merged range that now contains it.
    pub fn insert(&mut self, start: u64, end: u64) -> (u64, u64) {
        if start >= end {
            return (start, end);
        }
        let (mut s, mut e) = (start, end);
        // A range starting before `start` that reaches it.
        if let Some((&ps, &pe)) = self.map.range(..=start).next_back() {
            if pe >= start {
                s = ps;
                e = e.max(pe);
                self.map.remove(&ps);
            }
        }
        // Ranges starting inside [s, e].
        while let Some((&ns, &ne)) = self.map.range(s..=e).next() {
            e = e.max(ne);
            self.map.remove(&ns);
        }
        self.map.insert(s, e);
        (s, e)
    }

    /// The parts of `[start, end)` not yet covered, in order, passed to `f`.
    pub fn for_each_gap(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
        let mut cur = start;
        if let Some((_, &pe)) = self.map.range(..=start).next_back() {
            cur = cur.max(pe);
        }
        for (&s, &e) in self.map.range(start..end) {
            if s > cur {
                f(cur, s.min(end));
            }
            cur = cur.max(e);
            if cur >= end {
                break;
            }
        }
        if cur < end {
            f(cur, end);
        }
    }

    /// Drop everything below `bound` (ranges straddling it are trimmed).
    pub fn remove_below(&mut self, bound: u64) {
        while let Some((&s, &e)) = self.map.iter().next() {
            if s >= bound {
                break;
            }
            self.map.remove(&s);
            if e > bound {
                self.map.insert(bound, e);
                break;
            }
        }
    }

    /// The ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }

    /// The range containing `x`, if any.
    pub fn containing(&self, x: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.map.range(..=x).next_back()?;
        (x < e).then_some((s, e))
    }

    /// The highest end, if any.
    pub fn max_end(&self) -> Option<u64> {
        self.map.iter().next_back().map(|(_, &e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..30), 1..40), cut in 0u64..230) {
            let mut set = RangeSet::default();
            let mut bits = [false; 256];
            for (s, l) in ops {
                let mut gaps = Vec::new();
                set.for_each_gap(s, s + l, |a, b| gaps.push((a, b)));
                let mut want = Vec::new();
                let mut i = s;
                while i < s + l {
                    if !bits[i as usize] {
                        let a = i;
                        while i < s + l && !bits[i as usize] { i += 1; }
                        want.push((a, i));
                    } else { i += 1; }
                }
                prop_assert_eq!(gaps, want);
                set.insert(s, s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            set.remove_below(cut);
            for b in &mut bits[..cut as usize] { *b = false; }
            let mut prev_end = None;
            for (s, e) in set.iter() {
                prop_assert!(s < e);
                if let Some(p) = prev_end { prop_assert!(s > p); }
                prev_end = Some(e);
            }
            for x in 0..256u64 {
                prop_assert_eq!(set.containing(x).is_some(), bits[x as usize]);
            }
        }
    }
}
