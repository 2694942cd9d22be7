//! Jepsen-style fault tests: an in-process cluster (`tests/sim`) whose nodes serve their client
//! API over real HTTP on 127.0.0.1, five recorder clients (`tests/jepsen/recorder.rs`) issuing
//! reads, writes and compare-and-swaps against every node's URL, and a nemesis running a seeded
//! schedule of faults meanwhile: partitions, one-way cuts, lossy and slow links, crashes and
//! restarts. Then the faults are healed, the cluster must converge (every node the same state),
//! each key is read once more on every node (recorded too), and the history is checked: per-key
//! linearizability and the revisions the replies carried.
//!
//! Alongside, the lease workload of `jepsen::recorder` ([`LeaseWorkload`]) grants leases
//! through every node, puts an ephemeral key under each, keeps some alive, abandons or
//! revokes the others, and observes the keys with linearizable reads. It stops keeping
//! leases alive once the last fault is healed, its observers read on until every key is
//! gone, and the lease history is checked against the failover rule
//! (`jepsen::leases::check_leases`, with the nemesis' fault windows).
//!
//! And the watch workload of `jepsen::recorder` ([`start_watches`]): on every node a
//! recursive watch of the register keys' parent and a watch of one key, over the same HTTP
//! API, each resuming on another node after an error. Once healed, every stream is brought
//! up to the final revision and checked (`jepsen::watch::check_watches`) against the
//! register history's acknowledged writes and a final linearizable dump.
//!
//! Every test prints its seed and, on failure, how to replay it:
//! `PALISADE_SEED=<n> cargo test --test it fault_sim::<name> -- --nocapture`.
//! Without `PALISADE_SEED`, each test uses a fixed seed of its own.
//!
//! What the seed fixes: the nemesis schedule (which fault, which node, when, for how long), the
//! clients' choices (key, op, node) and the simulated network's drop and delay draws. What it
//! does not fix: the cluster's own timing (elections, scheduling of tasks and threads, the
//! latency of each request), so which node is leader when a step "isolates the leader", how
//! many ops fit in a window and the exact interleavings differ from run to run. A seed replays
//! the same schedule, not the same execution.
//!
//! The `soak_*` variants (`#[ignore]`d; `make soak`) mix every nemesis for
//! `PALISADE_SOAK_SECS` seconds on one long-lived cluster, in rounds of fresh keys, each round
//! checked on its own (so the checker's work stays bounded however long the soak runs).

use crate::jepsen;
use crate::sim;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jepsen::history::{Call, History, Op, Outcome};
use jepsen::leases::{self, check_leases, FaultWindow};
use jepsen::linearizability;
use jepsen::recorder::{
    run_leases, run_register, start_watches, Endpoints, LeaseWorkload, Recorder, RegisterWorkload,
    WatchWorkload,
};
use palisade::raft::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sim::{Cluster, ClusterOptions, LinkFaults};
use tokio::time::Instant;

/// A history with fewer `Ok` ops than this checked nothing worth a pass.
const MIN_OK: usize = 50;
/// Healthy workload before the first fault, and after the last heal (progress must resume).
const LEAD: Duration = Duration::from_millis(500);
const SETTLE: Duration = Duration::from_millis(1500);
/// How long the final reads may take, per read.
const FINAL_READ_WAIT: Duration = Duration::from_secs(10);
/// Process ids of the final reads (the workload's own never get this high).
const FINAL_PROCESS_BASE: usize = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Seeds

use jepsen::replay::ReplayHint;

/// The seed of a test: `PALISADE_SEED` if set, else the test's fixed default.
fn seed_or(default: u64) -> u64 {
    jepsen::replay::seed_or(default)
}

fn replay_command(name: &str, seed: u64, soak: bool) -> String {
    jepsen::replay::replay_command("fault_sim", name, seed, soak)
}

// ---------------------------------------------------------------------------------------------
// The nemesis: a schedule drawn from the seed, executed against the cluster.

/// The kinds of nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nemesis {
    /// Isolate the current leader, both ways, for a while.
    IsolateLeader,
    /// Split the cluster into a random minority and the majority, both ways.
    MajorityMinority,
    /// Cut one direction of some links (leader -> followers, followers -> leader, or random
    /// links), with random loss and delay on every link, or loss and delay alone.
    OneWayLoss,
    /// Crash one random node, restart it later.
    CrashOne,
    /// Crash every node, restart them all.
    CrashAll,
}

const ALL_NEMESES: &[Nemesis] = &[
    Nemesis::IsolateLeader,
    Nemesis::MajorityMinority,
    Nemesis::OneWayLoss,
    Nemesis::CrashOne,
    Nemesis::CrashAll,
];

/// One fault. Those aimed at "the leader" name a role, resolved when the step starts (which
/// node leads then depends on the cluster's timing, not on the seed); `fallback` is the
/// seeded node used when no node acts as leader at that moment.
#[derive(Clone, Debug)]
enum Fault {
    IsolateLeader {
        fallback: NodeId,
    },
    Partition {
        minority: Vec<NodeId>,
    },
    /// Cut every link leader -> other (it still hears them; they no longer hear it).
    CutFromLeader {
        fallback: NodeId,
    },
    /// Cut every link other -> leader (its requests arrive; their answers are lost).
    CutToLeader {
        fallback: NodeId,
    },
    /// Cut these directed links.
    CutLinks(Vec<(NodeId, NodeId)>),
    /// Every link loses each request and each response with probability `drop`, and is
    /// delayed by `delay_ms` (each direction).
    Lossy {
        drop: f64,
        delay_ms: (u64, u64),
    },
    /// One directed link loses much more, and is slower.
    LossyLink {
        from: NodeId,
        to: NodeId,
        drop: f64,
        delay_ms: (u64, u64),
    },
    Crash(NodeId),
    CrashAll,
}

/// Faults applied together for `hold`, then healed (crashed nodes restarted), then `gap` of
/// calm before the next step.
#[derive(Clone, Debug)]
struct Step {
    kind: Nemesis,
    faults: Vec<Fault>,
    hold: Duration,
    gap: Duration,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

/// Draws one step of `kind`. Every draw comes from `rng` alone, in a fixed order: the
/// schedule is a function of the seed.
fn draw_step(rng: &mut StdRng, kind: Nemesis, ids: &[NodeId]) -> Step {
    let n = ids.len();
    let pick = |rng: &mut StdRng| *ids.choose(rng).expect("a cluster has nodes");
    let (faults, hold, gap) = match kind {
        Nemesis::IsolateLeader => {
            (vec![Fault::IsolateLeader { fallback: pick(rng) }], ms(rng, 1000, 2000), ms(rng, 500, 1500))
        }
        Nemesis::MajorityMinority => {
            // 5 nodes: 2 | 3 (the leader, wherever it is, may be on either side); 3 nodes: 1 | 2.
            let mut shuffled = ids.to_vec();
            shuffled.shuffle(rng);
            let mut minority = shuffled[..(n - 1) / 2].to_vec();
            minority.sort();
            (vec![Fault::Partition { minority }], ms(rng, 1000, 2500), ms(rng, 500, 1500))
        }
        Nemesis::OneWayLoss => {
            let mut faults = match rng.gen_range(0..4) {
                0 => vec![Fault::CutFromLeader { fallback: pick(rng) }],
                1 => vec![Fault::CutToLeader { fallback: pick(rng) }],
                2 => {
                    let mut links = Vec::new();
                    for _ in 0..rng.gen_range(1..=n) {
                        let from = pick(rng);
                        let to = pick(rng);
                        if from != to && !links.contains(&(from, to)) {
                            links.push((from, to));
                        }
                    }
                    vec![Fault::CutLinks(links)]
                }
                _ => vec![],
            };
            if faults.is_empty() || rng.gen_bool(0.5) {
                let drop = rng.gen_range(0.02..0.25);
                let delay_ms = (0, rng.gen_range(5..=40));
                faults.push(Fault::Lossy { drop, delay_ms });
            }
            if rng.gen_bool(0.3) {
                let from = pick(rng);
                let to = ids[(ids.iter().position(|i| *i == from).unwrap() + 1) % n];
                let drop = rng.gen_range(0.3..0.7);
                faults.push(Fault::LossyLink { from, to, drop, delay_ms: (10, rng.gen_range(20..=100)) });
            }
            (faults, ms(rng, 1000, 2500), ms(rng, 300, 1000))
        }
        Nemesis::CrashOne => (vec![Fault::Crash(pick(rng))], ms(rng, 500, 2000), ms(rng, 700, 1500)),
        Nemesis::CrashAll => (vec![Fault::CrashAll], ms(rng, 300, 1500), ms(rng, 1500, 3000)),
    };
    Step { kind, faults, hold, gap }
}

/// Steps of the given kinds, drawn from `seed`, filling at least `total`.
fn schedule(seed: u64, kinds: &[Nemesis], ids: &[NodeId], total: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let mut steps = Vec::new();
    let mut t = Duration::ZERO;
    while t < total {
        let kind = *kinds.choose(&mut rng).expect("at least one nemesis");
        let step = draw_step(&mut rng, kind, ids);
        t += step.hold + step.gap;
        steps.push(step);
    }
    steps
}

/// What the nemesis did, on the recorder's clock, and when each step's faults were in force
/// (from the first fault applied until healed, crashed nodes restarted).
#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Vec<(u64, String)>>>, Arc<Mutex<Vec<FaultWindow>>>);

impl EventLog {
    fn window(&self, start_ns: u64, end_ns: u64) {
        self.1.lock().unwrap().push(FaultWindow { start_ns, end_ns });
    }

    fn windows(&self) -> Vec<FaultWindow> {
        self.1.lock().unwrap().clone()
    }

    fn push(&self, rec: &Recorder, what: String) {
        let at = rec.now_ns();
        println!("[nemesis {:>8.3}s] {what}", at as f64 / 1e9);
        self.0.lock().unwrap().push((at, what));
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn render(&self) -> String {
        let mut s = String::new();
        for (at, what) in self.0.lock().unwrap().iter() {
            writeln!(s, "  {:>8.3}s {what}", *at as f64 / 1e9).unwrap();
        }
        s
    }
}

/// The node acting as leader now (waiting a little for one), else the seeded fallback.
async fn leader_or(c: &Cluster, fallback: NodeId) -> (NodeId, String) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some((l, term)) = c.acting_leader() {
            return (l, format!("leader {l} (term {term})"));
        }
        if Instant::now() >= deadline {
            return (fallback, format!("node {fallback} (no acting leader; seeded fallback)"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn others(c: &Cluster, not: &[NodeId]) -> Vec<NodeId> {
    c.ids().into_iter().filter(|id| !not.contains(id)).collect()
}

async fn apply(c: &Cluster, f: &Fault) -> String {
    match f {
        Fault::IsolateLeader { fallback } => {
            let (l, who) = leader_or(c, *fallback).await;
            c.isolate(l);
            format!("isolate {who}")
        }
        Fault::Partition { minority } => {
            let majority = others(c, minority);
            c.partition(&[minority, &majority]);
            let leader = c.acting_leader().map(|(l, _)| l);
            format!("partition {minority:?} | {majority:?} (acting leader {leader:?})")
        }
        Fault::CutFromLeader { fallback } => {
            let (l, who) = leader_or(c, *fallback).await;
            for o in others(c, &[l]) {
                c.cut(l, o);
            }
            format!("cut {who} -> every other node (one way)")
        }
        Fault::CutToLeader { fallback } => {
            let (l, who) = leader_or(c, *fallback).await;
            for o in others(c, &[l]) {
                c.cut(o, l);
            }
            format!("cut every other node -> {who} (one way)")
        }
        Fault::CutLinks(links) => {
            for (from, to) in links {
                c.cut(*from, *to);
            }
            format!("cut links {links:?} (one way each)")
        }
        Fault::Lossy { drop, delay_ms } => {
            c.lossy(*drop, *delay_ms);
            format!("every link: drop {:.0}%, delay {}..{} ms", drop * 100.0, delay_ms.0, delay_ms.1)
        }
        Fault::LossyLink { from, to, drop, delay_ms } => {
            let faults = LinkFaults { drop_request: *drop, drop_response: *drop, delay_ms: *delay_ms };
            c.set_link_faults(*from, *to, faults);
            format!("link {from}->{to}: drop {:.0}%, delay {}..{} ms", drop * 100.0, delay_ms.0, delay_ms.1)
        }
        Fault::Crash(id) => {
            if c.try_node(*id).is_none() {
                return format!("node {id} is already down");
            }
            let leader = c.acting_leader().map(|(l, _)| l);
            c.crash(*id).await;
            format!("crash node {id} (acting leader was {leader:?})")
        }
        Fault::CrashAll => {
            let live = c.live();
            futures::future::join_all(live.iter().map(|id| c.crash(*id))).await;
            format!("crash every node {live:?}")
        }
    }
}

/// Heals every link and restarts every crashed node.
async fn recover(c: &Cluster) -> String {
    c.heal();
    let down = others(c, &c.live());
    futures::future::join_all(down.iter().map(|id| c.restart(*id))).await;
    if down.is_empty() {
        "heal".to_string()
    } else {
        let urls: Vec<String> = down.iter().map(|id| c.client_url(*id).unwrap_or_default()).collect();
        format!("heal; restarted {down:?} at {urls:?}")
    }
}

async fn run_nemesis(c: &Cluster, rec: &Recorder, steps: &[Step], log: &EventLog) {
    for step in steps {
        let mut what = Vec::new();
        let start = rec.now_ns();
        for f in &step.faults {
            what.push(apply(c, f).await);
        }
        log.push(rec, format!("{:?}: {} (hold {:?})", step.kind, what.join("; "), step.hold));
        tokio::time::sleep(step.hold).await;
        log.push(rec, recover(c).await);
        log.window(start, rec.now_ns());
        tokio::time::sleep(step.gap).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A run: workload + nemesis, heal, converge, final reads, check.

struct Scenario {
    name: &'static str,
    nodes: usize,
    nemeses: &'static [Nemesis],
    /// How long the nemesis schedule runs (the workload runs around it).
    fault_time: Duration,
    default_seed: u64,
}

/// Counts of a history, for the report.
#[derive(Default, Debug)]
struct Counts {
    ops: usize,
    ok: usize,
    fail: usize,
    unknown: usize,
    ok_reads: usize,
    ok_writes: usize,
    ok_cas: usize,
}

impl Counts {
    fn of(h: &History) -> Counts {
        let mut c = Counts { ops: h.ops.len(), ..Counts::default() };
        for op in &h.ops {
            match op.outcome {
                Outcome::Ok { .. } => {
                    c.ok += 1;
                    match op.call {
                        Call::Read => c.ok_reads += 1,
                        Call::Write { .. } => c.ok_writes += 1,
                        Call::Cas { .. } => c.ok_cas += 1,
                    }
                }
                Outcome::Fail => c.fail += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ops recorded: {} ok ({} reads, {} writes, {} cas), {} fail, {} unknown",
            self.ops, self.ok, self.ok_reads, self.ok_writes, self.ok_cas, self.fail, self.unknown
        )
    }
}

/// Writes the whole history next to the temp dir, for a failure's post-mortem.
fn save_history(name: &str, seed: u64, round: usize, h: &History) -> String {
    let path = std::env::temp_dir().join(format!("fault_sim-{name}-{seed}-round{round}.history.txt"));
    let mut ops: Vec<&Op> = h.ops.iter().collect();
    ops.sort_by_key(|o| (o.invoke_ns, o.id));
    match std::fs::write(&path, History::render(&ops)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(could not write {}: {e})", path.display()),
    }
}

/// Reads every key on every live node over HTTP until each read succeeds, recording each
/// attempt; returns what each node read.
async fn final_reads(
    c: &Cluster,
    rec: &Recorder,
    keys: &[String],
) -> BTreeMap<(NodeId, String), Option<String>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client");
    let mut process = FINAL_PROCESS_BASE;
    let mut seen = BTreeMap::new();
    for id in c.live() {
        let url = c.client_url(id).expect("an HTTP cluster has client URLs");
        for key in keys {
            let deadline = Instant::now() + FINAL_READ_WAIT;
            loop {
                let outcome = rec.invoke(&http, &url, process, key, Call::Read).await.outcome;
                // A process is sequential: one that saw no definite outcome is abandoned.
                process += 1;
                if let Outcome::Ok { read: Some(v), .. } = outcome {
                    seen.insert((id, key.clone()), v);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "final read of {key} on node {id} ({url}) did not succeed within {FINAL_READ_WAIT:?} (last: {outcome:?})\n{}",
                    c.describe()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    seen
}

/// One round on a running cluster: the workload on fresh keys with the nemesis running
/// `steps`, then heal, convergence, final reads and the checks. Panics on any violation.
async fn run_round(c: &Cluster, sc: &Scenario, seed: u64, round: usize, steps: &[Step], soak: bool) {
    let keys: Vec<String> = (0..3).map(|i| format!("/jepsen/{}/round{round}/r{i}", sc.name)).collect();
    let workload = RegisterWorkload {
        keys: keys.clone(),
        clients: 5,
        // Bounded by time (the nemesis stops the clients); this only caps a runaway.
        ops_per_client: 5_000,
        think: Duration::from_millis(10),
        request_timeout: Duration::from_secs(3),
        seed: seed.wrapping_add(round as u64),
    };
    let rec = Recorder::new();
    let log = EventLog::default();
    let urls = c.client_urls();
    // Every node's URL, crashed ones included: those refuse connections.
    let endpoints: Endpoints = Arc::new(move || urls.all());
    let stop = Arc::new(AtomicBool::new(false));
    // The leases stop being kept alive once the last fault is healed; their observers read
    // on (meanwhile the register workload settles and the nodes converge) until every key
    // is gone.
    let lease_stop = Arc::new(AtomicBool::new(false));
    let lease_workload = LeaseWorkload::new(
        &format!("/jepsen-leases/{}/round{round}", sc.name),
        seed.wrapping_add(round as u64).wrapping_mul(31),
    );
    let (ttl, drain) = (lease_workload.ttl, lease_workload.drain_timeout);
    let lease_clients =
        tokio::spawn(run_leases(rec.clone(), endpoints.clone(), lease_workload, lease_stop.clone()));

    let watches = start_watches(
        endpoints.clone(),
        WatchWorkload {
            prefix: format!("/jepsen/{}/round{round}", sc.name),
            keys: keys.clone(),
            progress_ms: 300,
            seed: seed.wrapping_add(round as u64).wrapping_mul(17),
        },
    )
    .await;

    let nemesis = async {
        tokio::time::sleep(LEAD).await;
        run_nemesis(c, &rec, steps, &log).await;
        log.push(&rec, recover(c).await);
        lease_stop.store(true, Ordering::SeqCst);
        log.push(&rec, "the lease workload stops keeping leases alive".into());
        tokio::time::sleep(SETTLE).await;
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(run_register(rec.clone(), endpoints.clone(), workload, stop.clone()), nemesis);
    let during = Counts::of(&rec.history());

    // Every node must come back to one state.
    c.leader().await;
    let state = c.converge().await;
    let finals = final_reads(c, &rec, &keys).await;
    let lease_run = lease_clients.await.expect("the lease workload finished");
    let h = rec.history();
    let lh = rec.lease_history(log.windows());
    let counts = Counts::of(&h);
    println!(
        "[fault_sim] {} round {round}: workload {during}; with final reads {counts}; {} nemesis events",
        sc.name,
        log.len()
    );

    let fail = |what: String| -> ! {
        let path = save_history(sc.name, seed, round, &h);
        panic!(
            "{} (seed {seed}, round {round}): {what}\n\
             nemesis events:\n{}\
             {counts}\n\
             cluster now: {}\
             full history: {path}\n\
             replay: {}",
            sc.name,
            log.render(),
            c.describe(),
            replay_command(sc.name, seed, soak)
        )
    };

    // The checker first: a violation explains more than any symptom below.
    let checked = tokio::task::block_in_place(|| linearizability::check(&h));
    match checked {
        Ok(report) => println!("[fault_sim] {} round {round}: linearizable; checker: {report}", sc.name),
        Err(v) if v.is_inconclusive() => fail(format!(
            "the linearizability checker could not decide this history (search budget exhausted; not a violation, but nothing was proven):\n{v}"
        )),
        Err(v) => fail(format!("the history is not linearizable:\n{v}")),
    }
    if let Err(v) = tokio::task::block_in_place(|| linearizability::check_revisions(&h)) {
        fail(format!("the revisions the replies carried are inconsistent:\n{v}"));
    }
    // Every node read what the converged state holds.
    for ((id, key), v) in &finals {
        if *v != state.value(key) {
            fail(format!(
                "node {id} read {key} = {v:?} after convergence, but the converged state holds {:?}",
                state.value(key)
            ));
        }
    }
    // The watches of the register keys, against the same history.
    match watches.finish(&h, Duration::from_secs(20)).await {
        Ok(summary) => println!("[fault_sim] {} round {round}: watches: {summary}", sc.name),
        Err(e) => fail(format!("the watches of the register keys are wrong:\n{e}")),
    }
    if counts.ok < MIN_OK || counts.ok_reads < 10 || counts.ok_writes + counts.ok_cas < 10 {
        fail(format!(
            "the history has too few acknowledged ops to check anything (need {MIN_OK} ok, with 10 reads and 10 writes)"
        ));
    }

    // The leases, against the failover rule.
    let opts = c.options();
    let cfg = c.node(c.live()[0]).config().clone();
    let bounds =
        leases::Bounds::of(opts.election_timeout_ms, cfg.lease_checkpoint_ms, cfg.request_timeout_ms);
    let lease_fail = |what: String| -> ! {
        let path = save_lease_history(sc.name, seed, round, &lh);
        fail(format!("{what}\nlease history: {path}"))
    };
    let report = match check_leases(&lh, &bounds) {
        Ok(report) => report,
        Err(v) => lease_fail(format!("the leases broke the failover rule:\n{v}")),
    };
    println!("[fault_sim] {} round {round}: leases: {report}", sc.name);
    if !lease_run.not_gone.is_empty() {
        lease_fail(format!(
            "{} of {} ephemeral keys were not seen gone within {drain:?} of the lease workload stopping \
             (TTL {ttl:?}): {:?}",
            lease_run.not_gone.len(),
            lease_run.keys,
            lease_run.not_gone
        ));
    }
    if report.keys < 5 || report.leases_seen_ending < 3 || report.renewals < 10 {
        lease_fail(format!(
            "the lease history is too thin to check anything (need 5 keys, 3 leases seen ending, \
             10 acknowledged renewals): {report}"
        ));
    }
}

/// Writes the lease history next to the temp dir, for a failure's post-mortem.
fn save_lease_history(name: &str, seed: u64, round: usize, h: &leases::LeaseHistory) -> String {
    let path = std::env::temp_dir().join(format!("fault_sim-{name}-{seed}-round{round}.leases.txt"));
    match std::fs::write(&path, h.render()) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(could not write {}: {e})", path.display()),
    }
}

fn cluster_options(nodes: usize, seed: u64) -> ClusterOptions {
    let mut opts = ClusterOptions::new(nodes);
    opts.seed = Some(seed);
    opts.http = true;
    // Small enough that a restarted or cut-off node gets some of its state by snapshot.
    opts.snapshot_every = 100;
    opts
}

/// A whole test: one cluster, one round.
async fn run_scenario(sc: Scenario) {
    let seed = seed_or(sc.default_seed);
    let _hint = ReplayHint { binary: "fault_sim", name: sc.name, seed, soak: false };
    println!("[fault_sim] {}: seed {seed} (replay: {})", sc.name, replay_command(sc.name, seed, false));
    let c = Cluster::start_with(cluster_options(sc.nodes, seed)).await;
    c.leader().await;
    let steps = schedule(seed, sc.nemeses, &c.ids(), sc.fault_time);
    for (i, s) in steps.iter().enumerate() {
        println!("[fault_sim] {} step {i}: {s:?}", sc.name);
    }
    run_round(&c, &sc, seed, 0, &steps, false).await;
    c.shutdown().await;
}

/// A soak: one cluster, rounds of every nemesis for `PALISADE_SOAK_SECS`.
async fn run_soak(sc: Scenario) {
    let seed = seed_or(sc.default_seed);
    let secs = jepsen::replay::soak_secs(60);
    let _hint = ReplayHint { binary: "fault_sim", name: sc.name, seed, soak: true };
    println!(
        "[fault_sim] {}: {secs} s, seed {seed} (replay: {})",
        sc.name,
        replay_command(sc.name, seed, true)
    );
    let c = Cluster::start_with(cluster_options(sc.nodes, seed)).await;
    c.leader().await;
    let until = Instant::now() + Duration::from_secs(secs);
    let mut round = 0;
    while round == 0 || Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let fault_time = sc.fault_time.min(left).max(Duration::from_secs(3));
        let steps = schedule(seed.wrapping_add(round as u64), sc.nemeses, &c.ids(), fault_time);
        for (i, s) in steps.iter().enumerate() {
            println!("[fault_sim] {} round {round} step {i}: {s:?}", sc.name);
        }
        run_round(&c, &sc, seed, round, &steps, true).await;
        round += 1;
    }
    println!("[fault_sim] {}: {round} rounds passed", sc.name);
    c.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_isolate_leader() {
    run_scenario(Scenario {
        name: "partition_isolate_leader",
        nodes: 3,
        nemeses: &[Nemesis::IsolateLeader],
        fault_time: Duration::from_secs(8),
        default_seed: 0x1501_a7e1,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_majority_minority() {
    run_scenario(Scenario {
        name: "partition_majority_minority",
        nodes: 5,
        nemeses: &[Nemesis::MajorityMinority],
        fault_time: Duration::from_secs(8),
        default_seed: 0x2a3b_5c00,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_loss() {
    run_scenario(Scenario {
        name: "one_way_loss",
        nodes: 3,
        nemeses: &[Nemesis::OneWayLoss],
        fault_time: Duration::from_secs(8),
        default_seed: 0x0e_3a11,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_one() {
    run_scenario(Scenario {
        name: "crash_restart_one",
        nodes: 3,
        nemeses: &[Nemesis::CrashOne],
        fault_time: Duration::from_secs(8),
        default_seed: 0xc4a5_0001,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_all() {
    run_scenario(Scenario {
        name: "crash_restart_all",
        nodes: 3,
        nemeses: &[Nemesis::CrashAll],
        fault_time: Duration::from_secs(8),
        default_seed: 0xc4a5_00a1,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: PALISADE_SOAK_SECS=<secs> [PALISADE_SEED=<n>] cargo test --release --test it fault_sim::soak -- --ignored"]
async fn soak_mixed_3_nodes() {
    run_soak(Scenario {
        name: "soak_mixed_3_nodes",
        nodes: 3,
        nemeses: ALL_NEMESES,
        fault_time: Duration::from_secs(20),
        default_seed: 0x50a4_0003,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: PALISADE_SOAK_SECS=<secs> [PALISADE_SEED=<n>] cargo test --release --test it fault_sim::soak -- --ignored"]
async fn soak_mixed_5_nodes() {
    run_soak(Scenario {
        name: "soak_mixed_5_nodes",
        nodes: 5,
        nemeses: ALL_NEMESES,
        fault_time: Duration::from_secs(20),
        default_seed: 0x50a4_0005,
    })
    .await;
}

/// The harness's crash is a process death as clients see it: an open request is cut off (no
/// HTTP status), the port refuses connections while the node is down, and the restarted node
/// serves on the same URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_resets_and_refuses_connections() {
    let seed = seed_or(0xdead_0001);
    let _hint = ReplayHint {
        binary: "fault_sim",
        name: "a_crashed_node_resets_and_refuses_connections",
        seed,
        soak: false,
    };
    let mut opts = cluster_options(3, seed);
    // Long enough that the request below is still open when the node crashes.
    opts.request_timeout = Duration::from_secs(5);
    let c = Cluster::start_with(opts).await;
    let (leader, _) = c.leader().await;
    let victim = others(&c, &[leader])[0];
    let url = c.client_url(victim).expect("an HTTP cluster has client URLs");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let get = |u: String| http.get(format!("{u}/v1/kv/k")).send();
    assert_eq!(get(url.clone()).await.expect("a live node answers").status(), 404);

    // A linearizable read on an isolated node waits for a quorum (up to its 5 s deadline);
    // crash the node meanwhile: the client gets no reply at all.
    c.isolate(victim);
    let pending = tokio::spawn(get(url.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.crash(victim).await;
    match pending.await.unwrap() {
        Err(e) => assert!(!e.is_connect() && !e.is_timeout(), "the open request failed with {e:?}"),
        Ok(r) => panic!("a request open at the crash got a reply: {}", r.status()),
    }
    let refused = get(url.clone()).await.expect_err("a crashed node does not answer");
    assert!(refused.is_connect(), "a crashed node's port should refuse connections: {refused:?}");
    assert!(c.client_urls().live().iter().all(|u| *u != url));
    assert!(c.client_urls().all().contains(&url));

    c.heal();
    c.restart(victim).await;
    let again = c.client_url(victim).unwrap();
    assert_eq!(again, url, "the port was free, so the node listens on it again");
    c.leader().await;
    let r = get(again).await.expect("the restarted node answers");
    assert_eq!(r.status(), 404);
    c.shutdown().await;
}

/// A leader cut off from the others still believes it leads for a while; it must not tell a
/// client that a lease the new leader granted does not exist (its own table lacks it). It
/// cannot confirm its leadership, so it answers 503, and the client tries another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_refuses_a_keepalive() {
    let seed = seed_or(0x1ea5_0001);
    let _hint = ReplayHint {
        binary: "fault_sim",
        name: "a_deposed_leader_never_refuses_a_keepalive",
        seed,
        soak: false,
    };
    let c = Cluster::start_with(cluster_options(3, seed)).await;
    let (old, _) = c.leader().await;
    c.isolate(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some((l, _)) = c.acting_leader().filter(|(l, _)| *l != old) {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader within 10 s of isolating {old}\n{}", c.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        c.node(old).replica_status().role,
        palisade::raft::Role::Leader,
        "the isolated node must still believe it leads, or this test checks nothing"
    );
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let url = |id| c.client_url(id).expect("an HTTP cluster has client URLs");
    let r =
        http.post(format!("{}/v1/leases", url(new))).json(&serde_json::json!({ "ttl": "10s" })).send().await;
    let r = r.expect("the new leader answers");
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_u64().expect("a lease id");

    let r = http.post(format!("{}/v1/leases/{id}/keepalive", url(old))).send().await.expect("an answer");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(
        status, 503,
        "the deposed leader answered {status} {body} for lease {id}, alive on leader {new}"
    );
    let r = http.post(format!("{}/v1/leases/{id}/keepalive", url(new))).send().await.expect("an answer");
    assert_eq!(r.status(), 200, "the new leader keeps lease {id} alive");
    c.heal();
    c.shutdown().await;
}

/// A keepalive that a leader could not commit (the followers' answers are cut, so nobody
/// starts an election and the renewal waits in the log) is answered 503 only if the renewal
/// will never happen; once it is in the log, the answer is 504 (it may still commit, and
/// does once the links heal). A 503 whose renewal commits later would make the lease outlive
/// the failover bound, which counts from the last acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_answered_503_renews_nothing() {
    let seed = seed_or(0x1ea5_0002);
    let _hint = ReplayHint {
        binary: "fault_sim",
        name: "a_keepalive_answered_503_renews_nothing",
        seed,
        soak: false,
    };
    let c = Cluster::start_with(cluster_options(3, seed)).await;
    let (l, _) = c.leader().await;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let url = c.client_url(l).expect("an HTTP cluster has client URLs");
    let r = http.post(format!("{url}/v1/leases")).json(&serde_json::json!({ "ttl": "10s" })).send().await;
    let granted = Instant::now();
    let r = r.expect("the leader answers");
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_u64().expect("a lease id");
    tokio::time::sleep(Duration::from_secs(2)).await;

    for o in others(&c, &[l]) {
        c.cut(o, l);
    }
    let r = http.post(format!("{url}/v1/leases/{id}/keepalive")).send().await.expect("an answer");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    c.heal();
    assert!(status == 503 || status == 504, "a keepalive that cannot commit got {status} {body}");

    // The lease as the leader sees it once the links are back (the renewal, if it was in
    // the log, commits with the next append).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read_at = Instant::now();
    let r = http.get(format!("{url}/v1/leases/{id}")).send().await.expect("an answer");
    assert_eq!(r.status(), 200, "lease {id} has 10 s to live");
    let remaining =
        r.json::<serde_json::Value>().await.unwrap()["remaining_ms"].as_u64().expect("remaining_ms");
    // Without a renewal, no more than TTL minus the time since the grant was acknowledged.
    let unrenewed = 10_000 - read_at.duration_since(granted).as_millis() as u64;
    println!("keepalive answered {status} {body}; {remaining} ms left, {unrenewed} ms without a renewal");
    if status == 503 {
        assert!(
            remaining <= unrenewed,
            "the keepalive was answered 503 (nothing happened), yet lease {id} was renewed: {remaining} ms \
             left, at most {unrenewed} ms without a renewal ({body})"
        );
    }
    c.shutdown().await;
}

/// The schedule is a function of the seed alone.
#[test]
fn a_seed_fixes_the_schedule() {
    let ids = [1, 2, 3, 4, 5];
    let render = |seed| format!("{:?}", schedule(seed, ALL_NEMESES, &ids, Duration::from_secs(30)));
    assert_eq!(render(7), render(7));
    assert_ne!(render(7), render(8));
}
