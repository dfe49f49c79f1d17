//! The stored form gives back every record, and is smaller than postcard's.

use sync_protocol::inventory::{Delta, StockKey};
use sync_protocol::{Event, Kind, Record};

use super::{DecodeError, decode, encode_to_vec, unzigzag, zigzag};

fn key(sku: &str, location: &str) -> StockKey {
    StockKey { sku: sku.parse().unwrap(), location: location.parse().unwrap() }
}

fn record(kind: Kind, qty: i64, deltas: Vec<Delta>) -> Record {
    let event = Event::new(
        "scan-0000000042".parse().unwrap(),
        kind,
        "SKU-01234".parse().unwrap(),
        "A-07".parse().unwrap(),
        qty,
    );
    Record { received_at_ms: 1_764_000_000_123, event, deltas }
}

/// A site's events: a scan, a pick, a transfer, and one with every field set.
fn samples() -> Vec<Record> {
    let mut scan = record(Kind::Scan, 1, Vec::new());
    scan.event.device_id = Some("hs-12".into());
    let pick = record(Kind::Pick, 3, vec![Delta { key: key("SKU-01234", "A-07"), change: -3 }]);
    let mut transfer = record(
        Kind::Transfer,
        5,
        vec![
            Delta { key: key("SKU-01234", "A-07"), change: -5 },
            Delta { key: key("SKU-01234", "B-01"), change: 5 },
        ],
    );
    transfer.event.attrs.insert("to_location".into(), "B-01".into());
    let mut full =
        record(Kind::Adjust, -1_000_000_000, vec![Delta { key: key("SKU-9", "Z-9"), change: i64::MIN }]);
    full.event.occurred_at = Some("2026-12-07T07:00:00Z".into());
    full.event.device_id = Some("hs-1".into());
    full.event.shipment_id = Some("shp-é".into());
    full.event.order_id = Some(String::new());
    full.event.attrs.insert("a".into(), "1".into());
    full.event.attrs.insert("b".into(), String::new());
    full.received_at_ms = u64::MAX;
    let mut only_order = record(Kind::Transfer, 0, Vec::new());
    only_order.event.order_id = Some("o-1".into());
    vec![scan, pick, transfer, full, only_order]
}

#[test]
fn every_record_comes_back_as_it_was() {
    for kind in Kind::ALL {
        let plain = record(kind, 2, Vec::new());
        assert_eq!(decode(&encode_to_vec(&plain)).unwrap(), plain, "{kind:?}");
    }
    for sample in samples() {
        assert_eq!(decode(&encode_to_vec(&sample)).unwrap(), sample);
    }
}

#[test]
fn a_sites_events_are_smaller_than_in_postcard() {
    let samples = samples();
    for sample in &samples[..3] {
        let (stored, wire) = (encode_to_vec(sample).len(), postcard::to_allocvec(sample).unwrap().len());
        assert!(stored + 4 <= wire, "{stored} bytes stored against {wire} in postcard: {sample:?}");
    }
    // A pick's delta on its own key costs two bytes, not the key again.
    let (scan, pick) = (encode_to_vec(&samples[0]).len(), encode_to_vec(&samples[1]).len());
    assert_eq!(pick, scan - 6 + 2, "the pick has no device_id (1 + 5 bytes) and one own-key delta");
}

#[test]
fn damaged_bytes_are_an_error_not_a_panic() {
    let good = encode_to_vec(&samples()[3]);
    for len in 0..good.len() {
        assert!(decode(&good[..len]).is_err(), "cut at {len}");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(decode(&longer).is_err(), "a byte after the record");
    let mut bad_tag = encode_to_vec(&samples()[1]);
    let at = bad_tag.len() - 2;
    bad_tag[at] = 3;
    assert_eq!(decode(&bad_tag), Err(DecodeError("bad delta key tag 3".into())));
    let mut bad_text = encode_to_vec(&samples()[0]);
    bad_text[12] = 0xff;
    assert!(decode(&bad_text).is_err(), "an event_id that is not printable ASCII");
    assert!(decode(&[0x80; 16]).is_err(), "a varint that never ends");
}

#[test]
fn zigzag_keeps_every_sign_and_the_ends() {
    for n in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
        assert_eq!(unzigzag(zigzag(n)), n);
    }
    assert_eq!([zigzag(0), zigzag(-1), zigzag(1)], [0, 1, 2]);
}
