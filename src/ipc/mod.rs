//! The daemon's local control protocol: how `pilotctl` and `pilot-gateway`
//! talk to `pilot-daemon` over a Unix socket (in the user's own directory by
//! default, see [`crate::config::default_socket`], mode 0600 so only its
//! owner can drive the node).
//!
//! Both ends check who is on the other side (issue 10 item 7): the client
//! refuses a socket file owned by another user (someone else's daemon, or an
//! impostor that created the name first) and a peer whose `SO_PEERCRED` uid is
//! not ours; the daemon closes connections from other users. root counts as
//! trusted on both sides.
//!
//! Shape: every IPC connection starts with length-prefixed JSON messages
//! (u32 big-endian length, then a UTF-8 JSON object; at most
//! [`MAX_MESSAGE`] bytes). A control request gets exactly one response. The
//! stream commands (dial, accept) answer once and then turn the same
//! connection into a raw bidirectional byte stream, so a TCP connection in the
//! gateway or a pipe in `pilotctl connect` maps onto one Unix connection with
//! no framing overhead on the data path.
//!
//! JSON (not a binary format) keeps the protocol debuggable with `socat` and
//! lets `pilotctl --json` pass daemon data through unchanged.

pub mod client;
pub mod proto;

pub use client::{Client, ClientError};
pub use proto::{ErrorCode, Request, Response};

/// Largest IPC message accepted, in bytes. Control messages are small; the
/// largest are peer tables. 1 MiB bounds memory per client.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The reference's socket path (spec §11). Not our default any more (see
/// [`crate::config::default_socket`]); kept for documentation and for users
/// who set it explicitly.
pub const REFERENCE_SOCKET: &str = "/tmp/pilot.sock";

/// Whether a local peer or file owner with `uid` may be trusted by a process
/// running as `me`: the same user, or root.
pub fn uid_trusted(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}

/// Our effective uid.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors of the IPC framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or closed mid-message.
    #[error("ipc i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix above [`MAX_MESSAGE`].
    #[error("ipc message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The message was not the expected JSON.
    #[error("ipc message is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one length-prefixed JSON message. `Ok(None)` on a clean EOF before
/// the length prefix.
pub async fn read_message<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(serde_json::from_slice(&buf)?))
}

/// Writes one length-prefixed JSON message.
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: serde::Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}
