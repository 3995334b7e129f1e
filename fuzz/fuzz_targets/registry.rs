//! Feeds arbitrary bytes to the registry frame decoder, then each frame to
//! the JSON request/response parsers and the binary-mode parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::registry::{self, BinaryMessage, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    // Split the input in two pushes to exercise partial frames.
    let mid = data.len() / 2;
    d.push(&data[..mid]);
    let _ = d.next_frame();
    d.push(&data[mid..]);
    while let Ok(Some(frame)) = d.next_frame() {
        if let Ok(req) = registry::parse_request(&frame) {
            let again = registry::parse_request(&registry::to_json(&req));
            assert_eq!(again.ok(), Some(req));
        }
        let _ = registry::parse_response(&frame);
        if let Ok(m) = BinaryMessage::parse_frame_payload(&frame) {
            let _ = m.emit_frame();
        }
    }
});
