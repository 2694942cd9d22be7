//! Keys and values on the wire.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One key as the API reports it. `value` is `None` only in `keys_only` listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireKv", into = "WireKv")]
pub struct KeyValue {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<u64>,
}

impl KeyValue {
    /// The value's bytes (empty when the listing left values out).
    pub fn value_bytes(&self) -> &[u8] {
        self.value.as_deref().unwrap_or_default()
    }

    /// The value as text, when it is UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(self.value.as_deref()?).ok()
    }

    /// The same key without its value (`keys_only`).
    pub fn without_value(mut self) -> KeyValue {
        self.value = None;
        self
    }
}

impl From<crate::store::KeyValue> for KeyValue {
    fn from(kv: crate::store::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: Some(kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// The JSON of a key-value: `value` when UTF-8, else `value_base64`.
#[derive(Serialize, Deserialize)]
struct WireKv {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(default)]
    create_revision: u64,
    #[serde(default)]
    mod_revision: u64,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    lease: Option<u64>,
}

impl TryFrom<WireKv> for KeyValue {
    type Error = String;

    fn try_from(w: WireKv) -> Result<KeyValue, String> {
        let value = decode_value(w.value, w.value_base64)?;
        Ok(KeyValue {
            key: w.key,
            value,
            create_revision: w.create_revision,
            mod_revision: w.mod_revision,
            version: w.version,
            lease: w.lease,
        })
    }
}

impl From<KeyValue> for WireKv {
    fn from(kv: KeyValue) -> WireKv {
        let (value, value_base64) = match kv.value {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(STANDARD.encode(e.as_bytes()))),
            },
        };
        WireKv {
            key: kv.key,
            value,
            value_base64,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// Bytes from `value` / `value_base64` (at most one of them is present).
pub fn decode_value(value: Option<String>, value_base64: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (value, value_base64) {
        (Some(_), Some(_)) => Err("give either value or value_base64, not both".into()),
        (Some(v), None) => Ok(Some(v.into_bytes())),
        (None, Some(b)) => STANDARD
            .decode(b.as_bytes())
            .map(Some)
            .map_err(|e| format!("value_base64 is not valid base64: {e}")),
        (None, None) => Ok(None),
    }
}

/// The body of `PUT /v1/kv/{key}`: exactly one of `value` and `value_base64`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    // No `#[serde(default)]`: with it serde would also take a short JSON array (`["x"]`)
    // as this struct; `Option` fields may be missing from an object all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::whole::opt_u64")]
    pub lease: Option<u64>,
}

impl PutBody {
    /// The value's bytes; an error says what is wrong with the body.
    pub fn into_value(self) -> Result<Vec<u8>, String> {
        decode_value(self.value, self.value_base64)?
            .ok_or_else(|| "the body needs a value (or value_base64)".into())
    }
}

/// The JSON body of a put: `{"value": ...}` for UTF-8 bytes, else `{"value_base64": ...}`.
pub fn put_body(value: &[u8], lease: Option<u64>) -> Value {
    let mut body = match std::str::from_utf8(value) {
        Ok(s) => json!({ "value": s }),
        Err(_) => json!({ "value_base64": STANDARD.encode(value) }),
    };
    if let Some(lease) = lease {
        body["lease"] = json!(lease);
    }
    body
}

/// `GET /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResponse {
    pub revision: u64,
    pub kv: KeyValue,
}

/// `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub revision: u64,
    pub kv: KeyValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// `DELETE /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub revision: u64,
    pub deleted: u64,
    /// The deleted keys, when `prev_kv` was asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KeyValue>,
}

/// One page of `GET /v1/kv/{key}?recursive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub revision: u64,
    pub kvs: Vec<KeyValue>,
    /// Keys in the whole range at `revision` (not only this page).
    pub count: u64,
    pub more: bool,
    /// The `after` token of the next page.
    #[serde(default)]
    pub next: Option<String>,
}

/// `GET /v1/kv/{key}?recursive&count_only`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResponse {
    pub revision: u64,
    pub count: u64,
}

/// One direct child of a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    pub name: String,
    pub key: String,
    pub has_children: bool,
    /// The child itself, when it is a key (and not only a path to keys below it).
    #[serde(default)]
    pub kv: Option<KeyValue>,
}

/// One page of `GET /v1/kv/{key}?children`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildrenResponse {
    pub revision: u64,
    pub children: Vec<Child>,
    pub more: bool,
    #[serde(default)]
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bodies_are_strict() {
        for bad in [
            r#"{"value": "x", "ttl": 5}"#,
            r#"{"value": "x", "prev_kv": true}"#,
            r#"{"value": 5}"#,
            r#"{"value":"x","value":"y"}"#,
            r#"{"value": "x", "lease": "12"}"#,
            r#"{"value": "x", "lease": -1}"#,
            r#"{"value": "x", "lease": 1.5}"#,
            r#""x""#,
            r#"["x"]"#,
            r#"null"#,
        ] {
            let r = serde_json::from_str::<PutBody>(bad);
            assert!(r.is_err(), "{bad} was accepted as {r:?}");
        }
        for bad in [
            r#"{}"#,
            r#"{"value": null}"#,
            r#"{"value": "", "value_base64": ""}"#,
            r#"{"value_base64": "!!!"}"#,
        ] {
            let body: PutBody = serde_json::from_str(bad).unwrap();
            assert!(body.into_value().is_err(), "{bad}");
        }
        let ok: PutBody = serde_json::from_str(r#"{"value_base64": "/wCA", "lease": 3}"#).unwrap();
        assert_eq!(ok.lease, Some(3));
        assert_eq!(ok.into_value().unwrap(), vec![0xff, 0, 0x80]);
        // JSON Schema's integers are values: 3.0 is the integer 3.
        let whole: PutBody = serde_json::from_str(r#"{"value": "x", "lease": 3.0}"#).unwrap();
        assert_eq!(whole.lease, Some(3));
    }
}
