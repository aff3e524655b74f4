//! Content ids: BLAKE3 hashes with a distinct type per kind of thing they name.
//!
//! Every id is 32 bytes, shown as 64 lowercase hex digits. Distinct newtypes keep a
//! [`UnitId`] from being passed where a [`BlobId`] is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hex id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {input:?}: expected 64 hex digits")]
pub struct IdParseError {
    /// What was given (cut to 80 characters).
    pub input: String,
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 12 hex digits, for logs and tables.
            pub fn short(&self) -> String {
                self.to_string()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                blake3::Hash::from_hex(s.trim())
                    .map(|h| Self(*h.as_bytes()))
                    .map_err(|_| IdParseError { input: s.chars().take(80).collect() })
            }
        }
    };
}

hash_id!(
    /// The BLAKE3 hash of a blob's bytes: a module, an input or an output.
    BlobId,
    "BlobId"
);
hash_id!(
    /// Names one unit of work: BLAKE3 over its module hash, input hash and arguments.
    ///
    /// Two jobs that contain the same (module, input, args) contain the same unit, so a result
    /// verified once can be reused anywhere.
    UnitId,
    "UnitId"
);
hash_id!(
    /// Names a job: the BLAKE3 hash of its encoded manifest.
    JobId,
    "JobId"
);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl UnitId {
    /// The id of the unit that runs `module` on `input` with `args`.
    ///
    /// The hash is domain-separated and every field is length-prefixed, so no two different
    /// (module, input, args) triples can produce the same byte stream.
    pub fn derive(module: &BlobId, input: &BlobId, args: &[String]) -> Self {
        // Set up once: deriving the context's key is a compression of its own, as costly as
        // the rest of a short unit's hash. A clone hashes exactly as a fresh hasher would.
        static UNIT_ID_HASHER: std::sync::LazyLock<blake3::Hasher> =
            std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key("ova unit id v1"));
        let mut h = UNIT_ID_HASHER.clone();
        h.update(&module.0);
        h.update(&input.0);
        h.update(&(args.len() as u64).to_le_bytes());
        for a in args {
            h.update(&(a.len() as u64).to_le_bytes());
            h.update(a.as_bytes());
        }
        Self(*h.finalize().as_bytes())
    }
}

impl JobId {
    /// The id of a job whose canonical manifest encoding is `manifest_bytes`.
    pub fn of_manifest_bytes(manifest_bytes: &[u8]) -> Self {
        Self(*blake3::hash(manifest_bytes).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = BlobId::of(b"hello");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        assert!("xyz".parse::<BlobId>().is_err());
        assert!(s[..63].parse::<BlobId>().is_err());
    }

    #[test]
    fn unit_ids_hash_as_a_fresh_key_derivation_does() {
        let (m, i) = (BlobId::of(b"module"), BlobId::of(b"input"));
        let mut h = blake3::Hasher::new_derive_key("ova unit id v1");
        h.update(&m.0);
        h.update(&i.0);
        h.update(&1u64.to_le_bytes());
        h.update(&2u64.to_le_bytes());
        h.update(b"-n");
        assert_eq!(UnitId::derive(&m, &i, &["-n".into()]).0, *h.finalize().as_bytes());
    }

    #[test]
    fn unit_id_separates_fields() {
        let m = BlobId::of(b"m");
        let i = BlobId::of(b"i");
        let a = UnitId::derive(&m, &i, &["ab".into(), "c".into()]);
        let b = UnitId::derive(&m, &i, &["a".into(), "bc".into()]);
        let c = UnitId::derive(&i, &m, &["ab".into(), "c".into()]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, UnitId::derive(&m, &i, &["ab".into(), "c".into()]));
    }
}
