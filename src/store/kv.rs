//! What a reader sees of one key at one revision.

use serde::{Deserialize, Serialize};

/// One key's state at some revision, as reads and write results report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "crate::store::bytes_b64")]
    pub value: Vec<u8>,
    /// Revision of the put that created this incarnation of the key.
    pub create_revision: u64,
    /// Revision of the last change to the key.
    pub mod_revision: u64,
    /// Number of puts since creation (1 after the creating put).
    pub version: u64,
    /// Lease that owns the key, if any.
    pub lease: Option<u64>,
}
