//! Tests of the checker on hand-made log entries.

use sync_protocol::{Epoch, Lane};

use super::*;
use crate::sim::relay::tests::record;
use crate::sim::relay::{Append, RelayStore};

fn entry(seq: u64) -> LogEntry {
    LogEntry { node: 0, epoch: Epoch(1), lane: Lane::Bulk, seq, record: record(seq) }
}

#[track_caller]
fn check_entries(seqs: &[u64], expect: Result<(), Invariant>) {
    let mut checker = Checker::default();
    let mut result = Ok(());
    for &seq in seqs {
        result = checker.on_log_entry(&entry(seq), Some(&record(seq))).map_err(|(inv, _)| inv);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, expect);
}

#[test]
fn the_log_must_be_one_two_three_once() {
    check_entries(&[1, 2, 3], Ok(()));
    check_entries(&[1, 3], Err(Invariant::Order));
    check_entries(&[1, 2, 2], Err(Invariant::NoDuplicateEffect));
    check_entries(&[2], Err(Invariant::Order));
}

#[test]
fn an_entry_must_be_the_nodes_event_of_that_seq() {
    let mut checker = Checker::default();
    let found = checker.on_log_entry(&entry(1), Some(&record(9))).map_err(|(inv, _)| inv);
    assert_eq!(found, Err(Invariant::Order));
}

#[test]
fn watermarks_must_not_go_back() {
    let mut checker = Checker::default();
    let mut store = RelayStore::default();
    let append = Append {
        conn: 1,
        node: 0,
        node_id: "node-0".parse().unwrap(),
        epoch: Epoch(1),
        lane: Lane::Bulk,
        first_seq: 1,
        records: vec![record(1), record(2)],
        from_receiver: true,
    };
    let (txn, _) = store.prepare(&[append], None);
    store.write(txn);
    store.sync();
    assert!(checker.on_watermarks(&store).is_ok());
    store.watermarks.insert((0, Epoch(1), Lane::Bulk), 1);
    assert_eq!(checker.on_watermarks(&store).map_err(|(inv, _)| inv), Err(Invariant::MonotoneWatermarks));
}

#[test]
fn a_violation_names_its_invariant_seed_and_replay() {
    let violation = Violation {
        invariant: Invariant::AckAfterDurability,
        seed: 42,
        at_ms: 1_500,
        detail: "ack through 5".into(),
        trace: vec!["[    1500 ms] net".into()],
        bug: Some(InjectedBug::AckBeforeCommit),
    };
    let text = violation.to_string();
    assert!(text.contains("always A5 ack after durability at seed 42"), "{text}");
    assert!(text.contains("replay: outpost-sim sim --seed 42 --inject-bug ack-before-commit"), "{text}");
}
