//! The zero-trust handshake (spec §9): the trust store (`trust.json`), the
//! port-444 service, the registry relay path with a long-poll, and the
//! operator commands behind `pilotctl handshake|pending|approve|reject|
//! untrust|trust`.
//!
//! Shape: [`TrustState`] is plain state behind a mutex (trusted, pending,
//! outstanding, the replay set, drop counters), persisted atomically on
//! every change of the trusted/pending sets. The async functions here do
//! the registry calls and tell the event loop's gate ([`Cmd::SetTrust`]).
//!
//! Delivery: requests and responses always go through the registry
//! (`request_handshake` / `respond_handshake`), which works for private
//! targets and for reference peers alike. Instead of the reference's 60 s
//! heartbeat poll (§12.15), a dedicated registry connection long-polls
//! `poll_handshakes` with a `wait_ms` field: our rendezvous answers the
//! moment something arrives, so a request or an approval reaches the other
//! side in milliseconds. Against a registry that ignores `wait_ms` (answers
//! at once) the loop falls back to polling every second while a request is
//! outstanding, every five otherwise.
//!
//! Outstanding requests are re-sent ([`RESEND_DELAYS`]: 2, 4, 8, 16, 32 s,
//! about a minute in all) until the peer answers or the request is dropped:
//! a relayed request can be lost without an error, e.g. when the target's
//! daemon just restarted and the registry handed it to the dead daemon's
//! parked long-poll. The receiver keeps one pending entry per requester, so
//! a repeat only refreshes it.
//!
//! Ordering of untrust and a new request: our revoke travels directly on
//! port 444, a request through the registry, so a request sent shortly
//! after `untrust` could overtake the revoke; the peer would then answer it
//! with the trust the revoke is about to end, and trust ends up one-sided.
//! So `handshake` first waits for (or cancels) our revoke still in flight
//! to that peer. And a peer we trust locally but the registry no longer
//! pairs us with (it revoked while we could not hear it) is asked again
//! rather than reported as "already trusted".
//!
//! Security (§9.4, §12.17): a direct message must carry a key that equals
//! the registry's key for `node_id`, a valid signature, `node_id` equal to
//! the stream's authenticated peer, a timestamp within 5 min / 30 s, and
//! must not be a replay; accepts and rejects count only for a request we
//! sent. Everything dropped is counted by reason (`pilotctl trust --json`).
//! The gate is the local trusted set only (§12.16).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use super::engine::Cmd;
use super::svc::{NodeStream, ServiceListener};
use super::Shared;
use crate::crypto::identity::{decode_public_key_b64, verify};
use crate::ipc::proto::TrustRequest;
use crate::ipc::{ErrorCode, Response};
use crate::wire::address::Addr;
use crate::wire::trust::{
    signed_string, HandshakeMessage, HandshakeType, PendingRequest, TrustFile, TrustedPeer,
    MAX_JUSTIFICATION_LEN, MAX_MESSAGE_LEN, TRUST_PORT,
};

/// Distinct pending requesters kept (spec §9.5: 256).
pub const MAX_PENDING: usize = 256;
/// Replay-set capacity (spec §9.4: 8192).
pub const MAX_REPLAY: usize = 8192;
/// Replay entries older than this are forgotten (spec §9.4: 10 min).
const REPLAY_TTL_SECS: i64 = 600;
/// Outstanding requests remembered (our bound).
const MAX_OUTSTANDING: usize = 1024;
/// How long a direct message may take to arrive (spec §9.1: 10 s).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Long-poll duration asked of the registry (well under its 5 min idle cut).
const LONG_POLL: Duration = Duration::from_secs(25);
/// Poll spacing against a registry without long-poll, while we wait for an
/// answer / otherwise (spec §9.7 suggests polling often while waiting).
const FAST_POLL: Duration = Duration::from_secs(1);
const SLOW_POLL: Duration = Duration::from_secs(5);
/// Best-effort direct messages give up after this long.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before each re-send of an outstanding request (bounded backoff).
pub const RESEND_DELAYS: [Duration; 5] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];
/// How long `handshake` waits for our revoke still in flight to the same
/// peer (a direct send: dial, write, linger, close) before cancelling it.
const REVOKE_WAIT: Duration = Duration::from_secs(8);

/// The text of the `not_trusted` error.
pub fn not_trusted_message(addr: Addr) -> String {
    format!("{addr} is private and does not trust you yet; run `pilotctl handshake {addr}`")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    super::files::rfc3339_utc(unix_now())
}

/// Why direct messages were dropped (spec §9.4), and other counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Not a handshake JSON object / too large / incomplete.
    pub malformed: u64,
    /// Timestamp outside 5 min / 30 s.
    pub stale: u64,
    /// Seen before (or the replay set was full).
    pub replay: u64,
    /// Missing key or signature, or the signature does not verify.
    pub bad_signature: u64,
    /// The key differs from the registry's key for `node_id`.
    pub wrong_key: u64,
    /// `node_id` is not the stream's authenticated peer.
    pub node_mismatch: u64,
    /// An accept/reject that answers no request of ours.
    pub unsolicited: u64,
    /// Requests dropped because the pending set was full.
    pub pending_full: u64,
    /// Valid messages processed (direct and relayed).
    pub accepted_messages: u64,
}

#[derive(Debug, Clone)]
struct Outstanding {
    sent_at: i64,
    /// Which `handshake` command this is: its re-send task stops once the
    /// entry is gone or belongs to a newer command.
    generation: u64,
    /// Times sent so far (the first send included).
    sends: u32,
}

/// The trust store.
#[derive(Debug, Default)]
struct Inner {
    trusted: BTreeMap<u32, TrustedPeer>,
    pending: BTreeMap<u32, PendingRequest>,
    outstanding: HashMap<u32, Outstanding>,
    /// Recent rejections of our requests (for `pilotctl trust`).
    rejected: BTreeMap<u32, i64>,
    replay: HashMap<[u8; 32], i64>,
    counters: Counters,
    /// Our direct revokes still being delivered, by peer.
    revoking: HashMap<u32, tokio::task::JoinHandle<()>>,
    /// Source of [`Outstanding::generation`].
    generation: u64,
}

/// Trust state shared by the daemon's tasks.
#[derive(Debug)]
pub struct TrustState {
    inner: Mutex<Inner>,
    path: PathBuf,
    /// `--trust-auto-approve`.
    pub auto_approve: bool,
}

/// A line of `pilotctl trust`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustEntry {
    /// Node id.
    pub node_id: u32,
    /// Address text.
    pub address: String,
    /// How: `mutual`, `approved`, `network` or `auto`.
    pub via: String,
    /// RFC 3339.
    pub approved_at: String,
    /// Base64 key (may be empty).
    pub public_key: String,
    /// For `via: network`: the networks shared with the peer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<u16>,
}

/// A line of `pilotctl pending`.
#[derive(Debug, Clone, Serialize)]
pub struct PendingEntry {
    /// Node id.
    pub node_id: u32,
    /// Address text.
    pub address: String,
    /// The request's justification.
    pub justification: String,
    /// RFC 3339.
    pub received_at: String,
}

fn via_of(p: &TrustedPeer) -> String {
    if !p.via.is_empty() {
        p.via.clone()
    } else if p.network != 0 {
        "network".into()
    } else if p.mutual {
        "mutual".into()
    } else {
        "approved".into()
    }
}

impl TrustState {
    /// Loads `path` (missing = empty). A corrupt file is kept aside as
    /// `trust.json.corrupt` rather than silently discarded.
    pub fn load(path: PathBuf, auto_approve: bool) -> TrustState {
        let mut inner = Inner::default();
        if let Some(dir) = path.parent() {
            super::files::sweep_tmp(dir);
        }
        match std::fs::read(&path) {
            Ok(bytes) => match TrustFile::from_slice(&bytes) {
                Ok(f) => {
                    for t in f.trusted {
                        inner.trusted.insert(t.node_id, t);
                    }
                    for p in f.pending.into_iter().take(MAX_PENDING) {
                        inner.pending.insert(p.node_id, p);
                    }
                }
                Err(e) => {
                    tracing::error!("{}: {e}; moved aside", path.display());
                    let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("cannot read {}: {e}", path.display()),
        }
        TrustState {
            inner: Mutex::new(inner),
            path,
            auto_approve,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, inner: &Inner) {
        let file = TrustFile {
            trusted: inner.trusted.values().cloned().collect(),
            pending: inner.pending.values().cloned().collect(),
        };
        if let Err(e) = super::files::atomic_write(&self.path, file.to_pretty_json().as_bytes()) {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }

    /// The trusted node ids.
    pub fn trusted_ids(&self) -> Vec<u32> {
        self.lock().trusted.keys().copied().collect()
    }

    /// Whether `node` is trusted.
    pub fn is_trusted(&self, node: u32) -> bool {
        self.lock().trusted.contains_key(&node)
    }

    fn add_trusted(&self, node: u32, key: String, via: &str) {
        let mut g = self.lock();
        g.pending.remove(&node);
        g.outstanding.remove(&node);
        g.rejected.remove(&node);
        g.trusted.insert(
            node,
            TrustedPeer {
                node_id: node,
                public_key: key,
                approved_at: rfc3339_now(),
                mutual: via == "mutual" || via == "approved" || via == "auto",
                network: 0,
                via: via.into(),
            },
        );
        self.persist(&g);
    }

    fn remove_trusted(&self, node: u32) -> bool {
        let mut g = self.lock();
        let was = g.trusted.remove(&node).is_some();
        let p = g.pending.remove(&node).is_some();
        g.outstanding.remove(&node);
        if was || p {
            self.persist(&g);
        }
        was
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock().counters);
    }
}

/// What the daemon's trust functions need.
#[derive(Clone)]
pub struct Ctx {
    /// Shared daemon state.
    pub shared: Arc<Shared>,
    /// The event loop.
    pub cmds: mpsc::Sender<Cmd>,
}

impl Ctx {
    fn state(&self) -> &TrustState {
        &self.shared.trust
    }

    fn me(&self) -> u32 {
        self.shared.registry.node_id()
    }

    async fn gate(&self, node: u32, on: bool) {
        let _ = self.cmds.send(Cmd::SetTrust(node, on)).await;
    }

    async fn key_of(&self, node: u32) -> String {
        self.shared
            .registry
            .lookup(node)
            .await
            .map(|d| d.public_key)
            .unwrap_or_default()
    }

    /// Trusts `node` (persisted, gate opened, registry told).
    async fn trust(&self, node: u32, via: &str, report: bool) {
        let key = self.key_of(node).await;
        self.state().add_trusted(node, key, via);
        self.gate(node, true).await;
        tracing::info!("trusting {} ({via})", Addr::backbone(node));
        if report {
            if let Err(e) = self.shared.registry.report_trust(node).await {
                tracing::warn!("report_trust {node}: {e}");
            }
        }
    }

    /// Whether we share a non-backbone network with `node` (spec §9.5).
    async fn shared_network(&self, node: u32) -> Option<u16> {
        let a = self.shared.registry.lookup(self.me()).await.ok()?;
        let b = self.shared.registry.lookup(node).await.ok()?;
        a.networks
            .iter()
            .find(|n| **n != 0 && b.networks.contains(n))
            .copied()
    }

    /// A handshake request from `from` (relayed or direct), spec §9.5.
    async fn on_request(&self, from: u32, justification: String, key: String) {
        if from == self.me() || from == 0 {
            return;
        }
        self.state().count(|c| c.accepted_messages += 1);
        let (trusted, outstanding) = {
            let g = self.state().lock();
            (
                g.trusted.contains_key(&from),
                g.outstanding.contains_key(&from),
            )
        };
        let via = if trusted {
            None
        } else if outstanding {
            Some("mutual")
        } else if self.shared_network(from).await.is_some() {
            Some("network")
        } else if self.state().auto_approve {
            Some("auto")
        } else {
            let mut g = self.state().lock();
            if !g.pending.contains_key(&from) && g.pending.len() >= MAX_PENDING {
                g.counters.pending_full += 1;
                return;
            }
            let j: String = justification.chars().take(MAX_JUSTIFICATION_LEN).collect();
            // A repeat (the requester re-sends until answered) refreshes
            // the one entry and keeps its first arrival time.
            match g.pending.get_mut(&from) {
                Some(p) => {
                    if p.justification == j && (key.is_empty() || p.public_key == key) {
                        return;
                    }
                    p.justification = j;
                    if !key.is_empty() {
                        p.public_key = key;
                    }
                }
                None => {
                    g.pending.insert(
                        from,
                        PendingRequest {
                            node_id: from,
                            public_key: key,
                            justification: j,
                            received_at: rfc3339_now(),
                        },
                    );
                    tracing::info!("handshake request from {} pending", Addr::backbone(from));
                }
            }
            self.state().persist(&g);
            return;
        };
        if let Some(via) = via {
            // Registry first (this is what creates the pair there), then
            // our own report.
            self.respond(from, true).await;
            self.trust(from, via, true).await;
        } else {
            self.respond(from, true).await;
        }
    }

    async fn respond(&self, peer: u32, accept: bool) {
        if let Err(e) = self.shared.registry.respond_handshake(peer, accept).await {
            tracing::warn!("respond_handshake {peer}: {e}");
        }
    }

    /// A response to one of our requests (relayed or direct).
    async fn on_response(&self, from: u32, accept: bool) {
        let (was_outstanding, trusted) = {
            let mut g = self.state().lock();
            let o = g.outstanding.remove(&from).is_some();
            let t = g.trusted.contains_key(&from);
            if !o && !t {
                g.counters.unsolicited += 1;
            } else {
                g.counters.accepted_messages += 1;
            }
            if o && !accept {
                g.rejected.insert(from, unix_now());
                while g.rejected.len() > MAX_OUTSTANDING {
                    let Some(k) = g.rejected.keys().next().copied() else {
                        break;
                    };
                    g.rejected.remove(&k);
                }
            }
            (o, t)
        };
        if !was_outstanding {
            if !trusted {
                tracing::warn!(
                    "dropped a handshake {} from {} that answers no request of ours",
                    if accept { "accept" } else { "reject" },
                    Addr::backbone(from)
                );
            }
            return;
        }
        if accept {
            self.trust(from, "mutual", true).await;
        } else {
            tracing::info!("{} rejected our handshake", Addr::backbone(from));
        }
    }

    /// A revoke from `from`: forget it everywhere.
    async fn on_revoke(&self, from: u32) {
        self.state().count(|c| c.accepted_messages += 1);
        if self.state().remove_trusted(from) {
            self.gate(from, false).await;
            let _ = self.shared.registry.revoke_trust(from).await;
            tracing::info!("{} revoked trust", Addr::backbone(from));
        }
    }

    /// Sends one signed message directly to `to`'s port 444 (best effort).
    async fn send_direct(
        &self,
        to: u32,
        kind: HandshakeType,
        reason: &str,
    ) -> Result<(), Response> {
        let me = self.me();
        let id = &self.shared.identity;
        let sig = id.sign(signed_string(me, to).as_bytes());
        let mut m = HandshakeMessage::new(kind, me, &id.public_key(), &sig, unix_now());
        m.reason = reason.into();
        let mut s =
            NodeStream::dial(&self.cmds, Addr::backbone(to), TRUST_PORT, DIRECT_TIMEOUT).await?;
        s.write_all(m.canonical_json().as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.close().await;
        Ok(())
    }

    /// Waits for our revoke still in flight to `node`, if any, so that it
    /// reaches the peer before a new request does; cancels it after
    /// [`REVOKE_WAIT`] (then it never arrives, which is just as consistent).
    async fn settle_revoke(&self, node: u32) {
        let Some(mut h) = self.state().lock().revoking.remove(&node) else {
            return;
        };
        if tokio::time::timeout(REVOKE_WAIT, &mut h).await.is_err() {
            h.abort();
            tracing::warn!(
                "revoke to {} not delivered in time; cancelled",
                Addr::backbone(node)
            );
        }
    }

    /// Re-sends the outstanding request `generation` to `node` with
    /// backoff until it is answered, dropped or superseded.
    fn spawn_resends(&self, node: u32, generation: u64, justification: String) {
        let ctx = self.clone();
        tokio::spawn(async move {
            for delay in RESEND_DELAYS {
                tokio::time::sleep(delay).await;
                {
                    let mut g = ctx.state().lock();
                    match g.outstanding.get_mut(&node) {
                        Some(o) if o.generation == generation => o.sends += 1,
                        _ => return,
                    }
                }
                match ctx
                    .shared
                    .registry
                    .request_handshake(node, &justification)
                    .await
                {
                    Ok(()) => {
                        tracing::debug!("handshake request to {} re-sent", Addr::backbone(node))
                    }
                    // Still in the peer's inbox: nothing lost yet.
                    Err(e) if e.to_string().contains("already pending") => {}
                    Err(e) => tracing::debug!("re-sending handshake to {node}: {e}"),
                }
            }
        });
    }
}

// ------------------------------------------------------------- services

/// Starts the trust machinery: restores the gate from `trust.json`, runs
/// the port-444 service and the registry poller.
pub async fn start(ctx: Ctx) {
    for id in ctx.state().trusted_ids() {
        ctx.gate(id, true).await;
    }
    match ServiceListener::bind(&ctx.cmds, TRUST_PORT).await {
        Ok(l) => {
            tokio::spawn(serve(ctx.clone(), l));
        }
        Err(e) => tracing::error!("cannot listen on port {TRUST_PORT}: {e:?}"),
    }
    tokio::spawn(poll_loop(ctx));
}

async fn serve(ctx: Ctx, mut l: ServiceListener) {
    while let Some(s) = l.accept().await {
        tokio::spawn(direct_message(ctx.clone(), s));
    }
}

/// One direct message (spec §9.1): accumulate until a JSON object parses.
async fn direct_message(ctx: Ctx, mut s: NodeStream) {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let msg = loop {
        let chunk = match tokio::time::timeout_at(deadline, s.recv()).await {
            Ok(Some(c)) => c,
            _ => {
                ctx.state().count(|c| c.malformed += 1);
                return;
            }
        };
        buf.extend_from_slice(&chunk);
        match HandshakeMessage::parse_partial(&buf) {
            Ok(Some(m)) => break m,
            Ok(None) if buf.len() < MAX_MESSAGE_LEN => continue,
            _ => {
                ctx.state().count(|c| c.malformed += 1);
                return;
            }
        }
    };
    s.close().await;
    let peer = s.remote.addr.node;
    if let Err(reason) = validate(&ctx, &msg, peer).await {
        tracing::warn!(
            "dropped a {} from {}: {reason}",
            msg.kind,
            Addr::backbone(peer)
        );
        return;
    }
    match msg.kind {
        HandshakeType::Request => {
            ctx.on_request(peer, msg.justification, msg.public_key)
                .await
        }
        HandshakeType::Accept => ctx.on_response(peer, true).await,
        HandshakeType::Reject => ctx.on_response(peer, false).await,
        HandshakeType::Revoke => ctx.on_revoke(peer).await,
    }
}

/// Spec §9.4 as a new implementation must apply it; counts each drop.
async fn validate(ctx: &Ctx, m: &HandshakeMessage, peer: u32) -> Result<(), &'static str> {
    let st = ctx.state();
    let now = unix_now();
    if m.node_id != peer {
        st.count(|c| c.node_mismatch += 1);
        return Err("node_id is not the stream's peer");
    }
    if m.check_timestamp(now).is_err() {
        st.count(|c| c.stale += 1);
        return Err("stale timestamp");
    }
    let hash = m.replay_hash();
    {
        let mut g = st.lock();
        if g.replay.len() >= MAX_REPLAY {
            g.replay.retain(|_, t| now - *t < REPLAY_TTL_SECS);
        }
        if g.replay.contains_key(&hash) || g.replay.len() >= MAX_REPLAY {
            g.counters.replay += 1;
            return Err("replayed message");
        }
    }
    let (Ok(Some(key)), Ok(Some(sig))) = (m.public_key_bytes(), m.signature_bytes()) else {
        st.count(|c| c.bad_signature += 1);
        return Err("missing or malformed key or signature");
    };
    let registry_key = match ctx.shared.registry.lookup(peer).await {
        Ok(d) => decode_public_key_b64(&d.public_key).ok(),
        Err(_) => None,
    };
    let Some(registry_key) = registry_key else {
        st.count(|c| c.wrong_key += 1);
        return Err("the registry has no key for the sender");
    };
    if registry_key != key {
        st.count(|c| c.wrong_key += 1);
        return Err("key differs from the registry's");
    }
    if !verify(
        &registry_key,
        signed_string(m.node_id, ctx.me()).as_bytes(),
        &sig,
    ) {
        st.count(|c| c.bad_signature += 1);
        return Err("bad signature");
    }
    let mut g = st.lock();
    if g.replay.insert(hash, now).is_some() {
        g.counters.replay += 1;
        return Err("replayed message");
    }
    Ok(())
}

/// The registry relay path (spec §9.7) with a long-poll on its own
/// connection.
async fn poll_loop(ctx: Ctx) {
    let mut client = None;
    loop {
        if client.is_none() {
            match ctx.shared.registry.connect_new().await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    tokio::time::sleep(FAST_POLL).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let started = Instant::now();
        let me = ctx.me();
        let r = c
            .poll_handshakes_wait(ctx.shared.registry.signing_key(), me, LONG_POLL)
            .await;
        match r {
            Ok(ok) => {
                let empty = ok.requests.is_empty() && ok.responses.is_empty();
                for q in ok.requests {
                    let key = ctx.key_of(q.from_node_id).await;
                    ctx.on_request(q.from_node_id, q.justification, key).await;
                }
                for a in ok.responses {
                    ctx.on_response(a.from_node_id, a.accept).await;
                }
                if empty && started.elapsed() < LONG_POLL / 2 {
                    // The registry does not hold polls: plain polling.
                    let waiting = !ctx.state().lock().outstanding.is_empty();
                    tokio::time::sleep(if waiting { FAST_POLL } else { SLOW_POLL }).await;
                }
            }
            Err(e) => {
                tracing::debug!("poll_handshakes: {e}");
                client = None;
                tokio::time::sleep(FAST_POLL).await;
            }
        }
    }
}

// ----------------------------------------------------------------- IPC

/// Tells `not_trusted` from `refused` after a stream to `node` was refused:
/// a private node we do not trust refuses everyone it does not trust.
pub async fn explain_refusal(shared: &Shared, node: u32, resp: Response) -> Response {
    let Response::Error {
        code: ErrorCode::Refused,
        ..
    } = &resp
    else {
        return resp;
    };
    if shared.trust.is_trusted(node) {
        // Trusted here, but the peer revoked (the registry pair is gone)
        // and we missed its revoke: say so rather than "refused".
        return match shared.registry.check_trust(node).await {
            Ok(false) => Response::error(
                ErrorCode::NotTrusted,
                format!(
                    "{} no longer trusts you; run `pilotctl handshake {}`",
                    Addr::backbone(node),
                    Addr::backbone(node)
                ),
            ),
            _ => resp,
        };
    }
    match shared.registry.lookup(node).await {
        Ok(d) if !d.public => Response::error(
            ErrorCode::NotTrusted,
            not_trusted_message(Addr::backbone(node)),
        ),
        _ => resp,
    }
}

/// Serves one `Request::Trust`.
pub async fn handle_ipc(ctx: Ctx, op: TrustRequest) -> Response {
    let target_of = async |t: &str| -> Result<u32, Response> {
        let a = super::ipc_server::resolve_target(&ctx.shared, t).await?;
        if a.node == 0 || a.node == ctx.me() {
            return Err(Response::error(
                ErrorCode::InvalidAddress,
                format!("{a} is this node or not a node"),
            ));
        }
        Ok(a.node)
    };
    match op {
        TrustRequest::Handshake {
            target,
            justification,
        } => {
            let node = match target_of(&target).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            if justification.len() > MAX_JUSTIFICATION_LEN {
                return Response::error(
                    ErrorCode::InvalidArgument,
                    format!("justification too long (max {MAX_JUSTIFICATION_LEN} bytes)"),
                );
            }
            let addr = Addr::backbone(node).to_string();
            ctx.settle_revoke(node).await;
            let mut asking_again = false;
            if ctx.state().is_trusted(node) {
                // Trusted here; if the registry no longer pairs us, the
                // peer revoked (we missed its revoke): ask again.
                match ctx.shared.registry.check_trust(node).await {
                    Ok(false) => {
                        tracing::info!(
                            "{addr} is trusted here but no longer trusts us; asking again"
                        );
                        asking_again = true;
                    }
                    _ => {
                        return Response::ok(
                            &serde_json::json!({"node_id": node, "address": addr, "status": "trusted", "message": "already trusted"}),
                        );
                    }
                }
            }
            let they_asked = ctx.state().lock().pending.contains_key(&node);
            if they_asked {
                // Both sides asked: mutual.
                ctx.respond(node, true).await;
                ctx.trust(node, "mutual", true).await;
                return Response::ok(
                    &serde_json::json!({"node_id": node, "address": addr, "status": "trusted", "message": "they had asked too: trusted (mutual)"}),
                );
            }
            let generation = {
                let mut g = ctx.state().lock();
                if g.outstanding.len() >= MAX_OUTSTANDING && !g.outstanding.contains_key(&node) {
                    return Response::error(
                        ErrorCode::InvalidArgument,
                        "too many outstanding handshake requests",
                    );
                }
                g.generation += 1;
                let generation = g.generation;
                g.outstanding.insert(
                    node,
                    Outstanding {
                        sent_at: unix_now(),
                        generation,
                        sends: 1,
                    },
                );
                g.rejected.remove(&node);
                generation
            };
            match ctx
                .shared
                .registry
                .request_handshake(node, &justification)
                .await
            {
                Ok(()) => {}
                Err(e) if e.to_string().contains("already pending") => {}
                Err(e) => {
                    ctx.state().lock().outstanding.remove(&node);
                    return Response::error(e.code(), format!("handshake with {addr}: {e}"));
                }
            }
            ctx.spawn_resends(node, generation, justification);
            let message = if asking_again {
                format!("{addr} no longer trusts this node: handshake request sent; trusted again once its owner approves (`pilotctl trust` shows it)")
            } else {
                format!("handshake request sent to {addr}; it is trusted once its owner approves (`pilotctl trust` shows it)")
            };
            Response::ok(
                &serde_json::json!({"node_id": node, "address": addr, "status": "requested", "message": message}),
            )
        }
        TrustRequest::Pending => {
            let g = ctx.state().lock();
            let pending: Vec<PendingEntry> = g
                .pending
                .values()
                .map(|p| PendingEntry {
                    node_id: p.node_id,
                    address: Addr::backbone(p.node_id).to_string(),
                    justification: p.justification.clone(),
                    received_at: p.received_at.clone(),
                })
                .collect();
            Response::ok(&serde_json::json!({ "pending": pending }))
        }
        TrustRequest::Approve { target } => {
            let node = match target_of(&target).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            let addr = Addr::backbone(node);
            if !ctx.state().lock().pending.contains_key(&node) {
                return Response::error(
                    ErrorCode::NotFound,
                    format!("no pending handshake request from {addr} (see `pilotctl pending`)"),
                );
            }
            // Registry first (spec §12.15): it creates the pair and wakes
            // the requester; then our own state.
            ctx.respond(node, true).await;
            ctx.trust(node, "approved", true).await;
            Response::ok(
                &serde_json::json!({"node_id": node, "address": addr.to_string(), "status": "trusted"}),
            )
        }
        TrustRequest::Reject { target, reason } => {
            let node = match target_of(&target).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            let addr = Addr::backbone(node);
            let had = {
                let mut g = ctx.state().lock();
                let had = g.pending.remove(&node).is_some();
                if had {
                    ctx.state().persist(&g);
                }
                had
            };
            if !had {
                return Response::error(
                    ErrorCode::NotFound,
                    format!("no pending handshake request from {addr} (see `pilotctl pending`)"),
                );
            }
            ctx.respond(node, false).await;
            let _ = reason;
            Response::ok(
                &serde_json::json!({"node_id": node, "address": addr.to_string(), "status": "rejected"}),
            )
        }
        TrustRequest::Untrust { target } => {
            let node = match target_of(&target).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            let addr = Addr::backbone(node);
            if !ctx.state().remove_trusted(node) {
                return Response::error(ErrorCode::NotFound, format!("{addr} is not trusted"));
            }
            ctx.gate(node, false).await;
            if let Err(e) = ctx.shared.registry.revoke_trust(node).await {
                tracing::debug!("revoke_trust {node}: {e}");
            }
            // Tell the peer (best effort; it may already have cut us off,
            // and without a tunnel a private peer cannot be resolved any
            // more; then it keeps trusting us, and answers a later request
            // of ours with that trust, which is consistent). A later
            // `handshake` to the same peer waits for it (`settle_revoke`),
            // so the revoke cannot arrive after that request.
            let c2 = ctx.clone();
            let h = tokio::spawn(async move {
                if let Err(e) = c2.send_direct(node, HandshakeType::Revoke, "").await {
                    tracing::debug!("revoke to {node} not delivered: {e:?}");
                }
            });
            let mut g = ctx.state().lock();
            g.revoking.retain(|_, h| !h.is_finished());
            if let Some(old) = g.revoking.insert(node, h) {
                old.abort();
            }
            Response::ok(
                &serde_json::json!({"node_id": node, "address": addr.to_string(), "status": "untrusted"}),
            )
        }
        TrustRequest::List => {
            let g = ctx.state().lock();
            let mut trusted: Vec<TrustEntry> = g
                .trusted
                .values()
                .map(|p| TrustEntry {
                    node_id: p.node_id,
                    address: Addr::backbone(p.node_id).to_string(),
                    via: via_of(p),
                    approved_at: p.approved_at.clone(),
                    public_key: p.public_key.clone(),
                    networks: Vec::new(),
                })
                .collect();
            // Fellow members of our networks pass the gate too (trust
            // source "network", spec §9.6), for as long as they are members.
            let me = ctx.me();
            let mut fellows: Vec<u32> = ctx.shared.networks.peers(me).into_iter().collect();
            fellows.sort_unstable();
            for p in fellows {
                if !g.trusted.contains_key(&p) {
                    let nets = ctx.shared.networks.shared_with(p);
                    trusted.push(TrustEntry {
                        node_id: p,
                        address: Addr::backbone(p).to_string(),
                        via: "network".into(),
                        approved_at: String::new(),
                        public_key: String::new(),
                        networks: nets,
                    });
                }
            }
            let outstanding: Vec<serde_json::Value> = g
                .outstanding
                .iter()
                .map(|(n, o)| serde_json::json!({"node_id": n, "address": Addr::backbone(*n).to_string(), "sent_at": o.sent_at, "sends": o.sends}))
                .collect();
            let rejected: Vec<serde_json::Value> = g
                .rejected
                .iter()
                .map(|(n, t)| serde_json::json!({"node_id": n, "address": Addr::backbone(*n).to_string(), "at": t}))
                .collect();
            Response::ok(&serde_json::json!({
                "trusted": trusted,
                "outstanding": outstanding,
                "rejected_by": rejected,
                "pending": g.pending.len(),
                "auto_approve": ctx.state().auto_approve,
                "dropped": g.counters,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trips_through_trust_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("trust.json");
        let s = TrustState::load(p.clone(), false);
        s.add_trusted(5, String::new(), "approved");
        s.lock().pending.insert(
            9,
            PendingRequest {
                node_id: 9,
                public_key: String::new(),
                justification: "hi".into(),
                received_at: rfc3339_now(),
            },
        );
        let g = s.lock();
        s.persist(&g);
        drop(g);
        let again = TrustState::load(p.clone(), false);
        assert!(again.is_trusted(5));
        assert_eq!(via_of(&again.lock().trusted[&5]), "approved");
        assert!(again.lock().pending.contains_key(&9));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(again.remove_trusted(5));
        assert!(!TrustState::load(p, false).is_trusted(5));
    }
}
