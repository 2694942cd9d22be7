//! Cluster status and health endpoints.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::query::Query;
use super::server::ServerHealth;
use crate::node::Node;
use crate::wire;

/// `GET /v1/cluster`: this node's view of the cluster.
pub async fn cluster(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let s = node.status();
    let body = wire::ClusterResponse {
        cluster_id: s.cluster_id,
        node_id: s.node_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        leader: s.leader,
        term: s.term,
        revision: s.revision,
        compact_revision: s.compact_revision,
        applied_index: s.applied_index,
        store_bytes: s.store_bytes,
        quota_bytes: s.quota_bytes,
        idempotency_keys: s.idempotency_keys,
        leases: wire::LeaseStats {
            alive: s.leases_alive,
            granted: s.lease_counters.granted,
            expired: s.lease_counters.expired,
            revoked: s.lease_counters.revoked,
        },
        locks: wire::LockStats {
            active: s.locks_active,
            owners: s.lock_owners,
            bytes: s.lock_bytes,
            grants: s.lock_counters.grants,
            handoffs: s.lock_counters.handoffs,
            waits: s.lock_counters.waits,
            lease_ended: s.lock_counters.lease_ended,
        },
        members: s
            .members
            .into_iter()
            .map(|m| wire::MemberResponse {
                id: m.id,
                client_url: m.client_url,
                peer_url: m.peer_url,
                role: m.role.to_string(),
            })
            .collect(),
    };
    let mut resp = super::json_body(&body).into_response();
    super::state_headers(resp.headers_mut(), s.revision, s.term);
    Ok(resp)
}

fn status(s: &str) -> Response {
    super::json_body(&wire::HealthResponse { status: s.into() }).into_response()
}

/// `GET /healthz`: the process, its Raft core and its storage are alive. Never depends on
/// quorum.
pub async fn healthz(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    Ok(match node.health() {
        Ok(()) => status("ok"),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("not healthy: {why}"))
                .into_response()
        }
    })
}

/// `GET /readyz`: healthy, a leader is known, this node has caught up, and its server can
/// accept connections (absent from a bare router, as in tests without a socket).
pub async fn readyz(
    State(node): State<Arc<Node>>,
    server: Option<Extension<Arc<ServerHealth>>>,
    uri: Uri,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let ready = node.readiness().and_then(|()| server.map_or(Ok(()), |s| s.readiness()));
    Ok(match ready {
        Ok(()) => status("ready"),
        Err(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("not ready: {why}"))
                .into_response()
        }
    })
}
