//! What every write route shares: the `Idempotency-Key` request header, and turning a
//! replayed or conflicting idempotent outcome into the reply (`Idempotent-Replayed: true`
//! on a replay, 422 `idempotency_conflict` when the key was used for another request).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;

use super::error::ApiError;
use super::extract::{parse_json, read_body};
use super::query::Query;
use std::sync::Arc;

use crate::auth::Caller;
use crate::error::Error;
use crate::node::{check_idempotency_key, Node};
use crate::store::{Command, Outcome};

/// The request header carrying the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking a replayed outcome.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The client's idempotency key, if it sent one (at most one, well formed).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::invalid("send one Idempotency-Key header, not several"));
    }
    let key = v.to_str().map_err(|_| ApiError::invalid("the Idempotency-Key header is not ASCII"))?;
    check_idempotency_key(key)?;
    Ok(Some(key.to_string()))
}

/// What a write route with a JSON body and no query parameters takes: the body, parsed,
/// and the idempotency key (both checked before anything is read past the headers' limits).
pub async fn json_write<T: serde::de::DeserializeOwned>(
    node: &Node,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(T, Option<String>), ApiError> {
    Query::parse(uri.query(), &[])?;
    let once = idempotency_key(headers)?;
    let bytes = read_body(headers, body, node.config().max_body_bytes).await?;
    Ok((parse_json(&bytes)?, once))
}

/// Proposes `cmd` for `caller`: every permission it needs checked first, then sent on the
/// caller's behalf under the client's idempotency key (if any).
pub async fn send(
    node: &Arc<Node>,
    caller: &Caller,
    once: Option<String>,
    cmd: Command,
) -> Result<Outcome, ApiError> {
    caller.check_command(&cmd)?;
    let once = caller.scoped_idempotency_key(once);
    Ok(node.write(node.idempotent(once, caller.on_behalf(cmd))?).await?)
}

/// A write's outcome with a replay unwrapped: the outcome itself, and whether it is the
/// first one's (a retry). A key used for another request is the 422.
pub fn unwrap_replay(outcome: Outcome, term: u64) -> Result<(Outcome, bool), ApiError> {
    if let Outcome::LeaseNotOwned { revision, lease } = outcome {
        return Err(lease_not_owned(lease).at(revision, term));
    }
    match outcome {
        Outcome::Replayed { first } => match *first {
            Outcome::NotRemembered { revision } => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                format!(
                    "this request was applied once already, at revision {revision}, but its reply was too large \
                     to keep; it was not applied again (read the current state instead)"
                ),
            )
            .with("applied_revision", serde_json::json!(revision))
            .at(revision, term)),
            Outcome::LeaseNotOwned { revision, lease } => Err(lease_not_owned(lease).at(revision, term)),
            first => Ok((first, true)),
        },
        Outcome::IdempotencyConflict { revision } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            "this Idempotency-Key was used for another request; nothing was done",
        )
        .at(revision, term)),
        outcome => Ok((outcome, false)),
    }
}

/// The refusal of a write naming a lease its caller did not grant.
pub fn lease_not_owned(lease: u64) -> ApiError {
    Error::PermissionDenied(format!(
        "lease {lease} was granted by another subject; only it (or an admin) may use it"
    ))
    .into()
}

/// Marks a reply (success or error) as the replay of a first outcome.
pub fn mark_replayed(reply: Result<Response, ApiError>, replayed: bool) -> Result<Response, ApiError> {
    if !replayed {
        return reply;
    }
    let mut resp = reply.unwrap_or_else(axum::response::IntoResponse::into_response);
    resp.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(resp)
}
