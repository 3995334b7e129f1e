//! Paths to peers: which address a peer's frames go to (direct, LAN or the
//! beacon relay), and the rules that keep that choice right while peers
//! restart, move, sit behind NATs or lie.
//!
//! The rules (issue 9; spec §4.3, §5.3-§5.6, §12.8, §12.9, §12.12):
//! * **Authenticated moves only.** A peer's endpoint changes when a PILS
//!   that decrypts (and passes the replay window) arrives from a new address,
//!   or when a registry `resolve` says so. A PILA proves nothing about where
//!   it came from (it is the same bytes for everyone and can be replayed), so
//!   a PILA from another address is answered there (rate-limited, one PILA
//!   for one PILA: no amplification) but never moves the endpoint; such
//!   attempts are counted (`endpoint_refused`).
//! * **Silence means re-resolve.** When we send to a peer and hear nothing
//!   authenticated back for [`SILENCE`], we re-resolve it through the
//!   registry, move to the endpoint the registry gives, ask the beacon to
//!   punch, and re-send our PILA. A restarted peer answers our PILA with its
//!   new key, so it is reachable again about a second after it re-registered,
//!   with no action on its side. Pending pings are re-sent on the new path.
//! * **Punching.** After a punch request, the beacon's 0x04 names the
//!   peer's observed endpoint; we send the spec's three `PILP`s and then probe
//!   the candidate every tick for [`PROBE_WINDOW`] (PILA while no session,
//!   else a sealed control ping). Probing continues after the first success:
//!   the peer's first probes were dropped by its own NAT's filter, and it
//!   only hears back if ours keep coming. A cold connection still without
//!   a session after twice the round trip of its registry resolve
//!   ([`early_relay_delay`]: 5 ms to [`EARLY_RELAY`]) is also tried through
//!   the relay while the probing goes on (relay first, direct when it
//!   answers); a window
//!   that ends with no session and no direct frame puts the peer on the
//!   relay.
//! * **Relay and back.** A relayed peer gets a punch attempt every
//!   [`DIRECT_RETRY`] while it is active. The first direct PILS switches the
//!   path to direct; relayed frames switch it back only when no direct frame
//!   came for [`DIRECT_FRESH`]. Streams do not notice: they sit above the
//!   tunnel, and the session is the same whichever way frames travel.
//! * **Keepalives.** A direct peer we have not sent to for [`KEEPALIVE`] gets
//!   a sealed ping, which the peer answers: both NAT mappings see traffic.
//! * **Our own address.** When the beacon reports an observed address that
//!   differs from the last one (a new router), we re-register with it and
//!   re-probe every active peer. The beacon answers only from the address
//!   the registry has for us, so a peer silent long enough to fall back to
//!   the relay also makes us register again (from wherever we now are),
//!   after which the beacon answers.
//! * **LAN.** A peer whose registered `lan_addrs` share a /24 with ours is
//!   tried on that address first (spec §5.4 step 2); its public endpoint is
//!   probed too, and whichever answers authenticated wins, LAN preferred.
//!
//! Every path change is logged once at info level and shown by
//! `pilotctl peers` (path, endpoint, RTT, bytes, time since the change).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::engine::{Cmd, Engine, PLAIN_AT};
use super::peer::Peer;
use super::registry::RegError;
use crate::ipc::ErrorCode;
use crate::wire::address::Addr;
use crate::wire::beacon;
use crate::wire::frame::MAGIC_PILP;
use crate::wire::header::{self, Flags, Protocol, Repr};

/// No authenticated answer for this long while we send: the peer may have
/// restarted or moved (issue 9: "about a second"; a little less so that the
/// re-key completes within 2 s of the peer's re-registration).
pub const SILENCE: Duration = Duration::from_millis(800);
/// Minimum spacing of recoveries (registry resolve + punch + PILA) per peer.
pub const RECOVERY_SPACING: Duration = Duration::from_secs(2);
/// Consecutive unanswered recoveries after which a direct peer is tried
/// through the relay.
pub const RECOVERIES_BEFORE_RELAY: u32 = 2;
/// How long candidates are probed after a punch command (covers several
/// round trips of the slowest path we expect, 40 ms netem delay + jitter).
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);
/// A cold connection (no session, traffic queued) whose candidates have not
/// answered for this long is tried through the relay as well, while the
/// probing goes on: a pair that cannot be punched (symmetric against an
/// address-and-port-dependent filter) then connects in about this long
/// instead of a whole [`PROBE_WINDOW`], and a pair that can be punched
/// moves to direct when its first direct frame authenticates. RFC 8305's
/// recommended connection attempt delay. This is the longest wait: after a
/// registry resolve the wait is [`early_relay_delay`] of the resolve's
/// round trip, on a timer of its own.
pub const EARLY_RELAY: Duration = Duration::from_millis(250);
/// The shortest wait before a cold connection is tried through the relay
/// as well (ours: a few scheduling delays of a loaded machine, so that a
/// punch that is already on its way is not overtaken on a LAN or loopback).
pub const EARLY_RELAY_MIN: Duration = Duration::from_millis(5);
/// Added to twice the resolve's round trip (ours: covers the beacon's and
/// the peer's processing of the punch request and command).
const EARLY_RELAY_MARGIN: Duration = Duration::from_millis(3);

/// How long a cold connection waits for a direct answer before it is also
/// tried through the relay, given the round trip of the registry resolve
/// that started it. A punch that works answers after about one round trip
/// through the rendezvous (our punch request to the beacon, its command to
/// the peer, the peer's probe to us) plus processing, so twice the resolve's
/// round trip and a margin covers it, between [`EARLY_RELAY_MIN`] and
/// [`EARLY_RELAY`]. Issue 9's goal for a cold connect is 3 RTT + 10 ms, relay
/// included: a fixed Happy Eyeballs delay of 250 ms missed it by 30 times.
pub fn early_relay_delay(resolve_rtt: Duration) -> Duration {
    resolve_rtt
        .saturating_mul(2)
        .saturating_add(EARLY_RELAY_MARGIN)
        .clamp(EARLY_RELAY_MIN, EARLY_RELAY)
}
/// A direct frame this recent keeps the path direct whatever arrives
/// through the relay (and keeps a validated endpoint from being moved back
/// by the registry).
pub const DIRECT_FRESH: Duration = Duration::from_secs(5);
/// Interval of attempts to go direct while a peer is relayed.
pub const DIRECT_RETRY: Duration = Duration::from_secs(5);
/// A relayed peer counts as active (worth direct attempts) this long after
/// its last frame.
pub const ACTIVE: Duration = Duration::from_secs(120);
/// Idle time before a keepalive to a direct peer. Linux conntrack forgets an
/// unreplied UDP flow after 30 s (`nf_conntrack_udp_timeout`), and many home
/// routers use 30 s as well; 25 s is WireGuard's persistent-keepalive value.
pub const KEEPALIVE: Duration = Duration::from_secs(25);
/// Keepalives stop for a peer silent this long (it is gone).
pub const KEEPALIVE_GIVE_UP: Duration = Duration::from_secs(300);
/// Candidate addresses probed at once per peer.
const MAX_CANDIDATES: usize = 4;
/// How long a punch request we sent waits for its 0x04.
const PUNCH_PENDING: Duration = Duration::from_secs(3);
/// Pending punch requests remembered (bounded; oldest dropped).
const MAX_PENDING_PUNCHES: usize = 256;
/// Minimum spacing of punch commands we act on (they make us send to an
/// address we did not choose, spec §12.8).
const PUNCH_COMMAND_SPACING: Duration = Duration::from_millis(20);

/// Path bookkeeping of one peer.
#[derive(Debug, Default, Clone)]
pub struct PathState {
    /// Last authenticated frame from the peer, any path.
    pub last_rx: Option<Instant>,
    /// Last authenticated PILS that arrived directly (not relayed).
    pub last_direct_rx: Option<Instant>,
    /// Last frame we sent.
    pub last_tx: Option<Instant>,
    /// First send since the last authenticated frame from the peer.
    pub waiting_since: Option<Instant>,
    /// Last recovery (re-resolve + punch + PILA).
    pub last_recovery: Option<Instant>,
    /// Recoveries without an answer in between.
    pub recoveries: u32,
    /// Candidates being probed, and until when.
    pub probe: Option<ProbeWindow>,
    /// Next attempt to go direct while relayed.
    pub next_direct_try: Option<Instant>,
    /// When the path last changed.
    pub changed_at: Option<Instant>,
    /// Path changes so far.
    pub changes: u32,
    /// Latest round-trip time (probes and pings).
    pub rtt: Option<Duration>,
    /// Our latest probe: sequence number and send time.
    pub last_probe: Option<(u32, Instant)>,
    /// Tunnel payload bytes received from / sent to the peer.
    pub bytes_in: u64,
    /// See `bytes_in`.
    pub bytes_out: u64,
    /// The peer's public endpoint per the registry (kept while on LAN/relay).
    pub registered: Option<SocketAddr>,
    /// The peer's LAN address chosen by the shortcut, if any.
    pub lan: Option<SocketAddr>,
}

/// Candidates probed for a while.
#[derive(Debug, Clone)]
pub struct ProbeWindow {
    /// Addresses probed (at most `MAX_CANDIDATES`).
    pub candidates: Vec<SocketAddr>,
    /// End of the window.
    pub until: Instant,
    /// When the window opened (it may be extended since).
    pub opened: Instant,
    /// When a cold connection in this window is tried through the relay as
    /// well ([`EARLY_RELAY`] after opening unless a resolve set it sooner).
    pub relay_at: Instant,
}

/// Whether a virtual packet we send calls for an answer, so that hearing
/// nothing after it for [`SILENCE`] means the path may be gone: all but a
/// control pong and a stream segment that only acknowledges (no payload,
/// no SYN or FIN), which the peer does not answer. Counting those too made
/// two idle peers recover each other forever: the last pong of a probe
/// window left its sender waiting, 800 ms later it re-resolved, punched and
/// probed for 2 s, whose last pong left the other side waiting, and so on
/// (measured: 13 datagrams a second and a registry resolve every 2.9 s
/// between two idle daemons on loopback).
pub(super) fn expects_answer(plain: &[u8]) -> bool {
    let Ok(p) = header::Packet::new_checked(plain) else {
        return true;
    };
    let flags = p.flags();
    match p.protocol() {
        Protocol::Control => !header::is_pong(p.src_port(), flags),
        Protocol::Stream => p.payload_len() > 0 || flags.intersects(Flags::SYN | Flags::FIN),
        _ => true,
    }
}

impl PathState {
    /// Whether we have been sending without an answer for [`SILENCE`].
    pub fn silent(&self, now: Instant) -> bool {
        self.waiting_since
            .is_some_and(|t| now.duration_since(t) >= SILENCE)
            && self
                .last_recovery
                .is_none_or(|t| now.duration_since(t) >= RECOVERY_SPACING)
    }

    /// Whether a direct frame arrived within [`DIRECT_FRESH`].
    pub fn direct_fresh(&self, now: Instant) -> bool {
        self.last_direct_rx
            .is_some_and(|t| now.duration_since(t) < DIRECT_FRESH)
    }

    /// Whether an authenticated direct frame from `from` should become the
    /// endpoint, given the current one. A fresh LAN path is not given up
    /// for a public one (both may answer while the shortcut is probed).
    pub fn accept_direct(
        &self,
        current: Option<SocketAddr>,
        from: SocketAddr,
        now: Instant,
    ) -> bool {
        match current {
            Some(c) if c == from => false,
            Some(c) if is_private(c.ip()) && !is_private(from.ip()) => !self.direct_fresh(now),
            _ => true,
        }
    }

    /// Adds probe candidates and (re)opens the window.
    pub fn open_probe(&mut self, addrs: &[SocketAddr], now: Instant) {
        let w = self.probe.get_or_insert(ProbeWindow {
            candidates: Vec::new(),
            until: now,
            opened: now,
            relay_at: now + EARLY_RELAY,
        });
        for a in addrs {
            if !w.candidates.contains(a) {
                if w.candidates.len() >= MAX_CANDIDATES {
                    w.candidates.remove(0);
                }
                w.candidates.push(*a);
            }
        }
        w.until = now + PROBE_WINDOW;
    }
}

/// Node-wide NAT-traversal state of the engine.
#[derive(Debug)]
pub struct NatState {
    /// Source port of our path probes (answers to it are probe pongs).
    pub probe_port: u16,
    /// Sequence numbers of probes.
    pub next_seq: u32,
    /// Punch requests waiting for their 0x04: (peer, when).
    pub pending: Vec<(u32, Instant)>,
    /// Last punch command acted on.
    pub last_command: Option<Instant>,
    /// Our private IPv4 addresses (for the LAN shortcut).
    pub local_v4: Vec<Ipv4Addr>,
    /// The earliest `relay_at` set by a resolve and not yet checked: the
    /// engine wakes for it instead of waiting for its 100 ms tick.
    pub next_early_relay: Option<Instant>,
}

impl NatState {
    /// State for an engine whose probes use `probe_port`.
    pub fn new(probe_port: u16) -> NatState {
        NatState {
            probe_port,
            next_seq: 1,
            pending: Vec::new(),
            last_command: None,
            local_v4: local_private_v4(),
            next_early_relay: None,
        }
    }
}

/// Whether `p` is a cold connection (no session, traffic queued, never a
/// direct frame, not relayed) whose probe window has reached its
/// `relay_at`.
fn early_relay_due(p: &Peer, now: Instant) -> bool {
    let stuck = p.session.is_none() && !p.queue.is_empty();
    stuck
        && !p.relay
        && p.path.last_direct_rx.is_none()
        && p.path.probe.as_ref().is_some_and(|w| now >= w.relay_at)
}

/// RFC 1918, link-local, unique-local: addresses that only mean something
/// inside one site.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// Not usable as a public endpoint: private, loopback, unspecified.
pub fn is_local(ip: IpAddr) -> bool {
    is_private(ip) || ip.is_loopback() || ip.is_unspecified()
}

/// `direct`, `lan` or `relay`, for people and JSON.
pub fn path_kind(relay: bool, endpoint: Option<SocketAddr>) -> &'static str {
    if relay {
        "relay"
    } else if endpoint.is_some_and(|e| is_private(e.ip())) {
        "lan"
    } else {
        "direct"
    }
}

/// The spec's LAN shortcut (§5.4 step 2): a peer LAN address in the same
/// IPv4 /24 as one of ours, unless the peer registered a loopback address.
pub fn pick_lan(
    ours: &[Ipv4Addr],
    theirs: &[SocketAddr],
    registered: SocketAddr,
) -> Option<SocketAddr> {
    if registered.ip().is_loopback() {
        return None;
    }
    theirs.iter().copied().find(|a| match a.ip() {
        IpAddr::V4(t) => ours
            .iter()
            .any(|o| o.octets()[..3] == t.octets()[..3] && *o != t),
        IpAddr::V6(_) => false,
    })
}

/// Our private IPv4 addresses on up, non-loopback interfaces (spec §5.3).
pub fn local_private_v4() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that we only read and then free
    // with freeifaddrs; every pointer is checked for null before use.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            if up
                && !lo
                && !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if (ip.is_private() || ip.is_link_local()) && out.len() < 16 {
                    out.push(ip);
                }
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

/// What a registry `resolve` told us.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The registered public endpoint.
    pub endpoint: SocketAddr,
    /// The peer's LAN addresses.
    pub lan: Vec<SocketAddr>,
    /// How long the resolve took (the registry's round trip, about).
    pub rtt: Duration,
}

impl Engine {
    /// Logs and records a change of `node`'s path (endpoint and/or relay).
    pub(super) fn set_path(
        &mut self,
        node: u32,
        endpoint: Option<SocketAddr>,
        relay: bool,
        why: &str,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        if peer.endpoint == endpoint && peer.relay == relay {
            return;
        }
        let before = path_kind(peer.relay, peer.endpoint);
        let old = peer.endpoint;
        peer.endpoint = endpoint;
        peer.relay = relay;
        peer.path.changed_at = Some(now);
        peer.path.changes += 1;
        let after = path_kind(relay, endpoint);
        let show = |e: Option<SocketAddr>| e.map_or("-".to_string(), |e| e.to_string());
        tracing::info!(
            "path to {}: {before} {} -> {after} {} ({why})",
            Addr::backbone(node),
            show(old),
            if relay {
                "via beacon".to_string()
            } else {
                show(endpoint)
            },
        );
        self.resend_pings(node, now);
        self.streams_path_changed(node, now);
        self.pmtu_path_changed(node, now);
    }

    /// An authenticated (decrypted) frame of `bytes` from `node` arrived from
    /// `from`, directly or through the relay.
    pub(super) fn path_rx(
        &mut self,
        node: u32,
        from: SocketAddr,
        relayed: bool,
        bytes: usize,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let relay = peer.relay;
        let endpoint = peer.endpoint;
        let p = &mut peer.path;
        p.last_rx = Some(now);
        p.waiting_since = None;
        p.recoveries = 0;
        p.bytes_in += bytes as u64;
        if relayed {
            if !relay && !p.direct_fresh(now) {
                self.set_path(node, endpoint, true, "peer talks through the relay", now);
            }
            return;
        }
        let accept = p.accept_direct(endpoint, from, now);
        p.last_direct_rx = Some(now);
        if accept {
            let why = if relay {
                "direct frame authenticated"
            } else {
                "authenticated frame from a new address"
            };
            self.set_path(node, Some(from), false, why, now);
        } else if relay {
            self.set_path(node, endpoint, false, "direct frame authenticated", now);
        }
    }

    /// We sent a virtual packet of `bytes` to `node`; `answer`: it calls
    /// for one ([`expects_answer`]).
    pub(super) fn path_tx(&mut self, node: u32, bytes: usize, answer: bool, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&node) {
            let p = &mut peer.path;
            p.last_tx = Some(now);
            p.bytes_out += bytes as u64;
            if answer && p.waiting_since.is_none() {
                p.waiting_since = Some(now);
            }
        }
    }

    /// A verified PILA from `node` arrived from `from`. Applies the path
    /// rules and returns where to answer directly when that is not the
    /// peer's current path (the PILA's source, never adopted as endpoint).
    ///
    /// When we already have a session, pending pings are sent again: both
    /// sides start the key exchange at once on a cold connect (the dialler's
    /// punch request makes the beacon tell the listener to send its PILA),
    /// so the dialler may get the listener's PILA, derive the session and
    /// send its first packets before the listener has looked up the
    /// dialler's key; the listener cannot open them and drops them. Its
    /// PILA that follows (the answer once its session exists, or its
    /// rate-limited answer to what it could not open) is the signal to send
    /// again, instead of waiting for [`SILENCE`] (which that PILA resets).
    pub(super) fn path_on_pila(
        &mut self,
        node: u32,
        from: SocketAddr,
        via_relay: bool,
        now: Instant,
    ) -> Option<SocketAddr> {
        let had_session = self.peers.get(&node).is_some_and(|p| p.session.is_some());
        let answer_at = self.pila_path(node, from, via_relay, now);
        if had_session {
            self.resend_pings(node, now);
        }
        answer_at
    }

    fn pila_path(
        &mut self,
        node: u32,
        from: SocketAddr,
        via_relay: bool,
        now: Instant,
    ) -> Option<SocketAddr> {
        let peer = self.peers.get_mut(&node)?;
        peer.path.last_rx = Some(now);
        peer.path.waiting_since = None;
        let (relay, endpoint) = (peer.relay, peer.endpoint);
        if via_relay {
            if !relay && !peer.path.direct_fresh(now) {
                self.set_path(node, endpoint, true, "key exchange through the relay", now);
            }
            return None;
        }
        if endpoint == Some(from) && !relay {
            return None;
        }
        if endpoint.is_some() {
            // Replayed, spoofed, or the peer really moved: only a PILS from
            // there will tell. Answer there; do not move.
            self.stats.endpoint_refused += 1;
            tracing::debug!(
                "PILA of node {node} from {from}, not its endpoint: answered, not adopted"
            );
        }
        Some(from)
    }

    /// Asks the registry where `node` is (result: [`Cmd::Resolved`]).
    pub(super) fn spawn_resolve(&mut self, node: u32) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        if peer.resolving {
            return;
        }
        peer.resolving = true;
        let shared = self.shared.clone();
        let tx = self.cmd_tx.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let result = shared
                .registry
                .resolve_full(node)
                .await
                .map(|(endpoint, lan)| Resolution {
                    endpoint,
                    lan,
                    rtt: asked.elapsed(),
                });
            let _ = tx.send(Cmd::Resolved { node, result }).await;
        });
    }

    /// The registry's answer about `node`.
    pub(super) fn on_resolution(
        &mut self,
        node: u32,
        result: Result<Resolution, RegError>,
        now: Instant,
    ) {
        let local_v4 = self.nat.local_v4.clone();
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.resolving = false;
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                if peer.session.is_none() || !peer.queue.is_empty() {
                    let msg = format!("cannot reach {}: {e}", Addr::backbone(node));
                    self.fail_peer(node, ErrorCode::Unreachable, &msg);
                    // A dial must not wait ~29 s for a peer we cannot reach
                    // (or that is private and does not trust us).
                    self.fail_dials(node, &e, now);
                } else {
                    tracing::debug!("re-resolve of node {node} failed: {e}");
                }
                return;
            }
        };
        peer.path.registered = Some(r.endpoint);
        let lan = pick_lan(&local_v4, &r.lan, r.endpoint);
        peer.path.lan = lan;
        let target = lan.unwrap_or(r.endpoint);
        let mut candidates = vec![r.endpoint];
        if let Some(l) = lan {
            candidates.push(l);
        }
        peer.path.open_probe(&candidates, now);
        if let Some(w) = peer.path.probe.as_mut() {
            let at = (now + early_relay_delay(r.rtt)).min(w.relay_at);
            w.relay_at = at;
            let next = &mut self.nat.next_early_relay;
            *next = Some(next.map_or(at, |n| n.min(at)));
        }
        // The registry may move a path that is not working; a path that
        // answered recently stays (the registry cannot see NAT mappings).
        let keep = peer.endpoint.is_some() && peer.path.direct_fresh(now);
        let (relay, endpoint) = (peer.relay, peer.endpoint);
        peer.last_pila_sent = None;
        if !keep && endpoint != Some(target) {
            self.set_path(node, Some(target), relay, "registry resolve", now);
        }
        self.request_punch(node, now);
        // Re-key: our PILA now, on the path, and probes to the candidates.
        self.ensure_tunnel(node, now);
        self.force_pila(node, now);
        for c in candidates {
            self.send_probe(node, c, now);
        }
    }

    /// Sends a punch request for `node` to the beacon and remembers it.
    fn request_punch(&mut self, node: u32, now: Instant) {
        let Some(b) = self.beacon else {
            return;
        };
        let msg = beacon::encode_punch_request(self.node_id, node);
        self.send_raw(&msg, b);
        let pending = &mut self.nat.pending;
        pending.retain(|(n, t)| *n != node && now.duration_since(*t) < PUNCH_PENDING);
        if pending.len() >= MAX_PENDING_PUNCHES {
            pending.remove(0);
        }
        pending.push((node, now));
    }

    /// A 0x04 from the beacon: punch towards `ep` (spec §5.4 step 3) and
    /// probe it for the peers it may belong to.
    pub(super) fn on_punch_command(&mut self, ep: SocketAddr, now: Instant) {
        if self
            .nat
            .last_command
            .is_some_and(|t| now.duration_since(t) < PUNCH_COMMAND_SPACING)
        {
            return;
        }
        self.nat.last_command = Some(now);
        for _ in 0..3 {
            self.send_raw(&MAGIC_PILP, ep);
        }
        // The command names an endpoint, not a peer: it belongs to a punch
        // we requested, or to a peer at that IP (the other side requested).
        self.nat
            .pending
            .retain(|(_, t)| now.duration_since(*t) < PUNCH_PENDING);
        // A peer known at exactly that endpoint is the one; only when none
        // is (a symmetric NAT gives the peer a new port) do all peers at
        // that IP get a probe. Many peers share an IP (loopback, one NAT):
        // probing them all sent frames sealed for one peer to another,
        // which could only drop them.
        let at = |exact: bool| -> Vec<u32> {
            let hit = |e: SocketAddr| if exact { e == ep } else { e.ip() == ep.ip() };
            self.peers
                .iter()
                .filter(|(_, p)| p.endpoint.is_some_and(hit) || p.path.registered.is_some_and(hit))
                .map(|(&n, _)| n)
                .collect()
        };
        let mut nodes = at(true);
        if nodes.is_empty() {
            nodes = at(false);
        }
        if nodes.is_empty() {
            nodes = self.nat.pending.iter().map(|(n, _)| *n).collect();
        }
        if nodes.is_empty() {
            // The other side asked: our PILA lets it start the key exchange
            // from its side of the NAT (a symmetric NAT's mapping towards
            // us is only learnt from what we receive).
            let frame = self.pila_frame.clone();
            self.send_raw(&frame, ep);
        }
        for node in nodes {
            if let Some(p) = self.peers.get_mut(&node) {
                p.path.open_probe(&[ep], now);
            }
            self.send_probe(node, ep, now);
        }
    }

    /// Sends one probe to `node` at `addr`, directly: our PILA while no
    /// session exists, else a sealed control ping from the probe port.
    pub(super) fn send_probe(&mut self, node: u32, addr: SocketAddr, now: Instant) {
        let has_session = self.peers.get(&node).is_some_and(|p| p.session.is_some());
        if !has_session {
            let frame = self.pila_frame.clone();
            self.send_raw(&frame, addr);
            return;
        }
        let Some((seq, len)) = self.emit_probe(node, &[]) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&node) {
            p.path.last_probe = Some((seq, now));
        }
        self.seal_to(node, len, Some(addr), now);
    }

    /// Writes a control ping to `node` from the probe port, with the next
    /// probe sequence number and `payload`, at `sbuf[PLAIN_AT..]`; returns
    /// (sequence number, plaintext length) for [`Engine::seal_to`].
    pub(super) fn emit_probe(&mut self, node: u32, payload: &[u8]) -> Option<(u32, usize)> {
        let seq = self.nat.next_seq;
        self.nat.next_seq = self.nat.next_seq.wrapping_add(1).max(1);
        let repr = Repr {
            flags: Flags::NONE,
            protocol: Protocol::Control,
            src: Addr::backbone(self.node_id),
            dst: Addr::backbone(node),
            src_port: self.nat.probe_port,
            dst_port: 0,
            seq,
            ack: 0,
            window: 0,
            payload_len: payload.len(),
        };
        let len = header::emit_packet(&repr, payload, &mut self.sbuf[PLAIN_AT..]).ok()?;
        Some((seq, len))
    }

    /// A pong to one of our probes.
    pub(super) fn on_probe_pong(&mut self, node: u32, seq: u32, now: Instant) {
        if let Some(p) = self.peers.get_mut(&node) {
            if let Some((s, t)) = p.path.last_probe {
                if s == seq {
                    p.path.rtt = Some(now.duration_since(t));
                    p.path.last_probe = None;
                }
            }
        }
    }

    /// Records a round-trip time measured by a ping.
    pub(super) fn path_rtt(&mut self, node: u32, rtt: Duration) {
        self.shared.metrics.rtt.observe(rtt.as_secs_f64());
        if let Some(p) = self.peers.get_mut(&node) {
            p.path.rtt = Some(rtt);
        }
    }

    /// The peer stopped answering: re-resolve, punch, re-key.
    fn recover(&mut self, node: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        peer.path.last_recovery = Some(now);
        peer.path.recoveries += 1;
        peer.last_pila_sent = None;
        let n = peer.path.recoveries;
        let direct_dead = !peer.relay && !peer.path.direct_fresh(now);
        let ep = peer.endpoint;
        tracing::debug!("node {node} silent; re-resolving (attempt {n})");
        if n > RECOVERIES_BEFORE_RELAY && direct_dead && self.beacon.is_some() {
            self.set_path(node, ep, true, "no answer directly", now);
            if self.shared.config.endpoint.is_none() {
                // Perhaps it is us who moved (a new router): the beacon
                // answers discovers only from the address the registry has
                // for us, and we learn our new address only from the
                // beacon, so neither happens until we register again from
                // the new address. Once per fall back to the relay.
                tracing::debug!("node {node} silent through {n} recoveries; registering again");
                self.spawn_register();
            }
        }
        self.spawn_resolve(node);
        self.force_pila(node, now);
        // A ping lost on the way (relay queues drop under load) is sent
        // again; the reply is matched by sequence number, so a late first
        // answer is harmless.
        self.resend_pings(node, now);
    }

    /// Re-sends pending pings to `node` on its current path (after a path
    /// change or a re-key: the first copy may have gone to the old path).
    fn resend_pings(&mut self, node: u32, now: Instant) {
        let pending: Vec<(u16, u32, usize)> = self
            .pings
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|((_, port), p)| (*port, p.seq, p.size))
            .collect();
        for (port, seq, size) in pending {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let repr = Repr {
                flags: Flags::NONE,
                protocol: Protocol::Control,
                src: Addr::backbone(self.node_id),
                dst: Addr::backbone(node),
                src_port: port,
                dst_port: 0,
                seq,
                ack: 0,
                window: 0,
                payload_len: size,
            };
            self.send_packet(node, &repr, &payload, now);
        }
    }

    /// A session with `node` was (re)established by a PILA that came from
    /// `pila_from` when that is not the peer's endpoint.
    pub(super) fn path_on_session(
        &mut self,
        node: u32,
        pila_from: Option<SocketAddr>,
        now: Instant,
    ) {
        self.resend_pings(node, now);
        // The peer's PILA came from elsewhere (a NAT mapping the registry
        // does not know): one sealed probe there lets the real peer answer
        // with a PILS, which moves the endpoint. A replay cannot get here
        // (same key: no new session).
        if let Some(from) = pila_from {
            self.send_probe(node, from, now);
        }
        // Measure the RTT and validate the path at once.
        if let Some(p) = self.peers.get(&node) {
            if !p.relay {
                if let Some(ep) = p.endpoint {
                    self.send_probe(node, ep, now);
                }
            }
        }
        // Larger segments where the direct path carries them.
        self.pmtu_start(node, now);
    }

    /// The beacon saw us at `ep`. A change (new router, new mapping) means
    /// re-registering with it and re-probing the peers we talk to.
    pub(super) fn on_observed(&mut self, ep: SocketAddr, now: Instant) {
        let before = self.shared.status().observed;
        self.shared.set_observed(ep);
        if is_local(ep.ip()) || self.shared.config.endpoint.is_some() {
            return;
        }
        // The registry records the address our TCP connection comes from
        // with the port we register: behind a port-preserving NAT that is
        // already right, and only a different port needs a new registration.
        let registered = self.shared.status().endpoint;
        let first_differs = before.is_none()
            && registered
                .parse::<SocketAddr>()
                .is_ok_and(|r| r.port() != ep.port());
        let changed = before.is_some_and(|b| b != ep);
        if !changed && !first_differs {
            return;
        }
        if changed {
            tracing::info!(
                "our public address changed: {} -> {ep}; re-registering",
                before.map(|b| b.to_string()).unwrap_or_default()
            );
        } else {
            tracing::info!("beacon sees us at {ep}; registering that endpoint");
        }
        self.shared.update(|s| s.endpoint = ep.to_string());
        self.spawn_register();
        if changed {
            let active: Vec<u32> = self
                .peers
                .iter()
                .filter(|(_, p)| {
                    p.session.is_some()
                        && p.path
                            .last_rx
                            .is_some_and(|t| now.duration_since(t) < ACTIVE)
                })
                .map(|(&n, _)| n)
                .collect();
            for node in active {
                self.recover(node, now);
            }
        }
    }

    /// Registers again (the registry records the address the connection
    /// comes from), then asks the beacon where it sees us.
    fn spawn_register(&self) {
        let shared = self.shared.clone();
        let tx = self.cmd_tx.clone();
        tokio::spawn(async move {
            match super::register(&shared).await {
                Ok(_) => {
                    let _ = tx.send(Cmd::Discover).await;
                }
                Err(e) => tracing::warn!("re-registration with the new address failed: {e}"),
            }
        });
    }

    /// A cold connection tried through the relay while the direct probing
    /// goes on: the window stays open, and the first direct frame that
    /// authenticates moves the path back to direct.
    fn try_relay_early(&mut self, node: u32, now: Instant) {
        let ep = self.peers.get(&node).and_then(|p| p.endpoint);
        self.set_path(node, ep, true, "no direct answer yet", now);
        if let Some(p) = self.peers.get_mut(&node) {
            p.last_pila_sent = None;
        }
        self.force_pila(node, now);
    }

    /// The early-relay timer ([`NatState::next_early_relay`]) fired: tries
    /// every cold connection that is due through the relay, and sets the
    /// timer for the next one.
    pub(super) fn early_relay_timer(&mut self, now: Instant) {
        match self.nat.next_early_relay {
            Some(t) if t <= now => self.nat.next_early_relay = None,
            _ => return,
        }
        if self.beacon.is_none() {
            return;
        }
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (&node, p) in &self.peers {
            let Some(w) = &p.path.probe else { continue };
            if now >= w.until {
                continue;
            }
            if early_relay_due(p, now) {
                due.push(node);
            } else if p.session.is_none() && !p.relay && w.relay_at > now {
                next = Some(next.map_or(w.relay_at, |n| n.min(w.relay_at)));
            }
        }
        self.nat.next_early_relay = next;
        for node in due {
            self.try_relay_early(node, now);
        }
    }

    /// Every tick: silence, probes, relay fallback, direct retries, keepalives.
    pub(super) fn path_housekeeping(&mut self, now: Instant) {
        let beacon = self.beacon.is_some();
        let mut silent = Vec::new();
        let mut probes = Vec::new();
        let mut to_relay = Vec::new();
        let mut early_relay = Vec::new();
        let mut direct_try = Vec::new();
        let mut keepalive = Vec::new();
        for (&node, p) in self.peers.iter_mut() {
            let relay_due = beacon && early_relay_due(p, now);
            let st = &mut p.path;
            if p.session.is_some() && st.silent(now) {
                silent.push(node);
            }
            if let Some(w) = &st.probe {
                if now < w.until {
                    for &c in &w.candidates {
                        probes.push((node, c));
                    }
                    if relay_due {
                        early_relay.push(node);
                    }
                } else {
                    st.probe = None;
                    let no_direct = st.last_direct_rx.is_none() && !p.relay;
                    let stuck = p.session.is_none() && !p.queue.is_empty();
                    if beacon
                        && no_direct
                        && (stuck || (p.session.is_some() && st.waiting_since.is_some()))
                    {
                        to_relay.push(node);
                    }
                }
            }
            if p.relay && beacon {
                let active = st.last_rx.is_some_and(|t| now.duration_since(t) < ACTIVE);
                if active && st.next_direct_try.is_none_or(|t| now >= t) {
                    st.next_direct_try = Some(now + DIRECT_RETRY);
                    direct_try.push(node);
                }
            }
            if p.session.is_some()
                && !p.relay
                && st
                    .last_tx
                    .is_some_and(|t| now.duration_since(t) >= KEEPALIVE)
                && st
                    .last_rx
                    .is_some_and(|t| now.duration_since(t) < KEEPALIVE_GIVE_UP)
            {
                keepalive.push(node);
            }
        }
        for node in silent {
            self.recover(node, now);
        }
        for (node, addr) in probes {
            self.send_probe(node, addr, now);
        }
        for node in to_relay {
            let ep = self.peers.get(&node).and_then(|p| p.endpoint);
            self.set_path(node, ep, true, "punching failed", now);
            if let Some(p) = self.peers.get_mut(&node) {
                p.last_pila_sent = None;
            }
            self.force_pila(node, now);
        }
        for node in early_relay {
            self.try_relay_early(node, now);
        }
        for node in direct_try {
            let Some(p) = self.peers.get_mut(&node) else {
                continue;
            };
            let cands: Vec<SocketAddr> = p.path.registered.into_iter().chain(p.endpoint).collect();
            p.path.open_probe(&cands, now);
            self.request_punch(node, now);
        }
        for node in keepalive {
            if let Some(ep) = self.peers.get(&node).and_then(|p| p.endpoint) {
                self.send_probe(node, ep, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Emits a virtual packet with `flags`, `protocol`, ports and payload.
    fn plain(protocol: Protocol, flags: Flags, src_port: u16, payload: &[u8]) -> Vec<u8> {
        let repr = Repr {
            flags,
            protocol,
            src: Addr::new(0, 1),
            dst: Addr::new(0, 2),
            src_port,
            dst_port: 1000,
            seq: 1,
            ack: 1,
            window: 8,
            payload_len: payload.len(),
        };
        let mut buf = vec![0u8; 64 + payload.len()];
        let n = header::emit_packet(&repr, payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn only_packets_the_peer_answers_arm_the_silence_timer() {
        use Protocol::*;
        // answered: pings, data, SYN, FIN, datagrams
        assert!(expects_answer(&plain(Control, Flags::NONE, 9, b"ping")));
        assert!(expects_answer(&plain(Stream, Flags::ACK, 9, b"data")));
        assert!(expects_answer(&plain(Stream, Flags::SYN, 9, b"")));
        assert!(expects_answer(&plain(
            Stream,
            Flags::FIN | Flags::ACK,
            9,
            b""
        )));
        assert!(expects_answer(&plain(Datagram, Flags::NONE, 9, b"x")));
        // not answered: pongs, pure acknowledgements, resets
        assert!(!expects_answer(&plain(Control, Flags::ACK, 0, b"ping")));
        assert!(!expects_answer(&plain(Stream, Flags::ACK, 9, b"")));
        assert!(!expects_answer(&plain(Stream, Flags::RST, 9, b"")));
        // what cannot be parsed counts as answered (the old rule)
        assert!(expects_answer(&[1, 2, 3]));
    }

    #[test]
    fn the_early_relay_waits_twice_the_resolve_round_trip_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(early_relay_delay(Duration::ZERO), EARLY_RELAY_MIN);
        assert_eq!(early_relay_delay(ms(1)), EARLY_RELAY_MIN);
        assert_eq!(early_relay_delay(ms(10)), ms(23));
        assert_eq!(early_relay_delay(ms(100)), ms(203));
        assert_eq!(early_relay_delay(ms(900)), EARLY_RELAY);
        assert_eq!(early_relay_delay(Duration::MAX), EARLY_RELAY);
    }

    #[test]
    fn a_window_tries_the_relay_after_the_default_delay_unless_set_sooner() {
        let now = Instant::now();
        let mut st = PathState::default();
        st.open_probe(&[a("198.51.100.2:5")], now);
        let w = st.probe.as_ref().unwrap();
        assert_eq!(w.relay_at, now + EARLY_RELAY);
        // reopening keeps the deadline
        st.open_probe(&[a("198.51.100.3:5")], now + Duration::from_millis(50));
        assert_eq!(st.probe.as_ref().unwrap().relay_at, now + EARLY_RELAY);
    }

    #[test]
    fn kinds() {
        assert_eq!(path_kind(true, Some(a("192.168.1.2:5"))), "relay");
        assert_eq!(path_kind(false, Some(a("192.168.1.2:5"))), "lan");
        assert_eq!(path_kind(false, Some(a("198.51.100.2:5"))), "direct");
        assert_eq!(path_kind(false, Some(a("127.0.0.1:5"))), "direct");
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("10.0.0.1".parse().unwrap()));
        assert!(!is_local("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn lan_shortcut_needs_the_same_24_and_a_non_loopback_registration() {
        let ours = ["192.168.1.2".parse().unwrap()];
        let theirs = [a("10.0.0.3:4000"), a("192.168.1.3:4000")];
        assert_eq!(
            pick_lan(&ours, &theirs, a("198.51.100.2:4000")),
            Some(a("192.168.1.3:4000"))
        );
        assert_eq!(pick_lan(&ours, &theirs, a("127.0.0.1:4000")), None);
        assert_eq!(
            pick_lan(&ours, &[a("192.168.2.3:1")], a("198.51.100.2:1")),
            None
        );
    }

    #[test]
    fn silence_needs_an_unanswered_send_and_spacing() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        assert!(!p.silent(t0 + Duration::from_secs(10)));
        p.waiting_since = Some(t0);
        assert!(!p.silent(t0 + Duration::from_millis(500)));
        assert!(p.silent(t0 + SILENCE));
        p.last_recovery = Some(t0 + SILENCE);
        assert!(!p.silent(t0 + SILENCE + Duration::from_millis(500)));
        assert!(p.silent(t0 + SILENCE + RECOVERY_SPACING));
    }

    #[test]
    fn a_fresh_lan_path_is_kept_over_a_public_one() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        let lan = a("192.168.1.3:4000");
        let public = a("198.51.100.2:4000");
        assert!(p.accept_direct(None, lan, t0));
        assert!(!p.accept_direct(Some(lan), lan, t0));
        p.last_direct_rx = Some(t0);
        assert!(!p.accept_direct(Some(lan), public, t0));
        assert!(p.accept_direct(Some(public), lan, t0));
        assert!(p.accept_direct(Some(lan), public, t0 + DIRECT_FRESH));
    }

    #[test]
    fn probe_candidates_are_bounded() {
        let t0 = Instant::now();
        let mut p = PathState::default();
        for i in 0..10 {
            p.open_probe(&[a(&format!("198.51.100.{i}:1"))], t0);
        }
        let w = p.probe.unwrap();
        assert_eq!(w.candidates.len(), MAX_CANDIDATES);
        assert_eq!(w.until, t0 + PROBE_WINDOW);
    }
}
