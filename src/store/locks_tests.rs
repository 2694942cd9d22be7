//! State-machine tests of locks, elections and fencing tokens, all through `State::apply`:
//! FIFO hand-offs at revisions of their own, grants decided in apply (a waiter whose lease
//! ended is never granted), try-once, semaphores, release and cancel, elections, the txn
//! fence compare, snapshots (and the damaged images they refuse), and a randomized run
//! that checks the table's invariants after every step.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::store::{Command, Compare, CompareOp, CompareTarget, Proposal, State, Txn, TxnOp};

// ---- helpers ----

fn apply(s: &mut State, cmd: Command) -> Outcome {
    s.apply(&Proposal::new(cmd, 0))
}

fn grant(id: u64, ttl_ms: u64, clock_ms: u64) -> Command {
    Command::LeaseGrant { id: Some(id), ttl_ms, clock_ms }
}

fn revoke(id: u64) -> Command {
    Command::LeaseRevoke { id }
}

fn expire(clock_ms: u64, ids: &[u64]) -> Command {
    Command::LeaseExpire { clock_ms, ids: ids.to_vec() }
}

fn acquire(
    kind: Kind,
    name: &str,
    lease: Option<u64>,
    limit: Option<u32>,
    wait: bool,
    value: &str,
) -> Command {
    Command::LockAcquire {
        kind,
        name: name.into(),
        lease,
        ttl_ms: 1_000,
        clock_ms: 0,
        limit,
        wait,
        value: value.as_bytes().to_vec(),
    }
}

/// Acquires mutex (or semaphore) `name` under `lease`, waiting if need be.
fn lock(name: &str, lease: u64) -> Command {
    acquire(Kind::Lock, name, Some(lease), None, true, "")
}

fn campaign(name: &str, lease: u64, value: &str) -> Command {
    acquire(Kind::Election, name, Some(lease), None, true, value)
}

fn release(kind: Kind, name: &str, owner: &str) -> Command {
    Command::LockRelease { kind, name: name.into(), owner: owner.into() }
}

fn cancel(kind: Kind, name: &str, owner: &str) -> Command {
    Command::LockCancel { kind, name: name.into(), owner: owner.into() }
}

fn proclaim(name: &str, owner: &str, value: &str) -> Command {
    Command::Proclaim { name: name.into(), owner: owner.into(), value: value.as_bytes().to_vec() }
}

/// A state with leases `ids`, each of a long TTL granted at clock 0 (no revision taken).
fn with_leases(ids: &[u64]) -> State {
    let mut s = State::new();
    for &id in ids {
        assert!(matches!(apply(&mut s, grant(id, 1_000_000, 0)), Outcome::LeaseGranted { .. }));
    }
    s
}

/// The holder an immediate grant (or a cancel that came too late) reports.
fn held(o: Outcome) -> Holder {
    match o {
        Outcome::LockHeld { holder, .. } => holder,
        o => panic!("not held: {o:?}"),
    }
}

/// An immediate grant: it took the next revision, which is its token.
fn granted(s: &mut State, cmd: Command) -> Holder {
    let before = s.revision();
    let o = apply(s, cmd);
    assert_eq!(o.revision(), before + 1, "{o:?}");
    let h = held(o);
    assert_eq!(h.token, before + 1, "the token is the revision of the grant");
    h
}

/// A wait: it took the next revision, at `position` in the queue.
fn queued(s: &mut State, cmd: Command, position: u64) -> Waiter {
    let before = s.revision();
    match apply(s, cmd) {
        Outcome::LockQueued { revision, waiter, position: p } => {
            assert_eq!((revision, waiter.since, p), (before + 1, before + 1, position));
            waiter
        }
        o => panic!("not queued: {o:?}"),
    }
}

fn holders(s: &State, kind: Kind, name: &str) -> Vec<(String, u64)> {
    s.locks()
        .get(kind, name)
        .map_or(vec![], |l| l.holders.iter().map(|h| (h.owner.clone(), h.token)).collect())
}

fn waiters(s: &State, kind: Kind, name: &str) -> Vec<String> {
    s.locks().get(kind, name).map_or(vec![], |l| l.waiters.iter().map(|w| w.owner.clone()).collect())
}

/// The journal after `after`, as `(revision, owner)`.
fn journal(s: &State, after: u64) -> Vec<(u64, String)> {
    s.locks()
        .events_after(after)
        .expect("the journal reaches back")
        .map(|e| (e.revision, e.owner.clone()))
        .collect()
}

/// Applies `cmd` and asserts it changed nothing at all.
fn unchanged(s: &mut State, cmd: Command) -> Outcome {
    let before = s.clone();
    let o = apply(s, cmd);
    assert_eq!(o.revision(), before.revision(), "{o:?}");
    assert_eq!(*s, before, "{o:?} changed the state");
    o
}

fn fence_txn(name: &str, op: CompareOp, token: u64) -> Command {
    Command::Txn(Txn {
        compare: vec![Compare { key: name.into(), op, target: CompareTarget::Fence(token) }],
        success: vec![TxnOp::Put {
            key: "/guarded".into(),
            value: token.to_string().into_bytes(),
            lease: None,
            sequential: false,
            prev_kv: false,
        }],
        failure: vec![],
        max_read_bytes: 0,
        default_get_limit: 1,
    })
}

/// Whether a fenced txn with `token` ran its success branch (which writes `/guarded`).
fn fenced(s: &mut State, name: &str, op: CompareOp, token: u64) -> bool {
    let before = s.revision();
    match apply(s, fence_txn(name, op, token)) {
        Outcome::Txn { succeeded: true, revision, .. } => {
            assert_eq!(revision, before + 1);
            true
        }
        Outcome::Txn { succeeded: false, revision, .. } => {
            assert_eq!(revision, before, "a failed compare changes nothing");
            false
        }
        o => panic!("{o:?}"),
    }
}

// ---- FIFO order and hand-offs ----

#[test]
fn mutex_waiters_are_granted_in_queue_order_each_at_a_revision_of_its_own() {
    let mut s = with_leases(&[1, 2, 3, 4]);
    let a = granted(&mut s, lock("m", 1));
    assert_eq!((a.token, a.owner.as_str()), (1, "1-1"));
    let b = queued(&mut s, lock("m", 2), 0);
    let c = queued(&mut s, lock("m", 3), 1);
    let d = queued(&mut s, lock("m", 4), 2);
    assert_eq!(waiters(&s, Kind::Lock, "m"), [b.owner.as_str(), c.owner.as_str(), d.owner.as_str()]);

    // Each release hands off: released at R, the next waiter granted at R + 1.
    let mut last = a.token;
    for (from, to) in [(&a.owner, &b.owner), (&b.owner, &c.owner), (&c.owner, &d.owner)] {
        let r = s.revision() + 1;
        // The release reports its own revision; the hand-off follows it.
        let out = apply(&mut s, release(Kind::Lock, "m", from));
        assert_eq!((out, s.revision()), (Outcome::LockReleased { revision: r, held: true }, r + 1));
        assert_eq!(holders(&s, Kind::Lock, "m"), [(to.clone(), r + 1)]);
        assert_eq!(journal(&s, r - 1), [(r, from.clone()), (r + 1, to.clone())]);
        assert_eq!(s.locks().get(Kind::Lock, "m").unwrap().revision, r + 1);
        assert!(r + 1 > last, "tokens of a name strictly increase");
        last = r + 1;
    }
    assert_eq!(last, 10);
    assert!(waiters(&s, Kind::Lock, "m").is_empty());

    // The last release leaves the name idle: forgotten, at a revision of its own.
    assert_eq!(
        apply(&mut s, release(Kind::Lock, "m", &d.owner)),
        Outcome::LockReleased { revision: 11, held: true }
    );
    assert!(s.locks().get(Kind::Lock, "m").is_none() && s.locks().is_empty());
    assert_eq!(s.locks().owners(), 0);
    assert_eq!(s.locks().counters(), LockCounters { grants: 4, handoffs: 3, waits: 3, lease_ended: 0 });
}

#[test]
fn a_waiter_whose_lease_ends_is_never_granted_and_the_next_live_one_is() {
    let mut s = with_leases(&[1, 3, 4]);
    apply(&mut s, grant(2, 100, 0));
    let a = granted(&mut s, lock("m", 1));
    let w2 = queued(&mut s, lock("m", 2), 0);
    let w3 = queued(&mut s, lock("m", 3), 1);
    let w4 = queued(&mut s, lock("m", 4), 2);

    // Lease 2 expires: its waiter leaves at a revision of its own; nobody is granted.
    assert_eq!(apply(&mut s, expire(100, &[2])), Outcome::LeasesExpired { revision: 5, expired: vec![2] });
    assert_eq!(holders(&s, Kind::Lock, "m"), [(a.owner.clone(), 1)]);
    assert_eq!(waiters(&s, Kind::Lock, "m"), [w3.owner.as_str(), w4.owner.as_str()]);
    // Lease 3 is revoked: the same.
    assert_eq!(apply(&mut s, revoke(3)), Outcome::LeaseRevoked { revision: 6, id: 3, deleted: 0 });
    assert_eq!(waiters(&s, Kind::Lock, "m"), [w4.owner.as_str()]);
    assert_eq!(s.locks().lease_owners(2).count() + s.locks().lease_owners(3).count(), 0);

    // The holder releases: the next live waiter (lease 4) is granted.
    assert_eq!(
        apply(&mut s, release(Kind::Lock, "m", &a.owner)),
        Outcome::LockReleased { revision: 7, held: true }
    );
    assert_eq!(holders(&s, Kind::Lock, "m"), [(w4.owner.clone(), 8)]);
    assert_eq!(
        journal(&s, 4),
        [(5, w2.owner.clone()), (6, w3.owner.clone()), (7, a.owner.clone()), (8, w4.owner.clone())]
    );
    assert_eq!(s.locks().counters(), LockCounters { grants: 2, handoffs: 1, waits: 3, lease_ended: 2 });
}

#[test]
fn a_holders_lease_end_takes_its_keys_and_entries_at_one_revision_then_grants_each_at_its_own() {
    let mut s = with_leases(&[1, 2, 3, 4]);
    let put = Command::Put {
        key: "/k".into(),
        value: b"v".to_vec(),
        lease: Some(1),
        sequential: false,
        cond: Default::default(),
        prev_kv: false,
    };
    assert_eq!(apply(&mut s, put).revision(), 1);
    let m1 = granted(&mut s, lock("m", 1)); // 2
    let s1 = granted(&mut s, acquire(Kind::Lock, "s", Some(1), Some(2), true, "")); // 3
    let s2 = granted(&mut s, lock("s", 2)); // 4
    let m3 = queued(&mut s, lock("m", 3), 0); // 5
    let s3 = queued(&mut s, lock("s", 3), 0); // 6
    let s4 = queued(&mut s, lock("s", 4), 1); // 7
    let s1b = queued(&mut s, lock("s", 1), 2); // 8: lease 1 also waits on "s"

    // Revoking lease 1: its key and its three entries go at 9; then "m" and "s" each hand
    // off at a revision of its own (names in order).
    assert_eq!(apply(&mut s, revoke(1)), Outcome::LeaseRevoked { revision: 9, id: 1, deleted: 1 });
    assert_eq!(s.revision(), 11);
    assert!(s.kv().get("/k", Some(8)).unwrap().1.is_some());
    assert!(s.kv().get("/k", Some(9)).unwrap().1.is_none());
    let mut gone = journal(&s, 8);
    gone.truncate(3);
    gone.sort();
    assert_eq!(gone, [(9, m1.owner.clone()), (9, s1.owner.clone()), (9, s1b.owner.clone())]);
    assert_eq!(journal(&s, 9), [(10, m3.owner.clone()), (11, s3.owner.clone())]);
    assert_eq!(holders(&s, Kind::Lock, "m"), [(m3.owner.clone(), 10)]);
    assert_eq!(holders(&s, Kind::Lock, "s"), [(s2.owner.clone(), 4), (s3.owner.clone(), 11)]);
    assert_eq!(waiters(&s, Kind::Lock, "s"), [s4.owner.as_str()]);
    assert_eq!(s.locks().counters().lease_ended, 3);

    // A holder's lease expiring hands off the same way: lease 3 holds "m" and "s".
    let m4 = queued(&mut s, lock("m", 4), 0); // 12
    let out = apply(&mut s, expire(1_000_000, &[3]));
    assert_eq!(out, Outcome::LeasesExpired { revision: 15, expired: vec![3] });
    assert_eq!(
        journal(&s, 12),
        [(13, m3.owner), (13, s3.owner), (14, m4.owner.clone()), (15, s4.owner.clone())]
    );
    assert_eq!(holders(&s, Kind::Lock, "m"), [(m4.owner, 14)]);
    assert_eq!(holders(&s, Kind::Lock, "s"), [(s2.owner, 4), (s4.owner, 15)]);
    assert_eq!(s.locks().counters().lease_ended, 5);
}

#[test]
fn leases_ending_together_never_grant_to_one_another() {
    // Lease 1 holds, lease 2 waits, lease 3 waits: 1 and 2 expire in one command.
    let mut s = State::new();
    apply(&mut s, grant(1, 100, 0));
    apply(&mut s, grant(2, 100, 0));
    apply(&mut s, grant(3, 1_000, 0));
    let a = granted(&mut s, lock("m", 1));
    let w2 = queued(&mut s, lock("m", 2), 0);
    let w3 = queued(&mut s, lock("m", 3), 1);
    let out = apply(&mut s, expire(100, &[1, 2]));
    assert_eq!(out, Outcome::LeasesExpired { revision: 6, expired: vec![1, 2] });
    // Each lease leaves at its own revision; only then is the live waiter granted.
    assert_eq!(journal(&s, 3), [(4, a.owner.clone()), (5, w2.owner.clone()), (6, w3.owner.clone())]);
    assert_eq!(holders(&s, Kind::Lock, "m"), [(w3.owner.clone(), 6)]);
    assert_eq!(s.locks().counters(), LockCounters { grants: 2, handoffs: 1, waits: 2, lease_ended: 2 });

    // The same for an election: a candidate whose lease ends with the leader's never leads.
    let mut s = State::new();
    apply(&mut s, grant(1, 100, 0));
    apply(&mut s, grant(2, 100, 0));
    let leader = granted(&mut s, campaign("e", 1, "a"));
    let next = queued(&mut s, campaign("e", 2, "b"), 0);
    apply(&mut s, expire(100, &[1, 2]));
    assert_eq!(journal(&s, 2), [(3, leader.owner), (4, next.owner)]);
    assert!(s.locks().is_empty());
    assert_eq!(s.locks().counters().handoffs, 0);
}

// ---- try once ----

#[test]
fn try_once_on_a_held_lock_is_busy_and_changes_nothing() {
    let mut s = with_leases(&[1, 2]);
    let a = granted(&mut s, lock("m", 1));
    let try_once = |lease| acquire(Kind::Lock, "m", lease, None, false, "");
    assert_eq!(unchanged(&mut s, try_once(Some(2))), Outcome::LockBusy { revision: 1 });
    // With a TTL instead of a lease: busy, and no lease was created for it (nor did the
    // lease clock move to its stamp).
    let Command::LockAcquire { kind, name, ttl_ms, limit, wait, value, .. } = try_once(None) else {
        unreachable!()
    };
    let stamped =
        Command::LockAcquire { kind, name, lease: None, ttl_ms, clock_ms: 5_000, limit, wait, value };
    assert_eq!(unchanged(&mut s, stamped), Outcome::LockBusy { revision: 1 });
    assert_eq!((s.leases().len(), s.leases().clock_ms()), (2, 0));
    // Busy is decided before the lease is looked up.
    assert_eq!(unchanged(&mut s, try_once(Some(9))), Outcome::LockBusy { revision: 1 });
    // A missing lease on a free name: refused, nothing changed.
    let free = acquire(Kind::Lock, "free", Some(9), None, false, "");
    assert_eq!(unchanged(&mut s, free), Outcome::LeaseNotFound { revision: 1, lease: 9 });
    // With waiters queued (held to the limit), a try is busy too.
    let b = queued(&mut s, lock("m", 2), 0);
    assert_eq!(unchanged(&mut s, try_once(Some(1))), Outcome::LockBusy { revision: 2 });

    // Once released, a try with a TTL is granted under a lease created for it.
    apply(&mut s, release(Kind::Lock, "m", &a.owner));
    assert_eq!(
        apply(&mut s, release(Kind::Lock, "m", &b.owner)),
        Outcome::LockReleased { revision: 5, held: true }
    );
    let h = granted(&mut s, try_once(None));
    assert!(h.lease > 2 && s.leases().contains(h.lease));
    assert_eq!(s.leases().get(h.lease).unwrap().ttl_ms, 1_000);
    assert_eq!(s.locks().lease_owners(h.lease).count(), 1);
}

// ---- semaphores ----

#[test]
fn a_semaphore_grants_up_to_its_limit_then_queues() {
    let mut s = with_leases(&[1, 2, 3, 4, 5]);
    let sem = |lease, limit| acquire(Kind::Lock, "s", Some(lease), limit, true, "");
    let h: Vec<Holder> = (1..=3).map(|l| granted(&mut s, sem(l, Some(3)))).collect();
    assert_eq!(h.iter().map(|h| h.token).collect::<Vec<_>>(), [1, 2, 3], "distinct, increasing");
    assert_eq!(s.locks().get(Kind::Lock, "s").unwrap().limit, 3);
    let w4 = queued(&mut s, sem(4, Some(3)), 0);

    // Another limit: refused, nothing changed (waiting or not).
    assert_eq!(unchanged(&mut s, sem(5, Some(2))), Outcome::LockLimitMismatch { revision: 4, limit: 3 });
    let try_other = acquire(Kind::Lock, "s", Some(5), Some(1), false, "");
    assert_eq!(unchanged(&mut s, try_other), Outcome::LockLimitMismatch { revision: 4, limit: 3 });
    // No limit given: the name's is taken.
    let w5 = queued(&mut s, sem(5, None), 1);

    // A middle holder leaves: the first waiter takes its place; holders stay in token order.
    assert_eq!(apply(&mut s, release(Kind::Lock, "s", &h[1].owner)).revision(), 6);
    let toks: Vec<u64> = holders(&s, Kind::Lock, "s").iter().map(|h| h.1).collect();
    assert_eq!(toks, [1, 3, 7]);
    assert_eq!(holders(&s, Kind::Lock, "s")[2].0, w4.owner);
    assert_eq!(s.locks().get(Kind::Lock, "s").unwrap().check(), Ok(()));
    // A holder's lease ends: the last waiter takes its place.
    apply(&mut s, revoke(1));
    assert_eq!(holders(&s, Kind::Lock, "s").iter().map(|h| h.1).collect::<Vec<_>>(), [3, 7, 9]);
    assert_eq!(holders(&s, Kind::Lock, "s")[2].0, w5.owner);

    // Once idle, the name is forgotten and a new limit can be set.
    for (owner, _) in holders(&s, Kind::Lock, "s") {
        apply(&mut s, release(Kind::Lock, "s", &owner));
    }
    assert!(s.locks().get(Kind::Lock, "s").is_none());
    granted(&mut s, sem(2, Some(5)));
    assert_eq!(s.locks().get(Kind::Lock, "s").unwrap().limit, 5);
    // A limit of 0 (never proposed by the node) is taken as 1.
    granted(&mut s, acquire(Kind::Lock, "z", Some(2), Some(0), true, ""));
    assert_eq!(s.locks().get(Kind::Lock, "z").unwrap().limit, 1);
}

// ---- release and cancel ----

#[test]
fn release_and_cancel_of_holders_waiters_and_strangers() {
    let mut s = with_leases(&[1, 2, 3]);
    let a = granted(&mut s, lock("m", 1));
    let b = queued(&mut s, lock("m", 2), 0);
    let c = queued(&mut s, lock("m", 3), 1);

    // Unknown owners (or the right owner in the wrong name space): nothing changes.
    for cmd in [
        release(Kind::Lock, "m", "1-99"),
        release(Kind::Lock, "other", &a.owner),
        release(Kind::Election, "m", &a.owner),
        cancel(Kind::Lock, "m", "nobody"),
    ] {
        assert_eq!(unchanged(&mut s, cmd), Outcome::OwnerNotFound { revision: 3 });
    }

    // A waiter releasing withdraws from the queue (held: false); nobody is granted.
    assert_eq!(
        apply(&mut s, release(Kind::Lock, "m", &b.owner)),
        Outcome::LockReleased { revision: 4, held: false }
    );
    assert_eq!(waiters(&s, Kind::Lock, "m"), [c.owner.as_str()]);
    assert_eq!(holders(&s, Kind::Lock, "m"), [(a.owner.clone(), 1)]);
    assert_eq!(journal(&s, 3), [(4, b.owner.clone())]);
    // Released twice: the second finds nobody.
    assert_eq!(unchanged(&mut s, release(Kind::Lock, "m", &b.owner)), Outcome::OwnerNotFound { revision: 4 });

    // A waiter whose wait ran out is cancelled at a revision of its own.
    let d = queued(&mut s, lock("m", 2), 1);
    assert_eq!(apply(&mut s, cancel(Kind::Lock, "m", &d.owner)), Outcome::LockCancelled { revision: 6 });
    assert_eq!(waiters(&s, Kind::Lock, "m"), [c.owner.as_str()]);
    assert_eq!(s.locks().lease_owners(2).count(), 0);

    // One granted before its cancel arrived keeps the lock: told it holds, nothing changed.
    apply(&mut s, release(Kind::Lock, "m", &a.owner));
    let got = unchanged(&mut s, cancel(Kind::Lock, "m", &c.owner));
    assert_eq!(
        got,
        Outcome::LockHeld {
            revision: 8,
            holder: Holder { owner: c.owner.clone(), lease: 3, token: 8, value: vec![] }
        }
    );
    assert_eq!(s.locks().counters(), LockCounters { grants: 2, handoffs: 1, waits: 3, lease_ended: 0 });
}

// ---- elections ----

#[test]
fn an_election_has_one_leader_who_proclaims_and_hands_off_on_resign() {
    let mut s = with_leases(&[1, 2, 3]);
    let l1 = granted(&mut s, campaign("e", 1, "node-a"));
    assert_eq!(l1.value, b"node-a");
    let c2 = queued(&mut s, campaign("e", 2, "node-b"), 0);
    let c3 = queued(&mut s, campaign("e", 3, "node-c"), 1);
    assert_eq!(holders(&s, Kind::Election, "e").len(), 1);

    // The leader proclaims: a new value at a new revision, the token unchanged.
    let p = apply(&mut s, proclaim("e", &l1.owner, "node-a2"));
    let want = Holder { value: b"node-a2".to_vec(), ..l1.clone() };
    assert_eq!(p, Outcome::Proclaimed { revision: 4, holder: want.clone() });
    let e = s.locks().get(Kind::Election, "e").unwrap();
    assert_eq!((e.revision, &e.holders[0]), (4, &want));
    assert_eq!(journal(&s, 3), [(4, l1.owner.clone())]);

    // A candidate, a stranger, an unknown election: not the leader, nothing changed.
    for cmd in [proclaim("e", &c2.owner, "x"), proclaim("e", "9-9", "x"), proclaim("nope", &l1.owner, "x")] {
        assert_eq!(unchanged(&mut s, cmd), Outcome::NotLeader { revision: 4 });
    }

    // The leader resigns: the first candidate leads, with its own value and a new token.
    apply(&mut s, release(Kind::Election, "e", &l1.owner));
    let e = s.locks().get(Kind::Election, "e").unwrap();
    assert_eq!(
        e.holders,
        [Holder { owner: c2.owner.clone(), lease: 2, token: 6, value: b"node-b".to_vec() }]
    );
    assert_eq!(e.waiters.iter().map(|w| &w.owner).collect::<Vec<_>>(), [&c3.owner]);
    // The old leader can no longer proclaim.
    assert_eq!(unchanged(&mut s, proclaim("e", &l1.owner, "x")), Outcome::NotLeader { revision: 6 });
    // The new one can.
    assert!(matches!(apply(&mut s, proclaim("e", &c2.owner, "b2")), Outcome::Proclaimed { revision: 7, .. }));

    // An idle election asked for another limit still gets 1.
    let mut t = with_leases(&[1, 2]);
    granted(&mut t, acquire(Kind::Election, "f", Some(1), Some(3), true, "x"));
    assert_eq!(t.locks().get(Kind::Election, "f").unwrap().limit, 1);
    queued(&mut t, campaign("f", 2, "y"), 0);
}

#[test]
fn locks_and_elections_of_one_name_are_separate_name_spaces() {
    let mut s = with_leases(&[1, 2]);
    let l = granted(&mut s, lock("x", 1));
    let e = granted(&mut s, campaign("x", 2, "v"));
    assert_eq!(s.locks().len(), 2);
    // A lock owner cannot proclaim, nor resign from, the election (and the reverse).
    assert_eq!(unchanged(&mut s, proclaim("x", &l.owner, "z")), Outcome::NotLeader { revision: 2 });
    assert_eq!(
        unchanged(&mut s, release(Kind::Election, "x", &l.owner)),
        Outcome::OwnerNotFound { revision: 2 }
    );
    assert_eq!(unchanged(&mut s, release(Kind::Lock, "x", &e.owner)), Outcome::OwnerNotFound { revision: 2 });
    // A fence on the name accepts either one's token.
    assert!(s.locks().holds_token("x", l.token) && s.locks().holds_token("x", e.token));
    assert_eq!(s.locks().current_token("x"), Some(2));
    // Releasing the lock leaves the election as it was.
    apply(&mut s, release(Kind::Lock, "x", &l.owner));
    assert!(s.locks().get(Kind::Lock, "x").is_none());
    assert_eq!(holders(&s, Kind::Election, "x"), [(e.owner.clone(), 2)]);
    assert!(!s.locks().holds_token("x", l.token));
    let (page, more) = s.locks().page(Kind::Election, None, 10);
    assert_eq!((page.len(), more), (1, false));
    assert!(s.locks().page(Kind::Lock, None, 10).0.is_empty());
}

// ---- fencing ----

#[test]
fn a_fence_compare_holds_only_for_a_current_holders_token() {
    let mut s = with_leases(&[1, 2]);
    let a = granted(&mut s, lock("m", 1));
    queued(&mut s, lock("m", 2), 0);
    assert!(fenced(&mut s, "m", CompareOp::Eq, a.token));
    assert!(!fenced(&mut s, "m", CompareOp::Ne, a.token));
    assert!(!fenced(&mut s, "m", CompareOp::Eq, 2), "a waiter's revision is no token");
    assert!(!fenced(&mut s, "other", CompareOp::Eq, a.token), "another name");

    // Hand-off: the old token is stale, the new one holds.
    apply(&mut s, release(Kind::Lock, "m", &a.owner));
    let b = s.locks().get(Kind::Lock, "m").unwrap().holders[0].clone();
    assert!(b.token > a.token);
    assert!(!fenced(&mut s, "m", CompareOp::Eq, a.token));
    assert!(fenced(&mut s, "m", CompareOp::Ne, a.token));
    assert!(fenced(&mut s, "m", CompareOp::Eq, b.token));
    assert!(!fenced(&mut s, "m", CompareOp::Ne, b.token));
    // Lt and Gt never hold for a fence.
    assert!(!fenced(&mut s, "m", CompareOp::Lt, b.token + 1));
    assert!(!fenced(&mut s, "m", CompareOp::Gt, 0));

    // An election leader's token fences the name too, until it leaves.
    let e = granted(&mut s, campaign("e", 2, "v"));
    assert!(fenced(&mut s, "e", CompareOp::Eq, e.token));
    apply(&mut s, revoke(2));
    assert!(!fenced(&mut s, "e", CompareOp::Eq, e.token));
    assert!(!fenced(&mut s, "m", CompareOp::Eq, b.token));
    assert_eq!(s.locks().current_token("m"), None);
}

// ---- snapshots ----

/// A state with holders and waiters in a mutex, a semaphore and an election.
fn busy_state() -> State {
    let mut s = with_leases(&[1, 2, 3]);
    apply(&mut s, grant(4, 100, 0));
    granted(&mut s, lock("m", 1));
    queued(&mut s, lock("m", 4), 0);
    queued(&mut s, lock("m", 2), 1);
    granted(&mut s, acquire(Kind::Lock, "s", Some(2), Some(2), true, ""));
    granted(&mut s, lock("s", 3));
    queued(&mut s, lock("s", 1), 0);
    granted(&mut s, campaign("e", 3, "c"));
    queued(&mut s, campaign("e", 4, "d"), 0);
    s
}

fn round_trip(s: &State) -> State {
    serde_json::from_slice(&serde_json::to_vec(s).unwrap()).unwrap()
}

#[test]
fn a_snapshot_round_trip_keeps_the_table_and_decides_the_same_afterwards() {
    let mut s = busy_state();
    let mut copy = round_trip(&s);
    assert_eq!(copy, s);
    for id in 1..=4 {
        assert_eq!(
            copy.locks().lease_owners(id).collect::<Vec<_>>(),
            s.locks().lease_owners(id).collect::<Vec<_>>()
        );
    }
    assert_eq!(copy.locks().owners(), 8);
    // After a load the journal speaks only of what is applied since.
    assert!(copy.locks().events_after(0).is_none());

    let m = s.locks().get(Kind::Lock, "m").unwrap().clone();
    let e = s.locks().get(Kind::Election, "e").unwrap().clone();
    let next = [
        expire(100, &[4]),                             // a waiter of m and e (the derived index)
        release(Kind::Lock, "m", &m.holders[0].owner), // hand-off to lease 2
        revoke(2),                                     // a holder of m and s: hand-offs
        proclaim("e", &e.holders[0].owner, "c2"),
        lock("m", 3),
        release(Kind::Lock, "m", "nobody"),
        revoke(3),
    ];
    for cmd in next {
        let at = s.revision();
        let (a, b) = (apply(&mut s, cmd.clone()), apply(&mut copy, cmd.clone()));
        assert_eq!(a, b, "{cmd:?}");
        assert_eq!(copy, s, "{cmd:?}");
        assert_eq!(journal(&copy, at), journal(&s, at), "{cmd:?}");
    }
    assert_eq!(holders(&s, Kind::Lock, "m").len() + holders(&s, Kind::Lock, "s").len(), 1);
    assert_eq!(s.locks().owners(), 1);
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let s = busy_state();
    let good = serde_json::to_value(&s).unwrap();
    assert_eq!(serde_json::from_value::<State>(good.clone()).unwrap(), s);
    let damage = |path: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(v.pointer_mut(path).unwrap_or_else(|| panic!("{path}")));
        serde_json::from_value::<State>(v).unwrap_err().to_string()
    };
    let m = "/locks/locks/m";
    let err = damage(&format!("{m}/limit"), &|v| *v = 0.into());
    assert!(err.contains("limit 0"), "{err}");
    let err = damage(&format!("{m}/limit"), &|v| *v = 3.into());
    assert!(err.contains("waiters while there is room"), "{err}");
    let err = damage(m, &|v| v["waiters"][0]["owner"] = v["holders"][0]["owner"].clone());
    assert!(err.contains("owner twice"), "{err}");
    let err = damage(m, &|v| {
        v["holders"] = serde_json::json!([]);
        v["waiters"] = serde_json::json!([]);
    });
    assert!(err.contains("idle but kept"), "{err}");
    let err = damage("/locks/locks/s/holders", &|v| v.as_array_mut().unwrap().reverse());
    assert!(err.contains("token order"), "{err}");
    let err = damage("/locks/locks/s/limit", &|v| *v = 1.into());
    assert!(err.contains("holders"), "{err}");
    let err = damage("/locks/elections/e", &|v| {
        v["limit"] = 2.into();
        v["waiters"] = serde_json::json!([]);
    });
    assert!(err.contains("election \"e\" has limit 2"), "{err}");
    // What ties the table to the rest of the state: leases and revisions.
    let err = damage(m, &|v| v["holders"][0]["lease"] = 99.into());
    assert!(err.contains("lease 99, which does not exist"), "{err}");
    let err = damage(m, &|v| v["holders"][0]["token"] = 1_000.into());
    assert!(err.contains("above the store's"), "{err}");
    let err = damage(m, &|v| v["revision"] = 1_000.into());
    assert!(err.contains("above the store's"), "{err}");
}

// ---- randomized ----

/// What one randomized step needs to know of the state before it.
struct Before {
    revision: u64,
    grants: u64,
    holders: BTreeSet<(Kind, String, String)>,
    waiters: BTreeSet<(Kind, String, String)>,
}

fn all_locks(s: &State) -> Vec<(Kind, String, Lock)> {
    let mut out = Vec::new();
    for kind in [Kind::Lock, Kind::Election] {
        out.extend(s.locks().page(kind, None, usize::MAX).0.into_iter().map(|(n, l)| (kind, n, l)));
    }
    out
}

fn before(s: &State) -> Before {
    let (mut holders, mut waiters) = (BTreeSet::new(), BTreeSet::new());
    for (kind, name, l) in all_locks(s) {
        holders.extend(l.holders.iter().map(|h| (kind, name.clone(), h.owner.clone())));
        waiters.extend(l.waiters.iter().map(|w| (kind, name.clone(), w.owner.clone())));
    }
    Before { revision: s.revision(), grants: s.locks().counters().grants, holders, waiters }
}

/// The lease and the revision an owner id (`{lease:x}-{rev:x}`) was made under.
fn owner_parts(owner: &str) -> (u64, u64) {
    let (lease, rev) = owner.split_once('-').unwrap();
    (u64::from_str_radix(lease, 16).unwrap(), u64::from_str_radix(rev, 16).unwrap())
}

/// Checks the table after one step; `last` is the newest token seen per name.
fn check_step(s: &State, b: &Before, out: &Outcome, last: &mut BTreeMap<(Kind, String), u64>, ctx: &str) {
    let mut by_lease: BTreeMap<u64, BTreeSet<(Kind, String, String)>> = BTreeMap::new();
    let mut new_holders = Vec::new();
    let all = all_locks(s);
    for (kind, name, l) in &all {
        let (kind, name) = (*kind, name.clone());
        assert_eq!(l.check(), Ok(()), "{ctx}");
        assert!(!l.is_idle(), "{ctx}: idle {name} kept");
        assert!(l.holders.len() <= l.limit as usize, "{ctx}");
        assert!(l.waiters.is_empty() || l.holders.len() == l.limit as usize, "{ctx}: waiters with room");
        assert!(kind == Kind::Lock || l.limit == 1, "{ctx}");
        assert!(l.revision <= s.revision(), "{ctx}");
        for (lease, owner) in
            l.holders.iter().map(|h| (h.lease, &h.owner)).chain(l.waiters.iter().map(|w| (w.lease, &w.owner)))
        {
            assert!(s.leases().contains(lease), "{ctx}: {owner} in {name} has no lease");
            by_lease.entry(lease).or_default().insert((kind, name.clone(), owner.clone()));
        }
        for h in &l.holders {
            assert!(h.token <= s.revision(), "{ctx}");
            if !b.holders.contains(&(kind, name.clone(), h.owner.clone())) {
                new_holders.push((h.token, kind, name.clone(), h.clone()));
            }
        }
    }
    // The derived lease index is exactly the owners, and the byte count their sizes.
    let owners: usize = by_lease.values().map(BTreeSet::len).sum();
    assert_eq!(s.locks().owners(), owners, "{ctx}");
    let bytes: usize = all_locks(s)
        .iter()
        .flat_map(|(_, name, l)| {
            let holders = l.holders.iter().map(|h| (&h.owner, h.value.len()));
            let waiters = l.waiters.iter().map(|w| (&w.owner, w.value.len()));
            holders.chain(waiters).map(move |(owner, value)| name.len() + owner.len() + value)
        })
        .sum();
    assert_eq!(s.locks().bytes(), bytes as u64, "{ctx}");
    for (lease, want) in &by_lease {
        let got: BTreeSet<_> = s.locks().lease_owners(*lease).cloned().collect();
        assert_eq!(&got, want, "{ctx}");
    }

    // Every grant of this step is still visible (nobody granted and removed in one step),
    // was a waiter before or is new, and the journal names it at its token.
    assert_eq!(
        s.locks().counters().grants - b.grants,
        new_holders.len() as u64,
        "{ctx}: a grant not visible"
    );
    new_holders.sort_by_key(|h| h.0);
    let events: Vec<LockEvent> = s.locks().events_after(b.revision).expect("journal").cloned().collect();
    for (token, kind, name, h) in new_holders {
        assert!(token > b.revision, "{ctx}: old token {token}");
        let was_waiting = b.waiters.contains(&(kind, name.clone(), h.owner.clone()));
        assert!(was_waiting || owner_parts(&h.owner).1 == token, "{ctx}: {} came from nowhere", h.owner);
        let prev = last.insert((kind, name.clone()), token).unwrap_or(0);
        assert!(token > prev, "{ctx}: token {token} of {name} after {prev}");
        let e = LockEvent { revision: token, kind, name: name.clone(), owner: h.owner.clone() };
        assert!(events.contains(&e), "{ctx}: the journal misses {e:?}");
    }
    // A fence holds for exactly the current holders' tokens (tokens are unique revisions).
    for ((_, name), token) in last.iter() {
        let held = all.iter().any(|(_, n, l)| n == name && l.holder_with_token(*token).is_some());
        assert_eq!(s.locks().holds_token(name, *token), held, "{ctx}: fence {name} {token}");
    }
    // A release, a cancel and a lease's end report the revision they took themselves.
    match out {
        Outcome::LockReleased { revision, .. } | Outcome::LockCancelled { revision } => {
            assert_eq!(*revision, b.revision + 1, "{ctx}")
        }
        Outcome::LeaseRevoked { revision, .. } => assert!(*revision <= b.revision + 1, "{ctx}"),
        _ => {}
    }
    if let Outcome::LockHeld { revision, holder } = out {
        // An immediate grant, or a cancel that came too late (then nothing changed).
        assert!(all.iter().any(|(_, _, l)| l.holders.contains(holder)), "{ctx}: told it holds, but does not");
        assert_eq!(*revision, s.revision(), "{ctx}");
        assert!(holder.token == *revision || b.revision == s.revision(), "{ctx}");
    }
}

#[test]
fn random_lock_traffic_keeps_the_invariants() {
    use rand::{Rng, SeedableRng};
    const NAMES: [&str; 3] = ["a", "b", "c"];
    // Which outcomes the run produced, so it cannot quietly stop exercising any.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut handoffs = 0;
    for seed in 0..64u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut s = State::new();
        let mut clock = 0;
        let mut owners: Vec<(Kind, String, String)> = Vec::new();
        let mut last: BTreeMap<(Kind, String), u64> = BTreeMap::new();
        // Owners whose lease has ended (an id may be granted again, to new owners).
        let mut dead: BTreeSet<String> = BTreeSet::new();
        for step in 0..400 {
            clock += rng.gen_range(0..20);
            let kind = if rng.gen_bool(0.7) { Kind::Lock } else { Kind::Election };
            let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
            let b = before(&s);
            // Mostly a current holder or waiter; else one seen before (maybe gone) or a stranger.
            let current: Vec<_> = b.holders.iter().chain(&b.waiters).cloned().collect();
            let known = |rng: &mut rand::rngs::StdRng| match rng.gen_range(0..10) {
                0..=7 if !current.is_empty() => current[rng.gen_range(0..current.len())].clone(),
                0..=8 if !owners.is_empty() => owners[rng.gen_range(0..owners.len())].clone(),
                _ => (kind, name.clone(), "1-1".to_string()),
            };
            let cmd = match rng.gen_range(0..20) {
                0..=6 => Command::LockAcquire {
                    kind,
                    name: name.clone(),
                    lease: rng.gen_bool(0.8).then(|| rng.gen_range(1..=4)),
                    ttl_ms: rng.gen_range(100..1_000),
                    clock_ms: clock,
                    limit: rng.gen_bool(0.3).then(|| rng.gen_range(1..=3)),
                    wait: rng.gen_bool(0.8),
                    value: vec![step as u8],
                },
                7..=9 => {
                    let (kind, name, owner) = known(&mut rng);
                    Command::LockRelease { kind, name, owner }
                }
                10..=11 => {
                    let (kind, name, owner) = known(&mut rng);
                    Command::LockCancel { kind, name, owner }
                }
                12 => {
                    let (_, name, owner) = known(&mut rng);
                    Command::Proclaim { name, owner, value: b"p".to_vec() }
                }
                13..=14 => grant(rng.gen_range(1..=4), rng.gen_range(100..2_000), clock),
                15 => revoke(rng.gen_range(1..=6)),
                16 => Command::LeaseClock { clock_ms: clock, renew: vec![rng.gen_range(1..=4)] },
                _ => Command::LeaseExpire { clock_ms: clock, ids: s.leases().expired(clock, 4) },
            };
            let out = apply(&mut s, cmd.clone());
            let ctx = format!("seed {seed} step {step}: {cmd:?} -> {out:?}");
            *seen
                .entry(format!("{out:?}").split([' ', '{']).next().unwrap_or_default().to_string())
                .or_default() += 1;
            check_step(&s, &b, &out, &mut last, &ctx);
            let ended = match &out {
                Outcome::LeaseRevoked { id, .. } => vec![*id],
                Outcome::LeasesExpired { expired, .. } => expired.clone(),
                _ => vec![],
            };
            let was_there = b.holders.iter().chain(&b.waiters).map(|o| &o.2);
            dead.extend(was_there.filter(|o| ended.contains(&owner_parts(o).0)).cloned());
            let after = before(&s);
            let mut now_there = after.holders.iter().chain(&after.waiters);
            assert!(now_there.all(|o| !dead.contains(&o.2)), "{ctx}: an owner outlived its lease");
            match &out {
                Outcome::LockHeld { holder, .. } if b.revision < s.revision() => {
                    owners.push((kind, name, holder.owner.clone()))
                }
                Outcome::LockQueued { waiter, .. } => owners.push((kind, name, waiter.owner.clone())),
                _ => {}
            }
            // Now and then continue from a snapshot of the state (the index is rebuilt).
            if step % 50 == 49 {
                let copy = round_trip(&s);
                assert_eq!(copy, s, "seed {seed} step {step}");
                s = copy;
            }
        }
        handoffs += s.locks().counters().handoffs;
    }
    let want = [
        "LockHeld",
        "LockQueued",
        "LockBusy",
        "LockLimitMismatch",
        "LockReleased",
        "LockCancelled",
        "OwnerNotFound",
        "Proclaimed",
        "NotLeader",
        "LeaseNotFound",
        "LeaseRevoked",
        "LeasesExpired",
    ];
    for w in want {
        assert!(seen.contains_key(w), "no {w} in the run: {seen:?}");
    }
    assert!(handoffs > 500, "{handoffs} hand-offs {seen:?}");
}
