//! Moving a stream's bytes between the daemon's socket and pilotctl's
//! stdin or stdout with `splice(2)`, so that they never pass through
//! pilotctl's memory.
//!
//! Why: `pilotctl connect < file` and `pilotctl listen > file` are byte
//! pumps, and copying each byte into a buffer and out again was a third of
//! the CPU the whole overlay spends on a bulk stream (BENCHMARKS.md, "The
//! loop does the IPC socket's I/O"). With splice the kernel moves page
//! references (socket to pipe, pipe to socket) or copies once (a file to a
//! pipe, a pipe to a file).
//!
//! One end must be a pipe: when neither is, the bytes go through a pipe of
//! our own. Where the kernel cannot splice (a terminal, whose output is
//! sanitised anyway; a file opened for appending; an exotic descriptor),
//! [`copy`] says so before it moved anything and the caller falls back to
//! reading and writing.
//!
//! Hand-written over `libc::splice`: the call and `pipe2` are the whole
//! API, one unsafe line each, not worth another crate.

use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Bytes asked of one splice call: as much as the pipe holds.
const BLOCK: usize = 1 << 20;
/// Capacity asked for our own pipe (the default 64 KiB means a wake-up per
/// 16 pages; the kernel caps this at `/proc/sys/fs/pipe-max-size`, 1 MiB
/// by default, and a refusal keeps the default).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// How a copy ended.
#[derive(Debug)]
pub enum Copied {
    /// Until end of file, this many bytes.
    Done(u64),
    /// The kernel cannot splice between these descriptors; nothing moved.
    Unsupported,
}

/// Copies from `from` to `to` until `from` reaches end of file, with
/// `on_bytes` told after each block. Errors after bytes moved are errors;
/// before, a descriptor the kernel cannot splice is [`Copied::Unsupported`].
pub fn copy(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    mut on_bytes: impl FnMut(u64) -> io::Result<()>,
) -> io::Result<Copied> {
    if appends(to) {
        // splice(2) refuses files opened with O_APPEND.
        return Ok(Copied::Unsupported);
    }
    let mut total = 0u64;
    if is_pipe(from) || is_pipe(to) {
        loop {
            match splice(from.as_raw_fd(), to.as_raw_fd(), BLOCK) {
                Ok(0) => return Ok(Copied::Done(total)),
                Ok(n) => {
                    total += n as u64;
                    on_bytes(n as u64)?;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if total == 0 && unsupported(&e) => return Ok(Copied::Unsupported),
                Err(e) => return Err(e),
            }
        }
    }
    let (rd, wr) = pipe()?;
    loop {
        let n = match splice(from.as_raw_fd(), wr.as_raw_fd(), BLOCK) {
            Ok(0) => return Ok(Copied::Done(total)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if total == 0 && unsupported(&e) => return Ok(Copied::Unsupported),
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match splice(rd.as_raw_fd(), to.as_raw_fd(), left) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(k) => left -= k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if total == 0 && left == n && unsupported(&e) => {
                    // `to` cannot take spliced bytes: hand over what is in
                    // our pipe the plain way, then let the caller go on so.
                    drain_plain(&rd, to, n)?;
                    on_bytes(n as u64)?;
                    return Ok(Copied::Unsupported);
                }
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        on_bytes(n as u64)?;
    }
}

/// Whether an error means "these descriptors cannot be spliced".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE | libc::EBADF)
    )
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets (both descriptors use and move their own file
    // position); no memory of ours is read or written.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A pipe (read end, write end), as large as the kernel allows us.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own; failure keeps the default size.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((rd, wr))
}

/// Moves `n` bytes from our pipe to `to` with read and write.
fn drain_plain(rd: &OwnedFd, to: BorrowedFd<'_>, n: usize) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; n];
    let mut src = std::fs::File::from(rd.try_clone()?);
    src.read_exact(&mut buf)?;
    let mut dst = std::fs::File::from(to.try_clone_to_owned()?);
    dst.write_all(&buf)
}

fn is_pipe(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fstat fills the zeroed struct it is given.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

fn appends(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL reads the descriptor's flags; no memory involved.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_APPEND != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| (i * 31 + i / 4093) as u8)
            .collect()
    }

    /// A socket pair with `bytes` written into one end by a thread.
    fn source(bytes: Vec<u8>) -> std::os::unix::net::UnixStream {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::spawn(move || b.write_all(&bytes).unwrap());
        a
    }

    #[test]
    fn socket_to_file_through_our_pipe_and_to_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let want = data();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let mut seen = 0;
        let r = copy(source(want.clone()).as_fd(), file.as_fd(), |n| {
            seen += n;
            Ok(())
        })
        .unwrap();
        assert!(
            matches!(r, Copied::Done(n) if n == want.len() as u64),
            "{r:?}"
        );
        assert_eq!(seen, want.len() as u64);
        assert!(std::fs::read(&path).unwrap() == want);

        let (rd, wr) = pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::fs::File::from(rd).read_to_end(&mut got).unwrap();
            got
        });
        let r = copy(source(want.clone()).as_fd(), wr.as_fd(), |_| Ok(())).unwrap();
        drop(wr);
        assert!(
            matches!(r, Copied::Done(n) if n == want.len() as u64),
            "{r:?}"
        );
        assert!(reader.join().unwrap() == want);
    }

    #[test]
    fn an_appending_file_is_left_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let r = copy(source(b"abc".to_vec()).as_fd(), file.as_fd(), |_| Ok(())).unwrap();
        assert!(matches!(r, Copied::Unsupported), "{r:?}");
        assert!(std::fs::read(&path).unwrap().is_empty());
    }
}
