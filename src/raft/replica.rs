//! [`Replica`]: the one door to consensus. Everything above `raft/` (the node facade,
//! HTTP, tests) proposes, reads, watches leadership and serves peer RPCs through it, and
//! none of it names an openraft type.
//!
//! Owns the openraft instance, its log store and its state machine. Invariants:
//! - a proposal's outcome is reported only once it is applied here; when Raft stopped
//!   under a proposal the outcome is unknown, never "did not happen";
//! - a read index is handed out only after a quorum confirmed this node still leads: in a
//!   round, or by acknowledging it within the read lease (`raft::lease`);
//! - [`Leadership::is_self`] turns true only once this node has applied an entry of its own
//!   term (so everything an earlier leader committed is applied before a leader-only task
//!   starts: etcd promotes its lessor at the same point), and false the moment it is not
//!   leader any more;
//! - a membership change is made in a task of its own, so both steps of a joint change
//!   are proposed even when its caller gives up; removed ids are replicated (never reused);
//! - a peer RPC reaches openraft only from a member (a voter, for a vote; before a joining
//!   or rebuilt node has a membership, one of the members it was told of) speaking for
//!   itself, with a term that cannot overflow, entries that form a sequence, and, for a
//!   snapshot, chunks that arrive in order and add up to data that decodes; anything else
//!   is refused and changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

use super::lease::LeaseClock;
use super::log_store::LogStore;
use super::network::{Network, RaftReply, RaftRpc, RaftSender};
use super::snapshot_data::SnapshotData;
use super::state_machine::{Applied, StateMachine};
use super::types::*;
use crate::store::{Outcome, Proposal};

/// Who leads, as this node sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    pub term: u64,
    pub leader: Option<NodeId>,
    /// This node leads and has applied an entry of its own term.
    pub is_self: bool,
}

/// This node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    Learner,
    Shutdown,
}

/// One member of the replicated membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: Member,
    /// A voter (else a learner).
    pub voter: bool,
}

/// A snapshot of this replica's view, cheap to take.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub role: Role,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberInfo>,
    /// As leader: when a quorum last acknowledged this node's leadership (stamped when
    /// openraft reported it, so only as fresh as its last report).
    pub quorum_acked_at: Option<Instant>,
    /// As leader: the highest log index each member is known to hold.
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// Why the Raft core stopped, if it did (a storage failure, a bug).
    pub failure: Option<String>,
}

/// Why a proposal was not decided here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; nothing was proposed.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Raft stopped or refused in a way that leaves the outcome unknown: the entry may
    /// still commit under the next leader.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// Why no read index could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// How a replica runs.
#[derive(Clone)]
pub struct ReplicaConfig {
    pub id: NodeId,
    /// Names the cluster in openraft's messages.
    pub cluster_name: String,
    /// Where the Raft log lives.
    pub log_dir: PathBuf,
    /// Where snapshots live.
    pub snapshot_dir: PathBuf,
    pub heartbeat_ms: u64,
    /// The minimum election timeout; the maximum is twice this.
    pub election_timeout_ms: u64,
    /// Take a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// The largest message a peer accepts (bytes): appends are split and snapshots
    /// chunked to stay under it.
    pub max_message_bytes: usize,
    /// Called once with the reason when storage or the Raft core fails for good (the
    /// process should then stop, so an orchestrator restarts it).
    pub on_fatal: Option<crate::wal::OnFatal>,
    /// Size of a write-ahead log segment (bytes).
    pub wal_segment_bytes: u64,
    /// The members this node was bootstrapped with: while it is rebuilt and knows no
    /// membership yet, these may send it Raft calls.
    pub initial_members: BTreeMap<NodeId, Member>,
    /// This node joined a running cluster and has not received its membership yet: until
    /// it does, `initial_members` (the membership the cluster answered the join with) may
    /// send it entries.
    pub joining: bool,
    /// Where fsync and apply durations and leader changes are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// As leader, answer read-index requests from the read lease (see `raft::lease`)
    /// while a quorum's acknowledgement is fresh, instead of a quorum round each time.
    pub lease_reads: bool,
}

/// The condition of this replica's storage (see [`crate::wal::Health`]).
pub use crate::wal::{Health as StorageHealth, Stall};

/// A snapshot being received, chunk by chunk, into a file in the snapshot dir (removed
/// when the transfer is dropped before it is handed on).
struct Incoming {
    from: NodeId,
    /// The sending leader's vote.
    vote: Vote,
    snapshot_id: String,
    total: u64,
    /// Bytes written so far.
    received: u64,
    path: PathBuf,
    /// `None` only while a chunk is being written.
    file: Option<std::fs::File>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a member rebuilt on an empty disk must reach before it may vote again: the
/// cluster's commit index when the rebuild began, and the term of the leader that told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RebuildGate {
    pub index: u64,
    pub term: u64,
}

/// Terms a peer may claim above ours: far beyond any real run of elections (2^32 of them),
/// far below overflow.
const MAX_TERM_LEAD: u64 = 1 << 32;

/// One member's consensus engine and the state it applies.
pub struct Replica {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    leadership: watch::Receiver<Leadership>,
    /// When the quorum last acknowledged this leader (see [`ReplicaStatus::quorum_acked_at`]).
    quorum_acked_at: Arc<Mutex<Option<Instant>>>,
    /// Set by [`Replica::shutdown`]: Raft stopping then is no failure.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The snapshot a leader is sending this node, as far as it has arrived.
    incoming: tokio::sync::Mutex<Option<Incoming>>,
    /// The log store, for its health.
    log: LogStore,
    /// While set: this member is rebuilt from its peers (see [`Replica::hold_for_rebuild`]).
    rebuild: Mutex<Option<RebuildGate>>,
    /// See [`ReplicaConfig::initial_members`].
    initial_members: BTreeMap<NodeId, Member>,
    /// See [`ReplicaConfig::joining`].
    joining: bool,
    /// When a leader's entries or snapshot last reached Raft here (a node the cluster
    /// removed stops hearing from it).
    leader_heard_at: Mutex<Instant>,
    /// When a quorum last acknowledged this node as leader (see `raft::lease`).
    lease: Arc<LeaseClock>,
    /// How long after a quorum's acknowledgement a read may rely on it: half of openraft's
    /// leader lease (the longest election timeout), for which followers refuse votes.
    lease_window: Duration,
    /// Lease reads are on (off with `--read-index-only`, and for good once
    /// [`Replica::end_lease_reads`] is called).
    lease_reads: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// This node is not the leader; nothing changed.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Another membership change is under way; nothing changed.
    #[error("another membership change is under way: {0}")]
    InProgress(String),
    /// Raft refused the change as it stands (an unknown learner, ...); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Raft stopped under the change: it may or may not take effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ChangeError {
    use openraft::error::ChangeMembershipError as C;
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ChangeError::NotLeader { leader: f.leader_id }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(C::InProgress(p))) => {
            ChangeError::InProgress(p.to_string())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ChangeError::Refused(e.to_string())
        }
        RaftError::Fatal(e) => ChangeError::Unknown(format!("raft stopped: {e}")),
    }
}

impl Replica {
    /// Opens the log and snapshots under the configured dirs and starts Raft.
    pub async fn open(cfg: &ReplicaConfig, sender: Arc<dyn RaftSender>) -> anyhow::Result<Replica> {
        let opts = crate::wal::Options {
            on_fatal: cfg.on_fatal.clone(),
            on_fsync: Some({
                let h = cfg.metrics.fsync_histogram();
                Arc::new(move |d: Duration| h.observe(d.as_secs_f64()))
            }),
            segment_bytes: cfg.wal_segment_bytes,
            ..Default::default()
        };
        let log = LogStore::open_with(&cfg.log_dir, opts)?;
        let sm = StateMachine::open(&cfg.snapshot_dir)?;
        sm.set_receipts({
            let log = log.clone();
            Box::new(move |index| log.received_at(index))
        });
        sm.set_apply_histogram(cfg.metrics.apply_histogram());
        let raft_cfg = openraft::Config {
            cluster_name: cfg.cluster_name.clone(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            // Members reach the same log index at about the same time; spreading their
            // snapshot points (up to +20% by node id) keeps them from all serialising the
            // whole state at once, which on shared hardware stalls the cluster together.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(
                cfg.snapshot_every + cfg.snapshot_every / 10 * (cfg.id % 3),
            ),
            // Few entries kept after a snapshot: a follower further behind gets the
            // snapshot instead.
            max_in_snapshot_log_to_keep: (cfg.snapshot_every / 10).max(100),
            max_payload_entries: 300,
            ..Default::default()
        }
        .validate()?;
        let lease = Arc::new(LeaseClock::default());
        let network = Network { sender, max_message_bytes: cfg.max_message_bytes, lease: lease.clone() };
        // Half the time a follower refuses votes after hearing from this leader.
        let lease_window = Duration::from_millis(raft_cfg.election_timeout_max / 2);
        let raft = Raft::new(cfg.id, Arc::new(raft_cfg), network, log.clone(), sm.clone()).await?;
        let (tx, leadership) = watch::channel(Leadership::default());
        let quorum_acked_at = Arc::new(Mutex::new(None));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on_fatal = cfg.on_fatal.clone().map(|f| {
            let stopping = stopping.clone();
            let f: crate::wal::OnFatal = Arc::new(move |why: &str| {
                if !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    f(why)
                }
            });
            f
        });
        tokio::spawn(follow_metrics(
            raft.metrics(),
            tx,
            quorum_acked_at.clone(),
            on_fatal,
            cfg.metrics.clone(),
        ));
        Ok(Replica {
            id: cfg.id,
            raft,
            sm,
            leadership,
            quorum_acked_at,
            stopping,
            incoming: Default::default(),
            log,
            rebuild: Mutex::new(None),
            initial_members: cfg.initial_members.clone(),
            joining: cfg.joining,
            leader_heard_at: Mutex::new(Instant::now()),
            lease,
            metrics: cfg.metrics.clone(),
            lease_window,
            lease_reads: std::sync::atomic::AtomicBool::new(cfg.lease_reads),
        })
    }

    /// Whether this replica's log holds any state (a membership, at least).
    pub async fn is_initialized(&self) -> anyhow::Result<bool> {
        Ok(self.raft.is_initialized().await?)
    }

    /// Bootstraps a new cluster with `members` as its voters. Harmless when every member
    /// does it with the same members, and a no-op once the log holds anything.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> anyhow::Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes `p` (on the leader) and returns what applying it decided.
    pub async fn propose(&self, p: Proposal) -> Result<Outcome, ProposeError> {
        match self.raft.client_write(p).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { leader: f.leader_id })
            }
            // A membership change in progress: the proposal itself did not go in.
            Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_))) => {
                Err(ProposeError::Unknown(e.to_string()))
            }
            // The entry may already be replicated and commit under the next leader.
            Err(RaftError::Fatal(e)) => Err(ProposeError::Unknown(format!("raft stopped: {e}"))),
        }
    }

    /// The leader's read index, with the term it leads in: from the read lease when it
    /// holds (see [`Replica::lease_read_index`]), else its commit index once a quorum
    /// confirmed in a round that it still leads.
    pub async fn read_index(&self) -> Result<(u64, u64), ReadIndexError> {
        if let Some(read) = self.lease_read_index() {
            return Ok(read);
        }
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => {
                self.metrics.read_index(false);
                Ok((read.map_or(0, |l| l.index), self.term()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ReadIndexError::NotLeader { leader: f.leader_id })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(ReadIndexError::NoQuorum(q.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ReadIndexError::Stopped(e.to_string())),
        }
    }

    /// As leader within its read lease: a read index and the term, with no quorum round
    /// and no call into Raft (see `raft::lease`). `None` when this node is not the leader,
    /// has not applied an entry of its own term yet (so entries of earlier leaders may be
    /// unapplied here), or no quorum acknowledged it within the lease window: the caller
    /// then runs a round.
    pub fn lease_read_index(&self) -> Option<(u64, u64)> {
        if !self.lease_reads.load(Ordering::SeqCst) {
            return None;
        }
        let (state, vote, last_applied, membership) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.vote, m.last_applied, m.membership_config.clone())
        };
        let term = vote.leader_id().term;
        // Lagging metrics only make this refuse longer.
        let own_term_applied = last_applied.is_some_and(|l| l.leader_id.term == term);
        if state != ServerState::Leader || vote.leader_id().voted_for() != Some(self.id) || !own_term_applied
        {
            return None;
        }
        let now = Instant::now();
        let configs = membership.membership().get_joint_config();
        let (acked, commit_sent) = self.lease.quorum_acked(&vote, self.id, configs, now)?;
        if now.saturating_duration_since(acked) >= self.lease_window {
            return None;
        }
        // Everything acknowledged anywhere is applied here (an answer is sent after the
        // apply) or on a member that learnt its commit from this leader (recorded before it
        // was sent); the commit index openraft saved (before applying) is taken too, so a
        // member rebuilt from its peers waits for about all that is committed.
        let index = commit_sent.max(self.sm.applied_index()).max(self.log.committed_index());
        // A hand-over that began meanwhile may already have a successor campaigning.
        if !self.lease_reads.load(Ordering::SeqCst) {
            return None;
        }
        self.metrics.read_index(true);
        Some((index, term))
    }

    /// Lease reads end here for good (a leader handing its leadership over: the member it
    /// asks to campaign does not wait for the lease to run out, so neither may reads).
    pub fn end_lease_reads(&self) {
        self.lease_reads.store(false, Ordering::SeqCst);
    }

    /// Waits until the entry at `index` is applied here.
    pub async fn wait_applied(&self, index: u64) {
        self.sm.wait_applied(index).await;
    }

    /// The applied position (index and revision), published after every applied batch.
    pub fn applied_position(&self) -> watch::Receiver<super::state_machine::AppliedPosition> {
        self.sm.position()
    }

    /// Read access to the applied state. Never hold it across an await.
    pub fn applied(&self) -> RwLockReadGuard<'_, Applied> {
        self.sm.read()
    }

    /// Who leads; changes are published as they happen.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// This replica's view of the cluster.
    pub fn status(&self) -> ReplicaStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberInfo { id: *id, addr: n.clone(), voter: voters.contains(id) })
            .collect();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Follower => Role::Follower,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let matched = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        ReplicaStatus {
            id: self.id,
            term: m.current_term,
            leader: m.current_leader,
            role,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            quorum_acked_at: self.quorum_acked_at(),
            matched,
            failure: m.running_state.err().map(|e| e.to_string()),
        }
    }

    /// As leader: when a quorum last acknowledged this node's leadership (cheap).
    pub fn quorum_acked_at(&self) -> Option<Instant> {
        *self.quorum_acked_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While `gate` is set, this member is being rebuilt on an empty disk: it neither votes
    /// nor campaigns, and takes entries only from a leader of the gate's term or later,
    /// until it has applied the gate's index. Its empty log must not help elect a leader
    /// missing acknowledged writes, and a stale leader (of an older term, which this
    /// member's lost vote would have refused) must not count it. `None` releases it.
    pub fn hold_for_rebuild(&self, gate: Option<RebuildGate>) {
        *self.rebuild.lock().unwrap_or_else(|e| e.into_inner()) = gate;
        self.raft.runtime_config().elect(gate.is_none());
    }

    /// The rebuild this member is held for, if any.
    pub fn rebuild_gate(&self) -> Option<RebuildGate> {
        *self.rebuild.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the last entry applied here.
    pub fn applied_index(&self) -> u64 {
        self.sm.applied_index()
    }

    /// The condition of the log's storage: `Stalled` while the disk is full or file
    /// descriptors ran out (writes wait, and resume by themselves), `Failed` for good.
    pub fn storage_health(&self) -> StorageHealth {
        self.log.health()
    }

    /// Whether this replica knows a membership (it has bootstrapped or been joined).
    pub fn has_membership(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().nodes().next().is_some()
    }

    /// The addresses of member `id`, if it is one.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    /// The current term (cheap: for response headers).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Records new addresses for member `id` (voters and learners stay as they are).
    pub async fn set_member_addr(&self, id: NodeId, addr: Member) -> Result<(), String> {
        let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, addr)]));
        self.raft.change_membership(change, false).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Adds `id` as a learner (on the leader), without waiting for it to catch up; returns
    /// the log index of the change.
    pub async fn add_learner(&self, id: NodeId, addr: Member) -> Result<u64, ChangeError> {
        let raft = self.raft.clone();
        let task = tokio::spawn(async move { raft.add_learner(id, addr, false).await });
        match task.await {
            Ok(r) => r.map(|r| r.log_id.index).map_err(change_error),
            Err(e) => Err(ChangeError::Unknown(format!("the membership change task failed: {e}"))),
        }
    }

    /// Makes learner `id` a voter (on the leader), through joint consensus; returns once
    /// the new membership is committed, with its log index.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ChangeError> {
        self.change(openraft::ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([id]))).await
    }

    /// Removes member `id` (a voter through joint consensus, or a learner) on the leader;
    /// returns once the membership without it is committed, with its log index. A leader
    /// that removes itself leads until then, and steps down after.
    pub async fn remove(&self, id: NodeId) -> Result<u64, ChangeError> {
        let voter = self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
        let ids = std::collections::BTreeSet::from([id]);
        let change = if voter {
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        self.change(change).await
    }

    /// Records new addresses for member `id` (on the leader), typed like the other changes.
    pub async fn change_addr(&self, id: NodeId, addr: Member) -> Result<u64, ChangeError> {
        self.change(openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, addr)]))).await
    }

    /// Makes `change` in a task of its own: openraft proposes the second step of a joint
    /// change only while its caller waits, so a caller that gave up (a request past its
    /// deadline) must not leave the cluster in a joint membership.
    async fn change(&self, change: openraft::ChangeMembers<NodeId, Member>) -> Result<u64, ChangeError> {
        let raft = self.raft.clone();
        let task = tokio::spawn(async move { raft.change_membership(change, false).await });
        match task.await {
            Ok(r) => r.map(|r| r.log_id.index).map_err(change_error),
            Err(e) => Err(ChangeError::Unknown(format!("the membership change task failed: {e}"))),
        }
    }

    /// As leader, completes a joint membership left behind (a leader that changed during a
    /// change commits the joint step, but never proposes the next one): moves to its last
    /// configuration. `Ok(false)` when there was nothing to complete.
    pub async fn finish_joint(&self) -> Result<bool, ChangeError> {
        let (joint, last, committed) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let configs = membership.get_joint_config();
            let committed = self.sm.read().membership.log_id() == m.membership_config.log_id();
            (configs.len() > 1, configs.last().cloned().unwrap_or_default(), committed)
        };
        if !joint || !committed || last.is_empty() {
            return Ok(false);
        }
        self.change(openraft::ChangeMembers::ReplaceAllVoters(last)).await.map(|_| true)
    }

    /// Whether the membership this node knows is a joint one: a change is under way.
    pub fn change_in_progress(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().get_joint_config().len() > 1
    }

    /// Whether a Raft call `rpc` from `from`, which this node's membership does not name,
    /// may still reach the replica: an append or a snapshot from a leader that joined after
    /// the membership this node has applied (see `check`).
    pub fn takes_from_unknown(&self, from: NodeId, rpc: &RaftRpc) -> bool {
        matches!(rpc, RaftRpc::Append(_) | RaftRpc::SnapshotChunk { .. })
            && self.has_membership()
            && !self.sm.read().retired.contains(&from)
    }

    /// The ids a membership change removed (applied here): never to be used again.
    pub fn retired(&self) -> std::collections::BTreeSet<NodeId> {
        self.sm.read().retired.clone()
    }

    /// Whether an applied (so committed) membership change removed `id`: it was in the
    /// membership before the change and not after (a node that is catching up applies
    /// memberships from before it joined; they do not count).
    pub fn applied_removal_of(&self, id: NodeId) -> bool {
        self.sm.read().retired.contains(&id)
    }

    /// How long since a leader's entries (or heartbeat) last reached Raft here.
    pub fn since_leader_heard(&self) -> Duration {
        self.leader_heard_at.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// Serves a Raft call from member `from`, after checking it may be handed to Raft.
    pub async fn handle(&self, from: NodeId, rpc: RaftRpc) -> RaftReply {
        if let Err(why) = self.check(from, &rpc) {
            tracing::warn!(from, %why, "refused a raft call");
            return RaftReply::Refused(why);
        }
        if !matches!(rpc, RaftRpc::Vote(_)) {
            *self.leader_heard_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        match rpc {
            RaftRpc::Append(r) => RaftReply::Append(self.raft.append_entries(r).await),
            RaftRpc::Vote(r) => {
                // Before the vote can be granted: this node's lease ends with it.
                self.lease.vote_requested(r.vote.leader_id.term);
                RaftReply::Vote(self.raft.vote(r).await)
            }
            RaftRpc::SnapshotChunk { vote, meta, offset, total, done, data } => {
                self.receive_chunk(from, vote, meta, offset, total, done, data).await
            }
        }
    }

    /// Stores a chunk of a snapshot from `from` at the end of the file being received, and
    /// with the last one checks the whole file (streaming) and hands it to Raft. Chunks must
    /// come in order and add up to `total`; a transfer from a leader of a later term
    /// replaces one from an older leader, never the other way round.
    #[allow(clippy::too_many_arguments)]
    async fn receive_chunk(
        &self,
        from: NodeId,
        vote: Vote,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
        done: bool,
        data: Vec<u8>,
    ) -> RaftReply {
        let mut incoming = self.incoming.lock().await;
        if offset == 0 {
            // A transfer from a leader of a later term replaces one from an older
            // leader; an older one never interrupts a newer one.
            if incoming.as_ref().is_some_and(|i| i.from != from && i.vote > vote) {
                return RaftReply::Refused(
                    "a snapshot from a leader of a later term is being received".into(),
                );
            }
            *incoming = None;
            // A transfer that cannot fit would fill the disk the log needs too.
            if let Some(free) = self.sm.free_bytes() {
                if total > free {
                    tracing::warn!(from, total, free, "refused a snapshot larger than the free disk space");
                    return RaftReply::Refused(format!(
                        "the snapshot is {total} bytes, but the disk of this member's snapshot dir has {free} bytes free"
                    ));
                }
            }
            let path = self.sm.incoming_path(from);
            let file = match std::fs::File::create(&path) {
                Ok(f) => f,
                Err(e) => {
                    return RaftReply::Refused(format!("cannot receive a snapshot: {}: {e}", path.display()))
                }
            };
            *incoming = Some(Incoming {
                from,
                vote,
                snapshot_id: meta.snapshot_id.clone(),
                total,
                received: 0,
                path,
                file: Some(file),
            });
        }
        let Some(inc) = incoming.as_mut() else {
            return RaftReply::Refused(format!("no snapshot is being received (a chunk at {offset})"));
        };
        let expected = inc.received;
        if inc.from != from || inc.vote > vote {
            // A stray chunk from another sender (a deposed leader's, late) never cuts off the
            // transfer under way.
            return RaftReply::Refused(format!(
                "a chunk at {offset} from node {from}, while a snapshot from node {} is being received",
                inc.from
            ));
        }
        if inc.snapshot_id != meta.snapshot_id || inc.total != total || offset != expected {
            *incoming = None;
            return RaftReply::Refused(format!(
                "out of order: a chunk at {offset} of snapshot {} where {expected} of {} was due",
                meta.snapshot_id, total
            ));
        }
        let end = expected + data.len() as u64;
        if end > total || (done && end != total) {
            *incoming = None;
            return RaftReply::Refused(format!("the chunks do not add up to {total} bytes"));
        }
        // Disk writes off the async runtime; the file comes back with the result.
        let Some(mut file) = inc.file.take() else {
            *incoming = None;
            return RaftReply::Refused("a previous chunk failed while it was written".into());
        };
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let r = file.write_all(&data).and_then(|()| if done { file.sync_all() } else { Ok(()) });
            (file, r)
        })
        .await;
        match written {
            Ok((file, Ok(()))) => {
                inc.file = Some(file);
                inc.received = end;
            }
            Ok((_, Err(e))) => {
                let why = format!("cannot store a snapshot chunk in {}: {e}", inc.path.display());
                *incoming = None;
                tracing::warn!(from, error = %e, "storing a snapshot chunk failed");
                return RaftReply::Refused(why);
            }
            Err(e) => {
                *incoming = None;
                return RaftReply::Refused(format!("storing a snapshot chunk failed: {e}"));
            }
        }
        if !done {
            return RaftReply::ChunkStored;
        }
        let path = std::mem::take(&mut inc.path);
        *incoming = None;
        drop(incoming);
        // Decoding the whole snapshot is CPU work: off the async runtime.
        let meta2 = meta.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let check = StateMachine::check_received(&path, &meta2);
            let applied = match check {
                Ok(applied) => applied,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(format!("the snapshot is damaged: {e}"));
                }
            };
            SnapshotData::received(path.clone(), applied).map_err(|e| {
                let _ = std::fs::remove_file(&path);
                format!("cannot reopen the received snapshot: {e}")
            })
        })
        .await;
        let data = match checked {
            Ok(Ok(data)) => data,
            Ok(Err(why)) => {
                tracing::warn!(from, error = %why, "refused a received snapshot");
                return RaftReply::Refused(why);
            }
            Err(e) => return RaftReply::Refused(format!("checking the snapshot failed: {e}")),
        };
        let snapshot = openraft::Snapshot { meta, snapshot: Box::new(data) };
        RaftReply::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    /// Why `rpc` from `from` must not reach Raft, if it must not.
    fn check(&self, from: NodeId, rpc: &RaftRpc) -> Result<(), String> {
        let (term, membership) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.membership_config.clone())
        };
        let membership = membership.membership();
        let rebuild = self.rebuild_gate();
        if from == self.id {
            return Err("a member does not call itself".into());
        }
        let known = match membership.get_node(&from) {
            Some(_) => true,
            // Rebuilding or joining, before the first membership arrived: the initial
            // members (for a joining node, the membership the cluster answered with).
            None if membership.nodes().next().is_none() => {
                (rebuild.is_some() || self.joining) && self.initial_members.contains_key(&from)
            }
            // A leader this node does not know yet: its membership may be behind the log
            // (members were added while it was away, or it installed a snapshot taken
            // before that leader joined). Raft's term and log checks decide, as for any
            // leader; an id a membership change removed, never.
            None => {
                matches!(rpc, RaftRpc::Append(_) | RaftRpc::SnapshotChunk { .. })
                    && !self.sm.read().retired.contains(&from)
            }
        };
        if !known {
            return Err(format!("node {from} is not a member of this cluster"));
        }
        let vote = match rpc {
            RaftRpc::Append(r) => &r.vote,
            RaftRpc::Vote(r) => &r.vote,
            RaftRpc::SnapshotChunk { vote, .. } => vote,
        };
        if vote.leader_id.node_id != from {
            return Err(format!("node {from} speaks for node {}", vote.leader_id.node_id));
        }
        let claimed = vote.leader_id.term;
        if claimed > term.saturating_add(MAX_TERM_LEAD) || claimed > u64::MAX / 2 {
            return Err(format!("term {claimed} is impossibly far ahead of this node's term {term}"));
        }
        if let Some(gate) = rebuild {
            match rpc {
                RaftRpc::Vote(_) => {
                    return Err(format!(
                        "this member is being rebuilt from its peers and votes again once it has applied entry {} \
                         (it is at {})",
                        gate.index,
                        self.sm.applied_index()
                    ))
                }
                _ if claimed < gate.term => {
                    return Err(format!(
                        "this member is being rebuilt and takes entries only from a leader of term {} or later \
                         (this one is of term {claimed})",
                        gate.term
                    ))
                }
                _ => {}
            }
        }
        match rpc {
            RaftRpc::Vote(r) => {
                if !membership.voter_ids().any(|v| v == from) {
                    return Err(format!("node {from} is not a voter"));
                }
                if r.last_log_id.is_some_and(|l| l.leader_id.term > claimed) {
                    return Err("the candidate's last log term is above its own term".into());
                }
            }
            RaftRpc::Append(r) => {
                let Some(mut expect) = r.prev_log_id.map_or(Some(0), |l| l.index.checked_add(1)) else {
                    return Err("the previous log index is impossibly high".into());
                };
                let mut last_term = r.prev_log_id.map_or(0, |l| l.leader_id.term);
                if last_term > claimed {
                    return Err("the previous log term is above the leader's term".into());
                }
                for e in &r.entries {
                    if e.log_id.index != expect {
                        return Err(format!(
                            "entries are not a sequence (index {} where {expect} was due)",
                            e.log_id.index
                        ));
                    }
                    if e.log_id.leader_id.term < last_term || e.log_id.leader_id.term > claimed {
                        return Err(format!("entry {} has an impossible term", e.log_id.index));
                    }
                    expect = expect.saturating_add(1);
                    last_term = e.log_id.leader_id.term;
                }
            }
            RaftRpc::SnapshotChunk { meta, .. } => {
                if meta.last_log_id.is_some_and(|l| l.leader_id.term > claimed) {
                    return Err("the snapshot's last log term is above the leader's term".into());
                }
                if meta.last_log_id.is_none() {
                    return Err("a snapshot without a last log id".into());
                }
            }
        }
        Ok(())
    }

    /// Starts an election now (at the leader's request: it is handing leadership over).
    pub async fn campaign(&self) -> Result<(), String> {
        self.raft.trigger().elect().await.map_err(|e| e.to_string())
    }

    /// From now on this replica never starts an election by itself (it still votes).
    pub fn stop_campaigning(&self) {
        self.raft.runtime_config().elect(false);
    }

    /// Stops Raft; the data dirs stay as they are.
    pub async fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.raft.shutdown().await;
    }
}

/// Publishes [`Leadership`] and stamps quorum acknowledgements from openraft's metrics;
/// reports a stopped Raft core through `on_fatal`.
async fn follow_metrics(
    mut rx: watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    tx: watch::Sender<Leadership>,
    quorum_acked_at: Arc<Mutex<Option<Instant>>>,
    on_fatal: Option<crate::wal::OnFatal>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut leader = None;
    loop {
        let (leadership, acked) = {
            let m = rx.borrow_and_update();
            if let (Err(e), Some(on_fatal)) = (&m.running_state, &on_fatal) {
                on_fatal(&format!("the raft core stopped: {e}"));
                return;
            }
            let own_term_applied = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
            let l = Leadership {
                term: m.current_term,
                leader: m.current_leader,
                is_self: m.state == ServerState::Leader && own_term_applied,
            };
            let acked = m
                .millis_since_quorum_ack
                .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
            (l, acked)
        };
        *quorum_acked_at.lock().unwrap_or_else(|e| e.into_inner()) = acked;
        if leadership.leader.is_some() && leadership.leader != leader {
            metrics.leader_changed();
        }
        leader = leadership.leader.or(leader);
        tx.send_if_modified(|cur| std::mem::replace(cur, leadership) != leadership);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::raft::network::CallError;

    /// A network where every peer is away.
    struct Nowhere;

    impl RaftSender for Nowhere {
        fn send(
            &self,
            _: NodeId,
            _: &Member,
            _: RaftRpc,
            _: Duration,
        ) -> BoxFuture<'static, Result<RaftReply, CallError>> {
            async { Err(CallError::Unreachable("nowhere".into())) }.boxed()
        }
    }

    fn member(id: NodeId) -> Member {
        Member {
            client_url: format!("http://127.0.0.1:{}", 7000 + id),
            peer_url: format!("http://127.0.0.1:{}", 8000 + id),
            incarnation: 0,
        }
    }

    async fn replica(dir: &std::path::Path) -> Replica {
        replica_with(dir, false).await
    }

    async fn replica_with(dir: &std::path::Path, joining: bool) -> Replica {
        let cfg = ReplicaConfig {
            id: 3,
            cluster_name: "test".into(),
            log_dir: dir.join("raft"),
            snapshot_dir: dir.join("snapshot"),
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_every: 1000,
            max_message_bytes: 1 << 20,
            on_fatal: None,
            wal_segment_bytes: 1 << 20,
            initial_members: (1..=3).map(|id| (id, member(id))).collect(),
            joining,
            metrics: Default::default(),
            lease_reads: true,
        };
        Replica::open(&cfg, Arc::new(Nowhere)).await.unwrap()
    }

    fn append(term: u64, leader: NodeId) -> RaftRpc {
        RaftRpc::Append(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: vec![],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(term, leader), 0)),
        })
    }

    fn refused(r: &RaftReply) -> &str {
        match r {
            RaftReply::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_snapshot_larger_than_the_free_disk_is_refused_before_a_byte_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        r.initialize((1..=3).map(|id| (id, member(id))).collect()).await.unwrap();
        let chunk = |total: u64| RaftRpc::SnapshotChunk {
            vote: openraft::Vote::new_committed(1, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 10)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s".into(),
            },
            offset: 0,
            total,
            done: false,
            data: vec![0; 16],
        };
        let why = refused(&r.handle(1, chunk(u64::MAX / 4)).await).to_string();
        assert!(why.contains("bytes free"), "{why}");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("snapshot")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "{names:?}");
        // One that fits is taken.
        assert!(matches!(r.handle(1, chunk(1000)).await, RaftReply::ChunkStored));
        r.shutdown().await;
    }

    #[tokio::test]
    async fn a_rebuilding_member_refuses_votes_strangers_and_stale_leaders() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        // New and not bootstrapped: nobody is a member yet.
        assert!(refused(&r.handle(1, append(5, 1)).await).contains("not a member"));
        r.hold_for_rebuild(Some(RebuildGate { index: 40, term: 5 }));
        // Rebuilding: the initial members may send entries, from term 5 on...
        let vote = openraft::raft::VoteRequest { vote: openraft::Vote::new(9, 1), last_log_id: None };
        assert!(refused(&r.handle(1, RaftRpc::Vote(vote)).await)
            .contains("votes again once it has applied entry 40"));
        assert!(refused(&r.handle(2, append(4, 2)).await).contains("leader of term 5 or later"));
        assert!(refused(&r.handle(7, append(6, 7)).await).contains("not a member"));
        assert!(
            matches!(r.handle(1, append(5, 1)).await, RaftReply::Append(_)),
            "the current leader is heard"
        );
        // Released: votes reach raft again.
        r.hold_for_rebuild(None);
        let vote = openraft::raft::VoteRequest { vote: openraft::Vote::new(9, 1), last_log_id: None };
        assert!(
            !matches!(r.handle(1, RaftRpc::Vote(vote)).await, RaftReply::Refused(ref why) if why.contains("votes again"))
        );
        r.shutdown().await;
    }

    /// A member whose membership is behind the log (members were added while it was away)
    /// hears a leader it does not know yet: Raft's term and log checks decide. It never
    /// takes a vote from one.
    #[tokio::test]
    async fn a_member_behind_on_the_membership_hears_a_leader_that_joined_later() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        r.initialize((1..=3).map(|id| (id, member(id))).collect()).await.unwrap();
        assert!(
            matches!(r.handle(4, append(5, 4)).await, RaftReply::Append(_)),
            "an append from a leader that joined later reaches raft"
        );
        let vote = openraft::raft::VoteRequest { vote: openraft::Vote::new(9, 4), last_log_id: None };
        assert!(refused(&r.handle(4, RaftRpc::Vote(vote)).await).contains("not a member"));
        r.shutdown().await;
    }

    #[tokio::test]
    async fn a_joining_node_hears_the_members_it_was_told_of_before_it_has_a_membership() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica_with(dir.path(), true).await;
        assert!(
            matches!(r.handle(1, append(5, 1)).await, RaftReply::Append(_)),
            "a member's entries reach raft"
        );
        assert!(refused(&r.handle(7, append(5, 7)).await).contains("not a member"));
        let vote = openraft::raft::VoteRequest { vote: openraft::Vote::new(9, 2), last_log_id: None };
        assert!(refused(&r.handle(2, RaftRpc::Vote(vote)).await).contains("not a voter"));
        assert!(!r.applied_removal_of(3), "nothing applied, nobody removed");
        r.shutdown().await;
    }
}
