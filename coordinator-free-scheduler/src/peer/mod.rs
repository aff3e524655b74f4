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
//! 2. Queueing a unit sends a [`Message::Claim`] (a lease until deadline + slack; for a
//!    queued unit, a reservation) to the unit's top `max_replicas + 1` ranked peers. With
//!    [`Config::claim_hold_ms`] the claim of a unit placed in the ordinary way waits that
//!    long first, and is left out if the unit's commit went meanwhile (short units).
//! 3. Finishing sends a signed commit to the same peers and to the submitter: the units that
//!    finished together are signed once, and each receiver gets its commits of that batch in
//!    one [`Message::Commits`] ([`crate::commit_batch`]).
//! 4. Whoever holds commits tallies them ([`crate::quorum`]). While no result has `quorum`
//!    agreeing signers, the best-ranked peers that have neither committed, nor hold a live
//!    lease, nor let one lapse, run it — as many as are still needed, never more than
//!    `max_replicas` in all. This one rule covers the first run, extra replicas after a
//!    mismatch and take-over after a lapsed lease.
//! 5. When a neighbour leaves or expires, a peer rescans its region; units in the arc its
//!    region gained are first probed ([`Message::Probe`]) so finished work is not redone. A
//!    newcomer within a window of it, or a neighbour whose weight drops, also starts a rescan
//!    (no probes): a unit's candidates are its `window` ring successors, so a newcomer pushes
//!    the farthest out, and a unit that one ranked ahead of us for may now be ours.
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
//! - A crashed holder is found without frequent adverts: a live, busy holder keeps sending
//!   claims and commits to its units' watchers, so while we are idle (a free run slot, nothing
//!   queued: we could run its unit at once), a holder of a lease on a unit still pending here
//!   that sent us no claim, commit or answer for [`Config::holder_silence_ms`] (30 s) is
//!   pinged, in our view
//!   or not (a thief far along the ring), and taken as gone when two pings `probe_wait_ms`
//!   apart go unanswered: about 35–50 s after a crash instead of 100 s or a lapse of its
//!   (long) reservation.
//! - A peer that cannot run a unit (its shell declined it: an allow-list, missing inputs)
//!   hands it back with a claim ending at 0. Watchers leave that peer out of the unit's
//!   watchers so the hand-back reaches further down the ranking, and the next eligible peer
//!   takes the unit at once. The give-up is final at the watchers (a later claim from that
//!   peer for the unit may be stale, and so may its lease in a probe reply or steal grant); a
//!   full lease table never drops a give-up to make room for a lease (see [`crate::lease`]).
//!   A decline (policy) is final at the peer too, and for the whole job: the peer's steal
//!   requests name the jobs it declines, and victims grant it none of their units. A transient give-up (inputs unreachable,
//!   cancelled) is taken up again by the peer's liveness sweep once nobody holds the unit, and
//!   its commit counts like any other: a unit whose every candidate once failed to fetch its
//!   inputs is not stranded.
//! - A peer whose spare cores shrink (its owner uses the machine; idle-only mode offers
//!   none) hands back the units it queued beyond what it can now queue (all of them, with no
//!   cores), as a transient give-up, so they do not wait for the owner; running units run on.
//!   When its cores grow again it rescans its region, probing units first (it was not their
//!   watcher).
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
//!
//! ## Layout
//!
//! [`Peer`] holds every table; each submodule adds the methods for one concern:
//! - `config`: [`Config`], the tunables and the bound each table keeps.
//! - `stats`: [`Stats`] counters and [`RunCause`].
//! - `state`: the per-unit and per-job records (`UnitState`, `JobState`) and the lookups
//!   from wire references to table keys.
//! - `timers`: the timer table and the periodic tick (expiry, adverts, sweeps).
//! - `adverts`: our capacity adverts and the adverts we receive.
//! - `liveness`: finding gone peers (silent members and silent lease holders are pinged),
//!   following the holders of leases we watch, and the liveness sweep that drives
//!   units nobody holds.
//! - `jobs`: submitting and learning jobs, bundles, and the submitter's sync of results.
//! - `scan`: the region scan that finds the units we rank among the top `quorum` for.
//! - `rule`: the placement rule (`evaluate`) and the memoised ranking behind it, watchers.
//! - `claims`: leases as a watcher sees them: claims, releases, probes and their replies.
//! - `executor`: our ready queue, starting units, finishing them and committing.
//! - `verdict`: incoming commits, the quorum verdict and retiring resolved units.
//! - `steal`: idle peers stealing queued units, and forwarding steal requests.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use ova_jobs::{BlobId, JobId, Manifest, UnitId};

use crate::commit::{CommitBody, SignedCommit, Signer, Verifier};
use crate::membership::View;
use crate::message::{JobInfo, MAX_BATCH, MAX_STEAL_SKIP, Message};
use crate::quorum::{DissentBook, DissentRecord, FailReason};
use crate::types::{ArchClass, Millis, PeerId, UnitRef};
use crate::util::{FxHashMap, FxHashSet, Rng};

mod adverts;
mod claims;
mod config;
mod executor;
mod jobs;
mod liveness;
mod refetch;
mod rule;
mod scan;
mod state;
mod stats;
mod steal;
mod timers;
mod verdict;

pub use config::{Config, VIEW_MARGIN};
pub use stats::{RunCause, Stats};

use liveness::{Holder, Pinged};
use state::{JobState, UKey, UnitState};
use steal::Stolen;
use timers::TimerKind;

/// Most results handed over with [`Event::UnitsRan`] that wait for their signature; past it
/// they are signed at once (a shell that never sends [`Event::SignFinished`] still commits).
pub const MAX_UNSIGNED: usize = 1024;

/// Most units whose claims wait (see [`Config::claim_hold_ms`]); past it a unit's claims go
/// out at once.
pub const MAX_HELD_CLAIMS: usize = 4096;

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
    /// A [`Message::Commits`] from `from` that the shell opened already
    /// ([`crate::CommitBatch::open_checked`]): handled as that message, without checking the
    /// batch a second time.
    Commits {
        /// Sender.
        from: PeerId,
        /// The batch's commits.
        batch: crate::OpenedBatch,
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
    /// Several units ended at once (the shell collects what finished while it was busy): as
    /// many [`Event::UnitFinished`], but their commits are signed together, one signature
    /// per batch (see [`crate::commit`]).
    UnitsFinished(Vec<(UnitRef, Result<BlobId, LocalFailure>)>),
    /// Units ended whose commits are signed later, at the next [`Event::SignFinished`], all
    /// with one signature. Their run slots free at once, so the next units start while the
    /// shell is still busy with its store. For a shell that persists in group commits: it
    /// hands each result over as it comes, and signs right before the group commit that makes
    /// the commits durable (they cannot leave earlier anyway). (Holding finished units back
    /// until a group commit started, to sign them together with [`Event::UnitsFinished`],
    /// kept their slots through the commit in flight and the interval after it, and the
    /// executor ran dry between units.) At most [`MAX_UNSIGNED`] wait; more are signed at
    /// once.
    UnitsRan(Vec<(UnitRef, Result<BlobId, LocalFailure>)>),
    /// Signs the commits of the units handed over with [`Event::UnitsRan`] since the last
    /// signing, and sends them.
    SignFinished,
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
        /// The signers' commits on the agreed result when this peer keeps that result (it
        /// signed it, submitted the job or holds a copy), so a shell that persists them can
        /// prove what it serves after a restart; empty otherwise (a watcher that only
        /// followed the unit need not keep anything).
        proof: Vec<SignedCommit>,
    },
    /// A unit failed here (notification), always with a reason.
    UnitFailed {
        /// The unit.
        unit: UnitRef,
        /// Why.
        reason: FailReason,
    },
}

/// One peer's protocol state.
///
/// `repr(C)`, hot fields first: every event touches a peer whose state is cold in the cache
/// (the simulator drives thousands), so the fields most events read (time, output, the unit,
/// holder and job tables, the ready queue, timers, the ranking memo) share a few cache lines
/// instead of being spread over all of the struct's.
#[repr(C)]
pub struct Peer {
    now: Millis,
    id: PeerId,
    out: Vec<Action>,
    units: FxHashMap<UKey, UnitState>,
    /// Units resolved here that we did not sign: only the key is kept (bounded by
    /// `max_tracked_units`), so late claims and commits for them are ignored cheaply.
    done: FxHashSet<UKey>,
    /// Peers holding leases on units we watch, followed for liveness (at most
    /// [`liveness::MAX_HOLDERS`]).
    holders: FxHashMap<PeerId, Holder>,
    /// Messages from peers that may be followed holders, not yet applied to `holders` (see
    /// [`Peer::heard_from`]; at most [`liveness::MAX_HEARD_LOG`]).
    heard_log: Vec<(PeerId, Millis)>,
    /// No entry of `holders` ends before this (a lower bound): the tick's clean-up of ended
    /// holders skips the table while none is due.
    holders_until: Millis,
    /// Job ids by slot (a short list: a linear search beats hashing 32-byte ids).
    job_ids: Vec<JobId>,
    jobs: Vec<JobState>,
    /// Job slots by descending priority (ties by slot): the order the region scans fill the
    /// ready queue in.
    job_order: Vec<u32>,
    ready: VecDeque<UKey>,
    running: u32,
    cores: u16,
    /// Units started at once per core (see [`Peer::set_run_slots_per_core`]).
    slots_per_core: u32,
    /// Jobs whose region scan is not finished.
    scanning: u32,
    timers: BTreeSet<(Millis, TimerKind)>,
    /// The earliest entry of `timers` (kept alongside: `arm` runs on every event).
    first_timer: Option<Millis>,
    wake: Option<Millis>,
    scratch: Vec<(f64, PeerId)>,
    /// What `scratch` ranks: (unit point, strict ring, view epoch). One message often ranks
    /// the same unit several times (evaluate, watchers, result holders).
    ranked: Option<(u64, bool, u64)>,
    /// Stolen units not resolved yet: who granted each, and the peers that watch it (named
    /// by the victim: we may be far from the unit on the ring, where our view cannot rank it).
    stolen: FxHashMap<UKey, Stolen>,
    /// Units we granted to a thief whose claim has not confirmed the grant yet: the thief. The
    /// peers holding our reservation are told that we stepped aside (a release) once it does,
    /// or once the grant failed and we did not take the unit back (see `steal`).
    lent: FxHashMap<UKey, PeerId>,
    stats: Stats,
    view: View,
    cfg: Config,
    arch: ArchClass,
    signer: Box<dyn Signer>,
    verifier: Arc<dyn Verifier>,
    rng: Rng,
    advert_seq: u64,
    /// When we last advertised, with the spare cores and whether we had units to spare.
    advertised: (Millis, u16, bool),
    requested: FxHashSet<JobId>,
    /// Jobs asked for because a claim about them arrived before their announcement.
    asked: FxHashSet<JobId>,
    /// Messages about units of jobs not announced to us yet, held until the announcement
    /// arrives (see [`Peer::hold_early`]): oldest job first, bounded.
    early: Vec<jobs::EarlyJob>,
    /// Their estimated bytes in all.
    early_bytes: usize,
    /// Resolved units we did not sign whose tally is still kept, oldest first (at most
    /// `kept_verdicts`; see [`Config::kept_verdicts`]).
    kept: VecDeque<UKey>,
    /// Results of ours finished in this event, to be signed together at its end.
    to_sign: Vec<CommitBody>,
    /// Results of ours handed over with [`Event::UnitsRan`], not signed yet (at most
    /// [`MAX_UNSIGNED`]).
    ran: Vec<(UnitRef, BlobId)>,
    /// Units queued or started here whose claims wait, with when each is due, in that order
    /// (see [`Config::claim_hold_ms`]; at most [`MAX_HELD_CLAIMS`]).
    held_claims: VecDeque<(Millis, UKey)>,
    online_at: Millis,
    last_steal: Option<Millis>,
    /// Steal attempts since the last grant (each doubles the wait before the next).
    steal_misses: u32,
    /// We started a unit since we were last idle (see [`Peer::pump`]).
    had_work: bool,
    sweeps: u64,
    dissent: DissentBook,
    /// Spare cores per architecture class in the whole network, as the shell counted them
    /// (see [`Peer::set_capacity_census`]); empty if it did not.
    census: Vec<(ArchClass, u32)>,
    /// Silent peers we pinged and have not heard from since (at most one entry per peer, and
    /// only view members and followed holders: bounded by those tables).
    pinged: Vec<Pinged>,
    /// Result fetches followed until they succeed (see [`refetch`]; at most
    /// `max_result_fetches`).
    result_fetches: FxHashMap<UnitRef, refetch::ResultFetch>,
    /// The same, by due time: an answer expected, or the next attempt.
    result_due: BTreeSet<(Millis, UnitRef)>,
    /// The earliest refetch wake-up set, if any (see [`refetch`]).
    refetch_at: Option<Millis>,
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
        let view = View::new(id, arch, cores, cfg.view_side());
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
            job_order: Vec::new(),
            requested: FxHashSet::default(),
            asked: FxHashSet::default(),
            early: Vec::new(),
            early_bytes: 0,
            units: FxHashMap::default(),
            done: FxHashSet::default(),
            kept: VecDeque::new(),
            to_sign: Vec::new(),
            ran: Vec::new(),
            held_claims: VecDeque::new(),
            online_at: 0,
            ready: VecDeque::new(),
            running: 0,
            timers: BTreeSet::new(),
            first_timer: None,
            wake: None,
            last_steal: None,
            stolen: FxHashMap::default(),
            lent: FxHashMap::default(),
            steal_misses: 0,
            had_work: false,
            scanning: 0,
            sweeps: 0,
            dissent,
            stats: Stats::default(),
            out: Vec::new(),
            scratch: Vec::new(),
            ranked: None,
            census: Vec::new(),
            pinged: Vec::new(),
            result_fetches: FxHashMap::default(),
            result_due: BTreeSet::new(),
            refetch_at: None,
            holders: FxHashMap::default(),
            heard_log: Vec::new(),
            holders_until: Millis::MAX,
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

    /// The content id of `unit`, if this peer knows its job.
    pub fn unit_id(&self, unit: &UnitRef) -> Option<UnitId> {
        let j = &self.jobs[self.slot(&unit.job)? as usize];
        j.d.unit_ids.get(unit.index as usize).copied()
    }

    /// Whether another executor's commit of `result` for `unit` is in this peer's tally: its
    /// executor has sent the same bytes to the job's submitter with that commit, so ours
    /// need not go too (the shell then sends only the commit; a submitter that lacks the
    /// bytes after all fetches them from the signers). `false` when the unit is not tracked.
    pub fn result_agreed_by_another(&self, unit: &UnitRef, result: &BlobId) -> bool {
        let Some(s) = self.slot(&unit.job) else { return false };
        self.units.get(&(s, unit.index)).is_some_and(|u| {
            u.tally.commits().iter().any(|c| c.body.executor != self.id && c.body.result == *result)
        })
    }

    /// Who submitted `job`, if this peer knows the job.
    pub fn job_submitter(&self, job: &JobId) -> Option<PeerId> {
        Some(self.jobs[self.slot(job)? as usize].info.submitter)
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

    /// Why this peer does not track `unit` (debugging a stall together with
    /// [`Peer::describe_unit`]): whether it keeps only the unit's key as resolved, whether it
    /// ranks among the unit's first `quorum` candidates in its view, and whether its region
    /// scan of the job is still under way. `None` if the peer does not know the job.
    pub fn explain_unit(&self, unit: &UnitRef) -> Option<String> {
        let s = self.slot(&unit.job)?;
        let j = &self.jobs[s as usize];
        let key = (s, unit.index);
        let point = *j.d.points.get(unit.index as usize)?;
        let strict = j.info.strict();
        let (ring, me) = (self.view.ring(strict), self.view.my_index(strict));
        let start = self.view.successor(strict, point);
        let q = j.info.manifest.replication.quorum as usize;
        let ranks = crate::placement::ranks_within(ring, start, me, point, self.cfg.window, q);
        Some(format!(
            "done={} tracked={} ranks_in_quorum={ranks} class={:?} my_arch={:?} scan_left={:?} scan_after={} view={} stolen={} lent={}",
            self.done.contains(&key),
            self.units.contains_key(&key),
            j.d.class_of.get(unit.index as usize),
            self.arch,
            j.scan,
            j.scan_after,
            self.view.len(),
            self.stolen.contains_key(&key),
            self.lent.contains_key(&key),
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
        self.step(event, now);
        self.out.drain(..)
    }

    /// Like [`Peer::handle`], but appends the actions to `out` (the shell's own buffer: the
    /// peer writes into it directly, no copy).
    pub fn handle_into(&mut self, event: Event, now: Millis, out: &mut Vec<Action>) {
        // `self.out` is empty between events: the peer appends to the caller's buffer.
        std::mem::swap(&mut self.out, out);
        self.step(event, now);
        std::mem::swap(&mut self.out, out);
    }

    fn step(&mut self, event: Event, now: Millis) {
        self.now = now.max(self.now);
        match event {
            Event::Online => self.on_online(),
            Event::Message { from, msg } => self.on_message(from, msg),
            Event::Commits { from, batch } => {
                self.stats.messages_in += 1;
                self.heard_from(&from);
                self.take_batch(from, batch.into_commits());
            }
            Event::Frame { from, bytes } => match Message::decode(&bytes) {
                Ok(msg) => self.on_message(from, msg),
                Err(_) => self.stats.malformed += 1,
            },
            Event::Submit(m) => self.on_submit(*m),
            Event::UnitFinished { unit, result } => {
                self.on_finished(unit, result);
                self.sign_finished();
            }
            Event::UnitsFinished(units) => {
                for (unit, result) in units {
                    self.on_finished(unit, result);
                }
                self.sign_finished();
            }
            Event::UnitsRan(units) => {
                for (unit, result) in units {
                    self.on_ran(unit, result);
                }
                if self.ran.len() >= MAX_UNSIGNED {
                    self.sign_ran();
                }
            }
            Event::SignFinished => self.sign_ran(),
            Event::BlobFetched { blob, purpose, ok } => match purpose {
                FetchPurpose::Bundle(job) => self.on_bundle_fetched(job, ok),
                FetchPurpose::Result(unit) => self.on_result_fetched(unit, blob, ok),
            },
            Event::Timer => self.on_timer(),
            Event::PeerLeft(p) => {
                let before = self.regions();
                if self.view.remove(&p) {
                    self.rescan_after_leave(before);
                }
                self.holders_gone(&[p]);
            }
            Event::Capacity(c) => {
                let grew = c > self.cores;
                self.cores = c;
                self.view.set_my_capacity(c, self.ready.len() as u32);
                // We race faster (or take part again, after offering no cores): units we
                // skipped may be ours now. We were not among their watchers, so their claims
                // may not have reached us: they are probed before they run.
                if grew {
                    self.rescan_all(scan::ScanProbe::All);
                } else {
                    self.shed_queue();
                }
            }
        }
        self.pump();
        self.arm();
    }

    /// Dispatches a message to the submodule that owns it.
    fn on_message(&mut self, from: PeerId, msg: Message) {
        self.stats.messages_in += 1;
        // What a lease holder sends its watchers (see `liveness`). Adverts, the bulk of the
        // traffic, are left out (a table lookup each): a member's last advert is known from
        // its expiry in the view.
        if matches!(
            msg,
            Message::Claim { .. }
                | Message::Commit(_)
                | Message::Commits(_)
                | Message::Release { .. }
                | Message::ProbeReply { .. }
                | Message::StealGrant(_)
                | Message::Pong
        ) {
            self.heard_from(&from);
        }
        self.dispatch(from, msg);
    }

    /// Hands a message to the submodule that owns it, or holds it if it is about a unit of a
    /// job we do not know yet.
    fn dispatch(&mut self, from: PeerId, msg: Message) {
        let early_job = match &msg {
            Message::Claim { unit, .. } | Message::Release { unit, .. } => Some(unit.job),
            Message::Commit(c) => Some(c.body.unit.job),
            _ => None,
        };
        if let Some(job) = early_job
            && self.slot(&job).is_none()
        {
            self.hold_early(from, job, msg);
            return;
        }
        match msg {
            Message::Advert(ad) => self.on_advert(from, ad),
            Message::Announce(info) => self.on_announce(info),
            Message::GetJob(job) => self.on_get_job(from, job),
            Message::HaveBundle(job) => self.on_have_bundle(from, job),
            Message::Claim { unit, until } => self.on_claim(from, unit, until),
            Message::Release { unit, until } => self.on_release(from, unit, until),
            Message::Commit(c) => {
                if c.body.executor == from {
                    self.answer_late_commit(from, &c);
                }
                self.on_commit(*c)
            }
            Message::Probe(unit) => self.on_probe(from, unit),
            Message::ProbeReply { unit, commits, leases, done } => {
                self.on_probe_reply(from, unit, commits, leases, done)
            }
            Message::StealRequest { max, thief, arch, hops, mut skip } => {
                skip.truncate(MAX_STEAL_SKIP);
                self.on_steal_request(from, thief, arch, max, hops, skip)
            }
            Message::StealGrant(grants) => self.on_steal_grant(from, grants),
            Message::Ping => self.out.push(Action::Send { to: from, msg: Message::Pong }),
            Message::Pong => self.on_pong(from),
            Message::SyncRequest(job) => self.on_sync_request(from, job),
            Message::SyncReply(commits) => {
                for c in commits.into_iter().take(MAX_BATCH) {
                    self.on_commit(c);
                }
            }
            Message::Commits(batch) => self.on_commit_batch(from, *batch),
            // The shell's business (see the message).
            Message::ResultBytes(_) => {}
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
