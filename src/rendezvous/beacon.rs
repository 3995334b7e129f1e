//! The beacon (spec §5.2): endpoint discovery, hole-punch coordination and
//! relay over one UDP socket.
//!
//! [`BeaconTable::handle`] is the whole behaviour as a function from one
//! received datagram to the datagrams to send, so it is tested without
//! sockets; [`run`] is the thin tokio loop around it. Sends use
//! `try_send_to`: a full socket buffer drops the datagram (UDP semantics)
//! instead of stalling every other client.
//!
//! Deliberate differences from the reference (spec §12.8):
//! * a relay (0x05) is forwarded only when its UDP source equals the address
//!   the beacon observed for the claimed sender id, so a node cannot inject
//!   frames in another node's name;
//! * id 0 (the daemons' start-up probe) is answered but not recorded, so no
//!   one can relay, punch or be punched as "node 0";
//! * no peer beacons: gossip (0x07) is parsed and ignored.
//!
//! * (issue 10 item 5) discover/punch-request are unauthenticated on the
//!   wire, so an id is bound to the registry instead: when the table has a
//!   [`Registry`], an id is recorded only from the IP address the registry
//!   saw for that node's proven registration (its `real_addr`). One spoofed
//!   `discover` can no longer re-point node 42 to the sender (which used to
//!   defeat the relay source check); a full table evicts its oldest entry
//!   instead of locking new ids out.
//!
//! * (issue 13) instances over one shared database forward a relay frame
//!   whose destination they do not know to the other instances' beacons
//!   ([`Peers`]), tagged with a key derived from the rendezvous key they
//!   share; a forwarded frame is delivered only if its tag is right and it
//!   came from a peer's address, and is never forwarded again.
//!
//! Remaining weakness: a host behind the same public IP as a node (same NAT)
//! can still re-point that node's beacon entry (see docs/SECURITY.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::state::Registry;
use crate::wire::beacon::{self, Repr, MAX_RELAY_PAYLOAD};

/// Entry capacity (spec §5.2, App. C).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Entry lifetime without a discover or punch request (spec §5.2).
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Expiry sweep period (spec §5.2).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// First byte of a relay frame forwarded between instances (ours: no
/// Pilot v1 beacon message type is this high).
pub const FORWARD: u8 = 0xF5;
/// Bytes of a forwarded frame's tag (HMAC-SHA256).
const TAG_LEN: usize = 32;
/// What the forwarding key is derived from the rendezvous key with.
const FORWARD_LABEL: &[u8] = b"pilot rendezvous beacon forwarding v1";

/// The other instances' beacons (instances over one shared database) and
/// the key tagging the frames forwarded between them.
pub struct Peers {
    key: ring::hmac::Key,
    addrs: Mutex<Vec<SocketAddr>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("addrs", &self.list())
            .finish()
    }
}

impl Peers {
    /// Peers sharing the rendezvous key `secret` (every instance is given
    /// the same `--identity`).
    pub fn new(secret: &[u8]) -> Peers {
        let k = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            FORWARD_LABEL,
        );
        Peers {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.as_ref()),
            addrs: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the list of peer beacons.
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// The peer beacons.
    pub fn list(&self) -> Vec<SocketAddr> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn seal(&self, sender: u32, destination: u32, frame: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(8 + frame.len());
        body.extend_from_slice(&sender.to_be_bytes());
        body.extend_from_slice(&destination.to_be_bytes());
        body.extend_from_slice(frame);
        let tag = ring::hmac::sign(&self.key, &body);
        let mut out = Vec::with_capacity(1 + TAG_LEN + body.len());
        out.push(FORWARD);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(&body);
        out
    }

    fn open<'a>(&self, datagram: &'a [u8]) -> Option<(u32, u32, &'a [u8])> {
        let rest = datagram.strip_prefix(&[FORWARD])?;
        if rest.len() < TAG_LEN + 8 {
            return None;
        }
        let (tag, body) = rest.split_at(TAG_LEN);
        // Compared in constant time by ring.
        ring::hmac::verify(&self.key, body, tag).ok()?;
        let sender = u32::from_be_bytes(body[0..4].try_into().ok()?);
        let destination = u32::from_be_bytes(body[4..8].try_into().ok()?);
        Some((sender, destination, &body[8..]))
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: SocketAddr,
    seen: Instant,
}

/// id → observed endpoint, bounded and expiring.
#[derive(Debug)]
pub struct BeaconTable {
    entries: HashMap<u32, Entry>,
    capacity: usize,
    ttl: Duration,
    authority: Option<Arc<Registry>>,
    /// Discover/punch requests refused because the source is not the
    /// registry-observed address of the claimed id.
    pub refused: u64,
    metrics: Option<Arc<Metrics>>,
    peers: Option<Arc<Peers>>,
}

impl BeaconTable {
    /// An empty table.
    pub fn new(capacity: usize, ttl: Duration) -> BeaconTable {
        BeaconTable {
            entries: HashMap::new(),
            capacity,
            ttl,
            authority: None,
            refused: 0,
            metrics: None,
            peers: None,
        }
    }

    /// Forwards relay frames for unknown destinations to `peers`, and
    /// delivers the frames they forward.
    pub fn with_peers(mut self, peers: Arc<Peers>) -> BeaconTable {
        self.peers = Some(peers);
        self
    }

    /// A frame another instance forwarded: delivered if the tag is right,
    /// it came from a peer and the destination is known here.
    fn forwarded(
        &mut self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let Some(peers) = &self.peers else {
            return Vec::new();
        };
        if !peers.list().contains(&src) {
            self.relay_dropped("forward_not_a_peer");
            return Vec::new();
        }
        let Some((sender, destination, frame)) = peers.open(datagram) else {
            self.relay_dropped("forward_bad_tag");
            return Vec::new();
        };
        if frame.len() > MAX_RELAY_PAYLOAD || sender == 0 {
            return Vec::new();
        }
        match self.get(destination, now) {
            Some(dst) => {
                if let Some(m) = &self.metrics {
                    m.relay_frames.inc();
                    m.relay_bytes.inc_by(frame.len() as u64);
                }
                vec![(dst, beacon::encode_relay_delivery(sender, frame))]
            }
            None => Vec::new(),
        }
    }

    /// Counts relayed and dropped frames in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> BeaconTable {
        self.metrics = Some(metrics);
        self
    }

    fn relay_dropped(&self, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.relay_dropped(reason);
        }
    }

    /// Binds ids to the addresses `registry` observed for them.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> BeaconTable {
        self.authority = Some(registry);
        self
    }

    /// Records `id` at `addr`; false if `addr` may not speak for `id`.
    fn observe(&mut self, id: u32, addr: SocketAddr, now: Instant) -> bool {
        if id == 0 {
            return true;
        }
        if let Some(reg) = &self.authority {
            let canon = |ip: std::net::IpAddr| match ip {
                std::net::IpAddr::V6(v6) => {
                    v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip)
                }
                v4 => v4,
            };
            if reg.node_ip(id).map(canon) != Some(canon(addr.ip())) {
                self.refused += 1;
                return false;
            }
        }
        if !self.entries.contains_key(&id) && self.entries.len() >= self.capacity {
            // Full: expired entries first, else the least recently seen.
            self.sweep(now);
            if self.entries.len() >= self.capacity {
                if let Some(&old) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.seen)
                    .map(|(k, _)| k)
                {
                    self.entries.remove(&old);
                }
            }
        }
        self.entries.insert(id, Entry { addr, seen: now });
        true
    }

    /// The live endpoint of `id`.
    pub fn get(&self, id: u32, now: Instant) -> Option<SocketAddr> {
        self.entries
            .get(&id)
            .filter(|e| now.saturating_duration_since(e.seen) < self.ttl)
            .map(|e| e.addr)
    }

    /// Number of entries (including not yet swept expired ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops expired entries.
    pub fn sweep(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.seen) < ttl);
    }

    /// Handles one datagram from `src`; returns what to send where.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        if datagram.first() == Some(&FORWARD) {
            return self.forwarded(datagram, src, now);
        }
        let Ok(msg) = Repr::parse_bytes(datagram) else {
            return Vec::new();
        };
        match msg {
            Repr::Discover { node_id } => {
                if self.observe(node_id, src, now) {
                    vec![(src, beacon::encode_discover_reply(src))]
                } else {
                    Vec::new()
                }
            }
            Repr::PunchRequest { requester, target } => {
                if requester == 0 || !self.observe(requester, src, now) {
                    return Vec::new();
                }
                match self.get(target, now) {
                    Some(t) if target != 0 => vec![
                        (src, beacon::encode_punch_command(t)),
                        (t, beacon::encode_punch_command(src)),
                    ],
                    _ => Vec::new(),
                }
            }
            Repr::Relay {
                sender,
                destination,
                frame,
            } => {
                if frame.len() > MAX_RELAY_PAYLOAD {
                    self.relay_dropped("too_large");
                    return Vec::new();
                }
                if sender == 0 || self.get(sender, now) != Some(src) {
                    tracing::debug!(%src, sender, "relay dropped: source is not the sender's observed address");
                    self.relay_dropped("spoofed_source");
                    return Vec::new();
                }
                match self.get(destination, now) {
                    Some(dst) => {
                        if let Some(m) = &self.metrics {
                            m.relay_frames.inc();
                            m.relay_bytes.inc_by(frame.len() as u64);
                        }
                        vec![(dst, beacon::encode_relay_delivery(sender, frame))]
                    }
                    None => match self.peers.as_ref().map(|p| (p.list(), p)) {
                        // Maybe served by another instance: hand it on.
                        Some((list, peers)) if !list.is_empty() => {
                            let sealed = peers.seal(sender, destination, frame);
                            list.into_iter().map(|p| (p, sealed.clone())).collect()
                        }
                        _ => {
                            self.relay_dropped("unknown_destination");
                            Vec::new()
                        }
                    },
                }
            }
            // Replies, deliveries and gossip are not for us.
            Repr::DiscoverReply { .. }
            | Repr::PunchCommand { .. }
            | Repr::RelayDelivery { .. }
            | Repr::Gossip { .. } => Vec::new(),
        }
    }
}

/// Serves the beacon on `sock` until `stop` becomes true.
pub async fn run(
    sock: UdpSocket,
    table: Arc<Mutex<BeaconTable>>,
    sweep_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut sweep = tokio::time::interval(sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, src) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on some
                        // systems; they concern one peer, not the socket.
                        tracing::debug!(error = %e, "beacon recv error");
                        continue;
                    }
                };
                let out = {
                    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                    t.handle(&buf[..n], src, Instant::now())
                };
                for (dst, bytes) in out {
                    if let Err(e) = sock.try_send_to(&bytes, dst) {
                        tracing::debug!(%dst, error = %e, "beacon send dropped");
                    }
                }
            }
            _ = sweep.tick() => {
                table.lock().unwrap_or_else(|e| e.into_inner()).sweep(Instant::now());
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_frames_need_the_key() {
        let now = Instant::now();
        let (x, peer): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
        );
        let mine = Arc::new(Peers::new(&[1; 32]));
        mine.set(vec![peer]);
        let mut t = BeaconTable::new(16, DEFAULT_TTL).with_peers(mine.clone());
        t.handle(&beacon::encode_discover(42), x, now);
        let sealed = Peers::new(&[1; 32]).seal(7, 42, b"PILSxx");
        assert_eq!(
            t.handle(&sealed, peer, now),
            vec![(x, beacon::encode_relay_delivery(7, b"PILSxx"))]
        );
        // Not from a peer, another key, a flipped bit, a truncated frame.
        assert!(t.handle(&sealed, x, now).is_empty());
        let other = Peers::new(&[2; 32]).seal(7, 42, b"PILSxx");
        assert!(t.handle(&other, peer, now).is_empty());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(t.handle(&bad, peer, now).is_empty());
        assert!(t.handle(&sealed[..20], peer, now).is_empty());
        // An unknown destination goes to the peers, once.
        let relay = beacon::encode_relay(42, 99, b"PILSyy");
        assert_eq!(
            t.handle(&relay, x, now),
            vec![(peer, mine.seal(42, 99, b"PILSyy"))]
        );
        assert!(t
            .handle(&mine.seal(42, 99, b"PILSyy"), peer, now)
            .is_empty());
    }

    #[test]
    fn discover_punch_relay() {
        let mut t = BeaconTable::new(10, DEFAULT_TTL);
        let now = Instant::now();
        let (x, y) = (a("127.0.0.1:40001"), a("127.0.0.1:40002"));
        assert_eq!(
            t.handle(&beacon::encode_discover(42), x, now),
            vec![(x, beacon::encode_discover_reply(x))]
        );
        t.handle(&beacon::encode_discover(1000), y, now);
        let out = t.handle(&beacon::encode_punch_request(42, 1000), x, now);
        assert_eq!(out.len(), 2);
        let relay = beacon::encode_relay(42, 1000, b"PILSxx");
        assert_eq!(
            t.handle(&relay, x, now),
            vec![(y, beacon::encode_relay_delivery(42, b"PILSxx"))]
        );
        // Spoofed: 42's frame from 1000's address is dropped.
        assert!(t.handle(&relay, y, now).is_empty());
        // Unknown destination.
        assert!(t
            .handle(&beacon::encode_relay(42, 7, b"x"), x, now)
            .is_empty());
        // Expiry.
        let later = now + DEFAULT_TTL;
        assert!(t.handle(&relay, x, later).is_empty());
        t.sweep(later);
        assert!(t.is_empty());
    }

    #[test]
    fn capacity_and_probe_id() {
        let mut t = BeaconTable::new(1, DEFAULT_TTL);
        let now = Instant::now();
        let x = a("127.0.0.1:1");
        assert_eq!(t.handle(&beacon::encode_discover(0), x, now).len(), 1);
        assert!(t.is_empty());
        assert_eq!(t.handle(&beacon::encode_discover(1), x, now).len(), 1);
        // Full: the oldest entry makes room (no lock-out of new ids).
        let later = now + Duration::from_secs(1);
        assert_eq!(t.handle(&beacon::encode_discover(2), x, later).len(), 1);
        assert_eq!(t.get(2, later), Some(x));
        assert_eq!(t.get(1, later), None);
        assert!(t.handle(b"garbage", x, now).is_empty());
    }
}
