//! Membership routes (admin only): add a learner (`POST /v1/cluster/members`, 201),
//! promote it (`POST /v1/cluster/members/{id}/promote`), remove a member
//! (`DELETE /v1/cluster/members/{id}`), move one (`PUT /v1/cluster/members/{id}`).
//!
//! Each answers with the member as the change left it (a removed one as it was). Any
//! member takes them; the leader makes the change. Bad input is a 400 and changes nothing;
//! an unknown id is 404 `member_not_found`; a change the cluster's state does not allow
//! now is a 409 whose code says why (`membership_change_in_progress`, `member_exists`,
//! `member_id_retired`, `peer_url_in_use`, `learner_behind` with `behind`,
//! `already_voter`, `last_voter`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::extract::{parse_json, read_body};
use super::query::Query;
use crate::auth::Caller;
use crate::node::Node;
use crate::peer::{MemberChange, MemberRecord};
use crate::wire::{AddMemberRequest, MemberResponse, UpdateMemberRequest};

fn reply(node: &Node, status: StatusCode, m: MemberRecord) -> Response {
    let body = MemberResponse {
        id: m.id,
        client_url: m.client_url,
        peer_url: m.peer_url,
        role: if m.voter { "voter" } else { "learner" }.into(),
    };
    let mut resp = (status, super::json_body(&body)).into_response();
    super::state_headers(resp.headers_mut(), node.applied_revision(), node.term());
    resp
}

/// A member id in a path: a number from 1.
fn member_id(raw: &str) -> Result<u64, ApiError> {
    match Query::parse_u64("the member id", raw)? {
        0 => Err(ApiError::invalid("node ids start at 1")),
        id => Ok(id),
    }
}

/// A route that takes no body: none, or an empty JSON object.
async fn no_body(node: &Node, headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
    let bytes = read_body(headers, body, node.config().max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nothing {}
    parse_json::<Nothing>(&bytes).map(drop)
}

/// `POST /v1/cluster/members` with `{"id", "peer_url", "client_url"}`: adds a learner.
pub async fn add(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_admin("add a cluster member")?;
    Query::parse(uri.query(), &[])?;
    let bytes = read_body(&headers, body, node.config().max_body_bytes).await?;
    let req: AddMemberRequest = parse_json(&bytes)?;
    let change =
        MemberChange::Add { id: req.id, peer_url: req.peer_url, client_url: req.client_url, incarnation: 0 };
    let m = node.change_membership(change).await?;
    Ok(reply(&node, StatusCode::CREATED, m))
}

/// `POST /v1/cluster/members/{id}/promote`: makes a learner that has caught up a voter.
pub async fn promote(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_admin("promote a cluster member")?;
    change_by_id(&node, &id, &uri, &headers, body, |id| MemberChange::Promote { id }).await
}

/// `DELETE /v1/cluster/members/{id}`: removes a voter or a learner (the leader too).
pub async fn remove(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_admin("remove a cluster member")?;
    change_by_id(&node, &id, &uri, &headers, body, |id| MemberChange::Remove { id }).await
}

/// A change named by the member id in the path alone (no query, no body).
async fn change_by_id(
    node: &Arc<Node>,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    change: fn(u64) -> MemberChange,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let id = member_id(id)?;
    no_body(node, headers, body).await?;
    let m = node.change_membership(change(id)).await?;
    Ok(reply(node, StatusCode::OK, m))
}

/// `PUT /v1/cluster/members/{id}` with `{"peer_url"?, "client_url"?}`: moves a member.
pub async fn update(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_admin("move a cluster member")?;
    Query::parse(uri.query(), &[])?;
    let id = member_id(&id)?;
    let bytes = read_body(&headers, body, node.config().max_body_bytes).await?;
    let req: UpdateMemberRequest = parse_json(&bytes)?;
    let change = MemberChange::Update { id, peer_url: req.peer_url, client_url: req.client_url };
    let m = node.change_membership(change).await?;
    Ok(reply(&node, StatusCode::OK, m))
}
