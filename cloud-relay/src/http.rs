//! The consumers' HTTP API (API.md): `GET /v1/log`, `GET /v1/nodes`, `/healthz` and
//! `/readyz`.
//!
//! The log is the relay's single order of everything it stored: offsets are dense from
//! 0, and a consumer that remembers `next` reads each event once. `wait_ms` turns a read
//! at the end of the log into a long poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use node::digest::{BLOCK_EVENTS, DigestQuery, block_json};
use serde::Deserialize;
use serde_json::{Value, json};
use sync_protocol::inventory::Stock;
use sync_protocol::{Epoch, Location, NodeId, ParseError, Sku};

use crate::server::Shared;
use crate::store::{LogEntry, StoreError, now_ms};

/// Entries per `/v1/log` answer when `limit` is not given.
pub const LOG_LIMIT_DEFAULT: usize = 1_000;
/// Most entries per `/v1/log` answer.
pub const LOG_LIMIT_MAX: usize = 10_000;
/// Longest long poll.
pub const WAIT_MS_MAX: u64 = 30_000;

/// The router of the relay's API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(region_page))
        .route("/v1/log", get(log))
        .route("/v1/nodes", get(nodes))
        .route("/v1/inventory", get(inventory_at))
        .route("/v1/inventory/{sku}", get(inventory_of))
        .route("/v1/exceptions", get(exceptions))
        .route("/v1/digests", get(digests))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(|| async { Json(json!({"status": "ready"})) }))
        .with_state(shared)
}

/// An API error: `{"error": code, "message": text}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter is out of range or malformed.
    #[error("{0}")]
    BadQuery(String),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        (status, Json(json!({"error": code, "message": self.to_string()}))).into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

async fn log(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let from = q.from.unwrap_or(0);
    let limit = q.limit.unwrap_or(LOG_LIMIT_DEFAULT);
    if limit == 0 || limit > LOG_LIMIT_MAX {
        return Err(ApiError::BadQuery(format!("limit must be 1 to {LOG_LIMIT_MAX}")));
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        return Err(ApiError::BadQuery(format!("wait_ms must be at most {WAIT_MS_MAX}")));
    }
    if wait_ms > 0 {
        let mut next = shared.store.next_offset();
        // Either something past `from` arrives, or the wait ends with an empty answer.
        let _ = tokio::time::timeout(Duration::from_millis(wait_ms), next.wait_for(|n| *n > from)).await;
    }
    let store = shared.store.clone();
    let entries = tokio::task::spawn_blocking(move || store.read_log(from, limit))
        .await
        .map_err(|e| ApiError::Store(StoreError::CommitFailed(format!("read task: {e}"))))??;
    let next = entries.last().map_or(from, |(offset, _)| offset + 1);
    let events: Vec<Value> = entries.iter().map(|(offset, entry)| log_json(*offset, entry)).collect();
    Ok(Json(json!({"events": events, "next": next})).into_response())
}

/// One log entry as consumers see it: where it came from, then the event's own fields.
fn log_json(offset: u64, e: &LogEntry) -> Value {
    let mut v = serde_json::to_value(&e.record.event).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut v {
        let key = format!("{}/{}/{}/{}", e.node_id, e.epoch, e.lane.as_str(), e.seq);
        fields.insert("offset".into(), json!(offset));
        fields.insert("key".into(), json!(key));
        fields.insert("node_id".into(), json!(e.node_id.as_str()));
        fields.insert("epoch".into(), json!(e.epoch.to_string()));
        fields.insert("lane".into(), json!(e.lane.as_str()));
        fields.insert("seq".into(), json!(e.seq));
        fields.insert("received_at".into(), json!(rfc3339_ms(e.record.received_at_ms)));
        let deltas: Vec<Value> = e
            .record
            .deltas
            .iter()
            .map(|d| json!({"sku": d.key.sku.as_str(), "location": d.key.location.as_str(), "change": d.change}))
            .collect();
        fields.insert("deltas".into(), Value::Array(deltas));
    }
    v
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    Ok(Json(nodes_value(&shared).await?).into_response())
}

/// What `GET /v1/nodes` answers; the region page shows the same.
async fn nodes_value(shared: &Shared) -> Result<Value, ApiError> {
    let store = shared.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.nodes())
        .await
        .map_err(|e| ApiError::Store(StoreError::CommitFailed(format!("read task: {e}"))))??;
    let now = now_ms();
    let nodes: Vec<Value> = rows
        .iter()
        .map(|row| {
            let streams: Vec<Value> = row
                .streams
                .iter()
                .map(|s| json!({"epoch": s.epoch.to_string(), "lane": s.lane.as_str(), "watermark": s.watermark}))
                .collect();
            json!({
                "node_id": row.node_id.as_str(),
                "region": row.seen.region.as_str(),
                "connected": shared.connections.is_connected(&row.node_id),
                "last_seen": rfc3339_ms(row.seen.last_seen_ms),
                "last_seen_age_ms": now.saturating_sub(row.seen.last_seen_ms),
                "streams": streams,
            })
        })
        .collect();
    Ok(json!({"nodes": nodes}))
}

/// `GET /v1/digests?node_id=N&epoch=E&lane=L&from_block=B&limit=N`: the block digests
/// of one node's stream (`node::digest`), with the stream's watermark.
async fn digests(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<DigestQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let bad = |e: ParseError| ApiError::BadQuery(e.to_string());
    let node_id: NodeId = q.node_id.as_deref().unwrap_or("").parse().map_err(bad)?;
    let epoch: Epoch = q.epoch.as_deref().unwrap_or("").parse().map_err(bad)?;
    let lane = q.lane().map_err(bad)?;
    let (from_block, limit) = (q.from_block, q.limit());
    let store = shared.store.clone();
    let (rows, marks) = {
        let node_id = node_id.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((
                store.digests(&node_id, epoch, lane, from_block, limit)?,
                store.watermarks(&node_id, epoch)?,
            ))
        })
        .await
        .map_err(|e| ApiError::Store(StoreError::CommitFailed(format!("read task: {e}"))))??
    };
    let blocks: Vec<Value> = rows.iter().map(|(block, d)| block_json(*block, &d.digest)).collect();
    Ok(Json(json!({
        "node_id": node_id.as_str(),
        "epoch": epoch.to_string(),
        "lane": lane.as_str(),
        "block_events": BLOCK_EVENTS,
        "watermark": marks.get(lane),
        "blocks": blocks,
    }))
    .into_response())
}

/// `GET /`: the region page, for people (`crate::page`).
async fn region_page(State(shared): State<Arc<Shared>>) -> Response {
    let nodes = nodes_value(&shared).await.map_err(|e| e.to_string());
    let exceptions = exceptions_value(&shared);
    let next_offset = *shared.store.next_offset().borrow();
    let html = crate::page::region(&shared.receiver.region.to_string(), nodes, &exceptions, next_offset);
    ([("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], html).into_response()
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text exposition.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    node::daemon::metrics_response(&shared.metrics)
}

/// Every actor's contribution to a key.
fn actors_json(stock: Stock<'_>) -> Vec<Value> {
    stock
        .contributions()
        .map(|(a, v)| json!({"node_id": a.node_id.as_str(), "epoch": a.epoch.to_string(), "value": v}))
        .collect()
}

/// `GET /v1/inventory/{sku}`: the merged value per location, with its actors.
async fn inventory_of(
    State(shared): State<Arc<Shared>>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    let sku: Sku = sku.parse().map_err(|e: ParseError| ApiError::BadQuery(e.to_string()))?;
    let version = *shared.store.next_offset().borrow();
    let locations: Vec<Value> = shared.store.with_inventory(|inv| {
        inv.merged()
            .iter()
            .filter(|(key, _)| key.sku == sku)
            .map(|(key, stock)| {
                json!({"location": key.location.as_str(), "value": stock.value(), "actors": actors_json(stock)})
            })
            .collect()
    });
    Ok(Json(json!({"sku": sku.as_str(), "version": version, "locations": locations})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationQuery {
    location: Option<String>,
}

/// `GET /v1/inventory?location=L`: the merged value of every SKU at a location; without
/// `location`, of every key the relay knows (what `outpost-relay inventory diff` reads).
async fn inventory_at(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<LocationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let location: Option<Location> = match q.location {
        Some(l) => Some(l.parse().map_err(|e: ParseError| ApiError::BadQuery(e.to_string()))?),
        None => None,
    };
    let version = *shared.store.next_offset().borrow();
    let items: Vec<Value> = shared.store.with_inventory(|inv| {
        inv.merged()
            .iter()
            .filter(|(key, _)| location.as_ref().is_none_or(|l| key.location == *l))
            .map(|(key, stock)| {
                json!({"sku": key.sku.as_str(), "location": key.location.as_str(), "value": stock.value()})
            })
            .collect()
    });
    let mut body = json!({"version": version, "items": items});
    if let Some(l) = location {
        body["location"] = json!(l.as_str());
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/exceptions`: merged stock below zero, never clamped, with who moved it.
async fn exceptions(State(shared): State<Arc<Shared>>) -> Response {
    Json(exceptions_value(&shared)).into_response()
}

/// What `GET /v1/exceptions` answers; the region page shows the same.
fn exceptions_value(shared: &Shared) -> Value {
    let list: Vec<Value> = shared.store.with_inventory(|inv| {
        inv.exceptions()
            .map(|(key, stock)| {
                json!({"kind": "negative_stock", "sku": key.sku.as_str(), "location": key.location.as_str(),
                       "value": stock.value(), "actors": actors_json(stock)})
            })
            .collect()
    });
    json!({"exceptions": list})
}

/// Formats ms since the Unix epoch as RFC 3339 with milliseconds.
fn rfc3339_ms(ms: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    // Past the year 9999 RFC 3339 has no form: show the number rather than fail the page.
    if write!(out, "{}", humantime::format_rfc3339_millis(at)).is_err() {
        out = ms.to_string();
    }
    out
}
