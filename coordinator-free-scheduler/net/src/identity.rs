//! The node's identity: an ed25519 secret key kept in the data dir.
//!
//! The key is created on first start and written to `DATA_DIR/node.key` (64 hex digits, mode
//! 0600 on Unix). It is written to a temporary file first and then hard-linked into place, so
//! a crash never leaves half a key and two processes starting at once agree on one key (the
//! link fails for the second, which then loads the first one's key).
//! Its public half is the node id: the peer's name in logs, metrics, the CLI and the protocol.

use std::io::Write;
use std::path::{Path, PathBuf};

use iroh::SecretKey;

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// The identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("{path}: not a node key (expected 64 hex digits)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// The key file's path in `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the node key from `data_dir`, or creates and stores a new one if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, IdentityError> {
    let path = key_path(data_dir);
    match load(data_dir) {
        Ok(Some(key)) => return Ok(key),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let io = |source| IdentityError::Io { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let key = SecretKey::generate();
    let tmp = data_dir.join(format!(
        ".{KEY_FILE}.{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        writeln!(f, "{}", hex(&key.to_bytes())).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp).ok();
    match linked {
        Ok(()) => {
            tracing::info!(node = %key.public(), path = %path.display(), "created a new node key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(data_dir)?.ok_or_else(|| IdentityError::Malformed { path: path.clone() })
        }
        Err(e) => Err(io(e)),
    }
}

/// Loads the node key from `data_dir`; `None` if there is no key file yet.
pub fn load(data_dir: &Path) -> Result<Option<SecretKey>, IdentityError> {
    let path = key_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path, source }),
    };
    let bytes =
        unhex(text.trim()).ok_or_else(|| IdentityError::Malformed { path: path.clone() })?;
    Ok(Some(SecretKey::from_bytes(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let keys: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> =
                    (0..4).map(|_| s.spawn(|| load_or_create(dir.path()).unwrap())).collect();
                hs.into_iter().map(|h| h.join().unwrap().public()).collect()
            });
            assert!(keys.windows(2).all(|w| w[0] == w[1]));
        }
    }

    #[test]
    fn malformed_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(key_path(dir.path()), "not a key\n").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityError::Malformed { .. })));
        std::fs::write(key_path(dir.path()), "é".repeat(32)).unwrap();
        assert!(matches!(load(dir.path()), Err(IdentityError::Malformed { .. })));
    }
}
