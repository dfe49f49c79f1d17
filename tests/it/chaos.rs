//! The chaos layer in CI: every shipped scenario of `simulator/scenarios`, quick variant,
//! one after the other, through the library API; every invariant of every scenario must
//! hold.

use std::time::Instant;

use simulator::chaos::{self, Scenario, scenario::LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_scenario_keeps_every_invariant_in_its_quick_variant() {
    let files = chaos::shipped_scenarios().unwrap();
    assert!(files.len() >= 9, "shipped scenarios: {files:?}");
    let options = LoadOptions { quick: true, ..LoadOptions::default() };
    let mut failed = Vec::new();
    for file in &files {
        let scenario = Scenario::load(file, &options).unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let report = chaos::run(&scenario, &mut out).await;
        let text = String::from_utf8_lossy(&out);
        match report {
            Ok(report) if report.ok => {
                eprintln!("{}: ok in {:.1}s", scenario.name, started.elapsed().as_secs_f64());
            }
            Ok(report) => {
                eprintln!("{text}");
                let names: Vec<&str> = report.failed().map(|v| v.name.as_str()).collect();
                failed.push(format!("{}: {}", scenario.name, names.join(", ")));
            }
            Err(e) => {
                eprintln!("{text}");
                failed.push(format!("{}: the run failed: {e:#}", scenario.name));
            }
        }
    }
    assert!(failed.is_empty(), "scenarios with broken invariants: {failed:#?}");
}
