//! Fuzzes the UDP frame demultiplexer (§3.1) and the PILS view: no input may
//! panic, and an accepted frame must re-emit as a prefix of its datagram.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::frame::{Frame, SealedPacket};
use pilot::wire::header;

fuzz_target!(|data: &[u8]| {
    match Frame::parse(data) {
        Ok(f) => {
            let out = f.to_vec();
            assert_eq!(&out[..], &data[..out.len()]);
            if let Frame::Plain(p) = f {
                let _ = header::parse_packet(p);
            }
            if let Frame::AuthKey(a) = f {
                let _ = a.signed_message();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let s = SealedPacket::new_unchecked(data);
    let _ = (
        s.has_magic(),
        s.ciphertext(),
        s.ciphertext_only(),
        s.tag(),
        s.aad(),
    );
    if let Ok(s) = SealedPacket::new_checked(data) {
        let _ = (s.sender(), s.nonce(), s.nonce_prefix(), s.counter());
    }
});
