//! Tunnel-level attacks of issue 10 (items 2-4), each against a real daemon
//! over real UDP from a hand-made peer:
//! * alternating two X25519 keys in PILA made the daemon rebuild a session
//!   for a key it had already used, with its send counter back at 1
//!   (AES-GCM nonce reuse, spec §12.9 (c));
//! * PILA floods from spoofed node ids (each starting a registry lookup, and
//!   a log line);
//! * forged PILS from anyone were answered with a 136-byte PILA each
//!   (reflection/amplification).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{wait_until, Node, Rendezvous};
use pilot::crypto::identity::Identity;
use pilot::crypto::tunnel::{derive_tunnel_key, sign_auth, KeyPair, Session};
use pilot::wire::address::Addr;
use pilot::wire::frame::{AuthKeyRepr, Frame, PILS_HEADER_LEN};
use pilot::wire::header::{emit_packet, parse_packet, Flags, Protocol, Repr};
use pilot::wire::registry::{Register, Request, Response};

fn stats(node: &Node) -> serde_json::Value {
    node.json(&["info"])["stats"].clone()
}

/// Registers a fresh identity and returns (its node id, the daemon's UDP
/// endpoint as the daemon reports it).
fn register_fake(
    rdv: &Rendezvous,
    identity: &Identity,
    sock: &UdpSocket,
    info: &serde_json::Value,
) -> (u32, SocketAddr) {
    let daemon: SocketAddr = info["endpoint"].as_str().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
        (ok.node_id, daemon)
    })
}

/// A hand-made peer with a tunnel to `node`'s daemon: its socket, node id,
/// the daemon's endpoint and the session keys. `seed` picks the identity
/// (and, plus one, the X25519 key); `prefix` is the session's nonce prefix.
fn tunnel_to(
    rdv: &Rendezvous,
    node: &Node,
    seed: u8,
    prefix: [u8; 4],
) -> (UdpSocket, u32, SocketAddr, Session) {
    let identity = Identity::from_seed([seed; 32]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (id, daemon) = register_fake(rdv, &identity, &sock, &node.json(&["info"]));
    let kp = KeyPair::from_secret([seed + 1; 32]);
    sock.send_to(&pila(&identity, id, &kp), daemon).unwrap();
    let theirs = recv_pila(&sock, Duration::from_secs(3)).expect("PILA answer");
    let s = Session::new(derive_tunnel_key(&kp, &theirs.x25519).unwrap(), prefix);
    (sock, id, daemon, s)
}

fn pila(identity: &Identity, id: u32, kp: &KeyPair) -> Vec<u8> {
    let repr = AuthKeyRepr {
        sender: id,
        x25519: kp.public(),
        ed25519: identity.public_key(),
        signature: sign_auth(identity, id, &kp.public()),
    };
    let mut frame = vec![0u8; 136];
    repr.emit(&mut frame).unwrap();
    frame
}

fn ping(src: u32, dst: u32, seq: u32) -> Vec<u8> {
    let repr = Repr {
        flags: Flags::NONE,
        protocol: Protocol::Control,
        src: Addr::backbone(src),
        dst: Addr::backbone(dst),
        src_port: 50_001,
        dst_port: 0,
        seq,
        ack: 0,
        window: 0,
        payload_len: 4,
    };
    let mut buf = vec![0u8; 38];
    emit_packet(&repr, b"ping", &mut buf).unwrap();
    buf
}

fn seal(s: &mut Session, id: u32, plain: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; PILS_HEADER_LEN + plain.len() + 16];
    frame[PILS_HEADER_LEN..PILS_HEADER_LEN + plain.len()].copy_from_slice(plain);
    let n = s.seal_in_place(id, &mut frame, plain.len()).unwrap();
    frame.truncate(n);
    frame
}

/// Waits for the daemon's PILA (for `kp`'s key exchange).
fn recv_pila(sock: &UdpSocket, wait: Duration) -> Option<AuthKeyRepr> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 2048];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Ok(Frame::AuthKey(p)) = Frame::parse(&buf[..n]) {
            return Some(p);
        }
    }
    None
}

/// Hands every datagram that arrives on `sock` within `wait` to `each`.
fn recv_for(sock: &UdpSocket, wait: Duration, mut each: impl FnMut(&mut [u8])) {
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < end {
        sock.set_read_timeout(Some(end - Instant::now() + Duration::from_millis(1)))
            .unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        each(&mut buf[..n]);
    }
}

/// Receives PILS frames for `wait`; returns the (prefix, counter) of each
/// one that opens under `s` and carries a control packet.
fn recv_nonces(sock: &UdpSocket, s: &mut Session, wait: Duration) -> Vec<([u8; 4], u64, bool)> {
    let mut out = Vec::new();
    recv_for(sock, wait, |buf| {
        if !matches!(Frame::parse(buf), Ok(Frame::Sealed { .. })) {
            return;
        }
        let prefix: [u8; 4] = buf[8..12].try_into().unwrap();
        let counter = u64::from_be_bytes(buf[12..20].try_into().unwrap());
        let Ok(plain) = s.open_in_place(buf, Instant::now()) else {
            return;
        };
        // Every control frame counts for nonce reuse, the daemon's own path
        // probes (control pings without ACK, node/path.rs) included; `pong`
        // tells the answers to ours apart.
        if let Ok((r, _)) = parse_packet(plain) {
            if r.protocol == Protocol::Control {
                out.push((prefix, counter, r.flags.contains(Flags::ACK)));
            }
        }
    });
    out
}

#[test]
fn attack_pila_key_alternation_nonce_reuse() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let daemon_node = info["node_id"].as_u64().unwrap() as u32;
    let identity = Identity::from_seed([7u8; 32]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (id, daemon) = register_fake(&rdv, &identity, &sock, &a.json(&["info"]));

    let (ka, kb) = (
        KeyPair::from_secret([9u8; 32]),
        KeyPair::from_secret([10u8; 32]),
    );
    // Every nonce the daemon used under key A's tunnel key.
    let mut under_a: HashMap<u64, usize> = HashMap::new();

    sock.send_to(&pila(&identity, id, &ka), daemon).unwrap();
    let theirs = recv_pila(&sock, Duration::from_secs(3)).expect("the daemon answers PILA(A)");
    let key_a = derive_tunnel_key(&ka, &theirs.x25519).unwrap();
    let mut sa = Session::new(key_a, [0xA1; 4]);
    let mut seq = 1;
    for _ in 0..5 {
        sock.send_to(&seal(&mut sa, id, &ping(id, daemon_node, seq)), daemon)
            .unwrap();
        seq += 1;
    }
    let first = recv_nonces(&sock, &mut sa, Duration::from_millis(800));
    assert_eq!(first.iter().filter(|f| f.2).count(), 5, "pongs under key A");
    for (_, c, _) in &first {
        *under_a.entry(*c).or_default() += 1;
    }

    // "Restart" with key B, then replay PILA(A), several times.
    for round in 0..3u8 {
        sock.send_to(&pila(&identity, id, &kb), daemon).unwrap();
        let wait = if round == 0 { 3000 } else { 300 };
        let theirs_b = recv_pila(&sock, Duration::from_millis(wait));
        if round == 0 {
            assert!(theirs_b.is_some(), "the daemon answers PILA(B)");
        }
        sock.send_to(&pila(&identity, id, &ka), daemon).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // A fresh session under A from the attacker's side (counter 1 again
        // is fine for *our* prefix); what matters is the daemon's counters.
        let mut sa2 = Session::new(key_a, [0xB0 + round; 4]);
        for _ in 0..4 {
            sock.send_to(&seal(&mut sa2, id, &ping(id, daemon_node, seq)), daemon)
                .unwrap();
            seq += 1;
        }
        let mut rx = Session::new(key_a, [0xC0 + round; 4]);
        for (_, c, _) in recv_nonces(&sock, &mut rx, Duration::from_millis(600)) {
            *under_a.entry(c).or_default() += 1;
        }
    }
    let repeated: Vec<_> = under_a.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "the daemon reused send counters under one tunnel key: {repeated:?}"
    );
    let st = stats(&a);
    assert!(
        st["dropped_superseded_key"].as_u64().unwrap_or(0) >= 1,
        "replayed PILA(A) not refused and counted: {st}"
    );

    // The current key (B) still works.
    let key_b = derive_tunnel_key(&kb, &theirs.x25519).unwrap();
    let mut sb = Session::new(key_b, [0xD1; 4]);
    sock.send_to(&seal(&mut sb, id, &ping(id, daemon_node, seq)), daemon)
        .unwrap();
    assert_eq!(
        recv_nonces(&sock, &mut sb, Duration::from_millis(1500))
            .iter()
            .filter(|f| f.2)
            .count(),
        1,
        "the tunnel under key B stopped working"
    );
}

#[test]
fn attack_forged_pils_reflection() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    a.start(&rdv, &[]);
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_, daemon) = register_fake(
        &rdv,
        &Identity::from_seed([3u8; 32]),
        &probe,
        &a.json(&["info"]),
    );

    // 2,000 forged 36-byte PILS, each from a different claimed sender.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..2000u32 {
        let mut f = vec![0u8; 36];
        f[..4].copy_from_slice(b"PILS");
        f[4..8].copy_from_slice(&(10_000 + i).to_be_bytes());
        f[19] = 1;
        let _ = sock.send_to(&f, daemon);
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let (mut answers, mut bytes) = (0usize, 0usize);
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        answers += 1;
        bytes += n;
    }
    assert!(
        answers <= 60,
        "{answers} answers ({bytes} bytes) to 2,000 forged frames (72,000 bytes)"
    );
    assert!(stats(&a)["dropped_rate_limited"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn attack_pila_flood_from_spoofed_ids() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let daemon_node = info["node_id"].as_u64().unwrap() as u32;
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_, daemon) = register_fake(
        &rdv,
        &Identity::from_seed([4u8; 32]),
        &probe,
        &a.json(&["info"]),
    );
    let log_before = a.log().len();

    // 5,000 validly signed PILAs for node ids the registry does not know
    // (or that belong to someone else), from one source, as fast as we can.
    let attacker = Identity::from_seed([5u8; 32]);
    let kp = KeyPair::from_secret([6u8; 32]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for i in 0..5000u32 {
        let _ = sock.send_to(&pila(&attacker, 100_000 + i, &kp), daemon);
    }
    // The registry connection stays usable: lookups answer quickly.
    let t = Instant::now();
    let look = a.ctl(&["--json", "lookup", &daemon_node.to_string()]);
    assert_eq!(look.code, 0, "{look:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "lookup took {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = stats(&a);
    assert!(
        st["dropped_rate_limited"].as_u64().unwrap_or(0) > 0,
        "PILAs not rate-limited: {st} (sent in {:?})",
        started.elapsed()
    );
    // Only a bounded number reached verification and the registry.
    assert!(st["dropped_auth"].as_u64().unwrap() <= 300, "{st}");
    // Nothing was learned from them.
    assert_eq!(
        a.json(&["peers"])["peers"]
            .as_array()
            .map_or(0, |p| p.len()),
        0
    );
    let grew = a.log().len().saturating_sub(log_before);
    assert!(grew < 16 * 1024, "the flood wrote {grew} bytes of log");
    // The node keeps its registration (1 s heartbeats).
    assert!(wait_until(Duration::from_secs(3), || a.json(&["info"])
        ["registered"]
        == true));
}

#[test]
fn attack_port_scan_of_a_private_node() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &[]);
    let daemon_node = info["node_id"].as_u64().unwrap() as u32;
    let (sock, id, daemon, mut s) = tunnel_to(&rdv, &a, 12, [0x5C; 4]);
    // SYNs from an untrusted peer to an unbound port and to the echo port.
    for (i, port) in [4242u16, 7].into_iter().enumerate() {
        let repr = Repr {
            flags: Flags::SYN,
            protocol: Protocol::Stream,
            src: Addr::backbone(id),
            dst: Addr::backbone(daemon_node),
            src_port: 50_000 + i as u16,
            dst_port: port,
            seq: 1,
            ack: 0,
            window: 512,
            payload_len: 0,
        };
        let mut pkt = vec![0u8; 34];
        emit_packet(&repr, &[], &mut pkt).unwrap();
        sock.send_to(&seal(&mut s, id, &pkt), daemon).unwrap();
    }
    // Whatever the answer, it must not depend on whether the port is bound
    // (the old gate came after the port check: RST for the unbound port,
    // silence for the echo port).
    let mut answers: HashMap<u16, Vec<Flags>> = HashMap::new();
    for (flags, src_port, _) in recv_stream(&sock, &mut s, Duration::from_millis(1200)) {
        answers.entry(src_port).or_default().push(flags);
    }
    assert!(
        answers
            .values()
            .all(|f| f.iter().all(|f| !f.contains(Flags::SYN))),
        "an untrusted SYN was accepted: {answers:?}"
    );
    assert_eq!(
        answers.get(&4242).map(|v| v.len()),
        answers.get(&7).map(|v| v.len()),
        "bound and unbound ports answer differently: {answers:?}"
    );
}

/// A TCP proxy to `to` that delays every chunk by `delay` in each direction
/// (a slow registry link). Runs until the process exits.
fn slow_proxy(to: String, delay: Duration) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let Ok(up) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)]
            {
                let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0
                            || tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                        {
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    for (due, bytes) in rx {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        if into.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    addr
}

#[test]
fn attack_spoofed_pilas_starve_the_registry_link() {
    let rdv = Rendezvous::start();
    let proxy = slow_proxy(rdv.registry.clone(), Duration::from_millis(50));
    let a = Node::new("alpha");
    let out = a.ctl(&[
        "--json",
        "daemon",
        "start",
        "--registry",
        &proxy,
        "--beacon",
        &rdv.beacon,
        "--heartbeat",
        "1s",
        "--public",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let info = a.json(&["info"]);
    let me = info["node_id"].as_u64().unwrap().to_string();
    let daemon: SocketAddr = info["endpoint"].as_str().unwrap().parse().unwrap();

    // 200 validly signed PILAs per second for unknown ids, from 40 source
    // addresses (5/s each: under any per-source limit), for 6 s.
    let attacker = Identity::from_seed([21u8; 32]);
    let kp = KeyPair::from_secret([22u8; 32]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (10..50)
                .map(|i| UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap())
                .collect();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..10 {
                    let _ = socks[n as usize % socks.len()]
                        .send_to(&pila(&attacker, 500_000 + n, &kp), daemon);
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    for _ in 0..4 {
        let t = Instant::now();
        let look = a.ctl(&["--json", "lookup", &me]);
        worst = worst.max(t.elapsed());
        assert_eq!(look.code, 0, "lookup failed during the flood: {look:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "lookup took {worst:?} during the flood"
    );
    assert_eq!(a.json(&["info"])["registered"], true);
    let st = stats(&a);
    assert!(st["dropped_rate_limited"].as_u64().unwrap() > 0, "{st}");
}

/// A stream segment from the fake peer `id` to the daemon.
fn segment(id: u32, daemon_node: u32, src_port: u16, flags: Flags, data: &[u8]) -> Vec<u8> {
    let repr = Repr {
        flags,
        protocol: Protocol::Stream,
        src: Addr::backbone(id),
        dst: Addr::backbone(daemon_node),
        src_port,
        dst_port: 1000,
        seq: 77,
        ack: 99,
        window: 64,
        payload_len: data.len(),
    };
    let mut pkt = vec![0u8; 34 + data.len()];
    emit_packet(&repr, data, &mut pkt).unwrap();
    pkt
}

/// The stream packets the daemon sends for `wait`: (flags, src port, dst port).
fn recv_stream(sock: &UdpSocket, s: &mut Session, wait: Duration) -> Vec<(Flags, u16, u16)> {
    let mut out = Vec::new();
    recv_for(sock, wait, |buf| {
        if let Ok(plain) = s.open_in_place(buf, Instant::now()) {
            let (r, _) = parse_packet(plain).unwrap();
            if r.protocol == Protocol::Stream {
                out.push((r.flags, r.src_port, r.dst_port));
            }
        }
    });
    out
}

/// A peer whose RST was lost keeps sending on a connection we no longer
/// have: data, a FIN or a SYN|ACK get an RST (so its application fails at
/// once instead of at its keepalive), pure ACKs and RSTs get nothing, a
/// flood is answered at a bounded rate, and an untrusted peer of a private
/// node gets nothing at all.
#[test]
fn a_segment_for_a_lost_connection_is_reset_at_a_bounded_rate() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let b = Node::new("bravo");
    let pub_info = a.start(&rdv, &["--public"]);
    let priv_info = b.start(&rdv, &[]);
    for (node, info, public, seed) in [(&a, &pub_info, true, 21u8), (&b, &priv_info, false, 22)] {
        let daemon_node = info["node_id"].as_u64().unwrap() as u32;
        let (sock, id, daemon, mut s) = tunnel_to(&rdv, node, seed, [0x5D; 4]);
        let send = |s: &mut Session, port: u16, flags: Flags, data: &[u8]| {
            let pkt = segment(id, daemon_node, port, flags, data);
            sock.send_to(&seal(s, id, &pkt), daemon).unwrap();
        };
        send(&mut s, 40_001, Flags::ACK, b"the rest of a request");
        send(&mut s, 40_002, Flags::FIN, b"");
        send(&mut s, 40_003, Flags::SYN | Flags::ACK, b"");
        send(&mut s, 40_004, Flags::ACK, b"");
        send(&mut s, 40_005, Flags::RST, b"");
        let got = recv_stream(&sock, &mut s, Duration::from_millis(800));
        if !public {
            assert!(got.is_empty(), "an untrusted peer was answered: {got:?}");
            assert_eq!(stats(node)["stray_resets"], 0);
            continue;
        }
        let mut ports: Vec<u16> = got
            .iter()
            .map(|&(f, src, dst)| {
                assert_eq!(f, Flags::RST, "{got:?}");
                assert_eq!(src, 1000, "ports are swapped: {got:?}");
                dst
            })
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, vec![40_001, 40_002, 40_003], "{got:?}");
        assert_eq!(stats(node)["stray_resets"], 3);

        // A flood: far fewer RSTs than stray segments.
        for i in 0..2000u16 {
            send(&mut s, 41_000 + i, Flags::ACK, b"x");
        }
        let flood = recv_stream(&sock, &mut s, Duration::from_millis(800));
        assert!(!flood.is_empty());
        assert!(flood.len() <= 150, "{} RSTs for 2000 segments", flood.len());
        let counted = stats(node)["stray_resets"].as_u64().unwrap();
        assert_eq!(counted, 3 + flood.len() as u64);
    }
}

/// An RST is never acknowledged, so one lost datagram used to leave the far
/// application waiting for its keepalive: a reset of ours goes out again
/// (twice, 200 ms apart), and the copies are ignored by a peer that got the
/// first one.
#[test]
fn a_reset_of_ours_is_sent_again() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let daemon_node = info["node_id"].as_u64().unwrap() as u32;
    let (sock, id, daemon, mut s) = tunnel_to(&rdv, &a, 31, [0x5E; 4]);
    // Open a stream to the echo port: SYN, then ACK of its SYN|ACK.
    let send = |s: &mut Session, repr: &Repr| {
        let mut pkt = vec![0u8; 34];
        emit_packet(repr, &[], &mut pkt).unwrap();
        sock.send_to(&seal(s, id, &pkt), daemon).unwrap();
    };
    let mut repr = Repr {
        flags: Flags::SYN,
        protocol: Protocol::Stream,
        src: Addr::backbone(id),
        dst: Addr::backbone(daemon_node),
        src_port: 45_000,
        dst_port: 7,
        seq: 1000,
        ack: 0,
        window: 64,
        payload_len: 0,
    };
    send(&mut s, &repr);
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 65_535];
    let synack = loop {
        let (n, _) = sock.recv_from(&mut buf).expect("SYN|ACK");
        if let Ok(plain) = s.open_in_place(&mut buf[..n], Instant::now()) {
            let (r, _) = parse_packet(plain).unwrap();
            if r.protocol == Protocol::Stream && r.flags == Flags::SYN | Flags::ACK {
                break r;
            }
        }
    };
    repr.flags = Flags::ACK;
    repr.seq = 1001;
    repr.ack = synack.seq.wrapping_add(1);
    send(&mut s, &repr);
    // The daemon resets it.
    let mut conn = None;
    for _ in 0..50 {
        let c = a.json(&["connections"]);
        conn = c["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["remote"].as_str().is_some_and(|r| r.ends_with(":45000")))
            .and_then(|c| c["conn_id"].as_u64());
        if conn.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let conn = conn.expect("the stream is listed").to_string();
    let d = a.ctl(&["disconnect", &conn, "--force"]);
    assert_eq!(d.code, 0, "{d:?}");
    let got = recv_stream(&sock, &mut s, Duration::from_millis(1200));
    let rsts = got
        .iter()
        .filter(|&&(f, src, dst)| f == Flags::RST && src == 7 && dst == 45_000)
        .count();
    assert_eq!(rsts, 3, "one RST and two repeats: {got:?}");
}
