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
    /// Print a human-readable view of a running node's /v1/status; exits non-zero when
    /// the node cannot be reached.
    Status {
        /// The node's HTTP address.
        #[arg(long, env = "OUTPOST_HTTP", default_value = node::config::DEFAULT_HTTP, value_name = "ADDR")]
        http: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::init_tracing();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status { http } => status(&http),
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

fn status(http: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let body: serde_json::Value = runtime.block_on(async {
        let url = format!("http://{http}/v1/status");
        let resp = reqwest::get(&url).await.with_context(|| format!("reaching the node at {url}"))?;
        resp.json().await.context("reading /v1/status")
    })?;
    let text = node::status_text(&body);
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()).context("writing to stdout")?;
    Ok(())
}
