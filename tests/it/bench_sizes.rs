//! `outpost-sim bench --events N --seconds S` against the real daemons: a backlog that is
//! not a whole number of posts is buffered, drained and checked in full, and a full run
//! shorter than the one its target is set for prints its figures without a verdict.

use serde_json::Value;
use simulator::bench::{self, BenchArgs};

/// Runs `args` and gives the printed table and the JSON rows.
fn run(args: BenchArgs) -> (bool, String, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rows.json");
    let args = BenchArgs { json: Some(json.clone()), ..args };
    let mut out = Vec::new();
    let passed = bench::run(&args, &mut out).unwrap();
    let rows: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (passed, String::from_utf8(out).unwrap(), rows.as_array().unwrap().clone())
}

#[test]
fn events_size_a_backlog_that_is_not_a_whole_number_of_posts() {
    // 2,550 events: the buffering posts arrays of 100, so the last post is shorter.
    let (passed, table, rows) = run(BenchArgs { events: Some(2_550), ..BenchArgs::new("disk", true) });
    assert!(passed, "{table}");
    assert!(table.contains("running disk (store bytes per buffered event), quick, 2550 events"), "{table}");
    let row = &rows[0];
    assert_eq!(row["correct"], true, "every buffered event at the relay exactly once: {row}");
    assert!(row["case"].as_str().unwrap().starts_with("2550 events buffered"), "{row}");
    assert!(row["figure"].as_f64().unwrap() > 0.0, "{row}");
}

#[test]
fn events_size_a_backlog_that_is_not_a_whole_number_of_tenths() {
    // backlog-memory samples the RSS after each tenth of its backlog.
    let (passed, table, rows) =
        run(BenchArgs { events: Some(1_001), ..BenchArgs::new("backlog-memory", true) });
    assert!(passed, "{table}");
    let row = &rows[0];
    assert_eq!(row["correct"], true, "every buffered event at the relay exactly once: {row}");
    assert!(row["case"].as_str().unwrap().starts_with("1001 events buffered"), "{row}");
}

#[test]
fn a_full_run_shorter_than_its_targets_is_not_judged() {
    let (passed, table, rows) = run(BenchArgs { seconds: Some(1), ..BenchArgs::new("ingest-single", false) });
    let row = &rows[0];
    assert!(passed, "an unjudged run passes when it is correct: {table}");
    assert_eq!(row["correct"], true, "{row}");
    assert_eq!(row["target"], Value::Null, "1 s is shorter than the 10 s the target is judged on: {row}");
    assert!(row["figure"].as_f64().unwrap() > 0.0, "{row}");
    let case = row["case"].as_str().unwrap();
    let seconds: f64 =
        case.split(" events in ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    assert!((0.9..5.0).contains(&seconds), "posted for about --seconds: {case}");
    assert!(table.contains("running ingest-single") && table.contains(", 1 s"), "{table}");
    assert!(case.contains("unjudged: smaller than this bench's full size"), "the row says why: {case}");
}
