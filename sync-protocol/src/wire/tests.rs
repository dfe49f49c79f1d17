//! Framing and codec tests: every message round-trips, bad frames are refused with a
//! typed error before anything large is allocated, and no input makes the decoder panic.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::event::{
    ATTR_KEY_BYTES_MAX, ATTR_VALUE_BYTES_MAX, ATTRS_MAX, Event, Kind, QTY_ABS_MAX, TEXT_BYTES_MAX,
};
use crate::event::{DELTAS_MAX, RECEIVED_AT_MS_MAX};
use crate::ids::{EVENT_ID_BYTES_MAX, ITEM_BYTES_MAX};
use crate::inventory::{DELTA_ABS_MAX, Delta, Inventory, StockKey, TRANSFER_TO, deltas_of};

/// The event tests' sample, with an order and an attribute so that every field travels.
fn event(event_id: &str, kind: Kind, qty: i64) -> Event {
    let mut event = crate::event::tests::sample(event_id, kind, qty);
    event.order_id = Some("order 17".into());
    event.attrs = BTreeMap::from([("carrier".into(), "dhl".into())]);
    event
}

fn record(seq: u64) -> Record {
    let event = event(&format!("ev-{seq}"), Kind::Ship, 2);
    let delta =
        Delta { key: StockKey { sku: event.sku.clone(), location: event.location.clone() }, change: -2 };
    Record { received_at_ms: seq.min(RECEIVED_AT_MS_MAX), event, deltas: vec![delta] }
}

fn hello() -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id: "store-0042".parse().unwrap(),
        region: "eu-west".parse().unwrap(),
        epoch: Epoch(0xdead_beef),
        heads: PerLane([17, 0, u64::MAX]),
        inventory_version: 7,
    })
}

fn welcome() -> Message {
    Message::Welcome(Welcome {
        relay_id: "relay-1".into(),
        region: "eu-west".parse().unwrap(),
        watermarks: PerLane([3, 0, 1 << 40]),
        limits: Limits::default(),
    })
}

fn refuse() -> Message {
    Message::Refuse(Refuse { reason: RefuseReason::WrongRegion, message: "node of us-east".into() })
}

fn batch(lane: Lane, first: u64, count: u64) -> Message {
    Message::Batch(Batch {
        lane,
        first_seq: Seq::new(first).unwrap(),
        events: (0..count).map(|i| record(first + i)).collect(),
    })
}

fn ack(lane: Lane, through: u64) -> Message {
    Message::Ack(Ack { lane, through_seq: Seq::new(through).unwrap() })
}

fn resync(lane: Lane, from: u64) -> Message {
    Message::Resync(Resync { lane, from_seq: Seq::new(from).unwrap() })
}

/// One message of each variant, in variant order.
fn one_of_each() -> Vec<Message> {
    vec![
        hello(),
        welcome(),
        refuse(),
        batch(Lane::Standard, 5, 3),
        ack(Lane::Bulk, 9),
        resync(Lane::Critical, 4),
        Message::Inventory(InventoryUpdate { through_version: 3, state: Inventory::new(), complete: true }),
        repair(Lane::Bulk, 1025, 2),
        Message::Repaired(Repaired {
            lane: Lane::Bulk,
            first_seq: Seq::new(1025).unwrap(),
            count: 2,
            inserted: 1,
            present: 1,
            differing: 0,
            beyond_watermark: 0,
        }),
    ]
}

fn repair(lane: Lane, first: u64, count: u64) -> Message {
    let Message::Batch(batch) = batch(lane, first, count) else { unreachable!() };
    Message::Repair(batch)
}

#[test]
fn a_repair_is_checked_like_a_batch() {
    let Message::Repair(mut bad) = repair(Lane::Critical, 7, 1) else { unreachable!() };
    bad.events[0].deltas[0].change += 1;
    check_refused(body(&Message::Repair(bad).encode()), "deltas");
}

fn body(frame: &[u8]) -> &[u8] {
    &frame[LENGTH_PREFIX_BYTES..]
}

/// Encodes `msg`, checks the prefix against the body, and decodes it back both with
/// `decode_body` and through a `FrameDecoder`.
#[track_caller]
fn check_round_trip(msg: &Message) {
    let frame = msg.encode();
    let prefix = *frame.first_chunk::<LENGTH_PREFIX_BYTES>().unwrap();
    assert_eq!(decode_length(prefix, FRAME_BYTES_MAX), Ok(frame.len() - LENGTH_PREFIX_BYTES));
    assert_eq!(decode_body(body(&frame)).as_ref(), Ok(msg));

    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.push(&frame);
    assert_eq!(decoder.next_message(), Ok(Some(msg.clone())));
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
}

/// Decodes `body` and expects an error of the class `expect` names.
#[track_caller]
fn check_refused(body: &[u8], expect: &str) {
    match (decode_body(body), expect) {
        (Err(DecodeError::Malformed(_)), "malformed")
        | (Err(DecodeError::TrailingBytes(_)), "trailing")
        | (Err(DecodeError::Invalid(_)), "invalid") => {}
        (Err(DecodeError::Invalid(e)), what) if e.what == what => {}
        (got, _) => panic!("{body:02x?}: got {got:?}, expected a {expect} error"),
    }
}

#[test]
fn every_variant_round_trips() {
    for msg in one_of_each() {
        check_round_trip(&msg);
    }
    check_round_trip(&Message::Refuse(Refuse { reason: RefuseReason::Superseded, message: String::new() }));
    check_round_trip(&batch(Lane::Bulk, u64::MAX, 1));
}

#[test]
fn variant_indices_never_move() {
    // postcard encodes a variant by its index: a reorder would silently change the wire.
    for (index, msg) in one_of_each().iter().enumerate() {
        assert_eq!(body(&msg.encode())[0], index as u8, "{msg:?}");
    }
    let reasons = [
        RefuseReason::UnsupportedVersion,
        RefuseReason::IdentityMismatch,
        RefuseReason::WrongRegion,
        RefuseReason::Superseded,
    ];
    for (index, reason) in reasons.into_iter().enumerate() {
        let frame = Message::Refuse(Refuse { reason, message: String::new() }).encode();
        assert_eq!(body(&frame), [2, index as u8, 0], "{reason:?}");
    }
    // The hint follows its variant's index as a varint: 300 is 0xac 0x02.
    let busy = Message::Refuse(Refuse {
        reason: RefuseReason::Busy { retry_after_ms: 300 },
        message: String::new(),
    });
    assert_eq!(body(&busy.encode()), [2, 4, 0xac, 0x02, 0]);
}

#[test]
fn refuse_reasons_have_stable_names() {
    let refusal = Refuse { reason: RefuseReason::IdentityMismatch, message: "hello claims x".into() };
    assert_eq!(refusal.to_string(), "refused (identity_mismatch): hello claims x");
    assert_eq!(RefuseReason::UnsupportedVersion.as_str(), "unsupported_version");
    assert_eq!(RefuseReason::WrongRegion.as_str(), "wrong_region");
    assert_eq!(RefuseReason::Superseded.as_str(), "superseded");
    assert_eq!(RefuseReason::Busy { retry_after_ms: 1_000 }.as_str(), "busy");
}

#[test]
fn length_prefix_is_big_endian_and_bounded() {
    assert_eq!(decode_length([0, 0, 1, 2], 1024), Ok(258));
    assert_eq!(decode_length([0, 0, 4, 0], 1024), Ok(1024));
    assert_eq!(decode_length([0, 0, 4, 1], 1024), Err(DecodeError::TooLong { len: 1025, max: 1024 }));
    assert_eq!(
        decode_length([0xff; 4], FRAME_BYTES_MAX),
        Err(DecodeError::TooLong { len: u32::MAX as usize, max: FRAME_BYTES_MAX })
    );
    assert_eq!(decode_length([0; 4], 0), Ok(0));
}

#[test]
fn decoder_refuses_a_long_frame_from_its_prefix_alone() {
    // Only the 4 prefix bytes have arrived: the decoder must refuse on them rather than
    // wait for (and buffer) the gigabyte they announce.
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&(1u32 << 30).to_be_bytes());
    assert_eq!(decoder.next_message(), Err(DecodeError::TooLong { len: 1 << 30, max: 1024 }));
    assert_eq!(decoder.buffered(), LENGTH_PREFIX_BYTES);

    // A frame exactly at the limit is accepted.
    let frame = ack(Lane::Critical, 1).encode();
    let mut decoder = FrameDecoder::new(frame.len() - LENGTH_PREFIX_BYTES);
    decoder.push(&frame);
    assert_eq!(decoder.next_message(), Ok(Some(ack(Lane::Critical, 1))));
    let mut decoder = FrameDecoder::new(frame.len() - LENGTH_PREFIX_BYTES - 1);
    decoder.push(&frame);
    assert!(matches!(decoder.next_message(), Err(DecodeError::TooLong { .. })));
}

#[test]
fn trailing_bytes_are_refused() {
    for msg in one_of_each() {
        let mut bytes = body(&msg.encode()).to_vec();
        bytes.push(0);
        assert_eq!(decode_body(&bytes), Err(DecodeError::TrailingBytes(1)), "{msg:?}");
        bytes.extend_from_slice(&[7, 7]);
        assert_eq!(decode_body(&bytes), Err(DecodeError::TrailingBytes(3)), "{msg:?}");
    }
    // The same through the frame decoder: the prefix counts the extra byte.
    let mut bytes = body(&ack(Lane::Bulk, 3).encode()).to_vec();
    bytes.push(0);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.push(&(bytes.len() as u32).to_be_bytes());
    decoder.push(&bytes);
    assert_eq!(decoder.next_message(), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn truncated_bodies_are_malformed() {
    for msg in one_of_each() {
        let frame = msg.encode();
        let full = body(&frame);
        for len in 0..full.len() {
            check_refused(&full[..len], "malformed");
        }
    }
}

#[test]
fn truncated_frames_wait_for_more_bytes() {
    let frame = batch(Lane::Critical, 1, 2).encode();
    for cut in 0..frame.len() {
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        decoder.push(&frame[..cut]);
        assert_eq!(decoder.next_message(), Ok(None), "cut at {cut}");
        assert_eq!(decoder.buffered(), cut);
        decoder.push(&frame[cut..]);
        assert_eq!(decoder.next_message(), Ok(Some(batch(Lane::Critical, 1, 2))), "cut at {cut}");
    }
}

#[test]
fn unknown_variants_and_bad_values_are_refused() {
    check_refused(&[6], "malformed");
    check_refused(&[0xff, 0xff], "malformed");
    check_refused(&[], "malformed");
    // Lane index 3 does not exist.
    check_refused(&[4, 3, 1], "malformed");
    // Seq 0 is not a Seq.
    check_refused(&[4, 0, 0], "malformed");
    check_refused(&[5, 1, 0], "malformed");
    // An unknown refusal reason.
    check_refused(&[2, 4, 0], "malformed");
}

#[test]
fn names_are_parsed_while_decoding() {
    // Corrupt the node id inside a Hello so that it is no longer `[a-z0-9-]`.
    let frame = hello().encode();
    let at = frame.windows(10).position(|w| w == b"store-0042").unwrap();
    let mut bad = frame.clone();
    bad[at] = b'S';
    check_refused(body(&bad), "malformed");
}

#[test]
fn events_are_validated_while_decoding() {
    let bad = |event: Event| {
        Message::Batch(Batch {
            lane: Lane::Standard,
            first_seq: Seq::FIRST,
            events: vec![record(1), Record { received_at_ms: 0, event, deltas: Vec::new() }],
        })
        .encode()
    };
    check_refused(body(&bad(event("a", Kind::Pick, -1))), "invalid");
    check_refused(body(&bad(event("a", Kind::Receive, QTY_ABS_MAX + 1))), "invalid");
    let mut e = event("a", Kind::Scan, 0);
    e.device_id = Some("tab\there".into());
    check_refused(body(&bad(e)), "invalid");
    let mut e = event("a", Kind::Scan, 0);
    e.attrs = (0..=ATTRS_MAX).map(|i| (format!("k{i}"), String::new())).collect();
    check_refused(body(&bad(e)), "invalid");
}

#[test]
fn extreme_quantities_are_refused_without_panicking() {
    // `i64::MIN` has no absolute value in `i64`: it must be a typed refusal, not an
    // overflow panic in the relay.
    for qty in [i64::MIN, i64::MIN + 1, i64::MAX, -QTY_ABS_MAX - 1] {
        let frame = Message::Batch(Batch {
            lane: Lane::Standard,
            first_seq: Seq::FIRST,
            events: vec![Record {
                received_at_ms: 0,
                event: event("a", Kind::Adjust, qty),
                deltas: Vec::new(),
            }],
        })
        .encode();
        check_refused(body(&frame), "invalid");
    }
}

/// The largest event a scanner can post, as a record: a transfer, which carries the
/// most deltas, with every text field at its limit.
fn largest_record() -> Record {
    let text = |c: char, n: usize| Some(c.to_string().repeat(n));
    let mut attrs: BTreeMap<String, String> = (0..ATTRS_MAX - 1)
        .map(|i| (format!("{i:0>ATTR_KEY_BYTES_MAX$}"), "v".repeat(ATTR_VALUE_BYTES_MAX)))
        .collect();
    attrs.insert(TRANSFER_TO.into(), "m".repeat(ITEM_BYTES_MAX));
    let event = Event {
        event_id: "e".repeat(EVENT_ID_BYTES_MAX).parse().unwrap(),
        kind: Kind::Transfer,
        sku: "s".repeat(ITEM_BYTES_MAX).parse().unwrap(),
        location: "l".repeat(ITEM_BYTES_MAX).parse().unwrap(),
        qty: QTY_ABS_MAX,
        occurred_at: text('o', TEXT_BYTES_MAX),
        device_id: text('d', TEXT_BYTES_MAX),
        shipment_id: text('s', TEXT_BYTES_MAX),
        order_id: text('o', TEXT_BYTES_MAX),
        attrs,
    };
    let deltas = deltas_of(&event, |_| 0).unwrap();
    assert_eq!(deltas.len(), DELTAS_MAX, "a transfer carries the most deltas");
    Record { received_at_ms: RECEIVED_AT_MS_MAX, event, deltas }
}

#[test]
fn largest_batch_fits_in_a_frame() {
    let record = largest_record();
    record.event.validate().unwrap();
    let msg = Message::Batch(Batch {
        lane: Lane::Bulk,
        first_seq: Seq::new(u64::MAX - u64::from(BATCH_EVENTS_MAX)).unwrap(),
        events: vec![record; BATCH_EVENTS_MAX as usize],
    });
    let frame = msg.encode();
    let len = frame.len() - LENGTH_PREFIX_BYTES;
    assert!(len <= FRAME_BYTES_MAX, "largest batch is {len} bytes, over {FRAME_BYTES_MAX}");
    assert_eq!(Limits::default().frame_bytes_max as usize, FRAME_BYTES_MAX);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    decoder.push(&frame);
    assert_eq!(decoder.next_message(), Ok(Some(msg)));
}

#[test]
fn batch_last_seq() {
    let b = |first: u64, count: u64| match batch(Lane::Critical, first, count) {
        Message::Batch(b) => b,
        _ => unreachable!(),
    };
    assert_eq!(b(5, 3).last_seq(), Seq::new(7));
    assert_eq!(b(5, 1).last_seq(), Seq::new(5));
    assert_eq!(b(5, 0).last_seq(), None);
    assert_eq!(b(u64::MAX, 1).last_seq(), Seq::new(u64::MAX));
    let mut overflow = b(u64::MAX, 1);
    overflow.events.push(record(0));
    assert_eq!(overflow.last_seq(), None);
}

/// A stream of several frames, and the messages in it.
fn stream() -> (Vec<u8>, Vec<Message>) {
    let mut msgs = one_of_each();
    msgs.push(batch(Lane::Bulk, 100, 7));
    msgs.push(ack(Lane::Critical, 1));
    let bytes = msgs.iter().flat_map(Message::encode).collect();
    (bytes, msgs)
}

/// Feeds `bytes` to a decoder in chunks of the given sizes (cycled), draining after each.
fn decode_in_chunks(bytes: &[u8], sizes: &[usize]) -> Result<Vec<Message>, DecodeError> {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut out = Vec::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        decoder.push(chunk);
        while let Some(msg) = decoder.next_message()? {
            out.push(msg);
        }
    }
    assert_eq!(decoder.buffered(), 0, "bytes left in the decoder");
    Ok(out)
}

#[test]
fn decoder_fed_byte_by_byte() {
    let (bytes, msgs) = stream();
    assert_eq!(decode_in_chunks(&bytes, &[1]), Ok(msgs.clone()));
    assert_eq!(decode_in_chunks(&bytes, &[bytes.len()]), Ok(msgs.clone()));
    assert_eq!(decode_in_chunks(&bytes, &[3, 1, 4, 1, 5, 9, 2, 6]), Ok(msgs));
}

// Strategies for valid messages.

fn printable(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~]{{1,{max}}}")).unwrap()
}

fn name<T: std::str::FromStr<Err = ParseError> + std::fmt::Debug>() -> impl Strategy<Value = T> {
    "[a-z0-9-]{1,64}".prop_map(|s| s.parse().unwrap())
}

fn lane() -> impl Strategy<Value = Lane> {
    prop::sample::select(Lane::ALL.to_vec())
}

fn seq() -> impl Strategy<Value = Seq> {
    (1..=u64::MAX).prop_map(|n| Seq::new(n).unwrap())
}

fn per_lane() -> impl Strategy<Value = PerLane<u64>> {
    any::<[u64; 3]>().prop_map(PerLane)
}

fn valid_event() -> impl Strategy<Value = Event> {
    let text = || proptest::option::of(printable(TEXT_BYTES_MAX));
    let attrs = prop::collection::btree_map("[a-z_.]{1,32}", "\\PC{0,64}", 0..=4);
    let kind_qty = prop::sample::select(Kind::ALL.to_vec()).prop_flat_map(|kind| {
        let low = if kind.allows_negative_qty() { -QTY_ABS_MAX } else { 0 };
        (Just(kind), low..=QTY_ABS_MAX)
    });
    (
        printable(EVENT_ID_BYTES_MAX),
        kind_qty,
        printable(ITEM_BYTES_MAX),
        printable(ITEM_BYTES_MAX),
        (text(), text(), text(), text()),
        attrs,
    )
        .prop_map(
            |(
                event_id,
                (kind, qty),
                sku,
                location,
                (occurred_at, device_id, shipment_id, order_id),
                attrs,
            )| {
                Event {
                    event_id: event_id.parse().unwrap(),
                    kind,
                    sku: sku.parse().unwrap(),
                    location: location.parse().unwrap(),
                    qty,
                    occurred_at,
                    device_id,
                    shipment_id,
                    order_id,
                    attrs,
                }
            },
        )
}

fn valid_record() -> impl Strategy<Value = Record> {
    (0..=RECEIVED_AT_MS_MAX, valid_event(), -QTY_ABS_MAX..=QTY_ABS_MAX).prop_map(
        |(received_at_ms, mut event, view)| {
            // The deltas a node would have fixed; a transfer without a destination could not
            // have been accepted, so it becomes a scan.
            let deltas = deltas_of(&event, |_| view).unwrap_or_else(|_| {
                event.kind = Kind::Scan;
                Vec::new()
            });
            Record { received_at_ms, event, deltas }
        },
    )
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        prop::sample::select(vec![
            RefuseReason::UnsupportedVersion,
            RefuseReason::IdentityMismatch,
            RefuseReason::WrongRegion,
            RefuseReason::Superseded,
        ]),
        any::<u32>().prop_map(|retry_after_ms| RefuseReason::Busy { retry_after_ms }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let hello = (any::<u16>(), name(), name(), any::<u64>(), per_lane(), any::<u64>()).prop_map(
        |(version, node_id, region, epoch, heads, inventory_version)| {
            Message::Hello(Hello { version, node_id, region, epoch: Epoch(epoch), heads, inventory_version })
        },
    );
    let limits = any::<(u32, u32, u32)>().prop_map(|(a, b, c)| Limits {
        batch_events_max: a,
        batches_in_flight_max: b,
        frame_bytes_max: c,
    });
    let welcome =
        ("\\PC{0,40}", name(), per_lane(), limits).prop_map(|(relay_id, region, watermarks, limits)| {
            Message::Welcome(Welcome { relay_id, region, watermarks, limits })
        });
    let refuse = (refuse_reason(), "\\PC{0,80}")
        .prop_map(|(reason, message)| Message::Refuse(Refuse { reason, message }));
    let batch = (lane(), seq(), prop::collection::vec(valid_record(), 0..4))
        .prop_map(|(lane, first_seq, events)| Message::Batch(Batch { lane, first_seq, events }));
    let ack = (lane(), seq()).prop_map(|(lane, through_seq)| Message::Ack(Ack { lane, through_seq }));
    let resync = (lane(), seq()).prop_map(|(lane, from_seq)| Message::Resync(Resync { lane, from_seq }));
    prop_oneof![hello, welcome, refuse, batch, ack, resync]
}

/// Whatever the bytes, the decoder answers with a message, a typed error or "more".
fn feed_never_panics(bytes: &[u8], sizes: &[usize], frame_bytes_max: usize) {
    let mut decoder = FrameDecoder::new(frame_bytes_max);
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            return;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // After an error the stream is closed.
                Err(_) => return,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_events_are_valid(event in valid_event()) {
        prop_assert_eq!(event.validate(), Ok(()));
    }

    #[test]
    fn codec_round_trips(msg in message()) {
        let frame = msg.encode();
        prop_assert_eq!(frame.len() - LENGTH_PREFIX_BYTES, u32::from_be_bytes(*frame.first_chunk().unwrap()) as usize);
        prop_assert_eq!(decode_body(body(&frame)), Ok(msg));
    }

    #[test]
    fn chunking_does_not_change_the_messages(
        msgs in prop::collection::vec(message(), 1..6),
        sizes in prop::collection::vec(1..40usize, 1..8),
    ) {
        let bytes: Vec<u8> = msgs.iter().flat_map(Message::encode).collect();
        prop_assert_eq!(decode_in_chunks(&bytes, &sizes), Ok(msgs));
    }

    #[test]
    fn arbitrary_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_body(&bytes);
    }

    #[test]
    fn arbitrary_streams_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        sizes in prop::collection::vec(1..64usize, 1..6),
        max in 0..1024usize,
    ) {
        feed_never_panics(&bytes, &sizes, max);
    }

    #[test]
    fn corrupted_frames_never_panic(
        msgs in prop::collection::vec(message(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        sizes in prop::collection::vec(1..64usize, 1..6),
    ) {
        // Valid frames with a few bytes changed reach deeper into the decoder than
        // random bytes do.
        let mut bytes: Vec<u8> = msgs.iter().flat_map(Message::encode).collect();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        for start in [0, LENGTH_PREFIX_BYTES.min(bytes.len())] {
            let _ = decode_body(&bytes[start..]);
        }
        feed_never_panics(&bytes, &sizes, FRAME_BYTES_MAX);
    }
}

#[test]
fn deltas_must_match_their_event() {
    let frame = |record: Record| {
        Message::Batch(Batch { lane: Lane::Critical, first_seq: Seq::FIRST, events: vec![record] }).encode()
    };
    let mut forged = record(1);
    forged.deltas[0].change = i64::MAX;
    check_refused(body(&frame(forged)), "deltas");
    let mut missing = record(1);
    missing.deltas.clear();
    check_refused(body(&frame(missing)), "deltas");
    let mut count = record(1);
    count.event.kind = Kind::Count;
    count.deltas[0].change = DELTA_ABS_MAX + 1;
    check_refused(body(&frame(count)), "deltas");
    let mut late = record(1);
    late.received_at_ms = RECEIVED_AT_MS_MAX + 1;
    check_refused(body(&frame(late)), "received_at_ms");
}
