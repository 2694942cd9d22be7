//! The openraft type configuration: what the log carries and how members are addressed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::{Outcome, Proposal};

/// A cluster member's addresses, replicated in the Raft membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Base URL of the member's client API (`http://host:7379`).
    pub client_url: String,
    /// Base URL of the member's peer (Raft) listener (`http://host:7380`).
    pub peer_url: String,
    /// A random number the member's data dir drew when it was created, published by the
    /// member once it runs (0: not yet). A new data dir draws a new one, so the cluster
    /// can tell a member that lost its disk from one that never had data.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} client={}", self.peer_url, self.client_url)
    }
}

openraft::declare_raft_types!(
    /// Palisade's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
