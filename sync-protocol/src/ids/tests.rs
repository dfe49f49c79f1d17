//! Parsing and display of the identity and sequence newtypes.

use super::*;

#[track_caller]
fn check_node_uri(uri: &str, expect: Result<(&str, &str), &str>) {
    let got = NodeIdentity::from_uri(uri);
    match (got, expect) {
        (Ok(id), Ok((region, node))) => {
            assert_eq!((id.region.as_str(), id.node_id.as_str()), (region, node));
            assert_eq!(id.to_uri(), uri);
        }
        (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
        (got, expect) => panic!("{uri}: got {got:?}, expected {expect:?}"),
    }
}

#[test]
fn node_uris() {
    check_node_uri("outpost://eu-west/store-0042", Ok(("eu-west", "store-0042")));
    check_node_uri("https://eu-west/store-0042", Err("does not start with"));
    check_node_uri("outpost://eu-west", Err("is not outpost://"));
    check_node_uri("outpost://EU/store", Err("not one of [a-z0-9-]"));
    check_node_uri("outpost://eu/store/x", Err("not one of [a-z0-9-]"));
}

#[test]
fn names_at_and_over_the_limit() {
    let at = "a".repeat(NAME_BYTES_MAX);
    assert!(at.parse::<NodeId>().is_ok());
    assert!(format!("{at}a").parse::<NodeId>().is_err());
    assert!("".parse::<NodeId>().is_err());
    let id = "x".repeat(EVENT_ID_BYTES_MAX);
    assert!(id.parse::<EventId>().is_ok());
    assert!(format!("{id}x").parse::<EventId>().is_err());
    assert!("tab\there".parse::<EventId>().is_err());
    assert!("hs-17:000123".parse::<EventId>().is_ok());
}

#[test]
fn epoch_round_trips_as_hex() {
    let e = Epoch(0xdead_beef_0000_0001);
    assert_eq!(e.to_string().parse::<Epoch>(), Ok(e));
}

#[test]
fn lanes_parse_and_index() {
    for lane in Lane::ALL {
        assert_eq!(lane.as_str().parse::<Lane>(), Ok(lane));
        assert_eq!(Lane::from_index(lane.index()), Some(lane));
    }
    assert!("urgent".parse::<Lane>().is_err());
}
