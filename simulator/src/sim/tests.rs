//! Whole-run tests of the simulator: seeds pass, a seed replays identically, and each
//! injected relay bug is caught within the CI seed count by the invariant it breaks.

use super::*;

fn traced(seed: u64, config: &SimConfig) -> Vec<String> {
    let report = run_seed_traced(seed, config, Trace::new(None, true));
    report.captured.expect("captured trace")
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let config = SimConfig::default();
    for seed in [3, 11] {
        let first = traced(seed, &config);
        let second = traced(seed, &config);
        assert!(first.len() > 100, "seed {seed} traced only {} lines", first.len());
        assert_eq!(first, second, "seed {seed} did not replay identically");
    }
    assert_ne!(traced(3, &config), traced(11, &config));
}

#[test]
fn two_hundred_seeds_pass() {
    let summary = run_seeds(0, 200, &SimConfig::default(), 2, false);
    if let Some(violation) = summary.violations.first() {
        panic!("{violation}");
    }
    assert_eq!(summary.seeds, 200);
    // The faults really happened, or the run proves nothing.
    for what in [
        "packets lost",
        "packets duplicated",
        "retransmissions",
        "idle timeouts",
        "node crashes",
        "relay crashes",
        "store wipes",
        "stateless resets",
        "relay store skipped records",
        "duplicate packets discarded",
        "inventory messages sent",
        "inventory updates merged",
        "negative stock keys",
    ] {
        assert!(summary.totals.get(what).copied().unwrap_or(0) > 0, "no {what}: {:?}", summary.totals);
    }
}

#[track_caller]
fn caught(bug: InjectedBug, invariants: &[Invariant]) {
    let config = SimConfig { bug: Some(bug), ..SimConfig::default() };
    let summary = run_seeds(0, 2_000, &config, 2, true);
    let first = summary.violations.first().unwrap_or_else(|| panic!("{bug} was not caught in 2,000 seeds"));
    assert!(
        invariants.contains(&first.invariant),
        "{bug} was caught by {} instead of {invariants:?}:\n{first}",
        first.invariant
    );
    assert!(first.to_string().contains(&format!("--inject-bug {bug}")), "{first}");
    eprintln!("{bug}: caught at seed {} by {}", first.seed, first.invariant);
}

#[test]
fn a_relay_that_acks_before_commit_is_caught() {
    caught(InjectedBug::AckBeforeCommit, &[Invariant::AckAfterDurability]);
}

#[test]
fn a_relay_that_stores_retransmissions_again_is_caught() {
    caught(InjectedBug::ReapplyRetransmission, &[Invariant::NoDuplicateEffect]);
}

#[test]
fn a_relay_that_applies_retransmitted_deltas_again_is_caught() {
    // The node's own counter goes above its own events as soon as it merges the relay's
    // count (always); failing that, the relay's inventory is not the fold of its log (F1).
    caught(
        InjectedBug::ReapplyRetransmittedDeltas,
        &[Invariant::OwnStockIsFold, Invariant::InventoryMatchesLog],
    );
}
