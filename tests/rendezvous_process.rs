//! Tests that run the real `pilot-rendezvous` binary on 127.0.0.1 ephemeral
//! ports: durability across `kill -9`, refusal of damaged or locked stores,
//! and robustness against hostile clients.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pilot::rendezvous::client::RegistryClient;
use pilot::wire::beacon;
use pilot::wire::registry::{self, Register};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = common::RENDEZVOUS;

mod common;

use common::RendezvousProc as Server;

impl Server {
    /// Starts the binary on `store` with `extra` arguments.
    fn start(store: &Path, extra: &[&str]) -> Server {
        Server::spawn(|c| {
            c.arg("--store").arg(store).args(extra);
        })
    }
}

/// Runs the binary expecting it to fail; returns its stderr.
fn run_failing(store: &Path) -> String {
    let out = Command::new(BIN)
        .args([
            "--registry-addr",
            "127.0.0.1:0",
            "--beacon-addr",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(store)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");
    err
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

async fn register(c: &mut RegistryClient, k: &SigningKey) -> u32 {
    let req = Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
    c.register(req).await.unwrap().node_id
}

#[tokio::test]
async fn state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state/rendezvous.json");
    let keys: Vec<SigningKey> = (1..=5).map(key).collect();

    let s = Server::start(&store, &[]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    let mut ids = Vec::new();
    for k in &keys {
        ids.push(register(&mut c, k).await);
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    c.set_hostname(&keys[0], ids[0], "alpha").await.unwrap();
    c.set_hostname(&keys[1], ids[1], "bravo").await.unwrap();
    c.set_visibility(&keys[1], ids[1], true).await.unwrap();
    c.report_trust(&keys[2], ids[2], ids[3]).await.unwrap();
    c.report_trust(&keys[3], ids[3], ids[2]).await.unwrap();
    c.deregister(&keys[4], ids[4]).await.unwrap();
    // The last acknowledged write must survive an immediate SIGKILL.
    c.set_hostname(&keys[3], ids[3], "delta").await.unwrap();
    s.kill9();

    let s = Server::start(&store, &[]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    // Without re-registering: nodes, hostnames, visibility and trust are back.
    assert_eq!(
        c.lookup(ids[0]).await.unwrap().hostname.as_deref(),
        Some("alpha")
    );
    let b = c.lookup(ids[1]).await.unwrap();
    assert_eq!(b.hostname.as_deref(), Some("bravo"));
    assert!(b.public);
    assert_eq!(
        c.resolve_hostname(Some(ids[3]), "delta")
            .await
            .unwrap()
            .node_id,
        ids[3]
    );
    assert!(c.check_trust(ids[3], ids[2]).await.unwrap());
    assert!(c.lookup(ids[4]).await.is_err(), "deregistered stays gone");
    // Heartbeats work immediately (the node table was restored).
    c.heartbeat(&keys[0], ids[0]).await.unwrap();
    // Same keys -> same ids (also the deregistered one); ids are not reused.
    for (k, id) in keys.iter().zip(&ids) {
        assert_eq!(register(&mut c, k).await, *id);
    }
    assert_eq!(register(&mut c, &key(77)).await, 6);
    // Nobody can take a restored hostname.
    let t = c
        .set_hostname(&key(77), 6, "alpha")
        .await
        .unwrap_err()
        .to_string();
    assert!(t.contains("already in use by node 1"), "{t}");
    assert!(s.log.lock().unwrap().contains("rendezvous started"));
}

#[tokio::test]
async fn damaged_or_locked_store_is_refused_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rendezvous.db");

    // A real store.
    let s = Server::start(&store, &[]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    register(&mut c, &key(1)).await;
    c.set_hostname(&key(1), 1, "alpha").await.unwrap();

    // A second server on the same store is refused while the first runs.
    let err = run_failing(&store);
    assert!(err.contains("in use by another process"), "{err}");
    s.kill9();

    // Fold the write-ahead log into the file (as SQLite does on a clean
    // close) so that damage to the file is damage to the data.
    {
        let db = rusqlite::Connection::open(&store).unwrap();
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let good = std::fs::read(&store).unwrap();
    assert!(good.starts_with(b"SQLite format 3\0"));

    // Truncated.
    std::fs::write(&store, &good[..good.len() / 2]).unwrap();
    let err = run_failing(&store);
    assert!(err.contains(store.to_str().unwrap()), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    // Garbage.
    let mut junk = vec![0u8; 1000];
    OsRng.fill_bytes(&mut junk);
    std::fs::write(&store, &junk).unwrap();
    let err = run_failing(&store);
    assert!(
        err.contains(store.to_str().unwrap()) && err.contains("corrupt"),
        "{err}"
    );

    // A JSON store (to import) with inconsistent content: one id twice.
    let node = serde_json::json!({
        "id": 1,
        "public_key": registry::b64_encode(key(1).verifying_key().as_bytes()),
        "live": true,
        "hostname": "alpha",
    });
    let v = serde_json::json!({
        "format": "pilot-rendezvous-store", "version": 1, "next_id": 2,
        "nodes": [node.clone(), node], "trust": [],
    });
    std::fs::write(&store, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = run_failing(&store);
    assert!(err.contains("corrupt"), "{err}");

    // The intact file still loads (the refusals did not touch it).
    std::fs::write(&store, &good).unwrap();
    let s = Server::start(&store, &[]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    assert_eq!(
        c.lookup(1).await.unwrap().hostname.as_deref(),
        Some("alpha")
    );
}

async fn expect_error_then_close(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection must be closed");
    if buf.len() >= 4 {
        let v: serde_json::Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(v["type"], "error");
    }
}

#[tokio::test]
async fn hostile_clients_do_not_stall_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("r.json"), &[]);
    let addr = s.registry;

    // 2,000 idle connections, held open for the whole test.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }

    // A 64 MB length prefix: an error reply, then close (nothing allocated).
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
    expect_error_then_close(&mut big).await;

    // Invalid JSON, unknown type, a JSON array, a non-UTF-8 payload: error
    // replies, and the same connection still works afterwards.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    for body in [
        &b"{not json"[..],
        br#"{"type":"nope"}"#,
        b"[1,2,3]",
        b"\xff\xfe\x00",
        br#"{"type":"lookup","node_id":{"x":1}}"#,
        b"",
    ] {
        bad.write_all(&registry::encode_frame(body).unwrap())
            .await
            .unwrap();
        let mut len = [0u8; 4];
        bad.read_exact(&mut len).await.unwrap();
        let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
        bad.read_exact(&mut p).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["error"], "request failed");
    }

    // Random garbage streams (some start with a plausible prefix), truncated
    // frames left hanging, a slow 4 MiB upload, binary mode garbage.
    let mut hangers = Vec::new();
    for i in 0..50u32 {
        let mut g = TcpStream::connect(addr).await.unwrap();
        let mut junk = vec![0u8; 4 + (i as usize * 997) % 20_000];
        OsRng.fill_bytes(&mut junk);
        match i % 5 {
            0 => junk[..4].copy_from_slice(&100u32.to_be_bytes()),
            1 => junk[..4].copy_from_slice(b"PILT"),
            2 => junk[..4].copy_from_slice(&(4u32 << 20).to_be_bytes()),
            _ => {}
        }
        let _ = g.write_all(&junk).await;
        hangers.push(g);
    }
    let mut pilt = TcpStream::connect(addr).await.unwrap();
    pilt.write_all(b"PILT\x01\x00\x00\x00\x05\x7fabcd")
        .await
        .unwrap();
    let mut len = [0u8; 4];
    pilt.read_exact(&mut len).await.unwrap();
    let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
    pilt.read_exact(&mut p).await.unwrap();
    assert_eq!(p[0], 0xff, "binary error frame");

    // UDP garbage at the beacon.
    let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for n in [0usize, 1, 5, 9, 100, 60_000] {
        let mut junk = vec![0u8; n];
        OsRng.fill_bytes(&mut junk);
        u.send_to(&junk, s.beacon).await.unwrap();
    }

    // The well-behaved client is served promptly.
    let t0 = Instant::now();
    let mut c = RegistryClient::connect(addr).await.unwrap();
    let k = key(1);
    let id = register(&mut c, &k).await;
    c.heartbeat(&k, id).await.unwrap();
    assert_eq!(c.lookup(id).await.unwrap().node_id, id);
    c.set_hostname(&k, id, "survivor").await.unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    // And the beacon still answers.
    u.send_to(&beacon::encode_discover(id), s.beacon)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), u.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf[0], 2);
    assert!(n == 8);

    assert!(s.alive(), "server must survive: {}", s.log.lock().unwrap());
    drop(idle);
    drop(hangers);
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    matches!(r, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn connection_cap_evicts_silent_connections_and_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("r.json"),
        &["--max-connections", "20", "--idle-timeout-ms", "1500"],
    );
    // Fill the cap with connections that never send anything.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(s.registry).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A good client still gets in: the oldest silent connection is evicted.
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    let k = key(3);
    assert_eq!(register(&mut c, &k).await, 1);
    assert!(
        closed(&mut idle[0]).await,
        "oldest silent connection evicted"
    );

    // With the cap full of clients that made one request and went quiet, a
    // newcomer still gets in: the least recently active connection is
    // evicted (issue 10 item 6), and an evicted client reconnects.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut active = Vec::new();
    for _ in 0..19 {
        let mut a = RegistryClient::connect(s.registry).await.unwrap();
        a.lookup(1).await.unwrap();
        active.push(a);
    }
    c.heartbeat(&k, 1).await.unwrap();
    let mut extra = RegistryClient::connect(s.registry).await.unwrap();
    assert_eq!(extra.lookup(1).await.unwrap().node_id, 1);
    c.heartbeat(&k, 1).await.unwrap();

    // After the idle timeout the slots are free again.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut fresh = RegistryClient::connect(s.registry).await.unwrap();
    assert_eq!(fresh.lookup(1).await.unwrap().node_id, 1);
    // The idle-closed clients reconnect transparently on their next request.
    assert_eq!(c.lookup(1).await.unwrap().node_id, 1);
}

/// Many clients registering at once share store writes (group commit); every
/// acknowledged registration survives a SIGKILL right after the last reply.
#[tokio::test]
async fn concurrent_registrations_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("r.json");
    let s = Server::start(&store, &[]);
    let addr = s.registry;
    let mut tasks = Vec::new();
    for n in 0..100u8 {
        tasks.push(tokio::spawn(async move {
            let mut c = RegistryClient::connect(addr).await.unwrap();
            let k = key(n);
            let id = register(&mut c, &k).await;
            c.set_hostname(&k, id, &format!("node-{n}")).await.unwrap();
            (n, id)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    s.kill9();
    let mut ids: Vec<u32> = got.iter().map(|g| g.1).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=100).collect::<Vec<u32>>());

    let s = Server::start(&store, &[]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    for (n, id) in got {
        let r = c
            .resolve_hostname(Some(id), &format!("node-{n}"))
            .await
            .unwrap();
        assert_eq!(r.node_id, id);
        assert_eq!(register(&mut c, &key(n)).await, id);
    }
}
