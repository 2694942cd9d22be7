//! The lessor: the leader's half of leases. Only the leader keeps the lease clock, renews
//! leases that are kept alive, ticks the clock into the log, and expires leases; all of it
//! by proposing lease commands, so apply stays deterministic (see `store::lease`).
//!
//! Invariants:
//! - the clock runs only while this node leads and has applied an entry of its own term
//!   (everything earlier leaders committed is applied by then). It counts on from the last
//!   replicated reading, from the moment its entry reached this node (on its monotonic
//!   clock; see `Applied::lease_clock_seen`): the reading was taken before that, so a lease never ends earlier than an earlier leader
//!   promised, and the clock ran on through the election, so a lease left alone ends as
//!   soon as the new leader is in place if its time ran out meanwhile. It stops the moment
//!   leadership goes, and a node that does not lead never expires anything.
//! - a keepalive is answered only once the renewal it asked for is committed (which a
//!   deposed or partitioned leader cannot do) and applied; concurrent keepalives share one
//!   log entry. One that gives up waiting (its deadline, or its caller gone) is withdrawn:
//!   if the lessor had not taken it yet, it is never proposed (503, nothing happened); if
//!   it had, the renewal may still commit (504, outcome unknown). A keepalive of a lease
//!   whose time is up (or that this node does not know) is refused, even before its expiry
//!   is applied, but only once a quorum has confirmed that this node still leads (its read
//!   lease or a round; a
//!   deposed leader's table may lack a grant or a renewal its successor made), and never
//!   while an earlier keepalive of it is queued or in flight (that one came in time).
//! - one task decides every lease command (renewals first, then expiries, then a tick);
//!   each is proposed on its own, so a slow commit holds up nothing else, but a lease with
//!   a renewal or an expiry in flight is not expired meanwhile (nor twice). The log carries
//!   the clock at least every `lease_checkpoint_ms` while leases exist.
//! - expiries are batched and paced (`lease_revoke_rate` leases per second), so a mass
//!   expiry shares the log with the writes instead of stalling them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::Node;
use crate::error::Error;
use crate::peer::{LeaseTimes, PeerError};
use crate::store::{Command, Leases, Outcome};

/// Most keepalives one renewal entry carries...
const MAX_RENEWALS: usize = 10_000;
/// ...and most renewal entries in flight at once.
const MAX_RENEWALS_IN_FLIGHT: usize = 4;
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
    /// A leader's clock that reads `base_ms` at `base` (when it took over).
    pub fn new(term: u64, base_ms: u64, base: Instant) -> LeaseClock {
        LeaseClock { term, base_ms, base }
    }

    /// The clock reading now.
    pub fn now_ms(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The clock reading at `t`.
    pub fn at(&self, t: Instant) -> u64 {
        self.base_ms.saturating_add(t.saturating_duration_since(self.base).as_millis() as u64)
    }

    /// When the clock reads `at` (for sleeping until an expiry).
    fn instant_of(&self, at: u64) -> Instant {
        self.base + Duration::from_millis(at.saturating_sub(self.base_ms).min(u32::MAX as u64))
    }
}

type KeepaliveReply = oneshot::Sender<Result<LeaseTimes, PeerError>>;

/// Keepalives the lessor has not answered yet.
#[derive(Default)]
struct Pending {
    /// Waiting for the next renewal entry: `(lease id, waiter, reply)`.
    queue: Vec<(u64, u64, KeepaliveReply)>,
    /// For each lease, keepalives queued or with a renewal in flight. Such a lease is not
    /// expired meanwhile, nor refused as gone: a keepalive of it came in time.
    renewing: HashMap<u64, usize>,
}

impl Pending {
    fn done(&mut self, id: u64) {
        if let Entry::Occupied(mut e) = self.renewing.entry(id) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// The lessor's shared state (a field of the node).
#[derive(Default)]
pub(super) struct Lessor {
    /// The running clock while this node leads; `None` otherwise.
    clock: watch::Sender<Option<LeaseClock>>,
    /// Keepalives waiting for a renewal entry, and the leases with one queued or in flight.
    pending: Mutex<Pending>,
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
            // The clock counts on from when the last reading reached this node: it was taken
            // before then, so the clock never runs ahead of the old leader's, and it ran on
            // through the election.
            let (base_ms, seen) = {
                let a = n.replica.applied();
                (a.state.leases().clock_ms(), a.lease_clock_seen)
            };
            let clock = LeaseClock::new(term, base_ms, seen.unwrap_or_else(Instant::now));
            n.lessor.clock.send_replace(Some(clock));
            tracing::info!(term, clock_ms = base_ms, "leading leases");
            drop(n);
            Self::lead_leases(&node, clock, &mut leadership).await;
            let Some(n) = node.upgrade() else { return };
            n.lessor.clock.send_replace(None);
            let leader = n.leadership().borrow().leader;
            let waiting = {
                let mut p = n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
                let waiting = std::mem::take(&mut p.queue);
                waiting.iter().for_each(|(id, _, _)| p.done(*id));
                waiting
            };
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
        let Some(cfg) = node.upgrade().map(|n| n.cfg.clone()) else { return };
        let mut term = LeaseTerm::new(clock, Instant::now(), &cfg);
        // Every lease command is proposed by a task of its own, so a slow commit never holds
        // up the next decision; each reports on `done` when it is decided.
        let (done_tx, mut done) = mpsc::unbounded_channel::<Decided>();
        // Leases with a renewal or an expiry in flight (not expired meanwhile, nor twice).
        let mut busy: HashMap<u64, usize> = HashMap::new();
        let mut renewals = 0usize;
        loop {
            while let Ok(d) = done.try_recv() {
                if d.renewal {
                    renewals -= 1;
                }
                for id in d.ids {
                    if let Entry::Occupied(mut e) = busy.entry(id) {
                        *e.get_mut() -= 1;
                        if *e.get() == 0 {
                            e.remove();
                        }
                    }
                }
                if d.deposed {
                    return;
                }
            }
            let l = *leadership.borrow_and_update();
            if !(l.is_self && l.term == clock.term) {
                return;
            }
            let Some(n) = node.upgrade() else { return };
            if n.is_handing_over() {
                // This leader proposes nothing more: keepalives wait for its successor.
                drop(n);
                if leadership.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let (waiting, renewing) = {
                let p = n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
                let ids: std::collections::HashSet<u64> = p.renewing.keys().copied().collect();
                (renewals < MAX_RENEWALS_IN_FLIGHT && !p.queue.is_empty(), ids)
            };
            let is_busy = |id: u64| busy.contains_key(&id) || renewing.contains(&id);
            let step = term.next(Instant::now(), waiting, n.replica.applied().state.leases(), is_busy);
            let (cmd, ids, answer) = match step {
                Step::Renew { .. } => {
                    let waiting: Vec<(u64, KeepaliveReply)> = {
                        let mut p = n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
                        let take = p.queue.len().min(MAX_RENEWALS);
                        p.queue.drain(..take).map(|(id, _, tx)| (id, tx)).collect()
                    };
                    // Stamped after the keepalives were taken: each arrived before it.
                    let clock_ms = clock.now_ms();
                    let ids: Vec<u64> =
                        waiting.iter().map(|(id, _)| *id).collect::<BTreeSet<u64>>().into_iter().collect();
                    renewals += 1;
                    (Command::LeaseClock { clock_ms, renew: ids.clone() }, ids, Some(waiting))
                }
                Step::Expire { clock_ms, ids } => {
                    (Command::LeaseExpire { clock_ms, ids: ids.clone() }, ids, None)
                }
                Step::Tick { clock_ms } => {
                    (Command::LeaseClock { clock_ms, renew: Vec::new() }, Vec::new(), None)
                }
                Step::Sleep { until } => {
                    // (The node is held for at most one checkpoint interval here.)
                    tokio::select! {
                        _ = n.lessor.wake.notified() => {}
                        _ = tokio::time::sleep_until(until) => {}
                        r = leadership.changed() => if r.is_err() { return },
                        Some(d) = done.recv() => {
                            // Handled like the others at the top of the loop.
                            let _ = done_tx.send(d);
                        }
                    }
                    continue;
                }
            };
            for id in &ids {
                *busy.entry(*id).or_default() += 1;
            }
            term.stamped(Instant::now());
            let done_tx = done_tx.clone();
            let n = n.clone();
            tokio::spawn(async move {
                let expiry = matches!(cmd, Command::LeaseExpire { .. });
                let r = n.propose_lease_command(cmd).await;
                let renewal = answer.is_some();
                if let Some(waiting) = answer {
                    {
                        let mut p = n.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
                        waiting.iter().for_each(|(id, _)| p.done(*id));
                    }
                    n.answer_keepalives(waiting, &r, clock);
                }
                match &r {
                    Ok(Outcome::LeasesExpired { expired, .. }) => {
                        tracing::debug!(asked = ids.len(), expired = expired.len(), "leases expired")
                    }
                    Err(PeerError::NotLeader { .. }) | Ok(_) => {}
                    Err(e) if expiry => tracing::warn!(%e, "a lease expiry was not applied; trying again"),
                    Err(e) => tracing::debug!(%e, "a lease clock entry was not applied"),
                }
                let deposed = matches!(r, Err(PeerError::NotLeader { .. }));
                let _ = done_tx.send(Decided { ids, renewal, deposed });
            });
        }
    }

    /// Tells each waiting keepalive what its renewal (`r`) decided.
    fn answer_keepalives(
        &self,
        waiting: Vec<(u64, KeepaliveReply)>,
        r: &Result<Outcome, PeerError>,
        clock: LeaseClock,
    ) {
        let missing: BTreeSet<u64> = match r {
            Ok(Outcome::LeaseClock { missing, .. }) => missing.iter().copied().collect(),
            _ => BTreeSet::new(),
        };
        let applied = self.replica.applied();
        let now = clock.now_ms();
        for (id, tx) in waiting {
            let reply = match r {
                Ok(_) if missing.contains(&id) => Err(PeerError::Refused(Error::LeaseNotFound(id))),
                Ok(_) => applied
                    .state
                    .leases()
                    .get(id)
                    .map(|l| LeaseTimes {
                        id,
                        ttl_ms: l.ttl_ms,
                        remaining_ms: l.expires_at.saturating_sub(now),
                    })
                    .ok_or(PeerError::Refused(Error::LeaseNotFound(id))),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(reply);
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
            let l = *self.replica.leadership().borrow();
            // Only the clock of the term this node leads now (an earlier term's may still
            // be there for a moment after this node was elected again).
            if let Some(c) = rx.borrow_and_update().filter(|c| l.is_self && c.term == l.term) {
                return Ok(c);
            }
            let leader = l.leader;
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
    /// With `subject`, only a lease that subject granted.
    pub(super) async fn local_keepalive(
        self: &Arc<Self>,
        id: u64,
        subject: Option<&str>,
        deadline: Instant,
    ) -> Result<LeaseTimes, PeerError> {
        let clock = self.lease_clock(deadline).await?;
        // A lease with a keepalive queued or in flight is alive: that keepalive came in
        // time, and the lease is not expired before its renewal is decided.
        let alive = || {
            let renewing = self.lessor.renewing(id);
            let applied = self.replica.applied();
            applied.state.leases().get(id).is_some_and(|l| renewing || l.expires_at > clock.now_ms())
        };
        // A refusal is final for the client, so only a leader a quorum still follows gives
        // one. (An acknowledgement needs no such check: it waits for the renewal to commit.)
        if !alive() {
            self.confirm_lease_leader(&clock, deadline).await?;
            if !alive() {
                return Err(PeerError::Refused(Error::LeaseNotFound(id)));
            }
        }
        // Owners never change while a lease lives (and an id is never reused while it
        // lives), so what this leader applied decides.
        if let Some(subject) = subject {
            if self.replica.applied().state.leases().owned_by(id, subject) == Some(false) {
                return Err(PeerError::Refused(Error::PermissionDenied(format!(
                    "lease {id} was granted by another subject; only it (or an admin) may keep it alive"
                ))));
            }
        }
        let (tx, rx) = oneshot::channel();
        let waiter = self.lessor.next_waiter.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.lessor.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.queue.push((id, waiter, tx));
            *p.renewing.entry(id).or_default() += 1;
        }
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
    pub(super) async fn stamp_lease_clock(&self, mut cmd: Command) -> Result<Command, PeerError> {
        let mut grant = &mut cmd;
        // Inside an idempotent write, on behalf of a subject, or both.
        while let Command::Idempotent { cmd, .. } | Command::As { cmd, .. } = grant {
            grant = cmd.as_mut();
        }
        // Only a grant carries a stamp that the leader fills in; anything else passes as it is.
        if let Command::LeaseGrant { clock_ms, .. } | Command::LockAcquire { lease: None, clock_ms, .. } =
            grant
        {
            *clock_ms = self.lease_clock(self.deadline()).await?.now_ms();
        }
        Ok(cmd)
    }
}

impl Lessor {
    /// Whether lease `id` has a keepalive queued or a renewal in flight.
    pub(super) fn renewing(&self, id: u64) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).renewing.contains_key(&id)
    }

    /// Removes keepalive `waiter` if it is still waiting for the lessor to take it; true if
    /// it was (its renewal will never be proposed).
    fn withdraw(&self, waiter: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = p.queue.iter().position(|(_, w, _)| *w == waiter) else { return false };
        let (id, _, _) = p.queue.remove(at);
        p.done(id);
        true
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

/// A lease command the lessor proposed was decided.
struct Decided {
    /// The leases it renewed or expired (no longer busy).
    ids: Vec<u64>,
    /// It was a renewal (one fewer in flight).
    renewal: bool,
    /// This node turned out not to lead any more.
    deposed: bool,
}

/// What the lessor does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Renew the leases whose keepalives wait, at this clock reading.
    Renew { clock_ms: u64 },
    /// End these expired leases.
    Expire { clock_ms: u64, ids: Vec<u64> },
    /// Stamp the clock into the log.
    Tick { clock_ms: u64 },
    /// Nothing to do until then (or until a keepalive arrives).
    Sleep { until: Instant },
}

/// The lessor's decisions during one term of leadership, on a clock given to it (so they
/// can be tested with a manual one): renewals first, then paced expiries, then a tick when
/// the log has not carried the clock for a checkpoint interval.
pub(super) struct LeaseTerm {
    clock: LeaseClock,
    /// When the last lease command was decided (it carried the clock).
    last_stamp: Instant,
    checkpoint: Duration,
    pace: Pace,
}

impl LeaseTerm {
    pub fn new(clock: LeaseClock, now: Instant, cfg: &crate::config::Config) -> LeaseTerm {
        LeaseTerm {
            clock,
            last_stamp: now,
            checkpoint: Duration::from_millis(cfg.lease_checkpoint_ms),
            pace: Pace::new(cfg.lease_revoke_rate, now),
        }
    }

    /// The next step at `now`, given whether keepalives wait and the applied lease table.
    /// A lease for which `busy` is true has a renewal or an expiry in flight and is not
    /// expired meanwhile (a keepalive came in time, or its expiry is on its way).
    pub fn next(
        &mut self,
        now: Instant,
        renewals_waiting: bool,
        leases: &Leases,
        busy: impl Fn(u64) -> bool,
    ) -> Step {
        let clock_ms = self.clock.at(now);
        if renewals_waiting {
            return Step::Renew { clock_ms };
        }
        let allowed = self.pace.available(now).min(MAX_EXPIRIES);
        let ids = leases.expired_except(clock_ms, allowed, &busy);
        if !ids.is_empty() {
            self.pace.spend(ids.len());
            return Step::Expire { clock_ms, ids };
        }
        if leases.is_empty() {
            return Step::Sleep { until: now + self.checkpoint };
        }
        let tick_at = self.last_stamp + self.checkpoint;
        if now >= tick_at {
            return Step::Tick { clock_ms };
        }
        let mut until = tick_at;
        if let Some(at) = leases.next_expiry_except(&busy) {
            // An expiry held back by the pace waits for the pace, not the clock.
            until = until.min(self.clock.instant_of(at).max(self.pace.next_token()));
        }
        Step::Sleep { until: until.max(now) }
    }

    /// A lease command carrying the clock was committed (or given up on) at `now`.
    pub fn stamped(&mut self, now: Instant) {
        self.last_stamp = now;
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
    fn new(rate: u64, now: Instant) -> Pace {
        // Starts full: `available` caps it at one burst.
        Pace { rate, tokens: f64::INFINITY, at: now }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::{Proposal, State};

    fn cfg(checkpoint_ms: u64, rate: u64) -> Config {
        let mut c = Config::defaults();
        c.lease_checkpoint_ms = checkpoint_ms;
        c.lease_revoke_rate = rate;
        c
    }

    fn apply(s: &mut State, cmd: Command) -> Outcome {
        s.apply(&Proposal::new(cmd, 0))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A new leader counts on from the last replicated reading: a lease an earlier leader
    /// had left 1 s of ends 1 s after the takeover, not a whole TTL later, and not earlier.
    #[test]
    fn a_new_leader_resumes_the_clock_instead_of_resetting_leases() {
        let mut s = State::new();
        // Granted with a 10 s TTL at reading 0; the old leader's last stamp read 9,000.
        apply(&mut s, Command::LeaseGrant { id: Some(1), ttl_ms: 10_000, clock_ms: 0 });
        apply(&mut s, Command::LeaseClock { clock_ms: 9_000, renew: vec![] });
        let t0 = Instant::now();
        let clock = LeaseClock::new(2, s.leases().clock_ms(), t0);
        let mut term = LeaseTerm::new(clock, t0, &cfg(500, 1000));
        // Not due a millisecond early: it sleeps until exactly then (or the next tick).
        match term.next(t0 + ms(499), false, s.leases(), |_| false) {
            Step::Sleep { until } => assert_eq!(until, t0 + ms(500)),
            other => panic!("{other:?}"),
        }
        assert_eq!(term.next(t0 + ms(500), false, s.leases(), |_| false), Step::Tick { clock_ms: 9_500 });
        term.stamped(t0 + ms(500));
        match term.next(t0 + ms(900), false, s.leases(), |_| false) {
            Step::Sleep { until } => assert_eq!(until, t0 + ms(1000), "due at reading 10,000"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            term.next(t0 + ms(1000), false, s.leases(), |_| false),
            Step::Expire { clock_ms: 10_000, ids: vec![1] }
        );
    }

    #[test]
    fn keepalives_go_first_and_a_renewed_lease_is_not_due() {
        let mut s = State::new();
        apply(&mut s, Command::LeaseGrant { id: Some(1), ttl_ms: 2_000, clock_ms: 0 });
        let t0 = Instant::now();
        let clock = LeaseClock::new(1, 0, t0);
        let mut term = LeaseTerm::new(clock, t0, &cfg(500, 1000));
        // Due, but a keepalive waits: it is renewed first.
        let step = term.next(t0 + ms(2_000), true, s.leases(), |_| false);
        assert_eq!(step, Step::Renew { clock_ms: 2_000 });
        let Step::Renew { clock_ms } = step else { unreachable!() };
        apply(&mut s, Command::LeaseClock { clock_ms, renew: vec![1] });
        term.stamped(t0 + ms(2_000));
        assert_eq!(s.leases().get(1).unwrap().expires_at, 4_000);
        assert!(matches!(term.next(t0 + ms(2_001), false, s.leases(), |_| false), Step::Sleep { .. }));
    }

    #[test]
    fn a_lease_whose_renewal_is_in_flight_is_not_expired_meanwhile() {
        let mut s = State::new();
        apply(&mut s, Command::LeaseGrant { id: Some(1), ttl_ms: 2_000, clock_ms: 0 });
        apply(&mut s, Command::LeaseGrant { id: Some(2), ttl_ms: 3_000, clock_ms: 0 });
        let t0 = Instant::now();
        let mut term = LeaseTerm::new(LeaseClock::new(1, 0, t0), t0, &cfg(10_000, 1000));
        // Lease 1 is due, but a renewal of it is in flight: nothing to do until lease 2 is.
        match term.next(t0 + ms(2_500), false, s.leases(), |id| id == 1) {
            Step::Sleep { until } => assert_eq!(until, t0 + ms(3_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            term.next(t0 + ms(3_000), false, s.leases(), |id| id == 1),
            Step::Expire { clock_ms: 3_000, ids: vec![2] }
        );
        assert_eq!(
            term.next(t0 + ms(3_000), false, s.leases(), |_| false),
            Step::Expire { clock_ms: 3_000, ids: vec![1, 2] }
        );
    }

    #[test]
    fn the_clock_ticks_only_while_leases_exist() {
        let mut s = State::new();
        let t0 = Instant::now();
        let mut term = LeaseTerm::new(LeaseClock::new(1, 0, t0), t0, &cfg(500, 1000));
        assert!(matches!(term.next(t0 + ms(5_000), false, s.leases(), |_| false), Step::Sleep { .. }));
        apply(&mut s, Command::LeaseGrant { id: Some(1), ttl_ms: 60_000, clock_ms: 0 });
        assert_eq!(term.next(t0 + ms(5_000), false, s.leases(), |_| false), Step::Tick { clock_ms: 5_000 });
        term.stamped(t0 + ms(5_000));
        match term.next(t0 + ms(5_100), false, s.leases(), |_| false) {
            Step::Sleep { until } => assert_eq!(until, t0 + ms(5_500)),
            other => panic!("{other:?}"),
        }
    }

    /// 10,000 leases due at once, at 1,000 per second: never more than a tenth of a
    /// second's worth at a time, about 1,000 in the first second.
    #[test]
    fn a_mass_expiry_is_paced() {
        let mut s = State::new();
        for id in 1..=10_000 {
            apply(&mut s, Command::LeaseGrant { id: Some(id), ttl_ms: 2_000, clock_ms: 0 });
        }
        let t0 = Instant::now();
        let mut term = LeaseTerm::new(LeaseClock::new(1, 0, t0), t0, &cfg(500, 1000));
        let mut now = t0 + ms(2_000);
        let mut ended = 0;
        while now < t0 + ms(3_000) {
            match term.next(now, false, s.leases(), |_| false) {
                Step::Expire { clock_ms, ids } => {
                    assert!(ids.len() <= 100, "a burst of {}", ids.len());
                    ended += ids.len();
                    apply(&mut s, Command::LeaseExpire { clock_ms, ids });
                    term.stamped(now);
                }
                Step::Tick { .. } => term.stamped(now),
                Step::Sleep { until } => {
                    assert!(until > now, "sleeps forward");
                    now = until;
                }
                Step::Renew { .. } => unreachable!(),
            }
        }
        assert!((1_000..=1_110).contains(&ended), "{ended} ended in the first second");
        assert_eq!(s.leases().len(), 10_000 - ended);
    }
}
