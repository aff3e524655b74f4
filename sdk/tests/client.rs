//! The SDK client against real peers on 127.0.0.1: submit, wait, read outputs, verify, and
//! find the results again after the client restarts with the same data directory.

use std::sync::Arc;
use std::time::Duration;

use ova_jobs::outcome::Outcome;
use ova_jobs::result::ResultRecord;
use ova_net::endpoint::EndpointConfig;
use ova_net::node::NodeConfig;
use ova_net::runtime::{
    BoxFuture, NoObserver, RunOutput, RunRequest, Runtime, RuntimeConfig, UnitRunner, spawn_node,
};
use ova_net::store::Store;
use ova_sdk::{Client, ClientConfig, JobBuilder, UnitStatus};

/// Stands in for the wasm executor: the output is the input reversed.
struct Reverse;
impl UnitRunner for Reverse {
    fn run(&self, req: RunRequest) -> BoxFuture<RunOutput> {
        Box::pin(async move {
            let out: Vec<u8> = req.input.iter().rev().copied().collect();
            RunOutput { record: ResultRecord::of_run(&Outcome::Success, &out) }
        })
    }
}

async fn worker(dir: &std::path::Path, boot: Vec<ova_sdk::NodeTicket>) -> Runtime {
    let key = ova_net::identity::load_or_create(dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store.redb")).unwrap());
    let mut cfg = NodeConfig::new(key, EndpointConfig::loopback());
    cfg.bootstrap = boot;
    cfg.local_discovery = false;
    let node = spawn_node(cfg, store.clone(), Arc::new(NoObserver)).await.unwrap();
    let rc = RuntimeConfig { cores: 2, ..Default::default() };
    Runtime::start(node, store, Some(Arc::new(Reverse)), Arc::new(NoObserver), rc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_verify_and_come_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let w1 = worker(dirs[0].path(), vec![]).await;
    let w2 = worker(dirs[1].path(), vec![w1.node().ticket()]).await;
    let config = ClientConfig {
        endpoint: EndpointConfig::loopback(),
        ..ClientConfig::new(dirs[2].path(), vec![w1.node().ticket()])
    };
    let client = Client::connect(config.clone()).await.unwrap();
    let mut peers = client.runtime().node().watch_peers();
    tokio::time::timeout(Duration::from_secs(30), async {
        while client.runtime().node().peers().len() < 2 || w2.node().peers().len() < 2 {
            peers.changed().await.unwrap();
        }
    })
    .await
    .expect("the client sees both workers");

    let bundle = JobBuilder::new("reverse", b"\0asm\x01\0\0\0".to_vec())
        .quorum(2)
        .units((0..12).map(|i| format!("input number {i}")))
        .build()
        .unwrap();
    let mut job = client.submit(bundle).await.unwrap();
    let summary = match job.wait(Duration::from_secs(30)).await {
        Ok(s) => s,
        Err(e) => panic!("{e}: progress {:?}, statuses {:?}", job.progress().await, job.statuses()),
    };
    assert_eq!((summary.units, summary.verified, summary.failed), (12, 12, 0));
    let outputs = job.outputs().unwrap();
    for (i, o) in outputs.iter().enumerate() {
        let want: Vec<u8> = format!("input number {i}").bytes().rev().collect();
        assert_eq!(o.as_deref(), Some(&want[..]), "unit {i}");
    }
    let report = job.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.verified, 12);
    let id = job.id();
    client.shutdown().await;
    drop(job);
    drop(client);

    // The client comes back with the same data directory: the job and its results are there.
    let client = Client::connect(config).await.unwrap();
    let job = client.job(id).unwrap();
    assert!(job.statuses().unwrap().iter().all(|s| matches!(s, UnitStatus::Verified(_))));
    assert_eq!(client.jobs().unwrap().len(), 1);
    assert!(client.verify(id).unwrap().problems.is_empty());
    client.shutdown().await;
    w1.shutdown().await;
    w2.shutdown().await;
}
