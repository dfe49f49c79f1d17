//! Typed clients for the parts of the node and relay HTTP APIs that the harness reads.
//!
//! Only the fields the harness uses are declared; unknown fields are ignored, so the
//! daemons can grow their answers without breaking the harness. Posting events is the
//! scanners' business and lives in [`crate::scanner`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long one status or log request may take. The relay long-poll is not used by the
/// harness, so every answer is expected promptly, even from a debug build on a busy box.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection refused, reset or timed out.
    #[error("GET {url}: {source}")]
    Request {
        /// The URL requested.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than 200.
    #[error("GET {url} answered {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// A 200 whose body is not what the API promises.
    #[error("GET {url}: cannot decode the answer: {source}")]
    Decode {
        /// The URL requested.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Whether the daemon did not answer at all (it is down or restarting).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ApiError::Request { .. })
    }
}

/// The node's `GET /v1/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    /// The node id from its certificate.
    pub node_id: String,
    /// The region from its certificate.
    pub region: String,
    /// The store's epoch, 16 hex digits.
    pub epoch: String,
    /// The replication link.
    pub relay: LinkStatus,
    /// Per lane name (`critical`, `standard`, `bulk`).
    pub lanes: BTreeMap<String, LaneStatus>,
    /// Store counters.
    pub store: StoreStatus,
    /// The store's disk use against its quota (absent from nodes without a quota).
    #[serde(default)]
    pub disk: Option<DiskStatus>,
    /// Posts in flight against their limit.
    #[serde(default)]
    pub admission: Option<AdmissionStatus>,
}

impl NodeStatus {
    /// Events stored but not yet acknowledged by the relay, over all lanes.
    pub fn backlog_events(&self) -> u64 {
        self.lanes.values().map(|l| l.backlog_events).sum()
    }

    /// Events appended per redb write transaction: above 1 when group commit works.
    pub fn events_per_commit(&self) -> f64 {
        if self.store.commits == 0 {
            return 0.0;
        }
        // Counters stay far below 2^53, where the conversion would round.
        self.store.events_committed as f64 / self.store.commits as f64
    }
}

/// The replication link in [`NodeStatus`].
#[derive(Debug, Clone, Deserialize)]
pub struct LinkStatus {
    /// `connected`, `connecting` or `offline`.
    pub state: String,
    /// The last connection, TLS or refusal error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Successful connections since start.
    #[serde(default)]
    pub connects: u64,
    /// Refusals since start.
    #[serde(default)]
    pub refusals: u64,
    /// Times the relay came back holding less than it had acknowledged.
    #[serde(default)]
    pub regressions: u64,
}

/// One lane in [`NodeStatus`].
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LaneStatus {
    /// The last seq assigned.
    pub head_seq: u64,
    /// The last seq the relay acknowledged.
    pub acked_seq: u64,
    /// `head_seq - acked_seq`.
    pub backlog_events: u64,
    /// Events of the lane the node answered `created` since it started.
    #[serde(default)]
    pub accepted: u64,
    /// Events of the lane the node shed since it started, by reason.
    #[serde(default)]
    pub shed: ShedCounts,
    /// The store size at and above which the lane is shed.
    #[serde(default)]
    pub disk_mark_bytes: u64,
}

/// Events shed per reason, in [`LaneStatus`].
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ShedCounts {
    /// 429: too many posts in flight for the lane.
    #[serde(default)]
    pub overloaded: u64,
    /// 507: the store is over the lane's mark of the disk quota.
    #[serde(default)]
    pub disk_quota: u64,
    /// 507: the filesystem is full.
    #[serde(default)]
    pub disk_full: u64,
    /// 503: the filesystem refused a write.
    #[serde(default)]
    pub store_failed: u64,
}

impl ShedCounts {
    /// Each reason's error code with its count.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("overloaded", self.overloaded),
            ("disk_quota", self.disk_quota),
            ("disk_full", self.disk_full),
            ("store_failed", self.store_failed),
        ]
    }
}

/// The store's disk use in [`NodeStatus`].
#[derive(Debug, Clone, Deserialize)]
pub struct DiskStatus {
    /// Bytes the store file occupies on disk, as of the last commit.
    pub used_bytes: u64,
    /// The quota.
    pub quota_bytes: u64,
    /// `normal`, `shedding_bulk`, `shedding_standard` or `full`.
    pub pressure: String,
    /// Acknowledged events pruned before their retention ended, to make room.
    #[serde(default)]
    pub pruned_under_pressure: u64,
    /// Compactions done to give pruned space back.
    #[serde(default)]
    pub compactions: u64,
}

/// Admission in [`NodeStatus`].
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct AdmissionStatus {
    /// Posts in flight now.
    pub requests_in_flight: u64,
    /// The limit.
    pub requests_in_flight_max: u64,
    /// Posts refused because no slot at all was free.
    #[serde(default)]
    pub requests_overloaded: u64,
}

/// The store counters in [`NodeStatus`].
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct StoreStatus {
    /// Write transactions that appended events.
    pub commits: u64,
    /// Events appended.
    pub events_committed: u64,
    /// Bytes the store file occupies on disk (its allocated blocks).
    pub disk_bytes: u64,
}

/// One event of the relay's `GET /v1/log`.
#[derive(Debug, Clone, Deserialize)]
pub struct LogEntry {
    /// Position in the relay log; dense from 0.
    pub offset: u64,
    /// `node_id/epoch/lane/seq`.
    pub key: String,
    /// The node that sent it.
    pub node_id: String,
    /// The node store's epoch, 16 hex digits.
    pub epoch: String,
    /// The lane name.
    pub lane: String,
    /// The seq within `(node_id, epoch, lane)`.
    pub seq: u64,
    /// The scanner's idempotency key.
    pub event_id: String,
    /// The other event fields as posted (`kind`, `sku`, …) and `received_at`.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

/// The relay's `GET /v1/log` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct LogPage {
    /// Events from the requested offset.
    pub events: Vec<LogEntry>,
    /// The offset to ask for next.
    pub next: u64,
}

/// The relay's `GET /v1/nodes` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct NodesView {
    /// Every node the relay has heard of.
    pub nodes: Vec<NodeView>,
}

/// One node in [`NodesView`].
#[derive(Debug, Clone, Deserialize)]
pub struct NodeView {
    /// The node id.
    pub node_id: String,
    /// Its region.
    pub region: String,
    /// Whether a connection is open.
    pub connected: bool,
    /// One entry per `(epoch, lane)`.
    pub streams: Vec<StreamView>,
}

/// One stream in [`NodeView`].
#[derive(Debug, Clone, Deserialize)]
pub struct StreamView {
    /// The epoch, 16 hex digits.
    pub epoch: String,
    /// The lane name.
    pub lane: String,
    /// The highest seq durably stored, with every lower one.
    pub watermark: u64,
}

/// A client of one daemon's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of the daemon listening on `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client { http: http_client(), base: format!("http://{addr}") }
    }

    /// The base URL, `http://<addr>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The node's `GET /v1/status`.
    pub async fn node_status(&self) -> Result<NodeStatus, ApiError> {
        self.get("/v1/status").await
    }

    /// One page of the relay's `GET /v1/log`.
    pub async fn log_page(&self, from: u64, limit: u32) -> Result<LogPage, ApiError> {
        self.get(&format!("/v1/log?from={from}&limit={limit}")).await
    }

    /// The relay's `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<NodesView, ApiError> {
        self.get("/v1/nodes").await
    }

    /// `GET /readyz` answered 200.
    pub async fn is_ready(&self) -> bool {
        let url = format!("{}/readyz", self.base);
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// A GET whose 200 body decodes as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ApiError::Request { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|source| ApiError::Request { url: url.clone(), source })?;
        if status != 200 {
            let body = String::from_utf8_lossy(&body).into_owned();
            return Err(ApiError::Status { url, status, body });
        }
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode { url, source })
    }
}

/// The HTTP client every harness request uses.
pub(crate) fn http_client() -> reqwest::Client {
    // Building a plain-HTTP client only fails when the platform cannot configure one at all;
    // the default client is then as good as it gets.
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}
