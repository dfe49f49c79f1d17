//! Receiver tests: refusals, the watermark arithmetic of batches (skip, drop, gap), acks
//! that never run ahead of commits, and a model check under retransmits and reordering.

use proptest::prelude::*;

use super::*;
use crate::event::{Event, Kind};

const EPOCH: Epoch = Epoch(0x00c0_ffee);

fn identity(uri: &str) -> NodeIdentity {
    NodeIdentity::from_uri(uri).unwrap()
}

fn config(region: &str, batch_events_max: u32) -> ReceiverConfig {
    ReceiverConfig {
        relay_id: "relay-1".into(),
        region: region.parse().unwrap(),
        limits: Limits { batch_events_max, ..Limits::default() },
    }
}

fn hello(uri: &str) -> Hello {
    let id = identity(uri);
    Hello {
        version: PROTOCOL_VERSION,
        node_id: id.node_id,
        region: id.region,
        epoch: EPOCH,
        heads: PerLane([9; 3]),
        inventory_version: 0,
    }
}

/// The record at `seq`: its `received_at_ms` is the seq, so tests can read seqs back.
fn record(seq: u64) -> Record {
    let event = Event::new(
        format!("ev-{seq}").parse().unwrap(),
        Kind::Ship,
        "SKU-1".parse().unwrap(),
        "DOCK-3".parse().unwrap(),
        1,
    );
    Record { received_at_ms: seq, deltas: Vec::new(), event }
}

/// A batch of `lane` holding seqs `first..=last`.
fn batch(lane: Lane, first: u64, last: u64) -> Batch {
    Batch { lane, first_seq: Seq::new(first).unwrap(), events: (first..=last).map(record).collect() }
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.received_at_ms).collect()
}

fn ack(lane: Lane, through: u64) -> Message {
    Message::Ack(Ack { lane, through_seq: Seq::new(through).unwrap() })
}

fn resync(lane: Lane, from: u64) -> Message {
    Message::Resync(Resync { lane, from_seq: Seq::new(from).unwrap() })
}

fn drain(receiver: &mut Receiver) -> Vec<Message> {
    std::iter::from_fn(|| receiver.poll_transmit()).collect()
}

/// A receiver of `store-0042` in `eu-west` that has welcomed it with `stored` watermarks.
fn welcomed(stored: [u64; 3]) -> Receiver {
    let uri = "outpost://eu-west/store-0042";
    let mut receiver = Receiver::new(config("eu-west", 8), identity(uri));
    assert_eq!(receiver.handle_hello(hello(uri), PerLane(stored)), Ok(EPOCH));
    assert!(matches!(drain(&mut receiver)[..], [Message::Welcome(_)]));
    receiver
}

/// Hands `batch` to the receiver and expects the seqs it accepts (`None` for nothing new)
/// and the messages it queues.
#[track_caller]
fn check_batch(receiver: &mut Receiver, batch: Batch, accepted: Option<(u64, u64)>, sent: &[Message]) {
    let lane = batch.lane;
    let got = receiver.handle_batch(batch).unwrap();
    match (got, accepted) {
        (None, None) => {}
        (Some(a), Some((first, last))) => {
            assert_eq!(a.lane, lane);
            assert_eq!(a.first_seq.get(), first);
            assert_eq!(a.last_seq().get(), last);
            assert_eq!(seqs(&a.records), (first..=last).collect::<Vec<_>>());
        }
        (got, expect) => panic!("accepted {got:?}, expected {expect:?}"),
    }
    assert_eq!(drain(receiver), sent);
}

/// Hello from a node whose certificate names `cert`, to a relay of `relay_region`.
#[track_caller]
fn check_hello(cert: &str, relay_region: &str, hello: Hello, expect: Result<(), (RefuseReason, &str)>) {
    let mut receiver = Receiver::new(config(relay_region, 8), identity(cert));
    let got = receiver.handle_hello(hello, PerLane([1, 2, 3]));
    let sent = drain(&mut receiver);
    match (got, expect) {
        (Ok(epoch), Ok(())) => {
            assert_eq!(epoch, EPOCH);
            assert_eq!(receiver.epoch(), Some(EPOCH));
            assert!(matches!(sent[..], [Message::Welcome(_)]), "{sent:?}");
        }
        (Err(refuse), Err((reason, needle))) => {
            assert_eq!(refuse.reason, reason, "{refuse}");
            assert!(refuse.message.contains(needle), "{:?} lacks {needle:?}", refuse.message);
            assert_eq!(sent, [Message::Refuse(refuse)]);
            // A refused node has no session: its batches are violations.
            assert_eq!(receiver.epoch(), None);
            assert_eq!(receiver.durable(Lane::Bulk), 0);
            assert_eq!(
                receiver.handle_batch(batch(Lane::Critical, 1, 1)),
                Err(ProtocolViolation::Unexpected("batch before hello"))
            );
        }
        (got, expect) => panic!("got {got:?}, expected {expect:?}"),
    }
}

#[test]
fn hellos_and_refusals() {
    let eu = "outpost://eu-west/store-0042";
    check_hello(eu, "eu-west", hello(eu), Ok(()));

    let future = Hello { version: PROTOCOL_VERSION + 1, ..hello(eu) };
    check_hello(eu, "eu-west", future, Err((RefuseReason::UnsupportedVersion, "protocol version 2")));
    let ancient = Hello { version: 0, ..hello(eu) };
    check_hello(eu, "eu-west", ancient, Err((RefuseReason::UnsupportedVersion, "version 0")));

    let other_node = hello("outpost://eu-west/store-0043");
    check_hello(eu, "eu-west", other_node, Err((RefuseReason::IdentityMismatch, "store-0043")));
    let other_region = hello("outpost://us-east/store-0042");
    check_hello(eu, "eu-west", other_region, Err((RefuseReason::IdentityMismatch, "us-east")));

    // The certificate and the Hello agree, but the node belongs elsewhere.
    let us = "outpost://us-east/store-0042";
    check_hello(us, "eu-west", hello(us), Err((RefuseReason::WrongRegion, "region us-east")));
    // Claiming this relay's region does not help when the certificate says otherwise.
    check_hello(us, "eu-west", hello(eu), Err((RefuseReason::IdentityMismatch, "us-east/store-0042")));
}

#[test]
fn welcome_carries_stored_watermarks_and_limits() {
    let uri = "outpost://eu-west/store-0042";
    let mut receiver = Receiver::new(config("eu-west", 3), identity(uri));
    assert_eq!(receiver.identity(), &identity(uri));
    receiver.handle_hello(hello(uri), PerLane([17, 0, 5])).unwrap();
    let expect = Welcome {
        relay_id: "relay-1".into(),
        region: "eu-west".parse().unwrap(),
        watermarks: PerLane([17, 0, 5]),
        limits: Limits { batch_events_max: 3, ..Limits::default() },
    };
    assert_eq!(drain(&mut receiver), [Message::Welcome(expect)]);
    assert_eq!(receiver.durable(Lane::Critical), 17);
    assert_eq!(receiver.durable(Lane::Standard), 0);
    assert_eq!(receiver.durable(Lane::Bulk), 5);
}

#[test]
fn contiguous_batches_are_accepted_without_an_ack() {
    let mut r = welcomed([0, 0, 0]);
    check_batch(&mut r, batch(Lane::Critical, 1, 3), Some((1, 3)), &[]);
    // Pipelined: judged against what is pending, not what is durable.
    check_batch(&mut r, batch(Lane::Critical, 4, 4), Some((4, 4)), &[]);
    assert_eq!(r.durable(Lane::Critical), 0);
}

#[test]
fn overlapping_prefix_is_skipped() {
    let mut r = welcomed([5, 0, 0]);
    check_batch(&mut r, batch(Lane::Critical, 3, 8), Some((6, 8)), &[]);
    check_batch(&mut r, batch(Lane::Critical, 8, 9), Some((9, 9)), &[]);
    check_batch(&mut r, batch(Lane::Critical, 5, 12), Some((10, 12)), &[]);
}

#[test]
fn batches_below_the_watermark_are_dropped_and_reacked() {
    let mut r = welcomed([5, 0, 0]);
    // Entirely durable already: nothing to commit, and the node hears the watermark again.
    check_batch(&mut r, batch(Lane::Critical, 2, 4), None, &[ack(Lane::Critical, 5)]);
    check_batch(&mut r, batch(Lane::Critical, 1, 5), None, &[ack(Lane::Critical, 5)]);

    // Accepted but not yet committed: a retransmission draws no ack until the commit.
    check_batch(&mut r, batch(Lane::Critical, 6, 8), Some((6, 8)), &[]);
    check_batch(&mut r, batch(Lane::Critical, 6, 8), None, &[]);
    check_batch(&mut r, batch(Lane::Critical, 4, 7), None, &[]);
    r.handle_committed(Lane::Critical, Seq::new(8).unwrap());
    assert_eq!(drain(&mut r), [ack(Lane::Critical, 8)]);
    check_batch(&mut r, batch(Lane::Critical, 7, 8), None, &[ack(Lane::Critical, 8)]);

    // Nothing stored on a lane: no ack of seq 0 can be formed, so nothing is sent.
    let mut r = welcomed([0, 0, 0]);
    check_batch(&mut r, batch(Lane::Bulk, 1, 2), Some((1, 2)), &[]);
    check_batch(&mut r, batch(Lane::Bulk, 1, 2), None, &[]);
}

#[test]
fn a_gap_draws_one_resync() {
    let mut r = welcomed([5, 0, 0]);
    check_batch(&mut r, batch(Lane::Critical, 7, 8), None, &[resync(Lane::Critical, 6)]);
    // The batches already in flight behind the gap draw nothing more.
    check_batch(&mut r, batch(Lane::Critical, 9, 10), None, &[]);
    check_batch(&mut r, batch(Lane::Critical, 11, 12), None, &[]);
    // Retransmissions of durable events are still acked meanwhile.
    check_batch(&mut r, batch(Lane::Critical, 4, 5), None, &[ack(Lane::Critical, 5)]);
    // Other lanes are unaffected, and have gaps of their own.
    check_batch(&mut r, batch(Lane::Standard, 1, 2), Some((1, 2)), &[]);
    check_batch(&mut r, batch(Lane::Standard, 4, 4), None, &[resync(Lane::Standard, 3)]);

    // The node restarts from 6: accepted, and a later gap is answered again.
    check_batch(&mut r, batch(Lane::Critical, 6, 9), Some((6, 9)), &[]);
    check_batch(&mut r, batch(Lane::Critical, 12, 12), None, &[resync(Lane::Critical, 10)]);
    check_batch(&mut r, batch(Lane::Critical, 13, 13), None, &[]);
    check_batch(&mut r, batch(Lane::Critical, 10, 10), Some((10, 10)), &[]);
    check_batch(&mut r, batch(Lane::Critical, 12, 12), None, &[resync(Lane::Critical, 11)]);
}

#[test]
fn a_gap_is_judged_against_pending() {
    let mut r = welcomed([0, 0, 0]);
    check_batch(&mut r, batch(Lane::Bulk, 1, 3), Some((1, 3)), &[]);
    check_batch(&mut r, batch(Lane::Bulk, 5, 6), None, &[resync(Lane::Bulk, 4)]);
}

#[test]
fn acks_follow_commits_and_never_pass_them() {
    let mut r = welcomed([0, 0, 2]);
    check_batch(&mut r, batch(Lane::Bulk, 3, 5), Some((3, 5)), &[]);
    check_batch(&mut r, batch(Lane::Bulk, 6, 9), Some((6, 9)), &[]);
    assert_eq!(drain(&mut r), []);
    r.handle_committed(Lane::Bulk, Seq::new(5).unwrap());
    assert_eq!(drain(&mut r), [ack(Lane::Bulk, 5)]);
    assert_eq!(r.durable(Lane::Bulk), 5);
    r.handle_committed(Lane::Bulk, Seq::new(9).unwrap());
    assert_eq!(drain(&mut r), [ack(Lane::Bulk, 9)]);
    assert_eq!(r.durable(Lane::Bulk), 9);
    assert_eq!(r.durable(Lane::Critical), 0);
}

#[test]
fn commits_before_hello_are_ignored() {
    let mut r = Receiver::new(config("eu-west", 8), identity("outpost://eu-west/store-0042"));
    r.handle_committed(Lane::Critical, Seq::FIRST);
    assert_eq!(drain(&mut r), []);
    assert_eq!(r.durable(Lane::Critical), 0);
}

#[test]
fn batch_limits() {
    let mut r = welcomed([0, 0, 0]);
    assert_eq!(
        r.handle_batch(Batch { lane: Lane::Standard, first_seq: Seq::FIRST, events: Vec::new() }),
        Err(ProtocolViolation::EmptyBatch { lane: Lane::Standard })
    );
    assert_eq!(
        r.handle_batch(batch(Lane::Standard, 1, 9)),
        Err(ProtocolViolation::BatchTooLarge { lane: Lane::Standard, events: 9, max: 8 })
    );
    check_batch(&mut r, batch(Lane::Standard, 1, 8), Some((1, 8)), &[]);
}

// The model check.

/// What the test does next to the receiver.
#[derive(Debug, Clone)]
enum Op {
    /// The node sends `len` events of `lane` from its cursor and moves the cursor on.
    Send { lane: Lane, len: u64 },
    /// As `Send`, but the batch is lost on the way.
    Lose { lane: Lane, len: u64 },
    /// The node moves its cursor back by `by` (a retransmission).
    Rewind { lane: Lane, by: u64 },
    /// A batch delivered earlier arrives again, late.
    Replay { index: prop::sample::Index },
    /// Some batch cut anywhere from the lane's sequence (reordered or stale).
    Stray { lane: Lane, first: u64, len: u64 },
    /// The node obeys the oldest Resync it has not obeyed yet.
    Obey,
    /// The shell commits the oldest accepted batch of `lane`.
    Commit { lane: Lane },
}

/// Seqs per lane that the node has, so the model's sequence is `1..=SEQ_MAX`.
const SEQ_MAX: u64 = 40;

fn op() -> impl Strategy<Value = Op> {
    let lane = || prop::sample::select(Lane::ALL.to_vec());
    prop_oneof![
        6 => (lane(), 1..=5u64).prop_map(|(lane, len)| Op::Send { lane, len }),
        1 => (lane(), 1..=5u64).prop_map(|(lane, len)| Op::Lose { lane, len }),
        1 => (lane(), 1..=8u64).prop_map(|(lane, by)| Op::Rewind { lane, by }),
        2 => any::<prop::sample::Index>().prop_map(|index| Op::Replay { index }),
        1 => (lane(), 1..=SEQ_MAX, 1..=5u64).prop_map(|(lane, first, len)| Op::Stray { lane, first, len }),
        2 => Just(Op::Obey),
        4 => lane().prop_map(|lane| Op::Commit { lane }),
    ]
}

/// The relay shell and store around the receiver, with the checks of every output.
#[derive(Default)]
struct Model {
    /// What the store holds per lane, in commit order.
    committed: PerLane<Vec<Record>>,
    /// Accepted batches waiting for their commit, per lane.
    uncommitted: PerLane<Vec<Accepted>>,
    /// Highest seq accepted per lane (the receiver's `pending`).
    pending: PerLane<u64>,
    /// Resyncs per lane since the lane last accepted a batch.
    resyncs_since_accept: PerLane<u32>,
    /// Resyncs the node has not obeyed yet.
    resyncs: Vec<Resync>,
    /// The node's next seq to send, per lane.
    cursor: PerLane<u64>,
    delivered: Vec<Batch>,
}

impl Model {
    fn durable(&self, lane: Lane) -> u64 {
        self.committed.get(lane).len() as u64
    }

    fn deliver(&mut self, receiver: &mut Receiver, batch: Batch) {
        let lane = batch.lane;
        let (first, last) = (batch.first_seq.get(), batch.last_seq().unwrap().get());
        let pending = *self.pending.get(lane);
        self.delivered.push(batch.clone());
        let got = receiver.handle_batch(batch).unwrap();
        match got {
            Some(accepted) => {
                assert_eq!(accepted.lane, lane);
                assert!(first <= pending + 1 && last > pending, "{first}..={last} accepted at {pending}");
                assert_eq!(accepted.first_seq.get(), pending + 1, "accepted must start after pending");
                assert_eq!(seqs(&accepted.records), (pending + 1..=last).collect::<Vec<_>>());
                *self.pending.get_mut(lane) = last;
                *self.resyncs_since_accept.get_mut(lane) = 0;
                self.uncommitted.get_mut(lane).push(accepted);
            }
            // Nothing new is only right if the batch held nothing new or left a gap.
            None => assert!(
                last <= pending || first > pending + 1,
                "{lane} {first}..={last} refused though it extends {pending}"
            ),
        }
        self.drain(receiver);
    }

    fn commit(&mut self, receiver: &mut Receiver, lane: Lane) {
        if self.uncommitted.get(lane).is_empty() {
            return;
        }
        let accepted = self.uncommitted.get_mut(lane).remove(0);
        assert_eq!(accepted.first_seq.get(), self.durable(lane) + 1, "commits are contiguous");
        self.committed.get_mut(lane).extend(accepted.records.iter().cloned());
        receiver.handle_committed(lane, accepted.last_seq());
        self.drain(receiver);
    }

    fn drain(&mut self, receiver: &mut Receiver) {
        while let Some(msg) = receiver.poll_transmit() {
            match msg {
                Message::Ack(ack) => {
                    let durable = self.durable(ack.lane);
                    assert!(ack.through_seq.get() <= durable, "ack {ack:?} beyond durable {durable}");
                    assert_eq!(receiver.durable(ack.lane), durable);
                }
                Message::Resync(resync) => {
                    let pending = *self.pending.get(resync.lane);
                    assert_eq!(resync.from_seq.get(), pending + 1, "resync must ask for pending + 1");
                    let count = self.resyncs_since_accept.get_mut(resync.lane);
                    *count += 1;
                    assert_eq!(*count, 1, "a second resync for the same gap on {}", resync.lane);
                    self.resyncs.push(resync);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The batch of `lane` from the cursor, `len` long, clipped to the sequence.
    fn next_batch(&mut self, lane: Lane, len: u64) -> Option<Batch> {
        let first = (*self.cursor.get(lane)).max(1);
        if first > SEQ_MAX {
            return None;
        }
        let last = (first + len - 1).min(SEQ_MAX);
        *self.cursor.get_mut(lane) = last + 1;
        Some(batch(lane, first, last))
    }

    fn apply(&mut self, receiver: &mut Receiver, op: Op) {
        match op {
            Op::Send { lane, len } => {
                if let Some(b) = self.next_batch(lane, len) {
                    self.deliver(receiver, b);
                }
            }
            Op::Lose { lane, len } => {
                self.next_batch(lane, len);
            }
            Op::Rewind { lane, by } => {
                let cursor = self.cursor.get_mut(lane);
                *cursor = cursor.saturating_sub(by).max(1);
            }
            Op::Replay { index } => {
                if !self.delivered.is_empty() {
                    let b = self.delivered[index.index(self.delivered.len())].clone();
                    self.deliver(receiver, b);
                }
            }
            Op::Stray { lane, first, len } => {
                self.deliver(receiver, batch(lane, first, (first + len - 1).min(SEQ_MAX)));
            }
            Op::Obey => {
                if !self.resyncs.is_empty() {
                    let resync = self.resyncs.remove(0);
                    *self.cursor.get_mut(resync.lane) = resync.from_seq.get();
                }
            }
            Op::Commit { lane } => self.commit(receiver, lane),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn receiver_matches_a_model(
        stored in prop::array::uniform3(0..=3u64),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut receiver = welcomed(stored);
        let mut model = Model::default();
        for lane in Lane::ALL {
            let n = *PerLane(stored).get(lane);
            *model.committed.get_mut(lane) = (1..=n).map(record).collect();
            *model.pending.get_mut(lane) = n;
            *model.cursor.get_mut(lane) = n + 1;
        }
        for op in ops {
            model.apply(&mut receiver, op);
        }
        for lane in Lane::ALL {
            while !model.uncommitted.get(lane).is_empty() {
                model.commit(&mut receiver, lane);
            }
            // Exactly 1..=k in order: no duplicate, no gap, nothing lost.
            let k = *model.pending.get(lane);
            prop_assert_eq!(seqs(model.committed.get(lane)), (1..=k).collect::<Vec<_>>());
            prop_assert_eq!(receiver.durable(lane), k);
        }
    }
}

#[test]
fn batches_beyond_the_window_are_violations() {
    // Batches of at most 8 events and the default window of batches in flight.
    let mut r = welcomed([0, 0, 0]);
    let window = u64::from(crate::wire::BATCHES_IN_FLIGHT_MAX) * 8;
    // A gap that stays inside the window is a Resync ...
    check_batch(&mut r, batch(Lane::Bulk, window - 1, window), None, &[resync(Lane::Bulk, 1)]);
    // ... one beyond it is a peer ignoring the limits, refused before it is buffered.
    let err = r.handle_batch(batch(Lane::Bulk, window, window + 1)).unwrap_err();
    assert_eq!(
        err,
        ProtocolViolation::BeyondWindow { lane: Lane::Bulk, last: window + 1, window_end: window }
    );
}

#[test]
fn the_window_is_counted_from_the_durable_watermark() {
    // Batches of at most 8 events, so the default window is 64 events past `durable`.
    let mut r = welcomed([0, 0, 0]);
    let window = u64::from(crate::wire::BATCHES_IN_FLIGHT_MAX) * 8;
    let beyond =
        |last, window_end| ProtocolViolation::BeyondWindow { lane: Lane::Standard, last, window_end };
    // Accepted but not committed: `pending` moves, the window does not.
    check_batch(&mut r, batch(Lane::Standard, 1, 8), Some((1, 8)), &[]);
    check_batch(&mut r, batch(Lane::Standard, window - 7, window), None, &[resync(Lane::Standard, 9)]);
    let err = r.handle_batch(batch(Lane::Standard, window + 1, window + 1)).unwrap_err();
    assert_eq!(err, beyond(window + 1, window));
    // A commit slides it: the same batch is now inside, one further is not.
    r.handle_committed(Lane::Standard, Seq::new(8).unwrap());
    assert_eq!(drain(&mut r), [ack(Lane::Standard, 8)]);
    check_batch(&mut r, batch(Lane::Standard, window + 1, window + 8), None, &[]);
    let err = r.handle_batch(batch(Lane::Standard, window + 2, window + 9)).unwrap_err();
    assert_eq!(err, beyond(window + 9, window + 8));
}

#[test]
fn a_busy_relay_refuses_with_its_hint_and_opens_no_session() {
    let uri = "outpost://eu-west/store-0042";
    let mut r = Receiver::new(config("eu-west", 8), identity(uri));
    let refuse = r.refuse_busy(1_500);
    assert_eq!(refuse.reason, RefuseReason::Busy { retry_after_ms: 1_500 });
    assert_eq!(
        refuse.to_string(),
        "refused (busy): relay relay-1 is at its connection limit; retry after 1500 ms"
    );
    assert_eq!(drain(&mut r), [Message::Refuse(refuse)]);
    assert_eq!(r.epoch(), None);
    let err = r.handle_batch(batch(Lane::Bulk, 1, 1)).unwrap_err();
    assert_eq!(err, ProtocolViolation::Unexpected("batch before hello"));
}
