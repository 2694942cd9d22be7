//! The node's policy: what a request must satisfy before anything is proposed or read.
//!
//! Key rules, value and condition sizes, the write-only root, and the size quota. A client
//! request and a write forwarded by a follower pass the same checks here (the leader never
//! trusts a follower's checks: its limits may differ, and a peer may be hostile). Every
//! refusal is an `Error` that says what was wrong; nothing has changed when it is returned.

use super::Node;
use crate::error::{Error, Result};
use crate::store::{
    key, Command, CompareOp, CompareTarget, Kind, Retention, Txn, TxnOp, MAX_CHOSEN_LEASE_ID, MAX_LEASE_ID,
    SEQUENCE_DIGITS,
};

/// The longest idempotency window a write may carry (a week)...
const MAX_IDEMPOTENCY_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// ...the most keys...
pub const MAX_IDEMPOTENCY_KEYS: u64 = 100_000_000;
/// ...and the most bytes of outcomes (whatever a member's settings say).
pub const MAX_IDEMPOTENCY_BYTES: u64 = 16 << 30;

/// An idempotency key: 1 to 128 printable ASCII characters, no spaces.
pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(
            "an idempotency key is 1 to 128 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(())
}

/// The most holders a lock (a semaphore) may have at once.
pub const MAX_LOCK_LIMIT: u32 = 10_000;

/// A lock or election name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, other than `.`
/// and `..` (which no URL can name: clients fold them away as path segments).
pub fn check_lock_name(kind: Kind, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not {} name: give 1 to 128 characters of A-Z a-z 0-9 . _ - (not . or ..)",
            match kind {
                Kind::Lock => "a lock",
                Kind::Election => "an election",
            }
        )));
    }
    Ok(())
}

/// A lock's `limit` as a request gives it: 1 to `MAX_LOCK_LIMIT` (10,000), and none for an
/// election (which has one leader).
pub fn check_lock_limit(kind: Kind, limit: Option<u64>) -> Result<Option<u32>> {
    match (kind, limit) {
        (_, None) => Ok(None),
        (Kind::Election, Some(_)) => {
            Err(Error::InvalidArgument("an election has one leader: it takes no limit".into()))
        }
        (Kind::Lock, Some(n)) => match u32::try_from(n) {
            Ok(n) if (1..=MAX_LOCK_LIMIT).contains(&n) => Ok(Some(n)),
            _ => Err(Error::InvalidArgument(format!("a lock's limit is 1 to {MAX_LOCK_LIMIT}, not {n}"))),
        },
    }
}

/// An owner a request names: 1 to 128 printable ASCII characters (whether it exists is
/// decided by apply).
pub fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > 128 || !owner.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument(format!(
            "{owner:?} is not an owner: give the owner an acquire or a campaign returned"
        )));
    }
    Ok(())
}

/// What one write of a transaction branch touches.
enum Target<'a> {
    /// One key.
    Key(&'a str),
    /// A key and everything below it.
    Subtree(&'a str),
    /// A new child of this parent (a sequential create).
    NewChild(&'a str),
}

impl Target<'_> {
    /// Whether `k` is `root` or below it.
    fn within(k: &str, root: &str) -> bool {
        k == root || k.starts_with(&key::child_prefix(root))
    }

    fn overlaps(&self, other: &Target<'_>) -> bool {
        use Target::*;
        match (self, other) {
            (Key(a), Key(b)) => a == b,
            (Key(k), Subtree(s)) | (Subtree(s), Key(k)) => Self::within(k, s),
            (Subtree(a), Subtree(b)) => Self::within(a, b) || Self::within(b, a),
            // A new child of `p` is below `s` when `p` is `s` or below it, and may be `s`
            // itself when `s` is a sequential name under `p`.
            (NewChild(p), Subtree(s)) | (Subtree(s), NewChild(p)) => {
                Self::within(p, s) || Self::maybe_sequential_child(s, p)
            }
            // A named key may be the name the sequence hands out next.
            (NewChild(p), Key(k)) | (Key(k), NewChild(p)) => Self::maybe_sequential_child(k, p),
            // Two sequential creates never get the same name.
            (NewChild(_), NewChild(_)) => false,
        }
    }

    /// Whether `k` is a direct child of `parent` with a sequential (20-digit) name.
    fn maybe_sequential_child(k: &str, parent: &str) -> bool {
        k.strip_prefix(&key::child_prefix(parent))
            .is_some_and(|name| name.len() == SEQUENCE_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
    }

    fn describe(&self) -> String {
        match self {
            Target::Key(k) => k.to_string(),
            Target::Subtree(k) => format!("{k} (recursively)"),
            Target::NewChild(k) => format!("a new child of {k}"),
        }
    }
}

impl Node {
    /// A key a request reads: a valid path (the root included, for listings). Front-ends
    /// may call this (and [`Self::check_key`]) early, to refuse a bad key before reading a
    /// body; the node checks again anyway.
    pub fn check_read_key(&self, k: &str) -> Result<()> {
        key::validate(k, self.cfg.max_key_bytes).map_err(|e| Error::InvalidKey(e.to_string()))
    }

    /// A key a request names on its own (a read of one key, a write): not the root.
    pub fn check_key(&self, k: &str) -> Result<()> {
        self.check_read_key(k)?;
        if key::is_root(k) {
            return Err(Error::InvalidKey(
                "the root '/' is not a key: it cannot be written or read as one (list it with ?recursive or ?children)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Everything a write must satisfy before it is proposed.
    pub(super) fn check_write(&self, cmd: &Command) -> Result<()> {
        match cmd {
            Command::Put { key, value, lease, cond, sequential, prev_kv } => {
                if *sequential {
                    self.check_sequential_parent(key)?;
                    if !cond.is_empty() || *prev_kv {
                        return Err(Error::InvalidArgument(
                            "a sequential create takes no conditions and has no previous value".into(),
                        ));
                    }
                } else {
                    self.check_key(key)?;
                }
                self.check_lease(*lease)?;
                self.check_value("the value", value.len())?;
                if let Some(v) = &cond.if_value {
                    self.check_value("if_value", v.len())?;
                }
                self.check_quota((key.len() + value.len()) as u64)
            }
            Command::Delete { key, cond, .. } => {
                self.check_key(key)?;
                if let Some(v) = &cond.if_value {
                    self.check_value("if_value", v.len())?;
                }
                Ok(())
            }
            Command::Txn(txn) => self.check_txn(txn),
            // Above the current revision is decided by apply (a lagging follower's applied
            // revision says nothing about the leader's).
            Command::Compact { .. } => Ok(()),
            Command::Idempotent { key, fingerprint, retain, cmd } => {
                check_idempotency_key(key)?;
                let fingerprint_ok =
                    fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
                if !fingerprint_ok {
                    return Err(Error::InvalidArgument(
                        "an idempotent write's fingerprint is malformed".into(),
                    ));
                }
                if retain.window_ms > MAX_IDEMPOTENCY_WINDOW_MS
                    || retain.max_entries == 0
                    || retain.max_entries > MAX_IDEMPOTENCY_KEYS
                    || retain.max_bytes == 0
                    || retain.max_bytes > MAX_IDEMPOTENCY_BYTES
                {
                    return Err(Error::InvalidArgument(format!(
                        "idempotency retention {retain:?} is out of range"
                    )));
                }
                match cmd.as_ref() {
                    Command::Idempotent { .. } | Command::Batch { .. } => Err(Error::InvalidArgument(
                        "an idempotent write holds one plain write, not another idempotent write or a batch"
                            .into(),
                    )),
                    cmd => self.check_write(cmd),
                }
            }
            Command::Batch { .. } => Err(Error::InvalidArgument(
                "a batch is made by the leader's proposer, never sent by a client".into(),
            )),
            Command::As { subject, cmd, .. } => {
                if subject.is_empty() || subject.len() > crate::auth::MAX_SUBJECT_BYTES {
                    return Err(Error::InvalidArgument(format!(
                        "a subject is 1 to {} bytes, not {}",
                        crate::auth::MAX_SUBJECT_BYTES,
                        subject.len()
                    )));
                }
                match cmd.as_ref() {
                    Command::Idempotent { .. } | Command::Batch { .. } | Command::As { .. } => Err(
                        Error::InvalidArgument("a write on behalf of a subject holds one plain write".into()),
                    ),
                    cmd => self.check_write(cmd),
                }
            }
            Command::LeaseGrant { id, ttl_ms, .. } => {
                if let Some(id) = id.filter(|&id| id == 0 || id > MAX_CHOSEN_LEASE_ID) {
                    return Err(Error::InvalidArgument(format!(
                        "a lease id of your own is between 1 and {MAX_CHOSEN_LEASE_ID} (2^52), not {id}"
                    )));
                }
                self.check_ttl(*ttl_ms)?;
                let (alive, max) = (self.replica.applied().state.leases().len() as u64, self.cfg.max_leases);
                if alive >= max {
                    return Err(Error::QuotaExceeded(format!(
                        "{alive} leases exist, the most this cluster allows (--max-leases); revoke some first"
                    )));
                }
                Ok(())
            }
            Command::LeaseRevoke { id } => self.check_lease(Some(*id)),
            Command::LeaseClock { .. } | Command::LeaseExpire { .. } => Err(Error::InvalidArgument(
                "lease clock ticks and expiries are made by the leader, never sent by a client".into(),
            )),
            Command::LockAcquire { kind, name, lease, ttl_ms, limit, value, .. } => {
                check_lock_name(*kind, name)?;
                match lease {
                    Some(id) => self.check_lease_id(*id)?,
                    None => self.check_ttl(*ttl_ms)?,
                }
                check_lock_limit(*kind, limit.map(u64::from))?;
                if *kind == Kind::Lock && !value.is_empty() {
                    return Err(Error::InvalidArgument("a lock takes no value".into()));
                }
                self.check_value("the value", value.len())?;
                let (owners, alive) = {
                    let applied = self.replica.applied();
                    (applied.state.locks().owners() as u64, applied.state.leases().len() as u64)
                };
                let max = self.cfg.max_lock_owners;
                if owners >= max {
                    return Err(Error::QuotaExceeded(format!(
                        "{owners} lock holders and waiters exist, the most this cluster allows (--max-lock-owners); \
                         release some first"
                    )));
                }
                if lease.is_none() {
                    let max = self.cfg.max_leases;
                    if alive >= max {
                        return Err(Error::QuotaExceeded(format!(
                            "{alive} leases exist, the most this cluster allows (--max-leases); revoke some first"
                        )));
                    }
                }
                // The owner id is at most 27 characters (two hex numbers and a dash).
                self.check_quota((name.len() + value.len() + 27) as u64)
            }
            Command::LockRelease { kind, name, owner } | Command::LockCancel { kind, name, owner } => {
                check_lock_name(*kind, name)?;
                check_owner(owner)
            }
            Command::Proclaim { name, owner, value } => {
                check_lock_name(Kind::Election, name)?;
                check_owner(owner)?;
                self.check_value("the value", value.len())?;
                self.check_quota(value.len() as u64)
            }
        }
    }

    /// A TTL a lease may be granted with: between the configured floor and maximum.
    fn check_ttl(&self, ttl_ms: u64) -> Result<()> {
        let (min, max) = (self.cfg.lease_min_ttl_ms, self.cfg.lease_max_ttl_ms);
        if ttl_ms < min || ttl_ms > max {
            return Err(Error::InvalidArgument(format!(
                "a lease's ttl must be between {min} ms and {max} ms, not {ttl_ms} ms"
            )));
        }
        Ok(())
    }

    /// Wraps `cmd` under the client's idempotency key (if any), with this node's retention.
    pub fn idempotent(&self, key: Option<String>, cmd: Command) -> Result<Command> {
        let Some(key) = key else { return Ok(cmd) };
        check_idempotency_key(&key)?;
        let fingerprint = crate::store::dedup::fingerprint(&cmd);
        Ok(Command::Idempotent { key, fingerprint, retain: self.retention(), cmd: Box::new(cmd) })
    }

    /// This node's idempotency retention (the leader stamps its own on what it proposes).
    pub(super) fn retention(&self) -> Retention {
        Retention {
            window_ms: self.cfg.idempotency_window_ms,
            max_entries: self.cfg.idempotency_max_keys,
            max_bytes: self.cfg.idempotency_max_bytes,
        }
    }

    /// A parent a sequential key is created under: any valid path (the root included) with
    /// room below it for a 20-digit name.
    fn check_sequential_parent(&self, parent: &str) -> Result<()> {
        self.check_read_key(parent)?;
        let len = key::child_prefix(parent).len() + SEQUENCE_DIGITS;
        if len > self.cfg.max_key_bytes {
            return Err(Error::InvalidKey(format!(
                "a sequential key under {parent:?} would be {len} bytes long, over the key limit of {}",
                self.cfg.max_key_bytes
            )));
        }
        Ok(())
    }

    /// A lease a write attaches a key to, if any (see [`Self::check_lease_id`]).
    fn check_lease(&self, lease: Option<u64>) -> Result<()> {
        lease.map_or(Ok(()), |id| self.check_lease_id(id))
    }

    /// A lease id a request names: 1 to 2^53 - 1. Whether it exists is decided by apply
    /// (this node's applied state may not have seen a grant the leader has).
    pub(super) fn check_lease_id(&self, id: u64) -> Result<()> {
        if id == 0 || id > MAX_LEASE_ID {
            return Err(Error::InvalidArgument(format!(
                "a lease id is between 1 and {MAX_LEASE_ID}, not {id}"
            )));
        }
        Ok(())
    }

    fn check_value(&self, what: &str, len: usize) -> Result<()> {
        let max = self.cfg.max_value_bytes;
        if len > max {
            return Err(Error::TooLarge(format!("{what} is {len} bytes, over the value limit of {max}")));
        }
        Ok(())
    }

    /// A transaction: counts, keys, sizes, no key written twice in a branch, the quota.
    fn check_txn(&self, txn: &Txn) -> Result<()> {
        let (max_cmp, max_ops) = (self.cfg.max_txn_compares, self.cfg.max_txn_ops);
        if txn.compare.len() > max_cmp {
            return Err(Error::InvalidArgument(format!(
                "the transaction has {} compares, over the limit of {max_cmp}",
                txn.compare.len()
            )));
        }
        // Filled in by the node that took the request: bounded by this node's own limits,
        // so no member can make the leader read more in apply than it would itself.
        if txn.max_read_bytes > self.cfg.max_page_bytes as u64
            || txn.default_get_limit > self.cfg.max_list_limit as u64
        {
            return Err(Error::InvalidArgument(format!(
                "the transaction's read budget ({} bytes, {} keys) is over this node's limits",
                txn.max_read_bytes, txn.default_get_limit
            )));
        }
        let ops = txn.success.len() + txn.failure.len();
        if ops > max_ops {
            return Err(Error::InvalidArgument(format!(
                "the transaction has {ops} operations in success and failure together, over the limit of {max_ops}"
            )));
        }
        for c in &txn.compare {
            match &c.target {
                CompareTarget::Fence(_) => {
                    check_lock_name(Kind::Lock, &c.key)?;
                    if !matches!(c.op, CompareOp::Eq | CompareOp::Ne) {
                        return Err(Error::InvalidArgument(
                            "a fence compare is \"==\" (the token is a current holder's) or \"!=\"".into(),
                        ));
                    }
                }
                CompareTarget::Value(v) => {
                    self.check_key(&c.key)?;
                    self.check_value("a compared value", v.len())?;
                }
                _ => self.check_key(&c.key)?,
            }
        }
        let mut adds = 0u64;
        for (branch, ops) in [("success", &txn.success), ("failure", &txn.failure)] {
            let mut writes: Vec<Target<'_>> = Vec::new();
            for op in ops.iter() {
                let target = match op {
                    TxnOp::Put { key, value, lease, sequential, .. } => {
                        if *sequential {
                            self.check_sequential_parent(key)?;
                        } else {
                            self.check_key(key)?;
                        }
                        self.check_lease(*lease)?;
                        self.check_value("the value", value.len())?;
                        adds += (key.len() + value.len()) as u64;
                        if *sequential {
                            Target::NewChild(key)
                        } else {
                            Target::Key(key)
                        }
                    }
                    TxnOp::Delete { key, recursive, .. } => {
                        self.check_key(key)?;
                        if *recursive {
                            Target::Subtree(key)
                        } else {
                            Target::Key(key)
                        }
                    }
                    TxnOp::Get { key, recursive, limit, .. } => {
                        if *recursive {
                            self.check_read_key(key)?;
                        } else {
                            self.check_key(key)?;
                        }
                        let max = self.cfg.max_list_limit as u64;
                        if let Some(limit) = limit.filter(|&l| l == 0 || l > max) {
                            return Err(Error::InvalidArgument(format!(
                                "a get's limit must be 1 to {max}, not {limit}"
                            )));
                        }
                        continue;
                    }
                };
                if let Some(other) = writes.iter().find(|w| w.overlaps(&target)) {
                    return Err(Error::InvalidArgument(format!(
                        "the {branch} branch writes {} and {}: a branch may write each key once",
                        other.describe(),
                        target.describe()
                    )));
                }
                writes.push(target);
            }
        }
        if adds == 0 {
            // Deletes and reads only: always allowed, they are how a full store recovers.
            return Ok(());
        }
        self.check_quota(adds)
    }
    /// Refuses a write that would take the store past its quota.
    fn check_quota(&self, adds: u64) -> Result<()> {
        let used = {
            let applied = self.replica.applied();
            applied.state.kv().bytes() + applied.state.locks().bytes()
        };
        let quota = self.cfg.quota_bytes;
        if used.saturating_add(adds) > quota {
            return Err(Error::QuotaExceeded(format!(
                "the store holds {used} bytes (keys, their history, and lock holders and waiters), and this write would pass the quota of {quota} bytes; compact history, delete keys or release locks"
            )));
        }
        Ok(())
    }
}
