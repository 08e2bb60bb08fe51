//! The node's persistent identity: an ed25519 secret key in its data folder, so
//! its endpoint id (what peers dial and allow) survives restarts.

use std::io::Write;
use std::path::Path;

use iroh::SecretKey;

/// File name of the secret key inside `--data-dir`.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The file exists but does not hold 64 hex characters.
    #[error("key file {0} is corrupt: expected 64 hex characters")]
    Corrupt(String),
}

/// Loads the secret key from `data_dir`, creating the folder and a new key
/// (file mode 0600) on first use.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, KeyError> {
    let path = data_dir.join(SECRET_KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes)
                .map_err(|_| KeyError::Corrupt(path.display().to_string()))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let key = SecretKey::generate();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(io)?;
            file.write_all(hex::encode(key.to_bytes()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            Ok(key)
        }
        Err(err) => Err(io(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), second.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::Corrupt(_))
        ));
    }
}
