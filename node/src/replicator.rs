//! The replicator: a thin async shell around [`sync_protocol::Sender`] that dials the
//! relay over QUIC, reads the batches the sender asks for from the store (each lane's
//! writer task its own), writes them to one stream per lane, and feeds acknowledgements
//! back.
//!
//! No protocol decision is made here: what to send, when to reconnect and what an ack
//! means are the sender's. The shell owns the clock, the OS randomness for jitter, the
//! sockets and the store reads.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use sync_protocol::wire::{self, FrameDecoder, close};
use sync_protocol::{
    Batch, Lane, Message, NodeIdentity, PerLane, ProtocolViolation, Refuse, Repaired, Sender, SenderConfig,
    SenderEvent, Seq, Transmit,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::config::split_host_port;
use crate::store::{LanePosition, Store, StoreError};

/// State of the link to the relay, as `/v1/status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Waiting to dial again.
    #[default]
    Offline,
    /// Dialling or in the handshake.
    Connecting,
    /// Welcomed by a relay.
    Connected,
}

/// What the status page shows of replication.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStatus {
    /// The link's state.
    pub state: LinkState,
    /// Relay addresses, in failover order.
    pub addresses: Vec<String>,
    /// Name of the relay that welcomed the node last.
    pub relay_id: Option<String>,
    /// The last connection error or refusal, as one line.
    pub last_error: Option<String>,
    /// Successful handshakes since start.
    pub connects: u64,
    /// Refusals since start.
    pub refusals: u64,
    /// Times a relay came back with less than it had acknowledged (a wiped relay).
    pub regressions: u64,
    /// The last such regression, as one line.
    pub last_regression: Option<String>,
}

/// Shared link status.
pub type SharedLink = Arc<Mutex<LinkStatus>>;

/// Why a connection to the relay ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The relay address did not resolve.
    #[error("relay address {addr}: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// QUIC could not connect (unreachable, TLS failure).
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// What failed, with the TLS alert if any.
        reason: String,
    },
    /// The connection failed after it was set up (timeout, closed by the relay).
    #[error("connection lost: {0}")]
    Lost(String),
    /// The relay sent bytes that are not a frame.
    #[error("relay sent a bad frame: {0}")]
    Decode(#[from] wire::DecodeError),
    /// The relay broke the protocol.
    #[error("relay broke the protocol: {0}")]
    Violation(#[from] ProtocolViolation),
    /// The relay refused this node.
    #[error("relay {0}")]
    Refused(Refuse),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the replicator needs.
pub struct Replicator {
    /// The store to read batches from and record acks in.
    pub store: Store,
    /// Who this node is.
    pub identity: NodeIdentity,
    /// QUIC client configuration with the node's certificate.
    pub client_config: quinn::ClientConfig,
    /// Relays in failover order.
    pub relays: Vec<String>,
    /// Status for the HTTP API.
    pub link: SharedLink,
    /// Batch round trips, for `/metrics`.
    pub round_trips: Histogram,
    /// Repairs asked for by reconciliation (`POST /v1/reconcile/repair`), sent on the
    /// connection of the moment.
    pub repairs: tokio::sync::Mutex<mpsc::Receiver<RepairRequest>>,
}

/// A repair to send: records the relay acknowledged, sent again (reconciliation).
#[derive(Debug)]
pub struct RepairRequest {
    /// The records, from the node's store.
    pub batch: Batch,
    /// Where the relay's answer goes; dropped if the connection ends first.
    pub reply: oneshot::Sender<Repaired>,
}

/// Where the HTTP API queues repairs for the replicator.
pub type RepairQueue = mpsc::Sender<RepairRequest>;

/// How long a dial may take before it is abandoned for the next. Without it a dial to a
/// relay that is down waits out the whole idle timeout, and the link would come back up
/// to that long after the relay did.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

enum Ended {
    Shutdown,
}

impl Replicator {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let positions = *self.store.positions().borrow();
        let heads = PerLane::from_fn(|lane| positions.get(lane).head);
        let acked = PerLane::from_fn(|lane| positions.get(lane).acked);
        let config = SenderConfig::new(self.identity.clone(), self.store.epoch());
        let mut sender = Sender::new(config, heads, acked, Instant::now());
        sender.handle_inventory_merged(self.store.inventory_version());
        let mut rng = StdRng::from_os_rng();
        let mut endpoints = Endpoints::default();
        let mut attempt = 0usize;
        loop {
            if let Some(at) = sender.poll_timeout() {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            sender.handle_timeout(Instant::now());
            // Only `Connect` is expected here, and dialing is what comes next.
            while let Some(event) = sender.poll_event() {
                if let SenderEvent::Acked { lane, through } = event
                    && let Err(e) = self.store.record_ack(lane, through).await
                {
                    tracing::warn!(error = %e, "recording an ack");
                }
            }
            let addr = self.relays[attempt % self.relays.len()].clone();
            self.set_link(|l| l.state = LinkState::Connecting);
            let span = tracing::info_span!("relay", relay = %addr, epoch = %self.store.epoch());
            let result =
                self.session(&mut sender, &addr, &mut endpoints, &mut shutdown).instrument(span).await;
            match result {
                Ok(Ended::Shutdown) => return,
                Err(e) => {
                    match &e {
                        ReplicateError::Refused(refuse) => {
                            tracing::error!(relay = %addr, reason = refuse.reason.as_str(), "{refuse}");
                            self.set_link(|l| l.refusals += 1);
                        }
                        _ => tracing::warn!(relay = %addr, error = %e, "replication link down"),
                    }
                    let line = e.to_string();
                    self.set_link(|l| {
                        l.state = LinkState::Offline;
                        l.last_error = Some(line);
                    });
                    attempt += 1;
                }
            }
            sender.handle_disconnected(Instant::now(), &mut rng);
        }
    }

    async fn session(
        &self,
        sender: &mut Sender,
        addr: &str,
        endpoints: &mut Endpoints,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, ReplicateError> {
        let (endpoint, conn) = self.connect(addr, endpoints).await?;
        let mut lanes: PerLane<Option<LaneWriter>> = PerLane::default();
        let result = self.drive(sender, &conn, &mut lanes, shutdown).await;
        let (code, reason): (u32, &[u8]) = match &result {
            Ok(Ended::Shutdown) => (close::SHUTDOWN, b"node shutting down"),
            Err(ReplicateError::Decode(_)) => (close::DECODE_ERROR, b"bad frame"),
            Err(ReplicateError::Violation(_)) => (close::PROTOCOL_VIOLATION, b"protocol violation"),
            Err(_) => (close::SHUTDOWN, b"closing"),
        };
        conn.close(code.into(), reason);
        // The lanes' writers hold the store, so they end before the session does, and a
        // node shutting down closes its store after them: on the closed connection their
        // next write fails, after the read under way, if any.
        for lane in Lane::ALL {
            if let Some(LaneWriter { batches, task, .. }) = lanes.get_mut(lane).take() {
                drop(batches);
                let _ = task.await;
            }
        }
        // Give the close frame a moment to leave; a relay that is gone does not answer.
        let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        result
    }

    /// Dials `addr` from the replicator's QUIC endpoint for its address family: one UDP
    /// socket (and one receive buffer of a few MiB) per family for the life of the
    /// process rather than one per dial. A node that dials every second through a long
    /// outage would otherwise allocate and free that buffer every time, and the
    /// allocator's heap would creep up with the outage. An endpoint that has stopped (its
    /// socket failed) is replaced at once, and the dial made again from the new one.
    async fn connect(
        &self,
        addr: &str,
        endpoints: &mut Endpoints,
    ) -> Result<(quinn::Endpoint, quinn::Connection), ReplicateError> {
        let resolve = |reason: String| ReplicateError::Resolve { addr: addr.to_owned(), reason };
        let (host, _) = split_host_port(addr).map_err(resolve)?;
        let remote: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| resolve(e.to_string()))?
            .next()
            .ok_or_else(|| resolve("no addresses".into()))?;
        let connect_err = |reason: String| ReplicateError::Connect { addr: addr.to_owned(), reason };
        let mut fresh = false;
        let (from, connecting) = loop {
            let from = endpoints.for_remote(remote).map_err(|e| connect_err(e.to_string()))?;
            match from.connect_with(self.client_config.clone(), remote, &host) {
                Ok(connecting) => break (from, connecting),
                Err(quinn::ConnectError::EndpointStopping) if !fresh => {
                    endpoints.forget(remote);
                    fresh = true;
                }
                Err(e) => return Err(connect_err(e.to_string())),
            }
        };
        // A dial abandoned here is closed when `connecting` is dropped.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| connect_err(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| connect_err(e.to_string()))?;
        Ok((from, conn))
    }

    async fn drive(
        &self,
        sender: &mut Sender,
        conn: &quinn::Connection,
        lanes: &mut PerLane<Option<LaneWriter>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, ReplicateError> {
        let lost = |e: quinn::ConnectionError| ReplicateError::Lost(e.to_string());
        let (mut control_send, control_recv) = conn.open_bi().await.map_err(lost)?;
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(control_recv, inbox_tx.clone()));
        let mut positions = self.store.positions();
        // The Hello carries the heads; they must be current, or a relay watermark past a
        // stale head would look like a relay that is ahead of the node.
        for (lane, pos) in positions.borrow_and_update().iter() {
            sender.handle_appended(lane, pos.head);
        }
        sender.handle_connected(Instant::now());
        let mut aging = tokio::time::interval(AGING_CHECK_INTERVAL);
        aging.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repairs = self.repairs.lock().await;
        // Replies to the repairs sent on this connection, in the order they were sent.
        let mut awaiting: VecDeque<oneshot::Sender<Repaired>> = VecDeque::new();
        let mut repair = None;
        // Per lane, the last seq of each batch in flight and when it was queued.
        let mut sent: PerLane<VecDeque<(u64, Instant)>> = PerLane::default();
        loop {
            // Events first: an ack (even one that moves back, from a relay that lost its
            // store) is recorded before a flush that may fail on events no longer held.
            self.handle_events(sender, &mut awaiting, &mut sent).await?;
            if let Err(e) = self.flush(sender, conn, &mut control_send, lanes, &inbox_tx, &mut sent).await {
                // A lane's writer stops on an error it puts in the inbox, behind the
                // messages before it (a batch it could not read, say): that error, not the
                // stop it caused here, is what ends the connection.
                return Err(first_error(&mut inbox).unwrap_or(e));
            }
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(Ok(msg)) => sender.handle_message(msg, Instant::now())?,
                    Some(Err(e)) => return Err(e),
                    None => return Err(ReplicateError::Lost("streams closed".into())),
                },
                changed = positions.changed() => {
                    if changed.is_err() {
                        return Err(ReplicateError::Store(StoreError::Closed));
                    }
                    let now: PerLane<LanePosition> = *positions.borrow_and_update();
                    for (lane, pos) in now.iter() {
                        sender.handle_appended(lane, pos.head);
                    }
                }
                Some(request) = repairs.recv(), if sender.is_ready() => repair = Some(request),
                _ = aging.tick() => {
                    for (lane, writer) in lanes.iter() {
                        let oldest = sent.get(lane).front().map(|&(_, at)| at.elapsed());
                        if let Some(writer) = writer {
                            let aged = oldest.is_some_and(|age| age > AGING_AFTER);
                            writer.aged.send_if_modified(|was| std::mem::replace(was, aged) != aged);
                        }
                    }
                }
                e = conn.closed() => return Err(connection_closed(e)),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(Ended::Shutdown),
            }
            if let Some(request) = repair.take() {
                let frame = Message::Repair(request.batch).encode();
                control_send.write_all(&frame).await.map_err(|e| ReplicateError::Lost(e.to_string()))?;
                awaiting.push_back(request.reply);
            }
        }
    }

    /// Writes everything the sender wants sent.
    async fn flush(
        &self,
        sender: &mut Sender,
        conn: &quinn::Connection,
        control: &mut quinn::SendStream,
        lanes: &mut PerLane<Option<LaneWriter>>,
        inbox: &mpsc::UnboundedSender<Result<Message, ReplicateError>>,
        sent: &mut PerLane<VecDeque<(u64, Instant)>>,
    ) -> Result<(), ReplicateError> {
        let write_err = |e: quinn::WriteError| ReplicateError::Lost(e.to_string());
        while let Some(transmit) = sender.poll_transmit() {
            match transmit {
                Transmit::Control(msg) => control.write_all(&msg.encode()).await.map_err(write_err)?,
                Transmit::Batch { lane, first_seq, count } => {
                    let writer = match lanes.get_mut(lane) {
                        Some(writer) => writer,
                        slot => slot.insert(open_lane(conn, lane, &self.store, inbox).await?),
                    };
                    // The lane's writer reads it, while the session goes on.
                    if writer.batches.send((first_seq, count)).is_err() {
                        return Err(ReplicateError::Lost(format!("the {lane} stream's writer stopped")));
                    }
                    let last = first_seq.get() + u64::from(count).saturating_sub(1);
                    sent.get_mut(lane).push_back((last, Instant::now()));
                }
            }
        }
        control.flush().await.map_err(|e| ReplicateError::Lost(e.to_string()))?;
        Ok(())
    }

    async fn handle_events(
        &self,
        sender: &mut Sender,
        awaiting: &mut VecDeque<oneshot::Sender<Repaired>>,
        sent: &mut PerLane<VecDeque<(u64, Instant)>>,
    ) -> Result<(), ReplicateError> {
        while let Some(event) = sender.poll_event() {
            match event {
                SenderEvent::Connect => {}
                SenderEvent::Welcomed { relay_id } => {
                    tracing::info!(relay_id = %relay_id, "relay welcomed this node");
                    self.set_link(|l| {
                        l.state = LinkState::Connected;
                        l.relay_id = Some(relay_id);
                        l.last_error = None;
                        l.connects += 1;
                    });
                }
                SenderEvent::Acked { lane, through } => {
                    let in_flight = sent.get_mut(lane);
                    while let Some(&(last, at)) = in_flight.front()
                        && last <= through
                    {
                        self.round_trips.observe(at.elapsed().as_secs_f64());
                        in_flight.pop_front();
                    }
                    self.store.record_ack(lane, through).await?;
                }
                SenderEvent::Refused(refuse) => return Err(ReplicateError::Refused(refuse)),
                SenderEvent::Repaired(repaired) => {
                    tracing::info!(lane = repaired.lane.as_str(), first_seq = %repaired.first_seq,
                        inserted = repaired.inserted, present = repaired.present,
                        differing = repaired.differing, "relay answered a repair");
                    match awaiting.pop_front() {
                        Some(reply) => drop(reply.send(repaired)),
                        None => {
                            return Err(
                                ProtocolViolation::Unexpected("a repair answer nobody asked for").into()
                            );
                        }
                    }
                }
                SenderEvent::RelayRegressed { lane, acked, watermark } => {
                    let line = format!(
                        "the relay holds {lane} only through seq {watermark} but had acknowledged {acked}: \
                         it lost acknowledged events (wiped or restored store); resending what this node \
                         still holds"
                    );
                    tracing::error!(lane = lane.as_str(), acked, watermark, "{line}");
                    self.set_link(|l| {
                        l.regressions += 1;
                        l.last_regression = Some(line);
                    });
                }
                SenderEvent::Inventory(update) => {
                    let (complete, version, keys) =
                        (update.complete, update.through_version, update.state.len());
                    self.store.merge_inventory(update).await?;
                    tracing::debug!(keys, version, complete, "merged inventory from the relay");
                    if complete {
                        sender.handle_inventory_merged(version);
                    }
                }
            }
        }
        Ok(())
    }

    fn set_link(&self, f: impl FnOnce(&mut LinkStatus)) {
        f(&mut self.link.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A batch whose acknowledgement has been awaited longer than this raises its lane's
/// stream to the top priority until the acknowledgement comes, so that a lane below
/// others is slowed by them but never starved (see `write_frames`).
pub const AGING_AFTER: Duration = Duration::from_secs(2);
/// How often the session compares the lanes' oldest batches with [`AGING_AFTER`].
const AGING_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The priority of an aged lane: that of `critical`, with which it then shares the link.
const AGED_PRIORITY: i32 = 2;

/// The QUIC stream priority of `lane`: higher numbers are sent first, so critical goes
/// before standard before bulk.
fn lane_priority(lane: Lane) -> i32 {
    match lane {
        Lane::Critical => 2,
        Lane::Standard => 1,
        Lane::Bulk => 0,
    }
}

/// The first error waiting in a connection's inbox, if any (what comes before it is
/// dropped: the connection is ending).
fn first_error(
    inbox: &mut mpsc::UnboundedReceiver<Result<Message, ReplicateError>>,
) -> Option<ReplicateError> {
    while let Ok(msg) = inbox.try_recv() {
        if let Err(e) = msg {
            return Some(e);
        }
    }
    None
}

/// Reads `count` events of `lane` from `first_seq` on and encodes them as one `Batch`.
fn batch_frame(store: &Store, lane: Lane, first_seq: Seq, count: u32) -> Result<Vec<u8>, ReplicateError> {
    let events = store.read_range(lane, first_seq, count)?;
    if events.len() != count as usize {
        return Err(ReplicateError::Store(StoreError::CommitFailed(format!(
            "lane {lane} seqs {first_seq}.. are no longer in the store (pruned); \
             the relay lost them and they cannot be resent"
        ))));
    }
    Ok(Message::Batch(Batch { lane, first_seq, events }).encode())
}

/// The sending half of a lane's stream: its batches (first seq, count) go to the task that
/// reads and writes them, so a lane waiting on the store or on flow control holds up
/// neither the session nor any other lane.
struct LaneWriter {
    batches: mpsc::UnboundedSender<(Seq, u32)>,
    /// Set by the session while the lane's oldest batch is older than [`AGING_AFTER`].
    aged: watch::Sender<bool>,
    /// The writer task, which holds a handle to the store.
    task: tokio::task::JoinHandle<()>,
}

/// Opens the stream of `lane` with its priority, and starts its writer and the reader of
/// its acks. The writer's queue holds at most the sender's window of batches.
async fn open_lane(
    conn: &quinn::Connection,
    lane: Lane,
    store: &Store,
    inbox: &mpsc::UnboundedSender<Result<Message, ReplicateError>>,
) -> Result<LaneWriter, ReplicateError> {
    let (send, recv) = conn.open_bi().await.map_err(|e| ReplicateError::Lost(e.to_string()))?;
    send.set_priority(lane_priority(lane)).map_err(|e| ReplicateError::Lost(e.to_string()))?;
    let span = tracing::debug_span!("lane", lane = lane.as_str());
    tokio::spawn(read_frames(recv, inbox.clone()).instrument(span.clone()));
    let (batches, queued) = mpsc::unbounded_channel();
    let (aged, aged_rx) = watch::channel(false);
    let task = tokio::spawn(
        write_frames(send, lane, store.clone(), queued, aged_rx, inbox.clone()).instrument(span),
    );
    Ok(LaneWriter { batches, aged, task })
}

/// Reads a lane's batches from the store and writes their frames, in order, until the
/// session drops its queue, then finishes the stream. Each batch is read and encoded on
/// the blocking pool, one at a time: the session is never held up by a read, and a
/// drain's bulk reads no longer queue ahead of the critical lane's (reading a whole
/// window at once let them crowd it out, see ARCHITECTURE.md). Between writes, and while
/// a write waits for flow control (not during a read), it keeps the stream's priority
/// current: the lane's own, or [`AGED_PRIORITY`] while it is aged.
///
/// The policy, then: on the wire critical goes first, standard second, bulk last; each
/// lane has its own window of batches in flight, so none waits for another's acks; and a
/// lane whose oldest batch has waited over [`AGING_AFTER`] shares the top priority until
/// it is acknowledged, so bulk is slowed by a busy critical lane but never starved.
async fn write_frames(
    mut send: quinn::SendStream,
    lane: Lane,
    store: Store,
    mut queued: mpsc::UnboundedReceiver<(Seq, u32)>,
    mut aged: watch::Receiver<bool>,
    inbox: mpsc::UnboundedSender<Result<Message, ReplicateError>>,
) {
    enum Step {
        Queued(Option<(Seq, u32)>),
        Wrote(Result<usize, quinn::WriteError>),
        /// The aged flag changed (`false`: the session dropped it, stop watching).
        Aged(bool),
    }
    let mut priority = lane_priority(lane);
    let mut watching = true;
    let mut pending: Option<(Vec<u8>, usize)> = None;
    loop {
        let wanted = if *aged.borrow() { AGED_PRIORITY } else { lane_priority(lane) };
        if wanted != priority && send.set_priority(wanted).is_ok() {
            priority = wanted;
        }
        // `write` is cancel-safe: a write that loses the race to a change of the aged flag
        // wrote nothing.
        let step = match &pending {
            Some((frame, written)) => tokio::select! {
                wrote = send.write(&frame[*written..]) => Step::Wrote(wrote),
                changed = aged.changed(), if watching => Step::Aged(changed.is_ok()),
            },
            None => tokio::select! {
                frame = queued.recv() => Step::Queued(frame),
                changed = aged.changed(), if watching => Step::Aged(changed.is_ok()),
            },
        };
        match step {
            Step::Queued(Some((first_seq, count))) => {
                let store = store.clone();
                let frame = tokio::task::spawn_blocking(move || batch_frame(&store, lane, first_seq, count))
                    .await
                    .unwrap_or_else(|e| Err(ReplicateError::Lost(format!("store read task: {e}"))));
                match frame {
                    Ok(frame) => pending = Some((frame, 0)),
                    Err(e) => {
                        let _ = inbox.send(Err(e));
                        return;
                    }
                }
            }
            Step::Queued(None) => {
                let _ = send.finish();
                return;
            }
            Step::Wrote(Ok(n)) => {
                if let Some((frame, written)) = &mut pending {
                    *written += n;
                    if *written == frame.len() {
                        pending = None;
                    }
                }
            }
            Step::Wrote(Err(e)) => {
                let lost = match e {
                    quinn::WriteError::ConnectionLost(e) => connection_closed(e),
                    e => ReplicateError::Lost(e.to_string()),
                };
                let _ = inbox.send(Err(lost));
                return;
            }
            Step::Aged(still) => watching = still,
        }
    }
}

/// Reads frames from a stream into the session's inbox until the stream ends.
async fn read_frames(
    mut recv: quinn::RecvStream,
    inbox: mpsc::UnboundedSender<Result<Message, ReplicateError>>,
) {
    let mut decoder = FrameDecoder::new(wire::FRAME_BYTES_MAX);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) => return,
            Err(e) => {
                let lost = match e {
                    quinn::ReadError::ConnectionLost(e) => connection_closed(e),
                    e => ReplicateError::Lost(e.to_string()),
                };
                let _ = inbox.send(Err(lost));
                return;
            }
        }
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    if inbox.send(Ok(msg)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = inbox.send(Err(e.into()));
                    return;
                }
            }
        }
    }
}

/// The replicator's client endpoints, made on first use: one per address family, so a
/// node that lists relays of both families keeps both sockets rather than making a new
/// one each time it turns to the other.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn slot(&mut self, remote: SocketAddr) -> &mut Option<quinn::Endpoint> {
        if remote.is_ipv6() { &mut self.v6 } else { &mut self.v4 }
    }

    fn for_remote(&mut self, remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let slot = self.slot(remote);
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let unspecified: IpAddr =
            if remote.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        // A node's one connection does not need the buffers a relay does: whatever the
        // kernel grants is fine here.
        let made = crate::daemon::client_endpoint(SocketAddr::new(unspecified, 0))?;
        Ok(slot.insert(made).clone())
    }

    fn forget(&mut self, remote: SocketAddr) {
        *self.slot(remote) = None;
    }
}

/// The error of a connection that ended, as the session reports it: the same whichever
/// of its tasks noticed first (a stream's read or write, or the connection itself).
fn connection_closed(e: quinn::ConnectionError) -> ReplicateError {
    if let quinn::ConnectionError::ApplicationClosed(close) = &e
        && close.error_code.into_inner() == u64::from(close::REFUSED)
    {
        return ReplicateError::Lost(format!("relay refused: {}", String::from_utf8_lossy(&close.reason)));
    }
    ReplicateError::Lost(e.to_string())
}
