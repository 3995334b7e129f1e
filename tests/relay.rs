//! The beacon relay path on loopback: a node that registered an endpoint
//! nobody can reach is still reached through the beacon once the dialler's
//! SYN timeline switches to the relay (spec §5.5, §5.6), and traffic then
//! flows both ways through it.

mod common;

use std::time::{Duration, Instant};

use common::{Node, Rendezvous};

#[test]
fn an_unreachable_endpoint_falls_back_to_the_relay() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(&rdv, &["--public"]);
    // b tells the registry an endpoint where nothing listens (the discard
    // port); only the beacon knows where b really is.
    let bb = b.start(&rdv, &["--public", "--daemon-arg=--endpoint=127.0.0.1:9"]);
    let ab = bb["address"].as_str().unwrap().to_string();

    let start = Instant::now();
    let m = a.json(&[
        "connect",
        &ab,
        "7",
        "--message",
        "through the relay",
        "--timeout",
        "40s",
    ]);
    let took = start.elapsed();
    assert_eq!(m["data"], "through the relay");
    // Direct attempts at 0, 1 and 3 s; the relay from the third expiry (7 s).
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(25),
        "{took:?}"
    );

    let peers = a.json(&["peers"]);
    let p = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == ab.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{peers}"));
    assert_eq!(p["path"], "relay", "{p}");
    assert_eq!(p["encrypted"], true);

    // Once on the relay, more traffic flows without delay, both ways.
    let p = a.json(&[
        "ping",
        &ab,
        "--count",
        "3",
        "--interval",
        "50ms",
        "--timeout",
        "2s",
    ]);
    assert_eq!(p["received"], 3);
    let t = Instant::now();
    let big = "x".repeat(20_000);
    let m = a.json(&["connect", &ab, "7", "--message", &big, "--linger", "300ms"]);
    assert_eq!(m["bytes_received"], 20_000);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
