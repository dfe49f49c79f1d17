//! One seeded run: the nodes, the relay, the network and the scanners, driven by one
//! event queue in virtual time.
//!
//! The run has two phases. In the **safety** phase the scanners post, the fault plan
//! plays (partitions, loss, crashes, wipes) and every `always` invariant is checked at
//! the step that could break it. Then the network **heals**: every fault rule is removed,
//! crashed processes come back, scanners stop posting new events but still retry what
//! went unanswered, and everything must converge within the liveness budget. The
//! `eventually` and `finally` checks run on the converged state.
//!
//! Inventory rides along: each node store fixes its events' deltas against its replica
//! when it appends them, the relay applies the deltas of the records it stores in the
//! same commit, and after every commit (and after each Hello) the relay pushes each
//! welcomed connection the keys that changed after the version that connection's node
//! has, in chunks on the control stream. The node merges every chunk durably and tells
//! its sender the version when the last chunk is merged. Convergence includes the
//! inventory: every replica equals the relay's.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_protocol::wire::{Ack, Limits};
use sync_protocol::{
    Batch, Epoch, InventoryUpdate, Lane, Message, NodeIdentity, PerLane, Receiver, ReceiverConfig, Sender,
    SenderConfig, SenderEvent, Transmit,
};

use super::SimConfig;
use super::check::{self, Checker, EndState, Finding, Invariant, Violation};
use super::clock::{Clock, Queue};
use super::inventory::{self, UPDATE_ENTRIES_MAX};
use super::net::{self, Conn, Judgement, Network, PacketInfo, Window};
use super::node::{Appended, Node, NodeCrashPoint, NodeStore};
use super::relay::{Append, AppendOutcome, Relay, RelayConn, RelayCrashPoint};
use super::schedule::{self, Crash};
use super::trace::{Answer, Dir, Fate, Line, Trace, Wire};
use super::workload::{Ledger, Placed, Post, Scanner, Stored};

/// Keep-alive interval of both ends.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// QUIC idle timeout: a side that hears nothing this long closes the connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial may take before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a relay connection waits after a commit before it pushes inventory, so that
/// the commits landing meanwhile go out as one update. The real relay's connection task
/// coalesces the same way when commits come faster than it sends (a `watch` channel);
/// pushing after every commit of the simulation would triple the cost of a seed.
const INVENTORY_PUSH_DELAY: Duration = Duration::from_secs(1);
/// How often the liveness phase looks for convergence.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Counters of what happened in a run, by name.
pub type Stats = BTreeMap<&'static str, u64>;

/// The outcome of one seed.
#[derive(Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// What happened, counted.
    pub stats: Stats,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// Virtual time from healing to convergence.
    pub converged_after: Option<Duration>,
    /// Every trace line, if the run captured them.
    pub captured: Option<Vec<String>>,
}

#[derive(Debug)]
enum Payload {
    Frame { stream: u8, number: u64, msg: Message },
    Initial,
    Handshake,
    Ping,
    Close,
    Reset,
}

impl Payload {
    fn wire(&self) -> Wire {
        match self {
            Payload::Frame { msg, .. } => Wire::of(msg),
            Payload::Initial => Wire::Initial,
            Payload::Handshake => Wire::Handshake,
            Payload::Ping => Wire::Ping,
            Payload::Close => Wire::Close,
            Payload::Reset => Wire::Reset,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Post { scanner: usize },
    Arrive { conn: u64, dir: Dir, payload: Payload },
    Retransmit { conn: u64, dir: Dir, stream: u8, number: u64, msg: Message, attempt: u32 },
    RetransmitHandshake { conn: u64, dir: Dir, attempt: u32 },
    Ping { conn: u64, dir: Dir },
    IdleCheck { conn: u64, hears: Dir },
    DialTimeout { conn: u64 },
    NodeTimer { node: usize, inc: u32 },
    CommitDone { inc: u32 },
    PushInventory { conn: u64, inc: u32 },
    Crash { crash: Crash, down: Duration },
    RestartNode { node: usize, inc: u32 },
    RestartRelay { inc: u32 },
    Wipe { node: usize },
    Heal,
    Probe,
}

/// The simulation of one seed.
pub struct World {
    seed: u64,
    config: SimConfig,
    base: Instant,
    clock: Clock,
    queue: Queue<Ev>,
    rng_net: StdRng,
    rng_work: StdRng,
    rng_proto: StdRng,
    rng_fault: StdRng,
    net: Network,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    nodes: Vec<Node>,
    relay: Relay,
    relay_config: ReceiverConfig,
    scanners: Vec<Scanner>,
    ledger: Ledger,
    checker: Checker,
    trace: Trace,
    stats: Stats,
    slow_disk: Option<Window>,
    healed_at: Option<Duration>,
    converged_after: Option<Duration>,
    finding: Option<Finding>,
}

/// Seeds a sub-stream of randomness, so that one part's draws never shift another's.
fn sub_rng(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl World {
    /// A world for `seed`, recording into `trace`.
    pub fn new(seed: u64, config: &SimConfig, trace: Trace) -> Result<World, Violation> {
        // The one wall-clock read: a base for the protocol's `Instant`s. Only differences
        // of instants matter, so the run does not depend on it.
        #[allow(clippy::disallowed_methods)]
        let base = Instant::now();
        let mut rng_fault = sub_rng(seed, 1);
        let plan = schedule::draw(&mut rng_fault, config.safety);
        let relay_config = ReceiverConfig {
            relay_id: "relay-1".into(),
            region: region(),
            limits: Limits {
                batch_events_max: plan.relay_limits.0,
                batches_in_flight_max: plan.relay_limits.1,
                ..Limits::default()
            },
        };
        let mut world = World {
            seed,
            config: config.clone(),
            base,
            clock: Clock::new(base),
            queue: Queue::default(),
            rng_net: sub_rng(seed, 2),
            rng_work: sub_rng(seed, 3),
            rng_proto: sub_rng(seed, 4),
            rng_fault,
            net: Network { rules: Vec::new(), base_latency: plan.base_latency.clone() },
            conns: BTreeMap::new(),
            next_conn: 1,
            nodes: Vec::new(),
            relay: Relay::new(config.bug),
            relay_config,
            scanners: Vec::new(),
            ledger: Ledger::default(),
            checker: Checker::default(),
            trace,
            stats: Stats::new(),
            slow_disk: plan.slow_disk,
            healed_at: None,
            converged_after: None,
            finding: None,
        };
        world.text(format!(
            "plan  seed {seed}: {} nodes, {} scanners each, relay limits {:?}{}",
            plan.nodes,
            plan.scanners_per_node,
            plan.relay_limits,
            config.bug.map(|b| format!(", injected bug {b}")).unwrap_or_default()
        ));
        for i in 0..plan.nodes {
            let identity = match NodeIdentity::from_uri(&format!("outpost://eu-west/node-{i}")) {
                Ok(identity) => identity,
                Err(e) => return Err(world.violation(Invariant::Harness, format!("node identity: {e}"))),
            };
            let epoch = Epoch(world.rng_fault.random());
            world.text(format!(
                "plan  node-{i}: epoch {epoch}, latency {} ms, batch {} x {} in flight",
                plan.base_latency[i].as_millis(),
                plan.batch_events_max[i],
                plan.batches_in_flight_max[i]
            ));
            world.nodes.push(Node {
                index: i,
                identity: identity.clone(),
                up: false,
                inc: 0,
                store: NodeStore::new(identity.node_id.clone(), epoch),
                sender: None,
                conn: None,
                timer_at: None,
                recorded: PerLane::default(),
                archive: BTreeMap::new(),
                crash_point: None,
                batch_events_max: plan.batch_events_max[i],
                batches_in_flight_max: plan.batches_in_flight_max[i],
                own_fold: BTreeMap::new(),
            });
            for s in 0..plan.scanners_per_node {
                let scanner = world.scanners.len();
                world.scanners.push(Scanner::new(i, s));
                let at = Duration::from_millis(world.rng_work.random_range(0..1_000));
                world.queue.push(at, Ev::Post { scanner });
            }
        }
        for rule in plan.rules {
            world.text(format!("plan  fault: {rule}"));
            world.net.rules.push(rule);
        }
        for (at, crash, down) in plan.crashes {
            world.text(format!("plan  at {} ms: {crash}, down {} ms", at.as_millis(), down.as_millis()));
            world.queue.push(at, Ev::Crash { crash, down });
        }
        for (at, node) in plan.wipes {
            world.text(format!("plan  at {} ms: node-{node} store wiped", at.as_millis()));
            world.queue.push(at, Ev::Wipe { node });
        }
        if let Some(slow) = plan.slow_disk {
            world.text(format!("plan  relay disk slow during {slow}"));
        }
        world.queue.push(config.safety, Ev::Heal);
        for i in 0..world.nodes.len() {
            world.start_node(i);
        }
        Ok(world)
    }

    /// Runs both phases and the checks.
    pub fn run(mut self) -> SeedReport {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        let violation = match outcome {
            Ok(()) => self.finding.take().map(|(inv, detail)| self.violation(inv, detail)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic without a message".into());
                Some(self.violation(Invariant::NoPanic, format!("panic: {message}")))
            }
        };
        SeedReport {
            seed: self.seed,
            stats: std::mem::take(&mut self.stats),
            violation,
            converged_after: self.converged_after,
            captured: self.trace.captured().map(<[String]>::to_vec),
        }
    }

    fn run_loop(&mut self) {
        while self.finding.is_none() && self.converged_after.is_none() {
            let Some((at, ev)) = self.queue.pop() else {
                self.find(Invariant::Harness, "the event queue ran dry".into());
                return;
            };
            self.clock.advance_to(at);
            self.handle(ev);
        }
    }

    fn violation(&self, invariant: Invariant, detail: String) -> Violation {
        Violation {
            invariant,
            seed: self.seed,
            at_ms: self.clock.now().as_millis() as u64,
            detail,
            trace: self.trace.tail(),
            bug: self.config.bug,
        }
    }

    fn find(&mut self, invariant: Invariant, detail: String) {
        if self.finding.is_none() {
            self.text(format!("CHECK {invariant}: {detail}"));
            self.finding = Some((invariant, detail));
        }
    }

    fn found(&mut self, result: Result<(), Finding>) {
        if let Err((invariant, detail)) = result {
            self.find(invariant, detail);
        }
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn text(&mut self, text: String) {
        self.trace.push(self.clock.now(), Line::Text(text));
    }

    fn line(&mut self, line: Line) {
        self.trace.push(self.clock.now(), line);
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.queue.push(self.clock.now() + after, ev);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Post { scanner } => self.post(scanner),
            Ev::Arrive { conn, dir, payload } => self.arrive(conn, dir, payload),
            Ev::Retransmit { conn, dir, stream, number, msg, attempt } => {
                if self.conns.get(&conn).is_some_and(|c| self.end_open(c, dir)) {
                    self.count("retransmissions");
                    self.transmit_frame(conn, dir, stream, number, msg, attempt);
                }
            }
            Ev::RetransmitHandshake { conn, dir, attempt } => self.retransmit_handshake(conn, dir, attempt),
            Ev::Ping { conn, dir } => self.ping(conn, dir),
            Ev::IdleCheck { conn, hears } => self.idle_check(conn, hears),
            Ev::DialTimeout { conn } => {
                if self.conns.get(&conn).is_some_and(|c| c.node_open && !c.node_connected) {
                    self.count("dials timed out");
                    self.close_node_end(conn, "dial timed out", false);
                }
            }
            Ev::NodeTimer { node, inc } => self.node_timer(node, inc),
            Ev::CommitDone { inc } => self.commit_done(inc),
            Ev::PushInventory { conn, inc } => {
                if self.relay.inc == inc && self.relay.up {
                    if let Some(rc) = self.relay.conns.get_mut(&conn) {
                        rc.push_pending = false;
                    }
                    self.push_inventory(conn);
                }
            }
            Ev::Crash { crash, down } => self.crash(crash, down),
            Ev::RestartNode { node, inc } => {
                if self.nodes[node].inc == inc && !self.nodes[node].up {
                    self.start_node(node);
                }
            }
            Ev::RestartRelay { inc } => {
                if self.relay.inc == inc && !self.relay.up {
                    self.relay.up = true;
                    self.text("relay restarted".into());
                }
            }
            Ev::Wipe { node } => self.wipe(node),
            Ev::Heal => self.heal(),
            Ev::Probe => self.probe(),
        }
    }

    // The scanners.

    fn post(&mut self, index: usize) {
        if self.healed_at.is_some() && self.scanners[index].pending.is_none() {
            return;
        }
        let post = match self.scanners[index].next_post(&mut self.rng_work) {
            Ok(post) => post,
            Err(e) => return self.find(Invariant::Harness, format!("workload event: {e}")),
        };
        let n = self.scanners[index].node;
        let lane = post.event.default_lane();
        let answer = if self.nodes[n].up {
            let received_at_ms = self.now().as_millis() as u64;
            match self.nodes[n].store.append(&post.event, received_at_ms) {
                Appended::Created { lane, seq } => {
                    self.fold_own_record(n, lane, seq);
                    if let Some(sender) = self.nodes[n].sender.as_mut() {
                        sender.handle_appended(lane, seq);
                    }
                    if self.nodes[n].crash_point == Some(NodeCrashPoint::BeforeNextAnswer) {
                        self.text(format!(
                            "node-{n} crashes after the commit of seq {seq}, before the answer"
                        ));
                        {
                            let down = self.restart_delay();
                            self.crash_node(n, down)
                        };
                        Answer::Unanswered
                    } else {
                        self.check_answer(n, &post, Answer::Created(seq), lane);
                        Answer::Created(seq)
                    }
                }
                Appended::Duplicate { lane, seq } => {
                    self.check_answer(n, &post, Answer::Duplicate(seq), lane);
                    Answer::Duplicate(seq)
                }
                Appended::Conflict => {
                    self.check_answer(n, &post, Answer::Conflict, lane);
                    Answer::Conflict
                }
                Appended::Invalid => {
                    let id = &post.event.event_id;
                    return self.find(Invariant::Harness, format!("node-{n} refused {id}: invalid deltas"));
                }
            }
        } else {
            Answer::Unavailable
        };
        self.line(Line::Post { node: n, event: post.number, lane, answer });
        if let Answer::Created(_) = answer {
            // The sender learns of the new head after the answer is traced, so that the
            // trace reads post first, batch second.
            self.drive_node(n);
        }
        let scanner = &mut self.scanners[index];
        match answer {
            Answer::Unavailable | Answer::Unanswered => {
                scanner.pending = Some(post);
                let delay = Scanner::retry_delay(&mut self.rng_work);
                self.schedule(delay, Ev::Post { scanner: index });
            }
            Answer::Created(_) | Answer::Duplicate(_) | Answer::Conflict => {
                scanner.pending = None;
                self.count("posts answered");
                if self.healed_at.is_none() {
                    let delay = Scanner::think_time(&mut self.rng_work);
                    self.schedule(delay, Ev::Post { scanner: index });
                }
            }
        }
    }

    /// Always, A6: a repeat gets the original seq, another payload a conflict, and a new
    /// event a new seq.
    fn check_answer(&mut self, n: usize, post: &Post, answer: Answer, lane: Lane) {
        let epoch = self.nodes[n].store.epoch;
        let id = &post.event.event_id;
        let prior = self.ledger.stored(n, epoch, id);
        let problem = match (answer, prior) {
            (Answer::Created(seq), Some(p)) => {
                Some(format!("{id} was stored at seq {} and was created again at seq {seq}", p.placed.seq))
            }
            (Answer::Duplicate(seq), Some(p)) if p.placed.seq != seq || p.placed.lane != lane => {
                Some(format!("{id} was answered with seq {} and then with seq {seq}", p.placed.seq))
            }
            (Answer::Duplicate(_), Some(p)) if p.conflict != post.conflict => {
                Some(format!("{id}: another payload was answered as a duplicate"))
            }
            (Answer::Conflict, Some(p)) if p.conflict == post.conflict => {
                Some(format!("{id}: the same payload was refused as a conflict"))
            }
            (Answer::Conflict, None) => Some(format!("{id}: a conflict with nothing stored under the id")),
            _ => None,
        };
        if let Some(problem) = problem {
            return self.find(Invariant::IdempotentAnswers, format!("node-{n}: {problem}"));
        }
        if let Answer::Created(seq) | Answer::Duplicate(seq) = answer {
            let placed = Placed { node: n, epoch, lane, seq };
            self.ledger.record(Stored { placed, conflict: post.conflict }, id);
        }
    }

    /// The checker's own fold of what the store answered: the event's deltas, read back.
    fn fold_own_record(&mut self, n: usize, lane: Lane, seq: u64) {
        let node = &mut self.nodes[n];
        let Some(record) = node.store.records(lane).get((seq as usize).wrapping_sub(1)) else { return };
        for delta in &record.deltas {
            let sum = node.own_fold.entry(delta.key.clone()).or_default();
            *sum = sum.saturating_add(delta.change);
        }
    }

    /// Always: the node's own counters equal the fold of its own durable events, on
    /// `keys` (or every key). A merge can raise them only if the relay counted one of
    /// the node's events more often than the node did.
    fn check_own_stock(&mut self, n: usize, keys: Option<Vec<sync_protocol::inventory::StockKey>>) {
        let node = &self.nodes[n];
        let store = &node.store;
        let keys = keys.unwrap_or_else(|| {
            let mut keys: Vec<_> = store.replica().iter().map(|(k, _)| k.clone()).collect();
            keys.extend(node.own_fold.keys().cloned());
            keys
        });
        for key in keys {
            let own = store.replica().stock(&key).map_or(Some(0), |s| s.contribution(store.actor()));
            let fold = node.own_fold.get(&key).copied().unwrap_or(0);
            if own != Some(fold) {
                let own = own.map_or_else(|| "unreadable".to_owned(), |v| v.to_string());
                let detail = format!(
                    "node-{n}/{}: own counter of {key} is {own} but its durable events fold to {fold}",
                    store.epoch
                );
                return self.find(Invariant::OwnStockIsFold, detail);
            }
        }
    }

    fn node_merge(&mut self, n: usize, update: InventoryUpdate) {
        self.count("inventory updates merged");
        let complete = update.complete.then_some(update.through_version);
        let keys = update.state.iter().map(|(k, _)| k.clone()).collect();
        self.nodes[n].store.merge_inventory(update);
        if let Some(version) = complete
            && let Some(sender) = self.nodes[n].sender.as_mut()
        {
            sender.handle_inventory_merged(version);
        }
        self.check_own_stock(n, Some(keys));
    }

    // The nodes.

    fn start_node(&mut self, n: usize) {
        let now = self.clock.instant();
        let node = &mut self.nodes[n];
        node.up = true;
        node.recorded = node.store.acked();
        let config = SenderConfig {
            batch_events_max: node.batch_events_max,
            batches_in_flight_max: node.batches_in_flight_max,
            ..SenderConfig::new(node.identity.clone(), node.store.epoch)
        };
        let heads = node.store.heads();
        let mut sender = Sender::new(config, heads, node.store.acked(), now);
        sender.handle_inventory_merged(node.store.inventory_version());
        node.sender = Some(sender);
        let acked = node.store.acked();
        self.text(format!(
            "node-{n} starts: epoch {}, heads {:?}, acked {:?}",
            self.nodes[n].store.epoch, heads.0, acked.0
        ));
        self.drive_node(n);
    }

    fn node_timer(&mut self, n: usize, inc: u32) {
        let node = &mut self.nodes[n];
        if node.inc != inc || !node.up {
            return;
        }
        node.timer_at = None;
        let now = self.clock.instant();
        if let Some(sender) = node.sender.as_mut() {
            sender.handle_timeout(now);
        }
        self.drive_node(n);
    }

    /// Drains the sender's outputs, as its drive contract asks, then sets its timer.
    fn drive_node(&mut self, n: usize) {
        loop {
            let Some(sender) = self.nodes[n].sender.as_mut() else { return };
            let transmits: Vec<Transmit> = std::iter::from_fn(|| sender.poll_transmit()).collect();
            let events: Vec<SenderEvent> = std::iter::from_fn(|| sender.poll_event()).collect();
            if transmits.is_empty() && events.is_empty() {
                break;
            }
            for transmit in transmits {
                self.node_transmit(n, transmit);
            }
            for event in events {
                self.node_event(n, event);
            }
            if self.finding.is_some() {
                return;
            }
        }
        let node = &mut self.nodes[n];
        let Some(at) = node.sender.as_ref().and_then(Sender::poll_timeout) else { return };
        let at = at.saturating_duration_since(self.base);
        if node.timer_at != Some(at) {
            node.timer_at = Some(at);
            let inc = node.inc;
            self.queue.push(at.max(self.clock.now()), Ev::NodeTimer { node: n, inc });
        }
    }

    fn node_transmit(&mut self, n: usize, transmit: Transmit) {
        let Some(conn) = self.nodes[n].conn.filter(|c| self.conns.get(c).is_some_and(|c| c.node_connected))
        else {
            return self.find(
                Invariant::NoProtocolViolation,
                format!("node-{n} sender transmits while not connected"),
            );
        };
        let msg = match transmit {
            Transmit::Control(msg) => msg,
            Transmit::Batch { lane, first_seq, count } => {
                let store = &self.nodes[n].store;
                let Some(events) = store.read(lane, first_seq.get(), count) else {
                    let head = store.heads().get(lane).to_owned();
                    return self.find(
                        Invariant::NoProtocolViolation,
                        format!("node-{n} sender asked for {lane} {first_seq}+{count} past the head {head}"),
                    );
                };
                Message::Batch(Batch { lane, first_seq, events: events.to_vec() })
            }
        };
        self.send_frame(conn, Dir::ToRelay, msg);
    }

    fn node_event(&mut self, n: usize, event: SenderEvent) {
        match event {
            SenderEvent::Connect => self.dial(n),
            SenderEvent::Welcomed { .. } => self.count("welcomes"),
            SenderEvent::Inventory(update) => self.node_merge(n, update),
            SenderEvent::Acked { lane, through } => self.node_acked(n, lane, through),
            SenderEvent::Refused(refuse) => {
                self.find(Invariant::NoProtocolViolation, format!("node-{n} was refused: {refuse}"))
            }
            // The simulation does not reconcile, so no repair is ever answered.
            SenderEvent::Repaired(r) => self
                .find(Invariant::NoProtocolViolation, format!("node-{n} got an unasked repair answer {r:?}")),
            // The simulated relay never loses its store (a crash keeps what was synced),
            // so its watermark can never fall behind an ack.
            SenderEvent::RelayRegressed { lane, acked, watermark } => self.find(
                Invariant::MonotoneWatermarks,
                format!("node-{n} {lane}: the relay acknowledged {acked} but its Welcome says {watermark}"),
            ),
        }
    }

    /// Always, A5 and A4: the relay holds what it acknowledged, and the node's recorded
    /// ack moves only forward.
    fn node_acked(&mut self, n: usize, lane: Lane, through: u64) {
        let node = &self.nodes[n];
        let epoch = node.store.epoch;
        let durable = self.relay.store.watermark(n, epoch, lane);
        if through > durable {
            return self.find(
                Invariant::AckAfterDurability,
                format!("node-{n}/{epoch}/{lane} acked through {through} but the relay's durable watermark is {durable}"),
            );
        }
        let before = *node.recorded.get(lane);
        if through < before {
            return self.find(
                Invariant::MonotoneWatermarks,
                format!("node-{n}/{epoch}/{lane} recorded ack went back from {before} to {through}"),
            );
        }
        let node = &mut self.nodes[n];
        *node.recorded.get_mut(lane) = through;
        node.store.record_acked(lane, through);
        self.line(Line::Acked { node: n, lane, through });
    }

    fn node_receive(&mut self, n: usize, msg: Message) {
        if matches!(msg, Message::Ack(_)) && self.nodes[n].crash_point == Some(NodeCrashPoint::OnNextAck) {
            self.text(format!("node-{n} crashes with an ack in hand, before recording it"));
            return {
                let down = self.restart_delay();
                self.crash_node(n, down)
            };
        }
        let now = self.clock.instant();
        let Some(sender) = self.nodes[n].sender.as_mut() else { return };
        if let Err(violation) = sender.handle_message(msg, now) {
            return self.find(Invariant::NoProtocolViolation, format!("node-{n} saw: {violation}"));
        }
        self.drive_node(n);
    }

    fn crash_node(&mut self, n: usize, down: Duration) {
        self.count("node crashes");
        let node = &mut self.nodes[n];
        node.up = false;
        node.inc += 1;
        node.sender = None;
        node.timer_at = None;
        node.crash_point = None;
        if let Some(conn) = node.conn.take()
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.node_open = false;
        }
        let lost = self.nodes[n].store.crash_and_recover();
        self.nodes[n].own_fold = self.nodes[n].store.own_fold();
        let inc = self.nodes[n].inc;
        self.text(format!("node-{n} CRASH: {lost} unsynced writes lost, down {} ms", down.as_millis()));
        self.check_node_store(n);
        self.check_own_stock(n, None);
        self.schedule(down, Ev::RestartNode { node: n, inc });
    }

    /// Always, A1: every answered event of the store's epoch survived.
    fn check_node_store(&mut self, n: usize) {
        let store = &self.nodes[n].store;
        let missing = self.ledger.by_id.iter().find(|((node, epoch, id), stored)| {
            *node == n
                && *epoch == store.epoch
                && store.seq_of(id) != Some((stored.placed.lane, stored.placed.seq))
        });
        if let Some(((_, epoch, id), stored)) = missing {
            let detail = format!(
                "node-{n}/{epoch}: answered event {id} (seq {}) is not in the store after a crash",
                stored.placed.seq
            );
            self.find(Invariant::NoAcknowledgedLoss, detail);
        }
    }

    fn wipe(&mut self, n: usize) {
        if self.healed_at.is_some() {
            return;
        }
        self.count("store wipes");
        let down = self.restart_delay();
        if self.nodes[n].up {
            self.crash_node(n, down);
        }
        let epoch = Epoch(self.rng_fault.random());
        let node = &mut self.nodes[n];
        let old = std::mem::replace(&mut node.store, NodeStore::new(node.identity.node_id.clone(), epoch));
        node.own_fold.clear();
        let records = PerLane::from_fn(|lane| old.records(lane).to_vec());
        node.archive.insert(old.epoch, records);
        self.text(format!("node-{n} store WIPED: epoch {} replaced by {epoch}", old.epoch));
    }

    fn restart_delay(&mut self) -> Duration {
        schedule::down_time(&mut self.rng_fault)
    }

    // The network.

    fn end_open(&self, conn: &Conn, dir: Dir) -> bool {
        match dir {
            Dir::ToRelay => conn.node_open,
            Dir::ToNode => conn.relay_open && conn.relay_inc == Some(self.relay.inc) && self.relay.up,
        }
    }

    fn packet(&self, conn: u64, dir: Dir, wire: Wire) -> Option<PacketInfo> {
        let node = self.conns.get(&conn)?.node;
        Some(PacketInfo { node, dir, bytes: net::wire_bytes(wire) })
    }

    fn judge(&mut self, packet: &PacketInfo) -> Judgement {
        let now = self.clock.now();
        let judged = self.net.judge(packet, now, &mut self.rng_net);
        match judged {
            Judgement::Lost => self.count("packets lost"),
            Judgement::Arrives { duplicate: Some(_), .. } => self.count("packets duplicated"),
            Judgement::Arrives { duplicate: None, .. } => {}
        }
        judged
    }

    fn send_frame(&mut self, conn: u64, dir: Dir, msg: Message) {
        let stream = net::stream_of(&msg);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let next = &mut c.tx_next[dir.index()][stream as usize];
        let number = *next;
        *next += 1;
        self.transmit_frame(conn, dir, stream, number, msg, 0);
    }

    fn transmit_frame(&mut self, conn: u64, dir: Dir, stream: u8, number: u64, msg: Message, attempt: u32) {
        let wire = Wire::of(&msg);
        let Some(packet) = self.packet(conn, dir, wire) else { return };
        let judged = self.judge(&packet);
        let fate = match judged {
            Judgement::Lost => {
                let retry = net::probe_timeout(attempt);
                self.schedule(retry, Ev::Retransmit { conn, dir, stream, number, msg, attempt: attempt + 1 });
                Fate::Lost { retry_ms: Some(retry.as_millis() as u64) }
            }
            Judgement::Arrives { delay, duplicate } => {
                if let Some(again) = duplicate {
                    let copy = Payload::Frame { stream, number, msg: msg.clone() };
                    self.schedule(again, Ev::Arrive { conn, dir, payload: copy });
                }
                self.schedule(
                    delay,
                    Ev::Arrive { conn, dir, payload: Payload::Frame { stream, number, msg } },
                );
                Fate::Arrives { in_ms: delay.as_millis() as u64, duplicated: duplicate.is_some() }
            }
        };
        self.line(Line::Send { conn, node: packet.node, dir, wire, fate });
    }

    /// A packet that is not retransmitted: keep-alive, close, reset.
    fn send_once(&mut self, conn: u64, dir: Dir, payload: Payload) {
        let wire = payload.wire();
        let Some(packet) = self.packet(conn, dir, wire) else { return };
        let judged = self.judge(&packet);
        let fate = match judged {
            Judgement::Lost => Fate::Lost { retry_ms: None },
            Judgement::Arrives { delay, duplicate } => {
                self.schedule(delay, Ev::Arrive { conn, dir, payload });
                Fate::Arrives { in_ms: delay.as_millis() as u64, duplicated: duplicate.is_some() }
            }
        };
        if wire != Wire::Ping {
            self.line(Line::Send { conn, node: packet.node, dir, wire, fate });
        }
    }

    fn send_handshake(&mut self, conn: u64, dir: Dir, attempt: u32) {
        let (wire, payload) = match dir {
            Dir::ToRelay => (Wire::Initial, Payload::Initial),
            Dir::ToNode => (Wire::Handshake, Payload::Handshake),
        };
        let Some(packet) = self.packet(conn, dir, wire) else { return };
        let judged = self.judge(&packet);
        let fate = match judged {
            Judgement::Lost => {
                let retry = net::probe_timeout(attempt);
                self.schedule(retry, Ev::RetransmitHandshake { conn, dir, attempt: attempt + 1 });
                Fate::Lost { retry_ms: Some(retry.as_millis() as u64) }
            }
            Judgement::Arrives { delay, duplicate } => {
                self.schedule(delay, Ev::Arrive { conn, dir, payload });
                Fate::Arrives { in_ms: delay.as_millis() as u64, duplicated: duplicate.is_some() }
            }
        };
        self.line(Line::Send { conn, node: packet.node, dir, wire, fate });
    }

    fn retransmit_handshake(&mut self, conn: u64, dir: Dir, attempt: u32) {
        let Some(c) = self.conns.get(&conn) else { return };
        // The handshake is retransmitted until the node's end completes or gives up.
        let wanted = c.node_open && !c.node_connected && self.end_open(c, dir);
        if wanted {
            self.send_handshake(conn, dir, attempt);
        }
    }

    fn dial(&mut self, n: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let node = &mut self.nodes[n];
        node.conn = Some(conn);
        self.conns.insert(conn, Conn::dialing(n, node.inc, self.clock.now()));
        self.count("dials");
        self.text(format!("node-{n} dials conn#{conn}"));
        self.schedule(CONNECT_TIMEOUT, Ev::DialTimeout { conn });
        self.send_handshake(conn, Dir::ToRelay, 0);
    }

    fn ping(&mut self, conn: u64, dir: Dir) {
        let Some(c) = self.conns.get(&conn) else { return };
        if self.end_open(c, dir) {
            self.send_once(conn, dir, Payload::Ping);
            self.schedule(KEEPALIVE, Ev::Ping { conn, dir });
        }
    }

    fn idle_check(&mut self, conn: u64, hears: Dir) {
        let Some(c) = self.conns.get(&conn) else { return };
        if !self.end_open(c, hears.reverse()) {
            return;
        }
        let silent_since = c.last_heard[hears.index()];
        if self.clock.now() >= silent_since + IDLE_TIMEOUT {
            self.count("idle timeouts");
            match hears {
                Dir::ToNode => self.close_node_end(conn, "idle timeout", false),
                Dir::ToRelay => self.close_relay_end(conn, "idle timeout", false),
            }
        } else {
            self.queue.push(silent_since + IDLE_TIMEOUT, Ev::IdleCheck { conn, hears });
        }
    }

    fn arrive(&mut self, conn: u64, dir: Dir, payload: Payload) {
        let Some(c) = self.conns.get(&conn) else { return };
        let node = c.node;
        match dir {
            Dir::ToRelay => {
                if !self.relay.up {
                    return;
                }
                if let Payload::Initial = payload {
                    return self.relay_accept(conn);
                }
                if !self.end_open(c, Dir::ToNode) {
                    // A connection this relay process does not know: a stateless reset.
                    if matches!(payload, Payload::Frame { .. } | Payload::Ping) {
                        self.count("stateless resets");
                        self.send_once(conn, Dir::ToNode, Payload::Reset);
                    }
                    return;
                }
            }
            Dir::ToNode => {
                let n = &self.nodes[node];
                if !c.node_open || !n.up || c.node_inc != n.inc {
                    return;
                }
            }
        }
        let now = self.clock.now();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.last_heard[dir.index()] = now;
        match payload {
            Payload::Ping | Payload::Initial => {}
            Payload::Handshake => self.node_handshake_done(conn),
            Payload::Close | Payload::Reset => {
                self.line(Line::Recv { conn, node, dir, wire: payload.wire() });
                match dir {
                    Dir::ToNode => self.close_node_end(conn, "closed by the relay", false),
                    Dir::ToRelay => self.close_relay_end(conn, "closed by the node", false),
                }
            }
            Payload::Frame { stream, number, msg } => {
                let Some(ready) = c.rx[dir.index()][stream as usize].accept(number, msg) else {
                    self.count("duplicate packets discarded");
                    return;
                };
                for msg in ready {
                    let open = self.conns.get(&conn).is_some_and(|c| self.end_open(c, dir.reverse()));
                    if !open || self.finding.is_some() {
                        return;
                    }
                    self.line(Line::Recv { conn, node, dir, wire: Wire::of(&msg) });
                    match dir {
                        Dir::ToRelay => self.relay_receive(conn, node, msg),
                        Dir::ToNode => self.node_receive(node, msg),
                    }
                }
            }
        }
    }

    fn node_handshake_done(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.node_connected {
            return;
        }
        c.node_connected = true;
        let n = c.node;
        self.count("connections");
        self.text(format!("node-{n} connected conn#{conn}"));
        self.schedule(KEEPALIVE, Ev::Ping { conn, dir: Dir::ToRelay });
        self.schedule(IDLE_TIMEOUT, Ev::IdleCheck { conn, hears: Dir::ToNode });
        let now = self.clock.instant();
        if let Some(sender) = self.nodes[n].sender.as_mut() {
            sender.handle_connected(now);
        }
        self.drive_node(n);
    }

    /// The node's end closes: the sender plans its reconnect.
    fn close_node_end(&mut self, conn: u64, why: &'static str, notify: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.node_open {
            return;
        }
        c.node_open = false;
        let n = c.node;
        self.text(format!("node-{n} conn#{conn} closed: {why}"));
        if notify {
            self.send_once(conn, Dir::ToRelay, Payload::Close);
        }
        if self.nodes[n].conn == Some(conn) {
            self.nodes[n].conn = None;
            let now = self.clock.instant();
            if let Some(sender) = self.nodes[n].sender.as_mut() {
                sender.handle_disconnected(now, &mut self.rng_proto);
            }
            self.drive_node(n);
        }
    }

    // The relay.

    fn relay_accept(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.relay_inc == Some(self.relay.inc) {
            // A retransmitted Initial of a connection this process already knows.
            return;
        }
        c.relay_inc = Some(self.relay.inc);
        c.relay_open = true;
        c.last_heard[Dir::ToRelay.index()] = self.clock.now();
        let n = c.node;
        if let Some(old) = self.relay.by_node.insert(n, conn) {
            self.close_relay_end(old, "superseded by a newer connection", true);
        }
        let identity = self.nodes[n].identity.clone();
        let receiver = Receiver::new(self.relay_config.clone(), identity);
        self.relay.conns.insert(
            conn,
            RelayConn { node: n, receiver, epoch: None, inventory_sent: 0, push_pending: false },
        );
        self.text(format!("relay accepts conn#{conn} of node-{n}"));
        self.schedule(KEEPALIVE, Ev::Ping { conn, dir: Dir::ToNode });
        self.schedule(IDLE_TIMEOUT, Ev::IdleCheck { conn, hears: Dir::ToRelay });
        self.send_handshake(conn, Dir::ToNode, 0);
    }

    fn close_relay_end(&mut self, conn: u64, why: &'static str, notify: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.relay_open {
            return;
        }
        c.relay_open = false;
        let n = c.node;
        self.relay.conns.remove(&conn);
        if self.relay.by_node.get(&n) == Some(&conn) {
            self.relay.by_node.remove(&n);
        }
        self.text(format!("relay conn#{conn} of node-{n} closed: {why}"));
        if notify {
            self.send_once(conn, Dir::ToNode, Payload::Close);
        }
    }

    fn relay_receive(&mut self, conn: u64, n: usize, msg: Message) {
        let bug = self.relay.bug;
        let Some(rc) = self.relay.conns.get_mut(&conn) else { return };
        match msg {
            Message::Hello(hello) => {
                let stored = self.relay.store.watermarks_of(n, hello.epoch);
                match rc.receiver.handle_hello(hello, stored) {
                    Ok(epoch) => {
                        rc.epoch = Some(epoch);
                        // A version past the relay's own would be from before the relay
                        // lost its store: start over.
                        let merged = rc.receiver.node_inventory_version();
                        let current = self.relay.store.inventory_version();
                        rc.inventory_sent = if merged > current { 0 } else { merged };
                        self.drain_relay(conn);
                        return self.push_inventory(conn);
                    }
                    Err(refuse) => {
                        return self.find(
                            Invariant::NoProtocolViolation,
                            format!("relay refused node-{n}: {refuse}"),
                        );
                    }
                }
            }
            Message::Batch(batch) => {
                let whole_batch = matches!(
                    bug,
                    Some(
                        super::InjectedBug::ReapplyRetransmission
                            | super::InjectedBug::ReapplyRetransmittedDeltas
                    )
                );
                let whole = whole_batch.then(|| batch.clone());
                let node_id = self.nodes[n].identity.node_id.clone();
                let Some(epoch) = rc.epoch else {
                    return self
                        .find(Invariant::NoProtocolViolation, format!("node-{n} sent a batch before hello"));
                };
                match rc.receiver.handle_batch(batch) {
                    Ok(Some(accepted)) => {
                        let (lane, first, last) = (accepted.lane, accepted.first_seq, accepted.last_seq());
                        self.line(Line::Accepted { node: n, lane, first: first.get(), last: last.get() });
                        let (first_seq, records) = match whole {
                            Some(batch) => (batch.first_seq.get(), batch.events),
                            None => (first.get(), accepted.records),
                        };
                        let append = Append {
                            conn,
                            node: n,
                            node_id,
                            epoch,
                            lane,
                            first_seq,
                            records,
                            from_receiver: true,
                        };
                        self.relay.queue.push(append);
                        if bug == Some(super::InjectedBug::AckBeforeCommit) {
                            self.send_frame(conn, Dir::ToNode, Message::Ack(Ack { lane, through_seq: last }));
                        }
                        if self.relay.crash_point == Some(RelayCrashPoint::BeforeNextCommit) {
                            self.text("relay crashes with a batch accepted, before its commit".into());
                            let down = self.restart_delay();
                            return self.crash_relay(down);
                        }
                        self.start_commit();
                    }
                    Ok(None) => {
                        self.count("batches with nothing new");
                        if let Some(batch) = whole {
                            let append = Append {
                                conn,
                                node: n,
                                node_id,
                                epoch,
                                lane: batch.lane,
                                first_seq: batch.first_seq.get(),
                                records: batch.events,
                                from_receiver: false,
                            };
                            self.relay.queue.push(append);
                            self.start_commit();
                        }
                    }
                    Err(violation) => {
                        return self.find(
                            Invariant::NoProtocolViolation,
                            format!("relay saw from node-{n}: {violation}"),
                        );
                    }
                }
            }
            other => {
                let wire = Wire::of(&other);
                return self.find(Invariant::NoProtocolViolation, format!("relay got {wire} from node-{n}"));
            }
        }
        self.drain_relay(conn);
    }

    fn drain_relay(&mut self, conn: u64) {
        let Some(rc) = self.relay.conns.get_mut(&conn) else { return };
        let out: Vec<Message> = std::iter::from_fn(|| rc.receiver.poll_transmit()).collect();
        for msg in out {
            self.send_frame(conn, Dir::ToNode, msg);
        }
    }

    /// Sends the node of `conn` every inventory key that changed after the version it
    /// has, in chunks, the last marked complete, and moves the connection's version on.
    fn push_inventory(&mut self, conn: u64) {
        let current = self.relay.store.inventory_version();
        let Some(rc) = self.relay.conns.get_mut(&conn) else { return };
        if rc.epoch.is_none() || rc.inventory_sent == current {
            return;
        }
        let chunks = self.relay.store.inventory.changes_since(rc.inventory_sent, UPDATE_ENTRIES_MAX);
        rc.inventory_sent = current;
        let count = chunks.len();
        for (i, state) in chunks.into_iter().enumerate() {
            let update = InventoryUpdate { through_version: current, state, complete: i + 1 == count };
            self.count("inventory messages sent");
            self.send_frame(conn, Dir::ToNode, Message::Inventory(update));
        }
    }

    fn start_commit(&mut self) {
        if !self.relay.up || self.relay.writing.is_some() || self.relay.queue.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.relay.queue);
        let (txn, outcomes) = self.relay.store.prepare(&group, self.relay.bug);
        if txn.skipped > 0 {
            *self.stats.entry("relay store skipped records").or_default() += txn.skipped as u64;
        }
        self.relay.store.write(txn);
        self.relay.writing = Some((group, outcomes));
        let now = self.clock.now();
        let slow = self.healed_at.is_none() && self.slow_disk.is_some_and(|w| w.contains(now));
        let ms =
            if slow { self.rng_fault.random_range(200..=1_500) } else { self.rng_fault.random_range(1..=20) };
        let inc = self.relay.inc;
        self.schedule(Duration::from_millis(ms), Ev::CommitDone { inc });
    }

    fn commit_done(&mut self, inc: u32) {
        if self.relay.inc != inc || !self.relay.up {
            return;
        }
        let Some((group, outcomes)) = self.relay.writing.take() else { return };
        let entries = self.relay.store.sync();
        self.count("relay commits");
        self.line(Line::Committed { appends: group.len(), entries: entries.len() });
        let mut result = Ok(());
        for entry in &self.relay.store.log[entries] {
            let expected = self.nodes.get(entry.node).and_then(|node| {
                node.records_of(entry.epoch, entry.lane).get((entry.seq as usize).wrapping_sub(1))
            });
            result = self.checker.on_log_entry(entry, expected);
            if result.is_err() {
                break;
            }
        }
        self.found(result);
        let result = self.checker.on_watermarks(&self.relay.store);
        self.found(result);
        if self.finding.is_some() {
            return;
        }
        if self.relay.crash_point == Some(RelayCrashPoint::AfterNextCommit) {
            self.text("relay crashes after a durable commit, before its acks".into());
            let down = self.restart_delay();
            return self.crash_relay(down);
        }
        for (append, outcome) in group.into_iter().zip(outcomes) {
            let Some(rc) = self.relay.conns.get_mut(&append.conn) else { continue };
            match outcome {
                AppendOutcome::Stored(through) => {
                    if append.from_receiver {
                        rc.receiver.handle_committed(append.lane, through);
                        self.drain_relay(append.conn);
                    }
                }
                AppendOutcome::Gap { watermark } => {
                    self.count("store gaps refused");
                    self.text(format!(
                        "relay store refused node-{} {} from {}: holds through {watermark}",
                        append.node, append.lane, append.first_seq
                    ));
                    self.close_relay_end(append.conn, "store refused a gap", true);
                }
            }
        }
        let inc = self.relay.inc;
        let mut pushes = Vec::new();
        for (conn, rc) in &mut self.relay.conns {
            if rc.epoch.is_some() && !rc.push_pending {
                rc.push_pending = true;
                pushes.push(*conn);
            }
        }
        for conn in pushes {
            self.schedule(INVENTORY_PUSH_DELAY, Ev::PushInventory { conn, inc });
        }
        self.start_commit();
    }

    fn crash_relay(&mut self, down: Duration) {
        self.count("relay crashes");
        let relay = &mut self.relay;
        relay.up = false;
        relay.inc += 1;
        relay.crash_point = None;
        for conn in std::mem::take(&mut relay.conns).into_keys() {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.relay_open = false;
            }
        }
        relay.by_node.clear();
        relay.queue.clear();
        relay.writing = None;
        let lost = relay.store.crash_and_recover();
        let inc = relay.inc;
        self.text(format!("relay CRASH: {lost} unsynced transactions lost, down {} ms", down.as_millis()));
        let result = self.checker.on_watermarks(&self.relay.store);
        self.found(result);
        self.schedule(down, Ev::RestartRelay { inc });
    }

    // Faults and phases.

    fn crash(&mut self, crash: Crash, down: Duration) {
        if self.healed_at.is_some() {
            return;
        }
        match crash {
            Crash::Node(n, NodeCrashPoint::Now) => {
                if self.nodes[n].up {
                    self.crash_node(n, down);
                }
            }
            Crash::Node(n, point) => {
                if self.nodes[n].up {
                    self.text(format!("node-{n} crash armed: {point:?}"));
                    self.nodes[n].crash_point = Some(point);
                }
            }
            Crash::Relay(RelayCrashPoint::Now) => {
                if self.relay.up {
                    self.crash_relay(down);
                }
            }
            Crash::Relay(point) => {
                if self.relay.up {
                    self.text(format!("relay crash armed: {point:?}"));
                    self.relay.crash_point = Some(point);
                }
            }
        }
    }

    fn heal(&mut self) {
        self.healed_at = Some(self.clock.now());
        self.net.heal();
        self.relay.crash_point = None;
        for node in &mut self.nodes {
            node.crash_point = None;
        }
        self.text("phase liveness: network healed, faults stopped, no new posts".into());
        self.schedule(PROBE_INTERVAL, Ev::Probe);
    }

    fn converged(&self) -> bool {
        self.drained() && self.inventory_converged()
    }

    /// Eventually, E3: every node's replica is the relay's merged inventory.
    fn inventory_converged(&self) -> bool {
        let merged = self.relay.store.inventory.merged();
        self.nodes.iter().all(|node| node.store.replica() == merged)
    }

    fn drained(&self) -> bool {
        let nodes = self.nodes.iter().all(|node| {
            node.up
                && node
                    .sender
                    .as_ref()
                    .is_some_and(|s| s.is_ready() && Lane::ALL.iter().all(|&l| s.backlog(l) == 0))
        });
        nodes && self.scanners.iter().all(|s| s.pending.is_none())
    }

    fn probe(&mut self) {
        let Some(healed_at) = self.healed_at else { return };
        if self.converged() {
            let after = self.clock.now() - healed_at;
            self.text(format!("converged {} ms after healing", after.as_millis()));
            self.converged_after = Some(after);
            self.final_checks();
            return;
        }
        if self.clock.now() >= healed_at + self.config.liveness_budget {
            if self.drained() {
                let detail = self.inventory_report();
                return self.find(Invariant::InventoryConverges, detail);
            }
            let detail = self.backlog_report();
            return self.find(Invariant::BacklogsDrain, detail);
        }
        self.schedule(PROBE_INTERVAL, Ev::Probe);
    }

    fn backlog_report(&self) -> String {
        let mut parts = Vec::new();
        for node in &self.nodes {
            let state = match &node.sender {
                None => "down".to_owned(),
                Some(s) => {
                    format!("ready={} backlog={:?}", s.is_ready(), PerLane::from_fn(|l| s.backlog(l)).0)
                }
            };
            parts.push(format!("node-{} {state}", node.index));
        }
        let pending = self.scanners.iter().filter(|s| s.pending.is_some()).count();
        format!(
            "no convergence within {} s of healing: {}; {pending} scanners with unanswered posts",
            self.config.liveness_budget.as_secs(),
            parts.join(", ")
        )
    }

    fn inventory_report(&self) -> String {
        let merged = self.relay.store.inventory.merged();
        let parts: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let diff = inventory::first_stock_difference(node.store.replica(), merged)?;
                Some(format!(
                    "node-{} (merged through v{}) {diff}",
                    node.index,
                    node.store.inventory_version()
                ))
            })
            .collect();
        format!(
            "inventory not converged within {} s of healing (relay at v{}): {}",
            self.config.liveness_budget.as_secs(),
            self.relay.store.inventory_version(),
            parts.join("; ")
        )
    }

    fn final_checks(&mut self) {
        let end = EndState { nodes: &self.nodes, relay: &self.relay.store, ledger: &self.ledger };
        let mut finding = check::every_answered_event_at_relay(&end).err();
        if finding.is_none() {
            for check in check::final_checks() {
                if let Err(detail) = check.check(&end) {
                    finding = Some((check.invariant(), detail));
                    break;
                }
            }
        }
        if let Some((invariant, detail)) = finding {
            self.find(invariant, detail);
        }
        for n in 0..self.nodes.len() {
            self.check_own_stock(n, None);
        }
        let keys = self.relay.store.inventory.merged().len() as u64;
        self.stats.insert("inventory keys", keys);
        self.stats.insert("negative stock keys", self.relay.store.inventory.negative().len() as u64);
        let answered = self.ledger.answered.len() as u64;
        self.stats.insert("events answered", answered);
        self.stats.insert("relay log entries", self.relay.store.log.len() as u64);
    }
}

fn region() -> sync_protocol::Region {
    match "eu-west".parse() {
        Ok(region) => region,
        // A literal that the parser accepts; a test runs this path.
        Err(e) => unreachable!("eu-west is a valid region: {e}"),
    }
}
