//! The relay's side of inventory: the merged state, the version at which each key last
//! changed, and the keys below zero. Shared by the real relay and the simulated one, so
//! the simulation checks the code that runs.

use std::collections::{BTreeMap, BTreeSet};

use super::{Inventory, Stock, StockKey};

/// A merged inventory that knows what changed when.
#[derive(Debug, Clone, Default)]
pub struct VersionedInventory {
    merged: Inventory,
    changed_at: BTreeMap<StockKey, u64>,
    by_version: BTreeMap<u64, BTreeSet<StockKey>>,
    negative: BTreeSet<StockKey>,
}

impl VersionedInventory {
    /// The merged state.
    pub fn merged(&self) -> &Inventory {
        &self.merged
    }

    /// Takes in committed changes: `changed` holds each key's whole new state, changed at
    /// `version`. Returns the keys that just went below zero, with their values, to be
    /// reported once.
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

    /// The keys changed after `version`, as delta-states of at most `entries_max`
    /// counter entries each (one per key plus one per actor of it).
    pub fn changes_since(&self, version: u64, entries_max: usize) -> Vec<Inventory> {
        let mut chunks = Vec::new();
        let mut keys: Vec<&StockKey> = Vec::new();
        let mut entries = 0;
        for key in self.by_version.range(version.saturating_add(1)..).flat_map(|(_, keys)| keys) {
            let cost = 1 + self.merged.stock(key).map_or(0, |s| s.len());
            if entries + cost > entries_max && !keys.is_empty() {
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

    /// The keys changed after `version`, each with the version it last changed at, in
    /// the order of those versions.
    pub fn changed_since(&self, version: u64) -> impl Iterator<Item = (u64, &StockKey)> {
        let later = self.by_version.range(version.saturating_add(1)..);
        later.flat_map(|(&at, keys)| keys.iter().map(move |key| (at, key)))
    }

    /// The version at which `key` last changed, if it ever did.
    pub fn changed_at(&self, key: &StockKey) -> Option<u64> {
        self.changed_at.get(key).copied()
    }

    /// How many keys changed after `version`: a sum over the versions since, not a walk
    /// over the keys.
    pub fn changed_count_since(&self, version: u64) -> usize {
        self.by_version.range(version.saturating_add(1)..).map(|(_, keys)| keys.len()).sum()
    }

    /// The keys whose merged value is below zero now.
    pub fn negative(&self) -> &BTreeSet<StockKey> {
        &self.negative
    }

    /// The keys below zero with their counters.
    pub fn exceptions(&self) -> impl Iterator<Item = (&StockKey, Stock<'_>)> {
        self.negative.iter().filter_map(|k| self.merged.stock(k).map(|s| (k, s)))
    }
}
