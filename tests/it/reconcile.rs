//! Reconciliation end to end (PROTOCOL.md): node and relay agree block by block; a relay
//! that lost records it had acknowledged (planted in its store while it is stopped) is
//! found at the first bad block by `outpost-node reconcile`, and `--repair` makes the
//! node resend the block, after which every record is in the relay log exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use simulator::cluster::Cluster;
use sync_protocol::{Epoch, Lane, NodeId};

use crate::run_tool;

/// Runs `outpost-node reconcile` against the cluster; returns exit code and output.
fn reconcile(cluster: &mut Cluster, extra: &[&str]) -> (i32, String) {
    let relay_http = cluster.relay.http_addr().to_string();
    let http = cluster.node().http_addr().to_string();
    let args =
        [&["reconcile", "--http", &http, "--relay-http", &relay_http, "--lane", "bulk"], extra].concat();
    run_tool(&cluster.bins.node, &args)
}

async fn status(cluster: &mut Cluster) -> Value {
    let url = format!("http://{}/v1/status", cluster.node().http_addr());
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Waits until the node is connected with nothing unacknowledged.
async fn synced(cluster: &mut Cluster) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(cluster).await;
        if s["relay"]["state"] == "connected" && s["lanes"]["bulk"]["backlog_events"] == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "node never caught up: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many times each bulk seq of the node is in the relay log.
async fn log_counts(cluster: &Cluster) -> BTreeMap<u64, usize> {
    let base = format!("http://{}", cluster.relay.http_addr());
    let mut counts = BTreeMap::new();
    let mut from = 0;
    loop {
        let page: Value = reqwest::get(format!("{base}/v1/log?from={from}&limit=10000"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return counts;
        }
        for e in events.iter().filter(|e| e["lane"] == "bulk") {
            *counts.entry(e["seq"].as_u64().unwrap()).or_default() += 1;
        }
        from = page["next"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_the_first_bad_block_and_repairs_it() {
    const EVENTS: u64 = 2_500;
    let mut cluster = Cluster::start(&["store-0071"]).await.unwrap();
    let client = reqwest::Client::new();
    let url = cluster.node().events_url();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"event_id": format!("scan-{i}"), "kind": "scan", "sku": "SKU-1", "location": "A-01", "qty": 1}))
            .collect();
        assert_eq!(client.post(&url).json(&body).send().await.unwrap().status().as_u16(), 200);
    }
    let s = synced(&mut cluster).await;
    assert_eq!(s["lanes"]["bulk"]["acked_seq"], EVENTS);

    let (code, out) = reconcile(&mut cluster, &[]);
    assert_eq!((code, out.as_str()), (0, "bulk: blocks 0-2 match (seq 1-2500)\n"));

    // The relay loses seqs 1100-1199 of block 1 while it is down, watermark untouched.
    let epoch: Epoch = s["epoch"].as_str().unwrap().parse().unwrap();
    let node_id: NodeId = "store-0071".parse().unwrap();
    cluster.relay.terminate(Duration::from_secs(10)).await.unwrap();
    let data = cluster.relay.data_dir().to_owned();
    let lost = cloud_relay::store::lose_records(&data, &node_id, epoch, Lane::Bulk, 1100..=1199).unwrap();
    assert_eq!(lost, 100);
    cluster.relay.start().await.unwrap();
    synced(&mut cluster).await;
    let counts = log_counts(&cluster).await;
    assert_eq!(counts.len() as u64, EVENTS - 100, "the planted loss is in the log");

    let (code, out) = reconcile(&mut cluster, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out,
        "bulk: blocks 0-0 match (seq 1-1024); block 1 (seq 1025-2048) DIFFERS: 1024 records on the node, 924 at the relay\n"
    );

    let (code, out) = reconcile(&mut cluster, &["--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bulk: resent block 1 (seq 1025-2048): 1024 records, the relay added 100, held 924, holds 0 with other contents"), "{out}");
    assert!(out.ends_with("bulk: blocks 0-2 match (seq 1-2500)\n"), "{out}");
    let counts = log_counts(&cluster).await;
    assert_eq!(counts.len() as u64, EVENTS, "every record is back");
    assert!(counts.values().all(|&n| n == 1), "and none twice");

    // Resending a block the relay holds in full adds nothing: idempotent.
    let (code, out) = reconcile(&mut cluster, &["--repair"]);
    assert_eq!((code, out.as_str()), (0, "bulk: blocks 0-2 match (seq 1-2500)\n"));
}
