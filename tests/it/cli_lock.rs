//! The lock, election and fencing commands against a running node: `palisade lock NAME --
//! CMD` (the environment, exit codes, a second holder timing out, SIGTERM passed on, CMD
//! stopped when the lease is lost), `lock ls|show`, `elect` and `elect --observe`, `fence
//! check`, bad input, and the worked example in `examples/fencing/` run end to end.

use crate::support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::process::{run_to_exit, Cluster, ClusterOptions, Exited, BIN};
use support::running::Running;

/// Runs `palisade <group> --endpoints <endpoints> <rest...>` to its end.
fn cli(endpoints: &str, args: &[&str]) -> Exited {
    let mut v = vec![args[0].to_string(), "--endpoints".to_string(), endpoints.to_string()];
    v.extend(args[1..].iter().map(|s| s.to_string()));
    run_to_exit(&v, Duration::from_secs(30))
}

fn code(e: &Exited) -> Option<i32> {
    e.status.and_then(|s| s.code())
}

/// The value after `name=` in a line of `name=value` pairs.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

async fn one_node() -> (Cluster, String) {
    let c = Cluster::start(ClusterOptions { nodes: 1, ..ClusterOptions::default() }).await;
    c.leader().await;
    let ep = c.client_url(1);
    (c, ep)
}

/// `lock show NAME -o json`.
fn lock_json(ep: &str, name: &str) -> serde_json::Value {
    let e = cli(ep, &["lock", "-o", "json", "show", name]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    serde_json::from_str(&e.stdout).unwrap_or_else(|_| panic!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_runs_cmd_with_its_token_and_exits_with_its_status() {
    let (_c, ep) = one_node().await;
    let env = r#"echo "$PALISADE_FENCING_TOKEN $PALISADE_LOCK_OWNER $PALISADE_LOCK_LEASE $PALISADE_LOCK_NAME $PALISADE_ENDPOINTS"; exit 7"#;
    let e = cli(&ep, &["lock", "job", "--", "sh", "-c", env]);
    assert_eq!(code(&e), Some(7), "{e:?}");
    let words: Vec<&str> = e.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{e:?}");
    let token: u64 = words[0].parse().unwrap_or_else(|_| panic!("{e:?}"));
    let lease: u64 = words[2].parse().unwrap_or_else(|_| panic!("{e:?}"));
    // Owner ids are `{lease:x}-{revision:x}` of the request that queued them; granted at
    // once, that revision is the grant's, the token.
    assert_eq!(words[1], format!("{lease:x}-{token:x}"), "{e:?}");
    assert_eq!(&words[3..], ["job", ep.as_str()], "{e:?}");
    assert!(e.stderr.contains(&format!("acquired job (fencing token {token}")), "{e:?}");
    assert!(e.stderr.contains("released job"), "{e:?}");
    // Released, and the lease made for it is gone.
    let v = lock_json(&ep, "job");
    assert_eq!((v["holders"].as_array().unwrap().len(), v["limit"].clone()), (0, serde_json::Value::Null));
    let e2 = cli(&ep, &["lease", "show", &lease.to_string()]);
    assert!(e2.stderr.contains("lease_not_found"), "{e2:?}");

    // A second run gets a higher token; a CMD that succeeds is a success; --quiet says
    // nothing of its own.
    let e = cli(&ep, &["lock", "job", "-q", "--", "sh", "-c", "echo $PALISADE_FENCING_TOKEN"]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert!(e.stdout.trim().parse::<u64>().unwrap() > token, "{e:?}");
    assert_eq!(e.stderr, "", "{e:?}");
    // A CMD ended by a signal: 128 + its number, as shells say. One that cannot be run:
    // 127 (not found) or 126.
    let e = cli(&ep, &["lock", "job", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&e), Some(143), "{e:?}");
    let e = cli(&ep, &["lock", "job", "--", "/nonexistent/cmd"]);
    assert_eq!(code(&e), Some(127), "{e:?}");
    assert!(e.stderr.contains("cannot run /nonexistent/cmd"), "{e:?}");
    let e = cli(&ep, &["lock", "job", "--", "/"]);
    assert_eq!(code(&e), Some(126), "{e:?}");
    assert_eq!(lock_json(&ep, "job")["holders"], serde_json::json!([]), "released after each");

    // Held for twice its TTL (kept alive all along), and CMD can check its own token with
    // nothing but its environment.
    let check = r#"sleep 4; "$0" fence check "$PALISADE_LOCK_NAME" "$PALISADE_FENCING_TOKEN""#;
    let e = cli(&ep, &["lock", "job", "--ttl", "2s", "--", "sh", "-c", check, BIN]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert!(e.stdout.starts_with("valid name=job token="), "{e:?}");

    // A lock named like a subcommand, through `lock run`.
    let e = cli(&ep, &["lock", "run", "ls", "--", "sh", "-c", "echo $PALISADE_LOCK_NAME"]);
    assert_eq!((code(&e), e.stdout.as_str()), (Some(0), "ls\n"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_a_second_holder_waits_or_times_out_and_signals_reach_cmd() {
    let (_c, ep) = one_node().await;
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got-term");
    // Holds the lock until SIGTERM, which its trap notes (`sleep & wait`: a shell runs a
    // trap only once its foreground command is done).
    let holder = format!(
        r#"trap 'echo TERM > {}; exit 5' TERM; echo "first $PALISADE_FENCING_TOKEN"; sleep 60 & wait"#,
        got.display()
    );
    let mut first = Running::start(&ep, &["lock", "db", "--ttl", "3s", "--", "sh", "-c", &holder]);
    let line = first.line(Duration::from_secs(15));
    let t1: u64 =
        line.strip_prefix("first ").and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("{line}"));

    // Busy: --wait 1s gives up after about a second with the distinct exit code 3, and
    // --wait 0 at once; CMD never runs.
    let started = Instant::now();
    let e = cli(&ep, &["lock", "db", "--wait", "1s", "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&e), Some(3), "{e:?}");
    assert!(e.stderr.contains("lock_timeout") && e.stderr.contains("not acquired within 1s"), "{e:?}");
    assert!(e.stdout.is_empty(), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let e = cli(&ep, &["lock", "db", "--wait", "0", "--", "true"]);
    assert_eq!(code(&e), Some(3), "{e:?}");
    // Asking for another limit than the holder's: refused (exit 1).
    let e = cli(&ep, &["lock", "db", "--limit", "2", "--wait", "0", "--", "true"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("limit_mismatch"), "{e:?}");

    // A waiter queues behind the holder; ls and show say so.
    // (A wait is not cut short by the client's request timeout.)
    let second = Running::start(
        &ep,
        &[
            "lock",
            "db",
            "--ttl",
            "3s",
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "echo second $PALISADE_FENCING_TOKEN",
        ],
    );
    let until = Instant::now() + Duration::from_secs(10);
    while lock_json(&ep, "db")["waiters"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < until, "the second never queued: {}", second.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = lock_json(&ep, "db");
    let owner = v["holders"][0]["owner"].as_str().unwrap().to_string();
    assert_eq!((v["limit"].as_u64(), v["holders"][0]["fencing_token"].as_u64()), (Some(1), Some(t1)), "{v}");
    let e = cli(&ep, &["lock", "ls"]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    let rows: Vec<Vec<&str>> = e.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "LIMIT", "HOLDERS", "WAITERS"], "{e:?}");
    let token_cell = format!("{t1})");
    assert_eq!(rows[1..], [vec!["db", "1", owner.as_str(), "(token", token_cell.as_str(), "1"]], "{e:?}");
    let e = cli(&ep, &["lock", "-o", "json", "ls"]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).unwrap_or_else(|_| panic!("{e:?}"));
    assert_eq!((v["count"].as_u64(), v["locks"][0]["name"].as_str()), (Some(1), Some("db")), "{v}");
    let e = cli(&ep, &["lock", "show", "db"]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert!(e.stdout.starts_with("name: db\nlimit: 1\nrevision: "), "{e:?}");
    assert!(e.stdout.contains(&format!("holders: 1\n  owner={owner} lease=")), "{e:?}");
    assert!(e.stdout.contains(&format!("fencing_token={t1}\nwaiters: 1\n  1. owner=")), "{e:?}");
    let e = cli(&ep, &["lock", "show", "nobody-holds-this"]);
    assert!(e.stdout.contains("limit: - (nobody holds or waits for it)\n"), "{e:?}");

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(second.maybe_line(Duration::ZERO), None, "{}", second.stderr());

    // SIGTERM to palisade reaches CMD; palisade exits with CMD's status, releases, and the
    // waiter gets the lock with a higher token.
    first.signal("TERM");
    assert_eq!(first.exit(Duration::from_secs(10)), Some(5));
    assert_eq!(std::fs::read_to_string(&got).unwrap_or_default().trim(), "TERM");
    let line = second.line(Duration::from_secs(10));
    let t2: u64 =
        line.strip_prefix("second ").and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(t2 > t1, "{t2} <= {t1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_stops_cmd_when_the_lease_is_lost() {
    let (_c, ep) = one_node().await;
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got-term");
    // The lease revoked behind palisade's back: CMD gets SIGTERM at the next renewal (a
    // third of the TTL at most); exiting 0 then does not make the run a success.
    let cmd = format!(
        r#"trap 'echo TERM > {}; exit 0' TERM; echo $PALISADE_LOCK_LEASE; sleep 60 & wait"#,
        got.display()
    );
    let mut r = Running::start(&ep, &["lock", "db", "--ttl", "3s", "--", "sh", "-c", &cmd]);
    let lease = r.line(Duration::from_secs(15));
    let revoked = Instant::now();
    let e = cli(&ep, &["lease", "revoke", &lease]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert_eq!(r.exit(Duration::from_secs(10)), Some(1));
    assert!(revoked.elapsed() < Duration::from_secs(3), "stopped after {:?}", revoked.elapsed());
    assert_eq!(std::fs::read_to_string(&got).unwrap_or_default().trim(), "TERM");
    assert!(r.stderr().contains("db is lost (lease") && r.stderr().contains("SIGTERM"), "{}", r.stderr());

    // A CMD that ignores SIGTERM (and so does the process it started: ignored signals
    // are inherited) gets SIGKILL after --grace, its whole process group with it.
    let mut r = Running::start(
        &ep,
        &[
            "lock",
            "db",
            "--ttl",
            "3s",
            "--grace",
            "1s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo $PALISADE_LOCK_LEASE; sleep 60",
        ],
    );
    let lease = r.line(Duration::from_secs(15));
    let e = cli(&ep, &["lease", "revoke", &lease]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert_eq!(r.exit(Duration::from_secs(10)), Some(137));
    assert!(r.stderr().contains("did not exit within 1s: SIGKILL"), "{}", r.stderr());

    // The lease not renewed for longer than its TTL (palisade paused): once it runs again,
    // the renewal says the lease is gone, and CMD is stopped.
    let r = Running::start(&ep, &["lock", "db", "--ttl", "2s", "--", "sh", "-c", "echo up; sleep 60 & wait"]);
    assert_eq!(r.line(Duration::from_secs(15)), "up");
    r.signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lock_json(&ep, "db")["holders"], serde_json::json!([]), "the lease ended");
    r.signal("CONT");
    let mut r = r;
    assert_eq!(r.exit(Duration::from_secs(10)), Some(143));
    assert!(r.stderr().contains("is gone"), "{}", r.stderr());
}

/// The leader's token in an `elected`/`leader` line.
fn token_of(line: &str) -> u64 {
    field(line, "token").and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_elect_campaigns_observes_resigns_and_notices_a_lost_leadership() {
    let (_c, ep) = one_node().await;
    // Nobody leads yet: the observer says so first.
    let mut obs = Running::start(&ep, &["elect", "--observe", "svc"]);
    let line = obs.line(Duration::from_secs(10));
    assert!(line.starts_with("no_leader name=svc revision="), "{line}");

    // A candidate prints what it observes too: here, first perhaps that nobody leads.
    let mut a = Running::start(&ep, &["elect", "svc", "node-a:80", "--ttl", "3s"]);
    let elected = a.line_past("no_leader ", Duration::from_secs(15));
    assert!(elected.starts_with("elected name=svc value=\"node-a:80\" token="), "{elected}");
    let ta = token_of(&elected);
    let line = obs.line(Duration::from_secs(10));
    assert!(line.starts_with("leader name=svc value=\"node-a:80\" "), "{line}");
    assert_eq!(token_of(&line), ta);

    // A second candidate sees the leader, then leads once the first resigns (Ctrl-C).
    let mut b = Running::start(&ep, &["elect", "svc", "node-b:80", "--ttl", "3s"]);
    let line = b.line(Duration::from_secs(10));
    assert!(line.starts_with("leader name=svc value=\"node-a:80\" "), "{line}");
    // (Time for the second's campaign to queue: it is sent as its observation starts.)
    std::thread::sleep(Duration::from_secs(1));
    a.signal("INT");
    assert_eq!(a.exit(Duration::from_secs(10)), Some(0));
    assert!(a.line(Duration::from_secs(1)).starts_with("resigned name=svc revision="));
    let elected = b.line(Duration::from_secs(10));
    assert!(elected.starts_with("elected name=svc value=\"node-b:80\" "), "{elected}");
    let tb = token_of(&elected);
    assert!(tb > ta, "{tb} <= {ta}");
    // Leadership passed straight on: the observer sees the new leader (only, unless the
    // second candidate was slower to queue than the first to resign).
    let mut line = obs.line(Duration::from_secs(10));
    if line.starts_with("no_leader ") {
        line = obs.line(Duration::from_secs(10));
    }
    assert!(line.starts_with("leader name=svc value=\"node-b:80\" "), "{line}");
    assert_eq!(token_of(&line), tb);

    // A JSON observer: the server's events, one per line.
    let json_obs = Running::start(&ep, &["elect", "-o", "json", "--observe", "svc"]);
    let v: serde_json::Value = serde_json::from_str(&json_obs.line(Duration::from_secs(10))).unwrap();
    assert_eq!(
        (v["leader"]["value"].as_str(), v["leader"]["fencing_token"].as_u64()),
        (Some("node-b:80"), Some(tb))
    );

    // The candidate stopped (SIGTERM): it resigns, and nobody leads.
    b.signal("TERM");
    assert_eq!(b.exit(Duration::from_secs(10)), Some(0));
    let line = obs.line(Duration::from_secs(10));
    assert!(line.starts_with("no_leader name=svc revision="), "{line}");
    let v: serde_json::Value = serde_json::from_str(&json_obs.line(Duration::from_secs(10))).unwrap();
    assert_eq!(v["no_leader"]["name"], "svc", "{v}");

    // Leadership lost behind its back (its lease revoked): the candidate says so, exit 1.
    let mut c = Running::start(&ep, &["elect", "-o", "json", "svc", "node-c:80", "--ttl", "3s"]);
    let v: serde_json::Value =
        serde_json::from_str(&c.line_past("{\"no_leader\":", Duration::from_secs(15))).unwrap();
    let lease = v["elected"]["lease"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let e = cli(&ep, &["lease", "revoke", &lease.to_string()]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert_eq!(c.exit(Duration::from_secs(10)), Some(1));
    assert!(c.stderr().contains("leadership of svc is lost"), "{}", c.stderr());
    assert!(obs.line(Duration::from_secs(10)).contains("node-c:80"));
    assert!(obs.line(Duration::from_secs(10)).starts_with("no_leader name=svc "));
    assert!(obs.running());
    obs.signal("INT");
    assert_eq!(obs.exit(Duration::from_secs(10)), Some(0));

    // Not elected within --wait: exit 3 (having seen who leads).
    let d = Running::start(&ep, &["elect", "svc", "node-d:80", "--ttl", "3s"]);
    let elected = d.line_past("no_leader ", Duration::from_secs(15));
    assert!(elected.starts_with("elected name=svc value=\"node-d:80\""), "{elected}");
    let mut e = Running::start(&ep, &["elect", "svc", "node-e:80", "--ttl", "3s", "--wait", "1s"]);
    assert_eq!(e.exit(Duration::from_secs(15)), Some(3));
    assert!(e.stderr().contains("not elected within 1s"), "{}", e.stderr());
    let seen = e.maybe_line(Duration::from_secs(1)).unwrap_or_default();
    assert!(seen.starts_with("leader name=svc value=\"node-d:80\""), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fence_check_says_valid_or_stale() {
    let (_c, ep) = one_node().await;
    let mut holder = Running::start(
        &ep,
        &["lock", "res", "--", "sh", "-c", "echo $PALISADE_FENCING_TOKEN; sleep 60 & wait"],
    );
    let t: u64 = holder.line(Duration::from_secs(15)).parse().unwrap();
    let e = cli(&ep, &["fence", "check", "res", &t.to_string()]);
    assert_eq!(
        (code(&e), e.stdout.as_str()),
        (Some(0), format!("valid name=res token={t}\n").as_str()),
        "{e:?}"
    );
    let e = cli(&ep, &["fence", "-o", "json", "check", "res", &t.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).unwrap_or_else(|_| panic!("{e:?}"));
    assert_eq!(
        (code(&e), v["valid"].as_bool(), v["token"].as_u64()),
        (Some(0), Some(true), Some(t)),
        "{e:?}"
    );
    // Any other token is stale; so is every token once nobody holds the lock.
    let e = cli(&ep, &["fence", "check", "res", &(t + 1000).to_string()]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert_eq!(e.stdout, format!("stale name=res token={} current_token={t}\n", t + 1000), "{e:?}");
    holder.signal("TERM");
    assert_eq!(holder.exit(Duration::from_secs(10)), Some(143));
    let e = cli(&ep, &["fence", "check", "res", &t.to_string()]);
    assert_eq!(
        (code(&e), e.stdout.as_str()),
        (Some(1), format!("stale name=res token={t} current_token=none\n").as_str()),
        "{e:?}"
    );
    let e = cli(&ep, &["fence", "-o", "json", "check", "res", &t.to_string()]);
    let v: serde_json::Value = serde_json::from_str(&e.stdout).unwrap_or_else(|_| panic!("{e:?}"));
    assert_eq!(
        (v["valid"].as_bool(), v["error"]["code"].as_str()),
        (Some(false), Some("stale_token")),
        "{e:?}"
    );
    // Under `palisade lock`, the token defaults to PALISADE_FENCING_TOKEN (no shell needed).
    let e = cli(&ep, &["lock", "res2", "--", BIN, "fence", "--endpoints", &ep, "check", "res2"]);
    assert_eq!(code(&e), Some(0), "{e:?}");
    assert!(e.stdout.starts_with("valid name=res2 token="), "{e:?}");
    let e = cli(&ep, &["fence", "check", "res2"]);
    assert_eq!(code(&e), Some(2), "no token and no PALISADE_FENCING_TOKEN: {e:?}");
    // Bad input.
    let e = cli(&ep, &["fence", "check", "res", "x"]);
    assert_eq!(code(&e), Some(2), "{e:?}");
    let e = cli(&ep, &["fence", "check", "bad/name", "3"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("invalid_argument"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_and_elect_refuse_bad_input() {
    let (_c, ep) = one_node().await;
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["lock", "job", "--ttl", "0s", "--", "true"], 2, "invalid value '0s' for '--ttl"),
        (vec!["lock", "job", "--ttl", "soon", "--", "true"], 2, "invalid value 'soon'"),
        (vec!["lock", "job", "--wait", "5x", "--", "true"], 2, "invalid value '5x' for '--wait"),
        (vec!["lock", "job", "--grace", "-1", "--", "true"], 2, "unexpected argument"),
        (vec!["lock", "job", "true"], 2, "unexpected argument 'true'"),
        (vec!["lock", "job"], 2, "the following required arguments were not provided"),
        (vec!["lock", "job", "--"], 2, "the following required arguments were not provided"),
        (vec!["lock", "--", "true"], 2, "the following required arguments were not provided"),
        (vec!["lock", "job", "--limit", "x", "--", "true"], 2, "invalid value 'x'"),
        // Refused by the server: nothing runs.
        (vec!["lock", "job", "--ttl", "1s", "--", "sh", "-c", "echo ran"], 1, "invalid_argument"),
        (vec!["lock", "job", "--wait", "11m", "--", "sh", "-c", "echo ran"], 1, "invalid_argument"),
        (vec!["lock", "job", "--limit", "0", "--", "sh", "-c", "echo ran"], 1, "invalid_argument"),
        (vec!["lock", "no/slash", "--", "sh", "-c", "echo ran"], 1, "invalid_argument"),
        (vec!["lock", "show", "bad name"], 1, "invalid_argument"),
        (vec!["elect", "svc"], 2, "the following required arguments were not provided"),
        (vec!["elect", "svc", "v", "--ttl", "0"], 2, "invalid value '0' for '--ttl"),
        (vec!["elect", "--observe", "svc", "v"], 2, "cannot be used with"),
        (vec!["elect", "bad/name", "v"], 1, "invalid_argument"),
        (vec!["elect", "--observe", "bad/name"], 1, "invalid_argument"),
    ];
    for (args, want, says) in cases {
        let e = cli(&ep, &args);
        assert_eq!(code(&e), Some(want), "{args:?}: {e:?}");
        assert!(e.stderr.contains(says), "{args:?}: {e:?}");
        assert!(!e.stdout.contains("ran"), "{args:?}: {e:?}");
    }
    // No endpoint reachable: 2, and CMD does not run.
    let dead = format!("127.0.0.1:{}", support::process::free_ports(1)[0]);
    let e = cli(&dead, &["lock", "job", "--", "sh", "-c", "echo ran"]);
    assert_eq!(code(&e), Some(2), "{e:?}");
    assert!(e.stderr.contains("cannot connect to any endpoint") && e.stdout.is_empty(), "{e:?}");
}

/// `examples/fencing/demo.sh`, end to end: A paused past its lease is fenced off, B's
/// write is accepted.
#[test]
fn cli_lock_fencing_example_runs() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fencing/demo.sh");
    let out = std::process::Command::new("sh")
        .arg(script)
        .env("PALISADE", BIN)
        .env_remove("PALISADE_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("RESULT: B's write was accepted"), "{stdout}\n{stderr}");
    assert!(stdout.contains("RESULT: A was fenced off: its write with token"), "{stdout}\n{stderr}");
    assert!(stdout.contains("A: write REFUSED"), "{stdout}\n{stderr}");
}
