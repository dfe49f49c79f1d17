//! Tests of the fault rules and of how their verdicts fold.

use std::time::{Duration, Instant};

use super::*;

#[track_caller]
fn check(verdicts: &[Verdict], expect: Fate) {
    assert_eq!(fold(verdicts.iter().copied()), expect);
}

#[test]
fn verdicts_fold_in_order() {
    check(&[], Fate::Deliver { delay: Duration::ZERO, copies: 1 });
    check(&[Verdict::Pass, Verdict::Pass], Fate::Deliver { delay: Duration::ZERO, copies: 1 });
    let ms = Duration::from_millis;
    check(&[Verdict::Delay(ms(5)), Verdict::Delay(ms(7))], Fate::Deliver { delay: ms(12), copies: 1 });
    check(&[Verdict::Duplicate, Verdict::Delay(ms(3))], Fate::Deliver { delay: ms(3), copies: 2 });
    check(&[Verdict::Delay(ms(3)), Verdict::Drop, Verdict::Duplicate], Fate::Drop);
}

#[test]
fn partition_drops_only_its_direction() {
    let mut set = RuleSet::new(1);
    set.set(Rule::Partition, Directions::Only(Direction::ToNode));
    let now = Instant::now();
    assert_eq!(set.judge(Direction::ToNode, 100, now), Fate::Drop);
    assert_eq!(set.judge(Direction::ToRelay, 100, now), Fate::Deliver { delay: Duration::ZERO, copies: 1 });
    set.heal();
    assert_eq!(set.judge(Direction::ToNode, 100, now), Fate::Deliver { delay: Duration::ZERO, copies: 1 });
}

#[test]
fn loss_drops_about_its_share() {
    let mut set = RuleSet::new(7);
    set.set(Rule::Loss(0.2), Directions::Both);
    let now = Instant::now();
    let dropped = (0..10_000).filter(|_| set.judge(Direction::ToRelay, 1200, now) == Fate::Drop).count();
    assert!((1_700..2_300).contains(&dropped), "{dropped} of 10000 dropped");
}

#[test]
fn a_later_rule_of_the_same_kind_replaces_the_earlier_and_zero_removes() {
    let mut set = RuleSet::new(1);
    set.set(Rule::Loss(0.5), Directions::Both);
    set.set(Rule::Loss(0.2), Directions::Both);
    assert_eq!(set.rules().len(), 1);
    assert_eq!(set.rules()[0].rule(), &Rule::Loss(0.2));
    set.set(Rule::Loss(0.0), Directions::Both);
    assert!(set.rules().is_empty());
}

#[test]
fn bandwidth_serialises_and_tail_drops() {
    let mut set = RuleSet::new(1);
    // 8 kbit/s: a 972-byte datagram (1000 bytes on the wire) takes one second.
    set.set(Rule::Bandwidth(8_000), Directions::Both);
    let now = Instant::now();
    let delays: Vec<Fate> = (0..4).map(|_| set.judge(Direction::ToRelay, 972, now)).collect();
    let s = Duration::from_secs;
    assert_eq!(delays[0], Fate::Deliver { delay: s(1), copies: 1 });
    assert_eq!(delays[1], Fate::Deliver { delay: s(2), copies: 1 });
    assert_eq!(delays[2], Fate::Deliver { delay: s(3), copies: 1 });
    // The queue already holds 3 s of traffic, more than the 2 s buffer.
    assert_eq!(delays[3], Fate::Drop);
    // The other direction has its own link.
    assert_eq!(set.judge(Direction::ToNode, 972, now), Fate::Deliver { delay: s(1), copies: 1 });
}

#[test]
fn the_same_seed_makes_the_same_choices() {
    let run = |seed| {
        let mut set = RuleSet::new(seed);
        set.set(Rule::Loss(0.3), Directions::Both);
        set.set(
            Rule::Latency { base: Duration::from_millis(10), jitter: Duration::from_millis(300) },
            Directions::Both,
        );
        let now = Instant::now();
        (0..200).map(|_| set.judge(Direction::ToRelay, 500, now)).collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}
