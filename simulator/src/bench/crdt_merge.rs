//! `crdt-merge`: how long [`Inventory::merge`] takes to join a replica of 10,000 keys
//! with 50 actors into another (PERFORMANCE.md: under 30 ms).
//!
//! Two replicas share their keys and overlap in actors, as a node's replica and an update
//! from the relay do: the first holds actors 0 to 34 of every key, the second actors 15
//! to 49, and of the 20 actors both hold, the second is ahead on every other one. So the
//! merge inserts 15 new counters per key, joins 10 that changed and skips 10 that did not.
//! The same-run limit is the same join over a plain `BTreeMap<(key, actor), (p, n)>` of
//! the same entries: the obvious layout, one owned entry per counter. A ratio below one
//! is what the replica's layout (per-key sorted entries, actors interned) gains over it.
//! Every result is checked against that plain join, and the merge must be idempotent.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use sync_protocol::Epoch;
use sync_protocol::inventory::{Actor, Delta, Inventory, StockKey};

use super::{Goal, Options, Row};

/// The target of PERFORMANCE.md for the full size, in milliseconds.
const TARGET_MS: f64 = 30.0;
/// Actors of the whole inventory.
const ACTORS: usize = 50;
/// The first replica holds actors `0..FIRST_END`.
const FIRST_END: usize = 35;
/// The second holds actors `SECOND_START..ACTORS`.
const SECOND_START: usize = 15;

/// The plain model: per key and actor, increments and decrements.
type Plain = BTreeMap<(StockKey, Actor), (u64, u64)>;

/// Runs the bench.
pub fn run(options: &Options) -> anyhow::Result<Row> {
    let (keys, iterations) = if options.quick { (1_000, 3) } else { (10_000, 11) };
    let actors = (0..ACTORS)
        .map(|i| Ok(Actor { node_id: format!("store-{i:04}").parse()?, epoch: Epoch(i as u64 + 1) }))
        .collect::<anyhow::Result<Vec<Actor>>>()
        .context("bench actors")?;
    let stock_keys = (0..keys)
        .map(|i| Ok(StockKey { sku: format!("SKU-{i:06}").parse()?, location: "A-01".parse()? }))
        .collect::<anyhow::Result<Vec<StockKey>>>()
        .context("bench keys")?;
    let (first, first_plain) = replica(&stock_keys, &actors, 0..FIRST_END, false)?;
    let (second, second_plain) = replica(&stock_keys, &actors, SECOND_START..ACTORS, true)?;

    let mut crdt_times = Vec::with_capacity(iterations);
    let mut merged = Inventory::new();
    for _ in 0..iterations {
        let mut target = first.clone();
        let started = Instant::now();
        target.merge(black_box(&second));
        crdt_times.push(started.elapsed());
        merged = black_box(target);
    }
    let mut plain_times = Vec::with_capacity(iterations);
    let mut plain_merged = Plain::new();
    for _ in 0..iterations {
        let mut target = first_plain.clone();
        let started = Instant::now();
        plain_merge(&mut target, black_box(&second_plain));
        plain_times.push(started.elapsed());
        plain_merged = black_box(target);
    }

    let correct = agrees(&merged, &plain_merged) && {
        let mut again = merged.clone();
        again.merge(&second);
        again == merged
    };
    let (figure, best) = median_and_best(&mut crdt_times);
    let (limit, _) = median_and_best(&mut plain_times);
    let target = (!options.quick).then_some(TARGET_MS);
    let verdict = if correct { Ok(()) } else { Err("the merge disagrees with the plain join".to_owned()) };
    Ok(Row::new("crdt-merge", Goal::AtMost, "ms")
        .case(format!("{keys} keys x {ACTORS} actors, median of {iterations}"))
        .figures(figure, best, limit)
        .judged(target, true)
        .correct(verdict))
}

/// A replica holding `range` of the actors on every key, with its plain model. Each
/// counter moves up and down by amounts that depend on key and actor; with `ahead`, the
/// even actors both replicas hold have moved once more.
fn replica(
    keys: &[StockKey],
    actors: &[Actor],
    range: std::ops::Range<usize>,
    ahead: bool,
) -> anyhow::Result<(Inventory, Plain)> {
    let mut inventory = Inventory::new();
    let mut plain = Plain::new();
    for (k, key) in keys.iter().enumerate() {
        for a in range.clone() {
            let actor = &actors[a];
            let up = ((k * 7 + a * 3) % 20 + 1) as i64;
            let down = ((k * 5 + a) % 9 + 1) as i64;
            let extra = if ahead && a < FIRST_END && a % 2 == 0 { 3 } else { 0 };
            let mut p = 0u64;
            for change in [up, -down, extra] {
                if change == 0 {
                    continue;
                }
                inventory.apply(actor, &Delta { key: key.clone(), change })?;
                if change > 0 {
                    p += change.unsigned_abs();
                }
            }
            plain.insert((key.clone(), actor.clone()), (p, down.unsigned_abs()));
        }
    }
    Ok((inventory, plain))
}

/// The join of the plain model: per entry, the larger increments and decrements.
fn plain_merge(into: &mut Plain, other: &Plain) {
    for (entry, &(p, n)) in other {
        match into.get_mut(entry) {
            Some(mine) => {
                mine.0 = mine.0.max(p);
                mine.1 = mine.1.max(n);
            }
            None => {
                into.insert(entry.clone(), (p, n));
            }
        }
    }
}

/// Whether every key's merged value is the plain join's sum.
fn agrees(merged: &Inventory, plain: &Plain) -> bool {
    let mut sums: BTreeMap<&StockKey, i64> = BTreeMap::new();
    for ((key, _), &(p, n)) in plain {
        *sums.entry(key).or_default() += p as i64 - n as i64;
    }
    merged.len() == sums.len() && sums.into_iter().all(|(key, sum)| merged.value(key).ok() == Some(sum))
}

/// The median and the best of `times`, in milliseconds.
fn median_and_best(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    let median = times.get(times.len() / 2).copied().map_or(0.0, ms);
    let best = times.first().copied().map_or(0.0, ms);
    (median, best)
}
