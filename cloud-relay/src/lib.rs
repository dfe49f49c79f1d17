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
pub mod pki;
pub mod server;
pub mod store;
pub mod tls;

use std::sync::Arc;

use sync_protocol::wire::Limits;
use sync_protocol::{ReceiverConfig, Region};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::server::{Connections, Shared};
use crate::store::Store;

/// A failure that stops the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Neither `--region` nor the relay certificate names a region.
    #[error(
        "no region: pass --region, or use a relay certificate from `outpost-relay pki relay`, \
         whose outpost://<region>/<name> URI names it"
    )]
    NoRegion,
    /// The data directory or the store could not be opened.
    #[error("opening the store in {dir}: {reason}")]
    Store {
        /// The data directory.
        dir: String,
        /// The cause.
        reason: String,
    },
    /// The QUIC socket could not be bound.
    #[error("binding quic to {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(std::io::Error),
}

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
        (None, None) => return Err(RelayError::NoRegion),
    };
    let name = config
        .name
        .or_else(|| creds.identity.as_ref().map(|i| i.node_id.to_string()))
        .unwrap_or_else(|| "relay".to_owned());
    let dir = config.data_dir.display().to_string();
    let store_err = |reason: String| RelayError::Store { dir: dir.clone(), reason };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let store = Store::open(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let endpoint = quinn::Endpoint::server(creds.server_config, config.quic)
        .map_err(|source| RelayError::Bind { addr: config.quic, source })?;
    let log_next = *store.next_offset().borrow();
    tracing::info!(
        relay = %name, %region, quic = %config.quic, http = ?listener.local_addr().ok(),
        data_dir = %dir, log_next, "relay started"
    );

    let receiver = ReceiverConfig { relay_id: name, region, limits: Limits::default() };
    let shared = Arc::new(Shared { store: store.clone(), receiver, connections: Connections::default() });
    let (stop_tx, stop_rx) = watch::channel(false);
    let quic = tokio::spawn(server::serve(endpoint, shared.clone(), config.connections_max, stop_rx.clone()));
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(listener, http::router(shared))
        .with_graceful_shutdown(async move { server::stopped(&mut http_stop).await })
        .into_future();
    let http = tokio::spawn(http);
    shutdown.await;
    tracing::info!("shutting down: closing connections, finishing commits");
    let _ = stop_tx.send(true);
    let _ = quic.await;
    let http_result = http.await;
    store.close().await;
    tracing::info!("relay stopped");
    match http_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RelayError::Http(e)),
        Err(e) => Err(RelayError::Http(std::io::Error::other(e))),
    }
}
