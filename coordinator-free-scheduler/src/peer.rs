//! The peer state machine: events and `now` in, actions out.
//!
//! A shell (the iroh network layer, or the simulator) drives one [`Peer`] per process:
//!
//! ```text
//! loop {
//!     let event = next event (message, finished unit, fetched blob, timer, ...);
//!     for action in peer.handle(event, now) { perform it }   // send, start unit, set timer...
//! }
//! ```
//!
//! The peer never blocks, never reads a clock and draws randomness only from its seeded
//! [`Rng`]. All its tables are bounded (see [`Config`]); what happens when one is full is
//! documented on each field.
//!
//! ## The protocol, per unit
//! 1. Every peer ranks the unit's candidates in its own view ([`crate::placement`]). Peers in
//!    the top `quorum` queue it as their cursor over their ring region reaches it.
//! 2. Starting a unit sends a [`Message::Claim`] (a lease until deadline + slack) to the
//!    unit's top `max_replicas + 1` ranked peers.
//! 3. Finishing sends a signed [`Message::Commit`] to the same peers and to the submitter.
//! 4. Whoever holds commits tallies them ([`crate::quorum`]). While no result has `quorum`
//!    agreeing signers, the best-ranked peers that have neither committed, nor hold a live
//!    lease, nor let one lapse, run it — as many as are still needed, never more than
//!    `max_replicas` in all. This one rule covers the first run, extra replicas after a
//!    mismatch and take-over after a lapsed lease.
//! 5. When a neighbour leaves or expires, a peer rescans its region (a newcomer only pushes it
//!    down the rankings); units in the arc its region gained are first probed
//!    ([`Message::Probe`]) so finished work is not redone.
//! 6. An idle peer with nothing left to scan asks the busiest peer it knows for queued units;
//!    a peer with nothing to give forwards the request, and the grant names the unit's
//!    watchers, so work moves between distant parts of the ring.
//!
//! ## Churn without duplicate work
//! - A claim made when a unit is *queued* reserves it for the wait behind the queue plus the
//!   run; watchers accept reservations up to that bound, so an honest queue wait never looks
//!   like a lapse.
//! - A lapsed lease whose holder has not left the watcher's view is extended briefly (at most
//!   [`crate::lease::MAX_EXTENSIONS`] times) while the watcher probes the holder: a holder
//!   that still has the unit renews its lease in the reply, one that finished replies with its
//!   commit, and only silence re-places the unit. Implicit leases (peers ranked ahead that
//!   never claimed) get one such probe. When the holder *leaves* the view (graceful leave, its
//!   adverts expire, or it stays silent and does not answer a [`Message::Ping`]) its leases
//!   end at once and the unit is re-placed without waiting.
//! - A peer that cannot run a unit (its shell declined it: an allow-list, missing inputs)
//!   hands it back with a claim ending at 0. Watchers leave that peer out of the unit's
//!   watchers so the hand-back reaches further down the ranking, and the next eligible peer
//!   takes the unit at once. The give-up is final at the watchers (a later claim from that
//!   peer for the unit may be stale). A decline (policy) is final at the peer too; a
//!   transient give-up (inputs unreachable, cancelled) is taken up again by the peer's
//!   liveness sweep once nobody holds the unit, and its commit counts like any other: a unit
//!   whose every candidate once failed to fetch its inputs is not stranded.
//! - A peer that learned a job late (it just joined) waits `warmup_ms` for its view to fill
//!   before ranking units; peers answer a newcomer's advert with their own, so that takes one
//!   round trip.
//! - A replica added late (a thief, a take-over after a lapse) may rank outside the watchers
//!   the other executors told, so it is told directly: an executor answers a claim for a unit
//!   it committed to with its commit, a victim sends the commits it holds with a steal grant,
//!   and a peer that sees a commit arrive for a unit already resolved answers with the tally
//!   (or, having kept only the key, with "resolved": two such answers stop the executor's
//!   re-sends). Hearsay leases (probe replies) never revive the lease of a holder that left.
//! - Resolved units shrink to a key in a bounded set (executors keep their tally to answer
//!   probes and sync requests), so per-peer state follows the units in flight, not the job.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use ova_jobs::{BlobId, JobId, Manifest, UnitId};

use crate::commit::{self, CommitBody, CommitError, SignedCommit, Signer, Verifier};
use crate::lease::{Lease, Leases};
use crate::membership::{Advert, AdvertEffect, MAX_ADVERT_JOBS, View};
use crate::message::{Derived, Grant, JobInfo, MAX_ANNOUNCE_LIST, MAX_BATCH, Message};
use crate::placement::{position, rank, unit_point};
use crate::quorum::{Added, DissentBook, DissentRecord, FailReason, Tally, Verdict};
use crate::types::{ArchClass, Millis, PeerId, UnitRef};
use crate::util::{FxHashMap, FxHashSet, Rng};

/// Tunables. Defaults suit both the simulator and a small real network.
#[derive(Clone, Debug)]
pub struct Config {
    /// Candidates per unit (ring successors ranked by rendezvous hashing).
    pub window: usize,
    /// Ring neighbours kept on each side, per ring (must be ≥ `window`).
    pub view_side: usize,
    /// How often we decide whether to advertise. An advert goes out when what it says has
    /// changed (spare cores, or whether we have queued units to spare for thieves), and at
    /// least every quarter of `advert_ttl_ms` as a heartbeat. Expired members are dropped
    /// every half interval.
    pub advert_interval_ms: Millis,
    /// How long our adverts stay valid at receivers (a quarter of it is our heartbeat).
    pub advert_ttl_ms: u32,
    /// Added to a unit's deadline to form the lease.
    pub lease_slack_ms: Millis,
    /// How long to wait for probe replies before deciding.
    pub probe_wait_ms: Millis,
    /// How long we wait for a peer ranked ahead of us to claim a unit that needs a replica
    /// before we take it over ourselves.
    pub claim_grace_ms: Millis,
    /// Least time between two steal requests.
    pub steal_cooldown_ms: Millis,
    /// A view member that has not advertised for this long is pinged ([`Message::Ping`]) and,
    /// without an answer by our next tick, taken as gone (its leases end, its units are
    /// placed again). With rare adverts (a long `advert_ttl_ms`) this finds a crashed peer
    /// long before its advert expires. Has no effect when it exceeds the TTL.
    pub silence_probe_ms: Millis,
    /// Most units tracked. When full, new units (scanned, claimed or committed) are not
    /// tracked and counted in [`Stats::table_full`]; others will run or watch them.
    pub max_tracked_units: usize,
    /// Most jobs known. When full, new announcements are dropped and counted.
    pub max_jobs: usize,
    /// Ready-queue length per core; the scan stops filling beyond it.
    pub queue_per_core: usize,
    /// Most pending timers. When full, new unit timers are dropped (the periodic rescan still
    /// revisits those units) and counted.
    pub max_timers: usize,
    /// Most (peer, module) dissent records.
    pub max_dissent_records: usize,
    /// Peers besides the submitter asked to keep a job's bundle.
    pub bundle_copies: usize,
    /// After coming online, how long a peer waits before scanning a job it learned late
    /// (from an advert), so its ring view fills first and it does not rank units against a
    /// near-empty view (which makes it run units others already hold).
    pub warmup_ms: Millis,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 10,
            view_side: 14,
            advert_interval_ms: 30_000,
            advert_ttl_ms: 300_000,
            lease_slack_ms: 10_000,
            probe_wait_ms: 2_000,
            steal_cooldown_ms: 5_000,
            silence_probe_ms: 100_000,
            claim_grace_ms: 60_000,
            max_tracked_units: 1 << 21,
            max_jobs: 64,
            queue_per_core: 2,
            max_timers: 1 << 22,
            max_dissent_records: 1 << 16,
            bundle_copies: 3,
            warmup_ms: 5_000,
        }
    }
}

/// Why a unit could not be run here (no result to commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalFailure {
    /// The module or input could not be fetched. Transient: the peer may take the unit up
    /// again later if the network still needs it.
    InputsUnavailable,
    /// The shell cancelled it (capacity shrank, shutdown). Transient, like
    /// [`LocalFailure::InputsUnavailable`].
    Cancelled,
    /// This peer will not run the unit (its allow-list excludes the submitter). Final.
    Declined,
}

/// Why a blob is being fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchPurpose {
    /// To keep a copy of a job's bundle (module and inputs).
    Bundle(JobId),
    /// To keep a copy of a verified result (as submitter or result holder).
    Result(UnitRef),
}

/// Something that happened to the peer.
#[derive(Clone, Debug)]
pub enum Event {
    /// The peer (re)starts or comes back online: it advertises and, as a submitter,
    /// asks the network for results it missed.
    Online,
    /// A decoded message from an authenticated peer.
    Message {
        /// Sender.
        from: PeerId,
        /// The message.
        msg: Message,
    },
    /// A raw frame; decoded here, dropped and counted if malformed.
    Frame {
        /// Sender.
        from: PeerId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// This peer submits a job.
    Submit(Box<Manifest>),
    /// A unit started with [`Action::StartUnit`] ended.
    UnitFinished {
        /// The unit.
        unit: UnitRef,
        /// Its result hash, or why it could not run.
        result: Result<BlobId, LocalFailure>,
    },
    /// A fetch requested with [`Action::FetchBlob`] ended.
    BlobFetched {
        /// The blob.
        blob: BlobId,
        /// Why it was fetched.
        purpose: FetchPurpose,
        /// Whether it arrived intact.
        ok: bool,
    },
    /// The timer set with [`Action::SetTimer`] fired.
    Timer,
    /// The shell saw a peer leave for good.
    PeerLeft(PeerId),
    /// Our spare cores changed.
    Capacity(u16),
}

/// Something the shell must do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send to one peer.
    Send {
        /// Recipient.
        to: PeerId,
        /// Message.
        msg: Message,
    },
    /// Gossip to everyone.
    Broadcast(Message),
    /// Run a unit; report with [`Event::UnitFinished`].
    StartUnit {
        /// The unit.
        unit: UnitRef,
        /// Its content id.
        unit_id: UnitId,
        /// The job (manifest: module, input, args, limits).
        job: Arc<JobInfo>,
        /// Peers holding the bundle, to fetch the module and input from.
        sources: Vec<PeerId>,
    },
    /// Stop a running unit (it was verified without us); no [`Event::UnitFinished`] needed.
    CancelUnit(UnitRef),
    /// Keep this blob (our own result) and serve it to others.
    StoreBlob(BlobId),
    /// Fetch a blob from one of these peers, then keep it; report with [`Event::BlobFetched`].
    FetchBlob {
        /// The blob.
        blob: BlobId,
        /// Peers to try, in order.
        from: Vec<PeerId>,
        /// Why.
        purpose: FetchPurpose,
    },
    /// Deliver [`Event::Timer`] at this time (replaces any earlier request).
    SetTimer(Millis),
    /// A unit reached quorum here (notification).
    UnitVerified {
        /// The unit.
        unit: UnitRef,
        /// The agreed result.
        result: BlobId,
        /// Who signed it.
        signers: Vec<PeerId>,
    },
    /// A unit failed here (notification), always with a reason.
    UnitFailed {
        /// The unit.
        unit: UnitRef,
        /// Why.
        reason: FailReason,
    },
}

/// Counters, for metrics and the simulator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handled.
    pub messages_in: u64,
    /// Frames that did not decode.
    pub malformed: u64,
    /// Commits with a bad signature.
    pub bad_signature: u64,
    /// Commits from unknown signers.
    pub unknown_signer: u64,
    /// Messages about units that do not exist or do not match the job.
    pub bad_unit: u64,
    /// Messages about jobs we do not know.
    pub unknown_job: u64,
    /// Announcements that did not validate.
    pub bad_announce: u64,
    /// Executors that signed two different results for one unit.
    pub equivocations: u64,
    /// Units, jobs or timers not tracked because a table was full.
    pub table_full: u64,
    /// Units started here.
    pub started: u64,
    /// Units committed here.
    pub committed: u64,
    /// Units seen reach quorum here.
    pub verified: u64,
    /// Units seen fail here.
    pub failed: u64,
    /// Probes sent.
    pub probes: u64,
    /// Units received from steal grants.
    pub stolen: u64,
    /// Ring-region rescans started.
    pub rescans: u64,
    /// Units queued because the scan found us in the top `quorum`.
    pub queued_scan: u64,
    /// Units queued by the placement rule (extra replica, lapsed lease, probe result).
    pub queued_rule: u64,
    /// Units queued from steal grants.
    pub queued_steal: u64,
    /// Units started because the region scan found us in the top `quorum`.
    pub started_scan: u64,
    /// Units started after probing (rescan after a view change, job learned late).
    pub started_probe: u64,
    /// Units started to replace a replica whose lease lapsed or whose holder left.
    pub started_lapse: u64,
    /// Units started as an extra replica because the commits so far disagree.
    pub started_extra: u64,
    /// Units started by the placement rule for any other reason (a replica never claimed).
    pub started_rule: u64,
    /// Units started from steal grants.
    pub started_steal: u64,
    /// Lapsed leases extended because their holder was still in the view.
    pub lease_extensions: u64,
    /// Leases ended early because their holder left the view.
    pub leases_gone: u64,
    /// Commit messages re-sent by the liveness sweep.
    pub commits_resent: u64,
    /// Units this peer had handed back for a transient reason and took part in again.
    pub retried_after_giving_up: u64,
    /// Sync requests sent for our own jobs that had stopped progressing.
    pub resyncs: u64,
    /// Units the liveness sweep drove again (re-evaluated, commit or hand-back re-sent).
    pub swept: u64,
    /// View members taken as gone because they neither advertised nor answered a ping.
    pub silent_dropped: u64,
}

/// Why a unit was queued here (for the waste breakdown in the simulator's report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunCause {
    /// The region scan: we are among the top `quorum` in our view.
    Scan,
    /// A probe after a rescan found the unit still needs us.
    Probe,
    /// A replica's lease lapsed or its holder left.
    Lapse,
    /// The commits so far disagree: an extra replica.
    Extra,
    /// The placement rule, any other reason (a replica was never claimed).
    Rule,
    /// Handed to us by a steal grant.
    Steal,
}

impl RunCause {
    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            RunCause::Scan => "scan",
            RunCause::Probe => "probe",
            RunCause::Lapse => "lapse",
            RunCause::Extra => "extra",
            RunCause::Rule => "rule",
            RunCause::Steal => "steal",
        }
    }
}

type UKey = (u32, u32);

/// Which units of a (re)started scan are probed before they run.
#[derive(Clone, Copy, Debug)]
enum ScanProbe {
    /// None: our view of them is current.
    None,
    /// All (a job learned late: we saw none of its claims).
    All,
    /// Those in the ring arc `(start, end]`.
    Arc(u64, u64),
}

/// Most probe arcs kept per job; more (many departures before a scan ends) probe everything.
const MAX_PROBE_ARCS: usize = 8;

/// Whether ring point `p` lies in the arc `(a, b]` (wrapping; `a == b` is the whole ring).
fn in_arc(p: u64, a: u64, b: u64) -> bool {
    p.wrapping_sub(a).wrapping_sub(1) < b.wrapping_sub(a)
}

/// A stolen unit: its victim (told directly if we cannot run it) and its watchers.
#[derive(Debug)]
struct Stolen {
    victim: PeerId,
    watchers: Vec<PeerId>,
}

/// How many times a steal request is forwarded at most (each hop moves about `view_side`
/// ring positions, or straight to the busiest peer the forwarder knows).
const STEAL_HOPS: u8 = 6;

/// Most doublings of the steal cooldown after requests that brought nothing.
const MAX_STEAL_BACKOFF: u32 = 4;

/// Most peers one commit is sent to (watchers plus the unit's other executors).
const MAX_WATCHERS: usize = 16;

/// Most unit deadlines a queued unit's reservation may cover (see [`Peer::reservation`]).
const MAX_RESERVE_WAITS: Millis = 32;

/// Granularity of lease-check timers.
const TIMER_TICK_MS: Millis = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mine {
    /// Not involved.
    None,
    /// Waiting for probe replies.
    Probing,
    /// In the ready queue.
    Queued,
    /// Started.
    Running,
    /// Committed a result.
    Committed,
    /// Could not run it for now (inputs unavailable, cancelled); handed back. Taken up again
    /// by the liveness sweep if the unit is still pending with nobody holding it.
    Gave,
    /// Will not run it (policy); handed back for good.
    Declined,
}

#[derive(Debug)]
enum Outcome {
    Verified(#[allow(dead_code)] BlobId),
    Failed,
    /// We committed, and two peers told us the unit was resolved without sending the tally
    /// (they keep only its key). Hearsay: it only stops our re-sends; our commit is kept for
    /// sync requests, and the peers that still track the unit place it again if it was a lie.
    Resolved,
}

#[derive(Debug)]
struct UnitState {
    mine: Mine,
    cause: RunCause,
    /// Probe replies saying "resolved, commits not kept".
    done_hints: u8,
    /// Liveness sweeps that found the unit pending with no live lease (re-sends back off).
    swept: u8,
    tally: Tally,
    leases: Leases,
    outcome: Option<Outcome>,
}

impl UnitState {
    fn new() -> Self {
        Self {
            mine: Mine::None,
            cause: RunCause::Rule,
            done_hints: 0,
            swept: 0,
            tally: Tally::default(),
            leases: Leases::default(),
            outcome: None,
        }
    }
}

#[derive(Debug)]
struct JobState {
    info: Arc<JobInfo>,
    d: Arc<Derived>,
    /// Index ranges of `d.by_point` still to scan.
    scan: Vec<(usize, usize)>,
    /// Probe every unit of the scan before running it (a job learned late).
    probe_all: bool,
    /// Probe the units whose points lie in these ring arcs `(start, end]`: arcs our region
    /// gained when neighbours left (we watched none of their units' claims).
    probe_arcs: Vec<(u64, u64)>,
    /// Peers that serve the bundle.
    sources: Vec<PeerId>,
    /// Do not scan before this time (warm-up after learning the job late).
    scan_after: Millis,
    mine: bool,
    verified: u32,
    failed: u32,
    /// For our own job: `verified + failed` at the last liveness sweep, and how many sweeps
    /// in a row found it unchanged.
    settled_at_sweep: u32,
    still_sweeps: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Every half advert interval: expire members, advertise if due, sweep every fourth.
    Tick,
    Unit(u32, u32),
    Probe(u32, u32),
    Scan,
}

/// One peer's protocol state.
pub struct Peer {
    id: PeerId,
    arch: ArchClass,
    cores: u16,
    /// Units started at once per core (see [`Peer::set_run_slots_per_core`]).
    slots_per_core: u32,
    cfg: Config,
    signer: Box<dyn Signer>,
    verifier: Arc<dyn Verifier>,
    rng: Rng,
    view: View,
    advert_seq: u64,
    /// When we last advertised, with the spare cores and whether we had units to spare.
    advertised: (Millis, u16, bool),
    jobs: Vec<JobState>,
    /// Job ids by slot (a short list: a linear search beats hashing 32-byte ids).
    job_ids: Vec<JobId>,
    requested: FxHashSet<JobId>,
    /// Jobs asked for because a claim about them arrived before their announcement.
    asked: FxHashSet<JobId>,
    units: FxHashMap<UKey, UnitState>,
    /// Units resolved here that we did not sign: only the key is kept (bounded by
    /// `max_tracked_units`), so late claims and commits for them are ignored cheaply.
    done: FxHashSet<UKey>,
    online_at: Millis,
    ready: VecDeque<UKey>,
    running: u32,
    timers: BTreeSet<(Millis, TimerKind)>,
    /// The earliest entry of `timers` (kept alongside: `arm` runs on every event).
    first_timer: Option<Millis>,
    wake: Option<Millis>,
    last_steal: Option<Millis>,
    /// Stolen units not resolved yet: who granted each, and the peers that watch it (named
    /// by the victim: we may be far from the unit on the ring, where our view cannot rank it).
    stolen: FxHashMap<UKey, Stolen>,
    /// Steal attempts since the last grant (each doubles the wait before the next).
    steal_misses: u32,
    /// Jobs whose region scan is not finished.
    scanning: u32,
    sweeps: u64,
    dissent: DissentBook,
    stats: Stats,
    out: Vec<Action>,
    scratch: Vec<(f64, PeerId)>,
    /// What `scratch` ranks: (unit point, strict ring, view epoch). One message often ranks
    /// the same unit several times (evaluate, watchers, result holders).
    ranked: Option<(u64, bool, u64)>,
    /// Spare cores per architecture class in the whole network, as the shell counted them
    /// (see [`Peer::set_capacity_census`]); empty if it did not.
    census: Vec<(ArchClass, u32)>,
    /// Silent members we pinged: the peer and its advert expiry then (unchanged at our next
    /// tick means no advert and no answer came).
    pinged: Vec<(PeerId, Millis)>,
    now: Millis,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).field("arch", &self.arch).finish()
    }
}

impl Peer {
    /// A peer with `cores` spare cores, signing with `signer`, checking with `verifier`,
    /// drawing randomness from `seed`.
    pub fn new(
        cfg: Config,
        arch: ArchClass,
        cores: u16,
        signer: Box<dyn Signer>,
        verifier: Arc<dyn Verifier>,
        seed: u64,
    ) -> Self {
        let id = signer.peer_id();
        let view = View::new(id, arch, cores, cfg.view_side.max(cfg.window));
        let dissent = DissentBook::new(cfg.max_dissent_records);
        Self {
            id,
            arch,
            cores,
            slots_per_core: 1,
            cfg,
            signer,
            verifier,
            rng: Rng::new(seed),
            view,
            advert_seq: 0,
            advertised: (0, 0, false),
            jobs: Vec::new(),
            job_ids: Vec::new(),
            requested: FxHashSet::default(),
            asked: FxHashSet::default(),
            units: FxHashMap::default(),
            done: FxHashSet::default(),
            online_at: 0,
            ready: VecDeque::new(),
            running: 0,
            timers: BTreeSet::new(),
            first_timer: None,
            wake: None,
            last_steal: None,
            stolen: FxHashMap::default(),
            steal_misses: 0,
            scanning: 0,
            sweeps: 0,
            dissent,
            stats: Stats::default(),
            out: Vec::new(),
            scratch: Vec::new(),
            ranked: None,
            census: Vec::new(),
            pinged: Vec::new(),
            now: 0,
        }
    }

    /// How many units to start at once per offered core (default 1). A shell whose units
    /// spend time outside the CPU — fetching inputs, waiting for the store's group commit,
    /// messages in flight — raises it so the executor always has the next unit queued; the
    /// executor still runs them on the offered cores. Advertised capacity (placement weight)
    /// stays the number of cores. Takes effect with the next event.
    pub fn set_run_slots_per_core(&mut self, n: u32) {
        self.slots_per_core = n.max(1);
    }

    /// Tells the peer the network's spare cores per architecture class, as the shell counted
    /// them from every advert it hears (a gossip network delivers each to every peer; the
    /// core's own view keeps only a ring neighbourhood). Jobs this peer submits split their
    /// same-arch units across classes in these proportions; without a census the peer uses
    /// its neighbourhood, whose share of each class can be far off in a large network (one
    /// class then runs out of units while the other still has most of its share).
    pub fn set_capacity_census(&mut self, classes: Vec<(ArchClass, u32)>) {
        self.census = classes;
    }

    /// Units this peer runs at once: its cores times the run slots per core.
    fn run_slots(&self) -> u32 {
        u32::from(self.cores) * self.slots_per_core
    }

    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Its architecture class.
    pub fn arch(&self) -> ArchClass {
        self.arch
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The membership view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The dissent record for `peer` running `module`.
    pub fn dissent(&self, peer: &PeerId, module: &BlobId) -> Option<DissentRecord> {
        self.dissent.get(peer, module)
    }

    /// Units tracked right now.
    pub fn tracked_units(&self) -> usize {
        self.units.len()
    }

    /// Units remembered only as resolved (key only).
    pub fn done_units(&self) -> usize {
        self.done.len()
    }

    /// Why this peer queued `unit`, if it is tracking it.
    pub fn run_cause(&self, unit: &UnitRef) -> Option<RunCause> {
        let s = self.slot(&unit.job)?;
        self.units.get(&(s, unit.index)).map(|u| u.cause)
    }

    /// For a job this peer submitted: (units, verified, failed).
    pub fn job_progress(&self, job: &JobId) -> Option<(u32, u32, u32)> {
        let j = &self.jobs[self.slot(job)? as usize];
        Some((j.d.unit_ids.len() as u32, j.verified, j.failed))
    }

    /// A one-line description of what this peer knows about a unit (for debugging).
    pub fn describe_unit(&self, unit: &UnitRef) -> Option<String> {
        let s = self.slot(&unit.job)?;
        let u = self.units.get(&(s, unit.index))?;
        Some(format!(
            "mine={:?} outcome={:?} commits={:?} leases={:?} scan_left={:?}",
            u.mine,
            u.outcome,
            u.tally
                .commits()
                .iter()
                .map(|c| (c.body.executor, c.body.result.short()))
                .collect::<Vec<_>>(),
            u.leases.all(),
            self.jobs[s as usize].scan
        ))
    }

    /// Up to `max` units this peer tracks that have no outcome yet, in key order (for
    /// debugging a stall together with [`Peer::describe_unit`]).
    pub fn pending_units(&self, max: usize) -> Vec<UnitRef> {
        let mut keys: Vec<UKey> =
            self.units.iter().filter(|(_, u)| u.outcome.is_none()).map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.truncate(max);
        keys.into_iter()
            .map(|(s, index)| UnitRef { job: self.jobs[s as usize].info.job_id, index })
            .collect()
    }

    /// Handles one event at time `now` and returns the actions to perform, in order.
    pub fn handle(&mut self, event: Event, now: Millis) -> std::vec::Drain<'_, Action> {
        self.now = now.max(self.now);
        match event {
            Event::Online => self.on_online(),
            Event::Message { from, msg } => self.on_message(from, msg),
            Event::Frame { from, bytes } => match Message::decode(&bytes) {
                Ok(msg) => self.on_message(from, msg),
                Err(_) => self.stats.malformed += 1,
            },
            Event::Submit(m) => self.on_submit(*m),
            Event::UnitFinished { unit, result } => self.on_finished(unit, result),
            Event::BlobFetched { purpose, ok, .. } => {
                if let (FetchPurpose::Bundle(job), true) = (purpose, ok) {
                    self.out.push(Action::Broadcast(Message::HaveBundle(job)));
                }
            }
            Event::Timer => self.on_timer(),
            Event::PeerLeft(p) => {
                let before = self.regions();
                if self.view.remove(&p) {
                    self.rescan_after_leave(before);
                }
                self.holders_gone(&[p]);
            }
            Event::Capacity(c) => {
                self.cores = c;
                self.view.set_my_capacity(c, self.ready.len() as u32);
            }
        }
        self.pump();
        self.arm();
        self.out.drain(..)
    }

    // ---------------------------------------------------------------- timers

    fn add_timer(&mut self, at: Millis, k: TimerKind) {
        if self.timers.len() >= self.cfg.max_timers && k != TimerKind::Tick {
            self.stats.table_full += 1;
            return;
        }
        // A lease check further away than the next liveness sweep is left to the sweep (it
        // re-evaluates units with a lapsed lease): most such leases end in a commit long
        // before, and their timers were most of the wake-ups and of the timer table.
        if matches!(k, TimerKind::Unit(..)) && at > self.now + self.sweep_interval() {
            return;
        }
        // Unit timers (lease checks) are rounded up to a coarse tick, so the many leases that
        // end close together cost one wake-up, not one each.
        let at = match k {
            TimerKind::Unit(..) => at.div_ceil(TIMER_TICK_MS) * TIMER_TICK_MS,
            _ => at,
        };
        self.timers.insert((at, k));
        if self.first_timer.is_none_or(|t| at < t) {
            self.first_timer = Some(at);
        }
    }

    fn arm(&mut self) {
        if let Some(at) = self.first_timer {
            let at = at.max(self.now);
            if self.wake.is_none_or(|w| at < w || w < self.now) {
                self.wake = Some(at);
                self.out.push(Action::SetTimer(at));
            }
        }
    }

    fn on_timer(&mut self) {
        self.wake = None;
        while let Some(&(at, k)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            self.first_timer = self.timers.first().map(|t| t.0);
            match k {
                TimerKind::Tick => {
                    self.check_silent();
                    let before = self.regions();
                    let (near, gone) = self.view.expire_gone(self.now, self.cfg.window);
                    if near {
                        self.rescan_after_leave(before);
                    }
                    self.holders_gone(&gone);
                    self.advertise_if_due();
                    self.sweeps += 1;
                    if self.sweeps.is_multiple_of(4) {
                        self.recheck_lapsed();
                        self.sweep();
                    }
                    self.add_timer(self.now + self.tick_interval(), TimerKind::Tick);
                }
                TimerKind::Unit(s, i) => self.evaluate((s, i)),
                TimerKind::Scan => {}
                TimerKind::Probe(s, i) => {
                    if let Some(u) = self.units.get_mut(&(s, i))
                        && u.mine == Mine::Probing
                    {
                        u.mine = Mine::None;
                        self.evaluate((s, i));
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- membership

    fn on_online(&mut self) {
        self.wake = None;
        self.online_at = self.now;
        self.timers.retain(|(_, k)| *k != TimerKind::Tick);
        self.first_timer = self.timers.first().map(|t| t.0);
        // Peers that start together still tick (and advertise) at different moments.
        let jitter = self.rng.below(self.tick_interval());
        self.advertise();
        self.add_timer(self.now + jitter + 1, TimerKind::Tick);
        for j in &self.jobs {
            if j.mine && j.verified + j.failed < j.d.unit_ids.len() as u32 {
                self.out.push(Action::Broadcast(Message::SyncRequest(j.info.job_id)));
            }
        }
    }

    /// Members we pinged last tick that stayed silent are taken as gone; members silent for
    /// [`Config::silence_probe_ms`] are pinged.
    fn check_silent(&mut self) {
        let now = self.now;
        let ttl = self.cfg.advert_ttl_ms as Millis;
        let mut gone = Vec::new();
        for (p, was) in std::mem::take(&mut self.pinged) {
            if self.view.get(&p).is_some_and(|m| m.expires == was && m.expires > now) {
                gone.push(p);
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            self.stats.silent_dropped += gone.len() as u64;
            let before = self.regions();
            for p in &gone {
                self.view.remove(p);
            }
            self.rescan_after_leave(before);
            self.holders_gone(&gone);
        }
        if self.cfg.silence_probe_ms >= ttl {
            return;
        }
        let silent_before = now.saturating_add(ttl).saturating_sub(self.cfg.silence_probe_ms);
        let mut ping: Vec<(PeerId, Millis)> = self
            .view
            .members()
            .filter(|m| m.expires <= silent_before && m.expires > now)
            .map(|m| (m.peer, m.expires))
            .collect();
        ping.sort_unstable();
        for &(to, _) in &ping {
            self.out.push(Action::Send { to, msg: Message::Ping });
        }
        self.pinged = ping;
    }

    /// The period of [`TimerKind::Tick`]: half the advert interval.
    fn tick_interval(&self) -> Millis {
        (self.cfg.advert_interval_ms / 2).max(1)
    }

    /// The period of the liveness sweep: every fourth tick.
    fn sweep_interval(&self) -> Millis {
        4 * self.tick_interval()
    }

    /// Advertises when the last advert is a quarter of its TTL old (the heartbeat), or, at
    /// most once an advert interval, when what it says changed: spare cores, or whether we
    /// have units to spare for thieves.
    fn advertise_if_due(&mut self) {
        let (at, cores, spare) = self.advertised;
        let heartbeat = (self.cfg.advert_ttl_ms as Millis / 4).max(1);
        let due = self.now + self.tick_interval() / 2 >= at + heartbeat;
        let changed = cores != self.cores || spare != self.has_spare_units();
        if due || (changed && self.now >= at + self.cfg.advert_interval_ms) {
            self.advertise();
        }
    }

    /// Units with a lapsed lease that no timer watches (their lease check was further away
    /// than a sweep, see [`Peer::add_timer`]) while another lease is still live: the sweep
    /// only drives units that nobody holds, so these are re-evaluated here.
    fn recheck_lapsed(&mut self) {
        let now = self.now;
        let mut lapsed: Vec<UKey> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.outcome.is_none()
                    && u.mine == Mine::None
                    && u.leases.any_lapsed(now)
                    && u.leases.next_expiry(now).is_some()
            })
            .map(|(k, _)| *k)
            .collect();
        lapsed.sort_unstable();
        for key in lapsed {
            self.evaluate(key);
        }
    }

    /// Whether a thief may get something from us (what adverts tell it: queue length), with
    /// hysteresis so a queue hovering around the threshold does not make us re-advertise.
    fn has_spare_units(&self) -> bool {
        self.scanning > 0 || self.ready.len() >= if self.advertised.2 { 2 } else { 4 }
    }

    /// About how many units our unfinished region scans still hold for us (a thief may be
    /// handed them): the units left in the scans times our share of a window's runs.
    fn scan_backlog(&self) -> usize {
        let left: usize = (self.jobs.iter())
            .map(|j| {
                let n: usize = j.scan.iter().map(|r| r.1.saturating_sub(r.0)).sum();
                n * j.info.manifest.replication.quorum as usize
            })
            .sum();
        left / self.cfg.window.max(1)
    }

    fn advertise(&mut self) {
        self.advert_seq += 1;
        self.advertised = (self.now, self.cores, self.has_spare_units());
        let ad = self.my_advert();
        self.view.set_my_capacity(self.cores, self.ready.len() as u32);
        self.out.push(Action::Broadcast(Message::Advert(ad)));
    }

    /// Our advert at the current sequence number (a repeat is ignored by those who have it).
    fn my_advert(&self) -> Advert {
        Advert {
            peer: self.id,
            arch: self.arch,
            spare_cores: self.cores,
            queue_len: (self.ready.len() + self.scan_backlog()) as u32,
            seq: self.advert_seq,
            ttl_ms: self.cfg.advert_ttl_ms,
            jobs: self.job_ids.iter().rev().take(MAX_ADVERT_JOBS).copied().collect(),
        }
    }

    /// Peers in `gone` left (graceful leave, or their adverts expired): their live leases end
    /// now and the units they held are re-placed at once instead of waiting for a lapse.
    fn holders_gone(&mut self, gone: &[PeerId]) {
        if gone.is_empty() {
            return;
        }
        let now = self.now;
        let mut hit = Vec::new();
        for (k, u) in self.units.iter_mut() {
            if u.outcome.is_some() || u.leases.is_empty() {
                continue;
            }
            let mut any = false;
            for p in gone {
                any |= !u.tally.has(p) && u.leases.holder_gone(p, now);
            }
            if any {
                hit.push(*k);
            }
        }
        hit.sort_unstable();
        self.stats.leases_gone += hit.len() as u64;
        for k in hit {
            self.evaluate(k);
        }
    }

    /// Liveness backstop (every fourth expiry tick): a pending unit that nobody holds a live
    /// lease on is driven again — re-evaluated; if we already committed to it, our commit is
    /// re-sent to its current ranking so the peers now responsible take it up; if we handed it
    /// back, the hand-back is repeated (it may have been lost). Re-sends back off
    /// exponentially per unit (sweeps 1, 2, 4, 8, ...): a unit that stays pending here is
    /// usually one whose verdict never reached us, and re-sending every sweep was most of the
    /// simulator's commit traffic.
    fn sweep(&mut self) {
        self.resync_stalled_jobs();
        let now = self.now;
        let mut stuck: Vec<UKey> = self
            .units
            .iter()
            .filter(|(_, u)| {
                u.outcome.is_none()
                    && matches!(u.mine, Mine::None | Mine::Committed | Mine::Gave | Mine::Declined)
                    && u.leases.next_expiry(now).is_none()
            })
            .map(|(k, _)| *k)
            .collect();
        stuck.sort_unstable();
        self.stats.swept += stuck.len() as u64;
        for key in stuck {
            let Some(u) = self.units.get(&key) else { continue };
            if u.mine == Mine::None {
                self.evaluate(key);
                continue;
            }
            let Some(u) = self.units.get_mut(&key) else { continue };
            u.swept = u.swept.saturating_add(1);
            if !u.swept.is_power_of_two() {
                continue;
            }
            let u = &self.units[&key];
            if u.mine == Mine::Gave {
                // What stopped us was transient (inputs unreachable at the time, a shrinking
                // pool), and nobody holds the unit now: take part again. If we rank among the
                // peers still needed, we queue it and claim it; if the cause persists we hand
                // it back again, and the sweep backoff spaces the attempts.
                self.stats.retried_after_giving_up += 1;
                let me = self.id;
                let u = self.units.get_mut(&key).expect("tracked");
                u.mine = Mine::None;
                u.leases.release(&me);
                self.evaluate(key);
                continue;
            }
            if u.mine == Mine::Declined {
                let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
                for to in self.watchers(key) {
                    self.out.push(Action::Send { to, msg: Message::Claim { unit, until: 0 } });
                }
                continue;
            }
            let Some(c) = u.tally.commits().iter().find(|c| c.body.executor == self.id).copied()
            else {
                continue;
            };
            for to in self.watchers(key) {
                self.stats.commits_resent += 1;
                self.out.push(Action::Send { to, msg: Message::Commit(c) });
            }
        }
    }

    /// Our own job made no progress for two sweeps in a row: commits meant for us may have
    /// been lost (a dropped message, a send queue that overflowed), and executors that saw
    /// their units verified among themselves never send them again — we may not even track
    /// those units. Ask every executor for the commits it holds for the job (as a restarted
    /// submitter does), again after 4, 8, 16, ... still sweeps.
    fn resync_stalled_jobs(&mut self) {
        for j in &mut self.jobs {
            let settled = j.verified + j.failed;
            if !j.mine || settled >= j.d.unit_ids.len() as u32 {
                continue;
            }
            if settled != j.settled_at_sweep {
                j.settled_at_sweep = settled;
                j.still_sweeps = 0;
                continue;
            }
            j.still_sweeps = j.still_sweeps.saturating_add(1);
            if j.still_sweeps >= 2 && j.still_sweeps.is_power_of_two() {
                self.stats.resyncs += 1;
                self.out.push(Action::Broadcast(Message::SyncRequest(j.info.job_id)));
            }
        }
    }

    /// Our ring regions (own class, all classes; see [`region`]), to compare across a change.
    fn regions(&self) -> [Option<(u64, u64)>; 2] {
        let w = self.cfg.window;
        [self.view.region(false, w), self.view.region(true, w)]
    }

    /// Neighbours within a window of us left: every unit whose window held them has its
    /// ranking moved up by one, so units we skipped may now be ours, and our region grew by
    /// the arc between its old and new start. The region is rescanned; only units in the
    /// gained arc are probed first. A unit we already ranked at most third for was one whose
    /// claims and commits reached us as a watcher, so what we know of it is current; units
    /// newly in our region were not, and may have run long ago.
    fn rescan_after_leave(&mut self, before: [Option<(u64, u64)>; 2]) {
        let after = self.regions();
        for s in 0..self.jobs.len() {
            let i = usize::from(self.jobs[s].info.strict());
            let probe = match (before[i], after[i]) {
                (Some((old, _)), Some((new, _))) if old != new => ScanProbe::Arc(new, old),
                (Some(_), None) => ScanProbe::All,
                _ => ScanProbe::None,
            };
            self.start_scan(s as u32, probe);
        }
    }

    fn start_scan(&mut self, slot: u32, probe: ScanProbe) {
        let j = &mut self.jobs[slot as usize];
        let n = j.d.by_point.len();
        if j.scan.is_empty() {
            self.scanning += 1;
        }
        j.scan.clear();
        match self.view.region(j.info.strict(), self.cfg.window) {
            None => j.scan.push((0, n)),
            Some((a, b)) => {
                let lo = j.d.by_point.partition_point(|&(p, _)| p <= a);
                let hi = j.d.by_point.partition_point(|&(p, _)| p <= b);
                if a < b {
                    j.scan.push((lo, hi));
                } else {
                    j.scan.push((lo, n));
                    j.scan.push((0, hi));
                }
            }
        }
        match probe {
            ScanProbe::None => {}
            ScanProbe::All => j.probe_all = true,
            ScanProbe::Arc(a, b) if j.probe_arcs.len() < MAX_PROBE_ARCS => {
                j.probe_arcs.push((a, b))
            }
            ScanProbe::Arc(..) => j.probe_all = true,
        }
        self.stats.rescans += 1;
    }

    // ---------------------------------------------------------------- messages

    fn on_message(&mut self, from: PeerId, msg: Message) {
        self.stats.messages_in += 1;
        match msg {
            Message::Advert(ad) => {
                if ad.peer != from {
                    self.stats.malformed += 1;
                    return;
                }
                if self.view.apply(&ad, self.now) == AdvertEffect::Joined {
                    // Tell the newcomer about us right away (at our current sequence number,
                    // so peers that already know us ignore it and the exchange stops): a
                    // joining peer's view fills in one round trip, not one advert interval.
                    if self.advert_seq > 0 {
                        let mine = self.my_advert();
                        self.out.push(Action::Send { to: from, msg: Message::Advert(mine) });
                    }
                    // A newcomer only pushes us down the rankings (and out of some windows):
                    // no unit we skipped becomes ours, so there is nothing to rescan.
                }
                for job in ad.jobs.iter().take(MAX_ADVERT_JOBS) {
                    if self.slot(job).is_none()
                        && self.requested.len() < self.cfg.max_jobs * 4
                        && self.requested.insert(*job)
                    {
                        self.out.push(Action::Send { to: from, msg: Message::GetJob(*job) });
                    }
                }
            }
            Message::Announce(info) => self.on_announce(info),
            Message::GetJob(job) => {
                if let Some(s) = self.slot(&job) {
                    let info = self.jobs[s as usize].info.clone();
                    self.out.push(Action::Send { to: from, msg: Message::Announce(info) });
                    // The asker may have dropped our hand-backs because they arrived before
                    // it knew the job: repeat them, after the announcement.
                    let mut gave: Vec<u32> = self
                        .units
                        .iter()
                        .filter(|(k, u)| {
                            k.0 == s
                                && matches!(u.mine, Mine::Gave | Mine::Declined)
                                && u.outcome.is_none()
                        })
                        .map(|(k, _)| k.1)
                        .collect();
                    gave.sort_unstable();
                    for index in gave {
                        let unit = UnitRef { job, index };
                        self.out.push(Action::Send {
                            to: from,
                            msg: Message::Claim { unit, until: 0 },
                        });
                    }
                }
            }
            Message::HaveBundle(job) => {
                if let Some(s) = self.slot(&job) {
                    let j = &mut self.jobs[s as usize];
                    if !j.sources.contains(&from) && j.sources.len() < 8 {
                        j.sources.push(from);
                    }
                }
            }
            Message::Claim { unit, until } => {
                self.ask_if_unknown(from, unit.job);
                let Some(key) = self.resolve(&unit, true) else { return };
                let lease_max = self.reserve_max(key.0);
                let u = self.units.get_mut(&key).expect("resolved");
                // A claim for a unit we committed to: the claimant runs it too and needs our
                // commit for its verdict, but we sent it only to the peers we knew of then (a
                // thief, or a replica that queued it later, was not among them). Without this
                // it would never hear the verdict and keep re-sending its own commit.
                if until > self.now && u.mine == Mine::Committed && !u.tally.has(&from) {
                    let me = self.id;
                    if let Some(c) = u.tally.commits().iter().find(|c| c.body.executor == me) {
                        self.out.push(Action::Send { to: from, msg: Message::Commit(*c) });
                    }
                    if u.outcome.is_some() {
                        return;
                    }
                }
                if until <= self.now {
                    u.leases.give_up(&from, self.now);
                } else {
                    // A claimant outside our view (a thief far along the ring) cannot be
                    // watched through its adverts: if it crashed, nothing would end a long
                    // reservation. Its lease is kept short; when it lapses we ask it, and a
                    // live holder renews it in its reply.
                    let lease_max = if self.view.get(&from).is_some() {
                        lease_max
                    } else {
                        lease_max.min(2 * self.lease_len(key.0))
                    };
                    let until = until.min(self.now + lease_max);
                    let u = self.units.get_mut(&key).expect("resolved");
                    u.leases.claim_from_holder(from, until, self.now);
                    self.add_timer(until, TimerKind::Unit(key.0, key.1));
                }
                self.evaluate(key);
            }
            Message::Release { unit, until } => {
                self.ask_if_unknown(from, unit.job);
                let Some(key) = self.resolve(&unit, true) else { return };
                let until = until.min(self.now + self.cfg.claim_grace_ms);
                let u = self.units.get_mut(&key).expect("resolved");
                u.leases.hand_over(from, until);
                self.add_timer(until, TimerKind::Unit(key.0, key.1));
                self.evaluate(key);
            }
            Message::Commit(c) => {
                if c.body.executor == from {
                    self.answer_late_commit(from, &c);
                }
                self.on_commit(c)
            }
            Message::Probe(unit) => {
                let Some(key) = self.resolve(&unit, false) else { return };
                self.renew_own_lease(key);
                let (commits, leases) = match self.units.get(&key) {
                    Some(u) => (
                        u.tally.commits().iter().take(MAX_BATCH).copied().collect(),
                        u.leases.live(self.now).copied().collect(),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                let done = self.done.contains(&key);
                self.out.push(Action::Send {
                    to: from,
                    msg: Message::ProbeReply { unit, commits, leases, done },
                });
            }
            Message::ProbeReply { unit, commits, leases, done } => {
                let Some(key) = self.resolve(&unit, false) else { return };
                // The submitter needs the commits themselves: "resolved" from others never
                // settles a unit of its own job.
                let own_job = self.jobs[key.0 as usize].mine;
                let Some(u) = self.units.get_mut(&key) else { return };
                if done
                    && !own_job
                    && matches!(u.mine, Mine::Probing | Mine::None)
                    && u.outcome.is_none()
                {
                    u.done_hints = u.done_hints.saturating_add(1);
                    if u.done_hints >= 2 {
                        self.units.remove(&key);
                        if self.done.len() < self.cfg.max_tracked_units {
                            self.done.insert(key);
                        }
                        return;
                    }
                }
                if done && u.mine == Mine::Committed && u.outcome.is_none() {
                    u.done_hints = u.done_hints.saturating_add(1);
                    if u.done_hints >= 2 {
                        u.outcome = Some(Outcome::Resolved);
                        self.retire(key);
                        return;
                    }
                }
                let lease_max = self.reserve_max(key.0);
                for Lease { holder, until } in leases.into_iter().take(MAX_BATCH) {
                    if until > self.now
                        && let Some(u) = self.units.get_mut(&key)
                        && !u.tally.has(&holder)
                    {
                        let until = until.min(self.now + lease_max);
                        u.leases.claim_hearsay(holder, until);
                        self.add_timer(until, TimerKind::Unit(key.0, key.1));
                    }
                }
                for c in commits.into_iter().take(MAX_BATCH) {
                    if c.body.unit == unit {
                        self.on_commit(c);
                    }
                }
            }
            Message::StealRequest { max, thief, arch, hops } => {
                self.on_steal_request(from, thief, arch, max, hops)
            }
            Message::StealGrant(grants) => {
                if !grants.is_empty() {
                    self.steal_misses = 0;
                }
                for Grant { unit, watchers, leases } in grants.into_iter().take(MAX_BATCH) {
                    let done =
                        self.slot(&unit.job).is_some_and(|s| self.done.contains(&(s, unit.index)));
                    let key = if done { None } else { self.resolve(&unit, true) };
                    let Some(key) = key else {
                        if done {
                            self.out.push(Action::Send {
                                to: from,
                                msg: Message::Claim { unit, until: 0 },
                            });
                        }
                        continue;
                    };
                    let lease_max = self.reserve_max(key.0);
                    let u = self.units.get_mut(&key).expect("resolved");
                    if u.mine == Mine::None && u.outcome.is_none() && !u.tally.has(&self.id) {
                        let me = self.id;
                        let mut watchers: Vec<PeerId> =
                            watchers.into_iter().filter(|p| *p != me).take(MAX_WATCHERS).collect();
                        if !watchers.contains(&from) {
                            watchers.insert(0, from);
                        }
                        for l in leases.into_iter().take(MAX_WATCHERS) {
                            if l.holder != me && l.until > self.now {
                                u.leases.claim_hearsay(l.holder, l.until.min(self.now + lease_max));
                            }
                        }
                        self.stolen.insert(key, Stolen { victim: from, watchers });
                        self.enqueue(key, RunCause::Steal);
                        self.stats.stolen += 1;
                        self.stats.queued_steal += 1;
                    } else {
                        // Already ours or done: hand it straight back. If we hold it, the
                        // victim gets our own lease (a give-up would be final there);
                        // otherwise the lease the victim recorded for us is released.
                        let until = match u.mine {
                            Mine::Queued | Mine::Running => u
                                .leases
                                .live(self.now)
                                .filter(|l| l.holder == self.id)
                                .map(|l| l.until)
                                .max()
                                .unwrap_or(0),
                            _ => 0,
                        };
                        self.out
                            .push(Action::Send { to: from, msg: Message::Claim { unit, until } });
                    }
                }
            }
            Message::Ping => self.out.push(Action::Send { to: from, msg: Message::Pong }),
            Message::Pong => {
                let until = self.now + self.cfg.advert_ttl_ms as Millis;
                self.view.touch(&from, until);
            }
            Message::SyncRequest(job) => {
                let Some(s) = self.slot(&job) else { return };
                if self.jobs[s as usize].info.submitter != from {
                    return;
                }
                let mut batch = Vec::new();
                for (&(js, _), u) in &self.units {
                    if js != s {
                        continue;
                    }
                    // Executors answer for the units they ran: every commit they hold
                    // (verified or not), so commits lost while the submitter was away return.
                    if u.tally.has(&self.id) && !matches!(u.outcome, Some(Outcome::Failed)) {
                        batch.extend(u.tally.commits().iter().take(8).copied());
                    }
                    if batch.len() >= MAX_BATCH - 8 {
                        self.out.push(Action::Send {
                            to: from,
                            msg: Message::SyncReply(std::mem::take(&mut batch)),
                        });
                    }
                }
                if !batch.is_empty() {
                    self.out.push(Action::Send { to: from, msg: Message::SyncReply(batch) });
                }
            }
            Message::SyncReply(commits) => {
                for c in commits.into_iter().take(MAX_BATCH) {
                    self.on_commit(c);
                }
            }
        }
    }

    /// A commit straight from its executor for a unit already resolved here: the executor
    /// ran it late (a lapse, a steal, a replica added after a mismatch) and nobody it sent its
    /// commit to tells it the verdict, so it would keep re-sending. Answer with the tally if we
    /// kept it (the executor checks the verdict itself), else say "resolved" (hearsay: it takes
    /// two such answers to stop the executor's re-sends).
    fn answer_late_commit(&mut self, from: PeerId, c: &SignedCommit) {
        let Some(s) = self.slot(&c.body.unit.job) else { return };
        let key = (s, c.body.unit.index);
        let unit = c.body.unit;
        let commits = match self.units.get(&key) {
            Some(u) if u.outcome.is_some() && !u.tally.commits().is_empty() => {
                if u.tally.commits().iter().all(|o| o.body.executor == from) {
                    return;
                }
                u.tally.commits().iter().take(MAX_BATCH).copied().collect()
            }
            Some(_) => return,
            None if self.done.contains(&key) => Vec::new(),
            None => return,
        };
        let done = commits.is_empty();
        self.out.push(Action::Send {
            to: from,
            msg: Message::ProbeReply { unit, commits, leases: Vec::new(), done },
        });
    }

    /// Someone asks about a unit we have queued or running (a watcher saw our lease lapse):
    /// our lease is renewed to cover what is left, so the probe reply carries it and the
    /// watcher does not hand our unit to another peer. A heartbeat on demand.
    fn renew_own_lease(&mut self, key: UKey) {
        let lease_len = self.lease_len(key.0);
        let reservation = self.reservation(key.0);
        let Some(u) = self.units.get_mut(&key) else { return };
        let until = match u.mine {
            Mine::Running => self.now + lease_len,
            Mine::Queued => self.now + reservation,
            _ => return,
        };
        u.leases.claim(self.id, until);
    }

    /// A claim arrived for a job we do not know (its announcement is still on its way, or was
    /// lost): ask the claimant for it, once. Its reply repeats the hand-backs we are dropping
    /// now, so a unit given up before we knew its job is not stranded.
    fn ask_if_unknown(&mut self, from: PeerId, job: JobId) {
        if self.slot(&job).is_none()
            && !self.requested.contains(&job)
            && self.asked.len() < self.cfg.max_jobs * 4
            && self.asked.insert(job)
        {
            self.out.push(Action::Send { to: from, msg: Message::GetJob(job) });
        }
    }

    fn lease_len(&self, slot: u32) -> Millis {
        self.jobs[slot as usize].info.manifest.limits.deadline_ms + self.cfg.lease_slack_ms
    }

    /// How long a unit queued now is reserved for: the wait behind what is already queued (at
    /// most one deadline per queued unit per core) plus our own run. Units queued by the
    /// placement rule are not bounded by the scan's `queue_per_core`, so a busy peer's queue
    /// can be long; a reservation shorter than the real wait makes every watcher see a lapse
    /// and probe us.
    fn reservation(&self, slot: u32) -> Millis {
        let waits = 2 + (self.ready.len() / self.cores.max(1) as usize) as Millis;
        waits.min(MAX_RESERVE_WAITS) * self.lease_len(slot)
    }

    /// The longest reservation a claim may carry (see [`Peer::reservation`]). Watchers cap
    /// received claims at this.
    fn reserve_max(&self, slot: u32) -> Millis {
        self.lease_len(slot) * MAX_RESERVE_WAITS
    }

    /// A job's slot, if we know the job.
    fn slot(&self, job: &JobId) -> Option<u32> {
        self.job_ids.iter().position(|j| j == job).map(|s| s as u32)
    }

    /// Maps a unit reference to our key, checking the job and index; creates the unit's entry
    /// if `create` (and the table has room).
    fn resolve(&mut self, unit: &UnitRef, create: bool) -> Option<UKey> {
        let Some(s) = self.slot(&unit.job) else {
            self.stats.unknown_job += 1;
            return None;
        };
        if unit.index as usize >= self.jobs[s as usize].d.unit_ids.len() {
            self.stats.bad_unit += 1;
            return None;
        }
        let key = (s, unit.index);
        if create && !self.units.contains_key(&key) {
            if self.done.contains(&key) {
                return None;
            }
            if self.units.len() >= self.cfg.max_tracked_units {
                self.stats.table_full += 1;
                return None;
            }
            self.units.insert(key, UnitState::new());
        }
        Some(key)
    }

    fn on_announce(&mut self, info: Arc<JobInfo>) {
        if self.slot(&info.job_id).is_some() {
            return;
        }
        let Some(d) = info.derived().cloned() else {
            self.stats.bad_announce += 1;
            return;
        };
        if self.jobs.len() >= self.cfg.max_jobs {
            self.stats.table_full += 1;
            return;
        }
        let late = self.requested.contains(&info.job_id);
        let slot = self.jobs.len() as u32;
        let mut sources = vec![info.submitter];
        let hold = info.holders.contains(&self.id) && info.submitter != self.id;
        self.jobs.push(JobState {
            mine: info.submitter == self.id,
            info: info.clone(),
            d,
            scan: Vec::new(),
            probe_all: late,
            probe_arcs: Vec::new(),
            scan_after: if late { self.online_at + self.cfg.warmup_ms } else { 0 },
            sources: {
                sources.retain(|p| *p != self.id);
                sources
            },
            verified: 0,
            failed: 0,
            settled_at_sweep: 0,
            still_sweeps: 0,
        });
        self.job_ids.push(info.job_id);
        if late && self.now < self.online_at + self.cfg.warmup_ms {
            self.add_timer(self.online_at + self.cfg.warmup_ms, TimerKind::Scan);
        }
        if hold {
            self.out.push(Action::FetchBlob {
                blob: info.manifest.module,
                from: vec![info.submitter],
                purpose: FetchPurpose::Bundle(info.job_id),
            });
        }
        self.start_scan(slot, if late { ScanProbe::All } else { ScanProbe::None });
    }

    fn on_submit(&mut self, m: Manifest) {
        if m.validate().is_err() {
            self.stats.bad_announce += 1;
            return;
        }
        // Same-arch units are split across classes in proportion to these weights, so they
        // should be the network's capacity per class: the shell's census if it gave one (our
        // ring neighbourhood is a few dozen peers, far too few to estimate a class's share).
        let mut classes: Vec<(ArchClass, u32)> = self.census.clone();
        if classes.iter().all(|(_, w)| *w == 0) {
            classes.clear();
            for mem in self.view.ring(true).iter() {
                match classes.iter_mut().find(|(c, _)| *c == mem.arch) {
                    Some((_, w)) => *w += mem.weight as u32,
                    None => classes.push((mem.arch, mem.weight as u32)),
                }
            }
        }
        classes.sort();
        classes.truncate(crate::message::MAX_ANNOUNCE_LIST);
        let job_key = unit_point(&UnitId(m.job_id().0));
        rank(self.view.ring(true), job_key, usize::MAX, &mut self.scratch);
        self.ranked = None;
        let mut holders = vec![self.id];
        holders.extend(
            self.scratch
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| *p != self.id)
                .take(self.cfg.bundle_copies),
        );
        let info = Arc::new(JobInfo::new(m, self.id, self.now, classes, holders));
        self.out.push(Action::Broadcast(Message::Announce(info.clone())));
        self.on_announce(info);
    }

    // ---------------------------------------------------------------- commits and verdicts

    fn on_commit(&mut self, c: SignedCommit) {
        // The very same signed commit again (a re-send, or one relayed in a probe or sync
        // reply): it was verified when it arrived first, so skip the signature check (an
        // ed25519 verification in production).
        if let Some(s) = self.slot(&c.body.unit.job)
            && let Some(u) = self.units.get(&(s, c.body.unit.index))
            && u.tally.commits().contains(&c)
        {
            return;
        }
        match commit::verify(&*self.verifier, &c) {
            Ok(()) => {}
            Err(CommitError::BadSignature) => {
                self.stats.bad_signature += 1;
                return;
            }
            Err(CommitError::UnknownSigner) => {
                self.stats.unknown_signer += 1;
                return;
            }
        }
        let Some(key) = self.resolve(&c.body.unit, false) else { return };
        let j = &self.jobs[key.0 as usize];
        if j.d.unit_ids[key.1 as usize] != c.body.unit_id {
            self.stats.bad_unit += 1;
            return;
        }
        if !j.info.strict()
            && let Some(m) = self.view.get(&c.body.executor)
            && m.arch != c.body.arch
        {
            self.stats.bad_unit += 1;
            return;
        }
        let Some(key) = self.resolve(&c.body.unit, true) else { return };
        let u = self.units.get_mut(&key).expect("resolved");
        match u.tally.add(c) {
            Added::Duplicate => return,
            Added::Equivocation => {
                self.stats.equivocations += 1;
                return;
            }
            Added::New => {}
        }
        u.leases.release(&c.body.executor);
        if u.outcome.is_some() {
            return;
        }
        self.check_verdict(key);
    }

    fn check_verdict(&mut self, key: UKey) {
        let j = &self.jobs[key.0 as usize];
        let rep = j.info.manifest.replication;
        let same_arch = !j.info.strict();
        let module = j.info.manifest.module;
        let unit = UnitRef { job: j.info.job_id, index: key.1 };
        let u = self.units.get_mut(&key).expect("tracked");
        match u.tally.verdict(rep.quorum, rep.max_replicas, same_arch) {
            Verdict::Pending { .. } => self.evaluate(key),
            Verdict::Verified { result, arch } => {
                u.outcome = Some(Outcome::Verified(result));
                let signers: Vec<PeerId> = u
                    .tally
                    .commits()
                    .iter()
                    .filter(|c| {
                        c.body.result == result && (!same_arch || Some(c.body.arch) == arch)
                    })
                    .map(|c| c.body.executor)
                    .collect();
                for c in u.tally.commits() {
                    let agreed =
                        c.body.result == result && (!same_arch || Some(c.body.arch) == arch);
                    self.dissent.record(c.body.executor, module, agreed);
                }
                let was = u.mine;
                let me_signed = signers.contains(&self.id);
                self.stats.verified += 1;
                if was == Mine::Running {
                    self.out.push(Action::CancelUnit(unit));
                    self.running = self.running.saturating_sub(1);
                    u.mine = Mine::Gave;
                }
                let j = &mut self.jobs[key.0 as usize];
                let keep = j.mine || self.is_result_holder(key, &signers);
                let j = &mut self.jobs[key.0 as usize];
                if j.mine {
                    j.verified += 1;
                }
                if keep && !me_signed {
                    self.out.push(Action::FetchBlob {
                        blob: result,
                        from: signers.clone(),
                        purpose: FetchPurpose::Result(unit),
                    });
                }
                self.out.push(Action::UnitVerified { unit, result, signers });
                self.retire(key);
            }
            Verdict::Failed(reason) => {
                u.outcome = Some(Outcome::Failed);
                if u.mine == Mine::Running {
                    self.out.push(Action::CancelUnit(unit));
                    self.running = self.running.saturating_sub(1);
                    u.mine = Mine::Gave;
                }
                self.stats.failed += 1;
                let j = &mut self.jobs[key.0 as usize];
                if j.mine {
                    j.failed += 1;
                }
                self.out.push(Action::UnitFailed { unit, reason });
                self.retire(key);
            }
        }
    }

    /// A resolved unit: executors keep their tally (to answer probes and sync requests), with
    /// the leases dropped; everyone else keeps only the key.
    fn retire(&mut self, key: UKey) {
        self.stolen.remove(&key);
        let Some(u) = self.units.get_mut(&key) else { return };
        match u.mine {
            Mine::Committed => u.leases = Leases::default(),
            Mine::Running => {}
            _ => {
                self.units.remove(&key);
                if self.done.len() < self.cfg.max_tracked_units {
                    self.done.insert(key);
                } else {
                    self.stats.table_full += 1;
                }
            }
        }
    }

    /// Whether we are one of the `result_copies` best-ranked non-signers for the unit.
    fn is_result_holder(&mut self, key: UKey, signers: &[PeerId]) -> bool {
        let j = &self.jobs[key.0 as usize];
        let r = j.info.manifest.replication.result_copies as usize;
        let point = unit_point(&j.d.unit_ids[key.1 as usize]);
        let strict = j.info.strict();
        self.rank_unit(point, strict);
        self.scratch
            .iter()
            .filter(|(_, p)| !signers.contains(p))
            .take(r)
            .any(|(_, p)| *p == self.id)
    }

    /// The one placement rule: should we run this unit now?
    fn evaluate(&mut self, key: UKey) {
        let Some(u) = self.units.get(&key) else { return };
        if u.outcome.is_some() || u.mine != Mine::None {
            return;
        }
        let j = &self.jobs[key.0 as usize];
        let rep = j.info.manifest.replication;
        let same_arch = !j.info.strict();
        if same_arch && j.d.class_of[key.1 as usize] != self.arch {
            return;
        }
        let need = match u.tally.verdict(rep.quorum, rep.max_replicas, same_arch) {
            Verdict::Pending { need } => need as usize,
            _ => return,
        };
        let point = unit_point(&j.d.unit_ids[key.1 as usize]);
        let strict = j.info.strict();
        let now = self.now;
        let lease_len = self.lease_len(key.0);
        // A lapsed lease whose holder has not left our view is most likely a slow or busy
        // peer, not a lost one: extend it (a bounded number of times) rather than run the
        // unit a second time.
        let me = self.id;
        let u = self.units.get_mut(&key).expect("tracked");
        if u.leases.any_lapsed(now) {
            // Not a blind extension: a short grace while we ask the holder. If it still has
            // the unit (slow, or queued behind others) it answers with a fresh lease; if it
            // finished, with its commit; silence after the last grace means take-over.
            let tally = &u.tally;
            let grace = 2 * self.cfg.probe_wait_ms.max(1);
            let unit = UnitRef { job: j.info.job_id, index: key.1 };
            let out = &mut self.out;
            let ext = u.leases.extend_lapsed(
                now,
                grace.min(lease_len),
                |p| *p != me && !tally.has(p),
                |p| out.push(Action::Send { to: *p, msg: Message::Probe(unit) }),
            );
            if let Some(t) = ext {
                self.stats.lease_extensions += 1;
                self.add_timer(t, TimerKind::Unit(key.0, key.1));
            }
        }
        let u = &self.units[&key];
        // Our own lease never counts as a live replica here: `mine` is None, so we are not
        // running the unit. It is an implicit lease others gave us, or the short reservation
        // we kept after handing the unit to a thief — and if that thief hands it back (an
        // allow-list declined it), waiting for it to lapse would stall the unit.
        let live = u.leases.live(now).filter(|l| l.holder != me && !u.tally.has(&l.holder)).count();
        let used = u.tally.commits().len() + live;
        let room = (rep.max_replicas as usize).saturating_sub(used);
        let shortfall = need.saturating_sub(live).min(room);
        if let Some(t) = u.leases.next_expiry(now) {
            self.add_timer(t, TimerKind::Unit(key.0, key.1));
        }
        if shortfall == 0 {
            return;
        }
        // Our view is a ring neighbourhood: it ranks correctly only units whose window holds
        // us. For any other unit we only observe.
        if let Some((a, b)) = self.view.region(strict, self.cfg.window)
            && point.wrapping_sub(a).wrapping_sub(1) >= b.wrapping_sub(a)
        {
            return;
        }
        self.rank_unit(point, strict);
        let u = self.units.get_mut(&key).expect("tracked");
        // We handed the unit to a thief to shed load: while another replica holds it and the
        // thief has not handed it back, the next peer in line runs it, not us again.
        let step_aside = u.leases.handed(&self.id) && live > 0 && !u.leases.any_gave_up();
        let mut idx = 0;
        let mut run = false;
        let mut expected = [PeerId([0; 32]); 4];
        let mut n_expected = 0;
        for (_, p) in &self.scratch {
            // Our own lease here is hearsay (an implicit lease others gave us): we are not
            // running the unit (`mine` is None), so it never rules us out.
            if u.tally.has(p)
                || (*p != self.id && (u.leases.is_live(p, now) || u.leases.lapsed(p, now)))
            {
                continue;
            }
            if *p == self.id {
                if step_aside {
                    continue;
                }
                run = idx < shortfall;
                break;
            }
            if n_expected < expected.len() {
                expected[n_expected] = *p;
                n_expected += 1;
            }
            idx += 1;
            if idx >= shortfall {
                break;
            }
        }
        if run {
            let cause = if u.cause == RunCause::Probe {
                RunCause::Probe
            } else if u
                .tally
                .leader(same_arch)
                .is_some_and(|(_, n)| (n as usize) < u.tally.commits().len())
            {
                RunCause::Extra
            } else if u.leases.any_lapsed(now) {
                RunCause::Lapse
            } else {
                RunCause::Rule
            };
            self.stats.queued_rule += 1;
            self.enqueue(key, cause);
        } else if n_expected > 0 {
            // The peers ahead of us may not know they are needed (they missed a commit, or
            // they are gone but still in our view): give them an implicit lease, and take over
            // if it lapses without a claim or commit from them.
            let until = now + self.cfg.claim_grace_ms;
            for p in &expected[..n_expected] {
                u.leases.claim_implicit(*p, until);
            }
            self.add_timer(until, TimerKind::Unit(key.0, key.1));
        }
    }

    // ---------------------------------------------------------------- running units

    /// Queues a unit and reserves it: the claim goes out now (not at start), so peers
    /// watching the unit know we will run it even while it waits in our queue.
    fn enqueue(&mut self, key: UKey, cause: RunCause) {
        let until = self.now + self.reservation(key.0);
        let Some(u) = self.units.get_mut(&key) else { return };
        u.mine = Mine::Queued;
        u.cause = cause;
        u.leases.claim(self.id, until);
        self.ready.push_back(key);
        let j = &self.jobs[key.0 as usize];
        let unit = UnitRef { job: j.info.job_id, index: key.1 };
        for to in self.replica_peers(key) {
            self.out.push(Action::Send { to, msg: Message::Claim { unit, until } });
        }
    }

    /// Ranks the candidates of the unit at ring `point` into `scratch` (see [`rank`]), unless
    /// `scratch` already holds that ranking for the current view.
    fn rank_unit(&mut self, point: u64, strict: bool) {
        let key = (point, strict, self.view.epoch);
        if self.ranked != Some(key) {
            rank(self.view.ring(strict), point, self.cfg.window, &mut self.scratch);
            self.ranked = Some(key);
        }
    }

    /// The peers told about a unit's claims, commits and hand-backs: the best-ranked
    /// `max_replicas + 1` in our view, leaving out ourselves and peers that gave the unit up
    /// (so a hand-back reaches further down the ranking, to a peer that can run it).
    fn watchers(&mut self, key: UKey) -> Vec<PeerId> {
        if let Some(s) = self.stolen.get(&key) {
            let leases = self.units.get(&key).map(|u| &u.leases);
            return s
                .watchers
                .iter()
                .filter(|p| !leases.is_some_and(|l| l.gave_up(p)))
                .copied()
                .collect();
        }
        let j = &self.jobs[key.0 as usize];
        let n = (j.info.manifest.replication.max_replicas as usize + 1).min(self.cfg.window);
        let point = unit_point(&j.d.unit_ids[key.1 as usize]);
        let strict = j.info.strict();
        self.rank_unit(point, strict);
        let leases = self.units.get(&key).map(|u| &u.leases);
        self.scratch
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| *p != self.id && !leases.is_some_and(|l| l.gave_up(p)))
            .take(n)
            .collect()
    }

    /// Where our claims and commit for a unit go: its watchers, and the other replicas we know
    /// of (executors that committed, holders of live leases) even when our view ranks them
    /// outside the watchers — a thief, or a replica far from us on the ring, needs to know
    /// about us for its verdict, and without our lease it would take the unit for stuck.
    fn replica_peers(&mut self, key: UKey) -> Vec<PeerId> {
        let mut to = self.watchers(key);
        let (me, now) = (self.id, self.now);
        if let Some(u) = self.units.get(&key) {
            let others = u.tally.commits().iter().map(|c| c.body.executor);
            for p in others.chain(u.leases.live(now).map(|l| l.holder)) {
                if p != me && !to.contains(&p) && to.len() < MAX_WATCHERS {
                    to.push(p);
                }
            }
        }
        to
    }

    fn pump(&mut self) {
        self.fill();
        while self.running < self.run_slots() {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(u) = self.units.get_mut(&key) else { continue };
            if u.mine != Mine::Queued || u.outcome.is_some() {
                if u.mine == Mine::Queued {
                    u.mine = Mine::None;
                }
                continue;
            }
            u.mine = Mine::Running;
            let until = self.now + self.lease_len(key.0);
            let u = self.units.get_mut(&key).expect("tracked");
            let renew = !u.leases.is_live(&self.id, until);
            u.leases.claim(self.id, until);
            self.running += 1;
            self.stats.started += 1;
            match u.cause {
                RunCause::Scan => self.stats.started_scan += 1,
                RunCause::Probe => self.stats.started_probe += 1,
                RunCause::Lapse => self.stats.started_lapse += 1,
                RunCause::Extra => self.stats.started_extra += 1,
                RunCause::Rule => self.stats.started_rule += 1,
                RunCause::Steal => self.stats.started_steal += 1,
            }
            let j = &self.jobs[key.0 as usize];
            let unit = UnitRef { job: j.info.job_id, index: key.1 };
            let unit_id = j.d.unit_ids[key.1 as usize];
            let job = j.info.clone();
            let sources = j.sources.clone();
            if renew {
                for to in self.replica_peers(key) {
                    self.out.push(Action::Send { to, msg: Message::Claim { unit, until } });
                }
            }
            self.out.push(Action::StartUnit { unit, unit_id, job, sources });
            if self.ready.len() < self.run_slots() as usize {
                self.fill();
            }
        }
        if self.running < self.run_slots() && self.ready.is_empty() {
            self.try_steal();
        }
    }

    /// Advances the region scans until the ready queue is full.
    fn fill(&mut self) {
        let want = self.run_slots() as usize * self.cfg.queue_per_core;
        if self.ready.len() >= want || self.scanning == 0 {
            return;
        }
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(self.jobs[s].info.manifest.priority));
        for s in order {
            if self.now < self.jobs[s].scan_after {
                continue;
            }
            while self.ready.len() < want {
                let Some(idx) = self.next_scan_index(s) else { break };
                self.scan_unit(s as u32, idx);
            }
        }
    }

    /// Advances job `s`'s scan: the next unit index in our region, or `None` when done.
    fn next_scan_index(&mut self, s: usize) -> Option<u32> {
        let j = &mut self.jobs[s];
        loop {
            let r = j.scan.first_mut()?;
            if r.0 < r.1 {
                let (_, idx) = j.d.by_point[r.0];
                r.0 += 1;
                return Some(idx);
            }
            j.scan.remove(0);
            if j.scan.is_empty() {
                j.probe_all = false;
                j.probe_arcs.clear();
                self.scanning -= 1;
                return None;
            }
        }
    }

    fn scan_unit(&mut self, slot: u32, idx: u32) {
        let key = (slot, idx);
        // Tracked units re-evaluate on their own (claims, commits, lease timers); a rescan
        // only looks for units we do not know yet.
        if self.done.contains(&key) || self.units.contains_key(&key) {
            return;
        }
        let j = &self.jobs[slot as usize];
        let strict = j.info.strict();
        if !strict && j.d.class_of[idx as usize] != self.arch {
            return;
        }
        let q = j.info.manifest.replication.quorum as usize;
        let point = unit_point(&j.d.unit_ids[idx as usize]);
        let probe = j.probe_all || j.probe_arcs.iter().any(|&(a, b)| in_arc(point, a, b));
        let unit = UnitRef { job: j.info.job_id, index: idx };
        self.rank_unit(point, strict);
        if position(&self.scratch, &self.id).is_none_or(|p| p >= q) {
            return;
        }
        if self.units.len() >= self.cfg.max_tracked_units {
            self.stats.table_full += 1;
            return;
        }
        let mut u = UnitState::new();
        if probe {
            u.mine = Mine::Probing;
            u.cause = RunCause::Probe;
            self.units.insert(key, u);
            self.stats.probes += 1;
            for to in self.watchers(key) {
                self.out.push(Action::Send { to, msg: Message::Probe(unit) });
            }
            self.add_timer(self.now + self.cfg.probe_wait_ms, TimerKind::Probe(slot, idx));
        } else {
            self.units.insert(key, u);
            self.stats.queued_scan += 1;
            self.enqueue(key, RunCause::Scan);
        }
    }

    fn on_finished(&mut self, unit: UnitRef, result: Result<BlobId, LocalFailure>) {
        let Some(s) = self.slot(&unit.job) else { return };
        let key = (s, unit.index);
        let Some(u) = self.units.get_mut(&key) else { return };
        if u.mine != Mine::Running {
            return;
        }
        self.running = self.running.saturating_sub(1);
        let mut watchers = self.replica_peers(key);
        let victim = self.stolen.get(&key).map(|s| s.victim);
        let u = self.units.get_mut(&key).expect("tracked");
        match result {
            Err(why) => {
                u.mine = if why == LocalFailure::Declined { Mine::Declined } else { Mine::Gave };
                u.leases.give_up(&self.id, self.now);
                if let Some(v) = victim
                    && !watchers.contains(&v)
                {
                    watchers.push(v);
                }
                for to in watchers {
                    self.out.push(Action::Send { to, msg: Message::Claim { unit, until: 0 } });
                }
            }
            Ok(result) => {
                u.mine = Mine::Committed;
                let j = &self.jobs[s as usize];
                let body = CommitBody {
                    unit,
                    unit_id: j.d.unit_ids[unit.index as usize],
                    result,
                    executor: self.id,
                    arch: self.arch,
                };
                let submitter = j.info.submitter;
                let c = commit::sign(&*self.signer, body);
                self.stats.committed += 1;
                self.out.push(Action::StoreBlob(result));
                let mut sent_submitter = submitter == self.id;
                for to in watchers {
                    sent_submitter |= to == submitter;
                    self.out.push(Action::Send { to, msg: Message::Commit(c) });
                }
                if !sent_submitter {
                    self.out.push(Action::Send { to: submitter, msg: Message::Commit(c) });
                }
                self.on_commit(c);
            }
        }
    }

    // ---------------------------------------------------------------- stealing

    fn try_steal(&mut self) {
        if self.scanning > 0 {
            return;
        }
        // Requests that brought nothing double the wait before the next (the network is
        // running dry); a grant resets it.
        let wait = self.cfg.steal_cooldown_ms << self.steal_misses.min(MAX_STEAL_BACKOFF);
        if self.last_steal.is_some_and(|t| self.now < t + wait) {
            return;
        }
        // One request per cooldown, answered or not: an idle peer is handed every advert and
        // message, and looking for a victim on each would dominate its CPU.
        self.last_steal = Some(self.now);
        self.steal_misses += 1;
        let toward_cw = self.rng.chance(0.5);
        let Some(v) = self.steal_target(&[], toward_cw) else { return };
        // Enough to fill our run slots and keep as many queued behind them.
        let max = (self.run_slots() - self.running.min(self.run_slots())) + self.run_slots();
        let msg = Message::StealRequest { max, thief: self.id, arch: self.arch, hops: STEAL_HOPS };
        self.out.push(Action::Send { to: v, msg });
    }

    /// Hands units from our scan backlog straight to a thief (up to `want` granted in all):
    /// units we rank among the top `quorum` for but have not queued, so never reserved (no
    /// release is needed; the thief's claim tells the watchers). A busy region's backlog sits
    /// mostly in its scans, where a ready-queue steal cannot reach it.
    fn grant_from_scan(
        &mut self,
        thief: PeerId,
        thief_arch: ArchClass,
        want: usize,
        granted: &mut Vec<UKey>,
    ) {
        // Units looked at: most in a region are not ours (or are known already).
        let mut budget = 8 * want + 64;
        for s in 0..self.jobs.len() {
            let j = &self.jobs[s];
            if self.now < j.scan_after || (!j.info.strict() && thief_arch != self.arch) {
                continue;
            }
            while granted.len() < want && budget > 0 {
                let Some(idx) = self.next_scan_index(s) else { break };
                budget -= 1;
                let key = (s as u32, idx);
                if self.units.contains_key(&key) || self.done.contains(&key) {
                    continue;
                }
                let j = &self.jobs[s];
                let strict = j.info.strict();
                if !strict && j.d.class_of[idx as usize] != self.arch {
                    continue;
                }
                let q = j.info.manifest.replication.quorum as usize;
                let point = unit_point(&j.d.unit_ids[idx as usize]);
                let probe = j.probe_all || j.probe_arcs.iter().any(|&(a, b)| in_arc(point, a, b));
                self.rank_unit(point, strict);
                if position(&self.scratch, &self.id).is_none_or(|p| p >= q) {
                    continue;
                }
                if probe || position(&self.scratch, &thief).is_some_and(|p| p < q) {
                    // Not one to hand out unseen (it may have run already, or the thief runs
                    // it anyway): ours as usual.
                    self.scan_unit(s as u32, idx);
                    continue;
                }
                if self.units.len() >= self.cfg.max_tracked_units {
                    self.stats.table_full += 1;
                    return;
                }
                let lease = self.lease_len(s as u32);
                let mut u = UnitState::new();
                u.leases.claim(thief, self.now + lease);
                // We step aside for it (see `evaluate`) as for a unit taken from our queue.
                u.leases.hand_over(self.id, self.now + self.cfg.claim_grace_ms.min(lease));
                self.units.insert(key, u);
                granted.push(key);
            }
        }
    }

    /// Where a steal request goes next: the member of our own-class ring with the longest
    /// advertised queue, or, when none has one, the member farthest along the ring in the
    /// given direction (the walk goes on from there). Never a peer in `skip`.
    fn steal_target(&self, skip: &[PeerId], toward_cw: bool) -> Option<PeerId> {
        let ring = self.view.ring(false);
        let mut busiest: Option<(u32, PeerId)> = None;
        for m in ring {
            if m.peer == self.id || skip.contains(&m.peer) {
                continue;
            }
            let Some(m) = self.view.get(&m.peer) else { continue };
            if m.queue_len > 1 && busiest.is_none_or(|v| (m.queue_len, m.peer) > v) {
                busiest = Some((m.queue_len, m.peer));
            }
        }
        if let Some((_, p)) = busiest {
            return Some(p);
        }
        let n = ring.len();
        let me = ring.iter().position(|m| m.peer == self.id)?;
        let reach = (n / 2).min(self.cfg.view_side);
        (1..=reach)
            .rev()
            .map(|d| if toward_cw { (me + d) % n } else { (me + n - d) % n })
            .map(|i| ring[i].peer)
            .find(|p| *p != self.id && !skip.contains(p))
    }

    /// A steal request, from the thief or forwarded for it by `from`. Any peer of the right
    /// class may take our queued units, wherever it is on the ring: the grant names the
    /// unit's watchers. With nothing to give, the request goes on (see [`Peer::steal_target`]).
    fn on_steal_request(
        &mut self,
        from: PeerId,
        thief: PeerId,
        arch: ArchClass,
        max: u32,
        hops: u8,
    ) {
        if thief == self.id {
            return;
        }
        // A thief we know must advertise the class it claims.
        let thief_arch = match self.view.get(&thief) {
            Some(m) if m.arch != arch => return,
            _ => arch,
        };
        let want = (max as usize).min(MAX_BATCH);
        // Up to half our ready queue, newest first (the longest wait)...
        let give = want.min(self.ready.len() / 2);
        let mut granted = Vec::new();
        let mut handed = Vec::new();
        let mut known = Vec::new();
        let mut i = self.ready.len();
        while i > 0 && granted.len() < give {
            i -= 1;
            let key = self.ready[i];
            let j = &self.jobs[key.0 as usize];
            let ok_arch = j.info.strict() || thief_arch == self.arch;
            let lease = j.info.manifest.limits.deadline_ms + self.cfg.lease_slack_ms;
            let unit = UnitRef { job: j.info.job_id, index: key.1 };
            let q = j.info.manifest.replication.quorum as usize;
            let point = unit_point(&j.d.unit_ids[key.1 as usize]);
            let strict = j.info.strict();
            self.rank_unit(point, strict);
            // Not a unit the thief runs anyway (one of its primaries).
            let thief_ok = position(&self.scratch, &thief).is_none_or(|p| p >= q);
            // Resolved while queued (retired): drop it from the queue.
            let Some(u) = self.units.get_mut(&key) else {
                self.ready.remove(i);
                continue;
            };
            if ok_arch
                && thief_ok
                && u.mine == Mine::Queued
                && u.cause != RunCause::Steal
                && u.outcome.is_none()
                && !u.tally.has(&thief)
                && !u.leases.is_live(&thief, self.now)
                // A thief that already gave this unit up (declined it, or let its lease
                // lapse) does not get it again: it would only hand it back.
                && !u.leases.lapsed(&thief, self.now)
            {
                u.mine = Mine::None;
                u.leases.claim(thief, self.now + lease);
                // Our reservation shrinks to a short hand-over grace (never extended): by then
                // the thief's own claim has reached the watchers. Without this the watchers
                // would count our stale reservation as a live replica for minutes.
                let handover = self.now + self.cfg.claim_grace_ms.min(lease);
                u.leases.hand_over(self.id, handover);
                // Commits already in for the unit go along: the thief ranks outside the
                // unit's watchers, so nobody else would send them, and it needs them for its
                // verdict.
                known.extend(u.tally.commits().iter().copied());
                self.add_timer(self.now + lease, TimerKind::Unit(key.0, key.1));
                self.ready.remove(i);
                granted.push(key);
                handed.push((key, unit, handover));
            }
        }
        // ...then units of our region scan not queued yet.
        if granted.len() < want && self.scanning > 0 {
            self.grant_from_scan(thief, thief_arch, want, &mut granted);
        }
        if granted.is_empty() {
            if hops > 0 {
                // Go on away from where the request came from.
                let ring = self.view.ring(false);
                let me = ring.iter().position(|m| m.peer == self.id);
                let came_cw = match (me, ring.iter().position(|m| m.peer == from)) {
                    (Some(i), Some(k)) => (k + ring.len() - i) % ring.len() <= ring.len() / 2,
                    _ => false,
                };
                if let Some(next) = self.steal_target(&[from, thief], !came_cw) {
                    let msg = Message::StealRequest { max, thief, arch, hops: hops - 1 };
                    self.out.push(Action::Send { to: next, msg });
                }
            }
            return;
        }
        let mut grants = Vec::with_capacity(granted.len());
        for key in granted {
            let unit = UnitRef { job: self.jobs[key.0 as usize].info.job_id, index: key.1 };
            let mut watchers = vec![self.id];
            watchers.extend(self.watchers(key).into_iter().filter(|p| *p != thief));
            watchers.truncate(MAX_ANNOUNCE_LIST);
            let (me, now) = (self.id, self.now);
            let leases = self.units.get(&key).map_or_else(Vec::new, |u| {
                let others = u.leases.live(now).filter(|l| l.holder != me && l.holder != thief);
                others.take(MAX_ANNOUNCE_LIST).copied().collect()
            });
            grants.push(Grant { unit, watchers, leases });
        }
        self.out.push(Action::Send { to: thief, msg: Message::StealGrant(grants) });
        for c in known {
            self.out.push(Action::Send { to: thief, msg: Message::Commit(c) });
        }
        for (key, unit, until) in handed {
            for to in self.watchers(key) {
                if to != thief {
                    self.out.push(Action::Send { to, msg: Message::Release { unit, until } });
                }
            }
        }
    }
}

/// A convenience for shells: the wire frame for a message.
pub fn frame(msg: &Message) -> Vec<u8> {
    msg.encode()
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Peer>();
}

#[allow(dead_code)]
fn _unused(_: Lease, _: &Leases) {}
