//! How members talk to each other: the peer protocol ([`PeerRequest`] / [`PeerResponse`]),
//! the [`Transport`] that carries it (HTTP between processes; tests plug in a faulty
//! in-process one), and the proof every peer request carries ([`PeerKey`]).
//!
//! Refused peer traffic is logged on both sides, rate-limited (`refusals`).
//!
//! Nothing here decides anything: the node facade serves the requests ([`PeerHandler`])
//! and the Raft replica checks the Raft calls. This layer only moves bytes, signs them
//! and checks the signature.

mod auth;
mod protocol;
mod refusals;
mod transport;

pub use auth::{
    PeerAuthError, PeerKey, Reload, ReplayGuard, Verified, MAX_SECRETS, RESPONSE_SIGNATURE_HEADER,
    SIGNATURE_HEADERS,
};
pub use protocol::{
    JoinAnswer, JoinRequest, LeaseAnswer, LeaseInfo, LeaseQuery, LeaseTimes, MemberChange, MemberCheckReply,
    MemberRecord, PeerError, PeerHandler, PeerRequest, PeerResponse, ProbeReply, ReadIndexReply, JOIN_PATH,
    RPC_PATH,
};
pub(crate) use refusals::refused_request;
pub use transport::{HttpTransport, RaftOverPeers, Transport};

pub use crate::raft::CallError as TransportError;
