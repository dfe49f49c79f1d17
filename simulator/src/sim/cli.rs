//! The `outpost-sim sim` command line: many seeds in parallel, or one seed replayed with
//! its full trace.

use std::io::Write;
use std::num::NonZeroUsize;

use super::{InjectedBug, SimConfig, replay_seed, run_seeds};

/// `outpost-sim sim` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many seeds to run, in parallel on all cores.
    #[arg(long, default_value_t = 1_000)]
    pub seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Replay one seed and print its full trace to stdout.
    #[arg(long, env = "OUTPOST_SEED")]
    pub seed: Option<u64>,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub threads: Option<NonZeroUsize>,
    /// Run every seed even after a violation.
    #[arg(long)]
    pub keep_going: bool,
    /// Break the simulated relay on purpose, to see the checker fail.
    #[arg(long, hide = true)]
    pub inject_bug: Option<InjectedBug>,
}

/// Runs the command, writing its report to `out`. Returns whether every seed passed.
pub fn run(args: &SimArgs, out: &mut dyn Write) -> std::io::Result<bool> {
    let config = SimConfig { bug: args.inject_bug, ..SimConfig::default() };
    if let Some(seed) = args.seed {
        let report = replay_seed(seed, &config, Box::new(std::io::stdout()));
        writeln!(out, "--")?;
        writeln!(out, "seed {seed}: {}", stats_line(&report.stats))?;
        return match report.violation {
            Some(violation) => {
                writeln!(out, "{violation}")?;
                Ok(false)
            }
            None => {
                let after = report.converged_after.unwrap_or_default().as_millis();
                writeln!(out, "seed {seed} passed; converged {after} ms of virtual time after healing")?;
                Ok(true)
            }
        };
    }
    let threads =
        args.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get);
    let summary = run_seeds(args.first_seed, args.seeds, &config, threads, !args.keep_going);
    let last = args.first_seed.saturating_add(args.seeds.saturating_sub(1));
    writeln!(
        out,
        "{} seeds ({}..={last}) on {threads} threads in {:.2} s: {:.0} seeds/s",
        summary.seeds,
        args.first_seed,
        summary.elapsed.as_secs_f64(),
        summary.seeds_per_s()
    )?;
    writeln!(out, "totals: {}", stats_line(&summary.totals))?;
    writeln!(
        out,
        "slowest convergence after healing: {} ms of virtual time",
        summary.slowest_convergence.as_millis()
    )?;
    let Some(first) = summary.violations.first() else {
        writeln!(out, "no violations")?;
        return Ok(true);
    };
    writeln!(out, "{first}")?;
    let seeds: Vec<String> = summary.violations.iter().map(|v| v.seed.to_string()).collect();
    writeln!(out, "FAILED: {} violation(s), seeds {}", summary.violations.len(), seeds.join(", "))?;
    writeln!(out, "replay the first with: {}", first.replay_command())?;
    Ok(false)
}

fn stats_line(stats: &std::collections::BTreeMap<&'static str, u64>) -> String {
    stats.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}
