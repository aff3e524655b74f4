//! The [`Node`]: one peer on the network — endpoint, gossip membership, adverts, direct frames.
//!
//! A node joins one gossip topic (derived from the network name), broadcasts a signed
//! [`Advert`] every `advert_interval` and whenever its capacity changes or a new neighbour
//! appears, and keeps a [`PeerTable`] of everyone else's. Application messages go out with
//! [`Node::broadcast`] (signed, to the whole swarm) and [`Node::send`] (a frame to one peer) and
//! come back as [`NetEvent`]s carrying the sender's verified id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iroh::address_lookup::EndpointInfo;
use iroh::address_lookup::memory::MemoryLookup;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, EndpointId, SecretKey};
use iroh_gossip::api::{Event as GossipEvent, GossipReceiver, GossipSender, JoinOptions};
use iroh_gossip::{Gossip, TopicId};
use n0_future::StreamExt;
use ova_jobs::wire;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::advert::{Advert, ArchClass, Capacity, MAX_ADVERT_ADDRS};
use crate::discovery::LocalDiscovery;
use crate::endpoint::{self, EndpointConfig, EndpointError};
use crate::frame::{self, Budget, DirectFrame, FRAME_ALPN, FrameError};
use crate::membership::{Applied, PeerInfo, PeerTable};
use crate::signed::{self, GossipBody};
use crate::stats::{DropReason, NetStats, StatsSnapshot};
use crate::ticket::NodeTicket;

/// How long shutdown waits for the goodbye message to leave.
const LEAVE_FLUSH: Duration = Duration::from_millis(250);
/// Gossip neighbours below which a node dials peers it knows from their adverts.
const MIN_GOSSIP_NEIGHBOURS: usize = 3;

/// Most departed peers remembered (see `Shared::departed`).
const MAX_DEPARTED: usize = 4096;

/// Bytes the gossip layer may add around our envelope.
const GOSSIP_OVERHEAD: usize = 1024;

/// Configuration of a [`Node`]. [`NodeConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's identity (see [`crate::identity`]).
    pub secret_key: SecretKey,
    /// How the endpoint binds and reaches others.
    pub endpoint: EndpointConfig,
    /// Name of the Ova network: nodes with different names never see each other.
    pub network: String,
    /// Shared secret of a private network. Every protocol's ALPN and the gossip topic are
    /// derived from it, so a node without it cannot complete a connection to any of ours,
    /// let alone join, advertise or submit.
    pub network_secret: Option<String>,
    /// Nodes to join first.
    pub bootstrap: Vec<NodeTicket>,
    /// Whether to run local-network discovery (mDNS). Ignored in loopback mode.
    pub local_discovery: bool,
    /// How often to re-advertise.
    pub advert_interval: Duration,
    /// The TTL we put in our adverts.
    pub advert_ttl: Duration,
    /// The longest TTL we honour in others' adverts.
    pub max_ttl: Duration,
    /// Accept adverts whose `sent_at + ttl` is at most this far in the past (clock skew).
    pub max_clock_skew: Duration,
    /// Most peers in the table.
    pub max_peers: usize,
    /// Largest broadcast envelope we send or accept.
    pub max_broadcast_bytes: usize,
    /// Largest direct frame we send or accept.
    pub max_frame_bytes: usize,
    /// Bytes of received payloads held at once (reading, or queued for the driver).
    pub inbound_budget_bytes: usize,
    /// Most inbound frame connections at once.
    pub max_inbound_connections: usize,
    /// Most cached outbound frame connections.
    pub max_outbound_connections: usize,
    /// Capacity of the events queue to the driver. When it is full, gossip is dropped (and
    /// counted); a direct message waits for room, which slows its sender down.
    pub event_capacity: usize,
    /// Capacity of the gossip subscription buffer.
    pub gossip_capacity: usize,
    /// Timeout to connect to a peer for a direct frame.
    pub connect_timeout: Duration,
    /// Timeout to receive one direct frame once its stream is open.
    pub frame_timeout: Duration,
    /// Cores on this machine (advertised).
    pub total_cores: u16,
    /// Architecture class (advertised).
    pub arch: ArchClass,
    /// Capacity to advertise until [`Node::set_capacity`] is called.
    pub capacity: Capacity,
    /// What this peer's results are computed with ([`ova_jobs::COMPUTE_ABI`]). Part of the
    /// network's identity: peers of different ABIs use different protocol names and gossip
    /// topics, so they never meet and their results are never compared.
    pub compute_abi: String,
}

impl NodeConfig {
    /// Production defaults for `secret_key` on `endpoint`.
    pub fn new(secret_key: SecretKey, endpoint: EndpointConfig) -> Self {
        let total_cores = std::thread::available_parallelism()
            .map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX));
        Self {
            secret_key,
            endpoint,
            network: "ova".to_string(),
            network_secret: None,
            bootstrap: vec![],
            local_discovery: true,
            advert_interval: Duration::from_secs(10),
            advert_ttl: Duration::from_secs(35),
            max_ttl: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(300),
            max_peers: 4096,
            max_broadcast_bytes: 64 << 10,
            max_frame_bytes: ova_jobs::manifest::MAX_MANIFEST_BYTES + (128 << 10),
            inbound_budget_bytes: 64 << 20,
            max_inbound_connections: 256,
            max_outbound_connections: 256,
            event_capacity: 1024,
            gossip_capacity: 512,
            connect_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            total_cores,
            arch: ArchClass::current(),
            capacity: Capacity { spare_cores: total_cores, busy_cores: 0, queue_len: 0 },
            compute_abi: ova_jobs::COMPUTE_ABI.to_string(),
        }
    }

    /// The gossip topic of this network (its name, compute ABI and secret).
    pub fn topic(&self) -> TopicId {
        let context = match self.network_secret {
            None => "ova-net gossip topic v2",
            Some(_) => "ova-net private gossip topic v2",
        };
        TopicId::from_bytes(blake3::derive_key(context, &self.network_material()))
    }

    /// The ALPN this node uses for protocol `base`: `base`, a slash and a tag derived from the
    /// network's name, compute ABI and (on a private network) secret. TLS refuses connections
    /// between nodes whose tags differ: nodes that do not know the secret, and nodes whose
    /// results are not comparable.
    pub fn alpn(&self, base: &[u8]) -> Vec<u8> {
        let context = match self.network_secret {
            None => "ova-net alpn v2",
            Some(_) => "ova-net private alpn v2",
        };
        let key = blake3::derive_key(context, &self.network_material());
        let mut out = base.to_vec();
        out.push(b'/');
        out.extend(key[..16].iter().flat_map(|b| format!("{b:02x}").into_bytes()));
        out
    }

    /// The network's identity, unambiguously encoded: name, compute ABI, secret.
    fn network_material(&self) -> Vec<u8> {
        let mut m = Vec::new();
        for part in [self.network.as_bytes(), self.compute_abi.as_bytes()] {
            m.extend((part.len() as u64).to_le_bytes());
            m.extend(part);
        }
        if let Some(secret) = &self.network_secret {
            m.extend(secret.as_bytes());
        }
        m
    }
}

/// What the node tells its driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A new or refreshed advert from a peer (already in the peer table).
    Advert {
        /// The author (verified signer).
        from: EndpointId,
        /// The advert.
        advert: Advert,
        /// Whether the peer was not in the table before.
        joined: bool,
    },
    /// A peer's advert expired without a newer one.
    PeerExpired(EndpointId),
    /// A peer said goodbye.
    PeerLeft(EndpointId),
    /// An application broadcast.
    Broadcast {
        /// The author (verified signer).
        from: EndpointId,
        /// The payload.
        payload: Payload,
    },
    /// An application frame sent to us directly.
    Direct {
        /// The sender (authenticated by the QUIC connection).
        from: EndpointId,
        /// The payload.
        payload: Payload,
    },
}

/// Received bytes; they count against the node's inbound budget until dropped.
#[derive(Debug)]
pub struct Payload {
    bytes: Vec<u8>,
    /// Shared by the messages of one batch frame: the budget returns when the last is dropped.
    _permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl Payload {
    /// The bytes, releasing the budget.
    pub fn into_vec(self) -> Vec<u8> {
        self.bytes
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a send to a peer that announced its departure is refused.
const PEER_LEFT: &str = "the peer left";

/// A node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The endpoint could not be built.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Joining the gossip topic failed.
    #[error("gossip: {0}")]
    Gossip(String),
    /// The message is larger than the configured cap.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Could not connect to the peer.
    #[error("connect to {peer}: {reason}")]
    Connect {
        /// The peer.
        peer: EndpointId,
        /// Why.
        reason: String,
    },
    /// Sending the frame failed.
    #[error("send to {peer}: {reason}")]
    Send {
        /// The peer.
        peer: EndpointId,
        /// Why.
        reason: String,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Closed,
}

impl NetError {
    /// Whether sending again a little later may succeed: a connection that could not be made
    /// (no address known yet for the peer, a timeout), not a peer that left or a frame that
    /// is too large.
    pub fn is_transient(&self) -> bool {
        match self {
            NetError::Connect { reason, .. } => reason != PEER_LEFT,
            NetError::Send { .. } => true,
            _ => false,
        }
    }
}

struct Shared {
    key: SecretKey,
    endpoint: Endpoint,
    memory: MemoryLookup,
    config: NodeConfig,
    table: Mutex<PeerTable>,
    stats: NetStats,
    events: mpsc::Sender<NetEvent>,
    capacity: watch::Sender<Capacity>,
    peers_version: watch::Sender<u64>,
    seq: AtomicU64,
    /// Set once we said goodbye: no more adverts (they would bring us back).
    leaving: AtomicBool,
    gossip: Gossip,
    sender: Mutex<Option<GossipSender>>,
    outbound: Mutex<HashMap<EndpointId, Connection>>,
    /// Peers that left or whose adverts expired, until they advertise again: a new
    /// connection to one is not attempted (a crashed peer would cost a connect timeout per
    /// send). Bounded by [`MAX_DEPARTED`]; when full it is cleared.
    departed: Mutex<HashSet<EndpointId>>,
    inbound: Arc<Semaphore>,
    budget: Arc<Budget>,
    join_tx: mpsc::Sender<EndpointAddr>,
    cancel: CancellationToken,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A running peer. Cheap to clone; [`Node::shutdown`] stops every clone.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    router: Router,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    events_rx: Arc<Mutex<Option<mpsc::Receiver<NetEvent>>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl Node {
    /// Binds the endpoint, joins the network and starts advertising.
    pub async fn spawn(config: NodeConfig) -> Result<Node, NetError> {
        Self::spawn_with(config, Vec::new()).await
    }

    /// Like [`Node::spawn`], also serving `protocols` (ALPN, handler) on the same endpoint —
    /// e.g. blob transfer ([`crate::blobs`]).
    pub async fn spawn_with(
        config: NodeConfig,
        protocols: Vec<(&'static [u8], Box<dyn iroh::protocol::DynProtocolHandler>)>,
    ) -> Result<Node, NetError> {
        let gossip_alpn = config.alpn(iroh_gossip::ALPN);
        let frame_alpn = config.alpn(FRAME_ALPN);
        let mut alpns = vec![gossip_alpn.clone(), frame_alpn.clone()];
        alpns.extend(protocols.iter().map(|(a, _)| config.alpn(a)));
        let (endpoint, memory) =
            endpoint::bind(&config.endpoint, config.secret_key.clone(), alpns).await?;
        let gossip = Gossip::builder()
            .alpn(&gossip_alpn)
            .max_message_size(config.max_broadcast_bytes + GOSSIP_OVERHEAD)
            .spawn(endpoint.clone());
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (join_tx, join_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            key: config.secret_key.clone(),
            endpoint: endpoint.clone(),
            memory,
            table: Mutex::new(PeerTable::new(config.max_peers, config.max_ttl)),
            stats: NetStats::default(),
            events: events_tx,
            capacity: watch::Sender::new(config.capacity),
            peers_version: watch::Sender::new(0),
            seq: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            gossip: gossip.clone(),
            sender: Mutex::new(None),
            outbound: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashSet::new()),
            inbound: Arc::new(Semaphore::new(config.max_inbound_connections.max(1))),
            budget: Arc::new(Budget::new(config.inbound_budget_bytes)),
            join_tx,
            cancel: CancellationToken::new(),
            config,
        });
        let mut router = Router::builder(endpoint.clone())
            .accept(gossip_alpn, gossip.clone())
            .accept(frame_alpn, FrameHandler(shared.clone()));
        for (alpn, handler) in protocols {
            router = router.accept(shared.config.alpn(alpn), handler);
        }
        let router = router.spawn();

        let mut bootstrap = Vec::new();
        for t in &shared.config.bootstrap {
            if t.id == endpoint.id() {
                continue;
            }
            if !t.addrs.is_empty() || t.relay.is_some() {
                shared.memory.add_endpoint_info(t.to_addr());
            }
            bootstrap.push(t.id);
        }
        let receiver = shared.subscribe(bootstrap).await?;

        let mut tasks = vec![tokio::spawn(run_gossip(shared.clone(), receiver, join_rx))];
        if shared.config.local_discovery && shared.config.endpoint.mode.allows_local_discovery() {
            match LocalDiscovery::start(&endpoint) {
                Ok(d) => tasks.push(tokio::spawn(run_discovery(shared.clone(), d))),
                Err(e) => warn!("{e}; continuing without local discovery"),
            }
        }
        info!(node = %endpoint.id(), addr = ?endpoint.addr(), "node started");
        Ok(Node {
            shared,
            router,
            tasks: Arc::new(Mutex::new(tasks)),
            events_rx: Arc::new(Mutex::new(Some(events_rx))),
        })
    }

    /// This node's id.
    pub fn id(&self) -> EndpointId {
        self.shared.endpoint.id()
    }

    /// This node's id as the 32 bytes the scheduler calls a `PeerId`.
    pub fn peer_id(&self) -> [u8; 32] {
        *self.id().as_bytes()
    }

    /// This node's current address.
    pub fn addr(&self) -> EndpointAddr {
        self.shared.endpoint.addr()
    }

    /// A ticket others can use to join through this node.
    pub fn ticket(&self) -> NodeTicket {
        NodeTicket::from_addr(&self.addr())
    }

    /// The iroh endpoint (to mount more protocols, e.g. blob transfer, next to ours).
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// Takes the events receiver (once). Until taken, and after it is dropped, events are
    /// discarded; when its queue is full, new events are dropped and counted.
    pub fn take_events(&self) -> Option<mpsc::Receiver<NetEvent>> {
        lock(&self.events_rx).take()
    }

    /// The capacity being advertised.
    pub fn capacity(&self) -> Capacity {
        *self.shared.capacity.borrow()
    }

    /// Sets the capacity to advertise; a change is advertised at once.
    pub fn set_capacity(&self, capacity: Capacity) {
        self.shared.capacity.send_if_modified(|c| {
            let changed = *c != capacity;
            *c = capacity;
            changed
        });
    }

    /// Every known peer, most spare cores first.
    pub fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.shared.table).peers(Instant::now())
    }

    /// Whether `id` is in the peer table.
    pub fn knows(&self, id: &EndpointId) -> bool {
        lock(&self.shared.table).contains(id)
    }

    /// Whether `id` left or its adverts expired (and it has not advertised since).
    pub fn departed(&self, id: &EndpointId) -> bool {
        lock(&self.shared.departed).contains(id)
    }

    /// A receiver whose value changes whenever the peer table gains, loses or refreshes a
    /// peer: wait on it instead of polling.
    pub fn watch_peers(&self) -> watch::Receiver<u64> {
        self.shared.peers_version.subscribe()
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Joins the swarm through `addr` (a bootstrap peer found later, or a discovered one):
    /// records its address and asks gossip to connect.
    pub async fn join(&self, addr: EndpointAddr) -> Result<(), NetError> {
        self.shared.join_tx.send(addr).await.map_err(|_| NetError::Closed)
    }

    /// The discovery hook: called for each node local discovery finds. Same as [`Node::join`],
    /// but never blocks (a full queue drops the discovery; it will be seen again).
    pub fn discovered(&self, addr: EndpointAddr) {
        if addr.id != self.id() {
            self.shared.join_tx.try_send(addr).ok();
        }
    }

    /// Broadcasts an application payload to every peer on the network, signed by this node.
    pub async fn broadcast(&self, payload: Vec<u8>) -> Result<(), NetError> {
        let seq = self.shared.next_seq();
        let sealed = signed::seal(&self.shared.key, &GossipBody::App { seq, payload });
        let max = self.shared.config.max_broadcast_bytes;
        if sealed.len() > max {
            return Err(NetError::TooLarge { len: sealed.len(), max });
        }
        let len = sealed.len();
        self.shared.gossip_broadcast(sealed).await?;
        self.shared.stats.broadcast_sent();
        self.shared.stats.sent_bytes(len);
        Ok(())
    }

    /// Sends an application payload to one peer as a direct frame.
    ///
    /// Uses a cached connection when there is one; otherwise connects using the addresses
    /// learned from bootstrap tickets, adverts, gossip and discovery.
    pub async fn send(&self, to: EndpointId, payload: Vec<u8>) -> Result<(), NetError> {
        self.send_frame(to, &DirectFrame::App(payload)).await
    }

    async fn send_frame(&self, to: EndpointId, frame: &DirectFrame) -> Result<(), NetError> {
        let frame = wire::encode(frame);
        let max = self.shared.config.max_frame_bytes;
        if frame.len() > max {
            return Err(NetError::TooLarge { len: frame.len(), max });
        }
        let mut last = None;
        for _attempt in 0..2 {
            let conn = self.shared.connection(to).await?;
            match send_on(&conn, &frame, self.shared.config.connect_timeout).await {
                Ok(()) => {
                    self.shared.stats.frame_sent();
                    self.shared.stats.sent_bytes(frame.len());
                    return Ok(());
                }
                Err(e) => {
                    debug!(peer = %to.fmt_short(), "send failed ({e}); reconnecting");
                    lock(&self.shared.outbound).remove(&to);
                    last = Some(e);
                }
            }
        }
        Err(NetError::Send { peer: to, reason: last.map(|e| e.to_string()).unwrap_or_default() })
    }

    /// Sends several application payloads to one peer, in order, packed into as few direct
    /// frames as the frame cap allows (a payload too large for a frame on its own is refused
    /// and the rest still sent).
    pub async fn send_batch(&self, to: EndpointId, payloads: Vec<Vec<u8>>) -> Result<(), NetError> {
        self.send_batch_keeping_unsent(to, payloads).await.map_err(|(e, _)| e)
    }

    /// [`Node::send_batch`], handing back on failure the payloads of the frames that could
    /// not be sent (to try them again later without a copy of every batch sent).
    pub async fn send_batch_keeping_unsent(
        &self,
        to: EndpointId,
        payloads: Vec<Vec<u8>>,
    ) -> Result<(), (NetError, Vec<Vec<u8>>)> {
        let max = self.shared.config.max_frame_bytes;
        // Frame overhead: the enum tag and a varint length per payload (at most 5 bytes
        // each), plus the sequence length.
        let cost = |p: &Vec<u8>| p.len() + 5;
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        let mut size = 16;
        let mut error = None;
        let mut unsent = Vec::new();
        let mut send = async |frame: DirectFrame| {
            if let Err(e) = self.send_frame(to, &frame).await {
                error.get_or_insert(e);
                match frame {
                    DirectFrame::App(p) => unsent.push(p),
                    DirectFrame::Batch(ps) => unsent.extend(ps),
                    _ => {}
                }
            }
        };
        for p in payloads {
            if size + cost(&p) > max && !chunk.is_empty() {
                send(DirectFrame::Batch(std::mem::take(&mut chunk))).await;
                size = 16;
            }
            size += cost(&p);
            chunk.push(p);
        }
        if chunk.len() == 1 {
            let p = chunk.pop().unwrap_or_default();
            send(DirectFrame::App(p)).await;
        } else if !chunk.is_empty() {
            send(DirectFrame::Batch(chunk)).await;
        }
        match error {
            None => Ok(()),
            Some(e) => Err((e, unsent)),
        }
    }

    /// Stops cleanly: tells the others we leave, then closes every connection and task.
    pub async fn shutdown(&self) {
        if !self.shared.cancel.is_cancelled() && !self.shared.leaving.swap(true, Ordering::SeqCst) {
            let (sent_at_ms, seq) = (unix_ms(), self.shared.next_seq());
            let sealed = signed::seal(&self.shared.key, &GossipBody::Leave { sent_at_ms, seq });
            // By gossip, and straight to every peer we know: leaving may itself break the
            // overlay the gossip would travel on.
            let peers: Vec<EndpointId> = self.peers().iter().map(|p| p.id).collect();
            let goodbye = DirectFrame::Goodbye(sealed.clone());
            let leave = async {
                let direct =
                    n0_future::join_all(peers.iter().map(|p| self.send_frame(*p, &goodbye)));
                let (gossip, _) = tokio::join!(self.shared.gossip_broadcast(sealed), direct);
                gossip?;
                // The gossip actor sends asynchronously; give it a moment to put the goodbye
                // on the wire before the connections close. Best effort: peers that miss it
                // forget us at TTL expiry anyway.
                tokio::time::sleep(LEAVE_FLUSH).await;
                Ok::<_, NetError>(())
            };
            match tokio::time::timeout(Duration::from_secs(2), leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("leave message not sent: {e}"),
                Err(_) => debug!("leave message not sent in time"),
            }
        }
        self.stop().await;
        info!(node = %self.id(), "node stopped");
    }

    /// Stops without telling anyone, as a crash would: peers forget us only when our advert
    /// expires. For tests and churn experiments.
    pub async fn kill(&self) {
        self.stop().await;
    }

    async fn stop(&self) {
        self.shared.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            t.await.ok();
        }
        for (_, c) in lock(&self.shared.outbound).drain() {
            c.close(0u32.into(), b"shutdown");
        }
        if let Err(e) = self.router.shutdown().await {
            debug!("router shutdown: {e}");
        }
    }
}

/// Sends one frame on its own stream and waits (at most `ack_wait`) until the peer has read
/// it, so frames to one peer arrive in order; a peer that never answers is an error.
async fn send_on(conn: &Connection, frame: &[u8], ack_wait: Duration) -> Result<(), FrameError> {
    let mut s = conn.open_uni().await.map_err(|e| FrameError::Stream(e.to_string()))?;
    frame::write_frame(&mut s, frame).await?;
    match tokio::time::timeout(ack_wait, s.stopped()).await {
        Ok(_) => Ok(()),
        Err(_) => Err(FrameError::Stream("the peer did not acknowledge the frame".into())),
    }
}

impl Shared {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn subscribe(&self, bootstrap: Vec<EndpointId>) -> Result<GossipReceiver, NetError> {
        let opts = JoinOptions {
            bootstrap: bootstrap.into_iter().collect(),
            subscription_capacity: self.config.gossip_capacity.max(1),
        };
        let topic = self
            .gossip
            .subscribe_with_opts(self.config.topic(), opts)
            .await
            .map_err(|e| NetError::Gossip(e.to_string()))?;
        let (sender, receiver) = topic.split();
        *lock(&self.sender) = Some(sender);
        Ok(receiver)
    }

    async fn gossip_broadcast(&self, sealed: Vec<u8>) -> Result<(), NetError> {
        let sender = lock(&self.sender).clone().ok_or(NetError::Closed)?;
        sender.broadcast(sealed.into()).await.map_err(|e| NetError::Gossip(e.to_string()))
    }

    fn my_advert(&self) -> Advert {
        let addr = self.endpoint.addr();
        Advert {
            capacity: *self.capacity.borrow(),
            total_cores: self.config.total_cores,
            arch: self.config.arch,
            sent_at_ms: unix_ms(),
            seq: self.next_seq(),
            ttl_ms: millis_u32(self.config.advert_ttl),
            addrs: addr.ip_addrs().copied().take(MAX_ADVERT_ADDRS).collect(),
            relay: addr.relay_urls().next().map(|r| r.to_string()),
        }
    }

    async fn advertise(&self) {
        if self.leaving.load(Ordering::SeqCst) {
            return;
        }
        let sealed = signed::seal(&self.key, &GossipBody::Advert(self.my_advert()));
        match self.gossip_broadcast(sealed).await {
            Ok(()) => self.stats.advert_sent(),
            Err(e) => debug!("advert not sent: {e}"),
        }
    }

    fn emit(&self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                let from = match &ev {
                    NetEvent::Advert { from, .. }
                    | NetEvent::Broadcast { from, .. }
                    | NetEvent::Direct { from, .. }
                    | NetEvent::PeerExpired(from)
                    | NetEvent::PeerLeft(from) => *from,
                };
                self.stats.drop(DropReason::QueueFull, &from.fmt_short(), "events queue full");
            }
        }
    }

    /// Hands a direct message to the application, waiting for room in the events queue
    /// rather than dropping it: direct messages are the protocol's claims, grants and commits,
    /// and a lost one can stall a unit until a lease lapses (a lost steal grant did, for a
    /// minute). While the queue is full this connection's reader waits, so QUIC flow control
    /// slows that sender down; other senders' readers wait for room too, so one flooding peer
    /// gets no more than its turn. `false` when the node is stopping.
    async fn deliver(&self, event: NetEvent) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            sent = self.events.send(event) => sent.is_ok(),
        }
    }

    fn bump_peers(&self) {
        self.peers_version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Handles one gossip message delivered by neighbour `via`.
    fn on_gossip(&self, bytes: &[u8], via: EndpointId) {
        self.stats.gossip_in();
        self.stats.received_bytes(bytes.len());
        let (author, body) = match signed::open(bytes, self.config.max_broadcast_bytes) {
            Ok(x) => x,
            Err(r) => {
                self.stats.drop(r.reason, &format!("via {}", via.fmt_short()), &r.detail);
                return;
            }
        };
        if author == self.endpoint.id() {
            return;
        }
        match body {
            GossipBody::Advert(advert) => self.on_advert(author, advert),
            GossipBody::Leave { sent_at_ms, seq } => self.on_leave(author, sent_at_ms, seq),
            GossipBody::App { payload, .. } => {
                let Some(permit) = self.budget.take_owned(payload.len()) else {
                    self.stats.drop(DropReason::Overloaded, &author.fmt_short(), "inbound budget");
                    return;
                };
                self.emit(NetEvent::Broadcast {
                    from: author,
                    payload: Payload { bytes: payload, _permit: Some(Arc::new(permit)) },
                });
            }
        }
    }

    /// A goodbye sent straight to us ([`DirectFrame::Goodbye`]): only a signed `Leave` from
    /// the peer that delivered it counts.
    fn on_goodbye(&self, bytes: &[u8], from: EndpointId) {
        let peer = from.fmt_short();
        match signed::open(bytes, self.config.max_broadcast_bytes) {
            Ok((author, GossipBody::Leave { sent_at_ms, seq })) if author == from => {
                self.on_leave(author, sent_at_ms, seq);
            }
            Ok(_) => self.stats.drop(DropReason::Invalid, &peer, "a goodbye that is not its own"),
            Err(r) => self.stats.drop(r.reason, &peer, &r.detail),
        }
    }

    /// `author` says it leaves: forget it now (once; a later advert brings it back).
    fn on_leave(&self, author: EndpointId, sent_at_ms: u64, seq: u64) {
        let removed = lock(&self.table).leave(&author, (sent_at_ms, seq));
        if removed {
            info!(peer = %author.fmt_short(), "peer left");
            self.memory.remove_endpoint_info(author);
            self.mark_departed(author);
            self.bump_peers();
            self.emit(NetEvent::PeerLeft(author));
        }
    }

    fn on_advert(&self, author: EndpointId, advert: Advert) {
        let peer = author.fmt_short();
        if let Err(why) = advert.validate() {
            self.stats.drop(DropReason::Invalid, &peer, why);
            return;
        }
        let ttl = Duration::from_millis(u64::from(advert.ttl_ms)).min(self.config.max_ttl);
        let horizon = advert.sent_at_ms.saturating_add(millis_u32(ttl).into());
        let skew = u64::try_from(self.config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        if horizon.saturating_add(skew) < unix_ms() {
            self.stats.drop(DropReason::Stale, &peer, "advert expired before it arrived");
            return;
        }
        let info = EndpointInfo::new(author).with_ip_addrs(advert.addrs.clone());
        let applied = lock(&self.table).apply(author, advert.clone(), Instant::now());
        match applied {
            Applied::Stale => self.stats.drop(DropReason::Stale, &peer, "not newer than known"),
            Applied::Full => self.stats.drop(DropReason::Overloaded, &peer, "peer table full"),
            Applied::Joined | Applied::Updated => {
                if applied == Applied::Joined {
                    lock(&self.departed).remove(&author);
                }
                self.stats.advert_in();
                let joined = applied == Applied::Joined;
                if joined {
                    info!(peer = %peer, spare = advert.capacity.spare_cores, "peer joined");
                }
                if !advert.addrs.is_empty() {
                    self.memory.add_endpoint_info(info);
                }
                self.bump_peers();
                self.emit(NetEvent::Advert { from: author, advert, joined });
            }
        }
    }

    fn expire(&self) {
        let gone = lock(&self.table).expire(Instant::now());
        if gone.is_empty() {
            return;
        }
        for id in gone {
            info!(peer = %id.fmt_short(), "peer expired");
            self.memory.remove_endpoint_info(id);
            self.mark_departed(id);
            self.emit(NetEvent::PeerExpired(id));
        }
        self.bump_peers();
    }

    /// Remembers that `id` left, and closes our connection to it: a send waiting for a
    /// crashed peer's acknowledgement fails now instead of at the idle timeout.
    fn mark_departed(&self, id: EndpointId) {
        {
            let mut d = lock(&self.departed);
            if d.len() >= MAX_DEPARTED {
                d.clear();
            }
            d.insert(id);
        }
        if let Some(c) = lock(&self.outbound).remove(&id) {
            c.close(0u32.into(), b"departed");
        }
    }

    async fn connection(&self, to: EndpointId) -> Result<Connection, NetError> {
        if let Some(c) = lock(&self.outbound).get(&to)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        if lock(&self.departed).contains(&to) {
            return Err(NetError::Connect { peer: to, reason: PEER_LEFT.into() });
        }
        let alpn = self.config.alpn(FRAME_ALPN);
        let connecting = self.endpoint.connect(to, &alpn);
        let conn = tokio::select! {
            _ = self.cancel.cancelled() => return Err(NetError::Closed),
            r = tokio::time::timeout(self.config.connect_timeout, connecting) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(NetError::Connect { peer: to, reason: e.to_string() }),
                Err(_) => return Err(NetError::Connect { peer: to, reason: "timed out".into() }),
            },
        };
        let mut out = lock(&self.outbound);
        out.retain(|_, c| c.close_reason().is_none());
        if out.len() >= self.config.max_outbound_connections.max(1) {
            let victim = out.keys().next().copied();
            if let Some(v) = victim.and_then(|v| out.remove(&v)) {
                v.close(0u32.into(), b"evicted");
            }
        }
        out.insert(to, conn.clone());
        Ok(conn)
    }
}

/// The gossip loop: receives, advertises, expires, joins discovered peers; re-subscribes if
/// the subscription lags or closes.
async fn run_gossip(
    shared: Arc<Shared>,
    mut receiver: GossipReceiver,
    mut join_rx: mpsc::Receiver<EndpointAddr>,
) {
    let mut tick = tokio::time::interval(shared.config.advert_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut capacity = shared.capacity.subscribe();
    loop {
        let next_expiry = lock(&shared.table).next_expiry();
        let expiry = async {
            match next_expiry {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut resubscribe = false;
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            ev = receiver.next() => match ev {
                Some(Ok(GossipEvent::Received(msg))) => shared.on_gossip(&msg.content, msg.delivered_from),
                Some(Ok(GossipEvent::NeighborUp(id))) => {
                    debug!(peer = %id.fmt_short(), "gossip neighbour up");
                    // What was broadcast before our first neighbour is lost: say it again.
                    shared.advertise().await;
                }
                Some(Ok(GossipEvent::NeighborDown(id))) => {
                    debug!(peer = %id.fmt_short(), "gossip neighbour down");
                    // A departure can leave us with few gossip neighbours (a chain's middle
                    // node loses both), and the overlay's own repair needs spare contacts we
                    // may never have been given: dial peers we know from their adverts.
                    let have: Vec<EndpointId> = receiver.neighbors().collect();
                    if have.len() < MIN_GOSSIP_NEIGHBOURS {
                        let more: Vec<EndpointId> = lock(&shared.table)
                            .ids()
                            .into_iter()
                            .filter(|p| *p != id && !have.contains(p))
                            .take(MIN_GOSSIP_NEIGHBOURS - have.len())
                            .collect();
                        let sender = lock(&shared.sender).clone();
                        if let Some(s) = sender
                            && !more.is_empty()
                            && let Err(e) = s.join_peers(more).await
                        {
                            debug!("rejoin after a neighbour left: {e}");
                        }
                    }
                }
                Some(Ok(GossipEvent::Lagged)) => {
                    warn!("gossip subscription lagged; re-subscribing");
                    resubscribe = true;
                }
                Some(Err(e)) => {
                    warn!("gossip subscription failed: {e}; re-subscribing");
                    resubscribe = true;
                }
                None => resubscribe = true,
            },
            Some(addr) = join_rx.recv() => {
                let id = addr.id;
                if id != shared.endpoint.id() {
                    if !addr.is_empty() {
                        shared.memory.add_endpoint_info(addr);
                    }
                    let sender = lock(&shared.sender).clone();
                    if let Some(s) = sender
                        && let Err(e) = s.join_peers(vec![id]).await
                    {
                        debug!("join {}: {e}", id.fmt_short());
                    }
                }
            }
            _ = tick.tick() => shared.advertise().await,
            Ok(()) = capacity.changed() => shared.advertise().await,
            _ = expiry => shared.expire(),
        }
        if resubscribe {
            if shared.cancel.is_cancelled() {
                break;
            }
            let peers = lock(&shared.table).ids();
            match shared.subscribe(peers).await {
                Ok(r) => receiver = r,
                Err(e) => {
                    warn!("gossip re-subscription failed: {e}; stopping the gossip loop");
                    break;
                }
            }
        }
    }
}

/// Feeds nodes found by local discovery into the discovery hook.
async fn run_discovery(shared: Arc<Shared>, discovery: LocalDiscovery) {
    let me = shared.endpoint.id();
    let mut found = discovery.discovered(me).await;
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            next = found.next() => match next {
                Some(addr) => {
                    info!(peer = %addr.id.fmt_short(), "discovered on the local network");
                    shared.join_tx.try_send(addr).ok();
                }
                None => break,
            },
        }
    }
}

/// Accepts direct-frame connections.
#[derive(Clone)]
struct FrameHandler(Arc<Shared>);

impl std::fmt::Debug for FrameHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameHandler")
    }
}

impl ProtocolHandler for FrameHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let shared = &self.0;
        let from = conn.remote_id();
        let peer = from.fmt_short();
        let Ok(_slot) = shared.inbound.clone().try_acquire_owned() else {
            shared.stats.drop(DropReason::Overloaded, &peer, "too many inbound connections");
            conn.close(frame::CODE_OVERLOADED, b"overloaded");
            return Ok(());
        };
        let max = shared.config.max_frame_bytes;
        loop {
            let mut recv = tokio::select! {
                _ = shared.cancel.cancelled() => break,
                r = conn.accept_uni() => match r {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            shared.stats.frame_in();
            let read = frame::read_frame_owned(&mut recv, max, &shared.budget);
            let (bytes, permit) =
                match tokio::time::timeout(shared.config.frame_timeout, read).await {
                    Err(_) => {
                        shared.stats.drop(DropReason::Truncated, &peer, "frame timed out");
                        continue;
                    }
                    Ok(Err(e @ FrameError::TooLarge { .. })) => {
                        shared.stats.drop(DropReason::Oversize, &peer, &e.to_string());
                        continue;
                    }
                    Ok(Err(e @ FrameError::Overloaded(_))) => {
                        shared.stats.drop(DropReason::Overloaded, &peer, &e.to_string());
                        continue;
                    }
                    Ok(Err(e)) => {
                        shared.stats.drop(DropReason::Truncated, &peer, &e.to_string());
                        continue;
                    }
                    Ok(Ok(x)) => x,
                };
            shared.stats.received_bytes(bytes.len());
            match wire::decode::<DirectFrame>(&bytes, max) {
                Ok(DirectFrame::App(payload)) => {
                    let ev = NetEvent::Direct {
                        from,
                        payload: Payload { bytes: payload, _permit: Some(Arc::new(permit)) },
                    };
                    if !shared.deliver(ev).await {
                        break;
                    }
                }
                Ok(DirectFrame::Batch(payloads)) => {
                    let permit = Arc::new(permit);
                    for payload in payloads {
                        let ev = NetEvent::Direct {
                            from,
                            payload: Payload { bytes: payload, _permit: Some(permit.clone()) },
                        };
                        if !shared.deliver(ev).await {
                            return Ok(());
                        }
                    }
                }
                Ok(DirectFrame::Goodbye(sealed)) => shared.on_goodbye(&sealed, from),
                Err(e) => shared.stats.drop(DropReason::Undecodable, &peer, &e.to_string()),
            }
        }
        Ok(())
    }
}
