//! The messages members exchange: one [`PeerRequest`], answered by one [`PeerResponse`].
//! Every request is made on behalf of one member (`from`), which the transport proves.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::raft::{NodeId, RaftReply, RaftRpc};
use crate::store::{Command, Outcome};

/// A call from one member to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    /// A Raft call (append, vote, snapshot).
    Raft(RaftRpc),
    /// A client write that reached a follower, for the leader to check and propose.
    Forward(Command),
    /// Ask the leader for a read index (it confirms its leadership with a quorum first).
    ReadIndex,
    /// Ask the leader to record the caller's client URL and data dir incarnation in the
    /// membership.
    PublishMember { client_url: String, incarnation: u64 },
    /// Asked by a member starting on a new data dir: what does the cluster know of it?
    Probe,
    /// A client's keepalive of a lease, for the leader's lessor; `subject`: only a lease
    /// this subject granted may be kept alive (none: any, auth off or an admin).
    LeaseKeepalive {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    /// A client's read of leases and their remaining time, which only the leader knows.
    LeaseRead(LeaseQuery),
    /// A membership change for the leader to make (an admin's, forwarded by the member
    /// that received it; or a joined learner asking to be promoted).
    MemberChange(MemberChange),
    /// Sent by a node that is not a member yet (to [`JOIN_PATH`]): add me as a learner.
    Join(JoinRequest),
    /// Sent by a node that no longer hears from a leader (to [`JOIN_PATH`], as it may not
    /// be a member any more): was I removed?
    MemberCheck,
    /// From the leader, shutting down, to a member that holds its whole log: campaign now.
    TakeOver,
}

/// Where requests from a node that may not be a member go: [`PeerRequest::Join`] and
/// [`PeerRequest::MemberCheck`] only, with a small body limit.
pub const JOIN_PATH: &str = "/raft/join";

/// Where every other peer request goes.
pub const RPC_PATH: &str = "/raft/rpc";

impl PeerRequest {
    /// The peer route this request goes to.
    pub fn path(&self) -> &'static str {
        match self {
            PeerRequest::Join(_) | PeerRequest::MemberCheck => JOIN_PATH,
            _ => RPC_PATH,
        }
    }
}

/// A membership change, as the leader makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    /// Add a learner. `incarnation`: the joining node's data dir's (0 when an admin adds it).
    Add { id: NodeId, peer_url: String, client_url: String, incarnation: u64 },
    /// Make a learner a voter once it has caught up.
    Promote { id: NodeId },
    /// Remove a voter or a learner (the leader too).
    Remove { id: NodeId },
    /// Move a member to new URLs (each one kept when not given).
    Update { id: NodeId, peer_url: Option<String>, client_url: Option<String> },
}

/// What a joining node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub peer_url: String,
    pub client_url: String,
    /// Its data dir's incarnation: a retried join of the same data dir is told apart from a
    /// wiped member's.
    pub incarnation: u64,
    /// The node is a member that lost its data and is rebuilt from its peers: add nothing,
    /// only tell it the cluster.
    #[serde(default)]
    pub rebuild: bool,
}

/// What the cluster answers a join: who it is and who its members are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub cluster_id: String,
    pub members: std::collections::BTreeMap<NodeId, crate::raft::Member>,
}

/// A member as a membership change left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: NodeId,
    pub peer_url: String,
    pub client_url: String,
    pub voter: bool,
}

/// What a member answers a [`PeerRequest::MemberCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCheckReply {
    pub cluster_id: String,
    /// A committed membership change removed the caller.
    pub removed: bool,
    /// The peer URL the answering member records for the caller (none: not a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
}

/// What a keepalive reports of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimes {
    pub id: u64,
    pub ttl_ms: u64,
    /// Time left before the lease expires if nobody keeps it alive.
    pub remaining_ms: u64,
}

/// A read of the lease table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseQuery {
    /// One lease, with (up to `max_keys` of) its keys.
    One { id: u64, max_keys: usize },
    /// Up to `limit` leases with ids above `after`, in id order (only those `owner`
    /// granted, when given).
    Page {
        after: Option<u64>,
        limit: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
}

/// One lease as a read reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    /// Keys it owns.
    pub key_count: u64,
    /// The first of them, in key order (a page read lists none).
    pub keys: Vec<String>,
    /// The locks and elections it holds or waits for: `(kind, name, owner)`, the first of
    /// them in name order (a page read lists none).
    #[serde(default)]
    pub locks: Vec<(crate::store::Kind, String, String)>,
    /// The subject that granted it (none when client auth was off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What a [`LeaseQuery`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseAnswer {
    One(LeaseInfo),
    Page { leases: Vec<LeaseInfo>, more: bool },
}

/// A leader's read index and the term it confirmed it leads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexReply {
    pub index: u64,
    pub term: u64,
}

/// What a member answers a [`PeerRequest::Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeReply {
    /// The answering member has no state yet (it is new too, or waiting to bootstrap).
    Fresh { cluster_id: String },
    /// The answering member runs. `knows_you`: it has evidence that the caller ran with
    /// data (its membership records the caller's incarnation, or, as leader, it has
    /// replicated entries to the caller).
    Member { cluster_id: String, knows_you: bool },
    /// The answering member is being rebuilt from its peers: it lost its own data, so its
    /// word counts for nothing.
    Rebuilding { cluster_id: String },
}

/// Why a forwarded write or a read-index call failed on the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum PeerError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The outcome of a write is unknown.
    #[error("timed out")]
    Timeout,
    /// The leader refused the request as it would refuse a client's (a bad key, a value
    /// over its limit, the quota); nothing was proposed.
    #[error("refused: {0}")]
    Refused(Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerResponse {
    Raft(RaftReply),
    Forward(Result<Outcome, PeerError>),
    ReadIndex(Result<ReadIndexReply, PeerError>),
    PublishMember(Result<(), PeerError>),
    Probe(ProbeReply),
    LeaseKeepalive(Result<LeaseTimes, PeerError>),
    LeaseRead(Result<LeaseAnswer, PeerError>),
    MemberChange(Result<MemberRecord, PeerError>),
    Join(Result<JoinAnswer, PeerError>),
    MemberCheck(MemberCheckReply),
    TakeOver(Result<(), PeerError>),
}

/// What serves peer requests on a member (the node facade implements it). `from` is the
/// member the transport proved the request comes from.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, req: PeerRequest) -> BoxFuture<'static, PeerResponse>;
}
