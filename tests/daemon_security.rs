//! A hand-made peer (built from the library's wire and crypto pieces, not a
//! daemon) talks to a real daemon over real UDP, and checks the tunnel rules
//! of spec §12: the inner source of a decrypted packet must be the
//! authenticated sender (§12.10), plaintext PILT and unsigned PILK are refused
//! while encryption is on (§12.6, §12.7), beacon messages from anywhere but
//! the beacon are ignored (§12.8), and port-0 pings are not answered (§12.11).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Node, Rendezvous};
use pilot::crypto::identity::Identity;
use pilot::crypto::tunnel::{derive_tunnel_key, sign_auth, KeyPair, Session};
use pilot::wire::address::Addr;
use pilot::wire::frame::{AuthKeyRepr, Frame, PILS_HEADER_LEN};
use pilot::wire::header::{emit_packet, parse_packet, Flags, Protocol, Repr};
use pilot::wire::registry::{Register, Request, Response};

struct FakePeer {
    sock: UdpSocket,
    id: u32,
    session: Session,
    daemon: std::net::SocketAddr,
    daemon_node: u32,
}

impl FakePeer {
    fn ping_packet(&self, src_node: u32, src_port: u16, seq: u32) -> Vec<u8> {
        let repr = Repr {
            flags: Flags::NONE,
            protocol: Protocol::Control,
            src: Addr::backbone(src_node),
            dst: Addr::backbone(self.daemon_node),
            src_port,
            dst_port: 0,
            seq,
            ack: 0,
            window: 0,
            payload_len: 4,
        };
        let mut buf = vec![0u8; 34 + 4];
        emit_packet(&repr, b"ping", &mut buf).unwrap();
        buf
    }

    fn send_sealed(&mut self, plain: &[u8]) {
        let mut frame = vec![0u8; PILS_HEADER_LEN + plain.len() + 16];
        frame[PILS_HEADER_LEN..PILS_HEADER_LEN + plain.len()].copy_from_slice(plain);
        let n = self
            .session
            .seal_in_place(self.id, &mut frame, plain.len())
            .unwrap();
        self.sock.send_to(&frame[..n], self.daemon).unwrap();
    }

    /// The next decrypted control packet, if one arrives within `wait`.
    fn recv_control(&mut self, wait: Duration) -> Option<Repr> {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 65_535];
        while Instant::now() < end {
            self.sock
                .set_read_timeout(Some(end - Instant::now()))
                .unwrap();
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                return None;
            };
            if !matches!(Frame::parse(&buf[..n]), Ok(Frame::Sealed { .. })) {
                continue;
            }
            let Ok(plain) = self.session.open_in_place(&mut buf[..n], Instant::now()) else {
                continue;
            };
            if let Ok((repr, _)) = parse_packet(plain) {
                // Pongs only: the daemon's own path probes (control pings
                // without ACK, node/path.rs) are not answers.
                if repr.protocol == Protocol::Control && repr.flags.contains(Flags::ACK) {
                    return Some(repr);
                }
            }
        }
        None
    }
}

fn stats(node: &Node) -> serde_json::Value {
    node.json(&["info"])["stats"].clone()
}

#[test]
fn the_tunnel_enforces_the_security_rules() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let daemon_node: u32 = info["node_id"].as_u64().unwrap() as u32;

    // The fake peer registers like a node would.
    let identity = Identity::from_seed([7u8; 32]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (id, daemon_ep) = rt.block_on(async {
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
        let look = c.lookup(daemon_node).await.unwrap();
        (ok.node_id, look.real_addr.unwrap())
    });
    let daemon: std::net::SocketAddr = daemon_ep.parse().unwrap();

    // PILA handshake.
    let kp = KeyPair::from_secret([9u8; 32]);
    let pila = AuthKeyRepr {
        sender: id,
        x25519: kp.public(),
        ed25519: identity.public_key(),
        signature: sign_auth(&identity, id, &kp.public()),
    };
    let mut frame = vec![0u8; 136];
    pila.emit(&mut frame).unwrap();
    sock.send_to(&frame, daemon).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 2048];
    let theirs = loop {
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("the daemon answers our PILA");
        if let Ok(Frame::AuthKey(p)) = Frame::parse(&buf[..n]) {
            break p;
        }
    };
    assert_eq!(theirs.sender, daemon_node);
    let key = derive_tunnel_key(&kp, &theirs.x25519).unwrap();
    let mut peer = FakePeer {
        sock,
        id,
        session: Session::new(key, [0xAB, 0xCD, 0xEF, 0x01]),
        daemon,
        daemon_node,
    };

    // An honest ping is answered (proves the session works).
    let p = peer.ping_packet(id, 50_001, 11);
    peer.send_sealed(&p);
    let pong = peer.recv_control(Duration::from_secs(3)).expect("pong");
    assert_eq!((pong.dst_port, pong.seq, pong.ack), (50_001, 11, 12));
    assert!(pong.flags.contains(Flags::ACK));

    // §12.10: inner source that is not the authenticated sender.
    let before = stats(&a);
    let p = peer.ping_packet(777, 50_002, 21);
    peer.send_sealed(&p);
    assert!(
        peer.recv_control(Duration::from_millis(500)).is_none(),
        "spoofed ping answered"
    );
    let after = stats(&a);
    assert_eq!(
        after["dropped_spoofed"].as_u64().unwrap(),
        before["dropped_spoofed"].as_u64().unwrap() + 1
    );

    // §12.11: a ping from port 0 is not answered.
    let p = peer.ping_packet(id, 0, 31);
    peer.send_sealed(&p);
    assert!(
        peer.recv_control(Duration::from_millis(500)).is_none(),
        "port-0 ping answered"
    );

    // §12.7: plaintext PILT is refused; §12.6: PILK is refused.
    let before = stats(&a);
    let mut pilt = b"PILT".to_vec();
    pilt.extend_from_slice(&peer.ping_packet(id, 50_003, 41));
    peer.sock.send_to(&pilt, daemon).unwrap();
    let mut pilk = b"PILK".to_vec();
    pilk.extend_from_slice(&id.to_be_bytes());
    pilk.extend_from_slice(&kp.public());
    peer.sock.send_to(&pilk, daemon).unwrap();
    assert!(
        peer.recv_control(Duration::from_millis(500)).is_none(),
        "plaintext ping answered"
    );
    let after = stats(&a);
    assert_eq!(
        after["dropped_plaintext"].as_u64().unwrap(),
        before["dropped_plaintext"].as_u64().unwrap() + 2
    );

    // §12.8: a punch command from a non-beacon source sends nothing.
    let before = stats(&a);
    let punch = pilot::wire::beacon::encode_punch_command(peer.sock.local_addr().unwrap());
    peer.sock.send_to(&punch, daemon).unwrap();
    // The punch would be three PILP datagrams to the address in the command.
    peer.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = peer.sock.recv_from(&mut buf) {
        assert_ne!(
            &buf[..n],
            b"PILP",
            "a forged punch command made the daemon punch"
        );
    }
    let after = stats(&a);
    assert_eq!(
        after["dropped_beacon_source"].as_u64().unwrap(),
        before["dropped_beacon_source"].as_u64().unwrap() + 1
    );

    // A tampered frame fails authentication and is counted.
    let before = stats(&a);
    let plain = peer.ping_packet(id, 50_004, 51);
    let mut frame = vec![0u8; PILS_HEADER_LEN + plain.len() + 16];
    frame[PILS_HEADER_LEN..PILS_HEADER_LEN + plain.len()].copy_from_slice(&plain);
    let n = peer
        .session
        .seal_in_place(id, &mut frame, plain.len())
        .unwrap();
    frame[n - 1] ^= 1;
    peer.sock.send_to(&frame[..n], daemon).unwrap();
    assert!(peer.recv_control(Duration::from_millis(500)).is_none());
    let after = stats(&a);
    assert_eq!(
        after["dropped_crypto"].as_u64().unwrap(),
        before["dropped_crypto"].as_u64().unwrap() + 1
    );
}

#[test]
fn garbage_on_the_udp_and_ipc_sockets_does_not_hurt_the_daemon() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let info = a.start(&rdv, &["--public"]);
    let ab = b.start(&rdv, &["--public"])["address"]
        .as_str()
        .unwrap()
        .to_string();
    let daemon: std::net::SocketAddr = a.json(&["lookup", info["address"].as_str().unwrap()])
        ["real_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // 5,000 datagrams: random bytes, and random bytes behind every magic and
    // beacon type, of random lengths (xorshift, fixed seed).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut st = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        st
    };
    let prefixes: [&[u8]; 9] = [
        b"",
        b"PILT",
        b"PILS",
        b"PILK",
        b"PILA",
        b"PILP",
        &[0x04],
        &[0x06],
        &[0x02],
    ];
    for i in 0..5000 {
        let len = (next() % 1600) as usize;
        let mut d: Vec<u8> = prefixes[i % prefixes.len()].to_vec();
        d.extend((0..len).map(|_| next() as u8));
        let _ = sock.send_to(&d, daemon);
    }
    // IPC: garbage, a huge length prefix, JSON of the wrong shape.
    for bad in [
        b"\x00\x00\x00\x05hello".to_vec(),
        b"\xff\xff\xff\xff".to_vec(),
        b"\x00\x00\x00\x0c{\"cmd\":\"no\"}".to_vec(),
    ] {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bad).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(reply.get(4..).unwrap_or_default()).to_string();
        assert!(text.contains("\"status\":\"error\""), "{bad:?} -> {text}");
    }

    // Still alive and serving: info, and a ping through the tunnel.
    let stats = a.json(&["info"])["stats"].clone();
    assert!(
        stats["dropped_malformed"].as_u64().unwrap() + stats["dropped_plaintext"].as_u64().unwrap()
            > 0
    );
    assert_eq!(
        a.json(&["ping", &ab, "--count", "2", "--interval", "50ms"])["received"],
        2
    );
}
