//! TLS for the relay: its own identity from its certificate, and the QUIC server
//! configuration that demands a client certificate issued by the deployment CA.
//!
//! rustls verifies the chain, the validity period and the client-auth usage; a node
//! that fails any of it never reaches the protocol. Who the node is comes from its
//! verified certificate alone ([`peer_identity`]), never from what it says in its Hello.

use std::path::Path;
use std::sync::Arc;

use node::daemon::{read_certs, read_key, read_roots, transport};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use sync_protocol::NodeIdentity;

pub use node::daemon::TlsError;

/// Streams a node may open: control plus one per lane, with room for a reconnecting
/// lane stream.
pub const STREAMS_MAX: u32 = 8;
/// Bytes a node may send on one stream ahead of what the relay has read. 1 MiB keeps a
/// lane moving at 10 MiB/s over a 100 ms WAN (quinn's default is 1.25 MB) and at the
/// `drain` benchmark's 14 MB/s over loopback with tens of milliseconds to spare; a frame
/// larger than the window is simply read in several parts.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 1024 * 1024;
/// Bytes a node may send on all its streams together ahead of what the relay has read:
/// every lane stream at its full window with room for the control stream, and the most
/// QUIC buffers for one node whatever it opens. quinn's default is unlimited.
pub const RECEIVE_WINDOW_BYTES: u32 = 4 * STREAM_RECEIVE_WINDOW_BYTES;
/// Connection attempts quinn holds until the accept loop takes them. The loop answers each
/// at once, so only a flood of first packets fills this; quinn refuses the rest itself.
/// quinn's default is 65,536.
pub const INCOMING_MAX: usize = 1024;
/// Bytes of early packets quinn buffers for one connection attempt before it is accepted:
/// a handshake with a client certificate chain needs a few KiB. quinn's default is 10 MiB.
pub const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// The same for all connection attempts together. quinn's default is 100 MiB.
pub const INCOMING_BUFFER_TOTAL_BYTES: u64 = 16 * 1024 * 1024;

/// The relay's credentials as loaded from disk.
pub struct Credentials {
    /// What the relay certificate's `outpost://<region>/<name>` URI says, if it has one.
    pub identity: Option<NodeIdentity>,
    /// The quinn server configuration.
    pub server_config: quinn::ServerConfig,
}

/// Loads the CA, the relay certificate and its key, and builds the server configuration.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let identity = chain.first().and_then(|leaf| sync_protocol::cert::identity_of(leaf.as_ref()).ok());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(format!("relay certificate and key: {e}")))?;
    tls.alpn_protocols = vec![sync_protocol::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server_config
        .max_incoming(INCOMING_MAX)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    // Keep-alives are the node's job: it is the side behind NAT.
    let mut transport = transport(None)?;
    transport.max_concurrent_bidi_streams(STREAMS_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // What one node can make the relay buffer is bounded by these windows: the relay
    // reads no faster than `node_bytes_per_sec_max` ([`crate::throttle`]), and QUIC flow
    // control holds back whatever it has not read.
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into());
    transport.receive_window(RECEIVE_WINDOW_BYTES.into());
    server_config.transport_config(Arc::new(transport));
    Ok(Credentials { identity, server_config })
}

/// The identity in the verified certificate of a connection's peer.
pub fn peer_identity(conn: &quinn::Connection) -> Result<NodeIdentity, String> {
    let any = conn.peer_identity().ok_or("the node presented no certificate")?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer identity is not an X.509 chain".to_owned())?;
    let leaf = chain.first().ok_or("the node's certificate chain is empty")?;
    sync_protocol::cert::identity_of(leaf.as_ref()).map_err(|e| e.to_string())
}
