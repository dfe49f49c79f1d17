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

use serde::Serialize;

/// `outpost-sim bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The bench to run, or `all`.
    pub name: String,
    /// A small size that runs in seconds and judges only correctness.
    #[arg(long)]
    pub quick: bool,
    /// Write the rows as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// How a bench runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The quick variant.
    pub quick: bool,
}

/// One bench: its name and how to run it.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// The name on the command line and in the table.
    pub name: &'static str,
    /// What it measures, for `--help`-like listings and errors.
    pub about: &'static str,
    /// Runs it.
    pub run: fn(&Options) -> anyhow::Result<Row>,
}

/// Every bench, in the order `all` runs them.
pub const ALL: &[Bench] = &[
    Bench {
        name: "ingest-batch",
        about: "64 clients posting 100 events each, durable acks",
        run: ingest::run_batch,
    },
    Bench {
        name: "ingest-single",
        about: "256 clients posting one event each, durable acks",
        run: ingest::run_single,
    },
    Bench {
        name: "drain",
        about: "a backlog buffered offline, durable at the relay once the WAN returns",
        run: drain::run_drain,
    },
    Bench { name: "mixed", about: "shipments end to end while a bulk backlog drains", run: drain::run_mixed },
    Bench { name: "backlog-memory", about: "node RSS as an offline backlog grows", run: backlog::run_memory },
    Bench { name: "disk", about: "store bytes per buffered event", run: backlog::run_disk },
    Bench {
        name: "restart",
        about: "start to first 201 with a large store, clean and after kill -9",
        run: backlog::run_restart,
    },
    Bench {
        name: "fan-in",
        about: "1,000 simulated sites at 100 events/s each into one relay, replication lag",
        run: fan_in::run,
    },
    Bench { name: "crdt-merge", about: "Inventory::merge of 10k SKUs x 50 actors", run: crdt_merge::run },
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
        vec![bench]
    };
    let options = Options { quick: args.quick };
    if cfg!(debug_assertions) {
        writeln!(out, "note: a debug build; figures are not representative (build with --release)")?;
    }
    let mut rows = Vec::new();
    for bench in selected {
        writeln!(out, "running {} ({}){}", bench.name, bench.about, if args.quick { ", quick" } else { "" })?;
        rows.push((bench.run)(&options)?);
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
