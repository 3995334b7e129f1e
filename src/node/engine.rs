//! The node's event loop: one task that owns the UDP socket's receive side,
//! the peer table and every tunnel session, so the data path needs no locks.
//!
//! Inputs are datagrams, commands (from IPC handlers and from the helper
//! tasks that talk to the registry) and a 100 ms housekeeping tick. Registry
//! round trips never block the loop: they run in spawned tasks that post
//! their results back as [`Cmd`]s.
//!
//! Security rules of spec §12 applied here: PILT and PILK are refused while
//! encryption is on (§12.6, §12.7); beacon messages are accepted only from
//! the configured beacon (§12.8); a decrypted packet whose inner source is
//! not the authenticated sender, or whose destination is not us, is dropped
//! and counted (§12.10); control pings are answered only from a non-zero
//! source port (§12.11); a PILA with an unchanged X25519 key keeps the
//! current session (§12.9).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::keys::{KeyHistory, Verdict};
use super::peer::{Peer, MAX_QUEUEING_PEERS};
use super::registry::RegError;
use super::stream_table::{AppLink, StreamTable};
use super::udp::{self, TxBatch};
use super::Shared;
use crate::crypto::tunnel::{derive_tunnel_key, sign_auth, verify_auth, KeyPair, Session};
use crate::ipc::proto::{
    DatagramData, InfoData, ListenEvent, PeerData, PeersData, PingData, Stats,
};
use crate::ipc::{ErrorCode, Response};
use crate::ratelimit::{Bucket, Limiter};
use crate::wire::address::Addr;
use crate::wire::beacon;
use crate::wire::frame::{AuthKeyRepr, Frame, PILS_HEADER_LEN, TAG_LEN};
use crate::wire::header::{self, Flags, Protocol, Repr};

/// Beacon relay header: type + sender id + destination id (spec §5.1).
const RELAY_HEADER_LEN: usize = 9;
/// Where the plaintext packet starts in the send buffer.
pub(super) const PLAIN_AT: usize = RELAY_HEADER_LEN + PILS_HEADER_LEN;
/// Largest UDP datagram we read or build.
const MAX_DATAGRAM: usize = 65_535;
/// Requested UDP socket buffer size (the kernel caps it at rmem_max/wmem_max).
const SOCKET_BUFFER: usize = 8 << 20;
/// Housekeeping period: ping timeouts, PILA retries.
const TICK: Duration = Duration::from_millis(100);
/// Interval between PILA resends while packets wait for a session.
const PILA_RETRY: Duration = Duration::from_secs(1);
/// PILA resends before queued packets are given up.
const PILA_MAX_ATTEMPTS: u32 = 8;
/// Minimum spacing of PILA answers to a peer whose key we already have, and
/// of answers to undecryptable frames (spec §12.12 suggests 5 s; one second
/// keeps restart recovery quick while bounding reflection).
const PILA_ANSWER_SPACING: Duration = Duration::from_secs(1);
/// Senders remembered for rate-limiting answers to undecryptable frames.
const MAX_STALE_ANSWERS: usize = 4096;
/// PILA verifications per second from one source IP, and burst (issue 10
/// item 2: a peer sends a handful per tunnel set-up; an Ed25519
/// verification costs ~50 µs, so the global rate bounds PILA work to a few
/// percent of one core).
const PILA_PER_SOURCE: (f64, f64) = (20.0, 40.0);
/// PILA verifications per second in total, and burst.
const PILA_GLOBAL: (f64, f64) = (500.0, 1000.0);
/// Source addresses tracked by the PILA limiter.
const PILA_SOURCES: usize = 4096;
/// Registry key lookups in flight at once for PILAs of unknown senders
/// (issue 10 item 3: excess PILAs are dropped, never queued).
const MAX_KEY_LOOKUPS: usize = 8;
/// Sealed frames kept per sender while its PILA waits for the registry's
/// key: a peer that learnt our key first (from our PILA sent on a punch
/// command) seals its first packets before we can open them, and a
/// datagram sent then was lost (a broadcast to a new member arrived 1 time
/// in 10 under load). Bounded in count and bytes, and only while a lookup
/// is in flight ([`MAX_KEY_LOOKUPS`] senders at most: 8 x 64 KiB).
const EARLY_FRAMES: usize = 16;
/// See [`EARLY_FRAMES`].
const EARLY_BYTES: usize = 64 * 1024;
/// How long a failed key lookup is remembered (negative cache).
const NEGATIVE_KEY_TTL: Duration = Duration::from_secs(30);
/// Negative-cache entries kept.
const MAX_NEGATIVE_KEYS: usize = 4096;
/// Answers (PILA, 136 bytes) to undecryptable frames from senders that do
/// not look like a known peer, per second and burst, all sources together
/// (issue 10 item 4: bounds reflection to ~1.4 KB/s).
const STALE_ANSWER_BUDGET: (f64, f64) = (10.0, 20.0);
/// First ephemeral port (spec §2.5).
pub(super) const EPHEMERAL_START: u16 = 49152;

/// A command for the event loop.
pub enum Cmd {
    /// `info`.
    Info(oneshot::Sender<Response>),
    /// `peers`.
    Peers(oneshot::Sender<Response>),
    /// One control ping to `addr`.
    Ping {
        /// Destination.
        addr: Addr,
        /// Payload size.
        size: usize,
        /// Reply deadline.
        timeout: Duration,
        /// Where the result goes.
        reply: oneshot::Sender<Response>,
    },
    /// The registry's Ed25519 key for a peer whose PILA is waiting.
    PeerKey {
        /// The peer.
        node: u32,
        /// The registry's answer.
        key: Result<[u8; 32], RegError>,
    },
    /// The registry's endpoint for a peer we want to reach.
    Resolved {
        /// The peer.
        node: u32,
        /// The registry's answer.
        result: Result<super::path::Resolution, RegError>,
    },
    /// Re-announce ourselves to the beacon (after registration/heartbeat).
    Discover,
    /// Open a stream.
    Dial {
        /// Destination.
        addr: Addr,
        /// Destination port.
        port: u16,
        /// Give up after this long.
        timeout: Duration,
        /// The application end.
        link: AppLink,
        /// Connected, refused or timed out.
        reply: oneshot::Sender<Response>,
    },
    /// Listen on a port; accepted streams are announced on `events`.
    Listen {
        /// The port.
        port: u16,
        /// Where accept events go.
        events: mpsc::Sender<ListenEvent>,
        /// Result.
        reply: oneshot::Sender<Response>,
    },
    /// The listening client went away.
    Unlisten(u16),
    /// Take an accepted stream.
    Attach {
        /// Stream id.
        conn_id: u64,
        /// The application end.
        link: AppLink,
        /// Result.
        reply: oneshot::Sender<Response>,
    },
    /// Application bytes for a stream.
    AppData(u64, Vec<u8>),
    /// The application finished sending.
    AppEof(u64),
    /// The application disconnected.
    AppGone(u64),
    /// The application's receive queue has room again.
    Drained(u64),
    /// The application's socket may hold bytes ([`super::appsock`]).
    AppReadable(u64),
    /// The application's socket may take bytes ([`super::appsock`]).
    AppWritable(u64),
    /// `connections`.
    Connections(oneshot::Sender<Response>),
    /// `disconnect`.
    Disconnect {
        /// Stream id.
        conn_id: u64,
        /// Reset instead of a graceful close.
        force: bool,
        /// Result.
        reply: oneshot::Sender<Response>,
    },
    /// Send a datagram.
    SendDatagram {
        /// Destination.
        addr: Addr,
        /// Destination port.
        port: u16,
        /// Payload.
        data: Vec<u8>,
        /// Result.
        reply: oneshot::Sender<Response>,
    },
    /// Add (`true`) or remove a peer from the trust gate; removal resets
    /// the peer's open streams (see `streams.rs`).
    SetTrust(u32, bool),
    /// Replace the set of fellow network members the gate admits; peers
    /// that drop out (and are not trusted) have their streams reset.
    SetNetworkPeers(HashSet<u32>),
    /// Receive datagrams on a port.
    RecvDatagrams {
        /// The port.
        port: u16,
        /// Result, and the queue of datagrams on success.
        reply: oneshot::Sender<(Response, Option<mpsc::Receiver<DatagramData>>)>,
    },
}

pub(super) struct PendingPing {
    sent: Instant,
    deadline: Instant,
    pub(super) seq: u32,
    pub(super) size: usize,
    reply: oneshot::Sender<Response>,
}

/// A PILA waiting for the registry to confirm the sender's key.
struct WaitingPila {
    pila: AuthKeyRepr,
    from: SocketAddr,
    via_relay: bool,
    /// Sealed frames that arrived meanwhile: (source, frame, relay sender),
    /// opened once the key is confirmed ([`EARLY_FRAMES`]).
    early: Vec<(SocketAddr, Vec<u8>, Option<u32>)>,
    early_bytes: usize,
}

/// The event loop's state.
pub struct Engine {
    pub(super) shared: Arc<Shared>,
    /// The beacon in use: that of the registry instance the registry
    /// connection is on ([`Shared::beacons`], `beacon_index`).
    pub(super) beacon: Option<SocketAddr>,
    beacon_index: usize,
    socket: Arc<UdpSocket>,
    pub(super) node_id: u32,
    xkeys: KeyPair,
    pub(super) pila_frame: Vec<u8>,
    pub(super) peers: HashMap<u32, Peer>,
    waiting_pila: HashMap<u32, WaitingPila>,
    stale_answers: HashMap<u32, Instant>,
    key_history: KeyHistory,
    pila_limit: Limiter<std::net::IpAddr>,
    key_lookups: HashSet<u32>,
    negative_keys: HashMap<u32, Instant>,
    stale_budget: Bucket,
    pub(super) pings: HashMap<(u32, u16), PendingPing>,
    next_port: u16,
    next_ping_seq: u32,
    pub(super) stats: Stats,
    pub(super) cmd_tx: mpsc::Sender<Cmd>,
    pub(super) sbuf: Vec<u8>,
    tx: TxBatch,
    pub(super) streams: StreamTable,
    pub(super) app_buf: Vec<u8>,
    /// Peers admitted by the SYN/datagram gate of a private node (filled
    /// by the trust handshake).
    pub(super) trusted: HashSet<u32>,
    /// Fellow members of our networks, also admitted by the gate (filled
    /// by `networks.rs` from the registry's membership long-poll).
    pub(super) network_peers: HashSet<u32>,
    /// NAT traversal and path state (path.rs).
    pub(super) nat: super::path::NatState,
}

impl Engine {
    /// Builds the loop's state for a registered node.
    pub fn new(
        shared: Arc<Shared>,
        socket: Arc<UdpSocket>,
        node_id: u32,
        cmd_tx: mpsc::Sender<Cmd>,
    ) -> Engine {
        let xkeys = KeyPair::generate(&mut OsRng);
        let beacon = shared.beacons.first().copied();
        let sig = sign_auth(&shared.identity, node_id, &xkeys.public());
        let pila = AuthKeyRepr {
            sender: node_id,
            x25519: xkeys.public(),
            ed25519: shared.identity.public_key(),
            signature: sig,
        };
        // Room for full windows of several streams, and batched receive.
        udp::set_buffers(&socket, SOCKET_BUFFER);
        if !udp::enable_gro(&socket) {
            tracing::debug!("UDP GRO unavailable; receiving one datagram per call");
        }
        let shared_admission = shared.config.admission.clone();
        let shared_echo = shared.config.echo;
        let probe_port = EPHEMERAL_START;
        let mut pila_frame = vec![0u8; crate::wire::frame::PILA_LEN];
        let n = pila.emit(&mut pila_frame).unwrap_or(0);
        pila_frame.truncate(n);
        Engine {
            shared,
            socket,
            node_id,
            xkeys,
            pila_frame,
            peers: HashMap::new(),
            waiting_pila: HashMap::new(),
            stale_answers: HashMap::new(),
            key_history: KeyHistory::default(),
            pila_limit: Limiter::new(
                PILA_GLOBAL.0,
                PILA_GLOBAL.1,
                PILA_PER_SOURCE.0,
                PILA_PER_SOURCE.1,
                PILA_SOURCES,
                Instant::now(),
            ),
            key_lookups: HashSet::new(),
            negative_keys: HashMap::new(),
            stale_budget: Bucket::new(STALE_ANSWER_BUDGET.1, Instant::now()),
            pings: HashMap::new(),
            next_port: EPHEMERAL_START + 1,
            next_ping_seq: 1,
            stats: Stats::default(),
            cmd_tx,
            sbuf: vec![0u8; RELAY_HEADER_LEN + MAX_DATAGRAM + TAG_LEN],
            tx: TxBatch::default(),
            streams: StreamTable::new(shared_admission, shared_echo, Instant::now()),
            app_buf: vec![0u8; super::stream_table::APP_CHUNK],
            trusted: HashSet::new(),
            network_peers: HashSet::new(),
            nat: super::path::NatState::new(probe_port),
            beacon,
            beacon_index: 0,
        }
    }

    /// Runs until `shutdown` fires.
    pub async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut rbuf = crate::iobuf::PageBuf::new(MAX_DATAGRAM);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.send_discover();
        loop {
            tokio::select! {
                r = self.socket.readable() => {
                    if let Err(e) = r {
                        tracing::debug!("udp readable: {e}");
                    }
                    // Drain what is ready without going back through select;
                    // each read may carry a GRO run of datagrams.
                    for _ in 0..64 {
                        match udp::recv_segments(&self.socket, &mut rbuf) {
                            Ok((n, from, segment)) => {
                                let now = Instant::now();
                                let mut at = 0;
                                while at < n {
                                    let end = (at + segment).min(n);
                                    self.handle_datagram(from, &mut rbuf[at..end], now);
                                    at = end;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::debug!("udp recv: {e}");
                                break;
                            }
                        }
                    }
                },
                Some(cmd) = cmds.recv() => {
                    self.handle_cmd(cmd, Instant::now());
                    // Batch what is already queued (application data).
                    for _ in 0..64 {
                        match cmds.try_recv() {
                            Ok(cmd) => self.handle_cmd(cmd, Instant::now()),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(earliest(self.streams.next_timer(), self.nat.next_early_relay)) => {
                    let now = Instant::now();
                    self.early_relay_timer(now);
                    self.stream_timers(now);
                }
                _ = tick.tick() => self.housekeeping(Instant::now()),
                _ = shutdown.changed() => break,
            }
            self.flush_dirty(Instant::now());
            self.tx.flush(&self.socket);
        }
    }

    /// Queues `sbuf[range]` as one datagram to `to` (sent in a batch at
    /// the end of the loop iteration, or earlier when the batch is full).
    fn send_to(&mut self, bytes_range: std::ops::Range<usize>, to: SocketAddr) {
        let Engine {
            sbuf,
            tx,
            socket,
            stats,
            ..
        } = self;
        let Some(bytes) = sbuf.get(bytes_range) else {
            return;
        };
        tx.push(socket, bytes, to);
        stats.datagrams_out += 1;
        stats.bytes_out += bytes.len() as u64;
    }

    /// Sends the datagrams queued for the batch now.
    pub(super) fn flush_tx(&mut self) {
        self.tx.flush(&self.socket);
    }

    pub(super) fn send_raw(&mut self, bytes: &[u8], to: SocketAddr) {
        self.tx.push(&self.socket, bytes, to);
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
    }

    /// After the registry connection failed over to another instance
    /// (`--registry A,B`), uses that instance's beacon too and announces
    /// ourselves there: the dead instance's beacon can no longer relay or
    /// punch for us.
    fn follow_registry_instance(&mut self) {
        let k = self.shared.registry.current();
        if k == self.beacon_index {
            return;
        }
        self.beacon_index = k;
        let Some(&b) = self.shared.beacons.get(k).or(self.shared.beacons.first()) else {
            return;
        };
        if self.beacon != Some(b) {
            tracing::info!(beacon = %b, "the registry failed over; using its instance's beacon");
            self.beacon = Some(b);
            self.send_discover();
        }
    }

    fn send_discover(&mut self) {
        if let Some(b) = self.beacon {
            let msg = beacon::encode_discover(self.node_id);
            self.send_raw(&msg, b);
        }
    }

    // ---------------------------------------------------------------- input

    fn handle_datagram(&mut self, from: SocketAddr, data: &mut [u8], now: Instant) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        self.handle_frame(from, data, None, now);
    }

    /// One tunnel frame, arrived directly (`relay_sender` None) or inside a
    /// relay delivery from the beacon.
    fn handle_frame(
        &mut self,
        from: SocketAddr,
        data: &mut [u8],
        relay_sender: Option<u32>,
        now: Instant,
    ) {
        let kind = match Frame::parse(data) {
            Ok(f) => f,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match kind {
            Frame::Beacon(_) if relay_sender.is_none() => self.handle_beacon(from, data, now),
            Frame::Beacon(_) => self.stats.dropped_malformed += 1,
            Frame::AuthKey(pila) => self.handle_pila(pila, from, relay_sender, now),
            Frame::Sealed { sender, .. } => {
                self.handle_sealed(sender, from, data, relay_sender, now)
            }
            Frame::Plain(_) | Frame::Key { .. } => self.stats.dropped_plaintext += 1,
            Frame::Punch => {}
        }
    }

    fn handle_beacon(&mut self, from: SocketAddr, data: &mut [u8], now: Instant) {
        // Any configured beacon: a relay delivery from the previous
        // instance may still arrive just after a failover.
        if !self.shared.beacons.contains(&from) {
            self.stats.dropped_beacon_source += 1;
            return;
        }
        let (punch_to, relay) = match beacon::Repr::parse_bytes(data) {
            Ok(beacon::Repr::DiscoverReply { endpoint }) => {
                self.on_observed(endpoint, now);
                (None, None)
            }
            Ok(beacon::Repr::PunchCommand { endpoint }) => (Some(endpoint), None),
            Ok(beacon::Repr::RelayDelivery { sender, .. }) => (None, Some(sender)),
            Ok(_) => (None, None),
            Err(_) => {
                self.stats.dropped_malformed += 1;
                (None, None)
            }
        };
        if let Some(ep) = punch_to {
            // Rate-limited there: it makes us send to an address we did not
            // choose (spec §12.8).
            self.on_punch_command(ep, now);
        }
        if let Some(sender) = relay {
            // 0x06 | sender(4) | frame
            if let Some(inner) = data.get_mut(5..) {
                self.handle_frame(from, inner, Some(sender), now);
            }
        }
    }

    fn handle_pila(
        &mut self,
        pila: AuthKeyRepr,
        from: SocketAddr,
        relay_sender: Option<u32>,
        now: Instant,
    ) {
        if pila.sender == self.node_id
            || pila.sender == 0
            || relay_sender.is_some_and(|s| s != pila.sender)
        {
            self.stats.dropped_auth += 1;
            return;
        }
        // Unauthenticated work: rate-limited per source and in total.
        if !self.pila_limit.allow(&from.ip(), now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let node = pila.sender;
        if self
            .peers
            .get(&node)
            .is_some_and(|p| p.ed25519 == Some(pila.ed25519))
        {
            self.install_pila(pila, from, relay_sender.is_some(), now);
            return;
        }
        // Key unknown or changed: ask the registry (spec §4.3 steps 2-3),
        // with a bounded number of lookups in flight and no peer entry
        // before verification (issue 10 item 3).
        if self
            .negative_keys
            .get(&node)
            .is_some_and(|t| now.duration_since(*t) < NEGATIVE_KEY_TTL)
        {
            self.stats.dropped_auth += 1;
            return;
        }
        let in_flight = self.key_lookups.contains(&node);
        if !in_flight && self.key_lookups.len() >= MAX_KEY_LOOKUPS {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let via_relay = relay_sender.is_some();
        match self.waiting_pila.get_mut(&node) {
            Some(w) => (w.pila, w.from, w.via_relay) = (pila, from, via_relay),
            None => {
                self.waiting_pila.insert(
                    node,
                    WaitingPila {
                        pila,
                        from,
                        via_relay,
                        early: Vec::new(),
                        early_bytes: 0,
                    },
                );
            }
        }
        if !in_flight {
            self.key_lookups.insert(node);
            let shared = self.shared.clone();
            let tx = self.cmd_tx.clone();
            tokio::spawn(async move {
                let key = shared.registry.lookup_key(node).await;
                let _ = tx.send(Cmd::PeerKey { node, key }).await;
            });
        }
    }

    fn on_peer_key(&mut self, node: u32, key: Result<[u8; 32], RegError>, now: Instant) {
        self.key_lookups.remove(&node);
        let waiting = self.waiting_pila.remove(&node);
        match key {
            Ok(k) => {
                if let Some(peer) = self.peers.get_mut(&node) {
                    peer.ed25519 = Some(k);
                }
                let Some(w) = waiting else {
                    return;
                };
                // A peer entry exists only once the PILA verifies.
                if w.pila.ed25519 == k
                    && verify_auth(&w.pila.ed25519, node, &w.pila.x25519, &w.pila.signature)
                {
                    self.peers.entry(node).or_default().ed25519 = Some(k);
                    self.install_pila(w.pila, w.from, w.via_relay, now);
                    for (from, mut frame, relay_sender) in w.early {
                        self.handle_sealed(node, from, &mut frame, relay_sender, now);
                    }
                } else {
                    self.stats.dropped_auth += 1;
                }
            }
            Err(e) => {
                tracing::debug!("key lookup of node {node} failed: {e}");
                if waiting.is_some() {
                    self.stats.dropped_auth += 1;
                }
                if matches!(e, RegError::Refused(_)) {
                    if self.negative_keys.len() >= MAX_NEGATIVE_KEYS {
                        self.negative_keys
                            .retain(|_, t| now.duration_since(*t) < NEGATIVE_KEY_TTL);
                        if self.negative_keys.len() >= MAX_NEGATIVE_KEYS {
                            self.negative_keys.clear();
                        }
                    }
                    self.negative_keys.insert(node, now);
                }
            }
        }
    }

    /// A PILA whose Ed25519 key the registry confirmed (spec §4.3 steps 4-8).
    fn install_pila(&mut self, pila: AuthKeyRepr, from: SocketAddr, via_relay: bool, now: Instant) {
        if !verify_auth(&pila.ed25519, pila.sender, &pila.x25519, &pila.signature) {
            self.stats.dropped_auth += 1;
            return;
        }
        let node = pila.sender;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        // Never go back to a superseded key: that is a replayed PILA, and
        // re-deriving it would restart our counter under a used key (§12.9).
        let current = peer.x25519.filter(|_| peer.session.is_some());
        let verdict = self.key_history.verdict(node, current, &pila.x25519);
        if verdict == Verdict::Superseded {
            self.stats.dropped_superseded_key += 1;
            return;
        }
        peer.last_seen = Some(now);
        // Path rules (path.rs): a PILA never moves the endpoint.
        let answer_at = self.path_on_pila(node, from, via_relay, now);
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let fresh = peer.session.is_none() || peer.x25519 != Some(pila.x25519);
        let answer = if fresh {
            let key = match derive_tunnel_key(&self.xkeys, &pila.x25519) {
                Ok(k) => k,
                Err(_) => {
                    self.stats.dropped_auth += 1;
                    return;
                }
            };
            if let (Some(old), Some(old_key)) = (peer.session.take(), current) {
                self.key_history.retire(node, old_key, old);
            }
            let resumed = match verdict {
                Verdict::Resume => self.key_history.resume(node, &pila.x25519),
                _ => None,
            };
            let session = resumed.unwrap_or_else(|| {
                let mut prefix = [0u8; 4];
                OsRng.fill_bytes(&mut prefix);
                Session::new(key, prefix)
            });
            peer.session = Some(session);
            peer.x25519 = Some(pila.x25519);
            if current.is_none() {
                tracing::info!("tunnel to node {node} established ({})", peer.path_name());
            } else {
                tracing::debug!("node {node} changed its tunnel key");
            }
            true
        } else {
            // Same key: keep the session (§12.9). Answer anyway when our last
            // PILA is old: the peer may have lost it and cannot talk without it.
            peer.last_pila_sent
                .is_none_or(|t| now.duration_since(t) >= PILA_ANSWER_SPACING)
        };
        if answer {
            match answer_at {
                Some(at) => self.send_raw(&self.pila_frame.clone(), at),
                None => self.send_pila(node, now),
            }
            if let Some(p) = self.peers.get_mut(&node) {
                p.last_pila_sent = Some(now);
            }
        }
        self.flush_queue(node, now);
        if fresh {
            self.path_on_session(node, answer_at, now);
        }
    }

    fn handle_sealed(
        &mut self,
        sender: u32,
        from: SocketAddr,
        data: &mut [u8],
        relay_sender: Option<u32>,
        now: Instant,
    ) {
        if relay_sender.is_some_and(|s| s != sender) {
            self.stats.dropped_spoofed += 1;
            return;
        }
        let node_id = self.node_id;
        let has_session = self.peers.get(&sender).is_some_and(|p| p.session.is_some());
        if !has_session {
            // Its PILA is waiting for the registry: keep the frame (bounded)
            // until the key is confirmed; else tell the sender our key.
            if let Some(w) = self.waiting_pila.get_mut(&sender) {
                if w.early.len() < EARLY_FRAMES && w.early_bytes + data.len() <= EARLY_BYTES {
                    w.early_bytes += data.len();
                    w.early.push((from, data.to_vec(), relay_sender));
                }
                return;
            }
            self.answer_stale(sender, from, relay_sender.is_some(), now);
            return;
        }
        let Some(peer) = self.peers.get_mut(&sender) else {
            return;
        };
        let Some(session) = peer.session.as_mut() else {
            return;
        };
        let plain = match session.open_in_place(data, now) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(node = sender, %from, error = %e, "sealed frame dropped");
                self.stats.dropped_crypto += 1;
                self.answer_stale(sender, from, relay_sender.is_some(), now);
                return;
            }
        };
        let (repr, payload) = match header::parse_packet(plain) {
            Ok(x) => x,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if repr.src.node != sender || repr.dst.node != node_id {
            self.stats.dropped_spoofed += 1;
            return;
        }
        peer.last_seen = Some(now);
        self.path_rx(sender, from, relay_sender.is_some(), payload.len(), now);
        // The payload borrows the receive buffer, not self.
        self.dispatch(sender, &repr, payload, now);
    }

    /// A frame we cannot decrypt from `node`: it probably restarted or lost
    /// our key. Send our PILA, rate-limited (spec §12.12).
    fn answer_stale(&mut self, node: u32, from: SocketAddr, via_relay: bool, now: Instant) {
        if node == 0 || node == self.node_id {
            return;
        }
        // The sender id is unauthenticated here: rate-limit in a bounded
        // table of its own, never by creating peer entries. A sender that
        // looks like a known peer (an entry whose endpoint is this source,
        // or a relay peer) is answered; anyone else only within a small
        // global budget, so forged frames cannot turn us into a reflector
        // (issue 10 item 4).
        let known = self.peers.get(&node).is_some_and(|p| {
            if via_relay {
                p.relay
            } else {
                p.endpoint == Some(from)
            }
        });
        if !known
            && !self
                .stale_budget
                .take(STALE_ANSWER_BUDGET.0, STALE_ANSWER_BUDGET.1, now)
        {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        if self
            .stale_answers
            .get(&node)
            .is_some_and(|t| now.duration_since(*t) < PILA_ANSWER_SPACING)
        {
            return;
        }
        if self.stale_answers.len() >= MAX_STALE_ANSWERS {
            self.stale_answers
                .retain(|_, t| now.duration_since(*t) < PILA_ANSWER_SPACING);
            if self.stale_answers.len() >= MAX_STALE_ANSWERS {
                return;
            }
        }
        self.stale_answers.insert(node, now);
        let frame = self.pila_frame.clone();
        match (via_relay, self.beacon) {
            (true, Some(beacon)) => {
                let wrapped = beacon::encode_relay(self.node_id, node, &frame);
                self.send_raw(&wrapped, beacon);
            }
            (true, None) => {}
            (false, _) => self.send_raw(&frame, from),
        }
    }

    fn dispatch(&mut self, sender: u32, repr: &Repr, payload: &[u8], now: Instant) {
        match repr.protocol {
            Protocol::Control => self.handle_control(sender, repr, payload, now),
            Protocol::Stream => self.on_stream_segment(sender, repr, payload, now),
            Protocol::Datagram => self.on_datagram(sender, repr, payload),
            Protocol::Unknown(_) => {}
        }
    }

    fn handle_control(&mut self, sender: u32, repr: &Repr, payload: &[u8], now: Instant) {
        if repr.dst_port == 0 {
            // A ping (spec §8.2). Never answer from-port-0 packets (§12.11).
            if repr.src_port == 0 || repr.flags.contains(Flags::ACK) {
                return;
            }
            let pong = Repr {
                flags: Flags::ACK,
                protocol: Protocol::Control,
                src: repr.dst,
                dst: repr.src,
                src_port: 0,
                dst_port: repr.src_port,
                seq: repr.seq,
                ack: repr.seq.wrapping_add(1),
                window: 0,
                payload_len: payload.len(),
            };
            self.send_packet(sender, &pong, payload, now);
        } else if header::is_pong(repr.src_port, repr.flags) && repr.dst_port == self.nat.probe_port
        {
            if !self.pmtu_on_pong(sender, repr.seq, payload.len(), now) {
                self.on_probe_pong(sender, repr.seq, now);
            }
        } else if header::is_pong(repr.src_port, repr.flags) {
            // A pong for one of our pings.
            let key = (sender, repr.dst_port);
            if self.pings.get(&key).is_some_and(|p| p.seq == repr.seq) {
                if let Some(p) = self.pings.remove(&key) {
                    self.path_rtt(sender, now.duration_since(p.sent));
                    let path = self
                        .peers
                        .get(&sender)
                        .map(Peer::path_name)
                        .unwrap_or("direct");
                    let data = PingData {
                        address: Addr::backbone(sender).to_string(),
                        bytes: payload.len().min(p.size),
                        rtt_us: now.duration_since(p.sent).as_micros() as u64,
                        path: path.into(),
                    };
                    let _ = p.reply.send(Response::ok(&data));
                }
            }
        }
    }

    // --------------------------------------------------------------- output

    /// Sends one virtual packet to `node`: sealed now when a session exists,
    /// else queued while the tunnel is set up.
    pub(super) fn send_packet(&mut self, node: u32, repr: &Repr, payload: &[u8], now: Instant) {
        let len = match header::emit_packet(repr, payload, &mut self.sbuf[PLAIN_AT..]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot encode packet to node {node}: {e}");
                return;
            }
        };
        self.send_plain(node, len, now);
    }

    /// Sends the `len`-byte virtual packet already at `PLAIN_AT` in the send
    /// buffer: sealed now when a session exists, else queued.
    pub(super) fn send_plain(&mut self, node: u32, len: usize, now: Instant) {
        let has_session = self.peers.get(&node).is_some_and(|p| p.session.is_some());
        if has_session {
            self.seal_to(node, len, None, now);
        } else {
            let queueing = self.peers.values().filter(|p| !p.queue.is_empty()).count();
            let peer = self.peers.entry(node).or_default();
            if peer.queue.is_empty() && queueing >= MAX_QUEUEING_PEERS {
                return;
            }
            let packet = self.sbuf[PLAIN_AT..PLAIN_AT + len].to_vec();
            peer.enqueue(packet);
            self.ensure_tunnel(node, now);
        }
    }

    /// Seals the `len`-byte plaintext at `PLAIN_AT` in the send buffer and
    /// sends it by the peer's path, or directly to `direct` when given (a
    /// path probe).
    pub(super) fn seal_to(
        &mut self,
        node: u32,
        len: usize,
        direct: Option<SocketAddr>,
        now: Instant,
    ) {
        let me = self.node_id;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let Some(session) = peer.session.as_mut() else {
            return;
        };
        let answer = super::path::expects_answer(&self.sbuf[PLAIN_AT..PLAIN_AT + len]);
        let frame = &mut self.sbuf[RELAY_HEADER_LEN..];
        let n = match session.seal_in_place(me, frame, len) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot seal for node {node}: {e}");
                return;
            }
        };
        let (relay, endpoint) = match direct {
            Some(d) => (false, Some(d)),
            None => (peer.relay, peer.endpoint),
        };
        self.transmit(node, relay, endpoint, RELAY_HEADER_LEN, n);
        self.path_tx(node, len, answer, now);
    }

    /// Seals a virtual packet for `node` straight into the GSO batch (no
    /// copy from the frame buffer into the batch: issue 14 item 4), when
    /// the peer has a session and a direct path; `fill` writes the packet
    /// (at most `max_plain` bytes) at the front of the slice it gets and
    /// returns its length, or `None` when it has nothing to send.
    ///
    /// Returns `None` when the packet must take the copying way
    /// ([`Self::send_plain`]: no session yet, or relayed), `Some(false)`
    /// when `fill` had nothing, `Some(true)` when a packet went out.
    pub(super) fn seal_into_batch(
        &mut self,
        node: u32,
        max_plain: usize,
        now: Instant,
        fill: impl FnOnce(&mut StreamTable, &mut [u8]) -> Option<usize>,
    ) -> Option<bool> {
        let Engine {
            peers,
            tx,
            socket,
            streams,
            stats,
            node_id,
            ..
        } = self;
        let peer = peers.get_mut(&node)?;
        let (false, Some(dest), Some(session)) = (peer.relay, peer.endpoint, peer.session.as_mut())
        else {
            return None;
        };
        let room = tx.stage(socket, PILS_HEADER_LEN + max_plain + TAG_LEN);
        let Some(len) = fill(
            streams,
            &mut room[PILS_HEADER_LEN..PILS_HEADER_LEN + max_plain],
        ) else {
            return Some(false);
        };
        let answer = super::path::expects_answer(&room[PILS_HEADER_LEN..PILS_HEADER_LEN + len]);
        match session.seal_in_place(*node_id, room, len) {
            Ok(n) => {
                tx.push_staged(socket, n, dest);
                stats.datagrams_out += 1;
                stats.bytes_out += n as u64;
            }
            Err(e) => {
                // As `seal_to`: nothing went out, so the path counts nothing.
                tracing::warn!("cannot seal for node {node}: {e}");
                return Some(true);
            }
        }
        self.path_tx(node, len, answer, now);
        Some(true)
    }

    /// Sends the frame at `sbuf[at..at + len]` directly or through the relay.
    fn transmit(
        &mut self,
        node: u32,
        relay: bool,
        endpoint: Option<SocketAddr>,
        at: usize,
        len: usize,
    ) {
        if relay {
            let Some(beacon) = self.beacon else {
                return;
            };
            let start = at - RELAY_HEADER_LEN;
            self.sbuf[start] = 0x05;
            self.sbuf[start + 1..start + 5].copy_from_slice(&self.node_id.to_be_bytes());
            self.sbuf[start + 5..start + 9].copy_from_slice(&node.to_be_bytes());
            self.send_to(start..at + len, beacon);
        } else if let Some(ep) = endpoint {
            self.send_to(at..at + len, ep);
        }
    }

    fn flush_queue(&mut self, node: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.pila_attempts = 0;
        let queued: Vec<Vec<u8>> = peer.queue.drain(..).collect();
        for packet in queued {
            let len = packet.len();
            self.sbuf[PLAIN_AT..PLAIN_AT + len].copy_from_slice(&packet);
            self.seal_to(node, len, None, now);
        }
    }

    fn send_pila(&mut self, node: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.last_pila_sent = Some(now);
        let (relay, endpoint) = (peer.relay, peer.endpoint);
        let n = self.pila_frame.len();
        self.sbuf[RELAY_HEADER_LEN..RELAY_HEADER_LEN + n].copy_from_slice(&self.pila_frame);
        self.transmit(node, relay, endpoint, RELAY_HEADER_LEN, n);
    }

    /// Makes sure a key exchange with `node` is under way (spec §5.4).
    pub(super) fn ensure_tunnel(&mut self, node: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        if peer.session.is_some() {
            return;
        }
        if peer.endpoint.is_some() || peer.relay {
            if peer
                .last_pila_sent
                .is_none_or(|t| now.duration_since(t) >= PILA_RETRY)
            {
                peer.pila_attempts += 1;
                self.send_pila(node, now);
            }
            return;
        }
        self.spawn_resolve(node);
    }

    /// Gives up on queued traffic to `node`, failing its pending pings.
    pub(super) fn fail_peer(&mut self, node: u32, code: ErrorCode, msg: &str) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.queue.clear();
            peer.pila_attempts = 0;
        }
        let keys: Vec<(u32, u16)> = self
            .pings
            .keys()
            .filter(|(n, _)| *n == node)
            .copied()
            .collect();
        for k in keys {
            if let Some(p) = self.pings.remove(&k) {
                let _ = p.reply.send(Response::error(code, msg));
            }
        }
    }

    // ------------------------------------------------------------- commands

    fn handle_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Info(reply) => {
                let _ = reply.send(Response::ok(&self.info()));
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(Response::ok(&self.peer_table(now)));
            }
            Cmd::Ping {
                addr,
                size,
                timeout,
                reply,
            } => self.start_ping(addr, size, timeout, reply, now),
            Cmd::PeerKey { node, key } => self.on_peer_key(node, key, now),
            Cmd::Resolved { node, result } => self.on_resolution(node, result, now),
            Cmd::Discover => self.send_discover(),
            Cmd::Dial {
                addr,
                port,
                timeout,
                link,
                reply,
            } => self.dial(addr, port, timeout, link, reply, now),
            Cmd::Listen {
                port,
                events,
                reply,
            } => self.listen(port, events, reply),
            Cmd::Unlisten(port) => self.unlisten(port, now),
            Cmd::Attach {
                conn_id,
                link,
                reply,
            } => self.attach(conn_id, link, reply, now),
            Cmd::AppData(id, data) => self.app_data(id, data, now),
            Cmd::AppEof(id) => self.app_eof(id, now),
            Cmd::AppGone(id) => self.app_gone(id, now),
            Cmd::Drained(id) => self.app_drained(id, now),
            Cmd::AppReadable(id) => self.app_ready(id, true, now),
            Cmd::AppWritable(id) => self.app_ready(id, false, now),
            Cmd::Connections(reply) => {
                let _ = reply.send(Response::ok(&self.connections()));
            }
            Cmd::Disconnect {
                conn_id,
                force,
                reply,
            } => {
                let _ = reply.send(self.disconnect(conn_id, force, now));
            }
            Cmd::SendDatagram {
                addr,
                port,
                data,
                reply,
            } => {
                let _ = reply.send(self.send_datagram(addr, port, &data, now));
            }
            Cmd::SetTrust(node, on) => self.set_trusted(node, on, now),
            Cmd::SetNetworkPeers(peers) => {
                let gone: Vec<u32> = self
                    .network_peers
                    .difference(&peers)
                    .copied()
                    .filter(|p| !self.trusted.contains(p))
                    .collect();
                self.network_peers = peers;
                for p in gone {
                    // Not trusted and no longer a fellow member: cut.
                    self.trusted.insert(p);
                    self.set_trusted(p, false, now);
                }
            }
            Cmd::RecvDatagrams { port, reply } => {
                let (tx, mut rx) = oneshot::channel();
                let queue = self.recv_datagrams(port, tx);
                let resp = rx
                    .try_recv()
                    .unwrap_or_else(|_| Response::error(ErrorCode::Internal, "no reply"));
                let _ = reply.send((resp, queue));
            }
        }
    }

    fn info(&self) -> InfoData {
        let st = self.shared.status();
        InfoData {
            node_id: self.node_id,
            address: Addr::backbone(self.node_id).to_string(),
            hostname: st.hostname.clone(),
            public_key: self.shared.identity.public_key_b64(),
            public: self.shared.config.public,
            pid: std::process::id(),
            uptime_secs: self.shared.started.elapsed().as_secs(),
            socket: self.shared.config.socket.display().to_string(),
            registry: self.shared.config.registry.clone(),
            beacon: self
                .beacon
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            listen: self
                .socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            endpoint: st.endpoint.clone(),
            registered: st.registered,
            peers: self.peers.values().filter(|p| p.session.is_some()).count(),
            streams: self.streams.len(),
            stream_memory: self.stream_memory(),
            stream_memory_budget: self.streams.admission.memory_budget,
            refused_memory: self.streams.refused_memory,
            stream_memory_peak: self.streams.memory_peak,
            stats: self.stats.clone(),
            metrics: self
                .shared
                .metrics_addr
                .map(|a| format!("http://{a}/metrics")),
        }
    }

    /// Publishes the figures `/metrics` serves (node/metrics.rs).
    fn publish_metrics(&self) {
        let mut peers = [0usize; 3];
        for p in self.peers.values().filter(|p| p.session.is_some()) {
            let name = p.path_name();
            if let Some(i) = super::metrics::PATHS.iter().position(|&n| n == name) {
                peers[i] += 1;
            }
        }
        let retransmissions = self
            .streams
            .conns
            .values()
            .map(|s| s.conn.stats().retransmissions)
            .sum::<u64>()
            + self.streams.closed_retransmissions;
        self.shared.metrics.publish(super::metrics::Snapshot {
            stats: self.stats.clone(),
            peers,
            streams: self.streams.len(),
            stream_memory: self.stream_memory(),
            refused_memory: self.streams.refused_memory,
            retransmissions,
        });
    }

    fn peer_table(&self, now: Instant) -> PeersData {
        let mut peers: Vec<PeerData> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some() || p.endpoint.is_some())
            .map(|(&node, p)| PeerData {
                node_id: node,
                address: Addr::backbone(node).to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                path: p.path_name().into(),
                encrypted: p.session.is_some(),
                last_seen_ms: p
                    .last_seen
                    .map(|t| now.duration_since(t).as_millis() as u64),
                rtt_ms: p.path.rtt.map(|r| r.as_secs_f64() * 1000.0),
                bytes_in: p.path.bytes_in,
                bytes_out: p.path.bytes_out,
                path_changes: p.path.changes,
                path_since_ms: p
                    .path
                    .changed_at
                    .map(|t| now.duration_since(t).as_millis() as u64),
                segment: p.pmtu.segment(),
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        PeersData { peers }
    }

    /// Resends our PILA to a peer that stopped answering (spec §4.8 item 4),
    /// at most once per [`PILA_RETRY`].
    pub(super) fn force_pila(&mut self, node: u32, now: Instant) {
        let due = self.peers.get(&node).is_some_and(|p| {
            p.last_pila_sent
                .is_none_or(|t| now.duration_since(t) >= PILA_RETRY)
        });
        if due {
            self.send_pila(node, now);
        }
    }

    pub(super) fn alloc_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX {
            EPHEMERAL_START
        } else {
            p + 1
        };
        p
    }

    fn start_ping(
        &mut self,
        addr: Addr,
        size: usize,
        timeout: Duration,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        if addr.node == self.node_id {
            let data = PingData {
                address: addr.to_string(),
                bytes: size,
                rtt_us: 0,
                path: "local".into(),
            };
            let _ = reply.send(Response::ok(&data));
            return;
        }
        if addr.is_broadcast() || addr.node == 0 {
            let _ = reply.send(Response::error(
                ErrorCode::InvalidAddress,
                format!("cannot ping {addr}: not a single node"),
            ));
            return;
        }
        let port = self.alloc_port();
        let seq = self.next_ping_seq;
        self.next_ping_seq = self.next_ping_seq.wrapping_add(1).max(1);
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let repr = Repr {
            flags: Flags::NONE,
            protocol: Protocol::Control,
            src: Addr::new(addr.network, self.node_id),
            dst: addr,
            src_port: port,
            dst_port: 0,
            seq,
            ack: 0,
            window: 0,
            payload_len: size,
        };
        self.pings.insert(
            (addr.node, port),
            PendingPing {
                sent: now,
                deadline: now + timeout,
                seq,
                size,
                reply,
            },
        );
        self.send_packet(addr.node, &repr, &payload, now);
    }

    fn housekeeping(&mut self, now: Instant) {
        self.follow_registry_instance();
        if self.shared.config.metrics.is_some() {
            self.publish_metrics();
        }
        self.stream_housekeeping(now);
        self.path_housekeeping(now);
        self.pmtu_housekeeping(now);
        let expired: Vec<(u32, u16)> = self
            .pings
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(p) = self.pings.remove(&k) {
                let waited = p.deadline.duration_since(p.sent);
                let _ = p.reply.send(Response::error(
                    ErrorCode::Timeout,
                    format!(
                        "no reply from {} within {:.1}s",
                        Addr::backbone(k.0),
                        waited.as_secs_f64()
                    ),
                ));
            }
        }
        // Retry key exchanges that have packets waiting.
        let waiting: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_none() && !p.queue.is_empty())
            .map(|(&n, _)| n)
            .collect();
        for node in waiting {
            let attempts = self.peers.get(&node).map_or(0, |p| p.pila_attempts);
            if attempts >= PILA_MAX_ATTEMPTS {
                let msg = format!(
                    "no key exchange with {} (no answer to {attempts} PILAs)",
                    Addr::backbone(node)
                );
                self.fail_peer(node, ErrorCode::Unreachable, &msg);
            } else {
                self.ensure_tunnel(node, now);
            }
        }
    }
}

/// Sleeps until `t`, or forever when there is no deadline.
/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `t`, or forever when there is no deadline.
pub(super) async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_layout_leaves_room_for_relay_and_seal() {
        assert_eq!(PLAIN_AT, 9 + 20);
    }
}
