//! Fault tests of an in-process cluster over the simulated network (`tests/sim`): partitions,
//! lossy and slow links, crashes and restarts, checked through the node facade.
//!
//! Every test prints its seed; `PALISADE_SEED=<n> cargo test --test it cluster_sim` reuses it.

use crate::sim;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use palisade::error::Error;
use palisade::peer::{PeerHandler, PeerRequest, PeerResponse};
use palisade::raft::NodeId;
use sim::{put_cmd, Cluster, Handles, Ledger, LinkFaults, SimNet};
use tokio::time::Instant;

/// Upper bound for a single facade call: it must end within its request deadline (1 s); this
/// only catches a call that hangs, with a wide margin for a loaded machine.
const HANG: Duration = Duration::from_secs(8);

fn others(c: &Cluster, not: &[NodeId]) -> Vec<NodeId> {
    c.ids().into_iter().filter(|id| !not.contains(id)).collect()
}

fn is_unavailable_or_timeout<T: std::fmt::Debug>(r: &palisade::error::Result<T>) -> bool {
    matches!(r, Err(Error::Unavailable(_) | Error::Timeout(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_majority_moves_on() {
    let c = Cluster::start(3).await;
    let (old, old_term) = c.leader().await;
    c.put_ok(old, "/base", "0").await;
    let majority = others(&c, &[old]);

    c.isolate(old);
    // The old leader may still believe it leads: the write is proposed on it, or it finds
    // no leader. Either way it must not be acknowledged, and it ends within the deadline.
    let lost = tokio::time::timeout(HANG, c.put(old, "/lost", "x"))
        .await
        .expect("a write to an isolated leader ends within its deadline");
    assert!(is_unavailable_or_timeout(&lost), "a write on the minority side was answered {lost:?}");

    let (new, new_term) = c.leader_among(&majority).await;
    assert_ne!(new, old);
    assert!(new_term > old_term, "new leader {new} has term {new_term}, the old one had {old_term}");
    for (i, id) in majority.iter().cycle().take(6).enumerate() {
        c.put_ok(*id, &format!("/after/{i}"), &i.to_string()).await;
    }
    let mid = c.dump_ok(majority[0]).await;
    assert!(!mid.kvs.contains_key("/lost"), "the minority's write is visible on the majority");

    c.heal();
    let state = c.converge().await;
    let expected: BTreeSet<String> =
        ["/base".to_string()].into_iter().chain((0..6).map(|i| format!("/after/{i}"))).collect();
    let keys: BTreeSet<String> = state.kvs.keys().cloned().collect();
    assert_eq!(keys, expected, "the unacknowledged write of the old leader must never appear");
    for i in 0..6 {
        assert_eq!(state.value(&format!("/after/{i}")), Some(i.to_string()));
    }

    // The old leader has stepped down: every node, the old leader included, agrees on a
    // leader of the new term or later.
    let (leader, term) = c.leader().await;
    assert!(term >= new_term, "the cluster went back to term {term}");
    assert!(leader == old || !c.is_leader(old), "the old leader still acts as leader\n{}", c.describe());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_read_on_isolated_leader_fails_instead_of_stale() {
    let c = Cluster::start(3).await;
    let (old, _) = c.leader().await;
    c.put_ok(old, "/k", "old").await;
    let majority = others(&c, &[old]);

    c.isolate(old);
    let (new, _) = c.leader_among(&majority).await;
    c.put_ok(new, "/k", "new").await;
    let (_, kv) = c.get_ok(majority[0], "/k").await;
    assert_eq!(kv.map(|kv| kv.value), Some(b"new".to_vec()));

    // The isolated node still holds the old value: a serializable read may return it...
    let (_, stale) = c.get(old, "/k", false).await.expect("serializable reads need no quorum");
    assert_eq!(stale.map(|kv| kv.value), Some(b"old".to_vec()), "test premise: the old leader is stale");
    // ...but a linearizable read must fail rather than return it.
    let read = tokio::time::timeout(HANG, c.get(old, "/k", true))
        .await
        .expect("a linearizable read on an isolated node ends within its deadline");
    assert!(
        matches!(read, Err(Error::Unavailable(_) | Error::Timeout(_))),
        "linearizable read without a quorum answered {read:?}"
    );

    c.heal();
    let (_, kv) = c.get_ok(old, "/k").await;
    assert_eq!(
        kv.map(|kv| kv.value),
        Some(b"new".to_vec()),
        "after healing, the old leader reads the new value"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_split_two_three_only_majority_progresses() {
    let c = Cluster::start(5).await;
    let (old, old_term) = c.leader().await;
    c.put_ok(old, "/base", "0").await;
    // The harder split: the leader is on the small side, with one follower.
    let buddy = others(&c, &[old])[0];
    let minority = vec![old, buddy];
    let majority = others(&c, &minority);
    c.partition(&[&minority, &majority]);

    // The small side cannot commit, whether through its leader or its follower...
    let (via_leader, via_follower) = tokio::time::timeout(
        HANG,
        futures::future::join(c.put(old, "/minority/a", "x"), c.put(buddy, "/minority/b", "y")),
    )
    .await
    .expect("minority writes end within their deadline");
    assert!(is_unavailable_or_timeout(&via_leader), "minority leader answered {via_leader:?}");
    assert!(is_unavailable_or_timeout(&via_follower), "minority follower answered {via_follower:?}");
    // ...nor serve a linearizable read.
    let read = tokio::time::timeout(HANG, c.dump(buddy, true)).await.expect("ends within its deadline");
    assert!(read.is_err(), "minority served a linearizable read: {read:?}");

    // The big side elects a leader of a later term and commits.
    let (new, new_term) = c.leader_among(&majority).await;
    assert!(majority.contains(&new) && new_term > old_term);
    for (i, id) in majority.iter().cycle().take(6).enumerate() {
        c.put_ok(*id, &format!("/majority/{i}"), &i.to_string()).await;
    }

    c.heal();
    c.leader().await;
    let state = c.converge().await;
    let keys: BTreeSet<&str> = state.kvs.keys().map(String::as_str).collect();
    let want: BTreeSet<String> =
        ["/base".to_string()].into_iter().chain((0..6).map(|i| format!("/majority/{i}"))).collect();
    assert_eq!(keys, want.iter().map(String::as_str).collect(), "minority writes must never appear");
    assert_eq!(c.live().len(), 5);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_links_lose_no_acknowledged_write() {
    let c = Cluster::start(3).await;
    let (leader, _) = c.leader().await;
    // One client, talking to a follower so every write is also forwarded over a bad link.
    let via = others(&c, &[leader])[0];
    c.lossy(0.10, (1, 20));

    let ledger = Ledger::new();
    let started = Instant::now();
    for n in 0..40 {
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        let (key, value) = (format!("/lossy/{n:03}"), format!("v{n}"));
        let r = tokio::time::timeout(HANG, c.put(via, &key, &value)).await.expect("a write ends");
        ledger.record(0, &key, &value, &r);
    }
    let (acked, refused, ambiguous) = ledger.counts();
    eprintln!("lossy: {acked} acknowledged, {refused} refused, {ambiguous} timed out");
    assert!(acked > 0, "no write got through 10% loss\n{}", c.describe());

    c.heal();
    let state = c.converge().await;
    ledger.check(&state);
    c.shutdown().await;
}

/// Writes unique keys `{prefix}{n}` one after another through the running nodes in turn,
/// recording each result, until `stop` is set.
fn spawn_writer(
    handles: Handles,
    ledger: Ledger,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let live = handles.live();
            let Some(node) = live.get(n as usize % live.len().max(1)).and_then(|id| handles.get(*id)) else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (key, value) = (format!("{prefix}{n:05}"), format!("v{n}"));
            let r = tokio::time::timeout(HANG, node.write(put_cmd(&key, &value)))
                .await
                .unwrap_or_else(|_| panic!("write {key} hung past its deadline"));
            if r.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ledger.record(0, &key, &value, &r);
            n += 1;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_lose_no_acknowledged_write() {
    let c = Cluster::start(3).await;
    let (leader, _) = c.leader().await;
    let ledger = Ledger::new();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(c.handles(), ledger.clone(), "/crash/", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A follower goes down and comes back on its data dir.
    let follower = others(&c, &[leader])[0];
    c.crash(follower).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart(follower).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Then whoever leads now.
    let (leader, _) = c.leader().await;
    let before = ledger.counts().0;
    c.crash(leader).await;
    let (_, _) = c.leader_among(&others(&c, &[leader])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart(leader).await;
    c.leader().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::SeqCst);
    writer.await.expect("the writer task");
    let (acked, refused, ambiguous) = ledger.counts();
    eprintln!("crash: {acked} acknowledged, {refused} refused, {ambiguous} timed out");
    assert!(acked > before, "no write was acknowledged after the leader crashed\n{}", c.describe());

    let state = c.converge().await;
    ledger.check(&state);
    assert_eq!(c.live().len(), 3);
    c.shutdown().await;
}

/// A write whose entry reached the followers but whose leader crashed before it heard back
/// may still commit under the next leader, so it must not be reported as refused
/// (`Unavailable` promises "nothing took effect").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_leader_interrupted_by_its_crash_is_not_reported_refused() {
    interrupted_write(false).await;
}

/// The same, for a write a follower forwarded to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_write_interrupted_by_leader_crash_is_not_reported_refused() {
    interrupted_write(true).await;
}

/// Proposes a put on the leader (directly, or forwarded by a follower), lets its entry reach
/// both followers while the leader never hears their acknowledgements, crashes the leader,
/// and checks the write's result against what the next leader commits.
async fn interrupted_write(forwarded: bool) {
    let c = Cluster::start(3).await;
    let (leader, _) = c.leader().await;
    c.put_ok(leader, "/base", "0").await;
    let followers = others(&c, &[leader]);
    // The followers get the leader's appends but the leader never hears their answers.
    for f in &followers {
        c.set_link_faults(leader, *f, LinkFaults { drop_response: 1.0, ..Default::default() });
    }
    let last_index = |id: NodeId| c.node(id).replica_status().last_log_index;
    let before = last_index(leader);
    let node = c.node(if forwarded { followers[0] } else { leader });
    let write = tokio::spawn(async move { node.write(put_cmd("/ghost", "boo")).await });
    // Let the entry reach the followers' logs (well within the 1 s deadline), then crash.
    let deadline = Instant::now() + Duration::from_millis(700);
    let replicated = || last_index(leader) > before && followers.iter().all(|f| last_index(*f) > before);
    while !replicated() {
        assert!(
            Instant::now() < deadline,
            "test premise: the entry did not reach the followers\n{}",
            c.describe()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.crash(leader).await;
    let r = tokio::time::timeout(HANG, write).await.expect("the write ends").expect("the write task");
    let ledger = Ledger::new();
    ledger.record(0, "/ghost", "boo", &r);
    eprintln!("write interrupted by the crash: {r:?}");

    c.heal();
    c.leader_among(&followers).await;
    c.restart(leader).await;
    let state = c.converge().await;
    eprintln!("/ghost after the crash: {:?}", state.value("/ghost"));
    ledger.check(&state);
    c.shutdown().await;
}

/// Answers every call; counts the calls that reached it.
#[derive(Default)]
struct Counter(AtomicU64);

impl PeerHandler for Counter {
    fn handle(&self, _from: NodeId, _req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        async move { PeerResponse::ReadIndex(Ok(palisade::peer::ReadIndexReply { index: n, term: 0 })) }
            .boxed()
    }
}

/// For each of a scripted sequence of calls over one lossy link: (reached the target, answered).
async fn drop_pattern(seed: u64) -> Vec<(bool, bool)> {
    let net = SimNet::new(seed);
    assert_eq!(net.seed(), seed);
    let target = Arc::new(Counter::default());
    net.register(2, target.clone());
    net.set_faults(1, 2, LinkFaults { drop_request: 0.2, drop_response: 0.2, delay_ms: (0, 2) });
    let mut pattern = Vec::new();
    for _ in 0..60 {
        let before = target.0.load(Ordering::SeqCst);
        let r = net.call(1, 2, PeerRequest::ReadIndex, Duration::from_millis(100)).await;
        pattern.push((target.0.load(Ordering::SeqCst) > before, r.is_ok()));
    }
    pattern
}

#[tokio::test]
async fn a_seed_replays_the_same_fault_decisions() {
    let seed = sim::choose_seed(None);
    let other = seed.wrapping_add(1);
    eprintln!("[sim] seed {seed} (replay with {}={seed})", sim::SEED_ENV);
    let (a, b, c) = futures::future::join3(drop_pattern(seed), drop_pattern(seed), drop_pattern(other)).await;
    assert_eq!(a, b, "the same seed drew different faults");
    assert_ne!(a, c, "seeds {seed} and {other} drew the same 60 faults");
    // The pattern really mixes lost requests, lost responses and answers.
    assert!(a.contains(&(false, false)), "no request was lost: {a:?}");
    assert!(a.contains(&(true, false)), "no response was lost: {a:?}");
    assert!(a.contains(&(true, true)), "nothing was answered: {a:?}");
    assert!(!a.contains(&(false, true)), "an answer without a delivery: {a:?}");
}

/// With a small peer message limit (enforced by the network), a follower that was cut off
/// catches up through appends split to fit, and a crashed one through a snapshot sent in
/// chunks: no message ever passes the limit, and no write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_catch_ups_travel_in_messages_under_the_limit() {
    const LIMIT: usize = 1 << 20;
    let mut opts = sim::ClusterOptions::new(3);
    opts.snapshot_every = 100;
    opts.configure = |cfg| {
        cfg.max_peer_message_bytes = LIMIT;
        cfg.max_value_bytes = 64 << 10;
        // A request body (a transaction) must fit a peer message too.
        cfg.max_body_bytes = 256 << 10;
    };
    let c = Cluster::start_with(opts).await;
    c.net().set_max_message_bytes(LIMIT);
    let (leader, _) = c.leader().await;
    let lagging = others(&c, &[leader])[0];
    let value = "v".repeat(16 << 10);
    // Cut off: 80 entries of 16 KiB (1.3 MiB) wait for it.
    c.isolate(lagging);
    for i in 0..80 {
        c.put_ok(leader, &format!("/cut/{i}"), &value).await;
    }
    c.heal();
    let state = c.converge().await;
    assert_eq!(state.kvs.keys().filter(|k| k.starts_with("/cut/")).count(), 80);
    // Crashed: 300 more entries, so the leader's log no longer reaches back; the snapshot
    // (about 6 MiB) must travel in chunks.
    c.crash(lagging).await;
    for i in 0..300 {
        c.put_ok(leader, &format!("/down/{i}"), &value).await;
    }
    c.restart(lagging).await;
    let state = c.converge().await;
    assert_eq!(state.kvs.len(), 380, "{}", c.describe());
    let largest = c.net().largest_delivered();
    assert!(largest <= LIMIT, "a message of {largest} bytes passed the limit of {LIMIT}");
    assert!(largest > LIMIT / 2, "the test premise failed: no large message was needed ({largest} bytes)");
    c.shutdown().await;
}

/// A snapshot of over ten megabytes crosses in more than a dozen chunks, each under the
/// message limit, into a file on the receiver (nothing of it is left over there), and the
/// follower ends with every key, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_is_streamed_to_a_follower() {
    const LIMIT: usize = 1 << 20;
    let mut opts = sim::ClusterOptions::new(3);
    opts.snapshot_every = 100;
    // Writes of 60 KB share two cores with snapshots of megabytes being built: room for a
    // busy machine (the test is about the transfer, not the write latency).
    opts.request_timeout = Duration::from_secs(10);
    opts.configure = |cfg| {
        cfg.max_peer_message_bytes = LIMIT;
        cfg.max_value_bytes = 64 << 10;
        cfg.max_body_bytes = 256 << 10;
    };
    let c = Cluster::start_with(opts).await;
    c.net().set_max_message_bytes(LIMIT);
    let (leader, _) = c.leader().await;
    let lagging = others(&c, &[leader])[0];
    c.crash(lagging).await;
    // 360 values of 60 KB: about 21 MB of state; the snapshot the follower needs holds
    // most of it.
    for i in 0..360 {
        let value: String = (0..60_000).map(|j| (b'a' + ((i + j) % 26) as u8) as char).collect();
        c.put_ok(leader, &format!("/big/{i:03}"), &value).await;
    }
    c.restart(lagging).await;
    // Sending and checking megabytes takes a while in a debug build on a busy machine (and
    // a leader change starts the transfer over): more than `converge` waits by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.status(lagging).revision < 360 {
        assert!(Instant::now() < deadline, "the follower never caught up: {}", c.describe());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = c.converge().await;
    assert_eq!(state.kvs.len(), 360, "{}", c.describe());
    for i in [0usize, 179, 359] {
        let (_, kv) = c.get(lagging, &format!("/big/{i:03}"), false).await.unwrap();
        let want: Vec<u8> = (0..60_000).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        assert_eq!(kv.expect("the key").value, want);
    }
    let largest = c.net().largest_delivered();
    assert!(largest <= LIMIT, "a message of {largest} bytes passed the limit of {LIMIT}");
    let snapshots = c.node(lagging).config().data_dir.join("snapshot");
    let mut names: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["snapshot.bin"], "the received file was installed, and nothing else is left");
    let size = std::fs::metadata(snapshots.join("snapshot.bin")).unwrap().len();
    // At most 768 KiB of snapshot bytes fit a chunk under the limit (base64 in JSON).
    assert!(size > 10_000_000, "the snapshot is {size} bytes: too few chunks for the test's premise");
    c.shutdown().await;
}

/// A member rebuilt on an empty disk (`--rebuild-from-peers`) catches up from the others
/// and becomes a member like any other; no acknowledged write is lost. (That it refuses
/// votes and stale leaders meanwhile is tested beside `Replica`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_is_rebuilt_from_its_peers() {
    let c = Cluster::start(3).await;
    let (leader, _) = c.leader().await;
    for i in 0..20 {
        c.put_ok(leader, &format!("/k/{i}"), "v").await;
    }
    let victim = others(&c, &[leader])[0];
    c.crash(victim).await;
    c.put_ok(leader, "/k/while-down", "v").await;
    c.wipe(victim);
    c.rebuild(victim).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(victim).readiness().is_err() {
        assert!(
            Instant::now() < deadline,
            "the rebuilt node never became ready: {:?}",
            c.node(victim).readiness()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = c.converge().await;
    assert_eq!(state.kvs.len(), 21, "{}", c.describe());
    // It counts again: with the leader gone, the other two elect one.
    c.crash(leader).await;
    let rest = others(&c, &[leader]);
    let (new_leader, _) = c.leader_among(&rest).await;
    c.put_ok(new_leader, "/k/after", "v").await;
    c.shutdown().await;
}

/// A waiting acquire answered by a follower whose state lags the leader's: when its wait
/// runs out before the follower has even applied the queueing, the answer is decided by
/// the leader (a cancel), never read from a state without the waiter, so the waiter never
/// stays queued unknown to anyone (where it would later be granted the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_lagging_follower_leaves_the_queue_when_its_wait_runs_out() {
    use palisade::node::{AcquireRequest, Acquired, Consistency};
    use palisade::store::{Command, Kind};

    let mut opts = sim::ClusterOptions::new(3);
    opts.election_timeout_ms = 3_000;
    opts.request_timeout = Duration::from_secs(3);
    opts.configure = |cfg| cfg.lease_min_ttl_ms = 6_000;
    let c = Cluster::start_with(opts).await;
    let (leader, _) = c.leader().await;
    let follower = others(&c, &[leader])[0];
    c.write(leader, Command::LeaseGrant { id: Some(7), ttl_ms: 60_000, clock_ms: 0 }).await.unwrap();
    let acquire = |wait: Duration| AcquireRequest {
        kind: Kind::Lock,
        name: "m".into(),
        lease: Some(7),
        ttl_ms: 0,
        wait,
        limit: None,
        value: Vec::new(),
        idempotency_key: None,
        caller: palisade::auth::Caller::open(),
    };
    let (held, _) = c.node(leader).acquire(acquire(Duration::ZERO)).await.unwrap();
    assert!(matches!(held, Acquired::Held { .. }), "{held:?}");

    // What the leader sends the follower now arrives 300 ms late (and its answers too).
    let slow = LinkFaults { delay_ms: (300, 300), ..LinkFaults::default() };
    c.net().set_faults(leader, follower, slow);
    for round in 0..3 {
        let r = tokio::time::timeout(HANG, c.node(follower).acquire(acquire(Duration::from_millis(100))))
            .await
            .expect("an acquire ends within its wait and deadline");
        let (acquired, _) = r.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert!(matches!(acquired, Acquired::TimedOut { .. }), "round {round}: {acquired:?}");
        let (_, lock) = c.node(leader).lock_info(Kind::Lock, "m", Consistency::Linearizable).await.unwrap();
        let lock = lock.expect("still held");
        assert!(lock.waiters.is_empty(), "round {round}: a waiter stayed queued: {:?}", lock.waiters);
        assert_eq!(lock.holders.len(), 1);
    }
    c.net().heal();
    c.shutdown().await;
}
