//! Bootstrapping a member that starts on a new data dir, without ever letting a member
//! that lost its disk rejoin as itself.
//!
//! A member that lost its data must not vote or acknowledge entries under its old id: the
//! cluster counted it in quorums, so with its votes a candidate missing acknowledged
//! writes could win. A new data dir cannot tell by itself whether it is a new member of a
//! new cluster, a late start of one, or a replaced disk; so before it bootstraps it asks
//! the other members ([`PeerRequest::Probe`]). Every data dir draws a random incarnation,
//! which a running member publishes into the replicated membership; a member that finds
//! its id there with an incarnation (or whose leader has replicated entries to it) is a
//! replaced disk. The decision, for a cluster of `n` whose quorum is `q = n/2 + 1`:
//! - any member knows this node ran with data: refuse, and stop the node with a message
//!   saying how to bring it back;
//! - more than `n - q` of the *other* members answered, and none of them knows this node:
//!   go on. Any write this node could have helped commit sits on a quorum, so on at least
//!   `q - 1` others, and at least one of those answered; since logs agree on committed
//!   entries, that member also holds this node's published incarnation (or, as leader,
//!   has replicated to it) and would have said so. This covers a new cluster (the others
//!   answer that they have no data) and a member that starts late alike. This node never
//!   counts itself: an empty data dir may be a wiped one. (Left open: entries this node
//!   acknowledged in the moments before its incarnation was published, under a leader
//!   that has since changed.)
//! - otherwise wait (an unreachable member may hold the record).
//!
//! Until it bootstraps, the node's Raft has no membership, so it refuses every Raft call
//! (see `Replica::handle`) and only answers probes.
//!
//! Rebuilding (`--rebuild-from-peers`, the explicit step after a lost or damaged disk): a
//! member the cluster knows may start on an empty data dir if it first learns the
//! cluster's commit index and the term of the leader that confirmed it (a read index).
//! Until it has applied that index it neither votes nor campaigns, and it takes entries
//! only from a leader of that term or later: its lost vote would have refused an older
//! leader, which must not count it now. It bootstraps nothing itself; the leader sends it
//! the log (or a snapshot) from the start. Once caught up it holds every entry that was
//! committed before it lost its data, and counting it again is safe. The gate is kept in
//! the identity file, so a restart during the rebuild keeps holding it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{identity, Node};
use crate::peer::{PeerError, PeerRequest, PeerResponse, ProbeReply, ReadIndexReply};
use crate::raft::NodeId;
use crate::raft::RebuildGate;

/// What a round of probes decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Proceed,
    Refuse(String),
    Wait(String),
}

/// Decides from the answers of the other members (`None`: no answer) of a cluster of `size`.
pub(super) fn decide(
    me: NodeId,
    cluster_id: &str,
    size: usize,
    answers: &[(NodeId, Option<ProbeReply>)],
) -> Decision {
    for (id, answer) in answers {
        if let Some(ProbeReply::Member { cluster_id: c, knows_you: true, .. }) = answer {
            if c == cluster_id {
                return Decision::Refuse(format!(
                    "node {me} starts on a new data dir, but the cluster (node {id}) records that node {me} ran \
                     with data before: its disk was replaced or wiped. Rejoining as node {me} without that data \
                     could lose acknowledged writes, so this node stops. If the old data dir still exists, restart \
                     with it. Otherwise rebuild node {me} from its peers: start it again on this empty data dir \
                     with --rebuild-from-peers (it rejoins, and votes again only once it has caught up; see \
                     README, \"Replacing a failed member's disk\")"
                ));
            }
        }
    }
    if size <= 1 {
        return Decision::Proceed;
    }
    let mut answered = 0;
    let mut silent = Vec::new();
    for (id, answer) in answers {
        match answer {
            None | Some(ProbeReply::Rebuilding { .. }) => silent.push(*id),
            Some(ProbeReply::Fresh { cluster_id: c } | ProbeReply::Member { cluster_id: c, .. }) if c != cluster_id => {
                return Decision::Wait(format!(
                    "node {id} belongs to another cluster ({c}, this node's is {cluster_id}): check --initial-cluster"
                ))
            }
            Some(_) => answered += 1,
        }
    }
    let quorum = size / 2 + 1;
    if answered > size - quorum {
        return Decision::Proceed;
    }
    Decision::Wait(format!(
        "this node starts on a new data dir and waits for members {silent:?} to confirm it is new to the cluster"
    ))
}

impl Node {
    /// Probes the other members until the decision is made, then bootstraps (or stops the
    /// node). Runs as a task; ends early when the node is dropped.
    pub(super) async fn bootstrap(node: Weak<Node>) {
        let mut last_log: Option<Instant> = None;
        loop {
            let Some(n) = node.upgrade() else { return };
            let decision = n.probe_round().await;
            match decision {
                Decision::Proceed => {
                    if let Err(e) = n.finish_bootstrap().await {
                        n.fail(format!("bootstrapping failed: {e:#}"));
                    }
                    return;
                }
                Decision::Refuse(_) if n.cfg.rebuild_from_peers => match n.begin_rebuild().await {
                    Ok(()) => return,
                    Err(why) => {
                        *n.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                            tracing::warn!("{why}");
                            last_log = Some(Instant::now());
                        }
                    }
                },
                Decision::Refuse(why) => {
                    n.fail(why);
                    return;
                }
                Decision::Wait(why) => {
                    // The others refuse a node they removed: ask them whether this is one.
                    if n.removed_from_initial_cluster().await {
                        n.fail(super::membership::removed_message(n.id, &n.identity.cluster_id));
                        return;
                    }
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        tracing::warn!("{why}");
                        last_log = Some(Instant::now());
                    }
                    *n.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                }
            }
            drop(n);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Asks every other initial member what it knows of this node.
    async fn probe_round(self: &Arc<Self>) -> Decision {
        let others: Vec<_> = self
            .identity
            .initial_cluster
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let calls = others.iter().map(|(id, member)| {
            let call = self.transport.call(*id, member, PeerRequest::Probe, Duration::from_secs(1));
            async move {
                match call.await {
                    Ok(PeerResponse::Probe(r)) => (*id, Some(r)),
                    Ok(other) => {
                        tracing::debug!(id, ?other, "unexpected probe answer");
                        (*id, None)
                    }
                    Err(e) => {
                        tracing::debug!(id, error = %e, "no probe answer");
                        (*id, None)
                    }
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        decide(self.id, &self.identity.cluster_id, self.identity.initial_cluster.len(), &answers)
    }

    /// Starts rebuilding this member from its peers: learns the cluster's commit index (the
    /// leader's read index) and
    /// its leader's term, records them, and holds votes and entries from older terms until
    /// that index is applied. It does not bootstrap a membership of its own: the leader
    /// sends it the log (or a snapshot) from the start. An error means "not yet" (no
    /// leader answered), and the caller tries again.
    async fn begin_rebuild(self: &Arc<Self>) -> Result<(), String> {
        let read = self.cluster_read_index().await?;
        let gate = RebuildGate { index: read.index, term: read.term };
        tracing::warn!(
            node_id = self.id,
            index = gate.index,
            term = gate.term,
            "rebuilding this member from its peers: it votes again once it has applied entry {}",
            gate.index
        );
        // Recorded before Raft can take part in anything.
        let id = identity::Identity { bootstrapped: true, rebuild: Some(gate), ..self.identity.clone() };
        identity::save(&self.cfg, &id).map_err(|e| format!("rebuilding failed: {e:#}"))?;
        self.replica.hold_for_rebuild(Some(gate));
        *self.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tokio::spawn(Self::finish_rebuild(Arc::downgrade(self), gate));
        Ok(())
    }

    /// A read index confirmed by the current leader, asked of the other members.
    async fn cluster_read_index(&self) -> Result<ReadIndexReply, String> {
        let mut hint = None;
        let members: Vec<_> =
            self.identity.initial_cluster.iter().filter(|(id, _)| **id != self.id).collect();
        for attempt in 0..members.len() + 1 {
            let (id, member) = match hint.and_then(|h| self.identity.initial_cluster.get_key_value(&h)) {
                Some((id, m)) if *id != self.id => (id, m),
                _ => match members.get(attempt.min(members.len().saturating_sub(1))) {
                    Some(x) => *x,
                    None => return Err("no other member to rebuild from".into()),
                },
            };
            match self.transport.call(*id, member, PeerRequest::ReadIndex, self.cfg.request_timeout()).await {
                Ok(PeerResponse::ReadIndex(Ok(r))) => return Ok(r),
                Ok(PeerResponse::ReadIndex(Err(PeerError::NotLeader { leader }))) => hint = leader,
                other => tracing::debug!(id, ?other, "no read index for the rebuild"),
            }
        }
        Err("waiting for a leader to tell the commit index this member must catch up to".into())
    }

    /// Bootstraps Raft with the initial members and records it in the identity file.
    async fn finish_bootstrap(&self) -> anyhow::Result<()> {
        self.replica.initialize(self.identity.initial_cluster.clone()).await?;
        identity::save(&self.cfg, &identity::Identity { bootstrapped: true, ..self.identity.clone() })?;
        *self.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(node_id = self.id, "bootstrapped");
        Ok(())
    }

    /// Releases a rebuilt member once it has applied the gate's index, and records it.
    pub(super) async fn finish_rebuild(node: Weak<Node>, gate: RebuildGate) {
        loop {
            let Some(n) = node.upgrade() else { return };
            if n.replica.applied_index() >= gate.index && n.replica.has_membership() {
                let id = identity::Identity { rebuild: None, bootstrapped: true, ..n.identity.clone() };
                match identity::save(&n.cfg, &id) {
                    Ok(()) => {
                        n.replica.hold_for_rebuild(None);
                        tracing::info!(
                            node_id = n.id,
                            index = gate.index,
                            "rebuilt from the peers: caught up, votes again"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not record the end of the rebuild; retrying"),
                }
            }
            drop(n);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What this node answers a probe from `from`.
    pub(super) fn probe_reply(&self, from: NodeId) -> ProbeReply {
        let cluster_id = self.identity.cluster_id.clone();
        if self.replica.rebuild_gate().is_some() {
            return ProbeReply::Rebuilding { cluster_id };
        }
        if !self.replica.has_membership() {
            return ProbeReply::Fresh { cluster_id };
        }
        let status = self.replica.status();
        let published = self.replica.member(from).is_some_and(|m| m.incarnation != 0);
        let replicated = status.matched.get(&from).is_some_and(|m| m.is_some_and(|i| i > 0));
        ProbeReply::Member { cluster_id, knows_you: published || replicated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Option<ProbeReply> {
        Some(ProbeReply::Fresh { cluster_id: "c".into() })
    }

    fn member(knows_you: bool) -> Option<ProbeReply> {
        Some(ProbeReply::Member { cluster_id: "c".into(), knows_you })
    }

    fn pristine() -> Option<ProbeReply> {
        Some(ProbeReply::Member { cluster_id: "c".into(), knows_you: false })
    }

    #[test]
    fn decisions() {
        let wait = |d: Decision| matches!(d, Decision::Wait(_));
        // Alone: go on.
        assert_eq!(decide(1, "c", 1, &[]), Decision::Proceed);
        // A new cluster: enough of the others have no data that nothing can have been
        // committed (2 of 3: both others; 2 nodes: the other one).
        assert_eq!(decide(1, "c", 3, &[(2, fresh()), (3, fresh())]), Decision::Proceed);
        assert_eq!(decide(1, "c", 2, &[(2, fresh())]), Decision::Proceed);
        assert_eq!(
            decide(1, "c", 5, &[(2, fresh()), (3, pristine()), (4, fresh()), (5, None)]),
            Decision::Proceed
        );
        // This node never counts itself: it may be a wiped member of {1, 3}, and 3 is away.
        assert!(wait(decide(1, "c", 3, &[(2, fresh()), (3, None)])));
        assert!(wait(decide(1, "c", 3, &[(2, pristine()), (3, None)])));
        assert!(wait(decide(1, "c", 3, &[(2, None), (3, None)])));
        assert!(wait(decide(1, "c", 5, &[(2, fresh()), (3, fresh()), (4, None), (5, None)])));
        // A late start: a majority of the others answered and nobody knows this node.
        assert_eq!(decide(3, "c", 3, &[(1, member(false)), (2, member(false))]), Decision::Proceed);
        assert_eq!(
            decide(1, "c", 5, &[(2, member(false)), (3, member(false)), (4, member(false)), (5, None)]),
            Decision::Proceed
        );
        assert!(wait(decide(1, "c", 5, &[(2, member(false)), (3, member(false)), (4, None), (5, None)])));
        // Someone may hold the record: wait for it.
        assert!(wait(decide(3, "c", 3, &[(1, member(false)), (2, None)])));
        // A replaced disk: refused, whoever else answered.
        assert!(matches!(decide(3, "c", 3, &[(1, member(false)), (2, member(true))]), Decision::Refuse(_)));
        assert!(matches!(decide(3, "c", 3, &[(1, None), (2, member(true))]), Decision::Refuse(_)));
        // A member being rebuilt lost its data: its answer counts for nothing.
        let rebuilding = Some(ProbeReply::Rebuilding { cluster_id: "c".into() });
        assert!(wait(decide(1, "c", 3, &[(2, fresh()), (3, rebuilding)])));
        // Another cluster's member is never counted.
        let other = Some(ProbeReply::Fresh { cluster_id: "x".into() });
        assert!(wait(decide(1, "c", 3, &[(2, other), (3, fresh())])));
    }
}
