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
