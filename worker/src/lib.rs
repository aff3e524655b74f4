//! # ova-worker — what runs on a volunteer's machine
//!
//! Owns the `ova` command line ([`cli`]) and, as the worker grows, the wasm sandbox, the rayon
//! executor, spare-CPU sensing and metrics. It depends on `ova-jobs` for the data model and
//! (later) on the scheduler core and its network shell; nothing depends on it.

pub mod cli;
