//! Tests of the expectation and limit verdicts on hand-made answers and samples.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::chaos::report::NodeSample;
use crate::chaos::scenario::ExpectFile;
use crate::ledger::ShedReason;

/// Answers of one lane: creations and shed answers (of `reason`) at whole seconds.
fn lane(t0: Instant, created_s: &[u64], shed: &[(&str, u64)]) -> LaneAnswers {
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut answers =
        LaneAnswers { created: created_s.iter().map(|s| at(*s)).collect(), ..LaneAnswers::default() };
    for (reason, s) in shed {
        answers.shed.entry(ShedReason::of_code(reason)).or_default().push(at(*s));
    }
    answers
}

fn window(from_s: u64, to_s: u64, spec: ExpectFile) -> Expectation {
    Expectation { from: Duration::from_secs(from_s), to: Duration::from_secs(to_s), spec }
}

fn sample(t_s: f64, pressure: &str) -> ProgressSample {
    ProgressSample {
        t_s,
        accepted: 0,
        backlog: None,
        replicated: None,
        links: Vec::new(),
        lanes: BTreeMap::new(),
        nodes: vec![NodeSample { pressure: Some(pressure.to_owned()), ..NodeSample::default() }],
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn shed_spared_accepted_order_and_pressure_are_judged_within_the_window() {
    let t0 = Instant::now();
    let lanes: BTreeMap<String, LaneAnswers> = [
        ("bulk".to_owned(), lane(t0, &[1, 2], &[("disk_quota", 12), ("disk_quota", 13), ("overloaded", 5)])),
        ("standard".to_owned(), lane(t0, &[1, 14], &[("disk_quota", 15)])),
        ("critical".to_owned(), lane(t0, &[3, 12, 16], &[("overloaded", 30)])),
    ]
    .into();
    let samples = [sample(9.0, "normal"), sample(19.5, "shedding_standard"), sample(25.0, "normal")];
    let cut = window(
        10,
        20,
        ExpectFile {
            shed: strings(&["bulk", "standard"]),
            not_shed: strings(&["critical"]),
            accepted: strings(&["critical"]),
            reason: Some("disk_quota".to_owned()),
            shed_order: strings(&["bulk", "standard"]),
            pressure: Some("shedding_standard".to_owned()),
            ..ExpectFile::default()
        },
    );
    let v = judge_expectations(std::slice::from_ref(&cut), &lanes, t0, &samples);
    assert!(v[0].holds, "{v:?}");
    assert!(v[0].detail.contains("first disk_quota shed: bulk at 12.0s, standard at 15.0s"), "{v:?}");

    // The overloaded bulk answer at 5 s is outside the window; critical's at 30 s too.
    let burst = ExpectFile {
        shed: strings(&["bulk"]),
        reason: Some("overloaded".to_owned()),
        ..ExpectFile::default()
    };
    let burst = window(10, 20, burst);
    let v = judge_expectations(&[burst], &lanes, t0, &samples);
    assert!(!v[0].holds && v[0].detail == "bulk got no overloaded shed answer", "{v:?}");

    let reversed = ExpectFile { shed_order: strings(&["standard", "bulk"]), ..ExpectFile::default() };
    let spared = ExpectFile { not_shed: strings(&["critical"]), ..ExpectFile::default() };
    let idle = ExpectFile {
        accepted: strings(&["bulk"]),
        pressure: Some("normal".to_owned()),
        ..ExpectFile::default()
    };
    let (reversed, spared, idle) = (window(10, 20, reversed), window(20, 31, spared), window(10, 20, idle));
    let v = judge_expectations(&[reversed, spared, idle], &lanes, t0, &samples);
    assert!(!v[0].holds, "{v:?}");
    assert_eq!(v[1].detail, "critical got 1 shed answers (429 overloaded: 1, the first at 30.0s)");
    assert_eq!(v[2].detail, "no bulk event was created; disk pressure shedding_standard at 19.5s");
}

#[test]
fn limits_follow_the_baseline_of_each_start_and_the_quota() {
    const MIB: u64 = 1 << 20;
    let mut node = ResourceTracker::new("store-0001");
    node.observe(0, Some(20 * MIB), Some((MIB, 4 * MIB)));
    node.observe(0, Some(50 * MIB), Some((4 * MIB + MIB / 2, 4 * MIB)));
    // A restart: growth counts from the new start's first sample.
    node.observe(1, Some(70 * MIB), Some((2 * MIB, 4 * MIB)));
    node.observe(1, Some(75 * MIB), None);
    let usage = node.usage().clone();
    assert_eq!(usage.rss_growth_max_bytes, Some(30 * MIB));
    assert_eq!(usage.rss_max_bytes, Some(75 * MIB));
    assert_eq!(usage.disk_over_quota_max_bytes, Some(MIB / 2));
    let within = Limits { rss_growth_max_bytes: Some(32 * MIB), disk_over_quota_max_bytes: Some(MIB) };
    let (holds, detail) = judge_limits(&within, std::slice::from_ref(&usage));
    assert!(holds, "{detail}");
    assert!(detail.contains("rss 20.0 MiB at start, peak 75.0 MiB (+30.0 MiB, limit +32.0 MiB)"), "{detail}");
    let tight = Limits { rss_growth_max_bytes: Some(16 * MIB), disk_over_quota_max_bytes: Some(MIB) };
    assert!(!judge_limits(&tight, std::slice::from_ref(&usage)).0);
    let tight = Limits { rss_growth_max_bytes: None, disk_over_quota_max_bytes: Some(MIB / 4) };
    assert!(!judge_limits(&tight, std::slice::from_ref(&usage)).0);
    // A limit that was never measured does not hold.
    let unread = NodeResources { node: "store-0002".to_owned(), ..NodeResources::default() };
    assert!(!judge_limits(&within, &[unread]).0);
}
