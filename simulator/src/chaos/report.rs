//! The chaos run's result: a verdict per invariant, the timeline, the progress samples,
//! and the counts, printable for people and serialisable with `--json`.

use std::fmt;

use serde::Serialize;

use super::proxy::ProxyStats;
use crate::check::{Report, Violation};

/// The invariants a chaos run decides, in report order.
pub const INVARIANTS: [(&str, &str); 8] = [
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
];

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
    /// Every violation found by the exactly-once check (the first 50).
    pub violations: Vec<String>,
    /// Things the run noticed that are allowed but worth knowing (a wiped relay's
    /// watermarks moving back, daemons that had to be started for the check).
    pub observations: Vec<String>,
    /// The proxies' counters, summed over the nodes.
    pub proxy: ProxyStats,
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
    }
}

/// The verdicts of the exactly-once check's invariants (all but the watermark and
/// convergence ones, which the runner decides).
pub fn check_verdicts(report: &Report) -> Vec<InvariantVerdict> {
    let c = &report.counts;
    INVARIANTS[..5]
        .iter()
        .map(|(name, statement)| {
            let broken: Vec<&Violation> =
                report.violations.iter().filter(|v| invariant_of(v) == *name).collect();
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
                format!("{} violations: {}", broken.len(), first.join("; "))
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
             {} duplicate answers, {} conflicts, {} invalid, {} unanswered ({} logged)",
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
            c.unanswered_logged
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
