//! Runs: a lane's events stored many to a row (store format 5).
//!
//! A group commit appends each lane's new records in rows of at most [`RUN_BYTES_MAX`],
//! each keyed by the seq of its first record: each record's stored form
//! ([`super::codec`]) after its length as a varint. The seqs of a run are consecutive, so
//! a record's seq is its run's key plus its place in the run, and the run that holds a
//! seq is the last row at or before it.
//!
//! A row per record cost redb an insert per event into its lane's tree, about a fifth
//! of the writer's time in `outpost-sim bench ingest-batch`, and an 8-byte key and a
//! 4-byte offset per event on disk.

use std::ops::{ControlFlow, RangeInclusive};

use redb::ReadableTable;
use sync_protocol::{Lane, Record};

use super::codec::{put_varint, take_varint};
use super::{RedbResult, StoreError, decode_record};

/// Most bytes in one run; a record longer than this is a run of its own. redb keeps a
/// table's rows in 4 KiB leaves, with a key and an offset (12 bytes) beside each value,
/// and a value longer than a leaf gets a page of its own, rounded up to a power of two.
/// Runs of at most 1,000 bytes (about 20 site events) fill a leaf four at a time; in
/// `outpost-sim bench disk`, runs of up to 480, 2,000 and 4,000 bytes measured 86.5,
/// 87.6 and 87.0 bytes per event against 85.2 for these, and runs of 512 records (about
/// 25 KB, each on a 32 KiB page) 101.
pub(super) const RUN_BYTES_MAX: usize = 1_000;

/// Room kept for a record's length prefix: three bytes hold lengths up to 2 MiB, far
/// beyond any record's.
const VARINT_BYTES_MAX: usize = 3;

/// A run being gathered by the writer: the records one group appends to one lane.
#[derive(Debug, Default)]
pub(super) struct Pending {
    first: u64,
    count: usize,
    bytes: Vec<u8>,
}

impl Pending {
    /// Adds the record stored as `record` at `seq`, which follows the run's last, first
    /// inserting the run into `table` if the record would take it past its size.
    pub(super) fn push(
        &mut self,
        table: &mut redb::Table<'_, u64, &'static [u8]>,
        seq: u64,
        record: &[u8],
    ) -> Result<(), StoreError> {
        if self.count > 0 && self.bytes.len() + VARINT_BYTES_MAX + record.len() > RUN_BYTES_MAX {
            self.flush(table)?;
        }
        if self.count == 0 {
            self.first = seq;
        }
        debug_assert_eq!(seq, self.first + self.count as u64, "a run's seqs are consecutive");
        put_varint(&mut self.bytes, record.len() as u64);
        self.bytes.extend_from_slice(record);
        self.count += 1;
        Ok(())
    }

    /// Inserts the run into `table` and starts the next one empty.
    pub(super) fn flush(
        &mut self,
        table: &mut redb::Table<'_, u64, &'static [u8]>,
    ) -> Result<(), StoreError> {
        if self.count > 0 {
            table.insert(self.first, self.bytes.as_slice()).db()?;
            self.bytes.clear();
            self.count = 0;
        }
        Ok(())
    }

    /// Inserts the run if it holds `seq` or anything before it, so that reads of the
    /// table through `seq` see them.
    pub(super) fn flush_through(
        &mut self,
        table: &mut redb::Table<'_, u64, &'static [u8]>,
        seq: u64,
    ) -> Result<(), StoreError> {
        if self.count > 0 && self.first <= seq { self.flush(table) } else { Ok(()) }
    }

    /// The stored form of the record at `seq`, if this run holds it.
    pub(super) fn get(&self, lane: Lane, seq: u64) -> Result<Option<&[u8]>, StoreError> {
        if self.count == 0 || seq < self.first {
            return Ok(None);
        }
        for entry in Entries::new(lane, self.first, &self.bytes) {
            let (at, record) = entry?;
            if at == seq {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }
}

/// The records of the run stored under `first`, each with its seq.
pub(super) struct Entries<'a> {
    lane: Lane,
    /// The next record's seq; `None` past `u64::MAX`, where no record can be.
    seq: Option<u64>,
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    pub(super) fn new(lane: Lane, first: u64, bytes: &'a [u8]) -> Self {
        Entries { lane, seq: Some(first), rest: bytes }
    }

    /// The run from the next record on.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(seq) = self.seq else {
            self.rest = &[];
            let reason = "run: records past the last seq".into();
            return Some(Err(StoreError::Corrupt { lane: self.lane, seq: u64::MAX, reason }));
        };
        let split = take_varint(self.rest).ok().and_then(|(len, after)| {
            let len = usize::try_from(len).ok().filter(|len| *len <= after.len())?;
            Some(after.split_at(len))
        });
        match split {
            Some((record, rest)) => {
                self.rest = rest;
                self.seq = seq.checked_add(1);
                Some(Ok((seq, record)))
            }
            None => {
                self.rest = &[];
                let reason = "run: a record's length runs past the row".into();
                Some(Err(StoreError::Corrupt { lane: self.lane, seq, reason }))
            }
        }
    }
}

/// Shows `visit` the stored records of `lane` with seqs in `seqs`, in order, until it
/// breaks. Seqs that are not stored (pruned) are skipped.
pub(super) fn scan(
    table: &impl ReadableTable<u64, &'static [u8]>,
    lane: Lane,
    seqs: RangeInclusive<u64>,
    mut visit: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let (from, through) = (*seqs.start(), *seqs.end());
    if from > through {
        return Ok(());
    }
    let start = match table.range(..=from).db()?.next_back() {
        Some(row) => row.db()?.0.value(),
        None => from,
    };
    for row in table.range(start..=through).db()? {
        let (first, bytes) = row.db()?;
        for entry in Entries::new(lane, first.value(), bytes.value()) {
            let (seq, record) = entry?;
            if seq > through {
                return Ok(());
            }
            if seq >= from && visit(seq, record)?.is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The record of `lane` at `seq`, if it is stored.
pub(super) fn record(
    table: &impl ReadableTable<u64, &'static [u8]>,
    lane: Lane,
    seq: u64,
) -> Result<Option<Record>, StoreError> {
    let mut found = None;
    scan(table, lane, seq..=seq, |_, bytes| {
        found = Some(decode_record(lane, seq, bytes)?);
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}
