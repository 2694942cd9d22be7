//! Lease routes: grant (`POST /v1/leases`, 201), keepalive, read one, list, revoke.
//!
//! Grants and revokes are writes (an `Idempotency-Key` works on them); keepalives and
//! reads are answered by the leader, which alone runs the lease clock. An unknown or
//! expired lease is 404 `lease_not_found`; a granted id already in use is 409
//! `lease_exists`; a TTL outside the node's bounds is 400, never adjusted. With client
//! auth on, a lease belongs to the subject that granted it: another subject's keepalive,
//! read or revoke of it is 403 (an admin may do anything), and a listing shows a caller
//! its own leases.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;

use super::error::ApiError;
use super::query::Query;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::{Node, MAX_LEASE_KEYS_SHOWN};
use crate::peer::{LeaseAnswer, LeaseQuery};
use crate::store::{Command, Outcome};
use crate::wire::lease as w;

fn reply<T: Serialize>(status: StatusCode, body: &T, revision: u64, term: u64) -> Response {
    let mut resp = (status, super::json_body(body)).into_response();
    super::state_headers(resp.headers_mut(), revision, term);
    resp
}

/// The subject whose leases alone `caller` may use: none when it may use any (auth off,
/// or an admin).
fn owner_filter(caller: &Caller) -> Option<&str> {
    if caller.is_admin() {
        None
    } else {
        caller.subject()
    }
}

/// The lease id in a path, as a number (the node checks its range).
fn lease_id(raw: &str) -> Result<u64, ApiError> {
    Query::parse_u64("the lease id", raw)
}

/// `POST /v1/leases` with `{"ttl": "10s", "id"?: N}`.
pub async fn grant(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, once): (w::GrantRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let ttl_ms = w::ttl_ms(&req.ttl).map_err(ApiError::invalid)?;
    let cmd = Command::LeaseGrant { id: req.id, ttl_ms, clock_ms: 0 };
    let outcome = write::send(&node, &caller, once, cmd).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let r = match outcome {
        Outcome::LeaseGranted { revision, id, ttl_ms } => {
            Ok(reply(StatusCode::CREATED, &w::GrantResponse { id, ttl_ms }, revision, term))
        }
        Outcome::LeaseExists { revision, id } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_exists",
            format!("lease {id} exists already; nothing was granted"),
        )
        .at(revision, term)),
        other => Err(Error::Internal(format!("a lease grant was decided as {other:?}")).into()),
    };
    write::mark_replayed(r, replayed)
}

/// `POST /v1/leases/{id}/keepalive`: the lease gets its whole TTL again.
pub async fn keepalive(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let id = lease_id(&id)?;
    let t = node.lease_keepalive(id, owner_filter(&caller)).await?;
    let body = w::KeepaliveResponse { id: t.id, ttl_ms: t.ttl_ms, remaining_ms: t.remaining_ms };
    Ok(reply(StatusCode::OK, &body, node.applied_revision(), node.term()))
}

/// `GET /v1/leases/{id}`: its TTL, time left and keys.
pub async fn get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let id = lease_id(&id)?;
    let answer = node.lease_read(LeaseQuery::One { id, max_keys: MAX_LEASE_KEYS_SHOWN }).await?;
    let LeaseAnswer::One(l) = answer else {
        return Err(Error::Internal("a lease read answered a page".into()).into());
    };
    caller.check_lease(id, l.owner.as_deref())?;
    let body = w::LeaseResponse {
        id: l.id,
        ttl_ms: l.ttl_ms,
        remaining_ms: l.remaining_ms,
        key_count: l.key_count,
        keys: l.keys,
        locks: l
            .locks
            .into_iter()
            .map(|(kind, name, owner)| w::LeaseLock { kind: kind.as_str().to_string(), name, owner })
            .collect(),
        owner: l.owner,
    };
    Ok(reply(StatusCode::OK, &body, node.applied_revision(), node.term()))
}

/// `GET /v1/leases?limit=N&after=ID`: one page of leases, in id order.
///
/// With client auth on, a caller sees only the leases it granted (an admin sees all).
pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q = Query::parse(uri.query(), &["limit", "after"])?;
    let limit =
        q.u64("limit")?.map_or(node.config().max_list_limit, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let after = q.u64("after")?;
    let LeaseAnswer::Page { leases, more } = node
        .lease_read(LeaseQuery::Page { after, limit, owner: owner_filter(&caller).map(str::to_string) })
        .await?
    else {
        return Err(Error::Internal("a lease listing answered one lease".into()).into());
    };
    let next = if more { leases.last().map(|l| l.id) } else { None };
    let leases: Vec<w::LeaseSummary> = leases
        .into_iter()
        .map(|l| w::LeaseSummary {
            id: l.id,
            ttl_ms: l.ttl_ms,
            remaining_ms: l.remaining_ms,
            key_count: l.key_count,
        })
        .collect();
    let body = w::LeaseListResponse { count: leases.len() as u64, leases, more, next };
    Ok(reply(StatusCode::OK, &body, node.applied_revision(), node.term()))
}

/// `DELETE /v1/leases/{id}`: ends the lease now; its keys are deleted at one revision.
pub async fn revoke(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let id = lease_id(&id)?;
    let once = write::idempotency_key(&headers)?;
    let outcome = write::send(&node, &caller, once, Command::LeaseRevoke { id }).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let r = match outcome {
        Outcome::LeaseRevoked { revision, id, deleted } => {
            Ok(reply(StatusCode::OK, &w::RevokeResponse { revision, id, deleted }, revision, term))
        }
        Outcome::LeaseNotFound { revision, lease } => {
            Err(ApiError::from(Error::LeaseNotFound(lease)).at(revision, term))
        }
        other => Err(Error::Internal(format!("a lease revoke was decided as {other:?}")).into()),
    };
    write::mark_replayed(r, replayed)
}
