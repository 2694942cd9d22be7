//! The history recorder: concurrent clients issue real HTTP requests against a real
//! cluster and record what they asked and saw, on one monotonic clock.
//!
//! Classification (the contract under test): 200 is `Ok`; a 4xx (including 409
//! `condition_failed`) and a 503 `unavailable` are `Fail` (the API promises nothing took
//! effect); a refused connection is `Fail` (the request never left); a 504, any other 5xx,
//! a reset, or a client-side timeout is `Unknown`. An `Unknown` op is never retried: the
//! client abandons its process id and continues as a fresh process, as Jepsen does, so
//! every process stays sequential.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::{Call, History, Op, Outcome, Value};

/// Collects ops from every client.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    next_id: AtomicUsize,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
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
