//! Fuzzes the raw IPv4 handling of the gateway (`gateway::packet`): every
//! packet a local program sends into the TUN device is classified before
//! smoltcp sees it, so no input may panic; a RST built for a TCP segment
//! must classify as that connection's RST (addresses and ports swapped) and
//! never be answered itself; an echo reply must keep the request's ICMP
//! body apart from type and checksum, with valid checksums.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::gateway::packet::{classify, echo_reply, reset_for, Kind};

/// RFC 1071 sum over `data`; 0 when a checksum inside it verifies.
fn sum(data: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        Kind::Tcp(t) => {
            if let Some(rst) = reset_for(&t) {
                assert_eq!(sum(&rst[..20]), 0, "bad IPv4 checksum on a RST");
                let Kind::Tcp(r) = classify(&rst) else {
                    panic!("a RST that is not TCP");
                };
                assert!(r.is_rst());
                assert_eq!((r.src, r.dst, r.sport, r.dport), (t.dst, t.src, t.dport, t.sport));
                assert!(reset_for(&r).is_none(), "a RST answered with a RST");
            } else {
                assert!(t.is_rst());
            }
        }
        Kind::EchoRequest { src, dst } => {
            let rep = echo_reply(data).expect("an echo request without a reply");
            assert_eq!(sum(&rep[..20]), 0, "bad IPv4 checksum on an echo reply");
            assert_eq!(sum(&rep[20..]), 0, "bad ICMP checksum on an echo reply");
            assert_eq!(rep[12..16], dst.octets());
            assert_eq!(rep[16..20], src.octets());
            assert_eq!(rep[20], 0);
            assert_eq!(classify(&rep), Kind::Other);
        }
        Kind::Other => {}
    }
    let _ = echo_reply(data);
});
