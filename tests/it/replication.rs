//! Scenarios 3, 4 and 5 of PRODUCT.md together: scanner retries, a power cut of the node,
//! and the relay going down twice, under concurrent load; at the end every acknowledged
//! event is in the relay log exactly once, in per-lane seq order.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use simulator::check;
use simulator::cluster::Cluster;
use simulator::ledger::Ledger;

use crate::{join_all, scanner_configs, spawn_scanners, wait_for};

const SCANNERS: usize = 8;
const EVENTS_TOTAL: u64 = 20_000;

/// A fault, applied once the scanners have had this many events accepted.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the relay, keep it down for the duration, start it again.
    RelayDown(Duration),
    /// SIGKILL the node and start it again at once.
    NodePowerCut,
}

const FAULTS: [(u64, Fault); 3] = [
    (3_000, Fault::RelayDown(Duration::from_secs(1))),
    (9_000, Fault::NodePowerCut),
    (15_000, Fault::RelayDown(Duration::from_secs(1))),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_reaches_the_relay_exactly_once_through_kills() {
    let started = Instant::now();
    let mut cluster = Cluster::start(&["store-0042"]).await.unwrap();
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let configs =
        scanner_configs(&cluster.nodes[0], "hs", SCANNERS, EVENTS_TOTAL / SCANNERS as u64, 7, |c| {
            c.array_ratio = 0.3;
            c.array_events_max = 25;
            c.duplicate_ratio = 0.05;
            c.conflict_ratio = 0.005;
            c.invalid_ratio = 0.002;
            c.give_up_after = Duration::from_secs(40);
            // Paced so that the faults fall inside the run rather than after it.
            c.pause = Duration::from_millis(10);
        });
    let scanners = spawn_scanners(configs, &ledger, &stop);

    for (at, fault) in FAULTS {
        while ledger.accepted_count() < at && !scanners.iter().all(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let accepted = ledger.accepted_count();
        eprintln!("{:.1}s: {fault:?} at {accepted} accepted events", started.elapsed().as_secs_f64());
        match fault {
            Fault::RelayDown(down) => {
                cluster.relay.kill().unwrap();
                tokio::time::sleep(down).await;
                cluster.relay.start().await.unwrap();
            }
            Fault::NodePowerCut => cluster.node().restart().await.unwrap(),
        }
    }
    join_all(scanners).await;
    let data = ledger.snapshot();
    eprintln!("{:.1}s: scanners done: {}", started.elapsed().as_secs_f64(), data.counts);

    // The node notices a relay killed mid-connection by the restarted relay's stateless
    // reset when it next sends, or else by the QUIC idle timeout (12 s).
    let log = cluster.wait_replicated(&data, Duration::from_secs(40)).await.unwrap();
    let report = check::check(&data, &log);
    eprintln!("{:.1}s: {report}", started.elapsed().as_secs_f64());
    assert!(report.is_ok(), "{report}");

    let counts = data.counts;
    assert_eq!(report.counts.accepted, EVENTS_TOTAL, "every new event is accepted: {counts}");
    assert_eq!(counts.unanswered, 0, "{counts}");
    assert!(counts.duplicates > 0, "re-posts were answered as duplicates: {counts}");
    assert!(counts.conflicts > 0, "conflicting posts were made: {counts}");
    assert!(counts.invalid > 0, "invalid posts were made: {counts}");
    assert_eq!(report.counts.logged, EVENTS_TOTAL, "the relay log holds nothing else");

    let status = cluster.node().client().node_status().await.unwrap();
    assert_eq!(status.backlog_events(), 0);
    let nodes = cluster.relay.client().nodes().await.unwrap();
    let streams: Vec<_> = nodes.nodes.iter().flat_map(|n| &n.streams).collect();
    for lane in ["critical", "standard", "bulk"] {
        let watermark =
            streams.iter().find(|s| s.epoch == status.epoch && s.lane == lane).map(|s| s.watermark);
        let head = status.lanes.get(lane).map(|l| l.head_seq);
        assert_eq!(watermark, head, "relay watermark of {lane} equals the node's head seq");
    }
}

/// The node's bulk lane as `/v1/status` shows it.
async fn bulk_acked(cluster: &Cluster) -> u64 {
    let url = format!("http://{}/v1/status", cluster.nodes[0].http_addr());
    let status: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    status["lanes"]["bulk"]["acked_seq"].as_u64().unwrap()
}

/// Waits until the relay has acknowledged the node's bulk lane through `seq`.
async fn wait_bulk_acked(cluster: &Cluster, seq: u64, what: &str) {
    wait_for(what, Duration::from_secs(30), || async { (bulk_acked(cluster).await >= seq).then_some(()) })
        .await;
}

async fn post_scan(cluster: &Cluster, id: &str) {
    let event =
        serde_json::json!({"event_id": id, "kind": "scan", "sku": "SKU-1", "location": "A-01", "qty": 1});
    let response =
        reqwest::Client::new().post(cluster.nodes[0].events_url()).json(&event).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
}

/// Scenario 5 when the relay comes back from a crash on its data: it answers the packets
/// of the connection it lost with a stateless reset that the node believes (its keys
/// are kept in its data directory), so the node dials again as soon as it sends, instead
/// of after its idle timeout (`node::daemon::IDLE_TIMEOUT`, 12 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_back_from_a_crash_resets_the_old_connection_and_the_node_dials_again_at_once() {
    let mut cluster = Cluster::start(&["store-0043"]).await.unwrap();
    post_scan(&cluster, "before").await;
    wait_bulk_acked(&cluster, 1, "the first event to reach the relay").await;
    cluster.relay.kill().unwrap();
    cluster.relay.start().await.unwrap();

    let posted = Instant::now();
    post_scan(&cluster, "after").await;
    wait_bulk_acked(&cluster, 2, "the event to reach the relay").await;
    let took = posted.elapsed();
    let log = std::fs::read_to_string(cluster.nodes[0].log_path()).unwrap();
    assert!(log.contains("connection lost: reset by peer"), "the node saw no reset:\n{log}");
    assert!(took < node::daemon::IDLE_TIMEOUT / 2, "acknowledged {took:?} after the post");
}

/// A relay that comes back without events the node had acknowledged and then pruned (its
/// store wiped): the node sends again what it still holds, and says why it cannot send
/// the rest, in `/v1/status`, rather than only that the connection was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_what_the_node_pruned_is_told_which_events_cannot_be_resent() {
    let mut cluster = Cluster::prepare().unwrap();
    cluster.relay.start().await.unwrap();
    let args = vec!["--retention".into(), "1s".into()];
    cluster.add_node("store-0044", args).unwrap().start().await.unwrap();
    post_scan(&cluster, "pruned").await;
    wait_bulk_acked(&cluster, 1, "the event to reach the relay").await;
    // Past the retention, a restart prunes it (the node prunes as it starts; stopped
    // cleanly, so its record of the ack is durable).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    cluster.relay.kill().unwrap();
    cluster.nodes[0].terminate(Duration::from_secs(10)).await.unwrap();
    cluster.nodes[0].start().await.unwrap();
    let log = cluster.nodes[0].log_path().to_owned();
    wait_for("the node to prune the event", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log).unwrap().contains("pruned acknowledged events").then_some(())
    })
    .await;

    cluster.relay.wipe_data().unwrap();
    cluster.relay.start().await.unwrap();
    let url = format!("http://{}/v1/status", cluster.nodes[0].http_addr());
    let status = wait_for("the node to say why it cannot resend", Duration::from_secs(30), || async {
        let status: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let error = status["relay"]["last_error"].as_str().unwrap_or_default();
        error.contains("no longer in the store (pruned)").then_some(status)
    })
    .await;
    let error = status["relay"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("lane bulk seqs 1.."), "{error}");
    let regression = status["relay"]["last_regression"].as_str().unwrap_or_default();
    assert!(regression.contains("only through seq 0 but had acknowledged 1"), "{status}");
}
