//! The 34-byte virtual packet header (spec §2).
//!
//! Every virtual packet, plaintext (PILT) or sealed (PILS), is this header
//! followed by `payload_len` bytes. The module follows smoltcp's pattern: a
//! zero-copy [`Packet`] view over any byte buffer (parse in place, write in
//! place, no allocation), and a [`Repr`] that holds the decoded fields. The
//! CRC-32 of §2.3 is computed with `crc32fast` by hashing the header with its
//! checksum bytes replaced by zeros and then the payload, so neither checking
//! nor filling it needs a scratch copy.
//!
//! [`Repr::parse`] validates in the order of §2.4 (too short, truncated, CRC,
//! version) so that a receiver drops exactly what the reference drops, and it
//! ignores bytes beyond `34 + payload_len`. The error texts are the
//! reference's (`tests/vectors/header.json`).

use super::address::{Addr, ADDR_LEN};

/// Header length in bytes (§2.1).
pub const HEADER_LEN: usize = 34;

/// The only protocol version (§2.1, §2.4): the high nibble of byte 0.
pub const VERSION: u8 = 1;

/// Largest payload the u16 length field can describe (§2.2).
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

/// Byte ranges of the header fields (§2.1).
mod field {
    use core::ops::Range;
    pub const VER_FLAGS: usize = 0;
    pub const PROTOCOL: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const SRC_ADDR: Range<usize> = 4..10;
    pub const DST_ADDR: Range<usize> = 10..16;
    pub const SRC_PORT: Range<usize> = 16..18;
    pub const DST_PORT: Range<usize> = 18..20;
    pub const SEQ: Range<usize> = 20..24;
    pub const ACK: Range<usize> = 24..28;
    pub const WINDOW: Range<usize> = 28..30;
    pub const CHECKSUM: Range<usize> = 30..34;
}

/// The four flag bits of the low nibble of byte 0 (spec §2.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags: datagrams and control requests.
    pub const NONE: Flags = Flags(0);
    /// Synchronise (open a stream).
    pub const SYN: Flags = Flags(0x1);
    /// The acknowledgement field is meaningful.
    pub const ACK: Flags = Flags(0x2);
    /// Finish (close a stream).
    pub const FIN: Flags = Flags(0x4);
    /// Reset (refuse or abort a stream).
    pub const RST: Flags = Flags(0x8);

    /// Flags from the low nibble of `bits`; the high nibble is ignored.
    pub const fn from_bits_truncate(bits: u8) -> Flags {
        Flags(bits & 0x0f)
    }

    /// The raw bits (low nibble only).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any bit of `other` is set in `self`.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let names = [
            (Flags::SYN, "SYN"),
            (Flags::ACK, "ACK"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// The protocol byte (§2.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Protocol {
    /// 1: reliable stream (§7).
    Stream,
    /// 2: datagram (§8.1).
    Datagram,
    /// 3: control (§8.2).
    Control,
    /// Any other value; carried through unchanged.
    Unknown(u8),
}

impl From<u8> for Protocol {
    fn from(v: u8) -> Protocol {
        match v {
            1 => Protocol::Stream,
            2 => Protocol::Datagram,
            3 => Protocol::Control,
            n => Protocol::Unknown(n),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::Stream => 1,
            Protocol::Datagram => 2,
            Protocol::Control => 3,
            Protocol::Unknown(n) => n,
        }
    }
}

/// Why a header could not be parsed or emitted. Display texts of the parse
/// errors are the reference's (`tests/vectors/header.json`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Error {
    /// Fewer than [`HEADER_LEN`] bytes (§2.4 step 1).
    #[error("packet too short: {len} bytes (min 34)")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// Fewer than `34 + payload_len` bytes (§2.4 step 2).
    #[error("packet truncated: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// `34 + payload_len`.
        need: usize,
    },
    /// CRC-32 mismatch (§2.4 step 3).
    #[error("checksum mismatch")]
    Checksum,
    /// Version nibble other than 1 (§2.4 step 4).
    #[error("unsupported protocol version {0} (expected 1)")]
    Version(u8),
    /// Payload longer than the u16 length field allows (§2.2).
    #[error("payload too large: {0} bytes (max 65535)")]
    PayloadTooLarge(usize),
    /// Output buffer too small for the packet being emitted.
    #[error("buffer too small: have {have} bytes, need {need}")]
    BufferTooSmall {
        /// Bytes available.
        have: usize,
        /// Bytes required.
        need: usize,
    },
}

/// A zero-copy view of a virtual packet (header + payload) in a buffer.
///
/// Fixed-field getters index the first 34 bytes: they cannot panic once
/// [`Packet::check_len`] has passed (which [`Packet::new_checked`] does).
/// [`Packet::payload`] never panics; on a short buffer it returns what exists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks §2.4 steps 1 and 2: at least a header, and at least the payload
    /// the length field announces.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::TooShort { len });
        }
        let need = HEADER_LEN + usize::from(self.payload_len());
        if len < need {
            return Err(Error::Truncated { have: len, need });
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes<const N: usize>(&self, r: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[r]);
        out
    }

    /// The version nibble (must be [`VERSION`]).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_FLAGS] >> 4
    }

    /// The flag nibble.
    pub fn flags(&self) -> Flags {
        Flags::from_bits_truncate(self.buffer.as_ref()[field::VER_FLAGS])
    }

    /// The protocol byte.
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The payload length field.
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::LENGTH))
    }

    /// Source address.
    pub fn src_addr(&self) -> Addr {
        Addr::from_bytes(self.bytes::<ADDR_LEN>(field::SRC_ADDR))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Addr {
        Addr::from_bytes(self.bytes::<ADDR_LEN>(field::DST_ADDR))
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::SRC_PORT))
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::DST_PORT))
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::SEQ))
    }

    /// Acknowledgement number.
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::ACK))
    }

    /// Receive window in segments (§7.5).
    pub fn window(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::WINDOW))
    }

    /// The stored checksum.
    pub fn checksum(&self) -> u32 {
        u32::from_be_bytes(self.bytes(field::CHECKSUM))
    }

    /// The payload: `payload_len` bytes after the header, clamped to the
    /// buffer (so it never panics, even unchecked); trailing bytes excluded.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return &[];
        }
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(buf.len());
        &buf[HEADER_LEN..end]
    }

    /// The CRC-32 of §2.3 over the header (checksum bytes taken as zero) and
    /// the payload as the length field delimits it.
    pub fn compute_checksum(&self) -> u32 {
        let buf = self.buffer.as_ref();
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[..field::CHECKSUM.start]);
        h.update(&[0u8; 4]);
        h.update(self.payload());
        h.finalize()
    }

    /// True when the stored checksum matches [`Packet::compute_checksum`].
    pub fn verify_checksum(&self) -> bool {
        self.checksum() == self.compute_checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, r: core::ops::Range<usize>, v: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(v);
    }

    /// Sets the version nibble, keeping the flags.
    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_FLAGS];
        *b = (v << 4) | (*b & 0x0f);
    }

    /// Sets the flag nibble, keeping the version.
    pub fn set_flags(&mut self, f: Flags) {
        let b = &mut self.buffer.as_mut()[field::VER_FLAGS];
        *b = (*b & 0xf0) | f.bits();
    }

    /// Sets the protocol byte.
    pub fn set_protocol(&mut self, p: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = u8::from(p);
    }

    /// Sets the payload length field.
    pub fn set_payload_len(&mut self, v: u16) {
        self.put(field::LENGTH, &v.to_be_bytes());
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Addr) {
        self.put(field::SRC_ADDR, &a.to_bytes());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Addr) {
        self.put(field::DST_ADDR, &a.to_bytes());
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.put(field::SRC_PORT, &v.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.put(field::DST_PORT, &v.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, v: u32) {
        self.put(field::SEQ, &v.to_be_bytes());
    }

    /// Sets the acknowledgement number.
    pub fn set_ack(&mut self, v: u32) {
        self.put(field::ACK, &v.to_be_bytes());
    }

    /// Sets the window.
    pub fn set_window(&mut self, v: u16) {
        self.put(field::WINDOW, &v.to_be_bytes());
    }

    /// Stores a checksum value.
    pub fn set_checksum(&mut self, v: u32) {
        self.put(field::CHECKSUM, &v.to_be_bytes());
    }

    /// Computes and stores the §2.3 checksum over the header and the payload
    /// currently in the buffer.
    pub fn fill_checksum(&mut self) {
        let c = self.compute_checksum();
        self.set_checksum(c);
    }

    /// The payload, mutable; clamped to the buffer like [`Packet::payload`].
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return &mut [];
        }
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(len);
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The decoded header fields (everything but version and checksum, which
/// [`Repr::emit`] writes itself).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Repr {
    /// SYN/ACK/FIN/RST.
    pub flags: Flags,
    /// Stream, datagram, control.
    pub protocol: Protocol,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Receive window in segments.
    pub window: u16,
    /// Payload length (≤ [`MAX_PAYLOAD_LEN`] for a valid packet).
    pub payload_len: usize,
}

impl Repr {
    /// Validates a packet in the order of §2.4 (too short, truncated, CRC,
    /// version) and returns its fields. Bytes beyond `34 + payload_len` are
    /// ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        if packet.version() != VERSION {
            return Err(Error::Version(packet.version()));
        }
        Ok(Repr {
            flags: packet.flags(),
            protocol: packet.protocol(),
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq(),
            ack: packet.ack(),
            window: packet.window(),
            payload_len: usize::from(packet.payload_len()),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header (version 1) into `packet` and then the checksum over
    /// the header and the `payload_len` payload bytes already in the buffer.
    ///
    /// # Panics
    /// If the buffer is shorter than [`Repr::buffer_len`]; `payload_len` is
    /// truncated to 16 bits. [`emit_packet`] checks both and returns errors.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.buffer.as_mut()[field::VER_FLAGS] = (VERSION << 4) | self.flags.bits();
        packet.set_protocol(self.protocol);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq(self.seq);
        packet.set_ack(self.ack);
        packet.set_window(self.window);
        packet.fill_checksum();
    }
}

/// Whether a control packet with this source port and these flags is a
/// pong (spec §8.2: the answer to a ping comes from port 0 with ACK set).
/// Nothing answers a pong.
pub fn is_pong(src_port: u16, flags: Flags) -> bool {
    src_port == 0 && flags.contains(Flags::ACK)
}

/// Writes `repr`'s header and `payload` into the start of `buf` and returns
/// the packet length. `repr.payload_len` is ignored: the length written is
/// `payload.len()`. Fails, without panicking, on a payload over 65535 bytes or
/// a buffer that is too small.
pub fn emit_packet(repr: &Repr, payload: &[u8], buf: &mut [u8]) -> Result<usize, Error> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(Error::PayloadTooLarge(payload.len()));
    }
    let need = HEADER_LEN + payload.len();
    let Some(out) = buf.get_mut(..need) else {
        return Err(Error::BufferTooSmall {
            have: buf.len(),
            need,
        });
    };
    out[HEADER_LEN..].copy_from_slice(payload);
    let repr = Repr {
        payload_len: payload.len(),
        ..*repr
    };
    repr.emit(&mut Packet::new_unchecked(out));
    Ok(need)
}

/// Convenience: encodes a packet into a new `Vec`.
pub fn packet_to_vec(repr: &Repr, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = vec![0u8; HEADER_LEN + payload.len()];
    emit_packet(repr, payload, &mut v)?;
    Ok(v)
}

/// Convenience: validates a whole packet (§2.4) and returns its fields and its
/// payload (trailing bytes excluded).
pub fn parse_packet(buf: &[u8]) -> Result<(Repr, &[u8]), Error> {
    let packet = Packet::new_unchecked(buf);
    let repr = Repr::parse(&packet)?;
    let payload = buf.get(HEADER_LEN..repr.buffer_len()).unwrap_or(&[]);
    Ok((repr, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Repr {
        Repr {
            flags: Flags::SYN,
            protocol: Protocol::Stream,
            src: Addr::backbone(1),
            dst: Addr::backbone(2),
            src_port: 49152,
            dst_port: 1000,
            seq: 0,
            ack: 0,
            window: 512,
            payload_len: 0,
        }
    }

    #[test]
    fn spec_example_syn() {
        let v = packet_to_vec(&sample(), &[]).unwrap();
        let expect = [
            0x11, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0xc0, 0, 0x03, 0xe8, 0, 0, 0, 0,
            0, 0, 0, 0, 0x02, 0, 0x14, 0x5e, 0xd8, 0x74,
        ];
        assert_eq!(v, expect);
        let (r, p) = parse_packet(&v).unwrap();
        assert_eq!(r, sample());
        assert!(p.is_empty());
    }

    #[test]
    fn protocol_bytes() {
        for b in 0..=255u8 {
            assert_eq!(u8::from(Protocol::from(b)), b);
        }
        assert_eq!(Protocol::from(2), Protocol::Datagram);
    }

    #[test]
    fn validation_order() {
        let mut v = packet_to_vec(
            &Repr {
                payload_len: 3,
                ..sample()
            },
            b"abc",
        )
        .unwrap();
        // Wrong version with a wrong CRC reports the CRC (step 3 before 4).
        v[0] = 0x21;
        assert_eq!(parse_packet(&v).unwrap_err(), Error::Checksum);
        // Fix the CRC: now the version is what fails.
        Packet::new_unchecked(&mut v[..]).fill_checksum();
        assert_eq!(parse_packet(&v).unwrap_err(), Error::Version(2));
        // Truncated before CRC.
        assert_eq!(
            parse_packet(&v[..36]).unwrap_err(),
            Error::Truncated { have: 36, need: 37 }
        );
        assert_eq!(
            parse_packet(&v[..5]).unwrap_err(),
            Error::TooShort { len: 5 }
        );
        assert_eq!(parse_packet(&[]).unwrap_err(), Error::TooShort { len: 0 });
    }

    #[test]
    fn lying_length_never_panics() {
        let mut v = packet_to_vec(&sample(), &[]).unwrap();
        v[2] = 0xff;
        v[3] = 0xff;
        let p = Packet::new_unchecked(&v[..]);
        assert_eq!(p.payload(), &[] as &[u8]);
        let _ = p.compute_checksum();
        assert!(matches!(
            Packet::new_checked(&v[..]),
            Err(Error::Truncated { need: 65569, .. })
        ));
        let short = Packet::new_unchecked(&v[..3]);
        assert_eq!(short.payload(), &[] as &[u8]);
    }

    #[test]
    fn emit_errors() {
        let mut small = [0u8; 33];
        assert_eq!(
            emit_packet(&sample(), &[], &mut small),
            Err(Error::BufferTooSmall { have: 33, need: 34 })
        );
        let big = vec![0u8; 65536];
        let mut buf = vec![0u8; 70000];
        assert_eq!(
            emit_packet(&sample(), &big, &mut buf),
            Err(Error::PayloadTooLarge(65536))
        );
        assert_eq!(emit_packet(&sample(), &big[..65535], &mut buf), Ok(65569));
    }

    #[test]
    fn setters_and_payload_mut() {
        let mut buf = [0u8; 40];
        let repr = Repr {
            payload_len: 6,
            flags: Flags::ACK | Flags::FIN,
            ..sample()
        };
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_payload_len(6);
        p.payload_mut().copy_from_slice(b"abcdef");
        repr.emit(&mut p);
        assert!(p.verify_checksum());
        assert_eq!(p.flags(), Flags::ACK | Flags::FIN);
        assert_eq!(p.version(), 1);
        p.set_flags(Flags::RST);
        assert_eq!(p.version(), 1);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        let (r, payload) = parse_packet(&buf).unwrap();
        assert_eq!(r.flags, Flags::RST);
        assert_eq!(payload, b"abcdef");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn repr_and_payload() -> impl Strategy<Value = (Repr, Vec<u8>)> {
            (
                (
                    0u8..16,
                    any::<u8>(),
                    any::<u16>(),
                    any::<u32>(),
                    any::<u16>(),
                    any::<u32>(),
                ),
                (
                    any::<u16>(),
                    any::<u16>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u16>(),
                ),
                proptest::collection::vec(any::<u8>(), 0..600),
            )
                .prop_map(
                    |((f, p, sn, sh, dn, dh), (sp, dp, seq, ack, win), payload)| {
                        (
                            Repr {
                                flags: Flags::from_bits_truncate(f),
                                protocol: Protocol::from(p),
                                src: Addr::new(sn, sh),
                                dst: Addr::new(dn, dh),
                                src_port: sp,
                                dst_port: dp,
                                seq,
                                ack,
                                window: win,
                                payload_len: payload.len(),
                            },
                            payload,
                        )
                    },
                )
        }

        proptest! {
            #[test]
            fn round_trip((repr, payload) in repr_and_payload(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
                let mut v = packet_to_vec(&repr, &payload).unwrap();
                prop_assert_eq!(v.len(), repr.buffer_len());
                v.extend_from_slice(&trailing);
                let (r, p) = parse_packet(&v).unwrap();
                prop_assert_eq!(r, repr);
                prop_assert_eq!(p, &payload[..]);
            }

            #[test]
            fn any_bit_flip_in_packet_is_caught((repr, payload) in repr_and_payload(), bit in any::<usize>()) {
                let mut v = packet_to_vec(&repr, &payload).unwrap();
                let bit = bit % (v.len() * 8);
                v[bit / 8] ^= 1 << (bit % 8);
                // CRC-32 detects every single-bit error in the covered
                // bytes; a flip in the length field either truncates or
                // changes the covered span (a 2^-32 coincidence aside).
                prop_assert!(parse_packet(&v).is_err());
            }

            #[test]
            fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse_packet(&v);
                let p = Packet::new_unchecked(&v[..]);
                let _ = p.payload();
                if p.check_len().is_ok() {
                    let _ = (p.version(), p.flags(), p.protocol(), p.src_addr(), p.dst_addr(),
                             p.src_port(), p.dst_port(), p.seq(), p.ack(), p.window(),
                             p.checksum(), p.verify_checksum());
                }
            }

            #[test]
            fn truncation_is_reported((repr, payload) in repr_and_payload(), cut in any::<usize>()) {
                let v = packet_to_vec(&repr, &payload).unwrap();
                let cut = cut % v.len();
                let e = parse_packet(&v[..cut]).unwrap_err();
                if cut < HEADER_LEN {
                    prop_assert_eq!(e, Error::TooShort { len: cut });
                } else {
                    prop_assert_eq!(e, Error::Truncated { have: cut, need: v.len() });
                }
            }
        }
    }
}
