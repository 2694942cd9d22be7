//! The replicated state machine: pure and deterministic.
//!
//! Nothing in here knows of tokio, openraft, axum, the clock or the disk. Every node
//! applies the same [`Proposal`]s in the same order and so reaches the same [`State`],
//! byte for byte; reads are answered from it without side effects. A business outcome
//! such as a failed compare is an [`Outcome`] value, never an error.
//!
//! The apply contract: `State::apply` depends on nothing but the state and the proposal
//! (no clock, randomness, I/O or configuration of the node), so it decides the same on
//! every node and again when a node re-applies its log after a restart. Anything that
//! varies by node (limits, quota, the time) is checked before proposing or carried in
//! the proposal.

pub mod command;
pub mod dedup;
pub mod events;
mod history;
pub mod key;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod locks;
pub mod mvcc;
pub mod state;
pub mod txn;

pub use command::{Command, Condition, Outcome, Proposal, FORMAT_VERSION};
pub use dedup::Retention;
pub use kv::KeyValue;
pub use lease::{Lease, LeaseCounters, Leases, MAX_CHOSEN_LEASE_ID, MAX_LEASE_ID};
pub use lock::{Holder, Kind, Lock, Waiter};
pub use locks::{LockCounters, LockEvent, Locks};
pub use mvcc::{
    sequential_key, Child, ChildrenPage, ListOptions, ListPage, ReadError, Store, SEQUENCE_DIGITS,
};
pub use state::State;
pub use txn::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnResult};

/// Serde helper: bytes as a base64 string (compact in JSON, unlike a number array).
pub mod bytes_b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }

    /// The same for an optional value.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&STANDARD.encode(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = <Option<String>>::deserialize(d)?;
            s.map(|s| STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)).transpose()
        }
    }
}
