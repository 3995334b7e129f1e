//! In-process stream endpoints for the daemon's built-in services (trust
//! handshake 444, data exchange 1001, event stream 1002).
//!
//! A built-in service is just another application of the event loop: it
//! listens and dials through the same [`Cmd`]s the IPC server uses, and
//! holds the same [`AppEnd`] queues, so the stream engine, the trust gate
//! and the admission limits apply to it unchanged. [`NodeStream`] is the
//! async byte pipe; [`ServiceListener`] yields accepted streams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::engine::Cmd;
use super::stream_table::{app_pair, AppEnd, APP_CHUNK};
use crate::ipc::proto::ListenEvent;
use crate::ipc::{ErrorCode, Response};
use crate::wire::address::{Addr, SockAddr};

/// Settings of the built-in services (daemon flags).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `--trust-auto-approve`: trust every requester (spec §9.5).
    pub trust_auto_approve: bool,
    /// Run the data-exchange service on port 1001.
    pub dataexchange: bool,
    /// Run the event broker on port 1002.
    pub eventstream: bool,
    /// Disk budget of `inbox/` + `received/` in bytes.
    pub quota_bytes: u64,
}

/// Default disk budget for stored messages and files (1 GiB: room for the
/// largest files people send between agents, far from filling a disk).
pub const DEFAULT_QUOTA: u64 = 1 << 30;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            trust_auto_approve: false,
            dataexchange: true,
            eventstream: true,
            quota_bytes: DEFAULT_QUOTA,
        }
    }
}

/// Starts the trust machinery and the enabled services.
pub async fn start_services(
    shared: std::sync::Arc<super::Shared>,
    cmds: mpsc::Sender<Cmd>,
    state_dir: std::path::PathBuf,
) {
    let cfg = shared.config.services.clone();
    let ctx = super::trust::Ctx {
        shared: shared.clone(),
        cmds: cmds.clone(),
    };
    super::trust::start(ctx).await;
    if cfg.dataexchange {
        super::dataexchange::start(&cmds, state_dir, cfg.quota_bytes).await;
    }
    if cfg.eventstream {
        super::events::start(&cmds).await;
    }
}

/// Accept queue of a built-in service (spec §7.2 step 9: 64).
const ACCEPT_QUEUE: usize = 64;

/// One stream owned by a built-in service.
pub struct NodeStream {
    id: u64,
    end: AppEnd,
    cmds: mpsc::Sender<Cmd>,
    /// The peer's `address:port`.
    pub remote: SockAddr,
    closed: bool,
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

fn stream_of(resp: &Response) -> Option<(u64, SockAddr)> {
    let Response::Ok { data } = resp else {
        return None;
    };
    let id = data.get("conn_id")?.as_u64()?;
    let remote = data.get("remote")?.as_str()?.parse().ok()?;
    Some((id, remote))
}

impl NodeStream {
    /// Opens a stream to `addr:port`; the error is the dial's IPC response.
    pub async fn dial(
        cmds: &mpsc::Sender<Cmd>,
        addr: Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<NodeStream, Response> {
        let (link, end) = app_pair();
        let resp = ask(cmds, |reply| Cmd::Dial {
            addr,
            port,
            timeout,
            link,
            reply,
        })
        .await;
        match stream_of(&resp) {
            Some((id, remote)) => Ok(NodeStream {
                id,
                end,
                cmds: cmds.clone(),
                remote,
                closed: false,
            }),
            None => Err(resp),
        }
    }

    /// The next chunk from the peer; `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let chunk = self.end.rx.recv().await;
        if self.end.blocked.swap(false, Ordering::AcqRel) {
            let _ = self.cmds.send(Cmd::Drained(self.id)).await;
        }
        chunk
    }

    /// Reads until `buf` holds at least `n` bytes; false at end of stream.
    pub async fn fill(&mut self, buf: &mut Vec<u8>, n: usize) -> bool {
        while buf.len() < n {
            match self.recv().await {
                Some(c) => buf.extend_from_slice(&c),
                None => return false,
            }
        }
        true
    }

    /// Queues `data` for the peer (waits for send credits); false if the
    /// stream is gone.
    pub async fn write_all(&mut self, data: &[u8]) -> bool {
        for piece in data.chunks(APP_CHUNK) {
            match self.end.credits.acquire_many(piece.len() as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return false,
            }
            if self
                .cmds
                .send(Cmd::AppData(self.id, piece.to_vec()))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Ends our sending side (graceful close once the data is out).
    pub async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.cmds.send(Cmd::AppEof(self.id)).await;
        }
    }

    /// Resets the stream.
    pub async fn reset(&mut self) {
        self.closed = true;
        let id = self.id;
        let _ = ask(&self.cmds, |reply| Cmd::Disconnect {
            conn_id: id,
            force: true,
            reply,
        })
        .await;
    }
}

impl Drop for NodeStream {
    fn drop(&mut self) {
        let _ = self.cmds.try_send(Cmd::AppGone(self.id));
    }
}

/// A built-in service's listening port.
pub struct ServiceListener {
    rx: mpsc::Receiver<ListenEvent>,
    cmds: mpsc::Sender<Cmd>,
}

impl ServiceListener {
    /// Listens on `port`.
    pub async fn bind(cmds: &mpsc::Sender<Cmd>, port: u16) -> Result<ServiceListener, Response> {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let resp = ask(cmds, |reply| Cmd::Listen {
            port,
            events: tx,
            reply,
        })
        .await;
        match resp {
            Response::Ok { .. } => Ok(ServiceListener {
                rx,
                cmds: cmds.clone(),
            }),
            e => Err(e),
        }
    }

    /// The next accepted stream; `None` when the daemon stops.
    pub async fn accept(&mut self) -> Option<NodeStream> {
        loop {
            let ListenEvent::Accept { conn_id, .. } = self.rx.recv().await?;
            let (link, end) = app_pair();
            let resp = ask(&self.cmds, |reply| Cmd::Attach {
                conn_id,
                link,
                reply,
            })
            .await;
            if let Some((id, remote)) = stream_of(&resp) {
                return Some(NodeStream {
                    id,
                    end,
                    cmds: self.cmds.clone(),
                    remote,
                    closed: false,
                });
            }
        }
    }
}
