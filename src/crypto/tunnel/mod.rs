//! Tunnel crypto (spec §4): key agreement, PILA authentication, the replay
//! window and the per-peer session that seals and opens PILS frames.
//!
//! Shape, and why:
//!
//! * [`KeyPair`] is the process-wide X25519 key (§4.1); [`derive_tunnel_key`]
//!   turns it and a peer's public key into the AES-256-GCM key shared by both
//!   directions (§4.5). The two steps of HKDF are public ([`hkdf_prk`],
//!   [`tunnel_key_from_prk`]) so the vector's PRK can be checked.
//! * [`sign_auth`] / [`verify_auth`] produce and check the PILA signature over
//!   the 40-byte [`auth_message`] (§4.2). Framing lives in `wire::frame`.
//! * [`ReplayWindow`] separates [`ReplayWindow::check`] from
//!   [`ReplayWindow::commit`] because a frame must be authenticated *before*
//!   it may change replay state (§4.7, §12.9 (a)).
//! * [`Session`] is one peer's tunnel: the cipher (expanded once), our send
//!   nonce prefix and counter, and receive windows keyed by the *peer's* nonce
//!   prefix (§4.8 item 1). It works in place on caller-owned frame buffers and
//!   never allocates per packet.
//!
//! Nothing here reads a clock or draws hidden randomness: prefixes and
//! `Instant`s are passed in.

mod aead;
mod replay;
mod session;

pub use replay::{ReplayError, ReplayWindow, WINDOW_SIZE};
pub use session::{
    Session, MAX_COUNTER, MAX_FRAME_LEN, PILS_HEADER_LEN, PILS_MAGIC, PILS_MIN_LEN, PILS_OVERHEAD,
    PREFIX_GRACE, RETIRED_PREFIX_LIMIT, TAG_LEN,
};

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::identity::{self, Identity};

/// HKDF `info` for the tunnel key (§4.5).
pub const HKDF_INFO: &[u8] = b"pilot-tunnel-v1";
/// Length of the AES-256-GCM tunnel key (§4.5).
pub const KEY_LEN: usize = 32;
/// Length of an X25519 public or private key (RFC 7748).
pub const X25519_LEN: usize = 32;
/// Prefix of the PILA signed message (§4.2).
pub const AUTH_TAG: &[u8; 4] = b"auth";
/// Length of the PILA signed message: "auth" ‖ node id (4) ‖ X25519 key (32) (§4.2).
pub const AUTH_MESSAGE_LEN: usize = 40;

/// Errors of the tunnel: key agreement and PILS sealing/opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// X25519 produced the all-zero secret: the peer sent a low-order public
    /// key. The exchange must be dropped (§4.5).
    #[error("peer X25519 key is of low order (all-zero shared secret)")]
    LowOrderPeerKey,
    /// `seal_in_place` was given a frame buffer too short for header,
    /// plaintext and tag.
    #[error("frame buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The frame would be longer than a UDP payload can be (65 535 bytes).
    #[error("PILS frame of {len} bytes is too large")]
    FrameTooLarge {
        /// Frame length that was asked for.
        len: usize,
    },
    /// Every counter of this session has been used; it must be re-keyed
    /// (a (key, nonce) pair may never repeat, §4.6).
    #[error("send counter exhausted; the session must be re-keyed")]
    CounterExhausted,
    /// Frame shorter than magic + sender id + nonce + tag (36 bytes, §4.7).
    #[error("PILS frame too short ({len} bytes)")]
    Truncated {
        /// Frame length.
        len: usize,
    },
    /// The frame does not start with "PILS".
    #[error("not a PILS frame")]
    BadMagic,
    /// The counter was already accepted for this peer prefix (or is 0, which
    /// no sender may use, §4.6).
    #[error("replayed PILS counter {counter}")]
    Replayed {
        /// The counter.
        counter: u64,
    },
    /// The counter is older than the 256-counter window (§4.7).
    #[error("PILS counter {counter} is older than the replay window")]
    TooOld {
        /// The counter.
        counter: u64,
    },
    /// The frame uses a nonce prefix the peer has abandoned (§4.8 item 1).
    #[error("PILS nonce prefix {prefix:02x?} has been retired")]
    RetiredPrefix {
        /// The prefix.
        prefix: [u8; 4],
    },
    /// The frame carries our own send nonce prefix: a reflected frame of ours
    /// (both directions share the key) or a peer reusing our nonces.
    #[error("PILS frame carries our own nonce prefix")]
    OwnPrefix,
    /// Kept for API stability; no longer returned: past
    /// [`RETIRED_PREFIX_LIMIT`] switches the oldest retired prefix is
    /// forgotten instead (issue 10 item 10).
    #[error("too many nonce prefixes under one key; the session must be re-keyed")]
    TooManyPrefixes,
    /// AES-GCM authentication failed: ciphertext, tag, nonce or sender id was
    /// altered, or the frame was sealed with another key.
    #[error("PILS authentication failed")]
    AuthFailed,
}

/// The process's X25519 key pair (§4.1). The secret never leaves it.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public.as_bytes())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The key pair with this raw private key (clamped by X25519 as usual).
    pub fn from_secret(secret: [u8; X25519_LEN]) -> KeyPair {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// A fresh key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> KeyPair {
        let mut raw = [0u8; X25519_LEN];
        rng.fill_bytes(&mut raw);
        KeyPair::from_secret(raw)
    }

    /// The public key, as sent in PILA (§4.2).
    pub fn public(&self) -> [u8; X25519_LEN] {
        self.public.to_bytes()
    }

    /// X25519 with the peer's public key. An all-zero result (low-order peer
    /// key) is [`CryptoError::LowOrderPeerKey`] (§4.5).
    pub fn shared_secret(&self, peer_public: &[u8; X25519_LEN]) -> Result<[u8; 32], CryptoError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer_public));
        if !shared.was_contributory() {
            return Err(CryptoError::LowOrderPeerKey);
        }
        Ok(shared.to_bytes())
    }
}

/// HKDF-SHA256 extract with an empty salt: `PRK = HMAC-SHA256("", shared)` (§4.5).
pub fn hkdf_prk(shared: &[u8; 32]) -> [u8; 32] {
    let (prk, _) = Hkdf::<Sha256>::extract(None, shared);
    prk.into()
}

/// HKDF-SHA256 expand of `prk` with info `pilot-tunnel-v1` to 32 bytes (§4.5).
///
/// For an output of one hash length, HKDF-Expand is the single block
/// `HMAC-SHA256(PRK, info ‖ 0x01)`; it is computed directly so that no
/// (impossible) length error has to be handled. The 32-byte PRK is zero-padded
/// to the 64-byte HMAC block, which is exactly what HMAC does with short keys.
pub fn tunnel_key_from_prk(prk: &[u8; 32]) -> [u8; KEY_LEN] {
    use hkdf::hmac::digest::KeyInit;
    use hkdf::hmac::{Hmac, Mac};
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(prk);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    mac.update(HKDF_INFO);
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

/// The AES-256-GCM tunnel key for this peer: X25519, then HKDF-SHA256 with an
/// empty salt and info `pilot-tunnel-v1` (§4.5). Both peers derive the same key.
pub fn derive_tunnel_key(
    ours: &KeyPair,
    peer_public: &[u8; X25519_LEN],
) -> Result<[u8; KEY_LEN], CryptoError> {
    let shared = ours.shared_secret(peer_public)?;
    Ok(tunnel_key_from_prk(&hkdf_prk(&shared)))
}

/// The 40-byte message signed in PILA: `"auth"` ‖ node id (BE) ‖ X25519 public key (§4.2).
pub fn auth_message(node_id: u32, x25519_pub: &[u8; X25519_LEN]) -> [u8; AUTH_MESSAGE_LEN] {
    let mut m = [0u8; AUTH_MESSAGE_LEN];
    m[..4].copy_from_slice(AUTH_TAG);
    m[4..8].copy_from_slice(&node_id.to_be_bytes());
    m[8..].copy_from_slice(x25519_pub);
    m
}

/// The PILA signature of `identity` binding `x25519_pub` to `node_id` (§4.2).
pub fn sign_auth(identity: &Identity, node_id: u32, x25519_pub: &[u8; X25519_LEN]) -> [u8; 64] {
    identity.sign(&auth_message(node_id, x25519_pub))
}

/// Strictly verifies a PILA signature (§4.2, §4.3 step 4). `ed25519_pub` must
/// be the registry-confirmed key of `node_id`, not merely the one in the frame.
pub fn verify_auth(
    ed25519_pub: &[u8; 32],
    node_id: u32,
    x25519_pub: &[u8; X25519_LEN],
    sig: &[u8; 64],
) -> bool {
    identity::verify(ed25519_pub, &auth_message(node_id, x25519_pub), sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn both_sides_derive_the_same_key() {
        let a = KeyPair::generate(&mut OsRng);
        let b = KeyPair::generate(&mut OsRng);
        assert_eq!(
            derive_tunnel_key(&a, &b.public()).unwrap(),
            derive_tunnel_key(&b, &a.public()).unwrap()
        );
    }

    #[test]
    fn low_order_keys_are_rejected() {
        let a = KeyPair::generate(&mut OsRng);
        // The identity, the point of order 2, and one point of order 8 on Curve25519.
        let mut order8 = [0u8; 32];
        order8.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap(),
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one, order8] {
            assert_eq!(
                derive_tunnel_key(&a, &low),
                Err(CryptoError::LowOrderPeerKey)
            );
        }
    }

    #[test]
    fn pila_signature() {
        let id = Identity::from_seed([3; 32]);
        let x = KeyPair::generate(&mut OsRng).public();
        let sig = sign_auth(&id, 7, &x);
        assert!(verify_auth(&id.public_key(), 7, &x, &sig));
        assert!(!verify_auth(&id.public_key(), 8, &x, &sig));
        let mut x2 = x;
        x2[31] ^= 0x40;
        assert!(!verify_auth(&id.public_key(), 7, &x2, &sig));
        assert_eq!(&auth_message(7, &x)[..8], b"auth\0\0\0\x07");
    }

    #[test]
    fn expand_shortcut_equals_hkdf_expand() {
        use rand_core::RngCore;
        for _ in 0..64 {
            let mut prk = [0u8; 32];
            OsRng.fill_bytes(&mut prk);
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::from_prk(&prk)
                .unwrap()
                .expand(HKDF_INFO, &mut okm)
                .unwrap();
            assert_eq!(tunnel_key_from_prk(&prk), okm);
        }
    }

    #[test]
    fn debug_hides_secret() {
        let kp = KeyPair::from_secret([0x41; 32]);
        assert!(!format!("{kp:?}").contains("65, 65, 65"));
    }
}
