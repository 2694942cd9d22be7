//! The CLI against running nodes: every client subcommand, its output, exit codes and
//! endpoint failover.

use crate::support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use support::process::{palisade_command, run_to_exit, Cluster, ClusterOptions, Exited};

/// Runs `palisade <group> --endpoints <endpoints> <rest...>`.
fn cli(endpoints: &str, args: &[&str]) -> Exited {
    let mut v = vec![args[0].to_string(), "--endpoints".to_string(), endpoints.to_string()];
    v.extend(args[1..].iter().map(|s| s.to_string()));
    run_to_exit(&v, Duration::from_secs(30))
}

fn ok(e: &Exited) -> bool {
    e.status.is_some_and(|s| s.success())
}

fn code(e: &Exited) -> Option<i32> {
    e.status.and_then(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_a_cluster() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let ep = c.client_url(follower);

    let e = cli(&ep, &["kv", "put", "/app/db/leader", "node-a:5432"]);
    assert!(ok(&e), "put: {e:?}");
    assert!(e.stdout.starts_with("OK revision="), "{e:?}");

    let e = cli(&ep, &["kv", "get", "/app/db/leader"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(e.stdout.trim_end(), "node-a:5432");

    let e = cli(&ep, &["kv", "-o", "json", "get", "/app/db/leader"]);
    assert!(ok(&e), "{e:?}");
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    assert_eq!(v["kv"]["value"], "node-a:5432");
    assert_eq!(v["kv"]["version"], 1);

    // A failed condition prints the current key and exits 1; nothing changes.
    let e = cli(&ep, &["kv", "put", "/app/db/leader", "node-b", "--if-version", "0"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stdout.contains("node-a:5432"), "{e:?}");
    let e = cli(&ep, &["kv", "get", "/app/db/leader"]);
    assert_eq!(e.stdout.trim_end(), "node-a:5432");

    // A value from stdin.
    let mut child = palisade_command(&[
        "kv".into(),
        "--endpoints".into(),
        ep.clone(),
        "put".into(),
        "/app/token".into(),
        "-".into(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cr3t").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = cli(&ep, &["kv", "get", "/app/token"]);
    assert_eq!(e.stdout.trim_end(), "s3cr3t");

    // ls: children, then the recursive listing (paged by --limit, followed to the end).
    let e = cli(&ep, &["kv", "ls", "/app"]);
    assert!(ok(&e), "{e:?}");
    let lines: Vec<&str> = e.stdout.lines().collect();
    assert_eq!(lines, vec!["db/", "token"], "{e:?}");
    let e = cli(&ep, &["kv", "ls", "/app", "--recursive", "--limit", "1"]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.contains("/app/db/leader = node-a:5432"), "{e:?}");
    assert!(e.stdout.contains("/app/token = s3cr3t"), "{e:?}");

    // A missing key: exit 1 with the error code on stderr.
    let e = cli(&ep, &["kv", "get", "/app/missing"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("key_not_found"), "{e:?}");

    // A bad key is the server's 400, shown as such.
    let e = cli(&ep, &["kv", "put", "/a//b", "x"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("invalid_key"), "{e:?}");

    // status: a table with every member and the leader marked. Members publish their
    // client URLs shortly after a leader exists.
    let mut e = cli(&ep, &["status"]);
    for _ in 0..100 {
        if c.ids().iter().all(|&id| e.stdout.contains(&c.client_url(id))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        e = cli(&ep, &["status"]);
    }
    assert!(ok(&e), "{e:?}");
    for id in c.ids() {
        assert!(e.stdout.contains(&c.client_url(id)), "status lacks member {id}: {e:?}");
    }
    let e = cli(&ep, &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json status");
    assert_eq!(v["leader"], leader);
    assert_eq!(v["members"].as_array().unwrap().len(), 3);

    // Failover: a dead endpoint first, then a live one.
    c.kill_9(follower);
    let live = c.ids().into_iter().find(|&i| i != follower).unwrap();
    let eps = format!("{},{}", c.client_url(follower), c.client_url(live));
    let e = cli(&eps, &["kv", "get", "/app/db/leader"]);
    assert!(ok(&e), "failover: {e:?}");
    assert_eq!(e.stdout.trim_end(), "node-a:5432");

    // No endpoint reachable: exit 2.
    let e = cli(&c.client_url(follower), &["kv", "get", "/app/db/leader"]);
    assert_eq!(code(&e), Some(2), "{e:?}");

    // del --recursive.
    let e = cli(&c.client_url(live), &["kv", "del", "/app", "--recursive"]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("deleted=2 "), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_transactions_sequential_keys_idempotency_and_compaction() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let ep = c.client_url(follower);

    let e = cli(&ep, &["kv", "put", "/jobs", "a", "--sequential"]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("/jobs/00000000000000000001 revision="), "{e:?}");
    // The same idempotency key twice: one job.
    for _ in 0..2 {
        let e = cli(&ep, &["kv", "put", "/jobs", "b", "--sequential", "--idempotency-key", "job-b"]);
        assert!(e.stdout.starts_with("/jobs/00000000000000000002 "), "{e:?}");
    }
    let e = cli(&ep, &["kv", "ls", "/jobs"]);
    assert_eq!(e.stdout, "00000000000000000001\n00000000000000000002\n", "{e:?}");
    let e = cli(&ep, &["kv", "put", "/jobs", "c", "--idempotency-key", "job-b"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("idempotency_conflict"), "{e:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txn.json");
    let txn = r#"{"compare":[{"key":"/cfg","target":"version","op":"==","value":0}],
                 "success":[{"put":{"key":"/cfg","value":"v1"}}],"failure":[{"get":{"key":"/cfg"}}]}"#;
    std::fs::write(&file, txn).unwrap();
    let path = file.to_str().unwrap();
    let e = cli(&ep, &["kv", "txn", path]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("SUCCESS revision="), "{e:?}");
    // The compare fails now: the failure branch's results, exit 1.
    let e = cli(&ep, &["kv", "txn", path]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stdout.starts_with("FAILURE") && e.stdout.contains("/cfg = v1"), "{e:?}");
    std::fs::write(&file, "{not json").unwrap();
    let e = cli(&ep, &["kv", "txn", path]);
    assert_eq!(code(&e), Some(1), "{e:?}");

    let e = cli(&ep, &["compact", "--keep", "1"]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("compact_revision=2 "), "{e:?}");
    let e = cli(&ep, &["kv", "get", "/jobs/00000000000000000001", "--revision", "1"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("compacted"), "{e:?}");
    let e = cli(&ep, &["compact", "1000"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("future_revision"), "{e:?}");
}
