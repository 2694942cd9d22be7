//! The history recorder: concurrent clients issue real HTTP requests against a real
//! cluster and record what they asked and saw, on one monotonic clock.
//!
//! Classification (the contract under test): 200 is `Ok`; a 4xx (including 409
//! `condition_failed`) and a 503 `unavailable` are `Fail` (the API promises nothing took
//! effect); a refused connection is `Fail` (the request never left); a 504, any other 5xx,
//! a reset, or a client-side timeout is `Unknown`. An `Unknown` op is never retried: the
//! client abandons its process id and continues as a fresh process, as Jepsen does, so
//! every process stays sequential.
//!
//! The lease workload ([`run_leases`]) records into the same recorder, on the same clock,
//! but apart from the register history (its reads are of keys nobody writes twice, checked
//! by `leases::check_leases`, not by the register checker): see [`LeaseWorkload`].
//!
//! The watch workload ([`start_watches`]) watches the register keys on every node while the
//! register workload runs, and is checked against its history: see [`WatchWorkload`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::history::{Call, History, Op, Outcome, Value};
use super::leases::{FaultWindow, LeaseCall, LeaseHistory, LeaseOp, LeaseReply};
use crate::support::watch_client::{Recording, ResumeBy, WatchClient, WatchClock, WatchSpec};

/// Collects ops from every client.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// The lease workload's requests and its reads of the leases' keys.
    lease_ops: Mutex<Vec<LeaseOp>>,
    lease_reads: Mutex<Vec<Op>>,
    next_id: AtomicUsize,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            lease_ops: Mutex::new(Vec::new()),
            lease_reads: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
        })
    }

    /// Nanoseconds since the recorder started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Adds a completed (or abandoned) op; returns its id.
    pub fn record(&self, mut op: Op) -> usize {
        op.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = op.id;
        self.ops.lock().unwrap().push(op);
        id
    }

    /// Performs `call` on `key` at `base` as `process`, records it, and returns the op.
    pub async fn invoke(
        &self,
        http: &reqwest::Client,
        base: &str,
        process: usize,
        key: &str,
        call: Call,
    ) -> Op {
        let invoke_ns = self.now_ns();
        let outcome = perform(http, base, key, &call).await;
        let complete_ns = Some(self.now_ns());
        let mut op = Op { id: 0, process, key: key.to_string(), call, invoke_ns, complete_ns, outcome };
        op.id = self.record(op.clone());
        op
    }

    /// Everything recorded so far, in id order.
    pub fn history(&self) -> History {
        let mut ops = self.ops.lock().unwrap().clone();
        ops.sort_by_key(|o| o.id);
        History { ops }
    }

    /// Adds a lease request; returns its id.
    pub fn record_lease(&self, mut op: LeaseOp) -> usize {
        op.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = op.id;
        self.lease_ops.lock().unwrap().push(op);
        id
    }

    /// Reads `key` at `base` (linearizable) as `process` and records it with the lease
    /// workload's reads; returns the op.
    pub async fn invoke_lease_read(
        &self,
        http: &reqwest::Client,
        base: &str,
        process: usize,
        key: &str,
    ) -> Op {
        let invoke_ns = self.now_ns();
        let outcome = perform(http, base, key, &Call::Read).await;
        let complete_ns = Some(self.now_ns());
        let mut op =
            Op { id: 0, process, key: key.to_string(), call: Call::Read, invoke_ns, complete_ns, outcome };
        op.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lease_reads.lock().unwrap().push(op.clone());
        op
    }

    /// The lease workload's history so far, with the given fault windows.
    pub fn lease_history(&self, faults: Vec<FaultWindow>) -> LeaseHistory {
        let mut ops = self.lease_ops.lock().unwrap().clone();
        ops.sort_by_key(|o| o.id);
        let mut reads = self.lease_reads.lock().unwrap().clone();
        reads.sort_by_key(|o| o.id);
        LeaseHistory { ops, reads, faults }
    }
}

/// Where clients send requests: the current client URLs of the cluster (a node that is
/// down simply refuses connections).
pub type Endpoints = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// A register workload: reads, writes and compare-and-swaps on a few keys.
#[derive(Clone, Debug)]
pub struct RegisterWorkload {
    /// The keys (absolute paths); few keys, many ops per key, is what finds bugs.
    pub keys: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Each client stops after this many ops (bounds the checker's work).
    pub ops_per_client: usize,
    /// Pause between a client's ops.
    pub think: Duration,
    /// Client-side timeout of one request (beyond the server's own deadline).
    pub request_timeout: Duration,
    pub seed: u64,
}

impl Default for RegisterWorkload {
    fn default() -> Self {
        RegisterWorkload {
            keys: (0..3).map(|i| format!("/jepsen/r{i}")).collect(),
            clients: 5,
            ops_per_client: 150,
            think: Duration::from_millis(5),
            request_timeout: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// A client with the test run's credentials (see `support::credentials`): it speaks to a
/// plain cluster and to one with TLS and client auth alike.
fn http_client(timeout: Duration) -> reqwest::Client {
    crate::support::credentials::client_builder()
        .timeout(timeout)
        .pool_max_idle_per_host(4)
        .build()
        .expect("an HTTP client")
}

fn revision_of(resp: &reqwest::Response) -> Option<u64> {
    resp.headers().get("x-palisade-revision").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs the workload until every client has done its ops or `stop` is set; returns when
/// all clients have finished. Ops are recorded into `rec`.
pub async fn run_register(
    rec: Arc<Recorder>,
    endpoints: Endpoints,
    w: RegisterWorkload,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let (rec, endpoints, w, stop) = (rec.clone(), endpoints.clone(), w.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(1000).wrapping_add(c as u64));
            let http = http_client(w.request_timeout);
            let mut process = c;
            let mut n = 0usize;
            // The last value this client saw on each key (its own acknowledged writes, its
            // reads): what a CAS compares against most of the time, so that CAS succeed
            // often enough to be checked (a guessed value almost never matches).
            let mut last_seen: std::collections::HashMap<String, Value> = Default::default();
            while n < w.ops_per_client && !stop.load(Ordering::Relaxed) {
                let urls = endpoints();
                if urls.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let url = urls[rng.gen_range(0..urls.len())].clone();
                let key = w.keys[rng.gen_range(0..w.keys.len())].clone();
                let value = format!("p{process}-{n}");
                let call = match rng.gen_range(0..100) {
                    0..=49 => Call::Read,
                    50..=74 => Call::Write { value },
                    _ => {
                        // Compare against the value last seen on the key, a value some
                        // process may have written, or absence.
                        let expected: Value = match last_seen.get(&key) {
                            Some(seen) if rng.gen_bool(0.7) => seen.clone(),
                            _ if rng.gen_bool(0.2) => None,
                            _ => {
                                let p = rng.gen_range(0..=process);
                                Some(format!("p{p}-{}", rng.gen_range(0..=n.max(1))))
                            }
                        };
                        Call::Cas { expected, value }
                    }
                };
                let op = rec.invoke(&http, &url, process, &key, call).await;
                let unknown = op.outcome == Outcome::Unknown;
                match (&op.call, &op.outcome) {
                    (Call::Read, Outcome::Ok { read: Some(v), .. }) => {
                        last_seen.insert(key.clone(), v.clone());
                    }
                    (Call::Write { value } | Call::Cas { value, .. }, Outcome::Ok { .. }) => {
                        last_seen.insert(key.clone(), Some(value.clone()));
                    }
                    _ => {}
                }
                n += 1;
                if unknown {
                    // Never retry; continue as a fresh process.
                    process += w.clients;
                }
                tokio::time::sleep(w.think).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Sends one op and classifies the reply. A CAS goes through `POST /v1/txn` half of the
/// time (one compare, one put), and a read a quarter of the time (one get), so the
/// recorded histories check transactions the same way as plain keys.
pub async fn perform(http: &reqwest::Client, base: &str, key: &str, call: &Call) -> Outcome {
    let via_txn = match call {
        Call::Read => rand::random::<u8>().is_multiple_of(4),
        Call::Cas { .. } => rand::random::<bool>(),
        Call::Write { .. } => false,
    };
    if via_txn {
        return perform_txn(http, base, key, call).await;
    }
    let url = format!("{}/v1/kv{}", base.trim_end_matches('/'), key);
    let req = match call {
        Call::Read => http.get(&url),
        Call::Write { value } => http.put(&url).json(&serde_json::json!({ "value": value })),
        Call::Cas { expected: None, value } => {
            http.put(format!("{url}?if_version=0")).json(&serde_json::json!({ "value": value }))
        }
        Call::Cas { expected: Some(e), value } => {
            http.put(format!("{url}?if_value={}", encode(e))).json(&serde_json::json!({ "value": value }))
        }
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Fail,
        Err(_) => return Outcome::Unknown,
    };
    let status = resp.status().as_u16();
    let revision = revision_of(&resp);
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        // The status line came but the body did not: for a write, unknown.
        Err(_) => return if matches!(call, Call::Read) { Outcome::Fail } else { Outcome::Unknown },
    };
    match (call, status) {
        (Call::Read, 200) => {
            let v = body["kv"]["value"].as_str().map(str::to_string);
            Outcome::Ok { read: Some(v), revision }
        }
        (Call::Read, 404) if body["error"]["code"] == "key_not_found" => {
            Outcome::Ok { read: Some(None), revision }
        }
        (_, 200) => Outcome::Ok { read: None, revision },
        (_, 503) => Outcome::Fail,
        (_, s) if (400..500).contains(&s) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// [`perform`] through a transaction.
async fn perform_txn(http: &reqwest::Client, base: &str, key: &str, call: &Call) -> Outcome {
    use serde_json::json;
    let body = match call {
        Call::Read => json!({ "success": [{ "get": { "key": key } }] }),
        Call::Write { value } => json!({ "success": [{ "put": { "key": key, "value": value } }] }),
        Call::Cas { expected: None, value } => json!({
            "compare": [{ "key": key, "target": "version", "op": "==", "value": 0 }],
            "success": [{ "put": { "key": key, "value": value } }],
        }),
        Call::Cas { expected: Some(e), value } => json!({
            "compare": [{ "key": key, "target": "value", "op": "==", "value": e }],
            "success": [{ "put": { "key": key, "value": value } }],
        }),
    };
    let resp = match http.post(format!("{}/v1/txn", base.trim_end_matches('/'))).json(&body).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Fail,
        Err(_) => return Outcome::Unknown,
    };
    let status = resp.status().as_u16();
    let revision = revision_of(&resp);
    let reply: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(_) => return if matches!(call, Call::Read) { Outcome::Fail } else { Outcome::Unknown },
    };
    match status {
        200 if reply["succeeded"] == json!(false) => Outcome::Fail,
        200 if matches!(call, Call::Read) => {
            let kvs = &reply["results"][0]["get"]["kvs"];
            let v = kvs[0]["value"].as_str().map(str::to_string);
            Outcome::Ok { read: Some(v), revision }
        }
        200 => Outcome::Ok { read: None, revision },
        503 => Outcome::Fail,
        s if (400..500).contains(&s) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// A lease workload: ephemeral keys, each put once under a lease of its own, kept alive,
/// abandoned or revoked while faults happen, and read by observers.
///
/// - `keepers` clients each keep one lease alive for the whole run: a keepalive every
///   `keepalive_every`; one that is not acknowledged is sent again after `retry_after`, to a
///   node picked at random again, until one is. When their lease ends anyway (a 404), they
///   grant another.
/// - `churners` clients grant a lease, put its key, have 0 to 4 keepalives acknowledged,
///   then abandon the lease (send nothing more) or, one time in four, revoke it (once),
///   and start over.
/// - `observers` read every key (linearizable GETs, through a transaction a quarter of the
///   time, each on a node picked at random), over and over, until it has been seen absent
///   three times.
///
/// When `stop` is set, the keepers and churners stop at once (every lease is abandoned),
/// and the observers go on until every key has been seen absent twice, or `drain_timeout`
/// has passed. Lease ids are chosen by the clients (`id_base + client * 1_000_000 + n`), so
/// a grant whose outcome is unknown still names its lease. Every request is recorded with
/// the time it was sent and the time its reply arrived ([`Recorder::lease_history`]).
#[derive(Clone, Debug)]
pub struct LeaseWorkload {
    /// The keys are `{prefix}/l{lease id}`.
    pub prefix: String,
    pub keepers: usize,
    pub churners: usize,
    pub observers: usize,
    pub ttl: Duration,
    pub keepalive_every: Duration,
    pub retry_after: Duration,
    /// An observer's pause between two reads.
    pub think: Duration,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    /// Below 2^53 - 1 with room for `clients * 1_000_000` above it.
    pub id_base: u64,
    pub seed: u64,
}

impl LeaseWorkload {
    /// The defaults for test clusters (election timeout 300 ms): a TTL of 2 s (the lowest
    /// the server allows by default) and a keepalive every half second.
    pub fn new(prefix: &str, seed: u64) -> LeaseWorkload {
        LeaseWorkload {
            prefix: prefix.trim_end_matches('/').to_string(),
            keepers: 2,
            churners: 3,
            observers: 2,
            ttl: Duration::from_secs(2),
            keepalive_every: Duration::from_millis(500),
            retry_after: Duration::from_millis(100),
            think: Duration::from_millis(10),
            request_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(30),
            id_base: 1 + (seed % (1 << 40)) * 1000,
            seed,
        }
    }
}

/// What [`run_leases`] left behind.
#[derive(Clone, Debug, Default)]
pub struct LeaseRun {
    /// Keys whose put may have taken effect.
    pub keys: usize,
    /// Keys not seen absent twice by the end of the drain (each a lease that never ended,
    /// or a cluster that stopped answering).
    pub not_gone: Vec<String>,
}

/// The lease workload's shared state.
struct LeaseClients {
    rec: Arc<Recorder>,
    endpoints: Endpoints,
    w: LeaseWorkload,
    stop: Arc<AtomicBool>,
    /// Each key the observers read, with how many times it was seen absent.
    keys: Mutex<std::collections::BTreeMap<String, u32>>,
    /// Keepers and churners still running.
    writers: AtomicUsize,
}

/// Runs the lease workload (see [`LeaseWorkload`]) until `stop` and the drain that follows
/// it are over.
pub async fn run_leases(
    rec: Arc<Recorder>,
    endpoints: Endpoints,
    w: LeaseWorkload,
    stop: Arc<AtomicBool>,
) -> LeaseRun {
    let writers = w.keepers + w.churners;
    let ctx = Arc::new(LeaseClients {
        rec,
        endpoints,
        w: w.clone(),
        stop,
        keys: Mutex::new(Default::default()),
        writers: AtomicUsize::new(writers),
    });
    let mut tasks = Vec::new();
    for c in 0..writers {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            lease_client(&ctx, c, c >= ctx.w.keepers).await;
            ctx.writers.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    let observers: Vec<_> =
        (0..w.observers).map(|o| tokio::spawn(observe_leases(ctx.clone(), 100_000 + o))).collect();
    for t in tasks {
        let _ = t.await;
    }
    for o in observers {
        let _ = o.await;
    }
    let keys = ctx.keys.lock().unwrap();
    LeaseRun {
        keys: keys.len(),
        not_gone: keys.iter().filter(|(_, n)| **n < 2).map(|(k, _)| k.clone()).collect(),
    }
}

impl LeaseClients {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A node to send the next request to, waiting while none is up.
    async fn node(&self, rng: &mut StdRng) -> Option<String> {
        loop {
            if self.stopped() {
                return None;
            }
            let urls = (self.endpoints)();
            if !urls.is_empty() {
                return Some(urls[rng.gen_range(0..urls.len())].trim_end_matches('/').to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one lease request built by `req` and records it.
    async fn request(
        &self,
        process: usize,
        lease: u64,
        call: LeaseCall,
        req: reqwest::RequestBuilder,
        ok: u16,
    ) -> LeaseReply {
        let invoke_ns = self.rec.now_ns();
        let reply = lease_reply(req, ok).await;
        let complete_ns = self.rec.now_ns();
        self.rec.record_lease(LeaseOp { id: 0, process, lease, call, invoke_ns, complete_ns, reply });
        reply
    }

    /// Keepalives of `lease` until `acks` were acknowledged (`None`: until `stop`); false
    /// when the lease turned out to have ended.
    async fn keep_alive(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        process: usize,
        lease: u64,
        acks: Option<usize>,
    ) -> bool {
        let mut acked = 0;
        while acks != Some(acked) {
            tokio::time::sleep(self.w.keepalive_every).await;
            loop {
                let Some(url) = self.node(rng).await else { return true };
                let req = http.post(format!("{url}/v1/leases/{lease}/keepalive"));
                match self.request(process, lease, LeaseCall::Keepalive, req, 200).await {
                    LeaseReply::Ok => break,
                    LeaseReply::NotFound => return false,
                    LeaseReply::Fail | LeaseReply::Unknown => tokio::time::sleep(self.w.retry_after).await,
                }
            }
            acked += 1;
        }
        true
    }
}

/// One keeper (`churn == false`) or churner; see [`LeaseWorkload`].
async fn lease_client(ctx: &LeaseClients, c: usize, churn: bool) {
    let w = &ctx.w;
    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(7919).wrapping_add(c as u64));
    let http = http_client(w.request_timeout);
    let ttl = format!("{}ms", w.ttl.as_millis());
    for n in 0.. {
        let lease = w.id_base + c as u64 * 1_000_000 + n;
        let Some(url) = ctx.node(&mut rng).await else { return };
        let req = http.post(format!("{url}/v1/leases")).json(&serde_json::json!({ "ttl": ttl, "id": lease }));
        let call = LeaseCall::Grant { ttl_ms: w.ttl.as_millis() as u64 };
        if ctx.request(c, lease, call, req, 201).await != LeaseReply::Ok {
            tokio::time::sleep(w.retry_after).await;
            continue;
        }
        let key = format!("{}/l{lease}", w.prefix);
        let Some(url) = ctx.node(&mut rng).await else { return };
        let req = http
            .put(format!("{url}/v1/kv{key}"))
            .json(&serde_json::json!({ "value": "ephemeral", "lease": lease }));
        match ctx.request(c, lease, LeaseCall::Put { key: key.clone() }, req, 200).await {
            LeaseReply::Ok | LeaseReply::Unknown => {
                ctx.keys.lock().unwrap().insert(key, 0);
            }
            // Nothing was written (a 404: the lease ended already); the lease is left to expire.
            LeaseReply::Fail | LeaseReply::NotFound => continue,
        }
        if !churn {
            ctx.keep_alive(&http, &mut rng, c, lease, None).await;
            continue;
        }
        let acks = rng.gen_range(0..=4);
        if !ctx.keep_alive(&http, &mut rng, c, lease, Some(acks)).await {
            continue;
        }
        if rng.gen_bool(0.25) {
            let Some(url) = ctx.node(&mut rng).await else { return };
            let req = http.delete(format!("{url}/v1/leases/{lease}"));
            ctx.request(c, lease, LeaseCall::Revoke, req, 200).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..=300))).await;
    }
}

/// An observer: reads every key until it has been seen absent three times; after `stop`,
/// until every key has been seen absent twice, or the drain times out.
async fn observe_leases(ctx: Arc<LeaseClients>, process: usize) {
    let w = &ctx.w;
    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(104_729).wrapping_add(process as u64));
    let http = http_client(w.request_timeout);
    let mut drain_until: Option<Instant> = None;
    loop {
        if ctx.stopped() && drain_until.is_none() {
            drain_until = Some(Instant::now() + w.drain_timeout);
        }
        let (mut pending, drained) = {
            let keys = ctx.keys.lock().unwrap();
            let pending: Vec<String> = keys.iter().filter(|(_, n)| **n < 3).map(|(k, _)| k.clone()).collect();
            (pending, keys.values().all(|n| *n >= 2))
        };
        if let Some(until) = drain_until {
            let writers_done = ctx.writers.load(Ordering::SeqCst) == 0;
            if (writers_done && drained) || Instant::now() >= until {
                return;
            }
        }
        if pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        pending.shuffle(&mut rng);
        for key in pending {
            let urls = (ctx.endpoints)();
            if urls.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
            let url = &urls[rng.gen_range(0..urls.len())];
            let op = ctx.rec.invoke_lease_read(&http, url, process, &key).await;
            if let Outcome::Ok { read: Some(None), .. } = op.outcome {
                *ctx.keys.lock().unwrap().entry(key).or_default() += 1;
            }
            tokio::time::sleep(w.think).await;
        }
    }
}

/// Sends a lease request and classifies the reply (see [`LeaseReply`]).
async fn lease_reply(req: reqwest::RequestBuilder, ok: u16) -> LeaseReply {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return LeaseReply::Fail,
        Err(_) => return LeaseReply::Unknown,
    };
    let status = resp.status().as_u16();
    let body: Option<serde_json::Value> = resp.json().await.ok();
    let code = body.as_ref().and_then(|b| b["error"]["code"].as_str().map(str::to_string));
    match status {
        s if s == ok => LeaseReply::Ok,
        404 if code.as_deref() == Some("lease_not_found") => LeaseReply::NotFound,
        503 => LeaseReply::Fail,
        s if (400..500).contains(&s) => LeaseReply::Fail,
        _ => LeaseReply::Unknown,
    }
}

/// A watch workload beside the register workload: on every node, a recursive watch of the
/// register keys' common parent (SSE, from now, resumed by `Last-Event-ID`) and a watch of
/// one register key (NDJSON, replayed from the revision before the watches start, resumed
/// by `start_revision`), each moving to
/// another node after any error (see `support::watch_client`): a refused or broken
/// connection, or one silent for five progress intervals (a paused node). Besides, about
/// once a second a stream picked at random drops its connection and resumes elsewhere,
/// so resumes also happen under faults that leave connections alone (partitions). [`WatchRun::finish`] brings
/// every stream up to the final revision and checks them all with
/// `watch::check_watches` against the register history's acknowledged writes plus a final
/// linearizable dump.
#[derive(Clone, Debug)]
pub struct WatchWorkload {
    /// The register keys' common parent.
    pub prefix: String,
    pub keys: Vec<String>,
    /// `?progress=` of every stream (ms).
    pub progress_ms: u64,
    /// Which streams drop their connection, and when.
    pub seed: u64,
}

/// The streams of a [`WatchWorkload`].
pub struct WatchRun {
    pub clients: Arc<Vec<WatchClient>>,
    w: WatchWorkload,
    endpoints: Endpoints,
    /// Drops a random stream's connection now and then, until the run finishes.
    kicker: tokio::task::JoinHandle<()>,
}

/// Starts the watch workload on the nodes `endpoints` names now.
pub async fn start_watches(endpoints: Endpoints, w: WatchWorkload) -> WatchRun {
    // Where the single-key watches replay from (not revision 1: a long soak compacts it).
    let past = match linearizable_dump(&endpoints, &w.prefix, Duration::from_secs(10)).await {
        Ok((revision, _)) => revision.max(1),
        Err(e) => panic!("the watch workload could not read the current revision: {e}"),
    };
    let clock = WatchClock::new();
    let mut clients = Vec::new();
    for (i, url) in endpoints().into_iter().enumerate() {
        let key = &w.keys[i % w.keys.len()];
        let tree = WatchSpec::new(&w.prefix).recursive().resume_by(ResumeBy::LastEventId);
        let one = WatchSpec::new(key).starting_at(past).ndjson().resume_by(ResumeBy::StartRevision);
        for (name, mut spec) in [(format!("tree{i}"), tree), (format!("key{i}:{key}"), one)] {
            spec.progress_ms = w.progress_ms;
            spec.idle = Duration::from_millis(5 * w.progress_ms);
            let c = WatchClient::new(&name, spec, clock.clone());
            c.follow(endpoints.clone(), Some(url.clone()));
            clients.push(c);
        }
    }
    let clients = Arc::new(clients);
    let kicker = {
        let (clients, seed) = (clients.clone(), w.seed);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=1500))).await;
                clients[rng.gen_range(0..clients.len())].kick();
            }
        })
    };
    WatchRun { clients, w, endpoints, kicker }
}

/// A linearizable listing of `prefix` through any node of `endpoints` (trying them in turn
/// for up to `within`): its revision and `(key, value, mod_revision)` of every key.
pub async fn linearizable_dump(
    endpoints: &Endpoints,
    prefix: &str,
    within: Duration,
) -> Result<(u64, Vec<(String, String, u64)>), String> {
    let http = crate::support::credentials::http(Duration::from_secs(3));
    let deadline = Instant::now() + within;
    let mut last = String::from("no node to ask");
    loop {
        for url in endpoints() {
            match http.list(&url, prefix, crate::support::process::Consistency::Linearizable).await {
                Ok(l) => {
                    let mut dump = Vec::new();
                    for (key, kv) in l.kvs {
                        let value =
                            kv["value"].as_str().ok_or_else(|| format!("{key} without a value: {kv}"))?;
                        let rev = kv["mod_revision"]
                            .as_u64()
                            .ok_or_else(|| format!("{key} without mod_revision: {kv}"))?;
                        dump.push((key, value.to_string(), rev));
                    }
                    return Ok((l.revision, dump));
                }
                Err(e) => last = e,
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no linearizable listing of {prefix} within {within:?}; last: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What [`WatchRun::finish`] checked.
#[derive(Clone, Debug)]
pub struct WatchSummary {
    pub report: super::watch::Report,
    /// Connections over every stream, attempts included.
    pub connections: usize,
    /// Resumed connections that delivered messages.
    pub resumed: usize,
    pub head: u64,
}

impl std::fmt::Display for WatchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} connections, {} resumes that delivered, checked through revision {})",
            self.report, self.connections, self.resumed, self.head
        )
    }
}

impl WatchRun {
    /// Once the faults are healed and the writers stopped: waits (up to `within`) until
    /// every stream covers the revision of a linearizable read, stops them, and checks them
    /// against `history` (the register workload's) plus a final linearizable dump. `Err`
    /// carries the violation and the connections of the stream that broke a rule.
    pub async fn finish(self, history: &History, within: Duration) -> Result<WatchSummary, String> {
        self.kicker.abort();
        let (target, _) = linearizable_dump(&self.endpoints, &self.w.prefix, within).await?;
        let deadline = Instant::now() + within;
        for c in self.clients.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = c.wait_covered(target, left).await {
                return Err(format!(
                    "a watch did not catch up with the final revision {target} after the heal: {e}"
                ));
            }
        }
        let recs: Vec<Recording> = self.clients.iter().map(|c| c.stop()).collect();
        // Read after every stream stopped: nothing any stream saw is above it.
        let (head, dump) = linearizable_dump(&self.endpoints, &self.w.prefix, within).await?;
        let all = || recs.iter().map(|r| r.describe()).collect::<Vec<_>>().join("");
        for r in &recs {
            if !r.protocol_errors.is_empty() {
                return Err(format!("a watch broke the protocol:\n{}", r.describe()));
            }
        }
        let log = super::watch::CommittedLog::from_history(history, &dump, head)
            .map_err(|e| format!("the acknowledged writes and the final dump disagree: {e}"))?;
        let acked: Vec<(String, u64)> = history
            .ops
            .iter()
            .filter(|o| matches!(o.call, Call::Write { .. } | Call::Cas { .. }))
            .filter_map(|o| match o.outcome {
                Outcome::Ok { revision: Some(r), .. } => Some((o.key.clone(), r)),
                _ => None,
            })
            .collect();
        let streams: Vec<_> = recs.iter().map(|r| r.stream.clone()).collect();
        let report = super::watch::check_watches(&streams, &log, &acked).map_err(|v| {
            let conns =
                recs.iter().find(|r| r.stream.id == v.stream).map(|r| r.describe()).unwrap_or_default();
            format!("the watches broke a rule: {v}\nconnections of that watch:\n{conns}")
        })?;
        if report.acknowledged_seen == 0 || report.changes == 0 {
            return Err(format!(
                "the watches saw no acknowledged write: they check nothing ({report})\n{}",
                all()
            ));
        }
        let connections = recs.iter().map(|r| r.connections.len()).sum();
        let resumed =
            recs.iter().flat_map(|r| &r.connections).filter(|c| c.by.is_some() && c.count > 0).count();
        Ok(WatchSummary { report, connections, resumed, head })
    }
}

// ---------------------------------------------------------------------------------------
// Locks and elections.

/// What the holders of a [`LockWorkload`] contend for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contended {
    /// A lock of `limit` holders at once (1: a mutex; more: a semaphore).
    Lock { name: String, limit: u32 },
    /// An election: one leader at a time, with a value.
    Election { name: String },
}

impl Contended {
    pub fn name(&self) -> &str {
        match self {
            Contended::Lock { name, .. } | Contended::Election { name } => name,
        }
    }

    pub fn limit(&self) -> u32 {
        match self {
            Contended::Lock { limit, .. } => *limit,
            Contended::Election { .. } => 1,
        }
    }

    fn is_election(&self) -> bool {
        matches!(self, Contended::Election { .. })
    }
}

/// A lock and election workload: holders contend for locks (a mutex, a semaphore) and
/// candidates for elections, through every live node, while observers follow each
/// election on every node. Checked by `fencing::check_locks_with` and
/// `fencing::check_observations` in [`LockRun::finish`].
///
/// Every lease it uses is handed out by the server, above every id a client may choose
/// (see [`raise_lease_ids`]), so no other workload's lease ever shares an id with one of
/// its leases, ended or not.
///
/// A holder works in sessions: a lease of its own (`POST /v1/leases`) with a marker key
/// `{prefix}/leases/{id}` attached before anything else, kept alive every
/// `keepalive_every`, used for up to three acquires; or (one time in `1 / ttl_chance`) an
/// acquire with `ttl`, whose lease the server makes, then marks and kept alive once granted.
/// The marker's delete revision (read back from a watch at the end) is the revision at
/// which the lease ended, so at which its holdings ended (`LeaseExpiry`).
///
/// Once granted (a `Grant`, client `{name}/h{n}/{owner}`, unique per holding, at the
/// revision of its fencing token), a holder presents its token to an in-test
/// [`GuardedResource`] of the name (an `Access`, in the order the resource saw them), asks
/// the server about its token half of the time (`POST /v1/fence/check`, or a transaction
/// whose fence compare guards a put: a `FenceCheck`), a leader proclaims new values now and
/// then, and it holds for up to `max_hold`. Then it releases (resigns) with an
/// `Idempotency-Key`, sent again until an answer is definite (a `Release` at the reply's
/// revision), or revokes its lease, or lets it lapse. With `pause_chance` it first stops
/// keeping its lease alive and sleeps past it, then comes back to the resource (and the
/// fence check) with its old token.
///
/// What a holder does not know, it does not record: an acquire whose answer was lost may
/// have been granted, so its session ends (the lease is revoked, once, and nobody keeps it
/// alive) and the grant is never used; a holding whose release had no definite answer and
/// whose lease's end was not seen has an open end (`LockFacts::open_ends`).
///
/// When stopped, holders end what they hold at once, nobody keeps a lease alive, and
/// [`LockRun::finish`] waits until every marker is gone, every lock idle and every
/// election leaderless, reads the markers' deletes, waits until every observer shows
/// that, and checks.
#[derive(Clone, Debug)]
pub struct LockWorkload {
    /// Marker keys go under `{prefix}/leases/`, the fenced puts under `{prefix}/guard/`.
    pub prefix: String,
    /// What is contended for, and by how many holders (candidates) each.
    pub targets: Vec<(Contended, usize)>,
    pub ttl: Duration,
    pub keepalive_every: Duration,
    /// An acquire's (campaign's) `wait`.
    pub wait: Duration,
    pub max_hold: Duration,
    /// Chance that a holding ends with a pause past the lease (see above).
    pub pause_chance: f64,
    /// Chance that a session starts with an acquire with `ttl` instead of a lease of its own.
    pub ttl_chance: f64,
    /// Client-side timeout of one request (an acquire: beyond its `wait`).
    pub request_timeout: Duration,
    /// How long, after the stop, releases are retried and leases may take to end.
    pub drain_timeout: Duration,
    pub seed: u64,
}

impl LockWorkload {
    /// A mutex and a semaphore of limit 2 (three holders each) and an election (three
    /// candidates), named `{tag}-mutex`, `{tag}-sem`, `{tag}-elect`; TTL 2 s (the lowest
    /// the server allows by default), a keepalive every half second.
    pub fn new(prefix: &str, tag: &str, seed: u64) -> LockWorkload {
        LockWorkload {
            prefix: prefix.trim_end_matches('/').to_string(),
            targets: vec![
                (Contended::Lock { name: format!("{tag}-mutex"), limit: 1 }, 3),
                (Contended::Lock { name: format!("{tag}-sem"), limit: 2 }, 3),
                (Contended::Election { name: format!("{tag}-elect") }, 3),
            ],
            ttl: Duration::from_secs(2),
            keepalive_every: Duration::from_millis(500),
            wait: Duration::from_secs(2),
            max_hold: Duration::from_millis(400),
            pause_chance: 0.08,
            ttl_chance: 0.3,
            request_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(20),
            seed,
        }
    }

    fn leases_prefix(&self) -> String {
        format!("{}/leases", self.prefix)
    }
}

/// What the holders did, counted.
#[derive(Clone, Debug, Default)]
pub struct LockCounts {
    pub acquires: usize,
    pub grants: usize,
    /// 409 `lock_timeout`.
    pub timed_out: usize,
    /// 409 `lease_expired` (and 404 `lease_not_found`).
    pub lease_gone: usize,
    pub unknown_acquires: usize,
    /// Why acquires were unknown: a status, or what the transport said.
    pub unknown_why: std::collections::BTreeMap<String, usize>,
    pub releases: usize,
    /// Releases answered "not held any more" (404 `owner_not_found`, 409 `not_leader`).
    pub releases_gone: usize,
    /// Releases sent again after an answer that was not definite.
    pub release_retries: usize,
    /// Releases still without a definite answer at the end of the drain.
    pub releases_unknown: usize,
    pub revokes: usize,
    pub lapses: usize,
    pub pauses: usize,
    /// Accesses by a holder back from a pause that the resource refused.
    pub stale_refused: usize,
    pub proclaims: usize,
    /// Observe connections opened.
    pub observe_connections: usize,
}

impl std::fmt::Display for LockCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acquires: {} granted, {} timed out, {} lease gone, {} unknown; {} releases ({} gone, {} resent, {} never answered), {} revokes, {} lapses, {} pauses ({} refused after), {} proclaims, {} observe connections",
            self.acquires,
            self.grants,
            self.timed_out,
            self.lease_gone,
            self.unknown_acquires,
            self.releases,
            self.releases_gone,
            self.release_retries,
            self.releases_unknown,
            self.revokes,
            self.lapses,
            self.pauses,
            self.stale_refused,
            self.proclaims,
            self.observe_connections
        )?;
        if !self.unknown_why.is_empty() {
            write!(f, " (unknown acquires: {:?})", self.unknown_why)?;
        }
        Ok(())
    }
}

use super::fencing::{
    Access, FenceCheck, Grant, GuardedResource, Leadership, LeaseExpiry, LockFacts, LockHistory, Observed,
    ObserverLog, Release,
};

/// Everything the holders and observers recorded.
#[derive(Default)]
struct LockLog {
    history: LockHistory,
    facts: LockFacts,
    resources: std::collections::HashMap<String, GuardedResource>,
    /// Leases whose marker key was certainly written.
    markers: std::collections::BTreeSet<u64>,
    /// Per election: each recorded leadership (by token).
    leaders: std::collections::HashMap<String, std::collections::HashMap<u64, Leadership>>,
    /// Answers the API does not allow (they fail the run).
    anomalies: Vec<String>,
    counts: LockCounts,
}

/// A [`LockWorkload`]'s shared state.
pub struct LockShared {
    rec: Arc<Recorder>,
    endpoints: Endpoints,
    w: LockWorkload,
    stop: AtomicBool,
    /// When the stop came (the drain's clock).
    stopped_at: Mutex<Option<Instant>>,
    log: Mutex<LockLog>,
    /// The revision before the workload began (the markers' watch starts above it).
    start_revision: u64,
}

/// A running [`LockWorkload`].
pub struct LockRun {
    pub shared: Arc<LockShared>,
    holders: Vec<tokio::task::JoinHandle<()>>,
    observers: Vec<(Arc<Mutex<ObserverLog>>, String, tokio::task::JoinHandle<()>)>,
}

/// What [`LockRun::finish`] checked.
#[derive(Clone, Debug)]
pub struct LockSummary {
    pub report: super::fencing::Report,
    /// Per election.
    pub observed: Vec<(String, super::fencing::ObserveReport)>,
    pub counts: LockCounts,
    /// Leases seen ending (marker deletes).
    pub lease_ends: usize,
}

impl std::fmt::Display for LockSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {} lease ends seen; {}", self.report, self.lease_ends, self.counts)?;
        for (name, r) in &self.observed {
            write!(f, "; election {name}: {r}")?;
        }
        Ok(())
    }
}

/// How an acquire (campaign) ended, for its holder.
enum Acquire {
    Granted {
        owner: String,
        lease: u64,
        token: u64,
    },
    NotGranted,
    /// The lease ended (409 `lease_expired`, 404 `lease_not_found`).
    LeaseGone,
    /// No definite answer: it may have been granted.
    Unknown,
}

/// A lease kept alive by a task of its own until dropped (or found gone).
struct Keeper {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A holder's lease.
struct Session {
    lease: u64,
    uses: u32,
    /// Its marker was certainly written (else the session is not used again).
    marked: bool,
    keeper: Keeper,
}

impl Session {
    fn lost(&self) -> bool {
        self.keeper.lost.load(Ordering::SeqCst)
    }
}

/// Sleeps `d`, or less when `sh` stops; true if it slept all of it.
async fn nap(sh: &LockShared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if sh.stopped() {
            return false;
        }
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(50))).await;
    }
    true
}

/// Starts the workload on the nodes `endpoints` names (observers: one per node named now).
pub async fn start_locks(rec: Arc<Recorder>, endpoints: Endpoints, w: LockWorkload) -> LockRun {
    let start_revision =
        match linearizable_dump(&endpoints, &w.leases_prefix(), Duration::from_secs(10)).await {
            Ok((revision, _)) => revision,
            Err(e) => panic!("the lock workload could not read the current revision: {e}"),
        };
    raise_lease_ids(&endpoints).await;
    let mut log = LockLog::default();
    for (t, _) in &w.targets {
        log.history.limits.insert(t.name().to_string(), t.limit());
        if t.is_election() {
            log.leaders.insert(t.name().to_string(), Default::default());
        }
    }
    let sh = Arc::new(LockShared {
        rec,
        endpoints: endpoints.clone(),
        w: w.clone(),
        stop: AtomicBool::new(false),
        stopped_at: Mutex::new(None),
        log: Mutex::new(log),
        start_revision,
    });
    let mut holders = Vec::new();
    let mut n = 0;
    for (t, count) in &w.targets {
        for _ in 0..*count {
            let (sh, t) = (sh.clone(), t.clone());
            holders.push(tokio::spawn(async move { holder(sh, t, n).await }));
            n += 1;
        }
    }
    let mut observers = Vec::new();
    for (t, _) in w.targets.iter().filter(|(t, _)| t.is_election()) {
        for (i, url) in endpoints().into_iter().enumerate() {
            let log = Arc::new(Mutex::new(ObserverLog {
                id: format!("{}@{i}", t.name()),
                connections: Vec::new(),
            }));
            let task = tokio::spawn(observe_election(sh.clone(), t.name().to_string(), url, log.clone()));
            observers.push((log, t.name().to_string(), task));
        }
    }
    LockRun { shared: sh, holders, observers }
}

/// Makes every lease id the server hands out from now on larger than any id a client may
/// choose (at most 2^52), by granting (or finding) a lease with the id 2^52: the server
/// hands out ids above the largest it has seen. Every lease of the lock workload is handed
/// out by the server, so none can later be granted again under a client's chosen id (the
/// lease workload chooses its ids): a late revoke of one of ours that has ended never ends
/// another workload's lease.
async fn raise_lease_ids(endpoints: &Endpoints) {
    let http = http_client(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for url in endpoints() {
            let body = serde_json::json!({ "ttl": "2s", "id": 1u64 << 52 });
            let r = http.post(format!("{}/v1/leases", url.trim_end_matches('/'))).json(&body).send().await;
            let status = r.as_ref().map_or(0, |r| r.status().as_u16());
            // 201: granted; 409: a lease with that id exists (it was granted before).
            if status == 201 || status == 409 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the lock workload could not grant the lease 2^52 within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl LockShared {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn drain_over(&self) -> bool {
        self.stopped_at.lock().unwrap().is_some_and(|t| t.elapsed() >= self.w.drain_timeout / 2)
    }

    /// A node to send the next request to, waiting while none is up.
    async fn node(&self, rng: &mut StdRng) -> String {
        loop {
            let urls = (self.endpoints)();
            if !urls.is_empty() {
                return urls[rng.gen_range(0..urls.len())].trim_end_matches('/').to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn anomaly(&self, what: String) {
        self.log.lock().unwrap().anomalies.push(what);
    }

    fn count(&self, f: impl FnOnce(&mut LockCounts)) {
        f(&mut self.log.lock().unwrap().counts);
    }

    /// Records a grant `client` was told of.
    pub fn record_grant(&self, client: &str, name: &str, token: u64, lease: u64) {
        let g = Grant {
            client: client.to_string(),
            name: name.to_string(),
            fencing_token: token,
            lease,
            grant_revision: token,
            observed_at_ns: self.rec.now_ns(),
        };
        let mut log = self.log.lock().unwrap();
        log.counts.grants += 1;
        log.history.grants.push(g);
    }

    /// Records an acknowledged release (resign) at `revision`.
    pub fn record_release(&self, client: &str, name: &str, revision: u64) {
        let r = Release { client: client.to_string(), name: name.to_string(), revision };
        self.log.lock().unwrap().history.releases.push(r);
    }

    /// Records what the server said about a token.
    pub fn record_fence(&self, f: FenceCheck) {
        self.log.lock().unwrap().facts.fence_checks.push(f);
    }

    /// Notes that lease `id` certainly has its marker key.
    pub fn record_marker(&self, id: u64) {
        self.log.lock().unwrap().markers.insert(id);
    }

    /// Presents `token` to the guarded resource of `name` as `client`; whether it was
    /// accepted (recorded in the order the resource saw it).
    pub fn access(&self, name: &str, client: &str, token: u64) -> bool {
        let mut log = self.log.lock().unwrap();
        let accepted = log.resources.entry(name.to_string()).or_default().offer(token);
        log.history.accesses.push(Access {
            client: client.to_string(),
            name: name.to_string(),
            token,
            accepted,
        });
        accepted
    }

    /// The highest token the resource of `name` accepted so far.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.log.lock().unwrap().resources.get(name).and_then(|r| r.highest)
    }

    /// The marker key of lease `id`.
    pub fn marker_key(&self, id: u64) -> String {
        format!("{}/{id}", self.w.leases_prefix())
    }

    /// Puts lease `id`'s marker key; true when it certainly took effect (then recorded).
    pub async fn put_marker(&self, http: &reqwest::Client, rng: &mut StdRng, id: u64) -> bool {
        let url = self.node(rng).await;
        let key = self.marker_key(id);
        let req = http
            .put(format!("{url}/v1/kv{key}"))
            .json(&serde_json::json!({ "value": "marker", "lease": id }));
        let ok = matches!(req.send().await, Ok(r) if r.status().as_u16() == 200);
        if ok {
            self.record_marker(id);
        }
        ok
    }

    /// Keeps lease `id` alive until the keeper is dropped or the lease is found gone.
    fn keep(self: &Arc<Self>, id: u64) -> Keeper {
        let keeper =
            Keeper { stop: Arc::new(AtomicBool::new(false)), lost: Arc::new(AtomicBool::new(false)) };
        let (stop, lost, sh) = (keeper.stop.clone(), keeper.lost.clone(), self.clone());
        tokio::spawn(async move {
            let http = http_client(Duration::from_secs(1));
            let mut rng = StdRng::seed_from_u64(id);
            let mut next = Instant::now() + sh.w.keepalive_every;
            loop {
                while Instant::now() < next {
                    if stop.load(Ordering::SeqCst) || sh.stopped() {
                        return;
                    }
                    tokio::time::sleep((next - Instant::now()).min(Duration::from_millis(50))).await;
                }
                let url = sh.node(&mut rng).await;
                match http.post(format!("{url}/v1/leases/{id}/keepalive")).send().await {
                    Ok(r) if r.status().as_u16() == 200 => next = Instant::now() + sh.w.keepalive_every,
                    Ok(r) if r.status().as_u16() == 404 => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    _ => next = Instant::now() + Duration::from_millis(100),
                }
            }
        });
        keeper
    }

    /// A session with a lease of its own, marked and kept alive; `None` if any step had no
    /// definite success (the lease, if made, is then revoked once).
    async fn new_session(self: &Arc<Self>, http: &reqwest::Client, rng: &mut StdRng) -> Option<Session> {
        let url = self.node(rng).await;
        let ttl = format!("{}ms", self.w.ttl.as_millis());
        let r = http
            .post(format!("{url}/v1/leases"))
            .json(&serde_json::json!({ "ttl": ttl }))
            .send()
            .await
            .ok()?;
        if r.status().as_u16() != 201 {
            return None;
        }
        let id = r.json::<serde_json::Value>().await.ok()?["id"].as_u64()?;
        let keeper = self.keep(id);
        if !self.put_marker(http, rng, id).await {
            drop(keeper);
            self.revoke(http, rng, id).await;
            return None;
        }
        Some(Session { lease: id, uses: 0, marked: true, keeper })
    }

    /// Revokes lease `id` (one try; the outcome does not matter: its marker tells).
    async fn revoke(&self, http: &reqwest::Client, rng: &mut StdRng, id: u64) {
        let url = self.node(rng).await;
        let _ = http.delete(format!("{url}/v1/leases/{id}")).send().await;
        self.count(|c| c.revokes += 1);
    }

    /// One acquire (campaign) of `t` with `lease` (or a `ttl` lease the server makes).
    async fn acquire(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        t: &Contended,
        lease: Option<u64>,
        value: &str,
    ) -> Acquire {
        use serde_json::json;
        self.count(|c| c.acquires += 1);
        let url = self.node(rng).await;
        let mut body = json!({ "wait": format!("{}ms", self.w.wait.as_millis()) });
        match lease {
            Some(id) => body["lease"] = json!(id),
            None => body["ttl"] = json!(format!("{}ms", self.w.ttl.as_millis())),
        }
        let path = match t {
            Contended::Lock { name, limit } => {
                if *limit > 1 {
                    body["limit"] = json!(limit);
                }
                format!("/v1/locks/{name}")
            }
            Contended::Election { name } => {
                body["value"] = json!(value);
                format!("/v1/elections/{name}/campaign")
            }
        };
        let req = http.post(format!("{url}{path}")).timeout(self.w.wait + self.w.request_timeout).json(&body);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Acquire::NotGranted,
            Err(e) => {
                let why = if e.is_timeout() { "client timeout" } else { "connection lost" };
                self.unknown(why.into());
                return Acquire::Unknown;
            }
        };
        let status = resp.status().as_u16();
        let Ok(b) = resp.json::<serde_json::Value>().await else {
            if status == 200 {
                self.unknown("200 without a whole body".into());
                return Acquire::Unknown;
            }
            return Acquire::NotGranted;
        };
        let code = b["error"]["code"].as_str().unwrap_or("");
        match (status, code) {
            (200, _) => {
                let (Some(owner), Some(got_lease), Some(token), Some(revision)) = (
                    b["owner"].as_str(),
                    b["lease"].as_u64(),
                    b["fencing_token"].as_u64(),
                    b["revision"].as_u64(),
                ) else {
                    self.anomaly(format!(
                        "{path}: a grant without owner, lease, fencing_token or revision: {b}"
                    ));
                    return Acquire::Unknown;
                };
                if lease.is_some_and(|l| l != got_lease) || revision < token || b["name"] != t.name() {
                    self.anomaly(format!(
                        "{path} with lease {lease:?}: the grant does not match the request: {b}"
                    ));
                }
                if t.is_election() && b["value"] != value {
                    self.anomaly(format!("{path} with value {value:?}: the leader's value differs: {b}"));
                }
                Acquire::Granted { owner: owner.to_string(), lease: got_lease, token }
            }
            (409, "lock_timeout") => {
                self.count(|c| c.timed_out += 1);
                Acquire::NotGranted
            }
            (409, "lease_expired") | (404, "lease_not_found") => {
                self.count(|c| c.lease_gone += 1);
                Acquire::LeaseGone
            }
            (429 | 503, _) => Acquire::NotGranted,
            (s, _) if (400..500).contains(&s) => {
                self.anomaly(format!("{path} {body}: {s} {b}"));
                Acquire::NotGranted
            }
            (s, _) => {
                self.unknown(format!("{s} {code}"));
                Acquire::Unknown
            }
        }
    }

    fn unknown(&self, why: String) {
        self.count(|c| {
            c.unknown_acquires += 1;
            *c.unknown_why.entry(why).or_default() += 1;
        });
    }

    /// Asks the server about `token` (the fence check, or a fenced put) and records the
    /// answer when it is definite.
    async fn fence_probe(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        name: &str,
        client: &str,
        token: u64,
    ) {
        use serde_json::json;
        let url = self.node(rng).await;
        if rng.gen_bool(0.5) {
            let Ok(r) = http
                .post(format!("{url}/v1/fence/check"))
                .json(&json!({ "name": name, "token": token }))
                .send()
                .await
            else {
                return;
            };
            let (status, revision) = (r.status().as_u16(), revision_of(&r));
            let Ok(b) = r.json::<serde_json::Value>().await else { return };
            let valid = match (status, b["valid"].as_bool()) {
                (200, Some(true)) => true,
                (409, Some(false)) if b["error"]["code"] == "stale_token" => false,
                (429 | 503, _) => return,
                _ => {
                    self.anomaly(format!("fence check of {name} token {token}: {status} {b}"));
                    return;
                }
            };
            let Some(revision) = revision else {
                self.anomaly(format!(
                    "fence check of {name} token {token}: no X-Palisade-Revision ({status} {b})"
                ));
                return;
            };
            self.record_fence(FenceCheck {
                client: client.to_string(),
                name: name.to_string(),
                token,
                revision,
                valid,
                via: "fence check",
            });
        } else {
            let key = format!("{}/guard/{name}", self.w.prefix);
            let body = json!({
                "compare": [{ "target": "fence", "lock": name, "op": "==", "value": token }],
                "success": [{ "put": { "key": key, "value": token.to_string() } }],
            });
            let Ok(r) = http.post(format!("{url}/v1/txn")).json(&body).send().await else { return };
            let status = r.status().as_u16();
            let Ok(b) = r.json::<serde_json::Value>().await else { return };
            let (Some(revision), Some(succeeded)) = (b["revision"].as_u64(), b["succeeded"].as_bool()) else {
                if !matches!(status, 429 | 503 | 504) && status < 500 {
                    self.anomaly(format!("fenced txn on {name} token {token}: {status} {b}"));
                }
                return;
            };
            // A put that happened took the reply's revision: the compare read the one before.
            let revision = if succeeded { revision - 1 } else { revision };
            self.record_fence(FenceCheck {
                client: client.to_string(),
                name: name.to_string(),
                token,
                revision,
                valid: succeeded,
                via: "txn fence compare",
            });
        }
    }

    /// Releases (resigns) `owner` with one idempotency key until an answer is definite, or
    /// the drain is half over. Records an acknowledged release.
    async fn release(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        t: &Contended,
        client: &str,
        owner: &str,
    ) {
        let key = format!("release-{client}-{}", rng.gen::<u64>());
        let path = match t {
            Contended::Lock { name, .. } => format!("/v1/locks/{name}?owner={owner}"),
            Contended::Election { name } => format!("/v1/elections/{name}/leader?owner={owner}"),
        };
        let mut first = true;
        loop {
            if !first {
                if self.drain_over() {
                    self.count(|c| c.releases_unknown += 1);
                    return;
                }
                self.count(|c| c.release_retries += 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            first = false;
            let url = self.node(rng).await;
            let Ok(r) = http.delete(format!("{url}{path}")).header("Idempotency-Key", &key).send().await
            else {
                continue;
            };
            let status = r.status().as_u16();
            let Ok(b) = r.json::<serde_json::Value>().await else { continue };
            let code = b["error"]["code"].as_str().unwrap_or("");
            match (status, code) {
                (200, _) => {
                    match (b["revision"].as_u64(), b["released"].as_bool()) {
                        (Some(revision), Some(true)) => {
                            self.record_release(client, t.name(), revision);
                            self.count(|c| c.releases += 1);
                        }
                        _ => self.anomaly(format!("DELETE {path} of a holder: {b}")),
                    }
                    return;
                }
                (404, "owner_not_found") | (409, "not_leader") => {
                    self.count(|c| c.releases_gone += 1);
                    return;
                }
                (429 | 503, _) => continue,
                (s, _) if (400..500).contains(&s) => {
                    self.anomaly(format!("DELETE {path}: {s} {b}"));
                    return;
                }
                _ => continue,
            }
        }
    }

    /// A leader proclaims `value` (recorded among its values before it is sent); false
    /// when it is not the leader any more.
    async fn proclaim(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        name: &str,
        owner: &str,
        token: u64,
        value: &str,
    ) -> bool {
        if let Some(l) = self.log.lock().unwrap().leaders.get_mut(name).and_then(|m| m.get_mut(&token)) {
            l.values.push(value.to_string());
        }
        self.count(|c| c.proclaims += 1);
        let url = self.node(rng).await;
        let body = serde_json::json!({ "owner": owner, "value": value });
        let Ok(r) = http.put(format!("{url}/v1/elections/{name}/leader")).json(&body).send().await else {
            return true;
        };
        let status = r.status().as_u16();
        let b: serde_json::Value = r.json().await.unwrap_or_default();
        match status {
            200 => {
                if b["fencing_token"].as_u64() != Some(token) || b["value"] != value {
                    self.anomaly(format!("proclaim {value:?} by {owner} (token {token}): {b}"));
                }
                true
            }
            409 if b["error"]["code"] == "not_leader" => false,
            s if (400..500).contains(&s) && s != 429 => {
                self.anomaly(format!("proclaim {value:?} by {owner}: {s} {b}"));
                false
            }
            _ => true,
        }
    }
}

/// One holder (candidate) of `t`; see [`LockWorkload`].
async fn holder(sh: Arc<LockShared>, t: Contended, h: usize) {
    let w = sh.w.clone();
    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(6151).wrapping_add(h as u64));
    let http = http_client(w.request_timeout);
    let tag = format!("{}/h{h}", t.name());
    let name = t.name().to_string();
    let mut session: Option<Session> = None;
    let mut n = 0u64;
    while !sh.stopped() {
        n += 1;
        if session.as_ref().is_some_and(|s| s.lost() || !s.marked || s.uses >= 3) {
            let s = session.take().expect("a session");
            if !s.lost() && rng.gen_bool(0.5) {
                drop(s.keeper);
                sh.revoke(&http, &mut rng, s.lease).await;
            } else {
                sh.count(|c| c.lapses += 1);
            }
        }
        let ttl_mode = session.is_none() && rng.gen_bool(w.ttl_chance);
        if session.is_none() && !ttl_mode {
            match sh.new_session(&http, &mut rng).await {
                Some(s) => session = Some(s),
                None => {
                    nap(&sh, Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let value = format!("{tag}-{n}");
        let lease = session.as_ref().map(|s| s.lease);
        let (owner, lease, token) = match sh.acquire(&http, &mut rng, &t, lease, &value).await {
            Acquire::Granted { owner, lease, token } => (owner, lease, token),
            Acquire::NotGranted => {
                nap(&sh, Duration::from_millis(rng.gen_range(20..=100))).await;
                continue;
            }
            Acquire::LeaseGone => {
                session = None;
                continue;
            }
            Acquire::Unknown => {
                // It may have been granted: this lease is never used again, and is ended.
                if let Some(s) = session.take() {
                    drop(s.keeper);
                    sh.revoke(&http, &mut rng, s.lease).await;
                }
                continue;
            }
        };
        let client = format!("{tag}/{owner}");
        sh.record_grant(&client, &name, token, lease);
        if let Some(m) = sh.log.lock().unwrap().leaders.get_mut(&name) {
            m.insert(token, Leadership { owner: owner.clone(), values: vec![value.clone()] });
        }
        if session.is_none() {
            // A lease the server made: ours to keep alive and mark now.
            let keeper = sh.keep(lease);
            let marked = sh.put_marker(&http, &mut rng, lease).await;
            session = Some(Session { lease, uses: 0, marked, keeper });
        }
        if let Some(s) = session.as_mut() {
            s.uses += 1;
        }
        sh.access(&name, &client, token);
        if rng.gen_bool(0.5) {
            sh.fence_probe(&http, &mut rng, &name, &client, token).await;
        }
        if t.is_election() && rng.gen_bool(0.5) {
            for k in 1..=rng.gen_range(1..=2) {
                let v = format!("{value}-p{k}");
                if !sh.proclaim(&http, &mut rng, &name, &owner, token, &v).await {
                    break;
                }
                nap(&sh, Duration::from_millis(rng.gen_range(20..=100))).await;
            }
        }
        nap(&sh, Duration::from_millis(rng.gen_range(0..=w.max_hold.as_millis() as u64))).await;
        if !sh.stopped() && rng.gen_bool(w.pause_chance) {
            // Stop keeping the lease alive and sleep past it, then come back.
            sh.count(|c| c.pauses += 1);
            session = None;
            if nap(&sh, w.ttl + Duration::from_millis(1500)).await {
                if !sh.access(&name, &client, token) {
                    sh.count(|c| c.stale_refused += 1);
                }
                sh.fence_probe(&http, &mut rng, &name, &client, token).await;
            }
            sh.release(&http, &mut rng, &t, &client, &owner).await;
            continue;
        }
        if rng.gen_bool(0.5) {
            sh.access(&name, &client, token);
        }
        match rng.gen_range(0..100) {
            0..=69 => sh.release(&http, &mut rng, &t, &client, &owner).await,
            70..=84 => {
                if let Some(s) = session.take() {
                    drop(s.keeper);
                    sh.revoke(&http, &mut rng, s.lease).await;
                }
            }
            _ => {
                session = None;
                sh.count(|c| c.lapses += 1);
            }
        }
    }
    // Stopped: whatever is held is ended (a release, or the lease left to lapse).
    drop(session);
}

/// Follows election `name` on `first` (again after every error, on `first` when it is
/// up, else on another node), recording each connection's messages.
async fn observe_election(sh: Arc<LockShared>, name: String, first: String, log: Arc<Mutex<ObserverLog>>) {
    let http = crate::support::watch_client::stream_client();
    let mut url = first.clone();
    loop {
        let req = http
            .get(format!("{}/v1/elections/{name}/observe", url.trim_end_matches('/')))
            .header("Accept", "application/x-ndjson");
        if let Ok(mut resp) = req.send().await {
            if resp.status().as_u16() == 200 {
                sh.count(|c| c.observe_connections += 1);
                let conn = {
                    let mut l = log.lock().unwrap();
                    l.connections.push((url.clone(), Vec::new()));
                    l.connections.len() - 1
                };
                let mut buf: Vec<u8> = Vec::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.extend_from_slice(&chunk);
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let text = String::from_utf8_lossy(&line);
                        match parse_observed(text.trim()) {
                            Ok(m) => log.lock().unwrap().connections[conn].1.push(m),
                            Err(e) => sh.anomaly(format!("observe {name} on {url}: {e}")),
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let urls = (sh.endpoints)();
        url = if urls.contains(&first) || urls.is_empty() {
            first.clone()
        } else {
            urls[rand::thread_rng().gen_range(0..urls.len())].clone()
        };
    }
}

/// One NDJSON line of an observe stream.
fn parse_observed(line: &str) -> Result<Observed, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    if let Some(l) = v.get("leader") {
        let (Some(owner), Some(token), Some(value), Some(revision)) =
            (l["owner"].as_str(), l["fencing_token"].as_u64(), l["value"].as_str(), l["revision"].as_u64())
        else {
            return Err(format!("a leader message without owner, fencing_token, value or revision: {line}"));
        };
        return Ok(Observed::Leader { owner: owner.into(), token, value: value.into(), revision });
    }
    if let Some(n) = v.get("no_leader") {
        let revision =
            n["revision"].as_u64().ok_or_else(|| format!("no_leader without a revision: {line}"))?;
        return Ok(Observed::NoLeader { revision });
    }
    Err(format!("neither leader nor no_leader: {line}"))
}

impl LockRun {
    /// Stops the holders: what they hold is ended at once, nobody keeps a lease alive.
    pub fn stop(&self) {
        let mut at = self.shared.stopped_at.lock().unwrap();
        at.get_or_insert_with(Instant::now);
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Stops (if not yet), waits for every lease to end and every lock and election to be
    /// free, reads the leases' ends, waits for every observer to show the final state, and
    /// checks everything. `Err` carries the violation (or what never settled).
    pub async fn finish(self) -> Result<LockSummary, String> {
        self.stop();
        let sh = self.shared.clone();
        let w = &sh.w;
        for h in self.holders {
            let _ = h.await;
        }
        let deadline = Instant::now() + w.drain_timeout;
        let http = crate::support::credentials::http(Duration::from_secs(3));
        // Every lease ends: its marker goes, and nobody holds or waits for anything.
        let target = loop {
            let mut busy: Vec<String> = Vec::new();
            let dump = linearizable_dump(&sh.endpoints, &w.leases_prefix(), Duration::from_secs(5)).await;
            match &dump {
                Ok((_, kvs)) if kvs.is_empty() => {}
                Ok((_, kvs)) => busy.push(format!("{} markers left (first {})", kvs.len(), kvs[0].0)),
                Err(e) => busy.push(e.clone()),
            }
            for (t, _) in &w.targets {
                let path = match t {
                    Contended::Lock { name, .. } => format!("/v1/locks/{name}"),
                    Contended::Election { name } => format!("/v1/elections/{name}"),
                };
                let urls = (sh.endpoints)();
                let Some(url) = urls.first() else {
                    busy.push("no node up".into());
                    break;
                };
                match http.get_path(url, &path).await {
                    Ok(r) if t.is_election() && r.status == 404 && r.error_code() == Some("no_leader") => {}
                    Ok(r)
                        if !t.is_election()
                            && r.status == 200
                            && r.body["holders"].as_array().is_some_and(|a| a.is_empty())
                            && r.body["waiters"].as_array().is_some_and(|a| a.is_empty()) => {}
                    Ok(r) => busy.push(format!("GET {path}: {} {}", r.status, r.text)),
                    Err(e) => busy.push(format!("GET {path}: {e}")),
                }
            }
            if busy.is_empty() {
                break dump.expect("checked above").0;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the leases of the lock workload did not all end (and free every lock and election) within {:?} of the stop: {}",
                    w.drain_timeout,
                    busy.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The markers' deletes: the revisions at which the leases ended.
        let spec = WatchSpec::new(&w.leases_prefix())
            .recursive()
            .starting_at(sh.start_revision + 1)
            .ndjson()
            .resume_by(ResumeBy::StartRevision);
        let watch = WatchClient::new("lock-markers", spec, WatchClock::new());
        watch.follow(sh.endpoints.clone(), None);
        let covered = watch
            .wait_covered(
                target,
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5)),
            )
            .await;
        let rec = watch.stop();
        covered
            .map_err(|e| format!("the watch of the lease markers did not reach revision {target}: {e}"))?;
        if !rec.protocol_errors.is_empty() {
            return Err(format!("the watch of the lease markers broke the protocol:\n{}", rec.describe()));
        }
        let mut expiries: Vec<LeaseExpiry> = Vec::new();
        for m in &rec.stream.messages {
            if let super::watch::WatchMessage::Change { revision, events } = m {
                for e in events.iter().filter(|e| e.kind == super::watch::EventType::Delete) {
                    let id = e.key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
                    match id {
                        Some(lease) => expiries.push(LeaseExpiry { lease, revision: *revision }),
                        None => sh.anomaly(format!("a marker delete of an unexpected key: {e:?}")),
                    }
                }
            }
        }
        // Every observer shows the final state: nobody leads.
        let last = Observed::NoLeader { revision: target };
        let until = Instant::now() + Duration::from_secs(20);
        for (log, _, _) in &self.observers {
            while !log.lock().unwrap().last().is_some_and(|m| m.same_state(&last)) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut observers: Vec<(String, ObserverLog)> = Vec::new();
        for (log, name, task) in self.observers {
            task.abort();
            observers.push((name, log.lock().unwrap().clone()));
        }

        let mut guard = sh.log.lock().unwrap();
        let log = &mut *guard;
        let ended: std::collections::BTreeSet<u64> = expiries.iter().map(|e| e.lease).collect();
        for id in &log.markers {
            if !ended.contains(id) {
                let what =
                    format!("lease {id}'s marker was written but its delete never came through the watch");
                log.anomalies.push(what);
            }
        }
        if !log.anomalies.is_empty() {
            let n = log.anomalies.len();
            let first: Vec<String> = log.anomalies.iter().take(10).cloned().collect();
            return Err(format!("{n} answers of the lock API broke its contract:\n{}", first.join("\n")));
        }
        log.history.expiries = expiries;
        // A holding's end is known when its release was acknowledged or its lease's end seen.
        let released: std::collections::BTreeSet<String> =
            log.history.releases.iter().map(|r| r.client.clone()).collect();
        let open: std::collections::HashSet<String> = log
            .history
            .grants
            .iter()
            .filter(|g| {
                !(released.contains(&g.client)
                    || (log.markers.contains(&g.lease) && ended.contains(&g.lease)))
            })
            .map(|g| g.client.clone())
            .collect();
        log.facts.open_ends = open;
        let report = super::fencing::check_locks_with(&log.history, &log.facts).map_err(|v| v.to_string())?;
        let mut observed = Vec::new();
        for (t, _) in w.targets.iter().filter(|(t, _)| t.is_election()) {
            let logs: Vec<ObserverLog> =
                observers.iter().filter(|(n, _)| n == t.name()).map(|(_, l)| l.clone()).collect();
            let leaders = log.leaders.get(t.name()).cloned().unwrap_or_default();
            let r = super::fencing::check_observations(
                &log.history,
                &log.facts,
                t.name(),
                &leaders,
                &logs,
                &last,
            )
            .map_err(|v| v.to_string())?;
            observed.push((t.name().to_string(), r));
        }
        Ok(LockSummary { report, observed, counts: log.counts.clone(), lease_ends: ended.len() })
    }
}
