//! Fuzz target for `crypto`: arbitrary bytes as `identity.json` text and as
//! received PILS frames, plus a seal/open round trip of the bytes as a
//! plaintext. Nothing may panic; a parsed identity must round-trip through
//! `to_json`; a sealed frame must open to its plaintext exactly once, and
//! must not open after any single-byte change.
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pilot::crypto::tunnel::{Session, PILS_HEADER_LEN, PILS_OVERHEAD};
use pilot::crypto::Identity;

const KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = Identity::from_json(&text) {
        let again = Identity::from_json(&id.to_json()).expect("own output parses");
        assert_eq!(again, id);
    }

    // Arbitrary bytes as received frames: whole, then in 64-byte pieces
    // through the same session.
    let now = Instant::now();
    let mut rx = Session::new(KEY, [0; 4]);
    let mut frame = data.to_vec();
    let _ = rx.open_in_place(&mut frame, now);
    for chunk in data.chunks(64) {
        let mut f = chunk.to_vec();
        let _ = rx.open_in_place(&mut f, now);
    }

    // The bytes as a plaintext: seal, open once, replay fails, a flipped
    // byte (position chosen by the data) fails.
    let mut tx = Session::new(KEY, [1, 2, 3, 4]);
    let mut rx = Session::new(KEY, [5, 6, 7, 8]);
    let mut buf = vec![0u8; data.len() + PILS_OVERHEAD];
    buf[PILS_HEADER_LEN..PILS_HEADER_LEN + data.len()].copy_from_slice(data);
    let n = tx
        .seal_in_place(7, &mut buf, data.len())
        .expect("buffer is large enough");
    let sealed = buf[..n].to_vec();
    let mut tampered = sealed.clone();
    let pos = data.first().map_or(0, |&b| b as usize) % tampered.len();
    tampered[pos] ^= 0x80;
    assert!(
        rx.open_in_place(&mut tampered, now).is_err(),
        "tampered frame opened"
    );
    assert_eq!(rx.open_in_place(&mut buf[..n], now).expect("opens"), data);
    let mut replay = sealed;
    assert!(
        rx.open_in_place(&mut replay, now).is_err(),
        "replay accepted"
    );
});
