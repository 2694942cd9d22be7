//! Linearizable reads: read-index rounds shared by every read that arrived before the
//! round started, confirmed locally on the leader or by asking it from a follower.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{peer_error, Node};
use crate::error::{Error, Result};
use crate::raft::network::{PeerError, PeerRequest, PeerResponse, TransportError};
use crate::raft::state_machine::Applied;

/// Read-index requests waiting for the next quorum round.
#[derive(Default)]
pub(super) struct ReadRounds {
    waiting: Vec<oneshot::Sender<Result<u64>>>,
    running: bool,
}

impl Node {
    /// Waits until this node can serve a linearizable read: a read index confirmed by a
    /// quorum is applied here.
    pub async fn linearize(self: &Arc<Self>) -> Result<()> {
        let deadline = self.deadline();
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.read_rounds().await });
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(Error::Unavailable("this node is shutting down".into())),
            Err(_) => {
                return Err(Error::Unavailable("no quorum confirmed the read within the deadline".into()))
            }
        };
        tokio::time::timeout_at(deadline, self.sm.wait_applied(index)).await.map_err(|_| {
            Error::Unavailable("this node did not catch up with the leader within the deadline".into())
        })?;
        Ok(())
    }

    /// Runs read-index rounds while reads are waiting; each round answers every read that
    /// was waiting when it started.
    async fn read_rounds(self: Arc<Self>) {
        loop {
            let waiting = {
                let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                if r.waiting.is_empty() {
                    r.running = false;
                    return;
                }
                std::mem::take(&mut r.waiting)
            };
            let result = self.read_index_round().await;
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    /// One read-index round: confirms leadership locally, or asks the leader.
    async fn read_index_round(&self) -> Result<u64> {
        let deadline = self.deadline();
        let mut not = None;
        loop {
            let leader = self.wait_leader(deadline, not).await?;
            if leader == self.id {
                match tokio::time::timeout_at(deadline, self.local_read_index()).await {
                    Ok(Err(PeerError::NotLeader { .. })) => {
                        not = Some(self.id);
                        continue;
                    }
                    Ok(r) => return r.map_err(peer_error),
                    Err(_) => {
                        return Err(Error::Unavailable(
                            "no quorum confirmed the read within the deadline".into(),
                        ))
                    }
                }
            }
            let Some(member) = self.member(leader) else {
                not = Some(leader);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match self.transport.call(leader, &member, PeerRequest::ReadIndex, left).await {
                Ok(PeerResponse::ReadIndex(Ok(i))) => return Ok(i),
                Ok(PeerResponse::ReadIndex(Err(PeerError::NotLeader { .. })))
                | Err(TransportError::Unreachable(_)) => {
                    not = Some(leader);
                    if Instant::now() >= deadline {
                        return Err(Error::Unavailable(
                            "the leader could not be reached within the deadline".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(PeerResponse::ReadIndex(Err(e))) => return Err(peer_error(e)),
                Ok(other) => return Err(Error::Internal(format!("unexpected read-index reply {other:?}"))),
                Err(_) => {
                    return Err(Error::Unavailable(
                        "the leader did not confirm the read within the deadline".into(),
                    ))
                }
            }
        }
    }

    /// The leader's read index: its commit index once a quorum confirmed it still leads.
    pub(super) async fn local_read_index(&self) -> std::result::Result<u64, PeerError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(PeerError::NotLeader { leader: f.leader_id })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(PeerError::Unavailable(format!("no quorum: {q}")))
            }
            Err(RaftError::Fatal(e)) => Err(PeerError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Reads the applied state, after a read index for linearizable reads.
    pub async fn read<T>(self: &Arc<Self>, linearizable: bool, f: impl FnOnce(&Applied) -> T) -> Result<T> {
        if linearizable {
            self.linearize().await?;
        }
        let applied = self.sm.read();
        Ok(f(&applied))
    }
}
