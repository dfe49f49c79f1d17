//! Validation of scanner events at and over their limits.

use super::*;

pub(crate) fn sample(event_id: &str, kind: Kind, qty: i64) -> Event {
    Event {
        event_id: event_id.parse().unwrap(),
        kind,
        sku: "SKU-000042".parse().unwrap(),
        location: "DOCK-3".parse().unwrap(),
        qty,
        occurred_at: Some("2026-11-21T10:15:00Z".into()),
        device_id: Some("hs-17".into()),
        shipment_id: None,
        order_id: None,
        attrs: BTreeMap::new(),
    }
}

#[track_caller]
fn check(event: Event, expect: Result<(), &str>) {
    match (event.validate(), expect) {
        (Ok(()), Ok(())) => {}
        (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
        (got, expect) => panic!("got {got:?}, expected {expect:?}"),
    }
}

#[test]
fn qty_rules() {
    check(sample("a", Kind::Ship, 2), Ok(()));
    check(sample("a", Kind::Adjust, -5), Ok(()));
    check(sample("a", Kind::Pick, -1), Err("only adjust takes a negative qty"));
    check(sample("a", Kind::Receive, QTY_ABS_MAX), Ok(()));
    check(sample("a", Kind::Receive, QTY_ABS_MAX + 1), Err("beyond"));
}

#[test]
fn attrs_at_and_over_the_limits() {
    let mut e = sample("a", Kind::Scan, 0);
    e.attrs = (0..ATTRS_MAX).map(|i| (format!("k{i}"), "v".into())).collect();
    check(e.clone(), Ok(()));
    e.attrs.insert("one-more".into(), "v".into());
    check(e, Err("entries is over the maximum of 16"));

    let mut e = sample("a", Kind::Scan, 0);
    e.attrs.insert("k".repeat(ATTR_KEY_BYTES_MAX), "v".repeat(ATTR_VALUE_BYTES_MAX));
    check(e.clone(), Ok(()));
    e.attrs.insert("k".repeat(ATTR_KEY_BYTES_MAX + 1), "v".into());
    check(e, Err("must be 1 to 32 bytes"));

    let mut e = sample("a", Kind::Scan, 0);
    e.attrs.insert("k".into(), "v".repeat(ATTR_VALUE_BYTES_MAX + 1));
    check(e, Err("over the maximum of 256"));
}

#[test]
fn kinds_map_to_lanes() {
    assert_eq!(Kind::Ship.default_lane(), Lane::Critical);
    assert_eq!(Kind::Dispatch.default_lane(), Lane::Critical);
    assert_eq!(Kind::Count.default_lane(), Lane::Standard);
    assert_eq!(Kind::Scan.default_lane(), Lane::Bulk);
    for k in Kind::ALL {
        assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
    }
    assert!("teleport".parse::<Kind>().is_err());
}
