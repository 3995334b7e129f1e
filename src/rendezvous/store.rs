//! The registry's durable store: one JSON snapshot file, replaced atomically.
//!
//! Format (version 1): a single JSON object
//! `{"format":"pilot-rendezvous-store","version":1,"next_id":N,"nodes":[…],"trust":[[a,b],…]}`
//! where each node is a [`NodeRecord`](super::state::NodeRecord) (id, base64 key, owner, live flag,
//! hostname, visibility, endpoint, LAN endpoints, version, key creation time).
//! Handshake inboxes and last-seen times are not persisted: after a restart
//! every live node gets a fresh stale-timeout period to heartbeat again.
//!
//! Crash safety: a snapshot is written to `<store>.tmp`, `fsync`ed, renamed
//! over `<store>` and the directory is `fsync`ed. `rename` is atomic on POSIX
//! filesystems, so at every instant `<store>` is either the previous complete
//! snapshot or the new complete one; a crash mid-write leaves at most a stale
//! `<store>.tmp`, which is ignored and overwritten. Because the file is never
//! modified in place, a file that does not parse or fails the consistency
//! checks is real damage (or a foreign file), and loading refuses it with an
//! error naming the file instead of starting empty and losing every node.
//!
//! Durability before replies: mutations bump a generation in the registry;
//! the persister task writes the newest snapshot and publishes the generation
//! it made durable; the server holds a reply until its generation is durable.
//! Concurrent mutations share one write (group commit), so the cost is one
//! snapshot write per batch, not per request. The whole file is rewritten per
//! batch, which is fine up to ~10⁵ nodes (a few MB); a log-structured store
//! would be the next step beyond that.
//!
//! A `<store>.lock` file is `flock`ed for the lifetime of the process so two
//! servers never write the same store.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::state::{Registry, Snapshot};

/// The `format` tag of a store file.
pub const FORMAT: &str = "pilot-rendezvous-store";
/// The store format version this code reads and writes.
pub const VERSION: u32 = 1;

/// Errors opening or loading the store. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file (or its directory or lock) could not be read or created.
    #[error("store file {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file exists but is not a valid store.
    #[error("store file {path} is corrupt: {reason} (refusing to start; restore a backup or move the file aside)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the store's lock.
    #[error("store file {path} is in use by another process (lock {lock} is held)")]
    Locked {
        /// The file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    format: String,
    version: u32,
    #[serde(flatten)]
    snapshot: Snapshot,
}

/// An open store: its path and the held lock.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    _lock: File,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn lock_exclusive(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is touched.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Store {
    /// Opens (creating the directory if needed) and locks the store at
    /// `path`, and loads the registry it holds (an empty one if the file
    /// does not exist yet).
    pub fn open(path: &Path, now: Instant) -> Result<(Store, Registry), StoreError> {
        let io = |cause| StoreError::Io {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let lock_path = with_suffix(path, ".lock");
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
        }
        .map_err(io)?;
        if !lock_exclusive(&lock) {
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
                lock: lock_path,
            });
        }
        let store = Store {
            path: path.to_path_buf(),
            tmp: with_suffix(path, ".tmp"),
            _lock: lock,
        };
        let registry = match fs::read(path) {
            Ok(bytes) => store.parse(&bytes, now)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::new(),
            Err(e) => return Err(io(e)),
        };
        Ok((store, registry))
    }

    fn parse(&self, bytes: &[u8], now: Instant) -> Result<Registry, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let f: FileFormat = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if f.format != FORMAT {
            return Err(corrupt(format!(
                "format is {:?}, expected {FORMAT:?}",
                f.format
            )));
        }
        if f.version != VERSION {
            return Err(corrupt(format!("unsupported version {}", f.version)));
        }
        Registry::from_snapshot(f.snapshot, now).map_err(|e| corrupt(e.0))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the store with `snapshot` (temp + fsync + rename
    /// + directory fsync).
    pub fn write(&self, snapshot: Snapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&FileFormat {
            format: FORMAT.into(),
            version: VERSION,
            snapshot,
        })
        .map_err(std::io::Error::other)?;
        // Owner-only: the store holds every node's owner e-mail and address
        // (issue 10 item 9).
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.tmp)?
        };
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

/// Tells the persister there is something to write, and waits for it.
#[derive(Debug, Clone)]
pub struct Durability {
    notify: Arc<Notify>,
    durable: watch::Receiver<u64>,
    enabled: bool,
}

impl Durability {
    /// A no-op handle for an in-memory registry.
    pub fn none() -> Durability {
        let (_tx, rx) = watch::channel(u64::MAX);
        Durability {
            notify: Arc::new(Notify::new()),
            durable: rx,
            enabled: false,
        }
    }

    /// Wakes the persister (e.g. after reaping).
    pub fn poke(&self) {
        if self.enabled {
            self.notify.notify_one();
        }
    }

    /// Waits until `generation` is on disk; false on timeout or if the
    /// persister is gone.
    pub async fn wait(&self, generation: u64, timeout: Duration) -> bool {
        if !self.enabled {
            return true;
        }
        self.notify.notify_one();
        let mut rx = self.durable.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|d| *d >= generation))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }
}

/// Starts the persister task for `store`, returning the handle requests use
/// and the task. The task exits after a final write once `stop` fires.
pub fn spawn_persister(
    store: Store,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) -> (Durability, tokio::task::JoinHandle<()>) {
    let notify = Arc::new(Notify::new());
    let (tx, rx) = watch::channel(registry.generation());
    let durability = Durability {
        notify: notify.clone(),
        durable: rx,
        enabled: true,
    };
    let store = Arc::new(store);
    let task = tokio::spawn(async move {
        let mut written = registry.generation();
        loop {
            let stopping = tokio::select! {
                _ = notify.notified() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            while let Some((generation, snap)) = registry.snapshot_if_newer(written) {
                let st = store.clone();
                let result = tokio::task::spawn_blocking(move || st.write(snap)).await;
                match result {
                    Ok(Ok(())) => {
                        written = generation;
                        tx.send_replace(generation);
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(store = %store.path().display(), error = %e, "cannot write store");
                    }
                    Err(e) => tracing::error!(error = %e, "store writer task failed"),
                }
                if stopping {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if stopping {
                break;
            }
        }
    });
    (durability, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/store.json");
        let (store, reg) = Store::open(&path, Instant::now()).unwrap();
        assert_eq!(reg.live_nodes(), 0);
        // A second opener is refused while the first holds the lock.
        assert!(matches!(
            Store::open(&path, Instant::now()),
            Err(StoreError::Locked { .. })
        ));
        store
            .write(Snapshot {
                next_id: 1,
                ..Snapshot::default()
            })
            .unwrap();
        drop(store);
        assert!(Store::open(&path, Instant::now()).is_ok());
        let text = fs::read(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = Store::open(&path, Instant::now()).unwrap_err().to_string();
        assert!(
            err.contains("store.json") && err.contains("corrupt"),
            "{err}"
        );
    }
}
