//! Locks and elections at the facade: acquiring (and campaigning) with a bounded wait,
//! reads of holders and queues, the fencing check, and election observers.
//!
//! Grants are decided in apply (see `store::locks`); what this adds is the waiting. An
//! acquire that is queued waits on this node's applied state for its owner's grant or
//! removal, woken by the lock hub. Invariants:
//! - a request that goes away (its wait ran out, its connection closed, the node shuts
//!   down) never leaves an owner behind that nobody knows of: the waiter is withdrawn (a
//!   grant that raced the withdrawal is returned, or released when nobody is left to
//!   take it), and a lease made for the request is revoked;
//! - the server keeps alive only a lease it made for a waiting request, and only while
//!   the request waits; once granted, the lease is the client's to keep alive;
//! - a waiter whose lease ended is told so (`LeaseEnded`), never granted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lock_hub::LockRegistration;
use super::watch_hub::Seat;
use super::{Consistency, Node, MAX_WAIT_MS};
use crate::error::{Error, Result};
use crate::store::lock::Place;
use crate::store::{Command, Holder, Kind, Lock, Outcome, Waiter};

/// An acquire (or a campaign) as a front-end gives it.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub kind: Kind,
    pub name: String,
    /// An existing lease, the client's to keep alive; or none: a lease of `ttl_ms` is made
    /// for the request.
    pub lease: Option<u64>,
    pub ttl_ms: u64,
    /// How long to wait for the grant (zero: try once).
    pub wait: Duration,
    pub limit: Option<u32>,
    /// A candidate's value.
    pub value: Vec<u8>,
    pub idempotency_key: Option<String>,
    /// Who asks: the acquire is proposed on its behalf (its lease must be the caller's;
    /// a lease made for it is the caller's).
    pub caller: crate::auth::Caller,
}

/// How an acquire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Granted (at `holder.token`).
    Held { revision: u64, holder: Holder },
    /// Not granted within the wait; the request left the queue.
    TimedOut { revision: u64 },
    /// The waiter's lease ended before its turn came.
    LeaseEnded { revision: u64, lease: u64 },
    /// Another request released the waiter before its turn came.
    Withdrawn { revision: u64 },
    /// A replayed grant (the same idempotency key) whose holder no longer holds: it was
    /// withdrawn when its first request went away before hearing of the grant, released,
    /// or its lease ended.
    Released { revision: u64 },
    /// Apply refused the acquire, nothing changed (a limit mismatch, a missing lease, an
    /// idempotency key used for another request).
    Refused(Outcome),
}

/// What an election observer sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionView {
    Leader { revision: u64, holder: Holder },
    NoLeader { revision: u64 },
}

/// Where an owner stands in this node's applied state.
enum Standing {
    Holding { revision: u64, holder: Holder },
    Waiting,
    Gone { revision: u64, lease_alive: bool },
}

/// An acquire's outcome on its way from its proposer to the request. Dropped unread (the
/// request went away), it withdraws the owner the outcome names.
struct PendingAcquire {
    node: Arc<Node>,
    kind: Kind,
    name: String,
    own_lease: bool,
    rx: oneshot::Receiver<Result<Outcome>>,
    read: bool,
}

impl PendingAcquire {
    async fn outcome(&mut self) -> Result<Outcome> {
        let r = (&mut self.rx).await;
        self.read = true;
        r.map_err(|_| Error::Internal("the acquire's proposer went away".into()))?
    }
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        if self.read {
            return;
        }
        // Closed first: a proposer that has not sent yet finds nobody and withdraws itself.
        self.rx.close();
        if let Ok(Ok(outcome)) = self.rx.try_recv() {
            self.node.abandon_outcome(self.kind, &self.name, &outcome, self.own_lease);
        }
    }
}

/// Cleans up after a waiting request that goes away before it is settled (see the
/// module doc); disarmed once the request has its answer.
struct Abandon {
    node: Arc<Node>,
    kind: Kind,
    name: String,
    owner: String,
    lease: u64,
    own_lease: bool,
    armed: bool,
}

impl Abandon {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            self.node.abandon(self.kind, &self.name, &self.owner, self.lease, self.own_lease);
        }
    }
}

impl Node {
    fn lock_seat(self: &Arc<Self>) -> Result<Seat> {
        let max = self.cfg.max_watchers;
        self.watches.reserve(max).ok_or_else(|| {
            Error::Overloaded(format!(
                "this node serves {max} watches, long-polls, lock waits and election observers already \
                 (max_watchers); retry shortly or use another member"
            ))
        })
    }

    /// Withdraws an owner nobody waits for any more, in the background: releases it,
    /// retried until that is decided (for about 40 s; then the lease's end removes it),
    /// and revokes its lease when the lease was made for the request and the owner was still
    /// there (so the lease was still the request's: a lease's end removes its owners). An
    /// owner already gone leaves a lease made for the request to lapse by itself (nobody
    /// keeps it alive), never revoking an id that may have been granted anew.
    fn abandon(self: &Arc<Self>, kind: Kind, name: &str, owner: &str, lease: u64, own_lease: bool) {
        // Called from drops too: a runtime that is already gone leaves it to the lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let release = Command::LockRelease { kind, name: name.to_string(), owner: owner.to_string() };
        let node = self.clone();
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(100);
            for _ in 0..10 {
                match node.write(release.clone()).await {
                    Ok(Outcome::LockReleased { .. }) if own_lease => {
                        node.revoke_in_background(lease);
                        return;
                    }
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(%e, ?release, "withdrawing an abandoned lock owner failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
            tracing::warn!(?release, "an abandoned lock owner could not be withdrawn; its lease's end will");
        });
    }

    /// Withdraws the owner an acquire's outcome names, if it names one (not a replay: the
    /// first request may still be using it).
    fn abandon_outcome(self: &Arc<Self>, kind: Kind, name: &str, outcome: &Outcome, own_lease: bool) {
        if let Outcome::LockHeld { holder: Holder { owner, lease, .. }, .. }
        | Outcome::LockQueued { waiter: Waiter { owner, lease, .. }, .. } = outcome
        {
            self.abandon(kind, name, owner, *lease, own_lease);
        }
    }

    /// Revokes a lease made for a request that no longer needs it (best effort: unrenewed,
    /// it lapses by itself).
    fn revoke_in_background(self: &Arc<Self>, lease: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let node = self.clone();
        runtime.spawn(async move {
            if let Err(e) = node.write(Command::LeaseRevoke { id: lease }).await {
                tracing::debug!(%e, lease, "revoking a request's lease failed; it lapses by itself");
            }
        });
    }

    /// Acquires a lock (or campaigns in an election): proposes the acquire, and if it is
    /// queued waits for the grant until `wait` runs out. Returns how it ended, and whether
    /// the outcome is a replay of an earlier request with the same idempotency key.
    pub async fn acquire(self: &Arc<Self>, req: AcquireRequest) -> Result<(Acquired, bool)> {
        if req.wait > Duration::from_millis(MAX_WAIT_MS) {
            return Err(Error::InvalidArgument(format!(
                "wait must be at most {} s, not {} ms",
                MAX_WAIT_MS / 1000,
                req.wait.as_millis()
            )));
        }
        let mut seat = self.lock_seat()?;
        let until = Instant::now() + req.wait;
        let own_lease = req.lease.is_none();
        let (kind, name) = (req.kind, req.name.clone());
        let cmd = Command::LockAcquire {
            kind,
            name: req.name,
            lease: req.lease,
            ttl_ms: if own_lease { req.ttl_ms } else { 0 },
            clock_ms: 0,
            limit: req.limit,
            wait: !req.wait.is_zero(),
            value: req.value,
        };
        let once = req.caller.scoped_idempotency_key(req.idempotency_key);
        let cmd = self.idempotent(once, req.caller.on_behalf(cmd))?;
        // Proposed from a task of its own: if this request goes away meanwhile, the task (or
        // the pending outcome's drop, whichever comes second) still learns the outcome and
        // withdraws the owner nobody will hear of.
        let (tx, rx) = oneshot::channel();
        let mut pending =
            PendingAcquire { node: self.clone(), kind, name: name.clone(), own_lease, rx, read: false };
        let node = self.clone();
        let (k, n) = (kind, name.clone());
        tokio::spawn(async move {
            if let Err(Ok(outcome)) = tx.send(node.write(cmd).await) {
                node.abandon_outcome(k, &n, &outcome, own_lease);
            }
        });
        let outcome = pending.outcome().await?;
        let (outcome, replayed) = match outcome {
            Outcome::Replayed { first } => (*first, true),
            o => (o, false),
        };
        let acquired = match outcome {
            // A replayed grant may have ended since (the first request may have gone away
            // before it heard of the grant, and been withdrawn): it is reported held only
            // if it still is, on a state that includes the replay.
            Outcome::LockHeld { revision, holder } if replayed => {
                self.linearize().await?;
                match self.standing(kind, &name, &holder.owner, holder.lease) {
                    Standing::Gone { revision, .. } => Acquired::Released { revision },
                    Standing::Holding { .. } | Standing::Waiting => Acquired::Held { revision, holder },
                }
            }
            Outcome::LockHeld { revision, holder } => Acquired::Held { revision, holder },
            Outcome::LockQueued { revision, waiter, .. } => {
                self.await_grant(kind, &name, waiter, revision, until, own_lease, &mut seat).await?
            }
            Outcome::LockBusy { revision } => Acquired::TimedOut { revision },
            other => Acquired::Refused(other),
        };
        Ok((acquired, replayed))
    }

    /// Where `owner` of lease `lease` stands in the lock `name`, as applied here.
    fn standing(&self, kind: Kind, name: &str, owner: &str, lease: u64) -> Standing {
        let applied = self.replica.applied();
        let state = &applied.state;
        let revision = state.revision();
        let lock = state.locks().get(kind, name);
        match lock.and_then(|l| Some((l, l.place(owner)?))) {
            Some((l, Place::Holding(i))) => Standing::Holding { revision, holder: l.holders[i].clone() },
            Some((_, Place::Waiting(_))) => Standing::Waiting,
            None => Standing::Gone { revision, lease_alive: state.leases().contains(lease) },
        }
    }

    /// Waits until the queued `waiter` is granted, removed, or `until` passes (then it
    /// leaves the queue, unless granted meanwhile).
    #[allow(clippy::too_many_arguments)]
    async fn await_grant(
        self: &Arc<Self>,
        kind: Kind,
        name: &str,
        waiter: Waiter,
        queued_at: u64,
        until: Instant,
        own_lease: bool,
        seat: &mut Seat,
    ) -> Result<Acquired> {
        let reg: LockRegistration = self.lock_hub.watch_owner(&waiter.owner);
        let mut guard = Abandon {
            node: self.clone(),
            kind,
            name: name.to_string(),
            owner: waiter.owner.clone(),
            lease: waiter.lease,
            own_lease,
            armed: true,
        };
        let (owner, lease) = (waiter.owner.as_str(), waiter.lease);
        // This node may not have applied the queueing yet; until it has, its state says
        // nothing of this owner (if the wait runs out first, the leader decides the cancel).
        let mut position = self.replica.applied_position();
        let caught_up = tokio::select! {
            r = tokio::time::timeout_at(until, position.wait_for(|p| p.revision >= queued_at)) => r.is_ok(),
            _ = seat.closed() => {
                return Err(Error::Unavailable("this node is shutting down; the wait was withdrawn".into()));
            }
        };
        let keepalive_every = {
            let applied = self.replica.applied();
            let ttl = applied.state.leases().get(lease).map_or(1_000, |l| l.ttl_ms);
            Duration::from_millis((ttl / 3).max(100))
        };
        let mut next_keepalive = Instant::now() + keepalive_every;
        let settled = |standing: Standing| match standing {
            Standing::Holding { revision, holder } => Some(Acquired::Held { revision, holder }),
            Standing::Waiting => None,
            Standing::Gone { revision, lease_alive: false } => Some(Acquired::LeaseEnded { revision, lease }),
            Standing::Gone { revision, lease_alive: true } => Some(Acquired::Withdrawn { revision }),
        };
        if caught_up {
            loop {
                if let Some(done) = settled(self.standing(kind, name, owner, lease)) {
                    // (A lease made for the request and withdrawn by another lapses by itself.)
                    guard.disarm();
                    return Ok(done);
                }
                tokio::select! {
                    _ = reg.notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => break,
                    _ = tokio::time::sleep_until(next_keepalive), if own_lease => {
                        next_keepalive += keepalive_every;
                        let node = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = node.lease_keepalive(lease, None).await {
                                tracing::debug!(%e, lease, "a waiting acquire's keepalive failed");
                            }
                        });
                    }
                    _ = seat.closed() => {
                        return Err(Error::Unavailable("this node is shutting down; the wait was withdrawn".into()));
                    }
                }
            }
        }
        // The wait ran out: leave the queue (unless the grant came first).
        let cancel = Command::LockCancel { kind, name: name.to_string(), owner: owner.to_string() };
        let outcome = self.write(cancel).await?;
        guard.disarm();
        Ok(match outcome {
            Outcome::LockCancelled { revision } => {
                if own_lease {
                    // Kept alive by this request until now, so still its own: nobody will
                    // use it.
                    self.revoke_in_background(lease);
                }
                Acquired::TimedOut { revision }
            }
            Outcome::LockHeld { revision, holder } => Acquired::Held { revision, holder },
            other => {
                // Gone at the cancel's revision (granted and then removed, or removed):
                // why, read from a state that has applied that far.
                let at = other.revision();
                let _ =
                    tokio::time::timeout_at(self.deadline(), position.wait_for(|p| p.revision >= at)).await;
                match settled(self.standing(kind, name, owner, lease)) {
                    Some(Acquired::Held { .. }) | None => Acquired::Withdrawn { revision: at },
                    Some(done) => done,
                }
            }
        })
    }

    /// The lock (or election) `name` and the revision it was read at (`None`: nobody holds
    /// or waits for it).
    pub async fn lock_info(
        self: &Arc<Self>,
        kind: Kind,
        name: &str,
        consistency: Consistency,
    ) -> Result<(u64, Option<Lock>)> {
        super::policy::check_lock_name(kind, name)?;
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let applied = self.replica.applied();
        Ok((applied.state.revision(), applied.state.locks().get(kind, name).cloned()))
    }

    /// Up to `limit` locks (or elections) after `after`, the revision they were read at,
    /// and whether more follow.
    pub async fn lock_page(
        self: &Arc<Self>,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
        visible: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(u64, Vec<(String, Lock)>, bool)> {
        let max = self.cfg.max_list_limit;
        if limit == 0 || limit > max {
            return Err(Error::InvalidArgument(format!("limit must be 1 to {max}, not {limit}")));
        }
        if let Some(a) = after {
            super::policy::check_lock_name(kind, a)?;
        }
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let applied = self.replica.applied();
        let locks = applied.state.locks();
        // Names the caller may not see are skipped, never shown nor paged through.
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_string);
        loop {
            let (page, more) = locks.page(kind, cursor.as_deref(), limit - out.len());
            cursor = page.last().map(|(n, _)| n.clone()).or(cursor);
            out.extend(page.into_iter().filter(|(n, _)| visible(n)));
            if !more || out.len() == limit {
                return Ok((applied.state.revision(), out, more));
            }
        }
    }

    /// Whether `token` is a current holder's of the lock or election `name` (Chubby's
    /// sequencer check): `(revision, valid, newest current token)`.
    pub async fn fence_check(
        self: &Arc<Self>,
        name: &str,
        token: u64,
        consistency: Consistency,
    ) -> Result<(u64, bool, Option<u64>)> {
        super::policy::check_lock_name(Kind::Lock, name)?;
        if token == 0 {
            return Err(Error::InvalidArgument("a fencing token is at least 1".into()));
        }
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let applied = self.replica.applied();
        let locks = applied.state.locks();
        Ok((applied.state.revision(), locks.holds_token(name, token), locks.current_token(name)))
    }

    /// Starts observing the election `name`: the first view is its state now (after a
    /// quorum read index, when linearizable).
    pub async fn observe(self: &Arc<Self>, name: &str, consistency: Consistency) -> Result<ElectionObserver> {
        super::policy::check_lock_name(Kind::Election, name)?;
        let seat = self.lock_seat()?;
        // Registered before the first read, so no change after it is missed.
        let reg = self.lock_hub.watch_name(Kind::Election, name);
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        Ok(ElectionObserver { node: self.clone(), name: name.to_string(), reg, seat, last: None })
    }
}

/// An election's observer: yields its state now, then every change (a new leader, a new
/// value, nobody leading). Changes that come faster than it is read are seen as the latest
/// state, so a leader that resigned is always followed by a new leader or `NoLeader`.
pub struct ElectionObserver {
    node: Arc<Node>,
    name: String,
    reg: LockRegistration,
    seat: Seat,
    /// The last view yielded: the leader's (owner, token, value), or none leading.
    last: Option<Option<(String, u64, Vec<u8>)>>,
}

impl ElectionObserver {
    /// The next change (the current state, first); `None` when the node shuts down.
    pub async fn next(&mut self) -> Option<ElectionView> {
        loop {
            let (revision, leader) = {
                let applied = self.node.replica.applied();
                let lock = applied.state.locks().get(Kind::Election, &self.name);
                (applied.state.revision(), lock.and_then(|l| l.holders.first().cloned()))
            };
            let seen = leader.as_ref().map(|h| (h.owner.clone(), h.token, h.value.clone()));
            if self.last.as_ref() != Some(&seen) {
                self.last = Some(seen);
                return Some(match leader {
                    Some(holder) => ElectionView::Leader { revision, holder },
                    None => ElectionView::NoLeader { revision },
                });
            }
            tokio::select! {
                _ = self.reg.notify.notified() => {}
                _ = self.seat.closed() => return None,
            }
        }
    }
}
