//! Plumbing that both Outpost daemons share, `outpost-node` and `outpost-relay` (which
//! depends on this crate for it): logging, the shutdown signal, the start-up sequence of
//! `run`, config files, PEM files and QUIC timeouts. Nothing here knows about events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// QUIC keep-alive: well under the idle timeout, so an idle but healthy link stays up.
pub const KEEP_ALIVE: Duration = Duration::from_secs(4);
/// QUIC idle timeout: how long a silent WAN takes to be declared down (PROTOCOL.md asks
/// for 10–15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12);

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}

/// Starts a runtime, binds the HTTP API to `http` and runs `daemon` on it until
/// SIGTERM or SIGINT; the `run` subcommand of both binaries.
pub fn serve<F, E>(http: SocketAddr, daemon: impl FnOnce(TcpListener) -> F) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener =
            TcpListener::bind(http).await.with_context(|| format!("binding the http api to {http}"))?;
        daemon(listener).await?;
        Ok(())
    })
}

/// A configuration that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file is unreadable or not valid TOML for these settings.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required setting has no value.
    #[error("no {0} given: pass --{0} or set it in the config file")]
    Missing(&'static str),
    /// A setting has a value out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a TOML config file into the daemon's settings, or `T::default()` without one.
pub fn read_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else { return Ok(T::default()) };
    let file_err = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| file_err(e.to_string()))
}

/// The certificate or key files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate carries no usable `outpost://<region>/<name>` URI.
    #[error("certificate {path} names no node: {reason}; issue it with `outpost-relay pki`")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match, a bad CA).
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The certificates of a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate in file".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem { path: path.to_owned(), reason: e.to_string() })
}

/// A root store of the deployment CA's certificates.
pub fn read_roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Config(format!("ca {}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// QUIC transport settings both ends share: the idle timeout, and keep-alives on the
/// side that must keep the path open (the node, behind NAT).
pub fn transport(keep_alive: Option<Duration>) -> Result<quinn::TransportConfig, TlsError> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(keep_alive);
    let idle = quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| TlsError::Config(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    Ok(transport)
}

/// Kernel receive and send buffer asked for each QUIC socket. The relay's one socket
/// carries every node's datagrams: at the kernel's default (208 KiB) a thousand nodes
/// overflowed it whenever the relay was slow to read for a moment (`fan-in`: 17% of
/// datagrams dropped), and QUIC's loss recovery then backed off for seconds, long
/// enough for some connections to time out. The kernel caps the size at
/// `net.core.rmem_max` and `net.core.wmem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` for a QUIC endpoint, with buffers of
/// [`UDP_BUFFER_BYTES`] or what the kernel allows, and, for IPv6, dual-stack where the
/// system lets it. Also returns the receive buffer the kernel granted, as Linux reports
/// it (twice the size it set aside, the other half counting its overhead), for a
/// server to warn about.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort, as the default is: some systems allow IPv6 only.
        let _ = socket.set_only_v6(false);
    }
    // Asked for, not required: the kernel caps both sizes, and the defaults still work.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    let granted = socket.recv_buffer_size().unwrap_or(0);
    socket.bind(&addr.into())?;
    Ok((socket.into(), granted))
}

/// A QUIC client endpoint on a socket of [`udp_socket`] bound to `addr`, whatever
/// buffers the kernel grants.
pub fn client_endpoint(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let (socket, _) = udp_socket(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// A failure that stops a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration cannot be run.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory or the store in it could not be opened.
    #[error("opening the store in {dir}: {reason}")]
    Store {
        /// The data directory.
        dir: String,
        /// The cause.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("binding {what} to {addr}: {source}")]
    Bind {
        /// What listens there (`quic`, `http`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(std::io::Error),
}

/// Serves `app` on `listener` until `shutdown` resolves, then turns `stop` true so that
/// the daemon's other tasks wind down, and lets the requests in flight finish.
pub async fn serve_http_until(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    stop: &watch::Sender<bool>,
) -> Result<(), DaemonError> {
    let mut stopped = stop.subscribe();
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let served = tokio::spawn(served.into_future());
    shutdown.await;
    tracing::info!("shutting down: finishing what is in flight");
    let _ = stop.send(true);
    match served.await {
        Ok(result) => result.map_err(DaemonError::Http),
        Err(e) => Err(DaemonError::Http(std::io::Error::other(e))),
    }
}

/// The arguments of a daemon's `run`: an optional config file and the settings, each of
/// which may also come from that file.
#[derive(Debug, clap::Args)]
pub struct RunArgs<S: clap::Args> {
    /// TOML config file with any of the settings below.
    #[arg(long, env = "OUTPOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings given as flags or environment variables.
    #[command(flatten)]
    pub settings: S,
}

/// The answer to `GET /metrics`: `registry` in the OpenMetrics text format Prometheus
/// scrapes, or a 500 with a JSON error if it cannot be encoded.
pub fn metrics_response(registry: &prometheus_client::registry::Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({"error": "metrics", "message": format!("encoding metrics: {e}")})),
        )
            .into_response(),
    }
}
