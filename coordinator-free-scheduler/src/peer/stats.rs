//! [`Stats`]: the peer's counters, and [`RunCause`], why a unit was queued here.

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
    /// Messages held because they arrived before their job's announcement (replayed when it
    /// arrives).
    pub held_early: u64,
    /// Held messages dropped because the holding space was full.
    pub early_dropped: u64,
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
    /// Held claims left out when due (one per unit queued here, and one more if its start
    /// renewed its lease): the unit ran and its commit went instead, or it was handed back
    /// or on, or resolved (see [`Config::claim_hold_ms`](super::Config::claim_hold_ms)).
    pub claims_left_out: u64,
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
    /// Queued units handed back because our spare cores shrank.
    pub shed: u64,
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
    /// Peers (view members, or holders of leases we watch) taken as gone because they sent
    /// nothing, not even an answer to either of two pings.
    pub silent_dropped: u64,
    /// Result fetches tried again after failing (see `refetch`).
    pub result_fetch_retries: u64,
    /// Result fetches given up after their last attempt failed.
    pub result_fetches_abandoned: u64,
    /// Fetches of a bundle copy we keep, tried again after failing (see `refetch`).
    pub bundle_fetch_retries: u64,
    /// Bundle-copy fetches given up after their last attempt failed.
    pub bundle_fetches_abandoned: u64,
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
