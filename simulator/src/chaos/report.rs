//! The chaos run's result: a verdict per invariant, the timeline, the progress samples,
//! the counts, the answers per lane (created, and shed by reason) and the nodes'
//! resources, printable for people and serialisable with `--json`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::expect::mib;
use super::proxy::ProxyStats;
use crate::check::{Report, Violation};
use crate::ledger::LaneTotals;

/// The invariants a chaos run decides, in report order.
pub const INVARIANTS: [(&str, &str); 10] = [
    ("no-acknowledged-loss", "every event answered 201/200 is in the relay log (A1, E1)"),
    ("no-duplicate", "each event is in the relay log once, where and as the node placed it (A2)"),
    ("order", "per (node, epoch, lane) the log holds seq 1, 2, 3, … without gaps (A3)"),
    ("nothing-refused-present", "no payload refused with 409 or 422 is in the relay log"),
    ("idempotent-answers", "a re-posted event is answered with its original placement (A6)"),
    (
        "monotone-watermarks",
        "acks and relay watermarks never move back, except after a restart or wipe that explains it (A4)",
    ),
    (
        "convergence",
        "after the final heal, every backlog drains and every accepted event is logged within the budget (E1, E2)",
    ),
    ("no-crash", "no daemon exits or fails to start unless the timeline killed it (A9)"),
    (
        "shedding",
        "every shed answer (429/507/503) carries Retry-After, no shed event is stored, and each lane is shed or \
         spared as the scenario expects (F16, F20)",
    ),
    (
        "bounded-resources",
        "each node's resident memory and its store's disk use stay within the scenario's limits (F16, F20)",
    ),
];

/// Index of the `shedding` verdict in [`INVARIANTS`].
pub const SHEDDING: usize = 8;
/// Index of the `bounded-resources` verdict in [`INVARIANTS`].
pub const BOUNDED_RESOURCES: usize = 9;

/// Whether one invariant held.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantVerdict {
    /// The invariant's name (see [`INVARIANTS`]).
    pub name: String,
    /// What it states.
    pub statement: String,
    /// Whether it held.
    pub holds: bool,
    /// Counts or the first violations.
    pub detail: String,
}

/// One line of the timeline: a step applied, or something the run noticed.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Seconds from the start of the timeline.
    pub t_s: f64,
    /// What happened.
    pub text: String,
}

/// One progress sample.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressSample {
    /// Seconds from the start of the timeline.
    pub t_s: f64,
    /// Distinct events the scanners had accepted.
    pub accepted: u64,
    /// Events stored on the nodes but not acknowledged, over all nodes (`None` when a node
    /// did not answer).
    pub backlog: Option<u64>,
    /// Events in the relay log (`None` when the relay did not answer).
    pub replicated: Option<u64>,
    /// Each node's replication link state.
    pub links: Vec<String>,
    /// Per lane: events created and shed answers so far, as the scanners were told.
    pub lanes: BTreeMap<String, LaneTotals>,
    /// Each node's resources (empty fields when it did not answer).
    pub nodes: Vec<NodeSample>,
}

/// One node in a [`ProgressSample`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSample {
    /// Its resident set (`VmRSS` of `/proc/PID/status`).
    pub rss_bytes: Option<u64>,
    /// Bytes its store occupies on disk (`disk.used_bytes`).
    pub disk_used_bytes: Option<u64>,
    /// Its disk quota.
    pub disk_quota_bytes: Option<u64>,
    /// `normal`, `shedding_bulk`, `shedding_standard` or `full`.
    pub pressure: Option<String>,
    /// Posts in flight.
    pub requests_in_flight: Option<u64>,
}

/// One lane's answers over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LaneReport {
    /// `critical`, `standard` or `bulk`.
    pub lane: String,
    /// Events of the lane answered `created`.
    pub created: u64,
    /// Shed answers per reason, as the scanners were told.
    pub shed: Vec<ShedTally>,
    /// The nodes' own counts of shed events per reason (`/v1/status`, summed over the
    /// nodes, since each node's last start).
    pub node_shed: BTreeMap<String, u64>,
}

/// Shed answers of one reason in one lane.
#[derive(Debug, Clone, Serialize)]
pub struct ShedTally {
    /// The answer's status (429, 507, 503).
    pub status: u16,
    /// Its error code.
    pub reason: String,
    /// How many answers, one per event and attempt.
    pub answers: u64,
    /// When the first came, from the start of the timeline.
    pub first_t_s: f64,
    /// When the last came.
    pub last_t_s: f64,
}

/// One node's resources over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeResources {
    /// The node id.
    pub node: String,
    /// Resident set at the first sample.
    pub rss_start_bytes: Option<u64>,
    /// Largest resident set sampled.
    pub rss_max_bytes: Option<u64>,
    /// Largest growth of the resident set above the first sample after a start.
    pub rss_growth_max_bytes: Option<u64>,
    /// The disk quota.
    pub disk_quota_bytes: Option<u64>,
    /// Largest `disk.used_bytes` sampled.
    pub disk_used_max_bytes: Option<u64>,
    /// Most `disk.used_bytes` was above the quota (0 when never above).
    pub disk_over_quota_max_bytes: Option<u64>,
    /// The disk pressure at the end of the run.
    pub pressure_end: Option<String>,
    /// Acknowledged events pruned under pressure (since the node's last start).
    pub pruned_under_pressure: u64,
    /// Compactions under pressure (since the node's last start).
    pub compactions: u64,
}

/// Whether one `[[expect]]` window held.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectationVerdict {
    /// The window and what it expects.
    pub window: String,
    /// Whether it held.
    pub holds: bool,
    /// What was seen, or what failed.
    pub detail: String,
}

/// The counts the verdicts rest on.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunCounts {
    /// Distinct events answered 201/200.
    pub accepted: u64,
    /// Events in the relay log at the end.
    pub logged: u64,
    /// `(node, epoch, lane)` streams in the log.
    pub streams: u64,
    /// Conflicting posts (answered 409).
    pub conflicts: u64,
    /// Events refused (422).
    pub rejected: u64,
    /// Events the scanners gave up on.
    pub unanswered: u64,
    /// Of those, how many reached the relay.
    pub unanswered_logged: u64,
    /// HTTP requests answered.
    pub requests: u64,
    /// Requests retried.
    pub retries: u64,
    /// Events answered `duplicate`.
    pub duplicate_answers: u64,
    /// Shed answers (429, 507, 503 `store_failed`), one per event and attempt.
    pub shed_answers: u64,
    /// Events still shed when the scanners stopped: never stored.
    pub shed: u64,
}

/// The whole result of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The time factor applied (1 for the full variant).
    pub scale: f64,
    /// Whether every invariant held.
    pub ok: bool,
    /// Wall time of the run, start-up included.
    pub duration_s: f64,
    /// Convergence budget after the final heal.
    pub budget_s: f64,
    /// How long convergence took after the final heal, if it happened.
    pub converged_after_heal_s: Option<f64>,
    /// One verdict per invariant.
    pub verdicts: Vec<InvariantVerdict>,
    /// Counts.
    pub counts: RunCounts,
    /// Steps and noticed events, in time order.
    pub timeline: Vec<TimelineEntry>,
    /// Progress samples, about one per second.
    pub progress: Vec<ProgressSample>,
    /// The violations found by the exactly-once check (the first 50 of each kind).
    pub violations: Vec<String>,
    /// Things the run noticed that are allowed but worth knowing (a wiped relay's
    /// watermarks moving back, daemons that had to be started for the check).
    pub observations: Vec<String>,
    /// The proxies' counters, summed over the nodes.
    pub proxy: ProxyStats,
    /// Per lane: created and shed answers.
    pub lanes: Vec<LaneReport>,
    /// Per node: memory and disk use.
    pub resources: Vec<NodeResources>,
    /// Each `[[expect]]` window's verdict.
    pub expectations: Vec<ExpectationVerdict>,
    /// The tails of the daemons' logs, kept when a verdict failed.
    pub log_tails: Vec<(String, String)>,
}

impl ChaosReport {
    /// The failed verdicts.
    pub fn failed(&self) -> impl Iterator<Item = &InvariantVerdict> {
        self.verdicts.iter().filter(|v| !v.holds)
    }
}

/// Which invariant a violation of the exactly-once check breaks.
pub fn invariant_of(v: &Violation) -> &'static str {
    match v {
        Violation::Lost { .. } => "no-acknowledged-loss",
        Violation::Duplicated { .. }
        | Violation::Misplaced { .. }
        | Violation::PayloadChanged { .. }
        | Violation::Unknown { .. } => "no-duplicate",
        Violation::OutOfOrder { .. } | Violation::OffsetGap { .. } => "order",
        Violation::ConflictStored { .. } | Violation::RejectedStored { .. } => "nothing-refused-present",
        Violation::Answer(_) => "idempotent-answers",
        Violation::ShedStored { .. } | Violation::ShedAnswer(_) => "shedding",
    }
}

/// The violations of the exactly-once check that break `invariant`: how many were found,
/// and those kept (the first of each kind).
pub fn violations_of<'a>(report: &'a Report, invariant: &str) -> (u64, Vec<&'a Violation>) {
    let kept: Vec<&Violation> = report.violations.iter().filter(|v| invariant_of(v) == invariant).collect();
    let kinds: std::collections::BTreeSet<&str> = kept.iter().map(|v| v.kind()).collect();
    (kinds.iter().map(|k| report.total_of(k)).sum(), kept)
}

/// The verdicts of the exactly-once check's invariants (all but the watermark and
/// convergence ones, which the runner decides).
pub fn check_verdicts(report: &Report) -> Vec<InvariantVerdict> {
    let c = &report.counts;
    INVARIANTS[..5]
        .iter()
        .map(|(name, statement)| {
            let (total, broken) = violations_of(report, name);
            let detail = if broken.is_empty() {
                match *name {
                    "no-acknowledged-loss" => format!("{} accepted events, all in the relay log", c.accepted),
                    "no-duplicate" => format!("{} log entries, each event once", c.logged),
                    "order" => format!("{} streams, each 1..n in offset order", c.streams),
                    "nothing-refused-present" => {
                        format!(
                            "{} conflicting posts and {} invalid events, none logged",
                            c.conflicts, c.rejected
                        )
                    }
                    _ => "every re-post answered with its original placement".to_owned(),
                }
            } else {
                let first: Vec<String> = broken.iter().take(5).map(|v| v.to_string()).collect();
                format!("{total} violations: {}", first.join("; "))
            };
            InvariantVerdict {
                name: (*name).to_owned(),
                statement: (*statement).to_owned(),
                holds: broken.is_empty(),
                detail,
            }
        })
        .collect()
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "scenario {} (seed {}, time x{}): {} accepted, {} logged over {} streams; {} requests, {} retries, \
             {} duplicate answers, {} conflicts, {} invalid, {} unanswered ({} logged), {} shed answers \
             ({} events never stored)",
            self.scenario,
            self.seed,
            self.scale,
            c.accepted,
            c.logged,
            c.streams,
            c.requests,
            c.retries,
            c.duplicate_answers,
            c.conflicts,
            c.rejected,
            c.unanswered,
            c.unanswered_logged,
            c.shed_answers,
            c.shed
        )?;
        let p = &self.proxy;
        writeln!(
            f,
            "proxy: to-relay {} datagrams ({} dropped, {} delayed, {} duplicated), to-node {} ({} dropped, \
             {} delayed, {} duplicated)",
            p.to_relay.received,
            p.to_relay.dropped,
            p.to_relay.delayed,
            p.to_relay.duplicated,
            p.to_node.received,
            p.to_node.dropped,
            p.to_node.delayed,
            p.to_node.duplicated
        )?;
        for o in &self.observations {
            writeln!(f, "note: {o}")?;
        }
        for lane in &self.lanes {
            write!(f, "lane {:<8} {:>7} created", lane.lane, lane.created)?;
            for t in &lane.shed {
                write!(
                    f,
                    ", {} {} {} (at {:.1}s to {:.1}s)",
                    t.answers, t.status, t.reason, t.first_t_s, t.last_t_s
                )?;
            }
            if lane.shed.is_empty() {
                write!(f, ", never shed")?;
            }
            let node: Vec<String> =
                lane.node_shed.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
            if !node.is_empty() {
                write!(f, "; the node counted {}", node.join(", "))?;
            }
            writeln!(f)?;
        }
        for r in &self.resources {
            write!(f, "node {}:", r.node)?;
            if let (Some(start), Some(max)) = (r.rss_start_bytes, r.rss_max_bytes) {
                write!(
                    f,
                    " rss {} at start, peak {} (+{})",
                    mib(start),
                    mib(max),
                    mib(r.rss_growth_max_bytes.unwrap_or(0))
                )?;
            }
            if let (Some(used), Some(quota)) = (r.disk_used_max_bytes, r.disk_quota_bytes) {
                write!(
                    f,
                    "; store peak {} of a {} quota, pressure {} at the end, {} events pruned under pressure, \
                     {} compactions",
                    mib(used),
                    mib(quota),
                    r.pressure_end.as_deref().unwrap_or("unknown"),
                    r.pruned_under_pressure,
                    r.compactions
                )?;
            }
            writeln!(f)?;
        }
        for e in &self.expectations {
            writeln!(f, "expect {}  {}: {}", if e.holds { "ok" } else { "FAIL" }, e.window, e.detail)?;
        }
        for v in &self.verdicts {
            writeln!(f, "  {:4}  {:<24} {}", if v.holds { "ok" } else { "FAIL" }, v.name, v.detail)?;
        }
        write!(
            f,
            "{}: {} in {:.1}s",
            self.scenario,
            if self.ok { "every invariant held" } else { "INVARIANTS BROKEN" },
            self.duration_s
        )
    }
}
