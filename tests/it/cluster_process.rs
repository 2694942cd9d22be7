//! Three real `palisade serve` processes on 127.0.0.1: forming a cluster, `kill -9` of the
//! leader and of every node under concurrent writes, restarts with the same and with
//! contradicting flags, and requests to a minority. Every test asserts invariants (no
//! acknowledged write lost, revisions never go backwards, errors are honest), never speed.
//!
//! Run with `cargo test --test it cluster_process`; on a failure the node logs are printed.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use support::process::{
    eventually, run_to_exit, with_flag, Cluster, ClusterOptions, Consistency, Http, Listing,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_serve_everywhere() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _term) = c.leader().await;

    // Every node lists the three voters with their client and peer URLs, and the same leader.
    for id in c.ids() {
        eventually(&c, Duration::from_secs(15), &format!("node {id} lists 3 voters"), || async {
            let v = c.cluster_view(id).await?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let mut seen = Vec::new();
            for m in &members {
                let mid = m["id"].as_u64().ok_or("member without id")?;
                let want = (c.client_url(mid), c.peer_url(mid), "voter");
                let got = (
                    m["client_url"].as_str().unwrap_or_default().to_string(),
                    m["peer_url"].as_str().unwrap_or_default().to_string(),
                    m["role"].as_str().unwrap_or_default(),
                );
                if got != (want.0.clone(), want.1.clone(), want.2) {
                    return Err(format!("member {mid}: got {got:?}, want {want:?}"));
                }
                seen.push(mid);
            }
            seen.sort();
            if seen != c.ids() {
                return Err(format!("members {seen:?}, want {:?}", c.ids()));
            }
            if v["leader"].as_u64() != Some(leader) {
                return Err(format!("leader {}, want {leader}", v["leader"]));
            }
            Ok(())
        })
        .await;
    }

    // A write through a follower works (forwarded) ...
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let http = c.http();
    let r = http.put(&c.client_url(followers[0]), "/smoke/key", "hello").await.expect("put via follower");
    assert_eq!(r.status, 200, "put via follower {}: {}", followers[0], r.text);
    let rev = r.revision().expect("put reply has a revision");
    assert_eq!(r.body["kv"]["mod_revision"].as_u64(), Some(rev), "{}", r.text);
    assert_eq!(r.header("x-palisade-revision"), Some(rev.to_string().as_str()));
    assert!(r.header("x-palisade-term").is_some(), "X-Palisade-Term missing");

    // ... and a linearizable read on every node sees it at once.
    for id in c.ids() {
        let g = http.get(&c.client_url(id), "/smoke/key", Consistency::Linearizable).await.expect("get");
        assert_eq!(g.status, 200, "linearizable get on node {id}: {}", g.text);
        assert_eq!(g.value(), Some("hello"), "node {id}: {}", g.text);
        assert_eq!(g.body["kv"]["mod_revision"].as_u64(), Some(rev), "node {id}: {}", g.text);
        assert!(g.revision().unwrap() >= rev, "node {id} read below the write's revision: {}", g.text);
    }

    // A serializable read on a follower eventually sees it too.
    for &f in &followers {
        eventually(&c, Duration::from_secs(10), &format!("serializable read on node {f}"), || async {
            let g = http
                .get(&c.client_url(f), "/smoke/key", Consistency::Serializable)
                .await
                .map_err(|e| e.to_string())?;
            match (g.status, g.value()) {
                (200, Some("hello")) => Ok(()),
                _ => Err(format!("{} {}", g.status, g.text)),
            }
        })
        .await;
    }

    // A delete through the other follower, seen by linearizable reads everywhere.
    let d = http.delete(&c.client_url(followers[1]), "/smoke/key").await.expect("delete");
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.body["deleted"].as_u64(), Some(1), "{}", d.text);
    assert!(d.revision().unwrap() > rev, "{}", d.text);
    for id in c.ids() {
        let g = http.get(&c.client_url(id), "/smoke/key", Consistency::Linearizable).await.expect("get");
        assert_eq!(g.status, 404, "node {id} after the delete: {}", g.text);
    }
}

/// What one writer saw.
#[derive(Debug, Default)]
struct WriterLog {
    task: usize,
    /// key -> (value, revision) of every write answered 200.
    acked: BTreeMap<String, (String, u64)>,
    /// Keys whose write was answered 503 (the contract: nothing took effect).
    unavailable: Vec<String>,
    /// Keys whose write never reached a node (connection refused): nothing took effect.
    refused: Vec<String>,
    /// Keys whose write got 504 or no answer: may or may not have taken effect.
    unknown: Vec<String>,
    /// Answers outside the contract (a status other than 200/503/504, a 503 without
    /// Retry-After, a reply that contradicts the write) and monotonicity violations.
    violations: Vec<String>,
}

/// Writes `/w/<task>/<n>` (n = 1, 2, ...) through random nodes until `stop`, one at a time,
/// and every few writes reads its last acknowledged key back (linearizable) from a random node.
async fn writer(
    task: usize,
    urls: Vec<String>,
    http: Http,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> WriterLog {
    let mut log = WriterLog { task, ..Default::default() };
    // The highest revision this client has seen in a successful reply.
    let mut last_seen = 0u64;
    let mut last_acked: Option<(String, String, u64)> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("/w/{task}/{n:06}");
        let value = format!("v-{task}-{n}");
        let url = &urls[rand::thread_rng().gen_range(0..urls.len())];
        let mut failed = true;
        match http.put(url, &key, &value).await {
            Ok(r) if r.status == 200 => {
                failed = false;
                let rev = r.revision().unwrap_or(0);
                if r.value() != Some(value.as_str()) || r.body["kv"]["mod_revision"].as_u64() != Some(rev) {
                    log.violations.push(format!("put {key} via {url}: reply does not match: {}", r.text));
                }
                if rev <= last_seen {
                    log.violations.push(format!(
                        "put {key} via {url}: revision {rev} not above {last_seen}, already seen by this client"
                    ));
                }
                last_seen = last_seen.max(rev);
                log.acked.insert(key.clone(), (value.clone(), rev));
                last_acked = Some((key, value, rev));
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status == 503 => {
                if r.header("retry-after").is_none() {
                    log.violations.push(format!("put {key} via {url}: 503 without Retry-After"));
                }
                log.unavailable.push(key);
            }
            Ok(r) if r.status == 504 => log.unknown.push(key),
            Ok(r) => {
                log.violations.push(format!("put {key} via {url}: unexpected {} {}", r.status, r.text));
                log.unknown.push(key);
            }
            Err(e) if e.is_connect() => log.refused.push(key),
            Err(_) => log.unknown.push(key),
        }
        if n.is_multiple_of(8) {
            if let Some((k, v, rev)) = &last_acked {
                let url = &urls[rand::thread_rng().gen_range(0..urls.len())];
                match http.get(url, k, Consistency::Linearizable).await {
                    Ok(r) if r.status == 200 => {
                        let read_rev = r.revision().unwrap_or(0);
                        if r.value() != Some(v.as_str())
                            || r.body["kv"]["mod_revision"].as_u64() != Some(*rev)
                        {
                            log.violations.push(format!(
                                "linearizable get {k} via {url} after its write was acked at {rev}: {}",
                                r.text
                            ));
                        }
                        if read_rev < last_seen {
                            log.violations.push(format!(
                                "linearizable get {k} via {url}: revision {read_rev} below {last_seen}, already seen by this client"
                            ));
                        }
                        last_seen = last_seen.max(read_rev);
                    }
                    Ok(r) if r.status == 404 => log.violations.push(format!(
                        "linearizable get {k} via {url}: 404 after its write was acked at {rev}: {}",
                        r.text
                    )),
                    Ok(r) if r.status == 503 && r.header("retry-after").is_none() => {
                        log.violations.push(format!("get {k} via {url}: 503 without Retry-After"))
                    }
                    Ok(r) if r.status == 503 || r.status == 504 => {}
                    Ok(r) => {
                        log.violations.push(format!("get {k} via {url}: unexpected {} {}", r.status, r.text))
                    }
                    Err(_) => {}
                }
            }
        }
        if failed {
            // A dead node refuses at once; don't spin on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    log
}

/// Four concurrent writers against the cluster's nodes.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
}

impl Writers {
    fn start(c: &Cluster, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let urls: Vec<String> = c.ids().into_iter().map(|id| c.client_url(id)).collect();
        // Each writer has its own client (its own connections), well above the request deadline.
        let tasks = (0..n)
            .map(|t| {
                tokio::spawn(writer(
                    t,
                    urls.clone(),
                    Http::new(Duration::from_secs(10)),
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` writes in all were acknowledged.
    async fn until_acked(&self, c: &Cluster, n: usize, within: Duration) {
        eventually(c, within, &format!("{n} acknowledged writes"), || async {
            let a = self.acked();
            if a >= n {
                Ok(())
            } else {
                Err(format!("{a} acknowledged so far"))
            }
        })
        .await;
    }

    async fn finish(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(t.await.expect("a writer task panicked"));
        }
        logs
    }
}

/// Asserts the writers saw nothing outside the contract.
fn assert_no_violations(c: &Cluster, logs: &[WriterLog]) {
    let v: Vec<String> = logs
        .iter()
        .flat_map(|l| l.violations.iter().map(move |x| format!("writer {}: {x}", l.task)))
        .collect();
    assert!(v.is_empty(), "contract violations seen by the writers:\n{}\n{}", v.join("\n"), c.logs());
}

/// Checks a listing of `/w` against the writers' logs: every acknowledged write is there
/// with its value and revision; no write answered 503 took effect; nothing else is there.
fn check_listing(node: u64, listing: &Listing, logs: &[WriterLog]) -> Result<(), String> {
    let mut problems = Vec::new();
    for l in logs {
        for (key, (value, rev)) in &l.acked {
            match listing.kvs.get(key) {
                None => problems.push(format!("acknowledged {key} (revision {rev}) is missing")),
                Some(kv) => {
                    if kv["value"].as_str() != Some(value.as_str())
                        || kv["mod_revision"].as_u64() != Some(*rev)
                    {
                        problems.push(format!("acknowledged {key}={value}@{rev} reads back as {kv}"));
                    }
                }
            }
        }
        for key in &l.unavailable {
            if let Some(kv) = listing.kvs.get(key) {
                problems.push(format!("{key} was answered 503 (nothing took effect) but is present: {kv}"));
            }
        }
        for key in &l.refused {
            if let Some(kv) = listing.kvs.get(key) {
                problems.push(format!("{key} was never sent (connection refused) but is present: {kv}"));
            }
        }
    }
    for key in listing.kvs.keys() {
        let attempted = logs.iter().any(|l| {
            l.acked.contains_key(key)
                || l.unknown.contains(key)
                || l.unavailable.contains(key)
                || l.refused.contains(key)
        });
        if !attempted {
            problems.push(format!("{key} is present but no writer wrote it"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(20);
        Err(format!("node {node} at revision {}:\n{}", listing.revision, problems.join("\n")))
    }
}

fn summary(logs: &[WriterLog]) -> String {
    let sum = |f: fn(&WriterLog) -> usize| logs.iter().map(f).sum::<usize>();
    format!(
        "{} acknowledged, {} answered 503, {} refused, {} unknown",
        sum(|l| l.acked.len()),
        sum(|l| l.unavailable.len()),
        sum(|l| l.refused.len()),
        sum(|l| l.unknown.len())
    )
}

fn max_acked_revision(logs: &[WriterLog]) -> u64 {
    logs.iter().flat_map(|l| l.acked.values().map(|(_, r)| *r)).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_writes_loses_no_acknowledged_write() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (old_leader, old_term) = c.leader().await;

    let writers = Writers::start(&c, 4);
    writers.until_acked(&c, 40, Duration::from_secs(20)).await;
    c.kill_9(old_leader);
    let acked_at_kill = writers.acked();

    // A new leader among the survivors, in a higher term.
    let (new_leader, new_term) = c.leader().await;
    assert_ne!(new_leader, old_leader, "the killed node cannot still lead");
    assert!(new_term > old_term, "new leader {new_leader} in term {new_term}, not above {old_term}");

    // The writers keep making progress against the survivors.
    writers.until_acked(&c, acked_at_kill + 40, Duration::from_secs(20)).await;
    let logs = writers.finish().await;
    assert_no_violations(&c, &logs);
    eprintln!("writes: {}", summary(&logs));

    // Every acknowledged write is on a linearizable read from every live node.
    for id in c.live_ids() {
        let listing = c
            .http()
            .list(&c.client_url(id), "/w", Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("linearizable list on node {id}: {e}\n{}", c.logs()));
        if let Err(e) = check_listing(id, &listing, &logs) {
            panic!("{e}\n{}", c.logs());
        }
    }

    // The killed node, restarted with the same command line, catches up.
    c.restart(old_leader).await;
    eventually(&c, Duration::from_secs(20), &format!("node {old_leader} catches up"), || async {
        let listing = c.http().list(&c.client_url(old_leader), "/w", Consistency::Serializable).await?;
        check_listing(old_leader, &listing, &logs)
    })
    .await;
    let (_, term) = c.leader().await;
    assert!(term >= new_term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_node_under_writes_loses_no_acknowledged_write() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.leader().await;

    let writers = Writers::start(&c, 4);
    writers.until_acked(&c, 40, Duration::from_secs(20)).await;
    c.kill_all_9();
    let logs = writers.finish().await;
    assert_no_violations(&c, &logs);
    let max_rev = max_acked_revision(&logs);
    eprintln!("writes: {}, highest acknowledged revision {max_rev}", summary(&logs));

    for id in c.ids() {
        c.restart(id).await;
    }
    let (leader, _) = c.leader().await;

    let mut floor = max_rev;
    for id in c.ids() {
        let listing =
            c.http().list(&c.client_url(id), "/w", Consistency::Linearizable).await.unwrap_or_else(|e| {
                panic!("linearizable list on node {id} after the restart: {e}\n{}", c.logs())
            });
        assert!(
            listing.revision >= max_rev,
            "node {id} reads at revision {} after the restart, below the acknowledged {max_rev}\n{}",
            listing.revision,
            c.logs()
        );
        floor = floor.max(listing.revision);
        if let Err(e) = check_listing(id, &listing, &logs) {
            panic!("{e}\n{}", c.logs());
        }
    }
    let v = c.cluster_view(leader).await.unwrap();
    assert!(v["revision"].as_u64().unwrap() >= max_rev, "/v1/cluster on the leader: {v}");

    // New writes succeed, with revisions above everything seen before.
    for id in c.ids() {
        let r =
            c.http().put(&c.client_url(id), &format!("/after/{id}"), "x").await.expect("put after restart");
        assert_eq!(r.status, 200, "put via node {id} after the restart: {}\n{}", r.text, c.logs());
        let rev = r.revision().unwrap();
        assert!(rev > floor, "put via node {id} got revision {rev}, not above {floor}");
        floor = rev;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_contradicting_flags_is_refused() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.leader().await;
    let status = c.stop(3, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM should stop node 3 cleanly with exit 0, got {status:?}\n{}",
        c.log_tail(3, 30)
    );
    let args = c.command_line(3);

    // Node 3's data dir under another node id (with that node's advertised peer URL, so the
    // flags agree with each other and only the data dir contradicts them).
    let other_id = with_flag(&with_flag(&args, "--node-id", "2"), "--advertise-peer", &c.peer_url(2));
    let out = run_to_exit(&other_id, Duration::from_secs(15));
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "starting node 3's data dir as node 2 must fail, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(out.stderr.contains("belongs to node 3"), "stderr should explain the conflict:\n{}", out.stderr);

    // A different --initial-cluster (node 1 moved to another peer port).
    let port = support::process::free_ports(1)[0];
    let cluster_flag = args[args.iter().position(|a| a == "--initial-cluster").unwrap() + 1].clone();
    let moved = cluster_flag.replace(&c.peer_url(1), &format!("http://127.0.0.1:{port}"));
    assert_ne!(moved, cluster_flag);
    let out = run_to_exit(&with_flag(&args, "--initial-cluster", &moved), Duration::from_secs(15));
    assert!(
        out.status.is_some_and(|s| !s.success()),
        "starting node 3 with a different --initial-cluster must fail, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("contradicts the cluster recorded"),
        "stderr should explain the conflict:\n{}",
        out.stderr
    );

    // The refused starts left the data dir intact: the right flags still work.
    c.restart(3).await;
    let r = c.http().put(&c.client_url(3), "/after/contradiction", "ok").await.expect("put via node 3");
    assert_eq!(r.status, 200, "{}\n{}", r.text, c.logs());
    c.leader().await;
}

/// Asserts that a linearizable read and a write on node `id` (in a minority) end with 503
/// and Retry-After; the client waits 10 s, far above the 1 s request deadline.
async fn assert_minority_refuses(c: &Cluster, id: u64, allow_504_for_write: bool) {
    let http = Http::new(Duration::from_secs(10));
    let url = c.client_url(id);

    let t = Instant::now();
    let r = http.get(&url, "/m/key", Consistency::Linearizable).await.unwrap_or_else(|e| {
        panic!("linearizable read on minority node {id} got no answer in 10 s: {e}\n{}", c.logs())
    });
    eprintln!("minority read on node {id}: {} after {:?}", r.status, t.elapsed());
    assert_eq!(r.status, 503, "linearizable read on minority node {id}: {}\n{}", r.text, c.logs());
    assert!(r.header("retry-after").is_some(), "503 without Retry-After: {:?}", r.headers);
    assert_eq!(r.error_code(), Some("unavailable"), "{}", r.text);

    let t = Instant::now();
    let r = http
        .put(&url, "/m/key", "minority")
        .await
        .unwrap_or_else(|e| panic!("write on minority node {id} got no answer in 10 s: {e}\n{}", c.logs()));
    eprintln!("minority write on node {id}: {} after {:?}", r.status, t.elapsed());
    if allow_504_for_write && r.status == 504 {
        assert_eq!(r.error_code(), Some("timeout"), "{}", r.text);
    } else {
        assert_eq!(r.status, 503, "write on minority node {id}: {}\n{}", r.text, c.logs());
        assert!(r.header("retry-after").is_some(), "503 without Retry-After: {:?}", r.headers);
        assert_eq!(r.error_code(), Some("unavailable"), "{}", r.text);
    }

    // The local replica still answers serializable reads.
    let r = http.get(&url, "/m/key", Consistency::Serializable).await.expect("serializable read");
    assert_eq!(r.status, 200, "serializable read on minority node {id}: {}", r.text);
    assert_eq!(r.value(), Some("before"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_minority_end_with_503_within_the_deadline() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let r = c.http().put(&c.client_url(leader), "/m/key", "before").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    // Every replica has it before the kills (so the serializable check below is meaningful).
    for id in c.ids() {
        eventually(&c, Duration::from_secs(10), &format!("node {id} applies /m/key"), || async {
            let g = c.http().get(&c.client_url(id), "/m/key", Consistency::Serializable).await;
            match g {
                Ok(g) if g.status == 200 => Ok(()),
                Ok(g) => Err(format!("{} {}", g.status, g.text)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    // The survivor is a follower: the leader and the other follower are killed.
    let survivor = c.ids().into_iter().find(|&i| i != leader).unwrap();
    for id in c.ids() {
        if id != survivor {
            c.kill_9(id);
        }
    }
    assert_minority_refuses(&c, survivor, false).await;

    // The survivor is the leader: restart the others, then kill the two followers. The
    // leader refuses a write before proposing it (503) once it knows it has lost its
    // quorum; until openraft's ack clock shows that, it proposes, and the entry may still
    // commit later, so 504 ("may or may not take effect") is the honest answer then.
    for id in c.ids() {
        if id != survivor {
            c.restart(id).await;
        }
    }
    let (leader, _) = c.leader().await;
    let r = c.http().put(&c.client_url(leader), "/m/latest", "latest").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    for id in c.ids() {
        if id != leader {
            c.kill_9(id);
        }
    }
    // For one election timeout after its quorum last acknowledged it, the leader may still
    // answer a linearizable read from its read lease: no other leader can exist before the
    // followers' longer vote refusal runs out, so the answer is current...
    let r = c.http().get(&c.client_url(leader), "/m/latest", Consistency::Linearizable).await.unwrap();
    assert!(
        (r.status == 200 && r.value() == Some("latest")) || r.status == 503,
        "linearizable read on the leader just after losing its quorum: {} {}",
        r.status,
        r.text
    );
    // ...and once the lease has run out, the read must be 503.
    tokio::time::sleep(Duration::from_millis(c.options().election_timeout_ms)).await;
    assert_minority_refuses(&c, leader, true).await;
}

/// Snapshots: with a snapshot every 100 entries, the leader purges its log while a
/// follower is down; the follower, restarted, can only catch up by installing a snapshot.
/// Then every node is killed and restarted: each recovers from its snapshot plus the log
/// after it, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_catch_up_a_follower_and_survive_restarts() {
    let opts =
        ClusterOptions { extra_args: vec!["--snapshot-every".into(), "100".into()], ..Default::default() };
    let c = Cluster::start(opts).await;
    let (leader, _) = c.leader().await;
    let lagging = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.kill_9(lagging);
    let url = c.client_url(leader);
    // Sequential writes: one log entry each, so the log passes several snapshot points.
    let mut acked = BTreeMap::new();
    for i in 0..450 {
        let key = format!("/snap/k{i:04}");
        let r = c.http().put(&url, &key, &format!("v{i}")).await.expect("put");
        assert_eq!(r.status, 200, "{}", r.text);
        acked.insert(key, format!("v{i}"));
    }
    let snap = c.data_dir(leader).join("snapshot").join("snapshot.bin");
    assert!(snap.exists(), "the leader took no snapshot at {}", snap.display());

    let check = |listing: &Listing| -> Result<(), String> {
        for (k, v) in &acked {
            match listing.kvs.get(k) {
                Some(kv) if kv["value"] == v.as_str() => {}
                other => return Err(format!("{k}: expected {v}, found {other:?}")),
            }
        }
        Ok(())
    };

    c.restart(lagging).await;
    let lag_url = c.client_url(lagging);
    eventually(&c, Duration::from_secs(20), "the restarted follower catches up by snapshot", || async {
        let l = c.http().list(&lag_url, "/snap", Consistency::Serializable).await?;
        check(&l)
    })
    .await;
    assert!(
        c.data_dir(lagging).join("snapshot").join("snapshot.bin").exists(),
        "the follower holds no snapshot"
    );

    c.kill_all_9();
    for id in c.ids() {
        c.restart(id).await;
    }
    c.leader().await;
    for id in c.ids() {
        let u = c.client_url(id);
        eventually(&c, Duration::from_secs(20), &format!("node {id} recovers every write"), || async {
            let l = c.http().list(&u, "/snap", Consistency::Linearizable).await?;
            check(&l)
        })
        .await;
    }
}

/// A follower that fell behind by a few megabytes of entries catches up. openraft bounds
/// every AppendEntries by the heartbeat interval (50 ms here) and retries the same batch
/// after a timeout; a batch of up to 300 entries of 128 KiB took longer than that to send,
/// sign, check and write in a debug build, so the follower never got another entry,
/// campaigned with ever higher terms that the leader (its lease valid) ignored, and the
/// cluster ran on two nodes for good. Appends are now cut to 512 KiB of entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_big_entries_catches_up() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let lagging = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.kill_9(lagging);
    let url = c.client_url(leader);
    let value = "x".repeat(16 * 1024);
    for i in 0..80 {
        let ops: Vec<serde_json::Value> = (0..8)
            .map(|k| serde_json::json!({ "put": { "key": format!("/big/k{k}"), "value": format!("{i}{value}") } }))
            .collect();
        let body = serde_json::json!({ "success": ops });
        // The other follower must take every entry: a timeout there fails the write (504),
        // so retry until it commits.
        eventually(&c, Duration::from_secs(20), "a big transaction commits", || async {
            let r = c.http().client.post(format!("{url}/v1/txn")).json(&body).send().await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let want = c.cluster_view(leader).await.expect("the leader's view")["revision"].as_u64().unwrap();
    c.restart(lagging).await;
    eventually(&c, Duration::from_secs(30), "the follower catches up", || async {
        let v = c.cluster_view(lagging).await?;
        match v["revision"].as_u64() {
            Some(r) if r >= want => Ok(()),
            other => Err(format!(
                "the follower is at revision {other:?} (term {}), the leader at {want}",
                v["term"]
            )),
        }
    })
    .await;
}

/// `--log-format json`: every line the node logs is one JSON object (a slow request's line
/// included, which names the route, never the key or the value); SIGTERM ends the process
/// with 0 after its "shutting down" line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_no_key_or_value_and_sigterm_exits_zero() {
    let opts = ClusterOptions {
        nodes: 1,
        extra_args: ["--log-format", "json", "--slow-request-ms", "1"].map(String::from).to_vec(),
        ..ClusterOptions::default()
    };
    let c = Cluster::start(opts).await;
    c.leader().await;
    let base = c.client_url(1);
    for i in 0..50 {
        let r = c.http().put(&base, &format!("/secret-key-{i}"), "secret-value").await.expect("a put");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let status = c.stop(1, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}\n{}", c.log_tail(1, 40));
    let log = std::fs::read_to_string(c.log_path(1)).expect("the log");
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.starts_with("=== harness")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 3, "{log}");
    assert!(
        !log.contains("secret-key") && !log.contains("secret-value"),
        "a key or value was logged:\n{log}"
    );
    assert!(log.contains("\"message\":\"shutting down\""), "{log}");
}

/// The value of an unlabelled counter in a node's `/metrics`.
async fn counter(c: &Cluster, id: u64, name: &str) -> u64 {
    let m = c.http().get_path(&c.client_url(id), "/metrics").await.expect("metrics");
    assert_eq!(m.status, 200, "metrics on node {id}: {}", m.text);
    m.text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .unwrap_or_else(|| panic!("no {name}_total in node {id}'s metrics:\n{}", m.text))
        .trim()
        .parse()
        .expect("a counter")
}

/// Linearizable reads on a leader whose followers keep acknowledging it come from its read
/// lease, without a quorum round each; with `--read-index-only` every one takes a round.
/// (That a lease never serves a stale read is what the fault suite's recorded histories
/// check: with the lease made 20 election timeouts long, `fault_sim::partition_isolate_leader`
/// and `cluster_sim::linearizable_read_on_isolated_leader_fails_instead_of_stale` fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reads_from_its_lease_unless_told_to_take_a_round_each_time() {
    for read_index_only in [false, true] {
        let extra_args = if read_index_only { vec!["--read-index-only".to_string()] } else { vec![] };
        let c = Cluster::start(ClusterOptions { extra_args, ..Default::default() }).await;
        let (leader, _) = c.leader().await;
        let http = c.http();
        let r = http.put(&c.client_url(leader), "/lease/key", "v").await.expect("put");
        assert_eq!(r.status, 200, "{}", r.text);
        let (lease0, rounds0) = (
            counter(&c, leader, "palisade_raft_lease_read_indexes").await,
            counter(&c, leader, "palisade_raft_read_index_rounds").await,
        );
        for _ in 0..50 {
            let g =
                http.get(&c.client_url(leader), "/lease/key", Consistency::Linearizable).await.expect("get");
            assert_eq!(g.status, 200, "{}", g.text);
            assert_eq!(g.value(), Some("v"), "{}", g.text);
        }
        let lease = counter(&c, leader, "palisade_raft_lease_read_indexes").await - lease0;
        let rounds = counter(&c, leader, "palisade_raft_read_index_rounds").await - rounds0;
        if read_index_only {
            assert_eq!(lease, 0, "--read-index-only answered {lease} reads from the lease");
            assert!(rounds >= 50, "50 reads one after the other took {rounds} rounds");
        } else {
            // A read right after an election timeout without traffic may still take a round.
            assert!(
                lease >= 45,
                "only {lease} of 50 reads came from the lease ({rounds} rounds)\n{}",
                c.logs()
            );
        }
        drop(c);
    }
}

/// A write acknowledged by the leader is seen by a linearizable read through a follower
/// right after, while other writers keep the leader busy: the read index the leader hands
/// out from its lease covers what it acknowledged, not only what it told the followers.
/// (The race this guards, a read index taken from a lagging copy of the applied index, is
/// narrow: this test did not catch it on demand; the argument is in `raft::lease`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_by_the_leader_is_read_back_through_a_follower() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..4)
        .map(|w| {
            let (url, stop, http) = (c.client_url(leader), stop.clone(), c.http().clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = http.put(&url, &format!("/busy/{w}"), &i.to_string()).await;
                    i += 1;
                }
            })
        })
        .collect();
    let http = c.http();
    for i in 0..300u64 {
        let key = format!("/seen/{}", i % 7);
        let r = http.put(&c.client_url(leader), &key, &i.to_string()).await.expect("put");
        assert_eq!(r.status, 200, "{}", r.text);
        let via = followers[i as usize % followers.len()];
        let g = http.get(&c.client_url(via), &key, Consistency::Linearizable).await.expect("get");
        assert_eq!(g.status, 200, "read of {key} via node {via}: {}", g.text);
        assert_eq!(
            g.value(),
            Some(i.to_string().as_str()),
            "a linearizable read via node {via} missed the write acknowledged just before it: {}",
            g.text
        );
    }
    stop.store(true, Ordering::Relaxed);
    for b in background {
        b.await.unwrap();
    }
}
