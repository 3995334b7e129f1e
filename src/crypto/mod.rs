//! Cryptography of Pilot Protocol v1: the node identity and the tunnel.
//!
//! * [`identity`]: the persistent Ed25519 identity (`identity.json`, spec §11),
//!   signing and strict verification of the registry/handshake challenge strings
//!   (§6.3, §9.3), and base64 helpers for keys and signatures.
//! * [`tunnel`]: the per-process X25519 key, the tunnel-key derivation (§4.5),
//!   the PILA signature (§4.2), the receive replay window (§4.7) and the
//!   per-peer [`tunnel::Session`] that seals and opens PILS frames in place
//!   (§4.6–§4.8).
//!
//! Everything here is sans-IO: no sockets, no clock reads, no hidden
//! randomness. Functions that need randomness take a
//! [`rand_core::CryptoRngCore`]; functions that need time take an
//! [`std::time::Instant`]. The only I/O is reading and writing the identity
//! file, which has to be on disk by definition.

pub mod identity;
pub mod tunnel;

pub use identity::{Identity, IdentityError};
pub use tunnel::{CryptoError, KeyPair, ReplayError, ReplayWindow, Session};
