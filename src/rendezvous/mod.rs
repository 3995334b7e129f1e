//! The rendezvous server — registry (TCP, spec §6) and beacon (UDP, §5.2) in
//! one process — and the registry client the daemon uses.
//!
//! * [`state`]: the registry state machine (sync, clock-injected).
//! * [`store`]: the durable store (SQLite; JSON stores are imported) and
//!   its group-commit persister.
//! * [`metrics`]: Prometheus metrics and the `/metrics` responder.
//! * `server` (private): the TCP front end and its hardening.
//! * [`verify`]: signature checks on threads of their own, off the
//!   registry lock, below the event loop's priority (lookups first).
//! * `shard` (private): the sharded map behind the node and key tables (a
//!   growth never stops the registry for long).
//! * [`beacon`]: the beacon table and its UDP loop.
//! * [`client`]: [`client::RegistryClient`] for daemons and tests.
//!
//! [`Rendezvous::start`] binds both sockets and spawns everything on the
//! current tokio runtime, so tests can run a full server in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), pilot::rendezvous::StartError> {
//! use pilot::rendezvous::{Config, Rendezvous};
//! let server = Rendezvous::start(Config::loopback_ephemeral()).await?;
//! let registry = server.registry_addr(); // 127.0.0.1:<port>
//! let beacon = server.beacon_addr();
//! # let _ = (registry, beacon);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod beacon;
pub mod client;
pub mod metrics;
pub mod networks;
pub mod pin;
mod server;
mod shard;
pub mod state;
pub mod store;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

pub use state::Registry;
pub use store::StoreError;

/// Server configuration. [`Default`] gives the reference's ports and timing.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registry TCP listen address (default `0.0.0.0:9000`, spec §0).
    pub registry_addr: SocketAddr,
    /// Beacon UDP listen address (default `0.0.0.0:9001`, spec §0).
    pub beacon_addr: SocketAddr,
    /// Store file (SQLite; a JSON store found there is imported, see
    /// [`store`]); `None` keeps everything in memory.
    pub store: Option<PathBuf>,
    /// A `postgres://` URL: the store is a database shared by any number
    /// of instances ([`store::postgres`]); overrides `store`.
    pub shared_store: Option<String>,
    /// A JSON store to import when `store` does not exist yet (the old
    /// default path), renamed to `<file>.json-imported` afterwards.
    pub import_from: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Apply the per-source quota on new node ids
    /// ([`state::NEW_IDS_PER_SOURCE`]); off only for benchmarks.
    pub new_id_quota: bool,
    /// A node without heartbeat for this long is reaped (5 min, §6.4.2).
    pub stale_after: Duration,
    /// Reaper period (10 s, §6.4.2).
    pub reap_interval: Duration,
    /// A connection with no complete request for this long is closed (5 min, §6.1).
    pub idle_timeout: Duration,
    /// A reply not written within this is abandoned with its connection (ours).
    pub write_timeout: Duration,
    /// Longest wait for the store to confirm a write before failing the request (ours).
    pub durable_timeout: Duration,
    /// Concurrent registry connections (ours; excess ones are closed).
    pub max_connections: usize,
    /// Connections one source address may hold before its own least
    /// recently active one is evicted (issue 10 item 6).
    pub max_connections_per_source: usize,
    /// Apply the §6.1 per-connection rate rule.
    pub rate_limit: bool,
    /// Beacon entry lifetime (10 min, §5.2).
    pub beacon_ttl: Duration,
    /// Beacon expiry sweep period (60 s, §5.2).
    pub beacon_sweep_interval: Duration,
    /// Beacon table capacity (100 000, §5.2).
    pub beacon_capacity: usize,
    /// The key that signs answers to requests carrying a nonce
    /// ([`pin`]); `None` answers unsigned.
    pub answer_key: Option<Arc<crate::crypto::identity::Identity>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registry_addr: SocketAddr::from(([0, 0, 0, 0], 9000)),
            beacon_addr: SocketAddr::from(([0, 0, 0, 0], 9001)),
            store: None,
            shared_store: None,
            import_from: None,
            metrics_addr: None,
            new_id_quota: true,
            stale_after: Duration::from_secs(300),
            reap_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            durable_timeout: Duration::from_secs(10),
            max_connections: 8192,
            max_connections_per_source: 256,
            rate_limit: true,
            beacon_ttl: beacon::DEFAULT_TTL,
            beacon_sweep_interval: beacon::DEFAULT_SWEEP_INTERVAL,
            beacon_capacity: beacon::DEFAULT_CAPACITY,
            answer_key: None,
        }
    }
}

impl Config {
    /// Defaults, but both sockets on `127.0.0.1:0` and no store: for tests.
    pub fn loopback_ephemeral() -> Config {
        Config {
            registry_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            beacon_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket could not be bound.
    #[error("cannot bind the {what} to {addr}: {cause}")]
    Bind {
        /// "registry (TCP)" or "beacon (UDP)".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The signature-checking threads could not be started.
    #[error("cannot start the signature-checking threads: {0}")]
    Threads(std::io::Error),
}

/// A running rendezvous server.
pub struct Rendezvous {
    registry_addr: SocketAddr,
    beacon_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    metrics: Arc<metrics::Metrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Rendezvous {
    /// Opens the store, binds both sockets and starts serving on the current
    /// tokio runtime.
    pub async fn start(config: Config) -> Result<Rendezvous, StartError> {
        let (stop, stop_rx) = watch::channel(false);
        let now = Instant::now();
        let metrics = Arc::new(metrics::Metrics::new());
        let mut shared_db = None;
        let (registry, store) = match (&config.shared_store, &config.store) {
            (Some(url), _) => {
                let info = store::postgres::InstanceInfo {
                    registry: config.registry_addr.to_string(),
                    beacon: config.beacon_addr.to_string(),
                    stale_after: config.stale_after,
                };
                let (pg, registry) = store::postgres::open(url, info, now).await?;
                shared_db = Some(pg);
                (registry, None)
            }
            (None, Some(path)) => {
                let (store, registry) =
                    store::Store::open_importing(path, config.import_from.as_deref(), now)?;
                (registry, Some(store))
            }
            (None, None) => (Registry::new(), None),
        };
        let registry = Arc::new(if config.new_id_quota {
            registry
        } else {
            registry.without_quota()
        });
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|cause| StartError::Bind {
                        what: "metrics (TCP)",
                        addr,
                        cause,
                    })?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.registry_addr)
            .await
            .map_err(|cause| StartError::Bind {
                what: "registry (TCP)",
                addr: config.registry_addr,
                cause,
            })?;
        let udp = UdpSocket::bind(config.beacon_addr)
            .await
            .map_err(|cause| StartError::Bind {
                what: "beacon (UDP)",
                addr: config.beacon_addr,
                cause,
            })?;
        let bind_err = |what, addr, cause| StartError::Bind { what, addr, cause };
        let registry_addr = listener
            .local_addr()
            .map_err(|e| bind_err("registry (TCP)", config.registry_addr, e))?;
        let beacon_addr = udp
            .local_addr()
            .map_err(|e| bind_err("beacon (UDP)", config.beacon_addr, e))?;

        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|e| {
                bind_err(
                    "metrics (TCP)",
                    config.metrics_addr.unwrap_or(registry_addr),
                    e,
                )
            })?),
            None => None,
        };

        let mut tasks = Vec::new();
        let mut catchup = None;
        // Instances over one database forward relay frames to each other
        // (keyed by the rendezvous key they share).
        let peers = match (&shared_db, &config.answer_key) {
            (Some(_), Some(key)) => {
                Some(Arc::new(beacon::Peers::new(&key.signing_key().to_bytes())))
            }
            _ => None,
        };
        let durability = match (store, shared_db) {
            (_, Some(mut pg)) => {
                pg.set_addrs(registry_addr, beacon_addr, peers.clone());
                let (d, c, task) =
                    store::postgres::spawn(pg, registry.clone(), stop_rx.clone(), metrics.clone());
                tasks.push(task);
                catchup = Some(c);
                d
            }
            (Some(store), None) => {
                let (d, task) = store::spawn_persister(
                    store,
                    registry.clone(),
                    stop_rx.clone(),
                    metrics.clone(),
                );
                tasks.push(task);
                d
            }
            (None, None) => store::Durability::none(),
        };
        let shared = Arc::new(server::Shared {
            registry: registry.clone(),
            durability: durability.clone(),
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            durable_timeout: config.durable_timeout,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            rate_limit: config.rate_limit,
            conns: Default::default(),
            max_per_source: config.max_connections_per_source.max(1),
            next_conn: Default::default(),
            buffer_budget: Arc::new(Semaphore::new(server::BUFFER_BUDGET_KIB)),
            metrics: metrics.clone(),
            answer_key: config.answer_key.clone(),
            catchup,
            verifier: verify::Verifier::start(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )
            .map_err(StartError::Threads)?,
        });
        tasks.push(tokio::spawn(server::run(listener, shared, stop_rx.clone())));

        let mut table = beacon::BeaconTable::new(config.beacon_capacity, config.beacon_ttl)
            .with_registry(registry.clone())
            .with_metrics(metrics.clone());
        if let Some(p) = peers {
            table = table.with_peers(p);
        }
        let table = Arc::new(Mutex::new(table));
        if let Some(listener) = metrics_listener {
            let (reg, tab, m) = (registry.clone(), table.clone(), metrics.clone());
            let render: metrics::Render = Arc::new(move || {
                let beacon_entries = tab.lock().unwrap_or_else(|e| e.into_inner()).len();
                m.render(metrics::Levels {
                    nodes_online: reg.live_nodes(),
                    nodes_known: reg.known_nodes(),
                    handshake_queue: reg.handshake_queue_depth(),
                    beacon_entries,
                })
            });
            tasks.push(tokio::spawn(metrics::serve(
                listener,
                render,
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(beacon::run(
            udp,
            table,
            config.beacon_sweep_interval,
            stop_rx.clone(),
        )));

        // Reaper (spec §6.4.2).
        let reg = registry.clone();
        let (stale_after, every) = (config.stale_after, config.reap_interval);
        let mut stop_reaper = stop_rx;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let reaped = reg.reap(Instant::now(), stale_after);
                        if !reaped.is_empty() {
                            tracing::info!(count = reaped.len(), "reaped stale nodes");
                            durability.poke();
                        }
                    }
                    _ = stop_reaper.wait_for(|s| *s) => break,
                }
            }
        }));

        tracing::info!(%registry_addr, %beacon_addr, store = ?config.store, "rendezvous started");
        Ok(Rendezvous {
            registry_addr,
            beacon_addr,
            metrics_addr,
            registry,
            metrics,
            stop,
            tasks,
        })
    }

    /// The bound registry (TCP) address.
    pub fn registry_addr(&self) -> SocketAddr {
        self.registry_addr
    }

    /// The bound beacon (UDP) address.
    pub fn beacon_addr(&self) -> SocketAddr {
        self.beacon_addr
    }

    /// The bound metrics (HTTP) address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics (for inspection in tests).
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    /// The registry state (for inspection in tests).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops accepting, closes connections, writes the store a last time and
    /// waits for every task.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
