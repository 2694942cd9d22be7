//! Operations at scale on real processes: a learner joining a store of 500,000 keys catches
//! up through a snapshot streamed in chunks, with its memory bounded and writes flowing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::process::{Cluster, ClusterOptions};

/// VmRSS or VmHWM of `pid` in KiB (0 once it is gone).
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A learner joins a store of 500,000 keys: it catches up through a snapshot streamed in
/// chunks, writes keep flowing meanwhile, and its peak memory stays within the bound the
/// streaming promises: what the leader holds for the same state, plus 64 MiB (the state is
/// in memory by design; the transfer itself adds a chunk, never a copy of the store).
///
/// It loads both cores for about two minutes, which would make the timing of the tests
/// running beside it meaningless: `make test` runs it alone, after the others (`--ignored
/// --exact`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: make test runs it alone, after the others"]
async fn a_learner_joins_a_store_of_500k_keys_with_bounded_memory() {
    const KEYS: usize = 500_000;
    const BATCH: usize = 125;
    let opts = ClusterOptions {
        nodes: 4,
        joiners: vec![4],
        delayed: vec![4],
        request_timeout_ms: 20_000,
        start_timeout: Duration::from_secs(60),
        // Snapshots well before the load ends, each purging the log up to 100 entries
        // before it: the learner cannot be sent the log, it must be sent a snapshot.
        extra_args: ["--snapshot-every", "1000"].map(String::from).to_vec(),
        ..ClusterOptions::default()
    };
    let c = Cluster::start(opts).await;
    let (leader, _) = c.leader().await;
    let base = c.client_url(leader);
    // 500,000 keys, 4,000 transactions of 125 puts, 4 at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (http, base, next) = (c.http().clone(), base.clone(), next.clone());
        loaders.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b * BATCH >= KEYS {
                    return;
                }
                let ops: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| json!({"put": {"key": format!("/big/{i:07}"), "value": "v".repeat(64)}}))
                    .collect();
                let body = json!({"success": ops});
                // A batch that timed out is sent again (it puts the same values).
                let mut tries = 0;
                loop {
                    tries += 1;
                    match http.send(Method::POST, &base, "/v1/txn", Some(&body)).await {
                        Ok(r) if r.status == 200 => break,
                        other if tries < 5 => eprintln!("batch {b}: {other:?}; again"),
                        other => panic!("batch {b}: {other:?}"),
                    }
                }
            }
        }));
    }
    for l in loaders {
        l.await.expect("a loader");
    }
    let view = c.cluster_view(leader).await.expect("the leader's view");
    let revision = view["revision"].as_u64().expect("a revision");
    let leader_kib = proc_kib(c.pid(leader).expect("the leader runs"), "VmRSS:");
    // A writer that keeps writing while the learner catches up.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (http, base, stop, acked) = (c.http().clone(), base.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http.put(&base, &format!("/flow/{i}"), "x").await {
                    if r.status == 200 {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        })
    };
    c.start_node(4).await;
    let pid = c.pid(4).expect("node 4 runs");
    let until = Instant::now() + Duration::from_secs(240);
    let mut peak = 0;
    loop {
        peak = peak.max(proc_kib(pid, "VmRSS:"));
        let caught_up =
            c.cluster_view(4).await.ok().and_then(|v| v["revision"].as_u64()).is_some_and(|r| r >= revision);
        if caught_up {
            break;
        }
        assert!(Instant::now() < until, "node 4 did not catch up in 240 s\n{}", c.log_tail(4, 40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer");
    let hwm = proc_kib(pid, "VmHWM:").max(peak);
    println!(
        "500k keys: leader RSS {} MiB, learner peak {} MiB, {during} writes acknowledged during the catch-up",
        leader_kib / 1024,
        hwm / 1024
    );
    assert!(during > 0, "no write was acknowledged while the learner caught up");
    assert!(
        hwm <= leader_kib + 64 * 1024,
        "the learner's peak RSS ({} MiB) is above the leader's RSS for the same state ({} MiB) + 64 MiB",
        hwm / 1024,
        leader_kib / 1024
    );
    let log = c.log_tail(4, 400);
    assert!(!log.contains("panicked"), "{log}");
}
