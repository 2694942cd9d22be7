//! Watches on real 3-node clusters of `palisade serve` processes, read by the test watch
//! client (`support::watch_client`) and checked with `jepsen::watch::check_watches`: order,
//! no gap, no duplicate, every event of a revision in one message, every acknowledged
//! change delivered, the same history on every node.
//!
//! - a leader `kill -9`ed and restarted under a writer of puts, deletes and transactions,
//!   with watches on every node (recursive and single-key, from now and from the past)
//!   that resume on another node;
//! - a client that drops its connection and resumes on another node (`Last-Event-ID` and
//!   `start_revision`);
//! - a follower serving a watch `kill -9`ed mid-stream, the watch resumed on it after its
//!   restart;
//! - a follower that catches up by snapshot while history is compacted: its watches from
//!   the floor match the leader's, and below the floor they end `compacted`;
//! - watchers that never read, beside a writer: every write succeeds, the reading watchers
//!   get everything, the node stays healthy;
//! - transactions bigger than a page of the watch cursor arrive as one message each;
//! - watches open on a paused follower that then catches up by installing a snapshot;
//! - a follower cut off from the rest of the cluster stops sending progress on its
//!   (linearizable) watches, and starts again once it is back; a serializable watch there
//!   goes on reporting its own state.
//!
//! The ground truth of each test is what its writer was acknowledged plus a final
//! linearizable dump (`CommittedLog`). The first test also rebuilds the whole log from
//! listings at every revision (`?revision=N`, the MVCC read path, not the watch one) and
//! checks the streams against that complete log too. Correctness only: no timing is
//! asserted.

use crate::jepsen;
use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use jepsen::recorder::{linearizable_dump, Endpoints};
use jepsen::watch::{check_watches, Change, CommittedChange, CommittedLog, WatchMessage};
use support::process::{eventually, Cluster, ClusterOptions, Consistency};
use support::watch_client::{Recording, ResumeBy, WatchClient, WatchClock, WatchSpec};

/// How long a stream may take to catch up once the writers stopped.
const CATCH_UP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A writer of puts, deletes and transactions, and what it was acknowledged.

/// One write.
#[derive(Clone, Debug)]
enum Write {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// One transaction putting every key.
    Puts(Vec<(String, String)>),
    /// One transaction: if `delete` exists, put `put` and delete `delete`.
    PutDelete {
        put: (String, String),
        delete: String,
    },
}

impl Write {
    /// The values it puts.
    fn values(&self) -> Vec<&str> {
        match self {
            Write::Put { value, .. } => vec![value.as_str()],
            Write::Delete { .. } => vec![],
            Write::Puts(kvs) => kvs.iter().map(|(_, v)| v.as_str()).collect(),
            Write::PutDelete { put, .. } => vec![put.1.as_str()],
        }
    }

    /// The changes it makes if it commits and its condition holds.
    fn changes(&self) -> Vec<(String, Change)> {
        match self {
            Write::Put { key, value } => vec![(key.clone(), Change::Put(value.clone()))],
            Write::Delete { key } => vec![(key.clone(), Change::Delete)],
            Write::Puts(kvs) => kvs.iter().map(|(k, v)| (k.clone(), Change::Put(v.clone()))).collect(),
            Write::PutDelete { put, delete } => {
                vec![(put.0.clone(), Change::Put(put.1.clone())), (delete.clone(), Change::Delete)]
            }
        }
    }
}

/// What a write ended in.
enum Outcome {
    /// Applied at this revision with these changes (none: a delete of an absent key, a
    /// transaction whose condition failed).
    Ok(u64, Vec<(String, Change)>),
    /// Certainly not applied.
    Fail,
    /// Maybe applied.
    Unknown,
}

/// The acknowledged changes, by revision, and the writes whose outcome is unknown.
#[derive(Default)]
struct Ledger {
    acked: Vec<(u64, Vec<(String, Change)>)>,
    unknown: Vec<Write>,
    ops: usize,
    failed: usize,
}

impl Ledger {
    /// The ground truth from the acknowledged changes plus a final dump `(key, value,
    /// mod_revision)` at `head`: a value in the dump that no acknowledged write explains
    /// comes from a write whose outcome was unknown, and brings all of that write's changes
    /// at its revision. Complete when no write is unknown. Also the acknowledged `(key,
    /// revision)` pairs.
    fn log(&self, dump: &[(String, String, u64)], head: u64) -> (CommittedLog, Vec<(String, u64)>) {
        let mut log = CommittedLog::new(head);
        log.complete = self.unknown.is_empty();
        let mut acked_values: HashMap<&str, u64> = HashMap::new();
        let mut acknowledged = Vec::new();
        for (rev, changes) in &self.acked {
            for (key, change) in changes {
                if let Change::Put(v) = change {
                    acked_values.insert(v, *rev);
                }
                log.changes.push(CommittedChange {
                    revision: *rev,
                    key: key.clone(),
                    change: change.clone(),
                });
                acknowledged.push((key.clone(), *rev));
            }
        }
        let mut unknown_values: HashMap<&str, &Write> = HashMap::new();
        for w in &self.unknown {
            for v in w.values() {
                unknown_values.insert(v, w);
            }
        }
        for (key, value, rev) in dump {
            if let Some(r) = acked_values.get(value.as_str()) {
                assert_eq!(
                    r, rev,
                    "{key} = {value:?} was acknowledged at revision {r}, the dump has it at {rev}"
                );
                continue;
            }
            let w = unknown_values.get(value.as_str()).unwrap_or_else(|| {
                panic!("{key} = {value:?} at {rev} in the final dump: no write put that value")
            });
            for (k, change) in w.changes() {
                log.changes.push(CommittedChange { revision: *rev, key: k, change });
            }
        }
        log.changes.sort_by_key(|c| c.revision);
        (log, acknowledged)
    }
}

/// The writer's mix.
#[derive(Clone, Debug)]
struct WriterSpec {
    /// Keys it writes (distinct; a transaction takes several).
    keys: Vec<String>,
    /// Percentages of puts, deletes, multi-put transactions (the rest: put-and-delete
    /// transactions).
    puts: u32,
    deletes: u32,
    multi: u32,
    /// Keys per multi-put transaction.
    width: usize,
    /// Bytes of padding in every value.
    pad: usize,
    /// Stop after this many writes.
    max_ops: usize,
    seed: u64,
}

impl WriterSpec {
    fn mixed(prefix: &str, seed: u64) -> WriterSpec {
        let keys = ["a", "b", "c/d", "c/e", "k0", "k1"].iter().map(|k| format!("{prefix}/{k}")).collect();
        WriterSpec { keys, puts: 45, deletes: 20, multi: 20, width: 2, pad: 0, max_ops: 100_000, seed }
    }

    fn puts(prefix: &str, n: usize, seed: u64) -> WriterSpec {
        let keys = (0..n).map(|i| format!("{prefix}/k{i}")).collect();
        WriterSpec { keys, puts: 100, deletes: 0, multi: 0, width: 1, pad: 0, max_ops: 100_000, seed }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().expect("a reqwest client")
}

/// Sends one write and classifies the reply.
async fn perform(http: &reqwest::Client, url: &str, w: &Write) -> Outcome {
    let req = match w {
        Write::Put { key, value } => http.put(format!("{url}/v1/kv{key}")).json(&json!({ "value": value })),
        Write::Delete { key } => http.delete(format!("{url}/v1/kv{key}")),
        Write::Puts(kvs) => {
            let ops: Vec<Value> =
                kvs.iter().map(|(k, v)| json!({ "put": { "key": k, "value": v } })).collect();
            http.post(format!("{url}/v1/txn")).json(&json!({ "success": ops }))
        }
        Write::PutDelete { put, delete } => http.post(format!("{url}/v1/txn")).json(&json!({
            "compare": [{ "key": delete, "target": "version", "op": ">", "value": 0 }],
            "success": [{ "put": { "key": put.0, "value": put.1 } }, { "delete": { "key": delete } }],
        })),
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Fail,
        Err(_) => return Outcome::Unknown,
    };
    let status = resp.status().as_u16();
    let Ok(body) = resp.json::<Value>().await else { return Outcome::Unknown };
    match status {
        200 => {}
        503 => return Outcome::Fail,
        s if (400..500).contains(&s) => return Outcome::Fail,
        _ => return Outcome::Unknown,
    }
    let rev =
        body["revision"].as_u64().unwrap_or_else(|| panic!("a write answered without a revision: {body}"));
    let changed = match w {
        Write::Put { .. } => true,
        Write::Delete { .. } => body["deleted"].as_u64() == Some(1),
        Write::Puts(_) | Write::PutDelete { .. } => body["succeeded"] == json!(true),
    };
    Outcome::Ok(rev, if changed { w.changes() } else { Vec::new() })
}

/// Writes through the nodes `endpoints` names (one at random per write) until `stop` or
/// `max_ops`, recording into `ledger`.
async fn write(endpoints: Endpoints, spec: WriterSpec, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let http = http_client();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let pad = "x".repeat(spec.pad);
    let mut n = 0;
    while n < spec.max_ops && !stop.load(Ordering::Relaxed) {
        let urls = endpoints();
        if urls.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let url = urls[rng.gen_range(0..urls.len())].clone();
        let value = |i: usize| format!("v{}-{n}.{i}{pad}", spec.seed);
        let dice = rng.gen_range(0..100);
        let w = if dice < spec.puts {
            Write::Put { key: spec.keys[rng.gen_range(0..spec.keys.len())].clone(), value: value(0) }
        } else if dice < spec.puts + spec.deletes {
            Write::Delete { key: spec.keys[rng.gen_range(0..spec.keys.len())].clone() }
        } else if dice < spec.puts + spec.deletes + spec.multi {
            let start = rng.gen_range(0..spec.keys.len());
            let width = spec.width.min(spec.keys.len());
            Write::Puts(
                (0..width).map(|i| (spec.keys[(start + i) % spec.keys.len()].clone(), value(i))).collect(),
            )
        } else {
            let a = rng.gen_range(0..spec.keys.len());
            let b = (a + rng.gen_range(1..spec.keys.len())) % spec.keys.len();
            let (a, b) = (spec.keys[a].clone(), spec.keys[b].clone());
            Write::PutDelete { put: (a, value(0)), delete: b }
        };
        let outcome = perform(&http, &url, &w).await;
        let mut l = ledger.lock().unwrap();
        l.ops += 1;
        match outcome {
            Outcome::Ok(rev, changes) if !changes.is_empty() => l.acked.push((rev, changes)),
            Outcome::Ok(..) => {}
            Outcome::Fail => l.failed += 1,
            Outcome::Unknown => l.unknown.push(w),
        }
        drop(l);
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The running nodes clients may use, by id.
#[derive(Clone)]
struct Up(Arc<Mutex<BTreeMap<u64, String>>>);

impl Up {
    fn all(c: &Cluster) -> Up {
        Up(Arc::new(Mutex::new(c.ids().into_iter().map(|id| (id, c.client_url(id))).collect())))
    }

    fn endpoints(&self) -> Endpoints {
        let up = self.0.clone();
        Arc::new(move || up.lock().unwrap().values().cloned().collect())
    }

    fn remove(&self, id: u64) {
        self.0.lock().unwrap().remove(&id);
    }

    fn insert(&self, c: &Cluster, id: u64) {
        self.0.lock().unwrap().insert(id, c.client_url(id));
    }
}

/// Waits until every watch is established (a watch from now got its first progress).
async fn established(c: &Cluster, watches: &[WatchClient]) {
    for w in watches {
        if let Err(e) =
            w.wait_until(Duration::from_secs(10), "the watch is established", |w| w.established()).await
        {
            panic!("{e}\n{}", c.logs());
        }
    }
}

/// Waits until `w` has received `n` change messages.
async fn wait_changes(c: &Cluster, w: &WatchClient, n: usize) {
    let what = format!("{} to receive {n} changes", w.id());
    if let Err(e) = w.wait_until(Duration::from_secs(20), &what, |w| w.changes() >= n).await {
        panic!("{e}\n{}", c.logs());
    }
}

/// What the final check found.
struct Checked {
    recs: Vec<Recording>,
    log: CommittedLog,
    acknowledged: Vec<(String, u64)>,
    head: u64,
    report: jepsen::watch::Report,
}

/// Once the writers have stopped: waits until every watch covers the revision of a
/// linearizable read, stops them, takes the final dump, and checks every stream against
/// the ledger plus the dump. Panics with the violation and the stream's connections.
async fn finish(
    c: &Cluster,
    endpoints: &Endpoints,
    prefix: &str,
    watches: &[WatchClient],
    ledger: &Ledger,
) -> Checked {
    let (target, _) =
        linearizable_dump(endpoints, prefix, CATCH_UP).await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for w in watches {
        if let Err(e) = w.wait_covered(target, CATCH_UP).await {
            panic!("{e}\n{}", c.logs());
        }
    }
    let recs: Vec<Recording> = watches.iter().map(|w| w.stop()).collect();
    let (head, dump) =
        linearizable_dump(endpoints, prefix, CATCH_UP).await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for r in &recs {
        assert!(r.protocol_errors.is_empty(), "a watch broke the protocol:\n{}", r.describe());
    }
    let (log, acknowledged) = ledger.log(&dump, head);
    let report = check(&recs, &log, &acknowledged);
    Checked { recs, log, acknowledged, head, report }
}

/// `check_watches`, panicking with the violation and the connections of its stream.
fn check(recs: &[Recording], log: &CommittedLog, acknowledged: &[(String, u64)]) -> jepsen::watch::Report {
    let streams: Vec<_> = recs.iter().map(|r| r.stream.clone()).collect();
    match check_watches(&streams, log, acknowledged) {
        Ok(report) => report,
        Err(v) => {
            let conns =
                recs.iter().find(|r| r.stream.id == v.stream).map(|r| r.describe()).unwrap_or_default();
            panic!("the watches broke a rule: {v}\nconnections of that watch:\n{conns}")
        }
    }
}

fn ledger_summary(l: &Ledger) -> String {
    format!(
        "{} writes: {} changed keys, {} failed, {} unknown",
        l.ops,
        l.acked.len(),
        l.failed,
        l.unknown.len()
    )
}

/// The whole log of `prefix` from revision 1 to `head`, rebuilt from listings at every
/// revision (`?recursive&revision=N` on node `url`, the MVCC read path): a put is a key
/// whose `mod_revision` is N; a delete, a key present at N-1 and absent at N.
async fn log_from_listings(url: &str, prefix: &str, head: u64) -> CommittedLog {
    let http = http_client();
    // A linearizable read first: the node has applied everything up to `head`.
    let r = http.get(format!("{url}/v1/kv{prefix}?recursive")).send().await.expect("a linearizable listing");
    assert_eq!(r.status(), 200);
    let mut log = CommittedLog::new(head);
    let mut prev: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for rev in 1..=head {
        let u = format!("{url}/v1/kv{prefix}?recursive&revision={rev}&consistency=serializable");
        let r = http.get(&u).send().await.unwrap_or_else(|e| panic!("GET {u}: {e}"));
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_else(|e| panic!("GET {u}: {e}"));
        assert_eq!(status, 200, "GET {u}: {body}");
        assert_eq!(body["more"], json!(false), "a prefix of a few keys fits one page: {body}");
        let mut now: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for kv in body["kvs"].as_array().expect("kvs") {
            let key = kv["key"].as_str().expect("a key").to_string();
            let value = kv["value"].as_str().expect("a value").to_string();
            let mod_rev = kv["mod_revision"].as_u64().expect("a mod_revision");
            assert!(mod_rev <= rev, "{key} at revision {rev} has mod_revision {mod_rev}");
            if mod_rev == rev {
                log.changes.push(CommittedChange {
                    revision: rev,
                    key: key.clone(),
                    change: Change::Put(value.clone()),
                });
            } else {
                assert_eq!(
                    prev.get(&key),
                    Some(&(value.clone(), mod_rev)),
                    "{key} changed at {rev} without a new mod_revision"
                );
            }
            now.insert(key, (value, mod_rev));
        }
        for key in prev.keys() {
            if !now.contains_key(key) {
                log.changes.push(CommittedChange { revision: rev, key: key.clone(), change: Change::Delete });
            }
        }
        prev = now;
    }
    log
}

/// The bytes queued in the kernel to be sent on the TCP connection `from` -> `to` (from
/// `/proc/net/tcp`: `tx_queue`); 0 if it is not found.
fn send_queue(from: std::net::SocketAddr, to: std::net::SocketAddr) -> u64 {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => {
            format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port())
        }
        std::net::SocketAddr::V6(_) => unreachable!("the test cluster is on 127.0.0.1"),
    };
    let (from, to) = (hex(from), hex(to));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1] == from && f[2] == to {
            let tx = f[4].split(':').next().unwrap_or("0");
            return u64::from_str_radix(tx, 16).unwrap_or(0);
        }
    }
    0
}

/// The change messages of a recording: `(revision, events as text)`.
fn changes_of(r: &Recording) -> Vec<(u64, String)> {
    r.stream
        .messages
        .iter()
        .filter_map(|m| match m {
            WatchMessage::Change { revision, .. } => Some((*revision, m.to_string())),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests

/// Watches on every node while the leader is `kill -9`ed and restarted under a writer of
/// puts, deletes and transactions sent to every node: every stream, resumed on another node
/// when its node died, delivers exactly the committed changes, in order, each revision
/// once and whole, and all nodes agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_every_node_survive_a_leader_kill() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let prefix = "/wk";
    let up = Up::all(&c);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // Some history first, for the watches that start in the past.
    let mut pre = WriterSpec::mixed(prefix, 1);
    pre.max_ops = 40;
    write(up.endpoints(), pre, stop.clone(), ledger.clone()).await;
    let past = {
        let l = ledger.lock().unwrap();
        l.acked[l.acked.len() / 3].0
    };

    let clock = WatchClock::new();
    let mut watches = Vec::new();
    for id in c.ids() {
        let url = c.client_url(id);
        let specs = [
            (format!("tree@{id}"), WatchSpec::new(prefix).recursive()),
            (
                format!("tree-past@{id}"),
                WatchSpec::new(prefix)
                    .recursive()
                    .starting_at(past)
                    .ndjson()
                    .resume_by(ResumeBy::StartRevision),
            ),
            (
                format!("a@{id}"),
                WatchSpec::new(&format!("{prefix}/a")).starting_at(if id == 1 { 1 } else { past }),
            ),
            (
                format!("c/d@{id}"),
                WatchSpec::new(&format!("{prefix}/c/d")).ndjson().resume_by(ResumeBy::StartRevision),
            ),
            (format!("c@{id}"), WatchSpec::new(&format!("{prefix}/c")).recursive().prev_kv()),
        ];
        for (name, spec) in specs {
            let w = WatchClient::new(&name, spec, clock.clone());
            w.follow(up.endpoints(), Some(url.clone()));
            watches.push(w);
        }
    }
    established(&c, &watches).await;

    let writer =
        tokio::spawn(write(up.endpoints(), WriterSpec::mixed(prefix, 2), stop.clone(), ledger.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.remove(leader);
    c.kill_9(leader);
    let on_leader = watches.iter().filter(|w| w.id().ends_with(&format!("@{leader}"))).count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.restart(leader).await;
    up.insert(&c, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer");
    c.leader().await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let checked = finish(&c, &up.endpoints(), prefix, &watches, &ledger).await;
    println!("watches_on_every_node_survive_a_leader_kill: {}", ledger_summary(&ledger));
    println!("against acknowledged writes + final dump (head {}): {}", checked.head, checked.report);
    // The streams on the killed leader had to resume elsewhere.
    let resumed = checked
        .recs
        .iter()
        .filter(|r| r.stream.id.ends_with(&format!("@{leader}")))
        .filter(|r| r.connections.len() >= 2 && r.connections.last().is_some_and(|c| c.count > 0))
        .count();
    assert_eq!(resumed, on_leader, "every watch on the killed leader resumes and receives again");
    assert!(
        ledger.acked.len() >= 50,
        "too few acknowledged writes to check anything: {}",
        ledger_summary(&ledger)
    );

    // The complete log, from the MVCC read path, must hold every acknowledged change; the
    // streams are then checked against every change of every revision.
    let full = log_from_listings(&c.client_url(c.leader().await.0), prefix, checked.head).await;
    for ch in &checked.log.changes {
        assert!(
            full.changes.contains(ch),
            "{ch} is acknowledged (or in the final dump) but the listings at every revision lack it"
        );
    }
    let report = check(&checked.recs, &full, &checked.acknowledged);
    println!("against the complete log from listings ({} changes): {report}", full.changes.len());
}

/// A client drops its connection mid-stream and resumes on another node, once by
/// `Last-Event-ID` (SSE) and once by `start_revision` (NDJSON), while writes go on: nothing
/// is repeated, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_on_another_node() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.leader().await;
    let prefix = "/wr";
    let up = Up::all(&c);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clock = WatchClock::new();
    let sse = WatchClient::new("sse@1", WatchSpec::new(prefix).recursive(), clock.clone());
    let nd = WatchClient::new("ndjson@2", WatchSpec::new(prefix).recursive().ndjson(), clock.clone());
    let reference = WatchClient::new("reference@3", WatchSpec::new(prefix).recursive(), clock.clone());
    sse.connect(&c.client_url(1));
    nd.connect(&c.client_url(2));
    reference.connect(&c.client_url(3));
    let watches = [sse, nd, reference];
    established(&c, &watches).await;
    let [sse, nd, reference] = &watches;

    let mut spec = WriterSpec::mixed(prefix, 3);
    spec.max_ops = 300;
    let writer = tokio::spawn(write(up.endpoints(), spec, stop.clone(), ledger.clone()));
    wait_changes(&c, sse, 20).await;
    sse.disconnect();
    // Writes go on while it is away: the resume replays them from history.
    wait_changes(&c, reference, reference.changes() + 30).await;
    sse.resume(&c.client_url(2), ResumeBy::LastEventId);
    wait_changes(&c, nd, 60).await;
    nd.disconnect();
    wait_changes(&c, reference, reference.changes() + 30).await;
    nd.resume(&c.client_url(3), ResumeBy::StartRevision);
    writer.await.expect("the writer");

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let checked = finish(&c, &up.endpoints(), prefix, &watches, &ledger).await;
    println!("a_dropped_watch_resumes_on_another_node: {}; {}", ledger_summary(&ledger), checked.report);
    assert!(
        checked.log.complete,
        "no fault, so no write has an unknown outcome: {}",
        ledger_summary(&ledger)
    );
    for r in &checked.recs[..2] {
        assert_eq!(r.connections.len(), 2, "{}", r.describe());
        assert!(r.connections.iter().all(|c| c.count > 0), "both connections delivered:\n{}", r.describe());
        // The two connections together are the reference stream's changes.
        assert_eq!(changes_of(r), changes_of(&checked.recs[2]), "{}", r.describe());
    }
}

/// A follower serving watches is `kill -9`ed mid-stream; the clients see the connection
/// break, and resume on the same follower once it has restarted, from the last revision
/// they covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_its_restarted_follower() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let prefix = "/wf";
    let up = Up::all(&c);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clock = WatchClock::new();
    let url = c.client_url(follower);
    let sse = WatchClient::new(&format!("sse@{follower}"), WatchSpec::new(prefix).recursive(), clock.clone());
    let nd = WatchClient::new(
        &format!("k0@{follower}"),
        WatchSpec::new(&format!("{prefix}/k0")).ndjson().starting_at(1),
        clock.clone(),
    );
    let reference =
        WatchClient::new(&format!("reference@{leader}"), WatchSpec::new(prefix).recursive(), clock.clone());
    sse.connect(&url);
    nd.connect(&url);
    reference.connect(&c.client_url(leader));
    let watches = [sse, nd, reference];
    established(&c, &watches).await;
    let [sse, nd, _] = &watches;

    let writer =
        tokio::spawn(write(up.endpoints(), WriterSpec::puts(prefix, 4, 4), stop.clone(), ledger.clone()));
    wait_changes(&c, sse, 20).await;
    up.remove(follower);
    c.kill_9(follower);
    for w in [sse, nd] {
        if let Err(e) = w.wait_until(Duration::from_secs(10), "the connection breaks", |w| w.is_idle()).await
        {
            panic!("{e}\n{}", c.logs());
        }
    }
    let covered_at_kill = sse.covered();
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.restart(follower).await;
    up.insert(&c, follower);
    sse.resume(&url, ResumeBy::LastEventId);
    nd.resume(&url, ResumeBy::StartRevision);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer");

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let checked = finish(&c, &up.endpoints(), prefix, &watches, &ledger).await;
    println!("a_watch_resumes_on_its_restarted_follower: {}; {}", ledger_summary(&ledger), checked.report);
    let r = &checked.recs[0];
    assert_eq!(r.connections.len(), 2, "{}", r.describe());
    let broke = r.connections[0].end.as_deref().unwrap_or("");
    assert!(broke.starts_with("broken"), "the kill broke the first connection: {}", r.describe());
    assert_eq!(r.connections[1].start, Some(covered_at_kill + 1), "{}", r.describe());
    assert!(r.connections[1].count > 0, "the resumed connection delivered:\n{}", r.describe());
    assert_eq!(changes_of(r), changes_of(&checked.recs[2]), "{}", r.describe());
}

/// A follower that was down while the leader took snapshots and compacted history catches
/// up by snapshot; its watches from the compaction floor deliver what the leader's do, a
/// watch from below the floor gets `compacted` (and its stream ends) on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_a_follower_restored_from_a_snapshot() {
    let extra = ["--snapshot-every", "100", "--auto-compact-max-revisions", "100"];
    let opts =
        ClusterOptions { extra_args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let c = Cluster::start(opts).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let prefix = "/ws";
    c.kill_9(follower);
    let lead = Up(Arc::new(Mutex::new(BTreeMap::from([(leader, c.client_url(leader))]))));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut spec = WriterSpec::mixed(prefix, 5);
    spec.max_ops = 500;
    write(lead.endpoints(), spec, stop.clone(), ledger.clone()).await;
    let snapshot = |id: u64| c.data_dir(id).join("snapshot").join("snapshot.bin");
    assert!(snapshot(leader).exists(), "the leader took no snapshot");
    assert!(!snapshot(follower).exists(), "the follower was down before the first snapshot");

    // The floor settles once history is no longer a tenth over the bound.
    let cluster = |id: u64| {
        let c = &c;
        async move {
            let v = c.cluster_view(id).await?;
            let rev = v["revision"].as_u64().ok_or("no revision")?;
            let floor = v["compact_revision"].as_u64().ok_or("no compact_revision")?;
            Ok::<_, String>((rev, floor))
        }
    };
    let (rev, floor) =
        eventually(&c, Duration::from_secs(20), "history is compacted to its bound", || async {
            let (rev, floor) = cluster(leader).await?;
            if floor > 1 && rev - floor <= 110 {
                Ok((rev, floor))
            } else {
                Err(format!("revision {rev}, floor {floor}"))
            }
        })
        .await;
    c.restart(follower).await;
    eventually(&c, Duration::from_secs(20), "the follower catches up", || async {
        let got = cluster(follower).await?;
        if got == (rev, floor) {
            Ok(())
        } else {
            Err(format!("the follower is at (revision, floor) {got:?}, the leader at {:?}", (rev, floor)))
        }
    })
    .await;
    assert!(snapshot(follower).exists(), "the follower caught up without a snapshot");

    let clock = WatchClock::new();
    let (lu, fu) = (c.client_url(leader), c.client_url(follower));
    let watch = |name: &str, spec: WatchSpec, url: &str| {
        let w = WatchClient::new(name, spec, clock.clone());
        w.connect(url);
        w
    };
    let watches = [
        watch("floor@follower", WatchSpec::new(prefix).recursive().starting_at(floor), &fu),
        watch("floor@leader", WatchSpec::new(prefix).recursive().starting_at(floor).ndjson(), &lu),
        watch("above@follower", WatchSpec::new(prefix).recursive().starting_at(floor + 37).ndjson(), &fu),
        watch("key@follower", WatchSpec::new(&format!("{prefix}/a")).starting_at(floor), &fu),
        watch("now@follower", WatchSpec::new(prefix).recursive(), &fu),
    ];
    let below = [
        watch("below@follower", WatchSpec::new(prefix).recursive().starting_at(floor - 1), &fu),
        watch("below@leader", WatchSpec::new(prefix).recursive().starting_at(floor - 1).ndjson(), &lu),
        watch("one@follower", WatchSpec::new(prefix).recursive().starting_at(1), &fu),
    ];
    established(&c, &watches).await;
    // A few more writes, live on the restored follower (they may compact again, but only
    // below what every stream has covered by then).
    for w in &watches {
        if let Err(e) = w.wait_covered(rev, CATCH_UP).await {
            panic!("{e}\n{}", c.logs());
        }
    }
    let mut more = WriterSpec::puts(prefix, 3, 6);
    more.max_ops = 8;
    write(lead.endpoints(), more, stop.clone(), ledger.clone()).await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let all = Up::all(&c);
    let checked = finish(&c, &all.endpoints(), prefix, &watches, &ledger).await;
    println!("watches_on_a_follower_restored_from_a_snapshot: floor {floor}, {}", ledger_summary(&ledger));
    let (f, l) = (&checked.recs[0], &checked.recs[1]);
    assert!(f.change_revisions().len() > 50, "{}", f.describe());
    assert_eq!(changes_of(f), changes_of(l), "the follower's stream differs from the leader's");

    for w in &below {
        if let Err(e) = w.wait_until(Duration::from_secs(10), "the stream ends", |w| w.is_idle()).await {
            panic!("{e}\n{}", c.logs());
        }
    }
    let below: Vec<Recording> = below.iter().map(|w| w.stop()).collect();
    for r in &below {
        assert_eq!(
            r.stream.messages,
            vec![WatchMessage::Compacted { compact_revision: floor }],
            "a watch from below the floor gets compacted, and nothing else:\n{}",
            r.describe()
        );
        assert_eq!(r.connections[0].end.as_deref(), Some("compacted"), "the stream ends: {}", r.describe());
        assert!(r.protocol_errors.is_empty(), "{}", r.describe());
    }
    let mut recs = checked.recs;
    recs.extend(below);
    let report = check(&recs, &checked.log, &checked.acknowledged);
    println!("{report}");
}

/// Watchers that never read their stream (a socket with a tiny receive buffer, on the
/// leader and on a follower) beside a writer of big transactions: every write succeeds, the
/// watchers that read get every change, and the nodes stay healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_holds_up_nobody() {
    let c = Cluster::start(big_entry_options()).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let prefix = "/wstall";
    let mut stalled = Vec::new();
    for id in [leader, follower] {
        let addr: std::net::SocketAddr =
            c.client_url(id).trim_start_matches("http://").parse().expect("an address");
        let sock = tokio::net::TcpSocket::new_v4().expect("a socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut s = sock.connect(addr).await.expect("connect");
        let req = format!(
            "GET /v1/watch{prefix}?recursive&prev_kv&start_revision=1 HTTP/1.1\r\nHost: {addr}\r\nAccept: application/x-ndjson\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("send the request");
        stalled.push(s);
    }
    let clock = WatchClock::new();
    let mut watches = Vec::new();
    for id in c.ids() {
        let spec = if id == leader {
            WatchSpec::new(prefix).recursive().prev_kv()
        } else {
            WatchSpec::new(prefix).recursive().ndjson()
        };
        let w = WatchClient::new(&format!("reader@{id}"), spec, clock.clone());
        w.connect(&c.client_url(id));
        watches.push(w);
    }
    established(&c, &watches).await;

    let up = Up::all(&c);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut spec = WriterSpec::puts(prefix, 8, 7);
    (spec.puts, spec.multi, spec.width, spec.pad, spec.max_ops) = (0, 100, 8, 512, 300);
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let mut spec = spec.clone();
            spec.seed += i;
            tokio::spawn(write(up.endpoints(), spec, Arc::new(AtomicBool::new(false)), ledger.clone()))
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(
        ledger.acked.len(),
        600,
        "every write succeeds beside the stalled watchers: {}",
        ledger_summary(&ledger)
    );
    let checked = finish(&c, &up.endpoints(), prefix, &watches, &ledger).await;
    assert!(checked.log.complete);
    let bytes: usize = ledger.acked.iter().map(|(_, ch)| ch.len() * spec.pad).sum();
    println!(
        "a_stalled_watcher_holds_up_nobody: {} ({} MiB of values)",
        ledger_summary(&ledger),
        bytes >> 20
    );

    // The nodes still serve: health, a write and a linearizable read, a new watch.
    for id in c.ids() {
        let url = c.client_url(id);
        let r = c.http().get_path(&url, "/healthz").await.expect("healthz");
        assert_eq!(r.status, 200, "node {id}: {}", r.text);
        let r = c.http().put(&url, "/wstall-after/k", &format!("n{id}")).await.expect("a put");
        assert_eq!(r.status, 200, "node {id}: {}", r.text);
        let r = c.http().get(&url, "/wstall-after/k", Consistency::Linearizable).await.expect("a read");
        assert_eq!(r.value(), Some(format!("n{id}").as_str()), "node {id}: {}", r.text);
        let w = WatchClient::new("after", WatchSpec::new(prefix).recursive(), clock.clone());
        w.connect(&url);
        established(&c, std::slice::from_ref(&w)).await;
    }
    // They really were stalled: their nodes hold bytes for them that they never read.
    for s in &stalled {
        let (ours, theirs) = (s.local_addr().expect("an address"), s.peer_addr().expect("an address"));
        let queued = send_queue(theirs, ours);
        assert!(queued > 0, "the node at {theirs} has nothing queued for the stalled watcher at {ours}");
        println!("the node at {theirs} holds {queued} bytes it could not send to the stalled watcher");
    }
    drop(stalled);
}

/// Raft timings slower than the default test ones, for tests that write big entries: one
/// entry of a few hundred KiB must replicate within one heartbeat (an AppendEntries carries
/// at least one entry, whatever its size; see
/// `cluster_process::a_follower_behind_by_big_entries_catches_up`), on a loaded machine and
/// in a debug build.
fn big_entry_options() -> ClusterOptions {
    ClusterOptions {
        heartbeat_ms: 250,
        election_timeout_ms: 1000,
        request_timeout_ms: 5000,
        ..Default::default()
    }
}

/// Transactions whose events outweigh a page of the watch cursor (256 KiB) are sent in
/// parts of one message: every watcher, on every node, with and without `prev_kv`, gets
/// each of them as one whole message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_bigger_than_a_page_arrives_whole() {
    let c = Cluster::start(big_entry_options()).await;
    c.leader().await;
    let prefix = "/wbig";
    let up = Up::all(&c);
    let clock = WatchClock::new();
    let mut watches = Vec::new();
    for id in c.ids() {
        let specs = [
            (format!("tree@{id}"), WatchSpec::new(prefix).recursive()),
            (format!("prev@{id}"), WatchSpec::new(prefix).recursive().prev_kv().ndjson()),
            (format!("one@{id}"), WatchSpec::new(&format!("{prefix}/k7"))),
        ];
        for (name, spec) in specs {
            let w = WatchClient::new(&name, spec, clock.clone());
            w.connect(&c.client_url(id));
            watches.push(w);
        }
    }
    established(&c, &watches).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut big = WriterSpec::puts(prefix, 100, 8);
    (big.puts, big.multi, big.width, big.pad, big.max_ops) = (0, 100, 100, 4 * 1024, 3);
    let mut small = WriterSpec::mixed(prefix, 9);
    small.max_ops = 10;
    for spec in [small.clone(), big.clone(), small.clone(), big, small] {
        write(up.endpoints(), spec, Arc::new(AtomicBool::new(false)), ledger.clone()).await;
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.unknown.is_empty() && ledger.failed == 0, "{}", ledger_summary(&ledger));
    let checked = finish(&c, &up.endpoints(), prefix, &watches, &ledger).await;
    assert!(checked.log.complete);
    println!("a_revision_bigger_than_a_page_arrives_whole: {}; {}", ledger_summary(&ledger), checked.report);
    let big_revs: Vec<u64> = ledger.acked.iter().filter(|(_, ch)| ch.len() == 100).map(|(r, _)| *r).collect();
    assert_eq!(big_revs.len(), 6, "{}", ledger_summary(&ledger));
    for r in checked.recs.iter().filter(|r| r.stream.recursive) {
        for rev in &big_revs {
            let n = r
                .stream
                .messages
                .iter()
                .filter_map(|m| match m {
                    WatchMessage::Change { revision, events } if revision == rev => Some(events.len()),
                    _ => None,
                })
                .collect::<Vec<_>>();
            assert_eq!(
                n,
                vec![100],
                "revision {rev} arrives as one message of 100 events:\n{}",
                r.describe()
            );
        }
    }
}

/// Watches stay open on a follower while it is paused (SIGSTOP), the leader writes past
/// several snapshots and purges its log, and the follower, resumed, catches up by
/// installing a snapshot under them: the history they read jumps from the old store to the
/// installed one. Without compaction, they deliver every change; with history compacted
/// past them meanwhile, a watch ends `compacted` rather than skip anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_open_across_a_snapshot_install() {
    for compact in [false, true] {
        let mut extra = vec!["--snapshot-every", "100"];
        if compact {
            extra.extend(["--auto-compact-max-revisions", "100"]);
        }
        let opts = ClusterOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let c = Cluster::start(opts).await;
        let (leader, _) = c.leader().await;
        let follower = c.ids().into_iter().find(|&id| id != leader).expect("a follower");
        let prefix = "/wsnap";
        let clock = WatchClock::new();
        let url = c.client_url(follower);
        let mut watches = Vec::new();
        for (name, spec) in [
            ("tree", WatchSpec::new(prefix).recursive()),
            ("key", WatchSpec::new(&format!("{prefix}/k1")).ndjson()),
            ("reference@leader", WatchSpec::new(prefix).recursive().ndjson()),
        ] {
            let mut spec = spec;
            // The connection stays open, silent, while the node is paused.
            spec.idle = Duration::from_secs(60);
            let w = WatchClient::new(name, spec, clock.clone());
            w.connect(&if name.ends_with("@leader") { c.client_url(leader) } else { url.clone() });
            watches.push(w);
        }
        established(&c, &watches).await;
        let snapshot = c.data_dir(follower).join("snapshot").join("snapshot.bin");
        assert!(!snapshot.exists(), "no snapshot yet");
        let lead = Up(Arc::new(Mutex::new(BTreeMap::from([(leader, c.client_url(leader))]))));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut spec = WriterSpec::puts(prefix, 3, 10);
        spec.max_ops = 20;
        write(lead.endpoints(), spec.clone(), Arc::new(AtomicBool::new(false)), ledger.clone()).await;
        wait_changes(&c, &watches[0], 20).await;
        c.pause(follower);
        spec.max_ops = 500;
        spec.seed = 11;
        write(lead.endpoints(), spec, Arc::new(AtomicBool::new(false)), ledger.clone()).await;
        c.resume(follower);
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        assert_eq!(ledger.acked.len(), 520, "{}", ledger_summary(&ledger));
        eventually(&c, Duration::from_secs(20), "the follower installs a snapshot", || async {
            if snapshot.exists() {
                Ok(())
            } else {
                Err("no snapshot on the follower".to_string())
            }
        })
        .await;
        let recs = if compact {
            // A watch behind the floor ends compacted; one that caught up first may not.
            for w in &watches[..2] {
                let what = "the watch catches up or ends compacted";
                let caught_up = |w: &WatchClient| w.is_idle() || w.covered() >= 520;
                if let Err(e) = w.wait_until(CATCH_UP, what, caught_up).await {
                    panic!("{e}\n{}", c.logs());
                }
            }
            let recs: Vec<Recording> = watches.iter().map(|w| w.stop()).collect();
            let up = Up::all(&c);
            let (head, dump) = linearizable_dump(&up.endpoints(), prefix, CATCH_UP).await.expect("a dump");
            let (log, acknowledged) = ledger.log(&dump, head);
            let report = check(&recs, &log, &acknowledged);
            println!("watches_open_across_a_snapshot_install (compacting): {report}");
            recs
        } else {
            let checked = finish(&c, &Up::all(&c).endpoints(), prefix, &watches, &ledger).await;
            assert!(checked.log.complete);
            println!("watches_open_across_a_snapshot_install: {}", checked.report);
            assert_eq!(changes_of(&checked.recs[0]), changes_of(&checked.recs[2]));
            checked.recs
        };
        for r in &recs {
            assert_eq!(r.connections.len(), 1, "one connection throughout:\n{}", r.describe());
            println!("  {}", r.describe().lines().next().unwrap_or_default());
        }
    }
}

/// Reads an NDJSON watch and counts its progress messages as they come.
async fn count_progress(url: String, counter: Arc<std::sync::atomic::AtomicUsize>) {
    let client = support::watch_client::stream_client();
    let mut resp = client
        .get(&url)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(resp.status(), 200, "{url}");
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let msg: Value = serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{url}: {e}"));
            if msg.get("progress").is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_falls_silent_instead_of_reporting_stale_progress() {
    use std::sync::atomic::AtomicUsize;
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let f = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != f).collect();
    let base = format!("{}/v1/watch/quiet?recursive&progress=200ms", c.client_url(f));
    let vouched = Arc::new(AtomicUsize::new(0));
    let local = Arc::new(AtomicUsize::new(0));
    let tasks = [
        tokio::spawn(count_progress(base.clone(), vouched.clone())),
        tokio::spawn(count_progress(format!("{base}&consistency=serializable"), local.clone())),
    ];
    let count = |n: &AtomicUsize| n.load(Ordering::SeqCst);
    eventually(&c, Duration::from_secs(10), "progress on both watches", || async {
        if count(&vouched) >= 3 && count(&local) >= 3 {
            Ok(())
        } else {
            Err(format!("{} and {}", count(&vouched), count(&local)))
        }
    })
    .await;
    // The rest of the cluster hangs: the follower cannot reach a quorum. After a moment
    // (a round confirmed just before still vouches for a second), nothing more comes on
    // the linearizable watch, while the serializable one reports its own state on.
    for &o in &others {
        c.pause(o);
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (v0, l0) = (count(&vouched), count(&local));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (v1, l1) = (count(&vouched), count(&local));
    for &o in &others {
        c.resume(o);
    }
    assert_eq!(v1, v0, "progress on a linearizable watch of a cut-off node");
    assert!(l1 >= l0 + 5, "the serializable watch stopped too ({l0} -> {l1})");
    // Back in touch: progress again.
    eventually(&c, Duration::from_secs(15), "progress once the cluster is back", || async {
        if count(&vouched) > v1 {
            Ok(())
        } else {
            Err(format!("still {}", count(&vouched)))
        }
    })
    .await;
    for t in tasks {
        t.abort();
    }
}
