//! The seeded workload: scanners posting events of every kind to their node, retrying
//! what went unanswered, repeating answered posts (duplicates) and now and then reusing an
//! `event_id` with another payload (a conflict).
//!
//! The [`Ledger`] keeps every answer a scanner got: it is what "acknowledged" means for
//! the invariants, and what checks that a repeated post gets its original seq.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use sync_protocol::inventory::TRANSFER_TO;
use sync_protocol::{Epoch, Event, EventId, Kind, Lane, ParseError};

/// Share of posts that repeat an earlier event with the same payload.
const DUPLICATE_SHARE: f64 = 0.08;
/// Share of posts that reuse an earlier `event_id` with another payload.
const CONFLICT_SHARE: f64 = 0.03;

/// One post a scanner makes (and makes again until it is answered).
#[derive(Debug, Clone)]
pub struct Post {
    /// The event.
    pub event: Event,
    /// The scanner's number for the event, for the trace.
    pub number: u32,
    /// Whether the payload deliberately differs from an earlier post of this id.
    pub conflict: bool,
}

/// A handheld scanner bound to one node.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// The node it posts to.
    pub node: usize,
    /// Its number on that node.
    pub index: usize,
    /// A post that got no answer yet; it is retried until it gets one.
    pub pending: Option<Post>,
    /// Events it posted, to repeat or contradict.
    posted: Vec<Event>,
    next_number: u32,
}

impl Scanner {
    /// A scanner with nothing posted yet.
    pub fn new(node: usize, index: usize) -> Self {
        Scanner { node, index, pending: None, posted: Vec::new(), next_number: 0 }
    }

    /// The next post: the unanswered one again, a duplicate, a conflict, or a new event.
    pub fn next_post(&mut self, rng: &mut StdRng) -> Result<Post, ParseError> {
        if let Some(post) = &self.pending {
            return Ok(post.clone());
        }
        if !self.posted.is_empty() && rng.random_bool(DUPLICATE_SHARE) {
            let event = self.posted[rng.random_range(0..self.posted.len())].clone();
            return Ok(Post { event, number: self.next_number, conflict: false });
        }
        if !self.posted.is_empty() && rng.random_bool(CONFLICT_SHARE) {
            let mut event = self.posted[rng.random_range(0..self.posted.len())].clone();
            event.qty = if event.qty == 1 { 2 } else { 1 };
            return Ok(Post { event, number: self.next_number, conflict: true });
        }
        let number = self.next_number;
        self.next_number += 1;
        let event = new_event(self.node, self.index, number, rng)?;
        self.posted.push(event.clone());
        Ok(Post { event, number, conflict: false })
    }

    /// How long until the next new post: about two a second per scanner.
    pub fn think_time(rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.random_range(50..=900))
    }

    /// How long until an unanswered post is retried.
    pub fn retry_delay(rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.random_range(300..=2_000))
    }
}

/// Locations the workload uses; few, so that keys are shared between nodes and counts
/// and transfers meet moves made elsewhere.
const LOCATIONS: u32 = 4;

/// A new event; kinds in the mix of a real site (scans dominate, shipments are rarer).
/// A transfer moves its quantity to another of the locations (`attrs.to_location`).
pub fn new_event(node: usize, scanner: usize, number: u32, rng: &mut StdRng) -> Result<Event, ParseError> {
    let kind = match rng.random_range(0..100) {
        0..40 => Kind::Scan,
        40..52 => Kind::Receive,
        52..64 => Kind::Pick,
        64..72 => Kind::Ship,
        72..78 => Kind::Dispatch,
        78..86 => Kind::Adjust,
        86..93 => Kind::Count,
        _ => Kind::Transfer,
    };
    let qty = match kind {
        Kind::Adjust => {
            let q: i64 = rng.random_range(1..=10);
            if rng.random_bool(0.5) { -q } else { q }
        }
        _ => rng.random_range(1..=20),
    };
    let location = rng.random_range(0..LOCATIONS);
    let mut attrs = BTreeMap::new();
    if kind == Kind::Transfer {
        let to = (location + rng.random_range(1..LOCATIONS)) % LOCATIONS;
        attrs.insert(TRANSFER_TO.to_owned(), format!("BIN-{to}"));
    }
    let event = Event {
        event_id: format!("n{node}-s{scanner}-{number}").try_into()?,
        kind,
        sku: format!("SKU-{}", rng.random_range(0..8)).try_into()?,
        location: format!("BIN-{location}").try_into()?,
        qty,
        occurred_at: None,
        device_id: Some(format!("hs-{node}-{scanner}")),
        shipment_id: matches!(kind, Kind::Ship | Kind::Dispatch).then(|| format!("SH-{number}")),
        order_id: (kind == Kind::Pick).then(|| format!("ORD-{number}")),
        attrs,
    };
    event.validate()?;
    Ok(event)
}

/// Where an answered event lives: `(node, epoch, lane, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placed {
    /// The node.
    pub node: usize,
    /// The node store's epoch when it answered.
    pub epoch: Epoch,
    /// The lane.
    pub lane: Lane,
    /// The seq it was given.
    pub seq: u64,
}

/// What the store holds under an `event_id`, as far as the scanners were told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Where it lives.
    pub placed: Placed,
    /// Whether the stored payload is a deliberately conflicting one.
    pub conflict: bool,
}

/// Every answer the scanners got.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Each acknowledged event once, by where it lives.
    pub answered: Vec<Placed>,
    /// The first 201 or 200 per `(node, epoch, event_id)`.
    pub by_id: BTreeMap<(usize, Epoch, EventId), Stored>,
}

impl Ledger {
    /// Records a 201 or 200.
    pub fn record(&mut self, stored: Stored, event_id: &EventId) {
        let placed = stored.placed;
        let key = (placed.node, placed.epoch, event_id.clone());
        if let std::collections::btree_map::Entry::Vacant(entry) = self.by_id.entry(key) {
            entry.insert(stored);
            self.answered.push(placed);
        }
    }

    /// What `node` answered for `event_id` in `epoch`, if anything.
    pub fn stored(&self, node: usize, epoch: Epoch, event_id: &EventId) -> Option<Stored> {
        self.by_id.get(&(node, epoch, event_id.clone())).copied()
    }
}
