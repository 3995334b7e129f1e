//! Faults in the network lab (root only; skips otherwise):
//! * the rendezvous restarts during a transfer: the established tunnel
//!   carries on and the transfer completes;
//! * a host's router is replaced so its public address changes: the host
//!   re-discovers its address, re-registers, and the tunnel recovers within
//!   30 s while a stream stays open;
//! * netem loss 5%, delay 40 ms with 10 ms jitter, reordering 5% on both
//!   directions of a link: 64 MiB arrive byte-exact.

mod common;
mod netlab;

use std::time::{Duration, Instant};

use common::wait_until;
use netlab::{pattern, peer, EchoFeed, Lab, Nat};

#[test]
fn a_rendezvous_restart_does_not_break_an_established_tunnel() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let ha = lab.host(Nat::Home);
    let hb = lab.host(Nat::FullCone);
    let a = lab.node(&ha, "a");
    let b = lab.node(&hb, "b");
    lab.start(&a, &[]);
    let ib = lab.start(&b, &[]);
    let ab = ib["address"].as_str().unwrap().to_string();
    let r = a.json(&["ping", &ab, "--control", "--count", "1", "--timeout", "10s"]);
    assert_eq!(r["received"], 1);

    // 2 MiB over ~6 s through the echo port; the rendezvous is down for 2 s
    // in the middle.
    let feed = EchoFeed::start(
        &a,
        &ab,
        pattern(2 << 20, 3),
        64 * 1024,
        Duration::from_millis(190),
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.kill_rendezvous();
    std::thread::sleep(Duration::from_secs(2));
    lab.start_rendezvous();
    let (sent, got) = feed.finish();
    assert_eq!(
        got.len(),
        sent.len(),
        "transfer incomplete\na log:\n{}\nb log:\n{}\nrendezvous:\n{}",
        a.log(),
        b.log(),
        lab.rendezvous_log()
    );
    assert!(got == sent, "echoed bytes differ");
    assert_eq!(peer(&a, &ab)["path"], "direct");
    // And the nodes re-register with the new rendezvous.
    assert!(
        wait_until(Duration::from_secs(15), || {
            a.json(&["info"])["registered"] == true && a.ctl(&["lookup", &ab]).code == 0
        }),
        "{}",
        a.log()
    );
}

#[test]
fn a_replaced_router_changes_the_public_address_and_the_tunnel_recovers() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let mut ha = lab.host(Nat::Home);
    let hb = lab.host(Nat::Home);
    let a = lab.node(&ha, "a");
    let b = lab.node(&hb, "b");
    let ia = lab.start(&a, &["--log-level", "pilot=debug"]);
    let ib = lab.start(&b, &["--log-level", "pilot=debug"]);
    let aa = ia["address"].as_str().unwrap().to_string();
    let ab = ib["address"].as_str().unwrap().to_string();
    let r = a.ctl(&[
        "--json",
        "ping",
        &ab,
        "--control",
        "--count",
        "1",
        "--timeout",
        "10s",
    ]);
    assert_eq!(r.code, 0, "{r:?}\na log:\n{}\nb log:\n{}", a.log(), b.log());
    assert!(wait_until(Duration::from_secs(5), || peer(&b, &aa)["path"] == "direct"));
    let old_ip = ha.public_ip.clone();

    let feed = EchoFeed::start(
        &a,
        &ab,
        pattern(1 << 20, 5),
        32 * 1024,
        Duration::from_millis(200),
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    lab.replace_router(&mut ha);
    assert_ne!(old_ip, ha.public_ip);
    let new_ip = ha.public_ip.clone();
    let recovered = wait_until(Duration::from_secs(30), || {
        let e = peer(&b, &aa);
        e["path"] == "direct"
            && e["endpoint"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{new_ip}:")))
            && a.ctl(&["ping", &ab, "--control", "--count", "1", "--timeout", "1s"])
                .code
                == 0
    });
    let took = t.elapsed();
    assert!(
        recovered,
        "no recovery in 30 s: b sees a at {}\na log:\n{}\nb log:\n{}",
        peer(&b, &aa),
        a.log(),
        b.log()
    );
    eprintln!("tunnel recovered {took:?} after the router change");
    let (sent, got, errors) = feed.finish_with_errors();
    assert_eq!(
        got.len(),
        sent.len(),
        "stream lost bytes; pilotctl connect said: {errors}\na log:\n{}\nb log:\n{}",
        a.log(),
        b.log()
    );
    assert!(got == sent);
    assert!(
        a.log().contains("our public address changed"),
        "{}",
        a.log()
    );
}

#[test]
fn sixty_four_mib_cross_a_lossy_reordering_link_byte_exact() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let ha = lab.host(Nat::Home);
    let hb = lab.host(Nat::FullCone);
    let a = lab.node(&ha, "a");
    let b = lab.node(&hb, "b");
    lab.start(&a, &[]);
    let ib = lab.start(&b, &[]);
    let ab = ib["address"].as_str().unwrap().to_string();
    let applied = lab.impair(&ha, "delay 40ms 10ms loss 5% reorder 5%", 5);
    eprintln!("impairment: {applied}");
    let r = a.json(&["ping", &ab, "--control", "--count", "1", "--timeout", "20s"]);
    assert_eq!(r["received"], 1);
    let t = Instant::now();
    // bench: 32 MiB out and 32 MiB echoed back over the lossy link (64 MiB
    // crossing it), SHA-256 verified by pilotctl.
    let out = a.ctl(&["--json", "bench", &ab, "32"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", a.log());
    let d = out.json()["data"].clone();
    assert_eq!(d["verified"], true);
    eprintln!(
        "64 MiB over {applied}: {:.1} s ({:.2} MB/s each way)",
        t.elapsed().as_secs_f64(),
        d["mb_per_s"].as_f64().unwrap_or(0.0)
    );
}
