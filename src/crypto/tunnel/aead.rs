//! The AES-256-GCM backend behind [`super::Session`].
//!
//! Kept behind this small interface (seal/open in place with a detached tag)
//! so the implementation can be swapped without touching the session logic;
//! `BENCHMARKS.md` records how the candidates compare. The key schedule and
//! GHASH key are expanded once, when the session is built.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

/// AES-256-GCM with a fixed key.
#[derive(Clone)]
pub(crate) struct Aead {
    cipher: Aes256Gcm,
}

/// The backend refused: authentication failed (open) or the buffer is larger
/// than GCM allows (seal, impossible for UDP-sized frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailed;

impl Aead {
    pub(crate) fn new(key: &[u8; 32]) -> Aead {
        Aead {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    #[inline]
    pub(crate) fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; 16], AeadFailed> {
        self.cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
            .map(Into::into)
            .map_err(|_| AeadFailed)
    }

    /// Authenticates and decrypts `buf` in place. On failure `buf` is
    /// unspecified (the caller must not use it).
    #[inline]
    pub(crate) fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), AeadFailed> {
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
            .map_err(|_| AeadFailed)
    }
}
