//! Token buckets for unauthenticated work (issue 10): PILA verification per
//! source address and in total, answers to undecryptable frames (node), new
//! node ids per source address (rendezvous). Each bucket is two numbers; the per-source table is
//! bounded and forgets full (idle) buckets first.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// One token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A global bucket plus one bucket per key (e.g. source IP).
#[derive(Debug)]
pub struct Limiter<K> {
    rate: f64,
    burst: f64,
    per_rate: f64,
    per_burst: f64,
    max_keys: usize,
    global: Bucket,
    per: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `rate`/`burst` for everything together, `per_rate`/`per_burst` per
    /// key, at most `max_keys` keys tracked (beyond that, unknown keys
    /// share the global bucket only after idle ones are dropped).
    pub fn new(
        rate: f64,
        burst: f64,
        per_rate: f64,
        per_burst: f64,
        max_keys: usize,
        now: Instant,
    ) -> Self {
        Limiter {
            rate,
            burst,
            per_rate,
            per_burst,
            max_keys,
            global: Bucket::new(burst, now),
            per: HashMap::new(),
        }
    }

    /// Whether one unit of work for `key` may run now.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.per.contains_key(key) && self.per.len() >= self.max_keys {
            // Forget keys whose bucket has refilled (idle sources).
            let (r, b) = (self.per_rate, self.per_burst);
            self.per.retain(|_, bk| {
                let dt = now.saturating_duration_since(bk.last).as_secs_f64();
                bk.tokens + dt * r < b
            });
            if self.per.len() >= self.max_keys {
                return false;
            }
        }
        let per_ok = self
            .per
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(self.per_burst, now))
            .take(self.per_rate, self.per_burst, now);
        per_ok && self.global.take(self.rate, self.burst, now)
    }

    /// Keys tracked.
    pub fn tracked(&self) -> usize {
        self.per.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_key_and_global_limits() {
        let t = Instant::now();
        let mut l = Limiter::new(10.0, 10.0, 2.0, 2.0, 3, t);
        assert!(l.allow(&1, t));
        assert!(l.allow(&1, t));
        assert!(!l.allow(&1, t), "per-key burst");
        assert!(l.allow(&1, t + Duration::from_millis(500)), "refills");
        for k in 2..=3 {
            assert!(l.allow(&k, t));
        }
        assert!(!l.allow(&4, t), "table full of busy keys");
        let later = t + Duration::from_secs(10);
        assert!(l.allow(&4, later), "idle keys forgotten");
        assert!(l.tracked() <= 3);
        let mut g = Limiter::new(1.0, 3.0, 100.0, 100.0, 100, t);
        assert_eq!((0..10).filter(|_| g.allow(&1, t)).count(), 3, "global");
    }
}
