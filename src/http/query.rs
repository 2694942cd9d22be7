//! Strict query-string parsing: every parameter must be known to the route, flags accept
//! only an empty value, `true` or `false`, and numbers must parse. A typo such as
//! `?recurisve` is a 400, never silently ignored.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// The parsed query of one request.
pub struct Query {
    params: BTreeMap<String, String>,
}

impl Query {
    /// Parses `raw` and refuses any parameter not in `allowed`, and repeated ones.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut params = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| ApiError::invalid(format!("query parameter {s:?} is not valid UTF-8")))
            };
            let (k, v) = (decode(k)?, decode(v)?);
            if !allowed.contains(&k.as_str()) {
                let mut known: Vec<&str> = allowed.to_vec();
                known.sort();
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {k:?} (this route accepts: {})",
                    known.join(", ")
                )));
            }
            if params.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid(format!("query parameter {k:?} is given twice")));
            }
        }
        Ok(Query { params })
    }

    pub fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    /// A flag: absent = false; `?name`, `?name=` or `?name=true` = true; `?name=false`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.params.get(name).map(String::as_str) {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ApiError::invalid(format!("{name} must be true or false, not {v:?}"))),
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// A number: ASCII digits only (`+1`, `1e3`, ` 1` and `0x1` are refused).
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.params.get(name).map(|v| Self::parse_u64(name, v)).transpose()
    }

    /// A duration: `2s`, `750ms`, `1m`, or a number of seconds (`30`, `0.5`).
    pub fn duration(&self, name: &str) -> Result<Option<std::time::Duration>, ApiError> {
        let Some(v) = self.params.get(name) else { return Ok(None) };
        // A bare number of seconds is digits, with at most one `.` between digits (`.5`
        // and `5.` are refused, as they are with a unit).
        let (whole, frac) = v.split_once('.').unwrap_or((v, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let json = match v.parse::<f64>() {
            Ok(n) if digits(whole) && digits(frac) => {
                serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            _ => serde_json::Value::String(v.clone()),
        };
        let ms = crate::wire::lease::duration_ms(name, &json).map_err(ApiError::invalid)?;
        Ok(Some(std::time::Duration::from_millis(ms)))
    }

    /// Parses `v` as the value of `name`, strictly (see [`Self::u64`]).
    pub fn parse_u64(name: &str, v: &str) -> Result<u64, ApiError> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(format!("{name} must be a non-negative integer, not {v:?}")));
        }
        v.parse::<u64>().map_err(|_| ApiError::invalid(format!("{name} is too large: {v:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict() {
        let q =
            Query::parse(Some("recursive&limit=5&after=%2Fa%2Fb"), &["recursive", "limit", "after"]).unwrap();
        assert!(q.flag("recursive").unwrap());
        assert_eq!(q.u64("limit").unwrap(), Some(5));
        assert_eq!(q.str("after"), Some("/a/b"));
        assert!(Query::parse(Some("recurisve"), &["recursive"]).is_err());
        assert!(Query::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        let q = Query::parse(Some("limit=x&recursive=maybe"), &["recursive", "limit"]).unwrap();
        assert!(q.u64("limit").is_err());
        assert!(q.flag("recursive").is_err());
        assert!(Query::parse(Some("a=%FF"), &["a"]).is_err());
        for bad in ["%2B1", "-1", "1e3", "0x1", "%201", "", "99999999999999999999"] {
            let q = Query::parse(Some(&format!("limit={bad}")), &["limit"]).unwrap();
            assert!(q.u64("limit").is_err(), "{bad}");
        }
    }
}
