//! The data path: packets from the TUN device go through a smoltcp 0.14
//! interface; each accepted TCP connection becomes an overlay stream dialled
//! through the daemon's IPC socket, and bytes are bridged both ways.
//!
//! Shaped by what a measured prototype taught (ARCHITECTURE.md, "Facts
//! learned"):
//! - smoltcp runs with `any_ip` and a default route via its own address, so
//!   one interface answers every mapped 10.4.x.y; `local_endpoint()` tells
//!   which one was dialled.
//! - There is no backlog in smoltcp: a SYN needs a socket in LISTEN. Here a
//!   SYN is held until the overlay dial answers; then one socket is created
//!   listening on exactly that address and port, and the held SYN is fed to
//!   it with `poll_ingress_single`. A dial that fails becomes a RST, so the
//!   client sees "connection refused" at once, as it would from a real host,
//!   and 1,000 simultaneous SYNs each get their own socket.
//! - `poll_egress` sends one segment per socket per call: it is looped until
//!   it has nothing left.
//! - The loop never sleeps for zero (tokio's timer has 1 ms granularity):
//!   when there is more to do it yields and goes round again.
//! - The TUN MTU is large (the hop never leaves the host) and smoltcp
//!   computes outgoing checksums (the kernel verifies them).
//!
//! Backpressure: each direction of a connection is a bounded channel of
//! chunks; bytes leave a smoltcp receive buffer only when the channel has
//! room, so the TCP window closes when the overlay is slower, and the
//! overlay's reader waits when smoltcp's send buffer is full.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify};

use super::packet::{self, Kind, TcpInfo};
use super::GwShared;
use crate::ipc::{Client, Request};

/// Bytes per chunk moved between smoltcp and the overlay stream.
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction per connection (with [`CHUNK`]: 512 KiB).
const QUEUE_CHUNKS: usize = 8;
/// smoltcp buffers per connection and direction: 256 KiB, the prototype's
/// measured size for about 0.45-2.7 GB/s (ARCHITECTURE.md).
const SOCKET_BUFFER: usize = 256 * 1024;
/// Packets read from the TUN before the rest of the loop runs again.
const READ_BATCH: usize = 64;
/// Connections waiting for their overlay dial at once; more SYNs are
/// refused (RST) until some finish.
pub const MAX_PENDING_DIALS: usize = 4096;
/// Open connections at most; more SYNs are refused.
pub const MAX_CONNECTIONS: usize = 16_384;
/// ICMP echo requests waiting for an overlay ping at once; more are dropped.
const MAX_PINGS: usize = 64;
/// How long an overlay ping behind an ICMP echo may take.
const PING_TIMEOUT_MS: u64 = 2_000;

type Key = (SocketAddrV4, SocketAddrV4);

/// What background tasks hand back to the loop.
enum Event {
    /// A held SYN's dial finished.
    Dialed {
        key: Key,
        result: Result<(UnixStream, u64), String>,
    },
    /// An overlay ping finished: the echo reply to send, if the peer answered.
    Pong(Option<Vec<u8>>),
}

/// smoltcp's view of the TUN: one received packet at a time in, a queue of
/// packets out.
struct Phy {
    rx: Vec<u8>,
    rx_len: Option<usize>,
    tx: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    mtu: usize,
}

struct PhyRx<'a>(&'a [u8]);
struct PhyTx<'a> {
    tx: &'a mut Vec<Vec<u8>>,
    pool: &'a mut Vec<Vec<u8>>,
}

impl RxToken for PhyRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for PhyTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push(buf);
        r
    }
}

impl Device for Phy {
    type RxToken<'a> = PhyRx<'a>;
    type TxToken<'a> = PhyTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(PhyRx<'_>, PhyTx<'_>)> {
        let n = self.rx_len.take()?;
        Some((
            PhyRx(&self.rx[..n]),
            PhyTx {
                tx: &mut self.tx,
                pool: &mut self.pool,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<PhyTx<'_>> {
        Some(PhyTx {
            tx: &mut self.tx,
            pool: &mut self.pool,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // The kernel verified what it hands us; the kernel verifies what we
        // send, so outgoing checksums must be right.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}

/// One bridged connection.
struct Conn {
    key: Key,
    conn_id: u64,
    /// TCP -> overlay; `None` once the client's FIN was passed on.
    up: Option<mpsc::Sender<Vec<u8>>>,
    /// Overlay -> TCP.
    down: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    pending_off: usize,
    down_eof: bool,
    got_any: bool,
    closing: bool,
}

struct Stack {
    shared: Arc<GwShared>,
    iface: Interface,
    sockets: SocketSet<'static>,
    phy: Phy,
    conns: HashMap<SocketHandle, Conn>,
    by_key: HashMap<Key, SocketHandle>,
    /// Held SYNs, by connection, while their dial runs.
    pending: HashMap<Key, Vec<u8>>,
    pings: usize,
    events: mpsc::UnboundedSender<Event>,
    wake: Arc<Notify>,
    epoch: StdInstant,
}

fn now(epoch: StdInstant) -> Instant {
    Instant::from_micros(epoch.elapsed().as_micros() as i64)
}

impl Stack {
    fn new(
        shared: Arc<GwShared>,
        mtu: usize,
        events: mpsc::UnboundedSender<Event>,
        wake: Arc<Notify>,
    ) -> Stack {
        let epoch = StdInstant::now();
        let mut phy = Phy {
            rx: vec![0u8; mtu.max(1500) + 64],
            rx_len: None,
            tx: Vec::new(),
            pool: Vec::new(),
            mtu,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        let mut seed = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(config, &mut phy, now(epoch));
        let subnet = shared.cfg.subnet;
        let stack_ip = subnet.stack_ip();
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(stack_ip), subnet.prefix));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(stack_ip);
        iface.set_any_ip(true);
        Stack {
            shared,
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            pending: HashMap::new(),
            pings: 0,
            events,
            wake,
            epoch,
        }
    }

    fn ingest(&mut self, n: usize) {
        self.phy.rx_len = Some(n);
        let t = now(self.epoch);
        while self
            .iface
            .poll_ingress_single(t, &mut self.phy, &mut self.sockets)
            != PollIngressSingleResult::None
        {}
    }

    /// Handles the packet in `phy.rx[..n]`.
    fn on_packet(&mut self, n: usize) {
        match packet::classify(&self.phy.rx[..n]) {
            Kind::Tcp(t) if t.is_syn() => self.on_syn(t, n),
            Kind::Tcp(_) => self.ingest(n),
            Kind::EchoRequest { dst, .. } => self.on_echo(dst, n),
            Kind::Other => {}
        }
    }

    fn refuse(&mut self, t: &TcpInfo) {
        if let Some(rst) = packet::reset_for(t) {
            self.phy.tx.push(rst);
        }
    }

    fn on_syn(&mut self, t: TcpInfo, n: usize) {
        let key = (
            SocketAddrV4::new(t.src, t.sport),
            SocketAddrV4::new(t.dst, t.dport),
        );
        if self.by_key.contains_key(&key) {
            return self.ingest(n); // a retransmitted SYN of a live connection
        }
        if self.pending.contains_key(&key) {
            return; // the dial is still running
        }
        let cfg = &self.shared.cfg;
        let allowed = cfg.ports.is_empty() || cfg.ports.contains(&t.dport);
        let target = self
            .shared
            .table
            .lock()
            .ok()
            .and_then(|tab| tab.get(t.dst).map(|m| m.addr.clone()));
        let Some(target) = target.filter(|_| allowed) else {
            tracing::debug!(
                "refusing {}:{} (not mapped or port not allowed)",
                t.dst,
                t.dport
            );
            return self.refuse(&t);
        };
        if self.pending.len() >= MAX_PENDING_DIALS || self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("refusing {}:{}: too many connections", t.dst, t.dport);
            return self.refuse(&t);
        }
        self.pending.insert(key, self.phy.rx[..n].to_vec());
        let socket = self.shared.cfg.daemon_socket.clone();
        let timeout = self.shared.cfg.dial_timeout;
        let events = self.events.clone();
        let port = t.dport;
        tokio::spawn(async move {
            let result = dial(&socket, &target, port, timeout).await;
            if let Err(e) = &result {
                tracing::info!("dial {target}:{port} failed: {e}");
            }
            let _ = events.send(Event::Dialed { key, result });
        });
    }

    fn on_dialed(&mut self, key: Key, result: Result<(UnixStream, u64), String>) {
        let Some(syn) = self.pending.remove(&key) else {
            return;
        };
        let (stream, conn_id) = match result {
            Ok(s) => s,
            Err(_) => {
                if let Kind::Tcp(t) = packet::classify(&syn) {
                    self.refuse(&t);
                }
                return;
            }
        };
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        let (local, remote) = (key.1, key.0);
        if sock
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*local.ip())),
                port: local.port(),
            })
            .is_err()
        {
            return;
        }
        let handle = self.sockets.add(sock);
        let len = syn.len().min(self.phy.rx.len());
        self.phy.rx[..len].copy_from_slice(&syn[..len]);
        self.ingest(len);
        let state = self.sockets.get::<tcp::Socket>(handle).state();
        if state == tcp::State::Listen || state == tcp::State::Closed {
            self.sockets.remove(handle);
            spawn_reset(self.shared.cfg.daemon_socket.clone(), conn_id);
            return;
        }
        let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
        let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);
        tokio::spawn(bridge(stream, up_rx, down_tx, self.wake.clone()));
        tracing::debug!("connection {remote} -> {local} on stream {conn_id}");
        self.by_key.insert(key, handle);
        self.conns.insert(
            handle,
            Conn {
                key,
                conn_id,
                up: Some(up_tx),
                down: down_rx,
                pending: Vec::new(),
                pending_off: 0,
                down_eof: false,
                got_any: false,
                closing: false,
            },
        );
        self.shared
            .connections
            .store(self.conns.len(), Ordering::Relaxed);
    }

    fn on_echo(&mut self, dst: Ipv4Addr, n: usize) {
        if self.pings >= MAX_PINGS {
            return;
        }
        let target = self
            .shared
            .table
            .lock()
            .ok()
            .and_then(|tab| tab.get(dst).map(|m| m.addr.clone()));
        let Some(target) = target else { return };
        let Some(reply) = packet::echo_reply(&self.phy.rx[..n]) else {
            return;
        };
        self.pings += 1;
        let socket = self.shared.cfg.daemon_socket.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let ok = overlay_ping(&socket, &target).await;
            let _ = events.send(Event::Pong(ok.then_some(reply)));
        });
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Dialed { key, result } => self.on_dialed(key, result),
            Event::Pong(reply) => {
                self.pings = self.pings.saturating_sub(1);
                if let Some(r) = reply {
                    self.phy.tx.push(r);
                }
            }
        }
    }

    /// Moves bytes for every connection; true if anything happened.
    fn service(&mut self) -> bool {
        let mut progress = false;
        let mut dead = Vec::new();
        for (&h, c) in self.conns.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            // TCP -> overlay.
            let mut up_failed = false;
            while s.can_recv() {
                let Some(up) = &c.up else { break };
                let reserved = up.try_reserve();
                match reserved {
                    Ok(permit) => {
                        let chunk = s
                            .recv(|b| {
                                let n = b.len().min(CHUNK);
                                (n, b[..n].to_vec())
                            })
                            .unwrap_or_default();
                        if chunk.is_empty() {
                            break;
                        }
                        permit.send(chunk);
                        progress = true;
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        // The daemon connection failed: reset the client.
                        s.abort();
                        progress = true;
                        up_failed = true;
                        break;
                    }
                }
            }
            if up_failed {
                c.up = None;
            }
            if c.up.is_some()
                && !s.may_recv()
                && !s.can_recv()
                && s.state() != tcp::State::SynReceived
            {
                // The client's FIN: end our side of the stream.
                c.up = None;
                progress = true;
            }
            // Overlay -> TCP.
            loop {
                if c.pending_off >= c.pending.len() {
                    if c.down_eof {
                        break;
                    }
                    match c.down.try_recv() {
                        Ok(chunk) => {
                            c.pending = chunk;
                            c.pending_off = 0;
                            c.got_any = true;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            c.down_eof = true;
                            progress = true;
                            break;
                        }
                    }
                }
                if !s.can_send() {
                    break;
                }
                let n = s.send_slice(&c.pending[c.pending_off..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                c.pending_off += n;
                progress = true;
            }
            if c.down_eof && c.pending_off >= c.pending.len() && !c.closing {
                c.closing = true;
                progress = true;
                if c.got_any {
                    s.close();
                } else {
                    // The far side closed without a byte: what a refused or
                    // dead service looks like through `expose`. Tell the
                    // client at once instead of an empty reply.
                    s.abort();
                }
            }
            // An aborted socket keeps its endpoints until the next egress
            // has sent its RST (smoltcp forgets them then): removed before
            // that, the RST was never sent, and a client whose request was
            // already acknowledged waited for its own timeout.
            if s.state() == tcp::State::Closed && s.remote_endpoint().is_none() {
                dead.push(h);
            }
        }
        for h in dead {
            if let Some(c) = self.conns.remove(&h) {
                self.by_key.remove(&c.key);
                let clean = c.closing && c.up.is_none();
                if !clean {
                    // The client reset (or we aborted): reset the stream too.
                    spawn_reset(self.shared.cfg.daemon_socket.clone(), c.conn_id);
                }
            }
            self.sockets.remove(h);
            progress = true;
        }
        if progress {
            self.shared
                .connections
                .store(self.conns.len(), Ordering::Relaxed);
        }
        progress
    }

    fn egress(&mut self) {
        let t = now(self.epoch);
        while self.iface.poll_egress(t, &mut self.phy, &mut self.sockets) != PollResult::None {}
    }
}

/// Opens a stream through the daemon; the reply's `conn_id` and the
/// connection that now carries the stream's bytes.
async fn dial(
    socket: &std::path::Path,
    target: &str,
    port: u16,
    timeout: Duration,
) -> Result<(UnixStream, u64), String> {
    let mut c = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let req = Request::Dial {
        target: target.to_string(),
        port,
        timeout_ms: timeout.as_millis() as u64,
    };
    let v = c
        .request(&req, timeout + Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let id = v.get("conn_id").and_then(|v| v.as_u64()).unwrap_or(0);
    Ok((c.into_stream(), id))
}

/// One control ping through the daemon; true if the peer answered.
async fn overlay_ping(socket: &std::path::Path, target: &str) -> bool {
    let Ok(mut c) = Client::connect(socket).await else {
        return false;
    };
    let req = Request::Ping {
        target: target.to_string(),
        size: 8,
        timeout_ms: PING_TIMEOUT_MS,
        count: 1,
        interval_us: 0,
    };
    c.request(&req, Duration::from_millis(PING_TIMEOUT_MS + 1000))
        .await
        .is_ok()
}

/// Resets stream `conn_id` (the client reset its TCP connection).
fn spawn_reset(socket: std::path::PathBuf, conn_id: u64) {
    tokio::spawn(async move {
        if let Ok(mut c) = Client::connect(&socket).await {
            let req = Request::Disconnect {
                conn_id,
                force: true,
            };
            let _ = c.request(&req, Duration::from_secs(5)).await;
        }
    });
}

/// Pumps one connection's bytes between the loop's channels and the
/// daemon connection that carries its stream.
async fn bridge(
    stream: UnixStream,
    mut up: mpsc::Receiver<Vec<u8>>,
    down: mpsc::Sender<Vec<u8>>,
    wake: Arc<Notify>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let uplink = async {
        while let Some(chunk) = up.recv().await {
            wake.notify_one(); // room in the channel again
            if wr.write_all(&chunk).await.is_err() {
                drop(up); // the loop sees the channel closed and resets
                wake.notify_one();
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downlink = async {
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => {
                        if down.send(buf).await.is_err() {
                            break;
                        }
                        wake.notify_one();
                    }
                    _ => break,
                },
                _ = down.closed() => break,
            }
        }
        drop(down);
        wake.notify_one();
    };
    tokio::join!(uplink, downlink);
}

/// Runs the data path until `stop` turns true.
pub async fn run(
    dev: tun_rs::AsyncDevice,
    shared: Arc<GwShared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let wake = Arc::new(Notify::new());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mtu = usize::from(shared.cfg.mtu);
    let mut st = Stack::new(shared, mtu, ev_tx, wake.clone());
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut busy = false;
        for _ in 0..READ_BATCH {
            match dev.try_recv(&mut st.phy.rx) {
                Ok(n) => {
                    st.on_packet(n);
                    busy = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        while let Ok(ev) = ev_rx.try_recv() {
            st.on_event(ev);
            busy = true;
        }
        busy |= st.service();
        st.egress();
        if !st.phy.tx.is_empty() {
            busy = true;
            let mut out = std::mem::take(&mut st.phy.tx);
            for pkt in out.drain(..) {
                // A failed write is a lost packet; TCP recovers.
                if let Err(e) = dev.send(&pkt).await {
                    tracing::debug!("tun write: {e}");
                }
                if st.phy.pool.len() < 256 {
                    st.phy.pool.push(pkt);
                }
            }
            st.phy.tx = out;
        }
        if busy {
            tokio::task::yield_now().await;
            continue;
        }
        let t = now(st.epoch);
        let delay = st.iface.poll_delay(t, &st.sockets);
        if delay == Some(smoltcp::time::Duration::ZERO) {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = delay
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = stop.changed() => {}
            r = dev.readable() => r?,
            _ = wake.notified() => {}
            ev = ev_rx.recv() => if let Some(ev) = ev { st.on_event(ev) },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
