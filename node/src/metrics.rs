//! `GET /metrics`: what the node does, in the Prometheus (OpenMetrics) text format, every
//! name prefixed `outpost_node_`.
//!
//! Counters and histograms are moved where things happen (events by the HTTP handlers,
//! commits by the store's writer). Levels (backlog, oldest unacknowledged age, link
//! state, store size) are read from the store and the link when Prometheus scrapes, so
//! they are never stale and cost nothing between scrapes.

use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sync_protocol::Lane;

use crate::replicator::{LinkState, SharedLink};
use crate::store::{Outcome, Store, now_ms};

/// The `lane` and `outcome` labels of a posted event; both come from closed sets (three
/// lanes; created, duplicate, conflict, invalid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    /// The lane.
    pub lane: &'static str,
    /// What became of it.
    pub outcome: &'static str,
}

/// The `lane` label alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LaneOnly {
    lane: &'static str,
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Created(_) => "created",
        Outcome::Duplicate(_) => "duplicate",
        Outcome::Conflict(_) => "conflict",
        Outcome::Invalid { .. } => "invalid",
    }
}

/// The metrics the HTTP handlers move; the store's writer keeps its own
/// ([`crate::store::WriterStats`]).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Posted events by lane and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Seconds from writing a batch to the relay to its acknowledgement (the relay's
    /// fsync included), moved by the replicator.
    pub replication_seconds: Histogram,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            // 1 ms to about 65 s.
            replication_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl NodeMetrics {
    /// Counts the outcomes of events posted to `lanes`, in the same order.
    pub fn count(&self, lanes: impl IntoIterator<Item = Lane>, outcomes: &[Outcome]) {
        for (lane, outcome) in lanes.into_iter().zip(outcomes) {
            self.events
                .get_or_create(&EventLabels { lane: lane.as_str(), outcome: outcome_label(outcome) })
                .inc();
        }
    }

    /// The registry `/metrics` encodes: these metrics, the writer's, and the levels read
    /// at scrape time.
    pub fn registry(&self, store: Store, link: SharedLink) -> Registry {
        let mut registry = Registry::with_prefix("outpost_node");
        registry.register("events", "Posted events by lane and outcome", self.events.clone());
        let stats = store.stats();
        registry.register_with_unit(
            "commit",
            "Duration of a store commit, fsync included",
            Unit::Seconds,
            stats.commit_seconds.clone(),
        );
        registry.register("events_per_commit", "Events per store commit", stats.events_per_commit.clone());
        registry.register_with_unit(
            "replication_round_trip",
            "Time from sending a batch to the relay to its acknowledgement",
            Unit::Seconds,
            self.replication_seconds.clone(),
        );
        registry.register_collector(Box::new(Levels { store, link }));
        registry
    }
}

/// The levels read at scrape time.
#[derive(Clone)]
struct Levels {
    store: Store,
    link: SharedLink,
}

impl std::fmt::Debug for Levels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Levels")
    }
}

impl Collector for Levels {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let positions = *self.store.positions().borrow();
        let now = now_ms();
        per_lane(&mut encoder, "backlog_events", "Events not yet acknowledged by the relay", None, |lane| {
            let pos = positions.get(lane);
            pos.head.saturating_sub(pos.acked) as i64
        })?;
        per_lane(
            &mut encoder,
            "backlog",
            "Bytes of the events not yet acknowledged by the relay",
            Some(&Unit::Bytes),
            |lane| positions.get(lane).backlog_bytes as i64,
        )?;
        per_lane(&mut encoder, "head_seq", "Last sequence number assigned", None, |lane| {
            positions.get(lane).head as i64
        })?;
        per_lane(&mut encoder, "acked_seq", "Sequence number the relay holds durably", None, |lane| {
            positions.get(lane).acked as i64
        })?;
        let age = |lane| {
            // An unreadable store reads as no backlog here; /v1/status reports the error.
            let oldest = self.store.oldest_unacked_ms(lane).ok().flatten();
            oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1_000.0)
        };
        per_lane(
            &mut encoder,
            "oldest_unacked_age",
            "Age of the oldest event the relay has not acknowledged (0 when none)",
            Some(&Unit::Seconds),
            age,
        )?;
        gauge(
            &mut encoder,
            "store",
            "Size of the store file",
            Some(&Unit::Bytes),
            self.store.disk_bytes() as i64,
        )?;
        let stats = self.store.stats();
        counter(&mut encoder, "commits", "Store commits that appended events", stats.commits.load(Relaxed))?;
        counter(
            &mut encoder,
            "events_committed",
            "Events appended to the store",
            stats.events.load(Relaxed),
        )?;
        let link = self.link.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let connected = i64::from(link.state == LinkState::Connected);
        gauge(&mut encoder, "relay_connected", "1 while a relay has welcomed this node", None, connected)?;
        counter(&mut encoder, "relay_connects", "Handshakes a relay welcomed", link.connects)?;
        counter(&mut encoder, "relay_refusals", "Handshakes a relay refused", link.refusals)?;
        counter(
            &mut encoder,
            "relay_regressions",
            "Times a relay came back holding less than it had acknowledged",
            link.regressions,
        )
    }
}

fn per_lane<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Fn(Lane) -> V,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for lane in Lane::ALL {
        let labels = LaneOnly { lane: lane.as_str() };
        ConstGauge::new(value(lane)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

#[cfg(test)]
mod tests;
