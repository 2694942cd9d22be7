//! The idempotency table: client idempotency key → fingerprint of the request and the
//! outcome applying it decided.
//!
//! A retry that carries the same key and the same request gets the first outcome back and
//! applies nothing; the same key with another request is a conflict. Entries expire by
//! time, measured only by the leader stamps carried in proposals (apply never reads a
//! clock), and are evicted oldest first past a count or byte bound. The bounds travel in
//! each idempotent command (the proposing node's settings), so every node expires and
//! evicts the same entries at the same log position. The table is part of the state, so
//! it is in snapshots and holds across leader changes and restarts.
//!
//! What is kept of an outcome is small: the values a request wrote are left out (a retry
//! carries the same request, so they are put back from it), and an outcome still larger
//! than [`MAX_OUTCOME_BYTES`] (a big `prev_kv`, a transaction's reads) is kept as
//! [`Outcome::NotRemembered`]: a retry then learns that the request was applied, and when,
//! but not its reply; it is never applied twice.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{Command, Outcome};
use super::txn::{TxnOp, TxnResult};

/// Key and value bytes of an outcome kept whole; a larger one is kept as `NotRemembered`.
pub const MAX_OUTCOME_BYTES: usize = 64 << 10;

/// How long, and how many, idempotency entries are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// An entry expires this long after the leader stamp of the proposal that made it.
    pub window_ms: u64,
    /// At most this many entries; the oldest go first.
    pub max_entries: u64,
    /// At most about this many bytes of remembered outcomes; the oldest go first.
    pub max_bytes: u64,
}

/// One remembered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Insertion order (the key of `order`).
    seq: u64,
    /// Leader time after which the entry is gone.
    expires_ms: u64,
    /// SHA-256 of the request, hex.
    fingerprint: String,
    outcome: Outcome,
    /// What the entry counts against `max_bytes`.
    bytes: u64,
}

/// What the table says of an idempotent request.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or expired): apply it.
    New,
    /// Seen with the same request: its first outcome.
    Replay(Outcome),
    /// Seen with another request.
    Conflict,
}

/// The table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    entries: imbl::OrdMap<String, Entry>,
    /// Insertion order → key, for expiry and eviction oldest first.
    order: imbl::OrdMap<u64, String>,
    next_seq: u64,
    bytes: u64,
}

/// Bytes an entry counts for: its key, fingerprint and the data its outcome holds.
fn entry_bytes(key: &str, outcome: &Outcome) -> u64 {
    (key.len() + 64 + 64 + outcome.data_bytes()) as u64
}

/// The fingerprint of a request: SHA-256 of its log encoding, without what the node that
/// took it filled in from its own settings (so a retry through another node matches).
pub fn fingerprint(cmd: &Command) -> String {
    let bytes = serde_json::to_vec(&client_part(cmd)).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `cmd` without what a node filled in: a transaction's read limits (the node's settings)
/// and a grant's lease clock (the leader's stamp).
fn client_part(cmd: &Command) -> Command {
    let mut part = cmd.clone();
    match &mut part {
        Command::Txn(txn) => {
            txn.max_read_bytes = 0;
            txn.default_get_limit = 0;
        }
        Command::LeaseGrant { clock_ms, .. } | Command::LockAcquire { lease: None, clock_ms, .. } => {
            *clock_ms = 0
        }
        Command::As { cmd, .. } => **cmd = client_part(cmd),
        _ => {}
    }
    part
}

/// What is kept of `outcome`: without the values `cmd` wrote, and `NotRemembered` when
/// still too large.
fn slim(outcome: Outcome) -> Outcome {
    let mut o = outcome;
    match &mut o {
        Outcome::Put { kv, .. } => kv.value.clear(),
        Outcome::Txn { results, .. } => {
            for r in results.iter_mut() {
                if let TxnResult::Put { kv, .. } = r {
                    kv.value.clear();
                }
            }
        }
        // A candidate's value is the campaign's (or the proclaim's) own.
        Outcome::LockHeld { holder, .. } | Outcome::Proclaimed { holder, .. } => holder.value.clear(),
        Outcome::LockQueued { waiter, .. } => waiter.value.clear(),
        _ => {}
    }
    if o.data_bytes() > MAX_OUTCOME_BYTES {
        return Outcome::NotRemembered { revision: o.revision() };
    }
    o
}

/// A kept outcome with the values `cmd` wrote put back: the first outcome as it was.
pub fn refill(outcome: Outcome, cmd: &Command) -> Outcome {
    if let Command::As { cmd, .. } = cmd {
        return refill(outcome, cmd);
    }
    let mut o = outcome;
    match (&mut o, cmd) {
        (Outcome::Put { kv, .. }, Command::Put { value, .. }) => kv.value = value.clone(),
        (Outcome::Txn { succeeded, results, .. }, Command::Txn(txn)) => {
            let ops = if *succeeded { &txn.success } else { &txn.failure };
            for (r, op) in results.iter_mut().zip(ops) {
                if let (TxnResult::Put { kv, .. }, TxnOp::Put { value, .. }) = (r, op) {
                    kv.value = value.clone();
                }
            }
        }
        (Outcome::LockHeld { holder, .. }, Command::LockAcquire { value, .. })
        | (Outcome::Proclaimed { holder, .. }, Command::Proclaim { value, .. }) => {
            holder.value = value.clone()
        }
        (Outcome::LockQueued { waiter, .. }, Command::LockAcquire { value, .. }) => {
            waiter.value = value.clone()
        }
        _ => {}
    }
    o
}

impl Dedup {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (as bounded by `max_bytes`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops the entries that expired by leader time `now_ms`, oldest first. An entry made
    /// under a leader whose clock ran ahead may outlive a younger one; it never expires
    /// early.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((_, key)) = self.order.get_min() {
            let expired = self.entries.get(key).is_none_or(|e| e.expires_ms <= now_ms);
            if !expired {
                break;
            }
            let key = key.clone();
            self.remove_oldest(&key);
        }
    }

    fn remove_oldest(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(e.bytes);
            self.order.remove(&e.seq);
        } else if let Some(seq) = self.order.get_min().map(|(seq, _)| *seq) {
            self.order.remove(&seq);
        }
    }

    /// What the table knows of `key` for the request with `fingerprint` (a replayed
    /// outcome still lacks the values the request wrote: see [`refill`]).
    pub fn seen(&self, key: &str, fingerprint: &str) -> Seen {
        match self.entries.get(key) {
            None => Seen::New,
            Some(e) if e.fingerprint == fingerprint => Seen::Replay(e.outcome.clone()),
            Some(_) => Seen::Conflict,
        }
    }

    /// Remembers the outcome of a request, then evicts the oldest entries past the bounds
    /// (never the one just made, so a retry can find it).
    pub fn remember(
        &mut self,
        key: &str,
        fingerprint: String,
        outcome: Outcome,
        now_ms: u64,
        retain: Retention,
    ) {
        let outcome = slim(outcome);
        let bytes = entry_bytes(key, &outcome);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
            self.order.remove(&old.seq);
        }
        let expires_ms = now_ms.saturating_add(retain.window_ms);
        self.entries.insert(key.to_string(), Entry { seq, expires_ms, fingerprint, outcome, bytes });
        self.order.insert(seq, key.to_string());
        self.bytes += bytes;
        while self.entries.len() > 1
            && (self.entries.len() as u64 > retain.max_entries || self.bytes > retain.max_bytes)
        {
            let Some((_, oldest)) = self.order.get_min() else { break };
            let oldest = oldest.clone();
            self.remove_oldest(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retain(window_ms: u64, max_entries: u64) -> Retention {
        Retention { window_ms, max_entries, max_bytes: u64::MAX }
    }

    fn outcome(rev: u64) -> Outcome {
        Outcome::Nothing { revision: rev }
    }

    #[test]
    fn a_candidates_value_is_left_out_and_put_back_from_the_retry() {
        use super::super::lock::{Holder, Kind, Waiter};
        let value = vec![b'v'; MAX_OUTCOME_BYTES + 1];
        let acquire = Command::LockAcquire {
            kind: Kind::Election,
            name: "e".into(),
            lease: None,
            ttl_ms: 10_000,
            clock_ms: 0,
            limit: None,
            wait: true,
            value: value.clone(),
        };
        let proclaim = Command::Proclaim { name: "e".into(), owner: "1-2".into(), value: value.clone() };
        let holder = Holder { owner: "1-2".into(), lease: 1, token: 2, value: value.clone() };
        let waiter = Waiter { owner: "1-3".into(), lease: 1, since: 3, value };
        for (cmd, first) in [
            (&acquire, Outcome::LockHeld { revision: 2, holder: holder.clone() }),
            (&acquire, Outcome::LockQueued { revision: 3, waiter, position: 0 }),
            (&proclaim, Outcome::Proclaimed { revision: 4, holder }),
        ] {
            let mut d = Dedup::default();
            d.remember("k", "f".into(), first.clone(), 1_000, retain(10, 10));
            let Seen::Replay(kept) = d.seen("k", "f") else { panic!("not remembered: {first:?}") };
            assert!(kept.data_bytes() < 100, "the value is left out: {kept:?}");
            assert_eq!(refill(kept, cmd), first);
        }
    }

    #[test]
    fn a_key_is_new_then_replayed_then_a_conflict_for_another_request() {
        let mut d = Dedup::default();
        assert_eq!(d.seen("k", "f1"), Seen::New);
        d.remember("k", "f1".into(), outcome(7), 1_000, retain(10, 10));
        assert_eq!(d.seen("k", "f1"), Seen::Replay(outcome(7)));
        assert_eq!(d.seen("k", "f2"), Seen::Conflict);
        assert_eq!(d.seen("other", "f1"), Seen::New);
    }

    #[test]
    fn entries_expire_by_leader_time_only() {
        let mut d = Dedup::default();
        d.remember("a", "f".into(), outcome(1), 1_000, retain(100, 10));
        d.remember("b", "f".into(), outcome(2), 1_050, retain(100, 10));
        d.expire(1_099);
        assert_eq!(d.len(), 2);
        d.expire(1_100);
        assert_eq!(d.seen("a", "f"), Seen::New);
        assert_eq!(d.seen("b", "f"), Seen::Replay(outcome(2)));
        // A leader whose clock is behind expires nothing early.
        d.expire(0);
        assert_eq!(d.len(), 1);
        d.expire(1_150);
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn the_count_and_byte_bounds_evict_the_oldest_but_never_the_newest() {
        let mut d = Dedup::default();
        for i in 0..5u64 {
            d.remember(&format!("k{i}"), "f".into(), outcome(i), 0, retain(1_000, 3));
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.seen("k1", "f"), Seen::New);
        assert_eq!(d.seen("k2", "f"), Seen::Replay(outcome(2)));
        let tight = Retention { window_ms: 1_000, max_entries: 100, max_bytes: 1 };
        d.remember("big", "f".into(), outcome(9), 0, tight);
        assert_eq!(d.len(), 1, "past the byte bound only the newest stays");
        assert_eq!(d.seen("big", "f"), Seen::Replay(outcome(9)));
    }

    #[test]
    fn fingerprints_differ_when_the_request_differs() {
        let put = |v: &[u8]| Command::Put {
            key: "/k".into(),
            value: v.to_vec(),
            lease: None,
            sequential: false,
            cond: Default::default(),
            prev_kv: false,
        };
        assert_eq!(fingerprint(&put(b"a")), fingerprint(&put(b"a")));
        assert_ne!(fingerprint(&put(b"a")), fingerprint(&put(b"b")));
        assert_eq!(fingerprint(&put(b"a")).len(), 64);
    }
}
