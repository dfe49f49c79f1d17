//! Many seeds on all cores: worker threads take chunks of the seed range in turn until it
//! is done or a violation is found. Each seed is its own deterministic world, so which
//! thread runs it does not matter.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{SimConfig, Violation, run_seed};

/// Seeds a worker takes at a time: large enough that the shared counter costs nothing,
/// small enough that the threads finish together.
const CHUNK_SEEDS: u64 = 8;

/// What a batch of seeds found.
#[derive(Debug)]
pub struct Summary {
    /// Seeds run to the end.
    pub seeds: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Violations, lowest seed first.
    pub violations: Vec<Violation>,
    /// Counters summed over every seed.
    pub totals: BTreeMap<&'static str, u64>,
    /// The slowest convergence after healing, in virtual time.
    pub slowest_convergence: Duration,
}

impl Summary {
    /// Seeds per second of wall time.
    pub fn seeds_per_s(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Shared {
    seeds: u64,
    violations: Vec<Violation>,
    totals: BTreeMap<&'static str, u64>,
    slowest: Duration,
}

/// Runs seeds `first..first + count` on `threads` threads. With `stop_early`, workers stop
/// taking new chunks once a violation is found.
pub fn run_seeds(first: u64, count: u64, config: &SimConfig, threads: usize, stop_early: bool) -> Summary {
    // The wall clock only measures throughput; it never reaches a simulated world.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let shared = Mutex::new(Shared::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut local = Shared::default();
                loop {
                    if stop_early && stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let start = next.fetch_add(CHUNK_SEEDS, Ordering::Relaxed);
                    if start >= count {
                        break;
                    }
                    for offset in start..(start + CHUNK_SEEDS).min(count) {
                        let report = run_seed(first.wrapping_add(offset), config);
                        local.seeds += 1;
                        for (what, n) in report.stats {
                            *local.totals.entry(what).or_default() += n;
                        }
                        local.slowest = local.slowest.max(report.converged_after.unwrap_or_default());
                        if let Some(violation) = report.violation {
                            local.violations.push(violation);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
                let mut all = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                all.seeds += local.seeds;
                all.violations.append(&mut local.violations);
                for (what, n) in local.totals {
                    *all.totals.entry(what).or_default() += n;
                }
                all.slowest = all.slowest.max(local.slowest);
            });
        }
    });
    let mut shared = shared.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    shared.violations.sort_by_key(|v| v.seed);
    Summary {
        seeds: shared.seeds,
        elapsed: started.elapsed(),
        violations: shared.violations,
        totals: shared.totals,
        slowest_convergence: shared.slowest,
    }
}
