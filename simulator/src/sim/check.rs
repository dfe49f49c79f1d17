//! The invariant checker, in the vocabulary of FAULTS.md: **always** checks run at every
//! step under faults, **eventually** checks after the network healed and everything had
//! its budget to converge, **finally** checks on the end state.
//!
//! Each violation names its invariant and the seed, and carries the last lines of the
//! trace, so that it reads as a story and replays with `outpost-sim sim --seed`.
//!
//! Extension point: end-state checks implement [`FinalCheck`] and are listed in
//! [`final_checks`]. The inventory checks are there: F1 (every replica equals the relay's
//! merged inventory, which equals the fold of the relay log's deltas per actor) and F3
//! (every negative merged value is listed as an exception).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sync_protocol::{Epoch, EventId, Lane, Record};

use super::inventory::{self, Fold};
use super::node::Node;
use super::relay::{InjectedBug, LogEntry, RelayStore, StreamKey};
use super::workload::Ledger;

/// When an invariant must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// At every instant, under any fault.
    Always,
    /// After the faults stop, within a budget.
    Eventually,
    /// At the end.
    Finally,
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::Always => "always",
            Modality::Eventually => "eventually",
            Modality::Finally => "finally",
        })
    }
}

/// The invariants the simulator checks (ids from FAULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// A1: an answered event is in the node's store until the relay holds it.
    NoAcknowledgedLoss,
    /// A2: the relay log holds each `(node, epoch, lane, seq)` and each `event_id` of
    /// an epoch at most once.
    NoDuplicateEffect,
    /// A3: within `(node, epoch, lane)` the relay log is 1, 2, 3, … with no gap, and
    /// each entry is the node's event of that seq.
    Order,
    /// A4: the relay's durable watermark and the node's recorded ack never go back.
    MonotoneWatermarks,
    /// A5: the relay acknowledges only what it has committed.
    AckAfterDurability,
    /// A6: a repeated post gets its original seq; another payload gets a conflict.
    IdempotentAnswers,
    /// A well-formed peer never sees a protocol violation from an honest one.
    NoProtocolViolation,
    /// A node's own inventory counters equal the fold of its own durable events
    /// (PROTOCOL.md, "Inventory CRDT"), after every merge and every crash.
    OwnStockIsFold,
    /// E1: every answered event of a live store reaches the relay log.
    EveryAnsweredEventAtRelay,
    /// E2: every backlog drains and every node is connected, within the budget.
    BacklogsDrain,
    /// E3: every node's inventory replica converges to the relay's merged inventory.
    InventoryConverges,
    /// F1: every replica equals the relay's merged inventory, and that is the fold of
    /// the relay log's deltas, per actor.
    InventoryMatchesLog,
    /// F2: for every lane, the node's store and the relay's log agree.
    NodeAndRelayAgree,
    /// F3: every key whose merged value is below zero is listed as an exception.
    NegativeStockReported,
    /// Nothing panics, not the protocol core, not the simulator.
    NoPanic,
    /// The simulator itself went wrong (a workload it could not build).
    Harness,
}

impl Invariant {
    /// The FAULTS.md id, or a short tag for checks FAULTS.md does not number.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::NoAcknowledgedLoss => "A1",
            Invariant::NoDuplicateEffect => "A2",
            Invariant::Order => "A3",
            Invariant::MonotoneWatermarks => "A4",
            Invariant::AckAfterDurability => "A5",
            Invariant::IdempotentAnswers => "A6",
            Invariant::NoProtocolViolation => "A9",
            Invariant::OwnStockIsFold => "INV",
            Invariant::EveryAnsweredEventAtRelay => "E1",
            Invariant::BacklogsDrain => "E2",
            Invariant::InventoryConverges => "E3",
            Invariant::InventoryMatchesLog => "F1",
            Invariant::NodeAndRelayAgree => "F2",
            Invariant::NegativeStockReported => "F3",
            Invariant::NoPanic => "A9",
            Invariant::Harness => "SIM",
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoAcknowledgedLoss => "no acknowledged loss",
            Invariant::NoDuplicateEffect => "no duplicate effect",
            Invariant::Order => "per-lane order without gaps",
            Invariant::MonotoneWatermarks => "monotone watermarks",
            Invariant::AckAfterDurability => "ack after durability",
            Invariant::IdempotentAnswers => "idempotent answers",
            Invariant::NoProtocolViolation => "no protocol violation",
            Invariant::OwnStockIsFold => "own inventory is the fold of own events",
            Invariant::EveryAnsweredEventAtRelay => "every answered event at the relay",
            Invariant::BacklogsDrain => "backlogs drain",
            Invariant::InventoryConverges => "inventory converges",
            Invariant::InventoryMatchesLog => "inventory is the fold of the log",
            Invariant::NodeAndRelayAgree => "node and relay agree",
            Invariant::NegativeStockReported => "negative stock reported",
            Invariant::NoPanic => "no panic",
            Invariant::Harness => "simulator error",
        }
    }

    /// When it must hold.
    pub fn modality(self) -> Modality {
        match self {
            Invariant::EveryAnsweredEventAtRelay
            | Invariant::BacklogsDrain
            | Invariant::InventoryConverges => Modality::Eventually,
            Invariant::InventoryMatchesLog
            | Invariant::NodeAndRelayAgree
            | Invariant::NegativeStockReported => Modality::Finally,
            _ => Modality::Always,
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.modality(), self.id(), self.name())
    }
}

/// A broken invariant, found at one seed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// The seed that found it.
    pub seed: u64,
    /// Virtual time of the finding.
    pub at_ms: u64,
    /// What exactly, with the values.
    pub detail: String,
    /// The last trace lines.
    pub trace: Vec<String>,
    /// The bug that was switched on, if any, for the replay command.
    pub bug: Option<InjectedBug>,
}

impl Violation {
    /// The command that replays this seed with its full trace.
    pub fn replay_command(&self) -> String {
        match self.bug {
            Some(bug) => format!("outpost-sim sim --seed {} --inject-bug {bug}", self.seed),
            None => format!("outpost-sim sim --seed {}", self.seed),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "violation: {} at seed {} (t={} ms)", self.invariant, self.seed, self.at_ms)?;
        writeln!(f, "  {}", self.detail)?;
        writeln!(f, "last {} trace lines:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: {}", self.replay_command())
    }
}

/// A finding before it gets its seed and trace.
pub type Finding = (Invariant, String);

/// What the checker remembers of the relay's log to judge each new entry.
#[derive(Debug, Default)]
pub struct Checker {
    last_seq: BTreeMap<StreamKey, u64>,
    ids: BTreeSet<(usize, Epoch, EventId)>,
    marks: BTreeMap<StreamKey, u64>,
}

impl Checker {
    /// Always: a new durable log entry is the next of its stream, once, and is the node's
    /// event of that seq (`expected`).
    pub fn on_log_entry(&mut self, entry: &LogEntry, expected: Option<&Record>) -> Result<(), Finding> {
        let key = (entry.node, entry.epoch, entry.lane);
        let last = self.last_seq.entry(key).or_default();
        let stream = format!("node-{}/{}/{}", entry.node, entry.epoch, entry.lane);
        if entry.seq <= *last {
            return Err((
                Invariant::NoDuplicateEffect,
                format!("{stream} seq {} stored again (log already through {last})", entry.seq),
            ));
        }
        if entry.seq != *last + 1 {
            return Err((Invariant::Order, format!("{stream} seq {} follows {last}: a gap", entry.seq)));
        }
        *last = entry.seq;
        if expected != Some(&entry.record) {
            return Err((
                Invariant::Order,
                format!(
                    "{stream} seq {} holds {} but the node's seq {} is {:?}",
                    entry.seq,
                    entry.record.event.event_id,
                    entry.seq,
                    expected.map(|r| r.event.event_id.as_str())
                ),
            ));
        }
        let id = (entry.node, entry.epoch, entry.record.event.event_id.clone());
        if !self.ids.insert(id) {
            return Err((
                Invariant::NoDuplicateEffect,
                format!("{stream} event_id {} stored twice", entry.record.event.event_id),
            ));
        }
        Ok(())
    }

    /// Always: no durable watermark moved back (after a commit, and after a restart).
    pub fn on_watermarks(&mut self, store: &RelayStore) -> Result<(), Finding> {
        for (key, seen) in &self.marks {
            let now = store.watermarks.get(key).copied().unwrap_or_default();
            if now < *seen {
                let (node, epoch, lane) = key;
                return Err((
                    Invariant::MonotoneWatermarks,
                    format!("relay watermark of node-{node}/{epoch}/{lane} went back from {seen} to {now}"),
                ));
            }
        }
        self.marks.extend(store.watermarks.iter().map(|(k, v)| (*k, *v)));
        Ok(())
    }
}

/// What the eventually and finally checks look at.
#[derive(Debug)]
pub struct EndState<'a> {
    /// Every node.
    pub nodes: &'a [Node],
    /// The relay's store.
    pub relay: &'a RelayStore,
    /// Every answer the scanners got.
    pub ledger: &'a Ledger,
}

/// Eventually, E1: every answered event of a store that still exists is at the relay.
/// (Events answered by a store that was later wiped before they replicated are gone with
/// the box; FAULTS.md F13 covers that case.)
pub fn every_answered_event_at_relay(end: &EndState<'_>) -> Result<(), Finding> {
    for placed in &end.ledger.answered {
        let Some(node) = end.nodes.get(placed.node) else { continue };
        if placed.epoch != node.store.epoch {
            continue;
        }
        let mark = end.relay.watermark(placed.node, placed.epoch, placed.lane);
        if mark < placed.seq {
            return Err((
                Invariant::EveryAnsweredEventAtRelay,
                format!(
                    "node-{}/{}/{} seq {} was answered but the relay holds only through {mark}",
                    placed.node, placed.epoch, placed.lane, placed.seq
                ),
            ));
        }
    }
    Ok(())
}

/// An end-state check.
pub trait FinalCheck {
    /// The invariant it decides.
    fn invariant(&self) -> Invariant;
    /// `Err` with the details when the end state breaks it.
    fn check(&self, end: &EndState<'_>) -> Result<(), String>;
}

/// Every end-state check, in order.
pub fn final_checks() -> Vec<Box<dyn FinalCheck>> {
    vec![Box::new(NodeAndRelayAgree), Box::new(InventoryMatchesLog), Box::new(NegativeStockReported)]
}

/// F1: the relay's merged inventory is, per key and actor `(node, epoch)`, the sum of
/// the deltas of that actor's records in the relay log, and every node's replica equals
/// it (counter for counter, so also value for value).
#[derive(Debug)]
pub struct InventoryMatchesLog;

impl FinalCheck for InventoryMatchesLog {
    fn invariant(&self) -> Invariant {
        Invariant::InventoryMatchesLog
    }

    fn check(&self, end: &EndState<'_>) -> Result<(), String> {
        let mut fold = Fold::new();
        for entry in &end.relay.log {
            let Some(node) = end.nodes.get(entry.node) else {
                return Err(format!("the relay log holds an entry of unknown node-{}", entry.node));
            };
            let actor = sync_protocol::inventory::Actor {
                node_id: node.identity.node_id.clone(),
                epoch: entry.epoch,
            };
            inventory::fold_into(&mut fold, &actor, &entry.record.deltas);
        }
        let merged = end.relay.inventory.merged();
        if let Some(diff) = inventory::first_difference(&fold, &inventory::contributions(merged)) {
            return Err(format!("the relay's merged inventory is not the fold of its log: {diff}"));
        }
        if end.relay.inventory_errors > 0 {
            return Err(format!("the relay could not apply {} deltas", end.relay.inventory_errors));
        }
        for node in end.nodes {
            if let Some(diff) = inventory::first_stock_difference(node.store.replica(), merged) {
                return Err(format!(
                    "node-{}/{} replica differs from the relay's: {diff}",
                    node.index, node.store.epoch
                ));
            }
        }
        Ok(())
    }
}

/// F3: the relay lists exactly the keys whose merged value is below zero.
#[derive(Debug)]
pub struct NegativeStockReported;

impl FinalCheck for NegativeStockReported {
    fn invariant(&self) -> Invariant {
        Invariant::NegativeStockReported
    }

    fn check(&self, end: &EndState<'_>) -> Result<(), String> {
        let inventory = &end.relay.inventory;
        let negative: BTreeSet<_> = inventory
            .merged()
            .iter()
            .filter(|(key, _)| inventory.merged().value(key).is_ok_and(|v| v < 0))
            .map(|(key, _)| key)
            .collect();
        let listed: BTreeSet<_> = inventory.negative().iter().collect();
        match negative.symmetric_difference(&listed).next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "{key} has merged value {:?} but is{} listed as an exception",
                inventory.merged().value(key).ok(),
                if listed.contains(key) { "" } else { " not" }
            )),
        }
    }
}

/// F2 for the simulated stores: per lane, the relay log's entries of a node's current
/// epoch are exactly the node's records, in order.
#[derive(Debug)]
pub struct NodeAndRelayAgree;

impl FinalCheck for NodeAndRelayAgree {
    fn invariant(&self) -> Invariant {
        Invariant::NodeAndRelayAgree
    }

    fn check(&self, end: &EndState<'_>) -> Result<(), String> {
        let mut relay: BTreeMap<StreamKey, Vec<&Record>> = BTreeMap::new();
        for entry in &end.relay.log {
            relay.entry((entry.node, entry.epoch, entry.lane)).or_default().push(&entry.record);
        }
        for node in end.nodes {
            for lane in Lane::ALL {
                let mine = node.store.records(lane);
                let theirs = relay.get(&(node.index, node.store.epoch, lane)).map_or(&[][..], Vec::as_slice);
                let same = mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| a == *b);
                if !same {
                    return Err(format!(
                        "node-{}/{}/{lane}: the node holds {} events, the relay log {} (or they differ)",
                        node.index,
                        node.store.epoch,
                        mine.len(),
                        theirs.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
