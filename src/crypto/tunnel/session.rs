//! One peer's tunnel session: sealing and opening PILS frames in place (spec
//! §4.6–§4.8, with the interop-safe behaviour of §12.9).
//!
//! Send side: one AES-256-GCM key (expanded once), our 4-byte nonce prefix
//! (given by the caller, who draws it at random, §4.6) and a counter that
//! starts at 1 and never repeats; running out of counters is
//! [`CryptoError::CounterExhausted`], never a wrap (a (key, nonce) pair must
//! never repeat).
//!
//! Receive side: replay state is keyed by the *peer's* nonce prefix (§4.8
//! item 1). A reference peer picks a new prefix and restarts its counter at 1
//! whenever it re-derives its session (on every PILA it accepts), while the key
//! stays the same. So:
//!
//! * an authenticated frame with a new prefix starts a fresh window and
//!   becomes the current epoch;
//! * the previous epoch's window stays usable for [`PREFIX_GRACE`] (frames
//!   reordered across the switch), then the prefix is retired;
//! * frames with a retired prefix are rejected ([`CryptoError::RetiredPrefix`]):
//!   they authenticate (same key) but may be captured replays;
//! * frames carrying *our* send prefix are rejected ([`CryptoError::OwnPrefix`]):
//!   both directions share the key (§4.1), so one of our own frames reflected
//!   back would otherwise authenticate if the caller ever matched it to this
//!   session; and a peer that drew the same prefix would be reusing our
//!   nonces (§12.9 (c)), which is already fatal for the key.
//!
//! Order of operations in [`Session::open_in_place`]: framing checks, replay
//! *check* (no state change), GCM open with AAD = sender id, and only then
//! commit of the counter (and of a prefix switch). A forged frame therefore
//! can never advance a window or switch epochs (§12.9 (a)).
//!
//! Neither direction allocates per packet. The only allocation is the list of
//! retired prefixes, which grows by one entry per peer prefix switch up to
//! [`RETIRED_PREFIX_LIMIT`].

use std::time::{Duration, Instant};

use super::aead::Aead;
use super::replay::{ReplayError, ReplayWindow};
use super::{CryptoError, KEY_LEN};

/// PILS magic (§3).
pub const PILS_MAGIC: [u8; 4] = *b"PILS";
/// Bytes before the ciphertext: magic (4) + sender id (4) + nonce (12) (§4.6).
pub const PILS_HEADER_LEN: usize = 20;
/// AES-GCM tag length (§4.6).
pub const TAG_LEN: usize = 16;
/// Bytes a PILS frame adds around the virtual packet (§3.2: 4 + 4 + 12 + 16).
pub const PILS_OVERHEAD: usize = PILS_HEADER_LEN + TAG_LEN;
/// Shortest frame the reference accepts (§4.7): overhead with an empty plaintext.
pub const PILS_MIN_LEN: usize = PILS_OVERHEAD;
/// Largest frame we seal: a UDP datagram's payload cannot be longer (§3.1).
pub const MAX_FRAME_LEN: usize = 65_535;
/// Highest send counter; after it the session is exhausted.
pub const MAX_COUNTER: u64 = u64::MAX;
/// How long the peer's previous nonce prefix stays acceptable after it
/// switched to a new one (§4.8 item 1, "e.g. 5 s").
pub const PREFIX_GRACE: Duration = Duration::from_secs(5);
/// How many retired peer prefixes one session remembers (4 KiB). Beyond it
/// the oldest retired prefix is forgotten (issue 10 item 10: refusing
/// further switches made a session reject every frame after 1,024 switches
/// by a peer, until restart). A frame captured under a forgotten prefix could
/// then be replayed once more (at most one replay window, 256 frames); a
/// reference peer switches only when it accepts a PILA from us, so an
/// attacker needs over a thousand such switches first.
pub const RETIRED_PREFIX_LIMIT: usize = 1024;

const NONCE_OFF: usize = 8;
const CT_OFF: usize = PILS_HEADER_LEN;

/// Receive state for one of the peer's nonce prefixes.
#[derive(Debug, Clone)]
struct Epoch {
    prefix: [u8; 4],
    window: ReplayWindow,
}

/// Which receive state a frame belongs to, decided before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    New,
}

/// A tunnel session with one peer (§4.1: one key for both directions).
pub struct Session {
    aead: Aead,
    send_prefix: [u8; 4],
    /// Next counter to send; 0 once [`MAX_COUNTER`] has been used.
    next_send: u64,
    current: Option<Epoch>,
    /// The epoch before `current` and when it retires.
    previous: Option<(Epoch, Instant)>,
    retired: Vec<[u8; 4]>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Session")
            .field("send_prefix", &self.send_prefix)
            .field("next_send", &self.next_send)
            .field("peer_prefix", &self.current.as_ref().map(|e| e.prefix))
            .field("retired", &self.retired.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with the tunnel `key` (from
    /// [`derive_tunnel_key`](super::derive_tunnel_key)) and our send nonce
    /// prefix, which the caller draws uniformly at random (§4.6) and must
    /// change whenever it builds a new session for the same key (§4.8 item 2).
    pub fn new(key: [u8; KEY_LEN], send_prefix: [u8; 4]) -> Session {
        Session::with_next_counter(key, send_prefix, 1)
    }

    /// Like [`Session::new`] but the first frame is sent with counter `next`
    /// (0 is treated as 1). Only for callers that know every lower counter is
    /// unused with this (key, prefix), e.g. tests and benchmarks: reusing a
    /// (key, nonce) pair breaks AES-GCM.
    pub fn with_next_counter(key: [u8; KEY_LEN], send_prefix: [u8; 4], next: u64) -> Session {
        Session {
            aead: Aead::new(&key),
            send_prefix,
            next_send: next.max(1),
            current: None,
            previous: None,
            retired: Vec::new(),
        }
    }

    /// Our send nonce prefix.
    pub fn send_prefix(&self) -> [u8; 4] {
        self.send_prefix
    }

    /// The counter the next sealed frame will carry, or `None` when exhausted.
    pub fn next_send_counter(&self) -> Option<u64> {
        (self.next_send != 0).then_some(self.next_send)
    }

    /// The peer's current nonce prefix, once a frame from it has been accepted.
    pub fn peer_prefix(&self) -> Option<[u8; 4]> {
        self.current.as_ref().map(|e| e.prefix)
    }

    /// Seals a PILS frame in place. The caller has written the plaintext
    /// virtual packet at `frame[20..20 + plaintext_len]` and left at least 16
    /// bytes after it. Writes "PILS", `sender_id` (big-endian; also the AAD),
    /// the nonce (our prefix ‖ counter, big-endian), encrypts in place and
    /// appends the tag. Returns the frame length, `36 + plaintext_len`.
    pub fn seal_in_place(
        &mut self,
        sender_id: u32,
        frame: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, CryptoError> {
        let needed = plaintext_len.saturating_add(PILS_OVERHEAD);
        if needed > MAX_FRAME_LEN {
            return Err(CryptoError::FrameTooLarge { len: needed });
        }
        if frame.len() < needed {
            return Err(CryptoError::BufferTooSmall {
                needed,
                have: frame.len(),
            });
        }
        if self.next_send == 0 {
            return Err(CryptoError::CounterExhausted);
        }
        let counter = self.next_send;
        // Consume the counter before anything else: never reuse it.
        self.next_send = counter.wrapping_add(1);

        let aad = sender_id.to_be_bytes();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.send_prefix);
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        frame[..4].copy_from_slice(&PILS_MAGIC);
        frame[4..NONCE_OFF].copy_from_slice(&aad);
        frame[NONCE_OFF..CT_OFF].copy_from_slice(&nonce);

        let frame = &mut frame[..needed];
        let (body, tag_out) = frame.split_at_mut(needed - TAG_LEN);
        let tag = self
            .aead
            .seal(&nonce, &aad, &mut body[CT_OFF..])
            .map_err(|_| CryptoError::FrameTooLarge { len: needed })?;
        tag_out.copy_from_slice(&tag);
        Ok(needed)
    }

    /// Opens a PILS frame in place and returns the plaintext virtual packet
    /// (a sub-slice of `frame`). Checks the length and magic, the replay state
    /// of the peer prefix (without changing it), authenticates and decrypts
    /// with AAD = the sender id bytes, and only then records the counter.
    /// `now` drives the retirement of the peer's previous prefix.
    ///
    /// On error nothing is recorded and the content of `frame` is unspecified.
    pub fn open_in_place<'a>(
        &mut self,
        frame: &'a mut [u8],
        now: Instant,
    ) -> Result<&'a mut [u8], CryptoError> {
        let len = frame.len();
        if len < PILS_MIN_LEN {
            return Err(CryptoError::Truncated { len });
        }
        if frame[..4] != PILS_MAGIC {
            return Err(CryptoError::BadMagic);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&frame[NONCE_OFF..CT_OFF]);
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&nonce[..4]);
        let mut ctr = [0u8; 8];
        ctr.copy_from_slice(&nonce[4..]);
        let counter = u64::from_be_bytes(ctr);

        self.retire_expired(now);
        let slot = self.classify(prefix, counter)?;

        let (head, rest) = frame.split_at_mut(CT_OFF);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let mut tag_arr = [0u8; TAG_LEN];
        tag_arr.copy_from_slice(tag);
        self.aead
            .open(&nonce, &head[4..NONCE_OFF], body, &tag_arr)
            .map_err(|_| CryptoError::AuthFailed)?;

        self.commit(slot, prefix, counter, now);
        Ok(body)
    }

    /// Adds a retired prefix, forgetting the oldest beyond the limit.
    fn retire(&mut self, prefix: [u8; 4]) {
        if self.retired.len() >= RETIRED_PREFIX_LIMIT {
            self.retired.remove(0);
        }
        self.retired.push(prefix);
    }

    /// Moves the previous epoch to the retired list once its grace is over.
    fn retire_expired(&mut self, now: Instant) {
        if let Some((_, until)) = &self.previous {
            if now >= *until {
                if let Some((epoch, _)) = self.previous.take() {
                    self.retire(epoch.prefix);
                }
            }
        }
    }

    /// Decides which epoch a frame belongs to and checks its counter there.
    fn classify(&self, prefix: [u8; 4], counter: u64) -> Result<Slot, CryptoError> {
        if prefix == self.send_prefix {
            return Err(CryptoError::OwnPrefix);
        }
        let map = |e: ReplayError| match e {
            ReplayError::Replayed => CryptoError::Replayed { counter },
            ReplayError::TooOld => CryptoError::TooOld { counter },
        };
        if let Some(cur) = &self.current {
            if cur.prefix == prefix {
                cur.window.check(counter).map_err(map)?;
                return Ok(Slot::Current);
            }
        }
        if let Some((prev, _)) = &self.previous {
            if prev.prefix == prefix {
                prev.window.check(counter).map_err(map)?;
                return Ok(Slot::Previous);
            }
        }
        if self.retired.contains(&prefix) {
            return Err(CryptoError::RetiredPrefix { prefix });
        }
        ReplayWindow::new().check(counter).map_err(map)?;
        Ok(Slot::New)
    }

    /// Records an authenticated counter.
    fn commit(&mut self, slot: Slot, prefix: [u8; 4], counter: u64, now: Instant) {
        match slot {
            Slot::Current => {
                if let Some(cur) = &mut self.current {
                    cur.window.commit(counter);
                }
            }
            Slot::Previous => {
                if let Some((prev, _)) = &mut self.previous {
                    prev.window.commit(counter);
                }
            }
            Slot::New => {
                let mut window = ReplayWindow::new();
                window.commit(counter);
                let fresh = Epoch { prefix, window };
                if let Some(old) = self.current.replace(fresh) {
                    // A third prefix supersedes the one still in its grace.
                    if let Some((gone, _)) = self.previous.take() {
                        self.retire(gone.prefix);
                    }
                    let until = now.checked_add(PREFIX_GRACE).unwrap_or(now);
                    self.previous = Some((old, until));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x11; 32];

    fn frame_with(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; PILS_OVERHEAD + payload.len()];
        f[CT_OFF..CT_OFF + payload.len()].copy_from_slice(payload);
        f
    }

    fn seal(s: &mut Session, payload: &[u8]) -> Vec<u8> {
        let mut f = frame_with(payload);
        let n = s.seal_in_place(42, &mut f, payload.len()).unwrap();
        assert_eq!(n, f.len());
        f
    }

    #[test]
    fn round_trip_and_counters() {
        let mut tx = Session::new(KEY, [1, 2, 3, 4]);
        let mut rx = Session::new(KEY, [9, 9, 9, 9]);
        let t = Instant::now();
        for i in 1..=3u64 {
            assert_eq!(tx.next_send_counter(), Some(i));
            let mut f = seal(&mut tx, b"hello");
            assert_eq!(&f[..4], b"PILS");
            assert_eq!(&f[4..8], &42u32.to_be_bytes());
            assert_eq!(&f[8..12], &[1, 2, 3, 4]);
            assert_eq!(&f[12..20], &i.to_be_bytes());
            assert_eq!(rx.open_in_place(&mut f, t).unwrap(), b"hello");
        }
        assert_eq!(rx.peer_prefix(), Some([1, 2, 3, 4]));
        // Empty plaintext is a valid 36-byte frame.
        let mut f = seal(&mut tx, b"");
        assert_eq!(f.len(), 36);
        assert_eq!(rx.open_in_place(&mut f, t).unwrap(), b"");
    }

    #[test]
    fn seal_errors() {
        let mut s = Session::new(KEY, [0; 4]);
        let mut f = vec![0u8; 40];
        assert_eq!(
            s.seal_in_place(1, &mut f, 5),
            Err(CryptoError::BufferTooSmall {
                needed: 41,
                have: 40
            })
        );
        assert_eq!(
            s.seal_in_place(1, &mut f, usize::MAX),
            Err(CryptoError::FrameTooLarge { len: usize::MAX })
        );
        // Errors do not consume counters.
        assert_eq!(s.next_send_counter(), Some(1));
        // A larger buffer than needed is fine; only the frame prefix is written.
        let mut big = vec![0xeeu8; 100];
        assert_eq!(s.seal_in_place(1, &mut big, 4), Ok(40));
        assert!(big[40..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn counter_exhaustion_is_an_error_not_a_wrap() {
        let mut tx = Session::with_next_counter(KEY, [5; 4], MAX_COUNTER);
        let mut rx = Session::new(KEY, [6; 4]);
        let mut f = seal(&mut tx, b"last");
        assert_eq!(&f[12..20], &[0xff; 8]);
        assert_eq!(tx.next_send_counter(), None);
        let mut g = frame_with(b"x");
        assert_eq!(
            tx.seal_in_place(42, &mut g, 1),
            Err(CryptoError::CounterExhausted)
        );
        assert!(rx.open_in_place(&mut f, Instant::now()).is_ok());
        // Counter 0 is treated as 1.
        assert_eq!(
            Session::with_next_counter(KEY, [0; 4], 0).next_send_counter(),
            Some(1)
        );
    }

    #[test]
    fn open_errors() {
        let mut tx = Session::new(KEY, [1; 4]);
        let mut rx = Session::new(KEY, [2; 4]);
        let t = Instant::now();
        assert_eq!(
            rx.open_in_place(&mut [0u8; 35], t),
            Err(CryptoError::Truncated { len: 35 })
        );
        let mut f = seal(&mut tx, b"abc");
        f[3] = b'T';
        assert_eq!(rx.open_in_place(&mut f, t), Err(CryptoError::BadMagic));
        // Wrong key.
        let mut other = Session::new([0x22; 32], [1; 4]);
        let mut f = seal(&mut other, b"abc");
        assert_eq!(rx.open_in_place(&mut f, t), Err(CryptoError::AuthFailed));
        // Counter 0 (forged or broken sender) is rejected before decryption.
        let mut f = seal(&mut tx, b"abc");
        f[12..20].fill(0);
        assert_eq!(
            rx.open_in_place(&mut f, t),
            Err(CryptoError::Replayed { counter: 0 })
        );
        // None of the failures above recorded anything.
        assert_eq!(rx.peer_prefix(), None);
        let mut f = seal(&mut tx, b"ok");
        assert_eq!(rx.open_in_place(&mut f, t).unwrap(), b"ok");
    }

    #[test]
    fn own_prefix_is_rejected() {
        let mut a = Session::new(KEY, [3; 4]);
        let mut f = seal(&mut a, b"to peer");
        assert_eq!(
            a.open_in_place(&mut f, Instant::now()),
            Err(CryptoError::OwnPrefix)
        );
    }

    #[test]
    fn forged_huge_counter_does_not_advance_the_window() {
        let mut tx = Session::new(KEY, [1; 4]);
        let mut rx = Session::new(KEY, [2; 4]);
        let t = Instant::now();
        let mut f1 = seal(&mut tx, b"one");
        assert!(rx.open_in_place(&mut f1, t).is_ok());
        let mut forged = seal(&mut tx, b"two");
        let mut genuine = forged.clone();
        forged[12..20].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            rx.open_in_place(&mut forged, t),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(rx.open_in_place(&mut genuine, t).unwrap(), b"two");
    }

    #[test]
    fn peer_prefix_switch_grace_and_retirement() {
        let mut old = Session::new(KEY, [0xa1; 4]);
        let mut rx = Session::new(KEY, [0xbb; 4]);
        let t0 = Instant::now();
        let mut a1 = seal(&mut old, b"a1");
        let mut a2 = seal(&mut old, b"a2");
        let mut a3 = seal(&mut old, b"a3");
        let a1_copy = a1.clone();
        rx.open_in_place(&mut a1, t0).unwrap();
        let a2_copy = a2.clone();
        // The peer re-derives: new prefix, counter back to 1.
        let mut new = Session::new(KEY, [0xa2; 4]);
        let mut b1 = seal(&mut new, b"b1");
        assert_eq!(rx.open_in_place(&mut b1, t0).unwrap(), b"b1");
        assert_eq!(rx.peer_prefix(), Some([0xa2; 4]));
        // Within the grace period, reordered frames of the old prefix pass once.
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(rx.open_in_place(&mut a2, t1).unwrap(), b"a2");
        let mut again = a2_copy.clone();
        assert_eq!(
            rx.open_in_place(&mut again, t1),
            Err(CryptoError::Replayed { counter: 2 })
        );
        // After the grace period the old prefix is retired.
        let t2 = t0 + PREFIX_GRACE;
        assert_eq!(
            rx.open_in_place(&mut a3, t2),
            Err(CryptoError::RetiredPrefix { prefix: [0xa1; 4] })
        );
        // Even a replay of the very first frame of the old prefix.
        let mut a1_replay = a1_copy.clone();
        assert!(matches!(
            rx.open_in_place(&mut a1_replay, t2),
            Err(CryptoError::RetiredPrefix { .. })
        ));
        // The new prefix keeps working.
        let mut b2 = seal(&mut new, b"b2");
        assert_eq!(rx.open_in_place(&mut b2, t2).unwrap(), b"b2");
    }

    #[test]
    fn third_prefix_retires_the_one_in_grace() {
        let mut rx = Session::new(KEY, [0; 4]);
        let t = Instant::now();
        let mut p1 = Session::new(KEY, [1; 4]);
        let mut p2 = Session::new(KEY, [2; 4]);
        let mut p3 = Session::new(KEY, [3; 4]);
        let mut f = seal(&mut p1, b"1");
        rx.open_in_place(&mut f, t).unwrap();
        let mut late1 = seal(&mut p1, b"1b");
        let mut f = seal(&mut p2, b"2");
        rx.open_in_place(&mut f, t).unwrap();
        let mut late2 = seal(&mut p2, b"2b");
        let mut f = seal(&mut p3, b"3");
        rx.open_in_place(&mut f, t).unwrap();
        assert_eq!(
            rx.open_in_place(&mut late1, t),
            Err(CryptoError::RetiredPrefix { prefix: [1; 4] })
        );
        assert_eq!(rx.open_in_place(&mut late2, t).unwrap(), b"2b");
    }

    #[test]
    fn forged_new_prefix_does_not_switch_epochs() {
        let mut tx = Session::new(KEY, [1; 4]);
        let mut rx = Session::new(KEY, [2; 4]);
        let t = Instant::now();
        let mut f = seal(&mut tx, b"x");
        rx.open_in_place(&mut f, t).unwrap();
        let mut forged = seal(&mut tx, b"y");
        let mut genuine = forged.clone();
        forged[8..12].copy_from_slice(&[7; 4]);
        assert_eq!(
            rx.open_in_place(&mut forged, t),
            Err(CryptoError::AuthFailed)
        );
        assert_eq!(rx.peer_prefix(), Some([1; 4]));
        // Long after any grace period the current prefix still works.
        let later = t + Duration::from_secs(3600);
        assert_eq!(rx.open_in_place(&mut genuine, later).unwrap(), b"y");
    }

    #[test]
    fn too_many_prefixes() {
        // Past the limit the oldest retired prefix is forgotten: the session
        // keeps accepting new epochs (it used to reject everything).
        let mut rx = Session::new(KEY, [0; 4]);
        let t = Instant::now();
        let n = RETIRED_PREFIX_LIMIT as u32 + 10;
        for i in 0..n {
            let mut tx = Session::new(KEY, (i + 1).to_be_bytes());
            let mut f = seal(&mut tx, b"p");
            assert!(rx.open_in_place(&mut f, t).is_ok(), "switch {i}");
        }
        assert_eq!(rx.retired.len(), RETIRED_PREFIX_LIMIT);
        // A recently retired prefix is still refused.
        let mut tx = Session::new(KEY, (n - 3).to_be_bytes());
        let mut f = seal(&mut tx, b"p");
        assert_eq!(
            rx.open_in_place(&mut f, t),
            Err(CryptoError::RetiredPrefix {
                prefix: (n - 3).to_be_bytes()
            })
        );
    }
}
