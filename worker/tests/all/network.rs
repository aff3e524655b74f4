//! The wasm executor on the peer network: 3 workers on 127.0.0.1 (in-process nodes) run a real
//! example job submitted by a light peer; every unit is verified by quorum and every verified
//! result equals running the same unit locally.

use std::sync::Arc;
use std::time::Duration;

use ova_jobs::result::ResultRecord;
use ova_jobs::{
    BlobId, Bundle, Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec,
};
use ova_net::endpoint::EndpointConfig;
use ova_net::node::NodeConfig;
use ova_net::runtime::{NoObserver, Runtime, RuntimeConfig, UnitRunner, spawn_node, verify_job};
use ova_net::store::Store;
use ova_net::ticket::NodeTicket;
use ova_worker::runner::ExecutorRunner;
use ova_worker::{ExecutorExt, ModuleSource, UnitRequest};

use crate::common::{example, pool};

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
    let node = spawn_node(cfg, store.clone(), Arc::new(NoObserver)).await.unwrap();
    let rc = RuntimeConfig { cores: 2, ..Default::default() };
    Runtime::start(node, store, runner, Arc::new(NoObserver), rc).unwrap()
}

fn primes_job(module: &Arc<ModuleSource>, units: usize) -> Bundle {
    let bytes = module.bytes().to_vec();
    let inputs: Vec<Vec<u8>> = (0..units).map(|i| i.to_string().into_bytes()).collect();
    let args = vec!["--span".to_string(), "20000".to_string()];
    let m = Manifest {
        version: MANIFEST_VERSION,
        name: "primes".into(),
        module: BlobId::of(&bytes),
        units: inputs
            .iter()
            .map(|i| UnitSpec { input: BlobId::of(i), args: args.clone() })
            .collect(),
        replication: Replication { quorum: 2, max_replicas: 4, result_copies: 1 },
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
    // What each unit gives when run locally.
    let local = pool(2);
    let expected: Vec<ResultRecord> = (0..100)
        .map(|i| {
            let r = local.run_blocking(UnitRequest::from_bundle(&bundle, i, &module));
            assert!(r.outcome.is_success(), "unit {i}: {}", r.outcome);
            ResultRecord::of_run(&r.outcome, &r.stdout).unwrap()
        })
        .collect();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut workers = Vec::new();
        let mut boot = vec![];
        for d in &dirs[..3] {
            let runner: Arc<dyn UnitRunner> = Arc::new(ExecutorRunner::new(Arc::new(pool(2))));
            let w = peer(d.path(), boot.clone(), Some(runner)).await;
            boot = vec![w.node().ticket()];
            workers.push(w);
        }
        let client = peer(dirs[3].path(), boot, None).await;
        let mut seen = client.node().watch_peers();
        tokio::time::timeout(Duration::from_secs(30), async {
            while client.node().peers().len() < 3 {
                seen.changed().await.unwrap();
            }
        })
        .await
        .expect("the submitter sees the three workers");

        let job = client.submit(bundle.clone()).await.unwrap();
        let mut events = client.subscribe();
        let ids = bundle.manifest().unit_ids();
        // Done when every unit is verified and its record is held by the submitter; wakes on
        // each event, and re-checks at least every 500 ms (records arrive without an event).
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let s = client.store();
                let held = ids
                    .iter()
                    .filter(|u| s.verified(u).unwrap().and_then(|r| s.blob(&r).unwrap()).is_some())
                    .count();
                if held == ids.len() {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
            }
        })
        .await
        .expect("every unit verified and fetched within 120 s");

        for (i, u) in ids.iter().enumerate() {
            let s = client.store();
            let r = s.verified(u).unwrap().unwrap();
            let got = ResultRecord::decode(&s.blob(&r).unwrap().unwrap()).unwrap();
            assert_eq!(got, expected[i], "unit {i} differs from the local run");
        }
        let report = verify_job(client.store(), &job).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.verified, 100);
        client.shutdown().await;
        for w in workers {
            w.shutdown().await;
        }
    });
}
