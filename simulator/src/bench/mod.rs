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

pub mod crdt_merge;

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
pub const ALL: &[Bench] =
    &[Bench { name: "crdt-merge", about: "Inventory::merge of 10k SKUs x 50 actors", run: crdt_merge::run }];

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The bench.
    pub bench: &'static str,
    /// What was measured, in words (size, iterations).
    pub case: String,
    /// The figure (median), in `unit`.
    pub figure: f64,
    /// The best run, in `unit`.
    pub best: f64,
    /// The same-run baseline, in `unit`.
    pub limit: f64,
    /// `figure / limit`.
    pub ratio: f64,
    /// The target from PERFORMANCE.md, in `unit`, if this run is judged against it.
    pub target: Option<f64>,
    /// The unit of the figures.
    pub unit: &'static str,
    /// Whether the result was right (checked while measuring).
    pub correct: bool,
    /// Whether the figure met the target (always true when it is not judged).
    pub pass: bool,
    /// Whether the binary was built with debug assertions (figures not representative).
    pub debug_build: bool,
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
        "{:<12} {:>10} {:>10} {:>10} {:>7} {:>10}  {:<6} case",
        "bench", "figure", "best", "limit", "ratio", "target", "result"
    )?;
    for row in rows {
        let target = row.target.map_or_else(|| "-".to_owned(), |t| format!("< {t:.0} {}", row.unit));
        let result = match (row.correct, row.pass, row.target.is_some()) {
            (false, _, _) => "WRONG",
            (true, false, _) => "fail",
            (true, true, true) => "pass",
            (true, true, false) => "ok",
        };
        writeln!(
            out,
            "{:<12} {:>7.2} {:<2} {:>7.2} {:<2} {:>7.2} {:<2} {:>6.2}x {:>10}  {:<6} {}",
            row.bench,
            row.figure,
            row.unit,
            row.best,
            row.unit,
            row.limit,
            row.unit,
            row.ratio,
            target,
            result,
            row.case
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
