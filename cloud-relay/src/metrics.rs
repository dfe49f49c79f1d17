//! The per-node part of the relay's `/metrics`: for each node the relay has heard from,
//! whether it is connected, how long ago it was last seen, and how many events of each
//! lane the relay holds from it. Read from the store when Prometheus scrapes. One series
//! per node (and lane): a region's nodes are a bounded, known set.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use sync_protocol::Lane;

use crate::server::Connections;
use crate::store::{Store, now_ms};

/// The `node_id` label of the per-node series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node, as its certificate names it.
    pub node_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLaneLabels {
    node_id: String,
    lane: &'static str,
}

/// The collector of per-node levels.
pub struct NodeLevels {
    /// The store, for the nodes and their watermarks.
    pub store: Store,
    /// The live connections.
    pub connections: Arc<Connections>,
}

impl std::fmt::Debug for NodeLevels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeLevels")
    }
}

impl Collector for NodeLevels {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // An unreadable store shows no per-node series; /v1/nodes reports the error.
        let rows = self.store.nodes().unwrap_or_default();
        let now = now_ms();
        let mut connected = encoder.encode_descriptor(
            "node_connected",
            "1 while the node has a welcomed connection",
            None,
            MetricType::Gauge,
        )?;
        for row in &rows {
            let label = NodeLabel { node_id: row.node_id.as_str().to_owned() };
            let up = i64::from(self.connections.is_connected(&row.node_id));
            ConstGauge::new(up).encode(connected.encode_family(&label)?)?;
        }
        let mut seen = encoder.encode_descriptor(
            "node_last_seen_age",
            "Time since the node last said hello",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for row in &rows {
            let label = NodeLabel { node_id: row.node_id.as_str().to_owned() };
            let age = now.saturating_sub(row.seen.last_seen_ms) as f64 / 1_000.0;
            ConstGauge::new(age).encode(seen.encode_family(&label)?)?;
        }
        let mut held = encoder.encode_descriptor(
            "node_events_held",
            "Events the relay holds from the node, per lane (its watermarks, summed over epochs)",
            None,
            MetricType::Gauge,
        )?;
        for row in &rows {
            for lane in Lane::ALL {
                let label = NodeLaneLabels { node_id: row.node_id.as_str().to_owned(), lane: lane.as_str() };
                let sum: u64 = row.streams.iter().filter(|s| s.lane == lane).map(|s| s.watermark).sum();
                ConstGauge::new(sum as i64).encode(held.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}
