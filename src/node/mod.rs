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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::{InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, PeerError, PeerHandler, PeerRequest, PeerResponse, Transport};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Member, NodeId, Raft};

mod identity;
mod peer;
mod reads;
mod writes;

use identity::resolve_identity;
pub use identity::{format_cluster, Identity};
use reads::ReadRounds;
use writes::Proposals;

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
            // Members reach the same log index at about the same time; spreading their
            // snapshot points (up to +20% by node id) keeps them from all serialising the
            // whole store at once, which on shared hardware stalls the cluster together.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(
                cfg.snapshot_every + cfg.snapshot_every / 10 * (cfg.id % 3),
            ),
            // Few entries kept after a snapshot: the log store rewrites them when it compacts
            // its file, and that rewrite holds up appends. A follower further behind gets
            // the snapshot instead.
            max_in_snapshot_log_to_keep: (cfg.snapshot_every / 10).max(100),
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

    /// Stops Raft; the data dir stays as it is.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
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
