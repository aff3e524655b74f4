//! The wasm executor on the peer network: workers on 127.0.0.1 (in-process [`WorkerPeer`]s, each
//! with its own identity, store and executor) run real example jobs submitted by a light peer
//! (the SDK client). Every loop is bounded.
//!
//! - every unit is verified by quorum and equals running the same unit locally;
//! - a worker that lies is outvoted and named;
//! - a submitter that leaves mid-job comes back to its results;
//! - bad jobs (invalid module, a unit that always traps, a quorum larger than the network) end
//!   with a reason instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use ova_jobs::result::ResultRecord;
use ova_jobs::{
    BlobId, Bundle, Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec,
};
use ova_net::endpoint::EndpointConfig;
use ova_net::runtime::JobEvent;
use ova_net::ticket::NodeTicket;
use ova_sdk::{Client, ClientConfig, Job, UnitStatus};
use ova_worker::peer::{ExecutorChoice, WorkerOptions, WorkerPeer};
use ova_worker::{Completion, Executor, ExecutorExt, ModuleSource, UnitRequest};

use crate::common::{example, pool, wat};

/// A worker on 127.0.0.1 offering 2 cores whatever the machine's load, running units on `exec`.
async fn worker(
    dir: &std::path::Path,
    boot: Vec<NodeTicket>,
    exec: Arc<dyn Executor>,
) -> WorkerPeer {
    worker_with(dir, boot, |o| o.executor = ExecutorChoice::Given(exec)).await
}

/// Honest workers (in-process executors), one per directory, joined through the first.
async fn workers(dirs: &[tempfile::TempDir]) -> Vec<WorkerPeer> {
    let mut out: Vec<WorkerPeer> = Vec::new();
    for d in dirs {
        let boot = out.first().map(|w| vec![w.runtime().node().ticket()]).unwrap_or_default();
        out.push(worker(d.path(), boot, Arc::new(pool(2))).await);
    }
    out
}

async fn client(dir: &std::path::Path, boot: &WorkerPeer) -> Client {
    let config = ClientConfig {
        endpoint: EndpointConfig::loopback(),
        ..ClientConfig::new(dir, vec![boot.runtime().node().ticket()])
    };
    Client::connect(config).await.unwrap()
}

/// Waits until `client` sees `n` peers offering cores.
async fn sees_workers(client: &Client, n: usize) {
    if let Err(e) = client.wait_for_workers(n, Duration::from_secs(30)).await {
        panic!("the submitter sees {n} workers within 30 s: {e}");
    }
}

async fn wait_all(job: &mut Job, secs: u64) -> ova_sdk::JobSummary {
    match job.wait(Duration::from_secs(secs)).await {
        Ok(s) => s,
        Err(e) => panic!("{e}: progress {:?}", job.progress().await),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// What each unit of `bundle` gives when run locally.
fn local_results(bundle: &Bundle, module: &Arc<ModuleSource>) -> Vec<ResultRecord> {
    let local = pool(2);
    (0..bundle.manifest().units.len())
        .map(|i| {
            let r = local.run_blocking(UnitRequest::from_bundle(bundle, i, module));
            ResultRecord::of_run(&r.outcome, &r.stdout).unwrap()
        })
        .collect()
}

fn records(job: &Job) -> Vec<ResultRecord> {
    job.statuses()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s {
            UnitStatus::Verified(r) => r,
            other => panic!("unit {i} is {other:?}"),
        })
        .collect()
}

fn primes_job(module: &Arc<ModuleSource>, units: usize) -> Bundle {
    job_of(module, "primes", units, &["--span", "20000"], 2)
}

fn job_of(
    module: &Arc<ModuleSource>,
    name: &str,
    units: usize,
    args: &[&str],
    quorum: u8,
) -> Bundle {
    let bytes = module.bytes().to_vec();
    let inputs: Vec<Vec<u8>> = (0..units).map(|i| i.to_string().into_bytes()).collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        name: name.into(),
        module: BlobId::of(&bytes),
        units: inputs
            .iter()
            .map(|i| UnitSpec { input: BlobId::of(i), args: args.clone() })
            .collect(),
        replication: Replication { quorum, max_replicas: quorum.max(2) + 2, result_copies: 1 },
        limits: Limits { memory_bytes: 64 << 20, deadline_ms: 60_000, ..Limits::default() },
        determinism: Determinism::SameArch,
        priority: 0,
    };
    Bundle::new(m, inputs.into_iter().chain([bytes])).unwrap()
}

#[test]
fn three_workers_run_an_example_job_by_quorum() {
    let module = example("primes");
    let bundle = primes_job(&module, 100);
    let expected = local_results(&bundle, &module);
    assert!(expected.iter().all(|r| r.outcome.is_success()));
    runtime().block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let ws = workers(&dirs[..3]).await;
        let client = client(dirs[3].path(), &ws[0]).await;
        sees_workers(&client, 3).await;
        let mut job = client.submit(bundle.clone()).await.unwrap();
        let summary = wait_all(&mut job, 120).await;
        assert_eq!((summary.units, summary.verified, summary.failed), (100, 100, 0));
        assert_eq!(records(&job), expected, "network results equal the local run");
        let report = job.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.verified, 100);
        assert!(report.dissenters.is_empty());
        let ran: u64 = ws.iter().map(|w| w.metrics().units_started.get()).sum();
        assert!(ran >= 200, "each unit ran on at least 2 workers: {ran}");

        // The same computations in another job: answered from the verified results, not run.
        let (mut m, blobs) = bundle.into_parts();
        m.name = "primes-again".into();
        let again = Bundle::new(m, blobs.into_values()).unwrap();
        let mut job = client.submit(again).await.unwrap();
        let summary = wait_all(&mut job, 120).await;
        assert_eq!((summary.verified, summary.failed), (100, 0));
        assert_eq!(records(&job), expected);
        let ran_again: u64 = ws.iter().map(|w| w.metrics().units_started.get()).sum();
        let memoised: u64 = ws.iter().map(|w| w.metrics().units_memoised.get()).sum();
        assert_eq!(ran_again, ran, "no unit ran a second time");
        assert!(memoised >= 200, "every replica reused a verified result: {memoised}");
        client.shutdown().await;
        for w in ws {
            w.shutdown().await;
        }
    });
}

/// An executor that runs units honestly, then replaces every output with a wrong one.
struct Liar(ova_worker::PoolExecutor);

impl Executor for Liar {
    fn submit(&self, req: UnitRequest, done: Completion) {
        self.0.submit(
            req,
            Box::new(move |mut r| {
                r.stdout = b"42\n".to_vec();
                done(r)
            }),
        );
    }
    fn cores(&self) -> usize {
        self.0.cores()
    }
}

#[test]
fn a_lying_worker_is_outvoted_and_named() {
    let module = example("primes");
    // A short deadline: a unit whose replicas disagree may wait for a lease to lapse before its
    // extra replica runs (leases last the deadline plus slack).
    let mut bundle = primes_job(&module, 60);
    let (mut m, blobs) = bundle.into_parts();
    m.limits.deadline_ms = 10_000;
    bundle = Bundle::new(m, blobs.into_values()).unwrap();
    let expected = local_results(&bundle, &module);
    runtime().block_on(async {
        let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut ws = workers(&dirs[..3]).await;
        let boot = vec![ws[0].runtime().node().ticket()];
        let liar = worker(dirs[3].path(), boot, Arc::new(Liar(pool(2)))).await;
        let liar_id = liar.runtime().peer_id();
        ws.push(liar);
        let client = client(dirs[4].path(), &ws[0]).await;
        sees_workers(&client, 4).await;
        let mut job = client.submit(bundle).await.unwrap();
        let summary = wait_all(&mut job, 120).await;
        assert_eq!((summary.verified, summary.failed), (60, 0));
        assert_eq!(records(&job), expected, "no lie was accepted");
        let report = job.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(ws[3].metrics().units_started.get() > 0, "the liar was given work");
        assert_eq!(report.dissenters.len(), 1, "{:?}", report.dissenters);
        assert_eq!(report.dissenters[0].0, liar_id, "the liar is named");
        client.shutdown().await;
        for w in ws {
            w.shutdown().await;
        }
    });
}

#[test]
fn a_submitter_that_leaves_mid_job_comes_back_to_its_results() {
    // Units long enough (a few hundred ms each) that the job is still running when we leave.
    let module = example("montecarlo");
    let bundle = job_of(&module, "montecarlo-away", 80, &["--samples", "4000000"], 2);
    let expected = local_results(&bundle, &module);
    runtime().block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let ws = workers(&dirs[..3]).await;
        let mut events = ws[1].runtime().subscribe();
        let c = client(dirs[3].path(), &ws[0]).await;
        sees_workers(&c, 3).await;
        let blobs = bundle.manifest().blob_ids();
        let mut job = c.submit(bundle).await.unwrap();
        let id = job.id();
        // Leave once a copy of the bundle is held by a worker (the job can then go on without
        // us; `ova job submit` waits for the same).
        let replicated =
            || ws.iter().any(|w| blobs.iter().all(|b| w.runtime().store().has_blob(b).unwrap()));
        tokio::time::timeout(Duration::from_secs(60), async {
            while !replicated() {
                // Wakes on each event, and re-checks the stores at least every 20 ms.
                let _ = tokio::time::timeout(Duration::from_millis(20), job.next_event()).await;
            }
        })
        .await
        .expect("a replicated bundle within 60 s");
        let before = job.progress().await.unwrap();
        c.shutdown().await;
        drop(job);
        drop(c);
        // The job goes on without the submitter: more results are signed meanwhile.
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut n = 0;
            while n < 10 {
                if let Ok(JobEvent::UnitCommitted { .. }) = events.recv().await {
                    n += 1;
                }
            }
        })
        .await
        .expect("work continues while the submitter is away");

        let c = client(dirs[3].path(), &ws[0]).await;
        let mut job = c.job(id).unwrap();
        let summary = wait_all(&mut job, 120).await;
        assert!(before.verified < 80, "it left before the end ({before:?})");
        assert_eq!((summary.verified, summary.failed), (80, 0));
        assert_eq!(records(&job), expected);
        assert!(job.verify().unwrap().problems.is_empty());
        c.shutdown().await;
        for w in ws {
            w.shutdown().await;
        }
    });
}

#[test]
fn bad_jobs_end_with_a_reason() {
    let invalid = ModuleSource::new(b"\0asm\x01\0\0\0 this is not a module".to_vec());
    let trapping = wat(r#"(module (memory (export "memory") 1)
        (func (export "_start") unreachable))"#);
    runtime().block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let ws = workers(&dirs[..3]).await;
        let c = client(dirs[3].path(), &ws[0]).await;
        sees_workers(&c, 3).await;

        let mut job = c.submit(job_of(&invalid, "invalid", 5, &[], 2)).await.unwrap();
        wait_all(&mut job, 60).await;
        for r in records(&job) {
            assert_eq!(r.outcome.kind(), ova_jobs::OutcomeKind::InvalidModule, "{:?}", r.outcome);
        }

        let mut job = c.submit(job_of(&trapping, "trapping", 5, &[], 2)).await.unwrap();
        wait_all(&mut job, 60).await;
        for r in records(&job) {
            assert_eq!(r.outcome.kind(), ova_jobs::OutcomeKind::Trap, "{:?}", r.outcome);
        }

        // Quorum 4 with 3 workers: no unit can be verified; each fails with a reason.
        let module = example("primes");
        let mut job = c.submit(job_of(&module, "too-few", 3, &["--span", "100"], 4)).await.unwrap();
        let mut reasons = Vec::new();
        let waited = tokio::time::timeout(Duration::from_secs(90), async {
            while reasons.len() < 3 {
                match job.next_event().await {
                    Some(JobEvent::UnitFailed { reason, .. }) => reasons.push(reason),
                    Some(_) => {}
                    None => panic!("client stopped"),
                }
            }
        })
        .await;
        assert!(waited.is_ok(), "units fail within 90 s; {reasons:?}, {:?}", job.progress().await);
        assert!(reasons.iter().all(|r| r.contains("quorum")), "{reasons:?}");
        c.shutdown().await;
        for w in ws {
            w.shutdown().await;
        }
    });
}

/// A worker on 127.0.0.1 offering 2 cores whatever the machine's load (an in-process pool),
/// with options changed by `f`.
async fn worker_with(
    dir: &std::path::Path,
    boot: Vec<NodeTicket>,
    f: impl FnOnce(&mut WorkerOptions),
) -> WorkerPeer {
    let mut o = WorkerOptions::loopback(dir, 2).unwrap();
    o.node.bootstrap = boot;
    o.executor = ExecutorChoice::Given(Arc::new(pool(2)));
    f(&mut o);
    WorkerPeer::start(o).await.unwrap()
}

#[test]
fn private_networks_keep_outsiders_out() {
    const SECRET: &str = "correct horse battery staple";
    let module = example("primes");
    runtime().block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let private = |o: &mut WorkerOptions| o.node.network_secret = Some(SECRET.into());
        let a = worker_with(dirs[0].path(), vec![], private).await;
        let boot = vec![a.runtime().node().ticket()];
        let b = worker_with(dirs[1].path(), boot.clone(), private).await;

        // An outsider (no secret) bootstrapping through `a` never sees a peer: every protocol's
        // ALPN differs, so its connections are refused.
        let outsider = client(dirs[2].path(), &a).await;
        let mut changed = outsider.runtime().node().watch_peers();
        let joined = tokio::time::timeout(Duration::from_secs(3), async {
            while outsider.runtime().node().peers().is_empty() {
                changed.changed().await.unwrap();
            }
        })
        .await;
        assert!(joined.is_err(), "an outsider joined a private network");
        assert!(a.runtime().node().peers().iter().all(|p| p.id != outsider.runtime().node().id()));
        outsider.shutdown().await;

        // A member with the secret runs a job on it.
        let config = ClientConfig {
            endpoint: EndpointConfig::loopback(),
            network_secret: Some(SECRET.into()),
            ..ClientConfig::new(dirs[3].path(), boot)
        };
        let member = Client::connect(config).await.unwrap();
        sees_workers(&member, 2).await;
        let mut job = member.submit(primes_job(&module, 10)).await.unwrap();
        assert_eq!(wait_all(&mut job, 60).await.verified, 10);
        member.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

// The picky worker hands every unit of this job back; the open one must take them all up
// (the job's deadline and the wait bound a stall, which the core's tests bound in time).
#[test]
fn allow_lists_pick_submitters() {
    let module = example("primes");
    runtime().block_on(async {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        // Open network: `picky` runs only jobs from a submitter it allows (not this one).
        let open = worker_with(dirs[0].path(), vec![], |_| {}).await;
        let someone_else = iroh::SecretKey::generate().public();
        let boot = vec![open.runtime().node().ticket()];
        let picky = worker_with(dirs[1].path(), boot, |o| {
            o.allowed_submitters = Some(vec![someone_else]);
        })
        .await;
        let c = client(dirs[2].path(), &open).await;
        sees_workers(&c, 2).await;
        let mut bundle = job_of(&module, "not-for-picky", 10, &["--span", "1000"], 1);
        let (mut m, blobs) = bundle.into_parts();
        m.limits.deadline_ms = 5_000;
        bundle = Bundle::new(m, blobs.into_values()).unwrap();
        let mut job = c.submit(bundle).await.unwrap();
        assert_eq!(wait_all(&mut job, 120).await.verified, 10);
        assert_eq!(picky.metrics().units_started.get(), 0, "picky ran a job it does not allow");
        assert!(open.metrics().units_started.get() >= 10);
        c.shutdown().await;
        open.shutdown().await;
        picky.shutdown().await;
    });
}
