//! A UDP proxy between real nodes and the relay that applies a [`RuleSet`] to every
//! datagram.
//!
//! QUIC runs over UDP, so a datagram proxy sees the whole conversation without taking part
//! in it: the nodes dial the proxy's address (`--relay <proxy>`; the relay certificate is
//! valid for `127.0.0.1`, so TLS does not notice), and the proxy forwards to the relay. It
//! has one socket facing the nodes and, per node-side peer address, one socket facing the
//! relay, so the relay sees one address per node endpoint, as it would behind NAT. A node
//! restarted on a new port gets a new relay-side socket.
//!
//! Each datagram is judged by the rules for its [`Direction`]: dropped, sent at once, or
//! queued for later (delay, jitter, hold, bandwidth cap) and sent by one scheduler task in
//! deadline order. The rules can change while traffic flows ([`Proxy::rules`]); a change
//! applies to the next datagram. Datagrams already queued keep their deadline.
//!
//! The proxy is a set of tokio tasks owned by [`Proxy`]; dropping it aborts them and closes
//! the sockets.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::rules::{Direction, Fate, RuleSet};

/// Largest datagram forwarded. QUIC datagrams stay far below it (quinn's default path MTU
/// is 1200–1452 bytes); a larger one is truncated by the OS and QUIC discards it.
pub const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Most datagrams waiting in the delay queue; beyond it new delayed datagrams are dropped,
/// so a long `hold` under heavy traffic cannot exhaust memory.
pub const DELAYED_DATAGRAMS_MAX: usize = 200_000;

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The node-facing socket could not be bound.
    #[error("cannot bind the proxy socket on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStats {
    /// Datagrams received from the sender.
    pub received: u64,
    /// Bytes received from the sender.
    pub bytes: u64,
    /// Datagrams dropped by a rule or a full delay queue.
    pub dropped: u64,
    /// Datagrams queued with a delay.
    pub delayed: u64,
    /// Extra copies sent.
    pub duplicated: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyStats {
    /// Node to relay.
    pub to_relay: DirectionStats,
    /// Relay to node.
    pub to_node: DirectionStats,
}

impl ProxyStats {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &ProxyStats) {
        for (a, b) in [(&mut self.to_relay, &other.to_relay), (&mut self.to_node, &other.to_node)] {
            a.received += b.received;
            a.bytes += b.bytes;
            a.dropped += b.dropped;
            a.delayed += b.delayed;
            a.duplicated += b.duplicated;
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
        }
    }
}

/// What the tasks share.
#[derive(Debug)]
struct Shared {
    rules: Mutex<RuleSet>,
    counters: [Counters; 2],
    delayed: mpsc::UnboundedSender<Delayed>,
    queued: AtomicU64,
}

/// A datagram waiting for its deadline.
#[derive(Debug)]
struct Delayed {
    at: Instant,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    relay: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds a node-facing socket on a free port of 127.0.0.1 and forwards to `relay`,
    /// with no rules yet; `seed` drives the rules' random choices.
    pub async fn start(relay: SocketAddr, seed: u64) -> Result<Proxy, ProxyError> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(ProxyError::Bind)?);
        let addr = front.local_addr().map_err(ProxyError::Bind)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            rules: Mutex::new(RuleSet::new(seed)),
            counters: [Counters::default(), Counters::default()],
            delayed: tx,
            queued: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(schedule(rx, shared.clone())),
            tokio::spawn(serve_front(front, relay, shared.clone())),
        ];
        Ok(Proxy { addr, relay, shared, tasks })
    }

    /// The address nodes dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// The rules, to change them; keep the guard short (every datagram takes it).
    pub fn rules(&self) -> MutexGuard<'_, RuleSet> {
        self.shared.rules()
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_relay: self.shared.counters[Direction::ToRelay as usize].snapshot(),
            to_node: self.shared.counters[Direction::ToNode as usize].snapshot(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    fn rules(&self) -> MutexGuard<'_, RuleSet> {
        // The rule set is consistent after every call, so a panic elsewhere while holding
        // the lock leaves nothing half-done.
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Judges one datagram and sends it (now or later) from `socket` to `to`.
    async fn forward(&self, dir: Direction, bytes: &[u8], socket: &Arc<UdpSocket>, to: SocketAddr) {
        let counters = &self.counters[dir as usize];
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let fate = self.rules().judge(dir, bytes.len(), now);
        let (delay, copies) = match fate {
            Fate::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Fate::Deliver { delay, copies } => (delay, copies),
        };
        counters.duplicated.fetch_add(u64::from(copies.saturating_sub(1)), Ordering::Relaxed);
        if delay.is_zero() {
            for _ in 0..copies {
                // A send error (the relay's port closed while it restarts) is a lost
                // datagram, which QUIC handles.
                let _ = socket.send_to(bytes, to).await;
            }
            return;
        }
        counters.delayed.fetch_add(1, Ordering::Relaxed);
        for copy in 0..copies {
            if self.queued.load(Ordering::Relaxed) as usize >= DELAYED_DATAGRAMS_MAX {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
            // A copy trails its original by a little, as a duplicating link would send it.
            let at = now + delay + Duration::from_micros(50 * u64::from(copy));
            let item = Delayed { at, socket: socket.clone(), to, bytes: bytes.to_vec() };
            if self.delayed.send(item).is_err() {
                return;
            }
        }
    }
}

/// Receives from the nodes, and starts one relay-side socket and reader per node address.
async fn serve_front(front: Arc<UdpSocket>, relay: SocketAddr, shared: Arc<Shared>) {
    let mut peers: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    // Dropping the set (when this task is aborted) aborts the readers.
    let mut readers = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let (len, peer) = match front.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "proxy receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let back = match peers.get(&peer) {
            Some(back) => back.clone(),
            None => match UdpSocket::bind("127.0.0.1:0").await {
                Ok(socket) => {
                    let socket = Arc::new(socket);
                    peers.insert(peer, socket.clone());
                    readers.spawn(serve_back(socket.clone(), relay, front.clone(), peer, shared.clone()));
                    socket
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy cannot bind a relay-side socket");
                    continue;
                }
            },
        };
        shared.forward(Direction::ToRelay, &buf[..len], &back, relay).await;
    }
}

/// Receives the relay's datagrams for one node address and forwards them to it.
async fn serve_back(
    back: Arc<UdpSocket>,
    relay: SocketAddr,
    front: Arc<UdpSocket>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        match back.recv_from(&mut buf).await {
            Ok((len, from)) if from == relay => {
                shared.forward(Direction::ToNode, &buf[..len], &front, peer).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "proxy receive from the relay failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Sends queued datagrams when their deadline comes, earliest first (ties in queue order).
async fn schedule(mut rx: mpsc::UnboundedReceiver<Delayed>, shared: Arc<Shared>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut items: BTreeMap<u64, Delayed> = BTreeMap::new();
    let mut next_id: u64 = 0;
    loop {
        let next_at = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            got = rx.recv() => {
                let Some(item) = got else { return };
                heap.push(Reverse((item.at, next_id)));
                items.insert(next_id, item);
                next_id += 1;
            }
            () = sleep_until(next_at), if next_at.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(item) = items.remove(&id) {
                        shared.queued.fetch_sub(1, Ordering::Relaxed);
                        let _ = item.socket.send_to(&item.bytes, item.to).await;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}
