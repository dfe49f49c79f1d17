//! The Outpost process harness: real `outpost-relay` and `outpost-node` processes,
//! simulated scanners, and the exactly-once check.
//!
//! `outpost-sim demo` and the end-to-end tests (the `tests` crate) are built from these
//! parts:
//!
//! - [`bins`] finds the executables Cargo built;
//! - [`pki`] makes a throwaway CA and certificates with `outpost-relay pki`;
//! - [`process`] runs a [`process::Relay`] or [`process::Node`] as a child process that
//!   can be killed with SIGKILL, stopped with SIGTERM and restarted on the same data;
//! - [`cluster`] puts a relay and its nodes in one temporary directory;
//! - [`scanner`] posts events like handhelds do (retries, duplicates, conflicts) and
//!   records every answer in a [`ledger::Ledger`];
//! - [`check`] reads the relay log and checks it against the ledger: every accepted event
//!   exactly once, in per-lane seq order, and nothing refused;
//! - [`api`] holds typed views of the daemons' status and log answers;
//! - [`demo`] is `outpost-sim demo`: all of the above through a WAN cut, with a live view;
//! - [`mod@bench`] is `outpost-sim bench`: the benchmarks of PERFORMANCE.md.
//!
//! The harness does not simulate the network: faults are process kills. The deterministic
//! in-process simulation and the fault-injecting UDP proxy are separate layers.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicBool;
//! use std::time::Duration;
//! use simulator::{check, cluster::Cluster, ledger::Ledger, scanner::{Scanner, ScannerConfig}};
//!
//! let cluster = Cluster::start(&["store-0042"]).await?;
//! let ledger = Arc::new(Ledger::new());
//! let node = &cluster.nodes[0];
//! let mut config = ScannerConfig::new("hs-1", node.node_id(), &node.events_url());
//! config.events = Some(100);
//! Scanner::new(config, ledger.clone()).run(Arc::new(AtomicBool::new(false))).await;
//! let data = ledger.snapshot();
//! let log = cluster.wait_replicated(&data, Duration::from_secs(30)).await?;
//! let report = check::check(&data, &log);
//! assert!(report.is_ok(), "{report}");
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod bench;
pub mod bins;
pub mod chaos;
pub mod check;
pub mod cluster;
pub mod demo;
pub mod ledger;
pub mod pki;
pub mod process;
pub mod scanner;
pub mod sim;
