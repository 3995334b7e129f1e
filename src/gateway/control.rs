//! The gateway's own control socket: `map`, `unmap`, `list` and `stop` on a
//! running gateway. Same framing as the daemon's IPC (length-prefixed JSON,
//! [`crate::ipc::read_message`]) and the same response envelope, so
//! `--json` output passes through unchanged. The socket is owner-only
//! (mode 0600): whoever may drive the gateway may redirect local traffic.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};

use super::table::Mapping;
use crate::ipc::{read_message, write_message, ErrorCode, Response};

/// A request to a running gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Map a node (address or hostname), optionally at a chosen IP.
    Map {
        /// Address, node id or hostname.
        target: String,
        /// The local IP wanted.
        #[serde(default)]
        ip: Option<Ipv4Addr>,
    },
    /// Remove a mapping by IP, address or hostname.
    Unmap {
        /// The key.
        key: String,
    },
    /// The table and the gateway's settings.
    List,
    /// Stop the gateway.
    Stop,
}

/// `list`: what a running gateway serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    /// Gateway process id.
    pub pid: u32,
    /// TUN device name.
    pub device: String,
    /// The subnet routed to the TUN.
    pub subnet: String,
    /// The kernel side of the TUN (DNS listens here).
    pub gateway_ip: Ipv4Addr,
    /// Allowed ports (empty: every port).
    pub ports: Vec<u16>,
    /// Whether DNS for `.pilot` is served.
    pub dns: bool,
    /// The daemon socket used for dials.
    pub daemon_socket: String,
    /// Open TCP connections.
    pub connections: usize,
    /// The mappings.
    pub mappings: Vec<Mapping>,
}

/// Binds the control socket owner-only, replacing a stale one (a live
/// gateway on it is an error).
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if crate::ipc::socket_in_use(path).await {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a gateway is already running on {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = crate::config::create_private_dir(dir);
    }
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    let l = l?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No gateway answers.
    #[error("no gateway is running on {0} (start one with `pilot-gateway start`)")]
    NotRunning(String),
    /// The socket failed.
    #[error("gateway control socket: {0}")]
    Io(String),
    /// The gateway answered with an error.
    #[error("{message}")]
    Gateway {
        /// Error class.
        code: ErrorCode,
        /// One line.
        message: String,
    },
}

impl ControlError {
    /// The error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::NotRunning(_) => ErrorCode::DaemonNotRunning,
            ControlError::Io(_) => ErrorCode::Internal,
            ControlError::Gateway { code, .. } => *code,
        }
    }
}

/// Sends one request to the gateway at `path`.
pub async fn call(
    path: &Path,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    let mut s = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path.display().to_string()))
        }
        Err(e) => return Err(ControlError::Io(format!("{}: {e}", path.display()))),
    };
    let work = async {
        write_message(&mut s, req)
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        read_message::<_, Response>(&mut s)
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?
            .ok_or_else(|| ControlError::Io("the gateway closed the connection".into()))
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(ControlError::Io(format!(
            "the gateway did not answer within {timeout:?}"
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Response::Ok { data })) => Ok(data),
        Ok(Ok(Response::Error { code, message })) => Err(ControlError::Gateway { code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged() {
        let r = ControlRequest::Map {
            target: "beta".into(),
            ip: Some(Ipv4Addr::new(10, 4, 0, 9)),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"map","target":"beta","ip":"10.4.0.9"}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&s).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<ControlRequest>(r#"{"cmd":"list"}"#).unwrap(),
            ControlRequest::List
        );
    }
}
