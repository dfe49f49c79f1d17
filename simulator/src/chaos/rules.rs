//! The fault rules a proxy applies to each datagram: an ordered list, one verdict per rule.
//!
//! A rule sees one datagram at a time (its direction, its length and the time) and answers
//! a [`Verdict`]: pass it, deliver it after a delay, drop it, or deliver it twice. The
//! proxy asks every rule of its [`RuleSet`] in order and folds the answers into one
//! [`Fate`]: a drop ends the walk, delays add up, and each duplicate adds a copy. The same
//! vocabulary drives the deterministic simulation, so a scenario means the same thing in
//! both layers.
//!
//! Rules keep their own state where they need it (the bandwidth cap remembers when the
//! link is next free). Randomness comes from the rule set's seeded RNG, so a run with the
//! same seed and the same datagram sequence makes the same choices.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which way a datagram travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From a node to the relay (data, handshakes).
    ToRelay,
    /// From the relay to a node (acks, welcomes).
    ToNode,
}

impl Direction {
    /// Both directions, uplink first.
    pub const ALL: [Direction; 2] = [Direction::ToRelay, Direction::ToNode];

    /// The name used in scenario files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToRelay => "to-relay",
            Direction::ToNode => "to-node",
        }
    }
}

/// Which directions a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Directions {
    /// Both ways.
    #[default]
    Both,
    /// Only one way.
    Only(Direction),
}

impl Directions {
    /// Whether a datagram travelling `dir` is affected.
    pub fn contains(self, dir: Direction) -> bool {
        match self {
            Directions::Both => true,
            Directions::Only(d) => d == dir,
        }
    }
}

impl fmt::Display for Directions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Directions::Both => f.write_str("both ways"),
            Directions::Only(d) => f.write_str(d.as_str()),
        }
    }
}

/// One rule's answer for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This rule does not touch the datagram.
    Pass,
    /// Deliver it this much later.
    Delay(Duration),
    /// Never deliver it.
    Drop,
    /// Deliver it, and a copy of it.
    Duplicate,
}

/// A fault applied datagram by datagram.
pub trait FaultRule: Send + fmt::Debug {
    /// The verdict for one datagram of `len` bytes travelling `dir` at `now`.
    fn on_datagram(&mut self, dir: Direction, len: usize, now: Instant, rng: &mut StdRng) -> Verdict;
}

/// The kinds of rule; a rule set holds at most one of each kind per [`Directions`], so a
/// later step replaces an earlier rule of the same kind instead of stacking on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// Drop everything.
    Partition,
    /// Drop at random.
    Loss,
    /// Fixed delay plus random jitter.
    Latency,
    /// Deliver some datagrams twice.
    Duplicate,
    /// Hold some datagrams back so that later ones overtake them.
    Reorder,
    /// Serialise at a fixed bit rate behind a bounded queue.
    Bandwidth,
    /// Hold every datagram for a long time, then deliver it (a stuck middlebox).
    Hold,
}

/// A rule of a known kind, as a scenario step describes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Drop every datagram.
    Partition,
    /// Drop each datagram with this probability.
    Loss(f64),
    /// Delay each datagram by `base` plus a uniform random part of up to `jitter`.
    Latency {
        /// The fixed part.
        base: Duration,
        /// The most added at random.
        jitter: Duration,
    },
    /// Deliver each datagram twice with this probability.
    Duplicate(f64),
    /// Delay each datagram by `by` with probability `p`.
    Reorder {
        /// The probability.
        p: f64,
        /// How long a reordered datagram is held back.
        by: Duration,
    },
    /// Cap the rate in bits per second; a datagram that would wait longer than
    /// [`BANDWIDTH_QUEUE_MAX`] in the queue is dropped (a router's tail drop).
    Bandwidth(u64),
    /// Deliver every datagram this much later.
    Hold(Duration),
}

/// The longest a datagram waits behind a bandwidth cap before it is dropped instead: a
/// typical LTE modem buffers about this much.
pub const BANDWIDTH_QUEUE_MAX: Duration = Duration::from_secs(2);

impl Rule {
    /// The rule's kind.
    pub fn kind(&self) -> RuleKind {
        match self {
            Rule::Partition => RuleKind::Partition,
            Rule::Loss(_) => RuleKind::Loss,
            Rule::Latency { .. } => RuleKind::Latency,
            Rule::Duplicate(_) => RuleKind::Duplicate,
            Rule::Reorder { .. } => RuleKind::Reorder,
            Rule::Bandwidth(_) => RuleKind::Bandwidth,
            Rule::Hold(_) => RuleKind::Hold,
        }
    }

    /// A rule with no effect at all (`loss = 0`) is removed rather than kept.
    pub fn is_noop(&self) -> bool {
        match self {
            Rule::Loss(p) | Rule::Duplicate(p) | Rule::Reorder { p, .. } => *p <= 0.0,
            Rule::Latency { base, jitter } => base.is_zero() && jitter.is_zero(),
            Rule::Hold(d) => d.is_zero(),
            Rule::Bandwidth(_) | Rule::Partition => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Partition => f.write_str("partition"),
            Rule::Loss(p) => write!(f, "loss {:.0}%", p * 100.0),
            Rule::Latency { base, jitter } => write!(f, "latency {base:?} + jitter up to {jitter:?}"),
            Rule::Duplicate(p) => write!(f, "duplicate {:.0}%", p * 100.0),
            Rule::Reorder { p, by } => write!(f, "reorder {:.0}% by {by:?}", p * 100.0),
            Rule::Bandwidth(bps) => write!(f, "bandwidth {} kbit/s", bps / 1000),
            Rule::Hold(d) => write!(f, "hold every datagram for {d:?}"),
        }
    }
}

/// A [`Rule`] limited to some directions, with its running state.
#[derive(Debug)]
pub struct Active {
    rule: Rule,
    dirs: Directions,
    /// When the capped link is next free, per direction (bandwidth only).
    link_free_at: [Option<Instant>; 2],
}

impl Active {
    /// `rule` on `dirs`.
    pub fn new(rule: Rule, dirs: Directions) -> Active {
        Active { rule, dirs, link_free_at: [None, None] }
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Where it applies.
    pub fn dirs(&self) -> Directions {
        self.dirs
    }
}

impl FaultRule for Active {
    fn on_datagram(&mut self, dir: Direction, len: usize, now: Instant, rng: &mut StdRng) -> Verdict {
        if !self.dirs.contains(dir) {
            return Verdict::Pass;
        }
        match self.rule {
            Rule::Partition => Verdict::Drop,
            Rule::Loss(p) => {
                if chance(rng, p) {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                }
            }
            Rule::Latency { base, jitter } => {
                let extra =
                    if jitter.is_zero() { Duration::ZERO } else { jitter.mul_f64(rng.random::<f64>()) };
                Verdict::Delay(base + extra)
            }
            Rule::Duplicate(p) => {
                if chance(rng, p) {
                    Verdict::Duplicate
                } else {
                    Verdict::Pass
                }
            }
            Rule::Reorder { p, by } => {
                if chance(rng, p) {
                    Verdict::Delay(by)
                } else {
                    Verdict::Pass
                }
            }
            Rule::Bandwidth(bps) => {
                let slot = &mut self.link_free_at[dir as usize];
                let start = slot.filter(|t| *t > now).unwrap_or(now);
                let wait = start - now;
                if wait > BANDWIDTH_QUEUE_MAX {
                    return Verdict::Drop;
                }
                let bits = (len as u64 + UDP_IP_OVERHEAD_BYTES) * 8;
                let send = Duration::from_secs_f64(bits as f64 / bps.max(1) as f64);
                *slot = Some(start + send);
                Verdict::Delay(wait + send)
            }
            Rule::Hold(d) => Verdict::Delay(d),
        }
    }
}

/// IPv4 and UDP headers, counted against a bandwidth cap like a real link does.
const UDP_IP_OVERHEAD_BYTES: u64 = 28;

fn chance(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.clamp(0.0, 1.0))
}

/// What happens to one datagram once every rule has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Drop,
    /// Delivered `copies` times (1 or more), each after `delay`.
    Deliver {
        /// The summed delays.
        delay: Duration,
        /// How many copies.
        copies: u32,
    },
}

/// Folds verdicts in rule order: a drop ends the walk, delays add up and each duplicate
/// adds one copy.
pub fn fold(verdicts: impl IntoIterator<Item = Verdict>) -> Fate {
    let mut delay = Duration::ZERO;
    let mut copies = 1;
    for verdict in verdicts {
        match verdict {
            Verdict::Pass => {}
            Verdict::Delay(d) => delay += d,
            Verdict::Drop => return Fate::Drop,
            Verdict::Duplicate => copies += 1,
        }
    }
    Fate::Deliver { delay, copies }
}

/// The ordered rules of one proxy and the RNG they draw from.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Active>,
    rng: StdRng,
}

impl RuleSet {
    /// No rules; randomness seeded with `seed`.
    pub fn new(seed: u64) -> RuleSet {
        RuleSet { rules: Vec::new(), rng: StdRng::seed_from_u64(seed) }
    }

    /// Adds `rule` on `dirs`, replacing a rule of the same kind on the same directions; a
    /// no-op rule (`loss = 0`) only removes. Rules are kept in [`RuleKind`] order, so a
    /// partition is judged before a delay whatever order the steps came in.
    pub fn set(&mut self, rule: Rule, dirs: Directions) {
        let kind = rule.kind();
        self.rules.retain(|a| !(a.rule.kind() == kind && a.dirs == dirs));
        if !rule.is_noop() {
            self.rules.push(Active::new(rule, dirs));
            self.rules.sort_by_key(|a| (a.rule.kind(), a.dirs));
        }
    }

    /// Removes every rule of `kind`.
    pub fn clear_kind(&mut self, kind: RuleKind) {
        self.rules.retain(|a| a.rule.kind() != kind);
    }

    /// Removes every rule: the link is healthy again.
    pub fn heal(&mut self) {
        self.rules.clear();
    }

    /// The active rules, in the order they are asked.
    pub fn rules(&self) -> &[Active] {
        &self.rules
    }

    /// The fate of one datagram.
    pub fn judge(&mut self, dir: Direction, len: usize, now: Instant) -> Fate {
        let RuleSet { rules, rng } = self;
        let mut verdicts = Vec::with_capacity(rules.len());
        for rule in rules.iter_mut() {
            let verdict = rule.on_datagram(dir, len, now, rng);
            verdicts.push(verdict);
            if verdict == Verdict::Drop {
                break;
            }
        }
        fold(verdicts)
    }
}

#[cfg(test)]
mod tests;
