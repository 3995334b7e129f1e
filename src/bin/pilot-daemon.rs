//! `pilot-daemon`: the Pilot Protocol node. Usually started by
//! `pilotctl daemon start`; run it directly for foreground use.

use std::path::PathBuf;

use clap::Parser;

/// pilot-daemon: a Pilot Protocol node (identity, tunnels, IPC socket).
///
/// Registers with the rendezvous, keeps its registration alive, sets up
/// encrypted tunnels to peers and serves `pilotctl` on a local socket.
#[derive(Debug, Parser)]
#[command(name = "pilot-daemon", version = pilot::VERSION)]
struct Args {
    /// Registry address HOST:PORT. Several rendezvous instances over one
    /// shared database: HOST:PORT,HOST:PORT,... (the next is used when the
    /// current one cannot be reached).
    #[arg(long, env = "PILOT_REGISTRY", default_value = pilot::node::DEFAULT_REGISTRY)]
    registry: String,
    /// Beacon address HOST:PORT, or one per registry instance in the same order (A,B: it fails over with the registry) [default: each registry's host, port 9001].
    #[arg(long)]
    beacon: Option<String>,
    /// Local UDP address for tunnels (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: String,
    /// Register this endpoint (IP:PORT) instead of the local one.
    #[arg(long)]
    endpoint: Option<String>,
    /// IPC socket path [default: $XDG_RUNTIME_DIR/pilot/pilot.sock, else
    /// ~/.pilot/pilot.sock].
    #[arg(long, env = "PILOT_SOCKET")]
    socket: Option<PathBuf>,
    /// Identity file [default: ~/.pilot/identity.json]; created if missing.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Hostname to register.
    #[arg(long)]
    hostname: Option<String>,
    /// Owner e-mail sent at registration.
    #[arg(long)]
    email: Option<String>,
    /// Make this node public (anyone may resolve its endpoint and connect).
    #[arg(long)]
    public: bool,
    /// Registry heartbeat interval, e.g. 60s.
    #[arg(long, default_value = "60s")]
    heartbeat: String,
    /// SYNs accepted per second, all sources together (spec default 100).
    #[arg(long, default_value_t = 100.0)]
    syn_rate_limit: f64,
    /// SYNs accepted per second from one source node (spec default 10).
    #[arg(long, default_value_t = 10.0)]
    syn_rate_per_source: f64,
    /// Live streams per local port (spec default 1024).
    #[arg(long, default_value_t = 1024)]
    max_conns_per_port: usize,
    /// Live streams in total (spec default 65536).
    #[arg(long, default_value_t = 65_536)]
    max_conns_total: usize,
    /// Memory all streams' buffers may hold together, e.g. 512M, 2G
    /// [default 512M]; past half of it windows shrink, past all of it new
    /// streams are refused.
    #[arg(long, default_value = "512M")]
    stream_memory: String,
    /// Largest stream segment (payload bytes) to try on direct paths whose
    /// route carries more than a 1,500-byte link (loopback, jumbo-frame
    /// LANs); each size is proven with a probe first. 1373 keeps every
    /// path at the default size. At most 65437.
    #[arg(long, default_value_t = pilot::node::pmtu::DEFAULT_MAX_SEGMENT)]
    max_segment: usize,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics,
    /// e.g. 127.0.0.1:9102 (port 0: any free port; `pilotctl info` shows it).
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Do not run the echo service on port 7.
    #[arg(long)]
    no_echo: bool,
    /// Trust every handshake request automatically (spec §9.5).
    #[arg(long)]
    trust_auto_approve: bool,
    /// Do not run the data-exchange service on port 1001.
    #[arg(long)]
    no_dataexchange: bool,
    /// Do not run the event broker on port 1002.
    #[arg(long)]
    no_eventstream: bool,
    /// Disk budget of ~/.pilot/inbox + ~/.pilot/received, e.g. 1G, 500M
    /// [default 1G]; messages beyond it get `ERR ... quota`.
    #[arg(long, default_value = "1G")]
    quota: String,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "PILOT_LOG", default_value = "info")]
    log_level: String,
}

fn main() {
    let args = Args::parse();
    // A panic in any task (the event loop above all) must not leave a
    // daemon that looks alive and does nothing: exit, so a supervisor
    // restarts it (issue 10 item 10).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error, exiting: {info}");
        std::process::exit(70);
    }));
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = run(args) {
        // pilotctl reads this last line to report why a start failed.
        eprintln!("error: {}", pilot::cli::output::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

/// `1G`, `500M`, `64K` or a plain byte count.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {s:?} (expected e.g. 1G, 500M, 64K)"))?;
    Ok(n.saturating_mul(mult))
}

fn run(args: Args) -> anyhow::Result<()> {
    let heartbeat =
        pilot::cli::parse_duration(&args.heartbeat).map_err(|e| anyhow::anyhow!("{e}"))?;
    if heartbeat.is_zero() {
        anyhow::bail!("--heartbeat must be positive");
    }
    let identity = args
        .identity
        .unwrap_or_else(|| pilot::config::Paths::from_env().identity());
    if args.max_segment < pilot::stream::DEFAULT_MSS
        || args.max_segment > pilot::node::pmtu::MAX_SEGMENT
    {
        anyhow::bail!(
            "--max-segment must be between {} and {}",
            pilot::stream::DEFAULT_MSS,
            pilot::node::pmtu::MAX_SEGMENT
        );
    }
    let config = pilot::node::DaemonConfig {
        registry: args.registry,
        beacon: args.beacon,
        listen: args.listen,
        endpoint: args.endpoint,
        socket: args.socket.unwrap_or_else(pilot::config::default_socket),
        identity,
        hostname: args.hostname.filter(|h| !h.is_empty()),
        email: args.email,
        public: args.public,
        heartbeat,
        admission: pilot::node::streams::Admission {
            syn_rate: args.syn_rate_limit.max(0.1),
            syn_rate_per_source: args.syn_rate_per_source.max(0.1),
            max_per_port: args.max_conns_per_port,
            max_total: args.max_conns_total,
            memory_budget: usize::try_from(parse_size(&args.stream_memory)?).unwrap_or(usize::MAX),
        },
        echo: !args.no_echo,
        services: pilot::node::svc::ServiceConfig {
            trust_auto_approve: args.trust_auto_approve,
            dataexchange: !args.no_dataexchange,
            eventstream: !args.no_eventstream,
            quota_bytes: parse_size(&args.quota)?,
        },
        max_segment: args.max_segment,
        metrics: args.metrics,
    };
    // One thread: the event loop owns all protocol state, and the IPC pumps
    // only move bytes to and from it; cross-thread wake-ups would cost more
    // than they parallelise.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(pilot::node::run(config))?;
    Ok(())
}
