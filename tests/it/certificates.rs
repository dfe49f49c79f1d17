//! Nodes the relay must not serve are refused, and the node says why on `/v1/status`
//! and in its log: a certificate from another CA, an expired certificate, a certificate
//! of another region. Refused nodes keep accepting scanners' events, and the relay keeps
//! serving the nodes it should.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use simulator::cluster::{Cluster, REGION};
use simulator::pki::CertPair;
use simulator::process::{Node, NodeConfig};

/// Runs `outpost-relay pki <args>` and insists that it succeeds.
fn pki(cluster: &Cluster, args: &[&str]) {
    let out = Command::new(&cluster.bins.relay).arg("pki").args(args).output().unwrap();
    assert!(out.status.success(), "pki {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pair(dir: &Path, name: &str) -> CertPair {
    CertPair { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

/// Starts a node with `cert` and waits until its status explains the refusal with
/// `expected`; then checks that it still accepts events.
async fn assert_refused(cluster: &Cluster, node_id: &str, cert: CertPair, expected: &str) {
    let mut node = Node::new(
        &cluster.bins.node,
        NodeConfig {
            node_id: node_id.to_owned(),
            data_dir: cluster.dir().join(format!("{node_id}-data")),
            log: cluster.dir().join(format!("{node_id}.log")),
            relays: vec![cluster.relay.quic_addr()],
            ca: cluster.pki.ca.clone(),
            cert,
            extra_args: Vec::new(),
        },
    )
    .unwrap();
    node.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = node.client().node_status().await.unwrap();
        if status.relay.last_error.as_deref().is_some_and(|e| e.contains(expected)) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{node_id}: no {expected:?} in {:?}\n{}",
            status.relay,
            node.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.relay.connects, 0, "{node_id} was welcomed: {:?}", status.relay);
    assert_ne!(status.relay.state, "connected");
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(log.contains(expected), "{node_id}'s log does not say {expected:?}:\n{}", node.log_tail(20));

    // Refused, but still a durable buffer for its scanners.
    let event = json!({"event_id": format!("{node_id}-1"), "kind": "receive", "sku": "SKU-1",
        "location": "DOCK-1", "qty": 3});
    let resp = reqwest::Client::new().post(node.events_url()).json(&event).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let status = node.client().node_status().await.unwrap();
    assert_eq!(status.backlog_events(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_the_relay_must_not_serve_are_refused_and_say_why() {
    let cluster = Cluster::start(&["store-ok"]).await.unwrap();

    let other = cluster.dir().join("other-ca");
    let other_dir = other.to_str().unwrap();
    pki(&cluster, &["init", "--dir", other_dir]);
    pki(&cluster, &["node", "--dir", other_dir, "--node", "store-rogue", "--region", REGION]);
    assert_refused(&cluster, "store-rogue", pair(&other, "store-rogue"), "invalid peer certificate").await;

    let pki_dir = cluster.pki.dir().to_str().unwrap().to_owned();
    pki(
        &cluster,
        &[
            "node",
            "--dir",
            &pki_dir,
            "--node",
            "store-old",
            "--region",
            REGION,
            "--not-after",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert_refused(&cluster, "store-old", pair(cluster.pki.dir(), "store-old"), "expired").await;

    let us = cluster.pki.node("store-us", "us-east").unwrap();
    assert_refused(&cluster, "store-us", us, "refused (wrong_region)").await;

    // The relay serves the node it should, and knows nothing of the others.
    let good = &cluster.nodes[0];
    let event = json!({"event_id": "ok-1", "kind": "ship", "sku": "SKU-1", "location": "DOCK-1", "qty": 1});
    let resp = reqwest::Client::new().post(good.events_url()).json(&event).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = cluster.relay.client().log_page(0, 100).await.unwrap();
        if !page.events.is_empty() {
            let ids: Vec<&str> = page.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, ["ok-1"]);
            break;
        }
        assert!(Instant::now() < deadline, "the good node's event never reached the relay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = cluster.relay.client().nodes().await.unwrap();
    let known: Vec<&str> = nodes.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(known, ["store-ok"]);
}
