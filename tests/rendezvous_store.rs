//! The SQLite store of the rendezvous (issue 13), through the real
//! `pilot-rendezvous` binary: `kill -9` in the middle of a burst of 1,000
//! registrations loses none that were acknowledged, and a JSON store of the
//! previous format (written with the JSON store code) is imported on first
//! start, in place or from the old default path.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use pilot::rendezvous::client::{self, RegistryClient};
use pilot::rendezvous::store::json;
use pilot::rendezvous::Registry;
use pilot::wire::registry::{self as wire, Register, Request, SetVisibility, TrustPair};

const BIN: &str = common::RENDEZVOUS;

mod common;

use common::RendezvousProc as Server;

impl Server {
    /// Starts the binary with `args` and `HOME=home`.
    fn start(home: &Path, args: &[&str]) -> Server {
        Server::spawn(|c| {
            c.args(args)
                .env("HOME", home)
                .env_remove("PILOT_RENDEZVOUS_STORE");
        })
    }
}

/// A distinct key per index.
fn key(i: u32) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A registration signed as the daemon signs it (src/node/registry.rs).
fn signed_register(k: &SigningKey, hostname: Option<&str>) -> Register {
    let mut r = Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
    r.hostname = hostname.map(str::to_string);
    r.version = Some("test".into());
    r.timestamp = Some(unix_now());
    let sig = k.sign(r.signed_text().as_bytes());
    r.signature = Some(wire::b64_encode(&sig.to_bytes()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_of_1000_registrations_loses_none_acknowledged() {
    const TOTAL: u32 = 1000;
    const CLIENTS: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rendezvous.db");
    let store_s = store.to_str().unwrap();
    let flags = ["--store", store_s, "--no-new-id-quota", "--no-rate-limit"];
    let s = Server::start(dir.path(), &flags);
    let addr = s.registry;
    let acked: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(c) = RegistryClient::connect(addr).await else {
                return;
            };
            let mut c = c.with_timeout(Duration::from_secs(5));
            for i in (t..TOTAL).step_by(CLIENTS as usize) {
                let host = format!("n-{i}");
                match c.register(signed_register(&key(i), Some(&host))).await {
                    Ok(ok) => {
                        assert_eq!(ok.hostname.as_deref(), Some(host.as_str()));
                        acked.lock().unwrap().push((i, ok.node_id));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // SIGKILL in the middle of the burst.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < (TOTAL / 2) as usize {
        assert!(t0.elapsed() < Duration::from_secs(60), "burst too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!("acknowledged before SIGKILL: {}", acked.len());
    assert!(acked.len() >= (TOTAL / 2) as usize);
    let mut ids: Vec<u32> = acked.iter().map(|a| a.1).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), acked.len(), "ids are distinct");

    let s = Server::start(dir.path(), &flags);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    for &(i, id) in &acked {
        let l = c
            .lookup(id)
            .await
            .unwrap_or_else(|e| panic!("node {id} (key {i}) lost: {e}"));
        assert_eq!(
            l.public_key,
            wire::b64_encode(key(i).verifying_key().as_bytes())
        );
        assert_eq!(l.hostname.as_deref(), Some(format!("n-{i}").as_str()));
    }
    // Same key, same id; the hostname is still taken by its owner.
    for &(i, id) in acked.iter().take(50) {
        let ok = c.register(signed_register(&key(i), None)).await.unwrap();
        assert_eq!(ok.node_id, id);
        let r = c
            .resolve_hostname(Some(id), &format!("n-{i}"))
            .await
            .unwrap();
        assert_eq!(r.node_id, id);
    }
    assert!(s.log.lock().unwrap().contains("rendezvous started"));
}

/// Builds a registry with the in-process state machine and writes it with
/// the JSON store code, as the previous rendezvous did.
fn write_json_store(path: &Path) -> (Vec<u32>, Vec<u8>) {
    let reg = Registry::new();
    let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let now = std::time::Instant::now();
    let mut ids = Vec::new();
    for (i, host) in [(1u32, "alpha"), (2, "bravo"), (3, "charlie")] {
        let out = reg.handle(
            Request::Register(signed_register(&key(i), Some(host))),
            peer,
            now,
        );
        match out.response {
            wire::Response::RegisterOk(ok) => ids.push(ok.node_id),
            other => panic!("{other:?}"),
        }
    }
    let vis = client::sign(
        Request::SetVisibility(SetVisibility {
            node_id: ids[1],
            public: true,
            signature: None,
        }),
        &key(2),
    );
    assert!(!matches!(
        reg.handle(vis, peer, now).response,
        wire::Response::Error(_)
    ));
    for (a, b, k) in [(ids[0], ids[2], key(1)), (ids[2], ids[0], key(3))] {
        let t = client::sign(
            Request::ReportTrust(TrustPair {
                node_id: a,
                peer_id: b,
                signature: None,
            }),
            &k,
        );
        assert!(!matches!(
            reg.handle(t, peer, now).response,
            wire::Response::Error(_)
        ));
    }
    json::write(path, reg.snapshot()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(br#"{"format":"pilot-rendezvous-store","version":1"#));
    (ids, bytes)
}

async fn check_imported(addr: SocketAddr, ids: &[u32]) {
    let mut c = RegistryClient::connect(addr).await.unwrap();
    for (id, host) in ids.iter().zip(["alpha", "bravo", "charlie"]) {
        let l = c.lookup(*id).await.unwrap();
        assert_eq!(l.hostname.as_deref(), Some(host));
        assert_eq!(l.public, host == "bravo");
        assert_eq!(
            c.resolve_hostname(Some(*id), host).await.unwrap().node_id,
            *id
        );
    }
    assert!(c.check_trust(ids[0], ids[2]).await.unwrap());
    assert!(!c.check_trust(ids[0], ids[1]).await.unwrap());
    // Heartbeats work at once; the same key keeps its id.
    c.heartbeat(&key(1), ids[0]).await.unwrap();
    let ok = c.register(signed_register(&key(3), None)).await.unwrap();
    assert_eq!(ok.node_id, ids[2]);
    // A new key gets a new id, after the imported ones.
    let ok = c.register(signed_register(&key(99), None)).await.unwrap();
    assert_eq!(ok.node_id, 4);
}

#[tokio::test]
async fn a_json_store_is_imported_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state/rendezvous.json");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    let (ids, original) = write_json_store(&store);
    let flags = ["--store", store.to_str().unwrap()];

    let s = Server::start(dir.path(), &flags);
    assert!(
        s.log.lock().unwrap().contains("imported the JSON store"),
        "{}",
        s.log.lock().unwrap()
    );
    check_imported(s.registry, &ids).await;
    // The JSON is kept, byte for byte; the store is now a database.
    let backup = dir.path().join("state/rendezvous.json.json-imported");
    assert_eq!(std::fs::read(&backup).unwrap(), original);
    assert!(std::fs::read(&store)
        .unwrap()
        .starts_with(b"SQLite format 3\0"));
    s.kill9();

    // After a SIGKILL, the database (with the node registered since) loads;
    // nothing is imported again.
    let s = Server::start(dir.path(), &flags);
    assert!(!s.log.lock().unwrap().contains("imported the JSON store"));
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    assert_eq!(
        c.lookup(ids[1]).await.unwrap().hostname.as_deref(),
        Some("bravo")
    );
    assert_eq!(c.lookup(4).await.unwrap().node_id, 4);
    assert!(c.check_trust(ids[2], ids[0]).await.unwrap());
}

#[tokio::test]
async fn the_old_default_json_store_is_imported_into_the_new_default() {
    let home = tempfile::tempdir().unwrap();
    let pilot = home.path().join(".pilot");
    std::fs::create_dir_all(&pilot).unwrap();
    let (ids, original) = write_json_store(&pilot.join("rendezvous.json"));

    let s = Server::start(home.path(), &[]);
    check_imported(s.registry, &ids).await;
    assert!(std::fs::read(pilot.join("rendezvous.db"))
        .unwrap()
        .starts_with(b"SQLite format 3\0"));
    assert!(!pilot.join("rendezvous.json").exists());
    assert_eq!(
        std::fs::read(pilot.join("rendezvous.json.json-imported")).unwrap(),
        original
    );
}

#[tokio::test]
async fn an_inconsistent_json_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("r.json");
    let (_, original) = write_json_store(&store);
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let node = v["nodes"][0].clone();
    v["nodes"].as_array_mut().unwrap().push(node);
    let bad = serde_json::to_vec(&v).unwrap();
    std::fs::write(&store, &bad).unwrap();
    let out = Command::new(BIN)
        .args(["--registry-addr", "127.0.0.1:0", "--beacon-addr"])
        .args(["127.0.0.1:0", "--store", store.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt") && err.contains(store.to_str().unwrap()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), bad);
    assert!(!dir.path().join("r.json.json-imported").exists());
}
