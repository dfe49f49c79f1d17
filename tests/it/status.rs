//! `outpost-node status` as a monitoring check: exit 0 while healthy, 1 once an event has
//! waited too long for the relay, 2 when the node cannot be reached.

use std::time::Duration;

use serde_json::json;
use simulator::cluster::Cluster;

use crate::run_tool;

/// Runs `outpost-node status`; returns the exit code and standard output.
fn status(cluster: &Cluster, http: std::net::SocketAddr, max_age: &str) -> (i32, String) {
    run_tool(&cluster.bins.node, &["status", "--http", &http.to_string(), "--max-unacked-age", max_age])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_by_health() {
    let mut cluster = Cluster::start(&["store-0051"]).await.unwrap();
    let http = cluster.node().http_addr();
    let (code, out) = status(&cluster, http, "1s");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("node store-0051") && out.ends_with("healthy\n"), "{out}");

    // The WAN goes and an event waits: buffering is fine for a while, then unhealthy.
    cluster.relay.terminate(Duration::from_secs(10)).await.unwrap();
    let event = json!({"event_id": "s-1", "kind": "ship", "sku": "SKU-1", "location": "DOCK-1", "qty": 1});
    let resp = reqwest::Client::new().post(cluster.node().events_url()).json(&event).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let (code, out) = status(&cluster, http, "1h");
    assert_eq!(code, 0, "a short cut is not a problem: {out}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (code, out) = status(&cluster, http, "1s");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("UNHEALTHY: critical: 1 events unacknowledged"), "{out}");

    // The node itself is gone.
    cluster.node().terminate(Duration::from_secs(10)).await.unwrap();
    let (code, out) = status(&cluster, http, "1s");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("reaching the node"), "{out}");
}
