//! The `ova-executor` process's side of supervision: it reads requests on stdin, runs them on
//! its pool with no per-loop checks, and writes results — and which units have been running
//! long enough to need a deadline — on stdout, with as few writes and thread wake-ups per
//! unit as it can (see [`TICK`], [`REPORT_STARTED_AFTER`] and [`BATCH_BYTES`]).

use std::collections::HashMap;
use std::io::BufReader;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ova_jobs::manifest::MAX_OUTPUT_CAP_BYTES;
use ova_jobs::{BlobId, UnitResult};

use super::Fast;
use crate::executor::failed;
use crate::ipc::{self, FromChild, Hello, Role, ToChild};
use crate::sandbox::{ModuleSource, UnitRequest};

/// The `ova-executor` process: reads [`ToChild`] frames on stdin, runs units on a rayon pool,
/// writes [`FromChild`] frames on stdout. Arguments: `--threads N`, `--cache-dir DIR`.
pub fn child_main() -> std::io::Result<()> {
    use crate::executor::POOL_STACK_BYTES;
    use crate::sandbox::{Sandbox, SandboxConfig};

    let mut threads = 1usize;
    let mut config = SandboxConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            "--cache-dir" => config.cache_dir = args.next().map(PathBuf::from),
            "--nice" => {
                let n: i32 = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                // Before any thread starts: threads inherit their creator's niceness.
                set_niceness(n)?;
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown argument {other:?}; ova-executor is started by the ova worker"
                )));
            }
        }
    }
    let threads = threads.max(1);
    config.slots = SandboxConfig::slots_for(threads);
    let sandbox = Arc::new(Sandbox::new(config)?);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(POOL_STACK_BYTES)
        .thread_name(|i| format!("ova-unit-{i}"))
        .build()
        .map_err(std::io::Error::other)?;

    // Frames go to a duplicate of fd 1, bypassing `std::io::Stdout`'s line buffering (these
    // are binary frames; nothing else writes to our stdout).
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let out = Arc::new(ChildOut::new(stdout));
    let o = out.clone();
    let ticker =
        std::thread::Builder::new().name("ova-child-ticker".into()).spawn(move || o.ticker())?;

    // Say who we are, then run nothing unless the supervisor is of this very build.
    ipc::encode_into(&mut out.lock().frames, &FromChild::Hello(Hello::ours(Role::Executor)));
    out.flush();
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(1 << 16, stdin.lock());
    let mut buf = Vec::new();
    match ipc::read_frame::<_, ToChild>(&mut input, &mut buf) {
        Ok(Some(ToChild::Hello(h))) => h.check(Role::Supervisor).map_err(std::io::Error::other)?,
        Ok(None) => return Ok(()),
        Ok(Some(_)) => return Err(std::io::Error::other("the supervisor sent no hello")),
        Err(e) => return Err(e),
    }
    let crash_on = fault::crash_on_input();
    let mut modules: HashMap<BlobId, Arc<ModuleSource>, Fast> = HashMap::default();
    let mut batch: Vec<(u64, UnitRequest)> = Vec::new();
    while let Some(msg) = ipc::read_frame::<_, ToChild>(&mut input, &mut buf)? {
        match msg {
            ToChild::Module { bytes } => {
                let m = ModuleSource::new(bytes.into_owned());
                modules.insert(m.id(), m);
            }
            ToChild::Hello(_) => return Err(std::io::Error::other("a second hello")),
            ToChild::Run { seq, unit, module, input, args, limits, determinism, epoch_guard } => {
                let caps = [limits.max_output_bytes, limits.max_stderr_bytes];
                match modules.get(&module) {
                    None => {
                        let r = failed(unit, determinism, "module was not sent to the executor");
                        out.done(seq, r);
                    }
                    // Its result might not fit in a frame (manifests cannot ask for this).
                    Some(_) if caps.iter().any(|c| *c > MAX_OUTPUT_CAP_BYTES) => {
                        let msg = format!(
                            "output or stderr cap over {MAX_OUTPUT_CAP_BYTES} bytes: {caps:?}"
                        );
                        out.done(seq, failed(unit, determinism, &msg));
                    }
                    Some(module) => batch.push((
                        seq,
                        UnitRequest {
                            unit,
                            module: module.clone(),
                            input: input.into_owned().into(),
                            args: args.into_owned(),
                            limits,
                            determinism,
                            epoch_guard,
                        },
                    )),
                }
            }
        }
        // Everything the supervisor wrote in one go goes to the pool as one batch, taken in
        // order by up to `threads` jobs (one atomic increment per unit, no splitting).
        if input.buffer().is_empty() || batch.len() >= 4096 {
            let units = std::mem::take(&mut batch);
            if units.is_empty() {
                continue;
            }
            out.queued.fetch_add(units.len(), Ordering::AcqRel);
            let jobs = threads.min(units.len());
            let batch = Arc::new(Batch { units, next: AtomicUsize::new(0) });
            for _ in 0..jobs {
                let (batch, sandbox, out) = (batch.clone(), sandbox.clone(), out.clone());
                let crash_on = crash_on.clone();
                pool.spawn(move || {
                    while let Some((seq, req)) =
                        batch.units.get(batch.next.fetch_add(1, Ordering::Relaxed))
                    {
                        fault::maybe_crash(&crash_on, req);
                        run_one(&sandbox, &out, *seq, req);
                    }
                });
            }
        }
    }
    // The supervisor closed our stdin: it is shutting down.
    drop(pool);
    out.close();
    let _ = ticker.join();
    Ok(())
}

/// Units the supervisor sent together; pool jobs take them in order.
struct Batch {
    units: Vec<(u64, UnitRequest)>,
    /// The next unit to take.
    next: AtomicUsize,
}

fn run_one(sandbox: &crate::sandbox::Sandbox, out: &ChildOut, seq: u64, req: &UnitRequest) {
    out.queued.fetch_sub(1, Ordering::AcqRel);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sandbox.run_notify(req, || out.compiling(seq), || out.started(seq))
    }))
    .unwrap_or_else(|_| failed(req.unit, req.determinism, "the executor panicked on this unit"));
    out.done(seq, result);
}

/// The period of the child's ticker thread while units run or results wait (see
/// [`BATCH_BYTES`] and [`REPORT_STARTED_AFTER`]).
pub const TICK: Duration = Duration::from_millis(1);

/// How long a unit runs before the child reports that it started (at the first tick after
/// that). Shorter units are reported by their `Done` frame alone: the supervisor has no
/// deadline to watch for them, and not waking a thread per unit start is a large part of what
/// keeps trivial units cheap (P2). The report carries how long the unit had been running, so
/// the deadline still counts from its real start.
pub const REPORT_STARTED_AFTER: Duration = TICK;

/// Most writes one call of `ChildOut::flush` makes for others before it returns.
const FLUSH_PASSES: usize = 2;

/// Results gathered beyond this many bytes are written at once.
///
/// While more units are queued behind it, a result waits — until the next [`TICK`] at most —
/// to share one `write` with the results that follow (a write and the supervisor's read cost
/// more than a trivial unit). It is written at once when nothing is queued, when its unit's
/// deadline was being watched, or when this many bytes have gathered.
pub const BATCH_BYTES: usize = 64 << 10;

/// The child's outgoing frames: the pool threads write their own `Done` (and `Compiling`)
/// frames; the ticker thread reports units still running after [`REPORT_STARTED_AFTER`] and
/// writes results gathered while more units were queued ([`BATCH_BYTES`]).
///
/// Whoever has frames to send writes them, unless another thread is writing already, in
/// which case that one writes them too before it lets go (flat combining): no thread is woken
/// to write a result, and results that finish together go out in one `write`.
struct ChildOut {
    state: Mutex<ChildOutState>,
    /// Wakes the ticker: there is something to time and it was not timing anything, or
    /// shutdown.
    ticker_cv: Condvar,
    /// Held by the thread that is writing.
    sink: Mutex<Sink>,
    /// Units handed to the pool that have not started yet.
    queued: AtomicUsize,
}

struct Sink {
    /// Our stdout (a duplicate of fd 1), written without Rust's line buffering.
    file: std::fs::File,
    /// The frames being written (swapped with [`ChildOutState::frames`], so both keep their
    /// capacity).
    buf: Vec<u8>,
    /// A write failed: the supervisor is gone, frames are dropped.
    broken: bool,
}

#[derive(Default)]
struct ChildOutState {
    /// Encoded frames not yet written.
    frames: Vec<u8>,
    /// Units that started running and have not been reported (nor finished).
    started: Vec<(u64, Instant)>,
    /// The ticker waits without a timeout (nothing to time): a new start must wake it.
    ticker_idle: bool,
    closed: bool,
}

thread_local! {
    static ENCODE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ChildOut {
    fn new(stdout: std::fs::File) -> Self {
        Self {
            state: Mutex::new(ChildOutState::default()),
            ticker_cv: Condvar::new(),
            sink: Mutex::new(Sink { file: stdout, buf: Vec::new(), broken: false }),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ChildOutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compiling(&self, seq: u64) {
        ipc::encode_into(&mut self.lock().frames, &FromChild::Compiling { seq });
        self.flush();
    }

    fn started(&self, seq: u64) {
        let mut st = self.lock();
        st.started.push((seq, Instant::now()));
        let wake = std::mem::take(&mut st.ticker_idle);
        drop(st);
        if wake {
            self.ticker_cv.notify_one();
        }
    }

    fn done(&self, seq: u64, result: UnitResult) {
        // Encode outside the lock (a result may be large), then append.
        ENCODE_BUF.with_borrow_mut(|buf| {
            buf.clear();
            ipc::encode_done_into(buf, seq, &result);
            let mut st = self.lock();
            // Not reported yet: the unit is done, so nobody needs to know it started.
            // Reported: the supervisor is watching its deadline, so no waiting.
            let watched = match st.started.iter().position(|(s, _)| *s == seq) {
                Some(i) => {
                    st.started.swap_remove(i);
                    false
                }
                None => true,
            };
            st.frames.extend_from_slice(buf);
            let now = watched
                || st.frames.len() >= BATCH_BYTES
                || self.queued.load(Ordering::Acquire) == 0;
            let wake = !now && std::mem::take(&mut st.ticker_idle);
            drop(st);
            buf.truncate(1 << 16);
            buf.shrink_to(1 << 16);
            if wake {
                self.ticker_cv.notify_one();
            }
            if now {
                self.flush();
            }
        });
    }

    /// Writes every queued frame, unless another thread is writing: that one writes ours too.
    ///
    /// A writer makes at most [`FLUSH_PASSES`] writes before it goes back to its own work;
    /// frames still queued then (threads kept adding while it wrote) are left to the ticker,
    /// which it wakes, and which writes them within a [`TICK`].
    fn flush(&self) {
        for _ in 0..FLUSH_PASSES {
            let mut sink = match self.sink.try_lock() {
                Ok(s) => s,
                Err(std::sync::TryLockError::WouldBlock) => return,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            };
            let Sink { file, buf, broken } = &mut *sink;
            buf.clear();
            std::mem::swap(buf, &mut self.lock().frames);
            if !buf.is_empty() && !*broken && file.write_all(buf).is_err() {
                *broken = true;
            }
            if buf.capacity() > 4 << 20 {
                *buf = Vec::new();
            }
            drop(sink);
            // A frame queued while we held the sink found it taken and was left to us.
            if self.lock().frames.is_empty() {
                return;
            }
        }
        let mut st = self.lock();
        let wake = std::mem::take(&mut st.ticker_idle);
        drop(st);
        if wake {
            self.ticker_cv.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ticker_cv.notify_one();
    }

    /// Every [`TICK`] while there is something to time: writes the results gathered since
    /// the last tick and reports units that have run for [`REPORT_STARTED_AFTER`]; sleeps
    /// without a timer when there is nothing. Ends at [`ChildOut::close`].
    fn ticker(&self) {
        let mut st = self.lock();
        loop {
            if st.closed {
                drop(st);
                self.flush();
                return;
            }
            let now = Instant::now();
            let due = |at: Instant| now.saturating_duration_since(at) >= REPORT_STARTED_AFTER;
            if st.started.iter().any(|(_, at)| due(*at)) {
                let ChildOutState { frames, started, .. } = &mut *st;
                started.retain(|(seq, at)| {
                    if !due(*at) {
                        return true;
                    }
                    let running_us = now.saturating_duration_since(*at).as_micros() as u64;
                    ipc::encode_into(frames, &FromChild::Started { seq: *seq, running_us });
                    false
                });
            }
            if !st.frames.is_empty() {
                drop(st);
                self.flush();
                st = self.lock();
            }
            st = if st.started.is_empty() && st.frames.is_empty() {
                st.ticker_idle = true;
                let mut st = self.ticker_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                st.ticker_idle = false;
                st
            } else {
                // A timer wait: the tick itself is what we wait for.
                self.ticker_cv.wait_timeout(st, TICK).unwrap_or_else(|e| e.into_inner()).0
            };
        }
    }
}

/// Fault injection for the supervisor's tests, in debug builds only: with
/// `OVA_EXECUTOR_TEST_CRASH_ON_INPUT=<text>` set, the executor dies at once — as on a host
/// bug — the moment it picks a unit whose input is exactly `<text>`, before the unit can be
/// reported as started. Release builds ignore the variable.
mod fault {
    use crate::sandbox::UnitRequest;

    /// The input that crashes the process, if any.
    pub type Trigger = Option<std::sync::Arc<[u8]>>;

    /// The trigger set in the environment.
    pub fn crash_on_input() -> Trigger {
        if !cfg!(debug_assertions) {
            return None;
        }
        let v = std::env::var_os("OVA_EXECUTOR_TEST_CRASH_ON_INPUT")?;
        Some(v.into_encoded_bytes().into())
    }

    /// Ends the process if `req` is the trigger (status 134, as an abort, without leaving
    /// a core dump of the engine's large address-space reservations).
    pub fn maybe_crash(trigger: &Trigger, req: &UnitRequest) {
        if trigger.as_deref().is_some_and(|t| *t == *req.input) {
            std::process::exit(134);
        }
    }
}

/// Sets this process's niceness (its threads started afterwards inherit it).
#[cfg(unix)]
fn set_niceness(n: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, n)
        .map_err(|e| std::io::Error::other(format!("cannot set niceness {n}: {e}")))
}

/// Niceness is a Unix notion: elsewhere the child runs at its parent's priority.
#[cfg(not(unix))]
fn set_niceness(_n: i32) -> std::io::Result<()> {
    Ok(())
}
