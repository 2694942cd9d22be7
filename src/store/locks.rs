//! The lock and election table: named [`Lock`]s in two name spaces, which owners each
//! lease has in them, and counters. Grants are decided here, in apply, so they are the
//! same on every node and a waiter whose lease has ended is never granted.
//!
//! Invariants:
//! - every change takes a revision of the store's (the caller's [`Store`]), and every
//!   grant a revision of its own, which is its fencing token: tokens never repeat and, per
//!   name, strictly increase, across leader changes, restarts and snapshot installs (the
//!   revision is part of the snapshot);
//! - a name nobody holds or waits for is forgotten (its next acquirer sets the limit);
//! - `by_lease` lists exactly the owners whose lease it names (derived: rebuilt on load);
//! - the journal (derived, not part of the state's equality or its snapshot) records who
//!   was granted, removed or changed at which revision, so the node can wake exactly the
//!   requests waiting on them; after a load it speaks only of what was applied since.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::command::Outcome;
use super::lease::Leases;
use super::lock::{Holder, Kind, Lock, Place, Waiter};
use super::mvcc::Store;

/// How many owner events the journal keeps (a node that falls further behind wakes every
/// waiting request once instead).
const JOURNAL_MAX: usize = 4096;

/// Lock and election activity since the cluster began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockCounters {
    /// Grants of locks and elections (leaderships), immediate or after a wait.
    #[serde(default)]
    pub grants: u64,
    /// Grants to an owner that had waited (a hand-off).
    #[serde(default)]
    pub handoffs: u64,
    /// Owners that joined a queue.
    #[serde(default)]
    pub waits: u64,
    /// Holders and waiters removed because their lease ended.
    #[serde(default)]
    pub lease_ended: u64,
}

/// Something that happened to an owner, at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEvent {
    pub revision: u64,
    pub kind: Kind,
    pub name: String,
    pub owner: String,
}

/// Recent owner events, for waking waiting requests (see the module doc).
#[derive(Debug, Clone, Default)]
struct Journal {
    /// The first revision whose events are all here; `None`: none yet known (loaded and
    /// nothing applied since).
    from: Option<u64>,
    events: VecDeque<LockEvent>,
}

/// Derived data: never part of the state's equality.
impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}
impl Eq for Journal {}

/// The table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LocksImage")]
pub struct Locks {
    locks: imbl::OrdMap<String, Lock>,
    elections: imbl::OrdMap<String, Lock>,
    counters: LockCounters,
    #[serde(skip)]
    by_lease: imbl::OrdMap<u64, imbl::OrdSet<(Kind, String, String)>>,
    /// Entries in `by_lease` (holders and waiters), derived.
    #[serde(skip)]
    owners: usize,
    /// Bytes of the names, owners and values of all holders and waiters (what the size
    /// quota counts of the table), derived.
    #[serde(skip)]
    bytes: u64,
    #[serde(skip)]
    journal: Journal,
}

/// The table as serialised.
#[derive(Deserialize)]
struct LocksImage {
    #[serde(default)]
    locks: imbl::OrdMap<String, Lock>,
    #[serde(default)]
    elections: imbl::OrdMap<String, Lock>,
    #[serde(default)]
    counters: LockCounters,
}

impl TryFrom<LocksImage> for Locks {
    type Error = String;

    /// Checks every lock, then rebuilds the lease index: a damaged image is refused.
    fn try_from(image: LocksImage) -> Result<Locks, String> {
        let mut t = Locks {
            locks: image.locks,
            elections: image.elections,
            counters: image.counters,
            by_lease: imbl::OrdMap::new(),
            owners: 0,
            bytes: 0,
            journal: Journal::default(),
        };
        let mut entries = Vec::new();
        let mut bytes = 0;
        for kind in [Kind::Lock, Kind::Election] {
            for (name, lock) in t.table(kind) {
                lock.check().map_err(|e| format!("{} {name:?}: {e}", kind.as_str()))?;
                if lock.is_idle() {
                    return Err(format!("{} {name:?} is idle but kept", kind.as_str()));
                }
                if kind == Kind::Election && lock.limit != 1 {
                    return Err(format!("election {name:?} has limit {}", lock.limit));
                }
                let owners = lock.holders.iter().map(|h| (h.lease, &h.owner, h.value.len()));
                for (lease, owner, value) in
                    owners.chain(lock.waiters.iter().map(|w| (w.lease, &w.owner, w.value.len())))
                {
                    entries.push((lease, kind, name.clone(), owner.clone()));
                    bytes += entry_bytes(name, owner, value);
                }
            }
        }
        for (lease, kind, name, owner) in entries {
            t.index(lease, kind, &name, &owner);
        }
        t.bytes = bytes;
        Ok(t)
    }
}

/// What an entry costs the size quota: its name, owner and value.
fn entry_bytes(name: &str, owner: &str, value: usize) -> u64 {
    (name.len() + owner.len() + value) as u64
}

/// The owner id of an entry made at `revision` under `lease`: unique, since every entry
/// takes a revision of its own.
fn owner_id(lease: u64, revision: u64) -> String {
    format!("{lease:x}-{revision:x}")
}

/// What an acquire (or a campaign) asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct AcquireArgs<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// An existing lease, or (none) a new one of `ttl_ms` granted at `clock_ms`.
    pub lease: Option<u64>,
    pub ttl_ms: u64,
    pub clock_ms: u64,
    pub limit: Option<u32>,
    /// Join the queue when it cannot be granted at once (else: busy, nothing changes).
    pub wait: bool,
    pub value: &'a [u8],
}

impl Locks {
    fn table(&self, kind: Kind) -> &imbl::OrdMap<String, Lock> {
        match kind {
            Kind::Lock => &self.locks,
            Kind::Election => &self.elections,
        }
    }

    fn table_mut(&mut self, kind: Kind) -> &mut imbl::OrdMap<String, Lock> {
        match kind {
            Kind::Lock => &mut self.locks,
            Kind::Election => &mut self.elections,
        }
    }

    /// The lock (or election) of `name`, if anyone holds or waits for it.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Lock> {
        self.table(kind).get(name)
    }

    /// Up to `limit` locks (or elections) with names after `after`, in name order, and
    /// whether more follow.
    pub fn page(&self, kind: Kind, after: Option<&str>, limit: usize) -> (Vec<(String, Lock)>, bool) {
        let table = self.table(kind);
        let mut it: Box<dyn Iterator<Item = (&String, &Lock)>> =
            match after {
                Some(a) => Box::new(table.range::<_, String>((
                    std::ops::Bound::Excluded(a.to_string()),
                    std::ops::Bound::Unbounded,
                ))),
                None => Box::new(table.iter()),
            };
        let page: Vec<(String, Lock)> =
            it.by_ref().take(limit).map(|(n, l)| (n.clone(), l.clone())).collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// Holders and waiters over all locks and elections.
    pub fn owners(&self) -> usize {
        self.owners
    }

    /// Bytes of the names, owners and values of all holders and waiters.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks the table against the rest of a loaded state: every owner's lease exists
    /// (`lease_exists`), and no revision in it is above the store's `revision`.
    pub(super) fn check_against(
        &self,
        revision: u64,
        lease_exists: impl Fn(u64) -> bool,
    ) -> Result<(), String> {
        if let Some(lease) = self.by_lease.keys().find(|&&id| !lease_exists(id)) {
            return Err(format!("a lock owner names lease {lease}, which does not exist"));
        }
        for kind in [Kind::Lock, Kind::Election] {
            for (name, lock) in self.table(kind) {
                let newest = lock.holders.iter().map(|h| h.token).chain(lock.waiters.iter().map(|w| w.since));
                if newest.chain([lock.revision]).any(|r| r > revision) {
                    return Err(format!(
                        "{} {name:?} has a revision above the store's ({revision})",
                        kind.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// How many locks and elections are held or waited for.
    pub fn len(&self) -> usize {
        self.locks.len() + self.elections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counters(&self) -> LockCounters {
        self.counters
    }

    /// Whether `token` is a current holder's of the lock or the election of `name`.
    pub fn holds_token(&self, name: &str, token: u64) -> bool {
        [Kind::Lock, Kind::Election]
            .iter()
            .any(|&k| self.get(k, name).is_some_and(|l| l.holder_with_token(token).is_some()))
    }

    /// The newest current holder's token of the lock or the election of `name`.
    pub fn current_token(&self, name: &str) -> Option<u64> {
        [Kind::Lock, Kind::Election].iter().filter_map(|&k| self.get(k, name)?.newest_token()).max()
    }

    /// The owners lease `id` has.
    pub fn lease_owners(&self, id: u64) -> impl Iterator<Item = &(Kind, String, String)> + '_ {
        self.by_lease.get(&id).into_iter().flatten()
    }

    /// Starts the journal at the revision after `revision` if it knows nothing yet (the
    /// state calls this before applying anything).
    pub(super) fn open_journal(&mut self, revision: u64) {
        self.journal.from.get_or_insert(revision + 1);
    }

    /// The owner events after revision `after`, or `None` if the journal does not reach
    /// back that far (then anyone may have been concerned).
    pub fn events_after(&self, after: u64) -> Option<impl Iterator<Item = &LockEvent> + '_> {
        let from = self.journal.from?;
        (after.saturating_add(1) >= from).then(|| {
            let start = self.journal.events.partition_point(|e| e.revision <= after);
            self.journal.events.range(start..)
        })
    }

    fn record(&mut self, revision: u64, kind: Kind, name: &str, owner: &str) {
        let j = &mut self.journal;
        j.events.push_back(LockEvent { revision, kind, name: name.to_string(), owner: owner.to_string() });
        while j.events.len() > JOURNAL_MAX {
            let Some(gone) = j.events.pop_front() else { break };
            j.from = Some(gone.revision + 1);
        }
    }

    fn index(&mut self, lease: u64, kind: Kind, name: &str, owner: &str) {
        let entry = (kind, name.to_string(), owner.to_string());
        if self.by_lease.entry(lease).or_default().insert(entry).is_none() {
            self.owners += 1;
        }
    }

    fn unindex(&mut self, lease: u64, kind: Kind, name: &str, owner: &str) {
        if let Some(set) = self.by_lease.get_mut(&lease) {
            if set.remove(&(kind, name.to_string(), owner.to_string())).is_some() {
                self.owners -= 1;
            }
            if set.is_empty() {
                self.by_lease.remove(&lease);
            }
        }
    }

    /// Acquires (or campaigns for) a lock: granted at once when there is room, else queued
    /// (or, without `wait`, refused as busy with nothing changed).
    pub(super) fn acquire(&mut self, kv: &mut Store, leases: &mut Leases, a: AcquireArgs<'_>) -> Outcome {
        let revision = kv.revision();
        let existing = self.get(a.kind, a.name);
        let limit = match (existing, a.limit) {
            (Some(l), Some(n)) if l.limit != n => {
                return Outcome::LockLimitMismatch { revision, limit: l.limit }
            }
            (Some(l), _) => l.limit,
            (None, n) => n.unwrap_or(1).max(1),
        };
        let limit = if a.kind == Kind::Election { 1 } else { limit };
        let room = existing.is_none_or(Lock::has_room);
        if !room && !a.wait {
            return Outcome::LockBusy { revision };
        }
        let lease = match a.lease {
            Some(id) if !leases.contains(id) => return Outcome::LeaseNotFound { revision, lease: id },
            Some(id) => id,
            None => match leases.grant(None, a.ttl_ms, a.clock_ms) {
                Some(id) => id,
                None => return Outcome::LeaseNotFound { revision, lease: 0 },
            },
        };
        let rev = kv.bump();
        let owner = owner_id(lease, rev);
        self.index(lease, a.kind, a.name, &owner);
        self.bytes += entry_bytes(a.name, &owner, a.value.len());
        let lock = self.table_mut(a.kind).entry(a.name.to_string()).or_insert_with(|| Lock::new(limit));
        lock.revision = rev;
        let value = a.value.to_vec();
        if room {
            let holder = Holder { owner, lease, token: rev, value };
            lock.holders.push(holder.clone());
            self.counters.grants += 1;
            self.record(rev, a.kind, a.name, &holder.owner);
            Outcome::LockHeld { revision: rev, holder }
        } else {
            let waiter = Waiter { owner, lease, since: rev, value };
            lock.waiters.push_back(waiter.clone());
            let position = lock.waiters.len() as u64 - 1;
            self.counters.waits += 1;
            Outcome::LockQueued { revision: rev, waiter, position }
        }
    }

    /// Removes `owner` from the lock of `name`, at a revision of its own (returned), and
    /// grants the waiters this lets in. `None` when the owner is not there.
    fn remove(&mut self, kv: &mut Store, kind: Kind, name: &str, owner: &str) -> Option<(Place, u64)> {
        let lock = self.table_mut(kind).get_mut(name)?;
        let place = lock.place(owner)?;
        let (lease, value) = match place {
            Place::Holding(i) => {
                let h = lock.holders.remove(i);
                (h.lease, h.value.len())
            }
            Place::Waiting(i) => lock.waiters.remove(i).map_or((0, 0), |w| (w.lease, w.value.len())),
        };
        let rev = kv.bump();
        lock.revision = rev;
        self.bytes -= entry_bytes(name, owner, value);
        self.unindex(lease, kind, name, owner);
        self.record(rev, kind, name, owner);
        self.promote(kv, kind, name);
        Some((place, rev))
    }

    /// Grants the first waiters of `name` while there is room, each at a revision of its
    /// own; forgets the name when it is left idle.
    fn promote(&mut self, kv: &mut Store, kind: Kind, name: &str) {
        loop {
            let Some(lock) = self.table_mut(kind).get_mut(name) else { return };
            if lock.is_idle() {
                self.table_mut(kind).remove(name);
                return;
            }
            if lock.holders.len() >= lock.limit as usize || lock.waiters.is_empty() {
                return;
            }
            let rev = kv.bump();
            let owner = lock.grant_next(rev).map(|h| h.owner.clone()).unwrap_or_default();
            self.counters.grants += 1;
            self.counters.handoffs += 1;
            self.record(rev, kind, name, &owner);
        }
    }

    /// Releases a holder or withdraws a waiter (a resign, for an election). The outcome's
    /// revision is the release's own (a hand-off it lets happen comes after).
    pub(super) fn release(&mut self, kv: &mut Store, kind: Kind, name: &str, owner: &str) -> Outcome {
        match self.remove(kv, kind, name, owner) {
            Some((place, revision)) => {
                Outcome::LockReleased { revision, held: matches!(place, Place::Holding(_)) }
            }
            None => Outcome::OwnerNotFound { revision: kv.revision() },
        }
    }

    /// A waiter whose wait ran out leaves the queue; one granted meanwhile keeps what it got.
    pub(super) fn cancel(&mut self, kv: &mut Store, kind: Kind, name: &str, owner: &str) -> Outcome {
        let revision = kv.revision();
        match self.get(kind, name).and_then(|l| Some((l, l.place(owner)?))) {
            Some((l, Place::Holding(i))) => Outcome::LockHeld { revision, holder: l.holders[i].clone() },
            Some((_, Place::Waiting(_))) => {
                let revision = self.remove(kv, kind, name, owner).map_or(revision, |(_, r)| r);
                Outcome::LockCancelled { revision }
            }
            None => Outcome::OwnerNotFound { revision },
        }
    }

    /// The election leader `owner` gives its leadership a new value.
    pub(super) fn proclaim(&mut self, kv: &mut Store, name: &str, owner: &str, value: &[u8]) -> Outcome {
        let revision = kv.revision();
        let Some(lock) = self.elections.get(name) else { return Outcome::NotLeader { revision } };
        let Some(i) = lock.holders.iter().position(|h| h.owner == owner) else {
            return Outcome::NotLeader { revision };
        };
        let rev = kv.bump();
        let lock = self.elections.get_mut(name).expect("looked up above");
        lock.revision = rev;
        let old = std::mem::replace(&mut lock.holders[i].value, value.to_vec());
        self.bytes = self.bytes - old.len() as u64 + value.len() as u64;
        let holder = lock.holders[i].clone();
        self.record(rev, Kind::Election, name, owner);
        Outcome::Proclaimed { revision: rev, holder }
    }

    /// Lease `id` has ended (its keys went at the store's current revision, taken by the
    /// caller if there were none): its owners leave at that revision. The names they left go
    /// into `freed`, for [`Locks::promote_all`] once every lease ending in the same command
    /// has left, so a waiter whose lease ends together with a holder's is never granted.
    pub(super) fn end_lease(&mut self, kv: &mut Store, id: u64, freed: &mut Vec<(Kind, String)>) {
        let Some(owners) = self.by_lease.remove(&id) else { return };
        self.owners -= owners.len();
        let rev = kv.revision();
        // Grouped by lock, so each lock's entries are looked at once however many of them
        // the lease has.
        let mut by_lock: std::collections::BTreeMap<(Kind, String), std::collections::BTreeSet<String>> =
            Default::default();
        for (kind, name, owner) in owners {
            by_lock.entry((kind, name)).or_default().insert(owner);
        }
        for ((kind, name), gone) in by_lock {
            let Some(lock) = self.table_mut(kind).get_mut(&name) else { continue };
            let mut removed: Vec<(String, usize)> = Vec::new();
            let mut keep = |owner: &String, value: &Vec<u8>| {
                let go = gone.contains(owner);
                if go {
                    removed.push((owner.clone(), value.len()));
                }
                !go
            };
            lock.holders.retain(|h| keep(&h.owner, &h.value));
            lock.waiters.retain(|w| keep(&w.owner, &w.value));
            if removed.is_empty() {
                continue;
            }
            lock.revision = rev;
            for (owner, value) in removed {
                self.counters.lease_ended += 1;
                self.bytes -= entry_bytes(&name, &owner, value);
                self.record(rev, kind, &name, &owner);
            }
            freed.push((kind, name));
        }
    }

    /// Grants the waiters that ended leases let in (see [`Locks::end_lease`]), name by name
    /// in order, each at a revision of its own.
    pub(super) fn promote_all(&mut self, kv: &mut Store, mut freed: Vec<(Kind, String)>) {
        freed.sort_unstable();
        freed.dedup();
        for (kind, name) in freed {
            self.promote(kv, kind, &name);
        }
    }
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
