//! `outpost-relay`: the regional relay. Nodes connect over QUIC with mutual TLS; the
//! relay stores each of their events exactly once, in order, in a redb log, acknowledges
//! only what is committed, and serves the log to consumers over HTTP.
//!
//! Boundaries: protocol decisions live in [`sync_protocol::Receiver`]; this crate is the
//! shell that owns the QUIC socket ([`server`]), the disk ([`store`]), the consumers'
//! API ([`http`]) and the deployment PKI ([`pki`]).
//!
//! Invariants, and where they are enforced:
//! - A node is who its certificate says, and only nodes of this relay's region are
//!   served: [`tls::peer_identity`] and the receiver's Hello check.
//! - An Ack never covers an uncommitted event: the session calls
//!   `Receiver::handle_committed` only on the store's reply after the fsync
//!   ([`server`]).
//! - Each `(node_id, epoch, lane, seq)` is in the log at most once, in seq order, without
//!   gaps: the receiver skips overlaps and answers gaps with Resync, and the store checks
//!   again inside the transaction ([`store`]).

pub mod config;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod page;
pub mod pki;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;

use std::sync::Arc;

use rand::SeedableRng;

use sync_protocol::wire::Limits;
use sync_protocol::{ReceiverConfig, Region};
use tokio::net::TcpListener;
use tokio::sync::watch;

use node::daemon::{self, ConfigError};

use crate::config::Config;
use crate::inventory::feed::{INVENTORY_PUSH_INTERVAL, InventoryFeed};
use crate::metrics::NodeLevels;
use crate::server::{Connections, Shared};
use crate::store::Store;

pub use node::daemon::DaemonError as RelayError;

/// Runs the relay on a bound HTTP listener until `shutdown` resolves, then stops
/// gracefully: connections close with a reason and the commits in flight finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let creds = tls::load(&config.ca, &config.cert, &config.key)?;
    let region: Region = match (config.region, &creds.identity) {
        (Some(region), _) => region,
        (None, Some(identity)) => identity.region.clone(),
        (None, None) => return Err(ConfigError::Missing("region").into()),
    };
    let name = config
        .name
        .or_else(|| creds.identity.as_ref().map(|i| i.node_id.to_string()))
        .unwrap_or_else(|| "relay".to_owned());
    let dir = config.data_dir.display().to_string();
    let store_err = |reason: String| RelayError::Store { dir: dir.clone(), reason };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let store = Store::open(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let reset_key =
        reset_secret(&config.data_dir).map_err(|e| store_err(format!("{RESET_KEY_FILE}: {e}")))?;
    let bind_err = |source| RelayError::Bind { what: "quic", addr: config.quic, source };
    let (socket, granted) = daemon::udp_socket(config.quic).map_err(bind_err)?;
    if granted < daemon::UDP_BUFFER_BYTES {
        tracing::warn!(
            asked = daemon::UDP_BUFFER_BYTES,
            granted,
            "the QUIC socket's receive buffer is smaller than asked, so under the load of many \
             nodes datagrams may be dropped; raise net.core.rmem_max and net.core.wmem_max to \
             at least {} (README, \"Under systemd\")",
            daemon::UDP_BUFFER_BYTES
        );
    }
    let endpoint = quinn::Endpoint::new(
        endpoint_config(&reset_key, &name),
        Some(creds.server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)?;
    let log_next = *store.next_offset().borrow();
    tracing::info!(
        relay = %name, %region, quic = %config.quic, http = ?listener.local_addr().ok(),
        data_dir = %dir, log_next, connections_max = config.connections_max,
        node_bytes_per_sec_max = config.node_bytes_per_sec_max, "relay started"
    );

    let receiver = ReceiverConfig { relay_id: name, region, limits: Limits::default() };
    let connections = Arc::new(Connections::default());
    let mut metrics = prometheus_client::registry::Registry::with_prefix("outpost_relay");
    store.stats().register(&mut metrics);
    metrics.register("connections", "Node connections welcomed and open", connections.gauge.clone());
    metrics.register(
        "connections_closed",
        "Node connections closed, by reason (refusals, bad frames, losses, shutdown)",
        connections.closed.clone(),
    );
    metrics.register(
        "refusals",
        "Node connection attempts refused, by reason (busy with a retry hint, connection_limit \
         before the handshake, or a refused hello)",
        connections.refusals.clone(),
    );
    metrics.register_with_unit(
        "node_throttled",
        "Time the relay held each node back to node_bytes_per_sec_max",
        prometheus_client::registry::Unit::Seconds,
        connections.throttled_seconds.clone(),
    );
    metrics
        .register_collector(Box::new(NodeLevels { store: store.clone(), connections: connections.clone() }));
    let shared = Arc::new(Shared {
        store: store.clone(),
        receiver,
        node_bytes_per_sec_max: config.node_bytes_per_sec_max,
        connections,
        metrics,
        inventory: InventoryFeed::start(store.clone(), INVENTORY_PUSH_INTERVAL),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let quic = tokio::spawn(server::serve(endpoint, shared.clone(), config.connections_max, stop_rx.clone()));
    let served = daemon::serve_http_until(listener, http::router(shared), shutdown, &stop_tx).await;
    let _ = quic.await;
    store.close().await;
    tracing::info!("relay stopped");
    served
}

/// File in the data directory holding the secret of the QUIC endpoint's keys: the one
/// that signs stateless resets and the one that signs connection ids.
pub const RESET_KEY_FILE: &str = "quic-reset.key";

/// The QUIC endpoint's settings from the secret in [`RESET_KEY_FILE`], so that they
/// survive a restart: a restarted relay then answers the packets of connections it no
/// longer knows with a stateless reset the node believes, and the node dials again at
/// once instead of waiting out its idle timeout (12 s).
///
/// Two keys come from the secret. The reset key signs the resets. The connection-id key
/// signs the ids the relay gives its connections, by which it tells an id of its own
/// from noise: with quinn's default, a random key per process, a restarted relay took
/// the ids of its connections from before for noise and dropped their packets without
/// a reset, and a node that had sent during the outage redialled only after its idle
/// timeout. The relay's `name` goes into the connection-id key, so that a relay given a
/// copy of another's data directory does not take that relay's ids for its own and
/// answer them with resets that end its connections.
///
/// Resets may go out every millisecond (quinn's default is one per 20 ms for the whole
/// endpoint, which would leave most of a thousand nodes to their idle timeout after a
/// restart). A reset is always shorter than the packet that called for it, so this
/// amplifies nothing.
fn endpoint_config(secret: &[u8], name: &str) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let label = format!("outpost quic connection ids of relay {name}");
    let cid_key = ring::hmac::sign(&reset_key, label.as_bytes());
    let mut cid_key_bytes = [0u8; 8];
    cid_key_bytes.copy_from_slice(&cid_key.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key_bytes);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config.min_reset_interval(std::time::Duration::from_millis(1));
    config
}

/// The endpoint's secret in the data directory: created (random, 64 bytes, mode 0600) if
/// missing.
fn reset_secret(data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(RESET_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 64 => bytes,
        Ok(bytes) => {
            return Err(std::io::Error::other(format!("expected 64 bytes, found {}", bytes.len())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = vec![0u8; 64];
            rand::RngCore::fill_bytes(&mut rand::rngs::StdRng::from_os_rng(), &mut bytes);
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            bytes
        }
        Err(e) => return Err(e),
    };
    Ok(bytes)
}
