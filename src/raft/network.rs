//! Peer RPCs: the messages members exchange, and the openraft network over a transport.
//!
//! Every peer call is one [`PeerRequest`] answered by one [`PeerResponse`]. The transport
//! is HTTP (`POST {peer_url}/raft/rpc`, JSON) between processes, or the in-process
//! [`SimNet`](super::sim_network::SimNet) whose links can be cut, made lossy or slow.
//! Failures that should back off map to `Unreachable` (openraft retries plain network
//! errors at once); a call never waits longer than the timeout it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::sim_network::SimNet;
use super::types::*;
use crate::store::{Command, Outcome};

/// A call from one member to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "crate::store::bytes_b64")]
        data: Vec<u8>,
    },
    /// A client write that reached a follower, for the leader to propose.
    Forward(Command),
    /// Ask the leader for a read index (it confirms its leadership with a quorum first).
    ReadIndex,
    /// Ask the leader to record a member's client URL in the membership config.
    SetClientUrl {
        id: NodeId,
        client_url: String,
    },
}

/// Why a forwarded write or a read-index call failed on the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum PeerError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timed out")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    Forward(Result<Outcome, PeerError>),
    ReadIndex(Result<u64, PeerError>),
    SetClientUrl(Result<(), PeerError>),
}

/// What serves peer requests on a member (the node facade implements it).
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(&self, req: PeerRequest) -> BoxFuture<'static, PeerResponse>;
}

/// Why a peer call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The request certainly did not reach the peer (no connection, link cut).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have reached the peer (reset mid-call, bad answer).
    #[error("peer call failed: {0}")]
    Failed(String),
    #[error("peer call timed out")]
    Timeout,
}

/// How peer calls travel.
#[derive(Clone)]
pub enum Transport {
    /// HTTP between processes.
    Http(reqwest::Client),
    /// The in-process simulated network; `from` is this member.
    Sim { net: Arc<SimNet>, from: NodeId },
}

impl Transport {
    pub fn http() -> Transport {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client builds");
        Transport::Http(client)
    }

    /// Sends `req` to member `target` at `member` and waits at most `timeout`.
    pub async fn call(
        &self,
        target: NodeId,
        member: &Member,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        match self {
            Transport::Http(client) => {
                let url = format!("{}/raft/rpc", member.peer_url.trim_end_matches('/'));
                let body =
                    serde_json::to_vec(&req).map_err(|e| TransportError::Unreachable(e.to_string()))?;
                let fut = async {
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| {
                            if e.is_connect() {
                                TransportError::Unreachable(e.to_string())
                            } else {
                                TransportError::Failed(e.to_string())
                            }
                        })?;
                    if !resp.status().is_success() {
                        return Err(TransportError::Failed(format!("{url}: HTTP {}", resp.status())));
                    }
                    let bytes = resp.bytes().await.map_err(|e| TransportError::Failed(e.to_string()))?;
                    serde_json::from_slice(&bytes).map_err(|e| TransportError::Failed(e.to_string()))
                };
                tokio::time::timeout(timeout, fut).await.map_err(|_| TransportError::Timeout)?
            }
            Transport::Sim { net, from } => net.call(*from, target, req, timeout).await,
        }
    }
}

/// openraft's network factory: one client per target member.
#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient { target, member: node.clone(), transport: self.transport.clone() }
    }
}

/// openraft's connection to one member.
pub struct PeerClient {
    target: NodeId,
    member: Member,
    transport: Transport,
}

fn unreachable<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, Member, E> {
    match e {
        TransportError::Unreachable(m) | TransportError::Failed(m) => {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m)))
        }
        TransportError::Timeout => RPCError::Network(NetworkError::new(&std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timeout",
        ))),
    }
}

fn unexpected<E: std::error::Error>(r: &PeerResponse) -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!("unexpected peer response {r:?}"))))
}

/// Time allowed for a whole snapshot transfer.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let resp = self
            .transport
            .call(self.target, &self.member, PeerRequest::Append(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?;
        match resp {
            PeerResponse::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let resp = self
            .transport
            .call(self.target, &self.member, PeerRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?;
        match resp {
            PeerResponse::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let req = PeerRequest::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        let call = self.transport.call(self.target, &self.member, req, SNAPSHOT_TIMEOUT);
        let resp = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match resp {
            Ok(PeerResponse::Snapshot(Ok(r))) => Ok(r),
            Ok(PeerResponse::Snapshot(Err(fatal))) => {
                Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
            }
            Ok(other) => Err(StreamingError::Network(NetworkError::new(&std::io::Error::other(format!(
                "unexpected peer response {other:?}"
            ))))),
            Err(TransportError::Unreachable(m) | TransportError::Failed(m)) => {
                Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(m))))
            }
            Err(TransportError::Timeout) => Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::new(std::io::ErrorKind::TimedOut, "snapshot transfer timed out"),
            ))),
        }
    }
}
