//! The relay's merged inventory: every actor's counters for every key, the version at
//! which each key last changed (so that each node gets only what it has not seen), and
//! the exceptions (negative merged stock).
//!
//! Deltas are applied by the store's writer in the transaction that appends their events
//! to the log, behind the watermark, so each is applied exactly once ([`crate::store`]).
//! The version of a change is the log's next offset after the commit that made it: a
//! node that has merged through version `v` needs the keys changed after `v`.

use std::collections::{BTreeMap, BTreeSet};

use sync_protocol::inventory::{Inventory, Stock, StockKey};

/// Most counter entries (one per key plus one per actor of it) in one update message;
/// about 1 MiB encoded, well under the frame limit.
pub const UPDATE_ENTRIES_MAX: usize = 16_384;

/// The relay's inventory and its indexes.
#[derive(Debug, Default)]
pub struct RelayInventory {
    merged: Inventory,
    changed_at: BTreeMap<StockKey, u64>,
    by_version: BTreeMap<u64, BTreeSet<StockKey>>,
    negative: BTreeSet<StockKey>,
}

impl RelayInventory {
    /// The merged state.
    pub fn merged(&self) -> &Inventory {
        &self.merged
    }

    /// Takes in committed changes: `changed` holds each key's whole new state, changed at
    /// `version`. Returns the keys that just went negative, to be logged once.
    pub fn commit(&mut self, changed: &Inventory, version: u64) -> Vec<(StockKey, i64)> {
        self.merged.merge(changed);
        let mut newly_negative = Vec::new();
        for (key, _) in changed.iter() {
            if let Some(old) = self.changed_at.insert(key.clone(), version)
                && let Some(keys) = self.by_version.get_mut(&old)
            {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_version.remove(&old);
                }
            }
            self.by_version.entry(version).or_default().insert(key.clone());
            match self.merged.value(key) {
                Ok(v) if v < 0 => {
                    if self.negative.insert(key.clone()) {
                        newly_negative.push((key.clone(), v));
                    }
                }
                _ => {
                    self.negative.remove(key);
                }
            }
        }
        newly_negative
    }

    /// The keys changed after `version`, in messages of at most
    /// [`UPDATE_ENTRIES_MAX`] entries each.
    pub fn changes_since(&self, version: u64) -> Vec<Inventory> {
        let mut chunks = Vec::new();
        let mut keys: Vec<&StockKey> = Vec::new();
        let mut entries = 0;
        for key in self.by_version.range(version.saturating_add(1)..).flat_map(|(_, keys)| keys) {
            let cost = 1 + self.merged.stock(key).map_or(0, |s| s.contributions().size_hint().0);
            if entries + cost > UPDATE_ENTRIES_MAX && !keys.is_empty() {
                chunks.push(self.merged.restrict(keys.drain(..)));
                entries = 0;
            }
            keys.push(key);
            entries += cost;
        }
        if !keys.is_empty() {
            chunks.push(self.merged.restrict(keys));
        }
        chunks
    }

    /// Keys whose merged value is below zero, with their counters.
    pub fn exceptions(&self) -> impl Iterator<Item = (&StockKey, &Stock)> {
        self.negative.iter().filter_map(|k| self.merged.stock(k).map(|s| (k, s)))
    }
}

#[cfg(test)]
mod tests;
