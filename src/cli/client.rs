//! What every pilotctl command that talks to a daemon shares: finding the
//! socket, one request/response call, opening a stream, target checks.
//!
//! It sits below the command modules (`commands`, `streams`, `ping`,
//! `daemon_ctl`), which use it and never each other, so the module graph
//! has no cycles.

use std::time::Duration;

use tokio::net::UnixStream;

use super::{Cli, CliError};
use crate::config::{Config, Paths};
use crate::ipc::proto::StreamData;
use crate::ipc::{Client, ErrorCode, Request};
use crate::wire::address::parse_target;

/// Registry round trips may need a reconnect; give them time.
pub(super) const IPC_TIMEOUT: Duration = Duration::from_secs(15);

/// The daemon's socket: `--socket`, else the configured or default path.
pub(super) fn socket_path(cli: &Cli) -> std::path::PathBuf {
    let paths = Paths::from_env();
    let config = Config::load(&paths.config()).unwrap_or_default();
    paths.socket(cli.socket.as_deref(), &config)
}

/// One request, its reply decoded as `T`.
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

/// An I/O failure as a CLI error naming what failed.
pub(super) fn io_err(what: &str, e: std::io::Error) -> CliError {
    CliError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Opens a stream through the daemon: after the reply, the returned socket
/// carries the stream's raw bytes.
pub(super) async fn dial(
    cli: &Cli,
    target: &str,
    port: u16,
    timeout: Duration,
) -> Result<(UnixStream, StreamData), CliError> {
    let mut client = Client::connect(&socket_path(cli)).await?;
    let req = Request::Dial {
        target: target.to_string(),
        port,
        timeout_ms: timeout.as_millis() as u64,
    };
    let v = client.request(&req, timeout + IPC_TIMEOUT).await?;
    let info: StreamData = serde_json::from_value(v)
        .map_err(|e| CliError::new(ErrorCode::Internal, format!("unexpected dial reply: {e}")))?;
    Ok((client.into_stream(), info))
}

/// The address part of a stream's `remote` (`addr:port`).
pub(super) fn remote_addr(info: &StreamData) -> String {
    info.remote
        .rsplit_once(':')
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| info.remote.clone())
}
