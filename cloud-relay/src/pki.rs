//! A small deployment PKI (`outpost-relay pki`): one CA per deployment, a server
//! certificate per relay, a client certificate per node.
//!
//! Identity lives in one place, the SAN URI `outpost://<region>/<name>`: the relay reads a
//! node's identity and region from it, and the node reads its own. Keys are written with
//! mode 0600 and nothing is overwritten without `--force`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use sync_protocol::{NodeId, NodeIdentity, Region};

/// File name of the CA certificate in a PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key in a PKI directory.
pub const CA_KEY: &str = "ca.key";
/// Default validity of a CA certificate, in days.
pub const CA_DAYS: u32 = 3650;
/// Default validity of relay and node certificates, in days.
pub const LEAF_DAYS: u32 = 825;

/// Something the PKI commands could not do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file exists and `--force` was not given.
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA files are missing or unusable.
    #[error("ca in {dir}: {reason}; create one with `outpost-relay pki init --dir {dir}`")]
    Ca {
        /// The PKI directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name, region or SAN is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start; an hour before "now" by default, to absorb clock skew between machines.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago until `days` from now.
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 24 * 3600),
        }
    }
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Creates the deployment CA in `dir` (created if missing).
pub fn init(dir: &Path, validity: Validity, force: bool) -> Result<Issued, PkiError> {
    let files = Issued { cert: dir.join(CA_CERT), key: dir.join(CA_KEY) };
    refuse_overwrite(&files, force)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Outpost deployment CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, validity);
    let cert = params.self_signed(&key)?;
    write_pair(dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Issues the server certificate of relay `name` in `region`, valid for the DNS names and
/// IP addresses in `sans`.
pub fn issue_relay(
    dir: &Path,
    name_: &str,
    region: &Region,
    sans: &[String],
    validity: Validity,
    force: bool,
) -> Result<Issued, PkiError> {
    let relay_name: NodeId = name_.parse().map_err(|e| PkiError::Invalid(format!("relay name: {e}")))?;
    if sans.is_empty() {
        return Err(PkiError::Invalid(
            "a relay needs at least one --san: the DNS name or IP address nodes dial".into(),
        ));
    }
    let mut alt_names = Vec::new();
    for san in sans {
        let san = san.trim();
        alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.try_into().map_err(|e| PkiError::Invalid(format!("--san {san:?}: {e}")))?,
            ),
        });
    }
    let identity = NodeIdentity { region: region.clone(), node_id: relay_name };
    issue(dir, name_, identity, alt_names, ExtendedKeyUsagePurpose::ServerAuth, validity, force)
}

/// Issues the client certificate of node `node` in `region`.
pub fn issue_node(
    dir: &Path,
    node: &NodeId,
    region: &Region,
    validity: Validity,
    force: bool,
) -> Result<Issued, PkiError> {
    let identity = NodeIdentity { region: region.clone(), node_id: node.clone() };
    issue(dir, node.as_str(), identity, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, validity, force)
}

fn issue(
    dir: &Path,
    file_stem: &str,
    identity: NodeIdentity,
    mut alt_names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    validity: Validity,
    force: bool,
) -> Result<Issued, PkiError> {
    let files =
        Issued { cert: dir.join(format!("{file_stem}.pem")), key: dir.join(format!("{file_stem}.key")) };
    refuse_overwrite(&files, force)?;
    let (ca_cert, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .map_err(|e| PkiError::Ca { dir: dir.to_owned(), reason: e.to_string() })?;

    let uri = identity.to_uri();
    alt_names
        .push(SanType::URI(uri.as_str().try_into().map_err(|e| PkiError::Invalid(format!("{uri}: {e}")))?));
    let mut params = CertificateParams::default();
    params.distinguished_name = name(identity.node_id.as_str());
    params.subject_alt_names = alt_names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

fn load_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let ca_err = |reason: String| PkiError::Ca { dir: dir.to_owned(), reason };
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).map_err(|e| ca_err(format!("reading {file}: {e}")))
    };
    let cert = read(CA_CERT)?;
    let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| ca_err(format!("{CA_KEY}: {e}")))?;
    Ok((cert, key))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

fn refuse_overwrite(files: &Issued, force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(PkiError::Exists(path.clone()));
        }
    }
    Ok(())
}

fn write_pair(dir: &Path, files: &Issued, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    // The key first: a certificate without its key is useless, a key without its
    // certificate is merely re-issued.
    write_file(&files.key, key_pem, 0o600)?;
    write_file(&files.cert, cert_pem, 0o644)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    // Remove first so that a forced rewrite of a key never leaves a wider mode behind.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests;
