//! Batched UDP I/O for the tunnel socket: generic segmentation offload on
//! send (`UDP_SEGMENT`: many equal-size datagrams in one `sendmsg`) and
//! generic receive offload (`UDP_GRO`: the kernel hands over runs of
//! datagrams from one sender in one buffer, with their size in a control
//! message).
//!
//! Why: at 1,373-byte segments a fast stream is hundreds of thousands of
//! datagrams per second, and one system call per datagram is then the whole
//! cost. Batching is invisible on the wire (peers still see ordinary
//! datagrams). Where the kernel refuses either option we fall back to one
//! datagram per call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// `UDP_SEGMENT` (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h).
const UDP_GRO: libc::c_int = 104;
/// Most bytes in one GSO send: the whole batch goes down as one UDP
/// datagram of at most 65,535 bytes (IP's length field) before the kernel
/// cuts it; 65,000 leaves room for the headers.
const MAX_BATCH_BYTES: usize = 65_000;
/// Most datagrams the kernel accepts in one GSO send (UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;

/// Asks the kernel to coalesce received datagrams; false if unsupported.
pub fn enable_gro(socket: &UdpSocket) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a valid fd with a pointer to a live int.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Sets the socket buffers (best effort; the kernel caps them).
pub fn set_buffers(socket: &UdpSocket, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt on a valid fd with a pointer to a live int.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends `buf` as datagrams of `segment` bytes (the last may be shorter) to
/// `dest` in one call. Non-blocking: `WouldBlock` when the socket is full.
pub fn send_segments(
    socket: &UdpSocket,
    buf: &[u8],
    dest: SocketAddr,
    segment: usize,
) -> io::Result<()> {
    let (mut name, namelen) = to_sockaddr(dest);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying a u16, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain old data; all-zero is valid before filling.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if segment < buf.len() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
        // SAFETY: msg_control points at `control`, large enough for one
        // cmsg with a u16 (CMSG_SPACE(2) <= 32 bytes), so CMSG_FIRSTHDR is
        // non-null and its data area is writable.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
    }
    socket.try_io(Interest::WRITABLE, || {
        // SAFETY: msg and everything it points to live across the call.
        let r = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

/// Receives one datagram, or one GRO run of datagrams from one sender.
/// Returns (bytes, sender, segment size: each datagram in the buffer is
/// this long except possibly the last).
pub fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    socket.try_io(Interest::READABLE, || {
        // SAFETY: msghdr is plain old data.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: all pointers in msg reference live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut segment = n;
        // SAFETY: the kernel filled msg_control with well-formed cmsgs of
        // at most msg_controllen bytes; the CMSG_* macros walk them.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    if size > 0 {
                        segment = size as usize;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let from =
            from_sockaddr(&name).ok_or_else(|| io::Error::other("unknown address family"))?;
        Ok((n, from, segment.max(1)))
    })
}

/// Datagrams queued for one `sendmsg` to one destination.
#[derive(Default)]
pub struct TxBatch {
    /// The queued frames are `buf[..len]`; bytes past `len` are room kept
    /// from earlier batches, so staging does not zero it again (zeroing
    /// each staged frame's room was 2 % of a fast sender's CPU).
    buf: Vec<u8>,
    len: usize,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
    /// False once the kernel refused GSO.
    pub gso_failed: bool,
    /// Where the room given out by [`Self::stage`] starts, until pushed,
    /// and its size.
    staged: Option<usize>,
    staged_cap: usize,
}

impl TxBatch {
    /// Queues `frame` for `dest`, flushing first when it cannot join the
    /// current batch (other destination, larger frame, batch full or
    /// already ended by a shorter frame). Returns datagrams sent by a flush.
    pub fn push(&mut self, socket: &UdpSocket, frame: &[u8], dest: SocketAddr) -> usize {
        self.unstage();
        let mut sent = 0;
        if self.count > 0
            && (self.dest != Some(dest)
                || frame.len() > self.segment
                || self.closed
                || self.count >= MAX_SEGMENTS
                || self.len + frame.len() > MAX_BATCH_BYTES)
        {
            sent = self.flush(socket);
        }
        self.append(frame);
        sent + self.joined(socket, frame.len(), dest)
    }

    /// Copies `frame` after the queued frames.
    fn append(&mut self, frame: &[u8]) {
        let end = self.len + frame.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[self.len..end].copy_from_slice(frame);
        self.len = end;
    }

    /// Counts a frame of `len` bytes for `dest` just appended to `buf`
    /// (by [`Self::push`] or [`Self::push_staged`]): it starts the batch or
    /// joins it, and a shorter one ends it. Returns datagrams sent (each
    /// frame goes at once once GSO has failed).
    fn joined(&mut self, socket: &UdpSocket, len: usize, dest: SocketAddr) -> usize {
        if self.count == 0 {
            self.dest = Some(dest);
            self.segment = len;
            self.closed = false;
        }
        self.count += 1;
        if len < self.segment {
            self.closed = true;
        }
        if self.gso_failed {
            self.flush(socket)
        } else {
            0
        }
    }

    /// Room for a frame of up to `cap` bytes, written in place at the end
    /// of the batch: what [`Self::push_staged`] then queues without the
    /// copy [`Self::push`] makes (a stream's sealed segments, up to 32 KB
    /// each, were copied from the daemon's frame buffer into the batch;
    /// issue 14 item 4). Sends the batch first when a frame of `cap` bytes
    /// could not join it. Room staged and not pushed is dropped by the
    /// next `stage`, `push` or `flush`.
    pub fn stage(&mut self, socket: &UdpSocket, cap: usize) -> &mut [u8] {
        self.unstage();
        if self.count > 0
            && (self.closed || self.count >= MAX_SEGMENTS || self.len + cap > MAX_BATCH_BYTES)
        {
            self.flush(socket);
        }
        let base = self.len;
        self.staged = Some(base);
        self.staged_cap = cap;
        if self.buf.len() < base + cap {
            self.buf.resize(base + cap, 0);
        }
        &mut self.buf[base..base + cap]
    }

    /// Queues the first `len` bytes of what [`Self::stage`] returned as a
    /// frame for `dest`. Returns datagrams sent by a flush.
    pub fn push_staged(&mut self, socket: &UdpSocket, len: usize, dest: SocketAddr) -> usize {
        let Some(base) = self.staged.take() else {
            return 0;
        };
        let len = len.min(self.staged_cap);
        let mut sent = 0;
        if self.count > 0 && (self.dest != Some(dest) || len > self.segment) {
            // Rare (another destination, or a frame larger than the
            // batch's): send what was queued before it, then start a batch
            // with it.
            let frame = self.buf[base..base + len].to_vec();
            self.len = base;
            sent = self.flush(socket);
            self.append(&frame);
        } else {
            self.len = base + len;
        }
        sent + self.joined(socket, len, dest)
    }

    /// Drops room staged and not pushed.
    fn unstage(&mut self) {
        if let Some(base) = self.staged.take() {
            self.len = base;
        }
    }

    /// Sends what is queued; returns the number of datagrams.
    pub fn flush(&mut self, socket: &UdpSocket) -> usize {
        self.unstage();
        let (Some(dest), count) = (self.dest, self.count) else {
            return 0;
        };
        if count == 0 {
            return 0;
        }
        let buf = &self.buf[..self.len];
        let mut ok = false;
        if count > 1 && !self.gso_failed {
            match send_segments(socket, buf, dest, self.segment) {
                Ok(()) => ok = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ok = true, // dropped, like a full queue
                Err(e) => {
                    tracing::debug!("UDP GSO unavailable ({e}); sending datagrams one by one");
                    self.gso_failed = true;
                }
            }
        }
        if !ok {
            for chunk in buf.chunks(self.segment.max(1)) {
                if let Err(e) = socket.try_send_to(chunk, dest) {
                    tracing::debug!("udp send to {dest}: {e}");
                }
            }
        }
        self.len = 0;
        self.count = 0;
        self.dest = None;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames staged in place and frames pushed by copy arrive as the
    /// datagrams they were, in order, whatever batches they end up in
    /// (another destination, a larger frame, a shorter one that ends a
    /// batch, a full batch, room staged and never pushed).
    #[tokio::test]
    async fn staged_and_copied_frames_arrive_as_sent() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (da, db) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // A fresh socket's readiness is unknown to tokio until the reactor
        // reports it (sends would be dropped as WouldBlock until then).
        tx.writable().await.unwrap();
        // Receivers read as the frames come (a socket's receive buffer
        // would overflow otherwise), until 500 ms of silence.
        let receiver = |sock: UdpSocket| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 70_000];
                let quiet = std::time::Duration::from_millis(500);
                while let Ok(Ok(n)) = tokio::time::timeout(quiet, sock.recv(&mut buf)).await {
                    got.push(buf[..n].to_vec());
                }
                got
            })
        };
        let (ra, rb) = (receiver(a), receiver(b));
        let mut batch = TxBatch::default();
        let mut want: (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        let sizes = [
            1400, 1400, 1400, 900, 1400, 8000, 8000, 20_000, 20_000, 20_000, 64, 1400,
        ];
        for (i, &size) in sizes.iter().cycle().take(120).enumerate() {
            let frame: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            let dest = if i % 17 < 12 { da } else { db };
            match i % 3 {
                0 => {
                    batch.push(&tx, &frame, dest);
                }
                _ => {
                    let room = batch.stage(&tx, size + 100);
                    room[..size].copy_from_slice(&frame);
                    if i % 11 == 0 {
                        // Staged and dropped: nothing goes out.
                        continue;
                    }
                    batch.push_staged(&tx, size, dest);
                }
            }
            if dest == da {
                want.0.push(frame);
            } else {
                want.1.push(frame);
            }
            // Let the receivers keep up with the loopback queue.
            if i % 8 == 7 {
                batch.flush(&tx);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                tx.writable().await.unwrap();
            }
        }
        batch.flush(&tx);
        for (got, frames) in [(ra.await.unwrap(), &want.0), (rb.await.unwrap(), &want.1)] {
            assert_eq!(got.len(), frames.len(), "datagrams received");
            for (k, (g, f)) in got.iter().zip(frames).enumerate() {
                assert!(
                    g == f,
                    "datagram {k}: got {} bytes starting {:?}, want {} starting {:?}",
                    g.len(),
                    &g[..g.len().min(4)],
                    f.len(),
                    &f[..4]
                );
            }
        }
    }
}
