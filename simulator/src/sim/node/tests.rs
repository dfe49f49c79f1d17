//! Tests of the simulated node store: idempotency and what survives a crash.

use sync_protocol::{Epoch, Event, Kind, Lane};

use super::{Appended, NodeStore};

fn event(id: &str, qty: i64) -> Event {
    Event::new(id.parse().unwrap(), Kind::Ship, "SKU-1".parse().unwrap(), "DOCK-1".parse().unwrap(), qty)
}

#[test]
fn a_repeat_gets_the_original_seq_and_another_payload_is_a_conflict() {
    let mut store = NodeStore::new("node-0".parse().unwrap(), Epoch(1));
    assert_eq!(store.append(&event("a", 1), 0), Appended::Created { lane: Lane::Critical, seq: 1 });
    assert_eq!(store.append(&event("b", 1), 0), Appended::Created { lane: Lane::Critical, seq: 2 });
    assert_eq!(store.append(&event("a", 1), 5), Appended::Duplicate { lane: Lane::Critical, seq: 1 });
    assert_eq!(store.append(&event("a", 2), 5), Appended::Conflict);
    assert_eq!(store.heads().0, [2, 0, 0]);
}

#[test]
fn a_crash_keeps_every_answered_event_and_may_lose_the_acked_watermark() {
    let mut store = NodeStore::new("node-0".parse().unwrap(), Epoch(1));
    store.append(&event("a", 1), 0);
    store.record_acked(Lane::Critical, 1);
    store.append(&event("b", 1), 0);
    store.record_acked(Lane::Critical, 2);
    assert_eq!(store.crash_and_recover(), 1);
    assert_eq!(store.heads().0, [2, 0, 0]);
    // The first ack rode along with the second append's sync; the second was lost.
    assert_eq!(store.acked().0, [1, 0, 0]);
    assert_eq!(store.seq_of(&"b".parse().unwrap()), Some((Lane::Critical, 2)));
    assert_eq!(store.read(Lane::Critical, 2, 1).map(|r| r.len()), Some(1));
    assert!(store.read(Lane::Critical, 2, 2).is_none());
}
