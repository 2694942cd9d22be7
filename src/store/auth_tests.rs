//! State-machine tests of `Command::As` (client auth on): a lease belongs to the subject
//! that granted it (by `LeaseGrant` or by a lock acquire that made one); another subject
//! naming it in a put, either branch of a transaction, an acquire, a revoke, or a release
//! or proclaim of an owner under it gets `Outcome::LeaseNotOwned` and changes nothing; an
//! admin may use any lease; an idempotent retry of an `As` command replays its first
//! outcome (and the same key from another subject is a conflict, never a replay).

use super::*;
use crate::store::{dedup, Compare, CompareOp, CompareTarget, Condition, Retention, Txn};

const RETAIN: Retention = Retention { window_ms: 1_000, max_entries: 100, max_bytes: u64::MAX };

fn apply(s: &mut State, cmd: Command) -> Outcome {
    s.apply(&Proposal::new(cmd, 0))
}

fn as_(subject: &str, cmd: Command) -> Command {
    Command::As { subject: subject.into(), admin: false, cmd: Box::new(cmd) }
}

fn as_admin(subject: &str, cmd: Command) -> Command {
    Command::As { subject: subject.into(), admin: true, cmd: Box::new(cmd) }
}

fn once(id: &str, cmd: Command) -> Command {
    let fingerprint = dedup::fingerprint(&cmd);
    Command::Idempotent { key: id.into(), fingerprint, retain: RETAIN, cmd: Box::new(cmd) }
}

fn grant(id: u64) -> Command {
    Command::LeaseGrant { id: Some(id), ttl_ms: 10_000, clock_ms: 0 }
}

fn put(key: &str, lease: Option<u64>) -> Command {
    Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        sequential: false,
        cond: Condition::default(),
        prev_kv: false,
    }
}

fn txn_put(key: &str, lease: Option<u64>) -> TxnOp {
    TxnOp::Put { key: key.into(), value: b"t".to_vec(), lease, sequential: false, prev_kv: false }
}

/// A transaction whose compare holds (`/a` exists) or not.
fn txn(holds: bool, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    let version = if holds { 0 } else { 99 };
    Command::Txn(Txn {
        compare: vec![Compare {
            key: "/a".into(),
            op: CompareOp::Gt,
            target: CompareTarget::Version(version),
        }],
        success,
        failure,
        max_read_bytes: 0,
        default_get_limit: 10,
    })
}

fn acquire(kind: Kind, name: &str, lease: Option<u64>, value: &str) -> Command {
    Command::LockAcquire {
        kind,
        name: name.into(),
        lease,
        ttl_ms: 10_000,
        clock_ms: 0,
        limit: None,
        wait: true,
        value: value.as_bytes().to_vec(),
    }
}

fn held_owner(o: &Outcome) -> String {
    match o {
        Outcome::LockHeld { holder, .. } => holder.owner.clone(),
        other => panic!("not held: {other:?}"),
    }
}

/// A state where subject `alice` granted lease 1 and holds, under it, key `/a`, lock
/// `m` and the leadership of election `e`; returns it with the lock and election owners.
fn alices_state() -> (State, String, String) {
    let mut s = State::new();
    assert!(matches!(apply(&mut s, as_("alice", grant(1))), Outcome::LeaseGranted { id: 1, .. }));
    assert!(matches!(apply(&mut s, as_("alice", put("/a", Some(1)))), Outcome::Put { .. }));
    let lock = held_owner(&apply(&mut s, as_("alice", acquire(Kind::Lock, "m", Some(1), ""))));
    let leader = held_owner(&apply(&mut s, as_("alice", acquire(Kind::Election, "e", Some(1), "v1"))));
    (s, lock, leader)
}

#[test]
fn a_lease_granted_on_behalf_of_a_subject_is_its_own() {
    let (s, _, _) = alices_state();
    assert_eq!(s.leases().get(1).unwrap().owner.as_deref(), Some("alice"));
    assert_eq!(s.leases().owned_by(1, "alice"), Some(true));
    assert_eq!(s.leases().owned_by(1, "bob"), Some(false));
    assert_eq!(s.leases().owned_by(2, "alice"), None);
    // Granted without a subject (auth off): nobody's.
    let mut open = State::new();
    apply(&mut open, grant(7));
    assert_eq!(open.leases().get(7).unwrap().owner, None);
}

#[test]
fn another_subject_naming_the_lease_is_refused_and_nothing_changes() {
    let (mut s, lock, leader) = alices_state();
    let refused = [
        ("put", put("/b", Some(1))),
        ("txn success branch", txn(true, vec![txn_put("/b", Some(1))], vec![])),
        (
            "txn failure branch (the success branch runs)",
            txn(true, vec![txn_put("/b", None)], vec![txn_put("/c", Some(1))]),
        ),
        ("txn failure branch (it runs)", txn(false, vec![], vec![txn_put("/c", Some(1))])),
        ("lock acquire under the lease", acquire(Kind::Lock, "other", Some(1), "")),
        ("campaign under the lease", acquire(Kind::Election, "other", Some(1), "x")),
        ("revoke", Command::LeaseRevoke { id: 1 }),
        (
            "release of alice's lock owner",
            Command::LockRelease { kind: Kind::Lock, name: "m".into(), owner: lock.clone() },
        ),
        (
            "cancel of alice's lock owner",
            Command::LockCancel { kind: Kind::Lock, name: "m".into(), owner: lock.clone() },
        ),
        (
            "resign of alice's leader",
            Command::LockRelease { kind: Kind::Election, name: "e".into(), owner: leader.clone() },
        ),
        (
            "proclaim as alice's leader",
            Command::Proclaim { name: "e".into(), owner: leader.clone(), value: b"bob".to_vec() },
        ),
    ];
    for (what, cmd) in refused {
        let before = s.clone();
        let rev = s.revision();
        assert_eq!(
            apply(&mut s, as_("bob", cmd.clone())),
            Outcome::LeaseNotOwned { revision: rev, lease: 1 },
            "{what}"
        );
        assert_eq!(s, before, "{what}: a refused command changed the state");
        // Idempotent too: refused, and the refusal is what a retry gets back.
        let wrapped = once(&format!("k-{what}"), as_("bob", cmd));
        let first = apply(&mut s, wrapped.clone());
        assert_eq!(first, Outcome::LeaseNotOwned { revision: rev, lease: 1 }, "{what} (idempotent)");
        assert_eq!(s.kv(), before.kv(), "{what}: the store changed");
        assert_eq!(s.leases(), before.leases(), "{what}: the leases changed");
        assert_eq!(s.locks(), before.locks(), "{what}: the locks changed");
        assert_eq!(apply(&mut s, wrapped), Outcome::Replayed { first: Box::new(first) }, "{what}");
    }
    // Still alice's, with everything under it.
    assert_eq!(s.kv().current("/a").unwrap().lease, Some(1));
    assert!(s.kv().current("/b").is_none() && s.kv().current("/c").is_none());
    assert_eq!(s.locks().get(Kind::Election, "e").unwrap().holders[0].value, b"v1".to_vec());
    // Writes that name no lease of another subject pass for bob.
    assert!(matches!(apply(&mut s, as_("bob", put("/b", None))), Outcome::Put { .. }));
}

#[test]
fn the_owner_and_an_admin_may_use_the_lease() {
    let (mut s, lock, leader) = alices_state();
    // alice herself.
    assert!(matches!(apply(&mut s, as_("alice", put("/b", Some(1)))), Outcome::Put { .. }));
    let t = apply(&mut s, as_("alice", txn(false, vec![], vec![txn_put("/c", Some(1))])));
    assert!(matches!(t, Outcome::Txn { succeeded: false, .. }), "{t:?}");
    assert_eq!(s.kv().current("/c").unwrap().lease, Some(1));
    let p = apply(
        &mut s,
        as_("alice", Command::Proclaim { name: "e".into(), owner: leader.clone(), value: b"v2".to_vec() }),
    );
    assert!(matches!(p, Outcome::Proclaimed { .. }), "{p:?}");
    // An admin acting for another subject.
    assert!(matches!(apply(&mut s, as_admin("root", put("/d", Some(1)))), Outcome::Put { .. }));
    let p = apply(
        &mut s,
        as_admin("root", Command::Proclaim { name: "e".into(), owner: leader, value: b"v3".to_vec() }),
    );
    assert!(matches!(p, Outcome::Proclaimed { .. }), "{p:?}");
    let r = apply(
        &mut s,
        as_admin("root", Command::LockRelease { kind: Kind::Lock, name: "m".into(), owner: lock }),
    );
    assert!(matches!(r, Outcome::LockReleased { held: true, .. }), "{r:?}");
    // The admin's use does not make the lease its own.
    assert_eq!(s.leases().get(1).unwrap().owner.as_deref(), Some("alice"));
    let r = apply(&mut s, as_admin("root", Command::LeaseRevoke { id: 1 }));
    assert!(matches!(r, Outcome::LeaseRevoked { deleted: 4, .. }), "{r:?}");
    assert!(s.leases().get(1).is_none());
}

#[test]
fn an_idempotent_retry_of_an_as_command_replays_and_another_subject_conflicts() {
    let mut s = State::new();
    let g = once("g", as_("alice", grant(5)));
    let first = apply(&mut s, g.clone());
    assert!(matches!(first, Outcome::LeaseGranted { id: 5, .. }), "{first:?}");
    let rev = s.revision();
    assert_eq!(apply(&mut s, g), Outcome::Replayed { first: Box::new(first) });
    let p = once("p", as_("alice", put("/x", Some(5))));
    let first = apply(&mut s, p.clone());
    assert!(matches!(first, Outcome::Put { .. }), "{first:?}");
    let rev_after = s.revision();
    assert_eq!(rev_after, rev + 1);
    assert_eq!(apply(&mut s, p), Outcome::Replayed { first: Box::new(first) });
    assert_eq!(s.revision(), rev_after, "a replay applies nothing");
    // The same idempotency key and request, from bob: not alice's outcome.
    let stolen = once("p", as_("bob", put("/x", Some(5))));
    assert_eq!(apply(&mut s, stolen), Outcome::IdempotencyConflict { revision: rev_after });
    assert_eq!(s.revision(), rev_after);
}

#[test]
fn a_lease_made_by_an_acquire_belongs_to_the_subject() {
    let mut s = State::new();
    let held = apply(&mut s, as_("alice", acquire(Kind::Lock, "m", None, "")));
    let Outcome::LockHeld { holder, .. } = &held else { panic!("{held:?}") };
    assert_eq!(s.leases().get(holder.lease).unwrap().owner.as_deref(), Some("alice"));
    // A waiter's lease too.
    let queued = apply(&mut s, as_("bob", acquire(Kind::Lock, "m", None, "")));
    let Outcome::LockQueued { waiter, .. } = &queued else { panic!("{queued:?}") };
    assert_eq!(s.leases().get(waiter.lease).unwrap().owner.as_deref(), Some("bob"));
    // bob may not release alice's holder, nor revoke her lease; alice may not withdraw bob.
    let before = s.clone();
    let rev = s.revision();
    let release = Command::LockRelease { kind: Kind::Lock, name: "m".into(), owner: holder.owner.clone() };
    assert_eq!(
        apply(&mut s, as_("bob", release.clone())),
        Outcome::LeaseNotOwned { revision: rev, lease: holder.lease }
    );
    let withdraw = Command::LockRelease { kind: Kind::Lock, name: "m".into(), owner: waiter.owner.clone() };
    assert_eq!(
        apply(&mut s, as_("alice", withdraw)),
        Outcome::LeaseNotOwned { revision: rev, lease: waiter.lease }
    );
    assert_eq!(s, before);
    // alice releases her own; bob is granted.
    let r = apply(&mut s, as_("alice", release));
    assert!(matches!(r, Outcome::LockReleased { held: true, .. }), "{r:?}");
    assert_eq!(s.locks().get(Kind::Lock, "m").unwrap().holders[0].owner, waiter.owner);
}
