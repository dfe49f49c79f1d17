//! Admission control: a bounded number of posts in flight, shared by lane priority.
//!
//! Every post takes a slot before its body is read, so the memory requests can hold is
//! bounded by `requests_in_flight_max` bodies of at most `body_bytes_max` each, whatever
//! the rate. Once its events' lane is known, a post goes on only if the other posts in
//! flight leave its lane room:
//!
//! | lane | shed (429) when the other posts in flight reach |
//! |---|---|
//! | bulk | half of the slots |
//! | standard | three quarters |
//! | critical | never: only when no slot is free at all |
//!
//! So a burst of bulk telemetry fills half the slots and is answered 429 beyond that,
//! while critical shipments still find a slot and a short queue to the writer. The
//! `Retry-After` of a 429 is the time the writer needs, at its recent commit rate, to
//! store the events already in flight: a client that waits that long finds room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sync_protocol::Lane;

/// Most seconds a `Retry-After` asks a client to wait.
pub const RETRY_AFTER_MAX_S: u64 = 60;

/// The slots of posts in flight.
#[derive(Debug)]
pub struct Admission {
    requests_max: usize,
    requests: AtomicUsize,
    events: AtomicU64,
}

/// A post's slot, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    events: u64,
}

impl Admission {
    /// Slots for `requests_max` posts in flight (at least one).
    pub fn new(requests_max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            requests_max: requests_max.max(1),
            requests: AtomicUsize::new(0),
            events: AtomicU64::new(0),
        })
    }

    /// A slot for a post whose body is not read yet; `None` when every slot is taken.
    pub fn enter(self: &Arc<Self>) -> Option<Permit> {
        let taken = self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.requests_max).then_some(n + 1));
        taken.ok().map(|_| Permit { admission: self.clone(), events: 0 })
    }

    /// Whether a post holding `permit` with `events` events whose most urgent lane is
    /// `lane` may go on to the writer; if so its events count as in flight until the
    /// permit is dropped.
    pub fn admit(&self, permit: &mut Permit, lane: Lane, events: u64) -> bool {
        let others = self.requests.load(Ordering::Acquire).saturating_sub(1);
        let limit = match lane {
            Lane::Critical => self.requests_max,
            Lane::Standard => self.requests_max * 3 / 4,
            Lane::Bulk => self.requests_max / 2,
        };
        if others >= limit.max(1) {
            return false;
        }
        permit.events += events;
        self.events.fetch_add(events, Ordering::AcqRel);
        true
    }

    /// Posts in flight now.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// The `Retry-After` for a shed post: seconds to store the events in flight at
    /// `events_per_sec`, from 1 to [`RETRY_AFTER_MAX_S`].
    pub fn retry_after_s(&self, events_per_sec: f64) -> u64 {
        let events = self.events.load(Ordering::Acquire) as f64;
        if events_per_sec <= 0.0 {
            return 1;
        }
        ((events / events_per_sec).ceil() as u64).clamp(1, RETRY_AFTER_MAX_S)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.events.fetch_sub(self.events, Ordering::AcqRel);
        self.admission.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_is_shed_at_half_standard_at_three_quarters_critical_only_when_full() {
        let admission = Admission::new(8);
        let mut held: Vec<Permit> = (0..4).map(|_| admission.enter().unwrap()).collect();
        let mut next = admission.enter().unwrap();
        assert!(!admission.admit(&mut next, Lane::Bulk, 1), "4 others of 8: bulk is shed");
        assert!(admission.admit(&mut next, Lane::Standard, 1));
        held.extend((0..2).map(|_| admission.enter().unwrap()));
        assert!(!admission.admit(&mut next, Lane::Standard, 1), "6 others of 8: standard is shed");
        assert!(admission.admit(&mut next, Lane::Critical, 1));
        held.push(admission.enter().unwrap());
        assert!(admission.enter().is_none(), "every slot taken");
        drop(held);
        drop(next);
        assert_eq!(admission.requests(), 0);
        assert_eq!(admission.events.load(Ordering::Acquire), 0, "events leave with their permits");
    }

    #[test]
    fn retry_after_is_the_time_to_store_what_is_in_flight() {
        let admission = Admission::new(4);
        let mut permit = admission.enter().unwrap();
        assert!(admission.admit(&mut permit, Lane::Bulk, 50_000));
        assert_eq!(admission.retry_after_s(10_000.0), 5);
        assert_eq!(admission.retry_after_s(0.0), 1, "no rate yet: one second");
        assert_eq!(admission.retry_after_s(1.0), RETRY_AFTER_MAX_S);
    }
}
