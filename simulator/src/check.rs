//! Reading the relay log and the exactly-once check against the scanners' [`Ledger`].
//!
//! The check states the guarantees of PROTOCOL.md ("Replication", "Events and lanes")
//! over what the scanners were told and what a consumer reads:
//!
//! - **no acknowledged event lost**: every event answered 201/200 is in the relay log;
//! - **exactly once**: it is there once, at the `(node, epoch, lane, seq)` the node
//!   answered, with the payload the scanner posted;
//! - **conflicts and errors never stored**: a payload refused with 409 is not what the log
//!   holds for its `event_id`, and an event refused with 422 is not in the log at all;
//! - **per-lane order**: within each `(node_id, epoch, lane)` the log holds seqs
//!   `1..=n` in offset order, with no gap and no repeat; offsets are dense from 0;
//! - **idempotent answers**: a re-post was answered with the original placement
//!   (recorded by the scanners as anomalies).
//!
//! Events a scanner gave up on (no answer) may be in the log or not, but at most once.
//! Events the node shed (429, 507, 503 `store_failed`) at every attempt were not stored,
//! so they must not be in the log, and every shed answer must carry `Retry-After`.
//!
//! [`Ledger`]: crate::ledger::Ledger

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::api::{ApiError, Client, LogEntry};
use crate::ledger::{LedgerData, Outcome};

/// Events asked for per `GET /v1/log` (the relay's maximum).
pub const LOG_PAGE_EVENTS: u32 = 10_000;

/// Reads the relay log incrementally, keeping every event read.
#[derive(Debug)]
pub struct LogReader {
    client: Client,
    next: u64,
    entries: Vec<LogEntry>,
}

impl LogReader {
    /// A reader starting at offset 0 of the relay at `client`.
    pub fn new(client: Client) -> LogReader {
        LogReader { client, next: 0, entries: Vec::new() }
    }

    /// Reads pages until `next` stops moving; returns how many events were new.
    pub async fn poll(&mut self) -> Result<usize, ApiError> {
        let before = self.entries.len();
        loop {
            let page = self.client.log_page(self.next, LOG_PAGE_EVENTS).await?;
            let moved = page.next != self.next;
            self.next = page.next;
            self.entries.extend(page.events);
            if !moved {
                return Ok(self.entries.len() - before);
            }
        }
    }

    /// Every event read so far, in offset order.
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// The offset the next read starts at: the relay log's length as last seen.
    pub fn next_offset(&self) -> u64 {
        self.next
    }
}

/// The whole relay log, in offset order.
pub async fn fetch_log(client: &Client) -> Result<Vec<LogEntry>, ApiError> {
    let mut reader = LogReader::new(client.clone());
    reader.poll().await?;
    Ok(reader.entries)
}

/// One broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An accepted event is not in the log.
    Lost {
        /// The event.
        event_id: String,
        /// Where the node said it placed it.
        ack: String,
    },
    /// An event is in the log more than once.
    Duplicated {
        /// The event.
        event_id: String,
        /// Its offsets.
        offsets: Vec<u64>,
    },
    /// An accepted event is in the log under another key than the node answered.
    Misplaced {
        /// The event.
        event_id: String,
        /// Where the node said it placed it.
        ack: String,
        /// The log's key.
        key: String,
    },
    /// The logged event differs from what the scanner posted.
    PayloadChanged {
        /// The event.
        event_id: String,
        /// The field that differs.
        field: String,
        /// What the scanner posted.
        posted: Value,
        /// What the log holds.
        logged: Value,
    },
    /// The log holds a payload that was refused as a conflict.
    ConflictStored {
        /// The event.
        event_id: String,
        /// Its offset.
        offset: u64,
    },
    /// The log holds an event that was refused.
    RejectedStored {
        /// The event.
        event_id: String,
        /// The status it was refused with.
        status: u16,
        /// Its offset.
        offset: u64,
    },
    /// The log holds an event no scanner posted.
    Unknown {
        /// The event.
        event_id: String,
        /// Its offset.
        offset: u64,
    },
    /// Within a stream, a seq is not the previous one plus one.
    OutOfOrder {
        /// `node_id/epoch/lane`.
        stream: String,
        /// The offset of the event.
        offset: u64,
        /// The seq expected there.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// Offsets are not dense from 0 in order.
    OffsetGap {
        /// The offset expected.
        expected: u64,
        /// The offset found.
        found: u64,
    },
    /// A scanner was answered against the API.
    Answer(String),
    /// The log holds an event the node shed at every attempt, so never stored.
    ShedStored {
        /// The event.
        event_id: String,
        /// The last shed answer, such as `507 disk_quota`.
        reason: String,
        /// Its offset.
        offset: u64,
    },
    /// A shed answer broke the API (no `Retry-After`, or the event was stored after all).
    ShedAnswer(String),
}

impl Violation {
    /// The variant's name in snake case: the kind [`Report`] counts and caps.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Lost { .. } => "lost",
            Violation::Duplicated { .. } => "duplicated",
            Violation::Misplaced { .. } => "misplaced",
            Violation::PayloadChanged { .. } => "payload_changed",
            Violation::ConflictStored { .. } => "conflict_stored",
            Violation::RejectedStored { .. } => "rejected_stored",
            Violation::Unknown { .. } => "unknown",
            Violation::OutOfOrder { .. } => "out_of_order",
            Violation::OffsetGap { .. } => "offset_gap",
            Violation::Answer(_) => "answer",
            Violation::ShedStored { .. } => "shed_stored",
            Violation::ShedAnswer(_) => "shed_answer",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { event_id, ack } => {
                write!(f, "acknowledged event lost: {event_id} (placed at {ack}) is not in the relay log")
            }
            Violation::Duplicated { event_id, offsets } => {
                write!(f, "exactly once: {event_id} is in the relay log at offsets {offsets:?}")
            }
            Violation::Misplaced { event_id, ack, key } => {
                write!(f, "exactly once: {event_id} was placed at {ack} but the relay logged it as {key}")
            }
            Violation::PayloadChanged { event_id, field, posted, logged } => {
                write!(
                    f,
                    "exactly once: {event_id} field {field} was posted as {posted} but logged as {logged}"
                )
            }
            Violation::ConflictStored { event_id, offset } => {
                write!(f, "conflict stored: offset {offset} holds the refused payload of {event_id}")
            }
            Violation::RejectedStored { event_id, status, offset } => {
                write!(f, "error stored: {event_id} was refused with {status} but is at offset {offset}")
            }
            Violation::Unknown { event_id, offset } => {
                write!(f, "unknown event: offset {offset} holds {event_id}, which no scanner posted")
            }
            Violation::OutOfOrder { stream, offset, expected, found } => {
                write!(
                    f,
                    "per-lane order: stream {stream} has seq {found} at offset {offset}, expected {expected}"
                )
            }
            Violation::OffsetGap { expected, found } => {
                write!(f, "dense offsets: found offset {found} where {expected} was expected")
            }
            Violation::Answer(text) => write!(f, "idempotent answers: {text}"),
            Violation::ShedStored { event_id, reason, offset } => {
                write!(f, "shed event stored: {event_id} was answered {reason} but is at offset {offset}")
            }
            Violation::ShedAnswer(text) => write!(f, "shed answer: {text}"),
        }
    }
}

/// What the check looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCounts {
    /// Distinct events answered 201/200.
    pub accepted: u64,
    /// Distinct events refused (422 and the like).
    pub rejected: u64,
    /// Conflicting posts.
    pub conflicts: u64,
    /// Events without an answer.
    pub unanswered: u64,
    /// Of those, how many reached the relay.
    pub unanswered_logged: u64,
    /// Events shed at every attempt (never stored).
    pub shed: u64,
    /// Events in the relay log.
    pub logged: u64,
    /// Distinct `(node_id, epoch, lane)` streams in the log.
    pub streams: u64,
}

/// The outcome of [`check`]. Only the first [`Report::VIOLATIONS_MAX`] violations of each
/// kind are kept, so that thousands of one kind never hide another; `violations_total`
/// counts all of them.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What was looked at.
    pub counts: CheckCounts,
    /// The first violations of each kind found, in the order found.
    pub violations: Vec<Violation>,
    /// Every violation found.
    pub violations_total: u64,
    /// Every violation found, per [`Violation::kind`].
    pub totals: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Violations of one kind kept in full; a broken run can produce thousands, and the
    /// first few say what went wrong.
    pub const VIOLATIONS_MAX: usize = 50;

    /// Whether every guarantee held.
    pub fn is_ok(&self) -> bool {
        self.violations_total == 0
    }

    /// Violations found of `kind` (see [`Violation::kind`]), kept or not.
    pub fn total_of(&self, kind: &str) -> u64 {
        self.totals.get(kind).copied().unwrap_or(0)
    }

    fn push(&mut self, v: Violation) {
        self.violations_total += 1;
        let seen = self.totals.entry(v.kind()).or_default();
        *seen += 1;
        if *seen <= Self::VIOLATIONS_MAX as u64 {
            self.violations.push(v);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "exactly-once check: {} accepted events, {} in the relay log over {} streams; \
             {} conflicting posts, {} refused, {} shed, {} unanswered ({} of them logged)",
            c.accepted,
            c.logged,
            c.streams,
            c.conflicts,
            c.rejected,
            c.shed,
            c.unanswered,
            c.unanswered_logged
        )?;
        if self.is_ok() {
            return write!(f, "  OK: every accepted event is in the relay log exactly once, in seq order");
        }
        write!(f, "  FAILED: {} violations", self.violations_total)?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        if self.violations_total > self.violations.len() as u64 {
            write!(f, "\n  - ({} more)", self.violations_total - self.violations.len() as u64)?;
        }
        Ok(())
    }
}

/// Checks the relay `log` (in offset order) against what the scanners were told.
pub fn check(ledger: &LedgerData, log: &[LogEntry]) -> Report {
    let mut report = Report::default();
    report.counts.logged = log.len() as u64;
    report.counts.conflicts = ledger.conflicts.len() as u64;
    for text in &ledger.anomalies {
        report.push(Violation::Answer(text.clone()));
    }
    for text in &ledger.shed_anomalies {
        report.push(Violation::ShedAnswer(text.clone()));
    }
    check_order(log, &mut report);

    let mut by_id: BTreeMap<&str, Vec<&LogEntry>> = BTreeMap::new();
    for entry in log {
        by_id.entry(entry.event_id.as_str()).or_default().push(entry);
    }
    for (event_id, entries) in &by_id {
        if entries.len() > 1 {
            let offsets = entries.iter().map(|e| e.offset).collect();
            report.push(Violation::Duplicated { event_id: (*event_id).to_owned(), offsets });
        }
        if !ledger.events.contains_key(*event_id) {
            for e in entries {
                report.push(Violation::Unknown { event_id: (*event_id).to_owned(), offset: e.offset });
            }
        }
    }

    for (event_id, posted) in &ledger.events {
        let logged = by_id.get(event_id.as_str()).map(Vec::as_slice).unwrap_or_default();
        match &posted.outcome {
            Outcome::Accepted(ack) => {
                report.counts.accepted += 1;
                let Some(entry) = logged.first() else {
                    report.push(Violation::Lost { event_id: event_id.clone(), ack: ack.to_string() });
                    continue;
                };
                let placed = (&entry.node_id, &entry.epoch, &entry.lane, entry.seq);
                if placed != (&ack.node_id, &ack.epoch, &ack.lane, ack.seq) {
                    let key = entry.key.clone();
                    report.push(Violation::Misplaced {
                        event_id: event_id.clone(),
                        ack: ack.to_string(),
                        key,
                    });
                }
                if let Some(v) = payload_difference(event_id, &posted.payload, entry) {
                    report.push(v);
                }
            }
            Outcome::Rejected { status, .. } => {
                report.counts.rejected += 1;
                for e in logged {
                    let v = Violation::RejectedStored {
                        event_id: event_id.clone(),
                        status: *status,
                        offset: e.offset,
                    };
                    report.push(v);
                }
            }
            Outcome::Unanswered => {
                report.counts.unanswered += 1;
                if !logged.is_empty() {
                    report.counts.unanswered_logged += 1;
                }
            }
            Outcome::Shed(reason) => {
                report.counts.shed += 1;
                for e in logged {
                    let v = Violation::ShedStored {
                        event_id: event_id.clone(),
                        reason: reason.to_string(),
                        offset: e.offset,
                    };
                    report.push(v);
                }
            }
        }
    }

    for conflict in &ledger.conflicts {
        let logged = by_id.get(conflict.event_id.as_str()).map(Vec::as_slice).unwrap_or_default();
        for e in logged {
            if payload_difference(&conflict.event_id, &conflict.payload, e).is_none() {
                report.push(Violation::ConflictStored {
                    event_id: conflict.event_id.clone(),
                    offset: e.offset,
                });
            }
        }
    }
    report
}

/// Dense offsets, and per stream seqs `1..=n` in offset order.
fn check_order(log: &[LogEntry], report: &mut Report) {
    let mut last_seq: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    let mut expected_offset = 0;
    for entry in log {
        if entry.offset != expected_offset {
            report.push(Violation::OffsetGap { expected: expected_offset, found: entry.offset });
        }
        expected_offset = entry.offset + 1;
        let last = last_seq.entry((&entry.node_id, &entry.epoch, &entry.lane)).or_insert(0);
        if entry.seq != *last + 1 {
            report.push(Violation::OutOfOrder {
                stream: format!("{}/{}/{}", entry.node_id, entry.epoch, entry.lane),
                offset: entry.offset,
                expected: *last + 1,
                found: entry.seq,
            });
        }
        *last = (*last).max(entry.seq);
    }
    report.counts.streams = last_seq.len() as u64;
}

/// The first posted field whose logged value differs, if any. Absent optional fields
/// compare equal to `null` (and an absent `attrs` to `{}`).
fn payload_difference(event_id: &str, posted: &Value, entry: &LogEntry) -> Option<Violation> {
    let fields = posted.as_object()?;
    for (field, value) in fields {
        let logged = match field.as_str() {
            "event_id" => Value::String(entry.event_id.clone()),
            _ => entry.fields.get(field).cloned().unwrap_or(Value::Null),
        };
        let same = logged == *value
            || (field == "attrs" && value.as_object().is_some_and(|m| m.is_empty()) && logged.is_null());
        if !same {
            return Some(Violation::PayloadChanged {
                event_id: event_id.to_owned(),
                field: field.clone(),
                posted: value.clone(),
                logged,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests;
