//! Where a node keeps its files (spec §11): `~/.pilot/` for config,
//! identity, logs and pid. Shared by `pilotctl` and `pilot-daemon` so both
//! agree without passing paths around.
//!
//! Unlike the reference, the default IPC socket is not `/tmp/pilot.sock`: a
//! world-writable directory lets another local user create that name first
//! and receive our commands (issue 10 item 7). It lives in the user's own
//! `$XDG_RUNTIME_DIR/pilot/` (when set and ours), else `~/.pilot/`. Every
//! file here is owner-only (0600, directories 0700).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The resolved locations of a node's files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `~/.pilot`.
    pub home: PathBuf,
}

impl Paths {
    /// `$HOME/.pilot` (or `./.pilot` when HOME is unset).
    pub fn from_env() -> Paths {
        let base = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Paths {
            home: base.join(".pilot"),
        }
    }

    /// `~/.pilot/config.json`.
    pub fn config(&self) -> PathBuf {
        self.home.join("config.json")
    }
    /// `~/.pilot/identity.json`.
    pub fn identity(&self) -> PathBuf {
        self.home.join("identity.json")
    }
    /// `~/.pilot/pilot.log`.
    pub fn log(&self) -> PathBuf {
        self.home.join("pilot.log")
    }
    /// `~/.pilot/pilot.pid`.
    pub fn pid(&self) -> PathBuf {
        self.home.join("pilot.pid")
    }

    /// The IPC socket: explicit flag, else `PILOT_SOCKET`, else config
    /// `socket`, else `/tmp/pilot.sock`.
    pub fn socket(&self, flag: Option<&Path>, config: &Config) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("PILOT_SOCKET").filter(|s| !s.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(p) = config.socket.as_deref().filter(|s| !s.is_empty()) {
            return PathBuf::from(p);
        }
        default_socket()
    }
}

/// The default IPC socket: `$XDG_RUNTIME_DIR/pilot/pilot.sock` when that
/// directory is set and owned by us, else `~/.pilot/pilot.sock`.
pub fn default_socket() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        let xdg = PathBuf::from(xdg);
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if std::fs::metadata(&xdg).is_ok_and(|m| m.is_dir() && m.uid() == me) {
            return xdg.join("pilot").join("pilot.sock");
        }
    }
    Paths::from_env().home.join("pilot.sock")
}

/// Opens `path` for appending, creating it owner-only (0600), and makes an
/// existing file owner-only too (older versions wrote 0644).
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Largest `pilot.log` before it is rotated to `pilot.log.1` (issue 10
/// item 2: a PILA flood once wrote 1 MB per 20,000 frames to a log that was
/// never rotated). At most two files of this size exist.
pub const LOG_CAP: u64 = 16 << 20;

/// Renames `path` to `path.1` if it is larger than [`LOG_CAP`] (at start).
pub fn rotate_if_large(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_CAP) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, PathBuf::from(old));
    }
}

/// When our stderr is a regular file larger than [`LOG_CAP`] (the daemon's
/// `pilot.log`), copies it to `<file>.1` and truncates it (copy-truncate:
/// the descriptor is shared with nobody we could tell to reopen). Returns
/// whether it rotated.
pub fn cap_stderr_log() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = std::fs::read_link("/proc/self/fd/2") else {
        return false;
    };
    let Ok(m) = std::fs::metadata(&path) else {
        return false;
    };
    if !m.is_file() || m.len() <= LOG_CAP {
        return false;
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    let old = PathBuf::from(old);
    if std::fs::copy(&path, &old).is_ok() {
        let _ = std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600));
    }
    // SAFETY: ftruncate on our own stderr descriptor; no memory is touched.
    unsafe { libc::ftruncate(2, 0) == 0 }
}

/// Writes `bytes` to `path` owner-only (0600), replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// `~/.pilot/config.json` (spec §11): pilotctl's saved settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Registry `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Beacon `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beacon: Option<String>,
    /// IPC socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Hostname to register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Owner e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Local UDP listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Public visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// The daemon's log filter (`pilot-daemon --log-level`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Keys we do not interpret, kept as they were.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Errors reading or writing the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a JSON object of the expected shape.
    #[error("{path}: not a valid config file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl Config {
    /// Reads the config; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the config atomically (temp file + rename), pretty-printed.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(io)?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        text.push('\n');
        write_private(path, text.as_bytes()).map_err(io)
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_keeps_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let mut c: Config =
            serde_json::from_str(r#"{"registry":"1.2.3.4:9000","webhook":"http://x"}"#).unwrap();
        c.hostname = Some("alpha".into());
        c.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.other["webhook"], "http://x");
    }

    #[test]
    fn files_are_owner_only_and_the_socket_is_not_in_tmp() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        Config::default().save(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let log = dir.path().join("pilot.log");
        std::fs::write(&log, "old").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_private_append(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        assert!(
            !default_socket().starts_with("/tmp"),
            "{:?}",
            default_socket()
        );
    }

    #[test]
    fn corrupt_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{nope").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
