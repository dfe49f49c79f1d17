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
    /// Look at a running relay's merged inventory.
    #[command(subcommand)]
    Inventory(InventoryCommand),
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Compare the merged inventory with a stock snapshot from the ERP and print the
    /// differences, largest first. A key missing on one side counts as zero there. Exits
    /// 0 when both agree, 1 when they differ, 2 when the comparison could not be made.
    Diff {
        /// The snapshot: CSV lines `sku,location,qty`, with an optional header line;
        /// blank lines and lines starting with # are ignored.
        #[arg(long, value_name = "FILE.csv")]
        snapshot: PathBuf,
        /// The relay's HTTP address.
        #[arg(long, env = "OUTPOST_HTTP", default_value = cloud_relay::config::DEFAULT_HTTP, value_name = "ADDR")]
        http: String,
        /// Print the differences as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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

/// Allocation is on every hot path (requests, frames, store groups), and mimalloc is
/// much cheaper there than glibc's malloc under several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::init_tracing();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Pki(pki) => run_pki(pki),
        Command::Inventory(InventoryCommand::Diff { snapshot, http, json }) => {
            return match inventory_diff(&snapshot, &http, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("outpost-relay: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `inventory diff`; `Ok(true)` when the relay and the snapshot agree.
fn inventory_diff(snapshot: &std::path::Path, http: &str, json: bool) -> anyhow::Result<bool> {
    use anyhow::Context;
    use cloud_relay::inventory::diff;
    let text =
        std::fs::read_to_string(snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
    let wanted = diff::parse_snapshot(&text).with_context(|| format!("snapshot {}", snapshot.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = format!("http://{http}/v1/inventory");
    let body: serde_json::Value = runtime.block_on(async {
        let resp = reqwest::get(&url).await.with_context(|| format!("reaching the relay at {url}"))?;
        let resp = resp.error_for_status().with_context(|| format!("GET {url}"))?;
        resp.json().await.with_context(|| format!("reading {url}"))
    })?;
    let relay = relay_levels(&body).with_context(|| format!("reading {url}"))?;
    let diffs = diff::differences(&relay, &wanted);
    let out = if json {
        let list: Vec<serde_json::Value> = diffs
            .iter()
            .map(|d| {
                serde_json::json!({"sku": d.key.sku.as_str(), "location": d.key.location.as_str(),
                                   "relay": d.relay, "snapshot": d.snapshot, "difference": d.delta() as i64})
            })
            .collect();
        format!(
            "{}\n",
            serde_json::json!({"differences": list, "relay_keys": relay.len(), "snapshot_keys": wanted.len()})
        )
    } else {
        diff::render(&diffs, relay.len(), wanted.len())
    };
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).context("writing to stdout")?;
    Ok(diffs.is_empty())
}

/// The relay's `GET /v1/inventory` answer as levels per key.
fn relay_levels(body: &serde_json::Value) -> anyhow::Result<cloud_relay::inventory::diff::Levels> {
    use anyhow::Context;
    let items = body["items"].as_array().context("no items in the answer")?;
    items
        .iter()
        .map(|item| {
            let field =
                |name: &str| item[name].as_str().with_context(|| format!("an item without {name}: {item}"));
            let key = sync_protocol::inventory::StockKey {
                sku: field("sku")?.parse()?,
                location: field("location")?.parse()?,
            };
            let value =
                item["value"].as_i64().with_context(|| format!("{key} has no readable value: {item}"))?;
            Ok((key, value))
        })
        .collect()
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
