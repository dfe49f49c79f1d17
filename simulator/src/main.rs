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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Demo { scanners, seed } => run_demo(DemoConfig { scanners, seed, ..DemoConfig::default() }),
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
