//! The runtime end to end: real peers on 127.0.0.1 (in-process), a stand-in executor, a job
//! submitted by a light peer, verified by quorum, results fetched and re-verified.

use std::sync::Arc;
use std::time::Duration;

use ova_jobs::outcome::Outcome;
use ova_jobs::result::ResultRecord;
use ova_jobs::{
    BlobId, Bundle, Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec,
};
use ova_net::endpoint::EndpointConfig;
use ova_net::node::NodeConfig;
use ova_net::runtime::*;
use ova_net::store::Store;
use ova_net::ticket::NodeTicket;

struct Hasher {
    lie: bool,
}
impl UnitRunner for Hasher {
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput> {
        let lie = self.lie;
        Box::pin(async move {
            let mut out = blake3::hash(&req.input).to_hex().to_string().into_bytes();
            if lie {
                out[0] ^= 1;
            }
            RunOutput { record: ResultRecord::of_run(&Outcome::Success, &out) }
        })
    }
}

async fn peer(
    dir: &std::path::Path,
    boot: Vec<NodeTicket>,
    runner: Option<Arc<dyn UnitRunner>>,
) -> Runtime {
    observed_peer(dir, boot, runner, Arc::new(NoObserver)).await
}

/// [`peer`] reporting to `observer`.
async fn observed_peer(
    dir: &std::path::Path,
    boot: Vec<NodeTicket>,
    runner: Option<Arc<dyn UnitRunner>>,
    observer: Arc<dyn Observer>,
) -> Runtime {
    let key = ova_net::identity::load_or_create(dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store.redb")).unwrap());
    let mut cfg = NodeConfig::new(key, EndpointConfig::loopback());
    cfg.bootstrap = boot;
    cfg.local_discovery = false;
    cfg.advert_interval = Duration::from_millis(500);
    let node = spawn_node(cfg, store.clone(), Arc::new(NoObserver)).await.unwrap();
    Runtime::start(node, store, runner, observer, RuntimeConfig { cores: 2, ..Default::default() })
        .unwrap()
}

fn job(n: usize, quorum: u8) -> Bundle {
    let module = b"\0asm\x01\0\0\0".to_vec();
    let inputs: Vec<Vec<u8>> = (0..n).map(|i| format!("unit {i}").into_bytes()).collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        name: "e2e".into(),
        module: BlobId::of(&module),
        units: inputs.iter().map(|i| UnitSpec { input: BlobId::of(i), args: vec![] }).collect(),
        replication: Replication { quorum, max_replicas: 4, result_copies: 1 },
        limits: Limits::default(),
        determinism: Determinism::SameArch,
        priority: 0,
    };
    Bundle::new(m, inputs.into_iter().chain([module])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_verify_a_job() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut peers = Vec::new();
    let mut boot = vec![];
    let inline = Arc::new(Inline::default());
    for d in &dirs[..3] {
        let hasher = Some(Arc::new(Hasher { lie: false }) as Arc<dyn UnitRunner>);
        let p = observed_peer(d.path(), boot.clone(), hasher, inline.clone()).await;
        boot = vec![p.node().ticket()];
        peers.push(p);
    }
    let fetched = Arc::new(Fetched::default());
    let client = observed_peer(dirs[3].path(), boot.clone(), None, fetched.clone()).await;
    // Wait for membership.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client.node().peers().len() >= 3 && peers.iter().all(|p| p.node().peers().len() >= 3)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("membership");
    let b = job(40, 2);
    let expect: Vec<Vec<u8>> =
        (0..40).map(|i| blake3::hash(b.input(i)).to_hex().to_string().into_bytes()).collect();
    let id = client.submit(b.clone()).await.unwrap();
    let mut ev = client.subscribe();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some((t, v, f)) = client.progress(id).await.unwrap()
                && v + f >= t
            {
                return (t, v, f);
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), ev.recv()).await;
        }
    })
    .await;
    let (t, v, f) = done.expect("the job finished within 60 s");
    assert_eq!((t, v, f), (40, 40, 0));
    // Results held: a verified result is stored with the group commit after its event, and
    // `store_writes` moves on once such a commit ends (no polling: without that signal this
    // waits out its 20 s bound and fails).
    let mut writes = client.store_writes();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            writes.borrow_and_update();
            let store = client.store();
            let held = b
                .manifest()
                .unit_ids()
                .iter()
                .filter(|u| {
                    store.verified(u).unwrap().and_then(|r| store.blob(&r).unwrap()).is_some()
                })
                .count();
            if held == 40 {
                break;
            }
            writes.changed().await.expect("the runtime is running");
        }
    })
    .await
    .expect("results fetched");
    for (i, u) in b.manifest().unit_ids().iter().enumerate() {
        let r = client.store().verified(u).unwrap().unwrap();
        let rec = ResultRecord::decode(&client.store().blob(&r).unwrap().unwrap()).unwrap();
        assert_eq!(rec.stdout, expect[i]);
    }
    let rep = verify_job(client.store(), &id).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(rep.verified, 40);
    // Small results come with their executors' commits: (nearly) none is fetched.
    let fetched = fetched.0.load(std::sync::atomic::Ordering::Relaxed);
    let results: usize = b
        .manifest()
        .unit_ids()
        .iter()
        .map(|u| client.store().blob(&client.store().verified(u).unwrap().unwrap()).unwrap())
        .map(|r| r.unwrap().len())
        .sum();
    assert!(fetched < results as u64 / 2, "{fetched} of {results} result bytes fetched");
    // Each result went with the first of its two commits to reach the submitter; the second
    // replica left it out if it had heard of the first (how often depends on timing).
    let (sent, skipped) = inline.totals();
    assert!(sent >= 40, "every unit's result sent by a replica ({sent} sent, {skipped} left out)");
    assert!(sent + skipped >= 80, "both replicas' commits reached the submitter");
    for p in peers {
        p.shutdown().await;
    }
    client.shutdown().await;
}

/// Counts the blob bytes a peer fetched.
#[derive(Default)]
struct Fetched(std::sync::atomic::AtomicU64);
impl Observer for Fetched {
    fn blob_bytes(&self, _sent: u64, received: u64) {
        self.0.fetch_add(received, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts the small results peers sent to the submitter with their commits, and left out.
#[derive(Default)]
struct Inline(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64);
impl Inline {
    fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.0.load(Relaxed), self.1.load(Relaxed))
    }
}
impl Observer for Inline {
    fn inline_results(&self, sent: u64, skipped: u64) {
        self.0.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        self.1.fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts what the runtime reports about commits its core rejected.
#[derive(Default)]
struct Rejections(std::sync::Mutex<Vec<(&'static str, u64)>>);
impl Observer for Rejections {
    fn commits_rejected(&self, reason: &'static str, n: u64) {
        self.0.lock().unwrap().push((reason, n));
    }
}

/// A forged commit (signed by a key that is not its executor's) reaching a peer is rejected by
/// its core and reported to the observer (an operator sees it as
/// `ova_commits_rejected_total{kind="bad_signature"}`), whether or not the peer knows its job;
/// so is every commit of a forged batch ([`Message::Commits`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_commits_are_rejected_and_reported() {
    use ova_scheduler::commit::{CommitBody, Ed25519Signer, sign, sign_batch};
    use ova_scheduler::{ArchClass, CommitBatch, Message, PeerId, UnitRef};
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let seen = Arc::new(Rejections::default());
    let a = {
        let dir = dirs[0].path();
        let key = ova_net::identity::load_or_create(dir).unwrap();
        let store = Arc::new(Store::open(dir.join("store.redb")).unwrap());
        let mut cfg = NodeConfig::new(key, EndpointConfig::loopback());
        cfg.local_discovery = false;
        let node = spawn_node(cfg, store.clone(), Arc::new(NoObserver)).await.unwrap();
        Runtime::start(node, store, None, seen.clone(), RuntimeConfig::default()).unwrap()
    };
    let b = peer(dirs[1].path(), vec![a.node().ticket()], None).await;
    let b_id = PeerId(*b.node().id().as_bytes());
    let forger = Ed25519Signer::from_seed([7; 32]);
    let body = |index| CommitBody {
        unit: UnitRef { job: ova_jobs::JobId([9; 32]), index },
        unit_id: ova_jobs::UnitId([index as u8; 32]),
        result: BlobId([1; 32]),
        executor: b_id,
        arch: ArchClass::X86_64,
    };
    let forged = |index| Message::Commit(Box::new(sign(&forger, body(index)))).encode();
    let batch = sign_batch(&forger, &[body(2), body(3), body(4)]);
    let forged_batch = Message::Commits(Box::new(CommitBatch::pack(batch).remove(0))).encode();
    let frames = vec![forged(0), forged(1), forged_batch];
    tokio::time::timeout(Duration::from_secs(30), b.node().send_batch(a.node().id(), frames))
        .await
        .expect("sent in time")
        .expect("sent");
    // The runtime reports the core's counts about once a second: wait for both, bounded.
    let reported = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n: u64 = seen.0.lock().unwrap().iter().map(|(_, n)| n).sum();
            if n >= 5 {
                return seen.0.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the rejections were reported within 30 s");
    assert!(reported.iter().all(|(reason, _)| *reason == "bad_signature"), "{reported:?}");
    assert_eq!(reported.iter().map(|(_, n)| n).sum::<u64>(), 5);
    b.shutdown().await;
    a.shutdown().await;
}

/// Hashes like [`Hasher`], but only once the gate opens.
struct Gated(tokio::sync::watch::Receiver<bool>);
impl UnitRunner for Gated {
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput> {
        let mut gate = self.0.clone();
        Box::pin(async move {
            gate.wait_for(|open| *open).await.ok();
            Hasher { lie: false }.run(req).await
        })
    }
}

/// Waits (bounded) until `cond` holds, re-checking every 100 ms.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {secs} s"));
}

/// Counts the result fetches the runtime reports as tried again.
#[derive(Default)]
struct Retries(std::sync::atomic::AtomicU64);
impl Observer for Retries {
    fn result_fetches(&self, retried: u64, _abandoned: u64) {
        self.0.fetch_add(retried, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many of `job`'s units `store` holds as verified, and how many of their results.
fn verified_and_held(store: &Store, job: &Bundle) -> (usize, usize) {
    let results: Vec<Option<BlobId>> =
        job.manifest().unit_ids().iter().map(|u| store.verified(u).unwrap()).collect();
    let held = results.iter().flatten().filter(|r| store.blob(r).unwrap().is_some()).count();
    (results.iter().flatten().count(), held)
}

/// Issue #6: a submitter that comes back to its job while the signers of some results are
/// down gets those results once a signer returns. It learns the verdicts from a peer that kept
/// the signed commits but not the results (no copies besides the signers'); its first fetches
/// fail, and it used to never try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_submitter_gets_results_whose_signers_come_back_later() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (open, gate) = tokio::sync::watch::channel(false);
    let runner = || Some(Arc::new(Gated(gate.clone())) as Arc<dyn UnitRunner>);
    let keeper = peer(dirs[0].path(), vec![], runner()).await;
    let boot = vec![keeper.node().ticket()];
    let mut ws = vec![
        peer(dirs[1].path(), boot.clone(), runner()).await,
        peer(dirs[2].path(), boot.clone(), runner()).await,
    ];
    let client = peer(dirs[3].path(), boot.clone(), None).await;
    until(30, "membership", || client.node().peers().len() >= 3).await;
    let mut b = job(30, 2);
    let (mut m, blobs) = b.into_parts();
    m.replication.result_copies = 0;
    b = Bundle::new(m, blobs.into_values()).unwrap();
    let id = client.submit(b.clone()).await.unwrap();
    // Leave once a worker holds the bundle, before any unit has run (the gate is shut).
    let blob_ids = b.manifest().blob_ids();
    until(30, "a replicated bundle", || {
        ws.iter()
            .chain([&keeper])
            .any(|w| blob_ids.iter().all(|id| w.store().has_blob(id).unwrap()))
    })
    .await;
    client.shutdown().await;
    drop(client);
    open.send(true).unwrap();
    // The job completes without the submitter; then two of the three workers stop.
    until(60, "every unit verified at the keeper", || {
        verified_and_held(keeper.store(), &b).0 == 30
    })
    .await;
    for w in ws.drain(..) {
        w.shutdown().await;
    }

    // The submitter returns: the keeper tells it every verdict, but the results signed only by
    // the two stopped workers cannot be fetched yet: their fetches fail and are tried again.
    let retries = Arc::new(Retries::default());
    let client = observed_peer(dirs[3].path(), boot.clone(), None, retries.clone()).await;
    until(60, "every unit verified at the submitter", || {
        verified_and_held(client.store(), &b).0 == 30
    })
    .await;
    until(60, "a failed result fetch tried again", || {
        retries.0.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    let (_, held) = verified_and_held(client.store(), &b);
    assert!(held < 30, "some results were signed only by the stopped workers");

    // One of them comes back: the submitter's retries bring every result.
    let back = peer(dirs[1].path(), boot.clone(), runner()).await;
    until(60, "every result held", || verified_and_held(client.store(), &b).1 == 30).await;
    let rep = verify_job(client.store(), &id).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    for p in [back, keeper, client] {
        p.shutdown().await;
    }
}

/// What a worker persists of the commits it hears: the others' commits that prove a result it
/// keeps (written when the unit is decided), and nothing for a unit it only followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_persist_the_proof_of_results_they_keep_and_nothing_else() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Runtime> = Vec::new();
    let mut boot = vec![];
    for d in &dirs[..3] {
        let p = peer(d.path(), boot.clone(), Some(Arc::new(Hasher { lie: false }))).await;
        boot = vec![p.node().ticket()];
        workers.push(p);
    }
    let client = peer(dirs[3].path(), boot.clone(), None).await;
    until(30, "membership", || {
        client.node().peers().len() >= 3 && workers.iter().all(|w| w.node().peers().len() >= 3)
    })
    .await;
    // No copies besides the signers' and the submitter's: at quorum 2 of 3 workers, each
    // unit has a worker that only follows it.
    let (mut m, blobs) = job(24, 2).into_parts();
    m.replication.result_copies = 0;
    let b = Bundle::new(m, blobs.into_values()).unwrap();
    let units = b.manifest().unit_ids();
    client.submit(b.clone()).await.unwrap();
    let signers_stored = |u: &ova_jobs::UnitId| -> std::collections::BTreeSet<[u8; 32]> {
        workers.iter().flat_map(|w| w.store().commits_for(u).unwrap()).map(|(s, _)| s).collect()
    };
    // Every unit verified at every worker, and its proof stored by the workers that keep it.
    until(60, "every unit's proof stored", || {
        workers.iter().all(|w| verified_and_held(w.store(), &b).0 == units.len())
            && units.iter().all(|u| signers_stored(u).len() >= 2)
    })
    .await;
    let mut followed_only = 0;
    for w in &workers {
        let store = w.store();
        for u in &units {
            let result = store.verified(u).unwrap().expect("verified");
            let commits = store.commits_for(u).unwrap();
            if store.blob(&result).unwrap().is_none() {
                followed_only += 1;
                assert!(
                    commits.is_empty(),
                    "a worker that only followed a unit stores its commits"
                );
            }
        }
    }
    assert!(followed_only > 0, "some unit ran on two of the three workers only");
    for p in workers.into_iter().chain([client]) {
        p.shutdown().await;
    }
}

/// Every peer is both client and server: a worker that submits a job runs some of its units
/// too, and checks the job from its own store afterwards, its own commits included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_submits_and_runs_its_job_verifies_it_from_its_store() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Runtime> = Vec::new();
    let mut boot = vec![];
    for d in &dirs {
        let p = peer(d.path(), boot.clone(), Some(Arc::new(Hasher { lie: false }))).await;
        boot = vec![p.node().ticket()];
        workers.push(p);
    }
    until(30, "membership", || workers.iter().all(|w| w.node().peers().len() >= 2)).await;
    let b = job(24, 2);
    let submitter = &workers[0];
    let id = submitter.submit(b.clone()).await.unwrap();
    until(60, "every unit verified and held at the submitter", || {
        verified_and_held(submitter.store(), &b) == (24, 24)
    })
    .await;
    let rep = verify_job(submitter.store(), &id).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(rep.verified, 24);
    // At quorum 2 on three workers the submitter ran some of its units, so the check above
    // counted its own commits.
    let me = *submitter.node().id().as_bytes();
    let ran = b
        .manifest()
        .unit_ids()
        .iter()
        .filter(|u| submitter.store().commits_for(u).unwrap().iter().any(|(s, _)| *s == me))
        .count();
    assert!(ran > 0, "the submitter ran none of its units");
    for w in workers {
        w.shutdown().await;
    }
}
