//! The replicated log payload and what applying it decided.
//!
//! A [`Proposal`] is what the leader puts into one Raft log entry: a [`Command`] plus what
//! apply may need but must never compute itself (the leader's wall-clock stamp, the
//! client's idempotency key). It is serialised into the log and sent to peers, so its
//! format is versioned: fields and variants may be added (with serde defaults) but never
//! change meaning, and a proposal of a newer format than this binary knows is refused when
//! it is decoded, never guessed at. `apply` is deterministic: the same state and proposal
//! give the same outcome on every node.

use serde::{Deserialize, Serialize};

use super::dedup::Retention;
use super::kv::KeyValue;
use super::lock::{Holder, Kind, Waiter};
use super::mvcc::Store;
use super::txn::{Txn, TxnResult};

/// The proposal format this binary writes, and the newest it can read.
pub const FORMAT_VERSION: u32 = 5;

/// One log entry's business payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProposalRepr")]
pub struct Proposal {
    /// Format version ([`FORMAT_VERSION`] when written by this binary).
    pub v: u32,
    /// The proposing leader's wall clock (ms since the Unix epoch) when it proposed; apply
    /// uses it instead of a clock of its own (lease checkpoints, idempotency expiry).
    pub leader_time_ms: u64,
    /// What to apply. Idempotency keys travel per write ([`Command::Idempotent`]), since
    /// one proposal batches many clients' writes.
    pub cmd: Command,
}

/// What the log holds before the version is checked.
#[derive(Deserialize)]
struct ProposalRepr {
    v: u32,
    leader_time_ms: u64,
    cmd: Command,
}

impl TryFrom<ProposalRepr> for Proposal {
    type Error = String;

    fn try_from(r: ProposalRepr) -> Result<Proposal, String> {
        if r.v == 0 || r.v > FORMAT_VERSION {
            return Err(format!(
                "a log entry has format version {}, but this binary reads versions 1 to {FORMAT_VERSION}: \
                 upgrade palisade on this node",
                r.v
            ));
        }
        Ok(Proposal { v: r.v, leader_time_ms: r.leader_time_ms, cmd: r.cmd })
    }
}

impl Proposal {
    /// A proposal of `cmd` in the current format, stamped with `leader_time_ms`.
    pub fn new(cmd: Command, leader_time_ms: u64) -> Proposal {
        Proposal { v: FORMAT_VERSION, leader_time_ms, cmd }
    }
}

/// Conditions a write carries; all given ones must hold for it to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// The key's version must equal this; `0` means the key must not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
    /// The key's mod_revision must equal this; `0` means the key must not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_mod_revision: Option<u64>,
    /// The key must exist with exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "super::bytes_b64::option")]
    pub if_value: Option<Vec<u8>>,
}

impl Condition {
    pub fn is_empty(&self) -> bool {
        self.if_version.is_none() && self.if_mod_revision.is_none() && self.if_value.is_none()
    }

    /// Whether the condition holds for a key whose current state is `current`.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        let version = current.map_or(0, |kv| kv.version);
        let mod_revision = current.map_or(0, |kv| kv.mod_revision);
        self.if_version.is_none_or(|v| v == version)
            && self.if_mod_revision.is_none_or(|r| r == mod_revision)
            && self.if_value.as_ref().is_none_or(|want| current.is_some_and(|kv| &kv.value == want))
    }
}

/// A change proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Write one key (attached to `lease`, if given); with `sequential`, create the next
    /// sequential child of `key` instead.
    Put {
        key: String,
        #[serde(with = "super::bytes_b64")]
        value: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sequential: bool,
        #[serde(default, skip_serializing_if = "Condition::is_empty")]
        cond: Condition,
        #[serde(default)]
        prev_kv: bool,
    },
    /// Delete one key, or with `recursive` the key and its subtree.
    Delete {
        key: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default, skip_serializing_if = "Condition::is_empty")]
        cond: Condition,
        #[serde(default)]
        prev_kv: bool,
    },
    /// Compares, then one of two branches of operations, all at one revision.
    Txn(Txn),
    /// Drop the history below `revision` (no revision of its own).
    Compact { revision: u64 },
    /// `cmd` under a client's idempotency key: applied once; a retry with the same key and
    /// the same request (`fingerprint`, computed once by the node that took the request)
    /// gets the first outcome.
    Idempotent { key: String, fingerprint: String, retain: Retention, cmd: Box<Command> },
    /// Several independent commands proposed together (one log entry, one fsync), applied
    /// in order, each at its own revision as if proposed one by one. Batches do not nest.
    Batch { cmds: Vec<Command> },
    /// Grant a lease of `ttl_ms` under `id` (or an id of the table's choosing); the leader
    /// stamps `clock_ms`, its lease clock, when it proposes. No revision of its own.
    LeaseGrant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        ttl_ms: u64,
        #[serde(default)]
        clock_ms: u64,
    },
    /// End lease `id` now: its keys are deleted, all at one revision (none if it has none).
    LeaseRevoke { id: u64 },
    /// The leader's lease clock reading, and the leases kept alive at it (renewed from it).
    /// Proposed by the leader only. No revision of its own.
    LeaseClock {
        clock_ms: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        renew: Vec<u64>,
    },
    /// End the leases of `ids` that are expired at clock reading `clock_ms` (one a renewal
    /// reached first is left alone); each lease's keys go at a revision of its own.
    /// Proposed by the leader only.
    LeaseExpire { clock_ms: u64, ids: Vec<u64> },
    /// Acquire the lock (or campaign in the election) `name` under `lease`, or under a new
    /// lease of `ttl_ms` (the leader stamps `clock_ms`, as on a grant). Granted at once when
    /// there is room; else queued when `wait`, or refused as busy. `limit`: how many may
    /// hold it (set by the acquirer of an idle name; an election's is 1). `value`: a
    /// candidate's value.
    LockAcquire {
        kind: Kind,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
        #[serde(default)]
        ttl_ms: u64,
        #[serde(default)]
        clock_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(default)]
        wait: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "super::bytes_b64")]
        value: Vec<u8>,
    },
    /// `owner` releases the lock (or resigns), or leaves its queue.
    LockRelease { kind: Kind, name: String, owner: String },
    /// `owner`'s wait ran out: it leaves the queue, unless it was granted meanwhile.
    LockCancel { kind: Kind, name: String, owner: String },
    /// The leader `owner` of election `name` gives its leadership a new value.
    Proclaim {
        name: String,
        owner: String,
        #[serde(with = "super::bytes_b64")]
        value: Vec<u8>,
    },
    /// `cmd` on behalf of the authenticated `subject` (client auth on): every lease it
    /// names (directly, or through a lock owner) must be one `subject` granted, unless
    /// `admin`; a lease it makes belongs to `subject`. Holds one plain command.
    As {
        subject: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        admin: bool,
        cmd: Box<Command>,
    },
}

impl Command {
    /// Key and value bytes the command carries (for message and batch sizes).
    pub fn data_bytes(&self) -> usize {
        match self {
            Command::Put { key, value, cond, .. } => {
                key.len() + value.len() + cond.if_value.as_ref().map_or(0, Vec::len)
            }
            Command::Delete { key, cond, .. } => key.len() + cond.if_value.as_ref().map_or(0, Vec::len),
            Command::Txn(txn) => txn.data_bytes(),
            Command::Compact { .. } => 0,
            Command::Idempotent { key, fingerprint, cmd, .. } => {
                key.len() + fingerprint.len() + cmd.data_bytes()
            }
            Command::Batch { cmds } => cmds.iter().map(Command::data_bytes).sum(),
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 0,
            Command::LeaseClock { renew: ids, .. } | Command::LeaseExpire { ids, .. } => 8 * ids.len(),
            Command::LockAcquire { name, value, .. } => name.len() + value.len(),
            Command::LockRelease { name, owner, .. } | Command::LockCancel { name, owner, .. } => {
                name.len() + owner.len()
            }
            Command::Proclaim { name, owner, value } => name.len() + owner.len() + value.len(),
            Command::As { subject, cmd, .. } => subject.len() + cmd.data_bytes(),
        }
    }

    /// The largest lease clock reading the command carries, if it carries one.
    pub fn lease_clock(&self) -> Option<u64> {
        match self {
            Command::LeaseGrant { clock_ms, .. }
            | Command::LeaseClock { clock_ms, .. }
            | Command::LeaseExpire { clock_ms, .. } => Some(*clock_ms),
            Command::LockAcquire { lease: None, clock_ms, .. } => Some(*clock_ms),
            Command::Idempotent { cmd, .. } | Command::As { cmd, .. } => cmd.lease_clock(),
            Command::Batch { cmds } => cmds.iter().filter_map(Command::lease_clock).max(),
            _ => None,
        }
    }

    /// How many single commands this is (a batch counts its members).
    pub fn count(&self) -> usize {
        match self {
            Command::Batch { cmds } => cmds.iter().map(Command::count).sum(),
            _ => 1,
        }
    }
}

/// What applying a command decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A put applied at `revision`.
    Put { revision: u64, kv: KeyValue, prev_kv: Option<KeyValue> },
    /// A delete applied; `deleted` keys went (0: nothing matched, revision unchanged).
    Deleted { revision: u64, deleted: u64, prev_kvs: Vec<KeyValue> },
    /// A condition did not hold; nothing changed. `current` is the key as it is.
    ConditionFailed { revision: u64, current: Option<KeyValue> },
    /// A transaction ran: `succeeded` says which branch, `results` what its ops did.
    Txn { revision: u64, succeeded: bool, results: Vec<TxnResult> },
    /// A compaction was applied: history below `compact_revision` is gone (`compacted`:
    /// whether the floor moved).
    Compacted { revision: u64, compact_revision: u64, compacted: bool },
    /// A retried idempotent write: the outcome the first one got; nothing applied now.
    Replayed { first: Box<Outcome> },
    /// The idempotency key was used for another request; nothing applied.
    IdempotencyConflict { revision: u64 },
    /// Stands in a remembered entry for an outcome too large to keep: the request was
    /// applied once, at `revision`, but its reply cannot be given again.
    NotRemembered { revision: u64 },
    /// A compaction above the current revision; nothing changed.
    FutureRevision { revision: u64 },
    /// An entry with no business payload (blank or membership) was applied.
    Nothing { revision: u64 },
    /// The outcomes of a [`Command::Batch`], in order; `revision` is the one after them all.
    Batch { revision: u64, outcomes: Vec<Outcome> },
    /// A lease was granted.
    LeaseGranted { revision: u64, id: u64, ttl_ms: u64 },
    /// The lease id asked for is in use; nothing changed.
    LeaseExists { revision: u64, id: u64 },
    /// A write names a lease that does not exist (or a revoke one that has ended);
    /// nothing changed.
    LeaseNotFound { revision: u64, lease: u64 },
    /// A lease was revoked; `deleted` keys went with it (at `revision`, if any).
    LeaseRevoked { revision: u64, id: u64, deleted: u64 },
    /// The lease clock moved; `missing`: leases asked to be renewed that no longer exist.
    LeaseClock { revision: u64, missing: Vec<u64> },
    /// These leases expired (each one's keys went at a revision of its own).
    LeasesExpired { revision: u64, expired: Vec<u64> },
    /// The acquirer holds the lock (or leads the election): granted at `holder.token`, or
    /// (a cancel) granted before its wait ran out.
    LockHeld { revision: u64, holder: Holder },
    /// The acquirer joined the queue, `position` owners ahead of it.
    LockQueued { revision: u64, waiter: Waiter, position: u64 },
    /// Held to its limit and the acquirer would not wait; nothing changed.
    LockBusy { revision: u64 },
    /// The lock is held or waited for under another limit; nothing changed.
    LockLimitMismatch { revision: u64, limit: u32 },
    /// The owner released what it held (`held`), or left the queue.
    LockReleased { revision: u64, held: bool },
    /// The waiter left the queue (its wait ran out).
    LockCancelled { revision: u64 },
    /// The owner neither holds nor waits; nothing changed.
    OwnerNotFound { revision: u64 },
    /// The command names a lease its subject did not grant; nothing changed.
    LeaseNotOwned { revision: u64, lease: u64 },
    /// The leader gave its leadership a new value.
    Proclaimed { revision: u64, holder: Holder },
    /// The proclaimer does not lead the election; nothing changed.
    NotLeader { revision: u64 },
}

impl Outcome {
    /// The store revision this outcome reflects.
    pub fn revision(&self) -> u64 {
        match self {
            Outcome::Put { revision, .. }
            | Outcome::Deleted { revision, .. }
            | Outcome::ConditionFailed { revision, .. }
            | Outcome::Txn { revision, .. }
            | Outcome::Compacted { revision, .. }
            | Outcome::IdempotencyConflict { revision }
            | Outcome::NotRemembered { revision }
            | Outcome::FutureRevision { revision }
            | Outcome::Nothing { revision }
            | Outcome::LeaseGranted { revision, .. }
            | Outcome::LeaseExists { revision, .. }
            | Outcome::LeaseNotFound { revision, .. }
            | Outcome::LeaseRevoked { revision, .. }
            | Outcome::LeaseClock { revision, .. }
            | Outcome::LeasesExpired { revision, .. }
            | Outcome::LockHeld { revision, .. }
            | Outcome::LockQueued { revision, .. }
            | Outcome::LockBusy { revision }
            | Outcome::LockLimitMismatch { revision, .. }
            | Outcome::LockReleased { revision, .. }
            | Outcome::LockCancelled { revision }
            | Outcome::OwnerNotFound { revision }
            | Outcome::LeaseNotOwned { revision, .. }
            | Outcome::Proclaimed { revision, .. }
            | Outcome::NotLeader { revision } => *revision,
            Outcome::Replayed { first } => first.revision(),
            Outcome::Batch { revision, .. } => *revision,
        }
    }

    /// Key and value bytes the outcome holds (what remembering it costs).
    pub fn data_bytes(&self) -> usize {
        let kv_bytes = |kv: &KeyValue| kv.key.len() + kv.value.len();
        match self {
            Outcome::Put { kv, prev_kv, .. } => kv_bytes(kv) + prev_kv.as_ref().map_or(0, kv_bytes),
            Outcome::Deleted { prev_kvs, .. } => prev_kvs.iter().map(kv_bytes).sum(),
            Outcome::ConditionFailed { current, .. } => current.as_ref().map_or(0, kv_bytes),
            Outcome::Txn { results, .. } => results.iter().map(TxnResult::data_bytes).sum(),
            Outcome::Replayed { first } => first.data_bytes(),
            Outcome::Batch { outcomes, .. } => outcomes.iter().map(Outcome::data_bytes).sum(),
            Outcome::Compacted { .. }
            | Outcome::IdempotencyConflict { .. }
            | Outcome::NotRemembered { .. }
            | Outcome::FutureRevision { .. }
            | Outcome::Nothing { .. }
            | Outcome::LeaseGranted { .. }
            | Outcome::LeaseExists { .. }
            | Outcome::LeaseNotFound { .. }
            | Outcome::LeaseRevoked { .. } => 0,
            Outcome::LeaseClock { missing: ids, .. } | Outcome::LeasesExpired { expired: ids, .. } => {
                8 * ids.len()
            }
            Outcome::LockHeld { holder, .. } | Outcome::Proclaimed { holder, .. } => {
                holder.owner.len() + holder.value.len()
            }
            Outcome::LockQueued { waiter, .. } => waiter.owner.len() + waiter.value.len(),
            Outcome::LockBusy { .. }
            | Outcome::LockLimitMismatch { .. }
            | Outcome::LockReleased { .. }
            | Outcome::LockCancelled { .. }
            | Outcome::OwnerNotFound { .. }
            | Outcome::LeaseNotOwned { .. }
            | Outcome::NotLeader { .. } => 0,
        }
    }
}

impl Store {
    fn nothing_outcome(&self) -> Outcome {
        Outcome::Nothing { revision: self.revision() }
    }

    /// Applies one key-value command. Each command is one write transaction: everything
    /// it changes lands at one revision (a batch is a list of commands, one revision each).
    /// Never panics on any input: commands are validated before they are proposed, and
    /// anything odd that still arrives is decided like any other input.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::Put { key, value, lease, sequential: true, .. } => {
                let kv = self.write().put_sequential(key, value.clone(), *lease);
                Outcome::Put { revision: self.revision(), kv, prev_kv: None }
            }
            Command::Put { key, value, lease, cond, prev_kv, sequential: false } => {
                let current = self.current(key);
                if !cond.holds(current.as_ref()) {
                    return Outcome::ConditionFailed { revision: self.revision(), current };
                }
                let (kv, prev) = self.write().put(key, value.clone(), *lease);
                Outcome::Put { revision: self.revision(), kv, prev_kv: if *prev_kv { prev } else { None } }
            }
            Command::Delete { key, recursive, cond, prev_kv } => {
                if !cond.is_empty() {
                    let current = self.current(key);
                    if !cond.holds(current.as_ref()) {
                        return Outcome::ConditionFailed { revision: self.revision(), current };
                    }
                }
                let deleted = self.write().delete(key, *recursive);
                Outcome::Deleted {
                    revision: self.revision(),
                    deleted: deleted.len() as u64,
                    prev_kvs: if *prev_kv { deleted } else { Vec::new() },
                }
            }
            Command::Txn(txn) => {
                let (succeeded, results) = self.apply_txn(txn);
                Outcome::Txn { revision: self.revision(), succeeded, results }
            }
            Command::Compact { revision } if *revision > self.revision() => {
                Outcome::FutureRevision { revision: self.revision() }
            }
            Command::Compact { revision } => {
                let compacted = self.compact(*revision);
                Outcome::Compacted {
                    revision: self.revision(),
                    compact_revision: self.compact_revision(),
                    compacted,
                }
            }
            // The idempotency table is the state root's (see `State::apply`); the store
            // alone applies the command itself.
            Command::Idempotent { cmd, .. } => match cmd.as_ref() {
                Command::Batch { .. } | Command::Idempotent { .. } => self.nothing_outcome(),
                cmd => self.apply(cmd),
            },
            Command::Batch { cmds } => apply_batch(self, cmds, Store::revision, Store::apply),
            // Whose leases a subject may use is the state root's to decide.
            Command::As { cmd, .. } => match cmd.as_ref() {
                Command::Batch { .. } | Command::Idempotent { .. } | Command::As { .. } => {
                    self.nothing_outcome()
                }
                cmd => self.apply(cmd),
            },
            // Leases are the state root's (see `State::apply`).
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseClock { .. }
            | Command::LeaseExpire { .. } => self.nothing_outcome(),
            // Locks and elections are the state root's too.
            Command::LockAcquire { .. }
            | Command::LockRelease { .. }
            | Command::LockCancel { .. }
            | Command::Proclaim { .. } => self.nothing_outcome(),
        }
    }
}

/// Applies the members of a batch in order with `one`, each at its own revision, and
/// reports the revision after them all (read with `revision`). A nested batch, which the
/// proposer never makes, is decided as an empty batch so every node still agrees. Shared
/// by the store and the state root (which adds the idempotency table).
pub(super) fn apply_batch<S>(
    s: &mut S,
    cmds: &[Command],
    revision: fn(&S) -> u64,
    mut one: impl FnMut(&mut S, &Command) -> Outcome,
) -> Outcome {
    let outcomes = cmds
        .iter()
        .map(|c| match c {
            Command::Batch { .. } => Outcome::Batch { revision: revision(s), outcomes: Vec::new() },
            c => one(s, c),
        })
        .collect();
    Outcome::Batch { revision: revision(s), outcomes }
}
