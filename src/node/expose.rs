//! `pilotctl expose PORT --to HOST:PORT`: the daemon serves a virtual port
//! by forwarding each accepted stream to a plain local TCP service, so a
//! `python3 -m http.server` behind a NAT becomes reachable through the
//! overlay (and through a remote gateway).
//!
//! Kept by the daemon, not by the pilotctl process that asked: each exposed
//! port is a listener task inside the daemon talking to the engine directly
//! (the same `Listen` / `Attach` commands the IPC socket uses, without the
//! extra Unix hop). The table of exposed ports is process-wide: one daemon
//! runs per process.
//!
//! When the local service refuses the connection, the stream is reset
//! before a byte is carried, so the remote client fails fast instead of
//! waiting; peers the node does not trust never get here (the stream layer
//! refuses them before any listener sees them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::engine::Cmd;
use super::stream_table::{app_pair, AppEnd, APP_CHUNK};
use crate::ipc::proto::{ExposeData, ExposeListData, ListenEvent};
use crate::ipc::{ErrorCode, Response};

/// How long connecting to the local service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most exposed ports per daemon.
const MAX_EXPOSED: usize = 256;
/// Accepted streams queued per exposed port. The spec's accept queue is 64
/// (§7.2 step 9) for an application that accepts one by one; this queue is
/// drained by a task that only spawns a forwarder per stream, so a larger
/// bound just absorbs bursts (a gateway's 1,000 concurrent connections)
/// that would otherwise be refused while the task waits for a CPU.
const ACCEPT_QUEUE: usize = 1024;

struct Entry {
    to: String,
    streams: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

fn table() -> &'static Mutex<BTreeMap<u16, Entry>> {
    static T: OnceLock<Mutex<BTreeMap<u16, Entry>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
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

/// Checks `HOST:PORT` (the host may be a name; it is resolved per stream).
fn check_to(to: &str) -> Result<(), String> {
    let (host, port) = to
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid --to {to:?} (expected HOST:PORT, e.g. 127.0.0.1:8080)"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "invalid --to {to:?} (expected HOST:PORT, e.g. 127.0.0.1:8080)"
        ));
    }
    Ok(())
}

/// Starts exposing `port`.
pub async fn expose(port: u16, to: String, cmds: mpsc::Sender<Cmd>) -> Response {
    if let Err(e) = check_to(&to) {
        return Response::error(ErrorCode::InvalidArgument, e);
    }
    if port == 0 {
        return Response::error(ErrorCode::InvalidArgument, "port 0 cannot be exposed");
    }
    {
        let t = table().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = t.get(&port) {
            return Response::error(
                ErrorCode::AlreadyRunning,
                format!("port {port} is already exposed to {}", e.to),
            );
        }
        if t.len() >= MAX_EXPOSED {
            return Response::error(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_EXPOSED} ports can be exposed"),
            );
        }
    }
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let resp = ask(&cmds, |reply| Cmd::Listen {
        port,
        events: tx,
        reply,
    })
    .await;
    if let Response::Error { .. } = resp {
        return resp;
    }
    let streams = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(serve(rx, to.clone(), cmds, streams.clone()));
    let data = ExposeData {
        port,
        to: to.clone(),
        streams: 0,
    };
    table().lock().unwrap_or_else(|e| e.into_inner()).insert(
        port,
        Entry {
            to,
            streams,
            task: task.abort_handle(),
        },
    );
    tracing::info!("exposing port {port} to {}", data.to);
    Response::ok(&data)
}

/// Stops exposing `port`.
pub async fn unexpose(port: u16, cmds: &mpsc::Sender<Cmd>) -> Response {
    let e = table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&port);
    let Some(e) = e else {
        return Response::error(ErrorCode::NotFound, format!("port {port} is not exposed"));
    };
    e.task.abort();
    let _ = cmds.send(Cmd::Unlisten(port)).await;
    Response::ok(&ExposeData {
        port,
        to: e.to,
        streams: e.streams.load(Ordering::Relaxed),
    })
}

/// The exposed ports.
pub fn list() -> Response {
    let t = table().lock().unwrap_or_else(|e| e.into_inner());
    Response::ok(&ExposeListData {
        exposed: t
            .iter()
            .map(|(&port, e)| ExposeData {
                port,
                to: e.to.clone(),
                streams: e.streams.load(Ordering::Relaxed),
            })
            .collect(),
    })
}

async fn serve(
    mut rx: mpsc::Receiver<ListenEvent>,
    to: String,
    cmds: mpsc::Sender<Cmd>,
    streams: Arc<AtomicU64>,
) {
    while let Some(ListenEvent::Accept { conn_id, remote }) = rx.recv().await {
        streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(forward(conn_id, remote, to.clone(), cmds.clone()));
    }
}

async fn forward(conn_id: u64, remote: String, to: String, cmds: mpsc::Sender<Cmd>) {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!("expose: {to} refused the stream from {remote}: {e}");
            return reset(conn_id, &cmds).await;
        }
        Err(_) => {
            tracing::info!("expose: {to} did not answer for the stream from {remote}");
            return reset(conn_id, &cmds).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (link, end) = app_pair();
    let resp = ask(&cmds, |reply| Cmd::Attach {
        conn_id,
        link,
        reply,
    })
    .await;
    if let Response::Error { message, .. } = resp {
        tracing::info!("expose: stream {conn_id} from {remote} lost: {message}");
        return;
    }
    let (rd, wr) = tcp.into_split();
    pump(rd, wr, end, conn_id, cmds).await;
}

async fn reset(conn_id: u64, cmds: &mpsc::Sender<Cmd>) {
    let _ = ask(cmds, |reply| Cmd::Disconnect {
        conn_id,
        force: true,
        reply,
    })
    .await;
}

/// Moves bytes between the local service and the event loop (the same
/// protocol as the IPC server's pump: credits for bytes in, a `Drained`
/// nudge after a blocked queue empties).
async fn pump<R, W>(mut rd: R, mut wr: W, end: AppEnd, id: u64, cmds: mpsc::Sender<Cmd>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let AppEnd {
        mut rx,
        blocked,
        credits,
        ..
    } = end;
    let reader = async {
        let mut cap = 8 * 1024;
        loop {
            let mut chunk = Vec::with_capacity(cap);
            let n = match rd.read_buf(&mut chunk).await {
                Ok(0) => {
                    let _ = cmds.send(Cmd::AppEof(id)).await;
                    return;
                }
                Err(_) => {
                    // The local service reset: reset the stream.
                    reset(id, &cmds).await;
                    return;
                }
                Ok(n) => n,
            };
            match credits.acquire_many(n as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            if cmds.send(Cmd::AppData(id, chunk)).await.is_err() {
                return;
            }
            if n == cap && cap < APP_CHUNK {
                cap *= 2;
            }
        }
    };
    let writer = async {
        while let Some(chunk) = rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                let _ = cmds.send(Cmd::AppGone(id)).await;
                return;
            }
            if blocked.swap(false, Ordering::AcqRel) {
                let _ = cmds.send(Cmd::Drained(id)).await;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(check_to("127.0.0.1:8080").is_ok());
        assert!(check_to("localhost:80").is_ok());
        assert!(check_to("[::1]:80").is_ok());
        for bad in ["8080", ":80", "host:", "host:0", "host:99999"] {
            assert!(check_to(bad).is_err(), "{bad}");
        }
    }
}
