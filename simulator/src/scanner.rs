//! Simulated scanners: handhelds and dock terminals posting events to a node.
//!
//! A scanner posts new events of every kind, alone or in arrays, and behaves like real
//! devices do: it retries with the same `event_id` and payload when the node does not
//! answer or answers 503 `unavailable` (so a retry after a lost answer gets `duplicate`),
//! re-posts some events it was already answered for, and now and then sends an `event_id`
//! it used before with a different payload (which must be refused with 409). Every answer
//! goes into the shared [`Ledger`]. All choices come from one seeded RNG per scanner.
//!
//! # Shed events
//! A node under overload sheds events instead of storing them (API.md): 429 `overloaded`,
//! 507 `disk_quota` or `disk_full`, 503 `store_failed`, for a whole request or, in an
//! array answer, per item with `"status": "shed"`. A shed event is not stored, so the
//! scanner keeps it, carries on with new events (a scan at the dock happens whether or not
//! the last one was stored), and posts the same event (same `event_id`, same payload)
//! again once the answer's `Retry-After` has passed, capped at
//! [`ScannerConfig::retry_after_max`] to keep test runs short. Shed events go again one
//! array at a time: when a retry is shed too, the others wait for its `Retry-After`, so a
//! scanner probes an overloaded node instead of spending its time on old events, and
//! drains its queue quickly once they are taken again. Only a 201/200 makes an event
//! acknowledged in the ledger. Every shed answer is counted per lane and reason; one
//! without `Retry-After` is recorded as a shed anomaly, and so is a shed event that a later
//! post finds stored (`duplicate`) although no attempt of it went unanswered. An event
//! still shed when the scanner stops, or [`ScannerConfig::give_up_after`] after its first
//! shed answer, ends as [`Outcome::Shed`]: never stored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sync_protocol::Kind;
use sync_protocol::event::{ATTR_VALUE_BYTES_MAX, ATTRS_MAX};

use crate::ledger::{Ack, ConflictPost, Ledger, Outcome, ShedReason};

/// Most `attrs` entries a scanner adds as padding: every one but the entry some kinds
/// carry of their own (a shipment's carrier, a transfer's destination).
pub const PAD_ATTRS_MAX: usize = ATTRS_MAX - 1;
/// Most bytes of padding an event can carry within the API's `attrs` limits.
pub const PAD_BYTES_MAX: usize = PAD_ATTRS_MAX * ATTR_VALUE_BYTES_MAX;
/// How often a scanner that only waits for shed events to be due looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The interval between the starts of a scanner's requests, changeable while scanners run
/// (a scenario's `rate` step). Clones share the value. Unlike [`ScannerConfig::pause`],
/// the time a request takes counts against it, so the offered rate holds however slowly
/// the node answers (up to one request in flight per scanner), and each interval is drawn
/// from half to one and a half times the value, so that scanners answered by one group
/// commit do not post again in lockstep.
#[derive(Debug, Clone, Default)]
pub struct Pace(Arc<AtomicU64>);

impl Pace {
    /// A mean interval of `interval` between request starts.
    pub fn new(interval: Duration) -> Pace {
        let pace = Pace::default();
        pace.set(interval);
        pace
    }

    /// Changes the interval of every scanner sharing this pace.
    pub fn set(&self, interval: Duration) {
        self.0.store(u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The mean interval now.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

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
    /// A shared interval between request starts that replaces `pause` when set, so a run
    /// can change the rate.
    pub pace: Option<Pace>,
    /// How long one request keeps being retried before its events count as unanswered,
    /// and how long a shed event keeps being posted again before it counts as shed.
    pub give_up_after: Duration,
    /// Longest wait before a shed event is posted again, whatever its `Retry-After` says.
    pub retry_after_max: Duration,
    /// Bytes of padding in each event's `attrs` (in values of at most 256 bytes), to make
    /// events the size of real telemetry; at most [`PAD_BYTES_MAX`].
    pub attrs_bytes: usize,
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
            pace: None,
            give_up_after: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(1),
            attrs_bytes: 0,
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

    /// The lane the node puts the item's kind in (the node's default lanes; the harness
    /// does not configure others).
    fn lane(&self) -> &'static str {
        self.payload()["kind"]
            .as_str()
            .and_then(|k| k.parse::<Kind>().ok())
            .map_or("unknown", |k| k.default_lane().as_str())
    }
}

/// One item of a request with what earlier attempts of it left open.
#[derive(Debug, Clone)]
struct Post {
    item: Item,
    /// An earlier attempt went unanswered (or was answered 503 `unavailable`), so the node
    /// may hold the event although it was shed since.
    uncertain: bool,
    /// The first shed answer of the item, if it was shed before.
    first_shed: Option<Instant>,
}

impl Post {
    fn fresh(item: Item) -> Post {
        Post { item, uncertain: false, first_shed: None }
    }
}

/// A shed item waiting to be posted again.
#[derive(Debug)]
struct Deferred {
    post: Post,
    /// The last shed answer.
    reason: ShedReason,
    /// When it may be posted again.
    due: Instant,
}

/// A shed answer: why, and the `Retry-After` it carried.
#[derive(Debug, Clone)]
struct Shed {
    reason: ShedReason,
    retry_after: Option<Duration>,
}

/// The answer to one item of a request, normalised over singles and arrays.
#[derive(Debug)]
enum Answer {
    Accepted { ack: Ack, duplicate: bool },
    Error { status: u16, code: String },
    Shed(Shed),
}

/// A request's fate.
enum Reply {
    Answers(Vec<Answer>),
    /// The whole request was shed.
    Shed(Shed),
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
    deferred: VecDeque<Deferred>,
    /// No shed event is posted again before this: the `Retry-After` of the last retry that
    /// was shed again.
    retry_gate: Instant,
}

impl Scanner {
    /// A scanner recording into `ledger`.
    pub fn new(config: ScannerConfig, ledger: Arc<Ledger>) -> Scanner {
        let rng = StdRng::seed_from_u64(config.seed);
        Scanner {
            config,
            ledger,
            http: crate::api::http_client(),
            rng,
            next_id: 0,
            accepted: Vec::new(),
            deferred: VecDeque::new(),
            retry_gate: Instant::now(),
        }
    }

    /// Posts until the configured number of new events is reached and nothing shed is
    /// left, or `stop` is set. Shed events that are due go first; what is still shed at
    /// the end is recorded as [`Outcome::Shed`].
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.give_up_on_shed();
            let retry = self.due_posts();
            let retrying = retry.is_some();
            let posts = if let Some(posts) = retry {
                posts
            } else if self.remaining() > 0 {
                self.next_request().into_iter().map(Post::fresh).collect()
            } else if let Some(due) = self.deferred.iter().map(|d| d.due).min() {
                let due = due.max(self.retry_gate);
                tokio::time::sleep(due.saturating_duration_since(Instant::now()).min(STOP_POLL)).await;
                continue;
            } else {
                break;
            };
            // An array of one is legal and exercises the array path; only scanners that post
            // arrays at all send one.
            let array = posts.len() > 1 || (self.config.array_ratio > 0.0 && self.rng.random_bool(0.05));
            let started = Instant::now();
            if let Some(wait) = self.post(posts, array).await
                && retrying
            {
                self.retry_gate = Instant::now() + wait;
            }
            let pause = match &self.config.pace {
                Some(pace) => {
                    let interval = pace.get().mul_f64(self.rng.random_range(0.5..1.5));
                    (started + interval).saturating_duration_since(Instant::now())
                }
                None => self.config.pause,
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        for deferred in std::mem::take(&mut self.deferred) {
            self.settle_shed(deferred);
        }
    }

    fn remaining(&self) -> u64 {
        self.config.events.map_or(u64::MAX, |n| n.saturating_sub(self.next_id))
    }

    /// Shed items that are due, oldest first, as many as one array holds (each
    /// `event_id` once); none before the retry gate opens.
    fn due_posts(&mut self) -> Option<Vec<Post>> {
        let now = Instant::now();
        if now < self.retry_gate {
            return None;
        }
        let max = self.config.array_events_max.max(1);
        let mut posts: Vec<Post> = Vec::new();
        let mut kept = VecDeque::with_capacity(self.deferred.len());
        for d in std::mem::take(&mut self.deferred) {
            let id = d.post.item.event_id();
            if d.due <= now && posts.len() < max && posts.iter().all(|p| p.item.event_id() != id) {
                posts.push(d.post);
            } else {
                kept.push_back(d);
            }
        }
        self.deferred = kept;
        (!posts.is_empty()).then_some(posts)
    }

    /// Settles shed items first shed longer than `give_up_after` ago.
    fn give_up_on_shed(&mut self) {
        let limit = self.config.give_up_after;
        let (expired, kept): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| d.post.first_shed.is_some_and(|t| t.elapsed() >= limit));
        self.deferred = kept.into();
        for deferred in expired {
            self.settle_shed(deferred);
        }
    }

    /// Records the final outcome of an item that was still shed when the scanner stopped
    /// or gave up on it: never stored, unless an unanswered attempt may have stored it.
    /// Re-posts and conflicting posts leave nothing to record.
    fn settle_shed(&self, deferred: Deferred) {
        let Deferred { post, reason, .. } = deferred;
        let outcome = if post.uncertain { Outcome::Unanswered } else { Outcome::Shed(reason) };
        match &post.item {
            Item::New { payload } => self.ledger.record(post.item.event_id(), payload, outcome),
            Item::Invalid { payload } => self.ledger.record(post.item.event_id(), payload, outcome),
            Item::Repeat { .. } | Item::Conflict { .. } => {}
        }
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
        let mut attrs = match kind {
            "ship" => json!({"carrier": "dhl"}),
            // A transfer names its destination, another location than its source.
            "transfer" => {
                let to = LOCATIONS.iter().find(|l| **l != location).copied().unwrap_or("A-01-01");
                json!({ sync_protocol::inventory::TRANSFER_TO: to })
            }
            _ => json!({}),
        };
        let pad = self.config.attrs_bytes.min(PAD_BYTES_MAX);
        for (i, start) in (0..pad).step_by(ATTR_VALUE_BYTES_MAX).enumerate() {
            let len = (pad - start).min(ATTR_VALUE_BYTES_MAX);
            attrs[format!("pad{i:02}")] = json!("x".repeat(len));
        }
        let occurred_at = self.rng.random_bool(0.5).then_some("2026-11-21T10:15:00Z");
        json!({
            "event_id": event_id, "kind": kind, "sku": sku, "location": location, "qty": qty,
            "occurred_at": occurred_at, "device_id": self.config.device_id, "shipment_id": shipment,
            "order_id": order, "attrs": attrs,
        })
    }

    /// Posts `posts` (as an array when `array`), retrying in place until answered, and
    /// records the answers; shed items are kept to be posted again. Returns the longest
    /// wait a shed item was given, if any was shed.
    async fn post(&mut self, posts: Vec<Post>, array: bool) -> Option<Duration> {
        let body = if array {
            Value::Array(posts.iter().map(|p| p.item.payload().clone()).collect())
        } else {
            posts.first().map(|p| p.item.payload().clone()).unwrap_or(Value::Null)
        };
        let (reply, retried) = self.send(&body, array, posts.len()).await;
        let mut wait = None;
        match reply {
            Reply::GaveUp => {
                for post in posts {
                    if let Item::New { payload } = &post.item {
                        self.ledger.record(post.item.event_id(), payload, Outcome::Unanswered);
                    }
                }
            }
            Reply::Shed(shed) => {
                for post in posts {
                    wait = wait.max(Some(self.defer(post, retried, &shed)));
                }
            }
            Reply::Answers(answers) => {
                for (post, answer) in posts.into_iter().zip(answers) {
                    match answer {
                        Answer::Shed(shed) => wait = wait.max(Some(self.defer(post, retried, &shed))),
                        answer => self.judge(&post, answer, retried),
                    }
                }
            }
        }
        wait
    }

    /// Counts a shed answer to `post` in its lane and keeps the item to be posted again
    /// after the answer's `Retry-After` (at most `retry_after_max`); returns that wait.
    fn defer(&mut self, mut post: Post, retried: bool, shed: &Shed) -> Duration {
        let now = Instant::now();
        if !matches!(post.item, Item::Invalid { .. }) {
            self.ledger.shed(post.item.lane(), &shed.reason);
        }
        post.uncertain |= retried;
        post.first_shed.get_or_insert(now);
        let wait = shed.retry_after.unwrap_or(self.config.retry_after_max).min(self.config.retry_after_max);
        self.deferred.push_back(Deferred { post, reason: shed.reason.clone(), due: now + wait });
        wait
    }

    /// Compares one answer with what the item expects, and records it.
    fn judge(&mut self, post: &Post, answer: Answer, retried: bool) {
        let item = &post.item;
        let id = item.event_id().to_owned();
        let uncertain = retried || post.uncertain;
        match (item, answer) {
            (Item::New { payload }, Answer::Accepted { ack, duplicate }) => {
                if duplicate && !uncertain {
                    match post.first_shed {
                        Some(_) => self.ledger.shed_anomaly(format!(
                            "event {id} was shed, and posted again was answered as a duplicate at {ack}: \
                             the shed answer had stored it"
                        )),
                        None => self
                            .ledger
                            .anomaly(format!("new event {id} was answered as a duplicate at {ack}")),
                    }
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
                    Answer::Shed(shed) => (shed.reason.status, shed.reason.error.clone()),
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
            // `post` defers shed answers before judging.
            (_, Answer::Shed(shed)) => {
                self.ledger.anomaly(format!("event {id} was judged on a shed answer {}", shed.reason));
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
                Attempt::Shed(shed) => return (Reply::Shed(shed), retried),
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
        let answer = serde_json::from_slice::<Value>(&bytes);
        if matches!(status, 429 | 503 | 507) {
            let code = answer.as_ref().ok().and_then(|a| a["error"].as_str()).unwrap_or_default();
            // A 503 other than a failed store (shutting down, a commit past the request
            // timeout) may still end in a stored event: retry it in place.
            if status == 503 && code != "store_failed" {
                return Attempt::Busy(retry_after);
            }
            let reason = ShedReason { status, error: code.to_owned() };
            if code.is_empty() {
                self.ledger.shed_anomaly(format!("answer {status} for {items} events has no error code"));
            }
            if retry_after.is_none() {
                self.ledger.shed_anomaly(format!("{reason} for {items} events came without Retry-After"));
            }
            return Attempt::Shed(Shed { reason, retry_after });
        }
        let Ok(answer) = answer else {
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
            match self.array_answer(r, retry_after) {
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

    /// One entry of an array answer; `header` is the answer's `Retry-After`, which must be
    /// there when an entry was shed.
    fn array_answer(&self, entry: &Value, header: Option<Duration>) -> Option<Answer> {
        match entry["status"].as_str()? {
            "created" => Some(Answer::Accepted { ack: self.ack(entry)?, duplicate: false }),
            "duplicate" => Some(Answer::Accepted { ack: self.ack(entry)?, duplicate: true }),
            "conflict" => Some(Answer::Error { status: 409, code: entry["error"].as_str()?.to_owned() }),
            "invalid" => Some(Answer::Error { status: 422, code: entry["error"].as_str()?.to_owned() }),
            "shed" => {
                let reason = ShedReason::of_code(entry["error"].as_str()?);
                let retry_after = entry["retry_after_s"].as_u64().map(Duration::from_secs);
                if retry_after.is_none() || header.is_none() {
                    let id = entry["event_id"].as_str().unwrap_or_default();
                    self.ledger.shed_anomaly(format!(
                        "array entry {id} shed with {reason}: retry_after_s {:?}, Retry-After header {:?}",
                        retry_after.map(|d| d.as_secs()),
                        header.map(|d| d.as_secs())
                    ));
                }
                Some(Answer::Shed(Shed { reason, retry_after: retry_after.or(header) }))
            }
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
    /// 503 other than `store_failed`: try again in place, after `Retry-After` when given.
    Busy(Option<Duration>),
    /// 429, 507 or 503 `store_failed` for the whole request: nothing of it was stored.
    Shed(Shed),
    /// An answer the API does not allow; recorded, then retried.
    Garbled(String),
}
