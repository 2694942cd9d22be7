//! The replicated log payload and what applying it decided.
//!
//! `Command` is what the leader proposes; it is serialised into the Raft log, so variants
//! and fields may be added (with serde defaults) but never changed in meaning. `apply`
//! is deterministic: the same store and command give the same outcome on every node.

use serde::{Deserialize, Serialize};

use super::kv::KeyValue;
use super::mvcc::Store;

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
    /// Write one key.
    Put {
        key: String,
        #[serde(with = "super::bytes_b64")]
        value: Vec<u8>,
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
    /// Several independent commands proposed together (one log entry, one fsync), applied
    /// in order, each at its own revision as if proposed one by one. Batches do not nest.
    Batch { cmds: Vec<Command> },
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
    /// An entry with no business payload (blank or membership) was applied.
    Nothing { revision: u64 },
    /// The outcomes of a [`Command::Batch`], in order; `revision` is the one after them all.
    Batch { revision: u64, outcomes: Vec<Outcome> },
}

impl Outcome {
    /// The store revision this outcome reflects.
    pub fn revision(&self) -> u64 {
        match self {
            Outcome::Put { revision, .. }
            | Outcome::Deleted { revision, .. }
            | Outcome::ConditionFailed { revision, .. }
            | Outcome::Nothing { revision } => *revision,
            Outcome::Batch { revision, .. } => *revision,
        }
    }
}

impl Store {
    /// Applies one command. Never panics on any input: commands are validated before they
    /// are proposed, and anything odd that still arrives is decided like any other input.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::Put { key, value, cond, prev_kv } => {
                let current = self.current(key);
                if !cond.holds(current.as_ref()) {
                    return Outcome::ConditionFailed { revision: self.revision(), current };
                }
                let (kv, prev) = self.put(key, value.clone(), None);
                Outcome::Put { revision: self.revision(), kv, prev_kv: if *prev_kv { prev } else { None } }
            }
            Command::Delete { key, recursive, cond, prev_kv } => {
                if !cond.is_empty() {
                    let current = self.current(key);
                    if !cond.holds(current.as_ref()) {
                        return Outcome::ConditionFailed { revision: self.revision(), current };
                    }
                }
                let deleted = self.delete(key, *recursive);
                Outcome::Deleted {
                    revision: self.revision(),
                    deleted: deleted.len() as u64,
                    prev_kvs: if *prev_kv { deleted } else { Vec::new() },
                }
            }
            Command::Batch { cmds } => {
                let outcomes = cmds
                    .iter()
                    .map(|c| match c {
                        // Never produced by the proposer; decided as an empty batch so
                        // every node still agrees.
                        Command::Batch { .. } => {
                            Outcome::Batch { revision: self.revision(), outcomes: Vec::new() }
                        }
                        c => self.apply(c),
                    })
                    .collect();
                Outcome::Batch { revision: self.revision(), outcomes }
            }
        }
    }
}
