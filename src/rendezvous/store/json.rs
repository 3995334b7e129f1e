//! The JSON store format of the first rendezvous (version 1), kept so that
//! an existing store is imported into SQLite on first start (see the parent
//! module) and so that tests and tools can still write one.
//!
//! Format: a single JSON object
//! `{"format":"pilot-rendezvous-store","version":1,"next_id":N,"nodes":[…],"trust":[[a,b],…]}`
//! where each node is a [`NodeRecord`](crate::rendezvous::state::NodeRecord)
//! (id, base64 key, owner, live flag, hostname, visibility, endpoint, LAN
//! endpoints, version, key creation time), plus optional `consents`. It was
//! written whole, atomically (temp file, fsync, rename, directory fsync), on
//! every group commit.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::rendezvous::state::Snapshot;

/// The `format` tag of a JSON store file.
pub const FORMAT: &str = "pilot-rendezvous-store";
/// The JSON store format version this code reads and writes.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct FileFormat {
    format: String,
    version: u32,
    #[serde(flatten)]
    snapshot: Snapshot,
}

/// Parses the bytes of a JSON store. Only the envelope is checked here;
/// [`Registry::from_snapshot`](crate::rendezvous::Registry::from_snapshot)
/// checks the content.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
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
    Ok(f.snapshot)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `snapshot` as a JSON store at `path`, atomically (temp file
/// `<path>.tmp`, fsync, rename, directory fsync), owner-only, exactly as the
/// JSON store did.
pub fn write(path: &Path, snapshot: Snapshot) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&FileFormat {
        format: FORMAT.into(),
        version: VERSION,
        snapshot,
    })
    .map_err(std::io::Error::other)?;
    let tmp = with_suffix(path, ".tmp");
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
