//! `outpost-sim chaos`: the real daemons under network and process faults, on a timeline.
//!
//! The second layer of the partition simulator (the first is the deterministic
//! simulation of the protocol cores). A [`scenario::Scenario`] file names the nodes, the
//! scanners' workload and a timeline of faults; [`runner::run`] starts a relay, puts a
//! [`proxy::Proxy`] in front of it for each node (QUIC is UDP, so the proxy judges every
//! datagram by the [`rules`]), starts the nodes and the scanners, applies the timeline
//! (partitions, loss, delay, duplicates, reordering, bandwidth caps, holds; SIGKILL,
//! SIGSTOP/SIGCONT, a wiped relay store), heals, waits for convergence and decides each
//! invariant into a [`report::ChaosReport`]. Overload scenarios change the scanners' rate
//! on the timeline and bound the nodes' admission and disk quota; [`expect`] decides
//! which lanes they expect shed or spared, and the nodes' memory and disk limits.
//!
//! The shipped scenarios live in `simulator/scenarios/`; each has a quick variant
//! (`--quick`, every step time scaled by its `quick_scale`) that CI runs.

use std::path::PathBuf;

pub mod expect;
pub mod proxy;
pub mod report;
pub mod rules;
pub mod runner;
pub mod scenario;

pub use report::ChaosReport;
pub use runner::run;
pub use scenario::Scenario;

/// The directory of the shipped scenarios.
pub fn scenarios_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))
}

/// The shipped scenario files, sorted by name.
pub fn shipped_scenarios() -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs scenario files one after the other, as `outpost-sim chaos` does: each run's
/// timeline and verdicts go to `out`, and with `json` every report is written there as a
/// JSON array. Fails when a file cannot be loaded, a run cannot be carried out, or any
/// invariant of any run was broken.
pub async fn run_files(
    files: &[PathBuf],
    options: &scenario::LoadOptions,
    json: Option<&std::path::Path>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Vec<ChaosReport>> {
    use anyhow::Context;
    let scenarios = files.iter().map(|f| Scenario::load(f, options)).collect::<Result<Vec<_>, _>>()?;
    let mut reports = Vec::new();
    for scenario in &scenarios {
        let report =
            run(scenario, out).await.with_context(|| format!("running scenario {}", scenario.name))?;
        reports.push(report);
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(&reports)?;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if reports.len() > 1 {
        writeln!(out, "summary:")?;
        for r in &reports {
            writeln!(
                out,
                "  {:<20} {:5.1}s  {}",
                r.scenario,
                r.duration_s,
                if r.ok { "ok" } else { "FAILED" }
            )?;
        }
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            let names: Vec<&str> = r.failed().map(|v| v.name.as_str()).collect();
            format!("{} ({})", r.scenario, names.join(", "))
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("invariants broken in {}", failed.join("; "));
    }
    Ok(reports)
}
