//! The QUIC side of the relay: accept node connections, learn who they are from their
//! certificates, and drive one [`Receiver`] per connection against the store.
//!
//! Per connection: the first stream the node opens is the control stream, carrying its
//! Hello and the relay's Welcome or Refuse; every further stream carries one lane's
//! batches one way and that lane's Acks and Resyncs the other. Readers decode frames into
//! one channel, so the connection's task sees everything in order of arrival and owns the
//! state machine alone. Commits are queued to the store without waiting, which keeps
//! several batches in flight; their outcomes come back in commit order, and only then is
//! anything acknowledged.
//!
//! Protection: at most `connections_max` nodes are served. Up to [`BUSY_SLOTS`] more
//! connections complete their handshake only to be refused with
//! [`RefuseReason::Busy`] and a retry hint ([`busy_retry_after_ms`]); beyond those, the
//! attempt is refused before the handshake. Every node connection reads its streams
//! through one [`Throttle`] (`node_bytes_per_sec_max`), and the QUIC receive windows
//! ([`crate::tls`]) bound what a node can make the relay buffer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sync_protocol::wire::{FrameDecoder, Hello, close};

use crate::inventory::feed::InventoryFeed;
use sync_protocol::{
    DecodeError, Epoch, Lane, Message, NodeId, NodeIdentity, PerLane, ProtocolViolation, Receiver,
    ReceiverConfig, Refuse, RefuseReason,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep, sleep};
use tracing::Instrument;

use crate::metrics::NodeLabel;
use crate::store::{Append, Committed, Store, StoreError};
use crate::throttle::Throttle;
use crate::tls::peer_identity;

/// How long a node has to send its Hello after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted over `connections_max` only to be refused with a retry hint. Each
/// costs a TLS handshake and a little memory for at most [`BUSY_HELLO_TIMEOUT`] and
/// [`REFUSE_LINGER`]; 64 lets a crowd of returning nodes learn when to come back without
/// letting the crowd cost the relay much.
pub const BUSY_SLOTS: usize = 64;
/// How long a connection over the limit has, from its first packet, to complete its
/// handshake and send its Hello; then it is closed without an answer.
pub const BUSY_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest frame read from a connection over the limit. It only has to carry a Hello
/// (under 200 bytes), so the crowd in the busy slots cannot make the relay buffer
/// full-size frames.
pub const BUSY_FRAME_BYTES_MAX: u32 = 4 * 1024;
/// The retry hint per connection over the limit, see [`busy_retry_after_ms`].
pub const BUSY_RETRY_STEP_MS: u32 = 1_000;
/// How long a refused node has to read its Refuse and close before the relay closes.
pub const REFUSE_LINGER: Duration = Duration::from_secs(2);
/// Frames buffered between a connection's stream readers and its task; when full, the
/// readers stop reading and QUIC flow control holds the node back.
const INBOX_FRAMES: usize = 32;

/// What the relay knows about its live connections, for `/v1/nodes`.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<NodeId, (u64, quinn::Connection)>>,
    /// Welcomed connections now, for `/metrics`.
    pub gauge: Gauge,
    /// Connections closed, by reason, for `/metrics`.
    pub closed: Family<ReasonLabel, Counter>,
    /// Connection attempts refused, by reason, for `/metrics`: the refusal reasons, and
    /// `connection_limit` for attempts refused before the handshake.
    pub refusals: Family<ReasonLabel, Counter>,
    /// Time each node was held back by `node_bytes_per_sec_max`, for `/metrics`.
    pub throttled_seconds: Family<NodeLabel, Counter<f64, AtomicU64>>,
}

/// The `reason` label of [`Connections::closed`] and [`Connections::refusals`]: a
/// close-code class or a refusal reason, from a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: &'static str,
}

impl Connections {
    /// Whether `node_id` has a welcomed connection now.
    pub fn is_connected(&self, node_id: &NodeId) -> bool {
        self.lock().contains_key(node_id)
    }

    /// Registers a welcomed connection and closes the one it replaces, if any: a node
    /// that reconnects before its old connection timed out must not be served twice.
    fn register(&self, node_id: &NodeId, conn: &quinn::Connection) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = self.lock().insert(node_id.clone(), (id, conn.clone()));
        if replaced.is_none() {
            self.gauge.inc();
        }
        if let Some((_, old)) = replaced {
            tracing::info!(node = %node_id, "a newer connection of this node supersedes the old one");
            old.close(close::REFUSED.into(), b"superseded: this node connected again");
        }
        id
    }

    fn unregister(&self, node_id: &NodeId, id: u64) {
        let mut live = self.lock();
        if live.get(node_id).is_some_and(|(current, _)| *current == id) {
            live.remove(node_id);
            self.gauge.dec();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, (u64, quinn::Connection)>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything connections share.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The relay's name, region and limits.
    pub receiver: ReceiverConfig,
    /// Most bytes per second read from one node connection.
    pub node_bytes_per_sec_max: u64,
    /// Live connections.
    pub connections: Arc<Connections>,
    /// The inventory updates for nodes.
    pub inventory: InventoryFeed,
    /// Everything `/metrics` shows.
    pub metrics: prometheus_client::registry::Registry,
}

/// Accepts connections until `shutdown` turns true, then closes every connection with
/// [`close::SHUTDOWN`] and waits (briefly) for the close to reach the nodes.
///
/// Serves at most `connections_max` at once; over that, up to [`BUSY_SLOTS`] more are
/// refused with a retry hint, and the rest before their handshake.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    connections_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(connections_max));
    let busy_slots = Arc::new(Semaphore::new(BUSY_SLOTS));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = stopped(&mut shutdown) => break,
        };
        let Some(incoming) = incoming else { break };
        let (slot, busy) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, None),
            Err(_) => match busy_slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let over = BUSY_SLOTS - busy_slots.available_permits();
                    (slot, Some(busy_retry_after_ms(over)))
                }
                Err(_) => {
                    tracing::warn!(remote = %incoming.remote_address(), connections_max,
                        "connection limit reached and every busy slot taken; refusing without a hint");
                    let label = ReasonLabel { reason: "connection_limit" };
                    shared.connections.refusals.get_or_create(&label).inc();
                    incoming.refuse();
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(incoming, busy, shared, shutdown).await;
            drop(slot);
        });
    }
    endpoint.close(close::SHUTDOWN.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The retry hint for a connection refused while `over` connections (this one included)
/// are being refused for the limit at once: [`BUSY_RETRY_STEP_MS`] for each, so from 1 s
/// for a lone latecomer to 64 s with every busy slot taken. The node waits between the
/// hint and twice the hint (`Sender::handle_disconnected`), so the crowd that filled the
/// busy slots comes back spread over about two minutes rather than at the next second.
pub fn busy_retry_after_ms(over: usize) -> u32 {
    let over = over.clamp(1, BUSY_SLOTS) as u32;
    BUSY_RETRY_STEP_MS.saturating_mul(over)
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Why a connection ended, and the close code the node gets.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("refused ({}): {}", .0.reason.as_str(), .0.message)]
    Refused(Refuse),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol violation: {0}")]
    Violation(#[from] ProtocolViolation),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("relay shutting down")]
    Shutdown,
}

impl ConnError {
    /// The `reason` label of this close on `/metrics`.
    fn label(&self) -> &'static str {
        match self {
            ConnError::HelloTimeout(_) => "hello_timeout",
            ConnError::Refused(refuse) => refuse.reason.as_str(),
            ConnError::Decode(_) => "decode_error",
            ConnError::Violation(_) => "protocol_violation",
            ConnError::Store(_) => "store_failed",
            ConnError::Lost(_) => "lost",
            ConnError::Shutdown => "shutdown",
        }
    }

    fn close_code(&self) -> u32 {
        match self {
            ConnError::Refused(_) => close::REFUSED,
            ConnError::Decode(_) => close::DECODE_ERROR,
            ConnError::HelloTimeout(_) | ConnError::Violation(_) => close::PROTOCOL_VIOLATION,
            ConnError::Store(_) => close::STORE_FAILED,
            ConnError::Lost(_) | ConnError::Shutdown => close::SHUTDOWN,
        }
    }
}

/// Serves one connection; with `busy`, only to refuse it with that retry hint.
async fn serve_connection(
    incoming: quinn::Incoming,
    busy: Option<u32>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    // A connection over the limit gets a short, fixed time for everything up to its Hello.
    let busy_deadline = Instant::now() + BUSY_HELLO_TIMEOUT;
    let handshake = match busy {
        Some(_) => tokio::time::timeout_at(busy_deadline, incoming).await,
        None => Ok(incoming.await),
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // Wrong CA, expired or revoked-by-rotation certificates end here.
            tracing::warn!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "no handshake within {BUSY_HELLO_TIMEOUT:?} while over the limit");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(identity) => identity,
        Err(reason) => {
            tracing::warn!(%remote, %reason, "certificate names no node; closing");
            conn.close(close::REFUSED.into(), format!("identity_mismatch: {reason}").as_bytes());
            return;
        }
    };
    let span = tracing::info_span!("conn", node = %identity, %remote);
    async move {
        let hello_by = match busy {
            Some(retry_after_ms) => {
                tracing::debug!(retry_after_ms, "connected over the limit");
                (busy_deadline, BUSY_HELLO_TIMEOUT)
            }
            None => {
                tracing::info!("connected");
                (Instant::now() + HELLO_TIMEOUT, HELLO_TIMEOUT)
            }
        };
        let node = NodeLabel { node_id: identity.node_id.to_string() };
        let throttled = shared.connections.throttled_seconds.get_or_create(&node).clone();
        let throttle = Arc::new(Throttle::new(shared.node_bytes_per_sec_max, throttled));
        let mut session = Session::new(conn.clone(), identity, shared.clone(), remote, throttle, busy);
        let result = session.run(hello_by, shutdown).await;
        shared.connections.unregister(&session.identity.node_id, session.registered);
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        match &error {
            ConnError::Lost(_) => tracing::info!(%error, "disconnected"),
            ConnError::Shutdown => {}
            // Load shedding as designed, not a fault of the node.
            ConnError::Refused(refuse) if matches!(refuse.reason, RefuseReason::Busy { .. }) => {
                tracing::info!(reason = refuse.reason.as_str(), "{error}");
            }
            ConnError::Refused(refuse) => tracing::warn!(reason = refuse.reason.as_str(), "{error}"),
            _ => tracing::warn!(%error, "closing the connection"),
        }
        let label = ReasonLabel { reason: error.label() };
        shared.connections.closed.get_or_create(&label).inc();
        if let ConnError::Refused(_) = &error {
            shared.connections.refusals.get_or_create(&label).inc();
        }
        let reason = error.to_string();
        conn.close(error.close_code().into(), &reason.as_bytes()[..reason.len().min(512)]);
    }
    .instrument(span)
    .await;
}

enum Inbound {
    /// The node opened stream `index`; `send` is its half for our answers.
    Opened { index: usize, send: quinn::SendStream },
    /// A frame arrived on stream `index`.
    Frame { index: usize, msg: Message },
    /// A stream failed: a bad frame, or the connection went away.
    Failed(ConnError),
}

struct Session {
    conn: quinn::Connection,
    identity: NodeIdentity,
    shared: Arc<Shared>,
    receiver: Receiver,
    /// The read budget all of the connection's streams share.
    throttle: Arc<Throttle>,
    /// The retry hint, when the connection is over the limit and only to be refused.
    busy: Option<u32>,
    /// Send halves by stream index; 0 is control.
    streams: Vec<Option<quinn::SendStream>>,
    /// The stream each lane's batches arrive on, where its Acks go back.
    lanes: PerLane<Option<usize>>,
    registered: u64,
    /// Whether this relay's store had heard of the node before this connection.
    known: bool,
    remote: SocketAddr,
}

impl Session {
    fn new(
        conn: quinn::Connection,
        identity: NodeIdentity,
        shared: Arc<Shared>,
        remote: SocketAddr,
        throttle: Arc<Throttle>,
        busy: Option<u32>,
    ) -> Self {
        let receiver = Receiver::new(shared.receiver.clone(), identity.clone());
        Session {
            conn,
            identity,
            shared,
            receiver,
            throttle,
            busy,
            streams: Vec::new(),
            lanes: PerLane::default(),
            registered: u64::MAX,
            known: false,
            remote,
        }
    }

    /// Serves the connection; `hello_by` is when the Hello must have arrived, and the
    /// timeout that deadline stands for.
    async fn run(
        &mut self,
        hello_by: (Instant, Duration),
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnError> {
        let (inbox_tx, mut inbox) = mpsc::channel(INBOX_FRAMES);
        let frame_bytes_max = match self.busy {
            Some(_) => BUSY_FRAME_BYTES_MAX,
            None => self.shared.receiver.limits.frame_bytes_max,
        };
        tokio::spawn(accept_streams(self.conn.clone(), frame_bytes_max, self.throttle.clone(), inbox_tx));
        let (deadline, timeout) = hello_by;
        let hello = tokio::time::timeout_at(deadline, self.read_hello(&mut inbox))
            .await
            .map_err(|_| ConnError::HelloTimeout(timeout))??;
        let epoch = self.answer_hello(hello).await?;
        let (replies, mut committed) = mpsc::unbounded_channel::<Committed>();
        // The node has merged the relay's inventory through this version. A store that
        // has never heard of the node (it lost its data since, or the node comes from
        // another relay) did not issue that version, nor did one whose offsets have not
        // reached it: start over.
        let mut inventory_sent = self.receiver.node_inventory_version();
        if !self.known || inventory_sent > *self.shared.store.next_offset().borrow() {
            inventory_sent = 0;
        }
        let mut published = self.shared.inventory.published();
        self.push_inventory(&mut published, &mut inventory_sent).await?;
        // This connection's place in the turns of every later push (first, should the
        // system have no randomness to give).
        let place: f64 = StdRng::try_from_os_rng().map_or(0.0, |mut rng| rng.random());
        let mut turn: Option<Pin<Box<Sleep>>> = None;
        loop {
            tokio::select! {
                inbound = inbox.recv() => {
                    let inbound = inbound.ok_or_else(|| ConnError::Lost("streams ended".into()))?;
                    self.on_inbound(inbound, epoch, &replies).await?;
                }
                done = committed.recv() => {
                    // `replies` is held here, so the channel never ends while we run.
                    let Some(done) = done else { continue };
                    done.result?;
                    self.receiver.handle_committed(done.lane, done.through);
                }
                changed = published.changed() => {
                    if changed.is_err() {
                        return Err(ConnError::Store(StoreError::Closed));
                    }
                    // A turn already due stays: it pushes the newest version.
                    if turn.is_none() {
                        let connections = u64::try_from(self.shared.connections.gauge.get()).unwrap_or(0);
                        turn = Some(Box::pin(sleep(self.shared.inventory.turn(place, connections))));
                    }
                }
                () = turn_of(&mut turn) => {
                    turn = None;
                    self.push_inventory(&mut published, &mut inventory_sent).await?;
                }
                e = self.conn.closed() => return Err(ConnError::Lost(e.to_string())),
                () = stopped(&mut shutdown) => return Err(ConnError::Shutdown),
            }
            self.flush().await?;
        }
    }

    /// Waits for the Hello on the control stream.
    async fn read_hello(&mut self, inbox: &mut mpsc::Receiver<Inbound>) -> Result<Hello, ConnError> {
        loop {
            match inbox.recv().await.ok_or_else(|| ConnError::Lost("closed before hello".into()))? {
                Inbound::Opened { index, send } => self.opened(index, send),
                Inbound::Frame { index: 0, msg: Message::Hello(hello) } => return Ok(hello),
                Inbound::Frame { .. } => return Err(ProtocolViolation::Unexpected("expected hello").into()),
                Inbound::Failed(error) => return Err(error),
            }
        }
    }

    /// Answers the Hello, and registers the connection if welcomed. A connection over the
    /// limit is refused as busy before anything else is looked at.
    async fn answer_hello(&mut self, hello: Hello) -> Result<Epoch, ConnError> {
        if let Some(retry_after_ms) = self.busy {
            let refuse = self.receiver.refuse_busy(retry_after_ms);
            return Err(self.refused(refuse).await);
        }
        let stored = self.shared.store.watermarks(&self.identity.node_id, hello.epoch)?;
        self.known = self.shared.store.knows(&self.identity.node_id)?;
        let epoch = hello.epoch;
        match self.receiver.handle_hello(hello, stored) {
            Ok(epoch) => {
                self.flush().await?;
                self.registered = self.shared.connections.register(&self.identity.node_id, &self.conn);
                self.shared.store.seen(self.identity.clone()).await?;
                tracing::info!(%epoch, critical = stored.get(Lane::Critical), standard = stored.get(Lane::Standard),
                    bulk = stored.get(Lane::Bulk), "welcomed");
                Ok(epoch)
            }
            Err(refuse) => {
                tracing::debug!(%epoch, remote = %self.remote, "refused hello");
                Err(self.refused(refuse).await)
            }
        }
    }

    /// Sends the queued Refuse so the node can log why, and gives it a moment to read it
    /// and close; the caller closes with [`close::REFUSED`] after.
    async fn refused(&mut self, refuse: Refuse) -> ConnError {
        let _ = self.flush().await;
        if let Some(Some(control)) = self.streams.first_mut() {
            let _ = control.finish();
        }
        let _ = tokio::time::timeout(REFUSE_LINGER, self.conn.closed()).await;
        ConnError::Refused(refuse)
    }

    async fn on_inbound(
        &mut self,
        inbound: Inbound,
        epoch: Epoch,
        replies: &mpsc::UnboundedSender<Committed>,
    ) -> Result<(), ConnError> {
        match inbound {
            Inbound::Opened { index, send } => self.opened(index, send),
            Inbound::Frame { index, msg: Message::Batch(batch) } => {
                let lane = batch.lane;
                match *self.lanes.get(lane) {
                    None => *self.lanes.get_mut(lane) = Some(index),
                    Some(known) if known != index => {
                        // A lane moved to a new stream (the node reopened it): answer there.
                        tracing::debug!(
                            lane = lane.as_str(),
                            from = known,
                            to = index,
                            "lane stream replaced"
                        );
                        *self.lanes.get_mut(lane) = Some(index);
                    }
                    Some(_) => {}
                }
                if let Some(accepted) = self.receiver.handle_batch(batch)? {
                    tracing::trace!(lane = lane.as_str(), first = %accepted.first_seq, n = accepted.records.len(), "batch");
                    let batch = Append {
                        node: self.identity.clone(),
                        epoch,
                        lane: accepted.lane,
                        first_seq: accepted.first_seq,
                        records: accepted.records,
                    };
                    self.shared.store.append(batch, replies.clone()).await?;
                }
            }
            Inbound::Frame { index: 0, msg: Message::Repair(batch) } => {
                let limit = self.shared.receiver.limits.batch_events_max as usize;
                // Its seqs must exist too: the store counts on `first_seq + len - 1` fitting.
                if batch.events.is_empty() || batch.events.len() > limit || batch.last_seq().is_none() {
                    let what = "a repair of no records, over the batch limit or past the last seq";
                    return Err(ProtocolViolation::Unexpected(what).into());
                }
                let records = Append {
                    node: self.identity.clone(),
                    epoch,
                    lane: batch.lane,
                    first_seq: batch.first_seq,
                    records: batch.events,
                };
                let repaired = self.shared.store.repair(records).await?;
                let Some(Some(control)) = self.streams.first_mut() else {
                    return Err(ConnError::Lost("control stream is gone".into()));
                };
                let frame = Message::Repaired(repaired).encode();
                control.write_all(&frame).await.map_err(|e| ConnError::Lost(e.to_string()))?;
            }
            Inbound::Frame { .. } => {
                return Err(ProtocolViolation::Unexpected("only batches and repairs after hello").into());
            }
            Inbound::Failed(error) => return Err(error),
        }
        Ok(())
    }

    /// Sends the node every inventory key that changed after `sent` up to the published
    /// version, and moves `sent` there (see [`crate::inventory::feed`]).
    async fn push_inventory(
        &mut self,
        published: &mut watch::Receiver<u64>,
        sent: &mut u64,
    ) -> Result<(), ConnError> {
        // The version first: the state read after it is at least that new, so the node
        // never records a version whose changes it did not get.
        let current = *published.borrow_and_update();
        if current <= *sent {
            return Ok(());
        }
        let frames = self.shared.inventory.frames(*sent, current);
        let Some(Some(control)) = self.streams.first_mut() else {
            return Err(ConnError::Lost("control stream is gone".into()));
        };
        for frame in frames.iter() {
            control.write_all(frame).await.map_err(|e| ConnError::Lost(e.to_string()))?;
        }
        if !frames.is_empty() {
            tracing::debug!(from = *sent, through = current, messages = frames.len(), "inventory pushed");
        }
        *sent = current;
        Ok(())
    }

    fn opened(&mut self, index: usize, send: quinn::SendStream) {
        if self.streams.len() <= index {
            self.streams.resize_with(index + 1, || None);
        }
        self.streams[index] = Some(send);
    }

    /// Writes what the receiver wants sent: Welcome and Refuse on the control stream,
    /// Acks and Resyncs on their lane's stream.
    async fn flush(&mut self) -> Result<(), ConnError> {
        while let Some(msg) = self.receiver.poll_transmit() {
            let index = match &msg {
                Message::Ack(ack) => self.lanes.get(ack.lane).unwrap_or(0),
                Message::Resync(resync) => self.lanes.get(resync.lane).unwrap_or(0),
                _ => 0,
            };
            let Some(Some(stream)) = self.streams.get_mut(index) else {
                return Err(ConnError::Lost(format!("stream {index} is gone")));
            };
            stream.write_all(&msg.encode()).await.map_err(|e| ConnError::Lost(e.to_string()))?;
        }
        Ok(())
    }
}

/// Waits for the connection's turn to push the inventory, or for ever without one.
async fn turn_of(turn: &mut Option<Pin<Box<Sleep>>>) {
    match turn {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Accepts the node's streams for the life of the connection, numbering them in order:
/// 0 is the control stream.
async fn accept_streams(
    conn: quinn::Connection,
    frame_bytes_max: u32,
    throttle: Arc<Throttle>,
    inbox: mpsc::Sender<Inbound>,
) {
    for index in 0.. {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(e) => {
                let _ = inbox.send(Inbound::Failed(ConnError::Lost(e.to_string()))).await;
                return;
            }
        };
        if inbox.send(Inbound::Opened { index, send }).await.is_err() {
            return;
        }
        let decoder = FrameDecoder::new(frame_bytes_max as usize);
        let span = tracing::debug_span!("stream", index);
        tokio::spawn(read_stream(recv, decoder, index, throttle.clone(), inbox.clone()).instrument(span));
    }
}

/// Decodes one stream's frames into the connection's inbox until it ends or fails. Each
/// read waits for the connection's [`Throttle`] first: what is not read stays with the
/// node, held back by QUIC flow control.
async fn read_stream(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    index: usize,
    throttle: Arc<Throttle>,
    inbox: mpsc::Sender<Inbound>,
) {
    let error = 'read: loop {
        let allowed = throttle.grant().await;
        let chunk = match recv.read_chunk(allowed, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => break 'read ConnError::Lost(e.to_string()),
        };
        throttle.spend(chunk.bytes.len());
        decoder.push(&chunk.bytes);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    if inbox.send(Inbound::Frame { index, msg }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => continue 'read,
                Err(e) => break 'read ConnError::Decode(e),
            }
        }
    };
    let _ = inbox.send(Inbound::Failed(error)).await;
}

#[cfg(test)]
mod tests;
