//! Writes: checked against the policy, forwarded to the leader, and on the leader batched
//! with concurrent writes into one proposal (one log entry, one fsync) with a bounded
//! number of proposals in flight. The leader stamps each proposal with its wall clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Node;
use crate::error::Result;
use crate::peer::{PeerError, PeerRequest, PeerResponse};
use crate::raft::ProposeError;
use crate::store::{Command, Outcome, Proposal};

/// Writes waiting to be proposed, and how many proposers are running.
#[derive(Default)]
pub(super) struct Proposals {
    waiting: std::collections::VecDeque<(Command, oneshot::Sender<Result<Outcome, PeerError>>)>,
    running: usize,
}

/// Proposals in flight at once: the leader appends one while the previous replicates.
/// openraft 0.9 fsyncs each proposal inline in its core loop, so more proposers only
/// split the waiting writes into smaller batches (measured: 4 was slower than 1 or 2).
const MAX_PROPOSERS: usize = 2;
/// At most this many commands go into one log entry...
const MAX_BATCH: usize = 512;
/// ...and at most about this many key and value bytes (and a quarter of the peer message
/// limit, so an entry always fits a message).
const MAX_BATCH_BYTES: usize = 4 << 20;

impl Node {
    /// Checks `cmd` against the policy, proposes it (forwarding it to the leader when this
    /// node is a follower) and returns what applying it decided.
    pub async fn write(self: &Arc<Self>, cmd: Command) -> Result<Outcome> {
        self.check_write(&cmd)?;
        self.at_leader(
            || PeerRequest::Forward(cmd.clone()),
            |node, deadline| {
                let cmd = cmd.clone();
                async move { node.propose_as_leader(cmd, deadline).await }
            },
            |resp| match resp {
                PeerResponse::Forward(r) => Some(r),
                _ => None,
            },
            Some("the write"),
        )
        .await
    }

    /// Proposes a checked write on this node as leader, unless its storage is stalled or it
    /// has lost contact with a quorum (then nothing is proposed: 503).
    async fn propose_as_leader(
        self: &Arc<Self>,
        cmd: Command,
        deadline: Instant,
    ) -> std::result::Result<Outcome, PeerError> {
        self.check_storage().map_err(PeerError::Unavailable)?;
        if !self.quorum_contact(deadline).await {
            return Err(PeerError::Unavailable(
                "this leader has not heard from a quorum within an election timeout; nothing was proposed"
                    .into(),
            ));
        }
        self.propose(cmd).await
    }

    /// Whether this leader is in contact with a quorum: its last quorum acknowledgement
    /// is within an election timeout, or (when the cluster was idle, and openraft's ack
    /// clock only moves with replication) a fresh leadership round with a quorum succeeds
    /// before `deadline`. An isolated leader thus refuses a write before proposing it (503,
    /// nothing happened) instead of timing out on it (504, outcome unknown).
    async fn quorum_contact(&self, deadline: Instant) -> bool {
        let fresh = self
            .replica
            .quorum_acked_at()
            .is_some_and(|at| at.elapsed() <= Duration::from_millis(self.cfg.election_timeout_ms));
        if fresh {
            return true;
        }
        match tokio::time::timeout_at(deadline, self.replica.read_index()).await {
            Ok(Ok(_)) => true,
            // Deposed: openraft refuses the proposal itself, and the write goes elsewhere.
            Ok(Err(crate::raft::ReadIndexError::NotLeader { .. })) => true,
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Proposes `cmd` on this node (the leader), batched with the writes that wait
    /// alongside it: one log entry and one fsync for the lot.
    pub(super) async fn propose(self: &Arc<Self>, cmd: Command) -> std::result::Result<Outcome, PeerError> {
        if self.is_handing_over() {
            return Err(PeerError::Unavailable(
                "this leader is shutting down and handing its leadership over; nothing was proposed, retry"
                    .into(),
            ));
        }
        // The leader's lease clock on a grant.
        let cmd = self.stamp_lease_clock(cmd).await?;
        // The leader's own retention, whatever the member that took the request has set.
        let cmd = match cmd {
            Command::Idempotent { key, fingerprint, cmd, .. } => {
                Command::Idempotent { key, fingerprint, retain: self.retention(), cmd }
            }
            cmd => cmd,
        };
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.proposals.lock().unwrap_or_else(|e| e.into_inner());
            p.waiting.push_back((cmd, tx));
            let start = p.running < MAX_PROPOSERS;
            if start {
                p.running += 1;
            }
            start
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.run_proposer().await });
        }
        // A proposer that went away may have proposed the write: outcome unknown.
        rx.await.unwrap_or(Err(PeerError::Timeout))
    }

    /// Proposers running now (each proposing one batch, or about to).
    pub(super) fn proposals_running(&self) -> usize {
        self.proposals.lock().unwrap_or_else(|e| e.into_inner()).running
    }

    /// Proposes batches while writes are waiting.
    async fn run_proposer(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut p = self.proposals.lock().unwrap_or_else(|e| e.into_inner());
                // A write whose caller gave up (its deadline passed and it was told the
                // outcome is unknown) is not proposed any more: nothing more to wait for.
                p.waiting.retain(|(_, tx)| !tx.is_closed());
                if self.is_handing_over() {
                    // Nothing more is proposed here (see `shutdown`): the writes still
                    // waiting are refused, unproposed, and retried at the next leader.
                    let refused = PeerError::Unavailable(
                        "this leader is shutting down and handing its leadership over; nothing was proposed, retry"
                            .into(),
                    );
                    p.waiting.drain(..).for_each(|(_, tx)| drop(tx.send(Err(refused.clone()))));
                }
                if p.waiting.is_empty() {
                    p.running -= 1;
                    return;
                }
                let max_bytes = MAX_BATCH_BYTES.min(self.cfg.max_peer_message_bytes / 4);
                let mut n = 0;
                let mut bytes = 0;
                for (cmd, _) in p.waiting.iter().take(MAX_BATCH) {
                    bytes += cmd.data_bytes();
                    if n > 0 && bytes > max_bytes {
                        break;
                    }
                    n += 1;
                }
                p.waiting.drain(..n).collect()
            };
            let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let payload =
                if single { cmds.into_iter().next().expect("one command") } else { Command::Batch { cmds } };
            let t0 = std::time::Instant::now();
            let n = waiters.len();
            let result = self.replica.propose(Proposal::new(payload, crate::clock::wall_clock_ms())).await;
            tracing::debug!(batch = n, micros = t0.elapsed().as_micros() as u64, "proposal decided");
            self.metrics.proposal(result.is_ok());
            let result = match result {
                Ok(outcome) => Ok(outcome),
                Err(ProposeError::NotLeader { leader }) => Err(PeerError::NotLeader { leader }),
                // The entry may already be replicated and commit under the next leader:
                // the outcome is unknown, never "did not happen".
                Err(ProposeError::Unknown(why)) => {
                    tracing::warn!(%why, "a proposal's outcome is unknown");
                    Err(PeerError::Timeout)
                }
            };
            match result {
                Ok(Outcome::Batch { outcomes, .. }) if !single && outcomes.len() == waiters.len() => {
                    for (w, o) in waiters.into_iter().zip(outcomes) {
                        let _ = w.send(Ok(o));
                    }
                }
                Ok(o) if single => {
                    let _ = waiters.into_iter().next().expect("one waiter").send(Ok(o));
                }
                Ok(o) => {
                    let e = PeerError::Internal(format!("a batch of {} was decided as {o:?}", waiters.len()));
                    waiters.into_iter().for_each(|w| drop(w.send(Err(e.clone()))));
                }
                Err(e) => waiters.into_iter().for_each(|w| drop(w.send(Err(e.clone())))),
            }
        }
    }
}
