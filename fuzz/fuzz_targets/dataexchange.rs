//! Fuzzes the port-1001 and port-1002 stream decoders (§10): the input is
//! treated as a byte stream, decoded frame by frame; no input may panic,
//! consumption must make progress, and decoded frames must re-emit exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::dataexchange as dx;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((f, used))) = dx::decode(rest) {
        assert!(used >= dx::HEADER_LEN && used <= rest.len());
        assert_eq!(f.to_vec().expect("re-emit"), &rest[..used]);
        if let Some(Ok(fb)) = f.file() {
            let _ = fb.name_str();
        }
        let _ = f.content_len();
        rest = &rest[used..];
    }
    let _ = dx::read_frame(data);
    let _ = dx::split_file_body(data);
    if let Ok(p) = dx::FilePart::parse(data) {
        assert_eq!(&p.to_frame().expect("re-emit")[dx::HEADER_LEN..], data);
    }
    let mut rest = data;
    while let Ok(Some((e, used))) = dx::decode_event(rest) {
        assert!(used >= 6 && used <= rest.len());
        assert_eq!(e.to_vec().expect("re-emit"), &rest[..used]);
        rest = &rest[used..];
    }
});
