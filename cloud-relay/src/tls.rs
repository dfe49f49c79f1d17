//! TLS for the relay: its own identity from its certificate, and the QUIC server
//! configuration that demands a client certificate issued by the deployment CA.
//!
//! rustls verifies the chain, the validity period and the client-auth usage; a node
//! that fails any of it never reaches the protocol. Who the node is comes from its
//! verified certificate alone ([`peer_identity`]), never from what it says in its Hello.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sync_protocol::NodeIdentity;

/// QUIC idle timeout: a node silent this long is gone (it keeps alive every 4 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12);
/// Streams a node may open: control plus one per lane, with room for a reconnecting
/// lane stream.
pub const STREAMS_MAX: u32 = 8;

/// The certificate files could not be used.
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
    /// rustls refused the configuration (a key that does not match, a bad CA).
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The relay's credentials as loaded from disk.
pub struct Credentials {
    /// What the relay certificate's `outpost://<region>/<name>` URI says, if it has one.
    pub identity: Option<NodeIdentity>,
    /// The quinn server configuration.
    pub server_config: quinn::ServerConfig,
}

/// Loads the CA, the relay certificate and its key, and builds the server configuration.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
    let pem_err = |path: &Path, reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let chain = certs_in(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let identity = chain.first().and_then(|leaf| sync_protocol::cert::identity_of(leaf.as_ref()).ok());

    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in certs_in(ca)? {
        roots.add(ca_cert).map_err(|e| TlsError::Config(format!("ca {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
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
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(STREAMS_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| TlsError::Config(e.to_string()))?,
    ));
    server_config.transport_config(Arc::new(transport));
    Ok(Credentials { identity, server_config })
}

fn certs_in(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Pem { path: path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), reason: "no certificate in file".into() });
    }
    Ok(certs)
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
