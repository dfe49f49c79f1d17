//! The trace: what happened, one line per step, in virtual milliseconds.
//!
//! Lines are kept as small values and formatted only when someone reads them: the last
//! [`TRACE_RING_LINES`] always (a violation prints them), every line when a seed is
//! replayed with `--seed`. Formatting every line of every seed would cost more than the
//! simulation itself in a debug build.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use sync_protocol::{Lane, Message};

/// Lines kept for a violation report.
pub const TRACE_RING_LINES: usize = 200;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Node to relay.
    ToRelay,
    /// Relay to node.
    ToNode,
}

impl Dir {
    /// A dense index, for per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Dir::ToRelay => 0,
            Dir::ToNode => 1,
        }
    }

    /// The other direction.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::ToRelay => Dir::ToNode,
            Dir::ToNode => Dir::ToRelay,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::ToRelay => "->relay",
            Dir::ToNode => "->node",
        })
    }
}

/// A packet's content, summarized for the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The QUIC handshake's first packet.
    Initial,
    /// The relay's handshake answer.
    Handshake,
    /// A keep-alive.
    Ping,
    /// CONNECTION_CLOSE.
    Close,
    /// A stateless reset from an endpoint that does not know the connection.
    Reset,
    /// Hello with the node's heads.
    Hello([u64; 3]),
    /// Welcome with the relay's watermarks.
    Welcome([u64; 3]),
    /// A refusal.
    Refuse,
    /// Events `first..=last` of a lane.
    Batch(Lane, u64, u64),
    /// A cumulative ack.
    Ack(Lane, u64),
    /// A resend request.
    Resync(Lane, u64),
    /// Merged inventory through a relay version.
    Inventory(u64),
}

impl Wire {
    /// The summary of a protocol message.
    pub fn of(msg: &Message) -> Wire {
        match msg {
            Message::Hello(h) => Wire::Hello(h.heads.0),
            Message::Welcome(w) => Wire::Welcome(w.watermarks.0),
            Message::Refuse(_) => Wire::Refuse,
            Message::Batch(b) => {
                let first = b.first_seq.get();
                Wire::Batch(b.lane, first, first + (b.events.len() as u64).saturating_sub(1))
            }
            Message::Ack(a) => Wire::Ack(a.lane, a.through_seq.get()),
            Message::Resync(r) => Wire::Resync(r.lane, r.from_seq.get()),
            Message::Inventory(i) => Wire::Inventory(i.through_version),
            // The simulation does not reconcile: these never travel in it.
            Message::Repair(_) | Message::Repaired(_) => Wire::Close,
        }
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wire::Initial => f.write_str("initial"),
            Wire::Handshake => f.write_str("handshake"),
            Wire::Ping => f.write_str("ping"),
            Wire::Close => f.write_str("close"),
            Wire::Reset => f.write_str("stateless-reset"),
            Wire::Hello(h) => write!(f, "hello heads={h:?}"),
            Wire::Welcome(w) => write!(f, "welcome watermarks={w:?}"),
            Wire::Refuse => f.write_str("refuse"),
            Wire::Inventory(v) => write!(f, "inventory through v{v}"),
            Wire::Batch(lane, first, last) => write!(f, "batch {lane} {first}..={last}"),
            Wire::Ack(lane, through) => write!(f, "ack {lane} through {through}"),
            Wire::Resync(lane, from) => write!(f, "resync {lane} from {from}"),
        }
    }
}

/// What the network did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Lost; a reliable frame is sent again after `retry_ms`.
    Lost {
        /// Delay before the retransmission, if any.
        retry_ms: Option<u64>,
    },
    /// Arrives after `in_ms`, twice when `duplicated`.
    Arrives {
        /// Delay of the first copy.
        in_ms: u64,
        /// Whether a second copy follows.
        duplicated: bool,
    },
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Lost { retry_ms: Some(ms) } => write!(f, "lost, retransmit in {ms} ms"),
            Fate::Lost { retry_ms: None } => f.write_str("lost"),
            Fate::Arrives { in_ms, duplicated: false } => write!(f, "arrives in {in_ms} ms"),
            Fate::Arrives { in_ms, duplicated: true } => write!(f, "arrives in {in_ms} ms, duplicated"),
        }
    }
}

/// A scanner's answer from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 201 with the new seq.
    Created(u64),
    /// 200 with the original seq.
    Duplicate(u64),
    /// 409: another payload under this id.
    Conflict,
    /// The node is down; the scanner retries.
    Unavailable,
    /// The node committed and then crashed before answering.
    Unanswered,
}

/// One step of the simulation.
#[derive(Debug, Clone)]
pub enum Line {
    /// A packet put on the wire.
    Send {
        /// The connection.
        conn: u64,
        /// The node of the connection.
        node: usize,
        /// Which way.
        dir: Dir,
        /// What.
        wire: Wire,
        /// What the network did with it.
        fate: Fate,
    },
    /// A packet or frame handed to its endpoint.
    Recv {
        /// The connection.
        conn: u64,
        /// The node of the connection.
        node: usize,
        /// Which way.
        dir: Dir,
        /// What.
        wire: Wire,
    },
    /// A scanner's post and its answer.
    Post {
        /// The node posted to.
        node: usize,
        /// The scanner's own event number.
        event: u32,
        /// The event's lane.
        lane: Lane,
        /// The answer.
        answer: Answer,
    },
    /// The node recorded an ack.
    Acked {
        /// The node.
        node: usize,
        /// The lane.
        lane: Lane,
        /// The new watermark.
        through: u64,
    },
    /// The relay's receiver accepted new events for commit.
    Accepted {
        /// The node.
        node: usize,
        /// The lane.
        lane: Lane,
        /// First new seq.
        first: u64,
        /// Last new seq.
        last: u64,
    },
    /// The relay's writer made a group durable.
    Committed {
        /// Appends in the group.
        appends: usize,
        /// Log entries written.
        entries: usize,
    },
    /// Anything rarer: faults, crashes, restarts, phases.
    Text(String),
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Send { conn, node, dir, wire, fate } => {
                write!(f, "net   node-{node} conn#{conn} {dir} send {wire}: {fate}")
            }
            Line::Recv { conn, node, dir, wire } => {
                write!(f, "net   node-{node} conn#{conn} {dir} recv {wire}")
            }
            Line::Post { node, event, lane, answer } => {
                write!(f, "post  node-{node} event #{event} ({lane}): {answer:?}")
            }
            Line::Acked { node, lane, through } => {
                write!(f, "node  node-{node} recorded ack {lane} {through}")
            }
            Line::Accepted { node, lane, first, last } => {
                write!(f, "relay accepted node-{node} {lane} {first}..={last} for commit")
            }
            Line::Committed { appends, entries } => {
                write!(f, "relay commit durable: {appends} appends, {entries} new log entries")
            }
            Line::Text(text) => f.write_str(text),
        }
    }
}

/// The trace of one seed.
pub struct Trace {
    ring: VecDeque<(Duration, Line)>,
    echo: Option<Box<dyn Write + Send>>,
    capture: Option<Vec<String>>,
    lines: u64,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace").field("lines", &self.lines).finish_non_exhaustive()
    }
}

impl Trace {
    /// A trace that keeps the last [`TRACE_RING_LINES`] lines, writes every line to `echo`
    /// if given, and keeps every formatted line if `capture`.
    pub fn new(echo: Option<Box<dyn Write + Send>>, capture: bool) -> Self {
        Trace {
            ring: VecDeque::with_capacity(TRACE_RING_LINES),
            echo,
            capture: capture.then(Vec::new),
            lines: 0,
        }
    }

    /// Records `line` at virtual time `at`.
    pub fn push(&mut self, at: Duration, line: Line) {
        self.lines += 1;
        if self.echo.is_some() || self.capture.is_some() {
            let text = format_line(at, &line);
            if let Some(echo) = self.echo.as_mut() {
                // A closed stdout (a pager quit early) must not change the run.
                let _ = writeln!(echo, "{text}");
            }
            if let Some(capture) = self.capture.as_mut() {
                capture.push(text);
            }
        }
        if self.ring.len() == TRACE_RING_LINES {
            self.ring.pop_front();
        }
        self.ring.push_back((at, line));
    }

    /// The last lines, formatted.
    pub fn tail(&self) -> Vec<String> {
        self.ring.iter().map(|(at, line)| format_line(*at, line)).collect()
    }

    /// Every line, if the trace was made with `capture`.
    pub fn captured(&self) -> Option<&[String]> {
        self.capture.as_deref()
    }

    /// Lines recorded.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

/// `[   1234 ms] <line>`.
pub fn format_line(at: Duration, line: &Line) -> String {
    format!("[{:>8} ms] {line}", at.as_millis())
}
