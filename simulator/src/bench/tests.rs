//! Tests of the bench harness: every bench runs quick and is correct, and names resolve.

use super::*;

#[test]
fn every_bench_runs_quick_and_is_correct() {
    for bench in ALL {
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
