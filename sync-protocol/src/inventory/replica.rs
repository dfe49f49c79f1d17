//! A replica of the inventory and its join.
//!
//! Each key's PN-counter is a short list of `(actor, counter)` entries. Actors are
//! interned per replica: the list holds an index into the replica's actor table, so
//! that joining two replicas compares integers and copies sixteen-byte counters, and the
//! thousands of keys an actor touched share one copy of its name. Merging a replica with
//! another table first maps the other's indexes onto this one's (a lookup per actor, not
//! per counter).
//!
//! On the wire and on disk a replica is canonical: only the actors its keys use, sorted,
//! and each key's entries in that order, so equal replicas encode to equal bytes whatever
//! their history. Decoding checks that order, so a decoded replica keeps every invariant
//! the methods rely on.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Actor, Delta, InventoryError, StockKey};

/// An actor's index in one replica's table.
type Ix = usize;

/// One actor's part of a key's PN-counter: how much it has added and how much it has
/// taken away, each only ever growing. The join of two views of the same actor's counter
/// is the larger of each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    increments: u64,
    decrements: u64,
}

impl Counter {
    /// The counter's value, if it fits in an `i64`.
    pub fn value(&self) -> Option<i64> {
        i64::try_from(i128::from(self.increments) - i128::from(self.decrements)).ok()
    }

    /// The counter moved by `change`, or `None` if a direction or the value would leave
    /// its range.
    fn moved(self, change: i64) -> Option<Counter> {
        let steps = change.unsigned_abs();
        let next = if change >= 0 {
            Counter { increments: self.increments.checked_add(steps)?, ..self }
        } else {
            Counter { decrements: self.decrements.checked_add(steps)?, ..self }
        };
        next.value().map(|_| next)
    }

    /// The join: the larger of each direction.
    fn join(&mut self, other: &Counter) {
        self.increments = self.increments.max(other.increments);
        self.decrements = self.decrements.max(other.decrements);
    }
}

/// A replica's actors, each with its index.
#[derive(Debug, Clone, Default)]
struct Actors {
    list: Vec<Actor>,
    index: BTreeMap<Actor, Ix>,
}

impl Actors {
    fn intern(&mut self, actor: &Actor) -> Ix {
        if let Some(&ix) = self.index.get(actor) {
            return ix;
        }
        let ix = self.list.len();
        self.list.push(actor.clone());
        self.index.insert(actor.clone(), ix);
        ix
    }
}

/// One key's entries, sorted by index, one per actor.
#[derive(Debug, Clone, Default)]
struct Counters(Vec<(Ix, Counter)>);

impl Counters {
    /// Moves `ix`'s counter by `change`, or returns `false` and changes nothing if that
    /// would overflow it.
    fn apply(&mut self, ix: Ix, change: i64) -> bool {
        match self.0.binary_search_by_key(&ix, |(i, _)| *i) {
            Ok(at) => match self.0[at].1.moved(change) {
                Some(next) => self.0[at].1 = next,
                None => return false,
            },
            Err(at) => match Counter::default().moved(change) {
                Some(next) => self.0.insert(at, (ix, next)),
                None => return false,
            },
        }
        true
    }

    /// `other`'s entries with their indexes mapped through `remap`, sorted again unless
    /// the map keeps the order.
    fn remapped(&self, remap: &Remap) -> Counters {
        let mut out: Vec<(Ix, Counter)> = self.0.iter().map(|&(ix, c)| (remap.ixs[ix], c)).collect();
        if !remap.monotonic {
            out.sort_unstable_by_key(|(ix, _)| *ix);
        }
        Counters(out)
    }

    /// The join with `other`, whose entries are sorted by this replica's indexes. Both
    /// are walked in step: entries both hold are joined in place, and the list is rebuilt
    /// only if `other` holds actors this one lacks.
    fn merge_sorted(&mut self, other: impl Iterator<Item = (Ix, Counter)> + Clone) {
        let mut missing = 0;
        let mut mine = 0;
        for (ix, theirs) in other.clone() {
            while mine < self.0.len() && self.0[mine].0 < ix {
                mine += 1;
            }
            match self.0.get_mut(mine) {
                Some((i, counter)) if *i == ix => {
                    counter.join(&theirs);
                    mine += 1;
                }
                _ => missing += 1,
            }
        }
        if missing == 0 {
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len() + missing);
        let mut old = self.0.iter().copied().peekable();
        for (ix, theirs) in other {
            merged.extend(std::iter::from_fn(|| old.next_if(|(i, _)| *i < ix)));
            // Entries both hold were joined above.
            let both = old.next_if(|(i, _)| *i == ix);
            merged.push(both.unwrap_or((ix, theirs)));
        }
        merged.extend(old);
        self.0 = merged;
    }

    fn merge(&mut self, other: &Counters, remap: &Remap) {
        if remap.monotonic {
            self.merge_sorted(other.0.iter().map(|&(ix, c)| (remap.ixs[ix], c)));
        } else {
            self.merge_sorted(other.remapped(remap).0.into_iter());
        }
    }
}

/// How another replica's actor indexes map onto this one's.
struct Remap {
    ixs: Vec<Ix>,
    /// Every index maps to itself.
    identity: bool,
    /// The map keeps the order, so mapped entries stay sorted.
    monotonic: bool,
}

/// One key's counters as seen through its replica's actor table.
#[derive(Clone, Copy)]
pub struct Stock<'a> {
    actors: &'a [Actor],
    counters: &'a Counters,
}

impl<'a> Stock<'a> {
    /// The merged value: the sum of every actor's counter.
    pub fn value(&self) -> Option<i64> {
        self.counters.0.iter().try_fold(0i64, |sum, (_, c)| sum.checked_add(c.value()?))
    }

    /// How many actors contributed.
    pub fn len(&self) -> usize {
        self.counters.0.len()
    }

    /// Whether no actor contributed.
    pub fn is_empty(&self) -> bool {
        self.counters.0.is_empty()
    }

    /// Each actor's counter, in actor order.
    pub fn counters(&self) -> Vec<(&'a Actor, Counter)> {
        let mut entries: Vec<(&'a Actor, Counter)> =
            self.counters.0.iter().map(|&(ix, c)| (&self.actors[ix], c)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// Each actor's contribution, in actor order.
    pub fn contributions(&self) -> impl ExactSizeIterator<Item = (&'a Actor, Option<i64>)> + use<'a> {
        self.counters().into_iter().map(|(a, c)| (a, c.value()))
    }

    /// The contribution of one actor (0 if it never touched this key).
    pub fn contribution(&self, actor: &Actor) -> Option<i64> {
        self.counters.0.iter().find(|(ix, _)| self.actors[*ix] == *actor).map_or(Some(0), |(_, c)| c.value())
    }
}

impl PartialEq for Stock<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.counters() == other.counters()
    }
}

impl fmt::Debug for Stock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.counters()).finish()
    }
}

/// A replica of the inventory: every key this replica has heard of, with every actor's
/// counter of it.
#[derive(Clone, Default)]
pub struct Inventory {
    actors: Actors,
    stock: BTreeMap<StockKey, Counters>,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `actor`'s delta. The caller applies each delta exactly once to a replica
    /// (the node in the transaction that stores the event, and again on open to the
    /// stock rows that lag behind it; the relay behind its watermark). A delta
    /// that would overflow the counter is refused and leaves every value as it was: the
    /// node's writer relies on that to apply an event's one delta without a trial copy.
    pub fn apply(&mut self, actor: &Actor, delta: &Delta) -> Result<(), InventoryError> {
        let ix = self.actors.intern(actor);
        // Most deltas move a key already held: find it without copying the key.
        if !self.stock.contains_key(&delta.key) {
            self.stock.insert(delta.key.clone(), Counters::default());
        }
        if let Some(counters) = self.stock.get_mut(&delta.key)
            && counters.apply(ix, delta.change)
        {
            return Ok(());
        }
        let before = self.stock(&delta.key).map(|s| s.contribution(actor));
        if self.stock.get(&delta.key).is_some_and(|c| c.0.is_empty()) {
            self.stock.remove(&delta.key);
        }
        Err(InventoryError::Overflow {
            key: delta.key.clone(),
            detail: format!("{actor} at {:?} by {}", before.flatten(), delta.change),
        })
    }

    /// The CRDT join with `other`: per key and actor, the larger increments and the
    /// larger decrements. Keys and actors both hold are joined in place; only what this
    /// replica lacks is copied.
    pub fn merge(&mut self, other: &Inventory) {
        let ixs: Vec<Ix> = other.actors.list.iter().map(|a| self.actors.intern(a)).collect();
        let identity = ixs.iter().enumerate().all(|(i, &ix)| ix == i);
        let monotonic = ixs.windows(2).all(|w| w[0] < w[1]);
        let remap = Remap { ixs, identity, monotonic };
        join_maps(
            &mut self.stock,
            &other.stock,
            |mine, theirs| mine.merge(theirs, &remap),
            |theirs| if remap.identity { theirs.clone() } else { theirs.remapped(&remap) },
        );
    }

    /// The merged value of `key` (0 if unknown).
    pub fn value(&self, key: &StockKey) -> Result<i64, InventoryError> {
        match self.stock(key) {
            None => Ok(0),
            Some(stock) => stock
                .value()
                .ok_or_else(|| InventoryError::Overflow { key: key.clone(), detail: "sum of actors".into() }),
        }
    }

    /// One key's counters, if any actor touched it.
    pub fn stock(&self, key: &StockKey) -> Option<Stock<'_>> {
        self.stock.get(key).map(|counters| Stock { actors: &self.actors.list, counters })
    }

    /// Every key with its counters, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&StockKey, Stock<'_>)> {
        self.stock.iter().map(|(key, counters)| (key, Stock { actors: &self.actors.list, counters }))
    }

    /// The part of this replica that covers `keys`: the delta-state to send a replica
    /// that may be behind on exactly those keys. It names only the actors of those keys.
    pub fn restrict<'a>(&self, keys: impl IntoIterator<Item = &'a StockKey>) -> Inventory {
        let mut out = Inventory::new();
        for key in keys {
            if let Some(counters) = self.stock.get(key) {
                let entries = counters
                    .0
                    .iter()
                    .map(|&(ix, c)| (out.actors.intern(&self.actors.list[ix]), c))
                    .collect::<Vec<_>>();
                let mut counters = Counters(entries);
                counters.0.sort_unstable_by_key(|(ix, _)| *ix);
                out.stock.insert(key.clone(), counters);
            }
        }
        out
    }

    /// Joins `other`'s counters of `key` into this replica: the same as merging
    /// `other.restrict([key])`, without building that restriction. This is how a group
    /// of appends brings a key's current state into its overlay, once per key.
    pub fn merge_key(&mut self, other: &Inventory, key: &StockKey) {
        let Some(theirs) = other.stock.get(key) else { return };
        let mut entries: Vec<(Ix, Counter)> =
            theirs.0.iter().map(|&(ix, c)| (self.actors.intern(&other.actors.list[ix]), c)).collect();
        entries.sort_unstable_by_key(|(ix, _)| *ix);
        match self.stock.get_mut(key) {
            Some(mine) => mine.merge_sorted(entries.into_iter()),
            None => {
                self.stock.insert(key.clone(), Counters(entries));
            }
        }
    }

    /// `key`'s part of this replica in the canonical encoding: the bytes of
    /// `self.restrict([key])`, without building it. Stores write one per changed key:
    /// the relay in every commit, the node at its stock checkpoints.
    pub fn key_row(&self, key: &StockKey) -> impl Serialize + '_ {
        let mut entries: Vec<(&Actor, Counter)> = self
            .stock
            .get(key)
            .map(|counters| counters.0.iter().map(|&(ix, c)| (&self.actors.list[ix], c)).collect())
            .unwrap_or_default();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let held = self.stock.get_key_value(key).map(|(key, _)| key);
        WireRef {
            actors: entries.iter().map(|(actor, _)| *actor).collect(),
            stock: held
                .map(|key| (key, entries.iter().enumerate().map(|(ix, (_, c))| (ix, *c)).collect()))
                .into_iter()
                .collect(),
        }
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

impl PartialEq for Inventory {
    /// Replicas are equal when they hold the same counters, whatever their tables.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Inventory {}

impl fmt::Debug for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Joins `other` into `into`, entry by entry: `join` for a key both hold, `adopt` for a
/// key only `other` holds. Both maps are sorted, so a large `other` is walked in step
/// with `into` (one comparison per entry instead of a lookup each); a small one is
/// looked up key by key, so that a short update into a large replica costs only its own
/// length.
fn join_maps<K: Ord + Clone, V>(
    into: &mut BTreeMap<K, V>,
    other: &BTreeMap<K, V>,
    mut join: impl FnMut(&mut V, &V),
    mut adopt: impl FnMut(&V) -> V,
) {
    /// Below this share of `into`'s length, `other` is looked up key by key.
    const LOOKUP_SHARE: usize = 16;
    if other.len().saturating_mul(LOOKUP_SHARE) < into.len() {
        for (key, theirs) in other {
            match into.get_mut(key) {
                Some(mine) => join(mine, theirs),
                None => {
                    into.insert(key.clone(), adopt(theirs));
                }
            }
        }
        return;
    }
    let mut missing = Vec::new();
    let mut theirs = other.iter().peekable();
    for (key, mine) in into.iter_mut() {
        missing.extend(std::iter::from_fn(|| theirs.next_if(|(k, _)| *k < key)));
        if let Some((_, value)) = theirs.next_if(|(k, _)| *k == key) {
            join(mine, value);
        }
    }
    missing.extend(theirs);
    if into.is_empty() {
        *into = missing.into_iter().map(|(k, v)| (k.clone(), adopt(v))).collect();
        return;
    }
    for (key, value) in missing {
        into.insert(key.clone(), adopt(value));
    }
}

/// The canonical encoding: the actors the keys use, sorted, and each key's entries as
/// indexes into that list, in order.
#[derive(Serialize)]
struct WireRef<'a> {
    actors: Vec<&'a Actor>,
    stock: Vec<(&'a StockKey, Vec<(Ix, Counter)>)>,
}

/// What [`WireRef`] encodes, decoded.
#[derive(Deserialize)]
struct Wire {
    actors: Vec<Actor>,
    stock: Vec<(StockKey, Vec<(Ix, Counter)>)>,
}

impl Serialize for Inventory {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut used = vec![false; self.actors.list.len()];
        for (ix, _) in self.stock.values().flat_map(|c| &c.0) {
            used[*ix] = true;
        }
        let mut order: Vec<Ix> = (0..self.actors.list.len()).filter(|&i| used[i]).collect();
        order.sort_unstable_by(|a, b| self.actors.list[*a].cmp(&self.actors.list[*b]));
        let mut canonical = vec![0; self.actors.list.len()];
        for (new, old) in order.iter().enumerate() {
            canonical[*old] = new;
        }
        let stock = self
            .stock
            .iter()
            .map(|(key, counters)| {
                let mut entries: Vec<(Ix, Counter)> =
                    counters.0.iter().map(|&(ix, c)| (canonical[ix], c)).collect();
                entries.sort_unstable_by_key(|(ix, _)| *ix);
                (key, entries)
            })
            .collect();
        let actors = order.iter().map(|&ix| &self.actors.list[ix]).collect();
        WireRef { actors, stock }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Inventory {
    /// Refuses what the canonical form rules out (actors or keys out of order or
    /// repeated, a key without entries, an entry naming no actor), so a peer's bytes
    /// cannot break an invariant.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = Wire::deserialize(deserializer)?;
        if wire.actors.windows(2).any(|w| w[0] >= w[1]) {
            return Err(D::Error::custom("inventory actors out of order or repeated"));
        }
        if wire.stock.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(D::Error::custom("inventory keys out of order or repeated"));
        }
        let known = wire.actors.len();
        for (key, entries) in &wire.stock {
            if entries.is_empty()
                || entries.windows(2).any(|w| w[0].0 >= w[1].0)
                || entries.iter().any(|(ix, _)| *ix >= known)
            {
                return Err(D::Error::custom(format!("inventory counters of {key} out of order or unknown")));
            }
        }
        let index = wire.actors.iter().enumerate().map(|(i, a)| (a.clone(), i)).collect();
        Ok(Inventory {
            actors: Actors { list: wire.actors, index },
            stock: wire.stock.into_iter().map(|(key, entries)| (key, Counters(entries))).collect(),
        })
    }
}
