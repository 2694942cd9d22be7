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

/// Serde helper: bytes as a base64 string in a human-readable format such as JSON
/// (compact there, unlike a number array), and as raw bytes in a binary one (MessagePack
/// snapshots). Reading takes either form, whatever the format says of itself: serde's
/// internally tagged enums buffer their fields and then claim to be human-readable, so
/// a binary field can arrive through a "human-readable" deserializer.
pub mod bytes_b64 {
    use std::fmt;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BytesVisitor)
        } else {
            d.deserialize_byte_buf(BytesVisitor)
        }
    }

    /// Takes base64 text, raw bytes, or a sequence of byte values.
    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 text or bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            STANDARD.decode(v.as_bytes()).map_err(E::custom)
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    /// A value in the same form, for `Option`.
    struct Bytes(Vec<u8>);

    struct BytesRef<'a>(&'a [u8]);

    impl Serialize for BytesRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            deserialize(d).map(Bytes)
        }
    }

    /// The same for an optional value.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&BytesRef(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(<Option<Bytes>>::deserialize(d)?.map(|b| b.0))
        }
    }
}
