//! TLS for the node: its identity from its own certificate, and the QUIC client
//! configuration that presents that certificate to the relay (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sync_protocol::NodeIdentity;

/// QUIC keep-alive: well under the idle timeout, so an idle but healthy link stays up.
pub const KEEP_ALIVE: Duration = Duration::from_secs(4);
/// QUIC idle timeout: how long a silent WAN takes to be declared down (PROTOCOL.md asks
/// for 10–15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12);

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
    /// The certificate carries no usable `outpost://<region>/<node_id>` URI.
    #[error("certificate {path} names no node: {reason}; issue it with `outpost-relay pki node`")]
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
    let ca_certs = read_certs(ca)?;
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem { path: key.to_owned(), reason: e.to_string() })?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Pem { path: cert.to_owned(), reason: "no certificate in file".into() })?;
    let identity =
        identity_of(leaf).map_err(|reason| TlsError::Identity { path: cert.to_owned(), reason })?;

    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots.add(c).map_err(|e| TlsError::Config(format!("ca {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsError::Config(format!("node certificate and key: {e}")))?;
    tls.alpn_protocols = vec![sync_protocol::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| TlsError::Config(e.to_string()))?,
    ));
    client_config.transport_config(Arc::new(transport));
    Ok(Credentials { identity, client_config })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate in file".into()));
    }
    Ok(certs)
}

/// The node identity in a certificate's `outpost://` URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<NodeIdentity, String> {
    sync_protocol::cert::identity_of(cert.as_ref()).map_err(|e| e.to_string())
}
