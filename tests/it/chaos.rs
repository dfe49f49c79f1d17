//! The chaos layer in CI: every shipped scenario of `simulator/scenarios` in its quick
//! variant, one test each, through the library API; every invariant must hold. A test
//! that lists the shipped files makes sure no scenario ships without its test here.

use std::path::Path;
use std::time::Instant;

use simulator::chaos::{self, Scenario, scenario::LoadOptions};

/// The scenarios with a test below; adding a file to `simulator/scenarios` means adding
/// its name here and a test.
const TESTED: [&str; 10] = [
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

async fn holds(name: &str) {
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
        Ok(report) if report.ok => eprintln!("{name}: ok in {:.1}s", started.elapsed().as_secs_f64()),
        Ok(report) => {
            let names: Vec<&str> = report.failed().map(|v| v.name.as_str()).collect();
            panic!("{name}: broken invariants {names:?}\n{text}");
        }
        Err(e) => panic!("{name}: the run failed: {e:#}\n{text}"),
    }
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
