//! Tests of the bench harness: every bench runs quick and is correct, names resolve, and
//! `--events` and `--seconds` size only the benches that take them.

use super::*;

/// The benches that run in this process. The others start the release daemons and run
/// in CI as `outpost-sim bench all --quick` (.ci/run).
const IN_PROCESS: [&str; 1] = ["crdt-merge"];

#[test]
fn in_process_benches_run_quick_and_are_correct() {
    for bench in ALL.iter().filter(|b| IN_PROCESS.contains(&b.name)) {
        let row = (bench.run)(&Options::quick()).unwrap();
        assert!(row.correct, "{} computed a wrong result: {row:?}", bench.name);
        assert!(row.pass, "a quick run is not judged against the target: {row:?}");
        assert!(row.figure > 0.0 && row.limit > 0.0, "{row:?}");
    }
}

#[test]
fn an_unknown_bench_is_an_error() {
    let args = BenchArgs::new("nope", true);
    let err = run(&args, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("crdt-merge"), "{err}");
}

#[test]
fn a_size_the_bench_does_not_take_is_refused_before_it_runs() {
    let refused = [
        ("crdt-merge", Some(5_000), None, "neither --events nor --seconds"),
        ("crdt-merge", None, Some(5), "neither --events nor --seconds"),
        ("fan-in", Some(5_000), None, "--seconds (time the sites post for), not --events"),
        ("drain", None, Some(5), "--events (the backlog), not --seconds"),
    ];
    for (name, events, seconds, says) in refused {
        let args = BenchArgs { events, seconds, ..BenchArgs::new(name, true) };
        let mut out = Vec::new();
        let err = run(&args, &mut out).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(says), "{name}: {err}");
        assert!(out.is_empty(), "{name} started: {}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn each_bench_gets_only_the_sizes_it_takes() {
    let args = BenchArgs { events: Some(5_000), seconds: Some(7), ..BenchArgs::new("all", false) };
    let by_name = |name: &str| ALL.iter().find(|b| b.name == name).unwrap().options(&args);
    let ingest = by_name("ingest-batch");
    assert_eq!((ingest.events, ingest.seconds), (Some(5_000), Some(Duration::from_secs(7))));
    let drain = by_name("drain");
    assert_eq!((drain.events, drain.seconds), (Some(5_000), None));
    let fan_in = by_name("fan-in");
    assert_eq!((fan_in.events, fan_in.seconds), (None, Some(Duration::from_secs(7))));
    let merge = by_name("crdt-merge");
    assert_eq!((merge.events, merge.seconds), (None, None));
    for bench in ALL {
        let takes = BenchArgs {
            events: bench.events.map(|_| 5_000),
            seconds: bench.seconds.map(|_| 7),
            ..BenchArgs::new(bench.name, false)
        };
        bench.check(&takes).unwrap();
        let what = [bench.events, bench.seconds];
        assert!(what.iter().flatten().all(|w| !w.is_empty()), "{} says what it sizes", bench.name);
    }
}

#[test]
fn an_ingest_run_is_judged_only_at_its_full_size() {
    let target = 50_000.0;
    let full = |events: Option<u64>, seconds: Option<u64>| {
        let options = Options { events, seconds: seconds.map(Duration::from_secs), ..Options::default() };
        ingest::full_size(&options, target)
    };
    assert!(full(None, None), "the default run");
    assert!(full(None, Some(30)));
    assert!(!full(None, Some(9)));
    assert!(full(Some(500_000), None), "as many events as the target rate posts in 10 s");
    assert!(!full(Some(499_999), None), "fewer: a fast node would finish early and a slow one be judged");
    assert!(!full(Some(5_000), Some(10)), "10 s is not enough when the run stops at 5,000 events");
    assert!(full(Some(1_000_000), Some(20)));
}

#[test]
fn a_run_smaller_than_the_targets_size_is_not_judged() {
    let full = Options::default();
    assert_eq!(full.target(500.0, true), Some(500.0));
    assert_eq!(full.target(500.0, false), None, "a smaller run prints its figures unjudged");
    assert_eq!(Options::quick().target(500.0, true), None, "a quick run is never judged");
    assert_eq!(full.events_or(10, 1_000), 1_000);
    assert_eq!(Options::quick().events_or(10, 1_000), 10);
    let sized = Options { events: Some(4_000), ..Options::quick() };
    assert_eq!(sized.events_or(10, 1_000), 4_000, "--events wins over either default");
}

#[test]
fn sizes_outside_their_range_are_refused_by_the_command_line() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }
    assert!(Cli::try_parse_from(["sim", "drain", "--events", "999"]).is_err());
    assert!(Cli::try_parse_from(["sim", "drain", "--events", "10000000001"]).is_err());
    assert!(Cli::try_parse_from(["sim", "fan-in", "--seconds", "0"]).is_err());
    assert!(Cli::try_parse_from(["sim", "fan-in", "--seconds", "3601"]).is_err());
    let ok = Cli::try_parse_from(["sim", "drain", "--events", "1000"]).unwrap();
    assert_eq!(ok.bench.events, Some(EVENTS_MIN));
}

#[test]
fn the_help_gives_each_benchs_default_size() {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let help = Cli::command().render_help().to_string();
    let commas = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for (benches, size) in [
        ("ingest-batch, ingest-single", ingest::FULL_RUN.as_secs().to_string()),
        ("drain, mixed", commas(drain::FULL_BACKLOG)),
        ("backlog-memory, restart", commas(backlog::LARGE_STORE)),
        ("disk", commas(backlog::DISK_BACKLOG)),
        ("fan-in", fan_in::FULL_WINDOW.as_secs().to_string()),
    ] {
        let line =
            help.lines().find(|l| l.trim_start().starts_with(&format!("{benches} "))).unwrap_or_default();
        assert!(line.contains(&format!("({size})")), "{benches}: {line:?} in\n{help}");
    }
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
