//! Live membership changes on real processes: nodes joining with `--join` and promoted
//! once caught up, members removed (the leader too) while a workload runs, a member moved
//! to a new peer URL, a removed node stopping and refusing to start again, and every bad
//! membership request refused with a clear error and nothing changed.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::process::{eventually, Cluster, ClusterOptions, Reply};

/// Each member's role in node `id`'s view (`id -> "voter" | "learner"`).
async fn roles(c: &Cluster, id: u64) -> Result<Vec<(u64, String)>, String> {
    let v = c.cluster_view(id).await?;
    Ok(v["members"]
        .as_array()
        .ok_or("no members")?
        .iter()
        .map(|m| (m["id"].as_u64().unwrap_or(0), m["role"].as_str().unwrap_or("").to_string()))
        .collect())
}

/// Waits until node `on` sees exactly `want` (id, role) pairs.
async fn wait_roles(c: &Cluster, on: u64, want: &[(u64, &str)], within: Duration) {
    let want: Vec<(u64, String)> = want.iter().map(|(i, r)| (*i, r.to_string())).collect();
    eventually(c, within, &format!("node {on} to see members {want:?}"), || {
        let want = want.clone();
        async move {
            let got = roles(c, on).await?;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await
}

async fn call(c: &Cluster, on: u64, method: Method, path: &str, body: Option<Value>) -> Reply {
    c.http().send(method, &c.client_url(on), path, body.as_ref()).await.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_catches_up_and_is_promoted() {
    let c = Cluster::start(ClusterOptions {
        nodes: 4,
        delayed: vec![4],
        joiners: vec![4],
        ..ClusterOptions::default()
    })
    .await;
    let (leader, _) = c.leader().await;
    for i in 0..50 {
        let r = c.http().put(&c.client_url(leader), &format!("/k/{i}"), "v").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    c.start_node(4).await;
    wait_roles(&c, 1, &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "voter")], Duration::from_secs(30))
        .await;
    // The new member serves reads of what was written before it joined.
    let r = c
        .http()
        .get(&c.client_url(4), "/k/49", crate::support::process::Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    // A restart resumes (no second join).
    c.stop(4, Duration::from_secs(5));
    c.restart(4).await;
    wait_roles(&c, 4, &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "voter")], Duration::from_secs(20))
        .await;
    assert_eq!(
        c.log_tail(4, 400).matches("joined the cluster as a learner").count(),
        1,
        "{}",
        c.log_tail(4, 100)
    );
    let _ = call(&c, 1, Method::GET, "/v1/cluster", None).await;
}

/// Asserts `r` is the error `status` / `code`.
fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.error_code()), (status, Some(code)), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused_and_change_nothing() {
    let c = Cluster::start(ClusterOptions { nodes: 1, ..ClusterOptions::default() }).await;
    c.leader().await;
    let before = roles(&c, 1).await.unwrap();
    let away = format!("http://127.0.0.1:{}", crate::support::process::free_ports(1)[0]);
    let add = |body: Value| call(&c, 1, Method::POST, "/v1/cluster/members", Some(body));
    let ok = json!({"id": 5, "peer_url": away, "client_url": "http://127.0.0.1:1"});
    // Bad input: 400, nothing added.
    refused(
        &add(json!({"id": 0, "peer_url": away, "client_url": "http://127.0.0.1:1"})).await,
        400,
        "invalid_argument",
    );
    refused(
        &add(json!({"id": 5, "peer_url": away, "client_url": "http://127.0.0.1:1", "role": "voter"})).await,
        400,
        "invalid_argument",
    );
    refused(&add(json!({"id": 5, "peer_url": away})).await, 400, "invalid_argument");
    refused(
        &add(json!({"id": 5, "peer_url": "not a url", "client_url": "http://127.0.0.1:1"})).await,
        400,
        "invalid_argument",
    );
    refused(
        &add(json!({"id": 5, "peer_url": "http://127.0.0.1:1/path", "client_url": "http://127.0.0.1:1"}))
            .await,
        400,
        "invalid_argument",
    );
    refused(
        &add(json!({"id": 5, "peer_url": "https://127.0.0.1:1", "client_url": "http://127.0.0.1:1"})).await,
        400,
        "invalid_argument",
    );
    refused(
        &add(json!({"id": -1, "peer_url": away, "client_url": "http://127.0.0.1:1"})).await,
        400,
        "invalid_argument",
    );
    let r = c
        .http()
        .client
        .post(format!("{}/v1/cluster/members", c.client_url(1)))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    refused(
        &call(&c, 1, Method::POST, "/v1/cluster/members?force", Some(ok.clone())).await,
        400,
        "invalid_argument",
    );
    // Conflicts: 409 with their code.
    refused(
        &add(json!({"id": 1, "peer_url": away, "client_url": "http://127.0.0.1:1"})).await,
        409,
        "member_exists",
    );
    refused(
        &add(json!({"id": 7, "peer_url": c.peer_url(1), "client_url": "http://127.0.0.1:1"})).await,
        409,
        "peer_url_in_use",
    );
    // Unknown ids: 404; bad ids: 400.
    refused(&call(&c, 1, Method::POST, "/v1/cluster/members/9/promote", None).await, 404, "member_not_found");
    refused(&call(&c, 1, Method::DELETE, "/v1/cluster/members/9", None).await, 404, "member_not_found");
    refused(
        &call(&c, 1, Method::PUT, "/v1/cluster/members/9", Some(json!({"client_url": "http://127.0.0.1:2"})))
            .await,
        404,
        "member_not_found",
    );
    refused(&call(&c, 1, Method::POST, "/v1/cluster/members/0/promote", None).await, 400, "invalid_argument");
    refused(&call(&c, 1, Method::DELETE, "/v1/cluster/members/abc", None).await, 400, "invalid_argument");
    refused(
        &call(&c, 1, Method::POST, "/v1/cluster/members/1/promote", Some(json!({"now": true}))).await,
        400,
        "invalid_argument",
    );
    // The voter: promoting it, removing the last voter, moving it badly.
    refused(&call(&c, 1, Method::POST, "/v1/cluster/members/1/promote", None).await, 409, "already_voter");
    refused(&call(&c, 1, Method::DELETE, "/v1/cluster/members/1", None).await, 409, "last_voter");
    refused(
        &call(&c, 1, Method::PUT, "/v1/cluster/members/1", Some(json!({}))).await,
        400,
        "invalid_argument",
    );
    refused(
        &call(&c, 1, Method::PUT, "/v1/cluster/members/1", Some(json!({"peer_url": "ftp://127.0.0.1:3"})))
            .await,
        400,
        "invalid_argument",
    );
    refused(
        &call(&c, 1, Method::PUT, "/v1/cluster/members/1", Some(json!({"peer": "http://127.0.0.1:3"}))).await,
        400,
        "invalid_argument",
    );
    assert_eq!(roles(&c, 1).await.unwrap(), before, "nothing changed");

    // A learner that never answers is added, but not promoted.
    let r = add(ok.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!((r.body["id"].as_u64(), r.body["role"].as_str()), (Some(5), Some("learner")), "{}", r.text);
    let r = call(&c, 1, Method::POST, "/v1/cluster/members/5/promote", None).await;
    refused(&r, 409, "learner_behind");
    assert!(r.body["error"]["behind"].as_u64().is_some_and(|b| b > 0), "{}", r.text);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("behind"), "{}", r.text);
    // Adding it again with other URLs: it exists.
    refused(
        &add(json!({"id": 5, "peer_url": "http://127.0.0.1:3", "client_url": "http://127.0.0.1:1"})).await,
        409,
        "member_exists",
    );
    // Removed, its id is never given again.
    let r = call(&c, 1, Method::DELETE, "/v1/cluster/members/5", None).await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("learner")), "{}", r.text);
    refused(&add(ok.clone()).await, 409, "member_id_retired");
    assert_eq!(roles(&c, 1).await.unwrap(), before);
    // ... also after a restart (the retired ids are replicated state).
    c.stop(1, Duration::from_secs(5));
    c.restart(1).await;
    c.leader().await;
    refused(&add(ok).await, 409, "member_id_retired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_membership_change_at_a_time() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    // With both followers paused, a removal cannot commit: its joint membership stays.
    c.pause(others[0]);
    c.pause(others[1]);
    let r = call(&c, leader, Method::DELETE, &format!("/v1/cluster/members/{}", others[0]), None).await;
    assert!(matches!(r.status, 503 | 504), "{}", r.text);
    let away = format!("http://127.0.0.1:{}", crate::support::process::free_ports(1)[0]);
    let body = json!({"id": 9, "peer_url": away, "client_url": "http://127.0.0.1:1"});
    let r = call(&c, leader, Method::POST, "/v1/cluster/members", Some(body.clone())).await;
    refused(&r, 409, "membership_change_in_progress");
    c.resume(others[0]);
    c.resume(others[1]);
    // Once it is done, the next change goes through.
    eventually(&c, Duration::from_secs(20), "the removal to finish", || async {
        let (leader, _) = c.leader().await;
        let got = roles(&c, leader).await?;
        if got.iter().any(|(id, _)| *id == others[0]) {
            Err(format!("{got:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    // (A change still being completed is refused, with the code that says so, until it is.)
    eventually(&c, Duration::from_secs(10), "the next change to go through", || async {
        let (leader, _) = c.leader().await;
        let r = call(&c, leader, Method::POST, "/v1/cluster/members", Some(body.clone())).await;
        match (r.status, r.error_code()) {
            (201, _) => Ok(()),
            (409, Some("membership_change_in_progress")) => Err(r.text),
            _ => panic!("{}", r.text),
        }
    })
    .await;
}
