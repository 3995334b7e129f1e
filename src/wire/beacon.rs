//! Beacon UDP messages (spec §5.1): discovery, hole-punch coordination,
//! relay and beacon-to-beacon gossip.
//!
//! The beacon and the daemon share one socket per side, so every message
//! starts with a one-byte type below 0x10 (tunnel frames start with `PIL`).
//! The layouts are fixed-offset binary, hence the smoltcp shape: [`Packet`]
//! is a zero-copy view whose getters are total (they read zeros past the end
//! of a short buffer instead of panicking) and [`Packet::check_len`] says
//! whether the buffer is long enough for its type; [`Repr`] is the parsed,
//! owned-where-needed form with [`Repr::parse`] / [`Repr::emit`] /
//! [`Repr::buffer_len`].
//!
//! Trailing bytes after a fixed-size message (discover, reply, punch request,
//! punch command, gossip) are ignored, as the reference beacon does; a relay
//! message's trailing bytes *are* the tunnel frame.
//!
//! Endpoints are `iplen(1) ‖ ip ‖ port(2)` with iplen 4 (IPv4, also used for
//! IPv4-mapped IPv6) or 16 (IPv6). Parsing an iplen-4 endpoint always gives a
//! [`SocketAddr::V4`], and so does an iplen-16 IPv4-mapped address; emitting
//! an IPv4-mapped IPv6 address writes 4 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Message type bytes (spec §5.1).
pub mod msg {
    /// node → beacon: `01 id(4)`.
    pub const DISCOVER: u8 = 0x01;
    /// beacon → node: `02 endpoint` (the observed source address).
    pub const DISCOVER_REPLY: u8 = 0x02;
    /// node → beacon: `03 requester(4) target(4)`.
    pub const PUNCH_REQUEST: u8 = 0x03;
    /// beacon → node: `04 endpoint` ("send punch packets here").
    pub const PUNCH_COMMAND: u8 = 0x04;
    /// node → beacon: `05 sender(4) destination(4) frame…`.
    pub const RELAY: u8 = 0x05;
    /// beacon → node: `06 sender(4) frame…`.
    pub const RELAY_DELIVERY: u8 = 0x06;
    /// beacon → beacon: `07 beacon_id(4) count(2) id(4)×count`.
    pub const GOSSIP: u8 = 0x07;
}

/// Largest relayed frame the reference beacon forwards (spec §5.2, App. C).
pub const MAX_RELAY_PAYLOAD: usize = 65_535;

/// Why a buffer is not a beacon message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is empty or shorter than its type requires.
    #[error("beacon message truncated")]
    Truncated,
    /// The first byte is not one of the seven beacon types.
    #[error("unknown beacon message type 0x{0:02x}")]
    UnknownType(u8),
    /// An endpoint's length byte is neither 4 nor 16.
    #[error("invalid endpoint address length {0}")]
    BadIpLen(u8),
    /// The output buffer passed to `emit` is too small.
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A zero-copy view of a beacon message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. The getters stay total anyway.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and checks its length with [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn u8_at(&self, off: usize) -> u8 {
        self.bytes().get(off).copied().unwrap_or(0)
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.u8_at(off), self.u8_at(off + 1)])
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.u8_at(off),
            self.u8_at(off + 1),
            self.u8_at(off + 2),
            self.u8_at(off + 3),
        ])
    }

    fn tail(&self, off: usize) -> &[u8] {
        self.bytes().get(off..).unwrap_or(&[])
    }

    /// The minimum length a message of this buffer's type needs.
    fn required_len(&self) -> Result<usize, Error> {
        let b = self.bytes();
        let Some(&ty) = b.first() else {
            return Err(Error::Truncated);
        };
        Ok(match ty {
            msg::DISCOVER => 5,
            msg::DISCOVER_REPLY | msg::PUNCH_COMMAND => {
                let iplen = *b.get(1).ok_or(Error::Truncated)?;
                match iplen {
                    4 => 8,
                    16 => 20,
                    other => return Err(Error::BadIpLen(other)),
                }
            }
            msg::PUNCH_REQUEST => 9,
            msg::RELAY => 9,
            msg::RELAY_DELIVERY => 5,
            msg::GOSSIP => {
                if b.len() < 7 {
                    return Err(Error::Truncated);
                }
                7 + 4 * usize::from(self.count())
            }
            other => return Err(Error::UnknownType(other)),
        })
    }

    /// Checks that the buffer holds a complete message of its type.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.bytes().len() < self.required_len()? {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The type byte (0 for an empty buffer).
    pub fn msg_type(&self) -> u8 {
        self.u8_at(0)
    }

    /// The id at offset 1: discover's node id, the punch requester, the relay
    /// (or delivery) sender, the gossiping beacon's id.
    pub fn id(&self) -> u32 {
        self.u32_at(1)
    }

    /// The id at offset 5: punch target or relay destination.
    pub fn second_id(&self) -> u32 {
        self.u32_at(5)
    }

    /// The endpoint of a discover reply or punch command (`None` if the
    /// length byte is not 4 or 16 or the buffer is short).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        let b = self.bytes();
        match b.get(1)? {
            4 => {
                let ip: [u8; 4] = b.get(2..6)?.try_into().ok()?;
                let port = u16::from_be_bytes(b.get(6..8)?.try_into().ok()?);
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
            }
            16 => {
                let ip: [u8; 16] = b.get(2..18)?.try_into().ok()?;
                let port = u16::from_be_bytes(b.get(18..20)?.try_into().ok()?);
                // An IPv4-mapped IPv6 address means IPv4 (spec §5.1).
                Some(match Ipv6Addr::from(ip).to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                    None => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0)),
                })
            }
            _ => None,
        }
    }

    /// The tunnel frame carried by a relay (0x05) or relay delivery (0x06).
    pub fn frame(&self) -> &[u8] {
        match self.msg_type() {
            msg::RELAY => self.tail(9),
            msg::RELAY_DELIVERY => self.tail(5),
            _ => &[],
        }
    }

    /// The number of node ids in a gossip message.
    pub fn count(&self) -> u16 {
        self.u16_at(5)
    }

    /// The `i`-th node id of a gossip message (0 past the end).
    pub fn gossip_id(&self, i: usize) -> u32 {
        self.u32_at(7 + 4 * i)
    }
}

/// A parsed beacon message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr<'a> {
    /// 0x01: "I am `node_id`; tell me my public endpoint". Id 0 is a probe.
    Discover {
        /// The sender's node id (0 for the start-up probe, spec §5.3).
        node_id: u32,
    },
    /// 0x02: the source endpoint the beacon observed.
    DiscoverReply {
        /// Observed endpoint.
        endpoint: SocketAddr,
    },
    /// 0x03: "help `requester` and `target` punch through".
    PunchRequest {
        /// The requesting node (also refreshes its observed endpoint).
        requester: u32,
        /// The node to reach.
        target: u32,
    },
    /// 0x04: "send punch packets to this endpoint".
    PunchCommand {
        /// The peer's observed endpoint.
        endpoint: SocketAddr,
    },
    /// 0x05: relay `frame` to `destination`.
    Relay {
        /// Claimed sender id.
        sender: u32,
        /// Destination node id.
        destination: u32,
        /// The complete tunnel frame (§3).
        frame: &'a [u8],
    },
    /// 0x06: a frame relayed from `sender`.
    RelayDelivery {
        /// Sender id copied from the 0x05 message.
        sender: u32,
        /// The complete tunnel frame.
        frame: &'a [u8],
    },
    /// 0x07: the node ids a peer beacon knows locally.
    Gossip {
        /// The advertising beacon's id.
        beacon_id: u32,
        /// Node ids (at most 65 535).
        node_ids: Vec<u32>,
    },
}

fn endpoint_len(ep: &SocketAddr) -> usize {
    match canonical_ip(ep.ip()) {
        IpAddr::V4(_) => 1 + 4 + 2,
        IpAddr::V6(_) => 1 + 16 + 2,
    }
}

/// IPv4-mapped IPv6 addresses are treated as IPv4 (spec §5.1).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn put_endpoint(out: &mut [u8], ep: &SocketAddr) {
    let port = ep.port().to_be_bytes();
    match canonical_ip(ep.ip()) {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&v4.octets());
            out[5..7].copy_from_slice(&port);
        }
        IpAddr::V6(v6) => {
            out[0] = 16;
            out[1..17].copy_from_slice(&v6.octets());
            out[17..19].copy_from_slice(&port);
        }
    }
}

impl<'a> Repr<'a> {
    /// Parses a checked view of a message.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>, Error> {
        packet.check_len()?;
        let buffer: &'a T = packet.buffer;
        Self::parse_bytes(buffer.as_ref())
    }

    /// Parses a message from raw bytes.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Repr<'a>, Error> {
        let p = Packet::new_checked(bytes)?;
        Ok(match p.msg_type() {
            msg::DISCOVER => Repr::Discover { node_id: p.id() },
            msg::DISCOVER_REPLY => Repr::DiscoverReply {
                endpoint: p.endpoint().ok_or(Error::Truncated)?,
            },
            msg::PUNCH_REQUEST => Repr::PunchRequest {
                requester: p.id(),
                target: p.second_id(),
            },
            msg::PUNCH_COMMAND => Repr::PunchCommand {
                endpoint: p.endpoint().ok_or(Error::Truncated)?,
            },
            msg::RELAY => Repr::Relay {
                sender: p.id(),
                destination: p.second_id(),
                frame: bytes.get(9..).unwrap_or(&[]),
            },
            msg::RELAY_DELIVERY => Repr::RelayDelivery {
                sender: p.id(),
                frame: bytes.get(5..).unwrap_or(&[]),
            },
            msg::GOSSIP => Repr::Gossip {
                beacon_id: p.id(),
                node_ids: (0..usize::from(p.count()))
                    .map(|i| p.gossip_id(i))
                    .collect(),
            },
            other => return Err(Error::UnknownType(other)),
        })
    }

    /// The number of bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::Discover { .. } => 5,
            Repr::DiscoverReply { endpoint } | Repr::PunchCommand { endpoint } => {
                1 + endpoint_len(endpoint)
            }
            Repr::PunchRequest { .. } => 9,
            Repr::Relay { frame, .. } => 9 + frame.len(),
            Repr::RelayDelivery { frame, .. } => 5 + frame.len(),
            Repr::Gossip { node_ids, .. } => 7 + 4 * node_ids.len().min(usize::from(u16::MAX)),
        }
    }

    /// Writes the message into the front of `out`, returning its length.
    /// A gossip list longer than 65 535 ids is truncated to 65 535.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let out = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        match self {
            Repr::Discover { node_id } => {
                out[0] = msg::DISCOVER;
                out[1..5].copy_from_slice(&node_id.to_be_bytes());
            }
            Repr::DiscoverReply { endpoint } => {
                out[0] = msg::DISCOVER_REPLY;
                put_endpoint(&mut out[1..], endpoint);
            }
            Repr::PunchRequest { requester, target } => {
                out[0] = msg::PUNCH_REQUEST;
                out[1..5].copy_from_slice(&requester.to_be_bytes());
                out[5..9].copy_from_slice(&target.to_be_bytes());
            }
            Repr::PunchCommand { endpoint } => {
                out[0] = msg::PUNCH_COMMAND;
                put_endpoint(&mut out[1..], endpoint);
            }
            Repr::Relay {
                sender,
                destination,
                frame,
            } => {
                out[0] = msg::RELAY;
                out[1..5].copy_from_slice(&sender.to_be_bytes());
                out[5..9].copy_from_slice(&destination.to_be_bytes());
                out[9..].copy_from_slice(frame);
            }
            Repr::RelayDelivery { sender, frame } => {
                out[0] = msg::RELAY_DELIVERY;
                out[1..5].copy_from_slice(&sender.to_be_bytes());
                out[5..].copy_from_slice(frame);
            }
            Repr::Gossip {
                beacon_id,
                node_ids,
            } => {
                let n = node_ids.len().min(usize::from(u16::MAX));
                out[0] = msg::GOSSIP;
                out[1..5].copy_from_slice(&beacon_id.to_be_bytes());
                out[5..7].copy_from_slice(&(n as u16).to_be_bytes());
                for (i, id) in node_ids.iter().take(n).enumerate() {
                    out[7 + 4 * i..11 + 4 * i].copy_from_slice(&id.to_be_bytes());
                }
            }
        }
        Ok(len)
    }

    /// The message as a freshly allocated vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.buffer_len()];
        // The buffer has exactly `buffer_len` bytes, so emit cannot fail.
        let _ = self.emit(&mut v);
        v
    }
}

/// `01 id`: the discover a daemon sends (id 0 for the start-up probe).
pub fn encode_discover(node_id: u32) -> [u8; 5] {
    let mut b = [0u8; 5];
    b[0] = msg::DISCOVER;
    b[1..].copy_from_slice(&node_id.to_be_bytes());
    b
}

/// `03 requester target`: ask the beacon to coordinate a hole punch.
pub fn encode_punch_request(requester: u32, target: u32) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = msg::PUNCH_REQUEST;
    b[1..5].copy_from_slice(&requester.to_be_bytes());
    b[5..].copy_from_slice(&target.to_be_bytes());
    b
}

/// `05 sender destination frame`: wrap a tunnel frame for the relay.
pub fn encode_relay(sender: u32, destination: u32, frame: &[u8]) -> Vec<u8> {
    Repr::Relay {
        sender,
        destination,
        frame,
    }
    .to_vec()
}

/// `02 endpoint`: the beacon's reply to a discover.
pub fn encode_discover_reply(observed: SocketAddr) -> Vec<u8> {
    Repr::DiscoverReply { endpoint: observed }.to_vec()
}

/// `04 endpoint`: a punch command.
pub fn encode_punch_command(peer: SocketAddr) -> Vec<u8> {
    Repr::PunchCommand { endpoint: peer }.to_vec()
}

/// `06 sender frame`: a relay delivery.
pub fn encode_relay_delivery(sender: u32, frame: &[u8]) -> Vec<u8> {
    Repr::RelayDelivery { sender, frame }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_round_trip() {
        let b = encode_discover(42);
        assert_eq!(b, [1, 0, 0, 0, 42]);
        assert_eq!(
            Repr::parse_bytes(&b).unwrap(),
            Repr::Discover { node_id: 42 }
        );
    }

    #[test]
    fn short_and_unknown_are_errors() {
        assert_eq!(Repr::parse_bytes(&[]), Err(Error::Truncated));
        assert_eq!(Repr::parse_bytes(&[1, 0, 0]), Err(Error::Truncated));
        assert_eq!(Repr::parse_bytes(&[2, 5, 0]), Err(Error::BadIpLen(5)));
        assert_eq!(Repr::parse_bytes(&[2]), Err(Error::Truncated));
        assert_eq!(Repr::parse_bytes(&[0x50, 1]), Err(Error::UnknownType(0x50)));
        assert_eq!(
            Repr::parse_bytes(&[7, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn getters_are_total_on_short_buffers() {
        let p = Packet::new_unchecked(&[5u8][..]);
        assert_eq!(p.id(), 0);
        assert_eq!(p.second_id(), 0);
        assert_eq!(p.frame(), &[] as &[u8]);
        assert_eq!(p.endpoint(), None);
        assert_eq!(p.gossip_id(1000), 0);
    }

    #[test]
    fn mapped_ipv6_is_emitted_as_ipv4() {
        let ep: SocketAddr = "[::ffff:127.0.0.1]:40001".parse().unwrap();
        assert_eq!(
            encode_discover_reply(ep),
            [2, 4, 127, 0, 0, 1, 0x9c, 0x41].to_vec()
        );
    }

    #[test]
    fn mapped_ipv6_endpoint_parses_as_ipv4() {
        let mut b = vec![2u8, 16];
        b.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[0, 80]);
        assert_eq!(
            Repr::parse_bytes(&b).unwrap(),
            Repr::DiscoverReply {
                endpoint: "10.0.0.1:80".parse().unwrap()
            }
        );
    }

    #[test]
    fn emit_into_small_buffer_fails() {
        let mut b = [0u8; 4];
        assert_eq!(
            Repr::Discover { node_id: 1 }.emit(&mut b),
            Err(Error::BufferTooSmall)
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn endpoint() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>())
                    .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(ip.into()), p)),
                (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| {
                    let v6 = Ipv6Addr::from(ip);
                    SocketAddr::new(canonical_ip(IpAddr::V6(v6)), p)
                }),
            ]
        }

        proptest! {
            #[test]
            fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = Repr::parse_bytes(&data);
                let p = Packet::new_unchecked(&data[..]);
                let _ = (p.id(), p.second_id(), p.endpoint(), p.frame(), p.count(), p.gossip_id(3));
            }

            #[test]
            fn round_trip(
                kind in 0u8..7,
                a in any::<u32>(),
                b in any::<u32>(),
                ep in endpoint(),
                frame in proptest::collection::vec(any::<u8>(), 0..200),
                ids in proptest::collection::vec(any::<u32>(), 0..50),
            ) {
                let repr = match kind {
                    0 => Repr::Discover { node_id: a },
                    1 => Repr::DiscoverReply { endpoint: ep },
                    2 => Repr::PunchRequest { requester: a, target: b },
                    3 => Repr::PunchCommand { endpoint: ep },
                    4 => Repr::Relay { sender: a, destination: b, frame: &frame },
                    5 => Repr::RelayDelivery { sender: a, frame: &frame },
                    _ => Repr::Gossip { beacon_id: a, node_ids: ids.clone() },
                };
                let bytes = repr.to_vec();
                prop_assert_eq!(bytes.len(), repr.buffer_len());
                prop_assert_eq!(Repr::parse_bytes(&bytes).unwrap(), repr);
            }
        }
    }
}
