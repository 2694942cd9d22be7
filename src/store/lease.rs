//! The lease table: each lease's TTL and when it expires on the replicated lease clock.
//!
//! The lease clock is a number of milliseconds that only the leader advances, from its
//! monotonic clock, and stamps into the lease commands it proposes (grants, renewals,
//! clock ticks, expiries); apply keeps the largest stamp seen. A lease expires when the
//! clock reaches its `expires_at`. A new leader maps the last replicated clock value to the
//! moment it received it and counts on from there, so a lease never ends earlier than its
//! old leader promised (the stamp was made before it was received), and never later than
//! that promise plus the stamp's replication delay (or, if the promise ran out during the
//! election, than the takeover). Apply never reads a clock: expiry is a
//! command the leader proposes, and it is applied only to leases still expired at the
//! stamp it carries.
//!
//! Invariants: `by_expiry` holds exactly one `(expires_at, id)` per lease; ids are between
//! 1 and [`MAX_LEASE_ID`], a client's chosen ones at most [`MAX_CHOSEN_LEASE_ID`]; an id the
//! table picks itself is above every id granted before (a client's chosen ones included), so
//! it is never one a client may still hold (2^52 grants would have to come first for the
//! ids to run out and start again from the smallest free one), and picking one never
//! searches.

use serde::{Deserialize, Serialize};

/// The largest lease id (ids travel as JSON numbers, exact up to 2^53 - 1).
pub const MAX_LEASE_ID: u64 = (1 << 53) - 1;
/// The largest id a client may choose: the ids above it stay for the table, which picks
/// each one above every id granted before, so no client can use them up.
pub const MAX_CHOSEN_LEASE_ID: u64 = 1 << 52;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    /// The TTL it was granted with; each renewal gives it this much again.
    pub ttl_ms: u64,
    /// The lease clock reading at which it expires.
    pub expires_at: u64,
    /// The authenticated subject that granted it (none when client auth was off): only
    /// that subject (or an admin) may use it, keep it alive or revoke it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What happened to leases since the cluster began (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCounters {
    pub granted: u64,
    /// Ended by the leader because nobody kept them alive.
    pub expired: u64,
    /// Ended by a client.
    pub revoked: u64,
}

/// The lease table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    leases: imbl::OrdMap<u64, Lease>,
    /// `(expires_at, id)` of every lease, so the expired ones are a range.
    by_expiry: imbl::OrdSet<(u64, u64)>,
    /// The lease clock: the largest stamp applied.
    clock_ms: u64,
    /// The last id the table handed out itself.
    last_id: u64,
    counters: LeaseCounters,
}

impl Leases {
    /// The lease `id`, if it exists.
    pub fn get(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Leases that exist.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The lease clock as last stamped.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn counters(&self) -> LeaseCounters {
        self.counters
    }

    /// Up to `limit` leases with ids above `after`, in id order, and whether more follow.
    pub fn page(&self, after: Option<u64>, limit: usize) -> (Vec<Lease>, bool) {
        let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut iter = self.leases.range((lower, std::ops::Bound::Unbounded)).map(|(_, l)| l.clone());
        let page: Vec<Lease> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// Up to `max` ids of leases expired at clock reading `clock` (soonest first).
    pub fn expired(&self, clock: u64, max: usize) -> Vec<u64> {
        self.expired_except(clock, max, |_| false)
    }

    /// The same, leaving out the leases for which `skip` is true.
    pub fn expired_except(&self, clock: u64, max: usize, skip: impl Fn(u64) -> bool) -> Vec<u64> {
        let due = self.by_expiry.iter().take_while(|(at, _)| *at <= clock);
        due.filter(|(_, id)| !skip(*id)).take(max).map(|(_, id)| *id).collect()
    }

    /// The earliest `expires_at` of any lease.
    pub fn next_expiry(&self) -> Option<u64> {
        self.next_expiry_except(|_| false)
    }

    /// The earliest `expires_at` of a lease for which `skip` is false.
    pub fn next_expiry_except(&self, skip: impl Fn(u64) -> bool) -> Option<u64> {
        self.by_expiry.iter().find(|(_, id)| !skip(*id)).map(|(at, _)| *at)
    }

    /// Moves the clock forward to `clock` (never back).
    pub(super) fn advance(&mut self, clock: u64) {
        self.clock_ms = self.clock_ms.max(clock);
    }

    /// Grants a lease of `ttl_ms` at clock reading `clock`, under `id` or the next free id
    /// of the table's own; `None` when `id` is taken (or out of range).
    pub(super) fn grant(&mut self, id: Option<u64>, ttl_ms: u64, clock: u64) -> Option<u64> {
        self.advance(clock);
        let id = match id {
            Some(id) if id == 0 || id > MAX_CHOSEN_LEASE_ID || self.leases.contains_key(&id) => return None,
            Some(id) => {
                self.last_id = self.last_id.max(id);
                id
            }
            None => {
                let mut id = self.last_id;
                loop {
                    // Past the largest id (after 2^53 grants), start again from 1.
                    id = if id >= MAX_LEASE_ID { 1 } else { id + 1 };
                    if !self.leases.contains_key(&id) {
                        break;
                    }
                }
                self.last_id = id;
                id
            }
        };
        let expires_at = clock.saturating_add(ttl_ms);
        self.leases.insert(id, Lease { id, ttl_ms, expires_at, owner: None });
        self.by_expiry.insert((expires_at, id));
        self.counters.granted += 1;
        Some(id)
    }

    /// Makes `owner` the owner of lease `id` (just granted on its behalf).
    pub(super) fn set_owner(&mut self, id: u64, owner: &str) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.owner = Some(owner.to_string());
        }
    }

    /// Whether `subject` may use lease `id`: it exists and `subject` granted it. `None`
    /// when there is no such lease.
    pub fn owned_by(&self, id: u64, subject: &str) -> Option<bool> {
        self.leases.get(&id).map(|l| l.owner.as_deref() == Some(subject))
    }

    /// Gives lease `id` its TTL again from clock reading `clock` (never shortens it);
    /// false when it does not exist.
    pub(super) fn renew(&mut self, id: u64, clock: u64) -> bool {
        self.advance(clock);
        let Some(lease) = self.leases.get_mut(&id) else { return false };
        let expires_at = clock.saturating_add(lease.ttl_ms).max(lease.expires_at);
        if expires_at != lease.expires_at {
            self.by_expiry.remove(&(lease.expires_at, id));
            lease.expires_at = expires_at;
            self.by_expiry.insert((expires_at, id));
        }
        true
    }

    /// Removes lease `id`, counting it as expired or revoked.
    pub(super) fn remove(&mut self, id: u64, expired: bool) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.by_expiry.remove(&(lease.expires_at, id));
        if expired {
            self.counters.expired += 1;
        } else {
            self.counters.revoked += 1;
        }
        Some(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_hand_out_fresh_ids_and_refuse_a_taken_one() {
        let mut t = Leases::default();
        assert_eq!(t.grant(None, 1000, 5), Some(1));
        assert_eq!(t.grant(Some(2), 1000, 5), Some(2));
        assert_eq!(t.grant(None, 1000, 5), Some(3), "a client-chosen id is skipped");
        // An id a client chose, even one since ended, is never picked by the table.
        assert_eq!(t.grant(Some(7), 1000, 5), Some(7));
        t.remove(7, false);
        assert_eq!(t.grant(None, 1000, 5), Some(8));
        t.remove(8, false);
        assert_eq!(t.grant(Some(2), 1000, 5), None);
        assert_eq!(t.grant(Some(0), 1000, 5), None);
        assert_eq!(t.grant(Some(MAX_LEASE_ID + 1), 1000, 5), None);
        assert_eq!(t.grant(Some(MAX_CHOSEN_LEASE_ID + 1), 1000, 5), None, "above the chosen range");
        t.remove(3, false);
        assert_eq!(t.grant(None, 1000, 5), Some(9), "the table's own ids are never reused");
        assert_eq!(t.counters(), LeaseCounters { granted: 6, expired: 0, revoked: 3 });
        // The largest id a client may choose leaves the table room above it.
        assert_eq!(t.grant(Some(MAX_CHOSEN_LEASE_ID), 1000, 5), Some(MAX_CHOSEN_LEASE_ID));
        assert_eq!(t.grant(None, 1000, 5), Some(MAX_CHOSEN_LEASE_ID + 1));
    }

    #[test]
    fn expiry_follows_the_clock_and_renewals_push_it_back() {
        let mut t = Leases::default();
        t.grant(Some(1), 1000, 0);
        t.grant(Some(2), 500, 100);
        assert_eq!(t.next_expiry(), Some(600));
        assert_eq!(t.expired(599, 10), Vec::<u64>::new());
        assert_eq!(t.expired(1000, 10), vec![2, 1]);
        assert!(t.renew(2, 800));
        assert_eq!(t.get(2).unwrap().expires_at, 1300);
        assert_eq!(t.expired(1000, 10), vec![1]);
        // A renewal stamped earlier than the last one never shortens the lease.
        assert!(t.renew(2, 700));
        assert_eq!(t.get(2).unwrap().expires_at, 1300);
        assert_eq!(t.clock_ms(), 800, "the clock never goes back");
        assert!(!t.renew(9, 900));
        t.remove(1, true);
        assert_eq!(t.expired(u64::MAX, 10), vec![2]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn pages_go_in_id_order() {
        let mut t = Leases::default();
        for id in [5, 1, 3] {
            t.grant(Some(id), 1000, 0);
        }
        let (page, more) = t.page(None, 2);
        assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 3]);
        assert!(more);
        let (page, more) = t.page(Some(3), 2);
        assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), vec![5]);
        assert!(!more);
    }
}
