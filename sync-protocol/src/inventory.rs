//! Inventory as CRDT counters (PROTOCOL.md, "Inventory CRDT").
//!
//! Stock is kept per [`StockKey`] (`sku` at `location`) as one PN-counter per [`Actor`],
//! an actor being one store incarnation, `(node_id, epoch)`. An actor only ever moves its
//! own counter, and only by the deltas of the events it accepted, so:
//! - the value of a key is the sum of every actor's counter, which is the sum of every
//!   accepted event's delta, whatever order the deltas arrived in;
//! - merging two replicas is the CRDT join (per actor, the larger increments and the
//!   larger decrements win), which is commutative, associative and idempotent: replicas
//!   that have seen the same deltas agree, however often and in whatever order they
//!   exchanged state;
//! - a wiped node starts a new actor, and the old actor's contributions stay in the merge.
//!
//! The delta of an event is fixed once, when the node accepts it ([`deltas_of`]), and
//! travels with the event: a `count` becomes a variance against the node's view at that
//! moment, so moves made elsewhere at the same time still apply when everything merges.
//!
//! Values are read as `i64` with overflow checked; the underlying counters count in
//! `u64` per direction and [`crdts`] reads them as big integers.

use std::collections::BTreeMap;
use std::fmt;

use crdts::{CmRDT, CvRDT, PNCounter};
use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind};
use crate::ids::{Epoch, Location, NodeId, ParseError};

/// The `attrs` key that names where a `transfer` moves its quantity to.
pub const TRANSFER_TO: &str = "to_location";
/// Largest `|change|` of one delta. Other kinds stay within `QTY_ABS_MAX`; a count's
/// variance may be larger but not this large, which keeps every counter far from `u64`
/// overflow however many events move it.
pub const DELTA_ABS_MAX: i64 = 1_000_000_000_000;

/// One store incarnation: the node and the epoch of its store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node.
    pub node_id: NodeId,
    /// Its store's epoch.
    pub epoch: Epoch,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node_id, self.epoch)
    }
}

/// Where stock is counted: an article at a location.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StockKey {
    /// The article.
    pub sku: crate::ids::Sku,
    /// The location.
    pub location: Location,
}

impl fmt::Display for StockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.sku, self.location)
    }
}

/// The change one event makes to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Which stock.
    pub key: StockKey,
    /// By how much.
    pub change: i64,
}

/// Why an inventory operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// A value or a counter left the range it is kept in.
    #[error("inventory of {key} overflows: {detail}")]
    Overflow {
        /// The key.
        key: StockKey,
        /// What overflowed.
        detail: String,
    },
}

/// The deltas of an accepted event, given `view`, the node's current merged value of a
/// key (used only by `count`). A `scan` changes nothing and yields no delta; a
/// `transfer` yields two, out of `location` and into `attrs.to_location`.
pub fn deltas_of(event: &Event, mut view: impl FnMut(&StockKey) -> i64) -> Result<Vec<Delta>, ParseError> {
    let key = StockKey { sku: event.sku.clone(), location: event.location.clone() };
    let qty = event.qty;
    let one = |change: i64, key: StockKey| if change == 0 { Vec::new() } else { vec![Delta { key, change }] };
    Ok(match event.kind {
        Kind::Scan => Vec::new(),
        Kind::Receive | Kind::Adjust => one(qty, key),
        Kind::Pick | Kind::Ship | Kind::Dispatch => one(-qty, key),
        Kind::Count => {
            let variance = qty.saturating_sub(view(&key));
            if variance.unsigned_abs() > DELTA_ABS_MAX.unsigned_abs() {
                return Err(ParseError::new(
                    "qty",
                    format!(
                        "a count of {qty} against a view of {} is a variance beyond ±{DELTA_ABS_MAX}",
                        view(&key)
                    ),
                ));
            }
            one(variance, key)
        }
        Kind::Transfer => {
            let to = transfer_destination(event)?;
            if to == event.location {
                return Err(ParseError::new(
                    "attrs",
                    "a transfer needs a to_location other than its location",
                ));
            }
            let into = StockKey { sku: event.sku.clone(), location: to };
            let mut out = one(-qty, key);
            out.extend(one(qty, into));
            out
        }
    })
}

/// Checks deltas that arrived with `event` from a peer: a count carries at most one
/// delta, on its own key, within ±[`DELTA_ABS_MAX`]; every other kind carries exactly
/// what [`deltas_of`] gives. A node cannot move stock its events do not describe.
pub fn check_deltas(event: &Event, deltas: &[Delta]) -> Result<(), ParseError> {
    let bad = |reason: String| Err(ParseError::new("deltas", reason));
    if event.kind != Kind::Count {
        let expected = deltas_of(event, |_| 0)?;
        return if deltas == expected.as_slice() {
            Ok(())
        } else {
            bad(format!("{} event {} carries deltas that do not match it", event.kind, event.event_id))
        };
    }
    match deltas {
        [] => Ok(()),
        [d] if d.key.sku != event.sku || d.key.location != event.location => {
            bad(format!("count {} moves another key ({})", event.event_id, d.key))
        }
        [d] if d.change == 0 || d.change.unsigned_abs() > DELTA_ABS_MAX.unsigned_abs() => {
            bad(format!("count {} has a variance of {}", event.event_id, d.change))
        }
        [_] => Ok(()),
        _ => bad(format!("count {} carries {} deltas", event.event_id, deltas.len())),
    }
}

/// The destination of a transfer: `attrs.to_location`, a valid [`Location`].
pub fn transfer_destination(event: &Event) -> Result<Location, ParseError> {
    let to = event.attrs.get(TRANSFER_TO).ok_or_else(|| {
        ParseError::new("attrs", format!("a transfer names its destination in attrs.{TRANSFER_TO}"))
    })?;
    to.parse::<Location>().map_err(|e| ParseError::new("attrs", format!("{TRANSFER_TO}: {}", e.reason)))
}

/// One key's counters: a PN-counter per actor, each moved only by its own actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    actors: BTreeMap<Actor, PNCounter<Actor>>,
}

impl Stock {
    /// The merged value: the sum of every actor's counter.
    pub fn value(&self) -> Option<i64> {
        self.actors.values().try_fold(0i64, |sum, c| sum.checked_add(read(c)?))
    }

    /// Each actor's contribution.
    pub fn contributions(&self) -> impl Iterator<Item = (&Actor, Option<i64>)> {
        self.actors.iter().map(|(a, c)| (a, read(c)))
    }

    /// The contribution of one actor (0 if it never touched this key).
    pub fn contribution(&self, actor: &Actor) -> Option<i64> {
        self.actors.get(actor).map_or(Some(0), read)
    }

    fn apply(&mut self, actor: &Actor, change: i64) {
        let counter = self.actors.entry(actor.clone()).or_default();
        let steps = change.unsigned_abs();
        let op = if change >= 0 {
            counter.inc_many(actor.clone(), steps)
        } else {
            counter.dec_many(actor.clone(), steps)
        };
        counter.apply(op);
    }

    /// The join. A counter equal to ours is skipped (the join is idempotent), a counter
    /// that differs is merged in place, and one we lack is cloned (its join with
    /// nothing), so merging a replica that is mostly up to date clones almost nothing.
    fn merge(&mut self, other: &Stock) {
        join_maps(&mut self.actors, &other.actors, |mine, theirs| {
            if mine != theirs {
                mine.merge(theirs.clone());
            }
        });
    }
}

/// Joins `other` into `into`, entry by entry: `join` for a key both hold, a clone for a
/// key only `other` holds. Both maps are sorted, so a large `other` is walked in step
/// with `into` (one comparison per entry instead of a lookup each); a small one is
/// looked up key by key, so that a short update into a large replica costs only its own
/// length.
fn join_maps<K: Ord + Clone, V: Clone>(
    into: &mut BTreeMap<K, V>,
    other: &BTreeMap<K, V>,
    mut join: impl FnMut(&mut V, &V),
) {
    if into.is_empty() {
        into.clone_from(other);
        return;
    }
    /// Below this share of `into`'s length, `other` is looked up key by key.
    const LOOKUP_SHARE: usize = 16;
    if other.len().saturating_mul(LOOKUP_SHARE) < into.len() {
        for (key, theirs) in other {
            match into.get_mut(key) {
                Some(mine) => join(mine, theirs),
                None => {
                    into.insert(key.clone(), theirs.clone());
                }
            }
        }
        return;
    }
    let mut missing = Vec::new();
    let mut theirs = other.iter().peekable();
    for (key, mine) in into.iter_mut() {
        while let Some(entry) = theirs.next_if(|(k, _)| *k < key) {
            missing.push(entry);
        }
        if let Some((_, value)) = theirs.next_if(|(k, _)| *k == key) {
            join(mine, value);
        }
    }
    missing.extend(theirs);
    for (key, value) in missing {
        into.insert(key.clone(), value.clone());
    }
}

fn read(counter: &PNCounter<Actor>) -> Option<i64> {
    i64::try_from(counter.read()).ok()
}

/// A replica of the inventory: every key this replica has heard of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    stock: BTreeMap<StockKey, Stock>,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `actor`'s delta. The caller applies each delta exactly once (the node in
    /// the transaction that stores the event, the relay behind its watermark).
    pub fn apply(&mut self, actor: &Actor, delta: &Delta) -> Result<(), InventoryError> {
        let stock = self.stock.entry(delta.key.clone()).or_default();
        let before = stock.contribution(actor);
        if before.and_then(|b| b.checked_add(delta.change)).is_none() {
            return Err(InventoryError::Overflow {
                key: delta.key.clone(),
                detail: format!("{actor} at {before:?} by {}", delta.change),
            });
        }
        stock.apply(actor, delta.change);
        Ok(())
    }

    /// The CRDT join with `other`. Keys and counters that are already equal cost a
    /// comparison and no allocation; only what changed is cloned.
    pub fn merge(&mut self, other: &Inventory) {
        join_maps(&mut self.stock, &other.stock, Stock::merge);
    }

    /// The merged value of `key` (0 if unknown).
    pub fn value(&self, key: &StockKey) -> Result<i64, InventoryError> {
        match self.stock.get(key) {
            None => Ok(0),
            Some(stock) => stock
                .value()
                .ok_or_else(|| InventoryError::Overflow { key: key.clone(), detail: "sum of actors".into() }),
        }
    }

    /// One key's counters, if any actor touched it.
    pub fn stock(&self, key: &StockKey) -> Option<&Stock> {
        self.stock.get(key)
    }

    /// Every key with its counters, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&StockKey, &Stock)> {
        self.stock.iter()
    }

    /// The part of this replica that covers `keys`: the delta-state to send a replica
    /// that may be behind on exactly those keys.
    pub fn restrict<'a>(&self, keys: impl IntoIterator<Item = &'a StockKey>) -> Inventory {
        let stock =
            keys.into_iter().filter_map(|k| self.stock.get(k).map(|s| (k.clone(), s.clone()))).collect();
        Inventory { stock }
    }

    /// How many keys this replica knows.
    pub fn len(&self) -> usize {
        self.stock.len()
    }

    /// Whether this replica knows no key.
    pub fn is_empty(&self) -> bool {
        self.stock.is_empty()
    }
}

mod versioned;

pub use versioned::VersionedInventory;

#[cfg(test)]
mod tests;
