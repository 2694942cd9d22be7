//! Lease requests and replies. A TTL is given as `"10s"`, `"750ms"`, `"2m"`, `"1h"` (a
//! decimal number with a unit) or as a JSON number of seconds; it must come to a whole
//! number of milliseconds, at least one. Replies give milliseconds.

use serde::{Deserialize, Serialize};

use super::whole;

/// The longest TTL this parser takes at all (the node's maximum is checked later).
const MAX_PARSED_MS: f64 = 10.0 * 365.0 * 24.0 * 3600.0 * 1000.0;

/// Parses a TTL (see the module doc) into milliseconds.
pub fn ttl_ms(v: &serde_json::Value) -> Result<u64, String> {
    duration_ms("ttl", v)
}

/// Parses a duration given as a TTL is (see the module doc) into milliseconds; errors name
/// it `name`.
pub fn duration_ms(name: &str, v: &serde_json::Value) -> Result<u64, String> {
    let (number, unit_ms, shown) = match v {
        serde_json::Value::Number(n) => (n.as_f64().unwrap_or(f64::NAN), 1000.0, n.to_string()),
        serde_json::Value::String(s) => {
            let t = s.as_str();
            let (digits, unit) = if let Some(d) = t.strip_suffix("ms") {
                (d, 1.0)
            } else if let Some(d) = t.strip_suffix('s') {
                (d, 1000.0)
            } else if let Some(d) = t.strip_suffix('m') {
                (d, 60_000.0)
            } else if let Some(d) = t.strip_suffix('h') {
                (d, 3_600_000.0)
            } else {
                return Err(format!(
                    "{name} {t:?} has no unit: give \"10s\", \"750ms\", \"2m\", \"1h\" or a number of seconds"
                ));
            };
            let plain = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && digits.bytes().filter(|&b| b == b'.').count() <= 1
                && !digits.starts_with('.')
                && !digits.ends_with('.');
            if !plain {
                return Err(format!("{name} {t:?} is not a duration such as \"10s\" or \"750ms\""));
            }
            (digits.parse::<f64>().unwrap_or(f64::NAN), unit, format!("{t:?}"))
        }
        other => {
            return Err(format!(
                "{name} must be a duration such as \"10s\" or a number of seconds, not {other}"
            ))
        }
    };
    if !number.is_finite() || number < 0.0 {
        return Err(format!("{name} {shown} is not a positive duration"));
    }
    let ms = number * unit_ms;
    if ms > MAX_PARSED_MS {
        return Err(format!("{name} {shown} is far too long"));
    }
    // Within a millionth of a millisecond of a whole number (decimal fractions such as
    // 0.1 s are not exact in binary).
    let whole_ms = ms.round();
    if (ms - whole_ms).abs() > 1e-6 {
        return Err(format!("{name} {shown} is not a whole number of milliseconds"));
    }
    if whole_ms < 1.0 {
        return Err(format!("{name} {shown} must be more than zero"));
    }
    Ok(whole_ms as u64)
}

/// `POST /v1/leases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// See [`ttl_ms`].
    pub ttl: serde_json::Value,
    /// The id to grant the lease under; default: one the cluster picks.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole::opt_u64")]
    pub id: Option<u64>,
}

/// The reply to a grant (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResponse {
    pub id: u64,
    pub ttl_ms: u64,
}

/// The reply to a keepalive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveResponse {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
}

/// `GET /v1/leases/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    /// How many keys the lease owns.
    pub key_count: u64,
    /// The first of them (at most 1000), in key order.
    pub keys: Vec<String>,
    /// The locks and elections it holds or waits for (at most 1000).
    #[serde(default)]
    pub locks: Vec<LeaseLock>,
    /// The subject whose token granted it (absent when client auth was off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A lock or an election a lease holds or waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLock {
    /// `lock` or `election`.
    pub kind: String,
    pub name: String,
    pub owner: String,
}

/// One lease in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSummary {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    pub key_count: u64,
}

/// `GET /v1/leases`: one page, in id order; `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseListResponse {
    pub leases: Vec<LeaseSummary>,
    pub count: u64,
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `DELETE /v1/leases/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub revision: u64,
    pub id: u64,
    /// Keys deleted with the lease (all at `revision`).
    pub deleted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ttls_parse_to_milliseconds() {
        for (v, ms) in [
            (json!("10s"), 10_000),
            (json!("750ms"), 750),
            (json!("1.5s"), 1500),
            (json!("2m"), 120_000),
            (json!("1h"), 3_600_000),
            (json!(10), 10_000),
            (json!(0.25), 250),
            (json!(0.1), 100),
            (json!(2.0), 2000),
        ] {
            assert_eq!(ttl_ms(&v), Ok(ms), "{v}");
        }
        for v in [
            json!(0),
            json!("0s"),
            json!(-1),
            json!("-1s"),
            json!("ten"),
            json!("10"),
            json!("10 s"),
            json!("1e3s"),
            json!(".5s"),
            json!("0.0001s"),
            json!(0.0005),
            json!(null),
            json!(true),
            json!(["10s"]),
            json!(1e300),
        ] {
            assert!(ttl_ms(&v).is_err(), "{v} should be refused");
        }
    }
}
