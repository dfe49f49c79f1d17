//! Inventory in the simulation: the relay's merged inventory with the version at which
//! each key last changed, as `cloud-relay/src/inventory.rs` keeps it, and the folds the
//! checker compares replicas with.
//!
//! The relay applies each stored record's deltas to its actor's counters inside the
//! commit that appends the record to the log, so exactly once (behind the watermark).
//! The version of a change is the log's length after that commit (the next offset): a
//! node that merged through version `v` is sent the keys changed after `v`.

use std::collections::{BTreeMap, BTreeSet};

use sync_protocol::inventory::{Actor, Delta, Inventory, StockKey, VersionedInventory};

/// Most counter entries (one per key plus one per actor of it) in one update message.
/// The real relay sends up to 16,384; the simulation's inventory is a few dozen keys, so
/// a small limit is what makes its updates come in several messages, as large ones do.
pub const UPDATE_ENTRIES_MAX: usize = 40;

/// The simulated relay's inventory: the real relay's [`VersionedInventory`].
#[derive(Debug, Default, Clone)]
pub struct RelayInventory(VersionedInventory);

impl RelayInventory {
    /// The merged state.
    pub fn merged(&self) -> &Inventory {
        self.0.merged()
    }

    /// Applies one commit's deltas, each with its actor, changed at `version`, and
    /// returns how many could not be applied (a counter overflow). The caller applies
    /// each delta once.
    pub fn apply(&mut self, deltas: &[(Actor, Delta)], version: u64) -> u64 {
        let mut failed = 0;
        let mut changed = Inventory::new();
        for (actor, delta) in deltas {
            if changed.stock(&delta.key).is_none() {
                changed.merge_key(self.0.merged(), &delta.key);
            }
            if changed.apply(actor, delta).is_err() {
                failed += 1;
            }
        }
        self.0.commit(&changed, version);
        failed
    }

    /// The keys changed after `version`, in messages of at most `entries_max` entries.
    pub fn changes_since(&self, version: u64, entries_max: usize) -> Vec<Inventory> {
        self.0.changes_since(version, entries_max)
    }

    /// The keys listed as exceptions: merged value below zero.
    pub fn negative(&self) -> &BTreeSet<StockKey> {
        self.0.negative()
    }
}

/// Per key and actor, the sum of that actor's deltas.
pub type Fold = BTreeMap<(StockKey, Actor), i64>;

/// Adds `actor`'s `deltas` to `fold`.
pub fn fold_into(fold: &mut Fold, actor: &Actor, deltas: &[Delta]) {
    for delta in deltas {
        let pair = (delta.key.clone(), actor.clone());
        let sum = fold.entry(pair).or_default();
        *sum = sum.saturating_add(delta.change);
    }
}

/// Every actor's contribution to every key of `inventory`, as a fold (an unreadable
/// counter reads as `i64::MIN`, which no fold of the simulation reaches).
pub fn contributions(inventory: &Inventory) -> Fold {
    let mut fold = Fold::new();
    for (key, stock) in inventory.iter() {
        for (actor, value) in stock.contributions() {
            fold.insert((key.clone(), actor.clone()), value.unwrap_or(i64::MIN));
        }
    }
    fold
}

/// The first `(key, actor)` whose sums differ (a missing entry counts as zero), as text.
pub fn first_difference(expected: &Fold, got: &Fold) -> Option<String> {
    let keys: BTreeSet<&(StockKey, Actor)> = expected.keys().chain(got.keys()).collect();
    keys.into_iter().find_map(|pair| {
        let want = expected.get(pair).copied().unwrap_or(0);
        let have = got.get(pair).copied().unwrap_or(0);
        (want != have).then(|| format!("{} of actor {}: expected {want}, found {have}", pair.0, pair.1))
    })
}

/// The first key on which two replicas differ, with both values, as text.
pub fn first_stock_difference(a: &Inventory, b: &Inventory) -> Option<String> {
    let keys: BTreeSet<&StockKey> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
    keys.into_iter().find_map(|key| {
        (a.stock(key) != b.stock(key)).then(|| {
            let value = |inv: &Inventory| inv.value(key).map_or_else(|e| e.to_string(), |v| v.to_string());
            format!("{key}: {} against {} (or their counters differ)", value(a), value(b))
        })
    })
}

#[cfg(test)]
mod tests;
