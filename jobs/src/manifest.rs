//! The job manifest: what to run, on what, how many times, and within which limits.
//!
//! A manifest is encoded with postcard; its [`JobId`] is the BLAKE3 hash of that encoding.
//! Decoding accepts only the canonical encoding (re-encoding must give the same bytes), so one
//! job has exactly one id.

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, JobId, UnitId};

/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u8 = 1;
/// Largest encoded manifest accepted (16 MiB: about 400k units with short args).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Most units one job may hold.
pub const MAX_UNITS: usize = 1_000_000;
/// Most replicas of one unit a job may ask for.
pub const MAX_REPLICAS: u8 = 32;
/// Most arguments one unit may pass to its module.
pub const MAX_ARGS: usize = 64;
/// Longest single argument, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Largest linear memory a unit may ask for (wasm32's 4 GiB address space).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Longest deadline a unit may ask for (one day).
pub const MAX_DEADLINE_MS: u64 = 24 * 3600 * 1000;
/// Largest output or stderr cap a unit may ask for (1 GiB).
pub const MAX_OUTPUT_CAP_BYTES: u64 = 1 << 30;

/// A job: one module run over many units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, always [`MANIFEST_VERSION`] for manifests this build accepts.
    pub version: u8,
    /// A human name for the job (not unique; the [`JobId`] is).
    pub name: String,
    /// The WebAssembly module (a WASI preview-1 command) every unit runs.
    pub module: BlobId,
    /// The units, in the order the submitter wants results reported.
    pub units: Vec<UnitSpec>,
    /// How many peers run each unit and how results are kept.
    pub replication: Replication,
    /// Per-unit resource limits.
    pub limits: Limits,
    /// Which peers' results may be compared with each other.
    pub determinism: Determinism,
    /// Higher runs first when peers choose between jobs.
    pub priority: i8,
}

/// One unit: the module runs once with this input on stdin and these arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitSpec {
    /// The blob fed to the module's standard input.
    pub input: BlobId,
    /// Command-line arguments after the program name.
    pub args: Vec<String>,
}

/// Replication and verification policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// Distinct peers that must sign the same result hash before a unit counts as verified.
    pub quorum: u8,
    /// Most peers that may run one unit (extra replicas are run on disagreement); at least
    /// `quorum`. When this many disagree without a quorum, the unit fails.
    pub max_replicas: u8,
    /// Peers, besides the executors and the submitter, that keep a copy of each verified result.
    pub result_copies: u8,
}

/// Per-unit resource limits, enforced by every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline for one run, in milliseconds.
    pub deadline_ms: u64,
    /// Deterministic instruction budget; `None` runs without fuel metering.
    pub fuel: Option<u64>,
    /// Largest standard output, in bytes; more ends the unit as "output too large".
    pub max_output_bytes: u64,
    /// Largest standard error kept, in bytes (the rest is dropped, not an error).
    pub max_stderr_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            deadline_ms: 60_000,
            fuel: None,
            max_output_bytes: 16 << 20,
            max_stderr_bytes: 64 << 10,
        }
    }
}

impl Default for Replication {
    fn default() -> Self {
        Self { quorum: 2, max_replicas: 4, result_copies: 1 }
    }
}

/// Which results may be compared bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Determinism {
    /// Replicas are compared only among peers of the same CPU architecture class; code runs at
    /// full speed. NaN bit patterns may differ between architectures, so results may too.
    #[default]
    SameArch,
    /// NaN canonicalisation is on and any peer may be a replica. Costs 2.5–4× on float-heavy
    /// code.
    Strict,
}

/// A manifest breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Encoded manifest larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The manifest has a version this build does not read.
    #[error("manifest version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u8,
        /// Version supported.
        supported: u8,
    },
    /// The bytes are not a postcard-encoded manifest.
    #[error("manifest cannot be decoded: {0}")]
    Undecodable(String),
    /// The bytes decode, but are not the canonical encoding, so the job id would be ambiguous.
    #[error("manifest encoding is not canonical")]
    NotCanonical,
    /// A field has a value outside its allowed range.
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

impl Manifest {
    /// Encodes the manifest canonically (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding a manifest into a Vec cannot fail")
    }

    /// The job id: BLAKE3 of [`Manifest::encode`].
    pub fn job_id(&self) -> JobId {
        JobId::of_manifest_bytes(&self.encode())
    }

    /// Decodes and validates a manifest, checking its size before decoding and that the
    /// encoding is canonical after.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len(), max: MAX_MANIFEST_BYTES });
        }
        if let Some(&v) = bytes.first()
            && v != MANIFEST_VERSION
        {
            return Err(ManifestError::UnsupportedVersion {
                found: v,
                supported: MANIFEST_VERSION,
            });
        }
        let (m, rest): (Manifest, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| ManifestError::Undecodable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestError::Undecodable(format!("{} trailing bytes", rest.len())));
        }
        if m.encode() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks every rule a manifest must follow.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                found: self.version,
                supported: MANIFEST_VERSION,
            });
        }
        if self.name.trim().is_empty() || self.name.len() > 128 {
            return bad(format!("name must be 1–128 bytes, got {:?}", self.name));
        }
        if self.units.is_empty() {
            return bad("a job needs at least one unit".into());
        }
        if self.units.len() > MAX_UNITS {
            return bad(format!("{} units; the limit is {MAX_UNITS}", self.units.len()));
        }
        let r = &self.replication;
        if r.quorum == 0 {
            return bad("quorum must be at least 1".into());
        }
        if r.max_replicas < r.quorum || r.max_replicas > MAX_REPLICAS {
            return bad(format!(
                "max_replicas must be between quorum ({}) and {MAX_REPLICAS}, got {}",
                r.quorum, r.max_replicas
            ));
        }
        if r.result_copies > MAX_REPLICAS {
            return bad(format!("result_copies must be at most {MAX_REPLICAS}"));
        }
        let l = &self.limits;
        if l.memory_bytes < 65536 || l.memory_bytes > MAX_MEMORY_BYTES {
            return bad(format!(
                "memory limit must be between 64 KiB and 4 GiB, got {} bytes",
                l.memory_bytes
            ));
        }
        if l.deadline_ms == 0 || l.deadline_ms > MAX_DEADLINE_MS {
            return bad(format!("deadline must be 1 ms to 24 h, got {} ms", l.deadline_ms));
        }
        if l.fuel == Some(0) {
            return bad("fuel, when set, must be positive".into());
        }
        if l.max_output_bytes > MAX_OUTPUT_CAP_BYTES || l.max_stderr_bytes > MAX_OUTPUT_CAP_BYTES {
            return bad("output and stderr caps must be at most 1 GiB".into());
        }
        let mut seen = std::collections::HashMap::with_capacity(self.units.len());
        for (i, u) in self.units.iter().enumerate() {
            if u.args.len() > MAX_ARGS {
                return bad(format!("unit {i} has {} args; the limit is {MAX_ARGS}", u.args.len()));
            }
            if let Some(a) = u.args.iter().find(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
                return bad(format!(
                    "unit {i} has an argument longer than {MAX_ARG_BYTES} bytes or containing NUL ({} bytes)",
                    a.len()
                ));
            }
            // Same input and args under the same module is the same unit id; compared as they
            // are (not hashed into ids: a job of many units is validated by every peer that
            // decodes it, and deriving the ids took a BLAKE3 key derivation per unit).
            if let Some(j) = seen.insert((&u.input, u.args.as_slice()), i) {
                return bad(format!("unit {i} is the same unit as unit {j} (same input and args)"));
            }
        }
        Ok(())
    }

    /// The id of unit `index`. Panics if `index` is out of range.
    pub fn unit_id(&self, index: usize) -> UnitId {
        let u = &self.units[index];
        UnitId::derive(&self.module, &u.input, &u.args)
    }

    /// Ids of all units, in order.
    pub fn unit_ids(&self) -> Vec<UnitId> {
        (0..self.units.len()).map(|i| self.unit_id(i)).collect()
    }

    /// Every blob the job needs (module first, then distinct inputs in unit order).
    pub fn blob_ids(&self) -> Vec<BlobId> {
        let mut seen = std::collections::HashSet::new();
        std::iter::once(self.module)
            .chain(self.units.iter().map(|u| u.input))
            .filter(|b| seen.insert(*b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            name: "t".into(),
            module: BlobId::of(b"module"),
            units: (0..3u8)
                .map(|i| UnitSpec { input: BlobId::of(&[i]), args: vec![i.to_string()] })
                .collect(),
            replication: Replication::default(),
            limits: Limits::default(),
            determinism: Determinism::SameArch,
            priority: 0,
        }
    }

    #[test]
    fn round_trip_and_id() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        assert_eq!(m.job_id(), JobId::of_manifest_bytes(&b));
    }

    #[test]
    fn rejects_bad_values() {
        let mut m = sample();
        m.replication.quorum = 0;
        assert!(matches!(m.validate(), Err(ManifestError::Invalid(_))));
        let mut m = sample();
        m.replication.max_replicas = 1;
        assert!(m.validate().unwrap_err().to_string().contains("max_replicas"));
        let mut m = sample();
        m.units[2] = m.units[0].clone();
        assert!(
            m.validate().unwrap_err().to_string().contains("unit 2 is the same unit as unit 0")
        );
        // The same input with other args, or other input with the same args, is another unit.
        let mut m = sample();
        m.units[2].input = m.units[0].input;
        m.validate().unwrap();
        m.units[1].args = m.units[0].args.clone();
        m.validate().unwrap();
        let mut m = sample();
        m.units.clear();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.limits.deadline_ms = 0;
        assert!(m.validate().is_err());
    }

    #[test]
    fn rejects_wrong_version_and_trailing_bytes() {
        let mut b = sample().encode();
        b[0] = 9;
        assert!(matches!(
            Manifest::decode(&b),
            Err(ManifestError::UnsupportedVersion { found: 9, .. })
        ));
        let mut b = sample().encode();
        b.push(0);
        assert!(matches!(Manifest::decode(&b), Err(ManifestError::Undecodable(_))));
    }
}
