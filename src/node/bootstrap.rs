//! Bootstrapping a member that starts on a new data dir, without ever letting a member
//! that lost its disk rejoin as itself.
//!
//! A member that lost its data must not vote or acknowledge entries under its old id: the
//! cluster counted it in quorums, so with its votes a candidate missing acknowledged
//! writes could win. A new data dir cannot tell by itself whether it is a new member of a
//! new cluster, a late start of one, or a replaced disk; so before it bootstraps it asks
//! the other members ([`PeerRequest::Probe`]). Every data dir draws a random incarnation,
//! which a running member publishes into the replicated membership; a member that finds
//! its id there with an incarnation is a replaced disk. The decision:
//! - any member records an incarnation for this id: refuse, and stop the node with a
//!   message saying how to bring it back;
//! - a majority of the cluster (this node included) has no state (a member whose log holds
//!   nothing beyond the bootstrap entry counts as having none): a new cluster, go on;
//! - every other member answered and none records this id: a late start, go on;
//! - otherwise wait (an unreachable member may hold the record).
//!
//! Until it bootstraps, the node's Raft has no membership, so it refuses every Raft call
//! (see `Replica::handle`) and only answers probes.
//!
//! Rebuilding (`--rebuild-from-peers`, the explicit step after a lost or damaged disk): a
//! member the cluster knows may start on an empty data dir if it first learns the
//! cluster's commit index (a read index from the leader) and then neither votes nor
//! campaigns until it has applied that index. From then on it holds every entry that was
//! committed before it lost its data, and counting it again is safe. The index is kept in
//! the identity file, so a restart during the rebuild keeps holding its votes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{identity, Node};
use crate::peer::{PeerError, PeerRequest, PeerResponse, ProbeReply};
use crate::raft::NodeId;

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
        if let Some(ProbeReply::Member { cluster_id: c, incarnation, .. }) = answer {
            if c == cluster_id && *incarnation != 0 {
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
    let mut fresh = 1;
    let mut silent = Vec::new();
    for (id, answer) in answers {
        match answer {
            None => silent.push(*id),
            Some(ProbeReply::Fresh { cluster_id: c } | ProbeReply::Member { cluster_id: c, .. }) if c != cluster_id => {
                return Decision::Wait(format!(
                    "node {id} belongs to another cluster ({c}, this node's is {cluster_id}): check --initial-cluster"
                ))
            }
            Some(ProbeReply::Fresh { .. }) => fresh += 1,
            // Bootstrapped, but nothing happened since (it cannot have led anything alone).
            Some(ProbeReply::Member { last_log_index: 0, .. }) => fresh += 1,
            Some(ProbeReply::Member { .. }) => {}
        }
    }
    if fresh * 2 > size {
        return Decision::Proceed;
    }
    if silent.is_empty() {
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
                    if let Err(e) = n.finish_bootstrap(None).await {
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

    /// Starts rebuilding this member from its peers: learns the cluster's commit index,
    /// records it, holds votes until it is applied, and bootstraps. An error means "not
    /// yet" (no leader answered), and the caller tries again.
    async fn begin_rebuild(self: &Arc<Self>) -> Result<(), String> {
        let index = self.cluster_read_index().await?;
        tracing::warn!(
            node_id = self.id,
            index,
            "rebuilding this member from its peers: it votes again once it has applied entry {index}"
        );
        self.finish_bootstrap(Some(index)).await.map_err(|e| format!("rebuilding failed: {e:#}"))?;
        Ok(())
    }

    /// A read index confirmed by the current leader, asked of the other members.
    async fn cluster_read_index(&self) -> Result<u64, String> {
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
                Ok(PeerResponse::ReadIndex(Ok(i))) => return Ok(i),
                Ok(PeerResponse::ReadIndex(Err(PeerError::NotLeader { leader }))) => hint = leader,
                other => tracing::debug!(id, ?other, "no read index for the rebuild"),
            }
        }
        Err("waiting for a leader to tell the commit index this member must catch up to".into())
    }

    /// Bootstraps Raft with the initial members and records it in the identity file;
    /// with `rebuild_until`, holds votes until that index is applied.
    async fn finish_bootstrap(self: &Arc<Self>, rebuild_until: Option<u64>) -> anyhow::Result<()> {
        let mut id = self.identity.clone();
        id.bootstrapped = true;
        id.rebuild_until = rebuild_until;
        if let Some(index) = rebuild_until {
            // Recorded before Raft can take part in anything.
            identity::save(&self.cfg, &id)?;
            self.replica.hold_votes_until(index);
            tokio::spawn(Self::finish_rebuild(Arc::downgrade(self), index));
        }
        self.replica.initialize(self.identity.initial_cluster.clone()).await?;
        identity::save(&self.cfg, &id)?;
        *self.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(node_id = self.id, "bootstrapped");
        Ok(())
    }

    /// Releases the votes of a rebuilt member once it has applied `index`, and records it.
    pub(super) async fn finish_rebuild(node: Weak<Node>, index: u64) {
        loop {
            let Some(n) = node.upgrade() else { return };
            if n.replica.applied_index() >= index {
                let id = identity::Identity { rebuild_until: None, bootstrapped: true, ..n.identity.clone() };
                match identity::save(&n.cfg, &id) {
                    Ok(()) => {
                        n.replica.hold_votes_until(0);
                        tracing::info!(
                            node_id = n.id,
                            index,
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
        if !self.replica.has_membership() {
            return ProbeReply::Fresh { cluster_id };
        }
        let incarnation = self.replica.member(from).map_or(0, |m| m.incarnation);
        ProbeReply::Member { cluster_id, incarnation, last_log_index: self.replica.status().last_log_index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Option<ProbeReply> {
        Some(ProbeReply::Fresh { cluster_id: "c".into() })
    }

    fn member(incarnation: u64) -> Option<ProbeReply> {
        Some(ProbeReply::Member { cluster_id: "c".into(), incarnation, last_log_index: 40 })
    }

    fn pristine() -> Option<ProbeReply> {
        Some(ProbeReply::Member { cluster_id: "c".into(), incarnation: 0, last_log_index: 0 })
    }

    #[test]
    fn decisions() {
        // Alone: go on.
        assert_eq!(decide(1, "c", 1, &[]), Decision::Proceed);
        // A new cluster: a majority has no state.
        assert_eq!(decide(1, "c", 3, &[(2, fresh()), (3, None)]), Decision::Proceed);
        assert!(matches!(decide(1, "c", 3, &[(2, None), (3, None)]), Decision::Wait(_)));
        assert!(matches!(
            decide(1, "c", 5, &[(2, fresh()), (3, None), (4, None), (5, None)]),
            Decision::Wait(_)
        ));
        // A member that bootstrapped a moment earlier, alone, counts as new.
        assert_eq!(decide(1, "c", 3, &[(2, pristine()), (3, None)]), Decision::Proceed);
        // A late start: everyone answered and nobody records this node.
        assert_eq!(decide(3, "c", 3, &[(1, member(0)), (2, member(0))]), Decision::Proceed);
        // Someone may hold the record: wait for it.
        assert!(matches!(decide(3, "c", 3, &[(1, member(0)), (2, None)]), Decision::Wait(_)));
        // A replaced disk: refused, whoever else answered.
        assert!(matches!(decide(3, "c", 3, &[(1, member(0)), (2, member(77))]), Decision::Refuse(_)));
        assert!(matches!(decide(3, "c", 3, &[(1, None), (2, member(77))]), Decision::Refuse(_)));
        // Another cluster's member is never counted.
        let other = Some(ProbeReply::Fresh { cluster_id: "x".into() });
        assert!(matches!(decide(1, "c", 3, &[(2, other), (3, fresh())]), Decision::Wait(_)));
    }
}
