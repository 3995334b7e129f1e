//! The receive replay window for PILS counters (spec §4.7): 256 counters
//! below and including the highest one accepted.
//!
//! Checking and committing are separate because a frame must be
//! authenticated before it may change any replay state: the reference
//! advances its maximum before the GCM check, so one forged frame with a huge
//! counter makes every later genuine frame "too old" (§12.9 (a)). The caller
//! runs [`ReplayWindow::check`], opens the frame, and only on success calls
//! [`ReplayWindow::commit`].
//!
//! Counter 0. The reference accepts *anything* while its maximum is 0, so it
//! accepts counter 0 any number of times before the first non-zero counter
//! (`replay_window.json` → `counter_zero_quirk`). No sender may use counter 0
//! (§4.6: counters start at 1, and the reference pre-increments), so a
//! counter-0 frame can only be forged or broken. We model the window as if
//! counter 0 had already been seen: a fresh window has maximum 0 with bit 0
//! set, so counter 0 is always [`ReplayError::Replayed`], while every other
//! counter behaves exactly as in the reference (including the quirk's `7`
//! accepted once, then replayed). This costs no interoperability, since
//! reference senders start at 1.
//!
//! The bitmap is a ring of 256 bits indexed by `counter mod 256` (the RFC 6479
//! layout), so sliding the window clears bits instead of shifting the map.

/// Number of counters the window covers (§4.7, Appendix C).
pub const WINDOW_SIZE: u64 = 256;

const WORDS: usize = (WINDOW_SIZE / 64) as usize;

/// Why a counter is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Already accepted (or counter 0, which no sender may use).
    #[error("counter already seen")]
    Replayed,
    /// More than 255 below the highest accepted counter.
    #[error("counter older than the replay window")]
    TooOld,
}

/// A 256-counter sliding replay window (§4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest counter committed (0 when none: counter 0 is pre-seen).
    max: u64,
    /// Bit `c mod 256` is set when counter `c` in `[max-255, max]` was seen.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window (only counter 0 counts as seen).
    pub const fn new() -> ReplayWindow {
        ReplayWindow {
            max: 0,
            bits: [1, 0, 0, 0],
        }
    }

    /// The highest committed counter (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    #[inline]
    fn slot(counter: u64) -> (usize, u64) {
        let i = (counter % WINDOW_SIZE) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    /// Whether `counter` would be accepted. Changes nothing.
    #[inline]
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter > self.max {
            return Ok(());
        }
        if self.max - counter >= WINDOW_SIZE {
            return Err(ReplayError::TooOld);
        }
        let (w, b) = Self::slot(counter);
        if self.bits[w] & b != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as seen, sliding the window if it is a new maximum.
    /// Call only after [`check`](Self::check) succeeded and the frame
    /// authenticated; committing a counter that is too old does nothing.
    #[inline]
    pub fn commit(&mut self, counter: u64) {
        if counter > self.max {
            let advance = counter - self.max;
            if advance >= WINDOW_SIZE {
                self.bits = [0; WORDS];
            } else {
                // Clear the slots of the counters the window slides over.
                for c in self.max + 1..counter {
                    let (w, b) = Self::slot(c);
                    self.bits[w] &= !b;
                }
            }
            self.max = counter;
            let (w, b) = Self::slot(counter);
            self.bits[w] |= b;
        } else if self.max - counter < WINDOW_SIZE {
            let (w, b) = Self::slot(counter);
            self.bits[w] |= b;
        }
    }

    /// [`check`](Self::check) then [`commit`](Self::commit), for callers that
    /// have already authenticated the frame.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        self.commit(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_zero_is_never_accepted() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
        assert_eq!(w.accept(7), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
        assert_eq!(w.accept(300), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn check_does_not_change_state() {
        let mut w = ReplayWindow::new();
        w.accept(10).unwrap();
        let before = w.clone();
        assert_eq!(w.check(1_000_000), Ok(()));
        assert_eq!(w.check(5), Ok(()));
        assert_eq!(w, before);
    }

    #[test]
    fn sliding_clears_old_slots() {
        let mut w = ReplayWindow::new();
        for c in 1..=256 {
            w.accept(c).unwrap();
        }
        // 257 reuses slot 1; 1 is now too old, 257 is fresh.
        assert_eq!(w.accept(257), Ok(()));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        assert_eq!(w.check(2), Err(ReplayError::Replayed));
        // Jump by 300: everything old is gone, only the new max is set.
        assert_eq!(w.accept(557), Ok(()));
        assert_eq!(w.check(557 - 255), Ok(()));
        assert_eq!(w.check(557 - 256), Err(ReplayError::TooOld));
        assert_eq!(w.check(557), Err(ReplayError::Replayed));
        // Slide by 10: the 9 skipped counters are accepted, each once.
        w.accept(567).unwrap();
        for c in 558..567 {
            assert_eq!(w.accept(c), Ok(()));
            assert_eq!(w.accept(c), Err(ReplayError::Replayed));
        }
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut w = ReplayWindow::new();
        w.accept(u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.check(u64::MAX - 255), Ok(()));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        w.commit(1); // too old: no effect
        assert_eq!(w.max(), u64::MAX);
    }
}
