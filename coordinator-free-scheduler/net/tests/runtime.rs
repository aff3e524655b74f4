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
    let key = ova_net::identity::load_or_create(dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store.redb")).unwrap());
    let mut cfg = NodeConfig::new(key, EndpointConfig::loopback());
    cfg.bootstrap = boot;
    cfg.local_discovery = false;
    cfg.advert_interval = Duration::from_millis(500);
    let node = spawn_node(cfg, store.clone(), Arc::new(NoObserver)).await.unwrap();
    Runtime::start(
        node,
        store,
        runner,
        Arc::new(NoObserver),
        RuntimeConfig { cores: 2, ..Default::default() },
    )
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
    for d in &dirs[..3] {
        let p = peer(d.path(), boot.clone(), Some(Arc::new(Hasher { lie: false }))).await;
        boot = vec![p.node().ticket()];
        peers.push(p);
    }
    let client = peer(dirs[3].path(), boot.clone(), None).await;
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
    // results held
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
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
            tokio::time::sleep(Duration::from_millis(100)).await;
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
    for p in peers {
        p.shutdown().await;
    }
    client.shutdown().await;
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
/// `ova_commits_rejected_total{kind="bad_signature"}`), whether or not the peer knows its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_commits_are_rejected_and_reported() {
    use ova_scheduler::commit::{CommitBody, Ed25519Signer, sign};
    use ova_scheduler::{ArchClass, Message, PeerId, UnitRef};
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
    let forged = |index| {
        let body = CommitBody {
            unit: UnitRef { job: ova_jobs::JobId([9; 32]), index },
            unit_id: ova_jobs::UnitId([index as u8; 32]),
            result: BlobId([1; 32]),
            executor: b_id,
            arch: ArchClass::X86_64,
        };
        Message::Commit(sign(&forger, body)).encode()
    };
    let frames = vec![forged(0), forged(1)];
    tokio::time::timeout(Duration::from_secs(30), b.node().send_batch(a.node().id(), frames))
        .await
        .expect("sent in time")
        .expect("sent");
    // The runtime reports the core's counts about once a second: wait for both, bounded.
    let reported = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n: u64 = seen.0.lock().unwrap().iter().map(|(_, n)| n).sum();
            if n >= 2 {
                return seen.0.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the rejections were reported within 30 s");
    assert!(reported.iter().all(|(reason, _)| *reason == "bad_signature"), "{reported:?}");
    assert_eq!(reported.iter().map(|(_, n)| n).sum::<u64>(), 2);
    b.shutdown().await;
    a.shutdown().await;
}
