//! Fuzzes the gateway's DNS query handling (`gateway::dns`): any UDP
//! payload sent to the gateway's DNS port reaches [`question`] and [`reply`],
//! so neither may panic, and every reply must be a response to the query it
//! answers (same id, QR set) that the gateway would never take as a query.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pilot::gateway::dns::{question, reply, Outcome};
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let q = question(data);
    for outcome in [
        Outcome::Address(Ipv4Addr::new(10, 4, 0, 1)),
        Outcome::NoData,
        Outcome::NxDomain,
        Outcome::Refused,
        Outcome::ServFail,
    ] {
        if let Some(r) = reply(data, outcome) {
            assert!(r.len() >= 12 && data.len() >= 12);
            assert_eq!(r[..2], data[..2], "reply id differs from the query's");
            assert_ne!(r[2] & 0x80, 0, "reply without the QR bit");
            assert_eq!(question(&r), None, "a reply parses as a query");
        } else if let Some(pilot::gateway::dns::Question::Pilot { .. }) = q {
            // A query the gateway understood must be answerable.
            panic!("no reply for an accepted query");
        }
    }
});
