//! The attacker of `scripts/stress/hostile.sh` (issue 10): for a given time,
//! from many loopback source addresses (127.0.0.10 and up), it sends
//! * validly signed PILAs claiming random node ids (registry-lookup bait),
//! * forged 36-byte PILS frames with random sender ids (reflection bait),
//! * beacon garbage and spoofed beacon discovers for the targets' ids,
//! * fresh-key registrations and lookups on busy registry connections,
//! * idle registry connections (one request, then silence),
//!
//! at fixed rates so that the measured damage comes from the protocol, not
//! from this process eating the CPU. Prints a JSON summary of what it sent.
//!
//! Usage: hostile REGISTRY BEACON SECONDS TARGET_UDP[,TARGET_UDP..] TARGET_ID[,..]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pilot::crypto::identity::Identity;
use pilot::crypto::tunnel::{sign_auth, KeyPair};
use pilot::wire::beacon;
use pilot::wire::frame::AuthKeyRepr;
use pilot::wire::registry::{self as wire, Lookup, Register, Request};

/// Datagrams per second per UDP attack kind, all targets together.
const UDP_RATE: u64 = 2000;
/// Registry requests per second per flooding connection.
const REG_RATE: u64 = 50;
/// Flooding registry connections.
const REG_FLOODERS: usize = 8;
/// Idle registry connections.
const IDLE_CONNS: usize = 200;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn paced(stop: &AtomicBool, rate: u64, mut f: impl FnMut(u64)) {
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            f(sent);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn udp_from(i: usize) -> UdpSocket {
    let ip = format!("127.0.0.{}", 10 + (i % 40));
    UdpSocket::bind(format!("{ip}:0")).unwrap_or_else(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
}

fn tcp_from(i: usize, to: SocketAddr) -> Option<TcpStream> {
    let sock = socket2_connect(i, to)?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(sock)
}

/// A TCP connection from 127.0.0.(50 + i % 40) (std has no bind-before-connect,
/// so tokio's TcpSocket does it on a throwaway runtime).
fn socket2_connect(i: usize, to: SocketAddr) -> Option<TcpStream> {
    let ip = format!("127.0.0.{}", 50 + (i % 40));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().ok()?;
        s.bind(format!("{ip}:0").parse().ok()?).ok()?;
        s.connect(to).await.ok()
    })?;
    s.into_std().ok().and_then(|s| {
        s.set_nonblocking(false).ok()?;
        Some(s)
    })
}

fn ask(s: &mut TcpStream, req: &Request) -> bool {
    let Ok(frame) = wire::encode_json_frame(req) else {
        return false;
    };
    if s.write_all(&frame).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 20) as usize];
    s.read_exact(&mut body).is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: hostile REGISTRY BEACON SECONDS TARGET_UDP[,..] TARGET_ID[,..]");
        std::process::exit(2);
    }
    let registry: SocketAddr = args[1].parse().expect("registry address");
    let beacon_addr: SocketAddr = args[2].parse().expect("beacon address");
    let secs: u64 = args[3].parse().expect("seconds");
    let targets: Vec<SocketAddr> = args[4]
        .split(',')
        .map(|t| t.parse().expect("target"))
        .collect();
    let ids: Vec<u32> = args[5]
        .split(',')
        .map(|t| t.parse().expect("target id"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let mut threads = Vec::new();

    // 1. Spoofed PILAs: valid signatures by the attacker's key, random ids.
    {
        let (stop, counts, targets) = (stop.clone(), counts.clone(), targets.clone());
        threads.push(std::thread::spawn(move || {
            let me = Identity::from_seed([0xEE; 32]);
            let kp = KeyPair::from_secret([0xEF; 32]);
            let socks: Vec<UdpSocket> = (0..20).map(udp_from).collect();
            let mut rng = Rng(1);
            let mut frame = vec![0u8; 136];
            paced(&stop, UDP_RATE, |n| {
                let id = (rng.next() % 1_000_000) as u32 + 1000;
                let p = AuthKeyRepr {
                    sender: id,
                    x25519: kp.public(),
                    ed25519: me.public_key(),
                    signature: sign_auth(&me, id, &kp.public()),
                };
                if p.emit(&mut frame).is_ok() {
                    let t = targets[n as usize % targets.len()];
                    let _ = socks[n as usize % socks.len()].send_to(&frame, t);
                    counts[0].fetch_add(1, Ordering::Relaxed);
                }
            });
        }));
    }
    // 2. Forged PILS: 36 bytes, random sender ids, including the targets'.
    {
        let (stop, counts, targets, ids) =
            (stop.clone(), counts.clone(), targets.clone(), ids.clone());
        threads.push(std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (20..40).map(udp_from).collect();
            let mut rng = Rng(2);
            paced(&stop, UDP_RATE, |n| {
                let mut f = [0u8; 36];
                f[..4].copy_from_slice(b"PILS");
                let id = if n % 4 == 0 {
                    ids[n as usize % ids.len()]
                } else {
                    rng.next() as u32
                };
                f[4..8].copy_from_slice(&id.to_be_bytes());
                f[8..20].copy_from_slice(&rng.next().to_be_bytes().repeat(2)[..12]);
                let t = targets[n as usize % targets.len()];
                let _ = socks[n as usize % socks.len()].send_to(&f, t);
                counts[1].fetch_add(1, Ordering::Relaxed);
            });
        }));
    }
    // 3. Beacon: garbage, spoofed discovers for the targets' ids, relays in
    //    their names; also beacon-looking garbage straight at the daemons.
    {
        let (stop, counts, targets, ids) =
            (stop.clone(), counts.clone(), targets.clone(), ids.clone());
        threads.push(std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..40).map(udp_from).collect();
            let mut rng = Rng(3);
            paced(&stop, UDP_RATE, |n| {
                let s = &socks[n as usize % socks.len()];
                let id = ids[n as usize % ids.len()];
                let _ = match n % 4 {
                    0 => s.send_to(&beacon::encode_discover(id), beacon_addr),
                    1 => s.send_to(
                        &beacon::encode_relay(id, ids[0], b"PILSxxxxxxxx"),
                        beacon_addr,
                    ),
                    2 => {
                        let g: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
                        s.send_to(&g, beacon_addr)
                    }
                    _ => s.send_to(
                        &beacon::encode_punch_command("127.0.0.1:9".parse().unwrap()),
                        targets[n as usize % targets.len()],
                    ),
                };
                counts[2].fetch_add(1, Ordering::Relaxed);
            });
        }));
    }
    // 4. Registry floods: fresh keys and lookups on busy connections.
    for f in 0..REG_FLOODERS {
        let (stop, counts) = (stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn: Option<TcpStream> = None;
            let mut rng = Rng(10 + f as u64);
            paced(&stop, REG_RATE, |n| {
                if conn.is_none() {
                    conn = tcp_from(f, registry);
                }
                let Some(c) = conn.as_mut() else { return };
                let req = if n % 2 == 0 {
                    let mut seed = [0u8; 32];
                    seed[..8].copy_from_slice(&rng.next().to_be_bytes());
                    let k = Identity::from_seed(seed);
                    Request::Register(Register::new(&k.public_key(), ":1"))
                } else {
                    Request::Lookup(Lookup {
                        node_id: (rng.next() % 1000) as u32,
                    })
                };
                if !ask(c, &req) {
                    conn = None;
                    counts[4].fetch_add(1, Ordering::Relaxed);
                }
                counts[3].fetch_add(1, Ordering::Relaxed);
            });
        }));
    }
    // 5. Idle connections: one lookup, then silence; reopened when closed.
    {
        let (stop, counts) = (stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut idle: Vec<Option<TcpStream>> = (0..IDLE_CONNS).map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                for (i, slot) in idle.iter_mut().enumerate() {
                    let dead = match slot.as_mut() {
                        None => true,
                        Some(s) => {
                            s.set_nonblocking(true).ok();
                            let mut b = [0u8; 1];
                            let r = s.read(&mut b);
                            s.set_nonblocking(false).ok();
                            matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
                        }
                    };
                    if dead {
                        *slot = tcp_from(i, registry).and_then(|mut s| {
                            ask(&mut s, &Request::Lookup(Lookup { node_id: 1 })).then_some(s)
                        });
                        counts[5].fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
    }

    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "{{\"pila\":{},\"forged_pils\":{},\"beacon\":{},\"registry_requests\":{},\"registry_reconnects\":{},\"idle_opened\":{}}}",
        c[0], c[1], c[2], c[3], c[4], c[5]
    );
}
