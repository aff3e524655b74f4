//! # ova-sdk — the scientist's side of Ova
//!
//! Owns the client API: building a job in code ([`JobBuilder`]) or loading a packed bundle,
//! submitting it to the peer network through a light peer ([`Client`]), watching per-unit
//! progress ([`Job::next_event`]), awaiting and fetching results (typed, for units written
//! with `ova-guest`'s typed API), and verifying a job from its signed records. It depends on
//! `ova-jobs` and `ova-net` and must not depend on the wasm sandbox: a submitter needs no
//! wasmtime.
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
//!
//! Submitting it, following it and fetching typed results (`ticket` is any peer's, from
//! `ova node ticket`; the data directory keeps the client's identity and its jobs, so the same
//! program can come back later with [`Client::job`]):
//!
//! ```no_run
//! # async fn demo(bundle: ova_sdk::Bundle, ticket: ova_sdk::NodeTicket) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ova_sdk::{Client, ClientConfig, JobEvent};
//!
//! let client = Client::connect(ClientConfig::new("/var/lib/my-science/ova", vec![ticket])).await?;
//! let mut job = client.submit(bundle).await?;
//! println!("submitted {}", job.id());
//! while let Some(ev) = job.next_event().await {
//!     match ev {
//!         JobEvent::UnitVerified { unit, .. } => println!("unit {} verified", unit.index),
//!         JobEvent::UnitFailed { unit, reason } => eprintln!("unit {}: {reason}", unit.index),
//!         JobEvent::JobDone { .. } => break,
//!         _ => {}
//!     }
//! }
//! let summary = job.wait(Duration::from_secs(600)).await?; // every result held here
//! let counts: Vec<Option<Result<u64, postcard::Error>>> = job.typed_outputs()?;
//! let report = job.verify()?; // signatures, quorum and hashes, from the stored records
//! assert!(report.problems.is_empty());
//! println!("{} verified, {} outputs", summary.verified, counts.len());
//! client.shutdown().await;
//! # Ok(()) }
//! ```

mod builder;
pub mod client;

pub use builder::{BuildError, JobBuilder};
pub use client::{Client, ClientConfig, ClientError, Job, JobSummary, UnitStatus};
pub use ova_jobs::{Bundle, Determinism, JobId, Limits, Manifest, Replication, UnitId};
pub use ova_net::runtime::{JobEvent, VerifyReport};
pub use ova_net::ticket::NodeTicket;
