//! Load generator for `pilot-rendezvous` (issue 13; run by
//! `scripts/bench/rendezvous.sh`, which starts the server).
//!
//! It speaks the registry's JSON protocol over many TCP connections and
//! signs like a daemon does (src/node/registry.rs): a signed registration
//! (Ed25519 over `register:<key>:<listen>:<timestamp>`), signed heartbeats
//! and resolves. Signatures are made before each timed phase so that the
//! phase measures the server, not the generator (a real server's clients
//! sign on their own machines). Phases, each reported on its own line:
//!
//! 1. `register`: NODES fresh keys over CONNS connections, while one more
//!    connection looks up already registered ids back to back (the lookup
//!    latency during registrations: p50, p99, max);
//! 2. `lookup`: random ids for SECS seconds;
//! 3. `resolve`: signed resolves of public nodes by random requesters;
//! 4. `heartbeat`: signed heartbeats of up to HB_NODES nodes, round robin.
//!
//! With several `--registry` addresses (rendezvous instances over one
//! PostgreSQL database) the connections are spread over them, so most
//! lookups and resolves name nodes registered with another instance.
//!
//! With `--server-pid` and `--store` it also reports the server's RSS and
//! the store's size on disk. The last line is one JSON object with every
//! figure, for scripts.
//!
//! The server must run with `--no-rate-limit --no-new-id-quota` (one
//! source address, hundreds of requests per second per connection).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ed25519_dalek::{Signer, SigningKey};
use pilot::rendezvous::client;
use pilot::wire::registry::{self as wire, Lookup, NodeSigned, Register, Request, Resolve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Load generator for pilot-rendezvous.
#[derive(Debug, Parser)]
struct Args {
    /// Registry address. Given twice or more (instances over one shared
    /// database), connection `i` uses address `i mod n`, the lookup probe
    /// the last one, and each node's heartbeats go where it registered.
    #[arg(long, required = true)]
    registry: Vec<SocketAddr>,
    /// Nodes to register.
    #[arg(long, default_value_t = 100_000)]
    nodes: u32,
    /// Concurrent connections of the read and heartbeat phases.
    #[arg(long, default_value_t = 64)]
    conns: u32,
    /// Concurrent connections registering (many daemons at once).
    #[arg(long, default_value_t = 512)]
    reg_conns: u32,
    /// Registrations per second in the burst, spread evenly (open loop);
    /// 0: each connection sends its next one as soon as the last is
    /// answered (closed loop: as fast as the server goes).
    #[arg(long, default_value_t = 0.0)]
    reg_rate: f64,
    /// Lookups per second of the probe that measures lookup latency during
    /// the registrations, sent on a fixed schedule with each latency
    /// counted from the lookup's scheduled time (so a stall counts for
    /// every lookup it held back); 0: back to back, each as soon as the
    /// last is answered (the probe then adds as much load as the server
    /// answers).
    #[arg(long, default_value_t = 1000.0)]
    probe_rate: f64,
    /// Seconds per read/heartbeat phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Nodes whose heartbeats are pre-signed and sent round robin.
    #[arg(long, default_value_t = 100_000)]
    hb_nodes: u32,
    /// Nodes made public (resolve targets).
    #[arg(long, default_value_t = 1_000)]
    public_nodes: u32,
    /// Pre-signed resolve requests (cycled).
    #[arg(long, default_value_t = 100_000)]
    resolves: u32,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's pid, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's store file, to report its size (with `-wal`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seed of the node keys (a second run with the same seed re-registers
    /// the same keys).
    #[arg(long, default_value_t = 1)]
    seed: u32,
}

fn key(seed: u32, i: u32) -> SigningKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&seed.to_le_bytes());
    b[4..8].copy_from_slice(&i.to_le_bytes());
    b[8] = 0x5a;
    SigningKey::from_bytes(&b)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn frame(req: &Request) -> Vec<u8> {
    wire::encode_json_frame(req).unwrap_or_default()
}

/// One registry connection doing request/reply exchanges.
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
            buf: Vec::with_capacity(1024),
        })
    }

    /// Sends one frame and returns the reply payload.
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

fn is_error(reply: &[u8]) -> bool {
    reply.windows(15).any(|w| w == br#""type":"error""#)
}

#[derive(serde::Deserialize)]
struct RegisterReply {
    node_id: Option<u32>,
    error: Option<String>,
}

/// Runs `f` over `n` items on `threads` OS threads (key derivation and
/// signing before a phase).
fn par_map<T: Send>(n: u32, threads: usize, f: impl Fn(u32) -> T + Sync) -> Vec<T> {
    let threads = threads.max(1) as u32;
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                sc.spawn(move || {
                    let lo = (t * chunk).min(n);
                    let hi = ((t + 1) * chunk).min(n);
                    (lo..hi).map(f).collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Hammers the server with `frames` (cycled from a per-connection offset)
/// over `conns` connections for `secs`; returns (ok, errors, elapsed).
/// Connection `c` talks to `addrs[c mod n]` and cycles through
/// `frames[c mod frames.len()]`.
async fn timed_phase(
    addrs: &[SocketAddr],
    conns: u32,
    secs: u64,
    frames: Vec<Arc<Vec<Vec<u8>>>>,
) -> (u64, u64, Duration) {
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let addr = addrs[c as usize % addrs.len()];
        let frames = frames[c as usize % frames.len()].clone();
        let (ok, err, stop) = (ok.clone(), err.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                err.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let n = frames.len().max(1);
            let mut i = (c as usize * n / conns.max(1) as usize) % n;
            while !stop.load(Ordering::Relaxed) {
                let Some(f) = frames.get(i) else { return };
                match conn.call(f).await {
                    Ok(r) if !is_error(r) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => err.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        err.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                i = (i + 1) % n;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    (
        ok.load(Ordering::Relaxed),
        err.load(Ordering::Relaxed),
        elapsed,
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn store_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_os_string();
            p.push(s);
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        })
        .sum()
}

async fn run(a: Args) -> anyhow::Result<()> {
    let mut report = serde_json::Map::new();
    let n = a.nodes;
    report.insert("nodes".into(), n.into());
    report.insert("conns".into(), a.conns.into());
    report.insert("reg_conns".into(), a.reg_conns.into());
    report.insert("reg_rate".into(), a.reg_rate.into());
    report.insert("probe_rate".into(), a.probe_rate.into());

    // --- 1. registrations (with lookups alongside) ----------------------
    let t = Instant::now();
    // A timestamp 4 minutes ahead keeps the signatures acceptable (±300 s,
    // REGISTER_SIGNATURE_WINDOW) from a minute before now until 9 minutes
    // from now, long enough to register a million at > 2,000/s.
    let ts = unix_now() + 240;
    let seed = a.seed;
    let regs: Vec<Vec<u8>> = par_map(n, a.threads, |i| {
        let k = key(seed, i);
        let mut r = Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
        r.version = Some("rendezvous_load".into());
        // A LAN address as daemons report them (a string only: nothing is sent there).
        r.lan_addrs = Some(vec![format!(
            "127.{}.{}.{}:4000",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )]);
        r.timestamp = Some(ts);
        let sig = k.sign(r.signed_text().as_bytes());
        r.signature = Some(wire::b64_encode(&sig.to_bytes()));
        frame(&Request::Register(r))
    });
    eprintln!("prepared {n} signed registrations in {:.1?}", t.elapsed());

    let regs = Arc::new(regs);
    let ids: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    // Which address each node registered with.
    let insts: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let addrs = a.registry.clone();
    let next = Arc::new(AtomicU32::new(0));
    let errors = Arc::new(Mutex::new((0u64, None::<String>)));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.reg_conns {
        let (regs, ids, insts, next, errors) = (
            regs.clone(),
            ids.clone(),
            insts.clone(),
            next.clone(),
            errors.clone(),
        );
        let inst = c as usize % addrs.len();
        let addr = addrs[inst];
        let rate = a.reg_rate;
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(addr).await else {
                return;
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = regs.get(i as usize) else {
                    return;
                };
                if rate > 0.0 {
                    let due = t0 + Duration::from_secs_f64(f64::from(i) / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let reply = match conn.call(f).await {
                    Ok(r) => serde_json::from_slice::<RegisterReply>(r).ok(),
                    Err(_) => return,
                };
                match reply {
                    Some(RegisterReply {
                        node_id: Some(id), ..
                    }) => {
                        ids[i as usize].store(id, Ordering::Relaxed);
                        insts[i as usize].store(inst as u32, Ordering::Relaxed);
                    }
                    other => {
                        let mut e = errors.lock().unwrap_or_else(|e| e.into_inner());
                        e.0 += 1;
                        if e.1.is_none() {
                            e.1 = Some(other.and_then(|r| r.error).unwrap_or_default());
                        }
                    }
                }
            }
        }));
    }
    // Lookups during the registrations, on one more connection, from a
    // thread of its own with a blocking socket: a lookup client is another
    // process, and a task among the 512 registering ones measured the
    // generator's own queueing as well as the server's.
    let probe = {
        let (ids, next, done) = (ids.clone(), next.clone(), done.clone());
        let probe_rate = a.probe_rate;
        let addr = addrs[addrs.len() - 1];
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut lat = Vec::new();
            let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
                return lat;
            };
            let _ = conn.set_nodelay(true);
            let mut buf = Vec::with_capacity(1024);
            let mut x: u32 = 0x9e37_79b9;
            let interval = (probe_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / probe_rate));
            let mut due: Option<Instant> = None;
            while !done.load(Ordering::Relaxed) {
                // A node whose registration was acknowledged (with two
                // instances the ids come in blocks, so an id below the
                // highest one may belong to nobody yet).
                let started = next.load(Ordering::Relaxed).min(ids.len() as u32);
                if started == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let node_id = ids[(x % started) as usize].load(Ordering::Relaxed);
                if node_id == 0 {
                    continue;
                }
                let s = match interval {
                    Some(iv) => {
                        let at = due.map_or_else(Instant::now, |d| d + iv);
                        due = Some(at);
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        at
                    }
                    None => Instant::now(),
                };
                let f = frame(&Request::Lookup(Lookup { node_id }));
                let mut len = [0u8; 4];
                if conn.write_all(&f).is_err() || conn.read_exact(&mut len).is_err() {
                    break;
                }
                buf.resize(u32::from_be_bytes(len) as usize, 0);
                if conn.read_exact(&mut buf).is_err() {
                    break;
                }
                lat.push(s.elapsed());
            }
            lat
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    let reg_time = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut lat = probe.join().unwrap_or_default();
    lat.sort_unstable();
    let (reg_errors, first_error) = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let registered = ids
        .iter()
        .filter(|i| i.load(Ordering::Relaxed) != 0)
        .count() as u64;
    let reg_rate = registered as f64 / reg_time.as_secs_f64();
    println!(
        "register   {registered} nodes in {:.1} s = {reg_rate:.0}/s ({reg_errors} errors{}); lookups meanwhile: {} at p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        reg_time.as_secs_f64(),
        first_error.map(|e| format!(", first: {e}")).unwrap_or_default(),
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    report.insert("registered".into(), registered.into());
    report.insert("register_seconds".into(), reg_time.as_secs_f64().into());
    report.insert("register_per_s".into(), reg_rate.round().into());
    report.insert("register_errors".into(), reg_errors.into());
    report.insert(
        "lookup_during_register_p50_ms".into(),
        ms(percentile(&lat, 0.5)).into(),
    );
    report.insert(
        "lookup_during_register_p99_ms".into(),
        ms(percentile(&lat, 0.99)).into(),
    );
    report.insert(
        "lookup_during_register_max_ms".into(),
        ms(lat.last().copied().unwrap_or_default()).into(),
    );
    let id_of = |i: u32| ids.get(i as usize).map_or(0, |x| x.load(Ordering::Relaxed));
    let known: Vec<u32> = (0..n).filter(|&i| id_of(i) != 0).collect();
    if known.is_empty() {
        anyhow::bail!("no node registered");
    }
    if let Some(pid) = a.server_pid {
        // Let the last batch land before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(kib) = rss_kib(pid) {
            println!(
                "rss        {:.0} MiB with {registered} nodes",
                kib as f64 / 1024.0
            );
            report.insert("rss_mib".into(), (kib as f64 / 1024.0).round().into());
        }
    }
    if let Some(store) = &a.store {
        let b = store_bytes(store);
        println!(
            "store      {:.1} MB ({} incl. -wal)",
            b as f64 / 1e6,
            store.display()
        );
        report.insert("store_mb".into(), (b as f64 / 1e6).into());
    }

    // --- 2. lookups ------------------------------------------------------
    let mut x: u32 = 12345;
    let lookups: Vec<Vec<u8>> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = known[x as usize % known.len()];
            frame(&Request::Lookup(Lookup { node_id: id_of(i) }))
        })
        .collect();
    let (ok, err, el) = timed_phase(&addrs, a.conns, a.secs, vec![Arc::new(lookups)]).await;
    let rate = ok as f64 / el.as_secs_f64();
    println!(
        "lookup     {rate:.0}/s ({ok} ok, {err} errors, {} conns)",
        a.conns
    );
    report.insert("lookup_per_s".into(), rate.round().into());

    // --- 3. resolves -----------------------------------------------------
    let publics: Vec<u32> = known
        .iter()
        .copied()
        .take(a.public_nodes as usize)
        .collect();
    {
        let mut conn = Conn::open(addrs[0]).await?;
        for &i in &publics {
            let req = client::sign(
                Request::SetVisibility(wire::SetVisibility {
                    node_id: id_of(i),
                    public: true,
                    signature: None,
                }),
                &key(seed, i),
            );
            conn.call(&frame(&req)).await?;
        }
    }
    let count = a.resolves.min(known.len() as u32 * 4).max(1);
    let resolves: Vec<Vec<u8>> = par_map(count, a.threads, |j| {
        let requester = known[(j as usize * 7919) % known.len()];
        let target = publics[j as usize % publics.len().max(1)];
        frame(&client::sign(
            Request::Resolve(Resolve {
                node_id: id_of(target),
                requester_id: id_of(requester),
                signature: None,
            }),
            &key(seed, requester),
        ))
    });
    let (ok, err, el) = timed_phase(&addrs, a.conns, a.secs, vec![Arc::new(resolves)]).await;
    let rate = ok as f64 / el.as_secs_f64();
    println!("resolve    {rate:.0}/s ({ok} ok, {err} errors)");
    report.insert("resolve_per_s".into(), rate.round().into());

    // --- 4. heartbeats ---------------------------------------------------
    // Each node heartbeats the instance it registered with, as a daemon does.
    let mut heartbeats = Vec::new();
    for inst in 0..addrs.len() {
        let hb: Vec<u32> = known
            .iter()
            .copied()
            .take(a.hb_nodes as usize)
            .filter(|&i| insts[i as usize].load(Ordering::Relaxed) as usize == inst)
            .collect();
        heartbeats.push(Arc::new(par_map(hb.len() as u32, a.threads, |j| {
            let i = hb[j as usize];
            frame(&client::sign(
                Request::Heartbeat(NodeSigned {
                    node_id: id_of(i),
                    signature: None,
                }),
                &key(seed, i),
            ))
        })));
    }
    let (ok, err, el) = timed_phase(&addrs, a.conns, a.secs, heartbeats).await;
    let rate = ok as f64 / el.as_secs_f64();
    println!(
        "heartbeat  {rate:.0}/s ({ok} ok, {err} errors); {:.0} nodes at one per 60 s",
        rate * 60.0
    );
    report.insert("heartbeat_per_s".into(), rate.round().into());
    if let Some(pid) = a.server_pid {
        if let Some(kib) = rss_kib(pid) {
            println!("rss        {:.0} MiB at the end", kib as f64 / 1024.0);
            report.insert("rss_end_mib".into(), (kib as f64 / 1024.0).round().into());
        }
    }
    if let Some(store) = &a.store {
        report.insert(
            "store_end_mb".into(),
            (store_bytes(store) as f64 / 1e6).into(),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rendezvous_load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rendezvous_load: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
