//! Tests of the relay inventory's indexes: what a node is sent, and the exceptions.

use sync_protocol::inventory::{Actor, Delta};
use sync_protocol::{Epoch, NodeId};

use super::*;

fn key(sku: &str) -> StockKey {
    StockKey { sku: sku.parse().unwrap(), location: "A1".parse().unwrap() }
}

fn change(node: &str, sku: &str, by: i64) -> Inventory {
    let actor = Actor { node_id: node.parse::<NodeId>().unwrap(), epoch: Epoch(1) };
    let mut inv = Inventory::new();
    inv.apply(&actor, &Delta { key: key(sku), change: by }).unwrap();
    inv
}

fn keys(chunks: &[Inventory]) -> Vec<String> {
    chunks.iter().flat_map(|c| c.iter().map(|(k, _)| k.sku.to_string())).collect()
}

#[test]
fn a_node_gets_what_changed_after_its_version() {
    let mut inv = RelayInventory::default();
    inv.commit(&change("n1", "S1", 5), 10);
    inv.commit(&change("n1", "S2", 5), 20);
    inv.commit(&change("n2", "S1", 1), 30);
    assert_eq!(keys(&inv.changes_since(0)), ["S1", "S2"]);
    assert_eq!(keys(&inv.changes_since(10)), ["S1", "S2"]);
    assert_eq!(keys(&inv.changes_since(20)), ["S1"]);
    assert!(inv.changes_since(30).is_empty());
    // What is sent is the whole merged state of the key, not the last change.
    let sent = &inv.changes_since(20)[0];
    assert_eq!(sent.value(&key("S1")).unwrap(), 6);
}

#[test]
fn negative_stock_is_an_exception_reported_once() {
    let mut inv = RelayInventory::default();
    assert_eq!(inv.commit(&change("n1", "S1", -2), 1).len(), 1);
    assert!(inv.commit(&change("n2", "S1", -1), 2).is_empty(), "already listed");
    assert_eq!(inv.exceptions().count(), 1);
    inv.commit(&change("n3", "S1", 10), 3);
    assert_eq!(inv.exceptions().count(), 0, "back above zero");
}

#[test]
fn large_updates_are_split() {
    let mut inv = RelayInventory::default();
    for i in 0..UPDATE_ENTRIES_MAX {
        inv.commit(&change("n1", &format!("S{i}"), 1), 1);
    }
    let chunks = inv.changes_since(0);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks.iter().map(Inventory::len).sum::<usize>(), UPDATE_ENTRIES_MAX);
}
