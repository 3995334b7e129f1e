//! The commands that talk to a running daemon.

use super::client::{call, check_target};
use super::output::{kv, print_ok, table};
use super::{config_cmd, daemon_ctl, ping, streams, trust};
use super::{Cli, CliError, Command, DaemonCommand};
use crate::config::{Config, Paths};
use crate::ipc::proto::{FindData, HostnameData, InfoData, LookupData, PeersData};
use crate::ipc::{ErrorCode, Request};
use crate::wire::address::is_valid_hostname;

/// Runs one parsed command.
pub(super) async fn run(cli: &Cli) -> Result<(), CliError> {
    check_config_for_socket(cli)?;
    match &cli.command {
        Command::Daemon(DaemonCommand::Start(a)) => daemon_ctl::start(cli, a).await,
        Command::Daemon(DaemonCommand::Stop) => daemon_ctl::stop(cli).await,
        Command::Daemon(DaemonCommand::Status) => daemon_ctl::status(cli).await,
        Command::Info => info(cli).await,
        Command::Lookup { target } => lookup(cli, target).await,
        Command::Peers { search: None } => peers(cli).await,
        Command::Peers { search: Some(q) } => {
            super::networks::discover(cli, &[], Some(q), None).await
        }
        Command::Network(c) => super::networks::network(cli, c).await,
        Command::SetTags { tags } => super::networks::set_tags(cli, tags).await,
        Command::ClearTags => super::networks::set_tags(cli, &[]).await,
        Command::Broadcast(a) => super::networks::broadcast(cli, a).await,
        Command::SetHostname { hostname } if hostname.is_empty() => Err(CliError::new(
            ErrorCode::InvalidArgument,
            "empty hostname: to remove this node's hostname, run `pilotctl clear-hostname`",
        )),
        Command::SetHostname { hostname } if hostname.is_empty() => Err(CliError::new(
            ErrorCode::InvalidArgument,
            "empty hostname: to remove this node's hostname, run `pilotctl clear-hostname`",
        )),
        Command::SetHostname { hostname } => set_hostname(cli, hostname).await,
        Command::ClearHostname => set_hostname(cli, "").await,
        Command::Find {
            hostname: Some(hostname),
            ..
        } => find(cli, hostname).await,
        Command::Find { tag, network, .. } if tag.is_empty() && network.is_none() => {
            Err(CliError::new(
                ErrorCode::InvalidArgument,
                "find needs a hostname (`pilotctl find beta`) or a tag to discover nodes by (`pilotctl find --tag citations`)",
            ))
        }
        Command::Find { tag, network, .. } => {
            super::networks::discover(cli, tag, None, network.as_deref()).await
        }
        Command::Ping(a) if a.control => ping::control_ping(cli, a).await,
        Command::Ping(a) => ping::echo_ping(cli, a).await,
        Command::Connect(a) => streams::connect(cli, a).await,
        Command::Listen(a) => streams::listen(cli, a).await,
        Command::Send(a) => streams::send(cli, a).await,
        Command::Recv(a) => streams::recv(cli, a).await,
        Command::Bench(a) => streams::bench(cli, a).await,
        Command::Connections => streams::connections(cli).await,
        Command::Disconnect { id, force } => streams::disconnect(cli, *id, *force).await,
        Command::Handshake {
            target,
            justification,
        } => trust::handshake(cli, target, justification).await,
        Command::Pending => trust::pending(cli).await,
        Command::Approve { target } => trust::approve(cli, target).await,
        Command::Reject { target, reason } => trust::reject(cli, target, reason).await,
        Command::Untrust { target } => trust::untrust(cli, target).await,
        Command::Trust => trust::list(cli).await,
        Command::SendMessage(a) => super::messages::send_message(cli, a).await,
        Command::Inbox { clear, from, limit } => {
            super::messages::mailbox(cli, "inbox", *clear, from.as_deref(), *limit).await
        }
        Command::SendFile(a) => super::messages::send_file(cli, a).await,
        Command::Received { clear, limit } => {
            super::messages::mailbox(cli, "received", *clear, None, *limit).await
        }
        Command::Publish {
            target,
            topic,
            data,
        } => super::messages::publish(cli, target, topic, data).await,
        Command::Subscribe {
            target,
            topic,
            count,
            timeout,
        } => super::messages::subscribe(cli, target, topic, *count, timeout.as_deref()).await,
        Command::Config(a) => config_cmd::run(cli, a).await,
        Command::Context => super::context::run(cli),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Generated into memory first: clap_complete panics on a write
            // error, and a reader that stops early (`| head`) is not one.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "pilotctl", &mut script);
            let mut out = std::io::stdout().lock();
            match out.write_all(&script).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(super::client::io_err("stdout", e))
                }
                _ => Ok(()),
            }
        }
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

/// Without `--socket` or `PILOT_SOCKET`, the socket comes from config.json:
/// a damaged file is an error naming it, not a silent fall-back to the
/// default socket (which may be another user's daemon, or none).
fn check_config_for_socket(cli: &Cli) -> Result<(), CliError> {
    let from_env = std::env::var_os("PILOT_SOCKET").is_some_and(|s| !s.is_empty());
    if cli.socket.is_some() || from_env {
        return Ok(());
    }
    let needs_socket = !matches!(
        cli.command,
        Command::Config(_)
            | Command::Completions { .. }
            | Command::Context
            | Command::Daemon(DaemonCommand::Start(_))
    );
    if needs_socket {
        config_cmd::load(&Paths::from_env())?;
    }
    Ok(())
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
            ("Metrics", d.metrics.clone().unwrap_or_else(|| "off".into())),
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
                    if p.segment == 0 {
                        "-".into()
                    } else {
                        p.segment.to_string()
                    },
                    p.last_seen_ms
                        .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &[
                "ADDRESS",
                "PATH",
                "ENDPOINT",
                "ENCRYPTED",
                "SEGMENT",
                "LAST SEEN",
            ],
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
