//! The one error shape: `{"error": {"code": "...", "message": "...", ...extra}}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code`, a message for people, and fields some codes add
/// (`current` for `condition_failed`, `compact_revision` for `compacted`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
