//! The simulated network between the nodes and the relay, and its fault rules.
//!
//! # How QUIC is modelled
//!
//! Node and relay talk QUIC, so the simulation keeps QUIC's promises and breaks only what
//! QUIC can break. A connection carries ordered, reliable streams: the control stream and
//! one stream per lane, in each direction. Every frame travels as one packet, and every
//! packet is judged by the fault rules. A lost packet is sent again after a probe timeout
//! that doubles on each loss, and the receiving side reassembles each stream by frame
//! number, so within one connection an endpoint sees every frame of a stream exactly once
//! and in order: a duplicated packet is discarded, a late one holds back the frames behind
//! it (head-of-line blocking). Streams of one connection overtake each other freely.
//!
//! What QUIC cannot hide shows up the way it does in the field:
//! - **loss and partitions** are stalls. Both sides send keep-alives; a side that hears
//!   nothing for the idle timeout closes the connection silently, and the node dials
//!   again with backoff. A one-way partition closes only the side that stops hearing, so
//!   the other keeps a *stale* connection open until it times out or is superseded.
//! - **duplication and reordering across connections** come from retransmission after a
//!   reconnect (the node resends from the relay's watermark) and from stale connections
//!   (a held or delayed frame of an old connection still reaches a relay that has not
//!   closed it yet).
//! - **crashes** close every connection of the crashed process without a word; a restarted
//!   relay answers packets of connections it no longer knows with a stateless reset.
//! - **a dial** is a handshake round trip subject to the same rules, retransmitted until
//!   the connect timeout.
//!
//! # Fault rules
//!
//! Faults are an ordered list of [`FaultRule`]s, each active in a window of virtual time.
//! For every packet the rules are consulted in order: [`Verdict::Drop`] ends the walk,
//! [`Verdict::Deliver`] delays add up, and [`Verdict::Duplicate`] asks for a second copy.
//! The link's base latency is added at the end. Healing the network clears the list.
//!
//! To add a fault: write a struct with its [`Window`] and [`Targets`], implement
//! [`FaultRule::on_packet`] (return [`Verdict::Pass`] outside the window or for packets
//! the rule does not target), and give [`super::schedule`] a way to draw it from the seed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use sync_protocol::Message;

use super::trace::{Dir, Wire};

/// One packet, as the fault rules see it.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo {
    /// The node at one end of the connection.
    pub node: usize,
    /// Which way it travels.
    pub dir: Dir,
    /// Its size, for bandwidth limits.
    pub bytes: u32,
}

/// What a rule does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not this rule's business.
    Pass,
    /// Deliver it after this much extra delay.
    Deliver(Duration),
    /// Lose it.
    Drop,
    /// Deliver it, and a second copy this much later.
    Duplicate(Duration),
}

/// A span of virtual time in which a rule is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub from: Duration,
    /// End, exclusive.
    pub until: Duration,
}

impl Window {
    /// Whether `now` is inside.
    pub fn contains(&self, now: Duration) -> bool {
        self.from <= now && now < self.until
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{} ms", self.from.as_millis(), self.until.as_millis())
    }
}

/// Which packets a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Nodes whose connections are affected, as a bit set; `u64::MAX` for all.
    pub nodes: u64,
    /// One direction only, or both.
    pub dir: Option<Dir>,
}

impl Targets {
    /// Every packet.
    pub const ALL: Targets = Targets { nodes: u64::MAX, dir: None };

    /// Whether `packet` is targeted.
    pub fn matches(&self, packet: &PacketInfo) -> bool {
        let node = packet.node.min(63);
        self.nodes & (1 << node) != 0 && self.dir.is_none_or(|d| d == packet.dir)
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == u64::MAX {
            f.write_str("all nodes")?;
        } else {
            let nodes: Vec<String> =
                (0..64).filter(|i| self.nodes & (1u64 << i) != 0).map(|i| format!("node-{i}")).collect();
            f.write_str(&nodes.join(","))?;
        }
        match self.dir {
            Some(dir) => write!(f, " {dir} only"),
            None => f.write_str(" both ways"),
        }
    }
}

/// A network fault: a verdict for every packet.
pub trait FaultRule: fmt::Debug + fmt::Display + Send {
    /// The verdict for `packet` at virtual time `now`.
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Verdict;
}

/// A partition: every targeted packet is lost (one-way when `targets.dir` is set).
#[derive(Debug, Clone)]
pub struct Partition {
    /// When.
    pub window: Window,
    /// Which links, which way.
    pub targets: Targets,
}

impl FaultRule for Partition {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, _rng: &mut StdRng) -> Verdict {
        if self.window.contains(now) && self.targets.matches(packet) { Verdict::Drop } else { Verdict::Pass }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.targets.dir.is_some() { "oneway" } else { "partition" };
        write!(f, "{what} {} during {}", self.targets, self.window)
    }
}

/// Random loss of a share of the packets.
#[derive(Debug, Clone)]
pub struct Loss {
    /// When.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
    /// The share lost, 0 to 1.
    pub rate: f64,
}

impl FaultRule for Loss {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Verdict {
        if self.window.contains(now) && self.targets.matches(packet) && rng.random_bool(self.rate) {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loss {:.0}% {} during {}", self.rate * 100.0, self.targets, self.window)
    }
}

/// Extra latency with jitter; jitter reorders packets of different streams.
#[derive(Debug, Clone)]
pub struct Latency {
    /// When.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
    /// Added to every packet.
    pub extra: Duration,
    /// Up to this much more, uniformly.
    pub jitter: Duration,
}

impl FaultRule for Latency {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Verdict {
        if !(self.window.contains(now) && self.targets.matches(packet)) {
            return Verdict::Pass;
        }
        let jitter = rng.random_range(0..=self.jitter.as_micros() as u64);
        Verdict::Deliver(self.extra + Duration::from_micros(jitter))
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency +{} ms jitter {} ms {} during {}",
            self.extra.as_millis(),
            self.jitter.as_millis(),
            self.targets,
            self.window
        )
    }
}

/// Some packets are held back a random while, so later ones overtake them.
#[derive(Debug, Clone)]
pub struct Reorder {
    /// When.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
    /// The share held back.
    pub rate: f64,
    /// Most delay of a held-back packet.
    pub delay_max: Duration,
}

impl FaultRule for Reorder {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Verdict {
        if self.window.contains(now) && self.targets.matches(packet) && rng.random_bool(self.rate) {
            let delay = rng.random_range(1..=self.delay_max.as_millis().max(1) as u64);
            Verdict::Deliver(Duration::from_millis(delay))
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Reorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reorder {:.0}% up to {} ms {} during {}",
            self.rate * 100.0,
            self.delay_max.as_millis(),
            self.targets,
            self.window
        )
    }
}

/// Duplicated packets: a second copy arrives a little later.
#[derive(Debug, Clone)]
pub struct Duplicate {
    /// When.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
    /// The share duplicated.
    pub rate: f64,
}

impl FaultRule for Duplicate {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Verdict {
        if self.window.contains(now) && self.targets.matches(packet) && rng.random_bool(self.rate) {
            Verdict::Duplicate(Duration::from_millis(rng.random_range(0..=50)))
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate {:.0}% {} during {}", self.rate * 100.0, self.targets, self.window)
    }
}

/// A bandwidth cap per link and direction: packets queue behind each other.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    /// When.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
    /// The cap.
    pub bytes_per_s: u64,
    /// When each `(node, direction)` link finishes what it already queued.
    pub busy_until: BTreeMap<(usize, Dir), Duration>,
}

impl FaultRule for Bandwidth {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, _rng: &mut StdRng) -> Verdict {
        if !(self.window.contains(now) && self.targets.matches(packet)) {
            return Verdict::Pass;
        }
        let busy = self.busy_until.entry((packet.node, packet.dir)).or_default();
        let start = (*busy).max(now);
        let serialize = Duration::from_micros(u64::from(packet.bytes) * 1_000_000 / self.bytes_per_s.max(1));
        *busy = start + serialize;
        Verdict::Deliver(*busy - now)
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bandwidth {} B/s {} during {}", self.bytes_per_s, self.targets, self.window)
    }
}

/// Hold and release: packets sent in the window are held, without loss, until it ends.
#[derive(Debug, Clone)]
pub struct Hold {
    /// When; packets are released at `window.until`.
    pub window: Window,
    /// Which links.
    pub targets: Targets,
}

impl FaultRule for Hold {
    fn on_packet(&mut self, packet: &PacketInfo, now: Duration, _rng: &mut StdRng) -> Verdict {
        if self.window.contains(now) && self.targets.matches(packet) {
            Verdict::Deliver(self.window.until - now)
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hold {} during {}, release at the end", self.targets, self.window)
    }
}

/// Where a packet ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Lost.
    Lost,
    /// Arrives after `delay`, and again after `duplicate` if set.
    Arrives {
        /// Delay of the first copy.
        delay: Duration,
        /// Delay of a second copy.
        duplicate: Option<Duration>,
    },
}

/// The links and their fault rules.
#[derive(Debug, Default)]
pub struct Network {
    /// Active and future faults, consulted in order.
    pub rules: Vec<Box<dyn FaultRule>>,
    /// One-way base latency of each node's link.
    pub base_latency: Vec<Duration>,
}

impl Network {
    /// The fate of one packet.
    pub fn judge(&mut self, packet: &PacketInfo, now: Duration, rng: &mut StdRng) -> Judgement {
        let mut delay = self.base_latency.get(packet.node).copied().unwrap_or(Duration::from_millis(10));
        let mut duplicate = None;
        for rule in &mut self.rules {
            match rule.on_packet(packet, now, rng) {
                Verdict::Pass => {}
                Verdict::Drop => return Judgement::Lost,
                Verdict::Deliver(extra) => delay += extra,
                Verdict::Duplicate(after) => duplicate = Some(after),
            }
        }
        Judgement::Arrives { delay, duplicate: duplicate.map(|after| delay + after) }
    }

    /// Removes every fault: the network is healed.
    pub fn heal(&mut self) {
        self.rules.clear();
    }
}

/// Frames a stream of one direction holds back until the gap before them is filled.
#[derive(Debug, Default, Clone)]
pub struct StreamRx {
    /// The next frame number to hand to the endpoint.
    pub next: u64,
    /// Frames that arrived ahead of `next`.
    pub ahead: BTreeMap<u64, Message>,
}

impl StreamRx {
    /// Takes frame `number`; returns the frames now deliverable in order. A frame already
    /// delivered or already waiting is a duplicate and is dropped (`None`).
    pub fn accept(&mut self, number: u64, msg: Message) -> Option<Vec<Message>> {
        if number < self.next || self.ahead.contains_key(&number) {
            return None;
        }
        self.ahead.insert(number, msg);
        let mut ready = Vec::new();
        while let Some(msg) = self.ahead.remove(&self.next) {
            ready.push(msg);
            self.next += 1;
        }
        Some(ready)
    }
}

/// Streams per direction: control and one per lane.
pub const STREAMS: usize = 4;

/// The stream index of the control stream.
pub const CONTROL_STREAM: u8 = 0;

/// The stream index of a message: control for Hello, Welcome and Refuse, else its lane's.
pub fn stream_of(msg: &Message) -> u8 {
    match msg {
        Message::Hello(_)
        | Message::Welcome(_)
        | Message::Refuse(_)
        | Message::Inventory(_)
        | Message::Repair(_)
        | Message::Repaired(_) => CONTROL_STREAM,
        Message::Batch(b) => 1 + b.lane.index() as u8,
        Message::Ack(a) => 1 + a.lane.index() as u8,
        Message::Resync(r) => 1 + r.lane.index() as u8,
    }
}

/// Roughly the size of a message on the wire, for bandwidth limits. Encoding every frame
/// would cost more than the rest of the simulation.
pub fn wire_bytes(wire: Wire) -> u32 {
    const RECORD_BYTES: u64 = 96;
    match wire {
        Wire::Batch(_, first, last) => {
            (32 + (last + 1 - first) * RECORD_BYTES).min(u64::from(u32::MAX)) as u32
        }
        Wire::Initial | Wire::Handshake => 1_200,
        _ => 48,
    }
}

/// One connection between a node and the relay, both ends.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The node.
    pub node: usize,
    /// The node's incarnation that dialed.
    pub node_inc: u32,
    /// The node's end is open (dialing or connected).
    pub node_open: bool,
    /// The node's end finished the handshake.
    pub node_connected: bool,
    /// The relay incarnation that accepted it, once it did.
    pub relay_inc: Option<u32>,
    /// The relay's end is open.
    pub relay_open: bool,
    /// Next frame number per direction and stream.
    pub tx_next: [[u64; STREAMS]; 2],
    /// Reassembly per direction and stream (indexed by the direction of travel).
    pub rx: [[StreamRx; STREAMS]; 2],
    /// When each end last heard from the other (indexed by the direction of travel of
    /// what it heard: `[ToRelay]` is the relay's).
    pub last_heard: [Duration; 2],
}

impl Conn {
    /// A connection the node is dialing.
    pub fn dialing(node: usize, node_inc: u32, now: Duration) -> Self {
        Conn {
            node,
            node_inc,
            node_open: true,
            node_connected: false,
            relay_inc: None,
            relay_open: false,
            tx_next: [[0; STREAMS]; 2],
            rx: Default::default(),
            last_heard: [now; 2],
        }
    }

    /// Whether the sending end of `dir` is open.
    pub fn sender_open(&self, dir: Dir) -> bool {
        match dir {
            Dir::ToRelay => self.node_open,
            Dir::ToNode => self.relay_open,
        }
    }

    /// Whether the receiving end of `dir` is open.
    pub fn receiver_open(&self, dir: Dir) -> bool {
        self.sender_open(dir.reverse())
    }
}

/// The probe timeout before retransmission number `attempt`: 250 ms doubling to 4 s.
pub fn probe_timeout(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(4))
}

#[cfg(test)]
mod tests;
