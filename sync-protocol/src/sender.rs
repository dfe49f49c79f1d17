//! The node side of replication: which batches to send, when to reconnect, what is acked.
//!
//! The sender does not hold events. It tells the shell *which* seqs of a lane to send
//! ([`Transmit::Batch`]); the shell reads them from its store, frames them and writes them
//! to that lane's stream. That keeps the core small and lets the simulator back it with a
//! simulated store.
//!
//! Drive contract: after any `handle_*` call, drain [`Sender::poll_transmit`] and
//! [`Sender::poll_event`] until they return `None`, then sleep until
//! [`Sender::poll_timeout`]. `now` must never go backwards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::ProtocolViolation;
use crate::ids::{Epoch, Lane, NodeIdentity, PerLane, Seq};
use crate::wire::{
    BATCH_EVENTS_MAX, BATCHES_IN_FLIGHT_MAX, Hello, InventoryUpdate, Message, PROTOCOL_VERSION, Refuse,
    RefuseReason, Repaired,
};

/// How the sender behaves; the defaults suit a site on a flaky WAN.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Who the node is (from its certificate).
    pub identity: NodeIdentity,
    /// The store's epoch.
    pub epoch: Epoch,
    /// Most events per batch; the relay may ask for fewer.
    pub batch_events_max: u32,
    /// Most unacknowledged batches per lane; the relay may ask for fewer.
    pub batches_in_flight_max: u32,
    /// First reconnect delay bound; doubles with each failed attempt.
    pub backoff_base: Duration,
    /// Largest reconnect delay bound, so a thousand nodes returning spread over this much.
    pub backoff_max: Duration,
    /// Longest retry hint of a busy relay ([`RefuseReason::Busy`]) that is honoured; a
    /// longer one is cut to this, so a misconfigured relay cannot park a site for days.
    pub retry_after_max: Duration,
}

impl SenderConfig {
    /// The defaults for `identity` and `epoch`: 200 ms doubling to 1 s. The cap is short
    /// because a site wants its backlog moving within a second of the WAN returning
    /// (PERFORMANCE.md, `drain`), and a dial to a relay that is down costs one UDP
    /// datagram; full jitter still spreads a thousand returning nodes over that second,
    /// and the relay's connection limit does the rest. A busy relay's retry hint is
    /// honoured up to 5 minutes, well above the longest hint `outpost-relay` gives.
    pub fn new(identity: NodeIdentity, epoch: Epoch) -> Self {
        SenderConfig {
            identity,
            epoch,
            batch_events_max: BATCH_EVENTS_MAX,
            batches_in_flight_max: BATCHES_IN_FLIGHT_MAX,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(300),
        }
    }
}

/// Something to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A message for the control stream.
    Control(Message),
    /// Send `count` events of `lane` starting at `first_seq` on that lane's stream.
    Batch {
        /// The lane.
        lane: Lane,
        /// The first seq to send.
        first_seq: Seq,
        /// How many consecutive seqs.
        count: u32,
    },
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// Dial the relay, then call [`Sender::handle_connected`] or
    /// [`Sender::handle_disconnected`].
    Connect,
    /// The relay accepted the node.
    Welcomed {
        /// The relay's name.
        relay_id: String,
    },
    /// The relay holds every seq of `lane` through `through` durably: record it, and
    /// events up to there may be pruned after retention. It can go *down* when the relay
    /// lost its store; then the events after it are sent again.
    Acked {
        /// The lane.
        lane: Lane,
        /// The relay's durable watermark (0 for nothing).
        through: u64,
    },
    /// The relay refused the node. The shell logs it, closes the connection and calls
    /// [`Sender::handle_disconnected`].
    Refused(Refuse),
    /// The relay's durable watermark of `lane` is behind what it acknowledged before: it
    /// lost events (its store was wiped or restored from an old backup). The sender
    /// resends from `watermark + 1` what the node still holds; the shell must report it
    /// loudly, since an ack promised durability the relay no longer has.
    RelayRegressed {
        /// The lane.
        lane: Lane,
        /// What the relay had acknowledged.
        acked: u64,
        /// What it holds now.
        watermark: u64,
    },
    /// Merged inventory from the relay: the shell merges it durably and, for the update
    /// marked complete, calls [`Sender::handle_inventory_merged`].
    Inventory(InventoryUpdate),
    /// The relay answered a repair the shell sent (reconciliation).
    Repaired(Repaired),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; dial at `reconnect_at`.
    Idle { reconnect_at: Instant },
    /// [`SenderEvent::Connect`] was emitted at `since`; waiting for the shell.
    Connecting { since: Instant },
    /// Hello sent on the attempt dialled at `since`, waiting for Welcome.
    Handshaking { since: Instant },
    /// Welcomed: batches flow.
    Ready,
}

#[derive(Debug, Clone, Default)]
struct LaneState {
    /// Highest seq durable at the node.
    head: u64,
    /// Highest seq the relay has acknowledged (or reported in Welcome).
    acked: u64,
    /// Next seq to put on the wire.
    next: u64,
    /// `(first, last)` of each batch sent and not yet acknowledged, in order.
    in_flight: VecDeque<(u64, u64)>,
}

/// The node-side replication state machine.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    link: Link,
    attempt: u32,
    batch_events_max: u32,
    window: usize,
    lanes: PerLane<LaneState>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SenderEvent>,
    /// The relay inventory version merged durably, for the next Hello.
    inventory_version: u64,
    /// The retry hint of a busy relay on this connection, for the next
    /// [`Sender::handle_disconnected`].
    retry_after: Option<Duration>,
}

impl Sender {
    /// A sender for a store whose lanes hold `heads` and whose relay acked `acked`; it
    /// wants to connect at once.
    pub fn new(config: SenderConfig, heads: PerLane<u64>, acked: PerLane<u64>, now: Instant) -> Self {
        let lanes = PerLane::from_fn(|lane| {
            let acked = (*acked.get(lane)).min(*heads.get(lane));
            LaneState { head: *heads.get(lane), acked, next: acked + 1, in_flight: VecDeque::new() }
        });
        Sender {
            batch_events_max: config.batch_events_max.max(1),
            window: config.batches_in_flight_max.max(1) as usize,
            config,
            link: Link::Idle { reconnect_at: now },
            attempt: 0,
            lanes,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            inventory_version: 0,
            retry_after: None,
        }
    }

    /// The shell made the relay's inventory through `version` durable (or loaded that
    /// version at start-up): the next Hello asks only for what changed after it.
    pub fn handle_inventory_merged(&mut self, version: u64) {
        self.inventory_version = version;
    }

    /// The store committed `lane` through `head`.
    pub fn handle_appended(&mut self, lane: Lane, head: u64) {
        let state = self.lanes.get_mut(lane);
        debug_assert!(head >= state.head, "lane {lane} head went backwards: {} to {head}", state.head);
        state.head = state.head.max(head);
    }

    /// The shell's dial succeeded and streams can be opened: send Hello.
    pub fn handle_connected(&mut self, now: Instant) {
        let since = if let Link::Connecting { since } = self.link { since } else { now };
        self.link = Link::Handshaking { since };
        // A hint is about the connection that carried it.
        self.retry_after = None;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node_id: self.config.identity.node_id.clone(),
            region: self.config.identity.region.clone(),
            epoch: self.config.epoch,
            heads: PerLane::from_fn(|lane| self.lanes.get(lane).head),
            inventory_version: self.inventory_version,
        };
        self.transmits.push_back(Transmit::Control(Message::Hello(hello)));
    }

    /// A message from the relay.
    pub fn handle_message(&mut self, msg: Message, _now: Instant) -> Result<(), ProtocolViolation> {
        match msg {
            Message::Welcome(welcome) => {
                if !matches!(self.link, Link::Handshaking { .. }) {
                    return Err(ProtocolViolation::Unexpected("welcome outside the handshake"));
                }
                if welcome.region != self.config.identity.region {
                    self.events.push_back(SenderEvent::Refused(Refuse {
                        reason: RefuseReason::WrongRegion,
                        message: format!(
                            "relay {} serves region {}, this node belongs to {}; configure a relay of its own region",
                            welcome.relay_id, welcome.region, self.config.identity.region
                        ),
                    }));
                    return Ok(());
                }
                for (lane, &watermark) in welcome.watermarks.iter() {
                    let state = self.lanes.get_mut(lane);
                    if watermark > state.head {
                        return Err(ProtocolViolation::WatermarkAhead { lane, watermark, head: state.head });
                    }
                    state.next = watermark + 1;
                    state.in_flight.clear();
                    if watermark < state.acked {
                        self.events.push_back(SenderEvent::RelayRegressed {
                            lane,
                            acked: state.acked,
                            watermark,
                        });
                    }
                    if watermark != state.acked {
                        state.acked = watermark;
                        self.events.push_back(SenderEvent::Acked { lane, through: watermark });
                    }
                }
                self.batch_events_max =
                    self.config.batch_events_max.min(welcome.limits.batch_events_max).max(1);
                self.window =
                    self.config.batches_in_flight_max.min(welcome.limits.batches_in_flight_max).max(1)
                        as usize;
                self.link = Link::Ready;
                self.attempt = 0;
                self.events.push_back(SenderEvent::Welcomed { relay_id: welcome.relay_id });
                self.fill_windows();
                Ok(())
            }
            Message::Refuse(refuse) => {
                if let RefuseReason::Busy { retry_after_ms } = refuse.reason
                    && retry_after_ms > 0
                {
                    let hint = Duration::from_millis(u64::from(retry_after_ms));
                    self.retry_after = Some(hint.min(self.config.retry_after_max));
                }
                self.events.push_back(SenderEvent::Refused(refuse));
                Ok(())
            }
            Message::Ack(ack) => {
                self.expect_ready("ack")?;
                let state = self.lanes.get_mut(ack.lane);
                let through = ack.through_seq.get();
                if through >= state.next {
                    return Err(ProtocolViolation::AckBeyondSent {
                        lane: ack.lane,
                        through,
                        sent: state.next - 1,
                    });
                }
                if through > state.acked {
                    state.acked = through;
                    while state.in_flight.front().is_some_and(|&(_, last)| last <= through) {
                        state.in_flight.pop_front();
                    }
                    self.events.push_back(SenderEvent::Acked { lane: ack.lane, through });
                    self.fill_windows();
                }
                Ok(())
            }
            Message::Resync(resync) => {
                self.expect_ready("resync")?;
                let state = self.lanes.get_mut(resync.lane);
                let from = resync.from_seq.get();
                if from > state.next {
                    return Err(ProtocolViolation::ResyncBeyondSent {
                        lane: resync.lane,
                        from,
                        sent: state.next - 1,
                    });
                }
                state.next = from.max(state.acked + 1);
                state.in_flight.clear();
                self.fill_windows();
                Ok(())
            }
            Message::Inventory(update) => {
                self.expect_ready("inventory")?;
                self.events.push_back(SenderEvent::Inventory(update));
                Ok(())
            }
            Message::Repaired(repaired) => {
                self.expect_ready("repaired")?;
                self.events.push_back(SenderEvent::Repaired(repaired));
                Ok(())
            }
            Message::Hello(_) | Message::Batch(_) | Message::Repair(_) => {
                Err(ProtocolViolation::Unexpected("a node-to-relay message"))
            }
        }
    }

    /// The connection failed or closed: forget what was in flight and plan the next dial
    /// with exponential backoff and full jitter, or, after a busy relay's refusal, after
    /// its retry hint with as much jitter again on top.
    ///
    /// An attempt that was never welcomed spaces dials from the start of one to the start
    /// of the next: a dial that waited out its timeout (a relay that is down answers
    /// nothing) has already waited longer than the backoff, and the next goes at once, so
    /// a returning relay is found within one dial's retransmissions. A connection that
    /// was up waits from its end, so nodes that lose the relay together come back spread.
    pub fn handle_disconnected(&mut self, now: Instant, rng: &mut impl Rng) {
        // The first failure waits up to `backoff_base`, and each further one up to twice
        // as long as the one before, until `backoff_max`.
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let dialed_at = match self.link {
            Link::Connecting { since } | Link::Handshaking { since } => Some(since),
            Link::Idle { .. } | Link::Ready => None,
        };
        let reconnect_at = match self.retry_after.take() {
            // Uniform in [hint, 2 * hint] from now: never sooner than the relay asked, and
            // the nodes it turned away together come back spread over as long again.
            Some(hint) => now + hint + jitter(hint, rng),
            None => {
                let bound = self.config.backoff_base.saturating_mul(1 << exp).min(self.config.backoff_max);
                (dialed_at.unwrap_or(now) + jitter(bound, rng)).max(now)
            }
        };
        self.link = Link::Idle { reconnect_at };
        for state in &mut self.lanes.0 {
            state.in_flight.clear();
            state.next = state.acked + 1;
        }
        self.transmits.clear();
    }

    /// Time passed: dial if the backoff is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Link::Idle { reconnect_at } = self.link
            && now >= reconnect_at
        {
            self.link = Link::Connecting { since: now };
            self.events.push_back(SenderEvent::Connect);
        }
    }

    /// The next thing to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.fill_windows();
        }
        self.transmits.pop_front()
    }

    /// The next thing the shell must act on.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When to call [`Sender::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Idle { reconnect_at } => Some(reconnect_at),
            Link::Connecting { .. } | Link::Handshaking { .. } | Link::Ready => None,
        }
    }

    /// Whether the relay has welcomed this connection.
    pub fn is_ready(&self) -> bool {
        self.link == Link::Ready
    }

    /// Events of `lane` durable here and not yet acknowledged by the relay.
    pub fn backlog(&self, lane: Lane) -> u64 {
        let state = self.lanes.get(lane);
        state.head - state.acked
    }

    /// The relay's acknowledged watermark of `lane`.
    pub fn acked(&self, lane: Lane) -> u64 {
        self.lanes.get(lane).acked
    }

    /// Queues batches while a lane has unsent events and room in its window, critical
    /// lane first.
    fn fill_windows(&mut self) {
        if self.link != Link::Ready {
            return;
        }
        for lane in Lane::ALL {
            let state = self.lanes.get_mut(lane);
            while state.next <= state.head && state.in_flight.len() < self.window {
                let count = (state.head - state.next + 1).min(u64::from(self.batch_events_max));
                let Some(first_seq) = Seq::new(state.next) else { break };
                let last = state.next + count - 1;
                state.in_flight.push_back((state.next, last));
                state.next = last + 1;
                self.transmits.push_back(Transmit::Batch { lane, first_seq, count: count as u32 });
            }
        }
    }

    fn expect_ready(&self, what: &'static str) -> Result<(), ProtocolViolation> {
        if self.link == Link::Ready { Ok(()) } else { Err(ProtocolViolation::Unexpected(what)) }
    }
}

/// Uniform in `[0, bound]`, to the microsecond.
fn jitter(bound: Duration, rng: &mut impl Rng) -> Duration {
    let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.random_range(0..=micros))
}

#[cfg(test)]
mod tests;
