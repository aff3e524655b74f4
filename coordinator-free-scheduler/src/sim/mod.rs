//! A seeded discrete-event simulator that drives many [`Peer`]s through a modelled network.
//!
//! One priority queue of timed events (message deliveries, peer timers, unit completions, blob
//! fetches, churn, partitions). Everything random comes from one seeded [`Rng`] consumed in
//! event order, so the same seed gives the same run, byte for byte ([`Report::trace`] hashes
//! every event). That holds on several threads too ([`Sim::threads`]): the peers' calls within
//! one lookahead window (the least link delay) are handled side by side and their actions
//! applied in event order (see `batch.rs`).
//!
//! Network model: per-peer link delay (a link costs the mean of its ends plus jitter), per
//! message loss, partitions (two groups; cross traffic dropped until healed). Peers: cores,
//! speed, architecture class, faults (crash-stop, slow, random liar, colluding liar), churn
//! (graceful leave, crash, join of fresh peers), a submitter that may go offline and return.
//!
//! Simplifications, all for scale and all stated:
//! - Messages are passed as values (the job announcement by `Arc`), not encoded; the wire
//!   round-trip is tested separately.
//! - Gossip broadcast of an advert is delivered only to the peers within a few ring positions
//!   of the advertiser (per class ring and the all-class ring). Every other peer would drop it
//!   (it is outside their bounded neighbourhood), so skipping them saves CPU, not behaviour.
//!   Announcements, bundle notices and sync requests reach every online peer.
//! - Blob fetches take one link delay and succeed when a source is online and reachable.
//! - Signatures use [`SimKeys`] (a keyed hash) instead of ed25519.
//! - The submitter's shell counts spare cores per architecture class from every advert it
//!   hears ([`Peer::set_capacity_census`]); the simulator computes that census from the
//!   reachable online peers when the jobs are submitted instead of delivering every advert
//!   to the submitter.

mod batch;
mod scenario;

use batch::{Batch, Call, Watched};

pub use scenario::{SCENARIOS, Scenario, scenario, scenario_names};

use std::fmt::Write as _;
use std::sync::Arc;

use ova_jobs::{
    BlobId, Determinism, JobId, Limits, MANIFEST_VERSION, Manifest, Replication, UnitId, UnitSpec,
};

use crate::commit::SimKeys;
use crate::message::{MESSAGE_KINDS, Message};
use crate::peer::{Action, Config, Event, FetchPurpose, LocalFailure, Peer, RunCause};
use crate::quorum::FailReason;
use crate::types::{ArchClass, Millis, PeerId, UnitRef};
use crate::util::{FxHashMap, Rng, mix64};

/// How a simulated peer misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Correct.
    Honest,
    /// Returns a random wrong result.
    Liar,
    /// Returns the same wrong result as every other colluder.
    Colluder,
    /// Honest, but declines every unit at once (an allow-list that excludes the submitter):
    /// reports [`LocalFailure::Declined`] right after the unit is started.
    Decliner,
}

/// Parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for everything random.
    pub seed: u64,
    /// Initial peers.
    pub peers: usize,
    /// Total units, split over `jobs` jobs.
    pub units: usize,
    /// Jobs (a manifest holds at most ~400k units).
    pub jobs: usize,
    /// Replication policy of every job.
    pub replication: Replication,
    /// Make every other job strict (cross-architecture).
    pub strict_jobs: bool,
    /// Fraction of peers that are aarch64 (the rest x86-64).
    pub arm_fraction: f64,
    /// Fraction of units whose honest result depends on the architecture (float code).
    pub float_units: f64,
    /// Cores per peer, uniform in this range.
    pub cores: (u16, u16),
    /// Fraction of peers running at `slow_speed`.
    pub slow_fraction: f64,
    /// Speed of slow peers (1.0 = normal).
    pub slow_speed: f64,
    /// One-way link delay range in ms (per peer; a link takes the mean of its ends + jitter).
    /// The low end is also the soonest a timer, a decline or a blob fetch a peer asks for
    /// lands (the simulator's lookahead window, see `batch.rs`).
    pub latency_ms: (u64, u64),
    /// Probability a message is lost.
    pub loss: f64,
    /// Unit cost in core-ms at speed 1, uniform in this range.
    pub unit_cost_ms: (u64, u64),
    /// Per-unit deadline.
    pub deadline_ms: u64,
    /// Fraction of random liars.
    pub liars: f64,
    /// Fraction of colluding liars.
    pub colluders: f64,
    /// Fraction of peers that decline every unit (see [`Fault::Decliner`]).
    pub decliners: f64,
    /// Fraction of peers that crash-stop at a random time during the run.
    pub crash_stop: f64,
    /// Churn: this many leave-or-crash events, each followed by a fresh peer joining.
    pub churn_events: usize,
    /// Churn happens in this time window (ms).
    pub churn_window: (Millis, Millis),
    /// A partition: (start, heal, fraction of peers on the minority side).
    pub partition: Option<(Millis, Millis, f64)>,
    /// The submitter goes offline at the first time and returns at the second.
    pub submitter_offline: Option<(Millis, Millis)>,
    /// Volunteers whose owners use their machines: this fraction of peers switches, at
    /// random moments about this many ms apart (half to one and a half times), between
    /// offering all its cores and offering none (idle-only mode) or half of them. Units
    /// already running finish; the peer's core starts no more than it offers.
    pub owners: Option<(f64, Millis)>,
    /// When the job is submitted (after views have formed).
    pub submit_at: Millis,
    /// Give up at this simulated time.
    pub horizon: Millis,
    /// Peer configuration.
    pub peer: Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            peers: 100,
            units: 1000,
            jobs: 1,
            replication: Replication { quorum: 2, max_replicas: 4, result_copies: 1 },
            strict_jobs: false,
            arm_fraction: 0.3,
            float_units: 0.2,
            cores: (1, 8),
            slow_fraction: 0.0,
            slow_speed: 0.25,
            latency_ms: (5, 80),
            loss: 0.0,
            unit_cost_ms: (5_000, 15_000),
            deadline_ms: 120_000,
            liars: 0.0,
            colluders: 0.0,
            decliners: 0.0,
            crash_stop: 0.0,
            churn_events: 0,
            churn_window: (0, 0),
            partition: None,
            submitter_offline: None,
            owners: None,
            submit_at: 40_000,
            horizon: 48 * 3600 * 1000,
            // A real peer keeps thousands of recent verdicts' tallies; ten thousand simulated
            // peers in one process keep a few each (memory), which still covers the window
            // in which a crashed executor's half-sent commit matters.
            peer: Config { kept_verdicts: 16, ..Config::default() },
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// Initial peers.
    pub peers: usize,
    /// Peers that ever existed (churn adds some).
    pub peers_total: usize,
    /// Units.
    pub units: usize,
    /// Units some honest peer saw verified.
    pub verified: usize,
    /// Units some honest peer saw fail (and none verified).
    pub failed: usize,
    /// Units neither verified nor failed at the end.
    pub unresolved: usize,
    /// Verified units whose accepted result was wrong.
    pub wrong_accepted: usize,
    /// Failed units that came without a reason (must be 0; every failure carries one).
    pub failed_without_reason: usize,
    /// Example failure reasons.
    pub fail_reasons: Vec<String>,
    /// Time from submission to the last unit resolved (ms).
    pub makespan_ms: u64,
    /// Total work (quorum × unit costs) / total initial capacity (ms).
    pub ideal_ms: u64,
    /// Executed work above `quorum` replicas, as a fraction of the quorum's work.
    pub waste: f64,
    /// Where the waste came from, as fractions of the quorum's work: partial runs lost to
    /// crashes and departures, partial runs cancelled once the unit was verified elsewhere,
    /// and whole runs that finished after the unit already had `quorum` finished runs, by
    /// why they were queued.
    pub waste_breakdown: String,
    /// Messages sent (each recipient of a broadcast counts once).
    pub messages: u64,
    /// Events processed.
    pub events: u64,
    /// Submitter's own count of verified units at the end.
    pub submitter_verified: u32,
    /// Commits dropped for bad signatures or unknown signers, over all peers.
    pub dropped_commits: u64,
    /// Messages by kind.
    pub by_kind: String,
    /// Resolution time quantiles p50, p90, p99 (ms after submission).
    pub quantiles: [u64; 3],
    /// Hash over every event processed (determinism check).
    pub trace: u64,
    /// With colluding liars: what theory predicts for them (see [`CollusionTheory`]).
    pub collusion: Option<CollusionTheory>,
}

/// What theory predicts for colluding liars in a run: their share of the initial peers and
/// of their cores, and the wrong-accept rate those shares imply.
///
/// Placement is weighted by spare cores (weighted rendezvous ranking, and stealing by idle
/// cores), so every core runs units at the same pace and a unit's replica is a colluder with
/// probability `c` = the colluders' share of the *cores* of the unit's architecture class
/// (its share of the peers matters only through their cores). Taking a unit's replicas as
/// independent draws, a wrong result wins when the colluders' `quorum`-th commit comes
/// before the honest peers' `quorum`-th, within `max_replicas` commits (colluders agree with
/// each other; honest peers of one class agree with each other):
///
/// `P(c) = Σ_{k=0}^{min(q-1, m-q)} C(q-1+k, k) · c^q · (1-c)^k`
///
/// (the colluders' `q`-th commit is the `(q+k)`-th, with `k` honest ones before it). At
/// quorum 2 with at most 3 replicas: `c² + 2c²(1-c)` — both first replicas collude, or one
/// of them does and so does the tie-breaker. Same-arch units are split across classes in
/// proportion to the classes' cores, so the predicted rate is `Σ_k (W_k / W) · P(c_k)`, with
/// `W_k` a class's cores and `c_k` the colluders' share of them. Draws within a unit are in
/// fact without replacement from a ring window, which makes two colluders on one unit a
/// little rarer than independent draws: the prediction is slightly high, not low.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CollusionTheory {
    /// Colluders' share of the initial peers.
    pub peer_share: f64,
    /// Colluders' share of the initial peers' cores.
    pub core_share: f64,
    /// The predicted wrong-accept rate (wrongly accepted / verified).
    pub predicted_rate: f64,
}

/// The probability that colluders holding a share `c` of the capacity get their (common)
/// wrong result accepted for one unit, at `quorum` with at most `max_replicas` replicas (see
/// [`CollusionTheory`]).
pub fn collusion_wrong_accept(c: f64, quorum: u8, max_replicas: u8) -> f64 {
    let q = i32::from(quorum.max(1));
    let ks = (q - 1).min(i32::from(max_replicas) - q);
    let mut p = 0.0;
    let mut binom = 1.0; // C(q-1+k, k)
    for k in 0..=ks {
        if k > 0 {
            binom = binom * f64::from(q - 1 + k) / f64::from(k);
        }
        p += binom * c.powi(q) * (1.0 - c).powi(k);
    }
    p
}

impl Report {
    /// The printed report (deterministic for a seed).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario {} seed={}", self.name, self.seed);
        let _ = writeln!(
            s,
            "  peers={} (ever {}) units={} verified={} failed={} unresolved={} wrong_accepted={}",
            self.peers,
            self.peers_total,
            self.units,
            self.verified,
            self.failed,
            self.unresolved,
            self.wrong_accepted
        );
        let _ = writeln!(
            s,
            "  wrong_accept_rate={:.5} failed_without_reason={}",
            self.wrong_accepted as f64 / self.verified.max(1) as f64,
            self.failed_without_reason
        );
        if let Some(t) = &self.collusion {
            let _ = writeln!(
                s,
                "  colluders: peer_share={:.3} core_share={:.3} predicted_wrong_accept_rate={:.5}",
                t.peer_share, t.core_share, t.predicted_rate
            );
        }
        let _ = writeln!(
            s,
            "  makespan={:.1}s ideal={:.1}s ratio={:.2} waste_above_quorum={:.4}",
            self.makespan_ms as f64 / 1000.0,
            self.ideal_ms as f64 / 1000.0,
            self.makespan_ms as f64 / self.ideal_ms.max(1) as f64,
            self.waste
        );
        let _ = writeln!(s, "  waste_by_cause: {}", self.waste_breakdown);
        let _ = writeln!(
            s,
            "  messages={} per_unit={:.1} per_peer={:.1} events={} dropped_commits={} submitter_verified={}",
            self.messages,
            self.messages as f64 / self.units.max(1) as f64,
            self.messages as f64 / self.peers_total.max(1) as f64,
            self.events,
            self.dropped_commits,
            self.submitter_verified
        );
        let _ = writeln!(
            s,
            "  resolved_by: p50={:.1}s p90={:.1}s p99={:.1}s",
            self.quantiles[0] as f64 / 1000.0,
            self.quantiles[1] as f64 / 1000.0,
            self.quantiles[2] as f64 / 1000.0
        );
        let _ = writeln!(s, "  by_kind: {}", self.by_kind);
        for r in &self.fail_reasons {
            let _ = writeln!(s, "  failure: {r}");
        }
        let _ = writeln!(s, "  trace={:016x}", self.trace);
        s
    }
}

/// A queued event. Kept small (16 bytes) so the event heap moves little memory: messages in
/// flight live in [`Sim::inflight`] and are named by their slot; rare events are boxed.
enum Ev {
    Deliver {
        to: u32,
        from: u32,
        slot: u32,
    },
    /// One message to several peers at once (a broadcast, or the same claim or commit sent to
    /// a unit's watchers): one queue entry, delivered to each target in order.
    Multi {
        from: u32,
        slot: u32,
    },
    /// The peer's timer, set for the entry's time.
    Timer {
        peer: u32,
    },
    Finish(Box<(u32, UnitRef, u64)>),
    Fetched(Box<(u32, BlobId, FetchPurpose, bool)>),
    Submit,
    Churn,
    Crash(u32),
    Partition(bool),
    Offline(u32, bool),
    /// The peer's owner starts or stops using the machine (see [`SimConfig::owners`]).
    Owner(u32),
}

struct Queued {
    at: Millis,
    seq: u64,
    ev: Ev,
}

impl Queued {
    /// The queue order: time, then scheduling order. Unique per event.
    fn key(&self) -> u128 {
        u128::from(self.at) << 64 | u128::from(self.seq)
    }
}

/// The event queue: a radix heap on [`Queued::key`]. Keys only grow (nothing is scheduled
/// before the event being handled, and sequence numbers increase), so an entry waits in the
/// bucket of the highest bit where its key differs from the last key taken out, and moves to
/// a lower bucket only when its own is emptied: appends to a few vectors instead of a binary
/// heap's sift-down through scattered memory on every pop. Gives exactly the order of a
/// binary heap on the same keys.
///
/// One exception to growing keys: the event loop takes out the next event before it handles
/// a [`Batch`], puts it back, and the batch's actions may schedule events before it. Those
/// few wait in `early`, which is emptied first.
struct EventQueue {
    /// Bucket 0 holds the entry whose key equals `last`; bucket `b` those whose key differs
    /// from `last` first at bit `b - 1`.
    buckets: Vec<Vec<Queued>>,
    last: u128,
    len: usize,
    /// Entries with keys below `last`, by descending key.
    early: Vec<Queued>,
}

impl EventQueue {
    fn new() -> Self {
        Self {
            buckets: (0..=128).map(|_| Vec::new()).collect(),
            last: 0,
            len: 0,
            early: Vec::new(),
        }
    }

    fn bucket(&self, key: u128) -> usize {
        128 - (key ^ self.last).leading_zeros() as usize
    }

    fn push(&mut self, q: Queued) {
        let key = q.key();
        if key < self.last {
            let pos = self.early.partition_point(|e| e.key() > key);
            self.early.insert(pos, q);
            return;
        }
        let b = self.bucket(key);
        self.buckets[b].push(q);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Queued> {
        // Every early key is below `last`, and so below every bucket's.
        if let Some(q) = self.early.pop() {
            return Some(q);
        }
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let i = (1..self.buckets.len()).find(|&i| !self.buckets[i].is_empty())?;
            let mut v = std::mem::take(&mut self.buckets[i]);
            self.last = v.iter().map(Queued::key).min()?;
            for q in v.drain(..) {
                let b = self.bucket(q.key());
                self.buckets[b].push(q);
            }
            // Keep the emptied bucket's allocation.
            self.buckets[i] = v;
        }
        self.len -= 1;
        self.buckets[0].pop()
    }
}

struct Running {
    cause: RunCause,
    exec: u64,
    started: Millis,
    cost: u64,
    duration: u64,
}

struct SimPeer {
    id: PeerId,
    arch: ArchClass,
    cores: u16,
    speed: f64,
    delay: u64,
    fault: Fault,
    alive: bool,
    online: bool,
    group: u8,
    /// Cores offered right now (`cores` unless its owner is busy, see [`SimConfig::owners`]).
    spare: u16,
    running: FxHashMap<UnitRef, Running>,
    /// Units that were running when the peer went offline: reported as cancelled when it
    /// comes back (a shell must report every unit it started).
    interrupted: Vec<UnitRef>,
    has_bundle: bool,
}

/// What the simulator keeps of a peer on every call: its state, and the time of the timer
/// it asked for. Side by side, so a call reads one cache line of them, not two.
struct Home {
    /// The peer's state, away (`None`) only while a batch holds a call for it (see
    /// [`batch`]).
    peer: Option<Box<Peer>>,
    /// The time of the timer it asked for (a later request replaces it).
    timer_at: Option<Millis>,
}

/// The state of a peer that is home.
fn at_home(h: &Home) -> &Peer {
    h.peer.as_deref().expect("the peer is home between batches")
}

/// The state of a peer that is home, to change.
fn at_home_mut(h: &mut Home) -> &mut Peer {
    h.peer.as_deref_mut().expect("the peer is home between batches")
}

#[derive(Clone, Copy, Default)]
struct UnitTruth {
    runs: u8,
    cost: u64,
    float: bool,
    verified: Option<BlobId>,
    failed: bool,
    resolved_at: Millis,
}

/// The simulator.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    queue: EventQueue,
    seq: u64,
    now: Millis,
    peers: Vec<SimPeer>,
    /// Per peer, its protocol state and latest timer request (apart from [`SimPeer`]: a batch
    /// moves the state to a helper thread and back on every call, and this array stays in
    /// the cache).
    homes: Vec<Home>,
    /// Per peer, what [`Sim::reachable`] reads: bit 0 alive, bit 1 online, the rest its
    /// partition group (a compact copy of [`SimPeer`]'s fields: checked on every delivery,
    /// and a `SimPeer` is large).
    reach: Vec<u8>,
    /// Per peer, its id and its link delay: compact copies of [`SimPeer`]'s fields, read on
    /// every send and delivery (touching the large `SimPeer` of both ends cost a cache miss
    /// each).
    ids: Vec<PeerId>,
    delays: Vec<u64>,
    index: FxHashMap<PeerId, u32>,
    ring_any: Vec<(u64, u32)>,
    ring_class: FxHashMap<ArchClass, Vec<(u64, u32)>>,
    keys: Arc<SimKeys>,
    jobs: Vec<(JobId, Manifest, usize)>,
    job_index: FxHashMap<JobId, usize>,
    truth: Vec<UnitTruth>,
    submitter: u32,
    partitioned: bool,
    exec_seq: u64,
    work_done: u128,
    /// Whole runs finished beyond `quorum` per unit, by cause (indexed by `cause_ix`).
    work_extra: [u128; 6],
    work_cancelled: u128,
    work_lost: u128,
    messages: u64,
    events: u64,
    trace: u64,
    resolved: usize,
    fail_reasons: Vec<String>,
    failed_without_reason: usize,
    /// Peer calls deferred in the current window, and the helper threads that handle them,
    /// while a run with [`Sim::threads`] > 1 goes on (see [`batch`]).
    batch: Option<Batch>,
    /// Emptied action and cause buffers, kept for reuse.
    spare: Vec<(Vec<Action>, Vec<RunCause>)>,
    /// The shortest delay between a peer call and any event its actions schedule (the least
    /// link delay; the simulator delivers timers, declines and fetches no sooner): the
    /// events within that time of a batch's first call cannot depend on the batch's
    /// actions, so they join the batch.
    lookahead: Millis,
    /// When the run stops: a minute after the last unit is resolved (so in-flight messages,
    /// e.g. the last commits to the submitter, land).
    stop_at: Millis,
    /// Threads that handle a window's peer calls side by side (1: all on the calling
    /// thread). The run is the same, byte for byte, whatever the number.
    pub threads: usize,
    /// Messages in flight: the message and, for a multicast, its targets. Slots are reused.
    inflight: Vec<Option<(Message, Vec<u32>)>>,
    free_slots: Vec<u32>,
    /// Emptied target lists, kept for reuse.
    spare_targets: Vec<Vec<u32>>,
    holders: Vec<u32>,
    next_fresh: usize,
    /// Messages sent, by [`MESSAGE_KINDS`] index.
    by_kind: [u64; MESSAGE_KINDS.len()],
    /// `Peer::handle` calls so far.
    pub handle_calls: u64,
    /// Peer calls deferred so far (a stale timer's is then not made).
    deferred: u64,
    /// When set, every 8th `Peer::handle` call is timed with the wall clock (for the
    /// benchmark's scheduler-CPU figure). Off by default: the simulation itself never reads a
    /// clock, and timing does not change the run.
    pub time_handle: bool,
    handle_sampled: u64,
    handle_nanos: u128,
    /// The timed calls' count and wall time by what they handled (see [`EVENT_KINDS`]).
    sampled_by_kind: [(u64, u128); EVENT_KINDS.len()],
    /// A unit (job index, unit index) whose every change of state at any peer is printed to
    /// stderr, with the event that made it (from `OVA_SIM_WATCH=JOB:UNIT`; for debugging a
    /// stall that [`Sim::describe_unresolved`] shows).
    watch: Option<(usize, u32)>,
}

fn result_of(
    unit: &UnitId,
    arch: ArchClass,
    float: bool,
    strict: bool,
    fault: Fault,
    rng: &mut Rng,
) -> BlobId {
    match fault {
        Fault::Honest => {
            let a = if float && !strict { arch.0 } else { 0 };
            let mut h = blake3::Hasher::new();
            h.update(b"truth");
            h.update(&unit.0);
            h.update(&a.to_le_bytes());
            BlobId(*h.finalize().as_bytes())
        }
        Fault::Liar => BlobId(rng.bytes32()),
        Fault::Decliner => BlobId([0; 32]),
        Fault::Colluder => {
            let mut h = blake3::Hasher::new();
            h.update(b"collude");
            h.update(&unit.0);
            BlobId(*h.finalize().as_bytes())
        }
    }
}

impl Sim {
    /// Builds the network for `cfg`.
    pub fn new(cfg: SimConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        let mut sim = Sim {
            rng,
            queue: EventQueue::new(),
            seq: 0,
            now: 0,
            peers: Vec::new(),
            homes: Vec::new(),
            reach: Vec::new(),
            ids: Vec::new(),
            delays: Vec::new(),
            index: FxHashMap::default(),
            ring_any: Vec::new(),
            ring_class: FxHashMap::default(),
            keys: Arc::new(SimKeys::default()),
            jobs: Vec::new(),
            job_index: FxHashMap::default(),
            truth: Vec::new(),
            submitter: 0,
            partitioned: false,
            exec_seq: 0,
            work_done: 0,
            work_extra: [0; 6],
            work_cancelled: 0,
            work_lost: 0,
            messages: 0,
            events: 0,
            trace: 0,
            resolved: 0,
            fail_reasons: Vec::new(),
            failed_without_reason: 0,
            batch: None,
            spare: Vec::new(),
            lookahead: cfg.latency_ms.0.max(1),
            stop_at: Millis::MAX,
            threads: 1,
            inflight: Vec::new(),
            free_slots: Vec::new(),
            spare_targets: Vec::new(),
            holders: vec![0],
            by_kind: [0; MESSAGE_KINDS.len()],
            next_fresh: 0,
            handle_calls: 0,
            deferred: 0,
            time_handle: false,
            handle_sampled: 0,
            handle_nanos: 0,
            sampled_by_kind: [(0, 0); EVENT_KINDS.len()],
            watch: std::env::var("OVA_SIM_WATCH").ok().and_then(|v| {
                let (job, unit) = v.split_once(':')?;
                Some((job.parse().ok()?, unit.parse().ok()?))
            }),
            cfg,
        };
        // Identities first, so the key registry is complete before peers are built.
        let n = sim.cfg.peers + sim.cfg.churn_events;
        let mut ids = Vec::with_capacity(n);
        let mut keys = SimKeys::default();
        for _ in 0..n {
            let id = PeerId(sim.rng.bytes32());
            keys.register(id);
            ids.push(id);
        }
        sim.keys = Arc::new(keys);
        let (mut liars, mut colluders, mut decliners) = (0usize, 0usize, 0usize);
        for (i, id) in ids.into_iter().enumerate() {
            let fault = if i == 0 || i >= sim.cfg.peers {
                Fault::Honest
            } else if (liars as f64) < sim.cfg.liars * sim.cfg.peers as f64 && i % 2 == 1 {
                liars += 1;
                Fault::Liar
            } else if (colluders as f64) < sim.cfg.colluders * sim.cfg.peers as f64 && i % 2 == 0 {
                colluders += 1;
                Fault::Colluder
            } else if (decliners as f64) < sim.cfg.decliners * sim.cfg.peers as f64 {
                decliners += 1;
                Fault::Decliner
            } else {
                Fault::Honest
            };
            sim.make_peer(id, fault);
            if i < sim.cfg.peers {
                sim.bring_online(i as u32);
            }
        }
        sim.next_fresh = sim.cfg.peers;
        // Units and jobs.
        let per_job = sim.cfg.units.div_ceil(sim.cfg.jobs.max(1));
        let mut made = 0;
        let module = BlobId::of(b"sim module");
        for j in 0..sim.cfg.jobs.max(1) {
            let count = per_job.min(sim.cfg.units - made);
            if count == 0 {
                break;
            }
            let units: Vec<UnitSpec> = (made..made + count)
                .map(|u| UnitSpec { input: BlobId::of(&(u as u64).to_le_bytes()), args: vec![] })
                .collect();
            let m = Manifest {
                version: MANIFEST_VERSION,
                name: format!("sim-{j}"),
                module,
                units,
                replication: sim.cfg.replication,
                limits: Limits { deadline_ms: sim.cfg.deadline_ms, ..Limits::default() },
                determinism: if sim.cfg.strict_jobs && j % 2 == 1 {
                    Determinism::Strict
                } else {
                    Determinism::SameArch
                },
                priority: 0,
            };
            let id = m.job_id();
            sim.job_index.insert(id, sim.jobs.len());
            sim.jobs.push((id, m, made));
            made += count;
        }
        for _ in 0..made {
            let (a, b) = sim.cfg.unit_cost_ms;
            let cost = a + sim.rng.below(b.saturating_sub(a) + 1);
            let float = sim.rng.chance(sim.cfg.float_units);
            sim.truth.push(UnitTruth { cost, float, ..Default::default() });
        }
        // Scheduled happenings.
        sim.push(sim.cfg.submit_at, Ev::Submit);
        let (c0, c1) = sim.cfg.churn_window;
        for _ in 0..sim.cfg.churn_events {
            let t = c0 + sim.rng.below(c1.saturating_sub(c0) + 1);
            sim.push(t, Ev::Churn);
        }
        for i in 1..sim.cfg.peers {
            if sim.rng.chance(sim.cfg.crash_stop) {
                let t = sim.cfg.submit_at + sim.rng.below(sim.ideal_ms().max(1));
                sim.push(t, Ev::Crash(i as u32));
            }
        }
        if let Some((a, b, frac)) = sim.cfg.partition {
            for i in 0..sim.peers.len() {
                sim.peers[i].group = u8::from(sim.rng.chance(frac));
                sim.sync_reach(i as u32);
            }
            sim.push(a, Ev::Partition(true));
            sim.push(b, Ev::Partition(false));
        }
        if let Some((a, b)) = sim.cfg.submitter_offline {
            sim.push(a, Ev::Offline(0, true));
            sim.push(b, Ev::Offline(0, false));
        }
        if let Some((frac, _)) = sim.cfg.owners {
            for i in 1..sim.peers.len() as u32 {
                if sim.rng.chance(frac) {
                    let t = sim.cfg.submit_at + sim.owner_pause();
                    sim.push(t, Ev::Owner(i));
                }
            }
        }
        sim
    }

    /// How long until an owner's next switch (see [`SimConfig::owners`]).
    fn owner_pause(&mut self) -> Millis {
        let period = self.cfg.owners.map_or(0, |o| o.1).max(2);
        period / 2 + self.rng.below(period)
    }

    fn make_peer(&mut self, id: PeerId, fault: Fault) {
        let arch = if self.rng.chance(self.cfg.arm_fraction) {
            ArchClass::AARCH64
        } else {
            ArchClass::X86_64
        };
        let (a, b) = self.cfg.cores;
        let cores = a + self.rng.below((b.saturating_sub(a) + 1) as u64) as u16;
        let speed = if self.rng.chance(self.cfg.slow_fraction) { self.cfg.slow_speed } else { 1.0 };
        let (l0, l1) = self.cfg.latency_ms;
        let delay = l0 + self.rng.below(l1.saturating_sub(l0) + 1);
        let seed = self.rng.next_u64();
        let peer = Peer::new(
            self.cfg.peer.clone(),
            arch,
            cores,
            Box::new(SimKeys::signer(id)),
            self.keys.clone(),
            seed,
        );
        let i = self.peers.len() as u32;
        self.index.insert(id, i);
        self.homes.push(Home { peer: Some(Box::new(peer)), timer_at: None });
        self.peers.push(SimPeer {
            id,
            arch,
            cores,
            spare: cores,
            speed,
            delay,
            fault,
            alive: false,
            online: false,
            group: 0,
            running: FxHashMap::default(),
            interrupted: Vec::new(),
            has_bundle: i == 0,
        });
        self.reach.push(0);
        self.ids.push(id);
        self.delays.push(delay);
    }

    /// Copies peer `i`'s alive, online and group fields into [`Sim::reach`].
    fn sync_reach(&mut self, i: u32) {
        let p = &self.peers[i as usize];
        self.reach[i as usize] = u8::from(p.alive) | u8::from(p.online) << 1 | p.group << 2;
    }

    fn ring_insert(&mut self, i: u32) {
        let p = &self.peers[i as usize];
        let e = (p.id.ring_point(), i);
        let pos = self.ring_any.partition_point(|x| *x < e);
        self.ring_any.insert(pos, e);
        let r = self.ring_class.entry(p.arch).or_default();
        let pos = r.partition_point(|x| *x < e);
        r.insert(pos, e);
    }

    fn ring_remove(&mut self, i: u32) {
        let p = &self.peers[i as usize];
        let e = (p.id.ring_point(), i);
        if let Ok(pos) = self.ring_any.binary_search(&e) {
            self.ring_any.remove(pos);
        }
        if let Some(r) = self.ring_class.get_mut(&p.arch)
            && let Ok(pos) = r.binary_search(&e)
        {
            r.remove(pos);
        }
    }

    fn bring_online(&mut self, i: u32) {
        let p = &mut self.peers[i as usize];
        p.alive = true;
        p.online = true;
        self.sync_reach(i);
        self.ring_insert(i);
        self.call(i, Event::Online);
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        debug_assert!(at >= self.now, "an event scheduled in the past");
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    /// Schedules what a peer's action causes `delay` from now, but no sooner than
    /// [`Sim::lookahead`] (what lets a window's calls be handled side by side).
    fn push_soon(&mut self, delay: Millis, ev: Ev) {
        self.push(self.now + delay.max(self.lookahead), ev);
    }

    /// The initial peers' cores per architecture class: (class, all cores, cores of peers
    /// with `fault`), by class.
    pub fn class_cores(&self, fault: Fault) -> Vec<(ArchClass, u64, u64)> {
        let mut by: Vec<(ArchClass, u64, u64)> = Vec::new();
        for p in &self.peers[..self.cfg.peers] {
            let i = match by.iter().position(|b| b.0 == p.arch) {
                Some(i) => i,
                None => {
                    by.push((p.arch, 0, 0));
                    by.len() - 1
                }
            };
            by[i].1 += u64::from(p.cores);
            if p.fault == fault {
                by[i].2 += u64::from(p.cores);
            }
        }
        by.sort_unstable_by_key(|b| b.0);
        by
    }

    /// What theory predicts for the run's colluding liars (see [`CollusionTheory`]); `None`
    /// without colluders.
    pub fn collusion_theory(&self) -> Option<CollusionTheory> {
        let initial = &self.peers[..self.cfg.peers];
        let n = initial.iter().filter(|p| p.fault == Fault::Colluder).count();
        if n == 0 {
            return None;
        }
        let rep = self.cfg.replication;
        let by = self.class_cores(Fault::Colluder);
        let all: u64 = by.iter().map(|b| b.1).sum();
        let bad: u64 = by.iter().map(|b| b.2).sum();
        let mut predicted_rate = 0.0;
        for &(_, w, c) in &by {
            let share = c as f64 / w.max(1) as f64;
            predicted_rate += w as f64 / all.max(1) as f64
                * collusion_wrong_accept(share, rep.quorum, rep.max_replicas);
        }
        Some(CollusionTheory {
            peer_share: n as f64 / initial.len().max(1) as f64,
            core_share: bad as f64 / all.max(1) as f64,
            predicted_rate,
        })
    }

    /// Total work / total capacity of the initial peers (ms).
    pub fn ideal_ms(&self) -> u64 {
        let work: u128 = self.truth.iter().map(|t| t.cost as u128).sum::<u128>()
            * self.cfg.replication.quorum as u128;
        let cap: f64 = self.peers[..self.cfg.peers].iter().map(|p| p.cores as f64 * p.speed).sum();
        (work as f64 / cap.max(1e-9)) as u64
    }

    fn link_delay(&mut self, a: u32, b: u32) -> u64 {
        let d = (self.delays[a as usize] + self.delays[b as usize]) / 2;
        d + self.rng.below(d / 4 + 1)
    }

    /// Puts a message (and a multicast's targets) in flight; returns its slot.
    fn stow(&mut self, msg: Message, to: Vec<u32>) -> u32 {
        match self.free_slots.pop() {
            Some(s) => {
                self.inflight[s as usize] = Some((msg, to));
                s
            }
            None => {
                self.inflight.push(Some((msg, to)));
                (self.inflight.len() - 1) as u32
            }
        }
    }

    /// Takes a message out of flight, freeing its slot.
    fn unstow(&mut self, slot: u32) -> (Message, Vec<u32>) {
        let m = self.inflight[slot as usize].take().expect("message in flight");
        self.free_slots.push(slot);
        m
    }

    /// An empty target list (reused).
    fn targets(&mut self) -> Vec<u32> {
        self.spare_targets.pop().unwrap_or_default()
    }

    /// Returns a target list for reuse.
    fn recycle(&mut self, mut v: Vec<u32>) {
        v.clear();
        self.spare_targets.push(v);
    }

    fn send(&mut self, from: u32, to: u32, msg: Message) {
        self.messages += 1;
        self.by_kind[kind_ix(&msg)] += 1;
        if self.cfg.loss > 0.0 && self.rng.chance(self.cfg.loss) {
            return;
        }
        let t = self.now + self.link_delay(from, to);
        let slot = self.stow(msg, Vec::new());
        self.push(t, Ev::Deliver { to, from, slot });
    }

    /// Sends `msg` to every peer in `to` with one link delay for all (a stated simplification:
    /// the copies of one multicast arrive together). Loss is still drawn per recipient.
    fn multicast(&mut self, from: u32, mut to: Vec<u32>, msg: Message) {
        self.messages += to.len() as u64;
        self.by_kind[kind_ix(&msg)] += to.len() as u64;
        if self.cfg.loss > 0.0 {
            let loss = self.cfg.loss;
            let rng = &mut self.rng;
            to.retain(|_| !rng.chance(loss));
        }
        match to.len() {
            0 => self.recycle(to),
            1 => {
                let t = self.now + self.link_delay(from, to[0]);
                let to0 = to[0];
                self.recycle(to);
                let slot = self.stow(msg, Vec::new());
                self.push(t, Ev::Deliver { to: to0, from, slot });
            }
            _ => {
                let t = self.now + self.link_delay(from, to[0]);
                let slot = self.stow(msg, to);
                self.push(t, Ev::Multi { from, slot });
            }
        }
    }

    fn reachable(&self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.reach[a as usize], self.reach[b as usize]);
        rb & 3 == 3 && ra & 1 == 1 && (!self.partitioned || ra >> 2 == rb >> 2)
    }

    /// Hands `ev` to peer `i` now: after the calls already waiting, and with its actions
    /// applied before returning.
    fn call(&mut self, i: u32, ev: Event) {
        self.defer(i, ev);
        self.flush();
    }

    /// Makes sure no deferred call for peer `i` is waiting, so its state may be read:
    /// handles the batch first when it holds one.
    fn claim(&mut self, i: u32) {
        if self.batch.as_ref().is_some_and(|b| b.holds(i)) {
            self.flush();
        }
    }

    /// Defers `ev` for peer `i` to the current [`Batch`] (handled by [`Sim::flush`]), when
    /// helper threads share the calls; after the calls for `i` the batch holds. An event
    /// whose handling here reads what the actions of `i`'s earlier calls change (its
    /// timer, its running units) must [`Sim::claim`] `i` first.
    fn defer(&mut self, i: u32, ev: Event) {
        self.defer_timer(i, ev, None);
    }

    /// [`Sim::defer`], for the timer set for `timer` when `Some` (the call is skipped if
    /// that is no longer the peer's latest timer request when it comes to be handled).
    fn defer_timer(&mut self, i: u32, ev: Event, timer: Option<Millis>) {
        self.deferred += 1;
        let timed = self.time_handle && self.deferred.is_multiple_of(8);
        let watch = self.watch.filter(|w| w.0 < self.jobs.len()).map(|(j, k)| {
            let unit = UnitRef { job: self.jobs[j].0, index: k };
            Box::new(Watched { unit, ev: ev.clone(), before: None, after: None })
        });
        let kind = if timed { event_kind(&ev) } else { 0 };
        let buffers = self.spare.pop().unwrap_or_default();
        let mut c = Call::new(i, self.now, ev, timer, timed, kind, watch, buffers);
        match self.batch.take() {
            Some(mut b) => {
                if b.is_full() {
                    self.batch = Some(b);
                    self.flush();
                    b = self.batch.take().expect("the batch is back");
                }
                b.add(c, &mut self.homes);
                self.batch = Some(b);
            }
            None => {
                // On one thread, calls are handled and applied as they come (the reference
                // the batches must match).
                // (A copy: the apply step below keeps the simulator's own.)
                let h = &mut self.homes[i as usize];
                let mut timer_at = h.timer_at;
                c.handle(at_home_mut(h), &mut timer_at, self.lookahead);
                self.apply(c);
                self.note_resolved();
            }
        }
    }

    /// Handles the deferred calls (side by side when [`Sim::threads`] > 1), then applies
    /// their actions one by one in the order the calls were made.
    fn flush(&mut self) {
        // (Taken out while the actions are applied; put back below.)
        let Some(mut b) = self.batch.take() else { return };
        // Each call's actions are applied in order, at the call's own moment, as soon as it
        // is handled (the helpers go on with the calls after it meanwhile).
        let now = self.now;
        for k in 0..b.len() {
            let c = b.finish(k, &mut self.homes);
            self.now = c.at;
            self.apply(c);
            self.note_resolved();
        }
        self.now = now;
        self.batch = Some(b);
    }

    /// Applies a handled call's actions.
    fn apply(&mut self, c: Call) {
        let i = c.peer;
        if !c.fired {
            // (A stale timer's: nothing happened; its buffers are still empty.)
            self.spare.push((c.out, c.causes));
            return;
        }
        self.handle_calls += 1;
        if c.timer.is_some() {
            self.homes[i as usize].timer_at = None;
        }
        if c.nanos > 0 {
            self.handle_nanos += u128::from(c.nanos);
            self.handle_sampled += 1;
            let k = &mut self.sampled_by_kind[usize::from(c.kind)];
            *k = (k.0 + 1, k.1 + u128::from(c.nanos));
        }
        let mut buf = c.out;
        let mut causes = c.causes.iter();
        // Consecutive sends of the same claim, commit or probe (to a unit's watchers) travel
        // as one multicast.
        let mut group: Option<(Message, Vec<u32>)> = None;
        for a in buf.drain(..) {
            if let Action::Send { to, msg } = a {
                let Some(&t) = self.index.get(&to) else { continue };
                match &mut group {
                    Some((m, tos)) if same_message(m, &msg) => tos.push(t),
                    _ => {
                        if let Some((m, tos)) = group.take() {
                            self.multicast(i, tos, m);
                        }
                        let mut tos = self.targets();
                        tos.push(t);
                        group = Some((msg, tos));
                    }
                }
                continue;
            }
            if let Some((m, tos)) = group.take() {
                self.multicast(i, tos, m);
            }
            let cause = match a {
                Action::StartUnit { .. } => causes.next().copied().unwrap_or(RunCause::Rule),
                _ => RunCause::Rule,
            };
            self.perform(i, a, cause);
        }
        if let Some((m, tos)) = group.take() {
            self.multicast(i, tos, m);
        }
        let mut causes = c.causes;
        buf.clear();
        causes.clear();
        self.spare.push((buf, causes));
        if let Some(w) = c.watch {
            let Watched { ev, before: b, after: a, .. } = *w;
            if a != b {
                let ev = format!("{ev:?}").chars().take(200).collect::<String>();
                eprintln!(
                    "WATCH t={} peer={i} {:?} ev={ev}\n   before={b:?}\n   after={a:?}",
                    self.now, self.ids[i as usize]
                );
            }
        }
    }

    fn neighbours(ring: &[(u64, u32)], point: u64, side: usize, out: &mut Vec<u32>) {
        if ring.len() <= 2 * side + 1 {
            out.extend(ring.iter().map(|e| e.1));
            return;
        }
        let pos = ring.partition_point(|e| e.0 < point);
        let n = ring.len();
        for k in 1..=side {
            out.push(ring[(pos + k) % n].1);
            out.push(ring[(pos + n - k) % n].1);
        }
        out.push(ring[pos % n].1);
    }

    /// Carries out one action of peer `i` (`cause`: why it runs the unit, for a
    /// [`Action::StartUnit`]).
    fn perform(&mut self, i: u32, a: Action, cause: RunCause) {
        match a {
            Action::Send { to, msg } => {
                if let Some(&t) = self.index.get(&to) {
                    self.send(i, t, msg);
                }
            }
            Action::Broadcast(msg) => {
                let mut targets = self.targets();
                if let Message::Advert(ad) = &msg {
                    let side = self.cfg.peer.view_side() + 3;
                    let point = ad.peer.ring_point();
                    Self::neighbours(&self.ring_any, point, side, &mut targets);
                    if let Some(r) = self.ring_class.get(&ad.arch) {
                        Self::neighbours(r, point, side, &mut targets);
                    }
                    targets.sort_unstable();
                    targets.dedup();
                } else {
                    targets.extend(self.ring_any.iter().map(|e| e.1));
                }
                targets.retain(|&t| t != i);
                self.multicast(i, targets, msg);
            }
            Action::SetTimer(at) => {
                let at = batch::timer_time(at, self.now, self.lookahead);
                if self.homes[i as usize].timer_at != Some(at) {
                    self.homes[i as usize].timer_at = Some(at);
                    self.push(at, Ev::Timer { peer: i });
                }
            }
            Action::StartUnit { unit, unit_id, job, .. } => {
                let Some(&ji) = self.job_index.get(&unit.job) else { return };
                let g = self.jobs[ji].2 + unit.index as usize;
                let cost = self.truth[g].cost;
                let p = &self.peers[i as usize];
                let bundle_ok = p.has_bundle
                    || self.holders.iter().any(|&h| {
                        let q = &self.peers[h as usize];
                        q.has_bundle
                            && q.alive
                            && q.online
                            && (!self.partitioned || q.group == p.group)
                    });
                let _ = (unit_id, job);
                self.exec_seq += 1;
                let exec = self.exec_seq;
                if p.fault == Fault::Decliner {
                    self.push_soon(1, Ev::Finish(Box::new((i, unit, DECLINED))));
                    return;
                }
                if !bundle_ok {
                    self.push_soon(1000, Ev::Finish(Box::new((i, unit, 0))));
                    return;
                }
                let duration = (cost as f64 / p.speed) as u64 + 2 * p.delay;
                let p = &mut self.peers[i as usize];
                p.running.insert(unit, Running { cause, exec, started: self.now, cost, duration });
                self.push_soon(duration, Ev::Finish(Box::new((i, unit, exec))));
            }
            Action::CancelUnit(unit) => {
                let p = &mut self.peers[i as usize];
                if let Some(r) = p.running.remove(&unit) {
                    let frac = (self.now - r.started) as f64 / r.duration.max(1) as f64;
                    let w = (r.cost as f64 * frac.min(1.0)) as u128;
                    self.work_done += w;
                    self.work_cancelled += w;
                }
            }
            Action::StoreBlob(_) => {}
            Action::FetchBlob { blob, from, purpose } => {
                let mut ok = false;
                let mut delay = 0;
                for f in from.iter().take(4) {
                    if let Some(&j) = self.index.get(f) {
                        delay += 2 * self.link_delay(i, j);
                        if self.reachable(i, j) {
                            ok = true;
                            break;
                        }
                    }
                }
                self.push_soon(delay + 1, Ev::Fetched(Box::new((i, blob, purpose, ok))));
            }
            Action::UnitVerified { unit, result, .. } => {
                if matches!(self.peers[i as usize].fault, Fault::Liar | Fault::Colluder) {
                    return;
                }
                let Some(&ji) = self.job_index.get(&unit.job) else { return };
                let g = self.jobs[ji].2 + unit.index as usize;
                let t = &mut self.truth[g];
                if t.verified.is_none() {
                    if !t.failed {
                        self.resolved += 1;
                    }
                    t.verified = Some(result);
                    t.resolved_at = self.now;
                }
            }
            Action::UnitFailed { unit, reason } => {
                if matches!(self.peers[i as usize].fault, Fault::Liar | Fault::Colluder) {
                    return;
                }
                let Some(&ji) = self.job_index.get(&unit.job) else { return };
                let g = self.jobs[ji].2 + unit.index as usize;
                let t = &mut self.truth[g];
                if !t.failed && t.verified.is_none() {
                    self.resolved += 1;
                    t.failed = true;
                    t.resolved_at = self.now;
                    let FailReason::NoQuorum { .. } = reason;
                    let text = reason.to_string();
                    if text.is_empty() {
                        self.failed_without_reason += 1;
                    }
                    if self.fail_reasons.len() < 3 {
                        self.fail_reasons.push(format!("unit {}: {text}", unit.index));
                    }
                }
            }
        }
    }

    /// Once every unit is resolved, the run goes on for one more minute.
    fn note_resolved(&mut self) {
        if self.resolved >= self.truth.len() && self.stop_at == Millis::MAX {
            self.stop_at = self.now + 60_000;
        }
    }

    fn trace_mix(&mut self, a: u64, b: u64) {
        self.trace = mix64(self.trace ^ mix64(a.wrapping_mul(31) ^ b));
    }

    /// Runs to completion (every unit resolved) or the horizon.
    pub fn run(&mut self, name: &str) -> Report {
        if self.threads > 1 {
            match Batch::start(self.threads - 1, self.lookahead) {
                Ok(b) => self.batch = Some(b),
                Err(e) => eprintln!("ova-sim: no helper threads ({e}); running on one thread"),
            }
        }
        let report = self.run_events(name);
        // Stops the helpers.
        self.batch = None;
        report
    }

    /// The event loop of [`Sim::run`].
    fn run_events(&mut self, name: &str) -> Report {
        let total = self.truth.len();
        let horizon = self.cfg.horizon;
        self.cfg.horizon =
            std::env::var("OVA_SIM_HORIZON").ok().and_then(|v| v.parse().ok()).unwrap_or(horizon);
        self.stop_at = if total == 0 { 60_000 } else { Millis::MAX };
        while let Some(q) = self.queue.pop() {
            // A batch holds the calls of one window (see `lookahead`): handle it before time
            // passes the window (its actions may schedule events before `q`). (A full batch
            // is handled when the next call is deferred.)
            if self
                .batch
                .as_ref()
                .and_then(Batch::first_at)
                .is_some_and(|t| q.at >= t + self.lookahead)
            {
                self.queue.push(q);
                self.flush();
                continue;
            }
            if q.at > self.cfg.horizon || q.at > self.stop_at {
                break;
            }
            self.now = q.at;
            self.events += 1;
            match q.ev {
                Ev::Deliver { to, from, slot } => {
                    let (msg, _) = self.unstow(slot);
                    self.trace_mix(q.at, to as u64);
                    if !self.reachable(from, to) {
                        continue;
                    }
                    let fromid = self.ids[from as usize];
                    self.defer(to, Event::Message { from: fromid, msg });
                }
                Ev::Multi { from, slot } => {
                    let (msg, to) = self.unstow(slot);
                    let fromid = self.ids[from as usize];
                    let last = to.len().saturating_sub(1);
                    let mut msg = Some(msg);
                    for (k, &t) in to.iter().enumerate() {
                        self.trace_mix(q.at, t as u64);
                        if self.reachable(from, t) {
                            let m = if k == last {
                                msg.take().expect("last copy")
                            } else {
                                msg.clone().expect("message")
                            };
                            self.defer(t, Event::Message { from: fromid, msg: m });
                        }
                    }
                    self.recycle(to);
                }
                Ev::Timer { peer } => {
                    let at = q.at;
                    // Alive and online: bits 0 and 1 of `reach`. (Whether the timer is
                    // still the one the peer wants is checked when the call is handled,
                    // after the peer's earlier calls in the batch: see `Call::handle`.)
                    if self.reach[peer as usize] & 3 != 3 {
                        continue;
                    }
                    self.trace_mix(at, peer as u64 | 1 << 40);
                    // A timer already replaced is stale however the batch's calls end: none
                    // can ask for a time before `at` (they ask for `lookahead` after the
                    // batch's first call, at the soonest).
                    if self.homes[peer as usize].timer_at != Some(at) {
                        continue;
                    }
                    self.defer_timer(peer, Event::Timer, Some(at));
                }
                Ev::Finish(f) => {
                    let (peer, unit, exec) = *f;
                    self.claim(peer);
                    if self.peers[peer as usize].fault == Fault::Liar {
                        // A liar's result is drawn from the random stream.
                        self.flush();
                    }
                    let p = &mut self.peers[peer as usize];
                    if !p.alive || !p.online {
                        continue;
                    }
                    let result = if exec == 0 {
                        Err(LocalFailure::InputsUnavailable)
                    } else if exec == DECLINED {
                        Err(LocalFailure::Declined)
                    } else {
                        match p.running.get(&unit) {
                            Some(r) if r.exec == exec => {
                                let r = p.running.remove(&unit).expect("present");
                                self.work_done += r.cost as u128;
                                let Some(&ji) = self.job_index.get(&unit.job) else { continue };
                                let g = self.jobs[ji].2 + unit.index as usize;
                                let t = &mut self.truth[g];
                                if t.runs >= self.cfg.replication.quorum {
                                    self.work_extra[cause_ix(r.cause)] += r.cost as u128;
                                }
                                t.runs = t.runs.saturating_add(1);
                                let strict = self.jobs[ji].1.determinism == Determinism::Strict;
                                let uid = {
                                    let u = &self.jobs[ji].1.units[unit.index as usize];
                                    UnitId::derive(&self.jobs[ji].1.module, &u.input, &u.args)
                                };
                                let p = &self.peers[peer as usize];
                                let (arch, fault) = (p.arch, p.fault);
                                Ok(result_of(
                                    &uid,
                                    arch,
                                    self.truth[g].float,
                                    strict,
                                    fault,
                                    &mut self.rng,
                                ))
                            }
                            _ => continue,
                        }
                    };
                    self.trace_mix(q.at, peer as u64 | 2 << 40);
                    self.defer(peer, Event::UnitFinished { unit, result });
                }
                Ev::Fetched(f) => {
                    let (peer, blob, purpose, ok) = *f;
                    let p = &self.peers[peer as usize];
                    if !p.alive || !p.online {
                        continue;
                    }
                    if ok && matches!(purpose, FetchPurpose::Bundle(_)) {
                        // Other peers' units start on what the bundle holders are: the calls
                        // before this one must see them as they were.
                        self.flush();
                        let p = &mut self.peers[peer as usize];
                        p.has_bundle = true;
                        self.holders.push(peer);
                    }
                    self.defer(peer, Event::BlobFetched { blob, purpose, ok });
                }
                Ev::Submit => {
                    self.flush();
                    let ms: Vec<Manifest> = self.jobs.iter().map(|j| j.1.clone()).collect();
                    let s = self.submitter;
                    // The submitter's shell hears every advert by gossip (the simulator only
                    // delivers adverts to the ring neighbours that keep them) and counts the
                    // spare cores per class of the peers it can reach.
                    let mut census: Vec<(ArchClass, u32)> = Vec::new();
                    for i in 0..self.peers.len() as u32 {
                        if i != s && self.reachable(s, i) {
                            let p = &self.peers[i as usize];
                            match census.iter_mut().find(|(c, _)| *c == p.arch) {
                                Some((_, w)) => *w += u32::from(p.cores),
                                None => census.push((p.arch, u32::from(p.cores))),
                            }
                        }
                    }
                    at_home_mut(&mut self.homes[s as usize]).set_capacity_census(census);
                    for m in ms {
                        self.call(s, Event::Submit(Box::new(m)));
                    }
                }
                Ev::Churn => {
                    self.flush();
                    let online: Vec<u32> = self
                        .ring_any
                        .iter()
                        .map(|e| e.1)
                        .filter(|&i| i != self.submitter)
                        .collect();
                    if online.is_empty() {
                        continue;
                    }
                    let victim = online[self.rng.below(online.len() as u64) as usize];
                    let graceful = self.rng.chance(0.5);
                    self.kill(victim, graceful);
                    if self.next_fresh < self.peers.len() {
                        self.next_fresh += 1;
                        self.bring_online(self.next_fresh as u32 - 1);
                    }
                }
                Ev::Crash(i) => {
                    self.flush();
                    if self.peers[i as usize].alive {
                        self.kill(i, false);
                    }
                }
                Ev::Partition(on) => {
                    self.flush();
                    self.partitioned = on;
                }
                Ev::Owner(i) => {
                    self.flush();
                    let p = &self.peers[i as usize];
                    if !p.alive && i < self.next_fresh as u32 {
                        continue;
                    }
                    let (cores, spare, online) = (p.cores, p.spare, p.online);
                    let t = self.now + self.owner_pause();
                    self.push(t, Ev::Owner(i));
                    // (A peer that has not joined yet, or is away, keeps its offer.)
                    if !online {
                        continue;
                    }
                    let next = if spare < cores {
                        cores
                    } else if self.rng.chance(0.5) {
                        0
                    } else {
                        cores / 2
                    };
                    self.peers[i as usize].spare = next;
                    self.trace_mix(q.at, i as u64 | 3 << 40);
                    self.call(i, Event::Capacity(next));
                }
                Ev::Offline(i, off) => {
                    self.flush();
                    if off {
                        self.homes[i as usize].timer_at = None;
                    }
                    let p = &mut self.peers[i as usize];
                    if off {
                        p.online = false;
                        let mut lost: Vec<(UnitRef, Running)> = p.running.drain().collect();
                        lost.sort_unstable_by_key(|(u, _)| *u);
                        p.interrupted = lost.iter().map(|(u, _)| *u).collect();
                        self.lose(lost.into_iter().map(|(_, r)| r).collect());
                        self.sync_reach(i);
                        self.ring_remove(i);
                    } else {
                        p.online = true;
                        let interrupted = std::mem::take(&mut p.interrupted);
                        self.sync_reach(i);
                        self.ring_insert(i);
                        self.call(i, Event::Online);
                        for unit in interrupted {
                            let result = Err(LocalFailure::Cancelled);
                            self.call(i, Event::UnitFinished { unit, result });
                        }
                    }
                }
            }
        }
        self.flush();
        self.report(name)
    }

    fn kill(&mut self, i: u32, graceful: bool) {
        if self.watch.is_some() {
            eprintln!(
                "KILL t={} peer={i} {:?} graceful={graceful}",
                self.now, self.ids[i as usize]
            );
        }
        let p = &mut self.peers[i as usize];
        p.alive = false;
        p.online = false;
        p.has_bundle = false;
        let lost: Vec<Running> = p.running.drain().map(|(_, r)| r).collect();
        self.lose(lost);
        self.sync_reach(i);
        self.ring_remove(i);
        if graceful {
            let id = self.peers[i as usize].id;
            let mut n = Vec::new();
            Self::neighbours(
                &self.ring_any,
                id.ring_point(),
                self.cfg.peer.view_side() + 3,
                &mut n,
            );
            for t in n {
                if self.reachable(t, t) {
                    let d = self.peers[t as usize].delay;
                    let _ = d;
                    self.call(t, Event::PeerLeft(id));
                }
            }
        }
    }

    fn lose(&mut self, lost: Vec<Running>) {
        for r in lost {
            let frac = (self.now - r.started) as f64 / r.duration.max(1) as f64;
            let w = (r.cost as f64 * frac.min(1.0)) as u128;
            self.work_done += w;
            self.work_lost += w;
        }
    }

    fn report(&self, name: &str) -> Report {
        #[allow(clippy::type_complexity)]
        let mut r = Report {
            name: name.to_string(),
            seed: self.cfg.seed,
            peers: self.cfg.peers,
            peers_total: self.next_fresh,
            units: self.truth.len(),
            messages: self.messages,
            events: self.events,
            trace: self.trace,
            failed_without_reason: self.failed_without_reason,
            fail_reasons: self.fail_reasons.clone(),
            ideal_ms: self.ideal_ms(),
            by_kind: MESSAGE_KINDS
                .iter()
                .zip(self.by_kind)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
            collusion: self.collusion_theory(),
            ..Default::default()
        };
        let mut last = 0;
        for (ji, (_, m, base)) in self.jobs.iter().enumerate() {
            let strict = m.determinism == Determinism::Strict;
            let _ = ji;
            for (k, u) in m.units.iter().enumerate() {
                let t = &self.truth[base + k];
                if let Some(v) = t.verified {
                    r.verified += 1;
                    let uid = UnitId::derive(&m.module, &u.input, &u.args);
                    let mut rng = Rng::new(0);
                    let ok = [ArchClass::X86_64, ArchClass::AARCH64].iter().any(|&a| {
                        result_of(&uid, a, t.float, strict, Fault::Honest, &mut rng) == v
                    });
                    if !ok {
                        r.wrong_accepted += 1;
                    }
                } else if t.failed {
                    r.failed += 1;
                } else {
                    r.unresolved += 1;
                }
                last = last.max(t.resolved_at);
            }
        }
        r.makespan_ms = last.saturating_sub(self.cfg.submit_at);
        let mut times: Vec<u64> = self
            .truth
            .iter()
            .filter(|t| t.verified.is_some() || t.failed)
            .map(|t| t.resolved_at.saturating_sub(self.cfg.submit_at))
            .collect();
        times.sort_unstable();
        if !times.is_empty() {
            r.quantiles = [
                times[times.len() / 2],
                times[times.len() * 9 / 10],
                times[times.len() * 99 / 100],
            ];
        }
        let quorum_work: u128 = self.truth.iter().map(|t| t.cost as u128).sum::<u128>()
            * self.cfg.replication.quorum as u128;
        r.waste = (self.work_done as f64 - quorum_work as f64) / quorum_work.max(1) as f64;
        let q = quorum_work.max(1) as f64;
        let mut b = format!(
            "lost_to_churn={:.4} cancelled={:.4}",
            self.work_lost as f64 / q,
            self.work_cancelled as f64 / q
        );
        for c in [
            RunCause::Scan,
            RunCause::Probe,
            RunCause::Lapse,
            RunCause::Extra,
            RunCause::Rule,
            RunCause::Steal,
        ] {
            let _ =
                write!(b, " extra_{}={:.4}", c.label(), self.work_extra[cause_ix(c)] as f64 / q);
        }
        r.waste_breakdown = b;
        r.submitter_verified = self
            .jobs
            .iter()
            .filter_map(|(id, _, _)| {
                at_home(&self.homes[self.submitter as usize]).job_progress(id).map(|p| p.1)
            })
            .sum();
        let st = |f: fn(&crate::peer::Stats) -> u64| -> u64 {
            self.homes.iter().map(|p| f(at_home(p).stats())).sum()
        };
        r.by_kind.push_str(&format!(
            " | queued_scan={} queued_rule={} queued_steal={} started={} (scan={} probe={} \
             lapse={} extra={} rule={} steal={}) lease_extensions={} leases_gone={} swept={} \
             commits_resent={}",
            st(|s| s.queued_scan),
            st(|s| s.queued_rule),
            st(|s| s.queued_steal),
            st(|s| s.started),
            st(|s| s.started_scan),
            st(|s| s.started_probe),
            st(|s| s.started_lapse),
            st(|s| s.started_extra),
            st(|s| s.started_rule),
            st(|s| s.started_steal),
            st(|s| s.lease_extensions),
            st(|s| s.leases_gone),
            st(|s| s.swept),
            st(|s| s.commits_resent),
        ));
        r.dropped_commits = self
            .homes
            .iter()
            .map(|p| at_home(p).stats().bad_signature + at_home(p).stats().unknown_signer)
            .sum();
        r
    }

    /// Describes every unresolved unit as its trackers see it (debugging aid).
    pub fn describe_unresolved(&self, max: usize) -> String {
        let mut out = String::new();
        for (id, m, base) in &self.jobs {
            for k in 0..m.units.len() {
                if out.lines().count() > max * 8 {
                    return out;
                }
                let t = &self.truth[base + k];
                if t.verified.is_some() || t.failed {
                    continue;
                }
                let unit = UnitRef { job: *id, index: k as u32 };
                let ji = self.jobs.iter().position(|j| j.0 == *id).unwrap_or(0);
                let _ = writeln!(out, "unit {ji}:{k}:");
                for (p, h) in self.peers.iter().zip(&self.homes) {
                    if let Some(d) = at_home(h).describe_unit(&unit) {
                        let _ = writeln!(
                            out,
                            "  {:?} alive={} arch={:?} fault={:?} spare={}/{} {d}",
                            p.id, p.alive, p.arch, p.fault, p.spare, p.cores
                        );
                    } else if let Some(e) = at_home(h).explain_unit(&unit)
                        && p.alive
                        && (e.contains("done=true") || e.contains("ranks_in_quorum=true"))
                    {
                        let _ = writeln!(out, "  {:?} untracked: {e}", p.id);
                    }
                }
            }
        }
        out
    }

    /// The peers (for tests that inspect state).
    pub fn peer(&self, i: usize) -> &Peer {
        at_home(&self.homes[i])
    }

    /// Total `Peer::handle` calls so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Estimated wall time spent inside `Peer::handle` (seconds), from the timed sample (see
    /// [`Sim::time_handle`]); `None` when nothing was timed.
    pub fn handle_seconds(&self) -> Option<f64> {
        (self.handle_sampled > 0).then(|| {
            self.handle_nanos as f64 / self.handle_sampled as f64 * self.handle_calls as f64 / 1e9
        })
    }

    /// Of the timed `Peer::handle` calls, by what they handled ([`EVENT_KINDS`]), those that
    /// happened: the kind, its share of the timed wall time and its mean time per call in
    /// microseconds. Empty when nothing was timed.
    pub fn handle_time_by_kind(&self) -> Vec<(&'static str, f64, f64)> {
        let total = self.handle_nanos.max(1) as f64;
        (EVENT_KINDS.iter().zip(&self.sampled_by_kind))
            .filter(|(_, (n, _))| *n > 0)
            .map(|(k, (n, t))| (*k, *t as f64 / total, *t as f64 / *n as f64 / 1e3))
            .collect()
    }

    /// Units tracked, and units remembered only as resolved, summed over all peers.
    pub fn tracked_totals(&self) -> (usize, usize) {
        self.homes
            .iter()
            .fold((0, 0), |(a, b), p| (a + at_home(p).tracked_units(), b + at_home(p).done_units()))
    }

    /// Injects a raw frame into peer `to` as if sent by peer `from` (for abuse tests).
    pub fn inject_frame(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let from = self.peers[from].id;
        self.call(to as u32, Event::Frame { from, bytes });
    }
}

/// What a `Peer::handle` call handled: a message of each of [`MESSAGE_KINDS`], then a timer,
/// a finished unit, and anything else (coming online, a fetched blob, a submission).
pub const EVENT_KINDS: [&str; MESSAGE_KINDS.len() + 3] = {
    let mut k = [""; MESSAGE_KINDS.len() + 3];
    let mut i = 0;
    while i < MESSAGE_KINDS.len() {
        k[i] = MESSAGE_KINDS[i];
        i += 1;
    }
    k[i] = "timer";
    k[i + 1] = "unit_finished";
    k[i + 2] = "other";
    k
};

/// Index of an event's kind in [`EVENT_KINDS`].
fn event_kind(ev: &Event) -> u8 {
    let n = MESSAGE_KINDS.len();
    let k = match ev {
        Event::Message { msg, .. } => kind_ix(msg),
        // A batch the shell opened ("commits").
        Event::Commits { .. } => 4,
        Event::Timer => n,
        Event::UnitFinished { .. } | Event::UnitsFinished(_) => n + 1,
        _ => n + 2,
    };
    k as u8
}

/// Index of a message's kind in [`MESSAGE_KINDS`].
fn kind_ix(m: &Message) -> usize {
    match m {
        Message::Advert(_) => 0,
        Message::Announce(_) => 1,
        Message::Claim { .. } => 2,
        Message::Commit(_) => 3,
        Message::Commits(_) => 4,
        Message::GetJob(_) => 5,
        Message::HaveBundle(_) => 6,
        Message::Ping => 7,
        Message::Pong => 8,
        Message::Probe(_) => 9,
        Message::ProbeReply { .. } => 10,
        Message::Release { .. } => 11,
        Message::ResultBytes(_) => 12,
        Message::StealGrant(_) => 13,
        Message::StealRequest { .. } => 14,
        Message::SyncReply(_) => 15,
        Message::SyncRequest(_) => 16,
    }
}

/// `Ev::Finish` exec number of a unit a [`Fault::Decliner`] declined.
const DECLINED: u64 = u64::MAX;

fn cause_ix(c: RunCause) -> usize {
    match c {
        RunCause::Scan => 0,
        RunCause::Probe => 1,
        RunCause::Lapse => 2,
        RunCause::Extra => 3,
        RunCause::Rule => 4,
        RunCause::Steal => 5,
    }
}

/// Whether two messages are the same claim, commit or probe (cheap, for multicast grouping).
fn same_message(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (Message::Claim { unit: u1, until: t1 }, Message::Claim { unit: u2, until: t2 }) => {
            u1 == u2 && t1 == t2
        }
        (Message::Release { unit: u1, until: t1 }, Message::Release { unit: u2, until: t2 }) => {
            u1 == u2 && t1 == t2
        }
        (Message::Commit(c1), Message::Commit(c2)) => c1 == c2,
        (Message::Commits(b1), Message::Commits(b2)) => b1 == b2,
        (Message::Probe(u1), Message::Probe(u2)) => u1 == u2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event queue beside a reference (a sorted set of its keys).
    struct Checked {
        q: EventQueue,
        reference: std::collections::BTreeSet<(u64, u64)>,
        seq: u64,
        now: u64,
    }

    impl Checked {
        fn new() -> Self {
            Self { q: EventQueue::new(), reference: Default::default(), seq: 0, now: 0 }
        }

        fn push(&mut self, at: u64) {
            self.seq += 1;
            self.q.push(Queued { at, seq: self.seq, ev: Ev::Submit });
            self.reference.insert((at, self.seq));
        }

        /// Takes the next event out and checks it is the reference's first.
        fn pop(&mut self) {
            let e = self.q.pop().map(|e| (e.at, e.seq));
            assert_eq!(e, self.reference.pop_first());
            if let Some((at, _)) = e {
                self.now = at;
            }
        }
    }

    /// The radix heap hands out events in (time, sequence) order, like a binary heap, while
    /// events are scheduled at or after the one being handled.
    #[test]
    fn event_kinds_name_the_messages_then_the_other_events() {
        assert_eq!(&EVENT_KINDS[..MESSAGE_KINDS.len()], &MESSAGE_KINDS[..]);
        assert_eq!(EVENT_KINDS[4], "commits", "a batch the shell opened counts as one");
        let n = MESSAGE_KINDS.len();
        assert_eq!(&EVENT_KINDS[n..], &["timer", "unit_finished", "other"]);
        assert_eq!(usize::from(event_kind(&Event::Timer)), n);
        assert_eq!(usize::from(event_kind(&Event::Online)), n + 2);
    }

    #[test]
    fn what_a_call_causes_lands_no_sooner_than_the_lookahead() {
        let cfg = SimConfig { peers: 3, units: 4, latency_ms: (7, 9), ..SimConfig::default() };
        let mut sim = Sim::new(cfg);
        assert_eq!(sim.lookahead, 7);
        while sim.queue.pop().is_some() {}
        sim.now = 1_000;
        sim.queue.last = 0;
        // A timer asked for now, or 3 ms from now, fires 7 ms from now; one further off
        // keeps its time.
        for (asked, lands) in [(1_000, 1_007), (1_003, 1_007), (1_050, 1_050)] {
            sim.homes[1].timer_at = None;
            sim.perform(1, Action::SetTimer(asked), RunCause::Rule);
            assert_eq!(sim.homes[1].timer_at, Some(lands));
            let q = sim.queue.pop().expect("the timer's event");
            assert!(matches!(q.ev, Ev::Timer { peer: 1 }));
            assert_eq!(q.at, lands);
        }
        // A send takes at least the least link delay.
        let msg = Message::Ping;
        sim.send(1, 2, msg);
        let q = sim.queue.pop().expect("the delivery");
        assert!(q.at >= 1_007, "{}", q.at);
    }

    #[test]
    fn event_queue_orders_by_time_then_sequence() {
        let mut rng = Rng::new(7);
        let mut c = Checked::new();
        for _ in 0..20_000 {
            for _ in 0..rng.below(4) {
                c.push(c.now + rng.below(3) * rng.below(5_000));
            }
            c.pop();
        }
    }

    #[test]
    fn event_queue_takes_back_an_event_and_orders_earlier_ones_first() {
        // What the event loop does around a batch: take the next event out, put it back,
        // then schedule events before it (and after it).
        let mut rng = Rng::new(11);
        let mut c = Checked::new();
        for _ in 0..5_000 {
            for _ in 0..1 + rng.below(3) {
                c.push(c.now + rng.below(50));
            }
            let Some(next) = c.q.pop() else { continue };
            c.q.push(next);
            for _ in 0..rng.below(3) {
                c.push(c.now + rng.below(50));
            }
            c.pop();
        }
    }
}
