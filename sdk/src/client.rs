//! The client: a light peer that submits jobs, follows them, fetches and verifies results.
//!
//! A [`Client`] is a full member of the network that offers no cores: it keeps its identity and
//! a store in its data directory, joins through any peer's ticket, and runs the same scheduler
//! core as a worker. It serves its job's blobs until other peers hold copies, receives every
//! commit for its units, and keeps a copy of every verified result — so a client that goes
//! offline and comes back (same data directory) picks its jobs up where they were.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ova_jobs::result::ResultRecord;
use ova_jobs::{BlobId, Bundle, JobId, Manifest, UnitId};
use ova_net::endpoint::EndpointConfig;
use ova_net::node::NodeConfig;
use ova_net::runtime::{
    JobEvent, NoObserver, Observer, Runtime, RuntimeConfig, VerifyReport, spawn_node, verify_job,
};
use ova_net::store::Store;
use ova_net::ticket::NodeTicket;
use tokio::sync::broadcast;

/// The client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Setting up the data directory, identity or store failed.
    #[error("{0}")]
    Setup(String),
    /// The network failed.
    #[error("network: {0}")]
    Net(String),
    /// The job is not known to this client.
    #[error("job {0} is not known here (was it submitted with this data directory?)")]
    UnknownJob(JobId),
    /// Waiting ran out of time.
    #[error("timed out after {0:?} waiting for job {1}")]
    Timeout(Duration, JobId),
    /// Too few peers offering cores appeared in time.
    #[error("{found} of the {wanted} workers wanted (peers offering cores) known after {after:?}")]
    NoWorkers {
        /// Workers asked for.
        wanted: usize,
        /// Workers known at the end.
        found: usize,
        /// How long it waited.
        after: Duration,
    },
    /// The local peer stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// How a client joins.
#[derive(Clone)]
pub struct ClientConfig {
    /// Where the identity key and the store live.
    pub data_dir: PathBuf,
    /// Peers to join through (tickets from `ova node ticket`).
    pub bootstrap: Vec<NodeTicket>,
    /// How the endpoint binds: loopback for tests and demos, local for a LAN, internet with
    /// relays for the real thing.
    pub endpoint: EndpointConfig,
    /// Name of the network to join.
    pub network: String,
    /// Shared secret of a private network (`None`: an open network).
    pub network_secret: Option<String>,
    /// Where protocol events are reported (metrics); [`NoObserver`] by default.
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("data_dir", &self.data_dir)
            .field("bootstrap", &self.bootstrap)
            .field("endpoint", &self.endpoint)
            .field("network", &self.network)
            .field("private", &self.network_secret.is_some())
            .finish()
    }
}

impl ClientConfig {
    /// A client on `data_dir` joining through `bootstrap`, on the local network.
    pub fn new(data_dir: impl Into<PathBuf>, bootstrap: Vec<NodeTicket>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bootstrap,
            endpoint: EndpointConfig::local(),
            network: "ova".into(),
            network_secret: None,
            observer: Arc::new(NoObserver),
        }
    }
}

/// A light peer for submitting and following jobs.
#[derive(Debug, Clone)]
pub struct Client {
    runtime: Runtime,
}

/// What became of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitStatus {
    /// Verified by quorum; its result record is held here.
    Verified(ResultRecord),
    /// Verified by quorum, but the record has not arrived here yet.
    VerifiedPending,
    /// Not verified (yet).
    Pending,
}

impl Client {
    /// Opens the data directory and joins the network.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", config.data_dir.display())))?;
        let key = ova_net::identity::load_or_create(&config.data_dir)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let store = Store::open(config.data_dir.join("store.redb"))
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut nc = NodeConfig::new(key, config.endpoint.clone());
        nc.network = config.network.clone();
        nc.network_secret = config.network_secret.clone();
        nc.bootstrap = config.bootstrap.clone();
        nc.local_discovery = false;
        nc.capacity.spare_cores = 0;
        let store = Arc::new(store);
        let node = spawn_node(nc, store.clone(), config.observer.clone())
            .await
            .map_err(|e| ClientError::Net(e.to_string()))?;
        let runtime = Runtime::start(
            node,
            store,
            None,
            config.observer.clone(),
            RuntimeConfig { cores: 0, ..RuntimeConfig::default() },
        )
        .map_err(|e| ClientError::Net(e.to_string()))?;
        Ok(Self { runtime })
    }

    /// Waits until at least `n` peers offering cores are known (at most `limit`); returns how
    /// many are.
    pub async fn wait_for_workers(&self, n: usize, limit: Duration) -> Result<usize, ClientError> {
        let node = self.runtime.node();
        let workers = || node.peers().iter().filter(|p| p.capacity.spare_cores > 0).count();
        let mut changed = node.watch_peers();
        let reached = tokio::time::timeout(limit, async {
            while workers() < n {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        match reached {
            Ok(true) => Ok(workers()),
            Ok(false) => Err(ClientError::Stopped),
            Err(_) => Err(ClientError::NoWorkers { wanted: n, found: workers(), after: limit }),
        }
    }

    /// The local peer (node id, ticket, store).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Submits a bundle; returns a handle that follows it.
    pub async fn submit(&self, bundle: Bundle) -> Result<Job, ClientError> {
        let events = self.runtime.subscribe();
        let manifest = bundle.manifest().clone();
        let id = self.runtime.submit(bundle).await.map_err(|e| ClientError::Net(e.to_string()))?;
        Ok(Job::new(id, manifest, self.clone(), events))
    }

    /// A handle on a job submitted earlier (with this data directory).
    pub fn job(&self, id: JobId) -> Result<Job, ClientError> {
        let manifest = self
            .runtime
            .store()
            .manifest(&id)
            .map_err(store_err)?
            .ok_or(ClientError::UnknownJob(id))?;
        Ok(Job::new(id, manifest, self.clone(), self.runtime.subscribe()))
    }

    /// Jobs submitted with this data directory: (id, name, units).
    pub fn jobs(&self) -> Result<Vec<(JobId, String, usize, bool)>, ClientError> {
        let store = self.runtime.store();
        let mut out = Vec::new();
        for (id, state) in store.jobs().map_err(store_err)? {
            if let Ok(Some(m)) = store.manifest(&id) {
                out.push((id, m.name.clone(), m.units.len(), state == b"done"));
            }
        }
        Ok(out)
    }

    /// Re-checks a job from the signed records held here.
    pub fn verify(&self, id: JobId) -> Result<VerifyReport, ClientError> {
        verify_job(self.runtime.store(), &id).map_err(|e| ClientError::Setup(e.to_string()))
    }

    /// Leaves the network cleanly.
    pub async fn shutdown(&self) {
        self.runtime.shutdown().await;
    }
}

/// A submitted job.
#[derive(Debug)]
pub struct Job {
    id: JobId,
    manifest: Manifest,
    /// The units' ids, in manifest order (derived once: every status check looks them up).
    unit_ids: Vec<UnitId>,
    client: Client,
    events: broadcast::Receiver<JobEvent>,
}

/// How a finished job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSummary {
    /// Units in the job.
    pub units: u32,
    /// Units verified.
    pub verified: u32,
    /// Units failed (each with a reason in its [`JobEvent::UnitFailed`]).
    pub failed: u32,
}

fn store_err(e: ova_net::store::StoreError) -> ClientError {
    ClientError::Setup(e.to_string())
}

impl Job {
    fn new(
        id: JobId,
        manifest: Manifest,
        client: Client,
        events: broadcast::Receiver<JobEvent>,
    ) -> Self {
        let unit_ids = manifest.unit_ids();
        Job { id, manifest, unit_ids, client, events }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The next event about this job (`None` once the client stops). Events lost to a slow
    /// reader are skipped; [`Job::progress`] always has the totals.
    pub async fn next_event(&mut self) -> Option<JobEvent> {
        loop {
            match self.events.recv().await {
                Ok(ev) => {
                    if event_job(&ev) == self.id {
                        return Some(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Waits for the next verdict about this job (a unit verified or failed, or the job
    /// done), then takes whatever other events are already queued, so a burst of verdicts
    /// costs [`Job::wait`] one look at the progress, not one per event. Starts and commits
    /// change no count and wake nothing (on the P4 bench they were two of every three
    /// events). `false`: the peer stopped.
    async fn next_verdicts(&mut self) -> bool {
        loop {
            match self.next_event().await {
                None => return false,
                Some(JobEvent::UnitStarted { .. } | JobEvent::UnitCommitted { .. }) => continue,
                Some(_) => break,
            }
        }
        // (A peer that stopped meanwhile is noticed at the next wait.)
        while self.try_next_event().is_some() {}
        true
    }

    /// The next event about this job if one is already queued (without waiting), so a
    /// follower can take a burst of events before it looks at [`Job::progress`] again.
    pub fn try_next_event(&mut self) -> Option<JobEvent> {
        loop {
            match self.events.try_recv() {
                Ok(ev) if event_job(&ev) == self.id => return Some(ev),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// (units, verified, failed) so far.
    pub async fn progress(&self) -> Result<JobSummary, ClientError> {
        let p = self.client.runtime.progress(self.id).await.map_err(|_| ClientError::Stopped)?;
        let (units, verified, failed) = p.ok_or(ClientError::UnknownJob(self.id))?;
        Ok(JobSummary { units, verified, failed })
    }

    /// Waits until every unit is verified or failed, and every verified result is held here.
    pub async fn wait(&mut self, timeout: Duration) -> Result<JobSummary, ClientError> {
        let id = self.id;
        let mut stored = self.client.runtime.store_writes();
        let work = async {
            loop {
                // Seen before the store is read: a write that lands after the check below
                // wakes us.
                stored.borrow_and_update();
                let s = self.progress().await?;
                if s.verified + s.failed >= s.units && self.results_held()? == s.verified as usize {
                    return Ok(s);
                }
                // Wake on any event about this job, or when writes reach the store: a unit's
                // verified result is stored just after its event (with the peer's next group
                // commit), so the last event may come before the last result is held. (Waiting
                // out a one-second re-check there cost P3 runs a second now and then.)
                tokio::select! {
                    more = self.next_verdicts() => if !more { return Err(ClientError::Stopped) },
                    r = stored.changed() => if r.is_err() { return Err(ClientError::Stopped) },
                }
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout, id))?
    }

    /// Verified units whose result record is in the store (checked without reading the
    /// records: [`Job::wait`] asks this again as the last results land).
    fn results_held(&self) -> Result<usize, ClientError> {
        let store = self.client.runtime.store();
        let results: Vec<BlobId> =
            store.verified_many(&self.unit_ids).map_err(store_err)?.into_iter().flatten().collect();
        let missing = store.missing_blobs(&results).map_err(store_err)?;
        Ok(results.len() - missing.len())
    }

    /// What became of each unit, in manifest order.
    pub fn statuses(&self) -> Result<Vec<UnitStatus>, ClientError> {
        let store = self.client.runtime.store();
        let results = store.verified_many(&self.unit_ids).map_err(store_err)?;
        let held: Vec<BlobId> = results.iter().flatten().copied().collect();
        let mut records = store.blobs(&held).map_err(store_err)?.into_iter();
        Ok(results
            .into_iter()
            .map(|result| match result {
                None => UnitStatus::Pending,
                Some(_) => match records.next().flatten().map(|b| ResultRecord::decode(&b)) {
                    Some(Ok(r)) => UnitStatus::Verified(r),
                    Some(Err(_)) | None => UnitStatus::VerifiedPending,
                },
            })
            .collect())
    }

    /// Each unit's verified standard output, in manifest order (`None`: not verified or not
    /// held yet).
    pub fn outputs(&self) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        Ok(self
            .statuses()?
            .into_iter()
            .map(|s| match s {
                UnitStatus::Verified(r) if r.outcome.is_success() => Some(r.stdout),
                _ => None,
            })
            .collect())
    }

    /// Each unit's output decoded as `T` (postcard, as `ova-guest`'s typed entry point writes).
    pub fn typed_outputs<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Vec<Option<Result<T, postcard::Error>>>, ClientError> {
        Ok(self
            .outputs()?
            .into_iter()
            .map(|o| o.map(|bytes| postcard::from_bytes(&bytes)))
            .collect())
    }

    /// Re-checks this job from the signed records held here.
    pub fn verify(&self) -> Result<VerifyReport, ClientError> {
        self.client.verify(self.id)
    }
}

/// The job an event is about.
fn event_job(ev: &JobEvent) -> JobId {
    match ev {
        JobEvent::UnitStarted { unit }
        | JobEvent::UnitCommitted { unit, .. }
        | JobEvent::UnitVerified { unit, .. }
        | JobEvent::UnitFailed { unit, .. } => unit.job,
        JobEvent::JobDone { job, .. } => *job,
    }
}
