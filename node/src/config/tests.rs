//! Tests of configuration layering and validation.

use super::*;

fn base() -> Settings {
    Settings {
        ca: Some("ca.pem".into()),
        cert: Some("n.pem".into()),
        key: Some("n.key".into()),
        ..Settings::default()
    }
}

#[test]
fn flags_win_over_the_file_and_defaults_fill_the_rest() {
    let flags = Settings { http: Some("127.0.0.1:9000".parse().unwrap()), ..base() };
    let file: Settings =
        toml::from_str("http = \"127.0.0.1:7000\"\nretention = \"2h\"\n[lanes]\ntransfer = \"critical\"\n")
            .unwrap();
    let config = Config::resolve(flags.or(file)).unwrap();
    assert_eq!(config.http.port(), 9000);
    assert_eq!(config.retention, Duration::from_secs(7200));
    assert_eq!(config.lanes[&Kind::Transfer], Lane::Critical);
    assert_eq!(config.lanes[&Kind::Scan], Lane::Bulk);
    assert_eq!(config.relays, vec![DEFAULT_RELAY.to_owned()]);
    assert_eq!(config.batch_events_max, DEFAULT_BATCH_EVENTS_MAX);
}

#[track_caller]
fn check_error(s: Settings, needle: &str) {
    let err = Config::resolve(s).unwrap_err().to_string();
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

#[test]
fn bad_settings_are_start_up_errors() {
    check_error(Settings { ca: None, ..base() }, "no ca given");
    check_error(Settings { relay: Some(vec!["nohost".into()]), ..base() }, "is not host:port");
    check_error(Settings { relay: Some(vec![]), ..base() }, "at least one relay");
    let lanes = [("teleport".to_owned(), "bulk".to_owned())].into_iter().collect();
    check_error(Settings { lanes: Some(lanes), ..base() }, "is not one of");
    assert!(toml::from_str::<Settings>("colour = \"blue\"").is_err(), "unknown keys are refused");
}

#[test]
fn host_port_forms() {
    assert_eq!(split_host_port("localhost:4433").unwrap(), ("localhost".into(), 4433));
    assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1".into(), 4433));
    assert!(split_host_port(":4433").is_err());
    assert!(split_host_port("relay:http").is_err());
}

#[test]
fn the_shipped_sample_sets_every_option_and_resolves() {
    let sample = include_str!("../../deploy/node.toml");
    let s: Settings = toml::from_str(sample).unwrap();
    let documented = [
        s.data_dir.is_some(),
        s.http.is_some(),
        s.relay.is_some(),
        s.ca.is_some(),
        s.cert.is_some(),
        s.key.is_some(),
        s.retention.is_some(),
        s.body_bytes_max.is_some(),
        s.batch_events_max.is_some(),
        s.lanes.is_some(),
    ];
    assert!(documented.iter().all(|set| *set), "every setting appears in deploy/node.toml: {documented:?}");
    let config = Config::resolve(s).unwrap();
    assert_eq!(config.relays.len(), 2);
    assert_eq!(config.lanes[&Kind::Transfer], Lane::Critical);
}
