//! Error kinds the facade returns to front-ends. No HTTP here: `http::error` maps each
//! kind to a status. Business outcomes (a failed compare) are not errors; they are
//! [`Outcome`](crate::store::Outcome) values.

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Error {
    #[error("{0}")]
    InvalidKey(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("key {0} not found")]
    KeyNotFound(String),
    #[error("lease {0} not found")]
    LeaseNotFound(u64),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("revision {requested} has been compacted (compaction floor {compact_revision})")]
    Compacted { requested: u64, compact_revision: u64 },
    #[error("revision {requested} is in the future (current revision {revision})")]
    FutureRevision { requested: u64, revision: u64 },
    /// This node is serving as many requests as it may; nothing was done.
    #[error("{0}")]
    Overloaded(String),
    /// No leader or no quorum within the deadline; the request did not take effect.
    #[error("{0}")]
    Unavailable(String),
    /// The deadline passed; a write may or may not have taken effect.
    #[error("{0}")]
    Timeout(String),
    /// No token, or one that cannot be verified (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A verified caller without the permission the request needs (403).
    #[error("{0}")]
    PermissionDenied(String),
    /// No such route or method.
    #[error("{0}")]
    NotFound(String),
    /// No member with this id (404).
    #[error("node {0} is not a member of this cluster")]
    MemberNotFound(u64),
    /// A membership change the cluster's state does not allow now (409); nothing changed.
    #[error("{message}")]
    MemberConflict { reason: MemberConflict, message: String },
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A bug or an I/O failure; the detail is logged, never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a membership change conflicts with the cluster's state (each a 409 with its own code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberConflict {
    /// Another membership change is under way (one at a time).
    ChangeInProgress,
    /// The id is a member already.
    MemberExists,
    /// The id belonged to a member that was removed: node ids are never reused.
    IdRetired,
    /// Another member has this peer URL.
    PeerUrlInUse,
    /// The learner's log is `behind` entries behind the leader's (or it did not answer).
    LearnerBehind { behind: u64 },
    /// The member is a voter already.
    AlreadyVoter,
    /// Removing it would leave no voter.
    LastVoter,
}

impl MemberConflict {
    /// The error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            MemberConflict::ChangeInProgress => "membership_change_in_progress",
            MemberConflict::MemberExists => "member_exists",
            MemberConflict::IdRetired => "member_id_retired",
            MemberConflict::PeerUrlInUse => "peer_url_in_use",
            MemberConflict::LearnerBehind { .. } => "learner_behind",
            MemberConflict::AlreadyVoter => "already_voter",
            MemberConflict::LastVoter => "last_voter",
        }
    }
}
