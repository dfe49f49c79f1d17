//! The chaos layer in CI: every shipped scenario of `simulator/scenarios` in its quick
//! variant, one test each, through the library API; every invariant must hold. A test
//! that lists the shipped files makes sure no scenario ships without its test here.
//!
//! The overload scenarios (`burst`, `disk-pressure`) also state their expectations in the
//! scenario file; their tests check the main ones again from the report, so that a file
//! edited into expecting less still fails here.

use std::path::Path;
use std::time::Instant;

use simulator::chaos::report::LaneReport;
use simulator::chaos::{self, ChaosReport, Scenario, scenario::LoadOptions};

/// The scenarios with a test below; adding a file to `simulator/scenarios` means adding
/// its name here and a test.
const TESTED: [&str; 12] = [
    "burst",
    "disk-pressure",
    "duplicate-storm",
    "frozen-relay",
    "long-outage",
    "lossy-lte",
    "narrow-link",
    "one-way-partition",
    "power-cut",
    "relay-restart",
    "relay-wiped",
    "wan-flap",
];

const MIB: u64 = 1024 * 1024;

/// Runs a shipped scenario's quick variant and returns its report; panics with the run's
/// output unless every invariant held.
async fn run_quick(name: &str) -> ChaosReport {
    let file = chaos::shipped_scenarios()
        .unwrap()
        .into_iter()
        .find(|f| f.file_stem().and_then(|s| s.to_str()) == Some(name))
        .unwrap_or_else(|| panic!("no shipped scenario {name}"));
    let options = LoadOptions { quick: true, ..LoadOptions::default() };
    let scenario = Scenario::load(&file, &options).unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let report = chaos::run(&scenario, &mut out).await;
    let text = String::from_utf8_lossy(&out);
    match report {
        Ok(report) if report.ok => {
            eprintln!("{name}: ok in {:.1}s", started.elapsed().as_secs_f64());
            report
        }
        Ok(report) => {
            let names: Vec<&str> = report.failed().map(|v| v.name.as_str()).collect();
            panic!("{name}: broken invariants {names:?}\n{text}");
        }
        Err(e) => panic!("{name}: the run failed: {e:#}\n{text}"),
    }
}

async fn holds(name: &str) {
    run_quick(name).await;
}

fn lane<'a>(report: &'a ChaosReport, name: &str) -> &'a LaneReport {
    report
        .lanes
        .iter()
        .find(|l| l.lane == name)
        .unwrap_or_else(|| panic!("no lane {name} in {:?}", report.lanes))
}

/// Shed answers of `lane` with `status` and `reason`, and when the first came.
fn shed(lane: &LaneReport, status: u16, reason: &str) -> (u64, Option<f64>) {
    lane.shed
        .iter()
        .find(|t| t.status == status && t.reason == reason)
        .map_or((0, None), |t| (t.answers, Some(t.first_t_s)))
}

/// Every lane was shed only for `reason` (with `status`), and the node counted the same
/// events of each lane as shed as its scanners did.
#[track_caller]
fn shed_only_for(report: &ChaosReport, status: u16, reason: &str) {
    for l in &report.lanes {
        for t in &l.shed {
            assert_eq!((t.status, t.reason.as_str()), (status, reason), "lane {}: {:?}", l.lane, l.shed);
        }
        let node = l.node_shed.get(reason).copied().unwrap_or(0);
        assert_eq!(node, shed(l, status, reason).0, "lane {}: the node and the scanners disagree", l.lane);
    }
}

/// F20: ten times the rate with eight slots: bulk is answered 429 with Retry-After (the
/// `shedding` verdict holds only if every shed answer carried one), critical never, the
/// node's resident set stays bounded, and everything acknowledged is at the relay once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst() {
    let report = run_quick("burst").await;
    let (bulk, first) = shed(lane(&report, "bulk"), 429, "overloaded");
    assert!(bulk > 0, "no bulk post was answered 429: {:?}", report.lanes);
    let critical = lane(&report, "critical");
    assert!(critical.shed.is_empty() && critical.created > 0, "{critical:?}");
    shed_only_for(&report, 429, "overloaded");
    let tallied: u64 = report.lanes.iter().flat_map(|l| &l.shed).map(|t| t.answers).sum();
    assert_eq!(report.counts.shed_answers, tallied);

    // The burst happened: its busiest second accepted at least twice the median second
    // before it, and most bulk 429s came within it.
    let (start, end) = (15.0 * report.scale, 45.0 * report.scale);
    let per_second: Vec<(f64, u64)> =
        report.progress.windows(2).map(|w| (w[1].t_s, w[1].accepted.saturating_sub(w[0].accepted))).collect();
    let mut before: Vec<u64> =
        per_second.iter().filter(|(t, _)| *t > 1.5 && *t < start).map(|(_, n)| *n).collect();
    before.sort_unstable();
    let normal = before.get(before.len() / 2).copied().unwrap_or(0);
    let peak = per_second.iter().filter(|(t, _)| *t > start && *t < end).map(|(_, n)| *n).max().unwrap_or(0);
    assert!(normal > 0 && peak >= 2 * normal, "normal {normal}/s, burst peak {peak}/s");
    assert!(first.is_some_and(|t| t < end), "first bulk 429 at {first:?}");

    let node = &report.resources[0];
    let growth = node.rss_growth_max_bytes.expect("the node's resident set was sampled");
    assert!(growth <= 32 * MIB, "the node's resident set grew by {growth} bytes: {node:?}");
}

/// F16: a 4 MB quota and a WAN cut: 507 for bulk first, then standard, never critical; the
/// store stays within one commit of the quota; after the heal pressure is back to normal;
/// what was still shed when the scanners stopped is not at the relay, everything
/// acknowledged is, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure() {
    let report = run_quick("disk-pressure").await;
    let (bulk, bulk_first) = shed(lane(&report, "bulk"), 507, "disk_quota");
    let (standard, standard_first) = shed(lane(&report, "standard"), 507, "disk_quota");
    assert!(bulk > 0 && standard > 0, "{:?}", report.lanes);
    assert!(bulk_first < standard_first, "bulk first shed at {bulk_first:?}, standard at {standard_first:?}");
    let critical = lane(&report, "critical");
    assert!(critical.shed.is_empty() && critical.created > 0, "{critical:?}");
    shed_only_for(&report, 507, "disk_quota");

    let node = &report.resources[0];
    assert_eq!(node.disk_quota_bytes, Some(4_000_000), "{node:?}");
    let over = node.disk_over_quota_max_bytes.expect("the store's disk use was sampled");
    assert!(over <= MIB, "the store passed its quota by {over} bytes: {node:?}");
    assert!(
        node.disk_used_max_bytes.is_some_and(|used| used >= 3_600_000),
        "the standard mark was never reached: {node:?}"
    );
    assert_eq!(node.pressure_end.as_deref(), Some("normal"), "{node:?}");
    assert!(node.pruned_under_pressure > 0 && node.compactions > 0, "{node:?}");
    // Events still shed when the first shift ended: checked absent from the relay log by
    // the `shedding` verdict.
    assert!(report.counts.shed > 0, "{:?}", report.counts);
    assert_eq!(report.counts.logged, report.counts.accepted, "{:?}", report.counts);
}

#[test]
fn every_shipped_scenario_has_a_test() {
    let shipped: Vec<String> = chaos::shipped_scenarios()
        .unwrap()
        .iter()
        .filter_map(|f| Path::new(f).file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    let mut tested: Vec<String> = TESTED.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    let mut shipped_sorted = shipped.clone();
    shipped_sorted.sort();
    assert_eq!(shipped_sorted, tested);
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                holds($name).await;
            }
        )*
    };
}

scenario_tests! {
    duplicate_storm => "duplicate-storm",
    frozen_relay => "frozen-relay",
    long_outage => "long-outage",
    lossy_lte => "lossy-lte",
    narrow_link => "narrow-link",
    one_way_partition => "one-way-partition",
    power_cut => "power-cut",
    relay_restart => "relay-restart",
    relay_wiped => "relay-wiped",
    wan_flap => "wan-flap",
}
