//! The benches of a long outage: the node holds a large backlog with the WAN down.
//!
//! - `backlog-memory`: the node's resident set as the backlog grows, sampled after each
//!   tenth; the figure is the largest sample, the limit the first (a ratio near 1 is a
//!   flat line: the backlog lives in redb, not in memory).
//! - `disk`: bytes of store file per buffered event. Limit: raw redb holding the same
//!   number of 61-byte records in one table with no id index (PERFORMANCE.md's reference
//!   figure; the node's records are smaller, and it indexes their ids too).
//! - `restart`: with the backlog on disk, the time from starting the node to the first
//!   201, after a clean stop (SIGTERM) and after `kill -9`. Limit: the same clean restart
//!   of an empty store, measured before the backlog was built.
//!
//! Each ends with the exactly-once check: the relay starts and the whole backlog drains.

use std::time::{Duration, Instant};

use sync_protocol::{Lane, PerLane};

use super::limits;
use super::load::{Conn, Mix, Workload};
use super::site::{self, buffer, rss_bytes, verify};
use super::{Goal, Options, Row};
use crate::cluster::Cluster;

/// PERFORMANCE.md: node RSS with 10M events buffered, in MiB.
const RSS_TARGET_MIB: f64 = 64.0;
/// How much the RSS may grow over the second half of the backlog ("flat"). redb's page
/// cache is warm long before; a backlog that lives on disk costs no more memory.
const RSS_GROWTH_MAX_MIB: f64 = 8.0;
/// PERFORMANCE.md: bytes on disk per buffered event.
const DISK_TARGET: f64 = 100.0;
/// PERFORMANCE.md: restart with 10M events, clean and after `kill -9`, in seconds.
const RESTART_TARGET_S: f64 = 1.0;
const RESTART_KILLED_TARGET_S: f64 = 2.0;
/// PERFORMANCE.md: the backlog `backlog-memory` and `restart` are set for.
pub(super) const LARGE_STORE: u64 = 10_000_000;
/// The backlog `disk` measures, where a larger one is judged as well.
pub(super) const DISK_BACKLOG: u64 = 1_000_000;
const MIB: f64 = 1024.0 * 1024.0;

/// Starts the relay and checks that `expected` arrives exactly once.
async fn drain_and_verify(
    cluster: &mut Cluster,
    expected: PerLane<u64>,
) -> anyhow::Result<Result<(), String>> {
    cluster.relay.start().await?;
    verify(cluster, expected, Duration::from_secs(120) + Duration::from_secs(site::total(&expected) / 20_000))
        .await
}

/// `backlog-memory`.
pub fn run_memory(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(memory(options))
}

async fn memory(options: &Options) -> anyhow::Result<Row> {
    let events = options.events_or(100_000, LARGE_STORE);
    let mut cluster = site::offline(Vec::new()).await?;
    let pid = cluster.nodes[0].pid().ok_or_else(|| anyhow::anyhow!("the node is not running"))?;
    let mut samples = Vec::new();
    for i in 0..10 {
        // Tenths by their bounds, so that every one of `events` is buffered.
        let (start, end) = (events * i / 10, events * (i + 1) / 10);
        buffer(&cluster, Mix::Site, start, end - start, &format!("backlog {}/10", i + 1)).await?;
        samples.push(rss_bytes(pid)? as f64 / MIB);
    }
    let first = samples[0];
    let max = samples.iter().copied().fold(0.0, f64::max);
    let half = samples[4];
    let growth = samples[5..].iter().copied().fold(half, f64::max) - half;
    let correct = drain_and_verify(&mut cluster, Mix::Site.lane_counts(events)).await?;
    let target = options.target(RSS_TARGET_MIB, events >= LARGE_STORE);
    let trace: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
    Ok(Row::new("backlog-memory", Goal::AtMost, "MiB")
        .case(format!(
            "{events} events buffered; RSS after each tenth: {} MiB; growth over the second half \
             {growth:.1} MiB (at most {RSS_GROWTH_MAX_MIB} MiB); limit: RSS after the first tenth",
            trace.join(" ")
        ))
        .figures(max, max, first)
        .judged(target, growth <= RSS_GROWTH_MAX_MIB)
        .correct(correct))
}

/// `disk`.
pub fn run_disk(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(disk(options))
}

async fn disk(options: &Options) -> anyhow::Result<Row> {
    let events = options.events_or(50_000, DISK_BACKLOG);
    let mut cluster = site::offline(Vec::new()).await?;
    buffer(&cluster, Mix::Site, 0, events, "buffer").await?;
    let status = site::status(&cluster.nodes[0]).await?;
    let per_event = status.store.disk_bytes as f64 / events as f64;
    let dir = cluster.dir().to_path_buf();
    let redb = tokio::task::spawn_blocking(move || limits::redb_group_commit(&dir, events, 1_000)).await??;
    let correct = drain_and_verify(&mut cluster, Mix::Site.lane_counts(events)).await?;
    let target = options.target(DISK_TARGET, events >= DISK_BACKLOG);
    Ok(Row::new("disk", Goal::AtMost, "B")
        .case(format!(
            "{events} events buffered, store {:.1} MiB; limit: raw redb holding {events} records of {} bytes",
            status.store.disk_bytes as f64 / MIB,
            limits::RECORD_BYTES
        ))
        .figures(per_event, per_event, redb.bytes_per_event)
        .judged(target, true)
        .correct(correct))
}

/// `restart`.
pub fn run_restart(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(restart(options))
}

async fn restart(options: &Options) -> anyhow::Result<Row> {
    let events = options.events_or(100_000, LARGE_STORE);
    let mut cluster = site::offline(Vec::new()).await?;
    let mut probes = Probes { sent: 0 };
    let empty = probes.restart(&mut cluster, Stop::Clean).await?;
    buffer(&cluster, Mix::Site, 0, events, "buffer").await?;
    let killed = probes.restart(&mut cluster, Stop::Killed).await?;
    let clean = probes.restart(&mut cluster, Stop::Clean).await?;
    let mut expected = Mix::Site.lane_counts(events);
    *expected.get_mut(Lane::Critical) += probes.sent;
    let correct = drain_and_verify(&mut cluster, expected).await?;
    let (clean_s, killed_s) = (clean.as_secs_f64(), killed.as_secs_f64());
    let target = options.target(RESTART_TARGET_S, events >= LARGE_STORE);
    Ok(Row::new("restart", Goal::AtMost, "s")
        .case(format!(
            "{events} events in the store; start to first 201: clean {clean_s:.3} s, after kill -9 \
             {killed_s:.3} s (target < {RESTART_KILLED_TARGET_S} s); limit: clean restart of an empty store"
        ))
        .figures(clean_s, clean_s, empty.as_secs_f64())
        .judged(target, killed_s < RESTART_KILLED_TARGET_S)
        .correct(correct))
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Clean,
    Killed,
}

/// Shipments posted to find out when a restarted node accepts again.
struct Probes {
    sent: u64,
}

impl Probes {
    /// Stops the node as `how` says, starts it, and returns the time from the spawn to the
    /// first 201.
    async fn restart(&mut self, cluster: &mut Cluster, how: Stop) -> anyhow::Result<Duration> {
        let node = &mut cluster.nodes[0];
        match how {
            Stop::Clean => {
                node.terminate(Duration::from_secs(30)).await?;
            }
            Stop::Killed => node.kill()?,
        }
        let addr = node.http_addr();
        node.spawn()?;
        let spawned = Instant::now();
        let workload = Workload { prefix: "probe-".into(), mix: Mix::Critical, per_post: 1 };
        let mut body = String::new();
        workload.body(self.sent, &mut body);
        loop {
            anyhow::ensure!(
                spawned.elapsed() < Duration::from_secs(120),
                "the node did not accept within 120 s"
            );
            let Ok(mut conn) = Conn::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            };
            match conn.post(body.as_bytes()).await {
                // 200: a dropped connection had it stored already.
                Ok((200 | 201, _)) => break,
                // Listening, not yet ready (503), or the connection dropped: try again.
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        let elapsed = spawned.elapsed();
        self.sent += 1;
        Ok(elapsed)
    }
}
