//! The CLI against running nodes: every client subcommand, its output, exit codes and
//! endpoint failover.

use crate::support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use support::process::{palisade_command, run_to_exit, Cluster, ClusterOptions, Exited};
use support::running::Running;

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
    // Each member answered for itself: a row each, all reachable.
    assert_eq!(e.stdout.lines().filter(|l| l.trim_end().ends_with(" ok")).count(), 3, "{e:?}");
    let e = cli(&ep, &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json status");
    assert_eq!(v["leader"], leader);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["reachable"], true, "{m}");
        assert_eq!(m["leader"], leader, "member {} sees another leader: {m}", m["id"]);
        assert!(m["applied_index"].as_u64().is_some_and(|i| i > 0), "{m}");
        assert_eq!(m["version"], env!("CARGO_PKG_VERSION"), "{m}");
    }

    // Failover: a dead endpoint first, then a live one.
    c.kill_9(follower);
    let live = c.ids().into_iter().find(|&i| i != follower).unwrap();
    // status says which member is unreachable, and exits 1.
    let e = cli(&c.client_url(live), &["status"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    let row = e.stdout.lines().find(|l| l.contains(&c.client_url(follower))).unwrap_or_default();
    assert!(row.contains("unreachable"), "{e:?}");
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

/// The number after `name=` in a line of `name=value` pairs.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// A duration as the CLI shows one (`3s`, `2.5s`, `750ms`, `2m`).
fn shown(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap_or_else(|_| panic!("{s:?}")));
    }
    if let Some(m) = s.strip_suffix('m') {
        return Duration::from_secs(60 * m.parse::<u64>().unwrap_or_else(|_| panic!("{s:?}")));
    }
    let secs = s.strip_suffix('s').unwrap_or_else(|| panic!("{s:?} has no unit"));
    Duration::from_secs_f64(secs.parse().unwrap_or_else(|_| panic!("{s:?}")))
}

/// The lease ids `palisade lease ls` prints (the first column, header left out).
fn listed_leases(e: &Exited) -> Vec<u64> {
    let mut lines = e.stdout.lines();
    assert_eq!(
        lines.next().map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["ID", "TTL", "REMAINING", "KEYS"]),
        "{e:?}"
    );
    lines
        .map(|l| {
            l.split_whitespace().next().and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{l:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_leases_grant_show_list_revoke_and_keys_under_leases() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let ep = c.client_url(follower);

    // grant: the id and the TTL; -o json: the server's reply.
    let e = cli(&ep, &["lease", "grant", "30s"]);
    assert!(ok(&e), "{e:?}");
    let a: u64 = field(&e.stdout, "lease").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(field(&e.stdout, "ttl"), Some("30s"), "{e:?}");
    let e = cli(&ep, &["lease", "-o", "json", "grant", "20", "--id", "4242"]);
    assert!(ok(&e), "{e:?}");
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    assert_eq!(v, serde_json::json!({"id": 4242, "ttl_ms": 20000}), "{e:?}");
    let e = cli(&ep, &["lease", "grant", "30s", "--id", "4242"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("lease_exists"), "{e:?}");
    // The same idempotency key twice: one lease.
    let once = cli(&ep, &["lease", "grant", "1m", "--idempotency-key", "grant-g1"]);
    let again = cli(&ep, &["lease", "grant", "1m", "--idempotency-key", "grant-g1"]);
    assert!(ok(&once) && once.stdout == again.stdout, "{once:?} {again:?}");
    let g: u64 = field(&once.stdout, "lease").unwrap().parse().unwrap();
    assert_eq!(field(&once.stdout, "ttl"), Some("1m"), "{once:?}");

    // Bad TTLs: refused locally (usage, exit 2) or by the server's bounds (exit 1, 400);
    // nothing is granted.
    for bad in ["0s", "0", "-5s", "10x", "ten", "10 s", "1.5ms", "0.0001", ""] {
        let e = cli(&ep, &["lease", "grant", bad]);
        assert_eq!(code(&e), Some(2), "{bad:?}: {e:?}");
        // (clap reads a leading `-` as a flag.)
        let why = if bad.starts_with('-') { "unexpected argument" } else { "invalid value" };
        assert!(e.stderr.contains(why), "{bad:?}: {e:?}");
    }
    for bad in ["1s", "1999ms", "25h"] {
        let e = cli(&ep, &["lease", "grant", bad]);
        assert_eq!(code(&e), Some(1), "{bad:?}: {e:?}");
        assert!(e.stderr.contains("invalid_argument") && e.stderr.contains("ttl"), "{bad:?}: {e:?}");
    }
    let e = cli(&ep, &["lease", "grant", "10s", "--id", "0"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("invalid_argument"), "{e:?}");
    let e = cli(&ep, &["lease", "ls"]);
    assert!(ok(&e), "{e:?}");
    let mut expected = vec![a, 4242, g];
    expected.sort();
    assert_eq!(listed_leases(&e), expected, "{e:?}");

    // Keys under leases: --lease, --ttl (grants one and prints it), a sequential create.
    let e = cli(&ep, &["kv", "put", "/svc/a", "1", "--lease", &a.to_string()]);
    assert!(ok(&e), "{e:?}");
    assert!(
        e.stdout.starts_with("OK revision=") && field(&e.stdout, "lease") == Some(&*a.to_string()),
        "{e:?}"
    );
    let e = cli(&ep, &["kv", "put", "/svc/b", "2", "--ttl", "45s"]);
    assert!(ok(&e), "{e:?}");
    let b: u64 = field(&e.stdout, "lease").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(field(&e.stdout, "ttl"), Some("45s"), "{e:?}");
    assert!(![a, 4242, g].contains(&b), "{e:?}");
    let e = cli(&ep, &["kv", "-o", "json", "get", "/svc/b"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    assert_eq!(v["kv"]["lease"], b, "{e:?}");
    let e = cli(&ep, &["kv", "put", "/svc/q", "job", "--sequential", "--lease", &a.to_string()]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with("/svc/q/00000000000000000001 revision="), "{e:?}");

    // A put under a lease that does not exist writes nothing; one refused with --ttl
    // revokes the lease it granted; --lease and --ttl do not go together; a bad --ttl is
    // refused before anything is sent.
    let e = cli(&ep, &["kv", "put", "/svc/c", "3", "--lease", "999999"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("lease_not_found"), "{e:?}");
    let e = cli(&ep, &["kv", "put", "/svc/d", "4", "--ttl", "45s", "--if-version", "3"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("condition_failed") && e.stderr.contains("revoked"), "{e:?}");
    let e = cli(&ep, &["kv", "put", "/svc/e", "5", "--ttl", "45s", "--lease", &a.to_string()]);
    assert_eq!(code(&e), Some(2), "{e:?}");
    for bad in ["0s", "soon", "-1"] {
        let e = cli(&ep, &["kv", "put", "/svc/f", "6", "--ttl", bad]);
        assert_eq!(code(&e), Some(2), "{bad:?}: {e:?}");
    }
    let e = cli(&ep, &["kv", "put", "/svc/f", "6", "--ttl", "1s"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("invalid_argument"), "{e:?}");
    let e = cli(&ep, &["kv", "ls", "/svc", "--recursive", "--keys-only"]);
    assert_eq!(e.stdout, "/svc/a\n/svc/b\n/svc/q/00000000000000000001\n", "{e:?}");
    let e = cli(&ep, &["lease", "ls", "--limit", "1"]);
    let mut expected = vec![a, b, 4242, g];
    expected.sort();
    assert_eq!(listed_leases(&e), expected, "every page is listed: {e:?}");
    let e = cli(&ep, &["lease", "-o", "json", "ls", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    let ids: Vec<u64> = v["leases"].as_array().unwrap().iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(
        (ids, v["count"].clone(), v["more"].clone()),
        (expected, serde_json::json!(4), serde_json::json!(false))
    );

    // show: TTL, time left, keys.
    let e = cli(&ep, &["lease", "show", &a.to_string()]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with(&format!("id: {a}\nttl: 30s\nremaining: ")), "{e:?}");
    assert!(e.stdout.ends_with("keys: 2\n  /svc/a\n  /svc/q/00000000000000000001\n"), "{e:?}");
    let left = e.stdout.lines().find_map(|l| l.strip_prefix("remaining: ")).map(shown).unwrap();
    assert!(left > Duration::ZERO && left <= Duration::from_secs(30), "{e:?}");
    let e = cli(&ep, &["lease", "-o", "json", "show", &b.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    assert_eq!(
        (v["id"].as_u64(), v["ttl_ms"].as_u64(), v["key_count"].as_u64()),
        (Some(b), Some(45_000), Some(1))
    );
    assert_eq!(v["keys"], serde_json::json!(["/svc/b"]), "{e:?}");
    let e = cli(&ep, &["lease", "show", "999999"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("lease_not_found"), "{e:?}");
    let e = cli(&ep, &["lease", "show", "0"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("invalid_argument"), "{e:?}");
    let e = cli(&ep, &["lease", "show", "x"]);
    assert_eq!(code(&e), Some(2), "{e:?}");

    // revoke: its keys go at one revision; a second revoke is 404; an idempotent retry of
    // a revoke gets the first answer.
    let e = cli(&ep, &["lease", "revoke", &a.to_string()]);
    assert!(ok(&e), "{e:?}");
    assert!(e.stdout.starts_with(&format!("lease={a} deleted=2 revision=")), "{e:?}");
    let e = cli(&ep, &["kv", "ls", "/svc", "--recursive", "--keys-only"]);
    assert_eq!(e.stdout, "/svc/b\n", "{e:?}");
    let e = cli(&ep, &["lease", "revoke", &a.to_string()]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("lease_not_found"), "{e:?}");
    let first = cli(&ep, &["lease", "revoke", &b.to_string(), "--idempotency-key", "revoke-b"]);
    let retry = cli(&ep, &["lease", "revoke", &b.to_string(), "--idempotency-key", "revoke-b"]);
    assert!(ok(&first) && first.stdout.starts_with(&format!("lease={b} deleted=1 ")), "{first:?}");
    assert!(ok(&retry) && retry.stdout == first.stdout, "{retry:?}");
    let e = cli(&ep, &["kv", "get", "/svc/b"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    let e = cli(&ep, &["lease", "-o", "json", "revoke", "4242"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json output");
    assert_eq!((v["id"].as_u64(), v["deleted"].as_u64()), (Some(4242), Some(0)), "{e:?}");
    let e = cli(&ep, &["lease", "ls"]);
    assert_eq!(listed_leases(&e), vec![g], "{e:?}");
    let e = cli(&ep, &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json status");
    assert_eq!(
        v["leases"],
        serde_json::json!({"alive": 1, "granted": 5, "expired": 0, "revoked": 4}),
        "{e:?}"
    );
}

/// A keepalive line: `lease=ID ttl=TTL remaining=LEFT`, checked, and the time left.
fn renewal(line: &str, id: u64, ttl: Duration) -> Duration {
    assert_eq!(field(line, "lease"), Some(&*id.to_string()), "{line:?}");
    assert_eq!(field(line, "ttl").map(shown), Some(ttl), "{line:?}");
    let left = field(line, "remaining").map(shown).unwrap_or_else(|| panic!("{line:?}"));
    assert!(left > Duration::ZERO && left <= ttl, "{line:?}");
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keepalive_renews_shows_time_left_and_reports_a_lost_lease() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let (ep_a, ep_b) = (c.client_url(a), c.client_url(b));
    let ttl = Duration::from_secs(3);
    let line_wait = Duration::from_secs(10);
    let grant = |ep: &str| {
        let e = cli(ep, &["lease", "grant", "3s"]);
        assert!(ok(&e), "{e:?}");
        field(&e.stdout, "lease").and_then(|id| id.parse::<u64>().ok()).unwrap_or_else(|| panic!("{e:?}"))
    };

    // An unknown lease is lost from the start.
    let mut k = Running::start(&ep_b, &["lease", "keepalive", "987654"]);
    assert_eq!(k.exit(Duration::from_secs(15)), Some(1), "{}", k.stderr());
    assert!(k.stderr().contains("is lost") && k.stderr().contains("lease_not_found"), "{}", k.stderr());

    // Renewals go on past the TTL, through an endpoint that hangs (paused) for longer than
    // the TTL: the lease would have ended without them.
    let id = grant(&ep_b);
    let k = Running::start(&format!("{ep_a},{ep_b}"), &["lease", "keepalive", &id.to_string()]);
    let first = k.maybe_line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
    renewal(&first, id, ttl);
    c.pause(a);
    let paused = std::time::Instant::now();
    let mut during = 0;
    // Past TTL + 2 x the longest election timeout + the checkpoint interval + slack after
    // the last renewal acknowledged before the pause.
    while paused.elapsed() < Duration::from_secs(5) {
        if let Some(line) = k.maybe_line(Duration::from_millis(200)) {
            renewal(&line, id, ttl);
            during += 1;
        }
    }
    let e = cli(&ep_b, &["lease", "show", &id.to_string()]);
    c.resume(a);
    assert!(ok(&e), "the lease ended while kept alive: {e:?}; keepalive said: {}", k.stderr());
    assert!(during >= 2, "{during} renewals in 5 s: {}", k.stderr());
    assert!(k.stderr().contains("no reply within"), "the paused endpoint was tried first: {}", k.stderr());

    // Revoked from another command: the keepalive says the lease is lost and exits 1.
    let e = cli(&ep_b, &["lease", "revoke", &id.to_string()]);
    assert!(ok(&e), "{e:?}");
    let mut k = k;
    assert_eq!(k.exit(Duration::from_secs(15)), Some(1), "{}", k.stderr());
    assert!(k.stderr().contains("is lost") && k.stderr().contains("lease_not_found"), "{}", k.stderr());

    // -o json: one reply per line; Ctrl-C stops it with exit 0.
    let id = grant(&ep_b);
    let mut k = Running::start(&ep_b, &["lease", "-o", "json", "keepalive", &id.to_string()]);
    let line = k.maybe_line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!((v["id"].as_u64(), v["ttl_ms"].as_u64()), (Some(id), Some(3000)), "{line}");
    assert!(v["remaining_ms"].as_u64().is_some_and(|r| r > 0 && r <= 3000), "{line}");
    k.signal("INT");
    assert_eq!(k.exit(Duration::from_secs(10)), Some(0), "{}", k.stderr());
    assert!(k.stderr().contains("stopped"), "{}", k.stderr());

    // Its only endpoint gone: retried while the lease is sure to live (its TTL after the
    // last acknowledged renewal was sent), then reported as possibly expired, exit 1.
    let id = grant(&ep_b);
    let mut k = Running::start(&ep_a, &["lease", "keepalive", &id.to_string()]);
    for _ in 0..2 {
        let line = k.maybe_line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
        renewal(&line, id, ttl);
    }
    c.kill_9(a);
    let killed = std::time::Instant::now();
    let exit = k.exit(Duration::from_secs(20));
    let took = killed.elapsed();
    assert_eq!(exit, Some(1), "{}", k.stderr());
    assert!(k.stderr().contains("retrying") && k.stderr().contains("may have expired"), "{}", k.stderr());
    // The last renewal was sent at most a third of the TTL (and one reply) before the kill.
    assert!(
        took >= ttl / 3 && took <= ttl + Duration::from_secs(3),
        "gave up {took:?} after the kill: {}",
        k.stderr()
    );
}

/// A message a `kv watch -o json` printed.
fn watch_message(line: &str) -> palisade::wire::watch::WatchMessage {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a watch message ({e}): {line:?}"))
}

/// An event as (type, key, value).
type Ev = (String, String, Option<String>);

/// The `revision=N` of a CLI line.
fn revision_of(e: &Exited) -> u64 {
    field(&e.stdout, "revision").and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_changes_replays_history_and_ends_on_compaction() {
    use palisade::wire::watch::{WatchEvent, WatchMessage};

    let c = Cluster::start(ClusterOptions { nodes: 1, ..ClusterOptions::default() }).await;
    c.leader().await;
    let ep = c.client_url(1);
    let put = |key: &str, value: &str| {
        let e = cli(&ep, &["kv", "put", key, value]);
        assert!(ok(&e), "{e:?}");
        revision_of(&e)
    };
    let r1 = put("/app/a", "1");

    // From now, in JSON: first a progress message at the current revision, then one line
    // per revision that changed a key under /app, as the server sent it.
    let w = Running::start(&ep, &["kv", "watch", "/app", "--recursive", "-o", "json", "--progress", "1m"]);
    let line =
        w.maybe_line(Duration::from_secs(10)).unwrap_or_else(|| panic!("no first line: {}", w.stderr()));
    assert_eq!(line, format!(r#"{{"progress":{{"revision":{r1}}}}}"#));
    let r2 = put("/app/b", "2");
    put("/other", "x");
    let r4 = put("/app/a", "1b");
    let e = cli(&ep, &["kv", "del", "/app", "--recursive"]);
    assert!(e.stdout.starts_with("deleted=2 "), "{e:?}");
    let r5 = revision_of(&e);
    let r6 = put("/app/c/d", "3");
    let mut got = Vec::new();
    while got.len() < 4 {
        let line = w.maybe_line(Duration::from_secs(10)).unwrap_or_else(|| panic!("{got:?}: {}", w.stderr()));
        got.push(watch_message(&line));
    }
    let summary: Vec<(u64, Vec<Ev>)> = got
        .iter()
        .map(|m| match m {
            WatchMessage::Change { revision, events } => (
                *revision,
                events
                    .iter()
                    .map(|e| match e {
                        WatchEvent::Put { kv, prev_kv } => {
                            assert!(prev_kv.is_none(), "{m:?}");
                            assert_eq!(kv.mod_revision, *revision, "{m:?}");
                            ("put".into(), kv.key.clone(), kv.value_str().map(str::to_string))
                        }
                        WatchEvent::Delete { kv, .. } => {
                            assert_eq!(kv.mod_revision, *revision, "{m:?}");
                            ("delete".into(), kv.key.clone(), None)
                        }
                    })
                    .collect(),
            ),
            other => panic!("expected changes only, got {other:?}"),
        })
        .collect();
    let ev = |t: &str, k: &str, v: Option<&str>| (t.to_string(), k.to_string(), v.map(str::to_string));
    assert_eq!(
        summary,
        vec![
            (r2, vec![ev("put", "/app/b", Some("2"))]),
            (r4, vec![ev("put", "/app/a", Some("1b"))]),
            (r5, vec![ev("delete", "/app/a", None), ev("delete", "/app/b", None)]),
            (r6, vec![ev("put", "/app/c/d", Some("3"))]),
        ]
    );
    assert_eq!(w.maybe_line(Duration::from_millis(300)), None, "nothing else");
    assert_eq!(w.stderr(), "", "no notice without a reason");

    // --from replays the history, then goes on live; for people, one line per key, and
    // with --prev-kv the value before. Ctrl-C says where to continue.
    let mut h = Running::start(&ep, &["kv", "watch", "/app", "-r", "--from", &r1.to_string(), "--prev-kv"]);
    let r7 = put("/app/e", "two\nlines");
    let mut lines = Vec::new();
    while lines.len() < 14 {
        lines.push(
            h.maybe_line(Duration::from_secs(10)).unwrap_or_else(|| panic!("{lines:?}: {}", h.stderr())),
        );
    }
    let none = "  prev: (the key did not exist)".to_string();
    let prev = |k: &str, v: &str, version: u64, modr: u64, create: u64| {
        format!("  prev: key={k} value={v:?} version={version} mod_revision={modr} create_revision={create} lease=none")
    };
    assert_eq!(
        lines,
        vec![
            format!("PUT /app/a = 1 revision={r1}"),
            none.clone(),
            format!("PUT /app/b = 2 revision={r2}"),
            none.clone(),
            format!("PUT /app/a = 1b revision={r4}"),
            prev("/app/a", "1", 1, r1, r1),
            format!("DELETE /app/a revision={r5}"),
            prev("/app/a", "1b", 2, r4, r1),
            format!("DELETE /app/b revision={r5}"),
            prev("/app/b", "2", 1, r2, r2),
            format!("PUT /app/c/d = 3 revision={r6}"),
            none.clone(),
            format!("PUT /app/e = \"two\\nlines\" revision={r7}"),
            none,
        ]
    );
    h.signal("INT");
    assert_eq!(h.exit(Duration::from_secs(10)), Some(0), "{}", h.stderr());
    assert!(h.stderr().contains(&format!("continue with --from {}", r7 + 1)), "{}", h.stderr());

    // History that is gone: an error, exit 1, at once. The running watch is unaffected.
    let e = cli(&ep, &["compact", "--keep", "1"]);
    assert!(ok(&e), "{e:?}");
    let e = cli(&ep, &["kv", "watch", "/app", "-r", "--from", &r1.to_string()]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("compacted") && e.stdout.is_empty(), "{e:?}");
    let r8 = put("/app/f", "4");
    for r in [r7, r8] {
        let line = w.maybe_line(Duration::from_secs(10)).unwrap_or_else(|| panic!("{}", w.stderr()));
        assert!(
            matches!(watch_message(&line), WatchMessage::Change { revision, .. } if revision == r),
            "{r}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_refuses_bad_input_at_once() {
    let c = Cluster::start(ClusterOptions { nodes: 1, ..ClusterOptions::default() }).await;
    c.leader().await;
    let ep = c.client_url(1);
    let e = cli(&ep, &["kv", "put", "/app/a", "1"]);
    assert!(ok(&e), "{e:?}");
    let head = revision_of(&e);
    let future = (head + 100).to_string();
    let dead = format!("127.0.0.1:{}", support::process::free_ports(1)[0]);
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (&ep, vec!["kv", "watch", "/app", "--from", "0"], 1, "start_revision"),
        (&ep, vec!["kv", "watch", "/app", "--from", &future], 1, "future_revision"),
        (&ep, vec!["kv", "watch", "/a//b"], 1, "invalid_key"),
        (&ep, vec!["kv", "watch", "app"], 1, "must start with '/'"),
        (&ep, vec!["kv", "watch", "/app", "--progress", "10ms"], 1, "progress"),
        (&ep, vec!["kv", "watch", "/app", "--from", "x"], 2, "invalid value"),
        (&dead, vec!["kv", "watch", "/app"], 2, "cannot connect to any endpoint"),
    ];
    for (endpoints, args, want, says) in cases {
        let started = std::time::Instant::now();
        let e = cli(endpoints, &args);
        assert_eq!(code(&e), Some(want), "{args:?}: {e:?}");
        assert!(e.stderr.contains(says), "{args:?}: {e:?}");
        assert!(e.stdout.is_empty(), "{args:?}: {e:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
    }
}

/// The endpoint a running `kv watch` reads from, as its stderr tells: the last one it
/// resumed (or is resuming) on, unless that attempt failed.
fn serving_endpoint(stderr: &str) -> Option<String> {
    let mut on = None;
    for line in stderr.lines() {
        let via = line.rsplit(" via ").next().map(|v| v.split_whitespace().next().unwrap_or("").to_string());
        if line.contains("failed:") {
            on = None;
        } else if line.contains("resuming at revision") || line.contains("resumed at revision") {
            on = via;
        }
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_resumes_on_the_next_endpoint_without_a_gap_or_a_repeat() {
    use crate::jepsen::watch::{check_watches, CommittedLog, WatchMessage, WatchStream};
    use palisade::client::{Client, ListOptions, PutOptions};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = c.leader().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    // The watch starts on f1 (the first endpoint), then goes round-robin: the leader, f2.
    let eps = format!("{},{},{}", c.client_url(f1), c.client_url(leader), c.client_url(f2));
    let w = Running::start(&eps, &["kv", "watch", "/w", "--recursive", "-o", "json", "--progress", "500ms"]);
    let first =
        w.maybe_line(Duration::from_secs(10)).unwrap_or_else(|| panic!("no first line: {}", w.stderr()));
    let WatchMessage::Progress { revision: started_at } =
        WatchMessage::from_json(&serde_json::from_str(&first).unwrap()).unwrap()
    else {
        panic!("the first line is not a progress message: {first}")
    };

    // A writer of one new key after another (never through f1, which will be paused), each
    // under an idempotency key: an acknowledged put has its revision, a failed one may or
    // may not have applied.
    let stop = Arc::new(AtomicBool::new(false));
    let last_acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let stop = stop.clone();
        let last_acked = last_acked.clone();
        let client =
            Client::with_timeout(vec![c.client_url(leader), c.client_url(f2)], Duration::from_secs(2))
                .unwrap();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let key = format!("/w/{i:06}");
                let opts = PutOptions {
                    idempotency_key: Some(palisade::client::new_idempotency_key()),
                    ..PutOptions::default()
                };
                if let Ok(r) = client.put(&key, i.to_string().as_bytes(), opts).await {
                    acked.push((key, r.revision));
                    last_acked.store(r.revision, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let mut lines = Vec::new();
    let mut read_for = |lines: &mut Vec<String>, d: Duration| {
        let until = std::time::Instant::now() + d;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if let Some(l) = w.maybe_line(left) {
                lines.push(l);
            }
        }
    };
    let said = |what: &str, lines: &mut Vec<String>, read: &mut dyn FnMut(&mut Vec<String>, Duration)| {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while !w.stderr().contains(what) {
            assert!(
                std::time::Instant::now() < until,
                "the watch never said {what:?}: {}\n{}",
                w.stderr(),
                c.logs()
            );
            read(lines, Duration::from_millis(100));
        }
    };
    read_for(&mut lines, Duration::from_secs(1));

    // f1 hangs: its stream goes silent, and after 3 progress intervals the watch resumes on
    // the leader.
    c.pause(f1);
    let lost = format!("connection to {} lost (nothing received", c.client_url(f1));
    said(&lost, &mut lines, &mut read_for);
    let written = last_acked.load(Ordering::SeqCst);
    c.resume(f1);
    // The writes acknowledged while f1 hung are replayed from the leader's history.
    let stderr = w.stderr();
    let resumed_at: u64 = stderr
        .lines()
        .find(|l| l.contains(&lost))
        .and_then(|l| l.split("resuming at revision ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(resumed_at <= written, "nothing was written while f1 hung ({resumed_at} > {written})");
    read_for(&mut lines, Duration::from_secs(1));
    // The node the watch is on now dies (the leader, unless reopening there failed on a
    // loaded machine and the watch went on round the endpoints): it resumes on another.
    let on = serving_endpoint(&w.stderr()).unwrap_or_else(|| panic!("not watching anywhere: {}", w.stderr()));
    let victim = c.ids().into_iter().find(|&i| c.client_url(i) == on).expect("a member's URL");
    c.kill_9(victim);
    said(&format!("connection to {on} lost"), &mut lines, &mut read_for);
    read_for(&mut lines, Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();

    // Every key the writer created, as the cluster has it now.
    let reader = Client::new(vec![c.client_url(f1), c.client_url(f2)]).unwrap();
    let dump = reader.list_all("/w", ListOptions::default()).await.unwrap();
    let head = dump.revision;
    assert!(acked.len() >= 20, "only {} acknowledged writes", acked.len());
    // Until the watch has printed everything.
    let covered = |lines: &[String]| {
        lines.iter().any(|l| match WatchMessage::from_json(&serde_json::from_str(l).unwrap()).unwrap() {
            WatchMessage::Change { revision, .. } | WatchMessage::Progress { revision } => revision >= head,
            WatchMessage::Compacted { .. } => true,
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !covered(&lines) {
        assert!(std::time::Instant::now() < until, "the watch never reached revision {head}: {}", w.stderr());
        read_for(&mut lines, Duration::from_millis(100));
    }
    let stderr = w.stderr();
    drop(w);

    let mut log = CommittedLog::new(head);
    for kv in &dump.kvs {
        log = log.put(kv.mod_revision, &kv.key, kv.value_str().unwrap());
    }
    for (key, rev) in &acked {
        assert!(dump.kvs.iter().any(|kv| &kv.key == key && kv.mod_revision == *rev), "{key}@{rev} lost");
    }
    let messages: Vec<WatchMessage> =
        lines.iter().map(|l| WatchMessage::from_json(&serde_json::from_str(l).unwrap()).unwrap()).collect();
    let changes: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            WatchMessage::Change { revision, .. } => Some(*revision),
            _ => None,
        })
        .collect();
    assert!(changes.windows(2).all(|p| p[0] < p[1]), "revisions not strictly increasing: {changes:?}");
    let stream = WatchStream {
        id: "palisade kv watch".into(),
        key_or_prefix: "/w".into(),
        recursive: true,
        start_revision: started_at + 1,
        messages,
    };
    let acknowledged: Vec<(String, u64)> = acked.clone();
    let report = check_watches(&[stream], &log, &acknowledged)
        .unwrap_or_else(|v| panic!("{v}\nstderr of the watch:\n{stderr}"));
    assert_eq!(report.acknowledged_seen, acked.len(), "{report:?}");
    assert_eq!(changes.len(), dump.kvs.len(), "one change per key created");
    // Each resume was one line on stderr naming the revision it resumed at.
    assert!(stderr.lines().all(|l| l.starts_with("watch: ")), "{stderr}");
    assert!(stderr.contains("resuming at revision "), "{stderr}");
}
