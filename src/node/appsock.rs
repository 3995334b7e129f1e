//! An IPC client's stream socket, read and written by the event loop
//! itself (`pilotctl connect`, `pilotctl listen`, the gateway).
//!
//! Why the loop does the I/O: on a bulk stream the IPC side cost about as
//! much CPU as the tunnel (BENCHMARKS.md, "IPC socket buffers"). Each byte
//! from the application was read by a pump task into a fresh vector, queued
//! to the loop and copied into the stream's send buffer; each byte to it
//! was copied out of the receive buffer into a vector, queued, and written
//! by the task. Here the loop reads the socket straight into the send buffer
//! ([`Connection::send_with`]) and writes it straight from the receive
//! buffer ([`Connection::recv_with`]): two copies and two task hops per
//! chunk less, and no per-stream read buffer for 10,000 idle streams.
//!
//! The loop never waits on the socket. It tries, and on `WouldBlock` asks
//! the socket's watcher task (`ipc_server`) to say when the socket is ready
//! again ([`Wake`]; the watcher answers with `Cmd::AppReadable` /
//! `Cmd::AppWritable`). The watcher also keeps the loop off the socket until
//! the IPC reply that precedes the stream's bytes has been written: a link
//! starts neither readable nor writable. Flow control is the stream's own:
//! the loop reads only while the send buffer has room (the application then
//! blocks in its socket), and the receive window stays closed while the
//! application's socket is full.
//!
//! Chunks to and from in-process services and exposed TCP ports keep the
//! queued path ([`super::stream_table::ChanLink`]).

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

use crate::stream::Connection;

/// Largest read from the application at once; reads start at
/// `FIRST_READ` and double while they fill the offer (most streams are
/// chatty, and a chatty stream's send buffer stays small).
const MAX_READ: usize = 256 * 1024;
/// First read size of a stream: the send buffer's smallest allocation
/// ([`crate::stream`]'s ring), so an idle or chatty stream's buffer stays
/// at that (10,000 idle streams must stay cheap).
const FIRST_READ: usize = 4096;
/// Bytes a stream carries to its application before its socket gets
/// [`crate::ipc::STREAM_SOCKET_BUFFER`]: past a few round trips of chatter,
/// below a second of a slow bulk transfer.
const BULK_AFTER: usize = 1 << 20;
/// How long the bytes of an ended stream wait for an application that has
/// stopped reading: generous for a paused reader, and the memory of a
/// reader that never comes back is given back.
const LEFTOVER_PATIENCE: Duration = Duration::from_secs(60);

/// Streams that ended by a reset, newest last (bounded).
static RESETS: std::sync::Mutex<std::collections::VecDeque<u64>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// Reset stream ids remembered for `Request::StreamEnded`.
const MAX_RESETS: usize = 1024;

/// Records that stream `id` ended by a reset.
fn note_reset(id: u64) {
    let mut r = RESETS.lock().unwrap_or_else(|e| e.into_inner());
    if r.len() >= MAX_RESETS {
        r.pop_front();
    }
    r.push_back(id);
}

/// Whether stream `id` ended by a reset (recently).
pub fn was_reset(id: u64) -> bool {
    RESETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&id)
}

/// The loop's requests to the watcher: "tell me when the socket is
/// readable / writable again".
#[derive(Debug, Default)]
pub struct Wake {
    /// Asked after a read hit `WouldBlock`.
    pub read: Notify,
    /// Asked after a write hit `WouldBlock`.
    pub write: Notify,
}

/// The loop's end of an application socket.
#[derive(Debug)]
pub struct SockLink {
    sock: Arc<UnixStream>,
    wake: Arc<Wake>,
    /// To the watcher when the stream leaves the loop ([`Self::retire`]);
    /// dropped unsent when the application is gone: the watcher then ends.
    done: Option<oneshot::Sender<Leftover>>,
    /// The watcher has reported once: the IPC reply is out, and the loop
    /// may use the socket.
    pub live: bool,
    /// The socket may hold bytes (the watcher said so; no `WouldBlock` since).
    pub readable: bool,
    /// The socket may take bytes.
    pub writable: bool,
    read_size: usize,
    delivered: usize,
    /// The stream ended by a reset or timeout rather than a close.
    pub reset: bool,
    write_closed: bool,
}

/// The watcher's end.
#[derive(Debug)]
pub struct SockEnd {
    /// The application's socket (shared with the loop).
    pub sock: Arc<UnixStream>,
    /// Requests from the loop.
    pub wake: Arc<Wake>,
    /// What is left to do when the stream leaves the loop (an error when
    /// the loop dropped its end with nothing left to do).
    pub done: oneshot::Receiver<Leftover>,
}

/// The end of a stream the loop no longer has, for the watcher to finish.
#[derive(Debug)]
pub struct Leftover {
    /// Bytes received that the application has not read yet.
    pub rest: Vec<u8>,
    /// Record a reset before the application reads end of file.
    pub reset: bool,
}

impl Leftover {
    /// Writes the rest and ends the stream for the application (giving up
    /// on an application that does not read for `LEFTOVER_PATIENCE`).
    pub async fn finish(self, sock: &UnixStream, id: u64) {
        if self.reset {
            note_reset(id);
        }
        let write = write_all(sock, &self.rest);
        if matches!(
            tokio::time::timeout(LEFTOVER_PATIENCE, write).await,
            Ok(Ok(()))
        ) {
            shutdown_write(sock);
        }
    }
}

/// Writes all of `bytes` to a socket the loop shares (the loop only tries
/// its writes; this waits for room).
pub async fn write_all(sock: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        sock.writable().await?;
        match sock.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The two ends for the application socket `sock`.
pub fn sock_pair(sock: UnixStream) -> (SockLink, SockEnd) {
    let sock = Arc::new(sock);
    let wake = Arc::new(Wake::default());
    let (tx, rx) = oneshot::channel();
    (
        SockLink {
            sock: sock.clone(),
            wake: wake.clone(),
            done: Some(tx),
            live: false,
            readable: false,
            writable: false,
            read_size: FIRST_READ,
            delivered: 0,
            reset: false,
            write_closed: false,
        },
        SockEnd {
            sock,
            wake,
            done: rx,
        },
    )
}

/// What one call moved, and how the socket ended if it did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes moved.
    pub bytes: usize,
    /// The application finished sending (read end of file).
    pub eof: bool,
    /// The socket failed (the application is gone).
    pub failed: bool,
}

impl SockLink {
    /// Reads what the application wrote into `conn`'s send buffer, as far
    /// as the buffer has room.
    pub fn pull(&mut self, conn: &mut Connection) -> Moved {
        let mut m = Moved::default();
        while self.readable {
            let want = self.read_size;
            let mut res = None;
            conn.send_with(want, |a, b| {
                let r = self
                    .sock
                    .try_read_vectored(&mut [IoSliceMut::new(a), IoSliceMut::new(b)]);
                let n = *r.as_ref().unwrap_or(&0);
                res = Some(r);
                n
            });
            match res {
                // The send buffer is full: pulled again when acks free room.
                None => break,
                Some(Ok(0)) => {
                    m.eof = true;
                    break;
                }
                Some(Ok(n)) => {
                    m.bytes += n;
                    if n == want && want < MAX_READ {
                        self.read_size = want * 2;
                    }
                }
                Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    self.wake.read.notify_one();
                }
                Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                Some(Err(_)) => {
                    m.failed = true;
                    break;
                }
            }
        }
        m
    }

    /// Writes `conn`'s in-order bytes to the application, as far as its
    /// socket takes them.
    pub fn push(&mut self, conn: &mut Connection) -> Moved {
        let mut m = Moved::default();
        while self.live && self.writable && !self.write_closed {
            let mut res = None;
            conn.recv_with(usize::MAX, |a, b| {
                let r = self
                    .sock
                    .try_write_vectored(&[IoSlice::new(a), IoSlice::new(b)]);
                let n = *r.as_ref().unwrap_or(&0);
                res = Some(r);
                n
            });
            match res {
                None => break, // nothing to deliver
                Some(Ok(0)) => {
                    m.failed = true;
                    break;
                }
                Some(Ok(n)) => {
                    m.bytes += n;
                    self.note_delivered(n);
                }
                Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    self.wake.write.notify_one();
                }
                Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                Some(Err(_)) => {
                    m.failed = true;
                    break;
                }
            }
        }
        m
    }

    /// A stream that has carried [`BULK_AFTER`] bytes to the application
    /// gets the larger socket buffer; chatty and idle ones (10,000 of them
    /// must stay cheap) keep the default.
    fn note_delivered(&mut self, n: usize) {
        if self.delivered < BULK_AFTER {
            self.delivered += n;
            if self.delivered >= BULK_AFTER {
                crate::ipc::set_send_buffer(&*self.sock, crate::ipc::STREAM_SOCKET_BUFFER);
            }
        }
    }

    /// Whether the application was told the stream ended.
    pub fn write_closed(&self) -> bool {
        self.write_closed
    }

    /// Ends the stream for the application: it reads end of file after the
    /// last byte. A reset is recorded first, so the application can tell
    /// it from a close (`Request::StreamEnded`). Waits (does nothing) until
    /// the link is live: the IPC reply goes first.
    pub fn close_write(&mut self, id: u64) {
        if self.write_closed || !self.live {
            return;
        }
        self.write_closed = true;
        if self.reset {
            note_reset(id);
        }
        shutdown_write(&self.sock);
    }

    /// The stream is gone from the loop: the watcher writes `rest` (bytes
    /// it received that the application has not read yet), after the IPC
    /// reply if that is not out yet, and then ends the stream for the
    /// application.
    pub fn retire(mut self, rest: Vec<u8>) {
        if self.write_closed {
            return; // ended already; dropping the link ends the watcher
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(Leftover {
                rest,
                reset: self.reset,
            });
        }
    }
}

/// `shutdown(SHUT_WR)`: the peer reads end of file, and may still write.
fn shutdown_write(sock: &UnixStream) {
    // SAFETY: shutdown on a live socket descriptor; no memory is involved.
    unsafe {
        libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR);
    }
}
