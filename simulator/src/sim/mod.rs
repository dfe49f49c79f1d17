//! `outpost-sim sim`: the deterministic simulation of the protocol cores under a seeded
//! storm of network faults, crashes and store wipes.
//!
//! N node cores (the real [`sync_protocol::Sender`] over a simulated store) and one relay
//! core (one real [`sync_protocol::Receiver`] per connection over a simulated store with
//! group commit) run in virtual time, driven by one event queue and seeded RNGs: no tokio,
//! no sockets, no wall clock, so a seed replays bit for bit.
//!
//! - [`clock`]: virtual time and the event queue;
//! - [`net`]: QUIC-like connections and the ordered list of [`net::FaultRule`]s (the
//!   module docs say how QUIC is modelled and how to add a rule);
//! - [`disk`]: a disk that loses unsynced writes on a crash;
//! - [`inventory`]: the relay's merged inventory with change versions, and the folds
//!   the checker compares replicas with;
//! - [`node`] and [`relay`]: the two processes, their stores and their crash points;
//! - [`workload`]: scanners with retries, duplicates and conflicts, and the ledger of
//!   their answers;
//! - [`schedule`]: everything a seed decides up front;
//! - [`check`]: the `always` / `eventually` / `finally` invariants;
//! - [`trace`]: the trace, with the last lines kept for a violation report;
//! - [`world`]: one seed's run, in two phases (safety under faults, then liveness);
//! - [`runner`]: many seeds on all cores.
//!
//! ```
//! use simulator::sim::{SimConfig, run_seed};
//!
//! let report = run_seed(7, &SimConfig::default());
//! assert!(report.violation.is_none(), "{}", report.violation.unwrap());
//! ```

pub mod check;
pub mod cli;
pub mod clock;
pub mod disk;
pub mod inventory;
pub mod net;
pub mod node;
pub mod relay;
pub mod runner;
pub mod schedule;
pub mod trace;
pub mod workload;
pub mod world;

use std::io::Write;
use std::time::Duration;

pub use check::{Invariant, Violation};
pub use relay::InjectedBug;
pub use runner::{Summary, run_seeds};
pub use trace::Trace;
pub use world::{SeedReport, Stats, World};

/// How every seed runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long the scanners post and the faults play.
    pub safety: Duration,
    /// How long the healed system has to converge.
    pub liveness_budget: Duration,
    /// A relay defect to prove the checker fails, or none.
    pub bug: Option<InjectedBug>,
}

impl Default for SimConfig {
    /// 30 s of faults and posts (a few hundred events over 2 to 4 nodes) and 120 s to
    /// converge: enough for an idle timeout (10 s), the longest reconnect backoff (30 s)
    /// and the drain, sized so that 2,000 seeds of a debug build take well under a minute
    /// on two cores.
    fn default() -> Self {
        SimConfig { safety: Duration::from_secs(30), liveness_budget: Duration::from_secs(120), bug: None }
    }
}

/// Runs one seed, keeping only the last lines of the trace.
pub fn run_seed(seed: u64, config: &SimConfig) -> SeedReport {
    run_seed_traced(seed, config, Trace::new(None, false))
}

/// Runs one seed with every trace line written to `out` as it happens.
pub fn replay_seed(seed: u64, config: &SimConfig, out: Box<dyn Write + Send>) -> SeedReport {
    run_seed_traced(seed, config, Trace::new(Some(out), false))
}

/// Runs one seed into `trace`.
pub fn run_seed_traced(seed: u64, config: &SimConfig, trace: Trace) -> SeedReport {
    match World::new(seed, config, trace) {
        Ok(world) => world.run(),
        Err(violation) => SeedReport {
            seed,
            stats: Stats::new(),
            violation: Some(violation),
            converged_after: None,
            captured: None,
        },
    }
}

#[cfg(test)]
mod tests;
