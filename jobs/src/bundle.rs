//! The single-file job bundle (`job.ova`): a manifest, its module and its inputs.
//!
//! Layout:
//!
//! ```text
//! magic    8 bytes   89 'O' 'V' 'A' 0D 0A 1A 0A   (PNG-style: catches text-mode mangling)
//! version  1 byte    BUNDLE_VERSION
//! body     postcard  { job_id, manifest bytes, [ (blob id, blob bytes) ... ] }
//! ```
//!
//! The framing is these nine bytes; everything after is postcard. Reading checks, in order: the
//! file size against [`MAX_BUNDLE_BYTES`], the magic, the version, that the body decodes with
//! nothing left over, that the manifest hashes to the declared job id and is valid, that every
//! blob hashes to its id, and that the blobs are exactly those the manifest names. Any failure is
//! a [`BundleError`] naming what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, JobId};
use crate::manifest::{Manifest, ManifestError};

/// First bytes of every bundle file.
pub const MAGIC: [u8; 8] = [0x89, b'O', b'V', b'A', 0x0d, 0x0a, 0x1a, 0x0a];
/// The bundle format version this build writes and reads.
pub const BUNDLE_VERSION: u8 = 1;
/// Largest bundle accepted: 2 GiB.
pub const MAX_BUNDLE_BYTES: u64 = 2 << 30;

/// A verified job bundle: a valid manifest and exactly the blobs it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    manifest: Manifest,
    job_id: JobId,
    blobs: BTreeMap<BlobId, Vec<u8>>,
}

/// The file's body after the magic and version. Byte fields are byte strings (see
/// [`crate::wire::byte_string`]): the same bytes as sequences, read and written without a call
/// per byte (a bundle may hold gigabytes).
#[derive(Deserialize)]
struct Body {
    job_id: JobId,
    #[serde(with = "crate::wire::byte_string")]
    manifest: Vec<u8>,
    blobs: Vec<BodyBlob>,
}

/// One blob of a [`Body`].
#[derive(Deserialize)]
struct BodyBlob(BlobId, #[serde(with = "crate::wire::byte_string")] Vec<u8>);

/// [`Body`] borrowing the bundle's bytes, for encoding.
#[derive(Serialize)]
struct BodyRef<'a> {
    job_id: JobId,
    #[serde(with = "crate::wire::byte_string")]
    manifest: &'a [u8],
    blobs: Vec<BlobRef<'a>>,
}

/// [`BodyBlob`], borrowed.
#[derive(Serialize)]
struct BlobRef<'a>(BlobId, #[serde(with = "crate::wire::byte_string")] &'a [u8]);

/// What is wrong with a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Larger than [`MAX_BUNDLE_BYTES`].
    #[error("bundle is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Does not start with [`MAGIC`].
    #[error("not an Ova bundle (bad magic bytes)")]
    NotABundle,
    /// A bundle version this build does not read.
    #[error(
        "bundle format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version found.
        found: u8,
        /// Version supported.
        supported: u8,
    },
    /// The file ends before the bundle does.
    #[error("bundle is truncated")]
    Truncated,
    /// The body is not a valid encoding.
    #[error("bundle is corrupt: {0}")]
    Corrupt(String),
    /// Bytes after the end of the bundle.
    #[error("bundle has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The manifest does not hash to the job id in the header.
    #[error("manifest does not match the bundle's job id (declared {declared}, actual {actual})")]
    ManifestHashMismatch {
        /// Job id in the header.
        declared: JobId,
        /// Hash of the manifest bytes.
        actual: JobId,
    },
    /// The manifest itself is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A blob's bytes do not hash to its id.
    #[error("blob {declared} is corrupt: its bytes hash to {actual}")]
    BlobHashMismatch {
        /// Id recorded.
        declared: BlobId,
        /// Hash of the bytes.
        actual: BlobId,
    },
    /// A blob the manifest needs is absent.
    #[error("bundle lacks the {role} blob {id}")]
    MissingBlob {
        /// The blob.
        id: BlobId,
        /// "module" or "input of unit N".
        role: String,
    },
    /// A blob the manifest does not name.
    #[error("bundle holds blob {0} that the manifest does not use")]
    UnreferencedBlob(BlobId),
    /// The same blob twice.
    #[error("bundle holds blob {0} twice")]
    DuplicateBlob(BlobId),
}

impl Bundle {
    /// Builds a bundle from a manifest and blobs, checking that the manifest is valid and that
    /// the blobs are exactly the ones it names (extra blobs are an error, not silently dropped).
    pub fn new(
        manifest: Manifest,
        blobs: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Self, BundleError> {
        manifest.validate()?;
        let mut map = BTreeMap::new();
        for b in blobs {
            map.insert(BlobId::of(&b), b);
        }
        let job_id = manifest.job_id();
        let bundle = Self { manifest, job_id, blobs: map };
        bundle.check_blob_set()?;
        Ok(bundle)
    }

    fn check_blob_set(&self) -> Result<(), BundleError> {
        if !self.blobs.contains_key(&self.manifest.module) {
            return Err(BundleError::MissingBlob {
                id: self.manifest.module,
                role: "module".into(),
            });
        }
        for (i, u) in self.manifest.units.iter().enumerate() {
            if !self.blobs.contains_key(&u.input) {
                return Err(BundleError::MissingBlob {
                    id: u.input,
                    role: format!("input of unit {i}"),
                });
            }
        }
        let needed: std::collections::HashSet<BlobId> =
            self.manifest.blob_ids().into_iter().collect();
        if let Some(extra) = self.blobs.keys().find(|k| !needed.contains(k)) {
            return Err(BundleError::UnreferencedBlob(*extra));
        }
        Ok(())
    }

    /// The job's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// A blob by id.
    pub fn blob(&self, id: &BlobId) -> Option<&[u8]> {
        self.blobs.get(id).map(Vec::as_slice)
    }

    /// The module's bytes.
    pub fn module(&self) -> &[u8] {
        &self.blobs[&self.manifest.module]
    }

    /// The input of unit `index`. Panics if out of range.
    pub fn input(&self, index: usize) -> &[u8] {
        &self.blobs[&self.manifest.units[index].input]
    }

    /// All blobs, by id.
    pub fn blobs(&self) -> impl Iterator<Item = (&BlobId, &[u8])> {
        self.blobs.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// Total bytes of all blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.len() as u64).sum()
    }

    /// Splits the bundle into its manifest and blobs.
    pub fn into_parts(self) -> (Manifest, BTreeMap<BlobId, Vec<u8>>) {
        (self.manifest, self.blobs)
    }

    /// Encodes the bundle file.
    pub fn encode(&self) -> Vec<u8> {
        let manifest = self.manifest.encode();
        let body = BodyRef {
            job_id: self.job_id,
            manifest: &manifest,
            blobs: self.blobs.iter().map(|(k, v)| BlobRef(*k, v)).collect(),
        };
        let mut out = Vec::with_capacity(self.blob_bytes() as usize + 4096);
        out.extend_from_slice(&MAGIC);
        out.push(BUNDLE_VERSION);
        postcard::to_io(&body, &mut out).expect("postcard encoding into a Vec cannot fail");
        out
    }

    /// Decodes and fully verifies a bundle file's bytes (at most [`MAX_BUNDLE_BYTES`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        Self::decode_limited(bytes, MAX_BUNDLE_BYTES)
    }

    /// Decodes and fully verifies a bundle of at most `max_bytes` bytes: a receiver that
    /// accepts bundles from others picks its own cap.
    pub fn decode_limited(bytes: &[u8], max_bytes: u64) -> Result<Self, BundleError> {
        if bytes.len() as u64 > max_bytes {
            return Err(BundleError::TooLarge { size: bytes.len() as u64, max: max_bytes });
        }
        if bytes.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) {
                BundleError::Truncated
            } else {
                BundleError::NotABundle
            });
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let Some((&version, body)) = bytes[MAGIC.len()..].split_first() else {
            return Err(BundleError::Truncated);
        };
        if version != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion {
                found: version,
                supported: BUNDLE_VERSION,
            });
        }
        let (body, rest): (Body, _) = postcard::take_from_bytes(body).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => BundleError::Truncated,
            e => BundleError::Corrupt(e.to_string()),
        })?;
        if !rest.is_empty() {
            return Err(BundleError::TrailingBytes(rest.len()));
        }
        let actual = JobId::of_manifest_bytes(&body.manifest);
        if actual != body.job_id {
            return Err(BundleError::ManifestHashMismatch { declared: body.job_id, actual });
        }
        let manifest = Manifest::decode(&body.manifest)?;
        let mut blobs = BTreeMap::new();
        for BodyBlob(id, data) in body.blobs {
            let actual = BlobId::of(&data);
            if actual != id {
                return Err(BundleError::BlobHashMismatch { declared: id, actual });
            }
            if blobs.insert(id, data).is_some() {
                return Err(BundleError::DuplicateBlob(id));
            }
        }
        let bundle = Self { manifest, job_id: actual, blobs };
        bundle.check_blob_set()?;
        Ok(bundle)
    }

    /// Reads and verifies a bundle file, checking its size before reading it.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self, BundleError> {
        let path = path.as_ref();
        let io = |source| BundleError::Io { path: path.to_path_buf(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { size, max: MAX_BUNDLE_BYTES });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::decode(&bytes)
    }

    /// Writes the bundle to `path` atomically (a temporary file renamed into place), so a crash
    /// never leaves a half-written bundle under the final name.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), BundleError> {
        let path = path.as_ref();
        let io = |source| BundleError::Io { path: path.to_path_buf(), source };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.encode()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}
