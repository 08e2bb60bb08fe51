//! Granted tickets: admission for a dialer whose endpoint id the node's owner
//! does not know yet (bulk seeding a new node), by a capability it presents
//! in `HELLO`.
//!
//! `can-sync ticket --grant read|write [--expires DURATION]` makes a random
//! 32-byte secret, the [`Capability`], and prints it inside a ticket. The
//! node keeps only its BLAKE3 hash, with the right and the expiry, in
//! [`GRANTS_FILE`] of its data folder: a copy of the folder admits nobody.
//! `ticket --revoke ID` (or `all`) removes grants. The file is read again at
//! each check, so a running daemon sees new grants and revocations at once,
//! without a restart; it is replaced by rename, so a reader never sees half
//! of it.
//!
//! Only protocol `/2` carries a `HELLO`, so only `/2` admits by capability.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Right;

/// File name of the grants inside a node's data folder.
pub const GRANTS_FILE: &str = "grants.json";

/// The secret a granted ticket carries: whoever presents it is admitted with
/// the grant's right.
#[derive(Clone, PartialEq, Eq)]
pub struct Capability([u8; 32]);

impl Capability {
    /// A fresh random capability.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The capability of raw bytes, as `HELLO` carries it; `None` unless it
    /// is 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// What the node keeps of it: the BLAKE3 hash, hex.
    fn digest(&self) -> String {
        blake3::hash(&self.0).to_hex().to_string()
    }
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in a log.
        f.write_str("Capability(..)")
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for Capability {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| GrantError::Malformed)?;
        Ok(Self(bytes))
    }
}

/// One grant as the node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// What `--revoke` takes: the first 16 hex characters of the hash.
    pub id: String,
    /// BLAKE3 of the capability, hex.
    pub hash: String,
    /// What its holder may do.
    pub right: Right,
    /// When it was made (Unix ms).
    pub created_at_ms: i64,
    /// When it stops admitting (Unix ms); `None`: never.
    pub expires_at_ms: Option<i64>,
}

impl Grant {
    /// True while it admits, at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

/// The grants file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GrantsFile {
    grants: Vec<Grant>,
}

/// Why a grant could not be made, read or revoked.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Reading or writing the grants file failed.
    #[error("grants file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The grants file is not what this version writes.
    #[error("grants file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A capability that is not 64 hex characters.
    #[error("a capability is 64 hex characters")]
    Malformed,
    /// `--revoke ID` named no grant.
    #[error("no grant {0}: `can-sync ticket --list-grants` shows them")]
    Unknown(String),
}

/// What `--revoke` withdraws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// The grant with this id.
    One(String),
    /// Every grant.
    All,
}

/// The grants of one node's data folder; see the module docs.
#[derive(Debug, Clone)]
pub struct GrantBook {
    path: PathBuf,
}

impl GrantBook {
    /// The grants of the node in `data_dir`.
    pub fn at(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(GRANTS_FILE),
        }
    }

    /// Makes a grant of `right`, expiring `expires` after `now_ms` when
    /// given; returns the capability to hand out, and the grant kept.
    pub fn grant(
        &self,
        right: Right,
        expires: Option<Duration>,
        now_ms: i64,
    ) -> Result<(Capability, Grant), GrantError> {
        let capability = Capability::generate();
        let hash = capability.digest();
        let grant = Grant {
            id: hash[..16].to_string(),
            hash,
            right,
            created_at_ms: now_ms,
            expires_at_ms: expires.map(|after| {
                now_ms.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX))
            }),
        };
        let mut file = self.read()?;
        file.grants.push(grant.clone());
        self.write(&file)?;
        Ok((capability, grant))
    }

    /// Withdraws grants; returns how many.
    pub fn revoke(&self, which: &Revoke) -> Result<usize, GrantError> {
        let mut file = self.read()?;
        let before = file.grants.len();
        match which {
            Revoke::All => file.grants.clear(),
            Revoke::One(id) => {
                file.grants.retain(|grant| &grant.id != id);
                if file.grants.len() == before {
                    return Err(GrantError::Unknown(id.clone()));
                }
            }
        }
        self.write(&file)?;
        Ok(before - file.grants.len())
    }

    /// Every grant kept, expired ones too.
    pub fn list(&self) -> Result<Vec<Grant>, GrantError> {
        Ok(self.read()?.grants)
    }

    /// The right `capability` grants at `now_ms`, if any grant admits it.
    pub fn right_of(
        &self,
        capability: &Capability,
        now_ms: i64,
    ) -> Result<Option<Right>, GrantError> {
        let hash = capability.digest();
        Ok(self
            .read()?
            .grants
            .iter()
            .filter(|grant| grant.hash == hash && grant.is_live(now_ms))
            .map(|grant| grant.right)
            .max())
    }

    /// True when some grant admits at `now_ms`: only then may a stranger get
    /// as far as its `HELLO`.
    pub fn any_live(&self, now_ms: i64) -> Result<bool, GrantError> {
        Ok(self
            .read()?
            .grants
            .iter()
            .any(|grant| grant.is_live(now_ms)))
    }

    fn read(&self) -> Result<GrantsFile, GrantError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(GrantsFile::default())
            }
            Err(source) => return Err(self.io(source)),
        };
        serde_json::from_str(&text).map_err(|err| GrantError::Corrupt {
            path: self.path.display().to_string(),
            reason: err.to_string(),
        })
    }

    /// Replaces the file by rename, readable by its owner only: a reader
    /// sees the old grants or the new, never half.
    fn write(&self, file: &GrantsFile) -> Result<(), GrantError> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|err| self.io(err))?;
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|err| self.io(err))?;
        let text = serde_json::to_string_pretty(file).expect("grants serialise");
        temp.write_all(text.as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|err| self.io(err))?;
        temp.persist(&self.path).map_err(|err| self.io(err.error))?;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> GrantError {
        GrantError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn a_grant_admits_its_capability_with_its_right_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let book = GrantBook::at(dir.path());
        assert!(!book.any_live(NOW).unwrap(), "none before the first grant");
        let (reader, grant) = book
            .grant(Right::Read, Some(Duration::from_secs(60)), NOW)
            .unwrap();
        let (writer, _) = book.grant(Right::Write, None, NOW).unwrap();
        assert_eq!(book.right_of(&reader, NOW).unwrap(), Some(Right::Read));
        assert_eq!(book.right_of(&writer, NOW).unwrap(), Some(Right::Write));
        assert_eq!(book.right_of(&Capability::generate(), NOW).unwrap(), None);
        let later = NOW + 60_000;
        assert_eq!(book.right_of(&reader, later).unwrap(), None, "expired");
        assert!(book.any_live(later).unwrap(), "the writer's never expires");

        let kept = std::fs::read_to_string(dir.path().join(GRANTS_FILE)).unwrap();
        assert!(
            !kept.contains(&reader.to_string()),
            "the secret is not kept"
        );
        assert!(kept.contains(&grant.hash));
    }

    #[test]
    fn revoking_one_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let book = GrantBook::at(dir.path());
        let (first, grant) = book.grant(Right::Write, None, NOW).unwrap();
        let (second, _) = book.grant(Right::Write, None, NOW).unwrap();
        assert_eq!(book.revoke(&Revoke::One(grant.id.clone())).unwrap(), 1);
        assert_eq!(book.right_of(&first, NOW).unwrap(), None);
        assert_eq!(book.right_of(&second, NOW).unwrap(), Some(Right::Write));
        assert!(matches!(
            book.revoke(&Revoke::One(grant.id)),
            Err(GrantError::Unknown(_))
        ));
        assert_eq!(book.revoke(&Revoke::All).unwrap(), 1);
        assert!(!book.any_live(NOW).unwrap());
    }

    #[test]
    fn capabilities_round_trip_as_hex_and_never_print_in_debug() {
        let capability = Capability::generate();
        assert_eq!(
            capability.to_string().parse::<Capability>().unwrap(),
            capability
        );
        assert!("short".parse::<Capability>().is_err());
        assert_eq!(format!("{capability:?}"), "Capability(..)");
        assert_eq!(
            Capability::from_bytes(capability.as_bytes()),
            Some(capability)
        );
        assert_eq!(Capability::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GRANTS_FILE), "not json").unwrap();
        let err = GrantBook::at(dir.path()).any_live(NOW).unwrap_err();
        assert!(err.to_string().contains(GRANTS_FILE), "{err}");
    }
}
