//! Tests of the bench harness: every bench runs quick and is correct, and names resolve.

use super::*;

/// The benches that run in this process. The others start the release daemons and run
/// in CI as `outpost-sim bench all --quick` (.ci/run).
const IN_PROCESS: [&str; 1] = ["crdt-merge"];

#[test]
fn in_process_benches_run_quick_and_are_correct() {
    for bench in ALL.iter().filter(|b| IN_PROCESS.contains(&b.name)) {
        let row = (bench.run)(&Options { quick: true }).unwrap();
        assert!(row.correct, "{} computed a wrong result: {row:?}", bench.name);
        assert!(row.pass, "a quick run is not judged against the target: {row:?}");
        assert!(row.figure > 0.0 && row.limit > 0.0, "{row:?}");
    }
}

#[test]
fn an_unknown_bench_is_an_error() {
    let args = BenchArgs { name: "nope".into(), quick: true, json: None };
    let err = run(&args, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("crdt-merge"), "{err}");
}

#[test]
fn rows_are_judged_by_their_goal() {
    let rate = Row::new("r", Goal::AtLeast, "ev/s").figures(600.0, 600.0, 1000.0);
    assert!((rate.ratio - 0.6).abs() < 1e-9);
    assert!(rate.clone().judged(Some(500.0), true).pass);
    assert!(!rate.clone().judged(Some(700.0), true).pass);
    assert!(!rate.clone().judged(Some(500.0), false).pass, "a missed secondary target fails the row");
    assert!(rate.judged(None, false).pass, "a quick run is not judged");
    let time = Row::new("t", Goal::AtMost, "ms").figures(20.0, 18.0, 10.0);
    assert!(time.clone().judged(Some(30.0), true).pass);
    assert!(!time.judged(Some(10.0), true).pass);
    let wrong = Row::new("w", Goal::AtMost, "ms").correct(Err("lost 3 events".into()));
    let mut out = Vec::new();
    print_table(&[wrong], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("WRONG") && text.contains("lost 3 events"), "{text}");
}

#[test]
fn numbers_print_with_three_figures() {
    assert_eq!(number(1_234_567.0), "1.23M");
    assert_eq!(number(45_600.0), "45.6k");
    assert_eq!(number(512.0), "512");
    assert_eq!(number(0.8123), "0.81");
}
