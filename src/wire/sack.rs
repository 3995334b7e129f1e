//! The SACK payload of a pure stream ACK (spec §7.6, §12.3).
//!
//! A SACK is not a header option: it travels as the *payload* of a pure ACK
//! (flags = ACK, protocol 1), so it is ambiguous with user data. The reference
//! reads any ACK payload that starts with `SACK`, has a count of 1–4 and is at
//! least `5 + 8n` bytes long as SACK. This module implements the
//! interop-safe rules of §12.3 instead:
//!
//! * receiver: a payload is SACK only if its length is **exactly** `5 + 8n`
//!   ([`Packet::check_len`], [`parse_payload`]); the lenient reference rule is
//!   available as [`Repr::parse_lenient`] for comparison and tests;
//! * sender: a data segment that would start with `SACK` is cut to exactly 4
//!   bytes ([`data_split_len`]), so no data segment can ever look like SACK to
//!   either rule.
//!
//! Shape: smoltcp's pattern, a zero-copy [`Packet`] view whose accessors cannot
//! panic once [`Packet::check_len`] has passed, and a [`Repr`] that holds up to
//! [`MAX_BLOCKS`] blocks in a fixed array (no allocation on the ACK path).

use thiserror::Error;

/// The 4-byte marker that starts a SACK payload (§7.6).
pub const MAGIC: [u8; 4] = *b"SACK";
/// Bytes before the first block: marker + count (§7.6).
pub const HEADER_LEN: usize = 5;
/// Bytes per block: left and right edge, u32 big-endian each (§7.6).
pub const BLOCK_LEN: usize = 8;
/// Most blocks a SACK carries; the reference encoder truncates to 4 (§7.6).
pub const MAX_BLOCKS: usize = 4;
/// Longest SACK payload: `5 + 8 × 4` bytes.
pub const MAX_LEN: usize = HEADER_LEN + BLOCK_LEN * MAX_BLOCKS;

/// Why a payload is not a SACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// Shorter than the 5-byte SACK header.
    #[error("payload too short for a SACK header")]
    Truncated,
    /// Does not start with `SACK`.
    #[error("payload does not start with the SACK marker")]
    BadMagic,
    /// Block count outside 1–4.
    #[error("SACK block count {0} outside 1..=4")]
    BadCount(u8),
    /// Length is not exactly `5 + 8n` (§12.3 receiver rule).
    #[error("SACK length {len} is not 5 + 8 x {count}")]
    BadLength {
        /// Actual payload length.
        len: usize,
        /// Block count announced in the payload.
        count: u8,
    },
}

/// One SACK block: `left` is the seq of the first byte held, `right` one past
/// the last (§7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Block {
    /// Sequence number of the first byte held.
    pub left: u32,
    /// Sequence number one past the last byte held.
    pub right: u32,
}

/// A read/write view of a SACK payload.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking it; accessors may panic until
    /// [`check_len`](Self::check_len) has passed.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer and check that it is exactly a SACK (§12.3 receiver rule).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Check marker, count and the exact length `5 + 8n`. After this passes,
    /// no accessor panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let count = self.check_prefix()?;
        let len = self.buffer.as_ref().len();
        if len != HEADER_LEN + BLOCK_LEN * count as usize {
            return Err(Error::BadLength { len, count });
        }
        Ok(())
    }

    /// Marker and count only; returns the count.
    fn check_prefix(&self) -> Result<u8, Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[..4] != MAGIC {
            return Err(Error::BadMagic);
        }
        let count = b[4];
        if count == 0 || count as usize > MAX_BLOCKS {
            return Err(Error::BadCount(count));
        }
        Ok(count)
    }

    /// The block count (byte 4).
    pub fn count(&self) -> u8 {
        self.buffer.as_ref()[4]
    }

    /// Block `i` (0-based). Panics if `i` is beyond the buffer.
    pub fn block(&self, i: usize) -> Block {
        let b = &self.buffer.as_ref()[HEADER_LEN + BLOCK_LEN * i..];
        Block {
            left: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            right: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Write the `SACK` marker.
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[..4].copy_from_slice(&MAGIC);
    }

    /// Write the block count.
    pub fn set_count(&mut self, n: u8) {
        self.buffer.as_mut()[4] = n;
    }

    /// Write block `i`.
    pub fn set_block(&mut self, i: usize, block: Block) {
        let b = &mut self.buffer.as_mut()[HEADER_LEN + BLOCK_LEN * i..][..BLOCK_LEN];
        b[..4].copy_from_slice(&block.left.to_be_bytes());
        b[4..].copy_from_slice(&block.right.to_be_bytes());
    }
}

/// Up to four SACK blocks, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    blocks: [Block; MAX_BLOCKS],
    len: u8,
}

impl Repr {
    /// A SACK of the first (at most) four of `blocks`; the rest are dropped as
    /// the reference encoder does (§7.6).
    pub fn new(blocks: &[Block]) -> Repr {
        let mut r = Repr::default();
        for b in blocks.iter().take(MAX_BLOCKS) {
            r.push(*b);
        }
        r
    }

    /// Append a block; returns false (and drops it) when four are held.
    pub fn push(&mut self, block: Block) -> bool {
        if (self.len as usize) < MAX_BLOCKS {
            self.blocks[self.len as usize] = block;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// The blocks held.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks[..self.len as usize]
    }

    /// True when no block is held (such a Repr must not be emitted: count 0 is
    /// not a SACK).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Parse with the interop-safe rule: exact length `5 + 8n` (§12.3).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        Ok(Self::read_blocks(packet, packet.count()))
    }

    /// Parse with the reference rule: at least `5 + 8n` bytes, trailing bytes
    /// ignored (§7.6). Used to predict what a reference peer will make of a
    /// payload; never used to interpret received data.
    pub fn parse_lenient<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        let count = packet.check_prefix()?;
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN + BLOCK_LEN * count as usize {
            return Err(Error::BadLength { len, count });
        }
        Ok(Self::read_blocks(packet, count))
    }

    fn read_blocks<T: AsRef<[u8]>>(packet: &Packet<T>, count: u8) -> Repr {
        let mut r = Repr::default();
        for i in 0..count as usize {
            r.push(packet.block(i));
        }
        r
    }

    /// Bytes needed by [`emit`](Self::emit): `5 + 8n`.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + BLOCK_LEN * self.len as usize
    }

    /// Write into a buffer of at least [`buffer_len`](Self::buffer_len) bytes
    /// (panics if shorter, like smoltcp's emitters).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_magic();
        packet.set_count(self.len);
        for (i, b) in self.blocks().iter().enumerate() {
            packet.set_block(i, *b);
        }
    }
}

/// Parse a received ACK payload as SACK with the exact-length rule; `None`
/// means "this payload is data" (§12.3 receiver rule).
pub fn parse_payload(payload: &[u8]) -> Option<Repr> {
    Repr::parse(&Packet::new_unchecked(payload)).ok()
}

/// The sender rule of §12.3: how many bytes of `payload` may go into one data
/// segment. A payload that starts with `SACK` and is longer than 4 bytes is cut
/// to exactly 4 (`SACK` alone is shorter than any SACK, so both the exact and
/// the lenient reference parser read it as data); the next segment then starts
/// with what followed and is examined again by the same rule. Any other payload
/// is kept whole.
pub fn data_split_len(payload: &[u8]) -> usize {
    if payload.len() > MAGIC.len() && payload[..4] == MAGIC {
        MAGIC.len()
    } else {
        payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emit_parse_roundtrip_small() {
        let r = Repr::new(&[Block { left: 1, right: 2 }]);
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(parse_payload(&buf), Some(r));
    }

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/sack.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn blocks_of(v: &serde_json::Value) -> Vec<Block> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| Block {
                left: b["left"].as_u64().unwrap() as u32,
                right: b["right"].as_u64().unwrap() as u32,
            })
            .collect()
    }

    #[test]
    fn vector_decode() {
        let v = vectors();
        let cases = v["decode"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let payload = hex::decode(case["payload_hex"].as_str().unwrap()).unwrap();
            let is_sack = case["is_sack"].as_bool().unwrap();
            // The reference rule reproduces the vector exactly.
            let lenient = Repr::parse_lenient(&Packet::new_unchecked(&payload[..]));
            assert_eq!(lenient.is_ok(), is_sack, "{name}");
            if is_sack {
                assert_eq!(
                    lenient.unwrap().blocks(),
                    &blocks_of(&case["blocks"])[..],
                    "{name}"
                );
            }
            // Our exact rule (§12.3) agrees except where the reference reads
            // trailing bytes as part of a SACK.
            let exact = parse_payload(&payload);
            let exact_len = is_sack && payload.len() == 5 + 8 * payload[4] as usize;
            assert_eq!(exact.is_some(), exact_len, "{name}");
            if let Some(r) = exact {
                assert_eq!(r.blocks(), &blocks_of(&case["blocks"])[..], "{name}");
            }
        }
        // The two documented deviations are really exercised.
        let names: Vec<_> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"trailing_bytes_still_sack"));
        assert!(names.contains(&"user_data_that_looks_like_sack"));
    }

    #[test]
    fn vector_encode() {
        let v = vectors();
        for case in v["encode"].as_array().unwrap() {
            let blocks = match &case["blocks"] {
                b @ serde_json::Value::Array(_) => blocks_of(b),
                // "five blocks (1,2)(3,4)(5,6)(7,8)(9,10)"
                serde_json::Value::String(s) => {
                    let all: Vec<u32> = s[s.find('(').unwrap()..]
                        .split(|c: char| !c.is_ascii_digit())
                        .filter(|t| !t.is_empty())
                        .map(|t| t.parse().unwrap())
                        .collect();
                    all.chunks(2)
                        .map(|c| Block {
                            left: c[0],
                            right: c[1],
                        })
                        .collect()
                }
                other => panic!("unexpected blocks {other}"),
            };
            let r = Repr::new(&blocks);
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(hex::encode(&buf), case["payload_hex"].as_str().unwrap());
        }
    }

    #[test]
    fn split_rule() {
        assert_eq!(data_split_len(b""), 0);
        assert_eq!(data_split_len(b"SAC"), 3);
        assert_eq!(data_split_len(b"SACK"), 4);
        assert_eq!(data_split_len(b"SACK\x01aaaaaaaa"), 4);
        assert_eq!(data_split_len(b"xSACK\x01aaaaaaaa"), 14);
    }

    proptest! {
        #[test]
        fn roundtrip(blocks in proptest::collection::vec((any::<u32>(), any::<u32>()), 1..=4)) {
            let blocks: Vec<Block> = blocks.into_iter().map(|(left, right)| Block { left, right }).collect();
            let r = Repr::new(&blocks);
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(buf.len(), 5 + 8 * blocks.len());
            let p = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
            prop_assert_eq!(p.blocks(), &blocks[..]);
            prop_assert_eq!(Repr::parse_lenient(&Packet::new_unchecked(&buf[..])).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_payload(&data);
            let _ = Repr::parse_lenient(&Packet::new_unchecked(&data[..]));
        }

        #[test]
        fn split_data_is_never_sack(data in proptest::collection::vec(any::<u8>(), 0..64), prefix in any::<bool>()) {
            let mut data = data;
            if prefix { let mut d = b"SACK".to_vec(); d.extend(&data); data = d; }
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = data_split_len(rest);
                prop_assert!(n > 0);
                let seg = &rest[..n];
                prop_assert!(parse_payload(seg).is_none());
                prop_assert!(Repr::parse_lenient(&Packet::new_unchecked(seg)).is_err());
                rest = &rest[n..];
            }
        }
    }
}
