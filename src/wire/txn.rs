//! Transactions and compaction on the wire: `POST /v1/txn` and `POST /v1/maintenance/compact`.
//!
//! Strict: unknown fields, a compare whose operand has the wrong type for its target, an
//! unknown target, op or operation are refused with a message naming what was wrong.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kv::{decode_value, KeyValue};

/// The body of `POST /v1/txn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<CompareSpec>,
    #[serde(default)]
    pub success: Vec<OpSpec>,
    #[serde(default)]
    pub failure: Vec<OpSpec>,
}

/// One compare: `{"key", "target", "op", "value"}` (or `value_base64` for a binary value;
/// `lock` instead of `key` for a fence compare).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    pub target: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// One operation: `{"put": {...}}`, `{"delete": {...}}` or `{"get": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "serde_json::Map<String, Value>")]
pub enum OpSpec {
    Put(PutOp),
    Delete(DeleteOp),
    Get(GetOp),
}

impl TryFrom<serde_json::Map<String, Value>> for OpSpec {
    type Error = String;

    /// Exactly one of `put`, `delete`, `get` (serde's own enum parsing reports a second
    /// member as a JSON syntax error, which it is not).
    fn try_from(m: serde_json::Map<String, Value>) -> Result<OpSpec, String> {
        let mut it = m.into_iter();
        let (Some((kind, body)), None) = (it.next(), it.next()) else {
            return Err("an operation is an object with exactly one member: put, delete or get".into());
        };
        let parse = |what: &str| format!("in {what}: ");
        match kind.as_str() {
            "put" => serde_json::from_value(body).map(OpSpec::Put).map_err(|e| parse("put") + &e.to_string()),
            "delete" => {
                serde_json::from_value(body).map(OpSpec::Delete).map_err(|e| parse("delete") + &e.to_string())
            }
            "get" => serde_json::from_value(body).map(OpSpec::Get).map_err(|e| parse("get") + &e.to_string()),
            other => Err(format!("unknown operation {other:?}: one of put, delete, get")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutOp {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::whole::opt_u64")]
    pub lease: Option<u64>,
    /// Create a sequential child of `key` instead of writing `key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sequential: bool,
    /// Return the key's previous value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteOp {
    pub key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOp {
    pub key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::whole::opt_u64")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_only: bool,
}

/// The reply of `POST /v1/txn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub revision: u64,
    pub succeeded: bool,
    pub results: Vec<OpResult>,
}

/// What one operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    Put(PutResult),
    Delete(DeleteResult),
    Get(GetResult),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub revision: u64,
    /// The key written (for a sequential create, the key it created).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub deleted: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResult {
    pub kvs: Vec<KeyValue>,
    /// More keys in the range than the page held.
    pub more: bool,
}

/// The body of `POST /v1/maintenance/compact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    #[serde(deserialize_with = "super::whole::u64")]
    pub revision: u64,
}

/// The reply of `POST /v1/maintenance/compact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResponse {
    pub revision: u64,
    pub compact_revision: u64,
}

/// A compare's operand, by target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Value(Vec<u8>),
    Number(u64),
}

impl CompareSpec {
    /// The operand for this compare's target, with a message when its type is wrong.
    pub fn operand(&self) -> Result<Operand, String> {
        match self.target.as_str() {
            "value" => {
                let text = match &self.value {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        return Err(format!("a value compare takes a string value (or value_base64), not {other}"))
                    }
                };
                let bytes = decode_value(text, self.value_base64.clone())?
                    .ok_or("a value compare needs value (or value_base64)")?;
                Ok(Operand::Value(bytes))
            }
            "version" | "create_revision" | "mod_revision" | "lease" | "fence" => {
                if self.value_base64.is_some() {
                    return Err(format!("value_base64 is for value compares, not {}", self.target));
                }
                match &self.value {
                    Some(Value::Number(n)) => super::whole::as_whole(n)
                        .map(Operand::Number)
                        .ok_or_else(|| format!("a {} compare takes an integer from 0 to 2^64-1, not {n}", self.target)),
                    Some(other) => Err(format!("a {} compare takes an integer value, not {other}", self.target)),
                    None => Err(format!("a {} compare needs a value", self.target)),
                }
            }
            other => Err(format!(
                "unknown compare target {other:?}: one of value, version, create_revision, mod_revision, lease, fence"
            )),
        }
    }
}
