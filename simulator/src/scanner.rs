//! Simulated scanners: handhelds and dock terminals posting events to a node.
//!
//! A scanner posts new events of every kind, alone or in arrays, and behaves like real
//! devices do: it retries with the same `event_id` and payload when the node does not
//! answer or answers 503 (so a retry after a lost answer gets `duplicate`), re-posts some
//! events it was already answered for, and now and then sends an `event_id` it used before
//! with a different payload (which must be refused with 409). Every answer goes into the
//! shared [`Ledger`]. All choices come from one seeded RNG per scanner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::ledger::{Ack, ConflictPost, Ledger, Outcome};

/// How a scanner behaves.
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    /// The device id; `event_id`s are `<device_id>:<n>`, so it must be unique per run.
    pub device_id: String,
    /// The node id of the node posted to, recorded with every accepted answer.
    pub node_id: String,
    /// The node's `POST /v1/events` URL.
    pub url: String,
    /// New events to post; `None` posts until stopped.
    pub events: Option<u64>,
    /// Probability that a request carries an array rather than one event.
    pub array_ratio: f64,
    /// Most events in one array (at least 2 are sent in an array).
    pub array_events_max: usize,
    /// Probability that an item re-posts an event already accepted (same id and payload).
    pub duplicate_ratio: f64,
    /// Probability that an item re-posts an accepted `event_id` with a different payload.
    pub conflict_ratio: f64,
    /// Probability that an item is invalid (a negative `qty` on a pick).
    pub invalid_ratio: f64,
    /// Pause after every answered request.
    pub pause: Duration,
    /// How long one request keeps being retried before its events count as unanswered.
    pub give_up_after: Duration,
    /// The seed of the scanner's choices.
    pub seed: u64,
    /// Relative weights of the event kinds posted; empty for the built-in mix (scans most,
    /// then picks, ships, receipts and adjustments). Unknown kinds are posted as given and
    /// answered 422.
    pub kinds: Vec<(String, u32)>,
}

impl ScannerConfig {
    /// A scanner posting `events` singles to `url` with no duplicates, conflicts or pause.
    pub fn new(device_id: &str, node_id: &str, url: &str) -> ScannerConfig {
        ScannerConfig {
            device_id: device_id.to_owned(),
            node_id: node_id.to_owned(),
            url: url.to_owned(),
            events: None,
            array_ratio: 0.0,
            array_events_max: 20,
            duplicate_ratio: 0.0,
            conflict_ratio: 0.0,
            invalid_ratio: 0.0,
            pause: Duration::ZERO,
            give_up_after: Duration::from_secs(60),
            seed: 0,
            kinds: Vec::new(),
        }
    }
}

/// What one item of a request is meant to test, and so which answer is expected.
#[derive(Debug, Clone)]
enum Item {
    /// A fresh `event_id`: expect `created` (or `duplicate` on a retry).
    New { payload: Value },
    /// A re-post of an accepted event: expect `duplicate` at the same place.
    Repeat { payload: Value },
    /// An accepted `event_id` with another payload: expect 409 / `conflict`.
    Conflict { payload: Value },
    /// Expect 422 / `invalid`.
    Invalid { payload: Value },
}

impl Item {
    fn payload(&self) -> &Value {
        match self {
            Item::New { payload } | Item::Repeat { payload } => payload,
            Item::Conflict { payload } | Item::Invalid { payload } => payload,
        }
    }

    fn event_id(&self) -> &str {
        self.payload()["event_id"].as_str().unwrap_or_default()
    }
}

/// The answer to one item of a request, normalised over singles and arrays.
#[derive(Debug)]
enum Answer {
    Accepted { ack: Ack, duplicate: bool },
    Error { status: u16, code: String },
}

/// A request's fate.
enum Reply {
    Answers(Vec<Answer>),
    GaveUp,
}

/// One simulated scanner.
#[derive(Debug)]
pub struct Scanner {
    config: ScannerConfig,
    ledger: Arc<Ledger>,
    http: reqwest::Client,
    rng: StdRng,
    next_id: u64,
    accepted: Vec<Value>,
}

impl Scanner {
    /// A scanner recording into `ledger`.
    pub fn new(config: ScannerConfig, ledger: Arc<Ledger>) -> Scanner {
        let rng = StdRng::seed_from_u64(config.seed);
        Scanner { config, ledger, http: crate::api::http_client(), rng, next_id: 0, accepted: Vec::new() }
    }

    /// Posts until the configured number of new events is reached or `stop` is set.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) && self.remaining() > 0 {
            let items = self.next_request();
            // An array of one is legal and exercises the array path; only scanners that post
            // arrays at all send one.
            let array = items.len() > 1 || (self.config.array_ratio > 0.0 && self.rng.random_bool(0.05));
            self.post(&items, array).await;
            if !self.config.pause.is_zero() {
                tokio::time::sleep(self.config.pause).await;
            }
        }
    }

    fn remaining(&self) -> u64 {
        self.config.events.map_or(u64::MAX, |n| n.saturating_sub(self.next_id))
    }

    fn next_request(&mut self) -> Vec<Item> {
        let size = if self.rng.random_bool(self.config.array_ratio.clamp(0.0, 1.0)) {
            self.rng.random_range(2..=self.config.array_events_max.max(2))
        } else {
            1
        };
        let mut items: Vec<Item> = Vec::with_capacity(size);
        while items.len() < size {
            let item = self.next_item();
            // One array never names an `event_id` twice: its answer would be ambiguous.
            if items.iter().any(|i| i.event_id() == item.event_id()) {
                continue;
            }
            let fresh = matches!(item, Item::New { .. });
            items.push(item);
            if fresh && self.remaining() == 0 {
                break;
            }
        }
        items
    }

    fn next_item(&mut self) -> Item {
        let c = &self.config;
        let (dup, conflict, invalid) = (c.duplicate_ratio, c.conflict_ratio, c.invalid_ratio);
        let roll: f64 = self.rng.random();
        if !self.accepted.is_empty() && roll < dup + conflict {
            let i = self.rng.random_range(0..self.accepted.len());
            let mut payload = self.accepted[i].clone();
            if roll < dup {
                return Item::Repeat { payload };
            }
            let qty = payload["qty"].as_i64().unwrap_or(0);
            payload["qty"] = json!(qty + 1);
            return Item::Conflict { payload };
        }
        if roll < dup + conflict + invalid {
            let id = format!("{}:bad-{:06}", self.config.device_id, self.rng.random_range(0..1_000_000));
            let mut payload = self.payload(id);
            payload["kind"] = json!("pick");
            payload["qty"] = json!(-1);
            return Item::Invalid { payload };
        }
        self.next_id += 1;
        let id = format!("{}:{:06}", self.config.device_id, self.next_id);
        Item::New { payload: self.payload(id) }
    }

    /// A valid event of a random kind.
    fn payload(&mut self, event_id: String) -> Value {
        const KINDS: [(&str, u32); 8] = [
            ("scan", 30),
            ("receive", 10),
            ("pick", 20),
            ("ship", 15),
            ("dispatch", 5),
            ("adjust", 10),
            ("count", 5),
            ("transfer", 5),
        ];
        const LOCATIONS: [&str; 6] = ["DOCK-1", "DOCK-2", "DOCK-3", "A-01-01", "A-01-02", "B-07-03"];
        let custom: Vec<(&str, u32)> = self.config.kinds.iter().map(|(k, w)| (k.as_str(), *w)).collect();
        let weights: &[(&str, u32)] = if custom.iter().any(|(_, w)| *w > 0) { &custom } else { &KINDS };
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = "scan".to_owned();
        for &(k, w) in weights {
            if pick < w {
                k.clone_into(&mut kind);
                break;
            }
            pick -= w;
        }
        let kind = kind.as_str();
        let qty: i64 = match kind {
            "adjust" => self.rng.random_range(-5..=5),
            "scan" => 1,
            _ => self.rng.random_range(1..=24),
        };
        let sku = format!("SKU-{:06}", self.rng.random_range(0..500));
        let location = LOCATIONS[self.rng.random_range(0..LOCATIONS.len())];
        let shipment =
            matches!(kind, "ship" | "dispatch").then(|| format!("SHP-{}", self.rng.random_range(0..10_000)));
        let order = (kind == "pick").then(|| format!("ORD-{}", self.rng.random_range(0..10_000)));
        let attrs = match kind {
            "ship" => json!({"carrier": "dhl"}),
            // A transfer names its destination, another location than its source.
            "transfer" => {
                let to = LOCATIONS.iter().find(|l| **l != location).copied().unwrap_or("A-01-01");
                json!({ sync_protocol::inventory::TRANSFER_TO: to })
            }
            _ => json!({}),
        };
        let occurred_at = self.rng.random_bool(0.5).then_some("2026-11-21T10:15:00Z");
        json!({
            "event_id": event_id, "kind": kind, "sku": sku, "location": location, "qty": qty,
            "occurred_at": occurred_at, "device_id": self.config.device_id, "shipment_id": shipment,
            "order_id": order, "attrs": attrs,
        })
    }

    /// Posts `items` (as an array when `array`), retrying until answered, and records the
    /// answers.
    async fn post(&mut self, items: &[Item], array: bool) {
        let body = if array {
            Value::Array(items.iter().map(|i| i.payload().clone()).collect())
        } else {
            items.first().map(|i| i.payload().clone()).unwrap_or(Value::Null)
        };
        let (reply, retried) = self.send(&body, array, items.len()).await;
        let answers = match reply {
            Reply::Answers(answers) => answers,
            Reply::GaveUp => {
                for item in items {
                    if let Item::New { payload } = item {
                        self.ledger.record(item.event_id(), payload, Outcome::Unanswered);
                    }
                }
                return;
            }
        };
        for (item, answer) in items.iter().zip(answers) {
            self.judge(item, answer, retried);
        }
    }

    /// Compares one answer with what the item expects, and records it.
    fn judge(&mut self, item: &Item, answer: Answer, retried: bool) {
        let id = item.event_id().to_owned();
        match (item, answer) {
            (Item::New { payload }, Answer::Accepted { ack, duplicate }) => {
                if duplicate && !retried {
                    self.ledger.anomaly(format!("new event {id} was answered as a duplicate at {ack}"));
                }
                self.ledger.record(&id, payload, Outcome::Accepted(ack));
                self.accepted.push(payload.clone());
            }
            (Item::Repeat { payload }, Answer::Accepted { ack, duplicate }) => {
                if !duplicate {
                    self.ledger.anomaly(format!("re-post of {id} was answered as created at {ack}"));
                }
                self.ledger.record(&id, payload, Outcome::Accepted(ack));
            }
            (Item::Conflict { payload }, answer) => {
                let (status, text) = match &answer {
                    Answer::Error { status, code } => (*status, code.clone()),
                    Answer::Accepted { ack, .. } => (200, format!("accepted at {ack}")),
                };
                if !matches!(&answer, Answer::Error { code, .. } if code == "event_id_conflict") {
                    self.ledger.anomaly(format!("conflicting post of {id} was answered {status} {text}"));
                }
                self.ledger.record_conflict(ConflictPost {
                    event_id: id,
                    payload: payload.clone(),
                    status,
                    answer: text,
                });
            }
            (Item::Invalid { payload }, Answer::Error { status, code }) => {
                if code != "invalid_field" {
                    self.ledger.anomaly(format!("invalid event {id} was answered {status} {code}"));
                }
                self.ledger.record(&id, payload, Outcome::Rejected { status, error: code });
            }
            (Item::Invalid { payload }, Answer::Accepted { ack, .. }) => {
                self.ledger.anomaly(format!("invalid event {id} was accepted at {ack}"));
                self.ledger.record(&id, payload, Outcome::Accepted(ack));
            }
            (item @ (Item::New { .. } | Item::Repeat { .. }), Answer::Error { status, code }) => {
                self.ledger.anomaly(format!("valid event {id} was answered {status} {code}"));
                self.ledger.record(&id, item.payload(), Outcome::Rejected { status, error: code });
            }
        }
    }

    /// Sends one request until it is answered with something other than "try again".
    /// Returns the answers and whether the request was sent more than once.
    async fn send(&self, body: &Value, array: bool, items: usize) -> (Reply, bool) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(25);
        let mut retried = false;
        loop {
            let wait = match self.try_send(body, array, items).await {
                Attempt::Done(answers) => return (Reply::Answers(answers), retried),
                Attempt::Unreachable => backoff,
                Attempt::Busy(retry_after) => retry_after.unwrap_or(backoff),
                Attempt::Garbled(text) => {
                    self.ledger.anomaly(text);
                    backoff
                }
            };
            if started.elapsed() >= self.config.give_up_after {
                return (Reply::GaveUp, retried);
            }
            self.ledger.count_retry();
            retried = true;
            tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn try_send(&self, body: &Value, array: bool, items: usize) -> Attempt {
        let resp = match self.http.post(&self.config.url).json(body).send().await {
            Ok(resp) => resp,
            Err(_) => return Attempt::Unreachable,
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let Ok(bytes) = resp.bytes().await else { return Attempt::Unreachable };
        self.ledger.count_request(array);
        if matches!(status, 429 | 503 | 507) {
            return Attempt::Busy(retry_after);
        }
        let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
            let text = String::from_utf8_lossy(&bytes);
            return Attempt::Garbled(format!("answer {status} is not JSON: {text}"));
        };
        if !array {
            return match self.single_answer(status, &answer) {
                Some(a) => Attempt::Done(vec![a]),
                None => Attempt::Garbled(format!("unexpected answer {status}: {answer}")),
            };
        }
        let results = match (status, answer["results"].as_array()) {
            (200, Some(results)) if results.len() == items => results,
            _ => return Attempt::Garbled(format!("unexpected array answer {status}: {answer}")),
        };
        let mut answers = Vec::with_capacity(items);
        for r in results {
            match self.array_answer(r) {
                Some(a) => answers.push(a),
                None => return Attempt::Garbled(format!("unexpected array entry: {r}")),
            }
        }
        Attempt::Done(answers)
    }

    fn single_answer(&self, status: u16, body: &Value) -> Option<Answer> {
        match status {
            200 | 201 => {
                let ack = self.ack(body)?;
                Some(Answer::Accepted { ack, duplicate: body["duplicate"].as_bool()? })
            }
            _ => Some(Answer::Error { status, code: body["error"].as_str()?.to_owned() }),
        }
    }

    fn array_answer(&self, entry: &Value) -> Option<Answer> {
        match entry["status"].as_str()? {
            "created" => Some(Answer::Accepted { ack: self.ack(entry)?, duplicate: false }),
            "duplicate" => Some(Answer::Accepted { ack: self.ack(entry)?, duplicate: true }),
            "conflict" => Some(Answer::Error { status: 409, code: entry["error"].as_str()?.to_owned() }),
            "invalid" => Some(Answer::Error { status: 422, code: entry["error"].as_str()?.to_owned() }),
            other => Some(Answer::Error { status: 200, code: other.to_owned() }),
        }
    }

    fn ack(&self, body: &Value) -> Option<Ack> {
        Some(Ack {
            node_id: self.config.node_id.clone(),
            epoch: body["epoch"].as_str()?.to_owned(),
            lane: body["lane"].as_str()?.to_owned(),
            seq: body["seq"].as_u64()?,
        })
    }
}

/// One try of a request.
enum Attempt {
    Done(Vec<Answer>),
    /// No answer: refused, reset or timed out.
    Unreachable,
    /// 503, 429 or 507: try again, after `Retry-After` when given.
    Busy(Option<Duration>),
    /// An answer the API does not allow; recorded, then retried.
    Garbled(String),
}
