//! The AES-256-GCM backend behind [`super::Session`]: `ring`.
//!
//! Kept behind this small interface (seal/open in place with a detached tag)
//! so the implementation can be swapped without touching the session logic.
//! The key schedule and GHASH key are expanded once, when the session is
//! built.
//!
//! Why `ring` and not RustCrypto `aes-gcm` (both measured in the same sitting,
//! see `BENCHMARKS.md` → Crypto): the goal is seal + open of a 1400-byte
//! payload within 1.3× of what `openssl speed -evp aes-256-gcm` implies on the
//! same machine. `aes-gcm` 0.10 (AES-NI + PCLMULQDQ, one block at a time for
//! GHASH, separate CTR and GHASH passes) missed it by about 1.5×; `ring` 0.17
//! selects BoringSSL's stitched AES-NI/VAES + (V)PCLMULQDQ assembly at run
//! time (no `target-cpu` flags needed) and meets it.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

/// AES-256-GCM with a fixed key.
pub(crate) struct Aead {
    key: LessSafeKey,
}

/// The backend refused: authentication failed (open) or the buffer is larger
/// than GCM allows (seal, impossible for UDP-sized frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailed;

impl Aead {
    #[allow(clippy::expect_used)]
    pub(crate) fn new(key: &[u8; 32]) -> Aead {
        // `UnboundKey::new` fails only when the key length differs from the
        // algorithm's, and both are 32 by type: this cannot fail on any input.
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 key is 32 bytes");
        Aead {
            key: LessSafeKey::new(key),
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
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| AeadFailed)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
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
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadFailed)
    }
}
