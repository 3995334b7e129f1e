//! Paths that stay right, on loopback (issue 9):
//! * a peer restarted with a new UDP port is pinged successfully within 2 s
//!   of its restart by a node that knew its old endpoint, with no action on
//!   the restarted side (re-resolve + re-key on silence, spec §12.12);
//! * a replayed PILA from another address does not move the peer's
//!   endpoint: traffic keeps flowing to the real peer, the attempt is
//!   counted, and the replayer gets no more than it sent (spec §12.9);
//! * `peers --json` shows the path, endpoint, RTT, bytes and path age.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Node, Rendezvous};
use pilot::crypto::identity::Identity;
use pilot::crypto::tunnel::{sign_auth, KeyPair};
use pilot::wire::frame::{AuthKeyRepr, Frame};
use pilot::wire::registry::{Register, Request, Response};

fn peer_entry(node: &Node, addr: &str) -> serde_json::Value {
    let peers = node.json(&["peers"]);
    peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {peers}"))
}

fn udp_port(node: &Node) -> u16 {
    let listen = node.json(&["info"])["listen"].as_str().unwrap().to_string();
    listen.parse::<SocketAddr>().unwrap().port()
}

#[test]
fn a_restarted_peer_is_reachable_within_two_seconds() {
    let rdv = Rendezvous::start();
    let q = Node::new("q");
    let p = Node::new("p");
    q.start(&rdv, &["--public"]);
    let pinfo = p.start(&rdv, &["--public"]);
    let pa = pinfo["address"].as_str().unwrap().to_string();
    let r = q.json(&["ping", &pa, "--count", "2", "--interval", "100ms"]);
    assert_eq!(r["received"], 2, "{r}");
    let old_port = udp_port(&p);
    let e = peer_entry(&q, &pa);
    assert_eq!(e["path"], "direct", "{e}");
    assert!(e["endpoint"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{old_port}")));
    assert!(e["rtt_ms"].as_f64().is_some(), "{e}");
    assert!(e["bytes_out"].as_u64().unwrap() > 0, "{e}");

    // Restart p: new process, new X25519 key, new UDP port, same identity.
    p.stop();
    let restarted = p.start(&rdv, &["--public"]);
    let t0 = Instant::now();
    assert_eq!(restarted["address"], pa.as_str());
    let new_port = udp_port(&p);
    assert_ne!(old_port, new_port);

    let r = q.ctl(&["--json", "ping", &pa, "--count", "1", "--timeout", "5s"]);
    let took = t0.elapsed();
    assert_eq!(r.code, 0, "{r:?}\nq log:\n{}", q.log());
    assert!(
        took < Duration::from_secs(2),
        "restarted peer answered only after {took:?}\nq log:\n{}",
        q.log()
    );
    let e = peer_entry(&q, &pa);
    assert!(
        e["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{new_port}")),
        "{e}"
    );
    assert!(e["path_since_ms"].as_u64().is_some(), "{e}");
    assert!(
        q.log().contains("registry resolve"),
        "the path change is logged:\n{}",
        q.log()
    );

    // Streams work too, without anything on p's side.
    let m = q.json(&["connect", &pa, "7", "--message", "after restart"]);
    assert_eq!(m["data"], "after restart");
}

/// Registers a hand-made node and returns (identity, node id, its socket).
fn fake_node(rdv: &Rendezvous, seed: u8) -> (Identity, u32, UdpSocket) {
    let identity = Identity::from_seed([seed; 32]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = rt.block_on(async {
        let mut c = pilot::rendezvous::client::RegistryClient::connect(&rdv.registry)
            .await
            .unwrap();
        let reg = Register::new(
            &identity.public_key(),
            sock.local_addr().unwrap().to_string(),
        );
        let Response::RegisterOk(ok) = c.request(&Request::Register(reg)).await.unwrap() else {
            panic!()
        };
        ok.node_id
    });
    (identity, id, sock)
}

#[test]
fn a_replayed_pila_does_not_move_the_endpoint() {
    let rdv = Rendezvous::start();
    let q = Node::new("q");
    let p = Node::new("p");
    let qinfo = q.start(&rdv, &["--public"]);
    let pinfo = p.start(&rdv, &["--public"]);
    let pa = pinfo["address"].as_str().unwrap().to_string();
    let p_node = pinfo["node_id"].as_u64().unwrap() as u32;
    let q_ep: SocketAddr = format!("127.0.0.1:{}", udp_port(&q)).parse().unwrap();
    let p_ep: SocketAddr = format!("127.0.0.1:{}", udp_port(&p)).parse().unwrap();
    let _ = qinfo;
    let r = q.json(&["ping", &pa, "--count", "2", "--interval", "100ms"]);
    assert_eq!(r["received"], 2, "{r}");
    assert_eq!(peer_entry(&q, &pa)["endpoint"], p_ep.to_string());

    // The attacker gets p's PILA the easy way: by sending p its own.
    let (identity, id, sock) = fake_node(&rdv, 42);
    let kp = KeyPair::from_secret([5u8; 32]);
    let mine = AuthKeyRepr {
        sender: id,
        x25519: kp.public(),
        ed25519: identity.public_key(),
        signature: sign_auth(&identity, id, &kp.public()),
    };
    let mut frame = vec![0u8; 136];
    mine.emit(&mut frame).unwrap();
    sock.send_to(&frame, p_ep).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 2048];
    let p_pila = loop {
        let (n, _) = sock.recv_from(&mut buf).expect("p answers our PILA");
        if let Ok(Frame::AuthKey(a)) = Frame::parse(&buf[..n]) {
            if a.sender == p_node {
                break buf[..n].to_vec();
            }
        }
    };

    // Replay p's PILA to q, eleven times, from the attacker's address.
    let before = q.json(&["info"])["stats"]["endpoint_refused"]
        .as_u64()
        .unwrap();
    for _ in 0..11 {
        sock.send_to(&p_pila, q_ep).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep traffic flowing meanwhile: it must still reach the real p.
    let r = q.json(&["ping", &pa, "--count", "5", "--interval", "100ms"]);
    assert_eq!(r["received"], 5, "{r}");
    let m = q.json(&["connect", &pa, "7", "--message", "still p"]);
    assert_eq!(m["data"], "still p");
    let e = peer_entry(&q, &pa);
    assert_eq!(e["endpoint"], p_ep.to_string(), "{e}");
    let after = q.json(&["info"])["stats"]["endpoint_refused"]
        .as_u64()
        .unwrap();
    assert!(after >= before + 11, "counted: {before} -> {after}");

    // What came back to the attacker from q: at most a PILA or two
    // (rate-limited answers), never the traffic meant for p.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            if from == q_ep {
                got += 1;
            }
        }
    }
    assert!(got <= 3, "q sent {got} datagrams to the replayer");
}
