//! The load generator: many keep-alive HTTP/1.1 connections posting JSON bodies as
//! scanners do, each request timed, each answer judged.
//!
//! It speaks just enough HTTP/1.1 for a server that answers with a `Content-Length`
//! (the node's axum does): one buffer per connection, bodies formatted straight into it,
//! no per-request allocation. So the generator stays well above what it measures; its
//! own ceiling is shown by running it against [`NoopServer`], which answers every request
//! without reading JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sync_protocol::{Kind, PerLane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::progress::Progress;

/// What went wrong while posting.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Connecting, writing or reading failed.
    #[error("post to {addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP/1.1 as the generator reads it.
    #[error("answer from {addr} is not understood: {reason}")]
    BadAnswer {
        /// The server.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The node did not store every event of a post.
    #[error("post of events {first}..{end} answered {status}: {body}")]
    Refused {
        /// The first event of the post.
        first: u64,
        /// One past its last event.
        end: u64,
        /// The HTTP status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
}

/// The events a run posts: event `n` is a pure function of `n`, so a run can be checked
/// against what it posted without remembering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// A site's day: 3 in 4 scans (bulk), 1 in 5 picks or receipts (standard), 1 in 20
    /// shipments (critical).
    Site,
    /// Only scans: the bulk lane.
    Bulk,
    /// Only picks: the standard lane.
    Standard,
    /// Only shipments: the critical lane.
    Critical,
}

impl Mix {
    /// The kind of event `n`.
    pub fn kind(self, n: u64) -> Kind {
        match self {
            Mix::Bulk => Kind::Scan,
            Mix::Standard => Kind::Pick,
            Mix::Critical => Kind::Ship,
            Mix::Site => match n % 20 {
                0 => Kind::Ship,
                1 | 2 => Kind::Pick,
                3 | 4 => Kind::Receive,
                _ => Kind::Scan,
            },
        }
    }

    /// How many of events `0..count` go to each lane.
    pub fn lane_counts(self, count: u64) -> PerLane<u64> {
        let mut counts = PerLane::<u64>::default();
        // The mix repeats every 20 events: count one period and the rest.
        let (periods, rest) = (count / 20, count % 20);
        for n in 0..20 {
            *counts.get_mut(self.kind(n).default_lane()) += periods + u64::from(n < rest);
        }
        counts
    }
}

/// A run's events: event ids `{prefix}{n:010}`, kinds by [`Mix`].
#[derive(Debug, Clone)]
pub struct Workload {
    /// Unique per run, so two runs against one store never collide.
    pub prefix: String,
    /// The kinds.
    pub mix: Mix,
    /// Events per post: 1 posts single objects, more posts arrays.
    pub per_post: usize,
}

impl Workload {
    /// Appends the JSON of event `n` to `out`.
    pub fn event(&self, n: u64, out: &mut String) {
        let kind = self.mix.kind(n);
        // Quantities and places vary so that the inventory work is real.
        let sku = n.wrapping_mul(7919) % 10_000;
        let location = n % 16;
        let qty = 1 + n % 3;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            r#"{{"event_id":"{}{n:010}","kind":"{}","sku":"SKU-{sku:05}","location":"A-{location:02}","qty":{qty},"device_id":"hs-{}"}}"#,
            self.prefix,
            kind.as_str(),
            n % 64,
        );
    }

    /// The body of the post whose first event is `first`: `per_post` events from it.
    pub fn body(&self, first: u64, out: &mut String) {
        self.body_of(first, self.per_post as u64, out);
    }

    /// The body of a post of `count` events from `first`: an array, unless the workload
    /// posts single objects. A run whose size is not a multiple of `per_post` ends with a
    /// shorter post.
    pub fn body_of(&self, first: u64, count: u64, out: &mut String) {
        debug_assert!(
            (1..=self.per_post as u64).contains(&count),
            "{count} events in a post of {}",
            self.per_post
        );
        out.clear();
        if self.per_post == 1 {
            self.event(first, out);
            return;
        }
        out.push('[');
        for n in first..first + count {
            if n > first {
                out.push(',');
            }
            self.event(n, out);
        }
        out.push(']');
    }
}

/// How a run is sized.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Concurrent connections, each with one request in flight.
    pub clients: usize,
    /// Stop after this many events...
    pub events: u64,
    /// ...or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// The first event number (so a second run continues where the first stopped).
    pub first_event: u64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Events the node answered as created (every event of the run, or the run failed).
    pub events: u64,
    /// Requests made.
    pub posts: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Each request's round trip, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadReport {
    /// Events per second over the run.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Requests per second over the run.
    pub fn posts_per_sec(&self) -> f64 {
        self.posts as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0 to 1) of the round trips, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        quantile_us(&self.latencies_us, q) / 1000.0
    }
}

/// The `q` quantile of sorted microseconds.
pub fn quantile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// How answers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// A node: every event must be created (201, or 200 with every result `created`).
    Created,
    /// Any 2xx (the no-op server).
    AnySuccess,
}

/// Posts `workload` to `addr` as `plan` says, showing progress under `label`.
pub async fn run(
    addr: SocketAddr,
    workload: &Workload,
    plan: Plan,
    judge: Judge,
    label: &str,
) -> Result<LoadReport, LoadError> {
    let per_post = workload.per_post as u64;
    let posts_total = plan.events.div_ceil(per_post);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = match plan.duration {
        Some(duration) => Progress::timed(label, duration, "events"),
        None => Progress::start(label, plan.events, "events"),
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        let mut conn = Conn::connect(addr).await?;
        let (next, stop, workload, counter) =
            (next.clone(), stop.clone(), workload.clone(), progress.counter());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut events) = (Vec::new(), 0);
            let mut body = String::new();
            loop {
                // Stop before taking a number, so that every number taken is posted and a
                // run's events are `0..events` without gaps (the checks count them so).
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, LoadError>((latencies, events));
                }
                let post = next.fetch_add(1, Ordering::Relaxed);
                if post >= posts_total {
                    return Ok((latencies, events));
                }
                let count = per_post.min(plan.events - post * per_post);
                let first = plan.first_event + post * per_post;
                workload.body_of(first, count, &mut body);
                let sent = Instant::now();
                let (status, answer) = conn.post(body.as_bytes()).await?;
                latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                let shape = if workload.per_post == 1 { Post::Single } else { Post::Array(count as usize) };
                judge_answer(judge, status, answer, shape).map_err(|()| LoadError::Refused {
                    first,
                    end: first + count,
                    status,
                    body: String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned(),
                })?;
                events += count;
                counter.fetch_add(count, Ordering::Relaxed);
            }
        }));
    }
    if let Some(duration) = plan.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let (mut latencies_us, mut events) = (Vec::new(), 0);
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((mut l, e))) => {
                latencies_us.append(&mut l);
                events += e;
            }
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
            Err(join) => {
                stop.store(true, Ordering::Relaxed);
                failure.get_or_insert(LoadError::BadAnswer { addr, reason: format!("client task: {join}") });
            }
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    if let Some(e) = failure {
        return Err(e);
    }
    latencies_us.sort_unstable();
    let posts = latencies_us.len() as u64;
    Ok(LoadReport { events, posts, elapsed, latencies_us })
}

fn judge_answer(judge: Judge, status: u16, body: &[u8], post: Post) -> Result<(), ()> {
    match (judge, post) {
        (Judge::AnySuccess, _) if (200..300).contains(&status) => Ok(()),
        (Judge::Created, Post::Single) if status == 201 => Ok(()),
        (Judge::Created, Post::Array(events)) if status == 200 => {
            let created = count(body, br#""status":"created""#);
            if created == events { Ok(()) } else { Err(()) }
        }
        _ => Err(()),
    }
}

/// What a post carried, for judging its answer.
#[derive(Debug, Clone, Copy)]
enum Post {
    /// One event object (answered 201).
    Single,
    /// An array of this many events (answered 200 with a result each).
    Array(usize),
}

/// Occurrences of `needle` in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// One keep-alive connection to a node's `POST /v1/events`.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    /// Connects, with Nagle off (requests are written whole).
    pub async fn connect(addr: SocketAddr) -> Result<Conn, LoadError> {
        let io = |source| LoadError::Io { addr, source };
        let stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Conn { addr, stream, request: Vec::new(), buf: Vec::new(), body: Vec::new() })
    }

    /// Posts `body` as JSON and returns the status and the answer's body.
    pub async fn post(&mut self, body: &[u8]) -> Result<(u16, &[u8]), LoadError> {
        let addr = self.addr;
        let io = |source| LoadError::Io { addr, source };
        self.request.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            VecWriter(&mut self.request),
            "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await.map_err(io)?;
        let (status, head_len, length) = loop {
            if let Some(parsed) =
                parse_head(&self.buf).map_err(|reason| LoadError::BadAnswer { addr, reason })?
            {
                break parsed;
            }
            self.fill().await?;
        };
        while self.buf.len() < head_len + length {
            self.fill().await?;
        }
        self.body.clear();
        self.body.extend_from_slice(&self.buf[head_len..head_len + length]);
        self.buf.drain(..head_len + length);
        Ok((status, &self.body))
    }

    async fn fill(&mut self) -> Result<(), LoadError> {
        let addr = self.addr;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.map_err(|source| LoadError::Io { addr, source })?;
        if n == 0 {
            return Err(LoadError::BadAnswer { addr, reason: "the server closed the connection".into() });
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `fmt::Write` into a byte vector.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The head of the message at the start of `buf` and the length of the head with its
/// blank line, or `None` if the head is not complete yet.
fn head(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&buf[..end], end + 4))
}

/// The `Content-Length` of a message head.
fn content_length(head: &str) -> Result<usize, String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .ok_or("no content-length")?
        .map_err(|e| format!("content-length: {e}"))
}

/// Parses a response head: `(status, head length, body length)`, or `None` if the head
/// is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, usize)>, String> {
    let Some((head, head_len)) = head(buf) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(head).map_err(|_| "the head is not UTF-8".to_owned())?;
    let status_line = head.split("\r\n").next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    Ok(Some((status, head_len, content_length(head)?)))
}

/// An HTTP/1.1 server that answers every request `201 {}` without looking at the body:
/// the ceiling of the load generator and of loopback HTTP on this machine.
pub struct NoopServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl NoopServer {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<NoopServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_noop(stream));
            }
        });
        Ok(NoopServer { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node's HTTP stack without the node: axum on a runtime of its own (one worker per
/// core, as the node's), reading each body and answering `201 {}` without parsing or
/// storing it. What the same generator gets from it is the ceiling of one-event posts
/// through axum on this machine.
pub struct AxumNoop {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl AxumNoop {
    /// Listens on a free loopback port. Callable from async code: the server runs on its
    /// own runtime, which is shut down without waiting when this is dropped.
    pub fn start() -> std::io::Result<AxumNoop> {
        async fn answer(body: axum::body::Body) -> axum::response::Response {
            use axum::response::IntoResponse;
            let read = axum::body::to_bytes(body, 1 << 20).await;
            let status = if read.is_ok() { StatusCode::CREATED } else { StatusCode::BAD_REQUEST };
            (status, [(header::CONTENT_TYPE, "application/json")], "{}").into_response()
        }
        use axum::http::{StatusCode, header};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().thread_name("axum-noop").enable_all().build()?;
        let app = axum::Router::new().route("/v1/events", axum::routing::post(answer));
        runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    let _ = axum::serve(listener, app).await;
                }
                Err(e) => tracing::warn!("axum no-op server: {e}"),
            }
        });
        Ok(AxumNoop { addr, runtime: Some(runtime) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AxumNoop {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve_noop(mut stream: TcpStream) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // A request is a head and a body of content-length bytes (none without one).
        if let Some((head_bytes, head_len)) = head(&buf) {
            let whole = head_len + content_length(&String::from_utf8_lossy(head_bytes)).unwrap_or(0);
            if buf.len() >= whole {
                buf.drain(..whole);
                if stream.write_all(ANSWER).await.is_err() {
                    return;
                }
                continue;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::Lane;

    #[test]
    fn lane_counts_follow_the_mix() {
        let counts = Mix::Site.lane_counts(45);
        let mut by_hand = PerLane::<u64>::default();
        for n in 0..45 {
            *by_hand.get_mut(Mix::Site.kind(n).default_lane()) += 1;
        }
        assert_eq!(counts, by_hand);
        assert_eq!(*counts.get(Lane::Critical), 3);
        assert_eq!(Mix::Bulk.lane_counts(7).get(Lane::Bulk), &7);
    }

    #[test]
    fn bodies_are_the_json_the_node_parses() {
        let w = Workload { prefix: "t-".into(), mix: Mix::Site, per_post: 3 };
        let mut body = String::new();
        w.body(20, &mut body);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let events = v.as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["event_id"], "t-0000000020");
        assert_eq!(events[0]["kind"], "ship");
        assert_eq!(events[2]["kind"], "pick");
        w.body_of(20, 1, &mut body);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(1), "a short last post is still an array: {body}");
    }

    #[test]
    fn a_run_not_a_whole_number_of_posts_ends_with_a_shorter_one() {
        let runtime = crate::bench::site::runtime().unwrap();
        let report = runtime.block_on(async {
            let noop = NoopServer::start().await.unwrap();
            let workload = Workload { prefix: "t-".into(), mix: Mix::Site, per_post: 100 };
            let plan = Plan { clients: 2, events: 250, duration: None, first_event: 0 };
            run(noop.addr(), &workload, plan, Judge::AnySuccess, "test").await.unwrap()
        });
        assert_eq!((report.events, report.posts), (250, 3));
    }

    #[test]
    fn heads_are_parsed_or_refused() {
        let ok = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_head(ok).unwrap(), Some((201, ok.len() - 5, 5)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no content-length");
        assert!(parse_head(b"SPDY 200\r\ncontent-length: 0\r\n\r\n").is_err());
    }

    #[test]
    fn a_post_is_created_only_when_every_event_is() {
        let body = br#"{"results":[{"status":"created"},{"status":"created"}]}"#;
        assert_eq!(judge_answer(Judge::Created, 200, body, Post::Array(2)), Ok(()));
        assert_eq!(judge_answer(Judge::Created, 200, body, Post::Array(3)), Err(()));
        assert_eq!(
            judge_answer(Judge::Created, 200, b"{}", Post::Single),
            Err(()),
            "a single event answers 201"
        );
        assert_eq!(judge_answer(Judge::Created, 201, b"{}", Post::Single), Ok(()));
        assert_eq!(judge_answer(Judge::Created, 507, b"{}", Post::Single), Err(()));
        assert_eq!(judge_answer(Judge::AnySuccess, 204, b"", Post::Array(5)), Ok(()));
    }
}
