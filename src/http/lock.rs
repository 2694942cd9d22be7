//! Lock routes: acquire (`POST /v1/locks/{name}`, blocking until granted or `wait` runs
//! out), release, read one, list; and the fencing check (`POST /v1/fence/check`).
//!
//! Acquires and releases are writes (an `Idempotency-Key` works on them). A waiting
//! acquire that ends without a grant is 409 `lock_timeout` (the waiter left the queue),
//! or 409 `lease_expired` when its lease ended first; an acquire asking for another
//! `limit` than the lock's is 409 `limit_mismatch`; releasing an owner that neither holds
//! nor waits is 404 `owner_not_found`. A stale fencing token is 409 `stale_token`, with
//! `valid: false` and `current_token` at the top level too.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;

use super::error::ApiError;
use super::kv::consistency;
use super::query::Query;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::{check_lock_limit, check_lock_name, AcquireRequest, Acquired, Node};
use crate::store::{Command, Kind, Lock, Outcome};
use crate::wire::lease::ttl_ms;
use crate::wire::lock as w;

/// How long an acquire waits when it does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub(super) fn reply<T: Serialize>(status: StatusCode, body: &T, revision: u64, term: u64) -> Response {
    let mut resp = (status, super::json_body(body)).into_response();
    super::state_headers(resp.headers_mut(), revision, term);
    resp
}

/// The name in a path, checked.
pub(super) fn name(kind: Kind, raw: &str) -> Result<String, ApiError> {
    check_lock_name(kind, raw)?;
    Ok(raw.to_string())
}

/// The lease part of an acquire or a campaign: `(lease, ttl_ms)`, exactly one given.
pub(super) fn lease_or_ttl(
    lease: Option<u64>,
    ttl: Option<&serde_json::Value>,
) -> Result<(Option<u64>, u64), ApiError> {
    match (lease, ttl) {
        (Some(_), Some(_)) => {
            Err(ApiError::invalid("give either ttl (a lease made for the request) or lease, not both"))
        }
        (Some(id), None) => Ok((Some(id), 0)),
        (None, Some(ttl)) => Ok((None, ttl_ms(ttl).map_err(ApiError::invalid)?)),
        (None, None) => Err(ApiError::invalid(
            "give ttl (a lease made for the request, such as \"15s\") or lease (the id of a lease of yours)",
        )),
    }
}

/// `wait` as given, or the default.
pub(super) fn wait(v: Option<&serde_json::Value>) -> Result<Duration, ApiError> {
    match v {
        None => Ok(DEFAULT_WAIT),
        Some(v) => Ok(Duration::from_millis(w::wait_ms(v).map_err(ApiError::invalid)?)),
    }
}

/// The reply to an acquire (or a campaign) that did not end with a grant.
pub(super) fn not_acquired(kind: Kind, name: &str, acquired: Acquired, term: u64) -> ApiError {
    let what = kind.as_str();
    match acquired {
        Acquired::TimedOut { revision } => ApiError::new(
            StatusCode::CONFLICT,
            "lock_timeout",
            format!("the {what} {name:?} was not granted within the wait; the request left the queue"),
        )
        .at(revision, term),
        Acquired::LeaseEnded { revision, lease } => ApiError::new(
            StatusCode::CONFLICT,
            "lease_expired",
            format!("lease {lease} ended before the {what} {name:?} was granted; the request left the queue"),
        )
        .with("lease", lease.into())
        .at(revision, term),
        Acquired::Withdrawn { revision } => ApiError::new(
            StatusCode::CONFLICT,
            "lock_timeout",
            format!("the waiter was released by another request before the {what} {name:?} was granted"),
        )
        .at(revision, term),
        Acquired::Released { revision } => ApiError::new(
            StatusCode::CONFLICT,
            "lock_timeout",
            format!(
                "the {what} {name:?} was granted to the first request with this idempotency key, but that \
                 holder has been released since (the request went away before it heard of the grant, or the \
                 owner was released, or its lease ended); nothing is held"
            ),
        )
        .at(revision, term),
        Acquired::Refused(outcome) => match write::unwrap_replay(outcome, term) {
            Err(e) => e,
            Ok((Outcome::LockLimitMismatch { revision, limit }, _)) => ApiError::new(
                StatusCode::CONFLICT,
                "limit_mismatch",
                format!(
                    "the {what} {name:?} is held or awaited with limit {limit}; ask for that limit or none"
                ),
            )
            .with("limit", limit.into())
            .at(revision, term),
            Ok((Outcome::LeaseNotFound { revision, lease }, _)) => {
                ApiError::from(Error::LeaseNotFound(lease)).at(revision, term)
            }
            Ok((other, _)) => Error::Internal(format!("an acquire was decided as {other:?}")).into(),
        },
        Acquired::Held { .. } => Error::Internal("a grant reported as a failure".into()).into(),
    }
}

/// `POST /v1/locks/{name}` with `{"ttl": "15s"}` or `{"lease": ID}`, `"wait"`, `"limit"`.
pub async fn acquire(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    permit: Option<Extension<super::InflightPermit>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(Kind::Lock, &raw)?;
    caller.check_lock(Kind::Lock, &name)?;
    let (req, once): (w::AcquireRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let (lease, ttl_ms) = lease_or_ttl(req.lease, req.ttl.as_ref())?;
    let limit = check_lock_limit(Kind::Lock, req.limit)?;
    let request = AcquireRequest {
        kind: Kind::Lock,
        name: name.clone(),
        lease,
        ttl_ms,
        wait: wait(req.wait.as_ref())?,
        limit,
        value: Vec::new(),
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
            let body = w::LockGrant {
                name,
                owner: holder.owner,
                lease: holder.lease,
                fencing_token: holder.token,
                revision,
            };
            Ok(reply(StatusCode::OK, &body, revision, term))
        }
        other => Err(not_acquired(Kind::Lock, &name, other, term)),
    };
    write::mark_replayed(r, replayed)
}

/// The owner a release names (`?owner=`), checked.
pub(super) fn owner(uri: &Uri) -> Result<String, ApiError> {
    let q = Query::parse(uri.query(), &["owner"])?;
    let owner =
        q.str("owner").ok_or_else(|| ApiError::invalid("give ?owner= (the owner the acquire returned)"))?;
    crate::node::check_owner(owner)?;
    Ok(owner.to_string())
}

/// `DELETE /v1/locks/{name}?owner=O`: releases (or withdraws a waiter); 404 when the owner
/// neither holds nor waits, so a retried release is harmless.
pub async fn release(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    release_owner(&node, &caller, Kind::Lock, &raw, &uri, &headers, |name, owner| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "owner_not_found",
            format!("{owner:?} neither holds nor waits for the lock {name:?} (already released?)"),
        )
    })
    .await
}

/// Releases (or resigns, or withdraws) the `?owner=` of the lock or election in the path;
/// `stranger(name, owner)` is the error for an owner that neither holds nor waits.
pub(super) async fn release_owner(
    node: &Arc<Node>,
    caller: &Caller,
    kind: Kind,
    raw: &str,
    uri: &Uri,
    headers: &HeaderMap,
    stranger: impl FnOnce(&str, &str) -> ApiError,
) -> Result<Response, ApiError> {
    let name = name(kind, raw)?;
    let owner = owner(uri)?;
    let once = write::idempotency_key(headers)?;
    let cmd = Command::LockRelease { kind, name: name.clone(), owner: owner.clone() };
    let outcome = write::send(node, caller, once, cmd).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let r = match outcome {
        Outcome::LockReleased { revision, held } => {
            Ok(reply(StatusCode::OK, &w::ReleaseResponse { revision, released: held }, revision, term))
        }
        Outcome::OwnerNotFound { revision } => Err(stranger(&name, &owner).at(revision, term)),
        other => Err(Error::Internal(format!("a release was decided as {other:?}")).into()),
    };
    write::mark_replayed(r, replayed)
}

/// A lock as the API shows it (`limit` is null for one nobody holds or waits for).
pub(super) fn info(name: String, lock: Option<Lock>) -> w::LockInfo {
    let Some(lock) = lock else {
        return w::LockInfo { name, limit: None, holders: Vec::new(), waiters: Vec::new() };
    };
    w::LockInfo {
        name,
        limit: Some(lock.limit),
        holders: lock
            .holders
            .into_iter()
            .map(|h| w::HolderInfo {
                owner: h.owner,
                lease: h.lease,
                fencing_token: h.token,
                since_revision: h.token,
            })
            .collect(),
        waiters: lock
            .waiters
            .into_iter()
            .map(|w| w::WaiterInfo { owner: w.owner, lease: w.lease, since_revision: w.since })
            .collect(),
    }
}

/// `GET /v1/locks/{name}`: holders (with tokens) and waiters in queue order.
pub async fn get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = name(Kind::Lock, &raw)?;
    caller.check_lock(Kind::Lock, &name)?;
    let q = Query::parse(uri.query(), &["consistency"])?;
    let (revision, lock) = node.lock_info(Kind::Lock, &name, consistency(&q)?).await?;
    let body = w::LockResponse { revision, lock: info(name, lock) };
    Ok(reply(StatusCode::OK, &body, revision, node.term()))
}

/// `GET /v1/locks?limit=N&after=NAME`: the locks held or awaited, in name order. With
/// client auth on, only those the caller may use are listed (and paged through).
pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q = Query::parse(uri.query(), &["limit", "after", "consistency"])?;
    let max = node.config().max_list_limit;
    let limit = q.u64("limit")?.map_or(max, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let after = q.str("after").map(str::to_string);
    let visible = |n: &str| caller.sees_lock(Kind::Lock, n);
    let (revision, page, more) =
        node.lock_page(Kind::Lock, after.as_deref(), limit, consistency(&q)?, &visible).await?;
    let next = if more { page.last().map(|(n, _)| n.clone()) } else { None };
    let locks: Vec<w::LockInfo> = page.into_iter().map(|(n, l)| info(n, Some(l))).collect();
    let body = w::LockListResponse { revision, count: locks.len() as u64, locks, more, next };
    Ok(reply(StatusCode::OK, &body, revision, node.term()))
}

/// `POST /v1/fence/check` with `{"name", "token"}`: 200 when the token is a current
/// holder's of the lock or election `name`; else 409 `stale_token`.
pub async fn fence_check(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = Query::parse(uri.query(), &["consistency"])?;
    let bytes = super::extract::read_body(&headers, body, node.config().max_body_bytes).await?;
    let req: w::FenceCheckRequest = super::extract::parse_json(&bytes)?;
    caller.check_fence(&req.name)?;
    let (revision, valid, current) = node.fence_check(&req.name, req.token, consistency(&q)?).await?;
    let term = node.term();
    if valid {
        return Ok(reply(
            StatusCode::OK,
            &w::FenceValid { valid: true, token: req.token, revision },
            revision,
            term,
        ));
    }
    let message = match current {
        Some(t) => {
            format!("token {} is stale: the current holder of {:?} has token {t}", req.token, req.name)
        }
        None => format!("token {} is stale: nobody holds {:?}", req.token, req.name),
    };
    let body = serde_json::json!({
        "valid": false,
        "current_token": current,
        "error": {"code": "stale_token", "message": message, "current_token": current},
    });
    Ok(reply(StatusCode::CONFLICT, &body, revision, term))
}
