//! Bucket tests in virtual time: the burst, the long-run rate, debts paid back, waiting
//! counted once, and a default that leaves an honest node alone.

use super::*;

/// A fixed origin for virtual time: the bucket only ever compares instants.
fn origin() -> Instant {
    Instant::now()
}

/// A reader that reads all it may whenever it may, for `duration` of virtual time;
/// returns the bytes read and the time it was told to wait.
fn greedy(bucket: &mut Bucket, t0: Instant, duration: Duration) -> (u64, Duration) {
    let (mut now, mut read, mut waited) = (t0, 0u64, Duration::ZERO);
    while now < t0 + duration {
        match bucket.grant(now) {
            Grant::Read(n) => {
                bucket.spend(n, now);
                read += n as u64;
                // Reading takes a little time, as it does on a socket.
                now += Duration::from_micros(10);
            }
            Grant::Wait { wait, .. } => {
                waited += wait;
                now += wait;
            }
        }
    }
    (read, waited)
}

#[test]
fn a_full_bucket_lets_a_burst_through_then_holds_to_the_rate() {
    let t0 = origin();
    let mut bucket = Bucket::new(100_000, t0);
    // A tenth of a second at this rate is less than one read: the burst is one read.
    assert_eq!(bucket.burst_bytes(), READ_CHUNK_BYTES as u64);
    assert_eq!(bucket.grant(t0), Grant::Read(READ_CHUNK_BYTES));
    bucket.spend(READ_CHUNK_BYTES, t0);
    // Empty: wait for a hundredth of a second's worth, 1,000 bytes.
    match bucket.grant(t0) {
        Grant::Wait { wait, throttled } => {
            assert_eq!(wait, Duration::from_millis(10));
            assert_eq!(throttled, wait);
        }
        other => panic!("expected a wait, got {other:?}"),
    }
    assert_eq!(bucket.grant(t0 + Duration::from_millis(10)), Grant::Read(1_000));

    // Over ten seconds a greedy reader gets the rate and the one burst, nothing more.
    let mut bucket = Bucket::new(100_000, t0);
    let (read, waited) = greedy(&mut bucket, t0, Duration::from_secs(10));
    let ceiling = 1_000_000 + READ_CHUNK_BYTES as u64;
    assert!(read <= ceiling + 1_000, "{read} bytes in 10 s at 100,000 B/s");
    assert!(read >= ceiling - 2_000, "{read} bytes in 10 s at 100,000 B/s");
    assert!(waited >= Duration::from_secs(9), "waited {waited:?} of 10 s");
}

#[test]
fn an_overdraft_is_paid_back_before_the_next_read() {
    let t0 = origin();
    let mut bucket = Bucket::new(100_000, t0);
    // A reader granted a chunk may find more behind it on another stream: 1 MB at once.
    bucket.spend(1_000_000, t0);
    match bucket.grant(t0) {
        Grant::Wait { wait, .. } => {
            let expected = (1_000_000.0 - READ_CHUNK_BYTES as f64 + 1_000.0) / 100_000.0;
            assert!((wait.as_secs_f64() - expected).abs() < 1e-6, "{wait:?}, expected {expected} s");
        }
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn readers_waiting_together_count_the_time_once() {
    let t0 = origin();
    let mut bucket = Bucket::new(100_000, t0);
    bucket.spend(READ_CHUNK_BYTES, t0);
    let throttled = |grant| match grant {
        Grant::Wait { throttled, .. } => throttled,
        other => panic!("expected a wait, got {other:?}"),
    };
    // Three streams find the bucket empty at once: 10 ms of being held back, not 30.
    let total: Duration = (0..3).map(|_| throttled(bucket.grant(t0))).sum();
    assert_eq!(total, Duration::from_millis(10));
    // Half-way through, another asks: only the part past the known wait is new.
    let later = throttled(bucket.grant(t0 + Duration::from_millis(5)));
    assert_eq!(later, Duration::ZERO);
}

#[test]
fn the_default_rate_leaves_the_drain_benchmark_alone() {
    // The drain benchmark moves about 140k events of about 100 bytes a second: 14 MB/s.
    // At four times that in steady 64 KiB reads, the default never makes a reader wait.
    let t0 = origin();
    let mut bucket = Bucket::new(crate::config::DEFAULT_NODE_BYTES_PER_SEC_MAX, t0);
    let step = Duration::from_secs_f64(READ_CHUNK_BYTES as f64 / 56_000_000.0);
    let mut now = t0;
    while now < t0 + Duration::from_secs(10) {
        assert_eq!(bucket.grant(now), Grant::Read(READ_CHUNK_BYTES), "at {:?}", now - t0);
        bucket.spend(READ_CHUNK_BYTES, now);
        now += step;
    }
}
