//! Crash-safe file writes for the daemon's state (`trust.json`, `inbox/`,
//! `received/`): write a uniquely named temporary file in the same
//! directory with mode 0600, `fsync` it, rename it into place, `fsync` the
//! directory. A crash at any point leaves either the old file or the new
//! one, never half of one; stray temporaries start with `.tmp-` and are
//! swept at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files (never listed as messages).
pub const TMP_PREFIX: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` (and parents) owner-only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// A fresh temporary path in `dir`.
pub fn tmp_path(dir: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
}

/// Opens a new owner-only file for writing (fails if it exists).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// `fsync`s `file`, renames `tmp` to `path` and `fsync`s the directory.
pub fn commit(file: File, tmp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (replacing it).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let tmp = tmp_path(dir);
    let res = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        commit(f, &tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Writes `bytes` to a new file `dir/name` atomically; if `name` exists,
/// `name` gets a `-N` suffix before its extension (two messages in the same
/// millisecond never overwrite each other). Returns the final path.
pub fn atomic_create_unique(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let p = create_unique_unsynced(dir, name, bytes)?;
    sync_dir(dir);
    Ok(p)
}

/// [`atomic_create_unique`] without the directory `fsync`: the file itself
/// is durable, its name is durable once [`sync_dir`] runs (one directory
/// sync for a batch of files).
pub fn create_unique_unsynced(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    private_dir(dir)?;
    let tmp = tmp_path(dir);
    let res = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        link_unique(&tmp, dir, name)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// `fsync`s a directory (making renames and links in it durable).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Moves the finished temporary `tmp` to a free name derived from `name`
/// in `dir` without ever replacing an existing file (hard link + unlink,
/// which fails instead of overwriting), then `fsync`s the directory.
pub fn publish_unique(tmp: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let p = link_unique(tmp, dir, name)?;
    sync_dir(dir);
    Ok(p)
}

fn link_unique(tmp: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0u32..10_000 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem}-{n}{ext}"))
        };
        match fs::hard_link(tmp, &candidate) {
            Ok(()) => {
                let _ = fs::remove_file(tmp);
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free file name"))
}

/// Removes leftover temporaries (from a crash) in `dir`.
pub fn sweep_tmp(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Broken-down time of `unix` seconds, local (`true`) or UTC, plus the
/// local offset from UTC in seconds.
fn broken_down(unix: i64, local: bool) -> (libc::tm, i64) {
    // SAFETY: an all-zero `tm` is a valid value; `*_r` fill it and only
    // read `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = unix as libc::time_t;
    unsafe {
        if local {
            libc::localtime_r(&t, &mut tm);
        } else {
            libc::gmtime_r(&t, &mut tm);
        }
    }
    let off = if local { tm.tm_gmtoff as i64 } else { 0 };
    (tm, off)
}

/// RFC 3339 in UTC, seconds precision (`2026-01-01T12:00:00Z`).
pub fn rfc3339_utc(unix: i64) -> String {
    let (tm, _) = broken_down(unix, false);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// RFC 3339 in local time with its offset (spec §10.3 `received_at`).
pub fn rfc3339_local(unix: i64) -> String {
    let (tm, off) = broken_down(unix, true);
    let tz = if off == 0 {
        "Z".to_string()
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.abs();
        format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{tz}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `YYYYMMDD-HHMMSS.mmm` in local time (spec §10.3 file names).
pub fn stamp_local(unix_ms: i64) -> String {
    let (tm, _) = broken_down(unix_ms.div_euclid(1000), true);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}.{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        unix_ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339_utc(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(stamp_local(1_767_225_600_485).len(), 19);
    }

    #[test]
    fn unique_names_never_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let a = atomic_create_unique(d.path(), "TEXT-1.json", b"a").unwrap();
        let b = atomic_create_unique(d.path(), "TEXT-1.json", b"b").unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read(&a).unwrap(), b"a");
        assert_eq!(fs::read(&b).unwrap(), b"b");
        assert!(b.to_string_lossy().ends_with("TEXT-1-1.json"));
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        atomic_write(&d.path().join("x.json"), b"1").unwrap();
        atomic_write(&d.path().join("x.json"), b"2").unwrap();
        assert_eq!(fs::read(d.path().join("x.json")).unwrap(), b"2");
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
            .collect();
        assert!(left.is_empty());
    }
}
