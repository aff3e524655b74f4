//! The worker's Prometheus metrics (OpenMetrics text, via the official `prometheus-client`).
//!
//! Conventions: every name starts with `ova_`; counters end in `_total`, durations in
//! `_seconds`, sizes in `_bytes`; labels take values from small fixed sets (never unit or job
//! ids), so a long-running peer's series count stays bounded. The node id appears once, on
//! `ova_node_info`, so dashboards can show which peer an `instance` is.
//!
//! Components hold an `Arc<Metrics>` and update its fields; [`Metrics::encode`] renders the
//! exposition for the `/metrics` endpoint.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label with one value from a fixed, small set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind (an outcome, a reason, a direction…).
    pub kind: &'static str,
}

/// Labels of `ova_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
    /// CPU architecture class this peer advertises.
    pub arch: &'static str,
}

/// Labels of `ova_node_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// This peer's node id (its ed25519 public key, hex).
    pub node_id: String,
}

/// Every metric an Ova peer exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Node id of this peer (set once the identity is loaded).
    pub node_info: Family<NodeLabels, Gauge>,
    /// Units handed to the sandbox.
    pub units_started: Counter,
    /// Units answered from an earlier verified result of the same computation, not run.
    pub units_memoised: Counter,
    /// Executor child processes restarted (a unit past its deadline had its child killed, or
    /// a child died), in all.
    pub executor_restarts: Counter,
    /// Units that ended, by outcome kind.
    pub units_finished: Family<KindLabel, Counter>,
    /// Wall-clock time of each unit run.
    pub unit_duration: Histogram,
    /// CPU time spent running units.
    pub unit_cpu_seconds: Counter<f64, AtomicU64>,
    /// Fuel consumed by metered units.
    pub fuel_consumed: Counter,
    /// Cores this peer currently offers to the network.
    pub spare_cores: Gauge,
    /// Threads of the executor pool.
    pub pool_threads: Gauge,
    /// Pool threads running a unit right now.
    pub pool_busy_threads: Gauge,
    /// Units waiting for a pool thread.
    pub queue_depth: Gauge,
    /// Peers in this peer's membership view.
    pub peers_known: Gauge,
    /// Bytes sent to other peers.
    pub sent_bytes: Counter,
    /// Bytes received from other peers.
    pub received_bytes: Counter,
    /// Frames dropped before reaching the protocol, by reason.
    pub frames_dropped: Family<KindLabel, Counter>,
    /// Signed commits this peer published.
    pub commits_published: Counter,
    /// Messages about jobs not announced here yet, held until the announcement arrives.
    pub messages_held_early: Counter,
    /// Result fetches that failed and were tried again (`retried`) or given up after the
    /// last attempt (`abandoned`).
    pub result_fetches: Family<KindLabel, Counter>,
    /// Fetches of a bundle copy this peer keeps that failed and were tried again (`retried`)
    /// or given up after the last attempt (`abandoned`).
    pub bundle_fetches: Family<KindLabel, Counter>,
    /// Small results of ours sent to their submitter with their commits (`sent`), or left
    /// out because another executor's agreeing commit had brought them (`skipped`).
    pub inline_results: Family<KindLabel, Counter>,
    /// Protocol messages received from other peers, by kind (claims, commit batches,
    /// adverts…).
    pub messages_received: Family<KindLabel, Counter>,
    /// Commits received from other peers.
    pub commits_received: Counter,
    /// Commits rejected (bad signature, unknown signer…), by reason.
    pub commits_rejected: Family<KindLabel, Counter>,
    /// Units this peer saw reach quorum.
    pub results_verified: Counter,
    /// Commits that disagreed with another replica's result.
    pub results_mismatched: Counter,
    /// Units that failed verification, by reason.
    pub units_failed: Family<KindLabel, Counter>,
    /// Jobs submitted from this peer.
    pub jobs_submitted: Counter,
    /// Jobs submitted from this peer whose units all ended.
    pub jobs_completed: Counter,
    /// Blobs held in this peer's store.
    pub blobs_stored: Gauge,
    /// Bytes of blobs held in this peer's store.
    pub blobs_stored_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, with `ova_build_info` set for this build.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("ova");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                arch: std::env::consts::ARCH,
            })
            .set(1);
        r.register("build_info", "Build of this peer (always 1)", build);
        let m = Self {
            node_info: Family::default(),
            units_started: Counter::default(),
            units_memoised: Counter::default(),
            executor_restarts: Counter::default(),
            units_finished: Family::default(),
            unit_duration: Histogram::new(exponential_buckets(0.0005, 2.5, 16)),
            unit_cpu_seconds: Counter::default(),
            fuel_consumed: Counter::default(),
            spare_cores: Gauge::default(),
            pool_threads: Gauge::default(),
            pool_busy_threads: Gauge::default(),
            queue_depth: Gauge::default(),
            peers_known: Gauge::default(),
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            frames_dropped: Family::default(),
            commits_published: Counter::default(),
            messages_held_early: Counter::default(),
            result_fetches: Family::default(),
            bundle_fetches: Family::default(),
            inline_results: Family::default(),
            messages_received: Family::default(),
            commits_received: Counter::default(),
            commits_rejected: Family::default(),
            results_verified: Counter::default(),
            results_mismatched: Counter::default(),
            units_failed: Family::default(),
            jobs_submitted: Counter::default(),
            jobs_completed: Counter::default(),
            blobs_stored: Gauge::default(),
            blobs_stored_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("node_info", "Node id of this peer (always 1)", m.node_info.clone());
        r.register("units_started", "Units handed to the sandbox", m.units_started.clone());
        r.register(
            "units_memoised",
            "Units answered from an earlier verified result, not run",
            m.units_memoised.clone(),
        );
        r.register(
            "executor_restarts",
            "Executor processes restarted (a runaway unit killed, or a crash)",
            m.executor_restarts.clone(),
        );
        r.register("units_finished", "Units that ended, by outcome", m.units_finished.clone());
        r.register_with_unit(
            "unit_duration",
            "Wall-clock time of one unit run",
            Unit::Seconds,
            m.unit_duration.clone(),
        );
        r.register_with_unit(
            "unit_cpu",
            "CPU time spent running units",
            Unit::Seconds,
            m.unit_cpu_seconds.clone(),
        );
        r.register("fuel_consumed", "Fuel consumed by metered units", m.fuel_consumed.clone());
        r.register("spare_cores", "Cores offered to the network now", m.spare_cores.clone());
        r.register("pool_threads", "Threads of the executor pool", m.pool_threads.clone());
        r.register("pool_busy_threads", "Pool threads running a unit", m.pool_busy_threads.clone());
        r.register("queue_depth", "Units waiting for a pool thread", m.queue_depth.clone());
        r.register("peers_known", "Peers in the membership view", m.peers_known.clone());
        r.register_with_unit("sent", "Bytes sent to peers", Unit::Bytes, m.sent_bytes.clone());
        r.register_with_unit(
            "received",
            "Bytes received from peers",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        r.register("frames_dropped", "Frames dropped, by reason", m.frames_dropped.clone());
        r.register("commits_published", "Signed commits published", m.commits_published.clone());
        r.register(
            "messages_held_early",
            "Messages held because they arrived before their job's announcement",
            m.messages_held_early.clone(),
        );
        r.register(
            "result_fetches",
            "Failed result fetches tried again or given up",
            m.result_fetches.clone(),
        );
        r.register(
            "bundle_fetches",
            "Failed fetches of a kept bundle copy tried again or given up",
            m.bundle_fetches.clone(),
        );
        r.register(
            "inline_results",
            "Small results sent to their submitter with their commits, or left out because \
             another executor's agreeing commit had brought them",
            m.inline_results.clone(),
        );
        r.register(
            "messages_received",
            "Protocol messages received from other peers, by kind",
            m.messages_received.clone(),
        );
        r.register("commits_received", "Commits received", m.commits_received.clone());
        r.register("commits_rejected", "Commits rejected, by reason", m.commits_rejected.clone());
        r.register("results_verified", "Units seen reach quorum", m.results_verified.clone());
        r.register(
            "results_mismatched",
            "Commits disagreeing with another replica",
            m.results_mismatched.clone(),
        );
        r.register("units_failed", "Units that failed verification", m.units_failed.clone());
        r.register("jobs_submitted", "Jobs submitted from this peer", m.jobs_submitted.clone());
        r.register("jobs_completed", "Jobs submitted here that ended", m.jobs_completed.clone());
        r.register("blobs_stored", "Blobs in this peer's store", m.blobs_stored.clone());
        r.register_with_unit(
            "blobs_stored",
            "Bytes of blobs in this peer's store",
            Unit::Bytes,
            m.blobs_stored_bytes.clone(),
        );
        Self { registry: r, ..m }
    }

    /// Records this peer's node id on `ova_node_info`.
    pub fn set_node_id(&self, node_id: impl Into<String>) {
        self.node_info.clear();
        self.node_info.get_or_create(&NodeLabels { node_id: node_id.into() }).set(1);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}

impl Metrics {
    /// Creates every labelled series at zero (each outcome kind, each drop reason, …), so
    /// dashboards show a flat zero rather than "no data" before the first event of a kind.
    pub fn init_label_values(&self) {
        for k in ova_jobs::OutcomeKind::ALL {
            let _ = self.units_finished.get_or_create(&KindLabel { kind: k.label() });
        }
        for r in ova_net::stats::DropReason::ALL {
            let _ = self.frames_dropped.get_or_create(&KindLabel { kind: r.label() });
        }
        for kind in [
            "send_failed",
            "broadcast_failed",
            "send_queue_full",
            "bad_peer_id",
            "too_large",
            "empty",
            "version",
            "undecodable",
            "trailing",
            "early_overflow",
            "unwanted_result",
        ] {
            let _ = self.frames_dropped.get_or_create(&KindLabel { kind });
        }
        for kind in ["retried", "abandoned"] {
            let _ = self.result_fetches.get_or_create(&KindLabel { kind });
            let _ = self.bundle_fetches.get_or_create(&KindLabel { kind });
        }
        for kind in ["sent", "skipped"] {
            let _ = self.inline_results.get_or_create(&KindLabel { kind });
        }
        for kind in ova_scheduler::MESSAGE_KINDS {
            let _ = self.messages_received.get_or_create(&KindLabel { kind });
        }
        for kind in FAILURE_KINDS {
            let _ = self.units_failed.get_or_create(&KindLabel { kind });
        }
        for kind in ["bad_signature", "unknown_signer", "equivocation"] {
            let _ = self.commits_rejected.get_or_create(&KindLabel { kind });
        }
    }
}

/// Why a unit fails verification (labels of `ova_units_failed_total`).
pub const FAILURE_KINDS: [&str; 1] = ["no_quorum"];

/// The runtime reports protocol events here.
impl ova_net::runtime::Observer for Metrics {
    fn commits_published(&self, n: u64) {
        self.commits_published.inc_by(n);
    }
    fn commit_received(&self) {
        self.commits_received.inc();
    }
    fn result_mismatched(&self) {
        self.results_mismatched.inc();
    }
    fn unit_verified(&self, mine: bool) {
        // Counted once in the network: at the peer that submitted the job, so that summing
        // over peers gives the network's verified units.
        if mine {
            self.results_verified.inc();
        }
    }
    fn unit_failed(&self, mine: bool) {
        if mine {
            inc_kind(&self.units_failed, "no_quorum");
        }
    }
    fn unit_memoised(&self) {
        self.units_memoised.inc();
    }
    fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }
    fn job_completed(&self) {
        self.jobs_completed.inc();
    }
    fn frame_dropped(&self, reason: &'static str) {
        // Reasons are fixed strings in the runtime and the wire format: bounded cardinality.
        inc_kind(&self.frames_dropped, reason);
    }
    fn blob_bytes(&self, sent: u64, received: u64) {
        self.sent_bytes.inc_by(sent);
        self.received_bytes.inc_by(received);
    }
    fn commits_rejected(&self, reason: &'static str, n: u64) {
        self.commits_rejected.get_or_create(&KindLabel { kind: reason }).inc_by(n);
    }
    fn messages_held_early(&self, held: u64, dropped: u64) {
        self.messages_held_early.inc_by(held);
        self.frames_dropped.get_or_create(&KindLabel { kind: "early_overflow" }).inc_by(dropped);
    }
    fn result_fetches(&self, retried: u64, abandoned: u64) {
        self.result_fetches.get_or_create(&KindLabel { kind: "retried" }).inc_by(retried);
        self.result_fetches.get_or_create(&KindLabel { kind: "abandoned" }).inc_by(abandoned);
    }
    fn inline_results(&self, sent: u64, skipped: u64) {
        self.inline_results.get_or_create(&KindLabel { kind: "sent" }).inc_by(sent);
        self.inline_results.get_or_create(&KindLabel { kind: "skipped" }).inc_by(skipped);
    }
    fn message_received(&self, kind: &'static str) {
        self.messages_received.get_or_create(&KindLabel { kind }).inc();
    }
    fn bundle_fetches(&self, retried: u64, abandoned: u64) {
        self.bundle_fetches.get_or_create(&KindLabel { kind: "retried" }).inc_by(retried);
        self.bundle_fetches.get_or_create(&KindLabel { kind: "abandoned" }).inc_by(abandoned);
    }
    fn blobs_stored(&self, count: u64, bytes: u64) {
        self.blobs_stored.set(count as i64);
        self.blobs_stored_bytes.set(bytes as i64);
    }
}

/// Counts by kind: shorthand for `family.get_or_create(&KindLabel { kind }).inc()`.
pub fn inc_kind(family: &Family<KindLabel, Counter>, kind: &'static str) {
    family.get_or_create(&KindLabel { kind }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the exposition into (metric family name, type) pairs and sample names, checking
    /// the text format's structure on the way.
    fn parse(text: &str) -> (Vec<(String, String)>, Vec<String>) {
        let mut families = Vec::new();
        let mut samples = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                families.push((it.next().unwrap().to_string(), it.next().unwrap().to_string()));
            } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            } else if line == "# EOF" {
                assert!(lines.peek().is_none(), "text after # EOF");
            } else {
                let name_end = line.find(['{', ' ']).expect("sample line has a value");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
                samples.push(line[..name_end].to_string());
            }
        }
        assert_eq!(text.lines().last(), Some("# EOF"));
        (families, samples)
    }

    #[test]
    fn exposition_parses_and_follows_naming_conventions() {
        let m = Metrics::new();
        m.set_node_id("abc123");
        m.units_started.inc();
        inc_kind(&m.units_finished, "success");
        inc_kind(&m.frames_dropped, "too_large");
        inc_kind(&m.commits_rejected, "bad_signature");
        inc_kind(&m.units_failed, "max_replicas");
        m.unit_duration.observe(0.25);
        m.unit_cpu_seconds.inc_by(0.5);
        let text = m.encode();
        let (families, samples) = parse(&text);
        assert!(families.len() >= 25, "{families:?}");
        for (name, kind) in &families {
            assert!(name.starts_with("ova_"), "{name} lacks the ova_ prefix");
            match kind.as_str() {
                "counter" => {
                    let with_total = format!("{name}_total");
                    assert!(samples.contains(&with_total), "counter {name} has no _total sample");
                }
                "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
                "gauge" => assert!(!name.ends_with("_total"), "{name}"),
                other => panic!("unexpected metric type {other} for {name}"),
            }
        }
        for s in &samples {
            assert!(s.starts_with("ova_"), "{s}");
        }
        assert!(text.contains("ova_units_finished_total{kind=\"success\"} 1"), "{text}");
        // What the runtime reports of the core: rejected commits and early messages.
        use ova_net::runtime::Observer;
        m.init_label_values();
        m.commits_rejected("unknown_signer", 2);
        m.messages_held_early(3, 1);
        m.result_fetches(4, 0);
        m.bundle_fetches(0, 1);
        m.inline_results(5, 3);
        m.message_received("claim");
        m.message_received("claim");
        let text = m.encode();
        assert!(text.contains("ova_inline_results_total{kind=\"sent\"} 5"), "{text}");
        assert!(text.contains("ova_inline_results_total{kind=\"skipped\"} 3"), "{text}");
        assert!(text.contains("ova_messages_received_total{kind=\"claim\"} 2"), "{text}");
        assert!(text.contains("ova_messages_received_total{kind=\"sync_reply\"} 0"), "{text}");
        assert!(text.contains("ova_bundle_fetches_total{kind=\"retried\"} 0"), "{text}");
        assert!(text.contains("ova_bundle_fetches_total{kind=\"abandoned\"} 1"), "{text}");
        assert!(text.contains("ova_result_fetches_total{kind=\"retried\"} 4"), "{text}");
        assert!(text.contains("ova_result_fetches_total{kind=\"abandoned\"} 0"), "{text}");
        assert!(text.contains("ova_commits_rejected_total{kind=\"unknown_signer\"} 2"), "{text}");
        assert!(text.contains("ova_commits_rejected_total{kind=\"equivocation\"} 0"), "{text}");
        assert!(text.contains("ova_messages_held_early_total 3"), "{text}");
        assert!(text.contains("ova_frames_dropped_total{kind=\"early_overflow\"} 1"), "{text}");
        assert!(text.contains("ova_node_info{node_id=\"abc123\"} 1"));
        assert!(text.contains("ova_sent_bytes_total 0"));
        assert!(text.contains("ova_unit_cpu_seconds_total 0.5"));
        assert!(text.contains("ova_unit_duration_seconds_count 1"));
        assert!(text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
    }
}
