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
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A bug or an I/O failure; the detail is logged, never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
