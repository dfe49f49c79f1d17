//! `fan-in`: a thousand sites replicating into one relay at once.
//!
//! Each simulated site is a task with a certificate of its own and a QUIC connection of
//! its own, driven by the same sans-IO [`Sender`] as `outpost-node`; its events live in
//! memory instead of a redb store, so one process on the bench machine can play a
//! thousand sites and the bench measures the relay. Every site makes 100 events a second
//! (a site's mix of lanes: scans, picks and receipts, shipments), in ticks of 100 ms that
//! start at a random phase, so the relay sees a steady 100k events/s from 1,000 sites.
//!
//! - The figure: replication lag p99, from an event's creation at its site to the relay's
//!   durable ack covering it, over every event of the measured window.
//! - Also judged: the relay sustained the offered rate: at least 95% of the events made
//!   during the window were acknowledged within it (those of its last moments are still
//!   in flight at its end).
//! - Limit: the same lag with one site alone, measured first in the same run.
//! - Correct: after the run, the relay's watermark of every `(site, lane)` equals the
//!   site's head, and its log holds exactly as many events as the sites made. Offsets are
//!   dense and every seq up to each head is held, so equal counts mean each is held once.
//!
//! The sites share 16 client endpoints (UDP sockets), a few hand-shakes at a time, as a
//! thousand sites spread over time would; the relay's limits are its defaults.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sync_protocol::wire::{self, Batch, InventoryUpdate, Message};
use sync_protocol::{
    Epoch, Event, Kind, Lane, PerLane, Record, Sender, SenderConfig, SenderEvent, Transmit, inventory,
};
use tokio::sync::{Semaphore, mpsc};

use super::load::{Mix, quantile_us};
use super::progress::Progress;
use super::site;
use super::{Goal, Options, Row};
use crate::cluster::{Cluster, REGION};

/// PERFORMANCE.md: replication lag p99, in ms.
const LAG_TARGET_MS: f64 = 1_000.0;
/// How long a full run's sites post; the target is judged on runs at least this long.
pub(super) const FULL_WINDOW: Duration = Duration::from_secs(20);
/// PERFORMANCE.md: events per second each site makes.
const SITE_RATE: u64 = 100;
/// A site hands its events to its sender this often (its group commit).
const TICK: Duration = Duration::from_millis(100);
/// Client endpoints (UDP sockets) the sites share.
const ENDPOINTS: usize = 16;
/// Handshakes in progress at once.
const DIALS_AT_ONCE: usize = 32;
/// Share of the events made during the window that the relay must acknowledge within it
/// (those of its last moments are still in flight at its end).
const SUSTAINED_MIN: f64 = 0.95;
/// SKUs per location of the sites' stock keys (the inventory the relay merges and sends
/// every site): site `i` moves `SKU-{i % SKUS}` at `BIN-{i / SKUS}`.
const SKUS: u64 = 200;

/// `fan-in`.
pub fn run(options: &Options) -> anyhow::Result<Row> {
    site::runtime()?.block_on(fan_in(options))
}

/// What a run measured.
#[derive(Debug, Default)]
struct Measured {
    /// Lag of every event acknowledged during the window, in µs.
    lags_us: Vec<u32>,
    /// Events made during the window.
    made: u64,
    /// Of those, acknowledged by the end of the window.
    acked_in_window: u64,
    /// Per site, the heads at the end.
    heads: Vec<PerLane<u64>>,
}

async fn fan_in(options: &Options) -> anyhow::Result<Row> {
    let (sites, window) = if options.quick { (50, Duration::from_secs(3)) } else { (1_000, FULL_WINDOW) };
    let window = options.seconds.unwrap_or(window);
    let mut cluster = Cluster::prepare()?;
    cluster.relay.start().await?;
    let credentials = issue(&cluster, sites).await?;
    let relay = cluster.relay.quic_addr();
    let endpoints = (0..ENDPOINTS.min(sites))
        .map(|_| node::daemon::client_endpoint((std::net::Ipv4Addr::LOCALHOST, 0).into()))
        .collect::<Result<Vec<_>, _>>()
        .context("binding the sites' UDP sockets")?;

    // The limit: one site alone.
    let mut credentials = credentials.into_iter();
    let alone = credentials.next().context("no credentials")?;
    let with_log = |e: anyhow::Error| e.context(format!("relay log:\n{}", cluster.relay.log_tail(20)));
    let limit = run_sites(vec![alone], &endpoints, relay, window.min(Duration::from_secs(5)), "one site")
        .await
        .map_err(with_log)?;
    let many: Vec<_> = credentials.collect();
    let count = many.len();
    let measured =
        run_sites(many, &endpoints, relay, window, &format!("{count} sites")).await.map_err(with_log)?;

    let mut heads = limit.heads.clone();
    heads.extend(measured.heads.iter().copied());
    let correct = verify(&cluster, &heads).await?;
    let mut lags = measured.lags_us;
    lags.sort_unstable();
    let mut alone_lags = limit.lags_us;
    alone_lags.sort_unstable();
    let p = |sorted: &[u32], q: f64| quantile_us(sorted, q) / 1000.0;
    let (p50, p99, max) = (p(&lags, 0.5), p(&lags, 0.99), p(&lags, 1.0));
    let offered = (count as u64 * SITE_RATE) as f64;
    let rate = measured.acked_in_window as f64 / window.as_secs_f64();
    let sustained = measured.acked_in_window as f64 / measured.made.max(1) as f64;
    let target = options.target(LAG_TARGET_MS, window >= FULL_WINDOW);
    Ok(Row::new("fan-in", Goal::AtMost, "ms")
        .case(format!(
            "{count} sites x {SITE_RATE} events/s for {:.0} s: {rate:.0} events/s acknowledged of {offered:.0} \
             offered ({:.1}%, at least {:.0}%); lag p50 {p50:.1} ms, max {max:.1} ms; limit: lag p99 of one site \
             alone",
            window.as_secs_f64(),
            sustained * 100.0,
            SUSTAINED_MIN * 100.0
        ))
        .figures(p99, p99, p(&alone_lags, 0.99))
        .judged(target, sustained >= SUSTAINED_MIN)
        .correct(correct))
}

/// A site's name and what it needs to connect.
struct Credentials {
    node_id: String,
    number: u64,
    tls: node::tls::Credentials,
}

/// Issues `sites` certificates (a few `outpost-relay pki node` at a time) and loads them.
async fn issue(cluster: &Cluster, sites: usize) -> anyhow::Result<Vec<Credentials>> {
    let progress = Progress::start("certificates", sites as u64, "sites");
    let done = progress.counter();
    let mut tasks = Vec::new();
    let workers = 4;
    for worker in 0..workers {
        let (pki, done) = (cluster.pki.clone(), done.clone());
        tasks.push(tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Credentials>> {
            let mut out = Vec::new();
            for i in (worker..sites).step_by(workers) {
                let node_id = format!("fan-{i:04}");
                let pair = pki.node(&node_id, REGION)?;
                let tls = node::tls::load(&pki.ca, &pair.cert, &pair.key)?;
                out.push(Credentials { node_id, number: i as u64, tls });
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(sites);
    for task in tasks {
        all.extend(task.await??);
    }
    progress.finish();
    all.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(all)
}

/// Connects every site, lets them make events for `window`, waits until the relay has
/// acknowledged everything, and gathers what they measured.
async fn run_sites(
    sites: Vec<Credentials>,
    endpoints: &[quinn::Endpoint],
    relay: SocketAddr,
    window: Duration,
    label: &str,
) -> anyhow::Result<Measured> {
    let dials = Arc::new(Semaphore::new(DIALS_AT_ONCE));
    let connected = Arc::new(AtomicU64::new(0));
    let count = sites.len();
    // Each site says once whether it connected, and then lets go of its sender.
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), usize>>(count);
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let progress = Progress::start(&format!("{label}: connecting"), count as u64, "sites");
    let mut tasks = Vec::with_capacity(count);
    for (i, credentials) in sites.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (dials, ready_tx, start_rx, connected) =
            (dials.clone(), ready_tx.clone(), start_rx.clone(), connected.clone());
        let counter = progress.counter();
        tasks.push(tokio::spawn(async move {
            let connecting = async {
                let conn = {
                    let _permit = dials.acquire().await?;
                    dial(&endpoint, relay, &credentials).await?
                };
                connected.fetch_add(1, Ordering::Relaxed);
                counter.fetch_add(1, Ordering::Relaxed);
                SimSite::new(credentials, conn).await
            };
            let connected = connecting.await;
            ready_tx.send(connected.as_ref().map(|_| ()).map_err(|_| i)).await.ok();
            drop(ready_tx);
            connected?.run(start_rx, window).await
        }));
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            // A site that could not connect fails the run at once, with its error.
            Some(Err(failed)) => {
                let task = tasks.swap_remove(failed);
                tasks.iter().for_each(|task| task.abort());
                let error = task.await?.err().unwrap_or_else(|| anyhow::anyhow!("did not connect"));
                return Err(error.context(format!("site {failed} of {count}")));
            }
            None => break,
        }
    }
    progress.finish();
    let start = Instant::now();
    start_tx.send_replace(Some(start));
    let progress = Progress::start(&format!("{label}: replicating"), window.as_secs(), "s");
    let ticker = {
        let counter = progress.counter();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                counter.store(start.elapsed().as_secs(), Ordering::Relaxed);
            }
        })
    };
    let mut measured = Measured::default();
    for (i, task) in tasks.into_iter().enumerate() {
        let report = task.await?.with_context(|| format!("site {i} of {count}"))?;
        measured.lags_us.extend(report.lags_us);
        measured.made += report.made;
        measured.acked_in_window += report.acked_in_window;
        measured.heads.push(report.heads);
    }
    ticker.abort();
    progress.finish();
    Ok(measured)
}

async fn dial(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    credentials: &Credentials,
) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint
        .connect_with(credentials.tls.client_config.clone(), relay, "localhost")
        .with_context(|| format!("{} dialing the relay", credentials.node_id))?;
    tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .with_context(|| format!("{}: no handshake within 30 s", credentials.node_id))?
        .with_context(|| format!("{} connecting to the relay", credentials.node_id))
}

/// What one site measured.
struct Report {
    lags_us: Vec<u32>,
    made: u64,
    acked_in_window: u64,
    heads: PerLane<u64>,
}

/// Frames from one of a site's streams, or why the stream ended.
type Inbox = mpsc::UnboundedSender<Result<Message, String>>;

/// One simulated site: a sender, its lanes in memory, and its connection.
struct SimSite {
    node_id: String,
    number: u64,
    /// When in each tick this site makes its events.
    phase: Duration,
    sender: Sender,
    conn: quinn::Connection,
    control: quinn::SendStream,
    lanes: PerLane<Option<quinn::SendStream>>,
    inbox_tx: Inbox,
    inbox: mpsc::UnboundedReceiver<Result<Message, String>>,
    /// Per lane, the records from `base` on that the relay has not acknowledged.
    held: PerLane<(u64, VecDeque<Record>)>,
    /// Per lane, the last seq of each tick's events and when the tick made them.
    made_at: PerLane<VecDeque<(u64, Instant)>>,
    /// Per lane, the last seq whose lag is counted.
    counted: PerLane<u64>,
    heads: PerLane<u64>,
    made: u64,
    lags_us: Vec<u32>,
    acked_in_window: u64,
    /// The end of the window, once it started.
    until: Option<Instant>,
}

impl SimSite {
    /// Says hello and waits for the relay's welcome.
    async fn new(credentials: Credentials, conn: quinn::Connection) -> anyhow::Result<SimSite> {
        let identity = credentials.tls.identity.clone();
        let mut rng = StdRng::from_os_rng();
        let epoch = Epoch(rng.random());
        // A random phase, so the sites' ticks spread over the tick.
        let phase = Duration::from_micros(rng.random_range(0..TICK.as_micros() as u64));
        let now = Instant::now();
        let mut sender =
            Sender::new(SenderConfig::new(identity, epoch), PerLane::default(), PerLane::default(), now);
        sender.handle_inventory_merged(0);
        sender.handle_timeout(now);
        while sender.poll_event().is_some() {}
        let (control, recv) = conn.open_bi().await.context("opening the control stream")?;
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(recv, inbox_tx.clone()));
        sender.handle_connected(Instant::now());
        let mut site = SimSite {
            node_id: credentials.node_id,
            number: credentials.number,
            phase,
            sender,
            conn,
            control,
            lanes: PerLane::default(),
            inbox_tx,
            inbox,
            held: PerLane::default(),
            made_at: PerLane::default(),
            counted: PerLane::default(),
            heads: PerLane::default(),
            made: 0,
            lags_us: Vec::new(),
            acked_in_window: 0,
            until: None,
        };
        site.flush().await?;
        while !site.sender.is_ready() {
            site.receive().await?;
        }
        Ok(site)
    }

    /// Makes events for `window` from the start signal on, then waits until the relay
    /// has acknowledged all of them.
    async fn run(
        mut self,
        start: tokio::sync::watch::Receiver<Option<Instant>>,
        window: Duration,
    ) -> anyhow::Result<Report> {
        let replicated = self.replicate(start, window).await;
        let conn = self.conn.clone();
        replicated.map_err(|e| match conn.close_reason() {
            Some(reason) => e.context(format!("{}: connection closed: {reason}", self.node_id)),
            None => e,
        })?;
        self.conn.close(0u32.into(), b"done");
        Ok(Report {
            lags_us: self.lags_us,
            made: self.made,
            acked_in_window: self.acked_in_window,
            heads: self.heads,
        })
    }

    async fn replicate(
        &mut self,
        mut start: tokio::sync::watch::Receiver<Option<Instant>>,
        window: Duration,
    ) -> anyhow::Result<()> {
        let started = *start.wait_for(Option::is_some).await?;
        let started = started.context("no start")?;
        let until = started + window;
        self.until = Some(until);
        // Every tick due before `until` makes its events, however late the site gets to
        // it, and they count as made when due: a site that falls behind under load shows
        // as lag, as its scanners would see it, rather than as fewer events.
        let mut due = started + self.phase;
        let per_tick = SITE_RATE * TICK.as_millis() as u64 / 1000;
        let drain_by = until + Duration::from_secs(60);
        loop {
            let making = due < until;
            if !making && self.backlog() == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < drain_by,
                "{}: {} events still unacknowledged 60 s after the window",
                self.node_id,
                self.backlog()
            );
            tokio::select! {
                () = tokio::time::sleep_until(due.into()), if making => {
                    self.make(per_tick, due);
                    due += TICK;
                }
                received = self.receive() => received?,
                _ = tokio::time::sleep(Duration::from_millis(100)), if !making => {}
            }
            self.flush().await?;
        }
        Ok(())
    }

    fn backlog(&self) -> u64 {
        Lane::ALL.iter().map(|&lane| self.sender.backlog(lane)).sum()
    }

    /// One tick's events: durable at the site (in memory here) and handed to the sender.
    fn make(&mut self, count: u64, now: Instant) {
        for _ in 0..count {
            let n = self.made;
            self.made += 1;
            let record = self.record(n);
            let lane = record.event.default_lane();
            let (base, held) = self.held.get_mut(lane);
            if held.is_empty() {
                *base = *self.heads.get(lane) + 1;
            }
            held.push_back(record);
            *self.heads.get_mut(lane) += 1;
        }
        for lane in Lane::ALL {
            let head = *self.heads.get(lane);
            let made_at = self.made_at.get_mut(lane);
            if head > made_at.back().map_or(*self.counted.get(lane), |&(last, _)| last) {
                made_at.push_back((head, now));
            }
            self.sender.handle_appended(lane, head);
        }
    }

    /// Event `n` of this site, in a site's mix: per 20 events, two receipts of 2 first,
    /// then 15 scans, a shipment and two picks of 1, so its stock (one key per site, its
    /// own SKU at its own location) rises by one per 20 events and is never negative.
    fn record(&self, n: u64) -> Record {
        let kind = Mix::Site.kind(n + 3);
        let qty = if kind == Kind::Receive { 2 } else { 1 };
        let sku = format!("SKU-{}", self.number % SKUS);
        let location = format!("BIN-{}", self.number / SKUS);
        let event_id = format!("{}-{n:010}", self.node_id);
        let event = match (event_id.try_into(), sku.try_into(), location.try_into()) {
            (Ok(id), Ok(sku), Ok(location)) => Event::new(id, kind, sku, location, qty),
            _ => unreachable!("the bench's ids are valid"),
        };
        let deltas = inventory::deltas_of(&event, |_| 0).unwrap_or_default();
        Record { received_at_ms: 0, event, deltas }
    }

    /// Handles one message from the relay, and what the sender makes of it.
    async fn receive(&mut self) -> anyhow::Result<()> {
        let msg = self
            .inbox
            .recv()
            .await
            .context("the connection's streams ended")?
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.node_id))?;
        self.sender
            .handle_message(msg, Instant::now())
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.node_id))?;
        while let Some(event) = self.sender.poll_event() {
            match event {
                SenderEvent::Acked { lane, through } => self.acked(lane, through),
                SenderEvent::Refused(refuse) => anyhow::bail!("{}: relay {refuse}", self.node_id),
                SenderEvent::RelayRegressed { lane, acked, watermark } => {
                    anyhow::bail!(
                        "{}: relay regressed on {lane}: acked {acked}, holds {watermark}",
                        self.node_id
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The relay holds `lane` through `through`: the lag of each tick's events covered.
    fn acked(&mut self, lane: Lane, through: u64) {
        let now = Instant::now();
        let in_window = self.until.is_some_and(|until| now <= until);
        let counted = self.counted.get_mut(lane);
        let made_at = self.made_at.get_mut(lane);
        while let Some(&(last, at)) = made_at.front()
            && last <= through
        {
            let events = last - *counted;
            let lag = u32::try_from((now - at).as_micros()).unwrap_or(u32::MAX);
            self.lags_us.extend(std::iter::repeat_n(lag, events as usize));
            if in_window {
                self.acked_in_window += events;
            }
            *counted = last;
            made_at.pop_front();
        }
        let (base, held) = self.held.get_mut(lane);
        while *base <= through && held.pop_front().is_some() {
            *base += 1;
        }
    }

    /// Writes what the sender wants sent.
    async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(transmit) = self.sender.poll_transmit() {
            match transmit {
                Transmit::Control(msg) => self.control.write_all(&msg.encode()).await?,
                Transmit::Batch { lane, first_seq, count } => {
                    let (base, held) = self.held.get(lane);
                    let from = first_seq
                        .get()
                        .checked_sub(*base)
                        .and_then(|from| usize::try_from(from).ok())
                        .with_context(|| {
                            format!("{}: seq {first_seq} of {lane} is no longer held", self.node_id)
                        })?;
                    let events: Vec<Record> = held.range(from..from + count as usize).cloned().collect();
                    let frame = Message::Batch(Batch { lane, first_seq, events }).encode();
                    let stream = match self.lanes.get_mut(lane) {
                        Some(stream) => stream,
                        slot => {
                            let (send, recv) = self.conn.open_bi().await?;
                            tokio::spawn(read_frames(recv, self.inbox_tx.clone()));
                            slot.insert(send)
                        }
                    };
                    stream.write_all(&frame).await?;
                }
            }
        }
        Ok(())
    }
}

/// Reads frames from a stream into the site's inbox until the stream ends. Inventory
/// updates are read off the stream but not decoded: a real site merges them on its own
/// machine, while here a thousand sites share the relay's, and decoding every site's
/// copy of the chain's stock would measure the bench rather than the relay. (The sites
/// therefore never report a merged version, which only matters on a reconnect.)
async fn read_frames(mut recv: quinn::RecvStream, inbox: Inbox) {
    let inventory_tag = inventory_tag();
    let mut prefix = [0u8; wire::LENGTH_PREFIX_BYTES];
    let mut body = Vec::new();
    loop {
        match recv.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(e) => {
                let _ = inbox.send(Err(e.to_string()));
                return;
            }
        }
        let len = match wire::decode_length(prefix, wire::FRAME_BYTES_MAX) {
            Ok(len) => len,
            Err(e) => {
                let _ = inbox.send(Err(e.to_string()));
                return;
            }
        };
        body.resize(len, 0);
        if let Err(e) = recv.read_exact(&mut body).await {
            let _ = inbox.send(Err(e.to_string()));
            return;
        }
        if body.first() == Some(&inventory_tag) {
            continue;
        }
        let msg = wire::decode_body(&body).map_err(|e| e.to_string());
        let failed = msg.is_err();
        if inbox.send(msg).is_err() || failed {
            return;
        }
    }
}

/// The first byte of an inventory update's body: its variant's tag.
fn inventory_tag() -> u8 {
    let update = InventoryUpdate { through_version: 0, state: Default::default(), complete: true };
    Message::Inventory(update).encode()[wire::LENGTH_PREFIX_BYTES]
}

/// The relay's watermarks equal the sites' heads, and its log holds exactly their sum.
async fn verify(cluster: &Cluster, heads: &[PerLane<u64>]) -> anyhow::Result<Result<(), String>> {
    let client = cluster.relay.client();
    let view = client.nodes().await?;
    let mut marks = std::collections::HashMap::new();
    for node in &view.nodes {
        let mut lanes = PerLane::<u64>::default();
        for stream in &node.streams {
            let lane: Lane = stream.lane.parse().map_err(|e| anyhow::anyhow!("relay lane: {e}"))?;
            *lanes.get_mut(lane) += stream.watermark;
        }
        marks.insert(node.node_id.clone(), lanes);
    }
    let mut total = 0;
    for (i, head) in heads.iter().enumerate() {
        let node_id = format!("fan-{i:04}");
        let held = marks.get(&node_id).copied().unwrap_or_default();
        if held != *head {
            return Ok(Err(format!("{node_id}: the relay holds {:?} of {:?}", held.0, head.0)));
        }
        total += site::total(head);
    }
    // Offsets are dense from 0: the log's last event is at `total - 1`, and nothing after.
    let page = client.log_page(total.saturating_sub(1), 2).await?;
    if page.next != total || (total > 0 && page.events.len() != 1) {
        return Ok(Err(format!(
            "the relay log does not end at {total} events, the sites' sum: it reads {} event(s) from offset {} \
             and goes on at {}",
            page.events.len(),
            total.saturating_sub(1),
            page.next
        )));
    }
    Ok(Ok(()))
}
