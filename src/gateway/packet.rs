//! The few IPv4 packets the gateway looks at before (or instead of) the
//! userspace TCP stack: which connection a TCP segment belongs to, a RST for
//! a connection that must be refused at once, and the echo reply to an ICMP
//! echo request. Pure byte work, never panics on any input (the kernel hands
//! us whatever local programs send).

use std::net::Ipv4Addr;

/// IP protocol numbers (IANA).
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;

/// TCP flag bits (RFC 9293 §3.1).
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What an IPv4 packet from the kernel is, as far as the gateway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP segment.
    Tcp(TcpInfo),
    /// An ICMP echo request to `dst`.
    EchoRequest {
        /// Source address.
        src: Ipv4Addr,
        /// Destination (the mapped address pinged).
        dst: Ipv4Addr,
    },
    /// Anything else (dropped).
    Other,
}

/// The fields of a TCP segment the gateway needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flag byte.
    pub flags: u8,
    /// Payload length.
    pub payload_len: usize,
}

impl TcpInfo {
    /// A connection-opening SYN (no ACK).
    pub fn is_syn(&self) -> bool {
        self.flags & (SYN | ACK) == SYN
    }

    /// Carries RST.
    pub fn is_rst(&self) -> bool {
        self.flags & RST != 0
    }
}

/// Reads the IPv4 header; `None` for anything malformed, fragmented or not IPv4.
fn ipv4(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, &[u8])> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return None;
    }
    // Fragments (MF set or an offset) are not ours to reassemble.
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((src, dst, p[9], &p[ihl..total]))
}

/// Classifies a packet read from the TUN.
pub fn classify(p: &[u8]) -> Kind {
    let Some((src, dst, proto, body)) = ipv4(p) else {
        return Kind::Other;
    };
    match proto {
        PROTO_TCP if body.len() >= 20 => {
            let off = usize::from(body[12] >> 4) * 4;
            if off < 20 || off > body.len() {
                return Kind::Other;
            }
            Kind::Tcp(TcpInfo {
                src,
                dst,
                sport: u16::from_be_bytes([body[0], body[1]]),
                dport: u16::from_be_bytes([body[2], body[3]]),
                seq: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                ack: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
                flags: body[13],
                payload_len: body.len() - off,
            })
        }
        // Type 8, code 0: echo request.
        PROTO_ICMP if body.len() >= 8 && body[0] == 8 && body[1] == 0 => {
            Kind::EchoRequest { src, dst }
        }
        _ => Kind::Other,
    }
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_header(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) {
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[4..6].copy_from_slice(&[0, 0]);
    out[6..8].copy_from_slice(&[0x40, 0]); // don't fragment
    out[8] = 64;
    out[9] = proto;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let c = checksum(0, &out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The RST that refuses `seg` (RFC 9293 §3.10.7.1), or `None` when `seg`
/// is itself a RST (never answer a RST).
pub fn reset_for(seg: &TcpInfo) -> Option<Vec<u8>> {
    if seg.is_rst() {
        return None;
    }
    let (seq, ack, flags) = if seg.flags & ACK != 0 {
        (seg.ack, 0, RST)
    } else {
        let mut len = seg.payload_len as u32;
        if seg.flags & SYN != 0 {
            len += 1;
        }
        if seg.flags & FIN != 0 {
            len += 1;
        }
        (0, seg.seq.wrapping_add(len), RST | ACK)
    };
    let mut p = vec![0u8; 40];
    ipv4_header(&mut p, seg.dst, seg.src, PROTO_TCP, 40);
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&seg.dport.to_be_bytes());
    t[2..4].copy_from_slice(&seg.sport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    let mut pseudo = 0u32;
    for w in [seg.dst.octets(), seg.src.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += u32::from(PROTO_TCP) + 20;
    let c = checksum(pseudo, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

/// The echo reply to an echo request (same identifier, sequence and data,
/// addresses swapped), or `None` if `req` is not a well-formed echo request.
pub fn echo_reply(req: &[u8]) -> Option<Vec<u8>> {
    let (src, dst, proto, body) = ipv4(req)?;
    if proto != PROTO_ICMP || body.len() < 8 || body[0] != 8 {
        return None;
    }
    let total = 20 + body.len();
    let mut p = vec![0u8; total];
    ipv4_header(&mut p, dst, src, PROTO_ICMP, total);
    let icmp = &mut p[20..];
    icmp.copy_from_slice(body);
    icmp[0] = 0; // echo reply
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = checksum(0, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> Vec<u8> {
        // 10.4.255.254:40000 -> 10.4.0.1:80, SYN, seq 1000.
        let mut p = vec![0u8; 40];
        ipv4_header(
            &mut p,
            Ipv4Addr::new(10, 4, 255, 254),
            Ipv4Addr::new(10, 4, 0, 1),
            PROTO_TCP,
            40,
        );
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = SYN;
        p
    }

    #[test]
    fn classifies_a_syn_and_refuses_it() {
        let Kind::Tcp(t) = classify(&syn()) else {
            panic!("not tcp")
        };
        assert!(t.is_syn());
        assert_eq!((t.sport, t.dport, t.seq), (40000, 80, 1000));
        let rst = reset_for(&t).unwrap();
        let Kind::Tcp(r) = classify(&rst) else {
            panic!("rst not tcp")
        };
        assert_eq!((r.src, r.dst), (t.dst, t.src));
        assert_eq!((r.sport, r.dport), (80, 40000));
        assert_eq!(r.flags, RST | ACK);
        assert_eq!(r.ack, 1001);
        // Checksums verify: summing a header with its checksum gives 0.
        assert_eq!(checksum(0, &rst[..20]), 0);
        assert!(reset_for(&r).is_none(), "never answer a RST");
    }

    #[test]
    fn echo_reply_swaps_and_checksums() {
        let mut req = vec![0u8; 20 + 12];
        ipv4_header(
            &mut req,
            Ipv4Addr::new(10, 4, 255, 254),
            Ipv4Addr::new(10, 4, 0, 1),
            PROTO_ICMP,
            32,
        );
        req[20] = 8;
        req[24..28].copy_from_slice(&[0, 7, 0, 1]);
        req[28..32].copy_from_slice(b"ping");
        assert_eq!(
            classify(&req),
            Kind::EchoRequest {
                src: Ipv4Addr::new(10, 4, 255, 254),
                dst: Ipv4Addr::new(10, 4, 0, 1)
            }
        );
        let rep = echo_reply(&req).unwrap();
        assert_eq!(&rep[12..16], &[10, 4, 0, 1]);
        assert_eq!(rep[20], 0);
        assert_eq!(&rep[24..32], &req[24..32]);
        assert_eq!(checksum(0, &rep[20..]), 0);
        assert_eq!(checksum(0, &rep[..20]), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 7u64;
        for len in 0..200 {
            let mut p = vec![0u8; len];
            for b in p.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            if len > 0 {
                p[0] = 0x45;
            }
            let _ = classify(&p);
            let _ = echo_reply(&p);
        }
        let mut s = syn();
        s[32] = 0xf0; // data offset beyond the segment
        assert_eq!(classify(&s), Kind::Other);
    }
}
