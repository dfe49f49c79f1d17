//! What the scanners were told: the record the exactly-once check compares the relay log
//! against.
//!
//! Every event a scanner posts ends in exactly one [`Outcome`]: accepted with the node's
//! `(epoch, lane, seq)`, rejected with an error status, or unanswered (the scanner gave up
//! while the node was unreachable, so the event may or may not be stored). Posts of an
//! existing `event_id` with a different payload are kept apart as [`ConflictPost`]s, and
//! answers that contradict the API (a re-post that changes its seq, a conflict that is
//! accepted) are kept as anomalies.
//!
//! Under overload the node sheds events (API.md: 429, 507, 503 `store_failed`): a shed
//! event is not stored, and the scanner posts it again later. The ledger counts every shed
//! answer per lane and reason, with the time it came, next to the time each event of the
//! lane was created, so a scenario can say which lanes were shed when; an event still shed
//! when its scanner stopped ends as [`Outcome::Shed`] and must never reach the relay.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;

/// Where the node placed an accepted event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ack {
    /// The node that answered.
    pub node_id: String,
    /// Its store's epoch, 16 hex digits.
    pub epoch: String,
    /// The lane name.
    pub lane: String,
    /// The seq within `(node_id, epoch, lane)`.
    pub seq: u64,
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}/{}", self.node_id, self.epoch, self.lane, self.seq)
    }
}

/// The final answer to a posted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201 or 200 (`created` or `duplicate` in an array).
    Accepted(Ack),
    /// An error answer such as 422.
    Rejected {
        /// The HTTP status of the post.
        status: u16,
        /// The error code.
        error: String,
    },
    /// The scanner gave up without an answer.
    Unanswered,
    /// Never stored: the node shed it at every attempt (the last answer is given) until
    /// the scanner stopped or gave up on it.
    Shed(ShedReason),
}

/// Why the node shed an event: the HTTP status and the error code of the answer
/// (`429 overloaded`, `507 disk_quota`, `507 disk_full`, `503 store_failed`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShedReason {
    /// The status of the answer (a shed item of an array answer has the status its error
    /// code stands for, not the array's 200).
    pub status: u16,
    /// The error code.
    pub error: String,
}

impl ShedReason {
    /// The reason for `error`, with the status API.md gives that code.
    pub fn of_code(error: &str) -> ShedReason {
        let status = match error {
            "overloaded" => 429,
            "store_failed" => 503,
            _ => 507,
        };
        ShedReason { status, error: error.to_owned() }
    }
}

impl fmt::Display for ShedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.error)
    }
}

/// What the scanners were told about one lane's events over time: when each was created,
/// and when each shed answer came, by reason. The times are in the order they were
/// recorded, so counting those within a window is a binary search.
#[derive(Debug, Clone, Default)]
pub struct LaneAnswers {
    /// When each event of the lane was first answered `created`.
    pub created: Vec<Instant>,
    /// When each shed answer came (one per event and attempt), by reason.
    pub shed: BTreeMap<ShedReason, Vec<Instant>>,
}

impl LaneAnswers {
    /// Shed answers of every reason.
    pub fn shed_total(&self) -> u64 {
        self.shed.values().map(|v| v.len() as u64).sum()
    }

    /// Events created within `[from, to]`.
    pub fn created_within(&self, from: Instant, to: Instant) -> u64 {
        within(&self.created, from, to).len() as u64
    }

    /// Shed answers within `[from, to]`, of one error code or of every one (`None`).
    pub fn shed_within(&self, error: Option<&str>, from: Instant, to: Instant) -> u64 {
        self.shed_times(error).map(|times| within(times, from, to).len() as u64).sum()
    }

    /// The first shed answer within `[from, to]`, of one error code or of every one.
    pub fn first_shed_within(&self, error: Option<&str>, from: Instant, to: Instant) -> Option<Instant> {
        self.shed_times(error).filter_map(|times| within(times, from, to).first().copied()).min()
    }

    fn shed_times(&self, error: Option<&str>) -> impl Iterator<Item = &Vec<Instant>> {
        self.shed.iter().filter(move |(r, _)| error.is_none_or(|e| r.error == e)).map(|(_, t)| t)
    }
}

/// The part of sorted `times` within `[from, to]`.
fn within(times: &[Instant], from: Instant, to: Instant) -> &[Instant] {
    let start = times.partition_point(|t| *t < from);
    let end = times.partition_point(|t| *t <= to);
    times.get(start..end.max(start)).unwrap_or_default()
}

/// Per lane: events created and shed answers so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaneTotals {
    /// Events answered `created`.
    pub created: u64,
    /// Shed answers.
    pub shed: u64,
}

/// One posted `event_id` and its answer.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The payload as first posted.
    pub payload: Value,
    /// The answer.
    pub outcome: Outcome,
}

/// A post of an existing `event_id` with a different payload.
#[derive(Debug, Clone)]
pub struct ConflictPost {
    /// The `event_id`.
    pub event_id: String,
    /// The conflicting payload, which must never reach the relay.
    pub payload: Value,
    /// The answer's HTTP status (or 200 for an array entry).
    pub status: u16,
    /// The error code, or the array entry's status.
    pub answer: String,
}

/// Counters over every scanner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// HTTP requests that got an answer, retries included.
    pub requests: u64,
    /// Requests that carried an array.
    pub arrays: u64,
    /// Events answered `created`.
    pub created: u64,
    /// Events answered `duplicate` (re-posts, and retries of a post whose answer was lost).
    pub duplicates: u64,
    /// Conflicting posts answered 409.
    pub conflicts: u64,
    /// Invalid events answered 422.
    pub invalid: u64,
    /// Requests retried in place after no answer or a 503 `unavailable`.
    pub retries: u64,
    /// Events given up on.
    pub unanswered: u64,
    /// Answers that shed an event (429, 507, 503 `store_failed`), one per event and
    /// attempt.
    pub shed_answers: u64,
    /// Events still shed when their scanner stopped: never stored.
    pub shed: u64,
}

/// The shared record of every answer.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerData>,
}

/// A copy of the ledger's contents.
#[derive(Debug, Clone, Default)]
pub struct LedgerData {
    /// Every `event_id` by its first payload.
    pub events: BTreeMap<String, Posted>,
    /// Every conflicting post.
    pub conflicts: Vec<ConflictPost>,
    /// Answers that contradict the API.
    pub anomalies: Vec<String>,
    /// Shed answers that contradict the API: no `Retry-After`, or an event answered as
    /// shed that the node had stored after all.
    pub shed_anomalies: Vec<String>,
    /// Per lane name, when events were created and shed.
    pub lanes: BTreeMap<String, LaneAnswers>,
    /// Counters.
    pub counts: Counts,
}

impl LedgerData {
    /// Events with an accepted answer.
    pub fn accepted(&self) -> impl Iterator<Item = (&String, &Posted, &Ack)> {
        self.events.iter().filter_map(|(id, p)| match &p.outcome {
            Outcome::Accepted(ack) => Some((id, p, ack)),
            _ => None,
        })
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> LedgerData {
        self.lock().clone()
    }

    /// The counters so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Events accepted so far (distinct `event_id`s).
    pub fn accepted_count(&self) -> u64 {
        self.lock().counts.created
    }

    /// Records the answer for an `event_id`. An accepted answer for an event already
    /// accepted counts as a duplicate answer, and is an anomaly when it places the event
    /// elsewhere; the first placement is kept.
    pub fn record(&self, event_id: &str, payload: &Value, outcome: Outcome) {
        let mut guard = self.lock();
        let data = &mut *guard;
        match (data.events.get_mut(event_id), outcome) {
            (Some(Posted { outcome: Outcome::Accepted(first), .. }), Outcome::Accepted(again)) => {
                data.counts.duplicates += 1;
                if *first != again {
                    let text =
                        format!("event {event_id} was placed at {first} and later answered at {again}");
                    data.anomalies.push(text);
                }
            }
            // The scanner judges other answers to an accepted event (it expected them).
            (Some(Posted { outcome: Outcome::Accepted(_), .. }), _) => {}
            (Some(posted), outcome) => {
                data.counts.add(&outcome);
                note_created(&mut data.lanes, &outcome);
                posted.outcome = outcome;
            }
            (None, outcome) => {
                data.counts.add(&outcome);
                note_created(&mut data.lanes, &outcome);
                data.events.insert(event_id.to_owned(), Posted { payload: payload.clone(), outcome });
            }
        }
    }

    /// Records one shed answer to an event of `lane`.
    pub fn shed(&self, lane: &str, reason: &ShedReason) {
        let mut guard = self.lock();
        let data = &mut *guard;
        data.counts.shed_answers += 1;
        let lane = data.lanes.entry(lane.to_owned()).or_default();
        match lane.shed.get_mut(reason) {
            Some(times) => times.push(Instant::now()),
            None => drop(lane.shed.insert(reason.clone(), vec![Instant::now()])),
        }
    }

    /// Records a shed answer that contradicts the API.
    pub fn shed_anomaly(&self, text: String) {
        self.lock().shed_anomalies.push(text);
    }

    /// Per lane name: events created and shed answers so far.
    pub fn lane_totals(&self) -> BTreeMap<String, LaneTotals> {
        self.lock()
            .lanes
            .iter()
            .map(|(lane, a)| {
                (lane.clone(), LaneTotals { created: a.created.len() as u64, shed: a.shed_total() })
            })
            .collect()
    }

    /// Records a conflicting post and its answer.
    pub fn record_conflict(&self, post: ConflictPost) {
        let mut data = self.lock();
        data.counts.conflicts += 1;
        data.conflicts.push(post);
    }

    /// Records an answer that contradicts the API.
    pub fn anomaly(&self, text: String) {
        self.lock().anomalies.push(text);
    }

    /// Counts one answered request.
    pub fn count_request(&self, array: bool) {
        let mut data = self.lock();
        data.counts.requests += 1;
        if array {
            data.counts.arrays += 1;
        }
    }

    /// Counts one retry.
    pub fn count_retry(&self) {
        self.lock().counts.retries += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerData> {
        // A panic while holding the lock cannot leave the data half-updated in a way the
        // checker would misread: every update is a few field writes.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Notes the time of a first acceptance in its lane's answers.
fn note_created(lanes: &mut BTreeMap<String, LaneAnswers>, outcome: &Outcome) {
    if let Outcome::Accepted(ack) = outcome {
        lanes.entry(ack.lane.clone()).or_default().created.push(Instant::now());
    }
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Accepted(_) => self.created += 1,
            Outcome::Rejected { .. } => self.invalid += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::Shed(_) => self.shed += 1,
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests ({} arrays, {} retries): {} created, {} duplicate answers, {} conflicts, \
             {} invalid, {} unanswered, {} shed answers ({} events never stored)",
            self.requests,
            self.arrays,
            self.retries,
            self.created,
            self.duplicates,
            self.conflicts,
            self.invalid,
            self.unanswered,
            self.shed_answers,
            self.shed
        )
    }
}
