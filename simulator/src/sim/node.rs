//! A simulated node: the real [`Sender`] state machine over a simulated store.
//!
//! The store keeps what `node/src/store.rs` keeps, with the same commit points: an event
//! is appended, given the next seq of its lane and synced before the scanner is answered;
//! idempotency by `event_id` is checked in the same step (a repeat returns the original
//! seq, another payload is a conflict); the acked watermark is written without a sync of
//! its own, so a crash may take it back and the node resends what the relay then skips.

use std::collections::BTreeMap;
use std::time::Duration;

use sync_protocol::{Epoch, Event, EventId, Lane, NodeIdentity, PerLane, Record, Sender};

use super::disk::SimDisk;

/// What the node writes to its disk.
#[derive(Debug, Clone)]
pub enum NodeOp {
    /// The next event of a lane.
    Append {
        /// The lane.
        lane: Lane,
        /// The event and its receive time, boxed so that the small writes stay small.
        record: Box<Record>,
    },
    /// The relay acknowledged the lane through a seq.
    Acked {
        /// The lane.
        lane: Lane,
        /// The watermark.
        through: u64,
    },
}

/// The store's answer to a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new event, durable, with its seq.
    Created {
        /// The lane.
        lane: Lane,
        /// Its seq.
        seq: u64,
    },
    /// The same payload was posted before under this id.
    Duplicate {
        /// The lane.
        lane: Lane,
        /// The original seq.
        seq: u64,
    },
    /// Another payload was posted before under this id.
    Conflict,
}

/// The node's store, on a simulated disk.
#[derive(Debug, Clone)]
pub struct NodeStore {
    /// The store's epoch, drawn when it was created.
    pub epoch: Epoch,
    disk: SimDisk<NodeOp>,
    lanes: PerLane<Vec<Record>>,
    ids: BTreeMap<EventId, (Lane, u64)>,
    acked: PerLane<u64>,
}

impl NodeStore {
    /// An empty store.
    pub fn new(epoch: Epoch) -> Self {
        NodeStore {
            epoch,
            disk: SimDisk::default(),
            lanes: PerLane::default(),
            ids: BTreeMap::new(),
            acked: PerLane::default(),
        }
    }

    /// Appends `event` unless its id is known, and syncs before returning: the answer may
    /// go to the scanner once this returns.
    pub fn append(&mut self, event: &Event, received_at_ms: u64) -> Appended {
        if let Some(&(lane, seq)) = self.ids.get(&event.event_id) {
            let same = self.lanes.get(lane).get(seq as usize - 1).is_some_and(|r| r.event == *event);
            return if same { Appended::Duplicate { lane, seq } } else { Appended::Conflict };
        }
        let lane = event.default_lane();
        let record = Record { received_at_ms, event: event.clone(), deltas: Vec::new() };
        self.disk.write(NodeOp::Append { lane, record: Box::new(record.clone()) });
        self.disk.sync();
        let seq = self.apply_append(lane, record);
        Appended::Created { lane, seq }
    }

    /// Records the relay's ack, without a sync: it becomes durable with the next append.
    pub fn record_acked(&mut self, lane: Lane, through: u64) {
        self.disk.write(NodeOp::Acked { lane, through });
        *self.acked.get_mut(lane) = through;
    }

    /// A power cut and the restart after it: the store is what the disk synced.
    pub fn crash_and_recover(&mut self) -> usize {
        let lost = self.disk.crash();
        self.lanes = PerLane::default();
        self.ids.clear();
        self.acked = PerLane::default();
        let ops = std::mem::take(&mut self.disk);
        for op in ops.synced() {
            match op {
                NodeOp::Append { lane, record } => {
                    self.apply_append(*lane, (**record).clone());
                }
                NodeOp::Acked { lane, through } => *self.acked.get_mut(*lane) = *through,
            }
        }
        self.disk = ops;
        lost
    }

    /// The highest seq of each lane.
    pub fn heads(&self) -> PerLane<u64> {
        PerLane::from_fn(|lane| self.lanes.get(lane).len() as u64)
    }

    /// The recorded acked watermark of each lane.
    pub fn acked(&self) -> PerLane<u64> {
        self.acked
    }

    /// Every record of `lane`, seq 1 first.
    pub fn records(&self, lane: Lane) -> &[Record] {
        self.lanes.get(lane)
    }

    /// `count` records of `lane` from `first`, if the store holds them all.
    pub fn read(&self, lane: Lane, first: u64, count: u32) -> Option<&[Record]> {
        let from = usize::try_from(first.checked_sub(1)?).ok()?;
        self.lanes.get(lane).get(from..from + count as usize)
    }

    /// The seq of `event_id`, if stored.
    pub fn seq_of(&self, event_id: &EventId) -> Option<(Lane, u64)> {
        self.ids.get(event_id).copied()
    }

    fn apply_append(&mut self, lane: Lane, record: Record) -> u64 {
        let records = self.lanes.get_mut(lane);
        let seq = records.len() as u64 + 1;
        self.ids.insert(record.event.event_id.clone(), (lane, seq));
        records.push(record);
        seq
    }
}

/// Where a planned node crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCrashPoint {
    /// At once.
    Now,
    /// After the next new event is durable, before the scanner hears the answer.
    BeforeNextAnswer,
    /// When the next ack arrives, before the sender records it.
    OnNextAck,
}

/// A node: its store, and while it runs, its sender.
#[derive(Debug)]
pub struct Node {
    /// Its position in the simulation.
    pub index: usize,
    /// Who it is.
    pub identity: NodeIdentity,
    /// Whether the process runs.
    pub up: bool,
    /// Incremented at each crash, so timers of a dead process are ignored.
    pub inc: u32,
    /// The store.
    pub store: NodeStore,
    /// The state machine, while the process runs.
    pub sender: Option<Sender>,
    /// The connection it is dialing or using.
    pub conn: Option<u64>,
    /// The sender's wake-up already scheduled.
    pub timer_at: Option<Duration>,
    /// The acked watermark recorded in this incarnation, per lane (never backwards).
    pub recorded: PerLane<u64>,
    /// The records of earlier epochs, kept for the checker after a wipe.
    pub archive: BTreeMap<Epoch, PerLane<Vec<Record>>>,
    /// A crash waiting for its moment.
    pub crash_point: Option<NodeCrashPoint>,
    /// The sender's batch size.
    pub batch_events_max: u32,
    /// The sender's window.
    pub batches_in_flight_max: u32,
}

impl Node {
    /// The records of `(epoch, lane)`, current or archived.
    pub fn records_of(&self, epoch: Epoch, lane: Lane) -> &[Record] {
        if epoch == self.store.epoch {
            self.store.records(lane)
        } else {
            self.archive.get(&epoch).map_or(&[], |lanes| lanes.get(lane).as_slice())
        }
    }
}

#[cfg(test)]
mod tests;
