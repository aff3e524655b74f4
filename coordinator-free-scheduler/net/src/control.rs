//! The worker's local control API: how `ova peers` (and later the status page and metrics)
//! talk to a running `ova worker`.
//!
//! The worker serves a small HTTP/1.1 JSON API with axum on a **loopback** address (it is not
//! authenticated, so it refuses anything else) and writes that address to
//! `DATA_DIR/control.addr`; the CLI reads the file and asks:
//!
//! - `GET /api/node` → [`NodeStatus`]: id, ticket, addresses, capacity, counters.
//! - `GET /api/peers` → a list of [`PeerInfo`](crate::PeerInfo): the peer table, most spare
//!   cores first.
//!
//! [`router`] returns the axum router so later issues can merge more routes (`/metrics`, the
//! status page) into the same server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use iroh::EndpointId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::advert::{ArchClass, Capacity};
use crate::node::Node;
use crate::stats::StatsSnapshot;

/// File in the data dir holding the control API's address.
pub const CONTROL_ADDR_FILE: &str = "control.addr";
/// Largest response the client reads.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// What `GET /api/node` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node id.
    pub id: EndpointId,
    /// A ticket to join through this node.
    pub ticket: String,
    /// Its direct addresses.
    pub addrs: Vec<String>,
    /// Capacity advertised now.
    pub capacity: Capacity,
    /// Cores on the machine.
    pub total_cores: u16,
    /// Architecture class.
    pub arch: ArchClass,
    /// Peers in the table.
    pub peers: usize,
    /// Counters.
    pub stats: StatsSnapshot,
}

impl NodeStatus {
    /// The status of `node` now.
    pub fn of(node: &Node) -> Self {
        let addr = node.addr();
        Self {
            id: node.id(),
            ticket: node.ticket().to_string(),
            addrs: addr.ip_addrs().map(|a| a.to_string()).collect(),
            capacity: node.capacity(),
            total_cores: node.config().total_cores,
            arch: node.config().arch,
            peers: node.peers().len(),
            stats: node.stats(),
        }
    }
}

/// The control API failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control address must be a loopback address.
    #[error("control address {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    /// No worker seems to run with this data dir.
    #[error("no running worker found: cannot read {path} ({source}); start one with `ova worker`")]
    NoWorker {
        /// The address file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The address file is malformed.
    #[error("{0}: not a socket address")]
    BadAddrFile(PathBuf),
    /// IO with the worker failed.
    #[error("control API at {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The worker answered with an error or something unexpected.
    #[error("control API at {addr}: {reason}")]
    Protocol {
        /// The address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// The control API's routes for `node`.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/api/node", get(|State(n): State<Node>| async move { Json(NodeStatus::of(&n)) }))
        .route("/api/peers", get(|State(n): State<Node>| async move { Json(n.peers()) }))
        .with_state(node)
}

/// A running control server.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    addr_file: Option<PathBuf>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Serves `app` on `listen` (loopback only) and, with a data dir, writes the bound address
    /// to `DATA_DIR/control.addr`.
    pub async fn start(
        app: Router,
        listen: SocketAddr,
        data_dir: Option<&Path>,
    ) -> Result<Self, ControlError> {
        if !listen.ip().is_loopback() {
            return Err(ControlError::NotLoopback(listen));
        }
        let io = |source| ControlError::Io { addr: listen, source };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let addr_file = match data_dir {
            Some(dir) => {
                let path = dir.join(CONTROL_ADDR_FILE);
                let tmp = dir.join(format!(".{CONTROL_ADDR_FILE}.tmp"));
                std::fs::write(&tmp, format!("{addr}\n")).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                Some(path)
            }
            None => None,
        };
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!("control API stopped: {e}");
            }
        });
        tracing::info!(%addr, "control API listening");
        Ok(Self { addr, addr_file, cancel, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and removes the address file.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.task.await.ok();
        if let Some(p) = self.addr_file {
            std::fs::remove_file(p).ok();
        }
    }
}

/// The control address of the worker running with `data_dir`.
pub fn read_control_addr(data_dir: &Path) -> Result<SocketAddr, ControlError> {
    let path = data_dir.join(CONTROL_ADDR_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ControlError::NoWorker { path: path.clone(), source })?;
    text.trim().parse().map_err(|_| ControlError::BadAddrFile(path))
}

/// `GET path` from the control API at `addr`, decoded from JSON.
///
/// A deliberately tiny HTTP/1.1 client (one request per connection, `Connection: close`,
/// bounded response), enough for a loopback API we serve ourselves.
pub async fn get_json<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, ControlError> {
    let io = |source| ControlError::Io { addr, source };
    let proto = |reason: String| ControlError::Protocol { addr, reason };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut buf).await.map_err(io)?;
        Ok::<_, ControlError>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| proto("timed out".into()))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| proto("malformed response".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(proto(format!("HTTP status {status:?}")));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(proto("chunked responses are not supported".into()));
    }
    serde_json::from_slice(&buf[split + 4..]).map_err(|e| proto(format!("bad JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback_and_reports_missing_worker() {
        let err = ControlServer::start(Router::new(), "0.0.0.0:0".parse().unwrap(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::NotLoopback(_)));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_control_addr(dir.path()), Err(ControlError::NoWorker { .. })));
    }

    #[tokio::test]
    async fn serves_json_and_writes_the_address_file() {
        let dir = tempfile::tempdir().unwrap();
        let app = Router::new().route("/x", get(|| async { Json(vec![1u32, 2, 3]) }));
        let server = ControlServer::start(app, "127.0.0.1:0".parse().unwrap(), Some(dir.path()))
            .await
            .unwrap();
        let addr = read_control_addr(dir.path()).unwrap();
        assert_eq!(addr, server.addr());
        let v: Vec<u32> = get_json(addr, "/x").await.unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        assert!(matches!(
            get_json::<Vec<u32>>(addr, "/nope").await,
            Err(ControlError::Protocol { .. })
        ));
        server.shutdown().await;
        assert!(read_control_addr(dir.path()).is_err());
    }
}
