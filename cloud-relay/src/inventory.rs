//! The relay's merged inventory: every actor's counters for every key, the version at
//! which each key last changed (so that each node gets only what it has not seen), and
//! the exceptions (negative merged stock).
//!
//! Deltas are applied by the store's writer with the commit that appends their events to
//! the log, behind the watermark, so each is applied exactly once; the stock rows that
//! hold them on disk are written at checkpoints, and opening the store applies the log
//! after the last one again ([`crate::store`]).
//! The version of a change is the log's next offset after the commit that made it: a
//! node that has merged through version `v` needs the keys changed after `v`.

use sync_protocol::inventory::{Inventory, Stock, StockKey, VersionedInventory};

/// Most counter entries (one per key plus one per actor of it) in one update message;
/// about 1 MiB encoded, well under the frame limit.
pub const UPDATE_ENTRIES_MAX: usize = 16_384;

/// The relay's inventory and its indexes ([`VersionedInventory`], with the relay's
/// message size).
#[derive(Debug, Default)]
pub struct RelayInventory(VersionedInventory);

impl RelayInventory {
    /// The merged state.
    pub fn merged(&self) -> &Inventory {
        self.0.merged()
    }

    /// Takes in committed changes; returns the keys that just went negative.
    pub fn commit(&mut self, changed: &Inventory, version: u64) -> Vec<(StockKey, i64)> {
        self.0.commit(changed, version)
    }

    /// The keys changed after `version`, in messages of at most [`UPDATE_ENTRIES_MAX`]
    /// entries each.
    pub fn changes_since(&self, version: u64) -> Vec<Inventory> {
        self.0.changes_since(version, UPDATE_ENTRIES_MAX)
    }

    /// The keys changed after `version`, with the version each last changed at.
    pub fn changed_since(&self, version: u64) -> impl Iterator<Item = (u64, &StockKey)> {
        self.0.changed_since(version)
    }

    /// The version at which `key` last changed, if it ever did.
    pub fn changed_at(&self, key: &StockKey) -> Option<u64> {
        self.0.changed_at(key)
    }

    /// How many keys changed after `version`.
    pub fn changed_count_since(&self, version: u64) -> usize {
        self.0.changed_count_since(version)
    }

    /// How many keys are below zero.
    pub fn exceptions_count(&self) -> usize {
        self.0.negative().len()
    }

    /// Keys whose merged value is below zero, with their counters.
    pub fn exceptions(&self) -> impl Iterator<Item = (&StockKey, Stock<'_>)> {
        self.0.exceptions()
    }
}

pub mod diff;
pub mod feed;

#[cfg(test)]
mod tests;
