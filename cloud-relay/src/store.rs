//! The relay's durable store: one redb file, one writer thread doing group commit, and
//! the ordered consumer log.
//!
//! # Tables
//! | table | key | value | written by |
//! |---|---|---|---|
//! | `meta` | `&str` name | `u64` | creation (`format_version`, `created_at_ms`); stock checkpoint (`stock_through`) |
//! | `log.runs` | `u64` offset of the run's first entry | the run's postcard [`LogEntry`]s, one after another | append, repair |
//! | `watermarks` | `(&str node_id, u64 epoch, u8 lane)` | `u64` highest seq stored | append |
//! | `nodes` | `&str` node_id | postcard [`NodeSeen`] | append, hello |
//! | `stock` | `(&str sku, &str location)` | `(u64 version, postcard one-key Inventory)` | stock checkpoint |
//! | `digests` | `(&str node_id, u64 epoch, u8 lane, u64 block)` | [`BlockDigest`] bytes, then the first and last log offset of the block's entries | append |
//!
//! The consumer log is kept in runs: the entries one append adds (a batch, less what the
//! relay held already) are rows of up to [`RUN_BYTES_MAX`] under the offset of their
//! first, each entry's offset following from its place in the run. A row per entry cost
//! the writer a tree insert per event, over a third of its time in `outpost-sim bench
//! drain`; a run is one insert. Readers find the run holding an offset as the last row
//! at or before it (`scan_log`).
//!
//! The events' inventory deltas are applied to their actor's counters with the commit
//! that appends them to the log: behind the watermark, so exactly once.
//!
//! # Stock checkpoints
//! The merged inventory is a fold of the log, and the `stock` rows hold it through a log
//! offset, `stock_through` in `meta`: every delta of the entries below it and none of
//! those at or after it. Opening the store loads the rows and applies the entries from
//! `stock_through` on again, so after any crash the inventory equals the fold of the
//! log. The rows are written at checkpoints, not with every group: a drain's events
//! move keys all over the table, and writing the row of every key a group moved took a
//! fifth of the writer's time in `outpost-sim bench drain` and 31 of the 166 bytes it
//! wrote per event (ARCHITECTURE.md, Performance). A checkpoint writes the row of every
//! key changed since the last one and moves `stock_through` to the group's end, in the
//! transaction of a group that:
//! - puts the entries behind at or past [`STOCK_LAG_ENTRIES_MAX`] or the keys behind
//!   at or past [`STOCK_LAG_KEYS_MAX`], which bounds what opening applies again and
//!   what one checkpoint writes;
//! - repairs, if it adds entries (they were counted when they first arrived, so
//!   applying them again would count them twice);
//! - or closes the store, so that a clean start applies nothing.
//!
//! # Commit points
//! An append and the new watermark of its `(node_id, epoch, lane)` are one write
//! transaction with [`Durability::Immediate`]: the log never holds an event that its
//! watermark does not cover, and an acknowledgement (sent only after the reply) never
//! covers an event that a crash could take back.
//!
//! # Exactly once
//! The connection's [`sync_protocol::Receiver`] already skips what the relay has, but two
//! connections of one node can overlap for a moment (a reconnect while the old one's
//! commit is queued). So the writer checks again inside the transaction: a batch's prefix
//! at or below the stored watermark is dropped, and a batch that would leave a gap is
//! refused. A watermark therefore never moves backwards and the log never holds a seq
//! twice.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use node::digest::{BlockDigest, DIGEST_BYTES, block_of};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sync_protocol::inventory::{Actor, Delta, Inventory, InventoryError, StockKey};
use sync_protocol::{Epoch, Lane, NodeId, NodeIdentity, PerLane, Record, Region, Repaired, Seq};

use crate::inventory::RelayInventory;
use tokio::sync::{mpsc, oneshot, watch};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "relay.redb";
/// On-disk format; a store of another version is refused rather than misread.
/// 2: stock rows in the canonical inventory encoding (actors listed once per row).
/// 3: the log in runs of entries (`log.runs`) instead of a row per entry (`log`).
/// 4: the stock rows written at checkpoints (`stock_through`): a relay that read them
/// as current would miss the deltas of the log after them.
///
/// A store of format 2 or 3 is migrated on open.
pub const FORMAT_VERSION: u64 = 4;
/// Most commands the writer puts in one transaction. Many nodes each sending a few
/// events at a time (`fan-in`) need groups of hundreds of batches, or the relay spends
/// its time in commits: every commit rewrites the pages of the watermarks, digests and
/// nodes it touched, and fsyncs them.
pub const GROUP_COMMANDS_MAX: usize = 1024;
/// Events in a transaction after which the writer adds no more commands: 32 batches of
/// 512. It bounds how long a commit takes, and so how long a shipment that arrives
/// during one waits before its own (`mixed`: tens of milliseconds in a drain).
pub const GROUP_EVENTS_MAX: usize = 16_384;
/// Commands queued for the writer before senders wait (backpressure to connections).
/// The writer holds up to [`GROUP_COMMANDS_MAX`] more, and up to twice
/// [`GROUP_EVENTS_MAX`] events, that it took off the queue to choose its next group
/// from.
pub const QUEUE_COMMANDS_MAX: usize = 1024;

/// Log entries after the last stock checkpoint at which the group that reaches them
/// writes one: opening the store applies at most about this many again (tens of
/// milliseconds).
pub const STOCK_LAG_ENTRIES_MAX: u64 = 65_536;
/// Keys changed since the last stock checkpoint at which the group that reaches them
/// writes one: it bounds the rows one checkpoint writes, and so how long its commit
/// keeps a shipment waiting.
pub const STOCK_LAG_KEYS_MAX: usize = 16_384;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Where `meta` records the log offset through which the stock rows hold the deltas.
const STOCK_THROUGH: &str = "stock_through";
/// The consumer log, in runs of entries (module doc).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log.runs");
/// Format 2's log, an entry per row: read once to migrate a store.
const LOG_V2: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Most bytes in one run of the log; an entry longer than this is a run of its own.
/// redb keeps a table's rows in 4 KiB leaves, and a value longer than a leaf gets a page
/// of its own, rounded up to a power of two: runs of a whole batch (up to 77 KB) left
/// a quarter of the file empty, and the relay's store measured 113-119 bytes per event
/// after `outpost-sim bench drain` against 86 with runs of at most 1,000 bytes (about 11
/// entries, four to a leaf) and 89 with 4,000. The node keeps its records in runs of the
/// same size for the same reason.
pub const RUN_BYTES_MAX: usize = 1_000;
const WATERMARKS: TableDefinition<(&str, u64, u8), u64> = TableDefinition::new("watermarks");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const STOCK: TableDefinition<(&str, &str), (u64, &[u8])> = TableDefinition::new("stock");
const DIGESTS: TableDefinition<(&str, u64, u8, u64), &[u8]> = TableDefinition::new("digests");

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (disk full, IO error, corruption it detected).
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    /// The file is of another format version.
    #[error("{path} has format version {found}; this relay reads version {FORMAT_VERSION}")]
    FormatVersion {
        /// The store file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// A stored value does not decode.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// A batch would leave a gap after the stored watermark.
    #[error("{stream}: batch starts at seq {first_seq} but the store holds through {watermark}")]
    Gap {
        /// `node_id/epoch/lane`.
        stream: String,
        /// Where the batch starts.
        first_seq: u64,
        /// What the store holds.
        watermark: u64,
    },
    /// The commit of the group failed; nothing of it is stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (shutdown, or a previous fatal error).
    #[error("store is closed")]
    Closed,
}

fn db(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb(e.into())
}

/// One event of the consumer log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The node that accepted it.
    pub node_id: NodeId,
    /// The node store's epoch.
    pub epoch: Epoch,
    /// Its lane.
    pub lane: Lane,
    /// Its seq in `(node_id, epoch, lane)`.
    pub seq: u64,
    /// The event and the node's acceptance time.
    pub record: Record,
}

impl LogEntry {
    /// The entry's encoding, the same bytes as its derived `Serialize` (postcard writes a
    /// struct as its fields in order), with where the record's own encoding starts in
    /// it: block digests hash the record's bytes, so the writer encodes it once.
    pub fn encode(&self) -> Result<(Vec<u8>, usize), postcard::Error> {
        let mut bytes = Vec::new();
        let record_at =
            encode_entry(&self.node_id, self.epoch, self.lane, self.seq, &self.record, &mut bytes)?;
        Ok((bytes, record_at))
    }
}

/// Encodes the entry of `record` into `bytes`, replacing what it held, as
/// [`LogEntry::encode`] does but from borrowed parts: the writer appends a whole group
/// through one buffer, without an entry (and a copy of its node's id) per event. Returns
/// where the record's encoding starts.
fn encode_entry(
    node_id: &NodeId,
    epoch: Epoch,
    lane: Lane,
    seq: u64,
    record: &Record,
    bytes: &mut Vec<u8>,
) -> Result<usize, postcard::Error> {
    let mut buf = std::mem::take(bytes);
    buf.clear();
    buf = postcard::to_extend(&(node_id, epoch, lane, seq), buf)?;
    let record_at = buf.len();
    *bytes = postcard::to_extend(record, buf)?;
    Ok(record_at)
}

/// A batch's log entries, encoded one after another, with each one's block digest.
struct Entries {
    bytes: Vec<u8>,
    /// Per record: where its entry ends in `bytes`, and its digest.
    spans: Vec<(usize, BlockDigest)>,
}

impl Entries {
    fn of(batch: &Append) -> Result<Entries, postcard::Error> {
        let mut entries = Entries { bytes: Vec::new(), spans: Vec::with_capacity(batch.records.len()) };
        let mut entry = Vec::with_capacity(256);
        for (seq, record) in (batch.first_seq.get()..).zip(&batch.records) {
            let record_at =
                encode_entry(&batch.node.node_id, batch.epoch, batch.lane, seq, record, &mut entry)?;
            let digest = BlockDigest::of_record(batch.lane, seq, &entry[record_at..]);
            entries.bytes.extend_from_slice(&entry);
            entries.spans.push((entries.bytes.len(), digest));
        }
        Ok(entries)
    }

    /// The `i`th record's digest.
    fn digest(&self, i: usize) -> &BlockDigest {
        &self.spans[i].1
    }

    /// The entries from the `i`th record's on, and where each of them ends in those bytes.
    fn from(&self, i: usize) -> (&[u8], impl Iterator<Item = usize> + '_) {
        let start = i.checked_sub(1).map_or(0, |before| self.spans[before].0);
        (&self.bytes[start..], self.spans[i..].iter().map(move |(end, _)| end - start))
    }
}

/// What the relay knows of a node between connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSeen {
    /// The region its certificate names.
    pub region: Region,
    /// Last hello or batch, ms since the Unix epoch by the relay's clock.
    pub last_seen_ms: u64,
}

/// The durable watermark of one `(epoch, lane)` stream of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    /// The epoch.
    pub epoch: Epoch,
    /// The lane.
    pub lane: Lane,
    /// Highest seq stored.
    pub watermark: u64,
}

/// A node as `/v1/nodes` lists it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// The node.
    pub node_id: NodeId,
    /// Its last known state.
    pub seen: NodeSeen,
    /// Its streams.
    pub streams: Vec<StreamMark>,
}

/// The result of one append, sent once its group has committed.
#[derive(Debug)]
pub struct Committed {
    /// The lane.
    pub lane: Lane,
    /// The last seq of the batch: everything through it is now durable.
    pub through: Seq,
    /// The commit's outcome.
    pub result: Result<(), StoreError>,
}

/// Where the writer sends a connection's [`Committed`] replies, in commit order.
pub type CommitReplies = mpsc::UnboundedSender<Committed>;

/// Events of one `(node, epoch, lane)` stream to append, starting at `first_seq`.
#[derive(Debug, Clone)]
pub struct Append {
    /// The node they came from.
    pub node: NodeIdentity,
    /// Its store's epoch.
    pub epoch: Epoch,
    /// The lane.
    pub lane: Lane,
    /// The seq of `records[0]`.
    pub first_seq: Seq,
    /// The events.
    pub records: Vec<Record>,
}

enum Command {
    Append(Append, Entries, CommitReplies),
    /// Records sent again by reconciliation: add those missing below the watermark.
    Repair(Append, oneshot::Sender<Result<Repaired, StoreError>>),
    Seen {
        node: NodeIdentity,
    },
    /// Stops the writer once everything queued before it has committed.
    Close,
}

impl Command {
    /// An append to the critical lane.
    fn is_critical(&self) -> bool {
        matches!(self, Command::Append(batch, ..) if batch.lane == Lane::Critical)
    }

    /// The events it would append.
    fn events(&self) -> usize {
        match self {
            Command::Append(batch, ..) | Command::Repair(batch, _) => batch.records.len(),
            Command::Seen { .. } | Command::Close => 0,
        }
    }
}

/// Takes the next group off `queued`, up to the group's bounds: first the critical lane's
/// appends, so that a shipment waits for at most the commit under way and its own, never
/// behind a drain's backlog; then the rest in the order they came, ending at a
/// [`Command::Close`]. Each lane's appends keep their order, and nothing queued behind a
/// close joins a group.
fn next_group(queued: &mut VecDeque<Command>) -> Vec<Command> {
    let mut group = Vec::new();
    let mut events = 0;
    let room =
        |group: &Vec<Command>, events: usize| group.len() < GROUP_COMMANDS_MAX && events < GROUP_EVENTS_MAX;
    if queued.iter().any(Command::is_critical) {
        let mut rest = VecDeque::with_capacity(queued.len());
        let mut closed = false;
        for command in queued.drain(..) {
            if !closed && command.is_critical() && room(&group, events) {
                events += command.events();
                group.push(command);
            } else {
                closed |= matches!(command, Command::Close);
                rest.push_back(command);
            }
        }
        *queued = rest;
    }
    while room(&group, events)
        && let Some(command) = queued.pop_front()
    {
        events += command.events();
        let close = matches!(command, Command::Close);
        group.push(command);
        if close {
            break;
        }
    }
    group
}

/// Counters of the writer, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Write transactions that appended at least one event.
    pub commits: Counter,
    /// Events appended to the log.
    pub events: Counter,
    /// Events dropped as already stored (overlapping retransmissions).
    pub skipped: Counter,
    /// Inventory keys whose merged value is below zero now.
    pub exceptions: Gauge,
    /// Times a key's merged value went below zero.
    pub exceptions_raised: Counter,
}

impl WriterStats {
    /// Registers the counters under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "commits",
            "Write transactions that appended events (one fsync each)",
            self.commits.clone(),
        );
        registry.register("events", "Events appended to the log", self.events.clone());
        registry.register("events_skipped", "Retransmitted events already stored", self.skipped.clone());
        registry.register(
            "inventory_exceptions",
            "Inventory keys with negative merged stock",
            self.exceptions.clone(),
        );
        registry.register(
            "inventory_exceptions_raised",
            "Times a key's merged stock went below zero",
            self.exceptions_raised.clone(),
        );
    }
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    commands: mpsc::Sender<Command>,
    next_offset: watch::Receiver<u64>,
    stats: Arc<WriterStats>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    inventory: Arc<RwLock<RelayInventory>>,
}

impl Store {
    /// Opens the store in `dir` (creating it if missing) and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(STORE_FILE);
        let database = Database::create(&path).map_err(db)?;
        init_meta(&database, &path)?;
        let next = load_next_offset(&database)?;
        let (inventory, stock_through) = load_inventory(&database, next)?;
        let lagging_keys = inventory.changed_count_since(stock_through);
        let stats = Arc::new(WriterStats::default());
        stats.exceptions.set(inventory.exceptions_count() as i64);
        let inventory = Arc::new(RwLock::new(inventory));
        let database = Arc::new(database);
        let (commands, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let (next_tx, next_offset) = watch::channel(next);
        let writer = Writer {
            db: database.clone(),
            next_offset: next_tx,
            stats: stats.clone(),
            inventory: inventory.clone(),
            stock_through: Cell::new(stock_through),
            lagging_keys: Cell::new(lagging_keys),
        };
        let handle = std::thread::Builder::new()
            .name("relay-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| db(redb::StorageError::from(e)))?;
        let writer = Arc::new(Mutex::new(Some(handle)));
        Ok(Store { db: database, commands, next_offset, stats, writer, inventory })
    }

    /// Queues a batch for the next group commit; the outcome arrives on `reply` after
    /// the commit, in the order the lane's batches were queued (a critical batch may be
    /// committed before another lane's batch queued ahead of it).
    ///
    /// The batch's log entries are encoded and hashed here, in the caller's task, so that
    /// the connections do that work in parallel and the writer, the serial part, only
    /// inserts them.
    pub async fn append(&self, batch: Append, reply: CommitReplies) -> Result<(), StoreError> {
        let entries = Entries::of(&batch).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
        self.commands.send(Command::Append(batch, entries, reply)).await.map_err(|_| StoreError::Closed)
    }

    /// Takes records a node sent again because reconciliation found their block differs
    /// here: each one at or below the stream's watermark that the log lacks is appended
    /// (with its digest), one already held is counted as present or differing (and left
    /// as it is), one past the watermark is left to normal replication. Inventory and
    /// watermarks do not move: they counted these records when they first arrived. (A
    /// record lost from the log after the last stock checkpoint took its delta with it
    /// when the relay next opened the store, which applies that part of the log again; a
    /// repair does not bring the delta back.)
    pub async fn repair(&self, records: Append) -> Result<Repaired, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Repair(records, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records that `node` was seen now (a hello). Best effort: durable with the next
    /// appending commit.
    pub async fn seen(&self, node: NodeIdentity) -> Result<(), StoreError> {
        self.commands.send(Command::Seen { node }).await.map_err(|_| StoreError::Closed)
    }

    /// Commits everything queued so far, stops the writer and waits for it to release
    /// the file: the last step of a graceful shutdown. Appends from other handles fail
    /// with [`StoreError::Closed`] afterwards.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let handle = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// The stored watermarks of `(node_id, epoch)`, 0 for lanes never seen.
    pub fn watermarks(&self, node_id: &NodeId, epoch: Epoch) -> Result<PerLane<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(WATERMARKS).map_err(db)?;
        let mut marks = PerLane::<u64>::default();
        for lane in Lane::ALL {
            if let Some(v) = table.get((node_id.as_str(), epoch.0, lane as u8)).map_err(db)? {
                *marks.get_mut(lane) = v.value();
            }
        }
        Ok(marks)
    }

    /// The digests of `(node_id, epoch, lane)`'s blocks from `from_block` on, at most
    /// `limit` of them, in block order.
    pub fn digests(
        &self,
        node_id: &NodeId,
        epoch: Epoch,
        lane: Lane,
        from_block: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredDigest)>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(DIGESTS).map_err(db)?;
        let (node, lane) = (node_id.as_str(), lane as u8);
        let mut out = Vec::new();
        for row in table
            .range((node, epoch.0, lane, from_block)..=(node, epoch.0, lane, u64::MAX))
            .map_err(db)?
            .take(limit)
        {
            let (key, value) = row.map_err(db)?;
            let block = key.value().3;
            let digest = StoredDigest::from_bytes(value.value()).ok_or_else(|| StoreError::Corrupt {
                what: format!("digest of {node_id}/{epoch}/{} block {block}", lane),
                reason: "unreadable".into(),
            })?;
            out.push((block, digest));
        }
        Ok(out)
    }

    /// Up to `limit` log entries from offset `from` on.
    pub fn read_log(&self, from: u64, limit: usize) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        // A consumer at the tail would otherwise decode the whole last run for nothing.
        if limit == 0 || from >= *self.next_offset.borrow() {
            return Ok(out);
        }
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(LOG).map_err(db)?;
        scan_log(&table, from..=u64::MAX, |offset, entry, _| {
            out.push((offset, entry));
            if out.len() < limit { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
        })?;
        Ok(out)
    }

    /// Whether the relay's store has heard from `node_id` before.
    pub fn knows(&self, node_id: &NodeId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let nodes = txn.open_table(NODES).map_err(db)?;
        Ok(nodes.get(node_id.as_str()).map_err(db)?.is_some())
    }

    /// Every node the relay has heard from, with its streams' watermarks.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let nodes = txn.open_table(NODES).map_err(db)?;
        let marks = txn.open_table(WATERMARKS).map_err(db)?;
        let mut out = Vec::new();
        for row in nodes.iter().map_err(db)? {
            let (id, seen) = row.map_err(db)?;
            let corrupt =
                |reason: String| StoreError::Corrupt { what: format!("node {}", id.value()), reason };
            let node_id: NodeId =
                id.value().parse().map_err(|e: sync_protocol::ParseError| corrupt(e.to_string()))?;
            let seen: NodeSeen = postcard::from_bytes(seen.value()).map_err(|e| corrupt(e.to_string()))?;
            let mut streams = Vec::new();
            let range = (node_id.as_str(), 0u64, 0u8)..=(node_id.as_str(), u64::MAX, u8::MAX);
            for mark in marks.range(range).map_err(db)? {
                let (key, watermark) = mark.map_err(db)?;
                let (_, epoch, lane) = key.value();
                let lane = Lane::from_index(usize::from(lane))
                    .ok_or_else(|| corrupt(format!("lane index {lane}")))?;
                streams.push(StreamMark { epoch: Epoch(epoch), lane, watermark: watermark.value() });
            }
            out.push(NodeRow { node_id, seen, streams });
        }
        Ok(out)
    }

    /// The offset the next log entry will get; changes after every appending commit.
    pub fn next_offset(&self) -> watch::Receiver<u64> {
        self.next_offset.clone()
    }

    /// Reads the merged inventory; its version is [`Store::next_offset`].
    pub fn with_inventory<T>(&self, f: impl FnOnce(&RelayInventory) -> T) -> T {
        f(&self.inventory.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

fn init_meta(database: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = database.begin_write().map_err(db)?;
    {
        let mut meta = txn.open_table(META).map_err(db)?;
        let version = meta.get("format_version").map_err(db)?.map(|v| v.value());
        match version {
            Some(found @ (2 | 3)) => {
                if found == 2 {
                    let runs = migrate_log_from_v2(&txn)?;
                    tracing::info!(runs, "store migrated from format 2: the log is kept in runs of entries");
                }
                // Until format 4 every commit wrote its rows: they hold the whole log.
                let next = next_offset_of(&txn.open_table(LOG).map_err(db)?)?;
                meta.insert(STOCK_THROUGH, next).map_err(db)?;
                meta.insert("format_version", FORMAT_VERSION).map_err(db)?;
            }
            Some(found) if found != FORMAT_VERSION => {
                return Err(StoreError::FormatVersion { path: path.to_owned(), found });
            }
            Some(_) => {}
            None => {
                meta.insert("format_version", FORMAT_VERSION).map_err(db)?;
                meta.insert("created_at_ms", now_ms()).map_err(db)?;
                meta.insert(STOCK_THROUGH, 0).map_err(db)?;
            }
        }
    }
    txn.open_table(LOG).map_err(db)?;
    txn.open_table(WATERMARKS).map_err(db)?;
    txn.open_table(NODES).map_err(db)?;
    txn.open_table(STOCK).map_err(db)?;
    txn.open_table(DIGESTS).map_err(db)?;
    txn.commit().map_err(db)
}

/// Rewrites format 2's log (an entry per row) into runs of consecutive offsets, at most
/// [`RUN_BYTES_MAX`] each, and drops it. Returns the runs written.
fn migrate_log_from_v2(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut runs = 0;
    {
        let old = txn.open_table(LOG_V2).map_err(db)?;
        let mut log = txn.open_table(LOG).map_err(db)?;
        // The run being gathered: its first offset, its length and its bytes.
        let mut run: Option<(u64, u64, Vec<u8>)> = None;
        for row in old.iter().map_err(db)? {
            let (offset, bytes) = row.map_err(db)?;
            let offset = offset.value();
            match &mut run {
                Some((first, len, buf))
                    if *first + *len == offset && run_takes(buf.len(), bytes.value().len()) =>
                {
                    buf.extend_from_slice(bytes.value());
                    *len += 1;
                }
                _ => {
                    if let Some((first, _, buf)) = run.replace((offset, 1, bytes.value().to_vec())) {
                        log.insert(first, buf.as_slice()).map_err(db)?;
                        runs += 1;
                    }
                }
            }
        }
        if let Some((first, _, buf)) = run {
            log.insert(first, buf.as_slice()).map_err(db)?;
            runs += 1;
        }
    }
    txn.delete_table(LOG_V2).map_err(db)?;
    Ok(runs)
}

fn load_next_offset(database: &Database) -> Result<u64, StoreError> {
    let txn = database.begin_read().map_err(db)?;
    next_offset_of(&txn.open_table(LOG).map_err(db)?)
}

/// The offset after the log's last entry.
fn next_offset_of(log: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    let Some((first, bytes)) = log.last().map_err(db)? else { return Ok(0) };
    let mut next = first.value();
    for entry in Run::new(first.value(), bytes.value()) {
        next = entry?.0 + 1;
    }
    Ok(next)
}

/// Inserts consecutive log entries from offset `first` on as runs of at most
/// [`RUN_BYTES_MAX`]: `bytes` holds them one after another, and `ends` gives where each
/// of them ends in it.
fn insert_runs(
    log: &mut redb::Table<'_, u64, &'static [u8]>,
    first: u64,
    bytes: &[u8],
    ends: impl IntoIterator<Item = usize>,
) -> Result<(), StoreError> {
    let (mut run_first, mut run_start, mut end_before) = (first, 0, 0);
    for (offset, end) in (first..).zip(ends) {
        if !run_takes(end_before - run_start, end - end_before) {
            log.insert(run_first, &bytes[run_start..end_before]).map_err(db)?;
            (run_first, run_start) = (offset, end_before);
        }
        end_before = end;
    }
    if end_before > run_start {
        log.insert(run_first, &bytes[run_start..end_before]).map_err(db)?;
    }
    Ok(())
}

/// Whether a run of `run_bytes` takes an entry of `entry_bytes` without passing
/// [`RUN_BYTES_MAX`]; an empty run takes any entry.
fn run_takes(run_bytes: usize, entry_bytes: usize) -> bool {
    run_bytes == 0 || run_bytes + entry_bytes <= RUN_BYTES_MAX
}

/// The entries of a run stored under offset `first`, each with its offset and its bytes.
struct Run<'a> {
    /// The next entry's offset; `None` past `u64::MAX`, where no entry can be.
    offset: Option<u64>,
    rest: &'a [u8],
}

impl<'a> Run<'a> {
    fn new(first: u64, bytes: &'a [u8]) -> Self {
        Run { offset: Some(first), rest: bytes }
    }
}

impl<'a> Iterator for Run<'a> {
    type Item = Result<(u64, LogEntry, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(offset) = self.offset else {
            self.rest = &[];
            return Some(Err(StoreError::Corrupt {
                what: "log run".into(),
                reason: "entries past the last offset".into(),
            }));
        };
        match postcard::take_from_bytes::<LogEntry>(self.rest) {
            Ok((entry, rest)) => {
                let raw = &self.rest[..self.rest.len() - rest.len()];
                self.rest = rest;
                self.offset = offset.checked_add(1);
                Some(Ok((offset, entry, raw)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(StoreError::Corrupt { what: format!("log offset {offset}"), reason: e.to_string() }))
            }
        }
    }
}

/// Shows `visit` the log's entries with offsets in `offsets`, in order, each with its
/// bytes, until it breaks. The run holding the first is the last row at or before it.
fn scan_log(
    log: &impl ReadableTable<u64, &'static [u8]>,
    offsets: std::ops::RangeInclusive<u64>,
    mut visit: impl FnMut(u64, LogEntry, &[u8]) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let (from, through) = (*offsets.start(), *offsets.end());
    let start = match log.range(..=from).map_err(db)?.next_back() {
        Some(row) => row.map_err(db)?.0.value(),
        None => from,
    };
    for row in log.range(start..=through).map_err(db)? {
        let (first, bytes) = row.map_err(db)?;
        for entry in Run::new(first.value(), bytes.value()) {
            let (offset, entry, raw) = entry?;
            if offset > through {
                return Ok(());
            }
            if offset >= from && visit(offset, entry, raw).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The merged inventory of a log that ends before `next`: the stock rows, and the
/// deltas of the entries from `stock_through` on applied again (module doc, "Stock
/// checkpoints"), at version `next`. Returns it with `stock_through`.
fn load_inventory(database: &Database, next: u64) -> Result<(RelayInventory, u64), StoreError> {
    let txn = database.begin_read().map_err(db)?;
    let table = txn.open_table(STOCK).map_err(db)?;
    let mut inventory = RelayInventory::default();
    for row in table.iter().map_err(db)? {
        let (key, value) = row.map_err(db)?;
        let (version, bytes) = value.value();
        let stock: Inventory = postcard::from_bytes(bytes).map_err(|e| {
            let (sku, location) = key.value();
            StoreError::Corrupt { what: format!("stock {sku}@{location}"), reason: e.to_string() }
        })?;
        for (key, value) in inventory.commit(&stock, version) {
            tracing::warn!(%key, value, "negative merged stock");
        }
    }
    let through = stock_through_of(&txn.open_table(META).map_err(db)?)?
        .ok_or_else(|| StoreError::Corrupt { what: "meta".into(), reason: format!("no {STOCK_THROUGH}") })?;
    if through > next {
        let reason = format!("{STOCK_THROUGH} {through} is past the log's end {next}");
        return Err(StoreError::Corrupt { what: "meta".into(), reason });
    }
    if through < next {
        let mut changed = Inventory::new();
        let mut failed = None;
        scan_log(&txn.open_table(LOG).map_err(db)?, through..=next - 1, |offset, entry, _| {
            let actor = Actor { node_id: entry.node_id, epoch: entry.epoch };
            for delta in &entry.record.deltas {
                if let Err(e) = apply_delta(&mut changed, inventory.merged(), &actor, delta) {
                    failed = Some(StoreError::Corrupt {
                        what: format!("log entry {offset}"),
                        reason: format!("inventory of {actor}: {e}"),
                    });
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        for (key, value) in inventory.commit(&changed, next) {
            tracing::warn!(%key, value, "negative merged stock");
        }
        tracing::info!(
            from = through,
            entries = next - through,
            "applied the log after the stock checkpoint"
        );
    }
    Ok((inventory, through))
}

/// `stock_through` as `meta` holds it, if it does.
fn stock_through_of(meta: &impl ReadableTable<&'static str, u64>) -> Result<Option<u64>, StoreError> {
    Ok(meta.get(STOCK_THROUGH).map_err(db)?.map(|v| v.value()))
}

/// Applies `actor`'s delta to `changed`, the keys a group moves over `merged`: a key's
/// state comes over from `merged` the first time the group moves it, so `changed` holds
/// the whole new state of every key it has.
fn apply_delta(
    changed: &mut Inventory,
    merged: &Inventory,
    actor: &Actor,
    delta: &Delta,
) -> Result<(), InventoryError> {
    if changed.stock(&delta.key).is_none() {
        changed.merge_key(merged, &delta.key);
    }
    changed.apply(actor, delta)
}

/// Writes a stock checkpoint in `txn`: the row of every key changed since `since`, with
/// `changed`'s state at `version` for the keys it holds and `replica`'s for the rest,
/// and `version` as the new `stock_through`. Returns the rows written.
fn write_checkpoint(
    txn: &redb::WriteTransaction,
    replica: &RelayInventory,
    since: u64,
    changed: &Inventory,
    version: u64,
) -> Result<usize, StoreError> {
    let mut stock = txn.open_table(STOCK).map_err(db)?;
    let mut row = |key: &StockKey, at: u64, of: &Inventory| {
        let bytes =
            postcard::to_allocvec(&of.key_row(key)).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
        stock.insert((key.sku.as_str(), key.location.as_str()), (at, bytes.as_slice())).map_err(db)?;
        Ok::<_, StoreError>(())
    };
    let mut rows = 0;
    for (key, _) in changed.iter() {
        row(key, version, changed)?;
        rows += 1;
    }
    for (at, key) in replica.changed_since(since) {
        if changed.stock(key).is_none() {
            row(key, at, replica.merged())?;
            rows += 1;
        }
    }
    txn.open_table(META).map_err(db)?.insert(STOCK_THROUGH, version).map_err(db)?;
    Ok(rows)
}

/// Commits a writer transaction, with an fsync if `durable`. Each commit records redb's
/// allocator state (quick-repair), so that opening the file after a crash loads it
/// instead of walking the whole log (seconds for a large store).
fn commit(mut txn: redb::WriteTransaction, durable: bool) -> Result<(), StoreError> {
    txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(db)?;
    txn.set_quick_repair(true);
    txn.commit().map_err(db)
}

/// Milliseconds since the Unix epoch by the relay's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Writer {
    db: Arc<Database>,
    next_offset: watch::Sender<u64>,
    stats: Arc<WriterStats>,
    inventory: Arc<RwLock<RelayInventory>>,
    /// The log offset through which the stock rows hold the deltas (module doc).
    stock_through: Cell<u64>,
    /// Keys changed since that checkpoint, whose rows the next one writes.
    lagging_keys: Cell<usize>,
}

/// Where to answer one append of a group.
struct Pending {
    lane: Lane,
    through: Seq,
    reply: CommitReplies,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut queued = VecDeque::new();
        let mut queued_events = 0;
        loop {
            if queued.is_empty() {
                let Some(first) = rx.blocking_recv() else { return };
                queued_events += first.events();
                queued.push_back(first);
            }
            // What was queued while the previous commit ran is a candidate for this one.
            while queued.len() < GROUP_COMMANDS_MAX
                && queued_events < 2 * GROUP_EVENTS_MAX
                && let Ok(next) = rx.try_recv()
            {
                queued_events += next.events();
                queued.push_back(next);
            }
            let group = next_group(&mut queued);
            queued_events -= group.iter().map(Command::events).sum::<usize>();
            if self.commit_group(group) {
                // Whatever is queued behind the close is answered with `Closed` as the
                // queue and the channel drop.
                return;
            }
        }
    }

    /// Commits a group; true if it held [`Command::Close`].
    fn commit_group(&self, group: Vec<Command>) -> bool {
        let mut seen = Vec::new();
        let mut appends = Vec::new();
        let mut pending = Vec::new();
        let mut close = false;
        let mut repairs = Vec::new();
        for command in group {
            match command {
                Command::Seen { node } => seen.push(node),
                Command::Close => close = true,
                Command::Repair(records, reply) => repairs.push((records, reply)),
                Command::Append(batch, entries, reply) => {
                    let through = last_seq(batch.first_seq, batch.records.len());
                    pending.push(Pending { lane: batch.lane, through, reply });
                    appends.push((batch, entries));
                }
            }
        }
        let start = *self.next_offset.borrow();
        let mut next = start;
        let mut changed = Inventory::new();
        match self.apply(&seen, &appends, &mut next, &mut changed, close) {
            Ok(results) => {
                if !changed.is_empty() {
                    let mut inventory = self.inventory.write().unwrap_or_else(PoisonError::into_inner);
                    for (key, value) in inventory.commit(&changed, next) {
                        tracing::warn!(%key, value, "negative merged stock: listed in /v1/exceptions");
                        self.stats.exceptions_raised.inc();
                    }
                    self.stats.exceptions.set(inventory.exceptions_count() as i64);
                }
                if next > start {
                    self.stats.commits.inc();
                    self.stats.events.inc_by(next - start);
                    self.next_offset.send_replace(next);
                }
                for (p, result) in pending.into_iter().zip(results) {
                    let _ = p.reply.send(Committed { lane: p.lane, through: p.through, result });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "relay store commit failed; the group is not acknowledged");
                let message = e.to_string();
                for p in pending {
                    let result = Err(StoreError::CommitFailed(message.clone()));
                    let _ = p.reply.send(Committed { lane: p.lane, through: p.through, result });
                }
            }
        }
        for (records, reply) in repairs {
            let start = *self.next_offset.borrow();
            let mut next = start;
            let result = self.repair(&records, &mut next);
            if result.is_ok() && next > start {
                self.stats.commits.inc();
                self.stats.events.inc_by(next - start);
                self.next_offset.send_replace(next);
            }
            let _ = reply.send(result);
        }
        close
    }

    /// Applies one repair in its own transaction ([`Store::repair`]). What the relay
    /// holds of the records' blocks is found between the blocks' first and last log
    /// offsets: a scan of the log over the time the block took to fill (longer for a
    /// block repaired before), in the writer, so repairs are for an operator's hand, not
    /// for a loop.
    fn repair(&self, r: &Append, next: &mut u64) -> Result<Repaired, StoreError> {
        let node = r.node.node_id.as_str();
        let lane = r.lane as u8;
        let first = r.first_seq.get();
        let last = first.checked_add((r.records.len() as u64).saturating_sub(1)).ok_or_else(|| {
            StoreError::CommitFailed(format!("a repair from seq {first} runs past the last seq"))
        })?;
        let mut outcome = Repaired {
            lane: r.lane,
            first_seq: r.first_seq,
            count: r.records.len() as u32,
            inserted: 0,
            present: 0,
            differing: 0,
            beyond_watermark: 0,
        };
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut log = txn.open_table(LOG).map_err(db)?;
            let marks = txn.open_table(WATERMARKS).map_err(db)?;
            let mut digests = txn.open_table(DIGESTS).map_err(db)?;
            let watermark = marks.get((node, r.epoch.0, lane)).map_err(db)?.map_or(0, |v| v.value());
            let mut blocks: BTreeMap<u64, StoredDigest> = BTreeMap::new();
            let mut held: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for block in block_of(first)..=block_of(last) {
                let Some(stored) = digests.get((node, r.epoch.0, lane, block)).map_err(db)? else { continue };
                let stored = StoredDigest::from_bytes(stored.value()).ok_or_else(|| {
                    StoreError::CommitFailed(format!("unreadable digest of {node} block {block}"))
                })?;
                blocks.insert(block, stored);
                let mut ours = Vec::new();
                scan_log(&log, stored.first_offset..=stored.last_offset, |_, entry, _| {
                    if entry.node_id == r.node.node_id
                        && entry.epoch == r.epoch
                        && entry.lane == r.lane
                        && (first..=last).contains(&entry.seq)
                    {
                        ours.push((entry.seq, entry.record));
                    }
                    ControlFlow::Continue(())
                })?;
                for (seq, record) in ours {
                    let encoded = postcard::to_allocvec(&record)
                        .map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                    held.insert(seq, encoded);
                }
            }
            // The entries inserted, as runs from the next offset.
            let run_offset = *next;
            let (mut run, mut ends) = (Vec::new(), Vec::new());
            for (seq, record) in (first..=last).zip(&r.records) {
                if seq > watermark {
                    outcome.beyond_watermark += 1;
                    continue;
                }
                let encoded =
                    postcard::to_allocvec(record).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                match held.get(&seq) {
                    Some(stored) if *stored == encoded => outcome.present += 1,
                    Some(_) => outcome.differing += 1,
                    None => {
                        let one = BlockDigest::of_record(r.lane, seq, &encoded);
                        blocks
                            .entry(block_of(seq))
                            .or_insert_with(|| StoredDigest::empty(*next))
                            .add(&one, *next);
                        let entry = LogEntry {
                            node_id: r.node.node_id.clone(),
                            epoch: r.epoch,
                            lane: r.lane,
                            seq,
                            record: record.clone(),
                        };
                        let (bytes, _) =
                            entry.encode().map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                        run.extend_from_slice(&bytes);
                        ends.push(run.len());
                        *next += 1;
                        outcome.inserted += 1;
                    }
                }
            }
            insert_runs(&mut log, run_offset, &run, ends)?;
            if outcome.inserted > 0 {
                for (block, stored) in blocks {
                    digests
                        .insert((node, r.epoch.0, lane, block), stored.to_bytes().as_slice())
                        .map_err(db)?;
                }
            }
        }
        // The entries added were counted when they first arrived: the checkpoint puts them
        // below `stock_through`, where opening the store does not apply them again.
        if outcome.inserted > 0 {
            let replica = self.inventory.read().unwrap_or_else(PoisonError::into_inner);
            write_checkpoint(&txn, &replica, self.stock_through.get(), &Inventory::new(), *next)?;
        }
        // A repair that added nothing wrote nothing, and is not worth an fsync.
        commit(txn, outcome.inserted > 0)?;
        if outcome.inserted > 0 {
            self.checkpointed(*next);
        }
        if outcome.inserted > 0 || outcome.differing > 0 {
            tracing::warn!(
                node,
                lane = r.lane.as_str(),
                first,
                last,
                inserted = outcome.inserted,
                differing = outcome.differing,
                "repair: the log lacked or differed on records it had acknowledged"
            );
        }
        Ok(outcome)
    }

    /// Records a stock checkpoint through log offset `through` once its commit returned.
    fn checkpointed(&self, through: u64) {
        self.stock_through.set(through);
        self.lagging_keys.set(0);
    }

    /// Applies a group in one transaction: one result per append, meaningful only if the
    /// whole transaction commits. `next` is the log's next offset, advanced per entry; `changed`
    /// collects the whole new state of every inventory key the group moved. A group that
    /// `closes` the store checkpoints whatever lags.
    fn apply(
        &self,
        seen: &[NodeIdentity],
        appends: &[(Append, Entries)],
        next: &mut u64,
        changed: &mut Inventory,
        closes: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let replica = self.inventory.read().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(db)?;
        let start = *next;
        let mut results = Vec::with_capacity(appends.len());
        {
            let mut log = txn.open_table(LOG).map_err(db)?;
            let mut marks = txn.open_table(WATERMARKS).map_err(db)?;
            let mut nodes = txn.open_table(NODES).map_err(db)?;
            let mut digests: BTreeMap<(String, u64, u8, u64), StoredDigest> = BTreeMap::new();
            let now = now_ms();
            // Every node that said hello or sent a batch, once however many of its batches
            // the group holds.
            let mut written = BTreeSet::new();
            let nodes_seen = seen.iter().chain(appends.iter().map(|(batch, _)| &batch.node));
            for node in nodes_seen.filter(|node| written.insert(node.node_id.as_str())) {
                let row = NodeSeen { region: node.region.clone(), last_seen_ms: now };
                let bytes =
                    postcard::to_allocvec(&row).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                nodes.insert(node.node_id.as_str(), bytes.as_slice()).map_err(db)?;
            }
            for (Append { node, epoch, lane, first_seq, records }, entries) in appends {
                let (epoch, lane) = (*epoch, *lane);
                let key = (node.node_id.as_str(), epoch.0, lane as u8);
                let watermark = marks.get(key).map_err(db)?.map_or(0, |v| v.value());
                if first_seq.get() > watermark + 1 {
                    let stream = format!("{}/{epoch}/{lane}", node.node_id);
                    results.push(Err(StoreError::Gap { stream, first_seq: first_seq.get(), watermark }));
                    continue;
                }
                let mut seq = first_seq.get();
                // The records below the watermark are a prefix; the rest is one run, in rows
                // of at most `RUN_BYTES_MAX`.
                let mut run = None;
                let actor = Actor { node_id: node.node_id.clone(), epoch };
                // This append's share of the block digests, merged into the group's below.
                let mut blocks: BTreeMap<u64, StoredDigest> = BTreeMap::new();
                for (i, record) in records.iter().enumerate() {
                    if seq > watermark {
                        for delta in &record.deltas {
                            // The node applied the same delta to the same counter, and the
                            // decoder bounded it, so this cannot fail. If it ever does, the
                            // group is not committed rather than logged without its delta.
                            apply_delta(changed, replica.merged(), &actor, delta).map_err(|e| {
                                StoreError::CommitFailed(format!("inventory of {actor}: {e}"))
                            })?;
                        }
                        run.get_or_insert((*next, i));
                        blocks
                            .entry(block_of(seq))
                            .or_insert_with(|| StoredDigest::empty(*next))
                            .add(entries.digest(i), *next);
                        *next += 1;
                    } else {
                        self.stats.skipped.inc();
                    }
                    seq += 1;
                }
                if let Some((offset, i)) = run {
                    let (bytes, ends) = entries.from(i);
                    insert_runs(&mut log, offset, bytes, ends)?;
                }
                if seq - 1 > watermark {
                    marks.insert(key, seq - 1).map_err(db)?;
                }
                for (block, added) in blocks {
                    let stream = (node.node_id.as_str().to_owned(), epoch.0, lane as u8, block);
                    digests
                        .entry(stream)
                        .or_insert_with(|| StoredDigest::empty(added.first_offset))
                        .merge(&added);
                }
                results.push(Ok(()));
            }
            let mut stored = txn.open_table(DIGESTS).map_err(db)?;
            for ((node_id, epoch, lane, block), added) in digests {
                let key = (node_id.as_str(), epoch, lane, block);
                let mut digest = match stored.get(key).map_err(db)? {
                    Some(bytes) => StoredDigest::from_bytes(bytes.value()).ok_or_else(|| {
                        StoreError::CommitFailed(format!("unreadable digest of {node_id} block {block}"))
                    })?,
                    None => StoredDigest::empty(added.first_offset),
                };
                digest.merge(&added);
                stored.insert(key, digest.to_bytes().as_slice()).map_err(db)?;
            }
        }
        let since = self.stock_through.get();
        // The keys behind: those already behind, and those this group moves for the first
        // time since the checkpoint.
        let newly = changed.iter().filter(|(key, _)| replica.changed_at(key).is_none_or(|at| at <= since));
        let lagging_keys = self.lagging_keys.get() + newly.count();
        let checkpoint = *next > since
            && (closes || *next - since >= STOCK_LAG_ENTRIES_MAX || lagging_keys >= STOCK_LAG_KEYS_MAX);
        if checkpoint {
            write_checkpoint(&txn, &replica, since, changed, *next)?;
        }
        // A group of hellos only is not worth an fsync; it rides with the next append.
        commit(txn, *next > start || checkpoint)?;
        if checkpoint {
            self.checkpointed(*next);
        } else {
            self.lagging_keys.set(lagging_keys);
        }
        Ok(results)
    }
}

/// Removes the log entries of `node_id`'s `(epoch, lane)` stream whose seqs are in
/// `seqs`, with their part of the block digests, and leaves the watermark where it is: a
/// relay that lost records it had acknowledged, as a faulty disk or a bug would leave it.
/// Returns how many entries went. The log's last entry stays, so that the next offset,
/// which the relay derives from it, is never handed out twice. The relay must have
/// been closed cleanly, so that its stock rows hold the whole log. For fault-injection
/// tests of reconciliation only.
#[cfg(feature = "fault-injection")]
pub fn lose_records(
    dir: &Path,
    node_id: &NodeId,
    epoch: Epoch,
    lane: Lane,
    seqs: std::ops::RangeInclusive<u64>,
) -> Result<u64, StoreError> {
    let database = Database::open(dir.join(STORE_FILE)).map_err(db)?;
    let txn = database.begin_write().map_err(db)?;
    let mut removed = 0;
    {
        let mut log = txn.open_table(LOG).map_err(db)?;
        let mut digests = txn.open_table(DIGESTS).map_err(db)?;
        let next = next_offset_of(&log)?;
        // Entries lost after the stock checkpoint would take their deltas with them when
        // the relay applies the log again: this models lost records, not lost stock.
        let through = stock_through_of(&txn.open_table(META).map_err(db)?)?;
        if through != Some(next) {
            return Err(StoreError::CommitFailed(format!(
                "the stock rows hold the log through {through:?}, not its end {next}: close the relay cleanly first"
            )));
        }
        let last_offset = next.checked_sub(1);
        let mut doomed = BTreeSet::new();
        for block in block_of(*seqs.start())..=block_of(*seqs.end()) {
            let key = (node_id.as_str(), epoch.0, lane as u8, block);
            let Some(bytes) = digests.get(key).map_err(db)?.map(|v| v.value().to_vec()) else { continue };
            let mut stored = StoredDigest::from_bytes(&bytes)
                .ok_or_else(|| StoreError::CommitFailed(format!("unreadable digest of block {block}")))?;
            let mut found = Vec::new();
            scan_log(&log, stored.first_offset..=stored.last_offset, |offset, entry, _| {
                let ours = entry.node_id == *node_id && entry.epoch == epoch && entry.lane == lane;
                if ours && seqs.contains(&entry.seq) && Some(offset) != last_offset {
                    found.push((offset, entry));
                }
                ControlFlow::Continue(())
            })?;
            for (offset, entry) in found {
                let one = BlockDigest::of(lane, entry.seq, &entry.record)
                    .map_err(|e| StoreError::CommitFailed(e.to_string()))?;
                stored.digest.subtract(&one);
                doomed.insert(offset);
            }
            digests.insert(key, stored.to_bytes().as_slice()).map_err(db)?;
        }
        // Each run that loses entries is written again as the runs of what it keeps.
        let mut runs = BTreeSet::new();
        for &offset in &doomed {
            if let Some(row) = log.range(..=offset).map_err(db)?.next_back() {
                runs.insert(row.map_err(db)?.0.value());
            }
        }
        for first in runs {
            let Some(bytes) = log.remove(first).map_err(db)?.map(|v| v.value().to_vec()) else { continue };
            let mut kept: Option<(u64, Vec<u8>)> = None;
            for entry in Run::new(first, &bytes) {
                let (offset, _, raw) = entry?;
                if doomed.contains(&offset) {
                    removed += 1;
                    if let Some((at, run)) = kept.take() {
                        log.insert(at, run.as_slice()).map_err(db)?;
                    }
                } else {
                    kept.get_or_insert_with(|| (offset, Vec::new())).1.extend_from_slice(raw);
                }
            }
            if let Some((at, run)) = kept {
                log.insert(at, run.as_slice()).map_err(db)?;
            }
        }
    }
    txn.commit().map_err(db)?;
    Ok(removed)
}

/// A block's digest as the relay keeps it: the digest, and the first and last log offset
/// of the block's entries (where a repair looks for what the block holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredDigest {
    /// The block's digest.
    pub digest: BlockDigest,
    /// Lowest log offset of an entry of the block.
    pub first_offset: u64,
    /// Highest log offset of an entry of the block.
    pub last_offset: u64,
}

impl StoredDigest {
    fn empty(offset: u64) -> StoredDigest {
        StoredDigest { digest: BlockDigest::default(), first_offset: offset, last_offset: offset }
    }

    fn add(&mut self, one: &BlockDigest, offset: u64) {
        self.digest.add(one);
        self.first_offset = self.first_offset.min(offset);
        self.last_offset = self.last_offset.max(offset);
    }

    fn merge(&mut self, other: &StoredDigest) {
        self.digest.add(&other.digest);
        self.first_offset = self.first_offset.min(other.first_offset);
        self.last_offset = self.last_offset.max(other.last_offset);
    }

    fn to_bytes(self) -> [u8; DIGEST_BYTES + 16] {
        let mut out = [0u8; DIGEST_BYTES + 16];
        out[..DIGEST_BYTES].copy_from_slice(&self.digest.to_bytes());
        out[DIGEST_BYTES..DIGEST_BYTES + 8].copy_from_slice(&self.first_offset.to_le_bytes());
        out[DIGEST_BYTES + 8..].copy_from_slice(&self.last_offset.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<StoredDigest> {
        let digest = BlockDigest::from_bytes(bytes.get(..DIGEST_BYTES)?)?;
        let first_offset = u64::from_le_bytes(bytes.get(DIGEST_BYTES..DIGEST_BYTES + 8)?.try_into().ok()?);
        let last_offset = u64::from_le_bytes(bytes.get(DIGEST_BYTES + 8..)?.try_into().ok()?);
        (bytes.len() == DIGEST_BYTES + 16).then_some(StoredDigest { digest, first_offset, last_offset })
    }
}

fn last_seq(first: Seq, count: usize) -> Seq {
    Seq::new(first.get() + (count as u64).saturating_sub(1)).unwrap_or(first)
}

#[cfg(test)]
mod tests;
