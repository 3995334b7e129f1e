//! Segment sizes on real links in the network lab (issue 14 item 4; root
//! only, skips otherwise):
//! * a jumbo-frame path end to end (9000-byte links on both hosts and the
//!   switch ports between them) is probed and carries 8,902-byte segments
//!   (9000 − 20 IP − 8 UDP − 70 PILS), and an echo comes back intact;
//! * a host on a 9000-byte LAN behind a router whose Internet side is 1500
//!   bytes probes, is refused by the router (the probe is sent with DF), and
//!   keeps 1,373-byte segments; streams through it still work.

mod common;
mod netlab;

use std::time::Duration;

use common::wait_until;
use netlab::{pattern, peer, EchoFeed, Host, Lab, Nat};

/// Sets `dev`'s MTU in namespace `ns`.
fn mtu(lab: &Lab, ns: &str, dev: &str, mtu: u32) {
    let out = lab.exec(ns, &["ip", "link", "set", dev, "mtu", &mtu.to_string()]);
    assert_eq!(out.code, 0, "mtu {mtu} on {dev} in {ns}: {out:?}");
}

/// A host with no NAT whose link to the public switch is 9000 bytes on
/// both ends.
fn jumbo_public_host(lab: &Lab) -> Host {
    let h = lab.host(Nat::None);
    mtu(lab, &h.ns, "eth0", 9000);
    mtu(lab, &lab.public, &format!("p{}", h.index), 9000);
    h
}

/// Nodes a on `ha` and b on `hb`, started, a having pinged b once (which
/// sets up the tunnel, and with it the path probe): (a, b, a's address,
/// b's address).
fn pinged_pair(lab: &Lab, ha: &Host, hb: &Host) -> (common::Node, common::Node, String, String) {
    let a = lab.node(ha, "a");
    let b = lab.node(hb, "b");
    let aa = lab.start(&a, &[])["address"].as_str().unwrap().to_string();
    let ab = lab.start(&b, &[])["address"].as_str().unwrap().to_string();
    let r = a.json(&["ping", &ab, "--control", "--count", "1", "--timeout", "10s"]);
    assert_eq!(r["received"], 1, "{r}");
    (a, b, aa, ab)
}

/// Two nodes on jumbo public hosts, each having proven 8,902-byte segments
/// to the other: (host a, host b, a, b, a's address, b's address).
fn jumbo_pair(lab: &Lab) -> (Host, Host, common::Node, common::Node, String, String) {
    let ha = jumbo_public_host(lab);
    let hb = jumbo_public_host(lab);
    let (a, b, aa, ab) = pinged_pair(lab, &ha, &hb);
    let proven = wait_until(Duration::from_secs(10), || {
        peer(&a, &ab)["segment"] == 8902 && peer(&b, &aa)["segment"] == 8902
    });
    assert!(
        proven,
        "a sees {} / b sees {}\na log:\n{}\nb log:\n{}",
        peer(&a, &ab),
        peer(&b, &aa),
        a.log(),
        b.log()
    );
    (ha, hb, a, b, aa, ab)
}

fn echo_intact(from: &common::Node, to: &str, len: usize) {
    let feed = EchoFeed::start(
        from,
        to,
        pattern(len, 3),
        256 * 1024,
        Duration::from_millis(5),
    );
    let (sent, got, errors) = feed.finish_with_errors();
    assert_eq!(got.len(), sent.len(), "echo cut short: {errors}");
    assert!(got == sent, "the echoed bytes differ");
}

#[test]
fn a_jumbo_path_carries_large_segments() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let (_ha, _hb, a, _b, _aa, ab) = jumbo_pair(&lab);
    assert_eq!(peer(&a, &ab)["path"], "direct");
    echo_intact(&a, &ab, 8 << 20);
}

#[test]
fn a_jumbo_lan_behind_a_1500_byte_router_keeps_the_default_segment() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let ha = lab.host(Nat::Home);
    mtu(&lab, &ha.ns, "eth0", 9000);
    mtu(&lab, ha.router.as_deref().unwrap(), "lan0", 9000);
    let hb = lab.host(Nat::None);
    let (a, b, aa, ab) = pinged_pair(&lab, &ha, &hb);
    // a's route to b says 9000, so a probes; the router cannot forward
    // 8,972-byte datagrams with DF and says so, and a gives up.
    let refused = wait_until(Duration::from_secs(10), || {
        a.log().contains(&format!("path to {ab}")) && a.log().contains("keeping 1373")
    });
    assert!(refused, "no refused probe in a's log:\n{}", a.log());
    assert_eq!(peer(&a, &ab)["segment"], 1373, "{}", peer(&a, &ab));
    assert!(!a.log().contains("carries"), "{}", a.log());
    // b's own link is 1500 bytes: it never probes.
    assert_eq!(peer(&b, &aa)["segment"], 1373, "{}", peer(&b, &aa));
    assert_eq!(peer(&a, &ab)["path"], "direct", "{}", peer(&a, &ab));
    echo_intact(&a, &ab, 4 << 20);
    assert_eq!(peer(&a, &ab)["segment"], 1373);
}

/// Direct traffic between `from` and `to` (both ways) dropped in `ns`, or
/// allowed again with `on = false`. The relay (through the rendezvous)
/// stays open.
fn block_direct(lab: &Lab, ns: &str, peer_ip: &str, on: bool) {
    let _ = lab.exec(ns, &["nft", "delete", "table", "inet", "pmtu_block"]);
    if !on {
        return;
    }
    let rules = format!(
        "table inet pmtu_block {{
  chain input {{ type filter hook input priority filter; policy accept; ip saddr {peer_ip} drop; }}
  chain output {{ type filter hook output priority filter; policy accept; ip daddr {peer_ip} drop; }}
}}"
    );
    let path = lab.dir.path().join(format!("block-{ns}.nft"));
    std::fs::write(&path, rules).unwrap();
    let out = lab.exec(ns, &["nft", "-f", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "nft: {out:?}");
}

/// A stream running on a jumbo path whose direct route breaks: the peer
/// falls back to the relay and its segments to the default size (data in
/// flight is cut again), then goes direct again and proves the large size
/// once more; the echo loses nothing across both switches.
#[test]
fn a_stream_survives_segment_size_changes_with_the_path() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let (ha, hb, a, b, _, ab) = jumbo_pair(&lab);
    // 16 MiB over about 13 s.
    let feed = EchoFeed::start(
        &a,
        &ab,
        pattern(16 << 20, 11),
        128 * 1024,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(1));
    block_direct(&lab, &hb.ns, &ha.ip, true);
    let relayed = wait_until(Duration::from_secs(15), || {
        peer(&a, &ab)["path"] == "relay" && peer(&a, &ab)["segment"] == 1373
    });
    assert!(
        relayed,
        "no fall back to the relay: {}\na log:\n{}",
        peer(&a, &ab),
        a.log()
    );
    block_direct(&lab, &hb.ns, &ha.ip, false);
    let direct = wait_until(Duration::from_secs(15), || {
        peer(&a, &ab)["path"] == "direct" && peer(&a, &ab)["segment"] == 8902
    });
    let (sent, got, errors) = feed.finish_with_errors();
    assert!(
        direct,
        "not direct with large segments again: {}\na log:\n{}",
        peer(&a, &ab),
        a.log()
    );
    assert_eq!(
        got.len(),
        sent.len(),
        "echo cut short: {errors}\na log:\n{}\nb log:\n{}",
        a.log(),
        b.log()
    );
    assert!(got == sent, "the echoed bytes differ");
}
