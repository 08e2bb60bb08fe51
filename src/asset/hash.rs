//! [`AssetHash`]: the name of an asset, parsed once where it enters.

use std::fmt;
use std::str::FromStr;

/// The name of an asset: the BLAKE3 hash of its bytes.
///
/// Shown as 64 lowercase hex characters in HTTP, JSON and protocol v1; sent as
/// raw 32 bytes in protocol v2. Every boundary (HTTP, protobuf, the store's
/// records) parses into this type once; inside, hashes travel typed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetHash([u8; 32]);

impl AssetHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the raw 32 bytes protocol v2 carries.
    pub fn from_slice(raw: &[u8]) -> Result<Self, MalformedHash> {
        <[u8; 32]>::try_from(raw)
            .map(Self)
            .map_err(|_| MalformedHash(format!("{} raw bytes", raw.len())))
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as used in HTTP and v1.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    /// The first [`HashPrefix::LEN`] bytes.
    pub fn prefix(&self) -> HashPrefix {
        HashPrefix(self.0[..HashPrefix::LEN].try_into().expect("8 bytes"))
    }

    /// The cursor a listing (which starts *after* its cursor) takes to start
    /// at the first hash with `prefix`: the largest hash below all of them,
    /// or `None` (list from the start) for the all-zero prefix.
    pub fn just_before(prefix: HashPrefix) -> Option<Self> {
        let below = u64::from_be_bytes(prefix.0).checked_sub(1)?;
        let mut bytes = [0xffu8; 32];
        bytes[..HashPrefix::LEN].copy_from_slice(&below.to_be_bytes());
        Some(Self(bytes))
    }
}

/// The first 8 bytes of an asset hash: how a coded reconciliation names the
/// assets it wants, since the holder can find its own asset by them (two of
/// one store's assets share a prefix with odds near `n² / 2^65`; then both
/// are sent, which costs bytes, never correctness).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct HashPrefix(pub [u8; 8]);

impl HashPrefix {
    /// Bytes of a prefix.
    pub const LEN: usize = 8;
}

impl From<blake3::Hash> for AssetHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for AssetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AssetHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetHash({})", self.short())
    }
}

/// Something that is not a BLAKE3 hash: not 64 hex characters, or not 32 raw
/// bytes. Holds (the start of) what was found, for the error message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed hash {0:?}: expected 64 hex characters or 32 raw bytes")]
pub struct MalformedHash(pub String);

impl FromStr for AssetHash {
    type Err = MalformedHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(MalformedHash(s.chars().take(80).collect()));
        }
        Ok(Self(bytes))
    }
}

impl serde::Serialize for AssetHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for AssetHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_malformed_input() {
        let hash = AssetHash::of(b"hello");
        assert_eq!(hash.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(hash.to_hex().parse::<AssetHash>(), Ok(hash));
        assert!("abc".parse::<AssetHash>().is_err());
        assert!("zz".repeat(32).parse::<AssetHash>().is_err());
        assert!(hash.to_hex().to_uppercase().parse::<AssetHash>().is_ok());
    }

    #[test]
    fn raw_bytes_must_be_exactly_32() {
        let hash = AssetHash::of(b"x");
        assert_eq!(AssetHash::from_slice(hash.as_bytes()), Ok(hash));
        assert!(AssetHash::from_slice(&[0; 31]).is_err());
        assert!(AssetHash::from_slice(&[0; 33]).is_err());
        assert!(AssetHash::from_slice(&[]).is_err());
    }
}
