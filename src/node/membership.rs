//! Live membership changes: adding a learner, promoting it, removing a member (the leader
//! too), moving a member to new URLs; joining a running cluster (`--join`); and stopping
//! a node the cluster removed.
//!
//! Every change is made by the leader, one at a time, through openraft's joint consensus;
//! any member takes the request and forwards it once ([`PeerRequest::MemberChange`]).
//! Invariants, each checked on the leader before anything is proposed:
//! - a node id is never given twice: not to a member, nor to one a change removed (the
//!   removed ids are replicated beside the membership, see `Applied::retired`);
//! - a learner becomes a voter only once its log is within [`PROMOTE_MAX_LAG`] entries of
//!   the leader's and it answers the leader: a voter that cannot take entries would count
//!   against the quorum at once;
//! - the last voter is never removed; a change while another is under way (a joint
//!   membership, or another request here) is refused, never queued.
//!
//! Joining: a node on an empty data dir with `--join` asks any member ([`PeerRequest::Join`],
//! on the peer route for non-members, proven by the peer secret or a peer certificate the
//! cluster CA signed for its peer host) to add it as a learner. The answer names the
//! cluster and its members, which may then send it entries before it has a membership of
//! its own. Once it has caught up it asks the leader to promote it, retrying with backoff.
//!
//! Removal: a node that has applied a membership without itself, or that no longer hears
//! from a leader and is told by a member that a committed change removed it (a removed
//! follower is never sent the membership that leaves it out), records that in its
//! identity file and stops; it refuses to start again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{identity, Identity, Node};
use crate::error::{Error, MemberConflict, Result};
use crate::peer::{
    JoinAnswer, JoinRequest, MemberChange, MemberCheckReply, MemberRecord, PeerError, PeerRequest,
    PeerResponse,
};
use crate::raft::{ChangeError, Member, NodeId, Role};

/// How many entries a learner's log may be behind the leader's and still be promoted.
pub const PROMOTE_MAX_LAG: u64 = 64;

/// How long a node goes without hearing from a leader before it asks whether it was removed.
const REMOVAL_CHECK_AFTER: Duration = Duration::from_secs(3);

/// The longest pause between two join or promotion attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn conflict(reason: MemberConflict, message: String) -> PeerError {
    PeerError::Refused(Error::MemberConflict { reason, message })
}

fn invalid(message: String) -> PeerError {
    PeerError::Refused(Error::InvalidArgument(message))
}

fn change_failed(e: ChangeError) -> PeerError {
    match e {
        ChangeError::NotLeader { leader } => PeerError::NotLeader { leader },
        ChangeError::InProgress(why) => conflict(
            MemberConflict::ChangeInProgress,
            format!("another membership change is under way ({why}); try again once it is done"),
        ),
        ChangeError::Refused(why) => invalid(why),
        ChangeError::Unknown(_) => PeerError::Timeout,
    }
}

impl Node {
    /// Checks a URL given for a member and returns it as members store it.
    fn member_url(&self, what: &str, url: &str, peer: bool) -> std::result::Result<String, PeerError> {
        let url = crate::config::normalize_url(url).map_err(|e| invalid(format!("{what}: {e}")))?;
        if peer {
            let scheme = if self.cfg.peer_tls_cert_file.is_some() { "https://" } else { "http://" };
            if !url.starts_with(scheme) {
                return Err(invalid(format!(
                    "{what}: {url} is not {scheme}, as the members' peer listeners (all speak TLS, or none)"
                )));
            }
        }
        Ok(url)
    }

    /// Runs `change` on the leader (forwarded once from here when another member leads).
    pub async fn change_membership(self: &Arc<Self>, change: MemberChange) -> Result<MemberRecord> {
        if let MemberChange::Add { id: 0, .. }
        | MemberChange::Promote { id: 0 }
        | MemberChange::Remove { id: 0 }
        | MemberChange::Update { id: 0, .. } = change
        {
            return Err(Error::InvalidArgument("node ids start at 1".into()));
        }
        self.at_leader(
            || PeerRequest::MemberChange(change.clone()),
            {
                let change = change.clone();
                move |node: Arc<Node>, _| {
                    let change = change.clone();
                    async move { node.change_locally(change).await }
                }
            },
            |r| match r {
                PeerResponse::MemberChange(r) => Some(r),
                _ => None,
            },
            Some("the membership change"),
        )
        .await
    }

    /// Makes `change` as the leader (else `NotLeader`, and nothing changed).
    pub(super) async fn change_locally(
        self: &Arc<Self>,
        change: MemberChange,
    ) -> std::result::Result<MemberRecord, PeerError> {
        // One asked-for change at a time (a second is refused); a member's own record being
        // published (its client URL) is only waited for.
        let Some(_asked) = AskedChange::begin(&self.asked_change) else {
            return Err(conflict(
                MemberConflict::ChangeInProgress,
                "another membership change is under way; try again once it is done".into(),
            ));
        };
        let _one = self.member_change.lock().await;
        if self.is_handing_over() || self.is_shutting_down() {
            return Err(PeerError::Unavailable(
                "this node is shutting down and hands its leadership over; try again".into(),
            ));
        }
        let leadership = *self.replica.leadership().borrow();
        if leadership.leader != Some(self.id) {
            return Err(PeerError::NotLeader { leader: leadership.leader });
        }
        if !leadership.is_self {
            // Not everything committed before this term is applied yet, the removed ids
            // included: an id a change just retired could be handed out again.
            return Err(PeerError::Unavailable(
                "this leader is still applying the log of its predecessors; try again".into(),
            ));
        }
        if self.replica.change_in_progress() {
            return Err(conflict(
                MemberConflict::ChangeInProgress,
                "a joint membership is being committed; try again once it is done".into(),
            ));
        }
        let status = self.replica.status();
        let record = |id: NodeId| {
            let s = self.replica.status();
            s.members.iter().find(|m| m.id == id).map(|m| MemberRecord {
                id,
                peer_url: m.addr.peer_url.clone(),
                client_url: m.addr.client_url.clone(),
                voter: m.voter,
            })
        };
        let id = change_id(&change);
        let found = |id: NodeId| status.members.iter().find(|m| m.id == id).cloned();
        let url_taken = |url: &str, except: NodeId| {
            status.members.iter().any(|m| m.id != except && m.addr.peer_url == url)
        };
        match change {
            MemberChange::Add { id, peer_url, client_url, incarnation } => {
                let peer_url = self.member_url("peer_url", &peer_url, true)?;
                let client_url = self.member_url("client_url", &client_url, false)?;
                if let Some(m) = found(id) {
                    // A joining node that did not get the answer asks again: the same data
                    // dir (same incarnation), still a learner at the same address.
                    let retry = incarnation != 0
                        && !m.voter
                        && m.addr.peer_url == peer_url
                        && (m.addr.incarnation == incarnation || m.addr.incarnation == 0);
                    if retry {
                        return record(id).ok_or(PeerError::Unavailable(format!("node {id} just left")));
                    }
                    return Err(conflict(
                        MemberConflict::MemberExists,
                        format!(
                            "node {id} is already a member of this cluster (a {}, peer URL {}); a member that lost its \
                             data dir is rebuilt with --rebuild-from-peers, and a new member needs a new id",
                            if m.voter { "voter" } else { "learner" },
                            m.addr.peer_url
                        ),
                    ));
                }
                if self.replica.retired().contains(&id) {
                    return Err(conflict(
                        MemberConflict::IdRetired,
                        format!("node id {id} belonged to a member that was removed, and node ids are never reused: give the new member a new id"),
                    ));
                }
                if url_taken(&peer_url, id) {
                    return Err(conflict(
                        MemberConflict::PeerUrlInUse,
                        format!("another member has the peer URL {peer_url}"),
                    ));
                }
                let member = Member { peer_url, client_url, incarnation };
                self.replica.add_learner(id, member).await.map_err(change_failed)?;
                tracing::info!(node_id = id, "added a learner");
            }
            MemberChange::Promote { id } => {
                let m = found(id).ok_or(PeerError::Refused(Error::MemberNotFound(id)))?;
                if m.voter {
                    return Err(conflict(
                        MemberConflict::AlreadyVoter,
                        format!("node {id} is a voter already"),
                    ));
                }
                let behind = match status.matched.get(&id).copied().flatten() {
                    Some(matched) => status.last_log_index.saturating_sub(matched),
                    None => status.last_log_index.max(1),
                };
                if behind > PROMOTE_MAX_LAG {
                    return Err(conflict(
                        MemberConflict::LearnerBehind { behind },
                        format!(
                            "learner {id} is {behind} entries behind the leader's log (at most {PROMOTE_MAX_LAG} to be \
                             promoted); try again once it has caught up"
                        ),
                    ));
                }
                // Caught up once is not enough: it must answer now, or the new quorum
                // would count a member that is away.
                let answer =
                    self.transport.call(id, &m.addr, PeerRequest::Probe, Duration::from_secs(1)).await;
                if !matches!(answer, Ok(PeerResponse::Probe(_))) {
                    return Err(conflict(
                        MemberConflict::LearnerBehind { behind },
                        format!(
                            "learner {id} does not answer the leader (its log is {behind} entries behind); try \
                             again once it is reachable and has caught up"
                        ),
                    ));
                }
                self.replica.promote(id).await.map_err(change_failed)?;
                tracing::info!(node_id = id, "promoted a learner to a voter");
            }
            MemberChange::Remove { id } => {
                let m = found(id).ok_or(PeerError::Refused(Error::MemberNotFound(id)))?;
                if m.voter && !status.members.iter().any(|o| o.voter && o.id != id) {
                    return Err(conflict(
                        MemberConflict::LastVoter,
                        format!("node {id} is the last voter; a cluster needs one"),
                    ));
                }
                let removed = MemberRecord {
                    id,
                    peer_url: m.addr.peer_url,
                    client_url: m.addr.client_url,
                    voter: m.voter,
                };
                self.replica.remove(id).await.map_err(change_failed)?;
                tracing::info!(node_id = id, "removed a member");
                return Ok(removed);
            }
            MemberChange::Update { id, peer_url, client_url } => {
                let m = found(id).ok_or(PeerError::Refused(Error::MemberNotFound(id)))?;
                if peer_url.is_none() && client_url.is_none() {
                    return Err(invalid("give a new peer_url, client_url, or both".into()));
                }
                let mut addr = m.addr.clone();
                if let Some(u) = peer_url {
                    addr.peer_url = self.member_url("peer_url", &u, true)?;
                    if url_taken(&addr.peer_url, id) {
                        return Err(conflict(
                            MemberConflict::PeerUrlInUse,
                            format!("another member has the peer URL {}", addr.peer_url),
                        ));
                    }
                }
                if let Some(u) = client_url {
                    addr.client_url = self.member_url("client_url", &u, false)?;
                }
                if addr != m.addr {
                    self.replica.change_addr(id, addr).await.map_err(change_failed)?;
                    tracing::info!(node_id = id, "moved a member");
                }
            }
        }
        record(id)
            .ok_or_else(|| PeerError::Unavailable(format!("node {id} is not in the membership any more")))
    }

    /// Serves a join from `from` (any member may: it forwards the change to the leader).
    pub(super) async fn serve_join(
        self: &Arc<Self>,
        from: NodeId,
        req: JoinRequest,
    ) -> std::result::Result<JoinAnswer, PeerError> {
        if from != req.id {
            return Err(invalid(format!("node {from} may join only as itself, not as node {}", req.id)));
        }
        if req.rebuild {
            // A member rebuilt from its peers only learns who the cluster is.
            if self.replica.member(req.id).is_none() {
                return Err(PeerError::Refused(Error::MemberNotFound(req.id)));
            }
        } else {
            let change = MemberChange::Add {
                id: req.id,
                peer_url: req.peer_url,
                client_url: req.client_url,
                incarnation: req.incarnation.max(1),
            };
            let r = self.change_membership(change).await;
            match r {
                Ok(_) => {}
                Err(Error::Timeout(m)) => return Err(PeerError::Unavailable(m)),
                Err(Error::Unavailable(m)) => return Err(PeerError::Unavailable(m)),
                Err(e) => return Err(PeerError::Refused(e)),
            }
        }
        // (This member may not have applied the new learner yet: the joining node adds itself.)
        let members = self.replica.status().members.into_iter().map(|m| (m.id, m.addr)).collect();
        Ok(JoinAnswer { cluster_id: self.identity.cluster_id.clone(), members })
    }

    /// What this node answers a node asking whether it was removed.
    pub(super) fn member_check(&self, from: NodeId) -> MemberCheckReply {
        MemberCheckReply {
            cluster_id: self.identity.cluster_id.clone(),
            removed: self.replica.retired().contains(&from),
            peer_url: self.replica.member(from).map(|m| m.peer_url),
        }
    }

    /// Joins the cluster through `urls` as a new learner (or, rebuilding, learns who it is):
    /// tries each URL in turn, rounds apart with backoff, until a member answers. A refusal
    /// that no retry can change (the id is a member or retired, a bad address) is the error.
    pub(super) async fn join_cluster(
        cfg: &crate::config::Config,
        transport: &Arc<dyn crate::peer::Transport>,
        identity: &Identity,
        urls: &[String],
    ) -> anyhow::Result<JoinAnswer> {
        let me = cfg.advertise();
        let req = JoinRequest {
            id: cfg.node_id,
            peer_url: me.peer_url.clone(),
            client_url: me.client_url.clone(),
            incarnation: identity.incarnation,
            rebuild: cfg.rebuild_from_peers,
        };
        let mut backoff = Duration::from_millis(200);
        let mut last_log: Option<Instant> = None;
        loop {
            let mut failures = Vec::new();
            for url in urls {
                let target = Member { peer_url: url.clone(), client_url: String::new(), incarnation: 0 };
                let call =
                    transport.call(0, &target, PeerRequest::Join(req.clone()), cfg.request_timeout() * 2);
                match call.await {
                    Ok(PeerResponse::Join(Ok(answer))) => {
                        tracing::info!(node_id = cfg.node_id, via = %url, cluster_id = %answer.cluster_id, "joined the cluster as a learner");
                        return Ok(answer);
                    }
                    // Another change is under way (another node joining, say): this one
                    // goes in after it.
                    Ok(PeerResponse::Join(Err(PeerError::Refused(
                        e @ Error::MemberConflict { reason: MemberConflict::ChangeInProgress, .. },
                    )))) => failures.push(format!("{url}: {e}")),
                    Ok(PeerResponse::Join(Err(PeerError::Refused(e)))) => {
                        let hint = match &e {
                            Error::MemberConflict { reason: MemberConflict::MemberExists, .. } => {
                                " (if this node lost its data dir, start it on an empty one with --join and \
                                 --rebuild-from-peers)"
                            }
                            _ => "",
                        };
                        anyhow::bail!("the cluster refused to let node {} join: {e}{hint}", cfg.node_id);
                    }
                    Ok(other) => failures.push(format!("{url}: {other:?}")),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                // A client listener has no peer routes.
                let hint = if failures.iter().any(|f| f.contains("no route for /raft/join")) {
                    " (--join takes the peer URLs of running members, not their client URLs)"
                } else {
                    ""
                };
                tracing::warn!("waiting to join the cluster{hint}: {}", failures.join("; "));
                last_log = Some(Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// After a join: records the first membership received, then asks the leader to
    /// promote this learner until it is a voter (retrying with backoff while it is behind
    /// or another change is under way).
    pub(super) async fn finish_join(node: Weak<Node>) {
        let mut backoff = Duration::from_millis(200);
        let mut recorded = false;
        let mut last_log: Option<Instant> = None;
        loop {
            tokio::time::sleep(backoff).await;
            let Some(n) = node.upgrade() else { return };
            if !n.replica.has_membership() || n.replica.applied_index() == 0 {
                continue;
            }
            if !recorded {
                match identity::update(&n.cfg, |id| id.bootstrapped = true) {
                    Ok(()) => recorded = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record the join; retrying");
                        continue;
                    }
                }
            }
            match n.replica.status().members.iter().find(|m| m.id == n.id) {
                Some(m) if m.voter => {
                    tracing::info!(node_id = n.id, "this node is a voter");
                    return;
                }
                // Still applying the log from before it joined.
                None if !n.replica.applied_removal_of(n.id) => continue,
                None => return,
                Some(_) => {}
            }
            match n.change_membership(MemberChange::Promote { id: n.id }).await {
                Ok(_) => {
                    tracing::info!(node_id = n.id, "promoted to a voter");
                    return;
                }
                Err(Error::MemberConflict { reason: MemberConflict::AlreadyVoter, .. }) => return,
                Err(Error::MemberNotFound(_)) => return,
                Err(e) => {
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        tracing::info!(node_id = n.id, "not promoted yet: {e}");
                        last_log = Some(Instant::now());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stops the node once it knows a committed membership change removed it.
    pub(super) async fn watch_removal(node: Weak<Node>) {
        let mut asked_at: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(n) = node.upgrade() else { return };
            if n.fatal.borrow().is_some() {
                return;
            }
            n.finish_joint().await;
            let removed = if n.replica.applied_removal_of(n.id) {
                true
            } else {
                let quiet = n.replica.has_membership()
                    && n.replica.since_leader_heard() > REMOVAL_CHECK_AFTER
                    && n.replica.status().role != Role::Leader;
                if quiet && asked_at.is_none_or(|t| t.elapsed() >= REMOVAL_CHECK_AFTER) {
                    asked_at = Some(Instant::now());
                    n.asked_removed().await
                } else {
                    false
                }
            };
            if removed {
                n.stop_removed();
                return;
            }
        }
    }

    /// As leader, completes a joint membership a change left behind (its leader changed
    /// between the two steps), so the next change is not refused for ever.
    async fn finish_joint(&self) {
        if !self.replica.change_in_progress()
            || !self.replica.leadership().borrow().is_self
            || self.is_handing_over()
        {
            return;
        }
        let Ok(_one) = self.member_change.try_lock() else { return };
        match self.replica.finish_joint().await {
            Ok(true) => tracing::info!("completed a joint membership left by an earlier change"),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "could not complete the joint membership yet"),
        }
    }

    /// Asks the other members whether a committed change removed this node.
    async fn asked_removed(&self) -> bool {
        let others: Vec<(NodeId, Member)> = self
            .replica
            .status()
            .members
            .into_iter()
            .filter(|m| m.id != self.id)
            .map(|m| (m.id, m.addr))
            .collect();
        self.ask_removed(&others).await
    }

    /// Asks the initial members whether a committed change removed this node (a node
    /// waiting to bootstrap on an empty data dir may be one the cluster removed).
    pub(super) async fn removed_from_initial_cluster(&self) -> bool {
        let others: Vec<(NodeId, Member)> = self
            .identity
            .initial_cluster
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        self.ask_removed(&others).await
    }

    async fn ask_removed(&self, others: &[(NodeId, Member)]) -> bool {
        let calls = others
            .iter()
            .map(|(id, m)| self.transport.call(*id, m, PeerRequest::MemberCheck, Duration::from_secs(1)));
        futures::future::join_all(calls).await.into_iter().any(|r| {
            matches!(r, Ok(PeerResponse::MemberCheck(MemberCheckReply { cluster_id, removed: true, .. }))
                if cluster_id == self.identity.cluster_id)
        })
    }

    /// Records that this node was removed, and stops it.
    fn stop_removed(&self) {
        let why = removed_message(self.id, &self.identity.cluster_id);
        if let Err(e) = identity::update(&self.cfg, |id| id.removed = Some(why.clone())) {
            tracing::warn!(error = %e, "could not record the removal in the identity file");
        }
        self.fail(why);
    }
}

/// Refuses to run as a member whose peer URL differs from the one the cluster records for
/// it, unless the cluster has moved it there: a member restarted at its new address after
/// a move may not have received the change itself, so it asks the others (for a few
/// seconds) what they record for it.
pub(super) async fn check_address(
    cfg: &crate::config::Config,
    replica: &crate::raft::Replica,
    transport: &Arc<dyn crate::peer::Transport>,
) -> anyhow::Result<()> {
    let advertised = cfg.advertise().peer_url;
    match replica.member(cfg.node_id) {
        Some(m) if m.peer_url != advertised => {}
        _ => return Ok(()),
    }
    let others: Vec<(NodeId, Member)> = replica
        .status()
        .members
        .into_iter()
        .filter(|m| m.id != cfg.node_id)
        .map(|m| (m.id, m.addr))
        .collect();
    for _round in 0..5 {
        let calls = others
            .iter()
            .map(|(id, m)| transport.call(*id, m, PeerRequest::MemberCheck, Duration::from_secs(1)));
        let moved = futures::future::join_all(calls).await.into_iter().any(|r| {
            matches!(r, Ok(PeerResponse::MemberCheck(MemberCheckReply { peer_url: Some(u), .. })) if u == advertised)
        });
        if moved {
            tracing::info!(node_id = cfg.node_id, peer_url = %advertised, "the cluster moved this member to its new peer URL");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    identity::check_recorded_address(replica, cfg)
}

/// Marks a requested membership change as under way until dropped.
struct AskedChange<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> AskedChange<'a> {
    fn begin(flag: &'a std::sync::atomic::AtomicBool) -> Option<AskedChange<'a>> {
        (!flag.swap(true, std::sync::atomic::Ordering::AcqRel)).then_some(AskedChange(flag))
    }
}

impl Drop for AskedChange<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// What a removed node says, when it stops and when it refuses to start.
pub(super) fn removed_message(id: NodeId, cluster_id: &str) -> String {
    format!(
        "this node (id {id}) was removed from the cluster {cluster_id} by a membership change, and stops serving. \
         Its data dir is of no further use; to bring this machine back, add it as a new member with a new node id \
         (node ids are never reused) on an empty data dir"
    )
}

fn change_id(c: &MemberChange) -> NodeId {
    match c {
        MemberChange::Add { id, .. }
        | MemberChange::Promote { id }
        | MemberChange::Remove { id }
        | MemberChange::Update { id, .. } => *id,
    }
}
