//! Inventory as CRDT counters (PROTOCOL.md, "Inventory CRDT").
//!
//! Stock is kept per [`StockKey`] (`sku` at `location`) as a PN-counter with one entry
//! per [`Actor`], an actor being one store incarnation, `(node_id, epoch)`. An actor only
//! ever moves its own entry, and only by the deltas of the events it accepted, so:
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
//! Values are read as `i64` with overflow checked; each entry counts in `u64` per
//! direction. The counter is the PN-counter of the `crdts` crate in a flat form
//! ([`Inventory`]): a short list of `(actor, increments, decrements)` per key instead of
//! two maps of big integers per actor, which made joining a large replica an allocation
//! per counter. Property tests hold it to `crdts::PNCounter` as the reference: same
//! operations, same merges, same values.

use std::fmt;

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

mod replica;
mod versioned;

pub use replica::{Counter, Inventory, Stock};
pub use versioned::VersionedInventory;

#[cfg(test)]
mod tests;
