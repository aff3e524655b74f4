//! Packing a job from a directory: `ova.toml` + the module + input files → manifest and blobs.
//!
//! ```toml
//! name = "primes"
//! module = "primes.wasm"          # path relative to the directory
//! priority = 0                    # optional, -128..=127
//! determinism = "same-arch"       # or "strict" (NaN-canonical, any architecture)
//!
//! [replication]                   # optional
//! quorum = 2
//! max_replicas = 4
//! result_copies = 1
//!
//! [limits]                        # optional
//! memory_mib = 256
//! deadline_secs = 60
//! fuel = 10_000_000_000           # optional
//! max_output_bytes = 16_777_216
//! max_stderr_bytes = 65_536
//!
//! [[units]]                       # any number of explicit units…
//! input = "inputs/a.bin"          # a file, or
//! input_text = "0 1000000"        # inline text
//! args = ["--fast"]
//!
//! [units_range]                   # …and/or `count` generated units: "{i}" in input_text
//! count = 256                     # and in args becomes 0, 1, … count-1
//! input_text = "{i}"
//! args = ["--tile", "{i}"]
//!
//! [units_dir]                     # …and/or one unit per file of a directory, sorted by name
//! dir = "inputs"
//! args = []
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::{Bundle, BundleError};
use crate::id::BlobId;
use crate::manifest::{Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec};

/// The manifest source file every job directory holds.
pub const MANIFEST_FILE: &str = "ova.toml";

/// Packing a directory failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `ova.toml` is not valid.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A rule of the source format is broken.
    #[error("{0}")]
    Invalid(String),
    /// The resulting bundle is invalid.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    name: String,
    module: PathBuf,
    #[serde(default)]
    priority: i8,
    #[serde(default)]
    determinism: DeterminismSrc,
    #[serde(default)]
    replication: Option<ReplicationSrc>,
    #[serde(default)]
    limits: Option<LimitsSrc>,
    #[serde(default)]
    units: Vec<UnitSrc>,
    #[serde(default)]
    units_range: Option<RangeSrc>,
    #[serde(default)]
    units_dir: Option<DirSrc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum DeterminismSrc {
    #[default]
    SameArch,
    Strict,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationSrc {
    quorum: Option<u8>,
    max_replicas: Option<u8>,
    result_copies: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSrc {
    memory_mib: Option<u64>,
    deadline_secs: Option<f64>,
    fuel: Option<u64>,
    max_output_bytes: Option<u64>,
    max_stderr_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitSrc {
    input: Option<PathBuf>,
    input_text: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeSrc {
    count: u32,
    #[serde(default)]
    input_text: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirSrc {
    dir: PathBuf,
    #[serde(default)]
    args: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, PackError> {
    std::fs::read(path).map_err(|source| PackError::Io { path: path.to_path_buf(), source })
}

/// Packs the job described by `dir/ova.toml` into a verified [`Bundle`].
pub fn pack_dir(dir: impl AsRef<Path>) -> Result<Bundle, PackError> {
    let dir = dir.as_ref();
    let src_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&src_path)
        .map_err(|source| PackError::Io { path: src_path.clone(), source })?;
    let src: Source = toml::from_str(&text)
        .map_err(|e| PackError::Toml { path: src_path.clone(), message: e.to_string() })?;

    let mut blobs: BTreeMap<BlobId, Vec<u8>> = BTreeMap::new();
    let mut add = |bytes: Vec<u8>| {
        let id = BlobId::of(&bytes);
        blobs.entry(id).or_insert(bytes);
        id
    };
    let module_path = dir.join(&src.module);
    let module_bytes = read(&module_path)?;
    if !module_bytes.starts_with(b"\0asm") {
        return Err(PackError::Invalid(format!(
            "{}: not a WebAssembly binary (no \\0asm header)",
            module_path.display()
        )));
    }
    let module = add(module_bytes);

    let mut units = Vec::new();
    for (i, u) in src.units.iter().enumerate() {
        let input = match (&u.input, &u.input_text) {
            (Some(p), None) => read(&dir.join(p))?,
            (None, Some(t)) => t.clone().into_bytes(),
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err(PackError::Invalid(format!(
                    "units[{i}]: give `input` or `input_text`, not both"
                )));
            }
        };
        units.push(UnitSpec { input: add(input), args: u.args.clone() });
    }
    if let Some(r) = &src.units_range {
        for i in 0..r.count {
            let s = i.to_string();
            let input = r.input_text.replace("{i}", &s).into_bytes();
            let args = r.args.iter().map(|a| a.replace("{i}", &s)).collect();
            units.push(UnitSpec { input: add(input), args });
        }
    }
    if let Some(d) = &src.units_dir {
        let path = dir.join(&d.dir);
        let io = |source| PackError::Io { path: path.clone(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_type().map_err(io)?.is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
        for f in files {
            units.push(UnitSpec { input: add(read(&f)?), args: d.args.clone() });
        }
    }
    if units.is_empty() {
        return Err(PackError::Invalid(format!(
            "{}: no units (add [[units]], [units_range] or [units_dir])",
            src_path.display()
        )));
    }

    let mut replication = Replication::default();
    if let Some(r) = &src.replication {
        replication.quorum = r.quorum.unwrap_or(replication.quorum);
        replication.max_replicas = r
            .max_replicas
            .unwrap_or(replication.max_replicas.max(replication.quorum.saturating_mul(2)));
        replication.result_copies = r.result_copies.unwrap_or(replication.result_copies);
    }
    let mut limits = Limits::default();
    if let Some(l) = &src.limits {
        if let Some(m) = l.memory_mib {
            limits.memory_bytes = m.saturating_mul(1 << 20);
        }
        if let Some(d) = l.deadline_secs {
            if !(d.is_finite() && d > 0.0) {
                return Err(PackError::Invalid(format!(
                    "limits.deadline_secs must be positive, got {d}"
                )));
            }
            limits.deadline_ms = (d * 1000.0).ceil() as u64;
        }
        limits.fuel = l.fuel;
        limits.max_output_bytes = l.max_output_bytes.unwrap_or(limits.max_output_bytes);
        limits.max_stderr_bytes = l.max_stderr_bytes.unwrap_or(limits.max_stderr_bytes);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        name: src.name,
        module,
        units,
        replication,
        limits,
        determinism: match src.determinism {
            DeterminismSrc::SameArch => Determinism::SameArch,
            DeterminismSrc::Strict => Determinism::Strict,
        },
        priority: src.priority,
    };
    Ok(Bundle::new(manifest, blobs.into_values())?)
}
