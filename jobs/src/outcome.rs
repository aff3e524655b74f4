//! How a unit ended, and the result hash replicas are compared by.
//!
//! Every way a run can end is one variant of [`Outcome`]; a [`UnitResult`] adds the captured
//! output, the fuel used and the [`Provenance`] (determinism mode, CPU architecture, engine) of
//! the peer that produced it.
//!
//! # What the result hash covers
//!
//! [`ResultHash`] is BLAKE3 (key derived from `"ova result hash v1"`) over:
//!
//! - a one-byte tag for the outcome kind, then the outcome's *structured, deterministic* fields:
//!   the exit code of [`Outcome::Exit`], the [`TrapKind`] of [`Outcome::Trap`], the resource and
//!   limit of [`Outcome::OutOfMemory`], the fuel limit of [`Outcome::OutOfFuel`], the cap of
//!   [`Outcome::OutputTooLarge`], the module and name of [`Outcome::ForbiddenImport`];
//! - the length of standard output and its bytes.
//!
//! It does **not** cover: standard error (diagnostics, kept for humans), human-readable
//! messages (they change between engine versions), fuel used (an engine-version detail of the
//! metering, reported but not agreed on), wall time, or the provenance.
//!
//! Outcomes that depend on the machine rather than on the unit have **no** hash
//! ([`Outcome::is_deterministic`] is false): [`Outcome::Timeout`] (a slow peer times out where a
//! fast one does not), [`TrapKind::StackOverflow`] (depends on the compiler's frame sizes and the
//! configured stack) and [`Outcome::Failed`] (the executor itself failed). A scheduler must never
//! count those as a result; it may retry the unit elsewhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::UnitId;
use crate::manifest::Determinism;

/// How one run of a unit ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `_start` returned, or the unit called `proc_exit(0)`.
    Success,
    /// The unit called `proc_exit` with a non-zero code.
    Exit {
        /// The exit code.
        code: i32,
    },
    /// The unit trapped (a wasm runtime error, or a Rust guest's panic, which aborts).
    Trap {
        /// Which trap.
        kind: TrapKind,
    },
    /// The unit asked for more memory or table space than its limits allow (at instantiation
    /// or when growing).
    OutOfMemory {
        /// Linear memory (bytes) or table (elements).
        resource: Resource,
        /// How much it asked for, in the resource's unit.
        requested: u64,
        /// The limit, in the same unit.
        limit: u64,
    },
    /// The unit used up its fuel (deterministic instruction budget).
    OutOfFuel {
        /// The budget it had.
        limit: u64,
    },
    /// The unit wrote more to standard output than allowed.
    OutputTooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
    /// The module cannot run: not WebAssembly, malformed, a component rather than a core
    /// module, no `_start` command entry point, or too large.
    InvalidModule {
        /// Why.
        reason: String,
    },
    /// The module imports something the sandbox does not provide (only WASI preview-1
    /// functions are available).
    ForbiddenImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The unit (or compiling its module) did not finish before its wall-clock deadline. Not
    /// deterministic: never a result.
    Timeout {
        /// Which phase ran out of time.
        phase: Phase,
        /// The deadline that applied, in milliseconds.
        deadline_ms: u64,
    },
    /// The executor failed (crashed, ran out of host resources). Not deterministic: never a
    /// result; the unit may be retried.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// The kind of a wasm trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrapKind {
    /// The wasm call stack overflowed (deep recursion). Not deterministic across engines.
    StackOverflow,
    /// Out-of-bounds linear memory access.
    MemoryOutOfBounds,
    /// Misaligned atomic access.
    HeapMisaligned,
    /// Out-of-bounds table access.
    TableOutOfBounds,
    /// Indirect call to a null table entry.
    IndirectCallToNull,
    /// Indirect call with the wrong signature.
    BadSignature,
    /// Integer overflow (e.g. `i32.div_s` of `MIN / -1`).
    IntegerOverflow,
    /// Integer division by zero.
    IntegerDivisionByZero,
    /// Float to integer conversion out of range or NaN.
    BadConversionToInteger,
    /// `unreachable` executed (Rust guests reach it when they panic or abort).
    Unreachable,
    /// Null reference dereferenced, or another GC/reference-types trap.
    NullReference,
    /// A WASI host function refused the call in a way that ends the unit.
    HostError,
    /// A trap of a kind this build does not name.
    Other,
}

/// A limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// Linear memory, counted in bytes.
    Memory,
    /// Table, counted in elements.
    Table,
}

/// The phase a timeout happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Compiling the module.
    Compile,
    /// Running the unit.
    Run,
}

/// A fieldless label for an [`Outcome`], for counters, summaries and metrics (bounded
/// cardinality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OutcomeKind {
    /// [`Outcome::Success`].
    Success,
    /// [`Outcome::Exit`].
    Exit,
    /// [`Outcome::Trap`].
    Trap,
    /// [`Outcome::OutOfMemory`].
    OutOfMemory,
    /// [`Outcome::OutOfFuel`].
    OutOfFuel,
    /// [`Outcome::OutputTooLarge`].
    OutputTooLarge,
    /// [`Outcome::InvalidModule`].
    InvalidModule,
    /// [`Outcome::ForbiddenImport`].
    ForbiddenImport,
    /// [`Outcome::Timeout`].
    Timeout,
    /// [`Outcome::Failed`].
    Failed,
}

impl OutcomeKind {
    /// Every kind, in declaration order.
    pub const ALL: [OutcomeKind; 10] = [
        OutcomeKind::Success,
        OutcomeKind::Exit,
        OutcomeKind::Trap,
        OutcomeKind::OutOfMemory,
        OutcomeKind::OutOfFuel,
        OutcomeKind::OutputTooLarge,
        OutcomeKind::InvalidModule,
        OutcomeKind::ForbiddenImport,
        OutcomeKind::Timeout,
        OutcomeKind::Failed,
    ];

    /// A short snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Exit => "exit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::OutOfMemory => "out_of_memory",
            OutcomeKind::OutOfFuel => "out_of_fuel",
            OutcomeKind::OutputTooLarge => "output_too_large",
            OutcomeKind::InvalidModule => "invalid_module",
            OutcomeKind::ForbiddenImport => "forbidden_import",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Failed => "failed",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Outcome {
    /// The outcome's kind.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Success => OutcomeKind::Success,
            Outcome::Exit { .. } => OutcomeKind::Exit,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::OutOfMemory { .. } => OutcomeKind::OutOfMemory,
            Outcome::OutOfFuel { .. } => OutcomeKind::OutOfFuel,
            Outcome::OutputTooLarge { .. } => OutcomeKind::OutputTooLarge,
            Outcome::InvalidModule { .. } => OutcomeKind::InvalidModule,
            Outcome::ForbiddenImport { .. } => OutcomeKind::ForbiddenImport,
            Outcome::Timeout { .. } => OutcomeKind::Timeout,
            Outcome::Failed { .. } => OutcomeKind::Failed,
        }
    }

    /// True for a successful run.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether every honest peer of the same determinism class would reach this outcome too,
    /// so that it may be hashed and compared. See the module docs.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Outcome::Timeout { .. }
                | Outcome::Failed { .. }
                | Outcome::Trap { kind: TrapKind::StackOverflow }
        )
    }

    fn tag(&self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Exit { .. } => 1,
            Outcome::Trap { .. } => 2,
            Outcome::OutOfMemory { .. } => 3,
            Outcome::OutOfFuel { .. } => 4,
            Outcome::OutputTooLarge { .. } => 5,
            Outcome::InvalidModule { .. } => 6,
            Outcome::ForbiddenImport { .. } => 7,
            Outcome::Timeout { .. } => 8,
            Outcome::Failed { .. } => 9,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => write!(f, "success"),
            Outcome::Exit { code } => write!(f, "exited with code {code}"),
            Outcome::Trap { kind } => write!(f, "trapped: {}", kind.describe()),
            Outcome::OutOfMemory { resource: Resource::Memory, requested, limit } => write!(
                f,
                "out of memory: asked for {requested} bytes of linear memory, the limit is {limit}"
            ),
            Outcome::OutOfMemory { resource: Resource::Table, requested, limit } => write!(
                f,
                "out of memory: asked for a table of {requested} elements, the limit is {limit}"
            ),
            Outcome::OutOfFuel { limit } => write!(f, "out of fuel: used all {limit} units"),
            Outcome::OutputTooLarge { limit } => {
                write!(f, "output too large: wrote more than {limit} bytes to stdout")
            }
            Outcome::InvalidModule { reason } => write!(f, "invalid module: {reason}"),
            Outcome::ForbiddenImport { module, name } => write!(
                f,
                "forbidden import `{module}::{name}`: only WASI preview-1 functions are available"
            ),
            Outcome::Timeout { phase: Phase::Run, deadline_ms } => {
                write!(f, "timed out: still running after its {deadline_ms} ms deadline")
            }
            Outcome::Timeout { phase: Phase::Compile, deadline_ms } => {
                write!(f, "timed out: compiling the module took longer than {deadline_ms} ms")
            }
            Outcome::Failed { message } => write!(f, "executor failure: {message}"),
        }
    }
}

impl TrapKind {
    /// A human description.
    pub fn describe(self) -> &'static str {
        match self {
            TrapKind::StackOverflow => "call stack exhausted (stack overflow)",
            TrapKind::MemoryOutOfBounds => "out-of-bounds memory access",
            TrapKind::HeapMisaligned => "misaligned memory access",
            TrapKind::TableOutOfBounds => "out-of-bounds table access",
            TrapKind::IndirectCallToNull => "indirect call to a null table entry",
            TrapKind::BadSignature => "indirect call type mismatch",
            TrapKind::IntegerOverflow => "integer overflow",
            TrapKind::IntegerDivisionByZero => "integer divide by zero",
            TrapKind::BadConversionToInteger => "invalid conversion to integer",
            TrapKind::Unreachable => "unreachable instruction executed (a guest panic or abort)",
            TrapKind::NullReference => "null reference",
            TrapKind::HostError => "a host function failed",
            TrapKind::Other => "other trap",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }
}

/// What this release computes results with: the wasm engine and the WASI host's ABI (the
/// worker's `ENGINE_NAME` is this). Results of different engines or hosts may differ, so a
/// result names it in its [`Provenance`], and peers of different ABIs form different
/// networks (ova-net derives its protocol names and gossip topic from it): their results
/// are never compared with each other.
pub const COMPUTE_ABI: &str = "wasmtime 48.0.8; ova-wasi-p1 1";

/// Who produced a result, so that only comparable results are compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The determinism mode the unit ran in.
    pub determinism: Determinism,
    /// The CPU architecture (`std::env::consts::ARCH`, e.g. `x86_64`).
    pub arch: String,
    /// The engine and WASI host, e.g. `wasmtime 48.0.8; ova-wasi-p1 1`: results of different
    /// engines or hosts may differ, so they are never compared.
    pub engine: String,
}

impl Provenance {
    /// The class of peers whose results may be compared with this one: peers with the same
    /// engine and WASI host, and in same-architecture mode also the same architecture (e.g.
    /// `strict/wasmtime 48.0.8; ova-wasi-p1 1`, `x86_64/wasmtime 48.0.8; ova-wasi-p1 1`).
    pub fn comparison_class(&self) -> String {
        match self.determinism {
            Determinism::Strict => format!("strict/{}", self.engine),
            Determinism::SameArch => format!("{}/{}", self.arch, self.engine),
        }
    }
}

/// BLAKE3 over the deterministic part of a result: see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResultHash(pub [u8; 32]);

impl ResultHash {
    /// The hash of `outcome` with standard output `stdout`, or `None` when the outcome is not
    /// deterministic.
    pub fn compute(outcome: &Outcome, stdout: &[u8]) -> Option<Self> {
        if !outcome.is_deterministic() {
            return None;
        }
        let mut h = blake3::Hasher::new_derive_key("ova result hash v1");
        h.update(&[outcome.tag()]);
        match outcome {
            Outcome::Exit { code } => {
                h.update(&code.to_le_bytes());
            }
            Outcome::Trap { kind } => {
                h.update(&[kind.code()]);
            }
            Outcome::OutOfMemory { resource, requested, limit } => {
                h.update(&[*resource as u8]);
                h.update(&requested.to_le_bytes());
                h.update(&limit.to_le_bytes());
            }
            Outcome::OutOfFuel { limit } | Outcome::OutputTooLarge { limit } => {
                h.update(&limit.to_le_bytes());
            }
            Outcome::ForbiddenImport { module, name } => {
                for s in [module, name] {
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
            Outcome::Success
            | Outcome::InvalidModule { .. }
            | Outcome::Timeout { .. }
            | Outcome::Failed { .. } => {}
        }
        h.update(&(stdout.len() as u64).to_le_bytes());
        h.update(stdout);
        Some(Self(*h.finalize().as_bytes()))
    }
}

impl fmt::Display for ResultHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for ResultHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResultHash({})", &self.to_string()[..12])
    }
}

/// Everything one run of a unit produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitResult {
    /// The unit that ran.
    pub unit: UnitId,
    /// How it ended.
    pub outcome: Outcome,
    /// Its standard output (at most the unit's output cap).
    #[serde(with = "crate::wire::byte_string")]
    pub stdout: Vec<u8>,
    /// Its standard error, cut at the unit's stderr cap.
    #[serde(with = "crate::wire::byte_string")]
    pub stderr: Vec<u8>,
    /// Whether standard error was cut.
    pub stderr_truncated: bool,
    /// Fuel consumed, when the unit ran with a fuel budget.
    pub fuel_used: Option<u64>,
    /// Who produced it.
    pub provenance: Provenance,
    /// [`ResultHash::compute`] of `outcome` and `stdout`; `None` for non-deterministic
    /// outcomes.
    pub result_hash: Option<ResultHash>,
    /// Wall time the executor spent on the unit (compile + instantiate + run), microseconds.
    pub wall_micros: u64,
}

impl UnitResult {
    /// A result with its hash computed and no stderr, fuel or timing.
    pub fn new(unit: UnitId, outcome: Outcome, stdout: Vec<u8>, provenance: Provenance) -> Self {
        let result_hash = ResultHash::compute(&outcome, &stdout);
        Self {
            unit,
            outcome,
            stdout,
            stderr: Vec::new(),
            stderr_truncated: false,
            fuel_used: None,
            provenance,
            result_hash,
            wall_micros: 0,
        }
    }

    /// Whether `result_hash` matches the outcome and stdout (a decoded result from another
    /// peer must be checked before it is trusted).
    pub fn hash_is_consistent(&self) -> bool {
        self.result_hash == ResultHash::compute(&self.outcome, &self.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov() -> Provenance {
        Provenance {
            determinism: Determinism::SameArch,
            arch: "x86_64".into(),
            engine: "test".into(),
        }
    }

    #[test]
    fn hash_covers_kind_and_stdout_only() {
        let a = ResultHash::compute(&Outcome::Success, b"42\n").unwrap();
        assert_eq!(a, ResultHash::compute(&Outcome::Success, b"42\n").unwrap());
        assert_ne!(a, ResultHash::compute(&Outcome::Success, b"43\n").unwrap());
        assert_ne!(a, ResultHash::compute(&Outcome::Exit { code: 1 }, b"42\n").unwrap());
        assert_ne!(
            ResultHash::compute(&Outcome::Exit { code: 1 }, b""),
            ResultHash::compute(&Outcome::Exit { code: 2 }, b"")
        );
        // Messages are not hashed: two engines may word them differently.
        assert_eq!(
            ResultHash::compute(&Outcome::InvalidModule { reason: "a".into() }, b""),
            ResultHash::compute(&Outcome::InvalidModule { reason: "b".into() }, b"")
        );
    }

    #[test]
    fn nondeterministic_outcomes_have_no_hash() {
        let t = Outcome::Timeout { phase: Phase::Run, deadline_ms: 5 };
        assert!(ResultHash::compute(&t, b"").is_none());
        assert!(ResultHash::compute(&Outcome::Failed { message: "x".into() }, b"").is_none());
        let so = Outcome::Trap { kind: TrapKind::StackOverflow };
        assert!(ResultHash::compute(&so, b"").is_none());
        assert!(ResultHash::compute(&Outcome::Trap { kind: TrapKind::Unreachable }, b"").is_some());
    }

    #[test]
    fn result_round_trips_on_the_wire() {
        let r =
            UnitResult::new(UnitId([7; 32]), Outcome::Exit { code: 3 }, b"out".to_vec(), prov());
        assert!(r.hash_is_consistent());
        let f = crate::wire::encode(&r);
        let back: UnitResult = crate::wire::decode(&f, 1 << 20).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.outcome.to_string(), "exited with code 3");
        assert_eq!(r.provenance.comparison_class(), "x86_64/test");
    }

    #[test]
    fn only_results_of_the_same_engine_and_host_are_comparable() {
        let p = |determinism, arch: &str, engine: &str| {
            Provenance { determinism, arch: arch.into(), engine: engine.into() }.comparison_class()
        };
        let (a, b) = ("wasmtime 48.0.8; ova-wasi-p1 1", "wasmtime 48.0.8; ova-wasi-p1 2");
        assert_eq!(p(Determinism::Strict, "x86_64", a), p(Determinism::Strict, "aarch64", a));
        assert_ne!(p(Determinism::Strict, "x86_64", a), p(Determinism::Strict, "x86_64", b));
        assert_ne!(p(Determinism::SameArch, "x86_64", a), p(Determinism::SameArch, "x86_64", b));
        assert_ne!(p(Determinism::SameArch, "x86_64", a), p(Determinism::SameArch, "aarch64", a));
    }
}
