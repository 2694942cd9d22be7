//! An in-process Palisade cluster for fault tests: N [`Node`]s in one tokio runtime, talking
//! over the seeded, faulty [`SimNet`].
//!
//! Import it from a test file with `mod sim;` (or `#[path = "sim/mod.rs"] mod sim;`). Every
//! test file compiles its own copy, so not every helper is used everywhere
//! (`#![allow(dead_code)]` below).
//!
//! ```ignore
//! let c = Cluster::start(3).await;          // prints the seed; PALISADE_SEED=<n> replays it
//! let (leader, term) = c.leader().await;    // every live node agrees on it
//! c.put(leader, "/a", "1").await?;          // through the facade, `Node::write`
//! c.isolate(leader);                        // network faults, by node id
//! c.crash(2).await; c.restart(2).await;     // data dir kept across a crash
//! let state = c.converge().await;           // all live nodes equal (linearizable reads)
//! c.shutdown().await;                       // or just drop it: everything is cleaned up
//! ```
//!
//! Conventions:
//! - Nodes are addressed by their [`NodeId`], `1..=n` (the same ids the network uses).
//! - Every node has its own temp data dir, removed when the cluster is dropped; a crash keeps it.
//! - Timeouts are short (heartbeat 50 ms, election 300..600 ms, request deadline 1 s) so fault
//!   tests take seconds. Tune them with [`ClusterOptions`].
//! - The seed fixes the sequence of fault decisions the network draws (drop or deliver, how much
//!   delay). The order in which concurrent calls draw depends on real-time scheduling, so a seed
//!   replays a run's faults exactly only when the calls happen in the same order; it is still
//!   the first thing to pin when chasing a failure.
//! - [`Ledger`] records client writes and checks them against the final state: acknowledged
//!   writes are present, refused ones absent, revisions of one client increase.
//! - With [`ClusterOptions::http`], every node also serves its client API
//!   (`palisade::http::client_router`) on a real `127.0.0.1` listener ([`Cluster::client_urls`]).
//!   A crash stops that server like a process death: the port refuses new connections and every
//!   open connection is reset; a restart listens on the same port again (or, if it was taken
//!   meanwhile, on a new one, which [`ClientUrls`] then lists).

#![allow(dead_code)]

pub mod net;

pub use net::{LinkFaults, SimNet, SimTransport};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::config::Config;
use palisade::error::{Error, Result};
use palisade::node::{ClusterStatus, Consistency, KvRead, KvReadResult, Node};
use palisade::peer::PeerKey;
use palisade::raft::{Member, NodeId, Role};
use palisade::store::{Command, Condition, KeyValue, ListOptions, Outcome};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// The env var that fixes the network's seed.
pub const SEED_ENV: &str = "PALISADE_SEED";

/// How long the helpers that wait (leader, converge, ...) wait by default.
pub const WAIT: Duration = Duration::from_secs(10);

/// Shape and timing of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of voters; ids are `1..=nodes`.
    pub nodes: usize,
    /// Seed of the network's RNG; `None`: `PALISADE_SEED` if set, else a random one.
    pub seed: Option<u64>,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub request_timeout: Duration,
    /// Snapshot after this many log entries (small values exercise snapshot install).
    pub snapshot_every: u64,
    /// Also serve every node's client API over HTTP on `127.0.0.1` (see [`Cluster::client_urls`]).
    pub http: bool,
    /// Changes every node's config after the harness has set it up.
    pub configure: fn(&mut Config),
}

impl ClusterOptions {
    pub fn new(nodes: usize) -> ClusterOptions {
        ClusterOptions {
            nodes,
            seed: None,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            request_timeout: Duration::from_millis(1000),
            snapshot_every: 10_000,
            http: false,
            configure: |_| {},
        }
    }
}

/// The seed to use: the given one, else `PALISADE_SEED`, else a random one.
pub fn choose_seed(given: Option<u64>) -> u64 {
    if let Some(s) = given {
        return s;
    }
    match std::env::var(SEED_ENV) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=palisade=debug,openraft=info`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

struct Slot {
    id: NodeId,
    /// The config of the first start (a restart may listen for clients on another port).
    cfg: Config,
    /// Kept across crashes; removed when the cluster is dropped.
    _dir: tempfile::TempDir,
}

/// The running nodes by id, shareable with tasks that outlive a borrow of the cluster (a
/// client task keeps writing while the test crashes and restarts nodes).
#[derive(Clone, Default)]
pub struct Handles(Arc<Mutex<BTreeMap<NodeId, Arc<Node>>>>);

impl Handles {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Arc<Node>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running node `id`, if it is up.
    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        self.lock().get(&id).cloned()
    }

    /// The ids of the running nodes.
    pub fn live(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    fn insert(&self, id: NodeId, node: Arc<Node>) {
        self.lock().insert(id, node);
    }

    fn remove(&self, id: NodeId) -> Option<Arc<Node>> {
        self.lock().remove(&id)
    }
}

/// The whole state of one node's store: its revision and every live key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub revision: u64,
    pub kvs: BTreeMap<String, KeyValue>,
}

impl Dump {
    /// Node `node`'s whole key space, paged through typed reads pinned to one revision.
    async fn of(node: &Arc<Node>, consistency: Consistency) -> Result<Dump> {
        let mut opts = ListOptions {
            revision: None,
            after: None,
            limit: node.config().max_list_limit,
            max_bytes: usize::MAX,
            keys_only: false,
        };
        let mut dump = Dump { revision: 0, kvs: BTreeMap::new() };
        loop {
            let KvReadResult::List(page) =
                node.read(KvRead::List { key: "/".into(), opts: opts.clone() }, consistency).await?
            else {
                unreachable!("a list read answers with a page")
            };
            dump.revision = page.revision;
            opts.revision = Some(page.revision);
            opts.after = page.kvs.last().map(|kv| kv.key.clone());
            dump.kvs.extend(page.kvs.into_iter().map(|kv| (kv.key.clone(), kv)));
            if !page.more {
                return Ok(dump);
            }
        }
    }

    /// The value of `key`, as UTF-8 (lossy).
    pub fn value(&self, key: &str) -> Option<String> {
        self.kvs.get(key).map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    pub fn keys(&self) -> Vec<&str> {
        self.kvs.keys().map(String::as_str).collect()
    }
}

/// A plain put command.
pub fn put_cmd(key: &str, value: &str) -> Command {
    Command::Put {
        lease: None,
        sequential: false,
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        cond: Condition::default(),
        prev_kv: false,
    }
}

/// Whether an error means "certainly not applied" (as opposed to maybe applied).
pub fn is_refused(e: &Error) -> bool {
    !matches!(e, Error::Timeout(_))
}

/// A simulated cluster. Dropping it stops every node and removes every data dir.
pub struct Cluster {
    net: Arc<SimNet>,
    seed: u64,
    opts: ClusterOptions,
    slots: Vec<Slot>,
    handles: Handles,
    /// The client API servers of the running nodes (with [`ClusterOptions::http`]).
    servers: Mutex<BTreeMap<NodeId, HttpServer>>,
    urls: ClientUrls,
}

impl Cluster {
    /// Starts `n` nodes with the default options and waits for nothing.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(ClusterOptions::new(n)).await
    }

    /// Starts every node concurrently over a fresh network and registers them on it.
    pub async fn start_with(opts: ClusterOptions) -> Cluster {
        init_tracing();
        assert!(opts.nodes > 0, "a cluster has at least one node");
        let seed = choose_seed(opts.seed);
        eprintln!("[sim] {} nodes, seed {seed} (replay with {SEED_ENV}={seed})", opts.nodes);
        let net = SimNet::new(seed);
        let ids: Vec<NodeId> = (1..=opts.nodes as NodeId).collect();
        // With HTTP, bind every client listener first: the members then carry their real
        // client URLs from the start.
        let mut listeners = BTreeMap::new();
        if opts.http {
            for id in &ids {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("a loopback listener for clients");
                listeners.insert(*id, l);
            }
        }
        let client_url = |id: &NodeId| listeners.get(id).map(url_of).unwrap_or_default();
        let members: BTreeMap<NodeId, Member> =
            ids.iter().map(|id| (*id, sim_member(*id, client_url(id)))).collect();
        let initial = members
            .iter()
            .map(|(id, m)| match m.client_url.as_str() {
                "" => format!("{id}={}", m.peer_url),
                client => format!("{id}={}|{client}", m.peer_url),
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut slots = Vec::new();
        for id in &ids {
            let dir = tempfile::Builder::new()
                .prefix(&format!("palisade-sim-{id}-"))
                .tempdir()
                .expect("a temp dir for the node");
            let mut cfg = Config::new(*id, dir.path().join("data"));
            // Never bound: the simulated network carries peer traffic, and a client
            // listener (with `http`) is bound by the harness itself.
            cfg.listen_client = "127.0.0.1:1".into();
            cfg.listen_peer = "127.0.0.1:2".into();
            let me = sim_member(*id, client_url(id));
            cfg.advertise_peer = Some(me.peer_url);
            cfg.advertise_client = (!me.client_url.is_empty()).then_some(me.client_url);
            cfg.initial_cluster = Some(initial.clone());
            cfg.heartbeat_ms = opts.heartbeat_ms;
            cfg.election_timeout_ms = opts.election_timeout_ms;
            cfg.request_timeout_ms = opts.request_timeout.as_millis() as u64;
            cfg.snapshot_every = opts.snapshot_every;
            (opts.configure)(&mut cfg);
            slots.push(Slot { id: *id, cfg, _dir: dir });
        }
        let cluster = Cluster {
            net,
            seed,
            opts,
            slots,
            handles: Handles::default(),
            servers: Mutex::default(),
            urls: ClientUrls::default(),
        };
        let started =
            futures::future::join_all(ids.iter().map(|id| cluster.boot(*id, listeners.remove(id)))).await;
        for (id, r) in ids.iter().zip(started) {
            if let Err(e) = r {
                panic!("node {id} did not start: {e:#}");
            }
        }
        cluster
    }

    /// Starts node `id` on its data dir, puts it on the network and, given a listener, serves
    /// its client API there. Retries for a while when the previous incarnation still holds the
    /// data dir's lock.
    async fn boot(&self, id: NodeId, listener: Option<TcpListener>) -> anyhow::Result<()> {
        self.boot_with(id, listener, |_| {}).await
    }

    async fn boot_with(
        &self,
        id: NodeId,
        listener: Option<TcpListener>,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<()> {
        let mut cfg = self.slot(id).cfg.clone();
        configure(&mut cfg);
        if let Some(l) = &listener {
            cfg.advertise_client = Some(url_of(l));
        }
        let give_up = Instant::now() + WAIT;
        let node = loop {
            let transport = Arc::new(SimTransport { net: self.net.clone(), from: id });
            match Node::start_with(cfg.clone(), transport, PeerKey::insecure()).await {
                Ok(node) => break node,
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!("node {id} did not start yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.handles.insert(id, node.clone());
        self.net.register(id, Arc::new(node.clone()));
        if let Some(l) = listener {
            let server = HttpServer::start(node, l);
            self.urls.set(id, server.url.clone(), true);
            self.lock_servers().insert(id, server);
        }
        Ok(())
    }

    fn lock_servers(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, HttpServer>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client listener for restarting node `id`: its previous port if that is still free,
    /// else a new one.
    async fn rebind(&self, id: NodeId) -> TcpListener {
        if let Some(old) = self.urls.get(id).and_then(|u| u.rsplit(':').next()?.parse::<u16>().ok()) {
            match TcpListener::bind(("127.0.0.1", old)).await {
                Ok(l) => return l,
                Err(e) => eprintln!("[sim] node {id}: port {old} is taken ({e}); listening on a new port"),
            }
        }
        TcpListener::bind("127.0.0.1:0").await.expect("a loopback listener for clients")
    }

    /// Where node `id` serves clients (its latest URL, also while it is down); `None` without
    /// [`ClusterOptions::http`].
    pub fn client_url(&self, id: NodeId) -> Option<String> {
        self.urls.get(id)
    }

    /// A shareable, live view of the nodes' client URLs (with [`ClusterOptions::http`]).
    pub fn client_urls(&self) -> ClientUrls {
        self.urls.clone()
    }

    /// The live node that acts as leader in the highest term, and that term, if any: no
    /// agreement of the others is required (for a nemesis that targets "the leader").
    pub fn acting_leader(&self) -> Option<(NodeId, u64)> {
        self.live()
            .into_iter()
            .filter_map(|id| {
                let s = self.try_node(id)?.replica_status();
                (s.role == Role::Leader).then_some((id, s.term))
            })
            .max_by_key(|(_, term)| *term)
    }

    fn slot(&self, id: NodeId) -> &Slot {
        self.slots.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// The network, for faults the helpers below do not cover.
    pub fn net(&self) -> &Arc<SimNet> {
        &self.net
    }

    /// Every member's id, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// The ids of the running nodes.
    pub fn live(&self) -> Vec<NodeId> {
        self.handles.live()
    }

    /// A shareable view of the running nodes.
    pub fn handles(&self) -> Handles {
        self.handles.clone()
    }

    /// Running node `id`; panics when it is crashed.
    pub fn node(&self, id: NodeId) -> Arc<Node> {
        self.handles.get(id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn try_node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.handles.get(id)
    }

    /// Whether node `id` currently acts as leader (its own view).
    pub fn is_leader(&self, id: NodeId) -> bool {
        self.try_node(id).is_some_and(|n| n.replica_status().role == Role::Leader)
    }

    pub fn status(&self, id: NodeId) -> ClusterStatus {
        self.node(id).status()
    }

    /// One line per node: role, leader, term, revision, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("seed {} ({SEED_ENV}={})\n", self.seed, self.seed);
        for id in self.ids() {
            match self.try_node(id) {
                None => writeln!(s, "  node {id}: down").unwrap(),
                Some(n) => {
                    let m = n.replica_status();
                    writeln!(
                        s,
                        "  node {id}: {:?} leader={:?} term={} last_log={} applied={} revision={}",
                        m.role,
                        m.leader,
                        m.term,
                        m.last_log_index,
                        m.applied_index,
                        n.applied_revision()
                    )
                    .unwrap()
                }
            }
        }
        s
    }

    /// The leader every live node agrees on, and its term; panics after [`WAIT`].
    pub async fn leader(&self) -> (NodeId, u64) {
        let all = self.ids();
        self.leader_among(&all).await
    }

    /// The leader that every live node of `group` agrees on, itself in `group` and acting as
    /// leader in that term; panics after [`WAIT`].
    pub async fn leader_among(&self, group: &[NodeId]) -> (NodeId, u64) {
        match self.try_leader_among(group, WAIT).await {
            Some(l) => l,
            None => panic!("no agreed leader among {group:?} within {WAIT:?}\n{}", self.describe()),
        }
    }

    /// Like [`Cluster::leader_among`], `None` after `wait`.
    pub async fn try_leader_among(&self, group: &[NodeId], wait: Duration) -> Option<(NodeId, u64)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(l) = self.agreed_leader(group) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn agreed_leader(&self, group: &[NodeId]) -> Option<(NodeId, u64)> {
        let nodes: Vec<Arc<Node>> = group.iter().filter_map(|id| self.try_node(*id)).collect();
        let first = nodes.first()?;
        let view = |n: &Arc<Node>| {
            let s = n.replica_status();
            (s.leader, s.term)
        };
        let (leader, term) = view(first);
        let leader = leader.filter(|l| group.contains(l))?;
        if !nodes.iter().all(|n| view(n) == (Some(leader), term)) {
            return None;
        }
        let s = self.try_node(leader)?.replica_status();
        (s.role == Role::Leader && s.term == term).then_some((leader, term))
    }

    /// A write through node `id`'s facade (forwarded if it is a follower).
    pub async fn write(&self, id: NodeId, cmd: Command) -> Result<Outcome> {
        self.node(id).write(cmd).await
    }

    pub async fn put(&self, id: NodeId, key: &str, value: &str) -> Result<Outcome> {
        self.write(id, put_cmd(key, value)).await
    }

    /// Puts through node `id`, retrying refused attempts (nothing applied) until one is
    /// acknowledged; panics on an ambiguous timeout or after [`WAIT`].
    pub async fn put_ok(&self, id: NodeId, key: &str, value: &str) -> Outcome {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.put(id, key, value).await {
                Ok(o) => return o,
                Err(e) if is_refused(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("put {key}={value} via {id} failed: {e:?}\n{}", self.describe()),
            }
        }
    }

    /// One key as node `id` sees it (`Node::read`): the revision the read reflects and the
    /// key, if present.
    pub async fn get(&self, id: NodeId, key: &str, linearizable: bool) -> Result<(u64, Option<KeyValue>)> {
        let read = KvRead::Get { key: key.to_string(), revision: None };
        match self.node(id).read(read, consistency(linearizable)).await? {
            KvReadResult::Get { revision, kv } => Ok((revision, kv)),
            other => unreachable!("a get answers with one key, not {other:?}"),
        }
    }

    /// Node `id`'s whole key space.
    pub async fn dump(&self, id: NodeId, linearizable: bool) -> Result<Dump> {
        Dump::of(&self.node(id), consistency(linearizable)).await
    }

    /// A linearizable read of `key` on node `id`, retried (reads change nothing) until it
    /// succeeds; panics after [`WAIT`].
    pub async fn get_ok(&self, id: NodeId, key: &str) -> (u64, Option<KeyValue>) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.get(id, key, true).await {
                Ok(r) => return r,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("read of {key} on {id} failed: {e:?}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("linearizable read of {key} on {id} failed: {e:?}\n{}", self.describe()),
            }
        }
    }

    /// Node `id`'s whole key space by a linearizable read, retried until it succeeds; panics
    /// after [`WAIT`].
    pub async fn dump_ok(&self, id: NodeId) -> Dump {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.dump(id, true).await {
                Ok(d) => return d,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("dump of {id} failed: {e:?}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("linearizable dump of {id} failed: {e:?}\n{}", self.describe()),
            }
        }
    }

    /// Waits until every live node answers a linearizable read with the same state, and
    /// returns it; panics (showing each node's state) after [`WAIT`]. Call it once writes
    /// have stopped and the network is healed.
    pub async fn converge(&self) -> Dump {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut dumps = Vec::new();
            for id in self.live() {
                dumps.push((id, self.dump(id, true).await));
            }
            let first = dumps.first().and_then(|(_, d)| d.as_ref().ok()).cloned();
            if let Some(first) = first {
                if dumps.iter().all(|(_, d)| d.as_ref().ok() == Some(&first)) {
                    return first;
                }
            }
            if Instant::now() >= deadline {
                let mut msg = String::from("the live nodes did not converge:\n");
                for (id, d) in &dumps {
                    match d {
                        Ok(d) => writeln!(msg, "  node {id}: revision {} keys {:?}", d.revision, d.keys()),
                        Err(e) => writeln!(msg, "  node {id}: {e:?}"),
                    }
                    .unwrap();
                }
                panic!("{msg}{}", self.describe());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Crashes node `id`: its client server gone (connections reset, the port refuses), off
    /// the network, Raft stopped. Its data dir stays for a restart.
    pub async fn crash(&self, id: NodeId) {
        let server = self.lock_servers().remove(&id);
        if let Some(server) = server {
            self.urls.set_up(id, false);
            server.stop().await;
        }
        self.net.unregister(id);
        let node = self.handles.remove(id).unwrap_or_else(|| panic!("node {id} is already down"));
        node.shutdown().await;
    }

    /// Starts node `id` again on its data dir and puts it back on the network (links keep
    /// whatever cuts and faults they had).
    /// Deletes crashed node `id`'s data dir (a lost disk).
    pub fn wipe(&self, id: NodeId) {
        assert!(self.try_node(id).is_none(), "node {id} is running; crash it first");
        let dir = &self.slot(id).cfg.data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).expect("remove the data dir");
        }
    }

    /// Starts crashed node `id` again on its data dir with `--rebuild-from-peers`.
    pub async fn rebuild(&self, id: NodeId) {
        assert!(self.try_node(id).is_none(), "node {id} is running; crash it first");
        let listener = if self.opts.http { Some(self.rebind(id).await) } else { None };
        if let Err(e) = self.boot_with(id, listener, |cfg| cfg.rebuild_from_peers = true).await {
            panic!("node {id} did not start to rebuild: {e:#}\n{}", self.describe());
        }
    }

    pub async fn restart(&self, id: NodeId) {
        assert!(self.try_node(id).is_none(), "node {id} is running; crash it first");
        let listener = if self.opts.http { Some(self.rebind(id).await) } else { None };
        if let Err(e) = self.boot(id, listener).await {
            panic!("node {id} did not restart: {e:#}\n{}", self.describe());
        }
    }

    /// Splits the members into groups that cannot reach each other (both ways).
    pub fn partition(&self, groups: &[&[NodeId]]) {
        self.net.partition(groups);
    }

    /// Cuts `id` off from every other member, both ways.
    pub fn isolate(&self, id: NodeId) {
        // SimNet::isolate only knows registered members; cut the crashed ones too.
        let others: Vec<NodeId> = self.ids().into_iter().filter(|o| *o != id).collect();
        self.net.partition(&[&[id], &others]);
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.net.cut(from, to);
    }

    /// Restores every link and clears every fault.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// Faults of the directed link `from` -> `to`.
    pub fn set_link_faults(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.net.set_faults(from, to, faults);
    }

    /// Faults of every link without its own.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.net.set_default_faults(faults);
    }

    /// Every link loses each request and each response with probability `drop` and delays
    /// each direction by `delay_ms` (uniform, inclusive).
    pub fn lossy(&self, drop: f64, delay_ms: (u64, u64)) {
        self.set_default_faults(LinkFaults { drop_request: drop, drop_response: drop, delay_ms });
    }

    /// Stops every node (awaiting Raft's shutdown), then drops the cluster and its data dirs.
    pub async fn shutdown(self) {
        let servers = std::mem::take(&mut *self.lock_servers());
        for server in servers.into_values() {
            server.stop().await;
        }
        for id in self.live() {
            self.net.unregister(id);
            if let Some(node) = self.handles.remove(id) {
                node.shutdown().await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in std::mem::take(&mut *self.lock_servers()).into_values() {
            server.kill();
        }
        // Unregistering also breaks the cycle net -> NodePeer -> Node -> Transport -> net.
        for id in self.ids() {
            self.net.unregister(id);
            if let Some(node) = self.handles.remove(id) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { node.shutdown().await });
                }
            }
        }
    }
}

/// A member's addresses in the simulation: the peer URL only names it (the simulated
/// network ignores it).
fn sim_member(id: NodeId, client_url: String) -> Member {
    Member { client_url, peer_url: format!("http://sim-node-{id}:7380"), incarnation: 0 }
}

fn consistency(linearizable: bool) -> Consistency {
    if linearizable {
        Consistency::Linearizable
    } else {
        Consistency::Serializable
    }
}

fn url_of(l: &TcpListener) -> String {
    let addr: SocketAddr = l.local_addr().expect("a bound listener has an address");
    format!("http://{addr}")
}

/// The client URLs of a cluster's nodes, shareable with client tasks; a restart on a new port
/// shows up here at once.
#[derive(Clone, Default)]
pub struct ClientUrls(Arc<Mutex<BTreeMap<NodeId, (String, bool)>>>);

impl ClientUrls {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, (String, bool)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, id: NodeId, url: String, up: bool) {
        self.lock().insert(id, (url, up));
    }

    fn set_up(&self, id: NodeId, up: bool) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.1 = up;
        }
    }

    /// Node `id`'s latest URL, up or down.
    pub fn get(&self, id: NodeId) -> Option<String> {
        self.lock().get(&id).map(|(u, _)| u.clone())
    }

    /// Every node's latest URL, in id order; a crashed node's URL refuses connections.
    pub fn all(&self) -> Vec<String> {
        self.lock().values().map(|(u, _)| u.clone()).collect()
    }

    /// The URLs of the running nodes only.
    pub fn live(&self) -> Vec<String> {
        self.lock().values().filter(|(_, up)| *up).map(|(u, _)| u.clone()).collect()
    }
}

/// One node's client API on a loopback listener, stoppable like a dying process.
struct HttpServer {
    url: String,
    /// `true` (or dropped): every open connection fails at its next read or write, with a reset.
    kill: watch::Sender<bool>,
    /// The accept loop; the listener lives (and dies) with it.
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    fn start(node: Arc<Node>, listener: TcpListener) -> HttpServer {
        let url = url_of(&listener);
        let (kill, rx) = watch::channel(false);
        let listener = KillableListener { inner: listener, kill: rx };
        let app = palisade::http::client_router(node);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("client server stopped: {e}");
            }
        });
        HttpServer { url, kill, task }
    }

    /// Resets every connection and closes the port, without waiting.
    fn kill(&self) {
        let _ = self.kill.send(true);
        self.task.abort();
    }

    /// Like [`HttpServer::kill`], and waits until the port is closed.
    async fn stop(self) {
        self.kill();
        let _ = self.task.await;
    }
}

/// Accepts connections whose IO fails once the server is killed.
struct KillableListener {
    inner: TcpListener,
    kill: watch::Receiver<bool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut kill = self.kill.clone();
                    let killed = Box::pin(async move {
                        // Killed, or the server is gone (sender dropped).
                        let _ = kill.wait_for(|k| *k).await;
                    });
                    return (KillableIo { inner: stream, killed, dead: false }, addr);
                }
                // Out of file descriptors and the like: back off, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A server-side connection that dies with its server: once killed, every read and write
/// fails, and the socket is closed with a reset (zero linger), as when a process dies.
struct KillableIo {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableIo {
    /// Whether the server was killed; registers the task's waker for the kill otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
            let _ = self.inner.set_zero_linger();
        }
        if self.dead {
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the node crashed"));
        }
        Ok(())
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// What one client write ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Acknowledged at this revision.
    Acked(u64),
    /// Refused: certainly not applied (`Unavailable` and every other non-timeout error).
    Refused(String),
    /// Timed out: may or may not have been applied.
    Ambiguous(String),
}

/// One recorded write: a put of a key written by no other write.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub client: usize,
    pub key: String,
    pub value: String,
    pub result: WriteResult,
}

/// Records puts of unique keys by any number of clients and checks the final state:
/// - every acknowledged put is present, with its value, at the revision it was acknowledged;
/// - no refused put is present (a refusal promises nothing took effect);
/// - the revisions acknowledged to one client strictly increase, in the client's order.
///
/// Cheap to clone; clones share the records.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<WriteRecord>>>);

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records the result of `put key=value` by `client`.
    pub fn record(&self, client: usize, key: &str, value: &str, r: &Result<Outcome>) {
        let result = match r {
            Ok(Outcome::Put { revision, .. }) => WriteResult::Acked(*revision),
            Ok(other) => panic!("put {key} was acknowledged with {other:?}, not a put"),
            Err(e) if is_refused(e) => WriteResult::Refused(format!("{e:?}")),
            Err(e) => WriteResult::Ambiguous(format!("{e:?}")),
        };
        let rec = WriteRecord { client, key: key.into(), value: value.into(), result };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }

    pub fn records(&self) -> Vec<WriteRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// (acknowledged, refused, ambiguous) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let recs = self.records();
        let n = |f: fn(&WriteResult) -> bool| recs.iter().filter(|r| f(&r.result)).count();
        (
            n(|r| matches!(r, WriteResult::Acked(_))),
            n(|r| matches!(r, WriteResult::Refused(_))),
            n(|r| matches!(r, WriteResult::Ambiguous(_))),
        )
    }

    /// Every violation of the rules above in `state`, empty when there is none.
    pub fn violations(&self, state: &Dump) -> Vec<String> {
        let mut bad = Vec::new();
        let mut last_rev: BTreeMap<usize, (u64, String)> = BTreeMap::new();
        for r in self.records() {
            let found = state.kvs.get(&r.key);
            match &r.result {
                WriteResult::Acked(rev) => {
                    match found {
                        None => bad.push(format!("acknowledged put {} (revision {rev}) is lost", r.key)),
                        Some(kv) if kv.value != r.value.as_bytes() || kv.mod_revision != *rev => {
                            bad.push(format!(
                                "acknowledged put {}={} at revision {rev} reads back as {kv:?}",
                                r.key, r.value
                            ))
                        }
                        Some(_) => {}
                    }
                    if let Some((prev, prev_key)) = last_rev.get(&r.client) {
                        if rev <= prev {
                            bad.push(format!(
                                "client {}: put {} acknowledged at revision {rev} after put {prev_key} at {prev}",
                                r.client, r.key
                            ));
                        }
                    }
                    last_rev.insert(r.client, (*rev, r.key.clone()));
                }
                WriteResult::Refused(e) => {
                    if let Some(kv) = found {
                        bad.push(format!("put {} was refused ({e}) but took effect: {kv:?}", r.key));
                    }
                }
                WriteResult::Ambiguous(_) => {}
            }
        }
        bad
    }

    /// Panics listing every violation in `state`.
    pub fn check(&self, state: &Dump) {
        let bad = self.violations(state);
        assert!(bad.is_empty(), "{} violation(s):\n  {}", bad.len(), bad.join("\n  "));
    }
}
