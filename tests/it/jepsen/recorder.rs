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

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
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
    let http = crate::support::process::Http::new(Duration::from_secs(3));
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
