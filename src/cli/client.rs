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
use crate::wire::address::{is_valid_hostname, parse_target};

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
    if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        // All digits is a node id, never a hostname (parse_target would
        // otherwise take an out-of-range id for a hostname).
        if target.parse::<u32>().is_err() {
            return Err(CliError::new(
                ErrorCode::InvalidAddress,
                format!(
                    "node id {target} is out of range (0-{}); a full address looks like 0:0000.0000.002A",
                    u32::MAX
                ),
            ));
        }
    }
    parse_target(target).map(|_| ()).map_err(|e| {
        let lower = target.to_ascii_lowercase();
        let hint = if lower != target && is_valid_hostname(&lower) {
            format!("; hostnames are lower-case: did you mean {lower:?}?")
        } else {
            "; hostnames are lower-case a-z, 0-9 and '-'".to_string()
        };
        CliError::new(ErrorCode::InvalidAddress, format!("{e}{hint}"))
    })
}

/// Asks the registry (through the daemon) whether `target` exists, so a
/// node id or hostname nobody has answers `not_found` at once instead of
/// after the dial's ~29 s. Any other failure (registry down: tunnels work
/// without it) lets the caller go on.
pub(super) async fn preflight(cli: &Cli, target: &str) -> Result<(), CliError> {
    let req = Request::Lookup {
        target: target.into(),
    };
    match call::<serde_json::Value>(cli, &req).await {
        Err(e) if e.code == ErrorCode::NotFound || e.code == ErrorCode::DaemonNotRunning => Err(e),
        _ => Ok(()),
    }
}

/// An I/O failure as a CLI error naming what failed. A path that does
/// not exist or may not be read is the user's argument, not our fault.
pub(super) fn io_err(what: &str, e: std::io::Error) -> CliError {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::NotFound | K::PermissionDenied | K::IsADirectory | K::InvalidFilename => {
            ErrorCode::InvalidArgument
        }
        _ => ErrorCode::Internal,
    };
    CliError::new(code, format!("{what}: {e}"))
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
