//! Sender tests: dialing, the Hello, where batches start, the window and batch limits,
//! acks and resyncs, refusals, and the reconnect backoff (and a busy relay's retry hint).

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::wire::{Ack, Limits, Resync, Welcome};

const EPOCH: Epoch = Epoch(0x0000_0000_dead_beef);

/// A fixed origin for virtual time: the sender only ever compares instants.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(batch_events_max: u32, batches_in_flight_max: u32) -> SenderConfig {
    SenderConfig {
        batch_events_max,
        batches_in_flight_max,
        ..SenderConfig::new(NodeIdentity::from_uri("outpost://eu-west/store-0042").unwrap(), EPOCH)
    }
}

fn welcome(watermarks: [u64; 3]) -> Message {
    Message::Welcome(Welcome {
        relay_id: "relay-1".into(),
        region: "eu-west".parse().unwrap(),
        watermarks: PerLane(watermarks),
        limits: Limits::default(),
    })
}

fn ack(lane: Lane, through: u64) -> Message {
    Message::Ack(Ack { lane, through_seq: Seq::new(through).unwrap() })
}

fn resync(lane: Lane, from: u64) -> Message {
    Message::Resync(Resync { lane, from_seq: Seq::new(from).unwrap() })
}

/// `(lane, first, count)` of a batch transmit, for short expectations.
fn b(lane: Lane, first: u64, count: u32) -> Transmit {
    Transmit::Batch { lane, first_seq: Seq::new(first).unwrap(), count }
}

fn transmits(sender: &mut Sender) -> Vec<Transmit> {
    std::iter::from_fn(|| sender.poll_transmit()).collect()
}

fn events(sender: &mut Sender) -> Vec<SenderEvent> {
    std::iter::from_fn(|| sender.poll_event()).collect()
}

/// A sender that has dialed and sent its Hello, waiting for the Welcome.
fn dialed(config: SenderConfig, heads: [u64; 3], acked: [u64; 3], now: Instant) -> Sender {
    let mut sender = Sender::new(config, PerLane(heads), PerLane(acked), now);
    sender.handle_timeout(now);
    assert_eq!(events(&mut sender), [SenderEvent::Connect]);
    sender.handle_connected(now);
    let sent = transmits(&mut sender);
    assert!(matches!(sent[..], [Transmit::Control(Message::Hello(_))]), "{sent:?}");
    sender
}

/// A sender that has dialed, sent its Hello and been welcomed with `watermarks`.
fn ready(config: SenderConfig, heads: [u64; 3], watermarks: [u64; 3], now: Instant) -> Sender {
    let mut sender = dialed(config, heads, [0; 3], now);
    sender.handle_message(welcome(watermarks), now).unwrap();
    assert!(sender.is_ready());
    let got = events(&mut sender);
    assert_eq!(got.last(), Some(&SenderEvent::Welcomed { relay_id: "relay-1".into() }), "{got:?}");
    sender
}

/// Feeds `msg` and expects the transmits and events it causes.
#[track_caller]
fn check(sender: &mut Sender, msg: Message, expect_transmits: &[Transmit], expect_events: &[SenderEvent]) {
    sender.handle_message(msg, origin()).unwrap();
    assert_eq!(transmits(sender), expect_transmits, "transmits");
    assert_eq!(events(sender), expect_events, "events");
}

#[test]
fn connects_at_once_after_construction() {
    let t0 = origin();
    let mut sender = Sender::new(config(8, 2), PerLane::default(), PerLane::default(), t0);
    assert_eq!(sender.poll_timeout(), Some(t0));
    assert_eq!(events(&mut sender), []);
    sender.handle_timeout(t0);
    assert_eq!(events(&mut sender), [SenderEvent::Connect]);
    assert_eq!(sender.poll_timeout(), None);
    // One dial at a time.
    sender.handle_timeout(t0 + ms(1000));
    assert_eq!(events(&mut sender), []);
    assert!(!sender.is_ready());
}

#[test]
fn hello_carries_identity_epoch_and_heads() {
    let t0 = origin();
    let mut sender = Sender::new(config(8, 2), PerLane([4, 0, 9]), PerLane([2, 0, 0]), t0);
    sender.handle_appended(Lane::Standard, 3);
    sender.handle_timeout(t0);
    sender.handle_connected(t0);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node_id: "store-0042".parse().unwrap(),
        region: "eu-west".parse().unwrap(),
        epoch: EPOCH,
        heads: PerLane([4, 3, 9]),
        inventory_version: 0,
    };
    assert_eq!(transmits(&mut sender), [Transmit::Control(Message::Hello(hello))]);
    // Nothing is sent before the Welcome says where each lane resumes.
    sender.handle_appended(Lane::Critical, 5);
    assert_eq!(transmits(&mut sender), []);
    assert_eq!(sender.backlog(Lane::Critical), 3);
    assert_eq!(sender.acked(Lane::Critical), 2);
}

#[test]
fn batches_start_after_the_relay_watermark() {
    let t0 = origin();
    let mut sender = dialed(config(3, 2), [10, 2, 0], [1, 0, 0], t0);
    let welcomed = SenderEvent::Welcomed { relay_id: "relay-1".into() };
    let acked = |lane, through| SenderEvent::Acked { lane, through };
    check(
        &mut sender,
        welcome([4, 2, 0]),
        // Critical first, then standard; window 2 of at most 3 events each.
        &[b(Lane::Critical, 5, 3), b(Lane::Critical, 8, 3)],
        &[acked(Lane::Critical, 4), acked(Lane::Standard, 2), welcomed],
    );
    assert_eq!(sender.acked(Lane::Critical), 4);
    assert_eq!(sender.backlog(Lane::Critical), 6);
    assert_eq!(sender.backlog(Lane::Standard), 0);
}

#[test]
fn relay_limits_narrow_the_configured_ones() {
    let t0 = origin();
    let mut sender = dialed(config(4, 3), [20, 0, 0], [0; 3], t0);
    let mut narrow = welcome([0; 3]);
    if let Message::Welcome(w) = &mut narrow {
        w.limits = Limits { batch_events_max: 2, batches_in_flight_max: 100, ..Limits::default() };
    }
    sender.handle_message(narrow, t0).unwrap();
    assert_eq!(
        transmits(&mut sender),
        [b(Lane::Critical, 1, 2), b(Lane::Critical, 3, 2), b(Lane::Critical, 5, 2)]
    );
}

#[test]
fn zero_limits_still_make_progress() {
    let mut sender = ready(config(0, 0), [2, 0, 0], [0; 3], origin());
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 1, 1)]);
}

#[test]
fn acks_are_cumulative() {
    let mut sender = ready(config(3, 2), [10, 0, 0], [4, 0, 0], origin());
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 5, 3), b(Lane::Critical, 8, 3)]);
    let acked = |through| SenderEvent::Acked { lane: Lane::Critical, through };

    // Part of the first batch: an event, but the window stays full.
    check(&mut sender, ack(Lane::Critical, 6), &[], &[acked(6)]);
    // Repeats and older acks change nothing.
    check(&mut sender, ack(Lane::Critical, 6), &[], &[]);
    check(&mut sender, ack(Lane::Critical, 5), &[], &[]);
    // The rest of the first batch frees a slot; the head is reached, so nothing to send.
    check(&mut sender, ack(Lane::Critical, 7), &[], &[acked(7)]);
    sender.handle_appended(Lane::Critical, 20);
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 11, 3)]);
    // One ack across both batches in flight frees both slots.
    check(
        &mut sender,
        ack(Lane::Critical, 13),
        &[b(Lane::Critical, 14, 3), b(Lane::Critical, 17, 3)],
        &[acked(13)],
    );
    assert_eq!(sender.backlog(Lane::Critical), 7);
    assert_eq!(
        sender.handle_message(ack(Lane::Critical, 20), origin()),
        Err(ProtocolViolation::AckBeyondSent { lane: Lane::Critical, through: 20, sent: 19 })
    );
}

#[test]
fn resync_rewinds_the_lane() {
    let mut sender = ready(config(3, 2), [10, 0, 0], [4, 0, 0], origin());
    transmits(&mut sender);
    check(&mut sender, resync(Lane::Critical, 6), &[b(Lane::Critical, 6, 3), b(Lane::Critical, 9, 2)], &[]);
    // Never before what the relay acknowledged.
    check(
        &mut sender,
        ack(Lane::Critical, 8),
        &[],
        &[SenderEvent::Acked { lane: Lane::Critical, through: 8 }],
    );
    check(&mut sender, resync(Lane::Critical, 5), &[b(Lane::Critical, 9, 2)], &[]);
    assert_eq!(
        sender.handle_message(resync(Lane::Critical, 12), origin()),
        Err(ProtocolViolation::ResyncBeyondSent { lane: Lane::Critical, from: 12, sent: 10 })
    );
    // Resending from the next unsent seq is allowed and changes nothing.
    check(&mut sender, resync(Lane::Critical, 11), &[], &[]);
}

#[test]
fn refusals_surface_as_events() {
    let t0 = origin();
    let mut sender = dialed(config(8, 2), [3, 0, 0], [0; 3], t0);
    let refuse = Refuse { reason: RefuseReason::IdentityMismatch, message: "hello claims x".into() };
    check(&mut sender, Message::Refuse(refuse.clone()), &[], &[SenderEvent::Refused(refuse)]);
    assert!(!sender.is_ready());

    // A Welcome from a relay of another region is refused by the node itself.
    let mut other = welcome([0; 3]);
    if let Message::Welcome(w) = &mut other {
        w.region = "us-east".parse().unwrap();
    }
    sender.handle_message(other, t0).unwrap();
    assert_eq!(transmits(&mut sender), []);
    match &events(&mut sender)[..] {
        [SenderEvent::Refused(r)] => {
            assert_eq!(r.reason, RefuseReason::WrongRegion);
            assert!(r.message.contains("us-east"), "{r}");
        }
        other => panic!("expected one refusal, got {other:?}"),
    }
    assert!(!sender.is_ready());
}

#[test]
fn messages_out_of_place_are_violations() {
    let t0 = origin();
    let mut sender = Sender::new(config(8, 2), PerLane([3, 0, 0]), PerLane::default(), t0);
    let unexpected = |what| Err(ProtocolViolation::Unexpected(what));
    assert_eq!(sender.handle_message(welcome([0; 3]), t0), unexpected("welcome outside the handshake"));
    assert_eq!(sender.handle_message(ack(Lane::Critical, 1), t0), unexpected("ack"));
    assert_eq!(sender.handle_message(resync(Lane::Critical, 1), t0), unexpected("resync"));

    let mut sender = ready(config(8, 2), [3, 0, 0], [0; 3], t0);
    assert_eq!(sender.handle_message(welcome([0; 3]), t0), unexpected("welcome outside the handshake"));
    let batch =
        Message::Batch(crate::wire::Batch { lane: Lane::Bulk, first_seq: Seq::FIRST, events: Vec::new() });
    assert_eq!(sender.handle_message(batch, t0), unexpected("a node-to-relay message"));
}

#[test]
fn watermark_past_head_is_a_violation() {
    let t0 = origin();
    let mut sender = dialed(config(8, 2), [3, 0, 0], [0; 3], t0);
    assert_eq!(
        sender.handle_message(welcome([0, 1, 0]), t0),
        Err(ProtocolViolation::WatermarkAhead { lane: Lane::Standard, watermark: 1, head: 0 })
    );
}

#[test]
fn a_relay_that_lost_its_store_gets_everything_again() {
    let t0 = origin();
    let mut sender = dialed(config(8, 2), [5, 0, 0], [5, 0, 0], t0);
    sender.handle_message(welcome([2, 0, 0]), t0).unwrap();
    assert_eq!(
        events(&mut sender),
        [
            // Reported, not silently accepted (FAULTS.md A4).
            SenderEvent::RelayRegressed { lane: Lane::Critical, acked: 5, watermark: 2 },
            SenderEvent::Acked { lane: Lane::Critical, through: 2 },
            SenderEvent::Welcomed { relay_id: "relay-1".into() }
        ]
    );
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 3, 3)]);
    assert_eq!(sender.acked(Lane::Critical), 2);
}

#[test]
fn disconnect_forgets_what_was_in_flight() {
    let t0 = origin();
    let mut rng = StdRng::seed_from_u64(7);
    let mut sender = ready(config(2, 2), [10, 0, 0], [0; 3], t0);
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 1, 2), b(Lane::Critical, 3, 2)]);
    sender.handle_message(ack(Lane::Critical, 3), t0).unwrap();
    // The batch this ack freed room for is queued but never polled before the link drops.
    sender.handle_disconnected(t0, &mut rng);
    assert!(!sender.is_ready());
    assert_eq!(transmits(&mut sender), []);
    let at = sender.poll_timeout().unwrap();
    assert!(at <= t0 + sender.config.backoff_base, "first delay is bounded by the base");
    sender.handle_timeout(at);
    sender.handle_connected(at);
    let hello = transmits(&mut sender);
    assert!(matches!(hello[..], [Transmit::Control(Message::Hello(_))]), "{hello:?}");
    sender.handle_message(welcome([3, 0, 0]), at).unwrap();
    assert_eq!(transmits(&mut sender), [b(Lane::Critical, 4, 2), b(Lane::Critical, 6, 2)]);
}

#[test]
fn a_failed_dial_waits_for_the_backoff() {
    let t0 = origin();
    let mut rng = StdRng::seed_from_u64(1);
    let mut sender = Sender::new(config(8, 2), PerLane::default(), PerLane::default(), t0);
    sender.handle_timeout(t0);
    events(&mut sender);
    sender.handle_disconnected(t0, &mut rng);
    let at = sender.poll_timeout().unwrap();
    if at > t0 {
        sender.handle_timeout(at - Duration::from_micros(1));
        assert_eq!(events(&mut sender), []);
    }
    sender.handle_timeout(at);
    assert_eq!(events(&mut sender), [SenderEvent::Connect]);
}

#[test]
fn backoff_spaces_unwelcomed_dials_from_their_starts_and_a_lost_connection_from_its_end() {
    let config = SenderConfig { backoff_base: ms(1000), backoff_max: ms(1000), ..config(8, 2) };
    let t0 = origin();
    for seed in 0..50 {
        // A dial that waited out a 2 s timeout has waited longer than any backoff: the next
        // one goes at once.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sender = Sender::new(config.clone(), PerLane::default(), PerLane::default(), t0);
        sender.handle_timeout(t0);
        assert_eq!(events(&mut sender), [SenderEvent::Connect]);
        let timed_out = t0 + ms(2000);
        sender.handle_disconnected(timed_out, &mut rng);
        assert_eq!(sender.poll_timeout(), Some(timed_out), "seed {seed}");
        // A dial that failed fast waits out the rest of the backoff from its start.
        sender.handle_timeout(timed_out);
        events(&mut sender);
        let failed = timed_out + ms(10);
        sender.handle_disconnected(failed, &mut rng);
        let at = sender.poll_timeout().unwrap();
        assert!(at >= failed && at <= timed_out + ms(1000), "seed {seed}: {at:?}");
        // A connection that was welcomed waits from its end, however long ago it was dialled.
        sender.handle_timeout(at);
        sender.handle_connected(at);
        sender.handle_message(welcome([0; 3]), at).unwrap();
        let lost = at + ms(60_000);
        sender.handle_disconnected(lost, &mut rng);
        let again = sender.poll_timeout().unwrap();
        assert!(again >= lost && again <= lost + ms(1000), "seed {seed}: {again:?}");
    }
    // Over the seeds, the welcomed case's delay is full jitter from the end, not zero.
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let waits: Vec<Duration> = (0..200)
        .map(|_| {
            let mut sender = ready(config.clone(), [0; 3], [0; 3], t0);
            let lost = t0 + ms(60_000);
            sender.handle_disconnected(lost, &mut rng);
            sender.poll_timeout().unwrap() - lost
        })
        .collect();
    assert!(waits.iter().max().unwrap() >= &ms(900), "{waits:?}");
}

#[test]
fn backoff_grows_to_the_cap_with_full_jitter() {
    let config = SenderConfig { backoff_base: ms(100), backoff_max: ms(3000), ..config(8, 2) };
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let t0 = origin();
    for failures in 1..=12u32 {
        let bound = (config.backoff_base * 2u32.pow(failures - 1)).min(config.backoff_max);
        let mut delays = Vec::new();
        for _ in 0..200 {
            let mut sender = Sender::new(config.clone(), PerLane::default(), PerLane::default(), t0);
            let mut now = t0;
            let mut delay = Duration::ZERO;
            for _ in 0..failures {
                sender.handle_timeout(now);
                sender.handle_disconnected(now, &mut rng);
                let at = sender.poll_timeout().unwrap();
                delay = at - now;
                now = at;
            }
            delays.push(delay);
        }
        let max = delays.iter().max().unwrap();
        let min = delays.iter().min().unwrap();
        assert!(*max <= bound, "after {failures} failures: {max:?} is over the bound {bound:?}");
        // Full jitter: the delays spread over the whole range, from near zero to near the bound.
        assert!(*max >= bound * 9 / 10, "after {failures} failures: longest {max:?} of bound {bound:?}");
        assert!(*min <= bound / 10, "after {failures} failures: shortest {min:?} of bound {bound:?}");
    }
}

#[test]
fn a_welcome_resets_the_backoff() {
    let config = SenderConfig { backoff_base: ms(100), backoff_max: ms(60_000), ..config(8, 2) };
    let t0 = origin();
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sender = Sender::new(config.clone(), PerLane::default(), PerLane::default(), t0);
        let mut now = t0;
        for _ in 0..10 {
            sender.handle_timeout(now);
            sender.handle_disconnected(now, &mut rng);
            now = sender.poll_timeout().unwrap();
        }
        sender.handle_timeout(now);
        sender.handle_connected(now);
        sender.handle_message(welcome([0; 3]), now).unwrap();
        sender.handle_disconnected(now, &mut rng);
        let delay = sender.poll_timeout().unwrap() - now;
        assert!(delay <= config.backoff_base, "seed {seed}: {delay:?} after a welcome");
    }
}

fn busy(retry_after_ms: u32) -> Message {
    Message::Refuse(Refuse {
        reason: RefuseReason::Busy { retry_after_ms },
        message: format!("relay relay-1 is at its connection limit; retry after {retry_after_ms} ms"),
    })
}

/// For each of `seeds` seeds: the seed, a sender with nothing stored that may dial at
/// `t0`, and the seeded rng of its jitter.
fn seeded(config: &SenderConfig, seeds: u64, t0: Instant) -> impl Iterator<Item = (u64, Sender, StdRng)> {
    (0..seeds).map(move |seed| {
        let sender = Sender::new(config.clone(), PerLane::default(), PerLane::default(), t0);
        (seed, sender, StdRng::seed_from_u64(seed))
    })
}

/// The delay `sender` plans after a refusal `refuse` on a fresh connection at `now`.
fn delay_after(sender: &mut Sender, refuse: Message, now: Instant, rng: &mut StdRng) -> Duration {
    sender.handle_timeout(now);
    assert_eq!(events(sender), [SenderEvent::Connect]);
    sender.handle_connected(now);
    sender.handle_message(refuse, now).unwrap();
    assert!(matches!(events(sender)[..], [SenderEvent::Refused(_)]));
    sender.handle_disconnected(now, rng);
    sender.poll_timeout().unwrap() - now
}

#[test]
fn a_busy_relay_is_left_alone_for_its_hint_plus_full_jitter() {
    let t0 = origin();
    let hint = ms(5_000);
    let mut delays = Vec::new();
    for (seed, mut sender, mut rng) in seeded(&config(8, 2), 1_000, t0) {
        let delay = delay_after(&mut sender, busy(5_000), t0, &mut rng);
        assert!(delay >= hint, "seed {seed}: {delay:?} is sooner than the hint");
        assert!(delay <= hint * 2, "seed {seed}: {delay:?} is over twice the hint");
        delays.push(delay);
    }
    // Spread over the whole of [hint, 2 * hint], so a crowd turned away together does
    // not come back together: about a tenth in each tenth of the range.
    delays.sort();
    assert!(delays[0] <= hint + hint / 100, "shortest {:?}", delays[0]);
    assert!(delays[999] >= hint * 2 - hint / 100, "longest {:?}", delays[999]);
    for tenth in 0..10u32 {
        let (from, to) = (hint + hint * tenth / 10, hint + hint * (tenth + 1) / 10);
        let n = delays.iter().filter(|d| **d >= from && **d < to).count();
        assert!((50..=150).contains(&n), "{n} of 1000 delays in [{from:?}, {to:?})");
    }
}

#[test]
fn a_busy_hint_applies_once_and_other_refusals_keep_the_backoff() {
    let config = SenderConfig { backoff_base: ms(100), backoff_max: ms(1_000), ..config(8, 2) };
    let t0 = origin();
    for (seed, mut sender, mut rng) in seeded(&config, 100, t0) {
        let mut now = t0;
        // A refusal for another reason: the ordinary first backoff.
        let mismatch = Refuse { reason: RefuseReason::IdentityMismatch, message: "hello claims x".into() };
        let delay = delay_after(&mut sender, Message::Refuse(mismatch), now, &mut rng);
        assert!(delay <= config.backoff_base, "seed {seed}: {delay:?} after a mismatch");
        now += delay;
        // Busy: the hint, even though the backoff alone would be shorter.
        let delay = delay_after(&mut sender, busy(2_000), now, &mut rng);
        assert!((ms(2_000)..=ms(4_000)).contains(&delay), "seed {seed}: {delay:?} after busy");
        now += delay;
        // The next failure is a plain one (a lost connection): the backoff again, which
        // kept growing underneath (third failure: bound of 400 ms).
        sender.handle_timeout(now);
        sender.handle_connected(now);
        sender.handle_disconnected(now, &mut rng);
        let delay = sender.poll_timeout().unwrap() - now;
        assert!(delay <= ms(400), "seed {seed}: {delay:?} after a plain failure");
    }
}

#[test]
fn busy_hints_are_capped_and_a_zero_hint_is_no_hint() {
    let config = SenderConfig { backoff_base: ms(100), retry_after_max: ms(60_000), ..config(8, 2) };
    let t0 = origin();
    for (seed, mut sender, mut rng) in seeded(&config, 100, t0) {
        let delay = delay_after(&mut sender, busy(u32::MAX), t0, &mut rng);
        assert!((ms(60_000)..=ms(120_000)).contains(&delay), "seed {seed}: {delay:?} for a 49-day hint");
    }
    for (seed, mut sender, mut rng) in seeded(&config, 100, t0) {
        let delay = delay_after(&mut sender, busy(0), t0, &mut rng);
        assert!(delay <= config.backoff_base, "seed {seed}: {delay:?} for a zero hint");
    }
}

// Window and batch-size rules under arbitrary appends and acks.

#[derive(Debug, Clone)]
enum Op {
    Append {
        lane: Lane,
        events: u64,
    },
    /// Ack through a point within what was sent, as a fraction in per mille.
    Ack {
        lane: Lane,
        per_mille: u64,
    },
    Resync {
        lane: Lane,
        per_mille: u64,
    },
    Reconnect {
        watermark_per_mille: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lane = || prop::sample::select(Lane::ALL.to_vec());
    prop_oneof![
        3 => (lane(), 0..20u64).prop_map(|(lane, events)| Op::Append { lane, events }),
        4 => (lane(), 0..=1000u64).prop_map(|(lane, per_mille)| Op::Ack { lane, per_mille }),
        1 => (lane(), 0..=1000u64).prop_map(|(lane, per_mille)| Op::Resync { lane, per_mille }),
        1 => (0..=1000u64).prop_map(|watermark_per_mille| Op::Reconnect { watermark_per_mille }),
    ]
}

/// What the test knows of one lane from the outside.
#[derive(Debug, Default, Clone)]
struct Seen {
    head: u64,
    /// The relay's durable watermark (what the test acked or welcomed with).
    acked: u64,
    /// Highest seq put on the wire in this connection.
    sent: u64,
    /// `(first, last)` of the batches sent in this connection, oldest first.
    batches: Vec<(u64, u64)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn window_and_batch_limits_hold(
        batch_events_max in 1..6u32,
        window in 1..4u32,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let t0 = origin();
        let mut rng = StdRng::seed_from_u64(9);
        let mut sender = ready(config(batch_events_max, window), [0; 3], [0; 3], t0);
        let mut seen = PerLane::<Seen>::default();
        for op in ops {
            match op {
                Op::Append { lane, events } => {
                    seen.get_mut(lane).head += events;
                    sender.handle_appended(lane, seen.get(lane).head);
                }
                Op::Ack { lane, per_mille } => {
                    let s = seen.get_mut(lane);
                    let through = s.acked + (s.sent.saturating_sub(s.acked)) * per_mille / 1000;
                    if let Some(through_seq) = Seq::new(through) {
                        sender.handle_message(Message::Ack(Ack { lane, through_seq }), t0).unwrap();
                        s.acked = s.acked.max(through);
                        s.batches.retain(|&(_, last)| last > s.acked);
                    }
                }
                Op::Resync { lane, per_mille } => {
                    let s = seen.get_mut(lane);
                    let from = s.acked + 1 + (s.sent - s.acked) * per_mille / 1000;
                    sender.handle_message(resync(lane, from), t0).unwrap();
                    // What was in flight from `from` on is forgotten and sent again.
                    s.batches.clear();
                    s.sent = from.max(s.acked + 1) - 1;
                }
                Op::Reconnect { watermark_per_mille } => {
                    sender.handle_disconnected(t0, &mut rng);
                    let at = sender.poll_timeout().unwrap();
                    sender.handle_timeout(at);
                    sender.handle_connected(at);
                    prop_assert!(matches!(transmits(&mut sender)[..], [Transmit::Control(Message::Hello(_))]));
                    let marks = PerLane::from_fn(|lane| {
                        let s = seen.get(lane);
                        s.acked + (s.head - s.acked) * watermark_per_mille / 1000
                    });
                    sender.handle_message(welcome(marks.0), at).unwrap();
                    for lane in Lane::ALL {
                        let s = seen.get_mut(lane);
                        s.acked = *marks.get(lane);
                        s.sent = s.acked;
                        s.batches.clear();
                    }
                }
            }
            for t in transmits(&mut sender) {
                let Transmit::Batch { lane, first_seq, count } = t else {
                    panic!("unexpected {t:?}");
                };
                let s = seen.get_mut(lane);
                prop_assert!(count >= 1 && count <= batch_events_max, "batch of {count}");
                prop_assert_eq!(first_seq.get(), s.sent + 1, "batches are contiguous");
                let last = s.sent + u64::from(count);
                prop_assert!(last <= s.head, "sent {last} past head {}", s.head);
                s.sent = last;
                s.batches.push((first_seq.get(), last));
                prop_assert!(s.batches.len() <= window as usize, "{} batches in flight", s.batches.len());
            }
            for event in events(&mut sender) {
                if let SenderEvent::Acked { lane, through } = event {
                    prop_assert_eq!(through, seen.get(lane).acked);
                }
            }
            for lane in Lane::ALL {
                let s = seen.get(lane);
                prop_assert_eq!(sender.acked(lane), s.acked);
                prop_assert_eq!(sender.backlog(lane), s.head - s.acked);
                // A window with room and events to send is never left idle.
                if s.batches.len() < window as usize {
                    prop_assert_eq!(s.sent, s.head, "lane {} idles with room in its window", lane);
                }
            }
        }
    }
}
