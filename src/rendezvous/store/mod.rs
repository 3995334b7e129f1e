//! The registry's durable store: an embedded SQLite database (issue 13).
//!
//! What is stored: every known node id with its key, owner, live flag,
//! hostname, visibility, LAN endpoints and the endpoint of its last
//! registration; trust pairs and one-sided consents; handshake inboxes; the
//! next id. What is not: heartbeats and last-seen times (liveness). A
//! heartbeat touches memory only; after a restart every live node gets a
//! fresh stale-timeout period to heartbeat again. Schema and migrations:
//! [`sqlite`].
//!
//! Reads never touch the database: the whole registry lives in memory
//! ([`Registry`]) and is loaded once at start. Writes are incremental and
//! batched: each mutation records the rows it changed; the persister task
//! takes the changed rows (copying only those, under the registry lock) and
//! writes them in one transaction on a blocking thread, while requests go
//! on being served. Concurrent mutations share one transaction and one
//! fsync (group commit), and a reply that acknowledges a mutation is sent
//! only once the batch holding it has committed ([`Durability::wait`]): an
//! acknowledged registration survives `kill -9` and power loss
//! (`synchronous=FULL`). A batch that fails to commit is kept and retried,
//! merged with later changes, once a second; the requests waiting for it
//! fail after their timeout with `store unavailable`.
//!
//! `--store PATH` names the database file. Its kind is decided by content,
//! not by name (so `/var/lib/pilot/rendezvous.json` in existing unit files
//! keeps working):
//! * no file, or an empty one: a new database is created at `PATH`;
//! * a file starting with the SQLite header: opened as the database;
//! * anything else must be a JSON store of the first rendezvous
//!   ([`json`]): it is checked as strictly as it was loaded before, written
//!   into a new database at `PATH.importing`, the JSON file is kept as
//!   `PATH.json-imported` (a hard link made before anything replaces it),
//!   and the database is renamed over `PATH`. A crash at any point leaves
//!   either the JSON store at `PATH` (the import runs again) or the
//!   finished database. A file that is neither is refused with an error
//!   naming it; so is a damaged database, rather than starting empty and
//!   losing every node.
//!
//! [`Store::open_importing`] also imports from a separate JSON file when
//! the database does not exist yet (the binary's old default path,
//! `~/.pilot/rendezvous.json`, moves to `~/.pilot/rendezvous.db`).
//!
//! A `<store>.lock` file is `flock`ed for the lifetime of the process so
//! two servers never write the same store. SQLite keeps `<store>-wal` and
//! `<store>-shm` beside the database; the database is created owner-only
//! (it holds every node's owner e-mail and address, issue 10 item 9) and
//! SQLite gives its side files the same mode.

pub mod json;
pub mod postgres;
pub mod sqlite;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::metrics::Metrics;
use super::state::{Changes, Registry};

/// The first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat.html).
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// How long the persister waits before retrying a batch that failed (ours).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Errors opening, loading or writing the store. Each names the file.
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
    /// SQLite failed (disk full, permissions, I/O).
    #[error("store file {path}: {cause}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: rusqlite::Error,
    },
    /// The shared database failed (unreachable, refused, or a query failed).
    #[error("store {target}: {}", postgres::reason(.cause))]
    Postgres {
        /// `postgres://host:port/db` (never the password).
        target: String,
        /// The cause.
        cause: tokio_postgres::Error,
    },
    /// The shared database connection is not open (it is retried).
    #[error("store {target}: not connected")]
    PostgresClosed {
        /// `postgres://host:port/db`.
        target: String,
    },
    /// The `postgres://` store URL cannot be used.
    #[error(
        "invalid store URL: {reason} (expected postgres://user[:password]@host[:port]/database)"
    )]
    PostgresUrl {
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer build with a newer schema.
    #[error("store file {path} has schema version {found}; this build knows up to {known} (upgrade pilot-rendezvous)")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
}

/// An open store: the database and the held lock.
#[derive(Debug)]
pub struct Store {
    db: sqlite::Db,
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

/// What a store path holds.
enum Kind {
    Missing,
    Sqlite,
    Other,
}

fn kind(path: &Path) -> std::io::Result<Kind> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kind::Missing),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match n {
        0 => Kind::Missing,
        16 if &head == SQLITE_HEADER => Kind::Sqlite,
        _ => Kind::Other,
    })
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Creates `path` empty and owner-only if it does not exist, so that SQLite
/// (and its side files) inherit mode 0600.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Keeps `json` as `<json>.json-imported` (a hard link; a copy where links
/// are not possible). An existing backup of other content is not
/// overwritten: the next free `.json-imported.N` is used.
fn keep_backup(json: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(json)?;
    for n in 0u32..1000 {
        let backup = match n {
            0 => with_suffix(json, ".json-imported"),
            n => with_suffix(json, &format!(".json-imported.{n}")),
        };
        match fs::metadata(&backup) {
            Ok(b) if b.ino() == meta.ino() && b.dev() == meta.dev() => return Ok(backup),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if fs::hard_link(json, &backup).is_err() {
            fs::copy(json, &backup)?;
            File::open(&backup)?.sync_all()?;
        }
        return Ok(backup);
    }
    Err(std::io::Error::other("too many .json-imported backups"))
}

/// Imports the JSON store `json` into a new database at `db` (which may be
/// the same path: then the database replaces the JSON file, which is kept
/// as `<json>.json-imported`). Returns the number of node ids imported.
fn import(json: &Path, db: &Path, now: Instant) -> Result<usize, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| StoreError::Io { path, cause }
    };
    let bytes = fs::read(json).map_err(io(json))?;
    let snap = json::parse(json, &bytes)?;
    // Checked exactly as the JSON store was checked when it was loaded.
    let registry = Registry::from_snapshot(snap, now).map_err(|e| StoreError::Corrupt {
        path: json.to_path_buf(),
        reason: e.0,
    })?;
    let snap = registry.snapshot();
    let tmp = with_suffix(db, ".importing");
    for side in ["", "-journal", "-wal", "-shm"] {
        remove_if_exists(&with_suffix(&tmp, side)).map_err(io(&tmp))?;
    }
    create_private(&tmp).map_err(io(&tmp))?;
    {
        // A rollback journal while importing: when the connection closes
        // the file stands alone and can be renamed.
        let mut d = sqlite::Db::open(&tmp, false)?;
        d.write_snapshot(&snap)?;
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    if json == db {
        let backup = keep_backup(json).map_err(io(json))?;
        tracing::info!(json = %json.display(), backup = %backup.display(), "kept the JSON store");
    }
    fs::rename(&tmp, db).map_err(io(db))?;
    sync_dir(db).map_err(io(db))?;
    if json != db {
        let backup = with_suffix(json, ".json-imported");
        fs::rename(json, &backup).map_err(io(json))?;
        sync_dir(json).map_err(io(json))?;
    }
    Ok(snap.nodes.len())
}

impl Store {
    /// Opens (creating the directory if needed) and locks the store at
    /// `path`, imports it first if it is a JSON store, and loads the
    /// registry it holds (an empty one for a new store). The registry
    /// records its changes for [`Store::commit`] from then on.
    pub fn open(path: &Path, now: Instant) -> Result<(Store, Registry), StoreError> {
        Self::open_importing(path, None, now)
    }

    /// As [`Store::open`], but when `path` does not exist yet and `legacy`
    /// is a JSON store, that store is imported into `path` (and renamed to
    /// `<legacy>.json-imported`).
    pub fn open_importing(
        path: &Path,
        legacy: Option<&Path>,
        now: Instant,
    ) -> Result<(Store, Registry), StoreError> {
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
        match kind(path).map_err(io)? {
            Kind::Sqlite => {}
            Kind::Missing => {
                if let Some(legacy) = legacy.filter(|l| l.exists()) {
                    let n = import(legacy, path, now)?;
                    tracing::info!(from = %legacy.display(), to = %path.display(), nodes = n, "imported the JSON store into SQLite");
                }
            }
            Kind::Other => {
                let n = import(path, path, now)?;
                tracing::info!(store = %path.display(), nodes = n, "imported the JSON store into SQLite");
            }
        }
        create_private(path).map_err(io)?;
        let db = sqlite::Db::open(path, true)?;
        let snap = db.load()?;
        let registry = Registry::from_snapshot(snap, now).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.0,
        })?;
        release_freed_memory();
        registry.track_changes();
        Ok((Store { db, _lock: lock }, registry))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Writes one batch of changed rows in one transaction, durably.
    pub fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        self.db.commit(changes)
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
/// and the task. Each round takes the rows changed since the last one and
/// commits them in one transaction on a blocking thread; the task exits
/// after a final round once `stop` fires.
pub fn spawn_persister(
    store: Store,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> (Durability, tokio::task::JoinHandle<()>) {
    let notify = Arc::new(Notify::new());
    let (tx, rx) = watch::channel(registry.generation());
    let durability = Durability {
        notify: notify.clone(),
        durable: rx,
        enabled: true,
    };
    let path = store.path().to_path_buf();
    let store = Arc::new(Mutex::new(store));
    let task = tokio::spawn(async move {
        let mut written = registry.generation();
        // A batch that failed to commit, retried with what came after it.
        let mut failed: Option<Changes> = None;
        let mut last_commit: Option<Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = notify.notified() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            loop {
                if let Some(wait) = last_commit
                    .map(|t| MIN_COMMIT_INTERVAL.saturating_sub(t.elapsed()))
                    .filter(|w| !stopping && !w.is_zero())
                {
                    tokio::time::sleep(wait).await;
                }
                let (generation, changes) = registry.take_changes();
                let batch = match failed.take() {
                    Some(mut f) => {
                        f.merge(changes);
                        f
                    }
                    None => changes,
                };
                if batch.rows() == 0 {
                    // Nothing to write (e.g. a hostname set to what it was).
                    if generation > written {
                        written = generation;
                        tx.send_replace(generation);
                    }
                    break;
                }
                let st = store.clone();
                let started = Instant::now();
                last_commit = Some(started);
                let result = tokio::task::spawn_blocking(move || {
                    background_priority();
                    let r = st.lock().unwrap_or_else(|e| e.into_inner()).commit(&batch);
                    (batch, r)
                })
                .await;
                let batch = match result {
                    Ok((batch, Ok(()))) => {
                        metrics.store_batch(started.elapsed(), batch.rows());
                        written = generation;
                        tx.send_replace(generation);
                        continue;
                    }
                    Ok((batch, Err(e))) => {
                        tracing::error!(store = %path.display(), error = %e, "cannot write store");
                        batch
                    }
                    Err(e) => {
                        // The blocking task panicked; the batch is lost with
                        // it: fail the waiting requests (they time out).
                        tracing::error!(error = %e, "store writer task failed");
                        metrics.store_errors.inc();
                        break;
                    }
                };
                metrics.store_errors.inc();
                failed = Some(batch);
                if stopping {
                    break;
                }
                tokio::time::sleep(RETRY_AFTER).await;
            }
            if stopping {
                break;
            }
        }
    });
    (durability, task)
}

/// Shortest time from one commit's start to the next (group commit's
/// delay, as PostgreSQL's `commit_delay`): whatever arrives meanwhile
/// shares the next commit. Without it, once signature checks moved off the
/// event loop (`super::verify`) registrations reached the writer a few at a
/// time, batches fell from 191 rows to 4-11, and the commits' own cost held
/// a 1,000,000-node burst to 7,600-9,600 registrations/s on one core
/// (issue 13: >= 10,000/s). At most 2 ms more per durable write.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// Returns the heap the loaded snapshot used to the OS. The snapshot (every
/// row as owned strings) is freed once the registry is built from it, but
/// glibc keeps freed memory mapped: a rendezvous restarted with 1,000,000
/// nodes sat at 1,117 MiB instead of the 952 MiB it holds while serving
/// them (issue 13: under 1 GB for a million nodes). No-op elsewhere.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no live
    // allocation and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Niceness of the thread that commits store batches.
const WRITER_NICE: i32 = 10;

/// Runs the calling (store writer) thread at [`WRITER_NICE`]: a commit may
/// wait, since group commit folds whatever arrives meanwhile into the next
/// batch, but a lookup should not wait for a commit's CPU time slice. With
/// the server on one core, lookups during a 1,000,000-node registration
/// burst had a p99 of 7.3 ms at equal priority (issue 13: under 5 ms). CFS
/// still gives a nice-10 thread a share, so commits never starve.
fn background_priority() {
    super::verify::background_priority(WRITER_NICE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rendezvous::state::Snapshot;

    #[test]
    fn missing_file_is_empty_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/store.db");
        let (mut store, reg) = Store::open(&path, Instant::now()).unwrap();
        assert_eq!(reg.live_nodes(), 0);
        // A second opener is refused while the first holds the lock.
        assert!(matches!(
            Store::open(&path, Instant::now()),
            Err(StoreError::Locked { .. })
        ));
        store
            .commit(&Changes {
                next_id: 1,
                ..Changes::default()
            })
            .unwrap();
        drop(store);
        assert!(Store::open(&path, Instant::now()).is_ok());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(&path, b"{\"not\": \"a store\"}").unwrap();
        let err = Store::open(&path, Instant::now()).unwrap_err().to_string();
        assert!(err.contains("store.db") && err.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_json_store_is_imported_in_place_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let snap = Snapshot {
            next_id: 3,
            nodes: vec![
                crate::rendezvous::state::NodeRecord {
                    id: 1,
                    public_key: crate::wire::registry::b64_encode(
                        ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                            .verifying_key()
                            .as_bytes(),
                    ),
                    owner: Some("a@example.com".into()),
                    live: true,
                    hostname: Some("alpha".into()),
                    public: true,
                    real_addr: "1.2.3.4:4000".into(),
                    lan_addrs: vec!["10.0.0.1:4000".into()],
                    version: Some("v1".into()),
                    key_created: 42,
                },
                crate::rendezvous::state::NodeRecord {
                    id: 2,
                    public_key: crate::wire::registry::b64_encode(
                        ed25519_dalek::SigningKey::from_bytes(&[2; 32])
                            .verifying_key()
                            .as_bytes(),
                    ),
                    owner: None,
                    live: false,
                    hostname: None,
                    public: false,
                    real_addr: String::new(),
                    lan_addrs: vec![],
                    version: None,
                    key_created: 43,
                },
            ],
            trust: vec![[1, 2]],
            consents: vec![[1, 2], [2, 1]],
            ..Snapshot::default()
        };
        json::write(&path, snap.clone()).unwrap();
        let (store, reg) = Store::open(&path, Instant::now()).unwrap();
        assert_eq!(reg.snapshot(), snap);
        assert_eq!(kind(&path).unwrap() as u8, Kind::Sqlite as u8);
        let backup = with_suffix(&path, ".json-imported");
        assert_eq!(
            json::parse(&backup, &fs::read(&backup).unwrap()).unwrap(),
            snap
        );
        drop(store);
        // Opening again reads the database; the backup is left alone.
        let (_store, reg) = Store::open(&path, Instant::now()).unwrap();
        assert_eq!(reg.snapshot(), snap);
        assert!(!with_suffix(&path, ".json-imported.1").exists());
    }
}
