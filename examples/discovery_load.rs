//! Load generator for discovery (`find_nodes`, issue 12; run by
//! `scripts/bench/discovery.sh`, which starts the server).
//!
//! Setup: NODES fresh keys register over CONNS connections; each sets
//! TAGS tags drawn from a vocabulary of VOCAB (`cap-0` .. `cap-<VOCAB-1>`,
//! so a tag is carried by about NODES x TAGS / VOCAB nodes) with a signed
//! `set_tags`, and every third node turns public with a signed
//! `set_visibility` (so the privacy filter has work to do).
//!
//! Phases, each reported on its own line (latency = one request's round
//! trip on loopback, p50 / p95 / p99 / max):
//! 1. `find1`: QUERIES single-tag `find_nodes` back to back on one
//!    connection, each from a random registered requester (signed, like
//!    `pilotctl find --tag` through a daemon), default limit (100);
//! 2. `find2`: the same with two tags (both carried by one node, so the
//!    answer is never empty);
//! 3. `find_conc`: single-tag finds over QCONNS connections at once for
//!    SECS seconds: throughput and latency under load.
//!
//! Signatures are made before each timed phase. The last line is one JSON
//! object with every figure. The server must run with `--no-rate-limit
//! --no-new-id-quota` (one source address).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use ed25519_dalek::{Signer, SigningKey};
use pilot::wire::networks::{FindNodes, NetRequest, SetTags};
use pilot::wire::registry::{self as wire, Register, Request, SetVisibility};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Load generator for discovery on pilot-rendezvous.
#[derive(Debug, Parser)]
struct Args {
    /// Registry address.
    #[arg(long)]
    registry: SocketAddr,
    /// Nodes to register.
    #[arg(long, default_value_t = 100_000)]
    nodes: u32,
    /// Tags per node.
    #[arg(long, default_value_t = 10)]
    tags: u32,
    /// Distinct tags in use.
    #[arg(long, default_value_t = 1_000)]
    vocab: u32,
    /// Connections registering and tagging at once.
    #[arg(long, default_value_t = 256)]
    conns: u32,
    /// Queries of the sequential phases.
    #[arg(long, default_value_t = 5_000)]
    queries: u32,
    /// Connections of the concurrent phase.
    #[arg(long, default_value_t = 8)]
    qconns: u32,
    /// Seconds of the concurrent phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
}

fn key(i: u32) -> SigningKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[8] = 0xd1;
    SigningKey::from_bytes(&b)
}

/// Node `i`'s tags: TAGS distinct entries of the vocabulary.
fn tags_of(i: u32, n: u32, vocab: u32) -> Vec<String> {
    (0..n)
        .map(|k| {
            format!(
                "cap-{}",
                (i.wrapping_mul(7) + k * (vocab / n.max(1)).max(1)) % vocab
            )
        })
        .collect()
}

fn sign(req: Request, k: &SigningKey) -> Vec<u8> {
    let mut req = req;
    if let Some((_, text)) = req.signed_string() {
        req.set_signature(&k.sign(text.as_bytes()).to_bytes());
    }
    wire::encode_json_frame(&req).unwrap_or_default()
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn call(&mut self, frame: &[u8]) -> std::io::Result<&[u8]> {
        self.s.write_all(frame).await?;
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).await?;
        let n = u32::from_be_bytes(len) as usize;
        self.buf.resize(n, 0);
        self.s.read_exact(&mut self.buf).await?;
        Ok(&self.buf)
    }
}

fn error_of(reply: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(reply).ok()?;
    (v["type"] == "error").then(|| v["error"].as_str().unwrap_or("?").to_string())
}

/// A tiny deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(name: &str, mut lat: Vec<Duration>, results: u64, secs: f64) -> serde_json::Value {
    lat.sort_unstable();
    let n = lat.len();
    let (p50, p95, p99, max) = (
        pct(&lat, 0.50),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    let rate = n as f64 / secs.max(1e-9);
    println!(
        "{name:<10} {n} queries, {rate:.0}/s, p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, mean {:.1} nodes per answer",
        results as f64 / n.max(1) as f64
    );
    serde_json::json!({"queries": n, "per_s": rate, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max, "mean_nodes": results as f64 / n.max(1) as f64})
}

/// Pre-signed `find_nodes` frames for a phase.
fn find_frames(
    ids: &[(u32, SigningKey)],
    a: &Args,
    count: u32,
    two: bool,
    seed: u64,
) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let (id, k) = &ids[rng.below(ids.len() as u32) as usize];
            let tags = if two {
                // Two tags of one node: the answer is never empty.
                let t = tags_of(rng.below(a.nodes), a.tags, a.vocab);
                vec![t[0].clone(), t[t.len() / 2].clone()]
            } else {
                vec![format!("cap-{}", rng.below(a.vocab))]
            };
            sign(
                Request::Network(NetRequest::FindNodes(FindNodes {
                    requester_id: *id,
                    tags,
                    query: None,
                    network_id: None,
                    limit: None,
                    signature: None,
                })),
                k,
            )
        })
        .collect()
}

fn count_nodes(reply: &[u8]) -> u64 {
    // Cheap: count the entries' "node_id" keys.
    reply.windows(9).filter(|w| w == b"\"node_id\"").count() as u64
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let a = Arc::new(a);

    // Setup: register, tag, a third public.
    let t0 = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let ids: Arc<Mutex<Vec<(u32, SigningKey)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..a.conns {
        let (a, next, ids) = (a.clone(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(a.registry).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.nodes {
                    return Ok::<(), std::io::Error>(());
                }
                let k = key(i);
                let reg = Register::new(&k.verifying_key().to_bytes(), "0.0.0.0:4000");
                let reply = c
                    .call(&wire::encode_json_frame(&Request::Register(reg)).unwrap_or_default())
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(reply).unwrap_or_default();
                let Some(id) = v["node_id"].as_u64().map(|x| x as u32) else {
                    eprintln!("register {i}: {v}");
                    continue;
                };
                let set = sign(
                    Request::Network(NetRequest::SetTags(SetTags {
                        node_id: id,
                        tags: tags_of(i, a.tags, a.vocab),
                        signature: None,
                    })),
                    &k,
                );
                if let Some(e) = error_of(c.call(&set).await?) {
                    eprintln!("set_tags {id}: {e}");
                }
                if i % 3 == 0 {
                    let vis = sign(
                        Request::SetVisibility(SetVisibility {
                            node_id: id,
                            public: true,
                            signature: None,
                        }),
                        &k,
                    );
                    if let Some(e) = error_of(c.call(&vis).await?) {
                        eprintln!("set_visibility {id}: {e}");
                    }
                }
                if let Ok(mut g) = ids.lock() {
                    if g.len() < 1000 {
                        g.push((id, k));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let setup = t0.elapsed().as_secs_f64();
    println!(
        "setup      {} nodes registered, {} tags each ({} distinct), a third public, in {setup:.1} s",
        a.nodes, a.tags, a.vocab
    );
    let ids: Vec<(u32, SigningKey)> = ids.lock().map(|g| g.clone()).unwrap_or_default();

    let mut c = Conn::open(a.registry).await?;
    let mut report = serde_json::json!({"nodes": a.nodes, "tags_per_node": a.tags, "vocab": a.vocab, "setup_s": setup});
    for (name, two) in [("find1", false), ("find2", true)] {
        let frames = find_frames(&ids, &a, a.queries, two, if two { 2 } else { 1 });
        let mut lat = Vec::with_capacity(frames.len());
        let mut results = 0;
        let start = Instant::now();
        for f in &frames {
            let t = Instant::now();
            let reply = c.call(f).await?;
            lat.push(t.elapsed());
            if let Some(e) = error_of(reply) {
                return Err(format!("{name}: {e}").into());
            }
            results += count_nodes(reply);
        }
        report[name] = summary(name, lat, results, start.elapsed().as_secs_f64());
    }

    // Concurrent phase.
    let frames = Arc::new(find_frames(&ids, &a, 20_000, false, 3));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for q in 0..a.qconns {
        let (frames, stop, addr) = (frames.clone(), stop.clone(), a.registry);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await?;
            let mut lat = Vec::new();
            let mut results = 0;
            let mut i = q as usize * 997;
            while !stop.load(Ordering::Relaxed) {
                let f = &frames[i % frames.len()];
                i += 1;
                let t = Instant::now();
                let reply = c.call(f).await?;
                lat.push(t.elapsed());
                results += count_nodes(reply);
            }
            Ok::<_, std::io::Error>((lat, results))
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut results) = (Vec::new(), 0);
    for t in tasks {
        let (l, r) = t.await??;
        lat.extend(l);
        results += r;
    }
    report["find_conc"] = summary(
        &format!("find x{}", a.qconns),
        lat,
        results,
        start.elapsed().as_secs_f64(),
    );
    report["qconns"] = a.qconns.into();
    println!("{report}");
    Ok(())
}
