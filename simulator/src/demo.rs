//! `outpost-sim demo`: a relay, a node and scanners through a WAN cut, with a live view.
//!
//! The run has four phases, each printed as it starts:
//!
//! 1. **normal**: scanners post while the node replicates to the relay;
//! 2. **WAN cut**: the relay is killed with SIGKILL; the scanners keep posting, the node
//!    keeps answering 201 and its backlog grows on disk;
//! 3. **WAN back**: the relay restarts on its data; the node reconnects and drains;
//! 4. **drain**: the scanners stop; the run waits until the node's backlog is empty and
//!    the relay log holds every accepted event.
//!
//! Then it prints the exactly-once check and the group-commit figure (events per redb
//! write transaction), stops both daemons with SIGTERM and returns. A failed check or a
//! run over its time budget is an error.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::api::NodeStatus;
use crate::check::{self, LogReader};
use crate::cluster::Cluster;
use crate::ledger::Ledger;
use crate::process::TERMINATE_TIMEOUT;
use crate::scanner::{Scanner, ScannerConfig};

/// The demo's node.
pub const NODE_ID: &str = "store-0042";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Simulated scanners.
    pub scanners: usize,
    /// Seed of the scanners' choices.
    pub seed: u64,
    /// How long the scanners post before the WAN cut.
    pub normal: Duration,
    /// How long the relay stays down.
    pub cut: Duration,
    /// How long the scanners keep posting after the relay is back.
    pub after: Duration,
    /// The whole run's budget, start-up included.
    pub timeout: Duration,
    /// Pause of each scanner between requests.
    pub pause: Duration,
}

impl Default for DemoConfig {
    fn default() -> DemoConfig {
        DemoConfig {
            scanners: 4,
            seed: 42,
            normal: Duration::from_secs(4),
            cut: Duration::from_secs(5),
            after: Duration::from_secs(3),
            timeout: Duration::from_secs(50),
            pause: Duration::from_millis(25),
        }
    }
}

/// Which phase the run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Normal,
    Cut,
    Back,
    Drain,
}

/// Runs the demo, writing the live view to `out`.
pub async fn run(config: &DemoConfig, out: &mut impl Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + config.timeout;
    writeln!(out, "outpost demo: seed={} scanners={}", config.seed, config.scanners)?;
    let mut cluster = Cluster::start(&[NODE_ID]).await.context("starting the relay and the node")?;
    writeln!(
        out,
        "relay pid {} (quic {}, http {}), node {} pid {} (http {}), files in {}",
        cluster.relay.pid().unwrap_or(0),
        cluster.relay.quic_addr(),
        cluster.relay.http_addr(),
        NODE_ID,
        cluster.node().pid().unwrap_or(0),
        cluster.node().http_addr(),
        cluster.dir().display()
    )?;

    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut scanners = spawn_scanners(config, &mut cluster, &ledger, &stop);
    let mut view = View::new(&cluster);
    let scan_start = Instant::now();
    let mut phase = Phase::Normal;
    writeln!(out, "--- normal: {} scanners posting", config.scanners)?;
    loop {
        let elapsed = scan_start.elapsed();
        let next = match phase {
            Phase::Normal if elapsed >= config.normal => Some(Phase::Cut),
            Phase::Cut if elapsed >= config.normal + config.cut => Some(Phase::Back),
            Phase::Back if elapsed >= config.normal + config.cut + config.after => Some(Phase::Drain),
            _ => None,
        };
        match next {
            Some(Phase::Cut) => {
                cluster.relay.kill().context("killing the relay")?;
                writeln!(out, "--- WAN cut: relay killed with SIGKILL; scanners keep posting")?;
            }
            Some(Phase::Back) => {
                cluster.relay.start().await.context("restarting the relay")?;
                writeln!(
                    out,
                    "--- WAN back: relay restarted on its data (pid {})",
                    cluster.relay.pid().unwrap_or(0)
                )?;
            }
            Some(Phase::Drain) => {
                stop.store(true, Ordering::Relaxed);
                for handle in std::mem::take(&mut scanners) {
                    handle.await.context("a scanner task failed")?;
                }
                writeln!(out, "--- scanners stopped; waiting for the relay to hold every accepted event")?;
            }
            _ => {}
        }
        if let Some(p) = next {
            phase = p;
        }
        let converged = view.tick(&ledger, phase == Phase::Cut).await;
        writeln!(out, "{}", view.line(started.elapsed()))?;
        out.flush()?;
        if phase == Phase::Drain && converged {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the demo did not converge within {:?}: {}\nnode log tail:\n{}\nrelay log tail:\n{}",
                config.timeout,
                view.line(started.elapsed()),
                cluster.node().log_tail(20),
                cluster.relay.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let data = ledger.snapshot();
    let report = check::check(&data, view.log.entries());
    writeln!(out, "scanners: {}", data.counts)?;
    writeln!(out, "{report}")?;
    if let Some(status) = &view.status {
        writeln!(
            out,
            "group commit: {} events in {} redb commits = {:.1} events per commit (fsync)",
            status.store.events_committed,
            status.store.commits,
            status.events_per_commit()
        )?;
    }
    let node_exit = cluster.node().terminate(TERMINATE_TIMEOUT).await?;
    let relay_exit = cluster.relay.terminate(TERMINATE_TIMEOUT).await?;
    writeln!(
        out,
        "stopped with SIGTERM: node {}, relay {}; demo took {:.1}s",
        exit_text(node_exit),
        exit_text(relay_exit),
        started.elapsed().as_secs_f64()
    )?;
    if !report.is_ok() {
        bail!("the exactly-once check failed ({} violations)", report.violations_total);
    }
    Ok(())
}

fn spawn_scanners(
    config: &DemoConfig,
    cluster: &mut Cluster,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let node = cluster.node();
    (0..config.scanners)
        .map(|i| {
            let mut sc = ScannerConfig::new(&format!("hs-{}", i + 1), node.node_id(), &node.events_url());
            sc.array_ratio = 0.2;
            sc.array_events_max = 20;
            sc.duplicate_ratio = 0.05;
            sc.conflict_ratio = 0.01;
            sc.invalid_ratio = 0.005;
            sc.pause = config.pause;
            sc.give_up_after = Duration::from_secs(30);
            sc.seed = config.seed.wrapping_add(i as u64);
            tokio::spawn(Scanner::new(sc, ledger.clone()).run(stop.clone()))
        })
        .collect()
}

fn exit_text(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) if s.success() => "exit 0".to_owned(),
        Some(s) => format!("{s}"),
        None => "killed after the timeout".to_owned(),
    }
}

/// The live view's state: the latest node status and the relay log read so far.
struct View {
    node: crate::api::Client,
    log: LogReader,
    logged_ids: BTreeSet<String>,
    status: Option<NodeStatus>,
    relay_up: bool,
    accepted: u64,
    previous_accepted: u64,
}

impl View {
    fn new(cluster: &Cluster) -> View {
        View {
            node: cluster.nodes[0].client(),
            log: LogReader::new(cluster.relay.client()),
            logged_ids: BTreeSet::new(),
            status: None,
            relay_up: true,
            accepted: 0,
            previous_accepted: 0,
        }
    }

    /// Refreshes the view; returns whether the node's backlog is empty and the relay log
    /// holds every accepted event.
    async fn tick(&mut self, ledger: &Ledger, relay_down: bool) -> bool {
        self.previous_accepted = self.accepted;
        self.accepted = ledger.accepted_count();
        self.status = self.node.node_status().await.ok().or(self.status.take());
        self.relay_up = false;
        if !relay_down {
            let before = self.log.entries().len();
            self.relay_up = self.log.poll().await.is_ok();
            self.logged_ids.extend(self.log.entries()[before..].iter().map(|e| e.event_id.clone()));
        }
        let backlog_empty = self.status.as_ref().is_some_and(|s| s.backlog_events() == 0);
        let data = ledger.snapshot();
        backlog_empty && self.relay_up && data.accepted().all(|(id, _, _)| self.logged_ids.contains(id))
    }

    fn line(&self, elapsed: Duration) -> String {
        let (backlog, link) = match &self.status {
            Some(s) => (s.backlog_events().to_string(), s.relay.state.clone()),
            None => ("?".to_owned(), "?".to_owned()),
        };
        let relay = if self.relay_up { "" } else { " (relay down)" };
        format!(
            "[{:5.1}s] accepted {:6} (+{:4})  node backlog {:6}  replicated {:6}{relay}  link {link}",
            elapsed.as_secs_f64(),
            self.accepted,
            self.accepted.saturating_sub(self.previous_accepted),
            backlog,
            self.log.next_offset(),
        )
    }
}
