//! Feeds arbitrary bytes to the beacon parser; a successful parse must
//! re-emit to a message that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::beacon::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let p = Packet::new_unchecked(data);
    let _ = (p.msg_type(), p.id(), p.second_id(), p.endpoint(), p.frame(), p.count());
    if let Ok(repr) = Repr::parse_bytes(data) {
        let bytes = repr.to_vec();
        assert_eq!(Repr::parse_bytes(&bytes).as_ref(), Ok(&repr));
    }
});
