//! A simulated relay: one real [`Receiver`] per connection over a simulated store with a
//! single writer doing group commit, as in `cloud-relay`.
//!
//! Accepted batches queue for the writer without waiting. The writer takes everything
//! queued into one transaction, writes it (not yet durable), and after the commit latency
//! syncs it: only then do the connections hear the outcome and their receivers queue the
//! acks. A crash before the sync loses the transaction; a crash after it, before the acks
//! leave, loses only the acks. Inside the transaction the store checks again what the
//! receiver checked, because two connections of one node can overlap for a moment: the
//! prefix at or below the stored watermark is skipped and a gap is refused.
//!
//! The deltas of the records the transaction stores are part of it: they move their
//! actor's counters in the relay's inventory when the transaction is durable, so each is
//! applied exactly once, and a restarted relay rebuilds its inventory from the durable
//! transactions, as the real relay reads its `stock` rows and applies the log after their
//! checkpoint again (the real relay then gives the keys it applied again the log's end
//! as their version, where this one keeps the versions they had).
//!
//! [`InjectedBug`] breaks this on purpose, so that tests prove the checker notices.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use sync_protocol::inventory::{Actor, Delta};
use sync_protocol::{Epoch, Lane, NodeId, PerLane, Receiver, Record, Seq};

use super::disk::SimDisk;
use super::inventory::RelayInventory;

/// A relay defect that the simulator can switch on to prove its checker fails. It exists
/// only in the simulator: the real relay has no such switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// Acknowledge a batch as soon as it is accepted, before its commit is durable.
    AckBeforeCommit,
    /// Store every batch whole, without skipping the prefix the relay already holds.
    ReapplyRetransmission,
    /// Store the log right, but apply the inventory deltas of every record received,
    /// including a retransmitted prefix the watermark already covers.
    ReapplyRetransmittedDeltas,
}

impl InjectedBug {
    /// Every injectable bug.
    pub const ALL: [InjectedBug; 3] = [
        InjectedBug::AckBeforeCommit,
        InjectedBug::ReapplyRetransmission,
        InjectedBug::ReapplyRetransmittedDeltas,
    ];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            InjectedBug::AckBeforeCommit => "ack-before-commit",
            InjectedBug::ReapplyRetransmission => "reapply-retransmission",
            InjectedBug::ReapplyRetransmittedDeltas => "reapply-retransmitted-deltas",
        }
    }
}

impl fmt::Display for InjectedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown bug name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bug {0:?}; one of ack-before-commit, reapply-retransmission, reapply-retransmitted-deltas")]
pub struct UnknownBug(pub String);

impl FromStr for InjectedBug {
    type Err = UnknownBug;
    fn from_str(s: &str) -> Result<Self, UnknownBug> {
        InjectedBug::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| UnknownBug(s.to_owned()))
    }
}

/// `(node, epoch, lane)`: one sequence the relay keeps a watermark for.
pub type StreamKey = (usize, Epoch, Lane);

/// One entry of the relay's ordered log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The origin node.
    pub node: usize,
    /// Its store's epoch.
    pub epoch: Epoch,
    /// The lane.
    pub lane: Lane,
    /// The seq in that lane.
    pub seq: u64,
    /// The event.
    pub record: Record,
}

/// One write transaction of the writer.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// New log entries, in order.
    pub entries: Vec<LogEntry>,
    /// New watermarks.
    pub marks: Vec<(StreamKey, u64)>,
    /// The inventory deltas of the new entries, with their actors.
    pub deltas: Vec<(Actor, Delta)>,
    /// Records dropped because the stream's watermark already covered them.
    pub skipped: usize,
}

/// An accepted batch queued for the writer.
#[derive(Debug, Clone)]
pub struct Append {
    /// The connection to tell the outcome.
    pub conn: u64,
    /// The node.
    pub node: usize,
    /// Its id, which names its inventory actor with the epoch.
    pub node_id: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
    /// The lane.
    pub lane: Lane,
    /// The seq of `records[0]`.
    pub first_seq: u64,
    /// The events.
    pub records: Vec<Record>,
    /// Whether the receiver handed it out (and so expects `handle_committed`).
    pub from_receiver: bool,
}

/// The writer's answer to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored (or already stored) through this seq.
    Stored(Seq),
    /// It would leave a gap after the watermark.
    Gap {
        /// The stored watermark.
        watermark: u64,
    },
}

/// The relay's store on a simulated disk.
#[derive(Debug, Default)]
pub struct RelayStore {
    disk: SimDisk<Txn>,
    /// The ordered log.
    pub log: Vec<LogEntry>,
    /// Durable watermark per stream.
    pub watermarks: BTreeMap<StreamKey, u64>,
    /// The merged inventory of the durable transactions.
    pub inventory: RelayInventory,
    /// Deltas that could not be applied (a counter overflow), which the real relay logs.
    pub inventory_errors: u64,
}

impl RelayStore {
    /// The transaction for a group of appends, judged against the durable watermarks
    /// (the single writer has nothing else in flight), and each append's outcome.
    pub fn prepare(&self, appends: &[Append], bug: Option<InjectedBug>) -> (Txn, Vec<AppendOutcome>) {
        let mut marks: BTreeMap<StreamKey, u64> = BTreeMap::new();
        let mut txn = Txn::default();
        let mut outcomes = Vec::with_capacity(appends.len());
        for append in appends {
            let key = (append.node, append.epoch, append.lane);
            let watermark =
                marks.get(&key).or_else(|| self.watermarks.get(&key)).copied().unwrap_or_default();
            let reapply = bug == Some(InjectedBug::ReapplyRetransmission);
            let reapply_deltas = bug == Some(InjectedBug::ReapplyRetransmittedDeltas);
            let actor = Actor { node_id: append.node_id.clone(), epoch: append.epoch };
            if append.first_seq > watermark + 1 && !reapply {
                outcomes.push(AppendOutcome::Gap { watermark });
                continue;
            }
            let mut seq = append.first_seq;
            for record in &append.records {
                if seq > watermark || reapply {
                    txn.entries.push(LogEntry {
                        node: append.node,
                        epoch: append.epoch,
                        lane: append.lane,
                        seq,
                        record: record.clone(),
                    });
                    txn.deltas.extend(record.deltas.iter().map(|d| (actor.clone(), d.clone())));
                } else {
                    txn.skipped += 1;
                    if reapply_deltas {
                        txn.deltas.extend(record.deltas.iter().map(|d| (actor.clone(), d.clone())));
                    }
                }
                seq += 1;
            }
            let last = seq - 1;
            if last > watermark {
                marks.insert(key, last);
            }
            match Seq::new(last) {
                Some(through) => outcomes.push(AppendOutcome::Stored(through)),
                None => outcomes.push(AppendOutcome::Gap { watermark }),
            }
        }
        txn.marks = marks.into_iter().collect();
        (txn, outcomes)
    }

    /// Writes a transaction; it is not durable until [`RelayStore::sync`].
    pub fn write(&mut self, txn: Txn) {
        self.disk.write(txn);
    }

    /// The fsync: what was written becomes durable and visible. Returns where the new
    /// entries are in [`RelayStore::log`].
    pub fn sync(&mut self) -> Range<usize> {
        let start = self.log.len();
        let first = self.disk.synced().len();
        self.disk.sync();
        let disk = std::mem::take(&mut self.disk);
        for txn in &disk.synced()[first..] {
            self.apply(txn);
        }
        self.disk = disk;
        start..self.log.len()
    }

    /// A power cut and the restart after it.
    pub fn crash_and_recover(&mut self) -> usize {
        let lost = self.disk.crash();
        self.log.clear();
        self.watermarks.clear();
        self.inventory = RelayInventory::default();
        self.inventory_errors = 0;
        let disk = std::mem::take(&mut self.disk);
        for txn in disk.synced() {
            self.apply(txn);
        }
        self.disk = disk;
        lost
    }

    /// The durable watermarks of `(node, epoch)`.
    pub fn watermarks_of(&self, node: usize, epoch: Epoch) -> PerLane<u64> {
        PerLane::from_fn(|lane| self.watermark(node, epoch, lane))
    }

    /// The durable watermark of one stream.
    pub fn watermark(&self, node: usize, epoch: Epoch, lane: Lane) -> u64 {
        self.watermarks.get(&(node, epoch, lane)).copied().unwrap_or_default()
    }

    /// The inventory version: the log's next offset. Every change up to it is durable.
    pub fn inventory_version(&self) -> u64 {
        self.log.len() as u64
    }

    fn apply(&mut self, txn: &Txn) {
        self.log.extend(txn.entries.iter().cloned());
        for (key, mark) in &txn.marks {
            self.watermarks.insert(*key, *mark);
        }
        let version = self.inventory_version();
        self.inventory_errors += self.inventory.apply(&txn.deltas, version);
    }
}

/// Where a planned relay crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayCrashPoint {
    /// At once.
    Now,
    /// When the next group is durable, before any of its acks leaves.
    AfterNextCommit,
    /// When the next batch is accepted, before its commit.
    BeforeNextCommit,
}

/// The relay side of one connection.
#[derive(Debug)]
pub struct RelayConn {
    /// The node it serves.
    pub node: usize,
    /// The protocol state machine.
    pub receiver: Receiver,
    /// The welcomed epoch.
    pub epoch: Option<Epoch>,
    /// The inventory version the node has been sent (or merged, from its Hello).
    pub inventory_sent: u64,
    /// An inventory push is scheduled.
    pub push_pending: bool,
}

/// The relay process.
#[derive(Debug)]
pub struct Relay {
    /// Whether the process runs.
    pub up: bool,
    /// Incremented at each crash, so that a dead writer's completion is ignored.
    pub inc: u32,
    /// The store.
    pub store: RelayStore,
    /// Open connections.
    pub conns: BTreeMap<u64, RelayConn>,
    /// The newest connection of each node.
    pub by_node: BTreeMap<usize, u64>,
    /// Appends waiting for the writer.
    pub queue: Vec<Append>,
    /// The group being committed.
    pub writing: Option<(Vec<Append>, Vec<AppendOutcome>)>,
    /// A crash waiting for its moment.
    pub crash_point: Option<RelayCrashPoint>,
    /// A defect switched on for a test.
    pub bug: Option<InjectedBug>,
}

impl Relay {
    /// A running relay with an empty store.
    pub fn new(bug: Option<InjectedBug>) -> Self {
        Relay {
            up: true,
            inc: 0,
            store: RelayStore::default(),
            conns: BTreeMap::new(),
            by_node: BTreeMap::new(),
            queue: Vec::new(),
            writing: None,
            crash_point: None,
            bug,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
