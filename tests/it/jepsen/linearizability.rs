//! Linearizability of a recorded register history, key by key, and monotonicity of the
//! revisions that replies carried.
//!
//! # What [`check`] verifies
//!
//! Every key is an independent register whose initial value is `None` (absent). For each
//! key, the checker searches for a *linearization*: a total order of (a subset of) the
//! key's ops such that
//!
//! - every `Ok` op is in it, and takes effect at one instant between its `invoke_ns` and
//!   its `complete_ns` (real-time order: if op A completed before op B was invoked, A comes
//!   first; equal timestamps count as concurrent);
//! - every `Fail` op is left out: it never took effect (a failed CAS is not used as an
//!   observation of the value either);
//! - every `Unknown` write or CAS may be in it, at any instant after its invocation (its
//!   completion is open-ended), or be left out; an `Unknown` read constrains nothing and is
//!   dropped;
//! - replaying the order on a register starting at `None` explains every `Ok` result: an
//!   `Ok` read returns the value current at its point, an `Ok` CAS finds the current value
//!   equal to its `expected` (then sets `value`), a write sets its value. An `Ok` read that
//!   carries no value (`read: None`) constrains nothing and is dropped.
//!
//! The search is the Wing–Gong / Lowe algorithm, as in Knossos and Porcupine: a depth-first
//! search over linearization points with a memo of visited configurations (which ops are
//! linearized, as a bitset, plus the register value), using the "just-in-time" rule: an op
//! may be linearized next only if no un-linearized `Ok` op completed before it was
//! invoked. Reductions, each of which keeps the search exact (sound and complete):
//!
//! - an `Ok` read whose value equals the register is linearized at once, without
//!   branching (linearizing it earlier never hurts: a read changes no state and removing
//!   it only relaxes the real-time constraints);
//! - an optional (`Unknown`) write or CAS of a value that no remaining read or CAS
//!   observes is dropped (a linearization using it stays valid without it), and one that
//!   is linearized must be followed at once by an op observing its value (otherwise it
//!   could be removed, since only blind writes can follow it);
//! - the memo ignores optional ops whose value can no longer be observed;
//! - values that no (kept) read or CAS observes are indistinguishable to the search and
//!   are merged into one (messages still show the values as recorded).
//!
//! Values need not be unique for soundness; unique values only make the search faster.
//! The search is bounded by [`Options::max_steps_per_key`]; a key whose search exceeds it
//! yields a [`Violation`] of kind [`ViolationKind::Inconclusive`], which is *not* a
//! linearizability violation (but is an error, so an undecided run cannot pass silently).
//!
//! # What [`check_revisions`] verifies
//!
//! Over the whole history (revisions are store-wide, across keys), for `Ok` ops whose reply
//! carried a revision and that have a completion time:
//! - if A completed before B was invoked, `rev(B) >= rev(A)` (revisions never go backwards
//!   in real time);
//! - if B is a write or CAS, `rev(B) > rev(A)` for every such A (a write takes a revision
//!   newer than anything already observed);
//! - no two `Ok` writes or CAS carry the same revision (every applied change takes the next
//!   revision).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use super::history::{Call, History, Op, Outcome, Value};

/// Bounds of the search.
#[derive(Clone, Debug)]
pub struct Options {
    /// Configurations the search may visit for one key before giving up as inconclusive
    /// (a linearizable history typically needs one or two per op; each costs some tens
    /// of microseconds in a debug build).
    pub max_steps_per_key: u64,
    /// How many ops of the longest linearizable prefix a violation shows.
    pub context_ops: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_steps_per_key: 1_000_000, context_ops: 12 }
    }
}

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Ops in the history.
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    /// Ops that took part in the search (`Ok` ops with something to check, plus the
    /// `Unknown` writes and CAS that could explain some observation).
    pub searched: usize,
    /// `Unknown` ops left out because they cannot matter (reads, and writes of values that
    /// nothing observes).
    pub dropped_unknown: usize,
    /// Configurations visited by the search, all keys together.
    pub steps: u64,
    /// The most configurations visited for a single key.
    pub max_key_steps: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys, {} ops ({} ok, {} fail, {} unknown), {} searched, {} unknown dropped, {} steps (max {} on one key)",
            self.keys,
            self.ops,
            self.ok,
            self.fail,
            self.unknown,
            self.searched,
            self.dropped_unknown,
            self.steps,
            self.max_key_steps
        )
    }
}

/// Which rule a history broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// A read returned a value that no `Ok` or `Unknown` op on the key ever wrote.
    ValueNeverWritten,
    /// A read returned a value whose every write was invoked after the read completed.
    ValueFromTheFuture,
    /// No linearization of the key's ops exists.
    NotLinearizable,
    /// The search budget ran out: neither a linearization nor a proof that none exists.
    /// Not a violation.
    Inconclusive,
    /// An op's revision is lower than one that completed before it was invoked.
    RevisionWentBackwards,
    /// A write's revision is not newer than one that completed before it was invoked.
    WriteRevisionNotNewer,
    /// Two acknowledged writes carry the same revision.
    DuplicateWriteRevision,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::ValueNeverWritten => "read of a value never written",
            ViolationKind::ValueFromTheFuture => "read of a value before it was written",
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::Inconclusive => "INCONCLUSIVE (search budget exhausted; not a violation)",
            ViolationKind::RevisionWentBackwards => "revision went backwards",
            ViolationKind::WriteRevisionNotNewer => "write revision not newer than an earlier reply",
            ViolationKind::DuplicateWriteRevision => "two writes share a revision",
        })
    }
}

/// A broken rule, with the key, why, and the ops concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The key the offending ops are on (for revision rules: the key of the later op).
    pub key: String,
    /// One paragraph: what could not be explained.
    pub reason: String,
    /// The offending sub-history, rendered with [`History::render`] under headings.
    pub context: String,
}

impl Violation {
    /// True when the search gave up rather than found a violation.
    pub fn is_inconclusive(&self) -> bool {
        self.kind == ViolationKind::Inconclusive
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} on key {}: {}", self.kind, self.key, self.reason)?;
        f.write_str(&self.context)
    }
}

impl std::error::Error for Violation {}

/// Checks every key of `h` with the default [`Options`]. See the module documentation.
pub fn check(h: &History) -> Result<Report, Violation> {
    check_with(h, &Options::default())
}

/// Checks every key of `h`; stops at the first key that fails.
pub fn check_with(h: &History, opts: &Options) -> Result<Report, Violation> {
    let mut report = Report { ops: h.ops.len(), ..Default::default() };
    for op in &h.ops {
        match op.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail => report.fail += 1,
            Outcome::Unknown => report.unknown += 1,
        }
    }
    for key in h.keys() {
        let ops = h.for_key(&key);
        let stats = check_key(&key, &ops, opts)?;
        report.keys += 1;
        report.searched += stats.searched;
        report.dropped_unknown += stats.dropped_unknown;
        report.steps += stats.steps;
        report.max_key_steps = report.max_key_steps.max(stats.steps);
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// The search.

/// A small, fast hasher for the memo (FxHash's mixing step).
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

/// An op's effect on the register, values interned (0 is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

impl Effect {
    /// The value the op requires the register to hold.
    fn observes(self) -> Option<u32> {
        match self {
            Effect::Read(v) | Effect::Cas(v, _) => Some(v),
            Effect::Write(_) => None,
        }
    }
    /// The value the op leaves in the register, if it writes.
    fn writes(self) -> Option<u32> {
        match self {
            Effect::Write(w) | Effect::Cas(_, w) => Some(w),
            Effect::Read(_) => None,
        }
    }
    /// The register after the op, or `None` if the op cannot take effect on `v`.
    fn apply(self, v: u32) -> Option<u32> {
        match self {
            Effect::Read(r) => (r == v).then_some(v),
            Effect::Write(w) => Some(w),
            Effect::Cas(e, w) => (e == v).then_some(w),
        }
    }
}

struct Entry<'a> {
    op: &'a Op,
    invoke: u64,
    /// Latest instant the op may take effect (`u64::MAX` for optional ops).
    end: u64,
    /// As searched: values nothing observes are merged into one.
    effect: Effect,
    /// With the values as recorded, for messages.
    raw: Effect,
}

#[derive(Default)]
struct Interner {
    ids: HashMap<Value, u32>,
    values: Vec<Value>,
}

impl Interner {
    fn new() -> Interner {
        let mut i = Interner::default();
        i.id(&None);
        i
    }
    fn id(&mut self, v: &Value) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.ids.insert(v.clone(), id);
        id
    }
    fn show(&self, id: u32) -> String {
        match self.values.get(id as usize) {
            Some(v) => show_value(v),
            None => "(a value no op observes)".into(),
        }
    }
}

fn show_value(v: &Value) -> String {
    match v {
        None => "None (absent)".into(),
        Some(s) => format!("{s:?}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cand {
    Req(usize),
    Opt(usize),
}

struct Undo {
    cand: Cand,
    value: u32,
    must: bool,
    k: usize,
}

struct Frame {
    cands: Vec<Cand>,
    next: usize,
    undo: Option<Undo>,
}

struct Search<'a> {
    /// `Ok` ops, by invocation.
    req: Vec<Entry<'a>>,
    /// `Unknown` writes and CAS that some op could observe, by invocation.
    opt: Vec<Entry<'a>>,
    lin_req: Vec<u64>,
    lin_opt: Vec<u64>,
    /// Every required op below `k` is linearized.
    k: usize,
    value: u32,
    initial: u32,
    /// The id standing for every value that nothing observes.
    unobserved: u32,
    /// The last op linearized was optional: the next must observe its value.
    must: bool,
    /// Per value: un-linearized ops (required or optional) that observe it.
    obs_left: Vec<u32>,
    done_req: usize,
}

fn bit(v: &[u64], i: usize) -> bool {
    v[i / 64] >> (i % 64) & 1 == 1
}

fn set_bit(v: &mut [u64], i: usize, on: bool) {
    if on {
        v[i / 64] |= 1 << (i % 64);
    } else {
        v[i / 64] &= !(1 << (i % 64));
    }
}

impl<'a> Search<'a> {
    fn new(
        req: Vec<Entry<'a>>,
        opt: Vec<Entry<'a>>,
        n_values: usize,
        unobserved: u32,
        initial: u32,
    ) -> Search<'a> {
        let mut obs_left = vec![0u32; n_values];
        for e in req.iter().chain(opt.iter()) {
            if let Some(o) = e.effect.observes() {
                obs_left[o as usize] += 1;
            }
        }
        Search {
            lin_req: vec![0; req.len().div_ceil(64)],
            lin_opt: vec![0; opt.len().div_ceil(64)],
            req,
            opt,
            k: 0,
            value: initial,
            initial,
            unobserved,
            must: false,
            obs_left,
            done_req: 0,
        }
    }

    fn entry(&self, c: Cand) -> &Entry<'a> {
        match c {
            Cand::Req(i) => &self.req[i],
            Cand::Opt(j) => &self.opt[j],
        }
    }

    fn done(&self) -> bool {
        self.k >= self.req.len()
    }

    /// The deadline (earliest end among un-linearized required ops) and the end of the
    /// window of required ops invoked no later than it.
    fn deadline(&self) -> (u64, usize) {
        let n = self.req.len();
        if self.k >= n {
            return (u64::MAX, n);
        }
        let mut m = self.req[self.k].end;
        let mut i = self.k + 1;
        // Ops are sorted by invocation and end >= invoke, so once an op is invoked after
        // the running minimum, no later op can lower it.
        while i < n && self.req[i].invoke <= m {
            if !bit(&self.lin_req, i) {
                m = m.min(self.req[i].end);
            }
            i += 1;
        }
        (m, i)
    }

    /// Is linearizing optional op `j` of any use now (someone else still observes its value)?
    fn opt_useful(&self, j: usize) -> bool {
        let e = self.opt[j].effect;
        let w = e.writes().expect("optional ops write") as usize;
        let own = u32::from(e.observes() == Some(w as u32));
        self.obs_left[w] > own
    }

    /// The ops that may be linearized next, in the order to try them.
    fn candidates(&self) -> Vec<Cand> {
        let (m, end) = self.deadline();
        let mut scored: Vec<(u64, u64, Cand)> = Vec::new();
        let mut wanted: Vec<u32> = Vec::new();
        for i in self.k..end {
            if bit(&self.lin_req, i) {
                continue;
            }
            let e = self.req[i].effect;
            if let Effect::Read(r) = e {
                if r == self.value {
                    // Linearizing a matching read now never hurts: no branching.
                    return vec![Cand::Req(i)];
                }
            }
            let tier = match e.observes() {
                Some(o) if o != self.value => {
                    wanted.push(o);
                    continue;
                }
                Some(_) => 1,
                None if self.must => continue,
                // A write of a value someone reads is best tried late (just before its
                // readers); a write of a value nobody observes, early.
                None if e.writes() == Some(self.unobserved) => 1,
                None => 2,
            };
            scored.push((tier, self.req[i].end, Cand::Req(i)));
        }
        for j in 0..self.opt.len() {
            if self.opt[j].invoke > m {
                break;
            }
            if bit(&self.lin_opt, j) || !self.opt_useful(j) {
                continue;
            }
            let e = self.opt[j].effect;
            let ok = match e.observes() {
                Some(o) => o == self.value,
                None => !self.must,
            };
            if ok {
                let w = e.writes().unwrap_or(0);
                let tier = if wanted.contains(&w) { 0 } else { 3 };
                scored.push((tier, self.opt[j].invoke, Cand::Opt(j)));
            }
        }
        scored.sort_by_key(|&(t, x, _)| (t, x));
        scored.into_iter().map(|(_, _, c)| c).collect()
    }

    fn apply(&mut self, c: Cand) -> Undo {
        let undo = Undo { cand: c, value: self.value, must: self.must, k: self.k };
        let e = self.entry(c).effect;
        if let Some(o) = e.observes() {
            self.obs_left[o as usize] -= 1;
        }
        self.value = e.apply(self.value).expect("candidates are valid");
        match c {
            Cand::Req(i) => {
                set_bit(&mut self.lin_req, i, true);
                self.must = false;
                self.done_req += 1;
                while self.k < self.req.len() && bit(&self.lin_req, self.k) {
                    self.k += 1;
                }
            }
            Cand::Opt(j) => {
                set_bit(&mut self.lin_opt, j, true);
                self.must = true;
            }
        }
        undo
    }

    fn revert(&mut self, u: Undo) {
        let e = self.entry(u.cand).effect;
        if let Some(o) = e.observes() {
            self.obs_left[o as usize] += 1;
        }
        match u.cand {
            Cand::Req(i) => {
                set_bit(&mut self.lin_req, i, false);
                self.done_req -= 1;
            }
            Cand::Opt(j) => set_bit(&mut self.lin_opt, j, false),
        }
        self.value = u.value;
        self.must = u.must;
        self.k = u.k;
    }

    /// The configuration, canonically: prefix length, register, the `must` flag, the
    /// linearized optional ops that can still matter, and the linearized required ops
    /// beyond the prefix.
    fn memo_key(&self) -> Vec<u64> {
        let mut key = Vec::with_capacity(2 + self.lin_opt.len() + 2);
        key.push(self.k as u64);
        key.push(((self.value as u64) << 1) | self.must as u64);
        for (w, &word) in self.lin_opt.iter().enumerate() {
            let mut masked = 0u64;
            let mut bits = word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if self.opt_useful(w * 64 + b) {
                    masked |= 1 << b;
                }
            }
            key.push(masked);
        }
        let mut last = self.lin_req.len();
        while last > self.k / 64 && self.lin_req[last - 1] == 0 {
            last -= 1;
        }
        if self.k / 64 < last {
            key.extend_from_slice(&self.lin_req[self.k / 64..last]);
        }
        key
    }
}

struct KeyStats {
    searched: usize,
    dropped_unknown: usize,
    steps: u64,
}

fn check_key(key: &str, ops: &[&Op], opts: &Options) -> Result<KeyStats, Violation> {
    let mut values = Interner::new();
    let mut req: Vec<Entry> = Vec::new();
    let mut opt: Vec<Entry> = Vec::new();
    let mut dropped_unknown = 0;
    for &op in ops {
        let effect = match (&op.call, &op.outcome) {
            (_, Outcome::Fail) => continue,
            (Call::Read, Outcome::Ok { read: Some(v), .. }) => Effect::Read(values.id(v)),
            (Call::Read, Outcome::Ok { read: None, .. }) => continue,
            (Call::Read, Outcome::Unknown) => {
                dropped_unknown += 1;
                continue;
            }
            (Call::Write { value }, _) => Effect::Write(values.id(&Some(value.clone()))),
            (Call::Cas { expected, value }, _) => {
                Effect::Cas(values.id(expected), values.id(&Some(value.clone())))
            }
        };
        let invoke = op.invoke_ns;
        let end = op.effective_end().max(invoke);
        let e = Entry { op, invoke, end, effect, raw: effect };
        if matches!(op.outcome, Outcome::Unknown) {
            opt.push(e);
        } else {
            req.push(e);
        }
    }

    // Reads of values that nothing could have written: a clear message, no search.
    let mut writers_of: HashMap<u32, Vec<&Entry>> = HashMap::new();
    for w in req.iter().chain(opt.iter()) {
        if let Some(v) = w.effect.writes() {
            writers_of.entry(v).or_default().push(w);
        }
    }
    for r in &req {
        let Effect::Read(v) = r.effect else { continue };
        if v == 0 {
            continue;
        }
        let writers: &[&Entry] = writers_of.get(&v).map_or(&[], |w| w.as_slice());
        if writers.is_empty() {
            let failed: Vec<&Op> = ops
                .iter()
                .copied()
                .filter(|o| {
                    matches!(o.outcome, Outcome::Fail)
                        && match &o.call {
                            Call::Write { value } | Call::Cas { value, .. } => {
                                values.ids.get(&Some(value.clone())) == Some(&v)
                            }
                            Call::Read => false,
                        }
                })
                .collect();
            let mut reason = format!(
                "op #{} read {}, which no Ok or Unknown write or CAS on this key ever wrote",
                r.op.id,
                values.show(v)
            );
            let mut context = format!("The read:\n{}", History::render(&[r.op]));
            if !failed.is_empty() {
                reason.push_str(&format!(
                    "; it was written only by op(s) {} whose outcome was Fail (definitely not applied), so a failed write took effect",
                    failed.iter().map(|o| format!("#{}", o.id)).collect::<Vec<_>>().join(", ")
                ));
                context.push_str(&format!("Failed writes of that value:\n{}", History::render(&failed)));
            }
            return Err(Violation {
                kind: ViolationKind::ValueNeverWritten,
                key: key.into(),
                reason,
                context,
            });
        }
        if writers.iter().all(|w| w.invoke > r.end) {
            let ws: Vec<&Op> = writers.iter().map(|w| w.op).collect();
            return Err(Violation {
                kind: ViolationKind::ValueFromTheFuture,
                key: key.into(),
                reason: format!(
                    "op #{} read {}, but every write of that value was invoked after the read completed",
                    r.op.id,
                    values.show(v)
                ),
                context: format!(
                    "The read:\n{}The writes:\n{}",
                    History::render(&[r.op]),
                    History::render(&ws)
                ),
            });
        }
    }

    // Drop optional ops whose written value nothing kept observes (to a fixpoint: dropping
    // a CAS removes an observation).
    loop {
        let mut observers: HashMap<u32, usize> = HashMap::new();
        for e in req.iter().chain(opt.iter()) {
            if let Some(o) = e.effect.observes() {
                *observers.entry(o).or_default() += 1;
            }
        }
        let before = opt.len();
        opt.retain(|e| {
            let w = e.effect.writes().expect("optional ops write");
            // A CAS observing its own new value does not keep itself alive.
            let own = usize::from(e.effect.observes() == Some(w));
            observers.get(&w).copied().unwrap_or(0) > own
        });
        dropped_unknown += before - opt.len();
        if opt.len() == before {
            break;
        }
    }

    // Values that no kept op observes are indistinguishable to the search: merge them
    // into one (fewer distinct configurations to visit).
    let n_values = values.values.len();
    let unobserved = n_values as u32;
    let mut observed = vec![false; n_values];
    for e in req.iter().chain(opt.iter()) {
        if let Some(o) = e.effect.observes() {
            observed[o as usize] = true;
        }
    }
    let merge = |v: u32| if observed[v as usize] { v } else { unobserved };
    for e in req.iter_mut().chain(opt.iter_mut()) {
        e.effect = match e.effect {
            Effect::Read(r) => Effect::Read(merge(r)),
            Effect::Write(w) => Effect::Write(merge(w)),
            Effect::Cas(x, w) => Effect::Cas(merge(x), merge(w)),
        };
    }
    let searched = req.len() + opt.len();
    let mut s = Search::new(req, opt, n_values + 1, unobserved, merge(0));
    let mut memo: FxSet<Vec<u64>> = FxSet::default();
    let mut steps: u64 = 0;
    let mut best_depth = 0usize;
    let mut best_path: Vec<Cand> = Vec::new();

    if s.done() {
        return Ok(KeyStats { searched, dropped_unknown, steps });
    }
    memo.insert(s.memo_key());
    let mut stack: Vec<Frame> = vec![Frame { cands: s.candidates(), next: 0, undo: None }];
    while let Some(top) = stack.last_mut() {
        if top.next < top.cands.len() {
            let c = top.cands[top.next];
            top.next += 1;
            let undo = s.apply(c);
            if s.done() {
                return Ok(KeyStats { searched, dropped_unknown, steps: steps + 1 });
            }
            if !memo.insert(s.memo_key()) {
                s.revert(undo);
                continue;
            }
            steps += 1;
            if s.done_req > best_depth {
                best_depth = s.done_req;
                best_path = stack.iter().filter_map(|f| f.undo.as_ref().map(|u| u.cand)).collect();
                best_path.push(c);
            }
            if steps > opts.max_steps_per_key {
                let path: Vec<Cand> = stack.iter().filter_map(|f| f.undo.as_ref().map(|u| u.cand)).collect();
                return Err(inconclusive(key, &s, &values, &path, steps, opts));
            }
            let cands = s.candidates();
            stack.push(Frame { cands, next: 0, undo: Some(undo) });
        } else {
            let f = stack.pop().expect("non-empty");
            if let Some(u) = f.undo {
                s.revert(u);
            }
        }
    }
    Err(not_linearizable(key, s, &values, &best_path, steps, opts))
}

/// Replays `path` from the initial configuration; returns each step with the register
/// value (as recorded, not merged) after it.
fn replay(s: &mut Search, path: &[Cand]) -> Vec<(Cand, u32)> {
    let mut out = Vec::new();
    let mut raw = 0;
    for &c in path {
        s.apply(c);
        if let Some(w) = s.entry(c).raw.writes() {
            raw = w;
        }
        out.push((c, raw));
    }
    out
}

fn render_prefix(s: &Search, values: &Interner, steps: &[(Cand, u32)], n: usize) -> String {
    let skip = steps.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("  ... {skip} earlier ops\n"));
    }
    for &(c, v) in &steps[skip..] {
        let e = s.entry(c);
        out.push_str(&format!(
            "{}    => register {}{}\n",
            History::render(&[e.op]).trim_end(),
            values.show(v),
            if matches!(c, Cand::Opt(_)) { " (Unknown op, taken as applied)" } else { "" }
        ));
    }
    out
}

fn not_linearizable(
    key: &str,
    mut s: Search,
    values: &Interner,
    best_path: &[Cand],
    steps: u64,
    opts: &Options,
) -> Violation {
    // Back to the initial configuration, then to the deepest one found.
    s.lin_req.iter_mut().for_each(|w| *w = 0);
    s.lin_opt.iter_mut().for_each(|w| *w = 0);
    s.k = 0;
    s.value = s.initial;
    s.must = false;
    s.done_req = 0;
    s.obs_left.iter_mut().for_each(|o| *o = 0);
    for e in s.req.iter().chain(s.opt.iter()) {
        if let Some(o) = e.effect.observes() {
            s.obs_left[o as usize] += 1;
        }
    }
    let placed = replay(&mut s, best_path);
    let raw_value = placed.last().map_or(0, |&(_, v)| v);
    let (m, end) = s.deadline();
    let pending: Vec<usize> = (s.k..end).filter(|&i| !bit(&s.lin_req, i)).collect();
    let blocker = pending.iter().copied().min_by_key(|&i| s.req[i].end);

    let mut reason = format!(
        "no order of the {} Ok ops (with any subset of the {} relevant Unknown writes/CAS) explains the results. \
         The longest explainable prefix has {} Ok ops and leaves the register at {}",
        s.req.len(),
        s.opt.len(),
        s.done_req,
        values.show(raw_value)
    );
    if let Some(b) = blocker {
        let e = &s.req[b];
        reason.push_str(&format!(
            "; from there op #{} (which must take effect before it completed at {:.3}ms) cannot be placed",
            e.op.id,
            e.end as f64 / 1e6
        ));
        if let Some(o) = e.raw.observes() {
            if o != raw_value {
                let what = if matches!(e.raw, Effect::Read(_)) { "returned" } else { "expected" };
                reason.push_str(&format!(
                    ": it {what} {} but the register holds {}",
                    values.show(o),
                    values.show(raw_value)
                ));
            }
        }
    }
    reason.push_str(&format!(" ({steps} configurations searched)."));

    let mut context =
        String::from("Longest linearizable prefix (linearization order, register after each op):\n");
    context.push_str(&render_prefix(&s, values, &placed, opts.context_ops));
    let mut cant: Vec<&Op> = pending.iter().map(|&i| s.req[i].op).collect();
    cant.sort_by_key(|o| (o.invoke_ns, o.id));
    context.push_str(&format!(
        "Ops that could not be placed next (Ok ops invoked by the deadline {:.3}ms, not yet linearized):\n{}",
        m as f64 / 1e6,
        History::render(&cant)
    ));
    let opt_left: Vec<&Op> = (0..s.opt.len()).filter(|&j| !bit(&s.lin_opt, j)).map(|j| s.opt[j].op).collect();
    if !opt_left.is_empty() {
        let shown: Vec<&Op> =
            opt_left.iter().copied().filter(|o| o.invoke_ns <= m).take(opts.context_ops).collect();
        if !shown.is_empty() {
            context.push_str(&format!(
                "Unknown ops available but unused at that point:\n{}",
                History::render(&shown)
            ));
        }
    }
    // Everything on the key (including Fail and dropped ops) around the failure, by time.
    let from = placed.iter().rev().take(opts.context_ops).map(|&(c, _)| s.entry(c).invoke).min().unwrap_or(0);
    let window: Vec<&Op> = all_ops_between(&s, from, m);
    context.push_str(&format!(
        "All ops on this key invoked in that window, in real-time order:\n{}",
        History::render(&window)
    ));
    Violation { kind: ViolationKind::NotLinearizable, key: key.into(), reason, context }
}

fn all_ops_between<'a>(s: &Search<'a>, from: u64, to: u64) -> Vec<&'a Op> {
    let mut ops: Vec<&'a Op> = s
        .req
        .iter()
        .chain(s.opt.iter())
        .map(|e| e.op)
        .filter(|o| o.invoke_ns >= from && o.invoke_ns <= to)
        .collect();
    ops.sort_by_key(|o| (o.invoke_ns, o.id));
    ops.truncate(200);
    ops
}

fn inconclusive(
    key: &str,
    s: &Search,
    values: &Interner,
    path: &[Cand],
    steps: u64,
    opts: &Options,
) -> Violation {
    let (m, _) = s.deadline();
    let mut context = String::from("Current search position (last ops of the partial linearization):\n");
    let skip = path.len().saturating_sub(opts.context_ops);
    let ops: Vec<&Op> = path[skip..].iter().map(|&c| s.entry(c).op).collect();
    context.push_str(&History::render(&ops));
    Violation {
        kind: ViolationKind::Inconclusive,
        key: key.into(),
        reason: format!(
            "gave up after {steps} configurations (limit {}) with {} of {} Ok ops linearized, register {}, deadline {:.3}ms; \
             raise Options::max_steps_per_key or record a smaller history",
            opts.max_steps_per_key,
            s.done_req,
            s.req.len(),
            values.show(s.value),
            m as f64 / 1e6
        ),
        context,
    }
}

// ---------------------------------------------------------------------------------------
// Revisions.

/// Checks the revision rules of the module documentation over all `Ok` ops that carry a
/// revision and a completion time.
pub fn check_revisions(h: &History) -> Result<(), Violation> {
    let mut ops: Vec<(&Op, u64, u64)> = h
        .ops
        .iter()
        .filter_map(|o| match (&o.outcome, o.complete_ns) {
            (Outcome::Ok { revision: Some(r), .. }, Some(c)) => Some((o, *r, c)),
            _ => None,
        })
        .collect();
    ops.sort_by_key(|&(o, _, c)| (c, o.id));
    // prefix[i]: the op with the highest revision among the first i+1 completions.
    let mut prefix: Vec<(u64, &Op)> = Vec::with_capacity(ops.len());
    for &(o, r, _) in &ops {
        match prefix.last() {
            Some(&(best, _)) if best >= r => prefix.push(*prefix.last().expect("non-empty")),
            _ => prefix.push((r, o)),
        }
    }
    let mut writes: HashMap<u64, &Op> = HashMap::new();
    let mut by_invoke = ops.clone();
    by_invoke.sort_by_key(|&(o, _, _)| (o.invoke_ns, o.id));
    for &(b, rb, _) in &by_invoke {
        let is_write = !matches!(b.call, Call::Read);
        if is_write {
            if let Some(a) = writes.insert(rb, b) {
                return Err(Violation {
                    kind: ViolationKind::DuplicateWriteRevision,
                    key: b.key.clone(),
                    reason: format!(
                        "acknowledged writes #{} and #{} both carry revision {rb}; every applied change takes its own revision",
                        a.id, b.id
                    ),
                    context: format!("The writes:\n{}", History::render(&[a, b])),
                });
            }
        }
        let n = ops.partition_point(|&(_, _, c)| c < b.invoke_ns);
        if n == 0 {
            continue;
        }
        let (ra, a) = prefix[n - 1];
        if rb < ra || (is_write && rb == ra) {
            let (kind, rule) = if rb < ra {
                (
                    ViolationKind::RevisionWentBackwards,
                    "a reply's revision must not be lower than one already returned",
                )
            } else {
                (
                    ViolationKind::WriteRevisionNotNewer,
                    "a write must take a revision newer than any already returned",
                )
            };
            return Err(Violation {
                kind,
                key: b.key.clone(),
                reason: format!(
                    "op #{} (revision {rb}) was invoked after op #{} on key {} completed with revision {ra}; {rule}",
                    b.id, a.id, a.key
                ),
                context: format!("Earlier op, then later op:\n{}", History::render(&[a, b])),
            });
        }
    }
    Ok(())
}
