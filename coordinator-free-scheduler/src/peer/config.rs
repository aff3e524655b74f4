//! [`Config`]: the peer's tunables, including the bound of every table and what happens when
//! one is full.

use crate::types::Millis;

/// Tunables. Defaults suit both the simulator and a small real network.
#[derive(Clone, Debug)]
pub struct Config {
    /// Candidates per unit (ring successors ranked by rendezvous hashing).
    pub window: usize,
    /// Ring neighbours kept on each side, per ring. At least `window` + [`VIEW_MARGIN`] are
    /// kept, whatever this says (see [`Config::view_side`]).
    pub view_side: usize,
    /// How often we decide whether to advertise. An advert goes out when what it says has
    /// changed (spare cores, or whether we have queued units to spare for thieves), and at
    /// least every quarter of `advert_ttl_ms` as a heartbeat. Expired members are dropped
    /// every half interval.
    pub advert_interval_ms: Millis,
    /// How long our adverts stay valid at receivers (a quarter of it is our heartbeat).
    ///
    /// 400 s by default, a heartbeat every 100 s. It was 300 s (every 75 s): the heartbeats,
    /// each to every ring neighbour, were a third of a 10,000-peer network's messages. A
    /// member that stops advertising is pinged after [`Config::silence_probe_ms`], raised
    /// with it (100 → 130 s). Longer was tried: 600 s with the silence probe at 200 s halved
    /// the heartbeats, but a crashed peer stayed in views that much longer, and the
    /// simulator's `faults` scenario (a tenth of the peers crash) took 17 % longer over
    /// seeds 1–12 (2.34 → 2.74× the ideal); at 400 s it took 2.39× (see the crate README,
    /// round 14).
    pub advert_ttl_ms: u32,
    /// Added to a unit's deadline to form the lease.
    pub lease_slack_ms: Millis,
    /// How long to wait for probe replies before deciding.
    pub probe_wait_ms: Millis,
    /// How long we wait for a peer ranked ahead of us to claim a unit that needs a replica
    /// before we take it over ourselves (after asking it once: a peer that has the unit
    /// queued answers with its lease). A live peer that will run the unit claims it within
    /// a round trip of learning it is needed, so this only has to outlast a lost message
    /// or two, not a unit's run. It was a minute: every lost release or claim then cost a
    /// minute, and two peers each waiting for the other (lost messages make their views
    /// differ) cost a minute with both idle. At 10 s the simulator's scenarios ran the same
    /// or faster with no more waste (seeds 1–24 of churn: mean makespan 221.8 → 151.0 s;
    /// partition, seeds 1–6: 337.9 → 203.7 s and half the waste).
    pub claim_grace_ms: Millis,
    /// Least time between two steal requests.
    pub steal_cooldown_ms: Millis,
    /// A view member within [`Config::view_side`] ring positions of us (one placement uses)
    /// that has not advertised for this long is pinged
    /// ([`Message::Ping`](crate::message::Message::Ping)) and, when neither that ping nor a
    /// second one `probe_wait_ms` later brings any message from it, taken as gone (its leases
    /// end, its units are placed again). With rare adverts (a long `advert_ttl_ms`) this finds
    /// a crashed peer long before its advert expires. Has no effect when it exceeds the TTL.
    /// Keep it well above the heartbeat (a quarter of the TTL), or live members are pinged
    /// between two of their adverts.
    pub silence_probe_ms: Millis,
    /// A peer that claimed a unit we watch (its lease still running) and from whom no claim,
    /// commit, release or answer came for this long is pinged the same
    /// way. A busy live peer keeps sending claims and commits to its units' watchers, so this
    /// finds a crashed lease holder, whose units wait for us to notice, without adverts; an
    /// idle member holds no lease and is left to `silence_probe_ms`. Only while we are idle
    /// ourselves (a free run slot, nothing queued): a busy peer would only queue the unit.
    pub holder_silence_ms: Millis,
    /// Most units tracked. When full, new units (scanned, claimed or committed) are not
    /// tracked and counted in [`Stats::table_full`](super::Stats::table_full); others will run or watch them.
    pub max_tracked_units: usize,
    /// Most resolved units whose tally (the quorum's signed commits) we keep although we did
    /// not sign it; older ones keep only their key. An executor that crashed mid-send may have
    /// delivered its commit to us alone: these tallies answer the probes, late commits and
    /// sync requests of the peers (and the submitter) that missed it, for recent verdicts.
    /// When full, the oldest kept tally is dropped (its key stays resolved).
    pub kept_verdicts: usize,
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
    /// Most result fetches followed at once, in flight or waiting to be tried again after a
    /// failure. When full, a fetch still goes out but is not retried if it fails; counted in
    /// [`Stats::table_full`](super::Stats::table_full).
    pub max_result_fetches: usize,
    /// How long the claim for a unit we queue or start waits before it is sent (0: it goes
    /// at once). A unit that ran and was committed meanwhile needs no claim: its commit,
    /// sent to the same peers, says more; nor does one handed back, handed on or resolved
    /// meanwhile. Tiny units run and commit within tens of milliseconds of being queued, and
    /// their claims were most of a busy network's messages. Keep it well under
    /// `claim_grace_ms`: the peers ranked after us wait that long for our claim or commit
    /// before they take a unit over. At most [`MAX_HELD_CLAIMS`](super::MAX_HELD_CLAIMS)
    /// wait; past that a claim goes out at once.
    pub claim_hold_ms: Millis,
}

/// Ring neighbours a view keeps on each side beyond the placement window.
///
/// A crashed neighbour keeps its place in our view until we find it gone (its adverts stop
/// for [`Config::silence_probe_ms`], or a lease check pings it), and a neighbour that just
/// joined is missing until its first advert. A view of only `window` neighbours a side then
/// lacks a live candidate of the units at its edge, and the peers disagree about who runs
/// them. Under churn that fed on itself: with `view_side` equal to the window, `ova-sim
/// bench --peers 2000 --units 100000` took 9.4 times the ideal with 6 extra runs per unit,
/// 2.8 times at one more neighbour, and 1.26 at two (1.20 at the default 14; with no churn,
/// 1.35 at the window itself). The `churn` scenario wasted 0.27–0.55 runs per unit above the
/// quorum instead of 0.01.
pub const VIEW_MARGIN: usize = 2;

impl Config {
    /// The ring neighbours a view keeps on each side: `view_side`, but at least `window` +
    /// [`VIEW_MARGIN`].
    pub fn view_side(&self) -> usize {
        self.view_side.max(self.window + VIEW_MARGIN)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 10,
            view_side: 14,
            advert_interval_ms: 30_000,
            advert_ttl_ms: 400_000,
            lease_slack_ms: 10_000,
            probe_wait_ms: 2_000,
            steal_cooldown_ms: 5_000,
            silence_probe_ms: 130_000,
            holder_silence_ms: 30_000,
            claim_grace_ms: 10_000,
            max_tracked_units: 1 << 21,
            kept_verdicts: 4096,
            max_jobs: 64,
            queue_per_core: 2,
            max_timers: 1 << 22,
            max_dissent_records: 1 << 16,
            bundle_copies: 3,
            warmup_ms: 5_000,
            max_result_fetches: 1 << 16,
            claim_hold_ms: 0,
        }
    }
}
