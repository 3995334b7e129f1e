//! Fuzzes the address text parsers (§1.2–1.4): no input may panic, and
//! whatever parses must format back to text that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::wire::address::{is_valid_hostname, parse_target, Addr, SockAddr, Target};

fuzz_target!(|data: &[u8]| {
    let _ = Addr::from_slice(data);
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = text.parse::<Addr>() {
        assert_eq!(a.to_string().parse::<Addr>(), Ok(a));
        assert_eq!(Addr::from_bytes(a.to_bytes()), a);
    } else if let Err(e) = text.parse::<Addr>() {
        let _ = e.to_string();
    }
    match text.parse::<SockAddr>() {
        Ok(s) => assert_eq!(s.to_string().parse::<SockAddr>(), Ok(s)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_target(text) {
        Ok(Target::Hostname(h)) => assert!(is_valid_hostname(&h)),
        Ok(Target::Addr(_)) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
