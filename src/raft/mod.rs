//! openraft glue, and the boundary around it: [`Replica`] is the only way in. Every
//! openraft type stays behind this module; what crosses it is ours ([`Proposal`],
//! [`Outcome`], [`Leadership`], [`RaftRpc`] as an opaque value for the peer layer).
//!
//! - `replica`: propose, read index, leadership, membership, and checked peer RPCs.
//! - `log_store`: openraft's log storage over the write-ahead log.
//! - `state_machine`: openraft's state machine over the pure [`State`], and snapshots.
//! - `network`: the Raft RPCs as values and openraft's network over a [`RaftSender`].
//! - `lease`: when a quorum last acknowledged this leader, for reads without a round.
//!
//! [`Proposal`]: crate::store::Proposal
//! [`Outcome`]: crate::store::Outcome
//! [`State`]: crate::store::State

pub mod backup;
mod lease;
pub mod log_store;
pub mod network;
pub mod replica;
pub mod snapshot_data;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;

pub use backup::Backup;
pub use network::{CallError, RaftReply, RaftRpc, RaftSender};
pub use replica::{
    ChangeError, Leadership, MemberInfo, ProposeError, ReadIndexError, RebuildGate, Replica, ReplicaConfig,
    ReplicaStatus, Role, Stall, StorageHealth,
};
pub use state_machine::Applied;
pub use types::{Member, NodeId};
