//! Deciding a scenario's overload expectations and resource limits.
//!
//! An [`Expectation`] is judged from the scanners' answers per lane ([`LaneAnswers`]: when
//! each event was created and when each shed answer came) within its window of the
//! timeline, and from the nodes' disk pressure in the last progress sample of the window.
//! [`Limits`] are judged from every progress sample: a node's resident set against the
//! first sample after its start, and its store's disk use against its quota.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use super::report::{ExpectationVerdict, NodeResources, ProgressSample};
use super::scenario::{Expectation, Limits};
use crate::ledger::LaneAnswers;

/// Decides each expectation. `t0` is the start of the timeline the windows count from.
pub fn judge_expectations(
    expectations: &[Expectation],
    lanes: &BTreeMap<String, LaneAnswers>,
    t0: Instant,
    samples: &[ProgressSample],
) -> Vec<ExpectationVerdict> {
    expectations.iter().map(|e| judge(e, lanes, t0, samples)).collect()
}

fn judge(
    e: &Expectation,
    lanes: &BTreeMap<String, LaneAnswers>,
    t0: Instant,
    samples: &[ProgressSample],
) -> ExpectationVerdict {
    let (window, e) = (e, &e.spec);
    let (from, to) = (t0 + window.from, t0 + window.to);
    let none = LaneAnswers::default();
    let answers = |lane: &str| lanes.get(lane).unwrap_or(&none);
    let reason = e.reason.as_deref();
    let by = reason.map_or_else(String::new, |r| format!(" {r}"));
    let at = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for lane in &e.shed {
        match answers(lane).shed_within(reason, from, to) {
            0 => failures.push(format!("{lane} got no{by} shed answer")),
            n => seen.push(format!("{lane} shed{by} {n} times")),
        }
    }
    for lane in &e.not_shed {
        let a = answers(lane);
        match a.shed_within(None, from, to) {
            0 => seen.push(format!("{lane} never shed")),
            n => {
                let mut text = format!("{lane} got {n} shed answers (");
                for r in a.shed.keys() {
                    let k = a.shed_within(Some(&r.error), from, to);
                    if k > 0 {
                        let _ = write!(text, "{r}: {k}, ");
                    }
                }
                let first = a.first_shed_within(None, from, to).map_or(0.0, at);
                let _ = write!(text, "the first at {first:.1}s)");
                failures.push(text);
            }
        }
    }
    for lane in &e.accepted {
        match answers(lane).created_within(from, to) {
            0 => failures.push(format!("no {lane} event was created")),
            n => seen.push(format!("{n} {lane} created")),
        }
    }
    if !e.shed_order.is_empty() {
        let firsts: Vec<(&str, Option<Instant>)> = e
            .shed_order
            .iter()
            .map(|lane| (lane.as_str(), answers(lane).first_shed_within(reason, from, to)))
            .collect();
        let text: Vec<String> = firsts
            .iter()
            .map(|(lane, t)| {
                format!("{lane} at {}", t.map_or_else(|| "never".to_owned(), |t| format!("{:.1}s", at(t))))
            })
            .collect();
        let ordered = firsts.iter().all(|(_, t)| t.is_some()) && firsts.windows(2).all(|w| w[0].1 < w[1].1);
        let text = format!("first{by} shed: {}", text.join(", "));
        if ordered { seen.push(text) } else { failures.push(text) }
    }
    if let Some(want) = &e.pressure {
        let (from_s, to_s) = (window.from.as_secs_f64(), window.to.as_secs_f64());
        let last = samples.iter().rev().find(|s| s.t_s >= from_s && s.t_s <= to_s);
        match last {
            None => {
                failures.push("no progress sample in the window to read the disk pressure from".to_owned())
            }
            Some(sample) => {
                let found: Vec<String> = sample
                    .nodes
                    .iter()
                    .map(|n| n.pressure.clone().unwrap_or_else(|| "unknown".to_owned()))
                    .collect();
                let text = format!("disk pressure {} at {:.1}s", found.join(", "), sample.t_s);
                if found.iter().all(|p| p == want) { seen.push(text) } else { failures.push(text) }
            }
        }
    }
    let holds = failures.is_empty();
    let detail = if holds { seen.join("; ") } else { failures.join("; ") };
    ExpectationVerdict { window: window.to_string(), holds, detail }
}

/// Tracks one node's resources over the progress samples.
#[derive(Debug, Clone, Default)]
pub struct ResourceTracker {
    /// The resident set of the first sample after the current start, and that start's
    /// generation.
    baseline: Option<(u32, u64)>,
    usage: NodeResources,
}

impl ResourceTracker {
    /// A tracker of the node `node`.
    pub fn new(node: &str) -> ResourceTracker {
        ResourceTracker {
            baseline: None,
            usage: NodeResources { node: node.to_owned(), ..NodeResources::default() },
        }
    }

    /// Takes one sample: the resident set of the node's `generation`-th start (restarts
    /// count from the first sample after them), and the store's disk use and quota.
    pub fn observe(&mut self, generation: u32, rss_bytes: Option<u64>, disk: Option<(u64, u64)>) {
        let u = &mut self.usage;
        if let Some(rss) = rss_bytes {
            let base = match self.baseline {
                Some((g, base)) if g == generation => base,
                _ => {
                    self.baseline = Some((generation, rss));
                    u.rss_start_bytes.get_or_insert(rss);
                    rss
                }
            };
            u.rss_max_bytes = u.rss_max_bytes.max(Some(rss));
            u.rss_growth_max_bytes = u.rss_growth_max_bytes.max(Some(rss.saturating_sub(base)));
        }
        if let Some((used, quota)) = disk {
            u.disk_quota_bytes = Some(quota);
            u.disk_used_max_bytes = u.disk_used_max_bytes.max(Some(used));
            u.disk_over_quota_max_bytes = u.disk_over_quota_max_bytes.max(Some(used.saturating_sub(quota)));
        }
    }

    /// Notes the node's last disk pressure and pressure counters.
    pub fn note_end(&mut self, pressure: Option<String>, pruned_under_pressure: u64, compactions: u64) {
        self.usage.pressure_end = pressure;
        self.usage.pruned_under_pressure = pruned_under_pressure;
        self.usage.compactions = compactions;
    }

    /// What was seen.
    pub fn usage(&self) -> &NodeResources {
        &self.usage
    }
}

/// Decides the limits over every node's usage: whether they held, and the figures.
pub fn judge_limits(limits: &Limits, usage: &[NodeResources]) -> (bool, String) {
    let mut holds = true;
    let mut parts = Vec::new();
    for u in usage {
        let mut text = format!("{}:", u.node);
        match (u.rss_start_bytes, u.rss_max_bytes, u.rss_growth_max_bytes) {
            (Some(start), Some(max), Some(growth)) => {
                let _ = write!(text, " rss {} at start, peak {} (+{}", mib(start), mib(max), mib(growth));
                if let Some(limit) = limits.rss_growth_max_bytes {
                    let _ = write!(text, ", limit +{}", mib(limit));
                    holds &= growth <= limit;
                }
                text.push(')');
            }
            _ => {
                text.push_str(" rss never read");
                holds &= limits.rss_growth_max_bytes.is_none();
            }
        }
        match (u.disk_used_max_bytes, u.disk_quota_bytes, u.disk_over_quota_max_bytes) {
            (Some(used), Some(quota), Some(over)) => {
                let _ = write!(text, "; store peak {} of a {} quota", mib(used), mib(quota));
                if let Some(limit) = limits.disk_over_quota_max_bytes {
                    let _ = write!(text, " (over it by {} at most, limit {})", mib(over), mib(limit));
                    holds &= over <= limit;
                }
            }
            _ => holds &= limits.disk_over_quota_max_bytes.is_none(),
        }
        parts.push(text);
    }
    if limits.rss_growth_max_bytes.is_none() && limits.disk_over_quota_max_bytes.is_none() {
        parts.push("no limits set".to_owned());
    }
    (holds, parts.join("; "))
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests;
