//! Cluster status and health on the wire.

use serde::{Deserialize, Serialize};

/// A member in `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberResponse {
    pub id: u64,
    pub client_url: String,
    pub peer_url: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// `POST /v1/cluster/members`: add a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// A whole number, in any JSON spelling of it (`4`, `4.0`).
    #[serde(deserialize_with = "super::whole::u64")]
    pub id: u64,
    pub peer_url: String,
    pub client_url: String,
}

/// `PUT /v1/cluster/members/{id}`: move a member (a URL not given stays as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
}

/// `GET /v1/cluster`: the answering node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    pub cluster_id: String,
    #[serde(default)]
    pub node_id: u64,
    /// The answering node's Palisade version.
    #[serde(default)]
    pub version: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub revision: u64,
    #[serde(default)]
    pub compact_revision: u64,
    #[serde(default)]
    pub applied_index: u64,
    /// Bytes of keys and values held over all versions (what the quota counts).
    #[serde(default)]
    pub store_bytes: u64,
    #[serde(default)]
    pub quota_bytes: u64,
    /// Idempotency keys remembered.
    #[serde(default)]
    pub idempotency_keys: u64,
    /// Leases now, and since the cluster began.
    #[serde(default)]
    pub leases: LeaseStats,
    /// Locks and elections now, and since the cluster began.
    #[serde(default)]
    pub locks: LockStats,
    pub members: Vec<MemberResponse>,
}

/// Lease counters in `GET /v1/cluster` (the same on every member: they are replicated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStats {
    /// Leases that exist now.
    pub alive: u64,
    pub granted: u64,
    /// Ended because nobody kept them alive.
    pub expired: u64,
    /// Ended by a client.
    pub revoked: u64,
}

/// Lock and election counters in `GET /v1/cluster` (replicated, like the lease counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStats {
    /// Locks and elections held or waited for now.
    pub active: u64,
    /// Holders and waiters now.
    pub owners: u64,
    /// Bytes of their names, owners and values (counted by the size quota beside
    /// `store_bytes`).
    pub bytes: u64,
    /// Grants (and leaderships won) since the cluster began...
    pub grants: u64,
    /// ...of which went to an owner that had waited (a hand-off).
    pub handoffs: u64,
    /// Owners that had to wait.
    pub waits: u64,
    /// Holders and waiters removed because their lease ended.
    pub lease_ended: u64,
}

/// `GET /healthz` and `GET /readyz` when all is well: `{"status": "ok"}` / `"ready"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
}
