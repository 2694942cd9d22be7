//! Watch messages: one JSON object per revision (`{"revision", "events"}`), progress
//! (`{"progress": {"revision"}}`) and the end of a watch whose history is gone
//! (`{"compacted": {"compact_revision"}}`). The same objects are SSE `data:` lines and
//! NDJSON lines.

use serde::{Deserialize, Serialize};

use super::kv::KeyValue;

/// The key of a delete event: the key and the revision it was deleted at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedKey {
    pub key: String,
    pub mod_revision: u64,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    Put {
        kv: KeyValue,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_kv: Option<KeyValue>,
    },
    Delete {
        kv: DeletedKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_kv: Option<KeyValue>,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { kv, .. } => &kv.key,
            WatchEvent::Delete { kv, .. } => &kv.key,
        }
    }
}

impl From<crate::store::events::Event> for WatchEvent {
    fn from(e: crate::store::events::Event) -> WatchEvent {
        use crate::store::events::Event;
        match e {
            Event::Put { kv, prev } => WatchEvent::Put { kv: kv.into(), prev_kv: prev.map(Into::into) },
            Event::Delete { key, mod_revision, prev } => {
                WatchEvent::Delete { kv: DeletedKey { key, mod_revision }, prev_kv: prev.map(Into::into) }
            }
        }
    }
}

/// `{"revision": N}` inside a progress message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressBody {
    pub revision: u64,
}

/// `{"compact_revision": C}` inside a compacted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactedBody {
    pub compact_revision: u64,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchMessage {
    /// Every event of one revision on the keys watched.
    Change { revision: u64, events: Vec<WatchEvent> },
    /// Everything up to and including `revision` has been sent.
    Progress { progress: ProgressBody },
    /// The history the watch needs is below `compact_revision`; the stream ends.
    Compacted { compacted: CompactedBody },
}
