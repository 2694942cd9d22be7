//! Leaving gracefully: once the process is told to stop, this node reports not ready,
//! and, once its client requests are done, a leader hands its leadership to a member that
//! holds its whole log, so the cluster has a leader again within a round trip instead of
//! an election timeout.
//!
//! Invariants: from the start of a hand-over this leader proposes nothing more (a write
//! gets 503 and is retried elsewhere), so its log stops growing and a follower can hold
//! all of it; leadership is offered only to a voter whose replicated log reaches this
//! leader's last entry (openraft grants a vote only to a candidate whose log is at least as
//! new, so a stale member could not win anyway); a member campaigns at another's request
//! only when the request comes from the leader it follows; the hand-over is bounded (four
//! election timeouts, at least 3 s), and failing it costs only the ordinary election.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::peer::{PeerError, PeerRequest, PeerResponse};
use crate::raft::NodeId;

impl Node {
    /// From now on this node reports not ready (`/readyz`) and never campaigns: it is
    /// shutting down (a member on its way out must not become the leader).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.replica.stop_campaigning();
    }

    /// Whether [`Node::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Whether this leader is handing its leadership over (it proposes nothing more).
    pub(super) fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Relaxed)
    }

    /// As leader, stops proposing, asks the voter whose log is complete to campaign, and
    /// waits until leadership has moved (bounded). Does nothing on a follower.
    pub async fn hand_over_leadership(self: &Arc<Self>) {
        let bound = Duration::from_millis((4 * self.cfg.election_timeout_ms).max(3_000));
        let give_up = Instant::now() + bound;
        let mut leadership = self.replica.leadership();
        if leadership.borrow().leader != Some(self.id) {
            return;
        }
        if !self.replica.status().members.iter().any(|m| m.voter && m.id != self.id) {
            // The only voter: nobody to hand over to.
            return;
        }
        self.handing_over.store(true, Ordering::Relaxed);
        // The member asked to campaign may win within this leader's read lease.
        self.replica.end_lease_reads();
        // A membership change under way goes in first (new ones are refused from now on).
        let _ = tokio::time::timeout_at(give_up, self.member_change.lock()).await;
        // The proposals already on their way go in first: the successor must hold them too.
        while self.proposals_running() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while Instant::now() < give_up {
            if leadership.borrow().leader != Some(self.id) {
                return;
            }
            let Some(to) = self.successor() else {
                // Nobody has the whole log yet: the next heartbeat carries it.
                tokio::time::sleep(Duration::from_millis(self.cfg.heartbeat_ms)).await;
                continue;
            };
            let Some(member) = self.member(to) else { return };
            let left = give_up.saturating_duration_since(Instant::now());
            match self.transport.call(to, &member, PeerRequest::TakeOver, left).await {
                Ok(PeerResponse::TakeOver(Ok(()))) => {
                    let moved = tokio::time::timeout_at(
                        give_up,
                        leadership.wait_for(|l| l.leader.is_some_and(|l| l != self.id)),
                    )
                    .await;
                    if let Ok(Ok(l)) = moved {
                        tracing::info!(
                            asked = to,
                            leader = l.leader,
                            term = l.term,
                            "handed leadership over"
                        );
                        return;
                    }
                }
                Ok(other) => tracing::debug!(to, ?other, "a leadership hand-over was declined"),
                Err(e) => tracing::debug!(to, %e, "a leadership hand-over failed"),
            }
            tokio::time::sleep(Duration::from_millis(self.cfg.heartbeat_ms)).await;
        }
        tracing::info!("leadership was not handed over in time; the cluster elects a leader as usual");
    }

    /// The voter (not this node) whose replicated log reaches this leader's last entry,
    /// the one with the lowest id if several do.
    fn successor(&self) -> Option<NodeId> {
        let s = self.replica.status();
        s.members
            .iter()
            .filter(|m| m.voter && m.id != self.id)
            .find(|m| s.matched.get(&m.id).copied().flatten().is_some_and(|i| i >= s.last_log_index))
            .map(|m| m.id)
    }

    /// Serves the leader's [`PeerRequest::TakeOver`]: campaign now.
    pub(super) async fn take_over(&self, from: NodeId) -> Result<(), PeerError> {
        let leader = self.replica.leadership().borrow().leader;
        if leader != Some(from) {
            return Err(PeerError::Unavailable(format!(
                "node {from} is not the leader this node follows ({leader:?})"
            )));
        }
        if self.is_shutting_down() {
            return Err(PeerError::Unavailable("this node is shutting down too".into()));
        }
        self.replica.campaign().await.map_err(PeerError::Unavailable)
    }
}
