//! Lease requests that only the leader can answer: keepalives (its lessor renews) and
//! reads of remaining time (its lease clock knows it). A follower forwards them once to the
//! leader, like a write. Grants and revokes are ordinary writes (`Node::write`).

use std::sync::Arc;

use tokio::time::Instant;

use super::lessor::LeaseClock;
use super::Node;
use crate::error::{Error, Result};
use crate::peer::{LeaseAnswer, LeaseInfo, LeaseQuery, LeaseTimes, PeerError, PeerRequest, PeerResponse};
use crate::store::{Lease, State};

/// Most keys a read of one lease lists.
pub const MAX_LEASE_KEYS_SHOWN: usize = 1000;

impl Node {
    /// Keeps lease `id` alive: it gets its whole TTL again. Acknowledged only once the
    /// renewal is committed by a quorum, so a deposed leader never acknowledges one.
    /// With `subject`, only a lease that subject granted (else `PermissionDenied`).
    pub async fn lease_keepalive(self: &Arc<Self>, id: u64, subject: Option<&str>) -> Result<LeaseTimes> {
        self.check_lease_id(id)?;
        let subject = subject.map(str::to_string);
        self.at_leader(
            || PeerRequest::LeaseKeepalive { id, subject: subject.clone() },
            |node, deadline| {
                let subject = subject.clone();
                async move { node.local_keepalive(id, subject.as_deref(), deadline).await }
            },
            |resp| match resp {
                PeerResponse::LeaseKeepalive(r) => Some(r),
                _ => None,
            },
            Some("the renewal"),
        )
        .await
    }

    /// Reads leases as the leader sees them now (linearizable: the leader confirms its
    /// leadership first, from its read lease or with a quorum round).
    pub async fn lease_read(self: &Arc<Self>, q: LeaseQuery) -> Result<LeaseAnswer> {
        self.check_lease_query(&q)?;
        self.at_leader(
            || PeerRequest::LeaseRead(q.clone()),
            |node, _| {
                let q = q.clone();
                async move { node.local_lease_read(q).await }
            },
            |resp| match resp {
                PeerResponse::LeaseRead(r) => Some(r),
                _ => None,
            },
            None,
        )
        .await
    }

    /// A lease read's arguments (the leader checks a forwarded one again).
    pub(super) fn check_lease_query(&self, q: &LeaseQuery) -> Result<()> {
        match q {
            LeaseQuery::One { id, max_keys } => {
                self.check_lease_id(*id)?;
                if *max_keys > MAX_LEASE_KEYS_SHOWN {
                    return Err(Error::InvalidArgument(format!(
                        "a lease read lists at most {MAX_LEASE_KEYS_SHOWN} keys"
                    )));
                }
            }
            LeaseQuery::Page { limit, .. } => {
                let max = self.cfg.max_list_limit;
                if *limit == 0 || *limit > max {
                    return Err(Error::InvalidArgument(format!(
                        "limit must be between 1 and {max}, not {limit}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Answers a lease read on this node as leader.
    pub(super) async fn local_lease_read(self: &Arc<Self>, q: LeaseQuery) -> Result<LeaseAnswer, PeerError> {
        let deadline = self.deadline();
        let clock = self.lease_clock(deadline).await?;
        self.confirm_lease_leader(&clock, deadline).await?;
        let now = clock.now_ms();
        let applied = self.replica.applied();
        let state = &applied.state;
        // A lease whose time is up is gone, even before its expiry is applied.
        let alive = |l: &&Lease| l.expires_at > now || self.lessor.renewing(l.id);
        match q {
            LeaseQuery::One { id, max_keys } => {
                let lease = state.leases().get(id).filter(alive);
                let lease = lease.ok_or(PeerError::Refused(Error::LeaseNotFound(id)))?;
                Ok(LeaseAnswer::One(info(state, lease, now, max_keys)))
            }
            LeaseQuery::Page { after, limit, owner } => {
                let mut leases = Vec::new();
                let mut after = after;
                let theirs = |l: &&Lease| owner.is_none() || l.owner == owner;
                // Skipping leases that are up (or someone else's) can take more than one
                // page of the table.
                loop {
                    let (page, more) = state.leases().page(after, limit - leases.len());
                    after = page.last().map(|l| l.id).or(after);
                    leases.extend(page.iter().filter(alive).filter(theirs).map(|l| info(state, l, now, 0)));
                    if !more || leases.len() == limit {
                        return Ok(LeaseAnswer::Page { leases, more });
                    }
                }
            }
        }
    }

    /// Confirms (read lease or quorum round) that this node still leads in the term of `clock`, and
    /// applies everything committed up to then: its lease table is then at least as new as
    /// any other member's, so it may answer for leases. (A deposed leader that does not know
    /// it yet may have missed a grant or a renewal, and its clock runs on while its
    /// successor's stood still during the election.)
    pub(super) async fn confirm_lease_leader(
        &self,
        clock: &LeaseClock,
        deadline: Instant,
    ) -> Result<(), PeerError> {
        let reply = tokio::time::timeout_at(deadline, self.local_read_index()).await.map_err(|_| {
            PeerError::Unavailable("no quorum confirmed this leader within the deadline".into())
        })??;
        if reply.term != clock.term {
            let leader = self.replica.leadership().borrow().leader;
            return Err(PeerError::NotLeader { leader });
        }
        tokio::time::timeout_at(deadline, self.replica.wait_applied(reply.index))
            .await
            .map_err(|_| PeerError::Unavailable("this leader did not apply its read index in time".into()))
    }
}

/// A lease as a read reports it, with up to `max_keys` of its keys.
fn info(state: &State, l: &Lease, now: u64, max_keys: usize) -> LeaseInfo {
    LeaseInfo {
        id: l.id,
        ttl_ms: l.ttl_ms,
        remaining_ms: l.expires_at.saturating_sub(now),
        key_count: state.kv().lease_key_count(l.id) as u64,
        keys: state.kv().lease_keys(l.id).take(max_keys).cloned().collect(),
        locks: state.locks().lease_owners(l.id).take(max_keys).cloned().collect(),
        owner: l.owner.clone(),
    }
}
