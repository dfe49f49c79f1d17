//! The protocol core stays sans-IO: no runtime, socket, TLS or storage crate is reachable
//! through its normal dependencies, whatever the rest of the workspace enables.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that do IO, or exist to serve it.
const FORBIDDEN: [&str; 9] =
    ["tokio", "quinn", "quinn-proto", "redb", "rustls", "mio", "socket2", "axum", "hyper"];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Names of the packages reachable from `root` through normal (not dev, not build)
/// dependencies in the resolved graph, `root` included.
fn reachable(metadata: &Value, root: &str) -> BTreeSet<String> {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("package id"), p["name"].as_str().expect("package name")))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("node id"), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().expect("dep pkg"));
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_owned()).collect()
}

#[test]
fn no_io_crate_is_reachable() {
    let metadata = metadata();
    let manifest = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let root = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["manifest_path"].as_str() == Some(manifest.as_str()))
        .and_then(|p| p["id"].as_str())
        .expect("sync-protocol in cargo metadata");
    let reachable = reachable(&metadata, root);
    assert!(reachable.contains("postcard"), "the walk found too little: {reachable:?}");
    assert!(!reachable.contains("proptest"), "the walk followed dev-dependencies: {reachable:?}");
    eprintln!("sync-protocol reaches {reachable:?}");
    let bad: Vec<&str> = FORBIDDEN.into_iter().filter(|c| reachable.contains(*c)).collect();
    assert!(bad.is_empty(), "sync-protocol reaches {bad:?}; everything it reaches: {reachable:?}");
}
