//! The node's durable store: a redb file with one writer thread doing group commit.
//!
//! # Tables
//! | table | key | value | written by |
//! |---|---|---|---|
//! | `meta` | `&str` name | `u64` | creation (`format_version`, `epoch`, `created_at_ms`); merge (`inventory_version`); stock checkpoint (`stock_through.<lane>`) |
//! | `identity` | `&str` name | `&str` | creation, or the first open of an older store (`node_id`); a node with another id is refused ([`StoreError::OtherNode`]) |
//! | `runs.critical`, `runs.standard`, `runs.bulk` | `u64` seq of a run's first record | a run: consecutive [`Record`]s in their stored form ([`codec`]), each after its length | append (rows of at most 1,000 bytes per group and lane); prune removes or cuts |
//! | `event_ids` | `&str` event_id | `u64`: lane in the top two bits, seq below | append (in key order); prune removes |
//! | `lanes` | `u8` lane | `(u64 head, u64 acked, u64 backlog bytes)` | append (head, bytes), ack (acked, bytes) |
//! | `stock` | `(&str sku, &str location)` | postcard one-key [`Inventory`] | stock checkpoint (own deltas and merges) |
//! | `digests` | `(u8 lane, u64 block)` | [`BlockDigest`] bytes | append; never pruned |
//!
//! A table per lane keeps each lane's events in seq order at the end of their own tree, so
//! appends fill redb's leaves instead of splitting them in the middle of a shared tree
//! (format 3; the layout of format 2 kept the three lanes in one `events` table). For the
//! same reason a group inserts its `event_id`s in key order, after its events: ids that
//! grow over time (a counter, a time-ordered UUID) then append as well. Together they
//! took the store from 148 to 106 bytes per buffered event (`outpost-sim bench disk`);
//! records in their compact stored form and lane and seq in one `u64` in the id index
//! (format 4, [`codec`]) took it to 94–98. Runs of records, rows of up to 1,000 bytes
//! instead of one per record (format 5), save redb an insert per event and the key and
//! offset it stored with each: 85–90.
//!
//! The `stock` table is this node's replica of the inventory: its own actor's counters
//! and everyone else's as merged from the relay. `meta` holds `inventory_version`, the
//! relay version merged durably.
//!
//! # Stock checkpoints
//! The rows are written out at checkpoints, not with every group: an event moves a key
//! that sits at a random place in the table, so writing its row with each group rewrote
//! a leaf per moving event, and with it about 30% of the bytes a commit writes in
//! `ingest-batch` and `ingest-single` (`outpost-sim bench`). Between checkpoints the rows
//! lag behind this node's own events, never behind what it merged: each record carries
//! its deltas, and `meta` holds per lane the seq (`stock_through.<lane>`) through which
//! the rows hold them. Opening the store applies the deltas of the records after it
//! again, so after any crash this node's counters equal the fold of its stored events.
//! A checkpoint writes the row of every key moved since the last one and moves
//! `stock_through` to the heads, in the transaction of a group that:
//! - merges from the relay (whose rows hold this node's own counters as they stand),
//! - prunes (the records it removes could no longer be applied again),
//! - or brings the lag to [`STOCK_LAG_EVENTS_MAX`] events or [`STOCK_LAG_KEYS_MAX`]
//!   keys, which bounds what opening applies again and what the writer remembers;
//!
//! and a clean close ends with one if any key lags. In one run of `bench restart`, the
//! first 201 after `kill -9` with 10M events stored came 40 ms after the start.
//!
//! # Commit points
//! Every append runs in a write transaction with [`Durability::Immediate`]: `commit()`
//! returns after redb's fsync, and only then is any request of that transaction answered.
//! The idempotency lookup, the append and the new head are one transaction, so a crash
//! leaves either all of a request's events or none of them.
//!
//! A write error from the operating system (a full disk, a read-only filesystem, EIO)
//! fails the whole group: none of it is stored and every request of it gets the error.
//! redb refuses further writes after one, so the writer answers everything with the
//! failure until a probe write to the directory succeeds, then reopens the file and
//! carries on; see [`disk`] for the quota and the shedding of lanes under it.
//!
//! Acknowledgements are recorded with [`Durability::None`]: they become durable with the
//! next appending commit. Losing one to a crash costs a resend of events the relay skips
//! by its watermark, and the relay's Welcome corrects the value on reconnect.
//!
//! # Group commit
//! Request handlers send commands to one writer thread. The writer takes the first
//! command, then everything else already queued (up to [`GROUP_EVENTS_MAX`] events), and
//! applies all of it in one transaction: one fsync for the whole group.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use sync_protocol::inventory::{Actor, Delta, Inventory, InventoryError, StockKey, deltas_of};
use sync_protocol::{Epoch, Event, EventId, InventoryUpdate, Lane, NodeId, PerLane, Record, Seq};
use tokio::sync::{mpsc, oneshot, watch};

use crate::digest::{BlockDigest, block_of, seqs_of};

pub mod codec;
pub mod disk;
mod run;

pub use disk::{Failure, Pressure, Quota};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Whose store this is: `node_id`, the node that created it (or first opened it, for a
/// store written before this table), so that no other node takes over its events and its
/// inventory actor.
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
/// Each lane's events, by seq.
const RUNS: PerLane<TableDefinition<u64, &[u8]>> = PerLane([
    TableDefinition::new("runs.critical"),
    TableDefinition::new("runs.standard"),
    TableDefinition::new("runs.bulk"),
]);
/// Formats 3 and 4: a row per record.
const EVENTS_V4: PerLane<TableDefinition<u64, &[u8]>> = PerLane([
    TableDefinition::new("events.critical"),
    TableDefinition::new("events.standard"),
    TableDefinition::new("events.bulk"),
]);
/// Format 2's one table of events, by `(lane, seq)`: read once to migrate a store.
const EVENTS_V2: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("events");
/// The id index: each `event_id`'s lane and seq in one `u64` ([`place`]).
const IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");
/// Format 3's id index, with lane and seq apart: read once to migrate a store.
const IDS_V3: TableDefinition<&str, (u8, u64)> = TableDefinition::new("ids");
const LANES: TableDefinition<u8, (u64, u64, u64)> = TableDefinition::new("lanes");
const STOCK: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("stock");
const DIGESTS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("digests");

/// The on-disk format this build writes and reads.
/// 2: stock rows in the canonical inventory encoding (actors listed once per row).
/// 3: a table of events per lane.
/// 4: records in a compact stored form ([`codec`]) instead of postcard's, and the id
///    index's lane and seq in one `u64`.
/// 5: each lane's records in runs of up to 1,000 bytes instead of a row per record, and
///    the stock rows written at checkpoints (`stock_through.<lane>` in `meta`).
///
/// A store of format 2, 3 or 4 is migrated on open.
pub const FORMAT_VERSION: u64 = 5;
/// The store file inside the data directory.
pub const STORE_FILE: &str = "node.redb";
/// Most events applied in one group commit. A group this large commits in tens of
/// milliseconds; larger groups only add latency for the requests at the front.
pub const GROUP_EVENTS_MAX: usize = 16_384;
/// Commands queued between request handlers and the writer. Handlers wait when it is
/// full, which bounds the memory a burst can take.
pub const QUEUE_COMMANDS_MAX: usize = 4_096;
/// redb's page cache. Its default (1 GiB) would let the resident set grow with the
/// backlog until it held the whole file; the hot pages are the tops of the trees and the
/// tails of the lanes, which fit many times over in this. The cache fills with the first
/// tens of thousands of events buffered, and the resident set is flat after that.
/// `ingest-batch` measured no difference between 4 and 16 MiB (the kernel's page cache
/// serves the colder pages); `backlog-memory` and the memory test in
/// `tests/it/pressure.rs` measure the flat line.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Most of this node's own events whose deltas the `stock` rows may lag behind: opening
/// the store applies them again from their records (module doc, "Stock checkpoints").
pub const STOCK_LAG_EVENTS_MAX: u64 = 65_536;
/// Most keys whose rows may lag behind: the writer holds them in memory until the next
/// checkpoint writes them.
pub const STOCK_LAG_KEYS_MAX: usize = 8_192;
/// Where `meta` records each lane's seq through which the `stock` rows hold this node's
/// own deltas.
const STOCK_THROUGH: PerLane<&str> =
    PerLane(["stock_through.critical", "stock_through.standard", "stock_through.bulk"]);
/// Most events removed by one prune pass, so pruning never holds the writer for long.
pub const PRUNE_EVENTS_MAX: usize = 10_000;
/// How often the writer tries to reopen the store after a write error.
pub const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Shortest time between two compactions under disk pressure: each one holds the writer
/// for a time that grows with what the store holds.
pub const COMPACTION_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_secs(2);
/// Most compaction passes in one go (redb moves pages in passes until none can move).
const COMPACTION_PASSES_MAX: usize = 8;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error (IO, corruption, a full disk).
    #[error("store error: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value did not decode.
    #[error("stored record at {lane}/{seq} does not decode: {reason}")]
    Corrupt {
        /// The lane.
        lane: Lane,
        /// The seq.
        seq: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The file was written by another format version.
    #[error("store at {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// The group commit that held this request failed; nothing of the group was stored.
    #[error("commit failed, nothing of it was stored: {0}")]
    CommitFailed(String),
    /// The filesystem refused a write; nothing of the group was stored (see [`Failure`]).
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The writer thread is gone (shutdown, or a previous fatal error).
    #[error("store is closed")]
    Closed,
    /// The store holds another node's events: its streams and inventory actor are keyed
    /// by that node's id, which a node with another certificate must not take over.
    #[error(
        "store at {path} holds the events of node {owner}, but this node is {node} (from its certificate); \
         start it with {owner}'s certificate, or give {node} a data directory of its own \
         (events {owner} has not replicated stay in this one)"
    )]
    OtherNode {
        /// The file.
        path: PathBuf,
        /// The node the store belongs to.
        owner: String,
        /// The node that tried to open it.
        node: String,
    },
}

impl StoreError {
    /// The filesystem failure behind this error, if it is one (see [`Failure::of`]).
    pub fn failure(&self) -> Option<Failure> {
        match self {
            StoreError::Redb(e) => Failure::of(e),
            StoreError::Failed(failure) => Some(failure.clone()),
            _ => None,
        }
    }
}

/// Turns any of redb's error types into a [`StoreError`] with `.db()?`.
trait RedbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> RedbResult<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Redb(e.into()))
    }
}

/// Where an accepted event sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Its lane.
    pub lane: Lane,
    /// Its seq in that lane.
    pub seq: Seq,
    /// When the node accepted it, ms since the Unix epoch.
    pub received_at_ms: u64,
}

/// What became of one event of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Created(Placement),
    /// Stored before with the same payload.
    Duplicate(Placement),
    /// Stored before with another payload.
    Conflict(Placement),
    /// Not stored: its inventory delta cannot be applied (a transfer without a valid
    /// destination, or a change that would overflow a counter).
    Invalid {
        /// The field to blame.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Not stored: the store is over its lane's mark of the disk quota.
    Shed {
        /// The event's lane.
        lane: Lane,
        /// Bytes the store occupied when its group was committed.
        used_bytes: u64,
        /// The mark of `lane`.
        mark_bytes: u64,
    },
}

/// An event to append, with the lane the configuration gives its kind.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event.
    pub event: Event,
    /// Its lane.
    pub lane: Lane,
}

enum Command {
    Append { events: Vec<NewEvent>, reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>> },
    RecordAck { lane: Lane, through: u64 },
    Prune { received_before_ms: u64, reply: oneshot::Sender<Result<u64, StoreError>> },
    Merge { update: InventoryUpdate, reply: oneshot::Sender<Result<(), StoreError>> },
}

/// Per-lane positions: `head` is the highest durable seq, `acked` the relay's watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanePosition {
    /// Highest seq stored.
    pub head: u64,
    /// Highest seq the relay acknowledged.
    pub acked: u64,
    /// Bytes of the stored events after `acked` (their encoded records).
    pub backlog_bytes: u64,
}

/// Counters of the writer, for status and metrics.
#[derive(Debug)]
pub struct WriterStats {
    /// Write transactions that appended at least one event.
    pub commits: AtomicU64,
    /// Events appended.
    pub events: AtomicU64,
    /// Seconds per commit that appended events, fsync included.
    pub commit_seconds: Histogram,
    /// Events per commit that appended events.
    pub events_per_commit: Histogram,
    /// Recent commit throughput in events per second (an `f64`'s bits), for the
    /// `Retry-After` of shed requests.
    events_per_sec_bits: AtomicU64,
}

impl WriterStats {
    /// Recent commit throughput in events per second; 0 before the first commit.
    pub fn events_per_sec(&self) -> f64 {
        f64::from_bits(self.events_per_sec_bits.load(Ordering::Relaxed))
    }

    /// Folds a commit of `events` that took `seconds` into the throughput, weighting the
    /// newest commit a fifth.
    fn observe_rate(&self, events: u64, seconds: f64) {
        let sample = events as f64 / seconds.max(1e-6);
        let old = self.events_per_sec();
        let new = if old == 0.0 { sample } else { 0.8 * old + 0.2 * sample };
        self.events_per_sec_bits.store(new.to_bits(), Ordering::Relaxed);
    }
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::default(),
            events: AtomicU64::default(),
            // 50 µs to about 3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            // 1 to 16,384 events.
            events_per_commit: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            events_per_sec_bits: AtomicU64::default(),
        }
    }
}

/// How the store stands with the disk, published by the writer after each commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Bytes the store file occupies on disk.
    pub used_bytes: u64,
    /// The write error the store is recovering from, if any.
    pub failure: Option<Failure>,
    /// Acknowledged events past retention pruned at once, to make room, rather than at
    /// the next prune pass.
    pub pruned_under_pressure: u64,
    /// Compactions done to give pruned space back to the filesystem.
    pub compactions: u64,
}

/// The open database: replaced when the writer reopens the file after a write error, and
/// borrowed exclusively to compact it. Readers hold the read lock for one read.
struct Slot(RwLock<Option<Database>>);

impl Slot {
    /// Runs `f` on the open database, or fails while it is being reopened.
    fn read<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Failed(Failure::Io("the store is being reopened".into()))),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<Database>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    db: Arc<Slot>,
    path: PathBuf,
    quota: Quota,
    retention_ms: Arc<AtomicU64>,
    health: watch::Receiver<Health>,
    epoch: Epoch,
    commands: mpsc::Sender<Command>,
    positions: watch::Receiver<PerLane<LanePosition>>,
    stats: Arc<WriterStats>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    actor: Actor,
    inventory: Arc<RwLock<Inventory>>,
    inventory_version: watch::Receiver<u64>,
}

impl Store {
    /// Opens the store in `dir` with the default quota ([`disk::default_quota`]).
    pub fn open(dir: &Path, node_id: NodeId, new_epoch: impl FnOnce() -> u64) -> Result<Store, StoreError> {
        let used = disk::used_bytes(&dir.join(STORE_FILE));
        let quota = disk::default_quota(dir, used).map_err(|e| Failure::of_io(&e))?;
        Store::open_with_quota(dir, node_id, new_epoch, quota)
    }

    /// Opens the store in `dir`, creating it (with a new random epoch) if it does not
    /// exist, and starts the writer thread; the store sheds lanes by `quota`.
    pub fn open_with_quota(
        dir: &Path,
        node_id: NodeId,
        new_epoch: impl FnOnce() -> u64,
        quota: Quota,
    ) -> Result<Store, StoreError> {
        let path = dir.join(STORE_FILE);
        let mut db = open_db(&path)?;
        let (epoch, migrated) = init_meta(&db, &path, &node_id, new_epoch)?;
        if migrated {
            // The migration rewrote every record and index entry once; what they occupied
            // before is free space inside the file until compacted.
            let before = disk::used_bytes(&path);
            compact_passes(&mut db).db()?;
            tracing::info!(before, after = disk::used_bytes(&path), "compacted the migrated store");
        }
        let positions = load_positions(&db)?;
        let actor = Actor { node_id, epoch };
        let Loaded { inventory, version, lagging, replayed } = load_inventory(&db, &actor)?;
        if replayed > 0 {
            tracing::info!(
                events = replayed,
                keys = lagging.len(),
                "applied the deltas the stock rows lagged behind"
            );
        }
        let inventory = Arc::new(RwLock::new(inventory));
        let db = Arc::new(Slot(RwLock::new(Some(db))));
        let health = Health { used_bytes: disk::used_bytes(&path), ..Health::default() };
        let (health_tx, health_rx) = watch::channel(health);
        let (commands, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let retention_ms = Arc::new(AtomicU64::new(crate::config::DEFAULT_RETENTION.as_millis() as u64));
        let (positions_tx, positions_rx) = watch::channel(positions);
        let (version_tx, version_rx) = watch::channel(version);
        let stats = Arc::new(WriterStats::default());
        let writer = Writer {
            db: db.clone(),
            path: path.clone(),
            dir: dir.to_owned(),
            quota,
            retention_ms: retention_ms.clone(),
            health: health_tx,
            pruned_since_compaction: 0,
            last_compaction: Instant::now().checked_sub(COMPACTION_INTERVAL_MIN).unwrap_or_else(Instant::now),
            positions: positions_tx,
            stats: stats.clone(),
            actor: actor.clone(),
            inventory: inventory.clone(),
            inventory_version: version_tx,
            stock_lag: StockLag { keys: lagging, events: replayed },
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Redb(e.into()))?;
        Ok(Store {
            db,
            path,
            quota,
            retention_ms,
            health: health_rx,
            epoch,
            commands,
            positions: positions_rx,
            stats,
            writer: Arc::new(Mutex::new(Some(handle))),
            actor,
            inventory,
            inventory_version: version_rx,
        })
    }

    /// This store's inventory actor: the node and the store's epoch.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Reads the node's inventory replica (its own counters and what it merged).
    pub fn with_inventory<T>(&self, f: impl FnOnce(&Inventory) -> T) -> T {
        f(&self.inventory.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The relay inventory version merged durably.
    pub fn inventory_version(&self) -> u64 {
        *self.inventory_version.borrow()
    }

    /// Merges inventory from the relay durably; for an update marked complete, records
    /// its version too.
    pub async fn merge_inventory(&self, update: InventoryUpdate) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Merge { update, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The store's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Appends events durably. Returns after the commit that holds them (or that found
    /// them already stored) has been fsync'd; one outcome per event, in order.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Outcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Append { events, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records the relay's watermark of `lane` (see the module doc on its durability).
    pub async fn record_ack(&self, lane: Lane, through: u64) -> Result<(), StoreError> {
        self.commands.send(Command::RecordAck { lane, through }).await.map_err(|_| StoreError::Closed)
    }

    /// Removes acknowledged events received before `received_before_ms`, at most
    /// [`PRUNE_EVENTS_MAX`] per call. Unacknowledged events are never removed.
    pub async fn prune(&self, received_before_ms: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Prune { received_before_ms, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Positions of every lane, updated after each commit.
    pub fn positions(&self) -> watch::Receiver<PerLane<LanePosition>> {
        self.positions.clone()
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Up to `count` consecutive records of `lane` from `first`.
    pub fn read_range(&self, lane: Lane, first: Seq, count: u32) -> Result<Vec<Record>, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().db()?;
            let table = txn.open_table(*RUNS.get(lane)).db()?;
            let Some(last) = first.get().checked_add(u64::from(count)).and_then(|end| end.checked_sub(1))
            else {
                return Ok(Vec::new());
            };
            // Sized for what a lane is likely to hold, not for what a caller may ask.
            let mut out = Vec::with_capacity((count as usize).min(4096));
            run::scan(&table, lane, first.get()..=last, |seq, bytes| {
                out.push(decode_record(lane, seq, bytes)?);
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(out)
        })
    }

    /// The event stored under `event_id`, with where it sits.
    pub fn get(&self, event_id: &EventId) -> Result<Option<(Placement, Record)>, StoreError> {
        self.db.read(|db| Self::get_in(db, event_id))
    }

    fn get_in(db: &Database, event_id: &EventId) -> Result<Option<(Placement, Record)>, StoreError> {
        let txn = db.begin_read().db()?;
        let ids = txn.open_table(IDS).db()?;
        let Some(value) = ids.get(event_id.as_str()).db()?.map(|v| v.value()) else {
            return Ok(None);
        };
        let (lane, seq) = placed(value)?;
        let Some(record) = run::record(&txn.open_table(*RUNS.get(lane)).db()?, lane, seq)? else {
            return Ok(None);
        };
        let seq = Seq::new(seq).ok_or(StoreError::Corrupt { lane, seq, reason: "seq 0".into() })?;
        Ok(Some((Placement { lane, seq, received_at_ms: record.received_at_ms }, record)))
    }

    /// The digests of `lane`'s blocks from `from_block` on, at most `limit` of them, in
    /// block order, with the lane's position as of the same snapshot (so the digests hold
    /// exactly the events through its head). Blocks whose events were pruned keep their
    /// digests.
    pub fn digests(
        &self,
        lane: Lane,
        from_block: u64,
        limit: usize,
    ) -> Result<(LanePosition, Vec<(u64, BlockDigest)>), StoreError> {
        self.db.read(|db| Self::digests_in(db, lane, from_block, limit))
    }

    fn digests_in(
        db: &Database,
        lane: Lane,
        from_block: u64,
        limit: usize,
    ) -> Result<(LanePosition, Vec<(u64, BlockDigest)>), StoreError> {
        let txn = db.begin_read().db()?;
        let (head, acked, backlog_bytes) =
            txn.open_table(LANES).db()?.get(lane as u8).db()?.map_or((0, 0, 0), |v| v.value());
        let table = txn.open_table(DIGESTS).db()?;
        let mut out = Vec::new();
        for entry in table.range((lane as u8, from_block)..=(lane as u8, u64::MAX)).db()?.take(limit) {
            let (key, value) = entry.db()?;
            let (_, block) = key.value();
            out.push((block, read_digest(lane, block, value.value())?));
        }
        Ok((LanePosition { head, acked, backlog_bytes }, out))
    }

    /// When the oldest unacknowledged event of `lane` was received, if there is one.
    pub fn oldest_unacked_ms(&self, lane: Lane) -> Result<Option<u64>, StoreError> {
        let pos = *self.positions.borrow().get(lane);
        if pos.head <= pos.acked {
            return Ok(None);
        }
        self.db.read(|db| {
            let txn = db.begin_read().db()?;
            let record = run::record(&txn.open_table(*RUNS.get(lane)).db()?, lane, pos.acked + 1)?;
            Ok(record.map(|r| r.received_at_ms))
        })
    }

    /// Length of the store file in bytes (redb extends it ahead of use, sparsely; see
    /// [`Health::used_bytes`] for what it occupies).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Sets how long acknowledged events are kept: pruning under disk pressure takes only
    /// events older than this, so a retried `event_id` is always recognised within it.
    pub fn set_retention(&self, retention: std::time::Duration) {
        self.retention_ms.store(retention.as_millis() as u64, Ordering::Relaxed);
    }

    /// The disk quota and its marks.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// How the store stands with the disk, as of the last commit.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// Stops the writer after the commands already queued, and waits for it.
    pub fn close(self) {
        let handle = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(self.commands);
        if let Some(handle) = handle {
            // The writer ends once every clone of the sender is dropped; clones still held
            // elsewhere keep it alive, which is what they need.
            let _ = handle.join();
        }
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).db()
}

/// Runs redb's compaction until it moves nothing more, or [`COMPACTION_PASSES_MAX`] times.
fn compact_passes(db: &mut Database) -> Result<(), redb::CompactionError> {
    for _ in 0..COMPACTION_PASSES_MAX {
        if !db.compact()? {
            break;
        }
    }
    Ok(())
}

/// Creates or checks the store's metadata, migrating an older format; returns the epoch,
/// and whether the store was migrated. A store of another node is refused before anything
/// is written.
fn init_meta(
    db: &Database,
    path: &Path,
    node_id: &NodeId,
    new_epoch: impl FnOnce() -> u64,
) -> Result<(Epoch, bool), StoreError> {
    let txn = db.begin_write().db()?;
    // A format this build cannot read says so first; then whose store this is.
    let version = txn.open_table(META).db()?.get("format_version").db()?.map(|v| v.value());
    if let Some(found) = version
        && !(2..=FORMAT_VERSION).contains(&found)
    {
        return Err(StoreError::FormatVersion { path: path.to_owned(), found });
    }
    claim(&txn, path, node_id)?;
    let mut migrated = false;
    let epoch = {
        let mut meta = txn.open_table(META).db()?;
        match version {
            Some(found @ 2..=4) => {
                tracing::info!(
                    path = %path.display(),
                    "migrating the store from format {found} to {FORMAT_VERSION}: every record is rewritten \
                     in one transaction, which needs free space about the size of the store"
                );
                migrated = true;
                if found == 2 {
                    migrate_events_from_v2(&txn)?;
                }
                if found <= 3 {
                    migrate_records_from_v3(&txn)?;
                    migrate_ids_from_v3(&txn)?;
                }
                let events = migrate_runs_from_v4(&txn)?;
                meta.insert("format_version", FORMAT_VERSION).db()?;
                tracing::info!(path = %path.display(), events, "store migrated from format {found} to {FORMAT_VERSION}");
            }
            // The current format: anything else was refused above.
            Some(_) => {}
            None => {
                meta.insert("format_version", FORMAT_VERSION).db()?;
                meta.insert("epoch", new_epoch()).db()?;
                meta.insert("created_at_ms", now_ms()).db()?;
            }
        }
        // A store written before stock checkpoints holds every delta in its rows.
        let lanes = txn.open_table(LANES).db()?;
        for lane in Lane::ALL {
            if meta.get(*STOCK_THROUGH.get(lane)).db()?.is_none() {
                let head = lanes.get(lane as u8).db()?.map_or(0, |v| v.value().0);
                meta.insert(*STOCK_THROUGH.get(lane), head).db()?;
            }
        }
        let epoch = meta.get("epoch").db()?.map(|v| v.value());
        epoch.ok_or_else(|| StoreError::Corrupt {
            lane: Lane::Critical,
            seq: 0,
            reason: "no epoch in meta".into(),
        })?
    };
    open_runs(&txn)?;
    txn.open_table(IDS).db()?;
    txn.open_table(LANES).db()?;
    txn.open_table(STOCK).db()?;
    txn.open_table(DIGESTS).db()?;
    txn.commit().db()?;
    Ok((Epoch(epoch), migrated))
}

/// Records `node_id` as the store's owner, or checks that it is.
fn claim(txn: &redb::WriteTransaction, path: &Path, node_id: &NodeId) -> Result<(), StoreError> {
    let mut identity = txn.open_table(IDENTITY).db()?;
    let owner = identity.get("node_id").db()?.map(|v| v.value().to_owned());
    match owner {
        Some(owner) if owner != node_id.as_str() => {
            Err(StoreError::OtherNode { path: path.to_owned(), owner, node: node_id.to_string() })
        }
        Some(_) => Ok(()),
        None => identity.insert("node_id", node_id.as_str()).map(drop).db(),
    }
}

/// Moves format 2's one `events` table into a table per lane, in the transaction that
/// records the current format, so a crash leaves the store in one format or the other.
fn migrate_events_from_v2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut events = open_events_v4(txn)?;
    {
        let old = txn.open_table(EVENTS_V2).db()?;
        for entry in old.iter().db()? {
            let (key, value) = entry.db()?;
            let (lane, seq) = key.value();
            events.get_mut(lane_of(lane)?).insert(seq, value.value()).db()?;
        }
    }
    txn.delete_table(EVENTS_V2).db()?;
    Ok(())
}

/// Moves format 3's id index into format 4's, which holds lane and seq in one `u64`,
/// in the transaction that records the current format. Copied in key order, it fills
/// redb's leaves.
fn migrate_ids_from_v3(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    {
        let old = txn.open_table(IDS_V3).db()?;
        let mut ids = txn.open_table(IDS).db()?;
        for entry in old.iter().db()? {
            let (id, value) = entry.db()?;
            let (lane, seq) = value.value();
            let lane = lane_of(lane)?;
            if seq > SEQ_MAX {
                return Err(StoreError::Corrupt { lane, seq, reason: "seq beyond the id index".into() });
            }
            ids.insert(id.value(), place(lane, seq)).db()?;
        }
    }
    txn.delete_table(IDS_V3).db()?;
    Ok(())
}

/// Records a migration reads before it writes them back: bounds the memory of a large
/// store's migration.
const MIGRATION_CHUNK: usize = 10_000;

/// Rewrites format 3's records (postcard) in format 4's stored form ([`codec`]), and each
/// lane's backlog bytes to match, in the transaction that records format 4, so a crash
/// leaves the store in one format or the other. Returns the number of records rewritten.
fn migrate_records_from_v3(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut events = open_events_v4(txn)?;
    let mut lanes = txn.open_table(LANES).db()?;
    let mut rewritten = 0u64;
    for lane in Lane::ALL {
        let table = events.get_mut(lane);
        let (head, acked, _) = lanes.get(lane as u8).db()?.map_or((0, 0, 0), |v| v.value());
        let (mut next, mut backlog_bytes) = (0u64, 0u64);
        loop {
            let mut chunk = Vec::with_capacity(MIGRATION_CHUNK);
            for entry in table.range(next..).db()?.take(MIGRATION_CHUNK) {
                let (key, value) = entry.db()?;
                let seq = key.value();
                let record: Record = postcard::from_bytes(value.value())
                    .map_err(|e| StoreError::Corrupt { lane, seq, reason: e.to_string() })?;
                chunk.push((seq, codec::encode_to_vec(&record)));
            }
            for (seq, stored) in &chunk {
                if *seq > acked {
                    backlog_bytes += stored.len() as u64;
                }
                table.insert(seq, stored.as_slice()).db()?;
            }
            rewritten += chunk.len() as u64;
            match chunk.last().and_then(|(last, _)| last.checked_add(1)) {
                Some(after) if chunk.len() == MIGRATION_CHUNK => next = after,
                _ => break,
            }
        }
        lanes.insert(lane as u8, (head, acked, backlog_bytes)).db()?;
    }
    Ok(rewritten)
}

/// Gathers format 4's rows, one per record, into runs (of [`run::RUN_BYTES_MAX`] or up
/// to a gap), in the transaction that records format 5, and removes the old tables.
/// Returns the number of records moved.
fn migrate_runs_from_v4(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    for lane in Lane::ALL {
        {
            let old = txn.open_table(*EVENTS_V4.get(lane)).db()?;
            let mut runs = txn.open_table(*RUNS.get(lane)).db()?;
            let mut pending = run::Pending::default();
            let mut next = None;
            for entry in old.iter().db()? {
                let (key, value) = entry.db()?;
                let seq = key.value();
                if next.is_some_and(|next| next != seq) {
                    pending.flush(&mut runs)?;
                }
                pending.push(&mut runs, seq, value.value())?;
                next = seq.checked_add(1);
                moved += 1;
            }
            pending.flush(&mut runs)?;
        }
        txn.delete_table(*EVENTS_V4.get(lane)).db()?;
    }
    Ok(moved)
}

fn load_positions(db: &Database) -> Result<PerLane<LanePosition>, StoreError> {
    let txn = db.begin_read().db()?;
    let lanes = txn.open_table(LANES).db()?;
    let mut out = PerLane::<LanePosition>::default();
    for lane in Lane::ALL {
        if let Some(v) = lanes.get(lane as u8).db()? {
            let (head, acked, backlog_bytes) = v.value();
            *out.get_mut(lane) = LanePosition { head, acked, backlog_bytes };
        }
    }
    Ok(out)
}

/// The inventory as the store holds it.
struct Loaded {
    inventory: Inventory,
    /// The relay version merged durably.
    version: u64,
    /// The keys of the deltas applied again, which the rows lag behind.
    lagging: BTreeSet<StockKey>,
    /// The events whose deltas were applied again.
    replayed: u64,
}

/// Reads the `stock` rows, then applies again the deltas of this node's own events after
/// the seqs they hold (module doc, "Stock checkpoints").
fn load_inventory(db: &Database, actor: &Actor) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().db()?;
    let table = txn.open_table(STOCK).db()?;
    let mut inventory = Inventory::new();
    for row in table.iter().db()? {
        let (_, bytes) = row.db()?;
        inventory.merge(&decode_stock(bytes.value())?);
    }
    let meta = txn.open_table(META).db()?;
    let version = meta.get("inventory_version").db()?.map_or(0, |v| v.value());
    let lanes = txn.open_table(LANES).db()?;
    let (mut lagging, mut replayed) = (BTreeSet::new(), 0);
    // Deltas that would take a counter past its range in this order, with where they are.
    let mut deferred = Vec::new();
    for lane in Lane::ALL {
        let head = lanes.get(lane as u8).db()?.map_or(0, |v| v.value().0);
        let through = meta.get(*STOCK_THROUGH.get(lane)).db()?.map_or(head, |v| v.value());
        let runs = txn.open_table(*RUNS.get(lane)).db()?;
        run::scan(&runs, lane, through.saturating_add(1)..=head, |seq, bytes| {
            let record = decode_record(lane, seq, bytes)?;
            for delta in record.deltas {
                lagging.insert(delta.key.clone());
                if inventory.apply(actor, &delta).is_err() {
                    deferred.push((lane, seq, delta));
                }
            }
            replayed += 1;
            Ok(ControlFlow::Continue(()))
        })?;
    }
    // The deltas were accepted in an order that kept every counter in range, which a
    // lane at a time need not repeat (a counter at its floor takes a receipt, then a
    // shipment of another lane). The end state is in range, so whichever of the deferred
    // deltas fits now goes next; none fitting means the records are not what was accepted.
    while !deferred.is_empty() {
        let before = deferred.len();
        deferred.retain(|(_, _, delta)| inventory.apply(actor, delta).is_err());
        if deferred.len() == before {
            let (lane, seq, delta) = &deferred[0];
            let reason =
                format!("its delta of {} at {} takes the counter out of range", delta.change, delta.key);
            return Err(StoreError::Corrupt { lane: *lane, seq: *seq, reason });
        }
    }
    Ok(Loaded { inventory, version, lagging, replayed })
}

/// A `stock` row holds one key's counters as a one-key [`Inventory`], so that loading
/// is a merge.
fn decode_stock(bytes: &[u8]) -> Result<Inventory, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        lane: Lane::Standard,
        seq: 0,
        reason: format!("stock row: {e}"),
    })
}

fn decode_record(lane: Lane, seq: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt { lane, seq, reason: e.to_string() })
}

fn lane_of(index: u8) -> Result<Lane, StoreError> {
    Lane::from_index(usize::from(index)).ok_or(StoreError::Corrupt {
        lane: Lane::Critical,
        seq: 0,
        reason: format!("lane index {index}"),
    })
}

/// Milliseconds since the Unix epoch by the node's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Writer {
    db: Arc<Slot>,
    path: PathBuf,
    dir: PathBuf,
    quota: Quota,
    retention_ms: Arc<AtomicU64>,
    health: watch::Sender<Health>,
    /// Events pruned under pressure whose space no compaction has given back yet.
    pruned_since_compaction: u64,
    last_compaction: Instant,
    positions: watch::Sender<PerLane<LanePosition>>,
    stats: Arc<WriterStats>,
    actor: Actor,
    inventory: Arc<RwLock<Inventory>>,
    inventory_version: watch::Sender<u64>,
    /// What the `stock` rows lag behind the replica.
    stock_lag: StockLag,
}

/// The keys this node's own events moved since the last stock checkpoint, and how many
/// events: what opening the store would apply again after a crash.
#[derive(Debug, Default)]
struct StockLag {
    keys: BTreeSet<StockKey>,
    events: u64,
}

/// What a group changes in the inventory, applied to the shared replica only once the
/// group has committed: every key touched, with its whole new state.
struct Overlay<'a> {
    replica: &'a Inventory,
    changed: Inventory,
    version: Option<u64>,
}

impl Overlay<'_> {
    /// The merged value of `key` as this group sees it.
    fn value(&mut self, key: &StockKey) -> i64 {
        self.touch(key);
        self.changed.value(key).unwrap_or(0)
    }

    /// Moves `actor`'s counters by an event's deltas: all of them, or none and the error.
    fn apply(&mut self, actor: &Actor, deltas: &[Delta]) -> Result<(), InventoryError> {
        for delta in deltas {
            self.touch(&delta.key);
        }
        // One delta applies whole or not at all ([`Inventory::apply`]); more are tried on
        // a copy first.
        if let [delta] = deltas {
            return self.changed.apply(actor, delta);
        }
        let mut trial = self.changed.restrict(deltas.iter().map(|d| &d.key));
        for delta in deltas {
            trial.apply(actor, delta)?;
        }
        self.changed.merge(&trial);
        Ok(())
    }

    /// Brings `key`'s current state into the overlay before it changes.
    fn touch(&mut self, key: &StockKey) {
        if self.changed.stock(key).is_none() {
            self.changed.merge_key(self.replica, key);
        }
    }
}

/// Where to answer a command once its group has committed.
enum Reply {
    Append(oneshot::Sender<Result<Vec<Outcome>, StoreError>>),
    Prune(oneshot::Sender<Result<u64, StoreError>>),
    Merge(oneshot::Sender<Result<(), StoreError>>),
    None,
}

/// What a command did inside the transaction, answered only after the commit.
enum Done {
    Append(Vec<Outcome>),
    Prune(u64),
    None,
}

enum Op {
    Append(Vec<NewEvent>),
    RecordAck { lane: Lane, through: u64 },
    Prune { received_before_ms: u64 },
    Merge(InventoryUpdate),
}

fn split(command: Command) -> (Op, Reply) {
    match command {
        Command::Append { events, reply } => (Op::Append(events), Reply::Append(reply)),
        Command::RecordAck { lane, through } => (Op::RecordAck { lane, through }, Reply::None),
        Command::Prune { received_before_ms, reply } => {
            (Op::Prune { received_before_ms }, Reply::Prune(reply))
        }
        Command::Merge { update, reply } => (Op::Merge(update), Reply::Merge(reply)),
    }
}

impl Reply {
    /// Answers `error` (a `RecordAck` has no one to answer).
    fn fail(self, error: StoreError) {
        match self {
            Reply::Append(tx) => drop(tx.send(Err(error))),
            Reply::Prune(tx) => drop(tx.send(Err(error))),
            Reply::Merge(tx) => drop(tx.send(Err(error))),
            Reply::None => {}
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut events = group_events(&first);
            let mut group = vec![first];
            while events < GROUP_EVENTS_MAX {
                let Ok(next) = rx.try_recv() else { break };
                events += group_events(&next);
                group.push(next);
            }
            let failure = self.health.borrow().failure.clone();
            match failure {
                Some(failure) => refuse(group, &failure),
                None => {
                    self.commit_group(group);
                    self.relieve_pressure();
                }
            }
            // Admission refuses posts while the store is failing, so recovery cannot wait
            // for the next command: it starts now.
            if self.health.borrow().failure.is_some() {
                self.recover(&mut rx);
            }
        }
        // A clean close leaves no key behind (events that moved none may be read again).
        if !self.stock_lag.keys.is_empty() && self.health.borrow().failure.is_none() {
            self.commit_group(Vec::new());
        }
    }

    /// After a write error: answers every command with the failure until a probe write to
    /// the directory succeeds and the store reopens, trying every [`RECOVERY_INTERVAL`].
    fn recover(&mut self, rx: &mut mpsc::Receiver<Command>) {
        loop {
            match self.reopen() {
                Ok(()) => {
                    tracing::info!(path = %self.path.display(), "store reopened after a write error; storing again");
                    return;
                }
                Err(failure) => {
                    self.health.send_if_modified(|h| replace_if_changed(&mut h.failure, Some(failure)));
                }
            }
            std::thread::sleep(RECOVERY_INTERVAL);
            let Some(failure) = self.health.borrow().failure.clone() else { return };
            loop {
                match rx.try_recv() {
                    Ok(command) => refuse(vec![command], &failure),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
        }
    }

    /// Closes the failed database and opens the file again, once a probe write passes.
    /// redb repairs what the failed commit left; the positions are read back from the file
    /// (an acknowledgement recorded without fsync may be lost, which is harmless).
    fn reopen(&mut self) -> Result<(), Failure> {
        disk::probe(&self.dir)?;
        let mut slot = self.db.write();
        // The old handle holds the file lock: close it before opening again.
        *slot = None;
        // The failed commit may have reached the file after all: the positions and the
        // inventory are read back from it, and the stock rows' lag with them.
        let reopened = open_db(&self.path)
            .and_then(|db| Ok((load_positions(&db)?, load_inventory(&db, &self.actor)?, db)));
        // Any error counts as a write failure here: the store cannot be used until it opens.
        let (positions, loaded, db) =
            reopened.map_err(|e| e.failure().unwrap_or_else(|| Failure::Io(e.to_string())))?;
        *slot = Some(db);
        drop(slot);
        self.positions.send_replace(positions);
        *self.inventory.write().unwrap_or_else(PoisonError::into_inner) = loaded.inventory;
        self.inventory_version.send_replace(loaded.version);
        self.stock_lag = StockLag { keys: loaded.lagging, events: loaded.replayed };
        let used_bytes = disk::used_bytes(&self.path);
        self.health.send_modify(|h| {
            h.failure = None;
            h.used_bytes = used_bytes;
        });
        Ok(())
    }

    /// Above the bulk mark: prunes acknowledged events past retention at once (not at
    /// the next prune pass) and compacts the file so the filesystem gets the space back.
    /// Unacknowledged events are never pruned, and neither are events within retention:
    /// their `event_id`s must still be recognised (API.md's idempotency window).
    fn relieve_pressure(&mut self) {
        let used_bytes = disk::used_bytes(&self.path);
        self.health.send_if_modified(|h| replace_if_changed(&mut h.used_bytes, used_bytes));
        if self.quota.admits(Lane::Bulk, used_bytes) {
            return;
        }
        let (reply, mut pruned) = oneshot::channel();
        let received_before_ms = now_ms().saturating_sub(self.retention_ms.load(Ordering::Relaxed));
        self.commit_group(vec![Command::Prune { received_before_ms, reply }]);
        if let Ok(Ok(n)) = pruned.try_recv()
            && n > 0
        {
            self.pruned_since_compaction += n;
            self.health.send_modify(|h| h.pruned_under_pressure += n);
            tracing::warn!(
                events = n,
                used_bytes,
                quota_bytes = self.quota.bytes,
                "disk quota pressure: pruned acknowledged events past retention at once"
            );
        }
        if self.pruned_since_compaction > 0 && self.last_compaction.elapsed() >= COMPACTION_INTERVAL_MIN {
            self.compact(used_bytes);
        }
    }

    /// Moves the store's pages down and truncates the file.
    fn compact(&mut self, used_before: u64) {
        let started = Instant::now();
        let mut slot = self.db.write();
        let Some(db) = slot.as_mut() else { return };
        let result = compact_passes(db).map_err(redb::Error::from);
        drop(slot);
        self.last_compaction = Instant::now();
        match result {
            Ok(()) => {
                self.pruned_since_compaction = 0;
                let used_bytes = disk::used_bytes(&self.path);
                self.health.send_modify(|h| {
                    h.compactions += 1;
                    h.used_bytes = used_bytes;
                });
                tracing::info!(used_before, used_bytes, took = ?started.elapsed(), "compacted the store");
            }
            Err(e) => match Failure::of(&e) {
                Some(failure) => {
                    tracing::error!(error = %e, "compaction failed on a write error");
                    self.health.send_modify(|h| h.failure = Some(failure));
                }
                None => tracing::warn!(error = %e, "compaction failed; will try again"),
            },
        }
    }

    fn commit_group(&mut self, group: Vec<Command>) {
        let (ops, replies): (Vec<Op>, Vec<Reply>) = group.into_iter().map(split).unzip();
        let mut positions = *self.positions.borrow();
        let mut appended = 0u64;
        let replica = self.inventory.read().unwrap_or_else(PoisonError::into_inner);
        let mut overlay = Overlay { replica: &replica, changed: Inventory::new(), version: None };
        // Measured after the previous commit (`relieve_pressure`, `reopen`, `compact`):
        // only the writer changes the file, so one measure per commit serves both.
        let used_bytes = self.health.borrow().used_bytes;
        let started = Instant::now();
        let result = self.db.read(|db| {
            let mut group = Group {
                positions: &mut positions,
                overlay: &mut overlay,
                appended: &mut appended,
                used_bytes,
                stock_lag: &self.stock_lag,
                checkpointed: false,
            };
            let done = self.apply(db, ops, &mut group)?;
            Ok((done, group.checkpointed))
        });
        let took = started.elapsed();
        let Overlay { changed, version, .. } = overlay;
        drop(replica);
        match result {
            Ok((done, checkpointed)) => {
                if checkpointed {
                    self.stock_lag = StockLag::default();
                } else {
                    for (key, _) in changed.iter() {
                        if !self.stock_lag.keys.contains(key) {
                            self.stock_lag.keys.insert(key.clone());
                        }
                    }
                    self.stock_lag.events += appended;
                }
                if appended > 0 {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.events.fetch_add(appended, Ordering::Relaxed);
                    self.stats.commit_seconds.observe(took.as_secs_f64());
                    self.stats.events_per_commit.observe(appended as f64);
                    self.stats.observe_rate(appended, took.as_secs_f64());
                }
                if !changed.is_empty() {
                    // The overlay holds each touched key's whole new state, so the join
                    // is the replacement.
                    self.inventory.write().unwrap_or_else(PoisonError::into_inner).merge(&changed);
                }
                if let Some(version) = version {
                    self.inventory_version.send_replace(version);
                }
                self.positions.send_replace(positions);
                for (reply, done) in replies.into_iter().zip(done) {
                    match (reply, done) {
                        (Reply::Append(tx), Done::Append(outcomes)) => drop(tx.send(Ok(outcomes))),
                        (Reply::Prune(tx), Done::Prune(n)) => drop(tx.send(Ok(n))),
                        (Reply::Merge(tx), _) => drop(tx.send(Ok(()))),
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; every request of the group gets an error");
                let failure = e.failure();
                if let Some(failure) = &failure {
                    self.health.send_modify(|h| h.failure = Some(failure.clone()));
                }
                let message = e.to_string();
                for reply in replies {
                    reply.fail(match &failure {
                        Some(failure) => StoreError::Failed(failure.clone()),
                        None => StoreError::CommitFailed(message.clone()),
                    });
                }
            }
        }
    }

    /// Applies a group in one transaction. Its positions and overlay become the published
    /// state only if the commit succeeds.
    fn apply(&self, db: &Database, ops: Vec<Op>, group: &mut Group<'_, '_>) -> Result<Vec<Done>, StoreError> {
        let mut txn = db.begin_write().db()?;
        // Merges and prunes write the stock rows out first (module doc); so does a close,
        // which is a group of no commands.
        let checkpoint = ops.is_empty() || ops.iter().any(|op| matches!(op, Op::Merge(_) | Op::Prune { .. }));
        let durable = ops.is_empty() || ops.iter().any(|op| !matches!(op, Op::RecordAck { .. }));
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).db()?;
        // Each commit records redb's allocator state (and commits in two phases), so that
        // opening the file after a crash loads it rather than walking the whole store:
        // 12 ms instead of 2.8 s with 10M events (`outpost-sim bench restart`).
        txn.set_quick_repair(true);
        let mut done = Vec::with_capacity(ops.len());
        {
            let mut runs = open_runs(&txn)?;
            let mut pending = PerLane::<run::Pending>::default();
            let mut ids = txn.open_table(IDS).db()?;
            let mut stored_ids = stored_ids(&ids, &ops)?;
            let mut digests = BTreeMap::new();
            let mut new_ids = BTreeMap::new();
            let mut encoded = Encoded::default();
            let received_at_ms = now_ms();
            for op in ops {
                done.push(match op {
                    Op::Append(batch) => {
                        let mut tables = Tables {
                            runs: &mut runs,
                            pending: &mut pending,
                            stored_ids: &stored_ids,
                            new_ids: &mut new_ids,
                            digests: &mut digests,
                            encoded: &mut encoded,
                        };
                        let at = received_at_ms;
                        Done::Append(self.append(&mut tables, group, batch, at)?)
                    }
                    Op::RecordAck { lane, through } => {
                        let pos = group.positions.get_mut(lane);
                        let acked = through.min(pos.head);
                        // The bytes of the events that change sides. Moving back (a relay
                        // that lost acknowledged events) counts those still stored.
                        let (low, high) = (acked.min(pos.acked), acked.max(pos.acked));
                        pending.get_mut(lane).flush_through(runs.get_mut(lane), high)?;
                        let mut moved = 0u64;
                        run::scan(runs.get(lane), lane, low.saturating_add(1)..=high, |_, bytes| {
                            moved += bytes.len() as u64;
                            Ok(ControlFlow::Continue(()))
                        })?;
                        pos.backlog_bytes = if acked >= pos.acked {
                            pos.backlog_bytes.saturating_sub(moved)
                        } else {
                            pos.backlog_bytes.saturating_add(moved)
                        };
                        pos.acked = acked;
                        Done::None
                    }
                    Op::Prune { received_before_ms } => {
                        for (lane, pos) in group.positions.iter() {
                            pending.get_mut(lane).flush_through(runs.get_mut(lane), pos.acked)?;
                        }
                        let pruned = prune(&mut runs, &mut ids, group.positions, received_before_ms)?;
                        for event_id in &pruned {
                            stored_ids.remove(event_id.as_str());
                        }
                        Done::Prune(pruned.len() as u64)
                    }
                    Op::Merge(update) => {
                        for (key, _) in update.state.iter() {
                            group.overlay.touch(key);
                        }
                        group.overlay.changed.merge(&update.state);
                        if update.complete {
                            group.overlay.version = Some(update.through_version);
                        }
                        Done::None
                    }
                });
            }
            flush(&mut pending, &mut runs)?;
            // In key order, after the events: see the module doc.
            for (event_id, (lane, seq)) in new_ids {
                ids.insert(event_id.as_str(), place(lane, seq)).db()?;
            }
            let mut stored = txn.open_table(DIGESTS).db()?;
            for ((lane, block), added) in digests {
                let mut digest = match stored.get((lane, block)).db()? {
                    Some(bytes) => read_digest(lane_of(lane)?, block, bytes.value())?,
                    None => BlockDigest::default(),
                };
                digest.add(&added);
                stored.insert((lane, block), digest.to_bytes().as_slice()).db()?;
            }
            let mut lanes = txn.open_table(LANES).db()?;
            for (lane, pos) in group.positions.iter() {
                lanes.insert(lane as u8, (pos.head, pos.acked, pos.backlog_bytes)).db()?;
            }
            let changed = &group.overlay.changed;
            let lag = group.stock_lag;
            group.checkpointed = checkpoint
                || lag.keys.len() + changed.len() >= STOCK_LAG_KEYS_MAX
                || lag.events + *group.appended >= STOCK_LAG_EVENTS_MAX;
            if group.checkpointed {
                let mut stock = txn.open_table(STOCK).db()?;
                let lagging = lag.keys.iter().filter(|key| changed.stock(key).is_none());
                for (key, from) in lagging
                    .map(|key| (key, group.overlay.replica))
                    .chain(changed.iter().map(|(key, _)| (key, changed)))
                {
                    let bytes = postcard::to_allocvec(&from.key_row(key))
                        .map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                    stock.insert((key.sku.as_str(), key.location.as_str()), bytes.as_slice()).db()?;
                }
                let mut meta = txn.open_table(META).db()?;
                for (lane, pos) in group.positions.iter() {
                    meta.insert(*STOCK_THROUGH.get(lane), pos.head).db()?;
                }
            }
            if let Some(version) = group.overlay.version {
                txn.open_table(META).db()?.insert("inventory_version", version).db()?;
            }
        }
        txn.commit().db()?;
        Ok(done)
    }

    /// Appends new events (answering repeats from what is stored) and moves this node's
    /// own inventory counters by their deltas, all in the caller's transaction.
    fn append(
        &self,
        tables: &mut Tables<'_, '_>,
        group: &mut Group<'_, '_>,
        batch: Vec<NewEvent>,
        received_at_ms: u64,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for NewEvent { event, lane } in batch {
            if let Some(outcome) = repeat_of(tables, &event)? {
                outcomes.push(outcome);
                continue;
            }
            if !self.quota.admits(lane, group.used_bytes) {
                let mark_bytes = self.quota.mark(lane);
                outcomes.push(Outcome::Shed { lane, used_bytes: group.used_bytes, mark_bytes });
                continue;
            }
            let deltas = match deltas_of(&event, |key| group.overlay.value(key)) {
                Ok(deltas) => deltas,
                Err(e) => {
                    outcomes.push(Outcome::Invalid { field: e.what, reason: e.reason });
                    continue;
                }
            };
            if let Err(e) = group.overlay.apply(&self.actor, &deltas) {
                outcomes.push(Outcome::Invalid { field: "qty", reason: e.to_string() });
                continue;
            }
            let pos = group.positions.get_mut(lane);
            let seq = Seq::after(pos.head).filter(|s| s.get() <= SEQ_MAX).ok_or(StoreError::Corrupt {
                lane,
                seq: pos.head,
                reason: "overflow".into(),
            })?;
            // Paired with the relay's check: seqs of a lane are gapless and start at 1.
            assert_eq!(seq.get(), pos.head + 1, "lane {lane} seq must follow its head");
            let record = Record { received_at_ms, event, deltas };
            // Stored compactly; digested in the wire's encoding, as the relay digests it.
            let Encoded { stored, wire } = &mut *tables.encoded;
            stored.clear();
            codec::encode(&record, stored);
            wire.clear();
            *wire = postcard::to_extend(&record, std::mem::take(wire)).map_err(|e| StoreError::Corrupt {
                lane,
                seq: seq.get(),
                reason: e.to_string(),
            })?;
            tables.pending.get_mut(lane).push(tables.runs.get_mut(lane), seq.get(), stored)?;
            tables.new_ids.insert(record.event.event_id, (lane, seq.get()));
            let block = tables.digests.entry((lane as u8, block_of(seq.get()))).or_default();
            block.add(&BlockDigest::of_record(lane, seq.get(), wire));
            pos.head = seq.get();
            pos.backlog_bytes += stored.len() as u64;
            *group.appended += 1;
            outcomes.push(Outcome::Created(Placement { lane, seq, received_at_ms }));
        }
        Ok(outcomes)
    }
}

/// A stored block digest, or why it cannot be read.
fn read_digest(lane: Lane, block: u64, bytes: &[u8]) -> Result<BlockDigest, StoreError> {
    BlockDigest::from_bytes(bytes).ok_or_else(|| StoreError::Corrupt {
        lane,
        seq: seqs_of(block).0,
        reason: "unreadable block digest".into(),
    })
}

/// What a group commit carries from one command to the next.
struct Group<'a, 'r> {
    positions: &'a mut PerLane<LanePosition>,
    overlay: &'a mut Overlay<'r>,
    appended: &'a mut u64,
    /// Bytes the store occupied before the group: the quota marks are checked against it.
    used_bytes: u64,
    /// What the stock rows lagged behind before the group.
    stock_lag: &'a StockLag,
    /// Whether the group wrote the stock rows out and moved their `stock_through`.
    checkpointed: bool,
}

/// Answers `failure` to every command of a group without touching the file.
fn refuse(group: Vec<Command>, failure: &Failure) {
    for command in group {
        split(command).1.fail(StoreError::Failed(failure.clone()));
    }
}

/// Sets `slot` to `value`, saying whether it changed (for `watch::Sender::send_if_modified`).
fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    *slot = value;
    changed
}

/// The tables an append writes.
struct Tables<'a, 't> {
    runs: &'a mut PerLane<LaneTable<'t>>,
    /// The runs this transaction is gathering, inserted when full or at its end.
    pending: &'a mut PerLane<run::Pending>,
    /// The group's ids that the index held before it ([`stored_ids`]).
    stored_ids: &'a BTreeMap<String, u64>,
    /// The ids this transaction appends, inserted into `ids` in key order at its end.
    new_ids: &'a mut BTreeMap<EventId, (Lane, u64)>,
    /// What this transaction adds to each `(lane, block)`'s digest.
    digests: &'a mut BTreeMap<(u8, u64), BlockDigest>,
    /// The buffers each appended record is encoded into.
    encoded: &'a mut Encoded,
}

/// A record's two encodings, in buffers a group reuses from one record to the next.
#[derive(Default)]
struct Encoded {
    /// The stored form ([`codec`]).
    stored: Vec<u8>,
    /// Postcard's, as on the wire: what the block digests hash.
    wire: Vec<u8>,
}

/// The answer to an event whose `event_id` is stored already: a duplicate if the
/// payload is the same, a conflict if not; `None` for a new id.
fn repeat_of(tables: &mut Tables<'_, '_>, event: &Event) -> Result<Option<Outcome>, StoreError> {
    let (stored_lane, seq) = match tables.new_ids.get(&event.event_id) {
        Some(&placed) => placed,
        None => match tables.stored_ids.get(event.event_id.as_str()) {
            Some(&value) => placed(value)?,
            None => return Ok(None),
        },
    };
    let record = match tables.pending.get(stored_lane).get(stored_lane, seq)? {
        Some(bytes) => Some(decode_record(stored_lane, seq, bytes)?),
        None => run::record(tables.runs.get(stored_lane), stored_lane, seq)?,
    };
    let Some(record) = record else {
        return Err(StoreError::Corrupt { lane: stored_lane, seq, reason: "id without event".into() });
    };
    let seq = Seq::new(seq).ok_or(StoreError::Corrupt { lane: stored_lane, seq, reason: "seq 0".into() })?;
    let placement = Placement { lane: stored_lane, seq, received_at_ms: record.received_at_ms };
    Ok(Some(if record.event == *event {
        Outcome::Duplicate(placement)
    } else {
        Outcome::Conflict(placement)
    }))
}

/// The ids of a group's appends that the index holds, with their index values.
///
/// The ids are looked up in key order in one walk: a seek to the first id not yet
/// settled, then along the index while its keys keep pace with the ids. A scanner's ids
/// mostly grow (a counter, a time-ordered UUID), so a group's new ids sit past the end
/// of what each device stored before, and a seek per device settles them all: in
/// `ingest-batch` a lookup per event was a tenth of the writer's time. Random ids cost a
/// seek each, as the lookups did.
fn stored_ids(ids: &IdsTable<'_>, ops: &[Op]) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut wanted: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Append(batch) => Some(batch),
            _ => None,
        })
        .flatten()
        .map(|new| new.event.event_id.as_str())
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = BTreeMap::new();
    let mut next = 0;
    'seek: while let Some(&from) = wanted.get(next) {
        for entry in ids.range(from..).db()? {
            let (key, value) = entry.db()?;
            let key = key.value();
            // Ids before the index's next key are not in it.
            while wanted.get(next).is_some_and(|id| *id < key) {
                next += 1;
            }
            match wanted.get(next) {
                None => break 'seek,
                Some(&id) if id == key => {
                    found.insert(id.to_owned(), value.value());
                    next += 1;
                }
                // The index's keys fell behind the ids: seek again.
                Some(_) => continue 'seek,
            }
        }
        // Nothing in the index sorts after the rest.
        break;
    }
    Ok(found)
}

fn group_events(command: &Command) -> usize {
    match command {
        Command::Append { events, .. } => events.len(),
        Command::RecordAck { .. } | Command::Prune { .. } => 1,
        Command::Merge { update, .. } => update.state.len(),
    }
}

/// A lane's table keyed by seq: its runs, or format 4's rows.
type LaneTable<'t> = redb::Table<'t, u64, &'static [u8]>;

fn open_runs<'t>(txn: &'t redb::WriteTransaction) -> Result<PerLane<LaneTable<'t>>, StoreError> {
    open_per_lane(txn, &RUNS)
}

/// Format 4's tables, for the migrations.
fn open_events_v4<'t>(txn: &'t redb::WriteTransaction) -> Result<PerLane<LaneTable<'t>>, StoreError> {
    open_per_lane(txn, &EVENTS_V4)
}

fn open_per_lane<'t>(
    txn: &'t redb::WriteTransaction,
    tables: &PerLane<TableDefinition<u64, &'static [u8]>>,
) -> Result<PerLane<LaneTable<'t>>, StoreError> {
    let [critical, standard, bulk] = Lane::ALL;
    Ok(PerLane([
        txn.open_table(*tables.get(critical)).db()?,
        txn.open_table(*tables.get(standard)).db()?,
        txn.open_table(*tables.get(bulk)).db()?,
    ]))
}

/// Inserts every lane's gathered run.
fn flush(pending: &mut PerLane<run::Pending>, runs: &mut PerLane<LaneTable<'_>>) -> Result<(), StoreError> {
    for lane in Lane::ALL {
        pending.get_mut(lane).flush(runs.get_mut(lane))?;
    }
    Ok(())
}
type IdsTable<'t> = redb::Table<'t, &'static str, u64>;

/// Highest seq the id index can place: the top two bits of its value hold the lane. At a
/// million events a second a lane reaches it after 146,000 years.
pub const SEQ_MAX: u64 = (1 << 62) - 1;

/// The id index's value for `seq` of `lane` (`seq` is at most [`SEQ_MAX`]).
fn place(lane: Lane, seq: u64) -> u64 {
    debug_assert!(seq <= SEQ_MAX);
    (lane as u64) << 62 | seq
}

/// The lane and seq an id index value places an event at.
fn placed(value: u64) -> Result<(Lane, u64), StoreError> {
    Ok((lane_of((value >> 62) as u8)?, value & SEQ_MAX))
}

/// Removes the acknowledged records received before `received_before_ms` from the start
/// of each lane, at most [`PRUNE_EVENTS_MAX`] per lane, and their ids; a run that holds
/// some of them is cut to the rest, under the seq of its first kept record.
fn prune(
    runs: &mut PerLane<LaneTable<'_>>,
    ids: &mut IdsTable<'_>,
    positions: &PerLane<LanePosition>,
    received_before_ms: u64,
) -> Result<Vec<EventId>, StoreError> {
    let mut removed = Vec::new();
    for (lane, pos) in positions.iter() {
        let table = runs.get_mut(lane);
        let (mut whole, mut cut) = (Vec::new(), None);
        let mut taken = 0;
        'runs: for row in table.range(..=pos.acked).db()? {
            let (first, bytes) = row.db()?;
            let first = first.value();
            let mut entries = run::Entries::new(lane, first, bytes.value());
            loop {
                let rest = entries.rest();
                let Some(entry) = entries.next() else { break };
                let (seq, stored) = entry?;
                // Only what may go is decoded: nothing past the acknowledged.
                let record = if seq <= pos.acked && taken < PRUNE_EVENTS_MAX {
                    Some(decode_record(lane, seq, stored)?)
                } else {
                    None
                };
                let Some(record) = record.filter(|r| r.received_at_ms < received_before_ms) else {
                    if seq > first {
                        cut = Some((first, seq, rest.to_vec()));
                    }
                    break 'runs;
                };
                removed.push(record.event.event_id);
                taken += 1;
            }
            whole.push(first);
        }
        for first in whole {
            table.remove(first).db()?;
        }
        if let Some((first, kept, rest)) = cut {
            table.remove(first).db()?;
            table.insert(kept, rest.as_slice()).db()?;
        }
    }
    for event_id in &removed {
        ids.remove(event_id.as_str()).db()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
