//! `pilot-gateway`: remote agents at local IPv4 addresses. A TUN device
//! routes a subnet (10.4.0.0/16 by default) into a userspace TCP stack
//! (smoltcp); each TCP connection to a mapped address becomes an overlay
//! stream to `addr:port`, opened through the local daemon's IPC socket, so
//! unmodified curl, browsers and HTTP libraries reach agents behind NATs.
//!
//! The gateway holds no overlay state of its own: every dial and ping goes
//! through the daemon's IPC socket (a new Unix connection each time), so a
//! daemon that restarts is simply used again by the next connection, and
//! the gateway's table survives it.
//!
//! Pieces: [`table`] (which IP is which node, the state file),
//! [`packet`] (the few raw packets handled outside smoltcp: RSTs, ICMP
//! echo), [`netstack`] (the TUN + smoltcp loop), [`control`] (the owner-only
//! control socket behind `map` / `unmap` / `list` / `stop`), [`dns`]
//! (`<hostname>.pilot`), and [`tun`] (device set-up and privilege errors).

pub mod control;
pub mod dns;
pub mod netstack;
pub mod packet;
pub mod table;
pub mod tun;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{UdpSocket, UnixStream};
use tokio::sync::watch;

use self::control::{ControlRequest, StatusData};
use self::table::{Subnet, Table, TableError};
use crate::ipc::proto::FindData;
use crate::ipc::{read_message, write_message, Client, ErrorCode, Request, Response};
use crate::wire::address::{parse_target, Target};

/// Default subnet routed to the gateway.
pub const DEFAULT_SUBNET: &str = "10.4.0.0/16";
/// Default TUN device name.
pub const DEFAULT_DEVICE: &str = "pilot0";
/// TUN MTU: the hop never leaves the host, so it is independent of the
/// tunnel's; the prototype measured 2.7 GB/s at 65,000 vs 0.45 at 1,500.
pub const DEFAULT_MTU: u16 = 65_000;

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Not root and no CAP_NET_ADMIN.
    #[error("pilot-gateway needs root or CAP_NET_ADMIN to create a TUN device: run it with sudo, or grant the capability once with `sudo setcap cap_net_admin+ep {0}`")]
    Privilege(String),
    /// The TUN device could not be set up.
    #[error("TUN device {device}: {message}")]
    Tun {
        /// Device name.
        device: String,
        /// What failed.
        message: String,
    },
    /// The control socket could not be bound.
    #[error("control socket {path}: {source}")]
    Control {
        /// Its path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// DNS could not be served.
    #[error("DNS on {addr}: {source}")]
    Dns {
        /// The address tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A target could not be mapped.
    #[error("{message}")]
    Map {
        /// Error class.
        code: ErrorCode,
        /// One line.
        message: String,
    },
    /// The data path failed.
    #[error("data path: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// The error class reported to the user.
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::Privilege(_) => ErrorCode::StartFailed,
            GatewayError::Map { code, .. } => *code,
            _ => ErrorCode::StartFailed,
        }
    }
}

/// How a gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The routed subnet.
    pub subnet: Subnet,
    /// Allowed destination ports (empty: every port).
    pub ports: Vec<u16>,
    /// TUN device name.
    pub device: String,
    /// TUN MTU.
    pub mtu: u16,
    /// Serve DNS for `.pilot` on the gateway address.
    pub dns: bool,
    /// DNS port (53; tests may use another).
    pub dns_port: u16,
    /// The daemon's IPC socket.
    pub daemon_socket: PathBuf,
    /// This gateway's control socket.
    pub control_socket: PathBuf,
    /// The state file (the table).
    pub state_file: PathBuf,
    /// The pid file.
    pub pid_file: PathBuf,
    /// Targets to map at start.
    pub initial: Vec<String>,
    /// How long an overlay dial may take before the client gets a RST.
    pub dial_timeout: Duration,
}

/// State shared by the data path, the control socket and DNS.
pub struct GwShared {
    /// Settings.
    pub cfg: GatewayConfig,
    /// The live table.
    pub table: Mutex<Table>,
    /// Open TCP connections (for `list`).
    pub connections: AtomicUsize,
}

impl GwShared {
    fn save(&self) {
        if let Ok(t) = self.table.lock() {
            if let Err(e) = t.save(&self.cfg.state_file) {
                tracing::warn!("cannot save {}: {e}", self.cfg.state_file.display());
            }
        }
    }

    fn status(&self) -> StatusData {
        StatusData {
            pid: std::process::id(),
            device: self.cfg.device.clone(),
            subnet: self.cfg.subnet.to_string(),
            gateway_ip: self.cfg.subnet.gateway_ip(),
            ports: self.cfg.ports.clone(),
            dns: self.cfg.dns,
            daemon_socket: self.cfg.daemon_socket.display().to_string(),
            connections: self.connections.load(Ordering::Relaxed),
            mappings: self.table.lock().map(|t| t.list()).unwrap_or_default(),
        }
    }

    /// Maps a target (resolving hostnames through the daemon).
    async fn map(
        &self,
        target: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<table::Mapping, GatewayError> {
        let (addr, host) = resolve(&self.cfg.daemon_socket, target).await?;
        let r = self
            .table
            .lock()
            .map_err(|_| map_err(ErrorCode::Internal, "table lock poisoned".into()))?
            .map(&addr, host, ip);
        match r {
            Ok((m, changed)) => {
                if changed {
                    self.save();
                }
                Ok(m)
            }
            Err(e) => Err(table_err(e)),
        }
    }
}

fn map_err(code: ErrorCode, message: String) -> GatewayError {
    GatewayError::Map { code, message }
}

fn table_err(e: TableError) -> GatewayError {
    let code = match e {
        TableError::NotMapped(_) => ErrorCode::NotFound,
        _ => ErrorCode::InvalidArgument,
    };
    map_err(code, e.to_string())
}

/// Turns a target into (overlay address text, hostname): addresses and node
/// ids locally, hostnames through the daemon's `find`.
pub async fn resolve(
    daemon: &std::path::Path,
    target: &str,
) -> Result<(String, Option<String>), GatewayError> {
    match parse_target(target) {
        Ok(Target::Addr(a)) => Ok((a.to_string(), None)),
        Ok(Target::Hostname(h)) => {
            let mut c = Client::connect(daemon)
                .await
                .map_err(|e| map_err(e.code(), e.to_string()))?;
            let v = c
                .request(
                    &Request::Find {
                        hostname: h.clone(),
                    },
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| map_err(e.code(), e.to_string()))?;
            let f: FindData = serde_json::from_value(v)
                .map_err(|e| map_err(ErrorCode::Internal, format!("unexpected find reply: {e}")))?;
            Ok((f.address, Some(h)))
        }
        Err(e) => Err(map_err(ErrorCode::InvalidAddress, e.to_string())),
    }
}

/// Runs a gateway in this process until SIGINT, SIGTERM or `stop`.
pub async fn run(cfg: GatewayConfig) -> Result<(), GatewayError> {
    // The device first: without privileges nothing else matters.
    tun::remove_stale(&cfg.device)?;
    let dev = tun::open(&cfg)?;
    let mut table = Table::load(&cfg.state_file, cfg.subnet);
    for t in &cfg.initial {
        let (addr, host) = resolve(&cfg.daemon_socket, t).await?;
        table.map(&addr, host, None).map_err(table_err)?;
    }
    let control =
        control::bind(&cfg.control_socket)
            .await
            .map_err(|source| GatewayError::Control {
                path: cfg.control_socket.display().to_string(),
                source,
            })?;
    let dns = if cfg.dns {
        let addr = SocketAddr::from((cfg.subnet.gateway_ip(), cfg.dns_port));
        Some(
            UdpSocket::bind(addr)
                .await
                .map_err(|source| GatewayError::Dns {
                    addr: addr.to_string(),
                    source,
                })?,
        )
    } else {
        None
    };
    let shared = Arc::new(GwShared {
        cfg: cfg.clone(),
        table: Mutex::new(table),
        connections: AtomicUsize::new(0),
    });
    shared.save();
    let _ = std::fs::write(&cfg.pid_file, format!("{}\n", std::process::id()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // Signals in their own task: a busy data path must not starve them.
    tokio::spawn(signals(stop_tx.clone()));
    tokio::spawn(serve_control(control, shared.clone(), stop_tx.clone()));
    if let Some(sock) = dns {
        tokio::spawn(serve_dns(sock, shared.clone()));
    }
    tracing::info!(
        "gateway on {} ({}), daemon {}",
        cfg.device,
        cfg.subnet,
        cfg.daemon_socket.display()
    );
    let r = netstack::run(dev, shared.clone(), stop_rx).await;
    let _ = std::fs::remove_file(&cfg.control_socket);
    let _ = std::fs::remove_file(&cfg.pid_file);
    r.map_err(GatewayError::Io)
}

async fn signals(stop: Arc<watch::Sender<bool>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping on signal");
    let _ = stop.send(true);
}

async fn serve_control(
    l: tokio::net::UnixListener,
    shared: Arc<GwShared>,
    stop: Arc<watch::Sender<bool>>,
) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(control_client(s, shared.clone(), stop.clone()));
    }
}

async fn control_client(mut s: UnixStream, shared: Arc<GwShared>, stop: Arc<watch::Sender<bool>>) {
    while let Ok(Some(req)) = read_message::<_, ControlRequest>(&mut s).await {
        let mut stopping = false;
        let resp = match req {
            ControlRequest::List => Response::ok(&shared.status()),
            ControlRequest::Map { target, ip } => match shared.map(&target, ip).await {
                Ok(m) => Response::ok(&m),
                Err(e) => Response::error(e.code(), e.to_string()),
            },
            ControlRequest::Unmap { key } => {
                // Hostnames and node ids name the same mapping as addresses.
                let key = match parse_target(&key) {
                    Ok(Target::Addr(a)) if key.parse::<Ipv4Addr>().is_err() => a.to_string(),
                    _ => key,
                };
                let r = shared.table.lock().map(|mut t| t.unmap(&key));
                match r {
                    Ok(Ok(m)) => {
                        shared.save();
                        Response::ok(&m)
                    }
                    Ok(Err(e)) => {
                        let e = table_err(e);
                        Response::error(e.code(), e.to_string())
                    }
                    Err(_) => Response::error(ErrorCode::Internal, "table lock poisoned"),
                }
            }
            ControlRequest::Stop => {
                stopping = true;
                Response::ok(&serde_json::json!({"stopping": true, "pid": std::process::id()}))
            }
        };
        if write_message(&mut s, &resp).await.is_err() {
            return;
        }
        if stopping {
            let _ = stop.send(true);
            return;
        }
    }
}

async fn serve_dns(sock: UdpSocket, shared: Arc<GwShared>) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let msg = buf[..n].to_vec();
        let Some(q) = dns::question(&msg) else {
            continue;
        };
        let outcome = match q {
            dns::Question::Foreign => dns::Outcome::Refused,
            dns::Question::Pilot { hostname, want_a } => match shared.map(&hostname, None).await {
                Ok(m) if want_a => dns::Outcome::Address(m.ip),
                Ok(_) => dns::Outcome::NoData,
                Err(e) if e.code() == ErrorCode::NotFound => dns::Outcome::NxDomain,
                Err(e) if e.code() == ErrorCode::InvalidAddress => dns::Outcome::NxDomain,
                Err(e) => {
                    tracing::info!("dns {hostname}.pilot: {e}");
                    dns::Outcome::ServFail
                }
            },
        };
        if let Some(r) = dns::reply(&msg, outcome) {
            let _ = sock.send_to(&r, from).await;
        }
    }
}
