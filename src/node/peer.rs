//! What the daemon knows about one peer: where it is (direct endpoint or
//! relay), its keys, the tunnel session, and packets waiting for a session.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::crypto::tunnel::Session;

/// Packets queued per peer while no session exists (spec §4.9: 64, oldest
/// dropped when full).
pub const QUEUE_PER_PEER: usize = 64;

/// Peers that may hold queued packets at once (spec §4.9: 256).
pub const MAX_QUEUEING_PEERS: usize = 256;

/// One peer of the node.
#[derive(Default)]
pub struct Peer {
    /// The peer's UDP endpoint, when known (resolve, PILA source, traffic).
    pub endpoint: Option<SocketAddr>,
    /// Frames to this peer go through the beacon relay.
    pub relay: bool,
    /// The peer's Ed25519 key as confirmed by the registry.
    pub ed25519: Option<[u8; 32]>,
    /// The peer's current X25519 key (from its last verified PILA).
    pub x25519: Option<[u8; 32]>,
    /// The tunnel session, once a verified PILA was exchanged.
    pub session: Option<Session>,
    /// Plaintext virtual packets waiting for the session.
    pub queue: VecDeque<Vec<u8>>,
    /// A registry `resolve` is in flight.
    pub resolving: bool,
    /// A registry `lookup` of the peer's key is in flight.
    pub key_lookup: bool,
    /// When we last sent our PILA to this peer.
    pub last_pila_sent: Option<Instant>,
    /// PILAs sent since the queue started waiting for a session.
    pub pila_attempts: u32,
    /// When an authenticated frame last arrived from the peer.
    pub last_seen: Option<Instant>,
    /// Path bookkeeping: probes, silence, RTT, bytes (path.rs).
    pub path: super::path::PathState,
    /// Stream segment size proven for the current path (pmtu.rs).
    pub pmtu: super::pmtu::Pmtu,
}

impl Peer {
    /// Queues a plaintext packet, dropping the oldest when full.
    pub fn enqueue(&mut self, packet: Vec<u8>) {
        if self.queue.len() >= QUEUE_PER_PEER {
            self.queue.pop_front();
        }
        self.queue.push_back(packet);
    }

    /// `direct`, `lan` or `relay`, for people.
    pub fn path_name(&self) -> &'static str {
        super::path::path_kind(self.relay, self.endpoint)
    }
}
