//! Tests of the node store: group commit, idempotency, acks and pruning.

use sync_protocol::Kind;
use sync_protocol::inventory::Delta;

use super::*;

fn event(id: &str, kind: Kind, qty: i64) -> NewEvent {
    let event =
        Event::new(id.parse().unwrap(), kind, "SKU-1".parse().unwrap(), "BIN-1".parse().unwrap(), qty);
    NewEvent { lane: kind.default_lane(), event }
}

fn seq_of(o: &Outcome) -> (Lane, u64) {
    match o {
        Outcome::Created(p) | Outcome::Duplicate(p) | Outcome::Conflict(p) => (p.lane, p.seq.get()),
        Outcome::Invalid { reason, .. } => panic!("invalid: {reason}"),
        Outcome::Shed { lane, .. } => panic!("shed from {lane}"),
    }
}

fn node() -> NodeId {
    "store-1".parse().unwrap()
}

fn key(location: &str) -> StockKey {
    StockKey { sku: "SKU-1".parse().unwrap(), location: location.parse().unwrap() }
}

fn value(store: &Store, location: &str) -> i64 {
    store.with_inventory(|inv| inv.value(&key(location)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_gapless_per_lane_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 42).unwrap();
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
    let store = Store::open(dir.path(), node(), || 42).unwrap();
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
    let store = Store::open(dir.path(), node(), || 7).unwrap();
    store.append(vec![event("a", Kind::Receive, 5)]).await.unwrap();
    store.record_ack(Lane::Standard, 1).await.unwrap();
    store.close();
    let store = Store::open(dir.path(), node(), || panic!("an existing store draws no new epoch")).unwrap();
    assert_eq!(store.epoch(), Epoch(7));
    assert_eq!(store.positions().borrow().get(Lane::Standard).head, 1);
    assert!(store.get(&"a".parse().unwrap()).unwrap().is_some());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_within_one_group_is_recognised_before_its_id_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 42).unwrap();
    let out = store
        .append(vec![event("x", Kind::Ship, 1), event("w", Kind::Scan, 0), event("x", Kind::Ship, 1)])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::Created(p) if p.seq.get() == 1));
    assert!(matches!(out[2], Outcome::Duplicate(p) if p.lane == Lane::Critical && p.seq.get() == 1));
    let conflict = store.append(vec![event("x", Kind::Ship, 3)]).await.unwrap();
    assert!(matches!(conflict[0], Outcome::Conflict(p) if p.seq.get() == 1));
    let (placed, record) = store.get(&"w".parse().unwrap()).unwrap().expect("w is indexed");
    assert_eq!((placed.lane, placed.seq.get(), record.event.kind), (Lane::Bulk, 1, Kind::Scan));
    store.close();
}

/// Rewrites a closed store of this build as an older build left it: a row per record
/// (format 4), records in postcard (format 3), and in format 2 also in one `events` table
/// keyed by `(lane, seq)`.
fn downgrade(path: &Path, format: u64) {
    let db = Database::create(path.join(STORE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        for lane in Lane::ALL {
            let rows: Vec<(u64, Vec<u8>)> = {
                let table = txn.open_table(*RUNS.get(lane)).unwrap();
                let runs = table.iter().unwrap().map(Result::unwrap);
                runs.flat_map(|(first, bytes)| {
                    let entries = run::Entries::new(lane, first.value(), bytes.value());
                    entries.map(|e| e.map(|(seq, stored)| (seq, stored.to_vec()))).collect::<Vec<_>>()
                })
                .map(Result::unwrap)
                .map(|(seq, stored)| match format {
                    4 => (seq, stored),
                    _ => (seq, postcard::to_allocvec(&codec::decode(&stored).unwrap()).unwrap()),
                })
                .collect()
            };
            txn.delete_table(*RUNS.get(lane)).unwrap();
            if format == 2 {
                let mut old = txn.open_table(EVENTS_V2).unwrap();
                for (seq, bytes) in rows {
                    old.insert((lane as u8, seq), bytes.as_slice()).unwrap();
                }
            } else {
                let mut table = txn.open_table(*EVENTS_V4.get(lane)).unwrap();
                let mut lanes = txn.open_table(LANES).unwrap();
                let (head, acked, _) = lanes.get(lane as u8).unwrap().map_or((0, 0, 0), |v| v.value());
                let backlog: usize = rows.iter().filter(|(seq, _)| *seq > acked).map(|(_, b)| b.len()).sum();
                for (seq, bytes) in rows {
                    table.insert(seq, bytes.as_slice()).unwrap();
                }
                lanes.insert(lane as u8, (head, acked, backlog as u64)).unwrap();
            }
        }
        if format < 4 {
            let ids: Vec<(String, u64)> = {
                let table = txn.open_table(IDS).unwrap();
                let rows = table.iter().unwrap().map(Result::unwrap);
                rows.map(|(k, v)| (k.value().to_owned(), v.value())).collect()
            };
            let mut old = txn.open_table(IDS_V3).unwrap();
            for (id, value) in ids {
                let (lane, seq) = placed(value).unwrap();
                old.insert(id.as_str(), (lane as u8, seq)).unwrap();
            }
            txn.delete_table(IDS).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format_version", format).unwrap();
        // Older builds wrote the stock rows with every group, and kept no `stock_through`.
        for lane in Lane::ALL {
            meta.remove(*STOCK_THROUGH.get(lane)).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_formats_2_3_and_4_are_migrated_on_open_with_nothing_lost() {
    for format in [2, 3, 4] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), node(), || 7).unwrap();
        let mut transfer = event("t", Kind::Transfer, 2);
        transfer.event.attrs.insert("to_location".into(), "BIN-2".into());
        let mut events =
            vec![event("a", Kind::Ship, 1), event("b", Kind::Receive, 4), event("c", Kind::Scan, 0)];
        events.extend([transfer, event("d", Kind::Ship, 1)]);
        store.append(events.clone()).await.unwrap();
        store.record_ack(Lane::Critical, 1).await.unwrap();
        store.append(vec![event("e", Kind::Pick, 1)]).await.unwrap();
        // More scans than one chunk of the migration, so it takes several, and than one
        // run holds.
        let scans = (0..MIGRATION_CHUNK + 3).map(|n| event(&format!("s{n}"), Kind::Scan, 0)).collect();
        store.append(scans).await.unwrap();
        let (positions, records) = (*store.positions().borrow(), all_records(&store));
        let bins = |store: &Store| ["BIN-1", "BIN-2"].map(|bin| value(store, bin));
        let stock = bins(&store);
        store.close();
        downgrade(dir.path(), format);

        let store =
            Store::open(dir.path(), node(), || panic!("an existing store draws no new epoch")).unwrap();
        assert_eq!(all_records(&store), records, "format {format}: every record, as it was");
        assert_eq!(*store.positions().borrow(), positions, "format {format}: heads, acks and backlog bytes");
        assert_eq!(bins(&store), stock, "format {format}: the inventory, nothing applied twice");
        let again = store.append(events).await.unwrap();
        assert!(again.iter().all(|o| matches!(o, Outcome::Duplicate(_))), "format {format}: {again:?}");
        store.close();
        let db = Database::open(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let version = txn.open_table(META).unwrap().get("format_version").unwrap().unwrap().value();
        assert_eq!(version, FORMAT_VERSION);
        assert!(txn.open_table(EVENTS_V2).is_err(), "format 2's table is gone");
        assert!(txn.open_table(IDS_V3).is_err(), "format 3's id index is gone");
        for lane in Lane::ALL {
            assert!(txn.open_table(*EVENTS_V4.get(lane)).is_err(), "format 4's {lane} table is gone");
        }
    }
}

#[test]
fn the_id_index_places_every_lane_and_seq_up_to_the_last() {
    for lane in Lane::ALL {
        for seq in [1, 2, 1 << 32, SEQ_MAX] {
            assert_eq!(placed(place(lane, seq)).unwrap(), (lane, seq));
        }
    }
    assert!(placed(3 << 62).is_err(), "no fourth lane");
}

/// Every record of every lane, in lane and seq order.
fn all_records(store: &Store) -> Vec<Record> {
    let lanes = Lane::ALL.into_iter();
    lanes.flat_map(|lane| store.read_range(lane, Seq::FIRST, 100_000).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_takes_only_acknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 1).unwrap();
    let batch = (0..5).map(|i| event(&format!("p{i}"), Kind::Pick, 1)).collect();
    store.append(batch).await.unwrap();
    store.record_ack(Lane::Standard, 3).await.unwrap();
    let removed = store.prune(u64::MAX).await.unwrap();
    assert_eq!(removed, 3);
    assert!(store.get(&"p2".parse().unwrap()).unwrap().is_none());
    assert!(store.get(&"p3".parse().unwrap()).unwrap().is_some(), "unacked events stay");
    assert_eq!(store.read_range(Lane::Standard, Seq::FIRST, 10).unwrap().len(), 2);
    // The five were one run: the prune cut it, and the rest stays where it was.
    store.append(vec![event("p5", Kind::Pick, 1)]).await.unwrap();
    store.close();
    let store = Store::open(dir.path(), node(), || panic!("reopened")).unwrap();
    let ids =
        |records: Vec<Record>| records.into_iter().map(|r| r.event.event_id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(store.read_range(Lane::Standard, Seq::FIRST, 10).unwrap()), ["p3", "p4", "p5"]);
    assert_eq!(ids(store.read_range(Lane::Standard, Seq::new(5).unwrap(), 10).unwrap()), ["p4", "p5"]);
    let again = store.append(vec![event("p3", Kind::Pick, 1), event("p4", Kind::Pick, 1)]).await.unwrap();
    assert_eq!(again.iter().map(seq_of).collect::<Vec<_>>(), [(Lane::Standard, 4), (Lane::Standard, 5)]);
    assert!(again.iter().all(|o| matches!(o, Outcome::Duplicate(_))), "{again:?}");
    assert!(store.oldest_unacked_ms(Lane::Standard).unwrap().is_some(), "p5 is not acknowledged");
    // The pruned ids went with their records: p0 is new again.
    let again = store.append(vec![event("p0", Kind::Pick, 1)]).await.unwrap();
    assert!(matches!(again[0], Outcome::Created(p) if p.seq.get() == 7), "{again:?}");
    store.record_ack(Lane::Standard, 7).await.unwrap();
    assert_eq!(store.prune(u64::MAX).await.unwrap(), 4);
    assert!(store.read_range(Lane::Standard, Seq::FIRST, 10).unwrap().is_empty());
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_deltas_move_the_inventory_with_the_append_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 5).unwrap();
    let mut transfer = event("t", Kind::Transfer, 4);
    transfer.event.attrs.insert("to_location".into(), "BIN-2".into());
    let out = store
        .append(vec![
            event("r", Kind::Receive, 10),
            event("p", Kind::Pick, 3),
            transfer,
            event("s", Kind::Scan, 1),
        ])
        .await
        .unwrap();
    assert!(out.iter().all(|o| matches!(o, Outcome::Created(_))), "{out:?}");
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2")), (3, 4));
    // A count is stored as its variance against the view at that moment.
    store.append(vec![event("c", Kind::Count, 5)]).await.unwrap();
    assert_eq!(value(&store, "BIN-1"), 5);
    let (_, record) = store.get(&"c".parse().unwrap()).unwrap().unwrap();
    assert_eq!(record.deltas.iter().map(|d| d.change).collect::<Vec<_>>(), [2]);
    // A repeat changes nothing.
    store.append(vec![event("r", Kind::Receive, 10)]).await.unwrap();
    assert_eq!(value(&store, "BIN-1"), 5);
    store.close();

    let store = Store::open(dir.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2")), (5, 4));
    let contributions: Vec<_> = store.with_inventory(|inv| {
        inv.stock(&key("BIN-1")).unwrap().contributions().map(|(a, v)| (a.clone(), v)).collect()
    });
    assert_eq!(contributions, [(store.actor().clone(), Some(5))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_without_a_destination_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 5).unwrap();
    let out = store.append(vec![event("t", Kind::Transfer, 4), event("r", Kind::Receive, 1)]).await.unwrap();
    assert!(matches!(&out[0], Outcome::Invalid { field: "attrs", .. }), "{out:?}");
    assert!(matches!(&out[1], Outcome::Created(p) if p.seq == Seq::FIRST), "{out:?}");
    assert_eq!(value(&store, "BIN-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_would_overflow_a_counter_moves_none_of_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 5).unwrap();
    // The relay hands back this node's own counter at BIN-1 at the top of its range.
    let mut full = Inventory::new();
    full.apply(store.actor(), &Delta { key: key("BIN-1"), change: i64::MAX }).unwrap();
    store.merge_inventory(InventoryUpdate { through_version: 1, state: full, complete: true }).await.unwrap();
    let mut transfer = event("t", Kind::Transfer, 2);
    transfer.event.attrs.insert("to_location".into(), "BIN-1".into());
    transfer.event.location = "BIN-2".parse().unwrap();
    let mut receive = event("r", Kind::Receive, 3);
    receive.event.location = "BIN-2".parse().unwrap();
    let out = store.append(vec![transfer, event("over", Kind::Receive, 1), receive]).await.unwrap();
    assert!(matches!(&out[0], Outcome::Invalid { field: "qty", .. }), "{out:?}");
    assert!(matches!(&out[1], Outcome::Invalid { field: "qty", .. }), "{out:?}");
    assert!(matches!(&out[2], Outcome::Created(p) if p.seq == Seq::FIRST), "{out:?}");
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2")), (i64::MAX, 3), "the transfer took nothing");
    store.close();
    let store = Store::open(dir.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2")), (i64::MAX, 3));
}

#[test]
fn a_group_finds_its_stored_ids_in_one_walk_as_lookups_would() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("ids.redb")).unwrap();
    // Three devices with counters, gaps between their ids, and ids sorting between them.
    let stored: Vec<String> = (0..3)
        .flat_map(|d| (0..50).filter(move |n| n % 7 != 3).map(move |n| format!("hs-{d}:{n:04}")))
        .chain(["hs-0:9999x".to_owned(), "a".to_owned(), "zz".to_owned()])
        .collect();
    let txn = db.begin_write().unwrap();
    {
        let mut ids = txn.open_table(IDS).unwrap();
        for (at, id) in stored.iter().enumerate() {
            ids.insert(id.as_str(), at as u64).unwrap();
        }
    }
    txn.commit().unwrap();
    let txn = db.begin_write().unwrap();
    let ids = txn.open_table(IDS).unwrap();
    let mut state = 7u64;
    for round in 0..200 {
        // Ids stored and new, in any order, repeated, across several appends.
        let mut ops = Vec::new();
        for _ in 0..1 + round % 4 {
            let batch: Vec<NewEvent> = (0..round % 40)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let id = match state >> 61 {
                        0 => stored[(state >> 20) as usize % stored.len()].clone(),
                        1 => "b".to_owned(),
                        n => format!("hs-{}:{:04}", n % 4, (state >> 20) % 60),
                    };
                    event(&id, Kind::Scan, 0)
                })
                .collect();
            ops.push(Op::Append(batch));
        }
        ops.push(Op::RecordAck { lane: Lane::Bulk, through: 0 });
        let found = stored_ids(&ids, &ops).unwrap();
        let mut looked_up = BTreeMap::new();
        for op in &ops {
            if let Op::Append(batch) = op {
                for new in batch {
                    let id = new.event.event_id.as_str();
                    if let Some(value) = ids.get(id).unwrap() {
                        looked_up.insert(id.to_owned(), value.value());
                    }
                }
            }
        }
        assert_eq!(found, looked_up, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_inventory_and_its_version_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 5).unwrap();
    store.append(vec![event("r", Kind::Receive, 10)]).await.unwrap();
    let other = Actor { node_id: "store-2".parse().unwrap(), epoch: Epoch(9) };
    let mut theirs = Inventory::new();
    theirs.apply(&other, &sync_protocol::inventory::Delta { key: key("BIN-1"), change: -4 }).unwrap();
    let partial = InventoryUpdate { through_version: 17, state: theirs.clone(), complete: false };
    store.merge_inventory(partial).await.unwrap();
    assert_eq!(value(&store, "BIN-1"), 6);
    assert_eq!(store.inventory_version(), 0, "only a complete update moves the version");
    store
        .merge_inventory(InventoryUpdate { through_version: 17, state: theirs, complete: true })
        .await
        .unwrap();
    assert_eq!((value(&store, "BIN-1"), store.inventory_version()), (6, 17), "merging again changes nothing");
    // A merge writes its rows, holding this node's own counter as it stands, so a crash
    // applies no delta twice.
    store.append(vec![event("r2", Kind::Receive, 1)]).await.unwrap();
    let crashed = crash_copy(dir.path());
    store.close();
    let store = Store::open(dir.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), store.inventory_version()), (7, 17));
    store.close();
    let store = Store::open(crashed.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), store.inventory_version()), (7, 17));
    // The node's own count now sees the merged value.
    store.append(vec![event("c", Kind::Count, 7)]).await.unwrap();
    let (_, record) = store.get(&"c".parse().unwrap()).unwrap().unwrap();
    assert!(record.deltas.is_empty(), "a count that matches the merged view changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_digests_follow_appends_and_outlive_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 42).unwrap();
    store.append(vec![event("a", Kind::Ship, 1), event("b", Kind::Ship, 2)]).await.unwrap();
    store.append(vec![event("c", Kind::Ship, 3), event("a", Kind::Ship, 1)]).await.unwrap();
    let records = store.read_range(Lane::Critical, Seq::FIRST, 10).unwrap();
    let mut expected = BlockDigest::default();
    for (seq, record) in (1..).zip(&records) {
        expected.add(&BlockDigest::of(Lane::Critical, seq, record).unwrap());
    }
    let (pos, digests) = store.digests(Lane::Critical, 0, 10).unwrap();
    assert_eq!((pos.head, pos.acked), (3, 0));
    let stored: u64 = records.iter().map(|r| codec::encode_to_vec(r).len() as u64).sum();
    assert_eq!(pos.backlog_bytes, stored, "the backlog's bytes are its stored records'");
    assert_eq!(digests, [(0, expected)], "a duplicate adds nothing");
    assert!(store.digests(Lane::Bulk, 0, 10).unwrap().1.is_empty());

    store.record_ack(Lane::Critical, 2).await.unwrap();
    // Acks are queued without an answer; a prune of nothing answers once they are in.
    assert_eq!(store.prune(0).await.unwrap(), 0);
    let last = codec::encode_to_vec(&records[2]).len() as u64;
    assert_eq!(store.positions().borrow().get(Lane::Critical).backlog_bytes, last);
    store.record_ack(Lane::Critical, 3).await.unwrap();
    assert_eq!(store.prune(0).await.unwrap(), 0);
    assert_eq!(store.positions().borrow().get(Lane::Critical).backlog_bytes, 0);
    assert_eq!(store.prune(u64::MAX).await.unwrap(), 3);
    assert!(store.read_range(Lane::Critical, Seq::FIRST, 10).unwrap().is_empty());
    let (pos, digests) = store.digests(Lane::Critical, 0, 10).unwrap();
    assert_eq!((pos.head, pos.acked, digests), (3, 3, vec![(0, expected)]), "kept after pruning");
    store.close();
}

/// Appends `count` events of `kind` with ids `{prefix}-{n}`; how many were shed.
async fn append_many(store: &Store, prefix: &str, kind: Kind, first: usize, count: usize) -> usize {
    let batch = (first..first + count).map(|n| event(&format!("{prefix}-{n}"), kind, 0)).collect();
    let out = store.append(batch).await.unwrap();
    out.iter().filter(|o| matches!(o, Outcome::Shed { .. })).count()
}

/// A store whose quota leaves `room` bytes above what a new store occupies.
fn store_with_room(dir: &Path, room: u64) -> Store {
    let fresh = Store::open_with_quota(dir, node(), || 3, Quota { bytes: u64::MAX }).unwrap();
    let used = fresh.health().used_bytes;
    fresh.close();
    Store::open_with_quota(dir, node(), || panic!("reopened"), Quota { bytes: used + room }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_sheds_bulk_then_standard_and_takes_critical_until_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_room(dir.path(), 3 << 20);
    let quota = store.quota();
    const BATCH: usize = 200;
    // One commit of BATCH events occupies far less than this.
    const ONE_COMMIT_BYTES: u64 = 1 << 20;
    let mut posted = 0;
    while append_many(&store, "scan", Kind::Scan, posted, BATCH).await == 0 {
        posted += BATCH;
        assert!(posted < 1_000_000, "bulk never shed: {:?}", store.health());
    }
    assert!(store.health().used_bytes >= quota.mark(Lane::Bulk));
    assert_eq!(
        append_many(&store, "pick", Kind::Pick, 0, 10).await,
        0,
        "standard is taken above the bulk mark"
    );
    let mut standard = 10;
    while append_many(&store, "pick", Kind::Pick, standard, BATCH).await == 0 {
        standard += BATCH;
        assert!(standard < 1_000_000);
    }
    assert!(store.health().used_bytes >= quota.mark(Lane::Standard));
    let mut critical = 0;
    while append_many(&store, "ship", Kind::Ship, critical, BATCH).await == 0 {
        critical += BATCH;
        assert!(critical < 1_000_000);
        assert!(store.health().used_bytes < quota.bytes + ONE_COMMIT_BYTES);
    }
    let used = store.health().used_bytes;
    assert!(used >= quota.bytes && used < quota.bytes + ONE_COMMIT_BYTES, "{used} vs quota {}", quota.bytes);
    // A repeat needs no room: it is answered from the store.
    let again = store.append(vec![event("ship-0", Kind::Ship, 0)]).await.unwrap();
    assert!(matches!(again[0], Outcome::Duplicate(_)), "{again:?}");
    let heads = *store.positions().borrow();
    assert!(heads.get(Lane::Critical).head > 0 && heads.get(Lane::Bulk).head == posted as u64);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_make_room_under_pressure_and_unacknowledged_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_room(dir.path(), 3 << 20);
    let mut posted = 0;
    while append_many(&store, "scan", Kind::Scan, posted, 500).await == 0 {
        posted += 500;
    }
    // Nothing is acknowledged: pressure prunes nothing.
    append_many(&store, "ship", Kind::Ship, 0, 1).await;
    assert_eq!(store.health().pruned_under_pressure, 0);
    assert_eq!(store.read_range(Lane::Bulk, Seq::FIRST, 1).unwrap().len(), 1);
    // The relay acknowledges all but the last bulk event, and retention ends at once.
    store.set_retention(std::time::Duration::ZERO);
    let head = store.positions().borrow().get(Lane::Bulk).head;
    store.record_ack(Lane::Bulk, head - 1).await.unwrap();
    let mut rounds = 0;
    while append_many(&store, "scan-after", Kind::Scan, rounds, 1).await > 0 {
        rounds += 1;
        assert!(rounds < 100, "bulk never accepted again: {:?}", store.health());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health = store.health();
    assert!(health.pruned_under_pressure > 0 && health.compactions > 0, "{health:?}");
    assert!(store.quota().admits(Lane::Bulk, health.used_bytes), "{health:?}");
    let kept = store.read_range(Lane::Bulk, Seq::new(head).unwrap(), 1).unwrap();
    assert_eq!(kept.len(), 1, "the unacknowledged event stays");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_longer_than_a_run_reads_back_from_every_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 3).unwrap();
    let total = 1_100;
    let scans: Vec<_> = (0..total).map(|n| event(&format!("s{n:05}"), Kind::Scan, 0)).collect();
    store.append(scans).await.unwrap();
    store.close();
    let store = Store::open(dir.path(), node(), || panic!("reopened")).unwrap();
    let all = store.read_range(Lane::Bulk, Seq::FIRST, u32::MAX).unwrap();
    let ids: Vec<String> = all.iter().map(|r| r.event.event_id.to_string()).collect();
    assert_eq!(ids, (0..total).map(|n| format!("s{n:05}")).collect::<Vec<_>>());
    for first in 1..=total as u64 + 1 {
        for count in [1, 2, 600] {
            let got = store.read_range(Lane::Bulk, Seq::new(first).unwrap(), count).unwrap();
            let from = (first - 1) as usize;
            let want = &all[from.min(total)..(from + count as usize).min(total)];
            assert_eq!(got, want, "from {first}, {count} records");
        }
    }
    for (n, stored) in all.iter().enumerate() {
        let (placed, record) = store.get(&format!("s{n:05}").parse().unwrap()).unwrap().unwrap();
        assert_eq!((placed.seq.get(), &record), (n as u64 + 1, stored));
    }
    store.close();
}

#[test]
fn format_4_rows_become_runs_that_end_at_gaps_and_at_the_longest_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("v4.redb")).unwrap();
    // A pruned start, then many runs' worth, a gap, a few more, and one record longer
    // than a run.
    let seqs: Vec<u64> = (3..=1_100).chain(1_200..=1_207).collect();
    let bytes = |seq: u64| match seq {
        1_206 => vec![6; run::RUN_BYTES_MAX + 100],
        _ => seq.to_le_bytes()[..1 + (seq % 7) as usize].to_vec(),
    };
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(*EVENTS_V4.get(Lane::Bulk)).unwrap();
        for &seq in &seqs {
            table.insert(seq, bytes(seq).as_slice()).unwrap();
        }
    }
    assert_eq!(migrate_runs_from_v4(&txn).unwrap(), seqs.len() as u64);
    let table = txn.open_table(*RUNS.get(Lane::Bulk)).unwrap();
    let rows: Vec<(u64, usize)> =
        table.iter().unwrap().map(Result::unwrap).map(|(k, v)| (k.value(), v.value().len())).collect();
    let firsts: Vec<u64> = rows.iter().map(|(first, _)| *first).collect();
    assert_eq!(firsts.first(), Some(&3));
    assert!(firsts.contains(&1_200), "a run ends at the gap: {firsts:?}");
    assert!(firsts.ends_with(&[1_206, 1_207]), "the long record is a run of its own: {firsts:?}");
    for &(first, len) in &rows {
        assert!(len <= run::RUN_BYTES_MAX || first == 1_206, "run at {first}: {len} bytes");
    }
    assert!(rows.len() < seqs.len() / 100, "{} runs", rows.len());
    let mut read = Vec::new();
    run::scan(&table, Lane::Bulk, 1..=u64::MAX, |seq, stored| {
        read.push((seq, stored.to_vec()));
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(read, seqs.iter().map(|&seq| (seq, bytes(seq))).collect::<Vec<_>>());
    drop(table);
    txn.commit().unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(*EVENTS_V4.get(Lane::Bulk)).is_err(), "the old table is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_found_anywhere_in_the_runs_its_group_is_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 2).unwrap();
    // 100 scans take several runs: the first is written before the group ends.
    let mut batch: Vec<_> = (0..100).map(|n| event(&format!("s{n:03}"), Kind::Scan, 0)).collect();
    batch.extend([event("s002", Kind::Scan, 0), event("s000", Kind::Scan, 0), event("s099", Kind::Scan, 0)]);
    let out = store.append(batch).await.unwrap();
    let repeats: Vec<_> = out[100..].iter().map(seq_of).collect();
    assert_eq!(repeats, [(Lane::Bulk, 3), (Lane::Bulk, 1), (Lane::Bulk, 100)]);
    assert!(out[100..].iter().all(|o| matches!(o, Outcome::Duplicate(_))), "{out:?}");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_prune_takes_at_most_its_limit_and_the_next_goes_on_from_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 4).unwrap();
    let total = PRUNE_EVENTS_MAX + 100;
    store.append((0..total).map(|n| event(&format!("s{n:05}"), Kind::Scan, 0)).collect()).await.unwrap();
    store.record_ack(Lane::Bulk, total as u64).await.unwrap();
    assert_eq!(store.prune(u64::MAX).await.unwrap(), PRUNE_EVENTS_MAX as u64);
    let rest = store.read_range(Lane::Bulk, Seq::FIRST, u32::MAX).unwrap();
    let first = rest.first().map(|r| r.event.event_id.to_string());
    assert_eq!((rest.len(), first.as_deref()), (100, Some("s10000")));
    assert!(store.get(&"s09999".parse().unwrap()).unwrap().is_none());
    assert_eq!(store.prune(u64::MAX).await.unwrap(), 100);
    assert!(store.read_range(Lane::Bulk, Seq::FIRST, u32::MAX).unwrap().is_empty());
    store.close();
}

#[test]
fn a_damaged_run_is_an_error_not_a_panic() {
    let mut bytes = Vec::new();
    for record in [b"ab".as_slice(), b"c"] {
        codec::put_varint(&mut bytes, record.len() as u64);
        bytes.extend_from_slice(record);
    }
    let at_the_end: Vec<_> = run::Entries::new(Lane::Bulk, u64::MAX, &bytes).collect();
    assert!(matches!(at_the_end[0], Ok((u64::MAX, b"ab"))), "{at_the_end:?}");
    assert!(matches!(at_the_end[1], Err(StoreError::Corrupt { .. })), "{at_the_end:?}");
    // A length that runs past the row.
    let cut: Vec<_> = run::Entries::new(Lane::Bulk, 1, &bytes[..bytes.len() - 1]).collect();
    assert!(matches!(cut[..], [Ok((1, b"ab")), Err(StoreError::Corrupt { .. })]), "{cut:?}");
}

/// What a crash would leave: the store file as its last commit left it, copied into a
/// directory of its own while the store is still open.
fn crash_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::copy(from.join(STORE_FILE), to.path().join(STORE_FILE)).unwrap();
    to
}

fn at(id: &str, kind: Kind, qty: i64, location: &str) -> NewEvent {
    let mut new = event(id, kind, qty);
    new.event.location = location.parse().unwrap();
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_stock_rows_and_the_deltas_they_lag_behind_make_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 6).unwrap();
    store.append(vec![at("r1", Kind::Receive, 10, "BIN-1")]).await.unwrap();
    store.append(vec![at("p1", Kind::Pick, 3, "BIN-1"), at("r2", Kind::Receive, 4, "BIN-2")]).await.unwrap();
    let first = crash_copy(dir.path());
    store.close();

    // The rows lag behind both groups: opening applies their deltas again.
    let store = Store::open(first.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2")), (7, 4));
    store.append(vec![at("r3", Kind::Receive, 5, "BIN-3")]).await.unwrap();
    // A prune writes the rows out first, those of the deltas applied at open included:
    // the records it removes can no longer be applied again.
    store.record_ack(Lane::Standard, 4).await.unwrap();
    assert_eq!(store.prune(u64::MAX).await.unwrap(), 4);
    store.append(vec![at("p2", Kind::Pick, 1, "BIN-3")]).await.unwrap();
    let second = crash_copy(first.path());
    store.close();

    let store = Store::open(second.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!((value(&store, "BIN-1"), value(&store, "BIN-2"), value(&store, "BIN-3")), (7, 4, 4));
    // A repeat changes nothing, and a clean close leaves the rows complete.
    store.append(vec![at("p2", Kind::Pick, 1, "BIN-3")]).await.unwrap();
    store.close();
    let db = Database::open(second.path().join(STORE_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let through = meta.get(*STOCK_THROUGH.get(Lane::Standard)).unwrap().unwrap().value();
    assert_eq!(through, 5, "the rows hold all five picks and receipts");
    let rows = txn.open_table(STOCK).unwrap();
    let mut stored = Inventory::new();
    for row in rows.iter().unwrap() {
        stored.merge(&decode_stock(row.unwrap().1.value()).unwrap());
    }
    let bins = ["BIN-1", "BIN-2", "BIN-3"].map(|bin| stored.value(&key(bin)).unwrap());
    assert_eq!(bins, [7, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_applied_again_out_of_their_order_still_open_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 5).unwrap();
    // The relay hands back this node's own counter at BIN-1 at the floor of its range.
    let mut floor = Inventory::new();
    floor.apply(store.actor(), &Delta { key: key("BIN-1"), change: -i64::MAX }).unwrap();
    floor.apply(store.actor(), &Delta { key: key("BIN-1"), change: -1 }).unwrap();
    store
        .merge_inventory(InventoryUpdate { through_version: 1, state: floor, complete: true })
        .await
        .unwrap();
    // A receipt (standard lane) makes room for a shipment (critical lane), which a lane
    // at a time would apply first.
    let out = store.append(vec![event("r", Kind::Receive, 5), event("s", Kind::Ship, 5)]).await.unwrap();
    assert!(out.iter().all(|o| matches!(o, Outcome::Created(_))), "{out:?}");
    let crashed = crash_copy(dir.path());
    store.close();
    let store = Store::open(crashed.path(), node(), || panic!("reopened")).unwrap();
    assert_eq!(value(&store, "BIN-1"), i64::MIN);
}

/// Changes the file of a closed store in one transaction, as another build or a damaged
/// file would leave it.
fn edit_closed(dir: &Path, edit: impl FnOnce(&redb::WriteTransaction)) {
    let db = open_db(&dir.join(STORE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opens_only_for_the_node_that_created_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 42).unwrap();
    store.append(vec![event("a", Kind::Ship, 1)]).await.unwrap();
    store.close();

    let other: NodeId = "store-2".parse().unwrap();
    let refused = Store::open(dir.path(), other, || panic!("the store exists: no new epoch")).err().unwrap();
    match &refused {
        StoreError::OtherNode { owner, node, .. } => {
            assert_eq!((owner.as_str(), node.as_str()), ("store-1", "store-2"))
        }
        e => panic!("expected OtherNode, got {e}"),
    }
    let message = refused.to_string();
    assert!(message.contains("store-1") && message.contains("certificate"), "{message}");

    let owner = {
        let db = open_db(&dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let identity = txn.open_table(IDENTITY).unwrap();
        identity.get("node_id").unwrap().map(|v| v.value().to_owned())
    };
    assert_eq!(owner.as_deref(), Some("store-1"), "the refusal claimed nothing");

    let store = Store::open(dir.path(), node(), || panic!("the store exists: no new epoch")).unwrap();
    assert_eq!(store.epoch(), Epoch(42));
    assert_eq!(store.positions().borrow().get(Lane::Critical).head, 1, "the owner's events are there");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_an_owner_is_claimed_by_the_first_node_to_open_it() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), node(), || 42).unwrap().close();
    // A store written before the identity table: no owner recorded.
    edit_closed(dir.path(), |txn| {
        txn.delete_table(IDENTITY).unwrap();
    });
    let other: NodeId = "store-2".parse().unwrap();
    Store::open(dir.path(), other.clone(), || 7).unwrap().close();
    let refused = Store::open(dir.path(), node(), || 9).err().unwrap();
    assert!(matches!(refused, StoreError::OtherNode { ref owner, .. } if owner == "store-2"), "{refused}");
    Store::open(dir.path(), other, || 7).unwrap().close();
}

/// `stock_through` of the standard lane (receipts) in a copy of the file taken while the
/// store is open, as a crash would leave it.
fn stock_through_after_a_crash(dir: &Path) -> u64 {
    let copy = crash_copy(dir);
    let db = Database::open(copy.path().join(STORE_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(*STOCK_THROUGH.get(Lane::Standard)).unwrap().unwrap().value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_rows_are_written_when_the_keys_behind_reach_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 3).unwrap();
    let keys = STOCK_LAG_KEYS_MAX as u64;
    let receipt = |n: u64| at(&format!("r{n}"), Kind::Receive, 1, &format!("BIN-{n}"));
    store.append((1..keys).map(receipt).collect()).await.unwrap();
    assert_eq!(stock_through_after_a_crash(dir.path()), 0, "one key short of the bound: no checkpoint");
    store.append(vec![receipt(keys)]).await.unwrap();
    assert_eq!(stock_through_after_a_crash(dir.path()), keys, "the group that reached the bound wrote them");
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_rows_are_written_when_the_events_behind_reach_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), node(), || 4).unwrap();
    let receipt = |n: u64| at(&format!("r{n}"), Kind::Receive, 1, "BIN-1");
    let short = STOCK_LAG_EVENTS_MAX - 1;
    let mut first = 1;
    while first <= short {
        let end = (first + GROUP_EVENTS_MAX as u64).min(short + 1);
        store.append((first..end).map(receipt).collect()).await.unwrap();
        first = end;
    }
    assert_eq!(stock_through_after_a_crash(dir.path()), 0, "one event short of the bound: no checkpoint");
    store.append(vec![receipt(STOCK_LAG_EVENTS_MAX)]).await.unwrap();
    assert_eq!(stock_through_after_a_crash(dir.path()), STOCK_LAG_EVENTS_MAX);
    assert_eq!(value(&store, "BIN-1"), STOCK_LAG_EVENTS_MAX as i64);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_this_build_cannot_read_is_refused_before_whose_store_it_is() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), node(), || 1).unwrap().close();
    edit_closed(dir.path(), |txn| {
        txn.open_table(META).unwrap().insert("format_version", FORMAT_VERSION + 1).unwrap();
    });
    for node_id in ["store-1", "store-2"] {
        let refused = Store::open(dir.path(), node_id.parse().unwrap(), || 2).err().unwrap();
        assert!(
            matches!(refused, StoreError::FormatVersion { found, .. } if found == FORMAT_VERSION + 1),
            "{node_id}: {refused}"
        );
    }
}
