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
mod config_cmd;
mod context;
mod daemon_ctl;
mod forward;
pub mod gateway;
mod messages;
pub mod networks;
pub mod output;
mod ping;
mod splice;
mod streams;
mod trust;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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
#[command(name = "pilotctl", version = crate::VERSION)]
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
    ///
    /// With --search, ask the rendezvous instead for the nodes whose
    /// hostname or a tag contains the text, with their addresses and
    /// whether they are online (private nodes only if you may see them).
    Peers {
        /// Search the rendezvous for nodes whose hostname or tags contain this text.
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
    },
    /// Register a hostname for this node (lower-case letters, digits, '-').
    SetHostname {
        /// The hostname, 1-63 characters.
        hostname: String,
    },
    /// Remove this node's hostname.
    ClearHostname,
    /// Resolve a hostname to an address, or discover nodes by tag.
    ///
    /// `pilotctl find beta` resolves a hostname; `pilotctl find --tag
    /// citations [--tag gpu] [--network research]` lists the nodes carrying
    /// every tag (exact match), with their addresses and online state.
    /// Private nodes are listed only to fellow members and trusted peers.
    Find {
        /// The hostname (omit with --tag or --network).
        hostname: Option<String>,
        /// A tag every listed node must carry (repeat for more).
        #[arg(long, value_name = "TAG", conflicts_with = "hostname")]
        tag: Vec<String>,
        /// Only members of this network (id or name).
        #[arg(long, value_name = "NETWORK", conflicts_with = "hostname")]
        network: Option<String>,
    },
    /// Create, join, leave and manage networks (groups of nodes that trust
    /// each other's members).
    ///
    /// Members of a shared network resolve each other and pass each other's
    /// trust gate without a handshake.
    #[command(subcommand)]
    Network(networks::NetworkCommand),
    /// Replace this node's tags (capabilities others can `find --tag`).
    ///
    /// Tags: 1-63 of a-z, 0-9, '-', '_', '.'; at most 16 per node.
    SetTags {
        /// The tags.
        #[arg(required = true, num_args = 1..)]
        tags: Vec<String>,
    },
    /// Remove all of this node's tags.
    ClearTags,
    /// Send one datagram to every online member of a network.
    ///
    /// `pilotctl broadcast research --data hello`; members read it with
    /// `pilotctl recv 1000`. The backbone (network 0) is refused, and so is
    /// a network you are not a member of.
    Broadcast(networks::BroadcastArgs),
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
    /// Send a message (text, JSON or binary) to a node's inbox (port 1001).
    ///
    /// `pilotctl send-message beta --data "hello"`; `--type json` checks the
    /// JSON first; `--data -` or `--file F` reads the body; `--each-line`
    /// sends every line of the input as its own message over one stream.
    /// Prints the receiver's answer (`ACK TEXT 5 bytes`).
    SendMessage(SendMessageArgs),
    /// List the messages other nodes sent to this one (oldest first).
    Inbox {
        /// Delete the listed messages after printing them.
        #[arg(long)]
        clear: bool,
        /// Only messages from this node (address or node id).
        #[arg(long, value_name = "NODE")]
        from: Option<String>,
        /// At most this many (the oldest); a listing also stops at ~900 KB
        /// (then `more` is true: read, --clear, and list again).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Send a file to a node's `received/` directory (port 1001).
    ///
    /// Files up to 16 MiB go in one frame any Pilot node accepts; larger
    /// files go in pieces, which this implementation's nodes accept (a
    /// node that cannot is reported, nothing is half-stored).
    SendFile(SendFileArgs),
    /// List the files other nodes sent to this one (oldest first).
    Received {
        /// Delete the listed files after printing them.
        #[arg(long)]
        clear: bool,
        /// At most this many (the oldest).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Publish an event to a node's event broker (port 1002).
    ///
    /// Everyone subscribed there to TOPIC (or to `*`) gets it.
    Publish {
        /// Address, bare node id or hostname of the broker node.
        target: String,
        /// The topic (at most 1,024 bytes; `*` reaches `*` subscribers only).
        topic: String,
        /// The payload (`-` reads stdin).
        #[arg(long, short = 'd')]
        data: String,
    },
    /// Subscribe to a topic on a node's event broker and print each event.
    ///
    /// One line per event (`<topic> <payload>`), JSON under `--json`.
    Subscribe {
        /// Address, bare node id or hostname of the broker node.
        target: String,
        /// The topic, or `*` for every topic.
        topic: String,
        /// Exit after this many events [default: run until interrupted].
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// Exit after this long without an event (e.g. 30s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Serve a virtual port by forwarding each stream to a local TCP service
    /// (kept by the daemon after pilotctl exits).
    ///
    /// `pilotctl expose 80 --to 127.0.0.1:8000` makes a local web server
    /// reachable as this node's port 80; `--list` shows what is exposed.
    Expose(ExposeArgs),
    /// Stop exposing a virtual port.
    Unexpose {
        /// The virtual port.
        port: u16,
    },
    /// Listen on a local TCP port and forward each connection to a remote
    /// virtual port (no root needed).
    ///
    /// `pilotctl forward 8080 beta:80` then `curl http://127.0.0.1:8080/`.
    Forward(ForwardArgs),
    /// Run pilot-gateway (start, stop, map, unmap, list; see `pilot-gateway --help`).
    #[command(disable_help_flag = true)]
    Gateway {
        /// Arguments for pilot-gateway.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show or edit the saved settings (~/.pilot/config.json) that
    /// `daemon start` uses.
    Config(ConfigArgs),
    /// Print one JSON document describing every command, its arguments,
    /// its --json output and the error codes (for agents that drive pilotctl).
    Context,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// e.g. `pilotctl completions bash > /etc/bash_completion.d/pilotctl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Options of `config`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// What to do [default: show].
    #[command(subcommand)]
    pub action: Option<ConfigAction>,
}

/// `pilotctl config ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigAction {
    /// Print the saved settings and the file's path.
    Show,
    /// Save one setting (registry, beacon, socket, hostname, email, listen,
    /// public, log-level).
    Set {
        /// The setting's name.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Forget one setting (the built-in default applies again).
    Unset {
        /// The setting's name.
        key: String,
    },
    /// Remove the file (kept as config.json.bak): every setting back to its default.
    Reset,
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
    /// Give up connecting after this long (the protocol itself gives up
    /// after about 29 s, relay included).
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// After our input ends, wait this long for more reply bytes before
    /// closing (the protocol has no half-close).
    #[arg(long, default_value = "1s")]
    pub linger: String,
}

/// Options of `expose`.
#[derive(Debug, Clone, Args)]
pub struct ExposeArgs {
    /// The virtual port to serve.
    pub port: Option<u16>,
    /// The local TCP service, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: Option<String>,
    /// List the exposed ports instead.
    #[arg(long, conflicts_with_all = ["port", "to"])]
    pub list: bool,
}

/// Options of `forward`.
#[derive(Debug, Clone, Args)]
pub struct ForwardArgs {
    /// Local listen address, PORT or IP:PORT (IP defaults to 127.0.0.1; port 0 picks one).
    pub listen: String,
    /// The remote end, ADDRESS:PORT or HOSTNAME:PORT.
    pub target: String,
    /// Give up dialling after this long (the connection is then reset).
    #[arg(long, default_value = "15s")]
    pub timeout: String,
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

/// Options of `send-message`.
#[derive(Debug, Clone, Args)]
pub struct SendMessageArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// The message (`-` reads stdin).
    #[arg(
        long,
        short = 'd',
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub data: Option<String>,
    /// Read the message from this file.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// How the receiver files it: text, json (checked before sending) or binary.
    #[arg(long = "type", short = 't', default_value = "text", value_parser = ["text", "json", "binary"])]
    pub kind: String,
    /// Send every line of the input as its own message, over one stream.
    #[arg(long)]
    pub each_line: bool,
    /// Give up if the node cannot be reached in this long.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
}

/// Options of `send-file`.
#[derive(Debug, Clone, Args)]
pub struct SendFileArgs {
    /// Address, bare node id or hostname.
    pub target: String,
    /// The file to send.
    pub path: PathBuf,
    /// The name the receiver sees [default: the file's own name].
    #[arg(long)]
    pub name: Option<String>,
    /// Give up if the node cannot be reached in this long.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
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
    Start(Box<StartArgs>),
    /// Stop the running daemon (it deregisters from the rendezvous).
    Stop,
    /// Tell whether a daemon is running, and its address.
    Status,
}

/// Options of `daemon start`; given values are saved to ~/.pilot/config.json
/// once the daemon is up (a start that fails saves nothing).
#[derive(Debug, Clone, Args, Default)]
pub struct StartArgs {
    /// Registry address HOST:PORT [config "registry"; env PILOT_REGISTRY; default 127.0.0.1:9000].
    #[arg(long, value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Beacon address HOST:PORT, or one per registry instance in the same order (A,B: it fails over with the registry) [config "beacon"; default: each registry's host, port 9001].
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
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Make this node private again (undoes a remembered --public).
    #[arg(long)]
    pub private: bool,
    /// Trust every handshake request at once (no `approve` step).
    #[arg(long)]
    pub trust_auto_approve: bool,
    /// Disk budget for received messages and files, e.g. 500M or 2G
    /// [default 1G]; beyond it senders get `ERR ... quota`.
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9102 (port 0: any free port; `pilotctl info` shows it).
    /// Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// The daemon's log filter: error, warn, info, debug, trace, or a
    /// tracing filter such as pilot=debug [config "log_level"; default info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
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
    /// How long to wait for the daemon to get an address; a daemon that
    /// has none by then is stopped. 0s returns at once without checking.
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
    /// How long to wait for each reply, and for the tunnel to the node
    /// [default: 3s per reply; setting up the tunnel may take the protocol's
    /// ~29 s, relay included].
    #[arg(long)]
    pub timeout: Option<String>,
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

/// `pilotctl help --help` (clap's built-in `help` takes no flags) means the
/// help itself: drop -h/--help after a leading `help` subcommand.
fn normalize_help(mut args: Vec<String>) -> Vec<String> {
    // The first word that is neither a flag nor the value of `--socket`.
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--socket" {
            i += 2;
        } else if args[i].starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).is_some_and(|a| a == "help") {
        let tail: Vec<String> = args
            .split_off(i + 1)
            .into_iter()
            .filter(|a| a != "-h" && a != "--help")
            .collect();
        args.extend(tail);
    }
    args
}

/// A clap usage error as one line: its first line and the lines that
/// complete it (the missing arguments), without the usage block.
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: ").to_string());
        }
    }
    let mut line = parts.join(" ");
    if line.is_empty() {
        line = "invalid arguments".into();
    }
    if let Some(usage) = text.lines().find_map(|l| l.trim().strip_prefix("Usage: ")) {
        line.push_str(&format!(" (usage: {usage})"));
    }
    line
}

/// The subcommand named by the usage part of [`usage_error_line`]
/// (`(usage: pilotctl daemon start [OPTIONS])` gives `daemon start`).
fn usage_command(line: &str) -> Option<String> {
    let usage = line.rsplit_once("(usage: pilotctl ")?.1;
    let usage = usage.strip_suffix(')').unwrap_or(usage);
    let words: Vec<&str> = usage
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// The subcommand (and its subcommand) named in `args`, found by name
/// when the arguments do not parse and clap gives no usage line.
fn named_command(args: &[String]) -> Option<String> {
    let root = Cli::command();
    let mut cmd = &root;
    let mut names = Vec::new();
    for a in args.iter().skip(1) {
        if let Some(sub) = cmd.find_subcommand(a) {
            names.push(sub.get_name().to_string());
            cmd = sub;
        }
    }
    (!names.is_empty()).then(|| names.join(" "))
}

/// Runs pilotctl with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let args = normalize_help(std::env::args().collect());
    let json = args.iter().any(|a| a == "--json");
    // One parse: the matches also name the subcommand for hints.
    let parsed = Cli::command()
        .try_get_matches_from(&args)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let cli = match parsed {
        Ok((cli, m)) => {
            let mut names = Vec::new();
            let mut at = m.subcommand();
            while let Some((name, sub)) = at {
                names.push(name.to_string());
                at = sub.subcommand();
            }
            if !names.is_empty() {
                output::set_command(names.join(" "));
            }
            cli
        }
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            // One line either way (the README's promise), with the usage.
            let line = usage_error_line(&e);
            if let Some(name) = usage_command(&line).or_else(|| named_command(&args)) {
                output::set_command(name);
            }
            output::print_error(json, &CliError::new(ErrorCode::InvalidArgument, line));
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

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn help_help_is_help() {
        assert_eq!(
            normalize_help(argv("pilotctl help --help")),
            argv("pilotctl help")
        );
        assert_eq!(
            normalize_help(argv("pilotctl --json help ping -h")),
            argv("pilotctl --json help ping")
        );
        // only the help subcommand is touched
        assert_eq!(
            normalize_help(argv("pilotctl ping --help")),
            argv("pilotctl ping --help")
        );
        assert_eq!(
            normalize_help(argv("pilotctl --socket help info --help")),
            argv("pilotctl --socket help info --help")
        );
        assert_eq!(
            normalize_help(argv("pilotctl --socket /s help --help")),
            argv("pilotctl --socket /s help")
        );
    }

    #[test]
    fn usage_errors_are_whole_lines() {
        let e = Cli::try_parse_from(argv("pilotctl ping")).unwrap_err();
        let line = usage_error_line(&e);
        assert!(line.contains("<TARGET>"), "{line}");
        assert!(line.contains("not provided"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn the_usage_names_the_subcommand() {
        let u = |l: &str| usage_command(l);
        assert_eq!(
            u("missing <TARGET> (usage: pilotctl ping [OPTIONS] <TARGET>)").as_deref(),
            Some("ping")
        );
        assert_eq!(
            u("bad (usage: pilotctl daemon start)").as_deref(),
            Some("daemon start")
        );
        assert_eq!(u("unknown (usage: pilotctl [OPTIONS] <COMMAND>)"), None);
        assert_eq!(u("no usage at all"), None);
        assert_eq!(
            named_command(&argv("pilotctl --json ping --count abc x")).as_deref(),
            Some("ping")
        );
        assert_eq!(
            named_command(&argv("pilotctl daemon start --wait x")).as_deref(),
            Some("daemon start")
        );
        assert_eq!(named_command(&argv("pilotctl --json")), None);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
