//! The commands that talk to a running daemon.

use std::time::Duration;

use serde::Serialize;

use super::output::{kv, print_ok, table};
use super::{daemon_ctl, streams};
use super::{parse_duration, Cli, CliError, Command, DaemonCommand, PingArgs};
use crate::config::{Config, Paths};
use crate::ipc::proto::{FindData, HostnameData, InfoData, LookupData, PeersData, PingData};
use crate::ipc::{Client, ErrorCode, Request};
use crate::wire::address::{is_valid_hostname, parse_target};

/// Registry round trips may need a reconnect; give them time.
const IPC_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one parsed command.
pub(super) async fn run(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Daemon(DaemonCommand::Start(a)) => daemon_ctl::start(cli, a).await,
        Command::Daemon(DaemonCommand::Stop) => daemon_ctl::stop(cli).await,
        Command::Daemon(DaemonCommand::Status) => daemon_ctl::status(cli).await,
        Command::Info => info(cli).await,
        Command::Lookup { target } => lookup(cli, target).await,
        Command::Peers => peers(cli).await,
        Command::SetHostname { hostname } => set_hostname(cli, hostname).await,
        Command::ClearHostname => set_hostname(cli, "").await,
        Command::Find { hostname } => find(cli, hostname).await,
        Command::Ping(a) if a.control => ping(cli, a).await,
        Command::Ping(a) => streams::echo_ping(cli, a).await,
        Command::Connect(a) => streams::connect(cli, a).await,
        Command::Listen(a) => streams::listen(cli, a).await,
        Command::Send(a) => streams::send(cli, a).await,
        Command::Recv(a) => streams::recv(cli, a).await,
        Command::Bench(a) => streams::bench(cli, a).await,
        Command::Connections => streams::connections(cli).await,
        Command::Disconnect { id, force } => streams::disconnect(cli, *id, *force).await,
        Command::Expose(a) => super::forward::expose(cli, a).await,
        Command::Unexpose { port } => super::forward::unexpose(cli, *port).await,
        Command::Forward(a) => super::forward::forward(cli, a).await,
        Command::Gateway { args } => Err(super::gateway::passthrough(
            cli.json,
            cli.socket.as_deref(),
            args,
        )),
    }
}

pub(super) fn socket_path(cli: &Cli) -> std::path::PathBuf {
    let paths = Paths::from_env();
    let config = Config::load(&paths.config()).unwrap_or_default();
    paths.socket(cli.socket.as_deref(), &config)
}

pub(super) async fn call<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    req: &Request,
) -> Result<T, CliError> {
    let mut c = Client::connect(&socket_path(cli)).await?;
    let v = c.request(req, IPC_TIMEOUT).await?;
    serde_json::from_value(v).map_err(|e| {
        CliError::new(
            ErrorCode::Internal,
            format!("unexpected reply from the daemon: {e}"),
        )
    })
}

/// Checks a target's form before bothering the daemon, so a typo gets the
/// expected-form message even when no daemon runs.
pub(super) fn check_target(target: &str) -> Result<(), CliError> {
    parse_target(target)
        .map(|_| ())
        .map_err(|e| CliError::new(ErrorCode::InvalidAddress, e.to_string()))
}

fn check_hostname(h: &str) -> Result<(), CliError> {
    if is_valid_hostname(h) {
        Ok(())
    } else {
        Err(CliError::new(
            ErrorCode::InvalidAddress,
            format!(
                "invalid hostname {h:?} (expected 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
            ),
        ))
    }
}

async fn info(cli: &Cli) -> Result<(), CliError> {
    let d: InfoData = call(cli, &Request::Info).await?;
    print_ok(cli.json, &d, || {
        kv(&[
            ("Address", d.address.clone()),
            ("Node id", d.node_id.to_string()),
            ("Hostname", d.hostname.clone().unwrap_or_else(|| "-".into())),
            ("Public", if d.public { "yes" } else { "no" }.into()),
            ("Public key", d.public_key.clone()),
            ("Endpoint", d.endpoint.clone()),
            ("Listen", d.listen.clone()),
            (
                "Registry",
                format!(
                    "{}{}",
                    d.registry,
                    if d.registered { "" } else { " (unreachable)" }
                ),
            ),
            ("Beacon", d.beacon.clone()),
            ("Peers", d.peers.to_string()),
            ("Uptime", format!("{}s", d.uptime_secs)),
            ("Pid", d.pid.to_string()),
            ("Socket", d.socket.clone()),
        ])
    });
    Ok(())
}

async fn lookup(cli: &Cli, target: &str) -> Result<(), CliError> {
    check_target(target)?;
    let d: LookupData = call(
        cli,
        &Request::Lookup {
            target: target.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        let nets: Vec<String> = d.networks.iter().map(u16::to_string).collect();
        kv(&[
            ("Address", d.address.clone()),
            ("Node id", d.node_id.to_string()),
            ("Hostname", d.hostname.clone().unwrap_or_else(|| "-".into())),
            ("Public", if d.public { "yes" } else { "no" }.into()),
            ("Public key", d.public_key.clone()),
            (
                "Networks",
                if nets.is_empty() {
                    "-".into()
                } else {
                    nets.join(", ")
                },
            ),
            (
                "Endpoint",
                d.real_addr.clone().unwrap_or_else(|| "(private)".into()),
            ),
        ])
    });
    Ok(())
}

async fn peers(cli: &Cli) -> Result<(), CliError> {
    let d: PeersData = call(cli, &Request::Peers).await?;
    print_ok(cli.json, &d, || {
        if d.peers.is_empty() {
            return "no peers".into();
        }
        let rows: Vec<Vec<String>> = d
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.address.clone(),
                    p.path.clone(),
                    p.endpoint.clone().unwrap_or_else(|| "-".into()),
                    if p.encrypted { "yes" } else { "no" }.into(),
                    p.last_seen_ms
                        .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &["ADDRESS", "PATH", "ENDPOINT", "ENCRYPTED", "LAST SEEN"],
            &rows,
        )
    });
    Ok(())
}

async fn set_hostname(cli: &Cli, hostname: &str) -> Result<(), CliError> {
    if !hostname.is_empty() {
        check_hostname(hostname)?;
    }
    let d: HostnameData = call(
        cli,
        &Request::SetHostname {
            hostname: hostname.into(),
        },
    )
    .await?;
    // Remember it for the next start (the daemon re-applies it).
    let paths = Paths::from_env();
    if let Ok(mut config) = Config::load(&paths.config()) {
        if config.hostname != d.hostname {
            config.hostname = d.hostname.clone();
            let _ = config.save(&paths.config());
        }
    }
    print_ok(cli.json, &d, || match &d.hostname {
        Some(h) => format!("Hostname set: {h} -> {}", d.address),
        None => format!("Hostname cleared for {}", d.address),
    });
    Ok(())
}

async fn find(cli: &Cli, hostname: &str) -> Result<(), CliError> {
    check_hostname(hostname)?;
    let d: FindData = call(
        cli,
        &Request::Find {
            hostname: hostname.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || format!("{}  {}", d.hostname, d.address));
    Ok(())
}

#[derive(Debug, Serialize)]
pub(super) struct PingSummary {
    target: String,
    address: Option<String>,
    sent: u32,
    received: u32,
    replies: Vec<PingData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_us: Option<u64>,
}

/// Where pings go: the daemon's control ping, or an echo stream.
pub(super) enum Pinger {
    /// Control pings (protocol 3, port 0) through the daemon.
    Control(Client, Request),
    /// An open stream to the echo port.
    Echo(streams::EchoStream),
}

impl Pinger {
    async fn once(&mut self, seq: u32, timeout: Duration) -> Result<PingData, CliError> {
        match self {
            Pinger::Control(client, req) => {
                let v = client.request(req, timeout + IPC_TIMEOUT).await?;
                serde_json::from_value(v).map_err(|e| {
                    CliError::new(ErrorCode::Internal, format!("unexpected ping reply: {e}"))
                })
            }
            Pinger::Echo(e) => e.ping(seq, timeout).await,
        }
    }
}

/// Checks `ping`'s options.
pub(super) fn ping_options(a: &PingArgs) -> Result<(Duration, Duration), CliError> {
    check_target(&a.target)?;
    if a.count == 0 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--count must be at least 1",
        ));
    }
    if a.size > 1024 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--size must be at most 1024 bytes",
        ));
    }
    Ok((parse_duration(&a.interval)?, parse_duration(&a.timeout)?))
}

async fn ping(cli: &Cli, a: &PingArgs) -> Result<(), CliError> {
    let (interval, timeout) = ping_options(a)?;
    let client = Client::connect(&socket_path(cli)).await?;
    let req = Request::Ping {
        target: a.target.clone(),
        size: a.size,
        timeout_ms: timeout.as_millis() as u64,
    };
    run_pings(cli, a, Pinger::Control(client, req), interval, timeout).await
}

/// Sends `a.count` pings, one line per reply, then the summary.
pub(super) async fn run_pings(
    cli: &Cli,
    a: &PingArgs,
    mut pinger: Pinger,
    interval: Duration,
    timeout: Duration,
) -> Result<(), CliError> {
    let mut s = PingSummary {
        target: a.target.clone(),
        address: None,
        sent: 0,
        received: 0,
        replies: Vec::new(),
        min_us: None,
        avg_us: None,
        max_us: None,
    };
    let mut last_err = None;
    for seq in 1..=a.count {
        if seq > 1 {
            tokio::time::sleep(interval).await;
        }
        s.sent += 1;
        match pinger.once(seq, timeout).await {
            Ok(d) => {
                if !cli.json {
                    outln!(
                        "{} bytes from {}: seq={seq} time={:.3} ms ({})",
                        d.bytes,
                        d.address,
                        d.rtt_us as f64 / 1000.0,
                        d.path
                    );
                }
                s.address = Some(d.address.clone());
                s.received += 1;
                s.replies.push(d);
            }
            // Per-ping losses are reported and the run goes on.
            Err(e) if e.code == ErrorCode::Timeout => {
                if !cli.json {
                    outln!("no reply from {}: seq={seq} (timeout)", a.target);
                }
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if s.received == 0 {
        return Err(last_err.unwrap_or_else(|| CliError::new(ErrorCode::Timeout, "no replies")));
    }
    let rtts: Vec<u64> = s.replies.iter().map(|r| r.rtt_us).collect();
    s.min_us = rtts.iter().min().copied();
    s.max_us = rtts.iter().max().copied();
    s.avg_us = Some(rtts.iter().sum::<u64>() / rtts.len() as u64);
    let loss = 100.0 * f64::from(s.sent - s.received) / f64::from(s.sent);
    print_ok(cli.json, &s, || {
        format!(
            "--- {} ping statistics ---\n{} sent, {} received, {:.0}% loss, rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            s.address.as_deref().unwrap_or(&s.target),
            s.sent,
            s.received,
            loss,
            s.min_us.unwrap_or(0) as f64 / 1000.0,
            s.avg_us.unwrap_or(0) as f64 / 1000.0,
            s.max_us.unwrap_or(0) as f64 / 1000.0,
        )
    });
    Ok(())
}
