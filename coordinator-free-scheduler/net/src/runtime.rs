//! The driver: runs the sans-IO scheduler core ([`ova_scheduler::Peer`]) over a [`Node`].
//!
//! One task owns the `Peer` and is the only place its state changes. It waits for whatever
//! happens next — a frame from the network, a unit finishing on the executor, a blob arriving,
//! a command from the local API, the scheduler's timer — feeds it to the core with the current
//! time, and carries out the actions that come back:
//!
//! | action | carried out by |
//! | --- | --- |
//! | `Send` / `Broadcast` | after the group commit (below): bounded send queues drained by sender tasks that pack each destination's messages into batch frames ([`Node::send_batch`], [`Node::broadcast`]; announcements too large for gossip go directly to every known peer) |
//! | `StartUnit` | a task that fetches the module (kept) and the input (used from memory) from the job's holders and runs the unit on the [`UnitRunner`]; the result record is stored with the next group commit |
//! | `FetchBlob` | a task fetching from the listed peers ([`crate::blobs::BlobClient`]), verified before storing |
//! | `SetTimer` | the loop's sleep deadline |
//! | `UnitVerified` / `UnitFailed` | the store (verified results, and the commits that prove a result this peer keeps), subscribers ([`JobEvent`]) and the [`Observer`] |
//!
//! What must survive a restart goes to the [`Store`] before anyone is told about it: job
//! announcements, the signed commits of its own jobs and those proving a result it keeps,
//! result records, verified results and this peer's own jobs. The writes of one or more loop
//! turns go to the store together (a group commit: one append to its journal, see
//! [`Store::append`]; [`crate::store::Durability`] says what durable means) off the loop
//! while it takes in further events; the messages
//! of those turns leave only once it is durable, so a peer killed at any point never
//! acknowledged what it lost. A restarted peer replays the store into a fresh core, so it
//! keeps serving the results it held and, as a submitter, resumes its jobs.
//!
//! The core is given adaptive run slots per core ([`Peer::set_run_slots_per_core`]): short
//! units are kept in flight several per core, so fetching inputs, the group commit and the
//! messages overlap with execution.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iroh::EndpointId;
use ova_jobs::result::ResultRecord;
use ova_jobs::{BlobId, Bundle, Determinism, JobId, Limits, UnitId};
use ova_scheduler::message::{MAX_BATCH, MAX_RESULT_BYTES_BATCH};
use ova_scheduler::{
    Action, Config as CoreConfig, Ed25519Signer, Ed25519Verifier, Event, FetchPurpose, JobInfo,
    LocalFailure, Message, Millis, Peer, PeerId, SignedCommit, UnitRef,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::blobs;
use crate::node::{NetEvent, Node};
use crate::signatures::CachingVerifier;
use crate::store::{Batch, Store, StoreError};

/// A boxed future, as [`UnitRunner::run`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One unit for the executor.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The unit, as the protocol names it.
    pub unit: UnitRef,
    /// Its content id.
    pub unit_id: UnitId,
    /// Job name (for logs and the status page).
    pub job_name: String,
    /// The module's id.
    pub module_id: BlobId,
    /// The module's bytes.
    pub module: Arc<Vec<u8>>,
    /// Standard input.
    pub input: Vec<u8>,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Limits from the manifest.
    pub limits: Limits,
    /// Determinism mode from the manifest.
    pub determinism: Determinism,
}

/// What the executor returns for one unit.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The deterministic result record, or `None` when the run produced no result to compare
    /// (timeout, executor failure): the unit is then handed back to the network.
    pub record: Option<ResultRecord>,
}

/// Runs units (the worker's wasm executor; tests may substitute their own).
pub trait UnitRunner: Send + Sync + 'static {
    /// Runs one unit to completion.
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput>;
}

/// Hooks for metrics; every method has a no-op default.
pub trait Observer: Send + Sync + 'static {
    /// `n` signed commits of ours were published (each counted once, however many peers it
    /// went to).
    fn commits_published(&self, _n: u64) {}
    /// A commit arrived from another peer.
    fn commit_received(&self) {}
    /// A commit disagreed with another replica's result for the same unit.
    fn result_mismatched(&self) {}
    /// A unit reached quorum here; `mine` if it belongs to a job this peer submitted.
    fn unit_verified(&self, _mine: bool) {}
    /// A unit failed verification here.
    fn unit_failed(&self, _mine: bool) {}
    /// This peer submitted a job.
    fn job_submitted(&self) {}
    /// A job this peer submitted ended (every unit verified or failed).
    fn job_completed(&self) {}
    /// A unit assigned here was answered from an earlier verified result, without running.
    fn unit_memoised(&self) {}
    /// A frame was dropped before reaching the core.
    fn frame_dropped(&self, _reason: &'static str) {}
    /// Bytes moved by blob transfer (sent by us, received by us).
    fn blob_bytes(&self, _sent: u64, _received: u64) {}
    /// Number of blobs and their bytes in the store changed.
    fn blobs_stored(&self, _count: u64, _bytes: u64) {}
    /// `n` commits were rejected by the core since the last report, for `reason`
    /// (`bad_signature`, `unknown_signer`, `equivocation`).
    fn commits_rejected(&self, _reason: &'static str, _n: u64) {}
    /// Messages about jobs not known yet were held (`held`) or dropped because the holding
    /// space was full (`dropped`) since the last report.
    fn messages_held_early(&self, _held: u64, _dropped: u64) {}
    /// Result fetches that failed were tried again (`retried`), or given up after their last
    /// attempt (`abandoned`), since the last report.
    fn result_fetches(&self, _retried: u64, _abandoned: u64) {}
    /// Fetches of a bundle copy we keep that failed were tried again (`retried`), or given
    /// up after their last attempt (`abandoned`), since the last report.
    fn bundle_fetches(&self, _retried: u64, _abandoned: u64) {}
    /// Small results of ours went to their job's submitter ahead of their commits (`sent`),
    /// or were left out because another executor's agreeing commit had brought them
    /// (`skipped`; see [`Peer::result_agreed_by_another`]).
    fn inline_results(&self, _sent: u64, _skipped: u64) {}
    /// A protocol message of this kind ([`Message::kind`], one of
    /// [`ova_scheduler::MESSAGE_KINDS`]) came from another peer and decoded.
    fn message_received(&self, _kind: &'static str) {}
}

/// An [`Observer`] that records nothing.
#[derive(Debug, Default)]
pub struct NoObserver;
impl Observer for NoObserver {}

/// Progress of one job, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// This peer started running a unit.
    UnitStarted {
        /// The unit.
        unit: UnitRef,
    },
    /// A peer signed a result for a unit.
    UnitCommitted {
        /// The unit.
        unit: UnitRef,
        /// Who ran it.
        by: PeerId,
        /// The result it claims.
        result: BlobId,
    },
    /// A unit reached quorum.
    UnitVerified {
        /// The unit.
        unit: UnitRef,
        /// The agreed result.
        result: BlobId,
        /// Who signed it.
        signers: Vec<PeerId>,
    },
    /// A unit failed verification, with the reason.
    UnitFailed {
        /// The unit.
        unit: UnitRef,
        /// Why.
        reason: String,
    },
    /// Every unit of a job this peer submitted has ended.
    JobDone {
        /// The job.
        job: JobId,
        /// Units verified.
        verified: u32,
        /// Units failed.
        failed: u32,
    },
}

/// The runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime has stopped.
    #[error("the peer has stopped")]
    Stopped,
}

/// Tunables of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The scheduler core's configuration.
    pub core: CoreConfig,
    /// Spare cores to offer (0 for a light peer that only submits).
    pub cores: u16,
    /// Largest blob fetched from a peer.
    pub max_blob_bytes: u64,
    /// Time allowed for one blob fetch.
    pub fetch_timeout: Duration,
    /// Only spend CPU on jobs submitted by these peers (`None`: anyone's); units of other
    /// jobs are handed back to the network at once.
    pub allowed_submitters: Option<Vec<PeerId>>,
    /// Depth of the outgoing message queue (full: messages are dropped and counted; the
    /// protocol recovers lost messages through leases, probes and re-advertising).
    pub send_queue: usize,
    /// Concurrent senders draining the queue.
    pub senders: usize,
    /// Most units kept in flight per offered core (1: one at a time). The driver adapts the
    /// depth between 1 and this to how long units take, so short units overlap their input
    /// fetch, commit and messages with execution.
    pub max_run_slots_per_core: u16,
    /// How long a job of ours may wait for `quorum` distinct workers to be in the view before
    /// its units fail with that reason (the network is too small for the job).
    pub placement_timeout: Duration,
    /// Shortest time between the starts of two group commits while work keeps coming: what
    /// arrives meanwhile is stored (and what finished is signed) together, so a busy peer
    /// pays a store transaction and a signature per batch rather than per handful of units.
    /// An event after a quiet spell is committed at once; a batch reaching
    /// `GROUP_COMMIT_FULL` (512) writes does not wait either.
    pub group_commit_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let core = CoreConfig {
            advert_interval_ms: 5_000,
            advert_ttl_ms: 20_000,
            probe_wait_ms: 500,
            // A peer that runs dry asks for work at once, and again 100 ms later at the
            // soonest (doubling up to 1.6 s while requests bring nothing). At one request a
            // second, the first worker done with a job's units sat idle through the tail
            // while another still had ten tiles queued: the machine was half idle for the
            // last 100 ms of a 1.4 s Mandelbrot job. (Tried once before and taken back: a
            // watcher that heard a thief's claim before the victim's release counted two
            // replicas and stalled a unit 1.5 s; the release now waits for the claim.)
            steal_cooldown_ms: 100,
            lease_slack_ms: 5_000,
            // A claim waits half a second: a unit that ran by then is announced by its
            // commit alone. Short units (P4's echo units run and commit within a few tens of
            // milliseconds of being queued) then cost their watchers no claim at all; claims
            // were four of every five messages there. The peers ranked after us give us
            // `claim_grace_ms` (10 s) to claim or commit before they take a unit over.
            claim_hold_ms: 500,
            ..CoreConfig::default()
        };
        Self {
            core,
            cores: 1,
            max_blob_bytes: 256 << 20,
            fetch_timeout: Duration::from_secs(60),
            allowed_submitters: None,
            send_queue: 8192,
            senders: 16,
            placement_timeout: Duration::from_secs(30),
            max_run_slots_per_core: 32,
            group_commit_interval: Duration::from_millis(10),
        }
    }
}

enum Command {
    Submit(Box<Bundle>, oneshot::Sender<Result<JobId, RuntimeError>>),
    Progress(JobId, oneshot::Sender<Option<(u32, u32, u32)>>),
    Capacity(u16),
    Shutdown(oneshot::Sender<()>),
}

enum Done {
    /// A unit ended: its result record's id, with the record's bytes when they are new here
    /// (the driver stores them with its next group commit), or why it has no result; and,
    /// when it ran, how long it took from hand-over to result with the units at the runner
    /// per core at hand-over (see [`Driver::tune_run_slots`]).
    Unit(UnitRef, Result<(BlobId, Option<Vec<u8>>), LocalFailure>, Option<(Duration, u32)>),
    /// A fetch ended; a single fetched result record comes with its bytes, to be stored with
    /// the next group commit (bundle copies are stored by the fetch itself).
    Fetch(BlobId, FetchPurpose, Result<Option<Vec<u8>>, ()>),
}

/// A running peer: the scheduler core driven over the network, with its store.
#[derive(Clone)]
pub struct Runtime {
    node: Node,
    store: Arc<Store>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<JobEvent>,
    stored: watch::Receiver<u64>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("node", &self.node.id().fmt_short().to_string()).finish()
    }
}

fn peer_id(e: &EndpointId) -> PeerId {
    PeerId(*e.as_bytes())
}

/// Most peer ids [`endpoint_id`] remembers (past this it starts afresh).
const ENDPOINT_IDS_KEPT: usize = 16_384;

/// The node id of a scheduler peer id (`None`: not a valid ed25519 public key).
///
/// Checking a key decompresses a curve point (a field square root, ~10 µs), and every
/// message sent and every blob fetch names a peer: done afresh each time, that was 5 % of a
/// busy worker's CPU. So the valid ones are remembered, process-wide (a key's validity never
/// changes).
fn endpoint_id(p: &PeerId) -> Option<EndpointId> {
    static KNOWN: std::sync::LazyLock<std::sync::Mutex<HashMap<PeerId, EndpointId>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(e) = crate::node::lock(&KNOWN).get(p) {
        return Some(*e);
    }
    let e = EndpointId::from_bytes(&p.0).ok()?;
    let mut known = crate::node::lock(&KNOWN);
    if known.len() >= ENDPOINT_IDS_KEPT {
        known.clear();
    }
    known.insert(*p, e);
    Some(e)
}

impl Runtime {
    /// Starts driving `node` with `store`, running units on `runner` (`None`: a light peer
    /// that submits and verifies but runs nothing).
    ///
    /// Replays the store into the core first, so a restarted peer resumes where it stopped.
    pub fn start(
        node: Node,
        store: Arc<Store>,
        runner: Option<Arc<dyn UnitRunner>>,
        observer: Arc<dyn Observer>,
        config: RuntimeConfig,
    ) -> Result<Self, RuntimeError> {
        let net_events = node.take_events().ok_or(RuntimeError::Stopped)?;
        let (commands, cmd_rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(4096);
        let (stored_tx, stored) = watch::channel(0);
        let secret = node.config().secret_key.to_bytes();
        let cores = if runner.is_some() { config.cores } else { 0 };
        let verifier = Arc::new(CachingVerifier::new());
        let mut peer = Peer::new(
            config.core.clone(),
            ova_scheduler::ArchClass(node.config().arch.0),
            cores,
            Box::new(Ed25519Signer::from_seed(secret)),
            verifier.clone(),
            u64::from_le_bytes(secret[..8].try_into().unwrap_or([0; 8])) ^ 0x006f_7661,
        );
        let run_slots = 2.min(u32::from(config.max_run_slots_per_core.max(1)));
        peer.set_run_slots_per_core(run_slots);
        // One queue per sender; a peer's messages always go through the same one, so they
        // arrive in the order the core emitted them (a claim before its give-up, a claim
        // before its commit).
        let senders = config.senders.max(1);
        let per_sender = (config.send_queue / senders).max(16);
        let mut send_tx = Vec::with_capacity(senders);
        for _ in 0..senders {
            let (tx, rx) = mpsc::channel::<Queued>(per_sender);
            send_tx.push(tx);
            tokio::spawn(sender_task(node.clone(), rx, observer.clone()));
        }
        let driver = Driver {
            peer,
            node: node.clone(),
            store: store.clone(),
            runner,
            observer,
            events: events.clone(),
            stored: stored_tx,
            config,
            epoch: Instant::now(),
            timer: None,
            send_tx,
            running: HashMap::new(),
            first_result: HashMap::new(),
            done_jobs: std::collections::HashSet::new(),
            pending_submits: Vec::new(),
            outbox: Vec::new(),
            unplaceable: HashMap::new(),
            mine: Default::default(),
            modules: ModuleCache::default(),
            last_state_log: Instant::now(),
            core_reported: ova_scheduler::Stats::default(),
            pending: Vec::new(),
            blobs_changed: false,
            unsigned: false,
            verifier,
            load: Load::default(),
            signed_counted: 0,
            run_slots,
            unit_latency: None,
            at_runner: Arc::new(AtomicU32::new(0)),
            inline_results: InlineResults::default(),
            blobs: blobs::BlobClient::new(
                node.endpoint().clone(),
                &node.config().alpn(blobs::BLOB_ALPN),
                node.config().connect_timeout,
            ),
        };
        let task = tokio::spawn(driver.run(net_events, cmd_rx));
        Ok(Self {
            node,
            store,
            commands,
            events,
            stored,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// The network node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.node.peer_id())
    }

    /// Progress events of every job this peer takes part in or submitted.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Counts the group commits that wrote to the store: it changes once writes a peer made
    /// (verified results, fetched result blobs, commits) can be read from [`Runtime::store`].
    /// Events such as [`JobEvent::UnitVerified`] go out as the core decides, before the
    /// writes that go with them are in the store; whoever reads the store after an event
    /// waits for this to change (see `ova_sdk`'s `Job::wait`).
    pub fn store_writes(&self) -> watch::Receiver<u64> {
        self.stored.clone()
    }

    /// Submits a job: stores its blobs (served from here), records it as ours, announces it.
    pub async fn submit(&self, bundle: Bundle) -> Result<JobId, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Submit(Box::new(bundle), tx))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// For a job this peer submitted: (units, verified, failed).
    pub async fn progress(&self, job: JobId) -> Result<Option<(u32, u32, u32)>, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Progress(job, tx)).await.map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)
    }

    /// Changes the cores this peer offers.
    pub async fn set_capacity(&self, cores: u16) {
        self.commands.send(Command::Capacity(cores)).await.ok();
    }

    /// Stops the driver, then the node (saying goodbye to the others).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            rx.await.ok();
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.await.ok();
        }
        self.node.shutdown().await;
    }
}

/// A message the core asked to send, waiting in the outbox for its group commit.
enum Outgoing {
    Send(EndpointId, Vec<u8>),
    Broadcast(Vec<u8>),
}

/// What a send queue carries: a group commit's messages to one peer, in order, or a broadcast
/// ([`by_destination`]).
enum Queued {
    To(EndpointId, Vec<Vec<u8>>),
    Broadcast(Vec<u8>),
}

/// Gathers `messages` into one [`Queued::To`] per destination, each in the order given
/// (broadcasts stay as they are). A group commit of a busy peer carries thousands of
/// messages (a job's first claims, a batch of commits), most of them to a few peers: queued one
/// by one they filled a peer's send queue, and the rest were dropped — commits among them,
/// which the protocol then recovered only through lapsed leases (a P4 run sat idle for 11 s).
fn by_destination(messages: Vec<Outgoing>) -> Vec<Queued> {
    let mut out: Vec<Queued> = Vec::new();
    let mut slot: HashMap<EndpointId, usize> = HashMap::new();
    for m in messages {
        match m {
            Outgoing::Broadcast(bytes) => out.push(Queued::Broadcast(bytes)),
            Outgoing::Send(to, bytes) => match slot.get(&to) {
                Some(&i) => {
                    if let Queued::To(_, list) = &mut out[i] {
                        list.push(bytes);
                    }
                }
                None => {
                    slot.insert(to, out.len());
                    out.push(Queued::To(to, vec![bytes]));
                }
            },
        }
    }
    out
}

/// Most queued messages a sender packs into one round of frames.
const MAX_SENDER_BATCH: usize = 4096;

/// Pauses before a failed send to a peer is tried again (then it is dropped). A peer that
/// has just joined may be known (its claim or commit arrived) before its address is (its
/// advert is still on its way): such a send failed with "no addressing information", and the
/// lost claim or release left a unit waiting a lease out, 1–10 s with every peer idle (one
/// demo run in five).
const SEND_RETRY_PAUSES: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_millis(400), Duration::from_millis(1_600)];

/// Most failed sends a sender keeps to try again (past this the oldest is dropped).
const MAX_SEND_RETRIES: usize = 64;

/// When a failed send is due again, or `None` when it has had its retries
/// ([`SEND_RETRY_PAUSES`]).
fn send_retry_due(failed_at: Instant, attempts: usize) -> Option<Instant> {
    SEND_RETRY_PAUSES.get(attempts).map(|pause| failed_at + *pause)
}

/// A send that failed and will be tried again: the peer, its messages, the attempts so far
/// and when the next is due.
struct Retry {
    to: EndpointId,
    messages: Vec<Vec<u8>>,
    attempts: usize,
    due: Instant,
}

/// The send queue a peer's messages go through (always the same one, so they keep their
/// order).
fn queue_index(to: &EndpointId) -> usize {
    let b = to.as_bytes();
    u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as usize
}

/// Drains one send queue: whatever has piled up while the last frames were on the wire is
/// packed per destination, in order, into as few frames as possible ([`Node::send_batch`]).
/// A send that fails for a reason that may pass (see [`crate::node::NetError::is_transient`])
/// is tried again after [`SEND_RETRY_PAUSES`], and later messages to that peer wait behind
/// it (order is kept); messages are idempotent, so one that did arrive after all costs a
/// duplicate, not a wrong state.
async fn sender_task(node: Node, mut rx: mpsc::Receiver<Queued>, observer: Arc<dyn Observer>) {
    let mut taken = Vec::new();
    let mut retries: VecDeque<Retry> = VecDeque::new();
    loop {
        let next_due = retries.iter().map(|r| r.due).min();
        let mut per_peer: Vec<(EndpointId, Vec<Vec<u8>>, usize)> = Vec::new();
        tokio::select! {
            n = rx.recv_many(&mut taken, MAX_SENDER_BATCH) => {
                if n == 0 {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now).into()),
                if next_due.is_some() => {}
        }
        let now = Instant::now();
        while let Some(i) = retries.iter().position(|r| r.due <= now) {
            let r = retries.remove(i).expect("found");
            per_peer.push((r.to, r.messages, r.attempts));
        }
        for out in taken.drain(..) {
            match out {
                Queued::To(to, list) => {
                    // Behind the messages to the same peer still waiting to be tried again
                    // (a commit must not overtake the claim before it).
                    if let Some(r) = retries.iter_mut().find(|r| r.to == to) {
                        r.messages.extend(list);
                        continue;
                    }
                    match per_peer.iter_mut().find(|(p, ..)| *p == to) {
                        Some((_, queued, _)) => queued.extend(list),
                        None => per_peer.push((to, list, 0)),
                    }
                }
                Queued::Broadcast(bytes) => {
                    if let Err(e) = node.broadcast(bytes).await {
                        debug!("broadcast failed: {e}");
                        observer.frame_dropped("broadcast_failed");
                    }
                }
            }
        }
        for (to, list, attempts) in per_peer {
            let n = list.len();
            let Err((e, list)) = node.send_batch_keeping_unsent(to, list).await else { continue };
            match send_retry_due(Instant::now(), attempts).filter(|_| e.is_transient()) {
                Some(due) => {
                    debug!(peer = %to.fmt_short(), messages = n, attempts, "send failed: {e}; trying again");
                    if retries.len() >= MAX_SEND_RETRIES {
                        retries.pop_front();
                        observer.frame_dropped("send_failed");
                    }
                    retries.push_back(Retry { to, messages: list, attempts: attempts + 1, due });
                }
                None => {
                    debug!(peer = %to.fmt_short(), messages = n, "send failed: {e}");
                    observer.frame_dropped("send_failed");
                }
            }
        }
    }
}

/// A group commit in flight: the store transaction running off the async threads, and what
/// waits for it.
struct GroupCommit {
    /// The write transaction (durable when `messages` is not empty).
    task: JoinHandle<Result<(), StoreError>>,
    /// Messages that acknowledge its writes: they leave once it is durable.
    messages: Vec<Outgoing>,
    /// Our own commits signed for `messages` (counted as published when they leave).
    own_commits: u64,
    /// Whether it writes anything (it may only make earlier writes durable).
    writes: bool,
    /// When it started.
    started: Instant,
}

struct Driver {
    peer: Peer,
    node: Node,
    store: Arc<Store>,
    runner: Option<Arc<dyn UnitRunner>>,
    observer: Arc<dyn Observer>,
    events: broadcast::Sender<JobEvent>,
    /// Changed after each group commit that wrote (see [`Runtime::store_writes`]).
    stored: watch::Sender<u64>,
    config: RuntimeConfig,
    epoch: Instant,
    timer: Option<Millis>,
    /// The senders' queues (see [`Runtime::start`]).
    send_tx: Vec<mpsc::Sender<Queued>>,
    running: HashMap<UnitRef, JoinHandle<()>>,
    /// First result seen per unit with pending commits, to count mismatches (bounded).
    first_result: HashMap<UnitRef, BlobId>,
    done_jobs: std::collections::HashSet<JobId>,
    /// Our jobs waiting for the first peer with spare cores to appear in the core's view: a
    /// job announced into an empty view could not be placed on any architecture class.
    pending_submits: Vec<(ova_jobs::Manifest, Instant)>,
    /// Messages of the current loop turn, sent by [`Driver::flush`].
    outbox: Vec<Outgoing>,
    /// Our jobs that could not be placed at all: (units, failed) for progress queries.
    unplaceable: HashMap<JobId, u32>,
    /// Jobs this peer submitted.
    mine: std::collections::HashSet<JobId>,
    /// Fetches blobs over connections kept per peer.
    blobs: blobs::BlobClient,
    /// Modules of the jobs running here, read from the store once rather than per unit.
    modules: ModuleCache,
    /// The core's counters as last handed to the observer ([`Driver::report_core_counts`]).
    core_reported: ova_scheduler::Stats,
    /// When [`Driver::log_state`] last logged.
    last_state_log: Instant,
    /// Writes waiting for the next group commit ([`Driver::start_commit`]).
    pending: Vec<Pending>,
    /// Units handed to the core whose commits it has not signed yet (see
    /// [`Driver::on_done`]): signed right before the next group commit starts.
    unsigned: bool,
    /// Blobs were added since the store's size was last reported.
    blobs_changed: bool,
    /// Checks commit signatures, each distinct one once (shared with the core).
    verifier: Arc<CachingVerifier>,
    /// Where the driver's time goes (logged by [`Driver::log_state`]).
    load: Load,
    /// Commits the core had signed (its `committed` count) at the last group commit's start:
    /// those signed since go with the next one, and count as published when they leave,
    /// i.e. once the writes they acknowledge are durable (once each, whatever the number of
    /// peers they go to).
    signed_counted: u64,
    /// Units in flight per core (see [`Driver::tune_run_slots`]).
    run_slots: u32,
    /// Result bytes that arrived with their commits (see [`Message::ResultBytes`]), until
    /// the core asks for them.
    inline_results: InlineResults,
    /// Average seconds a unit took to run (see [`Driver::tune_run_slots`]) since `run_slots`
    /// last changed.
    unit_latency: Option<f64>,
    /// Units handed to the runner and not back yet (shared with the units' tasks).
    at_runner: Arc<AtomicU32>,
}

/// Counts a unit as at the runner while alive (an aborted unit task is counted out too).
struct AtRunner(Arc<AtomicU32>);

impl AtRunner {
    /// Counts one more unit in; returns the guard and the units now at the runner.
    fn enter(count: &Arc<AtomicU32>) -> (Self, u32) {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        (Self(count.clone()), n)
    }
}

impl Drop for AtRunner {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters of the driver's own work.
#[derive(Debug, Default)]
struct Load {
    /// Events fed to the core.
    events: u64,
    /// Time spent in the core and carrying out its actions.
    event_time: Duration,
    /// Group commits.
    commits: u64,
    /// Time they took (the loop goes on meanwhile).
    commit_time: Duration,
}

/// Writes that start a group commit without waiting out [`RuntimeConfig::group_commit_interval`].
const GROUP_COMMIT_FULL: usize = 512;

/// Whether the next group commit may start (none is in flight): `interval` has passed since
/// the last one started (after a quiet spell, at once), or `pending` writes fill a batch.
///
/// Starting one as soon as the last ended, a busy peer made hundreds of small commits a
/// second: the P4 benchmark's workers each ran ~650 store transactions and ~350 signatures
/// for ~2,500 units. Waiting out 5 ms gathered several turns of the loop into one: about 10 %
/// more units per second there. Once finished units no longer waited for the group commit to
/// free their run slots ([`Event::UnitsRan`]), a longer wait cost the executors nothing:
/// 10 ms took the peers' CPU per P3 run from about 800 to 650-700 µs and per P4 run from 180
/// to 160-170 µs (15 ms and more gave no further gain, and held the last commits longer).
fn group_commit_due(since_last: Duration, interval: Duration, pending: usize) -> bool {
    since_last >= interval || pending >= GROUP_COMMIT_FULL
}

/// Most events taken in one turn of the driver's loop (between two group commits).
const MAX_BATCH_EVENTS: usize = 256;

/// Work kept in flight per core, in seconds of running: enough for a unit's input fetch, its
/// commit and the next hand-over to overlap with execution, and no more. Units handed to the
/// executor can no longer move to an idle peer, so a deeper pipeline makes a job's tail
/// longer: at 32 slots per core, 5 ms Mandelbrot tiles kept 160 ms of work on each worker
/// that the others, done with theirs, could not take.
const QUEUED_SECS: f64 = 0.025;
/// Units taking more than this to run get one slot per core (the unit in flight only), so a
/// unit never waits behind another long enough for its lease to lapse.
const SLOW_UNIT_SECS: f64 = 0.5;

/// Run slots per core for units that take `unit_secs` each, from `current`: about
/// [`QUEUED_SECS`] of work per core, at least 2 (the next unit waits while one runs), 1 for
/// units over [`SLOW_UNIT_SECS`], at most `max`. The depth moves at most a factor of 2 at a
/// time, since `unit_secs` is itself measured at the current depth.
fn run_slots_for(current: u32, unit_secs: f64, max: u16) -> u32 {
    let max = u32::from(max.max(1));
    let target = if unit_secs > SLOW_UNIT_SECS {
        1
    } else {
        let want = (QUEUED_SECS / unit_secs.max(1e-6)).ceil();
        // Float to integer casts saturate; `want` is at least 1.
        (want as u32).max(2)
    };
    target.clamp(current.div_ceil(2).max(1), current.saturating_mul(2).max(1)).min(max)
}

/// How often [`Driver::log_state`] logs.
const STATE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// At most this many pending units are described in the periodic state log.
const PENDING_LOGGED: usize = 5;

const MAX_FIRST_RESULTS: usize = 1 << 17;

/// Largest result sent along with its commit to the submitter (larger ones are fetched).
const MAX_INLINE_RESULT_BYTES: usize = 64 << 10;

/// Most bytes of results held in [`InlineResults`] (the oldest go first; a result forgotten
/// is fetched as usual once verified).
const MAX_INLINE_HELD_BYTES: usize = 16 << 20;

/// Results of our jobs whose executors sent them with their commits, waiting for the units
/// to be verified: at most [`MAX_INLINE_HELD_BYTES`], oldest forgotten first.
#[derive(Default)]
struct InlineResults {
    by_id: HashMap<BlobId, Vec<u8>>,
    order: VecDeque<BlobId>,
    bytes: usize,
}

impl InlineResults {
    fn put(&mut self, id: BlobId, bytes: Vec<u8>) {
        if self.by_id.contains_key(&id) {
            return;
        }
        self.bytes += bytes.len();
        self.by_id.insert(id, bytes);
        self.order.push_back(id);
        while self.bytes > MAX_INLINE_HELD_BYTES
            && let Some(old) = self.order.pop_front()
        {
            if let Some(b) = self.by_id.remove(&old) {
                self.bytes -= b.len();
            }
        }
        // Ids taken out of the map leave stale entries in `order`: drop them when they
        // outnumber the live ones.
        if self.order.len() > 2 * self.by_id.len() + 64 {
            let live = &self.by_id;
            self.order.retain(|id| live.contains_key(id));
        }
    }

    fn take(&mut self, id: &BlobId) -> Option<Vec<u8>> {
        let bytes = self.by_id.remove(id)?;
        self.bytes -= bytes.len();
        Some(bytes)
    }
}

impl Driver {
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    async fn run(mut self, mut net: mpsc::Receiver<NetEvent>, mut cmds: mpsc::Receiver<Command>) {
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
        if let Err(e) = self.replay(&done_tx) {
            warn!("could not replay the store: {e}");
        }
        self.feed(Event::Online, &done_tx);
        self.flush().await;
        // The group commit in flight, if any (see `start_commit`).
        let mut commit: Option<GroupCommit> = None;
        let interval = self.config.group_commit_interval;
        // When the last group commit started (see `group_commit_due`).
        let mut last_start = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = match self.timer {
                Some(at) => {
                    let wait = at.saturating_sub(self.now());
                    tokio::time::sleep(Duration::from_millis(wait))
                }
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                ev = net.recv() => match ev {
                    Some(ev) => self.on_net(ev, &done_tx),
                    None => break,
                },
                Some(done) = done_rx.recv() => {
                    let mut dones = vec![done];
                    take_ready(&mut done_rx, &mut dones);
                    self.on_done(dones, &done_tx);
                }
                cmd = cmds.recv() => match cmd {
                    Some(Command::Submit(bundle, reply)) => {
                        let r = self.submit(*bundle, &done_tx);
                        reply.send(r).ok();
                    }
                    Some(Command::Progress(job, reply)) => {
                        reply.send(self.progress(&job)).ok();
                    }
                    Some(Command::Capacity(c)) => {
                        if self.runner.is_some() {
                            self.config.cores = c;
                            self.feed(Event::Capacity(c), &done_tx);
                        }
                    }
                    Some(Command::Shutdown(reply)) => {
                        for (_, t) in self.running.drain() {
                            t.abort();
                        }
                        reply.send(()).ok();
                        break;
                    }
                    None => break,
                },
                _ = sleep, if self.timer.is_some() => {
                    self.timer = None;
                    self.feed(Event::Timer, &done_tx);
                }
                Some(r) = async {
                    match commit.as_mut() {
                        Some(c) => Some((&mut c.task).await),
                        None => None,
                    }
                }, if commit.is_some() => {
                    if let Some(c) = commit.take() {
                        self.finish_commit(c, r);
                    }
                }
                // The interval since the last group commit is over: commit what waits.
                _ = tokio::time::sleep_until((last_start + interval).into()),
                    if commit.is_none() && self.has_uncommitted() => {}
                _ = housekeeping.tick() => {
                    self.flush_pending_submits(&done_tx);
                    if std::mem::take(&mut self.blobs_changed) {
                        self.report_store();
                    }
                    self.log_state(commit.as_ref().map(|c| c.started.elapsed()));
                    self.report_core_counts();
                }
            }
            // Take in whatever else is already waiting (bounded), so one group commit covers
            // a whole batch of results and messages.
            let mut dones = Vec::new();
            take_ready(&mut done_rx, &mut dones);
            if !dones.is_empty() {
                self.on_done(dones, &done_tx);
            }
            for _ in 0..MAX_BATCH_EVENTS {
                let Ok(ev) = net.try_recv() else { break };
                self.on_net(ev, &done_tx);
            }
            if commit.is_none()
                && group_commit_due(last_start.elapsed(), interval, self.pending.len())
            {
                self.sign_ran(&done_tx);
                commit = self.start_commit();
                if commit.is_some() {
                    last_start = Instant::now();
                }
            }
        }
        if let Some(mut c) = commit {
            let r = (&mut c.task).await;
            self.finish_commit(c, r);
        }
        self.sign_ran(&done_tx);
        self.flush().await;
        self.blobs.close();
        if let Err(e) = self.store.sync() {
            warn!("store: {e}");
        }
    }

    /// Hands the observer what the core counted since the last report: commits it rejected,
    /// messages it held for jobs not known yet, and result fetches it retried or gave up.
    fn report_core_counts(&mut self) {
        let now = self.peer.stats();
        let was = &self.core_reported;
        for (reason, n) in [
            ("bad_signature", now.bad_signature - was.bad_signature),
            ("unknown_signer", now.unknown_signer - was.unknown_signer),
            ("equivocation", now.equivocations - was.equivocations),
        ] {
            if n > 0 {
                self.observer.commits_rejected(reason, n);
            }
        }
        let (held, dropped) =
            (now.held_early - was.held_early, now.early_dropped - was.early_dropped);
        if held + dropped > 0 {
            self.observer.messages_held_early(held, dropped);
        }
        let (retried, abandoned) = (
            now.result_fetch_retries - was.result_fetch_retries,
            now.result_fetches_abandoned - was.result_fetches_abandoned,
        );
        if retried + abandoned > 0 {
            self.observer.result_fetches(retried, abandoned);
        }
        let (retried, abandoned) = (
            now.bundle_fetch_retries - was.bundle_fetch_retries,
            now.bundle_fetches_abandoned - was.bundle_fetches_abandoned,
        );
        if retried + abandoned > 0 {
            self.observer.bundle_fetches(retried, abandoned);
        }
        self.core_reported = now.clone();
    }

    /// Every few seconds, at debug level under the target `ova_net::state` (so it can be
    /// turned on alone: `RUST_LOG=warn,ova_net::state=debug`): what the core tracks and does,
    /// and what it knows of the first few units still pending (for diagnosing a stuck or slow
    /// peer without the timing changes of a per-message log).
    fn log_state(&mut self, commit_in_flight: Option<Duration>) {
        if self.last_state_log.elapsed() < STATE_LOG_INTERVAL {
            return;
        }
        self.last_state_log = Instant::now();
        if !tracing::enabled!(target: "ova_net::state", tracing::Level::DEBUG) {
            return;
        }
        let s = self.peer.stats();
        let pending = self.peer.pending_units(usize::MAX);
        debug!(
            target: "ova_net::state",
            me = ?self.peer.id(),
            now = self.now(),
            tracked = self.peer.tracked_units(),
            pending = pending.len(),
            done = self.peer.done_units(),
            running = self.running.len(),
            started = s.started,
            committed = s.committed,
            verified = s.verified,
            failed = s.failed,
            probes = s.probes,
            stolen = s.stolen,
            messages_in = s.messages_in,
            events = self.load.events,
            event_ms = self.load.event_time.as_millis() as u64,
            commits = self.load.commits,
            commit_ms = self.load.commit_time.as_millis() as u64,
            commit_in_flight_ms = commit_in_flight.map(|d| d.as_millis() as u64),
            "core state"
        );
        for unit in pending.into_iter().take(PENDING_LOGGED) {
            let what = self.peer.describe_unit(&unit).unwrap_or_default();
            debug!(
                target: "ova_net::state",
                me = ?self.peer.id(),
                job = %unit.job.short(),
                unit = unit.index,
                "pending: {what}"
            );
        }
    }

    /// Adapts the units kept in flight per core to how long a unit takes to run (see
    /// [`run_slots_for`]).
    ///
    /// A unit handed to the runner `took` before its result, with `depth` units there per core
    /// (itself included), waited behind about `depth - 1` others: the time one unit takes is
    /// `took / depth`. (The depth counted is the units really at the runner, not the slots:
    /// right after the slots grow, the queue is still short, and `took / slots` made units
    /// look several times faster than they were.)
    /// (Judged on `took` alone, a deep pipeline of 13 ms Mandelbrot tiles looked like
    /// half-second units: the slots fell from 32 to 1 per core within a few results, and the
    /// executor sat idle between units for the rest of the job.)
    fn tune_run_slots(&mut self, took: Duration, depth: u32) {
        let s = took.as_secs_f64() / f64::from(depth.max(1));
        let ewma = self.unit_latency.map_or(s, |e| 0.9 * e + 0.1 * s);
        self.unit_latency = Some(ewma);
        let next = run_slots_for(self.run_slots, ewma, self.config.max_run_slots_per_core);
        if next != self.run_slots {
            debug!(from = self.run_slots, to = next, unit_secs = ewma, "run slots per core");
            self.run_slots = next;
            self.unit_latency = None;
            self.peer.set_run_slots_per_core(next);
        }
    }

    /// Units and fetches that ended, handed to the core at once. Finished units go as
    /// [`Event::UnitsRan`]: their run slots free now and the next units start, but their
    /// commits are signed only right before the next group commit ([`Driver::sign_ran`]),
    /// all with one signature: they could not leave before it anyway (messages wait for the
    /// writes they acknowledge). Signed one by one as they came, tiny units were signed (and
    /// checked by every receiver) nearly one at a time; held back in the shell until a group
    /// commit started, a unit's run slot waited out the commit in flight and the interval
    /// after it, and the executor ran dry between units.
    fn on_done(&mut self, dones: Vec<Done>, done_tx: &mpsc::Sender<Done>) {
        let mut ran = Vec::new();
        for done in dones {
            match done {
                Done::Unit(unit, result, took) => {
                    self.running.remove(&unit);
                    if let Some((took, depth)) = took {
                        self.tune_run_slots(took, depth);
                    }
                    let result = result.map(|(id, bytes)| {
                        if let Some(bytes) = bytes {
                            self.pending.push(Pending::Blob(id, bytes));
                        }
                        id
                    });
                    self.unsigned |= result.is_ok();
                    ran.push((unit, result));
                }
                Done::Fetch(blob, purpose, fetched) => {
                    let ok = fetched.is_ok();
                    if let Ok(Some(bytes)) = fetched {
                        self.pending.push(Pending::Blob(blob, bytes));
                    }
                    self.feed(Event::BlobFetched { blob, purpose, ok }, done_tx);
                    self.blobs_changed = true;
                }
            }
        }
        if !ran.is_empty() {
            self.feed(Event::UnitsRan(ran), done_tx);
        }
    }

    /// Whether writes, unsigned results or messages wait for the next group commit.
    fn has_uncommitted(&self) -> bool {
        self.unsigned || !self.pending.is_empty() || !self.outbox.is_empty()
    }

    /// Has the core sign the results handed over since the last group commit (one
    /// signature), so their commits go with the next one.
    fn sign_ran(&mut self, done_tx: &mpsc::Sender<Done>) {
        if std::mem::take(&mut self.unsigned) {
            self.feed(Event::SignFinished, done_tx);
        }
    }

    /// Feeds stored state into the fresh core: announcements (ours as submissions), then every
    /// commit held.
    fn replay(&mut self, done_tx: &mpsc::Sender<Done>) -> Result<(), RuntimeError> {
        let me = self.peer.id();
        let mut jobs = 0;
        for (job, bytes) in self.store.announces()? {
            let Ok(Message::Announce(info)) = Message::decode(&bytes) else {
                warn!(%job, "stored announcement does not decode; skipped");
                continue;
            };
            jobs += 1;
            if info.submitter == me {
                self.mine.insert(job);
            }
            let from = info.submitter;
            self.feed(Event::Message { from, msg: Message::Announce(info) }, done_tx);
        }
        // Our jobs stopped before they were announced: submit them now.
        for (job, state) in self.store.jobs()? {
            self.mine.insert(job);
            if state != b"done"
                && self.peer.job_progress(&job).is_none()
                && let Some(m) = self.store.manifest(&job)?
            {
                self.submit_when_placeable(m, done_tx);
            }
        }
        let commits = self.store.all_commits()?;
        let n = commits.len();
        for bytes in commits {
            if let Some(c) = decode_stored_commit(&bytes) {
                self.feed(
                    Event::Message { from: c.body.executor, msg: Message::Commit(Box::new(c)) },
                    done_tx,
                );
            }
        }
        if jobs + n > 0 {
            info!(jobs, commits = n, "resumed from the store");
        }
        self.report_store();
        Ok(())
    }

    fn report_store(&self) {
        if let Ok((count, bytes)) = self.store.blob_stats() {
            self.observer.blobs_stored(count, bytes);
        }
    }

    fn submit(
        &mut self,
        bundle: Bundle,
        done_tx: &mpsc::Sender<Done>,
    ) -> Result<JobId, RuntimeError> {
        let job = bundle.job_id();
        let manifest = bundle.manifest().clone();
        self.store.write(|w| {
            for (_, bytes) in bundle.blobs() {
                w.put_blob(bytes)?;
            }
            w.put_manifest(&manifest)?;
            w.put_job(&job, b"submitted")?;
            Ok(())
        })?;
        self.observer.job_submitted();
        self.done_jobs.remove(&job);
        self.mine.insert(job);
        self.unplaceable.remove(&job);
        info!(%job, units = manifest.units.len(), name = %manifest.name, "submitting job");
        self.submit_when_placeable(manifest, done_tx);
        self.report_store();
        Ok(job)
    }

    /// Distinct peers offering cores in the core's view (this one included).
    fn workers_in_view(&self) -> usize {
        let me = self.peer.id();
        self.peer.view().members().filter(|m| m.peer != me && m.weight > 0).count()
            + usize::from(self.peer.view().me().weight > 0)
    }

    /// Whether a job asking for `quorum` can be placed: that many distinct workers are known.
    fn placeable(&self, quorum: u8) -> bool {
        self.workers_in_view() >= usize::from(quorum.max(1))
    }

    fn submit_when_placeable(
        &mut self,
        manifest: ova_jobs::Manifest,
        done_tx: &mpsc::Sender<Done>,
    ) {
        if self.placeable(manifest.replication.quorum) {
            self.announce(manifest, done_tx);
        } else {
            debug!(
                quorum = manifest.replication.quorum,
                workers = self.workers_in_view(),
                "too few workers known yet; the job is announced when enough appear"
            );
            self.pending_submits.push((manifest, Instant::now()));
        }
    }

    /// Hands a job to the core, with a fresh census of the network's spare cores per
    /// architecture class: the core splits same-arch units between classes in these
    /// proportions, and its own view holds only a ring neighbourhood.
    fn announce(&mut self, manifest: ova_jobs::Manifest, done_tx: &mpsc::Sender<Done>) {
        let census = capacity_census(
            self.node
                .peers()
                .iter()
                .map(|p| (ova_scheduler::ArchClass(p.arch.0), p.capacity.spare_cores))
                .chain(std::iter::once((self.peer.arch(), self.peer.view().me().weight))),
        );
        self.peer.set_capacity_census(census);
        self.feed(Event::Submit(Box::new(manifest)), done_tx);
    }

    /// Submits the waiting jobs that can now be placed, and fails those that waited longer
    /// than [`RuntimeConfig::placement_timeout`].
    fn flush_pending_submits(&mut self, done_tx: &mpsc::Sender<Done>) {
        if self.pending_submits.is_empty() {
            return;
        }
        for (m, since) in std::mem::take(&mut self.pending_submits) {
            let quorum = m.replication.quorum;
            if self.placeable(quorum) {
                self.announce(m, done_tx);
            } else if since.elapsed() >= self.config.placement_timeout {
                self.fail_unplaceable(&m);
            } else {
                self.pending_submits.push((m, since));
            }
        }
    }

    /// Every unit of `m` fails: the network does not have `quorum` distinct workers.
    fn fail_unplaceable(&mut self, m: &ova_jobs::Manifest) {
        let job = m.job_id();
        let quorum = m.replication.quorum;
        let workers = self.workers_in_view();
        let reason = format!(
            "quorum {quorum} needs {quorum} distinct workers, but only {workers} offered cores \
             within {} s",
            self.config.placement_timeout.as_secs()
        );
        warn!(%job, "{reason}");
        let n = m.units.len() as u32;
        for index in 0..n {
            self.observer.unit_failed(true);
            self.events
                .send(JobEvent::UnitFailed { unit: UnitRef { job, index }, reason: reason.clone() })
                .ok();
        }
        self.unplaceable.insert(job, n);
        self.done_jobs.insert(job);
        self.observer.job_completed();
        if let Err(e) = self.store.write(|w| w.put_job(&job, b"done")) {
            warn!("store: {e}");
        }
        self.events.send(JobEvent::JobDone { job, verified: 0, failed: n }).ok();
    }

    /// (units, verified, failed) of a job of ours, including ones still waiting to be placed.
    fn progress(&self, job: &JobId) -> Option<(u32, u32, u32)> {
        if let Some(p) = self.peer.job_progress(job) {
            return Some(p);
        }
        if let Some(n) = self.unplaceable.get(job) {
            return Some((*n, 0, *n));
        }
        self.pending_submits
            .iter()
            .find(|(m, _)| m.job_id() == *job)
            .map(|(m, _)| (m.units.len() as u32, 0, 0))
    }

    fn on_net(&mut self, ev: NetEvent, done_tx: &mpsc::Sender<Done>) {
        let (from, payload) = match ev {
            NetEvent::Broadcast { from, payload } | NetEvent::Direct { from, payload } => {
                (from, payload)
            }
            NetEvent::Advert { joined: true, .. } => {
                // A new neighbour: advertise again so it learns about us now rather than
                // at our next periodic advert (gossip sent before a neighbour is up is lost).
                self.feed(Event::Online, done_tx);
                return;
            }
            NetEvent::Advert { .. } => return,
            NetEvent::PeerExpired(id) | NetEvent::PeerLeft(id) => {
                self.feed(Event::PeerLeft(peer_id(&id)), done_tx);
                return;
            }
        };
        let msg = match Message::decode(&payload) {
            Ok(mut m) => {
                // Lease ends come as time remaining (our clocks differ): now ours.
                m.from_wire_times(self.now());
                m
            }
            Err(e) => {
                debug!(peer = %from.fmt_short(), "undecodable message: {e}");
                self.observer.frame_dropped(e.kind());
                return;
            }
        };
        drop(payload);
        self.observer.message_received(msg.kind());
        let msg = match msg {
            Message::ResultBytes(results) => {
                for bytes in results.into_iter().take(MAX_BATCH) {
                    self.keep_inline_result(bytes);
                }
                return;
            }
            msg => msg,
        };
        let from = peer_id(&from);
        // A batch of commits is opened once, here: its commits are noted, and the core takes
        // them as opened (`Event::Commits`) instead of checking the batch again. One that
        // fails goes to the core as it came, which counts it rejected.
        let msg = match msg {
            Message::Commits(batch) => match batch.open_checked(&*self.verifier) {
                Ok(opened) => {
                    for c in opened.commits() {
                        self.observer.commit_received();
                        self.note_checked_commit(c);
                    }
                    self.feed(Event::Commits { from, batch: opened }, done_tx);
                    return;
                }
                Err(_) => Message::Commits(batch),
            },
            msg => msg,
        };
        match &msg {
            Message::Announce(info) if info.derived().is_some() => {
                let bytes = Message::Announce(info.clone()).encode();
                if let Err(e) = self.store.write_deferred(|w| {
                    w.put_manifest(&info.manifest)?;
                    w.put_announce(&info.job_id, &bytes)
                }) {
                    warn!("store: {e}");
                }
            }
            Message::Commit(c) => {
                self.observer.commit_received();
                self.note_commit(c);
            }
            Message::ProbeReply { commits, .. } => {
                for c in commits.clone() {
                    self.note_commit(&c);
                }
            }
            Message::SyncReply(commits) => {
                for c in commits.clone() {
                    self.note_commit(&c);
                }
            }
            _ => {}
        }
        let advert = matches!(msg, Message::Advert(_));
        self.feed(Event::Message { from, msg }, done_tx);
        if advert {
            self.flush_pending_submits(done_tx);
        }
    }

    /// Checks a signed commit received, tells subscribers, and persists it when it is for a
    /// job of ours (the store keeps only verifiable records).
    ///
    /// A commit on another's job is kept in the core's memory only until the unit is decided,
    /// then persisted if this peer keeps the result (the [`Action::UnitVerified`] proof). A
    /// watcher that merely followed the unit writes nothing: on the network bench's tiny
    /// units (P4), storing every commit heard cost about a tenth of the peers' CPU, and
    /// after a restart the network tells such a peer again what it needs.
    fn note_commit(&mut self, c: &SignedCommit) {
        if ova_scheduler::commit::verify(&*self.verifier, c).is_ok() {
            self.note_checked_commit(c);
        }
    }

    /// [`Driver::note_commit`] for a commit whose signature was checked.
    fn note_checked_commit(&mut self, c: &SignedCommit) {
        let b = &c.body;
        match self.first_result.get(&b.unit) {
            Some(r) if *r != b.result => self.observer.result_mismatched(),
            Some(_) => {}
            None => {
                if self.first_result.len() >= MAX_FIRST_RESULTS {
                    self.first_result.clear();
                }
                self.first_result.insert(b.unit, b.result);
            }
        }
        if b.executor != self.peer.id() && self.is_mine(&b.unit.job) {
            self.persist_commit(c);
        }
        self.events
            .send(JobEvent::UnitCommitted { unit: b.unit, by: b.executor, result: b.result })
            .ok();
    }

    /// Queues a checked commit for the next group commit.
    fn persist_commit(&mut self, c: &SignedCommit) {
        if let Ok(bytes) = ova_jobs::wire::to_vec(c) {
            let b = &c.body;
            self.pending.push(Pending::Commit { unit_id: b.unit_id, signer: b.executor.0, bytes });
        }
    }

    fn feed(&mut self, event: Event, done_tx: &mpsc::Sender<Done>) {
        let t0 = Instant::now();
        let now = self.now();
        let actions: Vec<Action> = self.peer.handle(event, now).collect();
        for a in actions {
            self.perform(a, done_tx);
        }
        self.load.events += 1;
        self.load.event_time += t0.elapsed();
    }

    /// Queues a message; it leaves at the end of this turn of the loop, after the store is
    /// synced (see [`Driver::flush`]).
    fn enqueue(&mut self, out: Outgoing) {
        self.outbox.push(out);
    }

    /// Group commit: makes this turn's writes durable in one transaction, then releases the
    /// messages that acknowledge them (commits, announcements). A peer killed at any point
    /// has therefore never told anyone about a result it could lose.
    async fn flush(&mut self) {
        while let Some(mut c) = self.start_commit() {
            let r = (&mut c.task).await;
            self.finish_commit(c, r);
        }
    }

    /// Starts the group commit of everything this turn (and any turn since the last commit)
    /// wrote and wants to send: one write transaction, durable when messages
    /// wait on it; with nothing to acknowledge yet it becomes durable with a later commit. It
    /// runs off the async threads while the loop goes on taking in events; their writes and
    /// messages wait for the next commit. `None`: nothing to commit.
    fn start_commit(&mut self) -> Option<GroupCommit> {
        if self.outbox.is_empty() && self.pending.is_empty() {
            return None;
        }
        let store = self.store.clone();
        let writes = std::mem::take(&mut self.pending);
        let durable = !self.outbox.is_empty();
        let writes_any = !writes.is_empty();
        Some(GroupCommit {
            task: tokio::task::spawn_blocking(move || persist(&store, writes, durable)),
            messages: std::mem::take(&mut self.outbox),
            own_commits: {
                let signed = self.peer.stats().committed;
                signed - std::mem::replace(&mut self.signed_counted, signed)
            },
            writes: writes_any,
            started: Instant::now(),
        })
    }

    /// The group commit ended: its messages leave now (all of them acknowledge writes that
    /// are durable), or are dropped if the store failed.
    fn finish_commit(
        &mut self,
        c: GroupCommit,
        r: Result<Result<(), StoreError>, tokio::task::JoinError>,
    ) {
        self.load.commits += 1;
        self.load.commit_time += c.started.elapsed();
        let synced = r.unwrap_or_else(|e| Err(StoreError::Db(format!("store task: {e}"))));
        if let Err(e) = synced {
            warn!("store: {e}; {} messages are not sent", c.messages.len());
            return;
        }
        if c.writes {
            self.stored.send_modify(|n| *n = n.wrapping_add(1));
        }
        self.observer.commits_published(c.own_commits);
        for out in by_destination(c.messages) {
            let (i, n) = match &out {
                Queued::To(to, list) => (queue_index(to), list.len()),
                Queued::Broadcast(_) => (0, 1),
            };
            if let Err(e) = self.send_tx[i % self.send_tx.len()].try_send(out) {
                let to = match e.into_inner() {
                    Queued::To(to, _) => to.fmt_short().to_string(),
                    Queued::Broadcast(_) => "everyone".into(),
                };
                warn!(peer = %to, messages = n, "send queue full; messages dropped");
                for _ in 0..n {
                    self.observer.frame_dropped("send_queue_full");
                }
            }
        }
    }

    fn perform(&mut self, action: Action, done_tx: &mpsc::Sender<Done>) {
        match action {
            Action::Send { to, mut msg } => {
                // Lease ends leave as time remaining: the receiver's clock is not ours.
                msg.to_wire_times(self.now());
                let Some(id) = endpoint_id(&to) else {
                    self.observer.frame_dropped("bad_peer_id");
                    return;
                };
                // Our small results go to the job's submitter just before the commits that
                // name them, so it needs no fetch: as few messages as they fit in.
                let me = self.peer.id();
                let ours = match &msg {
                    Message::Commit(c) if c.body.executor == me => {
                        vec![(c.body.unit, c.body.result)]
                    }
                    Message::Commits(b) if b.executor == me => {
                        b.entries.iter().map(|e| (e.unit, e.result)).collect()
                    }
                    _ => Vec::new(),
                };
                let mut results: Vec<Vec<u8>> = Vec::new();
                let mut bytes = 0;
                let (mut sent, mut skipped) = (0, 0);
                for (unit, result) in ours {
                    let Some(r) = self.inline_result(&to, &unit.job, &result) else { continue };
                    // Another replica that agreed has sent these bytes with its commit: at
                    // quorum 2 each result would otherwise cross the submitter's link twice.
                    if self.peer.result_agreed_by_another(&unit, &result) {
                        skipped += 1;
                        continue;
                    }
                    if !results.is_empty()
                        && (results.len() >= MAX_BATCH || bytes + r.len() > MAX_RESULT_BYTES_BATCH)
                    {
                        let full = std::mem::take(&mut results);
                        self.enqueue(Outgoing::Send(id, Message::ResultBytes(full).encode()));
                        bytes = 0;
                    }
                    bytes += r.len();
                    results.push(r);
                    sent += 1;
                }
                if !results.is_empty() {
                    self.enqueue(Outgoing::Send(id, Message::ResultBytes(results).encode()));
                }
                if sent + skipped > 0 {
                    self.observer.inline_results(sent, skipped);
                }
                self.enqueue(Outgoing::Send(id, msg.encode()));
            }
            Action::Broadcast(msg) => {
                let bytes = msg.encode();
                if let Message::Announce(info) = &msg
                    && info.submitter == self.peer.id()
                {
                    // Our own announcement: kept so a restarted submitter resumes the job as is.
                    if let Err(e) =
                        self.store.write_deferred(|w| w.put_announce(&info.job_id, &bytes))
                    {
                        warn!("store: {e}");
                    }
                }
                if bytes.len() + 1024 <= self.node.config().max_broadcast_bytes {
                    self.enqueue(Outgoing::Broadcast(bytes));
                } else {
                    // Too large for gossip (a big job's announcement): tell every known peer
                    // directly instead.
                    for p in self.node.peers() {
                        self.enqueue(Outgoing::Send(p.id, bytes.clone()));
                    }
                }
            }
            Action::StartUnit { unit, unit_id, job, sources } => {
                self.start_unit(unit, unit_id, job, sources, done_tx);
            }
            Action::CancelUnit(unit) => {
                if let Some(t) = self.running.remove(&unit) {
                    t.abort();
                }
            }
            Action::StoreBlob(blob) => {
                let pending =
                    self.pending.iter().any(|p| matches!(p, Pending::Blob(b, _) if *b == blob));
                if !pending && !self.store.has_blob(&blob).unwrap_or(false) {
                    warn!(%blob, "core asked to keep a result this peer does not hold");
                }
            }
            Action::FetchBlob { blob, from, purpose } => self.fetch(blob, from, purpose, done_tx),
            Action::SetTimer(at) => self.timer = Some(at),
            Action::UnitVerified { unit, result, signers, proof } => {
                let mine = self.is_mine(&unit.job);
                // The proof is empty unless we keep this result. Of our own jobs we store
                // the commits received as they come (`note_commit`), and our own commit here
                // (a submitter that runs units of its job checks it from its store too); of
                // others' jobs, the other signers' commits.
                let me = self.peer.id();
                for c in proof.iter().filter(|c| (c.body.executor == me) == mine) {
                    self.persist_commit(c);
                }
                self.observer.unit_verified(mine);
                self.first_result.remove(&unit);
                if let Some(unit_id) = self.peer.unit_id(&unit) {
                    self.pending.push(Pending::Verified { unit_id, result });
                }
                self.events.send(JobEvent::UnitVerified { unit, result, signers }).ok();
                self.check_done(unit.job);
            }
            Action::UnitFailed { unit, reason } => {
                let mine = self.is_mine(&unit.job);
                self.observer.unit_failed(mine);
                self.first_result.remove(&unit);
                self.events.send(JobEvent::UnitFailed { unit, reason: reason.to_string() }).ok();
                self.check_done(unit.job);
            }
        }
    }

    /// The bytes of our result `id` of a unit of `job`, if `to` is the job's submitter and
    /// they are small: they go just before the commit, so the submitter needs no fetch.
    fn inline_result(&self, to: &PeerId, job: &JobId, id: &BlobId) -> Option<Vec<u8>> {
        if *to == self.peer.id() || self.peer.job_submitter(job) != Some(*to) {
            return None;
        }
        let id = *id;
        // Usually still waiting for this turn's group commit; a re-sent commit's is stored.
        let pending = self.pending.iter().rev().find_map(|p| match p {
            Pending::Blob(b, bytes) if *b == id => Some(bytes),
            _ => None,
        });
        let small = |bytes: &Vec<u8>| bytes.len() <= MAX_INLINE_RESULT_BYTES;
        match pending {
            Some(bytes) => small(bytes).then(|| bytes.clone()),
            None => self.store.blob(&id).ok().flatten().filter(small),
        }
    }

    /// A result's bytes sent ahead of its commit: held until the core, having verified the
    /// unit, asks for that result ([`Driver::fetch`]); results that never reach quorum (a
    /// liar's) are never stored, and are forgotten oldest first.
    fn keep_inline_result(&mut self, bytes: Vec<u8>) {
        if self.mine.is_empty() || bytes.len() > MAX_INLINE_RESULT_BYTES {
            self.observer.frame_dropped("unwanted_result");
            return;
        }
        self.inline_results.put(BlobId::of(&bytes), bytes);
    }

    fn is_mine(&self, job: &JobId) -> bool {
        self.mine.contains(job)
    }

    fn check_done(&mut self, job: JobId) {
        if self.done_jobs.contains(&job) {
            return;
        }
        if let Some((total, verified, failed)) = self.peer.job_progress(&job)
            && verified + failed >= total
            && self.is_mine(&job)
        {
            self.done_jobs.insert(job);
            self.observer.job_completed();
            if let Err(e) = self.store.write(|w| w.put_job(&job, b"done")) {
                warn!("store: {e}");
            }
            info!(%job, verified, failed, "job complete");
            self.events.send(JobEvent::JobDone { job, verified, failed }).ok();
        }
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher {
            client: self.blobs.clone(),
            node: self.node.clone(),
            store: self.store.clone(),
            max: self.config.max_blob_bytes,
            timeout: self.config.fetch_timeout,
            observer: self.observer.clone(),
        }
    }

    fn fetch(
        &mut self,
        blob: BlobId,
        from: Vec<PeerId>,
        purpose: FetchPurpose,
        done_tx: &mpsc::Sender<Done>,
    ) {
        if let FetchPurpose::Result(_) = purpose
            && let Some(bytes) = self.inline_results.take(&blob)
        {
            // Its executor sent it with its commit: stored with this turn's writes.
            self.pending.push(Pending::Blob(blob, bytes));
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                done_tx.send(Done::Fetch(blob, purpose, Ok(None))).await.ok();
            });
            return;
        }
        // A bundle copy is the module and every input, so the job survives its submitter.
        let wanted: Vec<BlobId> = match purpose {
            FetchPurpose::Bundle(job) => match self.store.manifest(&job) {
                Ok(Some(m)) => m.blob_ids(),
                _ => vec![blob],
            },
            FetchPurpose::Result(_) => vec![blob],
        };
        let fetcher = self.fetcher();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let fetched = if let FetchPurpose::Result(_) = purpose {
                match fetcher.fetch_bytes(&from, blob).await {
                    Some((bytes, false)) => Ok(Some(bytes)),
                    Some((_, true)) => Ok(None),
                    None => Err(()),
                }
            } else if fetcher.fetch_all_into(&from, wanted).await {
                Ok(None)
            } else {
                Err(())
            };
            done_tx.send(Done::Fetch(blob, purpose, fetched)).await.ok();
        });
    }

    fn start_unit(
        &mut self,
        unit: UnitRef,
        unit_id: UnitId,
        job: Arc<JobInfo>,
        sources: Vec<PeerId>,
        done_tx: &mpsc::Sender<Done>,
    ) {
        let done_tx = done_tx.clone();
        let cores = u32::from(self.config.cores.max(1));
        let at_runner = self.at_runner.clone();
        let Some(runner) = self.runner.clone() else {
            done_tx.try_send(Done::Unit(unit, Err(LocalFailure::Cancelled), None)).ok();
            return;
        };
        // The allow-list guards this machine's CPU: a unit of a job from anyone else is handed
        // straight back (the network places it elsewhere at once), though the job is still
        // followed and its results checked like any other.
        if let Some(allowed) = &self.config.allowed_submitters
            && !allowed.contains(&job.submitter)
            && job.submitter != self.peer.id()
        {
            debug!(job = %job.job_id, "submitter not on the allow-list; unit declined");
            let task = tokio::spawn(async move {
                done_tx.send(Done::Unit(unit, Err(LocalFailure::Declined), None)).await.ok();
            });
            self.running.insert(unit, task);
            return;
        }
        // Memoisation: the same computation (a unit id names module, input and arguments) was
        // verified by a quorum before and its record is held here — reuse it, run nothing.
        let verified_before = self.store.verified(&unit_id).ok().flatten();
        if let Some(result) = verified_before
            && self.store.has_blob(&result).unwrap_or(false)
        {
            debug!(%unit_id, "verified before; reusing the result");
            self.observer.unit_memoised();
            let task = tokio::spawn(async move {
                done_tx.send(Done::Unit(unit, Ok((result, None)), None)).await.ok();
            });
            self.running.insert(unit, task);
            return;
        }
        let store = self.store.clone();
        let fetcher = self.fetcher();
        let modules = self.modules.clone();
        let events = self.events.clone();
        let observer = self.observer.clone();
        // We saw the unit verified but do not hold its result (we neither ran it nor keep a
        // copy): ask the peers we know for those bytes (checked against the verified hash)
        // before computing it again.
        let result_sources: Vec<PeerId> = match verified_before {
            Some(_) => {
                self.node.peers().iter().map(|p| peer_id(&p.id)).take(MAX_MEMO_SOURCES).collect()
            }
            None => Vec::new(),
        };
        let task = tokio::spawn(async move {
            if let Some(result) = verified_before
                && fetcher.fetch_into_rounds(&result_sources, result, &[Duration::ZERO]).await
            {
                debug!(%unit_id, "verified before; fetched the result instead of running");
                observer.unit_memoised();
                done_tx.send(Done::Unit(unit, Ok((result, None)), None)).await.ok();
                return;
            }
            events.send(JobEvent::UnitStarted { unit }).ok();
            let m = &job.manifest;
            let Some(spec) = m.units.get(unit.index as usize) else {
                done_tx
                    .send(Done::Unit(unit, Err(LocalFailure::InputsUnavailable), None))
                    .await
                    .ok();
                return;
            };
            // Peers known to hold the bundle first, then the submitter, then the peers chosen
            // to keep copies (they fetch it at announcement): a job goes on while its
            // submitter is away.
            let mut from = sources.clone();
            for p in std::iter::once(&job.submitter).chain(&job.holders) {
                if !from.contains(p) {
                    from.push(*p);
                }
            }
            // The module is kept (every unit of the job needs it); a unit's input is used
            // once, so it is not stored here unless this peer keeps a copy of the bundle.
            let module = match modules.get(&store, m.module) {
                Some(m) => Some(m),
                None if fetcher.fetch_into(&from, m.module).await => modules.get(&store, m.module),
                None => None,
            };
            let input = fetcher.fetch_bytes(&from, spec.input).await;
            let (Some(module), Some((input, _))) = (module, input) else {
                done_tx
                    .send(Done::Unit(unit, Err(LocalFailure::InputsUnavailable), None))
                    .await
                    .ok();
                return;
            };
            let req = RunRequest {
                unit,
                unit_id,
                job_name: m.name.clone(),
                module_id: m.module,
                module,
                input,
                args: spec.args.clone(),
                limits: m.limits,
                determinism: m.determinism,
            };
            // The units ahead of this one per core (itself included): it waits behind them.
            let (counted, in_flight) = AtRunner::enter(&at_runner);
            let depth = in_flight.div_ceil(cores);
            let t0 = Instant::now();
            let out = runner.run(req).await;
            let took = t0.elapsed();
            drop(counted);
            let result = match out.record {
                Some(record) => {
                    let bytes = record.encode();
                    Ok((BlobId::of(&bytes), Some(bytes)))
                }
                None => Err(LocalFailure::Cancelled),
            };
            done_tx.send(Done::Unit(unit, result, Some((took, depth)))).await.ok();
        });
        self.running.insert(unit, task);
    }
}

/// A commit record from the store. Records written before commits could be signed in
/// batches have no batch field; they are read as commits signed alone.
fn decode_stored_commit(bytes: &[u8]) -> Option<SignedCommit> {
    #[derive(serde::Deserialize)]
    struct Alone {
        body: ova_scheduler::CommitBody,
        sig: ova_scheduler::commit::serde_big_array_shim::Sig,
    }
    postcard::from_bytes::<SignedCommit>(bytes).ok().or_else(|| {
        let a: Alone = postcard::from_bytes(bytes).ok()?;
        Some(SignedCommit { body: a.body, sig: a.sig, batch: None })
    })
}

/// Moves what is already waiting on `rx` into `into`, up to [`MAX_BATCH_EVENTS`] in all.
fn take_ready<T>(rx: &mut mpsc::Receiver<T>, into: &mut Vec<T>) {
    while into.len() < MAX_BATCH_EVENTS {
        let Ok(v) = rx.try_recv() else { break };
        into.push(v);
    }
}

/// Spare cores per architecture class, from (class, spare cores) of every known peer; classes
/// with no spare core are left out, and the list is sorted by class.
fn capacity_census(
    peers: impl Iterator<Item = (ova_scheduler::ArchClass, u16)>,
) -> Vec<(ova_scheduler::ArchClass, u32)> {
    let spare = peers.filter(|(_, n)| *n > 0).map(|(a, n)| (a, u32::from(n)));
    ova_scheduler::placement::capacity_by_class(spare)
}

/// Most modules kept in memory by [`ModuleCache`].
const MAX_CACHED_MODULES: usize = 8;

/// The bytes of recently used modules, shared by the units that run them.
#[derive(Clone, Default)]
struct ModuleCache(Arc<std::sync::Mutex<Vec<CachedModule>>>);

/// A module's id and bytes.
type CachedModule = (BlobId, Arc<Vec<u8>>);

impl ModuleCache {
    /// Module `id` from memory, else from `store` (then kept, evicting the oldest).
    fn get(&self, store: &Store, id: BlobId) -> Option<Arc<Vec<u8>>> {
        let cached = {
            let c = crate::node::lock(&self.0);
            c.iter().find(|(m, _)| *m == id).map(|(_, b)| b.clone())
        };
        if cached.is_some() {
            return cached;
        }
        let bytes = Arc::new(store.blob(&id).ok().flatten()?);
        let mut c = crate::node::lock(&self.0);
        if c.len() >= MAX_CACHED_MODULES {
            c.remove(0);
        }
        c.push((id, bytes.clone()));
        Some(bytes)
    }
}

/// A write the driver makes with its next group commit ([`Driver::flush`]).
enum Pending {
    /// A verified signed commit (opaque bytes) for a unit, by its signer.
    Commit { unit_id: UnitId, signer: [u8; 32], bytes: Vec<u8> },
    /// A unit reached quorum on this result.
    Verified { unit_id: UnitId, result: BlobId },
    /// A result record (its id was computed from these bytes).
    Blob(BlobId, Vec<u8>),
}

/// Journals a turn's writes together; `durable`: make them (and everything before) durable
/// (see [`Store::sync`]).
fn persist(store: &Store, writes: Vec<Pending>, durable: bool) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    for p in writes {
        match p {
            Pending::Commit { unit_id, signer, bytes } => batch.commit(&unit_id, &signer, bytes),
            Pending::Verified { unit_id, result } => batch.verified(&unit_id, &result),
            Pending::Blob(id, bytes) => batch.blob_checked(id, bytes)?,
        }
    }
    store.append(batch, durable)?;
    if durable { store.sync() } else { Ok(()) }
}

/// Most peers asked for a verified result's bytes before a unit is computed again.
const MAX_MEMO_SOURCES: usize = 8;

/// Pauses before each round of blob fetches from a unit's sources (the first is immediate).
const FETCH_RETRY_PAUSES: [Duration; 3] =
    [Duration::ZERO, Duration::from_millis(300), Duration::from_millis(1_500)];

/// About how many bytes of a bundle copy are fetched and stored together
/// ([`Fetcher::fetch_all_into`]).
const BUNDLE_CHUNK_BYTES: usize = 8 << 20;
/// Most blobs of a bundle copy fetched and stored together.
const BUNDLE_CHUNK_BLOBS: usize = 1024;

/// Brings blobs into the store from peers (a [`blobs::BlobClient`] with the limits).
#[derive(Clone)]
struct Fetcher {
    client: blobs::BlobClient,
    /// Whose adverts we hear: those are tried first, and only those are tried again.
    node: Node,
    store: Arc<Store>,
    max: u64,
    timeout: Duration,
    observer: Arc<dyn Observer>,
}

impl Fetcher {
    /// Makes sure blob `id` is in the store, fetching it from the first of `from` that has it.
    async fn fetch_into(&self, from: &[PeerId], id: BlobId) -> bool {
        self.fetch_into_rounds(from, id, &FETCH_RETRY_PAUSES).await
    }

    /// [`Fetcher::fetch_into`] with its own retry pauses (`&[Duration::ZERO]`: one round).
    async fn fetch_into_rounds(&self, from: &[PeerId], id: BlobId, pauses: &[Duration]) -> bool {
        if self.store.has_blob(&id).unwrap_or(false) {
            return true;
        }
        match self.fetch_bytes_rounds(from, id, pauses).await {
            Some((_, true)) => true,
            Some((bytes, false)) => {
                let store = self.store.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    let mut batch = Batch::new();
                    batch.blob_checked(id, bytes)?;
                    store.append(batch, false)
                })
                .await;
                matches!(stored, Ok(Ok(())))
            }
            None => false,
        }
    }

    /// Makes sure every blob of `ids` is in the store (a bundle copy: the module and every
    /// input), fetching the missing ones from `from`; `false` if any could not be had. It
    /// stops after the first chunk that came back incomplete (the sources are gone or lack
    /// the blobs: the core tries the copy again later), keeping what that chunk brought.
    ///
    /// The blobs are asked for in chunks fetched concurrently (the blob client packs a
    /// chunk into requests of [`blobs::MAX_PER_REQUEST`]) and each chunk is stored in one
    /// transaction. One blob at a time, a copy of the P4 benchmark's 5,000-input job took
    /// 5,000 round trips and store transactions, the busiest of the workers' background
    /// work. A chunk holds about [`BUNDLE_CHUNK_BYTES`] judging by the largest blob seen so
    /// far (the first is fetched alone), and at most [`BUNDLE_CHUNK_BLOBS`] blobs: inputs go
    /// to random places in the store's tree, so the more of them one transaction inserts,
    /// the more share the leaves it rewrites.
    async fn fetch_all_into(&self, from: &[PeerId], ids: Vec<BlobId>) -> bool {
        let missing = match self.store.missing_blobs(&ids) {
            Ok(m) => m,
            Err(e) => {
                warn!("store: {e}");
                return false;
            }
        };
        let mut largest = 0usize;
        let mut rest = &missing[..];
        let mut ok = true;
        while !rest.is_empty() {
            let n = match largest {
                0 => 1,
                big => (BUNDLE_CHUNK_BYTES / big).clamp(1, BUNDLE_CHUNK_BLOBS),
            }
            .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let fetched =
                n0_future::join_all(chunk.iter().map(|id| self.fetch_bytes(from, *id))).await;
            let mut got = Vec::with_capacity(n);
            for (id, f) in chunk.iter().zip(fetched) {
                match f {
                    Some((bytes, false)) => {
                        largest = largest.max(bytes.len().max(1));
                        got.push((*id, bytes));
                    }
                    Some((_, true)) => {}
                    None => ok = false,
                }
            }
            if !got.is_empty() {
                let store = self.store.clone();
                let stored = tokio::task::spawn_blocking(move || {
                    let mut batch = Batch::new();
                    got.into_iter().try_for_each(|(id, bytes)| batch.blob_checked(id, bytes))?;
                    store.append(batch, false)
                })
                .await;
                ok &= matches!(stored, Ok(Ok(())));
            }
            if !ok {
                return false;
            }
        }
        true
    }

    /// Blob `id`'s bytes, from the store (`true`) or else from the first of `from` that has
    /// it (`false`: checked against the id, not stored).
    async fn fetch_bytes(&self, from: &[PeerId], id: BlobId) -> Option<(Vec<u8>, bool)> {
        self.fetch_bytes_rounds(from, id, &FETCH_RETRY_PAUSES).await
    }

    async fn fetch_bytes_rounds(
        &self,
        from: &[PeerId],
        id: BlobId,
        pauses: &[Duration],
    ) -> Option<(Vec<u8>, bool)> {
        if let Ok(Some(bytes)) = self.store.blob(&id) {
            return Some((bytes, true));
        }
        let me = PeerId(*self.client.endpoint().id().as_bytes());
        let mut candidates: Vec<EndpointId> = from
            .iter()
            .filter(|p| **p != me)
            .filter_map(endpoint_id)
            .filter(|p| !self.node.departed(p))
            .collect();
        // Peers in our table first: a peer that left (or crashed) costs a connect timeout.
        candidates.sort_by_key(|p| !self.node.knows(p));
        for (round, pause) in pauses.iter().enumerate() {
            if round > 0 {
                // Nobody answered. Right after start-up that is usually a peer whose address
                // has not reached us yet (its advert is on the way): wait a little and try
                // again those we know now, rather than hand the unit back at once.
                tokio::time::sleep(*pause).await;
                candidates.retain(|p| self.node.knows(p));
            }
            for &peer in &candidates {
                match self.client.fetch(peer, id, self.max, self.timeout).await {
                    Ok(bytes) => {
                        self.observer.blob_bytes(0, bytes.len() as u64);
                        return Some((bytes, false));
                    }
                    Err(e) => debug!(%id, peer = %peer.fmt_short(), round, "fetch failed: {e}"),
                }
            }
        }
        None
    }
}

/// The outcome of checking a job from its signed records alone.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Units in the job.
    pub units: usize,
    /// Units with `quorum` valid signatures on one result whose record is held and hashes to it.
    pub verified: usize,
    /// What is wrong, one line per problem (empty: the job checks out).
    pub problems: Vec<String>,
    /// Peers that signed a result other than the one a quorum agreed on, with how many such
    /// commits each: liars, or peers whose machine computes differently. Not a problem with
    /// the job (the quorum outvoted them), but worth knowing.
    pub dissenters: Vec<(PeerId, usize)>,
}

/// Re-checks job `job` from the store alone: every commit's signature, that `quorum` distinct
/// signers agree on each unit's result, and that the result record held hashes to it.
pub fn verify_job(store: &Store, job: &JobId) -> Result<VerifyReport, RuntimeError> {
    let mut report = VerifyReport::default();
    let Some(m) = store.manifest(job)? else {
        report.problems.push(format!("job {job} is not known here"));
        return Ok(report);
    };
    report.units = m.units.len();
    let quorum = m.replication.quorum as usize;
    for (i, unit_id) in m.unit_ids().into_iter().enumerate() {
        let mut by_result: HashMap<BlobId, Vec<PeerId>> = HashMap::new();
        for (signer, bytes) in store.commits_for(&unit_id)? {
            let Some(c) = decode_stored_commit(&bytes) else {
                report.problems.push(format!("unit {i}: a stored commit does not decode"));
                continue;
            };
            if c.body.executor.0 != signer || c.body.unit_id != unit_id {
                report.problems.push(format!("unit {i}: a commit is filed under the wrong key"));
                continue;
            }
            if ova_scheduler::commit::verify(&Ed25519Verifier, &c).is_err() {
                report
                    .problems
                    .push(format!("unit {i}: commit by {} has an invalid signature", hex(&signer)));
                continue;
            }
            let signers = by_result.entry(c.body.result).or_default();
            if !signers.contains(&c.body.executor) {
                signers.push(c.body.executor);
            }
        }
        let best = by_result.iter().max_by_key(|(_, s)| s.len());
        if let Some((agreed, signers)) = best
            && signers.len() >= quorum
        {
            for (result, others) in &by_result {
                if result != agreed {
                    for p in others {
                        match report.dissenters.iter_mut().find(|(d, _)| d == p) {
                            Some((_, n)) => *n += 1,
                            None => report.dissenters.push((*p, 1)),
                        }
                    }
                }
            }
        }
        match best {
            Some((result, signers)) if signers.len() >= quorum => match store.blob(result)? {
                Some(bytes) if BlobId::of(&bytes) == *result => report.verified += 1,
                Some(_) => report.problems.push(format!("unit {i}: result record is corrupt")),
                None => report.problems.push(format!("unit {i}: result record is not held here")),
            },
            Some((_, signers)) => report.problems.push(format!(
                "unit {i}: at most {} of the {quorum} required signers agree",
                signers.len()
            )),
            None => report.problems.push(format!("unit {i}: no signed result")),
        }
    }
    Ok(report)
}

fn hex(b: &[u8; 32]) -> String {
    BlobId(*b).short()
}

impl crate::blobs::BlobSource for Store {
    fn get(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.blob(id).ok().flatten()
    }

    fn get_many(&self, ids: &[BlobId]) -> Vec<Option<Vec<u8>>> {
        self.blobs(ids).unwrap_or_else(|_| vec![None; ids.len()])
    }
}

/// Spawns a node that also serves blobs from `store` (what [`Runtime::start`] expects).
pub async fn spawn_node(
    config: crate::node::NodeConfig,
    store: Arc<Store>,
    observer: Arc<dyn Observer>,
) -> Result<Node, crate::node::NetError> {
    let sent: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |n| observer.blob_bytes(n, 0));
    let handler = blobs::BlobHandler::new(store, sent);
    Node::spawn_with(config, vec![(blobs::BLOB_ALPN, Box::new(handler))]).await
}

#[cfg(test)]
mod tests {
    use ova_scheduler::ArchClass;

    use std::time::Duration;

    use super::{
        BlobId, GROUP_COMMIT_FULL, InlineResults, MAX_INLINE_HELD_BYTES, Outgoing, Queued,
        by_destination, capacity_census, group_commit_due, run_slots_for, send_retry_due,
    };
    use crate::node::NetError;

    /// A send that failed because the peer's address is not known yet (it is on its way in
    /// an advert) is tried again three times over about two seconds; one to a peer that
    /// left, or too large to send, is not.
    #[test]
    fn failed_sends_are_tried_again_only_when_they_may_succeed() {
        let t = std::time::Instant::now();
        let due: Vec<_> = (0..4).map(|a| send_retry_due(t, a).map(|d| d - t)).collect();
        assert_eq!(
            due,
            [
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(400)),
                Some(Duration::from_millis(1_600)),
                None
            ]
        );
        let peer = iroh::SecretKey::from_bytes(&[3; 32]).public();
        let no_address =
            NetError::Connect { peer, reason: "No addressing information available".into() };
        assert!(no_address.is_transient());
        let left = NetError::Connect { peer, reason: "the peer left".into() };
        assert!(!left.is_transient());
        assert!(!NetError::TooLarge { len: 2, max: 1 }.is_transient());
    }

    /// A group commit's messages reach the send queues as one batch per destination, each in
    /// the order the core sent them.
    #[test]
    fn messages_are_queued_one_batch_per_destination_in_order() {
        let a = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let b = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let msgs = vec![
            Outgoing::Send(a, vec![1]),
            Outgoing::Send(b, vec![2]),
            Outgoing::Broadcast(vec![9]),
            Outgoing::Send(a, vec![3]),
            Outgoing::Send(b, vec![4]),
            Outgoing::Send(b, vec![5]),
            Outgoing::Send(a, vec![6]),
        ];
        let got: Vec<String> = by_destination(msgs)
            .into_iter()
            .map(|o| match o {
                Queued::To(to, l) => format!("many {} {l:?}", if to == a { 'a' } else { 'b' }),
                Queued::Broadcast(m) => format!("broadcast {m:?}"),
            })
            .collect();
        assert_eq!(got, ["many a [[1], [3], [6]]", "many b [[2], [4], [5]]", "broadcast [9]"]);
    }

    #[test]
    fn group_commits_wait_out_the_interval_unless_quiet_or_full() {
        let interval = Duration::from_millis(5);
        // After a quiet spell: at once.
        assert!(group_commit_due(Duration::from_secs(3), interval, 1));
        assert!(group_commit_due(interval, interval, 0));
        // Work keeps coming: the next waits.
        assert!(!group_commit_due(Duration::from_millis(1), interval, 40));
        // ...unless a batch is full.
        assert!(group_commit_due(Duration::ZERO, interval, GROUP_COMMIT_FULL));
        // No interval: as soon as the last ended (the old behaviour).
        assert!(group_commit_due(Duration::ZERO, Duration::ZERO, 0));
    }

    /// Settles the depth for units of `secs`, as the driver does one result at a time.
    fn settled(secs: f64, max: u16) -> u32 {
        let mut slots = 2;
        for _ in 0..16 {
            slots = run_slots_for(slots, secs, max);
        }
        slots
    }

    #[test]
    fn run_slots_keep_a_short_queue_of_work_per_core() {
        // Tiny units fill the pipeline up to the cap, doubling from the initial 2.
        assert_eq!(run_slots_for(2, 0.0001, 32), 4);
        assert_eq!(settled(0.0001, 32), 32);
        assert_eq!(settled(0.0, 32), 32, "a unit measured at no time at all");
        // 5 ms tiles: 25 ms of work per core, not 32 tiles (160 ms) that no other peer
        // could take at the end of a job.
        assert_eq!(settled(0.005, 32), 5);
        assert_eq!(run_slots_for(32, 0.005, 32), 16, "a step down halves at most");
        // Units of 20 ms to half a second: the next one waits while one runs.
        assert_eq!(settled(0.02, 32), 2);
        assert_eq!(settled(0.4, 32), 2);
        // Long units: one at a time, so none waits for its lease to lapse.
        assert_eq!(settled(2.0, 32), 1);
        assert_eq!(run_slots_for(1, 2.0, 32), 1);
        // The cap holds, even a cap of 1 or 0.
        assert_eq!(settled(0.0001, 8), 8);
        assert_eq!(settled(0.0001, 1), 1);
        assert_eq!(settled(0.0001, 0), 1);
        assert_eq!(run_slots_for(32, 0.0001, 4), 4, "a lowered cap applies at once");
    }

    #[test]
    fn remembered_node_ids_are_the_ones_a_fresh_check_gives() {
        let mut rejected = 0;
        for round in 0..2 {
            for i in 0..=255u8 {
                let p = super::PeerId([i; 32]);
                let fresh = iroh::EndpointId::from_bytes(&p.0).ok();
                assert_eq!(super::endpoint_id(&p), fresh, "key {i}, round {round}");
                rejected += usize::from(fresh.is_none());
            }
        }
        assert!(rejected > 0, "some of these byte strings are not valid keys");
    }

    #[test]
    fn the_census_sums_spare_cores_per_class_and_leaves_out_idle_classes() {
        let (x86, arm, riscv) = (ArchClass(1), ArchClass(2), ArchClass(3));
        let peers = [(arm, 4), (x86, 2), (riscv, 0), (x86, 0), (arm, 1), (x86, 8)];
        assert_eq!(capacity_census(peers.into_iter()), vec![(x86, 10), (arm, 5)]);
        assert!(capacity_census(std::iter::empty()).is_empty());
    }

    #[test]
    fn inline_results_are_bounded_oldest_first_and_taken_once() {
        let mut held = InlineResults::default();
        let chunk = MAX_INLINE_HELD_BYTES / 4;
        let ids: Vec<BlobId> = (0..6u8).map(|i| BlobId([i; 32])).collect();
        for id in &ids[..4] {
            held.put(*id, vec![0; chunk]);
        }
        assert_eq!(held.take(&ids[1]).map(|b| b.len()), Some(chunk));
        assert_eq!(held.take(&ids[1]), None, "taken once");
        held.put(ids[4], vec![0; chunk]);
        held.put(ids[5], vec![0; chunk]);
        // Five chunks were put while one was taken: the oldest left makes room.
        assert!(held.bytes <= MAX_INLINE_HELD_BYTES);
        assert_eq!(held.take(&ids[0]), None, "the oldest was forgotten");
        for id in [ids[2], ids[3], ids[4], ids[5]] {
            assert!(held.take(&id).is_some());
        }
        assert_eq!(held.bytes, 0);
    }

    #[test]
    fn commit_records_from_before_batches_still_decode() {
        use ova_jobs::{BlobId, JobId, UnitId};
        use ova_scheduler::{CommitBody, PeerId, SimSigner, UnitRef, commit};
        let body = CommitBody {
            unit: UnitRef { job: JobId([1; 32]), index: 2 },
            unit_id: UnitId([3; 32]),
            result: BlobId([4; 32]),
            executor: PeerId([5; 32]),
            arch: ArchClass::X86_64,
        };
        let c = commit::sign(&SimSigner(body.executor), body);
        // The layout of a record written by an earlier build: the body, then the signature.
        let old = postcard::to_stdvec(&(c.body, c.sig)).unwrap();
        assert_eq!(super::decode_stored_commit(&old), Some(c.clone()));
        let batch = commit::sign_batch(&SimSigner(body.executor), &[body, body]);
        let new = postcard::to_stdvec(&batch[1]).unwrap();
        assert_eq!(super::decode_stored_commit(&new), Some(batch[1].clone()));
        assert_eq!(super::decode_stored_commit(&[1, 2, 3]), None);
    }
}
