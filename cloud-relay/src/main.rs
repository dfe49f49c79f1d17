//! The `outpost-relay` command line: `run` the relay, or manage the deployment's
//! certificates with `pki`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloud_relay::config::{Config, Settings};
use cloud_relay::pki::{self, Validity};
use node::daemon;
use sync_protocol::{NodeId, Region};

/// Outpost regional relay: receives site nodes' events over QUIC with mutual TLS, stores
/// each exactly once, and serves them to consumers in order.
#[derive(Parser)]
#[command(name = "outpost-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the `Run` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the relay. Every flag can also be set in the environment (OUTPOST_DATA_DIR for
    /// --data-dir, and so on) or in the config file; a flag wins over the environment,
    /// which wins over the file.
    Run(daemon::RunArgs<Settings>),
    /// Create the deployment CA and issue relay and node certificates.
    #[command(subcommand)]
    Pki(Pki),
}

#[derive(Subcommand)]
enum Pki {
    /// Create the deployment CA: DIR/ca.pem and DIR/ca.key (keep ca.key offline).
    Init {
        #[command(flatten)]
        common: PkiCommon,
    },
    /// Issue a relay's server certificate: DIR/NAME.pem and DIR/NAME.key.
    Relay {
        #[command(flatten)]
        common: PkiCommon,
        /// The relay's name, shown to nodes.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The region the relay serves.
        #[arg(long, value_name = "REGION")]
        region: Region,
        /// DNS names and IP addresses that nodes dial, comma-separated.
        #[arg(long, value_name = "NAMES", value_delimiter = ',', required = true)]
        san: Vec<String>,
    },
    /// Issue a node's client certificate: DIR/NODE.pem and DIR/NODE.key. The node's
    /// identity and region are read from it, by the node and by the relay.
    Node {
        #[command(flatten)]
        common: PkiCommon,
        /// The node's id, such as store-0042.
        #[arg(long, value_name = "NODE_ID")]
        node: NodeId,
        /// The node's region; only relays of this region accept it.
        #[arg(long, value_name = "REGION")]
        region: Region,
    },
}

#[derive(clap::Args)]
struct PkiCommon {
    /// Directory of the CA and the certificates (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Validity in days from now. [default: 3650 for the CA, 825 for certificates]
    #[arg(long, value_name = "DAYS")]
    days: Option<u32>,
    /// Validity end as an RFC 3339 time instead of --days, for planned rotations (and
    /// for testing how expired certificates are refused).
    #[arg(long, value_name = "TIME", conflicts_with = "days")]
    not_after: Option<humantime::Timestamp>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

impl PkiCommon {
    fn validity(&self, default_days: u32) -> Validity {
        let mut validity = Validity::days(self.days.unwrap_or(default_days));
        if let Some(end) = self.not_after {
            validity.not_after = end.into();
            // A certificate must start before it ends.
            validity.not_before =
                validity.not_before.min(validity.not_after - std::time::Duration::from_secs(3600));
        }
        validity
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::init_tracing();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Pki(pki) => run_pki(pki),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: daemon::RunArgs<Settings>) -> anyhow::Result<()> {
    let file: Settings = daemon::read_config(args.config.as_deref())?;
    let config = Config::resolve(args.settings.or(file))?;
    daemon::serve(config.http, |listener| cloud_relay::run(config, listener, daemon::shutdown_signal()))
}

fn run_pki(command: Pki) -> anyhow::Result<()> {
    let issued = match &command {
        Pki::Init { common } => pki::init(&common.dir, common.validity(pki::CA_DAYS), common.force)?,
        Pki::Relay { common, name, region, san } => {
            pki::issue_relay(&common.dir, name, region, san, common.validity(pki::LEAF_DAYS), common.force)?
        }
        Pki::Node { common, node, region } => {
            pki::issue_node(&common.dir, node, region, common.validity(pki::LEAF_DAYS), common.force)?
        }
    };
    let line = format!("wrote {} and {} (mode 0600)\n", issued.cert.display(), issued.key.display());
    std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes()).context("writing to stdout")?;
    Ok(())
}
