//! Tests of the health verdict of `outpost-node status`.

use serde_json::json;

use super::*;

fn status(state: &str, refusals: u64, critical_age_ms: Option<u64>) -> serde_json::Value {
    let lane = |age: Option<u64>| json!({"head_seq": 5, "acked_seq": 2, "backlog_events": 3, "oldest_unacked_age_ms": age});
    json!({
        "relay": {"state": state, "refusals": refusals, "last_error": "refused: certificate of region us-east"},
        "lanes": {"critical": lane(critical_age_ms), "standard": lane(None), "bulk": lane(None)},
    })
}

#[test]
fn a_short_cut_is_healthy_a_long_one_is_not() {
    let limit = Duration::from_secs(300);
    assert!(health_problems(&status("connected", 0, None), limit).is_empty());
    assert!(health_problems(&status("offline", 0, Some(60_000)), limit).is_empty(), "buffering is normal");
    let problems = health_problems(&status("offline", 0, Some(301_000)), limit);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("critical: 3 events unacknowledged, the oldest for 301s"),
        "{problems:?}"
    );
    assert!(problems[0].ends_with("relay offline"), "{problems:?}");
}

#[test]
fn a_refusing_relay_is_unhealthy_until_one_welcomes_the_node() {
    let limit = Duration::from_secs(300);
    let problems = health_problems(&status("offline", 2, None), limit);
    assert_eq!(problems, ["the relay refused this node: refused: certificate of region us-east"]);
    assert!(health_problems(&status("connected", 2, None), limit).is_empty());
}
