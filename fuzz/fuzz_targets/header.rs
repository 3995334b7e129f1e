//! Fuzzes the virtual-packet parser (§2.4): no input may panic, and an
//! accepted packet must re-emit to exactly the bytes it was parsed from
//! (trailing bytes excluded). Inputs are also tried with a repaired CRC.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::header::{self, Packet};

fuzz_target!(|data: &[u8]| {
    let p = Packet::new_unchecked(data);
    let _ = p.payload();
    if p.check_len().is_ok() {
        let _ = (
            p.version(),
            p.flags(),
            p.protocol(),
            p.src_addr(),
            p.dst_addr(),
            p.src_port(),
            p.dst_port(),
            p.seq(),
            p.ack(),
            p.window(),
            p.verify_checksum(),
        );
    }
    match header::parse_packet(data) {
        Ok((repr, payload)) => {
            let out = header::packet_to_vec(&repr, payload).expect("re-emit");
            assert_eq!(&out[..], &data[..repr.buffer_len()]);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // Random bytes almost never carry a valid CRC; repair it so the fuzzer
    // also reaches the version check and the accept path. After repair the
    // only possible refusals are length and version.
    let mut fixed = data.to_vec();
    let mut p = Packet::new_unchecked(&mut fixed[..]);
    if p.check_len().is_ok() {
        p.fill_checksum();
        let version = p.version();
        match header::parse_packet(&fixed) {
            Ok((repr, payload)) => {
                assert_eq!(version, header::VERSION);
                let out = header::packet_to_vec(&repr, payload).expect("re-emit");
                assert_eq!(&out[..], &fixed[..repr.buffer_len()]);
            }
            Err(e) => assert_eq!(e, header::Error::Version(version)),
        }
    }
});
