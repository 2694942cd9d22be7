//! The one facade every front-end uses: write, linearizable or serializable reads, and
//! cluster status. Owns the Raft instance, its storage and transport, and the node's
//! identity on disk.
//!
//! Invariants: a write is proposed only on the leader; a follower forwards it once to
//! the leader and never re-proposes it. A linearizable read is served only after a read
//! index confirmed by a quorum (one round shared by every read that arrived before the
//! round started) has been applied locally. Every call ends within the request deadline:
//! `Unavailable` when no leader or quorum answered (nothing took effect), `Timeout` when
//! a write may or may not have taken effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::raft::log_store::LogStore;
use crate::raft::network::{
    Network, PeerError, PeerHandler, PeerRequest, PeerResponse, Transport, TransportError,
};
use crate::raft::state_machine::{Applied, StateMachine};
use crate::raft::{Member, NodeId, Raft};
use crate::store::{Command, Outcome};

/// Limits on what clients may send and ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
    /// Writes are refused once the store holds this many bytes (all versions).
    pub quota_bytes: u64,
    /// Largest `limit` a list may ask for (and the default page size).
    pub max_list_limit: usize,
    /// Key + value bytes after which a list page stops.
    pub max_page_bytes: usize,
    /// Client requests served at once; more get 429.
    pub max_inflight_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            max_list_limit: 10_000,
            max_page_bytes: 4 * 1024 * 1024,
            max_inflight_requests: 2048,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// This node's own addresses, as the others reach it.
    pub advertise: Member,
    /// The initial members, if given on the command line (`None`: this node alone, or
    /// whatever the data dir recorded).
    pub initial_cluster: Option<BTreeMap<NodeId, Member>>,
    /// How long a request may wait for a leader, a quorum or a commit.
    pub request_timeout: Duration,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Take a snapshot after this many log entries.
    pub snapshot_every: u64,
    pub limits: Limits,
}

impl NodeConfig {
    /// A config with the defaults of `palisade serve`, for node `id` with `data_dir`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, advertise: Member) -> NodeConfig {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            advertise,
            initial_cluster: None,
            request_timeout: Duration::from_secs(5),
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            snapshot_every: 10_000,
            limits: Limits::default(),
        }
    }
}

/// What the data dir records about the node, so a restart resumes the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub initial_cluster: BTreeMap<NodeId, Member>,
}

const IDENTITY_FILE: &str = "identity.json";

fn cluster_id_of(members: &BTreeMap<NodeId, Member>) -> String {
    // FNV-1a over the sorted member list: stable across builds and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for (id, m) in members {
        for b in format!("{id}={};", m.peer_url).bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// Reads or creates the identity file, refusing flags that contradict it.
fn resolve_identity(cfg: &NodeConfig) -> anyhow::Result<Identity> {
    let path = cfg.data_dir.join(IDENTITY_FILE);
    if path.exists() {
        let found: Identity = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
        if found.node_id != cfg.id {
            anyhow::bail!(
                "the data dir {} belongs to node {}, but --node-id is {}; use the right data dir or node id",
                cfg.data_dir.display(),
                found.node_id,
                cfg.id
            );
        }
        if let Some(given) = &cfg.initial_cluster {
            let same_peers = given.len() == found.initial_cluster.len()
                && given
                    .iter()
                    .zip(&found.initial_cluster)
                    .all(|((a, ma), (b, mb))| a == b && ma.peer_url == mb.peer_url);
            if !same_peers {
                anyhow::bail!(
                    "--initial-cluster {} contradicts the cluster recorded in {} ({}); the membership of a running cluster cannot be changed by a flag",
                    format_cluster(given),
                    cfg.data_dir.display(),
                    format_cluster(&found.initial_cluster)
                );
            }
        }
        return Ok(found);
    }
    let initial = match &cfg.initial_cluster {
        Some(c) => c.clone(),
        None => BTreeMap::from([(cfg.id, cfg.advertise.clone())]),
    };
    if !initial.contains_key(&cfg.id) {
        anyhow::bail!(
            "--initial-cluster {} does not include this node ({})",
            format_cluster(&initial),
            cfg.id
        );
    }
    let id = Identity { node_id: cfg.id, cluster_id: cluster_id_of(&initial), initial_cluster: initial };
    std::fs::create_dir_all(&cfg.data_dir)?;
    crate::raft::state_machine::write_durably(
        &cfg.data_dir,
        IDENTITY_FILE,
        &serde_json::to_vec_pretty(&id)?,
    )?;
    Ok(id)
}

/// `1=http://a:7380,2=http://b:7380`.
pub fn format_cluster(c: &BTreeMap<NodeId, Member>) -> String {
    c.iter().map(|(id, m)| format!("{id}={}", m.peer_url)).collect::<Vec<_>>().join(",")
}

/// Read-index requests waiting for the next quorum round.
#[derive(Default)]
struct ReadRounds {
    waiting: Vec<oneshot::Sender<Result<u64>>>,
    running: bool,
}

/// Writes waiting to be proposed, and how many proposers are running.
#[derive(Default)]
struct Proposals {
    waiting: std::collections::VecDeque<(Command, oneshot::Sender<Result<Outcome, PeerError>>)>,
    running: usize,
}

/// Proposals in flight at once: the leader appends one while the previous replicates.
/// openraft 0.9 fsyncs each proposal inline in its core loop, so more proposers only
/// split the waiting writes into smaller batches (measured: 4 was slower than 1 or 2).
const MAX_PROPOSERS: usize = 2;
/// At most this many commands go into one log entry.
const MAX_BATCH: usize = 512;

/// A member's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub revision: u64,
    pub compact_revision: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub client_url: String,
    pub peer_url: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// Whether this member is the leader, in this node's view.
    pub is_leader: bool,
}

/// A running member.
pub struct Node {
    id: NodeId,
    identity: Identity,
    raft: Raft,
    sm: StateMachine,
    transport: Transport,
    cfg: NodeConfig,
    reads: Mutex<ReadRounds>,
    proposals: Mutex<Proposals>,
    /// When this node, as leader, last heard from a quorum (from openraft's metrics,
    /// stamped when they arrive: the metric itself is only as fresh as its last report).
    quorum_acked_at: Mutex<Option<Instant>>,
}

impl Node {
    /// Opens the data dir, starts Raft, and bootstraps the cluster on first start.
    pub async fn start(cfg: NodeConfig, transport: Transport) -> anyhow::Result<Arc<Node>> {
        let identity = resolve_identity(&cfg)?;
        let log = LogStore::open(&cfg.data_dir.join("raft"))?;
        let sm = StateMachine::open(&cfg.data_dir.join("snapshot"))?;
        let raft_cfg = openraft::Config {
            cluster_name: format!("palisade-{}", identity.cluster_id),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.snapshot_every / 2,
            max_payload_entries: 300,
            ..Default::default()
        }
        .validate()?;
        let network = Network { transport: transport.clone() };
        let raft = Raft::new(cfg.id, Arc::new(raft_cfg), network, log, sm.clone()).await?;
        if !raft.is_initialized().await? {
            let members: BTreeMap<NodeId, Member> = identity.initial_cluster.clone();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let node = Arc::new(Node {
            id: cfg.id,
            identity,
            raft,
            sm,
            transport,
            cfg,
            reads: Mutex::default(),
            proposals: Mutex::default(),
            quorum_acked_at: Mutex::default(),
        });
        tokio::spawn(Self::publish_client_url(Arc::downgrade(&node)));
        tokio::spawn(Self::track_quorum_acks(Arc::downgrade(&node), node.raft.metrics()));
        Ok(node)
    }

    /// Keeps `quorum_acked_at` current from the metrics stream.
    async fn track_quorum_acks(
        node: std::sync::Weak<Node>,
        mut rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    ) {
        while rx.changed().await.is_ok() {
            let Some(node) = node.upgrade() else { return };
            let ms = rx.borrow_and_update().millis_since_quorum_ack;
            let at = ms.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
            *node.quorum_acked_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }

    /// Makes sure the membership config carries this node's client URL (the initial
    /// cluster flag names only peer URLs), so every member can list where clients go.
    async fn publish_client_url(node: std::sync::Weak<Node>) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(node) = node.upgrade() else { return };
            let want = node.cfg.advertise.client_url.clone();
            match node.member(node.id) {
                Some(m) if m.client_url == want => return,
                None => continue,
                Some(_) => {}
            }
            let (Some(leader), _) = node.leader_and_term() else { continue };
            let req = PeerRequest::SetClientUrl { id: node.id, client_url: want };
            let r = if leader == node.id {
                Ok(node.clone().handle_peer(req).await)
            } else if let Some(member) = node.member(leader) {
                node.transport.call(leader, &member, req, node.cfg.request_timeout).await
            } else {
                continue;
            };
            tracing::debug!(?r, "published this node's client URL");
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The Raft handle, for the peer endpoints and tests.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// The leader this node knows of, and the current term.
    pub fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    /// The current term, for response headers.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    /// Waits (until `deadline`) for a known leader other than `not`.
    async fn wait_leader(&self, deadline: Instant, not: Option<NodeId>) -> Result<NodeId> {
        let mut rx = self.raft.metrics();
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if let Some(l) = leader.filter(|l| Some(*l) != not) {
                return Ok(l);
            }
            let tick = Instant::now() + Duration::from_millis(50);
            match tokio::time::timeout_at(deadline.min(tick), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Unavailable("this node is shutting down".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Unavailable(
                        "no leader was elected within the request deadline".into(),
                    ))
                }
                Err(_) => {}
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    /// Proposes `cmd` (forwarding it to the leader when this node is a follower) and
    /// returns what applying it decided.
    pub async fn write(self: &Arc<Self>, cmd: Command) -> Result<Outcome> {
        let deadline = self.deadline();
        let mut not = None;
        loop {
            let leader = self.wait_leader(deadline, not).await?;
            if leader == self.id {
                if !self.quorum_contact(deadline).await {
                    return Err(Error::Unavailable(
                        "this leader has not heard from a quorum within an election timeout; nothing was proposed".into(),
                    ));
                }
                match tokio::time::timeout_at(deadline, self.propose(cmd.clone())).await {
                    Ok(Ok(outcome)) => return Ok(outcome),
                    Ok(Err(PeerError::NotLeader { .. })) => {
                        // Not proposed: leadership moved on. Try again with the new leader.
                        not = Some(self.id);
                        continue;
                    }
                    Ok(Err(e)) => return Err(peer_error(e)),
                    Err(_) => {
                        return Err(Error::Timeout(
                            "the write was proposed but not committed within the deadline; it may or may not take effect".into(),
                        ))
                    }
                }
            }
            let Some(member) = self.member(leader) else {
                not = Some(leader);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match self.transport.call(leader, &member, PeerRequest::Forward(cmd.clone()), left).await {
                Ok(PeerResponse::Forward(Ok(outcome))) => return Ok(outcome),
                Ok(PeerResponse::Forward(Err(PeerError::NotLeader { .. }))) => {
                    not = Some(leader);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(PeerResponse::Forward(Err(e))) => return Err(peer_error(e)),
                Ok(other) => return Err(Error::Internal(format!("unexpected forward reply {other:?}"))),
                Err(TransportError::Unreachable(_)) => {
                    // Not delivered: safe to try again once a leader is known.
                    not = Some(leader);
                    if Instant::now() >= deadline {
                        return Err(Error::Unavailable("the leader could not be reached within the deadline".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(TransportError::Failed(e)) => {
                    return Err(Error::Timeout(format!(
                        "the leader did not answer ({e}); the write may or may not take effect"
                    )))
                }
                Err(TransportError::Timeout) => {
                    return Err(Error::Timeout(
                        "the write was forwarded but not answered within the deadline; it may or may not take effect".into(),
                    ))
                }
            }
        }
    }

    /// Whether this leader is in contact with a quorum: its last quorum acknowledgement
    /// is within an election timeout, or (when the cluster was idle, and openraft's ack
    /// clock only moves with replication) a fresh leadership round with a quorum succeeds
    /// before `deadline`. An isolated leader thus refuses a write before proposing it (503,
    /// nothing happened) instead of timing out on it (504, outcome unknown).
    async fn quorum_contact(&self, deadline: Instant) -> bool {
        let fresh = self
            .quorum_acked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() <= Duration::from_millis(self.cfg.election_timeout_ms));
        if fresh {
            return true;
        }
        match tokio::time::timeout_at(deadline, self.local_read_index()).await {
            Ok(Ok(_)) => true,
            // Deposed: openraft refuses the proposal itself, and the write goes elsewhere.
            Ok(Err(PeerError::NotLeader { .. })) => true,
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Proposes `cmd` on this node (the leader), batched with the writes that wait
    /// alongside it: one log entry and one fsync for the lot.
    async fn propose(self: &Arc<Self>, cmd: Command) -> std::result::Result<Outcome, PeerError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.proposals.lock().unwrap_or_else(|e| e.into_inner());
            p.waiting.push_back((cmd, tx));
            let start = p.running < MAX_PROPOSERS;
            if start {
                p.running += 1;
            }
            start
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.run_proposer().await });
        }
        // A proposer that went away may have proposed the write: outcome unknown.
        rx.await.unwrap_or(Err(PeerError::Timeout))
    }

    /// Proposes batches while writes are waiting.
    async fn run_proposer(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut p = self.proposals.lock().unwrap_or_else(|e| e.into_inner());
                if p.waiting.is_empty() {
                    p.running -= 1;
                    return;
                }
                let n = p.waiting.len().min(MAX_BATCH);
                p.waiting.drain(..n).collect()
            };
            let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let payload =
                if single { cmds.into_iter().next().expect("one command") } else { Command::Batch { cmds } };
            let t0 = std::time::Instant::now();
            let n = waiters.len();
            let result = self.raft.client_write(payload).await;
            tracing::debug!(batch = n, micros = t0.elapsed().as_micros() as u64, "proposal decided");
            let result = match result {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(PeerError::NotLeader { leader: f.leader_id })
                }
                Err(RaftError::APIError(e)) => Err(PeerError::Internal(e.to_string())),
                // The entry may already be replicated and commit under the next leader:
                // the outcome is unknown, never "did not happen".
                Err(RaftError::Fatal(_)) => Err(PeerError::Timeout),
            };
            match result {
                Ok(Outcome::Batch { outcomes, .. }) if !single && outcomes.len() == waiters.len() => {
                    for (w, o) in waiters.into_iter().zip(outcomes) {
                        let _ = w.send(Ok(o));
                    }
                }
                Ok(o) if single => {
                    let _ = waiters.into_iter().next().expect("one waiter").send(Ok(o));
                }
                Ok(o) => {
                    let e = PeerError::Internal(format!("a batch of {} was decided as {o:?}", waiters.len()));
                    waiters.into_iter().for_each(|w| drop(w.send(Err(e.clone()))));
                }
                Err(e) => waiters.into_iter().for_each(|w| drop(w.send(Err(e.clone())))),
            }
        }
    }

    /// Waits until this node can serve a linearizable read: a read index confirmed by a
    /// quorum is applied here.
    pub async fn linearize(self: &Arc<Self>) -> Result<()> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.read_rounds().await });
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(Error::Unavailable("this node is shutting down".into())),
            Err(_) => {
                return Err(Error::Unavailable("no quorum confirmed the read within the deadline".into()))
            }
        };
        tokio::time::timeout_at(deadline, self.sm.wait_applied(index)).await.map_err(|_| {
            Error::Unavailable("this node did not catch up with the leader within the deadline".into())
        })?;
        Ok(())
    }

    /// Runs read-index rounds while reads are waiting; each round answers every read that
    /// was waiting when it started.
    async fn read_rounds(self: Arc<Self>) {
        loop {
            let waiting = {
                let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                if r.waiting.is_empty() {
                    r.running = false;
                    return;
                }
                std::mem::take(&mut r.waiting)
            };
            let result = self.read_index_round().await;
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    /// One read-index round: confirms leadership locally, or asks the leader.
    async fn read_index_round(&self) -> Result<u64> {
        let deadline = self.deadline();
        let mut not = None;
        loop {
            let leader = self.wait_leader(deadline, not).await?;
            if leader == self.id {
                match tokio::time::timeout_at(deadline, self.local_read_index()).await {
                    Ok(Err(PeerError::NotLeader { .. })) => {
                        not = Some(self.id);
                        continue;
                    }
                    Ok(r) => return r.map_err(peer_error),
                    Err(_) => {
                        return Err(Error::Unavailable(
                            "no quorum confirmed the read within the deadline".into(),
                        ))
                    }
                }
            }
            let Some(member) = self.member(leader) else {
                not = Some(leader);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match self.transport.call(leader, &member, PeerRequest::ReadIndex, left).await {
                Ok(PeerResponse::ReadIndex(Ok(i))) => return Ok(i),
                Ok(PeerResponse::ReadIndex(Err(PeerError::NotLeader { .. })))
                | Err(TransportError::Unreachable(_)) => {
                    not = Some(leader);
                    if Instant::now() >= deadline {
                        return Err(Error::Unavailable(
                            "the leader could not be reached within the deadline".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(PeerResponse::ReadIndex(Err(e))) => return Err(peer_error(e)),
                Ok(other) => return Err(Error::Internal(format!("unexpected read-index reply {other:?}"))),
                Err(_) => {
                    return Err(Error::Unavailable(
                        "the leader did not confirm the read within the deadline".into(),
                    ))
                }
            }
        }
    }

    /// The leader's read index: its commit index once a quorum confirmed it still leads.
    async fn local_read_index(&self) -> std::result::Result<u64, PeerError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(PeerError::NotLeader { leader: f.leader_id })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(PeerError::Unavailable(format!("no quorum: {q}")))
            }
            Err(RaftError::Fatal(e)) => Err(PeerError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Reads the applied state, after a read index for linearizable reads.
    pub async fn read<T>(self: &Arc<Self>, linearizable: bool, f: impl FnOnce(&Applied) -> T) -> Result<T> {
        if linearizable {
            self.linearize().await?;
        }
        let applied = self.sm.read();
        Ok(f(&applied))
    }

    /// The store revision applied here (no quorum round).
    pub fn applied_revision(&self) -> u64 {
        self.sm.read().store.revision()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                id: *id,
                client_url: n.client_url.clone(),
                peer_url: n.peer_url.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" },
                is_leader: m.current_leader == Some(*id),
            })
            .collect();
        let (revision, compact_revision) = {
            let a = self.sm.read();
            (a.store.revision(), a.store.compact_revision())
        };
        ClusterStatus {
            cluster_id: self.identity.cluster_id.clone(),
            node_id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            revision,
            compact_revision,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// Ready: a leader is known and this node has applied what its log holds.
    pub fn is_ready(&self) -> std::result::Result<(), String> {
        let m = self.metrics();
        if m.current_leader.is_none() {
            return Err("no leader is known".into());
        }
        if m.state == ServerState::Learner && m.last_applied.is_none() {
            return Err("this learner has not caught up".into());
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        if last > applied + 1000 {
            return Err(format!("catching up: applied {applied} of {last}"));
        }
        Ok(())
    }

    /// Serves a peer request (from the peer listener or the simulated network).
    pub async fn handle_peer(self: Arc<Self>, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::Append(r) => PeerResponse::Append(self.raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerResponse::Vote(self.raft.vote(r).await),
            PeerRequest::Snapshot { vote, meta, data } => {
                let snapshot = openraft::Snapshot { meta, snapshot: Box::new(std::io::Cursor::new(data)) };
                PeerResponse::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            PeerRequest::Forward(cmd) => {
                let (leader, _) = self.leader_and_term();
                if leader != Some(self.id) {
                    return PeerResponse::Forward(Err(PeerError::NotLeader { leader }));
                }
                let r = match tokio::time::timeout(self.cfg.request_timeout, self.propose(cmd)).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::Forward(r)
            }
            PeerRequest::SetClientUrl { id, client_url } => {
                let Some(mut member) = self.member(id) else {
                    return PeerResponse::SetClientUrl(Err(PeerError::Internal(format!(
                        "{id} is not a member"
                    ))));
                };
                member.client_url = client_url;
                // Only the client URL changes; peer addresses, voters and learners stay.
                let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, member)]));
                let r = match tokio::time::timeout(
                    self.cfg.request_timeout,
                    self.raft.change_membership(change, false),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(PeerError::Unavailable(e.to_string())),
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::SetClientUrl(r)
            }
            PeerRequest::ReadIndex => {
                let r = match tokio::time::timeout(self.cfg.request_timeout, self.local_read_index()).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::ReadIndex(r)
            }
        }
    }

    /// Stops Raft; the data dir stays as it is.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }
}

fn peer_error(e: PeerError) -> Error {
    match e {
        PeerError::NotLeader { .. } => Error::Unavailable("leadership changed; retry".into()),
        PeerError::Unavailable(m) => Error::Unavailable(m),
        PeerError::Timeout => Error::Timeout(
            "the leader did not finish within the deadline; a write may or may not take effect".into(),
        ),
        PeerError::Internal(m) => Error::Internal(m),
    }
}

/// Lets the simulated network call into a node.
pub struct NodePeer(pub Arc<Node>);

impl PeerHandler for NodePeer {
    fn handle(&self, req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        self.0.clone().handle_peer(req).boxed()
    }
}
