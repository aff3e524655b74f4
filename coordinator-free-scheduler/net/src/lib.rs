//! # ova-net — the network shell of Ova, on iroh
//!
//! This crate owns Ova's *IO* between peers; the protocol logic (placement, leases, quorum)
//! lives in the sans-IO `ova-scheduler` crate, which a driver feeds with what arrives here and
//! whose actions it carries out through here. ova-net owns:
//!
//! - [`endpoint`]: the one place iroh endpoints are built — loopback-only for tests and the
//!   demo, LAN-only (the default), or internet with relays and DNS address lookup.
//! - [`identity`]: the node's ed25519 key, created on first start and kept in the data dir. The
//!   node id (the public key, iroh's `EndpointId`) is the peer's name everywhere.
//! - [`advert`]: the signed capacity advert (spare cores, busy cores, queue, architecture).
//! - [`signed`]: the signed gossip envelope every broadcast travels in (gossip does not say who
//!   wrote a message, so the author signs it).
//! - [`membership`]: the bounded peer table built from adverts, with TTL expiry.
//! - [`frame`]: length-checked frames over QUIC streams, for direct peer-to-peer messages.
//! - [`discovery`]: local-network discovery (mDNS) feeding the gossip swarm.
//! - [`ticket`]: the text form of a node's address that others paste to join.
//! - [`node`]: the [`Node`] tying it together: spawn, broadcast, send, events, peer table.
//! - [`control`]: the worker's loopback HTTP control API (`ova peers` talks to it).
//! - [`stats`]: counters of what was received, sent and dropped (and why).
//! - [`store`]: what a peer keeps across restarts (redb): blobs, announcements, signed commits,
//!   verified results, the submitter's jobs.
//! - [`blobs`]: content-addressed blob transfer between peers, verified on arrival.
//! - [`runtime`]: the driver that runs the scheduler core over a [`Node`], the executor seam
//!   ([`runtime::UnitRunner`]) and job verification from signed records.
//!
//! Every frame goes through [`ova_jobs::wire`]; every peer-supplied length is checked before
//! anything is read or allocated; every queue is bounded; nothing a peer sends can panic us.
//!
//! ## Driving the scheduler core through a [`Node`]
//!
//! The seam is opaque bytes, so ova-net does not depend on the scheduler's message types:
//!
//! | scheduler (`ova_scheduler::peer`) | ova-net |
//! | --- | --- |
//! | `Action::Broadcast(msg)` | [`Node::broadcast`]`(msg.encode())` (signed, gossiped) |
//! | `Action::Send { to, msg }` | [`Node::send`]`(to, msg.encode())` (QUIC frame; lease ends first made time remaining, `Message::to_wire_times`, and back in the receiver's clock on arrival) |
//! | `Event::Frame { from, bytes }` | [`NetEvent::Broadcast`] / [`NetEvent::Direct`] |
//! | `Event::PeerLeft(p)` | [`NetEvent::PeerExpired`] / [`NetEvent::PeerLeft`] |
//! | `Event::Capacity(n)` | [`Node::set_capacity`] (also re-advertised here) |
//!
//! `from` is always a verified peer id: the signer of a broadcast, or the TLS-authenticated
//! remote of a direct frame. Peer ids are the 32-byte ed25519 public keys
//! ([`iroh::EndpointId::as_bytes`]). Blob transfer (next issue) plugs into the same router via
//! [`Node::endpoint`].

pub mod advert;
pub mod blobs;
pub mod control;
pub mod discovery;
pub mod endpoint;
pub mod frame;
pub mod identity;
pub mod membership;
pub mod node;
pub mod runtime;
pub mod signatures;
pub mod signed;
pub mod stats;
pub mod store;
mod store_file;
mod store_journal;
pub mod ticket;

pub use advert::{Advert, ArchClass, Capacity};
pub use endpoint::{EndpointConfig, NetMode};
pub use iroh::{EndpointAddr, EndpointId, SecretKey};
pub use membership::PeerInfo;
pub use node::{NetError, NetEvent, Node, NodeConfig};
pub use stats::{DropReason, NetStats, StatsSnapshot};
pub use ticket::NodeTicket;
