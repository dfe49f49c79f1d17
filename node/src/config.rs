//! Configuration of `outpost-node run`: flags, `OUTPOST_*` environment variables and a
//! TOML file, in that order of precedence, then the defaults documented on each field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sync_protocol::{Kind, Lane};

/// Default address of the scanners' HTTP API: loopback, so that exposing it to the site
/// LAN is a deliberate choice.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default relay address.
pub const DEFAULT_RELAY: &str = "127.0.0.1:4433";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "node-data";
/// Default retention of acknowledged events: a week covers a long weekend's outage plus
/// time to reconcile, and is also the idempotency window for scanner retries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default largest request body: 1,000 events of about 1 KiB fit.
pub const DEFAULT_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Default most events in one array post (API.md).
pub const DEFAULT_BATCH_EVENTS_MAX: usize = 1_000;
/// Default most posts in flight at once: enough for hundreds of scanners on keep-alive
/// connections, while bounding the memory bodies can take.
pub const DEFAULT_REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Default time a post may take, from its first byte to its answer: scanners retry on a
/// timeout, and the same `event_id` is then answered from the store.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A duration written as `7d`, `90s` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Every setting, each optional so that the sources can be layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory of the store (created if missing). [default: ./node-data]
    #[arg(long, env = "OUTPOST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the scanners' HTTP API. [default: 127.0.0.1:8080]
    #[arg(long, env = "OUTPOST_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Relay to replicate to, `host:port`; repeat for failover relays of the node's own
    /// region (tried in order). [default: 127.0.0.1:4433]
    #[arg(long, env = "OUTPOST_RELAY", value_name = "ADDR", value_delimiter = ',')]
    pub relay: Option<Vec<String>>,
    /// The deployment CA certificate (PEM) that issued the relay's certificate.
    #[arg(long, env = "OUTPOST_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM); its `outpost://<region>/<node_id>` URI names the node.
    #[arg(long, env = "OUTPOST_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "OUTPOST_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long acknowledged events are kept; also the window in which a retried
    /// `event_id` is recognised. [default: 7d]
    #[arg(long, env = "OUTPOST_RETENTION", value_name = "DURATION")]
    pub retention: Option<HumanDuration>,
    /// Largest request body in bytes. [default: 1048576]
    #[arg(long, env = "OUTPOST_BODY_BYTES_MAX", value_name = "BYTES")]
    pub body_bytes_max: Option<usize>,
    /// Most events in one array post. [default: 1000]
    #[arg(long, env = "OUTPOST_BATCH_EVENTS_MAX", value_name = "N")]
    pub batch_events_max: Option<usize>,
    /// Bytes the store may occupy on disk. Above 80% of it `bulk` events are answered 507,
    /// above 90% `standard` ones too, and `critical` ones at 100%. [default: what the store
    /// holds at start-up plus half the free space of its filesystem]
    #[arg(long, env = "OUTPOST_DISK_QUOTA_BYTES", value_name = "BYTES")]
    pub disk_quota_bytes: Option<u64>,
    /// Most posts in flight at once. Bulk posts are answered 429 once half are taken,
    /// standard ones at three quarters, critical ones only when all are. [default: 256]
    #[arg(long, env = "OUTPOST_REQUESTS_IN_FLIGHT_MAX", value_name = "N")]
    pub requests_in_flight_max: Option<usize>,
    /// Longest a post may take to send its body (408 after) or to be stored (503 after;
    /// retry with the same event_id). [default: 30s]
    #[arg(long, env = "OUTPOST_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<HumanDuration>,
    /// Lane of each event kind, overriding the defaults (config file only), such as
    /// `[lanes] transfer = "critical"`.
    #[arg(skip)]
    pub lanes: Option<BTreeMap<String, String>>,
}

impl Settings {
    /// Fills what `self` leaves unset from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(lower.data_dir),
            http: self.http.or(lower.http),
            relay: self.relay.or(lower.relay),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            retention: self.retention.or(lower.retention),
            body_bytes_max: self.body_bytes_max.or(lower.body_bytes_max),
            batch_events_max: self.batch_events_max.or(lower.batch_events_max),
            disk_quota_bytes: self.disk_quota_bytes.or(lower.disk_quota_bytes),
            requests_in_flight_max: self.requests_in_flight_max.or(lower.requests_in_flight_max),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            lanes: self.lanes.or(lower.lanes),
        }
    }
}

pub use crate::daemon::ConfigError;

/// The node's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Relays, in failover order.
    pub relays: Vec<String>,
    /// CA certificate file.
    pub ca: PathBuf,
    /// Node certificate file.
    pub cert: PathBuf,
    /// Node key file.
    pub key: PathBuf,
    /// Retention of acknowledged events.
    pub retention: Duration,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Most events per array post.
    pub batch_events_max: usize,
    /// The disk quota; `None` for the default, measured when the store opens.
    pub disk_quota_bytes: Option<u64>,
    /// Most posts in flight.
    pub requests_in_flight_max: usize,
    /// Longest a post may take.
    pub request_timeout: Duration,
    /// Lane of each kind.
    pub lanes: BTreeMap<Kind, Lane>,
}

impl Config {
    /// Validates layered settings into a configuration, applying the defaults.
    pub fn resolve(s: Settings) -> Result<Config, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        let http = match s.http {
            Some(addr) => addr,
            None => DEFAULT_HTTP.parse().map_err(|e| invalid("http", format!("{e}")))?,
        };
        let relays = s.relay.unwrap_or_else(|| vec![DEFAULT_RELAY.to_owned()]);
        if relays.is_empty() {
            return Err(invalid("relay", "at least one relay is needed".into()));
        }
        for relay in &relays {
            split_host_port(relay).map_err(|reason| invalid("relay", reason))?;
        }
        let mut lanes: BTreeMap<Kind, Lane> = Kind::ALL.into_iter().map(|k| (k, k.default_lane())).collect();
        for (kind, lane) in s.lanes.unwrap_or_default() {
            let kind = kind.parse::<Kind>().map_err(|e| invalid("lanes", e.to_string()))?;
            let lane = lane.parse::<Lane>().map_err(|e| invalid("lanes", e.to_string()))?;
            lanes.insert(kind, lane);
        }
        let batch_events_max = s.batch_events_max.unwrap_or(DEFAULT_BATCH_EVENTS_MAX);
        if batch_events_max == 0 {
            return Err(invalid("batch_events_max", "must be at least 1".into()));
        }
        let requests_in_flight_max = s.requests_in_flight_max.unwrap_or(DEFAULT_REQUESTS_IN_FLIGHT_MAX);
        if requests_in_flight_max == 0 {
            return Err(invalid("requests_in_flight_max", "must be at least 1".into()));
        }
        if s.disk_quota_bytes == Some(0) {
            return Err(invalid("disk_quota_bytes", "must be at least 1".into()));
        }
        let request_timeout = s.request_timeout.map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.0);
        if request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be longer than zero".into()));
        }
        Ok(Config {
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            http,
            relays,
            ca: s.ca.ok_or(ConfigError::Missing("ca"))?,
            cert: s.cert.ok_or(ConfigError::Missing("cert"))?,
            key: s.key.ok_or(ConfigError::Missing("key"))?,
            retention: s.retention.map_or(DEFAULT_RETENTION, |d| d.0),
            body_bytes_max: s.body_bytes_max.unwrap_or(DEFAULT_BODY_BYTES_MAX),
            batch_events_max,
            disk_quota_bytes: s.disk_quota_bytes,
            requests_in_flight_max,
            request_timeout,
            lanes,
        })
    }
}

/// Splits `host:port` (with `[v6]:port` for IPv6) into the host, used as the TLS server
/// name, and the port.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port = port.parse::<u16>().map_err(|e| format!("{addr:?}: port {port:?}: {e}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests;
