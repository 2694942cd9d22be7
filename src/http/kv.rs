//! The key-value routes: `GET`, `PUT` and `DELETE /v1/kv/{key}`.
//!
//! Every input is checked before anything is proposed: key rules, query parameters,
//! body shape and sizes. A refused request changes nothing and says what was wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::query::Query;
use crate::error::Error;
use crate::node::Node;
use crate::store::{key, Command, Condition, KeyValue, ListOptions, Outcome, ReadError};

/// The key a request addresses: the path after `/v1/kv`, percent-decoded, validated.
fn key_of(uri: &Uri, max_len: usize) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix("/v1/kv").unwrap_or("");
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_key("the key is not valid UTF-8 once percent-decoded"))?;
    let key = if decoded.is_empty() { "/".to_string() } else { decoded.into_owned() };
    key::validate(&key, max_len).map_err(|e| ApiError::invalid_key(e.to_string()))?;
    Ok(key)
}

fn refuse_root(key: &str) -> Result<(), ApiError> {
    if key::is_root(key) {
        return Err(ApiError::invalid_key("the root '/' is not a key: it cannot be written or read as one (list it with ?recursive or ?children)"));
    }
    Ok(())
}

/// A key-value as clients see it: `value` when the bytes are UTF-8, else `value_base64`.
pub(crate) fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(kv.key));
    if with_value {
        match std::str::from_utf8(&kv.value) {
            Ok(s) => m.insert("value".into(), json!(s)),
            Err(_) => m.insert("value_base64".into(), json!(STANDARD.encode(&kv.value))),
        };
    }
    m.insert("create_revision".into(), json!(kv.create_revision));
    m.insert("mod_revision".into(), json!(kv.mod_revision));
    m.insert("version".into(), json!(kv.version));
    m.insert("lease".into(), json!(kv.lease));
    Value::Object(m)
}

fn respond(status: StatusCode, body: Value, revision: u64, term: u64) -> Response {
    let mut resp = (status, super::json_body(&body)).into_response();
    super::state_headers(resp.headers_mut(), revision, term);
    resp
}

fn read_error(e: ReadError, requested: u64) -> ApiError {
    match e {
        ReadError::Compacted { compact_revision } => Error::Compacted { requested, compact_revision }.into(),
        ReadError::FutureRevision { revision } => Error::FutureRevision { requested, revision }.into(),
    }
}

/// A page token: the revision the listing is pinned to and the last name or key seen.
fn encode_token(revision: u64, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{revision}:{last}"))
}

fn decode_token(token: &str) -> Result<(u64, String), ApiError> {
    let bad =
        || ApiError::invalid("after is not a page token returned by a previous page (use the `next` field)");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    let (rev, last) = s.split_once(':').ok_or_else(bad)?;
    Ok((rev.parse().map_err(|_| bad())?, last.to_string()))
}

fn consistency(q: &Query) -> Result<bool, ApiError> {
    match q.str("consistency") {
        None | Some("linearizable") => Ok(true),
        Some("serializable") => Ok(false),
        Some(v) => {
            Err(ApiError::invalid(format!("consistency must be linearizable or serializable, not {v:?}")))
        }
    }
}

const GET_PARAMS: &[&str] =
    &["recursive", "children", "raw", "consistency", "revision", "limit", "after", "keys_only", "count_only"];

/// `GET /v1/kv/{key}`: one key, a subtree (`?recursive`) or one level (`?children`).
pub async fn get(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    let limits = node.limits().clone();
    let key = key_of(&uri, limits.max_key_bytes)?;
    let q = Query::parse(uri.query(), GET_PARAMS)?;
    let linearizable = consistency(&q)?;
    let recursive = q.flag("recursive")?;
    let children = q.flag("children")?;
    let raw = q.flag("raw")?;
    let keys_only = q.flag("keys_only")?;
    let count_only = q.flag("count_only")?;
    let mut revision = q.u64("revision")?;
    if revision == Some(0) {
        return Err(ApiError::invalid("revision must be at least 1"));
    }
    if recursive && children {
        return Err(ApiError::invalid("recursive and children cannot be combined"));
    }
    let listing = recursive || children;
    if raw && listing {
        return Err(ApiError::invalid("raw reads one key; it cannot be combined with recursive or children"));
    }
    if !recursive && (keys_only || count_only) {
        return Err(ApiError::invalid("keys_only and count_only apply to recursive listings"));
    }
    if !listing && (q.has("limit") || q.has("after")) {
        return Err(ApiError::invalid("limit and after apply to recursive or children listings"));
    }
    let limit = match q.u64("limit")? {
        None => limits.max_list_limit,
        Some(0) => return Err(ApiError::invalid("limit must be at least 1")),
        Some(n) if n as usize > limits.max_list_limit => {
            return Err(ApiError::invalid(format!("limit must be at most {}", limits.max_list_limit)))
        }
        Some(n) => n as usize,
    };
    let after = match q.str("after") {
        None => None,
        Some(t) => {
            let (rev, last) = decode_token(t)?;
            if revision.is_some_and(|r| r != rev) {
                return Err(ApiError::invalid(
                    "revision differs from the revision the page token is pinned to",
                ));
            }
            revision = Some(rev);
            Some(last)
        }
    };
    if !listing {
        refuse_root(&key)?;
    }
    let term = node.term();
    let requested = revision.unwrap_or(0);
    if recursive {
        let opts = ListOptions { revision, after, limit, max_bytes: limits.max_page_bytes, keys_only };
        let key2 = key.clone();
        let page = node
            .read(linearizable, move |a| {
                if count_only {
                    a.store.count(&key2, revision).map(|c| (revision.unwrap_or(a.store.revision()), None, c))
                } else {
                    a.store.list(&key2, &opts).map(|p| (p.revision, Some(p), 0))
                }
            })
            .await?
            .map_err(|e| read_error(e, requested))?;
        return Ok(match page {
            (rev, None, count) => {
                respond(StatusCode::OK, json!({"revision": rev, "count": count}), rev, term)
            }
            (_, Some(p), _) => {
                let next =
                    if p.more { p.kvs.last().map(|kv| encode_token(p.revision, &kv.key)) } else { None };
                let kvs: Vec<Value> = p.kvs.iter().map(|kv| kv_json(kv, !keys_only)).collect();
                respond(
                    StatusCode::OK,
                    json!({"revision": p.revision, "kvs": kvs, "count": p.count, "more": p.more, "next": next}),
                    p.revision,
                    term,
                )
            }
        });
    }
    if children {
        let key2 = key.clone();
        let page = node
            .read(linearizable, move |a| a.store.children(&key2, revision, after.as_deref(), limit))
            .await?
            .map_err(|e| read_error(e, requested))?;
        let next =
            if page.more { page.children.last().map(|c| encode_token(page.revision, &c.name)) } else { None };
        let children: Vec<Value> = page
            .children
            .iter()
            .map(|c| {
                json!({"name": c.name, "key": c.key, "has_children": c.has_children,
                       "kv": c.kv.as_ref().map(|kv| kv_json(kv, true))})
            })
            .collect();
        return Ok(respond(
            StatusCode::OK,
            json!({"revision": page.revision, "children": children, "more": page.more, "next": next}),
            page.revision,
            term,
        ));
    }
    let key2 = key.clone();
    let (rev, kv) = node
        .read(linearizable, move |a| a.store.get(&key2, revision))
        .await?
        .map_err(|e| read_error(e, requested))?;
    let Some(kv) = kv else {
        return Err(ApiError::from(Error::KeyNotFound(key)).at(rev, term));
    };
    if raw {
        let mut resp = (StatusCode::OK, kv.value).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        super::state_headers(resp.headers_mut(), rev, term);
        return Ok(resp);
    }
    Ok(respond(StatusCode::OK, json!({"revision": rev, "kv": kv_json(&kv, true)}), rev, term))
}

/// The body of a `PUT`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: Option<String>,
    value_base64: Option<String>,
    lease: Option<u64>,
}

/// Reads the whole body, refusing one over the limit with 413.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Error::TooLarge(format!("the request body is over the limit of {limit} bytes")).into()
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidJson("a JSON body is required".into()).into());
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
        _ => Error::InvalidJson(format!("the body is not valid JSON: {e}")).into(),
    })
}

fn condition(q: &Query) -> Result<Condition, ApiError> {
    Ok(Condition {
        if_version: q.u64("if_version")?,
        if_mod_revision: q.u64("if_mod_revision")?,
        if_value: q.str("if_value").map(|v| v.as_bytes().to_vec()),
    })
}

/// Turns an outcome into the reply, with 409 for a failed condition.
fn outcome_response(outcome: Outcome, term: u64) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Put { revision, kv, prev_kv } => {
            let mut body = json!({"revision": revision, "kv": kv_json(&kv, true)});
            if let Some(p) = prev_kv {
                body["prev_kv"] = kv_json(&p, true);
            }
            Ok(respond(StatusCode::OK, body, revision, term))
        }
        Outcome::Deleted { revision, deleted, prev_kvs } => {
            let mut body = json!({"revision": revision, "deleted": deleted});
            if !prev_kvs.is_empty() {
                body["prev_kvs"] = Value::Array(prev_kvs.iter().map(|kv| kv_json(kv, true)).collect());
            }
            Ok(respond(StatusCode::OK, body, revision, term))
        }
        Outcome::ConditionFailed { revision, current } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "condition_failed",
            "the write's condition did not hold; nothing changed",
        )
        .with("current", current.map_or(Value::Null, |kv| kv_json(&kv, true)))
        .at(revision, term)),
        Outcome::Nothing { .. } | Outcome::Batch { .. } => {
            Err(Error::Internal(format!("a single write was decided as {outcome:?}")).into())
        }
    }
}

const PUT_PARAMS: &[&str] = &["if_version", "if_mod_revision", "if_value", "prev_kv"];

/// `PUT /v1/kv/{key}`: writes one key, optionally under conditions.
pub async fn put(State(node): State<Arc<Node>>, uri: Uri, body: Body) -> Result<Response, ApiError> {
    let limits = node.limits().clone();
    let key = key_of(&uri, limits.max_key_bytes)?;
    refuse_root(&key)?;
    let q = Query::parse(uri.query(), PUT_PARAMS)?;
    let cond = condition(&q)?;
    let prev_kv = q.flag("prev_kv")?;
    let bytes = read_body(body, limits.max_body_bytes).await?;
    let body: PutBody = parse_json(&bytes)?;
    let value = match (body.value, body.value_base64) {
        (Some(v), None) => v.into_bytes(),
        (None, Some(b)) => STANDARD
            .decode(b.as_bytes())
            .map_err(|e| ApiError::invalid(format!("value_base64 is not valid base64: {e}")))?,
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either value or value_base64, not both")),
        (None, None) => return Err(ApiError::invalid("the body needs a value (or value_base64)")),
    };
    if value.len() > limits.max_value_bytes {
        return Err(Error::TooLarge(format!(
            "the value is {} bytes, over the limit of {}",
            value.len(),
            limits.max_value_bytes
        ))
        .into());
    }
    if let Some(lease) = body.lease {
        // Leases are granted through /v1/leases; none exists that this key could join.
        return Err(Error::LeaseNotFound(lease).into());
    }
    let used = node.read(false, |a| a.store.bytes()).await?;
    if used + (key.len() + value.len()) as u64 > limits.quota_bytes {
        return Err(Error::QuotaExceeded(format!(
            "the store holds {used} bytes, and this write would pass the quota of {} bytes; compact history or delete keys",
            limits.quota_bytes
        ))
        .into());
    }
    let outcome = node.write(Command::Put { key, value, cond, prev_kv }).await?;
    outcome_response(outcome, node.term())
}

const DELETE_PARAMS: &[&str] = &["recursive", "if_version", "if_mod_revision", "if_value", "prev_kv"];

/// `DELETE /v1/kv/{key}`: deletes a key, or with `?recursive` its subtree.
pub async fn delete(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, node.limits().max_key_bytes)?;
    refuse_root(&key)?;
    let q = Query::parse(uri.query(), DELETE_PARAMS)?;
    let cond = condition(&q)?;
    let recursive = q.flag("recursive")?;
    let prev_kv = q.flag("prev_kv")?;
    let outcome = node.write(Command::Delete { key, recursive, cond, prev_kv }).await?;
    outcome_response(outcome, node.term())
}
