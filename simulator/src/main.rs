//! `outpost-sim`: the Outpost demo, run against the real `outpost-relay` and
//! `outpost-node` binaries built next to it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use simulator::demo::{self, DemoConfig};

/// Outpost simulator: runs relays, nodes and scanners as real processes and checks that
/// every accepted event reaches the relay exactly once.
#[derive(Parser)]
#[command(name = "outpost-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A relay, a node and simulated scanners through a WAN cut (the relay is killed for a
    /// few seconds), with a live view; ends with the exactly-once check. Finds
    /// outpost-relay and outpost-node next to this executable, or in OUTPOST_BIN_DIR.
    Demo {
        /// Simulated scanners posting to the node.
        #[arg(long, default_value_t = 4)]
        scanners: usize,
        /// Seed of the scanners' choices (kinds, arrays, duplicates, conflicts).
        #[arg(long, env = "OUTPOST_SEED", default_value_t = 42)]
        seed: u64,
    },
    /// Runs chaos scenarios (TOML): the real relay and nodes behind a fault-injecting UDP
    /// proxy, process kills and freezes on a timeline, then heal, convergence and a verdict
    /// per invariant. Exits 0 only if every invariant of every scenario held.
    Chaos {
        /// Scenario files, such as simulator/scenarios/wan-flap.toml.
        #[arg(required = true)]
        scenarios: Vec<std::path::PathBuf>,
        /// The quick variant: every step time scaled by the scenario's quick_scale.
        #[arg(long)]
        quick: bool,
        /// Scale every step time by this factor instead (overrides --quick).
        #[arg(long)]
        scale: Option<f64>,
        /// Override the scenarios' seeds.
        #[arg(long, env = "OUTPOST_SEED")]
        seed: Option<u64>,
        /// Write the reports as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<std::path::PathBuf>,
    },
    /// The deterministic simulation: node and relay protocol cores in virtual time under
    /// seeded network faults, crashes and store wipes, with the invariant checker. Runs
    /// --seeds in parallel, or replays one --seed with its full trace.
    Sim(simulator::sim::cli::SimArgs),
    /// The benchmarks of PERFORMANCE.md: `bench <NAME|all> [--quick] [--events N] [--seconds S]
    /// [--json FILE]`. Prints one row per bench (figure, same-run limit, ratio, target,
    /// pass/fail); exits 0 only if every bench was correct and met its target (--quick, and
    /// a size below the target's, judge correctness only).
    Bench(simulator::bench::BenchArgs),
}

/// Allocation is on every hot path (requests, frames, store groups), and mimalloc is
/// much cheaper there than glibc's malloc under several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Demo { scanners, seed } => run_demo(DemoConfig { scanners, seed, ..DemoConfig::default() }),
        Command::Chaos { scenarios, quick, scale, seed, json } => {
            let options = simulator::chaos::scenario::LoadOptions { quick, scale, seed };
            run_chaos(&scenarios, &options, json.as_deref())
        }
        Command::Sim(args) => run_sim(&args),
        Command::Bench(args) => run_bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_demo(config: DemoConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The live view goes to stdout; diagnostics go to stderr.
    runtime.block_on(demo::run(&config, &mut std::io::stdout()))
}

fn run_chaos(
    files: &[std::path::PathBuf],
    options: &simulator::chaos::scenario::LoadOptions,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The timeline goes to stdout; diagnostics go to stderr.
    runtime.block_on(simulator::chaos::run_files(files, options, json, &mut std::io::stdout())).map(drop)
}

fn run_bench(args: &simulator::bench::BenchArgs) -> anyhow::Result<()> {
    // The table goes to stdout.
    if simulator::bench::run(args, &mut std::io::stdout())? {
        Ok(())
    } else {
        anyhow::bail!("a bench was wrong or missed its target; see the table above")
    }
}

fn run_sim(args: &simulator::sim::cli::SimArgs) -> anyhow::Result<()> {
    // The report and any replayed trace go to stdout.
    if simulator::sim::cli::run(args, &mut std::io::stdout())? {
        Ok(())
    } else {
        anyhow::bail!("the simulation broke an invariant; the seed and its replay command are above")
    }
}
