//! `pilot-rendezvous`: the Pilot Protocol registry (TCP) and beacon (UDP) in
//! one process. All behaviour lives in `pilot::rendezvous`; this file parses
//! flags, sets up logging, starts the server and waits for a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use pilot::crypto::identity::Identity;
use pilot::rendezvous::{Config, Rendezvous};

/// Pilot Protocol rendezvous server: registry (TCP) + beacon (UDP).
///
/// The registry allocates node ids, stores keys, endpoints, hostnames and
/// trust pairs, and relays trust handshakes (spec §6). The beacon tells nodes
/// their public UDP endpoint, coordinates hole punching and relays tunnel
/// frames (spec §5).
///
/// State is kept in an embedded SQLite database (WAL, fsync at every
/// commit); changed rows are written in batched transactions and a
/// registration is on disk before it is acknowledged, so after a crash or
/// restart every node keeps its node id (address) and hostname. Heartbeats
/// stay in memory. A damaged store stops the server with an error naming the
/// file rather than starting empty.
///
/// With `--store postgres://...` any number of instances share one
/// PostgreSQL-protocol database: a node may register with one and be
/// looked up, resolved, sent handshakes and relayed through another (give
/// them all the same --identity, and beacons addresses they can reach).
///
/// A JSON store of earlier versions is imported on first start: if the
/// --store file is a JSON store, it is converted in place (the JSON is kept
/// as `<store>.json-imported`); with the default path, an old
/// `~/.pilot/rendezvous.json` is imported into `~/.pilot/rendezvous.db`.
///
/// Differences from the reference server, on purpose: a new public key
/// always gets a NEW node id, even if its `owner` e-mail matches an existing
/// node (no owner takeover, spec §12.18); every signed request is verified
/// (no 120 s heartbeat skip); the beacon relays a frame only when it comes
/// from the address the beacon observed for the claimed sender (spec §12.8).
#[derive(Debug, Parser)]
#[command(name = "pilot-rendezvous", version = pilot::VERSION, about, long_about)]
struct Args {
    /// TCP address of the registry.
    #[arg(long, env = "PILOT_REGISTRY_ADDR", default_value = "0.0.0.0:9000")]
    registry_addr: std::net::SocketAddr,

    /// UDP address of the beacon.
    #[arg(long, env = "PILOT_BEACON_ADDR", default_value = "0.0.0.0:9001")]
    beacon_addr: std::net::SocketAddr,

    /// Store file, a SQLite database [default: $HOME/.pilot/rendezvous.db].
    /// Its directory is created if missing; `<store>.lock`, `<store>-wal`
    /// and `<store>-shm` live beside it. A JSON store of earlier versions
    /// at PATH is imported into SQLite at PATH (the JSON is kept as
    /// `<store>.json-imported`).
    ///
    /// A `postgres://user[:password]@host[:port]/db` URL instead runs this
    /// instance over a shared PostgreSQL-protocol database (PostgreSQL,
    /// CockroachDB, YugabyteDB): any number of instances may share it, and a
    /// node may use any of them. Pass every instance the same --identity.
    #[arg(long, env = "PILOT_RENDEZVOUS_STORE", value_name = "PATH|URL")]
    store: Option<PathBuf>,

    /// Keep all state in memory only (lost on exit). Conflicts with --store.
    #[arg(long, conflicts_with = "store")]
    memory: bool,

    /// The rendezvous' own Ed25519 key file, which signs answers for nodes
    /// that pin it (`--registry HOST:PORT#ed25519:...`). Created if missing
    /// (mode 0600). Default: `rendezvous-identity.json` beside the store;
    /// with --memory and no --identity, a fresh key each start.
    #[arg(long, env = "PILOT_RENDEZVOUS_IDENTITY", value_name = "PATH")]
    identity: Option<PathBuf>,

    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g.
    /// `pilot=debug`). Logs go to stderr.
    #[arg(long, env = "PILOT_LOG", default_value = "info")]
    log_level: String,

    /// Maximum concurrent registry connections; further ones are closed.
    #[arg(long, default_value_t = 8192)]
    max_connections: usize,

    /// Connections one source IP may hold; beyond it, that source's least
    /// recently active connection is closed.
    #[arg(long, default_value_t = 256)]
    max_connections_per_source: usize,

    /// Disable the per-connection rate limit (>100 req/s slowed, >500 closed).
    #[arg(long)]
    no_rate_limit: bool,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics,
    /// e.g. 127.0.0.1:9100. Off by default.
    #[arg(long, env = "PILOT_RENDEZVOUS_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// Disable the per-source quota on new node ids (benchmarks only).
    #[arg(long, hide = true)]
    no_new_id_quota: bool,

    /// Reap nodes without heartbeat for this many ms (testing; spec: 300 s).
    #[arg(long, hide = true)]
    stale_after_ms: Option<u64>,

    /// Reaper period in ms (testing; spec: 10 s).
    #[arg(long, hide = true)]
    reap_interval_ms: Option<u64>,

    /// Close connections idle for this many ms (testing; spec: 300 s).
    #[arg(long, hide = true)]
    idle_timeout_ms: Option<u64>,

    /// Beacon entry lifetime in ms (testing; spec: 600 s).
    #[arg(long, hide = true)]
    beacon_ttl_ms: Option<u64>,

    /// Beacon sweep period in ms (testing; spec: 60 s).
    #[arg(long, hide = true)]
    beacon_sweep_ms: Option<u64>,
}

/// The default store and the JSON store of earlier versions to import
/// into it if it does not exist yet.
fn default_store() -> anyhow::Result<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("$HOME is not set; pass --store PATH or --memory"))?;
    let dir = PathBuf::from(home).join(".pilot");
    Ok((dir.join("rendezvous.db"), dir.join("rendezvous.json")))
}

/// Raises the open-file soft limit to the hard limit: each registry
/// connection is a file descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shared_store = args
        .store
        .as_ref()
        .and_then(|p| p.to_str())
        .filter(|s| pilot::rendezvous::store::postgres::is_url(s))
        .map(str::to_string);
    let (store, import_from) = if args.memory {
        (None, None)
    } else if shared_store.is_some() {
        let (db, _) = default_store()?;
        // No file store; the default identity lives where the file would.
        (None, Some(db))
    } else {
        match args.store {
            Some(p) => (Some(p), None),
            None => {
                let (db, legacy) = default_store()?;
                (Some(db), Some(legacy))
            }
        }
    };
    let identity_path = args.identity.clone().or_else(|| {
        store
            .as_ref()
            .or(import_from.as_ref().filter(|_| shared_store.is_some()))
            .map(|s| s.with_file_name("rendezvous-identity.json"))
    });
    let import_from = import_from.filter(|_| shared_store.is_none());
    let answer_key = match &identity_path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            Identity::load_or_create(p, &mut rand_core::OsRng)
                .with_context(|| format!("cannot load the rendezvous key {}", p.display()))?
                .0
        }
        None => Identity::generate(&mut rand_core::OsRng),
    };
    let pin = pilot::rendezvous::pin::pin_text(&answer_key.public_key());
    let ms = Duration::from_millis;
    let mut config = Config {
        answer_key: Some(std::sync::Arc::new(answer_key)),
        registry_addr: args.registry_addr,
        beacon_addr: args.beacon_addr,
        store,
        shared_store,
        import_from,
        metrics_addr: args.metrics,
        new_id_quota: !args.no_new_id_quota,
        max_connections: args.max_connections,
        max_connections_per_source: args.max_connections_per_source,
        rate_limit: !args.no_rate_limit,
        ..Config::default()
    };
    if let Some(v) = args.stale_after_ms {
        config.stale_after = ms(v);
    }
    if let Some(v) = args.reap_interval_ms {
        config.reap_interval = ms(v.max(1));
    }
    if let Some(v) = args.idle_timeout_ms {
        config.idle_timeout = ms(v);
    }
    if let Some(v) = args.beacon_ttl_ms {
        config.beacon_ttl = ms(v);
    }
    if let Some(v) = args.beacon_sweep_ms {
        config.beacon_sweep_interval = ms(v.max(1));
    }
    if config.max_connections == 0 {
        return Err(anyhow!("--max-connections must be at least 1"));
    }

    let server = Rendezvous::start(config).await?;
    // Machine-readable line for scripts and tests (ports may be ephemeral).
    match server.metrics_addr() {
        Some(metrics) => tracing::info!(
            registry = %server.registry_addr(),
            beacon = %server.beacon_addr(),
            metrics = %metrics,
            pin = %pin,
            "listening"
        ),
        None => tracing::info!(
            registry = %server.registry_addr(),
            beacon = %server.beacon_addr(),
            pin = %pin,
            "listening"
        ),
    }
    eprintln!("registry pin: {pin} (nodes that pass --registry HOST:PORT#{pin} accept only answers signed by this rendezvous)");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for SIGINT")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "pilot-rendezvous: error: invalid --log-level {:?}: {e}",
                args.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pilot-rendezvous: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "pilot-rendezvous: error: {}",
                pilot::cli::output::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}
