//! Content-addressed blob transfer between peers: modules, inputs and results, by BLAKE3 id.
//!
//! One request per bidirectional QUIC stream on a connection with ALPN [`BLOB_ALPN`]:
//!
//! ```text
//! request:  blob id (32 bytes)
//! response: status (1 byte: 0 = here, 1 = not here) ‖ length (u64 big-endian) ‖ bytes
//! ```
//!
//! The fetcher refuses a length over its cap before reading, and stores nothing whose bytes do
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
use tokio::sync::Semaphore;

/// ALPN of blob transfer.
pub const BLOB_ALPN: &[u8] = b"ova/blob/1";
/// Concurrent requests served per connection.
const PER_CONNECTION: usize = 16;

/// Where the blob server reads blobs from.
pub trait BlobSource: Send + Sync + 'static {
    /// The blob's bytes, if held here.
    fn get(&self, id: &BlobId) -> Option<Vec<u8>>;
}

/// Fetching a blob failed.
#[derive(Debug, thiserror::Error)]
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
                let mut id = [0u8; 32];
                if recv.read_exact(&mut id).await.is_err() {
                    return;
                }
                let id = BlobId(id);
                let blob =
                    tokio::task::spawn_blocking(move || source.get(&id)).await.ok().flatten();
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
                send.finish().ok();
            });
        }
        Ok(())
    }
}

/// Most cached connections of a [`BlobClient`]; past this the oldest-looking one is closed.
const MAX_CONNECTIONS: usize = 64;

/// Fetches blobs from peers over cached connections: one QUIC handshake per peer, then one
/// stream per blob (a connection per blob cost a key exchange per tiny input).
#[derive(Clone)]
pub struct BlobClient {
    endpoint: Endpoint,
    alpn: Arc<[u8]>,
    connect_timeout: Duration,
    conns: Arc<Mutex<HashMap<EndpointId, Connection>>>,
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
        Self { endpoint, alpn: alpn.into(), connect_timeout, conns: Default::default() }
    }

    /// This client's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fetches blob `id` from `peer`, refusing more than `max` bytes and anything that does
    /// not hash to `id`; the whole exchange (connecting included) is bounded by `timeout`.
    /// A cached connection that turns out dead is replaced once.
    pub async fn fetch(
        &self,
        peer: EndpointId,
        id: BlobId,
        max: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let work = async {
            let mut fresh = false;
            loop {
                let conn = match self.cached(&peer) {
                    Some(c) => c,
                    None => {
                        fresh = true;
                        self.connect(peer).await?
                    }
                };
                match exchange(&conn, id, max).await {
                    Err(FetchError::Stream(e)) if !fresh => {
                        // Probably a connection the peer closed (restart, idle timeout).
                        tracing::debug!(peer = %peer.fmt_short(), "blob stream failed ({e}); reconnecting");
                        self.forget(&peer, &conn);
                    }
                    r => return r,
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Stream(format!("timed out after {timeout:?}")))?
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

/// One request on `conn`: asks for `id`, reads at most `max` bytes, checks the hash.
async fn exchange(conn: &Connection, id: BlobId, max: u64) -> Result<Vec<u8>, FetchError> {
    let (mut send, mut recv) =
        conn.open_bi().await.map_err(|e| FetchError::Stream(e.to_string()))?;
    send.write_all(&id.0).await.map_err(|e| FetchError::Stream(e.to_string()))?;
    send.finish().ok();
    let mut head = [0u8; 9];
    recv.read_exact(&mut head).await.map_err(|e| FetchError::Stream(e.to_string()))?;
    if head[0] != 0 {
        return Err(FetchError::NotFound(id));
    }
    let len = u64::from_be_bytes(head[1..].try_into().unwrap_or([0; 8]));
    if len > max {
        return Err(FetchError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len as usize];
    recv.read_exact(&mut buf).await.map_err(|e| FetchError::Stream(e.to_string()))?;
    if BlobId::of(&buf) != id {
        return Err(FetchError::Corrupt(id));
    }
    Ok(buf)
}
