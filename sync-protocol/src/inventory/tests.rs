//! Tests of the inventory CRDT: the deltas of each kind, the join's laws, and that every
//! replica converges to the sum of all deltas whatever the delivery order.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn actor(node: &str, epoch: u64) -> Actor {
    Actor { node_id: node.parse().unwrap(), epoch: Epoch(epoch) }
}

fn key(sku: &str, loc: &str) -> StockKey {
    StockKey { sku: sku.parse().unwrap(), location: loc.parse().unwrap() }
}

fn event(kind: Kind, qty: i64, attrs: &[(&str, &str)]) -> Event {
    Event {
        event_id: "e-1".parse().unwrap(),
        kind,
        sku: "SKU-1".parse().unwrap(),
        location: "A1".parse().unwrap(),
        qty,
        occurred_at: None,
        device_id: None,
        shipment_id: None,
        order_id: None,
        attrs: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[track_caller]
fn check(kind: Kind, qty: i64, attrs: &[(&str, &str)], view: i64, expected: &[(&str, i64)]) {
    let deltas = deltas_of(&event(kind, qty, attrs), |_| view).unwrap();
    let got: Vec<(String, i64)> = deltas.iter().map(|d| (d.key.location.to_string(), d.change)).collect();
    let expected: Vec<(String, i64)> = expected.iter().map(|(l, c)| (l.to_string(), *c)).collect();
    assert_eq!(got, expected, "{kind} qty {qty}");
}

#[test]
fn each_kind_has_its_delta() {
    check(Kind::Receive, 5, &[], 0, &[("A1", 5)]);
    check(Kind::Pick, 2, &[], 0, &[("A1", -2)]);
    check(Kind::Ship, 3, &[], 0, &[("A1", -3)]);
    check(Kind::Dispatch, 1, &[], 0, &[("A1", -1)]);
    check(Kind::Adjust, -4, &[], 0, &[("A1", -4)]);
    check(Kind::Scan, 9, &[], 0, &[]);
    // A count is the variance against the node's view at that moment.
    check(Kind::Count, 10, &[], 7, &[("A1", 3)]);
    check(Kind::Count, 2, &[], 7, &[("A1", -5)]);
    check(Kind::Count, 7, &[], 7, &[]);
    check(Kind::Transfer, 4, &[("to_location", "B2")], 0, &[("A1", -4), ("B2", 4)]);
}

#[test]
fn a_transfer_must_name_another_destination() {
    let too_long = "L".repeat(65);
    for attrs in [&[][..], &[("to_location", "A1")][..], &[("to_location", too_long.as_str())][..]] {
        let err = deltas_of(&event(Kind::Transfer, 1, attrs), |_| 0).unwrap_err();
        assert_eq!(err.what, "attrs", "{err}");
    }
}

#[test]
fn a_new_epoch_keeps_the_old_actors_contribution() {
    let mut inv = Inventory::new();
    let k = key("SKU-1", "A1");
    inv.apply(&actor("n1", 1), &Delta { key: k.clone(), change: 10 }).unwrap();
    inv.apply(&actor("n1", 2), &Delta { key: k.clone(), change: -3 }).unwrap();
    assert_eq!(inv.value(&k).unwrap(), 7);
    let contributions: BTreeMap<String, Option<i64>> =
        inv.stock(&k).unwrap().contributions().map(|(a, v)| (a.to_string(), v)).collect();
    assert_eq!(contributions.len(), 2);
    assert_eq!(contributions.values().copied().collect::<Vec<_>>(), [Some(10), Some(-3)]);
}

#[test]
fn decoding_refuses_counters_out_of_actor_order() {
    let mut inv = Inventory::new();
    let k = key("SKU-1", "A1");
    inv.apply(&actor("n1", 1), &Delta { key: k.clone(), change: 1 }).unwrap();
    inv.apply(&actor("n2", 1), &Delta { key: k.clone(), change: 2 }).unwrap();
    let bytes = postcard::to_allocvec(&inv).unwrap();
    assert_eq!(postcard::from_bytes::<Inventory>(&bytes).unwrap(), inv);
    // The canonical form: actors sorted, then each key's entries as indexes into them.
    let counters = inv.stock(&k).unwrap().counters();
    let actors: Vec<&Actor> = counters.iter().map(|(a, _)| *a).collect();
    let entries =
        |order: [usize; 2]| vec![(&k, order.iter().map(|&i| (i, counters[i].1)).collect::<Vec<_>>())];
    let good = postcard::to_allocvec(&(&actors, entries([0, 1]))).unwrap();
    assert_eq!(good, bytes, "the encoding is the canonical form");
    // A peer's bytes that would break the order, repeat an actor or name an unknown one.
    for bad in [
        postcard::to_allocvec(&(&actors, entries([1, 0]))).unwrap(),
        postcard::to_allocvec(&(&actors, entries([0, 0]))).unwrap(),
        postcard::to_allocvec(&(&actors[..1], entries([0, 1]))).unwrap(),
        postcard::to_allocvec(&([actors[1], actors[0]], entries([0, 1]))).unwrap(),
        postcard::to_allocvec(&(&actors, vec![(&k, Vec::<(usize, Counter)>::new())])).unwrap(),
    ] {
        assert!(postcard::from_bytes::<Inventory>(&bytes).is_ok());
        assert!(postcard::from_bytes::<Inventory>(&bad).is_err());
    }
}

#[test]
fn overflow_is_refused_not_wrapped() {
    let mut inv = Inventory::new();
    let k = key("SKU-1", "A1");
    let a = actor("n1", 1);
    inv.apply(&a, &Delta { key: k.clone(), change: i64::MAX }).unwrap();
    let before = postcard::to_allocvec(&inv).unwrap();
    let err = inv.apply(&a, &Delta { key: k.clone(), change: 1 }).unwrap_err();
    assert!(matches!(err, InventoryError::Overflow { .. }), "{err}");
    assert_eq!(inv.value(&k).unwrap(), i64::MAX, "a refused delta changes nothing");
    assert_eq!(postcard::to_allocvec(&inv).unwrap(), before, "not even another counter");
    // Two actors at the maximum overflow the sum: reading says so.
    inv.apply(&actor("n2", 1), &Delta { key: k.clone(), change: 1 }).unwrap();
    assert!(inv.value(&k).is_err());
}

#[test]
fn the_keys_changed_since_a_version_are_those_whose_last_change_is_later() {
    let mut versioned = VersionedInventory::default();
    let a = actor("n1", 1);
    let commit = |versioned: &mut VersionedInventory, keys: &[&str], version: u64| {
        let mut changed = Inventory::new();
        for k in keys {
            changed.apply(&a, &Delta { key: key(k, "A1"), change: 1 }).unwrap();
        }
        versioned.commit(&changed, version);
    };
    commit(&mut versioned, &["SKU-1", "SKU-2", "SKU-3"], 10);
    commit(&mut versioned, &["SKU-2"], 20);
    commit(&mut versioned, &["SKU-4", "SKU-1"], 30);
    let since =
        |v: u64| versioned.changed_since(v).map(|(at, k)| (at, k.sku.to_string())).collect::<Vec<_>>();
    assert_eq!(
        since(0),
        [(10, "SKU-3".into()), (20, "SKU-2".into()), (30, "SKU-1".into()), (30, "SKU-4".into())]
    );
    assert_eq!(since(20), [(30, "SKU-1".to_owned()), (30, "SKU-4".into())], "a version is exclusive");
    assert_eq!(since(30), []);
    for v in [0, 10, 19, 20, 30] {
        assert_eq!(versioned.changed_count_since(v), since(v).len(), "since {v}");
    }
}

/// One actor's stream of deltas over a few keys.
fn actor_deltas() -> impl Strategy<Value = Vec<(usize, i64)>> {
    prop::collection::vec((0usize..4, -50i64..50), 0..20)
}

/// Every actor's replica after applying its own deltas.
fn replicas(streams: &[Vec<(usize, i64)>]) -> Vec<Inventory> {
    let keys = [key("S1", "A"), key("S1", "B"), key("S2", "A"), key("S3", "C")];
    streams
        .iter()
        .enumerate()
        .map(|(i, deltas)| {
            let a = actor(&format!("n{i}"), i as u64);
            let mut inv = Inventory::new();
            for (k, change) in deltas {
                inv.apply(&a, &Delta { key: keys[*k].clone(), change: *change }).unwrap();
            }
            inv
        })
        .collect()
}

fn merged(parts: &[&Inventory]) -> Inventory {
    let mut out = Inventory::new();
    for p in parts {
        out.merge(p);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_key_shortcuts_equal_their_restriction(streams in prop::collection::vec(actor_deltas(), 1..4), k in 0usize..5) {
        let r = replicas(&streams);
        let all = merged(&r.iter().collect::<Vec<_>>());
        // A key every replica may hold, and one none does.
        let k = [key("S1", "A"), key("S1", "B"), key("S2", "A"), key("S3", "C"), key("S9", "Z")][k].clone();
        let row = postcard::to_allocvec(&all.key_row(&k)).unwrap();
        prop_assert_eq!(row, postcard::to_allocvec(&all.restrict([&k])).unwrap());
        let mut joined = r[0].clone();
        joined.merge(&all.restrict([&k]));
        let mut shortcut = r[0].clone();
        shortcut.merge_key(&all, &k);
        prop_assert_eq!(&shortcut, &joined);
        prop_assert_eq!(postcard::to_allocvec(&shortcut).unwrap(), postcard::to_allocvec(&joined).unwrap());
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(streams in prop::collection::vec(actor_deltas(), 3)) {
        let r = replicas(&streams);
        let (a, b, c) = (&r[0], &r[1], &r[2]);
        prop_assert_eq!(merged(&[a, b]), merged(&[b, a]));
        let ab_c = merged(&[&merged(&[a, b]), c]);
        let a_bc = merged(&[a, &merged(&[b, c])]);
        prop_assert_eq!(&ab_c, &a_bc);
        prop_assert_eq!(merged(&[&ab_c, &ab_c]), ab_c.clone());
        prop_assert_eq!(merged(&[&ab_c, a]), ab_c);
    }

    #[test]
    fn every_delivery_order_converges_to_the_sum_of_deltas(
        streams in prop::collection::vec(actor_deltas(), 1..5),
        deliveries in prop::collection::vec((0usize..5, 0usize..5), 0..40),
    ) {
        // Each replica starts with its own state and receives others' (possibly stale,
        // repeated, out of order) states; after a final full exchange all agree.
        let own = replicas(&streams);
        let mut live = own.clone();
        for (from, to) in deliveries {
            let (from, to) = (from % live.len(), to % live.len());
            let sent = live[from].clone();
            live[to].merge(&sent);
        }
        let everything = merged(&own.iter().collect::<Vec<_>>());
        for replica in &mut live {
            replica.merge(&everything);
            prop_assert_eq!(&*replica, &everything);
        }
        let mut sums: BTreeMap<StockKey, i64> = BTreeMap::new();
        let keys = [key("S1", "A"), key("S1", "B"), key("S2", "A"), key("S3", "C")];
        for deltas in &streams {
            for (k, change) in deltas {
                *sums.entry(keys[*k].clone()).or_default() += change;
            }
        }
        for (k, sum) in sums {
            prop_assert_eq!(everything.value(&k).unwrap(), sum);
        }
    }

    #[test]
    fn counters_agree_with_the_crdts_pn_counter(
        streams in prop::collection::vec(actor_deltas(), 1..5),
        deliveries in prop::collection::vec((0usize..5, 0usize..5), 0..20),
    ) {
        // The same operations and the same merges on `crdts::PNCounter` (one per key, an
        // entry per actor): every replica reads the same value of every key.
        use crdts::{CmRDT, CvRDT, PNCounter};
        let keys = [key("S1", "A"), key("S1", "B"), key("S2", "A"), key("S3", "C")];
        let mut ours = replicas(&streams);
        let mut reference: Vec<Vec<PNCounter<usize>>> = streams
            .iter()
            .enumerate()
            .map(|(i, deltas)| {
                let mut counters = vec![PNCounter::new(); keys.len()];
                for (k, change) in deltas {
                    let steps = change.unsigned_abs();
                    let op = if *change >= 0 {
                        counters[*k].inc_many(i, steps)
                    } else {
                        counters[*k].dec_many(i, steps)
                    };
                    counters[*k].apply(op);
                }
                counters
            })
            .collect();
        for (from, to) in deliveries {
            let (from, to) = (from % ours.len(), to % ours.len());
            let sent = ours[from].clone();
            ours[to].merge(&sent);
            let sent = reference[from].clone();
            for (mine, theirs) in reference[to].iter_mut().zip(sent) {
                mine.merge(theirs);
            }
        }
        for (replica, counters) in ours.iter().zip(&reference) {
            for (k, counter) in keys.iter().zip(counters) {
                let expected = i64::try_from(counter.read()).unwrap();
                prop_assert_eq!(replica.value(k).unwrap(), expected, "{}", k);
            }
        }
    }

    #[test]
    fn restricted_states_merge_like_the_whole(streams in prop::collection::vec(actor_deltas(), 2)) {
        let r = replicas(&streams);
        let keys: Vec<StockKey> = r[0].iter().map(|(k, _)| k.clone()).collect();
        let mut via_delta = r[1].clone();
        via_delta.merge(&r[0].restrict(&keys));
        prop_assert_eq!(via_delta, merged(&[&r[1], &r[0]]));
    }
}
