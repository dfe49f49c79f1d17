//! Inventory end to end (PROTOCOL.md, "Inventory CRDT"): concurrent offline moves on two
//! nodes converge everywhere to the sum of all deltas, negative merged stock is listed as
//! an exception, and relay restarts and node power cuts apply no delta twice and lose none.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use simulator::cluster::Cluster;
use simulator::ledger::Ledger;
use simulator::process::Node;

use crate::{join_all, run_tool, scanner_configs, spawn_scanners};

/// `(sku, location)` → `(node_id/epoch)` → value.
type Contributions = BTreeMap<(String, String), BTreeMap<String, i64>>;

async fn post(node: &Node, event: Value) -> u16 {
    let resp = reqwest::Client::new().post(node.events_url()).json(&event).send().await.unwrap();
    resp.status().as_u16()
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}")).await.unwrap().json().await.unwrap()
}

/// Every delta in the relay log, folded per key and actor: what every replica must show.
async fn fold_of_log(cluster: &Cluster) -> Contributions {
    let base = cluster.relay.client().base().to_owned();
    let mut out = Contributions::new();
    let mut from = 0;
    loop {
        let page = get(&base, &format!("/v1/log?from={from}&limit=10000")).await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        for e in events {
            let actor = format!("{}/{}", e["node_id"].as_str().unwrap(), e["epoch"].as_str().unwrap());
            for d in e["deltas"].as_array().unwrap() {
                let key = (d["sku"].as_str().unwrap().to_owned(), d["location"].as_str().unwrap().to_owned());
                *out.entry(key).or_default().entry(actor.clone()).or_default() +=
                    d["change"].as_i64().unwrap();
            }
        }
        from = page["next"].as_u64().unwrap();
    }
}

/// What one replica (`/v1/inventory/{sku}` of a node or the relay) says of `skus`:
/// contributions per key and actor, and the merged value it reports per key.
async fn replica(
    base: &str,
    skus: &[String],
    merged_field: &str,
) -> (Contributions, BTreeMap<(String, String), i64>) {
    let mut contributions = Contributions::new();
    let mut merged = BTreeMap::new();
    for sku in skus {
        let view = get(base, &format!("/v1/inventory/{sku}")).await;
        for loc in view["locations"].as_array().unwrap() {
            let key = (sku.clone(), loc["location"].as_str().unwrap().to_owned());
            merged.insert(key.clone(), loc[merged_field].as_i64().unwrap());
            for a in loc["actors"].as_array().unwrap() {
                let actor = format!("{}/{}", a["node_id"].as_str().unwrap(), a["epoch"].as_str().unwrap());
                let value = a["value"].as_i64().unwrap();
                if value != 0 {
                    contributions.entry(key.clone()).or_default().insert(actor, value);
                }
            }
        }
    }
    (contributions, merged)
}

fn without_zeros(mut c: Contributions) -> Contributions {
    for actors in c.values_mut() {
        actors.retain(|_, v| *v != 0);
    }
    c.retain(|_, actors| !actors.is_empty());
    c
}

/// Waits until the relay and every node hold exactly the fold of the relay log, per key
/// and actor, and report merged values equal to its sums. Returns the merged values.
async fn converged(cluster: &Cluster, timeout: Duration) -> BTreeMap<(String, String), i64> {
    let deadline = Instant::now() + timeout;
    loop {
        // The backlogs first, then the log: once every node's backlog is empty, a log read
        // after holds everything the nodes had accepted. Read the other way round, the log
        // could miss the last events and the comparison below, which covers only the keys
        // in the log, would pass on a partial fold.
        let mut mismatch = None;
        for node in &cluster.nodes {
            let backlog = node.client().node_status().await.map_or(u64::MAX, |s| s.backlog_events());
            if backlog > 0 {
                mismatch = Some(format!("{}: {backlog} events not yet at the relay", node.name()));
            }
        }
        let fold = without_zeros(fold_of_log(cluster).await);
        let skus: Vec<String> = {
            let mut s: Vec<String> = fold.keys().map(|(sku, _)| sku.clone()).collect();
            s.dedup();
            s
        };
        let sums: BTreeMap<(String, String), i64> =
            fold.iter().map(|(k, actors)| (k.clone(), actors.values().sum())).collect();
        let relay_base = cluster.relay.client().base().to_owned();
        let mut replicas = vec![("relay".to_owned(), relay_base, "value")];
        for node in &cluster.nodes {
            replicas.push((node.name().to_owned(), node.client().base().to_owned(), "merged"));
        }
        if mismatch.is_some() {
            replicas.clear();
        }
        for (name, base, field) in &replicas {
            let (contributions, merged) = replica(base, &skus, field).await;
            let merged_nonzero: BTreeMap<_, _> =
                merged.into_iter().filter(|(k, _)| fold.contains_key(k)).collect();
            if contributions != fold {
                mismatch = Some(format!("{name}: contributions differ from the fold of the relay log"));
            } else if merged_nonzero != sums {
                mismatch = Some(format!("{name}: merged values differ from the sums of the relay log"));
            }
            if mismatch.is_some() {
                break;
            }
        }
        match mismatch {
            None => return sums,
            Some(why) => assert!(Instant::now() < deadline, "inventory did not converge: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offline_picks_and_counts_converge_and_negative_stock_is_listed() {
    let mut cluster = Cluster::start(&["store-a", "store-b"]).await.unwrap();
    let ev = |id: &str, kind: &str, qty: i64| json!({"event_id": id, "kind": kind, "sku": "SKU-7", "location": "A-01", "qty": qty});
    assert_eq!(post(&cluster.nodes[0], ev("a-recv", "receive", 10)).await, 201);
    let merged = converged(&cluster, Duration::from_secs(30)).await;
    assert_eq!(merged[&("SKU-7".to_owned(), "A-01".to_owned())], 10);

    // The WAN is down for both sites: each sees only its own moves.
    cluster.relay.kill().unwrap();
    assert_eq!(post(&cluster.nodes[0], ev("a-pick", "pick", 8)).await, 201);
    assert_eq!(post(&cluster.nodes[1], ev("b-pick", "pick", 7)).await, 201);
    // Each counts what it believes is left (a: 10-8 = 2, b: 10-7 = 3) and finds one less.
    assert_eq!(post(&cluster.nodes[0], ev("a-count", "count", 1)).await, 201);
    assert_eq!(post(&cluster.nodes[1], ev("b-count", "count", 2)).await, 201);
    let local = get(cluster.nodes[1].client().base(), "/v1/inventory/SKU-7").await;
    assert_eq!(local["locations"][0]["merged"], 2, "{local}");

    cluster.relay.start().await.unwrap();
    let merged = converged(&cluster, Duration::from_secs(40)).await;
    // 10 received, 8 and 7 picked, each count a variance of -1.
    assert_eq!(merged[&("SKU-7".to_owned(), "A-01".to_owned())], -7);
    let exceptions = get(cluster.relay.client().base(), "/v1/exceptions").await;
    let listed = exceptions["exceptions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{exceptions}");
    assert_eq!((listed[0]["sku"].as_str(), listed[0]["value"].as_i64()), (Some("SKU-7"), Some(-7)));
    assert_eq!(listed[0]["actors"].as_array().unwrap().len(), 2, "both sites contributed");
    // And counted on /metrics.
    let url = format!("{}/metrics", cluster.relay.client().base());
    let metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "outpost_relay_inventory_exceptions 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "outpost_relay_inventory_exceptions_raised_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restarts_mid_merge_and_node_power_cuts_apply_each_delta_once() {
    let mut cluster = Cluster::start(&["store-a", "store-b"]).await.unwrap();
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut configs = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        configs.extend(scanner_configs(node, &format!("hs{n}"), 3, 400, 11 + n as u64, |c| {
            c.array_ratio = 0.4;
            c.array_events_max = 20;
            c.duplicate_ratio = 0.05;
            c.pause = Duration::from_millis(5);
            c.give_up_after = Duration::from_secs(40);
            c.kinds = [("receive", 20), ("pick", 20), ("adjust", 10), ("count", 10), ("transfer", 10)]
                .into_iter()
                .map(|(k, w)| (k.to_owned(), w))
                .collect();
        }));
    }
    let scanners = spawn_scanners(configs, &ledger, &stop);
    let wait_for = |n: u64| {
        let ledger = ledger.clone();
        async move {
            while ledger.accepted_count() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(600).await;
    // The relay dies while it is pushing merged state to both nodes.
    cluster.relay.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.relay.start().await.unwrap();
    wait_for(1_200).await;
    // A power cut at a node in the middle of its commits.
    cluster.nodes[0].restart().await.unwrap();
    wait_for(1_800).await;
    cluster.relay.kill().unwrap();
    cluster.relay.start().await.unwrap();
    join_all(scanners).await;

    let data = ledger.snapshot();
    cluster.wait_replicated(&data, Duration::from_secs(60)).await.unwrap();
    let merged = converged(&cluster, Duration::from_secs(40)).await;
    assert!(merged.len() > 100, "the workload touched {} keys", merged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_gets_its_old_contributions_back_and_moves_on_as_a_new_actor() {
    let mut cluster = Cluster::start(&["store-a"]).await.unwrap();
    let ev = |id: &str, kind: &str, qty: i64| json!({"event_id": id, "kind": kind, "sku": "SKU-9", "location": "DOCK-1", "qty": qty});
    assert_eq!(post(&cluster.nodes[0], ev("r1", "receive", 5)).await, 201);
    converged(&cluster, Duration::from_secs(30)).await;
    let old_epoch = cluster.nodes[0].client().node_status().await.unwrap().epoch;

    cluster.nodes[0].wipe_data().unwrap();
    cluster.nodes[0].start().await.unwrap();
    let new_epoch = cluster.nodes[0].client().node_status().await.unwrap().epoch;
    assert_ne!(old_epoch, new_epoch);
    // The relay pushes the old actor's counters to the new store.
    let merged = converged(&cluster, Duration::from_secs(30)).await;
    assert_eq!(merged[&("SKU-9".to_owned(), "DOCK-1".to_owned())], 5);
    assert_eq!(post(&cluster.nodes[0], ev("p1", "pick", 2)).await, 201);
    let merged = converged(&cluster, Duration::from_secs(30)).await;
    assert_eq!(merged[&("SKU-9".to_owned(), "DOCK-1".to_owned())], 3);
    let view = get(cluster.nodes[0].client().base(), "/v1/inventory/SKU-9").await;
    let actors: Vec<&str> = view["locations"][0]["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["epoch"].as_str().unwrap())
        .collect();
    assert_eq!(actors.len(), 2, "{view}");
    assert!(actors.contains(&old_epoch.as_str()) && actors.contains(&new_epoch.as_str()), "{view}");
    assert_eq!(view["locations"][0]["local"], 3, "both epochs are this node's own: {view}");
}

/// Runs `outpost-relay inventory diff` against the cluster's relay; returns the exit code
/// and standard output.
fn inventory_diff(cluster: &Cluster, snapshot: &str, extra: &[&str]) -> (i32, String) {
    let path = cluster.dir().join("snapshot.csv");
    std::fs::write(&path, snapshot).unwrap();
    let (path, http) = (path.display().to_string(), cluster.relay.http_addr().to_string());
    let args = [&["inventory", "diff", "--snapshot", &path, "--http", &http], extra].concat();
    run_tool(&cluster.bins.relay, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_diff_finds_exactly_the_planted_differences() {
    let cluster = Cluster::start(&["store-0031"]).await.unwrap();
    let ev = |id: &str, kind: &str, sku: &str, qty: i64| json!({"event_id": id, "kind": kind, "sku": sku, "location": "A-01", "qty": qty});
    for (id, kind, sku, qty) in [
        ("r1", "receive", "SKU-A", 10),
        ("r2", "receive", "SKU-B", 5),
        ("p1", "pick", "SKU-B", 2),
        ("r3", "receive", "SKU-D", 1),
    ] {
        assert_eq!(post(&cluster.nodes[0], ev(id, kind, sku, qty)).await, 201);
    }
    let merged = converged(&cluster, Duration::from_secs(30)).await;
    assert_eq!(merged.len(), 3);

    // The ERP agrees on SKU-A and SKU-D: nothing to report, exit 0.
    let agreeing = "sku,location,qty\nSKU-A,A-01,10\nSKU-B,A-01,3\nSKU-D,A-01,1\n";
    let (code, out) = inventory_diff(&cluster, agreeing, &[]);
    assert_eq!((code, out.as_str()), (0, "0 differences (relay: 3 keys, snapshot: 3 keys)\n"));

    // Planted: SKU-B counted 7 (relay 3), SKU-C only in the ERP, SKU-D missing from it.
    let planted = "sku,location,qty\nSKU-A,A-01,10\nSKU-B,A-01,7\nSKU-C,A-02,6\n";
    let (code, out) = inventory_diff(&cluster, planted, &["--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows: Vec<(String, String, i64, i64, i64)> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = |f: &str| d[f].as_str().unwrap().to_owned();
            let n = |f: &str| d[f].as_i64().unwrap();
            (s("sku"), s("location"), n("relay"), n("snapshot"), n("difference"))
        })
        .collect();
    let row =
        |sku: &str, loc: &str, relay, snapshot, diff| (sku.to_owned(), loc.to_owned(), relay, snapshot, diff);
    assert_eq!(
        rows,
        [row("SKU-C", "A-02", 0, 6, -6), row("SKU-B", "A-01", 3, 7, -4), row("SKU-D", "A-01", 1, 0, 1)],
        "largest first"
    );
    let (code, table) = inventory_diff(&cluster, planted, &[]);
    assert_eq!(code, 1);
    assert!(table.ends_with("3 differences (relay: 3 keys, snapshot: 3 keys)\n"), "{table}");

    // A snapshot that cannot be read is an error naming the line, exit 2.
    let (code, out) = inventory_diff(&cluster, "SKU-A,A-01,ten\n", &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 1") && out.contains("qty"), "{out}");
}
