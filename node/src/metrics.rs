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

use crate::ingest::ShedReason;
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

/// The `lane` and `reason` labels of a shed event; both from closed sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShedLabels {
    /// The lane.
    pub lane: &'static str,
    /// Why it was shed ([`ShedReason::as_str`]).
    pub reason: &'static str,
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
        Outcome::Shed { .. } => "shed",
    }
}

/// The metrics the HTTP handlers move; the store's writer keeps its own
/// ([`crate::store::WriterStats`]).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Posted events by lane and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Events shed by lane and reason.
    pub shed: Family<ShedLabels, Counter>,
    /// Posts refused before their body was read: every request slot was taken.
    pub requests_overloaded: Counter,
    /// Seconds from writing a batch to the relay to its acknowledgement (the relay's
    /// fsync included), moved by the replicator.
    pub replication_seconds: Histogram,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            shed: Family::default(),
            requests_overloaded: Counter::default(),
            // 1 ms to about 65 s.
            replication_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl NodeMetrics {
    /// Counts the outcomes of events posted to `lanes`, in the same order.
    pub fn count(&self, lanes: impl IntoIterator<Item = Lane>, outcomes: &[Outcome]) {
        for (lane, outcome) in lanes.into_iter().zip(outcomes) {
            if let Outcome::Shed { .. } = outcome {
                self.shed(Some(lane), ShedReason::DiskQuota);
                continue;
            }
            self.events
                .get_or_create(&EventLabels { lane: lane.as_str(), outcome: outcome_label(outcome) })
                .inc();
        }
    }

    /// Counts events of `lanes` shed for `reason`.
    pub fn shed(&self, lanes: impl IntoIterator<Item = Lane>, reason: ShedReason) {
        for lane in lanes {
            self.shed.get_or_create(&ShedLabels { lane: lane.as_str(), reason: reason.as_str() }).inc();
        }
    }

    /// Events of `lane` stored since start.
    pub fn created(&self, lane: Lane) -> u64 {
        self.events.get_or_create(&EventLabels { lane: lane.as_str(), outcome: "created" }).get()
    }

    /// Events of `lane` shed for `reason` since start.
    pub fn shed_count(&self, lane: Lane, reason: ShedReason) -> u64 {
        self.shed.get_or_create(&ShedLabels { lane: lane.as_str(), reason: reason.as_str() }).get()
    }

    /// The registry `/metrics` encodes: these metrics, the writer's, and the levels read
    /// at scrape time.
    pub fn registry(&self, store: Store, link: SharedLink) -> Registry {
        let mut registry = Registry::with_prefix("outpost_node");
        registry.register("events", "Posted events by lane and outcome", self.events.clone());
        // Every series exists from the start, so that a rate over a shed counter starts at 0.
        for lane in Lane::ALL {
            for reason in ShedReason::ALL {
                self.shed_count(lane, reason);
            }
        }
        registry.register("shed", "Events not stored, by lane and reason (429, 507, 503)", self.shed.clone());
        registry.register(
            "requests_overloaded",
            "Posts answered 429 before their body was read: every request slot was taken",
            self.requests_overloaded.clone(),
        );
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
            "Time from queueing a batch for the relay (its wait behind the lane's earlier batches and its read included) to its acknowledgement",
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
            "Length of the store file (extended ahead of use, sparsely)",
            Some(&Unit::Bytes),
            self.store.file_bytes() as i64,
        )?;
        let health = self.store.health();
        gauge(
            &mut encoder,
            "store_disk_used",
            "Bytes the store file occupies on disk",
            Some(&Unit::Bytes),
            health.used_bytes as i64,
        )?;
        gauge(
            &mut encoder,
            "store_disk_quota",
            "The store's disk quota (bulk is shed above 80%, standard above 90%)",
            Some(&Unit::Bytes),
            self.store.quota().bytes as i64,
        )?;
        gauge(
            &mut encoder,
            "store_failed",
            "1 while the store recovers from a write error (disk full, read-only, EIO)",
            None,
            i64::from(health.failure.is_some()),
        )?;
        counter(
            &mut encoder,
            "store_pruned_under_pressure",
            "Acknowledged events pruned before their retention ended, to make room",
            health.pruned_under_pressure,
        )?;
        counter(&mut encoder, "store_compactions", "Compactions under disk pressure", health.compactions)?;
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
