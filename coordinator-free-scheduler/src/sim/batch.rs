//! One moment's peer calls, handled on several threads with the outcome of handling them one
//! by one.
//!
//! [`Peer::handle`] is nearly all of a large simulation's time, and calls on different peers
//! touch nothing in common. So the simulator defers the calls of the events that fall due at
//! the same millisecond into a [`Batch`], as long as each names a peer the batch does not hold
//! yet, runs them side by side, and then applies their actions one by one in event order.
//! Everything that draws from the simulator's random stream, pushes events or changes what
//! other events read happens in that ordered apply step (or before the batch with the batch
//! flushed first), so a run is the same, byte for byte, on one thread or many: same trace,
//! same report. On one thread nothing is deferred (each call is handled and applied as it
//! comes): that is the reference the batches are tested against.
//!
//! A moment holds about ten calls of a few microseconds each, so handing them to a thread
//! pool that sleeps between moments costs more than it saves. [`Helpers`] are threads that
//! stay awake while the run has work, spinning on a counter: a call goes to a helper by
//! moving the peer's boxed state there and back (safe code: no shared `&mut`). (With
//! glibc's allocator, memory freed on another thread than the one that allocated it made
//! every call a fifth slower; `ova-sim` uses mimalloc.)

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::peer::{Action, Event, Peer};
use crate::types::{Millis, UnitRef};

/// A peer call waiting in a [`Batch`], and after [`Batch::handle`], its actions.
pub(super) struct Call {
    /// The peer's index in the simulator.
    pub peer: u32,
    ev: Option<Event>,
    /// The actions the peer returned (empty until handled).
    pub out: Vec<Action>,
    /// Time this call (see `Sim::time_handle`).
    timed: bool,
    /// Wall time of the call, when timed.
    pub nanos: u64,
    /// What the call handled, when timed (an index in `EVENT_KINDS`).
    pub kind: u8,
    /// For the watched unit (`OVA_SIM_WATCH`): the unit, its state before the call and the
    /// event.
    pub watch: Option<Box<Watched>>,
}

/// The watched unit, its state at a peer before a call, and the call's event.
pub(super) type Watched = (UnitRef, Option<String>, Event);

impl Call {
    fn handle(&mut self, peer: &mut Peer, now: Millis) {
        if let Some(ev) = self.ev.take() {
            self.nanos = handle(peer, ev, now, &mut self.out, self.timed);
        }
    }
}

/// Hands `ev` to `peer`; returns the call's wall time in nanoseconds when `timed`, else 0.
fn handle(peer: &mut Peer, ev: Event, now: Millis, out: &mut Vec<Action>, timed: bool) -> u64 {
    if timed {
        let t = std::time::Instant::now();
        peer.handle_into(ev, now, out);
        (t.elapsed().as_nanos() as u64).max(1)
    } else {
        peer.handle_into(ev, now, out);
        0
    }
}

/// Below this many calls a batch is handled on the calling thread: handing calls over costs
/// about as much as one call (~2.5 µs a batch). (It was 6, when the calling thread took half
/// of each batch: it then handled about 61 % of the calls' CPU on top of the serial part,
/// while the helper idled half the time. With the helpers' larger share, see [`Helpers`],
/// every batch with something to share is shared: the P5 bench took 138.8 s against 144.4 s
/// side by side.)
const PARALLEL_MIN: usize = 2;

/// Calls deferred at one moment, each on a different peer.
pub(super) struct Batch {
    calls: Vec<Call>,
    /// Per peer, the number of the batch that holds a call for it.
    stamp: Vec<u32>,
    /// This batch's number (never 0, so a fresh stamp of 0 means "not held").
    number: u32,
    /// Emptied action buffers, kept for reuse.
    spare: Vec<Vec<Action>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self { calls: Vec::new(), stamp: Vec::new(), number: 1, spare: Vec::new() }
    }

    /// Whether no call is waiting.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether the batch has reached its bound (1,024 calls) and must be handled before the
    /// next event (one broadcast may still add a call for every peer).
    pub fn is_full(&self) -> bool {
        self.calls.len() >= 1024
    }

    /// Whether a call for `peer` is waiting (its state must not be read until handled).
    pub fn holds(&self, peer: u32) -> bool {
        self.stamp.get(peer as usize) == Some(&self.number)
    }

    /// Defers `ev` for `peer`, which the batch must not hold.
    pub fn add(
        &mut self,
        peer: u32,
        ev: Event,
        timed: bool,
        kind: u8,
        watch: Option<Box<Watched>>,
    ) {
        debug_assert!(!self.holds(peer), "two calls for one peer in a batch");
        let i = peer as usize;
        if self.stamp.len() <= i {
            self.stamp.resize(i + 1, 0);
        }
        self.stamp[i] = self.number;
        let out = self.spare.pop().unwrap_or_default();
        self.calls.push(Call { peer, ev: Some(ev), out, timed, nanos: 0, kind, watch });
    }

    /// Runs every waiting call on its peer: shared with `helpers` when there are any and
    /// the batch is large enough, else in order on this thread.
    pub fn handle(&mut self, peers: &mut [super::SimPeer], now: Millis, helpers: Option<&Helpers>) {
        match helpers {
            Some(h) if self.calls.len() >= PARALLEL_MIN => h.handle(&mut self.calls, peers, now),
            _ => {
                for c in &mut self.calls {
                    c.handle(peers[c.peer as usize].peer_mut(), now);
                }
            }
        }
    }

    /// Takes the handled calls out, in the order they were added, and starts a new batch.
    /// Give the emptied vector back with [`Batch::give_back`].
    pub fn take(&mut self) -> Vec<Call> {
        self.number = self.number.wrapping_add(1).max(1);
        if self.number == 1 {
            // Wrapped: forget old stamps so none can match.
            self.stamp.iter_mut().for_each(|s| *s = 0);
        }
        std::mem::take(&mut self.calls)
    }

    /// Keeps an applied call's emptied action buffer for reuse.
    pub fn keep_buffer(&mut self, mut buf: Vec<Action>) {
        buf.clear();
        self.spare.push(buf);
    }

    /// Gives back the (emptied) vector [`Batch::take`] returned, for reuse.
    pub fn give_back(&mut self, mut calls: Vec<Call>) {
        calls.clear();
        if self.calls.is_empty() {
            self.calls = calls;
        }
    }
}

/// A call handed to the helpers: its place in the batch, the peer's state (moved out of the
/// simulator and back), the event and its moment, the buffer for its actions, and whether
/// to time it.
struct Task {
    k: usize,
    peer: Box<Peer>,
    ev: Event,
    now: Millis,
    out: Vec<Action>,
    timed: bool,
}

/// A call the helpers handled: its place in the batch, the peer's state, its actions and its
/// wall time (when timed).
struct Handled {
    k: usize,
    peer: Box<Peer>,
    out: Vec<Action>,
    nanos: u64,
}

/// What the calling thread and the helpers share.
struct Shared {
    /// Calls not taken yet.
    todo: Mutex<Vec<Task>>,
    /// Calls handled.
    done: Mutex<Vec<Handled>>,
    /// Calls of the current batch not handled yet.
    pending: AtomicUsize,
    /// Set when the run ends.
    stop: AtomicBool,
    /// Set when a call panicked on a helper (the caller then panics too, instead of waiting
    /// for a call that will never be handled).
    panicked: AtomicBool,
}

/// Locks `m`, whatever a panicking thread left in it (a panic is reported by
/// [`Shared::panicked`]).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes and handles calls until none is left to take.
    fn work(&self) {
        loop {
            let Some(Task { k, mut peer, ev, now, mut out, timed }) = lock(&self.todo).pop() else {
                return;
            };
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                handle(&mut peer, ev, now, &mut out, timed)
            }));
            let nanos = r.unwrap_or_else(|_| {
                self.panicked.store(true, Ordering::Release);
                0
            });
            lock(&self.done).push(Handled { k, peer, out, nanos });
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Threads that handle a batch's calls alongside the calling thread. They spin while
/// batches keep coming and sleep after a quiet spell; dropping them stops them.
///
/// Each peer keeps to one side, so its tables stay in that core's cache: the calling thread
/// handles the peers whose index is a multiple of the number of threads plus one, the
/// helpers share the others' calls (with one helper: a third against two thirds, since the
/// calling thread also has the event loop and applies every action). The calling thread then
/// takes what the helpers have not started.
pub(super) struct Helpers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Rounds a helper waits on an empty queue before it sleeps: a quarter spinning, the rest
/// yielding its core (about a millisecond in all; batches come every few microseconds
/// while the run is busy).
const SPINS: u32 = 4_000;

impl Helpers {
    /// Starts `n` helper threads.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            todo: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(n);
        for k in 0..n {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("ova-sim-helper-{k}"))
                .spawn(move || s.serve());
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stops those started.
                    drop(Self { shared, threads });
                    return Err(e);
                }
            }
        }
        Ok(Self { shared, threads })
    }

    /// Handles `calls` on `peers` with the helpers, and returns when all are handled.
    ///
    /// # Panics
    /// If a call panicked on a helper thread.
    fn handle(&self, calls: &mut [Call], peers: &mut [super::SimPeer], now: Millis) {
        let s = &self.shared;
        // The calling thread's share: one peer in `homes`.
        let homes = self.threads.len() + 2;
        let mut tasks = Vec::new();
        // Popped from the end: the batch's first calls go first.
        for (k, c) in calls.iter_mut().enumerate().rev() {
            if !(c.peer as usize).is_multiple_of(homes)
                && let Some(ev) = c.ev.take()
            {
                let peer = peers[c.peer as usize].home.take().expect("the peer is home");
                let out = std::mem::take(&mut c.out);
                tasks.push(Task { k, peer, ev, now, out, timed: c.timed });
            }
        }
        if !tasks.is_empty() {
            // Counted before any helper can take one (a helper still looking for work from
            // the last batch may take one as soon as they are queued).
            s.pending.store(tasks.len(), Ordering::Release);
            lock(&s.todo).append(&mut tasks);
            for t in &self.threads {
                t.thread().unpark();
            }
        }
        for c in calls.iter_mut() {
            if c.ev.is_some() {
                c.handle(peers[c.peer as usize].peer_mut(), now);
            }
        }
        s.work();
        // Wait for the calls helpers have started; give way to them when they share a core
        // with this thread (more threads than cores).
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) > 0 {
            spins += 1;
            if spins < 1_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        assert!(!s.panicked.load(Ordering::Acquire), "a peer call panicked on a helper thread");
        for h in lock(&s.done).drain(..) {
            let c = &mut calls[h.k];
            peers[c.peer as usize].home = Some(h.peer);
            c.out = h.out;
            c.nanos = h.nanos;
        }
    }
}

impl Shared {
    /// A helper thread's loop: handle calls while there are any, spin a while when there
    /// are none, then sleep until woken (or a millisecond, so a missed wake-up costs little).
    fn serve(&self) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.pending.load(Ordering::Acquire) > 0 {
                self.work();
                idle = 0;
            } else if idle < SPINS {
                // Spin, then give way to other threads (the caller's among them, when
                // threads outnumber cores), then sleep.
                idle += 1;
                if idle < SPINS / 4 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            } else {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
