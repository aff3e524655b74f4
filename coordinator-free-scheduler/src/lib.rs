//! # ova-scheduler — coordinator-free scheduling as a pure state machine
//!
//! Owns placement, leases, replication and quorum verification. It is sans-IO: no tokio, no
//! wasmtime, no clock and no OS randomness; time and a seeded rng are passed in.
