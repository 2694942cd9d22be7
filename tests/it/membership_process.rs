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

/// [`call`], sent again while another membership change (a member publishing its own
/// record) is under way, as the error says to.
async fn change(c: &Cluster, on: u64, method: Method, path: &str, body: Option<Value>) -> Reply {
    for _ in 0..50 {
        let r = call(c, on, method.clone(), path, body.clone()).await;
        if r.error_code() != Some("membership_change_in_progress") {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{method} {path}: another membership change stayed under way for 5 s\n{}", c.logs())
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

    // Its disk lost: joining again as node 4 is refused (it ran with data) ...
    c.stop(4, Duration::from_secs(5));
    std::fs::remove_dir_all(c.data_dir(4)).unwrap();
    let (status, log) = c.start_expecting_exit(4, Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("already a member"), "{log}");
    assert!(log.contains("--rebuild-from-peers"), "{log}");
    // ... and rebuilding it from its peers brings it back.
    std::fs::remove_dir_all(c.data_dir(4)).unwrap();
    c.set_command_line(4, [c.command_line(4), vec!["--rebuild-from-peers".into()]].concat());
    c.restart(4).await;
    eventually(&c, Duration::from_secs(30), "the rebuilt member to be ready", || async {
        let r = c.http().get_path(&c.client_url(4), "/readyz").await.map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.text)
        }
    })
    .await;
    let r = c
        .http()
        .get(&c.client_url(4), "/k/49", crate::support::process::Consistency::Serializable)
        .await
        .unwrap();
    assert_eq!(r.value(), Some("v"), "{}", r.text);
    assert!(c.log_tail(4, 200).contains("rebuilt from the peers"), "{}", c.log_tail(4, 60));
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
    // (Once every member has published its client URL: a change of its own.)
    eventually(&c, Duration::from_secs(10), "every member's client URL", || async {
        let v = c.cluster_view(leader).await?;
        let published = v["members"].as_array().is_some_and(|m| m.iter().all(|m| m["client_url"] != ""));
        if published {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    // (A record just published may be in the leader's view a moment before it commits.)
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    // Then the next change goes through, once the removal is done (or lost with the
    // leader that proposed it: the followers may have elected another while paused).
    eventually(&c, Duration::from_secs(30), "the next change to go through", || async {
        let (leader, _) = c.leader().await;
        let r = call(&c, leader, Method::POST, "/v1/cluster/members", Some(body.clone())).await;
        match (r.status, r.error_code()) {
            (201, _) => Ok(()),
            (409, Some("membership_change_in_progress")) | (503 | 504, _) => Err(r.text),
            _ => panic!("{}", r.text),
        }
    })
    .await;
    // The removal took effect whole or not at all: the member is a voter, or gone.
    let (leader, _) = c.leader().await;
    let got = roles(&c, leader).await.unwrap();
    let voters: Vec<u64> = got.iter().filter(|(_, r)| r == "voter").map(|(i, _)| *i).collect();
    assert!(voters.len() == 3 || (voters.len() == 2 && !voters.contains(&others[0])), "{got:?}");
    assert!(got.contains(&(9, "learner".to_string())), "{got:?}");
}

/// Waits until node `id`'s process has exited by itself, and returns its log.
async fn exited(c: &Cluster, id: u64, within: Duration) -> String {
    eventually(c, within, &format!("node {id} to stop"), || async {
        if c.is_live(id) {
            Err("still running".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    c.log_tail(id, 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_to_three_members_under_a_workload() {
    use crate::jepsen::history::Outcome;
    use crate::jepsen::linearizability;
    use crate::jepsen::recorder::{run_register, Endpoints, Recorder, RegisterWorkload};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let c = Arc::new(
        Cluster::start(ClusterOptions {
            nodes: 5,
            delayed: vec![4, 5],
            joiners: vec![4, 5],
            ..ClusterOptions::default()
        })
        .await,
    );
    c.leader().await;
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints: Endpoints = {
        let c = c.clone();
        Arc::new(move || c.live_ids().into_iter().map(|id| c.client_url(id)).collect())
    };
    let seed = 0x3553;
    println!("seed {seed}");
    let workload = RegisterWorkload {
        keys: (0..3).map(|i| format!("/members/r{i}")).collect(),
        clients: 4,
        ops_per_client: 100_000,
        think: Duration::from_millis(10),
        request_timeout: Duration::from_secs(3),
        seed,
    };
    let clients = tokio::spawn(run_register(rec.clone(), endpoints, workload, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3 -> 5: two new processes join, catch up and are promoted, with no manual step.
    c.start_node(4).await;
    c.start_node(5).await;
    let five: Vec<(u64, &str)> = (1..=5).map(|id| (id, "voter")).collect();
    wait_roles(&c, 1, &five, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 5 -> 3: a follower, then the leader, each removed through another member.
    let (leader, _) = c.leader().await;
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    let via = (1..=5).find(|&id| id != leader && id != follower).unwrap();
    for gone in [follower, leader] {
        let r = change(&c, via, Method::DELETE, &format!("/v1/cluster/members/{gone}"), None).await;
        assert_eq!(r.status, 200, "removing {gone}: {}", r.text);
        let log = exited(&c, gone, Duration::from_secs(30)).await;
        assert!(log.contains(&format!("this node (id {gone}) was removed from the cluster")), "{log}");
    }
    let left: Vec<u64> = (1..=5).filter(|id| *id != leader && *id != follower).collect();
    let three: Vec<(u64, &str)> = left.iter().map(|id| (*id, "voter")).collect();
    wait_roles(&c, via, &three, Duration::from_secs(20)).await;
    let (new_leader, _) = c.leader().await;
    assert!(left.contains(&new_leader));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();

    // Every acknowledged write is still there: final reads through every member are part
    // of the history the checker sees.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for (i, id) in left.iter().enumerate() {
        for k in 0..3 {
            let op = rec
                .invoke(
                    &http,
                    &c.client_url(*id),
                    10_000 + i,
                    &format!("/members/r{k}"),
                    crate::jepsen::history::Call::Read,
                )
                .await;
            assert!(matches!(op.outcome, Outcome::Ok { .. }), "a final read on node {id}: {op:?}");
        }
    }
    let history = rec.history();
    let ok = history.ops.iter().filter(|o| matches!(o.outcome, Outcome::Ok { .. })).count();
    assert!(ok >= 200, "only {ok} ops were acknowledged: the history checks little");
    match linearizability::check(&history) {
        Ok(report) => println!("3 -> 5 -> 3: linearizable: {report}"),
        Err(v) => panic!("seed {seed}: the history is not linearizable: {v}"),
    }
    linearizability::check_revisions(&history).unwrap_or_else(|v| panic!("revisions: {v}"));

    // A removed node refuses to start again, with the same message; on an empty data dir,
    // the cluster tells it so.
    for gone in [follower, leader] {
        let (status, log) = c.start_expecting_exit(gone, Duration::from_secs(20)).await;
        assert!(!status.success());
        assert!(log.contains(&format!("this node (id {gone}) was removed from the cluster")), "{log}");
        std::fs::remove_dir_all(c.data_dir(gone)).unwrap();
        let (status, log) = c.start_expecting_exit(gone, Duration::from_secs(20)).await;
        assert!(!status.success());
        assert!(log.contains("was removed"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moved_to_a_new_peer_url_keeps_serving() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let moved = (1..=3).find(|&id| id != leader).unwrap();
    let new_peer = format!("127.0.0.1:{}", crate::support::process::free_ports(1)[0]);
    let r = change(
        &c,
        leader,
        Method::PUT,
        &format!("/v1/cluster/members/{moved}"),
        Some(json!({"peer_url": format!("http://{new_peer}")})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["peer_url"], format!("http://{new_peer}"));
    // Restarted on the new address (--initial-cluster, which names the old one, only
    // matters on a first start).
    c.stop(moved, Duration::from_secs(5));
    let args = crate::support::process::without_flag(&c.command_line(moved), "--initial-cluster");
    c.set_command_line(moved, crate::support::process::with_flag(&args, "--listen-peer", &new_peer));
    c.restart(moved).await;
    let r = c.http().put(&c.client_url(leader), "/moved/k", "v1").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(
        &c,
        Duration::from_secs(15),
        "the moved member to take entries at its new address",
        || async {
            let r = c
                .http()
                .get(&c.client_url(moved), "/moved/k", crate::support::process::Consistency::Serializable)
                .await
                .map_err(|e| e.to_string())?;
            if r.value() == Some("v1") {
                Ok(())
            } else {
                Err(r.text)
            }
        },
    )
    .await;
    // It serves writes too, and every member records the new address.
    let r = c.http().put(&c.client_url(moved), "/moved/k", "v2").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    for id in 1..=3 {
        let v = c.cluster_view(id).await.unwrap();
        let m = v["members"].as_array().unwrap().iter().find(|m| m["id"] == moved).cloned().unwrap();
        assert_eq!(m["peer_url"], format!("http://{new_peer}"), "node {id}: {v}");
    }

    // The leader removes itself (the request sent to it): answered, then it stops, and the
    // other two elect a leader and serve.
    let (leader, _) = c.leader().await;
    let r = change(&c, leader, Method::DELETE, &format!("/v1/cluster/members/{leader}"), None).await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("voter")), "{}", r.text);
    let log = exited(&c, leader, Duration::from_secs(30)).await;
    assert!(log.contains(&format!("this node (id {leader}) was removed from the cluster")), "{log}");
    let (next, _) = c.leader().await;
    assert_ne!(next, leader);
    let r = c.http().put(&c.client_url(next), "/moved/after", "v3").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Runs `palisade member --endpoints <ep> <args...>`.
fn member_cli(ep: &str, args: &[&str]) -> crate::support::process::Exited {
    let mut v = vec!["member".to_string(), "--endpoints".to_string(), ep.to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    crate::support::process::run_to_exit(&v, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_member_commands() {
    let c = Cluster::start(ClusterOptions {
        nodes: 2,
        delayed: vec![2],
        joiners: vec![2],
        ..ClusterOptions::default()
    })
    .await;
    c.leader().await;
    let ep = c.client_url(1);
    let ok = |e: &crate::support::process::Exited| e.status.is_some_and(|s| s.success());
    // Added by hand first: the node then starts with --join and finds itself added.
    let e = member_cli(&ep, &["add", "2", "--peer-url", &c.peer_url(2), "--client-url", &c.client_url(2)]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("added member 2 role=learner peer_url="), "{e:?}");
    let e = member_cli(&ep, &["promote", "2"]);
    assert_eq!(e.status.and_then(|s| s.code()), Some(1), "{e:?}");
    assert!(e.stderr.contains("learner_behind"), "{e:?}");
    c.start_node(2).await;
    wait_roles(&c, 1, &[(1, "voter"), (2, "voter")], Duration::from_secs(30)).await;
    let e = member_cli(&ep, &["ls"]);
    assert!(ok(&e), "{e:?}");
    let lines: Vec<&str> = e.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("ROLE") && lines[0].contains("PEER URL"),
        "{e:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("2 ") && l.contains("voter") && l.contains(&c.peer_url(2))),
        "{e:?}"
    );
    let e = member_cli(&ep, &["-o", "json", "ls"]);
    let v: Value = serde_json::from_str(&e.stdout).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(2), "{e:?}");
    let e = member_cli(&ep, &["-o", "json", "update", "2", "--client-url", "http://127.0.0.1:9"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&e.stdout).unwrap()["client_url"],
        "http://127.0.0.1:9",
        "{e:?}"
    );
    // Bad input: refused before anything is sent, or by the server; nothing changes.
    let e = member_cli(&ep, &["update", "2"]);
    assert_eq!(e.status.and_then(|s| s.code()), Some(2), "clap refuses an update without a URL: {e:?}");
    let e = member_cli(&ep, &["add", "3", "--peer-url", "ftp://x:1", "--client-url", "http://127.0.0.1:1"]);
    assert!(e.stderr.contains("invalid_argument"), "{e:?}");
    let e = member_cli(&ep, &["rm", "7"]);
    assert!(e.stderr.contains("member_not_found"), "{e:?}");
    let e = member_cli(&ep, &["rm", "7", "--missing-ok"]);
    assert!(ok(&e) && e.stdout == "not a member: 7\n", "{e:?}");
    let e = member_cli(&ep, &["rm", "http://127.0.0.1:1"]);
    assert_eq!(e.status.and_then(|s| s.code()), Some(1), "{e:?}");
    assert!(e.stderr.contains("no member has the peer URL"), "{e:?}");
    let e = member_cli(&ep, &["-o", "json", "rm", "http://127.0.0.1:1", "--missing-ok"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(serde_json::from_str::<Value>(&e.stdout).unwrap()["removed"], false, "{e:?}");
    let e = member_cli(&ep, &["rm", "not a url"]);
    assert!(e.stderr.contains("neither a node id nor a peer URL"), "{e:?}");
    assert_eq!(roles(&c, 1).await.unwrap().len(), 2);
    // Removed (by its peer URL): the process stops, and the id is never given again.
    let e = member_cli(&ep, &["rm", &c.peer_url(2)]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("removed member 2 role=voter"), "{e:?}");
    let log = exited(&c, 2, Duration::from_secs(30)).await;
    assert!(log.contains("this node (id 2) was removed from the cluster"), "{log}");
    let e = member_cli(&ep, &["add", "2", "--peer-url", &c.peer_url(2), "--client-url", &c.client_url(2)]);
    assert!(e.stderr.contains("member_id_retired"), "{e:?}");
}

/// POSTs `body` to node `to`'s join route, signed with `key` as node `from` (addressed to
/// node `addressed`: 0 for "whichever member answers").
async fn join_raw(
    c: &Cluster,
    key: &palisade::peer::PeerKey,
    from: u64,
    to: u64,
    addressed: u64,
    body: Vec<u8>,
) -> (u16, Value) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut req = reqwest::Client::new().post(format!("{}/raft/join", c.peer_url(to)));
    for (name, value) in key.sign(from, addressed, now, &body) {
        req = req.header(name, value);
    }
    let resp = req.body(body).timeout(Duration::from_secs(10)).send().await.expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_route_takes_only_joins_from_holders_of_the_secret() {
    use palisade::peer::{JoinRequest, PeerKey, PeerRequest};
    let c = Cluster::start(ClusterOptions { nodes: 1, ..ClusterOptions::default() }).await;
    c.leader().await;
    let key = PeerKey::load(&c.peer_secret_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "another-secret-of-enough-bytes\n").unwrap();
    let stranger = PeerKey::load(&wrong).unwrap();
    let away = format!("http://127.0.0.1:{}", crate::support::process::free_ports(1)[0]);
    let join = |id: u64| {
        serde_json::to_vec(&PeerRequest::Join(JoinRequest {
            id,
            peer_url: away.clone(),
            client_url: "http://127.0.0.1:1".into(),
            incarnation: 7,
            rebuild: false,
        }))
        .unwrap()
    };
    let before = roles(&c, 1).await.unwrap();
    // Another secret: 401, nothing read.
    let (status, body) = join_raw(&c, &stranger, 8, 1, 0, join(8)).await;
    assert_eq!(status, 401, "{body}");
    // Addressed to another member than this one (or to "any", 0, which is accepted).
    let (status, body) = join_raw(&c, &key, 8, 1, 5, join(8)).await;
    assert_eq!(status, 401, "{body}");
    // Only joins and removal checks: a forwarded write from a stranger is refused.
    let (status, body) =
        join_raw(&c, &key, 8, 1, 0, serde_json::to_vec(&PeerRequest::ReadIndex).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    // Bounded body.
    let (status, body) = join_raw(&c, &key, 8, 1, 0, vec![b' '; 64 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    // A node joins only as itself.
    let (status, body) = join_raw(&c, &key, 8, 1, 0, join(9)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("only as itself"), "{body}");
    assert_eq!(roles(&c, 1).await.unwrap(), before, "nothing changed");
    // A join of its own: added as a learner; the same join again (a retry) is answered alike.
    for _ in 0..2 {
        let (status, body) = join_raw(&c, &key, 8, 1, 0, join(8)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["join"]["Ok"]["members"]["8"].is_object(), "{body}");
    }
    assert!(roles(&c, 1).await.unwrap().contains(&(8, "learner".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_over_peer_mutual_tls_without_a_secret() {
    use crate::support::tls::{ClusterTls, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let tls = ClusterTls::generate(&ca, dir.path(), 3);
    let c = Cluster::start(ClusterOptions {
        nodes: 3,
        delayed: vec![3],
        joiners: vec![3],
        tls: Some(tls),
        ..ClusterOptions::default()
    })
    .await;
    assert!(!c.command_line(3).iter().any(|a| a == "--peer-secret-file"), "mutual TLS alone");
    assert!(c.command_line(3).iter().any(|a| a.starts_with("https://")), "{:?}", c.command_line(3));
    c.leader().await;
    c.start_node(3).await;
    wait_roles(&c, 1, &[(1, "voter"), (2, "voter"), (3, "voter")], Duration::from_secs(30)).await;
    let r = c.http().put(&c.client_url(3), "/tls/joined", "yes").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}
