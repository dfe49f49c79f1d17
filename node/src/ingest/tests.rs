//! Tests of parsing and validating scanners' JSON.

use serde_json::json;

use super::*;

fn good() -> Value {
    json!({"event_id": "hs-17:000123", "kind": "ship", "sku": "SKU-000042", "location": "DOCK-3",
           "qty": 2, "occurred_at": "2026-11-21T10:15:00Z", "device_id": "hs-17",
           "shipment_id": "SHP-9", "order_id": null, "attrs": {"carrier": "dhl"}})
}

#[track_caller]
fn check(edit: impl FnOnce(&mut Map<String, Value>), expect: Result<(), (&str, &str)>) {
    let mut v = good();
    edit(v.as_object_mut().unwrap());
    match (parse_event(v), expect) {
        (Ok(_), Ok(())) => {}
        (Err(IngestError::InvalidField { field, reason }), Err((f, needle))) => {
            assert_eq!(field, f, "{reason}");
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
        (got, expect) => panic!("got {got:?}, expected {expect:?}"),
    }
}

#[test]
fn the_api_example_parses() {
    check(|_| {}, Ok(()));
    check(|m| drop(m.remove("attrs")), Ok(()));
    check(|m| drop(m.insert("occurred_at".into(), json!("2026-11-21T10:15:00.123+02:00"))), Ok(()));
}

#[test]
fn every_field_is_named_when_wrong() {
    check(|m| drop(m.insert("colour".into(), json!("red"))), Err(("colour", "unknown field")));
    check(|m| drop(m.remove("qty")), Err(("qty", "missing")));
    check(|m| drop(m.insert("qty".into(), json!(1.5))), Err(("qty", "not an integer")));
    check(|m| drop(m.insert("kind".into(), json!("teleport"))), Err(("kind", "is not one of")));
    check(|m| drop(m.insert("event_id".into(), json!(""))), Err(("event_id", "must not be empty")));
    check(|m| drop(m.insert("sku".into(), json!(7))), Err(("sku", "not a string")));
    check(|m| drop(m.insert("occurred_at".into(), json!("yesterday"))), Err(("occurred_at", "RFC 3339")));
    check(|m| drop(m.insert("attrs".into(), json!({"n": 1}))), Err(("attrs", "not a string")));
    let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    check(|m| drop(m.insert("attrs".into(), Value::Object(many))), Err(("attrs", "over the maximum of 16")));
}

#[test]
fn whole_body_errors() {
    assert!(matches!(parse_body(b"{not json", 10), Err(IngestError::MalformedJson(_))));
    let array = serde_json::to_vec(&vec![good(); 11]).unwrap();
    assert_eq!(parse_body(&array, 10).unwrap_err(), IngestError::TooManyEvents { count: 11, max: 10 });
    let Posted::Many(items) = parse_body(&serde_json::to_vec(&vec![good(); 10]).unwrap(), 10).unwrap() else {
        panic!("an array is many")
    };
    assert_eq!(items.len(), 10);
    assert_eq!(IngestError::BodyTooLarge { max: 1 }.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// The events of a parse, without the ids kept for naming invalid ones.
fn events_of(posted: Posted) -> Vec<Result<Event, IngestError>> {
    match posted {
        Posted::Single(e) => vec![e],
        Posted::Many(items) => items.into_iter().map(|(_, e)| e).collect(),
    }
}

#[test]
fn the_fast_path_agrees_with_the_tree_or_stands_aside() {
    let mut bodies: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&good()).unwrap(),
        serde_json::to_vec(&vec![good(), good()]).unwrap(),
        format!("  \n{}", good()).into_bytes(),
        br#"{"event_id":"a\"b","kind":"scan","sku":"S\u0031","location":"L","qty":0}"#.to_vec(),
        br#"{"event_id":"a","kind":"scan","sku":"S","location":"L","qty":0,"attrs":null,"device_id":null}"#
            .to_vec(),
        br#"{"event_id":"a","kind":"scan","sku":"S","location":"L","qty":1,"qty":2}"#.to_vec(),
        br#"{"event_id":"a","kind":"scan","sku":"S","location":"L","qty":2.0}"#.to_vec(),
        br#"[]"#.to_vec(),
        br#"[{"event_id":"a"}]"#.to_vec(),
        br#"7"#.to_vec(),
        serde_json::to_vec(&vec![good(); 11]).unwrap(),
    ];
    let edits: [(&str, Value); 6] = [
        ("colour", json!("red")),
        ("qty", json!(-3)),
        ("kind", json!("teleport")),
        ("event_id", json!("")),
        ("occurred_at", json!("yesterday")),
        ("attrs", json!({"n": 1})),
    ];
    for (field, value) in edits {
        let mut bad = good();
        bad[field] = value;
        bodies.push(serde_json::to_vec(&bad).unwrap());
        bodies.push(serde_json::to_vec(&vec![good(), bad]).unwrap());
    }
    for body in bodies {
        let text = String::from_utf8_lossy(&body).into_owned();
        let tree = parse_tree(&body, 10).map(events_of);
        match (fast::parse_body(&body, 10).map(events_of), tree) {
            (Some(fast), Ok(tree)) => assert_eq!(fast, tree, "{text}"),
            (Some(_), Err(e)) => panic!("the fast path took a body the tree refuses ({e}): {text}"),
            // Standing aside is always right (the tree answers), but a body of valid
            // events should not need it; a repeated key is the one valid exception.
            (None, Ok(tree)) => assert!(
                tree.iter().any(Result::is_err) || text.contains(r#""qty":1,"qty":2"#),
                "the fast path stood aside from a valid body: {text}"
            ),
            (None, Err(_)) => {}
        }
    }
}
