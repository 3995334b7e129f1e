//! One identity, one daemon (issue 10 item 8): an exclusive `flock` on
//! `daemon.lock` in the node's state directory (the identity file's
//! directory, `~/.pilot` by default), held for the daemon's whole life.
//!
//! Without it a second daemon with the same identity but another socket came
//! up with the same address, took over the registration and deregistered
//! the node when it stopped. The lock file holds the owner's pid so the
//! refusal can name the running daemon; the kernel drops the lock when the
//! process dies, so a crash never leaves a stale lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    /// The lock file.
    pub path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another pilot-daemon{} already uses the identity in {dir} (lock {lock}); stop it first (`pilotctl daemon stop`)", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened.
    #[error("cannot open lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Takes the exclusive lock of state directory `dir` (creating it 0700).
pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
    let path = dir.join("daemon.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    crate::config::create_private_dir(dir).map_err(io)?;
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?
    };
    // SAFETY: flock on a descriptor we own; no memory is touched.
    let ok = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !ok {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(LockError::Held {
            dir: dir.to_path_buf(),
            lock: path,
            pid: text.trim().parse().ok(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(StateLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        let e = acquire(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        acquire(dir.path()).unwrap();
    }
}
