//! The registry's TCP front end (spec §6.1): accepts connections, frames
//! requests, hands them to the [`Registry`] state machine and writes replies
//! once they are durable.
//!
//! Hardening, because the registry is exposed to the Internet:
//! * a connection buffers only bytes it actually received (never a claimed
//!   length), and a length prefix above 4 MiB gets one error reply and a
//!   close before any payload is read;
//! * a request must complete within the idle timeout (5 min) of the
//!   previous one, and a reply must be written within the write timeout, so
//!   slow or stuck clients cost one task and at most one frame of memory;
//! * a semaphore caps concurrent connections; when it is full, or when one
//!   source address holds its share ([`Shared::max_per_source`]), a new
//!   connection evicts the least recently active connection of the source
//!   holding the most connections (issue 10 item 6: connections that sent
//!   one request and then idled used to hold every slot forever, and new
//!   clients were closed at once);
//! * the §6.1 per-connection rate rule: after 5 s, > 100 req/s adds 10 ms per
//!   request, > 500 req/s closes the connection;
//! * malformed JSON, unknown types and bad binary frames get an error reply
//!   (`request failed`) and the connection stays usable.
//!
//! Binary mode (§6.5) is detected from the first 4 bytes (`PILT`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::state::{ConnAuth, Registry};
use super::store::Durability;
use crate::wire::networks::{NetRequest, NetResponse};
use crate::wire::registry::{
    self as wire, BinaryLookupReply, BinaryMessage, FrameDecoder, FrameError, Lookup, NodeSigned,
    Request, Resolve, Response, BINARY_PREAMBLE,
};

/// Per-connection rate rule (spec §6.1): grace period before measuring.
const RATE_GRACE: Duration = Duration::from_secs(5);
/// Above this average rate each request is delayed by [`RATE_DELAY`].
const RATE_SLOW: f64 = 100.0;
/// Above this average rate the connection is closed.
const RATE_CLOSE: f64 = 500.0;
/// Delay applied to fast connections.
const RATE_DELAY: Duration = Duration::from_millis(10);
/// Read buffer per connection.
const READ_CHUNK: usize = 4096;
/// Partial-frame bytes a connection may buffer without drawing on the
/// shared budget (every normal request is far smaller).
pub(crate) const FREE_BUFFER: usize = 64 * 1024;
/// Shared budget for larger partial frames, in KiB (256 MiB in total).
pub(crate) const BUFFER_BUDGET_KIB: usize = 256 * 1024;
/// How long a new connection waits for the slot of an evicted one.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// What the connection handlers share.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    pub durability: Durability,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub durable_timeout: Duration,
    pub connections: Arc<Semaphore>,
    pub rate_limit: bool,
    /// Every open connection, for fair eviction.
    pub conns: std::sync::Mutex<HashMap<u64, ConnSlot>>,
    /// Most connections one source address may hold before its own least
    /// recently active one is evicted.
    pub max_per_source: usize,
    pub next_conn: AtomicU64,
    /// KiB of partial-frame buffer beyond [`FREE_BUFFER`] per connection,
    /// shared by all connections.
    pub buffer_budget: Arc<Semaphore>,
    /// Counters for `/metrics`.
    pub metrics: Arc<super::metrics::Metrics>,
    /// Signs answers to requests that carry a nonce ([`super::pin`]).
    pub answer_key: Option<Arc<crate::crypto::identity::Identity>>,
    /// With a shared database: waits for what other instances wrote.
    pub catchup: Option<super::store::postgres::Catchup>,
    /// Runs signature checks off the event loop (see [`handle_checked`]).
    pub verifier: super::verify::Verifier,
}

/// One open connection as the eviction policy sees it.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    ip: IpAddr,
    last_active: Instant,
    kill: Arc<Notify>,
}

impl Shared {
    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnSlot>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn per_source(conns: &HashMap<u64, ConnSlot>) -> HashMap<IpAddr, usize> {
        let mut n: HashMap<IpAddr, usize> = HashMap::new();
        for c in conns.values() {
            *n.entry(c.ip).or_default() += 1;
        }
        n
    }

    /// Whether `ip` already holds its share of connections.
    fn source_full(&self, ip: IpAddr) -> bool {
        let conns = self.lock_conns();
        conns.values().filter(|c| c.ip == ip).count() >= self.max_per_source
    }

    /// Closes the least recently active connection of `ip` if given, else
    /// of the source holding the most connections. False if none is open.
    fn evict(&self, ip: Option<IpAddr>) -> bool {
        let mut conns = self.lock_conns();
        let target = match ip {
            Some(ip) => ip,
            None => match Self::per_source(&conns).into_iter().max_by_key(|(_, n)| *n) {
                Some((ip, _)) => ip,
                None => return false,
            },
        };
        let victim = conns
            .iter()
            .filter(|(_, c)| c.ip == target)
            .min_by_key(|(_, c)| c.last_active)
            .map(|(id, _)| *id);
        match victim.and_then(|v| conns.remove(&v)) {
            Some(slot) => {
                slot.kill.notify_one();
                self.metrics.rejected("evicted");
                true
            }
            None => false,
        }
    }

    fn touch(&self, conn_id: u64) {
        if let Some(c) = self.lock_conns().get_mut(&conn_id) {
            c.last_active = Instant::now();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("idle timeout")]
    Idle,
    #[error("write timeout")]
    WriteTimeout,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("unsupported binary protocol version {0}")]
    BinaryVersion(u8),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("evicted: connection cap reached and this was the least recently active connection")]
    Evicted,
    #[error("shared buffer budget exhausted by large requests")]
    Budget,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unknown,
    Json,
    Binary,
}

/// Accepts connections until `stop` becomes true.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                let mut stop = stop.clone();
                if shared.source_full(peer.ip()) {
                    shared.evict(Some(peer.ip()));
                }
                let permit = match shared.connections.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, "connection limit reached; evicting the least recently active connection of the busiest source");
                        }
                        if !shared.evict(None) {
                            shared.metrics.rejected("connection_limit");
                            drop(sock);
                            continue;
                        }
                        None
                    }
                };
                tokio::spawn(async move {
                    let permit = match permit {
                        Some(p) => p,
                        // Wait briefly for the evicted connection's slot.
                        None => match tokio::time::timeout(
                            EVICTION_WAIT,
                            shared.connections.clone().acquire_owned(),
                        )
                        .await
                        {
                            Ok(Ok(p)) => p,
                            _ => return,
                        },
                    };
                    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.connections.inc();
                    let kill = Arc::new(Notify::new());
                    shared.lock_conns().insert(
                        conn_id,
                        ConnSlot {
                            ip: peer.ip(),
                            last_active: Instant::now(),
                            kill: kill.clone(),
                        },
                    );
                    let r = tokio::select! {
                        r = serve(sock, peer, &shared, conn_id) => r,
                        _ = kill.notified() => Err(ConnEnd::Evicted),
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    };
                    shared.lock_conns().remove(&conn_id);
                    shared.metrics.connections.dec();
                    match &r {
                        Err(ConnEnd::Frame(_)) => shared.metrics.rejected("frame_too_long"),
                        Err(ConnEnd::Budget) => shared.metrics.rejected("buffer_budget"),
                        Err(ConnEnd::BinaryVersion(_)) => shared.metrics.rejected("binary_version"),
                        _ => {}
                    }
                    if let Err(e) = r {
                        tracing::debug!(%peer, reason = %e, "registry connection closed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn write_reply(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ConnEnd> {
    match tokio::time::timeout(timeout, wr.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnEnd::WriteTimeout),
    }
}

fn json_frame(resp: &Response) -> Vec<u8> {
    // Responses are small; a failure here would be a bug, answer generically.
    wire::encode_json_frame(resp).unwrap_or_else(|_| {
        wire::encode_json_frame(&Response::error("request failed")).unwrap_or_default()
    })
}

fn binary_frame(m: &BinaryMessage) -> Vec<u8> {
    m.emit_frame().unwrap_or_else(|_| {
        BinaryMessage::Error("request failed".into())
            .emit_frame()
            .unwrap_or_default()
    })
}

/// Set once the client closed its connection while a request of it was
/// being handled.
type Gone = tokio::sync::watch::Receiver<bool>;

/// Resolves when the client has closed its end (end of file or an error);
/// never when it sent more (a pipelined request: it is still there).
async fn peer_closed(rd: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut b = [0u8; 1];
    match rd.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Resolves once [`Gone`] is set.
async fn client_gone(gone: &Gone) {
    let mut g = gone.clone();
    let _ = g.wait_for(|closed| *closed).await;
}

async fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    conn_id: u64,
) -> Result<(), ConnEnd> {
    let (mut rd, mut wr) = sock.into_split();
    let mut dec = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut mode = Mode::Unknown;
    let started = Instant::now();
    let mut requests: u64 = 0;
    let mut deadline = Instant::now() + shared.idle_timeout;
    let mut budget: Option<OwnedSemaphorePermit> = None;
    let mut auth = ConnAuth::default();
    let (gone_tx, gone) = tokio::sync::watch::channel(false);
    loop {
        if mode == Mode::Unknown {
            let p = dec.pending();
            if p.len() >= 4 && p[..4] == BINARY_PREAMBLE[..4] {
                if p.len() >= 5 {
                    if p[4] != BINARY_PREAMBLE[4] {
                        let v = p[4];
                        let err =
                            BinaryMessage::Error(format!("invalid binary protocol version {v}"));
                        write_reply(&mut wr, &binary_frame(&err), shared.write_timeout).await?;
                        return Err(ConnEnd::BinaryVersion(v));
                    }
                    dec.discard(5);
                    mode = Mode::Binary;
                }
            } else if !p.is_empty() && (p.len() >= 4 || !BINARY_PREAMBLE.starts_with(p)) {
                mode = Mode::Json;
            }
        }
        if mode != Mode::Unknown {
            loop {
                let frame = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let text = "request too long (frames are limited to 4 MiB)";
                        let reply = match mode {
                            Mode::Binary => binary_frame(&BinaryMessage::Error(text.into())),
                            _ => json_frame(&Response::error(text)),
                        };
                        let _ = write_reply(&mut wr, &reply, shared.write_timeout).await;
                        return Err(e.into());
                    }
                };
                requests += 1;
                shared.touch(conn_id);
                if shared.rate_limit {
                    match rate_action(requests, started.elapsed()) {
                        RateAction::Close => {
                            shared.metrics.rate_limited("closed");
                            let reply = json_frame(&Response::error("rate limited"));
                            let _ = write_reply(&mut wr, &reply, shared.write_timeout).await;
                            return Err(ConnEnd::RateLimited);
                        }
                        RateAction::Slow => {
                            shared.metrics.rate_limited("delayed");
                            tokio::time::sleep(RATE_DELAY).await
                        }
                        RateAction::None => {}
                    }
                }
                let handling = async {
                    match mode {
                        Mode::Binary => handle_binary(&frame, peer, shared, &mut auth, &gone).await,
                        _ => {
                            answer_frame(&answer_json(&frame, peer, shared, &mut auth, &gone).await)
                        }
                    }
                };
                tokio::pin!(handling);
                // A client that closes its connection while its request
                // waits (a long poll parked for a daemon that stopped) must
                // not have that request take its inbox: the answer could
                // only go to a closed socket, and the messages would be lost
                // (a handshake request sent just after the peer restarted
                // vanished this way). The poll ends early instead; any
                // other request finishes as usual.
                let reply = tokio::select! {
                    // The request first: most finish on their first poll,
                    // and then the socket is not even looked at.
                    biased;
                    r = &mut handling => r,
                    () = peer_closed(&mut rd) => {
                        let _ = gone_tx.send(true);
                        handling.await
                    }
                };
                write_reply(&mut wr, &reply, shared.write_timeout).await?;
                deadline = Instant::now() + shared.idle_timeout;
            }
        }
        reserve_budget(shared, &mut budget, dec.pending().len())?;
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnEnd::Idle),
        };
        if n == 0 {
            return Ok(());
        }
        dec.push(&chunk[..n]);
        reserve_budget(shared, &mut budget, dec.pending().len())?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateAction {
    None,
    Slow,
    Close,
}

/// The §6.1 rule for a connection that has made `requests` requests in
/// `elapsed` since it opened.
fn rate_action(requests: u64, elapsed: Duration) -> RateAction {
    if elapsed <= RATE_GRACE {
        return RateAction::None;
    }
    let rate = requests as f64 / elapsed.as_secs_f64();
    if rate > RATE_CLOSE {
        RateAction::Close
    } else if rate > RATE_SLOW {
        RateAction::Slow
    } else {
        RateAction::None
    }
}

/// Makes `held` cover exactly the part of `pending` bytes above
/// [`FREE_BUFFER`] (in KiB) from the shared budget.
fn reserve_budget(
    shared: &Shared,
    held: &mut Option<OwnedSemaphorePermit>,
    pending: usize,
) -> Result<(), ConnEnd> {
    reserve(&shared.buffer_budget, held, pending)
}

fn reserve(
    budget: &Arc<Semaphore>,
    held: &mut Option<OwnedSemaphorePermit>,
    pending: usize,
) -> Result<(), ConnEnd> {
    let need = u32::try_from(pending.saturating_sub(FREE_BUFFER).div_ceil(1024))
        .map_err(|_| ConnEnd::Budget)?;
    let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
    if need == have {
        return Ok(());
    }
    if need < have {
        *held = None;
        if need == 0 {
            return Ok(());
        }
    }
    let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
    let more = budget
        .clone()
        .try_acquire_many_owned(need - have)
        .map_err(|_| ConnEnd::Budget)?;
    match held {
        Some(p) => p.merge(more),
        None => *held = Some(more),
    }
    Ok(())
}

/// A request that takes longer than this to handle or to make durable is
/// logged (at warn): clients give up after 5 s (`client::DEFAULT_TIMEOUT`),
/// so a slow store shows in the log before it shows as client timeouts.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands `req` to the registry; a request that costs an Ed25519 check (a
/// registration, whose key is decompressed and checked if signed, or any
/// signed request: tens of microseconds, where a lookup costs one or two)
/// has it run first, off the event loop and without the registry's lock
/// ([`super::verify`]; [`Registry::sig_check`] says which requests).
///
/// Why: under a burst of registrations (hundreds of connections, each
/// sending its next one as soon as the last is answered) the checks ran on
/// the event loop, and a lookup that arrived behind them waited for them:
/// 14-18 ms at p99 in the 100,000-node bench with every check inline, 6.7-
/// 9.7 ms at 1,000,000 nodes with a gate of one check per worker (issue
/// 13: p99 lookup under 5 ms during registration bursts). The total work
/// is unchanged, so registration throughput is too.
async fn handle_checked(
    req: Request,
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
) -> super::state::Outcome {
    let checked = match shared.registry.sig_check(&req) {
        Some(check) => shared.verifier.check(check).await,
        None => Default::default(),
    };
    shared
        .registry
        .handle_checked(auth, req, peer, std::time::Instant::now(), checked)
}

/// Runs one request through the registry, waiting for durability.
async fn execute(req: Request, peer: SocketAddr, shared: &Shared, auth: &mut ConnAuth) -> Response {
    let kind = req.type_name();
    let started = std::time::Instant::now();
    let out = match &shared.catchup {
        // Waits for other instances' changes at times (its own bound).
        Some(sync) => handle_shared(sync, req, peer, shared, auth).await,
        None => {
            let out = handle_checked(req, peer, shared, auth).await;
            let handled = started.elapsed();
            if handled > SLOW_REQUEST {
                tracing::warn!(%peer, kind, ?handled, "slow request: waited this long for its signature check and the registry lock");
            }
            out
        }
    };
    if let Response::Error(e) = &out.response {
        if e.error.starts_with("rate limited") {
            shared.metrics.rate_limited("new_id_quota");
        }
    }
    if let Some(generation) = out.durable_generation {
        shared.durability.poke();
        if !shared
            .durability
            .wait(generation, shared.durable_timeout)
            .await
        {
            tracing::error!("store did not confirm a write in time; answering with an error");
            shared.metrics.request(kind, false);
            return Response::error("store unavailable");
        }
        let waited = started.elapsed();
        if waited > SLOW_REQUEST {
            tracing::warn!(%peer, kind, ?waited, "slow request: the store took this long to commit it");
        }
    }
    shared
        .metrics
        .request(kind, !matches!(out.response, Response::Error(_)));
    out.response
}

/// Longest wait for a read of what other instances wrote before a request
/// goes on with what this instance knows (ours; a read takes milliseconds).
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles a request on an instance sharing its database with others
/// ([`super::store::postgres`]): a registration, a request that claims
/// a hostname, and a network change first wait for a fresh read of the
/// others' changes, so a
/// key registered elsewhere keeps its id here and a name taken on another
/// instance is refused; a request that names a node or pair this instance
/// does not know yet waits for one and is handled again.
async fn handle_shared(
    sync: &super::store::postgres::Catchup,
    req: Request,
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
) -> super::state::Outcome {
    use crate::wire::networks::NetRequest as N;
    let first = match &req {
        Request::SetHostname(r) => !r.hostname.is_empty(),
        Request::Register(_) => true,
        // Network changes decide on names, ids, memberships and
        // invitations other instances may have changed a moment ago.
        Request::Network(
            N::CreateNetwork(_)
            | N::JoinNetwork(_)
            | N::LeaveNetwork(_)
            | N::DeleteNetwork(_)
            | N::InviteToNetwork(_)
            | N::RespondInvite(_)
            | N::RemoveMember(_)
            | N::SetTags(_),
        ) => true,
        _ => false,
    };
    if first {
        sync.wait(CATCHUP_TIMEOUT).await;
    }
    let retry = req.clone();
    let out = handle_checked(req, peer, shared, auth).await;
    // The reply text is already the public one (`request failed` hides
    // "denied" and a bad signature), so any refusal but a rate limit is
    // worth one more try with fresher state.
    let missed = match &out.response {
        Response::Error(e) => !first && !e.error.starts_with("rate limited"),
        _ => false,
    };
    if !missed || !sync.wait(CATCHUP_TIMEOUT).await {
        return out;
    }
    handle_checked(retry, peer, shared, auth).await
}

/// Longest `poll_handshakes` hold (our `wait_ms` extension; well under
/// the 5 min idle timeout).
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// `wait_ms` of a `poll_handshakes` request, if the client asked to wait.
fn poll_wait(payload: &[u8]) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct W {
        wait_ms: Option<u64>,
    }
    let w: W = serde_json::from_slice(payload).ok()?;
    Some(Duration::from_millis(w.wait_ms?).min(MAX_POLL_WAIT))
}

/// `poll_handshakes` held until the node's inboxes have something or the
/// wait ends: a request or an approval reaches a waiting node at once
/// instead of at its next poll (spec §12.15).
async fn long_poll(
    req: Request,
    node: u32,
    wait: Duration,
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
    gone: &Gone,
) -> Response {
    long_poll_until(req, PollFor { node, wait }, peer, shared, auth, gone, |resp| {
        !matches!(resp, Response::PollHandshakesOk(ok) if ok.requests.is_empty() && ok.responses.is_empty())
    })
    .await
}

/// Whose waiter a long poll listens to, and its longest wait.
#[derive(Debug, Clone, Copy)]
struct PollFor {
    node: u32,
    wait: Duration,
}

/// Runs `req` until `done` holds for its answer, woken by `node`'s waiter,
/// at most `wait` (the shared loop of the long-polls: handshakes, and
/// `poll_networks`, which is done once its version differs from `since`).
async fn long_poll_until(
    req: Request,
    PollFor { node, wait }: PollFor,
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
    gone: &Gone,
    done: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + wait;
    let notify = shared.registry.waiter(node);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let resp = execute(req.clone(), peer, shared, auth).await;
        if done(&resp) {
            return resp;
        }
        // The client left: answer with what it had (nothing), and do not
        // run the request again, which would take its messages.
        tokio::select! {
            r = tokio::time::timeout_at(deadline, notified) => {
                if r.is_err() {
                    return resp;
                }
            }
            () = client_gone(gone) => return resp,
        }
    }
}

/// The JSON answer to a JSON request, signed when the request carries a
/// nonce and this server has an answer key (issue 10 item 11).
async fn answer_json(
    payload: &[u8],
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
    gone: &Gone,
) -> Vec<u8> {
    let nonce = shared
        .answer_key
        .as_ref()
        .and_then(|k| super::pin::request_nonce(payload).map(|n| (k, n)));
    let resp = handle_json(payload, peer, shared, auth, gone).await;
    match nonce {
        Some((key, nonce)) => match serde_json::to_value(&resp) {
            Ok(mut v) => {
                super::pin::sign_answer(key, &nonce, &mut v);
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => wire::to_json(&resp),
        },
        None => wire::to_json(&resp),
    }
}

fn answer_frame(payload: &[u8]) -> Vec<u8> {
    wire::encode_frame(payload).unwrap_or_else(|_| json_frame(&Response::error("request failed")))
}

async fn handle_json(
    payload: &[u8],
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
    gone: &Gone,
) -> Response {
    match wire::parse_request(payload) {
        Ok(Request::PollHandshakes(r)) if poll_wait(payload).is_some() => {
            let wait = poll_wait(payload).unwrap_or_default();
            let node = r.node_id;
            long_poll(
                Request::PollHandshakes(r),
                node,
                wait,
                peer,
                shared,
                auth,
                gone,
            )
            .await
        }
        Ok(Request::Network(NetRequest::PollNetworks(r))) if poll_wait(payload).is_some() => {
            let wait = poll_wait(payload).unwrap_or_default();
            let (node, since) = (r.node_id, r.since);
            let req = Request::Network(NetRequest::PollNetworks(r));
            let poll = PollFor { node, wait };
            long_poll_until(req, poll, peer, shared, auth, gone, |resp| match resp {
                Response::Network(NetResponse::PollNetworksOk(ok)) => ok.version != since,
                _ => true,
            })
            .await
        }
        Ok(req) => execute(req, peer, shared, auth).await,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed request");
            shared.metrics.rejected("malformed");
            Response::error("malformed request")
        }
    }
}

async fn handle_binary(
    payload: &[u8],
    peer: SocketAddr,
    shared: &Shared,
    auth: &mut ConnAuth,
    gone: &Gone,
) -> Vec<u8> {
    let msg = match BinaryMessage::parse_frame_payload(payload) {
        Ok(m) => m,
        Err(_) => {
            shared.metrics.rejected("malformed");
            return binary_frame(&BinaryMessage::Error("request failed".into()));
        }
    };
    let reply = match msg {
        BinaryMessage::Json(j) => {
            BinaryMessage::Json(answer_json(&j, peer, shared, auth, gone).await)
        }
        BinaryMessage::Heartbeat { node_id, signature } => {
            let req = Request::Heartbeat(NodeSigned {
                node_id,
                signature: Some(wire::b64_encode(&signature)),
            });
            match execute(req, peer, shared, auth).await {
                Response::HeartbeatOk(ok) => BinaryMessage::HeartbeatReply {
                    unix_time: ok.time,
                    key_expiry_warning: ok.key_expiry_warning,
                },
                other => error_of(other),
            }
        }
        BinaryMessage::Lookup { node_id } => {
            match execute(Request::Lookup(Lookup { node_id }), peer, shared, auth).await {
                Response::LookupOk(l) => BinaryMessage::LookupReply(BinaryLookupReply {
                    node_id: l.node_id,
                    public: l.public,
                    task_exec: l.task_exec,
                    polo_score: l.polo_score as i32,
                    networks: l.networks,
                    public_key: wire::decode_public_key(&l.public_key)
                        .map(|k| k.to_vec())
                        .unwrap_or_default(),
                    hostname: l.hostname.unwrap_or_default(),
                    tags: l.tags.unwrap_or_default(),
                    real_addr: l.real_addr.unwrap_or_default(),
                    external_id: l.external_id.unwrap_or_default(),
                }),
                other => error_of(other),
            }
        }
        BinaryMessage::Resolve {
            node_id,
            requester_id,
            signature,
        } => {
            let req = Request::Resolve(Resolve {
                node_id,
                requester_id,
                signature: Some(wire::b64_encode(&signature)),
            });
            match execute(req, peer, shared, auth).await {
                Response::ResolveOk(r) => BinaryMessage::ResolveReply {
                    node_id: r.node_id,
                    real_addr: r.real_addr,
                    lan_addrs: r.lan_addrs.unwrap_or_default(),
                    key_age_days: r
                        .key_age_days
                        .map(|d| d.min(u64::from(u32::MAX - 1)) as u32),
                },
                other => error_of(other),
            }
        }
        _ => BinaryMessage::Error("request failed".into()),
    };
    binary_frame(&reply)
}

fn error_of(r: Response) -> BinaryMessage {
    match r {
        Response::Error(e) => BinaryMessage::Error(e.error),
        _ => BinaryMessage::Error("request failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_rule() {
        let s = Duration::from_secs;
        assert_eq!(rate_action(10_000, s(4)), RateAction::None);
        assert_eq!(
            rate_action(600, s(5) + Duration::from_millis(1)),
            RateAction::Slow
        );
        assert_eq!(rate_action(3_100, s(6)), RateAction::Close);
        assert_eq!(rate_action(500, s(6)), RateAction::None);
    }

    #[test]
    fn buffer_budget_is_shared_and_released() {
        let budget = Arc::new(Semaphore::new(100));
        let (mut a, mut b) = (None, None);
        reserve(&budget, &mut a, FREE_BUFFER).unwrap();
        assert!(a.is_none());
        reserve(&budget, &mut a, FREE_BUFFER + 60 * 1024).unwrap();
        assert_eq!(budget.available_permits(), 40);
        assert!(matches!(
            reserve(&budget, &mut b, FREE_BUFFER + 41 * 1024),
            Err(ConnEnd::Budget)
        ));
        reserve(&budget, &mut a, FREE_BUFFER + 10 * 1024).unwrap();
        assert_eq!(budget.available_permits(), 90);
        reserve(&budget, &mut b, FREE_BUFFER + 41 * 1024).unwrap();
        reserve(&budget, &mut a, 0).unwrap();
        assert_eq!(budget.available_permits(), 59);
    }
}
