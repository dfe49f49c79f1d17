//! The scanners' HTTP API (API.md): `POST /v1/events`, `GET /v1/events/{event_id}`,
//! `GET /v1/status`, `GET /v1/inventory/{sku}`, `GET /metrics`, `/healthz` and `/readyz`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sync_protocol::wire::BATCH_EVENTS_MAX;
use sync_protocol::{Batch, Epoch, Event, EventId, Lane, NodeIdentity, Seq, Sku};

use prometheus_client::registry::Registry;

use crate::admission::Admission;
use crate::config::Config;
use crate::daemon::metrics_response;
use crate::digest::{BLOCK_EVENTS, DigestQuery, block_json, seqs_of};
use crate::ingest::{IngestError, Posted, ShedReason, parse_body};
use crate::metrics::NodeMetrics;
use crate::replicator::SharedLink;
use crate::replicator::{RepairQueue, RepairRequest};
use crate::store::{Failure, NewEvent, Outcome, Placement, Store, StoreError, now_ms};

/// `Retry-After` of a 507 for the disk quota: space comes back as the backlog drains,
/// which takes a while.
pub const RETRY_AFTER_DISK_QUOTA_S: u64 = 30;
/// `Retry-After` of a 503 or 507 for a write error the store is recovering from.
pub const RETRY_AFTER_STORE_FAILED_S: u64 = 5;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The slots of posts in flight.
    pub admission: Arc<Admission>,
    /// The store.
    pub store: Store,
    /// The configuration.
    pub config: Arc<Config>,
    /// Who this node is.
    pub identity: NodeIdentity,
    /// The replication link's status.
    pub link: SharedLink,
    /// What the handlers count.
    pub metrics: NodeMetrics,
    /// Everything `GET /metrics` shows.
    pub registry: Arc<Registry>,
    /// Where repairs go to the replicator.
    pub repairs: RepairQueue,
}

/// The router of the node's API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(site_page))
        .route("/v1/events", post(post_events))
        .route("/v1/events/{event_id}", get(get_event))
        .route("/v1/status", get(status))
        .route("/v1/inventory/{sku}", get(inventory))
        .route("/v1/digests", get(digests))
        .route("/v1/reconcile/repair", post(repair))
        .route(
            "/metrics",
            get(|State(state): State<Arc<AppState>>| async move { metrics_response(&state.registry) }),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(|| async { Json(json!({"status": "ready"})) }))
        // The body limit is enforced by `post_events` itself, so that an oversize body gets
        // the API's JSON error rather than the framework's text.
        .layer(DefaultBodyLimit::disable())
        // Shared behind one `Arc`: the router hands every request its own copy of the
        // state, and a copy of the fields themselves (the store's handles, the node's
        // names) cost allocations and atomics on every post.
        .with_state(Arc::new(state))
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        if let Some(field) = self.field() {
            body["field"] = json!(field);
        }
        if let Some(retry_after_s) = self.retry_after_s() {
            body["retry_after_s"] = json!(retry_after_s);
        }
        with_retry_after((self.status(), Json(body)).into_response(), self.retry_after_s())
    }
}

/// `response` with a `Retry-After` header when there is a wait to ask for.
fn with_retry_after(mut response: Response, retry_after_s: Option<u64>) -> Response {
    if let Some(retry_after_s) = retry_after_s {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after_s.into());
    }
    response
}

/// `POST /v1/events`: takes a slot ([`Admission`]), reads the body within the request
/// timeout, parses it, and appends what is valid.
async fn post_events(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, IngestError> {
    let Some(mut permit) = state.admission.enter() else {
        state.metrics.requests_overloaded.inc();
        let retry_after_s = state.admission.retry_after_s(state.store.stats().events_per_sec());
        return Err(IngestError::Shed {
            reason: ShedReason::Overload,
            retry_after_s,
            message: format!(
                "all {} request slots are taken; retry after {retry_after_s} s",
                state.config.requests_in_flight_max
            ),
        });
    };
    let max = state.config.body_bytes_max;
    let timeout = state.config.request_timeout;
    let bytes = tokio::time::timeout(timeout, to_bytes(body, max))
        .await
        .map_err(|_| IngestError::RequestTimeout { after_ms: timeout.as_millis() as u64 })?
        .map_err(|_| IngestError::BodyTooLarge { max })?;
    let epoch = state.store.epoch();
    let posted = parse_body(&bytes, state.config.batch_events_max)?;
    drop(bytes);
    match posted {
        Posted::Single(event) => {
            let event = event?;
            let id = event.event_id.clone();
            let events = admit(&state, &mut permit, vec![event])?;
            let outcome = append(&state, events).await?.pop();
            let Some(outcome) = outcome else {
                return Err(IngestError::Unavailable("the store answered nothing".into()));
            };
            single_response(outcome, &id, epoch)
        }
        Posted::Many(items) => {
            let mut results: Vec<Option<ItemResult<'_>>> = Vec::with_capacity(items.len());
            let mut valid = Vec::new();
            for (id, item) in items {
                match item {
                    Ok(event) => {
                        valid.push(event);
                        results.push(None);
                    }
                    Err(e) => results.push(Some(ItemResult::Error(item_error(id.as_deref(), "invalid", &e)))),
                }
            }
            let ids: Vec<EventId> = valid.iter().map(|e| e.event_id.clone()).collect();
            let valid = admit(&state, &mut permit, valid)?;
            let mut outcomes = append(&state, valid).await?.into_iter().zip(&ids);
            let mut retry_after_s = None;
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                if let Some((outcome, id)) = outcomes.next() {
                    if matches!(outcome, Outcome::Shed { .. }) {
                        retry_after_s = Some(RETRY_AFTER_DISK_QUOTA_S);
                    }
                    *slot = Some(item_result(outcome, id, epoch));
                }
            }
            let response = (StatusCode::OK, Json(Results { results })).into_response();
            Ok(with_retry_after(response, retry_after_s))
        }
    }
}

/// Gives each event its lane and lets the post go on to the writer, unless the store is
/// failing or the post's most urgent lane has no room among the posts in flight.
fn admit(
    state: &AppState,
    permit: &mut crate::admission::Permit,
    events: Vec<Event>,
) -> Result<Vec<NewEvent>, IngestError> {
    let lanes = &state.config.lanes;
    let events: Vec<NewEvent> = events
        .into_iter()
        .map(|event| {
            let lane = lanes.get(&event.kind).copied().unwrap_or_else(|| event.kind.default_lane());
            NewEvent { event, lane }
        })
        .collect();
    let Some(lane) = events.iter().map(|e| e.lane).min_by_key(|lane| *lane as u8) else {
        return Ok(events);
    };
    let shed = |reason: ShedReason, retry_after_s: u64, message: String| {
        state.metrics.shed(events.iter().map(|e| e.lane), reason);
        IngestError::Shed { reason, retry_after_s, message }
    };
    if let Some(failure) = state.store.health().failure {
        return Err(shed(failure_reason(&failure), RETRY_AFTER_STORE_FAILED_S, failure.to_string()));
    }
    if !state.admission.admit(permit, lane, events.len() as u64) {
        let retry_after_s = state.admission.retry_after_s(state.store.stats().events_per_sec());
        let message = format!(
            "too many posts in flight for the {lane} lane ({} of {} slots taken); retry after {retry_after_s} s",
            state.admission.requests(),
            state.config.requests_in_flight_max
        );
        return Err(shed(ShedReason::Overload, retry_after_s, message));
    }
    Ok(events)
}

/// The reason a store failure sheds events for.
fn failure_reason(failure: &Failure) -> ShedReason {
    match failure {
        Failure::DiskFull(_) => ShedReason::DiskFull,
        Failure::Io(_) => ShedReason::StoreFailed,
    }
}

/// Appends admitted events and waits for their commit, within the request timeout.
async fn append(state: &AppState, events: Vec<NewEvent>) -> Result<Vec<Outcome>, IngestError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let lanes: Vec<Lane> = events.iter().map(|e| e.lane).collect();
    let timeout = state.config.request_timeout;
    let appended = tokio::time::timeout(timeout, state.store.append(events)).await.map_err(|_| {
        IngestError::Unavailable(format!(
            "the store did not commit within {} ms; retry with the same event_id",
            timeout.as_millis()
        ))
    })?;
    let outcomes = match appended {
        Ok(outcomes) => outcomes,
        Err(StoreError::Failed(failure)) => {
            let reason = failure_reason(&failure);
            state.metrics.shed(lanes, reason);
            return Err(IngestError::Shed {
                reason,
                retry_after_s: RETRY_AFTER_STORE_FAILED_S,
                message: failure.to_string(),
            });
        }
        Err(e) => return Err(IngestError::Unavailable(e.to_string())),
    };
    state.metrics.count(lanes, &outcomes);
    Ok(outcomes)
}

/// The 507 of an event shed by the disk quota.
fn quota_error(lane: Lane, used_bytes: u64, mark_bytes: u64) -> IngestError {
    IngestError::Shed {
        reason: ShedReason::DiskQuota,
        retry_after_s: RETRY_AFTER_DISK_QUOTA_S,
        message: format!(
            "disk quota: the store occupies {used_bytes} bytes, at or over the {lane} lane's mark of \
             {mark_bytes}; retry when replication has made room"
        ),
    }
}

/// The answer for an accepted event, serialized straight from its parts rather than
/// through a JSON tree (a map, its keys and the formatted times allocated per event were
/// 8% of the node's HTTP workers in `ingest-single`). The fields are in the order the
/// tree gave them.
#[derive(Debug, serde::Serialize)]
struct Accepted<'a> {
    duplicate: bool,
    #[serde(serialize_with = "display")]
    epoch: Epoch,
    event_id: &'a str,
    lane: &'static str,
    #[serde(serialize_with = "display")]
    received_at: humantime::Rfc3339Timestamp,
    seq: u64,
    /// Only in the results of a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn accepted(id: &EventId, p: Placement, epoch: Epoch, duplicate: bool) -> Accepted<'_> {
    Accepted {
        duplicate,
        epoch,
        event_id: id.as_str(),
        lane: p.lane.as_str(),
        received_at: rfc3339_timestamp(p.received_at_ms),
        seq: p.seq.get(),
        status: None,
    }
}

/// A batch's answer, serialized straight from its entries like [`Accepted`]: through a
/// JSON tree it was a third of the node's HTTP workers in `ingest-batch`. The bytes are
/// the tree's (its keys were sorted, and so are the fields).
#[derive(Debug, serde::Serialize)]
struct Results<'a> {
    results: Vec<Option<ItemResult<'a>>>,
}

/// One entry of a batch's `results`.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum ItemResult<'a> {
    Accepted(Accepted<'a>),
    Error(Value),
}

fn single_response(outcome: Outcome, id: &EventId, epoch: Epoch) -> Result<Response, IngestError> {
    match outcome {
        Outcome::Created(p) => Ok((StatusCode::CREATED, Json(accepted(id, p, epoch, false))).into_response()),
        Outcome::Duplicate(p) => Ok((StatusCode::OK, Json(accepted(id, p, epoch, true))).into_response()),
        Outcome::Conflict(_) => Err(IngestError::Conflict(id.to_string())),
        Outcome::Invalid { field, reason } => Err(IngestError::InvalidField { field: field.into(), reason }),
        Outcome::Shed { lane, used_bytes, mark_bytes } => Err(quota_error(lane, used_bytes, mark_bytes)),
    }
}

fn item_result(outcome: Outcome, id: &EventId, epoch: Epoch) -> ItemResult<'_> {
    let error = |status, e: &IngestError| ItemResult::Error(item_error(Some(id.as_str()), status, e));
    match outcome {
        Outcome::Created(p) => {
            ItemResult::Accepted(Accepted { status: Some("created"), ..accepted(id, p, epoch, false) })
        }
        Outcome::Duplicate(p) => {
            ItemResult::Accepted(Accepted { status: Some("duplicate"), ..accepted(id, p, epoch, true) })
        }
        Outcome::Conflict(_) => error("conflict", &IngestError::Conflict(id.to_string())),
        Outcome::Invalid { field, reason } => {
            error("invalid", &IngestError::InvalidField { field: field.into(), reason })
        }
        Outcome::Shed { lane, used_bytes, mark_bytes } => {
            error("shed", &quota_error(lane, used_bytes, mark_bytes))
        }
    }
}

fn item_error(id: Option<&str>, status: &str, e: &IngestError) -> Value {
    let mut v = json!({"event_id": id, "status": status, "error": e.code(), "message": e.to_string()});
    if let Some(field) = e.field() {
        v["field"] = json!(field);
    }
    if let Some(retry_after_s) = e.retry_after_s() {
        v["retry_after_s"] = json!(retry_after_s);
    }
    v
}

async fn get_event(State(state): State<Arc<AppState>>, Path(event_id): Path<String>) -> Response {
    let not_found = || {
        let body = json!({"error": "not_found", "message": format!("no event with event_id {event_id:?}")});
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    };
    let Ok(id) = event_id.parse::<EventId>() else { return not_found() };
    match state.store.get(&id) {
        Ok(Some((p, record))) => {
            let acked = p.seq.get() <= state.store.positions().borrow().get(p.lane).acked;
            let mut body = json!(accepted(&id, p, state.store.epoch(), false));
            if let Some(map) = body.as_object_mut() {
                map.remove("duplicate");
            }
            body["acked"] = json!(acked);
            body["event"] = event_json(&record.event);
            Json(body).into_response()
        }
        Ok(None) => not_found(),
        // After a write error redb reads only what it has cached until the store reopens.
        Err(e) => {
            let message = format!("node cannot read its store now: {e}; it recovers by itself");
            let body = json!({"error": "unavailable", "message": message});
            with_retry_after((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(), Some(1))
        }
    }
}

/// The event as the scanner posted it.
pub fn event_json(e: &Event) -> Value {
    json!({
        "event_id": e.event_id.as_str(), "kind": e.kind.as_str(), "sku": e.sku.as_str(),
        "location": e.location.as_str(), "qty": e.qty, "occurred_at": e.occurred_at,
        "device_id": e.device_id, "shipment_id": e.shipment_id, "order_id": e.order_id, "attrs": e.attrs,
    })
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Response, IngestError> {
    Ok(Json(status_value(&state)?).into_response())
}

/// What `GET /v1/status` answers; the status page and `outpost-node status` show the same.
fn status_value(state: &AppState) -> Result<Value, IngestError> {
    let positions = *state.store.positions().borrow();
    let now = now_ms();
    let mut lanes = serde_json::Map::new();
    let mut read_error = None;
    for lane in Lane::ALL {
        let pos = positions.get(lane);
        // A store being reopened after a write error cannot be read for a moment; the
        // rest of the status is still worth answering.
        let oldest = match state.store.oldest_unacked_ms(lane) {
            Ok(oldest) => oldest.map(|t| now.saturating_sub(t)),
            Err(e) => {
                read_error = Some(e.to_string());
                None
            }
        };
        let shed: serde_json::Map<String, Value> = ShedReason::ALL
            .iter()
            .map(|&reason| (reason.as_str().to_owned(), json!(state.metrics.shed_count(lane, reason))))
            .collect();
        lanes.insert(
            lane.as_str().to_owned(),
            json!({
                "head_seq": pos.head,
                "acked_seq": pos.acked,
                "backlog_events": pos.head - pos.acked,
                "backlog_bytes": pos.backlog_bytes,
                "oldest_unacked_age_ms": oldest,
                "accepted": state.metrics.created(lane),
                "shed": shed,
                "disk_mark_bytes": state.store.quota().mark(lane),
            }),
        );
    }
    let link = state.link.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let stats = state.store.stats();
    let health = state.store.health();
    let quota = state.store.quota();
    let failure = health.failure.as_ref().map(|f| json!({"error": f.code(), "message": f.to_string()}));
    Ok(json!({
        "node_id": state.identity.node_id.as_str(),
        "region": state.identity.region.as_str(),
        "epoch": state.store.epoch().to_string(),
        "relay": link,
        "lanes": lanes,
        "store": {
            "commits": stats.commits.load(Ordering::Relaxed),
            "events_committed": stats.events.load(Ordering::Relaxed),
            "disk_bytes": health.used_bytes,
            "file_bytes": state.store.file_bytes(),
            "failure": failure,
            "read_error": read_error,
        },
        "disk": {
            "used_bytes": health.used_bytes,
            "quota_bytes": quota.bytes,
            "pressure": quota.pressure(health.used_bytes),
            "pruned_under_pressure": health.pruned_under_pressure,
            "compactions": health.compactions,
        },
        "admission": {
            "requests_in_flight": state.admission.requests(),
            "requests_in_flight_max": state.config.requests_in_flight_max,
            "requests_overloaded": state.metrics.requests_overloaded.get(),
            "commit_events_per_sec": stats.events_per_sec().round(),
        },
    }))
}

/// `GET /v1/inventory/{sku}`: per location, this node's own contribution (`local`, all
/// its epochs), the merged value, and every actor that contributed.
async fn inventory(
    State(state): State<Arc<AppState>>,
    Path(sku): Path<String>,
) -> Result<Response, IngestError> {
    Ok(Json(inventory_value(&state, &sku)?).into_response())
}

/// What `GET /v1/inventory/{sku}` answers; the status page shows the same.
fn inventory_value(state: &AppState, sku: &str) -> Result<Value, IngestError> {
    let sku: Sku =
        sku.parse().map_err(|e: sync_protocol::ParseError| IngestError::invalid("sku", e.reason))?;
    let node_id = &state.identity.node_id;
    let locations: Vec<Value> = state.store.with_inventory(|inv| {
        inv.iter()
            .filter(|(key, _)| key.sku == sku)
            .map(|(key, stock)| {
                // One sorted pass over the actors serves both fields.
                let contributions: Vec<_> = stock.contributions().collect();
                let actors: Vec<Value> = contributions
                    .iter()
                    .map(|(a, v)| json!({"node_id": a.node_id.as_str(), "epoch": a.epoch.to_string(), "value": v}))
                    .collect();
                let local: i64 = contributions
                    .iter()
                    .filter(|(a, _)| a.node_id == *node_id)
                    .map(|(_, v)| v.unwrap_or(0))
                    .fold(0i64, i64::saturating_add);
                json!({"location": key.location.as_str(), "local": local, "merged": stock.value(), "actors": actors})
            })
            .collect()
    });
    let version = state.store.inventory_version();
    Ok(json!({"sku": sku.as_str(), "relay_version": version, "locations": locations}))
}

/// `GET /v1/digests?lane=L&from_block=B&limit=N`: the lane's block digests
/// (`crate::digest`), with the positions they are to be read against.
async fn digests(
    State(state): State<Arc<AppState>>,
    query: Result<Query<DigestQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, IngestError> {
    let Query(q) = query.map_err(|e| IngestError::invalid("query", e.body_text()))?;
    let lane = q.lane().map_err(|e| IngestError::invalid("lane", e.reason))?;
    let (pos, rows) = state
        .store
        .digests(lane, q.from_block, q.limit())
        .map_err(|e| IngestError::Unavailable(e.to_string()))?;
    let blocks: Vec<Value> = rows.iter().map(|(block, d)| block_json(*block, d)).collect();
    Ok(Json(json!({
        "node_id": state.identity.node_id.as_str(),
        "epoch": state.store.epoch().to_string(),
        "lane": lane.as_str(),
        "block_events": BLOCK_EVENTS,
        "head_seq": pos.head,
        "acked_seq": pos.acked,
        "blocks": blocks,
    }))
    .into_response())
}

/// What `POST /v1/reconcile/repair` takes: the block to send the relay again.
#[derive(Debug, serde::Deserialize)]
struct RepairBody {
    lane: String,
    block: u64,
}

/// How long a repair may wait for a relay connection and its answers.
const REPAIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /v1/reconcile/repair {"lane", "block"}`: sends the relay again the records of a
/// block it acknowledged, in batches, and sums its answers. Harmless whatever the relay
/// holds: it adds only what it lacks (PROTOCOL.md, idempotency).
async fn repair(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Response, IngestError> {
    let req: RepairBody = serde_json::from_slice(&body)
        .map_err(|e| IngestError::invalid("body", format!("expected {{\"lane\", \"block\"}}: {e}")))?;
    let lane: Lane =
        req.lane.parse().map_err(|e: sync_protocol::ParseError| IngestError::invalid("lane", e.reason))?;
    let acked = state.store.positions().borrow().get(lane).acked;
    let (first, last) = seqs_of(req.block);
    let last = last.min(acked);
    if first > last {
        return Err(IngestError::invalid(
            "block",
            format!("block {} holds nothing the relay acknowledged", req.block),
        ));
    }
    let store = state.store.clone();
    let count = last - first + 1;
    let start = Seq::new(first).ok_or_else(|| IngestError::invalid("block", "no such block"))?;
    let records = tokio::task::spawn_blocking(move || store.read_range(lane, start, count as u32))
        .await
        .map_err(|e| IngestError::Unavailable(format!("store read task: {e}")))?
        .map_err(|e| IngestError::Unavailable(e.to_string()))?;
    if records.len() as u64 != count {
        return Err(IngestError::Unavailable(format!(
            "{lane} seqs {first}-{last} were pruned from this node ({} of {count} left); the block cannot be resent",
            records.len()
        )));
    }
    let mut total = json!({"lane": lane.as_str(), "block": req.block, "first_seq": first, "last_seq": last,
        "sent": 0, "inserted": 0, "present": 0, "differing": 0, "beyond_watermark": 0});
    let mut seq = first;
    for chunk in records.chunks(BATCH_EVENTS_MAX as usize) {
        let first_seq = Seq::new(seq).ok_or_else(|| IngestError::Unavailable("seq overflow".into()))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let batch = Batch { lane, first_seq, events: chunk.to_vec() };
        let sent = async {
            state.repairs.send(RepairRequest { batch, reply }).await.ok()?;
            answer.await.ok()
        };
        let repaired = tokio::time::timeout(REPAIR_TIMEOUT, sent).await.ok().flatten().ok_or_else(|| {
            IngestError::Unavailable(
                "no relay connection answered the repair in time; try again when the link is up".into(),
            )
        })?;
        for (field, n) in [
            ("sent", repaired.count),
            ("inserted", repaired.inserted),
            ("present", repaired.present),
            ("differing", repaired.differing),
            ("beyond_watermark", repaired.beyond_watermark),
        ] {
            total[field] = json!(total[field].as_u64().unwrap_or(0) + u64::from(n));
        }
        seq += chunk.len() as u64;
    }
    Ok(Json(total).into_response())
}

/// `GET /?sku=S`: the site page, for a browser at the dock (`crate::page`).
async fn site_page(State(state): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let status = status_value(&state);
    let sku = q.sku.filter(|s| !s.trim().is_empty());
    let inventory = sku.as_deref().map(|sku| inventory_value(&state, sku.trim()).map_err(|e| e.to_string()));
    let html = crate::page::site(status.map_err(|e| e.to_string()), sku.as_deref(), inventory);
    ([("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], html).into_response()
}

/// The query of the site page.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    sku: Option<String>,
}

/// Formats ms since the Unix epoch as RFC 3339 with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339_timestamp(ms).to_string()
}

/// [`rfc3339_ms`] before it is formatted.
fn rfc3339_timestamp(ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_event_is_answered_with_the_fields_of_api_md() {
        let id: EventId = "scan-1".parse().unwrap();
        let p = Placement { lane: Lane::Bulk, seq: Seq::new(42).unwrap(), received_at_ms: 1_764_000_000_123 };
        let body = serde_json::to_string(&accepted(&id, p, Epoch(0xab), false)).unwrap();
        assert_eq!(
            body,
            r#"{"duplicate":false,"epoch":"00000000000000ab","event_id":"scan-1","lane":"bulk","received_at":"2025-11-24T16:00:00.123Z","seq":42}"#
        );
        let item = item_result(Outcome::Duplicate(p), &id, Epoch(0xab));
        let item = serde_json::to_value(&item).unwrap();
        assert_eq!(item["status"], "duplicate");
        assert_eq!(item["duplicate"], true);
        let conflict = serde_json::to_value(item_result(Outcome::Conflict(p), &id, Epoch(0xab))).unwrap();
        assert_eq!(
            (conflict["status"].as_str(), conflict["event_id"].as_str()),
            (Some("conflict"), Some("scan-1"))
        );
    }

    #[test]
    fn a_batch_answer_has_the_bytes_of_its_json_tree() {
        let id: EventId = "scan-1".parse().unwrap();
        let p =
            Placement { lane: Lane::Critical, seq: Seq::new(7).unwrap(), received_at_ms: 1_764_000_000_123 };
        let shed = Outcome::Shed { lane: Lane::Bulk, used_bytes: 900, mark_bytes: 800 };
        let results = vec![
            Some(item_result(Outcome::Created(p), &id, Epoch(0xab))),
            Some(item_result(shed, &id, Epoch(0xab))),
            None,
        ];
        let tree = serde_json::to_string(&json!({"results": results})).unwrap();
        let direct = serde_json::to_string(&Results { results }).unwrap();
        assert_eq!(direct, tree);
        assert!(direct.starts_with(r#"{"results":[{"duplicate":false,"#), "{direct}");
        assert!(direct.ends_with(r#""status":"shed"},null]}"#), "{direct}");
    }
}
