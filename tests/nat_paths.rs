//! Paths in the network lab (root only; skips otherwise):
//! * a relayed pair becomes direct when the NAT in the way changes from
//!   symmetric to home, while an echo stream stays open and loses nothing;
//! * a peer behind a NAT restarted with a new UDP port is pinged within 2 s
//!   of its restart by a node that knew its old endpoint.

mod common;
mod netlab;

use std::time::{Duration, Instant};

use common::wait_until;
use netlab::{pattern, peer, EchoFeed, Lab, Nat};

#[test]
fn a_relayed_pair_goes_direct_when_the_nat_allows_without_breaking_a_stream() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let ha = lab.host(Nat::Home);
    let hb = lab.host(Nat::Symmetric);
    let a = lab.node(&ha, "a");
    let b = lab.node(&hb, "b");
    let ia = lab.start(&a, &[]);
    let ib = lab.start(&b, &[]);
    let aa = ia["address"].as_str().unwrap().to_string();
    let ab = ib["address"].as_str().unwrap().to_string();

    // 1 MiB through the echo port over ~16 s: long enough to span the change.
    let feed = EchoFeed::start(
        &a,
        &ab,
        pattern(1 << 20, 9),
        16 * 1024,
        Duration::from_millis(250),
    );
    assert!(
        wait_until(Duration::from_secs(10), || peer(&a, &ab)["path"] == "relay"),
        "home x symmetric starts relayed: {}\n{}",
        peer(&a, &ab),
        a.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    lab.set_nat(&hb, Nat::Home);
    let went_direct = wait_until(Duration::from_secs(20), || {
        peer(&a, &ab)["path"] == "direct" && peer(&b, &aa)["path"] == "direct"
    });
    let took = t.elapsed();
    let (sent, got) = feed.finish();
    assert!(
        went_direct,
        "no switch to direct: a sees {} / b sees {}\na log:\n{}\nb log:\n{}",
        peer(&a, &ab),
        peer(&b, &aa),
        a.log(),
        b.log()
    );
    eprintln!("relay -> direct {took:?} after the NAT change");
    assert_eq!(
        got.len(),
        sent.len(),
        "the stream lost bytes\na log:\n{}\nb log:\n{}",
        a.log(),
        b.log()
    );
    assert!(got == sent, "the echoed bytes differ");
    let p = peer(&a, &ab);
    assert!(p["path_changes"].as_u64().unwrap() >= 2, "{p}");
    assert!(
        a.log().contains("(direct frame authenticated)"),
        "{}",
        a.log()
    );
}

#[test]
fn a_restarted_peer_behind_a_nat_is_reachable_within_two_seconds() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let hq = lab.host(Nat::Home);
    let hp = lab.host(Nat::FullCone);
    let q = lab.node(&hq, "q");
    let p = lab.node(&hp, "p");
    lab.start(&q, &[]);
    let ip = lab.start(&p, &[]);
    let pa = ip["address"].as_str().unwrap().to_string();
    let r = q.json(&["ping", &pa, "--control", "--count", "2", "--timeout", "10s"]);
    assert_eq!(r["received"], 2);
    let old = peer(&q, &pa)["endpoint"].clone();

    p.stop();
    lab.start(&p, &[]);
    let t0 = Instant::now();
    let r = q.ctl(&[
        "--json",
        "ping",
        &pa,
        "--control",
        "--count",
        "1",
        "--timeout",
        "5s",
    ]);
    let took = t0.elapsed();
    assert_eq!(r.code, 0, "{r:?}\nq log:\n{}", q.log());
    assert!(took < Duration::from_secs(2), "{took:?}\n{}", q.log());
    let now = peer(&q, &pa)["endpoint"].clone();
    assert_ne!(old, now, "the endpoint moved to the new port");
}
