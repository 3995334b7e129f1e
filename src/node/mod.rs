//! The node daemon (`pilot-daemon`): identity, registration and heartbeats
//! with the rendezvous, the UDP tunnel socket, the peer table with
//! authenticated key exchange, control ping, and the local IPC socket.
//!
//! Shape: [`run`] wires four tokio tasks around shared, mostly immutable
//! state ([`Shared`]):
//! * the [`engine::Engine`] event loop, sole owner of the UDP socket's data
//!   path, the peer table and the tunnel sessions (no locks on the hot path);
//! * the heartbeat task, which keeps the registration alive and re-registers
//!   after the rendezvous comes back;
//! * the IPC server ([`ipc_server`]), one task per local client;
//! * the signal handler, which triggers an orderly shutdown (deregister,
//!   remove the socket).

pub mod appsock;
pub mod dataexchange;
pub mod engine;
pub mod events;
pub mod expose;
pub mod files;
pub mod ipc_server;
pub mod keys;
pub mod metrics;
pub mod networks;
pub mod path;
pub mod peer;
pub mod pmtu;
pub mod registry;
pub mod statelock;
pub mod stream_table;
pub mod streams;
pub mod svc;
pub mod trust;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::crypto::identity::Identity;
use registry::{RegError, RegistryHandle};

/// Default registry address (spec §0 uses `:9000`; we default to this host
/// so that a fresh install never talks to a network it was not pointed at).
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:9000";
/// Default beacon port (spec §0).
pub const DEFAULT_BEACON_PORT: u16 = 9001;
/// Registry heartbeat interval (spec §6.4.2: 60 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// Consecutive heartbeat failures before re-registering (spec §6.4.2: 3).
const HEARTBEAT_FAILURES: u32 = 3;
/// Deregistration budget at shutdown (spec §6.4.10: 3 s).
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Registry `host:port`.
    pub registry: String,
    /// Beacon `host:port` (`None`: no beacon).
    pub beacon: Option<String>,
    /// Local UDP address for tunnels.
    pub listen: String,
    /// Endpoint to register instead of the discovered one.
    pub endpoint: Option<String>,
    /// IPC socket path.
    pub socket: PathBuf,
    /// identity.json path.
    pub identity: PathBuf,
    /// Hostname to register.
    pub hostname: Option<String>,
    /// Owner e-mail.
    pub email: Option<String>,
    /// Public visibility.
    pub public: bool,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// SYN admission limits.
    pub admission: streams::Admission,
    /// Run the echo service on port 7.
    pub echo: bool,
    /// Trust handshake, data exchange and event stream settings.
    pub services: svc::ServiceConfig,
    /// Largest stream segment payload to probe for on direct paths
    /// (`--max-segment`, pmtu.rs); the default size disables probing.
    pub max_segment: usize,
    /// Where to serve Prometheus metrics (`--metrics`, [`metrics`]).
    pub metrics: Option<SocketAddr>,
}

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The identity file is unusable (never silently regenerated).
    #[error(transparent)]
    Identity(#[from] crate::crypto::identity::IdentityError),
    /// The first registration failed.
    #[error("{0}")]
    Registry(RegError),
    /// A configured address does not resolve or parse.
    #[error("invalid {what} address {value:?}: {reason}")]
    Address {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why it is bad.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Its address or path.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another daemon already serves the socket.
    #[error("a daemon is already running on {0}")]
    AlreadyRunning(PathBuf),
    /// Another daemon already uses this identity.
    #[error(transparent)]
    Locked(#[from] statelock::LockError),
    /// The registry refused our hostname.
    #[error("cannot set hostname {hostname:?}: {reason}")]
    Hostname {
        /// The hostname.
        hostname: String,
        /// The registry's reason.
        reason: String,
    },
}

/// Registration state that changes while the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The registry accepts our heartbeats.
    pub registered: bool,
    /// Our hostname.
    pub hostname: Option<String>,
    /// The endpoint we registered.
    pub endpoint: String,
    /// What the beacon saw as our address.
    pub observed: Option<SocketAddr>,
}

/// State shared by the daemon's tasks.
pub struct Shared {
    /// The node's identity.
    pub identity: Identity,
    /// Start-up configuration.
    pub config: DaemonConfig,
    /// The beacons' resolved addresses, one per registry instance
    /// (`--registry A,B`): the engine uses the one of the instance the
    /// registry connection is on, so both fail over together.
    pub beacons: Vec<SocketAddr>,
    /// The registry connection.
    pub registry: RegistryHandle,
    /// When the daemon started.
    pub started: Instant,
    /// The trust store (spec §9).
    pub trust: trust::TrustState,
    /// Our networks as the registry last told us (`networks.rs`).
    pub networks: networks::NetState,
    /// The `/metrics` figures (published only with `--metrics`).
    pub metrics: metrics::DaemonMetrics,
    /// The address `/metrics` is served on, once bound.
    pub metrics_addr: Option<SocketAddr>,
    status: Mutex<Status>,
}

impl Shared {
    /// A snapshot of the registration state.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Records the beacon-observed address.
    pub fn set_observed(&self, ep: SocketAddr) {
        self.update(|s| s.observed = Some(ep));
    }

    /// Records the hostname the registry confirmed.
    pub fn set_hostname(&self, h: Option<String>) {
        self.update(|s| s.hostname = h);
    }
}

async fn resolve_addr(what: &'static str, value: &str) -> Result<SocketAddr, NodeError> {
    let bad = |reason: String| NodeError::Address {
        what,
        value: value.to_string(),
        reason,
    };
    let mut it = tokio::net::lookup_host(value)
        .await
        .map_err(|e| bad(e.to_string()))?;
    it.next().ok_or_else(|| bad("no address".into()))
}

/// The beacon address: configured, else the registry's host at port 9001.
fn default_beacon(registry: &str) -> String {
    match registry.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{DEFAULT_BEACON_PORT}"),
        None => format!("{registry}:{DEFAULT_BEACON_PORT}"),
    }
}

/// The endpoint to register: `--endpoint`, else the socket's address with a
/// wildcard IP replaced by loopback (spec §5.3 step 2).
fn registration_endpoint(config: &DaemonConfig, local: SocketAddr) -> String {
    if let Some(e) = &config.endpoint {
        return e.clone();
    }
    let mut ep = local;
    if ep.ip().is_unspecified() {
        ep.set_ip(if ep.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    ep.to_string()
}

/// Registers (or re-registers) and applies hostname and visibility.
async fn register(shared: &Shared) -> Result<u32, NodeError> {
    let st = shared.status();
    let node_id = shared
        .registry
        .register(&st.endpoint, shared.config.email.as_deref())
        .await
        .map_err(NodeError::Registry)?;
    if shared.config.public {
        shared
            .registry
            .set_visibility(true)
            .await
            .map_err(NodeError::Registry)?;
    }
    // The hostname in effect: the one set at run time, else the configured one.
    let want = st
        .hostname
        .clone()
        .or_else(|| shared.config.hostname.clone());
    if let Some(h) = want.filter(|h| !h.is_empty()) {
        match shared.registry.set_hostname(&h).await {
            Ok(_) => shared.set_hostname(Some(h)),
            Err(e) => {
                return Err(NodeError::Hostname {
                    hostname: h,
                    reason: e.to_string(),
                })
            }
        }
    }
    shared.update(|s| s.registered = true);
    Ok(node_id)
}

/// Runs the daemon until SIGINT/SIGTERM or an IPC `shutdown`.
pub async fn run(config: DaemonConfig) -> Result<(), NodeError> {
    // One daemon per identity: lock its directory before touching anything.
    let state_dir = config
        .identity
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let _state_lock = statelock::acquire(&state_dir)?;
    let identity = match Identity::load_or_create(&config.identity, &mut rand_core::OsRng)? {
        (id, true) => {
            tracing::info!("created a new identity in {}", config.identity.display());
            id
        }
        (id, false) => id,
    };
    let socket = UdpSocket::bind(&config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            what: "UDP socket",
            addr: config.listen.clone(),
            source,
        })?;
    let local = socket.local_addr().map_err(|source| NodeError::Bind {
        what: "UDP socket",
        addr: config.listen.clone(),
        source,
    })?;
    // `HOST:PORT#ed25519:<key>` pins the rendezvous' answer key; `A,B,...`
    // are instances over one shared database, tried in turn.
    let (registry_texts, registry_pin) =
        crate::rendezvous::pin::registry_instances(&config.registry).map_err(|e| {
            NodeError::Address {
                what: "registry",
                value: config.registry.clone(),
                reason: e.to_string(),
            }
        })?;
    let registry_text = registry_texts.first().cloned().unwrap_or_default();
    let mut fallbacks = Vec::new();
    for other in registry_texts.iter().skip(1) {
        fallbacks.push(resolve_addr("registry", other).await?);
    }
    // One beacon per registry instance: `--beacon A,B` in the same order,
    // one `--beacon` for all, or by default each registry host at :9001.
    let beacon_texts: Vec<String> = match &config.beacon {
        Some(b) => {
            let list: Vec<String> = b.split(',').map(|s| s.trim().to_string()).collect();
            crate::rendezvous::pin::check_beacon_count(list.len(), registry_texts.len()).map_err(
                |reason| NodeError::Address {
                    what: "beacon",
                    value: b.clone(),
                    reason,
                },
            )?;
            list
        }
        None => registry_texts.iter().map(|r| default_beacon(r)).collect(),
    };
    let mut beacons = Vec::new();
    for b in &beacon_texts {
        beacons.push(resolve_addr("beacon", b).await?);
    }
    let registry_addr = resolve_addr("registry", &registry_text).await?;
    let ipc = ipc_server::bind(&config.socket).await?;
    let metrics_listener = match config.metrics {
        Some(addr) => match crate::metrics_http::bind(addr).await {
            Ok(l) => Some(l),
            Err(source) => {
                ipc_server::unlink(&config.socket);
                return Err(NodeError::Bind {
                    what: "metrics address",
                    addr: addr.to_string(),
                    source,
                });
            }
        },
        None => None,
    };

    let state_dir = config
        .identity
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let trust = trust::TrustState::load(
        state_dir.join("trust.json"),
        config.services.trust_auto_approve,
    );
    let shared = Arc::new(Shared {
        trust,
        networks: networks::NetState::default(),
        metrics: metrics::DaemonMetrics::default(),
        metrics_addr: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        registry: RegistryHandle::new(config.registry.clone(), registry_addr, identity.clone())
            .with_pin(registry_pin)
            .with_fallbacks(fallbacks),
        identity,
        beacons,
        started: Instant::now(),
        status: Mutex::new(Status {
            endpoint: registration_endpoint(&config, local),
            ..Status::default()
        }),
        config,
    });
    // LAN addresses with the tunnel port (spec §5.3), for the LAN shortcut.
    if local.ip().is_unspecified() || path::is_private(local.ip()) {
        let lan: Vec<String> = path::local_private_v4()
            .into_iter()
            .filter(|ip| local.ip().is_unspecified() || local.ip() == *ip)
            .map(|ip| SocketAddr::new(ip.into(), local.port()).to_string())
            .collect();
        shared.registry.set_lan_addrs(lan);
    }
    let node_id = match register(&shared).await {
        Ok(id) => id,
        Err(e) => {
            ipc_server::unlink(&shared.config.socket);
            return Err(e);
        }
    };
    tracing::info!(
        "registered as {} (node {node_id}), tunnel socket {local}",
        crate::wire::address::Addr::backbone(node_id)
    );

    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = engine::Engine::new(shared.clone(), Arc::new(socket), node_id, cmd_tx.clone());
    let engine_task = tokio::spawn(engine.run(cmd_rx, stop_rx.clone()));
    tokio::spawn(heartbeat_loop(
        shared.clone(),
        cmd_tx.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(networks::start(shared.clone(), cmd_tx.clone()));
    svc::start_services(shared.clone(), cmd_tx.clone(), state_dir).await;
    let ipc_task = tokio::spawn(ipc_server::serve(
        ipc,
        shared.clone(),
        cmd_tx,
        stop_tx.clone(),
        stop_rx.clone(),
    ));
    if let Some(l) = metrics_listener {
        let m = shared.clone();
        let render: crate::metrics_http::Render = Arc::new(move || m.metrics.render());
        if let Some(a) = shared.metrics_addr {
            tracing::info!("metrics on http://{a}/metrics");
        }
        tokio::spawn(crate::metrics_http::serve(l, render, stop_rx.clone()));
    }
    tokio::spawn(signals(stop_tx));
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if crate::config::cap_stderr_log() {
                tracing::info!("pilot.log reached its cap; rotated to pilot.log.1");
            }
        }
    });

    let mut stop = stop_rx;
    let _ = stop.wait_for(|s| *s).await;
    tracing::info!("shutting down");
    let _ = tokio::time::timeout(DEREGISTER_TIMEOUT, shared.registry.deregister()).await;
    ipc_server::unlink(&shared.config.socket);
    let _ = engine_task.await;
    ipc_task.abort();
    Ok(())
}

async fn signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = stop.send(true);
}

/// Keeps the registration alive (spec §6.4.2): a heartbeat per interval;
/// after three failures (or a refusal, e.g. the registry forgot us),
/// re-register with backoff, restore hostname and visibility, and
/// re-announce to the beacon.
async fn heartbeat_loop(
    shared: Arc<Shared>,
    cmds: mpsc::Sender<engine::Cmd>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = shared.config.heartbeat;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match shared.registry.heartbeat().await {
            Ok(()) => {
                failures = 0;
                shared.update(|s| s.registered = true);
                let _ = cmds.send(engine::Cmd::Discover).await;
                continue;
            }
            Err(RegError::Refused(reason)) => {
                tracing::warn!("heartbeat refused ({reason}); re-registering");
                failures = HEARTBEAT_FAILURES;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("heartbeat failed ({failures}/{HEARTBEAT_FAILURES}): {e}");
            }
        }
        if failures < HEARTBEAT_FAILURES {
            continue;
        }
        shared.update(|s| s.registered = false);
        let mut backoff = Duration::from_millis(100);
        let cap = Duration::from_secs(30).min(interval.max(Duration::from_secs(1)));
        loop {
            match register(&shared).await {
                Ok(id) => {
                    tracing::info!("re-registered as node {id}");
                    failures = 0;
                    let _ = cmds.send(engine::Cmd::Discover).await;
                    break;
                }
                // Registered, but the hostname went to someone else meanwhile:
                // keep the node up and say so (retrying would not help).
                Err(NodeError::Hostname { hostname, reason }) => {
                    tracing::warn!(
                        "re-registered, but hostname {hostname:?} was refused: {reason}"
                    );
                    shared.set_hostname(None);
                    shared.update(|s| s.registered = true);
                    failures = 0;
                    let _ = cmds.send(engine::Cmd::Discover).await;
                    break;
                }
                Err(e) => tracing::warn!("re-registration failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacon_defaults_to_registry_host() {
        assert_eq!(default_beacon("127.0.0.1:9000"), "127.0.0.1:9001");
        assert_eq!(default_beacon("[::1]:9000"), "[::1]:9001");
        assert_eq!(default_beacon("example"), "example:9001");
    }

    #[test]
    fn wildcard_endpoint_becomes_loopback() {
        let cfg = DaemonConfig {
            registry: DEFAULT_REGISTRY.into(),
            beacon: None,
            listen: "0.0.0.0:0".into(),
            endpoint: None,
            socket: "/tmp/x.sock".into(),
            identity: "/tmp/id.json".into(),
            hostname: None,
            email: None,
            public: false,
            heartbeat: DEFAULT_HEARTBEAT,
            admission: streams::Admission::default(),
            echo: true,
            services: svc::ServiceConfig::default(),
            max_segment: pmtu::DEFAULT_MAX_SEGMENT,
            metrics: None,
        };
        assert_eq!(
            registration_endpoint(&cfg, "0.0.0.0:4000".parse().unwrap()),
            "127.0.0.1:4000"
        );
        assert_eq!(
            registration_endpoint(&cfg, "10.1.2.3:4000".parse().unwrap()),
            "10.1.2.3:4000"
        );
    }
}
