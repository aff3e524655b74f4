//! Real nodes on 127.0.0.1: membership convergence, expiry, leave, adverts, direct frames,
//! and a rogue peer. Every wait has a deadline that fails the test; nothing sleeps to
//! synchronise (conditions are awaited on the peer-table watch or polled with a deadline).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use iroh::SecretKey;
use iroh::address_lookup::memory::MemoryLookup;
use iroh::protocol::Router;
use iroh_gossip::Gossip;
use iroh_gossip::api::JoinOptions;
use ova_jobs::wire;
use ova_net::frame::{DirectFrame, FRAME_ALPN};
use ova_net::signed::{GossipBody, SignedEnvelope, seal};
use ova_net::{
    Advert, ArchClass, Capacity, DropReason, EndpointConfig, NetEvent, Node, NodeConfig,
    NodeTicket, endpoint,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// Generous: a loaded 2-core CI machine still finishes well within it.
const DEADLINE: Duration = Duration::from_secs(60);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(network: &str) -> NodeConfig {
    let mut c = NodeConfig::new(SecretKey::generate(), EndpointConfig::loopback());
    c.network = network.to_string();
    c.local_discovery = false;
    c.advert_interval = Duration::from_millis(250);
    c.advert_ttl = Duration::from_millis(2000);
    c.total_cores = 8;
    c.max_broadcast_bytes = 8 << 10;
    c.max_frame_bytes = 64 << 10;
    c
}

fn unique_network(name: &str) -> String {
    format!("{name}-{}", SecretKey::generate().public().fmt_short())
}

/// Waits until `cond` holds for `node`, re-checking whenever its peer table changes.
async fn wait_until(
    node: &Node,
    deadline: Instant,
    what: &str,
    cond: impl Fn(&Node) -> bool,
) -> Result<()> {
    let mut watch = node.watch_peers();
    loop {
        if cond(node) {
            return Ok(());
        }
        match timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("node {} stopped while waiting for {what}", node.id().fmt_short()),
            Err(_) => bail!(
                "timed out waiting for {what} on {} (knows {} peers)",
                node.id().fmt_short(),
                node.peers().len()
            ),
        }
    }
}

/// Nodes `a` and `b` of a fresh network named after `name` (`b` joins through `a`'s ticket),
/// once `b` knows `a`, with `a`'s events; `tweak` adjusts `a`'s configuration first.
async fn pair(
    name: &str,
    deadline: Instant,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Result<(Node, Node, mpsc::Receiver<NetEvent>)> {
    let network = unique_network(name);
    let mut a_cfg = config(&network);
    tweak(&mut a_cfg);
    let a = Node::spawn(a_cfg).await?;
    let mut b_cfg = config(&network);
    b_cfg.bootstrap = vec![a.ticket()];
    let b = Node::spawn(b_cfg).await?;
    wait_until(&b, deadline, "a known to b", |n| n.peers().len() == 1).await?;
    let events_a = a.take_events().context("events")?;
    Ok((a, b, events_a))
}

/// Polls a condition that has no change notification (counters) until a deadline.
async fn poll_until(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The next event matching `pred`, skipping others, before the deadline.
async fn next_event(
    rx: &mut mpsc::Receiver<NetEvent>,
    deadline: Instant,
    what: &str,
    mut pred: impl FnMut(&NetEvent) -> bool,
) -> Result<NetEvent> {
    loop {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return Ok(ev),
            Ok(Some(_)) => {}
            Ok(None) => bail!("events closed while waiting for {what}"),
            Err(_) => bail!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_in_a_chain_converge_then_forget_killed_and_leaving_nodes() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let network = unique_network("chain");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..10u16 {
        let mut c = config(&network);
        c.capacity = Capacity { spare_cores: i % 5, busy_cores: i % 3, queue_len: u32::from(i) };
        if i == 7 {
            // Node 7 leaves cleanly: with a long TTL, only its goodbye can remove it in time.
            c.advert_ttl = Duration::from_secs(600);
        }
        if let Some(prev) = nodes.last() {
            c.bootstrap = vec![prev.ticket()];
        }
        nodes.push(Node::spawn(c).await.context("spawn")?);
    }
    for n in &nodes {
        assert!(endpoint::is_loopback_only(n.endpoint()), "{:?}", n.addr());
    }
    let ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
    for n in &nodes {
        wait_until(n, deadline, "full membership", |n| n.peers().len() == 9).await?;
    }

    // Adverts carry the configured capacity and machine facts.
    let seen = nodes[0].peers();
    for (i, id) in ids.iter().enumerate().skip(1) {
        let p = seen.iter().find(|p| p.id == *id).context("peer missing")?;
        let i = i as u16;
        assert_eq!(
            p.capacity,
            Capacity { spare_cores: i % 5, busy_cores: i % 3, queue_len: u32::from(i) }
        );
        assert_eq!(p.total_cores, 8);
        assert_eq!(p.arch, ArchClass::current());
        assert!(p.addrs.iter().all(|a| a.starts_with("127.0.0.1:")), "{:?}", p.addrs);
    }

    // A capacity change is re-advertised and seen at the far end of the chain.
    let new_cap = Capacity { spare_cores: 6, busy_cores: 2, queue_len: 11 };
    nodes[9].set_capacity(new_cap);
    wait_until(&nodes[0], deadline, "updated capacity", |n| {
        n.peers().iter().any(|p| p.id == ids[9] && p.capacity == new_cap)
    })
    .await?;

    // Direct frame to a peer that was never a bootstrap neighbour (address from its advert).
    let mut events9 = nodes[9].take_events().context("events")?;
    nodes[0].send(ids[9], b"hello nine".to_vec()).await?;
    let ev = next_event(&mut events9, deadline, "direct frame", |e| {
        matches!(e, NetEvent::Direct { .. })
    })
    .await?;
    match ev {
        NetEvent::Direct { from, payload } => {
            assert_eq!(from, ids[0]);
            assert_eq!(&payload[..], b"hello nine");
        }
        _ => unreachable!(),
    }

    // A signed broadcast reaches every node with its author.
    nodes[4].broadcast(b"to everyone".to_vec()).await?;
    let ev = next_event(&mut events9, deadline, "broadcast", |e| {
        matches!(e, NetEvent::Broadcast { .. })
    })
    .await?;
    match ev {
        NetEvent::Broadcast { from, payload } => {
            assert_eq!(from, ids[4]);
            assert_eq!(&payload[..], b"to everyone");
        }
        _ => unreachable!(),
    }

    // Kill node 5 (no goodbye): it expires from every other view.
    nodes[5].kill().await;
    // Node 7 leaves cleanly: everyone forgets it although its advert has a 10-minute TTL.
    nodes[7].shutdown().await;
    for (i, n) in nodes.iter().enumerate() {
        if i == 5 || i == 7 {
            continue;
        }
        wait_until(n, deadline, "killed node 5 gone", |n| !n.knows(&ids[5])).await?;
        wait_until(n, deadline, "leaving node 7 gone", |n| !n.knows(&ids[7])).await?;
        // Departed peers are remembered: nothing is sent to them (a crashed peer would
        // hold a sender until a connect timeout) until they advertise again.
        assert!(n.departed(&ids[5]) && n.departed(&ids[7]), "node {i}");
        let refused = n.send(ids[5], b"anyone there?".to_vec()).await;
        let reason = format!("{:?}", refused.expect_err("a send to a crashed peer fails"));
        assert!(reason.contains("the peer left"), "node {i}: {reason}");
    }
    next_event(
        &mut events9,
        deadline,
        "PeerLeft(7)",
        |e| matches!(e, NetEvent::PeerLeft(id) if *id == ids[7]),
    )
    .await?;
    // The survivors still see each other (node 6 lost both its chain neighbours: the mesh
    // has to heal around it).
    for (i, n) in nodes.iter().enumerate() {
        if i != 5 && i != 7 {
            wait_until(n, deadline, "the 7 other survivors", |n| n.peers().len() == 7)
                .await
                .with_context(|| format!("node {i}"))?;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if i != 5 && i != 7 {
            n.shutdown().await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_hook_joins_nodes_without_bootstrap() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let network = unique_network("hook");
    let a = Node::spawn(config(&network)).await?;
    let b = Node::spawn(config(&network)).await?;
    // What mDNS would report: b "discovers" a.
    b.discovered(a.addr());
    b.discovered(b.addr()); // ourselves: ignored
    wait_until(&a, deadline, "a sees b", |n| n.knows(&b.id())).await?;
    wait_until(&b, deadline, "b sees a", |n| n.knows(&a.id())).await?;
    assert_eq!(b.peers().len(), 1);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// A hand-made envelope, for forging.
fn envelope(author: [u8; 32], body: &GossipBody, signer: Option<&SecretKey>) -> Vec<u8> {
    let body = wire::encode(body);
    let signature = match signer {
        Some(k) => {
            let mut m = b"ova-net gossip body v1\0".to_vec();
            m.extend_from_slice(&body);
            k.sign(&m).to_bytes().to_vec()
        }
        None => vec![],
    };
    wire::encode(&SignedEnvelope { author, body, signature })
}

fn advert(spare: u16, total: u16) -> Advert {
    Advert {
        capacity: Capacity { spare_cores: spare, busy_cores: 0, queue_len: 0 },
        total_cores: total,
        arch: ArchClass::current(),
        sent_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        seq: 1,
        ttl_ms: 60_000,
        addrs: vec![],
        relay: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_peer_is_dropped_and_the_others_keep_working() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let network = unique_network("rogue");
    let a_cfg = config(&network);
    let max_broadcast = a_cfg.max_broadcast_bytes;
    let max_frame = a_cfg.max_frame_bytes;
    let topic = a_cfg.topic();
    let (gossip_alpn, frame_alpn) = (a_cfg.alpn(iroh_gossip::ALPN), a_cfg.alpn(FRAME_ALPN));
    let a = Node::spawn(a_cfg).await?;
    let mut b_cfg = config(&network);
    b_cfg.bootstrap = vec![a.ticket()];
    let b = Node::spawn(b_cfg).await?;
    let mut c_cfg = config(&network);
    c_cfg.bootstrap = vec![b.ticket()];
    let c = Node::spawn(c_cfg).await?;
    for n in [&a, &b, &c] {
        wait_until(n, deadline, "3-node membership", |n| n.peers().len() == 2).await?;
    }
    let mut events_a = a.take_events().context("events")?;

    // The rogue: a bare iroh endpoint speaking gossip (with a huge size limit) and frames.
    let rogue_key = SecretKey::generate();
    let (rogue_ep, rogue_mem): (_, MemoryLookup) =
        endpoint::bind(&EndpointConfig::loopback(), rogue_key.clone(), vec![gossip_alpn.clone()])
            .await?;
    let rogue_gossip =
        Gossip::builder().max_message_size(1 << 20).alpn(&gossip_alpn).spawn(rogue_ep.clone());
    let rogue_router =
        Router::builder(rogue_ep.clone()).accept(gossip_alpn, rogue_gossip.clone()).spawn();
    rogue_mem.add_endpoint_info(a.addr());
    let mut topic_handle =
        rogue_gossip.subscribe_with_opts(topic, JoinOptions::with_bootstrap([a.id()])).await?;
    timeout_at(deadline, topic_handle.joined()).await.context("rogue join timed out")??;
    let (rogue_tx, _rogue_rx) = topic_handle.split();

    let before = a.stats();
    // Garbage, a wrong version byte, and an oversized but gossip-deliverable message.
    rogue_tx.broadcast(b"\x01 this is not an envelope".to_vec().into()).await?;
    rogue_tx.broadcast(b"\x09 wrong version".to_vec().into()).await?;
    let mut big = vec![1u8];
    big.resize(max_broadcast + 100, 0xAB);
    rogue_tx.broadcast(big.into()).await?;
    // Unsigned; forged (claims to be b, signed by the rogue); tampered; invalid advert.
    let body = GossipBody::Advert(advert(4, 8));
    rogue_tx.broadcast(envelope(*rogue_key.public().as_bytes(), &body, None).into()).await?;
    rogue_tx.broadcast(envelope(*b.id().as_bytes(), &body, Some(&rogue_key)).into()).await?;
    let forged_app = GossipBody::App { seq: 1, payload: b"i am b".to_vec() };
    rogue_tx.broadcast(envelope(*b.id().as_bytes(), &forged_app, Some(&rogue_key)).into()).await?;
    rogue_tx.broadcast(seal(&rogue_key, &GossipBody::Advert(advert(99, 8))).into()).await?;

    poll_until(deadline, "gossip drops counted", || {
        let s = a.stats();
        s.dropped(DropReason::Undecodable) >= before.dropped(DropReason::Undecodable) + 2
            && s.dropped(DropReason::Oversize) > before.dropped(DropReason::Oversize)
            && s.dropped(DropReason::Unsigned) > before.dropped(DropReason::Unsigned)
            && s.dropped(DropReason::BadSignature) >= before.dropped(DropReason::BadSignature) + 2
            && s.dropped(DropReason::Invalid) > before.dropped(DropReason::Invalid)
    })
    .await?;

    // Direct frames: a lying length, garbage that fits, and a truncated frame.
    let conn = rogue_ep.connect(a.addr(), &frame_alpn).await?;
    let mut s = conn.open_uni().await?;
    s.write_all(&u32::MAX.to_be_bytes()).await?;
    s.write_all(&[0u8; 64]).await?;
    s.finish()?;
    let mut s = conn.open_uni().await?;
    let junk = b"\x01\xff\xff\xff\xff definitely not a DirectFrame";
    s.write_all(&(junk.len() as u32).to_be_bytes()).await?;
    s.write_all(junk).await?;
    s.finish()?;
    let mut s = conn.open_uni().await?;
    s.write_all(&100u32.to_be_bytes()).await?;
    s.write_all(&[1u8; 10]).await?;
    s.finish()?;
    poll_until(deadline, "frame drops counted", || {
        let s = a.stats();
        s.dropped(DropReason::Oversize) >= before.dropped(DropReason::Oversize) + 2
            && s.dropped(DropReason::Undecodable) >= before.dropped(DropReason::Undecodable) + 3
            && s.dropped(DropReason::Truncated) > before.dropped(DropReason::Truncated)
    })
    .await?;
    // A well-formed frame from the rogue is delivered with the rogue's real id, never b's.
    let mut s = conn.open_uni().await?;
    let ok = wire::encode(&DirectFrame::App(b"rogue says hi".to_vec()));
    assert!(ok.len() < max_frame);
    s.write_all(&(ok.len() as u32).to_be_bytes()).await?;
    s.write_all(&ok).await?;
    s.finish()?;
    let ev = next_event(&mut events_a, deadline, "rogue's direct frame", |e| {
        matches!(e, NetEvent::Direct { .. })
    })
    .await?;
    if let NetEvent::Direct { from, .. } = ev {
        assert_eq!(from, rogue_key.public());
    }

    // Past gossip's own transport limit: gossip drops the rogue's link; we must not care.
    let mut huge = vec![1u8];
    huge.resize(200 << 10, 0xCD);
    rogue_tx.broadcast(huge.into()).await.ok();

    // Nothing the rogue sent became a peer or an event attributed to b.
    assert!(!a.knows(&rogue_key.public()));
    assert_eq!(a.peers().len(), 2);
    // The honest nodes keep working: a broadcast from c and a frame from b reach a.
    c.broadcast(b"still here".to_vec()).await?;
    let ev = next_event(&mut events_a, deadline, "honest broadcast", |e| {
        matches!(e, NetEvent::Broadcast { .. })
    })
    .await?;
    if let NetEvent::Broadcast { from, payload } = ev {
        assert_eq!(from, c.id());
        assert_eq!(&payload[..], b"still here");
    }
    b.send(a.id(), b"direct".to_vec()).await?;
    let ev = next_event(&mut events_a, deadline, "honest frame", |e| {
        matches!(e, NetEvent::Direct { .. })
    })
    .await?;
    if let NetEvent::Direct { from, .. } = ev {
        assert_eq!(from, b.id());
    }
    // Sending over our own caps is refused locally.
    assert!(b.send(a.id(), vec![0; max_frame]).await.is_err());
    assert!(b.broadcast(vec![0; max_broadcast]).await.is_err());

    rogue_router.shutdown().await.ok();
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_frame_arrives_whole_and_in_order() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let (a, b, mut events_a) = pair("batch", deadline, |_| {}).await?;
    let max_frame = a.config().max_frame_bytes;

    // 300 messages of 1 KiB: about five frames' worth. One in the middle is over the frame
    // cap on its own: it is refused, the batch reports the error, and the rest still arrive.
    let mut payloads: Vec<Vec<u8>> =
        (0..300u32).map(|i| [i.to_le_bytes().as_slice(), &[7; 1020]].concat()).collect();
    payloads[150] = vec![0; max_frame];
    let frames_before = b.stats().frames_sent;
    assert!(b.send_batch(a.id(), payloads).await.is_err(), "the oversized message is refused");
    let frames = b.stats().frames_sent - frames_before;
    assert!((5..=10).contains(&frames), "300 small messages packed into {frames} frames");
    for i in (0..300u32).filter(|i| *i != 150) {
        let ev = next_event(&mut events_a, deadline, "batched message", |e| {
            matches!(e, NetEvent::Direct { .. })
        })
        .await?;
        let NetEvent::Direct { from, payload } = ev else { unreachable!() };
        assert_eq!(from, b.id());
        assert_eq!(payload.len(), 1024);
        assert_eq!(payload[..4], i.to_le_bytes(), "messages arrive in the order sent");
    }
    for n in [&a, &b] {
        n.shutdown().await;
    }
    Ok(())
}

/// Direct messages are the protocol's claims, grants and commits: a burst larger than the
/// receiver's events queue waits for room (slowing the sender) instead of being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_events_queue_is_delivered_not_dropped() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let (a, b, mut events_a) = pair("burst", deadline, |c| c.event_capacity = 4).await?;

    // 2,000 small messages, packed into a few frames of hundreds each: far more than the 4
    // events a's queue holds.
    let payloads: Vec<Vec<u8>> = (0..2_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let sender = b.clone();
    let to = a.id();
    let send = tokio::spawn(async move { sender.send_batch(to, payloads).await });
    for i in 0..2_000u32 {
        let ev = next_event(&mut events_a, deadline, "burst message", |e| {
            matches!(e, NetEvent::Direct { .. })
        })
        .await?;
        let NetEvent::Direct { payload, .. } = ev else { unreachable!() };
        assert_eq!(payload[..], i.to_le_bytes(), "messages arrive whole and in order");
    }
    timeout_at(deadline, send).await.context("send_batch finished")???;
    assert_eq!(a.stats().dropped(DropReason::QueueFull), 0, "nothing was dropped");
    for n in [&a, &b] {
        n.shutdown().await;
    }
    Ok(())
}

#[test]
fn ticket_of_a_node_round_trips() {
    let t = NodeTicket {
        id: SecretKey::generate().public(),
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        relay: None,
    };
    assert_eq!(t.to_string().parse::<NodeTicket>().unwrap(), t);
}

/// Peers whose results are computed differently (another engine or WASI host) are different
/// networks: every protocol name and the gossip topic differ, and a connection between them
/// is refused, so their results can never be compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_compute_abi_cannot_connect() -> Result<()> {
    init_tracing();
    let deadline = Instant::now() + DEADLINE;
    let network = unique_network("abi");
    let a_cfg = config(&network);
    let mut other = config(&network);
    other.compute_abi = "wasmtime 99.0.0; ova-wasi-p1 7".into();
    assert_ne!(a_cfg.alpn(FRAME_ALPN), other.alpn(FRAME_ALPN));
    assert_ne!(a_cfg.topic(), other.topic());
    let same = config(&network);
    assert_eq!(a_cfg.alpn(FRAME_ALPN), same.alpn(FRAME_ALPN), "the ALPN is the network's");
    assert_eq!(a_cfg.topic(), same.topic());

    let a = Node::spawn(a_cfg).await?;
    for (cfg, accepted) in [(same, true), (other, false)] {
        let alpn = cfg.alpn(FRAME_ALPN);
        let (ep, mem): (_, MemoryLookup) =
            endpoint::bind(&EndpointConfig::loopback(), SecretKey::generate(), vec![]).await?;
        mem.add_endpoint_info(a.addr());
        let conn = timeout_at(deadline, ep.connect(a.addr(), &alpn)).await?;
        assert_eq!(conn.is_ok(), accepted, "ABI {:?}: {:?}", cfg.compute_abi, conn.err());
        ep.close().await;
    }
    a.shutdown().await;
    Ok(())
}
