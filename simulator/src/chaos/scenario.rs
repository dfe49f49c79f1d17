//! Scenario files: the nodes, the scanners' workload and a timeline of faults, in TOML.
//!
//! A file is read into a [`ScenarioFile`] (the TOML as written) and checked into a
//! [`Scenario`] (durations parsed, targets resolved, seeded random kills expanded into
//! plain kill and start steps, times scaled for `--quick`). Everything the runner does is
//! in the [`Scenario`]'s steps, so the timeline printed at the start is the whole plan.
//!
//! ```toml
//! name = "wan-flap"
//! seed = 7
//! quick_scale = 0.3
//! convergence_budget = "45s"
//!
//! [nodes]
//! count = 1
//!
//! [workload]
//! scanners = 2
//! rate = 150
//!
//! [[step]]
//! at = "5s"
//! partition = true
//!
//! [[step]]
//! at = "8s"
//! heal = true
//!
//! [[step]]
//! at = "12s"
//! check = true
//! ```
//!
//! Overload scenarios also set node limits (`[nodes] disk_quota_bytes`,
//! `requests_in_flight_max`), change the scanners' rate on the timeline (`rate = 2000` at a
//! step), and state what must be seen: `[[expect]]` windows of the timeline in which named
//! lanes must be shed, spared or accepted ([`Expectation`]), and `[limits]` on the node's
//! memory and disk use for the whole run ([`Limits`]).
//!
//! The README's chaos section documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::rules::{Direction, Directions, Rule, RuleKind};

/// A scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the scenario's shape.
    #[error("cannot parse the scenario {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// The file parses but says something impossible.
    #[error("scenario {name}: {message}")]
    Invalid {
        /// The scenario's name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The scenario's name, used in output and reports.
    pub name: String,
    /// What it tests, printed at the start.
    #[serde(default)]
    pub description: String,
    /// Seed of the scanners, the rules' random choices and the random kills.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Factor applied to every step time (and random-kill window and downtime) under
    /// `--quick`.
    #[serde(default = "default_quick_scale")]
    pub quick_scale: f64,
    /// How long, after the final heal, the cluster may take to converge.
    #[serde(default = "default_budget")]
    pub convergence_budget: String,
    /// The nodes.
    #[serde(default)]
    pub nodes: NodesFile,
    /// The scanners.
    #[serde(default)]
    pub workload: WorkloadFile,
    /// The timeline.
    #[serde(default, rename = "step")]
    pub steps: Vec<StepFile>,
    /// What the scanners must have been told within windows of the timeline.
    #[serde(default, rename = "expect")]
    pub expectations: Vec<ExpectFile>,
    /// Bounds on the nodes' resources over the whole run.
    #[serde(default)]
    pub limits: Limits,
}

fn default_seed() -> u64 {
    1
}
fn default_quick_scale() -> f64 {
    1.0
}
fn default_budget() -> String {
    "45s".to_owned()
}

/// The `[nodes]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    /// How many nodes, named `store-0001`, `store-0002`, … (ignored when `ids` is given).
    #[serde(default = "one")]
    pub count: usize,
    /// Explicit node ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Extra flags for every node, such as `["--retention", "1h"]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// The store's disk quota (`--disk-quota-bytes`); the node's default when absent.
    pub disk_quota_bytes: Option<u64>,
    /// Most posts in flight (`--requests-in-flight-max`); the node's default when absent.
    pub requests_in_flight_max: Option<usize>,
}

fn one() -> usize {
    1
}

impl Default for NodesFile {
    fn default() -> NodesFile {
        NodesFile {
            count: 1,
            ids: Vec::new(),
            args: Vec::new(),
            disk_quota_bytes: None,
            requests_in_flight_max: None,
        }
    }
}

/// The `[workload]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// Scanners per node.
    #[serde(default = "default_scanners")]
    pub scanners: usize,
    /// Target of new events per second per node (it sets the interval between each
    /// scanner's request starts; a node slower than that gets one request per scanner at
    /// a time).
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Share of requests that carry an array of events.
    #[serde(default = "default_array_ratio")]
    pub array_ratio: f64,
    /// Most events in one array.
    #[serde(default = "default_array_max")]
    pub array_events_max: usize,
    /// Share of items that re-post an accepted event (same id, same payload).
    #[serde(default = "default_duplicate_rate")]
    pub duplicate_rate: f64,
    /// Share of items that re-post an accepted id with another payload (must get 409).
    #[serde(default = "default_conflict_rate")]
    pub conflict_rate: f64,
    /// Share of items that are invalid (must get 422 and never reach the relay).
    #[serde(default = "default_invalid_rate")]
    pub invalid_rate: f64,
    /// Relative weight of each event kind; the scanners' built-in mix when empty.
    #[serde(default)]
    pub kinds: BTreeMap<String, u32>,
    /// How long a scanner retries one request before it gives up.
    #[serde(default = "default_give_up")]
    pub give_up_after: String,
    /// Longest a scanner waits before posting a shed event again, whatever the answer's
    /// `Retry-After` says (the node asks for up to 60 s; test runs are shorter).
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: String,
    /// Bytes of padding in each event's `attrs`, so that events have the size of real
    /// telemetry and a disk quota fills within a scenario.
    #[serde(default)]
    pub attrs_bytes: usize,
}

fn default_scanners() -> usize {
    2
}
fn default_rate() -> f64 {
    100.0
}
fn default_array_ratio() -> f64 {
    0.2
}
fn default_array_max() -> usize {
    20
}
fn default_duplicate_rate() -> f64 {
    0.05
}
fn default_conflict_rate() -> f64 {
    0.01
}
fn default_invalid_rate() -> f64 {
    0.005
}
fn default_give_up() -> String {
    "120s".to_owned()
}
fn default_retry_after_max() -> String {
    "2s".to_owned()
}

impl Default for WorkloadFile {
    fn default() -> WorkloadFile {
        WorkloadFile {
            scanners: default_scanners(),
            rate: default_rate(),
            array_ratio: default_array_ratio(),
            array_events_max: default_array_max(),
            duplicate_rate: default_duplicate_rate(),
            conflict_rate: default_conflict_rate(),
            invalid_rate: default_invalid_rate(),
            kinds: BTreeMap::new(),
            give_up_after: default_give_up(),
            retry_after_max: default_retry_after_max(),
            attrs_bytes: 0,
        }
    }
}

/// One `[[step]]`: a time and one or more actions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// When, from the start of the timeline (`"5s"`, `"1m30s"`).
    pub at: String,
    /// Text printed in the timeline.
    pub note: Option<String>,
    /// The node whose link the network actions change; every node's when absent.
    pub target: Option<String>,
    /// Direction of `loss`, `latency`/`jitter`, `duplicate`, `reorder`, `bandwidth_kbit`
    /// and `hold`: `both` (default), `to-relay` or `to-node`.
    pub direction: Option<String>,
    /// Drop every datagram both ways.
    pub partition: Option<bool>,
    /// Drop every datagram of one direction: `to-relay` or `to-node`.
    pub oneway: Option<String>,
    /// Drop every datagram both ways without a trace (a dead NAT binding); the same
    /// verdict as `partition`, named for what it models.
    pub blackhole: Option<bool>,
    /// Remove every network rule.
    pub heal: Option<bool>,
    /// Drop probability, 0 to 1 (0 removes the rule).
    pub loss: Option<f64>,
    /// Fixed delay.
    pub latency: Option<String>,
    /// Random extra delay, uniform up to this.
    pub jitter: Option<String>,
    /// Probability of delivering a datagram twice.
    pub duplicate: Option<f64>,
    /// Probability of holding a datagram back by `reorder_by` so later ones overtake it.
    pub reorder: Option<f64>,
    /// How long `reorder` holds a datagram back (default 25ms).
    pub reorder_by: Option<String>,
    /// Bandwidth cap in kbit/s (0 removes it).
    pub bandwidth_kbit: Option<u64>,
    /// Hold every datagram this long before delivering it ("0s" removes it).
    pub hold: Option<String>,
    /// SIGKILL a process: `relay`, `node` (every node) or a node id.
    pub kill: Option<String>,
    /// Start a killed process again (on its data).
    pub start: Option<String>,
    /// SIGKILL and start at once.
    pub restart: Option<String>,
    /// SIGSTOP.
    pub freeze: Option<String>,
    /// SIGCONT.
    pub thaw: Option<String>,
    /// Kill the relay, delete its data directory and start it on an empty store.
    pub wipe: Option<String>,
    /// Seeded random power cuts of a process: `count` kills within `over`, each followed
    /// by a start after a random downtime of up to `down`.
    pub random_kills: Option<String>,
    /// For `random_kills`: how many (default 3).
    pub count: Option<u32>,
    /// For `random_kills`: the window (default 10s).
    pub over: Option<String>,
    /// For `random_kills`: the longest downtime (default 0s: start at once).
    pub down: Option<String>,
    /// `stop` or `start` the scanners.
    pub scanners: Option<String>,
    /// New events per second per node from this step on (it sets the interval between each
    /// scanner's request starts).
    pub rate: Option<f64>,
    /// The final step: stop the scanners, heal, thaw and start everything, wait for
    /// convergence within the budget and check.
    pub check: Option<bool>,
}

/// One `[[expect]]` table: what the scanners must have been told within a window of the
/// timeline. Lanes are `critical`, `standard` and `bulk`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFile {
    /// Start of the window, from the start of the timeline (scaled like step times).
    pub from: String,
    /// End of the window (at most the `check` step's time).
    pub to: String,
    /// Printed with the verdict.
    pub note: Option<String>,
    /// Lanes that got at least one shed answer (of `reason`, when given) in the window.
    #[serde(default)]
    pub shed: Vec<String>,
    /// Lanes that got no shed answer at all in the window, whatever the reason.
    #[serde(default)]
    pub not_shed: Vec<String>,
    /// Lanes that had at least one event created (201) in the window.
    #[serde(default)]
    pub accepted: Vec<String>,
    /// The error code `shed` and `shed_order` count: `overloaded`, `disk_quota`,
    /// `disk_full` or `store_failed`; every one when absent.
    pub reason: Option<String>,
    /// Lanes whose first shed answer (of `reason`) in the window came in this order; each
    /// must have one.
    #[serde(default)]
    pub shed_order: Vec<String>,
    /// Every node's disk pressure in the last progress sample of the window: `normal`,
    /// `shedding_bulk`, `shedding_standard` or `full`.
    pub pressure: Option<String>,
}

/// The `[limits]` table: bounds on each node's resources that must hold at every progress
/// sample of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most a node's resident set (`VmRSS`) may grow above its first sample after a start.
    pub rss_growth_max_bytes: Option<u64>,
    /// Most a node's store may occupy on disk above its quota (`disk.used_bytes` minus
    /// `disk.quota_bytes` in `/v1/status`): the quota is checked once per commit.
    pub disk_over_quota_max_bytes: Option<u64>,
}

/// Which process a process fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The relay.
    Relay,
    /// Every node.
    Nodes,
    /// One node, by index.
    Node(usize),
}

/// A process fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessFault {
    /// SIGKILL.
    Kill,
    /// Start again on the same data.
    Start,
    /// SIGKILL, then start.
    Restart,
    /// SIGSTOP.
    Freeze,
    /// SIGCONT.
    Thaw,
    /// SIGKILL, delete the data directory, start.
    Wipe,
}

impl ProcessFault {
    fn as_str(self) -> &'static str {
        match self {
            ProcessFault::Kill => "kill (SIGKILL)",
            ProcessFault::Start => "start",
            ProcessFault::Restart => "restart (SIGKILL, start)",
            ProcessFault::Freeze => "freeze (SIGSTOP)",
            ProcessFault::Thaw => "thaw (SIGCONT)",
            ProcessFault::Wipe => "wipe (SIGKILL, delete the store, start empty)",
        }
    }
}

/// A change to the network.
#[derive(Debug, Clone, PartialEq)]
pub enum NetChange {
    /// Add or replace a rule.
    Set(Rule, Directions),
    /// Remove every rule of this kind.
    Clear(RuleKind),
    /// Remove every rule.
    Heal,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Print a note.
    Note(String),
    /// Change the rules of one node's proxy (`Some(index)`) or of all.
    Net(Option<usize>, NetChange),
    /// Signal or restart a process.
    Process(Who, ProcessFault),
    /// Start (`true`) or stop the scanners.
    Scanners(bool),
    /// New events per second per node.
    Rate(f64),
    /// Heal, converge and check.
    Check,
}

/// One action at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// From the start of the timeline.
    pub at: Duration,
    /// What happens.
    pub action: Action,
}

/// The scanners' behaviour.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Scanners per node.
    pub scanners: usize,
    /// New events per second per node.
    pub rate: f64,
    /// Share of array requests.
    pub array_ratio: f64,
    /// Most events per array.
    pub array_events_max: usize,
    /// Share of re-posts.
    pub duplicate_rate: f64,
    /// Share of conflicting re-posts.
    pub conflict_rate: f64,
    /// Share of invalid items.
    pub invalid_rate: f64,
    /// Kind weights (empty for the built-in mix).
    pub kinds: Vec<(String, u32)>,
    /// Retry budget of one request.
    pub give_up_after: Duration,
    /// Longest wait before a shed event is posted again.
    pub retry_after_max: Duration,
    /// Padding bytes per event.
    pub attrs_bytes: usize,
}

impl Workload {
    /// The mean interval between a scanner's request starts that makes `scanners`
    /// scanners post about `rate` new events per second per node (at most 10 s).
    pub fn interval_for(&self, rate: f64) -> Duration {
        let mean_items =
            (1.0 - self.array_ratio) + self.array_ratio * (2.0 + self.array_events_max as f64) / 2.0;
        Duration::from_secs_f64((mean_items * self.scanners as f64 / rate).min(10.0))
    }
}

/// The lanes, most urgent first.
pub const LANES: [&str; 3] = ["critical", "standard", "bulk"];
/// The error codes of shed answers (API.md).
pub const SHED_REASONS: [&str; 4] = ["overloaded", "disk_quota", "disk_full", "store_failed"];
/// The disk pressures of `/v1/status`.
pub const PRESSURES: [&str; 4] = ["normal", "shedding_bulk", "shedding_standard", "full"];

/// What the scanners must have been told within `[from, to]` of the timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectation {
    /// Window start, from the start of the timeline (scaled).
    pub from: Duration,
    /// Window end (scaled).
    pub to: Duration,
    /// The table as written, its lanes, reason and pressure checked.
    pub spec: ExpectFile,
}

/// How to load a scenario file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The quick variant: step times scaled by the file's `quick_scale`.
    pub quick: bool,
    /// A time factor that overrides both variants.
    pub scale: Option<f64>,
    /// A seed that overrides the file's.
    pub seed: Option<u64>,
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it tests.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// The factor the step times were multiplied by (1 for the full variant).
    pub scale: f64,
    /// Node ids.
    pub nodes: Vec<String>,
    /// Extra node flags (the `[nodes]` settings included).
    pub node_args: Vec<String>,
    /// The nodes' disk quota, when the scenario sets one.
    pub disk_quota_bytes: Option<u64>,
    /// The scanners.
    pub workload: Workload,
    /// The convergence budget after the final heal.
    pub budget: Duration,
    /// The timeline, in time order, ending with [`Action::Check`].
    pub steps: Vec<Step>,
    /// What must have been seen within windows of the timeline.
    pub expectations: Vec<Expectation>,
    /// Bounds on the nodes' resources.
    pub limits: Limits,
}

impl Scenario {
    /// Reads and checks a scenario file with the variant and overrides of `options`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })?;
        let mut file: ScenarioFile = toml::from_str(&text)
            .map_err(|source| ScenarioError::Parse { path: path.to_path_buf(), source })?;
        if let Some(seed) = options.seed {
            file.seed = seed;
        }
        let factor = options.scale.unwrap_or(if options.quick { file.quick_scale } else { 1.0 });
        Scenario::from_file(file, factor)
    }

    /// Checks a parsed file, scaling step times by `scale`.
    pub fn from_file(file: ScenarioFile, scale: f64) -> Result<Scenario, ScenarioError> {
        let name = file.name.clone();
        let invalid = |message: String| ScenarioError::Invalid { name: name.clone(), message };
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(invalid(format!("time scale {scale} must be above 0")));
        }
        let nodes = if file.nodes.ids.is_empty() {
            (1..=file.nodes.count).map(|i| format!("store-{i:04}")).collect()
        } else {
            file.nodes.ids.clone()
        };
        if nodes.is_empty() {
            return Err(invalid("a scenario needs at least one node".to_owned()));
        }
        let workload = workload(&file.workload).map_err(&invalid)?;
        let budget = duration(&file.convergence_budget).map_err(&invalid)?;
        let mut rng = StdRng::seed_from_u64(file.seed ^ 0x5eed_c4a0);
        let mut steps = Vec::new();
        let mut last_at = Duration::ZERO;
        for (i, step) in file.steps.iter().enumerate() {
            let at = duration(&step.at).map_err(|e| invalid(format!("step {}: {e}", i + 1)))?;
            if at < last_at {
                return Err(invalid(format!("step {} at {} comes before the step above it", i + 1, step.at)));
            }
            last_at = at;
            let parsed = step_actions(step, &nodes, scale, &mut rng)
                .map_err(|e| invalid(format!("step {} (at {}): {e}", i + 1, step.at)))?;
            steps.extend(
                parsed.into_iter().map(|(offset, action)| Step { at: at.mul_f64(scale) + offset, action }),
            );
        }
        // Expanded random kills may reach past later steps; keep time order (stable, so
        // the actions of one step stay in file order).
        steps.sort_by_key(|s| s.at);
        let checks = steps.iter().filter(|s| s.action == Action::Check).count();
        if checks != 1 || steps.last().map(|s| &s.action) != Some(&Action::Check) {
            return Err(invalid("the timeline must end with exactly one `check = true` step".to_owned()));
        }
        let check_at = steps.last().map_or(Duration::ZERO, |s| s.at);
        let expectations = file
            .expectations
            .iter()
            .enumerate()
            .map(|(i, e)| {
                expectation(e, scale, check_at).map_err(|m| invalid(format!("expectation {}: {m}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut node_args = file.nodes.args;
        if let Some(bytes) = file.nodes.disk_quota_bytes {
            if bytes == 0 {
                return Err(invalid("disk_quota_bytes must be above 0".to_owned()));
            }
            node_args.extend(["--disk-quota-bytes".to_owned(), bytes.to_string()]);
        }
        if let Some(n) = file.nodes.requests_in_flight_max {
            if n == 0 {
                return Err(invalid("requests_in_flight_max must be at least 1".to_owned()));
            }
            node_args.extend(["--requests-in-flight-max".to_owned(), n.to_string()]);
        }
        let limits = file.limits;
        if limits.disk_over_quota_max_bytes.is_some() && file.nodes.disk_quota_bytes.is_none() {
            return Err(invalid(
                "[limits] disk_over_quota_max_bytes needs [nodes] disk_quota_bytes".to_owned(),
            ));
        }
        Ok(Scenario {
            name: file.name,
            description: file.description,
            seed: file.seed,
            scale,
            nodes,
            node_args,
            disk_quota_bytes: file.nodes.disk_quota_bytes,
            workload,
            budget,
            steps,
            expectations,
            limits,
        })
    }

    /// When the final check starts.
    pub fn check_at(&self) -> Duration {
        self.steps.last().map_or(Duration::ZERO, |s| s.at)
    }

    /// A step's action in words.
    pub fn describe(&self, action: &Action) -> String {
        let node = |i: usize| self.nodes.get(i).map_or("?", String::as_str);
        match action {
            Action::Note(text) => format!("note: {text}"),
            Action::Net(target, change) => {
                let on =
                    target.map_or_else(|| "every node's link".to_owned(), |i| format!("link of {}", node(i)));
                match change {
                    NetChange::Set(rule, dirs) if rule.is_noop() => {
                        format!("{on}: remove {:?} ({dirs})", rule.kind())
                    }
                    NetChange::Set(rule, dirs) => format!("{on}: {rule} ({dirs})"),
                    NetChange::Clear(kind) => format!("{on}: remove {kind:?}"),
                    NetChange::Heal => format!("{on}: heal (no rules)"),
                }
            }
            Action::Process(who, fault) => {
                let who = match who {
                    Who::Relay => "relay".to_owned(),
                    Who::Nodes => "every node".to_owned(),
                    Who::Node(i) => format!("node {}", node(*i)),
                };
                format!("{who}: {}", fault.as_str())
            }
            Action::Scanners(true) => "scanners start".to_owned(),
            Action::Scanners(false) => "scanners stop".to_owned(),
            Action::Rate(rate) => format!("scanners post {rate} new events/s per node"),
            Action::Check => {
                format!("check: stop scanners, heal, thaw, start; converge within {:?}", self.budget)
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "  {:>7.1}s  {}", step.at.as_secs_f64(), self.describe(&step.action))?;
        }
        for e in &self.expectations {
            writeln!(f, "  expect {e}")?;
        }
        Ok(())
    }
}

fn workload(w: &WorkloadFile) -> Result<Workload, String> {
    for (what, p) in [
        ("array_ratio", w.array_ratio),
        ("duplicate_rate", w.duplicate_rate),
        ("conflict_rate", w.conflict_rate),
        ("invalid_rate", w.invalid_rate),
    ] {
        probability(what, p)?;
    }
    if w.duplicate_rate + w.conflict_rate + w.invalid_rate > 1.0 {
        return Err("duplicate_rate + conflict_rate + invalid_rate must not exceed 1".to_owned());
    }
    if w.scanners == 0 || !(w.rate > 0.0 && w.rate.is_finite()) {
        return Err("the workload needs at least one scanner and a rate above 0".to_owned());
    }
    if w.attrs_bytes > crate::scanner::PAD_BYTES_MAX {
        return Err(format!(
            "attrs_bytes = {} is over the {} bytes an event's attrs can carry",
            w.attrs_bytes,
            crate::scanner::PAD_BYTES_MAX
        ));
    }
    const KINDS: [&str; 8] = ["scan", "receive", "pick", "ship", "dispatch", "adjust", "count", "transfer"];
    if let Some(kind) = w.kinds.keys().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(format!("unknown event kind {kind:?}; the kinds are {}", KINDS.join(", ")));
    }
    if !w.kinds.is_empty() && w.kinds.values().all(|&v| v == 0) {
        return Err("the kind weights must not all be 0".to_owned());
    }
    Ok(Workload {
        scanners: w.scanners,
        rate: w.rate,
        array_ratio: w.array_ratio,
        array_events_max: w.array_events_max.max(2),
        duplicate_rate: w.duplicate_rate,
        conflict_rate: w.conflict_rate,
        invalid_rate: w.invalid_rate,
        kinds: w.kinds.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        give_up_after: duration(&w.give_up_after)?,
        retry_after_max: duration(&w.retry_after_max)?,
        attrs_bytes: w.attrs_bytes,
    })
}

/// Checks an `[[expect]]` table, scaling its window like the steps.
fn expectation(e: &ExpectFile, scale: f64, check_at: Duration) -> Result<Expectation, String> {
    let from = duration(&e.from)?.mul_f64(scale);
    let to = duration(&e.to)?.mul_f64(scale);
    if from >= to {
        return Err(format!("the window from {} to {} is empty", e.from, e.to));
    }
    if to > check_at {
        return Err(format!("the window ends at {} after the check step", e.to));
    }
    for lane in e.shed.iter().chain(&e.not_shed).chain(&e.accepted).chain(&e.shed_order) {
        if !LANES.contains(&lane.as_str()) {
            return Err(format!("unknown lane {lane:?}; the lanes are {}", LANES.join(", ")));
        }
    }
    if let Some(lane) = e.shed.iter().chain(&e.shed_order).find(|l| e.not_shed.contains(l)) {
        return Err(format!("lane {lane} cannot be both shed and not shed"));
    }
    if let Some(reason) = e.reason.as_deref().filter(|r| !SHED_REASONS.contains(r)) {
        return Err(format!("unknown reason {reason:?}; the reasons are {}", SHED_REASONS.join(", ")));
    }
    if let Some(pressure) = e.pressure.as_deref().filter(|p| !PRESSURES.contains(p)) {
        return Err(format!("unknown pressure {pressure:?}; the pressures are {}", PRESSURES.join(", ")));
    }
    let empty = e.shed.is_empty()
        && e.not_shed.is_empty()
        && e.accepted.is_empty()
        && e.shed_order.is_empty()
        && e.pressure.is_none();
    if empty {
        return Err("the expectation expects nothing".to_owned());
    }
    Ok(Expectation { from, to, spec: e.clone() })
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}s to {:.1}s:", self.from.as_secs_f64(), self.to.as_secs_f64())?;
        let e = &self.spec;
        let reason = e.reason.as_deref().map_or_else(String::new, |r| format!(" by {r}"));
        let list = |lanes: &[String]| lanes.join(", ");
        if !e.shed.is_empty() {
            write!(f, " {} shed{reason};", list(&e.shed))?;
        }
        if !e.shed_order.is_empty() {
            write!(f, " first shed{reason} in the order {};", e.shed_order.join(" < "))?;
        }
        if !e.not_shed.is_empty() {
            write!(f, " {} never shed;", list(&e.not_shed))?;
        }
        if !e.accepted.is_empty() {
            write!(f, " {} accepted;", list(&e.accepted))?;
        }
        if let Some(p) = &e.pressure {
            write!(f, " disk pressure {p} at the end;")?;
        }
        if let Some(note) = &e.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

fn probability(what: &str, p: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{what} = {p} is not between 0 and 1")) }
}

/// Parses `"5s"`, `"250ms"`, `"2m"`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("bad duration {text:?}: {e}"))
}

fn who(text: &str, nodes: &[String]) -> Result<Who, String> {
    match text {
        "relay" => Ok(Who::Relay),
        "node" | "nodes" => Ok(Who::Nodes),
        id => {
            nodes.iter().position(|n| n == id).map(Who::Node).ok_or_else(|| {
                format!("unknown process {id:?}: use relay, node or one of {}", nodes.join(", "))
            })
        }
    }
}

fn direction(text: Option<&str>) -> Result<Directions, String> {
    match text {
        None | Some("both") => Ok(Directions::Both),
        Some("to-relay") => Ok(Directions::Only(Direction::ToRelay)),
        Some("to-node") => Ok(Directions::Only(Direction::ToNode)),
        Some(other) => Err(format!("unknown direction {other:?}: use both, to-relay or to-node")),
    }
}

/// The actions of one step, each with its offset from the step's (scaled) time.
fn step_actions(
    step: &StepFile,
    nodes: &[String],
    scale: f64,
    rng: &mut StdRng,
) -> Result<Vec<(Duration, Action)>, String> {
    let mut out: Vec<(Duration, Action)> = Vec::new();
    let mut now = |action: Action| out.push((Duration::ZERO, action));
    if let Some(text) = &step.note {
        now(Action::Note(text.clone()));
    }
    let target = match &step.target {
        None => None,
        Some(id) => {
            Some(nodes.iter().position(|n| n == id).ok_or_else(|| format!("unknown target node {id:?}"))?)
        }
    };
    let dirs = direction(step.direction.as_deref())?;
    let mut net = |change: NetChange| now(Action::Net(target, change));
    if step.heal == Some(true) {
        net(NetChange::Heal);
    }
    if step.partition == Some(true) || step.blackhole == Some(true) {
        net(NetChange::Set(Rule::Partition, Directions::Both));
    }
    if step.partition == Some(false) || step.blackhole == Some(false) {
        net(NetChange::Clear(RuleKind::Partition));
    }
    if let Some(way) = &step.oneway {
        net(NetChange::Set(Rule::Partition, direction(Some(way))?));
    }
    if let Some(p) = step.loss {
        net(NetChange::Set(Rule::Loss(probability("loss", p)?), dirs));
    }
    if step.latency.is_some() || step.jitter.is_some() {
        let base = step.latency.as_deref().map(duration).transpose()?.unwrap_or_default();
        let jitter = step.jitter.as_deref().map(duration).transpose()?.unwrap_or_default();
        net(NetChange::Set(Rule::Latency { base, jitter }, dirs));
    }
    if let Some(p) = step.duplicate {
        net(NetChange::Set(Rule::Duplicate(probability("duplicate", p)?), dirs));
    }
    if let Some(p) = step.reorder {
        let by = step.reorder_by.as_deref().map(duration).transpose()?.unwrap_or(Duration::from_millis(25));
        net(NetChange::Set(Rule::Reorder { p: probability("reorder", p)?, by }, dirs));
    }
    if let Some(kbit) = step.bandwidth_kbit {
        if kbit == 0 {
            net(NetChange::Clear(RuleKind::Bandwidth));
        } else {
            net(NetChange::Set(Rule::Bandwidth(kbit.saturating_mul(1000)), dirs));
        }
    }
    if let Some(d) = &step.hold {
        net(NetChange::Set(Rule::Hold(duration(d)?), dirs));
    }
    for (text, fault) in [
        (&step.kill, ProcessFault::Kill),
        (&step.restart, ProcessFault::Restart),
        (&step.wipe, ProcessFault::Wipe),
        (&step.freeze, ProcessFault::Freeze),
        (&step.thaw, ProcessFault::Thaw),
        (&step.start, ProcessFault::Start),
    ] {
        if let Some(text) = text {
            let who = who(text, nodes)?;
            if fault == ProcessFault::Wipe && who != Who::Relay {
                return Err("only the relay can be wiped (a wiped node starts a new epoch)".to_owned());
            }
            now(Action::Process(who, fault));
        }
    }
    match step.scanners.as_deref() {
        None => {}
        Some("stop") => now(Action::Scanners(false)),
        Some("start") => now(Action::Scanners(true)),
        Some(other) => return Err(format!("scanners = {other:?}: use stop or start")),
    }
    if let Some(rate) = step.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(format!("rate = {rate} must be above 0"));
        }
        now(Action::Rate(rate));
    }
    if let Some(text) = &step.random_kills {
        let who = who(text, nodes)?;
        let count = step.count.unwrap_or(3);
        let over = step.over.as_deref().map(duration).transpose()?.unwrap_or(Duration::from_secs(10));
        let down = step.down.as_deref().map(duration).transpose()?.unwrap_or_default();
        out.extend(random_kills(&who, count, over.mul_f64(scale), down.mul_f64(scale), rng));
    } else if step.count.is_some() || step.over.is_some() || step.down.is_some() {
        return Err("count, over and down belong to random_kills".to_owned());
    }
    if step.check == Some(true) {
        out.push((Duration::ZERO, Action::Check));
    }
    if out.is_empty() {
        return Err("the step does nothing".to_owned());
    }
    Ok(out)
}

/// `count` kills at seeded times within `over`, each followed by a start after a seeded
/// downtime of up to `down` (and before the next kill).
fn random_kills(
    who: &Who,
    count: u32,
    over: Duration,
    down: Duration,
    rng: &mut StdRng,
) -> Vec<(Duration, Action)> {
    let mut times: Vec<Duration> = (0..count).map(|_| over.mul_f64(rng.random::<f64>())).collect();
    times.sort();
    let mut out = Vec::new();
    for (i, &t) in times.iter().enumerate() {
        let gap = times.get(i + 1).map_or(down, |next| (*next - t) / 2);
        let downtime = down.mul_f64(rng.random::<f64>()).min(gap);
        out.push((t, Action::Process(who.clone(), ProcessFault::Kill)));
        out.push((t + downtime, Action::Process(who.clone(), ProcessFault::Start)));
    }
    out
}

#[cfg(test)]
mod tests;
