//! # ova-sdk — the scientist's side of Ova
//!
//! Owns the client API: building a job in code ([`JobBuilder`]) or loading a packed bundle, and
//! (as the network grows) submitting it, watching per-unit progress, fetching results and
//! verifying a job from its signed records. It depends on `ova-jobs` for the data model and must
//! not depend on the wasm sandbox: a submitter needs no wasmtime.
//!
//! ```
//! use ova_sdk::JobBuilder;
//!
//! # let module = b"\0asm\x01\0\0\0".to_vec();
//! let bundle = JobBuilder::new("primes", module)
//!     .quorum(2)
//!     .deadline_secs(30.0)
//!     .units((0..10u64).map(|i| format!("{} {}", i * 1_000_000, (i + 1) * 1_000_000)))
//!     .build()?;
//! assert_eq!(bundle.manifest().units.len(), 10);
//! # Ok::<(), ova_sdk::BuildError>(())
//! ```

mod builder;
pub mod client;

pub use builder::{BuildError, JobBuilder};
pub use client::{Client, ClientConfig, ClientError, Job, JobSummary, UnitStatus};
pub use ova_jobs::{Bundle, Determinism, JobId, Limits, Manifest, Replication, UnitId};
pub use ova_net::runtime::{JobEvent, VerifyReport};
pub use ova_net::ticket::NodeTicket;
