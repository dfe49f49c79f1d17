//! Tests of the PKI commands: what the certificates say, and how the files are written.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn region(s: &str) -> Region {
    s.parse().unwrap()
}

fn der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap();
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    parsed.contents
}

#[test]
fn node_certificates_name_the_node_and_region() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Validity::days(CA_DAYS), false).unwrap();
    let node: NodeId = "store-0042".parse().unwrap();
    let issued = issue_node(dir.path(), &node, &region("eu-west"), Validity::days(LEAF_DAYS), false).unwrap();
    let identity = sync_protocol::cert::identity_of(&der_of(&issued.cert)).unwrap();
    assert_eq!(identity.to_uri(), "outpost://eu-west/store-0042");
}

#[test]
fn relay_certificates_carry_dns_and_ip_names() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Validity::days(CA_DAYS), false).unwrap();
    let sans = vec!["relay.example.net".to_owned(), "127.0.0.1".to_owned()];
    let issued =
        issue_relay(dir.path(), "relay-1", &region("eu-west"), &sans, Validity::days(LEAF_DAYS), false)
            .unwrap();
    let der = der_of(&issued.cert);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(names.contains("relay.example.net"), "{names}");
    assert!(names.contains("outpost://eu-west/relay-1"), "{names}");
    assert!(names.contains("IPAddress([127, 0, 0, 1])"), "{names}");
}

#[test]
fn keys_are_private_and_files_are_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path(), Validity::days(CA_DAYS), false).unwrap();
    let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&ca.key).unwrap();
    let again = init(dir.path(), Validity::days(CA_DAYS), false);
    assert!(matches!(again, Err(PkiError::Exists(_))), "{again:?}");
    assert_eq!(std::fs::read(&ca.key).unwrap(), before, "a refused init must not touch the key");
    init(dir.path(), Validity::days(CA_DAYS), true).unwrap();
    assert_ne!(std::fs::read(&ca.key).unwrap(), before, "--force replaces the CA");
    let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn issuing_without_a_ca_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let node: NodeId = "n1".parse().unwrap();
    let err = issue_node(dir.path(), &node, &region("eu-west"), Validity::days(1), false).unwrap_err();
    assert!(err.to_string().contains("outpost-relay pki init"), "{err}");
}

#[test]
fn a_relay_needs_a_name_to_be_dialled_by() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), Validity::days(CA_DAYS), false).unwrap();
    let err =
        issue_relay(dir.path(), "relay-1", &region("eu-west"), &[], Validity::days(1), false).unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
}
