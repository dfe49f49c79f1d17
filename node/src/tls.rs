//! TLS for the node: its identity from its own certificate, and the QUIC client
//! configuration that presents that certificate to the relay (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use sync_protocol::NodeIdentity;

pub use crate::daemon::{IDLE_TIMEOUT, KEEP_ALIVE, TlsError};
use crate::daemon::{read_certs, read_key, read_roots, transport};

/// The node's credentials as loaded from disk.
#[derive(Debug)]
pub struct Credentials {
    /// Who the certificate says the node is.
    pub identity: NodeIdentity,
    /// The quinn client configuration.
    pub client_config: quinn::ClientConfig,
}

/// Loads the CA, the node certificate and its key, and builds the client configuration.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Pem { path: cert.to_owned(), reason: "no certificate in file".into() })?;
    let identity =
        identity_of(leaf).map_err(|reason| TlsError::Identity { path: cert.to_owned(), reason })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsError::Config(format!("node certificate and key: {e}")))?;
    tls.alpn_protocols = vec![sync_protocol::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
    client_config.transport_config(Arc::new(transport(Some(KEEP_ALIVE))?));
    Ok(Credentials { identity, client_config })
}

/// The node identity in a certificate's `outpost://` URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<NodeIdentity, String> {
    sync_protocol::cert::identity_of(cert.as_ref()).map_err(|e| e.to_string())
}
