//! The root of the replicated state: everything `apply` changes lives here.
//!
//! The multi-version key space, the lease table, the lock and election table and the
//! idempotency table. A write that names a lease which does not exist is refused whole
//! (`LeaseNotFound`), so every key's, lock holder's and waiter's lease exists; a lease's
//! end deletes the keys it owns and removes its lock holders and waiters at one revision,
//! then grants the waiters that lets in, each at a revision of its own (after every lease
//! ending in the same command has left, so none of theirs is granted). The key space owns
//! the revision: a change to locks or elections takes the next one too. Every node applies
//! the same proposals in the same order to a `State` and so holds the same one, byte for
//! byte (it is what a snapshot captures). Nothing here reads a clock or does I/O: time
//! arrives inside the proposal.

use serde::{Deserialize, Serialize};

use super::command::{apply_batch, Command, Outcome, Proposal};
use super::dedup::{self, Dedup, Seen};
use super::lease::Leases;
use super::lock::{Kind, Place};
use super::locks::{AcquireArgs, Locks};
use super::mvcc::Store;
use super::txn::TxnOp;

/// The replicated state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StateImage")]
pub struct State {
    /// Keys and their history.
    kv: Store,
    /// Idempotency keys of recent writes and what they got.
    #[serde(default)]
    dedup: Dedup,
    /// Leases and the lease clock.
    #[serde(default)]
    leases: Leases,
    /// Locks and elections.
    #[serde(default)]
    locks: Locks,
}

/// A state as serialised, before what ties its parts together is checked.
#[derive(Deserialize)]
struct StateImage {
    kv: Store,
    #[serde(default)]
    dedup: Dedup,
    #[serde(default)]
    leases: Leases,
    #[serde(default)]
    locks: Locks,
}

impl TryFrom<StateImage> for State {
    type Error = String;

    /// Every lock owner's lease exists, and no token or revision of the lock table is
    /// ahead of the store (a later grant would reuse it): a damaged image is refused.
    fn try_from(s: StateImage) -> Result<State, String> {
        s.locks.check_against(s.kv.revision(), |id| s.leases.contains(id))?;
        Ok(State { kv: s.kv, dedup: s.dedup, leases: s.leases, locks: s.locks })
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// The key space.
    pub fn kv(&self) -> &Store {
        &self.kv
    }

    /// The store revision: the number of changes applied so far.
    pub fn revision(&self) -> u64 {
        self.kv.revision()
    }

    /// The idempotency table.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// The lease table.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The lock and election table.
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    /// Applies one proposal and returns what it decided. Deterministic, never panics.
    /// Idempotency entries that expired by the proposal's leader stamp go first.
    pub fn apply(&mut self, p: &Proposal) -> Outcome {
        self.locks.open_journal(self.revision());
        self.dedup.expire(p.leader_time_ms);
        match &p.cmd {
            Command::Batch { cmds } => {
                apply_batch(self, cmds, State::revision, |s, c| s.apply_one(c, p.leader_time_ms))
            }
            cmd => self.apply_one(cmd, p.leader_time_ms),
        }
    }

    /// Applies one command that is not a batch, through the idempotency table when it
    /// carries a key.
    fn apply_one(&mut self, cmd: &Command, now_ms: u64) -> Outcome {
        let Command::Idempotent { key, fingerprint, retain, cmd } = cmd else {
            return self.apply_cmd(cmd);
        };
        if matches!(cmd.as_ref(), Command::Batch { .. } | Command::Idempotent { .. }) {
            return self.nothing();
        }
        match self.dedup.seen(key, fingerprint) {
            Seen::New => {
                let outcome = self.apply_cmd(cmd);
                self.dedup.remember(key, fingerprint.clone(), outcome.clone(), now_ms, *retain);
                outcome
            }
            Seen::Replay(first) => Outcome::Replayed { first: Box::new(dedup::refill(first, cmd)) },
            Seen::Conflict => Outcome::IdempotencyConflict { revision: self.revision() },
        }
    }

    /// Applies one plain command (neither a batch nor idempotent).
    fn apply_cmd(&mut self, cmd: &Command) -> Outcome {
        let revision = self.revision();
        match cmd {
            Command::LeaseGrant { id, ttl_ms, clock_ms } => {
                match self.leases.grant(*id, *ttl_ms, *clock_ms) {
                    Some(id) => Outcome::LeaseGranted { revision, id, ttl_ms: *ttl_ms },
                    None => Outcome::LeaseExists { revision, id: id.unwrap_or(0) },
                }
            }
            Command::LeaseRevoke { id } => {
                let mut freed = Vec::new();
                let Some((deleted, revision)) = self.end_lease(*id, false, &mut freed) else {
                    return Outcome::LeaseNotFound { revision, lease: *id };
                };
                self.locks.promote_all(&mut self.kv, freed);
                Outcome::LeaseRevoked { revision, id: *id, deleted }
            }
            Command::LeaseClock { clock_ms, renew } => {
                self.leases.advance(*clock_ms);
                let missing = renew.iter().copied().filter(|id| !self.leases.renew(*id, *clock_ms)).collect();
                Outcome::LeaseClock { revision, missing }
            }
            Command::LeaseExpire { clock_ms, ids } => {
                self.leases.advance(*clock_ms);
                let mut expired = Vec::new();
                let mut freed = Vec::new();
                for id in ids {
                    let due = self.leases.get(*id).is_some_and(|l| l.expires_at <= *clock_ms);
                    if due && self.end_lease(*id, true, &mut freed).is_some() {
                        expired.push(*id);
                    }
                }
                // Only now that all of them have left: none of their waiters is granted.
                self.locks.promote_all(&mut self.kv, freed);
                Outcome::LeasesExpired { revision: self.revision(), expired }
            }
            Command::LockAcquire { kind, name, lease, ttl_ms, clock_ms, limit, wait, value } => {
                let args = AcquireArgs {
                    kind: *kind,
                    name,
                    lease: *lease,
                    ttl_ms: *ttl_ms,
                    clock_ms: *clock_ms,
                    limit: *limit,
                    wait: *wait,
                    value,
                };
                self.locks.acquire(&mut self.kv, &mut self.leases, args)
            }
            Command::LockRelease { kind, name, owner } => {
                self.locks.release(&mut self.kv, *kind, name, owner)
            }
            Command::LockCancel { kind, name, owner } => self.locks.cancel(&mut self.kv, *kind, name, owner),
            Command::Proclaim { name, owner, value } => self.locks.proclaim(&mut self.kv, name, owner, value),
            Command::Txn(txn) => {
                // Fence compares ask the lock table; a branch naming a missing lease is
                // refused whole.
                let locks = &self.locks;
                let (succeeded, ops) = txn.branch(&self.kv, &|name, token| locks.holds_token(name, token));
                let missing = ops.iter().find_map(|op| match op {
                    TxnOp::Put { lease, .. } => self.missing_lease(*lease),
                    _ => None,
                });
                if let Some(lease) = missing {
                    return Outcome::LeaseNotFound { revision, lease };
                }
                let results = self.kv.apply_branch(txn, succeeded);
                Outcome::Txn { revision: self.revision(), succeeded, results }
            }
            Command::As { subject, admin, cmd } => self.apply_as(subject, *admin, cmd),
            Command::Put { lease, .. } if self.missing_lease(*lease).is_some() => {
                Outcome::LeaseNotFound { revision, lease: lease.unwrap_or(0) }
            }
            cmd => self.kv.apply(cmd),
        }
    }

    /// Applies `cmd` on behalf of `subject`: refused whole when it names a lease someone
    /// else granted (unless `admin`); a lease it makes is `subject`'s.
    fn apply_as(&mut self, subject: &str, admin: bool, cmd: &Command) -> Outcome {
        if matches!(cmd, Command::Batch { .. } | Command::Idempotent { .. } | Command::As { .. }) {
            return self.nothing();
        }
        if !admin {
            let foreign =
                self.leases_named(cmd).into_iter().find(|l| self.leases.owned_by(*l, subject) == Some(false));
            if let Some(lease) = foreign {
                return Outcome::LeaseNotOwned { revision: self.revision(), lease };
            }
        }
        let outcome = self.apply_cmd(cmd);
        let made = match (cmd, &outcome) {
            (Command::LeaseGrant { .. }, Outcome::LeaseGranted { id, .. }) => Some(*id),
            (Command::LockAcquire { lease: None, .. }, Outcome::LockHeld { holder, .. }) => {
                Some(holder.lease)
            }
            (Command::LockAcquire { lease: None, .. }, Outcome::LockQueued { waiter, .. }) => {
                Some(waiter.lease)
            }
            _ => None,
        };
        if let Some(id) = made {
            self.leases.set_owner(id, subject);
        }
        outcome
    }

    /// The leases `cmd` would use: those it attaches keys or owners to, revokes, or whose
    /// lock owner it releases, cancels or proclaims for.
    fn leases_named(&self, cmd: &Command) -> Vec<u64> {
        let owner_lease = |kind: Kind, name: &str, owner: &str| {
            let lock = self.locks.get(kind, name)?;
            let lease = match lock.place(owner)? {
                Place::Holding(i) => lock.holders[i].lease,
                Place::Waiting(i) => lock.waiters[i].lease,
            };
            Some(lease)
        };
        match cmd {
            Command::Put { lease, .. } => lease.iter().copied().collect(),
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .filter_map(|op| match op {
                    TxnOp::Put { lease, .. } => *lease,
                    _ => None,
                })
                .collect(),
            Command::LeaseRevoke { id } => vec![*id],
            Command::LockAcquire { lease, .. } => lease.iter().copied().collect(),
            Command::LockRelease { kind, name, owner } | Command::LockCancel { kind, name, owner } => {
                owner_lease(*kind, name, owner).into_iter().collect()
            }
            Command::Proclaim { name, owner, .. } => {
                owner_lease(Kind::Election, name, owner).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The lease a write would attach a key to, when it does not exist.
    fn missing_lease(&self, lease: Option<u64>) -> Option<u64> {
        lease.filter(|l| !self.leases.contains(*l))
    }

    /// Ends lease `id`: deletes the keys it owns and removes its lock owners, all at one
    /// revision; the names they left go into `freed`, whose waiters the caller grants once
    /// every lease ending in the command has left. Returns how many keys went and the
    /// revision the lease ended at (the grants come after it), or `None` if there is no
    /// such lease.
    fn end_lease(&mut self, id: u64, expired: bool, freed: &mut Vec<(Kind, String)>) -> Option<(u64, u64)> {
        self.leases.remove(id, expired)?;
        let keys: Vec<String> = self.kv.lease_keys(id).cloned().collect();
        let has_owners = self.locks.lease_owners(id).next().is_some();
        let mut w = self.kv.write();
        let deleted = keys.iter().map(|k| w.delete(k, false).len() as u64).sum();
        if has_owners {
            // Its holders and waiters leave at the same revision as its keys.
            w.mark();
        }
        let ended = self.kv.revision();
        self.locks.end_lease(&mut self.kv, id, freed);
        Some((deleted, ended))
    }

    /// The outcome of a log entry with no business payload (blank or membership).
    pub fn nothing(&self) -> Outcome {
        Outcome::Nothing { revision: self.revision() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Condition, Retention, Txn};

    const RETAIN: Retention = Retention { window_ms: 1_000, max_entries: 100, max_bytes: u64::MAX };

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease: None,
            sequential: false,
            cond: Condition::default(),
            prev_kv: false,
        }
    }

    fn once(id: &str, cmd: Command) -> Command {
        let fingerprint = dedup::fingerprint(&cmd);
        Command::Idempotent { key: id.into(), fingerprint, retain: RETAIN, cmd: Box::new(cmd) }
    }

    fn at(time: u64, cmd: Command) -> Proposal {
        Proposal::new(cmd, time)
    }

    #[test]
    fn an_idempotent_write_applies_once_and_a_retry_gets_the_first_outcome() {
        let mut s = State::new();
        let first = s.apply(&at(0, once("k1", put("/a", "1"))));
        assert_eq!(first.revision(), 1);
        // The retry, even batched with other writes, applies nothing.
        let retry =
            s.apply(&at(10, Command::Batch { cmds: vec![once("k1", put("/a", "1")), put("/b", "x")] }));
        let Outcome::Batch { outcomes, .. } = retry else { panic!("{retry:?}") };
        assert_eq!(outcomes[0], Outcome::Replayed { first: Box::new(first.clone()) });
        assert_eq!(s.revision(), 2, "only /b was written");
        assert_eq!(s.kv().current("/a").unwrap().version, 1);
        // The same key with another request: a conflict, nothing applied.
        assert_eq!(
            s.apply(&at(20, once("k1", put("/a", "2")))),
            Outcome::IdempotencyConflict { revision: 2 }
        );
        assert_eq!(s.revision(), 2);
        // A failed condition is remembered too.
        let cas = Command::Put {
            key: "/a".into(),
            value: b"3".to_vec(),
            lease: None,
            sequential: false,
            cond: Condition { if_version: Some(7), ..Condition::default() },
            prev_kv: false,
        };
        let failed = s.apply(&at(30, once("k2", cas.clone())));
        assert!(matches!(failed, Outcome::ConditionFailed { .. }));
        assert_eq!(s.apply(&at(40, once("k2", cas))), Outcome::Replayed { first: Box::new(failed) });
    }

    fn leased(key: &str, lease: Option<u64>) -> Command {
        Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            sequential: false,
            cond: Condition::default(),
            prev_kv: false,
        }
    }

    fn grant(id: u64, ttl_ms: u64, clock_ms: u64) -> Command {
        Command::LeaseGrant { id: Some(id), ttl_ms, clock_ms }
    }

    #[test]
    fn a_lease_owns_its_keys_and_takes_them_when_it_ends() {
        let mut s = State::new();
        assert!(matches!(
            s.apply(&at(0, grant(1, 1000, 0))),
            Outcome::LeaseGranted { revision: 0, id: 1, .. }
        ));
        assert_eq!(s.apply(&at(0, grant(1, 1000, 0))), Outcome::LeaseExists { revision: 0, id: 1 });
        // A put under a lease that does not exist changes nothing.
        assert_eq!(s.apply(&at(0, leased("/x", Some(2)))), Outcome::LeaseNotFound { revision: 0, lease: 2 });
        assert_eq!(s.revision(), 0);
        s.apply(&at(0, leased("/a", Some(1))));
        s.apply(&at(0, leased("/b", Some(1))));
        s.apply(&at(0, leased("/c", None)));
        // Rewritten without the lease: no longer its key.
        s.apply(&at(0, leased("/b", None)));
        assert_eq!(s.kv().lease_keys(1).collect::<Vec<_>>(), vec!["/a"]);
        s.apply(&at(0, leased("/d", Some(1))));
        // A transaction's branch naming a missing lease is refused whole.
        let txn = Command::Txn(Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put {
                    key: "/e".into(),
                    value: b"1".to_vec(),
                    lease: None,
                    sequential: false,
                    prev_kv: false,
                },
                TxnOp::Put {
                    key: "/f".into(),
                    value: b"1".to_vec(),
                    lease: Some(9),
                    sequential: false,
                    prev_kv: false,
                },
            ],
            failure: vec![],
            max_read_bytes: 0,
            default_get_limit: 1,
        });
        let rev = s.revision();
        assert_eq!(s.apply(&at(0, txn)), Outcome::LeaseNotFound { revision: rev, lease: 9 });
        assert!(s.kv().current("/e").is_none());
        // Revoking deletes its keys, all at one revision.
        let Outcome::LeaseRevoked { revision, deleted: 2, .. } =
            s.apply(&at(0, Command::LeaseRevoke { id: 1 }))
        else {
            panic!()
        };
        assert_eq!(revision, rev + 1);
        assert!(s.kv().current("/a").is_none() && s.kv().current("/d").is_none());
        assert!(s.kv().current("/b").is_some() && s.kv().current("/c").is_some());
        assert_eq!(
            s.apply(&at(0, Command::LeaseRevoke { id: 1 })),
            Outcome::LeaseNotFound { revision, lease: 1 }
        );
        assert_eq!(s.leases().counters().revoked, 1);
    }

    #[test]
    fn an_expiry_ends_only_leases_still_expired_at_its_stamp() {
        let mut s = State::new();
        s.apply(&at(0, grant(1, 1000, 0)));
        s.apply(&at(0, grant(2, 1000, 0)));
        s.apply(&at(0, leased("/a", Some(1))));
        s.apply(&at(0, leased("/b", Some(2))));
        // Lease 2 was renewed at 900: at 1000 only lease 1 is due.
        let renewed = s.apply(&at(0, Command::LeaseClock { clock_ms: 900, renew: vec![2, 7] }));
        assert_eq!(renewed, Outcome::LeaseClock { revision: 2, missing: vec![7] });
        let out = s.apply(&at(0, Command::LeaseExpire { clock_ms: 1000, ids: vec![1, 2] }));
        assert_eq!(out, Outcome::LeasesExpired { revision: 3, expired: vec![1] });
        assert!(s.kv().current("/a").is_none() && s.kv().current("/b").is_some());
        assert_eq!(s.leases().clock_ms(), 1000);
        // A stale stamp never moves the clock back.
        s.apply(&at(0, Command::LeaseClock { clock_ms: 10, renew: vec![] }));
        assert_eq!(s.leases().clock_ms(), 1000);
        assert_eq!(s.leases().counters().expired, 1);
        // The table is part of the snapshot.
        let copy: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(copy, s);
    }

    /// Random writes, grants, revokes and expiries: every key's lease exists, and each
    /// lease's key index is exactly the keys whose current version names it.
    #[test]
    fn the_lease_index_matches_the_keys() {
        use rand::{Rng, SeedableRng};
        let keys = ["/a", "/a/b", "/a/c", "/d", "/e/f"];
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut s = State::new();
            let mut clock = 0;
            for _ in 0..300 {
                let lease = |rng: &mut rand::rngs::StdRng| (rng.gen_bool(0.6)).then(|| rng.gen_range(1..=4));
                let key = keys[rng.gen_range(0..keys.len())].to_string();
                clock += rng.gen_range(0..50);
                let cmd = match rng.gen_range(0..10) {
                    0..=3 => leased(&key, lease(&mut rng)),
                    4 => Command::Delete {
                        key,
                        recursive: rng.gen(),
                        cond: Condition::default(),
                        prev_kv: false,
                    },
                    5 => grant(rng.gen_range(1..=4), rng.gen_range(10..200), clock),
                    6 => Command::LeaseRevoke { id: rng.gen_range(1..=4) },
                    7 => Command::LeaseClock { clock_ms: clock, renew: vec![rng.gen_range(1..=4)] },
                    8 => Command::LeaseExpire { clock_ms: clock, ids: s.leases().expired(clock, 4) },
                    _ => Command::Put {
                        key,
                        value: b"s".to_vec(),
                        lease: lease(&mut rng),
                        sequential: true,
                        cond: Condition::default(),
                        prev_kv: false,
                    },
                };
                let before = s.revision();
                let out = s.apply(&at(0, cmd.clone()));
                assert!(s.revision() <= before + 4, "seed {seed}: {cmd:?} -> {out:?}");
                let mut index: Vec<(u64, String)> = Vec::new();
                for id in 1..=4 {
                    index.extend(s.kv().lease_keys(id).map(|k| (id, k.clone())));
                    if !s.leases().contains(id) {
                        assert_eq!(s.kv().lease_key_count(id), 0, "seed {seed}: ended lease {id} owns keys");
                    }
                }
                let opts = crate::store::ListOptions {
                    revision: None,
                    after: None,
                    limit: usize::MAX,
                    max_bytes: usize::MAX,
                    keys_only: true,
                };
                let mut want: Vec<(u64, String)> = s
                    .kv()
                    .list("/", &opts)
                    .unwrap()
                    .kvs
                    .into_iter()
                    .filter_map(|kv| kv.lease.map(|l| (l, kv.key)))
                    .collect();
                want.sort();
                index.sort();
                assert_eq!(index, want, "seed {seed}: after {cmd:?}");
            }
        }
    }

    #[test]
    fn idempotency_entries_expire_by_the_leader_stamp_and_survive_a_snapshot() {
        let mut s = State::new();
        s.apply(&at(1_000, once("k", put("/a", "1"))));
        let copy: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(copy, s, "the table is part of the snapshot");
        let mut s = copy;
        assert!(matches!(s.apply(&at(1_999, once("k", put("/a", "1")))), Outcome::Replayed { .. }));
        // Past the window the key is forgotten: the same request applies again.
        assert!(matches!(s.apply(&at(2_000, once("k", put("/a", "1")))), Outcome::Put { revision: 2, .. }));
        assert_eq!(s.dedup().len(), 1);
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod auth_tests;
