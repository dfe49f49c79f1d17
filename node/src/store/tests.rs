//! Tests of the node store: group commit, idempotency, acks and pruning.

use std::collections::BTreeMap;

use sync_protocol::Kind;

use super::*;

fn event(id: &str, kind: Kind, qty: i64) -> NewEvent {
    let event = Event {
        event_id: id.parse().unwrap(),
        kind,
        sku: "SKU-1".parse().unwrap(),
        location: "BIN-1".parse().unwrap(),
        qty,
        occurred_at: None,
        device_id: None,
        shipment_id: None,
        order_id: None,
        attrs: BTreeMap::new(),
    };
    NewEvent { lane: kind.default_lane(), event }
}

fn seq_of(o: &Outcome) -> (Lane, u64) {
    match o {
        Outcome::Created(p) | Outcome::Duplicate(p) | Outcome::Conflict(p) => (p.lane, p.seq.get()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_gapless_per_lane_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), || 42).unwrap();
    let out = store
        .append(vec![event("a", Kind::Ship, 1), event("b", Kind::Scan, 0), event("c", Kind::Ship, 2)])
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(seq_of).collect::<Vec<_>>(),
        [(Lane::Critical, 1), (Lane::Bulk, 1), (Lane::Critical, 2)]
    );
    let again = store.append(vec![event("a", Kind::Ship, 1), event("a", Kind::Ship, 9)]).await.unwrap();
    assert!(matches!(again[0], Outcome::Duplicate(p) if p.seq.get() == 1));
    assert!(matches!(again[1], Outcome::Conflict(p) if p.seq.get() == 1));
    let pos = *store.positions().borrow();
    assert_eq!(pos.get(Lane::Critical).head, 2, "duplicates and conflicts take no seq");
    let records = store.read_range(Lane::Critical, Seq::FIRST, 10).unwrap();
    assert_eq!(records.iter().map(|r| r.event.event_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), || 42).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(vec![event(&format!("e{i}"), Kind::Pick, 1)]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let commits = store.stats().commits.load(Ordering::Relaxed);
    let events = store.stats().events.load(Ordering::Relaxed);
    assert_eq!(events, 64);
    assert!(commits < 64, "64 concurrent appends took {commits} commits: no grouping");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_the_epoch_and_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), || 7).unwrap();
    store.append(vec![event("a", Kind::Receive, 5)]).await.unwrap();
    store.record_ack(Lane::Standard, 1).await.unwrap();
    store.close();
    let store = Store::open(dir.path(), || panic!("an existing store draws no new epoch")).unwrap();
    assert_eq!(store.epoch(), Epoch(7));
    assert_eq!(store.positions().borrow().get(Lane::Standard).head, 1);
    assert!(store.get(&"a".parse().unwrap()).unwrap().is_some());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_takes_only_acknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), || 1).unwrap();
    let batch = (0..5).map(|i| event(&format!("p{i}"), Kind::Pick, 1)).collect();
    store.append(batch).await.unwrap();
    store.record_ack(Lane::Standard, 3).await.unwrap();
    let removed = store.prune(u64::MAX).await.unwrap();
    assert_eq!(removed, 3);
    assert!(store.get(&"p2".parse().unwrap()).unwrap().is_none());
    assert!(store.get(&"p3".parse().unwrap()).unwrap().is_some(), "unacked events stay");
    assert_eq!(store.read_range(Lane::Standard, Seq::FIRST, 10).unwrap().len(), 2);
    store.close();
}
