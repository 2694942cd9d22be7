//! Locks, elections and fencing tokens: a history of grants, releases, lease expiries and
//! accesses to a guarded resource, and its checker.
//!
//! Revisions order everything that happens to a lock (grant, release, and lease expiry all
//! commit at a revision of their own). A grant's `observed_at_ns` is when its client was
//! told, on the run's clock (for messages only).
//!
//! # What [`check_locks`] verifies
//!
//! 1. **No grant after lease expiry**: a grant whose lease expired at revision E must have
//!    `grant_revision < E` (a waiter whose lease ended is never told it holds the lock).
//! 2. **Tokens strictly increase in grant order**: per name, grants sorted by
//!    `grant_revision` have strictly increasing `fencing_token`s (an equal token and a
//!    lower token are reported distinctly); two grants of one name never share a revision.
//! 3. **No more holders than the limit** (default 1, see [`LockHistory::limits`]): a
//!    holding starts at its grant's revision and ends at the first release by the same
//!    client of the same name, or the first expiry of its lease, at a revision above the
//!    grant. When a grant commits at revision G, the holdings of that name that started
//!    before G and had not ended strictly before G must number fewer than the limit.
//! 4. **The guarded resource keeps the highest token**: per name, the accesses (in the
//!    order the resource saw them) are replayed on a [`GuardedResource`], which accepts a
//!    token iff it is at least the highest token it accepted before; every recorded
//!    `accepted` must equal the model's decision (accepting a lower token is a stale-token
//!    violation; rejecting a current one is a model mismatch). Every access must use a
//!    token that was granted to that client for that name.
//!
//! [`check_locks_with`] takes what a history recorded against a live cluster adds
//! ([`LockFacts`]):
//!
//! - **Open ends**: a holding whose end is not known exactly (its release had no definite
//!   answer, and its lease's end was not observed) may have ended at any revision after its
//!   grant, before any recorded release or expiry of it. Rule 3 checks its grant against
//!   the holders before it (its start is known) but does not count it as a holder of the
//!   grants after it: assuming it lasted would fail correct histories; assuming it ended
//!   would be a guess. Leaving it out can only miss a violation, never invent one. A grant
//!   whose reply was lost is not in the history at all, for the same reason (its client
//!   never uses it).
//! 5. **Fence answers match the holdings**: the server's answer about a token (the fencing
//!    check, or a transaction's fence compare) read on the state at revision R says valid
//!    iff the token's holding covers R (granted at G, ended at E: G <= R < E). A valid
//!    answer outside the holding fails; a stale answer inside it fails only when the
//!    holding's end is known exactly (for an open end, E is only an upper bound).
//!
//! [`check_observations`] checks an election's observe streams against its leaderships
//! (grants of limit 1, checked by [`check_locks_with`] too): see its documentation.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// A client was granted the lock (or won the election) `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub client: String,
    pub name: String,
    pub fencing_token: u64,
    pub lease: u64,
    /// The revision at which the grant committed.
    pub grant_revision: u64,
    /// When the client learned it (run clock, ns).
    pub observed_at_ns: u64,
}

/// A client released (or resigned) `name`, committed at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub client: String,
    pub name: String,
    pub revision: u64,
}

/// A lease expired (its revoke committed at `revision`), ending every holding on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseExpiry {
    pub lease: u64,
    pub revision: u64,
}

/// A client presented `token` to the resource guarded by lock `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub client: String,
    pub name: String,
    pub token: u64,
    pub accepted: bool,
}

/// A whole run's lock history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHistory {
    pub grants: Vec<Grant>,
    pub releases: Vec<Release>,
    pub expiries: Vec<LeaseExpiry>,
    /// In the order the guarded resources saw them.
    pub accesses: Vec<Access>,
    /// Holders allowed at once per name (a semaphore's `limit`); absent means 1.
    pub limits: HashMap<String, u32>,
}

/// What the server said about `token` on the state at `revision`: `POST /v1/fence/check`,
/// or a transaction's fence compare (`via` says which).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceCheck {
    pub client: String,
    pub name: String,
    pub token: u64,
    /// The revision of the state the answer was read on.
    pub revision: u64,
    pub valid: bool,
    pub via: &'static str,
}

/// What a history recorded against a live cluster adds to a [`LockHistory`] (see the
/// module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockFacts {
    /// Grants (by client) whose holding's end is not known exactly.
    pub open_ends: HashSet<String>,
    pub fence_checks: Vec<FenceCheck>,
}

/// A resource that keeps the highest fencing token it has accepted and refuses lower ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardedResource {
    pub highest: Option<u64>,
}

impl GuardedResource {
    /// Accepts `token` iff it is at least the highest accepted so far (the same holder may
    /// come back with its token).
    pub fn offer(&mut self, token: u64) -> bool {
        let ok = self.highest.is_none_or(|h| token >= h);
        if ok {
            self.highest = Some(token);
        }
        ok
    }
}

/// Which rule was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    GrantAfterLeaseExpiry,
    TokenRegression,
    EqualTokens,
    SameGrantRevision,
    OverlappingHolders,
    StaleTokenAccepted,
    CurrentTokenRejected,
    TokenNeverGranted,
    FenceValidOutsideHolding,
    FenceStaleWhileHeld,
    ObservedRevisionsOutOfOrder,
    ObservedLeaderNotHolding,
    ObservedNoLeaderWhileHeld,
    ObservedWrongLeader,
    ObserverNotCaughtUp,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::GrantAfterLeaseExpiry => "grant after lease expiry",
            ViolationKind::TokenRegression => "fencing token went backwards",
            ViolationKind::EqualTokens => "two grants with the same fencing token",
            ViolationKind::SameGrantRevision => "two grants at one revision",
            ViolationKind::OverlappingHolders => "overlapping holders",
            ViolationKind::StaleTokenAccepted => "resource accepted a stale token",
            ViolationKind::CurrentTokenRejected => "resource rejected a current token (model mismatch)",
            ViolationKind::TokenNeverGranted => "access with a token never granted to that client",
            ViolationKind::FenceValidOutsideHolding => "a token was called valid outside its holding",
            ViolationKind::FenceStaleWhileHeld => "a token was called stale while its holder held",
            ViolationKind::ObservedRevisionsOutOfOrder => "an observe stream's revisions did not increase",
            ViolationKind::ObservedLeaderNotHolding => "an observer showed a leader that did not lead",
            ViolationKind::ObservedNoLeaderWhileHeld => "an observer showed no leader while one led",
            ViolationKind::ObservedWrongLeader => "an observer showed a leader unlike its grant",
            ViolationKind::ObserverNotCaughtUp => "an observer did not end on the final state",
        })
    }
}

/// A broken rule on lock `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub name: String,
    pub reason: String,
    /// The lock's history (grants, releases, expiries in revision order) or the accesses.
    pub context: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lock {}: {}: {}", self.name, self.kind, self.reason)?;
        f.write_str(&self.context)
    }
}

impl std::error::Error for Violation {}

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub names: usize,
    pub grants: usize,
    pub releases: usize,
    pub expiries: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Fence answers checked ([`LockFacts::fence_checks`]).
    pub fence_valid: usize,
    pub fence_stale: usize,
    /// Holdings whose end was not known exactly.
    pub open_ends: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} names, {} grants ({} with an open end), {} releases, {} expiries, {} accesses accepted, {} rejected, fence answers {} valid, {} stale",
            self.names,
            self.grants,
            self.open_ends,
            self.releases,
            self.expiries,
            self.accepted,
            self.rejected,
            self.fence_valid,
            self.fence_stale
        )
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rev {:<6} grant   {} to {} (token {}, lease {}, told at {:.3}ms)",
            self.grant_revision,
            self.name,
            self.client,
            self.fencing_token,
            self.lease,
            self.observed_at_ns as f64 / 1e6
        )
    }
}

/// The lock's history in revision order, for messages.
fn timeline(h: &LockHistory, facts: &LockFacts, name: &str) -> String {
    let mut lines: Vec<(u64, u8, String)> = Vec::new();
    let mut leases: Vec<u64> = Vec::new();
    for g in h.grants.iter().filter(|g| g.name == name) {
        let open = if facts.open_ends.contains(&g.client) { " [end not known exactly]" } else { "" };
        lines.push((g.grant_revision, 1, format!("  {g}{open}\n")));
        leases.push(g.lease);
    }
    for r in h.releases.iter().filter(|r| r.name == name) {
        lines.push((r.revision, 0, format!("  rev {:<6} release {} by {}\n", r.revision, r.name, r.client)));
    }
    for e in h.expiries.iter().filter(|e| leases.contains(&e.lease)) {
        lines.push((e.revision, 0, format!("  rev {:<6} lease {} expired\n", e.revision, e.lease)));
    }
    for f in facts.fence_checks.iter().filter(|f| f.name == name) {
        let said = if f.valid { "valid" } else { "stale" };
        lines.push((
            f.revision,
            2,
            format!("  rev {:<6} {} of token {} by {}: {said}\n", f.revision, f.via, f.token, f.client),
        ));
    }
    lines.sort();
    let mut out = format!("History of {name} (by revision):\n");
    for (_, _, l) in lines {
        out.push_str(&l);
    }
    out
}

/// One grant's holding: from its grant's revision to its end (the first release by its
/// client or expiry of its lease above the grant; `u64::MAX` when the history has none).
struct Holding<'a> {
    grant: &'a Grant,
    end: u64,
    /// False for an open end: `end` is then only an upper bound.
    exact: bool,
}

/// The holdings of `name`, in grant (revision) order.
fn holdings<'a>(h: &'a LockHistory, facts: &LockFacts, name: &str) -> Vec<Holding<'a>> {
    let mut grants: Vec<&Grant> = h.grants.iter().filter(|g| g.name == name).collect();
    grants.sort_by_key(|g| g.grant_revision);
    grants
        .into_iter()
        .map(|g| {
            let released = h
                .releases
                .iter()
                .filter(|r| r.name == name && r.client == g.client && r.revision > g.grant_revision)
                .map(|r| r.revision)
                .min();
            let expired = h
                .expiries
                .iter()
                .filter(|e| e.lease == g.lease && e.revision > g.grant_revision)
                .map(|e| e.revision)
                .min();
            let end = released.into_iter().chain(expired).min().unwrap_or(u64::MAX);
            Holding { grant: g, end, exact: !facts.open_ends.contains(&g.client) }
        })
        .collect()
}

/// Checks rules 1-4 of the module documentation.
pub fn check_locks(h: &LockHistory) -> Result<Report, Violation> {
    check_locks_with(h, &LockFacts::default())
}

/// Checks every rule of the module documentation, with the open ends and fence answers of
/// `facts`.
pub fn check_locks_with(h: &LockHistory, facts: &LockFacts) -> Result<Report, Violation> {
    let mut report = Report {
        grants: h.grants.len(),
        releases: h.releases.len(),
        expiries: h.expiries.len(),
        ..Default::default()
    };
    let fail = |kind, name: &str, reason: String| Violation {
        kind,
        name: name.into(),
        reason,
        context: timeline(h, facts, name),
    };

    // 1. No grant at or after its lease's expiry.
    let mut expired_at: HashMap<u64, u64> = HashMap::new();
    for e in &h.expiries {
        let r = expired_at.entry(e.lease).or_insert(e.revision);
        *r = (*r).min(e.revision);
    }
    for g in &h.grants {
        if let Some(&e) = expired_at.get(&g.lease) {
            if g.grant_revision >= e {
                return Err(fail(
                    ViolationKind::GrantAfterLeaseExpiry,
                    &g.name,
                    format!(
                        "{} was granted {} at revision {} (token {}), but its lease {} had expired at revision {e}",
                        g.client, g.name, g.grant_revision, g.fencing_token, g.lease
                    ),
                ));
            }
        }
    }

    let mut names: Vec<&str> = h.grants.iter().map(|g| g.name.as_str()).collect();
    names.extend(h.accesses.iter().map(|a| a.name.as_str()));
    names.extend(facts.fence_checks.iter().map(|f| f.name.as_str()));
    names.sort();
    names.dedup();
    report.names = names.len();

    for &name in &names {
        let held = holdings(h, facts, name);

        // 2. Tokens strictly increase in grant (revision) order.
        for w in held.windows(2) {
            let (a, b) = (w[0].grant, w[1].grant);
            if a.grant_revision == b.grant_revision {
                return Err(fail(
                    ViolationKind::SameGrantRevision,
                    name,
                    format!(
                        "{} and {} were both granted at revision {}; every grant takes a revision of its own",
                        a.client, b.client, a.grant_revision
                    ),
                ));
            }
            if b.fencing_token <= a.fencing_token {
                let kind = if b.fencing_token == a.fencing_token {
                    ViolationKind::EqualTokens
                } else {
                    ViolationKind::TokenRegression
                };
                return Err(fail(
                    kind,
                    name,
                    format!(
                        "the grant to {} at revision {} has token {}, not above token {} of the earlier grant to {} at revision {}",
                        b.client, b.grant_revision, b.fencing_token, a.fencing_token, a.client, a.grant_revision
                    ),
                ));
            }
        }

        // 3. Holders never exceed the limit (holdings with an open end hold nobody back).
        let limit = h.limits.get(name).copied().unwrap_or(1) as usize;
        for (i, now) in held.iter().enumerate() {
            let g = now.grant;
            let holders: Vec<usize> =
                (0..i).filter(|&j| held[j].exact && held[j].end >= g.grant_revision).collect();
            if holders.len() >= limit {
                let who = holders
                    .iter()
                    .map(|&j| {
                        let end = if held[j].end == u64::MAX {
                            "never released".to_string()
                        } else {
                            format!("until rev {}", held[j].end)
                        };
                        let before = held[j].grant;
                        format!(
                            "{} (token {}, since rev {}, {end})",
                            before.client, before.fencing_token, before.grant_revision
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(fail(
                    ViolationKind::OverlappingHolders,
                    name,
                    format!(
                        "{} was granted at revision {} (token {}) while {} held it (limit {limit}); a new grant must wait for a release or a lease expiry at an earlier revision",
                        g.client, g.grant_revision, g.fencing_token, who
                    ),
                ));
            }
        }

        // 4. The guarded resource.
        let mut resource = GuardedResource::default();
        let mut seen: Vec<&Access> = Vec::new();
        for a in h.accesses.iter().filter(|a| a.name == name) {
            if !held.iter().any(|x| x.grant.client == a.client && x.grant.fencing_token == a.token) {
                return Err(Violation {
                    kind: ViolationKind::TokenNeverGranted,
                    name: name.into(),
                    reason: format!(
                        "{} presented token {} which was never granted to it for {name}",
                        a.client, a.token
                    ),
                    context: render_accesses(&seen, a) + &timeline(h, facts, name),
                });
            }
            let before = resource.highest;
            let model = resource.offer(a.token);
            if model != a.accepted {
                let highest = before.map_or("none".to_string(), |t| t.to_string());
                let (kind, reason) = if a.accepted {
                    (
                        ViolationKind::StaleTokenAccepted,
                        format!(
                            "the resource accepted token {} from {} after it had accepted token {highest}; a fenced resource must refuse lower tokens",
                            a.token, a.client
                        ),
                    )
                } else {
                    (
                        ViolationKind::CurrentTokenRejected,
                        format!(
                            "the resource rejected token {} from {} although the highest token it had accepted was {highest}",
                            a.token, a.client
                        ),
                    )
                };
                return Err(Violation {
                    kind,
                    name: name.into(),
                    reason,
                    context: render_accesses(&seen, a),
                });
            }
            if a.accepted {
                report.accepted += 1;
            } else {
                report.rejected += 1;
            }
            seen.push(a);
        }

        // 5. Fence answers match the holdings.
        for f in facts.fence_checks.iter().filter(|f| f.name == name) {
            let Some(x) =
                held.iter().find(|x| x.grant.client == f.client && x.grant.fencing_token == f.token)
            else {
                return Err(fail(
                    ViolationKind::TokenNeverGranted,
                    name,
                    format!(
                        "{} asked about token {} which was never granted to it for {name}",
                        f.client, f.token
                    ),
                ));
            };
            let (g, r) = (x.grant.grant_revision, f.revision);
            let end = if x.end == u64::MAX {
                "no end in the history".to_string()
            } else {
                format!("ended at {}", x.end)
            };
            if f.valid && (r < g || r >= x.end) {
                return Err(fail(
                    ViolationKind::FenceValidOutsideHolding,
                    name,
                    format!(
                        "the {} called token {} of {} valid on the state at revision {r}, but that holding began at revision {g} and {end}",
                        f.via, f.token, f.client
                    ),
                ));
            }
            if !f.valid && x.exact && g <= r && r < x.end {
                return Err(fail(
                    ViolationKind::FenceStaleWhileHeld,
                    name,
                    format!(
                        "the {} called token {} of {} stale on the state at revision {r}, but that holding began at revision {g} and {end}",
                        f.via, f.token, f.client
                    ),
                ));
            }
            if f.valid {
                report.fence_valid += 1;
            } else {
                report.fence_stale += 1;
            }
        }
        report.open_ends += held.iter().filter(|x| !x.exact).count();
    }
    Ok(report)
}
fn render_accesses(before: &[&Access], bad: &Access) -> String {
    let mut out = String::from("Accesses to the resource, in order:\n");
    let skip = before.len().saturating_sub(10);
    if skip > 0 {
        out.push_str(&format!("  ... {skip} earlier\n"));
    }
    for a in before[skip..].iter().copied().chain(std::iter::once(bad)) {
        out.push_str(&format!(
            "  {} {} token {} -> {}\n",
            if std::ptr::eq(a, bad) { ">>" } else { "  " },
            a.client,
            a.token,
            if a.accepted { "accepted" } else { "rejected" }
        ));
    }
    out
}

/// One message of an election's observe stream (`leader` or `no_leader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Leader { owner: String, token: u64, value: String, revision: u64 },
    NoLeader { revision: u64 },
}

impl Observed {
    pub fn revision(&self) -> u64 {
        match self {
            Observed::Leader { revision, .. } | Observed::NoLeader { revision } => *revision,
        }
    }

    /// Whether two messages show the same state (their revisions aside).
    pub fn same_state(&self, other: &Observed) -> bool {
        match (self, other) {
            (
                Observed::Leader { owner: a, token: t, value: v, .. },
                Observed::Leader { owner: b, token: u, value: w, .. },
            ) => a == b && t == u && v == w,
            (Observed::NoLeader { .. }, Observed::NoLeader { .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Leader { owner, token, value, revision } => {
                write!(f, "rev {revision:<6} leader {owner} (token {token}, value {value:?})")
            }
            Observed::NoLeader { revision } => write!(f, "rev {revision:<6} no leader"),
        }
    }
}

/// One observer of an election: its connections (each to a node) and what each delivered,
/// in arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserverLog {
    pub id: String,
    /// `(where, messages)` per connection.
    pub connections: Vec<(String, Vec<Observed>)>,
}

impl ObserverLog {
    /// The last message of any connection.
    pub fn last(&self) -> Option<&Observed> {
        self.connections.iter().rev().find_map(|(_, m)| m.last())
    }

    /// The last messages of every connection, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = format!("observer {} ({} connections):\n", self.id, self.connections.len());
        for (i, (at, msgs)) in self.connections.iter().enumerate() {
            out.push_str(&format!("  connection {i} to {at}: {} messages\n", msgs.len()));
            let skip = msgs.len().saturating_sub(8);
            if skip > 0 {
                out.push_str(&format!("    ... {skip} earlier\n"));
            }
            for m in &msgs[skip..] {
                out.push_str(&format!("    {m}\n"));
            }
        }
        out
    }
}

/// A recorded leadership: its owner and every value it campaigned or proclaimed with
/// (answered or not: a proclaim whose answer was lost may have taken effect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub owner: String,
    pub values: Vec<String>,
}

/// What [`check_observations`] looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserveReport {
    pub observers: usize,
    pub connections: usize,
    pub leader_messages: usize,
    /// Leader messages whose token no recorded grant has (a campaign whose answer was lost).
    pub unrecorded_leaders: usize,
    pub no_leader_messages: usize,
}

impl fmt::Display for ObserveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} observers over {} connections: {} leader messages ({} of unrecorded leaderships), {} no-leader messages",
            self.observers,
            self.connections,
            self.leader_messages,
            self.unrecorded_leaders,
            self.no_leader_messages
        )
    }
}

/// Checks the observe streams of election `name` against its leaderships (the grants of
/// `h` and `facts` for `name`, each recorded leadership's owner and values in `leaders`, by
/// token) and the final state `last` (read once nothing changes any more):
///
/// - O1: within one connection, revisions strictly increase (a message is sent for a
///   change of state, and the state changes only at a new revision).
/// - O2: a `leader` message at revision R with the token of a recorded leadership names
///   its owner and one of its values, and the holding covers R (G <= R < E; for an open
///   end, E is an upper bound). With a token no recorded grant has (a campaign whose
///   answer was lost), T <= R and no recorded holding with an exact end covers R (there
///   is one leader at a time).
/// - O3: a `no_leader` message at R: no recorded holding with an exact end covers R.
/// - O4: every observer's last message shows the state `last` (a leader that resigned or
///   whose lease ended was followed by `no_leader` or a new leader).
pub fn check_observations(
    h: &LockHistory,
    facts: &LockFacts,
    name: &str,
    leaders: &HashMap<u64, Leadership>,
    observers: &[ObserverLog],
    last: &Observed,
) -> Result<ObserveReport, Violation> {
    let held = holdings(h, facts, name);
    let mut report = ObserveReport { observers: observers.len(), ..Default::default() };
    let fail = |kind, o: &ObserverLog, reason: String| Violation {
        kind,
        name: name.into(),
        reason,
        context: o.describe() + &timeline(h, facts, name),
    };
    let covering = |r: u64| held.iter().find(|x| x.exact && x.grant.grant_revision <= r && r < x.end);
    for o in observers {
        for (at, msgs) in &o.connections {
            report.connections += 1;
            for w in msgs.windows(2) {
                if w[1].revision() <= w[0].revision() {
                    return Err(fail(
                        ViolationKind::ObservedRevisionsOutOfOrder,
                        o,
                        format!("on its connection to {at}, \"{}\" came after \"{}\"", w[1], w[0]),
                    ));
                }
            }
            for m in msgs {
                match m {
                    Observed::Leader { owner, token, value, revision: r } => {
                        report.leader_messages += 1;
                        let x = held.iter().find(|x| x.grant.fencing_token == *token);
                        match x {
                            Some(x) => {
                                let l = leaders.get(token);
                                if l.is_none_or(|l| *owner != l.owner || !l.values.contains(value)) {
                                    let l = l.cloned().unwrap_or_default();
                                    return Err(fail(
                                        ViolationKind::ObservedWrongLeader,
                                        o,
                                        format!(
                                            "\"{m}\" (from {at}) does not match the leadership granted at token {token}: owner {}, values {:?}",
                                            l.owner, l.values
                                        ),
                                    ));
                                }
                                if *r < x.grant.grant_revision || *r >= x.end {
                                    return Err(fail(
                                        ViolationKind::ObservedLeaderNotHolding,
                                        o,
                                        format!(
                                            "\"{m}\" (from {at}), but that leadership began at revision {} and ended at {}",
                                            x.grant.grant_revision, x.end
                                        ),
                                    ));
                                }
                            }
                            None => {
                                report.unrecorded_leaders += 1;
                                let other = covering(*r);
                                if *token > *r || other.is_some() {
                                    let why = match other {
                                        Some(x) => format!(
                                            "{} led then (token {}, from revision {} to {})",
                                            x.grant.client,
                                            x.grant.fencing_token,
                                            x.grant.grant_revision,
                                            x.end
                                        ),
                                        None => "its token is above the revision".to_string(),
                                    };
                                    return Err(fail(
                                        ViolationKind::ObservedLeaderNotHolding,
                                        o,
                                        format!(
                                            "\"{m}\" (from {at}, a leadership nobody recorded), but {why}"
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    Observed::NoLeader { revision: r } => {
                        report.no_leader_messages += 1;
                        if let Some(x) = covering(*r) {
                            return Err(fail(
                                ViolationKind::ObservedNoLeaderWhileHeld,
                                o,
                                format!(
                                    "\"{m}\" (from {at}), but {} led then (token {}, from revision {} to {})",
                                    x.grant.client, x.grant.fencing_token, x.grant.grant_revision, x.end
                                ),
                            ));
                        }
                    }
                }
            }
        }
        if !o.last().is_some_and(|m| m.same_state(last)) {
            let shown = o.last().map_or("nothing".to_string(), |m| format!("\"{m}\""));
            return Err(fail(
                ViolationKind::ObserverNotCaughtUp,
                o,
                format!("its last message is {shown}, but the final state is \"{last}\""),
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(client: &str, token: u64, lease: u64) -> Grant {
        Grant {
            client: client.into(),
            name: "db".into(),
            fencing_token: token,
            lease,
            grant_revision: token,
            observed_at_ns: 0,
        }
    }

    fn release(client: &str, revision: u64) -> Release {
        Release { client: client.into(), name: "db".into(), revision }
    }

    fn fence(client: &str, token: u64, revision: u64, valid: bool) -> FenceCheck {
        FenceCheck { client: client.into(), name: "db".into(), token, revision, valid, via: "fence check" }
    }

    /// c1 holds 10..12 (released), c2 holds 13..20 (lease 2 expired), c3 from 21.
    fn history() -> LockHistory {
        LockHistory {
            grants: vec![grant("c1", 10, 1), grant("c2", 13, 2), grant("c3", 21, 3)],
            releases: vec![release("c1", 12)],
            expiries: vec![LeaseExpiry { lease: 2, revision: 20 }],
            ..Default::default()
        }
    }

    fn kind(r: Result<impl fmt::Display, Violation>) -> ViolationKind {
        match r {
            Ok(r) => panic!("expected a violation, but it passed: {r}"),
            Err(v) => {
                eprintln!("(expected) {v}");
                v.kind
            }
        }
    }

    #[test]
    fn an_open_end_holds_nobody_back_but_its_start_is_checked() {
        // c1's release had no definite answer: it is not known when it ended.
        let mut h = history();
        h.releases.clear();
        assert_eq!(kind(check_locks(&h)), ViolationKind::OverlappingHolders);
        let facts = LockFacts { open_ends: ["c1".to_string()].into(), ..Default::default() };
        let r = check_locks_with(&h, &facts).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(r.open_ends, 1);
        // A grant with an open end still may not start while another holds.
        let mut h = history();
        h.grants[1] = grant("c2", 11, 2);
        let facts = LockFacts { open_ends: ["c2".to_string()].into(), ..Default::default() };
        assert_eq!(kind(check_locks_with(&h, &facts)), ViolationKind::OverlappingHolders);
    }

    #[test]
    fn fence_answers_must_match_the_holdings() {
        let h = history();
        let good = LockFacts {
            fence_checks: vec![
                fence("c1", 10, 10, true),
                fence("c1", 10, 11, true),
                fence("c1", 10, 12, false),
                fence("c2", 13, 19, true),
                fence("c2", 13, 20, false),
                fence("c3", 21, 40, true),
            ],
            ..Default::default()
        };
        let r = check_locks_with(&h, &good).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((r.fence_valid, r.fence_stale), (4, 2));
        let one = |f: FenceCheck, open: &[&str]| LockFacts {
            fence_checks: vec![f],
            open_ends: open.iter().map(|s| s.to_string()).collect(),
        };
        for f in [fence("c1", 10, 12, true), fence("c2", 13, 12, true), fence("c2", 13, 20, true)] {
            assert_eq!(kind(check_locks_with(&h, &one(f, &[]))), ViolationKind::FenceValidOutsideHolding);
        }
        // Valid after a recorded end is wrong even when the end is only an upper bound.
        let f = fence("c2", 13, 25, true);
        assert_eq!(kind(check_locks_with(&h, &one(f, &["c2"]))), ViolationKind::FenceValidOutsideHolding);
        let f = fence("c2", 13, 15, false);
        assert_eq!(kind(check_locks_with(&h, &one(f.clone(), &[]))), ViolationKind::FenceStaleWhileHeld);
        // With an open end, the holding may have ended before 15.
        check_locks_with(&h, &one(f, &["c2"])).unwrap_or_else(|v| panic!("{v}"));
        let f = fence("c3", 13, 25, true);
        assert_eq!(kind(check_locks_with(&h, &one(f, &[]))), ViolationKind::TokenNeverGranted);
    }

    fn leader(owner: &str, token: u64, value: &str, revision: u64) -> Observed {
        Observed::Leader { owner: owner.into(), token, value: value.into(), revision }
    }

    fn leaders() -> HashMap<u64, Leadership> {
        [
            (10, Leadership { owner: "o1".into(), values: vec!["a".into(), "a2".into()] }),
            (13, Leadership { owner: "o2".into(), values: vec!["b".into()] }),
            (21, Leadership { owner: "o3".into(), values: vec!["c".into()] }),
        ]
        .into()
    }

    fn observer(msgs: Vec<Observed>) -> ObserverLog {
        ObserverLog { id: "obs".into(), connections: vec![("node1".into(), msgs)] }
    }

    fn observe(msgs: Vec<Observed>, facts: &LockFacts) -> Result<ObserveReport, Violation> {
        let last = Observed::NoLeader { revision: 50 };
        let mut h = history();
        h.releases.push(release("c3", 30));
        check_observations(&h, facts, "db", &leaders(), &[observer(msgs)], &last)
    }

    fn good_stream() -> Vec<Observed> {
        vec![
            leader("o1", 10, "a", 10),
            leader("o1", 10, "a2", 11),
            Observed::NoLeader { revision: 12 },
            leader("o2", 13, "b", 13),
            Observed::NoLeader { revision: 20 },
            leader("o3", 21, "c", 22),
            Observed::NoLeader { revision: 30 },
        ]
    }

    #[test]
    fn observe_streams_must_follow_the_leaderships() {
        let none = LockFacts::default();
        let r = observe(good_stream(), &none).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!((r.leader_messages, r.no_leader_messages), (4, 3));
        // A stream that skips states is fine; one that ends on a leader is not.
        observe(vec![leader("o2", 13, "b", 15), Observed::NoLeader { revision: 31 }], &none)
            .unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(kind(observe(good_stream()[..6].to_vec(), &none)), ViolationKind::ObserverNotCaughtUp);
        let mut s = good_stream();
        s.swap(0, 1);
        assert_eq!(kind(observe(s, &none)), ViolationKind::ObservedRevisionsOutOfOrder);
        // c2's lease ended at 20: it may not be shown leading at 20.
        let mut s = good_stream();
        s[4] = leader("o2", 13, "b", 20);
        assert_eq!(kind(observe(s, &none)), ViolationKind::ObservedLeaderNotHolding);
        let mut s = good_stream();
        s[3] = Observed::NoLeader { revision: 14 };
        assert_eq!(kind(observe(s.clone(), &none)), ViolationKind::ObservedNoLeaderWhileHeld);
        // ... unless c2's end is open (it might have ended at 14).
        let open = LockFacts { open_ends: ["c2".to_string()].into(), ..Default::default() };
        observe(s, &open).unwrap_or_else(|v| panic!("{v}"));
        let mut s = good_stream();
        s[1] = leader("o1", 10, "zz", 11);
        assert_eq!(kind(observe(s, &none)), ViolationKind::ObservedWrongLeader);
        // A leadership nobody recorded, while c2 led.
        let mut s = good_stream();
        s.insert(4, leader("o9", 14, "x", 15));
        assert_eq!(kind(observe(s, &none)), ViolationKind::ObservedLeaderNotHolding);
        // ... and one between two recorded ones is fine.
        let mut s = good_stream();
        s[2] = leader("o9", 12, "x", 12);
        observe(s, &none).unwrap_or_else(|v| panic!("{v}"));
    }
}
