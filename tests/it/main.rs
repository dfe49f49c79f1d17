//! End-to-end scenarios against real `outpost-relay` and `outpost-node` processes.
//!
//! Each module is one scenario of PRODUCT.md. The binaries must be built first
//! (`cargo build --workspace --bins`); the harness finds them next to this test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_frames;
mod bad_input;
mod bench_sizes;
mod certificates;
mod chaos;
mod deploy;
mod epochs;
mod group_commit;
mod inventory;
mod pressure;
mod prometheus;
mod reconcile;
mod relay_limits;
mod replication;
mod status;
mod status_pages;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use simulator::ledger::Ledger;
use simulator::process::Node;
use simulator::scanner::{Scanner, ScannerConfig};
use tokio::task::JoinHandle;

/// `count` scanners named `<prefix>-<i>` posting `events_each` new events to `node`,
/// configured further by `tweak`; seeds are derived from `seed`.
fn scanner_configs(
    node: &Node,
    prefix: &str,
    count: usize,
    events_each: u64,
    seed: u64,
    tweak: impl Fn(&mut ScannerConfig),
) -> Vec<ScannerConfig> {
    (0..count)
        .map(|i| {
            let mut config = ScannerConfig::new(&format!("{prefix}-{i}"), node.node_id(), &node.events_url());
            config.events = Some(events_each);
            config.seed = seed.wrapping_add(i as u64);
            tweak(&mut config);
            config
        })
        .collect()
}

/// Starts one task per scanner.
fn spawn_scanners(
    configs: Vec<ScannerConfig>,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    configs.into_iter().map(|c| tokio::spawn(Scanner::new(c, ledger.clone()).run(stop.clone()))).collect()
}

/// Waits for every scanner task.
async fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        h.await.expect("scanner task panicked");
    }
}

/// An executable on `PATH` that the test runs for real, or a panic that says which
/// Debian package to install (`.ci/run` installs them).
fn installed(name: &str, package: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test runs a real {name}; install it first (apt-get install -y {package})")
        })
}

/// Runs a command line tool with `args`; returns its exit code and its standard output
/// followed by its standard error.
fn run_tool(bin: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Polls `attempt` every 250 ms until it gives a value, for at most `timeout`.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    timeout: std::time::Duration,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
