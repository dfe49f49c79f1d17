//! Relay protection against real processes: a relay at its connection limit turns a node
//! away with a busy refusal and a retry hint, and serves it once a slot frees; a node
//! over `node_bytes_per_sec_max` drains no faster than the limit allows. In both, every
//! acknowledged event reaches the relay exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cloud_relay::throttle::READ_CHUNK_BYTES;
use simulator::check;
use simulator::cluster::Cluster;
use simulator::ledger::Ledger;
use simulator::process::Node;

use crate::{join_all, scanner_configs, spawn_scanners, wait_for};

/// `outpost-relay run` with `flags` added, on the ports, data directory and log file of
/// the cluster's relay, which must not be running: the cluster's helpers then see this
/// process as its relay. (The harness starts its relay with a fixed command line.)
/// Killed by PID when dropped.
struct RelayWithFlags {
    child: Child,
}

impl RelayWithFlags {
    async fn start(cluster: &Cluster, flags: &[&str]) -> RelayWithFlags {
        let relay = &cluster.relay;
        let log = std::fs::File::options().create(true).append(true).open(relay.log_path()).unwrap();
        let mut cmd = Command::new(&cluster.bins.relay);
        cmd.arg("run").arg("--data-dir").arg(relay.data_dir());
        cmd.args(["--quic", &relay.quic_addr().to_string(), "--http", &relay.http_addr().to_string()]);
        cmd.arg("--ca").arg(&cluster.pki.ca);
        cmd.arg("--cert").arg(&cluster.pki.relay.cert).arg("--key").arg(&cluster.pki.relay.key);
        cmd.args(flags).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // Only the flags configure it, as the harness does for its own relay.
        for (key, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("OUTPOST_")) {
            cmd.env_remove(key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut started = RelayWithFlags { child: cmd.spawn().unwrap() };
        let client = relay.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client.is_ready().await {
            if let Some(status) = started.child.try_wait().unwrap() {
                panic!("the relay exited with {status}:\n{}", relay.log_tail(40));
            }
            assert!(Instant::now() < deadline, "the relay is not ready:\n{}", relay.log_tail(40));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started
    }
}

impl Drop for RelayWithFlags {
    fn drop(&mut self) {
        // SIGKILL to this child's PID, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` (a metric name with its labels, as exposed) on the relay's
/// `/metrics`, 0 while it is absent.
async fn relay_metric(cluster: &Cluster, series: &str) -> f64 {
    let url = format!("{}/metrics", cluster.relay.client().base());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The node's replication link as `/v1/status` shows it.
async fn link(node: &Node) -> simulator::api::LinkStatus {
    node.client().node_status().await.unwrap().relay
}

const BUSY: &str = r#"outpost_relay_refusals_total{reason="busy"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_at_its_connection_limit_turns_a_node_away_with_a_retry_hint() {
    let mut cluster = Cluster::prepare().unwrap();
    let _relay = RelayWithFlags::start(&cluster, &["--connections-max", "1"]).await;
    cluster.add_node("store-0061", Vec::new()).unwrap().start().await.unwrap();
    wait_for("store-0061 to connect", Duration::from_secs(20), || async {
        (link(&cluster.nodes[0]).await.state == "connected").then_some(())
    })
    .await;

    // The second node gets the busy refusal, with the hint in its status.
    cluster.add_node("store-0062", Vec::new()).unwrap().start().await.unwrap();
    let (first, second) = (&cluster.nodes[0], &cluster.nodes[1]);
    let error = wait_for("store-0062 to be refused", Duration::from_secs(20), || async move {
        link(second).await.last_error.filter(|e| e.contains("refused (busy)"))
    })
    .await;
    let hint_ms: u64 = error
        .split("retry after ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint in {error:?}"));
    // One connection over the limit at a time: the smallest hint.
    assert_eq!(hint_ms, u64::from(cloud_relay::server::busy_retry_after_ms(1)), "{error}");

    // Both sites keep taking events; only the first one's reach the relay.
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut configs = scanner_configs(first, "a", 2, 100, 61, |c| c.array_ratio = 0.5);
    configs.extend(scanner_configs(second, "b", 2, 150, 62, |c| c.array_ratio = 0.5));
    join_all(spawn_scanners(configs, &ledger, &stop)).await;
    wait_for("store-0061 to drain", Duration::from_secs(20), || async move {
        (first.client().node_status().await.unwrap().backlog_events() == 0).then_some(())
    })
    .await;

    // The turned-away node keeps coming back, but never sooner than the hint: over six
    // seconds at most one attempt a second (the plain backoff would try about twice as
    // often), and at least one every two seconds and a bit.
    let before = relay_metric(&cluster, BUSY).await;
    assert!(before >= 1.0, "{BUSY} is {before}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refused = relay_metric(&cluster, BUSY).await - before;
    eprintln!("{refused} busy refusals in 6 s after a hint of {hint_ms} ms");
    assert!((2.0..=7.0).contains(&refused), "{refused} busy refusals in 6 s with a 1 s hint");
    let status = second.client().node_status().await.unwrap();
    assert_eq!(status.relay.connects, 0, "store-0062 was served while the relay was full");
    assert_eq!(status.backlog_events(), 300);
    assert!(status.relay.refusals >= 3, "{:?}", status.relay);

    // The first node leaves; the second gets its slot and drains.
    let mut first = cluster.nodes.remove(0);
    first.terminate(Duration::from_secs(10)).await.unwrap();
    let left = Instant::now();
    let data = ledger.snapshot();
    let log = cluster.wait_replicated(&data, Duration::from_secs(30)).await.unwrap();
    eprintln!("store-0062 drained {:?} after store-0061 left", left.elapsed());
    let report = check::check(&data, &log);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.counts.accepted, 500, "{report}");
    assert_eq!(report.counts.logged, 500, "{report}");
    let status = cluster.nodes[0].client().node_status().await.unwrap();
    assert_eq!(status.relay.state, "connected");
    assert!(status.relay.connects >= 1, "{:?}", status.relay);
}

/// The relay's limit in the drain test: 100 KB/s.
const BYTES_PER_SEC: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_byte_rate_drains_no_faster_than_the_limit() {
    // The site buffers offline: its relay is prepared but not running.
    let mut cluster = Cluster::prepare().unwrap();
    cluster.add_node("store-0063", Vec::new()).unwrap().start().await.unwrap();
    let node = &cluster.nodes[0];
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let configs = scanner_configs(node, "r", 4, 3_000, 63, |c| {
        c.array_ratio = 1.0;
        c.array_events_max = 50;
    });
    join_all(spawn_scanners(configs, &ledger, &stop)).await;
    let data = ledger.snapshot();
    assert_eq!(data.accepted().count(), 12_000, "{:?}", data.counts);
    let status: serde_json::Value = node.client().get("/v1/status").await.unwrap();
    let lanes = status["lanes"].as_object().unwrap();
    let backlog_bytes: u64 = lanes.values().map(|lane| lane["backlog_bytes"].as_u64().unwrap()).sum();
    assert!(backlog_bytes >= 700_000, "a backlog of {backlog_bytes} bytes is too small to measure");

    let started = Instant::now();
    let _relay =
        RelayWithFlags::start(&cluster, &["--node-bytes-per-sec-max", &BYTES_PER_SEC.to_string()]).await;
    let log = cluster.wait_replicated(&data, Duration::from_secs(90)).await.unwrap();
    let elapsed = started.elapsed();

    // Every record crosses the wire at least once, inside frames that add to it, and in
    // an encoding no smaller than the store's (`node::store::codec`). The
    // relay can have read at most a full bucket, one read per stream in flight ahead of
    // the bucket (control and three lanes), and the rate for the time that passed.
    let allowance = 5 * READ_CHUNK_BYTES as u64;
    let floor = Duration::from_secs_f64((backlog_bytes - allowance) as f64 / BYTES_PER_SEC as f64);
    eprintln!("drained {backlog_bytes} bytes in {elapsed:?}; the limit allows it in no less than {floor:?}");
    assert!(elapsed >= floor, "drained {backlog_bytes} bytes in {elapsed:?}, faster than the limit allows");
    let throttled =
        relay_metric(&cluster, r#"outpost_relay_node_throttled_seconds_total{node_id="store-0063"}"#).await;
    assert!(throttled >= floor.as_secs_f64() / 2.0, "the relay held the node back for only {throttled} s");

    let report = check::check(&data, &log);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.counts.logged, 12_000, "{report}");
}
