//! Tests of the snapshot reader and the comparison.

use super::*;

fn key(sku: &str, location: &str) -> StockKey {
    StockKey { sku: sku.parse().unwrap(), location: location.parse().unwrap() }
}

#[test]
fn a_snapshot_reads_with_header_quotes_comments_and_blank_lines() {
    let text = "sku,location,qty\n# counted 2026-11-20\n\n\"SKU-1\",A-01,10\nSKU-2 , B-02 , -3\n";
    let levels = parse_snapshot(text).unwrap();
    assert_eq!(levels, Levels::from([(key("SKU-1", "A-01"), 10), (key("SKU-2", "B-02"), -3)]));
}

#[test]
fn bad_lines_are_named() {
    let cases = [
        ("SKU-1,A-01\n", 1, "expected sku,location,qty"),
        ("sku,location,qty\nSKU-1,A-01,ten\n", 2, "qty"),
        ("SKU-1,A-01,1\nSKU-1,A-01,2\n", 2, "listed twice (first on line 1)"),
        (",A-01,1\n", 1, "sku"),
        ("SKU-1,A-01,1\nsku,location,qty\n", 2, "qty"),
    ];
    for (text, line, needle) in cases {
        let err = parse_snapshot(text).unwrap_err();
        assert_eq!(err.line, line, "{text:?}: {err}");
        assert!(err.reason.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn differences_count_missing_keys_as_zero_and_come_largest_first() {
    let relay = Levels::from([(key("A", "L1"), 10), (key("B", "L1"), 3), (key("D", "L1"), -2)]);
    let snapshot = Levels::from([(key("A", "L1"), 10), (key("B", "L1"), 7), (key("C", "L2"), 6)]);
    let diffs = differences(&relay, &snapshot);
    let got: Vec<(String, i64, i64, i128)> =
        diffs.iter().map(|d| (d.key.to_string(), d.relay, d.snapshot, d.delta())).collect();
    assert_eq!(
        got,
        [("C@L2".to_owned(), 0, 6, -6), ("B@L1".to_owned(), 3, 7, -4), ("D@L1".to_owned(), -2, 0, -2),]
    );
    let text = render(&diffs, relay.len(), snapshot.len());
    assert!(text.ends_with("3 differences (relay: 3 keys, snapshot: 3 keys)\n"), "{text}");
    assert!(text.lines().nth(1).unwrap().ends_with("-6"), "{text}");
    assert!(differences(&relay, &relay).is_empty());
    assert_eq!(render(&[], 3, 3), "0 differences (relay: 3 keys, snapshot: 3 keys)\n");
}
