//! Locks and elections on real 3-node clusters of `palisade serve` processes, while the
//! leader is killed (`kill -9`, then restarted):
//!
//! - many holders contend for a mutex and a semaphore through every node (the lock
//!   workload of `jepsen::recorder`, checked by `jepsen::fencing::check_locks_with`:
//!   tokens strictly increase, never more holders than the limit, no grant after its
//!   lease's end, the guarded resource never accepts a token below one it accepted, fence
//!   answers match the holdings); besides, a holder that stops keeping its lease alive and
//!   sleeps past it comes back to the guarded resource with its old token and is refused
//!   (a later holder's higher token was accepted), and the fence check calls its token
//!   stale on every node; a waiter whose lease nobody keeps alive is told 409
//!   `lease_expired`, never granted, as is one whose lease is revoked, while a waiter with a
//!   `ttl` lease (kept alive by the server while it waits) waits past its TTL and is told
//!   `lock_timeout`;
//! - candidates campaign, proclaim, resign or let their leases lapse while observers follow
//!   the election on every node (checked by `jepsen::fencing::check_observations`: one
//!   leader at a time, no stream shows a leader outside its leadership, every stream ends on
//!   the final state); then a last leader is seen by every observer, a candidate whose
//!   lease lapses while it waits never leads, and the resignation reaches every observer.

use crate::jepsen;
use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use jepsen::fencing::FenceCheck;
use jepsen::recorder::{start_locks, Contended, Endpoints, LockRun, LockWorkload, Recorder};
use support::process::{Cluster, ClusterOptions};

/// A cluster whose running nodes the workload's clients may use.
struct Nodes {
    cluster: Cluster,
    up: Arc<Mutex<BTreeMap<u64, String>>>,
    /// For requests that may wait (acquires): a timeout well above their `wait`.
    http: reqwest::Client,
}

impl Nodes {
    async fn start() -> Arc<Nodes> {
        let cluster = Cluster::start(ClusterOptions::default()).await;
        cluster.leader().await;
        let up = cluster.ids().into_iter().map(|id| (id, cluster.client_url(id))).collect();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("a reqwest client");
        Arc::new(Nodes { cluster, up: Arc::new(Mutex::new(up)), http })
    }

    fn endpoints(&self) -> Endpoints {
        let up = self.up.clone();
        Arc::new(move || up.lock().unwrap().values().cloned().collect())
    }

    fn urls(&self) -> Vec<String> {
        self.up.lock().unwrap().values().cloned().collect()
    }

    /// `kill -9` of the leader, `down` of nothing, then its restart; returns its id.
    async fn kill_leader(&self, down: Duration) -> u64 {
        let (leader, _) = self.cluster.leader().await;
        self.up.lock().unwrap().remove(&leader);
        self.cluster.kill_9(leader);
        println!("kill -9 node {leader} (the leader)");
        tokio::time::sleep(down).await;
        self.cluster.restart(leader).await;
        self.up.lock().unwrap().insert(leader, self.cluster.client_url(leader));
        println!("restarted node {leader}");
        leader
    }

    /// One JSON request to the running nodes in turn until one answers other than 503
    /// (for up to 20 s); the answering node's URL, status and body. A request whose answer
    /// was lost is sent again (to the next node).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (String, u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for url in self.urls() {
                let mut req = self.http.request(method.clone(), format!("{url}{path}"));
                if let Some(b) = &body {
                    req = req.json(b);
                }
                if let Ok(r) = req.send().await {
                    let status = r.status().as_u16();
                    if status != 503 {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        return (url, status, v);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path}: no node answered within 20 s\n{}",
                self.cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A lease of `ttl` (through any node).
    async fn grant(&self, ttl: &str) -> u64 {
        let (_, status, v) =
            self.call(reqwest::Method::POST, "/v1/leases", Some(json!({ "ttl": ttl }))).await;
        assert_eq!(status, 201, "a lease grant: {v}");
        v["id"].as_u64().expect("a lease id")
    }

    /// Keeps lease `id` alive (every 400 ms, through any node) until the flag is set.
    fn keep_alive(self: &Arc<Self>, id: u64) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let (nodes, flag) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                for url in nodes.urls() {
                    let r = nodes
                        .cluster
                        .http()
                        .client
                        .post(format!("{url}/v1/leases/{id}/keepalive"))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().as_u16() == 200) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        stop
    }
}

fn fail(nodes: &Nodes, what: &str) -> ! {
    panic!("{what}\n{}", nodes.cluster.logs())
}

/// A holder that pauses past its lease: acquires `name` (a mutex of the workload) with a
/// lease of its own (marked, so its end is known), presents its token, stops keeping the
/// lease alive, waits until a later holder's token was accepted, and comes back: the
/// resource must refuse it, and every node's fence check must call its token stale.
async fn paused_holder(nodes: Arc<Nodes>, run: Arc<jepsen::recorder::LockShared>, name: String, n: u64) {
    let mut rng = StdRng::seed_from_u64(n);
    let http = nodes.cluster.http().client.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each try on one node. An acquire whose answer was lost may have left an owner
    // nobody knows of (queued, or granted) under the lease: that lease is ended, and the
    // next try takes a new one.
    let (lease, keeping, owner, token) = 'lease: loop {
        let lease = nodes.grant("2s").await;
        let keeping = nodes.keep_alive(lease);
        let mut tries = 0;
        while !run.put_marker(&http, &mut rng, lease).await {
            tries += 1;
            assert!(tries < 50, "the sleeper could not put its lease's marker");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            assert!(Instant::now() < deadline, "the sleeper never got {name} within 30 s");
            let Some(url) = nodes.urls().first().cloned() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let body = json!({ "lease": lease, "wait": "3s" });
            let r = nodes.http.post(format!("{url}/v1/locks/{name}")).json(&body).send().await;
            let (status, v) = match r {
                Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            };
            match (status, v["error"]["code"].as_str()) {
                (200, _) => {
                    let owner = v["owner"].as_str().expect("an owner").to_string();
                    break 'lease (lease, keeping, owner, v["fencing_token"].as_u64().expect("a token"));
                }
                (409, Some("lock_timeout")) => {}
                (503, _) => tokio::time::sleep(Duration::from_millis(100)).await,
                (s, _) if (400..500).contains(&s) => {
                    panic!("the sleeper's acquire of {name} through {url}: {s} {v}")
                }
                _ => {
                    // No answer, or an unknown outcome (504): this lease is done.
                    keeping.store(true, Ordering::SeqCst);
                    nodes.call(reqwest::Method::DELETE, &format!("/v1/leases/{lease}"), None).await;
                    continue 'lease;
                }
            }
        }
    };
    let client = format!("{name}/sleeper{n}/{owner}");
    run.record_grant(&client, &name, token, lease);
    assert!(run.access(&name, &client, token), "the resource refused the newest holder's token {token}");
    println!("sleeper {n}: holds {name} with token {token}; stops keeping lease {lease} alive");
    keeping.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.highest(&name).is_none_or(|h| h <= token) {
        if Instant::now() >= deadline {
            fail(&nodes, &format!("sleeper {n}: no later holder of {name} reached the resource within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = run.highest(&name).expect("a token");
    assert!(
        !run.access(&name, &client, token),
        "the resource accepted the sleeper's token {token} after token {later}"
    );
    for url in nodes.urls() {
        let r = http
            .post(format!("{url}/v1/fence/check"))
            .json(&json!({ "name": name, "token": token }))
            .send()
            .await;
        let Ok(r) = r else { continue };
        let revision = r.headers().get("x-palisade-revision").and_then(|v| v.to_str().ok()?.parse().ok());
        let (status, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null));
        if status == 503 {
            continue;
        }
        assert!(
            status == 409 && v["valid"] == false && v["error"]["code"] == "stale_token" && v["current_token"] != token,
            "the fence check on {url} of the sleeper's token {token} (a later holder had {later}): {status} {v}"
        );
        run.record_fence(FenceCheck {
            client: client.clone(),
            name: name.clone(),
            token,
            revision: revision.expect("X-Palisade-Revision on a fence check"),
            valid: false,
            via: "fence check",
        });
    }
    let (_, status, v) =
        nodes.call(reqwest::Method::DELETE, &format!("/v1/locks/{name}?owner={owner}"), None).await;
    assert!(
        status == 404 && v["error"]["code"] == "owner_not_found",
        "the sleeper's late release: {status} {v}"
    );
    println!(
        "sleeper {n}: came back with token {token} after token {later}: refused, and stale on every node"
    );
}

/// Waiters on `name` (held by a blocker all along) that must never be granted: one whose
/// lease nobody keeps alive, one whose lease is revoked while it waits, and (`quiet`: no
/// fault meanwhile) one whose `ttl` lease the server keeps alive past its TTL until the
/// wait runs out. Across a fault, a waiter whose node died is sent again elsewhere, and
/// may then find its lease gone (404 `lease_not_found`); it is never granted.
async fn doomed_waiters(nodes: Arc<Nodes>, name: String, quiet: bool) {
    let gone = |v: &Value| {
        v["error"]["code"] == "lease_expired" || (!quiet && v["error"]["code"] == "lease_not_found")
    };
    // Left alone: 409 lease_expired, within its TTL plus the failover bound.
    let lease = nodes.grant("2s").await;
    let started = Instant::now();
    let body = json!({ "lease": lease, "wait": "20s" });
    let (url, status, v) = nodes.call(reqwest::Method::POST, &format!("/v1/locks/{name}"), Some(body)).await;
    assert!(
        (status == 409 || status == 404) && gone(&v),
        "a waiter on {name} whose lease 2 s nobody keeps alive (through {url}): {status} {v}, after {:?}",
        started.elapsed()
    );
    println!("a waiter left alone on {name}: lease_expired after {:?}", started.elapsed());
    // Revoked while it waits.
    let lease = nodes.grant("10s").await;
    let waiter = {
        let nodes = nodes.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let body = json!({ "lease": lease, "wait": "20s" });
            nodes.call(reqwest::Method::POST, &format!("/v1/locks/{name}"), Some(body)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status, v) = nodes.call(reqwest::Method::DELETE, &format!("/v1/leases/{lease}"), None).await;
    assert!(status == 200 || status == 404, "revoke: {status} {v}");
    let (url, status, v) = waiter.await.expect("the waiter");
    assert!(
        (status == 409 || status == 404) && gone(&v),
        "a waiter on {name} whose lease was revoked (through {url}): {status} {v}"
    );
    if quiet {
        let started = Instant::now();
        let body = json!({ "ttl": "2s", "wait": "3500ms" });
        let (url, status, v) =
            nodes.call(reqwest::Method::POST, &format!("/v1/locks/{name}"), Some(body)).await;
        assert!(
            status == 409 && v["error"]["code"] == "lock_timeout" && started.elapsed() >= Duration::from_secs(3),
            "a waiter on {name} with a ttl lease the server keeps alive, wait 3.5 s (through {url}): {status} {v} after {:?}",
            started.elapsed()
        );
    }
}

/// Stops the workload, checks it, and requires a history worth checking.
async fn finish(nodes: &Nodes, run: LockRun, min_grants: usize) -> jepsen::recorder::LockSummary {
    let started = Instant::now();
    let s = match run.finish().await {
        Ok(s) => s,
        Err(e) => fail(nodes, &format!("the lock workload broke a rule:\n{e}")),
    };
    println!("checked (finish took {:?}): {s}", started.elapsed());
    if s.report.grants < min_grants || s.lease_ends < 3 {
        fail(nodes, &format!("too thin a history (need {min_grants} grants, 3 lease ends seen): {s}"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_holders_through_every_node_across_leader_kills() {
    let nodes = Nodes::start().await;
    let mut w = LockWorkload::new("/lock-process/locks", "lp", 11);
    w.targets = vec![
        (Contended::Lock { name: "lp-mutex".into(), limit: 1 }, 4),
        (Contended::Lock { name: "lp-sem".into(), limit: 2 }, 3),
    ];
    w.pause_chance = 0.1;
    let run = start_locks(Recorder::new(), nodes.endpoints(), w).await;
    let shared = run.shared.clone();
    // The blocker of the doomed waiters holds its lock all along.
    let blocker = nodes.grant("2s").await;
    let keeping = nodes.keep_alive(blocker);
    let (_, status, v) = nodes
        .call(reqwest::Method::POST, "/v1/locks/lp-blocked", Some(json!({ "lease": blocker, "wait": "0s" })))
        .await;
    assert_eq!(status, 200, "the blocker: {v}");
    let blocker_token = v["fencing_token"].as_u64().expect("a token");

    let sleeper = tokio::spawn(paused_holder(nodes.clone(), shared.clone(), "lp-mutex".into(), 1));
    doomed_waiters(nodes.clone(), "lp-blocked".into(), true).await;
    sleeper.await.expect("the first sleeper");
    // A leader kill while a waiter is left alone and a holder sleeps.
    let waiters = tokio::spawn(doomed_waiters(nodes.clone(), "lp-blocked".into(), false));
    let sleeper = tokio::spawn(paused_holder(nodes.clone(), shared.clone(), "lp-mutex".into(), 2));
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes.kill_leader(Duration::from_millis(800)).await;
    waiters.await.expect("the waiters across the kill");
    sleeper.await.expect("the second sleeper");
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes.kill_leader(Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The blocker held all along; nobody else ever did.
    let (_, status, v) = nodes.call(reqwest::Method::GET, "/v1/locks/lp-blocked", None).await;
    let holders = v["holders"].as_array().cloned().unwrap_or_default();
    assert!(
        status == 200
            && holders.len() == 1
            && holders[0]["fencing_token"] == blocker_token
            && v["waiters"].as_array().is_some_and(|w| w.is_empty()),
        "lp-blocked after the doomed waiters: {status} {v}"
    );
    keeping.store(true, Ordering::SeqCst);
    let s = finish(&nodes, run, 20).await;
    assert!(s.report.rejected >= 2 && s.report.fence_stale >= 2, "the sleepers were not checked: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_one_leader_at_a_time_across_leader_kills() {
    let nodes = Nodes::start().await;
    let mut w = LockWorkload::new("/lock-process/elections", "le", 12);
    w.targets = vec![(Contended::Election { name: "le-elect".into() }, 4)];
    // A pause holds the election up for a TTL: few, or the history gets thin.
    w.pause_chance = 0.05;
    w.max_hold = Duration::from_millis(250);
    let run = start_locks(Recorder::new(), nodes.endpoints(), w).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes.kill_leader(Duration::from_millis(800)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes.kill_leader(Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    finish(&nodes, run, 6).await;

    // A last leader, seen by an observer on every node; a candidate whose lease lapses
    // while it waits never leads; the resignation reaches every observer.
    let observers: Vec<_> = nodes.urls().into_iter().map(|url| Observer::start(&url, "le-elect")).collect();
    let lease = nodes.grant("2s").await;
    let keeping = nodes.keep_alive(lease);
    let body = json!({ "value": "last", "lease": lease, "wait": "5s" });
    let (_, status, v) =
        nodes.call(reqwest::Method::POST, "/v1/elections/le-elect/campaign", Some(body)).await;
    assert_eq!(status, 200, "the last campaign: {v}");
    let (owner, token) = (v["owner"].as_str().expect("an owner").to_string(), v["fencing_token"].clone());
    let doomed = nodes.grant("2s").await;
    let body = json!({ "value": "doomed", "lease": doomed, "wait": "20s" });
    let (url, status, v) =
        nodes.call(reqwest::Method::POST, "/v1/elections/le-elect/campaign", Some(body)).await;
    assert!(
        status == 409 && v["error"]["code"] == "lease_expired",
        "a candidate whose lease lapses while it waits (through {url}): {status} {v}"
    );
    let (_, status, v) = nodes.call(reqwest::Method::GET, "/v1/elections/le-elect", None).await;
    assert!(status == 200 && v["value"] == "last" && v["fencing_token"] == token, "the leader: {status} {v}");
    for o in &observers {
        o.wait_for(|m| m.get("leader").is_some_and(|l| l["value"] == "last" && l["fencing_token"] == token))
            .await;
    }
    let (_, status, v) = nodes
        .call(reqwest::Method::DELETE, &format!("/v1/elections/le-elect/leader?owner={owner}"), None)
        .await;
    assert!(status == 200 && v["released"] == true, "the resignation: {status} {v}");
    let resigned = v["revision"].as_u64().expect("a revision");
    keeping.store(true, Ordering::SeqCst);
    for o in &observers {
        o.wait_for(|m| m.get("no_leader").is_some_and(|n| n["revision"].as_u64() >= Some(resigned))).await;
        let seen = o.messages();
        assert!(
            !seen.iter().any(|m| m.get("leader").is_some_and(|l| l["value"] == "doomed")),
            "an observer showed the candidate whose lease lapsed as leader: {seen:?}"
        );
    }
}

/// One observe stream (NDJSON), read into a list.
struct Observer {
    url: String,
    messages: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    fn start(url: &str, name: &str) -> Observer {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (into, target) = (messages.clone(), format!("{url}/v1/elections/{name}/observe"));
        let task = tokio::spawn(async move {
            let http = support::watch_client::stream_client();
            let Ok(mut r) = http.get(target).header("Accept", "application/x-ndjson").send().await else {
                return;
            };
            let mut buf: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    into.lock().unwrap().push(serde_json::from_slice(&line).unwrap_or(Value::Null));
                }
            }
        });
        Observer { url: url.to_string(), messages, task }
    }

    fn messages(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the last message satisfies `f`.
    async fn wait_for(&self, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.messages().last().is_some_and(&f) {
            assert!(
                Instant::now() < deadline,
                "the observer on {} never showed it: {:?}",
                self.url,
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An acquire whose client goes away while its grant commits is withdrawn by the server
/// (nobody is left to hear of the grant). The client, retrying with its
/// `Idempotency-Key` (what the API offers for a lost answer), must not then be told it
/// holds the lock: the server released that holder, and another client may hold it now.
/// The same for a campaign.
///
/// The grant is held back by stopping both followers until the client gave up (300 ms),
/// then let through within the request deadline (1 s). If an attempt misses that window
/// (the lock still held by the orphan, or the grant lost to an election), it is tried
/// again on another name; the test fails if no attempt of five produced the withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquire_is_never_told_it_holds_what_the_server_released() {
    let nodes = Nodes::start().await;
    retried_acquire(&nodes, false).await;
    retried_acquire(&nodes, true).await;
}

async fn retried_acquire(nodes: &Arc<Nodes>, election: bool) {
    let c = &nodes.cluster;
    let lease = nodes.grant("10s").await;
    let keeping = nodes.keep_alive(lease);
    let what = if election { "campaign" } else { "acquire" };
    let impatient =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(300)).build().unwrap();
    for attempt in 0..5 {
        let name = format!("retried-{what}-{attempt}");
        let key = format!("{what}-{attempt}");
        let (path, body, state) = if election {
            let body = json!({ "lease": lease, "wait": "0s", "value": "v" });
            (format!("/v1/elections/{name}/campaign"), body, format!("/v1/elections/{name}"))
        } else {
            (
                format!("/v1/locks/{name}"),
                json!({ "lease": lease, "wait": "0s" }),
                format!("/v1/locks/{name}"),
            )
        };
        // The store's revision (a lock nobody holds shows it too).
        let revision = || async {
            let (_, _, v) = nodes.call(reqwest::Method::GET, &format!("/v1/locks/{name}"), None).await;
            v["revision"].as_u64().expect("a revision")
        };
        let start = revision().await;
        let (leader, _) = c.leader().await;
        let url = c.client_url(leader);
        let followers: Vec<u64> = c.ids().into_iter().filter(|&id| id != leader).collect();
        for &f in &followers {
            c.pause(f);
        }
        let r =
            impatient.post(format!("{url}{path}")).header("Idempotency-Key", &key).json(&body).send().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for &f in &followers {
            c.resume(f);
        }
        assert!(r.is_err(), "the {what} was answered although no quorum could commit it: {r:?}");
        // The grant commits now, finds its request gone and is withdrawn: two revisions
        // (the grant, the release) and nobody holds it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, status, before) = nodes.call(reqwest::Method::GET, &state, None).await;
        let free = if election {
            status == 404 && before["error"]["code"] == "no_leader"
        } else {
            before["holders"].as_array().is_some_and(|h| h.is_empty())
        };
        let now = revision().await;
        if !free || now < start + 2 {
            println!("{what} attempt {attempt}: the grant was not withdrawn ({status} {before}, revision {start} -> {now}); again");
            continue;
        }
        let r = nodes
            .http
            .post(format!("{url}{path}"))
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await
            .expect("the retry is answered");
        let (status, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null));
        println!("{what} attempt {attempt}: withdrawn (revision {start} -> {now}, {before}); the retry: {status} {v}");
        if status == 200 {
            let token = v["fencing_token"].as_u64().expect("a token");
            let check = json!({ "name": name, "token": token });
            let (_, fence, f) = nodes.call(reqwest::Method::POST, "/v1/fence/check", Some(check)).await;
            // Someone else may take it meanwhile: both would believe they hold it.
            let other = nodes.grant("10s").await;
            let mut body = body.clone();
            body["lease"] = json!(other);
            let (_, got, g) = nodes.call(reqwest::Method::POST, &path, Some(body)).await;
            panic!(
                "the retried {what} was told it holds {name} with token {token} (replayed), but the server had \
                 released that holder: fence check {fence} {f}; before the retry: {before}; another client's \
                 {what} then: {got} {g}"
            );
        }
        assert!(status == 409 && v["error"]["code"] == "lock_timeout", "the retried {what}: {status} {v}");
        keeping.store(true, Ordering::SeqCst);
        return;
    }
    fail(
        nodes,
        &format!(
            "no {what} of five attempts had its grant withdrawn (the timing never fit): nothing was checked"
        ),
    );
}
