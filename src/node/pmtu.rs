//! Larger stream segments on paths proven to carry them (issue 14 item 4).
//!
//! Streams cut data into 1,373-byte segments ([`DEFAULT_MSS`]), which fit
//! any path a peer can be reached on (spec §12.4). Loopback and jumbo-frame
//! LANs carry far larger datagrams, and there the per-segment cost (one
//! AEAD, one header, one datagram each) is what limits a stream. So, for a
//! peer on a direct path, the daemon:
//!
//! 1. asks the kernel for the route MTU towards the peer's endpoint
//!    ([`route_mtu`]: `IP_MTU` / `IPV6_MTU` of a connected UDP socket) and
//!    turns it into a segment size ([`candidate`]), capped by
//!    `pilot-daemon --max-segment`. Paths where that is less than
//!    [`MIN_GAIN`] times the default are left alone: a probe and a re-cut are
//!    not worth a few per cent, and every Internet path is such a path;
//! 2. proves the size end to end with a sealed control ping whose payload
//!    makes the datagram exactly as large as a full segment (§8.2: the pong
//!    carries the same payload back, so its arrival says the ping arrived
//!    whole). The kernel sends it with DF (the socket's default
//!    `IP_PMTUDISC_WANT`), so a smaller link on the way drops it instead of
//!    fragmenting it. It goes out alone, not in a GSO batch: in the lab a
//!    batched probe crossed a 1500-byte router in 3 runs of 8. Only our
//!    sending direction is proven (the pong may come back in fragments);
//!    the peer proves its own;
//! 3. on the pong, checks the route MTU again (an ICMP "fragmentation
//!    needed" may have lowered it meanwhile, after which the kernel would
//!    have fragmented a retry) and raises the peer's segment size; its
//!    streams switch at once ([`crate::stream::Connection::set_mss`]);
//! 4. after [`TRIES`] unanswered probes, [`PROBE_TIMEOUT`] apart, keeps the
//!    default until the path changes.
//!
//! Any path change (relay, new endpoint) puts the peer back on the default
//! size and, when the new path is direct, probes again. Relayed frames carry
//! a 9-byte relay header and cross the Internet, so they always use the
//! default.
//!
//! The state machine ([`Pmtu`]) is plain data driven by the engine's clock;
//! the engine glue sits at the bottom of this file.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::stream::DEFAULT_MSS;
use crate::wire::address::Addr;

/// Bytes a PILS frame adds to a segment's payload (spec §3.2: 4 magic + 4
/// id + 12 nonce + 34 header + 16 tag).
pub const PILS_OVERHEAD: usize = 70;

/// IPv4 header (no options) plus UDP header.
const V4_OVERHEAD: usize = 20 + 8;
/// IPv6 header plus UDP header.
const V6_OVERHEAD: usize = 40 + 8;

/// The largest segment payload whose frame fits one IPv4 datagram (total
/// length is a u16: 65,535 − 28 − 70).
pub const MAX_SEGMENT: usize = 65_535 - V4_OVERHEAD - PILS_OVERHEAD;

/// `--max-segment` default. Measured on loopback (BENCHMARKS.md, issue 14):
/// one stream moved 883-963 MB/s at 1,373 bytes, 1,170-1,503 at 16,000,
/// 1,313-1,507 at 32,000 and 1,312-1,325 at 60,000; two 32,000-byte frames
/// also fill one 64 KB GSO send.
pub const DEFAULT_MAX_SEGMENT: usize = 32_000;

/// Probe only when the path's size is at least this many times the
/// default: below that the gain is a few per cent.
pub const MIN_GAIN: usize = 2;

/// Wait this long for a probe's pong before sending it again (a LAN or
/// loopback round trip is well under a millisecond; a busy daemon may take
/// a few hundred).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes sent for one size before giving up until the path changes (one
/// lost datagram must not cost a path its large segments).
pub const TRIES: u32 = 3;

/// Segment size for a path whose route MTU is `mtu` (IPv6 if `v6`), capped
/// by `max_segment`; `None` when not worth probing.
pub fn candidate(mtu: usize, v6: bool, max_segment: usize) -> Option<usize> {
    let ip = if v6 { V6_OVERHEAD } else { V4_OVERHEAD };
    let size = mtu
        .checked_sub(ip + PILS_OVERHEAD)?
        .min(max_segment)
        .min(MAX_SEGMENT);
    (size >= MIN_GAIN * DEFAULT_MSS).then_some(size)
}

/// The kernel's route MTU towards `dest` (what a datagram to it may be
/// without fragmentation, as far as this host knows: the outgoing link's
/// MTU, lowered by any ICMP "fragmentation needed" seen since).
pub fn route_mtu(dest: SocketAddr) -> Option<usize> {
    let dest = SocketAddr::new(dest.ip().to_canonical(), dest.port());
    let (bind, level, opt): (SocketAddr, _, _) = match dest.ip() {
        IpAddr::V4(_) => ("0.0.0.0:0".parse().ok()?, libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => ("[::]:0".parse().ok()?, libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(dest).ok()?;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a valid fd, writing at most `len` bytes into a
    // live int whose size `len` holds.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && v > 0).then_some(v as usize)
}

/// What the engine should do for a peer's probing at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// Send the probe for this size again.
    Resend(usize),
    /// The last try went unanswered: stay at the default.
    GiveUp,
}

/// One outstanding probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    seq: u32,
    size: usize,
    sent: Instant,
    tries: u32,
}

/// Segment-size state of one peer's current path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pmtu {
    /// Proven segment payload size; 0: none proven (use the default).
    proven: usize,
    probe: Option<Probe>,
    /// Probing ended without an answer on this path.
    gave_up: bool,
}

impl Pmtu {
    /// Payload bytes per stream segment to this peer now.
    pub fn segment(&self) -> usize {
        if self.proven == 0 {
            DEFAULT_MSS
        } else {
            self.proven
        }
    }

    /// Whether a probe may start (none running, none proven, not given up).
    pub fn idle(&self) -> bool {
        self.proven == 0 && self.probe.is_none() && !self.gave_up
    }

    /// Whether a probe is waiting for its pong.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Back to the default size with nothing running (a new path). Returns
    /// whether the segment size changed.
    pub fn reset(&mut self) -> bool {
        let was = self.segment();
        *self = Pmtu::default();
        was != DEFAULT_MSS
    }

    /// A probe of `size` went out as `seq` (a first try or a resend).
    pub fn sent(&mut self, seq: u32, size: usize, now: Instant) {
        let tries = match self.probe {
            Some(p) if p.size == size => p.tries + 1,
            _ => 1,
        };
        self.probe = Some(Probe {
            seq,
            size,
            sent: now,
            tries,
        });
    }

    /// A pong for `seq` with `len` payload bytes arrived: the size it
    /// proves, if it answers our probe (the caller still checks the route).
    pub fn on_pong(&mut self, seq: u32, len: usize) -> Option<usize> {
        let p = self.probe?;
        if p.seq != seq || p.size != len {
            return None;
        }
        self.probe = None;
        Some(p.size)
    }

    /// Records a size as proven.
    pub fn prove(&mut self, size: usize) {
        self.proven = size;
        self.gave_up = false;
    }

    /// Stops probing at the default size (the proof was refused).
    pub fn give_up(&mut self) {
        self.probe = None;
        self.gave_up = true;
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Due {
        let Some(p) = self.probe else {
            return Due::Nothing;
        };
        if now.duration_since(p.sent) < PROBE_TIMEOUT {
            Due::Nothing
        } else if p.tries >= TRIES {
            self.give_up();
            Due::GiveUp
        } else {
            Due::Resend(p.size)
        }
    }
}

impl Engine {
    /// Starts proving a larger segment size to `node` when its path is
    /// direct, its session is up and nothing is known yet.
    pub(super) fn pmtu_start(&mut self, node: u32, now: Instant) {
        let max = self.shared.config.max_segment;
        let Some(p) = self.peers.get(&node) else {
            return;
        };
        if p.relay || p.session.is_none() || !p.pmtu.idle() {
            return;
        }
        let Some(ep) = p.endpoint else {
            return;
        };
        let size = route_mtu(ep).and_then(|m| candidate(m, ep.ip().to_canonical().is_ipv6(), max));
        match size {
            Some(size) => self.pmtu_send(node, ep, size, now),
            None => {
                if let Some(p) = self.peers.get_mut(&node) {
                    p.pmtu.give_up();
                }
            }
        }
    }

    /// Sends one probe of `size` to `node` at `ep`: a sealed control ping
    /// from the probe port whose frame is as large as a full segment.
    fn pmtu_send(&mut self, node: u32, ep: std::net::SocketAddr, size: usize, now: Instant) {
        let Some((seq, len)) = self.emit_probe(node, &vec![0u8; size]) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&node) {
            p.pmtu.sent(seq, size, now);
        }
        tracing::debug!("probing {size}-byte segments to node {node} at {ep}");
        // The probe goes out as a datagram of its own: batched with other
        // frames it would be one GSO send, which a router may treat
        // differently from the plain datagrams it stands for.
        self.flush_tx();
        self.seal_to(node, len, Some(ep), now);
        self.flush_tx();
    }

    /// A pong to a probe-port ping with `len` payload bytes: true when it
    /// was a segment-size probe (proven or refused here).
    pub(super) fn pmtu_on_pong(&mut self, node: u32, seq: u32, len: usize, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&node) else {
            return false;
        };
        let Some(size) = p.pmtu.on_pong(seq, len) else {
            return false;
        };
        let ep = p.endpoint;
        let still = ep.and_then(route_mtu).is_some_and(|m| {
            let ip = if ep.is_some_and(|e| e.ip().to_canonical().is_ipv6()) {
                V6_OVERHEAD
            } else {
                V4_OVERHEAD
            };
            m >= size + ip + PILS_OVERHEAD
        });
        if !still || p.relay {
            // The route shrank while the probe was out: the pong may have
            // come through fragments.
            p.pmtu.give_up();
            tracing::info!(
                "path to {} shrank below {size}-byte segments during the probe; keeping {DEFAULT_MSS}",
                Addr::backbone(node)
            );
            return true;
        }
        p.pmtu.prove(size);
        tracing::info!(
            "path to {} carries {size}-byte segments",
            Addr::backbone(node)
        );
        self.streams_set_segment(node, size, now);
        true
    }

    /// The path to `node` changed: back to the default size, and probing
    /// again when the new path is direct.
    pub(super) fn pmtu_path_changed(&mut self, node: u32, now: Instant) {
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        if p.pmtu.reset() {
            self.streams_set_segment(node, DEFAULT_MSS, now);
        }
        self.pmtu_start(node, now);
    }

    /// Every tick: resends and give-ups of probes.
    pub(super) fn pmtu_housekeeping(&mut self, now: Instant) {
        let mut resend = Vec::new();
        for (&node, p) in self.peers.iter_mut() {
            if !p.pmtu.probing() {
                continue;
            }
            match p.pmtu.poll(now) {
                Due::Resend(size) => {
                    if let (Some(ep), false) = (p.endpoint, p.relay) {
                        resend.push((node, ep, size));
                    } else {
                        p.pmtu.give_up();
                    }
                }
                Due::GiveUp => {
                    tracing::info!(
                        "path to {}: no answer to {TRIES} probes for larger segments; keeping {DEFAULT_MSS}",
                        Addr::backbone(node)
                    );
                }
                Due::Nothing => {}
            }
        }
        let max = self.shared.config.max_segment;
        for (node, ep, size) in resend {
            // An ICMP "fragmentation needed" for the last try lowered the
            // route: the kernel would now fragment a resend, so ask again.
            let mtu = route_mtu(ep);
            match mtu.and_then(|m| candidate(m, ep.ip().to_canonical().is_ipv6(), max)) {
                Some(c) => self.pmtu_send(node, ep, c.min(size), now),
                None => {
                    tracing::info!(
                        "path to {} does not carry {size}-byte segments (route MTU now {}); keeping {DEFAULT_MSS}",
                        Addr::backbone(node),
                        mtu.map_or("unknown".to_string(), |m| m.to_string())
                    );
                    if let Some(p) = self.peers.get_mut(&node) {
                        p.pmtu.give_up();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_leave_internet_paths_alone() {
        // A 1500-byte path: 1500 − 28 − 70 = 1402, too close to 1373.
        assert_eq!(candidate(1500, false, DEFAULT_MAX_SEGMENT), None);
        assert_eq!(candidate(1280, true, DEFAULT_MAX_SEGMENT), None);
        assert_eq!(candidate(10, false, DEFAULT_MAX_SEGMENT), None);
        // A jumbo LAN: the frame fills the link exactly.
        assert_eq!(candidate(9000, false, DEFAULT_MAX_SEGMENT), Some(9000 - 98));
        assert_eq!(candidate(9000, true, DEFAULT_MAX_SEGMENT), Some(9000 - 118));
        // Loopback: the flag caps it, and nothing exceeds one datagram.
        assert_eq!(candidate(65_536, false, DEFAULT_MAX_SEGMENT), Some(32_000));
        assert_eq!(candidate(65_536, false, usize::MAX), Some(MAX_SEGMENT));
        assert_eq!(MAX_SEGMENT + PILS_OVERHEAD + V4_OVERHEAD, 65_535);
        // `--max-segment 1373` turns probing off.
        assert_eq!(candidate(65_536, false, DEFAULT_MSS), None);
    }

    #[test]
    fn a_pong_proves_only_its_own_size_and_sequence() {
        let t = Instant::now();
        let mut p = Pmtu::default();
        assert!(p.idle());
        assert_eq!(p.segment(), DEFAULT_MSS);
        p.sent(7, 9000, t);
        assert!(!p.idle());
        assert_eq!(p.on_pong(8, 9000), None, "another probe's pong");
        assert_eq!(p.on_pong(7, 100), None, "a pong that lost its padding");
        assert_eq!(p.on_pong(7, 9000), Some(9000));
        p.prove(9000);
        assert_eq!(p.segment(), 9000);
        assert!(!p.idle());
        assert!(p.reset(), "back to the default is a change");
        assert_eq!(p.segment(), DEFAULT_MSS);
        assert!(!p.reset());
    }

    #[test]
    fn unanswered_probes_are_resent_then_given_up() {
        let t = Instant::now();
        let mut p = Pmtu::default();
        p.sent(1, 9000, t);
        assert_eq!(p.poll(t + PROBE_TIMEOUT / 2), Due::Nothing);
        let mut now = t;
        for seq in 2..=TRIES {
            now += PROBE_TIMEOUT;
            assert_eq!(p.poll(now), Due::Resend(9000));
            p.sent(seq, 9000, now);
        }
        now += PROBE_TIMEOUT;
        assert_eq!(p.poll(now), Due::GiveUp);
        assert!(!p.probing());
        assert!(!p.idle(), "no new probe on this path");
        assert_eq!(p.segment(), DEFAULT_MSS);
        p.reset();
        assert!(p.idle(), "a new path probes again");
    }

    #[test]
    fn the_loopback_route_is_large() {
        let mtu = route_mtu("127.0.0.1:9".parse().unwrap());
        assert!(
            mtu.is_some_and(|m| m >= 16_384),
            "loopback route MTU {mtu:?}"
        );
    }
}
