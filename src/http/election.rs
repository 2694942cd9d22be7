//! Election routes: campaign (blocks until leader or `wait` runs out), proclaim a new
//! value, resign, read the leader, and observe (a stream: the current state first, then
//! `leader` on every change of leader or value, and `no_leader` when nobody leads).
//!
//! A campaign is an acquire of a lock of limit 1 whose holder carries a value; it fails
//! as an acquire does (409 `lock_timeout`, 409 `lease_expired`). Proclaiming or resigning
//! as an owner that does not lead is 409 `not_leader` (a waiting candidate may resign: it
//! leaves the queue). Reading an election nobody leads is 404 `no_leader`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::kv::consistency;
use super::lock::{lease_or_ttl, name, not_acquired, release_owner, reply, wait};
use super::query::Query;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::{AcquireRequest, Acquired, ElectionObserver, ElectionView, Node};
use crate::store::{Command, Holder, Kind, Outcome};
use crate::wire::decode_value;
use crate::wire::lock as w;

fn leader(name: String, holder: Holder, revision: u64) -> w::Leader {
    let (value, value_base64) = w::encode_value(&holder.value);
    w::Leader {
        name,
        value,
        value_base64,
        owner: holder.owner,
        lease: holder.lease,
        fencing_token: holder.token,
        revision,
    }
}

fn no_leader(name: &str, revision: u64, term: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_leader", format!("nobody leads the election {name:?}"))
        .at(revision, term)
}

fn not_leader(name: &str, owner: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_leader",
        format!("{owner:?} does not lead the election {name:?}"),
    )
}

/// `POST /v1/elections/{name}/campaign` with `{"value", "ttl" | "lease", "wait"}`.
pub async fn campaign(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    permit: Option<Extension<super::InflightPermit>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(Kind::Election, &raw)?;
    caller.check_lock(Kind::Election, &name)?;
    let (req, once): (w::CampaignRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let value = decode_value(req.value, req.value_base64).map_err(ApiError::invalid)?.ok_or_else(|| {
        ApiError::invalid("a campaign needs a value (or value_base64): what the leader announces")
    })?;
    let (lease, ttl_ms) = lease_or_ttl(req.lease, req.ttl.as_ref())?;
    let request = AcquireRequest {
        kind: Kind::Election,
        name: name.clone(),
        lease,
        ttl_ms,
        wait: wait(req.wait.as_ref())?,
        limit: None,
        value,
        idempotency_key: once,
        caller,
    };
    // Read and checked: it waits under --max-watchers from here.
    if let Some(Extension(permit)) = permit {
        permit.release();
    }
    let (acquired, replayed) = node.acquire(request).await?;
    let term = node.term();
    let r = match acquired {
        Acquired::Held { revision, holder } => {
            Ok(reply(StatusCode::OK, &leader(name, holder, revision), revision, term))
        }
        other => Err(not_acquired(Kind::Election, &name, other, term)),
    };
    write::mark_replayed(r, replayed)
}

/// `PUT /v1/elections/{name}/leader` with `{"owner", "value"}`: the leader's new value.
pub async fn proclaim(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(Kind::Election, &raw)?;
    caller.check_lock(Kind::Election, &name)?;
    let (req, once): (w::ProclaimRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let value = decode_value(req.value, req.value_base64)
        .map_err(ApiError::invalid)?
        .ok_or_else(|| ApiError::invalid("a proclaim needs a value (or value_base64)"))?;
    crate::node::check_owner(&req.owner)?;
    let cmd = Command::Proclaim { name: name.clone(), owner: req.owner.clone(), value };
    let outcome = write::send(&node, &caller, once, cmd).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let r = match outcome {
        Outcome::Proclaimed { revision, holder } => {
            Ok(reply(StatusCode::OK, &leader(name, holder, revision), revision, term))
        }
        Outcome::NotLeader { revision } => Err(not_leader(&name, &req.owner).at(revision, term)),
        other => Err(Error::Internal(format!("a proclaim was decided as {other:?}")).into()),
    };
    write::mark_replayed(r, replayed)
}

/// `DELETE /v1/elections/{name}/leader?owner=O`: resigns (a waiting candidate withdraws).
pub async fn resign(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    release_owner(&node, &caller, Kind::Election, &raw, &uri, &headers, not_leader).await
}

/// `GET /v1/elections/{name}`: the leader, or 404 `no_leader`.
pub async fn get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = name(Kind::Election, &raw)?;
    caller.check_lock(Kind::Election, &name)?;
    let q = Query::parse(uri.query(), &["consistency"])?;
    let (revision, lock) = node.lock_info(Kind::Election, &name, consistency(&q)?).await?;
    let term = node.term();
    match lock.and_then(|l| l.holders.into_iter().next()) {
        Some(holder) => Ok(reply(StatusCode::OK, &leader(name, holder, revision), revision, term)),
        None => Err(no_leader(&name, revision, term)),
    }
}

/// One observed change as bytes of the stream.
fn frame(name: &str, view: ElectionView, ndjson: bool) -> Vec<u8> {
    let (event, json) = match view {
        ElectionView::Leader { revision, holder } => {
            ("leader", serde_json::to_string(&leader(name.to_string(), holder, revision)))
        }
        ElectionView::NoLeader { revision } => {
            ("no_leader", serde_json::to_string(&w::NoLeader { name: name.to_string(), revision }))
        }
    };
    let json = json.expect("messages serialise");
    if ndjson {
        format!("{{\"{event}\":{json}}}\n").into_bytes()
    } else {
        format!("event: {event}\ndata: {json}\n\n").into_bytes()
    }
}

/// `GET /v1/elections/{name}/observe`: Server-Sent Events (or NDJSON with `Accept:
/// application/x-ndjson`, each line `{"leader": {...}}` or `{"no_leader": {...}}`).
pub async fn observe(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = name(Kind::Election, &raw)?;
    caller.check_lock(Kind::Election, &name)?;
    let q = Query::parse(uri.query(), &["consistency"])?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ndjson = accept.contains("application/x-ndjson");
    let observer = node.observe(&name, consistency(&q)?).await?;
    let revision = node.applied_revision();
    // The stream ends when the token that opened it expires.
    let until = caller.stream_deadline();
    let body = futures::stream::unfold(
        (observer, name),
        move |(mut o, name): (ElectionObserver, String)| async move {
            let view = match until {
                Some(t) => tokio::time::timeout_at(t, o.next()).await.ok()??,
                None => o.next().await?,
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame(&name, view, ndjson))), (o, name)))
        },
    );
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    let content_type = if ndjson { "application/x-ndjson" } else { "text/event-stream" };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::state_headers(h, revision, node.term());
    Ok(resp)
}
