//! Scenario 6 of PRODUCT.md: a node restarted on its data keeps its epoch and its seq
//! numbering; a node whose store is wiped gets a new epoch, and the relay keeps the new
//! epoch's events beside the old ones instead of mistaking them for duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use simulator::check;
use simulator::cluster::{Cluster, REGION};
use simulator::ledger::{Ledger, LedgerData};
use simulator::process::{Node, NodeConfig, TERMINATE_TIMEOUT};

use crate::{join_all, scanner_configs, spawn_scanners};

const EVENTS_PER_ROUND: u64 = 150;

/// Posts a round of events from two scanners named `<prefix>-<i>` and waits for them.
async fn post_round(cluster: &Cluster, ledger: &Arc<Ledger>, prefix: &str, seed: u64) {
    let configs = scanner_configs(&cluster.nodes[0], prefix, 2, EVENTS_PER_ROUND / 2, seed, |c| {
        c.array_ratio = 0.3;
        c.array_events_max = 10;
    });
    join_all(spawn_scanners(configs, ledger, &Arc::new(AtomicBool::new(false)))).await;
}

/// Per lane, the lowest seq the node answered to the events whose id starts with `prefix`.
fn first_seqs(data: &LedgerData, prefix: &str) -> BTreeMap<String, u64> {
    let mut first = BTreeMap::new();
    for (_, _, ack) in data.accepted().filter(|(id, _, _)| id.starts_with(prefix)) {
        let seq = first.entry(ack.lane.clone()).or_insert(u64::MAX);
        *seq = (*seq).min(ack.seq);
    }
    first
}

/// The epochs of every event whose id starts with `prefix`.
fn epochs_of(data: &LedgerData, prefix: &str) -> Vec<String> {
    let mut epochs: Vec<String> = data
        .accepted()
        .filter(|(id, _, _)| id.starts_with(prefix))
        .map(|(_, _, ack)| ack.epoch.clone())
        .collect();
    epochs.sort();
    epochs.dedup();
    epochs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_epoch_and_a_wiped_store_gets_a_new_one() {
    let mut cluster = Cluster::start(&["store-0042"]).await.unwrap();
    let ledger = Arc::new(Ledger::new());
    let first_epoch = cluster.node().client().node_status().await.unwrap().epoch;

    post_round(&cluster, &ledger, "a", 1).await;
    let heads = cluster.node().client().node_status().await.unwrap().lanes;

    // A graceful stop and a power cut both keep the store, so the epoch and the numbering.
    let exit = cluster.node().terminate(TERMINATE_TIMEOUT).await.unwrap();
    assert!(exit.is_some_and(|s| s.success()), "graceful stop exits 0: {exit:?}");
    cluster.node().start().await.unwrap();
    assert_eq!(cluster.node().client().node_status().await.unwrap().epoch, first_epoch);
    cluster.node().restart().await.unwrap();
    let status = cluster.node().client().node_status().await.unwrap();
    assert_eq!(status.epoch, first_epoch, "a restart on the same data keeps the epoch");
    for (lane, lane_status) in &status.lanes {
        assert_eq!(lane_status.head_seq, heads[lane].head_seq, "{lane}: head seq survives restarts");
    }

    post_round(&cluster, &ledger, "b", 2).await;
    let data = ledger.snapshot();
    assert_eq!(epochs_of(&data, "b"), std::slice::from_ref(&first_epoch));
    for (lane, seq) in first_seqs(&data, "b") {
        assert_eq!(seq, heads[&lane].head_seq + 1, "{lane}: numbering continues after the restart");
    }
    cluster.wait_replicated(&data, Duration::from_secs(30)).await.unwrap();

    // A wiped store is a new stream: a new epoch, seqs from 1 again.
    cluster.node().wipe_data().unwrap();
    cluster.node().start().await.unwrap();
    let second_epoch = cluster.node().client().node_status().await.unwrap().epoch;
    assert_ne!(second_epoch, first_epoch, "a wiped store draws a new epoch");

    post_round(&cluster, &ledger, "c", 3).await;
    let data = ledger.snapshot();
    assert_eq!(epochs_of(&data, "c"), std::slice::from_ref(&second_epoch));
    for (lane, seq) in first_seqs(&data, "c") {
        assert_eq!(seq, 1, "{lane}: a new epoch numbers from 1");
    }

    let log = cluster.wait_replicated(&data, Duration::from_secs(30)).await.unwrap();
    let report = check::check(&data, &log);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.counts.accepted, 3 * EVENTS_PER_ROUND);
    assert_eq!(report.counts.logged, 3 * EVENTS_PER_ROUND);

    let mut log_epochs: Vec<&str> = log.iter().map(|e| e.epoch.as_str()).collect();
    log_epochs.sort();
    log_epochs.dedup();
    let mut both = vec![first_epoch.as_str(), second_epoch.as_str()];
    both.sort();
    assert_eq!(log_epochs, both, "the relay log holds both epochs");

    let nodes = cluster.relay.client().nodes().await.unwrap();
    let node = nodes.nodes.iter().find(|n| n.node_id == "store-0042").expect("the relay knows the node");
    for epoch in [&first_epoch, &second_epoch] {
        let streams: Vec<_> = node.streams.iter().filter(|s| &s.epoch == epoch).collect();
        assert!(!streams.is_empty(), "/v1/nodes lists streams of epoch {epoch}: {nodes:?}");
        for s in streams {
            let logged = log.iter().filter(|e| &e.epoch == epoch && e.lane == s.lane).count() as u64;
            assert_eq!(s.watermark, logged, "watermark of {epoch}/{} equals its events in the log", s.lane);
        }
    }
}

/// A data directory belongs to the node that created it: its streams and inventory actor
/// are keyed by that node's id, so a node with another certificate is refused, with the
/// owner's name, and the owner starts on it again with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_certificate_does_not_take_over_a_data_directory() {
    let mut cluster = Cluster::start(&["store-0001"]).await.unwrap();
    let ledger = Arc::new(Ledger::new());
    post_round(&cluster, &ledger, "own", 7).await;
    cluster.node().terminate(TERMINATE_TIMEOUT).await.unwrap();

    let config = NodeConfig {
        node_id: "store-0002".into(),
        data_dir: cluster.node().data_dir().to_owned(),
        log: cluster.dir().join("store-0002-on-0001.log"),
        relays: vec![cluster.relay.quic_addr()],
        ca: cluster.pki.ca.clone(),
        cert: cluster.pki.node("store-0002", REGION).unwrap(),
        extra_args: Vec::new(),
    };
    let mut intruder = Node::new(&cluster.bins.node, config).unwrap();
    let refused = intruder.start().await.unwrap_err().to_string();
    assert!(refused.contains("holds the events of node store-0001"), "{refused}");
    assert!(refused.contains("but this node is store-0002"), "{refused}");

    cluster.node().start().await.unwrap();
    post_round(&cluster, &ledger, "after", 8).await;
    let data = ledger.snapshot();
    assert_eq!(epochs_of(&data, "own"), epochs_of(&data, "after"), "the owner kept its epoch");
    let log = cluster.wait_replicated(&data, Duration::from_secs(30)).await.unwrap();
    let report = check::check(&data, &log);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.counts.logged, 2 * EVENTS_PER_ROUND);
    let nodes = cluster.relay.client().nodes().await.unwrap();
    assert!(nodes.nodes.iter().all(|n| n.node_id == "store-0001"), "nothing under store-0002: {nodes:?}");
}
