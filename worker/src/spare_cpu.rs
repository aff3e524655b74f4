//! Spare-CPU sensing: how many cores this machine can give Ova right now.
//!
//! `spare = min(cap, cores not busy with other work)`, where
//!
//! - `cap = min(--cores, machine cores, floor(machine cores × --cpu-limit / 100))`;
//! - "other work" is the machine's busy time (from `/proc/stat`) minus the time used by Ova's
//!   own processes (this process and its executor children, from `/proc/PID/stat`), so running
//!   units never make the worker shrink its own offer;
//! - with `--idle-only`, spare is `cap` while other work stays under a small threshold and 0
//!   otherwise.
//!
//! Hysteresis, so short spikes do not thrash the advertised value: background noise below
//! `noise_cores` does not cost a whole core, and a new value is only adopted after it has been
//! wanted for `shrink_after` consecutive samples (going down) or `grow_after` samples (going
//! up, slower). A spike shorter than `shrink_after` samples changes nothing. When going down,
//! the least reduction seen during the run is taken; when going up, the least increase.
//! (An exponential average was tried first: it stretches a one-sample spike over several
//! samples and so defeats the consecutive-sample rule.)
//!
//! [`SpareCpu`] is pure (fed [`CpuSample`]s), so it is tested with synthetic samples;
//! [`read_sample`] reads the real counters on Linux.

use std::io;

/// Cumulative CPU counters at one instant, in clock ticks summed over all cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// All time (busy + idle).
    pub total: u64,
    /// Idle time (idle + iowait).
    pub idle: u64,
    /// Time used by Ova's own processes (user + system).
    pub own: u64,
}

/// Options (`--cores`, `--cpu-limit`, `--idle-only`) and tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct SpareCpuConfig {
    /// Most cores to offer (`--cores`); `None`: all.
    pub cores: Option<u16>,
    /// Most share of the machine to use, in percent (`--cpu-limit`), 1–100.
    pub cpu_limit_pct: Option<u8>,
    /// Offer cores only while the machine is otherwise idle (`--idle-only`).
    pub idle_only: bool,
    /// Other work below this many cores does not cost a core.
    pub noise_cores: f64,
    /// With `idle_only`: other work above this many cores means "not idle".
    pub idle_threshold_cores: f64,
    /// Samples a lower value must persist before it is adopted.
    pub shrink_after: u32,
    /// Samples a higher value must persist before it is adopted.
    pub grow_after: u32,
}

impl Default for SpareCpuConfig {
    fn default() -> Self {
        Self {
            cores: None,
            cpu_limit_pct: None,
            idle_only: false,
            noise_cores: 0.3,
            idle_threshold_cores: 0.25,
            shrink_after: 3,
            grow_after: 5,
        }
    }
}

/// The spare-core estimator.
#[derive(Debug, Clone)]
pub struct SpareCpu {
    config: SpareCpuConfig,
    machine_cores: u16,
    prev: Option<CpuSample>,
    other: Option<f64>,
    current: Option<u16>,
    /// (direction is up, samples in the run, best value in the run)
    pending: Option<(bool, u32, u16)>,
}

impl SpareCpu {
    /// An estimator for a machine with `machine_cores` cores.
    pub fn new(config: SpareCpuConfig, machine_cores: u16) -> Self {
        Self {
            config,
            machine_cores: machine_cores.max(1),
            prev: None,
            other: None,
            current: None,
            pending: None,
        }
    }

    /// The most this machine will ever offer under the options.
    pub fn cap(&self) -> u16 {
        let mut cap = self.machine_cores;
        if let Some(c) = self.config.cores {
            cap = cap.min(c);
        }
        if let Some(pct) = self.config.cpu_limit_pct {
            let pct = u32::from(pct.clamp(1, 100));
            let limited = u32::from(self.machine_cores) * pct / 100;
            cap = cap.min(u16::try_from(limited).unwrap_or(u16::MAX));
        }
        cap
    }

    /// Cores offered now (before the first measurement: 0).
    pub fn spare(&self) -> u16 {
        self.current.unwrap_or(0)
    }

    /// Cores busy with other work in the last interval, once measured.
    pub fn other_busy(&self) -> Option<f64> {
        self.other
    }

    /// Feeds a sample; returns the new spare value when it changed.
    pub fn update(&mut self, sample: CpuSample) -> Option<u16> {
        let prev = self.prev.replace(sample)?;
        let total = sample.total.saturating_sub(prev.total);
        if total == 0 {
            return None;
        }
        let idle = sample.idle.saturating_sub(prev.idle).min(total);
        let own = sample.own.saturating_sub(prev.own);
        let other_ticks = (total - idle).saturating_sub(own);
        let other = other_ticks as f64 / total as f64 * f64::from(self.machine_cores);
        self.other = Some(other);
        let target = self.target(other);
        let Some(current) = self.current else {
            self.current = Some(target);
            return Some(target);
        };
        if target == current {
            self.pending = None;
            return None;
        }
        let up = target > current;
        let (count, best) = match self.pending {
            Some((dir, n, best)) if dir == up => {
                (n + 1, if up { best.min(target) } else { best.max(target) })
            }
            _ => (1, target),
        };
        let needed = if up { self.config.grow_after } else { self.config.shrink_after };
        if count >= needed.max(1) {
            self.pending = None;
            self.current = Some(best);
            Some(best)
        } else {
            self.pending = Some((up, count, best));
            None
        }
    }

    /// The value wanted for `other` cores of other work, before hysteresis.
    fn target(&self, other: f64) -> u16 {
        let cap = self.cap();
        if self.config.idle_only {
            return if other > self.config.idle_threshold_cores { 0 } else { cap };
        }
        let free = f64::from(self.machine_cores) - other + self.config.noise_cores;
        let free = free.floor().clamp(0.0, f64::from(self.machine_cores));
        cap.min(free as u16)
    }
}

/// Parses `/proc/stat`'s aggregate `cpu` line: (total ticks, idle + iowait ticks).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> =
        line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice — already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Parses `/proc/PID/stat`: the process's user + system ticks.
///
/// The command name (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15) → indices 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads a sample from `/proc`, counting `own_pids` (and this process) as Ova's own work.
/// Processes that have exited are skipped.
pub fn read_sample(own_pids: &[u32]) -> io::Result<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let (total, idle) = parse_proc_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat"))?;
    let mut own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_pid_stat(&t))
        .unwrap_or(0);
    let me = std::process::id();
    for pid in own_pids.iter().filter(|p| **p != me) {
        if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_pid_stat(&t))
        {
            own += t;
        }
    }
    Ok(CpuSample { total, idle, own })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine of `cores` cores, sampled every 100 ticks per core.
    struct Synth {
        cores: u64,
        s: CpuSample,
    }

    impl Synth {
        fn new(cores: u64) -> Self {
            Self { cores, s: CpuSample { total: 0, idle: 0, own: 0 } }
        }
        /// One interval with `other` and `own` cores busy.
        fn step(&mut self, other: f64, own: f64) -> CpuSample {
            let total = 100 * self.cores;
            let busy = ((other + own) * 100.0) as u64;
            self.s.total += total;
            self.s.idle += total - busy.min(total);
            self.s.own += (own * 100.0) as u64;
            self.s
        }
    }

    fn run(sc: &mut SpareCpu, m: &mut Synth, other: f64, own: f64, n: usize) -> u16 {
        for _ in 0..n {
            sc.update(m.step(other, own));
        }
        sc.spare()
    }

    #[test]
    fn idle_machine_offers_the_cap() {
        let mut m = Synth::new(8);
        let mut sc = SpareCpu::new(SpareCpuConfig::default(), 8);
        assert_eq!(sc.spare(), 0);
        assert_eq!(run(&mut sc, &mut m, 0.1, 0.0, 2), 8);
        let cfg = SpareCpuConfig { cores: Some(3), ..Default::default() };
        let mut sc = SpareCpu::new(cfg, 8);
        assert_eq!(run(&mut sc, &mut Synth::new(8), 0.0, 0.0, 2), 3);
        let cfg = SpareCpuConfig { cpu_limit_pct: Some(50), ..Default::default() };
        let mut sc = SpareCpu::new(cfg, 8);
        assert_eq!(sc.cap(), 4);
        assert_eq!(run(&mut sc, &mut Synth::new(8), 0.0, 0.0, 2), 4);
        let cfg = SpareCpuConfig { cores: Some(6), cpu_limit_pct: Some(25), ..Default::default() };
        assert_eq!(SpareCpu::new(cfg, 8).cap(), 2);
    }

    #[test]
    fn other_work_reduces_spare_but_our_own_does_not() {
        let mut m = Synth::new(8);
        let mut sc = SpareCpu::new(SpareCpuConfig::default(), 8);
        run(&mut sc, &mut m, 0.0, 0.0, 2);
        // Our executor using 6 cores: still 8 spare (they are ours to give).
        assert_eq!(run(&mut sc, &mut m, 0.0, 6.0, 20), 8);
        // Someone else using 3 cores for a while: 5 spare.
        assert_eq!(run(&mut sc, &mut m, 3.0, 0.0, 20), 5);
        // Both: other work is what counts.
        assert_eq!(run(&mut sc, &mut m, 3.0, 4.0, 20), 5);
    }

    #[test]
    fn short_spikes_do_not_thrash() {
        let mut m = Synth::new(4);
        let mut sc = SpareCpu::new(SpareCpuConfig::default(), 4);
        run(&mut sc, &mut m, 0.0, 0.0, 3);
        assert_eq!(sc.spare(), 4);
        let mut changes = 0;
        // A one-sample spike to all cores, every fourth sample.
        for i in 0..40 {
            let other = if i % 4 == 0 { 4.0 } else { 0.0 };
            if sc.update(m.step(other, 0.0)).is_some() {
                changes += 1;
            }
        }
        assert_eq!(changes, 0, "spare moved to {}", sc.spare());
        assert_eq!(sc.spare(), 4);
        // Sustained load does shrink it, after a few samples, and it grows back slower.
        assert_eq!(run(&mut sc, &mut m, 4.0, 0.0, 2), 4);
        assert_eq!(run(&mut sc, &mut m, 4.0, 0.0, 10), 0);
        assert_eq!(run(&mut sc, &mut m, 0.0, 0.0, 4), 0);
        assert_eq!(run(&mut sc, &mut m, 0.0, 0.0, 20), 4);
    }

    #[test]
    fn idle_only_is_all_or_nothing() {
        let cfg = SpareCpuConfig { idle_only: true, cores: Some(2), ..Default::default() };
        let mut m = Synth::new(4);
        let mut sc = SpareCpu::new(cfg, 4);
        assert_eq!(run(&mut sc, &mut m, 0.0, 3.0, 3), 2, "our own load keeps us idle");
        assert_eq!(run(&mut sc, &mut m, 1.0, 0.0, 20), 0);
        assert_eq!(run(&mut sc, &mut m, 0.0, 0.0, 20), 2);
    }

    #[test]
    fn counters_going_backwards_or_standing_still_are_harmless() {
        let mut sc = SpareCpu::new(SpareCpuConfig::default(), 2);
        let s = CpuSample { total: 1000, idle: 900, own: 0 };
        assert_eq!(sc.update(s), None);
        assert_eq!(sc.update(s), None);
        assert_eq!(sc.update(CpuSample { total: 10, idle: 20, own: 50 }), None);
        assert_eq!(sc.update(CpuSample { total: 210, idle: 400, own: 0 }), Some(2));
    }

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 50 2 25 400 10 0 1 1 0 0\nintr 1\n";
        assert_eq!(parse_proc_stat(stat), Some((981, 820)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        let pid = "1234 (ova worker (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 8 0";
        assert_eq!(parse_pid_stat(pid), Some(100));
        assert_eq!(parse_pid_stat("garbage"), None);
        if cfg!(target_os = "linux") {
            let s = read_sample(&[u32::MAX]).unwrap();
            assert!(s.total >= s.idle);
        }
    }
}
