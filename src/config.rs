//! Where a node keeps its files (spec §11): `~/.pilot/` for config,
//! identity, logs and pid; `/tmp/pilot.sock` for IPC. Shared by `pilotctl`
//! and `pilot-daemon` so both agree without passing paths around.

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
        PathBuf::from(crate::ipc::DEFAULT_SOCKET)
    }
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
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
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
    fn corrupt_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{nope").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
