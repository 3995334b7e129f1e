//! `pilotctl`: the command-line client. It parses arguments (clap), talks to
//! the daemon over IPC ([`crate::ipc`]) and renders results either for people
//! (short aligned lines) or, under `--json`, as the IPC envelope itself:
//! `{"status":"ok","data":{...}}` on stdout, or
//! `{"status":"error","code":"...","message":"..."}` on stderr with exit 1.
//!
//! Every failure is one line and a non-zero exit, never a panic or a
//! backtrace: errors travel as [`CliError`] up to [`main`].

/// Like `println!`, but a closed stdout (`pilotctl ... | head`) is not a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Like `eprintln!`, but a closed stderr is not a panic.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Like `eprint!`, but a closed stderr is not a panic.
macro_rules! errprint {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

mod client;
mod commands;
mod daemon_ctl;
pub mod output;
mod ping;
mod streams;
mod trust;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::ipc::ErrorCode;

pub use crate::config::{Config, Paths};

/// A failed command: an error class and one human line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Machine-readable class (`--json`'s `code`).
    pub code: ErrorCode,
    /// One line for people.
    pub message: String,
}

impl CliError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl From<crate::ipc::ClientError> for CliError {
    fn from(e: crate::ipc::ClientError) -> CliError {
        CliError::new(e.code(), e.to_string())
    }
}

/// pilotctl: control a Pilot Protocol node.
///
/// Addresses may be given in full (`0:0000.0000.002A`), as a bare decimal
/// node id (`42`), or as a hostname registered with the rendezvous.
#[derive(Debug, Parser)]
#[command(name = "pilotctl", version)]
pub struct Cli {
    /// Print machine-readable JSON: {"status":"ok","data":...} on stdout, or
    /// {"status":"error","code":...,"message":...} on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's IPC socket [env: PILOT_SOCKET; config "socket"; default /tmp/pilot.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// pilotctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start, stop or inspect the local daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Show this node: address, hostname, endpoint, counters.
    Info,
    /// Ask the registry about a node.
    Lookup {
        /// Address, bare node id or hostname.
        target: String,
    },
    /// List the peers this node has tunnels with, and their paths.
    Peers,
    /// Register a hostname for this node (lower-case letters, digits, '-').
    SetHostname {
        /// The hostname, 1-63 characters.
        hostname: String,
    },
    /// Remove this node's hostname.
    ClearHostname,
    /// Resolve a hostname to an address.
    Find {
        /// The hostname.
        hostname: String,
    },
    /// Measure round-trip times to a node (echo port 7; --control for port 0).
    Ping(PingArgs),
    /// Open a stream: stdin goes to the peer, the peer's bytes to stdout.
    ///
    /// `tar c dir | pilotctl connect beta 1000` sends a directory; with
    /// --message, sends one message and prints the reply.
    Connect(ConnectArgs),
    /// Accept streams on a port and write what they carry to stdout.
    Listen(ListenArgs),
    /// Send one datagram to ADDR PORT.
    Send(SendArgs),
    /// Print datagrams that arrive on a port.
    Recv(RecvArgs),
    /// Measure stream throughput to a node through its echo service.
    Bench(BenchArgs),
    /// List open streams.
    Connections,
    /// Close a stream by id (see `connections`).
    Disconnect {
        /// Stream id.
        id: u64,
        /// Reset it instead of closing gracefully.
        #[arg(long)]
        force: bool,
    },
    /// Ask a node to trust this one (private nodes accept only trusted peers).
    Handshake {
        /// Address, bare node id or hostname.
        target: String,
        /// Why (shown to the other node's operator).
        #[arg(default_value = "")]
        justification: String,
    },
    /// List handshake requests waiting for your decision.
    Pending,
    /// Trust a node that asked (see `pending`).
    Approve {
        /// Address or node id.
        target: String,
    },
    /// Refuse a node's handshake request.
    Reject {
        /// Address or node id.
        target: String,
        /// Why.
        #[arg(default_value = "")]
        reason: String,
    },
    /// Stop trusting a node: its streams are closed and new ones refused.
    Untrust {
        /// Address or node id.
        target: String,
    },
    /// List trusted peers (and how each was trusted).
    Trust,
}

/// Options of `connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// Virtual port (1000 is the "stdio" convention).
    #[arg(default_value_t = 1000)]
    pub port: u16,
    /// Send this message instead of reading stdin, then print the reply.
    #[arg(long, short = 'm')]
    pub message: Option<String>,
    /// Give up connecting after this long [default: the protocol's ~29 s].
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// After our input ends, wait this long for more reply bytes before
    /// closing (the protocol has no half-close).
    #[arg(long, default_value = "1s")]
    pub linger: String,
}

/// Options of `listen`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Virtual port.
    pub port: u16,
    /// Keep accepting after the first stream ends (streams are served one
    /// after another).
    #[arg(long, short = 'k')]
    pub keep: bool,
}

/// Options of `send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// Virtual port.
    pub port: u16,
    /// The payload.
    #[arg(long, short = 'd')]
    pub data: String,
}

/// Options of `recv`.
#[derive(Debug, Clone, Args)]
pub struct RecvArgs {
    /// Virtual port.
    pub port: u16,
    /// Stop after this many datagrams [default: run until interrupted].
    #[arg(long, short = 'c')]
    pub count: Option<u64>,
    /// Stop after this long without a datagram.
    #[arg(long)]
    pub timeout: Option<String>,
}

/// Options of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// Megabytes (MiB) to send through the echo service.
    #[arg(default_value_t = 64)]
    pub size_mb: u64,
    /// Give up connecting after this long.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
}

/// `pilotctl daemon ...`.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start pilot-daemon in the background and wait until it has an address.
    Start(StartArgs),
    /// Stop the running daemon (it deregisters from the rendezvous).
    Stop,
    /// Tell whether a daemon is running, and its address.
    Status,
}

/// Options of `daemon start`; given values are saved to ~/.pilot/config.json.
#[derive(Debug, Clone, Args, Default)]
pub struct StartArgs {
    /// Registry address HOST:PORT [config "registry"; env PILOT_REGISTRY; default 127.0.0.1:9000].
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Beacon address HOST:PORT [config "beacon"; default: the registry's host, port 9001].
    #[arg(long, value_name = "HOST:PORT")]
    pub beacon: Option<String>,
    /// Hostname to register for this node.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Owner e-mail sent at registration.
    #[arg(long)]
    pub email: Option<String>,
    /// Local UDP address for tunnels [default 0.0.0.0:0, a random port].
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Make this node public: anyone may resolve its endpoint and connect.
    #[arg(long)]
    pub public: bool,
    /// Run in the foreground (logs to the terminal) instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// Registry heartbeat interval, e.g. 60s [default 60s].
    #[arg(long, value_name = "DURATION", hide = true)]
    pub heartbeat: Option<String>,
    /// Extra argument passed to pilot-daemon as is (repeatable), e.g.
    /// --daemon-arg=--syn-rate-per-source=1000.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub daemon_arg: Vec<String>,
    /// How long to wait for the daemon to get an address [default 15s].
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    pub wait: String,
}

/// Options of `ping`.
#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// Number of pings.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub count: u32,
    /// Payload bytes per ping.
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    /// Time between pings, e.g. 1s or 200ms.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// How long to wait for each reply.
    #[arg(long, default_value = "3s")]
    pub timeout: String,
    /// Use control pings (protocol 3, port 0) instead of the echo service.
    #[arg(long)]
    pub control: bool,
}

/// Parses a duration such as `250ms`, `3s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, CliError> {
    let bad = || {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!("invalid duration {s:?} (expected e.g. 500ms, 3s, 2m)"),
        )
    };
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs pilotctl with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            if json {
                let first = e.to_string();
                let line = first.lines().next().unwrap_or("invalid arguments");
                let line = line.trim_start_matches("error: ");
                output::print_error(true, &CliError::new(ErrorCode::InvalidArgument, line));
                return 2;
            }
            let _ = e.print();
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error(
                json,
                &CliError::new(ErrorCode::Internal, format!("cannot start runtime: {e}")),
            );
            return 1;
        }
    };
    match rt.block_on(commands::run(&cli)) {
        Ok(()) => 0,
        Err(e) => {
            output::print_error(cli.json, &e);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "-1s", "3x", "1e999s", "nan"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
