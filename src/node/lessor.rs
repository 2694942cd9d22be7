//! The lessor: the leader's half of leases. Only the leader keeps the lease clock, renews
//! leases that are kept alive, ticks the clock into the log, and expires leases; all of it
//! by proposing lease commands, so apply stays deterministic (see `store::lease`).
//!
//! Invariants:
//! - the clock runs only while this node leads and has applied an entry of its own term
//!   (everything earlier leaders committed is applied by then); it starts at the last
//!   replicated reading and counts on with this node's monotonic clock, so a lease never
//!   ends earlier than an earlier leader promised. It stops the moment leadership goes, and
//!   a node that does not lead never expires anything.
//! - a keepalive is answered only once the renewal it asked for is committed (which a
//!   deposed or partitioned leader cannot do) and applied; concurrent keepalives share one
//!   log entry. One that gives up waiting (its deadline, or its caller gone) is withdrawn:
//!   if the lessor had not taken it yet, it is never proposed (503, nothing happened); if
//!   it had, the renewal may still commit (504, outcome unknown). A keepalive of a lease
//!   whose time is up (or that this node does not know) is refused, even before its expiry
//!   is applied, but only once a quorum has confirmed that this node still leads (a
//!   deposed leader's table may lack a grant or a renewal).
//! - one task proposes every lease command, one at a time (renewals first, then
//!   expiries, then a tick), so a renewal and an expiry of the same lease never race, and
//!   the log carries the clock at least every `lease_checkpoint_ms` while leases exist.
//! - expiries are batched and paced (`lease_revoke_rate` leases per second), so a mass
//!   expiry shares the log with the writes instead of stalling them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use super::Node;
use crate::error::Error;
use crate::peer::{LeaseTimes, PeerError};
use crate::store::{Command, Outcome};

/// Most keepalives one renewal entry carries.
const MAX_RENEWALS: usize = 10_000;
/// Most leases one expiry entry ends.
const MAX_EXPIRIES: usize = 256;

/// The lease clock of a leader: `base_ms` (the last replicated reading when it took over)
/// at `base`, counting on in real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseClock {
    pub term: u64,
    base_ms: u64,
    base: Instant,
}

impl LeaseClock {
    /// The clock reading now.
    pub fn now_ms(&self) -> u64 {
        self.base_ms.saturating_add(self.base.elapsed().as_millis() as u64)
    }

    /// When the clock reads `at` (for sleeping until an expiry).
    fn instant_of(&self, at: u64) -> Instant {
        self.base + Duration::from_millis(at.saturating_sub(self.base_ms).min(u32::MAX as u64))
    }
}

type KeepaliveReply = oneshot::Sender<Result<LeaseTimes, PeerError>>;

/// The lessor's shared state (a field of the node).
#[derive(Default)]
pub(super) struct Lessor {
    /// The running clock while this node leads; `None` otherwise.
    clock: watch::Sender<Option<LeaseClock>>,
    /// Keepalives waiting for the next renewal entry: `(lease id, waiter, reply)`.
    pending: Mutex<Vec<(u64, u64, KeepaliveReply)>>,
    /// The next waiter number.
    next_waiter: AtomicU64,
    /// Wakes the lessor task when a keepalive arrives.
    wake: Notify,
}

impl Node {
    /// Runs the lessor for as long as the node lives: leads leases whenever this node is
    /// leader (see the module doc).
    pub(super) async fn run_lessor(node: Weak<Node>) {
        let Some(mut leadership) = node.upgrade().map(|n| n.leadership()) else { return };
        loop {
            let term = loop {
                let l = *leadership.borrow_and_update();
                if l.is_self {
                    break l.term;
                }
                if leadership.changed().await.is_err() {
                    return;
                }
            };
            let Some(n) = node.upgrade() else { return };
            let base_ms = n.replica.applied().state.leases().clock_ms();
            let clock = LeaseClock { term, base_ms, base: Instant::now() };
            n.lessor.clock.send_replace(Some(clock));
            tracing::info!(term, clock_ms = base_ms, "leading leases");
            drop(n);
            Self::lead_leases(&node, clock, &mut leadership).await;
            let Some(n) = node.upgrade() else { return };
            n.lessor.clock.send_replace(None);
            let leader = n.leadership().borrow().leader;
            let waiting = std::mem::take(&mut *n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner()));
            for (_, _, tx) in waiting {
                let _ = tx.send(Err(PeerError::NotLeader { leader }));
            }
            tracing::info!(term, "stopped leading leases");
            // The Raft core stopped (the node is shutting down): its last word may still
            // say this node leads, but nobody leads any more.
            if leadership.has_changed().is_err() {
                return;
            }
        }
    }

    /// The lessor's loop for one term of leadership; returns when it ends.
    async fn lead_leases(
        node: &Weak<Node>,
        clock: LeaseClock,
        leadership: &mut watch::Receiver<super::Leadership>,
    ) {
        let still_leads = |l: &super::Leadership| l.is_self && l.term == clock.term;
        let mut last_stamp = Instant::now();
        let mut pace = Pace::new(0);
        loop {
            if !still_leads(&leadership.borrow_and_update()) {
                return;
            }
            let Some(n) = node.upgrade() else { return };
            pace.rate = n.cfg.lease_revoke_rate;
            let checkpoint = Duration::from_millis(n.cfg.lease_checkpoint_ms);
            // 1. Renewals: every keepalive waiting, in one entry.
            let waiting: Vec<(u64, KeepaliveReply)> = {
                let mut p = n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
                let take = p.len().min(MAX_RENEWALS);
                p.drain(..take).map(|(id, _, tx)| (id, tx)).collect()
            };
            if !waiting.is_empty() {
                let ids: BTreeSet<u64> = waiting.iter().map(|(id, _)| *id).collect();
                let cmd = Command::LeaseClock { clock_ms: clock.now_ms(), renew: ids.into_iter().collect() };
                let r = n.propose_lease_command(cmd).await;
                last_stamp = Instant::now();
                let missing: BTreeSet<u64> = match &r {
                    Ok(Outcome::LeaseClock { missing, .. }) => missing.iter().copied().collect(),
                    _ => BTreeSet::new(),
                };
                let times = |id: u64| {
                    let applied = n.replica.applied();
                    applied.state.leases().get(id).map(|l| LeaseTimes {
                        id,
                        ttl_ms: l.ttl_ms,
                        remaining_ms: l.expires_at.saturating_sub(clock.now_ms()),
                    })
                };
                for (id, tx) in waiting {
                    let reply = match &r {
                        Ok(_) if missing.contains(&id) => Err(PeerError::Refused(Error::LeaseNotFound(id))),
                        Ok(_) => times(id).ok_or(PeerError::Refused(Error::LeaseNotFound(id))),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = tx.send(reply);
                }
                if matches!(r, Err(PeerError::NotLeader { .. })) {
                    return;
                }
                continue;
            }
            // 2. Expiries, paced.
            let now = clock.now_ms();
            let (due, next_expiry, any) = {
                let applied = n.replica.applied();
                let leases = applied.state.leases();
                let allowed = pace.available(Instant::now()).min(MAX_EXPIRIES);
                (leases.expired(now, allowed), leases.next_expiry(), !leases.is_empty())
            };
            if !due.is_empty() {
                pace.spend(due.len());
                let n_due = due.len();
                let r = n.propose_lease_command(Command::LeaseExpire { clock_ms: now, ids: due }).await;
                last_stamp = Instant::now();
                match r {
                    Ok(Outcome::LeasesExpired { expired, .. }) => {
                        tracing::debug!(asked = n_due, expired = expired.len(), "leases expired")
                    }
                    Err(PeerError::NotLeader { .. }) => return,
                    other => tracing::warn!(?other, "a lease expiry was not applied; trying again"),
                }
                continue;
            }
            // 3. A tick of the clock, while leases exist.
            if any && last_stamp.elapsed() >= checkpoint {
                let r =
                    n.propose_lease_command(Command::LeaseClock { clock_ms: now, renew: Vec::new() }).await;
                last_stamp = Instant::now();
                if matches!(r, Err(PeerError::NotLeader { .. })) {
                    return;
                }
                continue;
            }
            // 4. Sleep until there is something to do.
            let mut wake_at = Instant::now() + checkpoint;
            if any {
                wake_at = wake_at.min(last_stamp + checkpoint);
            }
            if let Some(at) = next_expiry {
                // An expiry held back by the pace waits for the pace, not the clock.
                wake_at = wake_at.min(clock.instant_of(at).max(pace.next_token()));
            }
            // (The node is held for at most one checkpoint interval here.)
            tokio::select! {
                _ = n.lessor.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                r = leadership.changed() => if r.is_err() { return },
            }
        }
    }

    /// Proposes a lease command on this leader, within the request deadline.
    async fn propose_lease_command(self: &Arc<Self>, cmd: Command) -> Result<Outcome, PeerError> {
        match tokio::time::timeout(self.cfg.request_timeout(), self.propose(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout),
        }
    }

    /// This leader's lease clock, waiting until `deadline` for it to start (a new leader
    /// starts it once it has applied an entry of its own term).
    pub(super) async fn lease_clock(&self, deadline: Instant) -> Result<LeaseClock, PeerError> {
        let mut rx = self.lessor.clock.subscribe();
        loop {
            if let Some(c) = *rx.borrow_and_update() {
                return Ok(c);
            }
            let leader = self.replica.leadership().borrow().leader;
            if leader != Some(self.id) {
                return Err(PeerError::NotLeader { leader });
            }
            let tick = Instant::now() + Duration::from_millis(20);
            if Instant::now() >= deadline {
                return Err(PeerError::Unavailable(
                    "this leader has not started its lease clock within the deadline".into(),
                ));
            }
            let _ = tokio::time::timeout_at(deadline.min(tick), rx.changed()).await;
        }
    }

    /// Keeps lease `id` alive, on this node as leader: answered once the renewal is
    /// committed and applied.
    pub(super) async fn local_keepalive(self: &Arc<Self>, id: u64) -> Result<LeaseTimes, PeerError> {
        let deadline = self.deadline();
        let clock = self.lease_clock(deadline).await?;
        let alive = || {
            let applied = self.replica.applied();
            applied.state.leases().get(id).is_some_and(|l| l.expires_at > clock.now_ms())
        };
        // A refusal is final for the client, so it comes only from a leader that a quorum
        // still follows: one cut off from the others may not know of the grant or of a
        // renewal the new leader committed. (An acknowledgement needs no such check: it
        // waits for the renewal to commit.)
        if !alive() {
            self.confirm_leadership(deadline).await?;
            if !alive() {
                return Err(PeerError::Refused(Error::LeaseNotFound(id)));
            }
        }
        let (tx, rx) = oneshot::channel();
        let waiter = self.lessor.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.lessor.pending.lock().unwrap_or_else(|e| e.into_inner()).push((id, waiter, tx));
        // Withdraws the keepalive if this future is dropped before it is answered.
        let _withdraw = Withdraw { lessor: &self.lessor, waiter };
        self.lessor.wake.notify_one();
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            // The lessor took it and went away without answering: proposed or not.
            Ok(Err(_)) => Err(PeerError::Timeout),
            Err(_) if self.lessor.withdraw(waiter) => Err(PeerError::Unavailable(
                "the renewal was not proposed within the deadline; nothing happened".into(),
            )),
            // Proposed, not committed yet: it may still commit.
            Err(_) => Err(PeerError::Timeout),
        }
    }

    /// Stamps this leader's lease clock into a grant (inside an idempotent write too).
    pub(super) async fn stamp_lease_clock(&self, cmd: Command) -> Result<Command, PeerError> {
        match cmd {
            Command::LeaseGrant { id, ttl_ms, .. } => {
                let clock = self.lease_clock(self.deadline()).await?;
                Ok(Command::LeaseGrant { id, ttl_ms, clock_ms: clock.now_ms() })
            }
            Command::Idempotent { key, fingerprint, retain, cmd } => {
                let cmd = Box::pin(self.stamp_lease_clock(*cmd)).await?;
                Ok(Command::Idempotent { key, fingerprint, retain, cmd: Box::new(cmd) })
            }
            cmd => Ok(cmd),
        }
    }
}

impl Lessor {
    /// Removes keepalive `waiter` if it is still waiting for the lessor to take it; true if
    /// it was (its renewal will never be proposed).
    fn withdraw(&self, waiter: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let before = p.len();
        p.retain(|(_, w, _)| *w != waiter);
        p.len() != before
    }
}

/// Withdraws a keepalive when its waiter goes away (see [`Lessor::withdraw`]).
struct Withdraw<'a> {
    lessor: &'a Lessor,
    waiter: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.lessor.withdraw(self.waiter);
    }
}

/// Paces expiries: `rate` leases per second, with up to a tenth of a second's worth in one
/// go.
struct Pace {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        // Starts full: `available` caps it at one burst.
        Pace { rate, tokens: f64::INFINITY, at: Instant::now() }
    }

    fn burst(&self) -> f64 {
        (self.rate as f64 / 10.0).max(1.0)
    }

    /// Leases that may be ended now.
    fn available(&mut self, now: Instant) -> usize {
        let add = now.saturating_duration_since(self.at).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + add).min(self.burst());
        self.at = now;
        self.tokens as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When at least one more lease may be ended.
    fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate.max(1) as f64)
    }
}
