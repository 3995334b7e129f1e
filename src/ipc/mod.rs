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
//! [`MAX_MESSAGE`] bytes). A control request gets exactly one response (a
//! ping series, [`Request::Ping`] with a count, one per ping). The
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

/// How long a process killed with SIGKILL may keep its listening socket.
/// The kernel closes the listener only once the process's last thread has
/// exited (the main thread shows as a zombie before that); until then a
/// connect succeeds into the backlog and is reset when the listener goes.
/// Teardown of a daemon takes milliseconds; 3 s covers a loaded machine
/// (CI hit this window right after `kill -9` of a daemon).
pub const DYING_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a live server gets to show that it is not closing our probe
/// connection. A live daemon or gateway never speaks first.
const SILENT_ALIVE: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether a process serves the Unix socket at `path` (so its file must not
/// be replaced). A listener that resets or closes our probe connection is a
/// process on its way out: we wait for it to go, up to [`DYING_WAIT`], and
/// count it as serving if it is still there then.
pub async fn socket_in_use(path: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + DYING_WAIT;
    loop {
        let Ok(mut s) = tokio::net::UnixStream::connect(path).await else {
            return false;
        };
        let mut b = [0u8; 1];
        match tokio::time::timeout(SILENT_ALIVE, s.read(&mut b)).await {
            Err(_) | Ok(Ok(1..)) => return true,
            Ok(_) => {}
        }
        if std::time::Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether an I/O error on a fresh IPC connection means the server is
/// exiting (its listener closed under our connection, see [`DYING_WAIT`]).
pub fn is_dying(e: &FrameError) -> bool {
    matches!(e, FrameError::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
    ))
}

/// `SO_SNDBUF` asked for on the socket of a stream that moves bulk data
/// (the kernel doubles it, and caps it at `net.core.wmem_max`). Measured on
/// loopback, 1 GiB through `pilotctl connect` (BENCHMARKS.md, "IPC socket
/// buffers"): 704-1,462 MB/s with the default, 1,508-1,802 MB/s with 256 KiB,
/// 512 KiB or 4 MiB, and about a quarter less CPU in the four processes.
/// 512 KiB keeps the kernel's share of a stalled application's stream at
/// 1 MiB.
pub const STREAM_SOCKET_BUFFER: usize = 512 << 10;

/// Sets `SO_SNDBUF` on a Unix socket (best effort; the kernel caps it at
/// `net.core.wmem_max`). On a Unix stream socket the sender's buffer is the
/// whole queue between the two processes, and its default (212,992 bytes)
/// makes a 1 GB/s stream wake both ends every ~200 µs.
pub fn set_send_buffer(fd: &impl std::os::fd::AsRawFd, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt on a valid fd with a pointer to a live int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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

/// One length-prefixed JSON message, as [`write_message`] writes it.
pub fn encode_message<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one length-prefixed JSON message.
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: serde::Serialize,
{
    let out = encode_message(msg)?;
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_missing_or_stale_socket_is_free_and_a_listening_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(!socket_in_use(&path).await);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(socket_in_use(&path).await);
        drop(l);
        // The file stays; nobody listens.
        assert!(path.exists());
        assert!(!socket_in_use(&path).await);
    }

    #[tokio::test]
    async fn a_listener_closing_under_the_probe_is_waited_for() {
        // What a daemon killed with SIGKILL looks like while its threads
        // exit: the connect succeeds, then the listener goes and resets it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(l);
        });
        let start = Instant::now();
        assert!(
            !socket_in_use(&path).await,
            "an exiting listener is not in use"
        );
        assert!(start.elapsed() < DYING_WAIT);
        t.join().unwrap();
    }

    #[tokio::test]
    async fn an_exiting_daemon_resets_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(l);
        let e = read_message::<_, Response>(&mut s).await;
        match e {
            Err(e) => assert!(is_dying(&e), "{e}"),
            Ok(None) => {} // a clean EOF is the other form it takes
            Ok(Some(r)) => panic!("{r:?}"),
        }
    }
}
