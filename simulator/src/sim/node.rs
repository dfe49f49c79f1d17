//! A simulated node: the real [`Sender`] state machine over a simulated store.
//!
//! The store keeps what `node/src/store.rs` keeps, with the same commit points: an event
//! is appended, given the next seq of its lane and synced before the scanner is answered;
//! idempotency by `event_id` is checked in the same step (a repeat returns the original
//! seq, another payload is a conflict); the acked watermark is written without a sync of
//! its own, so a crash may take it back and the node resends what the relay then skips.
//!
//! The store also keeps the node's inventory replica, as the real store's `stock` table:
//! an append computes the event's deltas against the merged replica ([`deltas_of`]) and
//! moves the node's own actor by them in the same synced write, and an update from the
//! relay is merged with one synced write of its own (recording the relay's version when
//! the update is complete). After a crash the replica is therefore the fold of the
//! durable own events and the durably merged updates, nothing more and nothing less.

use std::collections::BTreeMap;
use std::time::Duration;

use sync_protocol::inventory::{Actor, Delta, Inventory, StockKey, deltas_of};
use sync_protocol::{
    Epoch, Event, EventId, InventoryUpdate, Lane, NodeId, NodeIdentity, PerLane, Record, Sender,
};

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
    /// Inventory from the relay, merged; its version counts once the update is complete.
    Merge(Box<InventoryUpdate>),
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
    /// Not stored: its inventory deltas cannot be applied (a transfer without a valid
    /// destination, or a counter overflow).
    Invalid,
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
    actor: Actor,
    replica: Inventory,
    inventory_version: u64,
}

impl NodeStore {
    /// An empty store of `node_id`: a new inventory actor.
    pub fn new(node_id: NodeId, epoch: Epoch) -> Self {
        NodeStore {
            epoch,
            disk: SimDisk::default(),
            lanes: PerLane::default(),
            ids: BTreeMap::new(),
            acked: PerLane::default(),
            actor: Actor { node_id, epoch },
            replica: Inventory::new(),
            inventory_version: 0,
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
        // The deltas are fixed now, against the merged replica, and an event moves all
        // its keys or none.
        let Ok(deltas) = deltas_of(event, |key| self.replica.value(key).unwrap_or(0)) else {
            return Appended::Invalid;
        };
        if !self.own_deltas_apply(&deltas) {
            return Appended::Invalid;
        }
        let record = Record { received_at_ms, event: event.clone(), deltas };
        self.disk.write(NodeOp::Append { lane, record: Box::new(record.clone()) });
        self.disk.sync();
        let seq = self.apply_append(lane, record);
        Appended::Created { lane, seq }
    }

    /// Merges inventory from the relay with a synced write; for an update marked complete
    /// the relay's version is recorded in the same write.
    pub fn merge_inventory(&mut self, update: InventoryUpdate) {
        self.apply_merge(&update);
        self.disk.write(NodeOp::Merge(Box::new(update)));
        self.disk.sync();
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
        self.replica = Inventory::new();
        self.inventory_version = 0;
        let ops = std::mem::take(&mut self.disk);
        for op in ops.synced() {
            match op {
                NodeOp::Append { lane, record } => {
                    self.apply_append(*lane, (**record).clone());
                }
                NodeOp::Merge(update) => self.apply_merge(update),
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

    /// This store's inventory actor.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The inventory replica: the node's own counters and what it merged.
    pub fn replica(&self) -> &Inventory {
        &self.replica
    }

    /// The relay inventory version merged durably.
    pub fn inventory_version(&self) -> u64 {
        self.inventory_version
    }

    /// The fold of the own deltas of every stored event, per key.
    pub fn own_fold(&self) -> BTreeMap<StockKey, i64> {
        let mut fold = BTreeMap::new();
        for lane in Lane::ALL {
            for delta in self.lanes.get(lane).iter().flat_map(|r| &r.deltas) {
                let sum: &mut i64 = fold.entry(delta.key.clone()).or_default();
                *sum = sum.saturating_add(delta.change);
            }
        }
        fold
    }

    /// Whether every own delta can be applied: the own counter of each key stays in
    /// range (the keys of one event are distinct, so each is judged alone).
    fn own_deltas_apply(&self, deltas: &[Delta]) -> bool {
        deltas.iter().all(|d| {
            let own = self.replica.stock(&d.key).map_or(Some(0), |s| s.contribution(&self.actor));
            own.and_then(|c| c.checked_add(d.change)).is_some()
        })
    }

    fn apply_merge(&mut self, update: &InventoryUpdate) {
        self.replica.merge(&update.state);
        if update.complete {
            self.inventory_version = update.through_version;
        }
    }

    fn apply_append(&mut self, lane: Lane, record: Record) -> u64 {
        // Checked before the write, so every delta applies on recovery as at the append.
        if self.own_deltas_apply(&record.deltas) {
            for delta in &record.deltas {
                self.replica.apply(&self.actor, delta).ok();
            }
        }
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
    /// The checker's fold of the own deltas of the events this store answered, per key,
    /// rebuilt from the durable records after a crash.
    pub own_fold: BTreeMap<StockKey, i64>,
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
