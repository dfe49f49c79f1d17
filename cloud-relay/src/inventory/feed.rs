//! What the relay sends its nodes of the merged inventory, computed once for all of them.
//!
//! Every commit that moves stock changes the inventory every connected node is sent. If
//! each connection followed the store's commits and built its own update, a thousand
//! nodes would cost a thousand updates per commit, and the relay would spend its time
//! copying counters (`fan-in` measured 60% of the relay's CPU in building updates, and
//! connections timing out behind them). So:
//!
//! - The feed *publishes* a version (the store's next offset) at most once per
//!   [`INVENTORY_PUSH_INTERVAL`]: a change after a quiet spell goes out at once, changes
//!   within the interval go out together at its end.
//! - Connections push when the published version moves, from the version their node has
//!   merged. Nodes that are caught up all ask for the same range, so its messages are
//!   built and encoded once ([`InventoryFeed::frames`]) and shared; a node that is behind
//!   (just connected, or slow) gets its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sync_protocol::wire::{InventoryUpdate, Message};
use tokio::sync::watch;

use crate::store::Store;

/// Shortest time between two published versions, so between two inventory pushes to a
/// node: a node sees other sites' stock at most this much later than it could.
pub const INVENTORY_PUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Encoded inventory updates from one version to another.
pub type Frames = Arc<Vec<Vec<u8>>>;

/// The published inventory version and the updates built for it.
pub struct InventoryFeed {
    store: Store,
    published: watch::Receiver<u64>,
    built: Mutex<Built>,
}

/// The updates built up to one published version, by the version they start from.
#[derive(Debug, Default)]
struct Built {
    to: u64,
    from: HashMap<u64, Frames>,
}

impl InventoryFeed {
    /// Starts publishing the versions of `store` (a task on the current runtime, which
    /// ends when the store closes).
    pub fn start(store: Store, interval: Duration) -> InventoryFeed {
        let offsets = store.next_offset();
        let (publish, published) = watch::channel(*offsets.borrow());
        tokio::spawn(run(offsets, publish, interval));
        InventoryFeed { store, published, built: Mutex::new(Built::default()) }
    }

    /// The published version: nodes are brought up to it when it moves.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.clone()
    }

    /// The messages that bring a node that has merged through `from` up to `to` (a
    /// published version), encoded; empty if nothing changed. Each carries `to` as its
    /// version and the last is marked complete. The state read is at least as new as
    /// `to` (keys that changed since are sent with their newer state, which the join
    /// makes harmless).
    pub fn frames(&self, from: u64, to: u64) -> Frames {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if to > built.to {
            *built = Built { to, from: HashMap::new() };
        }
        if to == built.to
            && let Some(frames) = built.from.get(&from)
        {
            return frames.clone();
        }
        let chunks = self.store.with_inventory(|inv| inv.changes_since(from));
        let count = chunks.len();
        let frames: Frames = Arc::new(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, state)| {
                    let update = InventoryUpdate { through_version: to, state, complete: i + 1 == count };
                    Message::Inventory(update).encode()
                })
                .collect(),
        );
        if to == built.to {
            built.from.insert(from, frames.clone());
        }
        frames
    }
}

/// Publishes the store's next offset when it moves, at most once per `interval`.
async fn run(mut offsets: watch::Receiver<u64>, publish: watch::Sender<u64>, interval: Duration) {
    loop {
        if offsets.changed().await.is_err() {
            return;
        }
        let version = *offsets.borrow_and_update();
        publish.send_replace(version);
        tokio::time::sleep(interval).await;
    }
}
