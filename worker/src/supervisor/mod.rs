//! The production executor: units run check-free in supervised child processes, one
//! single-threaded child per core ([`ShardedExecutor`]; why one per core: `shards`).
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
//! A child that dies on its own (a host bug, the OOM killer) is restarted too. Every unit that
//! had been sent to it is charged with the crash — a unit that kills the child before it is
//! reported as started is as guilty as one that runs for a while — and becomes a *suspect*:
//! suspects are re-run one at a time, alone in the child, before anything else is sent, so
//! the next crash is the fault of the one unit in it and innocents caught in a crash finish.
//! A unit charged more than [`SupervisorConfig::max_crashes`] times fails with
//! [`Outcome::Failed`]. Crashes in a row with no unit finished in between delay each restart
//! more ([`RESTART_BACKOFF`]), so a child that cannot stay up does not spin a core.
//!
//! Each side's first frame is an [`ipc::Hello`]; a child of another build (other frames,
//! other results) is refused with a clear error — [`SupervisedExecutor::start`] fails, and
//! later every unit fails with the reason — rather than restarted forever.
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
use crate::sandbox::UnitRequest;

mod child;
mod shards;

pub use child::{BATCH_BYTES, REPORT_STARTED_AFTER, TICK, child_main};
pub use shards::ShardedExecutor;

/// The delay before the second restart in a row with no unit finished in between; it doubles
/// with each further one, up to [`RESTART_BACKOFF_MAX`]. The first restart is immediate.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(50);
/// The longest delay before a restart.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Children in a row that exit before their hello before the supervisor gives up.
pub const MAX_SILENT_CHILDREN: u32 = 3;
/// How long a child may take to say hello, by default ([`SupervisorConfig::hello_timeout`]).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// How long a child may take to say hello: at start ([`SupervisedExecutor::start`] fails)
    /// and after every restart (the watchdog kills it and counts it as a silent child).
    pub hello_timeout: Duration,
    /// Niceness the child sets for itself before it starts its threads (Unix; 0: that of
    /// this process). A worker's children run at 19, the lowest priority, as volunteer
    /// computing clients do: the owner's programs get the CPU back at once, before the
    /// spare-CPU sensor has even noticed them, and units lose nothing on an idle machine.
    pub nice: i32,
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
            hello_timeout: HELLO_TIMEOUT,
            nice: 0,
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
    /// Not sent to the current child yet.
    Queued,
    /// Sent: the child may be running it (starts shorter than [`REPORT_STARTED_AFTER`] are
    /// never reported).
    Sent,
    Compiling(Instant),
    Running(Instant),
}

struct Inflight {
    req: UnitRequest,
    done: Completion,
    phase: UnitPhase,
    crashes: u8,
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
    /// The current child's hello arrived and was ours.
    greeted: bool,
    /// When the current child must have said hello (the watchdog kills it then).
    hello_by: Option<Instant>,
    /// Units to send to the child (sequence numbers), held while suspects run.
    outbox: Vec<u64>,
    /// Units caught in a crash, to be run alone one after the other, before the outbox.
    suspects: std::collections::VecDeque<u64>,
    /// The suspect now alone in the child.
    isolated: Option<u64>,
    inflight: HashMap<u64, Inflight, Fast>,
    sent_modules: HashSet<BlobId, Fast>,
    misbehaved: HashSet<BlobId, Fast>,
    uncompilable: HashSet<BlobId, Fast>,
    next_seq: u64,
    /// When the watchdog will next wake on its own (`None`: only when notified).
    watchdog_wakes: Option<Instant>,
    /// A restart waiting out its backoff (the watchdog does it then).
    restart_at: Option<Instant>,
    /// Crashes since a unit last finished.
    crash_streak: u32,
    /// Children in a row that ended before their hello.
    silent_children: u32,
    /// Why no child can be used (another build, or none stays up): every unit fails with it.
    fatal: Option<String>,
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
    /// Starts the child and the watchdog, and waits for the child's hello: an error if the
    /// program cannot be started, is not an `ova-executor` of this very build, or keeps
    /// exiting before it says hello.
    pub fn start(config: SupervisorConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                generation: 0,
                child: None,
                greeted: false,
                hello_by: None,
                outbox: Vec::new(),
                suspects: Default::default(),
                isolated: None,
                inflight: HashMap::default(),
                sent_modules: HashSet::default(),
                misbehaved: HashSet::default(),
                uncompilable: HashSet::default(),
                next_seq: 0,
                watchdog_wakes: None,
                restart_at: None,
                crash_streak: 0,
                silent_children: 0,
                fatal: None,
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
        let exec = Self { shared };
        let sh = &exec.shared;
        let mut st = sh.lock();
        let hello_timeout = sh.config.hello_timeout;
        let give_up_at = Instant::now() + hello_timeout;
        while !st.greeted && st.fatal.is_none() {
            let Some(left) = give_up_at.checked_duration_since(Instant::now()) else {
                let program = sh.config.program.display();
                let why = format!("{program} said no hello within {hello_timeout:?}");
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
            };
            // A timer wait, bounding the start; the hello (or its failure) notifies.
            st = sh.watch_cv.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        if let Some(why) = &st.fatal {
            return Err(std::io::Error::other(why.clone()));
        }
        drop(st);
        Ok(exec)
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

/// The delay before restarting a child that is the `streak`-th to die with no unit finished
/// since the first of them: none for the first, then [`RESTART_BACKOFF`] doubling up to
/// [`RESTART_BACKOFF_MAX`].
fn backoff(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => RESTART_BACKOFF.saturating_mul(1 << (n - 2).min(16)).min(RESTART_BACKOFF_MAX),
    }
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
        if let Some(why) = &st.fatal {
            let r = failed(req.unit, req.determinism, why);
            return Err(Box::new((done, r)));
        }
        if st.uncompilable.contains(&module) {
            let t = Outcome::Timeout {
                phase: Phase::Compile,
                deadline_ms: self.config.compile_timeout.as_millis() as u64,
            };
            let r = result_with(&req, t);
            return Err(Box::new((done, r)));
        }
        if st.child.is_none()
            && st.restart_at.is_none()
            && let Err(e) = self.spawn_child(st)
        {
            let msg = format!("cannot start executor: {e}");
            return Err(Box::new((done, failed(req.unit, req.determinism, &msg))));
        }
        req.epoch_guard |= st.misbehaved.contains(&module);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.inflight.insert(seq, Inflight { req, done, phase: UnitPhase::Queued, crashes: 0 });
        st.outbox.push(seq);
        Ok(())
    }

    /// Starts a child for a new generation, with reader and writer threads, and queues every
    /// in-flight unit for it: suspects (units caught in a crash) to run alone first.
    fn spawn_child(self: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        let c = &self.config;
        let mut cmd = Command::new(&c.program);
        cmd.arg("--threads").arg(c.threads.to_string());
        if c.nice != 0 {
            cmd.arg("--nice").arg(c.nice.to_string());
        }
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
        st.greeted = false;
        st.hello_by = Some(Instant::now() + c.hello_timeout);
        // The watchdog may be asleep until a later deadline: it must wake for this one.
        self.watch_cv.notify_all();
        st.restart_at = None;
        st.sent_modules.clear();
        st.outbox.clear();
        st.suspects.clear();
        st.isolated = None;
        let mut seqs: Vec<u64> = st.inflight.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let inf = st.inflight.get_mut(&seq).expect("listed");
            inf.phase = UnitPhase::Queued;
            if inf.crashes > 0 {
                st.suspects.push_back(seq);
            } else {
                st.outbox.push(seq);
            }
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
        ipc::encode_into(&mut buf, &ToChild::Hello(ipc::Hello::ours(ipc::Role::Supervisor)));
        loop {
            if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                return; // the child is gone; the reader handles it
            }
            buf.clear();
            let mut st = self.lock();
            // A suspect runs alone: nothing is sent while it is in the child, and the outbox
            // waits until every suspect has had its turn.
            let ready = |st: &State| {
                st.isolated.is_none() && !(st.suspects.is_empty() && st.outbox.is_empty())
            };
            while !ready(&st) && st.generation == generation && !st.shutdown {
                st = self.outbox_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.generation != generation || st.shutdown {
                return;
            }
            let st = &mut *st;
            if let Some(seq) = st.suspects.pop_front() {
                if self.encode_run(st, seq, &mut buf) {
                    st.isolated = Some(seq);
                }
            } else {
                let mut outbox = std::mem::take(&mut st.outbox);
                for seq in outbox.drain(..) {
                    self.encode_run(st, seq, &mut buf);
                }
                // Hand the (now empty) vector back, keeping its capacity for the next batch.
                if st.outbox.is_empty() {
                    st.outbox = outbox;
                }
            }
        }
    }

    /// Appends the frames that run unit `seq` (its module first, if this child has not had
    /// it) to `buf` and marks it sent; `false` if it is no longer in flight.
    fn encode_run(&self, st: &mut State, seq: u64, buf: &mut Vec<u8>) -> bool {
        let Some(inf) = st.inflight.get_mut(&seq) else { return false };
        inf.phase = UnitPhase::Sent;
        let r = &inf.req;
        if st.sent_modules.insert(r.module.id()) {
            ipc::encode_into(buf, &ToChild::Module { bytes: Cow::Borrowed(r.module.bytes()) });
        }
        ipc::encode_into(
            buf,
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
        true
    }

    fn reader(self: Arc<Self>, generation: u64, stdout: ChildStdout) {
        let mut input = BufReader::with_capacity(1 << 16, stdout);
        let mut buf = Vec::new();
        if !self.greet(generation, &mut input, &mut buf) {
            return;
        }
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
                        st.crash_streak = 0;
                        if st.isolated == Some(seq) {
                            st.isolated = None;
                            self.outbox_cv.notify_all();
                        }
                    }
                    // Only the first frame is a hello.
                    FromChild::Hello(_) => ended = true,
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

    /// Reads the child's first frame, its hello: `true` if it is an `ova-executor` of this
    /// build. Otherwise no unit has run in it: a child of another build makes the supervisor
    /// give up ([`State::fatal`]), one that ended first is restarted (up to
    /// [`MAX_SILENT_CHILDREN`] in a row) without charging anyone.
    fn greet(
        self: &Arc<Self>,
        generation: u64,
        input: &mut BufReader<ChildStdout>,
        buf: &mut Vec<u8>,
    ) -> bool {
        let hello = match ipc::read_frame::<_, FromChild>(input, buf) {
            Ok(Some(FromChild::Hello(h))) => Some(h.check(ipc::Role::Executor)),
            Ok(Some(_)) => Some(Err("a frame other than a hello".into())),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Some(Err(format!("unreadable first frame ({e})")))
            }
            Ok(None) | Err(_) => None,
        };
        let mut st = self.lock();
        if st.generation != generation || st.shutdown {
            return false;
        }
        let mut done = Vec::new();
        let greeted = match hello {
            Some(Ok(())) => {
                st.greeted = true;
                st.hello_by = None;
                st.silent_children = 0;
                true
            }
            Some(Err(why)) => {
                let program = self.config.program.display();
                let why = format!("{program} is not an ova-executor of this build: {why}");
                self.give_up(&mut st, why, &mut done);
                false
            }
            None => {
                st.silent_children += 1;
                if st.silent_children >= MAX_SILENT_CHILDREN {
                    let why = format!(
                        "{} exited before its hello {} times in a row",
                        self.config.program.display(),
                        st.silent_children
                    );
                    self.give_up(&mut st, why, &mut done);
                } else {
                    done.extend(self.child_crashed(&mut st));
                }
                false
            }
        };
        drop(st);
        self.watch_cv.notify_all();
        finish(done);
        greeted
    }

    /// No child can be used: kills this one and fails every unit, now and later, with `why`.
    fn give_up(&self, st: &mut State, why: String, done: &mut Finished) {
        tracing::error!("{why}");
        if let Some(mut c) = st.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, inf) in st.inflight.drain() {
            done.push((inf.done, failed(inf.req.unit, inf.req.determinism, &why)));
        }
        st.outbox.clear();
        st.suspects.clear();
        st.restart_at = None;
        st.fatal = Some(why);
        // This child's writer (and reader) end.
        st.generation += 1;
        self.outbox_cv.notify_all();
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

    /// The child died on its own: charge every unit it had been sent (nothing, if it never
    /// said hello: it ran none), fail those charged too often, and restart it — at once after
    /// a unit finished since the last crash, else after a growing delay.
    fn child_crashed(self: &Arc<Self>, st: &mut State) -> Finished {
        if let Some(mut c) = st.child.take() {
            let _ = c.kill();
            let status = c.wait();
            tracing::warn!(?status, "executor process died; restarting it");
        }
        let mut done = Vec::new();
        let max = self.config.max_crashes;
        let ran = st.greeted;
        let doomed: Vec<u64> = st
            .inflight
            .iter_mut()
            .filter(|(_, inf)| ran && !matches!(inf.phase, UnitPhase::Queued))
            .filter_map(|(seq, inf)| {
                inf.crashes = inf.crashes.saturating_add(1);
                (inf.crashes > max).then_some(*seq)
            })
            .collect();
        for seq in doomed {
            let inf = st.inflight.remove(&seq).expect("listed");
            let msg = match inf.crashes {
                1 => "the executor process died with this unit in it".to_string(),
                n => format!(
                    "the executor process died {n} times with this unit in it, the last {} \
                     times with this unit alone",
                    n - 1
                ),
            };
            done.push((inf.done, failed(inf.req.unit, inf.req.determinism, &msg)));
        }
        // Nothing runs until the next child: no deadlines to watch meanwhile.
        for inf in st.inflight.values_mut() {
            inf.phase = UnitPhase::Queued;
        }
        st.restarts += 1;
        st.crash_streak += 1;
        match backoff(st.crash_streak) {
            Duration::ZERO => self.restart_or_fail(st, &mut done),
            delay => {
                // The watchdog restarts it when the delay is over.
                st.restart_at = Some(Instant::now() + delay);
                self.watch_cv.notify_all();
            }
        }
        done
    }

    fn restart_or_fail(self: &Arc<Self>, st: &mut State, done: &mut Finished) {
        if let Err(e) = self.spawn_child(st) {
            let msg = format!("cannot restart the executor: {e}");
            st.restart_at = None;
            for (_, inf) in st.inflight.drain() {
                done.push((inf.done, failed(inf.req.unit, inf.req.determinism, &msg)));
            }
        }
    }

    fn deadline_of(&self, inf: &Inflight) -> Option<(Instant, Phase)> {
        match inf.phase {
            UnitPhase::Queued | UnitPhase::Sent => None,
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
            if st.restart_at.is_some_and(|at| at <= now) {
                let mut done = Vec::new();
                self.restart_or_fail(&mut st, &mut done);
                drop(st);
                finish(done);
                st = self.lock();
                continue;
            }
            let mut next: Option<Instant> = st.restart_at;
            // A child that hangs before its hello would hold every unit sent to it: kill it;
            // its reader then sees it end before its hello (restarted, or given up on).
            if let Some(by) = st.hello_by.filter(|_| !st.greeted) {
                if by <= now {
                    st.hello_by = None;
                    tracing::warn!("the executor said no hello in time; killing it");
                    if let Some(c) = st.child.as_mut() {
                        let _ = c.kill();
                    }
                } else {
                    next = Some(next.map_or(by, |n| n.min(by)));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_only_while_nothing_finishes() {
        assert_eq!(backoff(1), Duration::ZERO, "the first crash restarts at once");
        assert_eq!(backoff(2), RESTART_BACKOFF);
        assert_eq!(backoff(3), RESTART_BACKOFF * 2);
        assert_eq!(backoff(4), RESTART_BACKOFF * 4);
        assert_eq!(backoff(40), RESTART_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RESTART_BACKOFF_MAX);
    }
}
