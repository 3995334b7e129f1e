//! Attack: a peer opens many streams to a public node's echo port, writes
//! megabytes into each and never reads the echo, so every stream's buffers
//! on the victim fill up (issue 10 item 10: no global budget). The victim
//! runs with a 16 MiB `--stream-memory` budget: its streams' memory stays
//! near it, new streams are refused once it is spent (counted), and honest
//! traffic works again once the flood is gone.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{wait_until, Node, Rendezvous};

const BUDGET_MIB: u64 = 16;

struct Flood(Vec<Child>);

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn attack_stream_memory_exhaustion_is_bounded_by_the_budget() {
    let rdv = Rendezvous::start();
    let victim = Node::new("victim");
    victim.start(
        &rdv,
        &[
            "--public",
            "--hostname",
            "victim",
            &format!("--daemon-arg=--stream-memory={BUDGET_MIB}M"),
            "--daemon-arg=--syn-rate-per-source=1000",
            "--daemon-arg=--syn-rate-limit=1000",
        ],
    );
    let attacker = Node::new("attacker");
    attacker.start(&rdv, &["--public", "--hostname", "attacker"]);
    let data = attacker.home.path().join("8m");
    std::fs::write(&data, vec![0x5au8; 8 << 20]).unwrap();

    // 48 streams x 8 MiB offered = 384 MiB, echoes never read (stdout is a
    // pipe nobody drains).
    let mut flood = Flood(Vec::new());
    for _ in 0..48 {
        let c = attacker
            .command()
            .arg("--socket")
            .arg(&attacker.socket)
            .args(["connect", "victim", "7", "--linger", "60s"])
            .env("HOME", attacker.home.path())
            .stdin(std::fs::File::open(&data).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        flood.0.push(c);
    }
    let info = || victim.json(&["info"]);
    let mut peak = 0u64;
    let mut refused = false;
    wait_until(Duration::from_secs(12), || {
        let i = info();
        peak = peak.max(i["stream_memory_peak"].as_u64().unwrap());
        refused = i["refused_memory"].as_u64().unwrap() > 0;
        false
    });
    assert_eq!(info()["stream_memory_budget"], BUDGET_MIB << 20);
    // Pressure starts at half the budget, so only what streams already held
    // then, plus 100 ms of growth, can go past it.
    assert!(
        peak <= (BUDGET_MIB << 20) * 3 / 2,
        "streams held {} MiB with a {BUDGET_MIB} MiB budget",
        peak >> 20
    );
    assert!(
        peak >= (BUDGET_MIB << 20) / 2,
        "the flood never pressed: {peak}"
    );
    eprintln!(
        "peak stream memory {:.1} MiB of {BUDGET_MIB} MiB; refused: {refused}",
        peak as f64 / (1 << 20) as f64
    );
    // A stream opened now is either refused (budget spent, counted) or gets
    // through with small buffers; the victim answers either way.
    let out = attacker.ctl(&[
        "--json",
        "connect",
        "victim",
        "7",
        "--message",
        "still there?",
    ]);
    if out.code != 0 {
        assert_eq!(out.json()["code"], "refused", "{out:?}");
        assert!(info()["refused_memory"].as_u64().unwrap() > 0);
    }
    // Flood gone: memory drains and honest traffic flows at full size.
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(30), || info()["stream_memory"]
            .as_u64()
            .unwrap()
            < (BUDGET_MIB << 20) / 2),
        "memory never drained: {}",
        info()
    );
    let d = attacker.json(&["bench", "victim", "8"]);
    assert_eq!(d["verified"], true, "{d}");
}
