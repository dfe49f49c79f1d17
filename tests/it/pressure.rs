//! PRODUCT.md scenario 8 (overload) and FAULTS.md F16, F17, F21: a node with a small disk
//! quota sheds by lane through a WAN cut and takes everything again once the backlog has
//! drained; critical events overtake a draining bulk backlog; the node's memory stays flat
//! while its offline backlog grows; a full filesystem and a write error are answered with
//! errors, lose nothing acknowledged, and pass without a restart.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use serde_json::Value;
use simulator::api::ApiError;
use simulator::bench::drain::{race, wait_arrivals};
use simulator::bench::load::{self, Conn, Judge, Mix, Plan, Workload};
use simulator::bench::site::{self, buffer, heads, rss_bytes, verify};
use simulator::cluster::Cluster;
use sync_protocol::{Lane, PerLane};

const MIB: u64 = 1 << 20;

/// What one post of a workload did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Answer {
    created: u64,
    /// Events shed, with the error code of the last one.
    shed: u64,
    code: Option<&'static str>,
}

/// Posts events `first..first + per_post` of `workload` and sorts the answer. Anything
/// but created or shed fails the test.
async fn post(conn: &mut Conn, workload: &Workload, first: u64) -> Answer {
    let mut body = String::new();
    workload.body(first, &mut body);
    let (status, answer) = conn.post(body.as_bytes()).await.unwrap();
    let answer: Value = serde_json::from_slice(answer).unwrap();
    let code_of = |v: &Value| -> &'static str {
        match v["error"].as_str() {
            Some("disk_quota") => "disk_quota",
            Some("disk_full") => "disk_full",
            Some("store_failed") => "store_failed",
            Some("overloaded") => "overloaded",
            other => panic!("unexpected error {other:?} in {v}"),
        }
    };
    match status {
        201 => Answer { created: 1, ..Answer::default() },
        200 => {
            let mut out = Answer::default();
            for item in answer["results"].as_array().unwrap() {
                match item["status"].as_str() {
                    Some("created") => out.created += 1,
                    Some("shed") => {
                        out.shed += 1;
                        out.code = Some(code_of(item));
                    }
                    other => panic!("unexpected item status {other:?}: {item}"),
                }
            }
            out
        }
        429 | 503 | 507 => {
            Answer { shed: workload.per_post as u64, code: Some(code_of(&answer)), ..Answer::default() }
        }
        other => panic!("post answered {other}: {answer}"),
    }
}

/// Posts `workload` from event `*next` on, a post at a time, until a post has events
/// shed; returns the events created before. `*next` ends after the last post.
async fn post_until_shed(
    conn: &mut Conn,
    workload: &Workload,
    next: &mut u64,
    limit: u64,
) -> (u64, &'static str) {
    let mut created = 0;
    loop {
        let answer = post(conn, workload, *next).await;
        *next += workload.per_post as u64;
        created += answer.created;
        if let Some(code) = answer.code {
            return (created, code);
        }
        assert!(*next < limit, "nothing was shed after {next} events");
    }
}

async fn status(cluster: &Cluster) -> Value {
    cluster.nodes[0].client().get("/v1/status").await.unwrap()
}

fn workload(prefix: &str, mix: Mix, per_post: usize) -> Workload {
    Workload { prefix: prefix.into(), mix, per_post }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_quota_sheds_bulk_then_standard_keeps_critical_and_recovers_after_the_drain() {
    const QUOTA: u64 = 4 * MIB;
    // One group commit of these posts occupies far less.
    const ONE_COMMIT: u64 = MIB;
    // A short retention: what the relay acknowledged may be pruned soon after, so the
    // drain makes room within the test.
    let args = vec!["--disk-quota-bytes".into(), QUOTA.to_string(), "--retention".into(), "1s".into()];
    let mut cluster = site::offline(args).await.unwrap();
    let mut conn = Conn::connect(cluster.nodes[0].http_addr()).await.unwrap();
    let (scans, picks, ships) = (
        workload("scan-", Mix::Bulk, 50),
        workload("pick-", Mix::Standard, 50),
        workload("ship-", Mix::Critical, 1),
    );
    let mut created = PerLane::<u64>::default();
    let (mut next_scan, mut next_pick, mut next_ship) = (0, 0, 0);

    // The WAN is down (no relay): the backlog grows until bulk is shed.
    let (n, code) = post_until_shed(&mut conn, &scans, &mut next_scan, 1_000_000).await;
    *created.get_mut(Lane::Bulk) += n;
    assert_eq!(code, "disk_quota");
    let s = status(&cluster).await;
    assert_eq!(s["disk"]["pressure"], "shedding_bulk", "{s}");
    assert!(
        s["disk"]["used_bytes"].as_u64().unwrap() >= s["lanes"]["bulk"]["disk_mark_bytes"].as_u64().unwrap()
    );
    // Standard and critical are still taken.
    let answer = post(&mut conn, &picks, next_pick).await;
    next_pick += 50;
    assert_eq!(answer.created, 50, "{answer:?}");
    *created.get_mut(Lane::Standard) += 50;
    assert_eq!(post(&mut conn, &ships, next_ship).await.created, 1);
    next_ship += 1;
    *created.get_mut(Lane::Critical) += 1;

    // More standard events, until standard is shed too; bulk stays shed.
    let (n, code) = post_until_shed(&mut conn, &picks, &mut next_pick, 1_000_000).await;
    *created.get_mut(Lane::Standard) += n;
    assert_eq!(code, "disk_quota");
    assert_eq!(status(&cluster).await["disk"]["pressure"], "shedding_standard");
    assert_eq!(post(&mut conn, &scans, next_scan).await.created, 0, "bulk stays shed");
    next_scan += 50;

    // Critical is taken until the hard limit, and the store never passes the quota by
    // more than one commit.
    loop {
        let answer = post(&mut conn, &ships, next_ship).await;
        next_ship += 1;
        if answer.created == 0 {
            assert_eq!(answer.code, Some("disk_quota"));
            break;
        }
        *created.get_mut(Lane::Critical) += 1;
        assert!(next_ship < 100_000, "critical never reached the hard limit");
    }
    let s = status(&cluster).await;
    let used = s["disk"]["used_bytes"].as_u64().unwrap();
    assert!(
        (QUOTA..QUOTA + ONE_COMMIT).contains(&used),
        "store occupies {used} bytes of a {QUOTA}-byte quota"
    );
    assert_eq!(s["disk"]["pressure"], "full");
    assert!(s["lanes"]["bulk"]["shed"]["disk_quota"].as_u64().unwrap() > 0, "{s}");
    assert!(s["lanes"]["critical"]["shed"]["disk_quota"].as_u64().unwrap() >= 1, "{s}");
    // A 507 carries Retry-After.
    let mut body = String::new();
    scans.body(next_scan, &mut body);
    let shed = reqwest::Client::new()
        .post(format!("http://{}/v1/events", cluster.nodes[0].http_addr()))
        .body(body)
        .send()
        .await
        .unwrap();
    let retry_after = shed.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)), "{:?}", shed.headers());

    // The WAN returns: the backlog drains, acknowledged events make room, and every lane
    // is taken again.
    cluster.relay.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&cluster).await;
        let drained = ["critical", "standard", "bulk"].iter().all(|l| s["lanes"][l]["backlog_events"] == 0);
        if drained && s["disk"]["pressure"] == "normal" {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not drain and make room: {s}");
        // Acknowledgements arrive with the drain; a post also gives the writer a turn.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (workload, lane, next) in [
        (&scans, Lane::Bulk, next_scan),
        (&picks, Lane::Standard, next_pick),
        (&ships, Lane::Critical, next_ship),
    ] {
        let answer = post(&mut conn, workload, next + 10_000).await;
        assert_eq!(answer.created, workload.per_post as u64, "{lane} after the drain: {answer:?}");
        *created.get_mut(lane) += answer.created;
    }
    let s = status(&cluster).await;
    assert!(s["disk"]["pruned_under_pressure"].as_u64().unwrap() > 0, "{s}");
    // Every event answered 2xx is at the relay exactly once.
    verify(&cluster, created, Duration::from_secs(60)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_events_overtake_a_draining_bulk_backlog() {
    const BULK: u64 = 200_000;
    let mut cluster = site::offline(Vec::new()).await.unwrap();
    let buffered = buffer(&cluster, Mix::Bulk, 0, BULK, "bulk").await.unwrap();
    assert_eq!(buffered, BULK);
    let mut conn = Conn::connect(cluster.nodes[0].http_addr()).await.unwrap();
    // Shipments are posted during the first three quarters of the drain, so that each
    // has the last quarter to arrive before the bulk backlog is done.
    let mut race = race(&mut cluster, &mut conn, BULK, BULK / 4 * 3).await.unwrap();
    let (p50, p99, max) =
        (race.shipments.quantile_ms(0.5), race.shipments.quantile_ms(0.99), race.shipments.quantile_ms(1.0));
    eprintln!(
        "{} shipments posted while {BULK} scans drained; end-to-end latency p50 {p50:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms",
        race.posted
    );
    assert!(race.posted >= 5, "the drain was too short to post shipments during it: {}", race.posted);
    assert_eq!(race.arrived_first, race.posted, "every shipment reaches the relay before the bulk backlog");
    wait_arrivals(&cluster, &mut race.shipments).await.unwrap();
    let expected = PerLane::from_fn(|lane| match lane {
        Lane::Critical => race.posted as u64,
        Lane::Standard => 0,
        Lane::Bulk => BULK,
    });
    verify(&cluster, expected, Duration::from_secs(60)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_memory_stays_flat_while_the_offline_backlog_grows_to_two_million() {
    const STEP: u64 = 100_000;
    const EVENTS: u64 = 2_000_000;
    /// PERFORMANCE.md's bound for 10M buffered events.
    const RSS_MAX: u64 = 64 * MIB;
    /// "Flat": how far the resident set may rise above its size at 100k. redb's page cache
    /// is full by then; what is left is the odd page of allocator slack (about 3 MiB was
    /// measured over the 2M).
    const GROWTH_MAX: u64 = 6 * MIB;
    let cluster = site::offline(Vec::new()).await.unwrap();
    let pid = cluster.nodes[0].pid().unwrap();
    let scans = workload("scan-", Mix::Bulk, 1_000);
    let mut buffered = 0;
    let mut trace = Vec::new();
    while buffered < EVENTS {
        // Scans, which move no inventory: the node's in-memory inventory replica grows
        // with the catalogue, not with the backlog. Four clients keep the posts in flight
        // (and the transient memory they take, which admission bounds) the same all along,
        // so what is measured is what the backlog costs.
        let plan = Plan { clients: 4, events: STEP, duration: None, first_event: buffered };
        let addr = cluster.nodes[0].http_addr();
        buffered += load::run(addr, &scans, plan, Judge::Created, "backlog").await.unwrap().events;
        trace.push((buffered, rss_bytes(pid).unwrap()));
    }
    let line: Vec<String> =
        trace.iter().map(|(n, rss)| format!("{}k {:.1}", n / 1000, *rss as f64 / MIB as f64)).collect();
    let line = line.join(", ");
    eprintln!("node RSS in MiB by events buffered: {line}");
    let peak = trace.iter().map(|&(_, rss)| rss).max().unwrap();
    assert!(peak <= RSS_MAX, "RSS peaked at {:.1} MiB: {line}", peak as f64 / MIB as f64);
    let growth = peak.saturating_sub(trace[0].1);
    assert!(
        growth <= GROWTH_MAX,
        "RSS grew {:.1} MiB from 100k to 2M events: {line}",
        growth as f64 / MIB as f64
    );
    assert_eq!(heads(&cluster.nodes[0]).await.unwrap(), Mix::Bulk.lane_counts(EVENTS));
}

/// Whether this test process may mount filesystems (it must run as root).
fn can_mount() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `args` in the mount namespace of process `pid`.
fn in_namespace_of(pid: u32, args: &[&str]) {
    let out = std::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--mount", "--"])
        .args(args)
        .output()
        .expect("running nsenter (util-linux)");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_write_error_are_answered_lose_nothing_and_pass_without_a_restart() {
    if !can_mount() {
        eprintln!("skipped: mounting a small filesystem for the store needs root");
        return;
    }
    let mut cluster = Cluster::prepare().unwrap();
    // A quota far above the filesystem: the filesystem fills first.
    let node =
        cluster.add_node(site::NODE_ID, vec!["--disk-quota-bytes".into(), (1 << 30).to_string()]).unwrap();
    let data_dir = node.data_dir().to_owned();
    // The node gets a mount namespace of its own with a small ext4 filesystem (a loop
    // device over a file beside the data directory) on its data directory, so nothing
    // outside the test sees the mount, and it goes when the node does. A ballast file
    // leaves about 4 MiB free.
    let script = r#"img="$1.img"; truncate -s 24M "$img" && mkfs.ext4 -q -F -m 0 "$img" && mkdir -p "$1" \
        && mount -o loop "$img" "$1" && fallocate -l 16M "$1/ballast" && shift && exec "$@""#;
    let mut launcher: Vec<OsString> =
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
            .iter()
            .map(OsString::from)
            .collect();
    launcher.push(data_dir.clone().into());
    node.launch_via(launcher);
    node.start().await.unwrap();
    let pid = node.pid().unwrap();
    let dir = data_dir.to_str().unwrap().to_owned();
    let mut conn = Conn::connect(cluster.nodes[0].http_addr()).await.unwrap();
    let scans = workload("scan-", Mix::Bulk, 100);
    let ships = workload("ship-", Mix::Critical, 1);

    // Fill the filesystem.
    let mut next = 0;
    let (mut created, code) = post_until_shed(&mut conn, &scans, &mut next, 10_000_000).await;
    assert_eq!(code, "disk_full");
    let s = status(&cluster).await;
    assert_eq!(s["store"]["failure"]["error"], "disk_full", "{s}");
    assert_eq!(post(&mut conn, &ships, 0).await.code, Some("disk_full"), "critical cannot be stored either");
    // An acknowledged event reads back, or, where redb must read the file after the write
    // error (it refuses until the store reopens), the read is refused plainly: never a
    // 404, never other data.
    let acknowledged = [0, created - 1];
    for id in acknowledged {
        match cluster.nodes[0].client().get::<Value>(&format!("/v1/events/scan-{id:010}")).await {
            Ok(event) => assert_eq!(event["lane"], "bulk", "{event}"),
            Err(ApiError::Status { status: 503, body, .. }) => {
                assert!(body.contains("unavailable"), "{body}")
            }
            Err(e) => panic!("reading acknowledged event {id} during the failure: {e}"),
        }
    }
    assert!(cluster.nodes[0].is_running(), "a full disk must not stop the node");

    // Space returns: the node stores again by itself.
    in_namespace_of(pid, &["rm", &format!("{dir}/ballast")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each attempt posts a new shipment: those answered with an error were not stored.
    let mut ship = 1;
    while post(&mut conn, &ships, ship).await.created == 0 {
        ship += 1;
        assert!(
            Instant::now() < deadline,
            "the node did not recover from the full disk:\n{}",
            cluster.nodes[0].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = post(&mut conn, &scans, next).await;
    assert_eq!(answer.created, 100, "{answer:?}");
    created += 100;
    next += 100;
    // Everything acknowledged before the failure is there.
    for id in acknowledged {
        let event: Value = cluster.nodes[0].client().get(&format!("/v1/events/scan-{id:010}")).await.unwrap();
        assert_eq!(event["lane"], "bulk", "{event}");
    }

    // The store file stops taking writes (immutable: every write fails with EPERM).
    let store = format!("{dir}/node.redb");
    in_namespace_of(pid, &["chattr", "+i", &store]);
    let answer = post(&mut conn, &scans, next).await;
    in_namespace_of(pid, &["chattr", "-i", &store]);
    assert_eq!(answer.code, Some("store_failed"), "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = post(&mut conn, &scans, next).await;
        if answer.created == 100 {
            created += 100;
            break;
        }
        assert!(Instant::now() < deadline, "the node did not recover from the write error: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing acknowledged was lost, nothing was stored twice.
    cluster.relay.start().await.unwrap();
    let expected = PerLane::from_fn(|lane| match lane {
        Lane::Critical => 1,
        Lane::Standard => 0,
        Lane::Bulk => created,
    });
    verify(&cluster, expected, Duration::from_secs(60)).await.unwrap().unwrap();
}
