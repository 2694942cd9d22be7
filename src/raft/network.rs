//! The Raft RPCs as values, and openraft's network over whatever carries them.
//!
//! [`RaftRpc`] and [`RaftReply`] are the three calls Raft makes between members (append,
//! vote, snapshot) in a form the peer protocol can carry without knowing openraft. They
//! travel through a [`RaftSender`], which the peer layer implements (HTTP between
//! processes, or a test network). Failures that should back off map to `Unreachable`
//! (openraft retries plain network errors at once); a call never waits longer than the
//! timeout it is given.

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

use super::types::*;

/// A Raft call from one member to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot (openraft's `full_snapshot`).
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "crate::store::bytes_b64")]
        data: Vec<u8>,
    },
}

/// The answer to a [`RaftRpc`]. `Refused` is this node's own refusal of a call it will not
/// hand to Raft (a sender that is not a member, an impossible term, a damaged snapshot).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    Refused(String),
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request certainly did not reach the peer (no connection, link cut).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have reached the peer (reset mid-call, bad answer).
    #[error("peer call failed: {0}")]
    Failed(String),
    #[error("peer call timed out")]
    Timeout,
}

/// Carries Raft calls to other members (the peer layer implements it).
pub trait RaftSender: Send + Sync + 'static {
    fn send(
        &self,
        target: NodeId,
        member: &Member,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftReply, CallError>>;
}

/// openraft's network factory: one client per target member.
#[derive(Clone)]
pub(crate) struct Network {
    pub sender: Arc<dyn RaftSender>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient { target, member: node.clone(), sender: self.sender.clone() }
    }
}

/// openraft's connection to one member.
pub(crate) struct PeerClient {
    target: NodeId,
    member: Member,
    sender: Arc<dyn RaftSender>,
}

fn unreachable<E: std::error::Error>(e: CallError) -> RPCError<NodeId, Member, E> {
    match e {
        CallError::Unreachable(m) | CallError::Failed(m) => {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m)))
        }
        CallError::Timeout => RPCError::Network(NetworkError::new(&std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timeout",
        ))),
    }
}

/// A reply of the wrong kind, or a refusal: back off as from an unreachable peer.
fn refused<E: std::error::Error>(r: &RaftReply) -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(match r {
        RaftReply::Refused(why) => format!("the peer refused the call: {why}"),
        other => format!("unexpected peer response {other:?}"),
    })))
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
            .sender
            .send(self.target, &self.member, RaftRpc::Append(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?;
        match resp {
            RaftReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(refused(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let resp = self
            .sender
            .send(self.target, &self.member, RaftRpc::Vote(rpc), option.hard_ttl())
            .await
            .map_err(unreachable)?;
        match resp {
            RaftReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(refused(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let rpc = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        let call = self.sender.send(self.target, &self.member, rpc, SNAPSHOT_TIMEOUT);
        let resp = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match resp {
            Ok(RaftReply::Snapshot(Ok(r))) => Ok(r),
            Ok(RaftReply::Snapshot(Err(fatal))) => {
                Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
            }
            Ok(other) => Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "{other:?}"
            ))))),
            Err(CallError::Unreachable(m) | CallError::Failed(m)) => {
                Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(m))))
            }
            Err(CallError::Timeout) => Err(StreamingError::Network(NetworkError::new(&std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "snapshot transfer timed out",
            )))),
        }
    }
}
