#![no_main]
//! Fuzz the SACK payload parsers (§7.6, §12.3): neither may panic, the exact
//! parser must re-emit byte-identically, and the sender split rule must never
//! produce a segment either parser reads as SACK.
use libfuzzer_sys::fuzz_target;
use pilot::wire::sack::{data_split_len, parse_payload, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = parse_payload(data) {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], data);
    }
    let _ = Repr::parse_lenient(&Packet::new_unchecked(data));
    let mut rest = data;
    while !rest.is_empty() {
        let n = data_split_len(rest);
        assert!(n > 0 && n <= rest.len());
        assert!(parse_payload(&rest[..n]).is_none());
        assert!(Repr::parse_lenient(&Packet::new_unchecked(&rest[..n])).is_err());
        rest = &rest[n..];
    }
});
