//! The read budget of one node connection: a token bucket that the connection's stream
//! readers share (`node_bytes_per_sec_max`).
//!
//! A reader asks the bucket for a grant before it reads from a QUIC stream, reads at most
//! that much, and spends what it read. While the bucket is empty no stream of the node is
//! read, so the data stays in the node's QUIC send buffer: flow control holds the node
//! back, and nothing piles up in the relay beyond the receive windows ([`crate::tls`]).
//!
//! [`Bucket`] takes time as an argument, so its arithmetic is tested with virtual
//! instants; [`Throttle`] is the shared wrapper that reads the clock and sleeps.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// Most bytes one read takes from a stream, throttled or not.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A token bucket of bytes. Reads may overdraw it (a reader learns how much it read only
/// after the read); the debt is paid back before the next grant.
#[derive(Debug)]
pub struct Bucket {
    bytes_per_sec: f64,
    /// Most tokens saved up: a tenth of a second at the rate, and at least one read.
    burst_bytes: f64,
    /// Fewest tokens worth waking a reader for: a hundredth of a second at the rate, and
    /// at most one read, so a throttled node is read in small, even steps.
    grant_min_bytes: f64,
    tokens: f64,
    refilled_at: Instant,
    /// Until when the readers are known to wait, so that time is counted once however
    /// many streams wait together.
    throttled_until: Instant,
}

/// What a reader may do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grant {
    /// Read at most this many bytes, then [`Bucket::spend`] what was read.
    Read(usize),
    /// Wait this long before asking again.
    Wait {
        /// How long.
        wait: Duration,
        /// The part of the wait not already counted for another reader, for the metric.
        throttled: Duration,
    },
}

impl Bucket {
    /// A full bucket refilling at `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64, now: Instant) -> Bucket {
        // Rates are far below 2^53, where the conversion would round.
        let rate = bytes_per_sec.max(1) as f64;
        let chunk = READ_CHUNK_BYTES as f64;
        let burst_bytes = (rate / 10.0).max(chunk);
        Bucket {
            bytes_per_sec: rate,
            burst_bytes,
            grant_min_bytes: (rate / 100.0).clamp(1.0, chunk),
            tokens: burst_bytes,
            refilled_at: now,
            throttled_until: now,
        }
    }

    /// Most bytes the bucket lets through at once, from full.
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes as u64
    }

    /// How much a reader may read at `now`, or how long it must wait.
    pub fn grant(&mut self, now: Instant) -> Grant {
        self.refill(now);
        if self.tokens >= self.grant_min_bytes {
            return Grant::Read(self.tokens.min(READ_CHUNK_BYTES as f64) as usize);
        }
        let wait = Duration::from_secs_f64((self.grant_min_bytes - self.tokens) / self.bytes_per_sec);
        let until = now + wait;
        let throttled = until.saturating_duration_since(self.throttled_until.max(now));
        self.throttled_until = self.throttled_until.max(until);
        Grant::Wait { wait, throttled }
    }

    /// A reader read `bytes` at `now`.
    pub fn spend(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.burst_bytes);
        self.refilled_at = self.refilled_at.max(now);
    }
}

/// The [`Bucket`] of one connection, shared by its stream readers, counting the time the
/// node is held back on `/metrics`.
#[derive(Debug)]
pub struct Throttle {
    bucket: Mutex<Bucket>,
    throttled_seconds: Counter<f64, AtomicU64>,
}

impl Throttle {
    /// A throttle at `bytes_per_sec` that adds the time it holds the node back to
    /// `throttled_seconds`.
    pub fn new(bytes_per_sec: u64, throttled_seconds: Counter<f64, AtomicU64>) -> Throttle {
        Throttle { bucket: Mutex::new(Bucket::new(bytes_per_sec, Instant::now())), throttled_seconds }
    }

    /// Waits until the node may be read from, and returns how many bytes the next read
    /// may take.
    pub async fn grant(&self) -> usize {
        loop {
            let grant = self.lock().grant(Instant::now());
            match grant {
                Grant::Read(bytes) => return bytes,
                Grant::Wait { wait, throttled } => {
                    self.throttled_seconds.inc_by(throttled.as_secs_f64());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A reader read `bytes`.
    pub fn spend(&self, bytes: usize) {
        self.lock().spend(bytes, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
