//! The seeded plan of one run: how many nodes and scanners, the protocol limits, the
//! network faults, the crashes and the store wipes of the safety phase.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::net::{Bandwidth, Duplicate, FaultRule, Hold, Latency, Loss, Partition, Reorder, Targets, Window};
use super::node::NodeCrashPoint;
use super::relay::RelayCrashPoint;
use super::trace::Dir;

/// A planned crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// A node crash, at once or armed for a point.
    Node(usize, NodeCrashPoint),
    /// A relay crash, at once or armed for a point.
    Relay(RelayCrashPoint),
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crash::Node(node, point) => write!(f, "node-{node} crash {point:?}"),
            Crash::Relay(point) => write!(f, "relay crash {point:?}"),
        }
    }
}

/// Everything one seed decides before the run starts.
#[derive(Debug)]
pub struct Plan {
    /// Nodes.
    pub nodes: usize,
    /// Scanners per node.
    pub scanners_per_node: usize,
    /// Each node's one-way base latency.
    pub base_latency: Vec<Duration>,
    /// The sender's batch size per node.
    pub batch_events_max: Vec<u32>,
    /// The sender's window per node.
    pub batches_in_flight_max: Vec<u32>,
    /// The relay's limits: batch size and window.
    pub relay_limits: (u32, u32),
    /// Network faults, in order.
    pub rules: Vec<Box<dyn FaultRule>>,
    /// Crashes: when they are armed, and how long the process stays down.
    pub crashes: Vec<(Duration, Crash, Duration)>,
    /// Store wipes: when, which node.
    pub wipes: Vec<(Duration, usize)>,
    /// When the relay's disk is slow (commits of hundreds of milliseconds).
    pub slow_disk: Option<Window>,
}

/// Draws the plan of a run whose safety phase lasts `safety`.
pub fn draw(rng: &mut StdRng, safety: Duration) -> Plan {
    let nodes = rng.random_range(2..=4);
    let scanners_per_node = rng.random_range(1..=2);
    let base_latency = (0..nodes).map(|_| Duration::from_millis(rng.random_range(2..=60))).collect();
    let batch_events_max = (0..nodes).map(|_| rng.random_range(1..=32)).collect();
    let in_flight = 1..=sync_protocol::wire::BATCHES_IN_FLIGHT_MAX;
    let batches_in_flight_max = (0..nodes).map(|_| rng.random_range(in_flight.clone())).collect();
    let relay_limits = (rng.random_range(2..=64), rng.random_range(in_flight));
    let rules = (0..rng.random_range(1..=5)).map(|_| draw_rule(rng, nodes, safety)).collect();
    let mut crashes = Vec::new();
    for _ in 0..rng.random_range(0..=3) {
        let at = uniform(rng, safety);
        let down = down_time(rng);
        let crash = if rng.random_bool(0.4) {
            let point = match rng.random_range(0..3) {
                0 => RelayCrashPoint::Now,
                1 => RelayCrashPoint::AfterNextCommit,
                _ => RelayCrashPoint::BeforeNextCommit,
            };
            Crash::Relay(point)
        } else {
            let point = match rng.random_range(0..3) {
                0 => NodeCrashPoint::Now,
                1 => NodeCrashPoint::BeforeNextAnswer,
                _ => NodeCrashPoint::OnNextAck,
            };
            Crash::Node(rng.random_range(0..nodes), point)
        };
        crashes.push((at, crash, down));
    }
    let wipes = if rng.random_bool(0.1) {
        vec![(uniform(rng, safety), rng.random_range(0..nodes))]
    } else {
        Vec::new()
    };
    let slow_disk = rng.random_bool(0.3).then(|| window(rng, safety, 2_000, 15_000));
    Plan {
        nodes,
        scanners_per_node,
        base_latency,
        batch_events_max,
        batches_in_flight_max,
        relay_limits,
        rules,
        crashes,
        wipes,
        slow_disk,
    }
}

/// How long a crashed process stays down: often a quick supervisor restart, which races
/// the connections and commits the crash left behind, else up to five seconds.
pub fn down_time(rng: &mut StdRng) -> Duration {
    let ms = if rng.random_bool(0.3) { rng.random_range(20..=300) } else { rng.random_range(300..=5_000) };
    Duration::from_millis(ms)
}

fn uniform(rng: &mut StdRng, span: Duration) -> Duration {
    Duration::from_millis(rng.random_range(0..span.as_millis().max(1) as u64))
}

/// A window starting in the first 80% of the phase, lasting `min_ms..=max_ms`.
fn window(rng: &mut StdRng, safety: Duration, min_ms: u64, max_ms: u64) -> Window {
    let from = uniform(rng, safety.mul_f64(0.8));
    let until = (from + Duration::from_millis(rng.random_range(min_ms..=max_ms))).min(safety);
    Window { from, until }
}

fn targets(rng: &mut StdRng, nodes: usize, dir: Option<Dir>) -> Targets {
    let nodes = if rng.random_bool(0.4) { u64::MAX } else { 1u64 << rng.random_range(0..nodes) };
    Targets { nodes, dir }
}

fn draw_rule(rng: &mut StdRng, nodes: usize, safety: Duration) -> Box<dyn FaultRule> {
    let any_dir = if rng.random_bool(0.5) { Dir::ToRelay } else { Dir::ToNode };
    match rng.random_range(0..100) {
        0..20 => Box::new(Partition {
            window: window(rng, safety, 500, 15_000),
            targets: targets(rng, nodes, None),
        }),
        20..35 => Box::new(Partition {
            window: window(rng, safety, 500, 15_000),
            targets: targets(rng, nodes, Some(any_dir)),
        }),
        35..55 => Box::new(Loss {
            window: window(rng, safety, 1_000, 15_000),
            targets: targets(rng, nodes, None),
            rate: rng.random_range(0.05..0.5),
        }),
        55..70 => Box::new(Latency {
            window: window(rng, safety, 1_000, 15_000),
            targets: targets(rng, nodes, None),
            extra: Duration::from_millis(rng.random_range(20..=300)),
            jitter: Duration::from_millis(rng.random_range(0..=300)),
        }),
        70..80 => Box::new(Reorder {
            window: window(rng, safety, 1_000, 15_000),
            targets: targets(rng, nodes, None),
            rate: rng.random_range(0.05..0.3),
            delay_max: Duration::from_millis(rng.random_range(10..=500)),
        }),
        80..90 => Box::new(Duplicate {
            window: window(rng, safety, 1_000, 15_000),
            targets: targets(rng, nodes, None),
            rate: rng.random_range(0.05..0.3),
        }),
        90..95 => Box::new(Bandwidth {
            window: window(rng, safety, 1_000, 15_000),
            targets: targets(rng, nodes, None),
            bytes_per_s: rng.random_range(4_000..=32_000),
            busy_until: Default::default(),
        }),
        _ => Box::new(Hold { window: window(rng, safety, 500, 12_000), targets: targets(rng, nodes, None) }),
    }
}
