//! Leases under faults: what clients saw of leases and their ephemeral keys (grants,
//! keepalives, revokes, puts under a lease, linearizable reads of the keys), and the checker
//! of the failover rule.
//!
//! Times are nanoseconds on one monotonic clock (the recorder's; the servers run on the
//! same machine, so real time passes at the same rate for them). Each lease has one key,
//! put under it once; the workload never writes or deletes that key otherwise.
//!
//! # Terms
//!
//! - A *renewal* is a grant or a keepalive of the lease. The leader stamps its lease clock
//!   into a renewal after the client sent it, so an acknowledged renewal sent at `s` (its
//!   invoke time) sets the lease's end no earlier than `s + TTL`. Its *reference point*
//!   (latest moment its stamp can have been taken) is its completion when acknowledged
//!   (201/200), and `invoke + renewal_window` when its outcome is unknown; a renewal that
//!   definitely failed (503, refused, other 4xx, 404) has none.
//! - The lease is *observed ended* at `t` by an `Ok` read of its key that saw it absent,
//!   invoked after the put of the key was acknowledged (`t` = the read's completion), or by
//!   a 404 `lease_not_found` answer to a keepalive, put or revoke of it (`t` = completion).
//!   Only the read and an acknowledged revoke are *deletions seen*: a keepalive refused
//!   because the leader's clock says the time is up comes before the expiry commits.
//! - The lease is *observed alive* during `[invoke, complete]` of an `Ok` read that saw its
//!   key present, and of an acknowledged keepalive.
//! - The *deadline* of reference point `R` is `R + TTL + longest_election + checkpoint +
//!   slack` (the failover rule: one leader change, whose new leader resumes the lease clock
//!   from the last reading replicated at most one checkpoint earlier), extended by every
//!   fault window `[start, end]` with `end > R` and `start <` the deadline so far (taken in
//!   order of start, each one possibly bringing the next into range) by the window's length
//!   plus two more leader changes (`2 x (longest_election + checkpoint)`): while a fault
//!   lasts the lease clock may not run at all (no quorum), the fault may depose the leader
//!   when it starts, and healing it may depose the next (a node that was cut off comes back
//!   with a higher term). Leader changes inside a window lose clock time only inside it.
//!
//! # What [`check_leases`] verifies, lease by lease
//!
//! 1. **Kept-alive key vanished** (rule b): after a deletion was seen at `t`, no keepalive
//!    sent after `t` is acknowledged (the lease ended with its key; a renewal of a lease that
//!    does not exist cannot commit).
//! 2. **Key reappeared** (rule b): after a deletion was seen at `t`, no read invoked after
//!    `t` sees the key present (nothing writes it again, and a put under a lease that ended
//!    is refused).
//! 3. **Early expiry** (rule a): an observed end at `t` must not come before `s + TTL` for
//!    any acknowledged renewal sent at `s`, unless a revoke of the lease that may have taken
//!    effect (acknowledged or unknown) was sent before `t`.
//! 4. **Late expiry** (rule c): an observation of the lease alive invoked at `i` needs a
//!    reference point `R` of a renewal (other than itself) sent before the observation
//!    completed, with `i <` the deadline of `R`. Together with the recorder's drain (the
//!    observers keep reading after the workload stops keeping leases alive, until every key
//!    is gone) this bounds every lease's end: the upper bound applies to every lease,
//!    whatever faults happened, because the faults extend it as defined above.
//!
//! Mass expiries are paced (`--lease-revoke-rate`); the workloads that use this checker end
//! a handful of leases at once, far below one pacing burst, so the bound has no pacing term.

use std::collections::BTreeMap;
use std::fmt;

use super::history::{Call, Op, Outcome};

/// What a client asked about a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseCall {
    /// `POST /v1/leases` with a client-chosen id.
    Grant { ttl_ms: u64 },
    /// `PUT /v1/kv{key}` under the lease.
    Put { key: String },
    /// `POST /v1/leases/{id}/keepalive`.
    Keepalive,
    /// `DELETE /v1/leases/{id}`.
    Revoke,
}

/// What the client saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseReply {
    /// 201 (grant) or 200: acknowledged.
    Ok,
    /// 404 `lease_not_found`: the lease did not exist (or its time was up).
    NotFound,
    /// Definitely no effect: a refused connection, 503, or another 4xx.
    Fail,
    /// May or may not have taken effect: a timeout, a reset, 504 or another 5xx.
    Unknown,
}

/// One request about one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOp {
    pub id: usize,
    /// The client that sent it.
    pub process: usize,
    pub lease: u64,
    pub call: LeaseCall,
    pub invoke_ns: u64,
    /// When the reply arrived (or the client gave up).
    pub complete_ns: u64,
    pub reply: LeaseReply,
}

impl LeaseOp {
    fn is_renewal(&self) -> bool {
        matches!(self.call, LeaseCall::Grant { .. } | LeaseCall::Keepalive)
    }
}

/// A fault that was in force between `start_ns` and `end_ns` (healed, restarted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A whole run: the lease ops, the reads of the leases' keys (`Call::Read` ops of the
/// register history's shape, on the same clock) and the fault windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseHistory {
    pub ops: Vec<LeaseOp>,
    pub reads: Vec<Op>,
    pub faults: Vec<FaultWindow>,
}

impl LeaseHistory {
    /// Every op, read and fault window in invocation order, one per line (for a failure's
    /// post-mortem).
    pub fn render(&self) -> String {
        let mut lines: Vec<(u64, usize, String)> = Vec::new();
        for o in &self.ops {
            lines.push((o.invoke_ns, o.id, format!("{}\n", render_op(o))));
        }
        for r in &self.reads {
            lines.push((r.invoke_ns, r.id, format!("{}\n", render_read(r))));
        }
        for w in &self.faults {
            lines.push((w.start_ns, 0, format!("{:>12}..{:<12} fault window\n", t(w.start_ns), t(w.end_ns))));
        }
        lines.sort();
        lines.into_iter().map(|(_, _, l)| l).collect()
    }
}

fn render_op(o: &LeaseOp) -> String {
    format!(
        "{:>12}..{:<12} p{:<6} lease {} {:?} -> {:?}",
        t(o.invoke_ns),
        t(o.complete_ns),
        o.process,
        o.lease,
        o.call,
        o.reply
    )
}

fn render_read(r: &Op) -> String {
    let what = match seen(r) {
        Some(true) => "present".to_string(),
        Some(false) => "absent".to_string(),
        None => format!("{:?}", r.outcome),
    };
    let end = r.complete_ns.map_or("-".to_string(), t);
    format!("{:>12}..{:<12} p{:<6} read {}: {what}", t(r.invoke_ns), end, r.process, r.key)
}

/// The cluster's timing that the failover rule is stated in, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The longest election timeout (twice `--election-timeout-ms`).
    pub longest_election_ns: u64,
    /// `--lease-checkpoint-ms`.
    pub checkpoint_ns: u64,
    /// Commit, apply and scheduling on a loaded machine.
    pub slack_ns: u64,
    /// How long after it was sent a renewal with no definite answer may still be stamped:
    /// a follower forwards it within its request deadline, and the leader stamps it within
    /// its own (twice `--request-timeout-ms`).
    pub renewal_window_ns: u64,
}

const MS: u64 = 1_000_000;

impl Bounds {
    /// The bounds of a cluster with these settings (ms), with 0.5 s of slack.
    pub fn of(election_timeout_ms: u64, checkpoint_ms: u64, request_timeout_ms: u64) -> Bounds {
        Bounds {
            longest_election_ns: 2 * election_timeout_ms * MS,
            checkpoint_ns: checkpoint_ms * MS,
            slack_ns: 500 * MS,
            renewal_window_ns: 2 * request_timeout_ms * MS,
        }
    }

    /// The deadline of reference point `r` for a lease of `ttl_ns` (module doc).
    pub fn deadline(&self, r: u64, ttl_ns: u64, faults: &[FaultWindow]) -> u64 {
        let change = self.longest_election_ns + self.checkpoint_ns;
        let mut d = r + ttl_ns + change + self.slack_ns;
        let mut sorted: Vec<&FaultWindow> = faults.iter().collect();
        sorted.sort_by_key(|w| (w.start_ns, w.end_ns));
        for w in sorted {
            if w.end_ns > r && w.start_ns < d {
                d += w.end_ns.saturating_sub(w.start_ns) + 2 * change;
            }
        }
        d
    }
}

/// Which rule was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    KeptAliveKeyVanished,
    KeyReappeared,
    EarlyExpiry,
    LateExpiry,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::KeptAliveKeyVanished => {
                "a kept-alive lease lost its key (acknowledged after it ended)"
            }
            ViolationKind::KeyReappeared => "an ephemeral key came back after it was deleted",
            ViolationKind::EarlyExpiry => "a lease ended before TTL after an acknowledged renewal was sent",
            ViolationKind::LateExpiry => "a lease outlived the failover bound",
        })
    }
}

/// A broken rule on one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub lease: u64,
    pub reason: String,
    /// The lease's timeline: its ops and the reads of its key, in invocation order.
    pub context: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lease {}: {}: {}", self.lease, self.kind, self.reason)?;
        f.write_str(&self.context)
    }
}

impl std::error::Error for Violation {}

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Leases granted (acknowledged).
    pub leases: usize,
    /// Acknowledged renewals (grants and keepalives).
    pub renewals: usize,
    /// Leases whose key was put (acknowledged).
    pub keys: usize,
    /// Leases revoked (acknowledged).
    pub revoked: usize,
    /// Observed ends checked by rule 3, and leases with at least one.
    pub ends: usize,
    pub leases_seen_ending: usize,
    /// Observations of a lease alive checked by rule 4.
    pub alive: usize,
    /// The smallest `t - (s + TTL)` over the observed ends rule 3 checked (how close an
    /// end came to being early), in ns.
    pub min_end_margin_ns: Option<u64>,
    /// The largest `i - (R + TTL)` over the observations rule 4 checked (how long past its
    /// TTL a lease was seen alive), in ns; negative values count as 0.
    pub max_alive_past_ttl_ns: Option<u64>,
    /// The smallest `deadline - i` over the same observations (how close a lease came to
    /// outliving its bound), in ns.
    pub min_deadline_room_ns: Option<u64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.0} ms", v as f64 / 1e6));
        write!(
            f,
            "{} leases ({} with a key, {} revoked), {} acknowledged renewals; {} observed ends on {} leases \
             (closest to early: {} after TTL); {} observations alive (latest: {} past TTL, closest: {} \
             before its deadline)",
            self.leases,
            self.keys,
            self.revoked,
            self.renewals,
            self.ends,
            self.leases_seen_ending,
            ms(self.min_end_margin_ns),
            self.alive,
            ms(self.max_alive_past_ttl_ns),
            ms(self.min_deadline_room_ns)
        )
    }
}

/// A read's view of one key: `Some(true)` present, `Some(false)` absent, `None` no answer.
fn seen(op: &Op) -> Option<bool> {
    match &op.outcome {
        Outcome::Ok { read: Some(v), .. } if op.call == Call::Read => Some(v.is_some()),
        _ => None,
    }
}

fn t(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// One lease's ops and reads.
struct Lease<'a> {
    id: u64,
    ops: Vec<&'a LeaseOp>,
    reads: Vec<&'a Op>,
    ttl_ns: u64,
}

impl Lease<'_> {
    fn timeline(&self) -> String {
        let mut lines: Vec<(u64, usize, String)> = Vec::new();
        for o in &self.ops {
            lines.push((o.invoke_ns, o.id, format!("  {}\n", render_op(o))));
        }
        for r in &self.reads {
            lines.push((r.invoke_ns, r.id, format!("  {}\n", render_read(r))));
        }
        lines.sort();
        let mut out = format!("Lease {} (TTL {} ms), in invocation order:\n", self.id, self.ttl_ns / MS);
        for (_, _, l) in lines {
            out.push_str(&l);
        }
        out
    }

    /// The acknowledged put of the key, if any.
    fn put_ack(&self) -> Option<&LeaseOp> {
        self.ops
            .iter()
            .copied()
            .find(|o| matches!(o.call, LeaseCall::Put { .. }) && o.reply == LeaseReply::Ok)
    }

    /// `(t, deletion seen, what)` of every observed end, earliest first.
    fn ends(&self) -> Vec<(u64, bool, String)> {
        let mut ends = Vec::new();
        if let Some(put) = self.put_ack() {
            for r in &self.reads {
                if seen(r) == Some(false) && r.invoke_ns > put.complete_ns {
                    let c = r.complete_ns.expect("an Ok read has a completion");
                    ends.push((c, true, format!("a read {}..{} saw {} absent", t(r.invoke_ns), t(c), r.key)));
                }
            }
        }
        for o in &self.ops {
            if o.reply == LeaseReply::NotFound {
                ends.push((
                    o.complete_ns,
                    false,
                    format!(
                        "{:?} {}..{} was answered lease_not_found",
                        o.call,
                        t(o.invoke_ns),
                        t(o.complete_ns)
                    ),
                ));
            }
            if o.call == LeaseCall::Revoke && o.reply == LeaseReply::Ok {
                ends.push((
                    o.complete_ns,
                    true,
                    format!("its revoke {}..{} was acknowledged", t(o.invoke_ns), t(o.complete_ns)),
                ));
            }
        }
        ends.sort_by_key(|e| e.0);
        ends
    }
}

/// Checks the rules of the module documentation.
pub fn check_leases(h: &LeaseHistory, b: &Bounds) -> Result<Report, Violation> {
    // Group by lease; reads map to a lease through the key its put named.
    let mut by_lease: BTreeMap<u64, Lease> = BTreeMap::new();
    let mut lease_of_key: BTreeMap<&str, u64> = BTreeMap::new();
    for o in &h.ops {
        let l = by_lease.entry(o.lease).or_insert_with(|| Lease {
            id: o.lease,
            ops: vec![],
            reads: vec![],
            ttl_ns: 0,
        });
        l.ops.push(o);
        match &o.call {
            LeaseCall::Grant { ttl_ms } => l.ttl_ns = ttl_ms * MS,
            LeaseCall::Put { key } => {
                lease_of_key.insert(key, o.lease);
            }
            _ => {}
        }
    }
    for r in &h.reads {
        if let Some(id) = lease_of_key.get(r.key.as_str()) {
            by_lease.get_mut(id).expect("a lease of each key").reads.push(r);
        }
    }
    let mut report = Report::default();
    for l in by_lease.values_mut() {
        l.ops.sort_by_key(|o| (o.invoke_ns, o.id));
        l.reads.sort_by_key(|r| (r.invoke_ns, r.id));
    }

    for l in by_lease.values() {
        let fail = |kind, reason: String| Violation { kind, lease: l.id, reason, context: l.timeline() };
        let acked_renewals: Vec<&LeaseOp> =
            l.ops.iter().copied().filter(|o| o.is_renewal() && o.reply == LeaseReply::Ok).collect();
        if l.ops.iter().any(|o| matches!(o.call, LeaseCall::Grant { .. }) && o.reply == LeaseReply::Ok) {
            report.leases += 1;
        }
        report.renewals += acked_renewals.len();
        report.keys += usize::from(l.put_ack().is_some());
        report.revoked +=
            usize::from(l.ops.iter().any(|o| o.call == LeaseCall::Revoke && o.reply == LeaseReply::Ok));
        let ends = l.ends();

        // 1 and 2: nothing comes back after a deletion was seen.
        if let Some((td, _, what)) = ends.iter().find(|e| e.1) {
            if let Some(k) = acked_renewals.iter().find(|o| o.invoke_ns > *td) {
                return Err(fail(
                    ViolationKind::KeptAliveKeyVanished,
                    format!(
                        "{what}, so the lease had ended by {}; yet a keepalive sent at {} was acknowledged at {}",
                        t(*td),
                        t(k.invoke_ns),
                        t(k.complete_ns)
                    ),
                ));
            }
            if let Some(r) = l.reads.iter().find(|r| seen(r) == Some(true) && r.invoke_ns > *td) {
                return Err(fail(
                    ViolationKind::KeyReappeared,
                    format!(
                        "{what}, so the key was deleted by {}; yet a read invoked at {} saw it present",
                        t(*td),
                        t(r.invoke_ns)
                    ),
                ));
            }
        }

        // 3: no end before TTL after an acknowledged renewal was sent.
        for (te, _, what) in &ends {
            let revoked_before = l.ops.iter().any(|o| {
                o.call == LeaseCall::Revoke
                    && matches!(o.reply, LeaseReply::Ok | LeaseReply::Unknown)
                    && o.invoke_ns < *te
            });
            if revoked_before {
                continue;
            }
            report.ends += 1;
            if let Some(s) = acked_renewals.iter().map(|o| o.invoke_ns).max() {
                if *te < s + l.ttl_ns {
                    let r = acked_renewals.iter().find(|o| o.invoke_ns == s).expect("the latest renewal");
                    return Err(fail(
                        ViolationKind::EarlyExpiry,
                        format!(
                            "{what}, {:.1} ms before TTL ({} ms) had passed since the acknowledged {:?} sent at {} \
                             (acknowledged at {})",
                            (s + l.ttl_ns - te) as f64 / 1e6,
                            l.ttl_ns / MS,
                            r.call,
                            t(s),
                            t(r.complete_ns)
                        ),
                    ));
                }
                let margin = te - (s + l.ttl_ns);
                report.min_end_margin_ns = Some(report.min_end_margin_ns.map_or(margin, |m| m.min(margin)));
            }
        }
        if !ends.is_empty() {
            report.leases_seen_ending += 1;
        }

        // 4: no observation alive past the deadline of every renewal sent before it ended.
        let reference = |o: &LeaseOp| match o.reply {
            LeaseReply::Ok => Some(o.complete_ns),
            LeaseReply::Unknown => Some(o.invoke_ns + b.renewal_window_ns),
            LeaseReply::NotFound | LeaseReply::Fail => None,
        };
        // (invoke, complete, the keepalive itself if it is one, what)
        let mut alive: Vec<(u64, u64, Option<usize>, String)> = l
            .reads
            .iter()
            .filter(|r| seen(r) == Some(true))
            .map(|r| {
                let c = r.complete_ns.expect("an Ok read has a completion");
                (r.invoke_ns, c, None, format!("a read {}..{} saw {} present", t(r.invoke_ns), t(c), r.key))
            })
            .collect();
        for k in l.ops.iter().filter(|o| o.call == LeaseCall::Keepalive && o.reply == LeaseReply::Ok) {
            let what = format!("a keepalive {}..{} was acknowledged", t(k.invoke_ns), t(k.complete_ns));
            alive.push((k.invoke_ns, k.complete_ns, Some(k.id), what));
        }
        for (i, c, itself, what) in &alive {
            report.alive += 1;
            let r = l
                .ops
                .iter()
                .filter(|o| o.is_renewal() && o.invoke_ns < *c && Some(o.id) != *itself)
                .filter_map(|o| reference(o))
                .max();
            let Some(r) = r else {
                return Err(fail(
                    ViolationKind::LateExpiry,
                    format!("{what}, but no grant or keepalive that may have taken effect was sent before"),
                ));
            };
            let deadline = b.deadline(r, l.ttl_ns, &h.faults);
            if *i >= deadline {
                return Err(fail(
                    ViolationKind::LateExpiry,
                    format!(
                        "{what}, {:.1} ms past its deadline {} (the last renewal that may have taken effect: \
                         reference point {}, TTL {} ms, longest election {} ms, checkpoint {} ms, slack {} ms, \
                         fault windows {})",
                        (i - deadline) as f64 / 1e6,
                        t(deadline),
                        t(r),
                        l.ttl_ns / MS,
                        b.longest_election_ns / MS,
                        b.checkpoint_ns / MS,
                        b.slack_ns / MS,
                        render_faults(&h.faults)
                    ),
                ));
            }
            let past = i.saturating_sub(r + l.ttl_ns);
            report.max_alive_past_ttl_ns = Some(report.max_alive_past_ttl_ns.map_or(past, |m| m.max(past)));
            let room = deadline - i;
            report.min_deadline_room_ns = Some(report.min_deadline_room_ns.map_or(room, |m| m.min(room)));
        }
    }
    Ok(report)
}

fn render_faults(faults: &[FaultWindow]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    faults.iter().map(|w| format!("[{}, {}]", t(w.start_ns), t(w.end_ns))).collect::<Vec<_>>().join(" ")
}
