//! Content-addressed blob transfer between peers: modules, inputs and results, by BLAKE3 id.
//!
//! One request per bidirectional QUIC stream on a connection with ALPN [`BLOB_ALPN`]; a request
//! asks for one blob or several:
//!
//! ```text
//! request:  count (u16 big-endian, 1 ..= MAX_PER_REQUEST) ‖ count × blob id (32 bytes)
//! response: per id, in order: status (1 byte: 0 = here, 1 = not here) ‖ length (u64
//!           big-endian) ‖ bytes (length of them; none when not here)
//! ```
//!
//! The client gathers the fetches that wait for the same peer into one request (group fetch,
//! like the runtime's group commit): while a request to a peer is in flight, the next fetches
//! for that peer queue, and go together in the next. A worker starting many short units, or
//! a submitter collecting their results, then costs the peer one stream and one store read
//! per batch instead of per blob; an idle client still sends each fetch at once.
//!
//! The fetcher refuses a length over its cap before reading, and keeps nothing whose bytes do
//! not hash to the id it asked for, so a lying or broken peer costs a retry elsewhere, never a
//! wrong blob. The server answers from a [`BlobSource`] (the peer's store) with a bounded
//! number of concurrent requests per connection. (A hand-rolled exchange rather than
//! iroh-blobs: our blobs are whole values of at most tens of MiB that are verified once on
//! arrival, and this keeps one store — the peer's redb — as the single source of truth.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::node::lock;
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointId};
use ova_jobs::BlobId;
use tokio::sync::{Semaphore, oneshot};

/// ALPN of blob transfer.
pub const BLOB_ALPN: &[u8] = b"ova/blob/2";
/// Concurrent requests served per connection.
const PER_CONNECTION: usize = 16;
/// Most blobs one request asks for.
pub const MAX_PER_REQUEST: usize = 64;

/// Where the blob server reads blobs from.
pub trait BlobSource: Send + Sync + 'static {
    /// The blob's bytes, if held here.
    fn get(&self, id: &BlobId) -> Option<Vec<u8>>;

    /// Several blobs' bytes, in the order asked (a source may read them in one go).
    fn get_many(&self, ids: &[BlobId]) -> Vec<Option<Vec<u8>>> {
        ids.iter().map(|id| self.get(id)).collect()
    }
}

/// Fetching a blob failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Could not reach the peer.
    #[error("connect: {0}")]
    Connect(String),
    /// The peer does not hold the blob.
    #[error("the peer does not hold blob {0}")]
    NotFound(BlobId),
    /// The announced size is over our cap.
    #[error("blob of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced size.
        len: u64,
        /// Cap.
        max: u64,
    },
    /// The bytes do not hash to the id asked for.
    #[error("the peer sent bytes that do not hash to {0}")]
    Corrupt(BlobId),
    /// The stream failed or timed out.
    #[error("transfer: {0}")]
    Stream(String),
}

/// Serves blobs from a [`BlobSource`].
#[derive(Clone)]
pub struct BlobHandler {
    source: Arc<dyn BlobSource>,
    sent: Arc<dyn Fn(u64) + Send + Sync>,
}

impl std::fmt::Debug for BlobHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobHandler")
    }
}

impl BlobHandler {
    /// Serves from `source`, reporting bytes sent to `sent`.
    pub fn new(source: Arc<dyn BlobSource>, sent: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        Self { source, sent }
    }
}

impl ProtocolHandler for BlobHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let slots = Arc::new(Semaphore::new(PER_CONNECTION));
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let source = self.source.clone();
            let sent = self.sent.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut count = [0u8; 2];
                if recv.read_exact(&mut count).await.is_err() {
                    return;
                }
                let count = usize::from(u16::from_be_bytes(count));
                if count == 0 || count > MAX_PER_REQUEST {
                    recv.stop(1u32.into()).ok();
                    return;
                }
                let mut raw = vec![0u8; count * 32];
                if recv.read_exact(&mut raw).await.is_err() {
                    return;
                }
                let ids: Vec<BlobId> =
                    raw.chunks_exact(32).map(|c| BlobId(c.try_into().unwrap_or([0; 32]))).collect();
                let Ok(blobs) = tokio::task::spawn_blocking(move || source.get_many(&ids)).await
                else {
                    return;
                };
                for blob in blobs {
                    let mut head = [0u8; 9];
                    match &blob {
                        Some(b) => head[1..].copy_from_slice(&(b.len() as u64).to_be_bytes()),
                        None => head[0] = 1,
                    }
                    if send.write_all(&head).await.is_err() {
                        return;
                    }
                    if let Some(b) = blob {
                        if send.write_all(&b).await.is_err() {
                            return;
                        }
                        sent(b.len() as u64 + 9);
                    }
                }
                send.finish().ok();
            });
        }
        Ok(())
    }
}

/// Most cached connections of a [`BlobClient`]; past this the oldest-looking one is closed.
const MAX_CONNECTIONS: usize = 64;

/// Fetches blobs from peers over cached connections: one QUIC handshake per peer, then one
/// stream per request (a connection per blob cost a key exchange per tiny input), and the
/// fetches waiting for the same peer gathered into one request (see the module docs).
#[derive(Clone)]
pub struct BlobClient {
    endpoint: Endpoint,
    alpn: Arc<[u8]>,
    connect_timeout: Duration,
    conns: Arc<Mutex<HashMap<EndpointId, Connection>>>,
    queues: Arc<Mutex<HashMap<EndpointId, PeerQueue>>>,
}

/// One fetch waiting for its peer's next request.
struct Waiter {
    id: BlobId,
    max: u64,
    timeout: Duration,
    reply: oneshot::Sender<Result<Vec<u8>, FetchError>>,
}

/// The fetches waiting for one peer. A queue exists only while a task sends its requests;
/// that task takes at most [`MAX_PER_REQUEST`] distinct blobs per request, so a queue is
/// bounded by the fetches callers are awaiting.
#[derive(Default)]
struct PeerQueue {
    waiting: Vec<Waiter>,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient").field("alpn", &String::from_utf8_lossy(&self.alpn)).finish()
    }
}

impl BlobClient {
    /// Fetches through `endpoint` with ALPN `alpn` (see [`crate::node::NodeConfig::alpn`]),
    /// giving up on a new connection after `connect_timeout` (a crashed peer never answers,
    /// and the next holder of the blob should be tried well before the fetch's own deadline).
    pub fn new(endpoint: Endpoint, alpn: &[u8], connect_timeout: Duration) -> Self {
        Self {
            endpoint,
            alpn: alpn.into(),
            connect_timeout,
            conns: Default::default(),
            queues: Default::default(),
        }
    }

    /// This client's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fetches blob `id` from `peer`, refusing more than `max` bytes and anything that does
    /// not hash to `id`; the whole exchange (connecting and waiting for the request in flight
    /// to the same peer included) is bounded by `timeout`. A cached connection that turns out
    /// dead is replaced once.
    pub async fn fetch(
        &self,
        peer: EndpointId,
        id: BlobId,
        max: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queues = lock(&self.queues);
            let (queue, start) = match queues.get_mut(&peer) {
                Some(q) => (q, false),
                None => (queues.entry(peer).or_default(), true),
            };
            queue.waiting.push(Waiter { id, max, timeout, reply });
            start
        };
        if start {
            let client = self.clone();
            tokio::spawn(async move { client.drain(peer).await });
        }
        let timed_out = || FetchError::Stream(format!("timed out after {timeout:?}"));
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(FetchError::Stream("the fetch task ended".into())),
            Err(_) => Err(timed_out()),
        }
    }

    /// Sends `peer`'s queued fetches, a request at a time, until none wait; then the queue
    /// goes (the next fetch starts a new task).
    async fn drain(&self, peer: EndpointId) {
        loop {
            let (batch, ids) = {
                let mut queues = lock(&self.queues);
                let Some(queue) = queues.get_mut(&peer) else { return };
                // Fetches whose caller gave up are dropped here, unsent.
                queue.waiting.retain(|w| !w.reply.is_closed());
                if queue.waiting.is_empty() {
                    queues.remove(&peer);
                    return;
                }
                take_batch(&mut queue.waiting)
            };
            let max = batch.iter().map(|w| w.max).max().unwrap_or(0);
            let timeout = batch.iter().map(|w| w.timeout).max().unwrap_or_default();
            let results = match tokio::time::timeout(timeout, self.request(peer, &ids, max)).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Stream(format!("timed out after {timeout:?}"))),
            };
            for w in batch {
                let r = match &results {
                    Err(e) => Err(e.clone()),
                    Ok(rs) => match ids.iter().position(|i| *i == w.id).map(|i| &rs[i]) {
                        Some(Ok(b)) if b.len() as u64 > w.max => {
                            Err(FetchError::TooLarge { len: b.len() as u64, max: w.max })
                        }
                        Some(r) => r.clone(),
                        None => Err(FetchError::NotFound(w.id)),
                    },
                };
                w.reply.send(r).ok();
            }
        }
    }

    /// One request for `ids` on a cached (or new) connection, reconnecting once when a cached
    /// one turns out dead.
    async fn request(
        &self,
        peer: EndpointId,
        ids: &[BlobId],
        max: u64,
    ) -> Result<Vec<Result<Vec<u8>, FetchError>>, FetchError> {
        let mut fresh = false;
        loop {
            let conn = match self.cached(&peer) {
                Some(c) => c,
                None => {
                    fresh = true;
                    self.connect(peer).await?
                }
            };
            match exchange(&conn, ids, max).await {
                Err(FetchError::Stream(e)) if !fresh => {
                    // Probably a connection the peer closed (restart, idle timeout).
                    tracing::debug!(peer = %peer.fmt_short(), "blob stream failed ({e}); reconnecting");
                    self.forget(&peer, &conn);
                }
                r => return r,
            }
        }
    }

    fn cached(&self, peer: &EndpointId) -> Option<Connection> {
        let conns = lock(&self.conns);
        conns.get(peer).filter(|c| c.close_reason().is_none()).cloned()
    }

    fn forget(&self, peer: &EndpointId, conn: &Connection) {
        let mut conns = lock(&self.conns);
        if conns.get(peer).is_some_and(|c| c.stable_id() == conn.stable_id()) {
            conns.remove(peer);
        }
    }

    async fn connect(&self, peer: EndpointId) -> Result<Connection, FetchError> {
        let connecting = self.endpoint.connect(peer, &self.alpn);
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                FetchError::Connect(format!("timed out after {:?}", self.connect_timeout))
            })?
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let mut conns = lock(&self.conns);
        conns.retain(|_, c| c.close_reason().is_none());
        if conns.len() >= MAX_CONNECTIONS
            && let Some(victim) = conns.keys().next().copied()
            && let Some(c) = conns.remove(&victim)
        {
            c.close(0u32.into(), b"evicted");
        }
        conns.insert(peer, conn.clone());
        Ok(conn)
    }

    /// Closes every cached connection.
    pub fn close(&self) {
        for (_, c) in lock(&self.conns).drain() {
            c.close(0u32.into(), b"done");
        }
    }
}

/// Takes the waiters of the next request out of `waiting`: the first [`MAX_PER_REQUEST`]
/// distinct blobs asked for (returned too, in order), with every waiter for any of them (a
/// blob several callers wait for is asked once).
fn take_batch(waiting: &mut Vec<Waiter>) -> (Vec<Waiter>, Vec<BlobId>) {
    let mut ids: Vec<BlobId> = Vec::new();
    for w in waiting.iter() {
        if ids.len() == MAX_PER_REQUEST {
            break;
        }
        if !ids.contains(&w.id) {
            ids.push(w.id);
        }
    }
    let (batch, rest) = std::mem::take(waiting).into_iter().partition(|w| ids.contains(&w.id));
    *waiting = rest;
    (batch, ids)
}

/// One request on `conn`: asks for `ids` (1 ..= [`MAX_PER_REQUEST`]), reads each answer, at
/// most `max` bytes each, and checks each against its id. A blob the peer lacks, or sends
/// wrong, fails alone; a broken stream fails the request.
async fn exchange(
    conn: &Connection,
    ids: &[BlobId],
    max: u64,
) -> Result<Vec<Result<Vec<u8>, FetchError>>, FetchError> {
    let stream = |e: &dyn std::fmt::Display| FetchError::Stream(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream(&e))?;
    let mut request = Vec::with_capacity(2 + 32 * ids.len());
    request.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        request.extend_from_slice(&id.0);
    }
    send.write_all(&request).await.map_err(|e| stream(&e))?;
    send.finish().ok();
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let mut head = [0u8; 9];
        recv.read_exact(&mut head).await.map_err(|e| stream(&e))?;
        if head[0] != 0 {
            out.push(Err(FetchError::NotFound(id)));
            continue;
        }
        let len = u64::from_be_bytes(head[1..].try_into().unwrap_or([0; 8]));
        if len > max {
            // The rest of the stream is that blob: the request ends here, unread. Any blob
            // after it fails too (a retry asks again).
            recv.stop(1u32.into()).ok();
            out.push(Err(FetchError::TooLarge { len, max }));
            while out.len() < ids.len() {
                out.push(Err(FetchError::Stream("an earlier blob was over the limit".into())));
            }
            return Ok(out);
        }
        let mut buf = vec![0u8; len as usize];
        recv.read_exact(&mut buf).await.map_err(|e| stream(&e))?;
        out.push(if BlobId::of(&buf) == id { Ok(buf) } else { Err(FetchError::Corrupt(id)) });
    }
    Ok(out)
}
