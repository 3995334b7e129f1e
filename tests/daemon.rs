//! End to end: one real rendezvous, two or three real daemons started by
//! `pilotctl daemon start`, each with its own HOME and socket, on loopback.

mod common;

use std::time::Duration;

use common::{wait_until, Node, Rendezvous};

fn addr_of(v: &serde_json::Value) -> String {
    v["address"].as_str().expect("address").to_string()
}

/// Human `ping` output of `n` pings: a line per reply and no loss.
fn assert_all_replied(human: &common::Out, n: usize) {
    assert_eq!(human.code, 0, "{human:?}");
    let lines = human.stdout.matches(" bytes from ").count();
    assert_eq!(lines, n, "{}", human.stdout);
    let summary = format!("{n} sent, {n} received, 0% loss");
    assert!(human.stdout.contains(&summary), "{}", human.stdout);
}

#[test]
fn nodes_get_distinct_addresses_and_find_each_other() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let c = Node::new("gamma");
    let sa = a.start(&rdv, &["--hostname", "alpha", "--public"]);
    let sb = b.start(&rdv, &["--hostname", "beta", "--public"]);
    let sc = c.start(&rdv, &["--hostname", "gamma", "--public"]);
    let (aa, ab, ac) = (addr_of(&sa), addr_of(&sb), addr_of(&sc));
    assert!(aa != ab && ab != ac && aa != ac, "{aa} {ab} {ac}");
    assert_eq!(sb["hostname"], "beta");

    // lookup by hostname, by full address and by bare node id
    let l = a.json(&["lookup", "beta"]);
    assert_eq!(addr_of(&l), ab);
    assert_eq!(l["hostname"], "beta");
    assert_eq!(l["public"], true);
    let node_id = l["node_id"].as_u64().unwrap().to_string();
    assert_eq!(addr_of(&a.json(&["lookup", &ab])), ab);
    assert_eq!(addr_of(&a.json(&["lookup", &node_id])), ab);

    let f = a.json(&["find", "gamma"]);
    assert_eq!(addr_of(&f), ac);

    // ping: round-trip times reported, one line per reply
    let p = a.json(&["ping", "beta", "--count", "3", "--interval", "100ms"]);
    assert_eq!(p["sent"], 3);
    assert_eq!(p["received"], 3);
    assert_eq!(p["address"].as_str().unwrap(), ab);
    assert!(p["replies"][0]["rtt_us"].as_u64().unwrap() > 0);
    let human = a.ctl(&["ping", &ac, "--count", "2", "--interval", "50ms"]);
    assert_all_replied(&human, 2);

    // peers: a has encrypted direct tunnels to b and c; b sees a
    let peers = a.json(&["peers"]);
    let list = peers["peers"].as_array().unwrap();
    for want in [&ab, &ac] {
        let p = list
            .iter()
            .find(|p| &addr_of(p) == want)
            .unwrap_or_else(|| panic!("{want} not in {peers}"));
        assert_eq!(p["encrypted"], true);
        assert_eq!(p["path"], "direct");
    }
    let bp = b.json(&["peers"]);
    assert!(
        bp["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| addr_of(p) == aa),
        "{bp}"
    );
    let human = a.ctl(&["peers"]);
    assert!(human.stdout.starts_with("ADDRESS"), "{}", human.stdout);

    // info shows counters, nothing dropped on a clean run
    let i = a.json(&["info"]);
    assert_eq!(addr_of(&i), aa);
    assert_eq!(i["registered"], true);
    assert_eq!(i["stats"]["dropped_spoofed"], 0);
    assert_eq!(i["stats"]["dropped_crypto"], 0);
}

#[test]
fn addresses_and_hostnames_survive_restarts() {
    let mut rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let first = addr_of(&a.start(&rdv, &["--hostname", "alpha", "--public"]));
    b.start(&rdv, &["--public"]);

    // daemon restart (clean stop): same identity, same address and hostname
    let stop = a.json(&["daemon", "stop"]);
    assert_eq!(addr_of(&stop), first);
    let again = a.start(&rdv, &[]);
    assert_eq!(addr_of(&again), first);
    assert_eq!(again["hostname"], "alpha");

    // crash of the daemon (kill -9): stale pid and socket do not block a start
    a.kill9();
    assert!(
        a.socket.exists(),
        "the crashed daemon's socket file should be left behind"
    );
    let again = a.start(&rdv, &[]);
    assert_eq!(addr_of(&again), first);

    // rendezvous crash and restart on the same store
    rdv.restart();
    assert!(wait_until(Duration::from_secs(15), || {
        let o = b.ctl(&["--json", "find", "alpha"]);
        o.code == 0 && addr_of(&o.data()) == first
    }));
    // and a daemon restarted against the restarted rendezvous keeps its address
    a.stop();
    assert_eq!(addr_of(&a.start(&rdv, &[])), first);
    let c = Node::new("gamma");
    let third = addr_of(&c.start(&rdv, &["--public"]));
    assert_ne!(third, first);
}

#[test]
fn tunnels_survive_a_rendezvous_outage_and_nodes_reregister() {
    let mut rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(&rdv, &["--hostname", "alpha", "--public"]);
    let ab = addr_of(&b.start(&rdv, &["--hostname", "beta", "--public"]));
    assert_eq!(a.json(&["ping", &ab, "--count", "1"])["received"], 1);

    rdv.kill();
    // the tunnel carries on without the rendezvous
    let p = a.json(&["ping", &ab, "--count", "3", "--interval", "100ms"]);
    assert_eq!(p["received"], 3);
    // the daemon notices (1 s heartbeats, 3 failures)
    assert!(wait_until(Duration::from_secs(10), || a.json(&["info"])
        ["registered"]
        == false));
    // registry-backed commands say the registry is unreachable
    let o = a.ctl(&["--json", "find", "beta"]);
    assert_eq!(o.code, 1);
    assert_eq!(o.json()["code"], "registry_unavailable", "{o:?}");

    rdv.restart();
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || n.json(&["info"])["registered"]
                == true),
            "{} did not re-register:\n{}",
            n.name,
            n.log()
        );
    }
    assert_eq!(addr_of(&a.json(&["find", "beta"])), ab);
    assert_eq!(a.json(&["ping", "beta", "--count", "1"])["received"], 1);
}

const ALL_COMMANDS: &[&[&str]] = &[
    &["info"],
    &["peers"],
    &["lookup", "1"],
    &["find", "somebody"],
    &["set-hostname", "somebody"],
    &["clear-hostname"],
    &["ping", "1", "--count", "1"],
    &["daemon", "stop"],
    &["daemon", "status"],
];

#[test]
fn every_command_without_a_daemon_says_so() {
    let n = Node::new("idle");
    for cmd in ALL_COMMANDS {
        let o = n.ctl(cmd);
        assert_eq!(o.code, 1, "{cmd:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{cmd:?}: {o:?}");
        assert_eq!(
            o.stderr.lines().count(),
            1,
            "{cmd:?}: one line expected: {o:?}"
        );
        assert!(
            o.stderr.starts_with("error: no daemon is running on ")
                && o.stderr.contains("pilotctl daemon start"),
            "{cmd:?}: {o:?}"
        );
        let mut j = vec!["--json"];
        j.extend_from_slice(cmd);
        let o = n.ctl(&j);
        assert_eq!(o.code, 1, "{cmd:?}: {o:?}");
        let v = o.json();
        assert_eq!(v["status"], "error");
        assert_eq!(v["code"], "daemon_not_running", "{cmd:?}: {v}");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("no daemon is running"));
    }
}

#[test]
fn malformed_addresses_and_unknown_names_get_clear_errors() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    a.start(&rdv, &["--public"]);
    // malformed: network mismatch, bad characters, trailing port
    for bad in [
        "1:0000.0000.0001",
        "0:0000.0000.00G1",
        "not_a_host!",
        "0:0000.0000.0001:80",
    ] {
        for cmd in [&["lookup", bad][..], &["ping", bad, "--count", "1"][..]] {
            let o = a.ctl(cmd);
            assert_eq!(o.code, 1, "{cmd:?}: {o:?}");
            assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
            assert!(
                o.stderr.contains("N:XXXX.YYYY.YYYY"),
                "expected form missing: {o:?}"
            );
            let mut j = vec!["--json"];
            j.extend_from_slice(cmd);
            let o = a.ctl(&j);
            assert_eq!(o.json()["code"], "invalid_address", "{o:?}");
        }
    }
    // well-formed but unknown
    for cmd in [
        &["find", "nosuchhost"][..],
        &["lookup", "nosuchhost"][..],
        &["lookup", "4000000"][..],
    ] {
        let o = a.ctl(cmd);
        assert_eq!(o.code, 1, "{cmd:?}: {o:?}");
        assert!(o.stderr.contains("not found"), "{o:?}");
        let mut j = vec!["--json"];
        j.extend_from_slice(cmd);
        assert_eq!(a.ctl(&j).json()["code"], "not_found", "{cmd:?}");
    }
    // an invalid hostname for set-hostname
    let o = a.ctl(&["--json", "set-hostname", "Bad_Name"]);
    assert_eq!(o.code, 1);
    assert_eq!(o.json()["code"], "invalid_address");
    // clap usage errors are one JSON line too
    let o = a.ctl(&["--json", "ping"]);
    assert_eq!(o.code, 2);
    assert_eq!(o.json()["code"], "invalid_argument");
}

#[test]
fn hostnames_can_be_set_cleared_and_are_exclusive() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let aa = addr_of(&a.start(&rdv, &["--public"]));
    b.start(&rdv, &["--public"]);
    let s = a.json(&["set-hostname", "shared-name"]);
    assert_eq!(s["hostname"], "shared-name");
    assert_eq!(addr_of(&b.json(&["find", "shared-name"])), aa);
    // b cannot take a's name
    let o = b.ctl(&["--json", "set-hostname", "shared-name"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.json()["message"]
            .as_str()
            .unwrap()
            .contains("already in use"),
        "{o:?}"
    );
    // clearing frees it
    a.json(&["clear-hostname"]);
    assert_eq!(
        b.ctl(&["--json", "find", "shared-name"]).json()["code"],
        "not_found"
    );
    assert_eq!(
        b.json(&["set-hostname", "shared-name"])["hostname"],
        "shared-name"
    );
}

#[test]
fn start_without_a_rendezvous_names_the_address_and_the_fix() {
    let a = Node::new("alpha");
    let port = common::free_tcp_port();
    let registry = format!("127.0.0.1:{port}");
    let o = a.ctl(&[
        "--json",
        "daemon",
        "start",
        "--registry",
        &registry,
        "--wait",
        "20s",
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    let v = o.json();
    assert_eq!(v["code"], "start_failed", "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&registry) && msg.contains("pilot-rendezvous"),
        "{msg}"
    );
    // and nothing is left behind that blocks the next start
    assert!(!a.socket.exists());
    let o = a.ctl(&["daemon", "start", "--registry", &registry]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("error: cannot reach the registry at"),
        "{o:?}"
    );
}

#[test]
fn a_second_start_is_refused_while_running() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let addr = addr_of(&a.start(&rdv, &[]));
    let o = a.ctl(&["--json", "daemon", "start"]);
    assert_eq!(o.code, 1);
    let v = o.json();
    assert_eq!(v["code"], "already_running");
    assert!(v["message"].as_str().unwrap().contains(&addr));
    let st = a.json(&["daemon", "status"]);
    assert_eq!(addr_of(&st), addr);
    // the socket is owner-only
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// `ping --control --count N` is one series that the daemon paces and
/// answers ping by ping (issue 14: latency): every reply arrives, the
/// interval is kept, a lost ping is reported and the series goes on, and
/// a client that goes away mid-series leaves the daemon serving.
#[test]
fn control_ping_series_is_paced_by_the_daemon_and_reports_losses() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(&rdv, &["--hostname", "alpha", "--public"]);
    let ab = addr_of(&b.start(&rdv, &["--hostname", "beta", "--public"]));

    // back to back: 200 replies, in order, all from b
    let p = a.json(&[
        "ping",
        &ab,
        "--control",
        "--count",
        "200",
        "--interval",
        "0",
    ]);
    assert_eq!(
        (p["sent"].as_u64(), p["received"].as_u64()),
        (Some(200), Some(200))
    );
    let replies = p["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 200);
    assert!(replies
        .iter()
        .all(|r| r["address"] == ab.as_str() && r["bytes"] == 8));

    // paced: 4 pings 150 ms apart take at least 450 ms; live lines
    let t = std::time::Instant::now();
    let human = a.ctl(&[
        "ping",
        &ab,
        "--control",
        "--count",
        "4",
        "--interval",
        "150ms",
    ]);
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert_all_replied(&human, 4);

    // a client that leaves mid-series: the daemon stops that series and
    // goes on serving others
    let mut child = a
        .command()
        .arg("--socket")
        .arg(&a.socket)
        .args([
            "ping",
            &ab,
            "--control",
            "--count",
            "1000",
            "--interval",
            "50ms",
        ])
        .env("HOME", a.home.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    // the probe window of the first contact (2 s) is over by then
    std::thread::sleep(Duration::from_millis(2500));
    let sent = || {
        a.json(&["info"])["stats"]["datagrams_out"]
            .as_u64()
            .unwrap()
    };
    let before = sent();
    std::thread::sleep(Duration::from_secs(1));
    let after = sent();
    // 20 pings would have left in 1 s; beacon keepalives (one a second
    // with --heartbeat 1s) are rarer
    assert!(after - before <= 3, "still pinging: {before} -> {after}");
    // and a new series is served
    let p = a.json(&["ping", &ab, "--control", "--count", "2", "--interval", "0"]);
    assert_eq!(p["received"], 2);

    // b goes away mid-series: the lost pings time out one by one, the
    // series carries on to its count and reports the loss
    let child = a
        .command()
        .arg("--socket")
        .arg(&a.socket)
        .args(["--json", "ping", &ab, "--control", "--count", "10"])
        .args(["--interval", "100ms", "--timeout", "300ms"])
        .env("HOME", a.home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(450));
    b.kill9();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = v["data"]["received"].as_u64().unwrap();
    assert_eq!(v["data"]["sent"], 10, "{v}");
    assert!((1..10).contains(&got), "received {got} of 10: {v}");
}

/// Two idle peers send each other nothing once the tunnel is up: a pong
/// or a bare acknowledgement does not make its sender wait for an answer
/// (it used to: each side found the other "silent" 800 ms after the last
/// pong, re-resolved and probed for 2 s, for ever; 13 datagrams a second).
#[test]
fn idle_peers_stay_quiet() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(&rdv, &["--hostname", "alpha", "--public"]);
    let ab = addr_of(&b.start(&rdv, &["--hostname", "beta", "--public"]));
    let p = a.json(&["ping", &ab, "--control", "--count", "3", "--interval", "0"]);
    assert_eq!(p["received"], 3);
    // a stream too: its last segments are acknowledgements
    let e = a.json(&["ping", &ab, "--count", "2", "--interval", "0"]);
    assert_eq!(e["received"], 2);
    // the probe window after the first contact lasts 2 s
    std::thread::sleep(Duration::from_millis(3500));
    let out = |n: &Node| {
        n.json(&["info"])["stats"]["datagrams_out"]
            .as_u64()
            .unwrap()
    };
    let before = (out(&a), out(&b));
    std::thread::sleep(Duration::from_secs(4));
    let after = (out(&a), out(&b));
    // one beacon keepalive a second (--heartbeat 1s); the bug sent ~50
    assert!(
        after.0 - before.0 <= 6 && after.1 - before.1 <= 6,
        "idle peers kept sending: {before:?} -> {after:?}\n{}",
        a.log()
    );
}
