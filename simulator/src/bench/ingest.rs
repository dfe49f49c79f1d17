//! `ingest-batch` and `ingest-single`: events per second a node makes durable for
//! scanners posting over HTTP, each 2xx after the fsync of its group commit.
//!
//! The node runs with the WAN down, so the figure is the ingest path alone (parse,
//! idempotency lookup, group commit, answer), not ingest sharing two cores with
//! replication. After the measurement the relay starts and the run ends with the
//! exactly-once check ([`super::site::verify`]).
//!
//! Same-run limits: for `ingest-batch`, raw redb appending the same number of records in
//! durable commits of 1,000 (the store this node is built on, without HTTP or JSON), with
//! axum reading the same posts without parsing or storing them beside it; for
//! `ingest-single`, the same load generator against axum answering `201` without parsing or
//! storing (the node's HTTP stack alone: PERFORMANCE.md's "axum single-request rate"),
//! with the generator's own ceiling against a bare socket beside it.

use std::time::Duration;

use super::limits;
use super::load::{self, AxumNoop, Judge, LoadReport, Mix, NoopServer, Plan, Workload};
use super::site::{self, CpuTime, verify};
use super::{Goal, Options, Row};

/// PERFORMANCE.md: events per second with batches of 100.
const BATCH_TARGET: f64 = 500_000.0;
/// PERFORMANCE.md: ack p99 with batches, in ms.
const BATCH_P99_MS: f64 = 20.0;
/// PERFORMANCE.md: events per second, one per post.
const SINGLE_TARGET: f64 = 50_000.0;
/// PERFORMANCE.md: ack p99 of single posts, in ms.
const SINGLE_P99_MS: f64 = 10.0;

/// How long a full run posts, unless `--events` or `--seconds` says otherwise; the target
/// is judged on runs at least this long.
pub(super) const FULL_RUN: Duration = Duration::from_secs(10);
/// How long each server that answers without storing (axum, and the bare socket for
/// `ingest-single`) is driven for the limit, at most.
const LIMIT_RUN: Duration = Duration::from_secs(5);
/// Events a quick run posts.
const QUICK_EVENTS: u64 = 20_000;
/// More events than any run posts: a run that is not sized in events stops on time.
const UNBOUNDED: u64 = u64::MAX;

/// The node's thread that commits (`node::store`).
const WRITER_THREAD: &str = "store-writer";

/// What a run cost in CPU time per event, and how many cores node and generator
/// together would need for the target at that cost (they share this machine's).
struct CpuShare {
    node_us: f64,
    writer_us: f64,
    generator_us: f64,
    target: f64,
}

impl CpuShare {
    /// The CPU time node `pid` and this process (the generator) used since `before`.
    fn measure(pid: &str, before: (CpuTime, CpuTime), events: u64, target: f64) -> anyhow::Result<CpuShare> {
        let node = CpuTime::of(pid, Some(WRITER_THREAD))?.since(before.0);
        let generator = CpuTime::of("self", None)?.since(before.1);
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events.max(1) as f64;
        Ok(CpuShare {
            node_us: per_event(node.process),
            writer_us: per_event(node.threads),
            generator_us: per_event(generator.process),
            target,
        })
    }
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let needed = (self.node_us + self.generator_us) * self.target / 1e6;
        write!(
            f,
            "CPU per event: node {:.1} µs (writer thread {:.1}), generator {:.1} µs, so {:.0}k events/s \
             need {needed:.1} cores for node and generator together at this cost ({cores} here)",
            self.node_us,
            self.writer_us,
            self.generator_us,
            self.target / 1e3,
        )
    }
}

/// How one of the two benches runs.
struct Shape {
    bench: &'static str,
    clients: usize,
    per_post: usize,
    target: f64,
    p99_ms: f64,
}

/// `ingest-batch`: 64 clients, 100 events per post.
pub fn run_batch(options: &Options) -> anyhow::Result<Row> {
    let shape = Shape {
        bench: "ingest-batch",
        clients: 64,
        per_post: 100,
        target: BATCH_TARGET,
        p99_ms: BATCH_P99_MS,
    };
    site::runtime()?.block_on(run(options, &shape))
}

/// `ingest-single`: 256 clients, one event per post.
pub fn run_single(options: &Options) -> anyhow::Result<Row> {
    let shape = Shape {
        bench: "ingest-single",
        clients: 256,
        per_post: 1,
        target: SINGLE_TARGET,
        p99_ms: SINGLE_P99_MS,
    };
    site::runtime()?.block_on(run(options, &shape))
}

async fn run(options: &Options, shape: &Shape) -> anyhow::Result<Row> {
    // A quick run posts a few events; a full one posts for FULL_RUN. `--events` and
    // `--seconds` replace either bound, and the run stops at the first it reaches.
    let quick_count = options.quick && options.seconds.is_none();
    let events = options.events.unwrap_or(if quick_count { QUICK_EVENTS } else { UNBOUNDED });
    let duration = options.seconds.or((!options.quick && options.events.is_none()).then_some(FULL_RUN));
    let mut cluster = site::offline(Vec::new()).await?;
    let workload = Workload { prefix: format!("{}-", shape.bench), mix: Mix::Site, per_post: shape.per_post };
    let plan = Plan { clients: shape.clients, events, duration, first_event: 0 };
    let addr = cluster.nodes[0].http_addr();
    let pid = cluster.nodes[0].pid().ok_or_else(|| anyhow::anyhow!("the node is not running"))?.to_string();
    let before = (CpuTime::of(&pid, Some(WRITER_THREAD))?, CpuTime::of("self", None)?);
    let report = load::run(addr, &workload, plan, Judge::Created, shape.bench).await?;
    let cpu = CpuShare::measure(&pid, before, report.events, shape.target)?;

    let (limit, limit_case) = limit(options, shape, &cluster).await?;
    cluster.relay.start().await?;
    let expected = Mix::Site.lane_counts(report.events);
    let timeout = Duration::from_secs(60) + Duration::from_secs(report.events / 20_000);
    let correct = verify(&cluster, expected, timeout).await?;

    let figure = report.events_per_sec();
    let p99 = report.latency_ms(0.99);
    let target = options.target(shape.target, full_size(options, shape.target));
    Ok(Row::new(shape.bench, Goal::AtLeast, "ev/s")
        .case(format!(
            "{} clients x {} per post, {} events in {:.1} s; ack p50 {:.2} ms, p99 {:.2} ms (target < {} ms); \
             {cpu}; limit: {limit_case}",
            shape.clients,
            shape.per_post,
            report.events,
            report.elapsed.as_secs_f64(),
            report.latency_ms(0.5),
            p99,
            shape.p99_ms,
        ))
        .figures(figure, figure, limit)
        .judged(target, target.is_none() || p99 < shape.p99_ms)
        .correct(correct))
}

/// Whether a run of `options` is as large as the default full run, for a rate `target`: at
/// least [`FULL_RUN`] long, and sized to post at least what the target rate would post in
/// that time. (Judging a run by how long it took would judge a slow node's short run and
/// leave a fast node's unjudged.)
pub(super) fn full_size(options: &Options, target: f64) -> bool {
    let long_enough = options.seconds.is_none_or(|s| s >= FULL_RUN);
    let many_enough = options.events.is_none_or(|n| n as f64 >= target * FULL_RUN.as_secs_f64());
    long_enough && many_enough
}

/// The same-run limit of `shape` (module doc), and a line on how it was measured.
async fn limit(
    options: &Options,
    shape: &Shape,
    cluster: &crate::cluster::Cluster,
) -> anyhow::Result<(f64, String)> {
    // The generator against axum answering without parsing or storing: the HTTP stack's
    // rate for these bodies (PERFORMANCE.md's "axum single-request rate" and "batch rate").
    let duration = (!options.quick).then(|| options.seconds.map_or(LIMIT_RUN, |s| s.min(LIMIT_RUN)));
    let events = if options.quick { QUICK_EVENTS } else { UNBOUNDED };
    let plan = Plan { clients: shape.clients, events, duration, first_event: 0 };
    // The bench's own posts, byte for byte (nothing is stored, so ids cannot collide).
    let workload = Workload { prefix: format!("{}-", shape.bench), mix: Mix::Site, per_post: shape.per_post };
    let axum = AxumNoop::start()?;
    let through_axum = load::run(axum.addr(), &workload, plan, Judge::AnySuccess, "axum, no store").await?;
    drop(axum);
    if shape.per_post == 1 {
        let bare = NoopServer::start().await?;
        let bare: LoadReport =
            load::run(bare.addr(), &workload, plan, Judge::AnySuccess, "bare socket").await?;
        return Ok((
            through_axum.posts_per_sec(),
            format!(
                "posts/s of axum answering 201 without parsing or storing (the node's HTTP stack), same \
                 generator; the generator against a bare socket: {} posts/s",
                super::number(bare.posts_per_sec())
            ),
        ));
    }
    let dir = cluster.dir().to_path_buf();
    let events = if options.quick { QUICK_EVENTS } else { 1_000_000 };
    let (redb, fsyncs) = tokio::task::spawn_blocking(move || {
        let redb = limits::redb_group_commit(&dir, events, 1_000)?;
        let fsyncs = limits::fsync_rate(&dir, if events > 100_000 { 2_000 } else { 200 })?;
        anyhow::Ok((redb, fsyncs))
    })
    .await??;
    Ok((
        redb.events_per_sec,
        format!(
            "raw redb, durable commits of 1,000 records ({:.0} fsync/s of 4 KiB); axum reading the same \
             posts without parsing or storing: {} events/s",
            fsyncs,
            super::number(through_axum.events_per_sec())
        ),
    ))
}
