//! The key-value routes: `GET`, `PUT`, `DELETE` and `POST ?sequential` on `/v1/kv/{key}`.
//!
//! Each handler parses the request into a typed one (the key, a [`KvRead`] or a
//! [`Command`], the options that only shape the reply), calls the node, and turns what it
//! got into a reply. Everything is checked before anything is proposed: parsing and
//! shape here, policy (key rules, limits, quota) in the node. A refused request changes
//! nothing and says what was wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::error::ApiError;
use super::extract::{parse_json, read_body};
use super::query::Query;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::{Consistency, KvRead, KvReadResult, Node};
use crate::store::events::Selector;
use crate::store::{Command, Condition, ListOptions, Outcome};
use crate::wire;

/// The key a request addresses: the path after `/v1/kv`, percent-decoded and checked
/// against the key rules first of all (the root is refused later, where it matters).
fn key_of(node: &Node, uri: &Uri) -> Result<String, ApiError> {
    key_under(node, uri, "/v1/kv")
}

/// The key a request addresses: the path after `route`, percent-decoded and checked.
pub(super) fn key_under(node: &Node, uri: &Uri, route: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(route).unwrap_or("");
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_key("the key is not valid UTF-8 once percent-decoded"))?;
    let key = if decoded.is_empty() { "/".to_string() } else { decoded.into_owned() };
    node.check_read_key(&key)?;
    Ok(key)
}

/// A JSON reply with the state headers.
fn respond<T: Serialize>(status: StatusCode, body: &T, revision: u64, term: u64) -> Response {
    let mut resp = (status, super::json_body(body)).into_response();
    super::state_headers(resp.headers_mut(), revision, term);
    resp
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
    Ok((Query::parse_u64("after", rev).map_err(|_| bad())?, last.to_string()))
}

pub(super) fn consistency(q: &Query) -> Result<Consistency, ApiError> {
    match q.str("consistency") {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("serializable") => Ok(Consistency::Serializable),
        Some(v) => {
            Err(ApiError::invalid(format!("consistency must be linearizable or serializable, not {v:?}")))
        }
    }
}

/// Whether a key read is a long-poll: its query, parsed as the route parses it, turns
/// `wait` on.
pub(super) fn is_long_poll(uri: &Uri) -> bool {
    Query::parse(uri.query(), GET_PARAMS).is_ok_and(|q| q.flag("wait").unwrap_or(false))
}

/// A parsed `GET /v1/kv/{key}`: the read, and how to present it.
struct GetRequest {
    read: KvRead,
    consistency: Consistency,
    /// Reply with the bare value bytes.
    raw: bool,
    keys_only: bool,
    /// A long-poll: answer once what the read covers changed.
    wait: Option<Wait>,
}

/// `?wait&after_revision=N&timeout=30s`.
struct Wait {
    /// Wait for a change after this revision; `None`: after the current one.
    after: Option<u64>,
    timeout: std::time::Duration,
}

/// How long a long-poll waits unless it says otherwise.
const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const GET_PARAMS: &[&str] = &[
    "recursive",
    "children",
    "raw",
    "consistency",
    "revision",
    "limit",
    "after",
    "keys_only",
    "count_only",
    "wait",
    "after_revision",
    "timeout",
];

impl GetRequest {
    fn parse(node: &Node, uri: &Uri) -> Result<GetRequest, ApiError> {
        let key = key_of(node, uri)?;
        let q = Query::parse(uri.query(), GET_PARAMS)?;
        let consistency = consistency(&q)?;
        let recursive = q.flag("recursive")?;
        let children = q.flag("children")?;
        let raw = q.flag("raw")?;
        let keys_only = q.flag("keys_only")?;
        let count_only = q.flag("count_only")?;
        let mut revision = q.u64("revision")?;
        let wait = if q.flag("wait")? {
            if revision.is_some() || q.has("after") {
                return Err(ApiError::invalid(
                    "wait reads the current state; it cannot be combined with revision or a page token",
                ));
            }
            if raw {
                return Err(ApiError::invalid("wait cannot be combined with raw"));
            }
            Some(Wait {
                after: q.u64("after_revision")?,
                timeout: q.duration("timeout")?.unwrap_or(DEFAULT_WAIT),
            })
        } else {
            if q.has("after_revision") || q.has("timeout") {
                return Err(ApiError::invalid("after_revision and timeout apply to a long-poll (?wait)"));
            }
            None
        };
        if recursive && children {
            return Err(ApiError::invalid("recursive and children cannot be combined"));
        }
        let listing = recursive || children;
        if raw && listing {
            return Err(ApiError::invalid(
                "raw reads one key; it cannot be combined with recursive or children",
            ));
        }
        if !recursive && (keys_only || count_only) {
            return Err(ApiError::invalid("keys_only and count_only apply to recursive listings"));
        }
        if !listing && (q.has("limit") || q.has("after")) {
            return Err(ApiError::invalid("limit and after apply to recursive or children listings"));
        }
        let limit = q
            .u64("limit")?
            .map_or(node.config().max_list_limit, |n| usize::try_from(n).unwrap_or(usize::MAX));
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
        let read = if count_only {
            KvRead::Count { key, revision }
        } else if recursive {
            KvRead::List {
                key,
                opts: ListOptions { revision, after, limit, max_bytes: usize::MAX, keys_only },
            }
        } else if children {
            KvRead::Children { key, revision, after, limit }
        } else {
            KvRead::Get { key, revision }
        };
        Ok(GetRequest { read, consistency, raw, keys_only, wait })
    }
}

/// `GET /v1/kv/{key}`: one key, a subtree (`?recursive`) or one level (`?children`).
pub async fn get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let mut req = GetRequest::parse(&node, &uri)?;
    let (key, subtree) = req.read.scope();
    caller.check_read(key, subtree)?;
    if let Some(wait) = req.wait.take() {
        return long_poll(node, req, wait).await;
    }
    let key = match &req.read {
        KvRead::Get { key, .. } => Some(key.clone()),
        _ => None,
    };
    let term = node.term();
    Ok(match node.read(req.read, req.consistency).await? {
        KvReadResult::Get { revision, kv: None } => {
            let key = key.expect("a get names its key");
            return Err(ApiError::from(Error::KeyNotFound(key)).at(revision, term));
        }
        KvReadResult::Get { revision, kv: Some(kv) } if req.raw => {
            let mut resp = (StatusCode::OK, kv.value).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            super::state_headers(h, revision, term);
            resp
        }
        KvReadResult::Get { revision, kv: Some(kv) } => {
            respond(StatusCode::OK, &wire::GetResponse { revision, kv: kv.into() }, revision, term)
        }
        KvReadResult::Count { revision, count } => {
            respond(StatusCode::OK, &wire::CountResponse { revision, count }, revision, term)
        }
        KvReadResult::List(p) => {
            let revision = p.revision;
            respond(StatusCode::OK, &list_body(p, req.keys_only), revision, term)
        }
        KvReadResult::Children(p) => {
            let revision = p.revision;
            respond(StatusCode::OK, &children_body(p), revision, term)
        }
    })
}

fn list_body(p: crate::store::ListPage, keys_only: bool) -> wire::ListResponse {
    let next = if p.more { p.kvs.last().map(|kv| encode_token(p.revision, &kv.key)) } else { None };
    let kvs = p
        .kvs
        .into_iter()
        .map(|kv| if keys_only { wire::KeyValue::from(kv).without_value() } else { kv.into() })
        .collect();
    wire::ListResponse { revision: p.revision, kvs, count: p.count, more: p.more, next }
}

fn children_body(p: crate::store::ChildrenPage) -> wire::ChildrenResponse {
    let next = if p.more { p.children.last().map(|c| encode_token(p.revision, &c.name)) } else { None };
    let children = p
        .children
        .into_iter()
        .map(|c| wire::Child {
            name: c.name,
            key: c.key,
            has_children: c.has_children,
            kv: c.kv.map(Into::into),
        })
        .collect();
    wire::ChildrenResponse { revision: p.revision, children, more: p.more, next }
}

/// A long-poll: waits until the key (or what is below it, for a listing) changes after
/// `after_revision`, then answers the read as it is now, with `"changed": true`; at the
/// timeout, the same with `"changed": false`. Always 200: a missing key is `"kv": null`.
async fn long_poll(node: Arc<Node>, req: GetRequest, wait: Wait) -> Result<Response, ApiError> {
    let selector = match &req.read {
        // The node refuses the root as one key before it waits, as the read would.
        KvRead::Get { key, .. } => Selector { key: key.clone(), recursive: false },
        KvRead::List { key, .. } | KvRead::Count { key, .. } | KvRead::Children { key, .. } => {
            Selector { key: key.clone(), recursive: true }
        }
    };
    let changed = node.wait_change(selector, wait.after, wait.timeout, req.consistency).await?;
    // Linearized (if asked) before the wait: the local state is at least as new.
    let result = node.read(req.read, Consistency::Serializable).await?;
    let (revision, mut body) = match result {
        KvReadResult::Get { revision, kv } => {
            (revision, serde_json::json!({ "revision": revision, "kv": kv.map(wire::KeyValue::from) }))
        }
        KvReadResult::Count { revision, count } => {
            (revision, to_value(&wire::CountResponse { revision, count }))
        }
        KvReadResult::List(p) => (p.revision, to_value(&list_body(p, req.keys_only))),
        KvReadResult::Children(p) => (p.revision, to_value(&children_body(p))),
    };
    body["changed"] = changed.into();
    Ok(respond(StatusCode::OK, &body, revision, node.term()))
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("replies serialise")
}

fn condition(q: &Query) -> Result<Condition, ApiError> {
    Ok(Condition {
        if_version: q.u64("if_version")?,
        if_mod_revision: q.u64("if_mod_revision")?,
        if_value: q.str("if_value").map(|v| v.as_bytes().to_vec()),
    })
}

/// Turns a write's outcome into the reply, with 409 for a failed condition (and the
/// replay header or 422 for an idempotent write). `created` is the status of a put that
/// created a key by `POST` (201).
fn outcome_response(outcome: Outcome, term: u64, put_status: StatusCode) -> Result<Response, ApiError> {
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    write::mark_replayed(single_write_response(outcome, term, put_status), replayed)
}

fn single_write_response(outcome: Outcome, term: u64, put_status: StatusCode) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Put { revision, kv, prev_kv } => {
            let body = wire::PutResponse { revision, kv: kv.into(), prev_kv: prev_kv.map(Into::into) };
            Ok(respond(put_status, &body, revision, term))
        }
        Outcome::Deleted { revision, deleted, prev_kvs } => {
            let body = wire::DeleteResponse {
                revision,
                deleted,
                prev_kvs: prev_kvs.into_iter().map(Into::into).collect(),
            };
            Ok(respond(StatusCode::OK, &body, revision, term))
        }
        Outcome::ConditionFailed { revision, current } => {
            let current = serde_json::to_value(current.map(wire::KeyValue::from)).expect("a kv serialises");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "condition_failed",
                "the write's condition did not hold; nothing changed",
            )
            .with("current", current)
            .at(revision, term))
        }
        Outcome::LeaseNotFound { revision, lease } => {
            Err(ApiError::from(Error::LeaseNotFound(lease)).at(revision, term))
        }
        outcome => Err(Error::Internal(format!("a single write was decided as {outcome:?}")).into()),
    }
}

const PUT_PARAMS: &[&str] = &["if_version", "if_mod_revision", "if_value", "prev_kv"];

/// `PUT /v1/kv/{key}`: writes one key, optionally under conditions.
pub async fn put(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&node, &uri)?;
    node.check_key(&key)?;
    caller.check_write(&key, false)?;
    let q = Query::parse(uri.query(), PUT_PARAMS)?;
    let cond = condition(&q)?;
    let prev_kv = q.flag("prev_kv")?;
    let once = write::idempotency_key(&headers)?;
    let bytes = read_body(&headers, body, node.config().max_body_bytes).await?;
    let body: wire::PutBody = parse_json(&bytes)?;
    let lease = body.lease;
    let value = body.into_value().map_err(ApiError::invalid)?;
    let put = Command::Put { key, value, lease, cond, prev_kv, sequential: false };
    let outcome = write::send(&node, &caller, once, put).await?;
    outcome_response(outcome, node.term(), StatusCode::OK)
}

const POST_PARAMS: &[&str] = &["sequential"];

/// `POST /v1/kv/{key}?sequential`: creates the next sequential child of the key (201).
pub async fn post(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let parent = key_of(&node, &uri)?;
    // A sequential child is written below the parent.
    caller.check_write(&parent, true)?;
    let q = Query::parse(uri.query(), POST_PARAMS)?;
    if !q.flag("sequential")? {
        return Err(ApiError::invalid(
            "POST on a key creates a sequential child and needs ?sequential (use PUT to write the key itself)",
        ));
    }
    let once = write::idempotency_key(&headers)?;
    let bytes = read_body(&headers, body, node.config().max_body_bytes).await?;
    let body: wire::PutBody = parse_json(&bytes)?;
    let lease = body.lease;
    let value = body.into_value().map_err(ApiError::invalid)?;
    let put = Command::Put {
        key: parent,
        value,
        lease,
        cond: Condition::default(),
        prev_kv: false,
        sequential: true,
    };
    let outcome = write::send(&node, &caller, once, put).await?;
    outcome_response(outcome, node.term(), StatusCode::CREATED)
}

const DELETE_PARAMS: &[&str] = &["recursive", "if_version", "if_mod_revision", "if_value", "prev_kv"];

/// `DELETE /v1/kv/{key}`: deletes a key, or with `?recursive` its subtree.
pub async fn delete(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_of(&node, &uri)?;
    node.check_key(&key)?;
    let q = Query::parse(uri.query(), DELETE_PARAMS)?;
    let cond = condition(&q)?;
    let recursive = q.flag("recursive")?;
    let prev_kv = q.flag("prev_kv")?;
    let once = write::idempotency_key(&headers)?;
    let outcome =
        write::send(&node, &caller, once, Command::Delete { key, recursive, cond, prev_kv }).await?;
    outcome_response(outcome, node.term(), StatusCode::OK)
}
