//! Per-peer tunnel-key history (issue 10 item 2, spec §12.9 (c)).
//!
//! Pilot v1 derives one AES-GCM key per (our X25519 key, peer X25519 key)
//! and both directions share it, separated only by random 4-byte nonce
//! prefixes. Building a fresh session for a key we already used would start
//! our send counter at 1 again under that key, so (key, nonce) reuse is then
//! only a 2⁻³² prefix collision away, and every replayed PILA could force it.
//! So a session is never thrown away while its key may come back:
//!
//! * when a peer's key changes, the old session (send counter, nonce prefix,
//!   receive windows) moves here;
//! * a PILA that names a key retired here while a newer session exists is
//!   **refused**: a peer's X25519 key lives as long as its process, so a
//!   return to an old key is a replayed PILA, not a peer;
//! * when no session exists (the peer entry was dropped) and the PILA's key
//!   is here, the saved session is resumed, counter and windows included.
//!
//! Bounds: [`PER_PEER`] retired keys per peer, [`TOTAL`] in all; the oldest
//! entry is evicted first. An evicted key that comes back gets a new session
//! with a new random prefix (the 2⁻³² residual risk of the reference,
//! documented in docs/SECURITY.md).

use std::collections::{HashMap, VecDeque};

use crate::crypto::tunnel::Session;

/// Retired keys remembered per peer (a peer restarts rarely).
pub const PER_PEER: usize = 4;
/// Retired sessions remembered in total (a session is about 1 KiB).
pub const TOTAL: usize = 4096;

/// What to do with a PILA's X25519 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key of the current session.
    Current,
    /// A key never seen (or forgotten): derive a new session.
    New,
    /// A key we have a saved session for and no current session: resume it.
    Resume,
    /// A key superseded by the current session: refuse.
    Superseded,
}

/// Retired sessions, by peer.
#[derive(Default)]
pub struct KeyHistory {
    by_peer: HashMap<u32, Vec<([u8; 32], Session)>>,
    /// Insertion order for global eviction: (peer, key).
    order: VecDeque<(u32, [u8; 32])>,
}

impl KeyHistory {
    /// Classifies `key` for `node`, whose current session key is `current`.
    pub fn verdict(&self, node: u32, current: Option<[u8; 32]>, key: &[u8; 32]) -> Verdict {
        if current == Some(*key) {
            return Verdict::Current;
        }
        let known = self
            .by_peer
            .get(&node)
            .is_some_and(|v| v.iter().any(|(k, _)| k == key));
        match (known, current.is_some()) {
            (false, _) => Verdict::New,
            (true, true) => Verdict::Superseded,
            (true, false) => Verdict::Resume,
        }
    }

    /// Keeps the session of `key` that is being replaced.
    pub fn retire(&mut self, node: u32, key: [u8; 32], session: Session) {
        let list = self.by_peer.entry(node).or_default();
        list.retain(|(k, _)| *k != key);
        let mut dropped = None;
        if list.len() >= PER_PEER {
            dropped = Some(list.remove(0).0);
        }
        list.push((key, session));
        self.order
            .retain(|e| *e != (node, key) && Some(*e) != dropped.map(|d| (node, d)));
        self.order.push_back((node, key));
        while self.order.len() > TOTAL {
            if let Some((n, k)) = self.order.pop_front() {
                if let Some(l) = self.by_peer.get_mut(&n) {
                    l.retain(|(x, _)| *x != k);
                    if l.is_empty() {
                        self.by_peer.remove(&n);
                    }
                }
            }
        }
    }

    /// Takes back the saved session of `key` (for [`Verdict::Resume`]).
    pub fn resume(&mut self, node: u32, key: &[u8; 32]) -> Option<Session> {
        let list = self.by_peer.get_mut(&node)?;
        let at = list.iter().position(|(k, _)| k == key)?;
        let (_, s) = list.remove(at);
        if list.is_empty() {
            self.by_peer.remove(&node);
        }
        self.order.retain(|e| *e != (node, *key));
        Some(s)
    }

    /// Retired sessions held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(prefix: u8) -> Session {
        Session::new([7u8; 32], [prefix; 4])
    }

    #[test]
    fn old_keys_are_refused_and_resumed_sessions_keep_their_counter() {
        let mut h = KeyHistory::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(h.verdict(9, None, &a), Verdict::New);
        let mut s = session(1);
        let mut buf = vec![0u8; 64];
        s.seal_in_place(9, &mut buf, 8).unwrap();
        assert_eq!(s.next_send_counter(), Some(2));
        h.retire(9, a, s);
        assert_eq!(h.verdict(9, Some(b), &a), Verdict::Superseded);
        assert_eq!(h.verdict(9, Some(b), &b), Verdict::Current);
        assert_eq!(h.verdict(9, None, &a), Verdict::Resume);
        assert_eq!(h.verdict(8, Some(b), &a), Verdict::New);
        let back = h.resume(9, &a).unwrap();
        assert_eq!(back.next_send_counter(), Some(2));
        assert_eq!(back.send_prefix(), [1; 4]);
        assert!(h.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let mut h = KeyHistory::default();
        for i in 0..10u8 {
            h.retire(1, [i; 32], session(i));
        }
        assert_eq!(h.len(), PER_PEER);
        assert_eq!(h.verdict(1, Some([99; 32]), &[9; 32]), Verdict::Superseded);
        assert_eq!(h.verdict(1, Some([99; 32]), &[0; 32]), Verdict::New);
        for n in 0..(TOTAL as u32 + 10) {
            h.retire(n + 2, [0; 32], session(0));
        }
        assert!(h.len() <= TOTAL);
    }
}
