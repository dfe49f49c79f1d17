//! Tests of the fault rules and of stream reassembly.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use sync_protocol::wire::Ack;
use sync_protocol::{Lane, Message, Seq};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn packet(node: usize, dir: Dir) -> PacketInfo {
    PacketInfo { node, dir, bytes: 1_000 }
}

fn ack(through: u64) -> Message {
    Message::Ack(Ack { lane: Lane::Bulk, through_seq: Seq::new(through).unwrap() })
}

#[test]
fn a_oneway_partition_drops_one_direction_of_one_node_in_its_window() {
    let mut rng = StdRng::seed_from_u64(1);
    let window = Window { from: ms(10), until: ms(20) };
    let mut rule = Partition { window, targets: Targets { nodes: 1 << 2, dir: Some(Dir::ToNode) } };
    assert_eq!(rule.on_packet(&packet(2, Dir::ToNode), ms(15), &mut rng), Verdict::Drop);
    assert_eq!(rule.on_packet(&packet(2, Dir::ToRelay), ms(15), &mut rng), Verdict::Pass);
    assert_eq!(rule.on_packet(&packet(1, Dir::ToNode), ms(15), &mut rng), Verdict::Pass);
    assert_eq!(rule.on_packet(&packet(2, Dir::ToNode), ms(20), &mut rng), Verdict::Pass);
    assert_eq!(rule.on_packet(&packet(2, Dir::ToNode), ms(9), &mut rng), Verdict::Pass);
}

#[test]
fn rules_compose_in_order_and_a_drop_ends_the_walk() {
    let mut rng = StdRng::seed_from_u64(1);
    let always = Window { from: ms(0), until: ms(1_000) };
    let mut net = Network { rules: Vec::new(), base_latency: vec![ms(5)] };
    net.rules.push(Box::new(Latency { window: always, targets: Targets::ALL, extra: ms(20), jitter: ms(0) }));
    net.rules.push(Box::new(Hold { window: Window { from: ms(0), until: ms(100) }, targets: Targets::ALL }));
    let judged = net.judge(&packet(0, Dir::ToRelay), ms(40), &mut rng);
    assert_eq!(judged, Judgement::Arrives { delay: ms(5 + 20 + 60), duplicate: None });
    net.rules.push(Box::new(Partition { window: always, targets: Targets::ALL }));
    assert_eq!(net.judge(&packet(0, Dir::ToRelay), ms(40), &mut rng), Judgement::Lost);
    net.heal();
    assert_eq!(
        net.judge(&packet(0, Dir::ToRelay), ms(40), &mut rng),
        Judgement::Arrives { delay: ms(5), duplicate: None }
    );
}

#[test]
fn a_bandwidth_cap_queues_packets_behind_each_other() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut rule = Bandwidth {
        window: Window { from: ms(0), until: ms(10_000) },
        targets: Targets::ALL,
        bytes_per_s: 100_000,
        busy_until: Default::default(),
    };
    // 1,000 bytes at 100 kB/s take 10 ms each.
    assert_eq!(rule.on_packet(&packet(0, Dir::ToRelay), ms(0), &mut rng), Verdict::Deliver(ms(10)));
    assert_eq!(rule.on_packet(&packet(0, Dir::ToRelay), ms(0), &mut rng), Verdict::Deliver(ms(20)));
    // The other direction has its own queue.
    assert_eq!(rule.on_packet(&packet(0, Dir::ToNode), ms(0), &mut rng), Verdict::Deliver(ms(10)));
}

#[test]
fn streams_deliver_in_order_once_whatever_the_arrival_order() {
    let mut rx = StreamRx::default();
    assert_eq!(rx.accept(1, ack(2)), Some(vec![]));
    assert_eq!(rx.accept(1, ack(2)), None);
    assert_eq!(rx.accept(0, ack(1)), Some(vec![ack(1), ack(2)]));
    assert_eq!(rx.accept(0, ack(1)), None);
    assert_eq!(rx.accept(2, ack(3)), Some(vec![ack(3)]));
}

#[test]
fn the_probe_timeout_doubles_and_is_capped() {
    assert_eq!(probe_timeout(0), ms(250));
    assert_eq!(probe_timeout(1), ms(500));
    assert_eq!(probe_timeout(4), ms(4_000));
    assert_eq!(probe_timeout(30), ms(4_000));
}
