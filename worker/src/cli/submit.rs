//! `ova job submit|status|results|verify|list`: jobs on the peer network.
//!
//! These commands act through a light peer (the SDK's [`Client`]) whose identity and store
//! live in `DATA_DIR/client`, so a submitter's jobs, the commits it received and the results
//! it holds survive its going offline: `status`, `results` and `verify` pick them up later.
//! It joins through `--bootstrap`, else through the worker running on this data directory
//! (its control API), else through the peers it joined last time.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ova_jobs::{Bundle, JobId, OutcomeKind};
use ova_net::control::{self, NodeStatus};
use ova_net::runtime::JobEvent;
use ova_net::store::Store;
use ova_net::{NodeTicket, runtime};
use ova_sdk::{Client, ClientConfig, Job, UnitStatus};

use super::net::NetArgs;
use super::node::DataDirArg;
use crate::metrics::Metrics;

/// File in the client directory listing the peers last joined through.
const BOOTSTRAP_FILE: &str = "bootstrap";

/// Options of the commands that join the network as a client.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    #[command(flatten)]
    net: NetArgs,
    /// Serve this client's Prometheus `/metrics` on this address while it runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Options of `ova job submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job bundle (made by `ova job pack`).
    bundle: PathBuf,
    /// Distinct peers that must agree on each result (overrides the manifest; changes the
    /// job id).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    quorum: Option<u8>,
    /// Peers besides the executors and this one that keep each verified result (overrides
    /// the manifest).
    #[arg(long, value_name = "R")]
    replicas: Option<u8>,
    /// Stay until every unit is verified or failed, with a progress bar.
    #[arg(long)]
    wait: bool,
    /// With `--wait`: write the results to this directory.
    #[arg(short = 'o', long = "out", value_name = "DIR", requires = "wait")]
    out: Option<PathBuf>,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    timeout: u64,
    /// Hide the progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `ova job status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job id (printed by `submit`; `ova job list` shows them), or a unique prefix of it.
    job: JobArg,
    /// Seconds to spend catching up with the network before answering.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    sync: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `ova job results`.
#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The job id, or a unique prefix of it.
    job: JobArg,
    /// Directory to write `unit-NNNNN.out` files and `summary.tsv` to.
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    out: PathBuf,
    /// Seconds to wait for results still missing here.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `ova job verify` and `ova job list` (no network needed).
#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
}

/// Fewest hex digits a job prefix may have.
const MIN_JOB_PREFIX: usize = 6;

/// A job named on the command line: its id, or a prefix of it (like the 12-digit short ids
/// `submit`, `list` and the demo print) that names one job this data directory knows.
#[derive(Debug, Clone)]
pub struct JobArg(String);

impl std::str::FromStr for JobArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        if (MIN_JOB_PREFIX..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s))
        } else {
            Err(format!(
                "{s:?} is not a job id or a prefix of one ({MIN_JOB_PREFIX} to 64 hex digits)"
            ))
        }
    }
}

impl JobArg {
    /// The whole id as given, if it is one (then no store is needed to resolve it).
    fn whole(&self) -> Option<JobId> {
        if self.0.len() == 64 { self.0.parse().ok() } else { None }
    }

    /// The job this names: the id itself, or the one job known in `store` (submitted from
    /// here, or announced to this peer) whose id starts with the prefix.
    pub fn resolve(&self, store: &Store) -> anyhow::Result<JobId> {
        if let Some(id) = self.whole() {
            return Ok(id);
        }
        let mut known: Vec<JobId> = store.jobs()?.into_iter().map(|(id, _)| id).collect();
        known.extend(store.manifests()?.into_iter().map(|(id, _)| id));
        self.pick(known)
    }

    /// The one of `known` this prefix names.
    fn pick(&self, mut known: Vec<JobId>) -> anyhow::Result<JobId> {
        known.sort();
        known.dedup();
        let matching: Vec<JobId> =
            known.into_iter().filter(|id| id.to_string().starts_with(&self.0)).collect();
        match matching.as_slice() {
            [one] => Ok(*one),
            [] => bail!("no job known here starts with {} (`ova job list` shows them)", self.0),
            many => bail!(
                "{} names {} jobs: {}; give more digits",
                self.0,
                many.len(),
                many.iter().map(JobId::short).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn client_dir(d: &DataDirArg) -> anyhow::Result<PathBuf> {
    Ok(d.resolve()?.join("client"))
}

/// The peers to join through (see the module docs).
async fn bootstrap(args: &ClientArgs, dir: &Path) -> anyhow::Result<Vec<NodeTicket>> {
    let saved = dir.join(BOOTSTRAP_FILE);
    let tickets = if !args.net.bootstrap.is_empty() {
        args.net.bootstrap.clone()
    } else if let Ok(addr) = control::read_control_addr(&args.data_dir.resolve()?) {
        let status: NodeStatus = control::get_json(addr, "/api/node")
            .await
            .with_context(|| format!("asking the local worker at {addr} for its ticket"))?;
        vec![status.ticket.parse().context("the local worker's ticket")?]
    } else if let Ok(text) = std::fs::read_to_string(&saved) {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().parse::<NodeTicket>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", saved.display()))?
    } else {
        bail!(
            "no peer to join through: pass --bootstrap TICKET (`ova node ticket` on a worker \
             prints one) or start `ova worker` with this data directory"
        );
    };
    std::fs::create_dir_all(dir)?;
    let text: String = tickets.iter().map(|t| format!("{t}\n")).collect();
    std::fs::write(&saved, text).with_context(|| format!("writing {}", saved.display()))?;
    Ok(tickets)
}

/// A connected client, with the metrics server when asked for.
struct Session {
    client: Client,
    /// Fed by the client's runtime; `sent_bytes` counts blob bytes served (a client sends
    /// nothing else through the observer), which `submit` watches.
    metrics: Arc<Metrics>,
    http: Option<crate::http::HttpServer>,
}

impl Session {
    async fn connect(args: &ClientArgs) -> anyhow::Result<Self> {
        let dir = client_dir(&args.data_dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tickets = bootstrap(args, &dir).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.init_label_values();
        let mut config = ClientConfig::new(&dir, tickets);
        config.endpoint = args.net.endpoint()?;
        config.network = args.net.network.clone();
        config.network_secret = args.net.network_secret.clone();
        config.observer = metrics.clone();
        let client = Client::connect(config).await.context("joining the network")?;
        metrics.set_node_id(client.runtime().node().id().to_string());
        let http = match args.metrics {
            Some(addr) => {
                let h =
                    crate::http::HttpServer::start_client(addr, client.runtime(), metrics.clone())
                        .await?;
                eprintln!("metrics: http://{}/metrics", h.addr());
                Some(h)
            }
            None => None,
        };
        Ok(Self { client, metrics, http })
    }

    async fn close(self) {
        if let Some(h) = self.http {
            h.shutdown().await;
        }
        self.client.shutdown().await;
    }
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    super::worker::init_logging_quiet();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(rt.block_on(f))
}

/// `ova job submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut bundle = Bundle::read_file(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    if args.quorum.is_some() || args.replicas.is_some() {
        let (mut m, blobs) = bundle.into_parts();
        if let Some(q) = args.quorum {
            m.replication.quorum = q;
            m.replication.max_replicas = m.replication.max_replicas.max(q.saturating_add(1));
        }
        if let Some(r) = args.replicas {
            m.replication.result_copies = r;
        }
        bundle = Bundle::new(m, blobs.into_values()).context("the overridden replication")?;
    }
    block_on(submit_async(args, bundle))?
}

async fn submit_async(args: SubmitArgs, bundle: Bundle) -> anyhow::Result<ExitCode> {
    let session = Session::connect(&args.client).await?;
    let m = bundle.manifest().clone();
    let blob_bytes = bundle.blob_bytes();
    let workers = session.client.wait_for_workers(1, Duration::from_secs(30)).await?;
    let t0 = Instant::now();
    let mut job = session.client.submit(bundle).await.context("submitting")?;
    let id = job.id();
    println!(
        "submitted job {} ({}): {} units, quorum {}, {} workers known",
        id,
        m.name,
        m.units.len(),
        m.replication.quorum,
        workers
    );
    let code = if args.wait {
        let deadline = Duration::from_secs(args.timeout);
        let done = follow(&mut job, &session.client, deadline, args.quiet).await;
        let summary = match done {
            Ok(s) => s,
            Err(e) => {
                session.close().await;
                return Err(e);
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        println!(
            "{} units in {wall:.2} s: {:.1} verified units/s",
            summary.units,
            f64::from(summary.verified) / wall.max(1e-9)
        );
        let code = report(&job, args.out.as_deref())?;
        println!("job id: {id}  (ova job status|results|verify {id})");
        code
    } else {
        // Stay until a full copy of the bundle has left this peer (or a result came back), so
        // the job can go on without us.
        let left = tokio::time::timeout(Duration::from_secs(args.timeout), async {
            loop {
                if session.metrics.sent_bytes.get() >= blob_bytes {
                    return;
                }
                match tokio::time::timeout(Duration::from_millis(200), job.next_event()).await {
                    Ok(Some(JobEvent::UnitCommitted { .. } | JobEvent::JobDone { .. })) => return,
                    Ok(None) => return,
                    _ => {}
                }
            }
        })
        .await;
        if left.is_err() {
            eprintln!("warning: no worker fetched the bundle yet; it is kept here for later");
        }
        println!(
            "job id: {id}\nfollow it with `ova job status {id}`; fetch with `ova job results {id} -o DIR`"
        );
        ExitCode::SUCCESS
    };
    session.close().await;
    Ok(code)
}

/// Follows `job` with a progress bar until every unit has ended.
pub(super) async fn follow(
    job: &mut Job,
    client: &Client,
    deadline: Duration,
    quiet: bool,
) -> anyhow::Result<ova_sdk::JobSummary> {
    let units = job.manifest().units.len() as u64;
    let bar =
        if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(units) };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} verified  {per_sec}  {msg}  eta {eta}",
        )
        .expect("valid template"),
    );
    // When each peer last committed a unit of the job (bounded by the peers there are).
    let mut recent: HashMap<[u8; 32], Instant> = HashMap::new();
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let start = Instant::now();
    let id = job.id();
    let result = async {
        loop {
            let p = job.progress().await?;
            bar.set_position(u64::from(p.verified + p.failed));
            recent.retain(|_, t| t.elapsed() <= Duration::from_secs(10));
            let working = recent.len();
            let failed =
                if p.failed > 0 { format!(" · {} failed", p.failed) } else { String::new() };
            bar.set_message(format!(
                "{working} peers working · {} known{failed}",
                client.runtime().node().peers().len()
            ));
            if p.verified + p.failed >= p.units {
                // Every unit ended; wait for the verified results to arrive here.
                let left = deadline.saturating_sub(start.elapsed());
                return Ok::<_, anyhow::Error>(job.wait(left).await?);
            }
            anyhow::ensure!(
                start.elapsed() < deadline,
                ova_sdk::ClientError::Timeout(deadline, id)
            );
            // The next event, and whatever else is queued already (bounded): the progress
            // is looked at again once per burst, not once per event.
            let first =
                match tokio::time::timeout(Duration::from_millis(500), job.next_event()).await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => bail!("the client stopped"),
                    Err(_) => continue,
                };
            let burst = std::iter::once(first).chain(std::iter::from_fn(|| job.try_next_event()));
            for ev in burst.take(4096) {
                match ev {
                    JobEvent::UnitCommitted { by, .. } => {
                        recent.insert(by.0, Instant::now());
                    }
                    JobEvent::UnitFailed { reason, .. } => {
                        *failures.entry(reason).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    .await;
    bar.finish_and_clear();
    for (reason, n) in &failures {
        eprintln!("{n} units failed: {reason}");
    }
    result
}

/// Prints how each unit ended and writes results to `out`; non-zero exit if any unit did not
/// succeed.
pub(super) fn report(job: &Job, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let statuses = job.statuses()?;
    let unit_ids = job.manifest().unit_ids();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut first_error: Option<(usize, String)> = None;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut rows = Vec::with_capacity(statuses.len());
    for (i, s) in statuses.iter().enumerate() {
        let (kind, message) = match s {
            UnitStatus::Verified(r) => {
                if !r.outcome.is_success() && first_error.is_none() {
                    first_error = Some((i, r.outcome.to_string()));
                }
                if let Some(dir) = out
                    && !r.stdout.is_empty()
                {
                    std::fs::write(dir.join(format!("unit-{i:05}.out")), &r.stdout)?;
                }
                (r.outcome.kind().label(), r.outcome.to_string())
            }
            UnitStatus::VerifiedPending => ("result_not_held", String::new()),
            UnitStatus::Pending => ("not_verified", String::new()),
        };
        *kinds.entry(kind).or_default() += 1;
        rows.push(format!("{i}\t{}\t{kind}\t{message}", unit_ids[i]));
    }
    if let Some(dir) = out {
        let mut f = std::fs::File::create(dir.join("summary.tsv"))?;
        writeln!(f, "index\tunit\toutcome\tmessage")?;
        for r in rows {
            writeln!(f, "{r}")?;
        }
        println!("results in {}", dir.display());
    }
    let by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    println!("outcomes: {}", by_kind.join(", "));
    if let Some((i, msg)) = first_error {
        eprintln!("unit {i} (and maybe others) ended in error: {msg}");
    }
    let ok = kinds.iter().all(|(k, _)| *k == OutcomeKind::Success.label());
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `ova job status`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let session = Session::connect(&args.client).await?;
        let id = args.job.resolve(session.client.runtime().store())?;
        let job = session.client.job(id)?;
        // Let the network catch us up, ending early once the job is complete here.
        let until = Instant::now() + Duration::from_secs(args.sync);
        let mut job = job;
        while Instant::now() < until {
            let p = job.progress().await?;
            if p.verified + p.failed >= p.units {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), job.next_event()).await;
        }
        let p = job.progress().await?;
        let m = job.manifest();
        let held = job.statuses()?.iter().filter(|s| matches!(s, UnitStatus::Verified(_))).count();
        println!("job {} ({})", job.id(), m.name);
        println!(
            "units: {}  verified: {}  failed: {}  pending: {}  results held here: {held}",
            p.units,
            p.verified,
            p.failed,
            p.units - p.verified - p.failed
        );
        println!(
            "quorum {} of at most {} replicas, {} extra result copies",
            m.replication.quorum, m.replication.max_replicas, m.replication.result_copies
        );
        let state = if p.verified + p.failed < p.units {
            "running"
        } else if p.failed > 0 {
            "done, with failures"
        } else {
            "done"
        };
        println!("state: {state}");
        session.close().await;
        Ok(ExitCode::SUCCESS)
    })?
}

/// `ova job results`.
pub fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let session = Session::connect(&args.client).await?;
        let id = args.job.resolve(session.client.runtime().store())?;
        let mut job = session.client.job(id)?;
        let waited = job.wait(Duration::from_secs(args.timeout)).await;
        if let Err(e) = &waited {
            eprintln!("warning: {e}; writing the results held so far");
        }
        let code = report(&job, Some(&args.out));
        session.close().await;
        match (code, waited) {
            (Ok(_), Err(_)) => Ok(ExitCode::FAILURE),
            (code, _) => code,
        }
    })?
}

/// Names the peers a quorum outvoted (see [`runtime::VerifyReport::dissenters`]).
pub(super) fn print_dissenters(report: &runtime::VerifyReport) {
    for (peer, n) in &report.dissenters {
        let id = iroh::EndpointId::from_bytes(&peer.0)
            .map_or_else(|_| "an unknown peer".to_string(), |e| e.to_string());
        println!("outvoted: {id} signed {n} result(s) the quorum disagreed with");
    }
}

fn open_store(d: &DataDirArg) -> anyhow::Result<Store> {
    let dir = client_dir(d)?;
    let path = dir.join("store.redb");
    anyhow::ensure!(
        path.exists(),
        "no jobs were submitted with {} (no store there)",
        dir.display()
    );
    Store::open(&path).with_context(|| {
        format!("opening {} (is another `ova job` command using it?)", path.display())
    })
}

/// `ova job verify`: re-checks a job from the signed records held here, without the network.
pub fn verify(job: JobArg, args: LocalArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.data_dir)?;
    let job = job.resolve(&store)?;
    let report = runtime::verify_job(&store, &job)?;
    for p in &report.problems {
        println!("problem: {p}");
    }
    print_dissenters(&report);
    println!(
        "job {job}: {} of {} units verified from signed records; {} problems",
        report.verified,
        report.units,
        report.problems.len()
    );
    Ok(if report.problems.is_empty() && report.verified == report.units {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ova job list`: the jobs submitted with this data directory.
pub fn list(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.data_dir)?;
    let mut rows = Vec::new();
    for (id, state) in store.jobs()? {
        let Some(m) = store.manifest(&id)? else { continue };
        let mut verified = 0;
        for u in m.unit_ids() {
            if store.verified(&u)?.is_some() {
                verified += 1;
            }
        }
        let state = if state == b"done" { "done" } else { "running" };
        rows.push((id, m.name.clone(), m.units.len(), verified, state));
    }
    if rows.is_empty() {
        println!("no jobs");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<64}  {:<20} {:>8} {:>9}  state", "job id", "name", "units", "verified");
    for (id, name, units, verified, state) in rows {
        println!("{id:<64}  {name:<20} {units:>8} {verified:>9}  {state}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: u8, second: u8) -> JobId {
        let mut b = [7u8; 32];
        b[0] = first;
        b[1] = second;
        JobId(b)
    }

    #[test]
    fn a_job_is_named_by_its_id_or_a_unique_prefix() {
        let arg = |s: &str| s.parse::<JobArg>();
        let (a, b, c) = (id(0xab, 0xcd), id(0xab, 0xce), id(0x12, 0x34));
        let known = vec![a, b, c, a];
        // A unique prefix, in any case; the whole id even when nothing is known.
        assert_eq!(arg("ABCD07").unwrap().pick(known.clone()).unwrap(), a);
        assert_eq!(arg("123407").unwrap().pick(known.clone()).unwrap(), c);
        assert_eq!(arg(&b.to_string()).unwrap().whole(), Some(b));
        // The same job listed twice is one job; ambiguous or unknown prefixes are errors
        // that say so.
        assert_eq!(arg(&a.to_string()[..6]).unwrap().pick(vec![a, a]).unwrap(), a);
        let mut twin = a.0;
        twin[31] = 0;
        let e = arg("abcd07").unwrap().pick(vec![a, JobId(twin)]).unwrap_err().to_string();
        assert!(e.contains("names 2 jobs"), "{e}");
        let e = arg("ffffff").unwrap().pick(known).unwrap_err().to_string();
        assert!(e.contains("no job known here starts with ffffff"), "{e}");
        // Not hex, too short or too long: refused before anything is looked up.
        for bad in ["abcde", "abcdeg", &"a".repeat(65), "job-1"] {
            assert!(arg(bad).unwrap_err().contains("not a job id"), "{bad}");
        }
    }
}
