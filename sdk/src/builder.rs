//! Building a job bundle in code, as an alternative to `ova job pack` on a directory.

use ova_jobs::{
    Bundle, BundleError, Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec,
};

/// A job could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The module is not a WebAssembly binary.
    #[error("the module is not a WebAssembly binary (no \\0asm header)")]
    NotWasm,
    /// A typed input could not be encoded.
    #[error("encoding unit {index}'s input: {message}")]
    Encode {
        /// The unit.
        index: usize,
        /// Why.
        message: String,
    },
    /// The job breaks a manifest rule (no units, bad quorum, duplicate units, …).
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Builds a [`Bundle`] from a module and unit inputs held in memory.
///
/// Defaults follow [`Replication::default`] and [`Limits::default`]; `max_replicas` grows to
/// at least twice the quorum unless set explicitly.
#[derive(Debug)]
pub struct JobBuilder {
    name: String,
    module: Vec<u8>,
    units: Vec<(Vec<u8>, Vec<String>)>,
    replication: Replication,
    max_replicas_set: bool,
    limits: Limits,
    determinism: Determinism,
    priority: i8,
    encode_error: Option<BuildError>,
}

impl JobBuilder {
    /// A job named `name` that runs `module` (a WASI preview-1 command).
    pub fn new(name: impl Into<String>, module: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            module: module.into(),
            units: Vec::new(),
            replication: Replication::default(),
            max_replicas_set: false,
            limits: Limits::default(),
            determinism: Determinism::SameArch,
            priority: 0,
            encode_error: None,
        }
    }

    /// Adds a unit with `input` on stdin and no arguments.
    pub fn unit(self, input: impl Into<Vec<u8>>) -> Self {
        self.unit_with_args(input, Vec::<String>::new())
    }

    /// Adds a unit with `input` on stdin and `args` as its command-line arguments.
    pub fn unit_with_args(
        mut self,
        input: impl Into<Vec<u8>>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.units.push((input.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// Adds one unit per input.
    pub fn units(self, inputs: impl IntoIterator<Item = impl Into<Vec<u8>>>) -> Self {
        inputs.into_iter().fold(self, |b, i| b.unit(i))
    }

    /// Adds a unit whose input is `value` encoded with postcard: the encoding `ova-guest`'s
    /// typed entry point decodes, so guest and client can share the type.
    pub fn typed_unit<T: serde::Serialize>(mut self, value: &T) -> Self {
        match postcard::to_stdvec(value) {
            Ok(bytes) => self.unit(bytes),
            Err(e) => {
                let index = self.units.len();
                self.encode_error
                    .get_or_insert(BuildError::Encode { index, message: e.to_string() });
                self
            }
        }
    }

    /// Distinct peers that must agree on a unit's result.
    pub fn quorum(mut self, quorum: u8) -> Self {
        self.replication.quorum = quorum;
        self
    }

    /// Most peers that may run one unit (extra replicas run on disagreement).
    pub fn max_replicas(mut self, n: u8) -> Self {
        self.replication.max_replicas = n;
        self.max_replicas_set = true;
        self
    }

    /// Extra peers that keep a copy of each verified result.
    pub fn result_copies(mut self, n: u8) -> Self {
        self.replication.result_copies = n;
        self
    }

    /// Replaces all limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Largest linear memory per unit, in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.limits.memory_bytes = mib.saturating_mul(1 << 20);
        self
    }

    /// Wall-clock deadline per unit run.
    pub fn deadline_secs(mut self, secs: f64) -> Self {
        self.limits.deadline_ms = (secs.max(0.0) * 1000.0).ceil() as u64;
        self
    }

    /// Deterministic instruction budget per unit.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.limits.fuel = Some(fuel);
        self
    }

    /// Results must agree bit for bit across CPU architectures (NaN-canonical; slower on floats).
    pub fn strict(mut self) -> Self {
        self.determinism = Determinism::Strict;
        self
    }

    /// Higher runs first.
    pub fn priority(mut self, priority: i8) -> Self {
        self.priority = priority;
        self
    }

    /// Checks every rule and builds the bundle.
    pub fn build(self) -> Result<Bundle, BuildError> {
        if let Some(e) = self.encode_error {
            return Err(e);
        }
        if !self.module.starts_with(b"\0asm") {
            return Err(BuildError::NotWasm);
        }
        let mut replication = self.replication;
        if !self.max_replicas_set {
            replication.max_replicas =
                replication.max_replicas.max(replication.quorum.saturating_mul(2));
        }
        let module = ova_jobs::BlobId::of(&self.module);
        let mut blobs = vec![self.module];
        let mut units = Vec::with_capacity(self.units.len());
        for (input, args) in self.units {
            units.push(UnitSpec { input: ova_jobs::BlobId::of(&input), args });
            blobs.push(input);
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            name: self.name,
            module,
            units,
            replication,
            limits: self.limits,
            determinism: self.determinism,
            priority: self.priority,
        };
        Ok(Bundle::new(manifest, blobs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn builds_a_valid_bundle() {
        let b = JobBuilder::new("j", WASM)
            .quorum(3)
            .fuel(99)
            .strict()
            .unit_with_args("a", ["x"])
            .typed_unit(&(1u32, "two".to_string()))
            .build()
            .unwrap();
        let m = b.manifest();
        assert_eq!(m.replication.quorum, 3);
        assert_eq!(m.replication.max_replicas, 6);
        assert_eq!(m.limits.fuel, Some(99));
        assert_eq!(m.determinism, Determinism::Strict);
        assert_eq!(b.input(0), b"a");
        let decoded: (u32, String) = postcard::from_bytes(b.input(1)).unwrap();
        assert_eq!(decoded, (1, "two".to_string()));
        assert_eq!(Bundle::decode(&b.encode()).unwrap(), b);
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            JobBuilder::new("j", b"nope".to_vec()).unit("a").build(),
            Err(BuildError::NotWasm)
        ));
        let e = JobBuilder::new("j", WASM).build().unwrap_err();
        assert!(e.to_string().contains("at least one unit"), "{e}");
        let e = JobBuilder::new("j", WASM).units(["a", "a"]).build().unwrap_err();
        assert!(e.to_string().contains("same unit"), "{e}");
        let e = JobBuilder::new("j", WASM).quorum(0).unit("a").build().unwrap_err();
        assert!(e.to_string().contains("quorum"), "{e}");
    }
}
