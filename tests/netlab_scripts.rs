//! `scripts/netlab/up.sh` and `down.sh` (root only; skips with the reason
//! otherwise): bring a lab up by hand, ping across it (ICMP to the far
//! router, and `pilotctl ping` between the two daemons), check that its
//! routers carry the same nftables rules as the Rust harness's
//! (tests/netlab/mod.rs) for the same NAT type, take it down and check that
//! nothing of it remains (namespaces, processes, state).

mod common;
mod netlab;

use std::path::Path;
use std::process::{Command, Stdio};

use netlab::{Lab, Nat};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .env("PILOT_BIN_DIR", bin_dir())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bin_dir() -> String {
    Path::new(common::PILOTCTL)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn namespaces(prefix: &str) -> Vec<String> {
    let (_, list, _) = sh(&["ip", "netns", "list"]);
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// `nft list ruleset` in `ns` with the router's public address blanked (it
/// differs between the two labs' address plans only by index).
fn rules(ns: &str, public_ip: &str) -> String {
    let (code, out, err) = sh(&["ip", "netns", "exec", ns, "nft", "-t", "list", "ruleset"]);
    assert_eq!(code, 0, "nft list ruleset in {ns}: {err}");
    out.replace(public_ip, "PUBLIC")
}

/// Brings a lab up with `args`, returns (prefix, stdout).
fn up(args: &[&str]) -> (String, String) {
    let script = format!("{ROOT}/scripts/netlab/up.sh");
    let mut cmd = vec![script.as_str()];
    cmd.extend_from_slice(args);
    let (code, out, err) = sh(&cmd);
    assert_eq!(code, 0, "up.sh {args:?} failed:\n{out}\n{err}");
    let prefix = out
        .lines()
        .find_map(|l| l.strip_prefix("PREFIX="))
        .unwrap_or_else(|| panic!("no PREFIX= line in up.sh's output:\n{out}"))
        .to_string();
    (prefix, out)
}

fn down_and_check(prefix: &str) {
    let rdv_pid = std::fs::read_to_string(format!("/run/pilot-netlab/{prefix}/rendezvous.pid"))
        .unwrap_or_default();
    let mut pids: Vec<String> = rdv_pid.split_whitespace().map(str::to_string).collect();
    for ns in namespaces(prefix) {
        let (_, p, _) = sh(&["ip", "netns", "pids", &ns]);
        pids.extend(p.split_whitespace().map(str::to_string));
    }
    assert!(!pids.is_empty(), "the lab {prefix} runs no processes");
    let (code, out, err) = sh(&[&format!("{ROOT}/scripts/netlab/down.sh"), prefix]);
    assert_eq!(code, 0, "down.sh failed:\n{out}\n{err}");
    assert_eq!(namespaces(prefix), Vec::<String>::new(), "namespaces left");
    assert!(
        !Path::new(&format!("/run/pilot-netlab/{prefix}")).exists(),
        "state left"
    );
    // Killed processes may linger as zombies of nobody for a moment.
    let alive = |pid: &String| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
    };
    assert!(
        common::wait_until(std::time::Duration::from_secs(3), || !pids
            .iter()
            .any(alive)),
        "processes of the lab still run: {pids:?}"
    );
    let (_, links, _) = sh(&["ip", "-o", "link"]);
    assert!(
        !links.contains(prefix),
        "links named after the lab in the root namespace"
    );
}

#[test]
fn up_ping_down() {
    // Lab::new checks root and the tools, printing why it skips.
    let Some(lab) = Lab::new() else {
        return;
    };
    // The harness's routers, for comparing rule sets.
    let reference: Vec<(Nat, netlab::Host)> = [Nat::FullCone, Nat::Home, Nat::Symmetric]
        .into_iter()
        .map(|n| (n, lab.host(n)))
        .collect();
    let harness_rules = |nat: Nat| {
        let (_, h) = reference.iter().find(|(n, _)| *n == nat).unwrap();
        rules(h.router.as_deref().unwrap(), &h.public_ip)
    };

    // 1. symmetric x full cone, with daemons: ICMP and pilotctl across.
    let (prefix, out) = up(&["--nat-a", "symmetric", "--nat-b", "full-cone", "--daemons"]);
    println!("{out}");
    let guard = Cleanup(prefix.clone());
    assert_eq!(namespaces(&prefix).len(), 5, "pub, h0, r0, h1, r1");
    assert_eq!(
        rules(&format!("{prefix}-r0"), "198.51.100.10"),
        harness_rules(Nat::Symmetric)
    );
    assert_eq!(
        rules(&format!("{prefix}-r1"), "198.51.100.11"),
        harness_rules(Nat::FullCone)
    );
    let h0 = format!("{prefix}-h0");
    let (code, ping, err) = sh(&[
        "ip",
        "netns",
        "exec",
        &h0,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "198.51.100.11",
    ]);
    assert_eq!(code, 0, "ICMP across the lab:\n{ping}\n{err}");
    let addr = |n: &str| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("/run/pilot-netlab/{prefix}/{n}/start.json")).unwrap(),
        )
        .unwrap();
        v["data"]["address"].as_str().unwrap().to_string()
    };
    let b = addr("b");
    let ctl_a = format!("/run/pilot-netlab/{prefix}/a/pilotctl");
    let (code, ping, err) = sh(&[
        &ctl_a,
        "--json",
        "ping",
        &b,
        "--control",
        "--count",
        "1",
        "--timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "pilotctl ping across the lab:\n{ping}\n{err}");
    println!("pilotctl ping a -> b: {ping}");
    std::mem::forget(guard);
    down_and_check(&prefix);

    // 2. home x none, no daemons: the remaining NAT type's rules.
    let (prefix, _) = up(&["--nat-a", "home", "--nat-b", "none"]);
    let guard = Cleanup(prefix.clone());
    assert_eq!(namespaces(&prefix).len(), 4, "pub, h0, r0, h1");
    assert_eq!(
        rules(&format!("{prefix}-r0"), "198.51.100.10"),
        harness_rules(Nat::Home)
    );
    let (code, ping, err) = sh(&[
        "ip",
        "netns",
        "exec",
        &format!("{prefix}-h0"),
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "198.51.100.11",
    ]);
    assert_eq!(code, 0, "ICMP across the lab:\n{ping}\n{err}");
    std::mem::forget(guard);
    down_and_check(&prefix);
}

/// Removes a lab whose checks failed half-way.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sh(&[&format!("{ROOT}/scripts/netlab/down.sh"), &self.0]);
    }
}
