//! The IPC client used by `pilotctl` (and later `pilot-gateway`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::proto::{ErrorCode, Request, Response};
use super::{read_message, write_message, FrameError};

/// Why an IPC request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (or the file is missing / stale).
    #[error("no daemon is running on {socket} (start one with `pilotctl daemon start`)")]
    NotRunning {
        /// The socket path tried.
        socket: PathBuf,
    },
    /// The socket exists but we may not use it.
    #[error("cannot open {socket}: {source}")]
    Connect {
        /// The socket path tried.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon closed the connection or sent garbage.
    #[error("daemon connection failed: {0}")]
    Frame(#[from] FrameError),
    /// The socket (or the process behind it) belongs to another user.
    #[error("refusing {socket}: {why}; another user may be impersonating the daemon (remove it or pass --socket)")]
    Foreign {
        /// The socket path tried.
        socket: PathBuf,
        /// Who owns it.
        why: String,
    },
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// Its error class.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

impl ClientError {
    /// The error class to report to the user.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::NotRunning { .. } => ErrorCode::DaemonNotRunning,
            ClientError::Connect { .. } | ClientError::Frame(_) => ErrorCode::Internal,
            ClientError::Foreign { .. } => ErrorCode::DaemonNotRunning,
            ClientError::Timeout(_) => ErrorCode::Timeout,
            ClientError::Daemon { code, .. } => *code,
        }
    }
}

/// One connection to the daemon's socket.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the daemon at `socket`.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let me = super::my_uid();
        let foreign = |why: String| ClientError::Foreign {
            socket: socket.to_path_buf(),
            why,
        };
        if let Ok(m) = std::fs::symlink_metadata(socket) {
            if !m.file_type().is_socket() {
                return Err(foreign("it is not a socket".into()));
            }
            if !super::uid_trusted(m.uid(), me) {
                return Err(foreign(format!("it is owned by uid {}, not {me}", m.uid())));
            }
        }
        match UnixStream::connect(socket).await {
            Ok(stream) => {
                let uid =
                    stream
                        .peer_cred()
                        .map(|c| c.uid())
                        .map_err(|source| ClientError::Connect {
                            socket: socket.to_path_buf(),
                            source,
                        })?;
                if !super::uid_trusted(uid, me) {
                    return Err(foreign(format!("the process behind it runs as uid {uid}")));
                }
                Ok(Client { stream })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(ClientError::NotRunning {
                    socket: socket.to_path_buf(),
                })
            }
            Err(source) => Err(ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            }),
        }
    }

    /// Sends one request and waits (at most `timeout`) for its response.
    pub async fn request(
        &mut self,
        req: &Request,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, write_message(&mut self.stream, req))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        self.response_by(deadline, timeout).await
    }

    /// Waits (at most `timeout`) for the next response: the one to a
    /// request, or the next of a series (a [`Request::Ping`] with a count).
    pub async fn response(&mut self, timeout: Duration) -> Result<serde_json::Value, ClientError> {
        self.response_by(tokio::time::Instant::now() + timeout, timeout)
            .await
    }

    /// [`Self::response`] with an absolute `deadline` (`timeout` names it
    /// in the error), so that a request's write and read share one bound.
    async fn response_by(
        &mut self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let fut = async {
            match read_message::<_, Response>(&mut self.stream).await? {
                Some(r) => Ok(r),
                None => Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "daemon closed the connection",
                ))),
            }
        };
        let resp = tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        match resp {
            Response::Ok { data } => Ok(data),
            Response::Error { code, message } => Err(ClientError::Daemon { code, message }),
        }
    }

    /// The underlying stream, for commands that turn into raw byte streams.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}
