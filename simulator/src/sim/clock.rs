//! Virtual time: one base `Instant` captured at start plus a virtual offset, and the
//! event queue that moves it forward.
//!
//! The protocol core takes `std::time::Instant`, but only ever compares instants and adds
//! durations to them, so any base works: the simulation reads the wall clock once, to get
//! a base, and never again. Everything printed is the virtual offset in milliseconds, so
//! two runs of one seed print the same text.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The simulated clock.
#[derive(Debug, Clone)]
pub struct Clock {
    base: Instant,
    now: Duration,
}

impl Clock {
    /// A clock at virtual time zero.
    pub fn new(base: Instant) -> Self {
        Clock { base, now: Duration::ZERO }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Virtual time as the `Instant` the protocol core takes.
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Moves time forward to `at`; time never goes backwards.
    pub fn advance_to(&mut self, at: Duration) {
        self.now = self.now.max(at);
    }
}

/// A deterministic priority queue of timed events: earliest first, and among events due at
/// the same instant, the one scheduled first.
#[derive(Debug)]
pub struct Queue<E> {
    items: BTreeMap<(Duration, u64), E>,
    next_id: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue { items: BTreeMap::new(), next_id: 0 }
    }
}

impl<E> Queue<E> {
    /// Schedules `event` at virtual time `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        self.items.insert((at, self.next_id), event);
        self.next_id += 1;
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Duration, E)> {
        self.items.pop_first().map(|((at, _), event)| (at, event))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests;
