//! A relay and its nodes as real processes in one temporary directory.
//!
//! [`Cluster::start`] locates the binaries, makes a PKI with `outpost-relay pki`, and starts
//! one relay and the requested nodes, each with its own data directory and log file under
//! the cluster's directory. Dropping the cluster kills every child first and then removes
//! the directory.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::api::LogEntry;
use crate::bins::{BinError, Bins};
use crate::check::LogReader;
use crate::ledger::LedgerData;
use crate::pki::{Pki, PkiError};
use crate::process::{Node, NodeConfig, ProcessError, Relay, RelayConfig};

/// The region of every cluster.
pub const REGION: &str = "eu-west";
/// The relay's name.
pub const RELAY_NAME: &str = "relay-1";

/// Setting up or driving a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The binaries are missing.
    #[error(transparent)]
    Bins(#[from] BinError),
    /// A `pki` command failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A daemon failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The temporary directory could not be created.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// Replication did not converge in time.
    #[error(
        "replication did not converge within {timeout:?}: {detail}\nrelay log tail:\n{relay_log}\n\
         node log tail:\n{node_log}"
    )]
    NotConverged {
        /// How long the harness waited.
        timeout: Duration,
        /// What was still missing.
        detail: String,
        /// The last lines of the relay log.
        relay_log: String,
        /// The last lines of the first node's log.
        node_log: String,
    },
}

/// One relay, its nodes and their PKI.
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in order: the children die before their directory is removed.
    /// The nodes, in the order they were added.
    pub nodes: Vec<Node>,
    /// The relay.
    pub relay: Relay,
    /// The certificates.
    pub pki: Pki,
    /// The executables.
    pub bins: Bins,
    dir: TempDir,
}

impl Cluster {
    /// Creates the PKI and starts the relay and one node per id (all in [`REGION`]).
    pub async fn start(node_ids: &[&str]) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster::prepare()?;
        cluster.relay.start().await?;
        for id in node_ids {
            cluster.add_node(id, Vec::new())?.start().await?;
        }
        Ok(cluster)
    }

    /// Creates the PKI and prepares the relay without starting it, and no nodes: for
    /// nodes that begin offline (the benches buffer before the WAN comes up).
    pub fn prepare() -> Result<Cluster, ClusterError> {
        let bins = Bins::locate()?;
        let dir = tempfile::Builder::new().prefix("outpost-").tempdir().map_err(ClusterError::TempDir)?;
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(ClusterError::TempDir)?;
        let pki = Pki::init(&bins.relay, &pki_dir, REGION, RELAY_NAME)?;
        let relay = Relay::new(
            &bins.relay,
            RelayConfig {
                name: "relay".to_owned(),
                data_dir: dir.path().join("relay-data"),
                log: dir.path().join("relay.log"),
                ca: pki.ca.clone(),
                cert: pki.relay.clone(),
            },
        )?;
        Ok(Cluster { nodes: Vec::new(), relay, pki, bins, dir })
    }

    /// Issues a certificate for `node_id` and prepares (does not start) a node replicating
    /// to the relay, with `extra_args` appended to its command line.
    pub fn add_node(&mut self, node_id: &str, extra_args: Vec<String>) -> Result<&mut Node, ClusterError> {
        let relay = self.relay.quic_addr();
        self.add_node_via(node_id, relay, extra_args)
    }

    /// Like [`Cluster::add_node`], but the node dials `relay` instead of the relay's own
    /// address: a proxy in front of the relay, which must forward to it. The relay's
    /// certificate is valid for `127.0.0.1`, so any address on loopback passes TLS.
    pub fn add_node_via(
        &mut self,
        node_id: &str,
        relay: std::net::SocketAddr,
        extra_args: Vec<String>,
    ) -> Result<&mut Node, ClusterError> {
        let cert = self.pki.node(node_id, REGION)?;
        let node = Node::new(
            &self.bins.node,
            NodeConfig {
                node_id: node_id.to_owned(),
                data_dir: self.dir.path().join(format!("{node_id}-data")),
                log: self.dir.path().join(format!("{node_id}.log")),
                relays: vec![relay],
                ca: self.pki.ca.clone(),
                cert,
                extra_args,
            },
        )?;
        self.nodes.push(node);
        let last = self.nodes.len() - 1;
        Ok(&mut self.nodes[last])
    }

    /// The cluster's directory (PKI, data directories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first node.
    pub fn node(&mut self) -> &mut Node {
        &mut self.nodes[0]
    }

    /// Waits until every node reports an empty backlog and the relay log holds every event
    /// the ledger says was accepted; returns the whole relay log.
    pub async fn wait_replicated(
        &self,
        ledger: &LedgerData,
        timeout: Duration,
    ) -> Result<Vec<LogEntry>, ClusterError> {
        let deadline = Instant::now() + timeout;
        let wanted: BTreeSet<&str> = ledger.accepted().map(|(id, _, _)| id.as_str()).collect();
        let mut reader = LogReader::new(self.relay.client());
        let mut seen: BTreeSet<String> = BTreeSet::new();
        loop {
            let detail = match self.replication_gap(&mut reader, &mut seen, &wanted).await {
                None => return Ok(reader.entries().to_vec()),
                Some(detail) => detail,
            };
            if Instant::now() >= deadline {
                let node_log = self.nodes.first().map(|n| n.log_tail(40)).unwrap_or_default();
                return Err(ClusterError::NotConverged {
                    timeout,
                    detail,
                    relay_log: self.relay.log_tail(40),
                    node_log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What still separates the cluster from convergence, or `None`.
    async fn replication_gap(
        &self,
        reader: &mut LogReader,
        seen: &mut BTreeSet<String>,
        wanted: &BTreeSet<&str>,
    ) -> Option<String> {
        for node in &self.nodes {
            match node.client().node_status().await {
                Ok(status) if status.backlog_events() == 0 => {}
                Ok(status) => {
                    return Some(format!(
                        "{} backlog {} events, link {} ({})",
                        node.name(),
                        status.backlog_events(),
                        status.relay.state,
                        status.relay.last_error.as_deref().unwrap_or("no error")
                    ));
                }
                Err(e) => return Some(e.to_string()),
            }
        }
        let before = reader.entries().len();
        if let Err(e) = reader.poll().await {
            return Some(e.to_string());
        }
        seen.extend(reader.entries()[before..].iter().map(|e| e.event_id.clone()));
        let missing = wanted.iter().filter(|id| !seen.contains(**id)).count();
        (missing > 0).then(|| format!("{missing} accepted events not yet in the relay log"))
    }
}
