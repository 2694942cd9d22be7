//! Retried writes and retained history on real processes: an idempotent write whose
//! leader is killed (`kill -9`) before or after it answers is retried on another node and
//! applied exactly once; a snapshot and a restart of every node keep the compaction floor,
//! the history above it, sequence counters, the idempotency table and the lease table.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::process::{Cluster, ClusterOptions};

/// Sends one write with an idempotency key; `None` when no reply came (outcome unknown).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: &Value,
    key: &str,
) -> Option<(u16, Value, bool)> {
    let r = http.request(method, url).header("idempotency-key", key).json(body).send().await.ok()?;
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let body = r.json().await.ok()?;
    Some((status, body, replayed))
}

/// Retries the write on every live node in turn until a node answers it with a success.
async fn until_done(
    c: &Cluster,
    http: &reqwest::Client,
    path: &str,
    body: &Value,
    key: &str,
) -> (Value, bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for id in c.live_ids() {
            let url = format!("{}{path}", c.client_url(id));
            if let Some((status, reply, replayed)) = send(http, reqwest::Method::POST, &url, body, key).await
            {
                if status == 201 || status == 200 {
                    return (reply, replayed);
                }
                assert!(matches!(status, 503 | 504 | 429), "{path}: unexpected {status} {reply}");
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: never answered\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn children(c: &Cluster, http: &reqwest::Client, parent: &str) -> Vec<String> {
    let (leader, _) = c.leader().await;
    let url = format!("{}/v1/kv{parent}?children", c.client_url(leader));
    let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
    v["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once_across_a_leader_kill() {
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--snapshot-every".into(), "100".into()],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    for round in 0..6u64 {
        let (leader, _) = c.leader().await;
        let parent = format!("/jobs/r{round}");
        let path = format!("/v1/kv{parent}?sequential");
        let body = json!({ "value": format!("job {round}") });
        let key = format!("round-{round}");
        let first = if round % 2 == 0 {
            // Killed while the write is in flight: the first reply may never come.
            let url = format!("{}{path}", c.client_url(leader));
            let (h, b, k) = (http.clone(), body.clone(), key.clone());
            let inflight = tokio::spawn(async move { send(&h, reqwest::Method::POST, &url, &b, &k).await });
            tokio::time::sleep(Duration::from_millis(round * 3)).await;
            c.kill_9(leader);
            inflight.await.unwrap()
        } else {
            // Answered, then the leader dies; a client that lost the answer retries anyway.
            let url = format!("{}{path}", c.client_url(leader));
            let r = send(&http, reqwest::Method::POST, &url, &body, &key).await;
            c.kill_9(leader);
            r
        };
        let (retry, replayed) = until_done(&c, &http, &path, &body, &key).await;
        if let Some((201, first, _)) = &first {
            assert!(replayed, "round {round}: the retry after an answered write must be a replay: {retry}");
            assert_eq!(&retry, first, "round {round}: the retry gets the first outcome");
        }
        c.restart(leader).await;
        let names = children(&c, &http, &parent).await;
        assert_eq!(
            names,
            ["00000000000000000001"],
            "round {round}: applied exactly once (first reply {first:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_restarts_keep_history_sequences_and_idempotency() {
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--snapshot-every".into(), "100".into()],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (leader, _) = c.leader().await;
    // Node `late` misses everything below and catches up from a snapshot.
    let late = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.kill_9(late);
    let base = c.client_url(leader);
    for _ in 0..3 {
        let r = http
            .post(format!("{base}/v1/kv/q?sequential"))
            .json(&json!({"value": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let put = |v: &str| json!({ "value": v });
    let r = http
        .put(format!("{base}/v1/kv/once"))
        .header("idempotency-key", "k1")
        .json(&put("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for i in 0..150 {
        let r = http.put(format!("{base}/v1/kv/h")).json(&put(&i.to_string())).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let cluster: Value = http.get(format!("{base}/v1/cluster")).send().await.unwrap().json().await.unwrap();
    let floor = cluster["revision"].as_u64().unwrap() - 20;
    let r = http
        .post(format!("{base}/v1/maintenance/compact"))
        .json(&json!({ "revision": floor }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for i in 150..300 {
        let r = http.put(format!("{base}/v1/kv/h")).json(&put(&i.to_string())).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // No key is left under /q: only the replicated counter knows where the sequence was.
    let r = http.delete(format!("{base}/v1/kv/q?recursive")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A lease with a key, and a revoked one.
    for id in [77, 78] {
        let r = http
            .post(format!("{base}/v1/leases"))
            .json(&json!({"ttl": "1h", "id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .put(format!("{base}/v1/kv/leased"))
        .json(&json!({"value": "l", "lease": 77}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.delete(format!("{base}/v1/leases/78")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Everyone down, then up again (the late node for the first time since the start).
    c.kill_all_9();
    for id in c.ids() {
        c.restart(id).await;
    }
    let (leader, _) = c.leader().await;
    let want_value_at_floor = json!((floor - 5).to_string()); // /h's value at revision r is r - 5
    for id in c.ids() {
        let base = c.client_url(id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v: Value = http.get(format!("{base}/v1/cluster")).send().await.unwrap().json().await.unwrap();
            if v["compact_revision"] == json!(floor) && v["revision"].as_u64() >= Some(floor + 170) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id} never caught up: {v}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let below = http
            .get(format!("{base}/v1/kv/h?revision={}&consistency=serializable", floor - 1))
            .send()
            .await
            .unwrap();
        assert_eq!(below.status(), 410, "node {id}");
        let at: Value = http
            .get(format!("{base}/v1/kv/h?revision={floor}&consistency=serializable"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(at["kv"]["value"], want_value_at_floor, "node {id}: history at the floor");
    }
    let base = c.client_url(leader);
    // The sequence goes on where it was; the idempotency key is still remembered.
    let r: Value = http
        .post(format!("{base}/v1/kv/q?sequential"))
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["kv"]["key"], json!("/q/00000000000000000004"));
    let r = http
        .put(format!("{base}/v1/kv/once"))
        .header("idempotency-key", "k1")
        .json(&put("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let r = http
        .put(format!("{base}/v1/kv/once"))
        .header("idempotency-key", "k1")
        .json(&put("2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // The lease and its key are still there, on every node; the revoked one stays revoked.
    for id in c.ids() {
        let base = c.client_url(id);
        let kv: Value = http
            .get(format!("{base}/v1/kv/leased?consistency=serializable"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(kv["kv"]["lease"], json!(77), "node {id}: {kv}");
        let l: Value = http.get(format!("{base}/v1/leases/77")).send().await.unwrap().json().await.unwrap();
        assert_eq!(l["key_count"], json!(1), "node {id}: {l}");
        assert!(l["remaining_ms"].as_u64().is_some_and(|ms| ms <= 3_600_000), "node {id}: {l}");
        let r = http.get(format!("{base}/v1/leases/78")).send().await.unwrap();
        assert_eq!(r.status(), 404, "node {id}");
    }
    let r = http.post(format!("{base}/v1/leases/77/keepalive")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
