//! Jepsen-style fault tests against real 3-node clusters of `palisade serve` processes.
//!
//! Each test runs the register workload of `jepsen::recorder` (5 concurrent clients
//! reading, writing and compare-and-swapping a few keys through every live node) while a
//! seeded nemesis injects one kind of fault over and over: `kill -9` of one node or of all
//! of them, SIGSTOP of the leader, or (in network namespaces, see `support::netns`)
//! partitions, one-way drops and lossy links. Then everything is healed and restarted,
//! the cluster converges, and the history must be linearizable per key
//! (`jepsen::linearizability::check`), revisions must be consistent
//! (`check_revisions`), and every node must hold the same final state.
//!
//! The nemesis schedule is drawn from a seed: `PALISADE_SEED`, or a fixed default. Each
//! test prints its seed and its replay command (`PALISADE_SEED=<n> cargo test --test it
//! fault_process::<name>`); a replay draws the same faults in the same order, though real
//! processes and timing never replay exactly. On a failure the message carries the
//! seed, the checker's violation with the offending sub-history, the nemesis events on the
//! history's clock, and the node logs follow.
//!
//! Every round also runs the lease workload of `jepsen::recorder` ([`LeaseWorkload`]):
//! leases granted through every live node, an ephemeral key under each, some kept alive,
//! others abandoned or revoked, the keys observed with linearizable reads. It stops keeping
//! leases alive once everything is healed, its observers read on until every key is gone,
//! and the lease history is checked against the failover rule
//! (`jepsen::leases::check_leases`, with each nemesis step's fault window).
//!
//! Every round also watches the register keys (`jepsen::recorder::start_watches`): on every
//! node a recursive watch of their parent and a watch of one key, each resuming on another
//! node after an error. Once healed, every stream is brought up to the final revision and
//! checked (`jepsen::watch::check_watches`: order, no gap, no duplicate, every event of a
//! revision together, the same history on every node) against the acknowledged writes
//! and a final linearizable dump.
//!
//! Every round also runs the lock workload of `jepsen::recorder` ([`LockWorkload`]): holders
//! contending for a mutex and a semaphore of limit 2, and candidates for an election,
//! through every live node, each with a lease whose end a marker key records; a guarded
//! resource that keeps the highest fencing token; fence checks and fenced puts; observers
//! of the election on every node. It stops with the lease workload; once every lease has
//! ended, the grants, releases, lease ends, accesses and fence answers are checked by
//! `jepsen::fencing::check_locks_with`, and the observe streams (which must all end on
//! "no leader") by `jepsen::fencing::check_observations`.
//!
//! The `netns_*` tests need root, iproute2 and iptables (CI's `.ci/run` installs them);
//! without them they fail with the reason, they never pass silently.
//!
//! Soak variants (ignored by default) mix the nemeses for `PALISADE_SOAK_SECS` (default 60):
//! `PALISADE_SOAK_SECS=600 PALISADE_SEED=7 cargo test --release --test it fault_process::soak
//! -- --ignored --nocapture`.

use crate::jepsen;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use jepsen::history::{Call, History, Op, Outcome};
use jepsen::leases::{self, check_leases, FaultWindow};
use jepsen::linearizability;
use jepsen::recorder::{
    run_leases, run_register, start_locks, start_watches, Endpoints, LeaseWorkload, LockWorkload, Recorder,
    RegisterWorkload, WatchWorkload,
};
use support::netns::Net;
use support::process::{Cluster, ClusterOptions, Consistency, BIN};

/// The seed when `PALISADE_SEED` is not set.
const DEFAULT_SEED: u64 = 1;

/// How long the nemesis of a short test runs (the whole test takes a few seconds more).
const SHORT: Duration = Duration::from_secs(8);

/// Fewer acknowledged ops than this and a history proves nothing.
const MIN_OK_OPS: usize = 50;

/// One kind of fault, applied and reverted by one nemesis step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nemesis {
    /// `kill -9` one node (the leader half of the time), restart it.
    Kill9One,
    /// `kill -9` every node, restart them all.
    Kill9All,
    /// SIGSTOP the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// Cut the leader off from the other nodes (clients still reach it), then heal.
    IsolateLeader,
    /// A random majority/minority split, or a bridge (two nodes that cannot see each other,
    /// both seeing the third), then heal.
    MajorityMinority,
    /// Drop everything the leader sends to the followers (one way), or make its links
    /// lossy, then heal.
    OneWayLoss,
    /// Restart every node in turn, gracefully (SIGTERM: it finishes its requests, a leader
    /// hands over), each once the one before is ready again. Clients keep every node in
    /// their endpoints, so they meet refused connections and 503s, and nothing else: no
    /// request may end with an unknown outcome.
    RollingRestart,
}

use Nemesis::*;

const PROCESS_NEMESES: &[Nemesis] = &[Kill9One, Kill9All, PauseLeader, RollingRestart];
const ALL_NEMESES: &[Nemesis] =
    &[Kill9One, Kill9All, PauseLeader, IsolateLeader, MajorityMinority, OneWayLoss, RollingRestart];

impl Nemesis {
    fn needs_netns(self) -> bool {
        matches!(self, IsolateLeader | MajorityMinority | OneWayLoss)
    }

    /// Whether every request made under it must end with a known outcome.
    fn graceful(self) -> bool {
        matches!(self, RollingRestart)
    }
}

use jepsen::replay::ReplayHint;

/// `PALISADE_SEED` (or `PALISADE_SOAK_SEED`, which `make soak` sets), else the default.
fn seed() -> u64 {
    jepsen::replay::seed_or(DEFAULT_SEED)
}

/// The command that runs test `name` again with `seed`.
fn replay(name: &str, seed: u64) -> String {
    jepsen::replay::replay_command("fault_process", name, seed, name.starts_with("soak"))
}

/// What one round recorded.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    ops: usize,
    ok: usize,
    fail: usize,
    unknown: usize,
    events: usize,
}

impl Stats {
    fn of(h: &History, events: usize) -> Stats {
        let mut s = Stats { ops: h.ops.len(), events, ..Stats::default() };
        for op in &h.ops {
            match op.outcome {
                Outcome::Ok { .. } => s.ok += 1,
                Outcome::Fail => s.fail += 1,
                Outcome::Unknown => s.unknown += 1,
            }
        }
        s
    }

    fn add(&mut self, o: Stats) {
        self.ops += o.ops;
        self.ok += o.ok;
        self.fail += o.fail;
        self.unknown += o.unknown;
        self.events += o.events;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops ({} ok, {} fail, {} unknown), {} nemesis events",
            self.ops, self.ok, self.fail, self.unknown, self.events
        )
    }
}

/// A cluster under test, the nemesis' state and the current round's recorder.
struct Run {
    name: &'static str,
    seed: u64,
    rng: StdRng,
    /// Declared before `net`: the nodes are killed before their namespaces go.
    cluster: Cluster,
    net: Option<Net>,
    /// The nodes clients may send requests to (running ones), with their client URLs.
    up: Arc<Mutex<BTreeMap<u64, String>>>,
    paused: BTreeSet<u64>,
    rec: Arc<Recorder>,
    /// This round's nemesis events, on the recorder's clock.
    events: Vec<String>,
    /// When this round's faults were in force (each step, from its fault to its revert).
    windows: Vec<FaultWindow>,
    /// For quick probes (`/v1/cluster`): a hung node must not stall the nemesis.
    probe: reqwest::Client,
    /// Process ids for the final reads, far from the workload's.
    next_final_process: AtomicUsize,
    /// Which variant of `OneWayLoss` comes next.
    one_way_turn: u32,
    /// The TLS files of a secured cluster (kept while it runs).
    _tls_dir: Option<tempfile::TempDir>,
}

/// How the cluster under test is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Plain HTTP, no client auth (the quick start's defaults).
    Plain,
    /// TLS on both listeners, peers authenticated by mutual TLS and the peer secret, and
    /// client auth (every workload request carries a non-admin token; see
    /// `support::credentials`).
    Secured,
}

impl Run {
    async fn start(name: &'static str, seed: u64, nemeses: &[Nemesis], setup: Setup) -> Run {
        println!("{name}: seed {seed} (replay: {})", replay(name, seed));
        let net = if nemeses.iter().any(|n| n.needs_netns()) {
            match Net::new(3) {
                Ok(net) => Some(net),
                Err(why) => panic!(
                    "{name}: this test needs network namespaces and iptables, and this machine cannot \
                     provide them: {why}\n(run the tests as root with iproute2 and iptables installed; \
                     CI's .ci/run installs them)"
                ),
            }
        } else {
            None
        };
        let mut opts = ClusterOptions::default();
        if nemeses.iter().all(|n| n.graceful()) {
            // Every request must end known, so none may run out of the server's deadline
            // while leadership moves on a loaded machine: 2.5 s (the product's is 5 s; the
            // clients give up after 3 s).
            opts.request_timeout_ms = 2_500;
        }
        if let Some(net) = &net {
            opts.hosts = net.hosts();
            println!("{name}: nodes on 10.213.{}.1-3 in namespaces {}..", net.k(), net.ns(1));
        }
        let tls_dir = (setup == Setup::Secured).then(|| tempfile::tempdir().expect("a temp dir"));
        if let Some(dir) = &tls_dir {
            opts = support::credentials::secured(opts, dir.path());
            println!("{name}: TLS on both listeners, peer mutual TLS and secret, client auth");
        }
        let cluster = Cluster::start(opts).await;
        let up = cluster.ids().into_iter().map(|id| (id, cluster.client_url(id))).collect();
        let probe = support::credentials::probe_client(Duration::from_millis(500));
        let mut run = Run {
            name,
            seed,
            rng: StdRng::seed_from_u64(seed),
            cluster,
            net,
            up: Arc::new(Mutex::new(up)),
            paused: BTreeSet::new(),
            rec: Recorder::new(),
            events: Vec::new(),
            windows: Vec::new(),
            probe,
            next_final_process: AtomicUsize::new(1_000_000),
            one_way_turn: 0,
            _tls_dir: tls_dir,
        };
        run.one_way_turn = run.rng.gen_range(0..2);
        for id in run.cluster.ids() {
            run.check_pid_is_palisade(id);
        }
        run.cluster.leader().await;
        run
    }

    /// `kill -9` and SIGSTOP must hit palisade itself, not a wrapper (`ip netns exec` execs).
    fn check_pid_is_palisade(&self, id: u64) {
        let pid = self.cluster.pid(id).unwrap_or_else(|| panic!("node {id} is not running"));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe");
        let bin = std::fs::canonicalize(BIN).expect("the palisade binary");
        assert!(
            exe.to_string_lossy().starts_with(&*bin.to_string_lossy()),
            "node {id}: pid {pid} runs {}, not {} (the wrapper must exec palisade)",
            exe.display(),
            bin.display()
        );
    }

    fn endpoints(&self) -> Endpoints {
        let up = self.up.clone();
        Arc::new(move || up.lock().unwrap().values().cloned().collect())
    }

    fn event(&mut self, what: String) {
        let line = format!("{:>9.3}ms  {what}", self.rec.now_ns() as f64 / 1e6);
        println!("{}: nemesis {line}", self.name);
        self.events.push(line);
    }

    async fn sleep_ms(&mut self, lo: u64, hi: u64) {
        let ms = self.rng.gen_range(lo..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// The leader as the running, unpaused nodes see it: a node that names itself leader
    /// (the highest term wins), else the most named one. `None` if nobody knows.
    async fn leader_guess(&self) -> Option<u64> {
        let mut selves: Vec<(u64, u64)> = Vec::new();
        let mut named: BTreeMap<u64, usize> = BTreeMap::new();
        let nodes: Vec<(u64, String)> = self.up.lock().unwrap().clone().into_iter().collect();
        for (id, url) in nodes {
            if self.paused.contains(&id) {
                continue;
            }
            let Ok(r) = self.probe.get(format!("{url}/v1/cluster")).send().await else { continue };
            let Ok(v) = r.json::<serde_json::Value>().await else { continue };
            if let Some(l) = v["leader"].as_u64() {
                *named.entry(l).or_default() += 1;
                if l == id {
                    selves.push((v["term"].as_u64().unwrap_or(0), id));
                }
            }
        }
        if let Some(&(_, id)) = selves.iter().max() {
            return Some(id);
        }
        named.into_iter().max_by_key(|&(_, n)| n).map(|(id, _)| id)
    }

    /// The leader if one is known, else a random node.
    async fn leader_or_random(&mut self) -> (u64, &'static str) {
        match self.leader_guess().await {
            Some(l) => (l, "leader"),
            None => (self.rng.gen_range(1..=3), "random node: no leader known"),
        }
    }

    fn net(&self) -> &Net {
        self.net.as_ref().expect("a netns nemesis without a test network")
    }

    fn kill(&mut self, id: u64) {
        self.up.lock().unwrap().remove(&id);
        self.cluster.kill_9(id);
    }

    async fn restart(&mut self, id: u64) {
        self.cluster.restart(id).await;
        self.check_pid_is_palisade(id);
        self.up.lock().unwrap().insert(id, self.cluster.client_url(id));
    }

    /// Applies one fault, holds it, and reverts it.
    async fn step(&mut self, nemesis: Nemesis) {
        self.sleep_ms(300, 1000).await;
        let start_ns = self.rec.now_ns();
        self.apply_and_revert(nemesis).await;
        self.windows.push(FaultWindow { start_ns, end_ns: self.rec.now_ns() });
    }

    async fn apply_and_revert(&mut self, nemesis: Nemesis) {
        match nemesis {
            Kill9One => {
                let (victim, why) = if self.rng.gen_bool(0.5) {
                    self.leader_or_random().await
                } else {
                    (self.rng.gen_range(1..=3), "random node")
                };
                self.kill(victim);
                self.event(format!("kill -9 node {victim} ({why})"));
                self.sleep_ms(200, 1500).await;
                self.restart(victim).await;
                self.event(format!("restarted node {victim}"));
            }
            Kill9All => {
                let mut ids = self.cluster.ids();
                ids.shuffle(&mut self.rng);
                for &id in &ids {
                    self.kill(id);
                }
                self.event(format!("kill -9 every node (order {ids:?})"));
                self.sleep_ms(100, 1000).await;
                ids.shuffle(&mut self.rng);
                for &id in &ids {
                    self.restart(id).await;
                }
                self.event(format!("restarted every node (order {ids:?})"));
            }
            PauseLeader => {
                let (l, why) = self.leader_or_random().await;
                self.cluster.pause(l);
                self.paused.insert(l);
                self.event(format!("SIGSTOP node {l} ({why})"));
                let election = self.cluster.options().election_timeout_ms;
                self.sleep_ms(2 * election, 2 * election + 1500).await;
                self.cluster.resume(l);
                self.paused.remove(&l);
                self.event(format!("SIGCONT node {l}"));
            }
            IsolateLeader => {
                let (l, why) = self.leader_or_random().await;
                self.net().isolate(l as usize);
                self.event(format!("isolate node {l} ({why}) from the others"));
                self.sleep_ms(1000, 3000).await;
                self.net().heal();
                self.event("heal the network".into());
            }
            MajorityMinority => {
                let leader = self.leader_guess().await;
                let mut ids: Vec<usize> = vec![1, 2, 3];
                ids.shuffle(&mut self.rng);
                if self.rng.gen_bool(0.7) {
                    let (minority, majority) = (vec![ids[0]], vec![ids[1], ids[2]]);
                    self.net().partition(&[minority.clone(), majority.clone()]);
                    self.event(format!("partition {minority:?} | {majority:?} (leader was {leader:?})"));
                } else {
                    // A bridge: ids[0] and ids[1] cannot see each other; both see ids[2].
                    self.net().drop_one_way(ids[0], ids[1]);
                    self.net().drop_one_way(ids[1], ids[0]);
                    self.event(format!(
                        "bridge: cut {} <-> {}, both still see {} (leader was {leader:?})",
                        ids[0], ids[1], ids[2]
                    ));
                }
                self.sleep_ms(1000, 3000).await;
                self.net().heal();
                self.event("heal the network".into());
            }
            OneWayLoss => {
                let (l, why) = self.leader_or_random().await;
                let followers: Vec<usize> = (1..=3).filter(|&f| f != l as usize).collect();
                // Alternate the two variants (from a random start), so every run has both.
                self.one_way_turn += 1;
                if self.one_way_turn.is_multiple_of(2) {
                    for &f in &followers {
                        self.net().drop_one_way(l as usize, f);
                    }
                    self.event(format!("drop everything node {l} ({why}) sends to {followers:?}"));
                } else {
                    let p = self.rng.gen_range(0.2..0.5);
                    self.net().lossy(l as usize, p);
                    self.event(format!("lossy links of node {l} ({why}): drop {:.0}% both ways", p * 100.0));
                }
                self.sleep_ms(1000, 3000).await;
                self.net().heal();
                self.event("heal the network".into());
            }
            RollingRestart => {
                let mut ids = self.cluster.ids();
                ids.shuffle(&mut self.rng);
                for id in ids {
                    let leader = self.leader_guess().await;
                    self.event(format!("SIGTERM node {id} (leader was {leader:?})"));
                    let status = self.cluster.stop(id, Duration::from_secs(30));
                    match status {
                        Some(s) if s.success() => {}
                        other => self.fail(
                            &format!("node {id} did not exit 0 on SIGTERM within 30 s: {other:?}"),
                            &self.cluster.log_tail(id, 40),
                            None,
                        ),
                    }
                    self.event(format!("node {id} exited 0"));
                    if leader == Some(id) && !self.cluster.log_tail(id, 60).contains("handed leadership over")
                    {
                        self.fail(
                            &format!("node {id} led, but did not hand its leadership over"),
                            &self.cluster.log_tail(id, 60),
                            None,
                        );
                    }
                    self.cluster.restart(id).await;
                    self.check_pid_is_palisade(id);
                    self.wait_ready(id).await;
                    self.event(format!("restarted node {id}; it is ready"));
                }
            }
        }
    }

    /// Waits until node `id` answers `/readyz` with 200.
    async fn wait_ready(&self, id: u64) {
        let url = format!("{}/readyz", self.cluster.client_url(id));
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.probe.get(&url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() >= until {
                self.fail(
                    &format!("node {id} was not ready 30 s after its restart"),
                    &self.cluster.log_tail(id, 40),
                    None,
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Heals the network, resumes paused nodes and restarts dead ones.
    async fn heal_all(&mut self) {
        if let Some(net) = &self.net {
            net.heal();
        }
        for id in std::mem::take(&mut self.paused) {
            self.cluster.resume(id);
        }
        for id in self.cluster.ids() {
            if !self.cluster.is_live(id) {
                self.restart(id).await;
            }
        }
        self.event("heal everything: network healed, every node running".into());
    }

    /// One round: the workload on `keys` under nemeses drawn from `nemeses` for `duration`,
    /// then heal, converge and check. Returns the round's counts.
    async fn round(
        &mut self,
        label: &str,
        keys: Vec<String>,
        nemeses: &[Nemesis],
        duration: Duration,
    ) -> Stats {
        self.rec = Recorder::new();
        self.events.clear();
        self.windows.clear();
        let stop = Arc::new(AtomicBool::new(false));
        let workload = RegisterWorkload {
            keys: keys.clone(),
            clients: 5,
            ops_per_client: 100_000,
            think: Duration::from_millis(10),
            request_timeout: Duration::from_secs(3),
            seed: self.rng.gen(),
        };
        let clients = tokio::spawn(run_register(self.rec.clone(), self.endpoints(), workload, stop.clone()));
        let lease_stop = Arc::new(AtomicBool::new(false));
        let lease_workload =
            LeaseWorkload::new(&format!("/jepsen-leases/{}", label.replace(' ', "")), self.rng.gen());
        let lease_clients = tokio::spawn(run_leases(
            self.rec.clone(),
            self.endpoints(),
            lease_workload.clone(),
            lease_stop.clone(),
        ));
        // Not drawn from `rng` either.
        let lock_seed =
            label.bytes().fold(self.seed ^ 0x10c4, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let tag = label.replace(' ', "");
        let locks = start_locks(
            self.rec.clone(),
            self.endpoints(),
            LockWorkload::new(&format!("/jepsen-locks/{tag}"), &tag, lock_seed),
        )
        .await;
        let watches = start_watches(
            self.endpoints(),
            WatchWorkload {
                prefix: common_parent(&keys),
                keys: keys.clone(),
                progress_ms: 300,
                // Not drawn from `rng`: the nemesis schedule of a seed stays what it was.
                seed: label.bytes().fold(self.seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let until = Instant::now() + duration;
        while Instant::now() < until {
            let n = *nemeses.choose(&mut self.rng).expect("a nemesis");
            self.step(n).await;
        }
        self.heal_all().await;
        self.cluster.leader_within(Duration::from_secs(30)).await;
        // The leases stop being kept alive; their observers read on until every key is gone.
        lease_stop.store(true, Ordering::Relaxed);
        self.event("the lease workload stops keeping leases alive".into());
        // Load on the healed cluster for at least a second, and until the history holds
        // enough acknowledged ops to check (on a slow machine the faults may leave few).
        let healed = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ok = Stats::of(&self.rec.history(), 0).ok;
            let elapsed = healed.elapsed();
            if elapsed >= Duration::from_secs(10)
                || (elapsed >= Duration::from_secs(1) && ok >= 2 * MIN_OK_OPS)
            {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        // The lock workload too (it had the same healed load): its leases start to lapse.
        locks.stop();
        self.event("the lock workload stops".into());
        clients.await.expect("the clients finished");
        self.final_reads(&keys).await;
        let kvs = self.converged(&keys).await;
        let history = self.rec.history();
        let stats =
            Stats::of(&history, self.events.iter().filter(|e| !e.contains("heal everything")).count());
        println!("{}: {label}: {stats}", self.name);
        if nemeses.iter().all(|n| n.graceful()) && stats.unknown > 0 {
            let unknown: Vec<String> = history
                .ops
                .iter()
                .filter(|o| o.outcome == Outcome::Unknown)
                .map(|o| format!("{o:?}"))
                .collect();
            self.fail(
                &format!("{} requests ended with an unknown outcome under graceful restarts", stats.unknown),
                &unknown.join("\n"),
                Some(&history),
            );
        }
        self.check(label, &history, stats);
        self.check_versions(&keys, &history, &kvs);
        match watches.finish(&history, Duration::from_secs(20)).await {
            Ok(summary) => println!("{}: {label}: watches: {summary}", self.name),
            Err(e) => self.fail("the watches of the register keys are wrong", &e, None),
        }
        let lease_run = lease_clients.await.expect("the lease workload finished");
        self.check_leases(label, &lease_workload, &lease_run);
        match locks.finish().await {
            Ok(s) if s.report.grants < 10 || s.lease_ends < 3 => self.fail(
                &format!(
                    "the lock history is too thin to check anything (need 10 grants and 3 lease ends seen): {s}"
                ),
                "",
                None,
            ),
            Ok(s) => println!("{}: {label}: locks: {s}", self.name),
            Err(e) => self.fail("the locks, elections or fencing tokens broke a rule", &e, None),
        }
        stats
    }

    /// The lease history against the failover rule; every key must be gone at the end, and
    /// the history must hold enough to check.
    fn check_leases(&self, label: &str, w: &LeaseWorkload, run: &jepsen::recorder::LeaseRun) {
        let o = self.cluster.options();
        let checkpoint_ms = palisade::config::Config::defaults().lease_checkpoint_ms;
        let bounds = leases::Bounds::of(o.election_timeout_ms, checkpoint_ms, o.request_timeout_ms);
        let lh = self.rec.lease_history(self.windows.clone());
        let saved = || {
            let path =
                std::env::temp_dir().join(format!("fault_process-{}-{}.leases.txt", self.name, self.seed));
            match std::fs::write(&path, lh.render()) {
                Ok(()) => format!("lease history: {}", path.display()),
                Err(e) => format!("(could not write {}: {e})", path.display()),
            }
        };
        let report = match check_leases(&lh, &bounds) {
            Ok(r) => r,
            Err(v) => self.fail("the leases broke the failover rule", &format!("{v}\n{}", saved()), None),
        };
        println!("{}: {label}: leases: {report}", self.name);
        if !run.not_gone.is_empty() {
            self.fail(
                &format!(
                    "{} of {} ephemeral keys were not seen gone within {:?} of the lease workload stopping (TTL {:?})",
                    run.not_gone.len(),
                    run.keys,
                    w.drain_timeout,
                    w.ttl
                ),
                &format!("{:?}\n{}", run.not_gone, saved()),
                None,
            );
        }
        if report.keys < 5 || report.leases_seen_ending < 3 || report.renewals < 10 {
            self.fail(
                &format!(
                    "the lease history is too thin to check anything (need 5 keys, 3 leases seen ending, 10 \
                     acknowledged renewals): {report}"
                ),
                &saved(),
                None,
            );
        }
    }

    /// A linearizable read of every key on every node, recorded in the history (each as
    /// its own process), until each has answered; they pin the final state to the history.
    async fn final_reads(&self, keys: &[String]) {
        let http = support::credentials::probe_client(Duration::from_secs(3));
        for key in keys {
            for id in self.cluster.ids() {
                let url = self.cluster.client_url(id);
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let process = self.next_final_process.fetch_add(1, Ordering::Relaxed);
                    let op = self.rec.invoke(&http, &url, process, key, Call::Read).await;
                    let ok = matches!(op.outcome, Outcome::Ok { .. });
                    let shown = op.to_string();
                    if ok {
                        break;
                    }
                    if Instant::now() >= deadline {
                        self.fail(
                            "a healed cluster did not answer a linearizable read within 20 s",
                            &format!("last attempt on node {id}: {shown}"),
                            None,
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until every node's local state of the workload's keys is the same (same
    /// revision, same key-values with the same revisions and versions); returns it.
    async fn converged(&self, keys: &[String]) -> BTreeMap<String, serde_json::Value> {
        let prefix = common_parent(keys);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut states = BTreeMap::new();
            for id in self.cluster.ids() {
                let url = self.cluster.client_url(id);
                let s = self.cluster.http().list(&url, &prefix, Consistency::Serializable).await;
                states.insert(id, s.map(|l| (l.revision, l.kvs)));
            }
            let first = states.values().next().cloned().expect("nodes");
            if let Ok((_, kvs)) = &first {
                if states.values().all(|s| *s == first) {
                    return kvs.clone();
                }
            }
            if Instant::now() >= deadline {
                self.fail(
                    "the nodes did not converge to the same state within 20 s of healing",
                    &format!("local state under {prefix} per node:\n{states:#?}"),
                    None,
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every key's final `version` (puts since creation; the workload never deletes) must
    /// count each acknowledged write or CAS exactly once, plus some of the unknown ones: a
    /// write applied twice (a retried forward, a replayed log entry) shows up here even
    /// when a register history cannot tell.
    fn check_versions(&self, keys: &[String], history: &History, kvs: &BTreeMap<String, serde_json::Value>) {
        for key in keys {
            let puts = |o: &&Op| o.key == *key && matches!(o.call, Call::Write { .. } | Call::Cas { .. });
            let ok =
                history.ops.iter().filter(puts).filter(|o| matches!(o.outcome, Outcome::Ok { .. })).count();
            let unknown = history.ops.iter().filter(puts).filter(|o| o.outcome == Outcome::Unknown).count();
            let version =
                kvs.get(key).map(|kv| kv["version"].as_u64().expect("a version")).unwrap_or(0) as usize;
            if version < ok || version > ok + unknown {
                self.fail(
                    &format!(
                        "key {key} has version {version} on every node, but the history has {ok} acknowledged \
                         puts and {unknown} unknown ones (the version must lie in {ok}..={})",
                        ok + unknown
                    ),
                    &format!("final kv: {}", kvs.get(key).map(|v| v.to_string()).unwrap_or_else(|| "absent".into())),
                    None,
                );
            }
        }
    }

    fn check(&self, label: &str, history: &History, stats: Stats) {
        if stats.ok < MIN_OK_OPS {
            self.fail(
                &format!("only {} ops were acknowledged ({stats}): the history checks nothing", stats.ok),
                "",
                Some(history),
            );
        }
        match linearizability::check(history) {
            Ok(report) => println!("{}: {label}: linearizable: {report}", self.name),
            Err(v) if v.is_inconclusive() => self.fail(
                "the linearizability checker could not decide this history (search budget exhausted): \
                 not a violation, but nothing was checked; shorten the run or raise the budget",
                &v.to_string(),
                None,
            ),
            Err(v) => self.fail("the history is not linearizable", &v.to_string(), None),
        }
        if let Err(v) = linearizability::check_revisions(history) {
            self.fail("the revisions are inconsistent", &v.to_string(), None);
        }
    }

    /// Panics with everything needed to understand and replay the failure (the node logs
    /// are printed as the cluster is torn down).
    fn fail(&self, what: &str, detail: &str, history: Option<&History>) -> ! {
        let mut msg =
            format!("{}: {what}\nseed: {}\nreplay: {}\n", self.name, self.seed, replay(self.name, self.seed));
        if !detail.is_empty() {
            msg.push_str(&format!("\n{detail}\n"));
        }
        if let Some(h) = history {
            let ops: Vec<&Op> = h.ops.iter().collect();
            let shown = &ops[ops.len().saturating_sub(60)..];
            msg.push_str(&format!("\nlast {} ops of the history:\n{}", shown.len(), History::render(shown)));
        }
        msg.push_str(&format!("\nnemesis events (history clock):\n{}\n", self.events.join("\n")));
        if let Some(net) = &self.net {
            msg.push_str(&format!("\nnetwork rules now:\n{}", net.rules()));
        }
        msg.push_str("\n(node log tails follow)");
        panic!("{msg}");
    }
}

/// The longest common parent path of `keys` (`/jepsen` for `/jepsen/r0`, `/jepsen/r1`).
fn common_parent(keys: &[String]) -> String {
    let split: Vec<Vec<&str>> =
        keys.iter().map(|k| k.split('/').filter(|s| !s.is_empty()).collect()).collect();
    let mut common: Vec<&str> = Vec::new();
    'outer: for (i, seg) in split[0].iter().enumerate() {
        for s in &split {
            if s.len() <= i + 1 || s[i] != *seg {
                break 'outer;
            }
        }
        common.push(seg);
    }
    assert!(!common.is_empty(), "the workload's keys share no parent: {keys:?}");
    format!("/{}", common.join("/"))
}

fn keys(round: usize) -> Vec<String> {
    (0..3).map(|i| format!("/jepsen/round{round}/r{i}")).collect()
}

/// One short test: one round of one nemesis.
async fn short(name: &'static str, nemesis: Nemesis) {
    short_with(name, nemesis, Setup::Plain).await
}

/// One round of one nemesis on a cluster set up as `setup`.
async fn short_with(name: &'static str, nemesis: Nemesis, setup: Setup) {
    let seed = seed();
    let _hint = ReplayHint { binary: "fault_process", name, seed, soak: name.starts_with("soak") };
    let mut run = Run::start(name, seed, &[nemesis], setup).await;
    let stats = run.round("round 0", keys(0), &[nemesis], SHORT).await;
    println!("{name}: done: {stats} (seed {seed})");
}

/// A soak: rounds of mixed nemeses on one cluster until `PALISADE_SOAK_SECS` have passed;
/// each round has its own keys and is checked on its own.
async fn soak(name: &'static str, nemeses: &[Nemesis]) {
    let seed = seed();
    let secs = jepsen::replay::soak_secs(60);
    let _hint = ReplayHint { binary: "fault_process", name, seed, soak: name.starts_with("soak") };
    let mut run = Run::start(name, seed, nemeses, Setup::Plain).await;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut total = Stats::default();
    let mut r = 0;
    while r == 0 || Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        let duration = left.clamp(Duration::from_secs(5), Duration::from_secs(20));
        total.add(run.round(&format!("round {r}"), keys(r), nemeses, duration).await);
        r += 1;
    }
    println!("{name}: done after {r} rounds: {total} (seed {seed})");
}

/// Every node restarted in turn with SIGTERM under the workloads: no acknowledged write
/// lost, every history checked, and no request left with an unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_rolling_restart() {
    short("graceful_rolling_restart", RollingRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one() {
    short("kill9_one", Kill9One).await;
}

/// The same workloads and checks with TLS on both listeners, peers authenticated by mutual
/// TLS and the secret, and client auth (a non-admin token, so every lease's owner is
/// checked in apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_kill9_one() {
    short_with("secured_kill9_one", Kill9One, Setup::Secured).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_pause_leader() {
    short_with("secured_pause_leader", PauseLeader, Setup::Secured).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_all() {
    short("kill9_all", Kill9All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_leader() {
    short("pause_leader", PauseLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_isolate_leader() {
    short("netns_isolate_leader", IsolateLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_majority_minority() {
    short("netns_majority_minority", MajorityMinority).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_one_way_loss() {
    short("netns_one_way_loss", OneWayLoss).await;
}

/// Which of the given directed links `(from, to)` open a TCP connection (to `to`'s client
/// port, from inside `from`'s namespace) within a second; all probes run at once.
fn connecting(net: &Net, links: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
    let probes: Vec<((usize, usize), std::process::Child)> = links
        .iter()
        .map(|&(from, to)| {
            let script = format!("exec 3<>/dev/tcp/{}/{}", net.ip(to), support::netns::CLIENT_PORT);
            let child = std::process::Command::new("ip")
                .args(["netns", "exec", net.ns(from), "timeout", "1", "bash", "-c", &script])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn ip netns exec");
            ((from, to), child)
        })
        .collect();
    let mut open = BTreeSet::new();
    for (link, mut child) in probes {
        match child.wait().expect("wait for a probe").code() {
            Some(0) => {
                open.insert(link);
            }
            Some(1) | Some(124) => {} // refused or timed out
            other => panic!(
                "probe {link:?}: `timeout 1 bash -c` exited with {other:?} (are bash and timeout installed?)"
            ),
        }
    }
    open
}

/// The fault primitives cut exactly the links they name, the test process always reaches
/// every node, and `heal` restores everything: without this, a rule that silently did
/// nothing would let every netns test pass without testing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_faults_cut_exactly_the_named_links() {
    let net = Net::new(3).unwrap_or_else(|why| {
        panic!(
            "this test needs network namespaces and iptables: {why} (run as root with iproute2 and iptables)"
        )
    });
    let c = Cluster::start(ClusterOptions { hosts: net.hosts(), ..ClusterOptions::default() }).await;
    let all: Vec<(usize, usize)> =
        (1..=3).flat_map(|a| (1..=3).filter(move |&b| b != a).map(move |b| (a, b))).collect();
    let every: BTreeSet<(usize, usize)> = all.iter().copied().collect();
    let without =
        |cut: &[(usize, usize)]| every.iter().copied().filter(|l| !cut.contains(l)).collect::<BTreeSet<_>>();
    let root_reaches_all = || async {
        for id in c.ids() {
            let r = c.http().get_path(&c.client_url(id), "/healthz").await;
            assert!(
                r.is_ok_and(|r| r.status == 200),
                "the test process cannot reach node {id}\n{}",
                net.rules()
            );
        }
    };
    assert_eq!(connecting(&net, &all), every, "a healthy network connects every pair");
    root_reaches_all().await;

    net.isolate(1);
    assert_eq!(
        connecting(&net, &all),
        without(&[(1, 2), (2, 1), (1, 3), (3, 1)]),
        "isolate(1)\n{}",
        net.rules()
    );
    root_reaches_all().await;
    net.heal();
    assert_eq!(connecting(&net, &all), every, "after heal");

    net.partition(&[vec![1, 2], vec![3]]);
    assert_eq!(
        connecting(&net, &all),
        without(&[(1, 3), (3, 1), (2, 3), (3, 2)]),
        "[1,2] | [3]\n{}",
        net.rules()
    );
    root_reaches_all().await;
    net.heal();

    // One way at the IP level; TCP needs both directions, so both connections fail, but
    // only host 2 holds a rule (it drops what comes from 1).
    net.drop_one_way(1, 2);
    assert_eq!(connecting(&net, &all), without(&[(1, 2), (2, 1)]), "drop_one_way(1, 2)\n{}", net.rules());
    let rules = net.rules();
    assert_eq!(rules.matches("-j DROP").count(), 1, "drop_one_way adds one rule:\n{rules}");
    root_reaches_all().await;
    net.heal();

    net.lossy(3, 1.0);
    assert_eq!(
        connecting(&net, &all),
        without(&[(1, 3), (3, 1), (2, 3), (3, 2)]),
        "lossy(3, 1.0)\n{}",
        net.rules()
    );
    root_reaches_all().await;
    net.heal();
    assert_eq!(connecting(&net, &all), every, "after the last heal");
    assert_eq!(net.rules().matches("-j DROP").count(), 0, "heal removes every rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: PALISADE_SOAK_SECS=600 PALISADE_SEED=n cargo test --release --test it fault_process::soak -- --ignored"]
async fn soak_process_mixed() {
    soak("soak_process_mixed", PROCESS_NEMESES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: PALISADE_SOAK_SECS=600 PALISADE_SEED=n cargo test --release --test it fault_process::soak -- --ignored"]
async fn soak_netns_mixed() {
    soak("soak_netns_mixed", ALL_NEMESES).await;
}
