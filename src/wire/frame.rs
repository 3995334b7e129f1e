//! UDP frames and their demultiplexing (spec §3), and the fixed layouts of the
//! tunnel key-exchange and sealed frames (§4.2, §4.6).
//!
//! Every datagram on a daemon's socket is exactly one frame. [`Frame::parse`]
//! applies §3.1 to classify it and borrows the variable parts from the
//! datagram (no copies, no allocation), so the node's receive path can
//! dispatch without touching the bytes twice. The frame layer knows nothing of
//! keys: a PILS frame is only split into sender id, nonce and
//! `ciphertext ‖ tag`; opening it is the crypto layer's job, which can work in
//! place through the [`SealedPacket`] view. A PILT frame yields the virtual
//! packet after the magic, to be validated by [`crate::wire::header`].
//!
//! Sizes follow the reference: PILK and PILA are fixed-size and extra bytes
//! after them are ignored (§3.1 step 5); PILS must hold at least
//! magic + id + nonce + tag (§4.7).

/// "PILT": plaintext virtual packet (§3).
pub const MAGIC_PILT: [u8; 4] = *b"PILT";
/// "PILS": AES-GCM sealed virtual packet (§3, §4.6).
pub const MAGIC_PILS: [u8; 4] = *b"PILS";
/// "PILK": anonymous X25519 key exchange (§3, §4.2).
pub const MAGIC_PILK: [u8; 4] = *b"PILK";
/// "PILA": authenticated key exchange (§3, §4.2).
pub const MAGIC_PILA: [u8; 4] = *b"PILA";
/// "PILP": NAT punch, nothing but the magic (§3).
pub const MAGIC_PILP: [u8; 4] = *b"PILP";

/// Length of every magic (§3).
pub const MAGIC_LEN: usize = 4;
/// Sender node id length (§4.2, §4.6).
pub const NODE_ID_LEN: usize = 4;
/// X25519 / Ed25519 public key length (§4.2).
pub const KEY_LEN: usize = 32;
/// Ed25519 signature length (§4.2).
pub const SIGNATURE_LEN: usize = 64;
/// AES-GCM nonce length: 4-byte prefix ‖ 8-byte counter (§4.6).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length (§4.6).
pub const TAG_LEN: usize = 16;

/// Minimum PILT frame: magic + 34-byte header (§3.1 step 4).
pub const PILT_MIN_LEN: usize = MAGIC_LEN + super::header::HEADER_LEN;
/// PILK frame: magic + id + X25519 key (§4.2).
pub const PILK_LEN: usize = MAGIC_LEN + NODE_ID_LEN + KEY_LEN;
/// PILA frame: magic + id + X25519 + Ed25519 + signature (§4.2).
pub const PILA_LEN: usize = MAGIC_LEN + NODE_ID_LEN + KEY_LEN + KEY_LEN + SIGNATURE_LEN;
/// PILP frame (§3).
pub const PILP_LEN: usize = MAGIC_LEN;
/// PILS bytes before the ciphertext: magic + id + nonce (§4.6).
pub const PILS_HEADER_LEN: usize = MAGIC_LEN + NODE_ID_LEN + NONCE_LEN;
/// PILS bytes besides the sealed packet: header + tag (Appendix C).
pub const PILS_OVERHEAD: usize = PILS_HEADER_LEN + TAG_LEN;
/// Smallest acceptable PILS frame: an empty ciphertext and the tag (§4.7).
pub const PILS_MIN_LEN: usize = PILS_OVERHEAD;
/// Datagram size every receiver must accept: a full reference segment
/// sealed, 4 + 4 + 12 + 34 + 4096 + 16 (§3.1).
pub const MIN_ACCEPTED_DATAGRAM: usize = 4166;
/// First bytes below this value are beacon messages (§3.1 step 2).
pub const BEACON_TYPE_LIMIT: u8 = 0x10;

/// Length of the PILA signed message (§4.2).
pub const AUTH_SIGNED_MESSAGE_LEN: usize = 40;
/// Prefix of the PILA signed message (§4.2).
pub const AUTH_PREFIX: [u8; 4] = *b"auth";

/// Why a datagram is not a frame, or a frame could not be emitted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FrameError {
    /// Zero-length datagram (§3.1 step 1).
    #[error("empty datagram")]
    Empty,
    /// Not a beacon message and shorter than a magic (§3.1 step 3).
    #[error("datagram too short for a magic: {0} bytes")]
    NoMagic(usize),
    /// A magic that is none of PILT/PILS/PILK/PILA/PILP (§3.1 step 3).
    #[error("unknown frame magic {0:02x?}")]
    UnknownMagic([u8; 4]),
    /// A known frame shorter than its minimum (§3.1 step 4, §4.7).
    #[error("{kind} frame too short: {len} bytes (min {min})")]
    TooShort {
        /// "PILT", "PILS", "PILK" or "PILA".
        kind: &'static str,
        /// Bytes received.
        len: usize,
        /// Minimum for that frame.
        min: usize,
    },
    /// Output buffer too small.
    #[error("buffer too small: have {have} bytes, need {need}")]
    BufferTooSmall {
        /// Bytes available.
        have: usize,
        /// Bytes required.
        need: usize,
    },
}

/// The fields of a PILA frame (§4.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AuthKeyRepr {
    /// Sender node id.
    pub sender: u32,
    /// Sender's X25519 public key.
    pub x25519: [u8; 32],
    /// Sender's Ed25519 public key.
    pub ed25519: [u8; 32],
    /// Ed25519 signature over [`auth_signed_message`].
    pub signature: [u8; 64],
}

impl AuthKeyRepr {
    /// The 40 bytes this frame's signature covers (§4.2).
    pub fn signed_message(&self) -> [u8; AUTH_SIGNED_MESSAGE_LEN] {
        auth_signed_message(self.sender, &self.x25519)
    }

    /// Parses a PILA frame including its magic; extra bytes are ignored.
    pub fn parse(frame: &[u8]) -> Result<AuthKeyRepr, FrameError> {
        match Frame::parse(frame)? {
            Frame::AuthKey(r) => Ok(r),
            _ => Err(FrameError::UnknownMagic(magic_of(frame))),
        }
    }

    /// Writes the 136-byte PILA frame into the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, FrameError> {
        Frame::AuthKey(*self).emit(buf)
    }
}

/// `"auth" ‖ sender id (BE) ‖ X25519 public key`: the bytes a PILA signature
/// covers (§4.2).
pub fn auth_signed_message(sender: u32, x25519: &[u8; 32]) -> [u8; AUTH_SIGNED_MESSAGE_LEN] {
    let mut m = [0u8; AUTH_SIGNED_MESSAGE_LEN];
    m[..4].copy_from_slice(&AUTH_PREFIX);
    m[4..8].copy_from_slice(&sender.to_be_bytes());
    m[8..].copy_from_slice(x25519);
    m
}

/// One UDP datagram, classified (§3.1). Variable parts borrow the datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frame<'a> {
    /// PILT: the virtual packet after the magic (header + payload, §2).
    Plain(&'a [u8]),
    /// PILS: an encrypted virtual packet (§4.6).
    Sealed {
        /// Sender node id; also the AEAD's associated data.
        sender: u32,
        /// 4-byte prefix ‖ 8-byte big-endian counter.
        nonce: [u8; NONCE_LEN],
        /// AES-256-GCM ciphertext followed by the 16-byte tag.
        ciphertext: &'a [u8],
    },
    /// PILK: anonymous key exchange (§4.2, §4.4).
    Key {
        /// Sender node id.
        sender: u32,
        /// Sender's X25519 public key.
        x25519: [u8; 32],
    },
    /// PILA: authenticated key exchange (§4.2, §4.3).
    AuthKey(AuthKeyRepr),
    /// PILP: NAT punch (§3); carries nothing.
    Punch,
    /// A beacon message (§5.1): the whole datagram, type byte included.
    Beacon(&'a [u8]),
}

fn magic_of(b: &[u8]) -> [u8; 4] {
    let mut m = [0u8; 4];
    let n = b.len().min(4);
    m[..n].copy_from_slice(&b[..n]);
    m
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(b, at))
}

impl<'a> Frame<'a> {
    /// Classifies a datagram as §3.1 does: empty → error; first byte below
    /// 0x10 → beacon; fewer than 4 bytes or an unknown magic → error; each
    /// frame checked against its minimum length; bytes after a fixed-size
    /// PILK/PILA/PILP ignored.
    pub fn parse(datagram: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let Some(&first) = datagram.first() else {
            return Err(FrameError::Empty);
        };
        if first < BEACON_TYPE_LIMIT {
            return Ok(Frame::Beacon(datagram));
        }
        let len = datagram.len();
        if len < MAGIC_LEN {
            return Err(FrameError::NoMagic(len));
        }
        let magic = magic_of(datagram);
        let need = |kind: &'static str, min: usize| {
            if len < min {
                Err(FrameError::TooShort { kind, len, min })
            } else {
                Ok(())
            }
        };
        match magic {
            MAGIC_PILT => {
                need("PILT", PILT_MIN_LEN)?;
                Ok(Frame::Plain(&datagram[MAGIC_LEN..]))
            }
            MAGIC_PILS => {
                need("PILS", PILS_MIN_LEN)?;
                Ok(Frame::Sealed {
                    sender: be_u32(datagram, 4),
                    nonce: array(datagram, 8),
                    ciphertext: &datagram[PILS_HEADER_LEN..],
                })
            }
            MAGIC_PILK => {
                need("PILK", PILK_LEN)?;
                Ok(Frame::Key {
                    sender: be_u32(datagram, 4),
                    x25519: array(datagram, 8),
                })
            }
            MAGIC_PILA => {
                need("PILA", PILA_LEN)?;
                Ok(Frame::AuthKey(AuthKeyRepr {
                    sender: be_u32(datagram, 4),
                    x25519: array(datagram, 8),
                    ed25519: array(datagram, 40),
                    signature: array(datagram, 72),
                }))
            }
            MAGIC_PILP => Ok(Frame::Punch),
            other => Err(FrameError::UnknownMagic(other)),
        }
    }

    /// Bytes [`Frame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Frame::Plain(p) => MAGIC_LEN + p.len(),
            Frame::Sealed { ciphertext, .. } => PILS_HEADER_LEN + ciphertext.len(),
            Frame::Key { .. } => PILK_LEN,
            Frame::AuthKey(_) => PILA_LEN,
            Frame::Punch => PILP_LEN,
            Frame::Beacon(b) => b.len(),
        }
    }

    /// Writes the frame into the start of `buf` and returns its length. A
    /// beacon message is copied unchanged.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let need = self.buffer_len();
        let Some(out) = buf.get_mut(..need) else {
            return Err(FrameError::BufferTooSmall {
                have: buf.len(),
                need,
            });
        };
        match self {
            Frame::Plain(p) => {
                out[..4].copy_from_slice(&MAGIC_PILT);
                out[4..].copy_from_slice(p);
            }
            Frame::Sealed {
                sender,
                nonce,
                ciphertext,
            } => {
                out[..4].copy_from_slice(&MAGIC_PILS);
                out[4..8].copy_from_slice(&sender.to_be_bytes());
                out[8..PILS_HEADER_LEN].copy_from_slice(nonce);
                out[PILS_HEADER_LEN..].copy_from_slice(ciphertext);
            }
            Frame::Key { sender, x25519 } => {
                out[..4].copy_from_slice(&MAGIC_PILK);
                out[4..8].copy_from_slice(&sender.to_be_bytes());
                out[8..].copy_from_slice(x25519);
            }
            Frame::AuthKey(a) => {
                out[..4].copy_from_slice(&MAGIC_PILA);
                out[4..8].copy_from_slice(&a.sender.to_be_bytes());
                out[8..40].copy_from_slice(&a.x25519);
                out[40..72].copy_from_slice(&a.ed25519);
                out[72..].copy_from_slice(&a.signature);
            }
            Frame::Punch => out.copy_from_slice(&MAGIC_PILP),
            Frame::Beacon(b) => out.copy_from_slice(b),
        }
        Ok(need)
    }

    /// Convenience: the frame in a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        // Cannot fail: the buffer has exactly buffer_len() bytes.
        let _ = self.emit(&mut v);
        v
    }
}

/// Writes a PILT frame (magic + virtual packet) for `repr` and `payload` into
/// the start of `buf`; returns the frame length.
pub fn emit_plain(
    repr: &super::header::Repr,
    payload: &[u8],
    buf: &mut [u8],
) -> Result<usize, super::header::Error> {
    let need = MAGIC_LEN + super::header::HEADER_LEN + payload.len();
    if buf.len() < need {
        return Err(super::header::Error::BufferTooSmall {
            have: buf.len(),
            need,
        });
    }
    buf[..MAGIC_LEN].copy_from_slice(&MAGIC_PILT);
    let n = super::header::emit_packet(repr, payload, &mut buf[MAGIC_LEN..])?;
    Ok(MAGIC_LEN + n)
}

/// Length of a PILS frame sealing a `plaintext_len`-byte virtual packet.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    PILS_OVERHEAD + plaintext_len
}

/// A zero-copy view of a PILS frame (§4.6) for in-place sealing and opening.
///
/// Layout: magic (4) ‖ sender (4) ‖ nonce (12) ‖ ciphertext ‖ tag (16).
/// Getters cannot panic once [`SealedPacket::check_len`] has passed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SealedPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SealedPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> SealedPacket<T> {
        SealedPacket { buffer }
    }

    /// Wraps a buffer after [`SealedPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<SealedPacket<T>, FrameError> {
        let p = SealedPacket::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// At least [`PILS_MIN_LEN`] bytes. The magic is not checked here (a
    /// buffer being prepared for sealing has none yet); see
    /// [`SealedPacket::has_magic`].
    pub fn check_len(&self) -> Result<(), FrameError> {
        let len = self.buffer.as_ref().len();
        if len < PILS_MIN_LEN {
            return Err(FrameError::TooShort {
                kind: "PILS",
                len,
                min: PILS_MIN_LEN,
            });
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// True when the buffer starts with "PILS".
    pub fn has_magic(&self) -> bool {
        self.buffer.as_ref().get(..MAGIC_LEN) == Some(&MAGIC_PILS[..])
    }

    /// Sender node id.
    pub fn sender(&self) -> u32 {
        be_u32(self.buffer.as_ref(), 4)
    }

    /// The 4 sender-id bytes, which are the AEAD's associated data (§4.6).
    pub fn aad(&self) -> &[u8] {
        self.buffer.as_ref().get(4..8).unwrap_or(&[])
    }

    /// The 12-byte nonce.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        array(self.buffer.as_ref(), 8)
    }

    /// The nonce's 4-byte random prefix.
    pub fn nonce_prefix(&self) -> [u8; 4] {
        array(self.buffer.as_ref(), 8)
    }

    /// The nonce's 8-byte big-endian counter.
    pub fn counter(&self) -> u64 {
        u64::from_be_bytes(array(self.buffer.as_ref(), 12))
    }

    /// Ciphertext followed by the tag.
    pub fn ciphertext(&self) -> &[u8] {
        self.buffer.as_ref().get(PILS_HEADER_LEN..).unwrap_or(&[])
    }

    /// The ciphertext without the tag.
    pub fn ciphertext_only(&self) -> &[u8] {
        let c = self.ciphertext();
        &c[..c.len().saturating_sub(TAG_LEN)]
    }

    /// The 16-byte tag.
    pub fn tag(&self) -> [u8; TAG_LEN] {
        let c = self.ciphertext();
        array(c, c.len().saturating_sub(TAG_LEN))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SealedPacket<T> {
    /// Writes the "PILS" magic.
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[..MAGIC_LEN].copy_from_slice(&MAGIC_PILS);
    }

    /// Sets the sender node id.
    pub fn set_sender(&mut self, sender: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&sender.to_be_bytes());
    }

    /// Sets the whole nonce.
    pub fn set_nonce(&mut self, nonce: &[u8; NONCE_LEN]) {
        self.buffer.as_mut()[8..PILS_HEADER_LEN].copy_from_slice(nonce);
    }

    /// Sets the nonce from its prefix and counter.
    pub fn set_nonce_parts(&mut self, prefix: [u8; 4], counter: u64) {
        let b = self.buffer.as_mut();
        b[8..12].copy_from_slice(&prefix);
        b[12..PILS_HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
    }

    /// Ciphertext and tag, mutable (for in-place sealing or opening).
    pub fn ciphertext_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(PILS_HEADER_LEN..)
            .unwrap_or(&mut [])
    }

    /// Splits into (AAD, nonce, ciphertext ‖ tag) with the last part mutable,
    /// which is what an in-place AEAD call needs.
    pub fn split_mut(&mut self) -> ([u8; 4], [u8; NONCE_LEN], &mut [u8]) {
        let aad = array(self.buffer.as_ref(), 4);
        let nonce = self.nonce();
        (aad, nonce, self.ciphertext_mut())
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for SealedPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec() {
        assert_eq!(PILK_LEN, 40);
        assert_eq!(PILA_LEN, 136);
        assert_eq!(PILS_HEADER_LEN, 20);
        assert_eq!(PILS_OVERHEAD, 36);
        assert_eq!(sealed_len(34 + 4096), MIN_ACCEPTED_DATAGRAM);
    }

    #[test]
    fn demux_rules() {
        assert_eq!(Frame::parse(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::parse(&[0x01]), Ok(Frame::Beacon(&[0x01])));
        assert_eq!(
            Frame::parse(&[0x0f, 9, 9]),
            Ok(Frame::Beacon(&[0x0f, 9, 9]))
        );
        assert_eq!(Frame::parse(b"PIL"), Err(FrameError::NoMagic(3)));
        assert_eq!(
            Frame::parse(b"PILX"),
            Err(FrameError::UnknownMagic(*b"PILX"))
        );
        assert_eq!(Frame::parse(b"PILP"), Ok(Frame::Punch));
        assert_eq!(Frame::parse(b"PILPxx"), Ok(Frame::Punch));
        assert!(matches!(
            Frame::parse(&[b'P', b'I', b'L', b'S', 0, 0, 0, 1]),
            Err(FrameError::TooShort { kind: "PILS", .. })
        ));
        let mut pils = vec![0u8; 35];
        pils[..4].copy_from_slice(b"PILS");
        assert!(Frame::parse(&pils).is_err());
        pils.push(0);
        assert!(matches!(
            Frame::parse(&pils),
            Ok(Frame::Sealed { ciphertext, .. }) if ciphertext.len() == 16
        ));
        let mut pilt = vec![0u8; 37];
        pilt[..4].copy_from_slice(b"PILT");
        assert!(Frame::parse(&pilt).is_err());
        pilt.push(0);
        assert!(matches!(Frame::parse(&pilt), Ok(Frame::Plain(p)) if p.len() == 34));
        let mut pilk = vec![7u8; 39];
        pilk[..4].copy_from_slice(b"PILK");
        assert!(Frame::parse(&pilk).is_err());
        pilk.extend_from_slice(&[7, 1, 2]);
        let Ok(Frame::Key { sender, x25519 }) = Frame::parse(&pilk) else {
            panic!()
        };
        assert_eq!(sender, 0x0707_0707);
        assert_eq!(x25519, [7u8; 32]);
        let mut pila = vec![0u8; 135];
        pila[..4].copy_from_slice(b"PILA");
        assert!(Frame::parse(&pila).is_err());
        pila.push(0);
        assert!(matches!(Frame::parse(&pila), Ok(Frame::AuthKey(_))));
    }

    #[test]
    fn every_short_prefix_is_handled() {
        let mut pila = [0xabu8; 140];
        pila[..4].copy_from_slice(b"PILA");
        for magic in [MAGIC_PILA, MAGIC_PILK, MAGIC_PILS, MAGIC_PILT, MAGIC_PILP] {
            pila[..4].copy_from_slice(&magic);
            for n in 0..pila.len() {
                let _ = Frame::parse(&pila[..n]);
                let _ = SealedPacket::new_checked(&pila[..n]);
                let s = SealedPacket::new_unchecked(&pila[..n.min(3)]);
                let _ = (s.ciphertext(), s.ciphertext_only(), s.tag(), s.has_magic());
            }
        }
    }

    #[test]
    fn emit_round_trip_and_errors() {
        let f = Frame::Key {
            sender: 42,
            x25519: [3; 32],
        };
        let v = f.to_vec();
        assert_eq!(v.len(), 40);
        assert_eq!(Frame::parse(&v), Ok(f));
        let mut small = [0u8; 39];
        assert_eq!(
            f.emit(&mut small),
            Err(FrameError::BufferTooSmall { have: 39, need: 40 })
        );
        assert_eq!(Frame::Punch.to_vec(), b"PILP");
    }

    #[test]
    fn sealed_view_in_place() {
        let mut buf = vec![0u8; sealed_len(10)];
        let mut s = SealedPacket::new_checked(&mut buf[..]).unwrap();
        s.set_magic();
        s.set_sender(1000);
        s.set_nonce_parts([0xb1, 0xb2, 0xb3, 0xb4], 7);
        s.ciphertext_mut().fill(0x5a);
        let (aad, nonce, ct) = s.split_mut();
        assert_eq!(aad, 1000u32.to_be_bytes());
        assert_eq!(nonce[11], 7);
        assert_eq!(ct.len(), 26);
        let s = SealedPacket::new_checked(&buf[..]).unwrap();
        assert!(s.has_magic());
        assert_eq!(s.sender(), 1000);
        assert_eq!(s.counter(), 7);
        assert_eq!(s.nonce_prefix(), [0xb1, 0xb2, 0xb3, 0xb4]);
        assert_eq!(s.ciphertext_only().len(), 10);
        assert_eq!(s.tag(), [0x5a; 16]);
        assert_eq!(s.aad(), &1000u32.to_be_bytes());
        let Ok(Frame::Sealed {
            sender,
            nonce,
            ciphertext,
        }) = Frame::parse(&buf)
        else {
            panic!()
        };
        assert_eq!(
            (sender, nonce, ciphertext),
            (1000, s.nonce(), s.ciphertext())
        );
    }

    #[test]
    fn plain_emit() {
        use crate::wire::address::Addr;
        use crate::wire::header::{Flags, Protocol, Repr};
        let repr = Repr {
            flags: Flags::NONE,
            protocol: Protocol::Datagram,
            src: Addr::new(1, 2),
            dst: Addr::new(1, 3),
            src_port: 1,
            dst_port: 2,
            seq: 0,
            ack: 0,
            window: 0,
            payload_len: 2,
        };
        let mut buf = [0u8; 64];
        let n = emit_plain(&repr, b"hi", &mut buf).unwrap();
        assert_eq!(n, 40);
        let Ok(Frame::Plain(p)) = Frame::parse(&buf[..n]) else {
            panic!()
        };
        let (r, payload) = crate::wire::header::parse_packet(p).unwrap();
        assert_eq!((r, payload), (repr, &b"hi"[..]));
        assert!(emit_plain(&repr, b"hi", &mut buf[..39]).is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                (any::<u32>(), any::<[u8; 32]>()).prop_map(|(sender, x25519)| Frame::Key {
                    sender,
                    x25519
                }
                .to_vec()),
                (
                    any::<u32>(),
                    any::<[u8; 32]>(),
                    any::<[u8; 32]>(),
                    any::<[u8; 32]>(),
                    any::<[u8; 32]>()
                )
                    .prop_map(|(sender, x25519, ed25519, s1, s2)| {
                        let mut signature = [0u8; 64];
                        signature[..32].copy_from_slice(&s1);
                        signature[32..].copy_from_slice(&s2);
                        Frame::AuthKey(AuthKeyRepr {
                            sender,
                            x25519,
                            ed25519,
                            signature,
                        })
                        .to_vec()
                    }),
                (
                    any::<u32>(),
                    any::<[u8; 12]>(),
                    proptest::collection::vec(any::<u8>(), 16..300)
                )
                    .prop_map(|(sender, nonce, ct)| Frame::Sealed {
                        sender,
                        nonce,
                        ciphertext: &ct
                    }
                    .to_vec()),
                proptest::collection::vec(any::<u8>(), 34..300)
                    .prop_map(|p| Frame::Plain(&p).to_vec()),
                Just(Frame::Punch.to_vec()),
                (0u8..0x10, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
                    |(t, mut b)| {
                        b.insert(0, t);
                        Frame::Beacon(&b).to_vec()
                    }
                ),
            ]
        }

        proptest! {
            #[test]
            fn round_trip(bytes in frame_bytes()) {
                let f = Frame::parse(&bytes).unwrap();
                prop_assert_eq!(f.buffer_len(), bytes.len());
                prop_assert_eq!(f.to_vec(), bytes);
            }

            #[test]
            fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Ok(f) = Frame::parse(&v) {
                    // Whatever parses re-emits as a prefix of the input.
                    let out = f.to_vec();
                    prop_assert_eq!(&v[..out.len()], &out[..]);
                }
                let s = SealedPacket::new_unchecked(&v[..]);
                let _ = (s.has_magic(), s.ciphertext(), s.ciphertext_only(), s.tag(), s.aad());
                if s.check_len().is_ok() {
                    let _ = (s.sender(), s.nonce(), s.counter(), s.nonce_prefix());
                }
            }

            #[test]
            fn truncated_frames_never_panic(bytes in frame_bytes(), cut in any::<usize>()) {
                let cut = cut % (bytes.len() + 1);
                let _ = Frame::parse(&bytes[..cut]);
            }
        }
    }
}
