//! Lock, election and fencing requests and replies. Durations (`ttl`, `wait`) are given as
//! lease TTLs are (`"15s"`, `"750ms"`, or a number of seconds); `wait` may be `"0s"` or
//! `0` (try once). A candidate's value is `value` when its bytes are UTF-8, else
//! `value_base64`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::whole;

/// Parses `wait`: a duration, or zero (try once).
pub fn wait_ms(v: &serde_json::Value) -> Result<u64, String> {
    let zero = match v {
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => {
            // Zero in any decimal spelling ("0s", "0.0s", "00ms"); anything else is parsed
            // (and checked) as a duration below.
            let digits = s.strip_suffix("ms").or_else(|| s.strip_suffix(['s', 'm', 'h']));
            digits.is_some_and(|d| {
                d.bytes().any(|b| b.is_ascii_digit())
                    && d.bytes().all(|b| b == b'0' || b == b'.')
                    && d.bytes().filter(|&b| b == b'.').count() <= 1
                    && !d.starts_with('.')
                    && !d.ends_with('.')
            })
        }
        _ => false,
    };
    if zero {
        return Ok(0);
    }
    super::lease::duration_ms("wait", v)
}

/// `POST /v1/locks/{name}`: exactly one of `ttl` and `lease`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole::opt_u64")]
    pub lease: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole::opt_u64")]
    pub limit: Option<u64>,
}

/// `POST /v1/elections/{name}/campaign`: a value, and exactly one of `ttl` and `lease`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole::opt_u64")]
    pub lease: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<serde_json::Value>,
}

/// `PUT /v1/elections/{name}/leader`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProclaimRequest {
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// `POST /v1/fence/check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceCheckRequest {
    pub name: String,
    #[serde(deserialize_with = "whole::u64")]
    pub token: u64,
}

/// A lock grant: the reply of an acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGrant {
    pub name: String,
    pub owner: String,
    pub lease: u64,
    pub fencing_token: u64,
    pub revision: u64,
}

/// An election's leader: the reply of a campaign, a proclaim and a read, and an observed
/// `leader` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub owner: String,
    pub lease: u64,
    pub fencing_token: u64,
    pub revision: u64,
}

impl Leader {
    /// The leader's value bytes (`value` or `value_base64`).
    pub fn value_bytes(&self) -> Vec<u8> {
        match (&self.value, &self.value_base64) {
            (Some(v), _) => v.as_bytes().to_vec(),
            (None, Some(b)) => STANDARD.decode(b).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// `(value, value_base64)` for bytes: UTF-8 as `value`, else base64.
pub fn encode_value(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(STANDARD.encode(bytes))),
    }
}

/// An observed `no_leader` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoLeader {
    pub name: String,
    pub revision: u64,
}

/// A holder in a lock's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    pub owner: String,
    pub lease: u64,
    pub fencing_token: u64,
    /// The revision of the grant (the same as the token).
    pub since_revision: u64,
}

/// A waiter in a lock's state, in queue order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    pub owner: String,
    pub lease: u64,
    /// The revision at which it joined the queue.
    pub since_revision: u64,
}

/// One lock, as `GET /v1/locks/{name}` and the listing give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    /// How many may hold it at once; `null` when nobody holds or waits (the next acquirer
    /// sets it).
    pub limit: Option<u32>,
    pub holders: Vec<HolderInfo>,
    pub waiters: Vec<WaiterInfo>,
}

/// `GET /v1/locks/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResponse {
    pub revision: u64,
    #[serde(flatten)]
    pub lock: LockInfo,
}

/// `GET /v1/locks`: one page of held or awaited locks, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockListResponse {
    pub revision: u64,
    pub locks: Vec<LockInfo>,
    pub count: u64,
    pub more: bool,
    /// The `after` of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `DELETE /v1/locks/{name}` and a resign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub revision: u64,
    /// True when the owner held it; false when it was still waiting (it left the queue).
    pub released: bool,
}

/// `POST /v1/fence/check`, valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceValid {
    pub valid: bool,
    pub token: u64,
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_zero_and_durations() {
        for zero in [
            serde_json::json!(0),
            serde_json::json!("0s"),
            serde_json::json!("0ms"),
            serde_json::json!("00s"),
            serde_json::json!("0.0s"),
        ] {
            assert_eq!(wait_ms(&zero), Ok(0), "{zero}");
        }
        assert_eq!(wait_ms(&serde_json::json!("1.5s")), Ok(1500));
        assert_eq!(wait_ms(&serde_json::json!(2)), Ok(2000));
        for bad in [
            serde_json::json!("0"),
            serde_json::json!(-1),
            serde_json::json!("s"),
            serde_json::json!(true),
            serde_json::json!("0.s"),
            serde_json::json!(".0s"),
        ] {
            assert!(wait_ms(&bad).is_err(), "{bad}");
        }
    }
}
