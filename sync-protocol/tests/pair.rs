//! A [`Sender`] and a [`Receiver`] wired together over a deterministic, lossy in-memory
//! network, with a simulated node store and relay store.
//!
//! The network keeps QUIC's promises and breaks only what QUIC may break: each stream
//! (control, and one per lane, in each direction) is ordered, streams overtake each other,
//! a lost packet stalls its stream until the idle timeout closes the connection, dials fail,
//! connections drop at random, and the relay's commits in flight at a close either land or
//! not. Frames are duplicated on lane streams too, which QUIC never does, to show that
//! retransmissions are harmless. After a faulty phase the network heals and everything
//! appended at the node must be at the relay exactly once and in order, and acknowledged.
//!
//! One seed drives every choice; a failure prints `seed=` and `OUTPOST_SEED=<seed>` replays
//! that seed alone.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_protocol::wire::{FRAME_BYTES_MAX, FrameDecoder, Limits};
use sync_protocol::{
    Accepted, Batch, Epoch, Event, Kind, Lane, Message, NodeIdentity, PerLane, Receiver, ReceiverConfig,
    Record, Sender, SenderConfig, SenderEvent, Transmit,
};

const TICK: Duration = Duration::from_millis(1);
/// How long the faulty phase lasts, in ticks.
const FAULTY_TICKS: u32 = 3_000;
/// How long the healed network has to drain everything, in ticks.
const HEAL_BUDGET_TICKS: u32 = 120_000;
/// How long a stalled connection lives before its idle timeout closes it.
const IDLE_TIMEOUT: Duration = Duration::from_millis(150);

/// How often each fault strikes while faults are on.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// A frame is lost, stalling its stream until the connection times out.
    loss: f64,
    /// A lane frame arrives twice.
    duplicate: f64,
    /// A dial fails.
    dial_failure: f64,
    /// The connection drops, per tick.
    disconnect: f64,
    /// Most extra latency of a frame, so that streams overtake each other.
    jitter_ms: u64,
}

const CALM: Faults = Faults { loss: 0.0, duplicate: 0.0, dial_failure: 0.0, disconnect: 0.0, jitter_ms: 0 };

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToRelay,
    ToNode,
}

/// A stream: the control stream (`None`) or a lane's.
type StreamId = (Dir, Option<Lane>);

/// One ordered byte stream of a connection.
struct Stream {
    frames: VecDeque<(Instant, Vec<u8>)>,
    decoder: FrameDecoder,
    /// A frame was lost: nothing more arrives on this stream.
    stalled: bool,
    /// When the last frame queued arrives, so that frames stay in order.
    last_arrival: Option<Instant>,
}

/// One connection between node and relay, with the relay's per-connection state.
struct Conn {
    receiver: Receiver,
    streams: BTreeMap<StreamId, Stream>,
    /// Accepted batches in the relay's single writer, in commit order, with their due time.
    commits: VecDeque<(Instant, Accepted)>,
    /// When the idle timeout closes this connection, once a stream has stalled.
    closes_at: Option<Instant>,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    t0: Instant,
    now: Instant,
    faults: Faults,
    identity: NodeIdentity,
    sender: Sender,
    /// The node's store: every appended record, per lane.
    node_store: PerLane<Vec<Record>>,
    /// What the node heard acknowledged, per lane.
    node_acked: PerLane<u64>,
    /// The relay's store for this node's epoch, per lane.
    relay_store: PerLane<Vec<Record>>,
    conn: Option<Conn>,
    /// A dial in progress: when it completes and whether it succeeds.
    dial: Option<(Instant, bool)>,
    /// Counters, to show each fault happened.
    stats: BTreeMap<&'static str, u64>,
}

/// A fixed origin for virtual time: the protocol only compares instants.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

fn record(lane: Lane, seq: u64, received_at_ms: u64) -> Record {
    let kind = match lane {
        Lane::Critical => Kind::Ship,
        Lane::Standard => Kind::Receive,
        Lane::Bulk => Kind::Scan,
    };
    let event = Event {
        event_id: format!("{lane}-{seq}").parse().unwrap(),
        kind,
        sku: format!("SKU-{}", seq % 7).parse().unwrap(),
        location: "BIN-1".parse().unwrap(),
        qty: 1,
        occurred_at: None,
        device_id: Some("hs-1".into()),
        shipment_id: None,
        order_id: None,
        attrs: BTreeMap::new(),
    };
    let deltas = sync_protocol::inventory::deltas_of(&event, |_| 0).unwrap();
    Record { received_at_ms, event, deltas }
}

/// Appends an accepted batch to the relay store, which holds each lane's seqs densely
/// from 1, and tells the receiver.
fn commit(
    store: &mut PerLane<Vec<Record>>,
    receiver: &mut Receiver,
    accepted: Accepted,
) -> Result<(), String> {
    let store = store.get_mut(accepted.lane);
    if accepted.first_seq.get() != store.len() as u64 + 1 {
        return Err(format!(
            "{} commit from {} onto {} stored",
            accepted.lane,
            accepted.first_seq,
            store.len()
        ));
    }
    let through = accepted.last_seq();
    store.extend(accepted.records);
    receiver.handle_committed(accepted.lane, through);
    Ok(())
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
        let t0 = origin();
        let identity = NodeIdentity::from_uri("outpost://eu-west/store-0042").unwrap();
        let config = SenderConfig {
            batch_events_max: 6,
            batches_in_flight_max: 3,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(1_000),
            ..SenderConfig::new(identity.clone(), Epoch(seed))
        };
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            t0,
            now: t0,
            faults,
            identity,
            sender: Sender::new(config, PerLane::default(), PerLane::default(), t0),
            node_store: PerLane::default(),
            node_acked: PerLane::default(),
            relay_store: PerLane::default(),
            conn: None,
            dial: None,
            stats: BTreeMap::new(),
        }
    }

    /// Fails the test with the seed and the virtual time.
    #[track_caller]
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let ms = (self.now - self.t0).as_millis();
        panic!("seed={} t={ms}ms: {what}; replay with OUTPOST_SEED={}", self.seed, self.seed)
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p)
    }

    // The network.

    fn send(&mut self, stream: StreamId, msg: &Message) {
        let Some(conn) = self.conn.as_ref() else { return };
        if conn.streams[&stream].stalled {
            return;
        }
        if self.chance(self.faults.loss) {
            self.count("frames lost");
            let closes_at = self.now + IDLE_TIMEOUT;
            let conn = self.conn.as_mut().unwrap();
            conn.streams.get_mut(&stream).unwrap().stalled = true;
            conn.closes_at.get_or_insert(closes_at);
            return;
        }
        let copies = if stream.1.is_some() && self.chance(self.faults.duplicate) {
            self.count("frames duplicated");
            2
        } else {
            1
        };
        let latency = Duration::from_millis(1 + self.rng.random_range(0..=self.faults.jitter_ms));
        let arrival = self.now + latency;
        let frame = msg.encode();
        let s = self.conn.as_mut().unwrap().streams.get_mut(&stream).unwrap();
        let arrival = s.last_arrival.map_or(arrival, |last| last.max(arrival));
        s.last_arrival = Some(arrival);
        for _ in 0..copies {
            s.frames.push_back((arrival, frame.clone()));
        }
    }

    /// Delivers every frame that has arrived, streams in a random order.
    fn deliver(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        let mut ids: Vec<StreamId> = conn.streams.keys().copied().collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, self.rng.random_range(0..=i));
        }
        for id in ids {
            loop {
                let now = self.now;
                let Some(conn) = self.conn.as_mut() else { return };
                let stream = conn.streams.get_mut(&id).unwrap();
                if stream.stalled || stream.frames.front().is_none_or(|(at, _)| *at > now) {
                    break;
                }
                let (_, frame) = stream.frames.pop_front().unwrap();
                stream.decoder.push(&frame);
                let msg = match stream.decoder.next_message() {
                    Ok(Some(msg)) => msg,
                    other => self.fail(format!("frame did not decode: {other:?}")),
                };
                match id.0 {
                    Dir::ToRelay => self.relay_receive(id.1, msg),
                    Dir::ToNode => self.node_receive(msg),
                }
            }
        }
    }

    fn connect(&mut self) {
        let config = ReceiverConfig {
            relay_id: "relay-1".into(),
            region: "eu-west".parse().unwrap(),
            // Narrower than the node's own limits, so the Welcome's limits matter.
            limits: Limits { batch_events_max: 4, batches_in_flight_max: 5, ..Limits::default() },
        };
        let mut streams = BTreeMap::new();
        for dir in [Dir::ToRelay, Dir::ToNode] {
            for lane in [None, Some(Lane::Critical), Some(Lane::Standard), Some(Lane::Bulk)] {
                let stream = Stream {
                    frames: VecDeque::new(),
                    decoder: FrameDecoder::new(FRAME_BYTES_MAX),
                    stalled: false,
                    last_arrival: None,
                };
                streams.insert((dir, lane), stream);
            }
        }
        let receiver = Receiver::new(config, self.identity.clone());
        self.conn = Some(Conn { receiver, streams, commits: VecDeque::new(), closes_at: None });
        self.count("connections");
        self.sender.handle_connected(self.now);
        self.drive_node();
    }

    /// Closes the connection on both sides. Commits already in the relay's writer land or
    /// not, in order: a prefix of them lands.
    fn close(&mut self, why: &'static str) {
        let Some(mut conn) = self.conn.take() else { return };
        self.count(why);
        while !conn.commits.is_empty() && self.rng.random_bool(0.5) {
            let (_, accepted) = conn.commits.pop_front().unwrap();
            if let Err(e) = commit(&mut self.relay_store, &mut conn.receiver, accepted) {
                self.fail(e);
            }
        }
        self.sender.handle_disconnected(self.now, &mut self.rng);
        self.drive_node();
    }

    // The relay.

    fn relay_receive(&mut self, stream: Option<Lane>, msg: Message) {
        let conn = self.conn.as_mut().unwrap();
        match (stream, msg) {
            (None, Message::Hello(hello)) => {
                let stored = PerLane::from_fn(|lane| self.relay_store.get(lane).len() as u64);
                if let Err(refuse) = conn.receiver.handle_hello(hello, stored) {
                    self.fail(format!("relay refused the node: {refuse}"));
                }
            }
            (Some(lane), Message::Batch(batch)) => {
                if batch.lane != lane {
                    self.fail(format!("batch of {} on the stream of {lane}", batch.lane));
                }
                match conn.receiver.handle_batch(batch) {
                    Ok(Some(accepted)) => {
                        let delay = Duration::from_millis(self.rng.random_range(0..=20));
                        let conn = self.conn.as_mut().unwrap();
                        let due = conn.commits.back().map_or(self.now, |(at, _)| *at).max(self.now) + delay;
                        conn.commits.push_back((due, accepted));
                    }
                    Ok(None) => self.count("batches with nothing new"),
                    Err(violation) => self.fail(format!("relay saw a violation: {violation}")),
                }
            }
            (stream, msg) => self.fail(format!("relay got {msg:?} on stream {stream:?}")),
        }
        self.drain_relay();
    }

    fn run_commits(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else { return };
            if conn.commits.front().is_none_or(|(at, _)| *at > self.now) {
                return;
            }
            let (_, accepted) = conn.commits.pop_front().unwrap();
            if let Err(e) = commit(&mut self.relay_store, &mut conn.receiver, accepted) {
                self.fail(e);
            }
            self.drain_relay();
        }
    }

    fn drain_relay(&mut self) {
        while let Some(msg) = self.conn.as_mut().and_then(|c| c.receiver.poll_transmit()) {
            let stream = match &msg {
                Message::Welcome(_) | Message::Refuse(_) => None,
                Message::Ack(ack) => Some(ack.lane),
                Message::Resync(resync) => Some(resync.lane),
                other => self.fail(format!("relay produced {other:?}")),
            };
            self.send((Dir::ToNode, stream), &msg);
        }
    }

    // The node.

    fn node_receive(&mut self, msg: Message) {
        if let Err(violation) = self.sender.handle_message(msg, self.now) {
            self.fail(format!("node saw a violation: {violation}"));
        }
        self.drive_node();
    }

    /// Drains the sender's outputs, as the drive contract asks.
    fn drive_node(&mut self) {
        loop {
            let mut idle = true;
            while let Some(transmit) = self.sender.poll_transmit() {
                idle = false;
                match transmit {
                    Transmit::Control(msg) => self.send((Dir::ToRelay, None), &msg),
                    Transmit::Batch { lane, first_seq, count } => {
                        let store = self.node_store.get(lane);
                        let from = first_seq.get() as usize - 1;
                        let Some(events) = store.get(from..from + count as usize) else {
                            self.fail(format!("{lane} batch {first_seq}+{count} past head {}", store.len()))
                        };
                        let batch = Batch { lane, first_seq, events: events.to_vec() };
                        self.send((Dir::ToRelay, Some(lane)), &Message::Batch(batch));
                    }
                }
            }
            while let Some(event) = self.sender.poll_event() {
                idle = false;
                self.node_event(event);
            }
            if idle {
                return;
            }
        }
    }

    fn node_event(&mut self, event: SenderEvent) {
        match event {
            SenderEvent::Connect => {
                let latency = Duration::from_millis(self.rng.random_range(1..=30));
                let ok = !self.chance(self.faults.dial_failure);
                self.dial = Some((self.now + latency, ok));
            }
            SenderEvent::Welcomed { .. } => self.count("welcomes"),
            SenderEvent::RelayRegressed { lane, acked, watermark } => {
                self.fail(format!(
                    "{lane}: the relay acknowledged {acked} but later welcomed at {watermark}"
                ));
            }
            SenderEvent::Inventory(update) => {
                self.fail(format!("the relay sent no inventory, yet the node got {update:?}"));
            }
            SenderEvent::Repaired(repaired) => {
                self.fail(format!("no repair was sent, yet the node got {repaired:?}"));
            }
            SenderEvent::Acked { lane, through } => {
                let stored = self.relay_store.get(lane).len() as u64;
                if through > stored {
                    self.fail(format!("{lane} acked through {through} but the relay holds {stored}"));
                }
                let before = *self.node_acked.get(lane);
                if through < before {
                    self.fail(format!("{lane} ack went back from {before} to {through}"));
                }
                *self.node_acked.get_mut(lane) = through;
            }
            SenderEvent::Refused(refuse) => self.fail(format!("node refused: {refuse}")),
        }
    }

    fn append(&mut self) {
        let lane = Lane::ALL[self.rng.random_range(0..3)];
        let n = self.rng.random_range(1..=5);
        let received_at_ms = (self.now - self.t0).as_millis() as u64;
        let store = self.node_store.get_mut(lane);
        for _ in 0..n {
            let seq = store.len() as u64 + 1;
            store.push(record(lane, seq, received_at_ms));
        }
        let head = store.len() as u64;
        self.sender.handle_appended(lane, head);
        self.drive_node();
    }

    /// One millisecond of virtual time.
    fn tick(&mut self, appends: bool) {
        self.now += TICK;
        if appends && self.chance(0.2) {
            self.append();
        }
        if let Some((at, ok)) = self.dial
            && at <= self.now
        {
            self.dial = None;
            if ok {
                self.connect();
            } else {
                self.count("dials failed");
                self.sender.handle_disconnected(self.now, &mut self.rng);
                self.drive_node();
            }
        }
        self.deliver();
        self.run_commits();
        if self.conn.as_ref().and_then(|c| c.closes_at).is_some_and(|at| at <= self.now) {
            self.close("idle timeouts");
        }
        if self.conn.is_some() && self.chance(self.faults.disconnect) {
            self.close("random disconnects");
        }
        if self.sender.poll_timeout().is_some_and(|at| at <= self.now) {
            self.sender.handle_timeout(self.now);
            self.drive_node();
        }
    }

    fn converged(&self) -> bool {
        Lane::ALL.into_iter().all(|lane| {
            let head = self.node_store.get(lane).len() as u64;
            self.sender.acked(lane) == head && self.relay_store.get(lane).len() as u64 == head
        })
    }

    /// Faults, then a healed network until everything is acknowledged.
    fn run(mut self) -> BTreeMap<&'static str, u64> {
        for _ in 0..FAULTY_TICKS {
            self.tick(true);
        }
        self.faults = CALM;
        let mut ticks = 0;
        while !self.converged() {
            ticks += 1;
            if ticks > HEAL_BUDGET_TICKS {
                let heads = PerLane::from_fn(|lane| self.node_store.get(lane).len());
                let relay = PerLane::from_fn(|lane| self.relay_store.get(lane).len());
                let acked = PerLane::from_fn(|lane| self.sender.acked(lane));
                self.fail(format!("no convergence: heads {heads:?}, relay {relay:?}, acked {acked:?}"));
            }
            self.tick(false);
        }
        for lane in Lane::ALL {
            // Exactly once and in order: the relay holds the node's sequence itself.
            if self.relay_store.get(lane) != self.node_store.get(lane) {
                self.fail(format!("{lane}: relay store differs from the node store"));
            }
            let head = self.node_store.get(lane).len() as u64;
            if *self.node_acked.get(lane) != head || self.sender.backlog(lane) != 0 {
                self.fail(format!("{lane}: acked {} of {head}", self.node_acked.get(lane)));
            }
        }
        self.stats
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("OUTPOST_SEED") {
        Ok(seed) => vec![seed.parse().expect("OUTPOST_SEED is a u64")],
        Err(_) => (1..=12).collect(),
    }
}

#[test]
fn everything_arrives_once_and_in_order_after_healing() {
    let faults = Faults { loss: 0.01, duplicate: 0.05, dial_failure: 0.3, disconnect: 0.002, jitter_ms: 25 };
    let seeds = seeds();
    let mut totals = BTreeMap::<&str, u64>::new();
    for &seed in &seeds {
        for (what, n) in Sim::new(seed, faults).run() {
            *totals.entry(what).or_default() += n;
        }
    }
    eprintln!("{totals:?}");
    if seeds.len() == 1 {
        return;
    }
    // The faults really happened, or the test proves nothing.
    for what in [
        "frames lost",
        "frames duplicated",
        "dials failed",
        "random disconnects",
        "idle timeouts",
        "batches with nothing new",
    ] {
        assert!(totals.get(what).copied().unwrap_or(0) > 0, "no {what}: {totals:?}");
    }
}

#[test]
fn a_calm_network_needs_one_connection() {
    let stats = Sim::new(99, CALM).run();
    assert_eq!(stats.get("connections"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("welcomes"), Some(&1), "{stats:?}");
}
