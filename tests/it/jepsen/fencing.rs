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

use std::collections::HashMap;
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
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} names, {} grants, {} releases, {} expiries, {} accesses accepted, {} rejected",
            self.names, self.grants, self.releases, self.expiries, self.accepted, self.rejected
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
fn timeline(h: &LockHistory, name: &str) -> String {
    let mut lines: Vec<(u64, u8, String)> = Vec::new();
    let mut leases: Vec<u64> = Vec::new();
    for g in h.grants.iter().filter(|g| g.name == name) {
        lines.push((g.grant_revision, 1, format!("  {g}\n")));
        leases.push(g.lease);
    }
    for r in h.releases.iter().filter(|r| r.name == name) {
        lines.push((r.revision, 0, format!("  rev {:<6} release {} by {}\n", r.revision, r.name, r.client)));
    }
    for e in h.expiries.iter().filter(|e| leases.contains(&e.lease)) {
        lines.push((e.revision, 0, format!("  rev {:<6} lease {} expired\n", e.revision, e.lease)));
    }
    lines.sort();
    let mut out = format!("History of {name} (by revision):\n");
    for (_, _, l) in lines {
        out.push_str(&l);
    }
    out
}

/// Checks the rules of the module documentation.
pub fn check_locks(h: &LockHistory) -> Result<Report, Violation> {
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
        context: timeline(h, name),
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
    names.sort();
    names.dedup();
    report.names = names.len();

    for &name in &names {
        let mut grants: Vec<&Grant> = h.grants.iter().filter(|g| g.name == name).collect();
        grants.sort_by_key(|g| g.grant_revision);

        // 2. Tokens strictly increase in grant (revision) order.
        for w in grants.windows(2) {
            let (a, b) = (w[0], w[1]);
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

        // 3. Holders never exceed the limit.
        let limit = h.limits.get(name).copied().unwrap_or(1) as usize;
        let ends: Vec<u64> = grants
            .iter()
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
                released.into_iter().chain(expired).min().unwrap_or(u64::MAX)
            })
            .collect();
        for (i, g) in grants.iter().enumerate() {
            let holders: Vec<usize> = (0..i).filter(|&j| ends[j] >= g.grant_revision).collect();
            if holders.len() >= limit {
                let who = holders
                    .iter()
                    .map(|&j| {
                        let end = if ends[j] == u64::MAX {
                            "never released".to_string()
                        } else {
                            format!("until rev {}", ends[j])
                        };
                        format!(
                            "{} (token {}, since rev {}, {end})",
                            grants[j].client, grants[j].fencing_token, grants[j].grant_revision
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
            if !grants.iter().any(|g| g.client == a.client && g.fencing_token == a.token) {
                return Err(Violation {
                    kind: ViolationKind::TokenNeverGranted,
                    name: name.into(),
                    reason: format!(
                        "{} presented token {} which was never granted to it for {name}",
                        a.client, a.token
                    ),
                    context: render_accesses(&seen, a) + &timeline(h, name),
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
