//! Tests of the relay store: exactly-once appends, watermarks, the log's order, and what
//! survives a reopen.

use sync_protocol::inventory::{Delta, StockKey};
use sync_protocol::{Event, Kind};

use super::*;

fn node(id: &str) -> NodeIdentity {
    NodeIdentity::from_uri(&format!("outpost://eu-west/{id}")).unwrap()
}

fn stock_key() -> StockKey {
    StockKey { sku: "SKU-1".parse().unwrap(), location: "DOCK-1".parse().unwrap() }
}

fn stock(store: &Store) -> i64 {
    store.with_inventory(|inv| inv.merged().value(&stock_key()).unwrap())
}

fn records(first: u64, n: u64) -> Vec<Record> {
    let sku = stock_key().sku;
    let location = stock_key().location;
    (first..first + n)
        .map(|i| Record {
            received_at_ms: 1_000 + i,
            deltas: vec![Delta { key: stock_key(), change: -1 }],
            event: Event::new(format!("e{i}").parse().unwrap(), Kind::Ship, sku.clone(), location.clone(), 1),
        })
        .collect()
}

/// `records` of `id`'s stream `(epoch, lane)` from seq `first`.
fn batch(id: &str, epoch: u64, lane: Lane, first: u64, records: Vec<Record>) -> Append {
    Append { node: node(id), epoch: Epoch(epoch), lane, first_seq: Seq::new(first).unwrap(), records }
}

/// Appends and waits for the outcome.
async fn append(
    store: &Store,
    id: &str,
    epoch: u64,
    lane: Lane,
    first: u64,
    n: u64,
) -> Result<(), StoreError> {
    append_batch(store, batch(id, epoch, lane, first, records(first, n))).await
}

/// Appends `batch` and waits for the outcome.
async fn append_batch(store: &Store, batch: Append) -> Result<(), StoreError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let through = batch.first_seq.get() + batch.records.len() as u64 - 1;
    store.append(batch, tx).await.unwrap();
    let done = rx.recv().await.unwrap();
    assert_eq!(done.through.get(), through);
    done.result
}

#[tokio::test]
async fn overlaps_are_skipped_and_gaps_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 7, Lane::Critical, 1, 5).await.unwrap();
    // 3..=8 overlaps 3..=5: only 6..=8 are new.
    append(&store, "n1", 7, Lane::Critical, 3, 6).await.unwrap();
    let gap = append(&store, "n1", 7, Lane::Critical, 10, 2).await;
    assert!(matches!(gap, Err(StoreError::Gap { watermark: 8, first_seq: 10, .. })), "{gap:?}");

    let log = store.read_log(0, 100).unwrap();
    let seqs: Vec<u64> = log.iter().map(|(_, e)| e.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    let offsets: Vec<u64> = log.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
    assert_eq!(*store.watermarks(&node("n1").node_id, Epoch(7)).unwrap().get(Lane::Critical), 8);
    assert_eq!(store.stats().skipped.get(), 3);
}

#[tokio::test]
async fn epochs_and_lanes_are_separate_streams() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 1, Lane::Critical, 1, 3).await.unwrap();
    append(&store, "n1", 2, Lane::Critical, 1, 2).await.unwrap();
    append(&store, "n1", 2, Lane::Bulk, 1, 4).await.unwrap();
    append(&store, "n2", 1, Lane::Critical, 1, 1).await.unwrap();
    let marks = store.watermarks(&node("n1").node_id, Epoch(2)).unwrap();
    assert_eq!(marks.0, [2, 0, 4]);
    let nodes = store.nodes().unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = &nodes[0];
    assert_eq!(n1.node_id.as_str(), "n1");
    assert_eq!(n1.streams.len(), 3, "{:?}", n1.streams);
    assert_eq!(store.read_log(0, 100).unwrap().len(), 10);
}

#[tokio::test]
async fn the_log_and_watermarks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        append(&store, "n1", 7, Lane::Standard, 1, 3).await.unwrap();
        store.close().await;
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.next_offset().borrow(), 3);
    assert_eq!(*store.watermarks(&node("n1").node_id, Epoch(7)).unwrap().get(Lane::Standard), 3);
    append(&store, "n1", 7, Lane::Standard, 1, 4).await.unwrap();
    let log = store.read_log(0, 100).unwrap();
    assert_eq!(log.len(), 4, "only seq 4 is new after the reopen");
    assert_eq!(
        log[3],
        (
            3,
            LogEntry {
                node_id: node("n1").node_id,
                epoch: Epoch(7),
                lane: Lane::Standard,
                seq: 4,
                record: records(4, 1).remove(0)
            }
        )
    );
}

#[tokio::test]
async fn reads_page_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 1, Lane::Bulk, 1, 25).await.unwrap();
    let mut from = 0;
    let mut seen = 0;
    loop {
        let page = store.read_log(from, 10).unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
        from = page.last().unwrap().0 + 1;
    }
    assert_eq!(seen, 25);
}

/// Every entry the log should hold, in offset order.
fn expected_log(appends: &[(&str, u64, Lane, u64, u64)]) -> Vec<(u64, LogEntry)> {
    let entries = appends.iter().flat_map(|&(id, epoch, lane, first, n)| {
        (first..first + n).zip(records(first, n)).map(move |(seq, record)| LogEntry {
            node_id: node(id).node_id,
            epoch: Epoch(epoch),
            lane,
            seq,
            record,
        })
    });
    (0..).zip(entries).collect()
}

#[tokio::test]
async fn every_offset_reads_from_the_middle_of_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let appends = [("n1", 1, Lane::Bulk, 1, 7), ("n2", 3, Lane::Critical, 1, 1), ("n1", 1, Lane::Bulk, 8, 5)];
    for (id, epoch, lane, first, n) in appends {
        append(&store, id, epoch, lane, first, n).await.unwrap();
    }
    // An overlap adds a run of only what is new.
    append(&store, "n2", 3, Lane::Critical, 1, 3).await.unwrap();
    let all = expected_log(&[
        ("n1", 1, Lane::Bulk, 1, 7),
        ("n2", 3, Lane::Critical, 1, 1),
        ("n1", 1, Lane::Bulk, 8, 5),
    ])
    .into_iter()
    .chain(expected_log(&[("n2", 3, Lane::Critical, 2, 2)]).into_iter().map(|(o, e)| (o + 13, e)))
    .collect::<Vec<_>>();
    assert_eq!(*store.next_offset().borrow(), 15);
    for from in 0..=16 {
        for limit in [1, 3, 100] {
            let expected: Vec<_> = all.iter().skip(from).take(limit).cloned().collect();
            assert_eq!(store.read_log(from as u64, limit).unwrap(), expected, "from {from}, limit {limit}");
        }
    }
    store.close().await;
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.next_offset().borrow(), 15, "the next offset follows the last run's length");
}

/// Each row of the log: its first offset and its length in bytes.
fn run_rows(log: &impl ReadableTable<u64, &'static [u8]>) -> Vec<(u64, usize)> {
    log.iter()
        .unwrap()
        .map(Result::unwrap)
        .map(|(first, bytes)| (first.value(), bytes.value().len()))
        .collect()
}

#[tokio::test]
async fn an_append_longer_than_a_run_is_split_into_runs_read_from_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 1, Lane::Bulk, 1, 100).await.unwrap();
    append(&store, "n1", 1, Lane::Bulk, 101, 1).await.unwrap();
    let all = expected_log(&[("n1", 1, Lane::Bulk, 1, 101)]);
    let rows = run_rows(&store.db.begin_read().unwrap().open_table(LOG).unwrap());
    assert!(rows.len() > 2, "{rows:?}");
    assert!(rows.iter().all(|(_, len)| *len <= RUN_BYTES_MAX), "{rows:?}");
    assert_eq!(rows.last().unwrap().0, 100, "the second append is a run of its own");
    for from in 0..=101 {
        let expected: Vec<_> = all.iter().skip(from).take(7).cloned().collect();
        assert_eq!(store.read_log(from as u64, 7).unwrap(), expected, "from {from}");
    }
    store.close().await;
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.next_offset().borrow(), 101);
}

#[tokio::test]
async fn a_log_of_format_2_is_migrated_into_runs_with_every_entry_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    // Format 2 kept an entry per row; a removed entry leaves a gap in the offsets.
    let entries = expected_log(&[("n1", 1, Lane::Bulk, 1, 1200), ("n2", 2, Lane::Standard, 1, 3)]);
    let kept: Vec<_> = entries.into_iter().filter(|(offset, _)| *offset != 700).collect();
    {
        let database = Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format_version", 2).unwrap();
        {
            let mut log = txn.open_table(LOG_V2).unwrap();
            for (offset, entry) in &kept {
                log.insert(offset, entry.encode().unwrap().0.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*store.next_offset().borrow(), 1203);
    assert_eq!(store.read_log(0, 2000).unwrap(), kept);
    assert_eq!(store.read_log(699, 2).unwrap(), kept[699..701].to_vec(), "past the gap");
    let txn = store.db.begin_read().unwrap();
    assert!(txn.open_table(LOG_V2).is_err(), "the old table is gone");
    let rows = run_rows(&txn.open_table(LOG).unwrap());
    assert!(rows.iter().any(|(first, _)| *first == 701), "a run starts after the gap: {rows:?}");
    let through = txn.open_table(META).unwrap().get(STOCK_THROUGH).unwrap().unwrap().value();
    assert_eq!(through, 1203, "format 2's stock rows hold its whole log");
    assert!(rows.iter().all(|(_, len)| *len <= RUN_BYTES_MAX), "{rows:?}");
    assert!(rows.len() < kept.len() / 5, "{} runs", rows.len());
    drop(txn);
    // Appends go on after the migrated log.
    append(&store, "n3", 1, Lane::Bulk, 1, 1).await.unwrap();
    assert_eq!(store.read_log(1203, 10).unwrap().len(), 1);
}

#[test]
fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let database = Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = database.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format_version", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::FormatVersion { found: 99, .. }), "{err}");
}

#[tokio::test]
async fn each_delta_is_applied_once_behind_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        append(&store, "n1", 7, Lane::Critical, 1, 5).await.unwrap();
        append(&store, "n1", 7, Lane::Critical, 3, 6).await.unwrap();
        let _ = append(&store, "n1", 7, Lane::Critical, 20, 2).await;
        append(&store, "n2", 1, Lane::Critical, 1, 2).await.unwrap();
        assert_eq!(stock(&store), -10, "8 + 2 events shipped one each; overlaps and gaps add nothing");
        let exceptions: Vec<String> =
            store.with_inventory(|inv| inv.exceptions().map(|(k, _)| k.to_string()).collect());
        assert_eq!(exceptions, ["SKU-1@DOCK-1"]);
        // Version of the last change is the log's next offset.
        let changed = store.with_inventory(|inv| inv.changes_since(9).len());
        assert_eq!(changed, 1);
        store.close().await;
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -10, "the merged inventory is durable");
    assert_eq!(store.stats().exceptions.get(), 1, "and its exceptions counted from the start");
    append(&store, "n1", 7, Lane::Critical, 1, 9).await.unwrap();
    assert_eq!(stock(&store), -11, "only seq 9 is new after the reopen");
}

#[tokio::test]
async fn a_repair_adds_nothing_held_nothing_ahead_and_survives_a_hostile_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 7, Lane::Bulk, 1, 4).await.unwrap();
    let repair = |first: u64, recs: Vec<Record>| batch("n1", 7, Lane::Bulk, first, recs);
    // Seqs 3-6: 3 and 4 are held byte for byte, 5 and 6 are past the watermark.
    let done = store.repair(repair(3, records(3, 4))).await.unwrap();
    assert_eq!((done.count, done.present, done.inserted, done.beyond_watermark), (4, 2, 0, 2));
    // Other contents under a held seq are counted, not written.
    let done = store.repair(repair(2, records(20, 1))).await.unwrap();
    assert_eq!((done.differing, done.inserted), (1, 0));
    // A range past the last seq is refused, and the writer carries on.
    let hostile = store.repair(repair(u64::MAX, records(1, 2))).await;
    assert!(matches!(hostile, Err(StoreError::CommitFailed(_))), "{hostile:?}");
    append(&store, "n1", 7, Lane::Bulk, 5, 1).await.unwrap();
    assert_eq!(*store.next_offset().borrow(), 5, "nothing was added twice");
    let digests = store.digests(&"n1".parse().unwrap(), Epoch(7), Lane::Bulk, 0, 10).unwrap();
    assert_eq!(digests.iter().map(|(b, d)| (*b, d.digest.count)).collect::<Vec<_>>(), [(0, 5)]);
    store.close().await;
}

#[test]
fn a_log_entry_encodes_as_derived_with_its_record_as_the_tail() {
    let record = records(3, 1).remove(0);
    let entry =
        LogEntry { node_id: "n1".parse().unwrap(), epoch: Epoch(7), lane: Lane::Bulk, seq: 3, record };
    let (bytes, record_at) = entry.encode().unwrap();
    assert_eq!(bytes, postcard::to_allocvec(&entry).unwrap());
    assert_eq!(&bytes[record_at..], postcard::to_allocvec(&entry.record).unwrap().as_slice());
}

/// A queued command, labelled by node, lane and first seq.
fn queued(id: &str, lane: Lane, first: u64, n: u64) -> Command {
    let (tx, _) = mpsc::unbounded_channel();
    let batch = batch(id, 1, lane, first, records(first, n));
    let entries = Entries::of(&batch).unwrap();
    Command::Append(batch, entries, tx)
}

fn labels(group: &[Command]) -> Vec<String> {
    group
        .iter()
        .map(|command| match command {
            Command::Append(batch, ..) => {
                format!("{}/{}/{}", batch.node.node_id, batch.lane, batch.first_seq)
            }
            Command::Repair(..) => "repair".into(),
            Command::Seen { .. } => "seen".into(),
            Command::Close => "close".into(),
        })
        .collect()
}

#[test]
fn a_group_takes_critical_appends_first_and_the_rest_in_order() {
    let mut queue = VecDeque::from([
        queued("a", Lane::Bulk, 1, 10),
        queued("b", Lane::Standard, 1, 10),
        queued("a", Lane::Critical, 1, 1),
        queued("a", Lane::Bulk, 11, 10),
        queued("b", Lane::Critical, 1, 1),
        queued("a", Lane::Critical, 2, 1),
    ]);
    assert_eq!(
        labels(&next_group(&mut queue)),
        ["a/critical/1", "b/critical/1", "a/critical/2", "a/bulk/1", "b/standard/1", "a/bulk/11"]
    );
    assert!(queue.is_empty());
}

#[test]
fn a_group_stops_at_its_event_bound_and_at_a_close() {
    let batch = GROUP_EVENTS_MAX as u64 / 4;
    let mut queue: VecDeque<_> = (0..6).map(|i| queued("a", Lane::Bulk, 1 + i * batch, batch)).collect();
    queue.insert(5, Command::Close);
    queue.push_back(queued("a", Lane::Critical, 1, 1));
    let bulk = |i: u64| format!("a/bulk/{}", 1 + i * batch);
    assert_eq!(labels(&next_group(&mut queue)), (0..4).map(bulk).collect::<Vec<_>>());
    // The critical append behind the close stays there, and the close ends the group.
    assert_eq!(labels(&next_group(&mut queue)), [bulk(4), "close".into()]);
    assert_eq!(labels(&Vec::from(queue)), [bulk(5), "a/critical/1".into()]);
}

#[test]
fn a_batch_is_prepared_as_its_log_entries_and_their_digests() {
    let batch = batch("n1", 7, Lane::Standard, 41, records(41, 3));
    let entries = Entries::of(&batch).unwrap();
    for (i, record) in batch.records.iter().enumerate() {
        let seq = 41 + i as u64;
        let entry = LogEntry {
            node_id: batch.node.node_id.clone(),
            epoch: Epoch(7),
            lane: Lane::Standard,
            seq,
            record: record.clone(),
        };
        let (bytes, record_at) = entry.encode().unwrap();
        // The run from record i on starts with its entry, at the run's offset.
        let (offset, decoded, raw) = Run::new(100, entries.from(i).0).next().unwrap().unwrap();
        assert_eq!((offset, &decoded, raw), (100, &entry, bytes.as_slice()), "entry {i}");
        assert_eq!(
            *entries.digest(i),
            BlockDigest::of_record(Lane::Standard, seq, &bytes[record_at..]),
            "digest {i}"
        );
    }
    let offsets: Vec<u64> = Run::new(100, entries.from(1).0).map(|e| e.unwrap().0).collect();
    assert_eq!(offsets, [100, 101]);
}

#[test]
fn insert_runs_cuts_before_the_entry_that_would_overflow_and_keeps_a_long_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::create(dir.path().join("runs.redb")).unwrap();
    let cases: [&[usize]; 4] = [&[], &[1_500], &[400, 1_500, 400], &[300, 300, 300, 300, 50]];
    for (case, sizes) in cases.into_iter().enumerate() {
        let bytes: Vec<u8> =
            sizes.iter().enumerate().flat_map(|(i, n)| std::iter::repeat_n(i as u8, *n)).collect();
        let ends: Vec<usize> = sizes.iter().scan(0, |end, n| Some(*end + n).inspect(|e| *end = *e)).collect();
        let txn = database.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            insert_runs(&mut log, 10, &bytes, ends).unwrap();
        }
        let rows = run_rows(&txn.open_table(LOG).unwrap());
        let expected: &[(u64, usize)] = match case {
            0 => &[],
            1 => &[(10, 1_500)],
            2 => &[(10, 400), (11, 1_500), (12, 400)],
            _ => &[(10, 900), (13, 350)],
        };
        assert_eq!(rows, expected, "sizes {sizes:?}");
        txn.abort().unwrap();
    }
}

/// Stops the writer without a close, as a crash would: nothing queued after the last
/// commit is written, and no checkpoint.
fn crash(store: Store) {
    let writer = store.writer.lock().unwrap().take().unwrap();
    drop(store);
    writer.join().unwrap();
}

/// Changes a closed store's file in one write transaction.
fn edit_closed(dir: &Path, edit: impl FnOnce(&redb::WriteTransaction)) {
    let database = Database::open(dir.join(STORE_FILE)).unwrap();
    let txn = database.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

/// `stock_through` and the stock rows of a closed store, as `(sku, version, value)`.
fn stock_on_disk(dir: &Path) -> (u64, Vec<(String, u64, i64)>) {
    stock_in(&Database::open(dir.join(STORE_FILE)).unwrap())
}

/// `stock_through` and the stock rows committed in `database`.
fn stock_in(database: &Database) -> (u64, Vec<(String, u64, i64)>) {
    let txn = database.begin_read().unwrap();
    let through = txn.open_table(META).unwrap().get(STOCK_THROUGH).unwrap().unwrap().value();
    let rows = txn.open_table(STOCK).unwrap();
    let rows = rows
        .iter()
        .unwrap()
        .map(|row| {
            let (key, value) = row.unwrap();
            let (version, bytes) = value.value();
            let stock: Inventory = postcard::from_bytes(bytes).unwrap();
            let (sku, location) = key.value();
            let key = StockKey { sku: sku.parse().unwrap(), location: location.parse().unwrap() };
            (sku.to_owned(), version, stock.value(&key).unwrap())
        })
        .collect();
    (through, rows)
}

#[tokio::test]
async fn the_stock_rows_wait_for_a_checkpoint_and_a_crash_applies_the_log_after_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // SKU-1 changes at version 5 (offsets 0-4), two keys of n2's at 7 (offsets 5 and 6).
    append(&store, "n1", 7, Lane::Bulk, 1, 5).await.unwrap();
    append_batch(&store, batch("n2", 1, Lane::Bulk, 1, records_of_keys(1, 0, 2))).await.unwrap();
    let changed_since_5 = |store: &Store| store.with_inventory(|inv| inv.changed_count_since(5));
    assert_eq!((stock(&store), changed_since_5(&store)), (-5, 2));
    crash(store);
    assert_eq!(stock_on_disk(dir.path()), (0, vec![]), "no group reached a bound: no rows yet");

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -5, "the log after the checkpoint is applied again, once");
    assert_eq!(changed_since_5(&store), 3, "at the log's end: a node that merged through 5 gets SKU-1 again");
    assert_eq!(store.with_inventory(|inv| inv.changed_count_since(7)), 0);
    // Exactly once across the crash: seqs 1-5 are behind the watermark.
    append(&store, "n1", 7, Lane::Bulk, 1, 6).await.unwrap();
    assert_eq!(stock(&store), -6);
    store.close().await;
    let rows = vec![("SKU-1".into(), 8, -6), ("SKU-100000".into(), 7, 1), ("SKU-100001".into(), 7, 1)];
    assert_eq!(stock_on_disk(dir.path()), (8, rows), "a close checkpoints");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -6);
}

#[tokio::test]
async fn a_checkpoint_past_the_logs_end_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 7, Lane::Bulk, 1, 3).await.unwrap();
    store.close().await;
    edit_closed(dir.path(), |txn| {
        txn.open_table(META).unwrap().insert(STOCK_THROUGH, 4).unwrap();
    });
    let err = Store::open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("past the log's end 3")),
        "{err}"
    );
}

/// `n` records from seq `first`, each moving a key of its own: `SKU-K` for `K` from
/// `100000 + key` on, apart from [`stock_key`].
fn records_of_keys(first: u64, key: u64, n: u64) -> Vec<Record> {
    let location = stock_key().location;
    (0..n)
        .map(|i| {
            let sku: sync_protocol::Sku = format!("SKU-{}", 100_000 + key + i).parse().unwrap();
            let delta = Delta { key: StockKey { sku: sku.clone(), location: location.clone() }, change: 1 };
            Record {
                received_at_ms: 1_000,
                deltas: vec![delta],
                event: Event::new(
                    format!("e{}", first + i).parse().unwrap(),
                    Kind::Receive,
                    sku,
                    location.clone(),
                    1,
                ),
            }
        })
        .collect()
}

/// Appends `records` as batches of at most 4,096 from seq `first` of `n1`'s bulk lane.
async fn append_all(store: &Store, first: u64, records: Vec<Record>) {
    for (i, chunk) in records.chunks(4_096).enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let first = first + i as u64 * 4_096;
        store.append(batch("n1", 1, Lane::Bulk, first, chunk.to_vec()), tx).await.unwrap();
        rx.recv().await.unwrap().result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_comes_with_the_group_that_brings_the_entries_or_keys_behind_to_their_bound() {
    let entries = STOCK_LAG_ENTRIES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // One key: only the entries' bound applies.
    append_all(&store, 1, records(1, entries - 1)).await;
    crash(store);
    assert_eq!(stock_on_disk(dir.path()), (0, vec![]), "one entry short of the bound");
    let store = Store::open(dir.path()).unwrap();
    append_all(&store, entries, records(entries, 1)).await;
    crash(store);
    let expected = -(entries as i64);
    assert_eq!(stock_on_disk(dir.path()), (entries, vec![("SKU-1".into(), entries, expected)]));

    // A key each: the keys' bound comes first. Those behind are counted on open, then
    // by the groups.
    let (keys, half) = (STOCK_LAG_KEYS_MAX as u64, STOCK_LAG_KEYS_MAX as u64 / 2);
    let store = Store::open(dir.path()).unwrap();
    append_all(&store, entries + 1, records_of_keys(entries + 1, 0, half)).await;
    crash(store);
    let store = Store::open(dir.path()).unwrap();
    append_all(&store, entries + 1 + half, records_of_keys(entries + 1 + half, half, keys - 1 - half)).await;
    assert_eq!(stock_in(&store.db).0, entries, "one key short of the bound");
    append_all(&store, entries + keys, records_of_keys(entries + keys, keys - 1, 1)).await;
    let (through, rows) = stock_in(&store.db);
    assert_eq!((through, rows.len() as u64), (entries + keys, keys + 1));
    assert!(rows.iter().filter(|(sku, ..)| sku != "SKU-1").all(|&(_, _, value)| value == 1), "{rows:?}");
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_repair_checkpoints_so_that_its_entries_are_not_counted_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 7, Lane::Bulk, 1, 4).await.unwrap();
    crash(store);
    let refused = lose_records(dir.path(), &node("n1").node_id, Epoch(7), Lane::Bulk, 2..=2);
    assert!(
        matches!(&refused, Err(StoreError::CommitFailed(m)) if m.contains("close the relay cleanly")),
        "{refused:?}"
    );
    Store::open(dir.path()).unwrap().close().await;
    assert_eq!(lose_records(dir.path(), &node("n1").node_id, Epoch(7), Lane::Bulk, 2..=2).unwrap(), 1);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -4, "the stock rows kept the lost record's delta");
    let done = store.repair(batch("n1", 7, Lane::Bulk, 1, records(1, 4))).await.unwrap();
    assert_eq!((done.inserted, done.present), (1, 3));
    assert_eq!(stock(&store), -4, "a repair moves no stock");
    crash(store);
    assert_eq!(stock_on_disk(dir.path()).0, 5, "the repaired entry is behind the checkpoint");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -4, "and opening does not count it again");
}

#[tokio::test]
async fn a_store_of_format_3_holds_its_whole_log_in_its_stock_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, "n1", 7, Lane::Bulk, 1, 3).await.unwrap();
    store.close().await;
    // Format 3 wrote the rows with every commit and had no `stock_through`.
    edit_closed(dir.path(), |txn| {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format_version", 3).unwrap();
        meta.remove(STOCK_THROUGH).unwrap();
    });
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(stock(&store), -3, "nothing applied twice");
    crash(store);
    assert_eq!(stock_on_disk(dir.path()), (3, vec![("SKU-1".into(), 3, -3)]));
    let database = Database::open(dir.path().join(STORE_FILE)).unwrap();
    let txn = database.begin_read().unwrap();
    assert_eq!(txn.open_table(META).unwrap().get("format_version").unwrap().unwrap().value(), FORMAT_VERSION);
}
