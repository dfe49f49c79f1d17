//! The `outpost-node` command line: `run` the daemon, or print its `status`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::config::{Config, Settings};
use node::daemon;

/// Outpost site node: durable scanner ingest with offline buffering and replication to
/// the region's relay.
#[derive(Parser)]
#[command(name = "outpost-node", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the `Run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the node daemon. Every flag can also be set in the environment (OUTPOST_DATA_DIR
    /// for --data-dir, and so on) or in the config file; a flag wins over the environment,
    /// which wins over the file.
    Run(daemon::RunArgs<Settings>),
    /// Print a human-readable view of a running node's /v1/status, then whether it is
    /// healthy. Exits 0 when healthy, 1 when unhealthy (an event waited longer than
    /// --max-unacked-age for the relay, or a relay refused the node), 2 when the node
    /// cannot be reached: fit for scripts and monitoring checks.
    Status {
        /// The node's HTTP address.
        #[arg(long, env = "OUTPOST_HTTP", default_value = node::config::DEFAULT_HTTP, value_name = "ADDR")]
        http: String,
        /// How long an event may wait for the relay's acknowledgement before the node
        /// counts as unhealthy (a WAN outage or stuck replication).
        #[arg(long, default_value = "5m", value_name = "DURATION")]
        max_unacked_age: humantime::Duration,
    },
    /// Compare this node's block digests with the relay's, lane by lane: print the blocks
    /// that match and the first that differs. With --repair, have the node send each
    /// differing block again (the relay adds what it lacks; harmless for the rest) and
    /// compare again. Exits 0 when every lane matches, 1 when one differs, 2 on error.
    Reconcile {
        /// The node's HTTP address.
        #[arg(long, env = "OUTPOST_HTTP", default_value = node::config::DEFAULT_HTTP, value_name = "ADDR")]
        http: String,
        /// The relay's HTTP address (its consumer API, where /v1/digests is).
        #[arg(long, value_name = "ADDR")]
        relay_http: String,
        /// Lanes to compare, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "critical,standard,bulk", value_name = "LANES")]
        lane: Vec<String>,
        /// Resend differing blocks to the relay, then compare again.
        #[arg(long)]
        repair: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::init_tracing();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Reconcile { http, relay_http, lane, repair } => {
            return match reconcile(&http, &relay_http, &lane, repair) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("outpost-node: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Status { http, max_unacked_age } => {
            return match status(&http, max_unacked_age.into()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("outpost-node: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: daemon::RunArgs<Settings>) -> anyhow::Result<()> {
    let file: Settings = daemon::read_config(args.config.as_deref())?;
    let config = Config::resolve(args.settings.or(file))?;
    daemon::serve(config.http, |listener| node::run(config, listener, daemon::shutdown_signal()))
}

/// Prints the node's status; `Ok(true)` when it is healthy.
fn status(http: &str, max_unacked_age: std::time::Duration) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let body: serde_json::Value = runtime.block_on(async {
        let url = format!("http://{http}/v1/status");
        let resp = reqwest::get(&url).await.with_context(|| format!("reaching the node at {url}"))?;
        resp.json().await.context("reading /v1/status")
    })?;
    let mut text = node::status_text(&body);
    let problems = node::health_problems(&body, max_unacked_age);
    if problems.is_empty() {
        text.push_str("healthy\n");
    }
    for problem in &problems {
        text.push_str(&format!("UNHEALTHY: {problem}\n"));
    }
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()).context("writing to stdout")?;
    Ok(problems.is_empty())
}

/// Runs `reconcile`; `Ok(true)` when every lane matches.
fn reconcile(http: &str, relay_http: &str, lanes: &[String], repair: bool) -> anyhow::Result<bool> {
    for lane in lanes {
        lane.parse::<sync_protocol::Lane>().map_err(|e| anyhow::anyhow!("--lane {lane}: {}", e.reason))?;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut out = String::new();
    let result = runtime.block_on(node::reconcile::run(http, relay_http, lanes, repair, &mut out));
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).context("writing to stdout")?;
    result
}
