//! The 4 x 4 NAT matrix in the network lab (root only; skips otherwise):
//! for every pair of {none, full cone, home, symmetric}, two daemons behind
//! their own routers connect and move 16 MiB each way byte-exact (the
//! echo bench verifies a SHA-256). Pairs that can be punched end up direct;
//! the rest go through the beacon relay. The grid (path and time to first
//! byte per cell) is printed.
//!
//! Which pairs can be punched: a symmetric NAT gives each destination a new
//! random port, which the far side only learns from a packet arriving from
//! it. If the far side filters by address and port (home or symmetric), that
//! packet is dropped, so neither side ever learns a usable port: those pairs
//! (symmetric x home, symmetric x symmetric) need the relay (or port
//! prediction, which `masquerade random` defeats by design). Every other
//! pair, i.e. every pair with an endpoint-independent filter on one side or
//! endpoint-independent mappings on both, goes direct.

mod common;
mod netlab;

use std::time::{Duration, Instant};

use common::wait_until;
use netlab::{Lab, Nat};

#[derive(Debug, Clone)]
struct Cell {
    a: Nat,
    b: Nat,
    path_a: String,
    path_b: String,
    ttfb_ms: f64,
    bench_s: f64,
}

/// Whether a pair can be hole-punched (see the module docs).
fn punchable(a: Nat, b: Nat) -> bool {
    let one_way = |x: Nat, y: Nat| x == Nat::Symmetric && !y.eif();
    !(one_way(a, b) || one_way(b, a))
}

fn peer_path(node: &common::Node, addr: &str) -> String {
    let v = node.json(&["peers"]);
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == addr)
        .map(|p| p["path"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn run_cell(lab: &Lab, a: Nat, b: Nat) -> Cell {
    let ha = lab.host(a);
    let hb = lab.host(b);
    let na = lab.node(&ha, "a");
    let nb = lab.node(&hb, "b");
    let ia = lab.start(&na, &[]);
    let ib = lab.start(&nb, &[]);
    let aa = ia["address"].as_str().unwrap().to_string();
    let ab = ib["address"].as_str().unwrap().to_string();
    let label = format!("{} x {}", a.name(), b.name());

    // Cold: resolve, punch, key exchange, first answer.
    let ping = na.ctl(&[
        "--json",
        "ping",
        &ab,
        "--control",
        "--count",
        "1",
        "--timeout",
        "30s",
    ]);
    assert_eq!(
        ping.code,
        0,
        "{label}: first ping failed: {ping:?}\na log:\n{}\nb log:\n{}\nrendezvous log:\n{}",
        na.log(),
        nb.log(),
        lab.rendezvous_log()
    );
    let ttfb_ms = ping.json()["data"]["min_us"].as_u64().unwrap() as f64 / 1000.0;

    let want = if punchable(a, b) { "direct" } else { "relay" };
    let settled = wait_until(Duration::from_secs(8), || peer_path(&na, &ab) == want);
    let t = Instant::now();
    let bench = na.ctl(&["--json", "bench", &ab, "16"]);
    let bench_s = t.elapsed().as_secs_f64();
    assert_eq!(
        bench.code,
        0,
        "{label}: 16 MiB bench failed: {bench:?}\na log:\n{}\nb log:\n{}",
        na.log(),
        nb.log()
    );
    assert_eq!(bench.json()["data"]["verified"], true, "{label}");
    let path_a = peer_path(&na, &ab);
    let path_b = peer_path(&nb, &aa);
    assert!(
        settled && path_a == want && path_b == want,
        "{label}: expected {want}, got a:{path_a} b:{path_b}\na log:\n{}\nb log:\n{}",
        na.log(),
        nb.log()
    );
    if std::env::var_os("NAT_LOGS").is_some() {
        eprintln!("== {label}\na log:\n{}\nb log:\n{}", na.log(), nb.log());
    }
    Cell {
        a,
        b,
        path_a,
        path_b,
        ttfb_ms,
        bench_s,
    }
}

#[test]
fn nat_matrix_4x4() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let lab = &lab;
    // NAT_CELLS=symmetric:home,... runs only those cells (debugging).
    let only = std::env::var("NAT_CELLS").unwrap_or_default();
    let wanted = |a: Nat, b: Nat| {
        only.is_empty()
            || only
                .split(',')
                .any(|c| c == format!("{}:{}", a.name(), b.name()))
    };
    let cells: Vec<Cell> = std::thread::scope(|s| {
        let handles: Vec<_> = Nat::ALL
            .iter()
            .flat_map(|&a| Nat::ALL.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| wanted(a, b))
            .map(|(a, b)| {
                // Stagger the starts a little: 32 daemons at once on a small
                // machine make every timing worse for no added coverage.
                std::thread::sleep(Duration::from_millis(150));
                s.spawn(move || run_cell(lab, a, b))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut grid = String::from("\nNAT matrix (row: dialler, column: listener): path, time to first byte, 16 MiB echo bench\n");
    grid.push_str(&format!("{:>10} |", ""));
    for b in Nat::ALL {
        grid.push_str(&format!(" {:^26} |", b.name()));
    }
    grid.push('\n');
    for a in Nat::ALL {
        grid.push_str(&format!("{:>10} |", a.name()));
        for b in Nat::ALL {
            let Some(c) = cells.iter().find(|c| c.a == a && c.b == b) else {
                grid.push_str(&format!(" {:^26} |", "-"));
                continue;
            };
            let both = if c.path_a == c.path_b {
                c.path_a.clone()
            } else {
                format!("{}/{}", c.path_a, c.path_b)
            };
            grid.push_str(&format!(
                " {:>6} {:>8.1}ms {:>6.2}s |",
                both, c.ttfb_ms, c.bench_s
            ));
        }
        grid.push('\n');
    }
    println!("{grid}");
    eprintln!("{grid}");
    // Plugging 48 hosts in must not have moved the rendezvous's link-layer
    // address (it once did, and cells failed with a registry timeout).
    assert_eq!(lab.public_bridge_address(), netlab::BRIDGE_MAC);
}
