//! A real Prometheus server scrapes a node and a relay: the node's backlog rises in
//! Prometheus during a WAN cut and falls after it, and the relay's counters follow.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `.ci/run` installs it).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use simulator::cluster::Cluster;
use simulator::process::free_tcp_addr;

use crate::{installed, wait_for};

/// A Prometheus server, stopped and reaped on drop.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`(job, address)`) every second, and waits
    /// until it is ready.
    async fn start(dir: &Path, targets: &[(&str, std::net::SocketAddr)]) -> Prometheus {
        let bin = installed("prometheus", "prometheus");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let web = free_tcp_addr().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let prometheus = Prometheus { child, base: format!("http://{web}") };
        let ready = format!("{}/-/ready", prometheus.base);
        wait_for("Prometheus to be ready", Duration::from_secs(60), || async {
            reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()).then_some(())
        })
        .await;
        prometheus
    }

    /// The single value of the instant query `expr`, if it has one.
    async fn query(&self, expr: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query", self.base);
        let body: Value =
            reqwest::Client::new().get(url).query(&[("query", expr)]).send().await.ok()?.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `expr` satisfies `ok`; returns the value.
    async fn wait_until(&self, expr: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        wait_for(&format!("Prometheus to report {expr}"), timeout, || async {
            self.query(expr).await.filter(|v| ok(*v))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_backlog_rise_during_a_wan_cut_and_fall_after() {
    const EVENTS: usize = 25;
    let mut cluster = Cluster::start(&["store-0007"]).await.unwrap();
    let node_http = cluster.node().http_addr();
    let relay_http = cluster.relay.http_addr();
    let prometheus = Prometheus::start(cluster.dir(), &[("node", node_http), ("relay", relay_http)]).await;
    let minute = Duration::from_secs(60);
    prometheus.wait_until(r#"up{job="node"}"#, minute, |v| v == 1.0).await;
    prometheus.wait_until(r#"up{job="relay"}"#, minute, |v| v == 1.0).await;
    prometheus.wait_until("outpost_node_relay_connected", minute, |v| v == 1.0).await;

    // The WAN goes: the relay stops, the node keeps accepting.
    cluster.relay.terminate(Duration::from_secs(10)).await.unwrap();
    let client = reqwest::Client::new();
    for i in 0..EVENTS {
        let event = json!({"event_id": format!("ship-{i}"), "kind": "ship", "sku": "SKU-1", "location": "DOCK-1", "qty": 1});
        let resp = client.post(cluster.node().events_url()).json(&event).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let during = prometheus
        .wait_until(r#"outpost_node_backlog_events{lane="critical"}"#, minute, |v| v >= EVENTS as f64)
        .await;
    assert_eq!(during, EVENTS as f64);
    prometheus.wait_until("outpost_node_relay_connected", minute, |v| v == 0.0).await;
    let age = prometheus
        .wait_until(r#"outpost_node_oldest_unacked_age_seconds{lane="critical"}"#, minute, |v| v > 0.0)
        .await;
    assert!(age < 600.0, "oldest unacknowledged age {age} s");

    // The WAN returns: the backlog drains, and Prometheus saw both sides of it.
    cluster.relay.start().await.unwrap();
    prometheus.wait_until(r#"outpost_node_backlog_events{lane="critical"}"#, minute, |v| v == 0.0).await;
    let peak = prometheus.query(r#"max_over_time(outpost_node_backlog_events{lane="critical"}[10m])"#).await;
    assert_eq!(peak, Some(EVENTS as f64), "the stored series keeps the peak of the cut");
    let created = prometheus.query(r#"outpost_node_events_total{lane="critical",outcome="created"}"#).await;
    assert_eq!(created, Some(EVENTS as f64));
    prometheus.wait_until("outpost_relay_events_total", minute, |v| v >= EVENTS as f64).await;
    let held = r#"outpost_relay_node_events_held{node_id="store-0007",lane="critical"}"#;
    prometheus.wait_until(held, minute, |v| v == EVENTS as f64).await;
    prometheus
        .wait_until(r#"outpost_relay_node_connected{node_id="store-0007"}"#, minute, |v| v == 1.0)
        .await;
    let commits = prometheus.query("outpost_node_commit_seconds_count").await.unwrap_or(0.0);
    assert!(commits >= 1.0, "commit latency histogram scraped: {commits}");
    let round_trips = "outpost_node_replication_round_trip_seconds_count";
    prometheus.wait_until(round_trips, minute, |v| v >= 1.0).await;
}
