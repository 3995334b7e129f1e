//! The beacon relay path on loopback: a node that registered an endpoint
//! nobody can reach is still reached through the beacon relay (spec §5.5,
//! §5.6) within a few seconds, and the path manager then finds its real
//! address and moves the peer to a direct path.

mod common;

use std::time::{Duration, Instant};

use common::{Node, Rendezvous};

#[test]
fn an_unreachable_endpoint_is_reached_through_the_relay_then_direct() {
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
    // The path manager tries the relay once a cold connect has been stuck
    // for 250 ms while probing goes on (node/path.rs), so the message gets
    // through well before the SYN timeline's own relay switch (7 s).
    assert!(took < Duration::from_secs(7), "{took:?}");

    // b's real address (the beacon saw it) is reachable on loopback, so the
    // path manager's probes then move the peer off the relay to a direct
    // path: relay first, direct next (path_changes counts both). The relay
    // as the lasting path is proven through real NATs (tests/nat_matrix.rs).
    let mut p = serde_json::Value::Null;
    let direct = common::wait_until(Duration::from_secs(10), || {
        let peers = a.json(&["peers"]);
        p = peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == ab.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{peers}"));
        p["path"] == "direct"
    });
    assert!(direct, "never upgraded from the relay: {p}");
    assert!(p["path_changes"].as_u64().unwrap() >= 2, "{p}");
    assert_ne!(p["endpoint"], "127.0.0.1:9", "{p}");
    assert_eq!(p["encrypted"], true);

    // More traffic flows without delay, both ways.
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
