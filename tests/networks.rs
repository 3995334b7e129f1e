//! Networks and discovery end to end (issue 12): a real rendezvous, four
//! real daemons (three private, one public), pilotctl as a user runs it.

mod common;

use std::io::{BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Node, Rendezvous};
use serde_json::Value;

fn id_of(n: &Node) -> u64 {
    n.json(&["info"])["node_id"].as_u64().unwrap()
}

/// Node ids in a `{nodes: [...]}` answer, sorted.
fn ids(v: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {v}"))
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// Whether `n`'s trust list shows `peer` admitted through a network.
fn admits_by_network(n: &Node, peer: u64) -> bool {
    n.json(&["trust"])["trusted"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["node_id"].as_u64() == Some(peer) && t["via"] == "network")
}

/// Time until `f` holds, polling fast; panics after 10 s.
fn time_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), &mut f),
        "{what} never happened"
    );
    t.elapsed()
}

/// A failing pilotctl `--json` run: (code, message).
fn fails(n: &Node, args: &[&str]) -> (String, String) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = n.ctl(&a);
    assert_ne!(out.code, 0, "{args:?} should fail: {out:?}");
    let j = out.json();
    assert!(j["hint"].is_string(), "every error has a hint: {j}");
    let msg = j["message"].as_str().unwrap().to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    (j["code"].as_str().unwrap().to_string(), msg)
}

/// `pilotctl recv PORT` in the background: one datagram or a timeout.
/// A `pilotctl recv` of one datagram on `port`, returned once it is
/// registered with the daemon (its "waiting for datagrams" line): a fixed
/// sleep before sending was not always enough on a loaded machine, and a
/// datagram with no receiver yet is dropped, as it should be.
fn recv(n: &Node, port: u16) -> (Child, BufReader<std::process::ChildStderr>) {
    common::spawn_ready(
        n.command()
            .arg("--socket")
            .arg(&n.socket)
            .args(["recv", &port.to_string(), "--count", "1", "--timeout", "5s"])
            .env("HOME", n.home.path())
            .env_remove("PILOT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        "waiting for datagrams",
    )
}

/// What a `recv` printed: its output, then (for a failure message) its
/// errors after a `stderr:` line.
fn received((c, mut err): (Child, BufReader<std::process::ChildStderr>)) -> String {
    let mut errors = String::new();
    let _ = err.read_to_string(&mut errors);
    let out = c.wait_with_output().unwrap();
    format!("{}\nstderr: {errors}", String::from_utf8_lossy(&out.stdout))
}

#[test]
fn networks_membership_discovery_streams_broadcast_and_restart() {
    let mut rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let c = Node::new("gamma");
    let d = Node::new("delta");
    a.start(&rdv, &["--hostname", "alpha"]);
    b.start(&rdv, &["--hostname", "beta"]);
    c.start(&rdv, &["--hostname", "gamma"]);
    d.start(&rdv, &["--hostname", "delta", "--public"]);
    let (ia, ib, ic, id) = (id_of(&a), id_of(&b), id_of(&c), id_of(&d));

    // Two networks: open "research", invite-only "trading", both owned by alpha.
    let research = a.json(&["network", "create", "research"]);
    assert_eq!(research["join_rule"], "open");
    let rid = research["id"].as_u64().unwrap().to_string();
    let trading = a.json(&["network", "create", "trading", "--join-rule", "invite"]);
    assert_eq!(trading["join_rule"], "invite");
    let tid = trading["id"].as_u64().unwrap().to_string();

    // Before joining, beta cannot reach private alpha.
    let out = b.ctl(&["--json", "connect", &ia.to_string(), "7", "--message", "hi"]);
    assert_eq!(out.json()["code"], "not_trusted", "{out:?}");

    // Beta joins: alpha's daemon admits it in under 2 s.
    let joined = b.json(&["network", "join", "research"]);
    assert_eq!(joined["action"], "joined");
    let t = time_until("alpha admits beta", || admits_by_network(&a, ib));
    eprintln!("join reached alpha's gate in {t:?}");
    assert!(t < Duration::from_secs(2), "join took {t:?} to reach alpha");
    time_until("beta admits alpha", || admits_by_network(&b, ia));

    // Two private members stream to each other with no handshake.
    let out = b.ctl(&["connect", &ia.to_string(), "7", "--message", "hello-member"]);
    assert_eq!(out.code, 0, "{out:?}\nalpha log:\n{}", a.log());
    assert!(out.stdout.contains("hello-member"), "{out:?}");
    assert!(a.json(&["pending"])["pending"]
        .as_array()
        .unwrap()
        .is_empty());
    // Hostnames of fellow members resolve.
    assert_eq!(b.json(&["find", "alpha"])["node_id"].as_u64(), Some(ia));

    // Tags and discovery.
    a.json(&["set-tags", "citations", "agent"]);
    b.json(&["set-tags", "citations"]);
    c.json(&["set-tags", "citations"]);
    d.json(&["set-tags", "citations", "agent"]);
    // A stranger (gamma) sees the public node and itself, never private alpha/beta.
    assert_eq!(
        ids(&c.json(&["find", "--tag", "citations"])),
        sorted(vec![ic, id])
    );
    // A member (beta) sees its fellow member alpha, not private gamma.
    assert_eq!(
        ids(&b.json(&["find", "--tag", "citations"])),
        sorted(vec![ia, ib, id])
    );
    assert_eq!(
        ids(&b.json(&["find", "--tag", "citations", "--tag", "agent"])),
        sorted(vec![ia, id])
    );
    assert_eq!(
        ids(&b.json(&["find", "--tag", "citations", "--network", "research"])),
        sorted(vec![ia, ib])
    );
    let found = b.json(&["find", "--tag", "agent"]);
    let alpha = found["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"].as_u64() == Some(ia))
        .unwrap();
    assert_eq!(alpha["online"], true);
    assert_eq!(alpha["hostname"], "alpha");
    assert!(alpha["address"].as_str().unwrap().starts_with("0:"));
    assert!(alpha.get("real_addr").is_none(), "private endpoint leaked");
    assert_eq!(ids(&b.json(&["peers", "--search", "alp"])), vec![ia]);
    assert!(ids(&c.json(&["peers", "--search", "alp"])).is_empty());
    assert!(ids(&c.json(&["find", "--tag", "nobody-has-this"])).is_empty());

    // Broadcast reaches every member and no one else.
    d.json(&["network", "join", &rid]);
    time_until("alpha sees delta join", || {
        a.json(&["trust"])["trusted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["node_id"].as_u64() == Some(id))
    });
    let (rb, rc, rd) = (recv(&b, 1000), recv(&c, 1000), recv(&d, 1000));
    let sent = a.json(&["broadcast", "research", "--data", "to-all-members"]);
    assert_eq!(sent["sent"].as_array().unwrap().len(), 2, "{sent}");
    let (gb, gc, gd) = (received(rb), received(rc), received(rd));
    assert!(gb.contains("to-all-members"), "beta got: {gb}");
    assert!(
        gd.contains("to-all-members"),
        "delta got: {gd}\nalpha log:\n{}\ndelta log:\n{}\nalpha: {}\ndelta: {}",
        a.log(),
        d.log(),
        a.json(&["info"]),
        d.json(&["info"])
    );
    assert!(
        !gc.contains("to-all-members"),
        "gamma (not a member) got: {gc}"
    );
    // The broadcast address of the network does the same (spec §1.5).
    let rnum: u16 = rid.parse().unwrap();
    let bcast = format!("{rnum}:{rnum:04X}.FFFF.FFFF");
    let sent = a.json(&["send", &bcast, "1000", "--data", "via-address"]);
    assert_eq!(sent["sent"].as_array().unwrap().len(), 2, "{sent}");
    let (code, msg) = fails(&c, &["broadcast", "research", "--data", "x"]);
    assert_eq!(code, "refused");
    assert!(msg.contains("not a member"), "{msg}");
    let (_, msg) = fails(&a, &["broadcast", "0", "--data", "x"]);
    assert!(msg.contains("network 0"), "{msg}");

    // Invite-only: refused without an invitation, joined with one.
    let (_, msg) = fails(&c, &["network", "join", "trading"]);
    assert!(msg.contains("invite-only"), "{msg}");
    // gamma is private: alpha invites it by node id (its hostname is hidden).
    a.json(&["network", "invite", "trading", &ic.to_string()]);
    let inv = c.json(&["network", "invites"]);
    assert_eq!(inv["invites"][0]["name"], "trading", "{inv}");
    c.json(&["network", "accept", "trading"]);
    time_until("alpha admits gamma", || admits_by_network(&a, ic));
    let out = c.ctl(&["connect", "alpha", "7", "--message", "hi-trading"]);
    assert!(out.stdout.contains("hi-trading"), "{out:?}");
    // Only the owner deletes; the owner removes members, at once.
    let (_, msg) = fails(&c, &["network", "delete", &tid]);
    assert!(msg.contains("only its owner"), "{msg}");
    let members = a.json(&["network", "members", "trading"]);
    assert_eq!(ids(&members), sorted(vec![ia, ic]));
    a.json(&["network", "remove", "trading", &ic.to_string()]);
    let t = time_until("alpha drops gamma", || !admits_by_network(&a, ic));
    eprintln!("removal reached alpha's gate in {t:?}");
    assert!(t < Duration::from_secs(2), "removal took {t:?}");
    let out = c.ctl(&["--json", "connect", &ia.to_string(), "7", "--message", "x"]);
    assert_eq!(out.json()["code"], "not_trusted", "{out:?}");
    // ... and alpha's private hostname is hidden from it again.
    assert_eq!(fails(&c, &["find", "alpha"]).0, "not_found");

    // Everything survives a restart of the rendezvous.
    rdv.restart();
    let list = b.json(&["network", "list"]);
    let names: Vec<&str> = list["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["research", "trading"], "{list}");
    assert_eq!(
        ids(&b.json(&["network", "members", "research"])),
        sorted(vec![ia, ib, id])
    );
    assert_eq!(
        ids(&b.json(&["find", "--tag", "citations"])),
        sorted(vec![ia, ib, id])
    );
    assert_eq!(
        ids(&c.json(&["find", "--tag", "citations"])),
        sorted(vec![ic, id])
    );
    // Membership changes still reach daemons at once after the restart.
    b.json(&["network", "leave", "research"]);
    let t = time_until("alpha drops beta", || !admits_by_network(&a, ib));
    eprintln!("leave (after the restart) reached alpha's gate in {t:?}");
    assert!(t < Duration::from_secs(2), "leave after restart took {t:?}");
    let out = b.ctl(&["--json", "connect", &ia.to_string(), "7", "--message", "x"]);
    assert_eq!(out.json()["code"], "not_trusted", "{out:?}");
    a.json(&["network", "delete", "research"]);
    assert!(fails(&b, &["network", "members", &rid])
        .1
        .contains("not found"));
}

#[test]
fn hostile_input_gets_clear_errors() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(&rdv, &["--hostname", "alpha"]);
    b.start(&rdv, &["--hostname", "beta"]);
    a.json(&["network", "create", "lab"]);

    // Unknown network ids and names.
    for args in [
        vec!["network", "join", "999"],
        vec!["network", "members", "999"],
        vec!["network", "delete", "999"],
        vec!["network", "join", "no-such-net"],
        vec!["find", "--tag", "x", "--network", "999"],
    ] {
        let (code, msg) = fails(&b, &args);
        assert_eq!(code, "not_found", "{args:?}: {msg}");
        assert!(msg.contains("not found"), "{args:?}: {msg}");
    }
    let (code, msg) = fails(&b, &["network", "join", "70000"]);
    assert_eq!(code, "invalid_argument", "{msg}");
    // A non-owner deleting or removing.
    let (_, msg) = fails(&b, &["network", "delete", "lab"]);
    assert!(
        msg.contains("cannot delete") && msg.contains("owner"),
        "{msg}"
    );
    b.json(&["network", "join", "lab"]);
    let (_, msg) = fails(&b, &["network", "remove", "lab", "alpha"]);
    assert!(msg.contains("only its owner"), "{msg}");
    let (_, msg) = fails(&a, &["network", "leave", "lab"]);
    assert!(msg.contains("delete it instead"), "{msg}");
    let (_, msg) = fails(&a, &["network", "create", "lab"]);
    assert!(msg.contains("already in use"), "{msg}");
    let (_, msg) = fails(&a, &["network", "create", "Bad_Name"]);
    assert!(msg.contains("invalid network name"), "{msg}");

    // A 10,000-character tag and 10,000 tags.
    let long = "a".repeat(10_000);
    let (code, msg) = fails(&a, &["set-tags", &long]);
    assert_eq!(code, "invalid_argument");
    assert!(msg.contains("too long") && msg.len() < 200, "{msg}");
    let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
    let mut args = vec!["set-tags"];
    args.extend(many.iter().map(String::as_str));
    let (_, msg) = fails(&a, &args);
    assert!(msg.contains("too many tags"), "{msg}");
    let (_, msg) = fails(&a, &["set-tags", "UPPER"]);
    assert!(msg.contains("lower-case"), "{msg}");
    let (_, msg) = fails(&a, &["find", "--tag", &long]);
    assert!(msg.contains("too long"), "{msg}");

    // The same hostile input straight at the registry, signed by a real
    // key: refused with the reason (not "request failed").
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use pilot::rendezvous::client::RegistryClient;
        use pilot::wire::networks::{FindNodes, NetRequest, NodeNetwork, SetTags};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let mut c = RegistryClient::connect(&rdv.registry).await.unwrap();
        let reg =
            pilot::wire::registry::Register::new(&key.verifying_key().to_bytes(), "0.0.0.0:4000");
        let me = c.register(reg).await.unwrap().node_id;
        let err = |r: Result<_, pilot::rendezvous::client::ClientError>| match r {
            Err(pilot::rendezvous::client::ClientError::Server(t)) => t,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let t = err(c
            .network(
                &key,
                NetRequest::SetTags(SetTags {
                    node_id: me,
                    tags: many.clone(),
                    signature: None,
                }),
            )
            .await);
        assert!(t.contains("too many tags"), "{t}");
        let t = err(c
            .network(
                &key,
                NetRequest::SetTags(SetTags {
                    node_id: me,
                    tags: vec![long.clone()],
                    signature: None,
                }),
            )
            .await);
        assert!(t.contains("too long"), "{t}");
        let t = err(c
            .network(
                &key,
                NetRequest::DeleteNetwork(NodeNetwork {
                    node_id: me,
                    network_id: 1,
                    signature: None,
                }),
            )
            .await);
        assert!(t.contains("only its owner"), "{t}");
        let t = err(c
            .network(
                &key,
                NetRequest::JoinNetwork(NodeNetwork {
                    node_id: me,
                    network_id: 4242,
                    signature: None,
                }),
            )
            .await);
        assert!(t.contains("not found"), "{t}");
        let t = err(c
            .network(
                &key,
                NetRequest::FindNodes(FindNodes {
                    requester_id: me,
                    tags: vec![],
                    query: Some("q".repeat(10_000)),
                    network_id: None,
                    limit: Some(u32::MAX),
                    signature: None,
                }),
            )
            .await);
        assert!(t.contains("too long"), "{t}");
        // A forged signature (another node's id) is refused.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let t = err(c
            .network(
                &other,
                NetRequest::JoinNetwork(NodeNetwork {
                    node_id: me,
                    network_id: 1,
                    signature: None,
                }),
            )
            .await);
        assert_eq!(t, "request failed");
    });
}
