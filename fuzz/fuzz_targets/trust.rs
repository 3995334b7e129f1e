//! Fuzzes the trust-handshake and trust.json parsers (§9.2, §11): no input
//! may panic, and an accepted message must survive canonical re-serialisation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::trust::{HandshakeMessage, TrustFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = HandshakeMessage::from_slice(data) {
        let j = m.canonical_json();
        let back = HandshakeMessage::from_slice(j.as_bytes());
        // Re-serialising can only grow past the size limit through escapes.
        if j.len() <= pilot::wire::trust::MAX_MESSAGE_LEN {
            assert_eq!(back.as_ref(), Ok(&m));
        }
        let _ = (m.replay_hash(), m.public_key_bytes(), m.signature_bytes());
        let _ = m.check_timestamp(1_767_225_600);
    }
    let _ = HandshakeMessage::parse_partial(data);
    if let Ok(f) = TrustFile::from_slice(data) {
        let j = f.to_pretty_json();
        assert_eq!(TrustFile::from_slice(j.as_bytes()).as_ref(), Ok(&f));
    }
});
