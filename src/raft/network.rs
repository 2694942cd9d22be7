//! The Raft RPCs as values, and openraft's network over whatever carries them.
//!
//! [`RaftRpc`] and [`RaftReply`] are the calls Raft makes between members (append, vote,
//! snapshot) in a form the peer protocol can carry without knowing openraft. They travel
//! through a [`RaftSender`], which the peer layer implements (HTTP between processes, or a
//! test network). Failures that should back off map to `Unreachable` (openraft retries
//! plain network errors at once); a call never waits longer than the timeout it is given.
//!
//! Every message stays under the peer message limit: an append that would pass it is
//! refused before sending with openraft's `PayloadTooLarge` and a hint of how many entries
//! fit (openraft then sends fewer), and a snapshot travels as a sequence of chunks of at
//! most [`SNAPSHOT_CHUNK_BYTES`], read from the snapshot file one at a time, that the
//! receiver appends to a file before installing it: a transfer holds one chunk in memory
//! on either side, whatever the size of the snapshot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::lease::LeaseClock;
use super::log_store::APPEND_BYTES;
use super::types::*;

/// A Raft call from one member to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// Part of a snapshot (openraft's `full_snapshot`, sent in order): `data` goes at
    /// `offset`; with `done` the receiver installs the `total` bytes it assembled.
    SnapshotChunk {
        vote: Vote,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
        done: bool,
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
    /// The answer to the last chunk of a snapshot.
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// A chunk before the last was stored.
    ChunkStored,
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
    /// The largest message a peer accepts (bytes).
    pub max_message_bytes: usize,
    /// Where acknowledged appends are timed, for the leader's read lease.
    pub lease: Arc<LeaseClock>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            member: node.clone(),
            sender: self.sender.clone(),
            max_message_bytes: self.max_message_bytes,
            append_budget: APPEND_BYTES,
            in_flight: None,
            lease: self.lease.clone(),
        }
    }
}

/// openraft's connection to one member.
pub(crate) struct PeerClient {
    target: NodeId,
    member: Member,
    sender: Arc<dyn RaftSender>,
    max_message_bytes: usize,
    /// The most entry bytes (as sent) the next AppendEntries may carry. openraft gives an
    /// AppendEntries one heartbeat interval and then sends the same batch again: on a slow
    /// link or a loaded machine a batch that cannot make it in time would be retried for
    /// ever, and a follower behind by big entries would never catch up. So a batch cut off
    /// halves the budget (down to [`MIN_APPEND_BYTES`]), and an answered one that used at
    /// least half of it doubles it again (up to [`APPEND_BYTES`]).
    append_budget: usize,
    /// The entry bytes of the AppendEntries under way. Still set when the next one starts:
    /// the previous one was dropped by openraft's timeout before it was answered.
    in_flight: Option<usize>,
    lease: Arc<LeaseClock>,
}

/// The smallest budget for the entries of one AppendEntries (one entry always goes).
const MIN_APPEND_BYTES: usize = 16 << 10;

impl PeerClient {
    /// Halves the budget after an AppendEntries of `bytes` that was cut off.
    fn cut_off(&mut self, bytes: usize) {
        let budget = (bytes / 2).clamp(MIN_APPEND_BYTES, APPEND_BYTES).min(self.append_budget);
        if budget < self.append_budget {
            tracing::debug!(
                target = self.target,
                bytes,
                budget,
                "an AppendEntries was cut off: sending less"
            );
        }
        self.append_budget = budget;
    }
}

/// Room in a message for everything but the entries or the snapshot bytes.
const ENVELOPE_BYTES: usize = 64 << 10;

/// An upper estimate of an entry's size on the wire (JSON, values in base64).
fn wire_bytes(e: &Entry) -> usize {
    use openraft::EntryPayload;
    let payload = match &e.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(p) => p.cmd.data_bytes() * 4 / 3 + 64 * p.cmd.count(),
        EntryPayload::Membership(m) => 256 * m.nodes().count(),
    };
    256 + payload
}

/// How many of `entries`, from the first, fit in `budget` bytes (at least one).
pub(crate) fn entries_that_fit<E: std::borrow::Borrow<Entry>>(entries: &[E], budget: usize) -> usize {
    let mut used = 0;
    let mut n = 0;
    for e in entries {
        used += wire_bytes(e.borrow());
        if n > 0 && used > budget {
            break;
        }
        n += 1;
    }
    n
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

/// The most snapshot bytes in one chunk (less when the peer message limit is smaller).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Time allowed for one snapshot chunk (the last one includes installing the snapshot).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        if let Some(bytes) = self.in_flight.take() {
            self.cut_off(bytes);
        }
        let budget = self.append_budget.min(self.max_message_bytes.saturating_sub(ENVELOPE_BYTES));
        let fit = entries_that_fit(&rpc.entries, budget);
        if fit < rpc.entries.len() {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
        }
        let bytes: usize = rpc.entries.iter().map(wire_bytes).sum();
        self.in_flight = (bytes > 0).then_some(bytes);
        let vote = rpc.vote;
        // Before the message leaves: a follower may act on this commit index at once.
        self.lease.sending(&vote, rpc.leader_commit.map_or(0, |c| c.index));
        let sent_at = tokio::time::Instant::now();
        let sent = self.sender.send(self.target, &self.member, RaftRpc::Append(rpc), option.hard_ttl()).await;
        self.in_flight = None;
        match &sent {
            Err(CallError::Timeout) if bytes > 0 => self.cut_off(bytes),
            Ok(_) if bytes * 2 >= self.append_budget => {
                self.append_budget = (self.append_budget * 2).min(APPEND_BYTES);
            }
            _ => {}
        }
        match sent.map_err(unreachable)? {
            RaftReply::Append(r) => {
                // The follower took this leader's vote, whatever it said of the entries.
                if let Ok(
                    AppendEntriesResponse::Success
                    | AppendEntriesResponse::PartialSuccess(_)
                    | AppendEntriesResponse::Conflict,
                ) = &r
                {
                    self.lease.acked(self.target, &vote, sent_at);
                }
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
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
        let data = std::sync::Arc::new(*snapshot.snapshot);
        let meta = snapshot.meta;
        let total = data.len();
        // Base64 takes 4 bytes for 3.
        let chunk = (self.max_message_bytes.saturating_sub(ENVELOPE_BYTES) / 4 * 3)
            .clamp(1, SNAPSHOT_CHUNK_BYTES) as u64;
        let send_all = async {
            let mut offset = 0u64;
            loop {
                let end = (offset + chunk).min(total);
                let done = end == total;
                let bytes = {
                    let data = data.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; (end - offset) as usize];
                        match data.read_at(&mut buf, offset) {
                            Ok(n) if n == buf.len() => Ok(buf),
                            Ok(n) => Err(format!(
                                "the snapshot file ends at {} of {total} bytes",
                                offset + n as u64
                            )),
                            Err(e) => Err(format!("reading the snapshot file: {e}")),
                        }
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                };
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(why) => {
                        tracing::warn!(target = self.target, error = %why, "cannot send a snapshot");
                        return Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(
                            why,
                        ))));
                    }
                };
                let rpc =
                    RaftRpc::SnapshotChunk { vote, meta: meta.clone(), offset, total, done, data: bytes };
                let reply = self.sender.send(self.target, &self.member, rpc, CHUNK_TIMEOUT).await;
                match reply {
                    Ok(RaftReply::ChunkStored) if !done => offset = end,
                    Ok(RaftReply::Snapshot(Ok(r))) if done => return Ok(r),
                    Ok(RaftReply::Snapshot(Err(fatal))) => {
                        return Err(StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
                    }
                    Ok(other) => {
                        return Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(
                            format!("snapshot chunk at {offset}: {other:?}"),
                        ))))
                    }
                    Err(CallError::Unreachable(m) | CallError::Failed(m)) => {
                        return Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(m))))
                    }
                    Err(CallError::Timeout) => {
                        return Err(StreamingError::Network(NetworkError::new(&std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "a snapshot chunk timed out",
                        ))))
                    }
                }
            }
        };
        tokio::select! {
            r = send_all => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

#[cfg(test)]
mod append_budget_tests {
    use super::*;
    use crate::store::{Command, Proposal};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    /// Answers an AppendEntries at once when its entries are at most `fast` bytes, and
    /// never (until dropped) when they are more: a link too slow for big batches.
    struct SlowForBig {
        fast: usize,
    }

    impl RaftSender for SlowForBig {
        fn send(
            &self,
            _: NodeId,
            _: &Member,
            rpc: RaftRpc,
            _: Duration,
        ) -> BoxFuture<'static, Result<RaftReply, CallError>> {
            let RaftRpc::Append(rpc) = rpc else { unreachable!() };
            let bytes: usize = rpc.entries.iter().map(wire_bytes).sum();
            let fast = bytes <= self.fast;
            Box::pin(async move {
                if !fast {
                    std::future::pending::<()>().await;
                }
                Ok(RaftReply::Append(Ok(AppendEntriesResponse::Success)))
            })
        }
    }

    fn entries(n: u64, size: usize) -> Vec<Entry> {
        (1..=n)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Proposal::new(
                    Command::Put {
                        lease: None,
                        sequential: false,
                        key: format!("/k/{i}"),
                        value: vec![7; size],
                        cond: Default::default(),
                        prev_kv: false,
                    },
                    0,
                )),
            })
            .collect()
    }

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[tokio::test]
    async fn batches_cut_off_by_the_timeout_shrink_until_they_get_through_then_grow_back() {
        let mut client = PeerClient {
            target: 2,
            member: Member {
                peer_url: "http://127.0.0.1:1".into(),
                client_url: String::new(),
                incarnation: 0,
            },
            sender: Arc::new(SlowForBig { fast: 100 << 10 }),
            max_message_bytes: 16 << 20,
            append_budget: APPEND_BYTES,
            in_flight: None,
            lease: Default::default(),
        };
        let option = || RPCOption::new(Duration::from_millis(50));
        // 64 entries of 8 KiB: about 700 KB as sent, more than the link takes in time.
        let all = entries(64, 8 << 10);
        let mut sent = all.len();
        let mut through = false;
        for _ in 0..10 {
            let call = client.append_entries(request(all[..sent].to_vec()), option());
            match tokio::time::timeout(Duration::from_millis(50), call).await {
                // Cut off: openraft drops the call and sends the same batch again.
                Err(_) => {}
                Ok(Err(RPCError::PayloadTooLarge(hint))) => sent = hint.entries_hint() as usize,
                Ok(Ok(_)) => {
                    through = true;
                    break;
                }
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        assert!(through, "a smaller batch got through: {sent} entries");
        let bytes: usize = all[..sent].iter().map(wire_bytes).sum();
        assert!(sent < all.len() && bytes <= 100 << 10, "{sent} entries, {bytes} bytes");
        // Answered batches that use the budget grow it back, up to the cap.
        let small = entries(4, 8 << 10);
        let before = client.append_budget;
        for _ in 0..8 {
            let fit = entries_that_fit(&small, client.append_budget);
            client.append_entries(request(small[..fit].to_vec()), option()).await.unwrap();
        }
        assert!(client.append_budget >= before, "{} {before}", client.append_budget);
        assert!(client.append_budget <= APPEND_BYTES);
    }
}
