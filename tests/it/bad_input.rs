//! Bad input gets the status codes of API.md, and nothing already stored changes: not the
//! stored event, not the store's counters, not what reaches the relay.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use simulator::cluster::Cluster;

struct Post {
    status: u16,
    body: Value,
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> Post {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Post { status, body }
}

#[track_caller]
fn check(answer: &Post, status: u16, error: &str, field: Option<&str>) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"], error, "{}", answer.body);
    assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.body);
    if let Some(field) = field {
        assert_eq!(answer.body["field"], field, "{}", answer.body);
    }
}

fn event(id: &str) -> Value {
    json!({"event_id": id, "kind": "pick", "sku": "SKU-7", "location": "AISLE-2", "qty": 2,
           "attrs": {"order_line": "3"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(&["store-1"]).await.unwrap();
    let node = &cluster.nodes[0];
    let url = node.events_url();
    let first = post(&url, event("good-1").to_string()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let events_url = format!("{}/v1/events/good-1", node.client().base());
    let stored: Value = reqwest::get(&events_url).await.unwrap().json().await.unwrap();
    let before = node.client().node_status().await.unwrap();

    check(&post(&url, r#"{"event_id": "x", "kind": "#).await, 400, "malformed_json", None);
    check(&post(&url, "[1, 2").await, 400, "malformed_json", None);
    let huge = format!(r#"{{"event_id": "big", "pad": "{}"}}"#, "x".repeat(1024 * 1024 + 1));
    check(&post(&url, huge).await, 413, "body_too_large", None);
    let mut typo = event("typo-1");
    typo["colour"] = json!("red");
    check(&post(&url, typo.to_string()).await, 422, "invalid_field", Some("colour"));
    let mut bad_kind = event("kind-1");
    bad_kind["kind"] = json!("teleport");
    check(&post(&url, bad_kind.to_string()).await, 422, "invalid_field", Some("kind"));
    let mut attrs = event("attrs-1");
    attrs["attrs"] = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into();
    check(&post(&url, attrs.to_string()).await, 422, "invalid_field", Some("attrs"));
    let mut missing = event("missing-1");
    missing.as_object_mut().unwrap().remove("sku");
    check(&post(&url, missing.to_string()).await, 422, "invalid_field", Some("sku"));
    let many: Vec<Value> = (0..1001).map(|i| event(&format!("many-{i}"))).collect();
    check(&post(&url, Value::from(many).to_string()).await, 422, "too_many_events", None);
    let mut changed = event("good-1");
    changed["qty"] = json!(5);
    check(&post(&url, changed.to_string()).await, 409, "event_id_conflict", None);

    // In an array, the good entries are stored and the bad ones answered one by one.
    let mixed = json!([event("mixed-1"), {"event_id": "mixed-2", "kind": "nope"}, changed]);
    let answer = post(&url, mixed.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let statuses: Vec<&str> =
        answer.body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "invalid", "conflict"]);

    // Nothing already stored changed, and only the two good events were added.
    let after: Value = reqwest::get(&events_url).await.unwrap().json().await.unwrap();
    assert_eq!(after["event"], stored["event"]);
    assert_eq!(after["seq"], stored["seq"]);
    let now = node.client().node_status().await.unwrap();
    assert_eq!(now.store.events_committed, before.store.events_committed + 1);

    // And the relay ends up with exactly those two.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = cluster.relay.client().log_page(0, 100).await.unwrap();
        let mut ids: Vec<&str> = page.events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        if ids.len() >= 2 {
            assert_eq!(ids, ["good-1", "mixed-1"]);
            break;
        }
        assert!(Instant::now() < deadline, "relay log: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
