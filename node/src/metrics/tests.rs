//! Tests of the node's metrics: names, labels and values as Prometheus reads them.

use std::sync::{Arc, Mutex};

use sync_protocol::{Event, Kind, NodeId};

use super::*;
use crate::replicator::LinkStatus;
use crate::store::NewEvent;

fn event(id: &str, kind: Kind) -> NewEvent {
    let event = Event::new(id.parse().unwrap(), kind, "SKU-1".parse().unwrap(), "BIN-1".parse().unwrap(), 1);
    NewEvent { lane: kind.default_lane(), event }
}

/// The value of the sample `line_start` (a name with its labels), from the text format.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_backlog_commits_and_link_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let node: NodeId = "store-1".parse().unwrap();
    let store = Store::open(dir.path(), node, || 42).unwrap();
    let link = Arc::new(Mutex::new(LinkStatus { connects: 3, ..LinkStatus::default() }));
    let metrics = NodeMetrics::default();
    let registry = metrics.registry(store.clone(), link.clone());

    let posted =
        vec![event("a", Kind::Ship), event("b", Kind::Ship), event("c", Kind::Scan), event("a", Kind::Ship)];
    let lanes: Vec<Lane> = posted.iter().map(|e| e.lane).collect();
    let outcomes = store.append(posted).await.unwrap();
    metrics.count(lanes, &outcomes);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let get = |line: &str| sample(&text, line).unwrap_or_else(|| panic!("no sample {line} in\n{text}"));
    assert_eq!(get(r#"outpost_node_events_total{lane="critical",outcome="created"}"#), 2.0);
    assert_eq!(get(r#"outpost_node_events_total{lane="critical",outcome="duplicate"}"#), 1.0);
    assert_eq!(get(r#"outpost_node_events_total{lane="bulk",outcome="created"}"#), 1.0);
    assert_eq!(get(r#"outpost_node_backlog_events{lane="critical"}"#), 2.0);
    assert_eq!(get(r#"outpost_node_backlog_events{lane="bulk"}"#), 1.0);
    assert_eq!(get(r#"outpost_node_backlog_events{lane="standard"}"#), 0.0);
    assert!(
        get(r#"outpost_node_backlog_bytes{lane="critical"}"#)
            > get(r#"outpost_node_backlog_bytes{lane="bulk"}"#)
    );
    assert!(get(r#"outpost_node_backlog_bytes{lane="bulk"}"#) > 0.0);
    assert_eq!(get(r#"outpost_node_backlog_bytes{lane="standard"}"#), 0.0);
    assert!(get(r#"outpost_node_oldest_unacked_age_seconds{lane="critical"}"#) >= 0.0);
    assert_eq!(get(r#"outpost_node_oldest_unacked_age_seconds{lane="standard"}"#), 0.0);
    assert_eq!(get("outpost_node_events_committed_total"), 3.0);
    assert_eq!(get("outpost_node_commit_seconds_count"), get("outpost_node_commits_total"));
    assert_eq!(get("outpost_node_events_per_commit_sum"), 3.0);
    assert!(get("outpost_node_store_bytes") > 0.0);
    assert_eq!(get("outpost_node_relay_connected"), 0.0);
    assert_eq!(get("outpost_node_relay_connects_total"), 3.0);

    // Levels are read at each scrape.
    link.lock().unwrap().state = LinkState::Connected;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(sample(&text, "outpost_node_relay_connected"), Some(1.0));
    // The registry reads through a handle of the store, which keeps its writer alive.
    drop(registry);
    store.close();
}
