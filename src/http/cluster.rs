//! Cluster status and health endpoints.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::query::Query;
use crate::node::Node;

/// `GET /v1/cluster`: this node's view of the cluster.
pub async fn cluster(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let s = node.status();
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| json!({"id": m.id, "client_url": m.client_url, "peer_url": m.peer_url, "role": m.role}))
        .collect();
    let body = json!({
        "cluster_id": s.cluster_id,
        "node_id": s.node_id,
        "leader": s.leader,
        "term": s.term,
        "revision": s.revision,
        "compact_revision": s.compact_revision,
        "applied_index": s.applied_index,
        "members": members,
    });
    let mut resp = super::json_body(&body).into_response();
    super::state_headers(resp.headers_mut(), s.revision, s.term);
    Ok(resp)
}

/// `GET /healthz`: the process is up. Never depends on quorum.
pub async fn healthz(uri: Uri) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    Ok(super::json_body(&json!({"status": "ok"})).into_response())
}

/// `GET /readyz`: a leader is known and this node has caught up.
pub async fn readyz(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    Ok(match node.is_ready() {
        Ok(()) => super::json_body(&json!({"status": "ready"})).into_response(),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("not ready: {why}"))
                .into_response()
        }
    })
}
