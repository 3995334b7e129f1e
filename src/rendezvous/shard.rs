//! A hash map split into fixed shards, so that growing it never stops the
//! registry for long.
//!
//! `std`'s `HashMap` grows by rehashing every entry into a table twice the
//! size, in the one insert that crosses the load factor. Under the
//! registry's lock that insert stops every lookup: at 917,504 nodes the
//! key index (`[u8; 32] -> u32`) took 48 ms and the node table 24 ms, in
//! the same registration (measured; the 73-86 ms maximum lookup latency
//! of the 1,000,000-node bench, BENCHMARKS.md). With [`SHARDS`] shards
//! each growth moves 1/64 of the entries (under 1 ms at a million), and
//! the shards cross their thresholds in different inserts.
//!
//! Hand-written because it is forty lines over `HashMap`: the concurrent
//! sharded maps on crates.io (dashmap and kin) bring a lock per shard,
//! which the registry, already behind one lock, does not want; the
//! incremental-resize maps are unmaintained. Each shard keeps `std`'s
//! randomly keyed SipHash, so a chosen key cannot flood one shard's
//! buckets; choosing keys to fill one shard only makes that shard's
//! growths as large as the unsharded map's.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Number of shards (a power of two). 64 empty maps cost nothing
/// measurable; a million entries make 64 growths of ~16,000 entries each.
pub const SHARDS: usize = 64;

/// Picks a key's shard. Ids are handed out in sequence, so their low bits
/// spread evenly; public keys are uniformly random bytes.
pub trait ShardKey {
    /// The shard, `0..SHARDS`.
    fn shard(&self) -> usize;
}

impl ShardKey for u32 {
    fn shard(&self) -> usize {
        *self as usize % SHARDS
    }
}

impl ShardKey for [u8; 32] {
    fn shard(&self) -> usize {
        self[0] as usize % SHARDS
    }
}

/// A `HashMap` in [`SHARDS`] parts; the subset of its API the registry uses.
#[derive(Debug, Clone)]
pub struct ShardedMap<K, V> {
    shards: Vec<HashMap<K, V>>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }
}

impl<K: ShardKey + Hash + Eq, V> ShardedMap<K, V> {
    /// The value for `k`.
    pub fn get<Q: ShardKey + Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.shards[k.shard()].get(k)
    }

    /// The value for `k`, mutable.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.shards[k.shard()].get_mut(k)
    }

    /// Whether `k` is present.
    pub fn contains_key(&self, k: &K) -> bool {
        self.shards[k.shard()].contains_key(k)
    }

    /// Inserts, returning the value `k` had.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = self.shards[k.shard()].insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `k`, returning its value.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let old = self.shards[k.shard()].remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The values of shard `i` (`0..SHARDS`), for work done a shard at a
    /// time.
    pub fn shard_values(&self, i: usize) -> impl Iterator<Item = &V> {
        self.shards.get(i).into_iter().flat_map(|s| s.values())
    }

    /// Every value, shard by shard (no order).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_map() {
        let mut m: ShardedMap<u32, u32> = ShardedMap::default();
        let mut reference = HashMap::new();
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let k = x % 3000;
            match x % 3 {
                0 => assert_eq!(m.insert(k, x), reference.insert(k, x)),
                1 => assert_eq!(m.remove(&k), reference.remove(&k)),
                _ => assert_eq!(m.get(&k), reference.get(&k)),
            }
            assert_eq!(m.len(), reference.len());
            assert_eq!(m.contains_key(&k), reference.contains_key(&k));
        }
        let mut all: Vec<_> = m.values().copied().collect();
        all.sort_unstable();
        let mut want: Vec<_> = reference.into_values().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        let by_shard: usize = (0..SHARDS).map(|i| m.shard_values(i).count()).sum();
        assert_eq!(by_shard, want.len());
    }
}
