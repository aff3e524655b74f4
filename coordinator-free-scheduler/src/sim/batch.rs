//! One window's peer calls, handled on several threads with the outcome of handling them one
//! by one.
//!
//! [`Peer::handle`] is most of a large simulation's time, and calls on different peers touch
//! nothing in common. Nothing a call causes happens sooner than the simulator's lookahead
//! (the least link delay; timers, declines and fetches are put off as long), so the events
//! due within that time of a batch's first call cannot depend on the batch's actions. The
//! simulator defers their calls into a [`Batch`], where helper threads handle them as they
//! come, and applies their actions one by one in event order when the window closes. A
//! peer's later calls in the window are chained to its first and handled in order by the
//! thread that holds the peer's state. Everything that draws from the simulator's random
//! stream, pushes events or changes what other events read happens in that ordered apply
//! step (or before the batch with the batch flushed first), so a run is the same, byte for
//! byte, on one thread or many: same trace, same report. On one thread nothing is deferred
//! (each call is handled and applied as it comes): that is the reference the batches are
//! tested against.
//!
//! A window holds tens of calls of a few microseconds each, so handing them to a thread pool
//! that sleeps between windows costs more than it saves. The helpers stay awake while the
//! run has work, spinning on a counter: a call goes to a helper by moving the peer's boxed
//! state there and back (safe code: no shared `&mut`). (With glibc's allocator, memory freed
//! on another thread than the one that allocated it made every call a fifth slower; `ova-sim`
//! uses mimalloc.)

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::peer::{Action, Event, Peer, RunCause};
use crate::types::{Millis, UnitRef};

/// A peer call waiting in a [`Batch`], and once handled, its actions.
pub(super) struct Call {
    /// The peer's index in the simulator.
    pub peer: u32,
    /// The call's moment.
    pub at: Millis,
    ev: Option<Event>,
    /// The actions the peer returned (empty until handled).
    pub out: Vec<Action>,
    /// For each [`Action::StartUnit`] of `out`, in order, why the peer runs the unit (read
    /// from the peer right after the call: the actions are applied later, when the peer may
    /// have handled more calls).
    pub causes: Vec<RunCause>,
    /// Time this call (see `Sim::time_handle`).
    timed: bool,
    /// Wall time of the call, when timed.
    pub nanos: u64,
    /// What the call handled, when timed (an index in `EVENT_KINDS`).
    pub kind: u8,
    /// For a timer's call: the time the timer was set for. It is handled only if that is
    /// still the peer's latest timer request (see [`Call::handle`]).
    pub timer: Option<Millis>,
    /// Whether the call was handled (a stale timer's is not).
    pub fired: bool,
    /// For the watched unit (`OVA_SIM_WATCH`).
    pub watch: Option<Box<Watched>>,
}

/// The watched unit (`OVA_SIM_WATCH`): the unit, the call's event, and the unit's state at
/// the peer before and after the call.
pub(super) struct Watched {
    pub unit: UnitRef,
    pub ev: Event,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl Call {
    /// A call of `peer` at `at` for `ev` (`timer`: the time of the timer this call is for),
    /// with emptied buffers for its actions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: u32,
        at: Millis,
        ev: Event,
        timer: Option<Millis>,
        timed: bool,
        kind: u8,
        watch: Option<Box<Watched>>,
        (out, causes): (Vec<Action>, Vec<RunCause>),
    ) -> Self {
        Self {
            peer,
            at,
            ev: Some(ev),
            out,
            causes,
            timed,
            nanos: 0,
            kind,
            timer,
            fired: false,
            watch,
        }
    }

    /// Handles the call on `peer`, on this thread. `timer_at` is the peer's latest timer
    /// request before the call, as the simulator keeps it; it is left as the call's actions
    /// make it (the same rule as `Sim::perform`: a request is put off to at least
    /// `lookahead` after the call, and a timer that fires is cleared). A timer whose time is
    /// no longer the latest request is stale: the peer is not called.
    pub fn handle(&mut self, peer: &mut Peer, timer_at: &mut Option<Millis>, lookahead: Millis) {
        let Some(ev) = self.ev.take() else { return };
        if let Some(at) = self.timer {
            if *timer_at != Some(at) {
                return;
            }
            *timer_at = None;
        }
        self.fired = true;
        if let Some(w) = &mut self.watch {
            w.before = peer.describe_unit(&w.unit);
        }
        if self.timed {
            let t = std::time::Instant::now();
            peer.handle_into(ev, self.at, &mut self.out);
            self.nanos = (t.elapsed().as_nanos() as u64).max(1);
        } else {
            peer.handle_into(ev, self.at, &mut self.out);
        }
        for a in &self.out {
            match a {
                Action::StartUnit { unit, .. } => {
                    self.causes.push(peer.run_cause(unit).unwrap_or(RunCause::Rule));
                }
                Action::SetTimer(at) => *timer_at = Some(timer_time(*at, self.at, lookahead)),
                _ => {}
            }
        }
        if let Some(w) = &mut self.watch {
            w.after = peer.describe_unit(&w.unit);
        }
    }
}

/// A slot's states ([`Slot::state`]).
const EMPTY: u8 = 0;
/// The first call of its peer in the batch waits, with the peer's state.
const READY: u8 = 1;
/// A later call of its peer waits for the thread that handles the one before.
const CHAINED: u8 = 2;
/// A thread handles the call (and then those chained to it).
const TAKEN: u8 = 3;
/// Handled; its actions wait to be applied.
const DONE: u8 = 4;

/// The peer's state with its latest timer request (see [`Call::handle`]), as a call hands
/// them to the next call of the same peer.
type PeerState = (Box<Peer>, Option<Millis>);

/// What a [`Slot`] holds.
struct SlotData {
    /// The call (out while a thread handles it).
    call: Option<Call>,
    /// The peer's state: while the call waits, if it is the first of its peer (`READY`);
    /// once it is handled, if no later call of the peer was chained to it by then.
    peer: Option<PeerState>,
    /// The batch's next call for the same peer ([`NONE`]: none yet), handled right after
    /// this one by the same thread.
    next: u32,
}

/// One call of the batch. Its state changes under the lock of `data`, and is also read
/// without it to poll. A thread takes a call only by moving the state from `READY` to
/// `TAKEN`, so each peer is handled by one thread at a time.
struct Slot {
    state: AtomicU8,
    data: Mutex<SlotData>,
}

/// No next call (see [`SlotData::next`]).
const NONE: u32 = u32::MAX;

/// What the calling thread and the helpers share.
struct Shared {
    /// One per call of the batch.
    slots: Box<[Slot]>,
    /// Slots filled so far in the current batch.
    len: AtomicUsize,
    /// The next slot a helper tries (helpers take calls from the front as they come).
    next: AtomicUsize,
    /// The simulator's least delay from a call to what it causes (see [`Call::handle`]).
    lookahead: Millis,
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
    /// Handles slot `k`'s call, and the calls chained to it, if nobody has taken it yet;
    /// returns whether this thread did.
    fn try_run(&self, mut k: usize) -> bool {
        let slot = &self.slots[k];
        if slot.state.compare_exchange(READY, TAKEN, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        let (mut call, (mut peer, mut timer_at)) = {
            let mut d = lock(&slot.data);
            match (d.call.take(), d.peer.take()) {
                (Some(c), Some(p)) => (c, p),
                _ => unreachable!("a ready slot holds a call and its peer"),
            }
        };
        loop {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                call.handle(&mut peer, &mut timer_at, self.lookahead)
            }));
            if r.is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            let slot = &self.slots[k];
            let mut d = lock(&slot.data);
            d.call = Some(call);
            let next = d.next;
            if next == NONE {
                // The peer waits here for a call chained later, or to go home.
                d.peer = Some((peer, timer_at));
                slot.state.store(DONE, Ordering::Release);
                return true;
            }
            slot.state.store(DONE, Ordering::Release);
            drop(d);
            k = next as usize;
            // (A call is in its slot before it is chained.)
            call = lock(&self.slots[k].data).call.take().expect("a chained slot holds a call");
        }
    }

    /// A helper thread's loop: take the batch's calls from the front as they come, spin a
    /// while when there are none, then sleep until woken (or a millisecond, so a missed
    /// wake-up costs little).
    fn serve(&self) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let k = self.next.load(Ordering::Acquire);
            if k < self.len.load(Ordering::Acquire) {
                // (A stale cursor or length is harmless: only a ready slot is ever taken.)
                if self.next.compare_exchange(k, k + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                {
                    self.try_run(k);
                }
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

/// Rounds a helper waits for a call before it sleeps: a quarter spinning, the rest yielding
/// its core (about a millisecond in all; calls come every microsecond or so while the run is
/// busy).
const SPINS: u32 = 4_000;

/// When the simulator fires a timer a peer asked for at `asked` in a call at `at`: then, but
/// no sooner than `lookahead` after the call (`Sim::perform` and [`Call::handle`] both keep
/// this rule).
pub(super) fn timer_time(asked: Millis, at: Millis, lookahead: Millis) -> Millis {
    asked.max(at + lookahead)
}

/// Most calls a batch holds: the one that would pass it waits for the next batch.
pub(super) const BATCH_MAX: usize = 4096;

/// The calls deferred in one window, and the helper threads that handle them as they come.
///
/// [`Batch::add`] puts each call in a slot at once, where a helper takes it (a later call
/// of the same peer is chained to the one before, and handled right after it by the same
/// thread, which holds the peer's state). When the window closes, [`Batch::finish`] returns
/// the calls in order for their actions to be applied, handling those no helper has taken
/// yet (and, while it waits for one a helper is handling, the last ones no helper has
/// taken). So the helpers handle calls while the calling thread runs the event loop and
/// applies actions. Dropping the batch stops the helpers.
pub(super) struct Batch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Calls in the batch.
    n: usize,
    /// The first call's moment.
    first_at: Option<Millis>,
    /// Per peer: the number of the batch that holds a call for it, and (valid where that
    /// matches) its last call in the batch. (Side by side: one cache line per call.)
    held: Vec<(u32, u32)>,
    /// This batch's number (never 0, so a fresh stamp of 0 means "not held").
    number: u32,
    /// While finishing: the calling thread's cursor from the back.
    back: usize,
}

impl Batch {
    /// Starts `n` helper threads, for a simulator whose calls cause nothing sooner than
    /// `lookahead`.
    pub fn start(n: usize, lookahead: Millis) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            slots: (0..BATCH_MAX)
                .map(|_| Slot {
                    state: AtomicU8::new(EMPTY),
                    data: Mutex::new(SlotData { call: None, peer: None, next: NONE }),
                })
                .collect(),
            len: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            lookahead,
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let mut b = Self {
            shared: shared.clone(),
            threads: Vec::with_capacity(n),
            n: 0,
            first_at: None,
            held: Vec::new(),
            number: 1,
            back: 0,
        };
        for k in 0..n {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("ova-sim-helper-{k}"))
                .spawn(move || s.serve())?;
            // (On an error, dropping `b` stops those started.)
            b.threads.push(t);
        }
        Ok(b)
    }

    /// How many calls wait.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The moment of the first waiting call, if any.
    pub fn first_at(&self) -> Option<Millis> {
        self.first_at
    }

    /// Whether the batch holds [`BATCH_MAX`] calls and must be handled before another is
    /// added.
    pub fn is_full(&self) -> bool {
        self.n >= BATCH_MAX
    }

    /// Whether a call for `peer` is waiting (its state must not be read until handled).
    pub fn holds(&self, peer: u32) -> bool {
        self.held.get(peer as usize).is_some_and(|h| h.0 == self.number)
    }

    /// Adds `call` (the batch must not be full), after the calls for its peer the batch
    /// holds. The first call of a peer moves the peer's state out of `homes` (with a copy of
    /// its latest timer request) until [`Batch::finish`] brings it back.
    pub fn add(&mut self, call: Call, homes: &mut [super::Home]) {
        debug_assert!(!self.is_full());
        let s = &self.shared;
        let k = self.n;
        let i = call.peer as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, (0, NONE));
        }
        self.first_at.get_or_insert(call.at);
        let slot = &s.slots[k];
        if self.held[i].0 == self.number {
            // A later call of a held peer: chained to its last one, unless that one is
            // handled already, and its thread left the peer's state in its slot.
            {
                let mut d = lock(&slot.data);
                d.call = Some(call);
                d.next = NONE;
                slot.state.store(CHAINED, Ordering::Release);
            }
            let before = &s.slots[self.held[i].1 as usize];
            let mut b = lock(&before.data);
            // (`DONE` with the peer: its thread has left; `READY` also holds the peer.)
            match before.state.load(Ordering::Acquire) {
                DONE => {
                    let p = b.peer.take().expect("the peer's last call holds its state");
                    drop(b);
                    lock(&slot.data).peer = Some(p);
                    slot.state.store(READY, Ordering::Release);
                }
                _ => b.next = k as u32,
            }
        } else {
            let peer = homes[i].peer.take().expect("the peer is home");
            let mut d = lock(&slot.data);
            d.call = Some(call);
            d.peer = Some((peer, homes[i].timer_at));
            d.next = NONE;
            slot.state.store(READY, Ordering::Release);
        }
        self.held[i] = (self.number, k as u32);
        self.n += 1;
        s.len.store(self.n, Ordering::Release);
        if k == 0 {
            for t in &self.threads {
                t.thread().unpark();
            }
        }
    }

    /// Returns call `k` of the batch (call them in order, from 0, once all are added) once
    /// it is handled, handling it if no helper has, and brings its peer's state home when it
    /// was the peer's last call. After the last, the batch is empty again.
    ///
    /// # Panics
    /// If a call panicked on a helper thread.
    pub fn finish(&mut self, k: usize, homes: &mut [super::Home]) -> Call {
        let s = &self.shared;
        if k == 0 {
            self.back = self.n;
        }
        let slot = &s.slots[k];
        let mut spins = 0u32;
        loop {
            match slot.state.load(Ordering::Acquire) {
                DONE => break,
                READY if s.try_run(k) => break,
                _ => {
                    // A helper has it (or its peer's earlier call): handle one from the
                    // back meanwhile, or wait.
                    let mut ran = false;
                    while self.back > k + 1 && !ran {
                        self.back -= 1;
                        ran = s.try_run(self.back);
                    }
                    if !ran {
                        spins += 1;
                        if spins < 1_000 {
                            std::hint::spin_loop();
                        } else {
                            // Gives way to the helpers when they share a core with this
                            // thread (more threads than cores).
                            std::thread::yield_now();
                        }
                    }
                }
            }
        }
        assert!(!s.panicked.load(Ordering::Acquire), "a peer call panicked on a helper thread");
        let (call, peer) = {
            let mut d = lock(&slot.data);
            slot.state.store(EMPTY, Ordering::Release);
            (d.call.take().expect("a handled slot holds its call"), d.peer.take())
        };
        if let Some((p, _)) = peer {
            homes[call.peer as usize].peer = Some(p);
        }
        if k + 1 == self.n {
            self.n = 0;
            self.first_at = None;
            s.len.store(0, Ordering::Release);
            s.next.store(0, Ordering::Release);
            self.number = self.number.wrapping_add(1).max(1);
            if self.number == 1 {
                // Wrapped: forget old stamps so none can match.
                self.held.iter_mut().for_each(|h| h.0 = 0);
            }
        }
        call
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
