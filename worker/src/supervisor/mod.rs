//! The production executor: units run check-free in a supervised child process.
//!
//! # Why a child process
//!
//! A runaway unit must not hold a core past its deadline, but the in-process ways to stop
//! wasm — epoch interruption or fuel — put a check in every loop, which costs 12–38 % on
//! tight loops here (`shared/notes/wasmtime.md`; `benches/executor.rs` prints our own figures
//! side by side). Wasmtime cannot preempt code compiled without checks, but the OS can kill a
//! process. So:
//!
//! - the `ova-executor` child runs units on its rayon pool with **no** per-loop checks;
//! - it reports when each unit starts compiling ([`FromChild::Compiling`]) and running
//!   ([`FromChild::Started`]); the supervisor's watchdog keeps the earliest deadline;
//! - when a unit passes its deadline, the watchdog SIGKILLs the child, reports
//!   [`Outcome::Timeout`] for that unit, restarts the child (which reloads compiled code from the
//!   on-disk cache in milliseconds) and re-sends every other in-flight unit — those were
//!   innocent, and units are pure, so re-running them is safe;
//! - the offending module is marked *misbehaved*: its later units run with epoch checks
//!   ([`UnitRequest::epoch_guard`]), so one bad job pays the check cost and cannot kill the
//!   child again (a guarded unit gets a grace period before the watchdog steps in, e.g. if it
//!   is stuck in a host call);
//! - a module that cannot compile within [`SupervisorConfig::compile_timeout`] is remembered
//!   as uncompilable on this peer: its units time out (phase "compile") without retrying.
//!
//! A child that dies on its own (a host bug, the OOM killer) is restarted too; units in flight
//! are retried up to [`SupervisorConfig::max_crashes`] times, then fail with
//! [`Outcome::Failed`].
//!
//! Cost on well-behaved units: one small frame each way per unit over pipes, batched. The
//! supervisor's writer sends whatever has accumulated; the child's pool threads take a batch of
//! requests in order; the thread that finishes a unit writes its result itself (or leaves it to the
//! thread already writing, which sends it along), so no thread is woken per result; while more
//! units are queued, results gather (until the next [`TICK`] at most) to share one write; and
//! only a unit still running after [`REPORT_STARTED_AFTER`] is reported as started (its
//! deadline backdated to its real start) — a shorter one is reported by its `Done` alone.
//! Measured by the P2 benchmark.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ova_jobs::{BlobId, Outcome, Phase, UnitResult};

use crate::executor::{Completion, Executor, failed};
use crate::ipc::{self, FromChild, ToChild};
use crate::sandbox::{ModuleSource, UnitRequest};

mod child;

pub use child::{BATCH_BYTES, REPORT_STARTED_AFTER, TICK, child_main};

/// Name of the executor binary, installed next to `ova`.
pub const EXECUTOR_BIN: &str = "ova-executor";

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Threads in the child's pool (cores used).
    pub threads: usize,
    /// The `ova-executor` program.
    pub program: PathBuf,
    /// Compiled-code cache directory for the child (kept across restarts).
    pub cache_dir: Option<PathBuf>,
    /// Longest time compiling one module may take.
    pub compile_timeout: Duration,
    /// Extra time an epoch-guarded unit gets before the watchdog kills the child anyway.
    pub guard_grace: Duration,
    /// How many child crashes one unit may be caught in before it fails.
    pub max_crashes: u8,
}

impl SupervisorConfig {
    /// Settings for `threads` cores, with the executor program found by [`find_executor`].
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            program: find_executor(),
            cache_dir: None,
            compile_timeout: Duration::from_secs(60),
            guard_grace: Duration::from_secs(1),
            max_crashes: 2,
        }
    }
}

/// Where `ova-executor` is: `$OVA_EXECUTOR`, else beside the current executable (or one level
/// up, for test binaries in `target/*/deps`), else `ova-executor` on `PATH`.
pub fn find_executor() -> PathBuf {
    if let Some(p) = std::env::var_os("OVA_EXECUTOR") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join(EXECUTOR_BIN);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(EXECUTOR_BIN)
}

#[derive(Clone, Copy)]
enum UnitPhase {
    Queued,
    Compiling(Instant),
    Running(Instant),
}

struct Inflight {
    req: UnitRequest,
    done: Completion,
    phase: UnitPhase,
    crashes: u8,
}

enum Outgoing {
    Module(Arc<ModuleSource>),
    Run(u64),
}

/// A cheap hasher for keys that are already uniformly distributed: sequence numbers and
/// content hashes ([`BlobId`]s are BLAKE3 digests), looked up several times per unit.
#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        // A multiplicative finaliser, so that sequential numbers spread over the buckets.
        (self.0 ^ (self.0 >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type Fast = BuildHasherDefault<FoldHasher>;

struct State {
    generation: u64,
    child: Option<Child>,
    outbox: Vec<Outgoing>,
    inflight: HashMap<u64, Inflight, Fast>,
    sent_modules: HashSet<BlobId, Fast>,
    misbehaved: HashSet<BlobId, Fast>,
    uncompilable: HashSet<BlobId, Fast>,
    next_seq: u64,
    /// When the watchdog will next wake on its own (`None`: only when notified).
    watchdog_wakes: Option<Instant>,
    shutdown: bool,
    restarts: u64,
}

struct Shared {
    config: SupervisorConfig,
    state: Mutex<State>,
    /// Wakes the writer (outbox) and the watchdog (deadlines changed, shutdown).
    outbox_cv: Condvar,
    watch_cv: Condvar,
}

/// Runs units in a supervised `ova-executor` child process; see the module docs.
pub struct SupervisedExecutor {
    shared: Arc<Shared>,
}

type Finished = Vec<(Completion, UnitResult)>;

impl SupervisedExecutor {
    /// Starts the child and the watchdog.
    pub fn start(config: SupervisorConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                generation: 0,
                child: None,
                outbox: Vec::new(),
                inflight: HashMap::default(),
                sent_modules: HashSet::default(),
                misbehaved: HashSet::default(),
                uncompilable: HashSet::default(),
                next_seq: 0,
                watchdog_wakes: None,
                shutdown: false,
                restarts: 0,
            }),
            outbox_cv: Condvar::new(),
            watch_cv: Condvar::new(),
        });
        {
            let mut st = shared.lock();
            shared.spawn_child(&mut st)?;
        }
        let s = shared.clone();
        std::thread::Builder::new().name("ova-watchdog".into()).spawn(move || s.watchdog())?;
        Ok(Self { shared })
    }

    /// How many times the child has been restarted (after a timeout or a crash).
    pub fn restarts(&self) -> u64 {
        self.shared.lock().restarts
    }

    /// The process id of the current executor child, if one is running (spare-CPU sensing
    /// counts its CPU time as Ova's own, not as the owner's work).
    pub fn child_pid(&self) -> Option<u32> {
        self.shared.lock().child.as_ref().map(Child::id)
    }

    /// Whether `module` has timed out here and now runs with epoch checks.
    pub fn is_misbehaved(&self, module: &BlobId) -> bool {
        self.shared.lock().misbehaved.contains(module)
    }
}

impl Drop for SupervisedExecutor {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.shutdown = true;
        if let Some(mut c) = st.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        st.inflight.clear();
        drop(st);
        self.shared.outbox_cv.notify_all();
        self.shared.watch_cv.notify_all();
    }
}

impl Executor for SupervisedExecutor {
    fn submit(&self, req: UnitRequest, done: Completion) {
        self.submit_batch(vec![(req, done)]);
    }

    fn submit_batch(&self, batch: Vec<(UnitRequest, Completion)>) {
        let sh = &self.shared;
        let mut refused: Finished = Vec::new();
        let mut st = sh.lock();
        let was_empty = st.outbox.is_empty();
        for (req, done) in batch {
            if let Err(r) = sh.enqueue(&mut st, req, done) {
                refused.push(*r);
            }
        }
        let wake = was_empty && !st.outbox.is_empty();
        drop(st);
        if wake {
            sh.outbox_cv.notify_all();
        }
        finish(refused);
    }

    fn cores(&self) -> usize {
        self.shared.config.threads
    }
}

fn result_with(req: &UnitRequest, outcome: Outcome) -> UnitResult {
    let mut r = failed(req.unit, req.determinism, "");
    r.result_hash = ova_jobs::ResultHash::compute(&outcome, &[]);
    r.outcome = outcome;
    r
}

fn finish(done: Finished) {
    for (d, r) in done {
        d(r);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one unit for the child, or hands it back with the result it gets at once.
    fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        mut req: UnitRequest,
        done: Completion,
    ) -> Result<(), Box<(Completion, UnitResult)>> {
        let module = req.module.id();
        if st.uncompilable.contains(&module) {
            let t = Outcome::Timeout {
                phase: Phase::Compile,
                deadline_ms: self.config.compile_timeout.as_millis() as u64,
            };
            let r = result_with(&req, t);
            return Err(Box::new((done, r)));
        }
        if st.child.is_none()
            && let Err(e) = self.spawn_child(st)
        {
            let msg = format!("cannot start executor: {e}");
            return Err(Box::new((done, failed(req.unit, req.determinism, &msg))));
        }
        req.epoch_guard |= st.misbehaved.contains(&module);
        if st.sent_modules.insert(module) {
            st.outbox.push(Outgoing::Module(req.module.clone()));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.inflight.insert(seq, Inflight { req, done, phase: UnitPhase::Queued, crashes: 0 });
        st.outbox.push(Outgoing::Run(seq));
        Ok(())
    }

    /// Starts a child for a new generation, with reader and writer threads, and queues every
    /// in-flight unit (and its module) for it.
    fn spawn_child(self: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        let c = &self.config;
        let mut cmd = Command::new(&c.program);
        cmd.arg("--threads").arg(c.threads.to_string());
        if let Some(d) = &c.cache_dir {
            cmd.arg("--cache-dir").arg(d);
        }
        // Wasmtime errors (every `proc_exit` is one) capture a Rust backtrace when
        // RUST_BACKTRACE is set: +5 µs per exiting unit, for nothing.
        cmd.env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", c.program.display())))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        st.generation += 1;
        st.child = Some(child);
        st.sent_modules.clear();
        st.outbox.clear();
        let mut seqs: Vec<u64> = st.inflight.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let inf = st.inflight.get_mut(&seq).expect("listed");
            inf.phase = UnitPhase::Queued;
            let m = inf.req.module.clone();
            if st.sent_modules.insert(m.id()) {
                st.outbox.push(Outgoing::Module(m));
            }
            st.outbox.push(Outgoing::Run(seq));
        }
        let generation = st.generation;
        let (s1, s2) = (self.clone(), self.clone());
        std::thread::Builder::new()
            .name("ova-exec-writer".into())
            .spawn(move || s1.writer(generation, stdin))?;
        std::thread::Builder::new()
            .name("ova-exec-reader".into())
            .spawn(move || s2.reader(generation, stdout))?;
        self.outbox_cv.notify_all();
        Ok(())
    }

    fn writer(&self, generation: u64, stdin: ChildStdin) {
        let mut out = BufWriter::with_capacity(1 << 16, stdin);
        let mut buf = Vec::new();
        loop {
            let mut st = self.lock();
            while st.outbox.is_empty() && st.generation == generation && !st.shutdown {
                st = self.outbox_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.generation != generation || st.shutdown {
                return;
            }
            buf.clear();
            let mut outbox = std::mem::take(&mut st.outbox);
            for item in outbox.drain(..) {
                match item {
                    Outgoing::Module(m) => ipc::encode_into(
                        &mut buf,
                        &ToChild::Module { bytes: Cow::Borrowed(m.bytes()) },
                    ),
                    Outgoing::Run(seq) => {
                        let Some(inf) = st.inflight.get(&seq) else { continue };
                        let r = &inf.req;
                        ipc::encode_into(
                            &mut buf,
                            &ToChild::Run {
                                seq,
                                unit: r.unit,
                                module: r.module.id(),
                                input: Cow::Borrowed(&r.input),
                                args: Cow::Borrowed(&r.args),
                                limits: r.limits,
                                determinism: r.determinism,
                                epoch_guard: r.epoch_guard,
                            },
                        );
                    }
                }
            }
            // Hand the (now empty) vector back, keeping its capacity for the next batch.
            if st.outbox.is_empty() {
                st.outbox = outbox;
            }
            drop(st);
            if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                return; // the child is gone; the reader handles it
            }
        }
    }

    fn reader(self: Arc<Self>, generation: u64, stdout: ChildStdout) {
        let mut input = BufReader::with_capacity(1 << 16, stdout);
        let mut buf = Vec::new();
        let mut msgs = Vec::new();
        let mut done: Finished = Vec::new();
        loop {
            // Decode every frame already received (at least one), then take the lock once.
            let mut ended = false;
            loop {
                match ipc::read_frame::<_, FromChild>(&mut input, &mut buf) {
                    Ok(Some(m)) => msgs.push(m),
                    Ok(None) | Err(_) => {
                        ended = true;
                        break;
                    }
                }
                if input.buffer().is_empty() || msgs.len() >= 1024 {
                    break;
                }
            }
            let mut st = self.lock();
            if st.generation != generation || st.shutdown {
                return;
            }
            let now = Instant::now();
            for msg in msgs.drain(..) {
                match msg {
                    FromChild::Compiling { seq } => {
                        self.phase_changed(&mut st, seq, UnitPhase::Compiling(now))
                    }
                    FromChild::Started { seq, running_us } => {
                        let since =
                            now.checked_sub(Duration::from_micros(running_us)).unwrap_or(now);
                        self.phase_changed(&mut st, seq, UnitPhase::Running(since));
                    }
                    FromChild::Done { seq, result } => {
                        if let Some(inf) = st.inflight.remove(&seq) {
                            if matches!(result.outcome, Outcome::Timeout { .. }) {
                                st.misbehaved.insert(inf.req.module.id());
                            }
                            done.push((inf.done, *result));
                        }
                    }
                }
            }
            if ended {
                done.extend(self.child_crashed(&mut st));
            }
            drop(st);
            finish(std::mem::take(&mut done));
            if ended {
                return;
            }
        }
    }

    fn phase_changed(&self, st: &mut State, seq: u64, phase: UnitPhase) {
        if let Some(inf) = st.inflight.get_mut(&seq) {
            inf.phase = phase;
            // Wake the watchdog if this deadline comes before its next wake-up.
            let due = self.deadline_of(inf).map(|(at, _)| at);
            if let Some(due) = due
                && st.watchdog_wakes.is_none_or(|w| due < w)
            {
                st.watchdog_wakes = Some(due);
                self.watch_cv.notify_all();
            }
        }
    }

    /// The child died on its own: restart it and retry its units (up to `max_crashes`).
    fn child_crashed(self: &Arc<Self>, st: &mut State) -> Finished {
        if let Some(mut c) = st.child.take() {
            let _ = c.kill();
            let status = c.wait();
            tracing::warn!(?status, "executor process died; restarting it");
        }
        let mut done = Vec::new();
        let max = self.config.max_crashes;
        let doomed: Vec<u64> = st
            .inflight
            .iter_mut()
            .filter(|(_, inf)| !matches!(inf.phase, UnitPhase::Queued))
            .filter_map(|(seq, inf)| {
                inf.crashes += 1;
                (inf.crashes > max).then_some(*seq)
            })
            .collect();
        for seq in doomed {
            let inf = st.inflight.remove(&seq).expect("listed");
            let msg =
                format!("the executor process died {} times while running this unit", inf.crashes);
            done.push((inf.done, failed(inf.req.unit, inf.req.determinism, &msg)));
        }
        st.restarts += 1;
        self.restart_or_fail(st, &mut done);
        done
    }

    fn restart_or_fail(self: &Arc<Self>, st: &mut State, done: &mut Finished) {
        if let Err(e) = self.spawn_child(st) {
            let msg = format!("cannot restart the executor: {e}");
            for (_, inf) in st.inflight.drain() {
                done.push((inf.done, failed(inf.req.unit, inf.req.determinism, &msg)));
            }
        }
    }

    fn deadline_of(&self, inf: &Inflight) -> Option<(Instant, Phase)> {
        match inf.phase {
            UnitPhase::Queued => None,
            UnitPhase::Compiling(t) => Some((t + self.config.compile_timeout, Phase::Compile)),
            UnitPhase::Running(t) => {
                let mut d = Duration::from_millis(inf.req.limits.deadline_ms);
                if inf.req.epoch_guard {
                    d += self.config.guard_grace;
                }
                Some((t + d, Phase::Run))
            }
        }
    }

    fn watchdog(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return;
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut expired = Vec::new();
            for (seq, inf) in &st.inflight {
                if let Some((at, phase)) = self.deadline_of(inf) {
                    if at <= now {
                        expired.push((*seq, phase));
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
            if expired.is_empty() {
                st.watchdog_wakes = next;
                st = match next {
                    // A timer wait: the deadline itself is what we wait for.
                    Some(at) => {
                        self.watch_cv
                            .wait_timeout(st, at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => self.watch_cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                continue;
            }
            // A unit is past its deadline: kill the child, report the timeouts, re-run the rest.
            if let Some(mut c) = st.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let mut done = Vec::new();
            for (seq, phase) in expired {
                let inf = st.inflight.remove(&seq).expect("listed");
                let module = inf.req.module.id();
                let deadline_ms = match phase {
                    Phase::Compile => {
                        st.uncompilable.insert(module);
                        self.config.compile_timeout.as_millis() as u64
                    }
                    Phase::Run => {
                        st.misbehaved.insert(module);
                        inf.req.limits.deadline_ms
                    }
                };
                tracing::info!(module = %module.short(), ?phase, "unit past its deadline: restarting the executor");
                done.push((
                    inf.done,
                    result_with(&inf.req, Outcome::Timeout { phase, deadline_ms }),
                ));
            }
            // Units of a module that just became uncompilable time out too; the others (and
            // units of now-misbehaved modules, which now get epoch checks) are re-run.
            let uncompilable = st.uncompilable.clone();
            let misbehaved = st.misbehaved.clone();
            let stuck: Vec<u64> = st
                .inflight
                .iter()
                .filter(|(_, i)| uncompilable.contains(&i.req.module.id()))
                .map(|(s, _)| *s)
                .collect();
            for seq in stuck {
                let inf = st.inflight.remove(&seq).expect("listed");
                let t = Outcome::Timeout {
                    phase: Phase::Compile,
                    deadline_ms: self.config.compile_timeout.as_millis() as u64,
                };
                done.push((inf.done, result_with(&inf.req, t)));
            }
            for inf in st.inflight.values_mut() {
                inf.req.epoch_guard |= misbehaved.contains(&inf.req.module.id());
            }
            st.restarts += 1;
            self.restart_or_fail(&mut st, &mut done);
            drop(st);
            finish(done);
            st = self.lock();
        }
    }
}

/// Whether `path` looks like a usable executor program.
pub fn executor_available(path: &Path) -> bool {
    path.is_file() || which(path)
}

fn which(name: &Path) -> bool {
    name.components().count() == 1
        && std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}
