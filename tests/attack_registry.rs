//! Attacks on the rendezvous of issue 10 (items 5 and 6), against a real
//! `pilot-rendezvous` process. Attackers use their own loopback source
//! addresses (127.0.0.x) so that per-source rules can tell them from the
//! honest clients on 127.0.0.1.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_tcp_port, free_udp_port, wait_until, Node, Rendezvous, RENDEZVOUS};
use pilot::crypto::identity::Identity;
use pilot::rendezvous::client::RegistryClient;
use pilot::wire::beacon;
use pilot::wire::registry::{self as wire, Lookup, Register, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from source address `from_ip`.
async fn connect_from(from_ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from_ip}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// One request/response on a raw connection; None if the server closed it.
async fn ask(s: &mut TcpStream, req: &Request) -> Option<Response> {
    s.write_all(&wire::encode_json_frame(req).unwrap())
        .await
        .ok()?;
    let mut dec = wire::FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(f)) = dec.next_frame() {
            return wire::parse_response(&f).ok();
        }
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        dec.push(&buf[..n]);
    }
}

struct Server {
    child: Child,
    registry: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let registry: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let child = Command::new(RENDEZVOUS)
            .args(["--registry-addr", &registry.to_string()])
            .args(["--beacon-addr", &format!("127.0.0.1:{}", free_udp_port())])
            .arg("--store")
            .arg(dir.path().join("store.json"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(registry).is_ok()
        }));
        (Server { child, registry }, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn attack_idle_connections_hold_every_slot() {
    let (s, _dir) = Server::start(&["--max-connections", "50"]);
    // 50 connections from another address each send one lookup, then idle.
    let mut hogs = Vec::new();
    for _ in 0..50 {
        let mut c = connect_from("127.0.0.9", s.registry).await;
        let r = ask(&mut c, &Request::Lookup(Lookup { node_id: 1 })).await;
        assert!(r.is_some());
        hogs.push(c);
    }
    // An honest client still registers and looks itself up.
    let k = Identity::from_seed([1u8; 32]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    let Response::RegisterOk(ok) = c
        .request(&Request::Register(Register::new(&k.public_key(), ":1")))
        .await
        .expect("an honest client is refused while idle connections hold every slot")
    else {
        panic!()
    };
    assert_eq!(c.lookup(ok.node_id).await.unwrap().node_id, ok.node_id);
}

#[tokio::test]
async fn attack_fresh_key_registration_flood() {
    let (s, _dir) = Server::start(&["--no-rate-limit"]);
    let mut flood = connect_from("127.0.0.7", s.registry).await;
    let (mut ok, mut limited) = (0, 0);
    for n in 0..400u32 {
        let mut seed = [9u8; 32];
        seed[..4].copy_from_slice(&n.to_be_bytes());
        let k = Identity::from_seed(seed);
        match ask(
            &mut flood,
            &Request::Register(Register::new(&k.public_key(), ":1")),
        )
        .await
        {
            Some(Response::RegisterOk(_)) => ok += 1,
            Some(Response::Error(e)) if e.error.contains("rate limited") => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        ok <= 140 && limited >= 260,
        "{ok} registered, {limited} limited"
    );
    // Another source is not affected.
    let k = Identity::from_seed([2u8; 32]);
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    assert!(matches!(
        c.request(&Request::Register(Register::new(&k.public_key(), ":1")))
            .await,
        Ok(Response::RegisterOk(_))
    ));
}

#[test]
fn attack_beacon_id_takeover() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let victim = info["node_id"].as_u64().unwrap() as u32;
    let beacon_addr: SocketAddr = rdv.beacon.parse().unwrap();

    // A host elsewhere claims the victim's id with one discover.
    let evil = UdpSocket::bind("127.0.0.5:0").unwrap();
    evil.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    evil.send_to(&beacon::encode_discover(victim), beacon_addr)
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        evil.recv_from(&mut buf).is_err(),
        "the beacon accepted a discover for node {victim} from another address"
    );
    // Relayed frames for the victim therefore never reach the attacker: a
    // registered peer on the victim's (loopback) address relays to it.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = rt.block_on(async {
        let mut c = RegistryClient::connect(&rdv.registry).await.unwrap();
        let k = Identity::from_seed([8u8; 32]);
        let reg = Register::new(&k.public_key(), peer.local_addr().unwrap().to_string());
        match c.request(&Request::Register(reg)).await.unwrap() {
            Response::RegisterOk(ok) => ok.node_id,
            o => panic!("{o:?}"),
        }
    });
    peer.send_to(&beacon::encode_discover(pid), beacon_addr)
        .unwrap();
    assert!(peer.recv_from(&mut buf).is_ok(), "honest discover answered");
    peer.send_to(
        &beacon::encode_relay(pid, victim, b"PILSsecret"),
        beacon_addr,
    )
    .unwrap();
    assert!(
        evil.recv_from(&mut buf).is_err(),
        "the attacker received frames relayed to node {victim}"
    );
}
