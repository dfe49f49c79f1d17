//! Tests of the simulated relay store: the writer's own skip and gap checks, and what a
//! crash before the sync loses.

use sync_protocol::{Epoch, Event, Kind, Lane, Record, Seq};

use super::*;

/// A scan record numbered `n`: no deltas, received at `n` ms.
pub(crate) fn record(n: u64) -> Record {
    let event = Event::new(
        format!("e-{n}").parse().unwrap(),
        Kind::Scan,
        "SKU-1".parse().unwrap(),
        "BIN-1".parse().unwrap(),
        1,
    );
    Record { received_at_ms: n, deltas: Vec::new(), event }
}

fn append(first: u64, last: u64) -> Append {
    Append {
        conn: 1,
        node: 0,
        node_id: "node-0".parse().unwrap(),
        epoch: Epoch(7),
        lane: Lane::Bulk,
        first_seq: first,
        records: (first..=last).map(record).collect(),
        from_receiver: true,
    }
}

fn seqs(store: &RelayStore) -> Vec<u64> {
    store.log.iter().map(|e| e.seq).collect()
}

#[test]
fn the_writer_skips_the_stored_prefix_and_refuses_a_gap() {
    let mut store = RelayStore::default();
    let (txn, outcomes) = store.prepare(&[append(1, 3), append(2, 5), append(7, 8)], None);
    assert_eq!(
        outcomes,
        vec![
            AppendOutcome::Stored(Seq::new(3).unwrap()),
            AppendOutcome::Stored(Seq::new(5).unwrap()),
            AppendOutcome::Gap { watermark: 5 },
        ]
    );
    store.write(txn);
    assert_eq!(store.sync().len(), 5);
    assert_eq!(seqs(&store), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.watermark(0, Epoch(7), Lane::Bulk), 5);
}

#[test]
fn a_crash_before_the_sync_loses_the_transaction() {
    let mut store = RelayStore::default();
    let (txn, _) = store.prepare(&[append(1, 2)], None);
    store.write(txn);
    store.sync();
    let (txn, _) = store.prepare(&[append(3, 4)], None);
    store.write(txn);
    assert_eq!(store.crash_and_recover(), 1);
    assert_eq!(seqs(&store), vec![1, 2]);
    assert_eq!(store.watermarks_of(0, Epoch(7)).0, [0, 0, 2]);
}

#[test]
fn the_reapply_bug_stores_a_retransmission_again() {
    let mut store = RelayStore::default();
    let (txn, _) = store.prepare(&[append(1, 2)], None);
    store.write(txn);
    store.sync();
    let (txn, _) = store.prepare(&[append(1, 3)], Some(InjectedBug::ReapplyRetransmission));
    store.write(txn);
    store.sync();
    assert_eq!(seqs(&store), vec![1, 2, 1, 2, 3]);
}

#[test]
fn bug_names_parse_back() {
    for bug in InjectedBug::ALL {
        assert_eq!(bug.as_str().parse::<InjectedBug>(), Ok(bug));
    }
    assert!("ack-early".parse::<InjectedBug>().is_err());
}
