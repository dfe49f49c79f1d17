//! The node's durable store: a redb file with one writer thread doing group commit.
//!
//! # Tables
//! | table | key | value | written by |
//! |---|---|---|---|
//! | `meta` | `&str` name | `u64` | creation (`format_version`, `epoch`, `created_at_ms`) |
//! | `events` | `(u8 lane, u64 seq)` | postcard [`Record`] | append; prune removes |
//! | `ids` | `&str` event_id | `(u8 lane, u64 seq)` | append; prune removes |
//! | `lanes` | `u8` lane | `(u64 head, u64 acked)` | append (head), ack (acked) |
//!
//! # Commit points
//! Every append runs in a write transaction with [`Durability::Immediate`]: `commit()`
//! returns after redb's fsync, and only then is any request of that transaction answered.
//! The idempotency lookup, the append and the new head are one transaction, so a crash
//! leaves either all of a request's events or none of them.
//!
//! Acknowledgements are recorded with [`Durability::None`]: they become durable with the
//! next appending commit. Losing one to a crash costs a resend of events the relay skips
//! by its watermark, and the relay's Welcome corrects the value on reconnect.
//!
//! # Group commit
//! Request handlers send commands to one writer thread. The writer takes the first
//! command, then everything else already queued (up to [`GROUP_EVENTS_MAX`] events), and
//! applies all of it in one transaction: one fsync for the whole group.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use sync_protocol::{Epoch, Event, EventId, Lane, PerLane, Record, Seq};
use tokio::sync::{mpsc, oneshot, watch};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("events");
const IDS: TableDefinition<&str, (u8, u64)> = TableDefinition::new("ids");
const LANES: TableDefinition<u8, (u64, u64)> = TableDefinition::new("lanes");

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// The store file inside the data directory.
pub const STORE_FILE: &str = "node.redb";
/// Most events applied in one group commit. A group this large commits in tens of
/// milliseconds; larger groups only add latency for the requests at the front.
pub const GROUP_EVENTS_MAX: usize = 16_384;
/// Commands queued between request handlers and the writer. Handlers wait when it is
/// full, which bounds the memory a burst can take.
pub const QUEUE_COMMANDS_MAX: usize = 4_096;
/// Most events removed by one prune pass, so pruning never holds the writer for long.
pub const PRUNE_EVENTS_MAX: usize = 10_000;

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
    /// The writer thread is gone (shutdown, or a previous fatal error).
    #[error("store is closed")]
    Closed,
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
}

/// Per-lane positions: `head` is the highest durable seq, `acked` the relay's watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanePosition {
    /// Highest seq stored.
    pub head: u64,
    /// Highest seq the relay acknowledged.
    pub acked: u64,
}

/// Counters of the writer, for status and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Write transactions that appended at least one event.
    pub commits: AtomicU64,
    /// Events appended.
    pub events: AtomicU64,
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    epoch: Epoch,
    commands: mpsc::Sender<Command>,
    positions: watch::Receiver<PerLane<LanePosition>>,
    stats: Arc<WriterStats>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens the store in `dir`, creating it (with a new random epoch) if it does not
    /// exist, and starts the writer thread.
    pub fn open(dir: &Path, new_epoch: impl FnOnce() -> u64) -> Result<Store, StoreError> {
        let path = dir.join(STORE_FILE);
        let db = Database::create(&path).db()?;
        let epoch = init_meta(&db, &path, new_epoch)?;
        let positions = load_positions(&db)?;
        let db = Arc::new(db);
        let (commands, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let (positions_tx, positions_rx) = watch::channel(positions);
        let stats = Arc::new(WriterStats::default());
        let writer = Writer { db: db.clone(), positions: positions_tx, stats: stats.clone() };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Redb(e.into()))?;
        Ok(Store {
            db,
            path,
            epoch,
            commands,
            positions: positions_rx,
            stats,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
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
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(EVENTS).db()?;
        let start = (lane as u8, first.get());
        let end = (lane as u8, first.get().saturating_add(u64::from(count)));
        let mut out = Vec::with_capacity(count as usize);
        for entry in table.range(start..end).db()? {
            let (key, value) = entry.db()?;
            out.push(decode_record(lane, key.value().1, value.value())?);
        }
        Ok(out)
    }

    /// The event stored under `event_id`, with where it sits.
    pub fn get(&self, event_id: &EventId) -> Result<Option<(Placement, Record)>, StoreError> {
        let txn = self.db.begin_read().db()?;
        let ids = txn.open_table(IDS).db()?;
        let Some((lane, seq)) = ids.get(event_id.as_str()).db()?.map(|v| v.value()) else {
            return Ok(None);
        };
        let lane = lane_of(lane)?;
        let events = txn.open_table(EVENTS).db()?;
        let Some(bytes) = events.get((lane as u8, seq)).db()? else { return Ok(None) };
        let record = decode_record(lane, seq, bytes.value())?;
        let seq = Seq::new(seq).ok_or(StoreError::Corrupt { lane, seq, reason: "seq 0".into() })?;
        Ok(Some((Placement { lane, seq, received_at_ms: record.received_at_ms }, record)))
    }

    /// When the oldest unacknowledged event of `lane` was received, if there is one.
    pub fn oldest_unacked_ms(&self, lane: Lane) -> Result<Option<u64>, StoreError> {
        let pos = *self.positions.borrow().get(lane);
        if pos.head <= pos.acked {
            return Ok(None);
        }
        let txn = self.db.begin_read().db()?;
        let table = txn.open_table(EVENTS).db()?;
        let record = table.get((lane as u8, pos.acked + 1)).db()?;
        record.map(|v| decode_record(lane, pos.acked + 1, v.value()).map(|r| r.received_at_ms)).transpose()
    }

    /// Size of the store file in bytes.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
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

fn init_meta(db: &Database, path: &Path, new_epoch: impl FnOnce() -> u64) -> Result<Epoch, StoreError> {
    let txn = db.begin_write().db()?;
    let epoch = {
        let mut meta = txn.open_table(META).db()?;
        let version = meta.get("format_version").db()?.map(|v| v.value());
        match version {
            Some(found) if found != FORMAT_VERSION => {
                return Err(StoreError::FormatVersion { path: path.to_owned(), found });
            }
            Some(_) => {}
            None => {
                meta.insert("format_version", FORMAT_VERSION).db()?;
                meta.insert("epoch", new_epoch()).db()?;
                meta.insert("created_at_ms", now_ms()).db()?;
            }
        }
        let epoch = meta.get("epoch").db()?.map(|v| v.value());
        epoch.ok_or_else(|| StoreError::Corrupt {
            lane: Lane::Critical,
            seq: 0,
            reason: "no epoch in meta".into(),
        })?
    };
    txn.open_table(EVENTS).db()?;
    txn.open_table(IDS).db()?;
    txn.open_table(LANES).db()?;
    txn.commit().db()?;
    Ok(Epoch(epoch))
}

fn load_positions(db: &Database) -> Result<PerLane<LanePosition>, StoreError> {
    let txn = db.begin_read().db()?;
    let lanes = txn.open_table(LANES).db()?;
    let mut out = PerLane::<LanePosition>::default();
    for lane in Lane::ALL {
        if let Some(v) = lanes.get(lane as u8).db()? {
            let (head, acked) = v.value();
            *out.get_mut(lane) = LanePosition { head, acked };
        }
    }
    Ok(out)
}

fn decode_record(lane: Lane, seq: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { lane, seq, reason: e.to_string() })
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
    db: Arc<Database>,
    positions: watch::Sender<PerLane<LanePosition>>,
    stats: Arc<WriterStats>,
}

/// Where to answer a command once its group has committed.
enum Reply {
    Append(oneshot::Sender<Result<Vec<Outcome>, StoreError>>),
    Prune(oneshot::Sender<Result<u64, StoreError>>),
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
}

fn split(command: Command) -> (Op, Reply) {
    match command {
        Command::Append { events, reply } => (Op::Append(events), Reply::Append(reply)),
        Command::RecordAck { lane, through } => (Op::RecordAck { lane, through }, Reply::None),
        Command::Prune { received_before_ms, reply } => {
            (Op::Prune { received_before_ms }, Reply::Prune(reply))
        }
    }
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut events = group_events(&first);
            let mut group = vec![first];
            while events < GROUP_EVENTS_MAX {
                let Ok(next) = rx.try_recv() else { break };
                events += group_events(&next);
                group.push(next);
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&self, group: Vec<Command>) {
        let (ops, replies): (Vec<Op>, Vec<Reply>) = group.into_iter().map(split).unzip();
        let mut positions = *self.positions.borrow();
        let mut appended = 0u64;
        match self.apply(ops, &mut positions, &mut appended) {
            Ok(done) => {
                if appended > 0 {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.events.fetch_add(appended, Ordering::Relaxed);
                }
                self.positions.send_replace(positions);
                for (reply, done) in replies.into_iter().zip(done) {
                    match (reply, done) {
                        (Reply::Append(tx), Done::Append(outcomes)) => drop(tx.send(Ok(outcomes))),
                        (Reply::Prune(tx), Done::Prune(n)) => drop(tx.send(Ok(n))),
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; every request of the group gets an error");
                let message = e.to_string();
                for reply in replies {
                    let err = StoreError::CommitFailed(message.clone());
                    match reply {
                        Reply::Append(tx) => drop(tx.send(Err(err))),
                        Reply::Prune(tx) => drop(tx.send(Err(err))),
                        Reply::None => {}
                    }
                }
            }
        }
    }

    /// Applies a group in one transaction. `positions` is a copy that becomes the
    /// published state only if the commit succeeds.
    fn apply(
        &self,
        ops: Vec<Op>,
        positions: &mut PerLane<LanePosition>,
        appended: &mut u64,
    ) -> Result<Vec<Done>, StoreError> {
        let mut txn = self.db.begin_write().db()?;
        let durable = ops.iter().any(|op| !matches!(op, Op::RecordAck { .. }));
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).db()?;
        let mut done = Vec::with_capacity(ops.len());
        {
            let mut events = txn.open_table(EVENTS).db()?;
            let mut ids = txn.open_table(IDS).db()?;
            let received_at_ms = now_ms();
            for op in ops {
                done.push(match op {
                    Op::Append(batch) => Done::Append(append(
                        &mut events,
                        &mut ids,
                        positions,
                        batch,
                        received_at_ms,
                        appended,
                    )?),
                    Op::RecordAck { lane, through } => {
                        let pos = positions.get_mut(lane);
                        pos.acked = through.min(pos.head);
                        Done::None
                    }
                    Op::Prune { received_before_ms } => {
                        Done::Prune(prune(&mut events, &mut ids, positions, received_before_ms)?)
                    }
                });
            }
            let mut lanes = txn.open_table(LANES).db()?;
            for (lane, pos) in positions.iter() {
                lanes.insert(lane as u8, (pos.head, pos.acked)).db()?;
            }
        }
        txn.commit().db()?;
        Ok(done)
    }
}

fn group_events(command: &Command) -> usize {
    match command {
        Command::Append { events, .. } => events.len(),
        Command::RecordAck { .. } | Command::Prune { .. } => 1,
    }
}

type EventsTable<'t> = redb::Table<'t, (u8, u64), &'static [u8]>;
type IdsTable<'t> = redb::Table<'t, &'static str, (u8, u64)>;

fn append(
    events: &mut EventsTable<'_>,
    ids: &mut IdsTable<'_>,
    positions: &mut PerLane<LanePosition>,
    batch: Vec<NewEvent>,
    received_at_ms: u64,
    appended: &mut u64,
) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for NewEvent { event, lane } in batch {
        let existing = ids.get(event.event_id.as_str()).db()?.map(|v| v.value());
        if let Some((stored_lane, seq)) = existing {
            let stored_lane = lane_of(stored_lane)?;
            let bytes = events.get((stored_lane as u8, seq)).db()?;
            let Some(bytes) = bytes else {
                return Err(StoreError::Corrupt {
                    lane: stored_lane,
                    seq,
                    reason: "id without event".into(),
                });
            };
            let record = decode_record(stored_lane, seq, bytes.value())?;
            let seq = Seq::new(seq).ok_or(StoreError::Corrupt { lane, seq, reason: "seq 0".into() })?;
            let placement = Placement { lane: stored_lane, seq, received_at_ms: record.received_at_ms };
            outcomes.push(if record.event == event {
                Outcome::Duplicate(placement)
            } else {
                Outcome::Conflict(placement)
            });
            continue;
        }
        let pos = positions.get_mut(lane);
        let seq = Seq::after(pos.head).ok_or(StoreError::Corrupt {
            lane,
            seq: pos.head,
            reason: "overflow".into(),
        })?;
        // Paired with the relay's check: seqs of a lane are gapless and start at 1.
        assert_eq!(seq.get(), pos.head + 1, "lane {lane} seq must follow its head");
        let record = Record { received_at_ms, event };
        let bytes = postcard::to_allocvec(&record).map_err(|e| StoreError::Corrupt {
            lane,
            seq: seq.get(),
            reason: e.to_string(),
        })?;
        events.insert((lane as u8, seq.get()), bytes.as_slice()).db()?;
        ids.insert(record.event.event_id.as_str(), (lane as u8, seq.get())).db()?;
        pos.head = seq.get();
        *appended += 1;
        outcomes.push(Outcome::Created(Placement { lane, seq, received_at_ms }));
    }
    Ok(outcomes)
}

fn prune(
    events: &mut EventsTable<'_>,
    ids: &mut IdsTable<'_>,
    positions: &PerLane<LanePosition>,
    received_before_ms: u64,
) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    for (lane, pos) in positions.iter() {
        let range = (lane as u8, 1)..=(lane as u8, pos.acked);
        let mut doomed = Vec::new();
        for entry in events.range(range).db()? {
            let (key, value) = entry.db()?;
            let record = decode_record(lane, key.value().1, value.value())?;
            if record.received_at_ms >= received_before_ms || doomed.len() >= PRUNE_EVENTS_MAX {
                break;
            }
            doomed.push((key.value().1, record.event.event_id));
        }
        for (seq, event_id) in doomed {
            events.remove((lane as u8, seq)).db()?;
            ids.remove(event_id.as_str()).db()?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
