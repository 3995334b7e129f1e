//! DNS for `<hostname>.pilot`: the gateway answers A queries on its own
//! address (the kernel side of the TUN), mapping the node on demand, so
//! `curl http://agent-alpha.pilot/` works once the system resolver sends
//! `.pilot` there. Unknown names get NXDOMAIN; names outside `.pilot` get
//! REFUSED (this is not a recursive resolver).
//!
//! The message format is simple-dns's; this module only decides what to
//! answer ([`question`] and [`reply`] are pure and unit-tested).

use std::net::Ipv4Addr;

use simple_dns::rdata::{RData, A};
use simple_dns::{Name, Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};

/// TTL of answers, in seconds: short, since `unmap` can change them.
pub const TTL: u32 = 30;

/// The zone served.
pub const ZONE: &str = "pilot";

/// What a query asks, as far as the gateway cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// A name under `.pilot`: the hostname (lower-case), and whether the
    /// query is for an A record (other types get an empty answer).
    Pilot {
        /// The hostname, without `.pilot`.
        hostname: String,
        /// Type A (or ANY).
        want_a: bool,
    },
    /// A name outside the zone.
    Foreign,
}

/// The answer decided for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An A record.
    Address(Ipv4Addr),
    /// The name exists but has no record of the asked type.
    NoData,
    /// No such name.
    NxDomain,
    /// Not our zone, or we could not answer.
    Refused,
    /// We failed (e.g. the daemon is down).
    ServFail,
}

/// Parses a query; `None` for anything that is not a one-question query.
pub fn question(msg: &[u8]) -> Option<Question> {
    let p = Packet::parse(msg).ok()?;
    if p.has_flags(PacketFlag::RESPONSE) || p.questions.len() != 1 {
        return None;
    }
    let q = &p.questions[0];
    let labels: Vec<String> = q
        .qname
        .get_labels()
        .iter()
        .map(|l| l.to_string().to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [host, zone] if zone == ZONE && !host.is_empty() => Some(Question::Pilot {
            hostname: host.clone(),
            want_a: matches!(q.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY),
        }),
        _ => Some(Question::Foreign),
    }
}

/// Builds the reply to `msg` with `outcome`.
pub fn reply(msg: &[u8], outcome: Outcome) -> Option<Vec<u8>> {
    let q = Packet::parse(msg).ok()?;
    let mut r = Packet::new_reply(q.id());
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        r.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    r.questions = q.questions.clone();
    match outcome {
        Outcome::Address(ip) => {
            r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            let name = q.questions.first()?.qname.clone();
            r.answers.push(ResourceRecord::new(
                name,
                CLASS::IN,
                TTL,
                RData::A(A {
                    address: u32::from(ip),
                }),
            ));
        }
        Outcome::NoData => r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER),
        Outcome::NxDomain => {
            r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            *r.rcode_mut() = RCODE::NameError;
        }
        Outcome::Refused => *r.rcode_mut() = RCODE::Refused,
        Outcome::ServFail => *r.rcode_mut() = RCODE::ServerFailure,
    }
    r.build_bytes_vec().ok()
}

/// A query for `name` (tests and tools).
pub fn query(id: u16, name: &str, qtype: TYPE) -> Option<Vec<u8>> {
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    p.questions.push(simple_dns::Question::new(
        Name::new(name).ok()?,
        QTYPE::TYPE(qtype),
        simple_dns::QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pilot_names_and_answers() {
        let q = query(7, "Agent-Alpha.pilot", TYPE::A).unwrap();
        assert_eq!(
            question(&q),
            Some(Question::Pilot {
                hostname: "agent-alpha".into(),
                want_a: true
            })
        );
        let r = reply(&q, Outcome::Address(Ipv4Addr::new(10, 4, 0, 1))).unwrap();
        let p = Packet::parse(&r).unwrap();
        assert_eq!(p.id(), 7);
        assert!(p.has_flags(PacketFlag::RESPONSE));
        assert_eq!(p.rcode(), RCODE::NoError);
        match &p.answers[0].rdata {
            RData::A(a) => assert_eq!(Ipv4Addr::from(a.address), Ipv4Addr::new(10, 4, 0, 1)),
            other => panic!("{other:?}"),
        }
        let nx = Packet::parse(&reply(&q, Outcome::NxDomain).unwrap())
            .unwrap()
            .rcode();
        assert_eq!(nx, RCODE::NameError);
    }

    #[test]
    fn other_zones_and_types() {
        let q = query(1, "example.com", TYPE::A).unwrap();
        assert_eq!(question(&q), Some(Question::Foreign));
        let q = query(1, "a.b.pilot", TYPE::A).unwrap();
        assert_eq!(question(&q), Some(Question::Foreign));
        let q = query(1, "alpha.pilot", TYPE::AAAA).unwrap();
        assert_eq!(
            question(&q),
            Some(Question::Pilot {
                hostname: "alpha".into(),
                want_a: false
            })
        );
        let r = reply(&q, Outcome::NoData).unwrap();
        let p = Packet::parse(&r).unwrap();
        assert!(p.answers.is_empty());
        assert_eq!(p.rcode(), RCODE::NoError);
        assert_eq!(question(b"\x00\x01garbage"), None);
        assert_eq!(question(&[]), None);
    }
}
