//! What the live status page shows: recent units, throughput over the last minutes, and this
//! peer's capacity, kept in small fixed-size buffers so a long-running peer uses constant memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Units kept in the "recent units" list.
pub const RECENT_UNITS: usize = 50;
/// Throughput history: one bucket per this many seconds…
pub const BUCKET_SECS: u64 = 5;
/// …and this many buckets (10 minutes).
pub const BUCKETS: usize = 120;

/// One finished unit, as the page lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecentUnit {
    /// Short unit id.
    pub unit: String,
    /// Job name.
    pub job: String,
    /// Outcome kind (`success`, `trap`, `timeout`, …).
    pub outcome: String,
    /// Wall-clock run time.
    pub millis: f64,
}

/// A point of the throughput chart.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct RatePoint {
    /// Seconds before now at which the bucket ends.
    pub ago_secs: u64,
    /// Units finished per second in the bucket.
    pub rate: f64,
}

/// A known peer, as the page lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerRow {
    /// Node id (hex).
    pub node_id: String,
    /// Spare cores it advertises.
    pub spare_cores: u32,
    /// Seconds since its last advert.
    pub advert_age_secs: f64,
    /// Its address, if known.
    pub addr: Option<String>,
}

/// The JSON behind the status page (`GET /api/status`).
#[derive(Clone, Debug, Serialize)]
pub struct StatusSnapshot {
    /// This peer's node id.
    pub node_id: String,
    /// Crate version.
    pub version: &'static str,
    /// Cores offered to the network.
    pub spare_cores: i64,
    /// Cores running units now.
    pub busy_cores: i64,
    /// Units finished per second over the last 10 s.
    pub units_per_sec: f64,
    /// Units finished here since start.
    pub units_total: u64,
    /// Throughput history, oldest first.
    pub throughput: Vec<RatePoint>,
    /// Most recent units, newest first.
    pub recent: Vec<RecentUnit>,
    /// Known peers.
    pub peers: Vec<PeerRow>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    recent: VecDeque<RecentUnit>,
    /// (bucket index since start, count), oldest first.
    buckets: VecDeque<(u64, u64)>,
    total: u64,
}

/// Thread-safe recorder of finished units for the status page.
#[derive(Debug)]
pub struct StatusBoard {
    inner: Mutex<Inner>,
}

impl StatusBoard {
    /// An empty board whose clock starts at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            inner: Mutex::new(Inner {
                start,
                recent: VecDeque::with_capacity(RECENT_UNITS),
                buckets: VecDeque::with_capacity(BUCKETS + 1),
                total: 0,
            }),
        }
    }

    fn bucket_of(inner: &Inner, at: Instant) -> u64 {
        at.saturating_duration_since(inner.start).as_secs() / BUCKET_SECS
    }

    /// Records a unit that finished at `at`.
    pub fn record(&self, unit: RecentUnit, at: Instant) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let b = Self::bucket_of(&g, at);
        match g.buckets.back_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => g.buckets.push_back((b, 1)),
        }
        while g.buckets.len() > BUCKETS {
            g.buckets.pop_front();
        }
        if g.recent.len() == RECENT_UNITS {
            g.recent.pop_back();
        }
        g.recent.push_front(unit);
        g.total += 1;
    }

    /// Throughput history for the last [`BUCKETS`] buckets ending at `now` (empty buckets are
    /// zeros), the rate over the last 10 s, recent units and the total.
    pub fn view(&self, now: Instant) -> (Vec<RatePoint>, f64, Vec<RecentUnit>, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = Self::bucket_of(&g, now);
        let first = current.saturating_sub(BUCKETS as u64 - 1);
        let mut points = Vec::with_capacity(BUCKETS);
        for b in first..=current {
            let n = g.buckets.iter().find(|(i, _)| *i == b).map_or(0, |(_, n)| *n);
            let width = if b == current {
                // The current bucket is partly elapsed.
                let elapsed =
                    now.saturating_duration_since(g.start).as_secs_f64() - (b * BUCKET_SECS) as f64;
                elapsed.clamp(1.0, BUCKET_SECS as f64)
            } else {
                BUCKET_SECS as f64
            };
            points
                .push(RatePoint { ago_secs: (current - b) * BUCKET_SECS, rate: n as f64 / width });
        }
        let window = Duration::from_secs(10);
        let since = Self::bucket_of(&g, now.checked_sub(window).unwrap_or(g.start));
        let recent_n: u64 = g.buckets.iter().filter(|(i, _)| *i >= since).map(|(_, n)| n).sum();
        let secs = now.saturating_duration_since(g.start).min(window).as_secs_f64().max(1.0);
        (points, recent_n as f64 / secs, g.recent.iter().cloned().collect(), g.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: usize) -> RecentUnit {
        RecentUnit {
            unit: format!("u{i}"),
            job: "j".into(),
            outcome: "success".into(),
            millis: 1.0,
        }
    }

    #[test]
    fn keeps_bounded_history_and_counts() {
        let t0 = Instant::now();
        let board = StatusBoard::new(t0);
        for i in 0..200 {
            board.record(unit(i), t0 + Duration::from_millis(i as u64 * 50)); // 20/s for 10 s
        }
        let now = t0 + Duration::from_secs(10);
        let (points, rate, recent, total) = board.view(now);
        assert_eq!(total, 200);
        assert_eq!(recent.len(), RECENT_UNITS);
        assert_eq!(recent[0].unit, "u199");
        // The history covers the time since start: buckets 0, 1 and the current one.
        assert_eq!(points.len(), 3);
        assert!((rate - 20.0).abs() < 2.5, "rate {rate}");
        let full: Vec<_> = points.iter().filter(|p| p.rate > 0.0).collect();
        assert_eq!(full.len(), 2, "{full:?}");
        assert!(full.iter().all(|p| (p.rate - 20.0).abs() < 0.01));
        // An hour later everything has scrolled out of the chart but the total remains.
        let (points, rate, _, total) = board.view(now + Duration::from_secs(3600));
        assert_eq!(points.len(), BUCKETS, "never more than the last {BUCKETS} buckets");
        assert!(points.iter().all(|p| p.rate == 0.0));
        assert_eq!(rate, 0.0);
        assert_eq!(total, 200);
    }
}
