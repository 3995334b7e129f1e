//! The daemon side of the IPC socket: binding it safely (mode 0600, stale
//! socket files from a crashed daemon removed, a live daemon never
//! displaced) and serving one task per local client.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::appsock::{sock_pair, SockEnd};
use super::engine::{sleep_until_opt, Cmd};
use super::registry::RegError;
use super::stream_table::AppLink;
use super::{NodeError, Shared};
use crate::ipc::proto::{FindData, HostnameData};
use crate::ipc::{read_message, write_message, ErrorCode, Request, Response};
use crate::wire::address::{parse_target, Addr, Target};

/// Binds the socket at `path`, owner-only.
pub async fn bind(path: &Path) -> Result<UnixListener, NodeError> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::MetadataExt;
        if !crate::ipc::uid_trusted(m.uid(), crate::ipc::my_uid()) {
            return Err(NodeError::Bind {
                what: "IPC socket",
                addr: path.display().to_string(),
                source: std::io::Error::other(format!(
                    "the file belongs to uid {}; another user may be impersonating the daemon",
                    m.uid()
                )),
            });
        }
        if crate::ipc::socket_in_use(path).await {
            return Err(NodeError::AlreadyRunning(path.to_path_buf()));
        }
        // Nobody answers: a crashed daemon's leftover (or one that has
        // just finished exiting).
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = crate::config::create_private_dir(dir);
    }
    let bind_err = |source| NodeError::Bind {
        what: "IPC socket",
        addr: path.display().to_string(),
        source,
    };
    // Create the socket with no group/other permissions from the start.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Removes the socket file (at shutdown, or after a failed start).
pub fn unlink(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Accepts clients until the daemon stops.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let stop_tx = Arc::new(stop_tx);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    // Only our own user (or root) may drive the node, even
                    // if the socket's mode was loosened (issue 10 item 7).
                    let uid = stream.peer_cred().map(|c| c.uid()).ok();
                    if !uid.is_some_and(|u| crate::ipc::uid_trusted(u, crate::ipc::my_uid())) {
                        tracing::warn!("ipc: refused a client running as uid {uid:?}");
                        continue;
                    }
                    tokio::spawn(client(stream, shared.clone(), cmds.clone(), stop_tx.clone()));
                }
                Err(e) => {
                    tracing::warn!("ipc accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn client(
    mut stream: UnixStream,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    stop: Arc<watch::Sender<bool>>,
) {
    loop {
        let req: Request = match read_message(&mut stream).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let resp = Response::error(ErrorCode::InvalidArgument, e.to_string());
                let _ = write_message(&mut stream, &resp).await;
                return;
            }
        };
        // Requests that take over the connection.
        match req {
            Request::Dial {
                target,
                port,
                timeout_ms,
            } => {
                let addr = match resolve_target(&shared, &target).await {
                    Ok(a) => a,
                    Err(r) => {
                        let _ = write_message(&mut stream, &r).await;
                        continue;
                    }
                };
                let timeout = Duration::from_millis(timeout_ms.clamp(100, 600_000));
                let (link, end) = sock_pair(stream);
                let resp = ask(&cmds, |reply| Cmd::Dial {
                    addr,
                    port,
                    timeout,
                    link: AppLink::Sock(link),
                    reply,
                })
                .await;
                let resp = super::trust::explain_refusal(&shared, addr.node, resp).await;
                return take_stream(end, resp, cmds).await;
            }
            Request::Attach { conn_id } => {
                let (link, end) = sock_pair(stream);
                let resp = ask(&cmds, |reply| Cmd::Attach {
                    conn_id,
                    link: AppLink::Sock(link),
                    reply,
                })
                .await;
                return take_stream(end, resp, cmds).await;
            }
            Request::Ping {
                target,
                size,
                timeout_ms,
                count,
                interval_us,
            } if count > 1 => {
                let series = PingSeries {
                    target,
                    size,
                    timeout_ms,
                    count,
                    interval: Duration::from_micros(interval_us.min(MAX_PING_INTERVAL_US)),
                };
                if ping_series(&mut stream, &shared, &cmds, series).await {
                    continue;
                }
                return;
            }
            Request::Listen { port } => return listen(stream, port, cmds).await,
            Request::RecvDatagrams { port } => return recv_datagrams(stream, port, cmds).await,
            _ => {}
        }
        let shutdown = req == Request::Shutdown;
        let resp = handle(req, &shared, &cmds).await;
        if write_message(&mut stream, &resp).await.is_err() {
            return;
        }
        if shutdown {
            let _ = stop.send(true);
            return;
        }
    }
}

/// Writes the reply; on success the connection becomes the stream's bytes.
async fn take_stream(end: SockEnd, resp: Response, cmds: mpsc::Sender<Cmd>) {
    let id = match &resp {
        Response::Ok { data } => data.get("conn_id").and_then(|v| v.as_u64()),
        Response::Error { .. } => None,
    };
    // The loop stays off the socket until this reply is out (a link starts
    // neither readable nor writable), so the stream's bytes follow it.
    let sent = match crate::ipc::encode_message(&resp) {
        Ok(bytes) => super::appsock::write_all(&end.sock, &bytes).await.is_ok(),
        Err(_) => false,
    };
    if !sent {
        if let Some(id) = id {
            let _ = cmds.send(Cmd::AppGone(id)).await;
        }
        return;
    }
    if let Some(id) = id {
        watch_app(end, id, cmds).await;
    }
}

/// Tells the loop when stream `id`'s socket is ready, first at once and
/// then each time the loop asks after a `WouldBlock` ([`super::appsock`]);
/// finishes the stream for the application once the loop is done with it.
async fn watch_app(end: SockEnd, id: u64, cmds: mpsc::Sender<Cmd>) {
    let SockEnd { sock, wake, done } = end;
    let reader = async {
        while sock.readable().await.is_ok() && cmds.send(Cmd::AppReadable(id)).await.is_ok() {
            wake.read.notified().await;
        }
    };
    let writer = async {
        while sock.writable().await.is_ok() && cmds.send(Cmd::AppWritable(id)).await.is_ok() {
            wake.write.notified().await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        left = done => if let Ok(left) = left {
            left.finish(&sock, id).await;
        },
    }
}

/// Serves a listening client: one accept event per stream until it leaves.
async fn listen(mut stream: UnixStream, port: u16, cmds: mpsc::Sender<Cmd>) {
    // Spec §7.2 step 9: an accept queue of 64.
    let (tx, mut rx) = mpsc::channel(64);
    let resp = ask(&cmds, |reply| Cmd::Listen {
        port,
        events: tx,
        reply,
    })
    .await;
    let ok = matches!(resp, Response::Ok { .. });
    if write_message(&mut stream, &resp).await.is_err() || !ok {
        if ok {
            let _ = cmds.send(Cmd::Unlisten(port)).await;
        }
        return;
    }
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => if write_message(&mut stream, &ev).await.is_err() { break },
                None => break,
            },
            r = stream.read(&mut probe) => if !matches!(r, Ok(n) if n > 0) { break },
        }
    }
    let _ = cmds.send(Cmd::Unlisten(port)).await;
}

/// Serves a datagram receiver until it leaves.
async fn recv_datagrams(mut stream: UnixStream, port: u16, cmds: mpsc::Sender<Cmd>) {
    let (tx, rx) = oneshot::channel();
    if cmds
        .send(Cmd::RecvDatagrams { port, reply: tx })
        .await
        .is_err()
    {
        return;
    }
    let Ok((resp, queue)) = rx.await else { return };
    if write_message(&mut stream, &resp).await.is_err() {
        return;
    }
    let Some(mut queue) = queue else { return };
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            d = queue.recv() => match d {
                Some(d) => if write_message(&mut stream, &d).await.is_err() { return },
                None => return,
            },
            r = stream.read(&mut probe) => if !matches!(r, Ok(n) if n > 0) { return },
        }
    }
}

fn reg_error(e: RegError) -> Response {
    Response::error(e.code(), e.to_string())
}

/// Turns a user's target into an address, resolving hostnames.
pub(super) async fn resolve_target(shared: &Shared, target: &str) -> Result<Addr, Response> {
    match parse_target(target) {
        Ok(Target::Addr(a)) => Ok(a),
        Ok(Target::Hostname(h)) => match shared.registry.resolve_hostname(&h).await {
            Ok(node) => Ok(Addr::backbone(node)),
            // Private nodes are invisible to peers they do not trust
            // (spec §6.4.6): say so instead of a bare not-found.
            Err(e) if e.code() == ErrorCode::NotFound => Err(Response::error(
                ErrorCode::NotFound,
                format!(
                    "hostname {h:?} not found, or private: ask its owner for its address \
                     (then `pilotctl handshake <address>`)"
                ),
            )),
            Err(e) => Err(reg_error(e)),
        },
        Err(e) => Err(Response::error(ErrorCode::InvalidAddress, e.to_string())),
    }
}

async fn ask(
    cmds: &mpsc::Sender<Cmd>,
    make: impl FnOnce(oneshot::Sender<Response>) -> Cmd,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if cmds.send(make(tx)).await.is_err() {
        return Response::error(ErrorCode::Internal, "the daemon is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| Response::error(ErrorCode::Internal, "the daemon dropped the request"))
}

/// Longest pause between the pings of a series: an hour (a longer one
/// is surely a typo, and the connection stays open meanwhile).
const MAX_PING_INTERVAL_US: u64 = 3_600_000_000;

/// One control ping through the engine.
async fn ping_once(
    cmds: &mpsc::Sender<Cmd>,
    addr: crate::wire::address::Addr,
    size: usize,
    timeout_ms: u64,
) -> Response {
    let timeout = Duration::from_millis(timeout_ms.clamp(1, 60_000));
    ask(cmds, |reply| Cmd::Ping {
        addr,
        size: size.min(1024),
        timeout,
        reply,
    })
    .await
}

/// A [`Request::Ping`] with a count.
struct PingSeries {
    target: String,
    size: usize,
    timeout_ms: u64,
    count: u32,
    interval: Duration,
}

/// Replies of a series faster than this are written in batches (below).
const LIVE_PING_INTERVAL: Duration = Duration::from_millis(100);
/// How long a reply of a fast series may wait for the batch: 100 ms, a
/// tenth of `ping`'s default interval, too short for a reader to notice.
const PING_BATCH_AGE: Duration = Duration::from_millis(100);
/// Most replies held for one batch (back-to-back pings on loopback come
/// every ~10 us): bounds the daemon's memory per series to ~100 KB.
const PING_BATCH_MAX: usize = 1024;

/// Runs a ping series: one response per ping, paced here (see
/// [`Request::Ping`] for why the daemon paces it). Returns whether the
/// connection may carry further requests: false once the client has
/// closed it or written during the series, which ends the series.
///
/// With an interval under [`LIVE_PING_INTERVAL`] the replies go out in
/// batches at most [`PING_BATCH_AGE`] old: each write wakes the client,
/// and a client woken after every ping lands on the CPU the next ping
/// leaves from and disturbs it (measured: control ping p50 48-54 us with
/// a write per ping, 16-23 us batched; BENCHMARKS.md, "Latency").
async fn ping_series(
    stream: &mut UnixStream,
    shared: &Arc<Shared>,
    cmds: &mpsc::Sender<Cmd>,
    series: PingSeries,
) -> bool {
    let addr = match resolve_target(shared, &series.target).await {
        Ok(a) => a,
        Err(r) => return write_message(stream, &r).await.is_ok(),
    };
    let live = series.interval >= LIVE_PING_INTERVAL;
    let mut held: Vec<Response> = Vec::new();
    let mut due: Option<Instant> = None;
    for i in 0..series.count {
        if i > 0 && !series.interval.is_zero() && !pause(stream, series.interval).await {
            return false;
        }
        let ping = ping_once(cmds, addr, series.size, series.timeout_ms);
        tokio::pin!(ping);
        let resp = loop {
            tokio::select! {
                r = &mut ping => break r,
                // A ping may wait seconds for its timeout: the batch
                // before it goes out meanwhile.
                _ = sleep_until_opt(due) => {
                    due = None;
                    if !write_all_messages(stream, &mut held).await {
                        return false;
                    }
                }
            }
        };
        let go_on = match &resp {
            Response::Ok { .. } => true,
            Response::Error { code, .. } => *code == ErrorCode::Timeout,
        };
        held.push(resp);
        due.get_or_insert_with(|| Instant::now() + PING_BATCH_AGE);
        let last = !go_on || i + 1 == series.count;
        if live || last || held.len() >= PING_BATCH_MAX || due.is_some_and(|d| d <= Instant::now())
        {
            due = None;
            if !write_all_messages(stream, &mut held).await {
                return false;
            }
        }
        if !go_on {
            break;
        }
    }
    true
}

/// Writes and empties `held`; false when the client has gone.
async fn write_all_messages(stream: &mut UnixStream, held: &mut Vec<Response>) -> bool {
    for r in held.drain(..) {
        if write_message(stream, &r).await.is_err() {
            return false;
        }
    }
    true
}

/// Sleeps `d`; false (early) when the client closes the connection or
/// writes to it meanwhile (read as `listen` watches its client).
async fn pause(stream: &mut UnixStream, d: Duration) -> bool {
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stream.read(&mut probe) => false,
    }
}

async fn handle(req: Request, shared: &Arc<Shared>, cmds: &mpsc::Sender<Cmd>) -> Response {
    match req {
        Request::Info => ask(cmds, Cmd::Info).await,
        Request::Peers => ask(cmds, Cmd::Peers).await,
        Request::Shutdown => Response::ok(&serde_json::json!({"stopping": true})),
        Request::Lookup { target } => {
            let addr = match resolve_target(shared, &target).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match shared.registry.lookup(addr.node).await {
                Ok(d) => Response::ok(&d),
                Err(e) => reg_error(e),
            }
        }
        Request::Find { hostname } => match shared.registry.resolve_hostname(&hostname).await {
            Ok(node) => Response::ok(&FindData {
                hostname,
                node_id: node,
                address: Addr::backbone(node).to_string(),
            }),
            Err(e) => reg_error(e),
        },
        Request::SetHostname { hostname } => match shared.registry.set_hostname(&hostname).await {
            Ok(()) => {
                let h = Some(hostname).filter(|h| !h.is_empty());
                shared.set_hostname(h.clone());
                Response::ok(&HostnameData {
                    address: Addr::backbone(shared.registry.node_id()).to_string(),
                    hostname: h,
                })
            }
            Err(e) => reg_error(e),
        },
        Request::Connections => ask(cmds, Cmd::Connections).await,
        Request::Disconnect { conn_id, force } => {
            ask(cmds, |reply| Cmd::Disconnect {
                conn_id,
                force,
                reply,
            })
            .await
        }
        Request::SendDatagram { target, port, data } => {
            let addr = match resolve_target(shared, &target).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            if addr.is_broadcast() {
                // N:NNNN.FFFF.FFFF: one unicast per member (spec §1.5, §8.1).
                let op = crate::ipc::proto::NetworkRequest::Broadcast {
                    network: addr.network.to_string(),
                    port,
                    data,
                };
                return super::networks::handle_ipc(shared.clone(), cmds.clone(), op).await;
            }
            ask(cmds, |reply| Cmd::SendDatagram {
                addr,
                port,
                data: data.into_bytes(),
                reply,
            })
            .await
        }
        Request::Network(op) => super::networks::handle_ipc(shared.clone(), cmds.clone(), op).await,
        Request::Trust(op) => {
            let ctx = super::trust::Ctx {
                shared: shared.clone(),
                cmds: cmds.clone(),
            };
            super::trust::handle_ipc(ctx, op).await
        }
        Request::StreamEnded { conn_id } => Response::ok(
            &serde_json::json!({"conn_id": conn_id, "reset": super::appsock::was_reset(conn_id)}),
        ),
        Request::Mailbox {
            which,
            clear,
            from,
            limit,
        } => super::dataexchange::mailbox(shared, &which, clear, from.as_deref(), limit),
        Request::Expose { port, to } => super::expose::expose(port, to, cmds.clone()).await,
        Request::Unexpose { port } => super::expose::unexpose(port, cmds).await,
        Request::ExposeList => super::expose::list(),
        Request::Dial { .. }
        | Request::Attach { .. }
        | Request::Listen { .. }
        | Request::RecvDatagrams { .. } => Response::error(
            ErrorCode::Internal,
            "stream requests are handled before this point",
        ),
        Request::Ping {
            target,
            size,
            timeout_ms,
            ..
        } => {
            let addr = match resolve_target(shared, &target).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            ping_once(cmds, addr, size, timeout_ms).await
        }
    }
}
