//! `outpost-node`: the site daemon. Scanners post events to its HTTP API; it makes each
//! one durable in a redb store (one fsync per group commit) before answering, and its
//! replicator sends them over QUIC with mutual TLS to the region's relay, which
//! acknowledges what it has stored.
//!
//! The node keeps accepting while the WAN is down: the backlog lives on disk, and the
//! replicator resumes from the relay's durable watermark when the link returns.
//!
//! Boundaries: protocol decisions live in [`sync_protocol`]; this crate is the shell that
//! owns the disk ([`store`]), the HTTP listener ([`http`]), the QUIC socket
//! ([`replicator`]), the clock and the OS randomness.
//!
//! Invariants, and where they are enforced:
//! - No scanner is answered before its event is fsync'd: [`store::Store::append`] returns
//!   only after the group's commit.
//! - Per-lane seqs are gapless from 1 within an epoch: the writer assigns them in the
//!   append transaction (`store::append`).
//! - An unacknowledged event is never pruned: pruning reads only up to the acked
//!   watermark (`store::prune`), under disk pressure too (`store::Writer::relieve_pressure`).
//! - The store passes its disk quota by at most one group commit: the writer checks each
//!   lane's mark before every group ([`store::disk`]).
//! - Memory does not grow with load or backlog: posts in flight are bounded
//!   ([`admission`]), the writer's queue is bounded, and the backlog stays on disk.

pub mod admission;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod html;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod page;
pub mod reconcile;
pub mod replicator;
pub mod store;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::config::Config;
use crate::metrics::NodeMetrics;
use crate::replicator::{LinkStatus, Replicator};
use crate::store::{Quota, Store, now_ms};

/// Repairs (`POST /v1/reconcile/repair`) waiting for the replicator at most.
const REPAIRS_QUEUED_MAX: usize = 16;

/// How often acknowledged events past retention are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

pub use crate::daemon::DaemonError as NodeError;

/// Runs the node on a bound HTTP listener until `shutdown` resolves, then stops
/// gracefully: no new requests, the commit in flight finishes, QUIC closes with a reason.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let creds = tls::load(&config.ca, &config.cert, &config.key)?;
    let dir = config.data_dir.display().to_string();
    let store_err = |reason: String| NodeError::Store { dir: dir.clone(), reason };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let node_id = creds.identity.node_id.clone();
    let new_epoch = || StdRng::from_os_rng().random();
    let store = match config.disk_quota_bytes {
        Some(bytes) => Store::open_with_quota(&config.data_dir, node_id, new_epoch, Quota { bytes }),
        None => Store::open(&config.data_dir, node_id, new_epoch),
    }
    .map_err(|e| store_err(e.to_string()))?;
    store.set_retention(config.retention);
    tracing::info!(
        node_id = %creds.identity.node_id,
        region = %creds.identity.region,
        epoch = %store.epoch(),
        relays = ?config.relays,
        http = %config.http,
        disk_quota_bytes = store.quota().bytes,
        "node started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let link = Arc::new(Mutex::new(LinkStatus { addresses: config.relays.clone(), ..LinkStatus::default() }));
    let (repairs, repair_queue) = tokio::sync::mpsc::channel(REPAIRS_QUEUED_MAX);
    let metrics = NodeMetrics::default();
    let replicator = Replicator {
        store: store.clone(),
        identity: creds.identity.clone(),
        client_config: creds.client_config,
        relays: config.relays.clone(),
        link: link.clone(),
        repairs: tokio::sync::Mutex::new(repair_queue),
        round_trips: metrics.replication_seconds.clone(),
    };
    let replication = tokio::spawn(replicator.run(stop_rx.clone()));
    let pruning = tokio::spawn(prune_loop(store.clone(), config.retention, stop_rx.clone()));

    let config = Arc::new(config);
    let registry = Arc::new(metrics.registry(store.clone(), link.clone()));
    let admission = Admission::new(config.requests_in_flight_max);
    let app = http::router(http::AppState {
        admission,
        store: store.clone(),
        config,
        identity: creds.identity,
        link,
        metrics,
        registry,
        repairs,
    });
    let served = daemon::serve_http_until(listener, app, shutdown, &stop_tx).await;
    let _ = replication.await;
    let _ = pruning.await;
    store.close();
    tracing::info!("node stopped");
    served
}

async fn prune_loop(store: Store, retention: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let before = now_ms().saturating_sub(retention.as_millis() as u64);
        match store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned acknowledged events past retention"),
            Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
        }
    }
}

/// Renders `/v1/status` for a terminal.
pub fn status_text(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let str_of = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut out = String::new();
    let relay = &s["relay"];
    let _ = writeln!(
        out,
        "node {} (region {}, epoch {})",
        str_of(&s["node_id"]),
        str_of(&s["region"]),
        str_of(&s["epoch"])
    );
    let _ = writeln!(out, "relay {} via {}", str_of(&relay["state"]), relay["addresses"]);
    if let Some(err) = relay["last_error"].as_str() {
        let _ = writeln!(out, "  last error: {err}");
    }
    let _ =
        writeln!(out, "{:<10} {:>10} {:>10} {:>10} {:>14}", "lane", "head", "acked", "backlog", "oldest age");
    for lane in ["critical", "standard", "bulk"] {
        let l = &s["lanes"][lane];
        let age = l["oldest_unacked_age_ms"]
            .as_u64()
            .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1e3));
        let _ = writeln!(
            out,
            "{lane:<10} {:>10} {:>10} {:>10} {age:>14}",
            l["head_seq"], l["acked_seq"], l["backlog_events"]
        );
    }
    let st = &s["store"];
    let _ = writeln!(out, "store: {} events in {} commits", st["events_committed"], st["commits"]);
    let disk = &s["disk"];
    let _ = writeln!(
        out,
        "disk: {} of a {}-byte quota used ({})",
        disk["used_bytes"],
        disk["quota_bytes"],
        str_of(&disk["pressure"])
    );
    if let Some(message) = st["failure"]["message"].as_str() {
        let _ = writeln!(out, "  store failing: {message}");
    }
    for lane in ["critical", "standard", "bulk"] {
        let Some(shed) = s["lanes"][lane]["shed"].as_object() else { continue };
        let counts: Vec<String> = shed
            .iter()
            .filter(|(_, n)| n.as_u64() > Some(0))
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !counts.is_empty() {
            let _ = writeln!(out, "  {lane} shed: {}", counts.join(", "));
        }
    }
    out
}

/// What makes a node unhealthy, read from its `/v1/status`, one line per problem (none:
/// healthy). A node is unhealthy when an event has waited longer than `max_unacked_age`
/// for the relay's acknowledgement (the WAN has been down, or replication is stuck, for
/// too long), or when a relay refused it and none has welcomed it since (a certificate
/// or region problem that waiting will not fix). A short WAN cut is not a problem: the
/// node buffers by design.
pub fn health_problems(s: &serde_json::Value, max_unacked_age: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let relay = &s["relay"];
    let state = relay["state"].as_str().unwrap_or("unknown");
    for lane in ["critical", "standard", "bulk"] {
        let l = &s["lanes"][lane];
        let Some(age_ms) = l["oldest_unacked_age_ms"].as_u64() else { continue };
        if Duration::from_millis(age_ms) > max_unacked_age {
            problems.push(format!(
                "{lane}: {} events unacknowledged, the oldest for {:.0}s (limit {}s); relay {state}",
                l["backlog_events"],
                age_ms as f64 / 1e3,
                max_unacked_age.as_secs()
            ));
        }
    }
    if state != "connected" && relay["refusals"].as_u64().unwrap_or(0) > 0 {
        let why = relay["last_error"].as_str().unwrap_or("no reason given");
        problems.push(format!("the relay refused this node: {why}"));
    }
    problems
}

#[cfg(test)]
mod tests;
