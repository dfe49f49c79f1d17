//! A bench's site: one node and a relay as real processes on loopback, the node
//! started with the WAN down (the relay not yet running), and the check every bench ends
//! with: everything the node acknowledged is at the relay exactly once.
//!
//! The check does not read the whole relay log (tens of millions of events would take
//! longer than the bench). It proves the same thing in three steps:
//! 1. every post was answered `created` for each of its events, and the event ids of a
//!    run are unique, so the node's per-lane heads must equal the run's per-lane counts;
//! 2. the node's backlog drains to zero and the relay's durable watermark of each lane
//!    equals the node's head;
//! 3. `outpost-node reconcile` finds every block digest (count, and a sum of the
//!    records' SHA-256) equal on both sides, so the relay holds each of the node's
//!    records once, and no other.

use std::time::{Duration, Instant};

use anyhow::Context;
use sync_protocol::{Lane, PerLane};

use super::load::{self, Judge, Mix, Plan, Workload};
use crate::api::{NodeStatus, NodesView};
use crate::cluster::Cluster;
use crate::process::Node;

/// The node's id in every bench.
pub const NODE_ID: &str = "store-bench";

/// Starts a relay-less site: the PKI, a prepared relay, and a running node with
/// `node_args` added to its command line. The node takes as many posts in flight as the
/// busiest bench has clients (the benches measure capacity, not admission control).
pub async fn offline(node_args: Vec<String>) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::prepare()?;
    let mut args = vec!["--requests-in-flight-max".to_owned(), "4096".to_owned()];
    args.extend(node_args);
    cluster.add_node(NODE_ID, args)?.start().await?;
    Ok(cluster)
}

/// Posts events `first..first + count` of `mix` to the bench node as a busy site's
/// scanners do (64 clients, 100 events per post); returns the events created.
pub async fn buffer(cluster: &Cluster, mix: Mix, first: u64, count: u64, label: &str) -> anyhow::Result<u64> {
    let workload = Workload { prefix: "buffer-".into(), mix, per_post: 100 };
    let plan = Plan { clients: 64, events: count, duration: None, first_event: first };
    let report = load::run(cluster.nodes[0].http_addr(), &workload, plan, Judge::Created, label).await?;
    Ok(report.events)
}

/// The node's status.
pub async fn status(node: &Node) -> anyhow::Result<NodeStatus> {
    Ok(node.client().node_status().await?)
}

/// Events the relay holds durably from the bench node, per lane (the watermarks).
pub async fn relay_watermarks(cluster: &Cluster) -> anyhow::Result<PerLane<u64>> {
    let view: NodesView = cluster.relay.client().nodes().await?;
    let mut marks = PerLane::<u64>::default();
    for node in view.nodes.iter().filter(|n| n.node_id == NODE_ID) {
        for stream in &node.streams {
            let lane: Lane = stream.lane.parse().map_err(|e| anyhow::anyhow!("relay lane: {e}"))?;
            *marks.get_mut(lane) += stream.watermark;
        }
    }
    Ok(marks)
}

/// The sum over lanes.
pub fn total(counts: &PerLane<u64>) -> u64 {
    counts.0.iter().sum()
}

/// The node's heads per lane.
pub async fn heads(node: &Node) -> anyhow::Result<PerLane<u64>> {
    let status = status(node).await?;
    Ok(PerLane::from_fn(|lane| status.lanes.get(lane.as_str()).map_or(0, |l| l.head_seq)))
}

/// The end-of-bench check (module doc): the relay must be running. Waits up to
/// `timeout` for the drain. `Ok(Err(why))` is a wrong result.
pub async fn verify(
    cluster: &Cluster,
    expected: PerLane<u64>,
    timeout: Duration,
) -> anyhow::Result<Result<(), String>> {
    let node = &cluster.nodes[0];
    let heads = heads(node).await?;
    if heads != expected {
        return Ok(Err(format!("the node's heads are {:?}, the run created {:?}", heads.0, expected.0)));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let backlog = status(node).await?.backlog_events();
        let marks = relay_watermarks(cluster).await?;
        if backlog == 0 && marks == heads {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "after {timeout:?} the node still has {backlog} unacknowledged and the relay holds \
                 {:?} of {:?}",
                marks.0, heads.0
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::process::Command::new(&cluster.bins.node)
        .args(["reconcile", "--http", &node.http_addr().to_string()])
        .args(["--relay-http", &cluster.relay.http_addr().to_string()])
        .output()
        .await
        .context("running outpost-node reconcile")?;
    if !out.status.success() {
        return Ok(Err(format!(
            "outpost-node reconcile ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Ok(()))
}

/// The resident set of process `pid`, in bytes, from `/proc`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc status")?;
    Ok(kib * 1024)
}

/// CPU time used so far by a process, and by its threads of one name, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    /// Every thread of the process, exited ones included.
    pub process: Duration,
    /// The live threads named as asked.
    pub threads: Duration,
}

impl CpuTime {
    /// What `pid` (`"self"` for this process) has used, and its threads named `thread`;
    /// an error if it has no such thread.
    pub fn of(pid: &str, thread: Option<&str>) -> anyhow::Result<CpuTime> {
        let process = cpu_of(&format!("/proc/{pid}/stat"))?;
        let Some(thread) = thread else { return Ok(CpuTime { process, threads: Duration::ZERO }) };
        let mut threads = None;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("listing /proc tasks")? {
            let task = task?.path();
            // A thread that ended since the listing is simply not counted.
            if std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim_end() == thread) {
                let used = cpu_of(&task.join("stat").to_string_lossy()).unwrap_or_default();
                *threads.get_or_insert(Duration::ZERO) += used;
            }
        }
        let threads = threads.with_context(|| format!("process {pid} has no thread named {thread}"))?;
        Ok(CpuTime { process, threads })
    }

    /// The time used between `earlier` and this.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            process: self.process.saturating_sub(earlier.process),
            threads: self.threads.saturating_sub(earlier.threads),
        }
    }
}

/// User and system time from a `/proc` `stat` file.
fn cpu_of(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| {
        fields.get(i).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("field {i} of {path}"))
    };
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks.
    let ticks = ticks(11)? + ticks(12)?;
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(ticks as f64 / per_sec as f64))
}

/// A runtime for one bench: two workers, as many as the machine the targets are for.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the bench's runtime")
}
