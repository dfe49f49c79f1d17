//! Unit tests of the exactly-once check on hand-made ledgers and logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::{Report, Violation, check};
use crate::api::LogEntry;
use crate::ledger::{Ack, ConflictPost, LedgerData, Outcome, Posted, ShedReason};

const EPOCH: &str = "00000000deadbeef";

fn payload(id: &str, qty: i64) -> Value {
    json!({"event_id": id, "kind": "ship", "sku": "SKU-1", "location": "DOCK-1", "qty": qty,
           "occurred_at": null, "device_id": "hs-1", "shipment_id": null, "order_id": null, "attrs": {}})
}

fn entry(offset: u64, lane: &str, seq: u64, id: &str, qty: i64) -> LogEntry {
    let mut fields = payload(id, qty).as_object().unwrap().clone();
    fields.remove("event_id");
    fields.insert("received_at".into(), json!("2026-11-23T10:00:00.123Z"));
    LogEntry {
        offset,
        key: format!("store-1/{EPOCH}/{lane}/{seq}"),
        node_id: "store-1".into(),
        epoch: EPOCH.into(),
        lane: lane.into(),
        seq,
        event_id: id.into(),
        fields,
    }
}

fn accepted(data: &mut LedgerData, id: &str, lane: &str, seq: u64, qty: i64) {
    let ack = Ack { node_id: "store-1".into(), epoch: EPOCH.into(), lane: lane.into(), seq };
    data.events.insert(id.into(), Posted { payload: payload(id, qty), outcome: Outcome::Accepted(ack) });
}

#[track_caller]
fn check_violations(data: &LedgerData, log: &[LogEntry], expect: &[&str]) {
    let report = check(data, log);
    let found: Vec<String> = report.violations.iter().map(Violation::to_string).collect();
    assert_eq!(found.len(), expect.len(), "{report}");
    for (f, e) in found.iter().zip(expect) {
        assert!(f.starts_with(e), "{f:?} does not start with {e:?}\n{report}");
    }
    assert_eq!(report.is_ok(), expect.is_empty());
}

#[test]
fn clean_run_passes() {
    let mut data = LedgerData::default();
    accepted(&mut data, "a", "critical", 1, 2);
    accepted(&mut data, "b", "critical", 2, 3);
    accepted(&mut data, "c", "bulk", 1, 1);
    let log = [entry(0, "critical", 1, "a", 2), entry(1, "bulk", 1, "c", 1), entry(2, "critical", 2, "b", 3)];
    check_violations(&data, &log, &[]);
    let report = check(&data, &log);
    assert_eq!(report.counts.streams, 2);
    assert_eq!(report.counts.accepted, 3);
}

#[test]
fn lost_duplicated_and_unknown() {
    let mut data = LedgerData::default();
    accepted(&mut data, "a", "critical", 1, 2);
    accepted(&mut data, "b", "critical", 2, 2);
    let log =
        [entry(0, "critical", 1, "a", 2), entry(1, "critical", 2, "a", 2), entry(2, "critical", 3, "z", 1)];
    check_violations(
        &data,
        &log,
        &["exactly once: a is in the relay log", "unknown event", "acknowledged event lost: b"],
    );
}

#[test]
fn order_gap_and_misplacement() {
    let mut data = LedgerData::default();
    accepted(&mut data, "a", "critical", 1, 2);
    accepted(&mut data, "b", "critical", 2, 2);
    let log = [entry(0, "critical", 1, "a", 2), entry(2, "critical", 3, "b", 2)];
    check_violations(
        &data,
        &log,
        &[
            "dense offsets",
            "per-lane order",
            "exactly once: b was placed at store-1/00000000deadbeef/critical/2",
        ],
    );
}

#[test]
fn conflicts_rejections_and_payloads() {
    let mut data = LedgerData::default();
    accepted(&mut data, "a", "critical", 1, 2);
    data.events.insert(
        "bad".into(),
        Posted { payload: payload("bad", -1), outcome: Outcome::Rejected { status: 422, error: "x".into() } },
    );
    data.conflicts.push(ConflictPost {
        event_id: "a".into(),
        payload: payload("a", 3),
        status: 409,
        answer: "event_id_conflict".into(),
    });
    // The log holds the conflicting payload (qty 3) rather than the accepted one.
    let log = [entry(0, "critical", 1, "a", 3), entry(1, "critical", 2, "bad", -1)];
    check_violations(&data, &log, &["exactly once: a field qty", "error stored: bad", "conflict stored"]);
    // An unanswered event may be logged once.
    data.events.insert("u".into(), Posted { payload: payload("u", 1), outcome: Outcome::Unanswered });
    data.events.remove("bad");
    let log = [entry(0, "critical", 1, "a", 2), entry(1, "critical", 2, "u", 1)];
    check_violations(&data, &log, &[]);
    assert_eq!(check(&data, &log).counts.unanswered_logged, 1);
}

#[test]
fn anomalies_are_violations() {
    let mut data = LedgerData::default();
    data.anomalies.push("re-post of x was answered as created".into());
    check_violations(&data, &[], &["idempotent answers: re-post of x"]);
}

#[test]
fn a_shed_event_must_not_be_logged_and_shed_answers_are_judged() {
    let mut data = LedgerData::default();
    accepted(&mut data, "a", "critical", 1, 2);
    let shed = Outcome::Shed(ShedReason::of_code("disk_quota"));
    data.events.insert("s".into(), Posted { payload: payload("s", 1), outcome: shed });
    let log = [entry(0, "critical", 1, "a", 2)];
    check_violations(&data, &log, &[]);
    assert_eq!(check(&data, &log).counts.shed, 1);
    let log = [entry(0, "critical", 1, "a", 2), entry(1, "critical", 2, "s", 1)];
    check_violations(&data, &log, &["shed event stored: s was answered 507 disk_quota but is at offset 1"]);
    data.shed_anomalies.push("429 overloaded without Retry-After".into());
    check_violations(&data, &log[..1], &["shed answer: 429 overloaded without Retry-After"]);
}

#[test]
fn many_violations_of_one_kind_never_hide_another() {
    let mut data = LedgerData::default();
    for i in 0..200 {
        data.anomalies.push(format!("re-post of e{i} was answered as created"));
    }
    accepted(&mut data, "a", "critical", 1, 2);
    let log = [entry(0, "critical", 1, "a", 2), entry(1, "critical", 2, "a", 2)];
    let report = check(&data, &log);
    assert_eq!(report.violations_total, 201);
    assert_eq!((report.total_of("answer"), report.total_of("duplicated")), (200, 1));
    assert_eq!(report.violations.len(), Report::VIOLATIONS_MAX + 1);
    assert!(report.violations.iter().any(|v| matches!(v, Violation::Duplicated { .. })), "{report}");
}
