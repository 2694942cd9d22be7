//! Rotating the peer secret on a live 3-node cluster, and a member left with the old one.
//!
//! Each node gets its own secret file (the harness shares one), rewritten through the three
//! steps of a rotation (add the new secret second, move it first, drop the old one) while a
//! writer keeps writing through every node (followers forward to the leader, so peer calls
//! of both kinds are signed and checked all along). Every write succeeds and the leader and
//! term stay. Then a follower restarted with only the old secret can neither vote nor take
//! entries: the others keep their leader and term, it never leads and never gets the new
//! writes, and both its log and the leader's say why, without a secret in any log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::process::{with_flag, Cluster, ClusterOptions, Consistency};

const OLD: &str = "old-secret-0123456789abcdef";
const NEW: &str = "new-secret-fedcba9876543210";

/// Replaces `path` with `text` at once (a reader never sees half a file).
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn log(c: &Cluster, id: u64) -> String {
    String::from_utf8_lossy(&std::fs::read(c.log_path(id)).unwrap_or_default()).into_owned()
}

/// Waits until node `id`'s log has reported `n` reloads of its peer secrets.
async fn reloaded(c: &Cluster, id: u64, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log(c, id).matches("peer secrets reloaded from").count() < n {
        assert!(Instant::now() < deadline, "node {id} did not reload its secret file\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(leader, term)` in node `id`'s view.
async fn view(c: &Cluster, id: u64) -> (Option<u64>, u64) {
    let v = c.cluster_view(id).await.expect("/v1/cluster answers");
    (v["leader"].as_u64(), v["term"].as_u64().unwrap())
}

/// Writes `{prefix}{i}` through each of `nodes` in turn until stopped; counts the writes and the failures.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(c: Arc<Cluster>, nodes: Vec<u64>, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let id = nodes[i as usize % nodes.len()];
                match c.http().put(&c.client_url(id), &format!("{prefix}{i}"), "v").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("write {i} through node {id}: {} {}", r.status, r.text)),
                    Err(e) => failures.push(format!("write {i} through node {id}: {e}")),
                }
                d.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        });
        Writer { stop, done, task }
    }

    /// Waits for `n` more writes (so some happen in the current step).
    async fn more(&self, n: u64) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.done.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the writer is stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_rotation_refuses_nothing_and_a_stale_member_is_refused_with_reasons() {
    // Started by hand below, each with a secret file of its own.
    let c = Cluster::start(ClusterOptions { delayed: vec![1, 2, 3], ..Default::default() }).await;
    let c = Arc::new(c);
    let dir = c.peer_secret_path().parent().unwrap().to_path_buf();
    let file = |id: u64| -> PathBuf { dir.join(format!("peer-secret-{id}")) };
    for id in c.ids() {
        rewrite(&file(id), &format!("{OLD}\n"));
        let args = with_flag(&c.command_line(id), "--peer-secret-file", &file(id).to_string_lossy());
        c.set_command_line(id, args);
    }
    futures::future::join_all(c.ids().into_iter().map(|id| {
        let c = c.clone();
        async move { c.start_node(id).await }
    }))
    .await;
    let (leader, term) = c.leader().await;

    let writer = Writer::start(c.clone(), c.ids(), "/rot/");
    writer.more(20).await;
    // The three steps, each on every member in turn, each waited for on every member.
    let steps = [format!("{OLD}\n{NEW}\n"), format!("\n  {NEW}  \n{OLD}\n\n"), format!("{NEW}\n")];
    for (n, text) in steps.iter().enumerate() {
        for id in c.ids() {
            rewrite(&file(id), text);
            writer.more(5).await;
        }
        for id in c.ids() {
            reloaded(&c, id, n + 1).await;
        }
        writer.more(20).await;
    }
    // A file that cannot be used changes nothing; the node says why, once.
    rewrite(&file(leader), "too short\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log(&c, leader).contains("cannot be used") {
        assert!(Instant::now() < deadline, "no warning about the bad file\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.more(30).await;
    let warning = log(&c, leader).lines().find(|l| l.contains("cannot be used")).unwrap().to_string();
    assert!(
        warning.contains(&*file(leader).to_string_lossy()) && warning.contains("at least 16"),
        "{warning}"
    );
    assert_eq!(log(&c, leader).matches("cannot be used").count(), 1, "warned more than once");
    rewrite(&file(leader), &format!("{NEW}\n"));

    let (writes, failures) = writer.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {writes} writes failed during the rotation: {failures:#?}",
        failures.len()
    );
    assert!(writes >= 100, "only {writes} writes");
    assert_eq!(c.leader().await, (leader, term), "the rotation moved the leadership");

    // A follower restarted with the old secret only.
    let stale = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != stale).collect();
    c.stop(stale, Duration::from_secs(5));
    let r = c.http().put(&c.client_url(leader), "/while-stopped", "v").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    rewrite(&file(stale), &format!("{OLD}\n"));
    c.restart(stale).await;
    let writer = Writer::start(c.clone(), others.clone(), "/stale/");
    // Several election timeouts (300 ms) of the stale node.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for &id in &others {
            assert_eq!(
                view(&c, id).await,
                (Some(leader), term),
                "node {id}: the stale member disturbed the cluster"
            );
        }
        let (seen_leader, _) = view(&c, stale).await;
        assert_ne!(seen_leader, Some(stale), "the stale member became leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (writes, failures) = writer.finish().await;
    assert!(failures.is_empty(), "writes failed with a stale member around: {failures:#?}");
    assert!(writes > 20, "only {writes} writes");
    for key in ["/while-stopped", "/stale/0", "/stale/20"] {
        let r = c.http().get(&c.client_url(stale), key, Consistency::Serializable).await.unwrap();
        assert_eq!(r.status, 404, "the stale member got {key}: {}", r.text);
    }
    let r = c.http().get(&c.client_url(leader), "/while-stopped", Consistency::Linearizable).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);

    // Both sides say why.
    let (stale_log, leader_log) = (log(&c, stale), log(&c, leader));
    let has = |log: &str, needles: &[&str]| log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    let refused_from = |id: u64| format!("refused a peer request from node {id} at 127.0.0.1:");
    let different = |id: u64| format!("this node and node {id} hold different peer secrets");
    let refused_by =
        |id: u64| format!("node {id} refused this node's requests: the signature does not match");
    assert!(
        has(&leader_log, &[&refused_from(stale), &different(stale)]),
        "the leader's log does not say why it refuses node {stale}:\n{}",
        c.log_tail(leader, 40)
    );
    assert!(
        has(&stale_log, &[&refused_by(leader)]) || has(&stale_log, &[&refused_by(others[1])]),
        "the stale node's log does not say it is refused:\n{}",
        c.log_tail(stale, 40)
    );
    assert!(
        has(&stale_log, &[&refused_from(leader), &different(leader)]),
        "the stale node's log does not say why it refuses the leader:\n{}",
        c.log_tail(stale, 40)
    );
    assert!(
        has(&leader_log, &[&refused_by(stale)]),
        "the leader's log does not say node {stale} refuses it:\n{}",
        c.log_tail(leader, 40)
    );
    // Rate-limited: 4 s of refused heartbeats and votes make a handful of lines, not hundreds.
    let lines = leader_log.lines().filter(|l| l.contains(&refused_from(stale))).count();
    assert!(lines <= 4, "{lines} lines about refused requests of node {stale} in 4 s");
    // And no secret in any log.
    for id in c.ids() {
        let l = log(&c, id);
        assert!(!l.contains(OLD) && !l.contains(NEW), "node {id}'s log shows a peer secret");
    }
}
