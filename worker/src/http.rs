//! The metrics address (`ova worker --metrics ADDR`): what operators and volunteers look at.
//!
//! - `GET /metrics`: the Prometheus/OpenMetrics exposition of [`crate::metrics`];
//! - `GET /`: the live status page (one self-contained HTML file, no external resources);
//! - `GET /api/status`: the JSON the page polls ([`StatusSnapshot`]).
//!
//! Served with axum; unlike the control API this may listen on any address, since it only
//! reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use ova_net::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::status::{PeerRow, StatusBoard, StatusSnapshot};

/// The status page.
pub const STATUS_PAGE: &str = include_str!("../assets/status.html");

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the server reads from.
#[derive(Clone)]
pub struct StatusSource {
    /// The peer.
    pub runtime: Runtime,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its recent units.
    pub status: Arc<StatusBoard>,
    /// Units running now.
    pub busy: Arc<AtomicI64>,
}

impl StatusSource {
    /// The status page's data now.
    pub fn snapshot(&self) -> StatusSnapshot {
        let (throughput, units_per_sec, recent, units_total) = self.status.view(Instant::now());
        let node = self.runtime.node();
        let peers = node
            .peers()
            .into_iter()
            .map(|p| PeerRow {
                node_id: p.id.to_string(),
                spare_cores: u32::from(p.capacity.spare_cores),
                advert_age_secs: p.age_ms as f64 / 1e3,
                addr: p.addrs.first().cloned(),
            })
            .collect();
        StatusSnapshot {
            node_id: node.id().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            spare_cores: self.metrics.spare_cores.get(),
            busy_cores: self.busy.load(Ordering::Relaxed).max(0),
            units_per_sec,
            units_total,
            throughput,
            recent,
            peers,
        }
    }
}

/// The routes, for `source`.
pub fn router(source: StatusSource) -> Router {
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .route(
            "/metrics",
            get(|State(s): State<StatusSource>| async move {
                ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode()).into_response()
            }),
        )
        .route(
            "/api/status",
            get(|State(s): State<StatusSource>| async move { Json(s.snapshot()) }),
        )
        .with_state(source)
}

/// A running metrics server.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves [`router`] on `listen`.
    pub async fn start(listen: SocketAddr, source: StatusSource) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening for metrics on {listen}"))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let app = router(source);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!("metrics server stopped: {e}");
            }
        });
        tracing::info!(%addr, "metrics and status page at http://{addr}/");
        Ok(Self { addr, cancel, task })
    }

    /// Serves a client's (a submitter's) `metrics` on `listen`: the same routes as a
    /// worker's, with an empty status board and no units running, since a client runs none.
    /// Used by `ova job submit --metrics ADDR`.
    pub async fn start_client(
        listen: SocketAddr,
        runtime: &Runtime,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let source = StatusSource {
            runtime: runtime.clone(),
            metrics,
            status: Arc::new(StatusBoard::new(Instant::now())),
            busy: Arc::default(),
        };
        Self::start(listen, source).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.task.await.ok();
    }
}
