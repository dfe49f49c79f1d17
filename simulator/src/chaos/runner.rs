//! Runs a [`Scenario`]: real daemons behind one proxy per node, scanners, the timeline,
//! then heal, convergence and the verdicts.
//!
//! The run:
//!
//! 1. starts the relay, one [`Proxy`] per node in front of it, and the nodes dialling
//!    their proxy;
//! 2. starts the scanners (per node, `workload.scanners` of them, paced to the rate, which
//!    a `rate` step changes for every scanner at once);
//! 3. walks the timeline, applying each step at its time and printing a progress line
//!    about once a second (events accepted, node backlog, events replicated, link state,
//!    shed answers per lane, each node's resident set and disk use);
//! 4. at the `check` step: heals every link, thaws and starts every process, stops the
//!    scanners, and waits until every backlog is empty and the relay log holds every
//!    accepted event, within the convergence budget;
//! 5. reads the whole relay log and decides each invariant of [`INVARIANTS`], the
//!    scenario's `[[expect]]` windows and its `[limits]`.
//!
//! Progress requests use short timeouts and skip daemons the timeline has killed or
//! frozen, so a frozen relay never stalls the timeline. Watermarks are sampled with the
//! progress: a node's ack or a relay watermark that moves back is a violation of A4 unless
//! a restart of that node or a wipe of the relay explains it (then it is noted as the
//! detection of the wipe).
//!
//! [`INVARIANTS`]: super::report::INVARIANTS

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;

use super::expect::{ResourceTracker, judge_expectations, judge_limits, mib};
use super::proxy::{Proxy, ProxyStats};
use super::report::{
    BOUNDED_RESOURCES, ChaosReport, ExpectationVerdict, INVARIANTS, InvariantVerdict, LaneReport, NodeSample,
    ProgressSample, RunCounts, SHEDDING, ShedTally, TimelineEntry, check_verdicts, violations_of,
};
use super::scenario::{Action, LANES, NetChange, ProcessFault, Scenario, Who};
use crate::api::{Client, NodeStatus};
use crate::check::{self, LogReader};
use crate::cluster::Cluster;
use crate::ledger::{LaneAnswers, Ledger};
use crate::process::Daemon;
use crate::scanner::{Pace, Scanner, ScannerConfig};

/// How often a progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long one status or watermark request of a progress sample may take.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reading the relay log may take in a progress sample.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each daemon's log kept in a failed report.
pub const LOG_TAIL_LINES: usize = 40;

/// What the timeline has done to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Killed,
    Frozen,
}

/// Runs `scenario`, writing the timeline and progress lines to `out`.
pub async fn run(scenario: &Scenario, out: &mut impl Write) -> anyhow::Result<ChaosReport> {
    let wall = Instant::now();
    writeln!(out, "chaos scenario {} (seed {}, time x{})", scenario.name, scenario.seed, scenario.scale)?;
    if !scenario.description.is_empty() {
        writeln!(out, "  {}", scenario.description.trim())?;
    }
    write!(out, "{scenario}")?;
    let mut cluster = Cluster::start(&[]).await.context("starting the relay")?;
    let mut proxies = Vec::new();
    for (i, id) in scenario.nodes.iter().enumerate() {
        let seed = scenario.seed.wrapping_add(1000 * (i as u64 + 1));
        let proxy = Proxy::start(cluster.relay.quic_addr(), seed).await?;
        cluster.add_node_via(id, proxy.addr(), scenario.node_args.clone())?;
        proxies.push(proxy);
    }
    for node in &mut cluster.nodes {
        node.start().await.with_context(|| format!("starting {}", node.name()))?;
    }
    writeln!(
        out,
        "relay pid {} (quic {}); {}; files in {}",
        cluster.relay.pid().unwrap_or(0),
        cluster.relay.quic_addr(),
        cluster
            .nodes
            .iter()
            .zip(&proxies)
            .map(|(n, p)| format!("{} pid {} via proxy {}", n.node_id(), n.pid().unwrap_or(0), p.addr()))
            .collect::<Vec<_>>()
            .join(", "),
        cluster.dir().display()
    )?;
    let mut run = Run::new(scenario, cluster, proxies);
    run.start_scanners();
    for step in &scenario.steps {
        run.wait_until(run.t0 + step.at, out).await?;
        if step.action == Action::Check {
            break;
        }
        run.apply(&step.action, out).await?;
    }
    run.finish(wall, out).await
}

/// The state of a run in progress.
struct Run<'a> {
    scenario: &'a Scenario,
    cluster: Cluster,
    proxies: Vec<Proxy>,
    t0: Instant,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    scanners: Vec<JoinHandle<()>>,
    scanner_round: u64,
    /// The interval between each scanner's request starts, set from the current rate.
    pace: Pace,
    /// Each node's resident set and disk use over the samples.
    resources: Vec<ResourceTracker>,
    relay_state: State,
    node_states: Vec<State>,
    relay_client: Client,
    node_clients: Vec<Client>,
    log: LogReader,
    logged_ids: BTreeSet<String>,
    next_sample: Instant,
    last_accepted: u64,
    timeline: Vec<TimelineEntry>,
    progress: Vec<ProgressSample>,
    observations: Vec<String>,
    watermark_violations: Vec<String>,
    crashes: Vec<String>,
    marks: Marks,
}

/// The last watermarks seen, with the restart and wipe generations they were seen in.
#[derive(Default)]
struct Marks {
    node_generation: Vec<u32>,
    relay_wipes: u32,
    node_acked: BTreeMap<(usize, String), (u64, u32, u32)>,
    relay_watermarks: BTreeMap<(String, String, String), (u64, u32)>,
    wipe_detected: bool,
}

impl<'a> Run<'a> {
    fn new(scenario: &'a Scenario, cluster: Cluster, proxies: Vec<Proxy>) -> Run<'a> {
        let relay_client = cluster.relay.client();
        let node_clients: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
        let nodes = cluster.nodes.len();
        Run {
            scenario,
            log: LogReader::new(relay_client.clone()),
            relay_client,
            node_clients,
            cluster,
            proxies,
            t0: Instant::now(),
            ledger: Arc::new(Ledger::new()),
            stop: Arc::new(AtomicBool::new(false)),
            scanners: Vec::new(),
            scanner_round: 0,
            pace: Pace::new(scenario.workload.interval_for(scenario.workload.rate)),
            resources: scenario.nodes.iter().map(|n| ResourceTracker::new(n)).collect(),
            relay_state: State::Running,
            node_states: vec![State::Running; nodes],
            logged_ids: BTreeSet::new(),
            next_sample: Instant::now(),
            last_accepted: 0,
            timeline: Vec::new(),
            progress: Vec::new(),
            observations: Vec::new(),
            watermark_violations: Vec::new(),
            crashes: Vec::new(),
            marks: Marks { node_generation: vec![0; nodes], ..Marks::default() },
        }
    }

    fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn note(&mut self, text: String, out: &mut impl Write) -> std::io::Result<()> {
        let t = self.t();
        writeln!(out, "[{t:6.1}s] >>> {text}")?;
        self.timeline.push(TimelineEntry { t_s: t, text });
        Ok(())
    }

    /// Starts a round of scanners; each round uses new device ids, so `event_id`s stay
    /// unique over the run.
    fn start_scanners(&mut self) {
        let w = &self.scenario.workload;
        self.scanner_round += 1;
        self.stop = Arc::new(AtomicBool::new(false));
        for (n, node) in self.cluster.nodes.iter().enumerate() {
            for i in 0..w.scanners {
                let device = format!("hs-{}-{}-r{}", n + 1, i + 1, self.scanner_round);
                let mut c = ScannerConfig::new(&device, node.node_id(), &node.events_url());
                c.array_ratio = w.array_ratio;
                c.array_events_max = w.array_events_max;
                c.duplicate_ratio = w.duplicate_rate;
                c.conflict_ratio = w.conflict_rate;
                c.invalid_ratio = w.invalid_rate;
                c.kinds = w.kinds.clone();
                c.pace = Some(self.pace.clone());
                c.give_up_after = w.give_up_after;
                c.retry_after_max = w.retry_after_max;
                c.attrs_bytes = w.attrs_bytes;
                c.seed = self
                    .scenario
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(self.scanner_round * 10_000 + n as u64 * 100 + i as u64);
                self.scanners.push(tokio::spawn(Scanner::new(c, self.ledger.clone()).run(self.stop.clone())));
            }
        }
    }

    /// Waits until `deadline`, sampling progress on the way.
    async fn wait_until(&mut self, deadline: Instant, out: &mut impl Write) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            if now >= self.next_sample {
                self.sample(out).await?;
                self.next_sample = Instant::now().max(self.next_sample + PROGRESS_EVERY);
                continue;
            }
            if now >= deadline {
                return Ok(());
            }
            tokio::time::sleep(deadline.min(self.next_sample) - now).await;
        }
    }

    async fn apply(&mut self, action: &Action, out: &mut impl Write) -> anyhow::Result<()> {
        self.note(self.scenario.describe(action), out)?;
        match action {
            Action::Note(_) | Action::Check => {}
            Action::Net(target, change) => {
                for (i, proxy) in self.proxies.iter().enumerate() {
                    if target.is_some_and(|t| t != i) {
                        continue;
                    }
                    let mut rules = proxy.rules();
                    match change {
                        NetChange::Set(rule, dirs) => rules.set(rule.clone(), *dirs),
                        NetChange::Clear(kind) => rules.clear_kind(*kind),
                        NetChange::Heal => rules.heal(),
                    }
                }
            }
            Action::Process(who, fault) => {
                let targets: Vec<Option<usize>> = match who {
                    Who::Relay => vec![None],
                    Who::Nodes => (0..self.node_states.len()).map(Some).collect(),
                    Who::Node(i) => vec![Some(*i)],
                };
                for target in targets {
                    self.process_fault(target, *fault, out).await?;
                }
            }
            Action::Scanners(true) => {
                if self.stop.load(Ordering::Relaxed) {
                    self.start_scanners();
                }
            }
            Action::Scanners(false) => self.stop.store(true, Ordering::Relaxed),
            Action::Rate(rate) => self.pace.set(self.scenario.workload.interval_for(*rate)),
        }
        Ok(())
    }

    /// Applies one process fault to the relay (`None`) or a node.
    async fn process_fault(
        &mut self,
        target: Option<usize>,
        fault: ProcessFault,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let state = match target {
            None => self.relay_state,
            Some(i) => self.node_states[i],
        };
        let daemon: &mut Daemon = match target {
            None => &mut self.cluster.relay,
            Some(i) => &mut self.cluster.nodes[i],
        };
        let name = daemon.name().to_owned();
        let mut failure = None;
        let new_state = match fault {
            ProcessFault::Kill => {
                daemon.kill()?;
                State::Killed
            }
            ProcessFault::Freeze if state == State::Running => {
                daemon.freeze()?;
                State::Frozen
            }
            ProcessFault::Freeze => state,
            ProcessFault::Thaw | ProcessFault::Start if state == State::Frozen => {
                daemon.thaw()?;
                State::Running
            }
            ProcessFault::Thaw => state,
            ProcessFault::Start if state == State::Running => State::Running,
            ProcessFault::Start | ProcessFault::Restart | ProcessFault::Wipe => {
                if fault == ProcessFault::Wipe {
                    daemon.wipe_data()?;
                } else {
                    daemon.kill()?;
                }
                match daemon.start().await {
                    Ok(()) => State::Running,
                    Err(e) => {
                        failure = Some(format!("{name} did not start again: {e}"));
                        State::Killed
                    }
                }
            }
        };
        match target {
            None => self.relay_state = new_state,
            Some(i) => self.node_states[i] = new_state,
        }
        let restarted = matches!(fault, ProcessFault::Kill | ProcessFault::Restart)
            || (fault == ProcessFault::Start && state == State::Killed);
        if let Some(i) = target
            && restarted
        {
            self.marks.node_generation[i] += 1;
        }
        if fault == ProcessFault::Wipe {
            self.marks.relay_wipes += 1;
            self.marks.wipe_detected = false;
            // The relay's log starts again at offset 0.
            self.log = LogReader::new(self.relay_client.clone());
            self.logged_ids.clear();
        }
        if let Some(text) = failure {
            self.note(text.clone(), out)?;
            self.crashes.push(text);
        }
        Ok(())
    }

    /// One progress sample and its line; also notices crashed daemons and watermarks
    /// moving back.
    async fn sample(&mut self, out: &mut impl Write) -> anyhow::Result<ProgressSample> {
        self.notice_crashes(out)?;
        let accepted = self.ledger.accepted_count();
        let mut backlog = Some(0u64);
        let mut links = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..self.node_clients.len() {
            let status = match self.node_states[i] {
                State::Running => tokio::time::timeout(SAMPLE_TIMEOUT, self.node_clients[i].node_status())
                    .await
                    .ok()
                    .and_then(Result::ok),
                _ => None,
            };
            let rss_bytes = match self.node_states[i] {
                State::Killed => None,
                _ => self.cluster.nodes[i].pid().and_then(rss_bytes),
            };
            let disk = status.as_ref().and_then(|s| s.disk.as_ref());
            self.resources[i].observe(
                self.marks.node_generation[i],
                rss_bytes,
                disk.map(|d| (d.used_bytes, d.quota_bytes)),
            );
            nodes.push(NodeSample {
                rss_bytes,
                disk_used_bytes: disk.map(|d| d.used_bytes),
                disk_quota_bytes: disk.map(|d| d.quota_bytes),
                pressure: disk.map(|d| d.pressure.clone()),
                requests_in_flight: status.as_ref().and_then(|s| s.admission).map(|a| a.requests_in_flight),
            });
            match &status {
                Some(s) => {
                    backlog = backlog.map(|b| b + s.backlog_events());
                    links.push(s.relay.state.clone());
                    self.track_node_acks(i, s, out)?;
                }
                None => {
                    backlog = None;
                    links.push(match self.node_states[i] {
                        State::Killed => "killed".to_owned(),
                        State::Frozen => "frozen".to_owned(),
                        State::Running => "no answer".to_owned(),
                    });
                }
            }
        }
        let mut replicated = None;
        if self.relay_state == State::Running {
            let before = self.log.entries().len();
            if let Ok(Ok(_)) = tokio::time::timeout(LOG_TIMEOUT, self.log.poll()).await {
                replicated = Some(self.log.next_offset());
            }
            let new = self.log.entries()[before..].iter().map(|e| e.event_id.clone());
            self.logged_ids.extend(new);
            self.track_relay_watermarks(out).await?;
        }
        let lanes = self.ledger.lane_totals();
        let sample = ProgressSample { t_s: self.t(), accepted, backlog, replicated, links, lanes, nodes };
        let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let relay = match self.relay_state {
            State::Running if replicated.is_some() => "up",
            State::Running => "no answer",
            State::Killed => "killed",
            State::Frozen => "frozen",
        };
        let rules: Vec<String> = match self.proxies.first() {
            Some(p) => p.rules().rules().iter().map(|a| format!("{} ({})", a.rule(), a.dirs())).collect(),
            None => Vec::new(),
        };
        write!(
            out,
            "[{:6.1}s] accepted {:7} (+{:5})  backlog {:>7}  replicated {:>7}  link {}  relay {}  net {}",
            sample.t_s,
            accepted,
            accepted.saturating_sub(self.last_accepted),
            show(backlog),
            show(replicated),
            sample.links.join(","),
            relay,
            if rules.is_empty() { "healthy".to_owned() } else { rules.join(", ") }
        )?;
        if sample.lanes.values().any(|l| l.shed > 0) {
            let shed: Vec<String> = by_priority(sample.lanes.keys())
                .into_iter()
                .map(|lane| format!("{lane} {}", sample.lanes[lane].shed))
                .collect();
            write!(out, "  shed {}", shed.join(" "))?;
        }
        for n in &sample.nodes {
            if let Some(rss) = n.rss_bytes {
                write!(out, "  rss {}", mib(rss))?;
            }
            if let (Some(used), Some(quota), Some(pressure)) =
                (n.disk_used_bytes, n.disk_quota_bytes, &n.pressure)
                && self.scenario.disk_quota_bytes.is_some()
            {
                write!(out, "  disk {} of {} {pressure}", mib(used), mib(quota))?;
            }
        }
        writeln!(out)?;
        out.flush()?;
        self.last_accepted = accepted;
        self.progress.push(sample.clone());
        Ok(sample)
    }

    /// A daemon the timeline did not kill that has exited is a crash.
    fn notice_crashes(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut found = Vec::new();
        if self.relay_state != State::Killed && !self.cluster.relay.is_running() {
            self.relay_state = State::Killed;
            found.push(format!("relay exited on its own; log tail:\n{}", self.cluster.relay.log_tail(20)));
        }
        for (i, node) in self.cluster.nodes.iter_mut().enumerate() {
            if self.node_states[i] != State::Killed && !node.is_running() {
                self.node_states[i] = State::Killed;
                found.push(format!("{} exited on its own; log tail:\n{}", node.name(), node.log_tail(20)));
            }
        }
        for text in found {
            self.note(text.clone(), out)?;
            self.crashes.push(text);
        }
        Ok(())
    }

    fn track_node_acks(
        &mut self,
        node: usize,
        status: &NodeStatus,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let generation = self.marks.node_generation[node];
        let wipes = self.marks.relay_wipes;
        let mut notes = Vec::new();
        for (lane, lane_status) in &status.lanes {
            let acked = lane_status.acked_seq;
            let key = (node, lane.clone());
            if let Some(&(before, g, w)) = self.marks.node_acked.get(&key)
                && acked < before
            {
                let who = &self.scenario.nodes[node];
                if w != wipes {
                    self.marks.wipe_detected = true;
                    notes.push((
                        false,
                        format!(
                            "{who} lane {lane}: acked watermark moved back from {before} to {acked} after the \
                             relay was wiped; the node resends from the relay's new watermark"
                        ),
                    ));
                } else if g != generation {
                    notes.push((
                        false,
                        format!(
                            "{who} lane {lane}: acked watermark moved back from {before} to {acked} across a \
                             node restart (acks are recorded without an fsync of their own)"
                        ),
                    ));
                } else {
                    notes.push((
                        true,
                        format!("{who} lane {lane}: acked watermark moved back from {before} to {acked}"),
                    ));
                }
            }
            // A value keeps the generation and wipe count it was first seen under: a node
            // may take its idle timeout to notice a wiped relay, and its ack drops only then.
            let mark = match self.marks.node_acked.get(&key) {
                Some(&(seen, g, w)) if seen == acked => (acked, g, w),
                _ => (acked, generation, wipes),
            };
            self.marks.node_acked.insert(key, mark);
        }
        for (violation, text) in notes {
            self.note(text.clone(), out)?;
            if violation {
                self.watermark_violations.push(text);
            } else {
                self.observations.push(text);
            }
        }
        Ok(())
    }

    async fn track_relay_watermarks(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let Ok(Ok(view)) = tokio::time::timeout(SAMPLE_TIMEOUT, self.relay_client.nodes()).await else {
            return Ok(());
        };
        let wipes = self.marks.relay_wipes;
        let mut violations = Vec::new();
        for node in view.nodes {
            for s in node.streams {
                let key = (node.node_id.clone(), s.epoch, s.lane);
                if let Some(&(before, w)) = self.marks.relay_watermarks.get(&key)
                    && s.watermark < before
                    && w == wipes
                {
                    violations.push(format!(
                        "relay watermark of {}/{}/{} moved back from {before} to {} without a wipe",
                        key.0, key.1, key.2, s.watermark
                    ));
                }
                self.marks.relay_watermarks.insert(key, (s.watermark, wipes));
            }
        }
        for text in violations {
            self.note(text.clone(), out)?;
            self.watermark_violations.push(text);
        }
        Ok(())
    }

    /// The `check` step: heal, start everything, stop the scanners, converge, decide.
    async fn finish(mut self, wall: Instant, out: &mut impl Write) -> anyhow::Result<ChaosReport> {
        self.note(self.scenario.describe(&Action::Check), out)?;
        for proxy in &self.proxies {
            proxy.rules().heal();
        }
        if self.relay_state != State::Running {
            self.observations
                .push(format!("the relay was {:?} at the check and was started", self.relay_state));
            self.process_fault(None, ProcessFault::Start, out).await?;
        }
        for i in 0..self.node_states.len() {
            if self.node_states[i] != State::Running {
                let text = format!(
                    "{} was {:?} at the check and was started",
                    self.scenario.nodes[i], self.node_states[i]
                );
                self.observations.push(text);
                self.process_fault(Some(i), ProcessFault::Start, out).await?;
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let join_budget = self.scenario.workload.give_up_after + Duration::from_secs(30);
        for handle in std::mem::take(&mut self.scanners) {
            match tokio::time::timeout(join_budget, handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("a scanner task failed: {e}"),
                Err(_) => anyhow::bail!("a scanner did not stop within {join_budget:?}"),
            }
        }
        let data = self.ledger.snapshot();
        let wanted: Vec<String> = data.accepted().map(|(id, _, _)| id.clone()).collect();
        self.note(format!("scanners stopped: {}", data.counts), out)?;
        let healed = Instant::now();
        let budget = self.scenario.budget;
        let converged = loop {
            let sample = self.sample(out).await?;
            let missing = wanted.iter().filter(|id| !self.logged_ids.contains(*id)).count();
            if sample.backlog == Some(0) && sample.replicated.is_some() && missing == 0 {
                break Some(healed.elapsed());
            }
            if healed.elapsed() >= budget {
                let text = format!(
                    "not converged {:.1}s after the heal: backlog {:?}, {missing} accepted events not in the relay log",
                    healed.elapsed().as_secs_f64(),
                    sample.backlog
                );
                self.note(text, out)?;
                break None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if let Some(d) = converged {
            self.note(format!("converged {:.1}s after the heal", d.as_secs_f64()), out)?;
        }
        self.notice_crashes(out)?;
        if self.marks.relay_wipes > 0 {
            // A wiped relay is the one allowed move back (A4), and only if it is reported:
            // every node that had acknowledged events must say so on /v1/status.
            let mut reported = 0;
            for client in &self.node_clients {
                if let Ok(Ok(status)) = tokio::time::timeout(SAMPLE_TIMEOUT, client.node_status()).await {
                    reported += status.relay.regressions;
                }
            }
            if reported == 0 {
                self.watermark_violations.push(
                    "the relay was wiped after acknowledging events, but no node reported it \
                     (relay.regressions stayed 0 on every node)"
                        .to_owned(),
                );
            } else {
                self.observations
                    .push(format!("the wiped relay was reported by the nodes {reported} time(s)"));
            }
            if !self.marks.wipe_detected {
                self.observations.push(
                    "no sample caught a node's acked watermark moving back (they are 1 s apart)".to_owned(),
                );
            }
        }

        let mut node_shed: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (i, client) in self.node_clients.iter().enumerate() {
            let Ok(Ok(status)) = tokio::time::timeout(SAMPLE_TIMEOUT, client.node_status()).await else {
                continue;
            };
            for (lane, l) in &status.lanes {
                let counts = node_shed.entry(lane.clone()).or_default();
                for (reason, n) in l.shed.by_reason() {
                    *counts.entry(reason.to_owned()).or_default() += n;
                }
            }
            let disk = status.disk.as_ref();
            self.resources[i].note_end(
                disk.map(|d| d.pressure.clone()),
                disk.map_or(0, |d| d.pruned_under_pressure),
                disk.map_or(0, |d| d.compactions),
            );
        }

        let log = tokio::time::timeout(Duration::from_secs(60), check::fetch_log(&self.relay_client))
            .await
            .context("reading the relay log timed out")?
            .context("reading the relay log")?;
        let report = check::check(&data, &log);
        let mut verdicts = check_verdicts(&report);
        verdicts.push(self.verdict(
            5,
            self.watermark_violations.is_empty(),
            || format!("{} samples, no unexplained move back", self.progress.len()),
            &self.watermark_violations,
        ));
        let convergence_detail = match converged {
            Some(d) => format!(
                "converged {:.1}s after the heal (budget {:.0}s)",
                d.as_secs_f64(),
                budget.as_secs_f64()
            ),
            None => format!("not converged within {:.0}s after the heal", budget.as_secs_f64()),
        };
        verdicts.push(InvariantVerdict {
            name: INVARIANTS[6].0.to_owned(),
            statement: INVARIANTS[6].1.to_owned(),
            holds: converged.is_some(),
            detail: convergence_detail,
        });
        verdicts.push(self.verdict(
            7,
            self.crashes.is_empty(),
            || "every daemon ran until it was stopped".to_owned(),
            &self.crashes,
        ));
        let expectations =
            judge_expectations(&self.scenario.expectations, &data.lanes, self.t0, &self.progress);
        verdicts.push(shedding_verdict(&report, &expectations, data.counts.shed_answers));
        let usage: Vec<_> = self.resources.iter().map(|r| r.usage().clone()).collect();
        let (bounded, detail) = judge_limits(&self.scenario.limits, &usage);
        verdicts.push(InvariantVerdict {
            name: INVARIANTS[BOUNDED_RESOURCES].0.to_owned(),
            statement: INVARIANTS[BOUNDED_RESOURCES].1.to_owned(),
            holds: bounded,
            detail,
        });
        let ok = verdicts.iter().all(|v| v.holds);
        let mut proxy = ProxyStats::default();
        for p in &self.proxies {
            proxy.add(&p.stats());
        }
        let mut log_tails = Vec::new();
        if !ok {
            log_tails.push(("relay".to_owned(), self.cluster.relay.log_tail(LOG_TAIL_LINES)));
            for node in &self.cluster.nodes {
                log_tails.push((node.name().to_owned(), node.log_tail(LOG_TAIL_LINES)));
            }
        }
        let c = &report.counts;
        let report_out = ChaosReport {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            scale: self.scenario.scale,
            ok,
            duration_s: wall.elapsed().as_secs_f64(),
            budget_s: budget.as_secs_f64(),
            converged_after_heal_s: converged.map(|d| d.as_secs_f64()),
            verdicts,
            counts: RunCounts {
                accepted: c.accepted,
                logged: c.logged,
                streams: c.streams,
                conflicts: c.conflicts,
                rejected: c.rejected,
                unanswered: c.unanswered,
                unanswered_logged: c.unanswered_logged,
                requests: data.counts.requests,
                retries: data.counts.retries,
                duplicate_answers: data.counts.duplicates,
                shed_answers: data.counts.shed_answers,
                shed: c.shed,
            },
            timeline: self.timeline,
            progress: self.progress,
            violations: report.violations.iter().map(ToString::to_string).collect(),
            observations: self.observations,
            proxy,
            lanes: lane_reports(&data.lanes, &node_shed, self.t0),
            resources: usage,
            expectations,
            log_tails,
        };
        writeln!(out, "{report_out}")?;
        if !report_out.ok {
            for (name, tail) in &report_out.log_tails {
                writeln!(out, "--- {name} log tail:\n{tail}")?;
            }
        }
        Ok(report_out)
    }

    fn verdict(
        &self,
        index: usize,
        holds: bool,
        ok_detail: impl Fn() -> String,
        problems: &[String],
    ) -> InvariantVerdict {
        let (name, statement) = INVARIANTS[index];
        let detail = if holds {
            ok_detail()
        } else {
            let first: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
            format!("{} problems: {}", problems.len(), first.join("; "))
        };
        InvariantVerdict { name: name.to_owned(), statement: statement.to_owned(), holds, detail }
    }
}

/// The `shedding` verdict: the exactly-once check's shed violations (a shed event in the
/// log, a shed answer without `Retry-After`) and the scenario's expectation windows.
fn shedding_verdict(
    report: &check::Report,
    expectations: &[ExpectationVerdict],
    answers: u64,
) -> InvariantVerdict {
    let (name, statement) = INVARIANTS[SHEDDING];
    let (violations, kept) = violations_of(report, name);
    let failed: Vec<String> = expectations
        .iter()
        .filter(|e| !e.holds)
        .map(|e| format!("expected {}: {}", e.window, e.detail))
        .collect();
    let holds = violations == 0 && failed.is_empty();
    let detail = if holds {
        format!(
            "{answers} shed answers, each with Retry-After; {} shed events, none logged; {} expectation windows held",
            report.counts.shed,
            expectations.len()
        )
    } else {
        let first: Vec<String> =
            failed.into_iter().chain(kept.iter().map(ToString::to_string)).take(5).collect();
        format!(
            "{violations} violations, {} expectation windows failed: {}",
            expectations.iter().filter(|e| !e.holds).count(),
            first.join("; ")
        )
    };
    InvariantVerdict { name: name.to_owned(), statement: statement.to_owned(), holds, detail }
}

/// The per-lane part of the report: created events and shed answers as the scanners were
/// told, next to the nodes' own counts.
fn lane_reports(
    lanes: &BTreeMap<String, LaneAnswers>,
    node_shed: &BTreeMap<String, BTreeMap<String, u64>>,
    t0: Instant,
) -> Vec<LaneReport> {
    let at = |t: &Instant| t.saturating_duration_since(t0).as_secs_f64();
    by_priority(lanes.keys().chain(node_shed.keys()))
        .into_iter()
        .map(|lane| {
            let answers = lanes.get(lane);
            let shed = answers
                .into_iter()
                .flat_map(|a| &a.shed)
                .map(|(reason, times)| ShedTally {
                    status: reason.status,
                    reason: reason.error.clone(),
                    answers: times.len() as u64,
                    first_t_s: times.first().map_or(0.0, at),
                    last_t_s: times.last().map_or(0.0, at),
                })
                .collect();
            LaneReport {
                lane: lane.clone(),
                created: answers.map_or(0, |a| a.created.len() as u64),
                shed,
                node_shed: node_shed.get(lane).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// Lane names without repeats, most urgent first (as the node lists them), then any
/// other name.
fn by_priority<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    let mut names: Vec<&String> = names.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    names.sort_by_key(|lane| LANES.iter().position(|l| l == lane).unwrap_or(LANES.len()));
    names
}

/// The resident set of process `pid` (`VmRSS` in `/proc/PID/status`), if it can be read.
fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}
