//! The Jepsen checkers on hand-written and generated histories: each must accept the good
//! ones and reject the bad ones with a message that names the problem. Pure code: no
//! server, no network.

use crate::jepsen;

use std::collections::HashMap;
use std::time::Instant;

use jepsen::fencing::{self, check_locks, Access, Grant, GuardedResource, LeaseExpiry, LockHistory, Release};
use jepsen::history::{Call, History, Op, Outcome, Value};
use jepsen::leases::{self, check_leases, FaultWindow, LeaseCall, LeaseHistory, LeaseOp, LeaseReply};
use jepsen::linearizability::{self as lin, check, check_revisions, check_with, Options};
use jepsen::watch::{self, check_watches, CommittedLog, WatchEvent, WatchMessage, WatchStream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------
// History builder. Times are in milliseconds.

const MS: u64 = 1_000_000;

#[derive(Default)]
struct B {
    ops: Vec<Op>,
}

impl B {
    fn new() -> B {
        B::default()
    }

    fn push(mut self, process: usize, key: &str, call: Call, t: (u64, Option<u64>), outcome: Outcome) -> B {
        let id = self.ops.len();
        self.ops.push(Op {
            id,
            process,
            key: key.into(),
            call,
            invoke_ns: t.0 * MS,
            complete_ns: t.1.map(|c| c * MS),
            outcome,
        });
        self
    }

    /// An `Ok` read of `/k` returning `v`.
    fn read(self, p: usize, t0: u64, t1: u64, v: Option<&str>) -> B {
        self.read_on(p, "/k", t0, t1, v)
    }
    fn read_on(self, p: usize, key: &str, t0: u64, t1: u64, v: Option<&str>) -> B {
        self.push(
            p,
            key,
            Call::Read,
            (t0, Some(t1)),
            Outcome::Ok { read: Some(v.map(str::to_string)), revision: None },
        )
    }
    fn read_rev(self, p: usize, t0: u64, t1: u64, v: Option<&str>, rev: u64) -> B {
        self.push(
            p,
            "/k",
            Call::Read,
            (t0, Some(t1)),
            Outcome::Ok { read: Some(v.map(str::to_string)), revision: Some(rev) },
        )
    }
    /// An `Ok` write of `/k`.
    fn write(self, p: usize, t0: u64, t1: u64, v: &str) -> B {
        self.write_on(p, "/k", t0, t1, v)
    }
    fn write_on(self, p: usize, key: &str, t0: u64, t1: u64, v: &str) -> B {
        self.push(
            p,
            key,
            Call::Write { value: v.into() },
            (t0, Some(t1)),
            Outcome::Ok { read: None, revision: None },
        )
    }
    fn write_rev(self, p: usize, t0: u64, t1: u64, v: &str, rev: u64) -> B {
        self.push(
            p,
            "/k",
            Call::Write { value: v.into() },
            (t0, Some(t1)),
            Outcome::Ok { read: None, revision: Some(rev) },
        )
    }
    fn write_unknown(self, p: usize, t0: u64, t1: u64, v: &str) -> B {
        self.push(p, "/k", Call::Write { value: v.into() }, (t0, Some(t1)), Outcome::Unknown)
    }
    fn write_fail(self, p: usize, t0: u64, t1: u64, v: &str) -> B {
        self.push(p, "/k", Call::Write { value: v.into() }, (t0, Some(t1)), Outcome::Fail)
    }
    fn cas(self, p: usize, t0: u64, t1: u64, expected: Option<&str>, v: &str, outcome: Outcome) -> B {
        self.push(
            p,
            "/k",
            Call::Cas { expected: expected.map(str::to_string), value: v.into() },
            (t0, Some(t1)),
            outcome,
        )
    }
    fn h(self) -> History {
        History { ops: self.ops }
    }
}

fn ok() -> Outcome {
    Outcome::Ok { read: None, revision: None }
}

fn must_pass(h: &History) -> lin::Report {
    match check(h) {
        Ok(r) => r,
        Err(v) => panic!("expected linearizable, got:\n{v}\nhistory:\n{}", render_all(h)),
    }
}

fn must_fail(h: &History, kind: lin::ViolationKind) -> lin::Violation {
    match check(h) {
        Ok(r) => {
            panic!("expected a violation ({kind}), but the history passed: {r}\nhistory:\n{}", render_all(h))
        }
        Err(v) => {
            eprintln!("(expected) {v}");
            assert_eq!(v.kind, kind, "wrong kind of violation:\n{v}");
            assert!(!v.is_inconclusive());
            let shown = v.to_string();
            assert!(shown.contains(&v.key), "the message names the key:\n{shown}");
            v
        }
    }
}

fn render_all(h: &History) -> String {
    History::render(&h.ops.iter().collect::<Vec<_>>())
}

// ---------------------------------------------------------------------------------------
// Linearizability: good histories.

#[test]
fn lin_sequential_history_passes() {
    let h = B::new()
        .read(0, 0, 1, None)
        .write(0, 2, 3, "a")
        .read(1, 4, 5, Some("a"))
        .cas(1, 6, 7, Some("a"), "b", ok())
        .read(0, 8, 9, Some("b"))
        .cas(0, 10, 11, Some("a"), "c", Outcome::Fail)
        .read(1, 12, 13, Some("b"))
        .h();
    let r = must_pass(&h);
    assert_eq!((r.keys, r.ops, r.ok, r.fail, r.unknown), (1, 7, 6, 1, 0));
}

#[test]
fn lin_concurrent_writes_in_either_order_pass() {
    // Two overlapping writes; later reads may observe either order, consistently.
    let base = || B::new().write(0, 0, 10, "a").write(1, 5, 15, "b");
    must_pass(&base().read(2, 20, 21, Some("b")).read(2, 22, 23, Some("b")).h());
    must_pass(&base().read(2, 20, 21, Some("a")).read(2, 22, 23, Some("a")).h());
    // A read overlapping both writes may see the old value, then a later one the new.
    must_pass(&base().read(2, 1, 16, None).read(3, 16, 17, Some("a")).h());
    // A read overlapping one write sees either side of it.
    must_pass(&B::new().write(0, 0, 10, "a").write(0, 20, 30, "b").read(1, 25, 26, Some("a")).h());
    must_pass(&B::new().write(0, 0, 10, "a").write(0, 20, 30, "b").read(1, 25, 26, Some("b")).h());
}

#[test]
fn lin_unknown_write_that_explains_a_later_read_passes() {
    // The write timed out; much later a read sees its value: it took effect after all.
    let h = B::new()
        .write(0, 0, 10, "a")
        .write_unknown(1, 20, 25, "b")
        .read(2, 30, 31, Some("a"))
        .read(2, 100, 110, Some("b"))
        .read(3, 120, 130, Some("b"))
        .h();
    let r = must_pass(&h);
    assert_eq!(r.unknown, 1);
}

#[test]
fn lin_unknown_cas_that_explains_a_later_read_passes() {
    let h = B::new()
        .write(0, 0, 10, "a")
        .cas(1, 20, 25, Some("a"), "b", Outcome::Unknown)
        .read(2, 200, 210, Some("b"))
        .cas(2, 220, 230, Some("b"), "c", ok())
        .read(3, 240, 250, Some("c"))
        .h();
    must_pass(&h);
}

#[test]
fn lin_unknown_write_that_never_happened_passes() {
    let h = B::new()
        .write(0, 0, 10, "a")
        .write_unknown(1, 20, 25, "b")
        .read(2, 30, 31, Some("a"))
        .read(2, 100, 110, Some("a"))
        .h();
    let r = must_pass(&h);
    assert_eq!(r.dropped_unknown, 1, "a write of a value nobody observed is irrelevant");
}

#[test]
fn lin_values_need_not_be_unique() {
    // "a" is written twice: the last read is explained by the second write.
    let h = B::new()
        .write(0, 0, 10, "a")
        .write(0, 20, 30, "b")
        .write(1, 35, 60, "a")
        .read(2, 40, 50, Some("a"))
        .read(2, 70, 80, Some("a"))
        .h();
    must_pass(&h);
}

#[test]
fn lin_keys_are_independent_registers() {
    let h = B::new()
        .write_on(0, "/x", 0, 10, "a")
        .write_on(1, "/y", 0, 10, "b")
        .read_on(2, "/x", 20, 30, Some("a"))
        .read_on(2, "/y", 40, 50, Some("b"))
        .read_on(3, "/z", 40, 50, None)
        .h();
    let r = must_pass(&h);
    assert_eq!(r.keys, 3);
}

// ---------------------------------------------------------------------------------------
// Linearizability: bad histories.

#[test]
fn lin_stale_read_fails() {
    let h = B::new()
        .write(0, 0, 10, "a")
        .write(0, 20, 30, "b")
        .read(1, 40, 50, Some("a")) // b completed before this read began
        .h();
    let v = must_fail(&h, lin::ViolationKind::NotLinearizable);
    assert!(v.reason.contains("#2"), "names the stale read:\n{v}");
    assert!(
        v.reason.contains("\"a\"") && v.reason.contains("\"b\""),
        "says what was read and what was current:\n{v}"
    );
    assert!(v.context.contains("Longest linearizable prefix"), "{v}");
}

#[test]
fn lin_stale_read_after_newer_read_fails() {
    // A write still in flight: once one read saw the new value, a later read may not
    // see the old one.
    let h = B::new()
        .write(0, 0, 10, "a")
        .write(0, 20, 100, "b")
        .read(1, 30, 40, Some("b"))
        .read(2, 50, 60, Some("a"))
        .h();
    must_fail(&h, lin::ViolationKind::NotLinearizable);
}

#[test]
fn lin_lost_write_fails() {
    // The write of "b" was acknowledged, yet every later read sees the value before it.
    let h = B::new()
        .write(0, 0, 10, "a")
        .write(1, 20, 30, "b")
        .read(2, 40, 50, Some("a"))
        .read(3, 60, 70, Some("a"))
        .read(2, 80, 90, Some("a"))
        .h();
    let v = must_fail(&h, lin::ViolationKind::NotLinearizable);
    assert!(v.context.contains("Ops that could not be placed"), "{v}");
}

#[test]
fn lin_double_cas_success_fails() {
    let h = B::new()
        .write(0, 0, 10, "a")
        .cas(1, 20, 30, Some("a"), "b", ok())
        .cas(2, 20, 30, Some("a"), "c", ok())
        .h();
    let v = must_fail(&h, lin::ViolationKind::NotLinearizable);
    assert!(v.reason.contains("expected \"a\""), "explains the failed compare:\n{v}");
}

#[test]
fn lin_read_of_value_never_written_fails() {
    let h = B::new().write(0, 0, 10, "a").read(1, 20, 30, Some("zzz")).h();
    let v = must_fail(&h, lin::ViolationKind::ValueNeverWritten);
    assert!(v.reason.contains("\"zzz\""), "{v}");
}

#[test]
fn lin_read_of_a_value_written_only_later_fails() {
    let h = B::new().read(1, 0, 10, Some("a")).write(0, 20, 30, "a").h();
    must_fail(&h, lin::ViolationKind::ValueFromTheFuture);
}

#[test]
fn lin_failed_write_whose_value_is_read_fails() {
    // A 503 promises nothing took effect; a later read of its value proves otherwise.
    let h = B::new().write(0, 0, 10, "a").write_fail(1, 20, 25, "b").read(2, 30, 40, Some("b")).h();
    let v = must_fail(&h, lin::ViolationKind::ValueNeverWritten);
    assert!(v.reason.contains("Fail") && v.reason.contains("#1"), "points at the failed write:\n{v}");
    assert!(v.context.contains("Failed writes"), "{v}");
}

#[test]
fn lin_read_of_absent_after_write_fails() {
    let h = B::new().write(0, 0, 10, "a").read(1, 20, 30, None).h();
    must_fail(&h, lin::ViolationKind::NotLinearizable);
}

#[test]
fn lin_unknown_write_cannot_take_effect_before_its_invocation() {
    // "b" is only written by an Unknown op invoked after the read completed.
    let h = B::new().write(0, 0, 10, "a").read(1, 20, 30, Some("b")).write_unknown(2, 40, 50, "b").h();
    must_fail(&h, lin::ViolationKind::ValueFromTheFuture);
}

#[test]
fn lin_unknown_write_cannot_take_effect_twice() {
    // One Unknown write of "b" can explain one switch to "b", not a return to it after "c".
    let h = B::new()
        .write(0, 0, 10, "a")
        .write_unknown(1, 20, 25, "b")
        .read(2, 30, 40, Some("b"))
        .write(3, 50, 60, "c")
        .read(2, 70, 80, Some("b"))
        .h();
    must_fail(&h, lin::ViolationKind::NotLinearizable);
}

#[test]
fn lin_violation_on_one_key_names_that_key() {
    let h = B::new()
        .write_on(0, "/good", 0, 10, "a")
        .read_on(1, "/good", 20, 30, Some("a"))
        .write_on(0, "/bad", 0, 10, "a")
        .write_on(0, "/bad", 20, 30, "b")
        .read_on(1, "/bad", 40, 50, Some("a"))
        .h();
    let v = must_fail(&h, lin::ViolationKind::NotLinearizable);
    assert_eq!(v.key, "/bad");
}

#[test]
fn lin_budget_exhaustion_is_inconclusive_not_a_violation() {
    let mut b = B::new();
    for i in 0..20u64 {
        b = b.write(i as usize, 0, 100, &format!("v{i}"));
    }
    let h = b.read(30, 200, 210, Some("v3")).h();
    let v = check_with(&h, &Options { max_steps_per_key: 3, ..Options::default() })
        .expect_err("budget of 3 steps");
    assert!(v.is_inconclusive(), "{v}");
    assert!(v.to_string().contains("INCONCLUSIVE"), "{v}");
    must_pass(&h);
}

// ---------------------------------------------------------------------------------------
// Revisions.

#[test]
fn revisions_monotonic_history_passes() {
    let h = B::new()
        .write_rev(0, 0, 10, "a", 5)
        .read_rev(1, 5, 15, Some("a"), 5) // concurrent with the write
        .read_rev(1, 20, 30, Some("a"), 5)
        .write_rev(0, 20, 40, "b", 9)
        .read_rev(2, 25, 26, Some("a"), 6) // concurrent with the write of b: lower is fine
        .read_rev(1, 50, 60, Some("b"), 9)
        .h();
    check_revisions(&h).expect("monotonic");
}

#[test]
fn revision_going_backwards_fails() {
    let h = B::new().write_rev(0, 0, 10, "a", 5).read_rev(1, 20, 30, Some("a"), 3).h();
    let v = check_revisions(&h).expect_err("3 after 5");
    eprintln!("(expected) {v}");
    assert_eq!(v.kind, lin::ViolationKind::RevisionWentBackwards);
    assert!(v.reason.contains("#1") && v.reason.contains("#0") && v.reason.contains("revision 3"), "{v}");
}

#[test]
fn write_revision_not_above_an_earlier_reply_fails() {
    let h = B::new().read_rev(1, 0, 10, None, 7).write_rev(0, 20, 30, "a", 7).h();
    let v = check_revisions(&h).expect_err("write at 7 after a read at 7");
    assert_eq!(v.kind, lin::ViolationKind::WriteRevisionNotNewer, "{v}");
}

#[test]
fn two_writes_with_one_revision_fail() {
    let h = B::new().write_rev(0, 0, 10, "a", 7).write_rev(1, 0, 10, "b", 7).h();
    let v = check_revisions(&h).expect_err("duplicate");
    assert_eq!(v.kind, lin::ViolationKind::DuplicateWriteRevision, "{v}");
}

// ---------------------------------------------------------------------------------------
// Randomized: histories from a simulated linearizable register.

struct GenOp {
    op: Op,
    /// When it took effect, if it did.
    at: Option<u64>,
}

/// Shape of a generated history. Times in microseconds.
#[derive(Clone, Debug)]
struct Gen {
    procs: usize,
    keys: usize,
    n_ops: usize,
    /// Usual op duration range, and the chance of a long one (1 to 20 ms).
    dur: (u64, u64),
    long_pct: u32,
    /// Percent of reads; the rest splits 2:1 into writes and CAS.
    read_pct: u32,
    /// Percent of ops that end `Unknown` (half of them took effect, up to
    /// `unknown_delay` durations after their invocation).
    unknown_pct: u32,
    unknown_delay: u64,
    /// Percent of writes that end `Fail` (not applied).
    fail_pct: u32,
}

impl Gen {
    fn random(rng: &mut StdRng) -> Gen {
        Gen {
            procs: rng.gen_range(3..=10),
            keys: rng.gen_range(3..=5),
            n_ops: rng.gen_range(1_000..=3_000),
            dur: (50, 2_000),
            long_pct: 5,
            read_pct: 50,
            unknown_pct: rng.gen_range(1..=4),
            unknown_delay: rng.gen_range(1..=20),
            fail_pct: 2,
        }
    }
}

/// A linearizable history: sequential clients (a client whose op ends `Unknown`
/// continues as a fresh process, as the recorder does), random durations, random
/// `Unknown` ops (half of which took effect, possibly long after they were abandoned) and
/// `Fail` writes (never applied). Results come from a register replayed in
/// linearization-point order. Every written value is unique.
fn generate(seed: u64, g: &Gen) -> History {
    let (procs, keys, n_ops) = (g.procs, g.keys, g.n_ops);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_at: Vec<u64> = (0..procs).map(|_| rng.gen_range(0..1_000)).collect();
    let mut pid: Vec<usize> = (0..procs).collect();
    let mut next_pid = procs;
    let mut recent: Vec<Vec<String>> = vec![Vec::new(); keys];
    let mut gen: Vec<GenOp> = Vec::new();
    for n in 0..n_ops {
        let c = (0..procs).min_by_key(|&c| next_at[c]).expect("procs > 0");
        let invoke = next_at[c];
        let dur = if rng.gen_range(0..100) < g.long_pct {
            rng.gen_range(1_000..20_000)
        } else {
            rng.gen_range(g.dur.0..g.dur.1)
        };
        let complete = invoke + dur;
        let k = rng.gen_range(0..keys);
        let value = format!("v{n}");
        let roll = rng.gen_range(0..300);
        let call = match roll {
            _ if roll < g.read_pct * 3 => Call::Read,
            _ if roll < g.read_pct * 3 + (100 - g.read_pct) * 2 => Call::Write { value: value.clone() },
            _ => {
                let expected: Value = if recent[k].is_empty() || rng.gen_bool(0.15) {
                    None
                } else {
                    let r = &recent[k];
                    Some(r[r.len() - 1 - rng.gen_range(0..r.len().min(3))].clone())
                };
                Call::Cas { expected, value: value.clone() }
            }
        };
        if !matches!(call, Call::Read) {
            recent[k].push(value);
        }
        let roll = rng.gen_range(0..100);
        let (outcome, at) = if roll < g.unknown_pct {
            // Unknown: took effect at any later time, or never.
            let at = rng.gen_bool(0.5).then(|| invoke + 1 + rng.gen_range(0..dur * g.unknown_delay));
            (Outcome::Unknown, at)
        } else if roll < g.unknown_pct + g.fail_pct && !matches!(call, Call::Read) {
            (Outcome::Fail, None)
        } else {
            (ok(), Some(rng.gen_range(invoke..=complete)))
        };
        let unknown = outcome == Outcome::Unknown;
        gen.push(GenOp {
            op: Op {
                id: n,
                process: pid[c],
                key: format!("/r{k}"),
                call,
                invoke_ns: invoke * 1_000,
                complete_ns: Some(complete * 1_000),
                outcome,
            },
            at: at.map(|a| a * 1_000),
        });
        if unknown {
            pid[c] = next_pid;
            next_pid += 1;
        }
        next_at[c] = complete + rng.gen_range(0..500);
    }
    // Replay in linearization-point order (ties: by id) to fill in results and store
    // revisions (one per applied write, store-wide; a read reports the current one).
    let mut order: Vec<usize> = (0..gen.len()).filter(|&i| gen[i].at.is_some()).collect();
    order.sort_by_key(|&i| (gen[i].at, i));
    let mut reg: HashMap<String, Value> = HashMap::new();
    let mut rev = 0u64;
    for i in order {
        let g = &mut gen[i];
        let cur = reg.entry(g.op.key.clone()).or_insert(None);
        match (&g.op.call, &mut g.op.outcome) {
            (Call::Read, Outcome::Ok { read, revision }) => {
                *read = Some(cur.clone());
                *revision = Some(rev);
            }
            (Call::Read, _) => {}
            (Call::Write { value }, outcome) => {
                *cur = Some(value.clone());
                rev += 1;
                if let Outcome::Ok { revision, .. } = outcome {
                    *revision = Some(rev);
                }
            }
            (Call::Cas { expected, value }, outcome) => {
                if cur == expected {
                    *cur = Some(value.clone());
                    rev += 1;
                    if let Outcome::Ok { revision, .. } = outcome {
                        *revision = Some(rev);
                    }
                } else if matches!(outcome, Outcome::Ok { .. }) {
                    // The compare did not hold: a definite failure, nothing applied.
                    *outcome = Outcome::Fail;
                }
            }
        }
    }
    History { ops: gen.into_iter().map(|g| g.op).collect() }
}

fn revision_of(o: &Op) -> u64 {
    match o.outcome {
        Outcome::Ok { revision: Some(r), .. } => r,
        _ => panic!("no revision: {o}"),
    }
}

fn set_revision(o: &mut Op, r: u64) {
    if let Outcome::Ok { revision, .. } = &mut o.outcome {
        *revision = Some(r);
    }
}

/// Two `Ok` ops with revisions, A completed before B was invoked, rev(A) > 0.
fn pick_ordered_pair(h: &History, rng: &mut StdRng) -> Option<(usize, usize)> {
    let with_rev: Vec<&Op> = h
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok { revision: Some(r), .. } if r > 0))
        .collect();
    for _ in 0..1000 {
        let a = with_rev[rng.gen_range(0..with_rev.len())];
        let b = with_rev[rng.gen_range(0..with_rev.len())];
        if a.complete_ns.unwrap() < b.invoke_ns {
            return Some((a.id, b.id));
        }
    }
    None
}

/// Replaces one `Ok` read's value by a value that cannot be current anywhere in its
/// window: written by an `Ok` op W1 that completed before another `Ok` write W2 of the
/// same key began, W2 having completed before the read began. Returns the read's id.
fn make_stale(h: &mut History, rng: &mut StdRng) -> Option<usize> {
    let writes: Vec<&Op> = h
        .ops
        .iter()
        .filter(|o| !matches!(o.call, Call::Read) && matches!(o.outcome, Outcome::Ok { .. }))
        .collect();
    let mut reads: Vec<usize> = h
        .ops
        .iter()
        .filter(|o| matches!(o.call, Call::Read) && matches!(o.outcome, Outcome::Ok { read: Some(_), .. }))
        .map(|o| o.id)
        .collect();
    // Prefer reads in the middle of the run, so the search has real work before failing.
    let len = reads.len();
    reads.drain(..len / 3);
    for _ in 0..200 {
        let rid = reads[rng.gen_range(0..reads.len())];
        let r = &h.ops[rid];
        let w2s: Vec<&&Op> =
            writes.iter().filter(|w| w.key == r.key && w.complete_ns.unwrap() < r.invoke_ns).collect();
        let stale = writes.iter().find(|w1| {
            w1.key == r.key
                && w2s.iter().any(|w2| w1.complete_ns.unwrap() < w2.invoke_ns && w2.call != w1.call)
                // prefer one not far back
                && w1.complete_ns.unwrap() + 50_000_000 > r.invoke_ns
        });
        if let Some(w1) = stale {
            let v = match &w1.call {
                Call::Write { value } | Call::Cas { value, .. } => value.clone(),
                Call::Read => unreachable!(),
            };
            h.ops[rid].outcome = Outcome::Ok { read: Some(Some(v)), revision: None };
            return Some(rid);
        }
    }
    None
}

#[test]
fn randomized_linearizable_histories_pass_and_a_stale_read_fails() {
    let mut seeds = vec![1u64, 2, 3];
    let extra = std::env::var("CHECKER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    seeds.push(extra);
    for seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let g = Gen::random(&mut rng);
        println!("seed {seed} (rerun with CHECKER_SEED={seed}): {g:?}");
        let mut h = generate(seed, &g);
        let t = Instant::now();
        match check(&h) {
            Ok(r) => println!("  linearizable: {r} in {:?}", t.elapsed()),
            Err(v) => panic!("seed {seed}: a generated linearizable history was rejected:\n{v}"),
        }
        check_revisions(&h).unwrap_or_else(|v| panic!("seed {seed}: revisions of a generated history:\n{v}"));
        // One reply's revision below that of an op that completed before it began.
        let mut bad = h.clone();
        let (a, b) = pick_ordered_pair(&bad, &mut rng).expect("two ordered ops with revisions");
        let ra = revision_of(&bad.ops[a]);
        set_revision(&mut bad.ops[b], ra - 1);
        let v = check_revisions(&bad).expect_err("a revision below an earlier reply's");
        println!("  revision of #{b} lowered below #{a}'s: {}", v.kind);
        assert!(
            matches!(
                v.kind,
                lin::ViolationKind::RevisionWentBackwards | lin::ViolationKind::DuplicateWriteRevision
            ),
            "seed {seed}:\n{v}"
        );
        let rid =
            make_stale(&mut h, &mut rng).unwrap_or_else(|| panic!("seed {seed}: no read to make stale"));
        let t = Instant::now();
        match check(&h) {
            Ok(r) => panic!("seed {seed}: read #{rid} made stale, but the history passed: {r}"),
            Err(v) => {
                println!("  after making read #{rid} stale: {} on {} in {:?}", v.kind, v.key, t.elapsed());
                assert_eq!(v.kind, lin::ViolationKind::NotLinearizable, "seed {seed}:\n{v}");
                assert_eq!(v.key, h.ops[rid].key, "seed {seed}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watches.

/// Revisions 1..=7: 3 is a lock revision (no key change), 6 is a transaction.
fn wlog() -> CommittedLog {
    CommittedLog::new(7)
        .put(1, "/a", "x")
        .put(2, "/b", "y")
        .put(4, "/a/c", "z")
        .delete(5, "/a")
        .put(6, "/a/c", "w")
        .put(6, "/a/d", "q")
}

fn acked() -> Vec<(String, u64)> {
    vec![("/a".into(), 1), ("/b".into(), 2), ("/a/c".into(), 4), ("/a".into(), 5), ("/a/d".into(), 6)]
}

fn stream(id: &str, key: &str, recursive: bool, start: u64, messages: Vec<WatchMessage>) -> WatchStream {
    WatchStream { id: id.into(), key_or_prefix: key.into(), recursive, start_revision: start, messages }
}

fn ch(rev: u64, events: &[(&str, Option<&str>)]) -> WatchMessage {
    WatchMessage::change(
        rev,
        events
            .iter()
            .map(|(k, v)| match v {
                Some(v) => WatchEvent::put(k, v, rev),
                None => WatchEvent::delete(k, rev),
            })
            .collect(),
    )
}

fn a_messages() -> Vec<WatchMessage> {
    vec![
        ch(1, &[("/a", Some("x"))]),
        ch(4, &[("/a/c", Some("z"))]),
        WatchMessage::Progress { revision: 4 },
        ch(5, &[("/a", None)]),
        ch(6, &[("/a/d", Some("q")), ("/a/c", Some("w"))]),
        WatchMessage::Progress { revision: 7 },
    ]
}

fn good_streams() -> Vec<WatchStream> {
    vec![
        stream("a-rec", "/a", true, 1, a_messages()),
        stream(
            "b",
            "/b",
            false,
            1,
            vec![ch(2, &[("/b", Some("y"))]), WatchMessage::Progress { revision: 7 }],
        ),
        stream(
            "a-rec-from-5",
            "/a",
            true,
            5,
            vec![ch(5, &[("/a", None)]), ch(6, &[("/a/c", Some("w")), ("/a/d", Some("q"))])],
        ),
        stream(
            "a-only",
            "/a",
            false,
            1,
            vec![ch(1, &[("/a", Some("x"))]), ch(5, &[("/a", None)]), WatchMessage::Progress { revision: 6 }],
        ),
        stream(
            "root",
            "/",
            true,
            3,
            vec![
                ch(4, &[("/a/c", Some("z"))]),
                ch(5, &[("/a", None)]),
                ch(6, &[("/a/c", Some("w")), ("/a/d", Some("q"))]),
            ],
        ),
    ]
}

fn watch_fails(
    streams: Vec<WatchStream>,
    log: &CommittedLog,
    kind: watch::ViolationKind,
) -> watch::Violation {
    match check_watches(&streams, log, &acked()) {
        Ok(r) => panic!("expected {kind}, but the streams passed: {r}"),
        Err(v) => {
            eprintln!("(expected) {v}");
            assert_eq!(v.kind, kind, "wrong kind:\n{v}");
            v
        }
    }
}

fn with_a(messages: Vec<WatchMessage>) -> Vec<WatchStream> {
    vec![stream("a-rec", "/a", true, 1, messages)]
}

#[test]
fn watch_good_streams_pass() {
    let r = check_watches(&good_streams(), &wlog(), &acked()).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(r.streams, 5);
    assert!(r.cross_checked > 0 && r.acknowledged_seen >= 5, "{r}");
}

#[test]
fn watch_compacted_stream_is_exempt_after_it_ends() {
    let s = with_a(vec![ch(1, &[("/a", Some("x"))]), WatchMessage::Compacted { compact_revision: 5 }]);
    check_watches(&s, &wlog(), &acked()).unwrap_or_else(|v| panic!("{v}"));
    // Compacted when the next revision needed (2) is still available is wrong.
    let s = with_a(vec![ch(1, &[("/a", Some("x"))]), WatchMessage::Compacted { compact_revision: 2 }]);
    watch_fails(s, &wlog(), watch::ViolationKind::UnneededCompaction);
}

#[test]
fn watch_duplicate_event_fails() {
    let mut m = a_messages();
    m.insert(2, ch(4, &[("/a/c", Some("z"))]));
    let v = watch_fails(with_a(m), &wlog(), watch::ViolationKind::DuplicateRevision);
    assert!(v.reason.contains("revision 4"), "{v}");
}

#[test]
fn watch_missing_event_is_a_gap() {
    let mut m = a_messages();
    m.remove(1); // revision 4
    m.remove(1); // the progress at 4
    let v = watch_fails(with_a(m), &wlog(), watch::ViolationKind::Gap);
    assert!(v.reason.contains("revision 4") && v.reason.contains("/a/c"), "{v}");
}

#[test]
fn watch_progress_hiding_a_gap_fails() {
    let m = vec![ch(1, &[("/a", Some("x"))]), WatchMessage::Progress { revision: 4 }];
    let v = watch_fails(with_a(m), &wlog(), watch::ViolationKind::Gap);
    assert!(v.reason.contains("progress 4"), "{v}");
}

#[test]
fn watch_out_of_order_revision_fails() {
    let m = vec![
        ch(1, &[("/a", Some("x"))]),
        ch(5, &[("/a", None)]),
        ch(4, &[("/a/c", Some("z"))]),
        ch(6, &[("/a/c", Some("w")), ("/a/d", Some("q"))]),
    ];
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::OutOfOrder);
}

#[test]
fn watch_split_revision_fails() {
    let mut m = a_messages();
    m[4] = ch(6, &[("/a/c", Some("w"))]);
    m.insert(5, ch(6, &[("/a/d", Some("q"))]));
    let v = watch_fails(with_a(m.clone()), &wlog(), watch::ViolationKind::SplitRevision);
    assert!(v.reason.contains("revision 6"), "{v}");
    // Without a log entry for the revision, the two messages alone still give it away.
    let mut log = wlog();
    log.changes.retain(|c| c.revision != 6);
    log.complete = false;
    watch_fails(with_a(m), &log, watch::ViolationKind::SplitRevision);
}

#[test]
fn watch_event_that_never_committed_fails() {
    // Revision 3 changed no key.
    let mut m = a_messages();
    m.insert(1, ch(3, &[("/a", Some("ghost"))]));
    let v = watch_fails(with_a(m), &wlog(), watch::ViolationKind::NeverCommitted);
    assert!(v.reason.contains("ghost"), "{v}");
    // Revision 4 with the wrong value.
    let mut m = a_messages();
    m[1] = ch(4, &[("/a/c", Some("not-z"))]);
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::NeverCommitted);
    // A revision beyond the end of the run.
    let mut m = a_messages();
    m.pop();
    m.push(ch(9, &[("/a", Some("later"))]));
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::BeyondHead);
}

#[test]
fn watch_incomplete_revision_fails() {
    let mut m = a_messages();
    m[4] = ch(6, &[("/a/c", Some("w"))]);
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::IncompleteRevision);
}

#[test]
fn watch_acknowledged_write_never_seen_fails() {
    // The stream stopped after revision 5 without a compaction: revision 6 was acknowledged.
    let m = a_messages()[..4].to_vec();
    let v = watch_fails(with_a(m), &wlog(), watch::ViolationKind::AcknowledgedNotSeen);
    assert!(v.reason.contains("/a/d") && v.reason.contains("revision 6"), "{v}");
    // A stream that received nothing at all.
    let s = vec![stream("b", "/b", false, 1, vec![])];
    watch_fails(s, &wlog(), watch::ViolationKind::AcknowledgedNotSeen);
}

#[test]
fn watch_progress_rules() {
    let mut m = a_messages();
    m.insert(4, WatchMessage::Progress { revision: 3 }); // after revision 5 was delivered
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::ProgressBackwards);
    let m = vec![
        ch(1, &[("/a", Some("x"))]),
        WatchMessage::Progress { revision: 3 },
        WatchMessage::Progress { revision: 2 },
    ];
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::ProgressBackwards);
    // A change at or below a revision progress already claimed.
    let m = vec![WatchMessage::Progress { revision: 3 }, ch(1, &[("/a", Some("x"))])];
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::Gap);
}

#[test]
fn watch_message_after_compacted_fails() {
    let m = vec![
        ch(1, &[("/a", Some("x"))]),
        WatchMessage::Compacted { compact_revision: 5 },
        ch(6, &[("/a/c", Some("w"))]),
    ];
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::MessageAfterCompacted);
}

#[test]
fn watch_events_must_match_the_stream() {
    let mut m = a_messages();
    m[0] = WatchMessage::change(1, vec![WatchEvent::put("/a", "x", 2)]);
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::WrongModRevision);
    let m = vec![ch(2, &[("/b", Some("y"))])];
    watch_fails(with_a(m), &wlog(), watch::ViolationKind::UnwatchedKey);
    // "/ab" is not under "/a".
    let log = CommittedLog::new(1).put(1, "/ab", "n");
    let s = with_a(vec![ch(1, &[("/ab", Some("n"))])]);
    watch_fails(s, &log, watch::ViolationKind::UnwatchedKey);
}

#[test]
fn watch_streams_disagree_on_an_unknown_revision() {
    // The log does not know revision 6; two nodes' streams serve different histories.
    let mut log = wlog();
    log.changes.retain(|c| c.revision != 6);
    log.complete = false;
    let mut other = a_messages();
    other[4] = ch(6, &[("/a/c", Some("DIFFERENT")), ("/a/d", Some("q"))]);
    let streams = vec![stream("node1", "/a", true, 1, a_messages()), stream("node2", "/a", true, 1, other)];
    let v = match check_watches(&streams, &log, &[]) {
        Ok(r) => panic!("expected disagreement: {r}"),
        Err(v) => v,
    };
    eprintln!("(expected) {v}");
    assert_eq!(v.kind, watch::ViolationKind::StreamsDisagree, "{v}");
    assert!(v.to_string().contains("DIFFERENT"), "{v}");
    // With identical streams, an unknown revision is accepted.
    let streams =
        vec![stream("node1", "/a", true, 1, a_messages()), stream("node2", "/a", true, 1, a_messages())];
    check_watches(&streams, &log, &[]).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn watch_log_from_history_and_json_messages() {
    let h =
        B::new().write_rev(0, 0, 10, "x", 1).write_rev(0, 20, 30, "y", 3).write_unknown(1, 40, 50, "z").h();
    let log = CommittedLog::from_history(&h, &[("/k".into(), "z".into(), 5)], 5).expect("consistent");
    assert!(!log.complete, "an Unknown write may have committed unseen");
    assert_eq!(log.changes.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![1, 3, 5]);
    assert!(CommittedLog::from_history(&h, &[("/k".into(), "other".into(), 3)], 5).is_err());

    let msgs: Vec<WatchMessage> = [
        r#"{"revision":1,"events":[{"type":"put","kv":{"key":"/k","value":"x","mod_revision":1}}]}"#,
        r#"{"progress":{"revision":2}}"#,
        r#"{"revision":3,"events":[{"type":"put","kv":{"key":"/k","value":"y","mod_revision":3}}]}"#,
        r#"{"revision":5,"events":[{"type":"put","kv":{"key":"/k","value":"z","mod_revision":5}}]}"#,
    ]
    .iter()
    .map(|s| WatchMessage::from_json(&serde_json::from_str(s).unwrap()).unwrap())
    .collect();
    let del = WatchMessage::from_json(
        &serde_json::from_str(
            r#"{"revision":9,"events":[{"type":"delete","kv":{"key":"/a/b","mod_revision":9}}]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(del, ch(9, &[("/a/b", None)]));
    let c =
        WatchMessage::from_json(&serde_json::from_str(r#"{"compacted":{"compact_revision":4}}"#).unwrap())
            .unwrap();
    assert_eq!(c, WatchMessage::Compacted { compact_revision: 4 });
    let s = vec![stream("k", "/k", false, 1, msgs)];
    check_watches(&s, &log, &[("/k".into(), 1), ("/k".into(), 3)]).unwrap_or_else(|v| panic!("{v}"));
}

// ---------------------------------------------------------------------------------------
// Locks and fencing.

fn grant(client: &str, token: u64, lease: u64, rev: u64) -> Grant {
    Grant {
        client: client.into(),
        name: "db".into(),
        fencing_token: token,
        lease,
        grant_revision: rev,
        observed_at_ns: rev * MS,
    }
}

fn release(client: &str, rev: u64) -> Release {
    Release { client: client.into(), name: "db".into(), revision: rev }
}

fn access(client: &str, token: u64, accepted: bool) -> Access {
    Access { client: client.into(), name: "db".into(), token, accepted }
}

/// c1 holds, releases; c2 holds until its lease expires; c3 holds. A paused c1 and c2
/// come back to the resource with their old tokens and are refused.
fn good_locks() -> LockHistory {
    LockHistory {
        grants: vec![grant("c1", 10, 1, 10), grant("c2", 13, 2, 13), grant("c3", 21, 3, 21)],
        releases: vec![release("c1", 12)],
        expiries: vec![LeaseExpiry { lease: 2, revision: 20 }],
        accesses: vec![
            access("c1", 10, true),
            access("c1", 10, true),
            access("c2", 13, true),
            access("c1", 10, false),
            access("c3", 21, true),
            access("c2", 13, false),
        ],
        limits: HashMap::new(),
    }
}

fn locks_fail(h: &LockHistory, kind: fencing::ViolationKind) -> fencing::Violation {
    match check_locks(h) {
        Ok(r) => panic!("expected {kind}, but the history passed: {r}"),
        Err(v) => {
            eprintln!("(expected) {v}");
            assert_eq!(v.kind, kind, "wrong kind:\n{v}");
            assert!(v.to_string().contains("lock db"), "{v}");
            v
        }
    }
}

#[test]
fn fencing_good_history_passes() {
    let r = check_locks(&good_locks()).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!((r.names, r.grants, r.accepted, r.rejected), (1, 3, 4, 2));
}

#[test]
fn fencing_resource_model() {
    let mut r = GuardedResource::default();
    assert!(r.offer(5));
    assert!(r.offer(5));
    assert!(!r.offer(4));
    assert!(r.offer(9));
    assert_eq!(r.highest, Some(9));
}

#[test]
fn fencing_token_regression_fails() {
    let mut h = good_locks();
    h.grants[2].fencing_token = 12;
    h.accesses.clear();
    let v = locks_fail(&h, fencing::ViolationKind::TokenRegression);
    assert!(v.reason.contains("token 12") && v.reason.contains("token 13"), "{v}");
}

#[test]
fn fencing_equal_tokens_fail() {
    let mut h = good_locks();
    h.grants[2].fencing_token = 13;
    h.accesses.clear();
    locks_fail(&h, fencing::ViolationKind::EqualTokens);
}

#[test]
fn fencing_overlapping_holders_fail() {
    let mut h = good_locks();
    h.grants[1].grant_revision = 11; // before c1's release at 12
    h.grants[1].fencing_token = 11;
    let v = locks_fail(&h, fencing::ViolationKind::OverlappingHolders);
    assert!(v.reason.contains("c2") && v.reason.contains("c1"), "{v}");
    // Never released at all.
    let mut h = good_locks();
    h.releases.clear();
    locks_fail(&h, fencing::ViolationKind::OverlappingHolders);
}

#[test]
fn fencing_semaphore_limit() {
    let mut h = good_locks();
    h.releases.clear();
    h.expiries.clear();
    h.accesses.clear();
    h.limits.insert("db".into(), 2);
    let v = locks_fail(&h, fencing::ViolationKind::OverlappingHolders);
    assert!(v.reason.contains("limit 2") && v.reason.contains("c3"), "{v}");
    h.limits.insert("db".into(), 3);
    check_locks(&h).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn fencing_grant_after_lease_expiry_fails() {
    let mut h = good_locks();
    h.expiries.push(LeaseExpiry { lease: 3, revision: 19 });
    let v = locks_fail(&h, fencing::ViolationKind::GrantAfterLeaseExpiry);
    assert!(v.reason.contains("c3") && v.reason.contains("lease 3"), "{v}");
}

#[test]
fn fencing_resource_accepting_a_stale_token_fails() {
    let mut h = good_locks();
    h.accesses[3].accepted = true; // c1's token 10 after 13
    let v = locks_fail(&h, fencing::ViolationKind::StaleTokenAccepted);
    assert!(v.reason.contains("token 10") && v.reason.contains("13"), "{v}");
}

#[test]
fn fencing_resource_rejecting_the_current_token_fails() {
    let mut h = good_locks();
    h.accesses[4].accepted = false;
    locks_fail(&h, fencing::ViolationKind::CurrentTokenRejected);
}

#[test]
fn fencing_access_with_a_token_never_granted_fails() {
    let mut h = good_locks();
    h.accesses.push(access("c3", 99, true));
    locks_fail(&h, fencing::ViolationKind::TokenNeverGranted);
}

/// Heavier shapes than the default test, for measuring the checker: one key, ten
/// processes, long overlapping ops, many observed `Unknown` writes. Run with
/// `cargo test --test it checkers::stress -- --ignored --nocapture`.
#[test]
#[ignore]
fn stress_linearizability_checker() {
    let shapes = [
        Gen {
            procs: 10,
            keys: 1,
            n_ops: 3_000,
            dur: (50, 5_000),
            long_pct: 10,
            read_pct: 50,
            unknown_pct: 3,
            unknown_delay: 3,
            fail_pct: 2,
        },
        Gen {
            procs: 10,
            keys: 3,
            n_ops: 3_000,
            dur: (50, 5_000),
            long_pct: 10,
            read_pct: 60,
            unknown_pct: 5,
            unknown_delay: 2,
            fail_pct: 2,
        },
        Gen {
            procs: 10,
            keys: 1,
            n_ops: 2_000,
            dur: (1_000, 3_000),
            long_pct: 20,
            read_pct: 30,
            unknown_pct: 2,
            unknown_delay: 2,
            fail_pct: 2,
        },
        Gen {
            procs: 16,
            keys: 1,
            n_ops: 2_000,
            dur: (100, 2_000),
            long_pct: 5,
            read_pct: 70,
            unknown_pct: 6,
            unknown_delay: 1,
            fail_pct: 2,
        },
    ];
    for (i, g) in shapes.iter().enumerate() {
        for seed in 0..3u64 {
            let seed = seed * 100 + i as u64;
            let mut h = generate(seed, g);
            let t = Instant::now();
            let r = check(&h).unwrap_or_else(|v| panic!("seed {seed} {g:?}:\n{v}"));
            println!("{g:?} seed {seed}: {r} in {:?}", t.elapsed());
            let mut rng = StdRng::seed_from_u64(seed);
            let rid = make_stale(&mut h, &mut rng).expect("a read to make stale");
            let t = Instant::now();
            let v = check(&h).expect_err("stale read");
            println!("  stale #{rid}: {} in {:?}", v.kind, t.elapsed());
            assert_eq!(v.kind, lin::ViolationKind::NotLinearizable, "{v}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leases and the failover rule. Times in ms; every lease has a TTL of 2000 ms, and the
// cluster's bounds (election timeout 300 ms, checkpoint 500 ms, request timeout 1000 ms)
// give a deadline of R + 2000 + 600 + 500 + 500 (slack) = R + 3600 after a reference point
// R, and a renewal window of 2000 ms.

/// A lease history under construction.
#[derive(Default)]
struct LH {
    h: LeaseHistory,
}

fn lkey(lease: u64) -> String {
    format!("/eph/l{lease}")
}

impl LH {
    fn new() -> LH {
        LH::default()
    }
    fn op(mut self, lease: u64, call: LeaseCall, t0: u64, t1: u64, reply: LeaseReply) -> LH {
        let id = self.h.ops.len() + self.h.reads.len();
        self.h.ops.push(LeaseOp {
            id,
            process: 0,
            lease,
            call,
            invoke_ns: t0 * MS,
            complete_ns: t1 * MS,
            reply,
        });
        self
    }
    fn grant(self, lease: u64, t0: u64, t1: u64) -> LH {
        self.op(lease, LeaseCall::Grant { ttl_ms: 2000 }, t0, t1, LeaseReply::Ok)
    }
    fn put(self, lease: u64, t0: u64, t1: u64, reply: LeaseReply) -> LH {
        self.op(lease, LeaseCall::Put { key: lkey(lease) }, t0, t1, reply)
    }
    fn keepalive(self, lease: u64, t0: u64, t1: u64, reply: LeaseReply) -> LH {
        self.op(lease, LeaseCall::Keepalive, t0, t1, reply)
    }
    fn revoke(self, lease: u64, t0: u64, t1: u64, reply: LeaseReply) -> LH {
        self.op(lease, LeaseCall::Revoke, t0, t1, reply)
    }
    /// An `Ok` read of the lease's key.
    fn read(mut self, lease: u64, t0: u64, t1: u64, present: bool) -> LH {
        let id = self.h.ops.len() + self.h.reads.len();
        let value = present.then(|| "ephemeral".to_string());
        self.h.reads.push(Op {
            id,
            process: 100,
            key: lkey(lease),
            call: Call::Read,
            invoke_ns: t0 * MS,
            complete_ns: Some(t1 * MS),
            outcome: Outcome::Ok { read: Some(value), revision: None },
        });
        self
    }
    fn fault(mut self, t0: u64, t1: u64) -> LH {
        self.h.faults.push(FaultWindow { start_ns: t0 * MS, end_ns: t1 * MS });
        self
    }
}

fn lease_bounds() -> leases::Bounds {
    leases::Bounds::of(300, 500, 1000)
}

fn leases_pass(b: LH) -> leases::Report {
    match check_leases(&b.h, &lease_bounds()) {
        Ok(r) => r,
        Err(v) => panic!("a good lease history was rejected:\n{v}"),
    }
}

fn leases_fail(b: LH, kind: leases::ViolationKind) -> leases::Violation {
    match check_leases(&b.h, &lease_bounds()) {
        Ok(r) => panic!("expected a violation ({kind}), but the history passed: {r}\n{}", b.h.render()),
        Err(v) => {
            eprintln!("(expected) {v}");
            assert_eq!(v.kind, kind, "wrong kind of violation:\n{v}");
            let shown = v.to_string();
            assert!(shown.contains(&format!("lease {}", v.lease)), "the message names the lease:\n{shown}");
            assert!(shown.contains(&lkey(v.lease)), "the message shows the lease's timeline:\n{shown}");
            v
        }
    }
}

/// Lease 1: granted, its key put, kept alive twice (the last keepalive sent at 1000 and
/// acknowledged at 1010), then abandoned; the key is seen until 2910 and gone from 3050 on
/// (TTL after 1000 is 3000; the deadline after 1010 is 4610).
fn abandoned() -> LH {
    LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .read(1, 30, 40, true)
        .keepalive(1, 500, 510, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .read(1, 1500, 1510, true)
        .read(1, 2900, 2910, true)
        .read(1, 3050, 3060, false)
        .read(1, 3200, 3210, false)
}

#[test]
fn leases_abandoned_kept_alive_and_revoked_leases_pass() {
    let mut b = abandoned()
        // Lease 2: kept alive every 500 ms (one keepalive refused on the way, retried).
        .grant(2, 0, 10)
        .put(2, 10, 20, LeaseReply::Ok);
    for i in 1..10 {
        b = b.keepalive(2, i * 500, i * 500 + 10, LeaseReply::Ok).read(2, i * 500 + 20, i * 500 + 30, true);
    }
    b = b
        .keepalive(2, 5000, 6000, LeaseReply::Fail)
        .keepalive(2, 6100, 6110, LeaseReply::Ok)
        .read(2, 6200, 6210, true)
        // Lease 3: revoked at once; its key goes with it.
        .grant(3, 0, 10)
        .put(3, 10, 20, LeaseReply::Ok)
        .read(3, 30, 40, true)
        .revoke(3, 700, 710, LeaseReply::Ok)
        .read(3, 720, 730, false)
        .keepalive(3, 800, 810, LeaseReply::NotFound);
    let r = leases_pass(b);
    assert_eq!((r.leases, r.keys, r.revoked), (3, 3, 1), "{r}");
    assert_eq!(r.renewals, 3 + 2 + 10, "{r}");
    // Lease 1's two absent reads; lease 3's absent read, acknowledged revoke and 404 come
    // after its revoke was sent, so rule 3 skips them.
    assert_eq!((r.ends, r.leases_seen_ending), (2, 2), "{r}");
    assert_eq!(r.min_end_margin_ns, Some(60 * MS), "lease 1 was seen gone 60 ms after TTL: {r}");
    assert_eq!(r.min_deadline_room_ns, Some((4610 - 2900) * MS), "{r}");
}

#[test]
fn leases_a_revoke_in_doubt_excuses_an_early_end() {
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .revoke(1, 700, 3700, LeaseReply::Unknown)
        .read(1, 800, 810, false);
    leases_pass(b);
}

#[test]
fn leases_absence_before_the_put_is_acknowledged_is_no_end() {
    // The put may not have happened (unknown), or not yet (the read began before its ack).
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 3000, LeaseReply::Unknown)
        .read(1, 100, 110, false)
        .grant(2, 0, 10)
        .put(2, 10, 500, LeaseReply::Ok)
        .read(2, 100, 600, false)
        .read(2, 700, 710, true);
    leases_pass(b);
}

#[test]
fn leases_a_refused_keepalive_renews_nothing() {
    // A 503 at 1500 promised nothing happened: gone at 3050 is after TTL since 1000.
    let b = abandoned().keepalive(1, 1500, 2500, LeaseReply::Fail);
    leases_pass(b);
}

#[test]
fn leases_a_keepalive_in_doubt_may_renew_until_its_window_ends() {
    // Unknown at 1500: it may have been stamped until 1500 + 2000, so the deadline is
    // 3500 + 3600 = 7100, not 4610.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .keepalive(1, 1500, 4500, LeaseReply::Unknown)
        .read(1, 7000, 7010, true);
    leases_pass(b);
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .keepalive(1, 1500, 4500, LeaseReply::Unknown)
        .read(1, 7100, 7110, true);
    leases_fail(b, leases::ViolationKind::LateExpiry);
}

#[test]
fn leases_fault_windows_extend_the_late_bound() {
    // [2000, 3000] overlaps lease 1's life after 1010: 4610 + 1000 + 2 x 1100 = 7810.
    let b = abandoned().fault(2000, 3000).read(1, 7700, 7710, true);
    let v = leases_fail(b, leases::ViolationKind::KeyReappeared);
    assert!(v.reason.contains("3.060ms") || v.reason.contains("3060"), "{v}");
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .fault(2000, 3000)
        .read(1, 7700, 7710, true);
    leases_pass(b);
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .fault(2000, 3000)
        .read(1, 7810, 7820, true);
    leases_fail(b, leases::ViolationKind::LateExpiry);
    // A window over before the reference point extends nothing.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .fault(100, 900)
        .read(1, 4700, 4710, true);
    leases_fail(b, leases::ViolationKind::LateExpiry);
}

#[test]
fn leases_deadline_windows_chain() {
    let b = lease_bounds();
    let w = |s: u64, e: u64| FaultWindow { start_ns: s * MS, end_ns: e * MS };
    assert_eq!(b.deadline(1000 * MS, 2000 * MS, &[]), 4600 * MS);
    // The first window moves the deadline to 4600 + 500 + 2200 = 7300, which brings the
    // second (starting at 7000) into range: 7300 + 100 + 2200 = 9600. The third starts after.
    let windows = [w(9700, 9800), w(7000, 7100), w(4000, 4500)];
    assert_eq!(b.deadline(1000 * MS, 2000 * MS, &windows), 9600 * MS);
}

#[test]
fn leases_an_absent_key_before_ttl_is_an_early_expiry() {
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .read(1, 2900, 2990, false);
    let v = leases_fail(b, leases::ViolationKind::EarlyExpiry);
    assert!(v.reason.contains("10.0 ms before TTL"), "{v}");
}

#[test]
fn leases_a_keepalive_refused_before_ttl_is_an_early_expiry() {
    // What a deposed leader that never saw the renewal at 1000 would answer.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .keepalive(1, 1500, 1502, LeaseReply::NotFound)
        .read(1, 1600, 1610, true);
    leases_fail(b, leases::ViolationKind::EarlyExpiry);
    // A put refused because the lease was gone, too.
    let b = LH::new().grant(1, 0, 10).put(1, 10, 1000, LeaseReply::NotFound);
    leases_fail(b, leases::ViolationKind::EarlyExpiry);
}

#[test]
fn leases_a_kept_alive_key_that_vanishes_is_caught() {
    // Seen absent at 1210, yet the keepalive sent at 1500 was acknowledged.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 500, 510, LeaseReply::Ok)
        .read(1, 1200, 1210, false)
        .keepalive(1, 1500, 1510, LeaseReply::Ok);
    leases_fail(b, leases::ViolationKind::KeptAliveKeyVanished);
    // After an acknowledged revoke, too.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .revoke(1, 200, 210, LeaseReply::Ok)
        .keepalive(1, 500, 510, LeaseReply::Ok);
    leases_fail(b, leases::ViolationKind::KeptAliveKeyVanished);
}

#[test]
fn leases_a_key_that_comes_back_is_caught() {
    let b = abandoned().read(1, 3300, 3310, true);
    leases_fail(b, leases::ViolationKind::KeyReappeared);
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .revoke(1, 700, 710, LeaseReply::Ok)
        .read(1, 720, 730, true);
    leases_fail(b, leases::ViolationKind::KeyReappeared);
}

#[test]
fn leases_a_lease_alive_past_its_deadline_is_a_late_expiry() {
    // Seen present at 4610, the deadline after the keepalive acknowledged at 1010; gone
    // later (a read that began at 4609 would have passed).
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .read(1, 4609, 4700, true);
    leases_pass(b);
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .read(1, 4610, 4620, true)
        .read(1, 4800, 4810, false);
    let v = leases_fail(b, leases::ViolationKind::LateExpiry);
    assert!(v.reason.contains("past its deadline 4610.000ms"), "{v}");
    // A keepalive acknowledged after the deadline is the lease seen alive, too.
    let b = LH::new()
        .grant(1, 0, 10)
        .put(1, 10, 20, LeaseReply::Ok)
        .keepalive(1, 1000, 1010, LeaseReply::Ok)
        .keepalive(1, 5000, 5010, LeaseReply::Ok);
    leases_fail(b, leases::ViolationKind::LateExpiry);
    // A key present though no grant may have succeeded.
    let b = LH::new()
        .op(1, LeaseCall::Grant { ttl_ms: 2000 }, 0, 10, LeaseReply::Fail)
        .put(1, 10, 20, LeaseReply::Unknown)
        .read(1, 30, 40, true);
    leases_fail(b, leases::ViolationKind::LateExpiry);
}
