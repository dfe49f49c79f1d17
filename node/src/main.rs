//! The `outpost-node` command line: `run` the daemon, or print its `status`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::config::{Config, Settings};

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
    Run {
        /// TOML config file with any of the settings below.
        #[arg(long, env = "OUTPOST_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
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
    init_tracing();
    let result = match cli.command {
        Command::Run { config, settings } => run(config, settings),
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn run(config_file: Option<PathBuf>, flags: Settings) -> anyhow::Result<()> {
    let file = match &config_file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = Config::resolve(flags.or(file))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding the http api to {}", config.http))?;
        node::run(config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
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
