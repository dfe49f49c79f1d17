//! Tests of the simulated relay inventory: versions, chunking and exceptions.

use sync_protocol::Epoch;

use super::*;

fn actor(node: &str) -> Actor {
    Actor { node_id: node.parse().unwrap(), epoch: Epoch(1) }
}

fn delta(sku: &str, change: i64) -> Delta {
    Delta { key: StockKey { sku: sku.parse().unwrap(), location: "BIN-0".parse().unwrap() }, change }
}

#[test]
fn changes_since_sends_only_keys_changed_after_the_version_in_chunks() {
    let mut inv = RelayInventory::default();
    for (i, sku) in ["SKU-1", "SKU-2", "SKU-3"].into_iter().enumerate() {
        assert_eq!(inv.apply(&[(actor("n1"), delta(sku, 5))], i as u64 + 1), 0);
    }
    // SKU-1 changes again later: it moves to the newest version.
    assert_eq!(inv.apply(&[(actor("n2"), delta("SKU-1", -7))], 4), 0);
    let keys = |chunks: Vec<Inventory>| -> Vec<usize> { chunks.iter().map(Inventory::len).collect() };
    assert_eq!(keys(inv.changes_since(0, 100)), vec![3]);
    assert_eq!(keys(inv.changes_since(2, 100)), vec![2]);
    assert_eq!(keys(inv.changes_since(4, 100)), Vec::<usize>::new());
    // Two entries per single-actor key, three for SKU-1: one key per message at 3.
    assert_eq!(keys(inv.changes_since(0, 3)), vec![1, 1, 1]);
    assert_eq!(inv.negative().len(), 1);
    assert_eq!(inv.apply(&[(actor("n1"), delta("SKU-1", 2))], 5), 0);
    assert!(inv.negative().is_empty());
}

#[test]
fn the_fold_of_the_deltas_equals_the_contributions() {
    let mut inv = Inventory::new();
    let mut fold = Fold::new();
    for (who, d) in [("n1", delta("SKU-1", 3)), ("n2", delta("SKU-1", -1)), ("n1", delta("SKU-1", 4))] {
        inv.apply(&actor(who), &d).unwrap();
        fold_into(&mut fold, &actor(who), std::slice::from_ref(&d));
    }
    assert_eq!(first_difference(&fold, &contributions(&inv)), None);
    fold_into(&mut fold, &actor("n2"), &[delta("SKU-1", -1)]);
    let diff = first_difference(&fold, &contributions(&inv)).unwrap();
    assert!(diff.contains("expected -2, found -1"), "{diff}");
}
