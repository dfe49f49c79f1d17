//! `drain` and `mixed`: a backlog buffered with the WAN down, then the WAN returns (the
//! relay starts).
//!
//! - `drain`: how fast the backlog becomes durable at the relay once it moves, from the
//!   first poll that sees events there to the one that sees the node's heads covered,
//!   and, judged apart, how long after the relay answers `/readyz` the first event is
//!   durable there (the node's redial). The case column also gives the whole time from
//!   `/readyz`. Limit: raw redb appending the same records in durable commits of 1,000
//!   (what the relay's store can take here).
//! - `mixed`: a bulk backlog drains while a scanner posts a shipment (critical lane)
//!   every 10 ms; the figure is the p99 of each shipment's end-to-end latency, from its
//!   post to the relay's critical watermark covering it. Limit: the same latency with
//!   nothing else to send, measured after the drain.
//!
//! Arrival is seen by polling the relay's `/v1/nodes` every few milliseconds, which
//! bounds the resolution of the latencies (the poll period is in the case column).

use std::time::{Duration, Instant};

use sync_protocol::{Lane, PerLane};

use super::limits;
use super::load::{self, Conn, Mix, Workload};
use super::progress::Progress;
use super::site::{self, buffer, relay_watermarks, total, verify};
use super::{Goal, Options, Row};
use crate::cluster::Cluster;

/// PERFORMANCE.md: events per second durably at the relay.
const DRAIN_TARGET: f64 = 500_000.0;
/// PERFORMANCE.md: the first event at the relay after the link is back, in ms.
const FIRST_EVENT_MS: f64 = 1_000.0;
/// PERFORMANCE.md: critical p99 end to end during a drain, in ms.
const MIXED_TARGET_MS: f64 = 50.0;
/// PERFORMANCE.md: the backlog `drain` and `mixed` are set for.
pub(super) const FULL_BACKLOG: u64 = 1_000_000;
/// The backlog of a quick run.
const QUICK_BACKLOG: u64 = 20_000;
/// How often arrival at the relay is polled.
const POLL: Duration = Duration::from_millis(5);
/// A shipment is posted this often during `mixed`.
const CRITICAL_EVERY: Duration = Duration::from_millis(10);

/// `drain`.
pub fn run_drain(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(drain(options))
}

async fn drain(options: &Options) -> anyhow::Result<Row> {
    let events = options.events_or(QUICK_BACKLOG, FULL_BACKLOG);
    let mut cluster = site::offline(Vec::new()).await?;
    let buffered = buffer(&cluster, Mix::Site, 0, events, "buffer").await?;
    let dir = cluster.dir().to_path_buf();
    let redb = tokio::task::spawn_blocking(move || limits::redb_group_commit(&dir, events, 1_000)).await??;

    cluster.relay.start().await?;
    let back = Instant::now();
    let progress = Progress::start("drain", buffered, "events");
    // When the first events were seen at the relay, and how many.
    let mut first = None;
    let done = loop {
        let at_relay = total(&relay_watermarks(&cluster).await?);
        progress.set(at_relay);
        if at_relay > 0 && first.is_none() {
            first = Some((back.elapsed(), at_relay));
        }
        if at_relay >= buffered {
            break back.elapsed();
        }
        if back.elapsed() > Duration::from_secs(60) + Duration::from_secs(buffered / 10_000) {
            anyhow::bail!("the relay holds {at_relay} of {buffered} events after {:?}", back.elapsed());
        }
        tokio::time::sleep(POLL).await;
    };
    progress.finish();
    let (first_at, at_first) = first.unwrap_or((done, buffered));
    let first_ms = first_at.as_secs_f64() * 1000.0;
    let correct = verify(&cluster, Mix::Site.lane_counts(buffered), Duration::from_secs(60)).await?;
    // A backlog that was all there at the first poll moved faster than the polls can see:
    // count it over the whole time instead.
    let moving = done.saturating_sub(first_at);
    let figure = if at_first < buffered && !moving.is_zero() {
        (buffered - at_first) as f64 / moving.as_secs_f64()
    } else {
        buffered as f64 / done.as_secs_f64()
    };
    let target = options.target(DRAIN_TARGET, events >= FULL_BACKLOG);
    Ok(Row::new("drain", Goal::AtLeast, "ev/s")
        .case(format!(
            "{buffered} events buffered offline; first event durable at the relay {first_ms:.0} ms after it was \
             ready (target < {FIRST_EVENT_MS:.0} ms), the rest in {:.2} s ({:.2} s in all); limit: raw redb, \
             durable commits of 1,000",
            moving.as_secs_f64(),
            done.as_secs_f64()
        ))
        .figures(figure, figure, redb.events_per_sec)
        .judged(target, first_ms < FIRST_EVENT_MS)
        .correct(correct))
}

/// `mixed`.
pub fn run_mixed(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(mixed(options))
}

async fn mixed(options: &Options) -> anyhow::Result<Row> {
    let events = options.events_or(QUICK_BACKLOG, FULL_BACKLOG);
    let mut cluster = site::offline(Vec::new()).await?;
    let buffered = buffer(&cluster, Mix::Bulk, 0, events, "bulk").await?;
    let shipments = Workload { prefix: "ship-".into(), mix: Mix::Critical, per_post: 1 };
    let mut conn = Conn::connect(cluster.nodes[0].http_addr()).await?;

    let race = race(&mut cluster, &mut conn, buffered, buffered).await?;
    let (mut during, posted_during) = (race.shipments, race.posted);
    wait_arrivals(&cluster, &mut during).await?;

    // The limit: the same shipments with nothing else to send.
    let mut idle = Latencies::new(during.posted.len() as u64 + 1);
    for _ in 0..if options.quick { 10 } else { 100 } {
        idle.post(&mut conn, &shipments).await?;
        wait_arrivals(&cluster, &mut idle).await?;
    }
    let posted = during.posted.len() as u64 + idle.posted.len() as u64;
    let expected = PerLane::from_fn(|lane| match lane {
        Lane::Critical => posted,
        Lane::Standard => 0,
        Lane::Bulk => buffered,
    });
    let correct = verify(&cluster, expected, Duration::from_secs(60)).await?;
    let (p50, p99, max) = (during.quantile_ms(0.5), during.quantile_ms(0.99), during.quantile_ms(1.0));
    let (ack_p99, ack_max) = (during.ack_quantile_ms(0.99), during.ack_quantile_ms(1.0));
    let target = options.target(MIXED_TARGET_MS, events >= FULL_BACKLOG);
    Ok(Row::new("mixed", Goal::AtMost, "ms")
        .case(format!(
            "{posted_during} shipments during the drain of {buffered} scans (which began {:.0} ms after the relay \
             was ready): p50 {p50:.1} ms, max {max:.1} ms; \
             the node's 201: p99 {ack_p99:.1} ms, max {ack_max:.1} ms; slowest poll of the relay {:.1} ms; \
             limit: p99 with nothing else to send; arrival polled every {} ms",
            race.began.as_secs_f64() * 1000.0,
            race.slowest_poll.as_secs_f64() * 1000.0,
            POLL.as_millis()
        ))
        .figures(p99, p99, idle.quantile_ms(0.99))
        .judged(target, true)
        .correct(correct))
}

/// Shipments posted while a bulk backlog drained.
#[derive(Debug)]
pub struct Race {
    /// Shipments posted during the drain.
    pub posted: usize,
    /// Of those, how many were durable at the relay when the bulk backlog finished.
    pub arrived_first: usize,
    /// Each shipment's post and arrival.
    pub shipments: Latencies,
    /// The longest the relay took to answer a poll of its watermarks: a slow answer
    /// delays every arrival seen by it.
    pub slowest_poll: Duration,
    /// From the relay being ready to the first bulk events durable there.
    pub began: Duration,
}

/// Starts the relay of an offline site holding `buffered` bulk events (and nothing else)
/// and, once the drain has begun (the relay holds the first of them), posts a shipment
/// every 10 ms on `conn` until the relay holds `post_until` bulk events; returns when it
/// holds all of them. Nothing may be in the critical lane before.
///
/// Shipments posted before the drain began would wait for the node's next dial, up to
/// a second: they would measure the reconnect, which `drain` measures as its time to the
/// first event, not the drain.
pub async fn race(
    cluster: &mut Cluster,
    conn: &mut Conn,
    buffered: u64,
    post_until: u64,
) -> anyhow::Result<Race> {
    let shipments = Workload { prefix: "ship-".into(), mix: Mix::Critical, per_post: 1 };
    cluster.relay.start().await?;
    let progress = Progress::start("mixed", buffered, "bulk events");
    let mut during = Latencies::new(1);
    let ready = Instant::now();
    let mut began = None;
    let mut next_post = ready;
    let mut slowest_poll = Duration::ZERO;
    loop {
        let polled = Instant::now();
        let marks = relay_watermarks(cluster).await?;
        slowest_poll = slowest_poll.max(polled.elapsed());
        let bulk = *marks.get(Lane::Bulk);
        progress.set(bulk);
        during.arrived(*marks.get(Lane::Critical));
        if bulk >= buffered {
            break;
        }
        if bulk > 0 && began.is_none() {
            began = Some(ready.elapsed());
            next_post = Instant::now();
        }
        if began.is_some() && Instant::now() >= next_post && bulk < post_until {
            during.post(conn, &shipments).await?;
            next_post += CRITICAL_EVERY;
        }
        tokio::time::sleep(POLL).await;
    }
    progress.finish();
    Ok(Race {
        posted: during.posted.len(),
        arrived_first: during.arrived.len(),
        shipments: during,
        slowest_poll,
        began: began.unwrap_or_else(|| ready.elapsed()),
    })
}

/// Shipments posted one at a time, and when each arrived at the relay. The critical lane
/// holds only these, so the n-th shipment (from `first_seq`) has seq `first_seq + n`.
#[derive(Debug)]
pub struct Latencies {
    posted: Vec<Instant>,
    /// How long the node took to answer each post 201 (its fsync included).
    acked: Vec<Duration>,
    arrived: Vec<Duration>,
    first_seq: u64,
}

impl Latencies {
    fn new(first_seq: u64) -> Latencies {
        Latencies { posted: Vec::new(), acked: Vec::new(), arrived: Vec::new(), first_seq }
    }

    async fn post(&mut self, conn: &mut Conn, shipments: &Workload) -> anyhow::Result<()> {
        let n = self.first_seq - 1 + self.posted.len() as u64;
        let mut body = String::new();
        shipments.body(n, &mut body);
        let at = Instant::now();
        let (status, answer) = conn.post(body.as_bytes()).await?;
        anyhow::ensure!(status == 201, "shipment {n} answered {status}: {}", String::from_utf8_lossy(answer));
        self.posted.push(at);
        self.acked.push(at.elapsed());
        Ok(())
    }

    /// The relay's critical watermark is `mark`: every shipment at or below it arrived.
    fn arrived(&mut self, mark: u64) {
        let now = Instant::now();
        while self.pending() && self.first_seq + self.arrived.len() as u64 <= mark {
            let posted = self.posted[self.arrived.len()];
            self.arrived.push(now - posted);
        }
    }

    fn pending(&self) -> bool {
        self.arrived.len() < self.posted.len()
    }

    /// The `q` quantile of the arrivals so far, in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.arrived, q)
    }

    /// The `q` quantile of the node's answers, in ms.
    pub fn ack_quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.acked, q)
    }
}

fn quantile_ms(durations: &[Duration], q: f64) -> f64 {
    let mut us: Vec<u32> =
        durations.iter().map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)).collect();
    us.sort_unstable();
    load::quantile_us(&us, q) / 1000.0
}

/// Waits (up to 30 s) until every shipment posted has arrived at the relay.
pub async fn wait_arrivals(cluster: &Cluster, latencies: &mut Latencies) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.pending() {
        anyhow::ensure!(Instant::now() < deadline, "shipments did not reach the relay within 30 s");
        latencies.arrived(*relay_watermarks(cluster).await?.get(Lane::Critical));
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}
