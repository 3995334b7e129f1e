//! The registry's state machine (spec §6.4): node table, key → id index,
//! hostnames, visibility, trust pairs and handshake inboxes.
//!
//! It is synchronous and clock-injected ([`Registry::handle`] takes `now`),
//! so every rule is unit-testable without sockets; the TCP shell in
//! `server.rs` only frames bytes and waits for durability. One mutex guards
//! the whole state: every operation is a few hash-map lookups plus at most
//! one Ed25519 verification, far shorter than any network round trip.
//!
//! Every mutation a client must be able to rely on after a crash (a new id,
//! a hostname, visibility, trust pairs, handshake inboxes, deregistration)
//! bumps a generation counter; the handler returns that generation and the
//! server sends the reply only once the store has made it durable (see
//! `store/`). When a store is attached ([`Registry::track_changes`]), each
//! mutation also records which rows it touched, and the store's writer takes
//! just those rows ([`Registry::take_changes`]): a batch costs what changed,
//! not the size of the registry. Liveness (heartbeats, `last_seen`) is never
//! recorded: a heartbeat touches memory only.
//!
//! Deliberate differences from the reference (spec §12.16, §12.18):
//! * an unknown key with a known `owner` gets a **new** id (no takeover);
//! * every signed request is verified every time (no 120 s skip);
//! * `punch` answers only a participant, and only with the endpoint of a
//!   public or trusted peer;
//! * handshake response inboxes are bounded like request inboxes.

use super::shard::ShardedMap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::networks::{InviteRecord, NetSnapshot, NetworkRecord, Networks, TagRecord};
use crate::wire::address::Addr;
use crate::wire::registry::{
    self as wire, CheckTrustOk, Empty, HandshakeRequestEntry, HandshakeResponseEntry, HeartbeatOk,
    LookupOk, NodeSigned, PollHandshakesOk, PunchOk, RegisterOk, Request, RequestHandshakeOk,
    ResolveHostnameOk, ResolveOk, RespondHandshakeOk, Response, SetHostnameOk, SetVisibilityOk,
    HANDSHAKE_INBOX, MAX_JUSTIFICATION, PROTOCOL_VERSION,
};

/// Most node ids the registry allocates: 2^22 (4,194,304). The reference
/// stops at 1,000,000 (spec App. C), but instances over one database hold
/// ids in blocks of their own (`store::postgres::ID_BLOCK`), so with that cap
/// a fleet ran out a few hundred short of a million agents (587 refused in
/// the 1,000,000-node bench with two instances). Ids are 32-bit on the wire,
/// so nothing else changes; the cap still bounds memory (~4 GB at about
/// 950 bytes a node).
pub const MAX_NODES: u32 = 1 << 22;
/// Most trust pairs one node may take part in (our bound; the reference has none).
pub const MAX_TRUST_PER_NODE: usize = 10_000;
/// Most LAN addresses kept per node (our bound).
pub const MAX_LAN_ADDRS: usize = 32;
/// Longest free-text field kept (owner, version, an address) (our bound).
pub const MAX_TEXT_FIELD: usize = 256;
/// Longest hostname (spec §6.4.5).
pub const MAX_HOSTNAME: usize = 63;
/// New node ids one source address may obtain: burst, then per second
/// (issue 10 item 6: fresh-key registrations ran at ~1,400/s from one host;
/// an IPv6 source counts by its /64).
pub const NEW_IDS_PER_SOURCE: (f64, f64) = (1.0, 128.0);
/// Source addresses tracked by the new-id quota.
const QUOTA_SOURCES: usize = 65_536;
/// An id whose key never signed anything within this time after its
/// registration is reclaimed (issue 10 item 6).
pub const UNPROVEN_GRACE: Duration = Duration::from_secs(600);
/// Pending handshake requests older than this are dropped (issue 10 item 6).
pub const HANDSHAKE_TTL: Duration = Duration::from_secs(3600);
/// Names no node may take (spec §6.4.5).
pub const RESERVED_HOSTNAMES: [&str; 3] = ["localhost", "backbone", "broadcast"];

/// One known node id. Kept after reaping/deregistration (with `live =
/// false`) so that the same key gets the same id back (spec §6.4.1 rule 2).
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id.
    pub id: u32,
    /// Its Ed25519 key.
    pub key: VerifyingKey,
    /// Owner e-mail, informational.
    pub owner: Option<String>,
    /// In the node table (registered and not reaped/deregistered).
    pub live: bool,
    /// Last register/heartbeat (not persisted; reset to load time).
    pub last_seen: Instant,
    /// Hostname (only while live).
    pub hostname: Option<String>,
    /// Visibility.
    pub public: bool,
    /// Registry-observed endpoint `ip:port`.
    pub real_addr: String,
    /// Reported LAN endpoints.
    pub lan_addrs: Vec<String>,
    /// Software version.
    pub version: Option<String>,
    /// Unix seconds when this key was first registered.
    pub key_created: u64,
    /// The key has signed something (nodes loaded from the store count as
    /// proven); unproven ids are reclaimed after [`UNPROVEN_GRACE`].
    pub proven: bool,
    /// When this id was allocated (or loaded).
    pub created: Instant,
}

impl Node {
    /// The persisted form of this node.
    pub fn record(&self) -> NodeRecord {
        NodeRecord {
            id: self.id,
            public_key: wire::b64_encode(self.key.as_bytes()),
            owner: self.owner.clone(),
            live: self.live,
            hostname: self.hostname.clone(),
            public: self.public,
            real_addr: self.real_addr.clone(),
            lan_addrs: self.lan_addrs.clone(),
            version: self.version.clone(),
            key_created: self.key_created,
        }
    }
}

/// The persisted form of a node (see `store/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: u32,
    /// Base64 public key.
    pub public_key: String,
    /// Owner e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Live at the time of the snapshot.
    pub live: bool,
    /// Hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Visibility.
    #[serde(default)]
    pub public: bool,
    /// Endpoint.
    #[serde(default)]
    pub real_addr: String,
    /// LAN endpoints.
    #[serde(default)]
    pub lan_addrs: Vec<String>,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Unix seconds of first registration of this key.
    #[serde(default)]
    pub key_created: u64,
}

/// A pending handshake request as persisted: `from` asked `to` for trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequestRecord {
    /// The node whose inbox holds it.
    pub to: u32,
    /// The requester.
    pub from: u32,
    /// The requester's text.
    pub justification: String,
    /// Unix seconds when the registry received it.
    pub timestamp: i64,
}

/// A handshake answer waiting for its requester, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponseRecord {
    /// The requester, whose inbox holds it.
    pub to: u32,
    /// The node that answered.
    pub from: u32,
    /// Accepted or rejected.
    pub accept: bool,
    /// Unix seconds when the registry received it.
    pub timestamp: i64,
}

/// One node's two handshake inboxes, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inboxes {
    /// Requests waiting for the node.
    pub requests: Vec<HandshakeRequestRecord>,
    /// Answers waiting for the node.
    pub responses: Vec<HandshakeResponseRecord>,
}

/// The durable rows changed since the store last took them: each entry is
/// the row's current value (`None`/`false`: the row is gone). Newer change
/// sets override older ones key by key ([`Changes::merge`]), so a batch that
/// failed to commit is retried merged with what came after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The next id to allocate.
    pub next_id: u32,
    /// Node rows: `None` means deleted.
    pub nodes: HashMap<u32, Option<NodeRecord>>,
    /// Trust pairs `(a, b)`, `a < b`: present or not.
    pub trust: HashMap<(u32, u32), bool>,
    /// One-sided consents `(a, b)`: present or not.
    pub consents: HashMap<(u32, u32), bool>,
    /// Whole inboxes of the nodes whose inboxes changed.
    pub inboxes: HashMap<u32, Inboxes>,
    /// Network rows (`super::networks`): `None` means deleted.
    pub networks: HashMap<u16, Option<NetworkRecord>>,
    /// Memberships `(network, node)`: present or not.
    pub network_members: HashMap<(u16, u32), bool>,
    /// Whole invitation lists of the invited nodes whose list changed.
    pub network_invites: HashMap<u32, Vec<InviteRecord>>,
    /// Whole tag lists of the nodes whose tags changed (empty: none).
    pub node_tags: HashMap<u32, Vec<String>>,
}

impl Changes {
    /// Folds `newer` into `self` (newer values win).
    pub fn merge(&mut self, newer: Changes) {
        self.next_id = self.next_id.max(newer.next_id);
        self.nodes.extend(newer.nodes);
        self.trust.extend(newer.trust);
        self.consents.extend(newer.consents);
        self.inboxes.extend(newer.inboxes);
        self.networks.extend(newer.networks);
        self.network_members.extend(newer.network_members);
        self.network_invites.extend(newer.network_invites);
        self.node_tags.extend(newer.node_tags);
    }

    /// Rows this change set writes or deletes.
    pub fn rows(&self) -> usize {
        self.nodes.len()
            + self.trust.len()
            + self.consents.len()
            + self.inboxes.len()
            + self.networks.len()
            + self.network_members.len()
            + self.network_invites.len()
            + self.node_tags.len()
    }
}

/// Which rows changed since [`Registry::take_changes`] last ran.
#[derive(Debug, Default)]
struct Dirty {
    nodes: HashSet<u32>,
    trust: HashSet<(u32, u32)>,
    consents: HashSet<(u32, u32)>,
    inboxes: HashSet<u32>,
}

/// Everything the store persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Next id to allocate (ids are never reused).
    pub next_id: u32,
    /// Every known id.
    pub nodes: Vec<NodeRecord>,
    /// Trust pairs, each `[a, b]` with `a < b`.
    pub trust: Vec<[u32; 2]>,
    /// One-sided consents `[a, b]`: `a` signed that it trusts `b`
    /// (request, accept or report); a pair exists once both directions do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consents: Vec<[u32; 2]>,
    /// Pending handshake requests, oldest first per inbox (not in JSON
    /// stores written before the SQLite store; absent means none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handshake_requests: Vec<HandshakeRequestRecord>,
    /// Handshake answers waiting for their requesters, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handshake_responses: Vec<HandshakeResponseRecord>,
    /// Networks (`super::networks`; not in JSON stores, which predate them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkRecord>,
    /// Memberships `(network, node)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_members: Vec<(u16, u32)>,
    /// Pending network invitations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_invites: Vec<InviteRecord>,
    /// Node tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_tags: Vec<TagRecord>,
}

/// Why a snapshot cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(pub String);

#[derive(Debug, Clone)]
struct PendingRequest {
    from: u32,
    justification: String,
    timestamp: i64,
}

/// The new-id quota key of a source address: the IPv4 address, or the /64
/// of an IPv6 one.
fn quota_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct State {
    /// Boxed: a node is ~370 bytes (the decompressed key alone is 192), and
    /// the table stores values inline, so growing it past 2^19 entries
    /// moved ~170 MB under the lock (the once-per-run 350 ms lookup stall
    /// at 1,000,000 nodes, BENCHMARKS.md) and left half-empty buckets of
    /// that size resident (~790 MB at 2^21 buckets). Boxed, a growth moves
    /// 16-byte entries and the table is 32 MB at a million.
    nodes: ShardedMap<u32, Box<Node>>,
    /// Sharded, as `nodes` (`super::shard`: growing this index past 917,504
    /// keys took 48 ms under the lock).
    by_key: ShardedMap<[u8; 32], u32>,
    hostnames: HashMap<String, u32>,
    next_id: u32,
    trust: HashMap<u32, HashSet<u32>>,
    /// `a -> {b}`: `a` signed its consent to trust `b` (spec §12.16 fix).
    consents: HashMap<u32, HashSet<u32>>,
    hs_requests: HashMap<u32, Vec<PendingRequest>>,
    hs_responses: HashMap<u32, VecDeque<HandshakeResponseEntry>>,
    /// Bumped by every durable mutation.
    generation: u64,
    /// Ids reclaimed from keys that never proved themselves.
    free_ids: Vec<u32>,
    /// New ids per source address.
    new_id_quota: Option<crate::ratelimit::Limiter<IpAddr>>,
    /// Rows changed since the store took them; `None` without a store.
    dirty: Option<Dirty>,
    /// Number of live nodes (kept up to date so that metrics need not
    /// count a million nodes under the lock).
    live_count: usize,
    /// Shared database only (`store::postgres`): nodes another instance
    /// serves. Their liveness is that instance's business, so the reaper
    /// here leaves them alone.
    remote: HashSet<u32>,
    /// Shared database only: the node ids this instance may allocate
    /// (blocks reserved in the database), instead of `next_id`.
    id_blocks: Option<IdBlocks>,
    /// Networks, invitations and tags (`super::networks`).
    nets: Networks,
    /// The signature check made off the lock for the request being
    /// handled (`Registry::handle_checked`); empty otherwise.
    checked: Prechecked,
}

/// Node ids reserved for this instance: the block in use and a spare, so
/// that a registration never waits for the database to hand out ids.
#[derive(Debug, Default)]
struct IdBlocks {
    current: std::ops::Range<u32>,
    spare: Option<std::ops::Range<u32>>,
}

/// The result of handling one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply.
    pub response: Response,
    /// If set, the reply may only be sent once the store has persisted this
    /// generation.
    pub durable_generation: Option<u64>,
}

/// How long a signed registration's timestamp stays acceptable (either
/// direction, for clock skew): bounds how long a captured one can be replayed.
pub const REGISTER_SIGNATURE_WINDOW: u64 = 300;
/// Node ids one connection remembers as proven (a daemon uses one).
const MAX_PROVEN_PER_CONN: usize = 16;

/// What one registry connection has proven (issue 10 item 1). `register` is
/// unsigned in Pilot v1, so a registration that names an already-known key
/// changes nothing until the key is proven: by our signed registration, or
/// (reference nodes) by a signed request for that node on the same
/// connection, which then applies the parked registration.
#[derive(Debug, Default)]
pub struct ConnAuth {
    /// Node ids whose key signed something on this connection.
    proven: HashSet<u32>,
    /// The last unproven registration of a known key on this connection.
    pending: Option<(u32, wire::Register, SocketAddr)>,
}

impl ConnAuth {
    fn prove(&mut self, id: u32) {
        if self.proven.len() >= MAX_PROVEN_PER_CONN {
            self.proven.clear();
        }
        self.proven.insert(id);
    }
}

/// The registry state machine. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Registry {
    state: std::sync::Mutex<State>,
    /// Wakes `poll_handshakes` long-polls when a node's inbox fills.
    waiters: std::sync::Mutex<HashMap<u32, std::sync::Arc<tokio::sync::Notify>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The one signature check of the registry (Ed25519, strict, spec §6.3):
/// what `crypto::identity::verify` does, but with the key already
/// decompressed (decompressing it again cost ~15 % of a heartbeat).
fn signature_ok(key: &VerifyingKey, msg: &str, sig_b64: Option<&str>) -> bool {
    let Some(sig) = sig_b64.and_then(wire::decode_signature) else {
        return false;
    };
    key.verify_strict(msg.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}

/// What one request's signature check needs, copied out of the registry
/// so that the check runs without its lock, on another thread
/// (`super::verify`).
#[derive(Debug)]
pub struct SigCheck {
    /// The key (compressed): the registering key, or the signer's.
    pk: [u8; 32],
    /// The signer's key as the registry keeps it (decompressed); `None`
    /// for a registration, whose key is decompressed by the check.
    key: Option<VerifyingKey>,
    /// The signed text and the signature, if the request is signed.
    signed: Option<(String, String)>,
}

impl SigCheck {
    /// Runs the check (the expensive part: decompression and Ed25519).
    pub fn run(self) -> Prechecked {
        let key = self.key.or_else(|| VerifyingKey::from_bytes(&self.pk).ok());
        let verdict = match (&key, &self.signed) {
            (Some(k), Some((text, sig))) => Some(signature_ok(k, text, Some(sig))),
            (None, Some(_)) => Some(false),
            _ => None,
        };
        Prechecked {
            pk: self.pk,
            key,
            signed: self.signed,
            verdict,
        }
    }
}

/// The result of a [`SigCheck`], handed to [`Registry::handle_checked`]
/// with its request. The registry uses it only for the same key bytes,
/// signed text and signature it would check itself (an id whose key changed between
/// the check and the lock is checked again, under the lock).
#[derive(Debug, Default, Clone)]
pub struct Prechecked {
    pk: [u8; 32],
    key: Option<VerifyingKey>,
    /// The signed text and the signature the verdict is for.
    signed: Option<(String, String)>,
    verdict: Option<bool>,
}

impl Prechecked {
    /// Whether the signature was good (`None`: nothing was signed).
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// The decompressed key for `pk`, if this check made it.
    fn key_for(&self, pk: &[u8; 32]) -> Option<VerifyingKey> {
        self.key.filter(|_| &self.pk == pk)
    }

    /// The verdict for `sig` over `text` by `key`, if this check made it.
    fn verdict_for(&self, key: &VerifyingKey, text: &str, sig: Option<&str>) -> Option<bool> {
        let same = &self.pk == key.as_bytes()
            && self
                .signed
                .as_ref()
                .is_some_and(|(t, s)| t == text && Some(s.as_str()) == sig);
        self.verdict.filter(|_| same)
    }
}

/// Checks a hostname against §6.4.5 (empty is handled by the caller).
pub fn validate_hostname(h: &str) -> Result<(), String> {
    if h.len() > MAX_HOSTNAME {
        return Err("invalid hostname: hostname too long (max 63 characters)".into());
    }
    let b = h.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-');
    if !ok {
        return Err("invalid hostname: hostname must be lowercase alphanumeric with hyphens, start/end with alphanumeric".into());
    }
    if RESERVED_HOSTNAMES.contains(&h) {
        return Err(format!("invalid hostname: \"{h}\" is reserved"));
    }
    Ok(())
}

fn new_id_quota() -> crate::ratelimit::Limiter<IpAddr> {
    let (rate, burst) = NEW_IDS_PER_SOURCE;
    crate::ratelimit::Limiter::new(1e12, 1e12, rate, burst, QUOTA_SOURCES, Instant::now())
}

fn not_found(id: u32) -> String {
    format!("node {id}: node not found")
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The port of a `host:port` string (the only part of `listen_addr` used).
fn listen_port(listen_addr: &str) -> Option<u16> {
    let (_, port) = listen_addr.rsplit_once(':')?;
    port.parse().ok()
}

impl State {
    /// The next id of this instance's reserved blocks (shared database).
    fn block_id(&mut self) -> Option<u32> {
        let b = self.id_blocks.as_mut()?;
        if b.current.is_empty() {
            b.current = b.spare.take()?;
        }
        b.current.next()
    }

    /// Reaps the nodes of one shard of the node table (spec §6.4.2):
    /// live nodes not heard from for `stale_after` go offline; ids whose
    /// key never signed anything within [`UNPROVEN_GRACE`] are reclaimed.
    /// Returns both, for `Registry::reap`.
    fn reap_shard(&mut self, shard: usize, now: Instant, stale_after: Duration) -> Vec<u32> {
        let stale: Vec<u32> = self
            .nodes
            .shard_values(shard)
            .filter(|n| n.live && now.saturating_duration_since(n.last_seen) >= stale_after)
            .filter(|n| !self.remote.contains(&n.id))
            .map(|n| n.id)
            .collect();
        for &id in &stale {
            self.release_hostname(id);
            self.set_live(id, false);
        }
        // Ids whose key never signed anything are reclaimed (issue 10
        // item 6): registering costs nothing, so unproven ids must not
        // accumulate.
        let unproven: Vec<u32> = self
            .nodes
            .shard_values(shard)
            .filter(|n| !n.proven && now.saturating_duration_since(n.created) >= UNPROVEN_GRACE)
            .map(|n| n.id)
            .collect();
        for &id in &unproven {
            self.release_hostname(id);
            self.set_live(id, false);
            if let Some(n) = self.nodes.remove(&id) {
                self.by_key.remove(n.key.as_bytes());
            }
            self.mark_node(id);
            self.nets.forget(id);
            if self.hs_requests.remove(&id).is_some() | self.hs_responses.remove(&id).is_some() {
                self.mark_inbox(id);
            }
            if let Some(peers) = self.trust.remove(&id) {
                for p in peers {
                    if let Some(s) = self.trust.get_mut(&p) {
                        s.remove(&id);
                        if s.is_empty() {
                            self.trust.remove(&p);
                        }
                    }
                    self.mark_trust(id, p);
                }
            }
            // Consents given to or by the id go too: the id is reused by
            // the next new key, which must not inherit a consent.
            let mut gone: Vec<(u32, u32)> = self
                .consents
                .remove(&id)
                .map(|s| s.into_iter().map(|b| (id, b)).collect())
                .unwrap_or_default();
            for (&a, s) in self.consents.iter_mut() {
                if s.remove(&id) {
                    gone.push((a, id));
                }
            }
            self.consents.retain(|_, s| !s.is_empty());
            for (a, b) in gone {
                self.mark_consent(a, b);
            }
            self.free_ids.push(id);
        }
        stale.into_iter().chain(unproven).collect()
    }

    fn live(&self, id: u32) -> Result<&Node, String> {
        match self.nodes.get(&id) {
            Some(n) if n.live => Ok(n),
            _ => Err(not_found(id)),
        }
    }

    /// [`signature_ok`], unless the check was made before the lock.
    fn sig_ok(&self, key: &VerifyingKey, text: &str, sig: Option<&str>) -> bool {
        self.checked
            .verdict_for(key, text, sig)
            .unwrap_or_else(|| signature_ok(key, text, sig))
    }

    fn verify(&mut self, req: &Request) -> Result<(), String> {
        let Some((signer, text)) = req.signed_string() else {
            return Ok(());
        };
        let node = self.live(signer)?;
        if self.sig_ok(&node.key, &text, req.signature()) {
            if let Some(n) = self.nodes.get_mut(&signer) {
                n.proven = true;
            }
            Ok(())
        } else {
            Err(format!("signature verification failed for node {signer}"))
        }
    }

    fn trusted(&self, a: u32, b: u32) -> bool {
        self.trust.get(&a).is_some_and(|s| s.contains(&b))
    }

    /// A trust pair exists or the two share a non-backbone network: what
    /// lets one resolve and reach the other (spec §6.4.4, §6.4.6, §6.4.9).
    fn related(&self, a: u32, b: u32) -> bool {
        self.trusted(a, b) || self.nets.share(a, b)
    }

    fn dirty(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn mark_node(&mut self, id: u32) {
        if let Some(d) = self.dirty.as_mut() {
            d.nodes.insert(id);
        }
    }

    fn mark_trust(&mut self, a: u32, b: u32) {
        if let Some(d) = self.dirty.as_mut() {
            d.trust.insert((a.min(b), a.max(b)));
        }
    }

    fn mark_consent(&mut self, a: u32, b: u32) {
        if let Some(d) = self.dirty.as_mut() {
            d.consents.insert((a, b));
        }
    }

    fn mark_inbox(&mut self, id: u32) {
        if let Some(d) = self.dirty.as_mut() {
            d.inboxes.insert(id);
        }
    }

    /// Sets `id`'s live flag, keeping the live count.
    fn set_live(&mut self, id: u32, live: bool) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.live != live {
                n.live = live;
                if live {
                    self.live_count += 1;
                } else {
                    self.live_count = self.live_count.saturating_sub(1);
                }
            }
        }
        self.mark_node(id);
    }

    fn release_hostname(&mut self, id: u32) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(h) = n.hostname.take() {
                self.hostnames.remove(&h);
                self.mark_node(id);
            }
        }
    }

    fn inboxes(&self, id: u32) -> Inboxes {
        Inboxes {
            requests: self.hs_requests.get(&id).map_or_else(Vec::new, |v| {
                v.iter()
                    .map(|p| HandshakeRequestRecord {
                        to: id,
                        from: p.from,
                        justification: p.justification.clone(),
                        timestamp: p.timestamp,
                    })
                    .collect()
            }),
            responses: self.hs_responses.get(&id).map_or_else(Vec::new, |v| {
                v.iter()
                    .map(|r| HandshakeResponseRecord {
                        to: id,
                        from: r.from_node_id,
                        accept: r.accept,
                        timestamp: r.timestamp,
                    })
                    .collect()
            }),
        }
    }

    /// Sets (or clears, with "") `id`'s hostname.
    fn set_hostname(&mut self, id: u32, h: &str) -> Result<(), String> {
        if h.is_empty() {
            self.release_hostname(id);
            return Ok(());
        }
        validate_hostname(h)?;
        match self.hostnames.get(h) {
            Some(&owner) if owner == id => return Ok(()),
            Some(&owner) => return Err(format!("hostname \"{h}\" already in use by node {owner}")),
            None => {}
        }
        self.release_hostname(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.hostname = Some(h.to_string());
            self.hostnames.insert(h.to_string(), id);
            self.mark_node(id);
        }
        Ok(())
    }

    fn add_trust(&mut self, a: u32, b: u32) -> Result<(), String> {
        if a == b || self.trusted(a, b) {
            return Ok(());
        }
        for x in [a, b] {
            if self.trust.get(&x).map_or(0, |s| s.len()) >= MAX_TRUST_PER_NODE {
                return Err(format!("too many trust pairs for node {x}"));
            }
        }
        self.trust.entry(a).or_default().insert(b);
        self.trust.entry(b).or_default().insert(a);
        self.mark_trust(a, b);
        Ok(())
    }

    /// Records `a`'s signed consent to trust `b`; creates the pair once
    /// `b` has consented too (spec §12.16: never one side alone).
    fn consent(&mut self, a: u32, b: u32) -> Result<(), String> {
        if a == b {
            return Ok(());
        }
        let mine = self.consents.entry(a).or_default();
        if !mine.contains(&b) && mine.len() >= MAX_TRUST_PER_NODE {
            return Err(format!("too many trust consents for node {a}"));
        }
        if mine.insert(b) {
            self.mark_consent(a, b);
        }
        self.dirty();
        if self.consents.get(&b).is_some_and(|s| s.contains(&a)) {
            self.add_trust(a, b)?;
        }
        Ok(())
    }

    /// Withdraws both consents and the pair; true if anything existed.
    fn revoke(&mut self, a: u32, b: u32) -> bool {
        let mut any = self.remove_trust(a, b);
        for (x, y) in [(a, b), (b, a)] {
            if let Some(s) = self.consents.get_mut(&x) {
                let removed = s.remove(&y);
                if s.is_empty() {
                    self.consents.remove(&x);
                }
                if removed {
                    self.mark_consent(x, y);
                }
                any |= removed;
            }
        }
        any
    }

    fn remove_trust(&mut self, a: u32, b: u32) -> bool {
        let removed = self.trust.get_mut(&a).is_some_and(|s| s.remove(&b));
        if let Some(s) = self.trust.get_mut(&b) {
            s.remove(&a);
        }
        for x in [a, b] {
            if self.trust.get(&x).is_some_and(|s| s.is_empty()) {
                self.trust.remove(&x);
            }
        }
        if removed {
            self.mark_trust(a, b);
        }
        removed
    }
}

/// The node table as the network rules see it (`super::networks`).
struct Dir<'a> {
    nodes: &'a ShardedMap<u32, Box<Node>>,
    trust: &'a HashMap<u32, HashSet<u32>>,
    hostnames: &'a HashMap<String, u32>,
}

impl super::networks::Directory for Dir<'_> {
    fn visibility(&self, id: u32) -> Option<bool> {
        self.nodes.get(&id).map(|n| n.public)
    }

    fn entry(&self, id: u32) -> Option<crate::wire::networks::NodeEntry> {
        let n = self.nodes.get(&id)?;
        Some(super::networks::node_entry(
            id,
            n.hostname.clone(),
            n.public,
            n.live,
            &n.real_addr,
        ))
    }

    fn trusted(&self, a: u32, b: u32) -> bool {
        self.trust.get(&a).is_some_and(|s| s.contains(&b))
    }

    fn hostnames_containing(&self, q: &str) -> Vec<u32> {
        self.hostnames
            .iter()
            .filter(|(h, _)| h.contains(q))
            .map(|(_, &id)| id)
            .collect()
    }
}

impl Registry {
    /// An empty registry (ids start at 1).
    pub fn new() -> Registry {
        Registry {
            state: std::sync::Mutex::new(State {
                next_id: 1,
                new_id_quota: Some(new_id_quota()),
                ..State::default()
            }),
            waiters: Default::default(),
        }
    }

    /// Turns the per-source new-id quota off (benchmarks, tests that
    /// register many keys from one address).
    pub fn without_quota(self) -> Registry {
        self.lock().new_id_quota = None;
        self
    }

    /// The IP address the registry observed for live node `id`'s proven
    /// registration (the beacon binds ids to it, issue 10 item 5).
    pub fn node_ip(&self, id: u32) -> Option<IpAddr> {
        let st = self.lock();
        let n = st.nodes.get(&id).filter(|n| n.live)?;
        n.real_addr.parse::<SocketAddr>().ok().map(|a| a.ip())
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u32, std::sync::Arc<tokio::sync::Notify>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wake-up of `node`'s handshake long-poll (create the `notified()`
    /// future and `enable` it before polling, so no wake-up is lost).
    pub fn waiter(&self, node: u32) -> std::sync::Arc<tokio::sync::Notify> {
        let mut w = self.lock_waiters();
        if w.len() >= 4096 {
            w.retain(|_, n| std::sync::Arc::strong_count(n) > 1);
        }
        w.entry(node).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds a registry from a snapshot; live nodes count as seen `now`.
    pub fn from_snapshot(snap: Snapshot, now: Instant) -> Result<Registry, SnapshotError> {
        let mut st = State {
            next_id: snap.next_id.max(1),
            new_id_quota: Some(new_id_quota()),
            ..State::default()
        };
        for r in snap.nodes {
            let bad = |m: &str| SnapshotError(format!("node {}: {m}", r.id));
            if r.id == 0 || r.id >= st.next_id {
                return Err(bad("id outside the allocated range"));
            }
            let pk = wire::decode_public_key(&r.public_key).ok_or_else(|| bad("bad public key"))?;
            let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("bad public key"))?;
            if st.by_key.insert(pk, r.id).is_some() {
                return Err(bad("public key registered twice"));
            }
            let mut hostname = None;
            if let Some(h) = r.hostname.filter(|_| r.live) {
                validate_hostname(&h).map_err(|e| bad(&e))?;
                if st.hostnames.insert(h.clone(), r.id).is_some() {
                    return Err(bad("hostname used twice"));
                }
                hostname = Some(h);
            }
            let node = Node {
                id: r.id,
                key,
                owner: r.owner,
                live: r.live,
                last_seen: now,
                hostname,
                public: r.public,
                real_addr: r.real_addr,
                lan_addrs: r.lan_addrs,
                version: r.version,
                key_created: r.key_created,
                proven: true,
                created: now,
            };
            if st.nodes.insert(r.id, Box::new(node)).is_some() {
                return Err(bad("id listed twice"));
            }
        }
        st.free_ids = (1..st.next_id)
            .rev()
            .filter(|id| !st.nodes.contains_key(id))
            .collect();
        for [a, b] in snap.trust {
            if !st.nodes.contains_key(&a) || !st.nodes.contains_key(&b) {
                return Err(SnapshotError(format!(
                    "trust pair {a}-{b} names an unknown node"
                )));
            }
            st.trust.entry(a).or_default().insert(b);
            st.trust.entry(b).or_default().insert(a);
        }
        for [a, b] in snap.consents {
            if st.nodes.contains_key(&a) && st.nodes.contains_key(&b) {
                st.consents.entry(a).or_default().insert(b);
            }
        }
        for r in snap.handshake_requests {
            if !st.nodes.contains_key(&r.to) {
                continue;
            }
            let inbox = st.hs_requests.entry(r.to).or_default();
            if inbox.len() < HANDSHAKE_INBOX && !inbox.iter().any(|p| p.from == r.from) {
                inbox.push(PendingRequest {
                    from: r.from,
                    justification: r.justification,
                    timestamp: r.timestamp,
                });
            }
        }
        for r in snap.handshake_responses {
            if !st.nodes.contains_key(&r.to) {
                continue;
            }
            let inbox = st.hs_responses.entry(r.to).or_default();
            if inbox.len() < HANDSHAKE_INBOX {
                inbox.push_back(HandshakeResponseEntry {
                    from_node_id: r.from,
                    accept: r.accept,
                    timestamp: r.timestamp,
                });
            }
        }
        st.live_count = st.nodes.values().filter(|n| n.live).count();
        let nodes = &st.nodes;
        st.nets = Networks::from_snapshot(
            NetSnapshot {
                networks: snap.networks,
                members: snap.network_members,
                invites: snap.network_invites,
                tags: snap.node_tags,
            },
            |id| nodes.contains_key(&id),
        );
        Ok(Registry {
            state: std::sync::Mutex::new(st),
            waiters: Default::default(),
        })
    }

    /// Everything the store persists, as of now.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Self::snapshot_of(&st)
    }

    /// The current generation and, if it is newer than `after`, a snapshot.
    pub fn snapshot_if_newer(&self, after: u64) -> Option<(u64, Snapshot)> {
        let st = self.lock();
        if st.generation <= after {
            return None;
        }
        Some((st.generation, Self::snapshot_of(&st)))
    }

    fn snapshot_of(st: &State) -> Snapshot {
        let mut nodes: Vec<NodeRecord> = st.nodes.values().map(|n| n.record()).collect();
        nodes.sort_by_key(|n| n.id);
        let mut trust: Vec<[u32; 2]> = st
            .trust
            .iter()
            .flat_map(|(&a, s)| s.iter().filter(move |&&b| a < b).map(move |&b| [a, b]))
            .collect();
        trust.sort_unstable();
        let mut consents: Vec<[u32; 2]> = st
            .consents
            .iter()
            .flat_map(|(&a, s)| s.iter().map(move |&b| [a, b]))
            .collect();
        consents.sort_unstable();
        let mut inbox_ids: Vec<u32> = st
            .hs_requests
            .keys()
            .chain(st.hs_responses.keys())
            .copied()
            .collect();
        inbox_ids.sort_unstable();
        inbox_ids.dedup();
        let (mut handshake_requests, mut handshake_responses) = (Vec::new(), Vec::new());
        for id in inbox_ids {
            let i = st.inboxes(id);
            handshake_requests.extend(i.requests);
            handshake_responses.extend(i.responses);
        }
        let net = st.nets.snapshot();
        Snapshot {
            next_id: st.next_id,
            nodes,
            trust,
            consents,
            handshake_requests,
            handshake_responses,
            networks: net.networks,
            network_members: net.members,
            network_invites: net.invites,
            node_tags: net.tags,
        }
    }

    /// Starts recording which rows each mutation changes, for
    /// [`Registry::take_changes`] (a store calls this once; without a store
    /// nothing is recorded, so nothing accumulates).
    pub fn track_changes(&self) {
        let mut st = self.lock();
        if st.dirty.is_none() {
            st.dirty = Some(Dirty::default());
        }
        st.nets.track_changes();
    }

    /// The current generation and the rows changed since the last call
    /// (their current values). Holds the lock only to copy the changed
    /// rows, so lookups never wait for a store write.
    pub fn take_changes(&self) -> (u64, Changes) {
        let mut st = self.lock();
        let Some(dirty) = st.dirty.as_mut().map(std::mem::take) else {
            return (st.generation, Changes::default());
        };
        let nodes = dirty
            .nodes
            .into_iter()
            .map(|id| (id, st.nodes.get(&id).map(|n| n.record())))
            .collect();
        let trust = dirty
            .trust
            .into_iter()
            .map(|(a, b)| ((a, b), st.trusted(a, b)))
            .collect();
        let consents = dirty
            .consents
            .into_iter()
            .map(|(a, b)| ((a, b), st.consents.get(&a).is_some_and(|s| s.contains(&b))))
            .collect();
        let inboxes = dirty
            .inboxes
            .into_iter()
            .map(|id| (id, st.inboxes(id)))
            .collect();
        let net = st.nets.take_changes();
        (
            st.generation,
            Changes {
                next_id: st.next_id,
                nodes,
                trust,
                consents,
                inboxes,
                networks: net.networks,
                network_members: net.members,
                network_invites: net.invites,
                node_tags: net.tags,
            },
        )
    }

    /// Known node ids (live or not).
    pub fn known_nodes(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Handshake requests and answers waiting in inboxes.
    pub fn handshake_queue_depth(&self) -> usize {
        let st = self.lock();
        st.hs_requests.values().map(Vec::len).sum::<usize>()
            + st.hs_responses.values().map(VecDeque::len).sum::<usize>()
    }

    /// The current durable-mutation generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Number of live nodes.
    pub fn live_nodes(&self) -> usize {
        self.lock().live_count
    }

    /// Removes live nodes not seen for `stale_after` (spec §6.4.2): they
    /// leave the table and lose their hostname; key → id, trust pairs and
    /// inboxes are kept. Returns the reaped ids.
    pub fn reap(&self, now: Instant, stale_after: Duration) -> Vec<u32> {
        // One shard per hold of the lock (`super::shard`): a scan of all
        // 1,000,000 nodes held it for tens of milliseconds every
        // `reap_interval`, and every lookup meanwhile waited.
        let mut reaped = Vec::new();
        for shard in 0..super::shard::SHARDS {
            let mut st = self.lock();
            let gone = st.reap_shard(shard, now, stale_after);
            if !gone.is_empty() {
                st.dirty();
            }
            reaped.extend(gone);
        }
        let mut st = self.lock();
        // Pending handshake requests expire.
        let horizon = unix_now().saturating_sub(HANDSHAKE_TTL.as_secs()) as i64;
        let mut expired = Vec::new();
        st.hs_requests.retain(|&id, inbox| {
            let before = inbox.len();
            inbox.retain(|p| p.timestamp >= horizon);
            if inbox.len() != before {
                expired.push(id);
            }
            !inbox.is_empty()
        });
        st.hs_responses.retain(|&id, inbox| {
            let before = inbox.len();
            inbox.retain(|p| p.timestamp >= horizon);
            if inbox.len() != before {
                expired.push(id);
            }
            !inbox.is_empty()
        });
        for &id in &expired {
            st.mark_inbox(id);
        }
        if !expired.is_empty() {
            st.dirty();
        }
        reaped
    }

    /// Handles one request from a client whose TCP source is `peer`, on a
    /// connection of its own (nothing is remembered between calls).
    pub fn handle(&self, req: Request, peer: SocketAddr, now: Instant) -> Outcome {
        self.handle_on(&mut ConnAuth::default(), req, peer, now)
    }

    /// Handles one request arriving on the connection whose proofs are
    /// `conn`.
    pub fn handle_on(
        &self,
        conn: &mut ConnAuth,
        req: Request,
        peer: SocketAddr,
        now: Instant,
    ) -> Outcome {
        self.handle_checked(conn, req, peer, now, Prechecked::default())
    }

    /// What checking `req`'s signature (or decompressing a registering
    /// key) needs, if anything; taken under the lock for an instant, so
    /// that the check itself runs without it ([`SigCheck::run`]).
    pub fn sig_check(&self, req: &Request) -> Option<SigCheck> {
        if let Request::Register(r) = req {
            let pk = wire::decode_public_key(&r.public_key)?;
            let signed = r.signature.clone().map(|sig| (r.signed_text(), sig));
            return Some(SigCheck {
                pk,
                key: None,
                signed,
            });
        }
        let (signer, text) = req.signed_string()?;
        let sig = req.signature()?.to_owned();
        let key = self.lock().nodes.get(&signer)?.key;
        Some(SigCheck {
            pk: key.to_bytes(),
            key: Some(key),
            signed: Some((text, sig)),
        })
    }

    /// [`Self::handle_on`] with the request's signature already checked
    /// by [`SigCheck::run`].
    pub fn handle_checked(
        &self,
        conn: &mut ConnAuth,
        req: Request,
        peer: SocketAddr,
        now: Instant,
        checked: Prechecked,
    ) -> Outcome {
        let wake = match &req {
            Request::RequestHandshake(r) => Some(r.to_node_id),
            Request::RespondHandshake(r) => Some(r.peer_id),
            _ => None,
        };
        let mut st = self.lock();
        st.checked = checked;
        let gen_before = st.generation;
        // A signed request from the node whose registration is parked on
        // this connection proves the key: apply the registration first (it
        // may make a reaped node live again, which the request needs).
        if let Some((signer, text)) = req.signed_string() {
            if conn
                .pending
                .as_ref()
                .is_some_and(|(id, _, _)| *id == signer)
            {
                let proven = st
                    .nodes
                    .get(&signer)
                    .is_some_and(|n| st.sig_ok(&n.key, &text, req.signature()));
                if proven {
                    if let Some((_, r, at)) = conn.pending.take() {
                        conn.prove(signer);
                        let _ = Self::register(&mut st, conn, r, at, now, unix_now());
                    }
                }
            }
        }
        let response = match Self::dispatch(&mut st, conn, req, peer, now) {
            Ok(r) => r,
            Err(text) => Response::error(&text),
        };
        st.checked = Prechecked::default();
        let woken = st.nets.take_wake();
        drop(st);
        if !woken.is_empty() {
            let w = self.lock_waiters();
            for node in woken {
                if let Some(n) = w.get(&node) {
                    n.notify_waiters();
                }
            }
        }
        if let Some(node) = wake.filter(|_| !matches!(response, Response::Error(_))) {
            if let Some(n) = self.lock_waiters().get(&node) {
                n.notify_waiters();
            }
        }
        let st = self.lock();
        let durable_generation = (st.generation != gen_before).then_some(st.generation);
        Outcome {
            response,
            durable_generation,
        }
    }

    fn dispatch(
        st: &mut State,
        conn: &mut ConnAuth,
        req: Request,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<Response, String> {
        if let Request::Deregister(d) = &req {
            // The reference answers deregister_ok for unknown nodes.
            if st.live(d.node_id).is_err() {
                return Ok(Response::DeregisterOk(Empty {}));
            }
        }
        st.verify(&req)?;
        if let Some((signer, _)) = req.signed_string() {
            conn.prove(signer);
        }
        let unix = unix_now();
        Ok(match req {
            Request::Register(r) => Self::register(st, conn, r, peer, now, unix)?,
            Request::Heartbeat(NodeSigned { node_id, .. }) => {
                // `verify` has checked the node is live and the signature.
                if let Some(n) = st.nodes.get_mut(&node_id) {
                    n.last_seen = now;
                }
                if st.remote.remove(&node_id) {
                    // It moved here from another instance (shared
                    // database): record that this one serves it now.
                    st.mark_node(node_id);
                    st.dirty();
                }
                Response::HeartbeatOk(HeartbeatOk {
                    time: unix as i64,
                    key_expiry_warning: false,
                })
            }
            Request::Lookup(r) => {
                let n = st.live(r.node_id)?;
                Response::LookupOk(LookupOk {
                    node_id: n.id,
                    address: Addr::backbone(n.id).to_string(),
                    networks: st.nets.networks_of(n.id),
                    public_key: wire::b64_encode(n.key.as_bytes()),
                    public: n.public,
                    polo_score: 0,
                    hostname: n.hostname.clone(),
                    tags: st.nets.tags_of(n.id),
                    task_exec: false,
                    real_addr: n.public.then(|| n.real_addr.clone()),
                    external_id: None,
                    version: n.version.clone(),
                })
            }
            Request::Resolve(r) => {
                let target = st.live(r.node_id)?;
                let allowed = target.public
                    || r.requester_id == r.node_id
                    || st.related(r.requester_id, r.node_id);
                if !allowed {
                    return Err(format!(
                        "resolve denied: node {} is private to node {}",
                        r.node_id, r.requester_id
                    ));
                }
                Response::ResolveOk(ResolveOk {
                    node_id: target.id,
                    real_addr: target.real_addr.clone(),
                    lan_addrs: (!target.lan_addrs.is_empty()).then(|| target.lan_addrs.clone()),
                    key_age_days: Some(unix.saturating_sub(target.key_created) / 86_400),
                })
            }
            Request::SetHostname(r) => {
                st.set_hostname(r.node_id, &r.hostname)?;
                st.dirty();
                Response::SetHostnameOk(SetHostnameOk {
                    node_id: r.node_id,
                    hostname: r.hostname,
                })
            }
            Request::ResolveHostname(r) => {
                let not_found = || format!("hostname \"{}\" not found", r.hostname);
                let &id = st.hostnames.get(&r.hostname).ok_or_else(not_found)?;
                let n = st.live(id).map_err(|_| not_found())?;
                let requester = r.requester_id.unwrap_or(0);
                if !(n.public || requester == id || st.related(requester, id)) {
                    return Err(not_found());
                }
                Response::ResolveHostnameOk(ResolveHostnameOk {
                    node_id: id,
                    address: Addr::backbone(id).to_string(),
                    public: n.public,
                    hostname: r.hostname,
                })
            }
            Request::SetVisibility(r) => {
                if let Some(n) = st.nodes.get_mut(&r.node_id) {
                    n.public = r.public;
                }
                st.mark_node(r.node_id);
                st.dirty();
                Response::SetVisibilityOk(SetVisibilityOk {
                    node_id: r.node_id,
                    visibility: if r.public { "public" } else { "private" }.into(),
                })
            }
            Request::Deregister(NodeSigned { node_id, .. }) => {
                st.release_hostname(node_id);
                st.set_live(node_id, false);
                st.dirty();
                Response::DeregisterOk(Empty {})
            }
            Request::RequestHandshake(r) => {
                st.live(r.to_node_id)?;
                if r.justification.len() > MAX_JUSTIFICATION {
                    return Err("justification too long (max 1024 bytes)".into());
                }
                let inbox = st.hs_requests.entry(r.to_node_id).or_default();
                if inbox.iter().any(|p| p.from == r.from_node_id) {
                    return Err(format!(
                        "handshake request already pending from node {}",
                        r.from_node_id
                    ));
                }
                if inbox.len() >= HANDSHAKE_INBOX {
                    return Err(format!(
                        "too many pending handshake requests for node {}",
                        r.to_node_id
                    ));
                }
                inbox.push(PendingRequest {
                    from: r.from_node_id,
                    justification: r.justification,
                    timestamp: unix as i64,
                });
                st.mark_inbox(r.to_node_id);
                // Asking for trust is consenting to it (signed by the sender).
                st.consent(r.from_node_id, r.to_node_id)?;
                Response::RequestHandshakeOk(RequestHandshakeOk {
                    status: "delivered".into(),
                })
            }
            Request::PollHandshakes(NodeSigned { node_id, .. }) => {
                let requests: Vec<HandshakeRequestEntry> = st
                    .hs_requests
                    .remove(&node_id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| HandshakeRequestEntry {
                        from_node_id: p.from,
                        justification: p.justification,
                        timestamp: p.timestamp,
                    })
                    .collect();
                let responses: Vec<HandshakeResponseEntry> =
                    st.hs_responses.remove(&node_id).unwrap_or_default().into();
                if !requests.is_empty() || !responses.is_empty() {
                    // Delivered: gone from the store too (a crash before
                    // this batch commits delivers them again).
                    st.mark_inbox(node_id);
                    st.dirty();
                }
                Response::PollHandshakesOk(PollHandshakesOk {
                    requests,
                    responses,
                })
            }
            Request::RespondHandshake(r) => {
                if !st.nodes.contains_key(&r.peer_id) {
                    return Err(not_found(r.peer_id));
                }
                if r.accept {
                    st.consent(r.node_id, r.peer_id)?;
                }
                if let Some(inbox) = st.hs_requests.get_mut(&r.node_id) {
                    inbox.retain(|p| p.from != r.peer_id);
                }
                let out = st.hs_responses.entry(r.peer_id).or_default();
                if out.len() >= HANDSHAKE_INBOX {
                    out.pop_front();
                }
                out.push_back(HandshakeResponseEntry {
                    from_node_id: r.node_id,
                    accept: r.accept,
                    timestamp: unix as i64,
                });
                st.mark_inbox(r.node_id);
                st.mark_inbox(r.peer_id);
                st.dirty();
                Response::RespondHandshakeOk(RespondHandshakeOk {
                    accept: r.accept,
                    peer_id: r.peer_id,
                })
            }
            Request::ReportTrust(r) => {
                st.live(r.peer_id)?;
                st.consent(r.node_id, r.peer_id)?;
                Response::ReportTrustOk(Empty {})
            }
            Request::RevokeTrust(r) => {
                if !st.revoke(r.node_id, r.peer_id) {
                    return Err(format!("trust pair {}-{} not found", r.node_id, r.peer_id));
                }
                st.dirty();
                Response::RevokeTrustOk(Empty {})
            }
            Request::CheckTrust(r) => Response::CheckTrustOk(CheckTrustOk {
                trusted: st.related(r.node_id, r.peer_id),
            }),
            Request::Network(r) => {
                let State {
                    nets,
                    nodes,
                    trust,
                    hostnames,
                    ..
                } = &mut *st;
                let dir = Dir {
                    nodes,
                    trust,
                    hostnames,
                };
                let (resp, durable) = nets.handle(r, &dir, unix as i64)?;
                if durable {
                    st.dirty();
                }
                Response::Network(resp)
            }
            Request::Punch(r) => {
                if r.requester_id != r.node_a && r.requester_id != r.node_b {
                    return Err("punch: requester is not a participant".into());
                }
                let other = if r.requester_id == r.node_a {
                    r.node_b
                } else {
                    r.node_a
                };
                let peer_node = st.live(other)?;
                if !(peer_node.public || st.related(r.requester_id, other)) {
                    return Err(format!("punch denied: node {other} is private"));
                }
                let a = st.live(r.node_a)?.real_addr.clone();
                let b = st.live(r.node_b)?.real_addr.clone();
                Response::PunchOk(PunchOk {
                    node_a_addr: a,
                    node_b_addr: b,
                })
            }
        })
    }

    fn register(
        st: &mut State,
        conn: &mut ConnAuth,
        r: wire::Register,
        peer: SocketAddr,
        now: Instant,
        unix: u64,
    ) -> Result<Response, String> {
        let pk = wire::decode_public_key(&r.public_key)
            .ok_or("registration rejected: bad public key encoding")?;
        let key = match st.checked.key_for(&pk) {
            Some(k) => k,
            None => VerifyingKey::from_bytes(&pk).map_err(|_| "registration rejected: bad key")?,
        };
        if r.signature.is_some() {
            // Our signed registration: a bad signature or a stale timestamp
            // is refused outright rather than treated as unsigned.
            let fresh = r
                .timestamp
                .is_some_and(|t| (t - unix as i64).unsigned_abs() <= REGISTER_SIGNATURE_WINDOW);
            if !fresh || !st.sig_ok(&key, &r.signed_text(), r.signature.as_deref()) {
                return Err("registration rejected: invalid signature or expired timestamp".into());
            }
            if let Some(&id) = st.by_key.get(&pk) {
                conn.prove(id);
            }
        }
        let port = listen_port(&r.listen_addr).ok_or("invalid listen_addr")?;
        let lan_addrs = r.lan_addrs.clone().unwrap_or_default();
        if lan_addrs.len() > MAX_LAN_ADDRS {
            return Err("too many lan_addrs".into());
        }
        let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_TEXT_FIELD);
        if too_long(&r.owner)
            || too_long(&r.version)
            || lan_addrs.iter().any(|a| a.len() > MAX_TEXT_FIELD)
        {
            return Err("registration field too long".into());
        }
        let real_addr = SocketAddr::new(canonical_ip(peer.ip()), port).to_string();

        let id = match st.by_key.get(&pk) {
            Some(&id) if !conn.proven.contains(&id) && r.signature.is_none() => {
                // A known key, not proven on this connection: anyone can
                // read it with `lookup`, so change nothing yet; park the
                // registration until a signed request proves the key.
                let n = st
                    .nodes
                    .get(&id)
                    .ok_or("registration rejected: index inconsistency")?;
                let hostname = n.hostname.clone().filter(|_| n.live);
                conn.pending = Some((id, r.clone(), peer));
                return Ok(Response::RegisterOk(RegisterOk {
                    node_id: id,
                    network_id: 0,
                    address: Addr::backbone(id).to_string(),
                    public_key: r.public_key,
                    observed_addr: real_addr,
                    protocol_version: PROTOCOL_VERSION,
                    hostname,
                    hostname_error: None,
                }));
            }
            Some(&id) => id,
            None => {
                // Rule 3 of the reference (owner takeover) is deliberately
                // not implemented: an unknown key always gets a new id.
                if let Some(q) = st.new_id_quota.as_mut() {
                    if !q.allow(&quota_key(peer.ip()), now) {
                        return Err(
                            "rate limited: too many new registrations from this address".into()
                        );
                    }
                }
                let id = match st.free_ids.pop() {
                    Some(id) => id,
                    None if st.id_blocks.is_some() => st.block_id().ok_or(
                        "registration temporarily unavailable: no node ids reserved (retry)",
                    )?,
                    None => {
                        if st.next_id > MAX_NODES {
                            return Err("too many nodes".into());
                        }
                        st.next_id += 1;
                        st.next_id - 1
                    }
                };
                st.by_key.insert(pk, id);
                st.nodes.insert(
                    id,
                    Box::new(Node {
                        id,
                        key,
                        owner: None,
                        live: false,
                        last_seen: now,
                        hostname: None,
                        public: false,
                        real_addr: String::new(),
                        lan_addrs: Vec::new(),
                        version: None,
                        key_created: unix,
                        proven: r.signature.is_some(),
                        created: now,
                    }),
                );
                conn.prove(id);
                id
            }
        };
        st.set_live(id, true);
        st.remote.remove(&id);
        let Some(n) = st.nodes.get_mut(&id) else {
            return Err("registration rejected: index inconsistency".into());
        };
        n.last_seen = now;
        n.real_addr = real_addr.clone();
        n.lan_addrs = lan_addrs;
        if r.version.is_some() {
            n.version = r.version;
        }
        if r.owner.is_some() {
            n.owner = r.owner;
        }
        let mut hostname_error = None;
        if let Some(h) = r.hostname.as_deref().filter(|h| !h.is_empty()) {
            if let Err(e) = st.set_hostname(id, h) {
                hostname_error = Some(e);
            }
        }
        st.dirty();
        let hostname = st.nodes.get(&id).and_then(|n| n.hostname.clone());
        Ok(Response::RegisterOk(RegisterOk {
            node_id: id,
            network_id: 0,
            address: Addr::backbone(id).to_string(),
            public_key: r.public_key,
            observed_addr: real_addr,
            protocol_version: PROTOCOL_VERSION,
            hostname,
            hostname_error,
        }))
    }
}

/// The shared-database side of the registry (`store::postgres`): several
/// instances each keep the whole registry in memory and apply the rows the
/// others wrote. Nothing here is used with SQLite or in memory.
impl Registry {
    /// Allocates node ids only from blocks given with
    /// [`Registry::add_id_block`] (reserved in the shared database, so two
    /// instances never hand out the same id); forgets the gaps between
    /// loaded ids, which may belong to another instance's block.
    pub fn use_id_blocks(&self) {
        let mut st = self.lock();
        st.id_blocks = Some(IdBlocks::default());
        st.free_ids.clear();
    }

    /// True when the instance holds no spare block of ids.
    pub fn needs_id_block(&self) -> bool {
        let st = self.lock();
        st.id_blocks
            .as_ref()
            .is_some_and(|b| b.spare.is_none() || b.current.is_empty())
    }

    /// Hands the registry a block of ids reserved for this instance.
    pub fn add_id_block(&self, ids: std::ops::Range<u32>) {
        let mut st = self.lock();
        if let Some(b) = st.id_blocks.as_mut() {
            if b.current.is_empty() {
                b.current = ids;
            } else {
                b.spare = Some(ids);
            }
        }
    }

    /// Those of `ids` served by another instance.
    pub fn remote_nodes(&self, ids: impl IntoIterator<Item = u32>) -> HashSet<u32> {
        let st = self.lock();
        ids.into_iter()
            .filter(|id| st.remote.contains(id))
            .collect()
    }

    /// Marks `ids` as served by another instance (loaded at start).
    pub fn mark_remote(&self, ids: impl IntoIterator<Item = u32>) {
        self.lock().remote.extend(ids);
    }

    /// Takes `name` away from `id` here because another instance's node
    /// holds it in the database (two instances granted it at once).
    pub fn drop_hostname(&self, id: u32, name: &str) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(&id) {
            if n.hostname.as_deref() == Some(name) {
                n.hostname = None;
            }
        }
        if st.hostnames.get(name) == Some(&id) {
            st.hostnames.remove(name);
        }
    }

    /// Applies rows as another instance wrote them (each the row's current
    /// value in the database). A row changed here and not yet written is
    /// skipped: ours is newer and about to overwrite it. `remote` names the
    /// nodes another instance serves. Wakes the handshake long-polls of
    /// nodes whose inboxes now hold something. Returns the nodes whose
    /// inboxes were skipped (changed here meanwhile).
    pub fn apply_remote(&self, ch: Changes, remote: &HashSet<u32>, now: Instant) -> Vec<u32> {
        let mut woken = Vec::new();
        let mut skipped = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let dirty = st.dirty.take();
            let skip_node = |id: &u32| dirty.as_ref().is_some_and(|d| d.nodes.contains(id));
            for (id, row) in ch.nodes {
                if skip_node(&id) {
                    continue;
                }
                let old = st.nodes.remove(&id);
                if let Some(o) = &old {
                    if st.by_key.get(o.key.as_bytes()) == Some(&id) {
                        st.by_key.remove(o.key.as_bytes());
                    }
                    if let Some(h) = &o.hostname {
                        if st.hostnames.get(h) == Some(&id) {
                            st.hostnames.remove(h);
                        }
                    }
                    if o.live {
                        st.live_count = st.live_count.saturating_sub(1);
                    }
                }
                let Some(r) = row else {
                    st.remote.remove(&id);
                    continue;
                };
                let Some(pk) = wire::decode_public_key(&r.public_key) else {
                    continue;
                };
                let Ok(key) = VerifyingKey::from_bytes(&pk) else {
                    continue;
                };
                let hostname = r
                    .hostname
                    .filter(|h| r.live && validate_hostname(h).is_ok());
                if let Some(h) = &hostname {
                    // The database decides who holds a name.
                    if let Some(other) = st.hostnames.insert(h.clone(), id) {
                        if let Some(n) = st.nodes.get_mut(&other) {
                            n.hostname = None;
                        }
                    }
                }
                st.by_key.insert(pk, id);
                if r.live {
                    st.live_count += 1;
                }
                if remote.contains(&id) {
                    st.remote.insert(id);
                } else {
                    st.remote.remove(&id);
                }
                let was_live = old.as_ref().is_some_and(|o| o.live);
                st.nodes.insert(
                    id,
                    Box::new(Node {
                        id,
                        key,
                        owner: r.owner,
                        live: r.live,
                        last_seen: old
                            .as_ref()
                            .filter(|_| was_live)
                            .map_or(now, |o| o.last_seen),
                        hostname,
                        public: r.public,
                        real_addr: r.real_addr,
                        lan_addrs: r.lan_addrs,
                        version: r.version,
                        key_created: r.key_created,
                        proven: true,
                        created: old.as_ref().map_or(now, |o| o.created),
                    }),
                );
            }
            for ((a, b), present) in ch.trust {
                if dirty.as_ref().is_some_and(|d| d.trust.contains(&(a, b))) {
                    continue;
                }
                if present {
                    st.trust.entry(a).or_default().insert(b);
                    st.trust.entry(b).or_default().insert(a);
                } else {
                    for (x, y) in [(a, b), (b, a)] {
                        if let Some(s) = st.trust.get_mut(&x) {
                            s.remove(&y);
                            if s.is_empty() {
                                st.trust.remove(&x);
                            }
                        }
                    }
                }
            }
            for ((a, b), present) in ch.consents {
                if dirty.as_ref().is_some_and(|d| d.consents.contains(&(a, b))) {
                    continue;
                }
                if present {
                    st.consents.entry(a).or_default().insert(b);
                } else if let Some(s) = st.consents.get_mut(&a) {
                    s.remove(&b);
                    if s.is_empty() {
                        st.consents.remove(&a);
                    }
                }
            }
            for (id, inbox) in ch.inboxes {
                if dirty.as_ref().is_some_and(|d| d.inboxes.contains(&id)) {
                    skipped.push(id);
                    continue;
                }
                let requests: Vec<PendingRequest> = inbox
                    .requests
                    .into_iter()
                    .take(HANDSHAKE_INBOX)
                    .map(|r| PendingRequest {
                        from: r.from,
                        justification: r.justification,
                        timestamp: r.timestamp,
                    })
                    .collect();
                let responses: VecDeque<HandshakeResponseEntry> = inbox
                    .responses
                    .into_iter()
                    .take(HANDSHAKE_INBOX)
                    .map(|r| HandshakeResponseEntry {
                        from_node_id: r.from,
                        accept: r.accept,
                        timestamp: r.timestamp,
                    })
                    .collect();
                if !requests.is_empty() || !responses.is_empty() {
                    woken.push(id);
                }
                if requests.is_empty() {
                    st.hs_requests.remove(&id);
                } else {
                    st.hs_requests.insert(id, requests);
                }
                if responses.is_empty() {
                    st.hs_responses.remove(&id);
                } else {
                    st.hs_responses.insert(id, responses);
                }
            }
            st.dirty = dirty;
            st.nets.apply_remote(super::networks::NetChanges {
                networks: ch.networks,
                members: ch.network_members,
                invites: ch.network_invites,
                tags: ch.node_tags,
            });
            woken.extend(st.nets.take_wake());
        }
        let waiters = self.lock_waiters();
        for id in woken {
            if let Some(n) = waiters.get(&id) {
                n.notify_waiters();
            }
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }
    fn peer() -> SocketAddr {
        "127.0.0.1:55555".parse().unwrap()
    }
    fn reg(r: &Registry, k: &SigningKey, now: Instant) -> u32 {
        let req = Request::Register(wire::Register::new(
            k.verifying_key().as_bytes(),
            "0.0.0.0:4000",
        ));
        match r.handle(req, peer(), now).response {
            Response::RegisterOk(ok) => ok.node_id,
            other => panic!("{other:?}"),
        }
    }
    fn signed(mut req: Request, k: &SigningKey) -> Request {
        let (_, s) = req.signed_string().unwrap();
        req.set_signature(&k.sign(s.as_bytes()).to_bytes());
        req
    }

    #[test]
    fn ids_are_stable_per_key_and_never_reused() {
        let r = Registry::new();
        let t = Instant::now();
        assert_eq!(reg(&r, &key(1), t), 1);
        assert_eq!(reg(&r, &key(2), t), 2);
        assert_eq!(reg(&r, &key(1), t), 1);
        let mut reaped = r.reap(t + Duration::from_secs(301), Duration::from_secs(300));
        reaped.sort_unstable();
        assert_eq!(reaped, vec![1, 2]);
        assert_eq!(r.live_nodes(), 0);
        assert_eq!(reg(&r, &key(2), t), 2);
        assert_eq!(reg(&r, &key(3), t), 3);
    }

    #[test]
    fn hostnames_are_exclusive_and_released_by_reaping() {
        let r = Registry::new();
        let t = Instant::now();
        let (a, b) = (key(1), key(2));
        reg(&r, &a, t);
        reg(&r, &b, t);
        let set = |k: &SigningKey, id: u32, h: &str| {
            r.handle(
                signed(
                    Request::SetHostname(wire::SetHostname {
                        node_id: id,
                        hostname: h.into(),
                        signature: None,
                    }),
                    k,
                ),
                peer(),
                t,
            )
            .response
        };
        assert!(matches!(set(&a, 1, "alpha"), Response::SetHostnameOk(_)));
        assert_eq!(
            set(&b, 2, "alpha"),
            Response::error("hostname \"alpha\" already in use by node 1")
        );
        // Node 2 signing for node 1 is refused.
        assert_eq!(set(&b, 1, "beta"), Response::error("x"));
        assert!(matches!(set(&a, 1, ""), Response::SetHostnameOk(_)));
        assert!(matches!(set(&b, 2, "alpha"), Response::SetHostnameOk(_)));
        assert!(set(&b, 2, "localhost").type_name() == "error");
        assert!(set(&b, 2, &"a".repeat(64)).type_name() == "error");
    }

    #[test]
    fn unsigned_register_of_a_known_key_waits_for_a_signed_request() {
        let r = Registry::new();
        let t = Instant::now();
        let k = key(1);
        let mut first = ConnAuth::default();
        let mut req = wire::Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
        req.hostname = Some("alpha".into());
        let out = r.handle_on(&mut first, Request::Register(req.clone()), peer(), t);
        assert_eq!(out.response.type_name(), "register_ok");
        let lookup = |r: &Registry| match r
            .handle(Request::Lookup(wire::Lookup { node_id: 1 }), peer(), t)
            .response
        {
            Response::LookupOk(l) => l,
            o => panic!("{o:?}"),
        };
        assert_eq!(lookup(&r).hostname.as_deref(), Some("alpha"));

        // Another connection re-registers the key from elsewhere: parked.
        let mut other = ConnAuth::default();
        let elsewhere: SocketAddr = "10.9.9.9:1".parse().unwrap();
        req.hostname = Some("beta".into());
        req.listen_addr = "0.0.0.0:5000".into();
        r.handle_on(&mut other, Request::Register(req.clone()), elsewhere, t);
        assert_eq!(lookup(&r).hostname.as_deref(), Some("alpha"));
        let hb = signed(
            Request::Heartbeat(NodeSigned {
                node_id: 1,
                signature: None,
            }),
            &k,
        );
        // A signature by another key applies nothing.
        let bad = signed(
            Request::Heartbeat(NodeSigned {
                node_id: 1,
                signature: None,
            }),
            &key(2),
        );
        assert_eq!(
            r.handle_on(&mut other, bad, elsewhere, t)
                .response
                .type_name(),
            "error"
        );
        assert_eq!(lookup(&r).hostname.as_deref(), Some("alpha"));
        // The real key's heartbeat on that connection applies it.
        assert_eq!(
            r.handle_on(&mut other, hb, elsewhere, t)
                .response
                .type_name(),
            "heartbeat_ok"
        );
        let Response::ResolveOk(res) = r
            .handle(
                signed(
                    Request::Resolve(wire::Resolve {
                        node_id: 1,
                        requester_id: 1,
                        signature: None,
                    }),
                    &k,
                ),
                peer(),
                t,
            )
            .response
        else {
            panic!()
        };
        assert_eq!(res.real_addr, "10.9.9.9:5000");
        assert_eq!(lookup(&r).hostname.as_deref(), Some("beta"));

        // Our signed registration applies at once; a stale one is refused.
        let mut third = ConnAuth::default();
        let mut sreq = wire::Register::new(k.verifying_key().as_bytes(), "0.0.0.0:6000");
        sreq.timestamp = Some(unix_now() as i64);
        sreq.signature = Some(wire::b64_encode(
            &k.sign(sreq.signed_text().as_bytes()).to_bytes(),
        ));
        assert_eq!(
            r.handle_on(&mut third, Request::Register(sreq.clone()), elsewhere, t)
                .response
                .type_name(),
            "register_ok"
        );
        assert!(third.proven.contains(&1));
        sreq.timestamp = Some(unix_now() as i64 - 3600);
        sreq.signature = Some(wire::b64_encode(
            &k.sign(sreq.signed_text().as_bytes()).to_bytes(),
        ));
        assert_eq!(
            r.handle_on(&mut third, Request::Register(sreq), elsewhere, t)
                .response
                .type_name(),
            "error"
        );
    }

    #[test]
    fn new_ids_are_quota_limited_per_source_and_unproven_ids_reclaimed() {
        let r = Registry::new();
        let t = Instant::now();
        let burst = NEW_IDS_PER_SOURCE.1 as usize;
        let from = |ip: &str| -> SocketAddr { format!("{ip}:1").parse().unwrap() };
        let reg_from = |n: u32, ip: &str| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&n.to_be_bytes());
            let k = SigningKey::from_bytes(&seed);
            let req = Request::Register(wire::Register::new(k.verifying_key().as_bytes(), ":1"));
            r.handle(req, from(ip), t).response
        };
        let ok = (0..burst as u32 + 50)
            .filter(|n| reg_from(*n, "10.0.0.1").type_name() == "register_ok")
            .count();
        assert_eq!(ok, burst, "one source gets its burst, then is limited");
        assert_eq!(
            reg_from(100_000, "10.0.0.1"),
            Response::error("rate limited: too many new registrations from this address")
        );
        assert_eq!(reg_from(100_001, "10.0.0.2").type_name(), "register_ok");

        // A key that signs something keeps its id; the others are reclaimed
        // after the grace period and their ids reused.
        let k1 = {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&0u32.to_be_bytes());
            SigningKey::from_bytes(&seed)
        };
        let hb = signed(
            Request::Heartbeat(NodeSigned {
                node_id: 1,
                signature: None,
            }),
            &k1,
        );
        assert_eq!(r.handle(hb, peer(), t).response.type_name(), "heartbeat_ok");
        let later = t + UNPROVEN_GRACE + Duration::from_secs(1);
        let gone = r.reap(later, Duration::from_secs(100_000));
        assert_eq!(gone.len(), burst, "all but node 1 reclaimed");
        assert!(!gone.contains(&1));
        let Response::RegisterOk(again) = r
            .handle(
                Request::Register(wire::Register::new(
                    key(250).verifying_key().as_bytes(),
                    ":1",
                )),
                from("10.0.0.3"),
                later,
            )
            .response
        else {
            panic!()
        };
        assert!(
            again.node_id <= burst as u32 + 1,
            "a reclaimed id is reused"
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let r = Registry::new();
        let t = Instant::now();
        reg(&r, &key(1), t);
        reg(&r, &key(2), t);
        let (g, snap) = r.snapshot_if_newer(0).unwrap();
        assert!(r.snapshot_if_newer(g).is_none());
        let r2 = Registry::from_snapshot(snap.clone(), t).unwrap();
        assert_eq!(
            r2.snapshot_if_newer(0),
            None,
            "fresh registry starts at generation 0"
        );
        assert_eq!(reg(&r2, &key(2), t), 2);
        assert_eq!(reg(&r2, &key(9), t), 3);
        let mut bad = snap;
        bad.nodes[1].id = 1;
        assert!(Registry::from_snapshot(bad, t).is_err());
    }

    #[test]
    fn registration_hostname_and_handshake_inbox_bounds() {
        let r = Registry::new();
        let t = Instant::now();
        let target = key(200);
        let tid = reg(&r, &target, t);
        let mut req = wire::Register::new(key(201).verifying_key().as_bytes(), ":1");
        req.hostname = Some("taken".into());
        let Response::RegisterOk(ok) = r.handle(Request::Register(req.clone()), peer(), t).response
        else {
            panic!()
        };
        assert_eq!(ok.hostname.as_deref(), Some("taken"));
        req.public_key = wire::b64_encode(key(202).verifying_key().as_bytes());
        let Response::RegisterOk(ok) = r.handle(Request::Register(req), peer(), t).response else {
            panic!()
        };
        assert_eq!(ok.hostname, None);
        assert_eq!(
            ok.hostname_error.as_deref(),
            Some("hostname \"taken\" already in use by node 2")
        );

        // 100 requesters fill the inbox; the 101st is refused.
        for n in 0..=100u8 {
            let k = key(n);
            let from = reg(&r, &k, t);
            let hs = signed(
                Request::RequestHandshake(wire::RequestHandshake {
                    from_node_id: from,
                    to_node_id: tid,
                    justification: "j".into(),
                    signature: None,
                }),
                &k,
            );
            let resp = r.handle(hs, peer(), t).response;
            if n < 100 {
                assert_eq!(resp.type_name(), "request_handshake_ok", "{resp:?}");
            } else {
                assert_eq!(
                    resp,
                    Response::error(&format!(
                        "too many pending handshake requests for node {tid}"
                    ))
                );
            }
        }
    }

    #[test]
    fn shared_networks_relate_nodes_and_persist() {
        use crate::wire::networks::{CreateNetwork, JoinRule, NetRequest, NodeNetwork};
        let r = Registry::new();
        r.track_changes();
        let t = Instant::now();
        let (ka, kb) = (key(1), key(2));
        let (a, b) = (reg(&r, &ka, t), reg(&r, &kb, t));
        let check = || {
            matches!(
                r.handle(
                    Request::CheckTrust(wire::TrustPair {
                        node_id: a,
                        peer_id: b,
                        signature: None,
                    }),
                    peer(),
                    t,
                )
                .response,
                Response::CheckTrustOk(CheckTrustOk { trusted: true })
            )
        };
        let resolve = || {
            r.handle(
                signed(
                    Request::Resolve(wire::Resolve {
                        node_id: b,
                        requester_id: a,
                        signature: None,
                    }),
                    &ka,
                ),
                peer(),
                t,
            )
            .response
            .type_name()
        };
        assert!(!check());
        assert_eq!(resolve(), "error");
        let create = signed(
            Request::Network(NetRequest::CreateNetwork(CreateNetwork {
                node_id: a,
                name: "lab".into(),
                join_rule: JoinRule::Open,
                signature: None,
            })),
            &ka,
        );
        let out = r.handle(create, peer(), t);
        assert!(out.durable_generation.is_some(), "{out:?}");
        // A join signed by the wrong key is refused.
        let join = |k: &SigningKey| {
            signed(
                Request::Network(NetRequest::JoinNetwork(NodeNetwork {
                    node_id: b,
                    network_id: 1,
                    signature: None,
                })),
                k,
            )
        };
        assert_eq!(r.handle(join(&ka), peer(), t).response.type_name(), "error");
        assert_eq!(
            r.handle(join(&kb), peer(), t).response.type_name(),
            "join_network_ok"
        );
        assert!(check());
        assert_eq!(resolve(), "resolve_ok");
        match r
            .handle(Request::Lookup(wire::Lookup { node_id: b }), peer(), t)
            .response
        {
            Response::LookupOk(ok) => assert_eq!(ok.networks, vec![0, 1]),
            other => panic!("{other:?}"),
        }
        let (_, ch) = r.take_changes();
        assert_eq!(ch.networks.len(), 1);
        assert_eq!(ch.network_members.len(), 2);
        // A snapshot carries the networks and memberships.
        let snap = r.snapshot();
        assert_eq!(snap.network_members, vec![(1, a), (1, b)]);
        let r2 = Registry::from_snapshot(snap, t).unwrap();
        assert_eq!(r2.snapshot().networks.len(), 1);
    }

    #[test]
    fn punch_only_for_participants_and_visible_peers() {
        let r = Registry::new();
        let t = Instant::now();
        let (ka, kb, kc) = (key(1), key(2), key(3));
        let (a, b, c) = (reg(&r, &ka, t), reg(&r, &kb, t), reg(&r, &kc, t));
        let punch = |k: &SigningKey, requester_id, node_a, node_b| {
            r.handle(
                signed(
                    Request::Punch(wire::Punch {
                        requester_id,
                        node_a,
                        node_b,
                        signature: None,
                    }),
                    k,
                ),
                peer(),
                t,
            )
            .response
        };
        // Private b, no trust: refused; c is not a participant: refused.
        assert_eq!(punch(&ka, a, a, b).type_name(), "error");
        assert_eq!(punch(&kc, c, a, b).type_name(), "error");
        let trust = signed(
            Request::ReportTrust(wire::TrustPair {
                node_id: b,
                peer_id: a,
                signature: None,
            }),
            &kb,
        );
        assert_eq!(
            r.handle(trust, peer(), t).response.type_name(),
            "report_trust_ok"
        );
        // One side's consent is not trust (spec §12.16): still refused.
        assert_eq!(punch(&ka, a, a, b).type_name(), "error");
        let trust = signed(
            Request::ReportTrust(wire::TrustPair {
                node_id: a,
                peer_id: b,
                signature: None,
            }),
            &ka,
        );
        assert_eq!(
            r.handle(trust, peer(), t).response.type_name(),
            "report_trust_ok"
        );
        assert_eq!(punch(&ka, a, a, b).type_name(), "punch_ok");
    }
}
