//! The status pages in a real browser: headless Chromium loads the node's site page and
//! the relay's region page through a WAN cut (a partition in the UDP proxy between them),
//! the DOM shows the node offline with a backlog, then online with none, and screenshots
//! of each are saved under `target/screenshots/`.
//!
//! Needs Chromium (Debian package `chromium`; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use simulator::chaos::proxy::Proxy;
use simulator::chaos::rules::{Directions, Rule};
use simulator::cluster::Cluster;

use crate::{installed, wait_for};

/// Runs headless Chromium on `url` with `extra` flags; returns its standard output.
fn chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(installed("chromium", "chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` after the page loaded and ran its script.
fn dom(url: &str) -> String {
    chromium(url, &["--dump-dom".to_owned()])
}

/// Saves a phone-sized screenshot of `url` as `target/screenshots/NAME.png`.
fn screenshot(url: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    chromium(url, &[format!("--screenshot={}", path.display()), "--window-size=412,915".to_owned()]);
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 2_000, "{} is not a rendered PNG", path.display());
    path
}

/// Polls `url` (JSON) until `ok` holds.
async fn wait_json(url: &str, what: &str, ok: impl Fn(&Value) -> bool) {
    let read = || async {
        let body: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        ok(&body).then_some(())
    };
    wait_for(&format!("{what} at {url}"), Duration::from_secs(60), read).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_a_node_offline_with_a_backlog_during_a_wan_cut_and_online_after() {
    const EVENTS: u64 = 12;
    let mut cluster = Cluster::start(&[]).await.unwrap();
    let proxy = Proxy::start(cluster.relay.quic_addr(), 61).await.unwrap();
    let node = cluster.add_node_via("store-0061", proxy.addr(), Vec::new()).unwrap();
    node.start().await.unwrap();
    let node_page = format!("http://{}/", node.http_addr());
    let node_status = format!("http://{}/v1/status", node.http_addr());
    let events_url = node.events_url();
    let relay_page = format!("http://{}/", cluster.relay.http_addr());
    let relay_nodes = format!("http://{}/v1/nodes", cluster.relay.http_addr());
    let connected = |s: &Value| s["relay"]["state"] == "connected";
    wait_json(&node_status, "the node to connect", connected).await;

    // The WAN goes; the scanners go on.
    proxy.rules().set(Rule::Partition, Directions::Both);
    let client = reqwest::Client::new();
    for i in 0..EVENTS {
        let event = json!({"event_id": format!("d-{i}"), "kind": "ship", "sku": "SKU-1", "location": "DOCK-1", "qty": 1});
        assert_eq!(client.post(&events_url).json(&event).send().await.unwrap().status().as_u16(), 201);
    }
    wait_json(&node_status, "the node to notice the cut", |s| !connected(s)).await;
    let page = dom(&node_page);
    assert!(page.contains(r#"id="wan" class="badge bad""#), "offline (or dialling in vain): {page}");
    assert!(page.contains(&format!(r#"data-events="{EVENTS}""#)), "{page}");
    assert!(page.contains(&format!(r#"<td class="n backlog">{EVENTS}</td>"#)), "{page}");
    screenshot(&node_page, "node-offline");

    wait_json(&relay_nodes, "the relay to notice the cut", |n| n["nodes"][0]["connected"] == false).await;
    let page = dom(&relay_page);
    assert!(page.contains(r#"data-online="0" data-nodes="1""#), "{page}");
    assert!(page.contains(r#"id="link-store-0061" class="badge bad" data-state="offline""#), "{page}");
    screenshot(&relay_page, "relay-offline");

    // The WAN returns: the backlog drains and both pages say so.
    proxy.rules().heal();
    let drained = |s: &Value| connected(s) && s["lanes"]["critical"]["backlog_events"] == 0;
    wait_json(&node_status, "the backlog to drain", drained).await;
    let page = dom(&node_page);
    assert!(page.contains(r#"id="wan" class="badge ok" data-state="connected""#), "{page}");
    assert!(page.contains(r#"data-events="0""#), "{page}");
    screenshot(&node_page, "node-online");
    wait_json(&relay_nodes, "the relay to see the node", |n| n["nodes"][0]["connected"] == true).await;
    let page = dom(&relay_page);
    assert!(page.contains(r#"data-online="1" data-nodes="1""#), "{page}");
    assert!(page.contains(&format!(r#"<td class="n">{EVENTS}</td>"#)), "the relay holds every event: {page}");
    screenshot(&relay_page, "relay-online");
}
