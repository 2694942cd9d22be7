//! The node's policy: what a request must satisfy before anything is proposed or read.
//!
//! Key rules, value and condition sizes, the write-only root, and the size quota. A client
//! request and a write forwarded by a follower pass the same checks here (the leader never
//! trusts a follower's checks: its limits may differ, and a peer may be hostile). Every
//! refusal is an `Error` that says what was wrong; nothing has changed when it is returned.

use super::Node;
use crate::error::{Error, Result};
use crate::store::{key, Command};

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
            Command::Put { key, value, lease, cond, .. } => {
                self.check_key(key)?;
                if let Some(lease) = lease {
                    // No lease can be granted yet, so none exists that this key could join.
                    return Err(Error::LeaseNotFound(*lease));
                }
                let max = self.cfg.max_value_bytes;
                if value.len() > max {
                    return Err(Error::TooLarge(format!(
                        "the value is {} bytes, over the limit of {max}",
                        value.len()
                    )));
                }
                if cond.if_value.as_ref().is_some_and(|v| v.len() > max) {
                    return Err(Error::TooLarge(format!("if_value is over the value limit of {max} bytes")));
                }
                self.check_quota((key.len() + value.len()) as u64)
            }
            Command::Delete { key, cond, .. } => {
                self.check_key(key)?;
                if cond.if_value.as_ref().is_some_and(|v| v.len() > self.cfg.max_value_bytes) {
                    return Err(Error::TooLarge(format!(
                        "if_value is over the value limit of {} bytes",
                        self.cfg.max_value_bytes
                    )));
                }
                Ok(())
            }
            Command::Batch { .. } => Err(Error::InvalidArgument(
                "a batch is made by the leader's proposer, never sent by a client".into(),
            )),
        }
    }

    /// Refuses a write that would take the store past its quota.
    fn check_quota(&self, adds: u64) -> Result<()> {
        let used = self.replica.applied().state.kv().bytes();
        let quota = self.cfg.quota_bytes;
        if used.saturating_add(adds) > quota {
            return Err(Error::QuotaExceeded(format!(
                "the store holds {used} bytes, and this write would pass the quota of {quota} bytes; compact history or delete keys"
            )));
        }
        Ok(())
    }
}
