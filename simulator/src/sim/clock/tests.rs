//! Tests of the virtual clock and the event queue's ordering.

use std::time::{Duration, Instant};

use super::{Clock, Queue};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_queue_pops_by_time_then_by_insertion() {
    let mut queue = Queue::default();
    queue.push(ms(5), "c");
    queue.push(ms(1), "a");
    queue.push(ms(5), "d");
    queue.push(ms(1), "b");
    let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
    assert_eq!(order, vec![(ms(1), "a"), (ms(1), "b"), (ms(5), "c"), (ms(5), "d")]);
    assert!(queue.is_empty());
}

#[test]
fn the_clock_never_goes_backwards() {
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut clock = Clock::new(base);
    clock.advance_to(ms(10));
    clock.advance_to(ms(3));
    assert_eq!(clock.now(), ms(10));
    assert_eq!(clock.instant() - base, ms(10));
}
