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

use std::sync::Arc;
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

/// Fetches blob `id` from `peer`, refusing more than `max` bytes and anything that does not
/// hash to `id`; the whole exchange is bounded by `timeout`.
pub async fn fetch(
    endpoint: &Endpoint,
    alpn: &[u8],
    peer: EndpointId,
    id: BlobId,
    max: u64,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let work = async {
        let conn =
            endpoint.connect(peer, alpn).await.map_err(|e| FetchError::Connect(e.to_string()))?;
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
        conn.close(0u32.into(), b"done");
        if BlobId::of(&buf) != id {
            return Err(FetchError::Corrupt(id));
        }
        Ok(buf)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Stream(format!("timed out after {timeout:?}")))?
}
