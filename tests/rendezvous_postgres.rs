//! Many rendezvous instances over one PostgreSQL database (issue 13 item
//! 2), through real `pilot-rendezvous` processes and a real, throwaway
//! PostgreSQL cluster (Debian's `postgresql` package: `initdb` and
//! `pg_ctl` from `/usr/lib/postgresql/*/bin`, run as the `postgres` user
//! when the test runs as root, since `initdb` refuses root). The cluster
//! lives in a temporary directory on a free port and is stopped and
//! removed at the end, also when a test fails. Without the binaries the
//! tests skip with a printed reason (`scripts/test.sh` installs them).
//!
//! What a user relies on: a node registered with instance A is looked up,
//! resolved, found by hostname and sent a handshake request through B (the
//! request reaches the node waiting on A within 2 s), its answer and the
//! trust pair cross back; a hostname taken on A is refused on B; ids
//! allocated at once on both never collide; requests sent through both
//! while the node takes its inbox all arrive; after `kill -9` of A its
//! node registers with B (a real daemon given `--registry A,B` moves by
//! itself) and keeps its address and hostname; the nodes of an instance
//! dead longer than the stale-node timeout go offline and free their
//! names; a relay frame sent to B for a node whose beacon is A reaches it,
//! and a forged forward is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use pilot::rendezvous::client::RegistryClient;
use pilot::wire::registry::{self as wire, Register};

mod common;

use common::RendezvousProc as Server;

/// A throwaway PostgreSQL cluster, stopped and deleted on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server binaries as this user (we are root).
    user: Option<&'static str>,
}

impl Cluster {
    /// Starts a cluster, or says why it cannot and returns `None`.
    fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .max();
        let Some(bin) = bin else {
            eprintln!("SKIP: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)");
            return None;
        };
        let root = unsafe { libc::geteuid() } == 0;
        let user = if root {
            let known = Command::new("id")
                .arg("postgres")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !known {
                eprintln!("SKIP: running as root and there is no `postgres` user to run initdb as");
                return None;
            }
            Some("postgres")
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args([u, dir.path().to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {u} {}", dir.path().display());
        }
        let c = Cluster {
            bin,
            dir,
            port: common::free_tcp_port(),
            user,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "pilot",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            c.port,
            c.dir.path().display()
        );
        let log = c.dir.path().join("postgres.log");
        c.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        Some(c)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://pilot@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An instance over the cluster's database, with `HOME=home`.
fn instance(url: &str, home: &Path) -> Server {
    let id = home.join("rendezvous-identity.json");
    Server::spawn(|c| {
        c.args(["--store", url, "--identity", id.to_str().unwrap()])
            .env("HOME", home)
            .env_remove("PILOT_RENDEZVOUS_STORE");
    })
}

fn key(i: u32) -> SigningKey {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// A registration signed as the daemon signs it (src/node/registry.rs).
fn signed_register(k: &SigningKey, hostname: Option<&str>) -> Register {
    let mut r = Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
    r.hostname = hostname.map(str::to_string);
    r.timestamp = Some(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    let sig = k.sign(r.signed_text().as_bytes());
    r.signature = Some(wire::b64_encode(&sig.to_bytes()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_one_database_are_one_registry() {
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let a = instance(&pg.url(), home.path());
    let b = instance(&pg.url(), home.path());
    let mut ca = RegistryClient::connect(a.registry).await.unwrap();
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();

    // Registered with A, found through B at once.
    let (k1, k2) = (key(1), key(2));
    let n1 = ca
        .register(signed_register(&k1, Some("alpha")))
        .await
        .unwrap();
    assert_eq!(n1.hostname.as_deref(), Some("alpha"));
    let l = match cb.lookup(n1.node_id).await {
        Ok(l) => l,
        Err(e) => panic!(
            "{e}\nA: {}\nB: {}",
            a.log.lock().unwrap(),
            b.log.lock().unwrap()
        ),
    };
    assert_eq!(l.hostname.as_deref(), Some("alpha"));
    assert_eq!(
        l.public_key,
        wire::b64_encode(k1.verifying_key().as_bytes())
    );
    let n2 = cb.register(signed_register(&k2, None)).await.unwrap();
    assert_ne!(n1.node_id, n2.node_id);
    ca.set_visibility(&k1, n1.node_id, true).await.unwrap();
    let r = match cb.resolve(&k2, n2.node_id, n1.node_id).await {
        Ok(r) => r,
        Err(e) => panic!(
            "{e}\nA: {}\nB: {}",
            a.log.lock().unwrap(),
            b.log.lock().unwrap()
        ),
    };
    assert_eq!(r.real_addr, n1.observed_addr);
    let h = cb
        .resolve_hostname(Some(n2.node_id), "alpha")
        .await
        .unwrap();
    assert_eq!(h.node_id, n1.node_id);

    // A hostname taken on A cannot be taken on B.
    let err = cb
        .set_hostname(&k2, n2.node_id, "alpha")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already in use"), "{err}");
    let k3 = key(3);
    let n3 = cb
        .register(signed_register(&k3, Some("alpha")))
        .await
        .unwrap();
    assert_eq!(n3.hostname, None);
    assert!(n3.hostname_error.is_some_and(|e| e.contains("in use")));

    // A handshake request sent through B reaches node 1 waiting on A.
    let poll = {
        let k1 = k1.clone();
        let addr = a.registry;
        let id = n1.node_id;
        tokio::spawn(async move {
            let mut c = RegistryClient::connect(addr).await.unwrap();
            let started = Instant::now();
            let got = c
                .poll_handshakes_wait(&k1, id, Duration::from_secs(10))
                .await
                .unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    cb.request_handshake(&k2, n2.node_id, n1.node_id, "hello from B")
        .await
        .unwrap();
    let (got, _) = poll.await.unwrap();
    let latency = sent.elapsed();
    assert_eq!(got.requests.len(), 1, "{got:?}");
    assert_eq!(got.requests[0].from_node_id, n2.node_id);
    assert_eq!(got.requests[0].justification, "hello from B");
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
    eprintln!("handshake request across instances: {latency:?}");

    // Node 1 accepts on A; node 2 gets the answer on B, and B sees the pair.
    ca.respond_handshake(&k1, n1.node_id, n2.node_id, true)
        .await
        .unwrap();
    let mut answered = None;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && answered.is_none() {
        let p = cb
            .poll_handshakes_wait(&k2, n2.node_id, Duration::from_millis(500))
            .await
            .unwrap();
        answered = p.responses.into_iter().next();
    }
    let answer = answered.expect("the answer reaches node 2 through B");
    assert!(answer.accept);
    assert_eq!(answer.from_node_id, n1.node_id);
    assert!(cb.check_trust(n1.node_id, n2.node_id).await.unwrap());

    // Requests sent at once through both instances, while node 1 takes
    // its inbox on A, all arrive, none twice.
    let k4 = key(4);
    let n4 = ca.register(signed_register(&k4, None)).await.unwrap();
    let (ra, rb) = tokio::join!(
        ca.request_handshake(&k4, n4.node_id, n1.node_id, "via A"),
        cb.request_handshake(&k3, n3.node_id, n1.node_id, "via B"),
    );
    ra.unwrap();
    rb.unwrap();
    let mut c1 = RegistryClient::connect(a.registry).await.unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && got.len() < 2 {
        let p = c1
            .poll_handshakes_wait(&k1, n1.node_id, Duration::from_millis(500))
            .await
            .unwrap();
        got.extend(p.requests.into_iter().map(|r| r.from_node_id));
    }
    got.sort_unstable();
    let mut want = vec![n3.node_id, n4.node_id];
    want.sort_unstable();
    assert_eq!(got, want);

    // Ids allocated on both at once never collide.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let addr = if i % 2 == 0 { a.registry } else { b.registry };
        tasks.push(tokio::spawn(async move {
            let mut c = RegistryClient::connect(addr).await.unwrap();
            c.register(signed_register(&key(1000 + i), None))
                .await
                .unwrap()
                .node_id
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "an id was handed out twice");
    }
    assert!(!ids.contains(&n1.node_id) && !ids.contains(&n2.node_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_of_one_instance_its_nodes_keep_their_address_and_name_on_another() {
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let a = instance(&pg.url(), home.path());
    let b = instance(&pg.url(), home.path());
    let k = key(7);
    let mut ca = RegistryClient::connect(a.registry).await.unwrap();
    let n = ca
        .register(signed_register(&k, Some("gamma")))
        .await
        .unwrap();
    ca.heartbeat(&k, n.node_id).await.unwrap();
    a.kill9();
    // The node's retry: the same registration, now to B.
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();
    let again = cb
        .register(signed_register(&k, Some("gamma")))
        .await
        .unwrap();
    assert_eq!(again.node_id, n.node_id);
    assert_eq!(again.address, n.address);
    assert_eq!(again.hostname.as_deref(), Some("gamma"));
    cb.heartbeat(&k, n.node_id).await.unwrap();
    let h = cb.resolve_hostname(Some(n.node_id), "gamma").await.unwrap();
    assert_eq!(h.node_id, n.node_id);

    // A third instance started later knows it too (from the database).
    let c = instance(&pg.url(), home.path());
    let mut cc = RegistryClient::connect(c.registry).await.unwrap();
    let l = cc.lookup(n.node_id).await.unwrap();
    assert_eq!(l.hostname.as_deref(), Some("gamma"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_given_two_instances_moves_to_the_second_when_the_first_dies() {
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let a = instance(&pg.url(), home.path());
    let b = instance(&pg.url(), home.path());
    let node = common::Node::new("delta");
    let registries = format!("{},{}", a.registry, b.registry);
    // One beacon per instance, in the same order: it fails over with the
    // registry.
    let beacons = format!("{},{}", a.beacon, b.beacon);
    let out = node.ctl(&[
        "--json",
        "daemon",
        "start",
        "--registry",
        &registries,
        "--beacon",
        &beacons,
        "--heartbeat",
        "1s",
        "--hostname",
        "delta",
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", node.log());
    let before = node.json(&["info"]);
    let id = before["node_id"].as_u64().unwrap() as u32;
    assert_eq!(before["hostname"], "delta");
    assert_eq!(before["beacon"], a.beacon.to_string());

    a.kill9();
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();
    // Within a few heartbeats the node is served by B, same address, same
    // name.
    let moved = common::wait_until(Duration::from_secs(15), || {
        node.log().contains("using another instance") && node.json(&["info"])["registered"] == true
    });
    assert!(moved, "{}", node.log());
    let after = node.json(&["info"]);
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["hostname"], "delta");
    let l = cb.lookup(id).await.unwrap();
    assert_eq!(l.hostname.as_deref(), Some("delta"));
    assert_eq!(
        cb.resolve_hostname(Some(id), "delta")
            .await
            .unwrap()
            .node_id,
        id
    );
    // The beacon followed: B's beacon knows the node's endpoint (it
    // announced itself there) and the node takes relay deliveries from it.
    let moved = common::wait_until(Duration::from_secs(5), || {
        node.json(&["info"])["beacon"] == b.beacon.to_string()
    });
    assert!(moved, "{}", node.json(&["info"]));
    assert!(
        node.log().contains("using its instance's beacon"),
        "{}",
        node.log()
    );
    use pilot::wire::beacon;
    let k = key(31);
    let sender = cb
        .register(signed_register(&k, None))
        .await
        .unwrap()
        .node_id;
    let y = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    y.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    y.send_to(&beacon::encode_discover(sender), b.beacon)
        .unwrap();
    let mut buf = vec![0u8; 2048];
    y.recv_from(&mut buf).expect("discover reply");
    let stats = |n: &common::Node| n.json(&["info"])["stats"].clone();
    let s0 = stats(&node);
    // Not a tunnel frame: the node counts it as malformed, which shows it
    // arrived through B's beacon and was not refused for its source.
    let frame = beacon::encode_relay(sender, id, b"not a tunnel frame");
    let arrived = common::wait_until(Duration::from_secs(5), || {
        let _ = y.send_to(&frame, b.beacon);
        stats(&node)["dropped_malformed"].as_u64() > s0["dropped_malformed"].as_u64()
    });
    assert!(arrived, "{}", stats(&node));
    assert_eq!(
        stats(&node)["dropped_beacon_source"],
        s0["dropped_beacon_source"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nodes_of_an_instance_dead_longer_than_the_stale_timeout_go_offline() {
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let short = |home: &Path| {
        let id = home.join("rendezvous-identity.json");
        let url = pg.url();
        Server::spawn(move |c| {
            c.args(["--store", &url, "--identity", id.to_str().unwrap()])
                .args(["--stale-after-ms", "2000"])
                .env("HOME", home)
                .env_remove("PILOT_RENDEZVOUS_STORE");
        })
    };
    let a = short(home.path());
    let b = short(home.path());
    let k = key(11);
    let mut ca = RegistryClient::connect(a.registry).await.unwrap();
    let n = ca
        .register(signed_register(&k, Some("omega")))
        .await
        .unwrap();
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();
    assert_eq!(
        cb.lookup(n.node_id).await.unwrap().hostname.as_deref(),
        Some("omega")
    );
    a.kill9();
    // B stamps and sweeps every 10 s; A's stamp is stale after 2 s.
    let until = Instant::now() + Duration::from_secs(25);
    let mut gone = false;
    while Instant::now() < until && !gone {
        tokio::time::sleep(Duration::from_millis(500)).await;
        gone = cb.lookup(n.node_id).await.is_err();
    }
    assert!(gone, "node still online on B: {}", b.log.lock().unwrap());
    // Its name is free again; its key keeps its id.
    let k2 = key(12);
    let other = cb
        .register(signed_register(&k2, Some("omega")))
        .await
        .unwrap();
    assert_eq!(other.hostname.as_deref(), Some("omega"));
    let back = cb.register(signed_register(&k, None)).await.unwrap();
    assert_eq!(back.node_id, n.node_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_frame_sent_to_one_instance_reaches_a_node_on_the_other() {
    use pilot::wire::beacon;
    use tokio::net::UdpSocket;
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let a = instance(&pg.url(), home.path());
    let b = instance(&pg.url(), home.path());
    let (k1, k2) = (key(21), key(22));
    let mut ca = RegistryClient::connect(a.registry).await.unwrap();
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();
    let n1 = ca
        .register(signed_register(&k1, None))
        .await
        .unwrap()
        .node_id;
    let n2 = cb
        .register(signed_register(&k2, None))
        .await
        .unwrap()
        .node_id;
    // Node 1's beacon is A, node 2's is B.
    let x = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let y = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 2048];
    for (sock, id, beacon_addr) in [(&x, n1, a.beacon), (&y, n2, b.beacon)] {
        sock.send_to(&beacon::encode_discover(id), beacon_addr)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("discover reply")
            .unwrap();
    }
    // Node 2 relays to node 1 through B; A delivers it.
    let want = beacon::encode_relay_delivery(n2, b"PILS hello across instances");
    let frame = beacon::encode_relay(n2, n1, b"PILS hello across instances");
    let until = Instant::now() + Duration::from_secs(10);
    let mut delivered = None;
    while Instant::now() < until && delivered.is_none() {
        y.send_to(&frame, b.beacon).await.unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(300), x.recv_from(&mut buf)).await
        {
            delivered = Some((buf[..n].to_vec(), from));
        }
    }
    let (got, from) = delivered.expect("the frame reaches node 1 through A");
    assert_eq!(got, want);
    assert_eq!(from, a.beacon);
    // A forwarded frame with a wrong tag, sent straight to A, is dropped.
    let mut forged = vec![pilot::rendezvous::beacon::FORWARD];
    forged.extend_from_slice(&[0u8; 32]);
    forged.extend_from_slice(&n2.to_be_bytes());
    forged.extend_from_slice(&n1.to_be_bytes());
    forged.extend_from_slice(b"forged");
    y.send_to(&forged, a.beacon).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), x.recv_from(&mut buf)).await;
    assert!(r.is_err(), "a forged forward was delivered");
}

/// Networks, memberships and tags (issue 12) kept in the shared database:
/// a network created through A is joined through B, its members listed
/// through either, a member waiting on A learns of a join through B within
/// 2 s, tags set through B are found through A, the name cannot be taken
/// again through B, a removal crosses back, and a third instance started
/// afterwards loads all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn networks_and_tags_cross_instances() {
    use pilot::wire::networks::{
        CreateNetwork, JoinRule, ListNodes, NetRequest as N, NetResponse as R, NodeNetwork, SetTags,
    };
    let Some(pg) = Cluster::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let a = instance(&pg.url(), home.path());
    let b = instance(&pg.url(), home.path());
    let mut ca = RegistryClient::connect(a.registry).await.unwrap();
    let mut cb = RegistryClient::connect(b.registry).await.unwrap();
    let (k1, k2) = (key(21), key(22));
    let n1 = ca
        .register(signed_register(&k1, None))
        .await
        .unwrap()
        .node_id;
    let n2 = cb
        .register(signed_register(&k2, None))
        .await
        .unwrap()
        .node_id;
    let logs = || {
        format!(
            "\nA: {}\nB: {}",
            a.log.lock().unwrap(),
            b.log.lock().unwrap()
        )
    };

    // Node 1 creates "research" through A.
    let created = ca
        .network(
            &k1,
            N::CreateNetwork(CreateNetwork {
                node_id: n1,
                name: "research".into(),
                join_rule: JoinRule::Open,
                signature: None,
            }),
        )
        .await
        .unwrap();
    let R::CreateNetworkOk(ok) = created else {
        panic!("{created:?}")
    };
    let net = ok.network.id;

    // Node 1 waits on A for a membership change.
    let since = ca
        .poll_networks_wait(&k1, n1, 0, Duration::from_millis(10))
        .await
        .unwrap()
        .version;
    let poll = {
        let (k1, addr) = (k1.clone(), a.registry);
        tokio::spawn(async move {
            let mut c = RegistryClient::connect(addr).await.unwrap();
            c.poll_networks_wait(&k1, n1, since, Duration::from_secs(10))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Node 2 joins through B (B has to learn of the network first).
    let sent = Instant::now();
    let joined = cb
        .network(
            &k2,
            N::JoinNetwork(NodeNetwork {
                node_id: n2,
                network_id: net,
                signature: None,
            }),
        )
        .await;
    assert!(
        matches!(joined, Ok(R::JoinNetworkOk(_))),
        "{joined:?}{}",
        logs()
    );
    let seen = poll.await.unwrap();
    let latency = sent.elapsed();
    let members = seen
        .networks
        .iter()
        .find(|m| m.id == net)
        .map(|m| m.members.clone())
        .unwrap_or_default();
    assert!(members.contains(&n2), "{seen:?}{}", logs());
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
    eprintln!("membership change across instances: {latency:?}");

    // The same name cannot be created again through B.
    let again = cb
        .network(
            &k2,
            N::CreateNetwork(CreateNetwork {
                node_id: n2,
                name: "research".into(),
                join_rule: JoinRule::Open,
                signature: None,
            }),
        )
        .await;
    assert!(again.is_err(), "{again:?}");

    // Tags set through B are found through A (within a read of the log).
    let tagged = cb
        .network(
            &k2,
            N::SetTags(SetTags {
                node_id: n2,
                tags: vec!["citations".into()],
                signature: None,
            }),
        )
        .await;
    assert!(matches!(tagged, Ok(R::SetTagsOk(_))), "{tagged:?}");
    let mut found = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && found.is_empty() {
        found = find_tag(&mut ca, &k1, n1, Some(net), "citations").await;
        if found.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(found, vec![n2], "{}", logs());

    // Node 2 leaves through B; A's member list follows.
    let left = cb
        .network(
            &k2,
            N::LeaveNetwork(NodeNetwork {
                node_id: n2,
                network_id: net,
                signature: None,
            }),
        )
        .await;
    assert!(matches!(left, Ok(R::LeaveNetworkOk(_))), "{left:?}");
    let members_via = |addr| {
        let k1 = k1.clone();
        async move {
            let mut c = RegistryClient::connect(addr).await.unwrap();
            match c
                .network(
                    &k1,
                    N::ListNodes(ListNodes {
                        network_id: net,
                        requester_id: Some(n1),
                        signature: None,
                    }),
                )
                .await
            {
                Ok(R::ListNodesOk(r)) => r.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        }
    };
    let until = Instant::now() + Duration::from_secs(2);
    let mut via_a = members_via(a.registry).await;
    while Instant::now() < until && via_a != vec![n1] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        via_a = members_via(a.registry).await;
    }
    assert_eq!(via_a, vec![n1], "{}", logs());

    // A third instance started now loads the network, its member and the tags.
    let c = instance(&pg.url(), home.path());
    assert_eq!(members_via(c.registry).await, vec![n1]);
    let mut cc = RegistryClient::connect(c.registry).await.unwrap();
    assert!(
        find_tag(&mut cc, &k1, n1, Some(net), "citations")
            .await
            .is_empty(),
        "not a member any more"
    );
    // Node 2's tags were loaded: node 2 finds itself through C.
    assert_eq!(
        find_tag(&mut cc, &k2, n2, None, "citations").await,
        vec![n2]
    );
}

/// Node ids with `tag` that `requester` may see (in `net`, if given).
async fn find_tag(
    c: &mut RegistryClient,
    k: &SigningKey,
    requester: u32,
    net: Option<u16>,
    tag: &str,
) -> Vec<u32> {
    use pilot::wire::networks::{FindNodes, NetRequest, NetResponse};
    let req = NetRequest::FindNodes(FindNodes {
        requester_id: requester,
        tags: vec![tag.into()],
        query: None,
        network_id: net,
        limit: None,
        signature: None,
    });
    match c.network(k, req).await {
        Ok(NetResponse::FindNodesOk(r)) => r.nodes.iter().map(|n| n.node_id).collect(),
        other => panic!("find_nodes: {other:?}"),
    }
}
