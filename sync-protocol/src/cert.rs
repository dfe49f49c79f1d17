//! Who a certificate names (feature `x509`): the `outpost://<region>/<name>` URI in its
//! subject alternative names. Relays read nodes' identities this way, and nodes and
//! relays their own. Pure parsing of DER bytes; no IO.

use crate::ids::{NodeIdentity, ParseError};

/// The identity in the first `outpost://` URI SAN of a DER certificate.
pub fn identity_of(cert_der: &[u8]) -> Result<NodeIdentity, ParseError> {
    let bad = |reason: String| ParseError { what: "certificate", reason };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| bad(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no subject alternative names".into()))?;
    let mut last_error = bad("no outpost:// uri among the subject alternative names".into());
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            match NodeIdentity::from_uri(uri) {
                Ok(identity) => return Ok(identity),
                Err(e) => last_error = e,
            }
        }
    }
    Err(last_error)
}
