//! Blob transfer between two real nodes on 127.0.0.1: fetches to one peer are gathered into
//! few requests, each answer is checked on its own, and a lying or missing blob fails alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::SecretKey;
use ova_jobs::BlobId;
use ova_net::blobs::{BLOB_ALPN, BlobClient, BlobHandler, BlobSource, FetchError, MAX_PER_REQUEST};
use ova_net::{EndpointConfig, Node, NodeConfig};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `blobs`, except that it answers `lie_about` with other bytes; records the size of
/// every request it serves.
struct Source {
    blobs: Vec<Vec<u8>>,
    lie_about: Option<BlobId>,
    requests: Mutex<Vec<usize>>,
}

impl BlobSource for Source {
    fn get(&self, id: &BlobId) -> Option<Vec<u8>> {
        if Some(*id) == self.lie_about {
            return Some(b"not what you asked for".to_vec());
        }
        self.blobs.iter().find(|b| BlobId::of(b) == *id).cloned()
    }

    fn get_many(&self, ids: &[BlobId]) -> Vec<Option<Vec<u8>>> {
        self.requests.lock().unwrap().push(ids.len());
        ids.iter().map(|id| self.get(id)).collect()
    }
}

fn config(network: &str) -> NodeConfig {
    let mut c = NodeConfig::new(SecretKey::generate(), EndpointConfig::loopback());
    c.network = network.to_string();
    c.local_discovery = false;
    c
}

/// A node serving `source` and a client node that knows its address.
async fn pair(source: Arc<Source>) -> (Node, Node, BlobClient) {
    let network = format!("blobs-{}", SecretKey::generate().public().fmt_short());
    let handler = BlobHandler::new(source, Arc::new(|_| {}));
    let server =
        Node::spawn_with(config(&network), vec![(BLOB_ALPN, Box::new(handler))]).await.unwrap();
    let mut c = config(&network);
    c.bootstrap = vec![server.ticket()];
    let client_node = Node::spawn(c).await.unwrap();
    let client = BlobClient::new(
        client_node.endpoint().clone(),
        &client_node.config().alpn(BLOB_ALPN),
        TIMEOUT,
    );
    (server, client_node, client)
}

/// Starts a fetch of each of `ids` (all queued before any is sent: the test runtime has one
/// thread), then collects the answers in order.
async fn fetch_all(
    client: &BlobClient,
    peer: iroh::EndpointId,
    ids: &[BlobId],
    max: u64,
) -> Vec<Result<Vec<u8>, FetchError>> {
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let client = client.clone();
            tokio::spawn(async move { client.fetch(peer, id, max, TIMEOUT).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn blobs(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("blob number {i}").into_bytes()).collect()
}

#[tokio::test]
async fn many_fetches_to_one_peer_go_in_few_requests_and_each_gets_its_bytes() {
    let data = blobs(150);
    let source =
        Arc::new(Source { blobs: data.clone(), lie_about: None, requests: Mutex::default() });
    let (server, _client_node, client) = pair(source.clone()).await;
    let peer = server.id();
    // One warm-up fetch opens the connection.
    let first = client.fetch(peer, BlobId::of(&data[0]), 1 << 20, TIMEOUT).await.unwrap();
    assert_eq!(first, data[0]);
    // 150 fetches at once, and the same blob asked three more times.
    let mut wanted: Vec<&Vec<u8>> = data.iter().collect();
    wanted.extend([&data[7], &data[7], &data[7]]);
    let ids: Vec<BlobId> = wanted.iter().map(|b| BlobId::of(b)).collect();
    let got = fetch_all(&client, peer, &ids, 1 << 20).await;
    for (want, got) in wanted.iter().zip(got) {
        assert_eq!(&got.unwrap(), *want);
    }
    let requests = source.requests.lock().unwrap().clone();
    // The warm-up, then 150 distinct blobs in requests of at most MAX_PER_REQUEST.
    assert_eq!(requests[0], 1);
    assert_eq!(requests[1..].iter().sum::<usize>(), 150, "each distinct blob asked once");
    assert!(requests.iter().all(|&n| n <= MAX_PER_REQUEST), "{requests:?}");
    assert_eq!(requests.len(), 1 + 150usize.div_ceil(MAX_PER_REQUEST), "{requests:?}");
}

#[tokio::test]
async fn a_missing_or_corrupt_blob_fails_alone_and_limits_hold() {
    let data = blobs(4);
    let liar = BlobId::of(&data[1]);
    let source =
        Arc::new(Source { blobs: data.clone(), lie_about: Some(liar), requests: Mutex::default() });
    let (server, _client_node, client) = pair(source.clone()).await;
    let peer = server.id();
    let missing = BlobId::of(b"nobody has this");
    let ids = [BlobId::of(&data[0]), liar, missing, BlobId::of(&data[2])];
    let got = fetch_all(&client, peer, &ids, 1 << 20).await;
    assert_eq!(got[0].as_ref().unwrap(), &data[0]);
    assert!(matches!(got[1], Err(FetchError::Corrupt(id)) if id == liar), "{:?}", got[1]);
    assert!(matches!(got[2], Err(FetchError::NotFound(id)) if id == missing), "{:?}", got[2]);
    assert_eq!(got[3].as_ref().unwrap(), &data[2]);
    // A blob over the caller's limit is refused, and the connection still serves afterwards.
    let big = client.fetch(peer, BlobId::of(&data[3]), 4, TIMEOUT).await;
    assert!(matches!(big, Err(FetchError::TooLarge { max: 4, .. })), "{big:?}");
    assert_eq!(client.fetch(peer, BlobId::of(&data[3]), 1 << 20, TIMEOUT).await.unwrap(), data[3]);
}

#[tokio::test]
async fn a_fetch_from_a_peer_that_is_gone_ends_with_an_error_not_a_hang() {
    let source = Arc::new(Source { blobs: blobs(1), lie_about: None, requests: Mutex::default() });
    let (server, _client_node, client) = pair(source).await;
    let peer = server.id();
    server.shutdown().await;
    let r = client.fetch(peer, BlobId::of(b"blob number 0"), 1 << 20, Duration::from_secs(3)).await;
    assert!(r.is_err(), "{r:?}");
}
