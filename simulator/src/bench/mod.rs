//! `outpost-sim bench`: the benchmarks of PERFORMANCE.md, each printing one row of the
//! table: bench, figure, same-run limit, ratio, target, pass/fail.
//!
//! A bench is a module with a [`Bench`] value in [`ALL`]; `bench all` runs every one
//! listed there. The limit is a baseline measured in the same run on the same machine
//! (the ratio figure / limit is what compares across machines), and the target is the
//! absolute figure PERFORMANCE.md asks for. `--quick` runs a small size that finishes in
//! a few seconds: CI runs it to keep the benches compiling and correct, so a quick run
//! fails only on a wrong result, never on a missed target.
//!
//! `--events N` and `--seconds S` size the benches that take them ([`Bench::events`],
//! [`Bench::seconds`]) instead of their defaults. A target is judged at the bench's full
//! size (its default: PERFORMANCE.md's where it names one) or a larger one
//! ([`Options::target`]); a smaller run prints its figures and its correctness, unjudged.
//!
//! To add a bench (ingest-batch, drain, …): write a module with a `run(&Options) ->
//! anyhow::Result<Row>` function, and list it in [`ALL`].

pub mod backlog;
pub mod crdt_merge;
pub mod drain;
pub mod fan_in;
pub mod ingest;
pub mod limits;
pub mod load;
pub mod progress;
pub mod site;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The fewest events `--events` takes: below that a backlog is mostly fixed costs.
pub const EVENTS_MIN: u64 = 1_000;
/// The most events `--events` takes: event numbers have ten digits in the ids.
pub const EVENTS_MAX: u64 = 10_000_000_000;
/// The longest `--seconds`: a timed run keeps a latency per post in memory.
pub const SECONDS_MAX: u64 = 3_600;

/// `outpost-sim bench` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Sizes (defaults; --quick runs smaller ones):
  ingest-batch, ingest-single  --seconds of posting (10), or --events to post
  drain, mixed                 --events buffered offline, then drained (1,000,000)
  backlog-memory, restart      --events buffered offline (10,000,000)
  disk                         --events buffered offline (1,000,000)
  fan-in                       --seconds of 1,000 sites posting (20)
  crdt-merge                   fixed: 10k SKUs x 50 actors

A run smaller than a bench's full size (the defaults above; for ingest, also at least
as many events as the target rate posts in 10 s) prints its figures and checks
correctness, but is not judged against the target: its result reads `ok`.")]
pub struct BenchArgs {
    /// The bench to run, or `all`.
    pub name: String,
    /// A small size that runs in seconds and judges only correctness.
    #[arg(long)]
    pub quick: bool,
    /// Events to buffer or post, for the benches sized in events (1,000 to 10^10).
    #[arg(long, value_name = "N", value_parser = events_arg)]
    pub events: Option<u64>,
    /// Seconds to run, for the benches sized in time (1 to 3,600).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=SECONDS_MAX))]
    pub seconds: Option<u64>,
    /// Write the rows as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `--events`: a count from [`EVENTS_MIN`] to [`EVENTS_MAX`].
fn events_arg(arg: &str) -> Result<u64, String> {
    match arg.parse::<u64>() {
        Ok(n) if (EVENTS_MIN..=EVENTS_MAX).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is outside {EVENTS_MIN} to {EVENTS_MAX} events")),
        Err(e) => Err(format!("not a count of events: {e}")),
    }
}

impl BenchArgs {
    /// The arguments of `bench NAME` at its default size, or `--quick`.
    pub fn new(name: &str, quick: bool) -> BenchArgs {
        BenchArgs { name: name.to_owned(), quick, events: None, seconds: None, json: None }
    }
}

/// How a bench runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The quick variant.
    pub quick: bool,
    /// `--events`, when the bench takes it.
    pub events: Option<u64>,
    /// `--seconds`, when the bench takes it.
    pub seconds: Option<Duration>,
}

impl Options {
    /// The quick variant at its default sizes.
    pub fn quick() -> Options {
        Options { quick: true, ..Options::default() }
    }

    /// The events to run with: `--events`, or the default of a quick or a full run.
    pub fn events_or(&self, quick: u64, full: u64) -> u64 {
        self.events.unwrap_or(if self.quick { quick } else { full })
    }

    /// The target to judge a run by: none for a quick run, nor for one smaller than the
    /// bench's full size (`full_size` false), which prints its figures unjudged.
    pub fn target(&self, target: f64, full_size: bool) -> Option<f64> {
        (!self.quick && full_size).then_some(target)
    }
}

/// One bench: its name and how to run it.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// The name on the command line and in the table.
    pub name: &'static str,
    /// What it measures, for `--help`-like listings and errors.
    pub about: &'static str,
    /// What `--events` sizes, if this bench takes it.
    pub events: Option<&'static str>,
    /// What `--seconds` sizes, if this bench takes it.
    pub seconds: Option<&'static str>,
    /// Runs it.
    pub run: fn(&Options) -> anyhow::Result<Row>,
}

impl Bench {
    /// The options of this bench from `args`: the sizes it does not take are left out.
    fn options(&self, args: &BenchArgs) -> Options {
        Options {
            quick: args.quick,
            events: args.events.filter(|_| self.events.is_some()),
            seconds: args.seconds.filter(|_| self.seconds.is_some()).map(Duration::from_secs),
        }
    }

    /// An error if `args` size this bench in a way it does not take.
    fn check(&self, args: &BenchArgs) -> anyhow::Result<()> {
        let takes = match (self.events, self.seconds) {
            (Some(e), Some(s)) => format!("--events ({e}) and --seconds ({s})"),
            (Some(e), None) => format!("--events ({e}), not --seconds"),
            (None, Some(s)) => format!("--seconds ({s}), not --events"),
            (None, None) => "neither --events nor --seconds: its size is fixed".to_owned(),
        };
        let refused = (args.events.is_some() && self.events.is_none())
            || (args.seconds.is_some() && self.seconds.is_none());
        anyhow::ensure!(!refused, "bench {} takes {takes}", self.name);
        Ok(())
    }
}

/// Every bench, in the order `all` runs them.
pub const ALL: &[Bench] = &[
    Bench {
        name: "ingest-batch",
        about: "64 clients posting 100 events each, durable acks",
        events: Some("events to post"),
        seconds: Some("time to post for"),
        run: ingest::run_batch,
    },
    Bench {
        name: "ingest-single",
        about: "256 clients posting one event each, durable acks",
        events: Some("events to post"),
        seconds: Some("time to post for"),
        run: ingest::run_single,
    },
    Bench {
        name: "drain",
        about: "a backlog buffered offline, durable at the relay once the WAN returns",
        events: Some("the backlog"),
        seconds: None,
        run: drain::run_drain,
    },
    Bench {
        name: "mixed",
        about: "shipments end to end while a bulk backlog drains",
        events: Some("the bulk backlog"),
        seconds: None,
        run: drain::run_mixed,
    },
    Bench {
        name: "backlog-memory",
        about: "node RSS as an offline backlog grows",
        events: Some("the backlog"),
        seconds: None,
        run: backlog::run_memory,
    },
    Bench {
        name: "disk",
        about: "store bytes per buffered event",
        events: Some("the backlog"),
        seconds: None,
        run: backlog::run_disk,
    },
    Bench {
        name: "restart",
        about: "start to first 201 with a large store, clean and after kill -9",
        events: Some("the events in the store"),
        seconds: None,
        run: backlog::run_restart,
    },
    Bench {
        name: "fan-in",
        about: "1,000 simulated sites at 100 events/s each into one relay, replication lag",
        events: None,
        seconds: Some("time the sites post for"),
        run: fan_in::run,
    },
    Bench {
        name: "crdt-merge",
        about: "Inventory::merge of 10k SKUs x 50 actors",
        events: None,
        seconds: None,
        run: crdt_merge::run,
    },
];

/// Which way a figure is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// A rate: the target is a floor.
    AtLeast,
    /// A time or a size: the target is a ceiling.
    AtMost,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The bench.
    pub bench: &'static str,
    /// What was measured, in words (size, iterations, secondary figures, the limit).
    pub case: String,
    /// The figure (median, or the one run), in `unit`.
    pub figure: f64,
    /// The best run, in `unit` (the figure itself for single-run benches).
    pub best: f64,
    /// The same-run baseline, in `unit`.
    pub limit: f64,
    /// `figure / limit`.
    pub ratio: f64,
    /// The target from PERFORMANCE.md, in `unit`, if this run is judged against it.
    pub target: Option<f64>,
    /// Whether the target is a floor or a ceiling.
    pub goal: Goal,
    /// The unit of the figures.
    pub unit: &'static str,
    /// Whether the result was right (checked while measuring).
    pub correct: bool,
    /// Why it was wrong.
    pub wrong: Option<String>,
    /// Whether the figure (and any secondary target of the case) met the target; always
    /// true when the run is not judged.
    pub pass: bool,
    /// Whether the binary was built with debug assertions (figures not representative).
    pub debug_build: bool,
}

impl Row {
    /// A row of `bench` in `unit`, to be filled by the builder methods below.
    pub fn new(bench: &'static str, goal: Goal, unit: &'static str) -> Row {
        Row {
            bench,
            case: String::new(),
            figure: 0.0,
            best: 0.0,
            limit: 0.0,
            ratio: 0.0,
            target: None,
            goal,
            unit,
            correct: true,
            wrong: None,
            pass: true,
            debug_build: cfg!(debug_assertions),
        }
    }

    /// What was measured.
    pub fn case(mut self, case: String) -> Row {
        self.case = case;
        self
    }

    /// The figure, the best run and the same-run limit; the ratio follows.
    pub fn figures(mut self, figure: f64, best: f64, limit: f64) -> Row {
        self.figure = figure;
        self.best = best;
        self.limit = limit;
        self.ratio = if limit > 0.0 { figure / limit } else { f64::INFINITY };
        self
    }

    /// Judges the figure against `target` (none for a quick run), and `also`: secondary
    /// targets the case describes, such as a latency bound. Call after [`Row::figures`].
    pub fn judged(mut self, target: Option<f64>, also: bool) -> Row {
        self.target = target;
        self.pass = match (target, self.goal) {
            (None, _) => true,
            (Some(t), Goal::AtLeast) => self.figure >= t && also,
            (Some(t), Goal::AtMost) => self.figure <= t && also,
        };
        self
    }

    /// The verdict of the bench's correctness check.
    pub fn correct(mut self, verdict: Result<(), String>) -> Row {
        self.correct = verdict.is_ok();
        self.wrong = verdict.err();
        self
    }
}

/// Runs `args.name` (or every bench), prints the table to `out` and returns whether
/// every row passed.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let selected: Vec<&Bench> = if args.name == "all" {
        ALL.iter().collect()
    } else {
        let Some(bench) = ALL.iter().find(|b| b.name == args.name) else {
            let names: Vec<&str> = ALL.iter().map(|b| b.name).collect();
            anyhow::bail!("unknown bench {:?}; one of all, {}", args.name, names.join(", "));
        };
        bench.check(args)?;
        vec![bench]
    };
    if cfg!(debug_assertions) {
        writeln!(out, "note: a debug build; figures are not representative (build with --release)")?;
    }
    let mut rows = Vec::new();
    for bench in selected {
        let options = bench.options(args);
        let quick = if args.quick { ", quick" } else { "" };
        let events = options.events.map(|n| format!(", {n} events")).unwrap_or_default();
        let seconds = options.seconds.map(|s| format!(", {} s", s.as_secs())).unwrap_or_default();
        writeln!(out, "running {} ({}){quick}{events}{seconds}", bench.name, bench.about)?;
        let mut row = (bench.run)(&options)?;
        if !args.quick && row.target.is_none() {
            row.case.push_str("; unjudged: smaller than this bench's full size (bench --help)");
        }
        rows.push(row);
    }
    print_table(&rows, out)?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows)?;
        std::fs::write(path, json).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(rows.iter().all(|r| r.correct && r.pass))
}

fn print_table(rows: &[Row], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<15} {:>14} {:>14} {:>8} {:>16}  {:<6} case",
        "bench", "figure", "limit", "ratio", "target", "result"
    )?;
    for row in rows {
        let target = row.target.map_or_else(
            || "-".to_owned(),
            |t| {
                let sign = if row.goal == Goal::AtLeast { ">=" } else { "<=" };
                format!("{sign} {} {}", number(t), row.unit)
            },
        );
        let result = match (row.correct, row.pass, row.target.is_some()) {
            (false, _, _) => "WRONG",
            (true, false, _) => "fail",
            (true, true, true) => "pass",
            (true, true, false) => "ok",
        };
        writeln!(
            out,
            "{:<15} {:>14} {:>14} {:>7.2}x {:>16}  {:<6} {}",
            row.bench,
            format!("{} {}", number(row.figure), row.unit),
            format!("{} {}", number(row.limit), row.unit),
            row.ratio,
            target,
            result,
            row.case
        )?;
        if let Some(why) = &row.wrong {
            writeln!(out, "{:<15} wrong: {why}", "")?;
        }
    }
    Ok(())
}

/// A figure with three significant digits and an SI suffix: `1.23M`, `45.6k`, `0.81`.
pub(crate) fn number(x: f64) -> String {
    let (value, suffix) = match x.abs() {
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e4 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let decimals = match value.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.decimals$}{suffix}")
}

#[cfg(test)]
mod tests;
