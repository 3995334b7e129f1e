//! The node's persistent Ed25519 identity and its file, `identity.json` (spec §11).
//!
//! The identity *is* the node's address: the registry maps the public key back
//! to the same node id on every registration (§6.4.1). Losing or silently
//! replacing it changes the node's address, so this module is deliberately
//! unforgiving: a corrupt, unreadable, group/world-accessible or inconsistent
//! file (seed that does not derive the stored public key) is an error naming
//! the file and the problem, and [`Identity::load_or_create`] generates a new
//! identity **only** when the file does not exist.
//!
//! The file format is the reference's, byte for byte (2-space indent, no
//! trailing newline, keys in this order):
//!
//! ```json
//! {
//!   "private_key": "<base64 of seed (32) || public key (32)>",
//!   "public_key": "<base64 of the public key (32)>"
//! }
//! ```
//!
//! Writes are atomic (temporary file in the same directory, `fsync`, rename,
//! `fsync` of the directory); the file is created with mode 0600 and a
//! directory we create gets mode 0700 (§11).
//!
//! Signatures are plain RFC 8032 Ed25519 (deterministic, no prehash, no
//! context), which is what the registry (§6.3), the trust handshake (§9.3) and
//! PILA (§4.2) use. [`verify`] is the *strict* verifier (rejects small-order
//! keys and non-canonical signatures); reference nodes only produce keys and
//! signatures it accepts (§4.2).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::Deserialize;

/// Length of an Ed25519 public key (RFC 8032).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 seed, the secret half of `private_key` (§11).
pub const SEED_LEN: usize = 32;
/// Length of an Ed25519 signature (RFC 8032).
pub const SIGNATURE_LEN: usize = 64;
/// Length of the decoded `private_key` field: seed ‖ public key (§11, Go/NaCl form).
pub const PRIVATE_KEY_LEN: usize = SEED_LEN + PUBLIC_KEY_LEN;
/// Mode of the identity file (§11).
pub const FILE_MODE: u32 = 0o600;
/// Mode of a directory we create for the identity file (§11).
pub const DIR_MODE: u32 = 0o700;

/// What is wrong with the *content* of an identity (JSON, base64, lengths, keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityFormatError {
    /// Not a JSON object with string fields `private_key` and `public_key`.
    #[error("not a valid identity JSON object: {0}")]
    Json(String),
    /// A field is not standard base64 with padding.
    #[error("field `{field}` is not valid base64")]
    Base64 {
        /// The JSON field.
        field: &'static str,
    },
    /// A field decodes to the wrong number of bytes.
    #[error("field `{field}` decodes to {got} bytes, expected {expected}")]
    Length {
        /// The JSON field.
        field: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// The seed does not derive the public key stored next to it.
    #[error("the seed in `private_key` does not derive the public key stored in `{field}`")]
    Mismatch {
        /// `private_key` (its last 32 bytes) or `public_key`.
        field: &'static str,
    },
}

/// Errors of the identity and of its file. File errors name the path.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity text is malformed or inconsistent (no file involved).
    #[error("invalid identity: {0}")]
    Format(#[from] IdentityFormatError),
    /// The identity file exists but its content is unusable. Never replaced
    /// automatically: that would change the node's address.
    #[error("identity file {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: IdentityFormatError,
    },
    /// The identity file (or its directory) could not be read or written.
    #[error("identity file {}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing ("read", "create directory", "rename", ...).
        op: &'static str,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The identity file is accessible to group or others.
    #[error(
        "identity file {} has mode {mode:04o}; it holds a private key and must not be \
         accessible to group or others (expected {FILE_MODE:04o}; fix with `chmod 600`)",
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path exists but is not a regular file.
    #[error("identity file {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
}

/// Errors decoding a base64 key or signature (registry and handshake fields).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not standard base64 with padding.
    #[error("not valid base64")]
    Base64,
    /// Wrong decoded length.
    #[error("decodes to {got} bytes, expected {expected}")]
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
}

/// An Ed25519 key pair: the node's identity.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_struct("Identity")
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.signing.to_bytes() == other.signing.to_bytes()
    }
}
impl Eq for Identity {}

#[derive(Deserialize)]
struct IdentityJson {
    private_key: String,
    public_key: String,
}

impl Identity {
    /// A fresh identity from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Identity {
        Identity {
            signing: SigningKey::generate(rng),
        }
    }

    /// The identity with this RFC 8032 seed.
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// The public key in standard base64 with padding (44 characters), as the
    /// registry and the handshake carry it (§6.2).
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.public_key())
    }

    /// The RFC 8032 seed (secret).
    pub fn seed(&self) -> [u8; SEED_LEN] {
        self.signing.to_bytes()
    }

    /// Deterministic Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(msg).to_bytes()
    }

    /// Signature of `msg` in standard base64 (the registry's `signature` field).
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        B64.encode(self.sign(msg))
    }

    /// The underlying signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The reference `identity.json` text (§11): pretty-printed with a 2-space
    /// indent and no trailing newline, byte-identical to the reference's.
    pub fn to_json(&self) -> String {
        let mut private = [0u8; PRIVATE_KEY_LEN];
        private[..SEED_LEN].copy_from_slice(&self.seed());
        private[SEED_LEN..].copy_from_slice(&self.public_key());
        // Base64 output never needs JSON escaping.
        format!(
            "{{\n  \"private_key\": \"{}\",\n  \"public_key\": \"{}\"\n}}",
            B64.encode(private),
            self.public_key_b64()
        )
    }

    /// Parses `identity.json` text. The seed must derive both the public half
    /// of `private_key` and `public_key` (the reference refuses a mismatch).
    /// Unknown fields are ignored, like the reference does.
    pub fn from_json(s: &str) -> Result<Identity, IdentityError> {
        Ok(Self::parse(s)?)
    }

    fn parse(s: &str) -> Result<Identity, IdentityFormatError> {
        let j: IdentityJson =
            serde_json::from_str(s).map_err(|e| IdentityFormatError::Json(e.to_string()))?;
        let private = decode_exact::<PRIVATE_KEY_LEN>(&j.private_key).map_err(|e| match e {
            DecodeError::Base64 => IdentityFormatError::Base64 {
                field: "private_key",
            },
            DecodeError::Length { expected, got } => IdentityFormatError::Length {
                field: "private_key",
                expected,
                got,
            },
        })?;
        let public = decode_exact::<PUBLIC_KEY_LEN>(&j.public_key).map_err(|e| match e {
            DecodeError::Base64 => IdentityFormatError::Base64 {
                field: "public_key",
            },
            DecodeError::Length { expected, got } => IdentityFormatError::Length {
                field: "public_key",
                expected,
                got,
            },
        })?;
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&private[..SEED_LEN]);
        let id = Identity::from_seed(seed);
        let derived = id.public_key();
        if derived[..] != private[SEED_LEN..] {
            return Err(IdentityFormatError::Mismatch {
                field: "private_key",
            });
        }
        if derived != public {
            return Err(IdentityFormatError::Mismatch {
                field: "public_key",
            });
        }
        Ok(id)
    }

    /// Loads the identity file at `path`. Fails, naming the file, when it is
    /// missing, unreadable, not a regular file, accessible to group/others, or
    /// corrupt (see [`Identity::from_json`]).
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io_err = |op, source| IdentityError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let meta = fs::metadata(path).map_err(|e| io_err("read", e))?;
        if !meta.is_file() {
            return Err(IdentityError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(|e| io_err("read", e))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::Corrupt {
            path: path.to_path_buf(),
            source: IdentityFormatError::Json("not UTF-8".into()),
        })?;
        Self::parse(text).map_err(|source| IdentityError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the identity file atomically: a temporary file (mode 0600) in
    /// the same directory, `fsync`, rename over `path`, `fsync` of the
    /// directory. A missing directory is created with mode 0700; an existing
    /// one is left as it is. Replaces an existing file.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let tmp = self.write_tmp(path)?;
        let res = fs::rename(&tmp, path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            op: "rename the temporary file over",
            source,
        });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res?;
        sync_dir(path)
    }

    /// Loads the identity at `path`, or creates and saves a new one from `rng`
    /// **only if the file does not exist** (returns `created = true`). Any other
    /// problem with an existing file is an error, never a regeneration.
    /// Creation never clobbers a file that appeared concurrently: the new file
    /// is linked into place, and if that fails because the path now exists,
    /// the existing file is loaded instead.
    pub fn load_or_create(
        path: &Path,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Identity, bool), IdentityError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Identity::load(path).map(|id| (id, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_path_buf(),
                    op: "read",
                    source,
                })
            }
        }
        let id = Identity::generate(rng);
        let tmp = id.write_tmp(path)?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(path)?;
                Ok((id, true))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Identity::load(path).map(|id| (id, false))
            }
            Err(source) => Err(IdentityError::Io {
                path: path.to_path_buf(),
                op: "create",
                source,
            }),
        }
    }

    /// Writes `to_json()` to a fresh temporary file next to `path` and syncs it.
    fn write_tmp(&self, path: &Path) -> Result<PathBuf, IdentityError> {
        let dir = parent_dir(path);
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| IdentityError::Io {
                    path: dir.to_path_buf(),
                    op: "create directory",
                    source,
                })?;
        }
        let file_name = path.file_name().ok_or_else(|| IdentityError::NotAFile {
            path: path.to_path_buf(),
        })?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let io_err = |op, source| IdentityError::Io {
            path: tmp.clone(),
            op,
            source,
        };
        let _ = fs::remove_file(&tmp); // a stale one from a crash
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| io_err("create", e))?;
        // The umask can only remove bits, but make the mode explicit anyway.
        let written = f
            .set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .and_then(|()| f.write_all(self.to_json().as_bytes()))
            .and_then(|()| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", e));
        }
        Ok(tmp)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(path: &Path) -> Result<(), IdentityError> {
    let dir = parent_dir(path);
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            op: "sync directory",
            source,
        })
}

fn decode_exact<const N: usize>(s: &str) -> Result<[u8; N], DecodeError> {
    let v = B64.decode(s).map_err(|_| DecodeError::Base64)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| DecodeError::Length {
        expected: N,
        got: v.len(),
    })
}

/// Strict RFC 8032 verification of `sig` over `msg` by `public_key`: rejects
/// keys that are not valid points, small-order keys, and non-canonical
/// signatures. Never panics.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    vk.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
}

/// Decodes a base64 (standard, padded) Ed25519 public key (§6.2).
pub fn decode_public_key_b64(s: &str) -> Result<[u8; PUBLIC_KEY_LEN], DecodeError> {
    decode_exact(s)
}

/// Decodes a base64 (standard, padded) Ed25519 signature (§6.2).
pub fn decode_signature_b64(s: &str) -> Result<[u8; SIGNATURE_LEN], DecodeError> {
    decode_exact(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn seed_a() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn json_round_trip_and_debug_hides_seed() {
        let id = Identity::generate(&mut OsRng);
        let back = Identity::from_json(&id.to_json()).unwrap();
        assert_eq!(back, id);
        let dbg = format!("{id:?}");
        assert!(dbg.contains(&id.public_key_b64()));
        assert!(!dbg.contains(&B64.encode(id.seed())));
    }

    #[test]
    fn sign_verify_and_reject_tamper() {
        let id = Identity::from_seed(seed_a());
        let sig = id.sign(b"heartbeat:42");
        assert!(verify(&id.public_key(), b"heartbeat:42", &sig));
        assert!(!verify(&id.public_key(), b"heartbeat:43", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!verify(&id.public_key(), b"heartbeat:42", &bad));
        // Small-order / identity point keys are rejected by the strict verifier.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(!verify(&identity_point, b"x", &[0u8; 64]));
        // Not a point at all: must not panic.
        assert!(!verify(&[0xff; 32], b"x", &sig));
    }

    #[test]
    fn from_json_errors() {
        let good = Identity::from_seed(seed_a()).to_json();
        let other = Identity::from_seed([7; 32]);
        assert!(matches!(
            Identity::from_json("not json"),
            Err(IdentityError::Format(IdentityFormatError::Json(_)))
        ));
        assert!(matches!(
            Identity::from_json(r#"{"private_key": 5, "public_key": ""}"#),
            Err(IdentityError::Format(IdentityFormatError::Json(_)))
        ));
        let j = good.replace("\"public_key\": \"", "\"public_key\": \"!");
        assert!(matches!(
            Identity::from_json(&j),
            Err(IdentityError::Format(IdentityFormatError::Base64 {
                field: "public_key"
            }))
        ));
        let j = format!(
            r#"{{"private_key": "{}", "public_key": "{}"}}"#,
            B64.encode([0u8; 32]),
            other.public_key_b64()
        );
        assert!(matches!(
            Identity::from_json(&j),
            Err(IdentityError::Format(IdentityFormatError::Length {
                field: "private_key",
                expected: 64,
                got: 32
            }))
        ));
        // Public key of another identity.
        let j = format!(
            "{{\"private_key\": \"{}\", \"public_key\": \"{}\"}}",
            B64.encode([seed_a(), Identity::from_seed(seed_a()).public_key()].concat()),
            other.public_key_b64()
        );
        assert!(matches!(
            Identity::from_json(&j),
            Err(IdentityError::Format(IdentityFormatError::Mismatch {
                field: "public_key"
            }))
        ));
        // Seed followed by the wrong public half.
        let j = format!(
            "{{\"private_key\": \"{}\", \"public_key\": \"{}\"}}",
            B64.encode([seed_a(), other.public_key()].concat()),
            Identity::from_seed(seed_a()).public_key_b64()
        );
        assert!(matches!(
            Identity::from_json(&j),
            Err(IdentityError::Format(IdentityFormatError::Mismatch {
                field: "private_key"
            }))
        ));
        // Unknown fields are tolerated.
        let j = good.replacen('{', "{\"extra\": 1,", 1);
        assert!(Identity::from_json(&j).is_ok());
    }

    #[test]
    fn decode_helpers() {
        let id = Identity::from_seed(seed_a());
        assert_eq!(
            decode_public_key_b64(&id.public_key_b64()).unwrap(),
            id.public_key()
        );
        assert_eq!(
            decode_signature_b64(&id.sign_b64(b"m")).unwrap(),
            id.sign(b"m")
        );
        assert_eq!(decode_public_key_b64("%%"), Err(DecodeError::Base64));
        assert_eq!(
            decode_public_key_b64(&B64.encode([1u8; 31])),
            Err(DecodeError::Length {
                expected: 32,
                got: 31
            })
        );
        // Unpadded is not the standard encoding.
        let unpadded = id.public_key_b64().trim_end_matches('=').to_string();
        assert_eq!(decode_public_key_b64(&unpadded), Err(DecodeError::Base64));
    }

    #[test]
    fn save_load_modes() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pilot");
        let path = sub.join("identity.json");
        let id = Identity::generate(&mut OsRng);
        id.save(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(fs::read_to_string(&path).unwrap(), id.to_json());
        assert_eq!(Identity::load(&path).unwrap(), id);
        // Only the identity file is left in the directory (no temporary file).
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
        // Overwrite.
        let id2 = Identity::generate(&mut OsRng);
        id2.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap(), id2);
    }

    #[test]
    fn load_or_create_creates_only_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let (id, created) = Identity::load_or_create(&path, &mut OsRng).unwrap();
        assert!(created);
        let (again, created) = Identity::load_or_create(&path, &mut OsRng).unwrap();
        assert!(!created);
        assert_eq!(again, id);
    }

    fn assert_mentions_path(err: &IdentityError, path: &Path, what: &str) {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "{msg:?} lacks path"
        );
        assert!(msg.contains(what), "{msg:?} lacks {what:?}");
    }

    #[test]
    fn broken_files_are_errors_never_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        let write = |content: &[u8], mode: u32| {
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        let check = |what: &str| {
            let before = fs::read(&path).ok();
            let err = Identity::load_or_create(&path, &mut OsRng).unwrap_err();
            assert_mentions_path(&err, &path, what);
            let err = Identity::load(&path).unwrap_err();
            assert_mentions_path(&err, &path, what);
            // Untouched.
            assert_eq!(fs::read(&path).ok(), before);
        };

        // Corrupt JSON.
        write(b"{\"private_key\": ", 0o600);
        check("corrupt");
        // Not UTF-8.
        write(&[0xff, 0xfe, 0x00], 0o600);
        check("not UTF-8");
        // Empty file.
        write(b"", 0o600);
        check("corrupt");
        // Mismatching keys.
        let a = Identity::from_seed(seed_a());
        let b = Identity::from_seed([9; 32]);
        let mismatched = a
            .to_json()
            .replace(&a.public_key_b64(), &b.public_key_b64());
        write(mismatched.as_bytes(), 0o600);
        check("does not derive");
        // Wrong permissions (a valid identity, but world-readable).
        write(a.to_json().as_bytes(), 0o644);
        check("mode 0644");
        write(a.to_json().as_bytes(), 0o640);
        check("chmod 600");
        // Unreadable: a directory where the file should be.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        check("not a regular file");
        fs::remove_dir(&path).unwrap();
        // Missing file: load fails (naming the path), load_or_create creates.
        let err = Identity::load(&path).unwrap_err();
        assert_mentions_path(&err, &path, "cannot read");
    }

    #[test]
    fn unreadable_parent_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        // A path *through* a regular file: ENOTDIR, not NotFound.
        let path = file.join("identity.json");
        let err = Identity::load_or_create(&path, &mut OsRng).unwrap_err();
        assert!(matches!(err, IdentityError::Io { .. }), "{err:?}");
        assert_mentions_path(&err, &path, "cannot read");
    }

    #[test]
    fn dangling_symlink_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        std::os::unix::fs::symlink(dir.path().join("elsewhere.json"), &path).unwrap();
        let err = Identity::load_or_create(&path, &mut OsRng).unwrap_err();
        assert_mentions_path(&err, &path, "cannot read");
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
