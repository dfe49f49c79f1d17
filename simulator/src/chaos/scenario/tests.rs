//! Tests of scenario parsing and checking.

use std::time::Duration;

use super::*;

fn parse(text: &str, scale: f64) -> Result<Scenario, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text)
        .map_err(|source| ScenarioError::Parse { path: PathBuf::from("test.toml"), source })?;
    Scenario::from_file(file, scale)
}

const FLAP: &str = r#"
name = "flap"
seed = 3
quick_scale = 0.5
[nodes]
count = 2
[[step]]
at = "4s"
partition = true
[[step]]
at = "6s"
heal = true
loss = 0.2
jitter = "300ms"
target = "store-0002"
[[step]]
at = "10s"
check = true
"#;

#[test]
fn steps_parse_scale_and_keep_file_order_within_a_step() {
    let s = parse(FLAP, 0.5).unwrap();
    assert_eq!(s.nodes, ["store-0001", "store-0002"]);
    let at: Vec<f64> = s.steps.iter().map(|s| s.at.as_secs_f64()).collect();
    assert_eq!(at, [2.0, 3.0, 3.0, 3.0, 5.0]);
    assert_eq!(s.steps[0].action, Action::Net(None, NetChange::Set(Rule::Partition, Directions::Both)));
    assert_eq!(s.steps[1].action, Action::Net(Some(1), NetChange::Heal));
    assert_eq!(s.steps[2].action, Action::Net(Some(1), NetChange::Set(Rule::Loss(0.2), Directions::Both)));
    let jitter = Rule::Latency { base: Duration::ZERO, jitter: Duration::from_millis(300) };
    assert_eq!(s.steps[3].action, Action::Net(Some(1), NetChange::Set(jitter, Directions::Both)));
    assert_eq!(s.steps[4].action, Action::Check);
}

#[track_caller]
fn check_invalid(text: &str, expect: &str) {
    let err = parse(text, 1.0).unwrap_err().to_string();
    assert!(err.contains(expect), "{err}");
}

#[test]
fn impossible_scenarios_are_refused_with_the_reason() {
    check_invalid("name = \"x\"\n[[step]]\nat = \"1s\"\npartition = true\n", "must end with exactly one");
    check_invalid("name = \"x\"\n[[step]]\nat = \"1s\"\nkill = \"store-9\"\n", "unknown process \"store-9\"");
    check_invalid("name = \"x\"\n[[step]]\nat = \"1s\"\nloss = 1.5\n", "not between 0 and 1");
    check_invalid("name = \"x\"\n[[step]]\nat = \"1s\"\nwipe = \"node\"\n", "only the relay");
    check_invalid(
        "name = \"x\"\n[[step]]\nat = \"5s\"\nheal = true\n[[step]]\nat = \"1s\"\ncheck = true\n",
        "comes before",
    );
    check_invalid("name = \"x\"\n[[step]]\nat = \"soon\"\ncheck = true\n", "bad duration");
    check_invalid("name = \"x\"\n[[step]]\nat = \"1s\"\n", "does nothing");
    let err = parse("name = \"x\"\n[[step]]\nat = \"1s\"\nparty = true\n", 1.0).unwrap_err().to_string();
    assert!(err.contains("party"), "{err}");
}

#[test]
fn random_kills_expand_by_seed_into_kill_and_start_pairs() {
    let text = r#"
name = "cuts"
seed = 11
[[step]]
at = "2s"
random_kills = "node"
count = 4
over = "10s"
down = "1s"
[[step]]
at = "20s"
check = true
"#;
    let a = parse(text, 1.0).unwrap();
    let b = parse(text, 1.0).unwrap();
    assert_eq!(a.steps, b.steps);
    let kills: Vec<&Step> =
        a.steps.iter().filter(|s| s.action == Action::Process(Who::Nodes, ProcessFault::Kill)).collect();
    let starts =
        a.steps.iter().filter(|s| s.action == Action::Process(Who::Nodes, ProcessFault::Start)).count();
    assert_eq!((kills.len(), starts), (4, 4));
    assert!(kills.iter().all(|s| s.at >= Duration::from_secs(2) && s.at <= Duration::from_secs(12)));
    // Every kill is followed by its start before the next kill.
    let mut down = false;
    for step in &a.steps {
        match step.action {
            Action::Process(_, ProcessFault::Kill) => {
                assert!(!down);
                down = true;
            }
            Action::Process(_, ProcessFault::Start) => {
                assert!(down);
                down = false;
            }
            _ => {}
        }
    }
}

#[test]
fn every_shipped_scenario_parses_in_both_variants() {
    let files = crate::chaos::shipped_scenarios().unwrap();
    assert!(files.len() >= 9, "{files:?}");
    for file in files {
        for quick in [false, true] {
            let s = Scenario::load(&file, &LoadOptions { quick, ..LoadOptions::default() }).unwrap();
            assert!(s.budget >= Duration::from_secs(30), "{}: budget {:?}", s.name, s.budget);
        }
    }
}

const BURST: &str = r#"
name = "burst"
[nodes]
disk_quota_bytes = 4000000
requests_in_flight_max = 8
[workload]
scanners = 8
rate = 200
attrs_bytes = 600
retry_after_max = "1s"
[[step]]
at = "10s"
rate = 2000
[[step]]
at = "20s"
rate = 200
[[step]]
at = "30s"
check = true
[[expect]]
from = "10s"
to = "20s"
reason = "overloaded"
shed = ["bulk"]
not_shed = ["critical"]
accepted = ["critical"]
[[expect]]
from = "20s"
to = "30s"
shed_order = ["bulk", "standard"]
pressure = "normal"
[limits]
rss_growth_max_bytes = 50331648
disk_over_quota_max_bytes = 1048576
"#;

#[test]
fn overload_keys_become_node_flags_rate_steps_expectations_and_limits() {
    let s = parse(BURST, 0.5).unwrap();
    assert_eq!(s.node_args, ["--disk-quota-bytes", "4000000", "--requests-in-flight-max", "8"]);
    assert_eq!(s.disk_quota_bytes, Some(4_000_000));
    assert_eq!(s.workload.attrs_bytes, 600);
    assert_eq!(s.workload.retry_after_max, Duration::from_secs(1));
    let rates: Vec<(f64, Action)> = s.steps.iter().map(|s| (s.at.as_secs_f64(), s.action.clone())).collect();
    assert_eq!(rates[..2], [(5.0, Action::Rate(2000.0)), (10.0, Action::Rate(200.0))]);
    assert_eq!(s.expectations.len(), 2);
    let burst = &s.expectations[0];
    assert_eq!((burst.from, burst.to), (Duration::from_secs(5), Duration::from_secs(10)));
    assert_eq!(burst.spec.reason.as_deref(), Some("overloaded"));
    assert_eq!(
        (burst.spec.shed.as_slice(), burst.spec.not_shed.as_slice()),
        (&["bulk".to_owned()][..], &["critical".to_owned()][..])
    );
    assert_eq!(s.expectations[1].spec.pressure.as_deref(), Some("normal"));
    assert_eq!(s.limits.rss_growth_max_bytes, Some(48 << 20));
    assert_eq!(s.limits.disk_over_quota_max_bytes, Some(1 << 20));
    // Ten scanners posting single events, 100 events/s in all: each starts one every 0.1 s.
    let mut w = s.workload.clone();
    (w.scanners, w.array_ratio) = (10, 0.0);
    assert_eq!(w.interval_for(100.0), Duration::from_millis(100));
}

#[test]
fn impossible_overload_settings_are_refused_with_the_reason() {
    let with = |extra: &str| format!("name = \"x\"\n{extra}\n[[step]]\nat = \"10s\"\ncheck = true\n");
    check_invalid(&with("[nodes]\nrequests_in_flight_max = 0"), "requests_in_flight_max must be at least 1");
    check_invalid(&with("[nodes]\ndisk_quota_bytes = 0"), "disk_quota_bytes must be above 0");
    check_invalid(&with("[workload]\nattrs_bytes = 100000"), "attrs_bytes = 100000 is over");
    check_invalid(&with("[limits]\ndisk_over_quota_max_bytes = 1"), "needs [nodes] disk_quota_bytes");
    check_invalid(
        "name = \"x\"\n[[step]]\nat = \"1s\"\nrate = -5.0\n[[step]]\nat = \"2s\"\ncheck = true\n",
        "rate = -5 must be above 0",
    );
    let expect = |body: &str| with(&format!("[[expect]]\nfrom = \"1s\"\nto = \"5s\"\n{body}"));
    check_invalid(&expect("shed = [\"bluk\"]"), "unknown lane \"bluk\"");
    check_invalid(&expect("shed = [\"bulk\"]\nnot_shed = [\"bulk\"]"), "both shed and not shed");
    check_invalid(&expect("shed = [\"bulk\"]\nreason = \"tired\""), "unknown reason \"tired\"");
    check_invalid(&expect("pressure = \"high\""), "unknown pressure \"high\"");
    check_invalid(&expect(""), "expects nothing");
    check_invalid(&with("[[expect]]\nfrom = \"5s\"\nto = \"5s\"\nshed = [\"bulk\"]"), "is empty");
    check_invalid(
        &with("[[expect]]\nfrom = \"5s\"\nto = \"15s\"\nshed = [\"bulk\"]"),
        "after the check step",
    );
}
