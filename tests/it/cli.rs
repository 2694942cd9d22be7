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

/// A CLI command left running (`lease keepalive`): its stdout lines as they come, its
/// stderr in a file; killed when dropped.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl Running {
    fn start(endpoints: &str, args: &[&str]) -> Running {
        let mut v = vec![args[0].to_string(), "--endpoints".to_string(), endpoints.to_string()];
        v.extend(args[1..].iter().map(|s| s.to_string()));
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = palisade_command(&v)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("spawn palisade");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, stderr }
    }

    /// The next line of stdout, if one comes within `within`.
    fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The exit code, if the command exits within `within`.
    fn exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let st = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    assert_eq!(k.exit(Duration::from_secs(15)), Some(Some(1)), "{}", k.stderr());
    assert!(k.stderr().contains("is lost") && k.stderr().contains("lease_not_found"), "{}", k.stderr());

    // Renewals go on past the TTL, through an endpoint that hangs (paused) for longer than
    // the TTL: the lease would have ended without them.
    let id = grant(&ep_b);
    let k = Running::start(&format!("{ep_a},{ep_b}"), &["lease", "keepalive", &id.to_string()]);
    let first = k.line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
    renewal(&first, id, ttl);
    c.pause(a);
    let paused = std::time::Instant::now();
    let mut during = 0;
    // Past TTL + 2 x the longest election timeout + the checkpoint interval + slack after
    // the last renewal acknowledged before the pause.
    while paused.elapsed() < Duration::from_secs(5) {
        if let Some(line) = k.line(Duration::from_millis(200)) {
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
    assert_eq!(k.exit(Duration::from_secs(15)), Some(Some(1)), "{}", k.stderr());
    assert!(k.stderr().contains("is lost") && k.stderr().contains("lease_not_found"), "{}", k.stderr());

    // -o json: one reply per line; Ctrl-C stops it with exit 0.
    let id = grant(&ep_b);
    let mut k = Running::start(&ep_b, &["lease", "-o", "json", "keepalive", &id.to_string()]);
    let line = k.line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!((v["id"].as_u64(), v["ttl_ms"].as_u64()), (Some(id), Some(3000)), "{line}");
    assert!(v["remaining_ms"].as_u64().is_some_and(|r| r > 0 && r <= 3000), "{line}");
    k.signal("INT");
    assert_eq!(k.exit(Duration::from_secs(10)), Some(Some(0)), "{}", k.stderr());
    assert!(k.stderr().contains("stopped"), "{}", k.stderr());

    // Its only endpoint gone: retried while the lease is sure to live (its TTL after the
    // last acknowledged renewal was sent), then reported as possibly expired, exit 1.
    let id = grant(&ep_b);
    let mut k = Running::start(&ep_a, &["lease", "keepalive", &id.to_string()]);
    for _ in 0..2 {
        let line = k.line(line_wait).unwrap_or_else(|| panic!("no renewal: {}", k.stderr()));
        renewal(&line, id, ttl);
    }
    c.kill_9(a);
    let killed = std::time::Instant::now();
    let exit = k.exit(Duration::from_secs(20));
    let took = killed.elapsed();
    assert_eq!(exit, Some(Some(1)), "{}", k.stderr());
    assert!(k.stderr().contains("retrying") && k.stderr().contains("may have expired"), "{}", k.stderr());
    // The last renewal was sent at most a third of the TTL (and one reply) before the kill.
    assert!(
        took >= ttl / 3 && took <= ttl + Duration::from_secs(3),
        "gave up {took:?} after the kill: {}",
        k.stderr()
    );
}
