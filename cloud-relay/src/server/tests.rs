//! Server tests: the retry hint rule and the frame limit of connections over the limit.

use super::*;

#[test]
fn the_retry_hint_grows_with_the_connections_over_the_limit() {
    assert_eq!(busy_retry_after_ms(1), 1_000);
    assert_eq!(busy_retry_after_ms(2), 2_000);
    assert_eq!(busy_retry_after_ms(BUSY_SLOTS), 64_000);
    // Out of range counts are held to the range, never zero and never past the top.
    assert_eq!(busy_retry_after_ms(0), 1_000);
    assert_eq!(busy_retry_after_ms(usize::MAX), 64_000);
    let hints: Vec<u32> = (1..=BUSY_SLOTS).map(busy_retry_after_ms).collect();
    assert!(hints.windows(2).all(|w| w[0] < w[1]), "{hints:?}");
}

#[test]
fn the_largest_hello_fits_a_busy_connection_frame() {
    let name = "n".repeat(sync_protocol::ids::NAME_BYTES_MAX);
    let hello = Hello {
        version: u16::MAX,
        node_id: name.parse().unwrap(),
        region: name.parse().unwrap(),
        epoch: Epoch(u64::MAX),
        heads: PerLane([u64::MAX; 3]),
        inventory_version: u64::MAX,
    };
    let frame = Message::Hello(hello).encode();
    assert!(frame.len() <= BUSY_FRAME_BYTES_MAX as usize / 10, "a hello of {} bytes", frame.len());
}
