//! Multi-key transactions: compares, then one of two branches of operations, all at one
//! revision (etcd's `Txn`).
//!
//! Invariants: the compares are evaluated against the state before the transaction; the
//! branch they choose runs in one `WriteTxn`, so every change it makes lands at one
//! revision and every `get` in it sees the changes made before it in the branch. A branch
//! that changes nothing leaves the revision as it is. What a request may contain (sizes,
//! counts, keys written twice) is the node's policy, checked before proposing; apply
//! decides whatever arrives without panicking.

use serde::{Deserialize, Serialize};

use super::kv::KeyValue;
use super::mvcc::{ListOptions, Store, WriteTxn};

/// What a compare looks at, with the operand it is compared to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", content = "operand", rename_all = "snake_case")]
pub enum CompareTarget {
    /// The value's bytes (a compare on the value of a missing key is false, whatever the op).
    Value(#[serde(with = "super::bytes_b64")] Vec<u8>),
    /// Puts since creation; 0 for a missing key.
    Version(u64),
    /// 0 for a missing key.
    CreateRevision(u64),
    /// 0 for a missing key.
    ModRevision(u64),
    /// The owning lease; 0 for none (or a missing key).
    Lease(u64),
    /// A fencing token: `==` holds when it is a current holder's token of the lock (or the
    /// election) named by the compare's `key`, `!=` when it is not.
    Fence(u64),
}

/// How a key's attribute is compared to the operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, actual: &T, operand: &T) -> bool {
        match self {
            CompareOp::Eq => actual == operand,
            CompareOp::Ne => actual != operand,
            CompareOp::Lt => actual < operand,
            CompareOp::Gt => actual > operand,
        }
    }
}

/// One compare of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    #[serde(flatten)]
    pub target: CompareTarget,
}

impl Compare {
    /// Whether the compare holds for a key whose current state is `kv`; for a fence
    /// compare, `fence(name, token)` tells whether the token is a current holder's.
    pub fn holds(&self, kv: Option<&KeyValue>, fence: &dyn Fn(&str, u64) -> bool) -> bool {
        let num = |f: fn(&KeyValue) -> u64| kv.map_or(0, f);
        match &self.target {
            CompareTarget::Value(want) => {
                kv.is_some_and(|kv| self.op.holds(kv.value.as_slice(), want.as_slice()))
            }
            CompareTarget::Version(n) => self.op.holds(&num(|kv| kv.version), n),
            CompareTarget::CreateRevision(n) => self.op.holds(&num(|kv| kv.create_revision), n),
            CompareTarget::ModRevision(n) => self.op.holds(&num(|kv| kv.mod_revision), n),
            CompareTarget::Lease(n) => self.op.holds(&num(|kv| kv.lease.unwrap_or(0)), n),
            CompareTarget::Fence(token) => match self.op {
                CompareOp::Eq => fence(&self.key, *token),
                CompareOp::Ne => !fence(&self.key, *token),
                CompareOp::Lt | CompareOp::Gt => false,
            },
        }
    }

    /// Whether the compare looks at a key (a fence compare names a lock instead).
    pub fn is_on_key(&self) -> bool {
        !matches!(self.target, CompareTarget::Fence(_))
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOp {
    /// Write `key` (with `sequential`: create a new sequential child of `key`).
    Put {
        key: String,
        #[serde(with = "super::bytes_b64")]
        value: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
        #[serde(default)]
        sequential: bool,
        #[serde(default)]
        prev_kv: bool,
    },
    /// Delete `key`, or with `recursive` the key and its subtree.
    Delete {
        key: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default)]
        prev_kv: bool,
    },
    /// Read `key`, or with `recursive` the key and its subtree (at most `limit` keys;
    /// none given: the transaction's `default_get_limit`).
    Get {
        key: String,
        #[serde(default)]
        recursive: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        #[serde(default)]
        keys_only: bool,
    },
}

impl TxnOp {
    /// Key and value bytes the op carries.
    pub fn data_bytes(&self) -> usize {
        match self {
            TxnOp::Put { key, value, .. } => key.len() + value.len(),
            TxnOp::Delete { key, .. } | TxnOp::Get { key, .. } => key.len(),
        }
    }
}

/// What one operation did, in the order of the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnResult {
    Put {
        revision: u64,
        kv: KeyValue,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    /// `more`: the key range holds more keys than `limit`, or than the transaction's read
    /// budget left room for (a get that finds the budget spent returns no keys, `more`).
    Get {
        kvs: Vec<KeyValue>,
        more: bool,
    },
}

impl TxnResult {
    /// Key and value bytes the result holds.
    pub fn data_bytes(&self) -> usize {
        let kvs_bytes = |kvs: &[KeyValue]| kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum::<usize>();
        match self {
            TxnResult::Put { kv, prev_kv, .. } => {
                kv.key.len() + kv.value.len() + prev_kv.as_ref().map_or(0, |p| p.key.len() + p.value.len())
            }
            TxnResult::Delete { prev_kvs, .. } => kvs_bytes(prev_kvs),
            TxnResult::Get { kvs, .. } => kvs_bytes(kvs),
        }
    }
}

/// A transaction as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
    /// At most this many key and value bytes in all `get` results together; a get that
    /// would pass it returns what fitted and `more` (filled in by the node that took the
    /// request, from its page limit, so apply decides the same everywhere).
    pub max_read_bytes: u64,
    /// The `limit` of a recursive get that gives none (filled in the same way).
    #[serde(default)]
    pub default_get_limit: u64,
}

impl Txn {
    /// Whether the compares hold against `kv` as it is (with `fence` deciding the fence
    /// compares, see [`Compare::holds`]), and the branch they choose.
    pub fn branch(&self, kv: &Store, fence: &dyn Fn(&str, u64) -> bool) -> (bool, &[TxnOp]) {
        let succeeded = self.compare.iter().all(|c| {
            let current = if c.is_on_key() { kv.current(&c.key) } else { None };
            c.holds(current.as_ref(), fence)
        });
        (succeeded, if succeeded { &self.success } else { &self.failure })
    }

    /// What the transaction costs a log entry: the bytes it carries, plus its read budget
    /// when it reads (so the proposer never batches more reads than fit one entry's reply).
    pub fn data_bytes(&self) -> usize {
        let reads = self.success.iter().chain(&self.failure).any(|op| matches!(op, TxnOp::Get { .. }));
        let budget = if reads { usize::try_from(self.max_read_bytes).unwrap_or(usize::MAX) } else { 0 };
        budget.saturating_add(self.carried_bytes())
    }

    /// Key and value bytes the transaction carries.
    pub fn carried_bytes(&self) -> usize {
        let cmp = self.compare.iter().map(|c| {
            c.key.len()
                + match &c.target {
                    CompareTarget::Value(v) => v.len(),
                    _ => 0,
                }
        });
        cmp.sum::<usize>() + self.success.iter().chain(&self.failure).map(TxnOp::data_bytes).sum::<usize>()
    }
}

impl Store {
    /// Runs a transaction: the compares choose the branch; the branch runs at one revision.
    /// Returns whether the compares held, and the branch's results in order.
    pub(crate) fn apply_txn(&mut self, txn: &Txn) -> (bool, Vec<TxnResult>) {
        // The store alone knows no lock holders: no fence compare holds.
        let (succeeded, _) = txn.branch(self, &|_, _| false);
        (succeeded, self.apply_branch(txn, succeeded))
    }

    /// Runs the branch of `txn` that `succeeded` chooses, at one revision.
    pub(crate) fn apply_branch(&mut self, txn: &Txn, succeeded: bool) -> Vec<TxnResult> {
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let mut budget = txn.max_read_bytes;
        let mut w = self.write();
        ops.iter().map(|op| run_op(&mut w, op, &mut budget, txn.default_get_limit)).collect()
    }
}

fn kv_bytes(kv: &KeyValue) -> u64 {
    (kv.key.len() + kv.value.len()) as u64
}

fn run_op(w: &mut WriteTxn<'_>, op: &TxnOp, budget: &mut u64, default_limit: u64) -> TxnResult {
    match op {
        TxnOp::Put { key, value, lease, sequential, prev_kv } => {
            let (kv, prev) = if *sequential {
                (w.put_sequential(key, value.clone(), *lease), None)
            } else {
                w.put(key, value.clone(), *lease)
            };
            TxnResult::Put { revision: kv.mod_revision, kv, prev_kv: if *prev_kv { prev } else { None } }
        }
        TxnOp::Delete { key, recursive, prev_kv } => {
            let deleted = w.delete(key, *recursive);
            TxnResult::Delete {
                deleted: deleted.len() as u64,
                prev_kvs: if *prev_kv { deleted } else { Vec::new() },
            }
        }
        TxnOp::Get { key, recursive, limit, keys_only } => {
            let limit = limit.unwrap_or(default_limit);
            let (mut kvs, mut more) = if *recursive {
                let opts = ListOptions {
                    revision: None,
                    after: None,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    max_bytes: usize::try_from(*budget).unwrap_or(usize::MAX),
                    keys_only: *keys_only,
                };
                w.list_page(key, &opts)
            } else {
                let mut kvs: Vec<KeyValue> = w.current(key).into_iter().collect();
                if *keys_only {
                    kvs.iter_mut().for_each(|kv| kv.value.clear());
                }
                (kvs, false)
            };
            // The budget is hard: a listing page may end one key past it, and a single
            // key may be bigger than what is left; such keys are left out, with `more`.
            let mut used = 0u64;
            let fits = kvs.iter().take_while(|kv| {
                used += kv_bytes(kv);
                used <= *budget
            });
            let fit = fits.count();
            if fit < kvs.len() {
                kvs.truncate(fit);
                more = true;
            }
            *budget -= kvs.iter().map(kv_bytes).sum::<u64>();
            TxnResult::Get { kvs, more }
        }
    }
}
